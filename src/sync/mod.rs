//! Cross-process synchronization primitives.

pub(crate) mod raw_mutex;
