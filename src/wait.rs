//! The waiting layer: how every blocking operation of shmproc waits.
//!
//! ## Algorithm: spin, announce, re-check, sleep in slices
//!
//! Waking a process that sleeps on another CPU costs ~30 us one way on the
//! machines we measured, while two processes polling shared memory hand a
//! message over in ~130 ns (see `PERF.md`). So a waiter:
//!
//! 1. **spins** for a bounded budget, polling its condition ([`Backoff`] for
//!    the lock word, [`spin_until`] for the semaphore and the event, a
//!    clock-bounded [`Spinner`] for the queue and the pipe);
//! 2. **announces** itself as a sleeper on a futex word (a sleeper count next
//!    to a sequence word: [`Announce`]; or a sleeper flag: [`Flag`]);
//! 3. **re-checks** its condition after a `SeqCst` fence (Dekker's pattern: the
//!    waker stores its publication, fences, then loads the sleeper word; the
//!    sleeper stores its announcement, fences, then loads the publication; one
//!    of the two sees the other, so no wake-up is lost);
//! 4. **sleeps** on the futex until `min(deadline, slice)` ([`sleep`]), and,
//!    between slices, runs its caller's check (is the lock owner, the queue's
//!    peer, the pipe's peer still alive; is a queue slot stalled).
//!
//! Every step goes through [`Platform`] (futex wait/wake, "who am I", "is that
//! thread alive"), so the algorithms run on [`Kernel`] (real shared futexes)
//! and, under `--cfg loom`, on a model of the futex that lets loom explore
//! every interleaving of the handshakes on heap twins of the shared words
//! (`src/sync/loom_tests.rs`, `ci/loom.sh`).
//!
//! [`Waiter`] runs that loop for the queue (`Engine::wait`), the pipe
//! (`Connection::block_on`) and `pipe::wait`: the caller gives a [`SpinPlan`],
//! a [`Sleeper`] (the counted handshake, or sleeper flags) and a slice, and
//! one closure that is called at each [`Phase`] (poll the condition, between
//! spin batches, just announced, before sleeping, after a sleep) and ends the
//! wait with [`Next::Done`]. The lock word's contended path
//! (`sync::raw_mutex`) keeps its own loop, a state machine on the word, but
//! waits with [`Backoff`], [`sleep`] and the [`Platform`] liveness check; the
//! semaphore, the event, the condition variable and the barrier sleep on
//! their word through [`Platform`], in [`PEER_SLICE`] slices after which
//! they look again (for a wake-up lost to a killed waiter, owned permits of
//! dead holders, a segment truncated under them).
//!
//! ## The constants, in one place
//!
//! Measured figures are from `PERF.md` (2-vCPU KVM guests): a sleeping
//! process on another CPU is woken in ~30 us one way, a polled shared-memory
//! hand-over takes ~130 ns one way, a `FUTEX_WAKE` with no waiter ~130 ns.
//! Values marked "as first written" were chosen with their primitive and not
//! measured one by one; they are kept unchanged.
//!
//! | constant | value | used by | why |
//! |---|---|---|---|
//! | [`MUTEX_SLICE`] | 20 ms | lock waiters | how soon a dead owner's lock is taken over; as first written, kept apart from `PEER_SLICE` so neither the takeover latency nor the queue/pipe wake-up rate changes |
//! | [`PEER_SLICE`] | 50 ms | queue, pipe, `pipe::wait`, semaphore, event, condition, barrier | how soon a dead peer is noticed by a sleeper; each check may read `/proc` (microseconds), so it stays rare; as first written |
//! | [`STALL_SLICE`] | 2 ms | queue | a slot claimed by a dead process blocks everyone behind it, so it is looked at sooner; also the slice when `membarrier` is refused, so a missed wake-up costs ~2 ms |
//! | [`JOIN_SLICE`] | 100 ms | `JoinableQueue::join` | only guards against a wake-up lost to a peer that died in `task_done` |
//! | [`WAITV_FALLBACK_SLICE`] | 1 ms | `pipe::wait` without `futex_waitv` | it sleeps on the first word only and polls the others between slices |
//! | [`QUEUE_DEEP_EVERY`] | 50 ms | queue | least time between two `/proc` scans of the participant table per handle, so hand-overs never pay for them |
//! | [`PIPE_LIVENESS_EVERY`] | 20 ms | pipe | least time between two `/proc` reads of the peer's end slot per connection |
//! | [`QUEUE_SPIN`] | 20 us | queue (adaptive) | below the ~30 us one-way wake cost (and ~150 polled one-way hand-overs): a reply that comes sooner is caught without a sleep |
//! | [`PIPE_SPIN`] | 5 us | pipe (`pipe::DEFAULT_SPIN`) | as first written; below the ~30 us wake cost |
//! | [`MUTEX_BACKOFF_STEPS`] / [`MUTEX_BACKOFF_MAX_SHIFT`] | 16 / 8 | lock waiters | ~2,300 pauses, ~20 us (a pause measured 8.9 ns), below the ~30 us wake cost; backing off instead of polling moved `lock-incr` from 9-12 M/s to 38-42 M/s |
//! | [`SEMAPHORE_SPINS`] / [`EVENT_SPINS`] | 64 / 200 | semaphore, event | polls with a pause each, a few us at most; as first written |
//! | [`QUEUE_POLL_BATCH`] / [`PIPE_POLL_BATCH`] / [`PIPE_WAIT_POLL_BATCH`] | 32 / 64 / 16 | timed spins | polls between two clock reads, so the clock is read rarely; as first written. A [`Waiter`] first reads the clock after its first batch |
//! | [`QUEUE_PRE_POLLS`] / [`PRE_POLL_MIN_TIMEOUT`] | 16 / 50 us | MPMC queue receive | polls before the deadline is taken at all, skipped for timeouts under 50 us (and for SPSC queues, whose receivers slip first); with the first batch above and a leaner send and receive, the MPMC ping-pong moved from 2.0x to about 1.7x raw-spin at the close placement (AMD guest) |
//!
//! ## What still spins on its own
//!
//! * `RawMutex::try_lock` retries its CAS at most 64 times while the word
//!   keeps changing (a bounded retry, not a wait).
//! * The queue's process-local SPSC `Busy` flag (`queue::raw`): threads of one
//!   process sharing a handle spin while a sibling finishes one ring operation
//!   (nanoseconds; there is nothing to sleep on, and the hot path must stay
//!   free of system calls).
//! * Unit tests spin on their own heap twins.

