//! [`Pool`]: a process pool with Python's `multiprocessing.Pool` methods, that
//! never hangs when a worker dies.
//!
//! Python:
//!
//! ```python
//! from multiprocessing import Pool
//!
//! def f(x):
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool(5) as p:
//!         print(p.map(f, [1, 2, 3]))
//! ```
//!
//! shmproc:
//!
//! ```no_run
//! fn f(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     shmproc::init(); // first line of main (for the Spawn and ForkServer start methods)
//!     let p = shmproc::Pool::builder().processes(5).create()?;
//!     println!("{:?}", p.map(f, [1, 2, 3])?);
//!     Ok(())
//! }
//! ```
//!
//! | Python `Pool` | shmproc [`Pool`] |
//! |---|---|
//! | `Pool(processes, initializer, initargs, maxtasksperchild)` | [`Pool::builder`]`.processes(n).initializer(f, arg).maxtasksperchild(n)`, plus `start_method`, `task_timeout`, `retries` |
//! | `map(func, iterable, chunksize)` | [`map`](Pool::map), [`map_chunksize`](Pool::map_chunksize) (`Err` names the first failed item); [`map_results`](Pool::map_results) gives every item's own result |
//! | `map_async(func, iterable, chunksize, callback, error_callback)` | [`map_async`](Pool::map_async), [`map_async_with`](Pool::map_async_with) ([`Callbacks`]) |
//! | `imap(func, iterable, chunksize)` | [`imap`](Pool::imap), [`imap_chunksize`](Pool::imap_chunksize): lazy, bounded window (Python reads the whole input first) |
//! | `imap_unordered(func, iterable, chunksize)` | [`imap_unordered`](Pool::imap_unordered), [`imap_unordered_chunksize`](Pool::imap_unordered_chunksize) |
//! | `starmap(func, iterable)` / `starmap_async` | [`starmap`](Pool::starmap) / [`starmap_async`](Pool::starmap_async) (`fn(A, B) -> R` over `(A, B)` items; other arities: a closure that spreads the tuple, see [`starmap`](Pool::starmap)) |
//! | `apply(func, args)` / `apply_async(func, args, callback, error_callback)` | [`apply`](Pool::apply) / [`apply_async`](Pool::apply_async), [`apply_async_with`](Pool::apply_async_with) |
//! | `AsyncResult.get(timeout)`, `ready()`, `successful()`, `wait(timeout)` | [`AsyncResult::get`], [`get_timeout`](AsyncResult::get_timeout), [`ready`](AsyncResult::ready), [`successful`](AsyncResult::successful), [`wait`](AsyncResult::wait), [`wait_timeout`](AsyncResult::wait_timeout) |
//! | `close()`, `join()`, `terminate()` | [`close`](Pool::close), [`join`](Pool::join), [`join_timeout`](Pool::join_timeout), [`terminate`](Pool::terminate); `Drop` terminates |
//! | `map(lambda x: x + k, ...)`: fails (a lambda does not pickle) | [`Closure::new`]`(move \|x\| x + k)` before the pool, then [`map_closure`](Pool::map_closure) / [`map_closure_async`](Pool::map_closure_async) / [`apply_closure`](Pool::apply_closure) (start method Fork) |
//! | a killed worker: the pool hangs forever | the task it ran fails with [`TaskError::WorkerDied`] (or is retried), a replacement starts, every other task is delivered |
//!
//! ## Tasks
//! A task is a `fn(A) -> R` (a non-capturing closure coerces to one) whose
//! argument and result are serde types; it runs under every start method
//! (workers are [`Process`](crate::Process)es running the same executable, and
//! the function travels as an offset the way a `Process` target does).
//!
//! **Capturing closures** run where workers are forked
//! ([`StartMethod::Fork`]): a forked worker holds a copy of everything its
//! parent had at the fork, so, as in Python where the function must exist
//! before `Pool()` is called, you make the closure first, then the pool:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::pool::Closure;
//! use shmproc::process::StartMethod;
//! use shmproc::Pool;
//! let weights = vec![0.5f64, 2.0, 4.0];
//! let weigh = Closure::new(move |i: usize| weights[i] * 10.0); // 1. the closure
//! let pool = Pool::builder().start_method(StartMethod::Fork).create()?; // 2. the pool
//! assert_eq!(pool.map_closure(&weigh, [0, 2])?, vec![5.0, 40.0]);
//! # Ok(()) }
//! ```
//!
//! A [`Closure`] lives until the process exits (replacement workers, forked
//! later, need it too). A closure made after the pool, or given to a Spawn or
//! ForkServer pool, is refused: each item fails with [`TaskError::Serialize`]
//! saying why, and nothing is sent.
//!
//! ## How it works
//! One thread in the parent (the dispatcher) owns the workers. Work goes out in
//! chunks (Python's chunking: `ceil(len / (4 * processes))` items for `map`, 1
//! for `imap` and `apply`), packed into runs of whole chunks (about 256 items,
//! never more than one frame) over one shared-memory queue per worker; results
//! come back in batches over one shared queue. The dispatcher keeps about
//! 300 us of work queued ahead of each worker, by its measured time per item:
//! thousands of tiny tasks, so no worker waits for the parent, but only a chunk
//! or two of long ones, so no worker holds work another could run. Waits sleep
//! on a futex, so an idle pool costs no CPU; they spin briefly first only
//! where the workers, the dispatcher and the caller each have a CPU of their
//! own (`processes + 2 <= cpu_count()`): elsewhere a spinning thread would
//! take the CPU from the one it waits for. Worker deaths are read from the
//! kernel (each worker's pidfd), and an in-flight table in shared memory tells
//! exactly which item a dead worker had started and holds the results it had
//! finished but not yet sent (see `SAFETY.md`, section 8.2).
//!
//! Arguments and results are encoded with postcard, except a value that is one
//! bare primitive (`u64`, `f64`, `char`, ...): that one travels as its
//! fixed-width bytes, found out per value through serde (nothing to opt into).
//! For a trivial task such as `map(|x| x * x)`, encoding had been most of the
//! pool's cost per item.
//!
//! ## Failures
//! Every item has its own `Result<R, TaskError>`: a panic is
//! [`TaskError::Panicked`] (the worker lives on); a worker that died
//! (`kill -9`, `abort()`) fails only the item it was running, with
//! [`TaskError::WorkerDied`] (with [`retries(n)`](PoolBuilder::retries) the
//! item runs again, up to `n` times, on another worker): the items it had
//! finished are delivered, the ones it had not started run on another worker.
//! A task running longer than [`task_timeout`](PoolBuilder::task_timeout) is
//! killed with its worker ([`TaskError::TimedOut`]). An argument or result
//! that fails to encode or decode fails its own item. A failing initializer is
//! reported once: as the `Err` of [`PoolBuilder::create`], or, in a
//! replacement worker, as [`TaskError::InitializerFailed`] for every task not
//! yet run. If the pool's shared results queue is found corrupt (a task, or
//! any process that can write it, scribbled over it), results may have been
//! lost: the pool stops, kills its workers and fails every task in it with
//! [`TaskError::Corrupt`] (later ones with [`TaskError::Closed`]) rather
//! than wait for an answer that cannot come.
//!
//! ## Lifetime
//! [`close`](Pool::close) refuses new work; [`join`](Pool::join) waits for the
//! work already submitted, stops the workers and reaps them;
//! [`terminate`](Pool::terminate) kills the workers at once and fails pending
//! tasks with [`TaskError::Terminated`]. **Dropping a pool terminates it**
//! (as Python's `Pool.__exit__` does): pending work is abandoned, workers are
//! killed and reaped; it never blocks for longer than the pool's thread
//! takes to notice and the killed workers take to end (milliseconds).
//! Workers are daemons (`PR_SET_PDEATHSIG`): if the parent is killed, so are
//! they.
//!
//! A pool's thread and segments outlive it a little, for the next pool of the
//! process (a loop or a test suite that makes pool after pool starts each in
//! about two thirds of the time): the thread waits up to 5 s for the next
//! pool, then exits (so the process stays multi-threaded that long after its
//! last pool: a call that needs a single-threaded process, such as
//! `unshare(CLONE_NEWTIME)`, may fail meanwhile); the segments of workers
//! seen to end (its queues and its
//! in-flight table, about `(3 x processes + 4) x max_frame` bytes) are kept,
//! up to 16 MiB in all, until a later pool of the same shape takes them or
//! the process exits. They are anonymous (memfds): nothing is left in
//! `/dev/shm`, and a forked child never uses its parent's (nor its waiting
//! threads). See
//! `SAFETY.md`, section 8.3.
//!
//! A `Pool` is `Send + Sync`: several threads may submit at once. A copy of
//! a pool in a forked child (a `Process::closure` capturing an `Arc<Pool>`)
//! is closed there: its tasks fail with [`TaskError::Closed`], and `join`,
//! `terminate` and dropping it return at once; the parent's pool goes on.

