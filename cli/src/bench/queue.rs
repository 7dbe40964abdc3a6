//! Bench cases for [`shmproc::Queue`]: transports `queue` (adaptive waiting),
//! `queue-block` (never spins) and `queue-spin` (busy-poll), in the scenarios
//! `pingpong-8B`, `stream-8B`, `stream-mpmc` and `idle-cpu`; plus the stream
//! with one `send`/`recv` per message: `stream-8B`/`queue-permsg` through the
//! halves of an SPSC queue (`create_split`: what `tx.send(x)` / `rx.recv()`
//! gets) and `stream-8B`/`queue-permsg-ep` through its exclusive endpoints
//! (`spsc_sender` / `spsc_receiver`).
//!
//! `stream-mpmc` runs as many producer processes as [`baselines::mpmc_producers`]
//! (one fewer than the CPUs, so spinning processes never outnumber them) and
//! the parent as the consumer, beside `raw-mpmc`, a bare Vyukov ring with the
//! same producers on the same CPUs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shmproc::{Queue, RawArray, WaitMode};

use super::baselines::{mpmc_placement, mpmc_producer_cpu, mpmc_producers};
use super::os;
use super::{Case, Config, Metric, Session, Work};

/// Every queue case, in print order.
pub fn cases() -> Vec<Case> {
    use Metric::{CpuPct, MsgsPerS, RttNs};
    let mut v = Vec::new();
    macro_rules! three {
        ($scenario:expr, $metric:expr, $f:ident) => {
            v.push(Case::new($scenario, "queue", $metric, |c| $f(c, WaitMode::Adaptive)));
            v.push(Case::new($scenario, "queue-block", $metric, |c| $f(c, WaitMode::Blocking)));
            v.push(Case::new($scenario, "queue-spin", $metric, |c| $f(c, WaitMode::BusyPoll)));
        };
    }
    three!("pingpong-8B", RttNs, pingpong);
    v.push(Case::new("pingpong-8B", "queue-spsc", RttNs, pingpong_spsc));
    three!("stream-8B", MsgsPerS, stream);
    v.push(Case::new("stream-8B", "queue-permsg", MsgsPerS, stream_per_message));
    v.push(Case::new("stream-8B", "queue-permsg-ep", MsgsPerS, stream_per_message_endpoints));
    three!("stream-mpmc", MsgsPerS, stream_mpmc);
    three!("idle-cpu", CpuPct, idle_cpu);
    v
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Flags shared with the children: `[stop, acknowledged]`.
fn flags() -> Result<RawArray<u32>, String> {
    RawArray::<u32>::builder().create_zeroed(2).map_err(err)
}

/// The end of a stream case: raises the stop flag (`flags[0]`), then drains
/// with `try_recv` until `producers` producers have acknowledged it
/// (`flags[1]`) or 10 s have passed.
fn stop_and_drain(flags: &RawArray<u32>, producers: usize, mut try_recv: impl FnMut()) {
    let flags = flags.atomics();
    flags[0].store(1, Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(10);
    while (flags[1].load(Ordering::Acquire) as usize) < producers && Instant::now() < end {
        try_recv();
    }
}

/// Two processes bounce a u64 over two queues.
fn pingpong(cfg: &Config, mode: WaitMode) -> Result<Session, String> {
    let ping = Queue::<u64>::builder().capacity(64).wait_mode(mode).create().map_err(err)?;
    let pong = Queue::<u64>::builder().capacity(64).wait_mode(mode).create().map_err(err)?;
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let stall = cfg.stall_limit();
    bounce(
        cfg,
        move || ping2.recv_timeout(stall).map_err(err),
        move |v| pong2.send(v).map_err(err),
        Rc::new(move |v| ping.send(v).map_err(err)),
        move || pong.recv_timeout(stall).map_err(err),
    )
}

/// As [`pingpong`], over two SPSC queues through their halves (`create_split`:
/// what a user writes for one-to-one traffic), adaptive waiting. An MPMC
/// queue's consumer frees each slot by writing its sequence word, and its
/// producer claims a slot with a compare-and-swap that waits for that store:
/// one more line hand-over on every round trip, which the SPSC ring (each
/// side's index on its own line) does not pay.
fn pingpong_spsc(cfg: &Config) -> Result<Session, String> {
    let (ping_tx, ping_rx) = Queue::<u64>::builder().capacity(64).spsc(true).create_split().map_err(err)?;
    let (pong_tx, pong_rx) = Queue::<u64>::builder().capacity(64).spsc(true).create_split().map_err(err)?;
    let stall = cfg.stall_limit();
    bounce(
        cfg,
        move || ping_rx.recv_timeout(stall).map_err(err),
        move |v| pong_tx.send(v).map_err(err),
        Rc::new(move |v| ping_tx.send(v).map_err(err)),
        move || pong_rx.recv_timeout(stall).map_err(err),
    )
}

/// The round-trip session of both ping-pong cases: a child that echoes
/// `v + 1` for every `v` until `u64::MAX` (`child_recv`, `child_send`), and
/// a timed `send(i)` then `recv()` that checks the echo; `send(u64::MAX)`
/// stops the child when the case ends.
fn bounce(
    cfg: &Config,
    mut child_recv: impl FnMut() -> Result<u64, String> + 'static,
    mut child_send: impl FnMut(u64) -> Result<(), String> + 'static,
    send: Rc<dyn Fn(u64) -> Result<(), String>>,
    mut recv: impl FnMut() -> Result<u64, String> + 'static,
) -> Result<Session, String> {
    let child = os::fork_child(cfg.child_cpu, move || loop {
        match child_recv() {
            Ok(u64::MAX) => return 0,
            Ok(v) => {
                if child_send(v + 1).is_err() {
                    return 2;
                }
            }
            Err(_) => return 1,
        }
    })
    .map_err(err)?;
    let stopper = send.clone();
    let mut i = 0u64;
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        i += 1;
        send(i)?;
        let v = recv()?;
        if v != i + 1 {
            return Err(format!("pingpong: sent {i}, got {v} back"));
        }
        Ok(())
    })))
    .child(child)
    .on_finish(move || {
        let _ = stopper(u64::MAX);
    })
    .placement(cfg.pair_placement()))
}