use std::time::Duration;

use crate::peer::Identity;
use crate::time::Deadline;

/// Atomics used by the shared-state algorithms: std's normally, loom's under `--cfg loom`.
pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};
}

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/// Slice between liveness checks of a lock owner.
pub(crate) const MUTEX_SLICE: Duration = Duration::from_millis(20);
/// Longest a queue or pipe sleeper sleeps before it re-checks its peers.
pub(crate) const PEER_SLICE: Duration = Duration::from_millis(50);
/// How long a stalled queue slot (claimed, not published) may last before its
/// claimer's liveness is checked, and the sleep slice while one is seen (or
/// while asymmetric barriers are unavailable, so a missed wake-up costs ~2 ms).
pub(crate) const STALL_SLICE: Duration = Duration::from_millis(2);
/// Sleep slice of `JoinableQueue::join`.
pub(crate) const JOIN_SLICE: Duration = Duration::from_millis(100);
/// Sleep slice of `pipe::wait` when it can sleep on one word only.
pub(crate) const WAITV_FALLBACK_SLICE: Duration = Duration::from_millis(1);
/// Least time between two deep (liveness) scans of a queue's participants.
pub(crate) const QUEUE_DEEP_EVERY: Duration = PEER_SLICE;
/// Least time between two liveness checks of a pipe's peer.
pub(crate) const PIPE_LIVENESS_EVERY: Duration = Duration::from_millis(20);
/// Default adaptive spin budget of a queue handle.
pub(crate) const QUEUE_SPIN: Duration = Duration::from_micros(20);
/// Default spin budget of a pipe end.
pub(crate) const PIPE_SPIN: Duration = Duration::from_micros(5);
/// Lock back-off steps before sleeping (see [`Backoff`]).
pub(crate) const MUTEX_BACKOFF_STEPS: u32 = if cfg!(loom) { 1 } else { 16 };
/// Longest lock back-off step: 2^8 = 256 pause instructions.
pub(crate) const MUTEX_BACKOFF_MAX_SHIFT: u32 = 8;
/// Polls of the semaphore's count before sleeping.
pub(crate) const SEMAPHORE_SPINS: u32 = if cfg!(loom) { 1 } else { 64 };
/// Polls of the event's flag before sleeping.
pub(crate) const EVENT_SPINS: u32 = if cfg!(loom) { 1 } else { 200 };
/// Queue polls between two clock reads while spinning.
pub(crate) const QUEUE_POLL_BATCH: u32 = 32;
/// Polls a queue receive makes before it reads the clock at all (for its
/// deadline and spin budget): a ping-pong reply lands within a few, and the
/// two clock reads (about 24 ns each on the AMD guest) sat on the hand-over.
pub(crate) const QUEUE_PRE_POLLS: u32 = 16;
/// Receives with a shorter timeout skip those polls, which would stretch
/// their wait by up to [`QUEUE_PRE_POLLS`] pauses (under 1 us on the hosts
/// we measure on; 50 us keeps that under 2%).
pub(crate) const PRE_POLL_MIN_TIMEOUT: Duration = Duration::from_micros(50);
/// Pipe polls between two clock reads while spinning.
pub(crate) const PIPE_POLL_BATCH: u32 = 64;
/// `pipe::wait` polls (of every connection) between two clock reads.
pub(crate) const PIPE_WAIT_POLL_BATCH: u32 = 16;

