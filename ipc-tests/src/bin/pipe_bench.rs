//! Runs the pipe's bench cases (`src/bench/pipe.rs`) next to same-run
//! baselines written here: a bare shared-memory atomic ping-pong, a bare
//! shared-memory SPSC ring copying 64 KiB chunks in and out, an OS pipe and a
//! Unix socketpair. Prints each figure and the pipe's ratio to each baseline.
//!
//! `cargo run --release -p ipc-tests --bin pipe_bench [-- --quick]`

#[allow(dead_code)]
#[path = "../../../src/bench/mod.rs"]
mod bench;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::{latency, os, throughput, Config, Metric, Outcome};
use shmproc::Segment;

const CHUNK: usize = 64 << 10;
const LIMIT: Duration = Duration::from_secs(60);

fn shm(len: usize) -> Result<Segment, String> {
    Segment::builder().size(len).create().map_err(|e| e.to_string())
}

fn word(seg: &Segment, line: usize) -> &AtomicU64 {
    assert!((line + 1) * 64 <= seg.payload_len());
    // SAFETY: inside the payload, 64-byte aligned (payload alignment 64).
    unsafe { &*(seg.payload_ptr().as_ptr().add(line * 64) as *const AtomicU64) }
}

/// Bare atomic ping-pong: the parent bumps `ping`, the child copies it to `pong`.
fn raw_spin_pingpong(cfg: &Config) -> Result<Outcome, String> {
    let rounds = if cfg.quick { 20_000 } else { 200_000 };
    let warmup = rounds / 10;
    let seg = shm(4096)?;
    let total = (warmup + rounds) as u64;
    let mut child = os::fork_child(cfg.child_cpu, || {
        let (ping, pong) = (word(&seg, 0), word(&seg, 2));
        let mut seen = 0;
        while seen < total {
            let v = ping.load(Ordering::Acquire);
            if v != seen {
                seen = v;
                pong.store(v, Ordering::Release);
            } else {
                std::hint::spin_loop();
            }
        }
        0
    })
    .map_err(|e| e.to_string())?;
    if let Some(c) = cfg.parent_cpu {
        let _ = os::pin_to_cpu(c);
    }
    let (ping, pong) = (word(&seg, 0), word(&seg, 2));
    let mut samples = Vec::with_capacity(rounds);
    for i in 1..=total {
        let t0 = Instant::now();
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        if i > warmup as u64 {
            samples.push(t0.elapsed().as_nanos() as f64);
        }
    }
    child.wait_timeout(LIMIT)?;
    Ok(latency(Metric::RttNs, samples))
}

/// Bare SPSC ring of 64 KiB chunks (1 MiB ring, cached indices), copy in and out.
fn raw_ring_stream(cfg: &Config) -> Result<Outcome, String> {
    let (runs, per_run) = if cfg.quick { (3, 4096u64) } else { (7, 16384u64) };
    const RING: usize = 1 << 20;
    const SLOTS: u64 = (RING / CHUNK) as u64;
    let mut figures = Vec::new();
    for _ in 0..runs {
        let seg = shm(256 + RING)?;
        let data = |seg: &Segment, slot: u64| {
            // SAFETY: slot < SLOTS, so the chunk lies inside the payload after the 256-byte control.
            unsafe { seg.payload_ptr().as_ptr().add(256 + (slot % SLOTS) as usize * CHUNK) }
        };
        let mut child = os::fork_child(cfg.child_cpu, || {
            let (tail, head) = (word(&seg, 0), word(&seg, 2));
            let src = vec![0x5au8; CHUNK];
            let mut cached_head = 0;
            for t in 0..per_run + 1 {
                while t - cached_head >= SLOTS {
                    cached_head = head.load(Ordering::Acquire);
                    std::hint::spin_loop();
                }
                // SAFETY: the slot is free (t - head < SLOTS) and only we write it.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), data(&seg, t), CHUNK) };
                tail.store(t + 1, Ordering::Release);
            }
            0
        })
        .map_err(|e| e.to_string())?;
        if let Some(c) = cfg.parent_cpu {
            let _ = os::pin_to_cpu(c);
        }
        let (tail, head) = (word(&seg, 0), word(&seg, 2));
        let mut dst = vec![0u8; CHUNK];
        let mut cached_tail = 0;
        let mut t0 = Instant::now();
        for h in 0..per_run + 1 {
            while cached_tail == h {
                cached_tail = tail.load(Ordering::Acquire);
                std::hint::spin_loop();
            }
            // SAFETY: the slot is published (h < tail) and only we read it.
            unsafe { std::ptr::copy_nonoverlapping(data(&seg, h), dst.as_mut_ptr(), CHUNK) };
            // Without this the optimiser may drop the copy into a buffer that is never read.
            std::hint::black_box(&mut dst);
            head.store(h + 1, Ordering::Release);
            if h == 0 {
                t0 = Instant::now();
            }
        }
        figures.push((per_run as usize * CHUNK) as f64 / t0.elapsed().as_secs_f64());
        child.wait_timeout(LIMIT)?;
    }
    Ok(throughput(Metric::BytesPerS, figures))
}

