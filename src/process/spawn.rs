//! [`StartMethod::Spawn`](super::StartMethod::Spawn): re-execute the current
//! binary; [`crate::init`] at the top of its `main` runs the target.
//!
//! ## Gate variable
//! `SHMPROC_SPAWN=v1;<exe identity>;<trampoline offset>;<target offset>;<args fd>;<result fd>;<daemon parent>;<token>;<name>`
//!
//! * exe identity: `dev:inode:size:mtime_s:mtime_ns` of the parent's
//!   `/proc/self/exe`. The child compares it with its own before it turns the
//!   offsets into code addresses; a different executable refuses (exit code
//!   121, nothing run). Exec goes through `/proc/self/exe`, so even a binary
//!   rebuilt or deleted since the parent started re-executes the parent's file.
//! * offsets: from [`child::anchor`](super::child::anchor) (see `child.rs`).
//! * args fd: a memfd with the postcard bytes of the argument; result fd: the
//!   child's end of the report socket. Both have `FD_CLOEXEC` cleared in
//!   `pre_exec` only, so no other exec'd program inherits them.
//! * daemon parent: the parent's pid, or 0. `PR_SET_PDEATHSIG` is set in
//!   `pre_exec` (it survives exec); the child re-checks `getppid()` after exec.
//!
//! `init()` removes the variable before anything else runs, so the child's own
//! children never see it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::sync::OnceLock;

use super::child::{self, Trampoline};
use super::{channel, forkserver, launched, Launched};
use crate::sys;

/// The gate variable of a spawned child.
pub(crate) const SPAWN_ENV: &str = "SHMPROC_SPAWN";

/// Largest argument blob a child accepts (1 GiB).
pub(crate) const MAX_ARGS: u64 = 1 << 30;

/// The parent's executable identity, read once.
pub(crate) fn exe_id_string() -> io::Result<String> {
    static ID: OnceLock<String> = OnceLock::new();
    if let Some(s) = ID.get() {
        return Ok(s.clone());
    }
    let id = sys::exe_identity()?;
    let s = format!("{}:{}:{}:{}:{}", id[0], id[1], id[2], id[3], id[4]);
    Ok(ID.get_or_init(|| s).clone())
}

/// Checks that this process runs the executable described by `id`.
pub(crate) fn verify_identity(id: &str) -> Result<(), String> {
    let mine = sys::exe_identity().map_err(|e| format!("cannot stat /proc/self/exe: {e}"))?;
    let mine = format!("{}:{}:{}:{}:{}", mine[0], mine[1], mine[2], mine[3], mine[4]);
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

fn refuse(reason: &str) -> ! {
    eprintln!("shmproc: refusing to run a spawned target: {reason}");
    std::process::exit(child::EXIT_REFUSED)
}

struct Gate<'a> {
    exe: &'a str,
    tramp: i64,
    func: i64,
    args_fd: i32,
    result_fd: i32,
    parent: u32,
    token: u64,
    name: &'a str,
}

fn parse(v: &str) -> Option<Gate<'_>> {
    let mut it = v.splitn(9, ';');
    if it.next()? != "v1" {
        return None;
    }
    Some(Gate {
        exe: it.next()?,
        tramp: it.next()?.parse().ok()?,
        func: it.next()?.parse().ok()?,
        args_fd: it.next()?.parse().ok().filter(|&f: &i32| f >= 0)?,
        result_fd: it.next()?.parse().ok().filter(|&f: &i32| f >= 0)?,
        parent: it.next()?.parse().ok()?,
        token: it.next()?.parse().ok()?,
        name: it.next()?,
    })
}

