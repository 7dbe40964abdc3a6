//! The worker process: opens the pool's objects, runs the initializer, then
//! takes task frames from its own queue, runs every item (recording progress
//! in the in-flight table), and sends one result frame per chunk.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::plain::{self, Plain};
use super::table::{Record, Stage, Table};
use super::wire::{self, Reader, RunInit, RunMany, WireError};
use crate::queue::{FrameQueue, Role};
use crate::sys;

/// What a worker is started with (its [`Process`](crate::Process) argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    /// The worker's task queue, the shared results queue and the in-flight
    /// table: anonymous objects, carried as process arguments under every
    /// start method (no name in `/dev/shm`).
    pub(crate) tasks: FrameQueue,
    pub(crate) results: FrameQueue,
    pub(crate) table: Table,
    /// Initializer: runner offset, function offset, argument bytes.
    pub(crate) init: Option<(i64, i64, Vec<u8>)>,
    /// Items after which the worker exits (0: never).
    pub(crate) max_tasks: u64,
    /// Whether the pool has a task timeout (the worker then records when
    /// each item starts; otherwise it saves the clock read).
    pub(crate) timed: bool,
    /// Whether the worker may spin while it waits for tasks (see `Config::spin`).
    pub(crate) spin: bool,
}

/// The worker's objects: the ones its argument carried (opened from their
/// fds when the argument was decoded), with this worker's roles.
fn open_objects(a: &WorkerArgs) -> Option<Objects> {
    a.tasks.set_role(Role::Receiver).ok()?;
    a.results.set_role(Role::Sender).ok()?;
    if !a.spin {
        a.tasks.set_wait_mode(crate::WaitMode::Blocking);
    }
    let table = a.table.clone().with_frames(a.results.max_frame());
    Some(Objects { tasks: a.tasks.clone(), results: a.results.clone(), table })
}

/// The worker's objects.
struct Objects {
    tasks: FrameQueue,
    results: FrameQueue,
    table: Table,
}

/// The result frame a worker builds for the run it is running, mirrored in
/// its slot's staging area item by item (see `table.rs`).
struct Answer<'t> {
    /// The frame: header, then the items so far.
    out: Vec<u8>,
    stage: Stage<'t>,
    chunk: u64,
    slot: u32,
    gen: u32,
    /// Index within the run of the frame's first item.
    first: u32,
    /// Items in the frame.
    n: u32,
    /// Item bytes of the frame already in the staging area.
    staged: usize,
}

impl Answer<'_> {
    /// Starts answering run `chunk`.
    fn start(&mut self, chunk: u64) {
        self.chunk = chunk;
        self.first = 0;
        self.n = 0;
        self.new_frame();
    }

    fn new_frame(&mut self) {
        self.out.clear();
        wire::result_header(&mut self.out, self.chunk, self.slot, self.gen, self.first);
        self.stage.clear(self.chunk, self.first);
        self.staged = 0;
    }

    /// Sends the frame's items, if any, and starts the next frame. The staging
    /// area is emptied only after the send (a death in between leaves the items
    /// in both places; the parent takes each once).
    fn send(&mut self, results: &FrameQueue) {
        if self.n > 0 {
            wire::set_result_count(&mut self.out, self.n);
            if results.send(&self.out).is_err() {
                sys::exit_now(EXIT_NO_OBJECTS);
            }
        }
        self.first += self.n;
        self.n = 0;
        self.new_frame();
    }

    /// Counts the item just appended to the frame and stages it, before the
    /// next item starts.
    #[inline]
    fn commit_item(&mut self, results: &FrameQueue) {
        self.n += 1;
        if self.stage.sync(&self.out[wire::RESULT_HEADER..], self.staged, self.n) {
            self.staged = self.out.len() - wire::RESULT_HEADER;
        } else {
            self.cannot_stage(results);
        }
    }

    /// Appends a plain result item and stages it (the bytes go to the area
    /// from registers, not copied back out of the frame).
    #[inline]
    fn commit_plain(&mut self, p: Plain, results: &FrameQueue) {
        wire::push_plain(&mut self.out, p);
        let len = self.out.len() - wire::RESULT_HEADER;
        if self.stage.sync_plain(self.staged, p, len, self.n + 1) {
            self.n += 1;
            self.staged = len;
        } else {
            self.commit_item(results);
        }
    }

    /// Cannot happen (the area holds a whole frame); keep the promise by
    /// sending what there is now.
    #[cold]
    fn cannot_stage(&mut self, results: &FrameQueue) {
        self.send(results);
    }
}

