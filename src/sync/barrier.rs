//! [`Barrier`]: N processes wait until all have arrived, like Python's
//! `multiprocessing.Barrier`.
//!
//! ## Algorithm
//!
//! A generation counter (the futex word, bit 31 = `BROKEN`) and an arrival
//! counter. A waiter reads the generation `g`, then increments `arrived`. The
//! last arrival (the *leader*) resets `arrived` to 0 and then moves the
//! generation from `g` to `g + 1` with a CAS, waking everyone; the others sleep
//! while the word is still `g`. Because the reset happens before the
//! generation moves (release), a process that sees the new generation and
//! arrives again counts from 0.
//!
//! A timeout or [`Barrier::abort`] sets `BROKEN` (CAS from `g`, so a barrier
//! that has just opened is not broken by a late timeout) and wakes everyone:
//! every current and later `wait` fails with [`BarrierError::Broken`] (the
//! waiter that timed out gets [`BarrierError::Timeout`]). A broken barrier
//! stays broken; create a new one.
//!
//! ## A party that dies breaks the barrier
//!
//! Every process that waits records itself, on its first wait, in a table of
//! [`WATCHED_PROCESSES`] entries: its identity (pid and start time, one
//! [`peer::word`](crate::peer::word)) and the generation it last arrived at.
//! A process that has arrived at generation `g - 1` but not yet at `g`
//! *owes* `g` an arrival. A waiter looks at the table after each sleep slice
//! (`PEER_SLICE`, 50 ms; one look per slice per process and handle): if a
//! process that owes the current generation is dead, nobody can open it,
//! and the waiter breaks the barrier. So a party killed, crashed, or exited
//! without leaving (below) between two waits breaks the next generation
//! within about two slices, with or without a timeout, instead of leaving
//! the others waiting for ever.
//!
//! * An arrival is marked *pending* at `g` before it is counted, and marked
//!   done once all of the process's threads were counted at `g` (below; the
//!   last arrival, which opens `g`, only after it has opened it). A
//!   process that dies while pending at `g` owes `g` (perhaps it was
//!   counted, perhaps not: the barrier is broken, never hung) and, if `g`
//!   opens anyway, `g + 1`.
//! * A process leaves cleanly (its entry cleared; it owes nothing) when its
//!   last handle is dropped outside a panic, or when the body of a shmproc
//!   child ([`Process`](crate::Process), any start method) returns: a forked
//!   child `_exit`s without dropping the copies it inherited. A party that
//!   panics keeps its entry and breaks the barrier once it has exited.
//! * Threads of one process share its entry: the process has arrived at
//!   `g` once every thread of it that began arriving there was counted,
//!   and at least as many as arrived at `g - 1`; until then, and at its
//!   first generation (how many threads it has is not known yet), its
//!   arrival stays pending, and a thread that begins arriving later marks
//!   it pending again. So a process that dies after arriving at its first
//!   generation, before that generation opens, breaks it. Not seen: a
//!   process with more threads at `g` than at `g - 1` whose last thread
//!   begins arriving after all the others were counted, and that is
//!   killed before that thread has marked the entry pending again (a
//!   process cannot know that one more thread will come). A process whose mark stays pending although all its
//!   threads arrived (fewer of them than at `g - 1`, or it sat `g - 1`
//!   out) and that dies before `g` opens breaks `g` too.
//! * A thread of a shmproc child that has begun its wait (read the
//!   generation, under the process's lock of the entry) when the child's
//!   body returns keeps the entry, and the child's exit breaks that
//!   generation; one that begins later claims an entry again if it gets
//!   there before the child exits (the exit breaks the next generation),
//!   and is not seen if it does not.
//! * A dead process's entry is kept while it owes the current or the next
//!   generation (or its mark is ahead of the looker's: the barrier opened
//!   meanwhile); any other dead entry is freed when a waiter looks, or
//!   when a newcomer needs an entry.
//! * Not seen: a process that dies before its first wait, and processes
//!   that found the table full of live ones at their first wait (they wait
//!   unwatched). Use [`Barrier::wait_timeout`] for those.
//! * Entries belong to handles: a process that waits through two handles
//!   of one barrier opened separately (not clones) holds two entries, and
//!   if it dies, the one it did not arrive through may break a generation
//!   it had arrived at (broken, never hung).
//! * A watched process is taken to arrive at every generation: one that
//!   sits a generation out (alive) holds it up as any absent party does;
//!   its mark catches up at its next arrival.
//! * Death is judged from `/proc` (pid and start time), so the parties must
//!   share a pid namespace, as for every shmproc object that watches peers.
//!
//! ## Layout (payload, 1088 bytes, `#[repr(C, align(64))]`)
//!
//! | offset | size | field        | meaning                                    |
//! |-------:|-----:|--------------|--------------------------------------------|
//! | 0      | 4    | `generation` | bits 0-30 generation, bit 31 `BROKEN` (futex word) |
//! | 4      | 4    | `arrived`    | arrivals in the current generation         |
//! | 8      | 4    | `parties`    | number of participants (set at creation)   |
//! | 12     | 52   | reserved     | zero                                       |
//! | 64     | 512  | `who`        | 64 watched processes: `peer::word` with state 1; 0 = free |
//! | 576    | 512  | `seen`       | per entry: `tag(who) << 32` \| `PENDING` (bit 31) \| the generation of its last arrival (bits 0-30) |
//!
//! `tag(w)` is the high half of `w * 0x9e3779b97f4a7c15` (wrapping): a
//! `seen` word whose tag does not match its entry's `who` (an entry being
//! claimed, or garbage) is no evidence of anything.