/// The child side, called by `init()`; never returns.
pub(crate) fn child_main(v: &str) -> ! {
    let Some(g) = parse(v) else { refuse(&format!("malformed {SPAWN_ENV} value {v:?}")) };
    if let Err(reason) = verify_identity(g.exe) {
        refuse(&reason);
    }
    if g.parent != 0 && sys::parent_pid() != g.parent {
        // A daemon whose parent died before the death signal was armed.
        std::process::exit(child::EXIT_REFUSED);
    }
    let (tramp, func) = resolve(g.tramp, g.func).unwrap_or_else(|r| refuse(&r));
    let args_fd = sys::borrow_raw_fd(g.args_fd).unwrap_or_else(|_| refuse("the argument fd is not open"));
    let result_fd = sys::borrow_raw_fd(g.result_fd).unwrap_or_else(|_| refuse("the result fd is not open"));
    // Inherited without close-on-exec; programs the target runs must not get it.
    let _ = sys::set_cloexec(result_fd, true);
    let args = sys::read_fd_all(args_fd, MAX_ARGS).unwrap_or_else(|e| refuse(&format!("reading the argument: {e}")));
    // SAFETY: the args fd was handed to this process for this purpose only and
    // no OwnedFd in this process owns it.
    unsafe { sys::close_raw(g.args_fd) };
    child::ensure_panic_hook();
    let name: &'static String = Box::leak(Box::new(g.name.to_owned()));
    let ctx = Box::leak(Box::new(child::ChildCtx {
        name,
        report: g.result_fd,
        token: g.token,
        reported: std::sync::atomic::AtomicBool::new(false),
    }));
    // SAFETY: leaked, so it lives as long as the process; the result fd is
    // never closed before exit.
    unsafe { child::enter_child(ctx) };
    sys::set_thread_name_bytes(&super::fork::comm_name(name));
    let code = child::run_captured(|| tramp(func, &args, result_fd));
    std::process::exit(code)
}

/// The parent side: spawns the child.
pub(crate) fn start(name: &str, daemon: bool, tramp: i64, func: i64, args: &[u8]) -> io::Result<Launched> {
    let args_fd = sys::memfd_with(args)?;
    let chan = channel::take()?;
    let parent = if daemon { sys::raw_pid() } else { 0 };
    let (a, w) = (args_fd.as_raw_fd(), chan.wr.as_raw_fd());
    let value = format!("v1;{};{tramp};{func};{a};{w};{parent};{};{name}", exe_id_string()?, chan.token);
    let child = spawn_self(&[(SPAWN_ENV, value)], &[a, w], daemon.then_some(parent))?;
    let pid = child.id();
    // The child is ours and unreaped (std's Child never reaps on drop).
    let pidfd = sys::pidfd_open(pid).ok();
    drop(child);
    drop(args_fd);
    Ok(launched(pid, pidfd, chan, None))
}

/// Re-executes `/proc/self/exe` with `env`, keeping `fds` open across exec
/// and, with `daemon_parent`, arming the death signal.
pub(crate) fn spawn_self(
    env: &[(&str, String)],
    fds: &[i32],
    daemon_parent: Option<u32>,
) -> io::Result<std::process::Child> {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(a0) = std::env::args_os().next() {
        cmd.arg0(a0);
    }
    cmd.env_remove(SPAWN_ENV).env_remove(forkserver::SERVER_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let fds = fds.to_vec();
    // SAFETY: the hook runs between fork and exec in the child and only makes
    // raw, async-signal-safe system calls (fcntl, prctl, getppid); it
    // allocates nothing (the Vec was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
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
    fn gate_parsing() {
        let g = parse("v1;1:2:3:4:5;-10;20;3;4;0;77;my;name").unwrap();
        assert_eq!(
            (g.tramp, g.func, g.args_fd, g.result_fd, g.parent, g.token, g.name),
            (-10, 20, 3, 4, 0, 77, "my;name")
        );
        assert!(parse("v2;1:2:3:4:5;1;2;3;4;0;1;n").is_none());
        assert!(parse("v1;1:2:3:4:5;1;2;3;4;0;x;n").is_none());
        assert!(parse("v1;x;1;2;-3;4;0;n").is_none());
        assert!(parse("v1;x;1;2").is_none());
    }

    #[test]
    fn offsets_resolve_inside_the_executable_only() {
        let f = child::offset_of(exe_id_string as fn() -> io::Result<String> as usize);
        assert!(child::address_at(f).is_some());
        // Far outside any loaded object.
        assert!(child::address_at(i64::MIN / 2).is_none());
    }
}
