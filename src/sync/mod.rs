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
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::error::OpenError;
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::segment::{Segment, SegmentOptions};

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

/// A segment whose payload is one `S`.
pub(crate) struct Shared<S> {
    seg: Segment,
    ptr: NonNull<S>,
    _s: PhantomData<S>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared { seg: self.seg.clone(), ptr: self.ptr, _s: PhantomData }
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.seg.fmt(f)
    }
}

// SAFETY: `S: SharedState` holds only atomics (Sync); the segment is Send + Sync.
unsafe impl<S: SharedState> Send for Shared<S> {}
// SAFETY: as above; all shared access is through atomics.
unsafe impl<S: SharedState> Sync for Shared<S> {}

impl<S: SharedState> Shared<S> {
    fn spec(kind: ObjectKind) -> ObjectSpec {
        ObjectSpec { kind, ty: TypeInfo::of::<S>(), payload: PayloadSize::Exact(std::mem::size_of::<S>() as u64) }
    }

    fn from_segment(seg: Segment) -> Result<Self, OpenError> {
        if seg.payload_len() < std::mem::size_of::<S>() {
            return Err(OpenError::corrupt("payload smaller than the primitive's state"));
        }
        let p = seg.payload_ptr();
        if (p.as_ptr() as usize) % std::mem::align_of::<S>() != 0 {
            return Err(OpenError::corrupt("payload is misaligned"));
        }
        let s = Shared { ptr: p.cast::<S>(), seg, _s: PhantomData };
        s.get().validate()?;
        Ok(s)
    }

    /// Creates the segment; `init` fills in the zeroed state before it is published.
    pub(crate) fn create(opts: &SegmentOptions, kind: ObjectKind, init: impl Fn(&S)) -> Result<Self, OpenError> {
        let seg = Segment::create_object(
            opts,
            kind,
            TypeInfo::of::<S>(),
            std::mem::size_of::<S>(),
            std::mem::align_of::<S>().max(8),
            |p, _| {
                // SAFETY: the zero-filled payload is size_of::<S>() bytes, aligned
                // for S (requested above); all-zero is a valid S (SharedState).
                init(unsafe { p.cast::<S>().as_ref() })
            },
        )?;
        Self::from_segment(seg)
    }

    /// Opens the named object.
    pub(crate) fn open(opts: &SegmentOptions, kind: ObjectKind) -> Result<Self, OpenError> {
        Self::from_segment(Segment::open_object(opts, &Self::spec(kind))?)
    }

    /// Opens the object behind `handle`.
    pub(crate) fn open_handle(
        opts: &SegmentOptions,
        kind: ObjectKind,
        handle: &crate::segment::Handle,
    ) -> Result<Self, OpenError> {
        Self::from_segment(Segment::open_handle(handle, opts, &Self::spec(kind))?)
    }

    /// Opens the named object or creates it with `init`.
    pub(crate) fn open_or_create(
        opts: &SegmentOptions,
        kind: ObjectKind,
        init: impl Fn(&S),
    ) -> Result<Self, OpenError> {
        let seg = Segment::open_or_create_object(
            opts,
            &Self::spec(kind),
            std::mem::size_of::<S>(),
            std::mem::align_of::<S>().max(8),
            |p, _| {
                // SAFETY: as in `create`.
                init(unsafe { p.cast::<S>().as_ref() })
            },
        )?;
        Self::from_segment(seg)
    }

    /// The shared state.
    #[inline]
    pub(crate) fn get(&self) -> &S {
        // SAFETY: `ptr` points into the mapping owned by `seg` (checked size and
        // alignment at open); S is only atomics, valid for any bytes.
        unsafe { self.ptr.as_ref() }
    }

    /// The segment.
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }
}

/// Declares a builder struct with the common segment options.
macro_rules! sync_builder {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            opts: $crate::segment::SegmentOptions,
        }

        impl $name {
            $crate::segment::segment_options!();
        }
    };
}
pub(crate) use sync_builder;

/// Implements `ShmObject` for a primitive with a `shared: Shared<_>` field.
macro_rules! sync_shm_object {
    ($ty:ident, $builder:ident, $kind:ident) => {
        impl $crate::segment::ShmObject for $ty {
            const KIND: $crate::header::ObjectKind = $crate::header::ObjectKind::$kind;
            fn handle(&self) -> $crate::segment::Handle {
                self.shared.segment().handle()
            }
            fn open_handle(handle: &$crate::segment::Handle) -> Result<Self, $crate::error::OpenError> {
                $builder::default().open_handle(handle)
            }
            fn segment(&self) -> &$crate::segment::Segment {
                self.shared.segment()
            }
        }
    };
}
pub(crate) use sync_shm_object;

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
