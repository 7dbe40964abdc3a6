//! Baselines: what two processes on this machine get with no library at all.
//!
//! Every later shmproc transport is reported as a ratio to these, measured in
//! the same run:
//!
//! | transport     | scenarios                         | how                                                   |
//! |---------------|-----------------------------------|-------------------------------------------------------|
//! | `raw-spin`    | `pingpong-8B`, `event-pingpong`   | two `AtomicU64`s on separate lines, both sides spin, publish with `swap` |
//! | `raw-futex`   | `pingpong-8B`, `event-pingpong`   | two `AtomicU32` futex words, shared wait/wake         |
//! | `raw-ring`    | `stream-8B`, `stream-64KiB`       | a tuned SPSC ring (see [`Ring8`] and [`RingBulk`], 1 MiB like the Pipe's) |
//! | `raw-ring-permsg` | `stream-8B`                   | the same 8-byte ring, both indices published after every message (a reference, not a floor) |
//! | `raw-ring-seq` | `stream-8B`                      | per message too, but each slot carries its message's sequence number, which is what the consumer polls (FastForward); a reference, not a floor |
//! | `raw-mpmc`    | `stream-mpmc`                     | a bare Vyukov bounded MPMC ring, the same producers as the queue |
//! | `os-pipe`     | all three                         | `pipe(2)`: 8-byte round trips, 8-byte or 64 KiB writes |
//! | `unix-socket` | all three                         | `socketpair(AF_UNIX, SOCK_STREAM)`, same as the pipe   |
//!
//! `raw-ring-permsg` shows what per-message publication costs by itself: a
//! `send` that returns must have made its message visible, and a `recv` must
//! free its slot (or a receiver that crashes would have it delivered again),
//! so each moves its index's cache line once per message where `raw-ring`
//! does so once per 64. It is the ring a user would write by hand for that,
//! not a floor: its consumer spins on the producer's index and reads the
//! line the producer is filling, which the queue's receivers avoid by
//! slipping (FastForward). It is reported against `raw-ring`, like the queue.
//!
//! `raw-ring-seq` is the other way to publish every message: the producer
//! writes the message and then its sequence number into the slot, and never
//! publishes an index; the consumer polls the slot it reads next (Giacomoni,
//! Moseley, Vachharajani, "FastForward for Efficient Pipeline Parallelism",
//! PPoPP 2008), so no line but the slots' moves from producer to consumer.
//! It still frees every slot at once (its `head` after every message), as a
//! `recv` must. Slots are 16 bytes, so a line holds 4 messages where
//! `raw-ring-permsg` holds 8. It shows what a per-message queue built that
//! way could reach on this host; shmproc's SPSC queue publishes an index.
//!
//! `raw-spin` publishes each message with `swap` (`xchg` on x86), which is
//! faster than a plain store when the vCPUs are far apart: the floor must be
//! the fastest bare handoff. It is also the drift probe of every case.
//!
//! The shared state lives in an anonymous shmproc [`Segment`] (a sealed memfd
//! mapped `MAP_SHARED`, inherited across `fork`). The parent runs on
//! `cfg.parent_cpu` and measures; the child runs on `cfg.child_cpu`. Every wait
//! is bounded: spin loops check a stall deadline, futex waits time out, and
//! [`os::watched`] kills a child that a blocked `read`/`write` waits on, which
//! turns the parent's call into EOF or `EPIPE`. A child's role is a `'static`
//! closure (the library's [`Process::closure`](shmproc::process::Process::closure)):
//! it owns a clone of the shared segment and derives its references from it.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use super::Outcome;

use shmproc::Segment;

use super::os::{self, Child};
use super::{Case, Config, Metric, Session, Work};

/// Round trip of one 8-byte message and its 8-byte reply.
pub const PINGPONG_8B: &str = "pingpong-8B";
/// One-way stream of 8-byte messages.
pub const STREAM_8B: &str = "stream-8B";
/// One-way stream of 64 KiB messages.
pub const STREAM_64KIB: &str = "stream-64KiB";

/// The baseline cases, in print order.
pub fn cases() -> Vec<Case> {
    use Metric::{BytesPerS, MsgsPerS, RttNs};
    vec![
        Case::new(PINGPONG_8B, "raw-spin", RttNs, spin_pingpong),
        Case::new(PINGPONG_8B, "raw-futex", RttNs, futex_pingpong),
        Case::new(PINGPONG_8B, "os-pipe", RttNs, pipe_pingpong),
        Case::new(PINGPONG_8B, "unix-socket", RttNs, socket_pingpong),
        Case::new(STREAM_8B, "raw-ring", MsgsPerS, ring8_stream::<BATCH>),
        Case::new(STREAM_8B, "raw-ring-permsg", MsgsPerS, ring8_stream::<1>),
        Case::new(STREAM_8B, "raw-ring-seq", MsgsPerS, seq_ring_stream),
        Case::new(STREAM_8B, "os-pipe", MsgsPerS, |cfg| pipe_stream(cfg, 8)),
        Case::new(STREAM_8B, "unix-socket", MsgsPerS, |cfg| socket_stream(cfg, 8)),
        Case::new(STREAM_64KIB, "raw-ring", BytesPerS, ring_bulk_stream),
        Case::new(STREAM_64KIB, "os-pipe", BytesPerS, |cfg| pipe_stream(cfg, CHUNK)),
        Case::new(STREAM_64KIB, "unix-socket", BytesPerS, |cfg| socket_stream(cfg, CHUNK)),
        Case::new("stream-mpmc", "raw-mpmc", MsgsPerS, mpmc_stream),
    ]
}

