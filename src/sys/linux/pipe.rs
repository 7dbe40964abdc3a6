//! System calls the pipe needs beyond plain futex wait/wake: waiting on several
//! futex words at once (`futex_waitv`, Linux 5.16+). Its fork counts live in
//! the fork layer ([`super::fork`](mod@super::fork)).

use std::ffi::c_void;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;
use rustix::time::{ClockId, Timespec};

use super::futex::WaitOutcome;

/// Most futex words one `futex_waitv` call accepts (`FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAITV_MAX: usize = 128;

/// `futex_waitv(waiters, n, 0, deadline, CLOCK_MONOTONIC)` on shared (never
/// `FUTEX2_PRIVATE`) 32-bit words: sleeps while every `words[i] == expected`,
/// until one of them is woken or the absolute monotonic `deadline` passes.
///
/// Returns `None` when the kernel lacks `futex_waitv` (ENOSYS) or `words` is
/// empty or longer than [`FUTEX_WAITV_MAX`]; the caller then falls back to
/// bounded single-word waits.
pub(crate) fn futex_waitv(words: &[&AtomicU32], expected: u32, deadline: Option<Duration>) -> Option<WaitOutcome> {
    if words.is_empty() || words.len() > FUTEX_WAITV_MAX {
        return None;
    }
    let waiters: Vec<futex::Wait> = words
        .iter()
        .map(|w| {
            let mut x = futex::Wait::new();
            x.val = u64::from(expected);
            x.uaddr = futex::WaitPtr::new(w.as_ptr() as *mut c_void);
            x.flags = futex::WaitFlags::SIZE_U32;
            x
        })
        .collect();
    let ts = deadline
        .map(|d| Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: d.subsec_nanos().into() });
    // The addresses in `waiters` point at atomics borrowed for the whole call
    // (`words`), so the kernel reads live, aligned u32s.
    match futex::waitv(&waiters, futex::WaitvFlags::empty(), ts.as_ref(), ClockId::Monotonic) {
        Ok(_) => Some(WaitOutcome::Woken),
        Err(Errno::TIMEDOUT) => Some(WaitOutcome::TimedOut),
        Err(Errno::NOSYS) => None,
        // AGAIN: a word no longer held `expected`; INTR: a signal. Look again.
        Err(_) => Some(WaitOutcome::Woken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn waitv_times_out_and_sees_changed_words() {
        let a = AtomicU32::new(1);
        let b = AtomicU32::new(1);
        let deadline = super::super::monotonic_now() + Duration::from_millis(20);
        assert_eq!(futex_waitv(&[&a, &b], 1, Some(deadline)), Some(WaitOutcome::TimedOut));
        b.store(0, Ordering::SeqCst);
        let deadline = super::super::monotonic_now() + Duration::from_secs(10);
        assert_eq!(futex_waitv(&[&a, &b], 1, Some(deadline)), Some(WaitOutcome::Woken));
    }

    #[test]
    fn waitv_is_woken_by_futex_wake() {
        let a = std::sync::Arc::new(AtomicU32::new(1));
        let b = AtomicU32::new(1);
        let a2 = a.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a2.store(0, Ordering::SeqCst);
            super::super::futex_wake(&a2, i32::MAX as u32);
        });
        let deadline = super::super::monotonic_now() + Duration::from_secs(5);
        assert_eq!(futex_waitv(&[&b, &a], 1, Some(deadline)), Some(WaitOutcome::Woken));
        t.join().unwrap();
    }
}