mod closure;
mod dispatch;
mod error;
mod job;
mod plain;
mod spare;
mod table;
mod thread;
mod wire;
mod worker;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use closure::{Closure, MAX_CLOSURES};
pub use error::{JoinTimeoutError, MapError, PoolError, TaskError};
pub use job::AsyncResult;

use dispatch::{Chunk, Config, Dispatcher, Done, Inbox, SetOnDrop, Shared};
use job::{Batch, Job};
use table::Table;
use wire::RunMany;

use crate::process::{self, StartMethod};
use crate::time::Deadline;

/// Default largest frame (a chunk's arguments, or a batch of its results).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;
/// Frames a worker's task queue holds (each up to 64 runs or one `max_frame`).
const QUEUE_DEPTH: usize = 2;
/// Runs a submitting thread packs before it hands them to the pool's thread,
/// or items, whichever comes first (runs of big chunks hold thousands).
const SUBMIT_BATCH: usize = 64;
const SUBMIT_ITEMS: u64 = 4096;
/// Items a run holds at most (whole chunks; one chunk if it is larger): the
/// pool's bookkeeping and its queue operations are per run (see `dispatch.rs`).
const RUN_ITEMS: usize = 256;
/// Frames the shared results queue holds.
const RESULTS_CAPACITY: usize = 4;

