//! The untyped queue engine shared by [`Queue`](super::Queue),
//! [`FrameQueue`](super::FrameQueue) and [`JoinableQueue`](super::JoinableQueue):
//! the segment layout, the participant table, and the adaptive waiting.
//!
//! ## Payload layout (offsets from the payload start; see SAFETY.md section 6)
//!
//! | offset | size | field             | who writes                                          |
//! |-------:|-----:|-------------------|-----------------------------------------------------|
//! | 0      | 4    | `magic`           | creator (`b"SHQ1"`)                                 |
//! | 4      | 4    | `mode`            | creator: 1 MPMC, 2 SPSC                             |
//! | 8      | 4    | `elem_size`       | creator: bytes per message slot payload             |
//! | 12     | 4    | `max_parts`       | creator: participant-table entries                  |
//! | 16     | 8    | `capacity`        | creator: slots, a power of two                      |
//! | 24     | 4    | `stride`          | creator: bytes per slot                             |
//! | 28     | 4    | `flags`           | creator: bit 0 `FENCED` (publishers fence, see `notify`); other bits 0 |
//! | 32     | 4    | `sender_joined`   | 1 once any sender registered                        |
//! | 36     | 4    | `receiver_joined` | 1 once any receiver registered                      |
//! | 40     | 4    | `no_senders`      | hint: 1 when a scan found no sender                 |
//! | 44     | 4    | `no_receivers`    | hint: 1 when a scan found no receiver               |
//! | 48     | 8    | `unfinished`      | JoinableQueue: tasks put and not yet done           |
//! | 56     | 4    | `join_word`       | JoinableQueue: futex bumped when `unfinished` hits 0|
//! | 60     | 4    | `join_waiters`    | JoinableQueue: joiners asleep                       |
//! | 128    | 8    | `tail`            | producers (own cache line, padded to 128)           |
//! | 136    | 8    | `head_cache`      | SPSC producer's copy of `head`                      |
//! | 256    | 8    | `head`            | consumers (own cache line)                          |
//! | 264    | 8    | `tail_cache`      | SPSC consumer's copy of `tail`                      |
//! | 384    | 4    | `not_empty`       | futex: bumped by a sender that saw sleeping receivers |
//! | 388    | 4    | `recv_sleepers`   | receivers registered as sleeping                    |
//! | 392    | 4    | `not_full`        | futex: bumped by a receiver that saw sleeping senders |
//! | 396    | 4    | `send_sleepers`   | senders registered as sleeping                      |
//! | 512    | 32 * `max_parts` | participants | one entry per registered handle        |
//! | `slots_off` | `capacity * stride` | slots | `slots_off` = 512 + 32 * max_parts, rounded up to 128 |
//!
//! A slot is `stamp: u64` then the payload (MPMC), or just the payload (SPSC);
//! `stride` is that rounded up to 8. A participant entry is `word: u64`
//! (`pid | roles << 32 | 1 << 40`, plus `1 << 41` for an entry a parent wrote
//! for a forked child, see [`adopt_forked_child`]; 0 = free) and
//! `start_time: u64` (field 22 of `/proc/<pid>/stat`, 0 while unknown), then
//! 16 reserved bytes.
//!
//! The configuration fields are validated once at open and copied into the
//! handle; later scribbles over them change nothing.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::ring::{self, RingMem, Stall, Step};
use crate::error::OpenError;
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::peer::{self, Identity, RateLimit};
use crate::segment::{Segment, SegmentOptions};
use crate::sys;
use crate::time::Deadline;
use crate::wait::{self, Announce, Kernel, Next, Phase, PEER_SLICE, QUEUE_DEEP_EVERY, STALL_SLICE};

pub(crate) const QMAGIC: u32 = u32::from_le_bytes(*b"SHQ1");
pub(crate) const MODE_MPMC: u32 = 1;
pub(crate) const MODE_SPSC: u32 = 2;
/// `flags` bit 0: every publisher runs a full fence before it reads the
/// sleeper count (never the fence-free publish), so a sleeper needs no
/// `membarrier` after it registers. For queues whose consumers sleep often
/// (the pool's; by default those a `Blocking` handle creates; any queue
/// through `QueueBuilder::fenced`): a `membarrier` per sleep costs more
/// there than a fence per send.
pub(crate) const FLAG_FENCED: u32 = 1;
const CONTROL_SIZE: usize = 512;
const PART_SIZE: usize = 32;
/// Largest participant table.
pub(crate) const MAX_PARTS: u32 = 4096;
/// Largest payload bytes per slot (16 MiB).
pub(crate) const MAX_ELEM: u32 = 1 << 24;

/// Role bit: this handle sends.
pub(crate) const ROLE_SEND: u8 = 1;
/// Role bit: this handle receives.
pub(crate) const ROLE_RECV: u8 = 2;
const ENTRY_USED: u64 = 1 << 40;
/// Entry flag: written by a parent, right after it forked, for the child
/// (whose pid the entry names); the child takes it over on first use, and
/// drops it if it uses the other side instead (see [`adopt_forked_child`]).
const ENTRY_INHERITED: u64 = 1 << 41;

/// Every engine of this process (weakly), so that a fork through
/// [`crate::Process`] can register the child for the halves it inherits.
///
/// Not a `std::sync::Mutex`: another thread may fork while one holds the
/// lock, and the child would then find it held forever. The lock word holds
/// the holder's fork generation; a child (another generation) that finds it
/// held takes it over and starts from an empty list (the inherited one may
/// have been half-updated; it is leaked, never read).
struct Live {
    lock: AtomicU64,
    list: std::cell::UnsafeCell<Vec<Weak<Engine>>>,
}

// SAFETY: `list` is only touched between `Live::with`'s acquire of `lock`
// and its release; Weak<Engine> is Send + Sync (Engine is).
unsafe impl Sync for Live {}

static LIVE: Live = Live { lock: AtomicU64::new(0), list: std::cell::UnsafeCell::new(Vec::new()) };

impl Live {
    fn with<R>(&self, f: impl FnOnce(&mut Vec<Weak<Engine>>) -> R) -> R {
        let me = sys::fork_generation().max(1);
        loop {
            let cur = self.lock.load(Ordering::Relaxed);
            if cur == 0 {
                if self.lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    break;
                }
            } else if cur != me {
                // Held by a thread of the process we were forked from.
                if self.lock.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    // SAFETY: we hold the lock now; the old list is forgotten, not dropped.
                    std::mem::forget(std::mem::take(unsafe { &mut *self.list.get() }));
                    break;
                }
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: we hold the lock (acquired above) until the release below.
        let r = f(unsafe { &mut *self.list.get() });
        self.lock.store(0, Ordering::Release);
        r
    }
}

/// Remembers `e` for [`adopt_forked_child`].
pub(crate) fn track(e: &Arc<Engine>) {
    LIVE.with(|live| {
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(e));
    });
}

/// Called by the parent right after `fork()` returned `child` (before the
/// caller's code runs again): registers the child, in every queue of which
/// this process created or cloned a handle since its previous fork (the
/// handles a child is given: `let rx = rx.clone(); Process::closure(move
/// || ...)`), with the roles this process holds there, marked inherited. So a parent that drops its own half right after starting
/// children never makes the queue look disconnected before the children's
/// first operations. The child takes the entry over on its first operation
/// on that half; a child that uses one side of a queue drops the inherited
/// entries of the other side (a worker given a `Receiver` does not keep the
/// queue connected through the `Sender` it merely inherited); an entry the
/// child never touches lasts until it exits. "Since its previous fork" is
/// counted per thread too: a handle made or cloned by a thread goes to the
/// child of that thread's next fork however many forks other threads made
/// meanwhile (the price: if that child is not the one the handle was meant
/// for, it holds an entry it never uses until it exits, as any over-eager
/// registration here does).
pub(crate) fn adopt_forked_child(child: u32, start_time: u64) {
    let live: Vec<Arc<Engine>> = LIVE.with(|live| {
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    });
    if live.is_empty() {
        return;
    }
    // The child's start time (`sys::forked_start_time`: read from `/proc`
    // unless known without; 0 if unknown) makes its entries pid-reuse-proof
    // from the start.
    for e in live {
        e.reserve_for_child(child, start_time);
    }
}

/// Default adaptive spin budget (see the constants table in [`crate::wait`]).
pub(crate) const DEFAULT_SPIN: Duration = wait::QUEUE_SPIN;

#[repr(C)]
pub(crate) struct Control {
    magic: u32,
    mode: u32,
    elem_size: u32,
    max_parts: u32,
    capacity: u64,
    stride: u32,
    flags: u32,
    sender_joined: AtomicU32,
    receiver_joined: AtomicU32,
    no_senders: AtomicU32,
    no_receivers: AtomicU32,
    pub(crate) unfinished: AtomicU64,
    pub(crate) join_word: AtomicU32,
    pub(crate) join_waiters: AtomicU32,
    _pad0: [u8; 64],
    tail: AtomicU64,
    head_cache: AtomicU64,
    _pad1: [u8; 112],
    head: AtomicU64,
    tail_cache: AtomicU64,
    _pad2: [u8; 112],
    not_empty: AtomicU32,
    recv_sleepers: AtomicU32,
    not_full: AtomicU32,
    send_sleepers: AtomicU32,
    _pad3: [u8; 112],
}

const _: () = assert!(std::mem::size_of::<Control>() == CONTROL_SIZE);
const _: () = assert!(std::mem::align_of::<Control>() == 8);
const _: () = assert!(std::mem::offset_of!(Control, sender_joined) == 32);
const _: () = assert!(std::mem::offset_of!(Control, unfinished) == 48);
const _: () = assert!(std::mem::offset_of!(Control, tail) == 128);
const _: () = assert!(std::mem::offset_of!(Control, head) == 256);
const _: () = assert!(std::mem::offset_of!(Control, not_empty) == 384);
const _: () = assert!(std::mem::offset_of!(Control, send_sleepers) == 396);

#[repr(C)]
struct Participant {
    word: AtomicU64,
    start_time: AtomicU64,
    _reserved: [u64; 2],
}
const _: () = assert!(std::mem::size_of::<Participant>() == PART_SIZE);

/// How a handle waits when it cannot proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Poll shared memory for a bounded spin budget (20 us by default), then
    /// sleep on a futex. The right choice almost always.
    #[default]
    Adaptive,
    /// Never spin: sleep on a futex at once. Lowest CPU use, slowest hand-over.
    Blocking,
    /// Never sleep: poll until the operation succeeds or times out. For callers
    /// that own a core; an idle receiver burns 100% of one.
    BusyPoll,
}

impl WaitMode {
    fn to_u8(self) -> u8 {
        match self {
            WaitMode::Adaptive => 0,
            WaitMode::Blocking => 1,
            WaitMode::BusyPoll => 2,
        }
    }
    fn from_u8(v: u8) -> WaitMode {
        match v {
            1 => WaitMode::Blocking,
            2 => WaitMode::BusyPoll,
            _ => WaitMode::Adaptive,
        }
    }
}

