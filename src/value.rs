//! [`Value<T>`] / [`Array<T>`]: typed data in shared memory behind a robust lock,
//! and their lock-free twins [`RawValue<T>`] / [`RawArray<T>`].
//!
//! All four are views of the typed-object layer ([`crate::object`]). A
//! `Value<T>` *is* a [`Mutex<T>`] and an `Array<T>` a `Mutex<[T]>` (both
//! dereference to it, as `String` does to `str`), recorded under their own
//! kinds so that each opens only as what it was created as; they add
//! `multiprocessing`-style conveniences (`get`, `set`, `update`, `to_vec`).
//! The raw kinds are the same views without the lock.
//!
//! Payload layout (offsets from the payload start, which is 128 bytes into the
//! segment; see `SAFETY.md`):
//!
//! | offset          | size            | locked kinds (`Value`, `Array`) | raw kinds        |
//! |----------------:|----------------:|---------------------------------|------------------|
//! | 0               | 64              | the lock                        | (absent)         |
//! | `data_offset`   | `len * size_of` | the elements                    | at offset 0      |
//!
//! `data_offset` is 64 rounded up to `align_of::<T>()`. An `Array<f64>`'s
//! elements therefore start at byte 192 of the segment; that is what
//! `tests/python_interop.rs` reads from Python.

use std::fmt;
use std::ops::Deref;

use bytemuck::Pod;

use crate::error::{AccessError, OpenError};
use crate::header::ObjectKind;
use crate::object::{Builder, Object, Prefix, View};
use crate::segment::{Handle, Segment};
use crate::sync::{Mutex, MutexGuard};

// ---------------------------------------------------------------------------
// Value<T>
// ---------------------------------------------------------------------------

/// One `T` in shared memory behind a robust cross-process lock, like Python's
/// `multiprocessing.Value`.
///
/// A `Value<T>` is a [`Mutex<T>`] (it dereferences to one: `lock`,
/// `lock_timeout`, `try_lock`, `handle` and `segment` are the mutex's), opened
/// and created as kind `Value`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::Value;
/// let counter = Value::<u64>::anonymous(0)?; // inherited by forked children
/// counter.update(|v| *v += 1)?;
/// assert_eq!(counter.get()?, 1);
/// # Ok(()) }
/// ```
///
/// A zero-sized `T` is a compile-time error (for a lock without data, use
/// [`crate::Lock`]):
///
/// ```compile_fail
/// let v = shmproc::Value::<()>::anonymous(());
/// ```
pub struct Value<T: Pod>(Mutex<T>);

/// Builder for [`Value`]: name, permissions, then `create`, `open` or `open_or_create`.
pub type ValueBuilder<T> = Builder<Value<T>>;

impl<T: Pod> Builder<Value<T>> {
    /// Creates the value (named if a name was set, else anonymous) holding `init`.
    pub fn create(self, init: T) -> Result<Value<T>, OpenError> {
        Mutex::create_in(&self, std::slice::from_ref(&init)).map(Value)
    }

    /// Opens the named value, or creates it holding `init`.
    pub fn open_or_create(self, init: T) -> Result<Value<T>, OpenError> {
        Mutex::open_or_create_in(&self, std::slice::from_ref(&init)).map(Value)
    }
}

crate::object::serde_object!([T: Pod] Value<T>);
impl<T: Pod> Object for Value<T> {
    const KIND: ObjectKind = ObjectKind::Value;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.0.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Mutex::open_in(&b, handle, Some(1)).map(Value)
    }
}

impl<T: Pod> Value<T> {
    /// A builder with default options (anonymous, mode 0600, 5 s open timeout).
    pub fn builder() -> ValueBuilder<T> {
        Builder::default()
    }

    /// An anonymous value holding `init`, shared with children forked later.
    pub fn anonymous(init: T) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }

    /// Creates a named value holding `init`.
    pub fn create(name: &str, init: T) -> Result<Self, OpenError> {
        Self::builder().name(name).create(init)
    }

    /// Opens the named value.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Reads the value under the lock.
    pub fn get(&self) -> Result<T, AccessError> {
        self.with_lock(|v| *v)
    }

    /// Writes the value under the lock.
    pub fn set(&self, v: T) -> Result<(), AccessError> {
        self.with_lock(|x| *x = v)
    }

    /// Runs `f` on the value under the lock and returns its result.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, AccessError> {
        self.with_lock(f)
    }
}

