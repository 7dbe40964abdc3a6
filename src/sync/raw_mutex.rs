//! The robust cross-process lock embedded in [`crate::Mutex`], [`crate::Value`],
//! [`crate::Array`] and [`crate::ReentrantMutex`].
//!
//! ## Algorithm
//!
//! A futex mutex in the style of Drepper's "Futexes Are Tricky" (mutex 2), whose
//! lock word holds the owner's *thread id* instead of a bare "locked" flag, as the
//! kernel's own `FUTEX_OWNER_DIED` protocol does, but without the kernel's
//! robust list (see `SAFETY.md` section 5 for why):
//!
//! * lock: one `compare_exchange(0, tid)`; then one relaxed store of the owner's
//!   identity stamp (tid and `/proc` start time) next to the word.
//! * unlock: clear the stamp, one `swap(0)`; `FUTEX_WAKE` one waiter only if the
//!   `WAITERS` bit was set.
//! * contention: back off briefly ([`crate::wait::Backoff`]), set `WAITERS`,
//!   and sleep on the futex in slices of [`MUTEX_SLICE`](crate::wait::MUTEX_SLICE)
//!   (never past the caller's deadline).
//!   After each slice the waiter checks whether the owner still runs, using the
//!   stamp so that a recycled tid cannot fool it. A dead owner's lock is taken
//!   over with one `compare_exchange` that also sets `INCONSISTENT`: the new
//!   holder gets [`Acquired::OwnerDied`].
//! * The holder of an `INCONSISTENT` lock either calls
//!   [`RawMutex::mark_consistent`] or, on unlock, the word becomes
//!   `NOT_RECOVERABLE` for good and every waiter is woken to see it.
//!
//! ## Layout (64 bytes, `#[repr(C, align(64))]`, all zero = unlocked)
//!
//! | offset | size | field      | meaning                                                   |
//! |-------:|-----:|------------|-----------------------------------------------------------|
//! | 0      | 4    | `state`    | futex word: bits 0-29 owner tid, bit 30 `INCONSISTENT`, bit 31 `WAITERS`; `0x3FFF_FFFF` = `NOT_RECOVERABLE` |
//! | 4      | 4    | reserved   | zero                                                      |
//! | 8      | 8    | `owner`    | identity stamp: `start_time << 22 \| tid`, 0 when unknown |
//! | 16     | 48   | reserved   | zero                                                      |
//!
//! ## Memory ordering
//!
//! The successful lock CAS is `Acquire` and the unlock swap `Release`: the data
//! the lock protects is published by the swap and received by the next CAS, in
//! this or any other process. The stamp is advisory (it only feeds the
//! liveness check) and uses relaxed accesses; the state word decides ownership.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::atomic::{AtomicU32, AtomicU64};
use super::{Os, Platform, Wait};
use crate::sys::Identity;
use crate::time::Deadline;
use crate::wait::Backoff;

/// Bits of the state word holding the owner's tid.
pub(crate) const TID_MASK: u32 = 0x3FFF_FFFF;
/// The holder took the lock from a dead owner and has not marked it consistent.
pub(crate) const INCONSISTENT: u32 = 1 << 30;
/// Someone may be sleeping on the futex: unlock must wake.
pub(crate) const WAITERS: u32 = 1 << 31;
/// Terminal state: a holder died and the next one never repaired the data.
pub(crate) const NOT_RECOVERABLE: u32 = TID_MASK;
/// Linux's `PID_MAX_LIMIT`: every real tid is below it.
pub(crate) const MAX_TID: u32 = 1 << 22;
/// Attempts `try_lock` makes while the word keeps changing under its CAS.
const TRY_LOCK_RETRIES: u32 = 64;

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

/// What a state word says.
enum Word {
    Unlocked,
    Held { tid: u32 },
    NotRecoverable,
    Corrupt,
}

#[inline]
fn classify(s: u32) -> Word {
    if s == 0 {
        return Word::Unlocked;
    }
    if s == NOT_RECOVERABLE {
        return Word::NotRecoverable;
    }
    let tid = s & TID_MASK;
    if tid == 0 || tid >= MAX_TID {
        Word::Corrupt
    } else {
        Word::Held { tid }
    }
}

#[inline]
fn pack(me: Identity) -> u64 {
    (me.start_time << 22) | u64::from(me.id & (MAX_TID - 1))
}

