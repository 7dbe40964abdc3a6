//! Bench cases for [`shmproc::Queue`]: transports `queue` (adaptive waiting),
//! `queue-block` (never spins) and `queue-spin` (busy-poll), in the scenarios
//! `pingpong-8B`, `stream-8B`, `stream-mpmc` and `idle-cpu`; plus
//! `stream-8B`/`queue-permsg`, the stream with one `send`/`recv` per message.

use std::time::{Duration, Instant};

use shmproc::{Queue, WaitMode};

use super::os::{self, Child};
use super::{latency, throughput, Case, Config, Metric, Outcome};

/// Every queue case, in print order.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    macro_rules! three {
        ($scenario:expr, $f:ident) => {
            v.push(Case { scenario: $scenario, transport: "queue", run: |c| $f(c, WaitMode::Adaptive) });
            v.push(Case { scenario: $scenario, transport: "queue-block", run: |c| $f(c, WaitMode::Blocking) });
            v.push(Case { scenario: $scenario, transport: "queue-spin", run: |c| $f(c, WaitMode::BusyPoll) });
        };
    }
    three!("pingpong-8B", pingpong);
    three!("stream-8B", stream);
    v.push(Case { scenario: "stream-8B", transport: "queue-permsg", run: stream_per_message });
    three!("stream-mpmc", stream_mpmc);
    three!("idle-cpu", idle_cpu);
    v
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn finish(mut child: Child, t: Duration) -> Result<(), String> {
    match child.wait_timeout(t)? {
        0 => Ok(()),
        c => Err(format!("bench child exited with {c}")),
    }
}

/// Two processes bounce a u64 over two queues; one sample per round trip.
fn pingpong(cfg: &Config, mode: WaitMode) -> Result<Outcome, String> {
    let rounds: usize = match (mode, cfg.quick) {
        (WaitMode::Blocking, true) => 2_000,
        (WaitMode::Blocking, false) => 20_000,
        (_, true) => 20_000,
        (_, false) => 200_000,
    };
    let warm = rounds / 10;
    let ping = Queue::<u64>::builder().capacity(64).wait_mode(mode).create().map_err(err)?;
    let pong = Queue::<u64>::builder().capacity(64).wait_mode(mode).create().map_err(err)?;
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let child = os::fork_child(cfg.child_cpu, move || {
        let (ping, pong) = (ping2, pong2);
        for _ in 0..warm + rounds {
            match ping.recv_timeout(Duration::from_secs(10)) {
                Ok(v) => {
                    if pong.send(v + 1).is_err() {
                        return 2;
                    }
                }
                Err(_) => return 1,
            }
        }
        0
    })
    .map_err(err)?;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..(warm + rounds) as u64 {
        let t = Instant::now();
        ping.send(i).map_err(err)?;
        let v = pong.recv_timeout(Duration::from_secs(10)).map_err(err)?;
        let dt = t.elapsed();
        if v != i + 1 {
            return Err(format!("pingpong: sent {i}, got {v} back"));
        }
        if i as usize >= warm {
            samples.push(dt.as_nanos() as f64);
        }
    }
    finish(child, Duration::from_secs(10))?;
    Ok(latency(Metric::RttNs, samples))
}

/// One producer process streams u64s to the parent over an SPSC queue through
/// its exclusive endpoints, in batches (`send_slice` / `recv_into`: one index
/// publication per batch).
fn stream(cfg: &Config, mode: WaitMode) -> Result<Outcome, String> {
    stream_with(cfg, mode, 64)
}

/// As [`stream`], one `send` / `recv` per message (adaptive waiting).
fn stream_per_message(cfg: &Config) -> Result<Outcome, String> {
    stream_with(cfg, WaitMode::Adaptive, 1)
}

