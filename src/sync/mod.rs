//! Cross-process synchronization primitives.
//!
//! * [`raw_mutex`]: the robust futex lock every locked object embeds (64 bytes).
//! * [`Mutex`], [`ReentrantMutex`], [`Semaphore`], [`BoundedSemaphore`], [`Event`],
//!   [`Condition`], [`Barrier`]: the public primitives, each in its own segment.
//!
//! The algorithms never call the OS directly: they wait through the waiting
//! layer ([`crate::wait`]: [`Platform`] for futex wait/wake, "who am I", "is
//! that thread alive"; the spin budgets and slices). [`Os`] is the real
//! implementation; under `--cfg loom` the tests in [`loom_tests`] substitute a
//! model of the futex and of thread death and let loom explore every
//! interleaving of the raw mutex and the semaphore on a heap twin of the
//! shared state (`ci/loom.sh`).

use std::fmt;
use std::ptr::NonNull;

use crate::error::OpenError;
use crate::object::{Builder, Object, Prefix, View};
use crate::segment::{Handle, Segment};

pub(crate) mod barrier;
pub(crate) mod condition;
pub(crate) mod event;
pub(crate) mod lock;
pub(crate) mod mutex;
pub(crate) mod raw_mutex;
pub(crate) mod reentrant;
pub(crate) mod semaphore;

#[cfg(all(test, loom))]
mod loom_tests;

pub use barrier::{Barrier, BarrierBuilder, BarrierError, BarrierWaitResult, WATCHED_PROCESSES};
pub use condition::{Condition, ConditionBuilder};
pub use event::{Event, EventBuilder};
pub use lock::{Lock, LockBuilder, LockGuard, RLock, RLockBuilder};
pub use mutex::{Mutex, MutexBuilder, MutexGuard};
pub use reentrant::{ReentrantMutex, ReentrantMutexBuilder, ReentrantMutexGuard};
pub use semaphore::{
    AcquireError, BoundedSemaphore, ReleaseError, Semaphore, SemaphoreBuilder, SemaphoreGuard, OWNED_PERMITS,
};

// The waiting layer (platform, spin budgets, slices) lives in `crate::wait`;
// the sync algorithms name it through these re-exports.
#[cfg(all(test, not(loom)))]
pub(crate) use crate::wait::NeverTimesOut;
pub(crate) use crate::wait::{atomic, loom_sc_fence, spin_until, Os, Platform, Wait};

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