/// A robust lock padded to one cache line. All-zero bytes are a valid unlocked lock.
#[repr(C, align(64))]
pub(crate) struct RawMutex {
    state: AtomicU32,
    _reserved0: AtomicU32,
    owner: AtomicU64,
    _reserved: [AtomicU64; 6],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<RawMutex>() == 64);
    assert!(std::mem::align_of::<RawMutex>() == 64);
    assert!(std::mem::offset_of!(RawMutex, state) == 0);
    assert!(std::mem::offset_of!(RawMutex, owner) == 8);
};

impl fmt::Debug for RawMutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMutex").field("state", &format_args!("{:#x}", self.state.load(Relaxed))).finish()
    }
}

impl RawMutex {
    /// A fresh unlocked lock (heap twin for tests; segments start zeroed).
    #[cfg(any(test, loom))]
    pub(crate) fn new() -> RawMutex {
        RawMutex {
            state: AtomicU32::new(0),
            _reserved0: AtomicU32::new(0),
            owner: AtomicU64::new(0),
            _reserved: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The futex word (the condition variable reads it between slices to
    /// notice a truncated segment; tests and diagnostics).
    pub(crate) fn state(&self) -> u32 {
        self.state.load(Relaxed)
    }

    #[inline]
    fn stamp(&self, me: Identity) {
        self.owner.store(pack(me), Relaxed);
    }

    /// Takes the lock if it is free (or its owner is proven dead). `WouldBlock`
    /// also when the word kept changing under 64 attempts in a row.
    #[inline]
    pub(crate) fn try_lock(&self) -> Result<Acquired, RawLockError> {
        self.try_lock_with(&Os)
    }

    /// [`RawMutex::try_lock`] on an explicit platform.
    pub(crate) fn try_lock_with<P: Platform>(&self, p: &P) -> Result<Acquired, RawLockError> {
        let me = p.me();
        // Bounded: an honest word settles within a few tries; one that keeps
        // moving under our CASes (a peer scribbling it) must not keep a
        // non-blocking call spinning.
        for _ in 0..TRY_LOCK_RETRIES {
            // Acquire: a stamp read below is no older than this word.
            let s = self.state.load(Acquire);
            match classify(s) {
                Word::Unlocked => match self.state.compare_exchange(0, me.id, Acquire, Relaxed) {
                    Ok(_) => {
                        self.stamp(me);
                        return Ok(Acquired::Clean);
                    }
                    Err(_) => continue,
                },
                Word::NotRecoverable => return Err(RawLockError::Unrecoverable),
                Word::Corrupt => return Err(RawLockError::Corrupt),
                Word::Held { tid } => {
                    if self.owner_dead(p, me, tid) {
                        match self.take_over(s, me) {
                            Some(r) => return Ok(r),
                            None => continue,
                        }
                    }
                    return Err(RawLockError::WouldBlock);
                }
            }
        }
        Err(RawLockError::WouldBlock)
    }

    /// Takes the lock, waiting until `deadline`.
    #[inline]
    pub(crate) fn lock(&self, deadline: Deadline) -> Result<Acquired, RawLockError> {
        self.lock_with(&Os, deadline)
    }

    /// [`RawMutex::lock`] on an explicit platform.
    #[inline]
    pub(crate) fn lock_with<P: Platform>(&self, p: &P, deadline: Deadline) -> Result<Acquired, RawLockError> {
        let me = p.me();
        if self.state.compare_exchange(0, me.id, Acquire, Relaxed).is_ok() {
            self.stamp(me);
            return Ok(Acquired::Clean);
        }
        self.lock_contended(p, me, deadline)
    }

    /// The identity to check for the owner whose tid is in the word: the stamp
    /// if it names that tid, else "tid only" (start time 0 = unknown).
    fn owner_identity(&self, tid: u32) -> Identity {
        let o = self.owner.load(Relaxed);
        if (o & u64::from(MAX_TID - 1)) as u32 == tid {
            Identity { id: tid, start_time: o >> 22 }
        } else {
            Identity { id: tid, start_time: 0 }
        }
    }

    /// Whether a word naming `tid` names `me` itself, and not a thread that
    /// held the lock, died, and whose tid the kernel has since given to `me`:
    /// the owner's stamp (start time) must then be `me`'s too. An unknown
    /// stamp on either side counts as `me` (the old, tid-only answer).
    fn names(&self, tid: u32, me: Identity) -> bool {
        if tid != me.id {
            return false;
        }
        let owner = self.owner_identity(tid).start_time;
        owner == 0 || me.start_time == 0 || owner == me.start_time
    }

    /// Whether the owner whose tid is in the word is proven dead, so that
    /// `me` may take the lock over: not `me` itself ([`RawMutex::names`]),
    /// not alive by its stamp, and not a live thread of this process. The
    /// last is checked whatever the stamp says: only a peer forging the stamp
    /// can make one of our live threads look dead, and taking its lock would
    /// give this process two guards (two `&mut T`). Its cost: a dead owner
    /// whose tid the kernel has since given to another of our threads keeps
    /// the lock until that thread exits (or uses the lock itself).
    fn owner_dead<P: Platform>(&self, p: &P, me: Identity, tid: u32) -> bool {
        !self.names(tid, me) && !p.alive(self.owner_identity(tid)) && (tid == me.id || !p.own_live_thread(tid))
    }

    /// Takes the lock from a dead owner whose word was `s`; None if the word moved.
    fn take_over(&self, s: u32, me: Identity) -> Option<Acquired> {
        // Clear the dead owner's stamp first, so nobody can match it against a
        // thread that later receives the same tid. If our CAS then fails, the
        // stamp is merely "unknown", which only weakens a later check to "does
        // the tid exist".
        self.owner.store(0, Relaxed);
        let new = me.id | INCONSISTENT | WAITERS;
        match self.state.compare_exchange(s, new, Acquire, Relaxed) {
            Ok(_) => {
                self.stamp(me);
                Some(Acquired::OwnerDied)
            }
            Err(_) => None,
        }
    }

    #[cold]
    fn lock_contended<P: Platform>(&self, p: &P, me: Identity, deadline: Deadline) -> Result<Acquired, RawLockError> {
        let mut backoff = Backoff::new();
        // Once we have slept, others may be asleep too: take the lock with
        // WAITERS set so that our unlock wakes the next one.
        let mut acquire_bits = 0;
        let mut slice = SliceClock::start();
        loop {
            let s = self.state.load(Relaxed);
            let tid = match classify(s) {
                Word::Unlocked => match self.state.compare_exchange(0, me.id | acquire_bits, Acquire, Relaxed) {
                    Ok(_) => {
                        self.stamp(me);
                        return Ok(Acquired::Clean);
                    }
                    Err(_) => continue,
                },
                Word::NotRecoverable => return Err(RawLockError::Unrecoverable),
                Word::Corrupt => return Err(RawLockError::Corrupt),
                Word::Held { tid } => tid,
            };
            // Back off first (see `Backoff` for why and how long): a short
            // critical section is waited out without sleeping.
            if backoff.spin() {
                continue;
            }
            // Checked before every sleep, not only after a wait that reports
            // a timeout: a wait also ends early (EAGAIN) whenever the word
            // changed, and a word that keeps changing (heavy churn, or a peer
            // scribbling it) would otherwise keep us here past the deadline.
            if deadline.expired() {
                return self.timeout_or_take_over(p, me, s, tid);
            }
            let expected = s | WAITERS;
            if s & WAITERS == 0 && self.state.compare_exchange(s, expected, Relaxed, Relaxed).is_err() {
                continue;
            }
            acquire_bits = WAITERS;
            let slept = match p.liveness_slice() {
                Some(slice) => crate::wait::sleep(p, &self.state, expected, deadline, slice),
                None => p.wait(&self.state, expected, deadline),
            };
            if slept == Wait::TimedOut && deadline.expired() {
                return self.timeout_or_take_over(p, me, expected, tid);
            }
            // A slice ended: is the owner we slept behind still alive? Also
            // by the clock: waits that keep ending early (woken by a peer
            // that keeps changing or waking the word) never report a slice's
            // end, and a dead owner must still be noticed within one.
            if slept == Wait::TimedOut || slice.passed(p.liveness_slice()) {
                // Acquire: read the stamp no older than the word that names its tid.
                if self.state.load(Acquire) == expected && self.owner_dead(p, me, tid) {
                    if let Some(r) = self.take_over(expected, me) {
                        return Ok(r);
                    }
                }
            }
        }
    }

    /// The deadline passed while the word was `s`, naming `tid`: one last
    /// liveness check (as `try_lock` makes), so that a timeout shorter than
    /// the liveness slice still takes over a dead owner's lock.
    #[cold]
    fn timeout_or_take_over<P: Platform>(
        &self,
        p: &P,
        me: Identity,
        s: u32,
        tid: u32,
    ) -> Result<Acquired, RawLockError> {
        // Acquire: read the stamp no older than the word that names its tid.
        if self.state.load(Acquire) == s && self.owner_dead(p, me, tid) {
            if let Some(r) = self.take_over(s, me) {
                return Ok(r);
            }
        }
        Err(RawLockError::Timeout)
    }

    /// Releases the lock.
    ///
    /// It does not check that the caller is the owner: that costs a
    /// thread-local lookup inside the critical section, which halved contended
    /// throughput (`lock-incr`) when measured. Consequence: a guard inherited
    /// by a forked child must be leaked (`mem::forget`), not dropped, or the
    /// child releases its parent's lock (Python's `Lock` behaves the same).
    ///
    /// # Safety
    /// The caller holds the lock (a guard it obtained from `lock`/`try_lock`).
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock (our own contract).
        unsafe { self.unlock_with(&Os) }
    }

    /// [`RawMutex::unlock`] on an explicit platform.
    ///
    /// # Safety
    /// As for [`RawMutex::unlock`].
    #[inline]
    pub(crate) unsafe fn unlock_with<P: Platform>(&self, p: &P) {
        self.owner.store(0, Relaxed);
        if self.state.load(Relaxed) & INCONSISTENT != 0 {
            return self.unlock_unrecoverable(p);
        }
        if self.state.swap(0, Release) & WAITERS != 0 {
            p.wake(&self.state, 1);
        }
    }

    #[cold]
    fn unlock_unrecoverable<P: Platform>(&self, p: &P) {
        self.state.swap(NOT_RECOVERABLE, Release);
        p.wake(&self.state, i32::MAX as u32);
    }

    /// Marks data consistent after [`Acquired::OwnerDied`], so that unlocking
    /// leaves a normal lock. Only meaningful for the current holder.
    pub(crate) fn mark_consistent(&self) {
        self.state.fetch_and(!INCONSISTENT, Relaxed);
    }

    /// Whether the calling thread (per `p`) holds the lock.
    #[inline]
    pub(crate) fn held_by<P: Platform>(&self, p: &P) -> bool {
        let s = self.state.load(Relaxed);
        s != NOT_RECOVERABLE && self.names(s & TID_MASK, p.me())
    }
}

/// When a lock waiter last checked its owner's liveness, by the real clock.
/// Under loom (whose models must run the same way each time) it never
/// reports a slice: the models end their slices through the platform's wait.
struct SliceClock {
    #[cfg(not(loom))]
    since: std::time::Instant,
}

impl SliceClock {
    fn start() -> SliceClock {
        SliceClock {
            #[cfg(not(loom))]
            since: std::time::Instant::now(),
        }
    }

    /// Whether `slice` has passed since the last time this said so (or the
    /// start); restarts the slice when it has.
    #[cfg_attr(loom, allow(unused_variables))]
    fn passed(&mut self, slice: Option<std::time::Duration>) -> bool {
        #[cfg(not(loom))]
        if let Some(slice) = slice {
            if self.since.elapsed() >= slice {
                self.since = std::time::Instant::now();
                return true;
            }
        }
        false
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A generous bound for waits that must end at once: a regression fails
    /// the test instead of hanging it.
    fn soon() -> Deadline {
        Deadline::after(Some(Duration::from_secs(10)))
    }

    #[test]
    fn lock_unlock_try() {
        let m = RawMutex::new();
        assert_eq!(m.try_lock(), Ok(Acquired::Clean));
        assert!(m.held_by(&Os));
        let m = Arc::new(m);
        let m2 = m.clone();
        std::thread::spawn(move || {
            assert_eq!(m2.try_lock(), Err(RawLockError::WouldBlock));
            let t = Instant::now();
            assert_eq!(m2.lock(Deadline::after(Some(Duration::from_millis(30)))), Err(RawLockError::Timeout));
            assert!(t.elapsed() >= Duration::from_millis(30));
        })
        .join()
        .unwrap();
        // SAFETY: locked above by this thread.
        unsafe { m.unlock() };
        assert_eq!(m.state(), 0);
    }

    #[test]
    fn dead_thread_owner_is_detected() {
        let m = Arc::new(RawMutex::new());
        let m2 = m.clone();
        std::thread::spawn(move || {
            assert_eq!(m2.lock(soon()), Ok(Acquired::Clean));
            // The thread exits holding the lock.
        })
        .join()
        .unwrap();
        assert_eq!(m.lock(Deadline::after(Some(Duration::from_secs(10)))), Ok(Acquired::OwnerDied));
        // Not marked consistent: unlocking makes it unrecoverable.
        // SAFETY: we hold it.
        unsafe { m.unlock() };
        assert_eq!(m.try_lock(), Err(RawLockError::Unrecoverable));
        assert_eq!(m.lock(soon()), Err(RawLockError::Unrecoverable));
    }

    /// A thread died holding the lock and the kernel gave its tid to the
    /// caller: the word names the caller's tid, but the owner's stamp is the
    /// dead thread's. The caller must see a dead owner (`OwnerDied`), not
    /// itself (which made `lock` wait for ever and a reentrant lock count it
    /// as a nested lock of its own).
    #[test]
    fn a_dead_owner_whose_tid_the_caller_now_has_is_detected() {
        let me = Os.me();
        if me.start_time == 0 {
            eprintln!("skipped: this thread's start time is unknown here (/proc unreadable)");
            return;
        }
        let earlier = Identity { id: me.id, start_time: if me.start_time > 1 { me.start_time - 1 } else { 2 } };
        for via_lock in [false, true] {
            let m = RawMutex::new();
            m.state.store(me.id, Relaxed);
            m.owner.store(pack(earlier), Relaxed);
            assert!(!m.held_by(&Os), "a dead thread's lock taken for ours");
            let got = if via_lock { m.lock(soon()) } else { m.try_lock() };
            assert_eq!(got, Ok(Acquired::OwnerDied));
            assert!(m.held_by(&Os));
            m.mark_consistent();
            // SAFETY: we hold it.
            unsafe { m.unlock() };
            assert_eq!(m.try_lock(), Ok(Acquired::Clean));
            // SAFETY: we hold it.
            unsafe { m.unlock() };
        }
    }

    #[test]
    fn regression_short_lock_timeout_never_detects_a_dead_owner() {
        // Timeouts shorter than the liveness slice ended every wait with
        // `Timeout` before any liveness check: a caller polling with short
        // timeouts could never take over a dead owner's lock.
        let m = Arc::new(RawMutex::new());
        let m2 = m.clone();
        std::thread::spawn(move || m2.lock(soon()).unwrap()).join().unwrap();
        for t in [Duration::ZERO, Duration::from_millis(2)] {
            // Polling with short timeouts must take the lock over within a
            // bound. Not at the first call: `join` returns when the kernel
            // clears the thread's tid word, a moment before the task is gone
            // from /proc (CI saw one such early `Timeout`).
            let end = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match m.lock(Deadline::after(Some(t))) {
                    Ok(Acquired::OwnerDied) => break,
                    Err(RawLockError::Timeout) if std::time::Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    other => panic!("timeout {t:?}: {other:?} (the dead owner was never detected)"),
                }
            }
            m.mark_consistent();
            // SAFETY: we hold it.
            unsafe { m.unlock() };
            let m3 = m.clone();
            std::thread::spawn(move || m3.lock(soon()).unwrap()).join().unwrap();
        }
    }

    #[test]
    fn regression_try_lock_spins_forever_while_a_peer_cycles_dead_owners() {
        // A peer keeps replacing the word with other dead tids, so every
        // takeover CAS fails: try_lock must still return, not retry forever.
        struct Scribbler<'a> {
            m: &'a RawMutex,
            calls: std::sync::atomic::AtomicU32,
        }
        impl Platform for Scribbler<'_> {
            fn wait(&self, _: &AtomicU32, _: u32, _: Deadline) -> Wait {
                Wait::Woken
            }
            fn wake(&self, _: &AtomicU32, _: u32) {}
            fn me(&self) -> Identity {
                Identity { id: 1, start_time: 1 }
            }
            fn alive(&self, _: Identity) -> bool {
                let n = self.calls.fetch_add(1, Relaxed);
                if n >= 100_000 {
                    return true; // safety net: lets a regression fail instead of hang
                }
                self.m.state.store(1000 + n % 1000, Relaxed);
                false
            }
            fn liveness_slice(&self) -> Option<Duration> {
                None
            }
        }
        let m = RawMutex::new();
        m.state.store(999, Relaxed);
        let p = Scribbler { m: &m, calls: std::sync::atomic::AtomicU32::new(0) };
        assert_eq!(m.try_lock_with(&p), Err(RawLockError::WouldBlock));
        assert!(p.calls.load(Relaxed) < 1000, "try_lock retried {} times", p.calls.load(Relaxed));
    }