/// Size of one message of `stream-64KiB`.
const CHUNK: usize = 64 * 1024;

/// Exit codes of a child role.
const EXIT_OK: i32 = 0;
const EXIT_STALLED: i32 = 3;
const EXIT_IO: i32 = 4;

/// One value on its own pair of cache lines (the adjacent-line prefetcher
/// pulls lines in pairs, so 128 bytes keep two hot words from false sharing).
#[repr(C, align(128))]
struct Line<T>(T);

/// An anonymous, zero-filled shared segment big enough for a `T`, and a
/// reference to the `T` at its start.
///
/// `T` must be valid when all-zero and contain only atomics (checked by the
/// callers' types: every field is an atomic or an array of them).
struct Shared<T> {
    seg: Segment,
    _t: std::marker::PhantomData<T>,
}

impl<T> Clone for Shared<T> {
    /// Another handle on the same mapping (for a child's closure).
    fn clone(&self) -> Self {
        Shared { seg: self.seg.clone(), _t: std::marker::PhantomData }
    }
}

impl<T> Shared<T> {
    fn new(extra: usize) -> Result<Shared<T>, String> {
        let size = std::mem::size_of::<T>() + extra;
        let seg = Segment::builder().size(size).create().map_err(|e| format!("anonymous segment: {e}"))?;
        let p = seg.payload_ptr().as_ptr() as usize;
        if !p.is_multiple_of(std::mem::align_of::<T>()) || seg.payload_len() < size {
            return Err(format!("segment payload at {p:#x} ({} bytes) cannot hold the bench state", seg.payload_len()));
        }
        Ok(Shared { seg, _t: std::marker::PhantomData })
    }

    fn get(&self) -> &T {
        // Every `T` used here is only atomics (and padding): all-zero bytes are valid, sharing is sound.
        // SAFETY: the payload is at least size_of::<T>() bytes, aligned for T (checked in `new`),
        // zero-filled by the kernel, and lives as long as `self.seg`.
        unsafe { &*(self.seg.payload_ptr().as_ptr() as *const T) }
    }

    /// The bytes after the `T` (for bulk data), as a raw pointer.
    fn tail_ptr(&self) -> NonNull<u8> {
        // SAFETY: `new` checked that the payload holds size_of::<T>() + extra bytes.
        unsafe { NonNull::new_unchecked(self.seg.payload_ptr().as_ptr().add(std::mem::size_of::<T>())) }
    }
}

/// Time a baseline's side has waited for its peer, not counting time it was
/// stopped. The bench stops (SIGSTOP) the children of a session while the
/// other side of a pair runs, and the drift probe's child for a whole case
/// (over a minute for `pool-map-cpu`): a wait that spans the stop must not
/// read the stop as the peer's silence. That misreading made the probe's
/// child give up right after such a case, and the probe then reported "a
/// block took over 20 s" against the case (the "pool stall" of issue 11).
struct StallClock {
    limit: Duration,
    waited: Duration,
    last: Instant,
}

impl StallClock {
    /// A gap between two readings longer than this was a stop (or a host
    /// that did not run us), not waiting.
    const STOPPED: Duration = Duration::from_secs(1);

    fn new(limit: Duration) -> StallClock {
        StallClock { limit, waited: Duration::ZERO, last: Instant::now() }
    }

    /// Counts the time since the last reading (unless it was a stop);
    /// whether the limit is reached.
    fn expired(&mut self) -> bool {
        let now = Instant::now();
        let gap = now.duration_since(self.last);
        self.last = now;
        if gap < Self::STOPPED {
            self.waited += gap;
        }
        self.waited >= self.limit
    }
}