/// One producer process streams u64s to the parent over an SPSC queue through
/// its exclusive endpoints, in batches (`send_slice` / `recv_into`: one index
/// publication per batch).
fn stream(cfg: &Config, mode: WaitMode) -> Result<Session, String> {
    stream_with(cfg, mode, 64)
}

/// As [`stream`], one `send` / `recv` per message (adaptive waiting), through
/// the exclusive endpoints.
fn stream_per_message_endpoints(cfg: &Config) -> Result<Session, String> {
    stream_with(cfg, WaitMode::Adaptive, 1)
}

/// One `tx.send(x)` / `rx.recv()` per message through the halves of an SPSC
/// queue (`create_split`: what a user writes), adaptive waiting. The child
/// sends until the parent raises the stop flag; the parent drains at the end.
fn stream_per_message(cfg: &Config) -> Result<Session, String> {
    let (tx, rx) = Queue::<u64>::builder().capacity(4096).spsc(true).create_split().map_err(err)?;
    let f = flags()?;
    let their_flags = f.clone();
    let child = os::fork_child(cfg.child_cpu, move || {
        let flags = their_flags.atomics();
        let mut i = 0u64;
        loop {
            if flags[0].load(Ordering::Relaxed) != 0 {
                flags[1].store(1, Ordering::Release);
                return 0;
            }
            for _ in 0..64 {
                if tx.send(i).is_err() {
                    return 1;
                }
                i += 1;
            }
        }
    })
    .map_err(err)?;
    let rx = Rc::new(rx);
    let drain = rx.clone();
    let mut got = 0u64;
    let mut bad = 0u64;
    let stop_flags = f.clone();
    Ok(Session::new(Work::Stream(Box::new(move || {
        // Locals for the loop, as the raw rings' consumers do: the closure's
        // own fields would be stored back after every message.
        let (mut g, mut b) = (got, bad);
        for _ in 0..1024 {
            b |= rx.recv().map_err(err)? ^ g;
            g += 1;
        }
        (got, bad) = (g, b);
        if bad != 0 {
            return Err("stream: a message arrived out of order".into());
        }
        Ok(got)
    })))
    .child(child)
    .on_finish(move || {
        stop_and_drain(&stop_flags, 1, || {
            let _ = drain.try_recv();
        })
    })
    .placement(cfg.pair_placement()))
}

