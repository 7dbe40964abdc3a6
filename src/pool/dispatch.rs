//! The pool's thread (the dispatcher): starts and replaces workers, hands
//! runs to them, collects result frames, notices deaths and timeouts.
//!
//! ## Algorithm
//! Each worker has its own task queue (single producer, single consumer); all
//! workers answer on one shared results queue. Work travels in runs (task
//! frames of whole chunks, see [`Chunk`]), so the bookkeeping below is per
//! run, not per item. The dispatcher keeps, per worker, the runs it sent and
//! not yet saw answered (in send order), and [`AHEAD`] of work queued ahead
//! of each (by the worker's measured time per item: deep for short tasks, so
//! that no worker's queue runs dry while the parent is asleep or busy, since
//! waking a process costs tens of microseconds here; shallow for long ones,
//! so that the load stays balanced). It waits on the results queue
//! (adaptive: a short spin, then a futex sleep in slices), so it never spins a
//! core while tasks run. Submitting threads append to an inbox and push an
//! empty frame onto the results queue to wake it.
//!
//! Deaths are read from the kernel: every few milliseconds while work is out
//! (and on every wake otherwise) the dispatcher polls each worker's pidfd. For
//! a dead worker it first drains the results queue (answers sent before the
//! death count), then reads the in-flight table (see `table.rs`): the results
//! the worker had finished and staged are delivered, the item it had started
//! fails with `WorkerDied` (or is retried), the items it never started go to
//! other workers, and a replacement starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::error::{PoolError, TaskError};
use super::job::{Batch, Job};
use super::spare;
use super::table::Table;
use super::wire::{self, Reader};
use super::worker::{worker_main, WorkerArgs};
use crate::process::{ExitStatus, Process, StartMethod};
use crate::queue::{FrameQueue, FrameRecvError};
use crate::sys;
use crate::time::Deadline;

/// A run of consecutive items of one job, as one task frame: sub-chunks of
/// the caller's chunksize (`sub`), packed together so that the pool's
/// bookkeeping (this record, its queue frame, its answers) is per run, not
/// per item. The dispatcher splits a run when a worker should get fewer of
/// its items (slow tasks, `maxtasksperchild`).
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) id: u64,
    pub(crate) job: Arc<Job>,
    pub(crate) first: u64,
    pub(crate) count: u32,
    /// Items per sub-chunk (the caller's chunksize, at least 1).
    pub(crate) sub: u32,
    pub(crate) frame: Vec<u8>,
    pub(crate) tries: u32,
    /// Items already answered (a run is answered in one or more frames, in order).
    pub(crate) answered: u32,
}

impl Chunk {
    /// Fails items `from..to` (indices within the run).
    fn fail_range(&self, from: u32, to: u32, error: TaskError) {
        if to > from {
            self.job.deliver(Batch::Fail { first: self.first + u64::from(from), count: to - from, error });
        }
    }

    /// Fails the items not yet answered.
    fn fail(self, error: TaskError) {
        self.fail_range(self.answered, self.count, error);
    }

    /// Items `from..to` as a run of their own under chunk id `id`.
    fn slice(&self, from: u32, to: u32, id: u64) -> Chunk {
        Chunk {
            id,
            job: self.job.clone(),
            first: self.first + u64::from(from),
            count: to - from,
            sub: self.sub,
            frame: wire::slice_task(&self.frame, from, to, id),
            tries: self.tries,
            answered: 0,
        }
    }
}

/// An initializer: runner offset, function offset, argument bytes.
pub(crate) type Init = (i64, i64, Vec<u8>);

/// The pool's settings, fixed at creation.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) init: Option<Init>,
    pub(crate) max_tasks: u64,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) max_frame: usize,
    pub(crate) queue_depth: usize,
    /// Closures registered before the workers were first forked (see `closure.rs`).
    pub(crate) closures: usize,
    /// Whether the pool's waits may spin: only where the workers, the
    /// dispatcher and the caller each have a CPU of their own. Where they do
    /// not, a thread that spins for its next frame takes the CPU from the
    /// thread that would send it (measured on 2 CPUs with 2 workers, 8
    /// alternating runs each: CPU-bound speed-up 1.72x blocking against 1.66x
    /// spinning, every quantile better; chunksize-1 and trivial maps the same
    /// within the noise).
    pub(crate) spin: bool,
}

