//! Bench cases of the [`Manager`](shmproc::manager::Manager) and of
//! [`Listener`](shmproc::connection::Listener)/[`Client`](shmproc::connection::Client):
//!
//! * `manager-dict`: one proxy `insert` + `get` round trip pair on a managed
//!   dict from this process, local (transport `manager`: over the pipe the
//!   server hands over) vs Python's `multiprocessing.Manager().dict()`
//!   (`python-mp`, a Unix socket; run when `python3` is on the PATH).
//! * `manager-dict-tcp`: the same through TCP loopback with authentication
//!   (`manager-tcp`) vs Python's `SyncManager` on `127.0.0.1` (`python-mp-tcp`).
//! * `connection-tcp`: an 8-byte ping-pong between two processes over an
//!   authenticated `Listener`/`Client` connection (`shmproc-conn`) vs a bare
//!   TCP socket pair (`tcp-bare`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use shmproc::connection::{Client, Listener};
use shmproc::manager::{DictProxy, Manager};

use super::{latency, os, Case, Config, Metric, Outcome, Samples};

/// The manager's and the connection's cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: "manager-dict", transport: "manager", run: dict_local },
        Case { scenario: "manager-dict", transport: "python-mp", run: dict_python_local },
        Case { scenario: "manager-dict-tcp", transport: "manager-tcp", run: dict_tcp },
        Case { scenario: "manager-dict-tcp", transport: "python-mp-tcp", run: dict_python_tcp },
        Case { scenario: "connection-tcp", transport: "tcp-bare", run: conn_bare },
        Case { scenario: "connection-tcp", transport: "shmproc-conn", run: conn_shmproc },
    ]
}

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
const KEY: &[u8] = b"bench authkey, 32 bytes or so...";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn insert_get(cfg: &Config, d: &DictProxy<u64, u64>) -> Result<Outcome, String> {
    let mut s = Samples::start(cfg);
    let mut i = 0u64;
    loop {
        d.insert(&(i & 1023), &i).map_err(err)?;
        if d.get(&(i & 1023)).map_err(err)? != Some(i) {
            return Err("the dict lost a value".into());
        }
        i += 1;
        if !s.tick() {
            break;
        }
    }
    s.finish(Metric::RttNs)
}

/// Starts the manager's server pinned to `cfg.child_cpu`, as every
/// two-process case places its child (the runner pins this process to
/// `cfg.parent_cpu`; a server inheriting that would share the client's CPU).
fn start_on_child_cpu(cfg: &Config, b: shmproc::manager::ManagerBuilder) -> Result<Manager, String> {
    if let Some(c) = cfg.child_cpu {
        let _ = os::pin_to_cpu(c);
    }
    let m = b.start_method(shmproc::process::StartMethod::Fork).start().map_err(err);
    if let Some(c) = cfg.parent_cpu {
        let _ = os::pin_to_cpu(c);
    }
    m
}

fn dict_local(cfg: &Config) -> Result<Outcome, String> {
    let m = start_on_child_cpu(cfg, Manager::builder())?;
    let d = m.dict::<u64, u64>().map_err(err)?;
    let r = insert_get(cfg, &d);
    m.shutdown().map_err(err)?;
    r
}

fn dict_tcp(cfg: &Config) -> Result<Outcome, String> {
    let m = start_on_child_cpu(cfg, Manager::builder().address("127.0.0.1:0".parse().map_err(err)?).authkey(KEY))?;
    let addr = m.address().ok_or("no TCP address")?.clone();
    // A remote handle: its proxies talk TCP only.
    let remote = Manager::connect(&addr, KEY).map_err(err)?;
    let d = remote.named("bench").dict::<u64, u64>().map_err(err)?;
    let r = insert_get(cfg, &d);
    drop((d, remote));
    m.shutdown().map_err(err)?;
    r
}