impl<T: Pod> Deref for Value<T> {
    type Target = Mutex<T>;
    fn deref(&self) -> &Mutex<T> {
        &self.0
    }
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value(self.0.clone())
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").field("type", &std::any::type_name::<T>()).field("segment", self.0.segment()).finish()
    }
}

/// Exclusive access to a [`Value`]'s data; unlocks on drop. A `Value` is a
/// [`Mutex`], so its guard is the mutex's.
pub type ValueGuard<'a, T> = MutexGuard<'a, T>;

// ---------------------------------------------------------------------------
// Array<T>
// ---------------------------------------------------------------------------

/// A fixed-length array of `T` in shared memory behind a robust lock, like
/// Python's `multiprocessing.Array`.
///
/// An `Array<T>` is a `Mutex<[T]>` (it dereferences to one: `lock` gives a
/// guard that is a `&mut [T]`), opened and created as kind `Array`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::Array;
/// let a = Array::<f64>::anonymous(&[1.0, 2.0, 3.0])?;
/// a.lock()?[1] = 20.0;
/// assert_eq!(a.to_vec()?, vec![1.0, 20.0, 3.0]);
/// # Ok(()) }
/// ```
pub struct Array<T: Pod>(Mutex<[T]>);

/// Builder for [`Array`]: name, permissions, then `create`, `open` or `open_or_create`.
pub type ArrayBuilder<T> = Builder<Array<T>>;

fn non_empty<T>(init: &[T]) -> Result<(), OpenError> {
    if init.is_empty() {
        return Err(OpenError::invalid("an array needs at least one element"));
    }
    Ok(())
}

impl<T: Pod> Builder<Array<T>> {
    /// Creates the array holding a copy of `init`.
    pub fn create(self, init: &[T]) -> Result<Array<T>, OpenError> {
        non_empty(init)?;
        Mutex::create_in(&self, init).map(Array)
    }

    /// Creates the array with `len` zeroed elements.
    pub fn create_zeroed(self, len: usize) -> Result<Array<T>, OpenError> {
        self.create(&vec![T::zeroed(); len])
    }

    /// Opens the named array, or creates it holding a copy of `init`.
    pub fn open_or_create(self, init: &[T]) -> Result<Array<T>, OpenError> {
        non_empty(init)?;
        Mutex::open_or_create_in(&self, init).map(Array)
    }
}

crate::object::serde_object!([T: Pod] Array<T>);
impl<T: Pod> Object for Array<T> {
    const KIND: ObjectKind = ObjectKind::Array;
    /// The element count `open` requires, if any.
    type Params = Option<usize>;
    fn segment(&self) -> &Segment {
        self.0.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Mutex::open_in(&b, handle, b.params).map(Array)
    }
}

impl<T: Pod> Array<T> {
    /// A builder with default options.
    pub fn builder() -> ArrayBuilder<T> {
        Builder::default()
    }

    /// An anonymous array holding a copy of `init`.
    pub fn anonymous(init: &[T]) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }

    /// Creates a named array holding a copy of `init`.
    pub fn create(name: &str, init: &[T]) -> Result<Self, OpenError> {
        Self::builder().name(name).create(init)
    }

    /// Opens the named array (any length).
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Element `i` under the lock; [`AccessError::IndexOutOfRange`] past the end.
    pub fn get(&self, i: usize) -> Result<T, AccessError> {
        let len = self.len();
        self.with_lock(|a| a.get(i).copied())?.ok_or(AccessError::IndexOutOfRange { index: i, len })
    }

    /// Sets element `i` under the lock; [`AccessError::IndexOutOfRange`] past
    /// the end (nothing is written).
    pub fn set(&self, i: usize, v: T) -> Result<(), AccessError> {
        let len = self.len();
        let written = self.with_lock(|a| a.get_mut(i).map(|slot| *slot = v))?;
        written.ok_or(AccessError::IndexOutOfRange { index: i, len })
    }

    /// A copy of all elements, taken under the lock.
    pub fn to_vec(&self) -> Result<Vec<T>, AccessError> {
        self.with_lock(|a| a.to_vec())
    }

    /// Runs `f` on the elements under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R, AccessError> {
        self.with_lock(f)
    }
}

impl<T: Pod> Deref for Array<T> {
    type Target = Mutex<[T]>;
    fn deref(&self) -> &Mutex<[T]> {
        &self.0
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array(self.0.clone())
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .field("segment", self.0.segment())
            .finish()
    }
}

/// Exclusive access to an [`Array`]'s elements as a slice; unlocks on drop.
/// An `Array` is a `Mutex<[T]>`, so its guard is the mutex's.
pub type ArrayGuard<'a, T> = MutexGuard<'a, [T]>;

