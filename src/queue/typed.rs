//! Typed messages for any serde type: [`TypedSender<T>`] / [`TypedReceiver<T>`]
//! over a [`FrameQueue`](super::FrameQueue)'s variable-size frames, beside the
//! `Pod` fast path of [`Queue<T>`](super::Queue).
//!
//! Each frame is the sender's 8-byte **type fingerprint** (little endian)
//! followed by the value's postcard encoding. A receiver whose fingerprint
//! differs gets [`TypedRecvError::TypeMismatch`] (the frame is consumed), never
//! a silent misdecode. The default fingerprint ([`fingerprint_of`]) hashes
//! `std::any::type_name::<T>()` and `size_of::<T>()`; both ends may agree on
//! their own with `with_fingerprint` (for instance two programs built from
//! different crates that name the type differently).
//!
//! Values up to 248 encoded bytes are encoded and decoded on the stack (no
//! allocation per message).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! enum Task { Resize { w: u32, h: u32 }, Stop(String) }
//!
//! let (tx, rx) = shmproc::queue::typed_channel::<Task>(64)?;
//! tx.send(Task::Resize { w: 64, h: 48 })?;
//! tx.send(Task::Stop("done".into()))?;
//! drop(tx);
//! let got: Vec<Task> = rx.iter().collect::<Result<_, _>>()?;
//! assert_eq!(got[1], Task::Stop("done".into()));
//! # Ok(()) }
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frames::SmallFrame;
use super::{FrameQueue, FrameQueueBuilder, FrameReceiver, FrameRecvError, FrameSendError, FrameSender, Handle};
use crate::error::OpenError;
use crate::time::Deadline;

/// Bytes of the fingerprint at the start of every typed frame.
pub const FINGERPRINT_LEN: usize = 8;

/// The default type fingerprint of `T`: FNV-1a (64 bit) over
/// `std::any::type_name::<T>()` and `size_of::<T>()` (little endian). Stable
/// for one compiler and crate graph; not across renames.
pub fn fingerprint_of<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let name = std::any::type_name::<T>().as_bytes();
    let size = (std::mem::size_of::<T>() as u64).to_le_bytes();
    for &b in name.iter().chain(size.iter()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 means "an untyped frame" in errors: never produce it.
    h.max(1)
}

/// An anonymous typed queue of `capacity` messages (each encoded value up to
/// 4 KiB), as a sending and a receiving half. Each message carries the
/// sender's type fingerprint ([`fingerprint_of`]); a receiver of another type
/// gets [`TypedRecvError::TypeMismatch`], never a silent misdecode.
pub fn typed_channel<T: Serialize + DeserializeOwned>(
    capacity: usize,
) -> Result<(TypedSender<T>, TypedReceiver<T>), OpenError> {
    FrameQueue::builder().capacity(capacity).create_typed_split()
}

impl FrameQueueBuilder {
    /// Creates the frame queue (named or anonymous) as a typed sender and
    /// receiver of `T` (`max_frame` bounds the encoded value plus 8 bytes).
    pub fn create_typed_split<T: Serialize + DeserializeOwned>(
        self,
    ) -> Result<(TypedSender<T>, TypedReceiver<T>), OpenError> {
        let (tx, rx) = self.create_split()?;
        Ok((tx.typed(), rx.typed()))
    }
    /// Opens the named frame queue as a typed sender of `T`.
    pub fn open_typed_sender<T: Serialize>(self) -> Result<TypedSender<T>, OpenError> {
        Ok(self.open_sender()?.typed())
    }
    /// Opens the named frame queue as a typed receiver of `T`.
    pub fn open_typed_receiver<T: DeserializeOwned>(self) -> Result<TypedReceiver<T>, OpenError> {
        Ok(self.open_receiver()?.typed())
    }
}

/// The sending half of a typed queue of `T` (made by [`typed_channel`]).
/// Cheap to clone; `Send + Sync`.
pub struct TypedSender<T> {
    tx: FrameSender,
    fp: u64,
    _t: PhantomData<fn(T)>,
}

/// The receiving half of a typed queue of `T`.
pub struct TypedReceiver<T> {
    rx: FrameReceiver,
    fp: u64,
    _t: PhantomData<fn() -> T>,
}

