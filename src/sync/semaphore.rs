//! [`Semaphore`] and [`BoundedSemaphore`]: counting semaphores across processes.
//!
//! ## Algorithm
//!
//! The count is the futex word. `acquire` decrements it with a CAS when it is
//! positive; otherwise it registers in `waiters` and sleeps while the count is
//! 0. `release` increments the count (refusing to pass the bound of a bounded
//! semaphore) and wakes one sleeper if `waiters` is non-zero. Both sides use
//! `SeqCst` for "publish mine, then read yours" (count then waiters on release,
//! waiters then count on acquire, the kernel re-reading the count under its
//! futex lock), so a release cannot miss a sleeper.
//!
//! ## Permits that come back (`acquire_guard`, like System V's `SEM_UNDO`)
//!
//! An owned permit is recorded in a slot table after the counters: one
//! 64-bit word per permit, `state << 60 | pid << 38 | start_time` (the pid
//! below 2^22, its start time in clock ticks below 2^38). Taking one: claim a
//! zero slot as RESERVED (CAS), take a permit, mark the slot HELD. Giving it
//! back (the guard's drop): clear the slot (CAS from our own word), then
//! release the permit. A waiter that finds no permit scans the table before it
//! sleeps and after every sleep slice (`PEER_SLICE`, 50 ms): a HELD
//! slot whose holder is dead (pid and start time, `peer`) is cleared by CAS,
//! and whoever wins the CAS releases its permit, so the permit comes back
//! once. A RESERVED slot of a dead process is just cleared. A holder killed
//! between taking the permit and marking the slot (or between clearing the
//! slot and releasing) loses that one permit: a window of a few instructions;
//! a permit is never returned twice.
//!
//! ## Layout (payload, 320 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field     | meaning                                              |
//! |-------:|-----:|-----------|------------------------------------------------------|
//! | 0      | 4    | `value`   | available permits (futex word)                       |
//! | 4      | 4    | `waiters` | processes registered as (about to be) sleeping       |
//! | 8      | 4    | `bound`   | 0 for `Semaphore`; the maximum for `BoundedSemaphore`|
//! | 12     | 52   | reserved  | zero                                                 |
//! | 64     | 256  | `owners`  | 32 owned-permit slots (see above); 0 = free          |

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::Duration;

use super::atomic::{AtomicU32, AtomicU64};
use super::{loom_sc_fence, spin_until, Os, Platform, Shared, SharedState};
use crate::error::OpenError;
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

/// Why a semaphore acquire returned without a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireError {
    /// The timeout elapsed with no permit available.
    Timeout,
    /// `try_acquire`: no permit is available now.
    WouldBlock,
    /// `acquire_guard`: every slot of the owned-permit table is taken by a
    /// live holder ([`OWNED_PERMITS`] at most at once).
    TableFull,
    /// The semaphore's named segment was truncated by another process while
    /// this call waited: its count now reads zero in this process, and no
    /// release can reach it.
    Corrupt,
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout => f.write_str("timed out waiting for a semaphore permit"),
            AcquireError::WouldBlock => f.write_str("no semaphore permit is available"),
            AcquireError::TableFull => {
                write!(f, "all {OWNED_PERMITS} owned-permit slots of the semaphore are held by live processes")
            }
            AcquireError::Corrupt => f.write_str("the semaphore's shared memory was truncated by another process"),
        }
    }
}

impl std::error::Error for AcquireError {}

/// Why a semaphore release was refused (the count is left unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseError {
    /// A [`BoundedSemaphore`] was released more times than acquired (Python's
    /// `ValueError: Semaphore released too many times`).
    AboveBound {
        /// The semaphore's bound.
        bound: u32,
    },
    /// The count would exceed `u32::MAX`.
    Overflow,
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::AboveBound { bound } => {
                write!(f, "semaphore released too many times (its bound is {bound})")
            }
            ReleaseError::Overflow => f.write_str("semaphore count would overflow u32"),
        }
    }
}

impl std::error::Error for ReleaseError {}

/// How many owned permits ([`Semaphore::acquire_guard`]) can be out at once.
pub const OWNED_PERMITS: usize = 32;

/// Owned-permit slot states (top 4 bits of a slot word).
const RESERVED: u64 = 1;
const HELD: u64 = 2;

fn slot_word(state: u64, pid: u32, start: u64) -> u64 {
    crate::peer::word::pack(state, pid, start)
}

