//! Helper binaries for shmproc multi-process tests live in src/bin/.

pub mod queue_common;
