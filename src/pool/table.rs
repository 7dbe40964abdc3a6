//! The in-flight table: one 64-byte record per worker slot, in a segment of
//! kind [`ObjectKind::Pool`], telling the parent which chunk a worker started
//! last and since when its current item runs.
//!
//! ## Layout (payload = `slots` records, no prefix)
//!
//! | offset | field | written by | meaning |
//! |---|---|---|---|
//! | 0 | `gen: AtomicU32` | parent (before starting the worker) | incarnation of the slot |
//! | 4 | `running: AtomicU32` | worker | 1 while an item runs, 0 between chunks |
//! | 8 | `chunk: AtomicU64` | worker, after taking a chunk and **before** running any of it | id of the last chunk started (0: none) |
//! | 16 | `item: AtomicU64` | worker | index within the chunk of the running item |
//! | 24 | `started_ns: AtomicU64` | worker | `CLOCK_MONOTONIC` ns when the running item started |
//! | 32 | `done: AtomicU64` | worker | items finished by this incarnation |
//! | 40..64 | reserved | | zero |
//!
//! ## Protocol
//! The worker stores `chunk` (release) right after it took the chunk from its
//! queue and before it runs any item of it. So, once the worker is dead, a
//! chunk sent to it is exactly one of: answered (its result frame arrived),
//! started (named by `chunk` and not answered: it fails with `WorkerDied`, or
//! is retried), or never taken (sent after the started one: it goes to another
//! worker, without an error). A chunk taken but not yet recorded never ran.
//!
//! Every field is untrusted (a worker may scribble): the parent reads `chunk`
//! only if `gen` is the slot's current incarnation, and accepts it only if it
//! names a chunk it sent to that slot; anything else makes it treat every
//! unanswered chunk of the slot as started (it never runs a task twice unless
//! the caller allowed retries).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::OpenError;
use crate::header::ObjectKind;
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
}

// SAFETY: the view points at `Record`s, which hold only atomics, in a mapping
// that the view's `Segment` keeps alive; sharing or sending it between threads
// is as safe as sharing the atomics themselves.
unsafe impl Send for Table {}
// SAFETY: as above: every access goes through atomics.
unsafe impl Sync for Table {}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table").field("slots", &self.view.len()).finish()
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
        Ok(Table { view })
    }
}

crate::object::serde_object!([] Table);

impl Table {
    /// Creates an anonymous table of `slots` zeroed records (workers get it
    /// as part of their process argument).
    pub(crate) fn create(slots: usize) -> Result<Table, OpenError> {
        let b = Builder::<Table>::with_params(TableParams { slots });
        // The zero-filled payload is the initial state of every record.
        let view = View::<Record>::create(&b, Prefix::None, b.params.slots.max(1), |_| {})?;
        Ok(Table { view })
    }

    /// The record of `slot`, or `None` past the end.
    pub(crate) fn record(&self, slot: usize) -> Option<&Record> {
        if slot >= self.view.len() {
            return None;
        }
        // SAFETY: slot < len, and the view guarantees `len` aligned records in
        // a mapping that lives as long as `self`; records are only atomics, so a
        // shared reference is sound whatever other processes write.
        Some(unsafe { &*self.view.data().as_ptr().add(slot) })
    }

    /// Resets `slot` for a new incarnation `gen` (the previous one is dead).
    pub(crate) fn reset(&self, slot: usize, gen: u32) {
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
