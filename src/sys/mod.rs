//! Platform layer: every system call shmproc makes lives below this module.
//!
//! One submodule per platform family, each exposing the same crate-private
//! functions. Only Linux is implemented and tested; a port adds a sibling
//! module (for example `macos`) with the same surface and a `cfg` here.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("shmproc currently supports Linux only; see src/sys/mod.rs for how to port it");