use std::fmt;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::atomic::{AtomicU32, AtomicU64};
use super::{Os, Platform, Shared, SharedState};
use crate::error::OpenError;
use crate::header::ObjectKind;
use crate::object::{Builder, Object};
use crate::peer::word;
use crate::peer::RateLimit;
use crate::segment::{Handle, Segment};
use crate::sys::{self, ForkSafeMutex};
use crate::time::Deadline;

const BROKEN: u32 = 1 << 31;
const GEN_MASK: u32 = BROKEN - 1;

/// How many processes a barrier watches at once (see the module docs): the
/// processes that wait at it beyond this many are not watched.
#[cfg(not(loom))]
pub const WATCHED_PROCESSES: usize = 64;
/// The loom model's table is small: every entry is a place to interleave.
#[cfg(loom)]
pub const WATCHED_PROCESSES: usize = 2;

/// State of a `who` entry (top 4 bits of the word).
pub(super) const WATCHED: u64 = 1;

#[repr(C, align(64))]
pub(crate) struct BarrierState {
    generation: AtomicU32,
    arrived: AtomicU32,
    parties: AtomicU32,
    _reserved: [AtomicU32; 13],
    who: [AtomicU64; WATCHED_PROCESSES],
    seen: [AtomicU64; WATCHED_PROCESSES],
}

#[cfg(loom)]
impl BarrierState {
    /// A heap twin of the shared state, for the loom model.
    pub(crate) fn heap(parties: u32) -> BarrierState {
        BarrierState {
            generation: AtomicU32::new(0),
            arrived: AtomicU32::new(0),
            parties: AtomicU32::new(parties),
            _reserved: std::array::from_fn(|_| AtomicU32::new(0)),
            who: std::array::from_fn(|_| AtomicU64::new(0)),
            seen: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<BarrierState>() == 1088);
    assert!(std::mem::offset_of!(BarrierState, arrived) == 4);
    assert!(std::mem::offset_of!(BarrierState, parties) == 8);
    assert!(std::mem::offset_of!(BarrierState, who) == 64);
    assert!(std::mem::offset_of!(BarrierState, seen) == 576);
};

/// `seen` bit: the entry's process is arriving at the generation the low
/// 31 bits name (set before each of its threads' `fetch_add`s; cleared once
/// all of its threads were counted there, as many as at the generation
/// before, never at its first).
const PENDING: u64 = 1 << 31;

/// The tag a `seen` word carries for the `who` word `w`: the high half of a
/// multiplicative (Fibonacci) hash, so that the tags of two different words
/// agree with a chance of about 2^-32.
#[inline]
fn tag(w: u64) -> u64 {
    w.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
}

/// The `seen` word of entry `w` for an arrival at generation `g`, still
/// being counted (`pending`) or counted.
#[inline]
fn seen_word(w: u64, g: u32, pending: bool) -> u64 {
    (tag(w) << 32) | if pending { PENDING } else { 0 } | u64::from(g & GEN_MASK)
}

/// What a waiter at generation `g` makes of one entry of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Free, alive, or not known to be dead: leave it.
    Keep,
    /// Its process owes generation `g` an arrival and is dead.
    OwesAndDead,
    /// Dead and owes nothing: free it.
    Reclaim,
}

/// Judges entry `w` for a waiter at generation `g`; `runs` tells whether
/// the process a word names runs (the real one reads `/proc`), and `seen`
/// loads the entry's mark: only once the process is known dead, so that
/// the mark judged is its last (a dead process writes nothing more, and a
/// newcomer's writes follow its `who` CAS, which the caller's CAS or
/// re-read of `who` catches).
fn judge(w: u64, seen: impl FnOnce() -> u64, g: u32, runs: impl FnOnce(u64) -> bool) -> Entry {
    if w == 0 {
        return Entry::Keep;
    }
    let (state, _, start) = word::parts(w);
    let named = state == WATCHED && start != 0;
    if named && runs(w) {
        return Entry::Keep;
    }
    let seen = seen();
    if !named || seen >> 32 != tag(w) {
        // Garbage, or the entry of a process that died while claiming it
        // (its `seen` not written yet): no evidence of anything.
        return Entry::Reclaim;
    }
    // How many generations its mark is behind `g` (31-bit wrap).
    let behind = g.wrapping_sub(seen as u32 & GEN_MASK) & GEN_MASK;
    match behind {
        // Arrived at `g - 1` (or died counting that arrival, and `g - 1`
        // opened): it owes `g`.
        1 => Entry::OwesAndDead,
        // Died counting its arrival here: perhaps counted, perhaps not, so
        // this generation may never open.
        0 if seen & PENDING != 0 => Entry::OwesAndDead,
        // Arrived here, then died: it owes the next generation.
        0 => Entry::Keep,
        // Its mark is ahead of `g`: our `g` is out of date (the barrier
        // opened while we looked); what it owes is for a later look.
        b if b >= 1 << 30 => Entry::Keep,
        // The barrier opened a generation without it since.
        _ => Entry::Reclaim,
    }
}