/// Whether slot word `w` names a process that is proven dead (or is garbage:
/// an unknown state). A start time of 0 (the holder could not read its own)
/// and a `/proc` we cannot read prove nothing: the process then counts as
/// alive while it exists, so a permit is never taken from a live holder.
#[cfg(not(loom))]
fn slot_owner_dead(w: u64) -> bool {
    let (state, pid, start) = crate::peer::word::parts(w);
    if !matches!(state, RESERVED | HELD) {
        return true;
    }
    !crate::sys::alive_matching(pid, |live| start == 0 || slot_word(state, pid, live) == w)
}

/// The shared state of a semaphore (also its heap twin in tests).
#[repr(C, align(64))]
pub(crate) struct RawSemaphore {
    value: AtomicU32,
    waiters: AtomicU32,
    bound: AtomicU32,
    _reserved: [AtomicU32; 13],
    owners: [AtomicU64; OWNED_PERMITS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<RawSemaphore>() == 64 + 8 * OWNED_PERMITS);
    assert!(std::mem::offset_of!(RawSemaphore, owners) == 64);
    assert!(std::mem::offset_of!(RawSemaphore, waiters) == 4);
    assert!(std::mem::offset_of!(RawSemaphore, bound) == 8);
};

// SAFETY: repr(C), only AtomicU32s, align 64; every bit pattern is a state
// (a count, a waiter hint, a bound checked at open).
unsafe impl SharedState for RawSemaphore {}