// ---------------------------------------------------------------------------
// The platform
// ---------------------------------------------------------------------------

/// How a platform wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Woken, spuriously or not, or the word had changed: re-check.
    Woken,
    /// The given deadline passed.
    TimedOut,
}

/// The operations the waiting algorithms need from the outside world, on
/// futex words of type `W` (std's `AtomicU32` in shared memory, loom's in the
/// models).
pub(crate) trait Platform<W = atomic::AtomicU32> {
    /// Sleeps while `*word == expected`, until woken or `deadline`.
    fn wait(&self, word: &W, expected: u32, deadline: Deadline) -> Wait;
    /// Sleeps while every `*words[i] == expected`, until one is woken or
    /// `deadline`. `None`: the platform cannot wait on several words at once
    /// (or not on that many); the caller falls back to single-word waits.
    fn wait_any(&self, _words: &[&W], _expected: u32, _deadline: Deadline) -> Option<Wait> {
        None
    }
    /// Wakes up to `n` waiters on `word`.
    fn wake(&self, word: &W, n: u32);
    /// The calling thread's identity (its tid must be non-zero and < 2^30).
    fn me(&self) -> Identity;
    /// Whether `who` still runs (`false` only when it is proven dead).
    fn alive(&self, who: Identity) -> bool;
    /// Whether `tid` is a live thread of this process (whatever any record
    /// says about its start time). The default: unknown, `false`.
    fn own_live_thread(&self, _tid: u32) -> bool {
        false
    }
    /// How long a lock waiter sleeps before it re-checks the owner's liveness
    /// (`None`: sleep until woken).
    fn liveness_slice(&self) -> Option<Duration>;
}

/// The real platform: shared futexes on std atomics and `/proc` liveness.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kernel;

impl Platform<std::sync::atomic::AtomicU32> for Kernel {
    #[inline]
    fn wait(&self, word: &std::sync::atomic::AtomicU32, expected: u32, deadline: Deadline) -> Wait {
        match crate::sys::futex_wait(word, expected, deadline.at()) {
            crate::sys::WaitOutcome::Woken => Wait::Woken,
            crate::sys::WaitOutcome::TimedOut => Wait::TimedOut,
        }
    }
    fn wait_any(&self, words: &[&std::sync::atomic::AtomicU32], expected: u32, deadline: Deadline) -> Option<Wait> {
        crate::sys::futex_waitv(words, expected, deadline.at()).map(|o| match o {
            crate::sys::WaitOutcome::Woken => Wait::Woken,
            crate::sys::WaitOutcome::TimedOut => Wait::TimedOut,
        })
    }
    #[inline]
    fn wake(&self, word: &std::sync::atomic::AtomicU32, n: u32) {
        crate::sys::futex_wake(word, n);
    }
    #[inline]
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, who: Identity) -> bool {
        crate::peer::alive(who)
    }
    fn own_live_thread(&self, tid: u32) -> bool {
        crate::sys::own_live_thread(tid)
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(MUTEX_SLICE)
    }
}

/// The platform of the sync primitives' public paths: [`Kernel`] normally.
#[cfg(not(loom))]
pub(crate) use Kernel as Os;

/// Under loom the real futex cannot be used on loom's atomics; the crate still
/// has to compile, so `Os` degrades to yielding. Only the loom tests run under loom.
#[cfg(loom)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Os;

#[cfg(loom)]
impl Platform for Os {
    fn wait(&self, _word: &atomic::AtomicU32, _expected: u32, _deadline: Deadline) -> Wait {
        loom::thread::yield_now();
        Wait::Woken
    }
    fn wake(&self, _word: &atomic::AtomicU32, _n: u32) {}
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, who: Identity) -> bool {
        crate::peer::alive(who)
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(MUTEX_SLICE)
    }
}

