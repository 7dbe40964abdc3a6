//! Baselines: what two processes on this machine get with no library at all.
//!
//! Every later shmproc transport is reported as a ratio to these, measured in
//! the same run:
//!
//! | transport     | scenarios                         | how                                                   |
//! |---------------|-----------------------------------|-------------------------------------------------------|
//! | `raw-spin`    | `pingpong-8B`                     | two `AtomicU64`s on separate lines, both sides spin   |
//! | `raw-futex`   | `pingpong-8B`                     | two `AtomicU32` futex words, shared wait/wake         |
//! | `raw-ring`    | `stream-8B`, `stream-64KiB`       | a tuned SPSC ring (see [`Ring8`] and [`RingBulk`])     |
//! | `os-pipe`     | all three                         | `pipe(2)`: 8-byte round trips, 8-byte or 64 KiB writes |
//! | `unix-socket` | all three                         | `socketpair(AF_UNIX, SOCK_STREAM)`, same as the pipe   |
//!
//! Ping-pong samples are per round trip and include one clock read each
//! (about 17 ns on this machine's TSC clock), as do the samples of every other
//! ping-pong case, so ratios compare like with like.
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

use shmproc::Segment;

use super::os::{self, Child};
use super::{Case, Config, Metric, Outcome, Samples, Windows};

/// Round trip of one 8-byte message and its 8-byte reply.
pub const PINGPONG_8B: &str = "pingpong-8B";
/// One-way stream of 8-byte messages.
pub const STREAM_8B: &str = "stream-8B";
/// One-way stream of 64 KiB messages.
pub const STREAM_64KIB: &str = "stream-64KiB";

/// The baseline cases, in print order.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: PINGPONG_8B, transport: "raw-spin", run: spin_pingpong },
        Case { scenario: PINGPONG_8B, transport: "raw-futex", run: futex_pingpong },
        Case { scenario: PINGPONG_8B, transport: "os-pipe", run: pipe_pingpong },
        Case { scenario: PINGPONG_8B, transport: "unix-socket", run: socket_pingpong },
        Case { scenario: STREAM_8B, transport: "raw-ring", run: ring8_stream },
        Case { scenario: STREAM_8B, transport: "os-pipe", run: |cfg| pipe_stream(cfg, 8) },
        Case { scenario: STREAM_8B, transport: "unix-socket", run: |cfg| socket_stream(cfg, 8) },
        Case { scenario: STREAM_64KIB, transport: "raw-ring", run: ring_bulk_stream },
        Case { scenario: STREAM_64KIB, transport: "os-pipe", run: |cfg| pipe_stream(cfg, CHUNK) },
        Case { scenario: STREAM_64KIB, transport: "unix-socket", run: |cfg| socket_stream(cfg, CHUNK) },
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
        if p % std::mem::align_of::<T>() != 0 || seg.payload_len() < size {
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

/// Spins until `done()` holds; Err after `limit` without it. The clock is read
/// once every 4096 spins, so the check costs nothing measurable.
#[inline(always)]
fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let mut spins: u32 = 0;
    let mut since: Option<Instant> = None;
    while !done() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 {
            let now = Instant::now();
            match since {
                None => since = Some(now),
                Some(t) if now.duration_since(t) > limit => return Err(()),
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Waits for the child after the parent's side is done; a non-zero exit is an
/// error. Cases reap the child first and then report their own error before
/// this one: the parent's error says more than the child's exit code.
fn finish_child(mut child: Child, fired: bool, what: &str) -> Result<(), String> {
    let code = child.wait_timeout(Duration::from_secs(5))?;
    if fired {
        return Err(format!("{what}: the child made no progress within the case limit and was killed"));
    }
    match code {
        EXIT_OK => Ok(()),
        EXIT_STALLED => Err(format!("{what}: the child saw no progress from the parent")),
        c => Err(format!("{what}: the child failed with exit code {c}")),
    }
}

// ---------------------------------------------------------------- raw-spin

#[repr(C)]
struct SpinWords {
    ping: Line<AtomicU64>,
    pong: Line<AtomicU64>,
}

const STOP: u64 = u64::MAX;

fn spin_pingpong(cfg: &Config) -> Result<Outcome, String> {
    let shared = Shared::<SpinWords>::new(0)?;
    let w = shared.get();
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
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
            w.pong.0.store(seen, Ordering::Release);
        }
    })
    .map_err(|e| format!("fork: {e}"))?;
    let mut samples = Samples::start(cfg);
    let mut i = 0u64;
    let result = loop {
        i += 1;
        w.ping.0.store(i, Ordering::Release);
        if spin_until(stall, || w.pong.0.load(Ordering::Acquire) == i).is_err() {
            break Err("raw-spin: no reply from the child".to_string());
        }
        if !samples.tick() {
            break Ok(());
        }
    };
    w.ping.0.store(STOP, Ordering::Release);
    let waited = finish_child(child, false, "raw-spin");
    result?;
    waited?;
    samples.finish(Metric::RttNs)
}