impl RawSemaphore {
    /// A heap twin (tests and loom).
    #[cfg(any(test, loom))]
    pub(crate) fn new(value: u32, bound: u32) -> RawSemaphore {
        RawSemaphore {
            value: AtomicU32::new(value),
            waiters: AtomicU32::new(0),
            bound: AtomicU32::new(bound),
            _reserved: std::array::from_fn(|_| AtomicU32::new(0)),
            owners: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn init(&self, value: u32, bound: u32) {
        self.value.store(value, Relaxed);
        self.bound.store(bound, Relaxed);
    }

    /// Current count.
    pub(crate) fn value(&self) -> u32 {
        self.value.load(Relaxed)
    }

    /// Takes a permit if one is available now.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut v = self.value.load(Relaxed);
        while v > 0 {
            match self.value.compare_exchange_weak(v, v - 1, Acquire, Relaxed) {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        false
    }

    /// Takes a permit, sleeping until `deadline`. `bound`: the handle's bound,
    /// validated at open (never the shared word, which a peer could rewrite),
    /// for the permits of dead holders given back on the way.
    #[cfg(any(test, loom))]
    pub(crate) fn acquire_with<P: Platform>(
        &self,
        p: &P,
        deadline: Deadline,
        bound: Option<u32>,
    ) -> Result<(), AcquireError> {
        self.acquire_watching(p, deadline, bound, || false)
    }

    /// [`acquire_with`](Self::acquire_with), looking at `lost` (the
    /// segment's [`Segment::lost`](crate::Segment::lost)) after every slice:
    /// a segment truncated under the wait ends it with
    /// [`AcquireError::Corrupt`] (its words are private zeros now; no
    /// release will ever reach them).
    pub(crate) fn acquire_watching<P: Platform>(
        &self,
        p: &P,
        deadline: Deadline,
        bound: Option<u32>,
        lost: impl Fn() -> bool,
    ) -> Result<(), AcquireError> {
        if self.try_acquire()
            || spin_until(|| self.value.load(Relaxed) > 0 && self.try_acquire(), crate::wait::SEMAPHORE_SPINS)
        {
            return Ok(());
        }
        loop {
            // Owned permits of dead holders come back before we sleep, and we
            // sleep in slices to look again: for those, and for a permit whose
            // wake-up went to a waiter killed before it could take it
            // (`release` wakes one sleeper; a permit must not sit in `value`
            // while the others sleep for ever). Loom models no time.
            let owned = self.recover_dead(bound);
            if owned && self.try_acquire() {
                return Ok(());
            }
            let until = if owned || !cfg!(loom) { deadline.min_after(crate::wait::PEER_SLICE) } else { deadline };
            self.waiters.fetch_add(1, SeqCst);
            loom_sc_fence();
            if self.value.load(SeqCst) == 0 {
                p.wait(&self.value, 0, until);
            }
            self.waiters.fetch_sub(1, Relaxed);
            if self.try_acquire() {
                return Ok(());
            }
            if lost() {
                return Err(AcquireError::Corrupt);
            }
            // Checked whatever the wait reported: a wait also ends early when
            // the word changed, on a signal, or on a peer's wake-up, and those
            // can keep coming past the deadline.
            if deadline.expired() {
                return Err(AcquireError::Timeout);
            }
        }
    }

    /// Returns the permits of dead owned-permit holders; whether any slot of
    /// the table is in use (so that waiters should look again later).
    #[cfg(not(loom))]
    fn recover_dead(&self, bound: Option<u32>) -> bool {
        let mut used = false;
        for slot in &self.owners {
            let w = slot.load(Acquire);
            if w == 0 {
                continue;
            }
            used = true;
            if slot_owner_dead(w) && slot.compare_exchange(w, 0, SeqCst, Relaxed).is_ok() && w >> 60 == HELD {
                // The winner of the CAS returns the permit, once. A bounded
                // semaphore already at its bound (hostile slot bytes) stays there.
                let _ = self.release_with(&super::Os, bound);
            }
        }
        used
    }

    /// Loom models no processes: the table is never used there.
    #[cfg(loom)]
    fn recover_dead(&self, _bound: Option<u32>) -> bool {
        false
    }

    /// Takes an owned permit: records it in a slot of the table, so that it
    /// comes back if this process dies. Returns the slot index and its word.
    pub(crate) fn acquire_owned<P: Platform>(
        &self,
        p: &P,
        deadline: Deadline,
        bound: Option<u32>,
        lost: impl Fn() -> bool,
    ) -> Result<(usize, u64), AcquireError> {
        let me = crate::sys::current_process();
        let reserved = slot_word(RESERVED, me.id, me.start_time);
        let held = slot_word(HELD, me.id, me.start_time);
        let mut slot = None;
        for pass in 0..2 {
            if pass == 1 {
                self.recover_dead(bound);
            }
            slot = self.owners.iter().position(|s| s.compare_exchange(0, reserved, SeqCst, Relaxed).is_ok());
            if slot.is_some() {
                break;
            }
        }
        let i = slot.ok_or(AcquireError::TableFull)?;
        match self.acquire_watching(p, deadline, bound, lost) {
            Ok(()) => {
                self.owners[i].store(held, SeqCst);
                Ok((i, held))
            }
            Err(e) => {
                let _ = self.owners[i].compare_exchange(reserved, 0, SeqCst, Relaxed);
                Err(e)
            }
        }
    }

    /// Gives back an owned permit taken by [`acquire_owned`](Self::acquire_owned)
    /// (`bound`: as for [`acquire_with`](Self::acquire_with)).
    pub(crate) fn release_owned<P: Platform>(&self, p: &P, slot: usize, word: u64, bound: Option<u32>) {
        // Only if the slot is still ours: a slot cleared by a recoverer (who
        // wrongly took us for dead: hostile bytes) has had its permit returned.
        if self.owners[slot].compare_exchange(word, 0, SeqCst, Relaxed).is_ok() {
            let _ = self.release_with(p, bound);
        }
    }

    /// Adds one permit; wakes a sleeper if there is one.
    pub(crate) fn release_with<P: Platform>(&self, p: &P, bounded: Option<u32>) -> Result<(), ReleaseError> {
        let mut v = self.value.load(Relaxed);
        loop {
            let new = v.checked_add(1).ok_or(ReleaseError::Overflow)?;
            if let Some(bound) = bounded {
                if new > bound {
                    return Err(ReleaseError::AboveBound { bound });
                }
            }
            match self.value.compare_exchange_weak(v, new, SeqCst, Relaxed) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        loom_sc_fence();
        if self.waiters.load(SeqCst) != 0 {
            p.wake(&self.value, 1);
        }
        Ok(())
    }
}

macro_rules! semaphore_type {
    ($(#[$doc:meta])* $name:ident, $kind:ident, bounded = $bounded:expr) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            shared: Shared<RawSemaphore>,
            /// The bound, read once at open (None for the unbounded kind).
            bound: Option<u32>,
        }

        crate::object::serde_object!([] $name);
        impl Object for $name {
            const KIND: ObjectKind = ObjectKind::$kind;
            type Params = ();
            fn segment(&self) -> &Segment {
                self.shared.segment()
            }
            fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
                Self::from_shared(Shared::open(&b, handle)?)
            }
        }

        impl $name {
            /// A builder with default options (anonymous, mode 0600).
            pub fn builder() -> SemaphoreBuilder {
                Builder::default()
            }

            fn from_shared(shared: Shared<RawSemaphore>) -> Result<Self, OpenError> {
                let b = shared.get().bound.load(Relaxed);
                let bound = if $bounded {
                    if b == 0 {
                        return Err(OpenError::corrupt("bounded semaphore with a bound of 0"));
                    }
                    Some(b)
                } else {
                    None
                };
                Ok($name { shared, bound })
            }

            fn make(b: Builder<Self>, value: u32, create: bool) -> Result<Self, OpenError> {
                let bound = if $bounded { value } else { 0 };
                if $bounded && value == 0 {
                    return Err(OpenError::invalid("a BoundedSemaphore needs an initial value of at least 1"));
                }
                let init = |s: &RawSemaphore| s.init(value, bound);
                let shared = if create {
                    Shared::create(&b, init)?
                } else {
                    Shared::open_or_create(&b, init)?
                };
                Self::from_shared(shared)
            }

            /// Takes a permit, blocking until one is available. The only
            /// error is [`AcquireError::Corrupt`]: the semaphore's named
            /// segment was truncated by another process (seen within 50 ms).
            pub fn acquire(&self) -> Result<(), AcquireError> {
                self.acquire_until(Deadline::NEVER)
            }

            /// Takes a permit, giving up with [`AcquireError::Timeout`] after
            /// `timeout` ([`AcquireError::Corrupt`] as for [`acquire`](Self::acquire)).
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), AcquireError> {
                self.acquire_until(Deadline::after(Some(timeout)))
            }

            fn acquire_until(&self, deadline: Deadline) -> Result<(), AcquireError> {
                let seg = self.shared.segment();
                self.shared.get().acquire_watching(&Os, deadline, self.bound, || seg.lost())
            }

            /// Takes a permit if one is available now, else [`AcquireError::WouldBlock`].
            pub fn try_acquire(&self) -> Result<(), AcquireError> {
                if self.shared.get().try_acquire() {
                    Ok(())
                } else {
                    Err(AcquireError::WouldBlock)
                }
            }

            /// Takes an *owned* permit, blocking until one is available: the
            /// permit is given back when the guard drops, or, if this process
            /// dies holding it (even by `kill -9`), by the next process that
            /// waits on the semaphore, like System V's `SEM_UNDO`. At most
            /// [`OWNED_PERMITS`] can be out at once ([`AcquireError::TableFull`]);
            /// [`AcquireError::Corrupt`] as for [`acquire`](Self::acquire).
            ///
            /// ```
            /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
            #[doc = concat!("let sem = shmproc::", stringify!($name), "::anonymous(1)?;")]
            /// {
            ///     let _permit = sem.acquire_guard()?;
            ///     assert_eq!(sem.value(), 0);
            /// }
            /// assert_eq!(sem.value(), 1);
            /// # Ok(()) }
            /// ```
            pub fn acquire_guard(&self) -> Result<SemaphoreGuard<'_>, AcquireError> {
                self.guard_until(Deadline::NEVER)
            }

            /// [`acquire_guard`](Self::acquire_guard) giving up with
            /// [`AcquireError::Timeout`] after `timeout`.
            pub fn acquire_guard_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>, AcquireError> {
                self.guard_until(Deadline::after(Some(timeout)))
            }

            fn guard_until(&self, deadline: Deadline) -> Result<SemaphoreGuard<'_>, AcquireError> {
                let (raw, seg) = (self.shared.get(), self.shared.segment());
                let (slot, word) = raw.acquire_owned(&Os, deadline, self.bound, || seg.lost())?;
                Ok(SemaphoreGuard { raw, slot, word, bound: self.bound })
            }

            /// Returns a permit, waking one waiter.
            pub fn release(&self) -> Result<(), ReleaseError> {
                self.shared.get().release_with(&Os, self.bound)
            }

            /// The number of permits available now (a snapshot).
            pub fn value(&self) -> u32 {
                self.shared.get().value()
            }

            /// How another process opens this semaphore.
            pub fn handle(&self) -> Handle {
                self.shared.segment().handle()
            }

            /// The segment holding it.
            pub fn segment(&self) -> &Segment {
                self.shared.segment()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("value", &self.value())
                    .field("bound", &self.bound)
                    .field("segment", self.shared.segment())
                    .finish()
            }
        }
    };
}

