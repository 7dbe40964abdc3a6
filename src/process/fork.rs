//! [`StartMethod::Fork`](super::StartMethod::Fork): `fork()`, run the target in
//! the child, send the report on a socket, `_exit`.
//!
//! Everything the child needs (the report socket, its name, the parent pid for
//! the daemon check, the panic hook) is prepared before `fork`, so between
//! `fork` and the target the child makes only raw system calls, and on the way
//! out it encodes a small result on its stack: every heap or static page a
//! forked child writes costs a copy-on-write fault, which is most of what a
//! fork-based start costs beyond the bare `fork` + `_exit` + `waitpid`. The
//! child's side is [`child::run_forked`], shared with the fork server.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use super::reap::Launched;
use super::{channel, child, exec, forkserver};
use crate::sys;

/// Forks a child that runs `body` (which writes the report to the fd it is
/// given and returns `Err` on a serialisation failure).
pub(crate) fn start(
    name: &str,
    named: bool,
    daemon: bool,
    body: impl FnOnce(BorrowedFd<'_>) -> Result<(), String>,
) -> io::Result<Launched> {
    child::ensure_panic_hook();
    let chan = channel::take()?;
    // Only a name given by the caller becomes the OS-visible name; the
    // default `Process-N` saves the child a system call.
    let comm = named.then(|| exec::comm_name(name));
    let parent = daemon.then(sys::current_pid);
    let ctx = child::ChildCtx::new(name, chan.wr.as_fd(), chan.token);
    // Two readings around the fork name the child's start time (see `sys::forked_start_time`).
    let before = sys::boot_ticks();
    // The target's restrictions in a multi-threaded parent are documented on the module.
    // SAFETY: the child makes only raw system calls before the target, runs it, reports with a
    // raw `sendmsg` and `_exit`s (`run_forked` never returns into the caller's frames).
    match unsafe { sys::fork() }? {
        None => {
            let close_inherited = || {
                forkserver::close_client_in_child();
                channel::close_idle_in_child();
            };
            child::run_forked(&ctx, parent, comm.as_ref(), close_inherited, body)
        }
        Some(pid) => {
            // Before the caller can drop its own queue halves (issue 10 item 1).
            let start_time = sys::forked_start_time(pid, before, sys::boot_ticks());
            crate::queue::adopt_forked_child(pid, start_time);
            let mut launched = Launched::own_child(pid, chan);
            launched.start_time = start_time;
            Ok(launched)
        }
    }
}
