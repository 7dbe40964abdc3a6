//! [`Mutex<T>`]: a robust cross-process mutex protecting a `T: Pod`.
//!
//! ## Layout (payload)
//!
//! | offset        | size        | field                                      |
//! |--------------:|------------:|--------------------------------------------|
//! | 0             | 64          | the robust lock ([`raw_mutex`](super::raw_mutex)) |
//! | `data_offset` | `size_of T` | the data; `data_offset` = 64 rounded up to `align_of T` |
//!
//! This is the same layout as [`crate::Value`]; only the kind code differs.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::Duration;

use bytemuck::Pod;

use super::raw_mutex::{Acquired, RawLockError, RawMutex};
use crate::error::{LockError, OpenError};
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::segment::{segment_options, Handle, Segment, SegmentOptions};
use crate::time::Deadline;

const LOCK_SIZE: usize = std::mem::size_of::<RawMutex>();

fn data_offset<T>() -> usize {
    LOCK_SIZE.div_ceil(std::mem::align_of::<T>()) * std::mem::align_of::<T>()
}

fn payload_size<T>() -> usize {
    data_offset::<T>() + std::mem::size_of::<T>()
}

fn payload_align<T>() -> usize {
    std::mem::align_of::<T>().max(64)
}

/// Maps a raw lock result to the public one, building the guard when the lock is held.
pub(crate) fn map_lock<G>(r: Result<Acquired, RawLockError>, guard: impl FnOnce() -> G) -> Result<G, LockError<G>> {
    match r {
        Ok(Acquired::Clean) => Ok(guard()),
        Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard())),
        Err(RawLockError::Timeout) => Err(LockError::Timeout),
        Err(RawLockError::WouldBlock) => Err(LockError::WouldBlock),
        Err(RawLockError::Unrecoverable) => Err(LockError::Unrecoverable),
        Err(RawLockError::Corrupt) => Err(LockError::Corrupt),
    }
}

/// A robust mutex shared between processes, protecting one `T`.
///
/// If a process dies while holding it (even by `kill -9`), the next `lock`
/// returns [`LockError::OwnerDied`] with the guard: repair the data, call
/// [`MutexGuard::mark_consistent`], and the mutex works on. A guard dropped
/// without that makes the mutex [`LockError::Unrecoverable`] for everyone.
/// A dead holder is noticed within about 20 ms by a waiting `lock`.
///
/// The lock is not reentrant: locking it again from the thread that holds it
/// blocks until the timeout (use [`crate::ReentrantMutex`] for that). Do not
/// fork while holding a guard: dropping the child's copy would release the
/// parent's lock (leak it with `std::mem::forget` in the child).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::{LockError, Mutex};
/// let m = Mutex::<u64>::anonymous(0)?; // inherited by children forked later
/// match m.lock() {
///     Ok(mut g) => *g += 1,
///     Err(LockError::OwnerDied(mut g)) => {
///         *g = 0; // repair
///         g.mark_consistent();
///     }
///     Err(e) => return Err(e.to_string().into()),
/// }
/// assert_eq!(*m.lock().map_err(|e| e.to_string())?, 1);
/// # Ok(()) }
/// ```
pub struct Mutex<T: Pod> {
    seg: Segment,
    data: NonNull<T>,
    _t: PhantomData<T>,
}

/// Builder for [`Mutex`]: name and permissions, then `create`, `open` or `open_or_create`.
pub struct MutexBuilder<T> {
    opts: SegmentOptions,
    _t: PhantomData<T>,
}

impl<T> fmt::Debug for MutexBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexBuilder").field("opts", &self.opts).finish()
    }
}

impl<T: Pod> MutexBuilder<T> {
    segment_options!();

    fn check_type() -> Result<(), OpenError> {
        if std::mem::size_of::<T>() == 0 {
            return Err(OpenError::invalid("zero-sized types cannot be shared"));
        }
        if std::mem::align_of::<T>() > 4096 {
            return Err(OpenError::invalid("alignment above 4096 is not supported"));
        }
        Ok(())
    }

    fn spec() -> ObjectSpec {
        ObjectSpec {
            kind: ObjectKind::Mutex,
            ty: TypeInfo::of::<T>(),
            payload: PayloadSize::Exact(payload_size::<T>() as u64),
        }
    }

