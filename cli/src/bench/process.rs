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
//! binary's `main`. The fork server is started (and one round run) when the
//! session is set up, and the runner's warm-up block runs the others before timing.

use std::process::Command;
use std::time::{Duration, Instant};

use shmproc::process::{Process, StartMethod};

use super::{Case, Config, Metric, Session, Work};

fn noop(x: u32) -> u32 {
    x
}

/// A session that starts and joins a process per sample (microseconds each),
/// after one untimed round (which starts the fork server).
fn measure(mut once: impl FnMut() -> Result<(), String> + 'static) -> Result<Session, String> {
    once()?;
    Ok(Session::new(Work::Sample(Box::new(move || {
        let t0 = Instant::now();
        once()?;
        Ok(t0.elapsed().as_secs_f64() * 1e6)
    })))
    .placement("parent pinned, children inherit its CPU"))
}

fn shmproc_case(method: StartMethod) -> Result<Session, String> {
    measure(move || {
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

fn fork(_: &Config) -> Result<Session, String> {
    shmproc_case(StartMethod::Fork)
}

fn spawn(_: &Config) -> Result<Session, String> {
    shmproc_case(StartMethod::Spawn)
}

fn forkserver(_: &Config) -> Result<Session, String> {
    shmproc_case(StartMethod::ForkServer)
}

fn raw_fork(_: &Config) -> Result<Session, String> {
    use rustix::process::{waitpid, Pid, WaitOptions};
    measure(|| {
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

fn raw_exec(_: &Config) -> Result<Session, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    measure(move || {
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
        Case::new("spawn-join", "raw-fork", Metric::Us, raw_fork),
        Case::new("spawn-join", "fork", Metric::Us, fork),
        Case::new("spawn-join", "forkserver", Metric::Us, forkserver),
        Case::new("spawn-join", "raw-exec", Metric::Us, raw_exec),
        // Spawn execs the binary: compared with a bare exec of it.
        Case::new("spawn-join", "spawn", Metric::Us, spawn).against("raw-exec"),
    ]
}