    /// A peer that forges the stamp of a lock a live thread of this process
    /// holds (its tid, another start time) must not make another thread of
    /// this process take it over: that would be two guards, two `&mut T`.
    #[test]
    fn a_forged_stamp_does_not_hand_a_live_threads_lock_to_another_thread() {
        let m = Arc::new(RawMutex::new());
        assert_eq!(m.lock(soon()), Ok(Acquired::Clean));
        let me = crate::sys::current_thread();
        m.owner.store(((me.start_time + 1) << 22) | u64::from(me.id), Relaxed);
        let m2 = m.clone();
        let (tried, waited) = std::thread::spawn(move || {
            let tried = m2.try_lock();
            let waited = m2.lock(Deadline::after(Some(Duration::from_millis(50))));
            (tried, waited)
        })
        .join()
        .unwrap();
        assert_eq!(tried, Err(RawLockError::WouldBlock));
        assert_eq!(waited, Err(RawLockError::Timeout));
        // SAFETY: this thread holds it.
        unsafe { m.unlock() };
    }

    #[test]
    fn mark_consistent_recovers() {
        let m = Arc::new(RawMutex::new());
        let m2 = m.clone();
        std::thread::spawn(move || m2.lock(soon()).unwrap()).join().unwrap();
        assert_eq!(m.try_lock(), Ok(Acquired::OwnerDied));
        m.mark_consistent();
        // SAFETY: we hold it.
        unsafe { m.unlock() };
        assert_eq!(m.try_lock(), Ok(Acquired::Clean));
        // SAFETY: we hold it.
        unsafe { m.unlock() };
    }