    fn init(init: T) -> impl Fn(NonNull<u8>, usize) {
        move |p, _| {
            // SAFETY: the payload is payload_size::<T>() zeroed bytes (an unlocked
            // lock), aligned to payload_align::<T>(), and not yet shared.
            unsafe { (p.as_ptr().add(data_offset::<T>()) as *mut T).write(init) }
        }
    }

    /// Creates the mutex (named if a name was set, else anonymous) holding `init`.
    pub fn create(self, init: T) -> Result<Mutex<T>, OpenError> {
        Self::check_type()?;
        let seg = Segment::create_object(
            &self.opts,
            ObjectKind::Mutex,
            TypeInfo::of::<T>(),
            payload_size::<T>(),
            payload_align::<T>(),
            Self::init(init),
        )?;
        Mutex::from_segment(seg)
    }

    /// Opens an existing named mutex.
    pub fn open(self) -> Result<Mutex<T>, OpenError> {
        Self::check_type()?;
        Mutex::from_segment(Segment::open_object(&self.opts, &Self::spec())?)
    }

    /// Opens the mutex behind `handle`.
    pub fn open_handle(self, handle: &Handle) -> Result<Mutex<T>, OpenError> {
        Self::check_type()?;
        Mutex::from_segment(Segment::open_handle(handle, &self.opts, &Self::spec())?)
    }

    /// Opens the named mutex, or creates it holding `init`.
    pub fn open_or_create(self, init: T) -> Result<Mutex<T>, OpenError> {
        Self::check_type()?;
        let seg = Segment::open_or_create_object(
            &self.opts,
            &Self::spec(),
            payload_size::<T>(),
            payload_align::<T>(),
            Self::init(init),
        )?;
        Mutex::from_segment(seg)
    }
}

impl<T: Pod> Mutex<T> {
    fn from_segment(seg: Segment) -> Result<Self, OpenError> {
        if seg.payload_len() < payload_size::<T>() {
            return Err(OpenError::corrupt("payload smaller than a mutex and its data"));
        }
        let base = seg.payload_ptr().as_ptr();
        if (base as usize) % payload_align::<T>() != 0 {
            return Err(OpenError::corrupt("mutex payload is misaligned"));
        }
        // SAFETY: data_offset + size_of T <= payload_len, inside the mapping.
        let data = unsafe { NonNull::new_unchecked(base.add(data_offset::<T>()) as *mut T) };
        Ok(Mutex { seg, data, _t: PhantomData })
    }

    /// A builder with default options (anonymous, mode 0600, 5 s open timeout).
    pub fn builder() -> MutexBuilder<T> {
        MutexBuilder { opts: SegmentOptions::default(), _t: PhantomData }
    }

    /// An anonymous mutex holding `init`, shared with children forked later.
    pub fn anonymous(init: T) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }

    /// Creates a named mutex holding `init`.
    pub fn create(name: &str, init: T) -> Result<Self, OpenError> {
        Self::builder().name(name).create(init)
    }

    /// Opens a named mutex.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    pub(crate) fn raw(&self) -> &RawMutex {
        // SAFETY: the payload starts with a 64-byte, 64-aligned RawMutex (checked
        // in from_segment); it is only atomics, valid for any bytes.
        unsafe { &*(self.seg.payload_ptr().as_ptr() as *const RawMutex) }
    }

    fn guard(&self) -> MutexGuard<'_, T> {
        MutexGuard::new(self.raw(), self.data)
    }

    /// Takes the lock, blocking until it is free.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        map_lock(self.raw().lock(Deadline::NEVER), || self.guard())
    }

    /// Takes the lock, giving up with [`LockError::Timeout`] after `timeout`
    /// (never earlier).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        map_lock(self.raw().lock(Deadline::after(Some(timeout))), || self.guard())
    }

    /// Takes the lock if it is free (or its holder is dead), else [`LockError::WouldBlock`].
    ///
    /// When the lock is held this checks the holder's liveness through `/proc`
    /// (some microseconds), so polling `try_lock` in a tight loop is slower
    /// than calling [`Mutex::lock_timeout`].
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        map_lock(self.raw().try_lock(), || self.guard())
    }

    /// How another process opens this mutex.
    pub fn handle(&self) -> Handle {
        self.seg.handle()
    }

    /// The segment holding the mutex.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

