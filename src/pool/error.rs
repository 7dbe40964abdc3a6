//! The pool's error types: one per operation, owned, `Send + Sync + 'static`.

use std::fmt;
use std::time::Duration;

use crate::error::OpenError;
use crate::process::{ExitStatus, StartError};

/// Why one task (one item of a map, one `apply`) has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The task panicked in its worker (the worker lives on).
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:col` of the panic, when known.
        location: Option<String>,
    },
    /// The worker running the task died (killed, `abort()`, ...): the pool
    /// noticed through the worker's pidfd and started a replacement.
    WorkerDied {
        /// The dead worker's pid.
        pid: u32,
        /// How it ended (signal or exit code).
        status: ExitStatus,
    },
    /// The task ran longer than the pool's `task_timeout`; its worker was
    /// killed and replaced.
    TimedOut {
        /// The limit it exceeded.
        limit: Duration,
    },
    /// The argument or the result could not be encoded (or is larger than the
    /// pool's frames allow).
    Serialize {
        /// What went wrong.
        reason: String,
    },
    /// The argument or the result could not be decoded.
    Deserialize {
        /// What went wrong.
        reason: String,
    },
    /// The pool's initializer failed or panicked in a worker; the pool runs no
    /// more tasks (reported once, never retried in a loop).
    InitializerFailed {
        /// The initializer's panic message or error.
        reason: String,
    },
    /// No worker could be started to run the task (every worker had died and
    /// starting a replacement failed).
    StartFailed {
        /// Why the start failed.
        reason: String,
    },
    /// The pool was closed before the task was submitted (or this is a
    /// forked child's copy of its parent's pool, or of an [`AsyncResult`]
    /// of its parent's: they are closed in the child, whose parent owns the
    /// workers and gets the results).
    ///
    /// [`AsyncResult`]: super::AsyncResult
    Closed,
    /// The pool was terminated (or dropped) before the task finished.
    Terminated,
    /// The pool's shared results queue was found corrupt (some process wrote
    /// into it out of turn): results could be lost, so the pool stopped, its
    /// workers were killed, every task in it failed with this error, and
    /// later tasks fail with [`Closed`](TaskError::Closed).
    Corrupt,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked { message, location: Some(l) } => write!(f, "task panicked at {l}: {message}"),
            TaskError::Panicked { message, location: None } => write!(f, "task panicked: {message}"),
            TaskError::WorkerDied { pid, status } => write!(f, "worker {pid} died ({status:?})"),
            TaskError::TimedOut { limit } => write!(f, "task ran longer than {limit:?}; its worker was killed"),
            TaskError::Serialize { reason } => write!(f, "encoding failed: {reason}"),
            TaskError::Deserialize { reason } => write!(f, "decoding failed: {reason}"),
            TaskError::InitializerFailed { reason } => write!(f, "the pool's initializer failed: {reason}"),
            TaskError::StartFailed { reason } => write!(f, "no worker could be started: {reason}"),
            TaskError::Closed => f.write_str("the pool is closed"),
            TaskError::Terminated => f.write_str("the pool was terminated before the task finished"),
            TaskError::Corrupt => {
                f.write_str("the pool's results queue was found corrupt; the pool stopped and killed its workers")
            }
        }
    }
}

impl std::error::Error for TaskError {}

/// [`Pool::map`](super::Pool::map) failed: the first failed item (by index)
/// and its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    /// Index of the failed item in the input.
    pub index: usize,
    /// Why it failed.
    pub error: TaskError,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item {}: {}", self.index, self.error)
    }
}

impl std::error::Error for MapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// [`PoolBuilder::create`](super::PoolBuilder::create) failed.
#[derive(Debug)]
pub enum PoolError {
    /// A queue or the in-flight table could not be created.
    Segment(OpenError),
    /// A worker could not be started.
    Start(StartError),
    /// The initializer failed or panicked in a worker.
    Initializer {
        /// Its panic message or error.
        reason: String,
    },
    /// A worker died before it was ready.
    WorkerDied {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: Option<ExitStatus>,
    },
    /// The pool's own thread could not be started.
    Thread(std::io::Error),
    /// `processes(0)`, a zero frame size, or another impossible setting.
    Invalid(String),
    /// The pool's shared results queue was found corrupt while the workers
    /// started (see [`TaskError::Corrupt`]).
    Corrupt,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Segment(e) => write!(f, "creating the pool's shared memory: {e}"),
            PoolError::Start(e) => write!(f, "starting a worker: {e}"),
            PoolError::Initializer { reason } => write!(f, "the initializer failed: {reason}"),
            PoolError::WorkerDied { pid, status } => write!(f, "worker {pid} died before it was ready ({status:?})"),
            PoolError::Thread(e) => write!(f, "starting the pool thread: {e}"),
            PoolError::Invalid(s) => write!(f, "invalid pool setting: {s}"),
            PoolError::Corrupt => f.write_str("the pool's results queue was found corrupt while its workers started"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Segment(e) => Some(e),
            PoolError::Start(e) => Some(e),
            PoolError::Thread(e) => Some(e),
            _ => None,
        }
    }
}

impl From<OpenError> for PoolError {
    fn from(e: OpenError) -> Self {
        PoolError::Segment(e)
    }
}

impl From<StartError> for PoolError {
    fn from(e: StartError) -> Self {
        PoolError::Start(e)
    }
}

/// [`Pool::join_timeout`](super::Pool::join_timeout) gave up: work is still
/// running. The pool is unchanged; join again or terminate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinTimeoutError;

impl fmt::Display for JoinTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the pool's work did not finish in time")
    }
}

impl std::error::Error for JoinTimeoutError {}