/// One run being answered: what the item runners (`wire::run_one` and its
/// kin, monomorphised for the task's types) drive. [`next_arg`](RunCx::next_arg)
/// does the bookkeeping before an item (the batch flush, the in-flight
/// record), [`ok`](RunCx::ok) and [`err`](RunCx::err) after it (the frame,
/// the staging area); inlined into each runner's loop, so that a trivial
/// task costs no call per item beyond its own.
pub(crate) struct RunCx<'f, 'a, 't> {
    items: wire::Items<'f>,
    /// Index within the run of the next item.
    i: u32,
    count: u32,
    sub: u32,
    left_in_sub: u32,
    /// When the oldest result not yet sent was made.
    since: std::time::Duration,
    /// Chunks between two clock reads in [`RunCx::maybe_flush`], and how
    /// many are left before the next; when the clock was last read.
    clock_every: u32,
    clock_left: u32,
    clock_at: std::time::Duration,
    timed: bool,
    max: usize,
    /// Frame length before the current item.
    at: usize,
    ans: &'a mut Answer<'t>,
    rec: &'t Record,
    results: &'a FrameQueue,
    /// The worker's process stamp: see [`RunCx::same_process`].
    me: u64,
}

impl<'f> RunCx<'f, '_, '_> {
    /// The next item's argument, after the bookkeeping before it; `None`
    /// once every item of the run is answered. A malformed item is answered
    /// with an error here.
    #[inline]
    pub(crate) fn next_arg(&mut self) -> Option<wire::Item<'f>> {
        loop {
            if self.i >= self.count {
                return None;
            }
            // Items left in the current sub-chunk (a counter: a division per
            // item costs a trivial task a tenth of its time).
            if self.left_in_sub == 0 {
                self.left_in_sub = self.sub;
            }
            self.left_in_sub -= 1;
            if self.ans.n > 0 && self.left_in_sub == self.sub - 1 {
                self.maybe_flush();
            }
            self.at = self.ans.out.len();
            match self.items.next_arg() {
                Some(arg) => {
                    self.rec.item.store(u64::from(self.i), Ordering::Relaxed);
                    if self.timed {
                        self.rec.started_ns.store(sys::monotonic_now().as_nanos() as u64, Ordering::Relaxed);
                        self.rec.running.store(1, Ordering::Release);
                    }
                    return Some(arg);
                }
                None => self.err(&WireError::Deserialize("a malformed task frame".into())),
            }
        }
    }

    /// Results are sent at the end of the run, or at the start of a chunk
    /// once they have waited [`FLUSH_AFTER`] (every chunk when tasks are timed).
    ///
    /// Untimed, the clock is not read at every chunk: a read (a vDSO call,
    /// about 25 ns on a KVM guest) cost a trivial chunk more than the chunk
    /// itself (`pool-map-chunk1` ran 1.5-2x faster without most of them). It
    /// is read every 2, 4, then at most [`CLOCK_EVERY_MAX`] chunks while the
    /// gap between reads stays under [`CLOCK_GAP_SHORT`], and at the next
    /// chunk after a longer gap. So a result can wait up to that many chunks
    /// past `FLUSH_AFTER`, once, when chunks turn from short to long.
    fn maybe_flush(&mut self) {
        if !self.timed && self.clock_left > 1 {
            self.clock_left -= 1;
            return;
        }
        let now = sys::monotonic_now();
        if !self.timed {
            self.clock_every = next_clock_every(self.clock_every, now.saturating_sub(self.clock_at));
            self.clock_left = self.clock_every;
            self.clock_at = now;
        }
        if self.timed || now.saturating_sub(self.since) >= FLUSH_AFTER {
            self.ans.send(self.results);
            self.since = now;
        }
    }

    /// Ends a copy of the worker that a task made by forking and returning
    /// in the child, before it answers anything (its answers would go to the
    /// worker's slot, the staging area included): one load per item.
    #[inline]
    fn same_process(&self) {
        if sys::inherited(self.me) {
            sys::exit_now(EXIT_NO_OBJECTS);
        }
    }

    /// Answers the current item with its result.
    #[inline]
    pub(crate) fn ok<R: Serialize>(&mut self, r: &R) {
        self.same_process();
        match plain::encode(r) {
            // Fits: the item is at most 9 bytes.
            Some(p) if self.ans.out.len() + 9 <= self.max => {
                self.ans.commit_plain(p, self.results);
                self.i += 1;
            }
            _ => {
                wire::push_ok(&mut self.ans.out, r);
                self.commit();
            }
        }
    }

    /// Answers the current item with an error.
    #[cold]
    pub(crate) fn err(&mut self, e: &WireError) {
        self.same_process();
        wire::push_err(&mut self.ans.out, e);
        self.commit();
    }

    /// Answers the current item with the panic it raised.
    #[cold]
    pub(crate) fn panicked(&mut self, p: Box<dyn std::any::Any + Send>) {
        let location = wire::LAST_PANIC.with(|l| l.borrow_mut().take());
        self.err(&WireError::Panicked { message: crate::process::child::payload_text(&*p), location });
    }

    fn commit(&mut self) {
        if self.ans.out.len() > self.max {
            self.split();
        }
        self.ans.commit_item(self.results);
        self.i += 1;
    }

    /// The current item does not fit the frame: send what came before it,
    /// then go on with it first in a new frame (an error if it alone is too large).
    #[cold]
    fn split(&mut self) {
        let mut tail = self.ans.out.split_off(self.at);
        self.ans.send(self.results);
        if wire::RESULT_HEADER + tail.len() > self.max {
            tail.clear();
            wire::push_err(
                &mut tail,
                &WireError::Serialize(format!("the result is larger than the pool's frames ({} bytes)", self.max)),
            );
        }
        self.ans.out.extend_from_slice(&tail);
    }
}