/// A typed half travels as its frame queue's reference and its fingerprint
/// (see `split.rs`: a `Process` argument also reserves the child's entry).
impl<T> serde::Serialize for TypedSender<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = super::split::serialize_half::<S::Error>(self.tx.q.engine_arc(), super::Role::Sender)?;
        serde::Serialize::serialize(&(r, self.fp), s)
    }
}

impl<'de, T: Serialize> serde::Deserialize<'de> for TypedSender<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (r, fp) = <(crate::object::ObjRef, u64) as serde::Deserialize>::deserialize(d)?;
        let tx = r.open_with(crate::ObjectKind::FrameQueue, |h| FrameQueue::builder().open_sender_handle(h))?;
        Ok(tx.typed().with_fingerprint(fp))
    }
}

impl<T> serde::Serialize for TypedReceiver<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = super::split::serialize_half::<S::Error>(self.rx.q.engine_arc(), super::Role::Receiver)?;
        serde::Serialize::serialize(&(r, self.fp), s)
    }
}

impl<'de, T: DeserializeOwned> serde::Deserialize<'de> for TypedReceiver<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (r, fp) = <(crate::object::ObjRef, u64) as serde::Deserialize>::deserialize(d)?;
        let rx = r.open_with(crate::ObjectKind::FrameQueue, |h| FrameQueue::builder().open_receiver_handle(h))?;
        Ok(rx.typed().with_fingerprint(fp))
    }
}

impl<T> Clone for TypedSender<T> {
    fn clone(&self) -> Self {
        TypedSender { tx: self.tx.clone(), fp: self.fp, _t: PhantomData }
    }
}

impl<T> Clone for TypedReceiver<T> {
    fn clone(&self) -> Self {
        TypedReceiver { rx: self.rx.clone(), fp: self.fp, _t: PhantomData }
    }
}

impl<T> fmt::Debug for TypedSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSender")
            .field("type", &std::any::type_name::<T>())
            .field("fingerprint", &format_args!("{:#018x}", self.fp))
            .field("queue", &self.tx)
            .finish()
    }
}

impl<T> fmt::Debug for TypedReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedReceiver")
            .field("type", &std::any::type_name::<T>())
            .field("fingerprint", &format_args!("{:#018x}", self.fp))
            .field("queue", &self.rx)
            .finish()
    }
}

/// Encodes `fp` then `v` into a stack buffer if it fits (64 bytes, then 256),
/// else onto the heap; calls `f` with the frame.
pub(crate) fn with_frame<T: Serialize, R>(fp: u64, v: &T, f: impl FnOnce(&[u8]) -> R) -> Result<R, postcard::Error> {
    let mut small = [0u8; 64];
    small[..FINGERPRINT_LEN].copy_from_slice(&fp.to_le_bytes());
    match postcard::to_slice(v, &mut small[FINGERPRINT_LEN..]) {
        Ok(used) => {
            let n = FINGERPRINT_LEN + used.len();
            return Ok(f(&small[..n]));
        }
        Err(postcard::Error::SerializeBufferFull) => {}
        Err(e) => return Err(e),
    }
    let mut stack = [0u8; SmallFrame::INLINE];
    stack[..FINGERPRINT_LEN].copy_from_slice(&fp.to_le_bytes());
    match postcard::to_slice(v, &mut stack[FINGERPRINT_LEN..]) {
        Ok(used) => {
            let n = FINGERPRINT_LEN + used.len();
            Ok(f(&stack[..n]))
        }
        Err(postcard::Error::SerializeBufferFull) => {
            let heap = postcard::to_extend(v, fp.to_le_bytes().to_vec())?;
            Ok(f(&heap))
        }
        Err(e) => Err(e),
    }
}

impl<T: Serialize> TypedSender<T> {
    pub(super) fn new(tx: FrameSender) -> Self {
        TypedSender { tx, fp: fingerprint_of::<T>(), _t: PhantomData }
    }

    /// Uses `fingerprint` instead of [`fingerprint_of::<T>`] (the receivers
    /// must use the same one).
    pub fn with_fingerprint(mut self, fingerprint: u64) -> Self {
        self.fp = fingerprint;
        self
    }

