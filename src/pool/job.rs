//! One submitted job (a map, an `apply`, an `imap` stream): the results that
//! arrived, how many are expected, the completion callbacks, and the typed
//! handles ([`AsyncResult`]) that wait for it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::error::{MapError, TaskError};
use super::wire::{self, Item, WireError};
use crate::time::Deadline;

/// Results of consecutive items, as they arrive.
#[derive(Debug)]
pub(crate) enum Batch {
    /// A worker's result frame for items `first..first + count` (count checked
    /// by the dispatcher; the items are parsed, with bounds checks, by [`items`]).
    Frame { first: u64, count: u32, frame: Vec<u8> },
    /// `count` items from `first` that all failed with `error`.
    Fail { first: u64, count: u32, error: TaskError },
}

impl Batch {
    /// How many items it answers.
    pub(crate) fn count(&self) -> u64 {
        match self {
            Batch::Frame { count, .. } | Batch::Fail { count, .. } => u64::from(*count),
        }
    }
}

/// Calls `each(index, result bytes or error)` for every item of `b`. A frame
/// that is shorter than its count says gives `Deserialize` errors for the rest.
#[inline(always)]
pub(crate) fn items(b: &Batch, mut each: impl FnMut(u64, Result<Item<'_>, TaskError>)) {
    match b {
        Batch::Fail { first, count, error } => {
            for i in 0..u64::from(*count) {
                each(first + i, Err(error.clone()));
            }
        }
        Batch::Frame { first, count, frame } => {
            let mut r = wire::Items::new(frame, wire::RESULT_HEADER.min(frame.len()));
            for i in 0..u64::from(*count) {
                let item = match r.next_result() {
                    Some(Ok(item)) => Ok(item),
                    Some(Err(bytes)) => Err(worker_error(bytes)),
                    None => Err(TaskError::Deserialize { reason: "a malformed result frame".into() }),
                };
                each(first + i, item);
            }
        }
    }
}

/// Decodes every item of `b` onto the end of `out`, in order; `Err` names
/// the first failed item (the items before it are in `out`).
///
/// What `map` spends its time on in the caller: runs of plain items are
/// decoded by a loop monomorphised for their kind ([`wire::Items::plain_run_into`]),
/// anything else item by item.
pub(crate) fn decode_into<R: DeserializeOwned>(b: &Batch, out: &mut Vec<R>) -> Result<(), MapError> {
    let (first, count, frame) = match b {
        Batch::Fail { count: 0, .. } => return Ok(()),
        Batch::Fail { first, error, .. } => return Err(map_error(*first, error.clone())),
        Batch::Frame { first, count, frame } => (*first, u64::from(*count), frame),
    };
    let mut r = wire::Items::new(frame, wire::RESULT_HEADER.min(frame.len()));
    let mut i = 0u64;
    while i < count {
        i += r.plain_run_into(usize::try_from(count - i).unwrap_or(usize::MAX), out) as u64;
        if i == count {
            break;
        }
        let item = match r.next_result() {
            Some(Ok(item)) => Ok(item),
            Some(Err(bytes)) => Err(worker_error(bytes)),
            None => Err(TaskError::Deserialize { reason: "a malformed result frame".into() }),
        };
        match decode::<R>(item) {
            Ok(v) => out.push(v),
            Err(error) => return Err(map_error(first + i, error)),
        }
        i += 1;
    }
    Ok(())
}

/// The error a worker reported for an item (the bytes of a `WireError`).
#[cold]
fn worker_error(bytes: &[u8]) -> TaskError {
    match crate::decode::from_bytes::<WireError>(bytes) {
        Ok(e) => TaskError::from(e),
        Err(e) => TaskError::Deserialize { reason: format!("a worker's error report: {e}") },
    }
}

/// Decodes one item's result.
#[inline]
pub(crate) fn decode<R: DeserializeOwned>(r: Result<Item<'_>, TaskError>) -> Result<R, TaskError> {
    wire::decode_item(r?).map_err(|e| TaskError::Deserialize { reason: format!("decoding the result: {e}") })
}

type OnDone = Box<dyn FnOnce(Vec<Batch>, u64) + Send>;
/// A value decoded in the pool's thread, or the panic its decoding raised.
type Decoded<T, E> = std::thread::Result<Result<T, E>>;
/// A callback on a value.
pub(crate) type Callback<T> = Option<Box<dyn FnOnce(&T) + Send>>;

pub(crate) struct JobState {
    /// Batches not yet taken by a consumer.
    pub(crate) ready: VecDeque<Batch>,
    /// Items answered so far.
    pub(crate) arrived: u64,
    /// Items expected, once the submitter knows.
    pub(crate) total: Option<u64>,
    /// Runs once, in the thread that completes the job, before `finished`.
    on_done: Option<OnDone>,
    /// Complete, and the completion callback (if any) has run.
    pub(crate) finished: bool,
    /// Whether any item failed.
    pub(crate) failed: bool,
    /// A consumer waits for the next batch (an `imap` iterator), not only for
    /// the end: wake it when `ready` stops being empty.
    pub(crate) streaming: bool,
}

/// A job shared by the submitter, its handle and the dispatcher.
pub(crate) struct Job {
    state: Mutex<JobState>,
    cv: Condvar,
    /// `sys::process_stamp()` of the process that submitted it: a forked
    /// child's copy of the job (in a copied [`AsyncResult`]) gets nothing
    /// delivered, so it never waits for it.
    stamp: u64,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Job").field("arrived", &s.arrived).field("total", &s.total).finish()
    }
}

