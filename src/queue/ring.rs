//! The ring algorithms, written once over an abstract memory ([`RingMem`]) so that
//! the same code runs on a shared-memory segment and on a heap twin under loom.
//!
//! ## MPMC: Vyukov's bounded queue, with crash-recoverable claims
//!
//! Dmitry Vyukov's bounded MPMC queue keeps a 64-bit *stamp* per slot that says
//! which lap of the ring the slot is in and whether it is empty or full. We add
//! two *claimed* states so that a process killed half-way through a send or a
//! receive can be recognised (and its slot recovered) by the survivors:
//!
//! | stamp                                        | meaning for the slot's lap `q`          |
//! |----------------------------------------------|-----------------------------------------|
//! | `2q` (bit 63 clear)                          | empty, waiting for the producer of `q`  |
//! | `CLAIM \| pid << 32 \| q as u32`             | a producer (`pid`) is writing lap `q`   |
//! | `2q + 1` (bit 63 clear)                      | full, waiting for the consumer of `q`   |
//! | `CLAIM \| READER \| pid << 32 \| q as u32`   | a consumer (`pid`) is reading lap `q`   |
//!
//! after which the consumer stores `2(q + cap)`: empty for the next lap. A slot
//! only ever moves forward through these states, each move made by exactly one
//! party: the winner of a compare-and-swap on the stamp (claims), the claimer
//! (publication), or a survivor that proved the claimer dead (recovery, below).
//!
//! `tail` and `head` are *hints*: the index a producer (consumer) should try
//! next. They lag the true position by at most one, and anyone who sees that the
//! slot at the hint has already been claimed for that lap advances the hint
//! (the "help" step). A claim therefore never depends on the hint advancing, and
//! a process that dies between claiming a slot and advancing the hint wedges
//! nobody.
//!
//! **Recovery.** A claimed stamp names its claimer's pid. If a survivor finds a
//! slot stuck in a claimed state and the claimer is dead (the caller checks
//! liveness, pid-reuse-proof), it compare-and-swaps the stamp from exactly the
//! observed claimed value to `2(q + cap)`: the slot is empty for the next lap and
//! its message (half-written, or being read by the dead consumer) is dropped.
//! Consumers that then find `2(q + cap)` at `head == q` advance past it. Because
//! the payload is only ever published by the store of `2q + 1` *after* it is
//! fully written, and a recovered slot never passes through `2q + 1`, a torn
//! message is never delivered; because a consumer claims before it reads and
//! only one claim can win, no message is delivered twice.
//!
//! **Hostile stamps.** Every stamp is decoded relative to the position we expect
//! (`decode`); a stamp that is not one of the states above for a lap congruent
//! to the slot index, or a combination that cannot arise (say, the slot one lap
//! behind but empty), gives [`Step::Corrupt`]. Indices are masked before use, so
//! no value read from shared memory can address memory outside the ring.
//!
//! ## SPSC: Lamport's ring with cached indices
//!
//! With one producer and one consumer no stamps are needed: the producer owns
//! `tail`, the consumer owns `head`, and each side keeps a cached copy of the
//! other's index on its own cache line, refreshing it only when the ring looks
//! full (empty). A batch publishes its index once.
//!
//! The exclusive endpoints (`raw::SpscLocal`, the per-message path) go one
//! step further, after MCRingBuffer (Lee, Bu, Chandranmenon, "A Lock-Free,
//! Cache-Efficient Multi-Core Synchronization Mechanism for Line-Rate Network
//! Traffic Monitoring", IPDPS 2010: control variables kept local, the peer's
//! index re-read only when the ring looks full or empty) and B-Queue (Wang,
//! Zhang, Tang, Wu, "B-Queue: Efficient and Practical Queuing for Fast Core-to-
//! Core Communication", IJPP 2013: a producer that runs out of room waits for a
//! whole batch of free slots, so it touches the consumer's line once per
//! batch): their own index and the cached copy of the other's live in process
//! memory, published to the segment and never read back on the fast path.
//! A consumer whose waits keep ending at their first look slips behind the
//! producer, after FastForward (Giacomoni, Moseley, Vachharajani, "FastForward
//! for Efficient Pipeline Parallelism", PPoPP 2008: temporal slipping), so
//! that it stops taking the producer's lines right after each write; a wait
//! that needs several looks (ping-pong, an idle producer) ends the slip.
//!
//! **Where this design stops.** A per-message `send` publishes its index,
//! and a consumer that catches up reads it. On the AMD guest we measure on,
//! against the bench's bare ring that publishes once per 64 messages, the
//! endpoints stream at 0.19-0.27x (both placements), about what a bare ring
//! with the same per-message index protocol reads (`raw-ring-permsg`
//! 0.15-0.22x in the bench; in `examples/store_pace`, two threads, `index`
//! 0.27x and 0.25x with the endpoint's own position stored per message).
//! A ring that publishes each message through a sequence word in its slot
//! instead, which the consumer polls (FastForward), reads 0.47-0.50x in the
//! bench (`raw-ring-seq`) and 0.57x in `store_pace`: on this host not even
//! it reaches half the batched ring. And it does not survive an endpoint:
//! one more store per message to a line only the producer uses (its
//! position, kept in memory between calls) cuts it to 0.14x, once per slot
//! line (4 messages) to 0.37-0.40x. That is why, built into this queue in
//! an earlier session (a sequence word in every SPSC slot, `tail` published
//! once per 64 messages, readers following the words past it), it read
//! worse than the index protocol, and was not kept. An endpoint would have
//! to keep its position out of memory between messages (a register, inside
//! a loop the library runs) to gain from it. (Stream figures before
//! 2026-11-28 in this project were taken against a floor running at about
//! half its speed: its producer divided once per message and its consumer
//! stored its indices back after every message.)

