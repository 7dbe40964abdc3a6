//! Queues between processes, as crossbeam's and std's channels: a sending
//! half [`Sender<T>`] and a receiving half [`Receiver<T>`] from [`channel`]
//! (anonymous, inherited by forked children) or from a named [`Queue`]'s
//! builder ([`QueueBuilder::create_receiver`], [`QueueBuilder::open_sender`],
//! ...). [`typed_channel`] carries any serde type ([`TypedSender<T>`],
//! [`TypedReceiver<T>`], with a type fingerprint per message);
//! [`frame_channel`] variable-size byte frames ([`FrameQueue`]);
//! [`QueueBuilder::create_joinable_split`] Python's `task_done` / `join`
//! ([`JoinableQueue`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, rx) = shmproc::queue::channel::<u64>(1024)?; // inherited by forked children
//! tx.send(7)?;
//! assert_eq!(rx.recv()?, 7);
//! drop(tx); // every sender gone: the receiver's iterators end
//! assert_eq!(rx.iter().count(), 0);
//! # Ok(()) }
//! ```
//!
//! Four forked workers draining a task queue end by themselves once the
//! producer drops its sender:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::Process;
//! let (tasks, jobs) = shmproc::queue::channel::<u64>(256)?;
//! let workers: Vec<_> = (0..4)
//!     .map(|_| {
//!         let jobs = jobs.clone();
//!         Process::closure(move || jobs.iter().map(|j| j * 2).sum::<u64>()).start()
//!     })
//!     .collect::<Result<_, _>>()?;
//! drop(jobs);
//! for j in 0..1000 {
//!     tasks.send(j)?;
//! }
//! drop(tasks); // the workers' `jobs.iter()` end once the queue is drained
//! let total: u64 = workers.into_iter().map(|w| w.join()).sum::<Result<_, _>>()?;
//! assert_eq!(total, 999 * 1000);
//! # Ok(()) }
//! ```
//!
//! Two processes by name (the receiver creates; the queue lives while its
//! creator does):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::Queue;
//! // Process A:
//! let rx = Queue::<[u8; 16]>::builder().name("jobs").capacity(4096).create_receiver()?;
//! // Process B (another binary, while A runs):
//! let tx = Queue::<[u8; 16]>::builder().name("jobs").open_sender()?;
//! tx.send([1; 16])?;
//! // A: `rx.recv()` gives the message; once B is gone (dropped its sender,
//! // exited, or was killed) and the queue is drained, `rx.recv()` returns
//! // `Err(RecvError::Disconnected)` and `rx.iter()` ends.
//! # let _ = rx.recv(); Ok(()) }
//! ```
//!
//! * Algorithm: Dmitry Vyukov's bounded MPMC queue (per-slot 64-bit stamps, head
//!   and tail on separate 128-byte lines), extended with *claimed* stamps that
//!   name the claiming process so that a survivor can recover a slot whose
//!   claimer was killed (see `ring.rs` and SAFETY.md section 6). The creator may
//!   pick a single-producer single-consumer mode instead (Lamport's ring with
//!   cached remote indices and batched index publication); its exclusive
//!   endpoints ([`Queue::spsc_sender`], [`Queue::spsc_receiver`]) keep their
//!   indices in process memory (MCRingBuffer's local control variables), read
//!   the other side's index only when the ring looks full or empty, and a
//!   producer facing a full ring waits for a batch of free slots (B-Queue),
//!   and a consumer that keeps catching up with a streaming producer lets it
//!   run ahead (up to about a microsecond and a half) before it looks again
//!   (FastForward's temporal slipping).
//!   The halves and plain handles of an SPSC queue get the same unlocked path
//!   for the thread that uses a side repeatedly (a biased owner, revoked by a
//!   `membarrier` when another thread uses the side: Dice, Moir and Scherer's
//!   quickly reacquirable locks); other threads take a per-operation flag.
//!   Consumers prefetch the line of a published slot a few lines ahead.
//! * Waiting: adaptive by default: poll shared memory for a bounded spin budget,
//!   then sleep on a shared futex. A sender issues `FUTEX_WAKE` only if a sleeper
//!   count says someone sleeps, so the fast path makes no system call; the
//!   sleeper-count handshake uses an asymmetric fence (`membarrier`) so that the
//!   fast path needs no fence either; a queue whose receivers sleep often
//!   is better created [`fenced`](QueueBuilder::fenced) (the default for a
//!   `Blocking` creator), so that sleeping interrupts no other CPU.
//! * Disconnection: every half registers its process and role in a table in
//!   the segment; once every sender has gone (dropped, or died: checked with a
//!   pid-reuse-proof liveness test) and the queue is drained, `recv` returns
//!   `Disconnected`; `send` once every receiver has gone returns
//!   `Disconnected(value)` at once (a receiver that was killed rather than
//!   dropped is noticed within 50 ms by a waiting sender).
//! * Forked children: when [`Process`](crate::Process) forks, the child is
//!   registered at once for every half this process created or cloned since
//!   its previous fork (the halves a child is handed: `let rx = rx.clone();
//!   Process::closure(move || ...)`), so the parent may drop its own half
//!   right after starting children. A child that uses one side of a queue
//!   drops its inherited registration for the other side, so a worker handed
//!   a `Receiver` does not keep the queue connected through the `Sender` it
//!   merely inherited; a half a child never touches counts until the child
//!   exits (as a forked child holds a pipe's inherited fds). A child forked
//!   by other means registers on its first operation on each half.
//! * Halves as arguments: every half (`Sender`, `Receiver`, and the frame,
//!   joinable and typed ones) is a serde type, so
//!   `Process::builder(worker, (rx.clone(), rtx.clone()))` works under every
//!   start method. The parent reserves the child's entry with the half's role
//!   as soon as the child's pid is known (before `start` returns), so the
//!   parent may drop its own halves at once, even before a Spawn or
//!   ForkServer child has opened its copy; an entry of a child that dies is
//!   discounted (see `examples/task_queue.rs`).
//! * The role-less [`Queue`] handle (role [`Role::Both`] unless set) both sends
//!   and receives; while it lives its own receives never see `Disconnected`.
//!   Use the halves unless a handle really does both.

mod error;
mod frames;
mod joinable;
mod raw;
pub(crate) mod ring;
mod split;
pub(crate) mod typed;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;

pub use error::{
    FrameRecvError, FrameSendError, QueueJoinError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TaskDoneError, TryRecvError, TrySendError,
};
pub(crate) use frames::type_info as frame_queue_type_info;
pub use frames::{FrameQueue, FrameQueueBuilder};
pub use joinable::JoinableQueue;
pub(crate) use raw::adopt_forked_child;
pub use raw::{Role, WaitMode};
pub use split::{
    channel, frame_channel, FrameReceiver, FrameSender, IntoIter, JoinableReceiver, JoinableSender, Receiver, Sender,
};
pub use typed::{
    fingerprint_of, typed_channel, TypedReceiver, TypedRecvError, TypedSendError, TypedSender, FINGERPRINT_LEN,
};

use crate::error::OpenError;
use crate::header::{ObjectKind, TypeInfo};
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;
use raw::{Engine, Fail, Geometry, Side, SpscLocal};
use ring::Step;

