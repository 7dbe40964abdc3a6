//! Bench cases of the [`Manager`](shmproc::manager::Manager) and of
//! [`Listener`](shmproc::connection::Listener)/[`Client`](shmproc::connection::Client):
//!
//! * `manager-dict`: one proxy `insert` + `get` pair on a managed dict from
//!   this process (one round trip of the sampler is the pair), local
//!   (transport `manager`: over the shared-memory pipe the server hands over)
//!   paired with Python's `multiprocessing.Manager().dict()` (`python-mp`, the
//!   scenario's baseline: a Unix socket; where `python3` is on the PATH).
//! * `manager-dict-tcp`: the same through TCP loopback with authentication
//!   (`manager-tcp`: a remote handle from [`Manager::connect`]) paired with
//!   Python's `SyncManager` on `127.0.0.1` (`python-mp-tcp`, the baseline).
//! * `connection-tcp`: an 8-byte ping-pong between two processes over an
//!   authenticated `Listener`/`Client` connection (`shmproc-conn`) paired
//!   with a bare TCP socket pair (`tcp-bare`, the baseline; both with
//!   `TCP_NODELAY`).
//!
//! Placement: the manager's server is started (fork) from this thread while
//! it is pinned to the child CPU, so the server and its threads run there, as
//! every two-process case places its child; the proxy calls come from the
//! parent CPU. Python's script and its server run on every CPU of the run
//! (the script resets the affinity it inherits, see `python.rs`).
//! `connection-tcp`'s echo child is an ordinary bench child (pinned, stopped
//! between blocks).
//!
//! Fair blocks: a manager's server is the manager's own process, not a bench
//! child, so the runner does not `SIGSTOP` it between blocks; it needs no
//! stopping: between blocks no call is in flight and the server's thread for
//! this client is blocked in its receive (the shared-memory pipe's adaptive
//! wait: a short spin, then a futex sleep; a socket read for TCP), as
//! Python's server is blocked in its socket read. The block watchdog still
//! kills the server (or the script) if a block overruns, which ends the
//! blocked call with an error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use shmproc::connection::{Client, Listener};
use shmproc::manager::{DictProxy, Manager, ManagerBuilder};

use super::{os, python, Case, Config, Metric, Session, Work};

