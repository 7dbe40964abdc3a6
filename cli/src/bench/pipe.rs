//! Bench cases of the shmproc [`Pipe`](shmproc::Pipe) (transport `pipe`):
//! `pingpong-8B` (round trip of an 8-byte message between two processes),
//! `stream-64KiB` (bytes/s of 64 KiB messages one way, copied in and out) and
//! `idle-cpu` (CPU used by a process blocked in `recv` while nothing arrives).

use std::rc::Rc;
use std::time::{Duration, Instant};

use shmproc::pipe::RecvError;
use shmproc::Pipe;

use super::{os, Case, Config, Metric, Session, Work};

/// The pipe's cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("pingpong-8B", "pipe", Metric::RttNs, pingpong),
        Case::new("stream-64KiB", "pipe", Metric::BytesPerS, stream),
        Case::new("idle-cpu", "pipe", Metric::CpuPct, idle_cpu),
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

fn pingpong(cfg: &Config) -> Result<Session, String> {
    let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
    // `b` moves into the child's closure: the parent's copy closes once the child runs.
    let child = os::fork_child(cfg.child_cpu, move || echo_child(&b)).map_err(|e| e.to_string())?;
    let msg = 0x0123_4567_89ab_cdefu64.to_le_bytes();
    let mut buf = [0u8; 64];
    // Dropping the work drops `a`: the child sees Disconnected and exits.
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        a.send_bytes(&msg).map_err(|e| e.to_string())?;
        let n = a.recv_bytes_into_timeout(&mut buf, CHILD_TIMEOUT).map_err(|e| e.to_string())?;
        if n != 8 {
            return Err(format!("echo returned {n} bytes"));
        }
        Ok(())
    })))
    .child(child)
    .placement(cfg.pair_placement()))
}

const CHUNK: usize = 64 << 10;

fn stream(cfg: &Config) -> Result<Session, String> {
    let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
    let child = os::fork_child(cfg.child_cpu, move || {
        let src = vec![0x5au8; CHUNK];
        // Sends until the parent says "done" in place of reading (its
        // `done` message arrives on our receiving side), or closes.
        loop {
            if b.send_bytes(&src).is_err() {
                return 0;
            }
            if b.poll(Duration::ZERO) {
                return 0;
            }
        }
    })
    .map_err(|e| e.to_string())?;
    let a = Rc::new(a);
    let closer = a.clone();
    let mut dst = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    Ok(Session::new(Work::Stream(Box::new(move || {
        let n = a.recv_bytes_into_timeout(&mut dst, CHILD_TIMEOUT).map_err(|e| e.to_string())?;
        if n != CHUNK {
            return Err(format!("got {n} bytes"));
        }
        bytes += n as u64;
        Ok(bytes)
    })))
    .child(child)
    .on_finish(move || {
        // Tell the child to stop, then drain what it still sends until it is gone.
        let _ = closer.send_bytes(b"done");
        let mut dst = vec![0u8; CHUNK];
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match closer.recv_bytes_into_timeout(&mut dst, Duration::from_millis(100)) {
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .placement(cfg.pair_placement()))
}

fn idle_cpu(cfg: &Config) -> Result<Session, String> {
    let (a, b) = Pipe::new().map_err(|e| e.to_string())?;
    // The child stays blocked until the parent closes its end.
    let child = os::fork_child(cfg.child_cpu, move || match b.recv_bytes() {
        Ok(_) | Err(RecvError::Disconnected) => 0,
        Err(_) => 3,
    })
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    Ok(Session::new(Work::Block(Box::new(move |len| {
        let (t0, c0) = (Instant::now(), os::process_cpu_time());
        // Four blocks long: a longer wait shows the sleeping part, not the spin.
        let r = a.recv_bytes_into_timeout(&mut buf, len * 4);
        let (wall, cpu) = (t0.elapsed(), os::process_cpu_time() - c0);
        if r.is_ok() {
            return Err("idle-cpu: a message arrived".into());
        }
        Ok(100.0 * cpu.as_secs_f64() / wall.as_secs_f64())
    })))
    .child(child)
    .placement("parent CPU, nothing sent"))
}