/// The stream scenario, `batch` messages per `send_slice` (1: plain `send` / `recv`).
fn stream_with(cfg: &Config, mode: WaitMode, batch: usize) -> Result<Outcome, String> {
    let n: u64 = if cfg.quick { 1_000_000 } else { 10_000_000 };
    let runs = if cfg.quick { 1 } else { 3 };
    let mut per_run = Vec::new();
    for _ in 0..runs {
        let q = Queue::<u64>::builder().capacity(4096).spsc(true).wait_mode(mode).create().map_err(err)?;
        let theirs = q.clone();
        let t = Instant::now();
        let child = os::fork_child(cfg.child_cpu, move || {
            let Some(mut tx) = theirs.spsc_sender() else { return 3 };
            if batch == 1 {
                for i in 0..n {
                    if tx.send(i).is_err() {
                        return 1;
                    }
                }
                return 0;
            }
            let mut buf = [0u64; 64];
            let mut i = 0u64;
            while i < n {
                let k = (n - i).min(batch.min(64) as u64) as usize;
                for (j, b) in buf[..k].iter_mut().enumerate() {
                    *b = i + j as u64;
                }
                if tx.send_slice(&buf[..k]).is_err() {
                    return 1;
                }
                i += k as u64;
            }
            0
        })
        .map_err(err)?;
        let mut rx = q.spsc_receiver().ok_or("stream: receiver side taken")?;
        let mut buf = vec![0u64; 1024];
        let (mut got, mut sum) = (0u64, 0u64);
        while got < n {
            if batch == 1 {
                sum = sum.wrapping_add(rx.recv().map_err(err)?);
                got += 1;
                continue;
            }
            let k = rx.recv_into(&mut buf).map_err(err)?;
            for v in &buf[..k] {
                sum = sum.wrapping_add(*v);
            }
            got += k as u64;
        }
        let dt = t.elapsed();
        finish(child, Duration::from_secs(10))?;
        if sum != n * (n - 1) / 2 {
            return Err("stream: checksum mismatch".into());
        }
        per_run.push(n as f64 / dt.as_secs_f64());
    }
    Ok(throughput(Metric::MsgsPerS, per_run))
}

/// Two producer and two consumer processes on one MPMC queue (per-message
/// `send` / `recv`); total messages per second.
fn stream_mpmc(cfg: &Config, mode: WaitMode) -> Result<Outcome, String> {
    let per_producer: u64 = if cfg.quick { 200_000 } else { 2_000_000 };
    let runs = if cfg.quick { 1 } else { 3 };
    let cpus = [cfg.parent_cpu, cfg.child_cpu];
    let mut per_run = Vec::new();
    for _ in 0..runs {
        let q = Queue::<u64>::builder().capacity(1024).wait_mode(mode).create().map_err(err)?;
        let done = Queue::<u64>::builder().capacity(4).create().map_err(err)?;
        let t = Instant::now();
        let mut producers = Vec::new();
        for cpu in cpus {
            let q = q.clone();
            producers.push(
                os::fork_child(cpu, move || {
                    for i in 0..per_producer {
                        if q.send(i).is_err() {
                            return 1;
                        }
                    }
                    0
                })
                .map_err(err)?,
            );
        }
        let mut consumers = Vec::new();
        for cpu in cpus {
            let (q, done) = (q.clone(), done.clone());
            consumers.push(
                os::fork_child(cpu, move || {
                    let mut got = 0u64;
                    // Consumers share the work until each takes an end marker.
                    loop {
                        match q.recv_timeout(Duration::from_secs(10)) {
                            Ok(u64::MAX) => break,
                            Ok(_) => got += 1,
                            Err(_) => return 2,
                        }
                    }
                    if done.send(got).is_err() {
                        return 1;
                    }
                    0
                })
                .map_err(err)?,
            );
        }
        for p in producers {
            finish(p, Duration::from_secs(60))?;
        }
        for _ in 0..2 {
            q.send(u64::MAX).map_err(err)?;
        }
        let mut total = 0;
        for _ in 0..2 {
            total += done.recv_timeout(Duration::from_secs(60)).map_err(err)?;
        }
        let dt = t.elapsed();
        for c in consumers {
            finish(c, Duration::from_secs(10))?;
        }
        if total != 2 * per_producer {
            return Err(format!("stream-mpmc: {total} of {} messages", 2 * per_producer));
        }
        per_run.push(total as f64 / dt.as_secs_f64());
    }
    Ok(throughput(Metric::MsgsPerS, per_run))
}

/// CPU time a receiver burns waiting on an empty queue, in percent of a core.
fn idle_cpu(cfg: &Config, mode: WaitMode) -> Result<Outcome, String> {
    let wait = if cfg.quick { Duration::from_millis(500) } else { Duration::from_secs(2) };
    let q = Queue::<u64>::builder().capacity(16).wait_mode(mode).create().map_err(err)?;
    let (c0, t0) = (os::process_cpu_time(), Instant::now());
    let r = q.recv_timeout(wait);
    let (cpu, wall) = (os::process_cpu_time().saturating_sub(c0), t0.elapsed());
    if r.is_ok() {
        return Err("idle-cpu: received a message from an empty queue".into());
    }
    Ok(throughput(Metric::CpuPct, vec![cpu.as_secs_f64() / wall.as_secs_f64() * 100.0]))
}