/// Before this thread's arrival at generation `g` is counted: claims
/// this process's entry on its first wait, notes the arrival in the
/// process's counts, and marks the entry as arriving at `g`
/// (`PENDING`); returns the entry for [`arrived`], and whether this
/// call claimed it (the process's first wait here).
///
/// Reads the generation itself, under the process-local lock, and
/// returns it (with `BROKEN` if set: then nothing is noted): a thread
/// that has read `g` is already counted as arriving when
/// [`leave`] looks.
pub(super) fn arriving(s: &BarrierState, h: &impl Host) -> (u32, Option<Claimed>, bool) {
    let stamp = h.stamp();
    let (g, mine, new) = {
        let mut slot = h.local();
        let g = s.generation.load(Acquire);
        if g & BROKEN != 0 {
            return (g, None, false);
        }
        if !slot.is_some_and(|l| l.stamp == stamp) {
            // First wait here, or our parent's fields (we are a forked child).
            *slot = None;
        }
        let new = slot.is_none();
        let prev = g.wrapping_sub(1) & GEN_MASK;
        let l = slot.get_or_insert_with(|| Local {
            stamp,
            claimed: claim_entry(s, h, g),
            gen: prev,
            here: 0,
            counted: 0,
            before: 0,
        });
        if l.gen != g {
            l.before = if l.gen == prev { l.here } else { 0 };
            l.gen = g;
            l.here = 0;
            l.counted = 0;
        }
        l.here = l.here.saturating_add(1);
        (g, l.claimed, new && l.claimed.is_some())
    };
    let Some((i, w)) = mine else { return (g, None, new) };
    // Pending at `g`: forward from any mark of ours that is not ahead
    // of `g` (a thread of ours that arrived at `g + 1` meanwhile wins;
    // a process that sat generations out catches up), and only while
    // the entry is ours.
    let forward = s.seen[i].fetch_update(Release, Acquire, |cur| {
        let ours = cur >> 32 == tag(w) && s.who[i].load(Acquire) == w;
        let behind = g.wrapping_sub(cur as u32 & GEN_MASK) & GEN_MASK;
        (ours && behind < 1 << 30).then_some(seen_word(w, g, true))
    });
    if forward.is_err() && s.who[i].load(Acquire) != w {
        // Freed under us (a hostile writer, or a /proc that said we were
        // dead): claim again at the next wait, unless another thread of
        // ours already did.
        let mut slot = h.local();
        if slot.is_some_and(|l| l.stamp == h.stamp() && l.claimed == Some((i, w))) {
            *slot = None;
        }
        return (g, None, new);
    }
    (g, Some((i, w)), new)
}

/// After the arrival [`arriving`] marked was counted: once every thread
/// of this process that began arriving at `g` has been counted, and at
/// least as many as arrived at `g - 1` (a known count: never at the
/// process's first generation), the mark turns from pending to done. Each
/// thread's mark precedes its `fetch_add`, which precedes its count here,
/// so the thread that completes the count finds every mark of the others
/// already made. The last arrival at `g` calls this only after it opened
/// `g` (see [`wait_arrived`]).
pub(super) fn arrived(s: &BarrierState, h: &impl Host, mine: Option<Claimed>, g: u32) {
    let Some((i, w)) = mine else { return };
    let g = g & GEN_MASK;
    let mut slot = h.local();
    if let Some(l) = slot.as_mut().filter(|l| l.stamp == h.stamp() && l.gen == g) {
        l.counted = l.counted.saturating_add(1);
        // Every thread of ours that began arriving at `g` counted, and at
        // least as many as at `g - 1`. Under the lock: a thread that begins
        // arriving after this (`here` grows under the same lock) marks the
        // entry pending again, after this CAS.
        if l.before > 0 && l.counted >= l.before && l.counted >= l.here {
            let _ = s.seen[i].compare_exchange(seen_word(w, g, true), seen_word(w, g, false), Release, Relaxed);
        }
    }
}

/// Claims a free entry (or one of a dead process that owes nothing)
/// for this process, owing generation `g`.
fn claim_entry(s: &BarrierState, h: &impl Host, g: u32) -> Option<Claimed> {
    let w = h.me()?;
    for i in 0..WATCHED_PROCESSES {
        let cur = s.who[i].load(Acquire);
        let free = cur == 0 || judge(cur, || s.seen[i].load(Acquire), g, |w| h.runs(w)) == Entry::Reclaim;
        if free && s.who[i].compare_exchange(cur, w, AcqRel, Relaxed).is_ok() {
            // Owes `g` until its arrival is counted and recorded.
            s.seen[i].store(seen_word(w, g.wrapping_sub(1), false), Release);
            return Some((i, w));
        }
    }
    None
}

/// Whether a watched process owes generation `g` an arrival and is dead
/// (frees the entries of dead processes that owe nothing on the way).
fn owed_by_the_dead(s: &BarrierState, h: &impl Host, g: u32) -> bool {
    let mut owed = false;
    for i in 0..WATCHED_PROCESSES {
        let w = s.who[i].load(Acquire);
        match judge(w, || s.seen[i].load(Acquire), g, |w| h.runs(w)) {
            Entry::Keep => {}
            // The same entry still (its `seen` was not a newcomer's).
            Entry::OwesAndDead => owed |= s.who[i].load(Acquire) == w,
            Entry::Reclaim => {
                let _ = s.who[i].compare_exchange(w, 0, AcqRel, Relaxed);
            }
        }
    }
    owed
}

/// The shared state in words, for the loom model's failure messages.
#[cfg(loom)]
pub(super) fn describe(s: &BarrierState) -> String {
    let entries: Vec<String> = (0..WATCHED_PROCESSES)
        .map(|i| {
            let (w, m) = (s.who[i].load(Relaxed), s.seen[i].load(Relaxed));
            let (_, pid, _) = word::parts(w);
            format!("[pid {pid} mark {}{}]", m as u32 & GEN_MASK, if m & PENDING != 0 { " pending" } else { "" })
        })
        .collect();
    format!(
        "generation {:#x}, arrived {}, entries {}",
        s.generation.load(Relaxed),
        s.arrived.load(Relaxed),
        entries.join(" ")
    )
}