/// Spins until `done()` holds; Err after `limit` of waiting without it (see
/// [`StallClock`]). The clock is read once every 4096 spins, so the check
/// costs nothing measurable.
#[inline(always)]
fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let mut spins: u32 = 0;
    let mut clock: Option<StallClock> = None;
    while !done() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(4096) {
            match clock.as_mut() {
                None => clock = Some(StallClock::new(limit)),
                Some(c) => {
                    if c.expired() {
                        return Err(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Forks a bench child pinned to the child CPU.
fn fork(cfg: &Config, f: impl FnOnce() -> i32 + 'static) -> Result<Child, String> {
    os::fork_child(cfg.child_cpu, f).map_err(|e| format!("fork: {e}"))
}

// ---------------------------------------------------------------- raw-spin

#[repr(C)]
struct SpinWords {
    ping: Line<AtomicU64>,
    pong: Line<AtomicU64>,
}

const STOP: u64 = u64::MAX;

/// Also the drift probe of every case and the same-run baseline of
/// `event-pingpong/event-spin`.
pub fn spin_pingpong(cfg: &Config) -> Result<Session, String> {
    let shared = Shared::<SpinWords>::new(0)?;
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let w = theirs.get();
        let mut seen = 0u64;
        loop {
            if spin_until(stall, || w.ping.0.load(Ordering::Acquire) != seen).is_err() {
                return EXIT_STALLED;
            }
            seen = w.ping.0.load(Ordering::Acquire);
            if seen == STOP {
                return EXIT_OK;
            }
            w.pong.0.swap(seen, Ordering::AcqRel);
        }
    })?;
    let stopper = shared.clone();
    let mut i = 0u64;
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        let w = shared.get();
        i += 1;
        w.ping.0.swap(i, Ordering::AcqRel);
        spin_until(stall, || w.pong.0.load(Ordering::Acquire) == i).map_err(|()| "raw-spin: no reply".to_string())
    })))
    .child(child)
    .on_finish(move || {
        stopper.get().ping.0.store(STOP, Ordering::Release);
    })
    .placement(cfg.pair_placement()))
}

// ---------------------------------------------------------------- raw-futex

#[repr(C)]
struct FutexWords {
    ping: Line<AtomicU32>,
    pong: Line<AtomicU32>,
}

const FUTEX_STOP: u32 = u32::MAX;

/// Sleeps on `word` until it differs from `old`; Err after `limit` of waiting
/// (see [`StallClock`]).
fn futex_until_changed(word: &AtomicU32, old: u32, limit: Duration) -> Result<u32, ()> {
    let mut clock = StallClock::new(limit);
    loop {
        let v = word.load(Ordering::Acquire);
        if v != old {
            return Ok(v);
        }
        if clock.expired() {
            return Err(());
        }
        // In slices shorter than a stop gap, so that waiting counts.
        os::futex_wait(word, old, Duration::from_millis(500));
    }
}

fn futex_pingpong(cfg: &Config) -> Result<Session, String> {
    futex_pingpong_delayed(cfg, Duration::ZERO)
}

/// The futex ping-pong, each side busy-waiting `delay` before it wakes the
/// other (the `event-pingpong` scenario's `raw-futex`, baseline of `event-sleep`).
pub(super) fn futex_pingpong_delayed(cfg: &Config, delay: Duration) -> Result<Session, String> {
    let shared = Shared::<FutexWords>::new(0)?;
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let w = theirs.get();
        let mut seen = 0u32;
        loop {
            match futex_until_changed(&w.ping.0, seen, stall) {
                Err(()) => return EXIT_STALLED,
                Ok(FUTEX_STOP) => return EXIT_OK,
                Ok(v) => seen = v,
            }
            super::sync::delay(delay);
            w.pong.0.store(seen, Ordering::Release);
            os::futex_wake(&w.pong.0);
        }
    })?;
    let stopper = shared.clone();
    let mut i = 0u32;
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        let w = shared.get();
        i = if i + 1 == FUTEX_STOP { 1 } else { i + 1 };
        let before = w.pong.0.load(Ordering::Acquire);
        super::sync::delay(delay);
        w.ping.0.store(i, Ordering::Release);
        os::futex_wake(&w.ping.0);
        match futex_until_changed(&w.pong.0, before, stall) {
            Ok(v) if v == i => Ok(()),
            Ok(v) => Err(format!("raw-futex: reply {v}, expected {i}")),
            Err(()) => Err("raw-futex: no reply from the child".to_string()),
        }
    })))
    .child(child)
    .on_finish(move || {
        let w = stopper.get();
        w.ping.0.store(FUTEX_STOP, Ordering::Release);
        os::futex_wake(&w.ping.0);
    })
    .placement(cfg.pair_placement()))
}

// ---------------------------------------------------------------- os-pipe / unix-socket ping-pong

/// Ping-pong of 8-byte messages over a byte stream. `child_ends` are moved into
/// the child (and so closed in the parent when the closure is dropped there);
/// `close_in_child` are the raw fds of the parent's ends, which the child closes
/// so that EOF reaches each side when the other exits.
fn stream_pingpong<R: Read + 'static, W: Write + 'static, CR: Read + 'static, CW: Write + 'static>(
    cfg: &Config,
    what: &'static str,
    mut rx: R,
    mut tx: W,
    child_ends: (CR, CW),
    close_in_child: Vec<i32>,
) -> Result<Session, String> {
    let child = fork(cfg, move || {
        for fd in close_in_child {
            os::close_raw(fd);
        }
        let (mut crx, mut ctx) = child_ends;
        let mut buf = [0u8; 8];
        loop {
            match crx.read_exact(&mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return EXIT_OK,
                Err(_) => return EXIT_IO,
            }
            if ctx.write_all(&buf).is_err() {
                return EXIT_IO;
            }
        }
    })?;
    let mut i = 0u64;
    let mut buf = [0u8; 8];
    // Dropping the work closes `tx` and `rx`: EOF for the child.
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        i += 1;
        tx.write_all(&i.to_le_bytes()).map_err(|e| format!("{what}: write: {e}"))?;
        rx.read_exact(&mut buf).map_err(|e| format!("{what}: read: {e}"))?;
        if u64::from_le_bytes(buf) != i {
            return Err(format!("{what}: reply {} to message {i}", u64::from_le_bytes(buf)));
        }
        Ok(())
    })))
    .child(child)
    .placement(cfg.pair_placement()))
}