/// A platform whose futex wait never reports a timeout: every wait returns
/// `Woken` at once, as a real wait does when the word keeps changing under it
/// (`EAGAIN`), when signals keep arriving (`EINTR`), or when a peer keeps
/// issuing `FUTEX_WAKE`. The algorithms must still honour their deadline.
/// Safety net so a regression fails instead of hanging: after two seconds it
/// records the overshoot and reports `TimedOut`.
#[cfg(all(test, not(loom)))]
pub(crate) struct NeverTimesOut {
    start: std::time::Instant,
    overshot: std::sync::atomic::AtomicBool,
    /// Every owner other than the caller is dead.
    owners_dead: bool,
}

#[cfg(all(test, not(loom)))]
impl NeverTimesOut {
    pub(crate) fn new() -> Self {
        NeverTimesOut {
            start: std::time::Instant::now(),
            overshot: std::sync::atomic::AtomicBool::new(false),
            owners_dead: false,
        }
    }
    /// The same, where every other owner is dead.
    pub(crate) fn with_dead_owners() -> Self {
        NeverTimesOut { owners_dead: true, ..NeverTimesOut::new() }
    }
    /// Whether a caller kept waiting far past its (short) deadline.
    pub(crate) fn overshot(&self) -> bool {
        self.overshot.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
impl Platform for NeverTimesOut {
    fn wait(&self, _word: &atomic::AtomicU32, _expected: u32, _deadline: Deadline) -> Wait {
        if self.start.elapsed() > Duration::from_secs(2) {
            self.overshot.store(true, std::sync::atomic::Ordering::Relaxed);
            return Wait::TimedOut;
        }
        std::thread::yield_now();
        Wait::Woken
    }
    fn wake(&self, _word: &atomic::AtomicU32, _n: u32) {}
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, _who: Identity) -> bool {
        !self.owners_dead
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(MUTEX_SLICE)
    }
}

// ---------------------------------------------------------------------------
// Futex words, std or loom
// ---------------------------------------------------------------------------

/// A 32-bit futex word: std's `AtomicU32`, or loom's in the models.
pub(crate) trait SleepWord {
    fn load(&self, o: std::sync::atomic::Ordering) -> u32;
    fn store(&self, v: u32, o: std::sync::atomic::Ordering);
    fn fetch_add(&self, v: u32, o: std::sync::atomic::Ordering) -> u32;
    fn fetch_sub(&self, v: u32, o: std::sync::atomic::Ordering) -> u32;
    /// A `SeqCst` fence of the same memory model as the word.
    fn fence();
}

impl SleepWord for std::sync::atomic::AtomicU32 {
    #[inline]
    fn load(&self, o: std::sync::atomic::Ordering) -> u32 {
        std::sync::atomic::AtomicU32::load(self, o)
    }
    #[inline]
    fn store(&self, v: u32, o: std::sync::atomic::Ordering) {
        std::sync::atomic::AtomicU32::store(self, v, o)
    }
    #[inline]
    fn fetch_add(&self, v: u32, o: std::sync::atomic::Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_add(self, v, o)
    }
    #[inline]
    fn fetch_sub(&self, v: u32, o: std::sync::atomic::Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_sub(self, v, o)
    }
    #[inline]
    fn fence() {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(loom)]
impl SleepWord for loom::sync::atomic::AtomicU32 {
    fn load(&self, o: std::sync::atomic::Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::load(self, o)
    }
    fn store(&self, v: u32, o: std::sync::atomic::Ordering) {
        loom::sync::atomic::AtomicU32::store(self, v, o)
    }
    fn fetch_add(&self, v: u32, o: std::sync::atomic::Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::fetch_add(self, v, o)
    }
    fn fetch_sub(&self, v: u32, o: std::sync::atomic::Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::fetch_sub(self, v, o)
    }
    fn fence() {
        loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// A `SeqCst` fence under loom only.
///
/// The sleeper/waker handshakes ("store mine, then load yours" on two words,
/// both `SeqCst`) are correct in the C++20 memory model, which puts all
/// `SeqCst` operations in one total order. loom treats `SeqCst` accesses as
/// `AcqRel` and would report those handshakes as lost wake-ups; a `SeqCst`
/// fence, which loom does model, restores the intended semantics there. On
/// real hardware (x86: the locked RMW is already a full barrier) it is not
/// needed and costs an `mfence`, so it is compiled out.
#[inline(always)]
pub(crate) fn loom_sc_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// Spinning
// ---------------------------------------------------------------------------

/// Bounded busy-wait before sleeping: `f` returns true when it is worth stopping.
#[inline]
pub(crate) fn spin_until(mut f: impl FnMut() -> bool, spins: u32) -> bool {
    for _ in 0..spins {
        if f() {
            return true;
        }
        std::hint::spin_loop();
    }
    f()
}

/// Exponential back-off of a lock waiter: step `k` spins
/// `2^min(k, MUTEX_BACKOFF_MAX_SHIFT)` pause instructions, for
/// [`MUTEX_BACKOFF_STEPS`] steps.
///
/// Polling the lock's cache line steals it from the owner, so a waiter that
/// keeps reading it slows every lock/unlock the owner does. Backing off lets
/// the owner run a burst of critical sections with the line local (measured:
/// `lock-incr` between two CPUs went from 9-12 M/s to 38-42 M/s).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// A fresh back-off.
    #[inline]
    pub(crate) fn new() -> Backoff {
        Backoff { step: 0 }
    }

    /// Spins one step; false (without spinning) once the budget is spent.
    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        if self.step >= MUTEX_BACKOFF_STEPS {
            return false;
        }
        for _ in 0..(1u32 << self.step.min(MUTEX_BACKOFF_MAX_SHIFT)) {
            std::hint::spin_loop();
        }
        self.step += 1;
        true
    }
}

/// What a [`Spinner`] tick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Keep polling; `now` is the clock just read.
    Go(Duration),
    /// The spin budget is spent.
    BudgetSpent,
    /// The caller's deadline passed.
    Expired,
}

/// A clock-bounded spin: the caller polls in batches (one clock read per
/// batch) and asks [`Spinner::tick`] whether to go on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spinner {
    started: Duration,
    end: Option<Duration>,
    deadline: Option<Duration>,
}

