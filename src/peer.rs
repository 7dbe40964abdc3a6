//! The peer layer: who a process or thread is, and whether it still runs.
//!
//! ## Identity
//!
//! A pid (or tid) alone does not identify a process over time: the kernel hands
//! the number out again once the process is reaped. An [`Identity`] is the id
//! *and* its start time (field 22 of `/proc/<id>/stat`, clock ticks since boot),
//! recorded next to the id wherever a peer is named in shared memory: the lock
//! owner stamp (`sync::raw_mutex`), the queue's participant table
//! (`queue::raw`) and the pipe's end slots (`pipe::connection`). A start time
//! of 0 means "unknown" and weakens the check to "does the id exist".
//!
//! ## Liveness, pid-reuse-proof and rate-limited
//!
//! [`alive`] re-reads the start time: a different value means the number now
//! belongs to someone else, so the original is dead (two processes would have
//! to receive the same id within one clock tick, 10 ms, to fool it). Each check
//! reads `/proc` (microseconds), so callers that check on a schedule rather
//! than on demand go through one [`RateLimit`]: at most one check per interval
//! per handle. The raw `/proc` reading lives in `sys`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) use crate::sys::Identity;
use crate::sys::{self, Liveness};

/// Whether `who` still runs (`false` only when it is proven dead).
#[inline]
pub(crate) fn alive(who: Identity) -> bool {
    sys::liveness(who) == Liveness::Alive
}

/// Whether `who` is proven dead.
#[inline]
pub(crate) fn dead(who: Identity) -> bool {
    !alive(who)
}

/// A process named in one shared 64-bit word: a 4-bit state (the user's),
/// the pid (below 2^22, the kernel's `PID_MAX_LIMIT`) and its start time
/// (clock ticks since boot, below 2^38: 87 years at 100 Hz), so that a record
/// is written, compared and cleared with one atomic access. The pipe's holder
/// tables, the semaphore's owned-permit slots and the barrier's watched
/// parties use it.
pub(crate) mod word {
    const PID_BITS: u32 = 22;
    const START_BITS: u32 = 38;

    /// Packs `state` (< 16), `pid` and `start` (each truncated to its field).
    #[inline]
    pub(crate) fn pack(state: u64, pid: u32, start: u64) -> u64 {
        (state << (PID_BITS + START_BITS))
            | ((u64::from(pid) & ((1 << PID_BITS) - 1)) << START_BITS)
            | (start & ((1 << START_BITS) - 1))
    }

    /// `(state, pid, start)` of a word; any bits decode to some triple.
    #[inline]
    pub(crate) fn parts(w: u64) -> (u64, u32, u64) {
        (w >> (PID_BITS + START_BITS), ((w >> START_BITS) & ((1 << PID_BITS) - 1)) as u32, w & ((1 << START_BITS) - 1))
    }

    /// Whether the process `w` names runs with the start time `w` records
    /// (compared as packed, i.e. truncated). A `/proc` that cannot be read
    /// proves nothing (see `sys::alive_matching`); callers decide what a
    /// recorded start time of 0 means before asking.
    pub(crate) fn runs(w: u64) -> bool {
        let (state, pid, _) = parts(w);
        crate::sys::alive_matching(pid, |live| pack(state, pid, live) == w)
    }
}

/// At most one event per interval, per holder (process-local).
///
/// Stores the monotonic time, in nanoseconds, of the last event it allowed.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last_ns: AtomicU64,
}

impl RateLimit {
    /// A limiter whose first check is due at once.
    pub(crate) const fn new() -> RateLimit {
        RateLimit { last_ns: AtomicU64::new(0) }
    }

    /// Whether at least `every` has passed since the last allowed event (as of
    /// `now`, a monotonic time); if so, records `now` as the last one.
    #[inline]
    pub(crate) fn due_at(&self, now: Duration, every: Duration) -> bool {
        let now = now.as_nanos() as u64;
        let last = self.last_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_nanos() as u64 {
            self.last_ns.store(now, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Records an event now, whatever the interval (a forced check).
    pub(crate) fn mark(&self, now: Duration) {
        self.last_ns.store(now.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_per_interval() {
        let r = RateLimit::new();
        let t = Duration::from_secs(100);
        let every = Duration::from_millis(20);
        assert!(r.due_at(t, every));
        assert!(!r.due_at(t + Duration::from_millis(19), every));
        assert!(r.due_at(t + every, every));
        r.mark(t + Duration::from_secs(1));
        assert!(!r.due_at(t + Duration::from_secs(1), every));
    }

    #[test]
    fn own_identity_is_alive() {
        assert!(alive(sys::current_process()));
        let mut other = sys::current_process();
        other.start_time += 1;
        assert!(dead(other));
    }
}
