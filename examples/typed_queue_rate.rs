//! One-way rate of a typed serde queue of small structs between two
//! processes, against the raw `Queue<u64>` (Pod) per-message stream measured
//! in alternating blocks in the same run (issue 10 item 3).
//!
//! ```sh
//! cargo run --release --example typed_queue_rate [messages per block] [rounds]
//! ```
//!
//! A forked child (`shmproc::Process`) receives every block and acknowledges
//! its end on a small queue; the parent times each block from its first send
//! to the acknowledgement. Each round runs one typed and one raw block (the
//! order alternates); the ratio is taken per round, and the median and the
//! spread (min..max) are printed.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmproc::{Process, Receiver, Sender, TypedReceiver, TypedSender};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
struct Small {
    id: u64,
    x: f64,
    tag: u32,
}

/// Which block comes first in `round`.
fn typed_first(round: usize) -> bool {
    round % 2 == 0
}

fn consume(typed: TypedReceiver<Small>, raw: Receiver<u64>, ack: Sender<u64>, n: u64, rounds: usize) -> u64 {
    let mut check = 0u64;
    for r in 0..rounds {
        for typed_block in [typed_first(r), !typed_first(r)] {
            if typed_block {
                for _ in 0..n {
                    let m = typed.recv().expect("typed recv");
                    check = check.wrapping_add(m.id ^ m.tag as u64);
                }
            } else {
                for _ in 0..n {
                    check = check.wrapping_add(raw.recv().expect("raw recv"));
                }
            }
            ack.send(1).expect("ack");
        }
    }
    check
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = v.len();
    if k % 2 == 1 {
        v[k / 2]
    } else {
        (v[k / 2 - 1] + v[k / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmproc::init();
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2_000_000);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(7);

    let (typed_tx, typed_rx): (TypedSender<Small>, TypedReceiver<Small>) =
        shmproc::FrameQueue::builder().capacity(1024).max_frame(64).create_typed_split()?;
    let (raw_tx, raw_rx) = shmproc::queue::channel::<u64>(1024)?;
    let (ack_tx, ack_rx) = shmproc::queue::channel::<u64>(4)?;
    let child = Process::closure(move || consume(typed_rx, raw_rx, ack_tx, n, rounds)).start()?;

    let wait_ack = || ack_rx.recv_timeout(Duration::from_secs(120)).expect("the consumer acknowledges each block");
    let (mut typed_rates, mut raw_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut expect = 0u64;
    for r in 0..rounds {
        let (mut t_rate, mut r_rate) = (0.0, 0.0);
        for typed_block in [typed_first(r), !typed_first(r)] {
            let start = Instant::now();
            if typed_block {
                for i in 0..n {
                    let m = Small { id: i, x: i as f64 * 0.5, tag: (i % 7) as u32 };
                    expect = expect.wrapping_add(m.id ^ m.tag as u64);
                    typed_tx.send(m).map_err(|e| e.to_string())?;
                }
            } else {
                for i in 0..n {
                    expect = expect.wrapping_add(i);
                    raw_tx.send(i).map_err(|e| e.to_string())?;
                }
            }
            wait_ack();
            let rate = n as f64 / start.elapsed().as_secs_f64();
            if typed_block {
                t_rate = rate;
            } else {
                r_rate = rate;
            }
        }
        println!("round {r}: typed {:7.2} M msg/s   raw Queue<u64> {:7.2} M msg/s", t_rate / 1e6, r_rate / 1e6);
        typed_rates.push(t_rate);
        raw_rates.push(r_rate);
        ratios.push(t_rate / r_rate);
    }
    let check = child.join()?;
    assert_eq!(check, expect, "the consumer saw every message intact");
    let spread = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        (lo, hi)
    };
    let (tl, th) = spread(&typed_rates);
    let (rl, rh) = spread(&raw_rates);
    let (ql, qh) = spread(&ratios);
    println!("{n} messages per block, {rounds} rounds, Small {{ id: u64, x: f64, tag: u32 }} (postcard + 8-byte fingerprint)");
    println!(
        "typed serde queue: median {:.2} M msg/s (spread {:.2}..{:.2})",
        median(&mut typed_rates) / 1e6,
        tl / 1e6,
        th / 1e6
    );
    println!(
        "raw Queue<u64>:    median {:.2} M msg/s (spread {:.2}..{:.2})",
        median(&mut raw_rates) / 1e6,
        rl / 1e6,
        rh / 1e6
    );
    println!("typed / raw:       median {:.3} (spread {:.3}..{:.3})", median(&mut ratios), ql, qh);

    // The same work without a second process: one thread sends 512, then
    // receives them, in alternating blocks, timed in this thread's CPU time:
    // the CPU cost per message (encode, ring, copy, decode) without the
    // cross-CPU hand-over, and unaffected by other processes on a loaded machine.
    let (ttx, trx): (TypedSender<Small>, TypedReceiver<Small>) =
        shmproc::FrameQueue::builder().capacity(512).max_frame(64).create_typed_split()?;
    let (rtx, rrx) = shmproc::queue::channel::<u64>(512)?;
    let (mut t_ns, mut r_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = thread_cpu();
        for b in 0..(n / 512).max(1) {
            for i in 0..512 {
                ttx.send(Small { id: b * 512 + i, x: 1.5, tag: 3 }).map_err(|e| e.to_string())?;
            }
            for _ in 0..512 {
                std::hint::black_box(trx.recv()?);
            }
        }
        t_ns.push((thread_cpu() - start).as_nanos() as f64 / ((n / 512).max(1) * 512) as f64);
        let start = thread_cpu();
        for b in 0..(n / 512).max(1) {
            for i in 0..512 {
                rtx.send(b * 512 + i).map_err(|e| e.to_string())?;
            }
            for _ in 0..512 {
                std::hint::black_box(rrx.recv()?);
            }
        }
        r_ns.push((thread_cpu() - start).as_nanos() as f64 / ((n / 512).max(1) * 512) as f64);
    }
    let (tl, th) = spread(&t_ns);
    let (rl, rh) = spread(&r_ns);
    println!(
        "one thread, CPU time per send+recv: typed median {:.1} ns (spread {tl:.1}..{th:.1}), raw median {:.1} ns (spread {rl:.1}..{rh:.1})",
        median(&mut t_ns),
        median(&mut r_ns)
    );
    Ok(())
}