impl Config {
    /// The wait mode of the pool's receiving waits.
    pub(crate) fn wait_mode(&self) -> crate::WaitMode {
        if self.spin {
            crate::WaitMode::Adaptive
        } else {
            crate::WaitMode::Blocking
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) chunks: VecDeque<Chunk>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    pub(crate) join: bool,
}

/// Run ids and worker incarnations come from counters of the process, not
/// of the pool: no two pools of this process ever use the same ones, so a
/// stale frame or record of an earlier pool (whose segments a later one may
/// reuse, see `spare`) never names a run or an incarnation of a later one.
static NEXT_CHUNK: AtomicU64 = AtomicU64::new(1);
static NEXT_GEN: AtomicU32 = AtomicU32::new(1);

/// What the pool's handle and its thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inbox: Mutex<Inbox>,
    /// The parent's handle on the results queue, to wake the dispatcher.
    pub(crate) wake: FrameQueue,
    pub(crate) config: Config,
    /// Pids of the live workers (for `Pool::worker_pids`).
    pub(crate) pids: Mutex<Vec<u32>>,
    /// Set once the dispatcher is gone (see [`Done`]).
    pub(crate) done: Arc<Done>,
    /// `sys::process_stamp()` of the process that made the pool: a copy of
    /// the pool in a forked child (its workers and thread are the parent's)
    /// is closed there and waits for nothing.
    pub(crate) stamp: u64,
    /// The initializer failed in a replacement worker: no more tasks run.
    pub(crate) broken: AtomicBool,
}

impl Shared {
    /// Wakes the dispatcher (an empty frame on the results queue; if the
    /// queue is full the dispatcher is awake anyway).
    pub(crate) fn wake(&self) {
        if !self.inherited() {
            let _ = self.wake.try_send(&[]);
        }
    }

    /// Whether this is a forked child's copy of its parent's pool.
    pub(crate) fn inherited(&self) -> bool {
        sys::inherited(self.stamp)
    }

    pub(crate) fn chunk_id(&self) -> u64 {
        NEXT_CHUNK.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues chunks; a closed or terminated pool fails them at once.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        let refused = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            if inbox.closed || inbox.terminate || self.inherited() {
                Some(chunks)
            } else {
                inbox.chunks.extend(chunks);
                None
            }
        };
        match refused {
            Some(chunks) => {
                for c in chunks {
                    c.fail(TaskError::Closed);
                }
            }
            None => self.wake(),
        }
    }
}

