//! The OS side of a started child, in one place: its pid and pidfd, reaping,
//! signalling, the liveness check, and the conversion of how it ended into an
//! [`ExitStatus`] (also through the fork server's status record).
//!
//! Algorithm: a pidfd opened while the child cannot have been reaped names
//! exactly that child, so reaping (`waitid(P_PIDFD)`), the liveness check
//! (`poll`: a pidfd turns readable when the process exits) and signalling
//! (`pidfd_send_signal`) never hit a process that reused its pid (module docs
//! of [`process`](super), "Waiting without pid reuse"). Without pidfds (Linux
//! before 5.3) they go by pid, still exact for an unreaped child of ours.
//!
//! ## Status record (fork server to parent)
//! 8 bytes on the child's status pipe: `u32` tag (0 exited, 1 signal) and
//! `i32` value, little endian.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::channel::Channel;
use super::error::ExitStatus;
use crate::sys;
use crate::time::Deadline;

/// Size of a status record.
pub(crate) const STATUS_LEN: usize = 8;
/// How long a ForkServer child may be dead by its pidfd before its status
/// record is given up on (the server writes it right after reaping: within
/// moments, unless the server itself died).
pub(crate) const RECORD_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl From<sys::Ended> for ExitStatus {
    fn from(e: sys::Ended) -> Self {
        match e {
            sys::Ended::Code(c) => ExitStatus::Exited(c),
            sys::Ended::Signal(s) => ExitStatus::Signaled(s),
        }
    }
}

/// The status record of a reaped child (written by the fork server).
pub(crate) fn encode_status(ended: sys::Ended) -> [u8; STATUS_LEN] {
    let (tag, val) = match ended {
        sys::Ended::Code(c) => (0u32, c),
        sys::Ended::Signal(s) => (1u32, s),
    };
    let mut rec = [0u8; STATUS_LEN];
    rec[..4].copy_from_slice(&tag.to_le_bytes());
    rec[4..].copy_from_slice(&val.to_le_bytes());
    rec
}

/// How the child of a status record ended; an unknown tag is
/// [`ExitStatus::Unknown`].
pub(crate) fn decode_status(rec: &[u8; STATUS_LEN]) -> ExitStatus {
    let tag = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
    let val = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    match tag {
        0 => ExitStatus::Exited(val),
        1 => ExitStatus::Signaled(val),
        _ => ExitStatus::Unknown,
    }
}

/// A started child as the kernel knows it: its pid and, where the kernel has
/// them, a pidfd. A ForkServer child always comes with its pidfd (the server's
/// reply carries it), so its pid, which the server reaps, is never used.
#[derive(Debug)]
pub(crate) struct OsChild {
    /// Its pid.
    pub(crate) pid: u32,
    /// Its pidfd (`None` only on kernels without pidfds).
    pub(crate) pidfd: Option<OwnedFd>,
}

impl OsChild {
    /// Sends `sig`. A child that already ended (`ESRCH`) is not an error.
    pub(crate) fn signal(&self, sig: sys::Signal) -> io::Result<()> {
        let r = match &self.pidfd {
            Some(fd) => sys::pidfd_signal(fd.as_fd(), sig),
            // Our own unreaped child: the pid cannot have been reused.
            None => sys::kill(self.pid, sig),
        };
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// Reaps the child: `Ok(None)` with `nohang` while it still runs.
    pub(crate) fn reap(&self, nohang: bool) -> io::Result<Option<ExitStatus>> {
        let ended = match &self.pidfd {
            Some(fd) => sys::wait_pidfd(fd.as_fd(), nohang)?,
            None => sys::wait_pid(self.pid, nohang)?,
        };
        Ok(ended.map(ExitStatus::from))
    }

    /// Whether the child still runs (an ended, unreaped child does not).
    pub(crate) fn alive(&self) -> bool {
        match &self.pidfd {
            // A pidfd polls readable once the process has exited.
            Some(fd) => matches!(sys::poll_readable([fd.as_fd()], Deadline::after(Some(Duration::ZERO))), Ok([false])),
            None => sys::pid_exists(self.pid),
        }
    }
}

/// What a start method hands back.
pub(crate) struct Launched {
    /// The child.
    pub(crate) child: OsChild,
    /// The report socket pair.
    pub(crate) result: Channel,
    /// ForkServer: the pipe on which the server writes how the child ended.
    pub(crate) status: Option<OwnedFd>,
    /// Spawn: the argument memfd, whose offset the child moves in `init()`.
    pub(crate) gate: Option<OwnedFd>,
    /// The child's start time (`/proc/<pid>/stat` units) when the start
    /// method knows it already (Fork: `sys::forked_start_time`); 0 if not.
    pub(crate) start_time: u64,
}

impl Launched {
    /// The pieces the start methods share.
    pub(crate) fn new(pid: u32, pidfd: Option<OwnedFd>, result: Channel, status: Option<OwnedFd>) -> Launched {
        Launched { child: OsChild { pid, pidfd }, result, status, gate: None, start_time: 0 }
    }

    /// A child of this process (Fork, Spawn), not yet reaped, so the pidfd
    /// opened here is exactly it.
    pub(crate) fn own_child(pid: u32, result: Channel) -> Launched {
        Launched::new(pid, sys::pidfd_open(pid).ok(), result, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_round_trip() {
        assert_eq!(decode_status(&encode_status(sys::Ended::Code(3))), ExitStatus::Exited(3));
        assert_eq!(decode_status(&encode_status(sys::Ended::Signal(9))), ExitStatus::Signaled(9));
        assert_eq!(decode_status(&[7, 0, 0, 0, 1, 0, 0, 0]), ExitStatus::Unknown);
    }
}