/// A wait after [`arriving`] returned `(g, mine)`: counts the arrival,
/// opens the generation as its last arrival, or sleeps until it opens, the
/// barrier breaks, `deadline` passes (which breaks it), or (when
/// `look_due` says a look is due, after a sleep slice) a dead process owes
/// `g`, which breaks it too. `lost`: whether the segment was truncated
/// under us (then nobody can open it).
#[allow(clippy::too_many_arguments)]
pub(super) fn wait_arrived<H: Host, P: Platform>(
    s: &BarrierState,
    h: &H,
    p: &P,
    parties: u32,
    (g, mine): (u32, Option<Claimed>),
    deadline: Deadline,
    lost: impl Fn() -> bool,
    mut look_due: impl FnMut() -> bool,
) -> Result<BarrierWaitResult, BarrierError> {
    let abort = || {
        s.generation.fetch_or(BROKEN, AcqRel);
        p.wake(&s.generation, i32::MAX as u32);
    };
    if g & BROKEN != 0 || lost() || h.dies_at(Point::Marked) {
        return Err(BarrierError::Broken);
    }
    let n = s.arrived.fetch_add(1, AcqRel).wrapping_add(1);
    if h.dies_at(Point::Counted) {
        return Err(BarrierError::Broken);
    }
    if n == 0 || n > parties {
        // Corrupt count: nobody can trust this barrier any more.
        arrived(s, h, mine, g);
        abort();
        return Err(BarrierError::Broken);
    }
    if n == parties {
        s.arrived.store(0, Relaxed);
        let next = (g + 1) & GEN_MASK;
        let opened = s.generation.compare_exchange(g, next, AcqRel, Acquire);
        // The leader's mark turns done only once it has opened the
        // generation: a leader killed between its count and the opening
        // leaves a pending mark at `g`, which breaks `g` (a done mark would
        // say it owes only `g + 1`, and `g` would never open).
        arrived(s, h, mine, g);
        return match opened {
            // Opened in zero pages nobody else sees: the segment was
            // truncated under us while we arrived.
            Ok(_) if lost() => Err(BarrierError::Broken),
            Ok(_) => {
                p.wake(&s.generation, i32::MAX as u32);
                Ok(BarrierWaitResult { index: 0 })
            }
            Err(_) => Err(BarrierError::Broken),
        };
    }
    arrived(s, h, mine, g);
    let index = parties - n;
    loop {
        // In slices: a barrier whose segment was truncated under us
        // (private zeros now) is never opened by anyone; it is broken.
        p.wait(&s.generation, g, deadline.min_after(crate::wait::PEER_SLICE));
        let cur = s.generation.load(Acquire);
        if lost() {
            return Err(BarrierError::Broken);
        }
        // Opened (checked before `BROKEN`: a waiter that wakes late, after
        // `g` opened and a later generation broke, has passed `g`; its next
        // wait reports the break).
        if cur & GEN_MASK != g {
            return Ok(BarrierWaitResult { index });
        }
        if cur & BROKEN != 0 {
            return Err(BarrierError::Broken);
        }
        // A dead party that owes this generation: nobody can open it.
        if look_due() && owed_by_the_dead(s, h, g) {
            match s.generation.compare_exchange(g, g | BROKEN, Release, Acquire) {
                Ok(_) => {
                    p.wake(&s.generation, i32::MAX as u32);
                    return Err(BarrierError::Broken);
                }
                Err(_) => continue,
            }
        }
        // Checked whatever the wait reported: spurious wake-ups (signals,
        // a peer's FUTEX_WAKE) can keep coming past the deadline.
        if deadline.expired() {
            match s.generation.compare_exchange(g, g | BROKEN, Release, Acquire) {
                Ok(_) => {
                    p.wake(&s.generation, i32::MAX as u32);
                    return Err(BarrierError::Timeout);
                }
                // The barrier opened (or broke) just now: look again.
                Err(_) => continue,
            }
        }
    }
}

// SAFETY: repr(C), only AtomicU32s, align 64; `parties` is validated at open,
// a bad `arrived` breaks the barrier, any generation value is a state.
unsafe impl SharedState for BarrierState {
    fn validate(&self) -> Result<(), OpenError> {
        match self.parties.load(Relaxed) {
            0 => Err(OpenError::corrupt("barrier with 0 parties")),
            _ => Ok(()),
        }
    }
}

/// Why [`Barrier::wait`] did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken (by a timeout, [`Barrier::abort`], a corrupt
    /// count, or its named segment truncated by another process), as
    /// Python's `BrokenBarrierError`. It stays broken.
    Broken,
    /// This waiter's timeout passed; the barrier is now broken for everyone.
    Timeout,
}

impl fmt::Display for BarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarrierError::Broken => f.write_str("the barrier is broken"),
            BarrierError::Timeout => f.write_str("timed out waiting at the barrier; it is now broken"),
        }
    }
}

impl std::error::Error for BarrierError {}

/// What a successful [`Barrier::wait`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult {
    /// Arrival order in this generation, `0..parties`: distinct for every participant.
    pub index: u32,
}

impl BarrierWaitResult {
    /// Whether this participant arrived last and released the others (exactly
    /// one per generation).
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }
}

/// A barrier for a fixed number of processes (or threads).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let b = shmproc::Barrier::anonymous(1)?;
/// assert!(b.wait()?.is_leader()); // one party: passes at once
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    parties: u32,
    /// The shared state (`watch.shared`) and this process's entry in it.
    watch: Arc<Watch>,
}

/// This process's entry in the barrier's table of watched processes, shared
/// by the clones of one handle: claimed on the first wait, cleared when the
/// last clone is dropped (not while panicking) or when a shmproc child's
/// body returns ([`leave_all`]: a forked child never drops the copies it
/// inherited).
struct Watch {
    shared: Shared<BarrierState>,
    /// This process's entry and arrival counts (`None` until its first
    /// wait; a forked child finds its parent's stamp there and starts anew).
    local: ForkSafeMutex<Option<Local>>,
    /// One dead-party look per slice for all the threads of this process
    /// that wait through this handle.
    looked: RateLimit,
    /// The process stamp of the process whose [`HOLDING`] lists this
    /// handle (once per process is enough).
    listed: std::sync::atomic::AtomicU64,
}