semaphore_type!(
    /// A counting semaphore shared between processes, like Python's
    /// `multiprocessing.Semaphore`.
    ///
    /// Permits are not owned: a process that dies holding one does not give it
    /// back (as in Python). Use a [`crate::Mutex`] where death must be detected.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sem = shmproc::Semaphore::anonymous(2)?;
    /// sem.acquire()?;
    /// sem.try_acquire()?;
    /// assert!(sem.try_acquire().is_err());
    /// sem.release()?;
    /// assert_eq!(sem.value(), 1);
    /// # Ok(()) }
    /// ```
    Semaphore,
    Semaphore,
    bounded = false
);

semaphore_type!(
    /// A semaphore whose count may not exceed its initial value: releasing it
    /// more often than it was acquired is [`ReleaseError::AboveBound`], like
    /// Python's `BoundedSemaphore` raising `ValueError`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shmproc::{BoundedSemaphore, ReleaseError};
    /// let sem = BoundedSemaphore::anonymous(1)?;
    /// assert_eq!(sem.release(), Err(ReleaseError::AboveBound { bound: 1 }));
    /// # Ok(()) }
    /// ```
    BoundedSemaphore,
    BoundedSemaphore,
    bounded = true
);

impl Semaphore {
    /// An anonymous semaphore with `value` permits, shared with children forked later.
    pub fn anonymous(value: u32) -> Result<Self, OpenError> {
        Self::builder().create(value)
    }
    /// Creates a named semaphore with `value` permits.
    pub fn create(name: &str, value: u32) -> Result<Self, OpenError> {
        Self::builder().name(name).create(value)
    }
    /// Opens a named semaphore.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }
}

