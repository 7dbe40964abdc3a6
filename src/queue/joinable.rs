//! [`JoinableQueue<T>`]: a [`Queue`] that counts unfinished tasks, as Python's
//! `multiprocessing.JoinableQueue`.
//!
//! `put` increments the shared `unfinished` counter (control block offset 48)
//! before the item is published; `task_done` decrements it and, when it reaches
//! zero, bumps `join_word` and wakes every joiner. `join` sleeps on `join_word`
//! with the same sleeper-count handshake as the queue itself.
//!
//! Crash semantics: a worker killed between `get` and `task_done` leaves its
//! task counted as unfinished (as in Python). `join` returns
//! [`QueueJoinError::Disconnected`] once no receiver is left alive; while other
//! receivers live, bound the wait with [`JoinableQueue::join_timeout`].

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytemuck::Pod;

use super::{
    Queue, QueueBuilder, QueueConfig, QueueJoinError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TaskDoneError, TryRecvError, TrySendError,
};
use crate::error::OpenError;
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::segment::{Handle, Segment};
use crate::time::Deadline;

/// A queue of `T` whose consumers report each item done; [`join`](Self::join)
/// waits until every item put has been reported.
///
/// Use it through its halves ([`QueueBuilder::create_joinable_split`],
/// [`JoinableQueue::split`]): the receivers' iterators end once every sender
/// is gone.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shmproc::JoinableQueue;
/// let (tx, rx) = JoinableQueue::<u32>::builder().capacity(16).create_joinable_split()?;
/// tx.put(1)?;
/// let job = rx.get()?;
/// rx.task_done()?;
/// tx.join_timeout(std::time::Duration::from_secs(1))?;
/// # let _ = job; Ok(()) }
/// ```
pub struct JoinableQueue<T: Pod> {
    q: Queue<T>,
}

impl<T: Pod> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue { q: self.q.clone() }
    }
}

impl<T: Pod> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue").field("unfinished", &self.unfinished()).field("queue", &self.q).finish()
    }
}

impl<T: Pod> QueueBuilder<T> {
    /// Creates a [`JoinableQueue`] with this builder's settings.
    pub fn create_joinable(self) -> Result<JoinableQueue<T>, OpenError> {
        Ok(JoinableQueue { q: self.build_create(ObjectKind::JoinableQueue)? })
    }
    /// Opens a named [`JoinableQueue`].
    pub fn open_joinable(self) -> Result<JoinableQueue<T>, OpenError> {
        self.cast().open()
    }
    /// Opens the [`JoinableQueue`] behind `handle`.
    pub fn open_joinable_handle(self, handle: &Handle) -> Result<JoinableQueue<T>, OpenError> {
        self.cast().open_handle(handle)
    }
    /// Opens the named [`JoinableQueue`], or creates it.
    pub fn open_or_create_joinable(self) -> Result<JoinableQueue<T>, OpenError> {
        Ok(JoinableQueue { q: self.build_open_or_create(ObjectKind::JoinableQueue)? })
    }
}

/// How long the receivers must stay gone before `join` reports
/// [`QueueJoinError::Disconnected`] (they are scanned at least twice).
const CONFIRM_GONE: std::time::Duration = std::time::Duration::from_millis(20);

impl<T: Pod> JoinableQueue<T> {
    /// A builder (finish it with `create_joinable`, `open_joinable`, ...).
    pub fn builder() -> QueueBuilder<T> {
        Queue::builder()
    }

    /// An anonymous joinable queue of `capacity` items.
    pub fn anonymous(capacity: usize) -> Result<Self, OpenError> {
        Queue::builder().capacity(capacity).create_joinable()
    }

    fn counter(&self) -> &std::sync::atomic::AtomicU64 {
        &self.q.engine().control().unfinished
    }

