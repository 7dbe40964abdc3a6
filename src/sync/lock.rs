//! [`Lock`]: Python's `multiprocessing.Lock`, a robust cross-process lock that
//! protects no data of its own (the role `Mutex<()>` would play, which cannot
//! exist: zero-sized types are not shared). [`RLock`] is the reentrant one.
//!
//! A `Lock` is the locked view of [`crate::object`] with one padding byte
//! (`Prefix::Lock`: the 64-byte robust lock, then the byte), recorded as kind
//! `Lock` so it opens only as a `Lock`. Its behaviour on a dead holder is the
//! [`Mutex`]'s: [`LockError::OwnerDied`] hands the guard back.

use std::fmt;
use std::time::Duration;

use super::mutex::{Mutex, MutexGuard};
use super::reentrant::{ReentrantMutex, ReentrantMutexBuilder};
use crate::error::{LockError, OpenError};
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};

/// A robust lock shared between processes, like Python's
/// `multiprocessing.Lock`: `acquire` gives a guard that releases on drop.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let lock = shmproc::Lock::anonymous()?; // inherited by children, or a Process argument
/// {
///     let _held = lock.acquire()?;
///     // ... the critical section
/// }
/// assert!(lock.try_acquire().is_ok());
/// # Ok(()) }
/// ```
///
/// `Mutex<()>` itself does not compile (zero-sized types cannot be shared):
///
/// ```compile_fail
/// let m = shmproc::Mutex::<()>::anonymous(());
/// ```
#[derive(Clone)]
pub struct Lock(Mutex<u8>);

/// Builder for [`Lock`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type LockBuilder = Builder<Lock>;

/// Python's `multiprocessing.RLock`: the [`ReentrantMutex`].
pub type RLock = ReentrantMutex;

/// Builder for [`RLock`].
pub type RLockBuilder = ReentrantMutexBuilder;

/// The guard of a [`Lock`]: the lock is held until it drops.
pub struct LockGuard<'a>(MutexGuard<'a, u8>);

impl LockGuard<'_> {
    /// After [`LockError::OwnerDied`]: declares the protected state repaired
    /// (see [`MutexGuard::mark_consistent`]).
    pub fn mark_consistent(&self) {
        self.0.mark_consistent();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

impl Builder<Lock> {
    /// Creates the lock (named if a name was set, else anonymous), released.
    pub fn create(self) -> Result<Lock, OpenError> {
        Mutex::create_in(&self, &[0u8]).map(Lock)
    }

    /// Opens the named lock, or creates it.
    pub fn open_or_create(self) -> Result<Lock, OpenError> {
        Mutex::open_or_create_in(&self, &[0u8]).map(Lock)
    }
}

crate::object::serde_object!([] Lock);
impl Object for Lock {
    const KIND: ObjectKind = ObjectKind::Lock;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.0.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Mutex::open_in(&b, handle, Some(1)).map(Lock)
    }
}

type Acquired<'a> = Result<LockGuard<'a>, LockError<LockGuard<'a>>>;

fn wrap<'a>(r: Result<MutexGuard<'a, u8>, LockError<MutexGuard<'a, u8>>>) -> Acquired<'a> {
    r.map(LockGuard).map_err(|e| e.map(LockGuard))
}

impl Lock {
    /// A builder with default options (anonymous, mode 0600, 5 s open timeout).
    pub fn builder() -> LockBuilder {
        Builder::default()
    }

    /// An anonymous lock, shared with children forked later or passed as a `Process` argument.
    pub fn anonymous() -> Result<Self, OpenError> {
        Self::builder().create()
    }

    /// Creates a named lock.
    pub fn create(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).create()
    }

    /// Opens a named lock.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Takes the lock, blocking until it is free (Python's `acquire()`).
    pub fn acquire(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        wrap(self.0.lock())
    }

    /// Takes the lock, giving up with [`LockError::Timeout`] after `timeout`
    /// (Python's `acquire(timeout=...)`).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        wrap(self.0.lock_timeout(timeout))
    }

    /// Takes the lock if it is free, else [`LockError::WouldBlock`] (Python's
    /// `acquire(block=False)`).
    pub fn try_acquire(&self) -> Result<LockGuard<'_>, LockError<LockGuard<'_>>> {
        wrap(self.0.try_lock())
    }

    /// How another process opens this lock.
    pub fn handle(&self) -> Handle {
        self.0.segment().handle()
    }

    /// The segment holding the lock.
    pub fn segment(&self) -> &Segment {
        self.0.segment()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").field("segment", self.0.segment()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ShmObject;

    #[test]
    fn lock_excludes_and_reopens_as_its_own_kind() {
        let l = Lock::anonymous().unwrap();
        let g = l.acquire().unwrap();
        let other = Lock::open_handle(&l.handle()).unwrap();
        assert!(matches!(other.try_acquire(), Err(LockError::WouldBlock)));
        drop(g);
        drop(other.try_acquire().unwrap());
        assert!(matches!(Mutex::<u8>::open_handle(&l.handle()), Err(OpenError::KindMismatch { .. })));
        let r: RLock = RLock::anonymous().unwrap();
        let a = r.lock().unwrap();
        let b = r.lock().unwrap();
        drop((b, a));
    }
}