// ---------------------------------------------------------------- raw-futex

#[repr(C)]
struct FutexWords {
    ping: Line<AtomicU32>,
    pong: Line<AtomicU32>,
}

const FUTEX_STOP: u32 = u32::MAX;

/// Sleeps on `word` until it differs from `old`; Err after `limit`.
fn futex_until_changed(word: &AtomicU32, old: u32, limit: Duration) -> Result<u32, ()> {
    let deadline = Instant::now() + limit;
    loop {
        let v = word.load(Ordering::Acquire);
        if v != old {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(());
        }
        os::futex_wait(word, old, deadline - now);
    }
}

/// Also the same-run baseline of `event-pingpong` (registered in `sync.rs`).
pub(super) fn futex_pingpong(cfg: &Config) -> Result<Outcome, String> {
    let shared = Shared::<FutexWords>::new(0)?;
    let w = shared.get();
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
        let w = theirs.get();
        let mut seen = 0u32;
        loop {
            match futex_until_changed(&w.ping.0, seen, stall) {
                Err(()) => return EXIT_STALLED,
                Ok(FUTEX_STOP) => return EXIT_OK,
                Ok(v) => seen = v,
            }
            w.pong.0.store(seen, Ordering::Release);
            os::futex_wake(&w.pong.0);
        }
    })
    .map_err(|e| format!("fork: {e}"))?;
    let mut samples = Samples::start(cfg);
    let mut i = 0u32;
    let result = loop {
        i += 1;
        w.ping.0.store(i, Ordering::Release);
        os::futex_wake(&w.ping.0);
        match futex_until_changed(&w.pong.0, i - 1, stall) {
            Ok(v) if v == i => {}
            Ok(v) => break Err(format!("raw-futex: reply {v}, expected {i}")),
            Err(()) => break Err("raw-futex: no reply from the child".to_string()),
        }
        if !samples.tick() {
            break Ok(());
        }
    };
    w.ping.0.store(FUTEX_STOP, Ordering::Release);
    os::futex_wake(&w.ping.0);
    let waited = finish_child(child, false, "raw-futex");
    result?;
    waited?;
    samples.finish(Metric::RttNs)
}

// ---------------------------------------------------------------- os-pipe / unix-socket ping-pong

/// Ping-pong of 8-byte messages over a byte stream. `child_ends` are moved into
/// the child (and so closed in the parent when the closure is dropped there);
/// `close_in_child` are the raw fds of the parent's ends, which the child closes
/// so that EOF reaches each side when the other exits.
fn stream_pingpong<R: Read, W: Write, CR: Read + 'static, CW: Write + 'static>(
    cfg: &Config,
    what: &str,
    mut rx: R,
    mut tx: W,
    child_ends: (CR, CW),
    close_in_child: Vec<i32>,
) -> Result<Outcome, String> {
    let child = os::fork_child(cfg.child_cpu, move || {
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
    })
    .map_err(|e| format!("fork: {e}"))?;
    let ((result, samples), fired) = os::watched(&child, cfg.case_limit(), || {
        let mut samples = Samples::start(cfg);
        let mut i = 0u64;
        let mut buf = [0u8; 8];
        let result = loop {
            i += 1;
            if let Err(e) = tx.write_all(&i.to_le_bytes()) {
                break Err(format!("{what}: write: {e}"));
            }
            if let Err(e) = rx.read_exact(&mut buf) {
                break Err(format!("{what}: read: {e}"));
            }
            if u64::from_le_bytes(buf) != i {
                break Err(format!("{what}: reply {} to message {i}", u64::from_le_bytes(buf)));
            }
            if !samples.tick() {
                break Ok(());
            }
        };
        drop(tx); // EOF for the child
        drop(rx);
        (result, samples)
    });
    let waited = finish_child(child, fired, what);
    result?;
    waited?;
    samples.finish(Metric::RttNs)
}