impl BoundedSemaphore {
    /// An anonymous bounded semaphore with `value` permits (also its bound).
    pub fn anonymous(value: u32) -> Result<Self, OpenError> {
        Self::builder().create_bounded(value)
    }
    /// Creates a named bounded semaphore with `value` permits (also its bound).
    pub fn create(name: &str, value: u32) -> Result<Self, OpenError> {
        Self::builder().name(name).create_bounded(value)
    }
    /// Opens a named bounded semaphore.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open_bounded()
    }
}

/// An owned semaphore permit ([`Semaphore::acquire_guard`]): given back on
/// drop, or by a waiter if the holding process dies.
pub struct SemaphoreGuard<'a> {
    raw: &'a RawSemaphore,
    slot: usize,
    word: u64,
    /// The handle's bound, validated at open.
    bound: Option<u32>,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        self.raw.release_owned(&Os, self.slot, self.word, self.bound);
    }
}

impl fmt::Debug for SemaphoreGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphoreGuard").field("slot", &self.slot).finish()
    }
}

/// Builder for [`Semaphore`] and [`BoundedSemaphore`]: name and permissions,
/// then `create`/`open`/`open_or_create` (the `_bounded` ones for a
/// [`BoundedSemaphore`]).
pub type SemaphoreBuilder = Builder<Semaphore>;

impl Builder<Semaphore> {
    /// Creates a [`Semaphore`] with `value` permits.
    pub fn create(self, value: u32) -> Result<Semaphore, OpenError> {
        Semaphore::make(self, value, true)
    }
    /// Opens the named [`Semaphore`], or creates it with `value` permits.
    pub fn open_or_create(self, value: u32) -> Result<Semaphore, OpenError> {
        Semaphore::make(self, value, false)
    }
    /// Creates a [`BoundedSemaphore`] with `value` permits and bound `value` (>= 1).
    pub fn create_bounded(self, value: u32) -> Result<BoundedSemaphore, OpenError> {
        BoundedSemaphore::make(self.cast(), value, true)
    }
    /// Opens an existing named [`BoundedSemaphore`].
    pub fn open_bounded(self) -> Result<BoundedSemaphore, OpenError> {
        self.cast().open()
    }
    /// Opens the [`BoundedSemaphore`] behind `handle`.
    pub fn open_handle_bounded(self, handle: &Handle) -> Result<BoundedSemaphore, OpenError> {
        self.cast().open_handle(handle)
    }
    /// Opens the named [`BoundedSemaphore`], or creates it with `value` permits.
    pub fn open_or_create_bounded(self, value: u32) -> Result<BoundedSemaphore, OpenError> {
        BoundedSemaphore::make(self.cast(), value, false)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn regression_acquire_deadline_ignored_while_futex_wait_never_times_out() {
        let s = RawSemaphore::new(0, 0);
        let p = crate::sync::NeverTimesOut::new();
        let r = s.acquire_with(&p, Deadline::after(Some(Duration::from_millis(20))), None);
        assert_eq!(r, Err(AcquireError::Timeout));
        assert!(!p.overshot(), "acquire kept waiting long past its deadline");
    }

    /// A permit that reaches `value` without a wake-up (the one `release`
    /// sent went to a waiter that was killed before it took the permit) is
    /// still found by a waiter that sleeps with no deadline: waiters sleep in
    /// slices. The permit is added here by hand, with no wake-up at all.
    #[test]
    fn a_permit_whose_wake_up_was_lost_is_still_taken() {
        let s = std::sync::Arc::new(RawSemaphore::new(0, 0));
        let s2 = s.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = s2.acquire_with(&crate::sync::Os, Deadline::NEVER, None);
            let _ = tx.send(r);
        });
        // Let the waiter go to sleep, then add a permit no one is woken for.
        while s.waiters.load(SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        s.value.fetch_add(1, SeqCst);
        let got = rx.recv_timeout(Duration::from_secs(10));
        if got.is_err() {
            // Unstick the waiter before failing.
            let _ = s.release_with(&crate::sync::Os, None);
        }
        assert_eq!(got, Ok(Ok(())), "a waiter slept on past a permit it was not woken for");
    }