impl Job {
    pub(crate) fn new() -> Arc<Job> {
        Arc::new(Job {
            state: Mutex::new(JobState {
                ready: VecDeque::new(),
                arrived: 0,
                total: None,
                on_done: None,
                finished: false,
                failed: false,
                streaming: false,
            }),
            cv: Condvar::new(),
            stamp: crate::sys::process_stamp(),
        })
    }

    /// Whether this is a forked child's copy of a job of its parent.
    pub(crate) fn inherited(&self) -> bool {
        crate::sys::inherited(self.stamp)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the completion callback (before any result can arrive).
    pub(crate) fn set_on_done(&self, f: OnDone) {
        self.lock().on_done = Some(f);
    }

    /// Adds results.
    pub(crate) fn deliver(&self, b: Batch) {
        let mut s = self.lock();
        s.arrived += b.count();
        if matches!(b, Batch::Fail { .. }) {
            s.failed = true;
        }
        let first = s.ready.is_empty();
        s.ready.push_back(b);
        let wake = first && s.streaming;
        self.settle(s, wake);
    }

    /// Records how many items the job has.
    pub(crate) fn set_total(&self, total: u64) {
        let mut s = self.lock();
        s.total = Some(total);
        self.settle(s, true);
    }

    /// Completes the job if everything arrived, running the callback outside
    /// the lock. Waiters are woken only when what they wait for may hold
    /// (`wake`, or the end): a wake-up per batch would cost a context switch each.
    fn settle<'a>(&'a self, mut s: MutexGuard<'a, JobState>, wake: bool) {
        if s.finished || s.total != Some(s.arrived) {
            drop(s);
            if wake {
                self.cv.notify_all();
            }
            return;
        }
        if let Some(cb) = s.on_done.take() {
            let batches: Vec<Batch> = s.ready.drain(..).collect();
            let total = s.arrived;
            drop(s);
            // The job finishes whatever the callback does: a panic here (the
            // callbacks of `AsyncResult` catch their own) must neither leave
            // its waiters waiting nor unwind the dispatcher.
            // (The payload is forgotten, not dropped: its drop could panic.)
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(batches, total))) {
                std::mem::forget(p);
            }
            s = self.lock();
        }
        s.finished = true;
        drop(s);
        self.cv.notify_all();
    }

    /// Waits for results not yet taken and takes them (a consumer that
    /// decodes while the workers run: `imap`, and `map` in the caller's thread).
    pub(crate) fn take_batches(&self) -> Vec<Batch> {
        let mut s = self.lock();
        if s.ready.is_empty() {
            s.streaming = true;
            drop(s);
            s = self.wait_until(Deadline::NEVER, |s| !s.ready.is_empty()).0;
            s.streaming = false;
        }
        s.ready.drain(..).collect()
    }

    /// Waits until `cond` holds or the deadline passes; returns the guard and whether it holds.
    pub(crate) fn wait_until(
        &self,
        deadline: Deadline,
        cond: impl Fn(&JobState) -> bool,
    ) -> (MutexGuard<'_, JobState>, bool) {
        let mut s = self.lock();
        loop {
            if cond(&s) {
                return (s, true);
            }
            if self.inherited() {
                // Nothing in this process delivers to this copy.
                return (s, false);
            }
            let wait = match deadline.remaining() {
                None => Duration::from_millis(100),
                Some(d) if d.is_zero() => return (s, false),
                Some(d) => d.min(Duration::from_millis(100)),
            };
            s = self.cv.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Turns a finished job's batches into the handle's value.
pub(crate) type Decoder<T, E> = fn(Vec<Batch>, u64) -> Result<T, E>;

/// Decoder of `apply`: the one item.
pub(crate) fn decode_one<R: DeserializeOwned>(batches: Vec<Batch>, _total: u64) -> Result<R, TaskError> {
    let mut out = Err(TaskError::Deserialize { reason: "no result arrived".into() });
    for b in &batches {
        items(b, |_, r| out = decode(r));
    }
    out
}

/// Decoder of `map_results`: every item's own result, in input order.
pub(crate) fn decode_each<R: DeserializeOwned>(
    batches: Vec<Batch>,
    total: u64,
) -> Result<Vec<Result<R, TaskError>>, TaskError> {
    let n = usize::try_from(total).unwrap_or(usize::MAX);
    let mut slots: Vec<Option<Result<R, TaskError>>> = Vec::new();
    slots.resize_with(n, || None);
    for b in &batches {
        items(b, |i, r| {
            if let Some(s) = usize::try_from(i).ok().and_then(|i| slots.get_mut(i)) {
                *s = Some(decode(r));
            }
        });
    }
    Ok(slots
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(TaskError::Deserialize { reason: "no result arrived".into() })))
        .collect())
}

