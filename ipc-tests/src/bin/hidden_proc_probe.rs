//! Runs in a private mount namespace whose `/proc` is an empty tmpfs (as a
//! `hidepid` mount shows another user's processes: not at all) and checks
//! that a peer `/proc` cannot show still counts as alive wherever it
//! exists: a mutex whose live owner cannot be seen is not taken over, and a
//! barrier party that cannot be seen does not break the barrier.
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
    // SAFETY: plain syscalls with valid NUL-terminated strings; this process is
    // single-threaded here (nothing spawned yet), as unshare(CLONE_NEWNS) wants.
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
        let (src, dst, fs) = (c"tmpfs", c"/proc", c"tmpfs");
        if libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) != 0 {
            return Err(format!("mount a tmpfs on /proc: {}", std::io::Error::last_os_error()));
        }
    }
    if std::path::Path::new("/proc/1/stat").exists() {
        return Err("/proc still shows process 1 after the mount".into());
    }
    Ok(())
}

fn checks(m: &Mutex<u64>, b: &Barrier) -> Result<(), String> {
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
    // Generation 0, before /proc is hidden: the caller sees us arrive.
    b.wait_timeout(Duration::from_secs(20)).expect("generation 0");
    if let Err(why) = hide_proc() {
        println!("{why}");
        std::process::exit(SKIP);
    }
    if let Err(why) = checks(&m, &b) {
        eprintln!("{why}");
        std::process::exit(1);
    }
}
