//! [`FrameQueue`]: variable-size byte frames (up to a configured maximum) and
//! serde values (`postcard`) over the same ring as [`Queue`](super::Queue).
//! Typed, type-checked serde messages over these frames: `typed.rs`
//! ([`TypedSender`](super::TypedSender)); the untyped `send_value` /
//! `recv_value` here do not check the type.
//!
//! Each slot holds a little-endian `u32` length then up to `max_frame` bytes.
//! An oversize frame is refused with [`FrameSendError::TooLarge`], never
//! truncated. A received length above `max_frame` (a scribbled segment) drops
//! that frame and gives [`FrameRecvError::Oversized`]; the frames after it
//! are received as usual.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::raw::{Engine, Fail, Side};
use super::ring::Step;
use super::{FrameRecvError, FrameSendError, QueueConfig, Role, WaitMode};
use crate::error::OpenError;
use crate::header::{ObjectKind, TypeInfo};
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

/// Default maximum frame size.
pub const DEFAULT_MAX_FRAME: usize = 4096;

/// How long [`FrameQueue::drain_settled`] waits at a time for a send in progress.
const DRAIN_WAIT: Duration = Duration::from_millis(10);

/// The element type recorded in a frame queue's header.
pub(crate) fn type_info() -> TypeInfo {
    TypeInfo::from_parts(1, 1, "shmproc::FrameQueue")
}

/// A bounded queue of byte frames (each up to `max_frame` bytes) in shared memory.
///
/// Use it through its halves ([`frame_channel`](super::frame_channel),
/// [`FrameQueueBuilder::create_split`], `open_sender` / `open_receiver`), or
/// typed ([`typed_channel`](super::typed_channel): serde values with a type
/// check); this role-less handle both sends and receives.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::FrameQueue;
/// let (tx, rx) = FrameQueue::builder().capacity(64).max_frame(256).create_split()?;
/// tx.send(b"hello")?;
/// assert_eq!(rx.recv()?, b"hello");
/// drop(tx);
/// assert_eq!(rx.iter().count(), 0); // every sender gone: the iterator ends
/// # Ok(()) }
/// ```
pub struct FrameQueue {
    e: Arc<Engine>,
    max: usize,
}

impl Clone for FrameQueue {
    fn clone(&self) -> Self {
        self.e.touch();
        FrameQueue { e: self.e.clone(), max: self.max }
    }
}

/// Builder for [`FrameQueue`].
pub type FrameQueueBuilder = Builder<FrameQueue>;

impl Builder<FrameQueue> {
    /// Largest frame in bytes for `create` (default 4096, at most 16 MiB - 4).
    pub fn max_frame(mut self, n: usize) -> Self {
        self.params.max_frame = n;
        self
    }

    fn wrap(e: Arc<Engine>) -> Result<FrameQueue, OpenError> {
        let max = (e.geo.elem_size as usize)
            .checked_sub(4)
            .ok_or_else(|| OpenError::corrupt("frame queue slots too small for a length"))?;
        Ok(FrameQueue { e, max })
    }

    fn elem(&self) -> Result<u32, OpenError> {
        u32::try_from(self.params.max_frame)
            .ok()
            .and_then(|n| n.checked_add(4))
            .filter(|&n| n <= super::raw::MAX_ELEM)
            .ok_or_else(|| OpenError::invalid(format!("max_frame {} is too large", self.params.max_frame)))
    }

    /// Creates the queue (named if a name was set, else anonymous).
    pub fn create(self) -> Result<FrameQueue, OpenError> {
        let geo = self.params.geometry(self.elem()?)?;
        let e = Engine::create(&self.opts, ObjectKind::FrameQueue, type_info(), geo)?;
        Self::wrap(self.params.finish(e)?)
    }

    /// The payload size `create` would give the segment (the pool looks
    /// for a spare segment of that size: see `pool::spare`).
    pub(crate) fn payload_size(&self) -> Result<usize, OpenError> {
        self.params.geometry(self.elem()?)?.check()
    }

