//! The in-flight table: one 64-byte record per worker slot, in a segment of
//! kind [`ObjectKind::Pool`], telling the parent which chunk a worker started
//! last and since when its current item runs.
//!
//! ## Layout
//! The payload is one block per worker slot, each `2 + stage` records of 64
//! bytes, where `stage = max_frame / 64` rounded up (parent and workers both
//! know the pool's `max_frame`; a table too short for a slot yields no slot):
//!
//! | record | what |
//! |---|---|
//! | 0 | [`Record`]: the in-flight record |
//! | 1 | [`StageHead`]: what the staging area holds |
//! | 2.. | the staging area: `max_frame` bytes of result items |
//!
//! In-flight record:
//!
//! | offset | field | written by | meaning |
//! |---|---|---|---|
//! | 0 | `gen: AtomicU32` | parent (before starting the worker) | incarnation of the slot |
//! | 4 | `running: AtomicU32` | worker | 1 from before a run's first item to after its last (stored again before each item when tasks are timed), 0 between runs |
//! | 8 | `chunk: AtomicU64` | worker, after taking a run and **before** running any of it | id of the last run started (0: none) |
//! | 16 | `item: AtomicU64` | worker, before each item | index within the run of the item started last |
//! | 24 | `started_ns: AtomicU64` | worker | `CLOCK_MONOTONIC` ns when the running item started |
//! | 32 | `done: AtomicU64` | worker | items finished by this incarnation |
//! | 40..64 | reserved | | zero |
//!
//! Staging head (the area holds the items of a result frame not yet sent):
//!
//! | offset | field | meaning |
//! |---|---|---|
//! | 0 | `chunk: AtomicU64` | run the staged items belong to (0: none) |
//! | 8 | `start: AtomicU32` | index within the run of the first staged item |
//! | 12 | `count: AtomicU32` | items staged (stored last, release) |
//! | 16 | `len: AtomicU32` | bytes staged (stored before `count`: it may cover one more, uncommitted, item) |
//! | 20..64 | reserved | zero |
//!
//! ## Protocol
//! The worker stores `chunk` (release) right after it took the run from its
//! queue and before it runs any item of it, and `item` before each item. It
//! answers a run in result frames (batched: see `worker.rs`); every finished
//! item's result bytes are copied to the staging area and counted there
//! *before* the next item starts, and the area is emptied only after its
//! frame was sent. So, once the worker is dead (the parent reads the table
//! only then), every item of a run sent to it is exactly one of: answered
//! (its result frame arrived), staged (finished: the parent takes its result
//! from the area), the one item it had started (named by `chunk` and `item`:
//! it fails with `WorkerDied`, or is retried), or never started (after it: it
//! goes to another worker, without an error). A run taken but not yet
//! recorded never ran.
//!
//! "Arrived" needs care: the results queue is one MPMC ring, and a frame
//! published behind another worker's send in progress cannot be received
//! before that send is published (or, its sender dead, recovered). Before it
//! reads a dead worker's record, the parent receives every frame published
//! so far, waiting for such sends (`FrameQueue::drain_settled`, at most one
//! second; past that, the worker's unanswered items count as started).
//!
//! Every field is untrusted (a worker may scribble): the parent reads the
//! record only if `gen` is the slot's current incarnation, accepts `chunk`
//! only if it names a run it sent to that slot, takes staged items only if
//! the head names that run and `count` result items parse within the first
//! `len <= max_frame` bytes (and only those past what was answered), and
//! otherwise treats every unanswered item of the slot as started (it never
//! runs a task twice unless the caller allowed retries).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::plain::Plain;
use crate::error::OpenError;
use crate::header::{ObjectKind, TypeInfo};
use crate::object::{Builder, Object, Prefix, View};
use crate::segment::{Handle, Segment};

/// One worker slot's record (see the module docs).
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) gen: AtomicU32,
    pub(crate) running: AtomicU32,
    pub(crate) chunk: AtomicU64,
    pub(crate) item: AtomicU64,
    pub(crate) started_ns: AtomicU64,
    pub(crate) done: AtomicU64,
    _reserved: [u64; 3],
}

/// The head of one slot's staging area (see the module docs).
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct StageHead {
    pub(crate) chunk: AtomicU64,
    pub(crate) start: AtomicU32,
    pub(crate) count: AtomicU32,
    pub(crate) len: AtomicU32,
    _reserved: [u32; 11],
}

const _: () = assert!(std::mem::size_of::<StageHead>() == 64);
const _: () = assert!(std::mem::size_of::<Record>() == 64);
const _: () = assert!(std::mem::align_of::<Record>() == 64);

/// Builder parameters of the table (the number of slots).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct TableParams {
    slots: usize,
}

/// The in-flight table segment.
#[derive(Clone)]
pub(crate) struct Table {
    view: View<Record>,
    /// Records per slot (0 until the layout is known: see [`Table::with_frames`]).
    per: usize,
}