fn pipe_pingpong(cfg: &Config) -> Result<Session, String> {
    let (p2c_r, p2c_w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (c2p_r, c2p_w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let close = vec![p2c_w.as_raw_fd(), c2p_r.as_raw_fd()];
    stream_pingpong(cfg, "os-pipe", c2p_r, p2c_w, (p2c_r, c2p_w), close)
}

fn socket_pingpong(cfg: &Config) -> Result<Session, String> {
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let a2 = a.try_clone().map_err(|e| format!("dup: {e}"))?;
    let b2 = b.try_clone().map_err(|e| format!("dup: {e}"))?;
    let close = vec![a.as_raw_fd(), a2.as_raw_fd()];
    stream_pingpong(cfg, "unix-socket", a, a2, (b, b2), close)
}

// ---------------------------------------------------------------- os-pipe / unix-socket streams

/// The child writes `msg`-byte messages until the parent raises `stop` (or
/// closes its end after raising it); the parent reads in 64 KiB gulps and
/// counts. Units are messages for 8-byte messages and bytes otherwise.
fn stream_oneway<R: Read + 'static, CW: Write + 'static>(
    cfg: &Config,
    what: &'static str,
    mut rx: R,
    child_tx: CW,
    close_in_child: Vec<i32>,
    msg: usize,
) -> Result<Session, String> {
    let shared = Shared::<Line<AtomicU32>>::new(0)?;
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let stop = &theirs.get().0;
        for fd in close_in_child {
            os::close_raw(fd);
        }
        let mut tx = child_tx;
        let data = vec![0x5au8; msg];
        let check_every = if msg >= 4096 { 1 } else { 1024 };
        let mut n = 0u64;
        loop {
            if tx.write_all(&data).is_err() {
                // The parent closes its end only after raising `stop`.
                return if stop.load(Ordering::Relaxed) != 0 { EXIT_OK } else { EXIT_IO };
            }
            n += 1;
            if n.is_multiple_of(check_every) && stop.load(Ordering::Relaxed) != 0 {
                return EXIT_OK;
            }
        }
    })?;
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let unit = if msg == 8 { 8 } else { 1 };
    let stopper = shared.clone();
    Ok(Session::new(Work::Stream(Box::new(move || loop {
        match rx.read(&mut buf) {
            Ok(0) => return Err(format!("{what}: the child closed the stream early")),
            Ok(n) => {
                bytes += n as u64;
                return Ok(bytes / unit);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{what}: read: {e}")),
        }
    })))
    .child(child)
    .on_finish(move || stopper.get().0.store(1, Ordering::Relaxed))
    .placement(cfg.pair_placement()))
}

fn pipe_stream(cfg: &Config, msg: usize) -> Result<Session, String> {
    let (r, w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let close = vec![r.as_raw_fd()];
    stream_oneway(cfg, "os-pipe", r, w, close, msg)
}

fn socket_stream(cfg: &Config, msg: usize) -> Result<Session, String> {
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let close = vec![a.as_raw_fd()];
    stream_oneway(cfg, "unix-socket", a, b, close, msg)
}

// ---------------------------------------------------------------- raw-ring, 8-byte messages

/// Slots of the 8-byte ring (a power of two, a multiple of [`BATCH`]).
const RING8_SLOTS: usize = 4096;
/// Both sides publish their index once per this many messages.
const BATCH: u64 = 64;

/// A tuned single-producer single-consumer ring of `u64` messages.
///
/// | offset | field   | written by | meaning                                      |
/// |-------:|---------|------------|----------------------------------------------|
/// | 0      | `tail`  | producer   | messages published (a multiple of 64)        |
/// | 128    | `head`  | consumer   | messages consumed (a multiple of 64)         |
/// | 256    | `stop`  | consumer   | non-zero: the producer should exit           |
/// | 384    | `slots` | producer   | 4096 `u64` slots, message `n` in `n % 4096`  |
///
/// Each side keeps its own index privately and a cached copy of the other's,
/// which it reloads only when the ring looks full (producer) or empty
/// (consumer). Indices are published every [`BATCH`] messages: the cache line
/// holding an index then moves between CPUs once per 64 messages, not per message.
/// The producer waits only when `tail - head == slots`, where `tail` is a
/// multiple of 64 and already published, so the consumer always catches up to
/// it and the two never wait on each other at once.
#[repr(C)]
struct Ring8 {
    tail: Line<AtomicU64>,
    head: Line<AtomicU64>,
    stop: Line<AtomicU32>,
    slots: [AtomicU64; RING8_SLOTS],
}

const _: () = assert!(RING8_SLOTS.is_power_of_two() && (RING8_SLOTS as u64).is_multiple_of(BATCH));
const _: () = assert!(std::mem::offset_of!(Ring8, slots) == 384);

/// The producer of an 8-byte ring that looks full (`tail - cached_head` is
/// [`RING8_SLOTS`]): re-reads the consumer's `head` until `want` slots are
/// free. `Err`: the child's exit code, when the consumer raised `stop`
/// ([`EXIT_OK`]) or nothing moved for `stall` ([`EXIT_STALLED`]).
fn wait_for_room(
    stall: Duration,
    head: &AtomicU64,
    stop: &AtomicU32,
    tail: u64,
    cached_head: &mut u64,
    want: u64,
) -> Result<(), i32> {
    let mut stopped = false;
    let waited = spin_until(stall, || {
        *cached_head = head.load(Ordering::Acquire);
        stopped = stop.load(Ordering::Relaxed) != 0;
        RING8_SLOTS as u64 - (tail - *cached_head) >= want || stopped
    });
    if stopped {
        return Err(EXIT_OK);
    }
    waited.map_err(|()| EXIT_STALLED)
}

/// The consumer of an 8-byte ring that looks empty (its cached tail is
/// `head`): re-reads `tail` until it moves; `None` if nothing moved for `stall`.
#[inline(never)]
fn wait_for_tail(stall: Duration, tail: &AtomicU64, head: u64) -> Option<u64> {
    let mut seen = head;
    spin_until(stall, || {
        seen = tail.load(Ordering::Acquire);
        seen != head
    })
    .ok()?;
    Some(seen)
}

/// The 8-byte ring's stream; both sides publish their index every
/// `PUBLISH` messages ([`BATCH`]: `raw-ring`; 1: `raw-ring-permsg`). A
/// constant, so that the loop tests a mask: with a run-time count, the
/// producer divided once per message, and the divide set the floor's pace.
fn ring8_stream<const PUBLISH: u64>(cfg: &Config) -> Result<Session, String> {
    const { assert!(PUBLISH.is_power_of_two()) };
    let shared = Shared::<Ring8>::new(0)?;
    let stall = cfg.stall_limit();
    let mask = RING8_SLOTS as u64 - 1;
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let r = theirs.get();
        let mut tail = 0u64;
        let mut cached_head = 0u64;
        loop {
            if tail - cached_head == RING8_SLOTS as u64 {
                if let Err(code) = wait_for_room(stall, &r.head.0, &r.stop.0, tail, &mut cached_head, 1) {
                    return code;
                }
            }
            r.slots[(tail & mask) as usize].store(tail, Ordering::Relaxed);
            tail += 1;
            if tail.is_multiple_of(PUBLISH) {
                r.tail.0.store(tail, Ordering::Release);
                if tail.is_multiple_of(BATCH * 1024) && r.stop.0.load(Ordering::Relaxed) != 0 {
                    return EXIT_OK;
                }
            }
        }
    })?;
    let stopper = shared.clone();
    let mut head = 0u64;
    let mut cached_tail = 0u64;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let r = shared.get();
        // The indices live in locals (registers) for the call: the closure's
        // own fields would be stored back after every message.
        let (mut h, mut seen) = (head, cached_tail);
        // Up to 16 Ki messages per call.
        let mut mismatch = 0u64;
        for _ in 0..(1 << 14) / BATCH {
            for _ in 0..BATCH {
                if h == seen {
                    seen = wait_for_tail(stall, &r.tail.0, h).ok_or("raw-ring: the producer stalled")?;
                }
                let v = r.slots[(h & mask) as usize].load(Ordering::Relaxed);
                mismatch |= v ^ h;
                h += 1;
                if PUBLISH == 1 {
                    r.head.0.store(h, Ordering::Release);
                }
            }
            r.head.0.store(h, Ordering::Release);
        }
        (head, cached_tail) = (h, seen);
        if mismatch != 0 {
            return Err("raw-ring: a message arrived out of order or corrupted".into());
        }
        Ok(head)
    })))
    .child(child)
    .on_finish(move || stopper.get().stop.0.store(1, Ordering::Relaxed))
    .placement(cfg.pair_placement()))
}

