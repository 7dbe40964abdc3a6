//! A named segment truncated under its mapping by another process (anyone
//! who may write the name can `ftruncate` it; POSIX names cannot be sealed):
//! the process that maps it must not die of SIGBUS, its operations must fail
//! with their corrupt error, and a blocked wait on it must end. A SIGBUS that
//! is not about a segment must still kill the process as before.
//!
//! Every scenario runs in a forked child, so that a SIGBUS shows up as the
//! child's death (signal 7), not as the test binary's.

use std::fs::OpenOptions;
use std::time::{Duration, Instant};

use ipc_tests::{fork_run, unique_name, wait_pid, Ended};
use shmproc::{
    AccessError, AcquireError, Array, Barrier, BarrierError, Condition, Event, JoinableQueue, LockError, Mutex, Pipe,
    Queue, QueueJoinError, RawValue, RecvError, RecvTimeoutError, Semaphore, SendError, TaskDoneError, TryRecvError,
    Value,
};

const T: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_secs(5);

/// Truncates `/dev/shm/NAME` to `len` bytes, as a hostile or careless peer would.
fn truncate(name: &str, len: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap_or_else(|e| panic!("open /dev/shm/{name}: {e}"));
    f.set_len(len).expect("ftruncate");
}

/// Runs `f` in a forked child and returns how it ended.
fn in_child(f: impl FnOnce() -> i32) -> Ended {
    wait_pid(orphan_proof(f), T)
}

/// `fork_run`, with the child killed if this test process dies first (a
/// SIGBUS here must not leave a child blocked for ever).
fn orphan_proof(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    fork_run(move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return 100;
        }
        f()
    })
}

/// `f` in a forked child must exit 0: not die of SIGBUS (signal 7), not fail
/// a check (other codes).
fn survives(what: &str, f: impl FnOnce() -> i32) {
    let ended = in_child(f);
    assert_eq!(
        ended,
        Ended::Code(0),
        "{what}: child ended {ended:?} (signal 7 is SIGBUS; codes name the failed check)"
    );
}

/// Runs `op` (numbered from 0) until it fails, at most `limit` times: the
/// first error, or `None` if every call succeeded.
fn first_error<E>(limit: u64, mut op: impl FnMut(u64) -> Result<(), E>) -> Option<E> {
    (0..limit).find_map(|i| op(i).err())
}

#[test]
fn value_array_and_mutex_report_corrupt() {
    let vn = unique_name("trunc-value");
    let v = Value::<u64>::create(&vn, 5).unwrap();
    let an = unique_name("trunc-array");
    let a = Array::<u32>::create(&an, &[1; 4096]).unwrap();
    let mn = unique_name("trunc-mutex");
    let m = Mutex::<[u8; 64]>::create(&mn, [7; 64]).unwrap();
    assert_eq!(v.get().unwrap(), 5);
    truncate(&vn, 0);
    // Only the payload's tail pages: the header and the lock word survive.
    truncate(&an, 4096);
    truncate(&mn, 0);
    survives("value, array, mutex", move || {
        if !matches!(v.get(), Err(AccessError::Corrupt)) {
            return 1;
        }
        if !matches!(v.set(3), Err(AccessError::Corrupt)) {
            return 2;
        }
        if !matches!(a.to_vec(), Err(AccessError::Corrupt)) {
            return 3;
        }
        if !matches!(m.lock_timeout(SHORT), Err(LockError::Corrupt)) {
            return 4;
        }
        if !matches!(m.try_lock(), Err(LockError::Corrupt)) {
            return 5;
        }
        0
    });
}

#[test]
fn queue_handles_report_corrupt() {
    let name = unique_name("trunc-queue");
    let q = Queue::<u64>::builder().name(&name).capacity(64).create().unwrap();
    q.send(1).unwrap();
    let sn = unique_name("trunc-spsc");
    let s = Queue::<u64>::builder().name(&sn).capacity(64).spsc(true).create().unwrap();
    // Enough operations for the shared handle's biased fast path.
    for i in 0..100 {
        s.send(i).unwrap();
        assert_eq!(s.recv_timeout(SHORT).unwrap(), i);
    }
    let fresh = unique_name("trunc-fresh");
    let f = Queue::<u64>::builder().name(&fresh).capacity(64).create().unwrap();
    truncate(&name, 4096);
    truncate(&sn, 0);
    truncate(&fresh, 0);
    survives("queue", move || {
        // The very first access after the truncation faults in the middle
        // of the send: it must not report the message sent.
        if !matches!(f.send(9), Err(SendError::Corrupt(9))) {
            return 7;
        }
        if !matches!(q.try_recv(), Err(TryRecvError::Corrupt)) {
            return 1;
        }
        let t = Instant::now();
        if !matches!(q.recv_timeout(SHORT), Err(RecvTimeoutError::Corrupt)) || t.elapsed() >= SHORT {
            return 2;
        }
        if !matches!(q.send(2), Err(SendError::Corrupt(2))) {
            return 3;
        }
        // The SPSC handle's fast path checks every 1024 operations and
        // whenever it waits: within that bound, the sends fail.
        let Some(failed) = first_error(1100, |i| s.send(i)) else { return 4 };
        if !matches!(failed, SendError::Corrupt(_)) {
            return 5;
        }
        if !matches!(s.recv_timeout(SHORT), Err(RecvTimeoutError::Corrupt)) {
            return 6;
        }
        0
    });
}

