//! [`Barrier`]: N processes wait until all have arrived, like Python's
//! `multiprocessing.Barrier`.
//!
//! ## Algorithm
//!
//! A generation counter (the futex word, bit 31 = `BROKEN`) and an arrival
//! counter. A waiter reads the generation `g`, then increments `arrived`. The
//! last arrival (the *leader*) resets `arrived` to 0 and then moves the
//! generation from `g` to `g + 1` with a CAS, waking everyone; the others sleep
//! while the word is still `g`. Because the reset happens before the
//! generation moves (release), a process that sees the new generation and
//! arrives again counts from 0.
//!
//! A timeout or [`Barrier::abort`] sets `BROKEN` (CAS from `g`, so a barrier
//! that has just opened is not broken by a late timeout) and wakes everyone:
//! every current and later `wait` fails with [`BarrierError::Broken`] (the
//! waiter that timed out gets [`BarrierError::Timeout`]). A broken barrier
//! stays broken; create a new one. A participant that dies before arriving
//! leaves the others waiting until their timeout, which then breaks the
//! barrier for all.
//!
//! ## Layout (payload, 64 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field        | meaning                                    |
//! |-------:|-----:|--------------|--------------------------------------------|
//! | 0      | 4    | `generation` | bits 0-30 generation, bit 31 `BROKEN` (futex word) |
//! | 4      | 4    | `arrived`    | arrivals in the current generation         |
//! | 8      | 4    | `parties`    | number of participants (set at creation)   |
//! | 12     | 52   | reserved     | zero                                       |

use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::Duration;

use super::atomic::AtomicU32;
use super::{Os, Platform, Shared, SharedState};
use crate::error::OpenError;
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

const BROKEN: u32 = 1 << 31;
const GEN_MASK: u32 = BROKEN - 1;

#[repr(C, align(64))]
pub(crate) struct BarrierState {
    generation: AtomicU32,
    arrived: AtomicU32,
    parties: AtomicU32,
    _reserved: [AtomicU32; 13],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<BarrierState>() == 64);
    assert!(std::mem::offset_of!(BarrierState, arrived) == 4);
    assert!(std::mem::offset_of!(BarrierState, parties) == 8);
};

// SAFETY: repr(C), only AtomicU32s, align 64; `parties` is validated at open,
// a bad `arrived` breaks the barrier, any generation value is a state.
unsafe impl SharedState for BarrierState {
    fn validate(&self) -> Result<(), OpenError> {
        match self.parties.load(Relaxed) {
            0 => Err(OpenError::corrupt("barrier with 0 parties")),
            _ => Ok(()),
        }
    }
}

/// Why [`Barrier::wait`] did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (by a timeout, [`Barrier::abort`], a corrupt
    /// count, or its named segment truncated by another process), as
    /// Python's `BrokenBarrierError`. It stays broken.
    Broken,
    /// This waiter's timeout passed; the barrier is now broken for everyone.
    Timeout,
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarrierError::Broken => f.write_str("the barrier is broken"),
            BarrierError::Timeout => f.write_str("timed out waiting at the barrier; it is now broken"),
        }
    }
}

impl std::error::Error for BarrierError {}

/// What a successful [`Barrier::wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult {
    /// Arrival order in this generation, `0..parties`: distinct for every participant.
    pub index: u32,
}

impl BarrierWaitResult {
    /// Whether this participant arrived last and released the others (exactly
    /// one per generation).
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }
}

/// A barrier for a fixed number of processes (or threads).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let b = shmproc::Barrier::anonymous(1)?;
/// assert!(b.wait()?.is_leader()); // one party: passes at once
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    shared: Shared<BarrierState>,
    parties: u32,
}

/// Builder for [`Barrier`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type BarrierBuilder = Builder<Barrier>;

impl Builder<Barrier> {
    /// Creates a barrier for `parties` (>= 1) participants.
    pub fn create(self, parties: u32) -> Result<Barrier, OpenError> {
        Barrier::checked(parties)?;
        Barrier::from_shared(Shared::create(&self, |s: &BarrierState| s.parties.store(parties, Relaxed))?)
    }
    /// Opens the named barrier, or creates it for `parties` participants.
    pub fn open_or_create(self, parties: u32) -> Result<Barrier, OpenError> {
        Barrier::checked(parties)?;
        Barrier::from_shared(Shared::open_or_create(&self, |s: &BarrierState| s.parties.store(parties, Relaxed))?)
    }
}

crate::object::serde_object!([] Barrier);
impl Object for Barrier {
    const KIND: ObjectKind = ObjectKind::Barrier;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.shared.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Barrier::from_shared(Shared::open(&b, handle)?)
    }
}

impl Barrier {
    fn checked(parties: u32) -> Result<(), OpenError> {
        if parties == 0 || parties > GEN_MASK {
            return Err(OpenError::invalid("a barrier needs between 1 and 2^31-1 parties"));
        }
        Ok(())
    }

    fn from_shared(shared: Shared<BarrierState>) -> Result<Self, OpenError> {
        let parties = shared.get().parties.load(Relaxed);
        if parties == 0 {
            return Err(OpenError::corrupt("barrier with 0 parties"));
        }
        Ok(Barrier { shared, parties })
    }