/// A bare byte ring (not slots) with `frame`-byte frames laid out like the
/// pipe's (64 KiB payload at frame offset 64), copies split at the wrap.
fn raw_byte_ring(cfg: &Config, frame: usize) -> Result<Outcome, String> {
    let (runs, per_run) = if cfg.quick { (3, 4096u64) } else { (7, 16384u64) };
    const RING: usize = 1 << 20;
    let mut figures = Vec::new();
    for _ in 0..runs {
        let seg = shm(1024 + RING)?;
        let base = |seg: &Segment| {
            // SAFETY: the ring lies after the 1024-byte control area, inside the payload.
            unsafe { seg.payload_ptr().as_ptr().add(1024) }
        };
        let copy_in = |seg: &Segment, pos: usize, src: *const u8, n: usize| {
            let off = pos % RING;
            let first = n.min(RING - off);
            // SAFETY: both pieces lie inside the ring.
            unsafe {
                std::ptr::copy_nonoverlapping(src, base(seg).add(off), first);
                std::ptr::copy_nonoverlapping(src.add(first), base(seg), n - first);
            }
        };
        let copy_out = |seg: &Segment, pos: usize, dst: *mut u8, n: usize| {
            let off = pos % RING;
            let first = n.min(RING - off);
            // SAFETY: both pieces lie inside the ring.
            unsafe {
                std::ptr::copy_nonoverlapping(base(seg).add(off), dst, first);
                std::ptr::copy_nonoverlapping(base(seg), dst.add(first), n - first);
            }
        };
        let mut child = os::fork_child(cfg.child_cpu, || {
            let (tail, head) = (word(&seg, 4), word(&seg, 6));
            let src = vec![0x5au8; CHUNK];
            let mut cached_head = 0u64;
            let mut t = 0u64;
            for _ in 0..per_run + 1 {
                while RING as u64 - (t - cached_head) < frame as u64 {
                    cached_head = head.load(Ordering::Acquire);
                    std::hint::spin_loop();
                }
                copy_in(&seg, t as usize + (frame - CHUNK), src.as_ptr(), CHUNK);
                t += frame as u64;
                tail.store(t, Ordering::Release);
            }
            0
        })
        .map_err(|e| e.to_string())?;
        if let Some(c) = cfg.parent_cpu {
            let _ = os::pin_to_cpu(c);
        }
        let (tail, head) = (word(&seg, 4), word(&seg, 6));
        let mut dst = vec![0u8; CHUNK];
        let mut cached_tail = 0u64;
        let mut h = 0u64;
        let mut t0 = Instant::now();
        for i in 0..per_run + 1 {
            while cached_tail == h {
                cached_tail = tail.load(Ordering::Acquire);
                std::hint::spin_loop();
            }
            copy_out(&seg, h as usize + (frame - CHUNK), dst.as_mut_ptr(), CHUNK);
            std::hint::black_box(&mut dst);
            h += frame as u64;
            head.store(h, Ordering::Release);
            if i == 0 {
                t0 = Instant::now();
            }
        }
        figures.push((per_run as usize * CHUNK) as f64 / t0.elapsed().as_secs_f64());
        child.wait_timeout(LIMIT)?;
    }
    Ok(throughput(Metric::BytesPerS, figures))
}

fn fd_pair(socket: bool) -> Result<[i32; 2], String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid 2-int out-array.
    let rc = unsafe {
        if socket {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr())
        } else {
            libc::pipe(fds.as_mut_ptr())
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(fds)
}

fn write_all(fd: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        // SAFETY: `b` is valid for b.len() bytes.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return false;
        }
        b = &b[n as usize..];
    }
    true
}

fn read_exact(fd: i32, mut b: &mut [u8]) -> bool {
    while !b.is_empty() {
        // SAFETY: `b` is valid for writing b.len() bytes.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
        if n <= 0 {
            return false;
        }
        b = &mut b[n as usize..];
    }
    true
}

/// 8-byte ping-pong over two OS pipes, or one socketpair.
fn os_pingpong(cfg: &Config, socket: bool) -> Result<Outcome, String> {
    let rounds = if cfg.quick { 2_000 } else { 20_000 };
    let (p2c, c2p) = if socket {
        let s = fd_pair(true)?;
        ([s[1], s[0]], [s[0], s[1]]) // parent writes s[0], child reads s[1] and writes back
    } else {
        (fd_pair(false)?, fd_pair(false)?)
    };
    // p2c = [read end for child, write end for parent]; c2p = [read end for parent, write end for child]
    let (child_rd, parent_wr, parent_rd, child_wr) =
        if socket { (p2c[0], p2c[1], c2p[0], c2p[0]) } else { (p2c[0], p2c[1], c2p[0], c2p[1]) };
    let mut child = os::fork_child(cfg.child_cpu, || {
        let mut b = [0u8; 8];
        for _ in 0..rounds + rounds / 10 {
            if !read_exact(child_rd, &mut b) || !write_all(if socket { child_rd } else { child_wr }, &b) {
                return 2;
            }
        }
        0
    })
    .map_err(|e| e.to_string())?;
    if let Some(c) = cfg.parent_cpu {
        let _ = os::pin_to_cpu(c);
    }
    let mut samples = Vec::new();
    let mut b = [0u8; 8];
    for i in 0..rounds + rounds / 10 {
        let t0 = Instant::now();
        if !write_all(parent_wr, &b) || !read_exact(if socket { parent_wr } else { parent_rd }, &mut b) {
            return Err("os pingpong i/o failed".into());
        }
        if i >= rounds / 10 {
            samples.push(t0.elapsed().as_nanos() as f64);
        }
    }
    let _ = (parent_rd, child_wr);
    child.wait_timeout(LIMIT)?;
    Ok(latency(Metric::RttNs, samples))
}