#[test]
fn exclusive_endpoints_report_corrupt_within_the_check_interval() {
    let name = unique_name("trunc-ep");
    let q = Queue::<u64>::builder().name(&name).capacity(4096).spsc(true).create().unwrap();
    let mut tx = q.spsc_sender().unwrap();
    let mut rx = q.spsc_receiver().unwrap();
    for i in 0..10 {
        tx.send(i).unwrap();
        assert_eq!(rx.recv().unwrap(), i);
    }
    truncate(&name, 0);
    survives("exclusive endpoints", move || {
        let Some(failed) = first_error(1100, |i| tx.send(i)) else { return 1 };
        if !matches!(failed, SendError::Corrupt(_)) {
            return 2;
        }
        let Some(failed) = first_error(1100, |_| rx.recv_timeout(SHORT).map(drop)) else { return 3 };
        if !matches!(failed, RecvTimeoutError::Corrupt) {
            return 4;
        }
        0
    });
}

#[test]
fn a_receiver_blocked_without_timeout_wakes_with_an_error() {
    let qn = unique_name("trunc-blockq");
    let q = Queue::<u64>::builder().name(&qn).capacity(64).create().unwrap();
    let pn = unique_name("trunc-blockp");
    // End A stays here (its drop would unlink the name); the child opens B.
    let a = Pipe::builder().name(&pn).create().unwrap();
    // Raised by the pipe child once it holds end B (an anonymous segment).
    let opened = RawValue::<u32>::anonymous(0).unwrap();
    let qc = q.clone();
    let queue_child = orphan_proof(move || match qc.recv() {
        Err(RecvError::Corrupt) => 0,
        Err(_) => 1,
        Ok(_) => 2,
    });
    let (pn2, flag) = (pn.clone(), opened.clone());
    let pipe_child = orphan_proof(move || {
        let Ok(b) = Pipe::builder().name(&pn2).open() else { return 3 };
        flag.atomic().store(1, std::sync::atomic::Ordering::Release);
        match b.recv_bytes() {
            Err(shmproc::pipe::RecvError::Corrupt { .. }) => 0,
            Err(_) => 1,
            Ok(_) => 2,
        }
    });
    let end = Instant::now() + T;
    while opened.atomic().load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(Instant::now() < end, "the pipe child never opened its end");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Most likely both sleep on their futex by now; if not, they meet the
    // truncation at their next look instead.
    std::thread::sleep(Duration::from_millis(200));
    truncate(&qn, 0);
    truncate(&pn, 0);
    assert_eq!(wait_pid(queue_child, T), Ended::Code(0), "queue receiver (signal 7 is SIGBUS)");
    assert_eq!(wait_pid(pipe_child, T), Ended::Code(0), "pipe receiver (signal 7 is SIGBUS)");
    drop((q, a));
}

#[test]
fn pipe_barrier_and_condition_report_their_errors() {
    let pn = unique_name("trunc-pipe");
    let a = Pipe::builder().name(&pn).create().unwrap();
    let bn = unique_name("trunc-barrier");
    let b = Barrier::create(&bn, 2).unwrap();
    let b1n = unique_name("trunc-barrier1");
    let b1 = Barrier::create(&b1n, 1).unwrap();
    let mn = unique_name("trunc-cond-mutex");
    let m = Mutex::<u64>::create(&mn, 0).unwrap();
    let cond = Condition::anonymous().unwrap();
    truncate(&pn, 0);
    truncate(&bn, 0);
    truncate(&b1n, 0);
    // The child truncates the mutex's file itself: this process keeps the
    // name (a creator's last handle unlinks it as it drops).
    let keep = m.clone();
    survives("pipe, barrier, condition", move || {
        // The first access after the truncation is this send's.
        if !matches!(a.send_bytes(b"hi"), Err(shmproc::pipe::SendError::Corrupt { .. })) {
            return 1;
        }
        if !matches!(a.recv_bytes_timeout(SHORT), Err(shmproc::pipe::RecvError::Corrupt { .. })) {
            return 2;
        }
        if !a.poll(SHORT) {
            return 3;
        }
        let t = Instant::now();
        if !matches!(b.wait(), Err(BarrierError::Broken)) || t.elapsed() >= SHORT {
            return 4;
        }
        // A one-party barrier opens at once: not in zero pages.
        if !matches!(b1.wait(), Err(BarrierError::Broken)) {
            return 5;
        }
        // The mutex's segment goes while a condition waits with it unlocked:
        // the relock reports it.
        let Ok(g) = m.lock() else { return 6 };
        truncate(&mn, 0);
        if !matches!(cond.wait_timeout(g, Duration::from_millis(100)), Err(LockError::Corrupt)) {
            return 7;
        }
        0
    });
    drop(keep);
}