    /// The fingerprint this sender puts on every message.
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    fn send_deadline(&self, v: T, deadline: Option<Deadline>) -> Result<(), TypedSendError<T>> {
        match with_frame(self.fp, &v, |frame| self.tx.q.send_deadline(frame, deadline)) {
            Err(e) => Err(TypedSendError::Encode(v, e)),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(match e {
                FrameSendError::Full => TypedSendError::Full(v),
                FrameSendError::Timeout => TypedSendError::Timeout(v),
                FrameSendError::Disconnected => TypedSendError::Disconnected(v),
                FrameSendError::TooLarge { len, max } => TypedSendError::TooLarge { value: v, len, max },
                _ => TypedSendError::Corrupt(v),
            }),
        }
    }

    /// Sends `v`, waiting while the queue is full; `Disconnected(v)` at once
    /// when every receiver is gone.
    pub fn send(&self, v: T) -> Result<(), TypedSendError<T>> {
        self.send_deadline(v, Some(Deadline::NEVER))
    }

    /// Sends `v` if there is room now.
    pub fn try_send(&self, v: T) -> Result<(), TypedSendError<T>> {
        self.send_deadline(v, None)
    }

    /// Sends `v`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, v: T, timeout: Duration) -> Result<(), TypedSendError<T>> {
        self.send_deadline(v, Some(Deadline::after(Some(timeout))))
    }

    /// How another process opens this queue (then `open_typed_receiver` or
    /// `open_typed_sender` by name, or the handle's frame halves `.typed()`).
    pub fn handle(&self) -> Handle {
        self.tx.handle()
    }

    /// The untyped frame half underneath.
    pub fn as_frames(&self) -> &FrameSender {
        &self.tx
    }
}

impl<T: DeserializeOwned> TypedReceiver<T> {
    pub(super) fn new(rx: FrameReceiver) -> Self {
        TypedReceiver { rx, fp: fingerprint_of::<T>(), _t: PhantomData }
    }

    /// Expects `fingerprint` instead of [`fingerprint_of::<T>`].
    pub fn with_fingerprint(mut self, fingerprint: u64) -> Self {
        self.fp = fingerprint;
        self
    }

    /// The fingerprint this receiver expects.
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    fn recv_deadline(&self, deadline: Option<Deadline>) -> Result<T, TypedRecvError> {
        let mut frame = SmallFrame::new();
        self.rx.q.recv_deadline(&mut frame, deadline).map_err(TypedRecvError::from_frame)?;
        decode(self.fp, frame.bytes())
    }

    /// Receives a value, waiting while the queue is empty; `Disconnected`
    /// once it is empty and every sender is gone.
    pub fn recv(&self) -> Result<T, TypedRecvError> {
        self.recv_deadline(Some(Deadline::NEVER))
    }

    /// Receives a value if one is there now.
    pub fn try_recv(&self) -> Result<T, TypedRecvError> {
        self.recv_deadline(None)
    }

    /// Receives a value, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, TypedRecvError> {
        self.recv_deadline(Some(Deadline::after(Some(timeout))))
    }

    /// A blocking iterator: `Ok(value)` per message, `Err` for a message of
    /// another type, one that does not decode, or a scribbled frame
    /// ([`TypedRecvError::Oversized`], dropped); ends once every sender is
    /// gone and the queue is drained (or the queue is corrupt).
    pub fn iter(&self) -> impl Iterator<Item = Result<T, TypedRecvError>> + '_ {
        std::iter::from_fn(move || match self.recv() {
            // Oversized (one scribbled frame, dropped) is yielded and the
            // iteration goes on; Corrupt would fail every later call.
            Err(TypedRecvError::Disconnected) | Err(TypedRecvError::Corrupt) => None,
            r => Some(r),
        })
    }

    /// How another process opens this queue.
    pub fn handle(&self) -> Handle {
        self.rx.handle()
    }

    /// The untyped frame half underneath.
    pub fn as_frames(&self) -> &FrameReceiver {
        &self.rx
    }
}

/// Checks the fingerprint at the start of `frame` and decodes the rest.
pub(crate) fn decode<T: DeserializeOwned>(expected: u64, frame: &[u8]) -> Result<T, TypedRecvError> {
    let Some((head, body)) = frame.split_first_chunk::<FINGERPRINT_LEN>() else {
        return Err(TypedRecvError::TypeMismatch { expected, found: 0 });
    };
    let found = u64::from_le_bytes(*head);
    if found != expected {
        return Err(TypedRecvError::TypeMismatch { expected, found });
    }
    crate::decode::from_bytes(body).map_err(TypedRecvError::Decode)
}