    #[test]
    fn corrupt_words_are_errors() {
        let m = RawMutex::new();
        for bad in [WAITERS, INCONSISTENT, MAX_TID, MAX_TID | WAITERS, 0x3FFF_FFFE] {
            m.state.store(bad, Relaxed);
            assert_eq!(m.try_lock(), Err(RawLockError::Corrupt), "{bad:#x}");
            assert_eq!(m.lock(soon()), Err(RawLockError::Corrupt), "{bad:#x}");
        }
    }

    #[test]
    fn regression_lock_deadline_ignored_while_futex_wait_never_times_out() {
        // The word names a live owner (this process's main thread) and the
        // futex wait keeps returning `Woken` (as it does with EAGAIN while a
        // peer keeps changing the word): the lock must still time out.
        let m = RawMutex::new();
        m.state.store(std::process::id() | WAITERS, Relaxed);
        let p = crate::sync::NeverTimesOut::new();
        assert_ne!(p.me().id, std::process::id());
        let r = m.lock_with(&p, Deadline::after(Some(Duration::from_millis(20))));
        assert_eq!(r, Err(RawLockError::Timeout));
        assert!(!p.overshot(), "lock kept waiting long past its deadline");
    }

    #[test]
    fn regression_a_dead_owner_is_noticed_while_waits_keep_ending_early() {
        // The futex wait never reports a timed-out slice (it keeps returning
        // `Woken`, as under a peer that keeps waking the word) and the owner
        // is dead: the liveness check must still run, by the clock, within a
        // slice or two, not once the platform gives up (2 s: `overshot`).
        let m = RawMutex::new();
        m.state.store(4_000_000 | WAITERS, Relaxed);
        let p = crate::wait::NeverTimesOut::with_dead_owners();
        let r = m.lock_with(&p, Deadline::after(Some(Duration::from_secs(10))));
        assert_eq!(r, Ok(Acquired::OwnerDied));
        assert!(!p.overshot(), "the dead owner was noticed only after the waits stopped ending early");
    }

    #[test]
    fn threads_exclude_each_other() {
        struct S(RawMutex, std::cell::UnsafeCell<u64>);
        // SAFETY: the cell is only touched under the lock.
        unsafe impl Sync for S {}
        let s = Arc::new(S(RawMutex::new(), std::cell::UnsafeCell::new(0)));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        s.0.lock(soon()).unwrap();
                        // SAFETY: the lock is held.
                        unsafe {
                            *s.1.get() += 1;
                            s.0.unlock();
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // SAFETY: all threads joined.
        assert_eq!(unsafe { *s.1.get() }, 40_000);
    }
}