/// The handler only takes faults in watched segments: any other SIGBUS (here
/// a truncated file of the program's own) goes to the handler that was there
/// before (Rust's) and ends the process with SIGBUS, as without shmproc.
#[test]
fn other_sigbus_still_kills() {
    let name = unique_name("trunc-other");
    let v = Value::<u64>::create(&name, 1).unwrap();
    let path = std::env::temp_dir().join(format!("{name}.file"));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    file.set_len(4096).unwrap();
    let ended = in_child(|| {
        // The handler is installed (a named segment is mapped).
        if v.get().is_err() {
            return 1;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of our own one-page file.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return 2;
        }
        file.set_len(0).unwrap();
        // SAFETY: the page is mapped; reading past the file's end raises SIGBUS.
        let x = unsafe { std::ptr::read_volatile(p as *const u8) };
        i32::from(x) + 3
    });
    std::fs::remove_file(&path).unwrap();
    if std::env::var_os("SHMPROC_UNDER_ASAN").is_some() {
        // ci/asan.sh: the handler before ours is AddressSanitizer's, which
        // reports the fault and exits with 1. Either way the fault reached it
        // (a swallowed fault would go on and return 3 or more).
        assert_eq!(ended, Ended::Code(1), "a fault outside any segment, under AddressSanitizer");
    } else {
        assert_eq!(ended, Ended::Signal(libc::SIGBUS), "a fault outside any segment");
    }
}

/// The truncation lands in the middle of an operation: the send checks
/// first (nothing lost yet), then meets the truncated pages (the child cuts
/// the file after the fork, so the parent's fork handlers did not touch it
/// first). The send must not report the message sent.
#[test]
fn an_operation_cut_short_by_the_truncation_is_not_reported_done() {
    let pn = unique_name("trunc-midway");
    let (a, b) = Pipe::builder().name(&pn).pair().unwrap();
    a.send_bytes(b"before").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"before");
    let name = pn.clone();
    survives("a send cut short", move || {
        truncate(&name, 8192);
        match a.send_bytes(&[5u8; 64 << 10]) {
            Err(shmproc::pipe::SendError::Corrupt { .. }) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        }
    });
    drop(b);
}

/// As above for an MPMC queue: the send finds the queue whole at its first
/// look (the header, control words and participant table survive: 256
/// participants of 32 bytes put the slots past the first 8 KiB), then writes
/// its slot, free by its zero stamp, into the lost part.
#[test]
fn a_queue_send_cut_short_is_not_reported_done() {
    let name = unique_name("trunc-qmidway");
    let q = Queue::<u64>::builder().name(&name).capacity(1024).max_participants(256).create().unwrap();
    let n = name.clone();
    let keep = q.clone();
    survives("a queue send cut short", move || {
        // This child's registration first (it writes the table), then the cut.
        if q.try_recv().is_ok() {
            return 3;
        }
        truncate(&n, 8192);
        match q.send(9) {
            Err(SendError::Corrupt(9)) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        }
    });
    drop(keep);
}

