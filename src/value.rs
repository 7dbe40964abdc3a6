//! [`Value<T>`] / [`Array<T>`]: typed data in shared memory behind a robust lock,
//! and their lock-free twins [`RawValue<T>`] / [`RawArray<T>`].
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
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::time::Duration;

use bytemuck::Pod;

use crate::error::{LockError, OpenError};
use crate::header::{ObjectKind, ObjectSpec, PayloadSize, TypeInfo};
use crate::segment::{segment_options, Handle, Segment, SegmentOptions};
use crate::sync::raw_mutex::{Acquired, RawLockError, RawMutex};
use crate::time::Deadline;

const LOCK_SIZE: usize = std::mem::size_of::<RawMutex>();

fn data_offset<T>(locked: bool) -> usize {
    if locked {
        let a = std::mem::align_of::<T>();
        LOCK_SIZE.div_ceil(a) * a
    } else {
        0
    }
}

fn payload_align<T>(locked: bool) -> usize {
    if locked {
        std::mem::align_of::<T>().max(64)
    } else {
        std::mem::align_of::<T>().max(8)
    }
}

/// The part every typed object shares: a segment, where its elements start, how many.
struct Typed<T> {
    seg: Segment,
    data: NonNull<T>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Typed<T> {
    fn clone(&self) -> Self {
        Typed { seg: self.seg.clone(), data: self.data, len: self.len, _t: PhantomData }
    }
}

impl<T: Pod> Typed<T> {
    fn check_type() -> Result<(), OpenError> {
        if std::mem::size_of::<T>() == 0 {
            return Err(OpenError::invalid("zero-sized element types cannot be shared"));
        }
        if std::mem::align_of::<T>() > 4096 {
            return Err(OpenError::invalid("element alignment above 4096 is not supported"));
        }
        Ok(())
    }

    fn payload_size(len: usize, locked: bool) -> Result<usize, OpenError> {
        len.checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(data_offset::<T>(locked)))
            .ok_or_else(|| OpenError::invalid(format!("{len} elements are too many")))
    }

    fn create(opts: &SegmentOptions, kind: ObjectKind, locked: bool, init: &[T]) -> Result<Self, OpenError> {
        Self::check_type()?;
        let size = Self::payload_size(init.len(), locked)?;
        let seg = Segment::create_object(opts, kind, TypeInfo::of::<T>(), size, payload_align::<T>(locked), |p, _| {
            // SAFETY: the payload is `size` bytes, aligned for T at data_offset,
            // zero-filled (a valid unlocked lock), and not yet shared.
            unsafe {
                let dst = p.as_ptr().add(data_offset::<T>(locked)) as *mut T;
                std::ptr::copy_nonoverlapping(init.as_ptr(), dst, init.len());
            }
        })?;
        Self::from_segment(seg, locked)
    }

    fn spec(kind: ObjectKind, locked: bool, len: Option<usize>) -> Result<ObjectSpec, OpenError> {
        Self::check_type()?;
        let payload = match len {
            Some(n) => PayloadSize::Exact(Self::payload_size(n, locked)? as u64),
            None => PayloadSize::AtLeast(data_offset::<T>(locked) as u64),
        };
        Ok(ObjectSpec { kind, ty: TypeInfo::of::<T>(), payload })
    }

    fn from_segment(seg: Segment, locked: bool) -> Result<Self, OpenError> {
        let off = data_offset::<T>(locked);
        let bytes =
            seg.payload_len().checked_sub(off).ok_or_else(|| OpenError::corrupt("payload smaller than its lock"))?;
        let size = std::mem::size_of::<T>();
        if bytes % size != 0 {
            return Err(OpenError::corrupt(format!(
                "payload of {bytes} bytes is not a whole number of {size}-byte elements"
            )));
        }
        let base = seg.payload_ptr().as_ptr();
        if (base as usize) % payload_align::<T>(locked) != 0 {
            return Err(OpenError::corrupt("payload is misaligned for the element type"));
        }
        // SAFETY: off <= payload_len, so the pointer stays inside the mapping.
        let data = unsafe { NonNull::new_unchecked(base.add(off) as *mut T) };
        Ok(Typed { seg, data, len: bytes / size, _t: PhantomData })
    }

