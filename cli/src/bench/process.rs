//! `spawn-join`: start a process running a trivial target and join it
//! (metric `us`, per start+join, median and p99).
//!
//! Transports: `fork`, `spawn`, `forkserver` (shmproc's [`Process`] with each
//! start method), beside the baselines measured in the same run:
//! `raw-fork` (bare `fork` + `_exit` + `waitpid`) and `raw-exec`
//! (`Command::new(current_exe)` of the bench binary, whose `main` exits at
//! once when it sees [`RAW_EXEC_ENV`], before `shmproc::init()`).
//!
//! `raw-fork` is the floor by definition, so it makes the bare calls itself:
//! `fork` and `_exit` through `libc` (rustix has no `fork` for programs that
//! run on libc: its `runtime::kernel_fork` skips glibc's own fork handling,
//! the atfork handlers and allocator locks, which is part of what any fork in
//! this process costs, and leaves glibc's state inconsistent in the child; and
//! `_exit` belongs with it), `waitpid` through rustix.
//! Spawn and ForkServer need `shmproc::init()` at the top of the bench
//! binary's `main`. The fork server is started (and one round run) before
//! timing, as every method gets one untimed warm-up round.

use std::process::Command;
use std::time::{Duration, Instant};

use shmproc::process::{Process, StartMethod};

use super::{latency, Case, Config, Metric, Outcome};

fn noop(x: u32) -> u32 {
    x
}

fn rounds(cfg: &Config, slow: bool) -> usize {
    match (cfg.quick, slow) {
        (true, false) => 40,
        (true, true) => 15,
        (false, false) => 400,
        (false, true) => 100,
    }
}

fn measure(n: usize, mut once: impl FnMut() -> Result<(), String>) -> Result<Outcome, String> {
    once()?; // warm-up (starts the fork server, faults in the code paths)
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        once()?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latency(Metric::Us, samples))
}

fn shmproc_case(method: StartMethod, cfg: &Config) -> Result<Outcome, String> {
    let slow = method == StartMethod::Spawn;
    measure(rounds(cfg, slow), || {
        let mut p =
            Process::builder(noop, 7).start_method(method).start().map_err(|e| format!("{method:?} start: {e}"))?;
        match p.join_timeout(Duration::from_secs(10)) {
            Ok(7) => Ok(()),
            Ok(v) => Err(format!("{method:?}: wrong result {v}")),
            Err(e) => {
                let _ = p.kill();
                Err(format!("{method:?} join: {e}"))
            }
        }
    })
}

fn fork(cfg: &Config) -> Result<Outcome, String> {
    shmproc_case(StartMethod::Fork, cfg)
}

fn spawn(cfg: &Config) -> Result<Outcome, String> {
    shmproc_case(StartMethod::Spawn, cfg)
}

fn forkserver(cfg: &Config) -> Result<Outcome, String> {
    shmproc_case(StartMethod::ForkServer, cfg)
}

fn raw_fork(cfg: &Config) -> Result<Outcome, String> {
    use rustix::process::{waitpid, Pid, WaitOptions};
    measure(rounds(cfg, false), || {
        // SAFETY: the bench runner is single-threaded; the child only calls
        // `_exit`, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: ends the child at once, without unwinding into the parent's frames.
            unsafe { libc::_exit(0) };
        }
        let child = Pid::from_raw(pid).ok_or("fork returned pid 0 in the parent")?;
        match waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((p, st))) if p == child && st.exit_status() == Some(0) => Ok(()),
            Ok(other) => Err(format!("waitpid: {other:?}")),
            Err(e) => Err(format!("waitpid: {e}")),
        }
    })
}

/// Set in the environment of the `raw-exec` child: `main` exits at once.
pub const RAW_EXEC_ENV: &str = "SHMPROC_BENCH_RAW_EXEC";

fn raw_exec(cfg: &Config) -> Result<Outcome, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    measure(rounds(cfg, true), || {
        // The bench binary's `main` exits at once when it sees this variable.
        let st = Command::new(&exe).env(RAW_EXEC_ENV, "1").status().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("raw-exec child: {st}"))
        }
    })
}

/// The `spawn-join` cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: "spawn-join", transport: "raw-fork", run: raw_fork },
        Case { scenario: "spawn-join", transport: "fork", run: fork },
        Case { scenario: "spawn-join", transport: "forkserver", run: forkserver },
        Case { scenario: "spawn-join", transport: "raw-exec", run: raw_exec },
        Case { scenario: "spawn-join", transport: "spawn", run: spawn },
    ]
}
