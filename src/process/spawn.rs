//! [`StartMethod::Spawn`](super::StartMethod::Spawn): re-execute the current
//! binary; [`crate::init`] at the top of its `main` runs the target.
//!
//! ## Gate variable
//! `SHMPROC_SPAWN=v2;<exe identity>;<trampoline offset>;<target offset>;<args fd>;<result fd>;<daemon parent>;<token>;<object fds>;<name>`
//!
//! * exe identity and offsets: see `exec.rs`; a different
//!   executable or an offset outside it refuses (exit code 121, nothing run).
//! * args fd: a memfd with the postcard bytes of the argument; result fd: the
//!   child's end of the report socket. Both have `FD_CLOEXEC` cleared in
//!   `pre_exec` only, so no other exec'd program inherits them.
//! * object fds: the fds of the anonymous objects in the argument, in index
//!   order, comma-separated (`-` when none); kept open across the exec like
//!   the args fd, and closed by the child once the argument is decoded (each
//!   object holds its own duplicate).
//! * daemon parent: the parent's pid, or 0. `PR_SET_PDEATHSIG` is set in
//!   `pre_exec` (it survives exec); the child re-checks `getppid()` after exec.
//!
//! The child moves the args memfd's file offset (shared with the parent) to
//! 1 once it read the argument: a child that ended without a report and
//! without moving it never reached `init()`
//! ([`JoinError::InitNotFirst`](super::JoinError::InitNotFirst)).
//!
//! `init()` removes the variable before anything else runs, so the child's own
//! children never see it.

use std::io;
use std::os::fd::AsRawFd;

use super::exec::{self, SPAWN_ENV};
use super::reap::Launched;
use super::{channel, child};
use crate::sys;

fn refuse(reason: &str) -> ! {
    exec::refuse("refusing to run a spawned target", reason)
}

struct Gate<'a> {
    exe: &'a str,
    tramp: i64,
    func: i64,
    args_fd: i32,
    result_fd: i32,
    parent: u32,
    token: u64,
    objects: Vec<i32>,
    name: &'a str,
}

fn parse(v: &str) -> Option<Gate<'_>> {
    let mut it = v.splitn(10, ';');
    if it.next()? != "v2" {
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
        objects: match it.next()? {
            "-" => Vec::new(),
            list => list.split(',').map(|f| f.parse().ok().filter(|&f: &i32| f >= 0)).collect::<Option<_>>()?,
        },
        name: it.next()?,
    })
}

/// The child side, called by `init()`; never returns.
pub(crate) fn child_main(v: &str) -> ! {
    let Some(g) = parse(v) else { refuse(&format!("malformed {SPAWN_ENV} value {v:?}")) };
    // Tell the parent (which shares the args fd's file description) that init() ran here.
    if let Ok(fd) = sys::borrow_raw_fd(g.args_fd) {
        let _ = sys::mark_offset(fd);
    }
    if let Err(reason) = exec::verify_identity(g.exe) {
        refuse(&reason);
    }
    if g.parent != 0 && sys::parent_pid() != g.parent {
        // A daemon whose parent died before the death signal was armed.
        std::process::exit(child::EXIT_REFUSED);
    }
    let (tramp, func) = exec::resolve(g.tramp, g.func).unwrap_or_else(|r| refuse(&r));
    let args_fd = sys::borrow_raw_fd(g.args_fd).unwrap_or_else(|_| refuse("the argument fd is not open"));
    let result_fd = sys::borrow_raw_fd(g.result_fd).unwrap_or_else(|_| refuse("the result fd is not open"));
    // Inherited without close-on-exec; programs the target runs must not get it.
    let _ = sys::set_cloexec(result_fd, true);
    let args =
        sys::read_fd_all(args_fd, exec::MAX_ARGS).unwrap_or_else(|e| refuse(&format!("reading the argument: {e}")));
    // SAFETY: the args fd was handed to this process for this purpose only and
    // no OwnedFd in this process owns it.
    unsafe { sys::close_raw(g.args_fd) };
    child::ensure_panic_hook();
    // The objects' fds: opened (duplicated) while the argument is decoded, then closed.
    crate::object::set_inbound(g.objects, true);
    let name: &'static str = Box::leak(g.name.to_owned().into_boxed_str());
    // Leaked: the context lives as long as the process, and the result fd is
    // never closed before exit.
    child::enter_spawned(Box::leak(Box::new(child::ChildCtx::new(name, result_fd, g.token))));
    sys::set_thread_name_bytes(&exec::comm_name(name));
    let code = child::run_captured(|| tramp(func, &args, result_fd));
    std::process::exit(code)
}

/// The parent side: spawns the child.
pub(crate) fn start(
    name: &str,
    daemon: bool,
    tramp: i64,
    func: i64,
    args: &[u8],
    objects: &[i32],
) -> io::Result<Launched> {
    let args_fd = sys::memfd_with(args)?;
    let chan = channel::take()?;
    let parent = if daemon { sys::raw_pid() } else { 0 };
    let (a, w) = (args_fd.as_raw_fd(), chan.wr.as_raw_fd());
    let objs = if objects.is_empty() {
        "-".to_owned()
    } else {
        objects.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",")
    };
    let value = format!("v2;{};{tramp};{func};{a};{w};{parent};{};{objs};{name}", exec::exe_id_string()?, chan.token);
    let mut keep_open = vec![a, w];
    keep_open.extend_from_slice(objects);
    let child = exec::spawn_self(&[(SPAWN_ENV, value)], &keep_open, daemon.then_some(parent))?;
    // The child is ours and unreaped (std's Child never reaps on drop).
    let mut launched = Launched::own_child(child.id(), chan);
    drop(child);
    // Kept: its offset tells, at join, whether the child reached init().
    launched.gate = Some(args_fd);
    Ok(launched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_parsing() {
        let g = parse("v2;1:2:3:4:5;-10;20;3;4;0;77;-;my;name").unwrap();
        assert_eq!(
            (g.tramp, g.func, g.args_fd, g.result_fd, g.parent, g.token, g.name),
            (-10, 20, 3, 4, 0, 77, "my;name")
        );
        assert!(g.objects.is_empty());
        assert_eq!(parse("v2;1:2:3:4:5;1;2;3;4;0;1;5,9;n").unwrap().objects, vec![5, 9]);
        assert!(parse("v2;1:2:3:4:5;1;2;3;4;0;1;5,-9;n").is_none());
        assert!(parse("v1;1:2:3:4:5;1;2;3;4;0;1;-;n").is_none());
        assert!(parse("v2;1:2:3:4:5;1;2;3;4;0;x;-;n").is_none());
        assert!(parse("v2;x;1;2;-3;4;0;-;n").is_none());
        assert!(parse("v2;x;1;2").is_none());
    }
}