    fn lock_ref(&self) -> &RawMutex {
        // SAFETY: locked kinds start their payload with a 64-byte, 64-aligned
        // RawMutex (checked at open); it holds only atomics, so any bytes are a
        // valid value and shared access is sound.
        unsafe { &*(self.seg.payload_ptr().as_ptr() as *const RawMutex) }
    }
}

fn map_lock<G>(r: Result<Acquired, RawLockError>, guard: impl FnOnce() -> G) -> Result<G, LockError<G>> {
    match r {
        Ok(Acquired::Clean) => Ok(guard()),
        Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard())),
        Err(RawLockError::Timeout) => Err(LockError::Timeout),
        Err(RawLockError::WouldBlock) => Err(LockError::WouldBlock),
        Err(RawLockError::Unrecoverable) => Err(LockError::Unrecoverable),
        Err(RawLockError::Corrupt) => Err(LockError::Corrupt),
    }
}

/// Declares a builder type with the common segment options.
macro_rules! builder {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<T> {
            opts: SegmentOptions,
            len: Option<usize>,
            _t: PhantomData<T>,
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("opts", &self.opts).field("len", &self.len).finish()
            }
        }

        impl<T> $name<T> {
            segment_options!();
        }
    };
}

// ---------------------------------------------------------------------------
// Value<T>
// ---------------------------------------------------------------------------

/// One `T` in shared memory behind a robust cross-process lock, like Python's
/// `multiprocessing.Value`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::Value;
/// let counter = Value::<u64>::anonymous(0)?; // inherited by forked children
/// counter.update(|v| *v += 1).map_err(|e| e.to_string())?;
/// assert_eq!(counter.get().map_err(|e| e.to_string())?, 1);
/// # Ok(()) }
/// ```
pub struct Value<T: Pod> {
    t: Typed<T>,
}

builder!(
    /// Builder for [`Value`]: name, permissions, then `create`, `open` or `open_or_create`.
    ValueBuilder
);

impl<T: Pod> ValueBuilder<T> {
    /// Creates the value (named if a name was set, else anonymous) holding `init`.
    pub fn create(self, init: T) -> Result<Value<T>, OpenError> {
        Ok(Value { t: Typed::create(&self.opts, ObjectKind::Value, true, std::slice::from_ref(&init))? })
    }

    /// Opens an existing named value.
    pub fn open(self) -> Result<Value<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::Value, true, Some(1))?;
        Ok(Value { t: Typed::from_segment(Segment::open_object(&self.opts, &spec)?, true)? })
    }

    /// Opens the value behind `handle` (see [`Value::handle`]).
    pub fn open_handle(self, handle: &Handle) -> Result<Value<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::Value, true, Some(1))?;
        Ok(Value { t: Typed::from_segment(Segment::open_handle(handle, &self.opts, &spec)?, true)? })
    }

    /// Opens the named value, or creates it holding `init`.
    pub fn open_or_create(self, init: T) -> Result<Value<T>, OpenError> {
        Typed::<T>::check_type()?;
        let spec = Typed::<T>::spec(ObjectKind::Value, true, Some(1))?;
        let size = Typed::<T>::payload_size(1, true)?;
        let seg = Segment::open_or_create_object(&self.opts, &spec, size, payload_align::<T>(true), |p, _| {
            // SAFETY: fresh zeroed payload of `size` bytes, T aligned at data_offset.
            unsafe { (p.as_ptr().add(data_offset::<T>(true)) as *mut T).write(init) }
        })?;
        Ok(Value { t: Typed::from_segment(seg, true)? })
    }
}

impl<T: Pod> Value<T> {
    /// A builder with default options (anonymous, mode 0600, 5 s open timeout).
    pub fn builder() -> ValueBuilder<T> {
        ValueBuilder { opts: SegmentOptions::default(), len: None, _t: PhantomData }
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

    /// Takes the lock, blocking until it is free.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, LockError<ValueGuard<'_, T>>> {
        map_lock(self.t.lock_ref().lock(Deadline::NEVER), || self.guard())
    }