use std::sync::atomic::Ordering;

#[cfg(not(loom))]
#[cfg_attr(all(target_arch = "x86_64", not(miri)), allow(unused_imports))]
use std::sync::atomic::{fence, AtomicU64};

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU64};

/// The atomic operations the algorithms need, so that they run on std atomics
/// (shared memory) and on loom's (the heap twin under the model checker).
pub(crate) trait Atom {
    fn load(&self, o: Ordering) -> u64;
    fn store(&self, v: u64, o: Ordering);
    fn compare_exchange(&self, cur: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64>;
}

impl Atom for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, o: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, o)
    }
    #[inline]
    fn store(&self, v: u64, o: Ordering) {
        std::sync::atomic::AtomicU64::store(self, v, o)
    }
    #[inline]
    fn compare_exchange(&self, cur: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64> {
        std::sync::atomic::AtomicU64::compare_exchange(self, cur, new, ok, fail)
    }
}

#[cfg(loom)]
impl Atom for loom::sync::atomic::AtomicU64 {
    fn load(&self, o: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, o)
    }
    fn store(&self, v: u64, o: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, v, o)
    }
    fn compare_exchange(&self, cur: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64> {
        loom::sync::atomic::AtomicU64::compare_exchange(self, cur, new, ok, fail)
    }
}

/// Bit 63: the slot is claimed (being written or read).
pub(crate) const CLAIM: u64 = 1 << 63;
/// Bit 62 (with [`CLAIM`]): the claimer is a consumer.
pub(crate) const READER: u64 = 1 << 62;
/// Bits 32..62 hold the claimer's pid (Linux pids are below 2^22).
pub(crate) const PID_MASK: u64 = (1 << 30) - 1;
/// Largest supported capacity (laps must be distinguishable in 32 bits).
pub(crate) const MAX_CAPACITY: u64 = 1 << 30;
/// How many times one operation retries before it declares the ring corrupt
/// (only a hostile writer can make an honest ring loop this long).
const MAX_RETRIES: u32 = 1 << 14;

/// The memory a ring runs on: its indices, its stamps and its payload slots.
pub(crate) trait RingMem {
    /// The atomic type of indices and stamps.
    type A: Atom;
    /// Number of slots, a power of two no larger than [`MAX_CAPACITY`].
    fn capacity(&self) -> u64;
    /// The producers' index (MPMC: a hint; SPSC: the producer's published index).
    fn tail(&self) -> &Self::A;
    /// The consumers' index.
    fn head(&self) -> &Self::A;
    /// SPSC: the producer's cached copy of `head` (on the producer's line).
    fn head_cache(&self) -> &Self::A;
    /// SPSC: the consumer's cached copy of `tail` (on the consumer's line).
    fn tail_cache(&self) -> &Self::A;
    /// The stamp of slot `i` (`i < capacity`).
    fn stamp(&self, i: u64) -> &Self::A;
    /// Copies `src` into slot `i`.
    ///
    /// # Safety
    /// `i < capacity`, `src` is at most the slot size, and the caller owns the
    /// slot (it won the claim, or is the only producer in SPSC mode).
    #[allow(dead_code)]
    unsafe fn write(&self, i: u64, src: &[u8]);
    /// Copies slot `i` into `dst`.
    ///
    /// # Safety
    /// `i < capacity`, `dst` is at most the slot size, and the caller owns the
    /// slot (it won the claim, or is the only consumer in SPSC mode).
    #[allow(dead_code)]
    unsafe fn read(&self, i: u64, dst: &mut [u8]);
    /// SPSC consumer: `avail` messages from position `head` on are
    /// published; start loading the line of one a few lines ahead (see
    /// [`prefetch`]). A hint only: the default does nothing.
    #[inline]
    fn prefetch_published(&self, head: u64, avail: u64) {
        let _ = (head, avail);
    }
}

/// What a slot's stamp says, relative to the position the caller looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Empty for the producer of that lap.
    Empty,
    /// Being written by `pid`.
    Writing(u32),
    /// Published, waiting for the consumer of that lap.
    Full,
    /// Being read by `pid`.
    Reading(u32),
}

/// Decodes stamp `s` for the slot of position `pos`: `(lap, state)` where `lap`
/// is the slot's lap relative to `pos`'s (0: the same, -1: one behind, 1: one
/// ahead). `None` if `s` is no valid stamp for this slot.
#[inline]
///
/// `cap` is a power of two (every geometry is checked for it), so the lap
/// arithmetic is masks and arithmetic shifts: a consumer decodes a stamp on
/// every poll and on the hand-over path, where two 64-bit divisions cost
/// about as much as the rest of the decode and claim together.
pub(crate) fn decode(s: u64, pos: u64, cap: u64) -> Option<(i64, State)> {
    debug_assert!(cap.is_power_of_two());
    let mask = cap as i64 - 1;
    let shift = cap.trailing_zeros();
    if s & CLAIM != 0 {
        let d = (s as u32).wrapping_sub(pos as u32) as i32 as i64;
        if d & mask != 0 {
            return None;
        }
        let pid = ((s >> 32) & PID_MASK) as u32;
        let st = if s & READER != 0 { State::Reading(pid) } else { State::Writing(pid) };
        // An exact multiple of `cap`: the arithmetic shift is the quotient.
        Some((d >> shift, st))
    } else {
        let r = s.wrapping_sub(pos.wrapping_mul(2)) as i64;
        let full = r & 1;
        let dq = r >> 1;
        if dq & mask != 0 {
            return None;
        }
        Some((dq >> shift, if full == 1 { State::Full } else { State::Empty }))
    }
}