/// Configures a [`Pool`]; made by [`Pool::builder`].
#[must_use = "a builder does nothing until create()"]
pub struct PoolBuilder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    init: Option<Result<dispatch::Init, String>>,
    max_tasks: u64,
    task_timeout: Option<Duration>,
    retries: u32,
    max_frame: usize,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("method", &self.method)
            .field("initializer", &self.init.is_some())
            .field("maxtasksperchild", &self.max_tasks)
            .field("task_timeout", &self.task_timeout)
            .field("retries", &self.retries)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl PoolBuilder {
    /// Number of workers (default: [`cpu_count()`](crate::process::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// How workers are started (default: [`StartMethod::default`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Runs `f(arg)` once in each worker before its first task (Python's
    /// `initializer` and `initargs`).
    pub fn initializer<A: Serialize + DeserializeOwned + 'static>(mut self, f: fn(A), arg: A) -> Self {
        let runner = wire::run_init::<A> as wire::RunInit as usize;
        let func = f as usize;
        self.init = Some(if !process::same_object(runner) || !process::same_object(func) {
            Err("the initializer lies outside the executable".into())
        } else {
            postcard::to_allocvec(&arg)
                .map(|bytes| (process::offset_of(runner), process::offset_of(func), bytes))
                .map_err(|e| format!("encoding the initializer's argument: {e}"))
        });
        self
    }

    /// Replaces a worker after it ran `n` tasks (0, the default: never).
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.max_tasks = n;
        self
    }

    /// Kills a worker whose task runs longer than `d`; the task gets
    /// [`TaskError::TimedOut`] and a replacement starts.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.task_timeout = Some(d);
        self
    }

    /// Runs a task whose worker died again, up to `n` times (default 0). Only
    /// for idempotent tasks: a task may have had effects before its worker died.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Largest frame in bytes (default [`DEFAULT_MAX_FRAME`]): one argument or
    /// one result larger than this fails with [`TaskError::Serialize`].
    pub fn max_frame(mut self, n: usize) -> Self {
        self.max_frame = n;
        self
    }

    /// Starts the workers. With an [`initializer`](PoolBuilder::initializer),
    /// waits until each has run it (its failure is this call's `Err`);
    /// without one, returns at once and the first tasks wait in the queue
    /// while the workers start.
    pub fn create(self) -> Result<Pool, PoolError> {
        let processes = self.processes.unwrap_or_else(process::cpu_count);
        if processes == 0 {
            return Err(PoolError::Invalid("processes must be at least 1".into()));
        }
        if self.max_frame < 64 {
            return Err(PoolError::Invalid("max_frame must be at least 64 bytes".into()));
        }
        let init = match self.init {
            None => None,
            Some(Ok(i)) => Some(i),
            Some(Err(reason)) => return Err(PoolError::Initializer { reason }),
        };
        let config = Config {
            processes,
            method: self.method.unwrap_or_default(),
            init,
            max_tasks: self.max_tasks,
            task_timeout: self.task_timeout,
            retries: self.retries,
            max_frame: self.max_frame,
            queue_depth: QUEUE_DEPTH,
            // Read before the first fork: every worker has these closures.
            closures: closure::registered(),
            // The workers, the dispatcher and the caller.
            spin: processes.saturating_add(2) <= process::cpu_count(),
        };
        let results = dispatch::frame_queue(&config, RESULTS_CAPACITY, false)?;
        let table = Table::create(processes, config.max_frame)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: results.clone(),
            config,
            pids: Mutex::new(Vec::new()),
            done: Arc::new(Done::default()),
            stamp: crate::sys::process_stamp(),
            broken: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), PoolError>>();
        let s2 = shared.clone();
        // The workers are started by the pool's thread, which lives at least
        // as long as the pool: a daemon child's death signal fires when its
        // *thread* exits (see `thread.rs`).
        thread::run(Box::new(move || {
            // Declared first, dropped last (also by a panic's unwinding): set
            // once the dispatcher is gone, and normally only once this thread
            // waits for the next pool (`thread::Then`).
            let done = SetOnDrop(s2.done.clone());
            let mut d = Dispatcher::new(s2, results, table);
            match d.start_all() {
                Ok(()) => {
                    let _ = tx.send(Ok(()));
                    d.run();
                }
                Err(e) => {
                    drop(d); // kills and reaps the workers started so far
                    let _ = tx.send(Err(e));
                }
            }
            Box::new(move || drop(done))
        }))
        .map_err(PoolError::Thread)?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Pool { shared, processes }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PoolError::Invalid("the pool thread ended during start".into())),
        }
    }
}