/// Which ends of the queue a handle uses; drives disconnection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Sends and receives (the default). While such a handle lives, its own
    /// receives never see `Disconnected`.
    #[default]
    Both,
    /// Only sends: receivers see `Disconnected` once every sender is gone.
    Sender,
    /// Only receives: senders see `Disconnected` once every receiver is gone.
    Receiver,
}

impl Role {
    pub(crate) fn bits(self) -> u8 {
        match self {
            Role::Both => ROLE_SEND | ROLE_RECV,
            Role::Sender => ROLE_SEND,
            Role::Receiver => ROLE_RECV,
        }
    }
}

/// Why a queue operation failed, before it is mapped to the public error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    WouldBlock,
    Timeout,
    Disconnected,
    Corrupt,
}

/// Sending or receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Send,
    Recv,
}

/// Creation parameters of the engine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) spsc: bool,
    /// Publishers always fence before they look for sleepers, so sleepers
    /// need no `membarrier` ([`FLAG_FENCED`]).
    pub(crate) fenced: bool,
    pub(crate) elem_size: u32,
    pub(crate) capacity: u64,
    pub(crate) max_parts: u32,
}

impl Geometry {
    fn stride(&self) -> usize {
        let payload = (self.elem_size as usize).div_ceil(8) * 8;
        if self.spsc {
            payload
        } else {
            payload + 8
        }
    }
    fn slots_off(&self) -> usize {
        (CONTROL_SIZE + PART_SIZE * self.max_parts as usize).div_ceil(128) * 128
    }
    fn payload_size(&self) -> Option<usize> {
        (self.capacity as usize).checked_mul(self.stride())?.checked_add(self.slots_off())
    }
    pub(crate) fn check(&self) -> Result<usize, OpenError> {
        if self.capacity == 0 || !self.capacity.is_power_of_two() || self.capacity > ring::MAX_CAPACITY {
            return Err(OpenError::invalid(format!(
                "capacity {} must be a power of two between 1 and {}",
                self.capacity,
                ring::MAX_CAPACITY
            )));
        }
        if self.elem_size == 0 || self.elem_size > MAX_ELEM {
            return Err(OpenError::invalid(format!("message size {} is not in 1..={MAX_ELEM}", self.elem_size)));
        }
        if self.max_parts == 0 || self.max_parts > MAX_PARTS {
            return Err(OpenError::invalid(format!("max_participants must be in 1..={MAX_PARTS}")));
        }
        self.payload_size()
            .filter(|&n| n <= isize::MAX as usize / 2)
            .ok_or_else(|| OpenError::invalid("the queue would be larger than the address space"))
    }
}

struct Reg {
    pid: u32,
    index: usize,
    word: u64,
}

/// A process-local value alone on a 128-byte block (two cache lines: the
/// adjacent-line prefetcher moves lines in pairs).
#[repr(C, align(128))]
struct LinePadded<T>(T);

/// The process-local state behind every handle to one queue (shared by clones).
pub(crate) struct Engine {
    seg: Segment,
    ctl: NonNull<Control>,
    parts: NonNull<Participant>,
    slots: NonNull<u8>,
    /// Slot 0's payload: `slots`, past the sequence word of an MPMC slot.
    payload0: NonNull<u8>,
    /// `geo.capacity - 1` (the capacity is a power of two).
    mask: u64,
    pub(crate) geo: Geometry,
    stride: usize,
    /// SPSC receiving endpoints prefetch the slot this many messages ahead
    /// ([`PREFETCH_BYTES`] / stride, at least 1).
    prefetch_ahead: u64,
    /// A [`sys::ForkSafeMutex`]: a child forked while another thread
    /// registers still registers itself at its first operation.
    reg: sys::ForkSafeMutex<Option<Reg>>,
    /// Fork generation ([`sys::fork_generation`]) of the registration: a
    /// forked child sees another and registers itself on first use.
    reg_gen: AtomicU64,
    role: AtomicU8,
    wait_mode: AtomicU8,
    spin_ns: AtomicU64,
    /// Throttles deep (liveness) scans of the participant table.
    last_deep: RateLimit,
    /// The per-operation exclusion flags of the two sides ([`Busy`]), each on
    /// its own cache line: a sending and a receiving thread of one process
    /// write them on every SPSC operation, and would otherwise invalidate
    /// each other's (and every reader's) copy of this engine's read-mostly fields.
    tx_busy: LinePadded<AtomicU64>,
    rx_busy: LinePadded<AtomicU64>,
    /// The biased fast path of each side's shared handles ([`Bias`]).
    tx_bias: Bias,
    rx_bias: Bias,
    /// An exclusive SPSC endpoint holds `tx_busy` (`rx_busy`) until it drops:
    /// other handles must not spin for the flag then (they would spin forever).
    tx_endpoint: AtomicBool,
    rx_endpoint: AtomicBool,
    /// This process registered for asymmetric barriers: publish without a fence.
    fence_free: AtomicBool,
    /// Empty/full results of `try_*` calls (throttles liveness checks). On
    /// a line of its own, as `rx_slip`: a thread polling with `try_recv`
    /// writes it on every empty result, and would otherwise take the line of
    /// the fields every other thread's send and receive read.
    polls: LinePadded<AtomicU32>,
    /// `pause`s a typed receive on an SPSC queue slips before it looks
    /// ([`Engine::recv_wait_slipping`]); shared by the clones of this handle
    /// in this process; a hint, so relaxed.
    rx_slip: LinePadded<AtomicU32>,
    /// Fork generation in which this process last dropped its inherited
    /// entries of the other side ([`Engine::shed_inherited`]).
    shed_gen: AtomicU64,
    /// `sys::fork_count()` when a handle to this engine was last created or
    /// cloned in this process: a fork right after that hands the handle to
    /// the child ([`adopt_forked_child`]).
    touched_forks: AtomicU64,
    /// `sys::thread_fork_stamp()` of that creation or clone: the same
    /// thread's next fork hands the handle over even when other threads
    /// forked in between (which defeats `touched_forks`).
    touched_thread: AtomicU64,
}

// SAFETY: the engine holds a segment (Send + Sync) and pointers into its mapping;
// every access to shared memory goes through atomics, or through slot copies that
// the ring protocol makes exclusive; process-local state is atomic or in a Mutex,
// except each side's `Bias::local`, which only the bias owner thread (or a thread
// holding the side's `busy` flag while there is no owner) touches (see `Bias`).
unsafe impl Send for Engine {}
// SAFETY: as above.
unsafe impl Sync for Engine {}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("mode", &if self.geo.spsc { "spsc" } else { "mpmc" })
            .field("fenced", &self.geo.fenced)
            .field("capacity", &self.geo.capacity)
            .field("elem_size", &self.geo.elem_size)
            .field("len", &self.len())
            .field("segment", &self.seg)
            .finish()
    }
}

impl RingMem for Engine {
    type A = AtomicU64;
    #[inline]
    fn capacity(&self) -> u64 {
        self.geo.capacity
    }
    #[inline]
    fn tail(&self) -> &AtomicU64 {
        &self.ctl().tail
    }
    #[inline]
    fn head(&self) -> &AtomicU64 {
        &self.ctl().head
    }
    #[inline]
    fn head_cache(&self) -> &AtomicU64 {
        &self.ctl().head_cache
    }
    #[inline]
    fn tail_cache(&self) -> &AtomicU64 {
        &self.ctl().tail_cache
    }
    #[inline]
    fn stamp(&self, i: u64) -> &AtomicU64 {
        let i = (i & (self.geo.capacity - 1)) as usize;
        // SAFETY: i < capacity (masked), so the slot lies within the validated
        // slot area; MPMC slots start with an 8-aligned u64 stamp (stride is a
        // multiple of 8, slots_off a multiple of 128, the payload 128-aligned).
        unsafe { &*(self.slots.as_ptr().add(i * self.stride) as *const AtomicU64) }
    }
    #[inline]
    unsafe fn write(&self, i: u64, src: &[u8]) {
        let p = self.slot_payload(i);
        let n = src.len().min(self.geo.elem_size as usize);
        // SAFETY: the slot payload has elem_size bytes; the caller owns the slot.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, n) };
    }
    #[inline]
    unsafe fn read(&self, i: u64, dst: &mut [u8]) {
        let p = self.slot_payload(i);
        let n = dst.len().min(self.geo.elem_size as usize);
        // SAFETY: as in `write`; the caller owns the published slot.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), n) };
    }
    #[inline]
    fn prefetch_published(&self, head: u64, avail: u64) {
        if avail > self.prefetch_ahead {
            ring::prefetch(self.slot_payload(head.wrapping_add(self.prefetch_ahead)));
        }
    }
}

impl Engine {
    #[inline]
    fn ctl(&self) -> &Control {
        // SAFETY: the payload starts with a 512-byte Control (checked at open);
        // the fields others write are atomics, the rest we only read.
        unsafe { self.ctl.as_ref() }
    }

    pub(crate) fn control(&self) -> &Control {
        self.ctl()
    }

    /// Pointer to the payload bytes of slot `i` (masked into range).
    #[inline]
    pub(crate) fn slot_payload(&self, i: u64) -> *mut u8 {
        let i = (i & self.mask) as usize;
        // SAFETY: i < capacity, so slot i (and its payload) lies within the
        // validated slot area.
        unsafe { self.payload0.as_ptr().add(i * self.stride) }
    }

    fn part(&self, i: usize) -> &Participant {
        debug_assert!(i < self.geo.max_parts as usize);
        // SAFETY: i < max_parts; the table lies inside the payload (validated).
        unsafe { &*self.parts.as_ptr().add(i) }
    }

    /// Creates the segment and the engine.
    pub(crate) fn create(
        opts: &SegmentOptions,
        kind: ObjectKind,
        ty: TypeInfo,
        geo: Geometry,
    ) -> Result<Engine, OpenError> {
        let size = geo.check()?;
        let init = |p: NonNull<u8>, _len: usize| init_payload(p, &geo);
        let seg = Segment::create_object(opts, kind, ty, size, 128, init)?;
        Engine::attach(seg, Some(geo))
    }

    /// A fresh queue of geometry `geo` in `seg`, an anonymous segment made
    /// for a queue whose payload has the same size, which no process maps
    /// any more and of which the caller holds the only handle (see
    /// `pool::spare`): the control block and the participant table are
    /// cleared and written as [`Engine::create`] writes them; the slots keep
    /// stale bytes, which no protocol reads before it wrote them (SPSC: only
    /// below `tail`; MPMC: only slots whose stamp was published, and every
    /// stamp is rewritten here).
    pub(crate) fn recycle(seg: Segment, geo: Geometry) -> Result<Engine, OpenError> {
        let size = geo.check()?;
        if !seg.is_sole() || seg.payload_len() != size || seg.kind() != ObjectKind::FrameQueue {
            return Err(OpenError::invalid("segment cannot hold this queue"));
        }
        let p = seg.payload_ptr();
        // Nothing else reads or writes it: anonymous, its only handle here,
        // and (the caller's guarantee) no other process uses it any more.
        // SAFETY: the payload is `size >= slots_off()` bytes (checked above).
        unsafe { std::ptr::write_bytes(p.as_ptr(), 0, geo.slots_off()) };
        init_payload(p, &geo);
        Engine::attach(seg, Some(geo))
    }