impl Spinner {
    /// Starts a spin of `budget` (`None`: until the deadline) that never
    /// outlasts `deadline`. Reads the clock once.
    #[inline]
    pub(crate) fn start(budget: Option<Duration>, deadline: Deadline) -> Spinner {
        let start = crate::sys::monotonic_now();
        Spinner { started: start, end: budget.map(|b| start.saturating_add(b)), deadline: deadline.at() }
    }

    /// Pauses `batch` times, calling `poll` after each pause; stops early
    /// with its value. `None`: nothing was ready.
    #[inline]
    pub(crate) fn poll_batch<T>(batch: u32, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
        for _ in 0..batch {
            std::hint::spin_loop();
            if let Some(t) = poll() {
                return Some(t);
            }
        }
        None
    }

    /// After a batch of polls: reads the clock; the deadline is checked
    /// before the budget.
    #[inline]
    pub(crate) fn tick(&self) -> Tick {
        self.judge(crate::sys::monotonic_now())
    }

    /// [`tick`](Self::tick) at the instant [`start`](Self::start) read, with
    /// no second clock read: a zero budget is spent, a passed deadline is
    /// expired.
    #[inline]
    pub(crate) fn first_tick(&self) -> Tick {
        self.judge(self.started)
    }

    #[inline]
    fn judge(&self, now: Duration) -> Tick {
        if self.deadline.is_some_and(|d| now >= d) {
            Tick::Expired
        } else if self.end.is_some_and(|e| now >= e) {
            Tick::BudgetSpent
        } else {
            Tick::Go(now)
        }
    }
}

// ---------------------------------------------------------------------------
// Announcing a sleeper, waking one
// ---------------------------------------------------------------------------

/// Sleeps on `word` while it holds `expected`, for at most one `slice`, never
/// past `deadline`.
#[inline]
pub(crate) fn sleep<W, P: Platform<W>>(p: &P, word: &W, expected: u32, deadline: Deadline, slice: Duration) -> Wait {
    p.wait(word, expected, deadline.min_after(slice))
}

/// The counted handshake (queue sides, `JoinableQueue::join`): a sequence
/// word the waker bumps, and a count of sleepers it reads first.
///
/// Sleeper: [`Announce::enter`] (read the sequence, count itself in, fence),
/// re-check the condition, [`sleep`] on `word` with the sequence read, then
/// [`Announce::leave`]. Waker: publish, fence, [`wake_counted`].
pub(crate) struct Announce<'a, W: SleepWord> {
    word: &'a W,
    sleepers: &'a W,
}

impl<'a, W: SleepWord> Announce<'a, W> {
    /// The handshake on `word` (the futex) and `sleepers` (the count).
    #[inline]
    pub(crate) fn new(word: &'a W, sleepers: &'a W) -> Self {
        Announce { word, sleepers }
    }

    /// Counts the caller in as a sleeper; returns the sequence value to sleep on.
    pub(crate) fn enter(&self) -> u32 {
        let seq = self.word.load(std::sync::atomic::Ordering::Acquire);
        self.sleepers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        W::fence();
        seq
    }

