//! System calls the pipe needs beyond plain futex wait/wake: waiting on several
//! futex words at once (`futex_waitv`, Linux 5.16+), the parent pid, and a fork
//! counter kept by a `pthread_atfork` *prepare* handler.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Once;
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

static FORKS: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: Once = Once::new();

thread_local! {
    /// Forks made by this thread (the prepare handler runs in the forking thread).
    static THREAD_FORKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

extern "C" fn before_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    // `try_with`: a thread-local being torn down must not make fork panic.
    let _ = THREAD_FORKS.try_with(|c| c.set(c.get().wrapping_add(1)));
}

/// This thread's fork count, tagged with the thread's id in the high 32 bits,
/// so that stamps taken on different threads never compare equal.
pub(crate) fn thread_fork_stamp() -> u64 {
    let forks = THREAD_FORKS.try_with(|c| c.get()).unwrap_or(0);
    (u64::from(super::current_thread().id) << 32) | u64::from(forks)
}

/// How many times this process has called `fork()` (through libc, which runs
/// `pthread_atfork` handlers) since [`watch_forks`] was first called. A forked
/// child inherits the parent's count at the moment of the fork.
pub(crate) fn fork_count() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Registers (once per process) the prepare handler behind [`fork_count`].
pub(crate) fn watch_forks() {
    FORK_HOOK.call_once(|| {
        // SAFETY: `before_fork` is an `extern "C" fn()` that only does an atomic
        // add; it runs in the parent just before fork, where anything is allowed.
        let rc = unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
        debug_assert_eq!(rc, 0, "pthread_atfork failed");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
            super::super::futex_wake_all(&a2);
        });
        let deadline = super::super::monotonic_now() + Duration::from_secs(5);
        assert_eq!(futex_waitv(&[&b, &a], 1, Some(deadline)), Some(WaitOutcome::Woken));
        t.join().unwrap();
    }
}