// ---------------------------------------------------------------- raw-ring-seq, 8-byte messages

/// One slot of [`SeqRing`]: message `n` is there when `seq` reads `n + 1`.
#[repr(C)]
struct SeqSlot {
    seq: AtomicU64,
    val: AtomicU64,
}

/// A per-message SPSC ring that publishes through the slots (FastForward).
///
/// | offset | field   | written by | meaning                                          |
/// |-------:|---------|------------|--------------------------------------------------|
/// | 0      | `head`  | consumer   | messages consumed, after every message           |
/// | 128    | `stop`  | consumer   | non-zero: the producer should exit               |
/// | 256    | `slots` | producer   | 4096 x (`seq`, `val`): message `n` in `n % 4096` |
///
/// The producer writes `val`, then `seq = n + 1` (release); the consumer
/// waits for `seq == head + 1` (acquire), reads `val` and publishes `head`.
/// The producer keeps a cached copy of `head`, re-read only when the ring
/// looks full; then it waits for [`BATCH`] free slots (B-Queue), so it
/// touches the consumer's line once per batch. A consumer that finds its
/// slot empty lets the producer run ahead for a number of `pause`s that
/// doubles up to 64 while the stream lasts (FastForward's temporal
/// slipping), so that it does not take the line the producer is filling.
#[repr(C)]
struct SeqRing {
    head: Line<AtomicU64>,
    stop: Line<AtomicU32>,
    slots: [SeqSlot; RING8_SLOTS],
}