// ---------------------------------------------------------------------------
// RawValue<T> / RawArray<T>
// ---------------------------------------------------------------------------

/// One `T` in shared memory with no lock: for callers who synchronise
/// themselves. Plain reads and writes that could race are `unsafe`; for
/// `u32`/`u64`/`i32`/`i64` there is an atomic view ([`RawValue::atomic`]).
pub struct RawValue<T: Pod> {
    v: View<T>,
}

/// Builder for [`RawValue`].
pub type RawValueBuilder<T> = Builder<RawValue<T>>;

impl<T: Pod> Builder<RawValue<T>> {
    /// Creates the value holding `init`.
    pub fn create(self, init: T) -> Result<RawValue<T>, OpenError> {
        Ok(RawValue { v: View::create_copy(&self, Prefix::None, std::slice::from_ref(&init))? })
    }
}

crate::object::serde_object!([T: Pod] RawValue<T>);
impl<T: Pod> Object for RawValue<T> {
    const KIND: ObjectKind = ObjectKind::RawValue;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.v.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(RawValue { v: View::open(&b, handle, Prefix::None, Some(1))? })
    }
}

impl<T: Pod> RawValue<T> {
    /// A builder with default options.
    pub fn builder() -> RawValueBuilder<T> {
        Builder::default()
    }
    /// An anonymous raw value.
    pub fn anonymous(init: T) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }
    /// Pointer to the shared `T` (aligned, valid while `self` lives).
    pub fn as_ptr(&self) -> *mut T {
        self.v.data().as_ptr()
    }
    /// Reads the value.
    ///
    /// # Safety
    /// No other thread or process may write it concurrently (a racing write is a
    /// data race). Any bit pattern is a valid `T` (`T: Pod`), so a completed
    /// write by anyone never makes the result invalid.
    pub unsafe fn read(&self) -> T {
        // SAFETY: aligned pointer into the mapping; caller excludes racing writes.
        unsafe { self.v.data().as_ptr().read() }
    }
    /// Writes the value.
    ///
    /// # Safety
    /// No other thread or process may read or write it concurrently.
    pub unsafe fn write(&self, v: T) {
        // SAFETY: aligned pointer into the mapping; caller excludes races.
        unsafe { self.v.data().as_ptr().write(v) }
    }
    /// How another process opens this value.
    pub fn handle(&self) -> Handle {
        self.v.segment().handle()
    }
    /// The segment holding the value.
    pub fn segment(&self) -> &Segment {
        self.v.segment()
    }
}

impl<T: Pod> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue { v: self.v.clone() }
    }
}

impl<T: Pod> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue")
            .field("type", &std::any::type_name::<T>())
            .field("segment", self.v.segment())
            .finish()
    }
}

// SAFETY: safe methods only hand out the pointer and atomic views; racing
// plain access is behind `unsafe` methods whose callers synchronise.
unsafe impl<T: Pod + Send> Send for RawValue<T> {}
// SAFETY: as above.
unsafe impl<T: Pod + Send> Sync for RawValue<T> {}

/// A fixed-length array of `T` in shared memory with no lock.
pub struct RawArray<T: Pod> {
    v: View<T>,
}

/// Builder for [`RawArray`].
pub type RawArrayBuilder<T> = Builder<RawArray<T>>;

impl<T: Pod> Builder<RawArray<T>> {
    /// Creates the array holding a copy of `init`.
    pub fn create(self, init: &[T]) -> Result<RawArray<T>, OpenError> {
        non_empty(init)?;
        Ok(RawArray { v: View::create_copy(&self, Prefix::None, init)? })
    }
    /// Creates the array with `len` zeroed elements.
    pub fn create_zeroed(self, len: usize) -> Result<RawArray<T>, OpenError> {
        self.create(&vec![T::zeroed(); len])
    }
}

crate::object::serde_object!([T: Pod] RawArray<T>);
impl<T: Pod> Object for RawArray<T> {
    const KIND: ObjectKind = ObjectKind::RawArray;
    /// The element count `open` requires, if any.
    type Params = Option<usize>;
    fn segment(&self) -> &Segment {
        self.v.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(RawArray { v: View::open(&b, handle, Prefix::None, b.params)? })
    }
}