/// The stream scenario, `batch` messages per `send_slice` (1: plain `send` /
/// `recv`). The producer runs until the parent raises the stop flag; the
/// parent drains the queue at the end until the producer acknowledges it.
fn stream_with(cfg: &Config, mode: WaitMode, batch: usize) -> Result<Session, String> {
    let q = Queue::<u64>::builder().capacity(4096).spsc(true).wait_mode(mode).create().map_err(err)?;
    let f = flags()?;
    let (theirs, their_flags) = (q.clone(), f.clone());
    let child = os::fork_child(cfg.child_cpu, move || {
        let flags = their_flags.atomics();
        let Some(mut tx) = theirs.spsc_sender() else { return 3 };
        let mut buf = [0u64; 64];
        let mut i = 0u64;
        loop {
            if flags[0].load(Ordering::Relaxed) != 0 {
                flags[1].store(1, Ordering::Release);
                return 0;
            }
            if batch == 1 {
                for _ in 0..64 {
                    if tx.send(i).is_err() {
                        return 1;
                    }
                    i += 1;
                }
                continue;
            }
            for b in buf.iter_mut() {
                *b = i;
                i += 1;
            }
            if tx.send_slice(&buf).is_err() {
                return 1;
            }
        }
    })
    .map_err(err)?;
    let rx = Rc::new(RefCell::new(q.spsc_receiver().ok_or("stream: receiver side taken")?));
    let drain = rx.clone();
    let mut buf = vec![0u64; 1024];
    let mut got = 0u64;
    let mut bad = 0u64;
    let stop_flags = f.clone();
    Ok(Session::new(Work::Stream(Box::new(move || {
        let mut rx = rx.borrow_mut();
        if batch == 1 {
            // Locals for the loop, as in `stream_per_message`.
            let (mut g, mut b) = (got, bad);
            for _ in 0..1024 {
                b |= rx.recv().map_err(err)? ^ g;
                g += 1;
            }
            (got, bad) = (g, b);
        } else {
            let k = rx.recv_into(&mut buf).map_err(err)?;
            for v in &buf[..k] {
                bad |= *v ^ got;
                got += 1;
            }
        }
        if bad != 0 {
            return Err("stream: a message arrived out of order".into());
        }
        Ok(got)
    })))
    .child(child)
    .on_finish(move || {
        let mut rx = drain.borrow_mut();
        stop_and_drain(&stop_flags, 1, || {
            let _ = rx.try_recv();
        })
    })
    .placement(cfg.pair_placement()))
}

/// Producer processes (as many as fit the CPUs beside the consumer) send
/// u64s one by one on one MPMC queue; the parent receives them.
fn stream_mpmc(cfg: &Config, mode: WaitMode) -> Result<Session, String> {
    let q = Queue::<u64>::builder().capacity(1024).wait_mode(mode).create().map_err(err)?;
    let f = flags()?;
    let producers = mpmc_producers(cfg);
    let mut kids = Vec::new();
    for k in 0..producers {
        let (q, f) = (q.clone(), f.clone());
        kids.push(
            os::fork_child(mpmc_producer_cpu(cfg, k), move || {
                let flags = f.atomics();
                let mut i = 0u64;
                loop {
                    if i.is_multiple_of(64) && flags[0].load(Ordering::Relaxed) != 0 {
                        flags[1].fetch_add(1, Ordering::AcqRel);
                        return 0;
                    }
                    if q.send(i).is_err() {
                        return 1;
                    }
                    i += 1;
                }
            })
            .map_err(err)?,
        );
    }
    let drain = q.clone();
    let stop_flags = f.clone();
    let stall = cfg.stall_limit();
    let mut got = 0u64;
    let mut s = Session::new(Work::Stream(Box::new(move || {
        for _ in 0..1024 {
            std::hint::black_box(q.recv_timeout(stall).map_err(err)?);
            got += 1;
        }
        Ok(got)
    })))
    .on_finish(move || {
        stop_and_drain(&stop_flags, producers, || {
            let _ = drain.try_recv();
        })
    })
    .placement(mpmc_placement(cfg));
    for k in kids {
        s = s.child(k);
    }
    Ok(s)
}

/// CPU time a receiver burns waiting on an empty queue, in percent of a core
/// (one wait per block).
fn idle_cpu(_cfg: &Config, mode: WaitMode) -> Result<Session, String> {
    let q = Queue::<u64>::builder().capacity(16).wait_mode(mode).create().map_err(err)?;
    Ok(Session::new(Work::Block(Box::new(move |len| {
        let (c0, t0) = (os::process_cpu_time(), Instant::now());
        // Four blocks long: a longer wait shows the sleeping part, not the spin.
        let r = q.recv_timeout(len * 4);
        let (cpu, wall) = (os::process_cpu_time().saturating_sub(c0), t0.elapsed());
        if r.is_ok() {
            return Err("idle-cpu: received a message from an empty queue".into());
        }
        Ok(cpu.as_secs_f64() / wall.as_secs_f64() * 100.0)
    })))
    .placement("one process, parent CPU"))
}