/// Python: prints the median, p99 and count of the per-pair times (ns) of
/// `d[k] = v; d[k]` (three numbers: a long list would fill the stdout pipe
/// while the runner waits).
const PYTHON_DICT: &str = r#"
import multiprocessing as mp, multiprocessing.managers as mm, os, sys, time
if __name__ == "__main__":
    os.sched_setaffinity(0, range(os.cpu_count()))
    secs = float(sys.argv[2])
    if sys.argv[1] == "tcp":
        m = mm.SyncManager(address=("127.0.0.1", 0), authkey=b"bench authkey")
    else:
        m = mm.SyncManager()
    m.start()
    d = m.dict()
    out, i = [], 0
    end = time.perf_counter() + secs
    prev = time.perf_counter()
    while prev < end:
        d[i & 1023] = i
        if d[i & 1023] != i:
            sys.exit("lost")
        now = time.perf_counter()
        out.append(int((now - prev) * 1e9))
        prev = now
        i += 1
    m.shutdown()
    out = sorted(out[len(out) // 10:])
    print(out[len(out) // 2], out[round((len(out) - 1) * 0.99)], len(out))
"#;

fn python_dict(cfg: &Config, mode: &str) -> Result<Outcome, String> {
    let secs = cfg.latency_time().as_secs_f64().to_string();
    let child = match std::process::Command::new("python3")
        .args(["-c", PYTHON_DICT, mode, &secs])
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("skipped: python3 not found".into()),
        Err(e) => return Err(format!("python3: {e}")),
    };
    let mut child = child;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while child.try_wait().map_err(err)?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("python3 did not finish in time; killed".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().map_err(err)?;
    if !out.status.success() {
        return Err(format!("python3 failed: {}", out.status));
    }
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match v[..] {
        [median, p99, runs] if runs > 0.0 => {
            Ok(Outcome { metric: Metric::RttNs, median, p99: Some(p99), runs: runs as usize })
        }
        _ => Err("python3 printed no figures".into()),
    }
}

fn dict_python_local(cfg: &Config) -> Result<Outcome, String> {
    python_dict(cfg, "local")
}

fn dict_python_tcp(cfg: &Config) -> Result<Outcome, String> {
    python_dict(cfg, "tcp")
}

fn rounds(cfg: &Config) -> usize {
    if cfg.quick {
        10_000
    } else {
        50_000
    }
}

fn conn_bare(cfg: &Config) -> Result<Outcome, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = l.local_addr().map_err(err)?;
    let mut child = os::fork_child(cfg.child_cpu, move || {
        let Ok(mut s) = TcpStream::connect(addr) else { return 2 };
        let _ = s.set_nodelay(true);
        let mut b = [0u8; 8];
        loop {
            match s.read_exact(&mut b) {
                Ok(()) => {
                    if s.write_all(&b).is_err() {
                        return 3;
                    }
                }
                Err(_) => return 0,
            }
        }
    })
    .map_err(err)?;
    let (mut s, _) = l.accept().map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    let n = rounds(cfg);
    let (r, _) = os::watched(&child, CHILD_TIMEOUT, || -> Result<Vec<f64>, String> {
        let mut samples = Vec::with_capacity(n);
        let mut b = [0u8; 8];
        for i in 0..n + n / 10 {
            let t0 = Instant::now();
            s.write_all(&(i as u64).to_le_bytes()).map_err(err)?;
            s.read_exact(&mut b).map_err(err)?;
            if i >= n / 10 {
                samples.push(t0.elapsed().as_nanos() as f64);
            }
        }
        Ok(samples)
    });
    drop(s);
    let samples = r?;
    child.wait_timeout(CHILD_TIMEOUT)?;
    Ok(latency(Metric::RttNs, samples))
}

fn conn_shmproc(cfg: &Config) -> Result<Outcome, String> {
    let l = Listener::bind(&"127.0.0.1:0".parse().map_err(err)?, KEY).map_err(err)?;
    let addr = l.address().clone();
    let mut child = os::fork_child(cfg.child_cpu, move || {
        let Ok(c) = Client::connect(&addr, KEY) else { return 2 };
        loop {
            match c.recv_bytes() {
                Ok(b) => {
                    if c.send_bytes(&b).is_err() {
                        return 3;
                    }
                }
                Err(_) => return 0,
            }
        }
    })
    .map_err(err)?;
    let c = l.accept().map_err(err)?;
    let n = rounds(cfg);
    let (r, _) = os::watched(&child, CHILD_TIMEOUT, || -> Result<Vec<f64>, String> {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t0 = Instant::now();
            c.send_bytes(&(i as u64).to_le_bytes()).map_err(err)?;
            let b = c.recv_bytes().map_err(err)?;
            if b.len() != 8 {
                return Err("short echo".into());
            }
            if i >= n / 10 {
                samples.push(t0.elapsed().as_nanos() as f64);
            }
        }
        Ok(samples)
    });
    c.close();
    let samples = r?;
    child.wait_timeout(CHILD_TIMEOUT)?;
    Ok(latency(Metric::RttNs, samples))
}