/// Why a typed send failed; the value is handed back.
pub enum TypedSendError<T> {
    /// `try_send`: the queue is full.
    Full(T),
    /// The queue stayed full until the timeout.
    Timeout(T),
    /// Every receiver is gone (dropped or dead).
    Disconnected(T),
    /// The encoded value is larger than the queue's frames.
    TooLarge {
        /// The value.
        value: T,
        /// Bytes of its frame (fingerprint included).
        len: usize,
        /// The queue's largest frame.
        max: usize,
    },
    /// The segment was scribbled over.
    Corrupt(T),
    /// The value could not be serialized.
    Encode(T, postcard::Error),
}

impl<T> TypedSendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TypedSendError::Full(v)
            | TypedSendError::Timeout(v)
            | TypedSendError::Disconnected(v)
            | TypedSendError::TooLarge { value: v, .. }
            | TypedSendError::Corrupt(v)
            | TypedSendError::Encode(v, _) => v,
        }
    }
}

impl<T> fmt::Debug for TypedSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedSendError::Full(_) => f.write_str("Full(..)"),
            TypedSendError::Timeout(_) => f.write_str("Timeout(..)"),
            TypedSendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            TypedSendError::TooLarge { len, max, .. } => write!(f, "TooLarge {{ len: {len}, max: {max}, .. }}"),
            TypedSendError::Corrupt(_) => f.write_str("Corrupt(..)"),
            TypedSendError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for TypedSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedSendError::Full(_) => f.write_str("the queue is full"),
            TypedSendError::Timeout(_) => f.write_str("timed out waiting for room in the queue"),
            TypedSendError::Disconnected(_) => f.write_str("every receiver of the queue is gone"),
            TypedSendError::TooLarge { len, max, .. } => {
                write!(f, "message of {len} bytes exceeds the queue's maximum frame size of {max} bytes")
            }
            TypedSendError::Corrupt(_) => f.write_str(
                "the queue's shared memory holds values no valid queue can hold, or its segment was truncated",
            ),
            TypedSendError::Encode(_, e) => write!(f, "could not serialize the value: {e}"),
        }
    }
}

impl<T> std::error::Error for TypedSendError<T> {}

/// Why a typed receive returned no value.
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedRecvError {
    /// `try_recv`: nothing to receive now.
    Empty,
    /// Nothing arrived before the timeout.
    Timeout,
    /// Empty, and every sender is gone.
    Disconnected,
    /// The queue's shared memory holds values no valid queue can hold, or its
    /// segment was truncated: this and later receives fail.
    Corrupt,
    /// A slot recorded a frame length above the queue's maximum (a scribbled
    /// slot). That frame was dropped; later receives go on.
    Oversized {
        /// The length the slot recorded.
        len: u32,
        /// The queue's `max_frame`.
        max: usize,
    },
    /// The message was sent as another type (the frame was consumed).
    TypeMismatch {
        /// This receiver's fingerprint.
        expected: u64,
        /// The message's fingerprint (0: an untyped frame too short to carry one).
        found: u64,
    },
    /// The fingerprint matched but the bytes are not a valid encoding.
    Decode(postcard::Error),
}

impl TypedRecvError {
    fn from_frame(e: FrameRecvError) -> Self {
        match e {
            FrameRecvError::Empty => TypedRecvError::Empty,
            FrameRecvError::Timeout => TypedRecvError::Timeout,
            FrameRecvError::Disconnected => TypedRecvError::Disconnected,
            FrameRecvError::Decode(e) => TypedRecvError::Decode(e),
            FrameRecvError::Oversized { len, max } => TypedRecvError::Oversized { len, max },
            FrameRecvError::Corrupt => TypedRecvError::Corrupt,
        }
    }
}

impl fmt::Display for TypedRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedRecvError::Empty => f.write_str("the queue is empty"),
            TypedRecvError::Timeout => f.write_str("timed out waiting for a message"),
            TypedRecvError::Disconnected => f.write_str("the queue is empty and every sender is gone"),
            TypedRecvError::Corrupt => f.write_str(
                "the queue's shared memory holds values no valid queue can hold, or its segment was truncated",
            ),
            TypedRecvError::Oversized { len, max } => write!(
                f,
                "dropped a frame whose slot records {len} bytes, more than the queue's maximum of {max} (a scribbled slot)"
            ),
            TypedRecvError::TypeMismatch { expected, found } => write!(
                f,
                "the message is of another type (fingerprint {found:#018x}, this receiver expects {expected:#018x})"
            ),
            TypedRecvError::Decode(e) => write!(f, "could not deserialize the message: {e}"),
        }
    }
}