/// `map` in the caller's thread: waits for the `total` items of `job` (its
/// whole input submitted), decoding each batch as soon as every item before
/// it is decoded, so the caller decodes while the workers still run. Returns
/// at the first failed item, as Python's `map` does.
pub(crate) fn gather_map<R: DeserializeOwned>(job: &Job, total: u64) -> Result<Vec<R>, MapError> {
    let mut out: Vec<R> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut early: BTreeMap<u64, Batch> = BTreeMap::new();
    let mut answered = 0u64;
    while (out.len() as u64) < total {
        for b in job.take_batches() {
            answered += b.count();
            early.insert(first_of(&b), b);
        }
        while let Some(b) = early.remove(&(out.len() as u64)) {
            decode_into(&b, &mut out)?;
        }
        if answered >= total && (out.len() as u64) < total {
            // Every item answered, yet they do not tile the input: a correct
            // pool never gets here; fail rather than wait forever.
            let error = TaskError::Deserialize { reason: "no result arrived".into() };
            return Err(MapError { index: out.len(), error });
        }
    }
    Ok(out)
}

#[cold]
fn map_error(index: u64, error: TaskError) -> MapError {
    MapError { index: index as usize, error }
}

/// The index of a batch's first item.
fn first_of(b: &Batch) -> u64 {
    match b {
        Batch::Frame { first, .. } | Batch::Fail { first, .. } => *first,
    }
}

/// Decoder of `map`: every result in input order, or the first failed item.
///
/// Fast path: batches sorted by their first index, decoded straight into the
/// output when they tile `0..total` exactly; anything else (which a correct
/// pool never produces) takes the general path.
pub(crate) fn decode_all<R: DeserializeOwned>(mut batches: Vec<Batch>, total: u64) -> Result<Vec<R>, MapError> {
    batches.sort_by_key(first_of);
    let mut next = 0u64;
    let tiles = batches.iter().all(|b| {
        let ok = first_of(b) == next;
        next += b.count();
        ok
    }) && next == total;
    if tiles {
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for b in &batches {
            decode_into(b, &mut out)?;
        }
        return Ok(out);
    }
    let each = decode_each::<R>(batches, total).map_err(|error| MapError { index: 0, error })?;
    let mut out = Vec::with_capacity(each.len());
    for (index, r) in each.into_iter().enumerate() {
        out.push(r.map_err(|error| MapError { index, error })?);
    }
    Ok(out)
}