/// Default capacity of a queue, in messages.
pub const DEFAULT_CAPACITY: usize = 1024;
/// Default size of the participant table (handles that may be open at once;
/// each half of a queue is one per process, and a child forked through
/// `Process` may hold one per half it inherited until its first operation).
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 256;

/// The queue builders' own settings (the segment options live in the
/// builder itself). Not part of the API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub(crate) capacity: usize,
    pub(crate) spsc: bool,
    pub(crate) role: Role,
    pub(crate) wait: WaitMode,
    pub(crate) spin: Option<Duration>,
    pub(crate) max_parts: u32,
    /// [`FrameQueue`] only: the largest frame for `create`.
    pub(crate) max_frame: usize,
    /// `create`: publishers always fence, sleepers skip `membarrier`
    /// (`raw::FLAG_FENCED`); `None`: fenced when the creating handle waits
    /// in [`WaitMode::Blocking`].
    pub(crate) fenced: Option<bool>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: DEFAULT_CAPACITY,
            spsc: false,
            role: Role::Both,
            wait: WaitMode::Adaptive,
            spin: None,
            max_parts: DEFAULT_MAX_PARTICIPANTS,
            max_frame: frames::DEFAULT_MAX_FRAME,
            fenced: None,
        }
    }
}

impl QueueConfig {
    pub(crate) fn geometry(&self, elem_size: u32) -> Result<Geometry, OpenError> {
        let cap = Some(self.capacity)
            .filter(|&c| c > 0)
            .and_then(usize::checked_next_power_of_two)
            .filter(|&c| c > 0 && c as u64 <= ring::MAX_CAPACITY)
            .ok_or_else(|| OpenError::invalid(format!("capacity {} is out of range", self.capacity)))?;
        Ok(Geometry {
            spsc: self.spsc,
            fenced: self.fenced.unwrap_or(self.wait == WaitMode::Blocking),
            elem_size,
            capacity: cap as u64,
            max_parts: self.max_parts,
        })
    }

    /// Applies the per-handle settings and registers the handle.
    pub(crate) fn finish(&self, e: Engine) -> Result<Arc<Engine>, OpenError> {
        e.set_wait_mode(self.wait);
        if let Some(s) = self.spin {
            e.set_spin(s);
        }
        e.register(self.role)?;
        let e = Arc::new(e);
        raw::track(&e);
        Ok(e)
    }
}

/// The queue-specific setters, for every queue builder ([`QueueBuilder`],
/// [`FrameQueueBuilder`]).
impl<O: Object<Params = QueueConfig>> Builder<O> {
    /// Capacity in messages for `create` (rounded up to a power of two;
    /// default 1024).
    pub fn capacity(mut self, n: usize) -> Self {
        self.params.capacity = n;
        self
    }
    /// Creates the queue in single-producer single-consumer mode: faster, but
    /// only one process (and one thread at a time) may send and one receive.
    ///
    /// Choose it for one-to-one traffic where latency matters: in a
    /// request/reply round trip an MPMC consumer frees each slot by writing
    /// its sequence word, and the next producer's claim waits for that
    /// store, one more cache-line hand-over per round trip (measured on a
    /// 2-vCPU AMD EPYC guest: 116 ns against 155 ns for two MPMC queues;
    /// see `pingpong-8B/queue-spsc` in the README).
    pub fn spsc(mut self, spsc: bool) -> Self {
        self.params.spsc = spsc;
        self
    }
    /// This handle's role (default [`Role::Both`]); drives disconnection.
    pub fn role(mut self, role: Role) -> Self {
        self.params.role = role;
        self
    }
    /// How this handle waits (default [`WaitMode::Adaptive`]).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.params.wait = mode;
        self
    }
    /// The adaptive spin budget before sleeping (default 20 us).
    pub fn spin(mut self, budget: std::time::Duration) -> Self {
        self.params.spin = Some(budget);
        self
    }
    /// For `create`: whether every sender fences before it looks for
    /// sleeping receivers, so that a receiver going to sleep needs no
    /// process-wide barrier (default: fenced if this handle waits in
    /// [`WaitMode::Blocking`], not otherwise). Either way no wake-up is lost;
    /// what differs is who pays for the store-load ordering:
    ///
    /// * not fenced: a send is a few nanoseconds cheaper, and a receiver
    ///   that goes to sleep issues `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`,
    ///   an interrupt of every CPU running a process that uses shmproc queues
    ///   (microseconds of their time). Right for queues whose receivers
    ///   mostly find messages waiting or spin until they come.
    /// * fenced: every send runs a full fence, and sleeping costs nothing
    ///   more than the futex. Right for queues whose receivers sleep often:
    ///   bursty traffic, blocking waits (the pool's queues are fenced).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shmproc::Queue;
    /// // Events that come a few per second to a receiver that sleeps between them.
    /// let q = Queue::<u64>::builder().capacity(64).fenced(true).create()?;
    /// q.send(1)?;
    /// assert_eq!(q.recv()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn fenced(mut self, fenced: bool) -> Self {
        self.params.fenced = Some(fenced);
        self
    }
    /// Participant-table size for `create` (default 256 handles open at once).
    pub fn max_participants(mut self, n: u32) -> Self {
        self.params.max_parts = n;
        self
    }
}

/// Maps an engine failure for receives.
fn map_recv(f: Fail) -> RecvTimeoutError {
    match f {
        Fail::Timeout | Fail::WouldBlock => RecvTimeoutError::Timeout,
        Fail::Disconnected => RecvTimeoutError::Disconnected,
        Fail::Corrupt => RecvTimeoutError::Corrupt,
    }
}

/// A bounded queue of fixed-size `T` messages in shared memory, usable from any
/// number of processes and threads.
///
/// Most programs use its halves instead ([`channel`], [`Queue::split`],
/// [`QueueBuilder::create_receiver`], [`QueueBuilder::open_sender`], ...): this
/// role-less handle both sends and receives, so while it lives its own
/// receives never see `Disconnected`.
///
/// Handles are cheap to clone (clones share one registration). See the
/// [module docs](self) for the algorithm, waiting and disconnection.
pub struct Queue<T: Pod> {
    e: Arc<Engine>,
    /// Sides this value holds exclusively (SPSC endpoints): bit 0 send, bit 1 receive.
    excl: u8,
    _t: PhantomData<fn(T) -> T>,
}

/// Builder for [`Queue`]: capacity, mode, role, then `create`, `open`,
/// `open_handle` or `open_or_create`.
pub type QueueBuilder<T> = Builder<Queue<T>>;

fn elem_size<T: Pod>() -> Result<u32, OpenError> {
    const { assert!(std::mem::size_of::<T>() > 0, "a Queue of a zero-sized type carries nothing: use Semaphore") };
    let n = std::mem::size_of::<T>();
    if n == 0 || n > raw::MAX_ELEM as usize {
        return Err(OpenError::invalid(format!("message type of {n} bytes is not supported (1..=16 MiB)")));
    }
    Ok(n as u32)
}

impl<T: Pod> Builder<Queue<T>> {
    pub(crate) fn build_create(self, kind: ObjectKind) -> Result<Queue<T>, OpenError> {
        let geo = self.params.geometry(elem_size::<T>()?)?;
        let e = Engine::create(&self.opts, kind, TypeInfo::of::<T>(), geo)?;
        Ok(Queue { e: self.params.finish(e)?, excl: 0, _t: PhantomData })
    }