    /// Counts the caller out again.
    pub(crate) fn leave(&self) {
        self.sleepers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The waker's side of [`Announce`], after its publication and a StoreLoad
/// fence: wakes sleepers (one, or `all`) only if some are counted, so the hot
/// path makes no system call.
#[inline]
pub(crate) fn wake_counted<W: SleepWord, P: Platform<W>>(p: &P, word: &W, sleepers: &W, all: bool) {
    if sleepers.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        wake_counted_slow(p, word, all);
    }
}

#[cold]
fn wake_counted_slow<W: SleepWord, P: Platform<W>>(p: &P, word: &W, all: bool) {
    word.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    p.wake(word, if all { i32::MAX as u32 } else { 1 });
}

/// Bumps `word` and wakes every sleeper on it, counted or not.
pub(crate) fn wake_all_bump<W: SleepWord, P: Platform<W>>(p: &P, word: &W) {
    word.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    p.wake(word, i32::MAX as u32);
}

/// The flag handshake (pipe): the sleeper raises a flag word and sleeps on it
/// while it reads 1; the waker, after publishing, fences and, if the flag is
/// raised, lowers it and wakes every sleeper.
pub(crate) struct Flag;

impl Flag {
    /// Raises the sleeper flags `words`, then fences: either the caller's
    /// re-check sees the peer's publication, or the peer sees a flag.
    pub(crate) fn raise<W: SleepWord>(words: &[&W]) {
        words.iter().for_each(|w| w.store(1, std::sync::atomic::Ordering::Relaxed));
        W::fence();
    }

    /// Lowers the sleeper flags again (the caller stops waiting).
    pub(crate) fn lower<W: SleepWord>(words: &[&W]) {
        words.iter().for_each(|w| w.store(0, std::sync::atomic::Ordering::Relaxed));
    }

    /// The waker's side, after its publication: fence, and wake the sleeper
    /// if its flag is raised.
    #[inline]
    pub(crate) fn wake<W: SleepWord, P: Platform<W>>(p: &P, word: &W) {
        W::fence();
        if word.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            Self::wake_now(p, word);
        }
    }

    /// Lowers the flag and wakes every sleeper on it, raised or not (a close).
    #[cold]
    pub(crate) fn wake_now<W: SleepWord, P: Platform<W>>(p: &P, word: &W) {
        word.store(0, std::sync::atomic::Ordering::Relaxed);
        p.wake(word, i32::MAX as u32);
    }
}

// ---------------------------------------------------------------------------
// The waiting loop
// ---------------------------------------------------------------------------

/// How a [`Waiter`] announces itself and sleeps.
pub(crate) enum Sleeper<'a, W: SleepWord> {
    /// The counted handshake ([`Announce`]): sleep on the sequence word.
    Counted(Announce<'a, W>),
    /// The flag handshake ([`Flag`]) on one or more flags: sleep until one of
    /// them is woken (`wait_any` for several; a plain sleep for none).
    Flags(&'a [&'a W]),
}

impl<W: SleepWord> Sleeper<'_, W> {
    fn announce(&self) -> u32 {
        match self {
            Sleeper::Counted(a) => a.enter(),
            Sleeper::Flags(ws) => {
                Flag::raise(ws);
                1
            }
        }
    }

    /// Stops waiting (the caller returns).
    fn retract(&self) {
        match self {
            Sleeper::Counted(a) => a.leave(),
            Sleeper::Flags(ws) => Flag::lower(ws),
        }
    }

    /// Sleeps one slice; a counted sleeper counts itself out afterwards (a
    /// raised flag stays raised: the waker lowers it).
    fn sleep<P: Platform<W>>(&self, p: &P, expected: u32, deadline: Deadline, slice: Duration) -> Wait {
        match self {
            Sleeper::Counted(a) => {
                let r = sleep(p, a.word, expected, deadline, slice);
                a.leave();
                r
            }
            Sleeper::Flags([]) => {
                let until = deadline.min_after(slice);
                std::thread::sleep(until.remaining().unwrap_or(slice));
                Wait::TimedOut
            }
            Sleeper::Flags([w]) => sleep(p, *w, expected, deadline, slice),
            Sleeper::Flags(ws) => match p.wait_any(ws, expected, deadline.min_after(slice)) {
                Some(r) => r,
                // No multi-word wait (or too many words): sleep on the first
                // word in short slices; the caller polls the rest.
                None => sleep(p, ws[0], expected, deadline, WAITV_FALLBACK_SLICE),
            },
        }
    }
}

