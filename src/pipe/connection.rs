//! [`Connection`]: one end of a [`Pipe`](super::Pipe).

use std::cell::UnsafeCell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ring::{
    frame_header, frame_header_skip, frame_header_whole, holder, skip_target, FrameBody, HolderTable, RingView, Shared,
    ALIGNED_PAYLOAD_MIN, DATA_OFFSET, FRAME_ALIGN, FRAME_HEADER, FRAME_TAG, FRAME_TAG_SKIP, FRAME_TAG_WHOLE,
    HOLDER_TABLES, LEN_BITS, MAX_FRAME_LEN, MAX_RING, MIN_RING, PIPE_MAGIC, REWIND_AT,
};
use super::{End, PipeConfig, RecvError, SendError};
use crate::error::OpenError;
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::object::{Builder, Object};
use crate::peer::{self, Identity, RateLimit};
use crate::segment::{Handle, Segment, SegmentOptions};
use crate::sys;
use crate::time::Deadline;
use crate::wait::{self, Flag, Kernel, Next, Phase, Sleeper, SpinPlan, Waiter, PEER_SLICE, PIPE_LIVENESS_EVERY};

/// End-slot states (low 32 bits of `EndSlot::word`; the pid is in the high 32).
const FREE: u64 = 0;
const HELD: u64 = 1;
const CLOSED: u64 = 2;
const CLAIMING: u64 = 3;

#[inline]
const fn slot_word(pid: u32, state: u64) -> u64 {
    ((pid as u64) << 32) | state
}