    pub(crate) fn build_open(self, kind: ObjectKind, handle: Option<&Handle>) -> Result<Queue<T>, OpenError> {
        let n = elem_size::<T>()?;
        let spec = Engine::spec(kind, TypeInfo::of::<T>());
        let e = Engine::open(self.open_segment(handle, &spec), Some(n))?;
        Ok(Queue { e: self.params.finish(e)?, excl: 0, _t: PhantomData })
    }

    pub(crate) fn build_open_or_create(self, kind: ObjectKind) -> Result<Queue<T>, OpenError> {
        let geo = self.params.geometry(elem_size::<T>()?)?;
        let e = Engine::open_or_create(&self.opts, kind, TypeInfo::of::<T>(), geo)?;
        if e.geo.elem_size != geo.elem_size {
            return Err(OpenError::SizeMismatch { expected: geo.elem_size as u64, found: e.geo.elem_size as u64 });
        }
        Ok(Queue { e: self.params.finish(e)?, excl: 0, _t: PhantomData })
    }

    /// Creates the queue (named if a name was set, else anonymous).
    pub fn create(self) -> Result<Queue<T>, OpenError> {
        self.build_create(ObjectKind::Queue)
    }

    /// Opens the named queue, or creates it with this builder's settings.
    pub fn open_or_create(self) -> Result<Queue<T>, OpenError> {
        self.build_open_or_create(ObjectKind::Queue)
    }
}

crate::object::serde_object!([T: Pod] Queue<T>);
/// `open` and `open_handle` (the queue's capacity and mode come from the segment).
impl<T: Pod> Object for Queue<T> {
    const KIND: ObjectKind = ObjectKind::Queue;
    type Params = QueueConfig;
    fn segment(&self) -> &Segment {
        Queue::segment(self)
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        b.build_open(ObjectKind::Queue, handle)
    }
}

impl<T: Pod> Queue<T> {
    /// A builder with default settings (anonymous, capacity 1024, MPMC, role
    /// `Both`, adaptive waiting).
    pub fn builder() -> QueueBuilder<T> {
        Builder::default()
    }

    /// An anonymous MPMC queue of `capacity` messages, inherited by forked children.
    pub fn anonymous(capacity: usize) -> Result<Self, OpenError> {
        Self::builder().capacity(capacity).create()
    }

    /// Creates a named MPMC queue of `capacity` messages.
    pub fn create(name: &str, capacity: usize) -> Result<Self, OpenError> {
        Self::builder().name(name).capacity(capacity).create()
    }

    /// Opens a named queue.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    #[inline]
    fn push_once(&self, v: &T, optimistic: bool) -> Step {
        self.e.try_push(optimistic, self.excl & 1 != 0, |p| {
            // SAFETY: `p` is the payload of a slot this process owns (claimed, or
            // SPSC producer), at least size_of::<T>() bytes (elem_size checked at
            // open); unaligned write because slots are only 8-aligned.
            unsafe { std::ptr::write_unaligned(p as *mut T, *v) }
        })
    }

    #[inline]
    fn pop_once(&self, out: &mut T) -> Step {
        self.e.try_pop(self.excl & 2 != 0, |p| {
            // SAFETY: `p` is the payload of a published slot this process owns;
            // T is Pod, so any bytes (even a hostile peer's) are a valid T.
            *out = unsafe { std::ptr::read_unaligned(p as *const T) }
        })
    }

    #[inline]
    fn refused(&self) -> bool {
        self.e.send_refused()
    }

    /// Sends `v`, waiting while the queue is full.
    #[inline(always)]
    pub fn send(&self, v: T) -> Result<(), SendError<T>> {
        // SPSC: the thread holding the side's bias sends unlocked
        // (`raw::Bias`), inlined into the caller's loop: no call, so no
        // stack stores queue up behind the index store.
        if self.e.geo.spsc && self.excl == 0 && !self.refused() {
            // SAFETY: the engine passes only the payload of a slot this thread owns.
            if self.e.bias_fast(Side::Send, move |p| unsafe { write_slot(p, v) }) {
                return Ok(());
            }
        }
        self.send_general(v)
    }

    /// [`send`](Self::send) without the SPSC bias.
    #[inline]
    fn send_general(&self, v: T) -> Result<(), SendError<T>> {
        // Fast path, inlined into the caller's loop: no call, no stack traffic
        // queued behind the index store (see PERF notes in the bench module).
        self.e.ensure_registered();
        if !self.refused() && self.push_once(&v, true) == Step::Done {
            self.e.notify(Side::Recv, false);
            return Ok(());
        }
        self.send_slow(v)
    }