const _: () = assert!(std::mem::offset_of!(SeqRing, slots) == 256);

/// The consumer of `raw-ring-seq`: waits until `seq` reads `want`; false if
/// it did not for `stall`.
#[inline(never)]
fn wait_for_seq(stall: Duration, seq: &AtomicU64, want: u64) -> bool {
    spin_until(stall, || seq.load(Ordering::Acquire) == want).is_ok()
}

/// The stream of `raw-ring-seq`.
fn seq_ring_stream(cfg: &Config) -> Result<Session, String> {
    let shared = Shared::<SeqRing>::new(0)?;
    let stall = cfg.stall_limit();
    let mask = RING8_SLOTS as u64 - 1;
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let r = theirs.get();
        let mut tail = 0u64;
        let mut cached_head = 0u64;
        loop {
            if tail - cached_head == RING8_SLOTS as u64 {
                if let Err(code) = wait_for_room(stall, &r.head.0, &r.stop.0, tail, &mut cached_head, BATCH) {
                    return code;
                }
            }
            let slot = &r.slots[(tail & mask) as usize];
            slot.val.store(tail, Ordering::Relaxed);
            tail += 1;
            slot.seq.store(tail, Ordering::Release);
            if tail.is_multiple_of(BATCH * 1024) && r.stop.0.load(Ordering::Relaxed) != 0 {
                return EXIT_OK;
            }
        }
    })?;
    let stopper = shared.clone();
    let mut head = 0u64;
    let mut slip = 0u32;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let r = shared.get();
        // In a local for the call, as in `ring8_stream`.
        let mut h = head;
        // Up to 16 Ki messages per call.
        let mut mismatch = 0u64;
        for _ in 0..1u64 << 14 {
            let slot = &r.slots[(h & mask) as usize];
            if slot.seq.load(Ordering::Acquire) != h + 1 {
                for _ in 0..slip {
                    std::hint::spin_loop();
                }
                if !wait_for_seq(stall, &slot.seq, h + 1) {
                    return Err("raw-ring-seq: the producer stalled".to_string());
                }
                slip = (slip * 2 + 1).min(64);
            }
            // The line 16 messages on (written by now in a stream).
            prefetch(&r.slots[((h + 16) & mask) as usize]);
            mismatch |= slot.val.load(Ordering::Relaxed) ^ h;
            h += 1;
            r.head.0.store(h, Ordering::Release);
        }
        head = h;
        if mismatch != 0 {
            return Err("raw-ring-seq: a message arrived out of order or corrupted".into());
        }
        Ok(head)
    })))
    .child(child)
    .on_finish(move || stopper.get().stop.0.store(1, Ordering::Relaxed))
    .placement(cfg.pair_placement()))
}

/// Starts loading the line of `p` (a hint: it never faults).
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and never faults; `p`
    // is a reference, so its address is mapped anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const T as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

// ---------------------------------------------------------------- raw-ring, 64 KiB chunks

/// Chunks in the bulk ring: 1 MiB of data, as much as the shmproc Pipe's ring.
const BULK_SLOTS: u64 = 16;

/// A single-producer single-consumer ring of 64 KiB chunks.
///
/// | offset | field     | written by | meaning                                    |
/// |-------:|-----------|------------|--------------------------------------------|
/// | 0      | `tail`    | producer   | chunks published                           |
/// | 128    | `head`    | consumer   | chunks consumed                            |
/// | 256    | `stop`    | consumer   | non-zero: the producer should exit         |
/// | 4096   | data      | producer   | 16 chunks of 64 KiB, chunk `n` in `n % 16` |
///
/// The producer copies a private 64 KiB buffer in (its first 8 bytes hold the
/// chunk number) and publishes `tail`; the consumer copies the chunk out to a
/// private buffer, checks the number and publishes `head`.
#[repr(C, align(4096))]
struct RingBulk {
    tail: Line<AtomicU64>,
    head: Line<AtomicU64>,
    stop: Line<AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<RingBulk>() == 4096);
const _: () = assert!(BULK_SLOTS as usize * CHUNK >= 1 << 20);