/// The spin phase of a [`Waiter`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpinPlan {
    /// How long to spin; `None`: until the deadline (busy polling).
    pub(crate) budget: Option<Duration>,
    /// Polls between two clock reads.
    pub(crate) batch: u32,
    /// Whether the deadline passing while spinning ends the wait at once
    /// (`true`), or only after one announced re-check and caller check.
    pub(crate) expiry_ends_wait: bool,
}

/// Where a [`Waiter`] is when it calls its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Look at the condition (while spinning, and after announcing).
    Poll,
    /// Between two spin batches; the clock just read (housekeeping).
    Spinning(Duration),
    /// Just announced, before the re-check (an extra barrier, if any).
    Announced,
    /// Announced, the re-check failed: the caller's check before sleeping
    /// (is the peer still there?). `slice_ended`: the last sleep timed out.
    BeforeSleep {
        /// The previous sleep ended with its slice (not woken).
        slice_ended: bool,
    },
    /// After one sleep (woken, or the slice ended).
    Slept,
}

/// What the caller tells a [`Waiter`].
#[derive(Debug)]
pub(crate) enum Next<T> {
    /// Stop waiting with this result.
    Done(T),
    /// Go on.
    Wait,
    /// Go on, sleeping at most this slice next (only read at `BeforeSleep`).
    Slice(Duration),
}

/// The deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired;

/// One blocking wait: spin (optionally), then announce, re-check, run the
/// caller's check, and sleep until `min(deadline, slice)`, in a loop.
pub(crate) struct Waiter<'a, W: SleepWord> {
    /// When to give up.
    pub(crate) deadline: Deadline,
    /// The spin phase, if any.
    pub(crate) spin: Option<SpinPlan>,
    /// How to announce and sleep.
    pub(crate) sleeper: Sleeper<'a, W>,
    /// The sleep slice unless the caller picks another.
    pub(crate) slice: Duration,
}

