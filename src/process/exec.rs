//! The re-exec toolkit, shared by [`StartMethod::Spawn`] and
//! [`StartMethod::ForkServer`]: the gate (whether [`crate::init`] was called,
//! and so the default start method), the gate variables' names, the identity
//! of the executable, turning a verified offset back into code, and
//! re-executing `/proc/self/exe`.
//!
//! ## Executable identity
//! `dev:inode:size:mtime_s:mtime_ns` of `/proc/self/exe` (the file the kernel
//! mapped, even if since renamed or deleted). The parent puts its own into the
//! gate variable; the re-executed copy compares it with its own before it
//! turns any offset into a code address, and refuses (exit code 121, nothing
//! run) when they differ. Exec goes through `/proc/self/exe`, so even a binary
//! rebuilt or deleted since the parent started re-executes the parent's file.
//!
//! ## Offsets
//! A target travels as its offset from [`child::anchor`] (see `child.rs`);
//! [`resolve`] accepts an offset only if it lands in the same loaded object as
//! the anchor.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

use super::child::{self, Trampoline};
use crate::sys;

/// How a child process is created. See the [module docs](super) for the
/// trade-offs and the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// `fork()`: fastest; runs closures; restricted in multi-threaded parents.
    Fork,
    /// Re-execute the current binary; its `main` must call [`crate::init`] first.
    Spawn,
    /// Ask a single-threaded server (a re-executed copy of this binary, started
    /// on first use) to fork the child. Needs [`crate::init`] like Spawn.
    ForkServer,
}

impl Default for StartMethod {
    /// `ForkServer` if [`crate::init`] was called in this process, else `Fork`.
    fn default() -> Self {
        if initialized() {
            StartMethod::ForkServer
        } else {
            StartMethod::Fork
        }
    }
}

static INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// Records that this process has the gate ([`crate::init`] was called).
pub(crate) fn mark_initialized() {
    INIT_CALLED.store(true, Ordering::Relaxed);
}

/// Whether this process has the gate, so that a re-executed copy of it
/// runs the target instead of `main`.
pub(crate) fn initialized() -> bool {
    INIT_CALLED.load(Ordering::Relaxed)
}

/// What a re-executed copy says when it reaches shmproc code before `init()`.
pub(crate) const INIT_NOT_FIRST: &str = "a copy of this binary re-executed by shmproc (Spawn or ForkServer) ran other \
     code before shmproc::init(): call shmproc::init() as the first line of main, unconditionally";

/// Whether this process was re-executed by shmproc (it has a gate variable),
/// read once: `init()` removes the variable when it takes it.
pub(crate) fn reexecuted() -> bool {
    // 0: not read yet; 1: no; 2: yes. Not a `OnceLock`: a `fork` while
    // another thread initialised it would leave the child waiting for ever
    // (a race here only reads the environment twice, to the same answer).
    static REEXEC: AtomicU8 = AtomicU8::new(0);
    match REEXEC.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = std::env::var_os(SPAWN_ENV).is_some() || std::env::var_os(SERVER_ENV).is_some();
            REEXEC.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// Called by shmproc's entry points (creating or opening any object,
/// starting a process): in a copy re-executed by shmproc whose `main` reached
/// them before calling `init()`, prints why and exits with
/// [`child::EXIT_NO_INIT`], before the copy can run more of `main` (create
/// objects, start processes, run `main` again and again). The parent turns
/// that into [`JoinError::InitNotFirst`](super::JoinError::InitNotFirst) or a
/// fork-server [`StartError`](super::StartError) with the same advice.
pub(crate) fn check_gate() {
    if initialized() || !reexecuted() {
        return;
    }
    eprintln!("shmproc: {INIT_NOT_FIRST}");
    std::process::exit(child::EXIT_NO_INIT)
}

/// The gate variable of a spawned child.
pub(crate) const SPAWN_ENV: &str = "SHMPROC_SPAWN";

/// The gate variable of the fork server.
pub(crate) const SERVER_ENV: &str = "SHMPROC_FORKSERVER";

/// Largest argument blob a child accepts (1 GiB).
pub(crate) const MAX_ARGS: u64 = 1 << 30;

fn identity_string() -> io::Result<String> {
    let id = sys::exe_identity()?;
    Ok(format!("{}:{}:{}:{}:{}", id[0], id[1], id[2], id[3], id[4]))
}

/// The parent's executable identity, read once.
pub(crate) fn exe_id_string() -> io::Result<String> {
    // Not a `OnceLock`: a `fork` while another thread initialised it would
    // leave the child waiting for ever. Racing first callers each read the
    // identity (the same answer); one publishes it, the others free theirs.
    static ID: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());
    let p = ID.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a non-null ID is a leaked Box<String>, never freed or changed.
        return Ok(unsafe { (*p).clone() });
    }
    let s = identity_string()?;
    let mine = Box::into_raw(Box::new(s.clone()));
    if let Err(theirs) = ID.compare_exchange(std::ptr::null_mut(), mine, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: `mine` came from Box::into_raw above and was not published.
        drop(unsafe { Box::from_raw(mine) });
        // SAFETY: as above, `theirs` is a published, leaked Box<String>.
        return Ok(unsafe { (*theirs).clone() });
    }
    Ok(s)
}