    /// `create`, in a spare segment of [`Self::payload_size`] bytes that no
    /// process uses any more (see [`Engine::recycle`]); an anonymous queue.
    pub(crate) fn create_in(self, spare: Segment) -> Result<FrameQueue, OpenError> {
        let geo = self.params.geometry(self.elem()?)?;
        let e = Engine::recycle(spare, geo)?;
        Self::wrap(self.params.finish(e)?)
    }

    /// Opens the named frame queue, or creates it with this builder's settings.
    pub fn open_or_create(self) -> Result<FrameQueue, OpenError> {
        let geo = self.params.geometry(self.elem()?)?;
        let e = Engine::open_or_create(&self.opts, ObjectKind::FrameQueue, type_info(), geo)?;
        Self::wrap(self.params.finish(e)?)
    }
}

crate::object::serde_object!([] FrameQueue);
/// `open` and `open_handle` (the maximum frame comes from the segment).
impl Object for FrameQueue {
    const KIND: ObjectKind = ObjectKind::FrameQueue;
    type Params = QueueConfig;
    fn segment(&self) -> &Segment {
        FrameQueue::segment(self)
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        let spec = Engine::spec(ObjectKind::FrameQueue, type_info());
        let e = Engine::open(b.open_segment(handle, &spec), None)?;
        Builder::wrap(b.params.finish(e)?)
    }
}

impl FrameQueue {
    /// A builder with default settings (anonymous, capacity 1024, frames up to 4096 bytes).
    pub fn builder() -> FrameQueueBuilder {
        Builder::default()
    }

    /// The engine (shared with clones; no `touch`, see `split.rs` serde).
    pub(super) fn engine_arc(&self) -> Arc<Engine> {
        self.e.clone()
    }

    /// The largest frame this queue carries.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// The engine (tests of the engine's layout).
    #[cfg(test)]
    pub(crate) fn engine(&self) -> &Engine {
        &self.e
    }

    fn push_once(&self, frame: &[u8]) -> Step {
        self.e.try_push(true, false, |p| {
            // SAFETY: `p` is the payload of a slot we own: 4 + max bytes, and
            // frame.len() <= max was checked by the caller.
            unsafe {
                std::ptr::write_unaligned(p as *mut u32, (frame.len() as u32).to_le());
                std::ptr::copy_nonoverlapping(frame.as_ptr(), p.add(4), frame.len());
            }
        })
    }

    /// One receive attempt; `bad` gets the recorded length of a frame that
    /// was dropped because it claimed more than `max_frame` bytes.
    fn pop_once(&self, out: &mut impl FrameSink, bad: &mut Option<u32>) -> Step {
        let max = self.max;
        self.e.try_pop(false, |p| {
            // SAFETY: `p` is the payload of a published slot we own (4 + max bytes).
            let raw = u32::from_le(unsafe { std::ptr::read_unaligned(p as *const u32) });
            let len = raw as usize;
            if len > max {
                *bad = Some(raw);
                return;
            }
            // SAFETY: len <= max bytes follow the length inside the slot, which
            // we own until this closure returns.
            unsafe { out.fill(p.add(4), len) }
        })
    }

    pub(super) fn send_deadline(&self, frame: &[u8], deadline: Option<Deadline>) -> Result<(), FrameSendError> {
        if frame.len() > self.max {
            return Err(FrameSendError::TooLarge { len: frame.len(), max: self.max });
        }
        self.e.ensure_registered();
        if self.e.send_refused() {
            return Err(FrameSendError::Disconnected);
        }
        let r = match self.push_once(frame) {
            Step::Done => Ok(()),
            Step::Corrupt => Err(Fail::Corrupt),
            _ => match deadline {
                None => self.e.would_block(Side::Send, || self.push_once(frame)),
                Some(d) => self.e.wait(Side::Send, d, || self.push_once(frame)),
            },
        };
        match r {
            Ok(()) => {
                self.e.notify(Side::Recv, false);
                Ok(())
            }
            Err(Fail::WouldBlock) => Err(FrameSendError::Full),
            Err(Fail::Timeout) => Err(FrameSendError::Timeout),
            Err(Fail::Disconnected) => Err(FrameSendError::Disconnected),
            Err(Fail::Corrupt) => Err(FrameSendError::Corrupt),
        }
    }