    /// A builder with default options (anonymous, mode 0600).
    pub fn builder() -> BarrierBuilder {
        Builder::default()
    }
    /// An anonymous barrier for `parties` participants, shared with children forked later.
    pub fn anonymous(parties: u32) -> Result<Self, OpenError> {
        Self::builder().create(parties)
    }
    /// Creates a named barrier for `parties` participants.
    pub fn create(name: &str, parties: u32) -> Result<Self, OpenError> {
        Self::builder().name(name).create(parties)
    }
    /// Opens a named barrier.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// The number of participants.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.shared.get().generation.load(Acquire) & BROKEN != 0
    }

    /// Waits until all parties have arrived. Without a timeout a participant
    /// that never arrives (say, it died) blocks the others for ever; prefer
    /// [`Barrier::wait_timeout`] across processes.
    pub fn wait(&self) -> Result<BarrierWaitResult, BarrierError> {
        self.wait_until(&Os, Deadline::NEVER)
    }

    /// Waits until all parties have arrived or `timeout` passes; a timeout
    /// breaks the barrier for everyone.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult, BarrierError> {
        self.wait_until(&Os, Deadline::after(Some(timeout)))
    }

    /// Breaks the barrier: every current and future waiter gets [`BarrierError::Broken`].
    pub fn abort(&self) {
        let s = self.shared.get();
        s.generation.fetch_or(BROKEN, AcqRel);
        Os.wake(&s.generation, i32::MAX as u32);
    }

    fn wait_until<P: Platform>(&self, p: &P, deadline: Deadline) -> Result<BarrierWaitResult, BarrierError> {
        let s = self.shared.get();
        let lost = || self.shared.segment().lost();
        let g = s.generation.load(Acquire);
        if g & BROKEN != 0 || lost() {
            return Err(BarrierError::Broken);
        }
        let n = s.arrived.fetch_add(1, AcqRel).wrapping_add(1);
        if n == 0 || n > self.parties {
            // Corrupt count: nobody can trust this barrier any more.
            self.abort();
            return Err(BarrierError::Broken);
        }
        if n == self.parties {
            s.arrived.store(0, Relaxed);
            let next = (g + 1) & GEN_MASK;
            return match s.generation.compare_exchange(g, next, AcqRel, Acquire) {
                // Opened in zero pages nobody else sees: the segment was
                // truncated under us while we arrived.
                Ok(_) if lost() => Err(BarrierError::Broken),
                Ok(_) => {
                    p.wake(&s.generation, i32::MAX as u32);
                    Ok(BarrierWaitResult { index: 0 })
                }
                Err(_) => Err(BarrierError::Broken),
            };
        }
        let index = self.parties - n;
        loop {
            // In slices: a barrier whose segment was truncated under us
            // (private zeros now) is never opened by anyone; it is broken.
            p.wait(&s.generation, g, deadline.min_after(crate::wait::PEER_SLICE));
            let cur = s.generation.load(Acquire);
            if cur & BROKEN != 0 || lost() {
                return Err(BarrierError::Broken);
            }
            if cur != g {
                return Ok(BarrierWaitResult { index });
            }
            // Checked whatever the wait reported: spurious wake-ups (signals,
            // a peer's FUTEX_WAKE) can keep coming past the deadline.
            if deadline.expired() {
                match s.generation.compare_exchange(g, g | BROKEN, Release, Acquire) {
                    Ok(_) => {
                        p.wake(&s.generation, i32::MAX as u32);
                        return Err(BarrierError::Timeout);
                    }
                    // The barrier opened (or broke) just now: look again.
                    Err(_) => continue,
                }
            }
        }
    }

    /// How another process opens this barrier.
    pub fn handle(&self) -> Handle {
        self.shared.segment().handle()
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Segment {
        self.shared.segment()
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("broken", &self.is_broken())
            .field("segment", self.shared.segment())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn threads_pass_generations() {
        let b = Barrier::anonymous(3).unwrap();
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut leaders = 0;
                    for _ in 0..50 {
                        if b.wait_timeout(Duration::from_secs(10)).unwrap().is_leader() {
                            leaders += 1;
                        }
                    }
                    leaders
                })
            })
            .collect();
        let total: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn regression_wait_deadline_ignored_while_futex_wait_never_times_out() {
        let b = Barrier::anonymous(2).unwrap();
        let p = crate::sync::NeverTimesOut::new();
        assert_eq!(b.wait_until(&p, Deadline::after(Some(Duration::from_millis(20)))), Err(BarrierError::Timeout));
        assert!(!p.overshot(), "wait kept waiting long past its deadline");
        assert!(b.is_broken());
    }

    #[test]
    fn timeout_breaks_for_all() {
        let b = Barrier::anonymous(3).unwrap();
        let b2 = b.clone();
        let h = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(10)));
        let t = Instant::now();
        assert_eq!(b.wait_timeout(Duration::from_millis(30)), Err(BarrierError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(h.join().unwrap(), Err(BarrierError::Broken));
        assert_eq!(b.wait_timeout(Duration::from_secs(10)), Err(BarrierError::Broken));
        let c = Barrier::anonymous(2).unwrap();
        c.abort();
        assert_eq!(c.wait_timeout(Duration::from_secs(1)), Err(BarrierError::Broken));
    }
}