/// Checks that this process runs the executable described by `id`.
pub(crate) fn verify_identity(id: &str) -> Result<(), String> {
    let mine = identity_string().map_err(|e| format!("cannot stat /proc/self/exe: {e}"))?;
    if mine == id {
        Ok(())
    } else {
        Err(format!("this executable ({mine}) is not the parent's ({id})"))
    }
}

/// Turns a verified offset into a trampoline and a target address.
pub(crate) fn resolve(tramp: i64, func: i64) -> Result<(Trampoline, usize), String> {
    let t = child::address_at(tramp).ok_or("the trampoline offset points outside this executable")?;
    let f = child::address_at(func).ok_or("the target offset points outside this executable")?;
    // SAFETY: the executable identity was verified by the caller, so `t` is the
    // address at which the parent's `trampoline::<A, R>` lives in this copy of
    // the same image (same offset from the anchor, same loaded object).
    let t: Trampoline = unsafe { std::mem::transmute::<usize, Trampoline>(t) };
    Ok((t, f))
}

/// Prints `shmproc: <context>: <reason>` and exits with
/// [`child::EXIT_REFUSED`]: a re-executed copy that will not run.
pub(crate) fn refuse(context: &str, reason: &str) -> ! {
    eprintln!("shmproc: {context}: {reason}");
    std::process::exit(child::EXIT_REFUSED)
}

/// The process name for `PR_SET_NAME`: at most 15 bytes and a NUL, on the stack.
pub(crate) fn comm_name(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b[..15].iter_mut().zip(name.bytes().filter(|&c| c != 0)) {
        *d = s;
    }
    b
}

/// Re-executes `/proc/self/exe` with `env` (and without either gate variable
/// of this process), keeping `fds` open across exec and, with
/// `daemon_parent`, arming the death signal.
pub(crate) fn spawn_self(
    env: &[(&str, String)],
    fds: &[i32],
    daemon_parent: Option<u32>,
) -> io::Result<std::process::Child> {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(a0) = std::env::args_os().next() {
        cmd.arg0(a0);
    }
    cmd.env_remove(SPAWN_ENV).env_remove(SERVER_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let fds = fds.to_vec();
    // SAFETY: the hook runs between fork and exec in the child and only makes
    // raw, async-signal-safe system calls (fcntl, prctl, getppid, getpid) and
    // atomic stores; it allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // The program about to run holds none of our pipe ends.
            crate::pipe::forget_inherited_before_exec();
            for &fd in &fds {
                sys::clear_cloexec_raw(fd)?;
            }
            if let Some(parent) = daemon_parent {
                sys::set_death_signal_kill()?;
                if sys::parent_pid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            Ok(())
        })
    };
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_self_verifies_and_other_does_not() {
        let id = exe_id_string().unwrap();
        assert!(verify_identity(&id).is_ok());
        let mut parts: Vec<u64> = id.split(':').map(|p| p.parse().unwrap()).collect();
        parts[1] ^= 1; // another inode
        let other = parts.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(":");
        assert!(verify_identity(&other).unwrap_err().contains("not the parent's"));
    }

    #[test]
    fn offsets_resolve_inside_the_executable_only() {
        let f = child::offset_of(exe_id_string as fn() -> io::Result<String> as usize);
        assert!(child::address_at(f).is_some());
        // Far outside any loaded object.
        assert!(child::address_at(i64::MIN / 2).is_none());
    }

    #[test]
    fn comm_name_is_cut_to_15_bytes_and_skips_nuls() {
        assert_eq!(&comm_name("worker")[..7], b"worker\0");
        let long = comm_name("a-very-long-process-name");
        assert_eq!(&long[..15], b"a-very-long-pro");
        assert_eq!(long[15], 0);
        assert_eq!(&comm_name("a\0b")[..3], b"ab\0");
    }
}