impl std::error::Error for TypedRecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TypedRecvError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Small {
        id: u64,
        x: f64,
        tag: u32,
    }

    #[test]
    fn roundtrip_large_and_small_and_disconnect() {
        let (tx, rx) = FrameQueue::builder().capacity(8).max_frame(2048).create_typed_split::<Vec<u8>>().unwrap();
        tx.send(vec![1, 2, 3]).unwrap();
        tx.send(vec![7; 1000]).unwrap(); // larger than the stack buffer
        assert!(matches!(tx.send(vec![0; 4000]), Err(TypedSendError::TooLarge { .. })));
        assert_eq!(rx.recv().unwrap(), vec![1, 2, 3]);
        assert_eq!(rx.recv().unwrap(), vec![7; 1000]);
        assert!(matches!(rx.try_recv(), Err(TypedRecvError::Empty)));
        drop(tx);
        assert!(matches!(rx.recv_timeout(Duration::from_secs(10)), Err(TypedRecvError::Disconnected)));
    }

    /// Regression (issue 10 item 3): a message of one type received as
    /// another decoded silently.
    #[test]
    fn wrong_type_receive_is_type_mismatch() {
        let (tx, rx) = typed_channel::<String>(8).unwrap();
        let h = rx.handle();
        tx.send("eight ch".to_string()).unwrap();
        let wrong = FrameQueue::builder().open_receiver_handle(&h).unwrap().typed::<u64>();
        match wrong.recv_timeout(Duration::from_secs(10)) {
            Err(TypedRecvError::TypeMismatch { expected, found }) => {
                assert_eq!(expected, fingerprint_of::<u64>());
                assert_eq!(found, fingerprint_of::<String>());
            }
            other => panic!("expected TypeMismatch, got {other:?}"),
        }
        // An untyped frame too.
        tx.as_frames().send(b"abc").unwrap();
        assert!(matches!(rx.recv(), Err(TypedRecvError::TypeMismatch { found: 0, .. })));
        // Agreed fingerprints work across type names.
        let tx2 = FrameQueue::builder().open_sender_handle(&h).unwrap().typed::<Small>().with_fingerprint(42);
        let rx2 = FrameQueue::builder().open_receiver_handle(&h).unwrap().typed::<Small>().with_fingerprint(42);
        let s = Small { id: 1, x: 2.5, tag: 3 };
        tx2.send(s.clone()).unwrap();
        assert_eq!(rx2.recv().unwrap(), s);
    }

    /// A recursive type, for the nesting limit below.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Expr {
        Lit(i64),
        Neg(Box<Expr>),
    }

    /// A writer that forges the fingerprint (it is public) and sends one
    /// byte per level of `Neg` makes the receiver's decode fail with
    /// `Decode`, not overflow its stack (an abort of the whole process);
    /// the queue goes on.
    #[test]
    fn a_deeply_nested_frame_is_a_decode_error_not_a_stack_overflow() {
        let (tx, rx) = FrameQueue::builder().capacity(8).max_frame(1 << 20).create_typed_split::<Expr>().unwrap();
        let mut hostile = fingerprint_of::<Expr>().to_le_bytes().to_vec();
        hostile.resize(hostile.len() + 1_000_000, 1);
        hostile.extend_from_slice(&[0, 14]);
        tx.as_frames().send(&hostile).unwrap();
        tx.send(Expr::Neg(Box::new(Expr::Lit(3)))).unwrap();
        assert!(matches!(rx.recv(), Err(TypedRecvError::Decode(_))));
        assert_eq!(rx.recv().unwrap(), Expr::Neg(Box::new(Expr::Lit(3))));
    }

    #[test]
    fn send_after_receivers_dropped_hands_value_back() {
        let (tx, rx) = typed_channel::<String>(8).unwrap();
        drop(rx);
        match tx.send("kept".to_string()) {
            Err(TypedSendError::Disconnected(v)) => assert_eq!(v, "kept"),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
}
