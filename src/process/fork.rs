//! [`StartMethod::Fork`](super::StartMethod::Fork): `fork()`, run the target in
//! the child, write the report to a pipe, `_exit`.
//!
//! Everything the child needs (the report pipe, its name as a C string, the
//! parent pid for the daemon check) is prepared before `fork`, so between
//! `fork` and the target the child makes only raw system calls.

use std::ffi::CString;
use std::os::fd::AsFd;

use super::child::{self, Report};
use super::{forkserver, launched, Launched};
use crate::sys;

/// Forks a child that runs `body` and reports its outcome.
pub(crate) fn start(name: &str, daemon: bool, body: impl FnOnce() -> Report) -> std::io::Result<Launched> {
    let (rd, wr) = sys::pipe()?;
    let cname = CString::new(name.replace('\0', "?")).unwrap_or_default();
    let owned_name = name.to_owned();
    let parent = sys::raw_pid();
    // SAFETY: the child below only makes raw system calls before the target,
    // then runs the target (whose restrictions in a multi-threaded parent are
    // documented on the module), writes with a raw `write` and `_exit`s; it
    // never returns into the caller's frames.
    match unsafe { sys::fork() }? {
        None => {
            if daemon {
                // If the parent died before prctl took effect, nobody will
                // send the death signal: exit now instead.
                if sys::set_death_signal_kill().is_err() || sys::parent_pid() != parent {
                    sys::exit_now(child::EXIT_REFUSED);
                }
            }
            sys::set_thread_name(&cname);
            forkserver::close_client_in_child();
            drop(rd);
            child::set_current_name(owned_name);
            let (bytes, code) = child::run_captured(body);
            // The parent may have dropped the Process (EPIPE): nothing to do.
            let _ = sys::write_all(wr.as_fd(), &bytes);
            sys::exit_now(code);
        }
        Some(pid) => {
            drop(wr);
            // The child is ours and unreaped, so this pidfd is exactly it.
            let pidfd = sys::pidfd_open(pid).ok();
            Ok(launched(pid, pidfd, rd, None))
        }
    }
}
