//! The raw lock embedded in [`crate::Value`] and [`crate::Array`].
//!
//! INTERIM: a three-state futex lock (0 unlocked, 1 locked, 2 locked with
//! waiters), the classic design of Drepper's "Futexes Are Tricky". It is not yet
//! robust to owner death; the synchronization work replaces it in place, keeping
//! this 64-byte footprint and "all zero bytes = unlocked".

use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys;
use crate::time::Deadline;

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Normally.
    Clean,
    /// The previous owner died holding it; the data may be inconsistent.
    OwnerDied,
}

/// Why a lock was not acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawLockError {
    Timeout,
    WouldBlock,
    Unrecoverable,
    Corrupt,
}

/// A lock word padded to one cache line. All-zero bytes are a valid unlocked lock.
#[repr(C, align(64))]
pub(crate) struct RawMutex {
    state: AtomicU32,
    _reserved: [AtomicU32; 15],
}

const _: () = assert!(std::mem::size_of::<RawMutex>() == 64);

impl RawMutex {
    #[inline]
    pub(crate) fn try_lock(&self) -> Result<Acquired, RawLockError> {
        match self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(Acquired::Clean),
            Err(LOCKED | CONTENDED) => Err(RawLockError::WouldBlock),
            Err(_) => Err(RawLockError::Corrupt),
        }
    }

    #[inline]
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<Acquired, RawLockError> {
        match self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(Acquired::Clean),
            Err(_) => self.lock_contended(deadline),
        }
    }

    #[cold]
    fn lock_contended(&self, deadline: Deadline) -> Result<Acquired, RawLockError> {
        let mut spins = 0;
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s > CONTENDED {
                return Err(RawLockError::Corrupt);
            }
            if s == UNLOCKED {
                if self.state.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return Ok(Acquired::Clean);
                }
                continue;
            }
            if spins < 100 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if self.state.swap(CONTENDED, Ordering::Acquire) == UNLOCKED {
                return Ok(Acquired::Clean);
            }
            if sys::futex_wait(&self.state, CONTENDED, deadline.at()) == sys::WaitOutcome::TimedOut {
                return Err(RawLockError::Timeout);
            }
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The caller holds the lock (a guard it obtained from `lock`/`try_lock`).
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            sys::futex_wake(&self.state, 1);
        }
    }

    /// Marks data consistent after [`Acquired::OwnerDied`]. No-op for this lock.
    pub(crate) fn mark_consistent(&self) {}
}