/// Optional callbacks for an asynchronous call; they run in the parent, in
/// the pool's thread, as soon as the call completes (keep them short, as in
/// Python). A callback must not wait for the pool it runs in: `join`,
/// `terminate`, dropping the pool or a blocking `get` there would wait for
/// the thread that runs the callback.
pub struct Callbacks<T, E = TaskError> {
    on_result: job::Callback<T>,
    on_error: job::Callback<E>,
}

impl<T, E> Default for Callbacks<T, E> {
    fn default() -> Self {
        Callbacks { on_result: None, on_error: None }
    }
}

impl<T, E> fmt::Debug for Callbacks<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_result", &self.on_result.is_some())
            .field("on_error", &self.on_error.is_some())
            .finish()
    }
}

impl<T, E> Callbacks<T, E> {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }
    /// Called with the value when the call succeeds (Python's `callback`).
    pub fn on_result(mut self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.on_result = Some(Box::new(f));
        self
    }
    /// Called with the error when it fails (Python's `error_callback`).
    pub fn on_error(mut self, f: impl FnOnce(&E) + Send + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }
}

/// A pool of worker processes. See the [module docs](self).
pub struct Pool {
    shared: Arc<Shared>,
    processes: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("method", &self.shared.config.method)
            .field("workers", &self.worker_pids())
            .finish()
    }
}

/// A task function and its item runner, as offsets.
#[derive(Clone, Copy)]
struct Target {
    runner: i64,
    func: i64,
    /// Why no item of this target can be sent (each fails with `Serialize`).
    refused: Option<&'static str>,
}

impl Target {
    fn new(runner: RunMany, func: usize) -> Target {
        let r = runner as usize;
        let ok = process::same_object(r) && process::same_object(func);
        Target {
            runner: process::offset_of(r),
            func: process::offset_of(func),
            refused: (!ok).then_some("the task function lies outside the executable"),
        }
    }