    /// Opens a named queue, or the one behind a handle.
    pub(crate) fn open(seg: Result<Segment, OpenError>, expect_elem: Option<u32>) -> Result<Engine, OpenError> {
        let e = Engine::attach(seg?, None)?;
        if let Some(n) = expect_elem {
            if e.geo.elem_size != n {
                return Err(OpenError::SizeMismatch { expected: n as u64, found: e.geo.elem_size as u64 });
            }
        }
        Ok(e)
    }

    pub(crate) fn spec(kind: ObjectKind, ty: TypeInfo) -> ObjectSpec {
        ObjectSpec { kind, ty, payload: PayloadSize::AtLeast(CONTROL_SIZE as u64) }
    }

    pub(crate) fn open_or_create(
        opts: &SegmentOptions,
        kind: ObjectKind,
        ty: TypeInfo,
        geo: Geometry,
    ) -> Result<Engine, OpenError> {
        let size = geo.check()?;
        let spec = Engine::spec(kind, ty);
        let seg = Segment::open_or_create_object(opts, &spec, size, 128, |p, _| init_payload(p, &geo))?;
        Engine::attach(seg, None)
    }

    /// Validates the control block against the real payload size.
    fn attach(seg: Segment, created: Option<Geometry>) -> Result<Engine, OpenError> {
        let base = seg.payload_ptr();
        if seg.payload_len() < CONTROL_SIZE || (base.as_ptr() as usize) % 128 != 0 {
            return Err(OpenError::corrupt("queue payload too small or misaligned"));
        }
        let ctl = base.cast::<Control>();
        // SAFETY: the payload holds at least a Control; config fields are plain
        // integers copied out once and validated below.
        let (magic, mode, elem, parts, cap, stride, flags) = unsafe {
            let c = ctl.as_ptr();
            (
                std::ptr::read_volatile(&(*c).magic),
                std::ptr::read_volatile(&(*c).mode),
                std::ptr::read_volatile(&(*c).elem_size),
                std::ptr::read_volatile(&(*c).max_parts),
                std::ptr::read_volatile(&(*c).capacity),
                std::ptr::read_volatile(&(*c).stride),
                std::ptr::read_volatile(&(*c).flags),
            )
        };
        if magic != QMAGIC {
            return Err(OpenError::corrupt("queue control block has a bad magic"));
        }
        if mode != MODE_MPMC && mode != MODE_SPSC {
            return Err(OpenError::corrupt(format!("queue mode {mode} is unknown")));
        }
        if flags & !FLAG_FENCED != 0 {
            return Err(OpenError::corrupt(format!("queue flags {flags:#x} hold unknown bits")));
        }
        let geo = Geometry {
            spsc: mode == MODE_SPSC,
            fenced: flags & FLAG_FENCED != 0,
            elem_size: elem,
            capacity: cap,
            max_parts: parts,
        };
        let size = geo.check().map_err(|e| OpenError::corrupt(format!("queue configuration: {e}")))?;
        if size != seg.payload_len() || stride as usize != geo.stride() {
            return Err(OpenError::corrupt(format!(
                "queue configuration needs {size} payload bytes, the segment has {}",
                seg.payload_len()
            )));
        }
        if let Some(c) = created {
            debug_assert_eq!(c.capacity, geo.capacity);
        }
        // SAFETY: offsets validated against the payload size just above.
        let (parts_ptr, slots) = unsafe {
            (
                NonNull::new_unchecked(base.as_ptr().add(CONTROL_SIZE) as *mut Participant),
                NonNull::new_unchecked(base.as_ptr().add(geo.slots_off())),
            )
        };
        Ok(Engine {
            seg,
            ctl,
            parts: parts_ptr,
            slots,
            // SAFETY: slot 0 lies in the validated slot area (capacity >= 1);
            // an MPMC slot's payload follows its 8-byte sequence word inside it.
            payload0: unsafe { NonNull::new_unchecked(slots.as_ptr().add(if geo.spsc { 0 } else { 8 })) },
            mask: geo.capacity - 1,
            stride: geo.stride(),
            prefetch_ahead: (PREFETCH_BYTES / geo.stride()).max(1) as u64,
            geo,
            reg: sys::ForkSafeMutex::new(None, || None),
            reg_gen: AtomicU64::new(0),
            role: AtomicU8::new(Role::Both.bits()),
            wait_mode: AtomicU8::new(0),
            spin_ns: AtomicU64::new(DEFAULT_SPIN.as_nanos() as u64),
            last_deep: RateLimit::new(),
            tx_busy: LinePadded(AtomicU64::new(0)),
            rx_busy: LinePadded(AtomicU64::new(0)),
            tx_bias: Bias::new(),
            rx_bias: Bias::new(),
            tx_endpoint: AtomicBool::new(false),
            rx_endpoint: AtomicBool::new(false),
            fence_free: AtomicBool::new(false),
            polls: LinePadded(AtomicU32::new(0)),
            rx_slip: LinePadded(AtomicU32::new(0)),
            shed_gen: AtomicU64::new(sys::fork_generation()),
            touched_forks: AtomicU64::new(sys::fork_count()),
            touched_thread: AtomicU64::new(sys::thread_fork_stamp()),
        })
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    // -----------------------------------------------------------------------
    // Settings
    // -----------------------------------------------------------------------

    pub(crate) fn set_wait_mode(&self, m: WaitMode) {
        self.wait_mode.store(m.to_u8(), Ordering::Relaxed);
    }
    pub(crate) fn wait_mode(&self) -> WaitMode {
        WaitMode::from_u8(self.wait_mode.load(Ordering::Relaxed))
    }
    pub(crate) fn set_spin(&self, d: Duration) {
        self.spin_ns.store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    // -----------------------------------------------------------------------
    // Participants
    // -----------------------------------------------------------------------

    /// Registers this process with `role` (replacing an earlier registration of
    /// this process through this handle).
    pub(crate) fn register(&self, role: Role) -> Result<(), OpenError> {
        self.role.store(role.bits(), Ordering::Relaxed);
        self.fence_free.store(sys::membarrier_register_publisher(), Ordering::Relaxed);
        let me = sys::current_process();
        let mut reg = self.reg.lock();
        let word = me.id as u64 | (role.bits() as u64) << 32 | ENTRY_USED;
        if let Some(r) = reg.as_mut() {
            if r.pid == me.id {
                let old = r.word;
                if self.part(r.index).word.compare_exchange(old, word, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    r.word = word;
                    self.after_join(role.bits());
                    self.after_leave(old);
                    return Ok(());
                }
                // Our entry was reclaimed (scribbled, or a peer thought us dead):
                // register afresh below.
            }
        }
        let n = self.geo.max_parts as usize;
        // A parent that forked us may have registered us already (inherited).
        let inherited = me.id as u64 | (role.bits() as u64) << 32 | ENTRY_USED | ENTRY_INHERITED;
        for i in 0..n {
            let p = self.part(i);
            if p.word.load(Ordering::Relaxed) == inherited
                && p.word.compare_exchange(inherited, word, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                p.start_time.store(me.start_time, Ordering::Release);
                *reg = Some(Reg { pid: me.id, index: i, word });
                self.reg_gen.store(sys::fork_generation(), Ordering::Release);
                self.after_join(role.bits());
                return Ok(());
            }
        }
        for pass in 0..2 {
            for i in 0..n {
                let p = self.part(i);
                if p.word.load(Ordering::Relaxed) == 0
                    && p.word.compare_exchange(0, word, Ordering::SeqCst, Ordering::Relaxed).is_ok()
                {
                    p.start_time.store(me.start_time, Ordering::Release);
                    *reg = Some(Reg { pid: me.id, index: i, word });
                    self.reg_gen.store(sys::fork_generation(), Ordering::Release);
                    self.after_join(role.bits());
                    return Ok(());
                }
            }
            if pass == 0 {
                self.reap_dead(0);
            }
        }
        Err(OpenError::invalid(format!("the queue's participant table ({n} entries) is full")))
    }

    /// Registers lazily after a fork (a child's first operation). Best effort:
    /// if the table is full the operation goes on unregistered.
    #[inline]
    pub(crate) fn ensure_registered(&self) {
        if self.reg_gen.load(Ordering::Relaxed) != sys::fork_generation() {
            self.register_after_fork();
        }
    }

    #[cold]
    fn register_after_fork(&self) {
        let role = match self.role.load(Ordering::Relaxed) {
            ROLE_SEND => Role::Sender,
            ROLE_RECV => Role::Receiver,
            _ => Role::Both,
        };
        let _ = self.register(role);
        // Even if the table was full, do not retry on every operation.
        self.reg_gen.store(sys::fork_generation(), Ordering::Relaxed);
        self.shed_inherited();
    }

    /// A handle to this engine was cloned (possibly for a child about to be forked).
    pub(crate) fn touch(&self) {
        self.touched_forks.store(sys::fork_count(), Ordering::Relaxed);
        self.touched_thread.store(sys::thread_fork_stamp(), Ordering::Relaxed);
    }

    /// Whether the fork that just returned in this thread is the first one
    /// since a handle was last created or cloned: by this thread (counting
    /// only its own forks, so concurrent forks by other threads do not hide
    /// the hand-over), or by any thread with no other fork in between.
    fn touched_before_this_fork(&self) -> bool {
        sys::forked_since(self.touched_thread.load(Ordering::Relaxed)).is_some_and(|n| n <= 1)
            || self.touched_forks.load(Ordering::Relaxed).saturating_add(1) >= sys::fork_count()
    }

    /// See [`adopt_forked_child`]: registers `child` with this process's
    /// roles, if a handle was created or cloned since the fork before this one.
    fn reserve_for_child(&self, child: u32, start_time: u64) {
        if !self.touched_before_this_fork() {
            return;
        }
        let roles = {
            let reg = self.reg.lock();
            let Some(r) = reg.as_ref().filter(|r| r.pid == sys::current_pid()) else { return };
            ((r.word >> 32) & 0xff) as u8
        };
        self.reserve_role_for_child(child, start_time, roles);
    }

    /// Writes an inherited entry for `child` with `roles` (unless the child
    /// already holds one with those roles, its own or inherited): a half
    /// carried in a `Process` argument keeps its side connected until the
    /// child opens its copy and takes the entry over in [`Engine::register`]
    /// (see `object::Carried`). `start_time` 0: liveness by pid until then.
    /// Not a hot path: runs once per child start.
    pub(crate) fn reserve_role_for_child(&self, child: u32, start_time: u64, roles: u8) {
        let roles = u64::from(roles & (ROLE_SEND | ROLE_RECV));
        if roles == 0 || child == 0 {
            return;
        }
        let word = child as u64 | roles << 32 | ENTRY_USED | ENTRY_INHERITED;
        // The child may have run first and registered itself already.
        let own = child as u64 | roles << 32 | ENTRY_USED;
        if (0..self.geo.max_parts as usize).any(|i| self.part(i).word.load(Ordering::SeqCst) & !ENTRY_INHERITED == own)
        {
            return;
        }
        for i in 0..self.geo.max_parts as usize {
            let p = self.part(i);
            if p.word.load(Ordering::Relaxed) == 0
                && p.word.compare_exchange(0, word, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                // 0 if unknown: liveness by pid until the child takes it over.
                p.start_time.store(start_time, Ordering::Release);
                self.after_join(roles as u8);
                return;
            }
        }
        // Table full: the child registers itself on first use.
    }

    /// Entries naming `pid` (test helper).
    #[cfg(test)]
    pub(crate) fn entries_of(&self, pid: u32) -> usize {
        (0..self.geo.max_parts as usize)
            .filter(|&i| {
                let w = self.part(i).word.load(Ordering::SeqCst);
                w & ENTRY_USED != 0 && w as u32 == pid
            })
            .count()
    }

    /// In a forked child: drops this process's inherited entries for the
    /// side this handle does not use (a receiver's inherited senders, a
    /// sender's inherited receivers); entries for both sides stay. Runs on a
    /// handle's first operation in the child and whenever it is about to
    /// sleep (never on the hand-over path).
    fn shed_inherited(&self) {
        let used = self.role.load(Ordering::Relaxed);
        if used == ROLE_SEND | ROLE_RECV {
            return;
        }
        let me = sys::current_pid();
        for i in 0..self.geo.max_parts as usize {
            let p = self.part(i);
            let w = p.word.load(Ordering::SeqCst);
            let roles = ((w >> 32) & 0xff) as u8;
            if w & (ENTRY_USED | ENTRY_INHERITED) == ENTRY_USED | ENTRY_INHERITED
                && w as u32 == me
                && roles & used == 0
                && Self::free(p, w)
            {
                self.after_leave(w);
            }
        }
        self.shed_gen.store(sys::fork_generation(), Ordering::Relaxed);
    }

    /// [`Engine::shed_inherited`] once per fork generation (slow paths only).
    #[inline]
    fn shed_inherited_once(&self) {
        if self.shed_gen.load(Ordering::Relaxed) != sys::fork_generation() {
            self.shed_inherited();
        }
    }

    fn after_join(&self, roles: u8) {
        let c = self.ctl();
        if roles & ROLE_SEND != 0 {
            c.sender_joined.store(1, Ordering::SeqCst);
            c.no_senders.store(0, Ordering::SeqCst);
        }
        if roles & ROLE_RECV != 0 {
            c.receiver_joined.store(1, Ordering::SeqCst);
            c.no_receivers.store(0, Ordering::SeqCst);
        }
    }

    /// After an entry with `old_word`'s roles went away: refresh the hints and
    /// wake everyone so they re-check.
    fn after_leave(&self, old_word: u64) {
        let roles = ((old_word >> 32) & 0xff) as u8;
        let c = self.ctl();
        let mut wake = false;
        if roles & ROLE_SEND != 0 && self.count_role(ROLE_SEND) == 0 {
            c.no_senders.store(1, Ordering::SeqCst);
            wake = true;
        }
        if roles & ROLE_RECV != 0 && self.count_role(ROLE_RECV) == 0 {
            c.no_receivers.store(1, Ordering::SeqCst);
            wake = true;
            // JoinableQueue joiners re-check for receivers too.
            if c.join_waiters.load(Ordering::SeqCst) != 0 {
                wait::wake_all_bump(&Kernel, &c.join_word);
            }
        }
        if wake {
            self.wake_all();
        }
    }

    fn deregister(&self) {
        let mut reg = self.reg.lock();
        if let Some(r) = reg.take() {
            if r.pid != sys::current_pid() {
                return;
            }
            if Self::free(self.part(r.index), r.word) {
                self.after_leave(r.word);
            }
            // A duplicate a parent wrote for us after we had registered
            // ourselves (see `reserve_for_child`) goes with us.
            let dup = r.word | ENTRY_INHERITED;
            for i in 0..self.geo.max_parts as usize {
                let p = self.part(i);
                if p.word.load(Ordering::Relaxed) == dup && Self::free(p, dup) {
                    self.after_leave(dup);
                }
            }
        }
    }

    /// Frees entry `p` if it still holds `w`. Its start time is cleared first:
    /// a registrant writes its word (compare-and-swap from 0) before its start
    /// time, so a scan that reads the new word must not find the previous
    /// occupant's start time beside it (it would judge the registrant, alive,
    /// dead by a start-time mismatch and reclaim its entry: a spurious, final
    /// `Disconnected`). It finds 0 (liveness by pid alone) or the new value.
    /// If the entry moved on meanwhile, clearing its start time only weakens
    /// its check to the pid.
    fn free(p: &Participant, w: u64) -> bool {
        p.start_time.store(0, Ordering::SeqCst);
        p.word.compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    /// Entries (registered, without a liveness check) with `role`.
    fn count_role(&self, role: u8) -> usize {
        (0..self.geo.max_parts as usize)
            .filter(|&i| {
                let w = self.part(i).word.load(Ordering::SeqCst);
                w & ENTRY_USED != 0 && ((w >> 32) as u8) & role != 0
            })
            .count()
    }

    /// Whether a live participant with `role` exists; reclaims dead entries.
    fn alive_with_role(&self, role: u8) -> bool {
        let me = sys::current_pid();
        let mut alive = false;
        for i in 0..self.geo.max_parts as usize {
            let p = self.part(i);
            let w = p.word.load(Ordering::SeqCst);
            if w & ENTRY_USED == 0 || ((w >> 32) as u8) & role == 0 {
                continue;
            }
            let pid = w as u32;
            if pid == me {
                alive = true;
                continue;
            }
            let who = Identity { id: pid, start_time: p.start_time.load(Ordering::Acquire) };
            if peer::alive(who) {
                alive = true;
            } else if Self::free(p, w) {
                self.after_leave(w);
            }
        }
        alive
    }

    /// Reclaims every dead entry (used when the table is full).
    fn reap_dead(&self, _role: u8) {
        let _ = self.alive_with_role(ROLE_SEND | ROLE_RECV);
    }

    /// The identity to check for a claimer pid: its participant entry if it has
    /// one (pid-reuse-proof), else the bare pid.
    fn claimer_dead(&self, pid: u32) -> bool {
        if pid == sys::current_pid() {
            return false;
        }
        let mut who = Identity { id: pid, start_time: 0 };
        for i in 0..self.geo.max_parts as usize {
            let p = self.part(i);
            let w = p.word.load(Ordering::Acquire);
            if w & ENTRY_USED != 0 && w as u32 == pid {
                who.start_time = p.start_time.load(Ordering::Acquire);
                break;
            }
        }
        peer::dead(who)
    }

    /// Whether the other side is gone. `deep`: check liveness (reads /proc);
    /// else only the registered entries (cheap, used on every empty/full result).
    fn peers_gone(&self, side: Side, deep: bool) -> bool {
        let c = self.ctl();
        let (joined, hint, role) = match side {
            Side::Recv => (&c.sender_joined, &c.no_senders, ROLE_SEND),
            Side::Send => (&c.receiver_joined, &c.no_receivers, ROLE_RECV),
        };
        if joined.load(Ordering::SeqCst) == 0 {
            return false;
        }
        if deep {
            !self.alive_with_role(role)
        } else {
            hint.load(Ordering::SeqCst) != 0 && self.count_role(role) == 0
        }
    }

    // -----------------------------------------------------------------------
    // Waking
    // -----------------------------------------------------------------------

    fn words(&self, side: Side) -> (&AtomicU32, &AtomicU32) {
        let c = self.ctl();
        match side {
            Side::Recv => (&c.not_empty, &c.recv_sleepers),
            Side::Send => (&c.not_full, &c.send_sleepers),
        }
    }

    /// After publishing (`waking == Recv`) or freeing slots (`waking == Send`):
    /// wake sleepers on the other side, with no system call if there are none.
    #[inline(always)]
    pub(crate) fn notify(&self, waking: Side, all: bool) {
        let (word, sleepers) = self.words(waking);
        // StoreLoad: our publication must be visible before we read the sleeper
        // count. Either a full fence here, or (when this process registered for
        // asymmetric barriers, and the queue is not `fenced`) the `membarrier`
        // a sleeper issues after registering, which runs the fence on our CPU
        // for us.
        if self.fence_free.load(Ordering::Relaxed) && !self.geo.fenced {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            ring::full_fence();
        }
        wait::wake_counted(&Kernel, word, sleepers, all);
    }

    fn wake_all(&self) {
        let c = self.ctl();
        wait::wake_all_bump(&Kernel, &c.not_empty);
        wait::wake_all_bump(&Kernel, &c.not_full);
    }

    // -----------------------------------------------------------------------
    // Operations
    // -----------------------------------------------------------------------

    /// One attempt to send: `write` fills the slot payload.
    /// `owned`: the caller holds this side exclusively ([`Engine::take_side`]).
    #[inline]
    pub(crate) fn try_push(&self, optimistic: bool, owned: bool, write: impl FnOnce(*mut u8)) -> Step {
        if self.geo.spsc {
            let mut w = Some(write);
            if !owned {
                if let Some(step) = self.bias_attempt(Side::Send, true, &mut |p| {
                    if let Some(f) = w.take() {
                        f(p)
                    }
                }) {
                    return step;
                }
            }
            if self.seg.lost() {
                return Step::Corrupt;
            }
            let _g = match self.busy(owned, Side::Send) {
                Ok(g) => g,
                Err(()) => return Step::WouldBlock,
            };
            let step = match ring::spsc_push(self, 1, |_, m, slot| {
                if let Some(f) = w.take() {
                    f(m.slot_payload(slot))
                }
            }) {
                Some(1) => Step::Done,
                Some(_) => Step::WouldBlock,
                None => Step::Corrupt,
            };
            self.unless_lost(step)
        } else if self.seg.lost() {
            Step::Corrupt
        } else {
            self.unless_lost(ring::mpmc_push(self, sys::current_pid(), optimistic, |m, slot| {
                write(m.slot_payload(slot))
            }))
        }
    }

    /// One attempt to receive: `read` copies the slot payload out.
    /// `owned`: as in [`Engine::try_push`].
    #[inline]
    pub(crate) fn try_pop(&self, owned: bool, read: impl FnOnce(*const u8)) -> Step {
        if self.geo.spsc {
            let mut r = Some(read);
            if !owned {
                if let Some(step) = self.bias_attempt(Side::Recv, true, &mut |p| {
                    if let Some(f) = r.take() {
                        f(p)
                    }
                }) {
                    return step;
                }
            }
            if self.seg.lost() {
                return Step::Corrupt;
            }
            let _g = match self.busy(owned, Side::Recv) {
                Ok(g) => g,
                Err(()) => return Step::WouldBlock,
            };
            let step = match ring::spsc_pop(self, 1, |_, m, slot| {
                if let Some(f) = r.take() {
                    f(m.slot_payload(slot))
                }
            }) {
                Some(1) => Step::Done,
                Some(_) => Step::WouldBlock,
                None => Step::Corrupt,
            };
            self.unless_lost(step)
        } else if self.seg.lost() {
            Step::Corrupt
        } else {
            self.unless_lost(ring::mpmc_pop(self, sys::current_pid(), |m, slot| read(m.slot_payload(slot))))
        }
    }

    /// A finished step, unless the segment was truncated under us while it
    /// ran (it then moved a message through zero pages nobody else sees).
    #[inline]
    fn unless_lost(&self, step: Step) -> Step {
        if matches!(step, Step::Done) && self.seg.lost() {
            Step::Corrupt
        } else {
            step
        }
    }

    /// SPSC batch push: `fill(i, slot_ptr)` for up to `n` items; returns how many.
    pub(crate) fn spsc_push_batch(&self, owned: bool, n: u64, mut fill: impl FnMut(u64, *mut u8)) -> Option<u64> {
        if self.seg.lost() {
            return None;
        }
        let Ok(_g) = self.busy(owned, Side::Send) else { return Some(0) };
        ring::spsc_push(self, n, |i, m, slot| fill(i, m.slot_payload(slot))).filter(|_| !self.seg.lost())
    }

    /// SPSC batch pop: `take(i, slot_ptr)` for up to `n` items; returns how many.
    pub(crate) fn spsc_pop_batch(&self, owned: bool, n: u64, mut take: impl FnMut(u64, *const u8)) -> Option<u64> {
        if self.seg.lost() {
            return None;
        }
        let Ok(_g) = self.busy(owned, Side::Recv) else { return Some(0) };
        ring::spsc_pop(self, n, |i, m, slot| take(i, m.slot_payload(slot))).filter(|_| !self.seg.lost())
    }

    /// Whether a send must fail at once: the hint says no receiver is left and
    /// the table agrees (one relaxed load on the fast path).
    #[inline]
    pub(crate) fn send_refused(&self) -> bool {
        self.ctl().no_receivers.load(Ordering::Relaxed) != 0 && self.peers_gone(Side::Send, false)
    }

    /// Takes `side` of an SPSC queue for exclusive use by one owner in this
    /// process (until [`Engine::release_side`]); false if already taken.
    pub(crate) fn take_side(&self, side: Side) -> bool {
        let (f, endpoint) = self.side_flags(side);
        let ok = Busy::claim(f, endpoint);
        if ok {
            endpoint.store(true, Ordering::Relaxed);
            // No shared handle's thread may go on using the side unlocked.
            self.bias_revoke(self.bias(side));
        }
        ok
    }

    /// Gives back a side taken with [`Engine::take_side`], and wakes waiters
    /// (handles of this process that were refused the side meanwhile sleep).
    pub(crate) fn release_side(&self, side: Side) {
        let (f, endpoint) = self.side_flags(side);
        endpoint.store(false, Ordering::Relaxed);
        f.store(0, Ordering::Release);
        self.wake_all();
    }

    fn side_flags(&self, side: Side) -> (&AtomicU64, &AtomicBool) {
        match side {
            Side::Send => (&self.tx_busy.0, &self.tx_endpoint),
            Side::Recv => (&self.rx_busy.0, &self.rx_endpoint),
        }
    }

    /// The process-local exclusion around one SPSC operation of a non-owning
    /// handle (`Ok(None)` for an owner); `Err` while an exclusive endpoint
    /// holds the side: the operation would block (until the endpoint drops).
    #[inline]
    fn busy(&self, owned: bool, side: Side) -> Result<Option<Busy<'_>>, ()> {
        if owned {
            return Ok(None);
        }
        let (f, endpoint) = self.side_flags(side);
        let g = Busy::take(f, endpoint).ok_or(())?;
        self.bias_locked(side);
        Ok(Some(g))
    }

    /// Whether a receive finds nothing now and no send is in progress at
    /// the head (see [`ring::mpmc_idle`]); an SPSC ring: whether it is empty.
    pub(crate) fn recv_idle(&self) -> bool {
        if self.seg.lost() {
            return true;
        }
        if self.geo.spsc {
            ring::len(self) == 0
        } else {
            ring::mpmc_idle(self)
        }
    }

    /// Messages in the queue now (a snapshot).
    pub(crate) fn len(&self) -> usize {
        ring::len(self) as usize
    }

    /// The non-blocking check after an attempt that would block: maps it to
    /// `WouldBlock` or `Disconnected`, retrying once after a disconnection is seen
    /// (a peer may have published and then left).
    ///
    /// Dead peers are looked for at most once per [`QUEUE_DEEP_EVERY`] per handle, so a
    /// `try_recv` loop also ends with `Disconnected` once every sender was killed.
    pub(crate) fn would_block(&self, side: Side, mut attempt: impl FnMut() -> Step) -> Result<(), Fail> {
        if self.seg.lost() {
            return Err(Fail::Corrupt);
        }
        self.shed_inherited_once();
        if self.peers_gone(side, false) {
            return final_attempt(&mut attempt);
        }
        // Read the clock only every 256th empty (full) result: polling loops
        // over `try_*` must stay cheap.
        let n = self.polls.0.load(Ordering::Relaxed).wrapping_add(1);
        self.polls.0.store(n, Ordering::Relaxed);
        if n % 256 == 0 && self.deep_due(sys::monotonic_now()) && self.peers_gone(side, true) {
            return final_attempt(&mut attempt);
        }
        Err(Fail::WouldBlock)
    }

    /// Runs `attempt` until it succeeds, the deadline passes, or the other side
    /// is gone: spin (per the wait mode), then sleep on the side's futex in
    /// bounded slices, re-checking peer liveness and stalled slots (one
    /// [`wait::Waiter`]).
    pub(crate) fn wait(&self, side: Side, deadline: Deadline, mut attempt: impl FnMut() -> Step) -> Result<(), Fail> {
        let mut stall: Option<(Stall, Duration)> = None;
        if side == Side::Send && self.geo.spsc {
            self.bias_wait_room();
        }
        if let Some(r) = settle(attempt(), &mut stall) {
            return r;
        }
        self.shed_inherited_once();
        if self.peers_gone(side, false) {
            return final_attempt(&mut attempt);
        }
        let mode = self.wait_mode();
        let spin = match mode {
            WaitMode::Blocking => None,
            WaitMode::Adaptive => Some(Some(Duration::from_nanos(self.spin_ns.load(Ordering::Relaxed)))),
            WaitMode::BusyPoll => Some(None),
        };
        let (word, sleepers) = self.words(side);
        let waiter = wait::Waiter {
            deadline,
            spin: spin.map(|budget| wait::SpinPlan { budget, batch: wait::QUEUE_POLL_BATCH, expiry_ends_wait: true }),
            sleeper: wait::Sleeper::Counted(Announce::new(word, sleepers)),
            slice: PEER_SLICE,
        };
        let mut last_house = None;
        let mut barrier_ok = true;
        let r = waiter.run(&Kernel, |phase| match phase {
            Phase::Poll => settle(attempt(), &mut stall).map_or(Next::Wait, Next::Done),
            Phase::Spinning(now) => {
                // Busy polling never sleeps: look after stalled slots and
                // peers every STALL_SLICE.
                let since = *last_house.get_or_insert(now);
                if mode != WaitMode::BusyPoll || now.saturating_sub(since) < STALL_SLICE {
                    return Next::Wait;
                }
                last_house = Some(now);
                if self.seg.lost() {
                    return Next::Done(Err(Fail::Corrupt));
                }
                self.housekeeping(&mut stall, now);
                if self.peers_gone(side, false) || (self.deep_due(now) && self.peers_gone(side, true)) {
                    return Next::Done(final_attempt(&mut attempt));
                }
                Next::Wait
            }
            // Publishers may publish without a fence (see `notify`): make every
            // CPU running one execute a barrier, so that either we see their
            // publication in the re-check or they see our registration. If the
            // kernel refuses, sleep in short slices so a missed wake-up costs ~2 ms.
            // A `fenced` queue's publishers always fence: our registration's
            // own fence is enough (the classic two-sided handshake).
            Phase::Announced => {
                barrier_ok = self.geo.fenced || sys::membarrier_global();
                Next::Wait
            }
            Phase::BeforeSleep { .. } => {
                if self.seg.lost() {
                    return Next::Done(Err(Fail::Corrupt));
                }
                // Entries a parent wrote for us after our first operation
                // (a scan of the table: small beside a futex sleep).
                self.shed_inherited();
                if self.peers_gone(side, false) {
                    return Next::Done(final_attempt(&mut attempt));
                }
                Next::Slice(if stall.is_some() || !barrier_ok { STALL_SLICE } else { PEER_SLICE })
            }
            Phase::Slept => {
                if let Some(r) = settle(attempt(), &mut stall) {
                    return Next::Done(r);
                }
                let now = sys::monotonic_now();
                if deadline.at().is_some_and(|d| now >= d) {
                    return Next::Done(Err(Fail::Timeout));
                }
                if self.seg.lost() {
                    return Next::Done(Err(Fail::Corrupt));
                }
                self.housekeeping(&mut stall, now);
                if self.deep_due(now) && self.peers_gone(side, true) {
                    return Next::Done(final_attempt(&mut attempt));
                }
                Next::Wait
            }
        });
        r.unwrap_or(Err(Fail::Timeout))
    }

    /// A receive's [`wait`](Self::wait) on an SPSC queue, with the temporal
    /// slipping of the exclusive endpoints ([`slip`]); `rx_slip` is shared
    /// by every clone of this handle in this process. Other queues wait at once.
    pub(crate) fn recv_wait_slipping(&self, deadline: Deadline, attempt: impl FnMut() -> Step) -> Result<(), Fail> {
        if !self.geo.spsc {
            return self.wait(Side::Recv, deadline, attempt);
        }
        let slip = self.rx_slip.0.load(Ordering::Relaxed);
        slip::before_wait(slip, deadline, self.wait_mode());
        let r = self.wait(Side::Recv, deadline, attempt);
        // Messages there when the wait ended: the one taken and those behind it.
        let backlog = if r.is_ok() { ring::len(self) + 1 } else { 0 };
        self.rx_slip.0.store(slip::next(slip, backlog), Ordering::Relaxed);
        r
    }

    /// Whether a deep (liveness) check is due for this handle; rate-limited to
    /// one per [`QUEUE_DEEP_EVERY`] so blocking hand-overs never pay for /proc reads.
    fn deep_due(&self, now: Duration) -> bool {
        self.last_deep.due_at(now, QUEUE_DEEP_EVERY)
    }

    /// Recovers a slot whose claimer has been stuck for [`STALL_SLICE`] and is dead.
    fn housekeeping(&self, stall: &mut Option<(Stall, Duration)>, now: Duration) {
        if let Some((s, since)) = *stall {
            if now.saturating_sub(since) >= STALL_SLICE {
                if self.claimer_dead(s.pid) {
                    ring::recover(self, &s);
                    // Whoever waits on the other side may now proceed.
                    self.wake_all();
                    *stall = None;
                } else {
                    *stall = Some((s, now));
                }
            }
        }
    }

    /// Whether every receiver is gone: one has registered once and no live one
    /// is left (reads `/proc`; dead entries are reclaimed). JoinableQueue's
    /// `join` asks this once per sleep slice.
    pub(crate) fn receivers_gone(&self) -> bool {
        self.peers_gone(Side::Send, true)
    }

    /// Wakes every joiner sleeping on `word` (JoinableQueue's join counter).
    pub(crate) fn wake_word_all(&self, word: &AtomicU32) {
        wait::wake_all_bump(&Kernel, word);
    }
}

// ---------------------------------------------------------------------------
// Exclusive SPSC endpoints: the per-message fast path
// ---------------------------------------------------------------------------

/// Fast-path operations an exclusive SPSC endpoint runs between two checks
/// (fork generation, registration, its own index re-read from the segment,
/// the other side's index refreshed). Waiting always checks.
pub(crate) const SPSC_CHECK_EVERY: u64 = 1024;
/// A producer that finds fewer free slots than this (or than a quarter of
/// the ring) polls briefly for the consumer to free a batch, so that it reads
/// the consumer's cache line once per batch, not once per message (B-Queue).
const SPSC_BATCH: u64 = 64;

/// The process-local state of one exclusive SPSC endpoint
/// ([`Queue::spsc_sender`](super::Queue::spsc_sender) /
/// [`spsc_receiver`](super::Queue::spsc_receiver)): its own index, published
/// to the segment after every operation and never read back on the fast
/// path, and its cached copy of the other side's index, refreshed from the
/// segment only when the ring looks full (producer) or empty (consumer).
/// Nothing here is in shared memory: the peer's cache lines are only read
/// when a refresh is due (MCRingBuffer's "local control variables").
#[derive(Debug)]
pub(crate) struct SpscLocal {
    /// Producer: the tail; consumer: the head.
    own: u64,
    /// Producer: the cached head; consumer: the cached tail. Always within
    /// `capacity` of `own` (validated when read from the segment).
    other: u64,
    /// The value of `own` at which the next operation checks first
    /// (`own` itself: check now). Compared, not counted down, so that a
    /// fast-path operation stores nothing but its index: every store queues
    /// behind the slot and index stores in the store buffer.
    check_at: u64,
    /// [`sys::fork_generation`] of the last check: a forked child's first
    /// operation on an inherited endpoint takes the slow path (registers).
    gen: u64,
    /// Consumer: `pause`s it waits, after finding the ring empty, before it
    /// looks at the producer's index again ([`slip`]); 0 unless its last
    /// wait ended with a backlog.
    slip: u32,
}

impl SpscLocal {
    /// Fresh state: the first operation syncs with the segment.
    pub(crate) fn new() -> SpscLocal {
        SpscLocal { own: 0, other: 0, check_at: 0, gen: u64::MAX, slip: 0 }
    }

    /// Whether the next operation checks first: `own` has reached (or, after
    /// a move this state did not see, passed) `check_at`.
    #[inline(always)]
    fn check_due(&self) -> bool {
        (self.own.wrapping_sub(self.check_at) as i64) >= 0
    }

    /// Forces the next operation through the slow path (after an operation
    /// that moved the shared index without this state, e.g. a batch).
    pub(crate) fn invalidate(&mut self) {
        self.check_at = self.own;
    }
}

// ---------------------------------------------------------------------------
// Shared handles of an SPSC queue: the biased fast path
// ---------------------------------------------------------------------------

/// Locked operations in a row by one thread after which it is given the
/// side's biased fast path ([`Bias`]).
const BIAS_STREAK: u32 = 16;

thread_local! {
    /// Its address names the calling thread ([`thread_token`]).
    static TOKEN: u8 = const { 0 };
}

/// A non-zero number naming the calling thread among the live threads of
/// this process (the address of a thread-local).
#[inline]
fn thread_token() -> u64 {
    TOKEN.with(|t| t as *const u8 as u64)
}

/// The biased fast path of one side for the shared handles of an SPSC queue
/// ([`Sender`](super::Sender) / [`Receiver`](super::Receiver), a plain
/// [`Queue`](super::Queue)), which take `&self` and may be used from several
/// threads at once.
///
/// Their locked path takes the side's `busy` flag around every operation;
/// that locked instruction drains the store buffer, so each message waits
/// for the previous one's index store to reach the other CPU (about 10x
/// slower per message in a stream). Instead, the thread that did the last
/// [`BIAS_STREAK`] operations alone becomes the side's *owner* and then
/// operates without the flag, on process-local indices ([`SpscLocal`], as
/// an exclusive endpoint). Any other thread (or an exclusive endpoint being
/// taken) revokes the bias first, under the flag: it clears `owner`, runs a
/// process-wide barrier (`membarrier`), and waits while the owner is inside
/// an operation (`active`). The owner raises `active` and then re-reads
/// `owner` with only a compiler fence between: the revoker's barrier makes
/// either its cleared `owner` visible to that re-read, or the raised
/// `active` visible to the revoker (asymmetric Dekker; Dice, Moir and
/// Scherer, "Quickly reacquirable locks"; Linux `membarrier(2)`). Without
/// a registered barrier the bias is never given. Everything here is
/// process-local: the shared indices are validated as on every path.
#[repr(C, align(128))]
struct Bias {
    /// [`thread_token`] of the owner (0: none).
    owner: AtomicU64,
    /// [`sys::fork_generation`] when the owner was chosen: an owner (and
    /// an `active` flag) inherited through `fork` is void.
    gen: AtomicU64,
    /// Raised by the owner around each of its unlocked operations.
    active: AtomicBool,
    /// The thread of the latest locked operations and how many in a row
    /// (touched only under the side's `busy` flag).
    candidate: AtomicU64,
    streak: AtomicU32,
    /// The owner's indices; used only by the owner, or under the `busy`
    /// flag while there is no owner.
    local: std::cell::UnsafeCell<SpscLocal>,
}

impl Bias {
    fn new() -> Bias {
        Bias {
            owner: AtomicU64::new(0),
            gen: AtomicU64::new(0),
            active: AtomicBool::new(false),
            candidate: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            local: std::cell::UnsafeCell::new(SpscLocal::new()),
        }
    }
}

impl Engine {
    fn bias(&self, side: Side) -> &Bias {
        match side {
            Side::Send => &self.tx_bias,
            Side::Recv => &self.rx_bias,
        }
    }

    /// The whole fast path of a shared handle's `send` / `recv` (inlined
    /// into the caller): the owner's unlocked operation and the wake-up of
    /// the other side. `false`: nothing was done, take the general path.
    #[inline(always)]
    pub(crate) fn bias_fast(&self, side: Side, mut slot: impl FnMut(*mut u8)) -> bool {
        match self.bias_attempt(side, false, &mut slot) {
            Some(Step::Done) => {}
            Some(Step::WouldBlock) if side == Side::Send => {
                // The owner's send found the ring full by its cached head:
                // poll briefly for a batch of free slots before the general
                // path re-reads the head and sends. Without the batch, a
                // producer faster than its consumer would re-read the
                // consumer's index (taking back the line the consumer
                // writes) for every message, each time finding the one slot
                // just freed (B-Queue's batching).
                self.bias_wait_room();
                return false;
            }
            _ => return false,
        }
        self.notify(
            match side {
                Side::Send => Side::Recv,
                Side::Recv => Side::Send,
            },
            false,
        );
        true
    }

    /// Whether the calling thread holds `side`'s bias (tests).
    #[cfg(test)]
    pub(crate) fn bias_held(&self, side: Side) -> bool {
        let b = self.bias(side);
        b.owner.load(Ordering::Relaxed) == thread_token() && b.gen.load(Ordering::Relaxed) == sys::fork_generation()
    }

    /// The owner's unlocked attempt: `None` if the calling thread is not the
    /// side's owner (take the locked path); else what the attempt did.
    /// `slot` gets the slot's payload pointer (receivers: read-only use).
    /// Publishes the index but does not notify (the caller does, as after
    /// a locked attempt).
    /// `refresh`: a send that finds the ring full by its cached head
    /// re-reads the consumer's index (a receive always does, once).
    #[inline(always)]
    fn bias_attempt(&self, side: Side, refresh: bool, slot: &mut impl FnMut(*mut u8)) -> Option<Step> {
        let b = self.bias(side);
        let me = thread_token();
        if b.owner.load(Ordering::Relaxed) != me {
            return None;
        }
        b.active.store(true, Ordering::Relaxed);
        // StoreLoad against a revoker's store to `owner`: its `membarrier`
        // runs a full fence on this CPU (see `Bias`).
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if b.owner.load(Ordering::Relaxed) != me || b.gen.load(Ordering::Relaxed) != sys::fork_generation() {
            b.active.store(false, Ordering::Release);
            return None;
        }
        // SAFETY: `owner` (this thread) was re-read after raising `active`: no
        // other thread uses `local` until we lower it (revokers wait for that;
        // the locked path leaves `local` alone while there is an owner).
        let l = unsafe { &mut *b.local.get() };
        let step = self.bias_step(l, side, refresh, slot);
        b.active.store(false, Ordering::Release);
        Some(step)
    }

    /// One operation on `l`, the side's own index re-read from the segment
    /// every [`SPSC_CHECK_EVERY`] operations, whenever the bias is given (a
    /// forked child's inherited bias is void, so it first takes the locked
    /// path and is given the bias afresh), and after a locked operation of
    /// this side: both invalidate `l` (see [`Engine::bias_locked`]).
    #[inline(always)]
    fn bias_step(&self, l: &mut SpscLocal, side: Side, refresh: bool, slot: &mut impl FnMut(*mut u8)) -> Step {
        let (own, _) = self.spsc_words(side);
        // No fork check here: `bias_attempt` has checked the owner's
        // generation, and `local` is invalidated whenever the bias is given.
        if l.check_due() {
            // As in `spsc_sync`: due again until the indices check out.
            l.own = own.load(Ordering::Relaxed);
            l.check_at = l.own;
            if self.seg.lost() || self.spsc_refresh(l, side).is_err() {
                return Step::Corrupt;
            }
            l.check_at = l.own.wrapping_add(SPSC_CHECK_EVERY);
        }
        let cap = self.geo.capacity;
        let ready = match side {
            Side::Send => l.own.wrapping_sub(l.other) < cap,
            Side::Recv => l.own != l.other,
        };
        if !ready {
            if side == Side::Send && !refresh {
                return Step::WouldBlock;
            }
            if self.spsc_refresh(l, side).is_err() {
                return Step::Corrupt;
            }
            let ready = match side {
                Side::Send => l.own.wrapping_sub(l.other) < cap,
                Side::Recv => l.own != l.other,
            };
            if !ready {
                return Step::WouldBlock;
            }
        }
        if side == Side::Recv {
            self.prefetch_published(l.own, l.other.wrapping_sub(l.own));
        }
        slot(self.slot_payload(l.own));
        l.own = l.own.wrapping_add(1);
        own.store(l.own, Ordering::Release);
        Step::Done
    }

    /// A blocking send of the bias owner that found the ring full: polls
    /// briefly for a batch of free slots (as an exclusive endpoint does,
    /// B-Queue), so that a producer faster than its consumer reads the
    /// consumer's line once per batch, not once per message. Reads only the
    /// segment's indices; the attempt that follows validates them.
    #[cold]
    fn bias_wait_room(&self) {
        let b = &self.tx_bias;
        if b.owner.load(Ordering::Relaxed) != thread_token() || b.gen.load(Ordering::Relaxed) != sys::fork_generation()
        {
            return;
        }
        let cap = self.geo.capacity;
        let want = SPSC_BATCH.min(cap / 4).max(1);
        let c = self.ctl();
        let tail = c.tail.load(Ordering::Relaxed);
        wait::Spinner::poll_batch(wait::QUEUE_POLL_BATCH, || {
            let used = tail.wrapping_sub(c.head.load(Ordering::Acquire));
            // A used count beyond the capacity is corrupt: stop, the attempt reports it.
            (used > cap || cap - used >= want).then_some(())
        });
    }

    /// Under the side's `busy` flag, before a locked operation: revokes
    /// another thread's bias, and gives it to this thread after
    /// [`BIAS_STREAK`] locked operations in a row.
    #[inline]
    fn bias_locked(&self, side: Side) {
        let b = self.bias(side);
        let me = thread_token();
        let owner = b.owner.load(Ordering::Relaxed);
        if owner == me && b.gen.load(Ordering::Relaxed) == sys::fork_generation() {
            // The owner's own locked operation moves the segment's index
            // behind `local`'s back: resync at the next unlocked one.
            // SAFETY: we are the owner and not inside an unlocked operation,
            // so no one else uses `local`.
            unsafe { (*b.local.get()).invalidate() };
            return;
        }
        if owner != 0 {
            self.bias_revoke(b);
        }
        let streak = if b.candidate.load(Ordering::Relaxed) == me {
            b.streak.load(Ordering::Relaxed).saturating_add(1)
        } else {
            b.candidate.store(me, Ordering::Relaxed);
            1
        };
        b.streak.store(streak, Ordering::Relaxed);
        if streak >= BIAS_STREAK && self.fence_free.load(Ordering::Relaxed) && sys::membarrier_register_publisher() {
            // SAFETY: no owner (none was, or it was revoked above and has
            // left its operation), and we hold `busy`: no one else uses `local`.
            unsafe { (*b.local.get()).invalidate() };
            b.gen.store(sys::fork_generation(), Ordering::Relaxed);
            b.owner.store(me, Ordering::Release);
        }
    }

    /// Takes the bias away from its owner (the caller holds the side's
    /// `busy` flag, or has just taken the side for an endpoint) and waits
    /// until the owner is out of its current operation.
    #[cold]
    fn bias_revoke(&self, b: &Bias) {
        if b.owner.load(Ordering::Relaxed) == 0 {
            return;
        }
        b.owner.store(0, Ordering::Relaxed);
        b.streak.store(0, Ordering::Relaxed);
        if b.gen.load(Ordering::Relaxed) != sys::fork_generation() {
            // Given in the process we were forked from: its owner is not here.
            b.active.store(false, Ordering::Relaxed);
            return;
        }
        if !sys::membarrier_global() {
            // Cannot fail once the registration (required to give the bias)
            // succeeded; should it, give the owner's operation (tens of
            // nanoseconds) ample time to see `owner` cleared.
            std::sync::atomic::fence(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
        while b.active.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    }

    /// The segment's (tail, head) words of the SPSC ring.
    #[inline]
    fn spsc_words(&self, side: Side) -> (&AtomicU64, &AtomicU64) {
        let c = self.ctl();
        match side {
            Side::Send => (&c.tail, &c.head),
            Side::Recv => (&c.head, &c.tail),
        }
    }

    /// Producer fast path: one message if the cached head shows room and no
    /// check is due; `false` sends nothing (take the slow path).
    #[inline]
    pub(crate) fn spsc_send_fast(&self, l: &mut SpscLocal, write: impl FnOnce(*mut u8)) -> bool {
        if l.check_due() || l.own.wrapping_sub(l.other) >= self.geo.capacity || l.gen != sys::fork_generation() {
            return false;
        }
        self.spsc_put(l, write);
        true
    }

    /// Consumer fast path: one message if the cached tail (refreshed once
    /// here if it shows none) has one and no check is due.
    #[inline]
    pub(crate) fn spsc_recv_fast(&self, l: &mut SpscLocal, read: impl FnOnce(*const u8)) -> bool {
        if l.check_due() || l.gen != sys::fork_generation() {
            return false;
        }
        if l.own == l.other {
            let tail = self.ctl().tail.load(Ordering::Acquire);
            if tail == l.own || tail.wrapping_sub(l.own) > self.geo.capacity {
                return false;
            }
            l.other = tail;
        }
        self.spsc_take(l, read);
        true
    }

    /// Writes slot `own` (free: `own - other < capacity`), publishes the tail
    /// and wakes a sleeping consumer.
    #[inline]
    fn spsc_put(&self, l: &mut SpscLocal, write: impl FnOnce(*mut u8)) {
        write(self.slot_payload(l.own));
        l.own = l.own.wrapping_add(1);
        self.ctl().tail.store(l.own, Ordering::Release);
        self.notify(Side::Recv, false);
    }

    /// Reads slot `own` (published: `own < other`), publishes the head and
    /// wakes a sleeping producer.
    #[inline]
    fn spsc_take(&self, l: &mut SpscLocal, read: impl FnOnce(*const u8)) {
        // The slot `ahead` messages on, if it is published: start fetching
        // its line now (see [`ring::prefetch`]).
        self.prefetch_published(l.own, l.other.wrapping_sub(l.own));
        read(self.slot_payload(l.own));
        l.own = l.own.wrapping_add(1);
        self.ctl().head.store(l.own, Ordering::Release);
        self.notify(Side::Send, false);
    }

    /// The periodic check: registration after a fork, the own index re-read
    /// (another handle may have used this side since, e.g. a batch call or
    /// an earlier endpoint), the other side's index refreshed and validated.
    fn spsc_sync(&self, l: &mut SpscLocal, side: Side) -> Result<(), Fail> {
        self.ensure_registered();
        l.gen = sys::fork_generation();
        l.own = self.spsc_words(side).0.load(Ordering::Acquire);
        // Due again at once unless the indices check out: a fast operation
        // must never run on an `own` whose `other` was not validated with it.
        l.check_at = l.own;
        if self.seg.lost() {
            return Err(Fail::Corrupt);
        }
        self.spsc_refresh(l, side)?;
        l.check_at = l.own.wrapping_add(SPSC_CHECK_EVERY);
        Ok(())
    }

    /// Re-reads the other side's index; `Corrupt` if it is not within
    /// `capacity` of ours (only a hostile writer can do that).
    #[inline]
    fn spsc_refresh(&self, l: &mut SpscLocal, side: Side) -> Result<(), Fail> {
        let other = self.spsc_words(side).1.load(Ordering::Acquire);
        let (tail, head) = match side {
            Side::Send => (l.own, other),
            Side::Recv => (other, l.own),
        };
        if tail.wrapping_sub(head) > self.geo.capacity {
            return Err(Fail::Corrupt);
        }
        l.other = other;
        Ok(())
    }

    /// One slow-path attempt for `side`: refresh, then move one message.
    fn spsc_attempt(&self, l: &mut SpscLocal, side: Side, slot: &mut impl FnMut(*mut u8)) -> Step {
        if self.spsc_refresh(l, side).is_err() {
            return Step::Corrupt;
        }
        match side {
            Side::Send if l.own.wrapping_sub(l.other) < self.geo.capacity => {
                self.spsc_put(l, &mut *slot);
                Step::Done
            }
            Side::Recv if l.own != l.other => {
                self.spsc_take(l, |p| slot(p as *mut u8));
                Step::Done
            }
            _ => Step::WouldBlock,
        }
    }

    /// The endpoint slow path (a check is due, or the fast path found the
    /// ring full / empty): sync, a short local poll (producers: for a batch
    /// of free slots), then the queue's full wait (`deadline` `None`: do not
    /// wait, only the disconnection check of a `try_*` call). `slot` gets
    /// the slot's payload pointer (receivers: read-only use).
    pub(crate) fn spsc_slow(
        &self,
        l: &mut SpscLocal,
        side: Side,
        deadline: Option<Deadline>,
        mut slot: impl FnMut(*mut u8),
    ) -> Result<(), Fail> {
        self.spsc_sync(l, side)?;
        let cap = self.geo.capacity;
        if deadline.is_some() {
            // Short local poll before the wait path; a producer waits here for
            // a batch of free slots (or the poll's end), a consumer for one message.
            let want = match side {
                Side::Send => SPSC_BATCH.min(cap / 4).max(1),
                Side::Recv => 1,
            };
            let ready = |l: &SpscLocal| match side {
                Side::Send => cap - l.own.wrapping_sub(l.other) >= want,
                Side::Recv => l.other != l.own,
            };
            if !ready(l) {
                if side == Side::Recv {
                    slip::before_wait(l.slip, deadline.unwrap_or(Deadline::NEVER), self.wait_mode());
                }
                let polled = wait::Spinner::poll_batch(wait::QUEUE_POLL_BATCH, || match self.spsc_refresh(l, side) {
                    Err(f) => Some(Err(f)),
                    Ok(()) => ready(l).then_some(Ok(())),
                });
                if side == Side::Recv {
                    // Found in the local poll: slip by what had arrived; a
                    // wait that goes on to sleep (or fails) ends the slip.
                    let backlog = match polled {
                        Some(Ok(())) => l.other.wrapping_sub(l.own),
                        _ => 0,
                    };
                    l.slip = slip::next(l.slip, backlog);
                }
                if let Some(Err(f)) = polled {
                    l.check_at = l.own;
                    return Err(f);
                }
            }
        }
        match self.spsc_attempt(l, side, &mut slot) {
            Step::Done => return Ok(()),
            Step::Corrupt => {
                l.check_at = l.own;
                return Err(Fail::Corrupt);
            }
            _ => {}
        }
        let r = match deadline {
            Some(d) => self.wait(side, d, || self.spsc_attempt(l, side, &mut slot)),
            None => self.would_block(side, || self.spsc_attempt(l, side, &mut slot)),
        };
        // A wait may have run long: check again before the next fast operation.
        l.check_at = l.own;
        r
    }
}

/// Temporal slipping for SPSC receivers, after FastForward (Giacomoni,
/// Moseley, Vachharajani, PPoPP 2008).
///
/// A consumer that keeps catching up with a streaming producer reads the
/// producer's index (and the slot line it is filling) right after each
/// write, so the producer's next write pays for taking the line back: one
/// line transfer per message. When a receive's wait ends with two or more
/// messages there, the producer is streaming: the next wait first lets it
/// run ahead for a number of `pause`s, doubling up to [`MAX`]. A wait that
/// ends with exactly one message (ping-pong: the reply is all there is) or
/// goes to sleep ends the slip, so a round trip pays it at most once after
/// a stream. No slip in `Blocking` mode, nor for a timeout under
/// [`SHORT_TIMEOUT`] (it would overrun the deadline).
mod slip {
    use std::time::Duration;

    use crate::time::Deadline;
    use crate::WaitMode;

    /// Most `pause`s: 1.2-1.7 us on the Xeon we measure on (18-27 ns per
    /// `pause`), about 3 us on parts where `pause` takes 140 cycles, a few
    /// hundred ns where it takes 10: the most a message of a stream can wait
    /// beyond its arrival. Paired against the raw ring there: 32 gave
    /// 0.27-0.30x, 64 0.31-0.44x, 128 0.35-0.41x, none 0.14-0.22x.
    pub(super) const MAX: u32 = 64;

    /// Waits with less time than this left do not slip.
    pub(super) const SHORT_TIMEOUT: Duration = Duration::from_micros(20);

    /// Spins `slip` pauses, unless the mode or the deadline rules it out.
    #[inline]
    pub(super) fn before_wait(slip: u32, deadline: Deadline, mode: WaitMode) {
        if slip == 0 || mode == WaitMode::Blocking {
            return;
        }
        if let Some(left) = deadline.remaining() {
            if left < SHORT_TIMEOUT {
                return;
            }
        }
        for _ in 0..slip {
            std::hint::spin_loop();
        }
    }

    /// The next slip, from the messages there when the wait ended (0: none,
    /// it slept or failed).
    #[inline]
    pub(super) fn next(slip: u32, backlog: u64) -> u32 {
        if backlog >= 2 {
            (slip * 2 + 1).min(MAX)
        } else {
            0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_stream_grows_the_slip_and_one_message_ends_it() {
            let mut s = 0;
            for _ in 0..10 {
                s = next(s, 5);
            }
            assert_eq!(s, MAX);
            assert_eq!(next(s, 1), 0, "ping-pong: the reply is all there is");
            assert_eq!(next(s, 0), 0, "slept or failed");
        }
    }
}

/// How far ahead (in bytes of slots) an SPSC receiver prefetches: four
/// cache lines. See [`ring::prefetch`].
const PREFETCH_BYTES: usize = 256;

/// What one attempt means for a wait: `Some` ends it; a stalled slot is
/// remembered with the time it was first seen.
#[inline]
fn settle(step: Step, stall: &mut Option<(Stall, Duration)>) -> Option<Result<(), Fail>> {
    match step {
        Step::Done => Some(Ok(())),
        Step::Corrupt => Some(Err(Fail::Corrupt)),
        Step::WouldBlock => {
            *stall = None;
            None
        }
        Step::Stalled(s) => {
            if stall.map(|(old, _)| old != s).unwrap_or(true) {
                *stall = Some((s, sys::monotonic_now()));
            }
            None
        }
    }
}

/// The last attempt once the other side is known gone: anything still queued
/// is delivered first.
fn final_attempt(attempt: &mut impl FnMut() -> Step) -> Result<(), Fail> {
    match attempt() {
        Step::Done => Ok(()),
        Step::Corrupt => Err(Fail::Corrupt),
        _ => Err(Fail::Disconnected),
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.deregister();
    }
}

/// Writes the initial control block and stamps into a payload whose control
/// block and participant table are zero.
fn init_payload(p: NonNull<u8>, geo: &Geometry) {
    let c = p.as_ptr() as *mut Control;
    // Not yet published: fresh from `Engine::create`, or a spare only the
    // caller uses (`Engine::recycle`); its control block and parts are zero.
    // SAFETY: 128-aligned and `geo.payload_size()` bytes long, unshared (above).
    unsafe {
        (*c).magic = QMAGIC;
        (*c).mode = if geo.spsc { MODE_SPSC } else { MODE_MPMC };
        (*c).elem_size = geo.elem_size;
        (*c).max_parts = geo.max_parts;
        (*c).capacity = geo.capacity;
        (*c).stride = geo.stride() as u32;
        (*c).flags = if geo.fenced { FLAG_FENCED } else { 0 };
        if !geo.spsc {
            let slots = p.as_ptr().add(geo.slots_off());
            for i in 0..geo.capacity {
                let s = slots.add(i as usize * geo.stride()) as *mut u64;
                s.write(ring::initial_stamp(i));
            }
        }
    }
}

/// A process-local exclusion flag held around one SPSC ring operation, so that
/// threads sharing a handle never act as two producers (consumers) at once.
///
/// The flag holds the fork generation of the holder's process (0: free), as
/// `sys::ForkSafeMutex` does: a child forked while another thread was inside
/// an operation inherits the flag set, with no thread there to clear it, and
/// takes it over (the operation left half done published nothing: indices
/// are published last). An exclusive endpoint's hold is never taken over: the
/// endpoint itself came along into the child.
struct Busy<'a>(&'a AtomicU64);

impl<'a> Busy<'a> {
    /// Takes `flag`, spinning while another thread's operation holds it;
    /// `None` if an exclusive endpoint holds it (`endpoint`), which may be for good.
    #[inline]
    fn take(flag: &'a AtomicU64, endpoint: &AtomicBool) -> Option<Busy<'a>> {
        let me = sys::process_stamp();
        loop {
            let cur = flag.load(Ordering::Relaxed);
            if cur != me {
                // Free, or held in an ancestor process by a thread that is not here.
                if cur != 0 && endpoint.load(Ordering::Relaxed) {
                    return None;
                }
                if flag.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return Some(Busy(flag));
                }
                continue;
            }
            if endpoint.load(Ordering::Relaxed) {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// Takes `flag` for an exclusive endpoint (until `release_side`): free,
    /// or left held by a thread of an ancestor process; false if held here
    /// or by an endpoint.
    fn claim(flag: &AtomicU64, endpoint: &AtomicBool) -> bool {
        let me = sys::process_stamp();
        let cur = flag.load(Ordering::Relaxed);
        if cur == me || (cur != 0 && endpoint.load(Ordering::Relaxed)) {
            return false;
        }
        flag.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }
}

impl Drop for Busy<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod spsc_local_tests {
    use super::{SpscLocal, SPSC_CHECK_EVERY};

    #[test]
    fn a_check_is_due_at_check_at_and_after_it_even_across_the_wrap() {
        let mut l = SpscLocal::new();
        assert!(l.check_due(), "a fresh state checks first");
        for start in [0u64, 5, u64::MAX - 10] {
            l.own = start;
            l.check_at = start.wrapping_add(SPSC_CHECK_EVERY);
            for k in 0..SPSC_CHECK_EVERY {
                l.own = start.wrapping_add(k);
                assert!(!l.check_due(), "due early at {k} operations from {start}");
            }
            l.own = start.wrapping_add(SPSC_CHECK_EVERY);
            assert!(l.check_due(), "not due after {SPSC_CHECK_EVERY} operations from {start}");
            // An index that moved past `check_at` unseen still checks.
            l.own = start.wrapping_add(SPSC_CHECK_EVERY + 5000);
            assert!(l.check_due(), "not due once past check_at from {start}");
            l.own = start.wrapping_add(3);
            l.check_at = start.wrapping_add(SPSC_CHECK_EVERY);
            l.invalidate();
            assert!(l.check_due(), "not due after invalidate from {start}");
        }
    }
}

#[cfg(test)]
mod registration_tests {
    use super::*;
    use crate::queue::{Queue, Role};
    use crate::test_util::within_10s;

    /// A freed participant entry keeps no start time: a registrant writes its
    /// word before its start time, and a scan in between must not pair the
    /// new pid with the previous occupant's start time.
    #[test]
    fn a_freed_entry_keeps_no_start_time() {
        let q = Queue::<u64>::builder().capacity(8).create().unwrap();
        let e = q.engine();
        for _ in 0..3 {
            let rx = Queue::<u64>::builder().role(Role::Receiver).open_handle(&q.handle()).unwrap();
            drop(rx);
        }
        for i in 0..e.geo.max_parts as usize {
            let p = e.part(i);
            if p.word.load(Ordering::SeqCst) == 0 {
                assert_eq!(p.start_time.load(Ordering::SeqCst), 0, "free entry {i} kept a start time");
            }
        }
    }

    /// A child forked while another thread of its parent was inside an SPSC
    /// operation inherits the side's busy flag set, stamped with the parent's
    /// fork generation: it takes it over instead of spinning for ever. A side
    /// an inherited exclusive endpoint holds stays refused.
    #[test]
    fn a_busy_flag_left_by_another_generation_is_taken_over() {
        let q = Queue::<u64>::builder().capacity(8).spsc(true).create().unwrap();
        let other = sys::process_stamp().wrapping_add(1).max(1);
        q.engine().tx_busy.0.store(other, Ordering::SeqCst);
        let q2 = q.clone();
        assert_eq!(within_10s(move || q2.try_send(5).map_err(|_| ())), Ok(()));
        assert_eq!(q.engine().tx_busy.0.load(Ordering::SeqCst), 0);
        assert_eq!(q.try_recv(), Ok(5));

        q.engine().tx_busy.0.store(other, Ordering::SeqCst);
        q.engine().tx_endpoint.store(true, Ordering::SeqCst);
        let q3 = q.clone();
        assert!(within_10s(move || q3.try_send(6).is_err()), "a side held by an endpoint is refused");
        q.engine().tx_endpoint.store(false, Ordering::SeqCst);
        q.engine().tx_busy.0.store(0, Ordering::SeqCst);
    }

    /// A fenced queue (the pool's, and by default one created by a Blocking
    /// handle): the flag is in the segment and every handle that opens it
    /// reads it; a receiver asleep on it is woken by a send; unknown flag
    /// bits are refused at open.
    #[test]
    fn a_fenced_queue_records_its_flag_and_refuses_unknown_ones() {
        use crate::queue::FrameQueue;
        use crate::WaitMode;
        for spsc in [false, true] {
            let b = || FrameQueue::builder().capacity(4).max_frame(16).spsc(spsc).wait_mode(WaitMode::Blocking);
            let q = b().fenced(true).create().unwrap();
            let rx = b().open_handle(&q.handle()).unwrap();
            assert!(rx.engine().geo.fenced, "an opener reads the flag");
            assert!(!b().fenced(false).create().unwrap().engine().geo.fenced, "off when asked");
            assert!(b().create().unwrap().engine().geo.fenced, "on by default for a Blocking creator");
            let adaptive = FrameQueue::builder().capacity(4).max_frame(16).spsc(spsc);
            assert!(!adaptive.create().unwrap().engine().geo.fenced, "off by default otherwise");
            // Blocking: the receiver goes to sleep at once, with no `membarrier`.
            let t = std::thread::spawn(move || rx.recv_timeout(std::time::Duration::from_secs(10)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            q.send(b"x").unwrap();
            assert_eq!(t.join().unwrap().unwrap(), b"x");
            let c = q.engine().control() as *const Control as *mut Control;
            // SAFETY: the control block lies in the mapping `q` keeps alive;
            // a plain write of a configuration word, as a hostile peer's.
            unsafe { std::ptr::write_volatile(&raw mut (*c).flags, FLAG_FENCED | 2) };
            let err = b().open_handle(&q.handle()).unwrap_err().to_string();
            assert!(err.contains("unknown bits"), "{err}");
        }
    }
}
