//! Bench cases for [`shmproc::Queue`]: transports `queue` (adaptive waiting),
//! `queue-block` (never spins) and `queue-spin` (busy-poll), in the scenarios
//! `pingpong-8B`, `stream-8B`, `stream-mpmc` and `idle-cpu`.

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
    three!("stream-mpmc", stream_mpmc);
    three!("idle-cpu", idle_cpu);
    v
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn pin_parent(cfg: &Config) {
    if let Some(c) = cfg.parent_cpu {
        let _ = os::pin_to_cpu(c);
    }
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
    pin_parent(cfg);
    let child = os::fork_child(cfg.child_cpu, || {
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
    let n: u64 = if cfg.quick { 1_000_000 } else { 10_000_000 };
    let runs = if cfg.quick { 1 } else { 3 };
    let mut per_run = Vec::new();
    pin_parent(cfg);
    for _ in 0..runs {
        let q = Queue::<u64>::builder().capacity(4096).spsc(true).wait_mode(mode).create().map_err(err)?;
        let t = Instant::now();
        let child = os::fork_child(cfg.child_cpu, || {
            let Some(mut tx) = q.spsc_sender() else { return 3 };
            let mut batch = [0u64; 64];
            let mut i = 0u64;
            while i < n {
                let k = (n - i).min(64) as usize;
                for (j, b) in batch[..k].iter_mut().enumerate() {
                    *b = i + j as u64;
                }
                if tx.send_slice(&batch[..k]).is_err() {
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
    pin_parent(cfg);
    let (c0, t0) = (os::process_cpu_time(), Instant::now());
    let r = q.recv_timeout(wait);
    let (cpu, wall) = (os::process_cpu_time().saturating_sub(c0), t0.elapsed());
    if r.is_ok() {
        return Err("idle-cpu: received a message from an empty queue".into());
    }
    Ok(throughput(Metric::CpuPct, vec![cpu.as_secs_f64() / wall.as_secs_f64() * 100.0]))
}

#[cfg(test)]
mod tests {
    //! `cargo test --release --bin shmproc -- --ignored --nocapture queue_bench`
    //! runs every queue case together with bare baselines measured in the same
    //! run (the project's real baselines live in `baselines.rs`).

    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use super::*;

    fn cfg() -> Config {
        let cpus = os::allowed_cpus();
        let quick = std::env::var("QUEUE_BENCH_FULL").is_err();
        if cpus.len() >= 2 {
            Config { quick, parent_cpu: Some(cpus[0]), child_cpu: Some(cpus[1]) }
        } else {
            Config { quick, parent_cpu: None, child_cpu: None }
        }
    }

    fn shared_words(n: usize) -> (shmproc::Segment, *const AtomicU64) {
        let s = shmproc::Segment::builder().size(n * 128).create().unwrap();
        let p = s.payload_ptr().as_ptr() as *const AtomicU64;
        (s, p)
    }

    /// Bare atomic ping-pong over two words on separate lines.
    fn raw_spin(cfg: &Config) -> Outcome {
        let (_s, p) = shared_words(2);
        // SAFETY: the segment holds 2 * 128 bytes of zeroed, aligned words.
        let (a, b) = unsafe { (&*p, &*p.add(16)) };
        let n = if cfg.quick { 20_000u64 } else { 200_000 };
        let child = os::fork_child(cfg.child_cpu, || {
            for i in 1..=n {
                while a.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                b.store(i, Ordering::Release);
            }
            0
        })
        .unwrap();
        let mut s = Vec::new();
        for i in 1..=n {
            let t = Instant::now();
            a.store(i, Ordering::Release);
            while b.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            s.push(t.elapsed().as_nanos() as f64);
        }
        finish(child, Duration::from_secs(5)).unwrap();
        latency(Metric::RttNs, s)
    }

    /// Bare futex ping-pong (shared futex words, via rustix).
    fn raw_futex(cfg: &Config) -> Outcome {
        use rustix::thread::futex;
        let (_s, p) = shared_words(2);
        // SAFETY: as above; AtomicU32 views of the first half of each word.
        let (a, b) = unsafe { (&*(p as *const AtomicU32), &*(p.add(16) as *const AtomicU32)) };
        let n = if cfg.quick { 2_000u32 } else { 20_000 };
        let wait = |w: &AtomicU32, want: u32| {
            while w.load(Ordering::Acquire) != want {
                let cur = w.load(Ordering::Acquire);
                if cur != want {
                    let _ = futex::wait(w, futex::Flags::empty(), cur, None);
                }
            }
        };
        let child = os::fork_child(cfg.child_cpu, || {
            for i in 1..=n {
                wait(a, i);
                b.store(i, Ordering::Release);
                let _ = futex::wake(b, futex::Flags::empty(), 1);
            }
            0
        })
        .unwrap();
        let mut s = Vec::new();
        for i in 1..=n {
            let t = Instant::now();
            a.store(i, Ordering::Release);
            let _ = futex::wake(a, futex::Flags::empty(), 1);
            wait(b, i);
            s.push(t.elapsed().as_nanos() as f64);
        }
        finish(child, Duration::from_secs(5)).unwrap();
        latency(Metric::RttNs, s)
    }

    /// Bare SPSC ring of u64, per-message publication, cached remote index.
    fn raw_ring(cfg: &Config) -> Outcome {
        const CAP: u64 = 4096;
        let n: u64 = if cfg.quick { 1_000_000 } else { 10_000_000 };
        let s = shmproc::Segment::builder().size(256 + CAP as usize * 8).create().unwrap();
        let base = s.payload_ptr().as_ptr();
        // SAFETY: 256 + CAP * 8 zeroed bytes: tail at 0, head at 128, slots at 256.
        let (tail, head, slots) =
            unsafe { (&*(base as *const AtomicU64), &*(base.add(128) as *const AtomicU64), base.add(256) as *mut u64) };
        let slots = slots as usize;
        let t = Instant::now();
        let child = os::fork_child(cfg.child_cpu, || {
            let mut cached_head = 0u64;
            for i in 0..n {
                while i - cached_head >= CAP {
                    cached_head = head.load(Ordering::Acquire);
                }
                // SAFETY: slot i % CAP is free (i - head < CAP).
                unsafe { ((slots as *mut u64).add((i % CAP) as usize)).write_volatile(i) };
                tail.store(i + 1, Ordering::Release);
            }
            0
        })
        .unwrap();
        let (mut cached_tail, mut sum) = (0u64, 0u64);
        for i in 0..n {
            while cached_tail <= i {
                cached_tail = tail.load(Ordering::Acquire);
            }
            // SAFETY: slot i % CAP is published (i < tail).
            sum = sum.wrapping_add(unsafe { ((slots as *const u64).add((i % CAP) as usize)).read_volatile() });
            head.store(i + 1, Ordering::Release);
        }
        let dt = t.elapsed();
        finish(child, Duration::from_secs(5)).unwrap();
        assert_eq!(sum, n * (n - 1) / 2);
        throughput(Metric::MsgsPerS, vec![n as f64 / dt.as_secs_f64()])
    }

    /// Pipe ping-pong and pipe stream of 8-byte writes.
    fn os_pipe(cfg: &Config) -> (Outcome, Outcome) {
        use std::io::{Read, Write};
        let (mut r1, mut w1) = std::io::pipe().unwrap();
        let (mut r2, mut w2) = std::io::pipe().unwrap();
        let n = 2_000u64;
        let child = os::fork_child(cfg.child_cpu, || {
            let mut b = [0u8; 8];
            for _ in 0..n {
                if r1.read_exact(&mut b).is_err() || w2.write_all(&b).is_err() {
                    return 1;
                }
            }
            0
        })
        .unwrap();
        let mut s = Vec::new();
        let mut b = [0u8; 8];
        for i in 0..n {
            let t = Instant::now();
            w1.write_all(&i.to_le_bytes()).unwrap();
            r2.read_exact(&mut b).unwrap();
            s.push(t.elapsed().as_nanos() as f64);
        }
        finish(child, Duration::from_secs(5)).unwrap();
        let m = 200_000u64;
        let t = Instant::now();
        let child = os::fork_child(cfg.child_cpu, || {
            for i in 0..m {
                if w1.write_all(&i.to_le_bytes()).is_err() {
                    return 1;
                }
            }
            0
        })
        .unwrap();
        for _ in 0..m {
            r1.read_exact(&mut b).unwrap();
        }
        let dt = t.elapsed();
        finish(child, Duration::from_secs(5)).unwrap();
        (latency(Metric::RttNs, s), throughput(Metric::MsgsPerS, vec![m as f64 / dt.as_secs_f64()]))
    }

    /// The stream scenario with one `send` / `recv` per message (SPSC endpoints, adaptive).
    fn stream_per_message(cfg: &Config) -> Outcome {
        let n: u64 = if cfg.quick { 1_000_000 } else { 10_000_000 };
        let q = Queue::<u64>::builder().capacity(4096).spsc(true).create().unwrap();
        let t = Instant::now();
        let child = os::fork_child(cfg.child_cpu, || {
            let Some(mut tx) = q.spsc_sender() else { return 3 };
            for i in 0..n {
                if tx.send(i).is_err() {
                    return 1;
                }
            }
            0
        })
        .unwrap();
        let mut rx = q.spsc_receiver().unwrap();
        let mut sum = 0u64;
        for _ in 0..n {
            sum = sum.wrapping_add(rx.recv().unwrap());
        }
        let dt = t.elapsed();
        finish(child, Duration::from_secs(10)).unwrap();
        assert_eq!(sum, n * (n - 1) / 2);
        throughput(Metric::MsgsPerS, vec![n as f64 / dt.as_secs_f64()])
    }

    #[test]
    #[ignore = "benchmark: run by hand with --ignored --nocapture"]
    fn queue_stream_per_message() {
        let cfg = cfg();
        pin_parent(&cfg);
        let o = stream_per_message(&cfg);
        println!("stream-8B per-message send: {:.0} msgs/s", o.median);
    }

    #[test]
    #[ignore = "benchmark: run by hand with --ignored --nocapture"]
    fn queue_bench() {
        let cfg = cfg();
        pin_parent(&cfg);
        let show = |name: &str, o: &Outcome| {
            println!("{name:<28} {:>14.1} {:<10} p99 {:?}", o.median, o.metric.as_str(), o.p99.map(|p| p as u64))
        };
        let spin = raw_spin(&cfg);
        show("baseline raw-spin pingpong", &spin);
        let fut = raw_futex(&cfg);
        show("baseline raw-futex pingpong", &fut);
        let ring = raw_ring(&cfg);
        show("baseline raw-ring stream", &ring);
        let (pp, ps) = os_pipe(&cfg);
        show("baseline os-pipe pingpong", &pp);
        show("baseline os-pipe stream", &ps);
        let pm = stream_per_message(&cfg);
        show("stream-8B per-message send", &pm);
        println!("    ratio: x{:.2} raw-ring, {:.0}x pipe", pm.median / ring.median, pm.median / ps.median);
        for c in cases() {
            match (c.run)(&cfg) {
                Ok(o) => {
                    show(&format!("{}/{}", c.scenario, c.transport), &o);
                    let r = match (c.scenario, c.transport) {
                        ("pingpong-8B", "queue-block") => {
                            format!("x{:.2} raw-futex, pipe/queue {:.0}x", o.median / fut.median, pp.median / o.median)
                        }
                        ("pingpong-8B", _) => {
                            format!("x{:.2} raw-spin, pipe/queue {:.0}x", o.median / spin.median, pp.median / o.median)
                        }
                        ("stream-8B", _) => {
                            format!("x{:.2} raw-ring, {:.0}x pipe", o.median / ring.median, o.median / ps.median)
                        }
                        _ => String::new(),
                    };
                    if !r.is_empty() {
                        println!("    ratio: {r}");
                    }
                }
                Err(e) => println!("{}/{}: ERROR {e}", c.scenario, c.transport),
            }
        }
    }
}