// SAFETY: the view points at `Record`s, which hold only atomics, in a mapping
// that the view's `Segment` keeps alive; sharing or sending it between threads
// is as safe as sharing the atomics themselves.
unsafe impl Send for Table {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for Table {}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("records", &self.view.len()).field("per_slot", &self.per).finish()
    }
}

impl Object for Table {
    const KIND: ObjectKind = ObjectKind::Pool;
    type Params = TableParams;
    fn segment(&self) -> &Segment {
        self.view.segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        let view = View::<Record>::open(&b, handle, Prefix::None, None)?;
        Ok(Table { view, per: 0 })
    }
}

crate::object::serde_object!([] Table);

/// Records per slot for frames of `max_frame` bytes.
fn per_slot(max_frame: usize) -> usize {
    2 + max_frame.div_ceil(64)
}

impl Table {
    /// Creates an anonymous table for `slots` workers whose result frames
    /// hold at most `max_frame` bytes, zeroed (workers get it as part of
    /// their process argument).
    pub(crate) fn create(slots: usize, max_frame: usize) -> Result<Table, OpenError> {
        let b = Builder::<Table>::with_params(TableParams { slots });
        let per = per_slot(max_frame);
        let records = b.params.slots.max(1) * per;
        let size = records * std::mem::size_of::<Record>();
        if let Some(seg) = super::spare::take(ObjectKind::Pool, TypeInfo::of::<Record>(), size) {
            if let Ok(view) = View::<Record>::reuse(seg) {
                let t = Table { view, per };
                // A spare table holds its last pool's records: each slot as
                // `reset` leaves it is the initial state the protocol needs
                // (a head naming no run, so nothing staged is ever taken).
                for slot in 0..slots.max(1) {
                    t.reset(slot, 0);
                }
                return Ok(t);
            }
        }
        // The zero-filled payload is the initial state of every record.
        let view = View::<Record>::create(&b, Prefix::None, records, |_| {})?;
        Ok(Table { view, per })
    }

    /// The same table, read with the layout of frames of `max_frame` bytes
    /// (a worker, which opened it from its argument, calls this first).
    pub(crate) fn with_frames(mut self, max_frame: usize) -> Table {
        self.per = per_slot(max_frame);
        self
    }

    /// Record `i` of `slot`'s block, or `None` past the end (or before the layout is known).
    fn block(&self, slot: usize, i: usize) -> Option<*mut Record> {
        let at = slot.checked_mul(self.per)?.checked_add(i)?;
        if self.per == 0 || i >= self.per || at >= self.view.len() {
            return None;
        }
        // SAFETY: at < len records of the view's mapping: the pointer stays inside it.
        Some(unsafe { self.view.data().as_ptr().add(at) })
    }

    /// The record of `slot`, or `None` past the end.
    pub(crate) fn record(&self, slot: usize) -> Option<&Record> {
        let p = self.block(slot, 0)?;
        // SAFETY: `block` checked the index against the view's records, which
        // live as long as `self`; records are only atomics, so a shared
        // reference is sound whatever other processes write.
        Some(unsafe { &*p })
    }

    /// The staging area of `slot`: its head and its bytes.
    pub(crate) fn stage(&self, slot: usize) -> Option<Stage<'_>> {
        let head = self.block(slot, 1)?;
        let data = self.block(slot, 2)?.cast::<u8>();
        // The slot's last record must be inside the mapping too.
        self.block(slot, self.per - 1)?;
        // SAFETY: the head is a 64-byte record of atomics inside the mapping;
        // the area is the `per - 2` records after it, inside as its first
        // (`block(slot, 2)`) and the slot's last record are (both checked).
        Some(Stage { head: unsafe { &*head.cast::<StageHead>() }, data, cap: (self.per - 2) * 64 })
    }

    /// Resets `slot` for a new incarnation `gen` (the previous one is dead).
    pub(crate) fn reset(&self, slot: usize, gen: u32) {
        if let Some(s) = self.stage(slot) {
            s.head.count.store(0, Ordering::Relaxed);
            s.head.chunk.store(0, Ordering::Relaxed);
        }
        if let Some(r) = self.record(slot) {
            r.running.store(0, Ordering::Relaxed);
            r.chunk.store(0, Ordering::Relaxed);
            r.item.store(0, Ordering::Relaxed);
            r.started_ns.store(0, Ordering::Relaxed);
            r.done.store(0, Ordering::Relaxed);
            r.gen.store(gen, Ordering::Release);
        }
    }
}

/// One slot's staging area (see the module docs).
pub(crate) struct Stage<'a> {
    head: &'a StageHead,
    data: *mut u8,
    cap: usize,
}