    /// An owned-permit slot is taken back only from a process proven dead:
    /// not from a live one whose start time was unknown (0) when it took
    /// the permit (it used to count as garbage, so its permit was handed to
    /// another holder while it still held it).
    #[test]
    fn slot_owners_are_dead_only_when_proven() {
        let me = crate::sys::current_process();
        assert!(!slot_owner_dead(slot_word(HELD, me.id, me.start_time)));
        assert!(!slot_owner_dead(slot_word(RESERVED, me.id, me.start_time)));
        assert!(!slot_owner_dead(slot_word(HELD, me.id, 0)), "a live holder whose start time is unknown");
        assert!(slot_owner_dead(slot_word(HELD, me.id, me.start_time + 1)), "another process with our pid");
        assert!(slot_owner_dead(slot_word(7, me.id, me.start_time)), "an unknown state is garbage");
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(slot_owner_dead(slot_word(HELD, pid, 0)), "a reaped holder");
    }

    #[test]
    fn counting_and_bounds() {
        let s = Semaphore::anonymous(2).unwrap();
        assert!(s.try_acquire().is_ok());
        s.acquire().unwrap();
        assert_eq!(s.try_acquire(), Err(AcquireError::WouldBlock));
        let t = Instant::now();
        assert_eq!(s.acquire_timeout(Duration::from_millis(30)), Err(AcquireError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
        s.release().unwrap();
        s.release().unwrap();
        s.release().unwrap(); // unbounded: fine
        assert_eq!(s.value(), 3);

        let b = BoundedSemaphore::anonymous(2).unwrap();
        b.acquire().unwrap();
        b.release().unwrap();
        assert_eq!(b.release(), Err(ReleaseError::AboveBound { bound: 2 }));
        assert_eq!(b.value(), 2);
        assert!(BoundedSemaphore::anonymous(0).is_err());
    }

    #[test]
    fn release_wakes_thread() {
        let s = Semaphore::anonymous(0).unwrap();
        let s2 = s.clone();
        let h = std::thread::spawn(move || s2.acquire_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        s.release().unwrap();
        assert_eq!(h.join().unwrap(), Ok(()));
    }

    /// A peer that rewrites the shared `bound` word (here to 0, "unbounded")
    /// cannot make an owned permit's return push a bounded semaphore past
    /// the bound it was opened with: the handle's validated bound is used.
    #[test]
    fn owned_release_keeps_the_bound_read_at_open() {
        let b = BoundedSemaphore::anonymous(1).unwrap();
        let g = b.acquire_guard().unwrap();
        assert_eq!(b.value(), 0);
        let raw = b.shared.get();
        // The hostile peer: a permit from nowhere, and the bound erased.
        raw.value.store(1, Relaxed);
        raw.bound.store(0, Relaxed);
        drop(g);
        assert_eq!(b.value(), 1, "the guard's permit went past the bound of 1");
        assert_eq!(b.release(), Err(ReleaseError::AboveBound { bound: 1 }));
    }

    #[test]
    fn kinds_do_not_mix() {
        let s = Semaphore::anonymous(1).unwrap();
        let err = SemaphoreBuilder::default().open_handle_bounded(&s.handle()).unwrap_err();
        assert!(matches!(err, OpenError::KindMismatch { .. }), "{err:?}");
    }
}
