//! Cross-process synchronization primitives.
//!
//! * [`raw_mutex`]: the robust futex lock every locked object embeds (64 bytes).
//! * [`Mutex`], [`ReentrantMutex`], [`Semaphore`], [`BoundedSemaphore`], [`Event`],
//!   [`Condition`], [`Barrier`]: the public primitives, each in its own segment.
//!
//! The algorithms never call the OS directly: they go through [`Platform`]
//! (futex wait/wake, "who am I", "is that thread alive"). [`Os`] is the real
//! implementation; under `--cfg loom` the tests in [`loom_tests`] substitute a
//! model of the futex and of thread death and let loom explore every
//! interleaving of the raw mutex and the semaphore on a heap twin of the
//! shared state (`ci/loom.sh`).

use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::OpenError;
use crate::object::{Builder, Object, Prefix, View};
use crate::segment::{Handle, Segment};
use crate::sys::Identity;
use crate::time::Deadline;

pub(crate) mod barrier;
pub(crate) mod condition;
pub(crate) mod event;
pub(crate) mod mutex;
pub(crate) mod raw_mutex;
pub(crate) mod reentrant;
pub(crate) mod semaphore;

#[cfg(all(test, loom))]
mod loom_tests;

pub use barrier::{Barrier, BarrierBuilder, BarrierError, BarrierWaitResult};
pub use condition::{Condition, ConditionBuilder};
pub use event::{Event, EventBuilder};
pub use mutex::{Mutex, MutexBuilder, MutexGuard};
pub use reentrant::{ReentrantMutex, ReentrantMutexBuilder, ReentrantMutexGuard};
pub use semaphore::{AcquireError, BoundedSemaphore, ReleaseError, Semaphore, SemaphoreBuilder};

/// Atomics used by the shared-state algorithms: std's normally, loom's under `--cfg loom`.
pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};
}

use atomic::AtomicU32;

/// How a platform wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Woken, spuriously or not, or the word had changed: re-check.
    Woken,
    /// The given deadline passed.
    TimedOut,
}

/// The operations the lock algorithms need from the outside world.
pub(crate) trait Platform {
    /// Sleeps while `*word == expected`, until woken or `deadline`.
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Deadline) -> Wait;
    /// Wakes up to `n` waiters on `word`.
    fn wake(&self, word: &AtomicU32, n: u32);
    /// The calling thread's identity (its tid must be non-zero and < 2^30).
    fn me(&self) -> Identity;
    /// Whether `who` still runs (`false` only when it is proven dead).
    fn alive(&self, who: Identity) -> bool;
    /// How long a lock waiter sleeps before it re-checks the owner's liveness
    /// (`None`: sleep until woken).
    fn liveness_slice(&self) -> Option<Duration>;
}

/// The real platform: shared futexes and `/proc` liveness.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Os;

/// Slice between liveness checks of a lock owner.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(20);

#[cfg(not(loom))]
impl Platform for Os {
    #[inline]
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Deadline) -> Wait {
        match crate::sys::futex_wait(word, expected, deadline.at()) {
            crate::sys::WaitOutcome::Woken => Wait::Woken,
            crate::sys::WaitOutcome::TimedOut => Wait::TimedOut,
        }
    }
    #[inline]
    fn wake(&self, word: &AtomicU32, n: u32) {
        crate::sys::futex_wake(word, n);
    }
    #[inline]
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, who: Identity) -> bool {
        crate::sys::liveness(who) == crate::sys::Liveness::Alive
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(LIVENESS_SLICE)
    }
}

// Under loom the real futex cannot be used on loom's atomics; the crate still
// has to compile, so `Os` degrades to yielding. Only `loom_tests` run under loom.
#[cfg(loom)]
impl Platform for Os {
    fn wait(&self, _word: &AtomicU32, _expected: u32, _deadline: Deadline) -> Wait {
        loom::thread::yield_now();
        Wait::Woken
    }
    fn wake(&self, _word: &AtomicU32, _n: u32) {}
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, who: Identity) -> bool {
        crate::sys::liveness(who) == crate::sys::Liveness::Alive
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(LIVENESS_SLICE)
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
}