    #[cold]
    #[inline(never)]
    fn send_slow(&self, v: T) -> Result<(), SendError<T>> {
        match self.send_deadline(v, None) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(v)) => Err(SendError::Disconnected(v)),
            Err(SendTimeoutError::Corrupt(v)) | Err(SendTimeoutError::Timeout(v)) => Err(SendError::Corrupt(v)),
        }
    }

    /// Sends `v` if there is room now.
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        self.e.ensure_registered();
        if self.refused() {
            return Err(TrySendError::Disconnected(v));
        }
        match self.push_once(&v, true) {
            Step::Done => {
                self.e.notify(Side::Recv, false);
                Ok(())
            }
            Step::Corrupt => Err(TrySendError::Corrupt(v)),
            _ => match self.e.would_block(Side::Send, || self.push_once(&v, false)) {
                Ok(()) => {
                    self.e.notify(Side::Recv, false);
                    Ok(())
                }
                Err(Fail::Disconnected) => Err(TrySendError::Disconnected(v)),
                Err(Fail::Corrupt) => Err(TrySendError::Corrupt(v)),
                Err(_) => Err(TrySendError::Full(v)),
            },
        }
    }

    /// Sends `v`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, v: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_deadline(v, Some(timeout))
    }

    /// `timeout` None: forever. The deadline is computed only if the first
    /// attempt fails, so the hand-over path reads no clock.
    fn send_deadline(&self, v: T, timeout: Option<Duration>) -> Result<(), SendTimeoutError<T>> {
        self.e.ensure_registered();
        if self.refused() {
            return Err(SendTimeoutError::Disconnected(v));
        }
        let r = match self.push_once(&v, true) {
            Step::Done => Ok(()),
            Step::Corrupt => Err(Fail::Corrupt),
            _ => self.e.wait(Side::Send, Deadline::after(timeout), || self.push_once(&v, false)),
        };
        match r {
            Ok(()) => {
                self.e.notify(Side::Recv, false);
                Ok(())
            }
            Err(Fail::Disconnected) => Err(SendTimeoutError::Disconnected(v)),
            Err(Fail::Corrupt) => Err(SendTimeoutError::Corrupt(v)),
            Err(_) => Err(SendTimeoutError::Timeout(v)),
        }
    }

    /// Sends every item of `items` in order, waiting for room as needed. In SPSC
    /// mode each batch that fits publishes the tail once. On failure, the error
    /// carries how many items were sent.
    pub fn send_slice(&self, items: &[T]) -> Result<(), SendError<usize>> {
        self.e.ensure_registered();
        let mut sent = 0usize;
        while sent < items.len() {
            if self.refused() {
                return Err(SendError::Disconnected(sent));
            }
            if self.e.geo.spsc {
                let rest = &items[sent..];
                let k = self.e.spsc_push_batch(self.excl & 1 != 0, rest.len() as u64, |i, p| {
                    // SAFETY: SPSC producer's own free slot, >= size_of T bytes.
                    unsafe { std::ptr::write_unaligned(p as *mut T, rest[i as usize]) }
                });
                match k {
                    None => return Err(SendError::Corrupt(sent)),
                    Some(k) if k > 0 => {
                        sent += k as usize;
                        self.e.notify(Side::Recv, true);
                        continue;
                    }
                    Some(_) => {}
                }
            }
            // One message through the general path (blocks when full).
            match self.send(items[sent]) {
                Ok(()) => sent += 1,
                Err(SendError::Disconnected(_)) => return Err(SendError::Disconnected(sent)),
                Err(SendError::Corrupt(_)) => return Err(SendError::Corrupt(sent)),
            }
        }
        Ok(())
    }

    /// Receives a message, waiting while the queue is empty.
    #[inline(always)]
    pub fn recv(&self) -> Result<T, RecvError> {
        if self.e.geo.spsc && self.excl == 0 {
            let mut out = T::zeroed();
            // SPSC: the thread holding the side's bias receives unlocked (`raw::Bias`).
            // SAFETY: the engine passes only the payload of a published slot this thread owns.
            if self.e.bias_fast(Side::Recv, |p| out = unsafe { read_slot(p) }) {
                return Ok(out);
            }
        }
        self.recv_deadline(None).map_err(|e| match e {
            RecvTimeoutError::Disconnected => RecvError::Disconnected,
            _ => RecvError::Corrupt,
        })
    }

    /// Receives a message if one is there now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.e.ensure_registered();
        let mut out = T::zeroed();
        let r = match self.pop_once(&mut out) {
            Step::Done => Ok(()),
            Step::Corrupt => Err(Fail::Corrupt),
            _ => self.e.would_block(Side::Recv, || self.pop_once(&mut out)),
        };
        match r {
            Ok(()) => {
                self.e.notify(Side::Send, false);
                Ok(out)
            }
            Err(Fail::Disconnected) => Err(TryRecvError::Disconnected),
            Err(Fail::Corrupt) => Err(TryRecvError::Corrupt),
            Err(_) => Err(TryRecvError::Empty),
        }
    }

    /// Receives a message, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_deadline(Some(timeout))
    }

    /// The fast path, inlined into the caller: one attempt, then
    /// [`recv_wait`](Self::recv_wait) out of line.
    #[inline]
    fn recv_deadline(&self, timeout: Option<Duration>) -> Result<T, RecvTimeoutError> {
        self.e.ensure_registered();
        let mut out = T::zeroed();
        match self.pop_once(&mut out) {
            Step::Done => {
                self.e.notify(Side::Send, false);
                Ok(out)
            }
            Step::Corrupt => Err(map_recv(Fail::Corrupt)),
            _ => self.recv_wait(timeout),
        }
    }

    /// [`recv_deadline`](Self::recv_deadline) after a first attempt found
    /// nothing: on an MPMC queue a short poll before the clock is read (a
    /// reply about to land is taken without the clock's cost, and without
    /// starting the deadline for a wait that does not happen), then the
    /// queue's full wait.
    #[inline(never)]
    fn recv_wait(&self, timeout: Option<Duration>) -> Result<T, RecvTimeoutError> {
        let mut out = T::zeroed();
        // Not for SPSC queues: their receive waits slip behind a streaming
        // producer first (`recv_wait_slipping`), which polls taken at once
        // would undo.
        let pre = if !self.e.geo.spsc
            && timeout.map_or(true, |t| t >= crate::wait::PRE_POLL_MIN_TIMEOUT)
            && self.e.wait_mode() != WaitMode::Blocking
        {
            crate::wait::Spinner::poll_batch(crate::wait::QUEUE_PRE_POLLS, || match self.pop_once(&mut out) {
                Step::Done => Some(Ok(())),
                Step::Corrupt => Some(Err(Fail::Corrupt)),
                _ => None,
            })
        } else {
            None
        };
        let r = match pre {
            Some(r) => r,
            None => self.e.recv_wait_slipping(Deadline::after(timeout), || self.pop_once(&mut out)),
        };
        match r {
            Ok(()) => {
                self.e.notify(Side::Send, false);
                Ok(out)
            }
            Err(f) => Err(map_recv(f)),
        }
    }

    /// Waits for at least one message, then receives as many as are there (up to
    /// `buf.len()`) into `buf`; returns how many. In SPSC mode the head is
    /// published once per batch.
    pub fn recv_into(&self, buf: &mut [T]) -> Result<usize, RecvError> {
        if buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.recv()?;
        let mut n = 1;
        if self.e.geo.spsc {
            let rest = &mut buf[1..];
            let k = self.e.spsc_pop_batch(self.excl & 2 != 0, rest.len() as u64, |i, p| {
                // SAFETY: SPSC consumer's own published slot; T is Pod.
                rest[i as usize] = unsafe { std::ptr::read_unaligned(p as *const T) }
            });
            // Corrupt indices (None): return the message already taken; the
            // next call reports them.
            n += k.unwrap_or(0) as usize;
        } else {
            while n < buf.len() {
                match self.pop_once(&mut buf[n]) {
                    Step::Done => n += 1,
                    _ => break,
                }
            }
        }
        self.e.notify(Side::Send, true);
        Ok(n)
    }

    /// Messages in the queue now (a snapshot; clamped to the capacity).
    pub fn len(&self) -> usize {
        self.e.len()
    }

    /// Whether the queue holds no message now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue is full now.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    /// Maximum number of messages.
    pub fn capacity(&self) -> usize {
        self.e.geo.capacity as usize
    }

    /// Whether the queue was created in single-producer single-consumer mode.
    pub fn is_spsc(&self) -> bool {
        self.e.geo.spsc
    }

    /// Changes this handle's role (registering it if needed).
    pub fn set_role(&self, role: Role) -> Result<(), OpenError> {
        self.e.register(role)
    }

    /// Changes how this handle (and its clones) wait.
    pub fn set_wait_mode(&self, mode: WaitMode) {
        self.e.set_wait_mode(mode)
    }

    /// A blocking iterator: yields messages until the queue is disconnected (or corrupt).
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { q: self }
    }

    /// A non-blocking iterator over the messages there now.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { q: self }
    }

    /// How another process opens this queue ([`QueueBuilder::open_handle`]).
    pub fn handle(&self) -> Handle {
        self.e.segment().handle()
    }

    /// The segment holding the queue.
    pub fn segment(&self) -> &Segment {
        self.e.segment()
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.e
    }
}

impl<T: Pod> Queue<T> {
    /// SPSC mode: takes this handle's sending side for one owner, which then
    /// sends without any per-message synchronisation inside this process (the
    /// fastest path). `None` if the queue is MPMC or the side is already taken
    /// through this handle. Sends through the handle or its clones wait until
    /// the endpoint drops, so do not send through them meanwhile. A forked child
    /// inherits the endpoint itself (use it, not the handle, in the child).
    pub fn spsc_sender(&self) -> Option<SpscSender<T>> {
        (self.e.geo.spsc && self.e.take_side(Side::Send)).then(|| SpscSender {
            q: Queue { e: self.e.clone(), excl: 1, _t: PhantomData },
            shared: self.clone(),
            local: SpscLocal::new(),
        })
    }