/// How long a finished result may wait in the worker before it is sent
/// (checked between chunks): answers of short tasks travel in batches. A
/// result waiting to be sent is also in the slot's staging area (see
/// `table.rs`), so a worker's death loses none of them.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_micros(50);

/// Chunks until the next clock read of an untimed run, after `every` and a
/// gap of `gap` since the read before (see [`RunCx::maybe_flush`]).
fn next_clock_every(every: u32, gap: std::time::Duration) -> u32 {
    if gap < CLOCK_GAP_SHORT {
        (every * 2).min(CLOCK_EVERY_MAX)
    } else {
        1
    }
}

/// Most chunks between two clock reads of an untimed run.
const CLOCK_EVERY_MAX: u32 = 8;
/// A gap between clock reads below this lets the next gap double.
const CLOCK_GAP_SHORT: std::time::Duration = std::time::Duration::from_micros(3);

/// Exit code of a worker that could not open the pool's objects.
const EXIT_NO_OBJECTS: i32 = 3;

/// The worker's entry point (a `Process` target, so it runs under every start method).
pub(crate) fn worker_main(a: WorkerArgs) {
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        wire::LAST_PANIC.with(|l| *l.borrow_mut() = loc.clone());
        let msg = format!("shmproc pool worker {} panicked at {}\n", sys::raw_pid(), loc.as_deref().unwrap_or("?"));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    }));
    let Some(o) = open_objects(&a) else { sys::exit_now(EXIT_NO_OBJECTS) };
    let (Some(rec), Some(stage)) = (o.table.record(a.slot as usize), o.table.stage(a.slot as usize)) else {
        sys::exit_now(EXIT_NO_OBJECTS)
    };
    let mut out = Vec::with_capacity(4096);
    if let Some((runner, func, arg)) = &a.init {
        let r = match (crate::process::address_at(*runner), crate::process::address_at(*func)) {
            (Some(r), Some(f)) => {
                // SAFETY: the parent sent the offset of a `run_init::<A>` (type `RunInit`),
                // rebased by the checked mechanism; fn pointers have the size of usize.
                let run: RunInit = unsafe { std::mem::transmute::<usize, RunInit>(r) };
                run(f, arg)
            }
            _ => Err("the initializer lies outside the executable".into()),
        };
        if let Err(reason) = r {
            out.clear();
            wire::result_header(&mut out, wire::INIT_FAILED, a.slot, a.gen, 0);
            wire::push_err(&mut out, &WireError::Init(reason));
            wire::set_result_count(&mut out, 1);
            let _ = o.results.send(&out);
            sys::exit_now(1);
        }
    }
    out.clear();
    wire::result_header(&mut out, wire::READY, a.slot, a.gen, 0);
    let _ = o.results.send(&out);
    out.clear();
    let mut ans = Answer { out, stage, chunk: 0, slot: a.slot, gen: a.gen, first: 0, n: 0, staged: 0 };

    let mut frame = Vec::with_capacity(4096);
    let mut cached: Option<(i64, i64, RunMany, usize)> = None;
    let mut done: u64 = 0;
    let max = o.results.max_frame();
    let me = sys::process_stamp();
    loop {
        // A copy of this worker made by a task that forked and returned in
        // the child is not a worker: it ends before it answers an item or
        // takes a frame meant for this one (see `RunCx::same_process`).
        if sys::inherited(me) {
            sys::exit_now(EXIT_NO_OBJECTS);
        }
        if o.tasks.recv_into_vec(&mut frame, None).is_err() {
            sys::exit_now(EXIT_NO_OBJECTS);
        }
        // A task frame holds one or more chunks back to back; each chunk is
        // answered before the next starts (in several frames if its results
        // exceed the frame size).
        let mut r = Reader::new(&frame);
        while r.remaining() >= wire::TASK_HEADER {
            let (Some(chunk), Some(runner), Some(func), Some(count), Some(sub)) =
                (r.u64(), r.i64(), r.i64(), r.u32(), r.u32())
            else {
                break;
            };
            if chunk == wire::STOP {
                sys::exit_now(0);
            }
            // Recorded before anything of the run runs (see table.rs).
            rec.item.store(0, Ordering::Relaxed);
            rec.chunk.store(chunk, Ordering::Release);
            let resolved = match cached {
                Some((cr, cf, run, f)) if cr == runner && cf == func => Some((run, f)),
                _ => match (
                    crate::process::address_at(runner),
                    // A closure's index (its runner checks the type) or a function's address.
                    wire::closure_index(func).or_else(|| crate::process::address_at(func)),
                ) {
                    (Some(rr), Some(ff)) => {
                        // SAFETY: the parent sent the offset of a `wire::run_*` runner (type
                        // `RunMany`) monomorphised for this task's types, rebased by the checked
                        // mechanism; fn pointers have the size of usize.
                        let run: RunMany = unsafe { std::mem::transmute::<usize, RunMany>(rr) };
                        cached = Some((runner, func, run, ff));
                        Some((run, ff))
                    }
                    _ => None,
                },
            };
            ans.start(chunk);
            rec.running.store(1, Ordering::Release);
            let mut cx = RunCx {
                items: wire::Items::new(&frame, r.position()),
                i: 0,
                count,
                sub: sub.max(1),
                left_in_sub: 0,
                since: sys::monotonic_now(),
                clock_every: 1,
                clock_left: 1,
                clock_at: std::time::Duration::ZERO,
                timed: a.timed,
                max,
                at: 0,
                ans: &mut ans,
                rec,
                results: &o.results,
                me,
            };
            match resolved {
                Some((run, f)) => run(f, &mut cx),
                None => {
                    while cx.next_arg().is_some() {
                        cx.err(&WireError::Deserialize("the task lies outside the executable".into()));
                    }
                }
            }
            // A runner answers every item; this only guards the promise.
            while cx.next_arg().is_some() {
                cx.err(&WireError::Deserialize("the item runner stopped early".into()));
            }
            r = Reader::at(&frame, cx.items.position());
            rec.running.store(0, Ordering::Release);
            // Answered before the next run starts: if this worker dies in
            // a later run, nothing of this one is lost (see table.rs).
            ans.send(&o.results);
            done += u64::from(ans.first);
            rec.done.store(done, Ordering::Relaxed);
        }
        if a.max_tasks > 0 && done >= a.max_tasks {
            sys::exit_now(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn short_chunks_space_the_clock_reads_and_a_long_gap_resets_them() {
        let short = CLOCK_GAP_SHORT / 2;
        let mut every = 1;
        let mut seen = Vec::new();
        for _ in 0..6 {
            every = next_clock_every(every, short);
            seen.push(every);
        }
        assert_eq!(seen, [2, 4, 8, 8, 8, 8], "doubling up to the cap");
        assert_eq!(next_clock_every(8, CLOCK_GAP_SHORT), 1, "a long gap: read at the next chunk");
        assert_eq!(next_clock_every(8, Duration::from_secs(1)), 1);
        assert_eq!(next_clock_every(1, Duration::ZERO), 2);
    }
}
