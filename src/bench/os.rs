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
pub fn process_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