    /// SPSC mode: takes this handle's receiving side for one owner (see
    /// [`spsc_sender`](Self::spsc_sender)).
    pub fn spsc_receiver(&self) -> Option<SpscReceiver<T>> {
        (self.e.geo.spsc && self.e.take_side(Side::Recv)).then(|| SpscReceiver {
            q: Queue { e: self.e.clone(), excl: 2, _t: PhantomData },
            shared: self.clone(),
            local: SpscLocal::new(),
        })
    }
}

/// The exclusive sending end of an SPSC [`Queue`] ([`Queue::spsc_sender`]).
/// Methods take `&mut self`: one thread at a time, no locking per message.
#[derive(Debug)]
pub struct SpscSender<T: Pod> {
    q: Queue<T>,
    /// What [`SpscSender::queue`] hands out: a plain handle, so that calls
    /// through it (possibly from other threads) never skip the exclusion.
    shared: Queue<T>,
    /// Endpoint-local tail and cached head (see [`raw::SpscLocal`]).
    local: SpscLocal,
}

/// The exclusive receiving end of an SPSC [`Queue`] ([`Queue::spsc_receiver`]).
#[derive(Debug)]
pub struct SpscReceiver<T: Pod> {
    q: Queue<T>,
    /// As in [`SpscSender`].
    shared: Queue<T>,
    /// Endpoint-local head and cached tail (see [`raw::SpscLocal`]).
    local: SpscLocal,
}

impl<T: Pod> SpscSender<T> {
    /// As [`Queue::send`].
    ///
    /// The fast path (inlined) writes the slot, publishes the endpoint's own
    /// tail and looks for sleeping receivers: no call, no read of the
    /// consumer's cache line while the cached head shows room.
    #[inline]
    pub fn send(&mut self, v: T) -> Result<(), SendError<T>> {
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        if !self.q.refused() && self.q.e.spsc_send_fast(&mut self.local, |p| unsafe { write_slot(p, v) }) {
            return Ok(());
        }
        self.send_slow(v)
    }

    #[cold]
    #[inline(never)]
    fn send_slow(&mut self, v: T) -> Result<(), SendError<T>> {
        match self.send_wait(v, Some(None)) {
            Ok(()) => Ok(()),
            Err((Fail::Disconnected, v)) => Err(SendError::Disconnected(v)),
            Err((_, v)) => Err(SendError::Corrupt(v)),
        }
    }

    /// `wait`: `None` do not wait; `Some(timeout)` wait (`None`: forever).
    fn send_wait(&mut self, v: T, wait: Option<Option<Duration>>) -> Result<(), (Fail, T)> {
        if self.q.refused() {
            return Err((Fail::Disconnected, v));
        }
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        if self.q.e.spsc_send_fast(&mut self.local, |p| unsafe { write_slot(p, v) }) {
            return Ok(());
        }
        let deadline = wait.map(Deadline::after);
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        self.q.e.spsc_slow(&mut self.local, Side::Send, deadline, |p| unsafe { write_slot(p, v) }).map_err(|f| (f, v))
    }

    /// As [`Queue::try_send`].
    pub fn try_send(&mut self, v: T) -> Result<(), TrySendError<T>> {
        self.send_wait(v, None).map_err(|(f, v)| match f {
            Fail::Disconnected => TrySendError::Disconnected(v),
            Fail::Corrupt => TrySendError::Corrupt(v),
            _ => TrySendError::Full(v),
        })
    }
    /// As [`Queue::send_timeout`].
    pub fn send_timeout(&mut self, v: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_wait(v, Some(Some(timeout))).map_err(|(f, v)| match f {
            Fail::Disconnected => SendTimeoutError::Disconnected(v),
            Fail::Corrupt => SendTimeoutError::Corrupt(v),
            _ => SendTimeoutError::Timeout(v),
        })
    }
    /// As [`Queue::send_slice`].
    pub fn send_slice(&mut self, items: &[T]) -> Result<(), SendError<usize>> {
        // The batch path publishes the segment's tail itself: resync after it.
        self.local.invalidate();
        self.q.send_slice(items)
    }
    /// The queue, as a plain (non-exclusive) handle: sends and receives on
    /// the side this endpoint holds wait (or fail at once) until it drops.
    pub fn queue(&self) -> &Queue<T> {
        &self.shared
    }
}

impl<T: Pod> SpscReceiver<T> {
    /// As [`Queue::recv`].
    ///
    /// The fast path (inlined) reads the slot, publishes the endpoint's own
    /// head and looks for sleeping senders; it reads the producer's cache
    /// line only when its cached tail shows the ring empty.
    #[inline]
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let mut out = T::zeroed();
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        if self.q.e.spsc_recv_fast(&mut self.local, |p| out = unsafe { read_slot(p) }) {
            return Ok(out);
        }
        self.recv_slow()
    }

    #[cold]
    #[inline(never)]
    fn recv_slow(&mut self) -> Result<T, RecvError> {
        self.recv_wait(Some(None)).map_err(|f| match f {
            Fail::Disconnected => RecvError::Disconnected,
            _ => RecvError::Corrupt,
        })
    }

    /// `wait` as in [`SpscSender::send_wait`].
    fn recv_wait(&mut self, wait: Option<Option<Duration>>) -> Result<T, Fail> {
        let mut out = T::zeroed();
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        if self.q.e.spsc_recv_fast(&mut self.local, |p| out = unsafe { read_slot(p) }) {
            return Ok(out);
        }
        let deadline = wait.map(Deadline::after);
        // SAFETY: the engine passes only the payload of the slot this endpoint owns.
        self.q.e.spsc_slow(&mut self.local, Side::Recv, deadline, |p| out = unsafe { read_slot(p) })?;
        Ok(out)
    }

    /// As [`Queue::try_recv`].
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.recv_wait(None).map_err(|f| match f {
            Fail::Disconnected => TryRecvError::Disconnected,
            Fail::Corrupt => TryRecvError::Corrupt,
            _ => TryRecvError::Empty,
        })
    }
    /// As [`Queue::recv_timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_wait(Some(Some(timeout))).map_err(map_recv)
    }
    /// As [`Queue::recv_into`].
    pub fn recv_into(&mut self, buf: &mut [T]) -> Result<usize, RecvError> {
        // The batch path publishes the segment's head itself: resync after it.
        self.local.invalidate();
        self.q.recv_into(buf)
    }
    /// The queue, as a plain (non-exclusive) handle: sends and receives on
    /// the side this endpoint holds wait (or fail at once) until it drops.
    pub fn queue(&self) -> &Queue<T> {
        &self.shared
    }
}

/// Writes `v` into an SPSC slot payload.
///
/// # Safety
/// `p` is the payload of a free slot the calling producer owns, at least
/// `size_of::<T>()` bytes long (the engine passes only such pointers).
#[inline(always)]
unsafe fn write_slot<T: Pod>(p: *mut u8, v: T) {
    // SAFETY: per the contract; unaligned because slots are only 8-aligned.
    unsafe { std::ptr::write_unaligned(p as *mut T, v) }
}