    /// A [`Closure`] for `pool`: its table index, tagged, and its runner.
    fn closure<A, R>(pool: &Pool, c: &Closure<A, R>) -> Target
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        let mut t = Target::new(closure::run_closure::<A, R>, closure::run_closure::<A, R> as RunMany as usize);
        match c.index() {
            _ if t.refused.is_some() => {}
            None => t.refused = Some("the process made more closures than pool::MAX_CLOSURES"),
            Some(_) if pool.shared.config.method != StartMethod::Fork => {
                t.refused = Some("closures run only in a pool whose start method is Fork")
            }
            Some(i) if i >= pool.shared.config.closures => {
                t.refused = Some("the closure was made after the pool: its workers do not have it")
            }
            Some(i) => t.func = wire::CLOSURE_TAG.wrapping_add(i as i64),
        }
        t
    }
}

/// Packs encoded items into runs (task frames of whole chunks).
struct Packer<'a> {
    shared: &'a Shared,
    job: &'a Arc<Job>,
    t: Target,
    chunksize: usize,
    /// Items per run: whole chunks, about [`RUN_ITEMS`].
    run: usize,
    /// Items in `chunks` (closed runs not yet handed over).
    packed: u64,
    cur: Vec<u8>,
    first: u64,
    count: u32,
    chunks: Vec<Chunk>,
}

impl<'a> Packer<'a> {
    fn new(shared: &'a Shared, job: &'a Arc<Job>, t: Target, chunksize: usize) -> Self {
        let chunksize = chunksize.clamp(1, u32::MAX as usize);
        let run = (RUN_ITEMS / chunksize).max(1) * chunksize;
        Packer { shared, job, t, chunksize, run, packed: 0, cur: Vec::new(), first: 0, count: 0, chunks: Vec::new() }
    }

    fn close(&mut self) {
        if self.count == 0 {
            return;
        }
        let id = self.shared.chunk_id();
        let mut frame = std::mem::take(&mut self.cur);
        wire::set_task_chunk(&mut frame, id);
        wire::set_task_count(&mut frame, self.count);
        self.packed += u64::from(self.count);
        self.chunks.push(Chunk {
            id,
            job: self.job.clone(),
            first: self.first,
            count: self.count,
            sub: self.chunksize as u32,
            frame,
            tries: 0,
            answered: 0,
        });
        self.count = 0;
    }

    fn fail(&mut self, index: u64, error: TaskError) {
        self.close();
        self.job.deliver(Batch::Fail { first: index, count: 1, error });
    }

    fn add<A: Serialize + ?Sized>(&mut self, index: u64, a: &A) {
        if let Some(reason) = self.t.refused {
            return self.fail(index, TaskError::Serialize { reason: reason.into() });
        }
        if self.count == 0 {
            wire::task_header(&mut self.cur, 0, self.t.runner, self.t.func, self.chunksize as u32);
            self.first = index;
        }
        let at = self.cur.len();
        if let Err(reason) = wire::push_arg(&mut self.cur, a) {
            return self.fail(index, TaskError::Serialize { reason: format!("encoding the argument: {reason}") });
        }
        let max = self.shared.config.max_frame;
        if self.cur.len() > max {
            let tail = self.cur.split_off(at);
            if wire::TASK_HEADER + tail.len() > max {
                return self.fail(
                    index,
                    TaskError::Serialize {
                        reason: format!("the argument is larger than the pool's frames ({max} bytes)"),
                    },
                );
            }
            self.close();
            wire::task_header(&mut self.cur, 0, self.t.runner, self.t.func, self.chunksize as u32);
            self.cur.extend_from_slice(&tail);
            self.first = index;
        }
        self.count += 1;
        if self.count as usize >= self.run {
            self.close();
        }
    }

    fn finish(mut self) -> Vec<Chunk> {
        self.close();
        self.chunks
    }
}