/// The manager's and the connection's cases.
pub fn cases() -> Vec<Case> {
    use Metric::RttNs;
    vec![
        Case::new("manager-dict", "python-mp", RttNs, |c| python::start(c, &python_dict("SyncManager(ctx=ctx)"))),
        Case::new("manager-dict", "manager", RttNs, dict_local),
        Case::new("manager-dict-tcp", "python-mp-tcp", RttNs, |c| {
            python::start(
                c,
                &python_dict(r#"SyncManager(address=("127.0.0.1", 0), authkey=b"bench authkey", ctx=ctx)"#),
            )
        }),
        Case::new("manager-dict-tcp", "manager-tcp", RttNs, dict_tcp),
        Case::new("connection-tcp", "tcp-bare", RttNs, conn_bare),
        Case::new("connection-tcp", "shmproc-conn", RttNs, conn_shmproc),
    ]
}

const KEY: &[u8] = b"bench authkey, 32 bytes or so...";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Keys cycle through this many entries (the dict stays small).
const KEYS: u64 = 1024;

/// One sampler round trip: `insert` then `get` of the same key, checked.
fn insert_get(d: &DictProxy<u64, u64>, i: u64) -> Result<(), String> {
    d.insert(&(i % KEYS), &i).map_err(err)?;
    if d.get(&(i % KEYS)).map_err(err)? != Some(i) {
        return Err("the dict lost a value".into());
    }
    Ok(())
}

/// Starts the manager's server pinned to `cfg.child_cpu`, as every
/// two-process case places its child (the runner pins this thread to
/// `cfg.parent_cpu`; a server inheriting that would share the client's CPU).
fn start_on_child_cpu(cfg: &Config, b: ManagerBuilder) -> Result<Manager, String> {
    if let Some(c) = cfg.child_cpu {
        os::pin_to_cpu(c).map_err(|e| format!("pinning to CPU {c}: {e}"))?;
    }
    let m = b.start_method(shmproc::process::StartMethod::Fork).start().map_err(err);
    if let Some(c) = cfg.parent_cpu {
        os::pin_to_cpu(c).map_err(|e| format!("pinning back to CPU {c}: {e}"))?;
    }
    m
}

/// The session around a started manager `m` and its dict `d`: `d`'s calls are
/// the work, the server is watched, and shut down at the end.
fn dict_session(cfg: &Config, m: Manager, d: DictProxy<u64, u64>) -> Result<Session, String> {
    let pid = m.pid().ok_or("the manager has no server pid")?;
    Ok(Session::new(Work::RoundTrip(Box::new(move |i| insert_get(&d, i))))
        .watch(pid)
        // Errors have nowhere to go from here; the server is reaped either way.
        .on_finish(move || drop(m.shutdown()))
        .placement(match (cfg.parent_cpu, cfg.child_cpu) {
            (Some(p), Some(c)) => format!("client CPU {p}, server CPU {c}"),
            _ => "unpinned, one CPU".into(),
        }))
}

fn dict_local(cfg: &Config) -> Result<Session, String> {
    let m = start_on_child_cpu(cfg, Manager::builder())?;
    let d = m.dict::<u64, u64>().map_err(err)?;
    dict_session(cfg, m, d)
}

fn dict_tcp(cfg: &Config) -> Result<Session, String> {
    let m = start_on_child_cpu(cfg, Manager::builder().address("127.0.0.1:0".parse().map_err(err)?).authkey(KEY))?;
    let addr = m.address().ok_or("no TCP address")?.clone();
    // A remote handle: its proxies talk TCP only.
    let remote = Manager::connect(&addr, KEY).map_err(err)?;
    let d = remote.named("bench").dict::<u64, u64>().map_err(err)?;
    drop(remote);
    dict_session(cfg, m, d)
}

/// Python's dict round trips for `python.rs`'s driver: `{MANAGER}` is the
/// `SyncManager(...)` call. A block runs batches of 32 `d[k] = v; d[k]` pairs
/// and prints the mean time of one pair (ns).
fn python_dict(manager: &str) -> String {
    PYTHON_DICT.replace("{MANAGER}", manager)
}

const PYTHON_DICT: &str = r#"
import multiprocessing.managers as mm
def setup():
    global m, d
    m = mm.{MANAGER}
    m.start()
    d = m.dict()
def block(secs):
    n, t0 = 0, time.perf_counter()
    end = t0 + secs
    while True:
        for _ in range(32):
            k = n % 1024
            d[k] = n
            if d[k] != n:
                sys.exit("the dict lost a value")
            n += 1
        t = time.perf_counter()
        if t >= end:
            return (t - t0) / n * 1e9
"#;

const MSG: u64 = 0x0123_4567_89ab_cdef;

fn conn_bare(cfg: &Config) -> Result<Session, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = l.local_addr().map_err(err)?;
    let child = os::fork_child(cfg.child_cpu, move || {
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
    drop(l);
    s.set_nodelay(true).map_err(err)?;
    let mut b = [0u8; 8];
    // Dropping the work closes `s`: the child reads EOF and exits.
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        s.write_all(&MSG.to_le_bytes()).map_err(err)?;
        s.read_exact(&mut b).map_err(err)?;
        if u64::from_le_bytes(b) != MSG {
            return Err("wrong echo".into());
        }
        Ok(())
    })))
    .child(child)
    .placement(cfg.pair_placement()))
}

fn conn_shmproc(cfg: &Config) -> Result<Session, String> {
    let l = Listener::bind(&"127.0.0.1:0".parse().map_err(err)?, KEY).map_err(err)?;
    let addr = l.address().clone();
    let child = os::fork_child(cfg.child_cpu, move || {
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
    drop(l);
    // Dropping the work closes `c`: the child sees end of stream and exits.
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        c.send_bytes(&MSG.to_le_bytes()).map_err(err)?;
        let b = c.recv_bytes().map_err(err)?;
        if b[..] != MSG.to_le_bytes() {
            return Err(format!("wrong echo ({} bytes)", b.len()));
        }
        Ok(())
    })))
    .child(child)
    .placement(cfg.pair_placement()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Bounds a test's wait on a session.
    const TEST_LIMIT: Duration = Duration::from_secs(60);

    fn cfg() -> Config {
        Config { quick: true, parent_cpu: None, child_cpu: None, cpus: os::allowed_cpus() }
    }

    fn one_block(mut s: Session) {
        let f = s.block(Duration::from_millis(5), TEST_LIMIT).expect("a block");
        assert!(f.figure > 0.0 && !f.samples.is_empty(), "{f:?}");
        s.pause();
        let f = s.block(Duration::from_millis(5), TEST_LIMIT).expect("a block after a pause");
        assert!(f.figure > 0.0, "{f:?}");
        s.finish().expect("the children exit cleanly");
    }

    #[test]
    fn connection_sessions_echo_and_end_their_children() {
        one_block(conn_bare(&cfg()).expect("tcp-bare"));
        one_block(conn_shmproc(&cfg()).expect("shmproc-conn"));
    }

    #[test]
    fn manager_sessions_round_trip_and_stop_their_server() {
        one_block(dict_local(&cfg()).expect("manager"));
        one_block(dict_tcp(&cfg()).expect("manager-tcp"));
    }

    #[test]
    fn the_python_dict_script_names_its_manager() {
        let s = python_dict("SyncManager(ctx=ctx)");
        assert!(s.contains("m = mm.SyncManager(ctx=ctx)\n") && !s.contains("{MANAGER}"), "{s}");
    }
}