/// Reads a `T` out of an SPSC slot payload.
///
/// # Safety
/// `p` is the payload of a published slot the calling consumer owns, at
/// least `size_of::<T>()` bytes long.
#[inline(always)]
unsafe fn read_slot<T: Pod>(p: *const u8) -> T {
    // SAFETY: per the contract; T is Pod, so any bytes (even a hostile
    // peer's) are a valid T.
    unsafe { std::ptr::read_unaligned(p as *const T) }
}

impl<T: Pod> Drop for SpscSender<T> {
    fn drop(&mut self) {
        self.q.e.release_side(Side::Send);
    }
}

impl<T: Pod> Drop for SpscReceiver<T> {
    fn drop(&mut self) {
        self.q.e.release_side(Side::Recv);
    }
}

impl<T: Pod> Clone for Queue<T> {
    fn clone(&self) -> Self {
        self.e.touch();
        Queue { e: self.e.clone(), excl: 0, _t: PhantomData }
    }
}

impl<T: Pod> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").field("type", &std::any::type_name::<T>()).field("engine", &self.e).finish()
    }
}

// SAFETY: a Queue moves Pod values by copy through shared memory; the engine is
// Send + Sync (all shared state atomic, slot access exclusive by the protocol).
unsafe impl<T: Pod + Send> Send for Queue<T> {}
// SAFETY: as above; every method takes &self and is safe to call concurrently.
unsafe impl<T: Pod + Send> Sync for Queue<T> {}

/// Blocking iterator from [`Queue::iter`].
#[derive(Debug)]
pub struct Iter<'a, T: Pod> {
    q: &'a Queue<T>,
}

impl<T: Pod> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.q.recv().ok()
    }
}

/// Non-blocking iterator from [`Queue::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a, T: Pod> {
    q: &'a Queue<T>,
}

impl<T: Pod> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.q.try_recv().ok()
    }
}