    /// Sends a frame, waiting while the queue is full.
    pub fn send(&self, frame: &[u8]) -> Result<(), FrameSendError> {
        self.send_deadline(frame, Some(Deadline::NEVER))
    }

    /// Sends a frame if there is room now.
    pub fn try_send(&self, frame: &[u8]) -> Result<(), FrameSendError> {
        self.send_deadline(frame, None)
    }

    /// Sends a frame, waiting at most `timeout` for room.
    pub fn send_timeout(&self, frame: &[u8], timeout: Duration) -> Result<(), FrameSendError> {
        self.send_deadline(frame, Some(Deadline::after(Some(timeout))))
    }

    /// Receives into `out` (cleared first). `timeout`: `None` = try once,
    /// `Some(None)` = wait forever, `Some(Some(t))` = wait at most `t`.
    pub(super) fn recv_deadline(
        &self,
        out: &mut impl FrameSink,
        deadline: Option<Deadline>,
    ) -> Result<(), FrameRecvError> {
        self.e.ensure_registered();
        let mut bad = None;
        let r = match self.pop_once(out, &mut bad) {
            Step::Done => Ok(()),
            Step::Corrupt => Err(Fail::Corrupt),
            _ => match deadline {
                None => self.e.would_block(Side::Recv, || self.pop_once(out, &mut bad)),
                Some(d) => self.e.wait(Side::Recv, d, || self.pop_once(out, &mut bad)),
            },
        };
        if r.is_ok() {
            self.e.notify(Side::Send, false);
        }
        match r {
            Ok(()) => match bad {
                Some(len) => Err(FrameRecvError::Oversized { len, max: self.max }),
                None => Ok(()),
            },
            Err(Fail::WouldBlock) => Err(FrameRecvError::Empty),
            Err(Fail::Timeout) => Err(FrameRecvError::Timeout),
            Err(Fail::Disconnected) => Err(FrameRecvError::Disconnected),
            Err(Fail::Corrupt) => Err(FrameRecvError::Corrupt),
        }
    }