    /// Takes the lock, giving up with [`LockError::Timeout`] after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>, LockError<ValueGuard<'_, T>>> {
        map_lock(self.t.lock_ref().lock(Deadline::after(Some(timeout))), || self.guard())
    }

    /// Takes the lock if it is free, else [`LockError::WouldBlock`].
    pub fn try_lock(&self) -> Result<ValueGuard<'_, T>, LockError<ValueGuard<'_, T>>> {
        map_lock(self.t.lock_ref().try_lock(), || self.guard())
    }

    fn guard(&self) -> ValueGuard<'_, T> {
        ValueGuard::new(self.t.lock_ref(), self.t.data)
    }

    /// Reads the value under the lock.
    pub fn get(&self) -> Result<T, LockError<ValueGuard<'_, T>>> {
        self.lock().map(|g| *g)
    }

    /// Writes the value under the lock.
    pub fn set(&self, v: T) -> Result<(), LockError<ValueGuard<'_, T>>> {
        self.lock().map(|mut g| *g = v)
    }

    /// Runs `f` on the value under the lock and returns its result.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, LockError<ValueGuard<'_, T>>> {
        self.lock().map(|mut g| f(&mut g))
    }

    /// How another process opens this value ([`ValueBuilder::open_handle`]).
    pub fn handle(&self) -> Handle {
        self.t.seg.handle()
    }

    /// The segment holding the value.
    pub fn segment(&self) -> &Segment {
        &self.t.seg
    }
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value { t: self.t.clone() }
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").field("type", &std::any::type_name::<T>()).field("segment", &self.t.seg).finish()
    }
}

// SAFETY: all access to the shared `T` goes through the cross-process lock; the
// handle itself is a segment (Send + Sync) and a pointer into it.
unsafe impl<T: Pod + Send> Send for Value<T> {}
// SAFETY: as above: `&Value` only allows locked access.
unsafe impl<T: Pod + Send> Sync for Value<T> {}

/// Exclusive access to a [`Value`]'s data; unlocks on drop. A `Value`'s lock and
/// data are those of a [`crate::Mutex`], so its guard is the same type.
pub type ValueGuard<'a, T> = crate::sync::MutexGuard<'a, T>;

// ---------------------------------------------------------------------------
// Array<T>
// ---------------------------------------------------------------------------

/// A fixed-length array of `T` in shared memory behind a robust lock, like
/// Python's `multiprocessing.Array`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::Array;
/// let a = Array::<f64>::anonymous(&[1.0, 2.0, 3.0])?;
/// a.lock().map_err(|e| e.to_string())?[1] = 20.0;
/// assert_eq!(a.to_vec().map_err(|e| e.to_string())?, vec![1.0, 20.0, 3.0]);
/// # Ok(()) }
/// ```
pub struct Array<T: Pod> {
    t: Typed<T>,
}

builder!(
    /// Builder for [`Array`]: name, permissions, then `create`, `open` or `open_or_create`.
    ArrayBuilder
);

impl<T: Pod> ArrayBuilder<T> {
    /// On `open`: require exactly this many elements ([`OpenError::SizeMismatch`] otherwise).
    pub fn len(mut self, len: usize) -> Self {
        self.len = Some(len);
        self
    }

    /// Creates the array holding a copy of `init`.
    pub fn create(self, init: &[T]) -> Result<Array<T>, OpenError> {
        if init.is_empty() {
            return Err(OpenError::invalid("an Array needs at least one element"));
        }
        Ok(Array { t: Typed::create(&self.opts, ObjectKind::Array, true, init)? })
    }

    /// Creates the array with `len` zeroed elements.
    pub fn create_zeroed(self, len: usize) -> Result<Array<T>, OpenError> {
        self.create(&vec![T::zeroed(); len])
    }