/// The handle of an asynchronous call ([`Pool::apply_async`](super::Pool::apply_async),
/// [`Pool::map_async`](super::Pool::map_async), ...): Python's `AsyncResult`.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn square(x: u64) -> u64 { x * x }
/// let pool = shmproc::Pool::builder().processes(2).create()?;
/// let h = pool.apply_async(square, 7);
/// assert_eq!(h.get()?, 49);
/// # Ok(()) }
/// ```
pub struct AsyncResult<T, E = TaskError> {
    job: Arc<Job>,
    /// With callbacks: the decoded value, or the panic of a user
    /// `Deserialize` that ran in the pool's thread (re-raised by `get`).
    cell: Arc<Mutex<Option<Decoded<T, E>>>>,
    decode: Decoder<T, E>,
    _t: PhantomData<fn() -> T>,
}

impl<T, E> fmt::Debug for AsyncResult<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult").field("ready", &self.job.lock().finished).finish()
    }
}

impl<T: Send + 'static, E: Send + 'static> AsyncResult<T, E> {
    /// A handle on `job`; with callbacks, they run (in the pool's thread) as
    /// soon as the job completes, and `get` returns the same value after.
    pub(crate) fn new(job: Arc<Job>, decode: Decoder<T, E>, on_result: Callback<T>, on_error: Callback<E>) -> Self {
        let cell = Arc::new(Mutex::new(None));
        if on_result.is_some() || on_error.is_some() {
            let c = cell.clone();
            job.set_on_done(Box::new(move |batches, total| {
                use std::panic::{catch_unwind, AssertUnwindSafe};
                // Both run in the pool's thread. A decode that panics (a user
                // `Deserialize`) panics again in `get`, as it would have
                // without callbacks; a callback that panics has been reported
                // by the panic hook and leaves the value for `get`.
                let v = catch_unwind(AssertUnwindSafe(|| decode(batches, total)));
                if let Ok(v) = &v {
                    let r = catch_unwind(AssertUnwindSafe(|| match v {
                        Ok(t) => on_result.map(|f| f(t)),
                        Err(e) => on_error.map(|f| f(e)),
                    }));
                    // Forgotten, not dropped: the payload's drop could panic.
                    if let Err(p) = r {
                        std::mem::forget(p);
                    }
                }
                *c.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
            }));
        }
        AsyncResult { job, cell, decode, _t: PhantomData }
    }

    /// Waits for the result (Python's `get()`).
    pub fn get(self) -> Result<T, E> {
        match self.get_deadline(Deadline::NEVER) {
            Ok(v) => v,
            // Unreachable: without a deadline the wait only ends when finished
            // (or, in a forked child's copy, closed).
            Err(h) => h.closed_here(),
        }
    }

    /// Every item not answered before the fork fails with
    /// [`TaskError::Closed`] in a forked child's copy (the parent's call goes on).
    fn closed_here(self) -> Result<T, E> {
        let total = self.job.lock().total.unwrap_or(0);
        let mut fails = Vec::new();
        let mut first = 0;
        while first < total {
            let count = (total - first).min(u64::from(u32::MAX)) as u32;
            fails.push(Batch::Fail { first, count, error: TaskError::Closed });
            first += u64::from(count);
        }
        (self.decode)(fails, total)
    }

    /// Waits at most `timeout`; on timeout hands the handle back (Python's
    /// `get(timeout)` raising `TimeoutError`). The pool stays usable either way.
    pub fn get_timeout(self, timeout: Duration) -> Result<Result<T, E>, Self> {
        self.get_deadline(Deadline::after(Some(timeout)))
    }

