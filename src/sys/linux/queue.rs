//! Asymmetric memory barriers (`membarrier(2)`) for the queue's sleeper handshake.
//!
//! A queue's publisher must not miss a sleeper that registered just before it
//! published, and the sleeper must not miss the publication (Dekker's pattern:
//! each side stores, then loads the other side's word). Instead of a full fence
//! on every publication (the hot path), each publishing process registers once
//! with `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` and publishes with a compiler
//! fence only; a waiter about to sleep (the cold path) issues
//! `MEMBARRIER_CMD_GLOBAL_EXPEDITED`, which runs a full barrier on every CPU
//! currently running a registered process. A process where registration fails
//! keeps using full fences.

use std::sync::atomic::{AtomicU64, Ordering};

use rustix::thread::{membarrier, MembarrierCommand};

/// Fork generation ([`super::fork_generation`]) of the process that
/// registered (a forked child registers again), and of the one where it failed.
static REGISTERED: AtomicU64 = AtomicU64::new(0);
static FAILED_IN: AtomicU64 = AtomicU64::new(0);

/// Registers the calling process for global expedited barriers (once per
/// process). Returns whether it may publish without a full fence.
pub(crate) fn membarrier_register_publisher() -> bool {
    super::watch_forks();
    let me = super::fork_generation();
    if REGISTERED.load(Ordering::Acquire) == me {
        return true;
    }
    if FAILED_IN.load(Ordering::Relaxed) == me {
        return false;
    }
    match membarrier(MembarrierCommand::RegisterGlobalExpedited) {
        Ok(()) => {
            REGISTERED.store(me, Ordering::Release);
            true
        }
        Err(_) => {
            FAILED_IN.store(me, Ordering::Relaxed);
            false
        }
    }
}

/// Runs a full memory barrier on every CPU that runs a registered process.
/// Returns false if the kernel refused (the caller must then not rely on it).
pub(crate) fn membarrier_global() -> bool {
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}