fn pipe_pingpong(cfg: &Config) -> Result<Outcome, String> {
    let (p2c_r, p2c_w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (c2p_r, c2p_w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let close = vec![p2c_w.as_raw_fd(), c2p_r.as_raw_fd()];
    stream_pingpong(cfg, "os-pipe", c2p_r, p2c_w, (p2c_r, c2p_w), close)
}

fn socket_pingpong(cfg: &Config) -> Result<Outcome, String> {
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let a2 = a.try_clone().map_err(|e| format!("dup: {e}"))?;
    let b2 = b.try_clone().map_err(|e| format!("dup: {e}"))?;
    let close = vec![a.as_raw_fd(), a2.as_raw_fd()];
    stream_pingpong(cfg, "unix-socket", a, a2, (b, b2), close)
}

// ---------------------------------------------------------------- os-pipe / unix-socket streams

/// The child writes `msg`-byte messages until the parent raises `stop`; the
/// parent reads in 64 KiB gulps and counts. Rates are messages/s for 8-byte
/// messages and bytes/s otherwise.
fn stream_oneway<R: Read, CW: Write + 'static>(
    cfg: &Config,
    what: &str,
    mut rx: R,
    child_tx: CW,
    close_in_child: Vec<i32>,
    msg: usize,
) -> Result<Outcome, String> {
    let shared = Shared::<Line<AtomicU32>>::new(0)?;
    let stop = &shared.get().0;
    let theirs = shared.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
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
                return EXIT_IO;
            }
            n += 1;
            if n % check_every == 0 && stop.load(Ordering::Relaxed) != 0 {
                return EXIT_OK;
            }
        }
    })
    .map_err(|e| format!("fork: {e}"))?;
    let ((result, windows), fired) = os::watched(&child, cfg.case_limit(), || {
        let mut windows = Windows::start(cfg);
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        let unit = if msg == 8 { 8 } else { 1 };
        let result = loop {
            match rx.read(&mut buf) {
                Ok(0) => break Err(format!("{what}: the child closed the stream early")),
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("{what}: read: {e}")),
            }
            if !windows.observe(bytes / unit) {
                break Ok(());
            }
        };
        stop.store(1, Ordering::Relaxed);
        // Drain until the child exits and its end closes.
        if result.is_ok() {
            while let Ok(n) = rx.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
        drop(rx);
        (result, windows)
    });
    let waited = finish_child(child, fired, what);
    result?;
    waited?;
    windows.finish(if msg == 8 { Metric::MsgsPerS } else { Metric::BytesPerS })
}

fn pipe_stream(cfg: &Config, msg: usize) -> Result<Outcome, String> {
    let (r, w) = os::pipe().map_err(|e| format!("pipe: {e}"))?;
    let close = vec![r.as_raw_fd()];
    stream_oneway(cfg, "os-pipe", r, w, close, msg)
}

fn socket_stream(cfg: &Config, msg: usize) -> Result<Outcome, String> {
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

const _: () = assert!(RING8_SLOTS.is_power_of_two() && RING8_SLOTS as u64 % BATCH == 0);
const _: () = assert!(std::mem::offset_of!(Ring8, slots) == 384);

fn ring8_stream(cfg: &Config) -> Result<Outcome, String> {
    let shared = Shared::<Ring8>::new(0)?;
    let r = shared.get();
    let stall = cfg.stall_limit();
    let mask = RING8_SLOTS as u64 - 1;
    let theirs = shared.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
        let r = theirs.get();
        let mut tail = 0u64;
        let mut cached_head = 0u64;
        loop {
            if tail - cached_head == RING8_SLOTS as u64 {
                let mut stopped = false;
                let waited = spin_until(stall, || {
                    cached_head = r.head.0.load(Ordering::Acquire);
                    stopped = r.stop.0.load(Ordering::Relaxed) != 0;
                    tail - cached_head < RING8_SLOTS as u64 || stopped
                });
                if stopped {
                    return EXIT_OK;
                }
                if waited.is_err() {
                    return EXIT_STALLED;
                }
            }
            r.slots[(tail & mask) as usize].store(tail, Ordering::Relaxed);
            tail += 1;
            if tail % BATCH == 0 {
                r.tail.0.store(tail, Ordering::Release);
                if tail % (BATCH * 1024) == 0 && r.stop.0.load(Ordering::Relaxed) != 0 {
                    return EXIT_OK;
                }
            }
        }
    })
    .map_err(|e| format!("fork: {e}"))?;
    let mut windows = Windows::start(cfg);
    let mut head = 0u64;
    let mut cached_tail = 0u64;
    let mut mismatch = 0u64;
    let result = loop {
        if head == cached_tail
            && spin_until(stall, || {
                cached_tail = r.tail.0.load(Ordering::Acquire);
                cached_tail != head
            })
            .is_err()
        {
            break Err("raw-ring: the producer stalled".to_string());
        }
        let v = r.slots[(head & mask) as usize].load(Ordering::Relaxed);
        mismatch |= v ^ head;
        head += 1;
        if head % BATCH == 0 {
            r.head.0.store(head, Ordering::Release);
            if head % (1 << 16) == 0 && !windows.observe(head) {
                break Ok(());
            }
        }
    };
    r.stop.0.store(1, Ordering::Relaxed);
    let waited = finish_child(child, false, "raw-ring");
    result?;
    waited?;
    if mismatch != 0 {
        return Err("raw-ring: a message arrived out of order or corrupted".into());
    }
    windows.finish(Metric::MsgsPerS)
}