    /// Opens an existing named array.
    pub fn open(self) -> Result<Array<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::Array, true, self.len)?;
        Ok(Array { t: Typed::from_segment(Segment::open_object(&self.opts, &spec)?, true)? })
    }

    /// Opens the array behind `handle`.
    pub fn open_handle(self, handle: &Handle) -> Result<Array<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::Array, true, self.len)?;
        Ok(Array { t: Typed::from_segment(Segment::open_handle(handle, &self.opts, &spec)?, true)? })
    }

    /// Opens the named array, or creates it holding a copy of `init`.
    pub fn open_or_create(self, init: &[T]) -> Result<Array<T>, OpenError> {
        if init.is_empty() {
            return Err(OpenError::invalid("an Array needs at least one element"));
        }
        Typed::<T>::check_type()?;
        let spec = Typed::<T>::spec(ObjectKind::Array, true, Some(init.len()))?;
        let size = Typed::<T>::payload_size(init.len(), true)?;
        let seg = Segment::open_or_create_object(&self.opts, &spec, size, payload_align::<T>(true), |p, _| {
            // SAFETY: fresh zeroed payload sized for init.len() elements.
            unsafe {
                let dst = p.as_ptr().add(data_offset::<T>(true)) as *mut T;
                std::ptr::copy_nonoverlapping(init.as_ptr(), dst, init.len());
            }
        })?;
        Ok(Array { t: Typed::from_segment(seg, true)? })
    }
}

impl<T: Pod> Array<T> {
    /// A builder with default options.
    pub fn builder() -> ArrayBuilder<T> {
        ArrayBuilder { opts: SegmentOptions::default(), len: None, _t: PhantomData }
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

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.t.len
    }

    /// Never true: arrays have at least one element.
    pub fn is_empty(&self) -> bool {
        self.t.len == 0
    }

    /// Takes the lock, blocking until it is free.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>, LockError<ArrayGuard<'_, T>>> {
        map_lock(self.t.lock_ref().lock(Deadline::NEVER), || self.guard())
    }

    /// Takes the lock, giving up with [`LockError::Timeout`] after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>, LockError<ArrayGuard<'_, T>>> {
        map_lock(self.t.lock_ref().lock(Deadline::after(Some(timeout))), || self.guard())
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Result<ArrayGuard<'_, T>, LockError<ArrayGuard<'_, T>>> {
        map_lock(self.t.lock_ref().try_lock(), || self.guard())
    }

    fn guard(&self) -> ArrayGuard<'_, T> {
        ArrayGuard { lock: self.t.lock_ref(), data: self.t.data, len: self.t.len, _v: PhantomData }
    }

    /// Element `i` under the lock (`Ok(None)` if out of range).
    pub fn get(&self, i: usize) -> Result<Option<T>, LockError<ArrayGuard<'_, T>>> {
        self.lock().map(|g| g.get(i).copied())
    }

    /// Sets element `i` under the lock; returns false if `i` is out of range.
    pub fn set(&self, i: usize, v: T) -> Result<bool, LockError<ArrayGuard<'_, T>>> {
        self.lock().map(|mut g| match g.get_mut(i) {
            Some(slot) => {
                *slot = v;
                true
            }
            None => false,
        })
    }

    /// A copy of all elements, taken under the lock.
    pub fn to_vec(&self) -> Result<Vec<T>, LockError<ArrayGuard<'_, T>>> {
        self.lock().map(|g| g.to_vec())
    }

    /// Runs `f` on the elements under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R, LockError<ArrayGuard<'_, T>>> {
        self.lock().map(|mut g| f(&mut g))
    }

    /// How another process opens this array.
    pub fn handle(&self) -> Handle {
        self.t.seg.handle()
    }

    /// The segment holding the array.
    pub fn segment(&self) -> &Segment {
        &self.t.seg
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array { t: self.t.clone() }
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.t.len)
            .field("segment", &self.t.seg)
            .finish()
    }
}

// SAFETY: as for Value: all element access is under the cross-process lock.
unsafe impl<T: Pod + Send> Send for Array<T> {}
// SAFETY: as for Value.
unsafe impl<T: Pod + Send> Sync for Array<T> {}

/// Exclusive access to an [`Array`]'s elements as a slice; unlocks on drop.
pub struct ArrayGuard<'a, T: Pod> {
    lock: &'a RawMutex,
    data: NonNull<T>,
    len: usize,
    _v: PhantomData<&'a mut [T]>,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// After [`LockError::OwnerDied`]: declares the repaired data consistent.
    pub fn mark_consistent(&self) {
        self.lock.mark_consistent();
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: lock held; `len` elements lie in the mapping (validated at open).
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: lock held exclusively; see Deref.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while its lock is held.
        unsafe { self.lock.unlock() }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}