    /// Receives every frame published before the call, into `each`, and
    /// returns once none is left and no send is in progress at the head of
    /// the ring, or once it has waited past `limit` for such a send
    /// (`Ok(false)`). Frames that keep arriving are all taken (the caller
    /// bounds them: the pool sends no work while it drains).
    ///
    /// A plain `try_recv` loop stops at a slot whose sender has claimed it
    /// but not yet published it, and so misses the frames published after
    /// it. This waits for such a sender (or, once it is dead, recovers its
    /// slot). The pool uses it before it handles a dead worker: every answer
    /// the worker sent must be counted first.
    pub(crate) fn drain_settled(
        &self,
        buf: &mut Vec<u8>,
        limit: Duration,
        mut each: impl FnMut(&mut Vec<u8>),
    ) -> Result<bool, FrameRecvError> {
        let until = Deadline::after(Some(limit));
        loop {
            match self.recv_deadline(buf, None) {
                Ok(()) => {
                    each(buf);
                    continue;
                }
                Err(e @ (FrameRecvError::Corrupt | FrameRecvError::Oversized { .. })) => return Err(e),
                Err(_) => {}
            }
            if self.e.recv_idle() {
                return Ok(true);
            }
            if until.expired() {
                return Ok(false);
            }
            // A send in progress: wait for it (a dead sender's slot is
            // recovered after a few stall slices).
            match self.recv_deadline(buf, Some(until.min_after(DRAIN_WAIT))) {
                Ok(()) => each(buf),
                Err(e @ (FrameRecvError::Corrupt | FrameRecvError::Oversized { .. })) => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Receives a frame, waiting while the queue is empty.
    pub fn recv(&self) -> Result<Vec<u8>, FrameRecvError> {
        let mut v = Vec::new();
        self.recv_deadline(&mut v, Some(Deadline::NEVER)).map(|()| v)
    }

    /// Receives a frame if one is there now.
    pub fn try_recv(&self) -> Result<Vec<u8>, FrameRecvError> {
        let mut v = Vec::new();
        self.recv_deadline(&mut v, None).map(|()| v)
    }

    /// Receives a frame, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Vec<u8>, FrameRecvError> {
        let mut v = Vec::new();
        self.recv_deadline(&mut v, Some(Deadline::after(Some(timeout)))).map(|()| v)
    }

    /// Receives a frame into `buf` (cleared first; its allocation is reused),
    /// waiting at most `timeout` (`None`: forever).
    pub fn recv_into_vec(&self, buf: &mut Vec<u8>, timeout: Option<Duration>) -> Result<(), FrameRecvError> {
        self.recv_deadline(buf, Some(Deadline::after(timeout)))
    }

    /// Serializes `value` with postcard and sends it as one frame.
    pub fn send_value<V: Serialize + ?Sized>(&self, value: &V) -> Result<(), FrameSendError> {
        let bytes = postcard::to_allocvec(value).map_err(FrameSendError::Encode)?;
        self.send(&bytes)
    }

    /// Like [`send_value`](Self::send_value), waiting at most `timeout`.
    pub fn send_value_timeout<V: Serialize + ?Sized>(
        &self,
        value: &V,
        timeout: Duration,
    ) -> Result<(), FrameSendError> {
        let bytes = postcard::to_allocvec(value).map_err(FrameSendError::Encode)?;
        self.send_timeout(&bytes, timeout)
    }

    /// Receives one frame and deserializes it with postcard.
    pub fn recv_value<V: DeserializeOwned>(&self) -> Result<V, FrameRecvError> {
        let f = self.recv()?;
        crate::decode::from_bytes(&f).map_err(FrameRecvError::Decode)
    }

    /// Like [`recv_value`](Self::recv_value), waiting at most `timeout`.
    pub fn recv_value_timeout<V: DeserializeOwned>(&self, timeout: Duration) -> Result<V, FrameRecvError> {
        let f = self.recv_timeout(timeout)?;
        crate::decode::from_bytes(&f).map_err(FrameRecvError::Decode)
    }

    /// Frames in the queue now (a snapshot).
    pub fn len(&self) -> usize {
        self.e.len()
    }

    /// Whether the queue holds no frame now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of frames.
    pub fn capacity(&self) -> usize {
        self.e.geo.capacity as usize
    }

    /// Changes this handle's role.
    pub fn set_role(&self, role: Role) -> Result<(), OpenError> {
        self.e.register(role)
    }

    /// Changes how this handle waits.
    pub fn set_wait_mode(&self, mode: WaitMode) {
        self.e.set_wait_mode(mode)
    }

    /// How another process opens this queue.
    pub fn handle(&self) -> Handle {
        self.e.segment().handle()
    }

    /// The segment holding the queue.
    pub fn segment(&self) -> &Segment {
        self.e.segment()
    }
}

impl fmt::Debug for FrameQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameQueue").field("max_frame", &self.max).field("engine", &self.e).finish()
    }
}

/// Where a received frame's bytes are copied to (out of the slot, while the
/// receiver owns it).
pub(super) trait FrameSink {
    /// Replaces the contents with `len` bytes at `src`.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes.
    unsafe fn fill(&mut self, src: *const u8, len: usize);
}

impl FrameSink for Vec<u8> {
    unsafe fn fill(&mut self, src: *const u8, len: usize) {
        self.clear();
        self.reserve(len);
        // SAFETY: `src` is readable for len bytes (caller); `self` has capacity
        // for len bytes, which we initialise before set_len.
        unsafe {
            std::ptr::copy_nonoverlapping(src, self.as_mut_ptr(), len);
            self.set_len(len);
        }
    }
}