impl<T: Pod> RawArray<T> {
    /// A builder with default options.
    pub fn builder() -> RawArrayBuilder<T> {
        Builder::default()
    }
    /// An anonymous raw array.
    pub fn anonymous(init: &[T]) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.v.len()
    }
    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.v.len() == 0
    }
    /// Pointer to element 0 (aligned; `len()` elements are valid while `self` lives).
    pub fn as_ptr(&self) -> *mut T {
        self.v.data().as_ptr()
    }
    /// The elements as a slice.
    ///
    /// # Safety
    /// Nobody may write the elements while the slice lives.
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: len elements lie in the mapping; caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.v.data().as_ptr(), self.v.len()) }
    }
    /// The elements as a mutable slice.
    ///
    /// # Safety
    /// Nobody else may read or write the elements while the slice lives, and no
    /// other slice from `as_slice`/`as_mut_slice` may be alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: len elements lie in the mapping; caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.v.data().as_ptr(), self.v.len()) }
    }
    /// How another process opens this array.
    pub fn handle(&self) -> Handle {
        self.v.segment().handle()
    }
    /// The segment holding the array.
    pub fn segment(&self) -> &Segment {
        self.v.segment()
    }
}

impl<T: Pod> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray { v: self.v.clone() }
    }
}

impl<T: Pod> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray").field("type", &std::any::type_name::<T>()).field("len", &self.v.len()).finish()
    }
}

// SAFETY: as for RawValue.
unsafe impl<T: Pod + Send> Send for RawArray<T> {}
// SAFETY: as for RawValue.
unsafe impl<T: Pod + Send> Sync for RawArray<T> {}

macro_rules! atomic_views {
    ($($t:ty => $a:ty),*) => {$(
        const _: () = assert!(
            std::mem::align_of::<$t>() == std::mem::align_of::<$a>()
                && std::mem::size_of::<$t>() == std::mem::size_of::<$a>(),
            "the atomic views need the integer and its atomic to share size and alignment"
        );
        impl RawValue<$t> {
            /// The value as an atomic, for lock-free cross-process access.
            pub fn atomic(&self) -> &$a {
                // SAFETY: same size and alignment as the integer, inside the
                // mapping for as long as `self`; every access through it is atomic.
                unsafe { &*(self.v.data().as_ptr() as *const $a) }
            }
        }
        impl RawArray<$t> {
            /// The elements as atomics, for lock-free cross-process access.
            pub fn atomics(&self) -> &[$a] {
                // SAFETY: as for RawValue::atomic, `len` elements.
                unsafe { std::slice::from_raw_parts(self.v.data().as_ptr() as *const $a, self.v.len()) }
            }
        }
    )*};
}

atomic_views!(
    u32 => std::sync::atomic::AtomicU32,
    u64 => std::sync::atomic::AtomicU64,
    i32 => std::sync::atomic::AtomicI32,
    i64 => std::sync::atomic::AtomicI64
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LockError;
    use std::time::Duration;

    #[test]
    fn value_roundtrip_and_clone() {
        let v = Value::<u64>::anonymous(5).unwrap();
        let w = v.clone();
        w.set(9).unwrap();
        assert_eq!(v.get().unwrap(), 9);
        assert_eq!(
            v.update(|x| {
                *x += 1;
                *x
            })
            .unwrap(),
            10
        );
        let g = v.lock().unwrap();
        assert!(matches!(w.try_lock(), Err(LockError::WouldBlock)));
        assert!(matches!(w.lock_timeout(Duration::from_millis(20)), Err(LockError::Timeout)));
        drop(g);
        assert!(w.try_lock().is_ok());
    }

    #[test]
    fn array_ops() {
        let a = Array::<f64>::anonymous(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(a.len(), 3);
        a.set(2, 7.5).unwrap();
        assert_eq!(a.set(3, 1.0), Err(AccessError::IndexOutOfRange { index: 3, len: 3 }));
        assert_eq!(a.get(2).unwrap(), 7.5);
        assert_eq!(a.get(3), Err(AccessError::IndexOutOfRange { index: 3, len: 3 }));
        a.update(|s| s.iter_mut().for_each(|x| *x *= 2.0)).unwrap();
        assert_eq!(a.to_vec().unwrap(), vec![2.0, 4.0, 15.0]);
        assert!(Array::<f64>::anonymous(&[]).is_err());
    }

    #[test]
    fn raw_atomics() {
        let r = RawArray::<u64>::builder().create_zeroed(4).unwrap();
        r.atomics()[3].fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: single-threaded test, no concurrent writers.
        assert_eq!(unsafe { r.as_slice() }, &[0, 0, 0, 2]);
        let v = RawValue::<u32>::anonymous(1).unwrap();
        v.atomic().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: single-threaded test.
        assert_eq!(unsafe { v.read() }, 2);
    }
}
