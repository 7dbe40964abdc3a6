//! Runs in a private mount namespace whose `/proc` is an empty tmpfs (as a
//! `hidepid` mount shows another user's processes: not at all) and checks
//! that a peer `/proc` cannot show still counts as alive while it runs: a
//! mutex whose live owner cannot be seen is not taken over, and a barrier
//! party that cannot be seen does not break the barrier; and as dead once
//! it has exited: the lock of an owner that exited and was not reaped (a
//! zombie, whose pid stays in use) is taken over.
//!
//! `hidden_proc_probe <mutex name> <barrier name>`: the caller holds the
//! mutex, and arrives at the barrier (of two) with this probe at generation
//! 0, then only some 800 ms after the probe started waiting at generation 1:
//! meanwhile the probe, owed an arrival by a party it cannot see, looks.
//!
//! Exit codes: 0 all checks passed, 1 a check failed (reason on stderr),
//! 77 the OS refused the namespace or the mount (reason on stdout).

use std::time::Duration;

use shmproc::{Barrier, BarrierError, LockError, Mutex};

const SKIP: i32 = ipc_tests::PROBE_SKIP;

fn hide_proc() -> Result<(), String> {
    // Single-threaded here: the probe spawns no thread.
    ipc_tests::private_tmpfs(c"/proc", c"")?;
    if std::path::Path::new("/proc/1/stat").exists() {
        return Err("/proc still shows process 1 after the mount".into());
    }
    Ok(())
}

/// A child locks `z` and exits without unlocking; we do not reap it.
fn zombie_owner(z: &Mutex<u64>) -> Result<(), String> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: this process is single-threaded (the probe spawns no thread);
    // the child only locks, writes one byte and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let g = z.lock_timeout(Duration::from_secs(5));
        let code = if g.is_ok() { 0 } else { 1 };
        std::mem::forget(g);
        // SAFETY: one byte from a live buffer into our pipe; then `_exit`,
        // which has no preconditions.
        unsafe {
            libc::write(fds[1], [1u8].as_ptr().cast(), 1);
            libc::_exit(code)
        };
    }
    // The child holds the lock (or failed to) once its byte arrives (or the
    // pipe reports its end closed).
    let mut byte = [0u8; 1];
    // SAFETY: reads at most one byte into a live buffer; closes our ends.
    unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], byte.as_mut_ptr().cast(), 1);
        libc::close(fds[0]);
    }
    let r = match z.lock_timeout(Duration::from_secs(20)) {
        Err(LockError::OwnerDied(_)) => Ok(()),
        Err(LockError::Timeout) => Err("the lock of an owner that exited (a zombie) was never taken over".into()),
        Ok(_) => Err("locked a mutex the child should have held".into()),
        Err(e) => Err(format!("lock_timeout on the zombie's lock: {e}")),
    };
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        return Err("the child could not lock".into());
    }
    r
}

fn checks(m: &Mutex<u64>, b: &Barrier, z: &Mutex<u64>) -> Result<(), String> {
    zombie_owner(z)?;
    match m.lock_timeout(Duration::from_millis(300)) {
        Err(LockError::Timeout) => {}
        Err(LockError::OwnerDied(_)) => return Err("took over the lock of a live owner /proc cannot show".into()),
        Ok(_) => return Err("locked a mutex its live owner holds".into()),
        Err(e) => return Err(format!("lock_timeout: {e}")),
    }
    // The caller owes generation 1 and comes late: our dead-party looks
    // (one per 50 ms slice) see its entry, but not its /proc.
    match b.wait_timeout(Duration::from_secs(20)) {
        Ok(_) => Ok(()),
        Err(BarrierError::Broken) => Err("a party /proc cannot show broke the barrier".into()),
        Err(e) => Err(format!("barrier: {e}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let m = Mutex::<u64>::open(&args[1]).expect("open the mutex");
    let b = Barrier::open(&args[2]).expect("open the barrier");
    let z = Mutex::anonymous(0u64).expect("an anonymous mutex");
    // Generation 0, before /proc is hidden: the caller sees us arrive.
    b.wait_timeout(Duration::from_secs(20)).expect("generation 0");
    if let Err(why) = hide_proc() {
        println!("{why}");
        std::process::exit(SKIP);
    }
    if let Err(why) = checks(&m, &b, &z) {
        eprintln!("{why}");
        std::process::exit(1);
    }
}
