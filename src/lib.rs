//! # shmproc
//!
//! Inter-process communication over shared memory on one host: what Python's
//! `multiprocessing` offers (shared `Value`/`Array`, locks, queues, pipes,
//! processes, pools), built for Rust.
//!
//! Every object lives in a *segment*: named POSIX shared memory that any program
//! can open by name, or an anonymous sealed `memfd` inherited by forked children
//! or handed to a launched binary by [`Handle`]. Each segment starts with a
//! validated header (see `SAFETY.md`), so opening the wrong thing is a precise
//! [`OpenError`], never undefined behaviour.
//!
//! ## Two processes, side by side
//!
//! ```no_run
//! // Process A (creates):                     // Process B (opens by name):
//! use shmproc::Array;                         // let a = shmproc::Array::<f64>::open("prices")?;
//! # fn main() -> Result<(), shmproc::OpenError> {
//! let a = Array::<f64>::create("prices", &[0.0; 4])?;
//! # Ok(()) }
//! // a.set(0, 101.5)                          // a.get(0) == Ok(Some(101.5))
//! ```
//!
//! A shared counter across a `fork`:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let counter = shmproc::Value::<u64>::anonymous(0)?;
//! // ... fork; in both processes:
//! counter.update(|n| *n += 1).map_err(|e| e.to_string())?;
//! # Ok(()) }
//! ```
//!
//! Platform: Linux. All system calls live in the private `sys` module.

#![warn(missing_debug_implementations)]

mod error;
pub mod header;
mod peer;
pub mod pipe;
pub mod queue;
mod segment;
mod sync;
mod sys;
mod time;
mod value;
mod wait;

pub mod process;

pub use error::{LockError, OpenError};
pub use header::{ObjectKind, TypeInfo};
pub use pipe::{Connection, Pipe, PipeBuilder};
pub use process::{init, Process};
pub use queue::{
    FrameQueue, FrameQueueBuilder, FrameRecvError, FrameSendError, JoinTimeout, JoinableQueue, Queue, QueueBuilder,
    RecvError, RecvTimeoutError, Role, SendError, SendTimeoutError, SpscReceiver, SpscSender, TaskDoneError,
    TryRecvError, TrySendError, WaitMode,
};
pub use segment::{
    unlink, validate_name, Handle, Segment, SegmentBuilder, SegmentOptions, ShmObject, DEFAULT_MODE,
    DEFAULT_OPEN_TIMEOUT, MAX_NAME_LEN,
};
pub use sync::{
    AcquireError, Barrier, BarrierBuilder, BarrierError, BarrierWaitResult, BoundedSemaphore, Condition,
    ConditionBuilder, Event, EventBuilder, Mutex, MutexBuilder, MutexGuard, ReentrantMutex, ReentrantMutexBuilder,
    ReentrantMutexGuard, ReleaseError, Semaphore, SemaphoreBuilder,
};
pub use value::{
    Array, ArrayBuilder, ArrayGuard, RawArray, RawArrayBuilder, RawValue, RawValueBuilder, Value, ValueBuilder,
    ValueGuard,
};

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for shmproc's own test helpers and bench runner. Not API.

    /// Entries of `/dev/shm`: name, size, owner uid, permission bits.
    pub fn list_shm() -> std::io::Result<Vec<(String, u64, u32, u32)>> {
        Ok(crate::sys::list_shm_names()?.into_iter().map(|(n, i)| (n, i.size, i.uid, i.mode)).collect())
    }

    /// What a segment's header says, read without expecting a kind or a type
    /// (for `shmproc ls` and `shmproc gc`).
    #[derive(Debug, Clone)]
    pub struct HeaderSummary {
        /// The kind of object.
        pub kind: crate::ObjectKind,
        /// Pid of the creating process, as recorded.
        pub creator_pid: u32,
        /// Payload bytes.
        pub payload_size: u64,
        /// The element type recorded by the creator.
        pub ty: crate::TypeInfo,
        /// Whether the creator published "ready" (false: initialising, or it died mid-way).
        pub ready: bool,
    }

    /// Validates the first [`crate::header::HEADER_SIZE`] bytes of a segment
    /// whose real size is `actual_size` (magic, version, sizes and offsets),
    /// like `open` does but without a kind or type to match.
    pub fn inspect_header(bytes: &[u8; crate::header::HEADER_SIZE], actual_size: u64) -> Result<HeaderSummary, String> {
        let info = crate::header::parse_header(bytes, actual_size, None).map_err(|e| e.to_string())?;
        let state = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        Ok(HeaderSummary {
            kind: info.kind,
            creator_pid: info.creator_pid,
            payload_size: info.payload_size as u64,
            ty: info.ty,
            ready: state == crate::header::READY,
        })
    }

    /// Whether a process with id `pid` exists and is not a zombie. A pid alone
    /// cannot tell a reused id from the original process: `true` may mean "some
    /// process now has this pid".
    pub fn process_alive(pid: u32) -> bool {
        // `liveness` with no recorded start time: an existence check that falls
        // back to kill(pid, 0) where /proc is unreadable (hidepid), so `gc`
        // errs towards "alive" there instead of removing a live creator's segment.
        crate::sys::liveness(crate::sys::Identity { id: pid, start_time: 0 }) == crate::sys::Liveness::Alive
    }

    /// When process `pid` started, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`); None if no such live process.
    pub fn process_start_ticks(pid: u32) -> Option<u64> {
        crate::sys::identity_of(pid).map(|i| i.start_time)
    }

    /// `fchown` a segment's fd (tests create foreign-owned segments).
    pub fn set_owner(seg: &crate::Segment, uid: u32, gid: u32) -> std::io::Result<()> {
        crate::sys::set_owner(seg.fd(), uid, gid)
    }
    /// `fchmod` a segment's fd.
    pub fn set_mode(seg: &crate::Segment, mode: u32) -> std::io::Result<()> {
        crate::sys::set_mode(seg.fd(), mode)
    }
    /// `ftruncate` a segment's fd (tests truncate headers).
    pub fn set_len(seg: &crate::Segment, len: u64) -> std::io::Result<()> {
        crate::sys::set_len(seg.fd(), len)
    }
}
