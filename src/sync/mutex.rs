//! [`Mutex<T>`]: a robust cross-process mutex protecting a `T: Pod` or, as
//! `Mutex<[T]>`, a slice of them. The one locked object of the crate:
//! [`crate::Value`] is a `Mutex<T>` and [`crate::Array`] a `Mutex<[T]>`, each
//! recorded under its own kind, and all three lock through [`MutexGuard`].
//!
//! ## Layout (payload)
//!
//! | offset        | size              | field                                      |
//! |--------------:|------------------:|--------------------------------------------|
//! | 0             | 64                | the robust lock ([`raw_mutex`](super::raw_mutex)) |
//! | `data_offset` | `len * size_of T` | the data; `data_offset` = 64 rounded up to `align_of T` |
//!
//! `len` is 1 for `Mutex<T>` and `Value<T>`. The segment, header check and view
//! come from the typed-object layer ([`crate::object`], `Prefix::Lock`).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::Duration;

use bytemuck::Pod;

use super::raw_mutex::{Acquired, RawLockError, RawMutex};
use crate::error::{AccessError, LockError, OpenError};
use crate::header::ObjectKind;
use crate::object::{Builder, Object, Prefix, View};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

// The typed-object layer reserves 64 bytes for the lock (`Prefix::Lock`).
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<RawMutex>() == 64 && std::mem::align_of::<RawMutex>() <= 64);

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

/// [`map_lock`] for a lock in `seg`: a segment truncated under this process
/// ([`Segment::lost`]: the lock and its data are private zeros now, never
/// the object again) is [`LockError::Corrupt`], whatever the lock word said.
pub(crate) fn map_lock_in<G>(
    seg: &Segment,
    r: Result<Acquired, RawLockError>,
    guard: impl FnOnce() -> G,
) -> Result<G, LockError<G>> {
    let r = map_lock(r, guard);
    if seg.lost() {
        // A guard in `r` unlocks the (private) lock word as it drops.
        return Err(LockError::Corrupt);
    }
    r
}

/// What a locked (or raw) object can hold: one `T: Pod`, or a slice `[T]` of
/// them. Implemented for exactly those two shapes; not part of the API.
#[doc(hidden)]
pub trait Data {
    /// The element type stored in shared memory.
    type Elem: Pod;
    /// The data made of `len` elements starting at `first`.
    fn from_elems(first: NonNull<Self::Elem>, len: usize) -> NonNull<Self>;
}

impl<T: Pod> Data for T {
    type Elem = T;
    fn from_elems(first: NonNull<T>, _len: usize) -> NonNull<T> {
        first
    }
}

impl<T: Pod> Data for [T] {
    type Elem = T;
    fn from_elems(first: NonNull<T>, len: usize) -> NonNull<[T]> {
        NonNull::slice_from_raw_parts(first, len)
    }
}

/// A robust mutex shared between processes, protecting one `T` (or, as
/// `Mutex<[T]>`, the elements of an [`crate::Array`]).
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
/// assert_eq!(*m.lock()?, 1); // `?` drops a dead holder's guard (see LockError)
/// # Ok(()) }
/// ```
pub struct Mutex<T: ?Sized> {
    seg: Segment,
    data: NonNull<T>,
}

/// Builder for [`Mutex`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type MutexBuilder<T> = Builder<Mutex<T>>;

impl<T: Pod> Builder<Mutex<T>> {
    /// Creates the mutex (named if a name was set, else anonymous) holding `init`.
    pub fn create(self, init: T) -> Result<Mutex<T>, OpenError> {
        Mutex::create_in(&self, std::slice::from_ref(&init))
    }

    /// Opens the named mutex, or creates it holding `init`.
    pub fn open_or_create(self, init: T) -> Result<Mutex<T>, OpenError> {
        Mutex::open_or_create_in(&self, std::slice::from_ref(&init))
    }
}

crate::object::serde_object!([T: Pod] Mutex<T>);
impl<T: Pod> Object for Mutex<T> {
    const KIND: ObjectKind = ObjectKind::Mutex;
    type Params = ();
    fn segment(&self) -> &Segment {
        &self.seg
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Mutex::open_in(&b, handle, Some(1))
    }
}

impl<T: Pod> Mutex<T> {
    /// A builder with default options (anonymous, mode 0600, 5 s open timeout).
    pub fn builder() -> MutexBuilder<T> {
        Builder::default()
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
}

impl<D: ?Sized + Data> Mutex<D> {
    fn from_view(v: View<D::Elem>) -> Self {
        Mutex { data: D::from_elems(v.data(), v.len()), seg: v.segment().clone() }
    }

    /// Creates a locked object of `O`'s kind holding a copy of `init`.
    pub(crate) fn create_in<O: Object>(b: &Builder<O>, init: &[D::Elem]) -> Result<Self, OpenError> {
        View::create_copy(b, Prefix::Lock, init).map(Self::from_view)
    }

