//! Runs in a private mount namespace whose `/dev/shm` is a 16 MiB tmpfs and
//! checks that objects too large for it fail at create with
//! `OpenError::NoSpace` (no SIGBUS), while small objects still work.
//!
//! Exit codes: 0 all checks passed, 1 a check failed (reason on stderr),
//! 77 the OS refused the namespace or the mount (reason on stdout).

use std::time::Duration;

use shmproc::{Array, OpenError, Pipe, Queue};

const SKIP: i32 = ipc_tests::PROBE_SKIP;

fn private_small_shm() -> Result<(), String> {
    // Single-threaded here: nothing spawned yet.
    ipc_tests::private_tmpfs(c"/dev/shm", c"size=16m")
}

fn expect_no_space<T: std::fmt::Debug>(what: &str, min_requested: u64, r: Result<T, OpenError>) -> Result<(), String> {
    match r {
        Err(OpenError::NoSpace { requested, available }) => {
            println!("{what}: NoSpace requested={requested} available={available}");
            if requested < min_requested {
                return Err(format!("{what}: requested {requested} < {min_requested}"));
            }
            if available > 16 << 20 {
                return Err(format!("{what}: available {available} > 16 MiB"));
            }
            Ok(())
        }
        other => Err(format!("{what}: expected NoSpace, got {other:?}")),
    }
}

fn checks() -> Result<(), String> {
    let pid = std::process::id();
    let n = |t: &str| format!("shmproc-test-nospace-{t}-{pid}");
    expect_no_space("array 64 MiB", 64 << 20, Array::<u8>::builder().name(n("arr")).create_zeroed(64 << 20))?;
    expect_no_space("queue 32 MiB", 32 << 20, Queue::<u64>::builder().name(n("q")).capacity(4 << 20).create())?;
    expect_no_space("pipe 2x32 MiB", 64 << 20, Pipe::builder().name(n("pipe")).ring_size(32 << 20).create())?;
    // Nothing half-made is left behind, so the small objects below have room.
    let left: Vec<_> = std::fs::read_dir("/dev/shm").map_err(|e| e.to_string())?.flatten().collect();
    if !left.is_empty() {
        return Err(format!("{} objects left in /dev/shm after failed creates", left.len()));
    }
    let a = Array::<u8>::builder().name(n("arr-small")).create_zeroed(1 << 20).map_err(|e| e.to_string())?;
    a.set(5, 9).map_err(|e| e.to_string())?;
    let q = Queue::<u64>::builder().name(n("q-small")).capacity(1024).create().map_err(|e| e.to_string())?;
    q.send(7).map_err(|e| format!("{e:?}"))?;
    if q.recv_timeout(Duration::from_secs(5)).map_err(|e| format!("{e:?}"))? != 7 {
        return Err("queue round trip".into());
    }
    let (x, y) = Pipe::builder().name(n("pipe-small")).ring_size(1 << 20).pair().map_err(|e| e.to_string())?;
    x.send_bytes(b"hello").map_err(|e| format!("{e:?}"))?;
    let got = y.recv_bytes_timeout(Duration::from_secs(5)).map_err(|e| format!("{e:?}"))?;
    if got != b"hello" {
        return Err("pipe round trip".into());
    }
    println!("small objects work");
    Ok(())
}

fn main() {
    if let Err(why) = private_small_shm() {
        println!("SKIP: {why}");
        std::process::exit(SKIP);
    }
    if let Err(why) = checks() {
        eprintln!("FAILED: {why}");
        std::process::exit(1);
    }
}
