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
pub mod inspect;
mod object;
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
pub use object::{Builder, SegmentBuilder};
pub use pipe::{Connection, Pipe, PipeBuilder};
pub use process::{init, Process};
pub use queue::{
    FrameQueue, FrameQueueBuilder, FrameRecvError, FrameSendError, JoinTimeout, JoinableQueue, Queue, QueueBuilder,
    RecvError, RecvTimeoutError, Role, SendError, SendTimeoutError, SpscReceiver, SpscSender, TaskDoneError,
    TryRecvError, TrySendError, WaitMode,
};
pub use segment::{
    unlink, validate_name, Handle, Segment, SegmentOptions, ShmObject, DEFAULT_MODE, DEFAULT_OPEN_TIMEOUT, MAX_NAME_LEN,
};
pub use sync::{
    AcquireError, Barrier, BarrierBuilder, BarrierError, BarrierWaitResult, BoundedSemaphore, Condition,
    ConditionBuilder, Event, EventBuilder, Mutex, MutexBuilder, MutexGuard, ReentrantMutex, ReentrantMutexBuilder,
    ReentrantMutexGuard, ReleaseError, Semaphore, SemaphoreBuilder, SemaphoreGuard, OWNED_PERMITS,
};
pub use value::{
    Array, ArrayBuilder, ArrayGuard, RawArray, RawArrayBuilder, RawValue, RawValueBuilder, Value, ValueBuilder,
    ValueGuard,
};

#[doc(hidden)]
pub mod __private {
    //! Test support for shmproc's own multi-process tests (`ipc-tests`): they
    //! make segments that no API makes (foreign-owned, world-writable,
    //! truncated). Not API: these change a live segment under its mappers.
    //! What tools may read lives in [`crate::inspect`].

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
