//! Errors of [`Process`](super::Process) and of handing objects to launched binaries.

use std::fmt;
use std::io;

use super::exec::StartMethod;
use crate::error::OpenError;

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code (0: success).
    Exited(i32),
    /// It was ended by this signal (9: SIGKILL, 15: SIGTERM, ...).
    Signaled(i32),
    /// Unknown: a [`ForkServer`](super::StartMethod::ForkServer) child whose
    /// server died before reporting how the child ended.
    Unknown,
}

impl ExitStatus {
    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            _ => None,
        }
    }

    /// The signal that ended it, if any.
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signaled(s) => Some(s),
            _ => None,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signaled(s) => write!(f, "killed by signal {s} ({})", signal_name(s)),
            ExitStatus::Unknown => f.write_str("ended in an unknown way (its fork server died)"),
        }
    }
}

/// Why [`Builder::start`](super::Builder::start) failed. No child runs after an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A closure target can only run in a forked child: use a `fn` target
    /// ([`Process::builder`](super::Process::builder)) for Spawn and ForkServer.
    ClosureNeedsFork {
        /// The start method asked for.
        method: StartMethod,
    },
    /// Spawn and ForkServer re-execute this binary, whose `main` must call
    /// [`shmproc::init()`](crate::init) first; this process never called it.
    NotInitialized {
        /// The start method asked for.
        method: StartMethod,
    },
    /// The target function does not live in the main executable (for example
    /// it comes from a shared library), so its address cannot be sent to a
    /// re-executed copy.
    TargetOutsideExecutable,
    /// The argument could not be serialised.
    Encode {
        /// postcard's message.
        reason: String,
    },
    /// The fork server could not be started or stopped answering.
    ForkServer {
        /// What went wrong.
        reason: String,
    },
    /// A system call failed (fork, exec, pipe, memfd, pidfd_open, ...).
    Os(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::ClosureNeedsFork { method } => write!(
                f,
                "a closure target can only be started with StartMethod::Fork, not {method:?}; \
                 use Process::builder(fn, arg) for Spawn and ForkServer"
            ),
            StartError::NotInitialized { method } => write!(
                f,
                "StartMethod::{method:?} re-executes this binary, but shmproc::init() was never called: \
                 call it at the top of main() (a test harness cannot; use a harness = false test)"
            ),
            StartError::TargetOutsideExecutable => {
                f.write_str("the target fn is not part of the main executable, so a re-executed copy cannot find it")
            }
            StartError::Encode { reason } => write!(f, "could not serialise the argument: {reason}"),
            StartError::ForkServer { reason } => write!(f, "fork server failure: {reason}"),
            StartError::Os(e) => write!(f, "could not start the process: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Os(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Os(e)
    }
}

/// Why [`Process::join`](super::Process::join) did not give the target's value.
#[derive(Debug)]
#[non_exhaustive]
pub enum JoinError {
    /// The target panicked in the child.
    Panicked {
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:col`), when known.
        location: Option<String>,
        /// How the child then ended.
        status: ExitStatus,
    },
    /// The child ended without reporting a result: killed by a signal, or it
    /// called `exit` inside the target, or it refused to run the target (exit
    /// code 121: a Spawn / ForkServer copy that is not the same executable, or
    /// a daemon child whose parent was already gone).
    Died {
        /// How it ended.
        status: ExitStatus,
    },
    /// The child's argument or result could not be (de)serialised, or the
    /// report it sent is malformed.
    Decode {
        /// What went wrong.
        reason: String,
    },
    /// A Spawn child (a re-executed copy of this binary) ran code of `main`
    /// before `shmproc::init()`, or never called it: it stopped when it
    /// reached shmproc code, or ran `main` to its end, instead of the target.
    /// Call `shmproc::init()` as the first line of `main`, unconditionally.
    InitNotFirst {
        /// How the child ended.
        status: ExitStatus,
    },
    /// [`join_timeout`](super::Process::join_timeout): the child still runs.
    /// The [`Process`](super::Process) stays usable; join again later.
    Timeout,
    /// The result was already taken by an earlier join.
    AlreadyJoined,
    /// Waiting failed.
    Os(io::Error),
}

impl JoinError {
    /// How the child ended, where known.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            JoinError::Panicked { status, .. } | JoinError::Died { status } | JoinError::InitNotFirst { status } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panicked { message, location, status } => {
                write!(f, "the child panicked: {message}")?;
                if let Some(l) = location {
                    write!(f, " (at {l})")?;
                }
                write!(f, "; it {status}")
            }
            JoinError::Died { status } => write!(f, "the child {status} without reporting a result"),
            JoinError::InitNotFirst { status } => {
                write!(f, "the child {status} without running the target: {}", super::exec::INIT_NOT_FIRST)
            }
            JoinError::Decode { reason } => write!(f, "could not decode the child's result: {reason}"),
            JoinError::Timeout => f.write_str("timed out waiting for the child"),
            JoinError::AlreadyJoined => f.write_str("the child was already joined"),
            JoinError::Os(e) => write!(f, "waiting for the child failed: {e}"),
        }
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoinError::Os(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for JoinError {
    fn from(e: io::Error) -> Self {
        JoinError::Os(e)
    }
}

/// Why [`CommandExt::share`](super::CommandExt::share) could not add an object.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShareError {
    /// The share name is not 1-64 ASCII letters, digits or `_`.
    BadName {
        /// The name given.
        name: String,
    },
    /// Duplicating the object's fd failed.
    Os(io::Error),
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareError::BadName { name } => {
                write!(f, "share name {name:?} must be 1-64 ASCII letters, digits or '_'")
            }
            ShareError::Os(e) => write!(f, "could not share the object: {e}"),
        }
    }
}

impl std::error::Error for ShareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShareError::Os(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`inherited`](super::inherited) could not return the object.
#[derive(Debug)]
#[non_exhaustive]
pub enum InheritError {
    /// The launcher did not share an object under this name.
    Missing {
        /// The environment variable looked up (`SHMPROC_HANDLE_<NAME>`).
        var: String,
    },
    /// The variable does not hold a handle (`name:/x` or `fd:N`).
    BadHandle {
        /// The environment variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// The handle names no usable object of the requested type: wrong kind or
    /// element type ([`OpenError::KindMismatch`], [`OpenError::TypeMismatch`]),
    /// a closed fd ([`OpenError::NotFound`]), ...
    Open {
        /// The share name.
        name: String,
        /// Why opening failed.
        source: Box<OpenError>,
    },
}

impl fmt::Display for InheritError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InheritError::Missing { var } => {
                write!(f, "no shared object: {var} is not set (did the launcher call CommandExt::share?)")
            }
            InheritError::BadHandle { var, value } => write!(f, "{var}={value:?} is not a shmproc handle"),
            InheritError::Open { name, source } => write!(f, "could not open shared object {name:?}: {source}"),
        }
    }
}

impl std::error::Error for InheritError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InheritError::Open { source, .. } => Some(&**source),
            _ => None,
        }
    }
}