/// Bytes of a frame that fits [`SmallFrame::INLINE`] stay on the stack (not
/// zeroed first: only the received bytes are ever read).
pub(super) struct SmallFrame {
    inline: [std::mem::MaybeUninit<u8>; SmallFrame::INLINE],
    len: usize,
    heap: Vec<u8>,
}

impl SmallFrame {
    pub(super) const INLINE: usize = 256;
    pub(super) fn new() -> Self {
        SmallFrame { inline: [std::mem::MaybeUninit::uninit(); SmallFrame::INLINE], len: 0, heap: Vec::new() }
    }
    pub(super) fn bytes(&self) -> &[u8] {
        if self.len <= SmallFrame::INLINE {
            // SAFETY: `fill` initialised the first `len` (<= INLINE) bytes;
            // `len` starts at 0.
            unsafe { std::slice::from_raw_parts(self.inline.as_ptr().cast::<u8>(), self.len) }
        } else {
            &self.heap
        }
    }
}

impl FrameSink for SmallFrame {
    unsafe fn fill(&mut self, src: *const u8, len: usize) {
        if len <= SmallFrame::INLINE {
            // SAFETY: `src` is readable for len bytes (caller); `inline` holds len.
            unsafe { std::ptr::copy_nonoverlapping(src, self.inline.as_mut_ptr().cast::<u8>(), len) }
        } else {
            // SAFETY: as above.
            unsafe { self.heap.fill(src, len) }
        }
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmObject;

    #[test]
    fn frames_and_values() {
        for spsc in [false, true] {
            let q = FrameQueue::builder().capacity(4).max_frame(16).spsc(spsc).create().unwrap();
            q.send(b"").unwrap();
            q.send(&[7u8; 16]).unwrap();
            assert!(matches!(q.send(&[0u8; 17]), Err(FrameSendError::TooLarge { len: 17, max: 16 })));
            assert_eq!(q.recv().unwrap(), b"");
            assert_eq!(q.recv().unwrap(), vec![7u8; 16]);
            assert!(matches!(q.try_recv(), Err(FrameRecvError::Empty)));
            q.send_value(&(1u8, "ab")).unwrap();
            assert_eq!(q.recv_value::<(u8, String)>().unwrap(), (1, "ab".to_string()));
            q.send(&[0xff; 3]).unwrap();
            assert!(matches!(q.recv_value::<String>(), Err(FrameRecvError::Decode(_))));
            let q2 = FrameQueue::open_handle(&q.handle()).unwrap();
            assert_eq!(q2.max_frame(), 16);
        }
    }

    /// `drain_settled` takes the frames published behind a send in
    /// progress, which a `try_recv` loop misses: a live sender's (it waits
    /// for it) and a dead one's (it recovers the slot).
    #[test]
    fn drain_settled_waits_for_a_send_in_progress() {
        use std::sync::mpsc;
        let q = FrameQueue::builder().capacity(8).max_frame(16).create().unwrap();
        let (claimed_tx, claimed) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let slow = {
            let q = q.clone();
            std::thread::spawn(move || {
                // A send that has claimed slot 0 and is still writing it.
                let step = q.e.try_push(true, false, |p| {
                    claimed_tx.send(()).unwrap();
                    go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
                    // SAFETY: `p` is the payload of the slot this push claimed:
                    // 4 + 16 bytes.
                    unsafe {
                        std::ptr::write_unaligned(p as *mut u32, 5u32.to_le());
                        std::ptr::copy_nonoverlapping(b"first".as_ptr(), p.add(4), 5);
                    }
                });
                assert_eq!(step, Step::Done);
            })
        };
        claimed.recv_timeout(Duration::from_secs(10)).unwrap();
        q.send(b"second").unwrap();
        assert!(matches!(q.try_recv(), Err(FrameRecvError::Empty)), "the claim holds back the frame after it");
        assert!(!q.e.recv_idle());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            go.send(()).unwrap();
        });
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let settled = q.drain_settled(&mut buf, Duration::from_secs(10), |f| got.push(f.clone())).unwrap();
        assert!(settled);
        assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
        assert!(q.e.recv_idle());
        slow.join().unwrap();
        release.join().unwrap();

