//! [`Event`]: a flag that processes wait for, like Python's `multiprocessing.Event`.
//!
//! ## Algorithm
//!
//! The flag is the futex word (0 clear, anything else set). `wait` spins
//! briefly, then registers in `waiters` and sleeps while the flag is 0; `set`
//! stores 1 and wakes every sleeper if `waiters` is non-zero (both sides
//! `SeqCst`, as for the semaphore).
//!
//! ## Layout (payload, 64 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field     | meaning                               |
//! |-------:|-----:|-----------|---------------------------------------|
//! | 0      | 4    | `flag`    | 0 clear, non-zero set (futex word)    |
//! | 4      | 4    | `waiters` | processes (about to be) sleeping      |
//! | 8      | 56   | reserved  | zero                                  |

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use super::atomic::AtomicU32;
use super::{loom_sc_fence, spin_until, Os, Platform, Shared, SharedState};
use crate::error::OpenError;
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

#[repr(C, align(64))]
pub(crate) struct EventState {
    flag: AtomicU32,
    waiters: AtomicU32,
    _reserved: [AtomicU32; 14],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<EventState>() == 64);
    assert!(std::mem::offset_of!(EventState, waiters) == 4);
};

// SAFETY: repr(C), only AtomicU32s, align 64; any flag value is "set" or "clear".
unsafe impl SharedState for EventState {}

impl EventState {
    /// A heap twin (tests and loom).
    #[cfg(any(test, loom))]
    pub(crate) fn new() -> EventState {
        EventState {
            flag: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            _reserved: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    pub(crate) fn set<P: Platform>(&self, p: &P) {
        self.flag.swap(1, SeqCst);
        loom_sc_fence();
        if self.waiters.load(SeqCst) != 0 {
            p.wake(&self.flag, i32::MAX as u32);
        }
    }

    #[cfg(any(test, loom))]
    pub(crate) fn wait<P: Platform>(&self, p: &P, deadline: Deadline) -> bool {
        self.wait_watching(p, deadline, || false)
    }

    /// [`wait`](Self::wait), in slices of [`PEER_SLICE`](crate::wait::PEER_SLICE)
    /// (loom models no time: one wait) with `lost` (the segment's
    /// [`Segment::lost`](crate::Segment::lost)) looked at after each: a
    /// segment truncated under the wait ends it with `false` (the flag is a
    /// private zero now, which no `set` will ever reach).
    pub(crate) fn wait_watching<P: Platform>(&self, p: &P, deadline: Deadline, lost: impl Fn() -> bool) -> bool {
        if self.flag.load(Acquire) != 0 || spin_until(|| self.flag.load(Acquire) != 0, crate::wait::EVENT_SPINS) {
            return true;
        }
        let until = || if cfg!(loom) { deadline } else { deadline.min_after(crate::wait::PEER_SLICE) };
        loop {
            self.waiters.fetch_add(1, SeqCst);
            loom_sc_fence();
            if self.flag.load(SeqCst) == 0 {
                p.wait(&self.flag, 0, until());
            }
            self.waiters.fetch_sub(1, Relaxed);
            if self.flag.load(Acquire) != 0 {
                return true;
            }
            if lost() {
                return false;
            }
            // Checked whatever the wait reported: a wait also ends early when
            // the word changed, on a signal, or on a peer's wake-up, and those
            // can keep coming past the deadline.
            if deadline.expired() {
                return false;
            }
        }
    }
}

/// A flag shared between processes: `set`, `clear`, and `wait` until set.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let ev = shmproc::Event::anonymous()?;
/// assert!(!ev.wait_timeout(Duration::from_millis(1)));
/// ev.set();
/// assert!(ev.is_set());
/// assert!(ev.wait());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Event {
    shared: Shared<EventState>,
}

/// Builder for [`Event`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type EventBuilder = Builder<Event>;

impl Builder<Event> {
    /// Creates the event, initially clear.
    pub fn create(self) -> Result<Event, OpenError> {
        Ok(Event { shared: Shared::create(&self, |_| {})? })
    }
    /// Opens the named event, or creates it clear.
    pub fn open_or_create(self) -> Result<Event, OpenError> {
        Ok(Event { shared: Shared::open_or_create(&self, |_| {})? })
    }
}

crate::object::serde_object!([] Event);
impl Object for Event {
    const KIND: ObjectKind = ObjectKind::Event;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.shared.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(Event { shared: Shared::open(&b, handle)? })
    }
}

impl Event {
    /// A builder with default options (anonymous, mode 0600).
    pub fn builder() -> EventBuilder {
        Builder::default()
    }
    /// An anonymous event, shared with children forked later.
    pub fn anonymous() -> Result<Self, OpenError> {
        Self::builder().create()
    }
    /// Creates a named event.
    pub fn create(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).create()
    }
    /// Opens a named event.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        self.shared.get().set(&Os);
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.shared.get().flag.store(0, Release);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.shared.get().flag.load(Acquire) != 0
    }

    /// Blocks until the flag is set; returns `true` (as Python's
    /// `Event.wait()`). It returns `false` only if the event's named segment
    /// was truncated by another process (seen within 50 ms): the flag then
    /// reads clear here for ever, and no `set` can reach it.
    pub fn wait(&self) -> bool {
        self.wait_until(Deadline::NEVER)
    }

    /// Blocks until the flag is set or `timeout` passes; returns whether it is set
    /// (as Python's `Event.wait(timeout)`). A `false` comes no earlier than
    /// `timeout`, unless the segment was truncated (as for [`wait`](Self::wait)).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Deadline::after(Some(timeout)))
    }

    fn wait_until(&self, deadline: Deadline) -> bool {
        let seg = self.shared.segment();
        self.shared.get().wait_watching(&Os, deadline, || seg.lost())
    }

    /// How another process opens this event.
    pub fn handle(&self) -> Handle {
        self.shared.segment().handle()
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Segment {
        self.shared.segment()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("set", &self.is_set()).field("segment", self.shared.segment()).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn regression_wait_deadline_ignored_while_futex_wait_never_times_out() {
        let e = EventState::new();
        let p = crate::sync::NeverTimesOut::new();
        assert!(!e.wait(&p, Deadline::after(Some(Duration::from_millis(20)))));
        assert!(!p.overshot(), "wait kept waiting long past its deadline");
    }

    #[test]
    fn set_clear_wait() {
        let e = Event::anonymous().unwrap();
        assert!(!e.is_set());
        let t = Instant::now();
        assert!(!e.wait_timeout(Duration::from_millis(25)));
        assert!(t.elapsed() >= Duration::from_millis(25));
        let e2 = e.clone();
        let h = std::thread::spawn(move || e2.wait_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(10));
        e.set();
        assert!(h.join().unwrap());
        e.clear();
        assert!(!e.is_set());
    }
}
