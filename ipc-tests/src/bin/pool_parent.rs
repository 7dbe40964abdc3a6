//! Role for `tests/pool.rs`: creates a pool of 2, keeps one worker busy,
//! prints its own pid and the workers' pids on one line, and sleeps until
//! the test kills this process with SIGKILL.
//!
//! Usage: `pool_parent <fork|spawn|forkserver>`

use std::io::Write;
use std::time::Duration;

use shmproc::process::StartMethod;
use shmproc::Pool;

fn sleeper(secs: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(secs));
    secs
}

fn main() {
    shmproc::init();
    let method = match std::env::args().nth(1).as_deref() {
        Some("fork") => StartMethod::Fork,
        Some("spawn") => StartMethod::Spawn,
        Some("forkserver") => StartMethod::ForkServer,
        other => panic!("unknown start method {other:?}"),
    };
    let pool = Pool::builder().processes(2).start_method(method).create().expect("pool");
    let busy = pool.apply_async(sleeper, 60);
    let pids: Vec<String> = pool.worker_pids().iter().map(u32::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {}", std::process::id(), pids.join(" ")).unwrap();
    out.flush().unwrap();
    drop(out);
    // The test SIGKILLs us long before this ends.
    std::thread::sleep(Duration::from_secs(60));
    drop(busy);
}