/// The bulk ring's control page in `shared` and the address of its data area.
fn bulk_ring(shared: &Shared<[u8; 0]>) -> (&RingBulk, usize) {
    let base = shared.tail_ptr().as_ptr();
    let skip = base.align_offset(4096);
    // SAFETY: `skip < 4096` and the payload has 4096 spare bytes for it.
    let ring_ptr = unsafe { base.add(skip) };
    // SAFETY: `ring_ptr` is page aligned, within the zero-filled payload with
    // size_of::<RingBulk>() bytes after it; RingBulk is atomics only.
    let r = unsafe { &*(ring_ptr as *const RingBulk) };
    // SAFETY: the data area follows the control page, inside the payload.
    let data = unsafe { ring_ptr.add(std::mem::size_of::<RingBulk>()) } as usize;
    (r, data)
}

fn ring_bulk_stream(cfg: &Config) -> Result<Session, String> {
    // The payload starts 128 bytes into a page; ask for a page more and align by hand.
    let shared = Shared::<[u8; 0]>::new(4096 + std::mem::size_of::<RingBulk>() + BULK_SLOTS as usize * CHUNK)?;
    let (_, data) = bulk_ring(&shared);
    // The mapping is at the same address in the forked child, so `data` is too.
    let chunk_at = move |n: u64| (data + (n % BULK_SLOTS) as usize * CHUNK) as *mut u8;
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = fork(cfg, move || {
        let (r, _) = bulk_ring(&theirs);
        let mut src = vec![0xa5u8; CHUNK];
        let mut tail = 0u64;
        loop {
            let mut stopped = false;
            let waited = spin_until(stall, || {
                stopped = r.stop.0.load(Ordering::Relaxed) != 0;
                tail - r.head.0.load(Ordering::Acquire) < BULK_SLOTS || stopped
            });
            if stopped {
                return EXIT_OK;
            }
            if waited.is_err() {
                return EXIT_STALLED;
            }
            src[..8].copy_from_slice(&tail.to_le_bytes());
            // SAFETY: chunk `tail % 16` lies in the data area; the consumer has
            // released it (head > tail - 16, acquired above) and does not touch it
            // again until we publish `tail + 1` below.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), chunk_at(tail), CHUNK) };
            tail += 1;
            r.tail.0.store(tail, Ordering::Release);
        }
    })?;
    let stopper = shared.clone();
    let mut dst = vec![0u8; CHUNK];
    let mut head = 0u64;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let (r, _) = bulk_ring(&shared);
        if spin_until(stall, || r.tail.0.load(Ordering::Acquire) != head).is_err() {
            return Err("raw-ring: the producer stalled".to_string());
        }
        // SAFETY: chunk `head % 16` was published by the producer (tail > head,
        // acquired above) and is not rewritten until we publish `head + 1`.
        unsafe { std::ptr::copy_nonoverlapping(chunk_at(head), dst.as_mut_ptr(), CHUNK) };
        // The whole chunk must really be copied out, as a receiver would: keep
        // the optimiser from shrinking the copy to the 8 bytes checked below.
        std::hint::black_box(&mut dst);
        let n = u64::from_le_bytes(dst[..8].try_into().expect("8 bytes"));
        if n != head {
            return Err(format!("raw-ring: chunk {n} arrived where {head} was expected"));
        }
        head += 1;
        r.head.0.store(head, Ordering::Release);
        Ok(head * CHUNK as u64)
    })))
    .child(child)
    .on_finish(move || bulk_ring(&stopper).0.stop.0.store(1, Ordering::Relaxed))
    .placement(cfg.pair_placement()))
}

// ---------------------------------------------------------------- raw-mpmc

/// Slots of the bare MPMC ring.
const MPMC_SLOTS: usize = 1024;

/// One slot of Vyukov's bounded MPMC queue: its sequence number and value.
#[repr(C)]
struct MpmcSlot {
    seq: AtomicU64,
    val: AtomicU64,
}

/// Dmitry Vyukov's bounded MPMC queue, bare: producers claim a position with
/// a CAS on `tail` and publish the slot through its sequence number; the one
/// consumer (the parent) reads slots in order.
///
/// | offset | field   | meaning                                         |
/// |-------:|---------|-------------------------------------------------|
/// | 0      | `tail`  | next position to claim (producers, CAS)         |
/// | 128    | `stop`  | non-zero: producers exit                        |
/// | 256    | `slots` | 1024 slots; slot `p % 1024` is free for position `p` when `seq == p`, full when `seq == p + 1` |
#[repr(C)]
struct Mpmc {
    tail: Line<AtomicU64>,
    stop: Line<AtomicU32>,
    slots: [MpmcSlot; MPMC_SLOTS],
}

/// How many producers `stream-mpmc` runs: one fewer than the CPUs (the parent
/// consumes on the last), at least one, so spinning processes never outnumber
/// the CPUs.
pub fn mpmc_producers(cfg: &Config) -> usize {
    cfg.cpus.len().saturating_sub(1).max(1)
}