#[cfg(all(test, not(loom)))]
impl NeverTimesOut {
    pub(crate) fn new() -> Self {
        NeverTimesOut { start: std::time::Instant::now(), overshot: std::sync::atomic::AtomicBool::new(false) }
    }
    /// Whether a caller kept waiting far past its (short) deadline.
    pub(crate) fn overshot(&self) -> bool {
        self.overshot.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
impl Platform for NeverTimesOut {
    fn wait(&self, _word: &AtomicU32, _expected: u32, _deadline: Deadline) -> Wait {
        if self.start.elapsed() > Duration::from_secs(2) {
            self.overshot.store(true, std::sync::atomic::Ordering::Relaxed);
            return Wait::TimedOut;
        }
        std::thread::yield_now();
        Wait::Woken
    }
    fn wake(&self, _word: &AtomicU32, _n: u32) {}
    fn me(&self) -> Identity {
        crate::sys::current_thread()
    }
    fn alive(&self, _who: Identity) -> bool {
        true
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(LIVENESS_SLICE)
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

/// Types stored in a sync segment's payload: `#[repr(C)]`, only atomics, so any
/// bytes (including a hostile peer's) are a valid value and all-zero is valid.
///
/// # Safety
/// The implementor must be `#[repr(C)]`, contain only `AtomicU32`/`AtomicU64`
/// (or nested such types), have alignment at most 64, and treat every bit pattern
/// as a valid (possibly "corrupt", reported as an error) state.
pub(crate) unsafe trait SharedState: Sync + 'static {
    /// Checks parameters stored at creation (bounds, party counts) when opening.
    fn validate(&self) -> Result<(), OpenError> {
        Ok(())
    }
}

/// A segment whose payload is one `S`: a typed view ([`crate::object`],
/// no prefix, exactly one element) whose state is validated at open.
pub(crate) struct Shared<S> {
    view: View<S>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared { view: self.view.clone() }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view.fmt(f)
    }
}

// SAFETY: `S: SharedState` holds only atomics (Sync); the segment is Send + Sync.
unsafe impl<S: SharedState> Send for Shared<S> {}
// SAFETY: as above; all shared access is through atomics.
unsafe impl<S: SharedState> Sync for Shared<S> {}

impl<S: SharedState> Shared<S> {
    fn checked(view: View<S>) -> Result<Self, OpenError> {
        let s = Shared { view };
        s.get().validate()?;
        Ok(s)
    }

    /// `init` as a view initialiser: it fills in the zeroed state before it is published.
    fn init(init: impl Fn(&S)) -> impl Fn(NonNull<S>) {
        move |p| {
            // SAFETY: `p` is the aligned, zero-filled, unpublished state (the
            // view checks size and alignment); all-zero is a valid S (SharedState).
            init(unsafe { p.as_ref() })
        }
    }

    /// Creates the segment of `O`'s kind; `init` fills in the zeroed state.
    pub(crate) fn create<O: Object>(b: &Builder<O>, init: impl Fn(&S)) -> Result<Self, OpenError> {
        Self::checked(View::create(b, Prefix::None, 1, Self::init(init))?)
    }

    /// Opens the object named by `b`, or the one behind `handle`.
    pub(crate) fn open<O: Object>(b: &Builder<O>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Self::checked(View::open(b, handle, Prefix::None, Some(1))?)
    }

    /// Opens the named object or creates it with `init`.
    pub(crate) fn open_or_create<O: Object>(b: &Builder<O>, init: impl Fn(&S)) -> Result<Self, OpenError> {
        Self::checked(View::open_or_create(b, Prefix::None, 1, Self::init(init))?)
    }

    /// The shared state.
    #[inline]
    pub(crate) fn get(&self) -> &S {
        // SAFETY: the view's pointer is into the mapping it keeps alive (size
        // and alignment checked at open); S is only atomics, valid for any bytes.
        unsafe { self.view.data().as_ref() }
    }

    /// The segment.
    pub(crate) fn segment(&self) -> &Segment {
        self.view.segment()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use crate::{
        Barrier, BoundedSemaphore, Condition, Event, LockError, Mutex, ReentrantMutex, Segment, Semaphore, ShmObject,
    };

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        /// Mostly small or "interesting" values, sometimes anything.
        fn word(&mut self) -> u32 {
            match self.next() % 6 {
                0 => 0,
                1 => self.next() % 4,
                2 => (1 << 31) | (self.next() % 4),
                3 => std::process::id(),
                4 => u32::MAX - self.next() % 2,
                _ => self.next(),
            }
        }
    }

    /// Overwrites the first 32 words of a segment's payload, as a hostile peer could.
    fn scribble(seg: &Segment, rng: &mut Rng) {
        let words = (seg.payload_len() / 4).min(32);
        // SAFETY: the payload is at least `words * 4` bytes, 4-aligned, and
        // these words are only ever accessed atomically.
        let ws = unsafe { std::slice::from_raw_parts(seg.payload_ptr().as_ptr() as *const AtomicU32, words) };
        for w in ws {
            w.store(rng.word(), Ordering::Relaxed);
        }
    }

    const T: Duration = Duration::from_millis(1);

    #[test]
    fn hostile_bytes_give_errors_not_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let sane = Mutex::<u32>::anonymous(0).unwrap();
        for _ in 0..150 {
            let m = Mutex::<u64>::anonymous(0).unwrap();
            scribble(m.segment(), &mut rng);
            drop(m.try_lock());
            match m.lock_timeout(T) {
                Ok(g) => drop(g),
                Err(LockError::OwnerDied(g)) => {
                    g.mark_consistent();
                }
                Err(_) => {}
            }

            let r = ReentrantMutex::anonymous().unwrap();
            scribble(r.segment(), &mut rng);
            drop(r.try_lock());
            drop(r.lock_timeout(T));
            let _ = r.depth();

            let s = Semaphore::anonymous(1).unwrap();
            scribble(s.segment(), &mut rng);
            let _ = s.try_acquire();
            let _ = s.acquire_timeout(T);
            let _ = s.release();

            let b = BoundedSemaphore::anonymous(2).unwrap();
            scribble(b.segment(), &mut rng);
            let _ = b.acquire_timeout(T);
            let _ = b.release();

            let e = Event::anonymous().unwrap();
            scribble(e.segment(), &mut rng);
            let _ = e.wait_timeout(T);
            e.set();
            e.clear();

            let c = Condition::anonymous().unwrap();
            scribble(c.segment(), &mut rng);
            c.notify_one();
            c.notify_all();
            let _ = c.wait_timeout(sane.lock().unwrap(), T).map(|(g, _)| drop(g));

            let bar = Barrier::anonymous(2).unwrap();
            scribble(bar.segment(), &mut rng);
            let _ = bar.wait_timeout(T);
            let _ = bar.is_broken();
            // Reopening validates the stored parameters.
            let _ = Barrier::open_handle(&bar.handle());
            let _ = BoundedSemaphore::open_handle(&b.handle());
        }
    }

    #[test]
    fn corrupt_parameters_are_refused_at_open() {
        let bar = Barrier::anonymous(3).unwrap();
        // SAFETY: payload word 2 is `parties`, accessed atomically only.
        unsafe { (*(bar.segment().payload_ptr().as_ptr() as *const AtomicU32).add(2)).store(0, Ordering::Relaxed) };
        assert!(matches!(Barrier::open_handle(&bar.handle()), Err(crate::OpenError::Corrupt { .. })));
        let b = BoundedSemaphore::anonymous(3).unwrap();
        // SAFETY: payload word 2 is `bound`, accessed atomically only.
        unsafe { (*(b.segment().payload_ptr().as_ptr() as *const AtomicU32).add(2)).store(0, Ordering::Relaxed) };
        assert!(matches!(BoundedSemaphore::open_handle(&b.handle()), Err(crate::OpenError::Corrupt { .. })));
    }
}
