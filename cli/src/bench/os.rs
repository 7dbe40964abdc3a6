//! Platform calls of the bench tool (fork, CPU pinning, pipes, sockets).
//!
//! The library keeps its system calls in `src/sys/`; the bench binary is a
//! separate target whose few direct calls live here, in one file.

use std::io;
use std::time::{Duration, Instant};

/// A forked child process running a bench role.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Forks; the child pins itself to `cpu` (if any), runs `f`, and `_exit`s with
/// its return value (101 if it panicked). Call only while no other thread of
/// this process holds a lock the child needs (the bench runner is single-threaded).
pub fn fork_child(cpu: Option<usize>, f: impl FnOnce() -> i32) -> io::Result<Child> {
    // SAFETY: the bench runner is single-threaded when it forks; the child only
    // runs `f` and then `_exit`s without unwinding into the parent's frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        if let Some(c) = cpu {
            let _ = pin_to_cpu(c);
        }
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: `_exit` ends the child at once, without running the parent's
        // atexit handlers or destructors twice.
        unsafe { libc::_exit(code) };
    }
    Ok(Child { pid, reaped: false })
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits up to `timeout` for the child; kills it (SIGKILL) if it is still
    /// running then. Returns its exit code, or Err if it was killed or failed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with WNOHANG; `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                if libc::WIFEXITED(status) {
                    return Ok(libc::WEXITSTATUS(status));
                }
                return Err(format!("bench child ended by signal {}", libc::WTERMSIG(status)));
            }
            if r < 0 {
                self.reaped = true;
                return Err(format!("waitpid: {}", io::Error::last_os_error()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err("bench child did not finish in time; killed".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs and reaps the child.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling and reaping our own, not yet reaped, child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
        self.reaped = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
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
#[allow(dead_code)] // for other areas' cases (cpu_pct figures)
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

/// Kills a child if the parent has not disarmed it within a time limit.
///
/// A parent blocked in `read` or `write` on a pipe or socket shared with a
/// stuck child cannot check a deadline itself; once the watchdog kills the
/// child, the kernel closes the child's ends and the parent's call returns
/// EOF or `EPIPE` (Rust programs ignore `SIGPIPE`). Arm it only after the
/// fork: the thread must not exist while the process forks.
#[derive(Debug)]
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Watchdog {
    /// Starts a thread that SIGKILLs `pid` after `limit` unless disarmed first.
    pub fn arm(pid: i32, limit: Duration) -> Watchdog {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // SAFETY: signalling our own child, which the parent has not
                // reaped yet (the parent disarms before it waits for the child).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            false
        });
        Watchdog { disarm: Some(tx), thread: Some(thread) }
    }

    /// Stops the watchdog; returns whether it had fired (killed the child).
    pub fn disarm(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
        self.thread.take().map(|t| t.join().unwrap_or(false)).unwrap_or(false)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Closes a raw fd that this process inherited but does not own as a Rust
/// value (a forked child closing the parent's ends of a pipe or socket).
pub fn close_raw(fd: i32) {
    // SAFETY: called in a forked child on an fd number it inherited; no Rust
    // value in the child uses that fd afterwards (the parent's values owning
    // it are never touched again in the child, which leaves through `_exit`).
    unsafe { libc::close(fd) };
}

/// Clock ticks per second of `/proc` start times (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that never exits (only async-signal-safe calls after the fork).
    fn stuck_child() -> Child {
        fork_child(None, || loop {
            // SAFETY: pause has no preconditions; it sleeps until a signal.
            unsafe { libc::pause() };
        })
        .expect("fork")
    }

    #[test]
    fn wait_timeout_kills_a_stuck_child() {
        let mut c = stuck_child();
        let e = c.wait_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        // Reaped: the pid no longer names our child.
        // SAFETY: waitpid with WNOHANG on a pid we already reaped just fails.
        assert_eq!(unsafe { libc::waitpid(c.pid(), std::ptr::null_mut(), libc::WNOHANG) }, -1);
    }

    #[test]
    fn watchdog_fires_only_when_not_disarmed() {
        let mut c = stuck_child();
        let w = Watchdog::arm(c.pid(), Duration::from_millis(50));
        let e = c.wait_timeout(Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("signal 9"), "{e}");
        assert!(w.disarm(), "the watchdog reports that it fired");

        let mut c = fork_child(None, || 7).expect("fork");
        let w = Watchdog::arm(c.pid(), Duration::from_secs(10));
        assert!(!w.disarm());
        assert_eq!(c.wait_timeout(Duration::from_secs(10)), Ok(7));
    }
}