        // A sender that died with its claim: its slot is recovered, the
        // frame after it taken.
        use super::super::ring::{self, RingMem};
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let q = FrameQueue::builder().capacity(8).max_frame(16).create().unwrap();
        q.e.stamp(0).store(ring::claim_stamp(false, dead, 0), std::sync::atomic::Ordering::SeqCst);
        q.e.tail().store(1, std::sync::atomic::Ordering::SeqCst);
        q.send(b"after").unwrap();
        let mut got = Vec::new();
        assert!(q.drain_settled(&mut buf, Duration::from_secs(10), |f| got.push(f.clone())).unwrap());
        assert_eq!(got, vec![b"after".to_vec()]);

        // A live claim that is never published: the limit ends the drain.
        let q = FrameQueue::builder().capacity(8).max_frame(16).create().unwrap();
        q.e.stamp(0).store(ring::claim_stamp(false, std::process::id(), 0), std::sync::atomic::Ordering::SeqCst);
        q.e.tail().store(1, std::sync::atomic::Ordering::SeqCst);
        q.send(b"stuck").unwrap();
        let mut n = 0;
        assert!(!q.drain_settled(&mut buf, Duration::from_millis(50), |_| n += 1).unwrap());
        assert_eq!(n, 0);
    }

    /// Writes `len` over the frame length recorded in `slot`, as a hostile
    /// peer with the segment mapped would.
    fn scribble_len(q: &FrameQueue, slot: u64, len: u32) {
        let p = q.e.slot_payload(slot);
        // SAFETY: `slot < capacity`: its payload starts with the 4-byte length,
        // inside the mapping `q` keeps alive; the frame is published and not
        // being read (single-threaded test).
        unsafe { std::ptr::write_unaligned(p as *mut u32, len.to_le()) };
    }

    #[test]
    fn an_oversized_frame_is_dropped_alone_and_iterators_go_on() {
        use crate::test_util::within_10s;
        for spsc in [false, true] {
            let q = FrameQueue::builder().capacity(8).max_frame(16).spsc(spsc).create().unwrap();
            for f in [b"a", b"b", b"c"] {
                q.send(f).unwrap();
            }
            scribble_len(&q, 1, 1000);
            let t = Duration::from_secs(10);
            assert_eq!(q.recv_timeout(t).unwrap(), b"a");
            assert!(matches!(q.recv_timeout(t), Err(FrameRecvError::Oversized { len: 1000, max: 16 })));
            assert_eq!(q.recv_timeout(t).unwrap(), b"c");
        }
        let (tx, rx) = FrameQueue::builder().capacity(8).max_frame(16).create_split().unwrap();
        for f in [b"a", b"b", b"c"] {
            tx.send(f).unwrap();
        }
        scribble_len(&rx.q, 1, u32::MAX);
        drop(tx);
        let got = within_10s(move || rx.iter().collect::<Vec<_>>());
        assert_eq!(got, vec![b"a".to_vec(), b"c".to_vec()]);

        let (tx, rx) = FrameQueue::builder().capacity(8).max_frame(64).create_typed_split::<String>().unwrap();
        for s in ["x", "y", "z"] {
            tx.send(s.to_string()).unwrap();
        }
        scribble_len(&rx.as_frames().q, 1, 65);
        drop(tx);
        let got: Vec<_> = within_10s(move || rx.iter().collect());
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(got[0].as_deref(), Ok("x")));
        assert!(matches!(got[1], Err(super::super::TypedRecvError::Oversized { len: 65, max: 64 })));
        assert!(matches!(got[2].as_deref(), Ok("z")));
    }
}