    fn undo_put(&self) {
        // The put failed: take back its count (saturating, so a scribbled
        // counter never wraps).
        let _ = self.counter().fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1)));
        self.wake_if_done();
    }

    /// Puts an item, waiting while the queue is full.
    pub fn put(&self, v: T) -> Result<(), SendError<T>> {
        self.counter().fetch_add(1, Ordering::SeqCst);
        self.q.send(v).inspect_err(|_| self.undo_put())
    }

    /// Puts an item if there is room now.
    pub fn try_put(&self, v: T) -> Result<(), TrySendError<T>> {
        self.counter().fetch_add(1, Ordering::SeqCst);
        self.q.try_send(v).inspect_err(|_| self.undo_put())
    }

    /// Puts an item, waiting at most `timeout` for room.
    pub fn put_timeout(&self, v: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.counter().fetch_add(1, Ordering::SeqCst);
        self.q.send_timeout(v, timeout).inspect_err(|_| self.undo_put())
    }

    /// Takes an item, waiting while the queue is empty.
    pub fn get(&self) -> Result<T, RecvError> {
        self.q.recv()
    }

    /// Takes an item if one is there now.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.q.try_recv()
    }

    /// Takes an item, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.q.recv_timeout(timeout)
    }

    /// Reports one item taken with `get` as done.
    ///
    /// Errors: [`TaskDoneError::TooManyCalls`] if no task is unfinished;
    /// [`TaskDoneError::Corrupt`] if another process truncated the segment.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let r = self.counter().fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        // A truncated segment reads (and swallows writes) as zeros.
        if self.q.segment().lost() {
            return Err(TaskDoneError::Corrupt);
        }
        if r.map_err(|_| TaskDoneError::TooManyCalls)? == 1 {
            self.wake_if_done();
        }
        Ok(())
    }

    fn wake_if_done(&self) {
        let c = self.q.engine().control();
        if self.counter().load(Ordering::SeqCst) == 0 && c.join_waiters.load(Ordering::SeqCst) != 0 {
            self.q.engine().wake_word_all(&c.join_word);
        }
    }

    /// Items put and not yet reported done.
    pub fn unfinished(&self) -> u64 {
        self.counter().load(Ordering::SeqCst)
    }

    /// Waits until every item put has been reported done.
    ///
    /// Unlike Python's `join`, it does not wait for ever once no one is left
    /// to report the tasks done: if every receiver is gone (dropped, or dead:
    /// checked every 100 ms) while tasks are unfinished, it returns
    /// [`QueueJoinError::Disconnected`]. A receiver killed between `get` and
    /// `task_done` while other receivers live leaves its task unfinished for
    /// as long as they live; bound that with [`join_timeout`](Self::join_timeout).
    /// A handle that can itself receive (a role-less `JoinableQueue`, not a
    /// [`JoinableSender`](crate::JoinableSender)) counts as a live receiver.
    ///
    /// Errors: [`QueueJoinError::Disconnected`], or [`QueueJoinError::Corrupt`] if
    /// another process truncated the segment.
    pub fn join(&self) -> Result<(), QueueJoinError> {
        self.join_deadline(Deadline::NEVER)
    }

    /// Like [`join`](Self::join), giving up after `timeout` with
    /// [`QueueJoinError::Timeout`].
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), QueueJoinError> {
        self.join_deadline(Deadline::after(Some(timeout)))
    }

    fn join_deadline(&self, deadline: Deadline) -> Result<(), QueueJoinError> {
        let c = self.q.engine().control();
        let announce = crate::wait::Announce::new(&c.join_word, &c.join_waiters);
        let mut gone_since = None;
        loop {
            let seq = announce.enter();
            match self.join_check(deadline, &mut gone_since) {
                Ok(false) => {}
                done => {
                    announce.leave();
                    return done.map(|_| ());
                }
            }
            // Bounded slices: a receiver's death wakes no one, and a
            // task_done from a process that died before its wake-up ran
            // wakes no one either; each slice re-checks both.
            let _ = crate::wait::sleep(&crate::wait::Kernel, &c.join_word, seq, deadline, crate::wait::JOIN_SLICE);
            announce.leave();
        }
    }

    /// One look for `join`: `Ok(true)` when every task is done, `Ok(false)`
    /// to keep waiting. `gone_since`: when the receivers were first found
    /// gone, in this run of looks.
    fn join_check(
        &self,
        deadline: Deadline,
        gone_since: &mut Option<std::time::Instant>,
    ) -> Result<bool, QueueJoinError> {
        let n = self.counter().load(Ordering::SeqCst);
        if self.q.segment().lost() {
            // A truncated segment reads as zeros: not "every task done".
            return Err(QueueJoinError::Corrupt);
        }
        if n == 0 {
            return Ok(true);
        }
        if !self.q.engine().receivers_gone() {
            *gone_since = None;
        } else if gone_since.get_or_insert_with(std::time::Instant::now).elapsed() >= CONFIRM_GONE {
            // Gone at two scans at least CONFIRM_GONE apart: one scan is not
            // atomic (a receiver handing its entry over to another slot may
            // be missed in both), and a put that failed for want of
            // receivers takes its count back only after its send failed.
            // Re-read: the last receiver may have reported its task done and
            // then left since the first read.
            return match self.counter().load(Ordering::SeqCst) {
                0 => Ok(true),
                unfinished => Err(QueueJoinError::Disconnected { unfinished }),
            };
        }
        if deadline.expired() {
            return Err(QueueJoinError::Timeout);
        }
        Ok(false)
    }

    /// The underlying queue (sends through it are not counted as tasks).
    pub fn as_queue(&self) -> &Queue<T> {
        &self.q
    }

    /// How another process opens this queue.
    pub fn handle(&self) -> Handle {
        self.q.handle()
    }

    /// The segment holding the queue.
    pub fn segment(&self) -> &Segment {
        self.q.segment()
    }
}

