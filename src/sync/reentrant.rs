//! [`ReentrantMutex`]: a robust lock the holding thread may take again, like
//! Python's `multiprocessing.RLock`.
//!
//! ## Algorithm
//!
//! The robust [`RawMutex`] plus a recursion count that only the holder touches.
//! `lock` first asks whether the calling thread already holds the raw lock (its
//! tid is in the word); if so it bumps the count, else it takes the raw lock and
//! sets the count to 1. A guard's drop decrements, and unlocks at 1 (a corrupt
//! count of 0 also unlocks).
//!
//! ## Layout (payload, 128 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field    | meaning                                      |
//! |-------:|-----:|----------|----------------------------------------------|
//! | 0      | 64   | `lock`   | the robust lock                              |
//! | 64     | 4    | `count`  | recursion depth of the holder (holder-only)  |
//! | 68     | 60   | reserved | zero                                         |

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::atomic::AtomicU32;
use super::mutex::map_lock_in;
use super::raw_mutex::{Acquired, RawLockError, RawMutex};
use super::{Os, Shared, SharedState};
use crate::error::{LockError, OpenError};
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

#[repr(C, align(64))]
pub(crate) struct ReentrantState {
    lock: RawMutex,
    count: AtomicU32,
    _reserved: [AtomicU32; 15],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ReentrantState>() == 128);
    assert!(std::mem::offset_of!(ReentrantState, count) == 64);
};

// SAFETY: repr(C), a RawMutex (atomics only) and AtomicU32s; every bit pattern
// is a state (a bad lock word is reported as Corrupt, a bad count is tolerated).
unsafe impl SharedState for ReentrantState {}

/// A robust mutex that the thread holding it may lock again; it is released
/// when every guard has dropped.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let r = shmproc::ReentrantMutex::anonymous()?;
/// let a = r.lock()?;
/// let b = r.lock()?; // same thread: no deadlock
/// assert_eq!(r.depth(), 2);
/// drop(b);
/// drop(a);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReentrantMutex {
    shared: Shared<ReentrantState>,
}

/// Builder for [`ReentrantMutex`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type ReentrantMutexBuilder = Builder<ReentrantMutex>;

impl Builder<ReentrantMutex> {
    /// Creates the lock, unlocked.
    pub fn create(self) -> Result<ReentrantMutex, OpenError> {
        Ok(ReentrantMutex { shared: Shared::create(&self, |_| {})? })
    }
    /// Opens the named lock, or creates it.
    pub fn open_or_create(self) -> Result<ReentrantMutex, OpenError> {
        Ok(ReentrantMutex { shared: Shared::open_or_create(&self, |_| {})? })
    }
}

crate::object::serde_object!([] ReentrantMutex);
impl Object for ReentrantMutex {
    const KIND: ObjectKind = ObjectKind::ReentrantMutex;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.shared.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(ReentrantMutex { shared: Shared::open(&b, handle)? })
    }
}

impl ReentrantMutex {
    /// A builder with default options (anonymous, mode 0600).
    pub fn builder() -> ReentrantMutexBuilder {
        Builder::default()
    }
    /// An anonymous lock, shared with children forked later.
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

    fn state(&self) -> &ReentrantState {
        self.shared.get()
    }

    fn take(&self, r: impl FnOnce() -> Result<Acquired, RawLockError>) -> Result<Acquired, RawLockError> {
        let s = self.state();
        if s.lock.held_by(&Os) {
            let c = s.count.load(Relaxed);
            s.count.store(c.saturating_add(1).max(2), Relaxed);
            return Ok(Acquired::Clean);
        }
        let a = r()?;
        s.count.store(1, Relaxed);
        Ok(a)
    }

    fn guard(&self) -> ReentrantMutexGuard<'_> {
        ReentrantMutexGuard { state: self.state(), _not_send: PhantomData }
    }

    /// Takes the lock (again, if this thread holds it), blocking until it is free.
    pub fn lock(&self) -> Result<ReentrantMutexGuard<'_>, LockError<ReentrantMutexGuard<'_>>> {
        map_lock_in(self.segment(), self.take(|| self.state().lock.lock(Deadline::NEVER)), || self.guard())
    }

    /// As [`ReentrantMutex::lock`], giving up with [`LockError::Timeout`] after `timeout`.
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ReentrantMutexGuard<'_>, LockError<ReentrantMutexGuard<'_>>> {
        map_lock_in(self.segment(), self.take(|| self.state().lock.lock(Deadline::after(Some(timeout)))), || {
            self.guard()
        })
    }

    /// Takes the lock if it is free or already held by this thread.
    pub fn try_lock(&self) -> Result<ReentrantMutexGuard<'_>, LockError<ReentrantMutexGuard<'_>>> {
        map_lock_in(self.segment(), self.take(|| self.state().lock.try_lock()), || self.guard())
    }

    /// The recursion depth if this thread holds the lock, else 0.
    pub fn depth(&self) -> u32 {
        let s = self.state();
        if s.lock.held_by(&Os) {
            s.count.load(Relaxed)
        } else {
            0
        }
    }

    /// How another process opens this lock.
    pub fn handle(&self) -> Handle {
        self.shared.segment().handle()
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Segment {
        self.shared.segment()
    }
}

impl fmt::Debug for ReentrantMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantMutex")
            .field("lock", &self.state().lock)
            .field("segment", self.shared.segment())
            .finish()
    }
}

/// One level of a held [`ReentrantMutex`]; the lock is released when the
/// outermost guard drops. Not `Send` (the lock belongs to a thread).
pub struct ReentrantMutexGuard<'a> {
    state: &'a ReentrantState,
    _not_send: PhantomData<*const ()>,
}

impl ReentrantMutexGuard<'_> {
    /// After [`LockError::OwnerDied`]: declares the protected state consistent.
    pub fn mark_consistent(&self) {
        self.state.lock.mark_consistent();
    }
}

impl Drop for ReentrantMutexGuard<'_> {
    fn drop(&mut self) {
        let c = self.state.count.load(Relaxed);
        if c > 1 {
            self.state.count.store(c - 1, Relaxed);
        } else {
            self.state.count.store(0, Relaxed);
            // SAFETY: this guard is the outermost one of the holding thread.
            unsafe { self.state.lock.unlock() }
        }
    }
}

impl fmt::Debug for ReentrantMutexGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReentrantMutexGuard").field("depth", &self.state.count.load(Relaxed)).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reenters_and_excludes_others() {
        let r = ReentrantMutex::anonymous().unwrap();
        let a = r.lock().unwrap();
        let b = r.try_lock().unwrap();
        assert_eq!(r.depth(), 2);
        let r2 = r.clone();
        assert!(std::thread::spawn(move || matches!(r2.try_lock(), Err(LockError::WouldBlock))).join().unwrap());
        drop(b);
        assert_eq!(r.depth(), 1);
        drop(a);
        assert_eq!(r.depth(), 0);
        let r3 = r.clone();
        assert!(std::thread::spawn(move || r3.try_lock().is_ok()).join().unwrap());
    }
}