/// A claimed entry: its index and this process's `who` word.
pub(crate) type Claimed = (usize, u64);

/// What one process knows of its own entry.
#[derive(Clone, Copy)]
pub(crate) struct Local {
    /// [`sys::process_stamp`] of the process these fields belong to.
    stamp: u64,
    /// `None`: the table was full of live processes, or our start time is
    /// unknown; we wait unwatched and do not scan again.
    claimed: Option<Claimed>,
    /// The generation of this process's latest arrivals, how many of its
    /// threads began arriving there and how many were counted, and how
    /// many arrived at the generation before: the process has arrived at
    /// `gen` once `before > 0 && counted >= before && counted >= here`.
    gen: u32,
    here: u32,
    counted: u32,
    before: u32,
}

impl Watch {
    /// Clears this process's entry (a clean leave: it owes nothing); a
    /// later wait claims a new one.
    fn leave(&self) {
        leave(self.shared.get(), self);
    }
}

/// What the barrier's protocol needs from the process it runs in: the
/// process-local record of its entry, its identity, and whether another
/// process still runs. [`Watch`] is the real process; the loom model
/// (`sync/loom_tests.rs`) plays processes with threads, their deaths with
/// flags.
pub(crate) trait Host {
    /// The guard of [`Host::local`].
    type Local<'a>: std::ops::DerefMut<Target = Option<Local>>
    where
        Self: 'a;
    /// Locks this process's record of its entry and arrival counts
    /// (`None` until its first wait).
    fn local(&self) -> Self::Local<'_>;
    /// This process's stamp ([`sys::process_stamp`]): a record made by
    /// another process (before a fork) is not ours.
    fn stamp(&self) -> u64;
    /// This process's `who` word (`None` when its start time is unknown:
    /// it then waits unwatched).
    fn me(&self) -> Option<u64>;
    /// Whether the process that the `who` word `w` names still runs.
    fn runs(&self, w: u64) -> bool;
    /// The loom model's `kill -9` inside a wait: true if this process dies
    /// at `at` (it then writes nothing more). A real process never says so.
    #[inline]
    fn dies_at(&self, _at: Point) -> bool {
        false
    }
}

/// Where in [`wait_arrived`] the loom model may kill a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// Its arrival marked, not counted.
    Marked,
    /// Counted, nothing after (the last arrival: the generation not opened).
    Counted,
}

impl Host for Watch {
    type Local<'a> = sys::ForkSafeGuard<'a, Option<Local>>;
    fn local(&self) -> Self::Local<'_> {
        self.local.lock()
    }
    fn stamp(&self) -> u64 {
        sys::process_stamp()
    }
    fn me(&self) -> Option<u64> {
        let me = sys::current_process();
        (me.start_time != 0).then(|| word::pack(WATCHED, me.id, me.start_time))
    }
    fn runs(&self, w: u64) -> bool {
        word::runs(w)
    }
}

/// Clears the entry of `h`'s process, unless a thread of it is between its
/// mark and its count (`leave_all` while another thread of the child
/// arrives): the entry then stays, and the child's exit breaks that
/// generation rather than hang it.
pub(super) fn leave(s: &BarrierState, h: &impl Host) {
    let mut l = h.local();
    if let Some(Local { stamp, claimed: Some((i, w)), here, counted, .. }) = *l {
        if stamp == h.stamp() && here <= counted {
            let _ = s.who[i].compare_exchange(w, 0, AcqRel, Relaxed);
            *l = None;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A party unwinding from a panic does not arrive: its entry
            // stays, and breaks the barrier once this process has exited.
            return;
        }
        self.leave();
    }
}

/// The handles of this process that hold an entry (and, after a fork, its
/// parent's, unless the fork came while another thread held the list: the
/// child then starts from an empty one).
static HOLDING: ForkSafeMutex<Vec<Weak<Watch>>> = ForkSafeMutex::new(Vec::new(), Vec::new);

/// Leaves every barrier this process waited at (its entries cleared, as if
/// its handles were dropped): a shmproc child's body returned without
/// panicking, and the child is about to `_exit`, dropping nothing.
pub(crate) fn leave_all() {
    let held: Vec<Weak<Watch>> = HOLDING.lock().clone();
    for w in held.iter().filter_map(Weak::upgrade) {
        w.leave();
    }
}

/// Builder for [`Barrier`]: name and permissions, then `create`, `open` or `open_or_create`.
pub type BarrierBuilder = Builder<Barrier>;

impl Builder<Barrier> {
    /// Creates a barrier for `parties` (>= 1) participants.
    pub fn create(self, parties: u32) -> Result<Barrier, OpenError> {
        Barrier::checked(parties)?;
        Barrier::from_shared(Shared::create(&self, |s: &BarrierState| s.parties.store(parties, Relaxed))?)
    }
    /// Opens the named barrier, or creates it for `parties` participants.
    pub fn open_or_create(self, parties: u32) -> Result<Barrier, OpenError> {
        Barrier::checked(parties)?;
        Barrier::from_shared(Shared::open_or_create(&self, |s: &BarrierState| s.parties.store(parties, Relaxed))?)
    }
}

crate::object::serde_object!([] Barrier);
impl Object for Barrier {
    const KIND: ObjectKind = ObjectKind::Barrier;
    type Params = ();
    fn segment(&self) -> &Segment {
        self.shared().segment()
    }
    fn open_from(b: Builder<Self>, handle: Option<&Handle>) -> Result<Self, OpenError> {
        Barrier::from_shared(Shared::open(&b, handle)?)
    }
}

