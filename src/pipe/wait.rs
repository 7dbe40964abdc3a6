//! [`wait`]: block until one of several connections is ready to read, like
//! Python's `multiprocessing.connection.wait`.
//!
//! Spins over the connections for the shortest spin budget among them, then
//! raises every receiver's sleeper flag and sleeps on all of the flags at once
//! with `futex_waitv` (one system call, woken by whichever sender publishes
//! first), in bounded slices so that a peer that dies is noticed.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::Connection;
use crate::time::Deadline;
use crate::wait::{Kernel, Next, Phase, Sleeper, SpinPlan, Waiter, PEER_SLICE, PIPE_WAIT_POLL_BATCH};

/// Waits until at least one of `conns` is ready (a message to read, or its peer
/// gone so that a receive returns at once) or `timeout` passes (`None`: no
/// limit), and returns the indices into `conns` of those ready, in order. An
/// empty result means the timeout passed. Send-only ends are never ready.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use shmproc::pipe::{wait, Pipe};
/// let (a1, b1) = Pipe::new()?;
/// let (a2, b2) = Pipe::new()?;
/// b2.send_bytes(b"hi")?;
/// assert_eq!(wait(&[&a1, &a2], Some(Duration::from_secs(1))), vec![1]);
/// assert!(wait(&[&a1], Some(Duration::from_millis(10))).is_empty());
/// # drop((b1, a2)); Ok(()) }
/// ```
pub fn wait(conns: &[&Connection], timeout: Option<Duration>) -> Vec<usize> {
    let deadline = Deadline::after(timeout);
    let ready = |force: bool| -> Vec<usize> {
        conns.iter().enumerate().filter(|(_, c)| c.ready_now(force)).map(|(i, _)| i).collect()
    };
    let r = ready(false);
    if !r.is_empty() || deadline.expired() {
        return r;
    }
    let spin = conns.iter().map(|c| c.spin_budget()).min().unwrap_or(Duration::ZERO);
    let words: Vec<&AtomicU32> = conns.iter().filter_map(|c| c.rx_sleep_word()).collect();
    let waiter = Waiter {
        deadline,
        // The spin never outlasts the caller's deadline.
        spin: (!spin.is_zero()).then_some(SpinPlan {
            budget: Some(spin),
            batch: PIPE_WAIT_POLL_BATCH,
            expiry_ends_wait: false,
        }),
        // Every receiver's flag is raised, then one fence: pairs with the
        // senders' fence between their tail store and their flag load (see
        // the `pipe` module docs).
        sleeper: Sleeper::Flags(&words),
        slice: PEER_SLICE,
    };
    let found = |r: Vec<usize>| if r.is_empty() { Next::Wait } else { Next::Done(r) };
    waiter
        .run(&Kernel, |phase| match phase {
            Phase::Poll => found(ready(false)),
            // A slice ended: check the peers' liveness now.
            Phase::BeforeSleep { slice_ended: true } => found(ready(true)),
            _ => Next::Wait,
        })
        .unwrap_or_default()
}