impl<W: SleepWord> Waiter<'_, W> {
    /// Runs the wait; `f` is called at each [`Phase`] and ends it with
    /// [`Next::Done`]. The caller has already made its first attempt.
    pub(crate) fn run<P: Platform<W>, T>(&self, p: &P, mut f: impl FnMut(Phase) -> Next<T>) -> Result<T, Expired> {
        if let Some(plan) = self.spin {
            // The clock is first read after the first batch, not before it:
            // a hand-over about to land (a ping-pong reply) is seen without
            // the clock's cost. The spin budget counts from that read.
            let mut spin: Option<Spinner> = None;
            loop {
                let hit = Spinner::poll_batch(plan.batch, || match f(Phase::Poll) {
                    Next::Done(t) => Some(t),
                    _ => None,
                });
                if let Some(t) = hit {
                    return Ok(t);
                }
                let tick = match spin {
                    Some(s) => s.tick(),
                    None => {
                        let s = Spinner::start(plan.budget, self.deadline);
                        spin = Some(s);
                        s.first_tick()
                    }
                };
                match tick {
                    Tick::Go(now) => {
                        if let Next::Done(t) = f(Phase::Spinning(now)) {
                            return Ok(t);
                        }
                    }
                    Tick::BudgetSpent => break,
                    Tick::Expired if plan.expiry_ends_wait => return Err(Expired),
                    Tick::Expired => break,
                }
            }
        }
        let mut slice_ended = false;
        loop {
            let expected = self.sleeper.announce();
            let mut slice = self.slice;
            for phase in [Phase::Announced, Phase::Poll, Phase::BeforeSleep { slice_ended }] {
                match f(phase) {
                    Next::Done(t) => {
                        self.sleeper.retract();
                        return Ok(t);
                    }
                    Next::Slice(s) => slice = s,
                    Next::Wait => {}
                }
            }
            if self.deadline.expired() {
                self.sleeper.retract();
                return Err(Expired);
            }
            slice_ended = self.sleeper.sleep(p, expected, self.deadline, slice) == Wait::TimedOut;
            if let Next::Done(t) = f(Phase::Slept) {
                return Ok(t);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn backoff_spends_its_budget_then_stops() {
        let mut b = Backoff::new();
        let steps = std::iter::from_fn(|| b.spin().then_some(())).take(1000).count();
        assert_eq!(steps as u32, MUTEX_BACKOFF_STEPS);
        assert!(!b.spin());
    }

    #[test]
    fn spinner_reports_budget_and_deadline() {
        let s = Spinner::start(Some(Duration::ZERO), Deadline::NEVER);
        assert_eq!(s.tick(), Tick::BudgetSpent);
        let s = Spinner::start(None, Deadline::after(Some(Duration::ZERO)));
        assert_eq!(s.tick(), Tick::Expired);
        let s = Spinner::start(None, Deadline::NEVER);
        assert!(matches!(s.tick(), Tick::Go(_)));
        // The first tick judges the instant `start` read, with no clock read.
        assert_eq!(Spinner::start(Some(Duration::ZERO), Deadline::NEVER).first_tick(), Tick::BudgetSpent);
        assert_eq!(Spinner::start(None, Deadline::after(Some(Duration::ZERO))).first_tick(), Tick::Expired);
        let s = Spinner::start(Some(Duration::from_secs(60)), Deadline::after(Some(Duration::from_secs(60))));
        assert_eq!(s.first_tick(), Tick::Go(s.started));
    }

    #[test]
    fn a_waiter_polls_one_batch_before_a_zero_budget_or_a_passed_deadline_ends_its_spin() {
        let word = AtomicU32::new(0);
        let sleepers = AtomicU32::new(0);
        for (budget, timeout) in [(Some(Duration::ZERO), Duration::from_millis(1)), (None, Duration::ZERO)] {
            let w = Waiter {
                deadline: Deadline::after(Some(timeout)),
                spin: Some(SpinPlan { budget, batch: 32, expiry_ends_wait: true }),
                sleeper: Sleeper::Counted(Announce::new(&word, &sleepers)),
                slice: Duration::from_millis(1),
            };
            let mut polls = 0;
            let _ = w.run(&Kernel, |phase| match phase {
                Phase::Poll => {
                    polls += 1;
                    Next::Wait
                }
                // The spin is over: stop before any sleep.
                Phase::Announced => Next::Done(()),
                _ => Next::Wait,
            });
            // One batch of 32 polls, then the clock's first read ends the spin.
            assert_eq!(polls, 32, "budget {budget:?}, timeout {timeout:?}");
        }
    }

    fn counted_waiter<'a>(word: &'a AtomicU32, sleepers: &'a AtomicU32, timeout: Duration) -> Waiter<'a, AtomicU32> {
        Waiter {
            deadline: Deadline::after(Some(timeout)),
            spin: Some(SpinPlan { budget: Some(Duration::from_micros(20)), batch: 32, expiry_ends_wait: true }),
            sleeper: Sleeper::Counted(Announce::new(word, sleepers)),
            slice: Duration::from_millis(5),
        }
    }

    #[test]
    fn waiter_times_out_and_counts_itself_out() {
        let (word, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let t = Instant::now();
        let mut slices = 0;
        let r = counted_waiter(&word, &sleepers, Duration::from_millis(30)).run(&Kernel, |phase| {
            if phase == Phase::Slept {
                slices += 1;
            }
            Next::<()>::Wait
        });
        assert_eq!(r, Err(Expired));
        assert!(t.elapsed() >= Duration::from_millis(30));
        // 5 ms slices in a 30 ms wait: the caller's check ran between them.
        assert!(slices >= 2, "{slices} slices");
        assert_eq!(sleepers.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn waiter_is_woken_by_wake_counted() {
        let shared = Arc::new((AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)));
        let s2 = shared.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s2.2.store(1, Ordering::SeqCst);
            AtomicU32::fence();
            wake_counted(&Kernel, &s2.0, &s2.1, true);
        });
        let (word, sleepers, data) = (&shared.0, &shared.1, &shared.2);
        let mut w = counted_waiter(word, sleepers, Duration::from_secs(10));
        // A long slice: only the wake-up ends the sleep early.
        w.slice = Duration::from_secs(10);
        let t0 = Instant::now();
        let r = w.run(&Kernel, |phase| match phase {
            Phase::Poll if data.load(Ordering::SeqCst) != 0 => Next::Done(7),
            _ => Next::Wait,
        });
        assert_eq!(r, Ok(7));
        assert!(t0.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }

    #[test]
    fn regression_waiter_deadline_ignored_while_futex_wait_never_times_out() {
        // Every wait returns `Woken` at once (EAGAIN, signals, stray wakes):
        // the loop must still stop at its deadline.
        let p = NeverTimesOut::new();
        let flag = AtomicU32::new(0);
        let words = [&flag];
        let w = Waiter {
            deadline: Deadline::after(Some(Duration::from_millis(20))),
            spin: None,
            sleeper: Sleeper::Flags(&words),
            slice: PEER_SLICE,
        };
        assert_eq!(w.run(&p, |_| Next::<()>::Wait), Err(Expired));
        assert!(!p.overshot(), "the waiter kept waiting long past its deadline");
        assert_eq!(flag.load(Ordering::SeqCst), 0, "the flag is lowered on return");
    }
}