// ---------------------------------------------------------------------------
// RawValue<T> / RawArray<T>
// ---------------------------------------------------------------------------

/// One `T` in shared memory with no lock: for callers who synchronise
/// themselves. Plain reads and writes that could race are `unsafe`; for
/// `u32`/`u64`/`i32`/`i64` there is an atomic view ([`RawValue::atomic`]).
pub struct RawValue<T: Pod> {
    t: Typed<T>,
}

builder!(
    /// Builder for [`RawValue`].
    RawValueBuilder
);

impl<T: Pod> RawValueBuilder<T> {
    /// Creates the value holding `init`.
    pub fn create(self, init: T) -> Result<RawValue<T>, OpenError> {
        Ok(RawValue { t: Typed::create(&self.opts, ObjectKind::RawValue, false, std::slice::from_ref(&init))? })
    }
    /// Opens an existing named raw value.
    pub fn open(self) -> Result<RawValue<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::RawValue, false, Some(1))?;
        Ok(RawValue { t: Typed::from_segment(Segment::open_object(&self.opts, &spec)?, false)? })
    }
    /// Opens the raw value behind `handle`.
    pub fn open_handle(self, handle: &Handle) -> Result<RawValue<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::RawValue, false, Some(1))?;
        Ok(RawValue { t: Typed::from_segment(Segment::open_handle(handle, &self.opts, &spec)?, false)? })
    }
}

impl<T: Pod> RawValue<T> {
    /// A builder with default options.
    pub fn builder() -> RawValueBuilder<T> {
        RawValueBuilder { opts: SegmentOptions::default(), len: None, _t: PhantomData }
    }
    /// An anonymous raw value.
    pub fn anonymous(init: T) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }
    /// Pointer to the shared `T` (aligned, valid while `self` lives).
    pub fn as_ptr(&self) -> *mut T {
        self.t.data.as_ptr()
    }
    /// Reads the value.
    ///
    /// # Safety
    /// No other thread or process may write it concurrently (a racing write is a
    /// data race). Any bit pattern is a valid `T` (`T: Pod`), so a completed
    /// write by anyone never makes the result invalid.
    pub unsafe fn read(&self) -> T {
        // SAFETY: aligned pointer into the mapping; caller excludes racing writes.
        unsafe { self.t.data.as_ptr().read() }
    }
    /// Writes the value.
    ///
    /// # Safety
    /// No other thread or process may read or write it concurrently.
    pub unsafe fn write(&self, v: T) {
        // SAFETY: aligned pointer into the mapping; caller excludes races.
        unsafe { self.t.data.as_ptr().write(v) }
    }
    /// How another process opens this value.
    pub fn handle(&self) -> Handle {
        self.t.seg.handle()
    }
    /// The segment holding the value.
    pub fn segment(&self) -> &Segment {
        &self.t.seg
    }
}

impl<T: Pod> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        RawValue { t: self.t.clone() }
    }
}

impl<T: Pod> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue").field("type", &std::any::type_name::<T>()).field("segment", &self.t.seg).finish()
    }
}

// SAFETY: safe methods only hand out the pointer and atomic views; racing
// plain access is behind `unsafe` methods whose callers synchronise.
unsafe impl<T: Pod + Send> Send for RawValue<T> {}
// SAFETY: as above.
unsafe impl<T: Pod + Send> Sync for RawValue<T> {}

/// A fixed-length array of `T` in shared memory with no lock.
pub struct RawArray<T: Pod> {
    t: Typed<T>,
}

builder!(
    /// Builder for [`RawArray`].
    RawArrayBuilder
);