/// A claimed stamp for position `pos`.
#[inline]
pub(crate) fn claim_stamp(reader: bool, pid: u32, pos: u64) -> u64 {
    CLAIM | if reader { READER } else { 0 } | ((pid as u64 & PID_MASK) << 32) | (pos as u32 as u64)
}

/// The initial stamp of slot `i`: empty for lap `i`.
#[inline]
pub(crate) fn initial_stamp(i: u64) -> u64 {
    2 * i
}

/// A slot found stuck in a claimed state, to be checked and maybe recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stall {
    /// Slot index.
    pub(crate) slot: u64,
    /// The lap position the claim is for.
    pub(crate) pos: u64,
    /// The exact stamp observed (recovery compare-and-swaps from it).
    pub(crate) stamp: u64,
    /// The claimer.
    pub(crate) pid: u32,
}

/// How one push or pop attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The message was moved.
    Done,
    /// Push: no free slot. Pop: nothing published.
    WouldBlock,
    /// Push/pop would block because of a claimed slot (its claimer may be dead).
    Stalled(Stall),
    /// A stamp or index holds a value no honest ring can hold.
    Corrupt,
}

/// MPMC push by process `pid`: `write(m, slot)` fills the claimed slot.
///
/// Inlined into its callers, as [`mpmc_pop`] is (measured: a queue send and
/// receive in one thread 20 ns with both as calls, 15.5 ns inlined; the bare
/// protocol written inline, 9 ns).
///
/// `optimistic`: try the claim with a compare-and-swap against the expected
/// empty stamp at once, without loading the stamp first. That moves the slot's
/// cache line here in one transaction instead of two (a read, then an upgrade),
/// which matters on the hand-over path; callers retrying on a full queue pass
/// `false`, so that waiting producers only read the line the consumers use.
#[inline(always)]
pub(crate) fn mpmc_push<M: RingMem>(m: &M, pid: u32, optimistic: bool, write: impl FnOnce(&M, u64)) -> Step {
    let mut write = Some(write);
    let cap = m.capacity();
    let mask = cap - 1;
    let mut pos = m.tail().load(Ordering::Acquire);
    let mut first = optimistic;
    for _ in 0..MAX_RETRIES {
        let slot = pos & mask;
        let stamp = m.stamp(slot);
        let claim = claim_stamp(false, pid, pos);
        let empty = pos.wrapping_mul(2);
        let s = if first {
            first = false;
            match stamp.compare_exchange(empty, claim, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return publish(m, stamp, pos, slot, &mut write),
                Err(s) => s,
            }
        } else {
            stamp.load(Ordering::Acquire)
        };
        match decode(s, pos, cap) {
            Some((0, State::Empty)) => {
                if stamp.compare_exchange(s, claim, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    return publish(m, stamp, pos, slot, &mut write);
                }
                pos = m.tail().load(Ordering::Acquire);
            }
            // Already claimed for this lap or beyond: the hint is stale; help it.
            Some((l, st)) if l > 0 || (l == 0 && st != State::Empty) => {
                let _ = m.tail().compare_exchange(pos, pos.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
                pos = m.tail().load(Ordering::Acquire);
            }
            Some((-1, State::Full)) => return Step::WouldBlock,
            Some((-1, State::Writing(p))) | Some((-1, State::Reading(p))) => {
                return Step::Stalled(Stall { slot, pos: pos.wrapping_sub(cap), stamp: s, pid: p })
            }
            _ => {
                // Impossible for an honest ring unless `tail` moved under us.
                let now = m.tail().load(Ordering::Acquire);
                if now == pos {
                    return Step::Corrupt;
                }
                pos = now;
            }
        }
    }
    Step::Corrupt
}

/// After a won write claim for lap `pos`: advance the hint, fill, publish.
#[inline]
fn publish<M: RingMem, F: FnOnce(&M, u64)>(m: &M, stamp: &M::A, pos: u64, slot: u64, write: &mut Option<F>) -> Step {
    let _ = m.tail().compare_exchange(pos, pos.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    // We won the claim for lap `pos`: no one else writes or reads this slot
    // until we publish.
    if let Some(w) = write.take() {
        w(m, slot);
    }
    stamp.store(pos.wrapping_mul(2).wrapping_add(1), Ordering::Release);
    Step::Done
}

/// MPMC pop by process `pid`: `read(m, slot)` copies the claimed slot out.
#[inline(always)]
pub(crate) fn mpmc_pop<M: RingMem>(m: &M, pid: u32, read: impl FnOnce(&M, u64)) -> Step {
    let mut read = Some(read);
    let cap = m.capacity();
    let mask = cap - 1;
    let mut pos = m.head().load(Ordering::Acquire);
    for _ in 0..MAX_RETRIES {
        let slot = pos & mask;
        let stamp = m.stamp(slot);
        let s = stamp.load(Ordering::Acquire);
        // The common case first, without `decode`: a message published for
        // exactly this lap (what `decode` reads as `(0, Full)`). The match
        // below compiles to a jump table, whose indirect branch cost this
        // path as much as one of its locked instructions.
        let full = pos.wrapping_mul(2).wrapping_add(1);
        if s == full && s & CLAIM == 0 {
            if take(m, stamp, s, pid, pos, slot, &mut read) {
                return Step::Done;
            }
            pos = m.head().load(Ordering::Acquire);
            continue;
        }
        match decode(s, pos, cap) {
            // Taken by the test above; kept so that the match stays whole
            // should that shortcut ever go.
            Some((0, State::Full)) => {
                if take(m, stamp, s, pid, pos, slot, &mut read) {
                    return Step::Done;
                }
                pos = m.head().load(Ordering::Acquire);
            }
            Some((0, State::Empty)) => return Step::WouldBlock,
            Some((0, State::Writing(p))) => return Step::Stalled(Stall { slot, pos, stamp: s, pid: p }),
            Some((-1, State::Reading(p))) => {
                return Step::Stalled(Stall { slot, pos: pos.wrapping_sub(cap), stamp: s, pid: p })
            }
            Some((l, st)) if l > 0 || (l == 0 && matches!(st, State::Reading(_))) => {
                let _ = m.head().compare_exchange(pos, pos.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
                pos = m.head().load(Ordering::Acquire);
            }
            _ => {
                let now = m.head().load(Ordering::Acquire);
                if now == pos {
                    return Step::Corrupt;
                }
                pos = now;
            }
        }
    }
    Step::Corrupt
}

/// After `mpmc_pop` found stamp `s` full for lap `pos` at `slot`: claims
/// it for reading, advances the hint, copies the message out with `read` and
/// empties the slot for its next lap. False if another consumer claimed it
/// first.
#[inline(always)]
fn take<M: RingMem, F: FnOnce(&M, u64)>(
    m: &M,
    stamp: &M::A,
    s: u64,
    pid: u32,
    pos: u64,
    slot: u64,
    read: &mut Option<F>,
) -> bool {
    let claim = claim_stamp(true, pid, pos);
    if stamp.compare_exchange(s, claim, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    let _ = m.head().compare_exchange(pos, pos.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    // We won the read claim for lap `pos`; the acquire load of `s` saw the
    // producer's release store of the payload.
    if let Some(r) = read.take() {
        r(m, slot);
    }
    stamp.store(pos.wrapping_add(m.capacity()).wrapping_mul(2), Ordering::Release);
    true
}

/// Whether an MPMC pop would find nothing, and nothing on its way, at the
/// ring's head: the slot there is empty for its lap and unclaimed (a peek:
/// it claims nothing). False while a producer's claim at the head is
/// unpublished, which holds back every message published after it (the
/// caller then waits for the claimer, or recovers its slot once it is dead),
/// and while a message is there to take. True for a stamp no honest ring
/// holds (the next pop reports it).
///
/// Producers claim positions in order (a claim at `p + 1` needs the one at
/// `p` taken first), so an unclaimed empty slot at the head means nothing
/// was published at any later position either.
pub(crate) fn mpmc_idle<M: RingMem>(m: &M) -> bool {
    let cap = m.capacity();
    let mut pos = m.head().load(Ordering::Acquire);
    for _ in 0..MAX_RETRIES {
        let s = m.stamp(pos & (cap - 1)).load(Ordering::Acquire);
        match decode(s, pos, cap) {
            Some((0, State::Empty)) | None => return true,
            // Taken already (the head hint lags): look at the next position.
            Some((l, st)) if l > 0 || (l == 0 && matches!(st, State::Reading(_))) => pos = pos.wrapping_add(1),
            _ => return false,
        }
    }
    false
}

/// Recovers a stalled slot whose claimer the caller has proven dead: the slot
/// becomes empty for its next lap and the dead claimer's message is dropped.
/// Returns whether this call did it (false: the slot moved on meanwhile).
pub(crate) fn recover<M: RingMem>(m: &M, stall: &Stall) -> bool {
    let cap = m.capacity();
    if stall.slot >= cap || stall.pos & (cap - 1) != stall.slot {
        return false;
    }
    let next = stall.pos.wrapping_add(cap).wrapping_mul(2);
    m.stamp(stall.slot).compare_exchange(stall.stamp, next, Ordering::AcqRel, Ordering::Relaxed).is_ok()
}

/// Number of messages in the ring (clamped to `0..=capacity`).
pub(crate) fn len<M: RingMem>(m: &M) -> u64 {
    let head = m.head().load(Ordering::Acquire);
    let tail = m.tail().load(Ordering::Acquire);
    let n = tail.wrapping_sub(head);
    if n > m.capacity() {
        if (n as i64) < 0 {
            0
        } else {
            m.capacity()
        }
    } else {
        n
    }
}

/// SPSC push of up to `n` messages taken from `src` by `fill(i, dst_slot)`.
/// Publishes the tail once. Returns how many were pushed, or None if the
/// indices are corrupt.
pub(crate) fn spsc_push<M: RingMem>(m: &M, n: u64, mut fill: impl FnMut(u64, &M, u64)) -> Option<u64> {
    let cap = m.capacity();
    let tail = m.tail().load(Ordering::Relaxed);
    let mut head = m.head_cache().load(Ordering::Relaxed);
    let mut free = cap.wrapping_sub(tail.wrapping_sub(head));
    if free < n.min(cap) || free > cap {
        head = m.head().load(Ordering::Acquire);
        free = cap.wrapping_sub(tail.wrapping_sub(head));
        if free > cap {
            // Not cached: a head found corrupt must not be trusted later
            // (say, once the tail has moved to where it would look valid).
            return None;
        }
        m.head_cache().store(head, Ordering::Relaxed);
    }
    let k = n.min(free);
    for i in 0..k {
        fill(i, m, tail.wrapping_add(i) & (cap - 1));
    }
    if k > 0 {
        m.tail().store(tail.wrapping_add(k), Ordering::Release);
    }
    Some(k)
}

/// SPSC pop of up to `n` messages handed to `take(i, mem, slot)`. Publishes the
/// head once. Returns how many were popped, or None if the indices are corrupt.
pub(crate) fn spsc_pop<M: RingMem>(m: &M, n: u64, mut take: impl FnMut(u64, &M, u64)) -> Option<u64> {
    let cap = m.capacity();
    let head = m.head().load(Ordering::Relaxed);
    let mut tail = m.tail_cache().load(Ordering::Relaxed);
    let mut avail = tail.wrapping_sub(head);
    if avail < n.min(cap).max(1) || avail > cap {
        tail = m.tail().load(Ordering::Acquire);
        avail = tail.wrapping_sub(head);
        if avail > cap {
            // Not cached, as in `spsc_push`.
            return None;
        }
        m.tail_cache().store(tail, Ordering::Relaxed);
    }
    let k = n.min(avail);
    m.prefetch_published(head, avail);
    for i in 0..k {
        take(i, m, head.wrapping_add(i) & (cap - 1));
    }
    if k > 0 {
        m.head().store(head.wrapping_add(k), Ordering::Release);
    }
    Some(k)
}

/// A full fence (the sleeper handshake needs StoreLoad ordering).
///
/// On x86-64 a locked read-modify-write of a stack word is a full hardware
/// barrier and costs less than `mfence` (Linux's `smp_mb` does the same); the
/// compiler fences keep the compiler from moving memory accesses across it.
#[inline]
pub(crate) fn full_fence() {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        // SAFETY: `lock or` of zero into the word at the stack pointer changes
        // no memory value and touches only our own stack; it only clobbers flags.
        unsafe { std::arch::asm!("lock or dword ptr [rsp], 0", options(nostack)) };
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    fence(Ordering::SeqCst);
}

/// Asks the CPU to start loading the cache line at `p`: a slot a few lines
/// ahead of the one an SPSC endpoint is about to use, or (the pipe) the line
/// the next frame will arrive in, while polling the producer's index.
///
/// Why: a per-message `send`/`recv` runs some thirty instructions, so the
/// CPU's out-of-order window covers only one or two slot lines, and each
/// line's transfer from the other CPU (100+ ns across vCPUs) is paid almost
/// serially; a bare ring's five-instruction loop overlaps several. A
/// software prefetch of the line a few hundred bytes ahead restores that
/// overlap (the usual streaming-ring technique, e.g. in FastForward and
/// B-Queue's evaluations). Only the consumer prefetches, and only published
/// slots, so a prefetch never pulls a line the producer is still writing (a
/// producer-side prefetch of free slots measured slower here: the read
/// prefetch brings the line shared, and the store then needs a second
/// transfer). A prefetch never faults and changes no memory.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults (even on an unmapped
    // address) and has no architectural effect; callers pass an address in
    // their mapping (a slot, a ring position).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
pub(crate) mod twin {
    //! A heap twin of the ring memory, for unit tests and loom.

    use super::*;

    #[cfg(loom)]
    use loom::cell::UnsafeCell;
    #[cfg(not(loom))]
    use std::cell::UnsafeCell;

    pub(crate) struct HeapRing {
        pub(crate) cap: u64,
        pub(crate) tail: AtomicU64,
        pub(crate) head: AtomicU64,
        pub(crate) head_cache: AtomicU64,
        pub(crate) tail_cache: AtomicU64,
        pub(crate) stamps: Vec<AtomicU64>,
        pub(crate) slots: Vec<UnsafeCell<u64>>,
    }

    // SAFETY: slot cells are only touched by the owner of the slot's claim (the
    // algorithm under test); everything else is atomic.
    unsafe impl Sync for HeapRing {}
    // SAFETY: as above.
    unsafe impl Send for HeapRing {}

    impl HeapRing {
        pub(crate) fn new(cap: u64) -> HeapRing {
            HeapRing {
                cap,
                tail: AtomicU64::new(0),
                head: AtomicU64::new(0),
                head_cache: AtomicU64::new(0),
                tail_cache: AtomicU64::new(0),
                stamps: (0..cap).map(|i| AtomicU64::new(initial_stamp(i))).collect(),
                slots: (0..cap).map(|_| UnsafeCell::new(0)).collect(),
            }
        }
    }

    impl RingMem for HeapRing {
        type A = AtomicU64;
        fn capacity(&self) -> u64 {
            self.cap
        }
        fn tail(&self) -> &AtomicU64 {
            &self.tail
        }
        fn head(&self) -> &AtomicU64 {
            &self.head
        }
        fn head_cache(&self) -> &AtomicU64 {
            &self.head_cache
        }
        fn tail_cache(&self) -> &AtomicU64 {
            &self.tail_cache
        }
        fn stamp(&self, i: u64) -> &AtomicU64 {
            &self.stamps[i as usize]
        }
        unsafe fn write(&self, i: u64, src: &[u8]) {
            let mut b = [0u8; 8];
            b[..src.len()].copy_from_slice(src);
            let v = u64::from_le_bytes(b);
            #[cfg(loom)]
            // SAFETY: the caller owns the slot (see the trait contract).
            self.slots[i as usize].with_mut(|p| unsafe { *p = v });
            #[cfg(not(loom))]
            // SAFETY: the caller owns the slot (see the trait contract).
            unsafe {
                *self.slots[i as usize].get() = v
            };
        }
        unsafe fn read(&self, i: u64, dst: &mut [u8]) {
            #[cfg(loom)]
            // SAFETY: the caller owns the slot (see the trait contract).
            let v = self.slots[i as usize].with(|p| unsafe { *p });
            #[cfg(not(loom))]
            // SAFETY: the caller owns the slot (see the trait contract).
            let v = unsafe { *self.slots[i as usize].get() };
            let n = dst.len();
            dst.copy_from_slice(&v.to_le_bytes()[..n]);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::twin::HeapRing;
    use super::*;

    fn push(r: &HeapRing, pid: u32, v: u64) -> Step {
        // SAFETY: the ring calls us only for a slot we claimed.
        mpmc_push(r, pid, pid % 2 == 1, |m, slot| unsafe { m.write(slot, &v.to_le_bytes()) })
    }
    fn pop(r: &HeapRing, pid: u32) -> Result<u64, Step> {
        let mut b = [0u8; 8];
        // SAFETY: the ring calls us only for a slot we claimed.
        match mpmc_pop(r, pid, |m, slot| unsafe { m.read(slot, &mut b) }) {
            Step::Done => Ok(u64::from_le_bytes(b)),
            s => Err(s),
        }
    }

    #[test]
    fn decode_roundtrip() {
        let cap = 8;
        assert_eq!(decode(2 * 5, 5, cap), Some((0, State::Empty)));
        assert_eq!(decode(2 * 5 + 1, 5, cap), Some((0, State::Full)));
        assert_eq!(decode(2 * 13, 5, cap), Some((1, State::Empty)));
        assert_eq!(decode(2 * 13 + 1, 13, cap), Some((0, State::Full)));
        assert_eq!(decode(2 * 5 + 1, 13, cap), Some((-1, State::Full)));
        assert_eq!(decode(claim_stamp(false, 77, 5), 5, cap), Some((0, State::Writing(77))));
        assert_eq!(decode(claim_stamp(true, 77, 5), 13, cap), Some((-1, State::Reading(77))));
        assert_eq!(decode(2 * 6, 5, cap), None);
        assert_eq!(decode(claim_stamp(true, 1, 6), 5, cap), None);
    }

    /// The division-based decode the shifts replaced, as the reference.
    fn decode_by_division(s: u64, pos: u64, cap: u64) -> Option<(i64, State)> {
        let cap = cap as i64;
        if s & CLAIM != 0 {
            let d = (s as u32).wrapping_sub(pos as u32) as i32 as i64;
            let pid = ((s >> 32) & PID_MASK) as u32;
            let st = if s & READER != 0 { State::Reading(pid) } else { State::Writing(pid) };
            (d % cap == 0).then_some((d / cap, st))
        } else {
            let r = s.wrapping_sub(pos.wrapping_mul(2)) as i64;
            let full = r & 1;
            let dq = (r - full) / 2;
            (dq % cap == 0).then_some((dq / cap, if full == 1 { State::Full } else { State::Empty }))
        }
    }

    #[test]
    fn decode_by_shifts_agrees_with_division_on_any_stamp() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            // xorshift64*: deterministic, covers the whole word.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for cap in [1u64, 2, 8, 64, 4096, MAX_CAPACITY] {
            for _ in 0..20_000 {
                let pos = next();
                let lap = (next() % 7) as i64 - 3;
                // Honest stamps of nearby laps, claimed or not, and garbage.
                let near = pos.wrapping_add((lap * cap as i64) as u64);
                let pid = next() as u32;
                for s in [
                    near.wrapping_mul(2),
                    near.wrapping_mul(2).wrapping_add(1),
                    claim_stamp(false, pid, near),
                    claim_stamp(true, pid, near),
                    next(),
                    next() | CLAIM,
                    u64::MAX,
                    0,
                ] {
                    assert_eq!(decode(s, pos, cap), decode_by_division(s, pos, cap), "s {s:#x} pos {pos} cap {cap}");
                }
            }
        }
    }

    #[test]
    fn fifo_and_full_empty() {
        let r = HeapRing::new(4);
        assert_eq!(pop(&r, 1), Err(Step::WouldBlock));
        for i in 0..4 {
            assert_eq!(push(&r, 1, i), Step::Done);
        }
        assert_eq!(push(&r, 1, 9), Step::WouldBlock);
        assert_eq!(len(&r), 4);
        for round in 0..10u64 {
            assert_eq!(pop(&r, 2), Ok(round));
            assert_eq!(push(&r, 1, round + 4), Step::Done);
        }
    }

    #[test]
    fn idle_means_nothing_published_or_claimed_at_the_head() {
        let r = HeapRing::new(4);
        assert!(mpmc_idle(&r), "empty");
        assert_eq!(push(&r, 1, 10), Step::Done);
        assert!(!mpmc_idle(&r), "a message to take");
        assert_eq!(pop(&r, 2), Ok(10));
        assert!(mpmc_idle(&r));
        // A head hint one behind (a consumer died before advancing it).
        r.head.store(0, Ordering::Relaxed);
        assert!(mpmc_idle(&r), "a lagging head hint");
        r.head.store(1, Ordering::Relaxed);
        // A claim at the head holds back what is published after it.
        r.stamps[1].store(claim_stamp(false, 4242, 1), Ordering::Relaxed);
        r.tail.store(2, Ordering::Relaxed);
        assert_eq!(push(&r, 1, 11), Step::Done);
        assert!(!mpmc_idle(&r), "a send in progress");
        r.stamps[1].store(3, Ordering::Relaxed); // published: full for lap 1
        assert!(!mpmc_idle(&r));
        assert_eq!(pop(&r, 2), Ok(0));
        assert_eq!(pop(&r, 2), Ok(11));
        assert!(mpmc_idle(&r));
        // Garbage: nothing to wait for (the next pop reports it).
        r.stamps[3].store(u64::MAX >> 1, Ordering::Relaxed);
        assert!(mpmc_idle(&r));
    }

    #[test]
    fn dead_writer_is_skipped() {
        let r = HeapRing::new(4);
        // A producer claims slot 0 and dies before publishing.
        r.stamps[0].store(claim_stamp(false, 4242, 0), Ordering::Relaxed);
        r.tail.store(1, Ordering::Relaxed);
        assert_eq!(push(&r, 1, 10), Step::Done);
        let st = match pop(&r, 2) {
            Err(Step::Stalled(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.pid, 4242);
        assert!(recover(&r, &st));
        assert_eq!(pop(&r, 2), Ok(10));
        assert_eq!(pop(&r, 2), Err(Step::WouldBlock));
        // The recovered slot is reusable on the next lap.
        for i in 0..4 {
            assert_eq!(push(&r, 1, 100 + i), Step::Done, "{i}");
        }
        for i in 0..4 {
            assert_eq!(pop(&r, 2), Ok(100 + i));
        }
    }

    #[test]
    fn dead_reader_is_recovered_by_producer() {
        let r = HeapRing::new(2);
        assert_eq!(push(&r, 1, 1), Step::Done);
        assert_eq!(push(&r, 1, 2), Step::Done);
        // A consumer claims slot 0 and dies mid-read.
        r.stamps[0].store(claim_stamp(true, 4243, 0), Ordering::Relaxed);
        r.head.store(1, Ordering::Relaxed);
        let st = match push(&r, 1, 3) {
            Step::Stalled(s) => s,
            other => panic!("{other:?}"),
        };
        assert!(recover(&r, &st));
        assert_eq!(push(&r, 1, 3), Step::Done);
        assert_eq!(pop(&r, 2), Ok(2));
        assert_eq!(pop(&r, 2), Ok(3));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let r = HeapRing::new(8);
            for _ in 0..(rnd() % 6) {
                let v = rnd();
                match rnd() % 4 {
                    0 => r.head.store(v, Ordering::Relaxed),
                    1 => r.tail.store(v, Ordering::Relaxed),
                    _ => r.stamps[(v % 8) as usize].store(rnd(), Ordering::Relaxed),
                }
            }
            for _ in 0..20 {
                let _ = push(&r, 1, 5);
                let _ = pop(&r, 2);
                let _ = len(&r);
            }
        }
    }

    #[test]
    fn threads_exactly_once() {
        use std::sync::Arc;
        let r = Arc::new(HeapRing::new(16));
        let per = 20_000u64;
        let mut hs = Vec::new();
        for p in 0..2u64 {
            let r = r.clone();
            hs.push(std::thread::spawn(move || {
                for i in 0..per {
                    while push(&r, 1, (p << 32) | i) != Step::Done {
                        std::hint::spin_loop();
                    }
                }
                Vec::new()
            }));
        }
        for _ in 0..2 {
            let r = r.clone();
            hs.push(std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < per as usize {
                    if let Ok(v) = pop(&r, 2) {
                        got.push(v);
                    }
                }
                got
            }));
        }
        let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_unstable();
        let mut want: Vec<u64> = (0..2u64).flat_map(|p| (0..per).map(move |i| (p << 32) | i)).collect();
        want.sort_unstable();
        assert_eq!(all, want);
    }

    #[test]
    fn spsc_batches() {
        let r = HeapRing::new(8);
        // SAFETY: single producer, the ring hands us slots it owns.
        let n = spsc_push(&r, 5, |i, m, slot| unsafe { m.write(slot, &(i + 1).to_le_bytes()) }).unwrap();
        assert_eq!(n, 5);
        // SAFETY: as above.
        let n = spsc_push(&r, 5, |i, m, slot| unsafe { m.write(slot, &(i + 6).to_le_bytes()) }).unwrap();
        assert_eq!(n, 3);
        let mut got = Vec::new();
        let n = spsc_pop(&r, 100, |_, m, slot| {
            let mut b = [0u8; 8];
            // SAFETY: single consumer of published slots.
            unsafe { m.read(slot, &mut b) };
            got.push(u64::from_le_bytes(b));
        })
        .unwrap();
        assert_eq!(n, 8);
        assert_eq!(got, (1..=8).collect::<Vec<_>>());
        r.head.store(1000, Ordering::Relaxed);
        assert_eq!(spsc_pop(&r, 1, |_, _, _| {}), None);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::twin::HeapRing;
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn push(r: &HeapRing, pid: u32, v: u64) -> Step {
        // SAFETY: the ring calls us only for a slot we claimed.
        mpmc_push(r, pid, pid % 2 == 1, |m, slot| unsafe { m.write(slot, &v.to_le_bytes()) })
    }
    fn pop(r: &HeapRing, pid: u32) -> Option<u64> {
        let mut b = [0u8; 8];
        // SAFETY: the ring calls us only for a slot we claimed.
        (mpmc_pop(r, pid, |m, slot| unsafe { m.read(slot, &mut b) }) == Step::Done).then(|| u64::from_le_bytes(b))
    }

    #[test]
    fn loom_mpmc_two_producers_one_consumer() {
        loom::model(|| {
            let r = Arc::new(HeapRing::new(2));
            let hs: Vec<_> = (0..2u64)
                .map(|p| {
                    let r = r.clone();
                    thread::spawn(move || {
                        while push(&r, 1, 10 + p) != Step::Done {
                            thread::yield_now();
                        }
                    })
                })
                .collect();
            let mut got = Vec::new();
            while got.len() < 2 {
                match pop(&r, 2) {
                    Some(v) => got.push(v),
                    None => thread::yield_now(),
                }
            }
            for h in hs {
                h.join().unwrap();
            }
            got.sort_unstable();
            assert_eq!(got, vec![10, 11]);
        });
    }

    #[test]
    fn loom_mpmc_wraparound_two_consumers() {
        // The ring starts full (lap 0); two consumers race for the two messages
        // while the producer waits to reuse the first slot for lap 1.
        loom::model(|| {
            let r = Arc::new(HeapRing::new(2));
            assert_eq!(push(&r, 1, 1), Step::Done);
            assert_eq!(push(&r, 1, 2), Step::Done);
            let c: Vec<_> = (0..2)
                .map(|_| {
                    let r = r.clone();
                    thread::spawn(move || loop {
                        if let Some(v) = pop(&r, 2) {
                            return v;
                        }
                        thread::yield_now();
                    })
                })
                .collect();
            while push(&r, 1, 3) != Step::Done {
                thread::yield_now();
            }
            let mut got: Vec<u64> = c.into_iter().map(|h| h.join().unwrap()).collect();
            got.push(pop(&r, 3).expect("the third message is published"));
            got.sort_unstable();
            assert_eq!(got, vec![1, 2, 3]);
        });
    }

    #[test]
    fn loom_recovery_races_with_nothing_torn() {
        // A dead producer's claim on slot 0; a live producer pushes; a consumer
        // recovers the dead slot while racing the producer.
        loom::model(|| {
            let r = Arc::new(HeapRing::new(2));
            r.stamps[0].store(claim_stamp(false, 999, 0), Ordering::Relaxed);
            r.tail.store(1, Ordering::Relaxed);
            let p = {
                let r = r.clone();
                thread::spawn(move || {
                    while push(&r, 1, 7) != Step::Done {
                        thread::yield_now();
                    }
                })
            };
            let mut got = None;
            while got.is_none() {
                let mut b = [0u8; 8];
                // SAFETY: the ring calls us only for a slot we claimed.
                match mpmc_pop(&*r, 2, |m, slot| unsafe { m.read(slot, &mut b) }) {
                    Step::Done => got = Some(u64::from_le_bytes(b)),
                    // Only the dead claimer's slot may be recovered; the live
                    // producer's claim in progress is waited for.
                    Step::Stalled(s) if s.pid == 999 => {
                        recover(&*r, &s);
                    }
                    Step::Stalled(s) => {
                        assert_eq!(s.pid, 1);
                        thread::yield_now();
                    }
                    _ => thread::yield_now(),
                }
            }
            p.join().unwrap();
            assert_eq!(got, Some(7));
        });
    }

    #[test]
    fn loom_spsc() {
        loom::model(|| {
            let r = Arc::new(HeapRing::new(2));
            let p = {
                let r = r.clone();
                thread::spawn(move || {
                    let mut sent = 0u64;
                    while sent < 3 {
                        // SAFETY: single producer owns the slot it fills.
                        let k = spsc_push(&*r, 3 - sent, |i, m, slot| unsafe {
                            m.write(slot, &(sent + i + 1).to_le_bytes())
                        })
                        .unwrap();
                        sent += k;
                        if k == 0 {
                            thread::yield_now();
                        }
                    }
                })
            };
            let mut got = Vec::new();
            while got.len() < 3 {
                let k = spsc_pop(&*r, 3, |_, m, slot| {
                    let mut b = [0u8; 8];
                    // SAFETY: single consumer owns published slots.
                    unsafe { m.read(slot, &mut b) };
                    got.push(u64::from_le_bytes(b));
                })
                .unwrap();
                if k == 0 {
                    thread::yield_now();
                }
            }
            p.join().unwrap();
            assert_eq!(got, vec![1, 2, 3]);
        });
    }
}