// ---------------------------------------------------------------- raw-ring, 64 KiB chunks

/// Chunks in the bulk ring (512 KiB of data).
const BULK_SLOTS: u64 = 8;

/// A single-producer single-consumer ring of 64 KiB chunks.
///
/// | offset | field     | written by | meaning                                    |
/// |-------:|-----------|------------|--------------------------------------------|
/// | 0      | `tail`    | producer   | chunks published                           |
/// | 128    | `head`    | consumer   | chunks consumed                            |
/// | 256    | `stop`    | consumer   | non-zero: the producer should exit         |
/// | 4096   | data      | producer   | 8 chunks of 64 KiB, chunk `n` in `n % 8`   |
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

fn ring_bulk_stream(cfg: &Config) -> Result<Outcome, String> {
    // The payload starts 128 bytes into a page; ask for a page more and align by hand.
    let shared = Shared::<[u8; 0]>::new(4096 + std::mem::size_of::<RingBulk>() + BULK_SLOTS as usize * CHUNK)?;
    let (r, data) = bulk_ring(&shared);
    // The mapping is at the same address in the forked child, so `data` is too.
    let chunk_at = move |n: u64| (data + (n % BULK_SLOTS) as usize * CHUNK) as *mut u8;
    let stall = cfg.stall_limit();
    let theirs = shared.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
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
            // SAFETY: chunk `tail % 8` lies in the data area; the consumer has
            // released it (head > tail - 8, acquired above) and does not touch it
            // again until we publish `tail + 1` below.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), chunk_at(tail), CHUNK) };
            tail += 1;
            r.tail.0.store(tail, Ordering::Release);
        }
    })
    .map_err(|e| format!("fork: {e}"))?;
    let mut windows = Windows::start(cfg);
    let mut dst = vec![0u8; CHUNK];
    let mut head = 0u64;
    let result = loop {
        if spin_until(stall, || r.tail.0.load(Ordering::Acquire) != head).is_err() {
            break Err("raw-ring: the producer stalled".to_string());
        }
        // SAFETY: chunk `head % 8` was published by the producer (tail > head,
        // acquired above) and is not rewritten until we publish `head + 1`.
        unsafe { std::ptr::copy_nonoverlapping(chunk_at(head), dst.as_mut_ptr(), CHUNK) };
        // The whole chunk must really be copied out, as a receiver would: keep
        // the optimiser from shrinking the copy to the 8 bytes checked below.
        std::hint::black_box(&mut dst);
        let n = u64::from_le_bytes(dst[..8].try_into().expect("8 bytes"));
        if n != head {
            break Err(format!("raw-ring: chunk {n} arrived where {head} was expected"));
        }
        head += 1;
        r.head.0.store(head, Ordering::Release);
        if !windows.observe(head * CHUNK as u64) {
            break Ok(());
        }
    };
    r.stop.0.store(1, Ordering::Relaxed);
    let waited = finish_child(child, false, "raw-ring");
    result?;
    waited?;
    windows.finish(Metric::BytesPerS)
}
