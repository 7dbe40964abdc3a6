//! What a per-message SPSC ring can reach on this machine against one that
//! publishes once per 64 messages, by how it publishes: an index, or a
//! sequence word in each slot, and whether one more store per message (an
//! endpoint's own position, kept in memory between calls) costs anything.
//! The experiment behind the "Where this design stops" notes in
//! `src/queue/ring.rs` and the README's per-message stream figures.
//!
//! Two threads, pinned to CPUs 0 and 1 when the process may use them, stream
//! `u64`s through bare rings of 4096 slots (no shmproc code at all):
//! * `batched` (the baseline, the bench's `raw-ring`): 8-byte slots, each
//!   side publishes its index once per 64 messages;
//! * `index`: the same ring, both indices published after every message
//!   (what a per-message `send`/`recv` must do when the consumer polls the
//!   producer's index); the consumer slips behind the producer when it keeps
//!   finding a backlog (FastForward), as the queue's receivers do;
//! * `seq`: 16-byte slots holding the message and its sequence number,
//!   which is what the consumer polls (FastForward): the producer stores to
//!   the slot's line only, and the consumer publishes its index per message;
//! * `index+private`, `seq+private`: `index` or `seq`, plus one store per
//!   message by the producer to a line only it uses: what an endpoint that
//!   keeps its position in memory between calls (`SpscLocal`) stores;
//! * `seq+private/4`: that store once per slot line (4 messages), as an
//!   endpoint could that found its place within the line from the slots'
//!   sequence words.
//!
//! Each variant runs in alternating 60 ms blocks with `batched` (7 pairs)
//! and prints the median of the pairwise rate ratios with their min-max.
//! Run it with `cargo run --release --example store_pace`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots per ring.
const SLOTS: u64 = 4096;
/// `batched` publishes its indices once per this many messages.
const BATCH: u64 = 64;
/// A side that finds the ring full waits for this many free slots (B-Queue).
const ROOM: u64 = 64;

/// An index on a line of its own.
#[repr(C, align(128))]
#[derive(Default)]
struct Index(AtomicU64);

/// Eight 8-byte slots: one cache line of the index rings.
#[repr(C, align(64))]
#[derive(Default)]
struct Words([AtomicU64; 8]);

/// Four 16-byte slots, (sequence, message): one cache line of the `seq` ring.
#[repr(C, align(64))]
#[derive(Default)]
struct Pairs([[AtomicU64; 2]; 4]);

/// The memory of every variant (each run uses its own).
struct Ring {
    tail: Index,
    head: Index,
    words: Box<[Words; (SLOTS / 8) as usize]>,
    pairs: Box<[Pairs; (SLOTS / 4) as usize]>,
    stop: AtomicBool,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            tail: Index::default(),
            head: Index::default(),
            words: boxed_array(),
            pairs: boxed_array(),
            stop: AtomicBool::new(false),
        }
    }

    #[inline(always)]
    fn word(&self, n: u64) -> &AtomicU64 {
        let i = (n % SLOTS) as usize;
        &self.words[i / 8].0[i % 8]
    }

    #[inline(always)]
    fn pair(&self, n: u64) -> &[AtomicU64; 2] {
        let i = (n % SLOTS) as usize;
        &self.pairs[i / 4].0[i % 4]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Batched,
    Index,
    IndexPrivate,
    Seq,
    SeqPrivate,
    SeqPrivateQuarter,
}

impl Variant {
    const fn from(v: u8) -> Variant {
        match v {
            0 => Variant::Batched,
            1 => Variant::Index,
            2 => Variant::IndexPrivate,
            3 => Variant::Seq,
            4 => Variant::SeqPrivate,
            _ => Variant::SeqPrivateQuarter,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Batched => "batched",
            Variant::Index => "index",
            Variant::IndexPrivate => "index+private",
            Variant::Seq => "seq",
            Variant::SeqPrivate => "seq+private",
            Variant::SeqPrivateQuarter => "seq+private/4",
        }
    }
}

/// `N` default values on the heap (too large for the stack).
fn boxed_array<T: Default, const N: usize>() -> Box<[T; N]> {
    let v: Vec<T> = (0..N).map(|_| T::default()).collect();
    v.into_boxed_slice().try_into().unwrap_or_else(|_| unreachable!("N elements"))
}

fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    // Best effort: unpinned figures are still paired.
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// The producer: sends 0, 1, 2, ... until the consumer raises `stop`.
fn produce<const V: u8>(r: &Ring) {
    let v = Variant::from(V);
    // The endpoint's own position, kept in memory between "calls": a line
    // only this thread touches.
    let private = Box::new(Index::default());
    // Its address escapes, so the compiler must keep every store to it (an
    // allocation nobody reads would have them removed, as it was at first).
    std::hint::black_box(&*private);
    let (mut tail, mut cached_head) = (0u64, 0u64);
    loop {
        if tail - cached_head == SLOTS {
            let want = if v == Variant::Batched { 1 } else { ROOM };
            loop {
                cached_head = r.head.0.load(Ordering::Acquire);
                if SLOTS - (tail - cached_head) >= want {
                    break;
                }
                if r.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::hint::spin_loop();
            }
        }
        match v {
            Variant::Batched | Variant::Index | Variant::IndexPrivate => {
                r.word(tail).store(tail, Ordering::Relaxed);
                tail += 1;
                if v == Variant::IndexPrivate {
                    private.0.store(tail, Ordering::Relaxed);
                }
                if v != Variant::Batched || tail % BATCH == 0 {
                    r.tail.0.store(tail, Ordering::Release);
                }
            }
            _ => {
                let slot = r.pair(tail);
                slot[1].store(tail, Ordering::Relaxed);
                tail += 1;
                if v == Variant::SeqPrivate || (v == Variant::SeqPrivateQuarter && tail % 4 == 0) {
                    private.0.store(tail, Ordering::Relaxed);
                }
                slot[0].store(tail, Ordering::Release);
            }
        }
        if tail % (1 << 16) == 0 && r.stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// The consumer: receives for `dur`, checks every message, raises `stop`
/// and returns messages per second.
fn consume<const V: u8>(r: &Ring, dur: Duration) -> f64 {
    let v = Variant::from(V);
    let start = Instant::now();
    let give_up = dur * 20;
    let (mut head, mut cached_tail, mut slip, mut bad) = (0u64, 0u64, 0u32, 0u64);
    while start.elapsed() < dur {
        for _ in 0..4096 {
            if matches!(v, Variant::Batched | Variant::Index | Variant::IndexPrivate) {
                if head == cached_tail {
                    cached_tail = r.tail.0.load(Ordering::Acquire);
                    if cached_tail == head {
                        for _ in 0..slip {
                            std::hint::spin_loop();
                        }
                        while cached_tail == head {
                            assert!(start.elapsed() < give_up, "the producer stalled");
                            cached_tail = r.tail.0.load(Ordering::Acquire);
                        }
                        slip = if cached_tail - head >= 2 { (slip * 2 + 1).min(64) } else { 0 };
                    }
                }
                bad |= r.word(head).load(Ordering::Relaxed) ^ head;
                head += 1;
                if v != Variant::Batched || head % BATCH == 0 {
                    r.head.0.store(head, Ordering::Release);
                }
            } else {
                let slot = r.pair(head);
                if slot[0].load(Ordering::Acquire) != head + 1 {
                    for _ in 0..slip {
                        std::hint::spin_loop();
                    }
                    while slot[0].load(Ordering::Acquire) != head + 1 {
                        assert!(start.elapsed() < give_up, "the producer stalled");
                    }
                    slip = (slip * 2 + 1).min(64);
                }
                bad |= slot[1].load(Ordering::Relaxed) ^ head;
                head += 1;
                r.head.0.store(head, Ordering::Release);
            }
        }
    }
    let rate = head as f64 / start.elapsed().as_secs_f64();
    r.stop.store(true, Ordering::Relaxed);
    assert_eq!(bad, 0, "a message arrived out of order");
    rate
}

/// One block: a fresh ring, the producer on CPU 1, the consumer here on CPU 0.
fn block(v: Variant, dur: Duration) -> f64 {
    match v {
        Variant::Batched => block_of::<0>(dur),
        Variant::Index => block_of::<1>(dur),
        Variant::IndexPrivate => block_of::<2>(dur),
        Variant::Seq => block_of::<3>(dur),
        Variant::SeqPrivate => block_of::<4>(dur),
        Variant::SeqPrivateQuarter => block_of::<5>(dur),
    }
}

fn block_of<const V: u8>(dur: Duration) -> f64 {
    let ring = Arc::new(Ring::new());
    let theirs = ring.clone();
    let producer = std::thread::spawn(move || {
        pin(1);
        produce::<V>(&theirs);
    });
    pin(0);
    let rate = consume::<V>(&ring, dur);
    producer.join().expect("producer thread");
    rate
}

fn median_and_range(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("store_pace on {cpu}: consumer on CPU 0, producer on CPU 1; 7 pairs of 60 ms blocks per row");
    let dur = Duration::from_millis(60);
    let mut floors = Vec::new();
    let variants =
        [Variant::Index, Variant::IndexPrivate, Variant::Seq, Variant::SeqPrivate, Variant::SeqPrivateQuarter];
    let mut ratios = vec![Vec::new(); variants.len()];
    for _ in 0..7 {
        for (i, &v) in variants.iter().enumerate() {
            let floor = block(Variant::Batched, dur);
            floors.push(floor);
            ratios[i].push(block(v, dur) / floor);
        }
    }
    let (m, lo, hi) = median_and_range(floors);
    println!("{:14} {:7.0} M msg/s [{:.0}-{:.0}] (baseline)", Variant::Batched.name(), m / 1e6, lo / 1e6, hi / 1e6);
    for (v, r) in variants.iter().zip(ratios) {
        let (m, lo, hi) = median_and_range(r);
        println!("{:14} {m:7.3}x batched [{lo:.3}-{hi:.3}]", v.name());
    }
}