/// Set once a pool's dispatcher is gone: its workers reaped (or seen to
/// end) and every handle it held dropped, so that a pool's `terminate` and
/// `join` return only then (and the next pool finds its segments spare).
/// Shared by the pool and its thread apart from [`Shared`], which the thread
/// drops before it sets this.
#[derive(Debug, Default)]
pub(crate) struct Done {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Done {
    fn set(&self) {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until set or `deadline`, calling `tick` every 100 ms; whether set.
    pub(crate) fn wait(&self, deadline: Deadline, tick: impl Fn()) -> bool {
        let mut done = self.flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let wait = match deadline.remaining() {
                None => Duration::from_millis(100),
                Some(d) if d.is_zero() => return false,
                Some(d) => d.min(Duration::from_millis(100)),
            };
            done = self.cv.wait_timeout(done, wait).unwrap_or_else(|e| e.into_inner()).0;
            tick();
        }
        true
    }
}

/// Sets its [`Done`] when dropped: at the end of the pool thread's task,
/// after the dispatcher, however that ends (a panic included).
pub(crate) struct SetOnDrop(pub(crate) Arc<Done>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Creates a frame queue shared with workers. It is anonymous under every
/// start method: it reaches a worker inside the worker's `Process` argument
/// (objects as arguments: Fork inherits the fd, ForkServer sends it with
/// `SCM_RIGHTS`, Spawn keeps it open across the exec), so the pool has no
/// name in `/dev/shm` to leave behind.
pub(crate) fn frame_queue(cfg: &Config, capacity: usize, spsc: bool) -> Result<FrameQueue, crate::OpenError> {
    let b = || FrameQueue::builder().capacity(capacity).max_frame(cfg.max_frame).spsc(spsc).fenced(true);
    let spare = b().payload_size().ok().and_then(|size| {
        spare::take(crate::header::ObjectKind::FrameQueue, crate::queue::frame_queue_type_info(), size)
    });
    match spare.map(|seg| b().create_in(seg)) {
        Some(Ok(q)) => Ok(q),
        _ => b().create(),
    }
}

struct Worker {
    proc: Option<Process<()>>,
    pid: u32,
    gen: u32,
    tasks: FrameQueue,
    /// Chunks sent and not answered, in send order.
    sent: VecDeque<u64>,
    sent_items: u64,
    assigned: u64,
    last_done: u64,
    /// When the worker last answered (or was last fed while idle), ns.
    last_answer_ns: u64,
    /// Moving average of the time one item takes in this worker, ns (0: not yet known).
    item_ns: u64,
    retiring: bool,
    timed_out: bool,
    ready: bool,
}

impl Worker {
    /// Updates the time-per-item estimate after `items` were answered: the
    /// worker had work queued since its previous answer, so the time between
    /// the two answers was spent on these items (an overestimate when it also
    /// waited for its queue, which only makes the lookahead shallower).
    fn note_answer(&mut self, items: u64) {
        let now = sys::monotonic_now().as_nanos() as u64;
        if self.last_answer_ns != 0 && items > 0 {
            let per = (now.saturating_sub(self.last_answer_ns) / items).max(1);
            // Quick to believe the worker is faster (the time between answers
            // also holds waits for work), slower to believe it is slower.
            self.item_ns = match self.item_ns {
                0 => per,
                old if per < old => (old + per) / 2,
                old => (3 * old + per) / 4,
            };
        }
        self.last_answer_ns = now;
    }

    /// Items the dispatcher may keep queued ahead of this worker (see
    /// [`AHEAD`]); before its speed is known, one sub-chunk at a time.
    fn ahead_items(&self) -> u64 {
        match self.item_ns {
            0 => 1,
            ns => (AHEAD.as_nanos() as u64 / ns).clamp(1, MAX_AHEAD_ITEMS),
        }
    }
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    results: FrameQueue,
    table: Table,
    workers: Vec<Option<Worker>>,
    pending: VecDeque<Chunk>,
    in_flight: HashMap<u64, (Chunk, usize)>,
    buf: Vec<u8>,
    last_check: Duration,
    rr: usize,
    scratch: Vec<u8>,
    /// The last worker death seen (for the give-up message).
    last_status: Option<(u32, ExitStatus)>,
    /// Per slot: how many workers in a row died before they were ready.
    early_deaths: Vec<u32>,
    /// Why the pool stopped replacing workers of a slot (see [`MAX_EARLY_DEATHS`]).
    gave_up: Vec<Option<String>>,
    /// A worker of this pool went without being seen to end (a kill whose
    /// end was not seen in [`REAP_BOUND`]): the results queue and the table,
    /// which it mapped, are not handed to `spare`.
    unseen_end: bool,
}

/// Most chunks sent to a worker in one queue frame.
const MAX_COALESCE: usize = 64;

/// How much work (by the worker's measured time per item) the dispatcher
/// keeps queued ahead of each worker. Waking a sleeping process on another
/// CPU costs tens of microseconds on a VM (`PERF.md`): a worker whose queue
/// runs dry, or a dispatcher asleep when answers arrive, stalls the pipeline
/// for that long, so short tasks need a deep queue. Long tasks need a shallow
/// one, or a worker holds work another could run. Keeping a fixed amount of
/// *time* ahead gives both: thousands of 100 ns items, two chunks of 1 ms ones.
const AHEAD: Duration = Duration::from_micros(300);
/// Most items queued ahead of a worker, whatever their speed.
const MAX_AHEAD_ITEMS: u64 = 1 << 16;

/// How long one wait on the results queue lasts while work is out (also
/// the longest delay before a death is noticed).
const BUSY_SLICE: Duration = Duration::from_millis(5);
/// How long one wait lasts while the pool is idle.
const IDLE_SLICE: Duration = Duration::from_millis(50);
/// A slot whose workers end themselves this many times in a row before they
/// are ready (before or in the initializer, without reporting a failure:
/// `abort()`, a crash, an exit) is not refilled again: replacing it in a loop
/// would spin forever. When no slot is left, pending tasks fail with
/// `StartFailed`.
const MAX_EARLY_DEATHS: u32 = 3;
/// How long `join` lets a stopped worker exit before killing it.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a dead worker's end may take to be recorded (a fork-server
/// worker's status comes from the server) before its segments are given up on.
const DEATH_RECORD: Duration = Duration::from_millis(100);
/// How long a worker's death waits for the answers still on their way
/// through the results queue (see `check_workers`).
const DEATH_DRAIN: Duration = Duration::from_secs(1);
/// How long a teardown waits for a killed worker to end before it goes on
/// without reusing the worker's segments (a SIGKILLed process ends in well
/// under a millisecond unless the kernel holds it, e.g. in a stuck I/O).
const REAP_BOUND: Duration = Duration::from_secs(5);

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Normally already done by `run`; after a panic, this keeps the promise.
        self.finish();
    }
}

impl Dispatcher {
    pub(crate) fn new(shared: Arc<Shared>, results: FrameQueue, table: Table) -> Dispatcher {
        let n = shared.config.processes;
        results.set_wait_mode(shared.config.wait_mode());
        Dispatcher {
            shared,
            results,
            table,
            workers: (0..n).map(|_| None).collect(),
            pending: VecDeque::new(),
            in_flight: HashMap::new(),
            buf: Vec::with_capacity(4096),
            last_check: Duration::ZERO,
            rr: 0,
            scratch: Vec::new(),
            last_status: None,
            early_deaths: vec![0; n],
            gave_up: vec![None; n],
            unseen_end: false,
        }
    }

    fn cfg(&self) -> &Config {
        &self.shared.config
    }

    fn publish_pids(&self) {
        let pids = self.workers.iter().flatten().map(|w| w.pid).collect();
        *self.shared.pids.lock().unwrap_or_else(|e| e.into_inner()) = pids;
    }