    /// Opens the named locked object of `O`'s kind or creates it holding `init`.
    pub(crate) fn open_or_create_in<O: Object>(b: &Builder<O>, init: &[D::Elem]) -> Result<Self, OpenError> {
        View::open_or_create_copy(b, Prefix::Lock, init).map(Self::from_view)
    }

    /// Opens a locked object of `O`'s kind with `len` elements (any when `None`).
    pub(crate) fn open_in<O: Object>(
        b: &Builder<O>,
        handle: Option<&Handle>,
        len: Option<usize>,
    ) -> Result<Self, OpenError> {
        View::open(b, handle, Prefix::Lock, len).map(Self::from_view)
    }

    pub(crate) fn raw(&self) -> &RawMutex {
        // SAFETY: a `Prefix::Lock` payload starts with a 64-byte, 64-aligned
        // RawMutex (size asserted above, alignment checked when the view was
        // validated); it is only atomics, valid for any bytes.
        unsafe { &*(self.seg.payload_ptr().as_ptr() as *const RawMutex) }
    }

    fn guard(&self) -> MutexGuard<'_, D> {
        MutexGuard { lock: self.raw(), seg: &self.seg, data: self.data, _v: PhantomData }
    }

    /// Runs `f` on the data under the lock (the convenience calls of
    /// `Value` and `Array`). If the segment was truncated under this process
    /// meanwhile, `f` saw zeros: that is [`AccessError::Corrupt`], not `f`'s
    /// result.
    pub(crate) fn with_lock<R>(&self, f: impl FnOnce(&mut D) -> R) -> Result<R, AccessError> {
        let mut g = self.lock()?;
        let r = f(&mut g);
        drop(g);
        if self.seg.lost() {
            return Err(AccessError::Corrupt);
        }
        Ok(r)
    }

    /// Takes the lock, blocking until it is free.
    pub fn lock(&self) -> Result<MutexGuard<'_, D>, LockError<MutexGuard<'_, D>>> {
        map_lock_in(&self.seg, self.raw().lock(Deadline::NEVER), || self.guard())
    }

    /// Takes the lock, giving up with [`LockError::Timeout`] after `timeout`
    /// (never earlier).
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, D>, LockError<MutexGuard<'_, D>>> {
        map_lock_in(&self.seg, self.raw().lock(Deadline::after(Some(timeout))), || self.guard())
    }

    /// Takes the lock if it is free (or its holder is dead), else [`LockError::WouldBlock`].
    ///
    /// When the lock is held this checks the holder's liveness through `/proc`
    /// (some microseconds), so polling `try_lock` in a tight loop is slower
    /// than calling [`Mutex::lock_timeout`].
    pub fn try_lock(&self) -> Result<MutexGuard<'_, D>, LockError<MutexGuard<'_, D>>> {
        map_lock_in(&self.seg, self.raw().try_lock(), || self.guard())
    }

    /// How another process opens this object (with the builder of its kind).
    pub fn handle(&self) -> Handle {
        self.seg.handle()
    }

    /// The segment holding the lock and the data.
    pub fn segment(&self) -> &Segment {
        &self.seg
    }
}

impl<T> Mutex<[T]> {
    /// Number of elements (fixed when the array was created).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Never true: arrays have at least one element.
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }
}

impl<T: ?Sized> Clone for Mutex<T> {
    fn clone(&self) -> Self {
        Mutex { seg: self.seg.clone(), data: self.data }
    }
}

impl<D: ?Sized + Data> fmt::Debug for Mutex<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("type", &std::any::type_name::<D>())
            .field("lock", self.raw())
            .field("segment", &self.seg)
            .finish()
    }
}

// SAFETY: all access to the shared data goes through the cross-process lock;
// the handle is a segment (Send + Sync) and a pointer into its mapping.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: `&Mutex` only gives locked access to the data.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

/// Exclusive access to a [`Mutex`]'s data (a `T`, or the `[T]` of an
/// [`crate::Array`]); unlocks on drop. [`crate::ValueGuard`] and
/// [`crate::ArrayGuard`] are this type.
///
/// Not `Send`: the lock records the thread that took it, and the liveness check
/// would declare the lock orphaned if that thread exited while another held it.
pub struct MutexGuard<'a, T: ?Sized> {
    pub(crate) lock: &'a RawMutex,
    /// The mutex's segment (a condition's relock checks it for a truncation).
    pub(crate) seg: &'a Segment,
    data: NonNull<T>,
    _v: PhantomData<&'a mut T>,
}

impl<T: ?Sized> MutexGuard<'_, T> {
    /// After [`LockError::OwnerDied`]: declares the repaired data consistent, so
    /// the mutex stays usable after this guard drops.
    pub fn mark_consistent(&self) {
        self.lock.mark_consistent();
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held; the pointer (and for a slice its length)
        // lies in the mapping and is aligned (validated at open).
        unsafe { self.data.as_ref() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held exclusively; see Deref.
        unsafe { self.data.as_mut() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its lock is held by this thread.
        unsafe { self.lock.unlock() }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MutexGuard").field(&&**self).finish()
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
