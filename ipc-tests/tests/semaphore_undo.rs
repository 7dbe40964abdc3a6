//! Issue 13 item 4: owned semaphore permits (`acquire_guard`, like SysV
//! `SEM_UNDO`) come back when their holder is killed with SIGKILL.

use std::time::{Duration, Instant};

use ipc_tests::{fork_run, wait_pid, Ended};
use shmproc::{AcquireError, BoundedSemaphore, Semaphore};

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill9(pid: libc::pid_t) {
    // SAFETY: killing our own forked child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(wait_pid(pid, Duration::from_secs(30)), Ended::Signal(libc::SIGKILL));
}

#[test]
fn owned_permit_of_a_killed_holder_comes_back() {
    let sem = Semaphore::anonymous(2).unwrap();
    let s = sem.clone();
    let pid = fork_run(move || {
        let a = s.acquire_guard_timeout(Duration::from_secs(10));
        let b = s.acquire_guard_timeout(Duration::from_secs(10));
        if a.is_err() || b.is_err() {
            return 1;
        }
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    until("the child to take both permits", || sem.value() == 0);
    kill9(pid);
    // Both permits come back to waiters (plain acquire and an owned one).
    sem.acquire_timeout(Duration::from_secs(10)).expect("first permit back");
    let g = sem.acquire_guard_timeout(Duration::from_secs(10)).expect("second permit back");
    assert_eq!(sem.try_acquire(), Err(AcquireError::WouldBlock), "a permit came back twice");
    drop(g);
    assert_eq!(sem.value(), 1);
}

#[test]
fn bounded_owned_permit_comes_back_once_and_respects_the_bound() {
    let sem = BoundedSemaphore::anonymous(1).unwrap();
    let s = sem.clone();
    let pid = fork_run(move || {
        let g = s.acquire_guard();
        std::thread::sleep(Duration::from_secs(60));
        drop(g);
        0
    });
    until("the child to take the permit", || sem.value() == 0);
    kill9(pid);
    let g = sem.acquire_guard_timeout(Duration::from_secs(10)).expect("permit back");
    assert_eq!(sem.value(), 0);
    drop(g);
    assert_eq!(sem.value(), 1);
    // Unowned permits are unchanged: a holder that dies keeps them (as Python).
    let s = sem.clone();
    let pid = fork_run(move || {
        if s.acquire().is_err() {
            return 1;
        }
        std::thread::sleep(Duration::from_secs(60));
        0
    });
    until("the child to take the unowned permit", || sem.value() == 0);
    kill9(pid);
    assert_eq!(sem.acquire_timeout(Duration::from_millis(200)), Err(AcquireError::Timeout));
}

#[test]
fn guard_returns_its_permit_on_drop_and_table_is_bounded() {
    let sem = Semaphore::anonymous(100).unwrap();
    let guards: Vec<_> = (0..shmproc::OWNED_PERMITS).map(|_| sem.acquire_guard().unwrap()).collect();
    assert!(matches!(sem.acquire_guard(), Err(AcquireError::TableFull)));
    assert_eq!(sem.value(), 100 - shmproc::OWNED_PERMITS as u32);
    drop(guards);
    assert_eq!(sem.value(), 100);
}