impl Stage<'_> {
    /// Worker: the area now holds nothing, for items of `chunk` from `start` on.
    pub(crate) fn clear(&self, chunk: u64, start: u32) {
        self.head.count.store(0, Ordering::Release);
        self.head.len.store(0, Ordering::Relaxed);
        self.head.start.store(start, Ordering::Relaxed);
        self.head.chunk.store(chunk, Ordering::Release);
    }

    /// Worker: the area holds `items` (result items, `count` of them, the
    /// first `staged` bytes of which it holds already). `false` if they do not fit.
    #[inline]
    pub(crate) fn sync(&self, items: &[u8], staged: usize, count: u32) -> bool {
        if items.len() > self.cap || staged > items.len() {
            return false;
        }
        let new = &items[staged..];
        // SAFETY: staged + new.len() = items.len() <= cap: the bytes lie inside
        // the area; the source is private memory, so the ranges do not overlap.
        // (Usually one short item: copied inline, see `copy_short`.)
        unsafe { super::wire::copy_short(new, self.data.add(staged)) };
        self.head.len.store(items.len() as u32, Ordering::Relaxed);
        self.head.count.store(count, Ordering::Release);
        true
    }

    /// Worker: as [`sync`](Stage::sync) for one plain item appended to the
    /// frame, written from its value rather than copied back out of the
    /// frame (`len` is the frame's item bytes with it). `false` if the area
    /// has no room for the 9-byte store (the caller then uses `sync`).
    #[inline]
    pub(crate) fn sync_plain(&self, staged: usize, p: Plain, len: usize, count: u32) -> bool {
        if staged.checked_add(9).map_or(true, |end| end > self.cap) || len > self.cap {
            return false;
        }
        // SAFETY: staged + 9 <= cap: the tag and the unaligned 8-byte store lie
        // inside the area (bytes past the item's width are overwritten by the
        // next item, and past `len` nobody reads them).
        unsafe {
            let at = self.data.add(staged);
            std::ptr::write_volatile(at, super::wire::PLAIN + p.kind as u8);
            std::ptr::write_unaligned(at.add(1).cast::<u64>(), p.bits.to_le());
        }
        self.head.len.store(len as u32, Ordering::Relaxed);
        self.head.count.store(count, Ordering::Release);
        true
    }

    /// Parent, once the slot's worker is dead: `(start, count, bytes)` of
    /// the items staged for `chunk` (bytes copied out, not yet checked), or
    /// `None` if the area holds none of it or its head is out of bounds.
    pub(crate) fn take(&self, chunk: u64) -> Option<(u32, u32, Vec<u8>)> {
        let count = self.head.count.load(Ordering::Acquire);
        if count == 0 || self.head.chunk.load(Ordering::Acquire) != chunk {
            return None;
        }
        let start = self.head.start.load(Ordering::Relaxed);
        let len = self.head.len.load(Ordering::Relaxed) as usize;
        if len > self.cap {
            return None;
        }
        let mut out = vec![0u8; len];
        // SAFETY: len <= cap: the bytes lie inside the area; `out` is private.
        // The bytes are untrusted: the caller parses them with bounds checks.
        unsafe { std::ptr::copy_nonoverlapping(self.data, out.as_mut_ptr(), len) };
        Some((start, count, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staging_area_round_trips_and_refuses_what_is_out_of_bounds() {
        let t = Table::create(2, 200).unwrap();
        let s = t.stage(1).unwrap();
        assert_eq!(s.cap, 256);
        s.clear(7, 3);
        assert!(s.sync(b"abc", 0, 1));
        assert!(s.sync(b"abcdef", 3, 2));
        assert_eq!(s.take(7), Some((3, 2, b"abcdef".to_vec())));
        assert_eq!(s.take(8), None, "another run's items are not taken");
        assert!(!s.sync(&[0; 257], 0, 1), "more than the area holds");
        // A scribbled head: a length past the area is refused, whatever the rest says.
        s.head.len.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(s.take(7), None);
        s.head.len.store(256, Ordering::Relaxed);
        assert_eq!(s.take(7).map(|(_, _, b)| b.len()), Some(256));
        // A plain item written from its value: the same bytes as the frame's.
        s.clear(7, 0);
        let p = Plain { kind: super::super::plain::Kind::U32, bits: 0xdead_beef };
        let mut frame = Vec::new();
        super::super::wire::push_plain(&mut frame, p);
        assert!(s.sync_plain(0, p, frame.len(), 1));
        super::super::wire::push_plain(&mut frame, p);
        assert!(s.sync_plain(5, p, frame.len(), 2));
        assert_eq!(s.take(7), Some((0, 2, frame)));
        assert!(!s.sync_plain(248, p, 253, 3), "the 9-byte store would pass the area's end");
        assert!(s.sync_plain(247, p, 252, 3));
        assert!(!s.sync_plain(usize::MAX - 3, p, 5, 3));
        s.clear(7, 0);
        assert_eq!(s.take(7), None, "an empty area holds nothing");
        // Slots past the table, and a table whose layout is not known yet.
        assert!(t.stage(2).is_none() && t.record(2).is_none());
        let opened = Table { view: t.view.clone(), per: 0 };
        assert!(opened.record(0).is_none() && opened.stage(0).is_none());
        assert!(opened.with_frames(200).record(1).is_some());
        // A worker that assumes larger frames than the table was made for gets no slot past it.
        let wrong = Table { view: t.view.clone(), per: 0 }.with_frames(100_000);
        assert!(wrong.record(1).is_none() && wrong.stage(0).is_none());
    }
}
