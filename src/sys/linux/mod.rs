//! Linux implementation of the platform layer.
//!
//! * [`shm`]: `shm_open`/`memfd_create`, `fstat`, `ftruncate`, `mmap` (through `memmap2`).
//! * [`fork`]: the one `pthread_atfork` registration: fork generation and counts.
//! * [`futex`]: shared (never `FUTEX_PRIVATE_FLAG`) futex wait/wake with absolute
//!   `CLOCK_MONOTONIC` deadlines.
//! * [`proc`]: thread and process identity, and a pid-reuse-proof liveness check.
//! * [`queue`]: asymmetric memory barriers (`membarrier`) for the queue's wake-ups.
//! * [`sigbus`]: a `SIGBUS` handler that turns a named segment truncated under
//!   its mapping into zeros and a `lost` flag instead of a dead process.

pub(crate) mod fork;
pub(crate) mod futex;
pub(crate) mod pipe;
pub(crate) mod proc;
pub(crate) mod process;
pub(crate) mod queue;
pub(crate) mod shm;
pub(crate) mod sigbus;

pub(crate) use fork::*;
pub(crate) use futex::*;
pub(crate) use pipe::*;
pub(crate) use proc::*;
pub(crate) use process::*;
pub(crate) use queue::*;
pub(crate) use shm::*;
