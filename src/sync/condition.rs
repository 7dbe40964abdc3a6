//! [`Condition`]: a condition variable across processes, used with a shmproc [`Mutex`].
//!
//! ## Algorithm
//!
//! A futex sequence counter, as std's futex condvar. A waiter reads `seq` while
//! it holds the mutex, registers in `waiters`, unlocks, and sleeps while `seq`
//! still has the value it read; then it takes the mutex again. `notify_*`
//! increments `seq` (so a waiter between its unlock and its sleep does not go
//! to sleep) and wakes one or all sleepers if `waiters` is non-zero. Waits may
//! wake spuriously; use [`Condition::wait_while`] or re-check the predicate. A
//! wrap of `seq` by exactly 2^32 notifications between a waiter's read and its
//! sleep would lose one wake-up, as in std.
//!
//! ## Layout (payload, 64 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field     | meaning                               |
//! |-------:|-----:|-----------|---------------------------------------|
//! | 0      | 4    | `seq`     | notification counter (futex word)     |
//! | 4      | 4    | `waiters` | processes (about to be) sleeping      |
//! | 8      | 56   | reserved  | zero                                  |

use std::fmt;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use bytemuck::Pod;

use super::atomic::AtomicU32;
use super::mutex::{Mutex, MutexGuard};
use super::raw_mutex::{Acquired, RawLockError};
use super::{Os, Platform, Shared, SharedState, Wait};
use crate::error::{LockError, OpenError};
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

#[repr(C, align(64))]
pub(crate) struct CondState {
    seq: AtomicU32,
    waiters: AtomicU32,
    _reserved: [AtomicU32; 14],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<CondState>() == 64);
    assert!(std::mem::offset_of!(CondState, waiters) == 4);
};

// SAFETY: repr(C), only AtomicU32s, align 64; any counter value is valid.
unsafe impl SharedState for CondState {}

/// A condition variable shared between processes. Pair it with a [`Mutex`]
/// protecting the condition's data (any mutex may be used, one at a time).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use shmproc::{Condition, Mutex};
/// let m = Mutex::<u32>::anonymous(0)?;
/// let cv = Condition::anonymous()?;
/// let g = m.lock().map_err(|e| e.to_string())?;
/// let (g, timed_out) = cv.wait_timeout(g, Duration::from_millis(1)).map_err(|e| e.to_string())?;
/// assert!(timed_out && *g == 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Condition {
    shared: Shared<CondState>,
}

/// Builder for [`Condition`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type ConditionBuilder = Builder<Condition>;

impl Builder<Condition> {
    /// Creates the condition variable.
    pub fn create(self) -> Result<Condition, OpenError> {
        Ok(Condition { shared: Shared::create(&self, |_| {})? })
    }
    /// Opens the named condition variable, or creates it.
    pub fn open_or_create(self) -> Result<Condition, OpenError> {
        Ok(Condition { shared: Shared::open_or_create(&self, |_| {})? })
    }
}

crate::object::serde_object!([] Condition);
impl Object for Condition {
    const KIND: ObjectKind = ObjectKind::Condition;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.shared.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(Condition { shared: Shared::open(&b, handle)? })
    }
}

type Relock<'a, T> = Result<MutexGuard<'a, T>, LockError<MutexGuard<'a, T>>>;