    fn get_deadline(self, deadline: Deadline) -> Result<Result<T, E>, Self> {
        let (mut s, done) = self.job.wait_until(deadline, |s| s.finished);
        if !done {
            drop(s);
            if self.job.inherited() {
                return Ok(self.closed_here());
            }
            return Err(self);
        }
        if let Some(v) = self.cell.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Ok(v.unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        let batches: Vec<Batch> = s.ready.drain(..).collect();
        let total = s.arrived;
        drop(s);
        Ok((self.decode)(batches, total))
    }

    /// Whether the call has completed (Python's `ready()`).
    pub fn ready(&self) -> bool {
        self.job.lock().finished
    }

    /// `Some(true)` if it completed without any failed item, `Some(false)` if an
    /// item failed, `None` while it runs (Python raises `ValueError` then).
    pub fn successful(&self) -> Option<bool> {
        let s = self.job.lock();
        if !s.finished {
            return None;
        }
        if let Some(v) = self.cell.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Some(matches!(v, Ok(Ok(_))));
        }
        let mut ok = !s.failed;
        for b in &s.ready {
            items(b, |_, r| ok &= r.is_ok());
        }
        Some(ok)
    }

    /// Waits until the call has completed (Python's `wait()`).
    pub fn wait(&self) {
        let _ = self.job.wait_until(Deadline::NEVER, |s| s.finished);
    }