/// The CPU of `stream-mpmc`'s producer `k`: the CPUs after the consumer's, in turn.
pub fn mpmc_producer_cpu(cfg: &Config, k: usize) -> Option<usize> {
    cfg.parent_cpu?;
    let n = cfg.cpus.len();
    (n > 1).then(|| cfg.cpus[1 + k % (n - 1)])
}

/// Where `stream-mpmc`'s processes run.
pub fn mpmc_placement(cfg: &Config) -> String {
    let p = mpmc_producers(cfg);
    match cfg.parent_cpu {
        Some(c) => {
            let cpus: Vec<String> = (0..p).filter_map(|k| mpmc_producer_cpu(cfg, k)).map(|c| c.to_string()).collect();
            format!("consumer CPU {c}, {p} producer(s) on CPU {}", cpus.join(","))
        }
        None => format!("consumer and {p} producer(s) unpinned"),
    }
}

fn mpmc_stream(cfg: &Config) -> Result<Session, String> {
    let shared = Shared::<Mpmc>::new(0)?;
    for (i, s) in shared.get().slots.iter().enumerate() {
        s.seq.store(i as u64, Ordering::Relaxed);
    }
    let stall = cfg.stall_limit();
    let mask = MPMC_SLOTS as u64 - 1;
    let mut kids = Vec::new();
    for k in 0..mpmc_producers(cfg) {
        let theirs = shared.clone();
        kids.push(
            os::fork_child(mpmc_producer_cpu(cfg, k), move || {
                let q = theirs.get();
                let mut n = 0u64;
                loop {
                    let mut pos = q.tail.0.load(Ordering::Relaxed);
                    loop {
                        let slot = &q.slots[(pos & mask) as usize];
                        let seq = slot.seq.load(Ordering::Acquire);
                        if seq == pos {
                            match q.tail.0.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                                Ok(_) => {
                                    slot.val.store(n, Ordering::Relaxed);
                                    slot.seq.store(pos + 1, Ordering::Release);
                                    break;
                                }
                                Err(p) => pos = p,
                            }
                        } else if seq < pos {
                            // Full: wait for the consumer to free the slot (or the stop).
                            let mut stopped = false;
                            let waited = spin_until(stall, || {
                                stopped = q.stop.0.load(Ordering::Relaxed) != 0;
                                stopped || slot.seq.load(Ordering::Acquire) >= pos
                            });
                            if stopped {
                                return EXIT_OK;
                            }
                            if waited.is_err() {
                                return EXIT_STALLED;
                            }
                            pos = q.tail.0.load(Ordering::Relaxed);
                        } else {
                            pos = q.tail.0.load(Ordering::Relaxed);
                        }
                    }
                    n += 1;
                    if n.is_multiple_of(1024) && q.stop.0.load(Ordering::Relaxed) != 0 {
                        return EXIT_OK;
                    }
                }
            })
            .map_err(|e| format!("fork: {e}"))?,
        );
    }
    let stopper = shared.clone();
    let mut head = 0u64;
    let mut s = Session::new(Work::Stream(Box::new(move || {
        let q = shared.get();
        for _ in 0..4096 {
            let slot = &q.slots[(head & mask) as usize];
            if spin_until(stall, || slot.seq.load(Ordering::Acquire) == head + 1).is_err() {
                return Err("raw-mpmc: the producers stalled".to_string());
            }
            std::hint::black_box(slot.val.load(Ordering::Relaxed));
            slot.seq.store(head + MPMC_SLOTS as u64, Ordering::Release);
            head += 1;
        }
        Ok(head)
    })))
    .on_finish(move || stopper.get().stop.0.store(1, Ordering::Relaxed))
    .placement(mpmc_placement(cfg));
    for k in kids {
        s = s.child(k);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waiting child that the bench stops for longer than its limit (as the
    /// drift probe's child is stopped for a whole case) still waits for its
    /// peer once continued, for a spinning and for a sleeping wait.
    #[test]
    fn a_stopped_waiter_does_not_count_the_stop() {
        for spinning in [true, false] {
            let shared = Shared::<FutexWords>::new(0).expect("segment");
            let theirs = shared.clone();
            let limit = Duration::from_millis(1500);
            let mut child = os::fork_child(None, move || {
                let w = &theirs.get().ping.0;
                let r = if spinning {
                    spin_until(limit, || w.load(Ordering::Acquire) != 0)
                } else {
                    futex_until_changed(w, 0, limit).map(|_| ())
                };
                if r.is_ok() {
                    0
                } else {
                    EXIT_STALLED
                }
            })
            .expect("fork");
            // Let it start waiting, stop it past its limit, continue it, answer.
            std::thread::sleep(Duration::from_millis(200));
            child.signal_stop();
            std::thread::sleep(Duration::from_millis(2500));
            child.signal_cont();
            std::thread::sleep(Duration::from_millis(100));
            shared.get().ping.0.store(1, Ordering::Release);
            os::futex_wake(&shared.get().ping.0);
            assert_eq!(child.wait_timeout(Duration::from_secs(10)), Ok(0), "spinning: {spinning}");
        }
    }
}
