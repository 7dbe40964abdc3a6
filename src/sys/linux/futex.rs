//! Futex wait and wake on a word that may live in shared memory.
//!
//! Every call passes `Flags::empty()`: `FUTEX_PRIVATE_FLAG` keys the wait queue on
//! the virtual address inside one process, so a private futex never wakes a waiter
//! in another process. Ours must, so they are always shared.
//!
//! Waits take an absolute deadline on `CLOCK_MONOTONIC` (`FUTEX_WAIT_BITSET` with
//! `FUTEX_BITSET_MATCH_ANY`), so a wait that is interrupted and retried never
//! stretches the caller's timeout.

use std::num::NonZeroU32;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;
use rustix::time::{clock_gettime, ClockId, Timespec};

/// How a futex wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// Woken, interrupted by a signal, or the word no longer held `expected`.
    /// The caller must re-check its condition either way.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// Nanoseconds since an unspecified start on `CLOCK_MONOTONIC` (the clock that
/// `std::time::Instant` also uses on Linux), as a [`Duration`].
#[inline]
pub(crate) fn monotonic_now() -> Duration {
    let ts = clock_gettime(ClockId::Monotonic);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn to_timespec(d: Duration) -> Timespec {
    Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: d.subsec_nanos().into() }
}

/// `FUTEX_WAIT_BITSET` (shared): sleeps while `*word == expected`, until woken or
/// until the absolute monotonic `deadline` (None: no deadline).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Duration>) -> WaitOutcome {
    let ts = deadline.map(to_timespec);
    let all = NonZeroU32::new(u32::MAX).expect("u32::MAX is non-zero");
    match futex::wait_bitset(word, futex::Flags::empty(), expected, ts.as_ref(), all) {
        Ok(()) => WaitOutcome::Woken,
        Err(Errno::TIMEDOUT) => WaitOutcome::TimedOut,
        // AGAIN: the word changed before we slept. INTR: a signal arrived. Both
        // mean "look again"; the caller loops and re-evaluates its deadline.
        Err(Errno::AGAIN) | Err(Errno::INTR) => WaitOutcome::Woken,
        // EFAULT/EINVAL cannot happen for a valid &AtomicU32 and a normalised
        // timespec; treat anything else as a spurious wake-up rather than panic:
        // the caller's loop and deadline keep it bounded.
        Err(_) => WaitOutcome::Woken,
    }
}

/// `FUTEX_WAKE` (shared): wakes up to `n` waiters; returns how many were woken.
#[inline]
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}