crate::object::serde_object!([T: Pod] JoinableQueue<T>);
impl<T: Pod> Object for JoinableQueue<T> {
    const KIND: ObjectKind = ObjectKind::JoinableQueue;
    type Params = QueueConfig;
    fn segment(&self) -> &Segment {
        JoinableQueue::segment(self)
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Ok(JoinableQueue { q: b.cast::<Queue<T>>().build_open(ObjectKind::JoinableQueue, handle)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmObject;

    #[test]
    fn join_waits_for_task_done() {
        let q = JoinableQueue::<u32>::anonymous(8).unwrap();
        q.join_timeout(Duration::from_millis(1)).unwrap();
        for i in 0..5 {
            q.put(i).unwrap();
        }
        assert_eq!(q.unfinished(), 5);
        assert_eq!(q.join_timeout(Duration::from_millis(20)), Err(QueueJoinError::Timeout));
        let w = q.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..5 {
                w.get_timeout(Duration::from_secs(5)).unwrap();
                std::thread::sleep(Duration::from_millis(2));
                w.task_done().unwrap();
            }
        });
        q.join_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(q.task_done(), Err(TaskDoneError::TooManyCalls));
        assert!(matches!(Queue::<u32>::open_handle(&q.handle()), Err(OpenError::KindMismatch { .. })));
    }

    const T: Duration = Duration::from_secs(10);

    /// Runs `join()` (no timeout) on another thread and waits at most `T` for it.
    fn join_bounded(tx: crate::JoinableSender<u32>) -> Result<(), QueueJoinError> {
        crate::test_util::within_10s(move || tx.join())
    }

    #[test]
    fn join_ends_when_the_last_receiver_leaves_with_tasks_unfinished() {
        let (tx, rx) = JoinableQueue::<u32>::anonymous(8).unwrap().split().unwrap();
        for i in 0..3 {
            tx.put(i).unwrap();
        }
        assert_eq!(rx.get_timeout(T), Ok(0));
        rx.task_done().unwrap();
        assert_eq!(rx.get_timeout(T), Ok(1));
        // One taken and not done, one never taken: both unfinished.
        assert_eq!(tx.join_timeout(Duration::from_millis(20)), Err(QueueJoinError::Timeout));
        drop(rx);
        assert_eq!(join_bounded(tx), Err(QueueJoinError::Disconnected { unfinished: 2 }));
    }

    #[test]
    fn join_succeeds_when_the_last_receiver_reports_everything_and_leaves() {
        let (tx, rx) = JoinableQueue::<u32>::anonymous(8).unwrap().split().unwrap();
        tx.put(5).unwrap();
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(rx.get_timeout(T), Ok(5));
            rx.task_done().unwrap();
        });
        assert_eq!(join_bounded(tx), Ok(()));
        worker.join().unwrap();
    }

    #[test]
    fn join_waits_for_a_first_receiver() {
        // No receiver has ever opened the queue: it may still come, so the
        // join times out rather than reporting Disconnected.
        let q = JoinableQueue::<u32>::builder().role(crate::Role::Sender).capacity(8).create_joinable().unwrap();
        q.put(1).unwrap();
        assert_eq!(q.join_timeout(Duration::from_millis(150)), Err(QueueJoinError::Timeout));
    }
}