/// Waits with no timeout on an event, a semaphore and a condition whose named
/// segments another process truncates while they sleep (and on a condition
/// whose mutex's segment alone is truncated): each must end (the
/// flag and the count read zero for ever, and no `set`, `release` or
/// `notify` can reach the waiter's private pages), with `false`, `Corrupt`
/// and `Corrupt`. Before they looked at `Segment::lost` between slices, the
/// three children slept until the test killed them.
#[test]
fn waits_without_timeout_on_truncated_sync_objects_end() {
    let en = unique_name("trunc-event");
    let event = Event::create(&en).unwrap();
    let sn = unique_name("trunc-sem");
    let sem = Semaphore::create(&sn, 0).unwrap();
    let cn = unique_name("trunc-cond");
    let cond = Condition::create(&cn).unwrap();
    let mn = unique_name("trunc-cond-lock");
    let m = Mutex::<u64>::create(&mn, 0).unwrap();
    let waiting = RawValue::<u32>::anonymous(0).unwrap();
    let started = |w: &RawValue<u32>| {
        w.atomic().fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    };
    let (e, w1) = (event.clone(), waiting.clone());
    let event_child = orphan_proof(move || {
        started(&w1);
        if e.wait() {
            1
        } else {
            0
        }
    });
    let (s, w2) = (sem.clone(), waiting.clone());
    let sem_child = orphan_proof(move || {
        started(&w2);
        match s.acquire() {
            Err(AcquireError::Corrupt) => 0,
            Err(_) => 1,
            Ok(()) => 2,
        }
    });
    let (c, mc, w3) = (cond.clone(), m.clone(), waiting.clone());
    let cond_child = orphan_proof(move || {
        let Ok(g) = mc.lock() else { return 3 };
        started(&w3);
        match c.wait(g) {
            Err(LockError::Corrupt) => 0,
            Err(_) => 1,
            Ok(_) => 2,
        }
    });
    // Only the mutex's segment is cut here: the waiter sleeps on the
    // condition's word, which stays whole, and no notifier can lock the
    // mutex any more to wake it.
    let cn2 = unique_name("trunc-cond2");
    let cond2 = Condition::create(&cn2).unwrap();
    let mn2 = unique_name("trunc-cond2-lock");
    let m2 = Mutex::<u64>::create(&mn2, 0).unwrap();
    let (c2, mc2, w4) = (cond2.clone(), m2.clone(), waiting.clone());
    let cond2_child = orphan_proof(move || {
        let Ok(g) = mc2.lock() else { return 3 };
        started(&w4);
        match c2.wait(g) {
            Err(LockError::Corrupt) => 0,
            Err(_) => 1,
            Ok(_) => 2,
        }
    });
    let end = Instant::now() + T;
    while waiting.atomic().load(std::sync::atomic::Ordering::Acquire) < 4 {
        assert!(Instant::now() < end, "the children never started waiting");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Most likely all three sleep by now; if not, they meet the truncation
    // at their first look instead.
    std::thread::sleep(Duration::from_millis(200));
    truncate(&en, 0);
    truncate(&sn, 0);
    truncate(&cn, 0);
    truncate(&mn2, 0);
    assert_eq!(wait_pid(event_child, T), Ended::Code(0), "Event::wait (signal 7 is SIGBUS)");
    assert_eq!(wait_pid(sem_child, T), Ended::Code(0), "Semaphore::acquire (signal 7 is SIGBUS)");
    assert_eq!(wait_pid(cond_child, T), Ended::Code(0), "Condition::wait (signal 7 is SIGBUS)");
    assert_eq!(
        wait_pid(cond2_child, T),
        Ended::Code(0),
        "Condition::wait, its mutex's segment cut (signal 7 is SIGBUS)"
    );
    drop((event, sem, cond, m, cond2, m2));
}

#[test]
fn joinable_queue_on_a_truncated_segment_reports_corrupt() {
    // A join blocked (no timeout) when the segment is cut: it must end with
    // `Corrupt`, not read the lost counter as "every task done".
    let bn = unique_name("trunc-join-block");
    let blocked = JoinableQueue::<u32>::builder().name(&bn).capacity(8).create_joinable().unwrap();
    blocked.put(1).unwrap();
    let waiting = RawValue::<u32>::anonymous(0).unwrap();
    let (j, w) = (blocked.clone(), waiting.clone());
    let join_child = orphan_proof(move || {
        w.atomic().store(1, std::sync::atomic::Ordering::Release);
        match j.join() {
            Err(QueueJoinError::Corrupt) => 0,
            Err(_) => 1,
            Ok(()) => 2,
        }
    });
    // One cut before any call: join and task_done fail at once.
    let cn = unique_name("trunc-join");
    let cut = JoinableQueue::<u32>::builder().name(&cn).capacity(8).create_joinable().unwrap();
    cut.put(1).unwrap();
    assert_eq!(cut.get_timeout(SHORT), Ok(1));
    truncate(&cn, 0);
    survives("joinable queue", move || {
        if cut.join_timeout(SHORT) != Err(QueueJoinError::Corrupt) {
            return 1;
        }
        if cut.join() != Err(QueueJoinError::Corrupt) {
            return 2;
        }
        if cut.task_done() != Err(TaskDoneError::Corrupt) {
            return 3;
        }
        0
    });
    let end = Instant::now() + T;
    while waiting.atomic().load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(Instant::now() < end, "the joining child never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    truncate(&bn, 0);
    assert_eq!(wait_pid(join_child, T), Ended::Code(0), "JoinableQueue::join (signal 7 is SIGBUS)");
    drop(blocked);
}
