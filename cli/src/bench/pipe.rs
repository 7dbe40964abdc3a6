//! Bench cases of the shmproc [`Pipe`](shmproc::Pipe) (transport `pipe`):
//! `pingpong-8B` (round trip of an 8-byte message between two processes),
//! `stream-64KiB` (bytes/s of 64 KiB messages one way, copied in and out) and
//! `idle-cpu` (CPU used by a process blocked in `recv` while nothing arrives).

use std::time::{Duration, Instant};

use shmproc::pipe::RecvError;
use shmproc::Pipe;

use super::{latency, os, throughput, Case, Config, Metric, Outcome};

/// The pipe's cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: "pingpong-8B", transport: "pipe", run: pingpong },
        Case { scenario: "stream-64KiB", transport: "pipe", run: stream },
        Case { scenario: "idle-cpu", transport: "pipe", run: idle_cpu },
    ]
}

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Echoes every message back until the other end closes.
fn echo_child(b: &shmproc::Connection) -> i32 {
    let mut buf = [0u8; 64];
    loop {
        match b.recv_bytes_into(&mut buf) {
            Ok(n) => {
                if b.send_bytes(&buf[..n]).is_err() {
                    return 2;
                }
            }
            Err(RecvError::Disconnected) => return 0,
            Err(_) => return 3,
        }
    }
}

fn pingpong(cfg: &Config) -> Result<Outcome, String> {
    let rounds = if cfg.quick { 20_000 } else { 200_000 };
    let warmup = rounds / 10;
    let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
    // `b` moves into the child's closure: the parent's copy closes once the child runs.
    let mut child = os::fork_child(cfg.child_cpu, move || echo_child(&b)).map_err(|e| e.to_string())?;
    let msg = 0x0123_4567_89ab_cdefu64.to_le_bytes();
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..warmup + rounds {
        let t0 = Instant::now();
        a.send_bytes(&msg).map_err(|e| e.to_string())?;
        let n = a.recv_bytes_into_timeout(&mut buf, CHILD_TIMEOUT).map_err(|e| e.to_string())?;
        let dt = t0.elapsed();
        if n != 8 {
            return Err(format!("echo returned {n} bytes"));
        }
        if i >= warmup {
            samples.push(dt.as_nanos() as f64);
        }
    }
    drop(a);
    match child.wait_timeout(CHILD_TIMEOUT)? {
        0 => Ok(latency(Metric::RttNs, samples)),
        c => Err(format!("echo child exited with {c}")),
    }
}

const CHUNK: usize = 64 << 10;

fn stream(cfg: &Config) -> Result<Outcome, String> {
    let (runs, per_run) = if cfg.quick { (3, 4096) } else { (7, 16384) };
    let mut figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
        let mut child = os::fork_child(cfg.child_cpu, move || {
            let src = vec![0x5au8; CHUNK];
            for _ in 0..per_run + 1 {
                if b.send_bytes(&src).is_err() {
                    return 2;
                }
            }
            // Wait for the reader to finish before closing.
            match b.recv_bytes() {
                Ok(_) | Err(RecvError::Disconnected) => 0,
                Err(_) => 3,
            }
        })
        .map_err(|e| e.to_string())?;
        let mut dst = vec![0u8; CHUNK];
        a.recv_bytes_into_timeout(&mut dst, CHILD_TIMEOUT).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        for _ in 0..per_run {
            let n = a.recv_bytes_into_timeout(&mut dst, CHILD_TIMEOUT).map_err(|e| e.to_string())?;
            if n != CHUNK {
                return Err(format!("got {n} bytes"));
            }
        }
        let dt = t0.elapsed();
        a.send_bytes(b"done").map_err(|e| e.to_string())?;
        figures.push((per_run * CHUNK) as f64 / dt.as_secs_f64());
        drop(a);
        match child.wait_timeout(CHILD_TIMEOUT)? {
            0 => {}
            c => return Err(format!("stream child exited with {c}")),
        }
    }
    Ok(throughput(Metric::BytesPerS, figures))
}

fn idle_cpu(cfg: &Config) -> Result<Outcome, String> {
    let (runs, idle) = if cfg.quick { (1, Duration::from_millis(500)) } else { (3, Duration::from_secs(2)) };
    let mut figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
        let mut child = os::fork_child(cfg.child_cpu, move || {
            std::thread::sleep(idle);
            if b.send_bytes(b"wake").is_err() {
                return 2;
            }
            // Stay until the parent has measured.
            let _ = b.recv_bytes_timeout(CHILD_TIMEOUT);
            0
        })
        .map_err(|e| e.to_string())?;
        let (t0, c0) = (Instant::now(), os::process_cpu_time());
        a.recv_bytes_timeout(CHILD_TIMEOUT).map_err(|e| e.to_string())?;
        let (wall, cpu) = (t0.elapsed(), os::process_cpu_time() - c0);
        figures.push(100.0 * cpu.as_secs_f64() / wall.as_secs_f64());
        let _ = a.send_bytes(b"bye");
        drop(a);
        match child.wait_timeout(CHILD_TIMEOUT)? {
            0 => {}
            c => return Err(format!("idle child exited with {c}")),
        }
    }
    Ok(throughput(Metric::CpuPct, figures))
}