impl Barrier {
    fn checked(parties: u32) -> Result<(), OpenError> {
        if parties == 0 || parties > GEN_MASK {
            return Err(OpenError::invalid("a barrier needs between 1 and 2^31-1 parties"));
        }
        Ok(())
    }

    fn from_shared(shared: Shared<BarrierState>) -> Result<Self, OpenError> {
        let parties = shared.get().parties.load(Relaxed);
        if parties == 0 {
            return Err(OpenError::corrupt("barrier with 0 parties"));
        }
        let watch = Arc::new(Watch {
            shared,
            local: ForkSafeMutex::new(None, || None),
            looked: RateLimit::new(),
            listed: std::sync::atomic::AtomicU64::new(0),
        });
        Ok(Barrier { parties, watch })
    }

    /// The shared state.
    fn shared(&self) -> &Shared<BarrierState> {
        &self.watch.shared
    }

    /// Before this thread's arrival is counted (see the free [`arriving`]);
    /// lists this handle for [`leave_all`] on its first claim here.
    fn arriving(&self) -> (u32, Option<Claimed>) {
        let (g, mine, new) = arriving(self.shared().get(), &*self.watch);
        let stamp = sys::process_stamp();
        if new && self.watch.listed.swap(stamp, Relaxed) != stamp {
            let mut h = HOLDING.lock();
            h.retain(|w| w.strong_count() > 0);
            h.push(Arc::downgrade(&self.watch));
        }
        (g, mine)
    }

    /// After the arrival [`Self::arriving`] marked was counted (see the free [`arrived`]).
    #[cfg(all(test, not(loom)))]
    fn arrived(&self, mine: Option<Claimed>, g: u32) {
        arrived(self.shared().get(), &*self.watch, mine, g);
    }