impl Condition {
    /// A builder with default options (anonymous, mode 0600).
    pub fn builder() -> ConditionBuilder {
        Builder::default()
    }
    /// An anonymous condition variable, shared with children forked later.
    pub fn anonymous() -> Result<Self, OpenError> {
        Self::builder().create()
    }
    /// Creates a named condition variable.
    pub fn create(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).create()
    }
    /// Opens a named condition variable.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Unlocks `guard`'s mutex, sleeps until notified (or `deadline`), relocks.
    /// Returns the guard and whether the deadline passed.
    fn wait_until<'a, T: Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Deadline,
    ) -> Result<(MutexGuard<'a, T>, bool), LockError<MutexGuard<'a, T>>> {
        let s = self.shared.get();
        let lock = guard.lock;
        let seq = s.seq.load(SeqCst);
        s.waiters.fetch_add(1, SeqCst);
        // SAFETY: `guard` proves this thread holds `lock`; it is not dropped
        // while unlocked (we keep it and only hand it back after relocking,
        // or forget it if relocking fails).
        unsafe { lock.unlock() };
        // In slices: `notify_one` wakes one sleeper, and if that one is
        // killed before it acts, the notification must not be lost while the
        // others sleep on. After a slice, a `seq` that moved ends the wait
        // too (at worst a spurious wake-up, which callers allow for), and so
        // does a truncated segment (the relock below reports it).
        // The mutex's pages are not touched while we sleep on the condition's
        // word: read its lock word first, so that a truncation of the
        // mutex's segment alone faults here and is seen too.
        let lost = || {
            std::hint::black_box(lock.state());
            guard.seg.lost() || self.shared.segment().lost()
        };
        let r = loop {
            let r = Os.wait(&s.seq, seq, deadline.min_after(crate::wait::PEER_SLICE));
            if r != Wait::TimedOut || deadline.expired() || s.seq.load(SeqCst) != seq || lost() {
                break r;
            }
        };
        s.waiters.fetch_sub(1, Relaxed);
        let timed_out = r == Wait::TimedOut && deadline.expired();
        let relocked = lock.lock(Deadline::NEVER);
        if relocked.is_ok() && lost() {
            // The mutex's or the condition's segment was truncated under us:
            // the guard (dropped here) unlocks the private zeros.
            return Err(LockError::Corrupt);
        }
        match relocked {
            Ok(Acquired::Clean) => Ok((guard, timed_out)),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard)),
            Err(e) => {
                // The lock is not held: the guard must not unlock it.
                std::mem::forget(guard);
                Err(match e {
                    RawLockError::Unrecoverable => LockError::Unrecoverable,
                    RawLockError::Corrupt => LockError::Corrupt,
                    RawLockError::Timeout => LockError::Timeout,
                    RawLockError::WouldBlock => LockError::WouldBlock,
                })
            }
        }
    }

    /// Releases the mutex behind `guard`, waits for a notification, and takes
    /// the mutex again. May wake spuriously. If the mutex's holder died in the
    /// meantime, the guard comes back in [`LockError::OwnerDied`].
    ///
    /// Releasing counts as unlocking: a guard obtained through `OwnerDied` must
    /// be marked consistent before it waits, or the mutex becomes
    /// [`LockError::Unrecoverable`] (as with a pthread robust mutex).
    pub fn wait<'a, T: Pod>(&self, guard: MutexGuard<'a, T>) -> Relock<'a, T> {
        self.wait_until(guard, Deadline::NEVER).map(|(g, _)| g)
    }

    /// As [`Condition::wait`], for at most `timeout`; returns the guard and
    /// `true` if the timeout passed (never before `timeout`).
    ///
    /// The timeout bounds the wait for a notification. Re-taking the mutex
    /// afterwards has no deadline (as with `std::sync::Condvar`), so a live
    /// process that keeps holding the mutex delays the return; a dead holder is
    /// detected and reported as [`LockError::OwnerDied`].
    pub fn wait_timeout<'a, T: Pod>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(MutexGuard<'a, T>, bool), LockError<MutexGuard<'a, T>>> {
        self.wait_until(guard, Deadline::after(Some(timeout)))
    }

    /// Waits while `condition` returns true (checked under the mutex).
    pub fn wait_while<'a, T: Pod>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Relock<'a, T> {
        while condition(&mut guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// Waits while `condition` returns true, for at most `timeout` in all;
    /// returns the guard and `true` if it gave up because of the timeout.
    pub fn wait_timeout_while<'a, T: Pod>(
        &self,
        mut guard: MutexGuard<'a, T>,
        timeout: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<(MutexGuard<'a, T>, bool), LockError<MutexGuard<'a, T>>> {
        let deadline = Deadline::after(Some(timeout));
        while condition(&mut guard) {
            let (g, timed_out) = self.wait_until(guard, deadline)?;
            guard = g;
            if timed_out {
                let still = condition(&mut guard);
                return Ok((guard, still));
            }
        }
        Ok((guard, false))
    }

    /// Wakes one waiter (in any process).
    pub fn notify_one(&self) {
        let s = self.shared.get();
        s.seq.fetch_add(1, SeqCst);
        if s.waiters.load(SeqCst) != 0 {
            Os.wake(&s.seq, 1);
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        let s = self.shared.get();
        s.seq.fetch_add(1, SeqCst);
        if s.waiters.load(SeqCst) != 0 {
            Os.wake(&s.seq, i32::MAX as u32);
        }
    }

    /// How another process opens this condition variable.
    pub fn handle(&self) -> Handle {
        self.shared.segment().handle()
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Segment {
        self.shared.segment()
    }

    /// Convenience: locks `mutex` and waits until `ready` returns true for its data.
    pub fn wait_for<'a, T: Pod>(&self, mutex: &'a Mutex<T>, mut ready: impl FnMut(&mut T) -> bool) -> Relock<'a, T> {
        let g = mutex.lock()?;
        self.wait_while(g, |t| !ready(t))
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").field("segment", self.shared.segment()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A notification whose wake-up went to a waiter that was killed before
    /// it acted still ends the other waiters' waits: `seq` is moved here by
    /// hand, with no wake-up at all, and a waiter with no deadline returns.
    #[test]
    fn a_notification_whose_wake_up_was_lost_still_ends_a_wait() {
        let m = Mutex::<u32>::anonymous(0).unwrap();
        let cv = Condition::anonymous().unwrap();
        let (m2, cv2) = (m.clone(), cv.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let g = m2.lock().unwrap();
            let g = cv2.wait(g).unwrap();
            drop(g);
            let _ = tx.send(());
        });
        let s = cv.shared.get();
        while s.waiters.load(SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        s.seq.fetch_add(1, SeqCst);
        let got = rx.recv_timeout(Duration::from_secs(10));
        if got.is_err() {
            cv.notify_all(); // unstick the waiter before failing
        }
        assert!(got.is_ok(), "a waiter slept on past a notification it was not woken for");
    }

    #[test]
    fn notify_between_threads() {
        let m = Mutex::<u32>::anonymous(0).unwrap();
        let cv = Condition::anonymous().unwrap();
        let (m2, cv2) = (m.clone(), cv.clone());
        let h = std::thread::spawn(move || {
            let g = m2.lock().unwrap();
            let (g, timed_out) = cv2.wait_timeout_while(g, Duration::from_secs(10), |v| *v < 3).unwrap();
            (*g, timed_out)
        });
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(5));
            *m.lock().unwrap() += 1;
            cv.notify_all();
        }
        assert_eq!(h.join().unwrap(), (3, false));
        let t = Instant::now();
        let (g, timed_out) = cv.wait_timeout(m.lock().unwrap(), Duration::from_millis(20)).unwrap();
        assert!(timed_out && t.elapsed() >= Duration::from_millis(20));
        drop(g);
    }
}