/// 64 KiB writes through an OS pipe (default 64 KiB pipe buffer).
fn os_pipe_stream(cfg: &Config) -> Result<Outcome, String> {
    let (runs, per_run) = if cfg.quick { (3, 2048) } else { (5, 8192) };
    let mut figures = Vec::new();
    for _ in 0..runs {
        let fds = fd_pair(false)?;
        let mut child = os::fork_child(cfg.child_cpu, || {
            let src = vec![0x5au8; CHUNK];
            for _ in 0..per_run + 1 {
                if !write_all(fds[1], &src) {
                    return 2;
                }
            }
            0
        })
        .map_err(|e| e.to_string())?;
        let mut dst = vec![0u8; CHUNK];
        read_exact(fds[0], &mut dst);
        let t0 = Instant::now();
        for _ in 0..per_run {
            if !read_exact(fds[0], &mut dst) {
                return Err("pipe read failed".into());
            }
        }
        figures.push((per_run * CHUNK) as f64 / t0.elapsed().as_secs_f64());
        child.wait_timeout(LIMIT)?;
        // SAFETY: closing fds we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
    Ok(throughput(Metric::BytesPerS, figures))
}

fn show(name: &str, r: &Result<Outcome, String>) -> f64 {
    match r {
        Ok(o) => {
            println!(
                "{name:<28} {:>16.1} {:<12} p99 {:>12} runs {}",
                o.median,
                o.metric.as_str(),
                o.p99.map_or("-".into(), |p| format!("{p:.1}")),
                o.runs
            );
            o.median
        }
        Err(e) => {
            println!("{name:<28} ERROR {e}");
            f64::NAN
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let cpus = os::allowed_cpus();
    let cfg =
        Config { quick, parent_cpu: (cpus.len() > 1).then(|| cpus[0]), child_cpu: (cpus.len() > 1).then(|| cpus[1]) };
    println!("pipe bench ({}), cpus {:?}", if quick { "quick" } else { "full" }, cpus);
    let cases = bench::all_cases();
    let run = |s: &str| {
        let c = cases.iter().find(|c| c.scenario == s && c.transport == "pipe").expect("pipe case");
        show(&format!("{s}/pipe"), &(c.run)(&cfg))
    };
    if let Some(only) = std::env::args().skip(1).find(|a| !a.starts_with("--")) {
        // `pipe_bench stream-64KiB`: just that pipe case (for profiling).
        match only.as_str() {
            "raw-ring" => show("stream-64KiB/raw-ring", &raw_ring_stream(&cfg)),
            "raw-byte-ring" => show("stream-64KiB/raw-byte-ring-65536", &raw_byte_ring(&cfg, CHUNK)),
            "raw-byte-ring-drift" => show("stream-64KiB/raw-byte-ring-65600", &raw_byte_ring(&cfg, CHUNK + 64)),
            _ => run(&only),
        };
        return;
    }
    let pp = run("pingpong-8B");
    let raw = show("pingpong-8B/raw-spin", &raw_spin_pingpong(&cfg));
    let osp = show("pingpong-8B/os-pipe", &os_pingpong(&cfg, false));
    let sock = show("pingpong-8B/unix-socket", &os_pingpong(&cfg, true));
    let st = run("stream-64KiB");
    let ring = show("stream-64KiB/raw-ring", &raw_ring_stream(&cfg));
    let bring = show("stream-64KiB/raw-byte-ring", &raw_byte_ring(&cfg, CHUNK + 64));
    let ost = show("stream-64KiB/os-pipe", &os_pipe_stream(&cfg));
    let idle = run("idle-cpu");
    println!();
    println!("pingpong: pipe / raw-spin = {:.2}x (target <= 2)", pp / raw);
    println!("pingpong: os-pipe / pipe = {:.1}x, unix-socket / pipe = {:.1}x (target >= 50)", osp / pp, sock / pp);
    println!(
        "stream:   pipe / raw-ring = {:.2}x (target >= 0.6), pipe / raw-byte-ring = {:.2}x, pipe / os-pipe = {:.1}x (target >= 5)",
        st / ring,
        st / bring,
        st / ost
    );
    println!("idle-cpu: {idle:.2}% of a core");
}