impl Pool {
    /// A builder with the defaults (`cpu_count()` workers, the default start method).
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            method: None,
            init: None,
            max_tasks: 0,
            task_timeout: None,
            retries: 0,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// A pool of `processes` workers with the other defaults.
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Pool::builder().processes(processes).create()
    }

    /// The number of workers the pool keeps.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Pids of the workers alive as far as the pool knows (a worker killed a
    /// moment ago is listed until the pool notices, within milliseconds).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The start method of the workers.
    pub fn start_method(&self) -> StartMethod {
        self.shared.config.method
    }

    fn default_chunksize(&self, len: usize) -> usize {
        len.div_ceil(4 * self.processes).max(1)
    }

    /// Submits `items` (indices from `first`) as a new job's chunks; returns the count.
    fn submit<A: Serialize>(&self, job: &Arc<Job>, t: Target, items: &[A], first: u64, chunksize: usize) -> u64 {
        let mut p = Packer::new(&self.shared, job, t, chunksize);
        for (i, a) in items.iter().enumerate() {
            p.add(first + i as u64, a);
            // Hand runs over as they are packed, so the workers start while
            // the rest of a long input is still being encoded.
            if p.chunks.len() >= SUBMIT_BATCH || p.packed >= SUBMIT_ITEMS {
                p.packed = 0;
                self.shared.submit(std::mem::take(&mut p.chunks));
            }
        }
        self.shared.submit(p.finish());
        items.len() as u64
    }

    fn map_job<A: Serialize>(&self, t: Target, items: &[A], chunksize: Option<usize>) -> Arc<Job> {
        let job = Job::new();
        let cs = chunksize.unwrap_or_else(|| self.default_chunksize(items.len()));
        let n = self.submit(&job, t, items, 0, cs);
        job.set_total(n);
        job
    }

    /// A `map` in the caller's thread, which decodes results as they arrive.
    fn map_sync<A: Serialize, R: DeserializeOwned>(
        &self,
        t: Target,
        items: Vec<A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>, MapError> {
        let job = self.map_job(t, &items, chunksize);
        let total = items.len() as u64;
        drop(items);
        job::gather_map(&job, total)
    }

    fn map_job_cb<A: Serialize, T: Send + 'static, E: Send + 'static>(
        &self,
        t: Target,
        items: Vec<A>,
        chunksize: Option<usize>,
        decode: job::Decoder<T, E>,
        cb: Callbacks<T, E>,
    ) -> AsyncResult<T, E> {
        let job = Job::new();
        let h = AsyncResult::new(job.clone(), decode, cb.on_result, cb.on_error);
        let cs = chunksize.unwrap_or_else(|| self.default_chunksize(items.len()));
        let n = self.submit(&job, t, &items, 0, cs);
        job.set_total(n);
        h
    }

    /// Python's `map`: `f` over every item, results in input order; `Err`
    /// names the first failed item (by index), and comes as soon as every item
    /// before it has succeeded, as in Python (the job's other tasks still run;
    /// [`map_results`](Pool::map_results) waits for every item's own result).
    /// The caller's thread decodes results while the workers run.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = shmproc::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u64| x * x, [1, 2, 3])?, vec![1, 4, 9]);
    /// # Ok(()) }
    /// ```
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_one::<A, R>, f as usize);
        self.map_sync(t, items.into_iter().collect(), None)
    }

    /// `map` with an explicit chunk size (items per task frame).
    pub fn map_chunksize<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_one::<A, R>, f as usize);
        self.map_sync(t, items.into_iter().collect(), Some(chunksize))
    }

    /// Every item's own result, in input order.
    pub fn map_results<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_results_with(f, items, None)
    }

    /// [`map_results`](Pool::map_results) with an explicit chunk size.
    pub fn map_results_chunksize<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_results_with(f, items, Some(chunksize))
    }

    fn map_results_with<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Vec<Result<R, TaskError>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_one::<A, R>, f as usize);
        let job = self.map_job(t, &items.into_iter().collect::<Vec<A>>(), chunksize);
        AsyncResult::new(job, job::decode_each::<R>, None, None).get().unwrap_or_default()
    }

    /// Python's `map_async`.
    pub fn map_async<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> AsyncResult<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async_with(f, items, Callbacks::new())
    }

    /// `map_async` with callbacks.
    pub fn map_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        callbacks: Callbacks<Vec<R>, MapError>,
    ) -> AsyncResult<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_one::<A, R>, f as usize);
        self.map_job_cb(t, items.into_iter().collect(), None, job::decode_all::<R>, callbacks)
    }

    /// `map` of a capturing [`Closure`] (start method Fork; the closure made
    /// before the pool). Like [`map`](Pool::map) otherwise.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shmproc::pool::Closure;
    /// let table = vec![10u64, 20, 30];
    /// let lookup = Closure::new(move |i: usize| table[i]);
    /// let pool = shmproc::Pool::builder().start_method(shmproc::process::StartMethod::Fork).create()?;
    /// assert_eq!(pool.map_closure(&lookup, [2, 0])?, vec![30, 10]);
    /// # Ok(()) }
    /// ```
    pub fn map_closure<A, R>(&self, f: &Closure<A, R>, items: impl IntoIterator<Item = A>) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_sync(Target::closure(self, f), items.into_iter().collect(), None)
    }

    /// `map_async` of a capturing [`Closure`] (see [`map_closure`](Pool::map_closure)).
    pub fn map_closure_async<A, R>(
        &self,
        f: &Closure<A, R>,
        items: impl IntoIterator<Item = A>,
    ) -> AsyncResult<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::closure(self, f);
        self.map_job_cb(t, items.into_iter().collect(), None, job::decode_all::<R>, Callbacks::new())
    }

    /// `apply` of a capturing [`Closure`] (see [`map_closure`](Pool::map_closure)).
    pub fn apply_closure<A, R>(&self, f: &Closure<A, R>, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::closure(self, f);
        self.map_job_cb(t, vec![arg], Some(1), job::decode_one::<R>, Callbacks::new()).get()
    }

    /// Python's `starmap`: `f(a, b)` for every `(a, b)`, results in input order.
    ///
    /// Functions of another number of arguments: a non-capturing closure
    /// that spreads the tuple is a `fn` too, and works under every start
    /// method.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn add(a: u64, b: u64) -> u64 { a + b }
    /// fn mul_add(a: u64, b: u64, c: u64) -> u64 { a * b + c }
    /// let pool = shmproc::Pool::new(2)?;
    /// assert_eq!(pool.starmap(add, [(1, 2), (3, 4)])?, vec![3, 7]);
    /// let three = pool.map(|(a, b, c): (u64, u64, u64)| mul_add(a, b, c), [(2, 3, 1)])?;
    /// assert_eq!(three, vec![7]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_star2::<A, B, R>, f as usize);
        self.map_sync(t, items.into_iter().collect(), None)
    }

    /// Python's `starmap_async`.
    pub fn starmap_async<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> AsyncResult<Vec<R>, MapError>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_star2::<A, B, R>, f as usize);
        self.map_job_cb(t, items.into_iter().collect(), None, job::decode_all::<R>, Callbacks::new())
    }

    /// Python's `apply`: runs `f(arg)` in a worker and waits.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, arg).get()
    }

    /// Python's `apply_async`.
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async_with(f, arg, Callbacks::new())
    }

    /// `apply_async` with callbacks.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shmproc::pool::Callbacks;
    /// let pool = shmproc::Pool::new(2)?;
    /// let h = pool.apply_async_with(|x: u32| x + 1, 41, Callbacks::new().on_result(|r: &u32| println!("got {r}")));
    /// assert_eq!(h.get()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn apply_async_with<A, R>(&self, f: fn(A) -> R, arg: A, callbacks: Callbacks<R>) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let t = Target::new(wire::run_one::<A, R>, f as usize);
        self.map_job_cb(t, vec![arg], Some(1), job::decode_one::<R>, callbacks)
    }

    /// Python's `imap`: results in input order, lazily: at most a bounded
    /// window of items is in flight, so an endless iterator works in constant
    /// memory. Chunk size 1.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_chunksize(f, items, 1)
    }

    /// `imap` with an explicit chunk size.
    pub fn imap_chunksize<A, R, I>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, Target::new(wire::run_one::<A, R>, f as usize), items.into_iter(), chunksize, true)
    }

    /// Python's `imap_unordered`: results as they arrive, lazily.
    pub fn imap_unordered<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, Target::new(wire::run_one::<A, R>, f as usize), items.into_iter(), 1, false)
    }

    /// `imap_unordered` with an explicit chunk size.
    pub fn imap_unordered_chunksize<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(self, Target::new(wire::run_one::<A, R>, f as usize), items.into_iter(), chunksize, false)
    }

    /// Refuses new work (it fails with [`TaskError::Closed`]); submitted work goes on.
    pub fn close(&self) {
        self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    }

    /// Closes the pool, waits for the submitted work, stops and reaps the workers.
    pub fn join(&self) {
        let _ = self.join_deadline(Deadline::NEVER);
    }

    /// [`join`](Self::join), waiting at most `timeout`; on timeout the pool
    /// goes on (closed) and may be joined again or terminated.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        self.join_deadline(Deadline::after(Some(timeout)))
    }

    fn join_deadline(&self, deadline: Deadline) -> Result<(), JoinTimeoutError> {
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.closed = true;
            inbox.join = true;
        }
        self.shared.wake();
        self.wait_finished(deadline)
    }

    /// Kills the workers at once; pending tasks fail with [`TaskError::Terminated`].
    pub fn terminate(&self) {
        {
            let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.closed = true;
            inbox.terminate = true;
        }
        self.shared.wake();
        let _ = self.wait_finished(Deadline::NEVER);
    }

    fn wait_finished(&self, deadline: Deadline) -> Result<(), JoinTimeoutError> {
        if self.shared.inherited() {
            // A forked child's copy: the pool, its workers and its thread are
            // the parent's, and nothing in this process will end them.
            return Ok(());
        }
        // The wake frame may have found a full queue: repeat it now and then.
        match self.shared.done.wait(deadline, || self.shared.wake()) {
            true => Ok(()),
            false => Err(JoinTimeoutError),
        }
    }
}

