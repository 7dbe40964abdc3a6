//! [`StartMethod::Fork`](super::StartMethod::Fork): `fork()`, run the target in
//! the child, send the report on a socket, `_exit`.
//!
//! Everything the child needs (the report socket, its name, the parent pid for
//! the daemon check, the panic hook) is prepared before `fork`, so between
//! `fork` and the target the child makes only raw system calls, and on the way
//! out it encodes a small result on its stack: every heap or static page a
//! forked child writes costs a copy-on-write fault, which is most of what a
//! fork-based start costs beyond the bare `fork` + `_exit` + `waitpid`.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::AtomicBool;

use super::{channel, child};
use super::{forkserver, launched, Launched};
use crate::sys;

/// The process name for `PR_SET_NAME`: at most 15 bytes and a NUL, on the stack.
pub(crate) fn comm_name(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b[..15].iter_mut().zip(name.bytes().filter(|&c| c != 0)) {
        *d = s;
    }
    b
}

/// Forks a child that runs `body` (which writes the report to the fd it is
/// given and returns `Err` on a serialisation failure).
pub(crate) fn start(
    name: &String,
    named: bool,
    daemon: bool,
    body: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> Result<(), String>,
) -> std::io::Result<Launched> {
    child::ensure_panic_hook();
    let chan = channel::take()?;
    // Only a name given by the caller becomes the OS-visible name; the
    // default `Process-N` saves the child a system call.
    let comm = named.then(|| comm_name(name));
    let parent = if daemon { sys::current_pid() } else { 0 };
    let ctx =
        child::ChildCtx { name, report: chan.wr.as_raw_fd(), token: chan.token, reported: AtomicBool::new(false) };
    // The target's restrictions in a multi-threaded parent are documented on the module.
    // SAFETY: the child makes only raw system calls before the target, runs it, reports with a
    // raw `write` and `_exit`s; it never returns into the caller's frames.
    match unsafe { sys::fork() }? {
        None => {
            if daemon {
                // If the parent died before prctl took effect, nobody will
                // send the death signal: exit now instead.
                if sys::set_death_signal_kill().is_err() || sys::parent_pid() != parent {
                    sys::exit_now(child::EXIT_REFUSED);
                }
            }
            if let Some(comm) = &comm {
                sys::set_thread_name_bytes(comm);
            }
            forkserver::close_client_in_child();
            // SAFETY: `ctx`, `name` and `wr` live in this frame and the
            // caller's, which this child never leaves (it `_exit`s below).
            unsafe { child::enter_child(&ctx) };
            let code = child::run_captured(|| body(chan.wr.as_fd()));
            sys::exit_now(code);
        }
        Some(pid) => {
            // The child is ours and unreaped, so this pidfd is exactly it.
            let pidfd = sys::pidfd_open(pid).ok();
            Ok(launched(pid, pidfd, chan, None))
        }
    }
}
