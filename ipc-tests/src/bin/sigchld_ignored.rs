//! A program that ignores `SIGCHLD` (its children are reaped by the kernel)
//! starts a ForkServer child: the server must still report how the child
//! ended, and the child must see the program's disposition (ignored).
//! Prints `ok` and exits 0, or says what went wrong and exits 1.

use std::time::Duration;

use shmproc::process::{Process, StartMethod};

/// Whether this process ignores SIGCHLD (bit 17 of `SigIgn` in /proc).
fn ignores_sigchld(_: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (libc::SIGCHLD - 1)) != 0
}

fn main() {
    shmproc::init();
    // SAFETY: installs SIG_IGN; no handler code runs.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut p = match Process::builder(ignores_sigchld, 0u32).start_method(StartMethod::ForkServer).start() {
        Ok(p) => p,
        Err(e) => {
            println!("start failed: {e}");
            std::process::exit(1);
        }
    };
    match p.join_timeout(Duration::from_secs(20)) {
        Ok(true) => println!("ok"),
        Ok(false) => {
            println!("the child did not inherit the ignored SIGCHLD");
            std::process::exit(1)
        }
        Err(e) => {
            println!("join failed: {e}");
            std::process::exit(1)
        }
    }
}