    /// Starts the worker of `slot`.
    fn start_worker(&mut self, slot: usize) -> Result<(), PoolError> {
        let (builder, gen, tasks) = self.worker_builder(slot)?;
        let p = builder.start().inspect_err(|_| self.unseen_end = true)?;
        self.install(slot, p, gen, tasks);
        Ok(())
    }

    /// A new incarnation of `slot`: its task queue and the builder of its process.
    fn worker_builder(&mut self, slot: usize) -> Result<(crate::process::Builder<()>, u32, FrameQueue), PoolError> {
        let gen = match NEXT_GEN.fetch_add(1, Ordering::Relaxed) {
            0 => NEXT_GEN.fetch_add(1, Ordering::Relaxed),
            g => g,
        };
        let depth = self.cfg().queue_depth;
        let tasks = frame_queue(self.cfg(), depth, true)?;
        self.table.reset(slot, gen);
        let args = WorkerArgs {
            slot: slot as u32,
            gen,
            tasks: tasks.clone(),
            results: self.results.clone(),
            table: self.table.clone(),
            init: self.cfg().init.clone(),
            max_tasks: self.cfg().max_tasks,
            timed: self.cfg().task_timeout.is_some(),
            spin: self.cfg().spin,
        };
        let b = Process::builder(worker_main, args)
            .name(format!("pool-worker-{slot}"))
            .start_method(self.cfg().method)
            .daemon(true);
        Ok((b, gen, tasks))
    }

    /// Makes the started process `p` the worker of `slot`.
    fn install(&mut self, slot: usize, p: Process<()>, gen: u32, tasks: FrameQueue) {
        self.workers[slot] = Some(Worker {
            pid: p.pid(),
            proc: Some(p),
            gen,
            tasks,
            sent: VecDeque::new(),
            sent_items: 0,
            assigned: 0,
            last_done: 0,
            last_answer_ns: 0,
            item_ns: 0,
            retiring: false,
            timed_out: false,
            ready: false,
        });
    }