    /// A builder with default options (anonymous, mode 0600).
    pub fn builder() -> BarrierBuilder {
        Builder::default()
    }
    /// An anonymous barrier for `parties` participants, shared with children forked later.
    pub fn anonymous(parties: u32) -> Result<Self, OpenError> {
        Self::builder().create(parties)
    }
    /// Creates a named barrier for `parties` participants.
    pub fn create(name: &str, parties: u32) -> Result<Self, OpenError> {
        Self::builder().name(name).create(parties)
    }
    /// Opens a named barrier.
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::builder().name(name).open()
    }

    /// The number of participants.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.shared().get().generation.load(Acquire) & BROKEN != 0
    }

    /// Waits until all parties have arrived. A party that has waited here
    /// before and dies without arriving breaks the barrier for everyone
    /// (see the module docs); one that never arrives for another reason
    /// (it died before its first wait, or it is alive and stuck) blocks the
    /// others for ever: across processes, [`Barrier::wait_timeout`] bounds that.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let b = shmproc::Barrier::anonymous(2)?;
    /// let c = b.clone();
    /// let t = std::thread::spawn(move || c.wait().map(|r| r.is_leader()));
    /// let me = b.wait()?.is_leader();
    /// assert!(me != t.join().unwrap()?, "exactly one leader");
    /// # Ok(()) }
    /// ```
    pub fn wait(&self) -> Result<BarrierWaitResult, BarrierError> {
        self.wait_until(&Os, Deadline::NEVER)
    }

    /// Waits until all parties have arrived or `timeout` passes; a timeout
    /// breaks the barrier for everyone.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult, BarrierError> {
        self.wait_until(&Os, Deadline::after(Some(timeout)))
    }

    /// Breaks the barrier: every current and future waiter gets [`BarrierError::Broken`].
    pub fn abort(&self) {
        let s = self.shared().get();
        s.generation.fetch_or(BROKEN, AcqRel);
        Os.wake(&s.generation, i32::MAX as u32);
    }

    fn wait_until<P: Platform>(&self, p: &P, deadline: Deadline) -> Result<BarrierWaitResult, BarrierError> {
        let (g, mine) = self.arriving();
        // The first look after one slice: a dead party is noticed within
        // about two, and a barrier that opens at once costs no /proc read.
        // Then one look per slice for all the threads of this process that
        // wait through this handle (each look reads /proc for every entry).
        let mut next_look = sys::monotonic_now() + crate::wait::PEER_SLICE;
        let look_due = || {
            let now = sys::monotonic_now();
            if now < next_look {
                return false;
            }
            next_look = now + crate::wait::PEER_SLICE;
            self.watch.looked.due_at(now, crate::wait::PEER_SLICE)
        };
        let lost = || self.shared().segment().lost();
        wait_arrived(self.shared().get(), &*self.watch, p, self.parties, (g, mine), deadline, lost, look_due)
    }

    /// How another process opens this barrier.
    pub fn handle(&self) -> Handle {
        self.shared().segment().handle()
    }

    /// The segment holding it.
    pub fn segment(&self) -> &Segment {
        self.shared().segment()
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties)
            .field("broken", &self.is_broken())
            .field("segment", self.shared().segment())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn threads_pass_generations() {
        let b = Barrier::anonymous(3).unwrap();
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut leaders = 0;
                    for _ in 0..50 {
                        if b.wait_timeout(Duration::from_secs(10)).unwrap().is_leader() {
                            leaders += 1;
                        }
                    }
                    leaders
                })
            })
            .collect();
        let total: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 50);
    }

    /// A futex wait during which the barrier opens (`g -> g + 1`) and the
    /// next generation breaks, before the waiter looks.
    struct OpensThenBreaks;

    impl Platform for OpensThenBreaks {
        fn wait(&self, word: &AtomicU32, expected: u32, _deadline: Deadline) -> crate::wait::Wait {
            word.store(((expected + 1) & GEN_MASK) | BROKEN, Release);
            crate::wait::Wait::Woken
        }
        fn wake(&self, _word: &AtomicU32, _n: u32) {}
        fn me(&self) -> crate::sys::Identity {
            crate::sys::current_thread()
        }
        fn alive(&self, _who: crate::sys::Identity) -> bool {
            true
        }
        fn liveness_slice(&self) -> Option<Duration> {
            None
        }
    }

    /// A waiter that wakes late, after its generation opened and the next
    /// one broke, has passed its generation (`Ok`); its next wait reports
    /// the break. (Found by the loom model: it returned `Broken`.)
    #[test]
    fn a_late_waker_passes_a_generation_that_opened_before_a_break() {
        let b = Barrier::anonymous(2).unwrap();
        assert_eq!(b.wait_until(&OpensThenBreaks, Deadline::NEVER), Ok(BarrierWaitResult { index: 1 }));
        assert_eq!(b.wait(), Err(BarrierError::Broken));
    }

    #[test]
    fn regression_wait_deadline_ignored_while_futex_wait_never_times_out() {
        let b = Barrier::anonymous(2).unwrap();
        let p = crate::sync::NeverTimesOut::new();
        assert_eq!(b.wait_until(&p, Deadline::after(Some(Duration::from_millis(20)))), Err(BarrierError::Timeout));
        assert!(!p.overshot(), "wait kept waiting long past its deadline");
        assert!(b.is_broken());
    }

    #[test]
    fn a_dead_process_owes_the_generation_after_its_last_arrival_only() {
        let w = word::pack(WATCHED, 4242, 777);
        let (alive, dead) = (|_| true, |_| false);
        let g = 10u32;
        assert_eq!(judge(0, || 0, g, dead), Entry::Keep, "a free entry");
        assert_eq!(judge(w, || seen_word(w, g - 1, false), g, alive), Entry::Keep, "alive: it may still come");
        assert_eq!(judge(w, || seen_word(w, g - 1, false), g, dead), Entry::OwesAndDead);
        assert_eq!(judge(w, || seen_word(w, g, false), g, dead), Entry::Keep, "arrived here: owes the next one");
        assert_eq!(judge(w, || seen_word(w, g, false), g + 1, dead), Entry::OwesAndDead);
        // Killed while its arrival was being counted: perhaps counted, so
        // this generation may open; perhaps not, so it may not: it owes
        // this one, and the next one in any case.
        assert_eq!(judge(w, || seen_word(w, g, true), g, dead), Entry::OwesAndDead);
        assert_eq!(judge(w, || seen_word(w, g, true), g + 1, dead), Entry::OwesAndDead);
        assert_eq!(judge(w, || seen_word(w, g, true), g + 2, dead), Entry::Reclaim);
        assert_eq!(judge(w, || seen_word(w, g, true), g, alive), Entry::Keep);
        // A mark ahead of the waiter's generation (it read `g` before the
        // barrier opened): not stale, whatever it owes is for a later look.
        assert_eq!(judge(w, || seen_word(w, g + 1, false), g, dead), Entry::Keep);
        assert_eq!(judge(w, || seen_word(w, g + 1, true), g, dead), Entry::Keep);
        assert_eq!(judge(w, || seen_word(w, g - 2, false), g, dead), Entry::Reclaim, "opened once without it");
        // The generation wraps in 31 bits.
        assert_eq!(judge(w, || seen_word(w, GEN_MASK, false), 0, dead), Entry::OwesAndDead);
        // No evidence: a `seen` of another entry, garbage states, no start time.
        let other = word::pack(WATCHED, 4243, 777);
        assert_eq!(judge(w, || seen_word(other, g - 1, false), g, dead), Entry::Reclaim);
        assert_eq!(
            judge(w, || seen_word(other, g - 1, false), g, alive),
            Entry::Keep,
            "being claimed by a live process"
        );
        let garbage = word::pack(7, 4242, 777);
        assert_eq!(judge(garbage, || seen_word(garbage, g - 1, false), g, alive), Entry::Reclaim);
        let no_start = word::pack(WATCHED, 4242, 0);
        assert_eq!(judge(no_start, || seen_word(no_start, g - 1, false), g, alive), Entry::Reclaim);
    }

    #[test]
    fn a_wait_claims_one_entry_per_process_and_the_last_drop_clears_it() {
        let b = Barrier::anonymous(1).unwrap();
        // A view of our own: it keeps the mapping after the handles are gone.
        let shared = b.shared().clone();
        let s = shared.get();
        let count = || s.who.iter().filter(|w| w.load(Acquire) != 0).count();
        assert_eq!(count(), 0, "nothing claimed before the first wait");
        let c = b.clone();
        b.wait().unwrap();
        c.wait().unwrap();
        assert_eq!(count(), 1);
        let i = s.who.iter().position(|w| w.load(Acquire) != 0).unwrap();
        let me = sys::current_process();
        assert_eq!(s.who[i].load(Acquire), word::pack(WATCHED, me.id, me.start_time));
        // Two arrivals: generations 0 and 1, so the last one recorded is 1.
        assert_eq!(s.seen[i].load(Acquire), seen_word(s.who[i].load(Acquire), 1, false));
        drop(b);
        assert_eq!(count(), 1, "a clone still holds it");
        drop(c);
        assert_eq!(count(), 0, "the last drop clears the entry");
    }

    #[test]
    fn a_process_owes_a_generation_until_as_many_of_its_threads_arrived_as_before() {
        let b = Barrier::anonymous(3).unwrap();
        let shared = b.shared().clone();
        let s = shared.get();
        let pass = |k: usize| -> Vec<std::thread::JoinHandle<Result<BarrierWaitResult, BarrierError>>> {
            (0..k)
                .map(|_| {
                    let b = b.clone();
                    std::thread::spawn(move || b.wait_timeout(Duration::from_secs(10)))
                })
                .collect()
        };
        // Generation 0: three threads of this process.
        for h in pass(3) {
            h.join().unwrap().unwrap();
        }
        let i = s.who.iter().position(|w| w.load(Acquire) != 0).unwrap();
        let w = s.who[i].load(Acquire);
        // Its first generation: how many threads it has is not known yet, so
        // the arrival stays pending (a death now owes 0 and 1).
        assert_eq!(s.seen[i].load(Acquire), seen_word(w, 0, true));
        // Generation 1: one thread arrives; the process still owes it.
        let first = pass(1);
        let t = Instant::now();
        while b.shared().get().arrived.load(Acquire) < 1 && t.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        assert_eq!(s.seen[i].load(Acquire), seen_word(w, 1, true), "1 of 3 threads arrived at 1");
        for h in pass(2).into_iter().chain(first) {
            h.join().unwrap().unwrap();
        }
        assert_eq!(s.seen[i].load(Acquire), seen_word(w, 1, false), "3 of 3 arrived at 1");
        assert_eq!(s.who.iter().filter(|w| w.load(Acquire) != 0).count(), 1, "one entry for the process");
    }

    /// `arriving` at generation `g` (set in the shared word first: these
    /// tests drive the marks by hand, without the arrival counter).
    fn arriving_at(b: &Barrier, g: u32) -> Option<Claimed> {
        b.shared().get().generation.store(g, Release);
        let (at, mine) = b.arriving();
        assert_eq!(at, g);
        mine
    }

    #[test]
    fn the_mark_is_done_only_once_every_thread_was_counted_and_catches_up_after_a_gap() {
        let b = Barrier::anonymous(5).unwrap();
        let s = b.shared().get();
        let seen = |i: usize| s.seen[i].load(Acquire);
        // Generation 0, two threads: the first generation stays pending.
        let (m1, m2) = (arriving_at(&b, 0), arriving_at(&b, 0));
        let (i, w) = m1.unwrap();
        b.arrived(m1, 0);
        b.arrived(m2, 0);
        assert_eq!(seen(i), seen_word(w, 0, true));
        // Generation 1: T1 marks and is preempted before its `fetch_add`;
        // T2 arrives and is counted. T1 is not counted yet: still pending.
        let m1 = arriving_at(&b, 1);
        let m2 = arriving_at(&b, 1);
        b.arrived(m2, 1);
        assert_eq!(seen(i), seen_word(w, 1, true), "one of two threads counted");
        b.arrived(m1, 1);
        assert_eq!(seen(i), seen_word(w, 1, false), "both counted");
        // Generation 2, three threads (one more than at 1): two counted
        // reach the count of generation 1, but the third began arriving, so
        // the mark stays pending until it is counted too (it may be the
        // last arrival, which opens the generation only after its count).
        let (m1, m2, m3) = (arriving_at(&b, 2), arriving_at(&b, 2), arriving_at(&b, 2));
        b.arrived(m1, 2);
        b.arrived(m2, 2);
        assert_eq!(seen(i), seen_word(w, 2, true), "a third thread is arriving");
        b.arrived(m3, 2);
        assert_eq!(seen(i), seen_word(w, 2, false), "all three counted");
        // The process sits generation 3 out: at 4 its mark catches up.
        let m = arriving_at(&b, 4);
        assert_eq!(seen(i), seen_word(w, 4, true));
        b.arrived(m, 4);
        assert_eq!(seen(i), seen_word(w, 4, true), "after a gap the count is unknown again");
    }

    #[test]
    fn leaving_keeps_the_entry_while_a_thread_is_between_its_mark_and_its_count() {
        let b = Barrier::anonymous(3).unwrap();
        let s = b.shared().get();
        let held = || s.who.iter().filter(|w| w.load(Acquire) != 0).count();
        let m = arriving_at(&b, 0);
        b.watch.leave();
        assert_eq!(held(), 1, "a thread is arriving: the entry stays");
        b.arrived(m, 0);
        b.watch.leave();
        assert_eq!(held(), 0, "counted: a clean leave");
    }

    #[test]
    fn the_mark_judged_is_read_only_once_the_process_is_known_dead() {
        let w = word::pack(WATCHED, 4242, 777);
        // The verdict, and whether the mark was read; `runs` fails the test
        // if the mark was read before it was asked.
        let judged = |alive: bool| {
            let read = std::cell::Cell::new(false);
            let mark = || {
                read.set(true);
                seen_word(w, 0, false)
            };
            let runs = |_| {
                assert!(!read.get(), "the mark was read before liveness was known");
                alive
            };
            (judge(w, mark, 1, runs), read.get())
        };
        assert_eq!(judged(true), (Entry::Keep, false), "a live process's mark is not read at all");
        assert_eq!(judged(false), (Entry::OwesAndDead, true));
    }

    #[test]
    fn timeout_breaks_for_all() {
        let b = Barrier::anonymous(3).unwrap();
        let b2 = b.clone();
        let h = std::thread::spawn(move || b2.wait_timeout(Duration::from_secs(10)));
        let t = Instant::now();
        assert_eq!(b.wait_timeout(Duration::from_millis(30)), Err(BarrierError::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(h.join().unwrap(), Err(BarrierError::Broken));
        assert_eq!(b.wait_timeout(Duration::from_secs(10)), Err(BarrierError::Broken));
        let c = Barrier::anonymous(2).unwrap();
        c.abort();
        assert_eq!(c.wait_timeout(Duration::from_secs(1)), Err(BarrierError::Broken));
    }
}
