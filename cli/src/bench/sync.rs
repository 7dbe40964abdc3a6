//! Bench cases of the synchronization primitives.
//!
//! * `lock-incr`: two processes increment one shared counter under its lock,
//!   continuously; metric `incr_per_s` (both processes together). Transports:
//!   `mutex` (a shmproc `Value<u64>`, i.e. the robust futex lock), paired with
//!   `python-mp` (Python's `multiprocessing.Value` with its lock, see
//!   `python.rs`) where `python3` is present.
//! * `event-pingpong`: two processes bounce two flags, each side waiting
//!   until its flag is set; metric `rtt_ns`. Like is compared with like:
//!   - `event-spin` (two shmproc `Event`s; the handoff arrives within the
//!     event's spin budget, so the waiter never sleeps) against `raw-spin`;
//!   - `event-sleep` (the same, but each side first busy-waits
//!     [`SLEEP_DELAY`], longer than the event's spin budget, before it sets
//!     the other's flag, so every wait goes to sleep on the futex) against
//!     `raw-futex`, which in this scenario delays each handoff the same way.
//!     Both rows include the two delays: the ratio compares the sleeping paths.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{baselines, os::fork_child, Case, Config, Metric, Session, Work};

/// The cases of this area.
pub fn cases() -> Vec<Case> {
    use Metric::{IncrPerS, RttNs};
    vec![
        Case::new("lock-incr", "mutex", IncrPerS, lock_incr_mutex),
        Case::new("event-pingpong", "raw-spin", RttNs, baselines::spin_pingpong),
        Case::new("event-pingpong", "event-spin", RttNs, |c| pingpong_event(c, Duration::ZERO)).against("raw-spin"),
        Case::new("event-pingpong", "raw-futex", RttNs, |c| baselines::futex_pingpong_delayed(c, SLEEP_DELAY)),
        Case::new("event-pingpong", "event-sleep", RttNs, |c| pingpong_event(c, SLEEP_DELAY)).against("raw-futex"),
    ]
}

/// How long each side of the sleeping `event-pingpong` rows waits before it
/// sets the other's flag: well past the event's spin budget (200 pauses, a
/// few microseconds), so the other side is asleep by then.
pub const SLEEP_DELAY: Duration = Duration::from_micros(50);

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Busy-waits `d` (nothing when zero).
pub fn delay(d: Duration) {
    if d.is_zero() {
        return;
    }
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Increments per call of the parent's work, and between the child's stop checks.
const INCR_CHUNK: u64 = 256;

fn lock_incr_mutex(cfg: &Config) -> Result<Session, String> {
    let counter = shmproc::Value::<u64>::anonymous(0).map_err(|e| e.to_string())?;
    // flags[0]: stop.
    let flags = shmproc::RawArray::<u32>::builder().create_zeroed(1).map_err(|e| e.to_string())?;
    let child = {
        let (counter, flags) = (counter.clone(), flags.clone());
        fork_child(cfg.child_cpu, move || {
            let f = flags.atomics();
            while f[0].load(Ordering::Relaxed) == 0 {
                for _ in 0..INCR_CHUNK {
                    match counter.lock() {
                        Ok(mut g) => *g += 1,
                        Err(_) => return 3,
                    }
                }
            }
            0
        })
        .map_err(|e| format!("fork: {e}"))?
    };
    let stopper = flags.clone();
    Ok(Session::new(Work::Stream(Box::new(move || {
        let mut total = 0;
        for _ in 0..INCR_CHUNK {
            let mut g = counter.lock().map_err(|e| e.to_string())?;
            *g += 1;
            total = *g;
        }
        Ok(total)
    })))
    .child(child)
    .on_finish(move || stopper.atomics()[0].store(1, Ordering::Relaxed))
    .placement(cfg.pair_placement()))
}

fn pingpong_event(cfg: &Config, wait_first: Duration) -> Result<Session, String> {
    let a = shmproc::Event::anonymous().map_err(|e| e.to_string())?;
    let b = shmproc::Event::anonymous().map_err(|e| e.to_string())?;
    let stop = shmproc::RawArray::<u32>::builder().create_zeroed(1).map_err(|e| e.to_string())?;
    let child = {
        let (a, b, stop) = (a.clone(), b.clone(), stop.clone());
        fork_child(cfg.child_cpu, move || loop {
            if !a.wait_timeout(CHILD_TIMEOUT) {
                return 2;
            }
            a.clear();
            if stop.atomics()[0].load(Ordering::Acquire) != 0 {
                return 0;
            }
            delay(wait_first);
            b.set();
        })
        .map_err(|e| format!("fork: {e}"))?
    };
    let (a2, stopper) = (a.clone(), stop.clone());
    Ok(Session::new(Work::RoundTrip(Box::new(move |_| {
        delay(wait_first);
        a.set();
        if !b.wait_timeout(CHILD_TIMEOUT) {
            return Err("the child stopped answering".into());
        }
        b.clear();
        Ok(())
    })))
    .child(child)
    .on_finish(move || {
        stopper.atomics()[0].store(1, Ordering::Release);
        a2.set();
    })
    .placement(cfg.pair_placement()))
}