impl<'a, T: Pod> IntoIterator for &'a Queue<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmObject;
    use std::sync::atomic::{AtomicU64, Ordering};

    static N: AtomicU64 = AtomicU64::new(0);
    fn name(tag: &str) -> String {
        format!("shmproc-test-q{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    #[test]
    fn basic_fifo_both_modes() {
        for spsc in [false, true] {
            let q = Queue::<u64>::builder().capacity(8).spsc(spsc).create().unwrap();
            assert_eq!(q.capacity(), 8);
            assert!(q.is_empty());
            for i in 0..8 {
                q.try_send(i).unwrap();
            }
            assert!(q.is_full());
            assert_eq!(q.try_send(99), Err(TrySendError::Full(99)));
            for i in 0..8 {
                assert_eq!(q.try_recv(), Ok(i));
            }
            assert_eq!(q.try_recv(), Err(TryRecvError::Empty));
            assert_eq!(q.recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout));
            assert!(matches!(q.send_timeout(1, Duration::from_millis(20)), Ok(())));
            q.send_slice(&[2, 3, 4]).unwrap();
            let mut buf = [0u64; 10];
            let mut got = Vec::new();
            while got.len() < 4 {
                let n = q.recv_into(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn a_receive_timeout_is_kept_around_the_first_polls() {
        // The polls before the deadline is taken (`QUEUE_PRE_POLLS`) must not
        // turn a short timeout into none, nor end a long one early; and a
        // message sent while a receive waits is taken, whichever phase sees it.
        for (mode, spsc) in [
            (WaitMode::Adaptive, false),
            (WaitMode::BusyPoll, false),
            (WaitMode::Blocking, false),
            (WaitMode::Adaptive, true),
        ] {
            let q = Queue::<u64>::builder().capacity(8).spsc(spsc).wait_mode(mode).create().unwrap();
            for timeout in
                [Duration::ZERO, Duration::from_micros(10), crate::wait::PRE_POLL_MIN_TIMEOUT, Duration::from_millis(5)]
            {
                let t0 = std::time::Instant::now();
                assert_eq!(q.recv_timeout(timeout), Err(RecvTimeoutError::Timeout), "{mode:?} {timeout:?}");
                assert!(t0.elapsed() >= timeout, "{mode:?}: {timeout:?} ended after {:?}", t0.elapsed());
            }
            let tx = q.clone();
            let sender = std::thread::spawn(move || {
                for i in 0..200u64 {
                    tx.send_timeout(i, Duration::from_secs(10)).unwrap();
                    // Some arrive at once, some while the receiver polls or sleeps.
                    if i % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(i % 40));
                    }
                }
            });
            for i in 0..200u64 {
                assert_eq!(q.recv_timeout(Duration::from_secs(10)), Ok(i), "{mode:?}");
            }
            sender.join().unwrap();
        }
    }

    #[test]
    fn spsc_endpoints_are_exclusive() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let mut tx = q.spsc_sender().unwrap();
        assert!(q.spsc_sender().is_none());
        let mut rx = q.spsc_receiver().unwrap();
        tx.send(1).unwrap();
        tx.send_slice(&[2, 3]).unwrap();
        let mut buf = [0u64; 4];
        assert_eq!(rx.recv().unwrap(), 1);
        assert_eq!(rx.recv_into(&mut buf).unwrap(), 2);
        drop(tx);
        assert!(q.spsc_sender().is_some());
        assert!(Queue::<u64>::anonymous(4).unwrap().spsc_sender().is_none());
    }

    /// Regression: while an SPSC endpoint held a side, an operation on that side
    /// through the plain handle spun on the process-local flag forever,
    /// ignoring `try_*` and its timeout.
    #[test]
    fn spsc_handle_ops_while_endpoint_held_do_not_spin_forever() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let tx = q.spsc_sender().unwrap();
        let rx = q.spsc_receiver().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            let short = Duration::from_millis(20);
            let r = (q2.try_send(1), q2.send_timeout(2, short), q2.try_recv(), q2.recv_timeout(short));
            done_tx.send(r).unwrap();
        });
        let got = done_rx.recv_timeout(Duration::from_secs(10));
        drop((tx, rx)); // unsticks the thread if it spins
        t.join().unwrap();
        let (a, b, c, d) = got.expect("operations on the handle return within their timeouts");
        assert_eq!(a, Err(TrySendError::Full(1)));
        assert_eq!(b, Err(SendTimeoutError::Timeout(2)));
        assert_eq!(c, Err(TryRecvError::Empty));
        assert_eq!(d, Err(RecvTimeoutError::Timeout));
        // Once the endpoints dropped, the handle works again.
        q.try_send(3).unwrap();
        assert_eq!(q.try_recv(), Ok(3));
    }

    /// Regression: `SpscSender::queue()` (and the receiver's) returned the
    /// endpoint's own exclusive handle, so calls through it, from any thread
    /// (the endpoint is `Sync`), skipped the exclusion: a second producer.
    #[test]
    fn spsc_endpoint_queue_accessor_does_not_bypass_exclusion() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let mut tx = q.spsc_sender().unwrap();
        let mut rx = q.spsc_receiver().unwrap();
        assert_eq!(tx.queue().try_send(1), Err(TrySendError::Full(1)));
        assert_eq!(rx.queue().try_recv(), Err(TryRecvError::Empty));
        tx.send(2).unwrap();
        assert_eq!(rx.queue().len(), 1);
        assert_eq!(rx.recv(), Ok(2));
    }

    #[test]
    fn named_open_and_type_checks() {
        let n = name("open");
        let q = Queue::<[u32; 3]>::create(&n, 5).unwrap();
        assert_eq!(q.capacity(), 8);
        let q2 = Queue::<[u32; 3]>::open(&n).unwrap();
        q.send([1, 2, 3]).unwrap();
        assert_eq!(q2.recv().unwrap(), [1, 2, 3]);
        assert!(matches!(Queue::<u64>::open(&n), Err(OpenError::TypeMismatch { .. })));
        let h = Queue::<[u32; 3]>::open_handle(&q.handle()).unwrap();
        h.send([4, 5, 6]).unwrap();
        assert_eq!(q.try_iter().collect::<Vec<_>>(), vec![[4, 5, 6]]);
    }

    #[test]
    fn disconnection_in_process() {
        let rx = Queue::<u32>::builder().capacity(4).role(Role::Receiver).create().unwrap();
        // No sender ever joined: not disconnected, just empty.
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let tx = Queue::<u32>::builder().role(Role::Sender).open_handle(&rx.handle()).unwrap();
        tx.send(1).unwrap();
        drop(tx);
        let t = Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(t), Ok(1));
        assert_eq!(rx.recv_timeout(t), Err(RecvTimeoutError::Disconnected));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        let tx = Queue::<u32>::builder().role(Role::Sender).open_handle(&rx.handle()).unwrap();
        drop(rx);
        assert_eq!(tx.send_timeout(5, t), Err(SendTimeoutError::Disconnected(5)));
        assert_eq!(tx.try_send(6), Err(TrySendError::Disconnected(6)));
    }

    #[test]
    fn blocking_handover_between_threads() {
        for mode in [WaitMode::Adaptive, WaitMode::Blocking, WaitMode::BusyPoll] {
            let q = Queue::<u64>::builder().capacity(2).wait_mode(mode).create().unwrap();
            let q2 = q.clone();
            let t = std::thread::spawn(move || {
                (0..2000u64).map(|_| q2.recv_timeout(Duration::from_secs(10)).unwrap()).sum::<u64>()
            });
            for i in 0..2000u64 {
                q.send_timeout(i, Duration::from_secs(10)).unwrap();
            }
            assert_eq!(t.join().unwrap(), (0..2000u64).sum());
        }
    }

    /// Regression guard for the crash guarantee: a producer that died between
    /// claiming a slot and publishing it must not wedge receivers.
    #[test]
    fn dead_producer_claim_is_skipped() {
        use ring::RingMem;
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        for mode in [WaitMode::Adaptive, WaitMode::Blocking, WaitMode::BusyPoll] {
            let q = Queue::<u64>::builder().capacity(4).wait_mode(mode).create().unwrap();
            let e = q.engine();
            // As if `dead` had claimed position 0 and been killed before publishing.
            e.stamp(0).store(ring::claim_stamp(false, dead, 0), std::sync::atomic::Ordering::SeqCst);
            e.tail().store(1, std::sync::atomic::Ordering::SeqCst);
            q.send(5).unwrap();
            assert_eq!(q.try_recv(), Err(TryRecvError::Empty), "the stalled slot blocks the head at first");
            assert_eq!(q.recv_timeout(Duration::from_secs(10)), Ok(5));
            // The recovered slot is reused on the next lap.
            for i in 0..8 {
                q.send(i).unwrap();
                assert_eq!(q.recv_timeout(Duration::from_secs(10)), Ok(i));
            }
        }
    }

    /// A consumer that died while reading must not wedge senders once the
    /// ring wraps around to its slot; only its own message is lost.
    #[test]
    fn dead_consumer_claim_is_recovered() {
        use ring::RingMem;
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let q = Queue::<u64>::builder().capacity(2).create().unwrap();
        q.send(1).unwrap();
        q.send(2).unwrap();
        let e = q.engine();
        e.stamp(0).store(ring::claim_stamp(true, dead, 0), std::sync::atomic::Ordering::SeqCst);
        e.head().store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(q.try_send(3), Err(TrySendError::Full(3))));
        q.send_timeout(3, Duration::from_secs(10)).unwrap();
        assert_eq!(q.try_iter().collect::<Vec<_>>(), vec![2, 3]);
    }

    /// Random bytes over every part of a live queue's payload (configuration,
    /// indices, stamps, participants, frame lengths): errors, never a panic or
    /// an out-of-bounds access.
    /// The endpoints' local indices across threads: a small ring wraps many
    /// times, both sides run out (full / empty) and, in blocking mode, sleep
    /// and must be woken; batch calls in between resync the local state.
    #[test]
    fn spsc_endpoints_local_indices_wrap_and_wake() {
        let n: u64 = if cfg!(miri) { 200 } else { 20_000 };
        for mode in [WaitMode::Blocking, WaitMode::Adaptive] {
            let q = Queue::<u64>::builder().capacity(8).spsc(true).wait_mode(mode).create().unwrap();
            let mut tx = q.spsc_sender().unwrap();
            let mut rx = q.spsc_receiver().unwrap();
            let t = std::thread::spawn(move || {
                let mut i = 0u64;
                while i < n {
                    match i % 1000 {
                        0 => {
                            tx.send_slice(&[i, i + 1, i + 2]).unwrap();
                            i += 3;
                        }
                        500 => match tx.try_send(i) {
                            Ok(()) => i += 1,
                            Err(TrySendError::Full(_)) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        },
                        _ => {
                            tx.send_timeout(i, Duration::from_secs(10)).unwrap();
                            i += 1;
                        }
                    }
                }
                tx
            });
            let mut want = 0u64;
            let mut buf = [0u64; 5];
            while want < n {
                if want % 777 == 0 {
                    let k = rx.recv_into(&mut buf).unwrap();
                    for v in &buf[..k] {
                        assert_eq!(*v, want);
                        want += 1;
                    }
                } else {
                    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(want), "{mode:?}");
                    want += 1;
                }
            }
            let tx = t.join().unwrap();
            assert!(q.is_empty());
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
            drop((tx, rx));
            // The plain handle continues where the endpoints left off.
            q.try_send(5).unwrap();
            assert_eq!(q.try_recv(), Ok(5));
        }
    }

    /// A hostile writer moves the other side's index out of range while
    /// endpoints are in use: every call returns (Corrupt), none panics.
    #[test]
    fn spsc_endpoint_scribbled_index_is_corrupt() {
        for (off, garbage) in [(128usize, 1u64 << 40), (256, u64::MAX - 3)] {
            let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
            let mut tx = q.spsc_sender().unwrap();
            let mut rx = q.spsc_receiver().unwrap();
            tx.send(1).unwrap();
            assert_eq!(rx.recv(), Ok(1));
            let base = q.segment().payload_ptr().as_ptr();
            // SAFETY: offsets 128 (tail) and 256 (head) are 8-aligned u64s
            // inside the control block; the queue tolerates any value there.
            unsafe { (base.add(off) as *const AtomicU64).as_ref().unwrap().store(garbage, Ordering::SeqCst) };
            let short = Duration::from_millis(5);
            if off == 128 {
                assert_eq!(rx.recv_timeout(short), Err(RecvTimeoutError::Corrupt));
                assert_eq!(rx.try_recv(), Err(TryRecvError::Corrupt));
                assert_eq!(rx.recv(), Err(RecvError::Corrupt));
            } else {
                // The producer trusts its cached head until the ring looks full.
                let mut saw = false;
                for i in 0..20 {
                    match tx.send_timeout(i, short) {
                        Ok(()) => {}
                        Err(SendTimeoutError::Corrupt(_)) => saw = true,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                assert!(saw);
                assert!(matches!(tx.try_send(0), Err(TrySendError::Corrupt(0))));
            }
        }
    }

    /// A hostile writer moves a receiving endpoint's own index, which it
    /// publishes and reads back only at its periodic check: that check says
    /// Corrupt, and so does every call after it while the index stays wrong
    /// (none hands out a slot that was never sent, or sent before); once the
    /// index is put back, the endpoint carries on.
    #[test]
    fn spsc_endpoint_scribbled_own_index_stays_corrupt() {
        for garbage in [1u64 << 40, u64::MAX - 100, 2] {
            let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
            let mut tx = q.spsc_sender().unwrap();
            let mut rx = q.spsc_receiver().unwrap();
            tx.send(1).unwrap();
            assert_eq!(rx.recv(), Ok(1));
            let base = q.segment().payload_ptr().as_ptr();
            // SAFETY: offset 256 (head) is an 8-aligned u64 inside the control
            // block; the queue tolerates any value there.
            let head = unsafe { (base.add(256) as *const AtomicU64).as_ref().unwrap() };
            head.store(garbage, Ordering::SeqCst);
            let short = Duration::from_millis(5);
            assert_eq!(rx.recv_timeout(short), Err(RecvTimeoutError::Corrupt), "garbage {garbage}");
            assert_eq!(rx.try_recv(), Err(TryRecvError::Corrupt), "garbage {garbage}");
            assert_eq!(rx.recv_timeout(short), Err(RecvTimeoutError::Corrupt), "garbage {garbage}");
            assert_eq!(rx.recv(), Err(RecvError::Corrupt), "garbage {garbage}");
            head.store(1, Ordering::SeqCst);
            tx.send(2).unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(2), "garbage {garbage}");
        }
    }

    /// The batch paths cache the other side's index in the segment: one
    /// found corrupt must not be cached, or it would be trusted later, once
    /// the own index has moved to where it looks valid (here, after the
    /// hostile writer has put the index back): a consumer would then take
    /// slots never sent (or taken before) as messages.
    #[test]
    fn spsc_batch_receive_never_trusts_a_tail_found_corrupt() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let mut tx = q.spsc_sender().unwrap();
        let mut rx = q.spsc_receiver().unwrap();
        tx.send(1).unwrap();
        assert_eq!(rx.recv(), Ok(1));
        let base = q.segment().payload_ptr().as_ptr();
        // SAFETY: offset 128 (tail) is an 8-aligned u64 inside the control
        // block; the queue tolerates any value there.
        let tail = unsafe { (base.add(128) as *const AtomicU64).as_ref().unwrap() };
        tail.store(10, Ordering::SeqCst);
        let mut buf = [0u64; 8];
        assert_eq!(rx.recv_into(&mut buf), Err(RecvError::Corrupt));
        tail.store(1, Ordering::SeqCst);
        tx.send(2).unwrap();
        assert_eq!(rx.recv(), Ok(2));
        tx.send(3).unwrap();
        assert_eq!(rx.recv_into(&mut buf), Ok(1));
        assert_eq!(buf[0], 3);
    }

    /// The producer's side of the same: a head found corrupt and cached
    /// would later let a batch send overwrite a message not yet received,
    /// and return Ok.
    #[test]
    fn spsc_batch_send_never_trusts_a_head_found_corrupt() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let mut tx = q.spsc_sender().unwrap();
        let mut rx = q.spsc_receiver().unwrap();
        tx.send_slice(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let base = q.segment().payload_ptr().as_ptr();
        // SAFETY: offset 256 (head) is an 8-aligned u64 inside the control
        // block; the queue tolerates any value there.
        let head = unsafe { (base.add(256) as *const AtomicU64).as_ref().unwrap() };
        head.store(9, Ordering::SeqCst);
        assert_eq!(tx.send_slice(&[9]), Err(SendError::Corrupt(0)));
        head.store(0, Ordering::SeqCst);
        let second = Duration::from_secs(10);
        for want in 1..=4 {
            assert_eq!(rx.recv_timeout(second), Ok(want));
        }
        for v in 9..=12 {
            tx.send_timeout(v, second).unwrap();
        }
        // The ring is full: this batch send must wait for the receiver (it
        // cannot finish before the receiver takes a message, whatever the
        // timing; the pause gives a wrong one time to show).
        let sender = std::thread::spawn(move || tx.send_slice(&[13]));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!sender.is_finished(), "a batch send returned while the ring was full");
        let got: Vec<u64> = (0..9).map(|_| rx.recv_timeout(second).unwrap()).collect();
        assert_eq!(got, (5..=13).collect::<Vec<u64>>());
        assert_eq!(sender.join().unwrap(), Ok(()));
    }

    #[test]
    fn scribbled_payload_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let short = Duration::from_millis(1);
        for round in 0..200 {
            let spsc = round % 2 == 1;
            let q = Queue::<u64>::builder().capacity(8).spsc(spsc).create().unwrap();
            let f = FrameQueue::builder().capacity(4).max_frame(24).spsc(spsc).create().unwrap();
            for i in 0..5 {
                let _ = q.try_send(i);
                let _ = f.try_send(&[i as u8; 9]);
            }
            for seg in [q.segment(), f.segment()] {
                let len = seg.payload_len();
                let base = seg.payload_ptr().as_ptr();
                for _ in 0..(1 + rnd() % 8) {
                    let off = (rnd() as usize % (len - 8)) & !7;
                    // SAFETY: off + 8 <= payload_len, 8-aligned; the queue's
                    // atomics tolerate any bytes (that is what is tested).
                    unsafe { (base.add(off) as *mut u64).write_volatile(rnd() >> (rnd() % 64)) };
                }
            }
            for i in 0..6 {
                let _ = q.try_send(i);
                let _ = q.try_recv();
                let _ = q.send_timeout(i, short);
                let _ = q.recv_timeout(short);
                let _ = (q.len(), q.is_full(), q.is_empty());
                let _ = f.try_send(&[1; 24]);
                let _ = f.try_recv();
                let _ = f.recv_timeout(short);
            }
        }
    }

    #[test]
    fn bad_arguments() {
        assert!(matches!(Queue::<u64>::anonymous(0), Err(OpenError::InvalidArgument { .. })));
        assert!(matches!(
            Queue::<u64>::builder().capacity(4).max_participants(0).create(),
            Err(OpenError::InvalidArgument { .. })
        ));
        assert!(matches!(Queue::<u64>::anonymous(usize::MAX), Err(OpenError::InvalidArgument { .. })));
    }

    #[test]
    fn participant_table_full() {
        let q = Queue::<u64>::builder().capacity(4).max_participants(2).create().unwrap();
        let _b = Queue::<u64>::open_handle(&q.handle()).unwrap();
        assert!(matches!(Queue::<u64>::open_handle(&q.handle()), Err(OpenError::InvalidArgument { .. })));
    }
}
