//! Role for `tests/process_daemon.rs`: starts one child that sleeps, prints
//! its pid, and sleeps until the test kills this process.
//!
//! Usage: `process_daemon_parent <fork|spawn|forkserver> <daemon|plain>`

use std::io::Write;
use std::time::Duration;

use shmproc::process::{Process, StartMethod};

fn sleeper(secs: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(secs));
    secs
}

fn main() {
    shmproc::init();
    let args: Vec<String> = std::env::args().collect();
    let method = match args.get(1).map(String::as_str) {
        Some("fork") => StartMethod::Fork,
        Some("spawn") => StartMethod::Spawn,
        Some("forkserver") => StartMethod::ForkServer,
        other => panic!("unknown start method {other:?}"),
    };
    let daemon = args.get(2).map(String::as_str) == Some("daemon");
    let p = Process::builder(sleeper, 60).start_method(method).daemon(daemon).start().expect("start");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", p.pid()).unwrap();
    out.flush().unwrap();
    drop(out);
    // The test SIGKILLs us long before this ends.
    std::thread::sleep(Duration::from_secs(60));
    std::mem::forget(p);
}
