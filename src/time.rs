//! Absolute deadlines on `CLOCK_MONOTONIC`.

use std::time::Duration;

use crate::sys;

/// An absolute point on the monotonic clock, or "never".
///
/// Every blocking call turns its relative timeout into a `Deadline` once, at the
/// start, so retries after spurious wake-ups or `EINTR` never extend the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(Option<Duration>);

impl Deadline {
    /// No deadline: wait forever.
    pub(crate) const NEVER: Deadline = Deadline(None);

    /// `timeout` from now; `None` waits forever.
    #[inline]
    pub(crate) fn after(timeout: Option<Duration>) -> Deadline {
        match timeout {
            None => Deadline::NEVER,
            Some(t) => Deadline(Some(sys::monotonic_now().saturating_add(t))),
        }
    }

    /// The absolute monotonic time, for the futex layer.
    #[inline]
    pub(crate) fn at(self) -> Option<Duration> {
        self.0
    }

    /// Whether the deadline has passed.
    #[inline]
    pub(crate) fn expired(self) -> bool {
        match self.0 {
            None => false,
            Some(at) => sys::monotonic_now() >= at,
        }
    }

    /// Time left (zero once expired); `None` for "never".
    #[inline]
    pub(crate) fn remaining(self) -> Option<Duration> {
        self.0.map(|at| at.saturating_sub(sys::monotonic_now()))
    }

    /// The earlier of `self` and `timeout` from now.
    pub(crate) fn min_after(self, timeout: Duration) -> Deadline {
        let other = sys::monotonic_now().saturating_add(timeout);
        Deadline(Some(match self.0 {
            None => other,
            Some(at) => at.min(other),
        }))
    }
}
