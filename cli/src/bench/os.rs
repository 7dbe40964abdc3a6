//! Processes and platform calls of the bench runner.
//!
//! Two-process cases fork their child with the library's own
//! [`Process::closure`] ([`StartMethod::Fork`]): the same fork, report and
//! reap path a shmproc user gets, so the bench re-implements none of it.
//! [`Child`] adds what a bench case wants on top: the child pins itself
//! before its role runs, a bounded wait that kills a stuck child, and a kill
//! on drop, and `SIGSTOP`/`SIGCONT` between blocks. [`watched_pids`] kills children that a blocked `read`/`write` of the
//! parent waits on, through [`Process::kill`].
//!
//! What the baselines must do with bare system calls, by definition, goes
//! through `rustix` directly (the library keeps its own calls private in
//! `src/sys/`): CPU pinning (`sched_setaffinity`), the shared futex of
//! `raw-futex`, `pipe(2)` for `os-pipe`, the process CPU clock for `idle-cpu`,
//! and closing inherited fds in a forked child. The bench's only `libc`
//! calls are the `fork` and `_exit` of `raw-fork` in `process.rs`, which says why.

use std::io;
use std::time::Duration;

use shmproc::process::{JoinError, Process, StartError, StartMethod};

/// A forked child process running a bench role.
#[derive(Debug)]
pub struct Child {
    process: Process<i32>,
    done: bool,
}

/// Forks a child (shmproc's [`StartMethod::Fork`]) that pins itself to `cpu`
/// (if any) and runs `f`; its return value is the child's result, which
/// [`Child::wait_timeout`] returns. Call only while no other thread of this
/// process holds a lock the child needs (the bench runner is single-threaded
/// when it forks).
pub fn fork_child(cpu: Option<usize>, f: impl FnOnce() -> i32 + 'static) -> Result<Child, StartError> {
    let process = Process::closure(move || {
        if let Some(c) = cpu {
            let _ = pin_to_cpu(c);
        }
        f()
    })
    .start_method(StartMethod::Fork)
    .start()?;
    Ok(Child { process, done: false })
}

impl Child {
    /// Waits up to `timeout` for the child; kills it (SIGKILL) if it is still
    /// running then. Returns its result, or Err if it was killed, panicked or failed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<i32, String> {
        let r = self.process.join_timeout(timeout);
        if matches!(r, Err(JoinError::Timeout)) {
            self.kill();
            return Err("bench child did not finish in time; killed".into());
        }
        self.done = true;
        match r {
            Ok(code) => Ok(code),
            Err(JoinError::Died { status }) => match status.signal() {
                Some(sig) => Err(format!("bench child ended by signal {sig}")),
                None => Err(format!("bench child {status} without a result")),
            },
            Err(JoinError::Panicked { message, .. }) => Err(format!("bench child panicked: {message}")),
            Err(e) => Err(format!("bench child: {e}")),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the child (`SIGSTOP`) between the blocks of a paired case.
    pub fn signal_stop(&self) {
        if !self.done {
            signal(self.pid(), rustix::process::Signal::STOP);
        }
    }

    /// Continues a stopped child (`SIGCONT`).
    pub fn signal_cont(&self) {
        if !self.done {
            signal(self.pid(), rustix::process::Signal::CONT);
        }
    }

    /// SIGKILLs and reaps the child.
    pub fn kill(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let _ = self.process.kill();
        // Reaps it; a killed child ends at once.
        let _ = self.process.join_timeout(Duration::from_secs(10));
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `work` on this thread while a watchdog thread kills `child` if `work`
/// has not returned within `limit`; returns what `work` returned and whether
/// the watchdog fired (killed the child).
///
/// A parent blocked in `read` or `write` on a pipe or socket shared with a
/// stuck child cannot check a deadline itself; once the watchdog kills the
/// child, the kernel closes the child's ends and the parent's call returns
/// EOF or `EPIPE` (Rust programs ignore `SIGPIPE`). Use it only after the
/// fork: the thread must not exist while the process forks.
#[cfg(test)]
pub fn watched<R>(child: &Child, limit: Duration, work: impl FnOnce() -> R) -> (R, bool) {
    watched_pids(&[child.pid()], limit, work)
}

/// Sends `sig` to `pid` (errors ignored: the process may have exited).
fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Runs `work` while a watchdog thread waits (none when `pids` is empty):
/// SIGKILLs every one of `pids` if `work` has not returned within `limit`.
/// The pids must be unreaped children of this process (so not reused).
pub fn watched_pids<R>(pids: &[u32], limit: Duration, work: impl FnOnce() -> R) -> (R, bool) {
    if pids.is_empty() {
        return (work(), false);
    }
    let (disarm, armed) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let dog = s.spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                for &p in pids {
                    signal(p, rustix::process::Signal::KILL);
                }
                return true;
            }
            false
        });
        let r = work();
        let _ = disarm.send(());
        (r, dog.join().unwrap_or(false))
    })
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    pin_to_cpus(&[cpu])
}

/// Lets the calling thread run on any of `cpus`.
pub fn pin_to_cpus(cpus: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// CPUs this process may run on (honouring the affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => vec![0],
    }
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `FUTEX_WAIT` (shared, never `FUTEX_PRIVATE_FLAG`): sleeps while `*word ==
/// expected`, at most `timeout`. Returns on wake-up, timeout, signal or a
/// changed word alike: the caller re-checks its condition and its deadline.
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    use rustix::thread::futex;
    let ts = rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: timeout.subsec_nanos().into() };
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// `FUTEX_WAKE` (shared) of one waiter.
pub fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// Closes a raw fd that this process inherited but does not own as a Rust
/// value (a forked child closing the parent's ends of a pipe or socket).
pub fn close_raw(fd: i32) {
    // SAFETY: called in a forked child on an fd number it inherited; no Rust
    // value in the child uses that fd afterwards (the parent's values owning
    // it are never touched again in the child, which leaves through `_exit`).
    unsafe { rustix::io::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A child that never exits.
    fn stuck_child() -> Child {
        fork_child(None, || loop {
            std::thread::sleep(Duration::from_secs(3600));
        })
        .expect("fork")
    }

    #[test]
    fn wait_timeout_kills_a_stuck_child() {
        let mut c = stuck_child();
        let e = c.wait_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        // Reaped: the pid no longer names our child.
        let pid = rustix::process::Pid::from_raw(c.process.pid() as i32).expect("a pid");
        assert!(rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG).is_err());
    }

    #[test]
    fn watchdog_fires_only_when_not_disarmed() {
        // The child holds the only other end of the socket and never writes:
        // the parent's read returns (EOF) only once the watchdog killed it.
        let (parent_end, child_end) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        parent_end.set_read_timeout(Some(Duration::from_secs(30))).expect("bound the read");
        let mut c = fork_child(None, move || {
            let _held = child_end;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
        .expect("fork");
        let (read, fired) = watched(&c, Duration::from_millis(50), || (&parent_end).read(&mut [0u8; 8]));
        assert!(fired, "the watchdog reports that it fired");
        assert_eq!(read.expect("EOF, not the read timeout"), 0);
        let e = c.wait_timeout(Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("signal 9"), "{e}");

        let mut c = fork_child(None, || 7).expect("fork");
        let (v, fired) = watched(&c, Duration::from_secs(10), || 5);
        assert!(!fired && v == 5);
        assert_eq!(c.wait_timeout(Duration::from_secs(10)), Ok(7));
    }
}