/// Whether stream position `a` is ahead of `b` (by less than 2^63 bytes:
/// honest positions are never that far apart, and they may wrap). Not
/// bounded by a ring: a rewind (see `ring.rs`) moves the positions on by
/// nearly a ring for one small message, so an index that lagged for a few
/// kilobytes of traffic can be many rings behind.
#[inline]
fn ahead(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

/// Polls of an empty ring's next header word between two looks at the
/// producer's `tail` (see `wait_header`).
const TAIL_CHECK_EVERY: u32 = 64;

/// Bytes past the end of a frame whose header words (one per 64-byte line)
/// the producer zeroes in one go when it must zero the next one (see
/// `zero_window`).
const ZERO_AHEAD: u64 = 4096;

/// Whether a consumer's `head` and the published `tail` can both be honest:
/// `tail` at most a ring ahead, or lagging a consumer that read frames by
/// their headers (see `ring.rs`) by at most the ring's usable space.
fn indices_consistent(head: u64, tail: u64, cap: u64) -> bool {
    tail.wrapping_sub(head) <= cap || head.wrapping_sub(tail) <= cap - FRAME_ALIGN
}

/// Where a producer continues from `tail` (a 64-byte aligned stream
/// position): past the whole frames and skips after it that are published
/// only by their headers. A producer killed between a whole frame's header
/// and its `tail` store (or between a skip and its frame) left frames the
/// consumer may have read already (it polls header words), so a producer
/// that takes the end over writes after them. Bounded by the ring; stops at
/// the zeroed word after the last frame, or at anything else.
fn published_by_header(r: &RingView, mut tail: u64, head: u64, max_message: u64) -> u64 {
    for _ in 0..r.cap / FRAME_ALIGN {
        // Never more than a ring ahead of the consumer (it may be ahead of
        // `tail`, having read frames by their headers): past that, the words
        // are not frames of this lap (the caller reports the indices).
        if ahead(tail, head) && tail.wrapping_sub(head) > r.cap {
            break;
        }
        let h = r.read_header_acquire(tail);
        let len = h & MAX_FRAME_LEN;
        if h >> LEN_BITS == FRAME_TAG_SKIP {
            // A skip to the ring's start (see `ring.rs`): its frame, if any, is there.
            match skip_target(tail, len, r.cap) {
                Some(to) => {
                    tail = to;
                    continue;
                }
                None => break,
            }
        }
        if h >> LEN_BITS != FRAME_TAG_WHOLE || len > max_message {
            break;
        }
        let total = FRAME_HEADER + FrameBody::of(len).body;
        if total + FRAME_ALIGN > r.cap {
            break;
        }
        tail = tail.wrapping_add(total);
    }
    tail
}

/// The layout fingerprint stored in the segment header.
fn pipe_type() -> TypeInfo {
    TypeInfo::from_parts(1, 64, "shmproc::pipe::Frames/v4")
}

// ------------------------------------------------------------ holder count
//
// Each end has a table of holder words in the segment ([`HolderTable`]): one
// entry per process that holds a copy of the end, like the kernel's count of
// an fd's references. Creating, opening or adopting an end adds a `USED`
// entry; a fork adds an `INHERITED` entry for the child (written by the fork
// hooks below, so the child counts from the instant it exists); dropping a copy
// removes its entry; `hand_over` turns the entry into a `TICKET` that the
// opener consumes. A process that dies is discounted by the liveness check
// (pid and start time, `peer`). The peer is told `Disconnected` when no live
// entry is left (the last dropper also marks the end CLOSED, so the peer hears
// at once). A waiter never counts its own unused inherited copy of the end it
// waits on: that is the classic "forgot to close the other end after fork"
// hang, which shmproc spares its users.

/// No holder entry.
const NO_ENTRY: u32 = u32::MAX;

/// One Connection's registration in this process, for the fork hooks.
struct Reg {
    /// The end's holder table, inside the mapping the Connection keeps alive
    /// (the Connection unregisters before its segment is dropped).
    table: NonNull<HolderTable>,
    /// This process's entry in the table, or [`NO_ENTRY`].
    entry: AtomicU32,
    /// During a fork: the entry reserved for the child.
    pending: AtomicU32,
}

// SAFETY: `table` points to atomics in a shared mapping that outlives the Reg
// (see the field); everything else is atomic.
unsafe impl Send for Reg {}
// SAFETY: as above.
unsafe impl Sync for Reg {}

impl Reg {
    fn table(&self) -> &HolderTable {
        // SAFETY: see the field: valid while the registration exists; atomics only.
        unsafe { self.table.as_ref() }
    }
}

/// Every live Connection of this process, under a spin lock that the fork
/// hooks hold across `fork` (so the child's copy is consistent).
struct Registry {
    locked: AtomicBool,
    list: UnsafeCell<Vec<Arc<Reg>>>,
}

// SAFETY: `list` is only touched with `locked` held (acquire/release).
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry { locked: AtomicBool::new(false), list: UnsafeCell::new(Vec::new()) };
/// The PENDING word the forking parent wrote (process-local, copied into the child).
static PENDING_WORD: AtomicU64 = AtomicU64::new(0);

impl Registry {
    fn acquire(&self) {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
    }
    fn release(&self) {
        self.locked.store(false, Ordering::Release);
    }
    /// Runs `f` on the list with the lock held.
    fn with<R>(&self, f: impl FnOnce(&mut Vec<Arc<Reg>>) -> R) -> R {
        self.acquire();
        // SAFETY: the lock is held, so no other thread touches the list.
        let r = f(unsafe { &mut *self.list.get() });
        self.release();
        r
    }
}

/// How long a PENDING entry counts as a holder: the child's fork handler turns
/// it into the child's own INHERITED entry within microseconds; one left
/// longer belongs to a child killed before its handler ran (or a failed fork).
const PENDING_GRACE_MS: u64 = 1000;

/// Monotonic milliseconds in the 38 bits a holder word has for a start time
/// (never 0: 0 marks a garbage word).
fn pending_stamp() -> u64 {
    ((sys::monotonic_now().as_millis() as u64) & ((1 << 38) - 1)).max(1)
}

fn fork_prepare() {
    REGISTRY.acquire();
    let me = sys::current_process();
    // A PENDING entry carries the forking parent's pid and the time (not the
    // parent's start time): it counts only for PENDING_GRACE_MS.
    let w = holder::word(holder::PENDING, me.id, pending_stamp());
    PENDING_WORD.store(w, Ordering::Relaxed);
    // SAFETY: the lock is held until `fork_parent` / `fork_child`.
    for r in unsafe { &*REGISTRY.list.get() } {
        r.pending.store(alloc_entry(r.table(), w), Ordering::Relaxed);
    }
}

fn fork_parent() {
    // SAFETY: the lock is held since `fork_prepare`.
    for r in unsafe { &*REGISTRY.list.get() } {
        r.pending.store(NO_ENTRY, Ordering::Relaxed);
    }
    REGISTRY.release();
}

fn fork_child() {
    let me = sys::current_process();
    let pending = PENDING_WORD.load(Ordering::Relaxed);
    let mine = holder::word(holder::INHERITED, me.id, me.start_time);
    // SAFETY: the lock is held since `fork_prepare` (by this, the only, thread).
    for r in unsafe { &*REGISTRY.list.get() } {
        let p = r.pending.swap(NO_ENTRY, Ordering::Relaxed);
        let got = p != NO_ENTRY
            && r.table().entries[p as usize]
                .compare_exchange(pending, mine, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        r.entry.store(if got { p } else { NO_ENTRY }, Ordering::Relaxed);
    }
    REGISTRY.release();
}

/// Between fork and exec (the child of a spawn): the program about to run
/// does not hold this process's pipe ends (their memfds are close-on-exec),
/// so every INHERITED entry of this pid is removed. Async-signal-safe: one
/// `getpid`, a spin lock free in a single-threaded child, and atomic CASes;
/// no allocation.
pub(crate) fn forget_inherited_before_exec() {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    REGISTRY.with(|l| {
        for r in l.iter() {
            let e = r.entry.swap(NO_ENTRY, Ordering::Relaxed);
            if e == NO_ENTRY {
                continue;
            }
            let x = &r.table().entries[e as usize];
            let cur = x.load(Ordering::Acquire);
            let (state, p, _) = holder::parts(cur);
            if state == holder::INHERITED && p == pid {
                let _ = x.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    });
}

/// Puts `w` into a free entry (reusing one whose holder is dead if none is
/// free); [`NO_ENTRY`] if the table is full of live holders.
fn alloc_entry(t: &HolderTable, w: u64) -> u32 {
    for pass in 0..2 {
        for (i, e) in t.entries.iter().enumerate() {
            let cur = e.load(Ordering::Acquire);
            let free = cur == holder::word(holder::EMPTY, 0, 0) || (pass == 1 && !holder_alive(cur));
            if free && e.compare_exchange(cur, w, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return i as u32;
            }
        }
    }
    NO_ENTRY
}

// A launched opener may claim the end before its parent's `hand_over` made
// the ticket (the parent was descheduled after the launch): it then takes an
// entry of its own, and a ticket made later would hold the end, for no one,
// for as long as the parent lives. Each side therefore looks for the other
// after writing its own word, with a full fence in between (so at least one
// of them sees the other): the parent withdraws its ticket if a child of its
// own already holds the end; the opener consumes a ticket its parent left.

/// Parent, after turning its entry `at` into `ticket`: withdraws the ticket
/// if a live child of `me` already holds the end (it claimed first).
fn withdraw_if_claimed(t: &HolderTable, at: usize, ticket: u64, me: u32) {
    std::sync::atomic::fence(Ordering::SeqCst);
    let claimed = t.entries.iter().enumerate().any(|(i, x)| {
        let w = x.load(Ordering::Acquire);
        let (state, pid, _) = holder::parts(w);
        i != at && state == holder::USED && pid != me && holder_alive(w) && sys::parent_of(pid) == Some(me)
    });
    if claimed {
        let _ = t.entries[at].compare_exchange(
            ticket,
            holder::word(holder::EMPTY, 0, 0),
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
    }
}

/// Opener, after taking an entry of its own: consumes a ticket that its
/// parent left for it (made after this process looked for one).
fn take_parents_ticket(t: &HolderTable) {
    std::sync::atomic::fence(Ordering::SeqCst);
    let parent = sys::parent_pid();
    for x in t.entries.iter() {
        let w = x.load(Ordering::Acquire);
        let (state, pid, _) = holder::parts(w);
        if state == holder::TICKET
            && pid == parent
            && x.compare_exchange(w, holder::word(holder::EMPTY, 0, 0), Ordering::SeqCst, Ordering::Relaxed).is_ok()
        {
            return;
        }
    }
}

/// Whether the holder word `w` names a live process (any state but EMPTY;
/// unknown states and a zero start time are garbage: not alive).
fn holder_alive(w: u64) -> bool {
    let (state, _, start) = holder::parts(w);
    if !matches!(state, holder::PENDING | holder::INHERITED | holder::USED | holder::TICKET) || start == 0 {
        return false;
    }
    if state == holder::PENDING {
        // Wrapping age in 38 bits: a stamp "in the future" is old.
        let age = pending_stamp().wrapping_sub(start) & ((1 << 38) - 1);
        return age < PENDING_GRACE_MS;
    }
    // An unreadable /proc proves nothing: alive while the process exists.
    crate::peer::word::runs(w)
}

/// Why this process could not take an end.
enum ClaimError {
    InUse(u32),
    Closed,
}

/// Receiver state, process-local.
struct RxState {
    /// Stream position of the next unread byte (authoritative; the shared
    /// `head` is only a publication of it).
    head: u64,
    /// The value last stored into the shared `head`.
    published: u64,
    /// The producer's `tail` as last loaded (and validated: within `cap` of
    /// `head`); bytes up to it are readable without loading `tail` again.
    tail_seen: u64,
    /// A message whose header has been read but whose body is incomplete.
    pending: Option<Pending>,
    /// Set once the peer is gone and everything has been drained.
    eof: bool,
    broken: Option<&'static str>,
    /// Taken over in a forked child from a thread of the parent that held
    /// the lock at the fork (see [`RxState::stale`]): the positions are
    /// unknown until the next operation takes them from the shared indices.
    stale: bool,
}

impl RxState {
    /// What a forked child's receive side starts from when the parent's
    /// thread held its lock at the fork (`sys::ForkSafeMutex`): nothing
    /// known; the child adopts the end before any operation, and its
    /// resync then takes every position from the shared indices.
    fn stale() -> RxState {
        RxState { head: 0, published: 0, tail_seen: 0, pending: None, eof: false, broken: None, stale: true }
    }
}

struct Pending {
    /// Message length from its header (validated against the limit).
    len: u64,
    /// Body bytes (including the padding to 8) consumed from the ring so far.
    got: u64,
    /// Message bytes received so far, `min(got, len)` of them, outside of a
    /// `recv_bytes_into` call.
    buf: Vec<u8>,
}

/// Sender state, process-local.
struct TxState {
    /// Stream position of the next byte to write (authoritative).
    tail: u64,
    /// Last value of the consumer's `head` that we loaded.
    cached_head: u64,
    broken: Option<&'static str>,
    scratch: Vec<u8>,
    /// Messages sent, for spacing out liveness checks.
    sends: u64,
    /// `tail` was moved past frames a dead predecessor published only by
    /// their headers (see `attach`): store it before writing anything.
    tail_unpublished: bool,
    /// Every header word (64-byte aligned) in `[tail, zeroed)` is zero
    /// (see `zero_next`); meaningless once `tail` has passed it.
    zeroed: u64,
    /// No look at the consumer's `head` for a rewind before `tail` reaches
    /// this (see `maybe_rewind`).
    rewind_check: u64,
    /// The last such look found the ring drained (and rewound): the zeroing
    /// window then stops at `REWIND_AT`.
    rewinding: bool,
    /// As [`RxState::stale`]: the send side of a forked child, taken over
    /// from a thread of the parent that held its lock at the fork.
    stale: bool,
}

impl TxState {
    /// See [`RxState::stale`].
    fn stale() -> TxState {
        TxState {
            tail: 0,
            cached_head: 0,
            broken: None,
            scratch: Vec::new(),
            sends: 0,
            zeroed: 0,
            tail_unpublished: false,
            rewind_check: 0,
            rewinding: false,
            stale: true,
        }
    }
}

/// Why an end stopped being this process's during an operation
/// ([`Connection::taken_over`]).
#[derive(Debug, Clone, Copy)]
enum Taken {
    /// Another process claimed it (a forked child adopting its copy).
    By(u32),
    /// Closed for every holder.
    Closed,
    /// The segment was truncated under us.
    Lost,
}

/// Where `fill` puts the message bytes.
enum Sink<'a> {
    /// Into the pending message's own buffer.
    Own,
    /// Into the caller's buffer (at least `len` bytes long).
    Slice(&'a mut [u8]),
}

/// A deadline computed on first use, so that a call which finds its data at
/// once never reads the clock.
struct Due {
    timeout: Option<Duration>,
    at: Option<Deadline>,
}

impl Due {
    fn new(timeout: Option<Duration>) -> Due {
        Due { timeout, at: None }
    }

    fn get(&mut self) -> Deadline {
        let t = self.timeout;
        *self.at.get_or_insert_with(|| Deadline::after(t))
    }

    /// Whether a receive may poll a little before its first clock read: a
    /// spinning end, and no timeout shorter than its spin budget.
    fn may_spin(&self, spin: Duration) -> bool {
        !spin.is_zero() && self.timeout.map_or(true, |t| t >= spin)
    }
}

/// Why a blocking wait stopped without its condition.
enum Stop {
    Timeout,
    PeerGone,
    /// The segment was truncated under us ([`LOST`]).
    Lost,
}

/// Why every operation on a pipe whose named segment another process
/// truncated under this one's mapping fails (see `Segment::lost`).
const LOST: &str = "the pipe's segment was truncated by another process";

/// One end of a [`Pipe`](super::Pipe): sends and receives whole messages
/// (bytes, or `serde` values encoded with `postcard`).
///
/// Like Python's `Connection`: [`send_bytes`](Self::send_bytes) /
/// [`recv_bytes`](Self::recv_bytes), [`send`](Self::send) / [`recv`](Self::recv),
/// [`poll`](Self::poll), and the free function [`wait`](super::wait).
///
/// A `Connection` is `Send` and `Sync`: threads of one process may share it;
/// concurrent senders (and concurrent receivers) are serialised by process-local
/// locks, so messages never interleave. Across processes each end belongs to
/// one process at a time (see the module docs on fork and hand-over).
pub struct Connection {
    seg: Segment,
    end: End,
    rx: Option<RingView>,
    tx: Option<RingView>,
    max_message: u64,
    spin: Duration,
    /// Pid of the process whose claim this connection holds (process-local).
    claim_pid: AtomicU32,
    /// Fork generation (`sys::fork_generation`) of that process, 0 when none:
    /// equal to the current one only in the process that claimed (a child's
    /// generation is its parent's plus one), so the per-call check needs no
    /// pid lookup.
    claim_gen: AtomicU64,
    /// This copy's holder entry (see the holder count above).
    reg: Arc<Reg>,
    /// The two ends' holder tables, after the ring data.
    tables: [NonNull<HolderTable>; 2],
    /// Process-local: the peer end has been seen held at least once, so an
    /// end that then shows no holder at all is gone (not "not opened yet").
    peer_seen: AtomicBool,
    /// The send ring's `head` and the receive ring's `tail` at attach: once
    /// either moves, the peer has used its end (process-local evidence that a
    /// scribbler cannot take back by zeroing the end slot and holder table).
    attach_marks: (u64, u64),
    /// Mirror of the published receive head, for `poll`/`wait` without the lock.
    rx_head: AtomicU64,
    /// Whether `rx_head` is a frame boundary (not inside a message whose
    /// rest has not arrived): only there is the header word meaningful.
    rx_at_frame: AtomicBool,
    /// Throttles liveness checks of the peer (each reads `/proc`).
    last_check: RateLimit,
    /// Sticky: the peer has been seen gone.
    peer_gone: AtomicBool,
    /// Set when this process adopts the end: each side then resyncs with the
    /// shared indices at its next operation (`resync_recv`, `resync_send`).
    resync_rx: AtomicBool,
    resync_tx: AtomicBool,
    /// Held through an adoption: the threads of a forked child that use an
    /// inherited end for the first time at once adopt it one at a time, and
    /// each after the first finds the claim made. Fork-safe: a grandchild
    /// forked while a thread here adopted does not wait for that thread.
    adopting: sys::ForkSafeMutex<()>,
    /// The two sides' process-local states, each serialising its side's
    /// operations in this process. Fork-safe: a child forked while a thread
    /// here held one (a receive waiting) is not left with it locked.
    rx_state: sys::ForkSafeMutex<RxState>,
    tx_state: sys::ForkSafeMutex<TxState>,
}

// SAFETY: the raw pointers in the ring views point into `seg`'s mapping, which
// lives as long as the Connection and may be used from any thread (Segment is
// Send + Sync). Shared memory is only accessed through atomics or through the
// ring protocol, and each ring role (producer, consumer) is serialised within
// the process by `tx_state` / `rx_state`.
unsafe impl Send for Connection {}
// SAFETY: as above: every `&self` method either touches only atomics or takes
// the process-local lock of the role it plays.
unsafe impl Sync for Connection {}

fn lock<T>(m: &sys::ForkSafeMutex<T>) -> sys::ForkSafeGuard<'_, T> {
    // A panic while holding the lock leaves process-local positions that still
    // describe the shared ring (they are only advanced after each copy); the
    // guard unlocks as it unwinds.
    m.lock()
}

pub(crate) fn create(opts: &SegmentOptions, b: &PipeConfig, both: bool) -> Result<(Connection, Connection), OpenError> {
    let cap = (b.ring_size.max(MIN_RING as usize) as u64)
        .checked_next_power_of_two()
        .filter(|&c| c <= MAX_RING)
        .ok_or_else(|| OpenError::invalid(format!("ring size {} is too large", b.ring_size)))?;
    if b.max_message > MAX_FRAME_LEN {
        return Err(OpenError::invalid(format!(
            "max_message {} exceeds the frame format's limit of {MAX_FRAME_LEN}",
            b.max_message
        )));
    }
    let cap0 = if b.duplex { cap } else { 0 };
    let payload = (DATA_OFFSET as u64 + cap0 + cap + HOLDER_TABLES) as usize;
    sys::watch_forks();
    let me = sys::current_process();
    let seg = Segment::create_object(opts, ObjectKind::Pipe, pipe_type(), payload, 128, |p, _| {
        // SAFETY: the payload is at least DATA_OFFSET bytes, 64-byte aligned
        // (payload_align 64), zero-filled and not yet visible to anyone; Shared
        // holds only atomics.
        let sh = unsafe { &*(p.as_ptr() as *const Shared) };
        sh.control.magic.store(PIPE_MAGIC, Ordering::Relaxed);
        sh.control.capacity[0].store(cap0, Ordering::Relaxed);
        sh.control.capacity[1].store(cap, Ordering::Relaxed);
        sh.control.max_message.store(b.max_message, Ordering::Relaxed);
        let n = if both { 2 } else { 1 };
        for slot in &sh.ends[..n] {
            slot.start_time.store(me.start_time, Ordering::Relaxed);
            slot.word.store(slot_word(me.id, HELD), Ordering::Relaxed);
        }
    })?;
    let a = Connection::attach(seg.clone(), End::A, b.spin)?;
    a.set_claimed(me.id);
    let b_conn = Connection::attach(seg, End::B, b.spin)?;
    if both {
        b_conn.set_claimed(me.id);
    }
    Ok((a, b_conn))
}

pub(crate) fn open(opts: &SegmentOptions, b: &PipeConfig, handle: Option<&Handle>) -> Result<Connection, OpenError> {
    let spec = ObjectSpec {
        kind: ObjectKind::Pipe,
        ty: pipe_type(),
        payload: PayloadSize::AtLeast(DATA_OFFSET as u64 + MIN_RING),
    };
    let seg = match handle {
        Some(h) => Segment::open_handle(h, opts, &spec)?,
        None => Segment::open_object(opts, &spec)?,
    };
    sys::watch_forks();
    let conn = Connection::attach(seg, b.end, b.spin)?;
    match conn.claim() {
        Ok(()) => Ok(conn),
        Err(ClaimError::InUse(pid)) => Err(OpenError::PermissionDenied {
            reason: format!("end {:?} of this pipe is held by live process {pid}", b.end),
        }),
        Err(ClaimError::Closed) => {
            Err(OpenError::PermissionDenied { reason: format!("end {:?} of this pipe has been closed", b.end) })
        }
    }
}

impl Connection {
    /// Maps the rings of `seg` for `end`, validating every control field.
    fn attach(seg: Segment, end: End, spin: Duration) -> Result<Connection, OpenError> {
        let base = seg.payload_ptr();
        if base.as_ptr() as usize % 128 != 0 || seg.payload_len() < DATA_OFFSET {
            return Err(OpenError::corrupt("pipe payload is misaligned or too small"));
        }
        // SAFETY: the payload is >= DATA_OFFSET >= size_of::<Shared>() bytes and
        // 64-byte aligned (checked above); Shared holds only atomics.
        let sh = unsafe { &*(base.as_ptr() as *const Shared) };
        if sh.control.magic.load(Ordering::Relaxed) != PIPE_MAGIC {
            return Err(OpenError::corrupt("pipe control block has a bad magic"));
        }
        let cap0 = sh.control.capacity[0].load(Ordering::Relaxed);
        let cap1 = sh.control.capacity[1].load(Ordering::Relaxed);
        let valid = |c: u64| c.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&c);
        if !(cap0 == 0 || valid(cap0)) || !valid(cap1) {
            return Err(OpenError::corrupt(format!("pipe ring capacities {cap0}/{cap1} are invalid")));
        }
        let needed = DATA_OFFSET as u64 + cap0 + cap1 + HOLDER_TABLES;
        if needed > seg.payload_len() as u64 {
            return Err(OpenError::corrupt(format!(
                "pipe rings need {needed} bytes but the payload has {}",
                seg.payload_len()
            )));
        }
        let max_message = sh.control.max_message.load(Ordering::Relaxed);
        if max_message > MAX_FRAME_LEN {
            return Err(OpenError::corrupt(format!("pipe message limit {max_message} is invalid")));
        }
        let view = |i: usize, off: u64, cap: u64| RingView {
            ctl: NonNull::from(&sh.rings[i]),
            // SAFETY: DATA_OFFSET + off + cap <= payload_len (checked above).
            data: unsafe { NonNull::new_unchecked(base.as_ptr().add(DATA_OFFSET + off as usize)) },
            cap,
        };
        let ring0 = (cap0 != 0).then(|| view(0, 0, cap0));
        let ring1 = Some(view(1, cap0, cap1));
        let (tx, rx) = match end {
            End::A => (ring0, ring1),
            End::B => (ring1, ring0),
        };
        let mut rx_state = RxState { stale: false, ..RxState::stale() };
        if let Some(r) = &rx {
            let head = r.head().load(Ordering::Acquire);
            let tail = r.tail().load(Ordering::Acquire);
            if head % FRAME_ALIGN != 0 || !indices_consistent(head, tail, r.cap) {
                return Err(OpenError::corrupt("pipe receive indices are inconsistent"));
            }
            rx_state.head = head;
            rx_state.published = head;
            rx_state.tail_seen = head;
        }
        let mut tx_state = TxState { stale: false, ..TxState::stale() };
        if let Some(r) = &tx {
            let head = r.head().load(Ordering::Acquire);
            let tail = r.tail().load(Ordering::Acquire);
            if tail % FRAME_ALIGN != 0 {
                return Err(OpenError::corrupt("pipe send indices are inconsistent"));
            }
            let tail = published_by_header(r, tail, head, max_message);
            if tail.wrapping_sub(head) > r.cap - FRAME_ALIGN {
                return Err(OpenError::corrupt("pipe send indices are inconsistent"));
            }
            tx_state.tail_unpublished = tail != r.tail().load(Ordering::Relaxed);
            tx_state.tail = tail;
            tx_state.zeroed = tail;
            tx_state.rewind_check = tail;
            tx_state.cached_head = head;
        }
        static HOOKS: [fn(); 3] = [fork_prepare, fork_parent, fork_child];
        sys::set_fork_hooks(&HOOKS);
        // SAFETY: DATA_OFFSET + cap0 + cap1 + HOLDER_TABLES <= payload_len (checked
        // above); the offset is a multiple of 64 (capacities are powers of two
        // >= 64, the payload is 128-aligned); HolderTable holds only atomics.
        let tables: [NonNull<HolderTable>; 2] = unsafe {
            let t = base.as_ptr().add(DATA_OFFSET + (cap0 + cap1) as usize) as *mut HolderTable;
            [NonNull::new_unchecked(t), NonNull::new_unchecked(t.add(1))]
        };
        let reg = Arc::new(Reg {
            table: tables[end.index()],
            entry: AtomicU32::new(NO_ENTRY),
            pending: AtomicU32::new(NO_ENTRY),
        });
        REGISTRY.with(|l| l.push(reg.clone()));
        Ok(Connection {
            rx_head: AtomicU64::new(rx_state.head),
            rx_at_frame: AtomicBool::new(true),
            seg,
            end,
            rx,
            tx,
            max_message,
            spin,
            claim_pid: AtomicU32::new(0),
            claim_gen: AtomicU64::new(0),
            reg,
            tables,
            peer_seen: AtomicBool::new(false),
            attach_marks: (tx_state.cached_head, rx_state.tail_seen),
            last_check: RateLimit::new(),
            peer_gone: AtomicBool::new(false),
            resync_rx: AtomicBool::new(false),
            resync_tx: AtomicBool::new(false),
            adopting: sys::ForkSafeMutex::new((), || ()),
            rx_state: sys::ForkSafeMutex::new(rx_state, RxState::stale),
            tx_state: sys::ForkSafeMutex::new(tx_state, TxState::stale),
        })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: validated in `attach`: the payload starts with a 64-byte
        // aligned Shared of atomics, inside a mapping `self.seg` keeps alive.
        unsafe { &*(self.seg.payload_ptr().as_ptr() as *const Shared) }
    }

    fn holders(&self, idx: usize) -> &HolderTable {
        // SAFETY: validated in `attach`: both tables lie inside the mapping that
        // `self.seg` keeps alive; atomics only.
        unsafe { self.tables[idx].as_ref() }
    }

    /// Records that this process uses the end: its holder entry becomes USED
    /// (its inherited entry, a hand-over ticket, or a new entry).
    fn set_claimed(&self, pid: u32) {
        let me = sys::current_process();
        let used = holder::word(holder::USED, me.id, me.start_time);
        let t = self.reg.table();
        let e = self.reg.entry.load(Ordering::Relaxed);
        let upgraded = e != NO_ENTRY && {
            let cur = t.entries[e as usize].load(Ordering::Acquire);
            let (_, p, _) = holder::parts(cur);
            p == me.id && t.entries[e as usize].compare_exchange(cur, used, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        };
        if !upgraded {
            let ticket = t.entries.iter().position(|x| {
                let cur = x.load(Ordering::Acquire);
                holder::parts(cur).0 == holder::TICKET
                    && x.compare_exchange(cur, used, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            });
            let idx = match ticket {
                Some(i) => i as u32,
                None => {
                    let idx = alloc_entry(t, used);
                    take_parents_ticket(t);
                    idx
                }
            };
            self.reg.entry.store(idx, Ordering::Relaxed);
        }
        self.claim_pid.store(pid, Ordering::Relaxed);
        sys::watch_forks();
        self.claim_gen.store(sys::fork_generation(), Ordering::Release);
    }

    /// Forgets this process's claim (the end was closed or handed over).
    fn drop_claim(&self) {
        self.claim_gen.store(0, Ordering::Relaxed);
        self.claim_pid.store(0, Ordering::Relaxed);
    }

    /// Whether this connection's claim was made by the calling process.
    #[inline]
    fn claimed_here(&self) -> bool {
        self.claim_gen.load(Ordering::Acquire) == sys::fork_generation()
    }

    /// Whether the calling process holds this end and still owns its slot:
    /// two loads of process-local words and one of the slot line (which only
    /// claims and closes write).
    #[inline]
    fn holds_end(&self) -> bool {
        self.claimed_here()
            && self.shared().ends[self.end.index()].word.load(Ordering::Acquire)
                == slot_word(self.claim_pid.load(Ordering::Relaxed), HELD)
    }

    /// After a wait inside an operation: why the end is no longer this
    /// process's, which the operation must then leave alone (receiving on
    /// would take a frame the new holder takes too, sending on would write
    /// over its frames). `None`: still ours.
    fn taken_over(&self) -> Option<Taken> {
        if self.holds_end() {
            return None;
        }
        if self.seg.lost() {
            return Some(Taken::Lost);
        }
        let w = self.shared().ends[self.end.index()].word.load(Ordering::Acquire);
        Some(if w & 0xffff_ffff == CLOSED { Taken::Closed } else { Taken::By((w >> 32) as u32) })
    }

    /// Before a frame starts (after any wait for room): an error if the end
    /// stopped being ours meanwhile (a forked child adopted it: `EndInUse`;
    /// closed: `Disconnected`). Once a frame has started it is finished
    /// whatever happens (a frame stopped half-way would leave the receiver
    /// waiting for its body, and the next writer's frames inside it).
    fn still_ours_to_send(&self, tx: &mut TxState) -> Result<(), SendError> {
        match self.taken_over() {
            None => Ok(()),
            Some(Taken::By(pid)) => Err(SendError::EndInUse { pid }),
            Some(Taken::Closed) => Err(SendError::Disconnected),
            Some(Taken::Lost) => {
                tx.broken = Some(LOST);
                Err(SendError::Corrupt { reason: LOST })
            }
        }
    }

    /// [`taken_over`](Self::taken_over)'s answer as a receive error (the
    /// caller of `wait_header` records `Corrupt` and `Disconnected`).
    fn taken_error(t: Taken) -> RecvError {
        match t {
            // (The holder may have died since: the next call takes the end back.)
            Taken::By(pid) => RecvError::EndInUse { pid },
            Taken::Closed => RecvError::Disconnected,
            Taken::Lost => RecvError::Corrupt { reason: LOST },
        }
    }

    /// Whether some process holds end `idx` (a live holder entry, or a live
    /// claimant in its end slot), not counting our own unused inherited copy.
    /// Also sets `peer_seen` when it finds one.
    fn holders_alive(&self, idx: usize, skip_own_inherited: bool) -> bool {
        let sh = self.shared();
        let me = sys::current_process();
        let own = holder::word(holder::INHERITED, me.id, me.start_time);
        let slot = &sh.ends[idx];
        let w = slot.word.load(Ordering::Acquire);
        let start = slot.start_time.load(Ordering::Acquire);
        let alive = (w & 0xffff_ffff == HELD
            && start != 0
            && peer::alive(Identity { id: (w >> 32) as u32, start_time: start }))
            || self.holders(idx).entries.iter().any(|e| {
                let hw = e.load(Ordering::Acquire);
                hw != 0 && !(skip_own_inherited && hw == own) && holder_alive(hw)
            });
        if alive {
            self.peer_seen.store(true, Ordering::Relaxed);
        }
        alive
    }

    /// Whether the peer has moved an index of ours since we attached (consumed
    /// from our send ring, or published into our receive ring).
    fn peer_moved(&self) -> bool {
        let moved = self.tx.as_ref().is_some_and(|r| r.head().load(Ordering::Acquire) != self.attach_marks.0)
            || self.rx.as_ref().is_some_and(|r| r.tail().load(Ordering::Acquire) != self.attach_marks.1);
        if moved {
            self.peer_seen.store(true, Ordering::Relaxed);
        }
        moved
    }

    /// Whether end `idx` has never been held: its slot and table are all zero.
    fn never_held(&self, idx: usize) -> bool {
        let sh = self.shared();
        sh.ends[idx].word.load(Ordering::Acquire) == FREE
            && self.holders(idx).entries.iter().all(|e| e.load(Ordering::Acquire) == 0)
    }

    /// Takes this end for the calling process: free, held by a dead process, or
    /// held by our parent (hand-over after fork or launch).
    fn claim(&self) -> Result<(), ClaimError> {
        let slot = &self.shared().ends[self.end.index()];
        let me = sys::current_process();
        loop {
            let w = slot.word.load(Ordering::Acquire);
            let pid = (w >> 32) as u32;
            let take = match w & 0xffff_ffff {
                FREE => true,
                // Our pid: either another Connection of this very process holds
                // the end (refuse: one consumer and one producer per ring), or
                // a dead holder's pid was reused by us (take it).
                HELD if pid == me.id => slot.start_time.load(Ordering::Acquire) != me.start_time,
                CLAIMING if pid == me.id => false,
                HELD | CLAIMING => {
                    let start = if w & 0xffff_ffff == HELD { slot.start_time.load(Ordering::Acquire) } else { 0 };
                    pid == sys::parent_pid() || peer::dead(Identity { id: pid, start_time: start })
                }
                _ => return Err(ClaimError::Closed),
            };
            if !take {
                return Err(ClaimError::InUse(pid));
            }
            if slot.word.compare_exchange(w, slot_word(me.id, CLAIMING), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                slot.start_time.store(me.start_time, Ordering::Relaxed);
                slot.word.store(slot_word(me.id, HELD), Ordering::Release);
                self.set_claimed(me.id);
                return Ok(());
            }
        }
    }

    /// Makes sure the calling process holds this end (adopting a copy
    /// inherited over fork on its first use). The end's slot is looked at on
    /// every call (one load of a line that only claims and closes write): an
    /// end this process held may have been adopted since by a forked child
    /// (then `InUse` while the child lives; taken back, with a resync, once
    /// it dropped its copy or died) or closed by another holder.
    #[inline]
    fn ensure_claimed(&self) -> Result<(), ClaimError> {
        if self.holds_end() {
            return Ok(());
        }
        self.adopt()
    }

    #[cold]
    fn adopt(&self) -> Result<(), ClaimError> {
        // Another thread of this process may be adopting the end right now
        // (its claim is in the slot, with our pid): wait for it, and go on
        // under its claim rather than be refused by it.
        let _one = self.adopting.lock();
        if self.holds_end() {
            return Ok(());
        }
        // Set before the claim: another thread of this process that sees the
        // claim done must also see the resync due. The callers hold (or are
        // about to take) the side's lock: each side resyncs under it, at its
        // next operation; a resync where nothing moved changes nothing.
        self.resync_rx.store(self.rx.is_some(), Ordering::Relaxed);
        self.resync_tx.store(self.tx.is_some(), Ordering::Relaxed);
        self.claim()
    }

    // After adopting a copy of the end, this process's positions are those of
    // the moment its copy was made (the fork). If the previous holder went on
    // using the end after that, the shared indices moved on: start from them
    // instead, or the messages it received would be received again and the
    // frames it sent overwritten. (Unmoved, the copy's own positions stand:
    // they may hold a message half received.) A previous holder stopped in
    // the middle of a frame (a receive that timed out half-way through a
    // streamed message) leaves indices inside it: an unaligned one makes
    // that side `Corrupt` at once; an aligned one reads body bytes as a
    // header, which almost always fails its tag check (`Corrupt`).

    /// Whether a resync is due on a side (its flag set by an adoption):
    /// takes the flag.
    #[inline]
    fn resync_due(&self, flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed)
    }

    /// The receive side of that resync, under the `rx_state` lock.
    #[cold]
    fn resync_recv(&self, ring: &RingView, rx: &mut RxState) {
        let head = ring.head().load(Ordering::Acquire);
        if std::mem::take(&mut rx.stale) || ahead(head, rx.published) {
            rx.head = head;
            rx.published = head;
            rx.tail_seen = head;
            rx.pending = None;
            self.rx_head.store(head, Ordering::Relaxed);
            self.rx_at_frame.store(true, Ordering::Relaxed);
            if head % FRAME_ALIGN != 0 {
                rx.broken = Some("the end was adopted in the middle of a frame");
            } else if !indices_consistent(head, ring.tail().load(Ordering::Acquire), ring.cap) {
                rx.broken = Some("the end was adopted with inconsistent receive indices");
            }
        }
    }

    /// The send side of that resync, under the `tx_state` lock.
    #[cold]
    fn resync_send(&self, ring: &RingView, tx: &mut TxState) {
        let shared = ring.tail().load(Ordering::Acquire);
        // Only forward: a copy that stepped past a dead producer's frames at
        // attach (`tail_unpublished`) is ahead of the shared tail, rightly.
        // Then past frames published only by their headers, as at attach: a
        // previous holder killed between a frame's header and its `tail`
        // store left one the consumer may have read.
        let stale = std::mem::take(&mut tx.stale);
        let moved = stale || ahead(shared, tx.tail);
        if moved && shared % FRAME_ALIGN != 0 {
            tx.broken = Some("the end was adopted with inconsistent send indices");
            return;
        }
        let head = ring.head().load(Ordering::Acquire);
        let tail = published_by_header(ring, if moved { shared } else { tx.tail }, head, self.max_message);
        if stale || tail != tx.tail {
            tx.tail = tail;
            // Nothing known to be zeroed ahead: `zero_next` starts afresh.
            tx.zeroed = tail;
            tx.rewind_check = tail;
            tx.rewinding = false;
            tx.cached_head = head;
            tx.tail_unpublished = tail != shared;
            if tail % FRAME_ALIGN != 0 || tail.wrapping_sub(head) > ring.cap {
                tx.broken = Some("the end was adopted with inconsistent send indices");
            }
        }
    }

    /// Whether the peer has closed its end (no liveness check: no clock read,
    /// no system call).
    #[inline]
    fn peer_closed(&self) -> bool {
        if self.peer_gone.load(Ordering::Relaxed) {
            return true;
        }
        let w = self.shared().ends[1 - self.end.index()].word.load(Ordering::Acquire);
        !matches!(w & 0xffff_ffff, FREE | HELD | CLAIMING)
    }

    /// Whether the peer has closed its end or died. `force` checks liveness
    /// now; otherwise at most every [`PIPE_LIVENESS_EVERY`].
    fn peer_is_gone(&self, force: bool) -> bool {
        if self.peer_gone.load(Ordering::Relaxed) {
            return true;
        }
        let peer = 1 - self.end.index();
        let w = self.shared().ends[peer].word.load(Ordering::Acquire);
        let gone = match w & 0xffff_ffff {
            FREE | HELD | CLAIMING => {
                let now = sys::monotonic_now();
                let due = if force {
                    self.last_check.mark(now);
                    true
                } else {
                    self.last_check.due_at(now, PIPE_LIVENESS_EVERY)
                };
                // Gone when no live process holds a copy, unless nobody ever
                // held it (a named pipe's end that is not opened yet). Hostile
                // bytes in the slot or the table name no live holder, and
                // reading as "never held" needs every word zero after we saw a
                // holder (`peer_seen`, process-local) or not at all.
                due && !self.holders_alive(peer, true)
                    && (self.peer_seen.load(Ordering::Relaxed) || self.peer_moved() || !self.never_held(peer))
            }
            // CLOSED, or bytes no correct peer writes: treat as gone.
            _ => true,
        };
        if gone {
            self.peer_gone.store(true, Ordering::Relaxed);
        }
        gone
    }

    /// Waits until `ready` gives a value: polls for the spin budget, then
    /// raises the sleeper flag `word` and sleeps on it in bounded slices,
    /// re-checking the peer between slices.
    fn block_on<T>(
        &self,
        word: &AtomicU32,
        deadline: &mut Due,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Result<T, Stop> {
        if let Some(t) = ready() {
            return Ok(t);
        }
        let deadline = deadline.get();
        let waiter = Waiter {
            deadline,
            // The spin never outlasts the caller's deadline; one that passes
            // while spinning still gets the re-check and the peer check.
            spin: (!self.spin.is_zero() && !deadline.expired()).then_some(SpinPlan {
                budget: Some(self.spin),
                batch: wait::PIPE_POLL_BATCH,
                expiry_ends_wait: false,
            }),
            // Either we see the other side's new index in the re-check, or it
            // sees our flag (after its own fence) and wakes us.
            sleeper: Sleeper::Flags(&[word]),
            slice: PEER_SLICE,
        };
        waiter
            .run(&Kernel, |phase| match phase {
                Phase::Poll => ready().map_or(Next::Wait, |t| Next::Done(Ok(t))),
                Phase::BeforeSleep { .. } if self.seg.lost() => Next::Done(Err(Stop::Lost)),
                Phase::BeforeSleep { slice_ended } if self.peer_is_gone(slice_ended) => Next::Done(Err(Stop::PeerGone)),
                _ => Next::Wait,
            })
            .unwrap_or(Err(Stop::Timeout))
    }

    // ---------------------------------------------------------------- send

    /// Publishes the producer's tail and wakes the consumer if it sleeps.
    #[inline]
    fn publish_tail(&self, ring: &RingView, tail: u64) {
        ring.tail().store(tail, Ordering::Release);
        Flag::wake(&Kernel, ring.rx_sleep());
    }

    /// Before the frame that ends at `end` is published: makes the header
    /// word at `end` (the next frame's, in free space) zero, with one store
    /// unless [`zero_window`](Self::zero_window) zeroed it already.
    #[inline]
    fn zero_next(ring: &RingView, tx: &mut TxState, end: u64) {
        let known = tx.zeroed.wrapping_sub(tx.tail);
        if known <= ring.cap && end.wrapping_sub(tx.tail) < known {
            return;
        }
        ring.write_header(end, 0);
        tx.zeroed = end.wrapping_add(FRAME_ALIGN);
    }

    /// After a publication: zeroes the header words of the free lines after
    /// `tail`, up to [`ZERO_AHEAD`] bytes ahead, when fewer than half of them
    /// are known zero. Those stores miss together, once per window and off
    /// the publication's path, instead of one miss in front of each small
    /// message's publication.
    ///
    /// While the ring rewinds (see `ring.rs`), the window stops at
    /// [`REWIND_AT`] (and a line): the lines past it are not used then.
    #[inline]
    fn zero_window(ring: &RingView, tx: &mut TxState) {
        let known = tx.zeroed.wrapping_sub(tx.tail);
        let want =
            if tx.rewinding { (REWIND_AT + FRAME_ALIGN).saturating_sub(tx.tail & (ring.cap - 1)) } else { ZERO_AHEAD };
        if known <= ring.cap && known >= want / 2 {
            return;
        }
        Self::zero_window_slow(ring, tx, if known <= ring.cap { known } else { 0 }, want);
    }

    #[cold]
    fn zero_window_slow(ring: &RingView, tx: &mut TxState, known: u64, want: u64) {
        // Free space ends a ring after the consumer's head as we know it.
        let room = ring.cap - tx.tail.wrapping_sub(tx.cached_head).min(ring.cap);
        let mut off = known;
        while off < want && off + FRAME_HEADER <= room {
            ring.write_header(tx.tail.wrapping_add(off), 0);
            off += FRAME_ALIGN;
        }
        tx.zeroed = tx.tail.wrapping_add(off);
    }

    /// Before a whole frame of `total` bytes, on a claimed end: starts it at
    /// the ring's start if the producer's offset has reached [`REWIND_AT`]
    /// (and leaves room for the frame before it) and the consumer has read
    /// everything (see "Rewinding" in `ring.rs`). The consumer's line is
    /// loaded at most once every `REWIND_AT` bytes sent.
    #[inline(always)]
    fn maybe_rewind(ring: &RingView, tx: &mut TxState, total: u64) {
        let off = tx.tail & (ring.cap - 1);
        if off >= REWIND_AT && off >= total + FRAME_ALIGN && !ahead(tx.rewind_check, tx.tail) {
            Self::rewind(ring, tx, off);
        }
    }

    #[cold]
    #[inline(never)]
    fn rewind(ring: &RingView, tx: &mut TxState, off: u64) {
        let head = ring.head().load(Ordering::Acquire);
        let used = tx.tail.wrapping_sub(head);
        if used > ring.cap {
            // A scribbled `head`: left to the next wait for space, which reports it.
            tx.rewind_check = tx.tail.wrapping_add(REWIND_AT);
            return;
        }
        tx.cached_head = head;
        if used != 0 {
            tx.rewinding = false;
            tx.rewind_check = tx.tail.wrapping_add(REWIND_AT);
            return;
        }
        // Everything is consumed, so the whole ring is free. The header word
        // at the lap start is zeroed before the skip shows (release), so a
        // consumer that follows the skip finds no stale frame there.
        let to = tx.tail.wrapping_add(ring.cap - off);
        ring.write_header(to, 0);
        ring.write_header_release(tx.tail, frame_header_skip(ring.cap - off - FRAME_HEADER));
        tx.tail = to;
        tx.zeroed = to.wrapping_add(FRAME_ALIGN);
        tx.rewinding = true;
        tx.rewind_check = to;
    }

    /// Waits until `need` bytes are free in the ring.
    fn wait_space(&self, ring: &RingView, tx: &mut TxState, need: u64, due: &mut Due) -> Result<(), SendError> {
        if ring.cap - tx.tail.wrapping_sub(tx.cached_head) >= need {
            return Ok(());
        }
        let tail = tx.tail;
        let cap = ring.cap;
        let r = self.block_on(ring.tx_sleep(), due, || {
            let h = ring.head().load(Ordering::Acquire);
            let used = tail.wrapping_sub(h);
            if used > cap {
                Some(Err("the receiver's head is beyond the sender's tail"))
            } else if cap - used >= need {
                Some(Ok(h))
            } else {
                None
            }
        });
        match r {
            Ok(Ok(h)) => {
                tx.cached_head = h;
                Ok(())
            }
            Ok(Err(reason)) => {
                tx.broken = Some(reason);
                Err(SendError::Corrupt { reason })
            }
            Err(Stop::Timeout) => Err(SendError::Timeout),
            Err(Stop::PeerGone) => Err(SendError::Disconnected),
            Err(Stop::Lost) => {
                tx.broken = Some(LOST);
                Err(SendError::Corrupt { reason: LOST })
            }
        }
    }

    /// Sends one frame. `due` bounds the wait for room for the whole frame (or,
    /// for one larger than the ring, its first chunk); once a message has
    /// started streaming it finishes, or fails when the peer is gone.
    #[inline]
    fn send_frame(&self, tx: &mut TxState, data: &[u8], due: &mut Due) -> Result<(), SendError> {
        match self.send_whole_fast(tx, data) {
            Some(r) => r,
            None => self.send_frame_slow(tx, data, due),
        }
    }

    /// The common send in one pass, with no call out of line: a message
    /// under 1 KiB that fits as a whole frame in the space already known
    /// free, on an end this process holds, with nothing unusual about
    /// (no resync or liveness check due, nothing broken, lost or closed).
    /// `None` when any of that fails: the general path checks and handles
    /// each case, and this one has changed nothing but, at most, what a
    /// look at the consumer's `head` for a rewind learned (`maybe_rewind`).
    #[inline(always)]
    fn send_whole_fast(&self, tx: &mut TxState, data: &[u8]) -> Option<Result<(), SendError>> {
        let ring = self.tx.as_ref()?;
        let len = data.len() as u64;
        let total = FRAME_HEADER + FrameBody::of(len).body;
        let usable = len < ALIGNED_PAYLOAD_MIN
            && len <= self.max_message
            && total + FRAME_ALIGN <= ring.cap
            && tx.broken.is_none()
            && !tx.tail_unpublished
            && !tx.stale
            && tx.sends.wrapping_add(1) % 64 != 0
            // The claim first: its acquire load of the slot word sees a
            // resync flag that an adopting thread set before claiming.
            && self.holds_end()
            && !self.resync_tx.load(Ordering::Relaxed)
            && !self.peer_closed()
            && !self.seg.lost();
        if !usable {
            return None;
        }
        Self::maybe_rewind(ring, tx, total);
        if ring.cap - tx.tail.wrapping_sub(tx.cached_head) < total + FRAME_ALIGN {
            return None;
        }
        tx.sends = tx.sends.wrapping_add(1);
        self.put_whole(ring, tx, data, total);
        Some(self.sent(tx))
    }

    /// Writes a whole frame of `data` (`total` bytes, room for it and the
    /// line after it checked) and publishes it: the body, the next header
    /// word zeroed, this header last (release), then the index. One
    /// publication, and a receiver polling this header word sees the
    /// complete frame.
    #[inline(always)]
    fn put_whole(&self, ring: &RingView, tx: &mut TxState, data: &[u8], total: u64) {
        // We are the ring's only producer (claimed end, `tx_state` lock held).
        // SAFETY: `data` is `data.len()` readable bytes, and the frame's body
        // `[tail + 8, + len)` lies inside the `total` bytes of free space.
        unsafe { ring.copy_in(tx.tail.wrapping_add(FRAME_HEADER), data.as_ptr(), data.len()) };
        let end = tx.tail.wrapping_add(total);
        Self::zero_next(ring, tx, end);
        ring.write_header_release(tx.tail, frame_header_whole(data.len() as u64));
        tx.tail = end;
        self.publish_tail(ring, tx.tail);
        Self::zero_window(ring, tx);
    }

    #[inline(never)]
    fn send_frame_slow(&self, tx: &mut TxState, data: &[u8], due: &mut Due) -> Result<(), SendError> {
        let ring = self.tx.as_ref().ok_or(SendError::NotWritable)?;
        let len = data.len() as u64;
        if len > self.max_message {
            return Err(SendError::TooLarge { len, limit: self.max_message });
        }
        if let Some(reason) = tx.broken {
            return Err(SendError::Corrupt { reason });
        }
        if self.seg.lost() {
            tx.broken = Some(LOST);
            return Err(SendError::Corrupt { reason: LOST });
        }
        self.ensure_claimed().map_err(|e| match e {
            ClaimError::InUse(pid) => SendError::EndInUse { pid },
            ClaimError::Closed => SendError::Disconnected,
        })?;
        if self.resync_due(&self.resync_tx) || tx.stale {
            self.resync_send(ring, tx);
            if let Some(reason) = tx.broken {
                return Err(SendError::Corrupt { reason });
            }
        }
        // The slot on every send; the peer's liveness (a clock read, and now
        // and then a /proc read) every 64 sends and whenever we must wait.
        tx.sends = tx.sends.wrapping_add(1);
        if self.peer_closed() || (tx.sends % 64 == 0 && self.peer_is_gone(false)) {
            self.peer_gone.store(true, Ordering::Relaxed);
            return Err(SendError::Disconnected);
        }
        if tx.tail_unpublished {
            // Now that this process holds the end: a consumer that read those
            // frames by their headers must not see a `tail` behind it once
            // our next header shows (it follows `tail` for some frames).
            ring.tail().store(tx.tail, Ordering::Release);
            tx.tail_unpublished = false;
        }
        let cap = ring.cap;
        let fb = FrameBody::of(len);
        let body = fb.body;
        let total = FRAME_HEADER + body;
        // The producer always leaves the line after its data free: the header
        // word of the next frame, zeroed before this frame is published, is
        // there (see `ring.rs`). Every wait asks for that line too.
        if total + FRAME_ALIGN <= cap && len < ALIGNED_PAYLOAD_MIN {
            // Whole (see `put_whole`).
            Self::maybe_rewind(ring, tx, total);
            self.wait_space(ring, tx, total + FRAME_ALIGN, due)?;
            self.still_ours_to_send(tx)?;
            self.put_whole(ring, tx, data, total);
            return self.sent(tx);
        }
        // A message of 1 KiB or more goes header first and is followed by
        // `tail` (its copy dwarfs a line transfer; measured: the 64 KiB
        // stream ran 15-20% slower with the header written last). One that
        // fits goes in whole (one publication); a larger one streams through
        // in chunks of at least a quarter ring.
        let first = if total + FRAME_ALIGN <= cap { total } else { (cap / 4).max(FRAME_ALIGN) };
        self.wait_space(ring, tx, first + FRAME_ALIGN, due)?;
        self.still_ours_to_send(tx)?;
        // Release: a receiver that sees this header (polling the word) then
        // sees the `tail` published before it, not an older one.
        ring.write_header_release(tx.tail, frame_header(len));
        tx.tail = tx.tail.wrapping_add(FRAME_HEADER);
        let mut sent = 0u64;
        loop {
            let free = (cap - tx.tail.wrapping_sub(tx.cached_head)).saturating_sub(FRAME_ALIGN);
            let n = free.min(body - sent);
            let (ring_off, from, count) = fb.data_in(len, sent, n);
            // We are the ring's only producer (claimed end, `tx_state` lock held).
            // SAFETY: `data[from..from + count]` is in bounds (`data_in` clips to the message), and
            // `[tail + ring_off, + count)` lies inside the `n` bytes of free space of this ring.
            unsafe { ring.copy_in(tx.tail.wrapping_add(ring_off), data.as_ptr().add(from as usize), count as usize) };
            tx.tail = tx.tail.wrapping_add(n);
            sent += n;
            if sent == body {
                // The frame ends at a 64-byte boundary with a free line after it.
                let end = tx.tail;
                Self::zero_next(ring, tx, end);
            }
            self.publish_tail(ring, tx.tail);
            if sent == body {
                return self.sent(tx);
            }
            self.wait_space(ring, tx, (body - sent).min(cap / 4).max(1) + FRAME_ALIGN, &mut Due::new(None))?;
        }
    }

    /// The end of a send that published its frame: `Ok`, unless the segment
    /// was truncated under us meanwhile (the frame went into zero pages
    /// nobody else sees).
    fn sent(&self, tx: &mut TxState) -> Result<(), SendError> {
        if self.seg.lost() {
            tx.broken = Some(LOST);
            return Err(SendError::Corrupt { reason: LOST });
        }
        Ok(())
    }

    /// Sends `data` as one message. Blocks while the ring is full; a message
    /// larger than the ring streams through it as the receiver reads.
    pub fn send_bytes(&self, data: &[u8]) -> Result<(), SendError> {
        let mut tx = lock(&self.tx_state);
        self.send_frame(&mut tx, data, &mut Due::new(None))
    }

    /// [`send_bytes`](Self::send_bytes) giving up with [`SendError::Timeout`]
    /// if there is no room for the message within `timeout` (nothing is sent
    /// then). A message larger than the ring is bounded only until its first
    /// chunk goes in; it then streams to the end (or to `Disconnected`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use shmproc::pipe::{Pipe, SendError};
    /// let (a, _b) = Pipe::builder().ring_size(128).pair()?;
    /// a.send_bytes(&[0; 40])?; // fills the ring: a 64-byte frame and the line kept free
    /// assert!(matches!(a.send_bytes_timeout(&[1; 40], Duration::from_millis(10)), Err(SendError::Timeout)));
    /// # Ok(()) }
    /// ```
    pub fn send_bytes_timeout(&self, data: &[u8], timeout: Duration) -> Result<(), SendError> {
        let mut tx = lock(&self.tx_state);
        self.send_frame(&mut tx, data, &mut Due::new(Some(timeout)))
    }

    /// Sends `value` encoded with `postcard`.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.send_encoded(value, None)
    }

    /// [`send`](Self::send) with a timeout, as for [`send_bytes_timeout`](Self::send_bytes_timeout).
    pub fn send_timeout<T: Serialize + ?Sized>(&self, value: &T, timeout: Duration) -> Result<(), SendError> {
        self.send_encoded(value, Some(timeout))
    }

    fn send_encoded<T: Serialize + ?Sized>(&self, value: &T, timeout: Option<Duration>) -> Result<(), SendError> {
        let mut tx = lock(&self.tx_state);
        let mut buf = std::mem::take(&mut tx.scratch);
        buf.clear();
        match postcard::to_extend(value, buf) {
            Ok(b) => {
                let r = self.send_frame(&mut tx, &b, &mut Due::new(timeout));
                if b.capacity() <= 1 << 20 {
                    tx.scratch = b;
                }
                r
            }
            Err(e) => Err(SendError::Serialize(e)),
        }
    }

    // ---------------------------------------------------------------- recv

    /// Publishes the consumer's head and wakes the producer if it sleeps.
    #[inline]
    fn publish_head(&self, ring: &RingView, rx: &mut RxState, at_frame: bool) {
        if rx.head == rx.published {
            return;
        }
        ring.head().store(rx.head, Ordering::Release);
        rx.published = rx.head;
        self.rx_at_frame.store(at_frame, Ordering::Relaxed);
        self.rx_head.store(rx.head, Ordering::Relaxed);
        Flag::wake(&Kernel, ring.tx_sleep());
    }

    /// Waits until the producer has published past `head`; returns its tail.
    fn wait_data(&self, ring: &RingView, head: u64, deadline: &mut Due) -> Result<u64, RecvError> {
        let tail = ring.tail();
        match self.block_on(ring.rx_sleep(), deadline, || {
            ring.prefetch(head);
            let t = tail.load(Ordering::Acquire);
            (t != head).then_some(t)
        }) {
            Ok(t) => Ok(t),
            Err(Stop::Timeout) => Err(RecvError::Timeout),
            Err(Stop::Lost) => Err(RecvError::Corrupt { reason: LOST }),
            Err(Stop::PeerGone) => {
                // The peer's last publication happened before it closed (or
                // died); anything it published is visible now.
                let t = tail.load(Ordering::Acquire);
                if t != head {
                    Ok(t)
                } else {
                    Err(RecvError::Disconnected)
                }
            }
        }
    }

    /// Waits until the header word at `head` is not zero (a frame starts
    /// there, see `ring.rs`); returns it.
    ///
    /// The producer's `tail` is not read on the way (that is the point), but
    /// a wait that lasts looks at it now and then, so that a scribbled index
    /// is still reported as corrupt: a `tail` more than a ring away from
    /// `head` in either direction (a correct one lags at most a frame behind
    /// a consumer that read that frame by its header).
    fn wait_header(&self, ring: &RingView, head: u64, deadline: &mut Due) -> Result<u64, RecvError> {
        let mut polls = 0u32;
        let check_first = self.spin.is_zero();
        match self.block_on(ring.rx_sleep(), deadline, || {
            let h = ring.read_header_acquire(head);
            if h != 0 {
                return Some(Ok(h));
            }
            polls = polls.wrapping_add(1);
            if polls % TAIL_CHECK_EVERY == 0 || (check_first && polls == 1) {
                let t = ring.tail().load(Ordering::Acquire);
                let ahead = t.wrapping_sub(head);
                if ahead > ring.cap && head.wrapping_sub(t) > ring.cap {
                    return Some(Err(RecvError::Corrupt { reason: "the sender's tail is beyond the ring" }));
                }
                // A producer stores a frame's header before the `tail` that
                // covers it: published bytes behind a zero word are a scribble.
                if ahead != 0 && ahead <= ring.cap && ring.read_header_acquire(head) == 0 {
                    return Some(Err(RecvError::Corrupt { reason: "a published frame has no header" }));
                }
            }
            None
        }) {
            Ok(Ok(h)) => match self.taken_over() {
                Some(t) => Err(Self::taken_error(t)),
                None => Ok(h),
            },
            Ok(Err(e)) => Err(e),
            Err(Stop::Timeout) => Err(RecvError::Timeout),
            Err(Stop::Lost) => Err(RecvError::Corrupt { reason: LOST }),
            Err(Stop::PeerGone) => {
                // What the peer wrote before it closed (or died) is visible now.
                match (ring.read_header_acquire(head), self.taken_over()) {
                    (0, _) => Err(RecvError::Disconnected),
                    (_, Some(t)) => Err(Self::taken_error(t)),
                    (h, None) => Ok(h),
                }
            }
        }
    }

    fn corrupt(rx: &mut RxState, reason: &'static str) -> RecvError {
        rx.broken = Some(reason);
        RecvError::Corrupt { reason }
    }

    /// Reads the next frame header into `rx.pending` if there is none yet.
    fn start_message(&self, ring: &RingView, rx: &mut RxState, deadline: &mut Due) -> Result<(), RecvError> {
        if let Some(reason) = rx.broken {
            return Err(RecvError::Corrupt { reason });
        }
        if self.seg.lost() {
            return Err(Self::corrupt(rx, LOST));
        }
        if rx.pending.is_some() {
            return Ok(());
        }
        if rx.eof {
            return Err(RecvError::Disconnected);
        }
        // The cached tail (validated when loaded) usually covers the next
        // frame while the ring is busy. An empty-looking ring is watched at
        // the next header word (zero until a frame is there, see `ring.rs`):
        // a whole frame is complete once its header shows, without a load of
        // the producer's line; a streaming one is followed by `tail`.
        // A skip frame (see `ring.rs`) leads to the ring's start; one at a
        // lap start is never valid, so this loops at most twice.
        loop {
            let mut avail = rx.tail_seen.wrapping_sub(rx.head);
            if avail == 0 {
                let h = match self.wait_header(ring, rx.head, deadline) {
                    Err(RecvError::Disconnected) => {
                        rx.eof = true;
                        return Err(RecvError::Disconnected);
                    }
                    Err(RecvError::Corrupt { reason }) => return Err(Self::corrupt(rx, reason)),
                    r => r?,
                };
                if h >> LEN_BITS == FRAME_TAG_SKIP {
                    self.follow_skip(ring, rx, h)?;
                    continue;
                }
                if h >> LEN_BITS == FRAME_TAG_WHOLE {
                    let len = h & MAX_FRAME_LEN;
                    if len > self.max_message {
                        return Err(Self::corrupt(rx, "a frame header's length exceeds the pipe's message limit"));
                    }
                    let total = FRAME_HEADER + FrameBody::of(len).body;
                    if total + FRAME_ALIGN > ring.cap {
                        return Err(Self::corrupt(rx, "a whole frame is larger than the ring allows"));
                    }
                    avail = total;
                    rx.tail_seen = rx.head.wrapping_add(total);
                } else {
                    let tail = match self.wait_data(ring, rx.head, deadline) {
                        Err(RecvError::Disconnected) => {
                            rx.eof = true;
                            return Err(RecvError::Disconnected);
                        }
                        Err(RecvError::Corrupt { reason }) => return Err(Self::corrupt(rx, reason)),
                        r => r?,
                    };
                    avail = tail.wrapping_sub(rx.head);
                    if avail > ring.cap {
                        return Err(Self::corrupt(rx, "the sender's tail is beyond the ring"));
                    }
                    rx.tail_seen = tail;
                }
            }
            if avail < FRAME_HEADER {
                return Err(Self::corrupt(rx, "the sender published part of a frame header"));
            }
            let h = ring.read_header(rx.head);
            let tag = h >> LEN_BITS;
            if tag == FRAME_TAG_SKIP {
                self.follow_skip(ring, rx, h)?;
                continue;
            }
            if tag != FRAME_TAG && tag != FRAME_TAG_WHOLE {
                return Err(Self::corrupt(rx, "a frame header has a bad tag"));
            }
            let len = h & MAX_FRAME_LEN;
            if len > self.max_message {
                return Err(Self::corrupt(rx, "a frame header's length exceeds the pipe's message limit"));
            }
            rx.head = rx.head.wrapping_add(FRAME_HEADER);
            rx.pending = Some(Pending { len, got: 0, buf: Vec::new() });
            return Ok(());
        }
    }

    /// Follows the skip frame with header `h` at the head to its target.
    fn follow_skip(&self, ring: &RingView, rx: &mut RxState, h: u64) -> Result<(), RecvError> {
        let Some(to) = skip_target(rx.head, h & MAX_FRAME_LEN, ring.cap) else {
            return Err(Self::corrupt(rx, "a skip frame does not end at the start of the ring"));
        };
        if rx.tail_seen.wrapping_sub(rx.head) < to.wrapping_sub(rx.head) {
            rx.tail_seen = to;
        }
        rx.head = to;
        self.publish_head(ring, rx, true);
        Ok(())
    }

    /// Consumes the pending message's body into `sink`; returns once it is complete.
    fn fill(
        &self,
        ring: &RingView,
        rx: &mut RxState,
        deadline: &mut Due,
        sink: &mut Sink<'_>,
    ) -> Result<(), RecvError> {
        loop {
            let p = rx.pending.as_mut().expect("fill is called with a pending message");
            let fb = FrameBody::of(p.len);
            if p.got == fb.body {
                break;
            }
            let mut avail = rx.tail_seen.wrapping_sub(rx.head);
            if avail == 0 {
                let tail = ring.tail().load(Ordering::Acquire);
                avail = tail.wrapping_sub(rx.head);
                if avail > ring.cap {
                    return Err(Self::corrupt(rx, "the sender's tail is beyond the ring"));
                }
                rx.tail_seen = tail;
            }
            if avail == 0 {
                // Free the space we consumed so a streaming sender can go on.
                self.publish_head(ring, rx, false);
                match self.wait_data(ring, rx.head, deadline) {
                    Ok(_) => continue,
                    Err(RecvError::Disconnected) => {
                        // The sender vanished mid-message: drop the partial one.
                        rx.pending = None;
                        rx.eof = true;
                        return Err(RecvError::Disconnected);
                    }
                    Err(e) => return Err(e),
                }
            }
            let n = avail.min(fb.body - p.got);
            let (ring_off, at, count) = fb.data_in(p.len, p.got, n);
            let (at, count) = (at as usize, count as usize);
            match sink {
                Sink::Own => {
                    debug_assert!(count == 0 || p.buf.len() == at);
                    p.buf.reserve(count);
                    // We are the ring's only consumer.
                    // SAFETY: `reserve` made room for `count` bytes after `len`, and
                    // `[head + ring_off, + count)` lies in the `n` published bytes (n <= avail <= cap).
                    unsafe {
                        ring.copy_out(rx.head.wrapping_add(ring_off), p.buf.as_mut_ptr().add(p.buf.len()), count);
                        p.buf.set_len(p.buf.len() + count);
                    }
                }
                Sink::Slice(dst) => {
                    let d = &mut dst[at..at + count];
                    // SAFETY: `d` is exactly `count` writable bytes; the ring
                    // range is published and ours to read, as above.
                    unsafe { ring.copy_out(rx.head.wrapping_add(ring_off), d.as_mut_ptr(), count) };
                }
            }
            rx.head = rx.head.wrapping_add(n);
            p.got += n;
        }
        self.publish_head(ring, rx, true);
        Ok(())
    }

    fn rx_ring(&self) -> Result<&RingView, RecvError> {
        let ring = self.rx.as_ref().ok_or(RecvError::NotReadable)?;
        self.ensure_claimed().map_err(|e| match e {
            ClaimError::InUse(pid) => RecvError::EndInUse { pid },
            ClaimError::Closed => RecvError::Disconnected,
        })?;
        Ok(ring)
    }

    /// The common receive, found in one pass: nothing unusual about (no
    /// message half read, no resync due, nothing broken or lost), and a
    /// whole frame under 1 KiB at the head, now or within one batch of polls
    /// when `spin` (the first batch of the wait, without its clock read).
    /// Returns its message length and frame size; `None` leaves everything
    /// to the general path (which also reports a bad header).
    #[inline(always)]
    fn whole_at_head(&self, ring: &RingView, rx: &RxState, spin: bool) -> Option<(usize, u64)> {
        if rx.pending.is_some()
            || rx.broken.is_some()
            || rx.eof
            || rx.stale
            || rx.tail_seen != rx.head
            || self.resync_rx.load(Ordering::Relaxed)
            || self.seg.lost()
        {
            return None;
        }
        let mut h = ring.read_header_acquire(rx.head);
        if h == 0 && spin {
            h = wait::Spinner::poll_batch(wait::PIPE_POLL_BATCH, || {
                let h = ring.read_header_acquire(rx.head);
                (h != 0).then_some(h)
            })
            .unwrap_or(0);
        }
        let len = h & MAX_FRAME_LEN;
        if h >> LEN_BITS != FRAME_TAG_WHOLE || len >= ALIGNED_PAYLOAD_MIN || len > self.max_message {
            return None;
        }
        let total = FRAME_HEADER + FrameBody::of(len).body;
        (total + FRAME_ALIGN <= ring.cap).then_some((len as usize, total))
    }

    /// Consumes the frame [`whole_at_head`](Self::whole_at_head) found,
    /// once its message has been copied out.
    #[inline(always)]
    fn take_whole(&self, ring: &RingView, rx: &mut RxState, total: u64) -> Result<(), RecvError> {
        rx.head = rx.head.wrapping_add(total);
        rx.tail_seen = rx.head;
        self.publish_head(ring, rx, true);
        // Read from zero pages if the segment was truncated under us.
        if self.seg.lost() {
            return Err(Self::corrupt(rx, LOST));
        }
        Ok(())
    }

    fn recv_vec(&self, mut due: Due) -> Result<Vec<u8>, RecvError> {
        // The claim is checked under the side's lock: a thread that waited
        // for the lock while another's receive found the end taken over
        // (`EndInUse`) must not go on to take the frame the new holder takes.
        let mut rx = lock(&self.rx_state);
        let ring = self.rx_ring()?;
        if let Some((len, total)) = self.whole_at_head(ring, &rx, due.may_spin(self.spin)) {
            let mut v = Vec::with_capacity(len);
            // We are the ring's only consumer (claimed end, `rx_state` lock held).
            // SAFETY: `v` has room for `len` bytes; the frame's body `[head + 8, + len)`
            // is published (its header shows) and inside the ring's data.
            unsafe {
                ring.copy_out(rx.head.wrapping_add(FRAME_HEADER), v.as_mut_ptr(), len);
                v.set_len(len);
            }
            self.take_whole(ring, &mut rx, total)?;
            return Ok(v);
        }
        if self.resync_due(&self.resync_rx) || rx.stale {
            self.resync_recv(ring, &mut rx);
        }
        self.start_message(ring, &mut rx, &mut due)?;
        self.fill(ring, &mut rx, &mut due, &mut Sink::Own)?;
        // Read from zero pages if the segment was truncated under us.
        if self.seg.lost() {
            return Err(Self::corrupt(&mut rx, LOST));
        }
        Ok(rx.pending.take().map(|p| p.buf).unwrap_or_default())
    }

    fn recv_into(&self, buf: &mut [u8], mut due: Due) -> Result<usize, RecvError> {
        // The claim is checked under the side's lock: a thread that waited
        // for the lock while another's receive found the end taken over
        // (`EndInUse`) must not go on to take the frame the new holder takes.
        let mut rx = lock(&self.rx_state);
        let ring = self.rx_ring()?;
        match self.whole_at_head(ring, &rx, due.may_spin(self.spin)) {
            Some((len, total)) if len <= buf.len() => {
                // We are the ring's only consumer (claimed end, `rx_state` lock held).
                // SAFETY: `buf` has room for `len` bytes; the frame's body is
                // published and inside the ring's data, as in `recv_vec`.
                unsafe { ring.copy_out(rx.head.wrapping_add(FRAME_HEADER), buf.as_mut_ptr(), len) };
                self.take_whole(ring, &mut rx, total)?;
                return Ok(len);
            }
            Some((len, _)) => return Err(RecvError::BufferTooSmall { needed: len }),
            None => {}
        }
        if self.resync_due(&self.resync_rx) || rx.stale {
            self.resync_recv(ring, &mut rx);
        }
        self.start_message(ring, &mut rx, &mut due)?;
        let (len, have) = {
            let p = rx.pending.as_ref().expect("start_message leaves a pending message");
            (p.len as usize, p.buf.len())
        };
        if buf.len() < len {
            return Err(RecvError::BufferTooSmall { needed: len });
        }
        if have > 0 {
            let p = rx.pending.as_ref().expect("pending");
            buf[..have].copy_from_slice(&p.buf);
        }
        match self.fill(ring, &mut rx, &mut due, &mut Sink::Slice(buf)) {
            // Read from zero pages if the segment was truncated under us.
            Ok(()) if self.seg.lost() => Err(Self::corrupt(&mut rx, LOST)),
            Ok(()) => {
                rx.pending = None;
                Ok(len)
            }
            Err(e) => {
                // Keep the part that arrived in the pending buffer, so the next
                // call (with any buffer) resumes where this one stopped.
                if let Some(p) = rx.pending.as_mut() {
                    let upto = FrameBody::of(p.len).data_upto(p.len, p.got) as usize;
                    let from = p.buf.len();
                    p.buf.extend_from_slice(&buf[from..upto]);
                }
                Err(e)
            }
        }
    }

    /// Receives the next message, blocking until one arrives.
    /// [`RecvError::Disconnected`] once the peer is gone and all is drained.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.recv_vec(Due::new(None))
    }

    /// [`recv_bytes`](Self::recv_bytes) giving up with [`RecvError::Timeout`] after `timeout`.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.recv_vec(Due::new(Some(timeout)))
    }

    /// Receives the next message into `buf` and returns its length. If `buf`
    /// is too small: [`RecvError::BufferTooSmall`] with the size needed, and
    /// the message stays queued for the next call.
    pub fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.recv_into(buf, Due::new(None))
    }

    /// [`recv_bytes_into`](Self::recv_bytes_into) with a timeout.
    pub fn recv_bytes_into_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<usize, RecvError> {
        self.recv_into(buf, Due::new(Some(timeout)))
    }

    /// Receives a value sent with [`send`](Self::send).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        decode_whole(&self.recv_vec(Due::new(None))?)
    }

    /// [`recv`](Self::recv) with a timeout.
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvError> {
        decode_whole(&self.recv_vec(Due::new(Some(timeout)))?)
    }

    /// Whether a message is ready to be read, or the peer is gone (so that a
    /// receive would not block), waiting up to `timeout` for that
    /// (`Duration::ZERO`: just look). A send-only end is never ready.
    pub fn poll(&self, timeout: Duration) -> bool {
        let Some(ring) = self.rx.as_ref() else { return false };
        let (head, at_frame) = self.poll_head(ring);
        let r = self.block_on(ring.rx_sleep(), &mut Due::new(Some(timeout)), || {
            Self::data_at(ring, head, at_frame).then_some(())
        });
        match r {
            // Ready: a receive would not block (it fails at once).
            Ok(()) | Err(Stop::PeerGone) | Err(Stop::Lost) => true,
            Err(Stop::Timeout) => false,
        }
    }

    /// Ready check for [`wait`](super::wait): data beyond the published head,
    /// or the peer gone.
    /// Where `poll`/`wait` look for the next frame: the receive head this
    /// process published, or, on a copy not adopted (or not resynced) yet,
    /// the shared head if another holder moved it on since the copy was made.
    fn poll_head(&self, ring: &RingView) -> (u64, bool) {
        let mine = self.rx_head.load(Ordering::Relaxed);
        let at_frame = self.rx_at_frame.load(Ordering::Relaxed);
        if self.claimed_here() && !self.resync_rx.load(Ordering::Relaxed) {
            return (mine, at_frame);
        }
        let shared = ring.head().load(Ordering::Acquire);
        if ahead(shared, mine) {
            (shared, true)
        } else {
            (mine, at_frame)
        }
    }

    pub(crate) fn ready_now(&self, force: bool) -> bool {
        match self.rx.as_ref() {
            None => false,
            Some(r) => {
                let (head, at_frame) = self.poll_head(r);
                Self::data_at(r, head, at_frame) || self.peer_is_gone(force)
            }
        }
    }

    /// Whether anything was sent past the published head `head`: a `tail`
    /// ahead of it (a lagging `tail`, behind `head`, says nothing), or, when
    /// `head` is a frame boundary, a frame's header there (a whole frame is
    /// readable then; see `ring.rs`). Inside a message whose rest has not
    /// arrived, the word at `head` is body bytes of an earlier lap.
    fn data_at(ring: &RingView, head: u64, at_frame: bool) -> bool {
        let ahead = ring.tail().load(Ordering::Acquire).wrapping_sub(head);
        if ahead != 0 && ahead <= ring.cap {
            return true;
        }
        let h = if at_frame { ring.read_header_acquire(head) } else { 0 };
        if h >> LEN_BITS == FRAME_TAG_SKIP {
            // A skip frame alone is no message: look where it leads (a bad
            // one reads as ready, so that `recv` reports it).
            return skip_target(head, h & MAX_FRAME_LEN, ring.cap).map_or(true, |to| ring.read_header_acquire(to) != 0);
        }
        h != 0
    }

    /// The receiver's sleeper flag, for [`wait`](super::wait).
    pub(crate) fn rx_sleep_word(&self) -> Option<&AtomicU32> {
        self.rx.as_ref().map(|r| r.rx_sleep())
    }

    pub(crate) fn spin_budget(&self) -> Duration {
        self.spin
    }

    // ---------------------------------------------------------------- misc

    /// Which end this is.
    pub fn end(&self) -> End {
        self.end
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.rx.is_some()
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.tx.is_some()
    }

    /// The largest message this pipe carries.
    pub fn max_message(&self) -> u64 {
        self.max_message
    }

    /// How another process opens this pipe. `open_handle` claims end B unless
    /// told otherwise ([`PipeBuilder::end`](super::PipeBuilder::end)); for an
    /// anonymous pipe, make the fd survive `exec` with
    /// [`Segment::set_inheritable`] on [`segment`](Self::segment).
    pub fn handle(&self) -> Handle {
        self.seg.handle()
    }

    /// The segment holding the pipe.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    /// Closes this end: the peer drains what was sent, then gets
    /// `Disconnected`. Unlike dropping (which removes only this copy from the
    /// end's holder count), it closes the end for every holder, forked
    /// children included, so the peer is told at once.
    pub fn close(mut self) {
        self.finish(true);
        // Nothing left for Drop to do.
        self.drop_claim();
    }

    /// Gives this end up *without* closing it, so that another process (one
    /// launched with [`handle`](Self::handle), say) can claim it; the peer
    /// keeps waiting for that process. Use it after launching a binary that
    /// opens the end, instead of dropping (which would close the end if the
    /// child has not claimed it yet). A child inherits the end from its parent
    /// in any case, so this is only needed where the parent may drop first.
    pub fn hand_over(self) {
        self.leave_ticket();
    }

    /// The body of [`hand_over`](Self::hand_over), on a borrowed end (also
    /// used when the end is serialized into a `Process`/`Pool` argument).
    fn leave_ticket(&self) {
        let me = sys::current_process();
        // Our holder entry becomes a ticket: the end stays held (while we
        // live) until the opener consumes the ticket with its own entry.
        let e = self.reg.entry.swap(NO_ENTRY, Ordering::Relaxed);
        if e != NO_ENTRY {
            let t = self.reg.table();
            let x = &t.entries[e as usize];
            let cur = x.load(Ordering::Acquire);
            if holder::parts(cur).1 == me.id {
                let ticket = holder::word(holder::TICKET, me.id, me.start_time);
                if x.compare_exchange(cur, ticket, Ordering::SeqCst, Ordering::Relaxed).is_ok() {
                    withdraw_if_claimed(t, e as usize, ticket, me.id);
                }
            }
        }
        if self.claim_pid.load(Ordering::Relaxed) == me.id {
            let slot = &self.shared().ends[self.end.index()];
            let _ = slot.word.compare_exchange(slot_word(me.id, HELD), FREE, Ordering::SeqCst, Ordering::Relaxed);
            self.drop_claim();
        }
    }
}

