//! Cross-process tests of shmproc's synchronization primitives. Every other
//! process is the `sync_worker` helper binary (exec'd, so nothing runs after a
//! fork inside this multi-threaded harness); objects reach it as handle strings.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use shmproc::{
    AcquireError, Barrier, BarrierError, BarrierWaitResult, BoundedSemaphore, Condition, Event, LockError, Mutex,
    RawArray, ReentrantMutex, ReleaseError, Semaphore, SemaphoreBuilder, ShmObject, Value,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!("shmproc-test-sync-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A helper process that is killed and reaped if the test ends early.
struct Worker(Child);

impl Worker {
    fn spawn(args: &[&str]) -> Worker {
        Worker(Command::new(env!("CARGO_BIN_EXE_sync_worker")).args(args).spawn().expect("spawn sync_worker"))
    }

    /// Waits up to `timeout` for the worker to exit; panics (after killing it) if it does not.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.0.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                panic!("sync_worker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn code(&mut self, timeout: Duration) -> Option<i32> {
        self.wait(timeout).code()
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const LONG: Duration = Duration::from_secs(60);

/// A handle string for an anonymous object, after letting its fd survive exec.
fn fd_handle<T: ShmObject>(obj: &T) -> String {
    obj.segment().set_inheritable(true).unwrap();
    obj.handle().to_string()
}

#[test]
fn mutex_four_processes_exact_increments() {
    let m = Mutex::<u64>::anonymous(0).unwrap();
    let h = fd_handle(&m);
    let start = Event::anonymous().unwrap();
    let hs = fd_handle(&start);
    let mut ws: Vec<_> = (0..4).map(|_| Worker::spawn(&["incr", &h, "20000", &hs])).collect();
    start.set();
    for w in &mut ws {
        assert_eq!(w.code(Duration::from_secs(120)), Some(0));
    }
    assert_eq!(*m.lock_timeout(LONG).unwrap(), 80_000);
}

/// Starts a worker that takes the lock behind `obj_handle`, writes 0xDEAD, and
/// then sleeps or aborts; returns once it holds the lock.
fn holder(role: &str, obj_handle: &str, mode: &str) -> Worker {
    let ready = Event::builder().name(unique("ready")).create().unwrap();
    let w = Worker::spawn(&[role, obj_handle, &ready.handle().to_string(), mode]);
    assert!(ready.wait_timeout(LONG), "holder never signalled");
    w
}

#[test]
fn killed_holder_owner_died_repair_and_continue() {
    let m = Mutex::<u64>::create(&unique("mtx-kill"), 1).unwrap();
    let mut w = holder("hold-mutex", &m.handle().to_string(), "sleep");
    // The holder is alive: timeouts, never early.
    assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
    for ms in [1u64, 30, 120] {
        let t = Instant::now();
        assert!(matches!(m.lock_timeout(Duration::from_millis(ms)), Err(LockError::Timeout)));
        assert!(t.elapsed() >= Duration::from_millis(ms), "lock_timeout({ms} ms) returned early");
    }
    w.kill9();
    let mut g = match m.lock_timeout(LONG) {
        Err(LockError::OwnerDied(g)) => g,
        other => panic!("expected OwnerDied, got {other:?}"),
    };
    assert_eq!(*g, 0xDEAD, "the dead holder's write is visible to the repairer");
    *g = 5;
    g.mark_consistent();
    drop(g);
    assert_eq!(*m.lock_timeout(LONG).unwrap(), 5);
    *m.try_lock().unwrap() += 1;
    assert_eq!(*m.lock_timeout(LONG).unwrap(), 6);
}

#[test]
fn aborted_holder_not_repaired_is_unrecoverable() {
    let m = Mutex::<u64>::anonymous(1).unwrap();
    let mut w = holder("hold-mutex", &fd_handle(&m), "abort");
    assert!(!w.wait(LONG).success());
    let g = m.lock_timeout(LONG).unwrap_err().into_guard().expect("OwnerDied with the guard");
    assert_eq!(*g, 0xDEAD);
    drop(g); // not marked consistent
    assert!(matches!(m.lock_timeout(LONG), Err(LockError::Unrecoverable)));
    assert!(matches!(m.try_lock(), Err(LockError::Unrecoverable)));
    assert!(matches!(m.lock_timeout(Duration::from_millis(5)), Err(LockError::Unrecoverable)));
    // Another process opening it sees the same.
    let again = Mutex::<u64>::open_handle(&m.handle()).unwrap();
    assert!(matches!(again.lock(), Err(LockError::Unrecoverable)));
}

#[test]
fn value_lock_killed_holder_repaired() {
    let v = Value::<u64>::create(&unique("val-kill"), 1).unwrap();
    let mut w = holder("hold-value", &v.handle().to_string(), "sleep");
    let t = Instant::now();
    assert!(matches!(v.lock_timeout(Duration::from_millis(50)), Err(LockError::Timeout)));
    assert!(t.elapsed() >= Duration::from_millis(50));
    w.kill9();
    match v.lock_timeout(LONG) {
        Err(LockError::OwnerDied(mut g)) => {
            assert_eq!(*g, 0xDEAD);
            *g = 2;
            g.mark_consistent();
        }
        other => panic!("expected OwnerDied, got {other:?}"),
    }
    assert_eq!(v.get().unwrap(), 2);
    v.update(|x| *x += 1).unwrap();
    assert_eq!(v.get().unwrap(), 3);
}

#[test]
fn value_lock_aborted_holder_unrecoverable() {
    let v = Value::<u64>::anonymous(1).unwrap();
    let mut w = holder("hold-value", &fd_handle(&v), "abort");
    assert!(!w.wait(LONG).success());
    assert!(v.lock_timeout(LONG).unwrap_err().is_owner_died());
    assert!(matches!(v.get(), Err(shmproc::AccessError::Unrecoverable)));
    assert!(matches!(v.try_lock(), Err(LockError::Unrecoverable)));
}

#[test]
fn reentrant_mutex_killed_holder() {
    let r = ReentrantMutex::anonymous().unwrap();
    let mut w = holder("hold-rlock", &fd_handle(&r), "sleep");
    assert!(matches!(r.try_lock(), Err(LockError::WouldBlock)));
    let t = Instant::now();
    assert!(matches!(r.lock_timeout(Duration::from_millis(30)), Err(LockError::Timeout)));
    assert!(t.elapsed() >= Duration::from_millis(30));
    w.kill9();
    let g = r.lock_timeout(LONG).unwrap_err().into_guard().expect("OwnerDied with the guard");
    assert_eq!(r.depth(), 1, "the dead holder's recursion count is not inherited");
    g.mark_consistent();
    let g2 = r.lock_timeout(LONG).unwrap();
    assert_eq!(r.depth(), 2);
    drop(g2);
    drop(g);
    assert_eq!(r.depth(), 0);
    let other = ReentrantMutex::open_handle(&r.handle()).unwrap();
    drop(other.try_lock().unwrap());
}

#[test]
fn semaphore_counts_across_processes() {
    let s = Semaphore::anonymous(2).unwrap();
    let stats = RawArray::<u64>::builder().create_zeroed(3).unwrap();
    let (hs, hst) = (fd_handle(&s), fd_handle(&stats));
    let start = Event::anonymous().unwrap();
    let hstart = fd_handle(&start);
    let mut ws: Vec<_> = (0..4).map(|_| Worker::spawn(&["sem", &hs, &hst, "200", &hstart])).collect();
    start.set();
    for w in &mut ws {
        assert_eq!(w.code(Duration::from_secs(120)), Some(0));
    }
    let st = stats.atomics();
    assert_eq!(st[2].load(Ordering::SeqCst), 800);
    let max_inside = st[1].load(Ordering::SeqCst);
    // Exactly 2: the four processes overlap (they start together and yield
    // while inside), so both permits are in use at some point, never more.
    assert_eq!(max_inside, 2, "{max_inside} processes inside a 2-permit semaphore at once");
    assert_eq!(s.value(), 2);
    // Timeouts are never early.
    s.acquire().unwrap();
    s.acquire().unwrap();
    let t = Instant::now();
    assert_eq!(s.acquire_timeout(Duration::from_millis(40)), Err(AcquireError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(40));
}

#[test]
fn bounded_semaphore_over_release_is_an_error() {
    let b = BoundedSemaphore::create(&unique("bsem"), 2).unwrap();
    let other = SemaphoreBuilder::default().open_handle_bounded(&b.handle()).unwrap();
    b.acquire().unwrap();
    other.release().unwrap();
    assert_eq!(other.release(), Err(ReleaseError::AboveBound { bound: 2 }));
    assert_eq!(b.release(), Err(ReleaseError::AboveBound { bound: 2 }));
    assert_eq!(b.value(), 2);
    // The wrong kind is refused.
    assert!(Semaphore::open_handle(&b.handle()).is_err());
}

#[test]
fn event_wakes_a_waiter_in_another_process() {
    let a = Event::anonymous().unwrap();
    let b = Event::create(&unique("ev")).unwrap();
    let mut w = Worker::spawn(&["event-relay", &fd_handle(&a), &b.handle().to_string(), "60000"]);
    // Not set yet: the wait times out, never early.
    let t = Instant::now();
    assert!(!b.wait_timeout(Duration::from_millis(50)));
    assert!(t.elapsed() >= Duration::from_millis(50));
    a.set();
    assert!(b.wait_timeout(LONG), "the other process never answered");
    assert_eq!(w.code(LONG), Some(0));
    // A waiter that is never woken gives up after its timeout.
    a.clear();
    let mut w = Worker::spawn(&["event-relay", &fd_handle(&a), &b.handle().to_string(), "100"]);
    assert_eq!(w.code(LONG), Some(1));
}

#[test]
fn condition_producer_consumer_across_processes() {
    const N: u64 = 1000;
    let m = Mutex::<[u64; 20]>::anonymous([0; 20]).unwrap();
    let cv = Condition::anonymous().unwrap();
    let (hm, hc) = (fd_handle(&m), fd_handle(&cv));
    let half = (N / 2).to_string();
    let mut ws: Vec<_> = (0..2).map(|_| Worker::spawn(&["cond-consumer", &hm, &hc, &half])).collect();
    for i in 1..=N {
        let g = m.lock_timeout(LONG).unwrap();
        let (mut g, timed_out) = cv.wait_timeout_while(g, LONG, |d| d[1] - d[0] >= 16).unwrap();
        assert!(!timed_out, "consumers stalled");
        let tail = g[1];
        g[4 + (tail % 16) as usize] = i;
        g[1] = tail + 1;
        drop(g);
        cv.notify_all();
    }
    for w in &mut ws {
        assert_eq!(w.code(Duration::from_secs(120)), Some(0));
    }
    let g = m.lock_timeout(LONG).unwrap();
    assert_eq!((g[0], g[1], g[2]), (N, N, N * (N + 1) / 2));
    // wait_timeout with nobody notifying: times out, never early.
    let t = Instant::now();
    let (_g, timed_out) = cv.wait_timeout(g, Duration::from_millis(40)).unwrap();
    assert!(timed_out && t.elapsed() >= Duration::from_millis(40));
}

#[test]
fn condition_wait_reports_mutex_owner_death_on_relock() {
    let m = Mutex::<u64>::anonymous(1).unwrap();
    let cv = Condition::anonymous().unwrap();
    let ready = Event::anonymous().unwrap();
    let g = m.lock_timeout(LONG).unwrap();
    // While we wait (mutex released), a child takes the mutex and is killed
    // holding it; our relock must hand the guard back as OwnerDied.
    let mut w = Worker::spawn(&["hold-mutex", &fd_handle(&m), &fd_handle(&ready), "sleep"]);
    let killer = {
        let (ready, cv) = (ready.clone(), cv.clone());
        std::thread::spawn(move || {
            assert!(ready.wait_timeout(LONG), "holder never signalled");
            w.kill9();
            cv.notify_all();
        })
    };
    // The child can only take the mutex once this wait has released it.
    let r = cv.wait_timeout(g, LONG);
    killer.join().unwrap();
    match r {
        Err(LockError::OwnerDied(g)) => {
            assert_eq!(*g, 0xDEAD);
            g.mark_consistent();
        }
        other => panic!("expected OwnerDied on relock, got {other:?}"),
    }
    assert_eq!(*m.lock_timeout(LONG).unwrap(), 0xDEAD);
}

#[test]
fn barrier_three_processes_hundred_generations() {
    let b = Barrier::anonymous(3).unwrap();
    let stats = RawArray::<u64>::builder().create_zeroed(2).unwrap();
    let (hb, hs) = (fd_handle(&b), fd_handle(&stats));
    let mut ws: Vec<_> = (0..3).map(|_| Worker::spawn(&["barrier", &hb, &hs, "100"])).collect();
    for w in &mut ws {
        assert_eq!(w.code(Duration::from_secs(120)), Some(0));
    }
    let st = stats.atomics();
    assert_eq!(st[0].load(Ordering::SeqCst), 300);
    assert_eq!(st[1].load(Ordering::SeqCst), 100, "exactly one leader per generation");
    assert!(!b.is_broken());
}

/// Waits at `b` on a thread of its own (`wait()`, or `wait_timeout`): the
/// test reads the result with a timeout of its own, so it never hangs.
fn wait_in_thread(b: &Barrier, timeout: Option<Duration>) -> Receiver<Result<BarrierWaitResult, BarrierError>> {
    let b = b.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(timeout.map_or_else(|| b.wait(), |t| b.wait_timeout(t))));
    rx
}

#[test]
fn barrier_killed_participant_breaks_it_without_a_timeout() {
    let b = Barrier::create(&unique("bar"), 3).unwrap();
    let h = b.handle().to_string();
    let mut survivor = Worker::spawn(&["barrier-n", &h, "2", "60000"]);
    let mut victim = Worker::spawn(&["barrier-n", &h, "1", "60000", "sleep"]);
    // Generation 1: everyone arrives.
    b.wait_timeout(LONG).unwrap();
    // The victim now sleeps; kill it before it arrives again.
    victim.kill9();
    // A wait with no timeout ends: the dead party owed this generation.
    let waiting = wait_in_thread(&b, None);
    assert_eq!(waiting.recv_timeout(LONG).expect("wait() hung on a dead party"), Err(BarrierError::Broken));
    assert_eq!(survivor.code(LONG), Some(20), "the survivor must see a broken barrier, not hang");
    assert!(b.is_broken());
    assert_eq!(b.wait_timeout(LONG), Err(BarrierError::Broken));
}

#[test]
fn barrier_timeout_still_breaks_it_for_all() {
    let b = Barrier::create(&unique("bar"), 3).unwrap();
    let h = b.handle().to_string();
    // One other party arrives and waits; the third never comes (nobody died).
    let mut other = Worker::spawn(&["barrier-n", &h, "1", "60000"]);
    let t = Instant::now();
    assert_eq!(b.wait_timeout(Duration::from_millis(300)), Err(BarrierError::Timeout));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(other.code(LONG), Some(20));
    assert!(b.is_broken());
}

/// A party of two passes one generation, then ends as `mode` says (see
/// `barrier-n` in sync_worker) with exit code `code`, before it arrives
/// again: our next wait ends `Broken`.
fn party_ends_between_waits(mode: &str, code: i32) {
    let b = Barrier::create(&unique("bar"), 2).unwrap();
    let mut party = Worker::spawn(&["barrier-n", &b.handle().to_string(), "1", "60000", mode]);
    b.wait_timeout(LONG).unwrap();
    assert_eq!(b.wait_timeout(LONG), Err(BarrierError::Broken), "{mode}: the party will never arrive");
    assert_eq!(party.code(LONG), Some(code));
}

#[test]
fn barrier_party_that_panics_between_waits_breaks_it() {
    party_ends_between_waits("panic", 101);
}

#[test]
fn barrier_party_that_exits_holding_its_handle_breaks_it() {
    party_ends_between_waits("exit", 0);
}

#[test]
fn barrier_party_that_leaves_cleanly_can_be_replaced() {
    let b = Barrier::create(&unique("bar"), 2).unwrap();
    let h = b.handle().to_string();
    let mut first = Worker::spawn(&["barrier-n", &h, "1", "60000"]);
    b.wait_timeout(LONG).unwrap();
    // It dropped its handle and exited: it owes nothing.
    assert_eq!(first.code(LONG), Some(0));
    let waiting = wait_in_thread(&b, Some(LONG));
    // Several dead-party looks (one per 50 ms slice) pass before the
    // replacement arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut second = Worker::spawn(&["barrier-n", &h, "1", "60000"]);
    assert!(waiting.recv_timeout(LONG).expect("the waiter hung").is_ok());
    assert_eq!(second.code(LONG), Some(0));
    assert!(!b.is_broken());
}
