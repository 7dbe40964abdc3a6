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
pub mod pipe;
mod segment;
// Some platform and timing helpers are used only by later primitives.
#[allow(dead_code)]
mod sync;
#[allow(dead_code)]
mod sys;
#[allow(dead_code)]
mod time;
mod value;

pub use error::{LockError, OpenError};
pub use header::{ObjectKind, TypeInfo};
pub use pipe::{Connection, Pipe, PipeBuilder};
pub use segment::{
    unlink, validate_name, Handle, Segment, SegmentBuilder, SegmentOptions, DEFAULT_MODE, DEFAULT_OPEN_TIMEOUT,
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