impl Drop for Pool {
    /// Terminates the pool (as Python's `with Pool(...)` does on exit): workers
    /// are killed and reaped, pending tasks fail with [`TaskError::Terminated`].
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one
/// `Result<R, TaskError>` per input item.
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    t: Target,
    input: Option<I>,
    chunksize: usize,
    ordered: bool,
    job: Arc<Job>,
    submitted: u64,
    yielded: u64,
    window: u64,
    by_index: BTreeMap<u64, Result<R, TaskError>>,
    arrived: VecDeque<Result<R, TaskError>>,
    staging: Vec<A>,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap").field("submitted", &self.submitted).field("yielded", &self.yielded).finish()
    }
}

impl<'p, A, R, I> Imap<'p, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned,
    I: Iterator<Item = A>,
{
    fn new(pool: &'p Pool, t: Target, input: I, chunksize: usize, ordered: bool) -> Self {
        let chunksize = chunksize.max(1);
        let window = (pool.processes * QUEUE_DEPTH * chunksize).max(1024) as u64;
        Imap {
            pool,
            t,
            input: Some(input),
            chunksize,
            ordered,
            job: Job::new(),
            submitted: 0,
            yielded: 0,
            window,
            by_index: BTreeMap::new(),
            arrived: VecDeque::new(),
            staging: Vec::new(),
        }
    }

    /// Submits input items while fewer than the window are out (refills at half).
    fn top_up(&mut self) {
        let Some(input) = self.input.as_mut() else { return };
        if self.submitted - self.yielded > self.window / 2 {
            return;
        }
        let want = (self.window - (self.submitted - self.yielded)) as usize;
        self.staging.clear();
        self.staging.extend(input.by_ref().take(want));
        let ended = self.staging.len() < want;
        let n = self.pool.submit(&self.job, self.t, &self.staging, self.submitted, self.chunksize);
        self.submitted += n;
        self.staging.clear();
        if ended {
            self.input = None;
            self.job.set_total(self.submitted);
        }
    }

    fn take_ready(&mut self) {
        for b in &self.job.take_batches() {
            job::items(b, |i, r| {
                let v = job::decode::<R>(r);
                if self.ordered {
                    self.by_index.insert(i, v);
                } else {
                    self.arrived.push_back(v);
                }
            });
        }
    }
}

impl<A, R, I> Iterator for Imap<'_, A, R, I>
where
    A: Serialize,
    R: DeserializeOwned,
    I: Iterator<Item = A>,
{
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.top_up();
            let next = if self.ordered { self.by_index.remove(&self.yielded) } else { self.arrived.pop_front() };
            if let Some(v) = next {
                self.yielded += 1;
                return Some(v);
            }
            if self.input.is_none() && self.yielded >= self.submitted {
                return None;
            }
            self.take_ready();
        }
    }
}