    /// Waits at most `timeout`; `true` if it has completed.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait_until(Deadline::after(Some(timeout)), |s| s.finished).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with(items: &[(u8, &[u8])]) -> Vec<u8> {
        let mut f = Vec::new();
        wire::result_header(&mut f, 9, 0, 1, 0);
        for (tag, bytes) in items {
            f.push(*tag);
            f.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            f.extend_from_slice(bytes);
        }
        wire::set_result_count(&mut f, items.len() as u32);
        f
    }

    fn ok_frame(values: &[u64]) -> Vec<u8> {
        let mut f = Vec::new();
        wire::result_header(&mut f, 9, 0, 1, 0);
        for v in values {
            wire::push_ok(&mut f, v);
        }
        wire::set_result_count(&mut f, values.len() as u32);
        f
    }

    #[test]
    fn decode_into_mixes_plain_runs_with_other_items_and_names_the_failed_one() {
        let mut f = Vec::new();
        wire::result_header(&mut f, 9, 0, 1, 0);
        wire::push_ok(&mut f, &1u64);
        wire::push_ok(&mut f, &2u64);
        f.push(wire::POSTCARD); // a postcard item between plain runs
        wire::append_len_prefixed(&mut f, &3u64).unwrap();
        wire::push_ok(&mut f, &4u32); // plain of another kind
        wire::push_err(&mut f, &WireError::Panicked { message: "m".into(), location: None });
        wire::push_ok(&mut f, &6u64);
        let b = Batch::Frame { first: 100, count: 6, frame: f.clone() };
        let mut out: Vec<u64> = Vec::new();
        let e = decode_into(&b, &mut out).unwrap_err();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(e.index, 104);
        assert!(matches!(e.error, TaskError::Panicked { .. }), "{e:?}");

        // A plain item that does not fit the result type: its own error, at its index.
        let mut out: Vec<u8> = Vec::new();
        let b = Batch::Frame { first: 0, count: 2, frame: ok_frame(&[7, 300]) };
        let e = decode_into(&b, &mut out).unwrap_err();
        assert_eq!((out, e.index), (vec![7u8], 1));
        assert!(matches!(e.error, TaskError::Deserialize { .. }), "{e:?}");

        // A frame shorter than its count: the missing items are an error, not a hang or a panic.
        let b = Batch::Frame { first: 0, count: 4, frame: ok_frame(&[1, 2]) };
        let mut out: Vec<u64> = Vec::new();
        assert_eq!(decode_into(&b, &mut out).unwrap_err().index, 2);
        // A failed batch fails at its first item; an empty one is nothing.
        let fail = Batch::Fail { first: 5, count: 2, error: TaskError::Closed };
        assert_eq!(
            decode_into::<u64>(&fail, &mut Vec::new()).unwrap_err(),
            MapError { index: 5, error: TaskError::Closed }
        );
        let empty = Batch::Fail { first: 5, count: 0, error: TaskError::Closed };
        assert!(decode_into::<u64>(&empty, &mut Vec::new()).is_ok());
    }

    #[test]
    fn gather_map_decodes_batches_in_any_order_and_stops_at_the_first_failure() {
        let job = Job::new();
        job.set_total(6);
        job.deliver(Batch::Frame { first: 3, count: 3, frame: ok_frame(&[3, 4, 5]) });
        job.deliver(Batch::Frame { first: 0, count: 3, frame: ok_frame(&[0, 1, 2]) });
        assert_eq!(gather_map::<u64>(&job, 6).unwrap(), vec![0, 1, 2, 3, 4, 5]);

        // A failure after an item still missing: returned once the items
        // before it are in, with its index.
        let job = Job::new();
        job.set_total(4);
        job.deliver(Batch::Fail { first: 2, count: 1, error: TaskError::Closed });
        job.deliver(Batch::Frame { first: 0, count: 2, frame: ok_frame(&[0, 1]) });
        let e = gather_map::<u64>(&job, 4).unwrap_err();
        assert_eq!((e.index, e.error), (2, TaskError::Closed));

        // Answers that do not tile the input (never from a correct pool): an
        // error, not an endless wait.
        let job = Job::new();
        job.set_total(2);
        job.deliver(Batch::Frame { first: 1, count: 2, frame: ok_frame(&[1, 2]) });
        assert_eq!(gather_map::<u64>(&job, 2).unwrap_err().index, 0);
    }

    #[test]
    fn items_decode_ok_and_error_items() {
        let mut ok = Vec::new();
        wire::push_ok(&mut ok, &42u64);
        let mut f = Vec::new();
        wire::result_header(&mut f, 9, 0, 1, 0);
        f.extend_from_slice(&ok);
        wire::push_err(&mut f, &WireError::Panicked { message: "m".into(), location: None });
        let b = Batch::Frame { first: 10, count: 2, frame: f };
        let mut got = Vec::new();
        items(&b, |i, r| got.push((i, decode::<u64>(r))));
        assert_eq!(got[0], (10, Ok(42)));
        assert_eq!(got[1], (11, Err(TaskError::Panicked { message: "m".into(), location: None })));
    }

    #[test]
    fn hostile_result_frames_give_errors_not_panics() {
        // A length past the end, an unknown tag, a truncated header, garbage error bytes.
        let mut long = frame_with(&[(0, &[1])]);
        let at = wire::RESULT_HEADER + 1;
        long[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        for f in [long, frame_with(&[(7, &[1])]), vec![1, 2, 3], frame_with(&[(1, &[0xff; 9])])] {
            let b = Batch::Frame { first: 0, count: 3, frame: f };
            let mut n = 0;
            items(&b, |_, r| {
                assert!(decode::<u64>(r).is_err());
                n += 1;
            });
            assert_eq!(n, 3, "every expected item gets an answer");
        }
    }

    #[test]
    fn map_decoders_name_the_first_failed_index() {
        let mut f = Vec::new();
        wire::result_header(&mut f, 1, 0, 1, 0);
        wire::push_ok(&mut f, &1u32);
        let batches = vec![
            Batch::Frame { first: 0, count: 1, frame: f },
            Batch::Fail { first: 2, count: 1, error: TaskError::Closed },
            Batch::Fail { first: 1, count: 1, error: TaskError::Terminated },
        ];
        let e = decode_all::<u32>(batches, 3).unwrap_err();
        assert_eq!(e, MapError { index: 1, error: TaskError::Terminated });
    }

    #[test]
    fn a_job_finishes_when_every_item_arrived_and_runs_its_callback_once() {
        let job = Job::new();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let h = hits.clone();
        job.set_on_done(Box::new(move |b, total| {
            assert_eq!((b.len(), total), (2, 2));
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        job.deliver(Batch::Fail { first: 0, count: 1, error: TaskError::Closed });
        assert!(!job.lock().finished);
        job.set_total(2);
        assert!(!job.lock().finished);
        job.deliver(Batch::Fail { first: 1, count: 1, error: TaskError::Closed });
        assert!(job.lock().finished);
        assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