    /// Starts every worker and, if the pool has an initializer, waits until
    /// each ran it (so that its failure is the error of the pool's start).
    /// Without one, tasks queue up while the workers open their objects; a
    /// worker that dies before it is ready is handled as any death.
    pub(crate) fn start_all(&mut self) -> Result<(), PoolError> {
        // All at once: a fork server forks them in one round trip.
        let mut builders = Vec::with_capacity(self.workers.len());
        let mut made = Vec::with_capacity(self.workers.len());
        for slot in 0..self.workers.len() {
            let (b, gen, tasks) = self.worker_builder(slot)?;
            builders.push(b);
            made.push((gen, tasks));
        }
        let mut first_err = None;
        for (slot, (started, (gen, tasks))) in
            crate::process::Builder::start_many(builders).into_iter().zip(made).enumerate()
        {
            match started {
                Ok(p) => self.install(slot, p, gen, tasks),
                Err(e) => {
                    // The fork server may have started a worker it did not
                    // report: nothing of this pool is reused.
                    self.unseen_end = true;
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        self.publish_pids();
        if self.cfg().init.is_none() {
            return Ok(());
        }
        loop {
            if self.workers.iter().flatten().all(|w| w.ready) {
                return Ok(());
            }
            match self.results.recv_into_vec(&mut self.buf, Some(BUSY_SLICE)) {
                Ok(()) => {
                    let mut frame = std::mem::take(&mut self.buf);
                    let r = self.on_queue_frame(&mut frame);
                    self.buf = frame;
                    if let Some(reason) = r {
                        return Err(PoolError::Initializer { reason });
                    }
                }
                // A dropped oversized frame lost a worker's message: as fatal
                // as a corrupt ring (the pool cannot tell whose it was).
                Err(FrameRecvError::Corrupt | FrameRecvError::Oversized { .. }) => {
                    self.unseen_end = true;
                    return Err(PoolError::Corrupt);
                }
                Err(_) => {
                    for w in self.workers.iter_mut().flatten() {
                        if let Some(p) = w.proc.as_mut() {
                            if !w.ready && !p.is_alive() {
                                return Err(PoolError::WorkerDied { pid: w.pid, status: p.exit_status() });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Kills every worker and waits for each to end (up to [`REAP_BOUND`];
    /// dropping a daemon `Process` then kills and reaps it as before). The
    /// task queue of a worker seen to end is handed to `spare`.
    fn kill_all(&mut self) {
        // Every worker is signalled before the first is reaped, so they die
        // together and the reaping waits once, not once per worker.
        for w in self.workers.iter().flatten() {
            if let Some(p) = w.proc.as_ref() {
                let _ = p.kill();
            }
        }
        let deadline = Deadline::after(Some(REAP_BOUND));
        for slot in self.workers.iter_mut() {
            let Some(mut w) = slot.take() else { continue };
            let bound = deadline.remaining().unwrap_or_default();
            if w.proc.take().is_some_and(|p| p.kill_and_wait(bound)) {
                spare::give(w.tasks.segment().clone());
            } else {
                self.unseen_end = true;
            }
        }
        self.publish_pids();
    }

    /// The loop; returns when the pool is terminated or joined.
    pub(crate) fn run(mut self) {
        loop {
            let (new, terminate, join) = {
                let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
                (std::mem::take(&mut inbox.chunks), inbox.terminate, inbox.join)
            };
            self.pending.extend(new);
            if terminate {
                self.kill_all();
                self.fail_everything(TaskError::Terminated);
                break;
            }
            if self.shared.broken.load(Ordering::Relaxed) {
                self.fail_pending_broken();
            }
            self.fail_pending_if_no_worker();
            let busy = !self.pending.is_empty() || !self.in_flight.is_empty();
            if join && !busy {
                self.stop_all();
                break;
            }
            let now = sys::monotonic_now();
            if !busy || now.saturating_sub(self.last_check) >= BUSY_SLICE {
                self.last_check = now;
                if self.check_workers() {
                    break;
                }
                self.check_timeouts();
            }
            self.feed();
            let mut slice = if busy { BUSY_SLICE } else { IDLE_SLICE };
            if let Some(t) = self.cfg().task_timeout {
                slice = slice.min((t / 4).max(Duration::from_millis(1)));
            }
            let mut corrupt = false;
            match self.results.recv_into_vec(&mut self.buf, Some(slice)) {
                Ok(()) => {
                    let mut frame = std::mem::take(&mut self.buf);
                    let _ = self.on_queue_frame(&mut frame);
                    // Take what else is there, refilling the workers as answers
                    // free room (a worker whose queue runs dry goes to sleep).
                    for _ in 0..256 {
                        self.feed();
                        match self.results.recv_into_vec(&mut frame, Some(Duration::ZERO)) {
                            Ok(()) => {
                                let _ = self.on_queue_frame(&mut frame);
                            }
                            Err(e) => {
                                corrupt = matches!(e, FrameRecvError::Corrupt | FrameRecvError::Oversized { .. });
                                break;
                            }
                        }
                    }
                    self.buf = frame;
                }
                Err(e) => corrupt = matches!(e, FrameRecvError::Corrupt | FrameRecvError::Oversized { .. }),
            }
            if corrupt {
                self.stop_corrupt();
                break;
            }
        }
        self.finish();
    }

    /// Handles one frame of the results queue: one or more result frames
    /// back to back; `Some(reason)` for an initializer failure.
    /// A queue frame that is one result frame (what workers send) is handed
    /// on as it is, and `frame` is left empty; otherwise each result frame
    /// is copied out.
    fn on_queue_frame(&mut self, frame: &mut Vec<u8>) -> Option<String> {
        if wire::result_frame_len(frame) == Some(frame.len()) {
            return self.on_frame(std::mem::take(frame));
        }
        let mut failed = None;
        let mut buf = &frame[..];
        while buf.len() >= wire::RESULT_HEADER {
            let Some(len) = wire::result_frame_len(buf) else { break };
            if let Some(reason) = self.on_frame(buf[..len].to_vec()) {
                failed = Some(reason);
            }
            buf = &buf[len..];
        }
        failed
    }

    /// Handles one result frame; `Some(reason)` for an initializer failure.
    fn on_frame(&mut self, frame: Vec<u8>) -> Option<String> {
        let mut r = Reader::new(&frame);
        let (Some(chunk), Some(slot), Some(gen), Some(start), Some(count)) =
            (r.u64(), r.u32(), r.u32(), r.u32(), r.u32())
        else {
            return None; // an empty wake-up frame, or garbage
        };
        let slot = slot as usize;
        if chunk == wire::READY {
            if let Some(Some(w)) = self.workers.get_mut(slot) {
                if w.gen == gen {
                    w.ready = true;
                }
            }
            return None;
        }
        if chunk == wire::INIT_FAILED {
            let batch = Batch::Frame { first: 0, count: 1, frame };
            let mut reason = String::from("the initializer failed");
            super::job::items(&batch, |_, r| {
                if let Err(e) = r {
                    reason = match e {
                        TaskError::InitializerFailed { reason } => reason,
                        other => other.to_string(),
                    }
                }
            });
            self.shared.broken.store(true, Ordering::Relaxed);
            return Some(reason);
        }
        let (c, s) = self.in_flight.get_mut(&chunk)?;
        // Only the next items of what we sent to that slot count; anything
        // else is ignored (the chunk then fails when its worker dies).
        if *s != slot || start != c.answered || count == 0 || count > c.count - c.answered {
            return None;
        }
        c.job.deliver(Batch::Frame { first: c.first + u64::from(start), count, frame });
        c.answered += count;
        let complete = c.answered == c.count;
        if let Some(Some(w)) = self.workers.get_mut(slot) {
            w.sent_items = w.sent_items.saturating_sub(u64::from(count));
            w.note_answer(u64::from(count));
            if complete {
                if let Some(pos) = w.sent.iter().position(|&id| id == chunk) {
                    w.sent.remove(pos);
                }
                w.last_done = chunk;
            }
        }
        if complete {
            self.in_flight.remove(&chunk);
        }
        None
    }

    /// Hands pending runs to workers with room, round-robin: each worker
    /// gets items until it has [`AHEAD`] of work queued (by its measured
    /// time per item), splitting a run where only part of it fits (slow
    /// tasks, `maxtasksperchild`). Runs for one worker travel together in one
    /// queue frame (up to [`MAX_COALESCE`] runs or `max_frame` bytes).
    fn feed(&mut self) {
        let n = self.workers.len();
        let max_out = self.cfg().queue_depth.saturating_sub(1).max(1) * MAX_COALESCE;
        let max_tasks = self.cfg().max_tasks;
        let max_frame = self.cfg().max_frame;
        let mut batch = std::mem::take(&mut self.scratch);
        let mut taken: Vec<Chunk> = Vec::new();
        let mut progress = true;
        while progress && !self.pending.is_empty() {
            progress = false;
            for k in 0..n {
                let slot = (self.rr + k) % n;
                let Some(w) = self.workers[slot].as_mut() else { continue };
                if w.retiring {
                    continue;
                }
                batch.clear();
                let (mut out, mut items, mut assigned) = (w.sent.len(), w.sent_items, w.assigned);
                let ahead = w.ahead_items();
                if out == 0 {
                    // Idle until now: the time to its next answer is the items' time.
                    w.last_answer_ns = sys::monotonic_now().as_nanos() as u64;
                }
                while out < max_out && (out < 2 || items < ahead) && taken.len() < MAX_COALESCE {
                    if max_tasks > 0 && assigned >= max_tasks {
                        break;
                    }
                    let Some(c) = self.pending.front_mut() else { break };
                    if !batch.is_empty() && batch.len() + c.frame.len() > max_frame {
                        break;
                    }
                    // Whole sub-chunks up to the lookahead (at least one),
                    // never past `maxtasksperchild`.
                    let sub = u64::from(c.sub.max(1));
                    let mut allow = ahead.saturating_sub(items).max(1).div_ceil(sub) * sub;
                    if max_tasks > 0 {
                        allow = allow.min(max_tasks - assigned);
                    }
                    let c = if allow < u64::from(c.count) {
                        let cut = allow as u32;
                        let front = c.slice(0, cut, self.shared.chunk_id());
                        *c = c.slice(cut, c.count, c.id);
                        front
                    } else {
                        let Some(c) = self.pending.pop_front() else { break };
                        c
                    };
                    batch.extend_from_slice(&c.frame);
                    out += 1;
                    items += u64::from(c.count);
                    assigned += u64::from(c.count);
                    taken.push(c);
                }
                if taken.is_empty() {
                    continue;
                }
                if w.tasks.try_send(&batch).is_err() {
                    for c in taken.drain(..).rev() {
                        self.pending.push_front(c);
                    }
                    continue;
                }
                for c in taken.drain(..) {
                    w.sent.push_back(c.id);
                    w.sent_items += u64::from(c.count);
                    w.assigned += u64::from(c.count);
                    self.in_flight.insert(c.id, (c, slot));
                }
                if max_tasks > 0 && w.assigned >= max_tasks {
                    w.retiring = true;
                }
                progress = true;
            }
            self.rr = self.rr.wrapping_add(1);
        }
        self.scratch = batch;
    }

    /// Polls every worker's pidfd; handles the dead ones. True: the results
    /// queue turned out corrupt and the pool stopped (`stop_corrupt`).
    fn check_workers(&mut self) -> bool {
        let mut dead = Vec::new();
        for (slot, w) in self.workers.iter_mut().enumerate() {
            match w {
                Some(w) => {
                    if let Some(p) = w.proc.as_mut() {
                        if !p.is_alive() {
                            dead.push(slot);
                        }
                    }
                }
                None if self.gave_up[slot].is_none() => dead.push(slot),
                None => {}
            }
        }
        if dead.is_empty() {
            return false;
        }
        // Answers sent before the deaths count: take them first, every one.
        // A live worker's send in progress holds back the frames published
        // after it (a dead worker's last answers among them): wait for it,
        // within DEATH_DRAIN (a dead sender's slot is recovered meanwhile).
        // Past that limit the dead worker's unanswered items count as lost.
        // (Copied out, then handled: `on_queue_frame` needs `self`; a death
        // is rare, so the copies cost nothing that matters.)
        let mut frame = std::mem::take(&mut self.buf);
        let mut got = Vec::new();
        let drained = self.results.drain_settled(&mut frame, DEATH_DRAIN, |f| got.push(f.clone()));
        self.buf = frame;
        for mut f in got {
            let _ = self.on_queue_frame(&mut f);
        }
        if drained.is_err() {
            // A dropped frame may have been a live worker's answer: as in
            // `run`, the pool cannot tell whose, so it stops.
            self.stop_corrupt();
            return true;
        }
        for slot in dead {
            self.on_death(slot);
        }
        self.publish_pids();
        false
    }

    fn on_death(&mut self, slot: usize) {
        if let Some(mut w) = self.workers[slot].take() {
            // Dead by its pidfd; a fork-server worker's status record may
            // still be on its way (it is, within moments).
            let ended = w.proc.as_mut().and_then(|p| p.wait_ended(DEATH_RECORD));
            // Reaped: its task queue can serve its replacement (`spare`).
            match ended {
                Some(_) => spare::give(w.tasks.segment().clone()),
                None => self.unseen_end = true,
            }
            let status = ended.unwrap_or(ExitStatus::Unknown);
            // A worker that ends itself before it is ready (an exit, abort(),
            // a crash) will do so again; SIGKILL comes from outside (a user,
            // the OOM killer, the chaos test), and the next one may well live.
            let own_doing = !w.ready && status != ExitStatus::Signaled(sys::Signal::KILL.as_raw());
            self.early_deaths[slot] = if own_doing { self.early_deaths[slot] + 1 } else { 0 };
            self.last_status = Some((w.pid, status));
            let record = self
                .table
                .record(slot)
                .filter(|r| r.gen.load(Ordering::Acquire) == w.gen)
                .map(|r| (r.chunk.load(Ordering::Acquire), r.item.load(Ordering::Relaxed)));
            // Where the worker was (see table.rs): the position in `sent` of
            // the run it had taken last, and the item it ran in it.
            let at = match record {
                Some((id, _)) if id == 0 || id == w.last_done => Some(None),
                Some((id, item)) => w.sent.iter().position(|&s| s == id).map(|p| Some((p, item))),
                None => None, // untrusted record: every unanswered item counts as taken
            };
            // Results it finished and had not sent yet count (see table.rs).
            if let Some(Some((p, _))) = at {
                if let Some(&id) = w.sent.get(p) {
                    self.take_staged(slot, w.gen, id);
                }
            }
            let error = if w.timed_out {
                TaskError::TimedOut { limit: self.shared.config.task_timeout.unwrap_or_default() }
            } else {
                TaskError::WorkerDied { pid: w.pid, status }
            };
            let mut requeue = Vec::new();
            for (i, id) in w.sent.drain(..).enumerate() {
                let Some((c, _)) = self.in_flight.remove(&id) else { continue };
                // Items `answered..lost` were taken and their results died
                // with the worker; `lost..count` never started.
                let lost = match at {
                    None => c.count,
                    Some(Some((p, _))) if i < p => c.count,
                    // The item it had started; the ones after it never ran.
                    Some(Some((p, item))) if i == p => item.saturating_add(1).min(u64::from(c.count)) as u32,
                    // Never taken (a run with answers was taken: the record lies).
                    _ if c.answered > 0 => c.count,
                    _ => 0,
                }
                .max(c.answered);
                if lost > c.answered {
                    if !w.timed_out && c.tries < self.shared.config.retries {
                        let mut r = c.slice(c.answered, lost, self.shared.chunk_id());
                        r.tries += 1;
                        requeue.push(r);
                    } else {
                        c.fail_range(c.answered, lost, error.clone());
                    }
                }
                if lost < c.count {
                    // Another worker runs the rest, under a new id.
                    requeue.push(c.slice(lost, c.count, self.shared.chunk_id()));
                }
            }
            for c in requeue.into_iter().rev() {
                self.pending.push_front(c);
            }
        }
        let stopping = {
            let inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.terminate
        };
        if stopping || self.shared.broken.load(Ordering::Relaxed) {
            return;
        }
        if let Some(reason) = self.give_up_reason(slot) {
            self.gave_up[slot] = Some(reason);
            self.fail_pending_if_no_worker();
            return;
        }
        if let Err(e) = self.start_worker(slot) {
            // Could not replace it: the next check tries again. If no worker
            // is left at all, nothing would run the pending tasks: fail them.
            if self.workers.iter().all(Option::is_none) {
                let reason = e.to_string();
                for c in self.pending.drain(..) {
                    c.fail(TaskError::StartFailed { reason: reason.clone() });
                }
            }
        }
    }

    /// Why `slot` is not refilled again, if its workers keep dying before
    /// they are ready (see [`MAX_EARLY_DEATHS`]).
    fn give_up_reason(&self, slot: usize) -> Option<String> {
        let n = self.early_deaths.get(slot).copied().unwrap_or(0);
        (n >= MAX_EARLY_DEATHS).then(|| {
            let last = match self.last_status {
                Some((pid, status)) => format!(" (the last one, pid {pid}: {status:?})"),
                None => String::new(),
            };
            format!("{n} workers in a row died before they were ready{last}; the pool stopped replacing them")
        })
    }

    /// With no worker left and none to be started, nothing would run the
    /// pending tasks: fail them (and, from then on, every new one).
    fn fail_pending_if_no_worker(&mut self) {
        if self.workers.iter().any(Option::is_some) {
            return;
        }
        let Some(reason) = self.gave_up.iter().flatten().next().cloned() else { return };
        if self.gave_up.iter().all(Option::is_some) {
            for c in self.pending.drain(..) {
                c.fail(TaskError::StartFailed { reason: reason.clone() });
            }
        }
    }

    /// Delivers the results a dead worker had finished for run `id` and not
    /// yet sent (its staging area: see table.rs), as if their frame had
    /// arrived; anything out of place or malformed is ignored (those items
    /// then count as started).
    fn take_staged(&mut self, slot: usize, gen: u32, id: u64) {
        let Some((start, count, bytes)) = self.table.stage(slot).and_then(|s| s.take(id)) else { return };
        let Some(answered) = self.in_flight.get(&id).map(|(c, _)| c.answered) else { return };
        // Staged: items start..start + count; those before `answered` arrived already.
        if start > answered || u64::from(start) + u64::from(count) <= u64::from(answered) {
            return;
        }
        let skip = answered - start;
        let mut r = Reader::new(&bytes);
        for _ in 0..skip {
            if wire::read_result(&mut r).is_none() {
                return;
            }
        }
        // `count` is the commit: bytes past its items belong to an item the
        // worker was still staging when it died (`len` is stored first).
        let rest = &bytes[r.position()..];
        if let Some(n) = wire::items_len(rest, count - skip) {
            let mut frame = Vec::with_capacity(wire::RESULT_HEADER + n);
            wire::result_header(&mut frame, id, slot as u32, gen, answered);
            frame.extend_from_slice(&rest[..n]);
            wire::set_result_count(&mut frame, count - skip);
            // Checked there against the run: its slot, next item, and count.
            let _ = self.on_frame(frame);
        }
    }

    /// Kills workers whose current item runs longer than the task timeout.
    fn check_timeouts(&mut self) {
        let Some(limit) = self.cfg().task_timeout else { return };
        let now = sys::monotonic_now().as_nanos() as u64;
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let Some(r) = self.table.record(slot) else { continue };
            if w.timed_out || r.gen.load(Ordering::Acquire) != w.gen || r.running.load(Ordering::Acquire) != 1 {
                continue;
            }
            let started = r.started_ns.load(Ordering::Relaxed);
            if now.saturating_sub(started) > limit.as_nanos() as u64 && started != 0 {
                w.timed_out = true;
                if let Some(p) = w.proc.as_ref() {
                    let _ = p.kill();
                }
            }
        }
    }

    /// The results queue was found corrupt: a result may have been lost (a
    /// task would then wait for ever) and the queue cannot be trusted again.
    /// Closes the pool, kills the workers and fails every task with
    /// [`TaskError::Corrupt`]; the segments are not reused.
    fn stop_corrupt(&mut self) {
        self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.unseen_end = true;
        self.kill_all();
        self.fail_everything(TaskError::Corrupt);
    }

    fn fail_pending_broken(&mut self) {
        for c in self.pending.drain(..) {
            c.fail(TaskError::InitializerFailed { reason: "the pool's initializer failed in a new worker".into() });
        }
    }

    fn fail_everything(&mut self, e: TaskError) {
        for c in self.pending.drain(..) {
            c.fail(e.clone());
        }
        for (_, (c, _)) in self.in_flight.drain() {
            c.fail(e.clone());
        }
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
        for c in inbox.chunks.drain(..) {
            c.fail(e.clone());
        }
    }

    /// Marks the pool finished. Also runs if the dispatcher panicked, so that
    /// no waiter (a job's handle, `join`, `Drop`) waits forever.
    fn finish(&mut self) {
        // No one serves the inbox any more: later submissions fail at once
        // (`Closed`) instead of queueing for ever.
        self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.kill_all();
        if !std::mem::replace(&mut self.unseen_end, true) {
            // Every worker was seen to end: the next pool may reuse these
            // (once the last handles here are dropped, see `spare::take`).
            spare::give(self.results.segment().clone());
            spare::give(crate::object::Object::segment(&self.table).clone());
        }
        self.fail_everything(TaskError::Terminated);
    }

    /// `join`: asks every worker to exit, waits a little, kills what is left.
    fn stop_all(&mut self) {
        let mut stop = Vec::new();
        wire::task_header(&mut stop, wire::STOP, 0, 0, 1);
        for w in self.workers.iter().flatten() {
            let _ = w.tasks.send_timeout(&stop, STOP_GRACE);
        }
        let deadline = Deadline::after(Some(STOP_GRACE));
        for w in self.workers.iter_mut().flatten() {
            if let Some(p) = w.proc.as_mut() {
                let _ = p.join_timeout(deadline.remaining().unwrap_or_default());
            }
        }
        // Kills what is left, and reaps (or sees ended) every worker.
        self.kill_all();
    }
}
