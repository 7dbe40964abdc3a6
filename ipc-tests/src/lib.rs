//! Shared helpers for shmproc's multi-process tests. The helper binaries that
//! play roles in those tests live in `src/bin/`.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A segment name unique to this test process and call: `shmproc-test-<tag>-<pid>-<n>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Moves the calling process into a private mount namespace (everything
/// below `/` private, so nothing propagates back) and mounts a tmpfs with
/// `options` (e.g. `c"size=16m"`, or `c""`) over `target`. For the probes
/// that need a small `/dev/shm` or a `/proc` that shows nothing; call it
/// while the process is single-threaded, as `unshare(CLONE_NEWNS)` wants.
/// Err: why the OS refused (the caller skips).
pub fn private_tmpfs(target: &std::ffi::CStr, options: &std::ffi::CStr) -> Result<(), String> {
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error()));
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!("make / private: {}", std::io::Error::last_os_error()));
        }
        let (src, fs) = (c"tmpfs", c"tmpfs");
        if libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, options.as_ptr().cast()) != 0 {
            return Err(format!("mount a tmpfs on {target:?}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Removes a named segment on drop (for names the test does not own through a handle).
#[derive(Debug)]
pub struct UnlinkOnDrop(pub String);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = shmproc::unlink(&self.0);
    }
}

/// Waits for `child` at most `timeout`; kills it and panics if it is still running.
pub fn wait_child(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not finish within {timeout:?}; killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `cmd` to completion within `timeout`, returning (status, stdout, stderr).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    use std::io::Read;
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let st = wait_child(&mut child, timeout);
    (st, t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default())
}

/// Exit code of a probe binary whose OS refused what it needs (a namespace,
/// a mount): the test prints the probe's reason and skips.
pub const PROBE_SKIP: i32 = 77;

/// Runs a probe binary (one that sets up a private namespace and checks
/// inside it) within `timeout`. `None`: it skipped ([`PROBE_SKIP`]), and why
/// is printed; else (status, stdout, stderr).
pub fn run_probe(path: &str, timeout: Duration) -> Option<(ExitStatus, String, String)> {
    let (st, out, err) = run_with_timeout(&mut Command::new(path), timeout);
    if st.code() == Some(PROBE_SKIP) {
        println!("skipped: {}", out.trim());
        return None;
    }
    Some((st, out, err))
}

/// Forks; the child runs `f` and `_exit`s with its return value (101 on panic).
/// Returns the child's pid. The child must not rely on locks other threads of
/// the test harness may hold: keep `f` to shmproc calls and plain computation.
pub fn fork_run(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` (shmproc calls, no locks shared with other
    // harness threads beyond glibc's fork-safe malloc) and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: end the child at once without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// How a forked child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Waits at most `timeout` for forked child `pid`; SIGKILLs it and panics on timeout.
pub fn wait_pid(pid: libc::pid_t, timeout: Duration) -> Ended {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            return if libc::WIFEXITED(status) {
                Ended::Code(libc::WEXITSTATUS(status))
            } else {
                Ended::Signal(libc::WTERMSIG(status))
            };
        }
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("forked child {pid} did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub mod queue_common;