/// Decodes a `recv` message as a `T`, which must use every byte of it: a
/// message sent as another type usually decodes partly (a `String`'s length
/// prefix reads as a `u64`), and is refused instead of misread.
fn decode_whole<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecvError> {
    let (value, rest) = crate::decode::take_from_bytes(bytes).map_err(RecvError::Deserialize)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(RecvError::TrailingBytes { used: bytes.len() - rest.len(), len: bytes.len() })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl Connection {
    /// Drops this copy of the end: removes its holder entry and gives up the
    /// end's use; when no live holder is left (or on `close`), marks the end
    /// CLOSED and wakes the peer.
    fn finish(&mut self, force_close: bool) {
        let me = sys::current_process();
        let idx = self.end.index();
        let e = self.reg.entry.swap(NO_ENTRY, Ordering::Relaxed);
        if e != NO_ENTRY {
            let x = &self.reg.table().entries[e as usize];
            let cur = x.load(Ordering::Acquire);
            let (state, pid, _) = holder::parts(cur);
            if pid == me.id && matches!(state, holder::USED | holder::INHERITED) {
                let _ = x.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        let reg = self.reg.clone();
        REGISTRY.with(|l| l.retain(|r| !Arc::ptr_eq(r, &reg)));
        let used = self.claim_pid.load(Ordering::Relaxed) == me.id;
        if !force_close && e == NO_ENTRY && !used {
            // A copy this process never held (the unopened end B of `create`).
            return;
        }
        let slot = &self.shared().ends[idx];
        if used {
            // Release the use of the end (another holder may adopt it).
            let _ = slot.word.compare_exchange(
                slot_word(me.id, HELD),
                slot_word(me.id, FREE),
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
        }
        let close = force_close || !self.holders_alive(idx, false);
        if !close {
            return;
        }
        let w = slot.word.load(Ordering::Acquire);
        if w & 0xffff_ffff == CLOSED {
            return;
        }
        let closed = if force_close {
            slot.word.store(slot_word(me.id, CLOSED), Ordering::SeqCst);
            true
        } else {
            // Only if nobody claimed the end meanwhile.
            slot.word.compare_exchange(w, slot_word(me.id, CLOSED), Ordering::SeqCst, Ordering::Relaxed).is_ok()
        };
        if closed {
            fence(Ordering::SeqCst);
            for w in
                [self.tx.as_ref().map(|r| r.rx_sleep()), self.rx.as_ref().map(|r| r.tx_sleep())].into_iter().flatten()
            {
                Flag::wake_now(&Kernel, w);
            }
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("end", &self.end)
            .field("readable", &self.rx.is_some())
            .field("writable", &self.tx.is_some())
            .field("ring_size", &self.rx.as_ref().or(self.tx.as_ref()).map(|r| r.cap))
            .field("max_message", &self.max_message)
            .field("handle", &self.seg.handle())
            .finish()
    }
}

impl Object for Connection {
    const KIND: ObjectKind = ObjectKind::Pipe;
    type Params = PipeConfig;
    fn segment(&self) -> &Segment {
        &self.seg
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        open(&b.opts, &b.params, handle)
    }
}

// A pipe end travels with its end (A or B). As a Process/Pool argument the
// parent hands the end over (the argument is moved and dropped right after
// serializing): its holder entry becomes a ticket that the child consumes when
// it opens the end, so the end never looks closed to the peer in between.
impl serde::Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = crate::object::ObjRef::outbound::<S::Error>(&self.seg)?;
        if crate::object::carrying() {
            self.leave_ticket();
        }
        serde::Serialize::serialize(&(self.end.index() as u8, r), s)
    }
}

impl<'de> serde::Deserialize<'de> for Connection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (end, r) = <(u8, crate::object::ObjRef)>::deserialize(d)?;
        let end = if end == 0 { End::A } else { End::B };
        r.open_with(ObjectKind::Pipe, |h| super::Pipe::builder().end(end).open_handle(h))
    }
}

#[cfg(test)]
mod holder_tests {
    use super::*;
    use crate::pipe::Pipe;

    /// Regression (found by the pipe chaos loop): a child killed before its
    /// fork handler ran left the PENDING entry its parent wrote; counted while
    /// the parent lived, it kept the end "held" for ever and the peer never
    /// heard `Disconnected`. A PENDING entry now counts for one second only.
    #[test]
    fn regression_pending_entry_of_a_child_killed_before_its_fork_handler_expires() {
        let (a, b) = Pipe::new().unwrap();
        let me = sys::current_process();
        let t = b.holders(End::B.index());
        for e in &t.entries {
            e.store(0, Ordering::SeqCst);
        }
        a.shared().ends[End::B.index()].word.store(slot_word(me.id, FREE), Ordering::SeqCst);
        // A fresh PENDING entry (a fork in progress) keeps the end held...
        t.entries[0].store(holder::word(holder::PENDING, me.id, pending_stamp()), Ordering::SeqCst);
        assert!(!a.peer_is_gone(true));
        // ...one older than the grace period does not.
        let old = pending_stamp().wrapping_sub(PENDING_GRACE_MS + 5) & ((1 << 38) - 1);
        t.entries[0].store(holder::word(holder::PENDING, me.id, old), Ordering::SeqCst);
        assert!(a.peer_is_gone(true));
        drop(b);
    }

    #[test]
    fn holder_words_round_trip_and_garbage_is_not_alive() {
        let me = sys::current_process();
        let w = holder::word(holder::USED, me.id, me.start_time);
        assert_eq!(holder::parts(w), (holder::USED, me.id, me.start_time));
        assert!(holder_alive(w));
        assert!(!holder_alive(holder::word(holder::USED, me.id, me.start_time + 1)));
        assert!(!holder_alive(holder::word(9, me.id, me.start_time)));
        assert!(!holder_alive(holder::word(holder::USED, me.id, 0)));
        assert!(!holder_alive(u64::MAX));
    }
}