impl<T: Pod> Clone for Mutex<T> {
    fn clone(&self) -> Self {
        Mutex { seg: self.seg.clone(), data: self.data, _t: PhantomData }
    }
}

impl<T: Pod> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("type", &std::any::type_name::<T>())
            .field("lock", self.raw())
            .field("segment", &self.seg)
            .finish()
    }
}

// SAFETY: all access to the shared `T` goes through the cross-process lock;
// the handle is a segment (Send + Sync) and a pointer into its mapping.
unsafe impl<T: Pod + Send> Send for Mutex<T> {}
// SAFETY: `&Mutex` only gives locked access to `T`.
unsafe impl<T: Pod + Send> Sync for Mutex<T> {}

impl<T: Pod> crate::segment::ShmObject for Mutex<T> {
    const KIND: ObjectKind = ObjectKind::Mutex;
    fn handle(&self) -> Handle {
        self.seg.handle()
    }
    fn open_handle(handle: &Handle) -> Result<Self, OpenError> {
        Self::builder().open_handle(handle)
    }
    fn segment(&self) -> &Segment {
        &self.seg
    }
}

/// Exclusive access to a [`Mutex`]'s data; unlocks on drop.
///
/// Not `Send`: the lock records the thread that took it, and the liveness check
/// would declare the lock orphaned if that thread exited while another held it.
pub struct MutexGuard<'a, T: Pod> {
    pub(crate) lock: &'a RawMutex,
    data: NonNull<T>,
    _v: PhantomData<&'a mut T>,
}

impl<'a, T: Pod> MutexGuard<'a, T> {
    /// A guard for `data`, protected by `lock`, which the caller has just taken.
    ///
    /// The guard unlocks `lock` on drop, so it must only be built right after a
    /// successful lock by this thread; `data` must point to an aligned `T` in a
    /// mapping that outlives `'a`. (Used by [`crate::Value`], whose lock is the same.)
    pub(crate) fn new(lock: &'a RawMutex, data: NonNull<T>) -> Self {
        MutexGuard { lock, data, _v: PhantomData }
    }

    /// After [`LockError::OwnerDied`]: declares the repaired data consistent, so
    /// the mutex stays usable after this guard drops.
    pub fn mark_consistent(&self) {
        self.lock.mark_consistent();
    }
}

impl<T: Pod> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held; the pointer is in the mapping and aligned.
        unsafe { self.data.as_ref() }
    }
}

impl<T: Pod> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held exclusively; see Deref.
        unsafe { self.data.as_mut() }
    }
}

impl<T: Pod> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its lock is held by this thread.
        unsafe { self.lock.unlock() }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MutexGuard").field(&**self).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn lock_try_timeout() {
        let m = Mutex::<[u32; 3]>::anonymous([1, 2, 3]).unwrap();
        let m2 = m.clone();
        {
            let mut g = m.lock().unwrap();
            g[1] = 20;
            let r = std::thread::spawn(move || {
                let a = matches!(m2.try_lock(), Err(LockError::WouldBlock));
                let b = matches!(m2.lock_timeout(Duration::from_millis(20)), Err(LockError::Timeout));
                a && b
            })
            .join()
            .unwrap();
            assert!(r);
        }
        assert_eq!(*m.try_lock().unwrap(), [1, 20, 3]);
        let other = Mutex::<u64>::builder().open_handle(&m.handle());
        assert!(matches!(other, Err(OpenError::TypeMismatch { .. }) | Err(OpenError::SizeMismatch { .. })));
    }

    #[test]
    fn owner_thread_death() {
        let m = Mutex::<u64>::anonymous(7).unwrap();
        let m2 = m.clone();
        std::thread::spawn(move || std::mem::forget(m2.lock().unwrap())).join().unwrap();
        let mut g = m.lock_timeout(Duration::from_secs(10)).unwrap_err().into_guard().unwrap();
        assert_eq!(*g, 7);
        *g = 8;
        g.mark_consistent();
        drop(g);
        assert_eq!(*m.lock_timeout(Duration::from_secs(10)).unwrap(), 8);
    }
}