impl<T: Pod> RawArrayBuilder<T> {
    /// On `open`: require exactly this many elements.
    pub fn len(mut self, len: usize) -> Self {
        self.len = Some(len);
        self
    }
    /// Creates the array holding a copy of `init`.
    pub fn create(self, init: &[T]) -> Result<RawArray<T>, OpenError> {
        if init.is_empty() {
            return Err(OpenError::invalid("an array needs at least one element"));
        }
        Ok(RawArray { t: Typed::create(&self.opts, ObjectKind::RawArray, false, init)? })
    }
    /// Creates the array with `len` zeroed elements.
    pub fn create_zeroed(self, len: usize) -> Result<RawArray<T>, OpenError> {
        self.create(&vec![T::zeroed(); len])
    }
    /// Opens an existing named raw array.
    pub fn open(self) -> Result<RawArray<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::RawArray, false, self.len)?;
        Ok(RawArray { t: Typed::from_segment(Segment::open_object(&self.opts, &spec)?, false)? })
    }
    /// Opens the raw array behind `handle`.
    pub fn open_handle(self, handle: &Handle) -> Result<RawArray<T>, OpenError> {
        let spec = Typed::<T>::spec(ObjectKind::RawArray, false, self.len)?;
        Ok(RawArray { t: Typed::from_segment(Segment::open_handle(handle, &self.opts, &spec)?, false)? })
    }
}

impl<T: Pod> RawArray<T> {
    /// A builder with default options.
    pub fn builder() -> RawArrayBuilder<T> {
        RawArrayBuilder { opts: SegmentOptions::default(), len: None, _t: PhantomData }
    }
    /// An anonymous raw array.
    pub fn anonymous(init: &[T]) -> Result<Self, OpenError> {
        Self::builder().create(init)
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.t.len
    }
    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.t.len == 0
    }
    /// Pointer to element 0 (aligned; `len()` elements are valid while `self` lives).
    pub fn as_ptr(&self) -> *mut T {
        self.t.data.as_ptr()
    }
    /// The elements as a slice.
    ///
    /// # Safety
    /// Nobody may write the elements while the slice lives.
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY: len elements lie in the mapping; caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.t.data.as_ptr(), self.t.len) }
    }
    /// The elements as a mutable slice.
    ///
    /// # Safety
    /// Nobody else may read or write the elements while the slice lives, and no
    /// other slice from `as_slice`/`as_mut_slice` may be alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: len elements lie in the mapping; caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.t.data.as_ptr(), self.t.len) }
    }
    /// How another process opens this array.
    pub fn handle(&self) -> Handle {
        self.t.seg.handle()
    }
    /// The segment holding the array.
    pub fn segment(&self) -> &Segment {
        &self.t.seg
    }
}

impl<T: Pod> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        RawArray { t: self.t.clone() }
    }
}

impl<T: Pod> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray").field("type", &std::any::type_name::<T>()).field("len", &self.t.len).finish()
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
                unsafe { &*(self.t.data.as_ptr() as *const $a) }
            }
        }
        impl RawArray<$t> {
            /// The elements as atomics, for lock-free cross-process access.
            pub fn atomics(&self) -> &[$a] {
                // SAFETY: as for RawValue::atomic, `len` elements.
                unsafe { std::slice::from_raw_parts(self.t.data.as_ptr() as *const $a, self.t.len) }
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

macro_rules! shm_object {
    ($($ty:ident => $kind:ident),*) => {$(
        impl<T: Pod> crate::segment::ShmObject for $ty<T> {
            const KIND: ObjectKind = ObjectKind::$kind;
            fn handle(&self) -> Handle {
                self.t.seg.handle()
            }
            fn open_handle(handle: &Handle) -> Result<Self, OpenError> {
                $ty::builder().open_handle(handle)
            }
            fn segment(&self) -> &Segment {
                &self.t.seg
            }
        }
    )*};
}

shm_object!(Value => Value, Array => Array, RawValue => RawValue, RawArray => RawArray);

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(a.set(2, 7.5).unwrap());
        assert!(!a.set(3, 1.0).unwrap());
        assert_eq!(a.get(2).unwrap(), Some(7.5));
        assert_eq!(a.get(3).unwrap(), None);
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

    #[test]
    fn zero_sized_is_rejected() {
        assert!(matches!(Value::<()>::anonymous(()), Err(OpenError::InvalidArgument { .. })));
    }
}
