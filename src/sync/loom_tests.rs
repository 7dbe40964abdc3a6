//! loom models of the raw mutex, the semaphore, the event, and the sleeper
//! handshakes of the queue and the pipe (`crate::wait`: `Announce`, `Flag`),
//! on heap twins of their shared state. Run with `ci/loom.sh`
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib loom`).
//!
//! The futex is modelled by a loom `Mutex` + `Condvar` with the kernel's
//! semantics (the word is compared under the same lock that wakers take, so a
//! wake between the check and the sleep is never lost); thread death by a
//! flag that the "dying" thread sets instead of unlocking, which `alive`
//! reads. With `sliced` the model's waits time out at once (a liveness slice
//! ending); without it waits block until woken, so a lost wake-up shows up as
//! a loom deadlock.

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicBool;
use loom::sync::{Arc, Condvar, Mutex};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use super::atomic::AtomicU32;
use super::event::EventState;
use super::raw_mutex::{Acquired, RawMutex};
use super::semaphore::RawSemaphore;
use super::{Platform, Wait};
use crate::sys::Identity;
use crate::time::Deadline;
use crate::wait::{Announce, Flag, Next, Phase, SleepWord, Sleeper, Waiter};

struct Park {
    m: Mutex<()>,
    cv: Condvar,
    dead: [AtomicBool; 4],
}

#[derive(Clone)]
struct Model {
    id: u32,
    park: Arc<Park>,
    sliced: bool,
}

impl Model {
    fn world(sliced: bool) -> Model {
        let park =
            Park { m: Mutex::new(()), cv: Condvar::new(), dead: std::array::from_fn(|_| AtomicBool::new(false)) };
        Model { id: 1, park: Arc::new(park), sliced }
    }
    fn thread(&self, id: u32) -> Model {
        Model { id, ..self.clone() }
    }
    fn die(&self) {
        self.park.dead[self.id as usize].store(true, SeqCst);
    }
}

impl Platform for Model {
    fn wait(&self, word: &AtomicU32, expected: u32, _deadline: Deadline) -> Wait {
        if self.sliced {
            loom::thread::yield_now();
            return Wait::TimedOut;
        }
        let g = self.park.m.lock().unwrap();
        if word.load(SeqCst) != expected {
            return Wait::Woken;
        }
        drop(self.park.cv.wait(g).unwrap());
        Wait::Woken
    }
    fn wake(&self, _word: &AtomicU32, n: u32) {
        let _g = self.park.m.lock().unwrap();
        if n == 1 {
            self.park.cv.notify_one();
        } else {
            self.park.cv.notify_all();
        }
    }
    fn me(&self) -> Identity {
        Identity { id: self.id, start_time: 1 }
    }
    fn alive(&self, who: Identity) -> bool {
        match self.park.dead.get(who.id as usize) {
            Some(d) => !d.load(SeqCst),
            None => false,
        }
    }
    fn liveness_slice(&self) -> Option<Duration> {
        self.sliced.then_some(Duration::from_millis(20))
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.max_branches = 100_000;
    b
}

struct Guarded {
    lock: RawMutex,
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is only accessed while `lock` is held (loom checks it).
unsafe impl Sync for Guarded {}
// SAFETY: as above.
unsafe impl Send for Guarded {}

#[test]
fn loom_mutex_excludes_and_wakes() {
    builder().check(|| {
        let world = Model::world(false);
        let g = Arc::new(Guarded { lock: RawMutex::new(), data: UnsafeCell::new(0) });
        let hs: Vec<_> = (1..=2)
            .map(|id| {
                let (g, p) = (g.clone(), world.thread(id));
                loom::thread::spawn(move || {
                    assert_eq!(g.lock.lock_with(&p, Deadline::NEVER), Ok(Acquired::Clean));
                    g.data.with_mut(|d| {
                        // SAFETY: the lock is held; loom flags any overlap.
                        unsafe { *d += 1 }
                    });
                    // SAFETY: locked above by this thread.
                    unsafe { g.lock.unlock_with(&p) };
                })
            })
            .collect();
        let p = world.thread(3);
        assert_eq!(g.lock.lock_with(&p, Deadline::NEVER), Ok(Acquired::Clean));
        g.data.with_mut(|d| {
            // SAFETY: the lock is held.
            unsafe { *d += 1 }
        });
        // SAFETY: locked above.
        unsafe { g.lock.unlock_with(&p) };
        for h in hs {
            h.join().unwrap();
        }
        // SAFETY: every thread joined.
        assert_eq!(g.data.with(|d| unsafe { *d }), 3);
        assert_eq!(g.lock.state(), 0);
    });
}

#[test]
fn loom_mutex_owner_death_is_detected_once() {
    builder().check(|| {
        let world = Model::world(true);
        let g = Arc::new(Guarded { lock: RawMutex::new(), data: UnsafeCell::new(0) });
        let victim = {
            let (g, p) = (g.clone(), world.thread(1));
            loom::thread::spawn(move || {
                assert_eq!(g.lock.lock_with(&p, Deadline::NEVER), Ok(Acquired::Clean));
                g.data.with_mut(|d| {
                    // SAFETY: the lock is held.
                    unsafe { *d = 7 }
                });
                p.die(); // never unlocks
            })
        };
        let hs: Vec<_> = (2..=2)
            .map(|id| {
                let (g, p) = (g.clone(), world.thread(id));
                loom::thread::spawn(move || {
                    let r = g.lock.lock_with(&p, Deadline::NEVER);
                    let died = match r {
                        Ok(Acquired::OwnerDied) => {
                            g.data.with_mut(|d| {
                                // SAFETY: the lock is held.
                                unsafe { *d = 1 }
                            });
                            g.lock.mark_consistent();
                            true
                        }
                        Ok(Acquired::Clean) => false,
                        Err(e) => panic!("{e:?}"),
                    };
                    // SAFETY: held.
                    unsafe { g.lock.unlock_with(&p) };
                    died
                })
            })
            .collect();
        victim.join().unwrap();
        let reports: Vec<bool> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        // If the victim locked before the other thread, that thread takes it
        // over (exactly once); if it locked last, nobody did and the lock is
        // orphaned now.
        let takeovers = reports.iter().filter(|&&d| d).count();
        assert!(takeovers <= 1);
        // Afterwards the lock is free and consistent.
        let p = world.thread(3);
        let r = g.lock.try_lock_with(&p);
        if takeovers == 1 {
            assert_eq!(r, Ok(Acquired::Clean));
        } else {
            // The victim locked last and died: the lock is orphaned now.
            assert_eq!(r, Ok(Acquired::OwnerDied));
        }
    });
}

#[test]
fn loom_semaphore_release_wakes_acquirers() {
    builder().check(|| {
        let world = Model::world(false);
        let s = Arc::new(RawSemaphore::new(0, 0));
        let hs: Vec<_> = (1..=2)
            .map(|id| {
                let (s, p) = (s.clone(), world.thread(id));
                loom::thread::spawn(move || s.acquire_with(&p, Deadline::NEVER, None).unwrap())
            })
            .collect();
        let p = world.thread(3);
        s.release_with(&p, None).unwrap();
        s.release_with(&p, None).unwrap();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(s.value(), 0);
    });
}

#[test]
fn loom_bounded_semaphore_never_exceeds_bound() {
    builder().check(|| {
        let world = Model::world(false);
        let s = Arc::new(RawSemaphore::new(1, 1));
        let h = {
            let (s, p) = (s.clone(), world.thread(1));
            loom::thread::spawn(move || {
                s.acquire_with(&p, Deadline::NEVER, None).unwrap();
                s.release_with(&p, Some(1)).is_ok()
            })
        };
        let p = world.thread(2);
        // An extra release fits only while thread 1 holds the permit, and then
        // thread 1's own release must be refused: exactly one of them succeeds.
        let extra = s.release_with(&p, Some(1)).is_ok();
        let own = h.join().unwrap();
        assert!(extra ^ own, "extra={extra} own={own}");
        assert_eq!(s.value(), 1);
    });
}

#[test]
fn loom_event_set_wakes_every_waiter() {
    builder().check(|| {
        let world = Model::world(false);
        let e = Arc::new(EventState::new());
        let hs: Vec<_> = (1..=2)
            .map(|id| {
                let (e, p) = (e.clone(), world.thread(id));
                loom::thread::spawn(move || assert!(e.wait(&p, Deadline::NEVER)))
            })
            .collect();
        e.set(&world.thread(3));
        for h in hs {
            h.join().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// The queue's and the pipe's waiting (the handshakes of `crate::wait`)
// ---------------------------------------------------------------------------

/// A heap twin of one queue side: the ring's publication (a message count
/// standing in for the slot stamps), and the side's `not_empty` futex word and
/// `recv_sleepers` count.
struct QueueSide {
    published: AtomicU32,
    taken: AtomicU32,
    not_empty: AtomicU32,
    recv_sleepers: AtomicU32,
}

impl QueueSide {
    fn new() -> Self {
        QueueSide {
            published: AtomicU32::new(0),
            taken: AtomicU32::new(0),
            not_empty: AtomicU32::new(0),
            recv_sleepers: AtomicU32::new(0),
        }
    }

    /// One receive attempt (the ring's `try_pop`).
    fn attempt(&self) -> bool {
        let t = self.taken.load(SeqCst);
        if self.published.load(SeqCst) > t {
            self.taken.store(t + 1, SeqCst);
            true
        } else {
            false
        }
    }

    /// `Engine::wait`'s loop (the same [`Waiter`]), without spinning.
    fn recv(&self, p: &Model) {
        if self.attempt() {
            return;
        }
        let waiter = Waiter {
            deadline: Deadline::NEVER,
            spin: None,
            sleeper: Sleeper::Counted(Announce::new(&self.not_empty, &self.recv_sleepers)),
            slice: Duration::from_millis(50),
        };
        let r = waiter.run(p, |phase| match phase {
            Phase::Poll | Phase::Slept if self.attempt() => Next::Done(()),
            _ => Next::Wait,
        });
        assert_eq!(r, Ok(()));
    }

    /// `try_push` then `Engine::notify` (with the full fence: no `membarrier` in the model).
    fn send(&self, p: &Model) {
        self.published.fetch_add(1, std::sync::atomic::Ordering::Release);
        <AtomicU32 as SleepWord>::fence();
        crate::wait::wake_counted(p, &self.not_empty, &self.recv_sleepers, false);
    }
}

#[test]
fn loom_queue_sleeper_never_misses_a_publication() {
    builder().check(|| {
        let world = Model::world(false);
        let q = Arc::new(QueueSide::new());
        let rx = {
            let (q, p) = (q.clone(), world.thread(1));
            loom::thread::spawn(move || {
                q.recv(&p);
                q.recv(&p);
            })
        };
        let p = world.thread(2);
        q.send(&p);
        q.send(&p);
        rx.join().unwrap();
        assert_eq!(q.taken.load(SeqCst), 2);
        assert_eq!(q.recv_sleepers.load(SeqCst), 0);
    });
}

/// A heap twin of one pipe ring: the producer's `tail`, the consumer's
/// position, its `rx_sleep` flag, and the producer's end-slot state.
struct PipeRing {
    tail: AtomicU32,
    rx_sleep: AtomicU32,
    closed: AtomicU32,
}

impl PipeRing {
    fn new() -> Self {
        PipeRing { tail: AtomicU32::new(0), rx_sleep: AtomicU32::new(0), closed: AtomicU32::new(0) }
    }

    /// `Connection::block_on` (the same [`Waiter`]) without spinning, waiting
    /// for `tail != head` (true) or the peer closed (false).
    fn wait_data(&self, p: &Model, head: u32) -> bool {
        let flag = [&self.rx_sleep];
        let waiter = Waiter {
            deadline: Deadline::NEVER,
            spin: None,
            sleeper: Sleeper::Flags(&flag),
            slice: Duration::from_millis(50),
        };
        let r = waiter.run(p, |phase| match phase {
            Phase::Poll if self.tail.load(std::sync::atomic::Ordering::Acquire) != head => Next::Done(true),
            Phase::BeforeSleep { .. } if self.closed.load(SeqCst) != 0 => {
                Next::Done(self.tail.load(std::sync::atomic::Ordering::Acquire) != head)
            }
            _ => Next::Wait,
        });
        r.unwrap()
    }

    /// `Connection::publish_tail`.
    fn publish(&self, p: &Model, tail: u32) {
        self.tail.store(tail, std::sync::atomic::Ordering::Release);
        Flag::wake(p, &self.rx_sleep);
    }

    /// `Connection::finish` closing the end: mark it closed, fence, wake.
    fn close(&self, p: &Model) {
        self.closed.store(1, SeqCst);
        <AtomicU32 as SleepWord>::fence();
        Flag::wake_now(p, &self.rx_sleep);
    }
}

#[test]
fn loom_pipe_sleeper_never_misses_a_publication() {
    builder().check(|| {
        let world = Model::world(false);
        let r = Arc::new(PipeRing::new());
        let rx = {
            let (r, p) = (r.clone(), world.thread(1));
            loom::thread::spawn(move || {
                assert!(r.wait_data(&p, 0));
                let head = r.tail.load(SeqCst);
                if head < 2 {
                    assert!(r.wait_data(&p, head));
                }
            })
        };
        let p = world.thread(2);
        r.publish(&p, 1);
        r.publish(&p, 2);
        rx.join().unwrap();
    });
}

#[test]
fn loom_pipe_close_wakes_the_sleeper() {
    builder().check(|| {
        let world = Model::world(false);
        let r = Arc::new(PipeRing::new());
        let rx = {
            let (r, p) = (r.clone(), world.thread(1));
            loom::thread::spawn(move || r.wait_data(&p, 0))
        };
        let p = world.thread(2);
        r.close(&p);
        assert!(!rx.join().unwrap());
    });
}

// ------------------------------------------------------------------ barrier
//
// The barrier's table of watched processes (`barrier.rs`: a party that dies
// between two waits breaks the barrier). Processes are threads here: each
// `Proc` has its own process-local record (a loom mutex) and pid; threads
// of one process share a `Proc`. A process dies by raising its flag and
// returning (it writes nothing more), which `runs` reads. Waits are sliced
// (`Model::world(true)`), and a waiter looks at the table after every
// slice: a waiter that never learns of a death loops for ever, which the
// model reports after 200 looks (with the state of the table), so these
// also check "never hangs". `Model::world(true)`'s sliced waits serve two
// threads only: with three, loom's search follows a spinning waiter
// through stale reads of the generation without end. Three threads wait
// on `Quiet`, whose slice ends only once no other thread can act.

mod barrier_model {
    use super::*;
    use crate::peer::word;
    use crate::sync::barrier::{
        arriving, describe, wait_arrived, BarrierError, BarrierState, Host, Local, Point, WATCHED,
    };
    use crate::sync::Platform;

    pub(super) struct Proc {
        pid: u32,
        local: Mutex<Option<Local>>,
        dead: Arc<[AtomicBool; 4]>,
        /// Where its next wait kills it (`None`: it lives).
        kill_at: std::sync::Mutex<Option<Point>>,
    }

    impl Proc {
        pub(super) fn world() -> Arc<[AtomicBool; 4]> {
            Arc::new(std::array::from_fn(|_| AtomicBool::new(false)))
        }
        pub(super) fn new(pid: u32, dead: &Arc<[AtomicBool; 4]>) -> Arc<Proc> {
            Arc::new(Proc { pid, local: Mutex::new(None), dead: dead.clone(), kill_at: std::sync::Mutex::new(None) })
        }
        pub(super) fn die(&self) {
            self.dead[self.pid as usize].store(true, SeqCst);
        }
    }

    impl Host for Proc {
        type Local<'a> = loom::sync::MutexGuard<'a, Option<Local>>;
        fn local(&self) -> Self::Local<'_> {
            self.local.lock().unwrap()
        }
        fn stamp(&self) -> u64 {
            1
        }
        fn me(&self) -> Option<u64> {
            Some(word::pack(WATCHED, self.pid, 1000 + u64::from(self.pid)))
        }
        fn runs(&self, w: u64) -> bool {
            let (_, pid, _) = word::parts(w);
            self.dead.get(pid as usize).is_some_and(|d| !d.load(SeqCst))
        }
        fn dies_at(&self, at: Point) -> bool {
            let dies = *self.kill_at.lock().unwrap() == Some(at);
            if dies {
                self.die();
            }
            dies
        }
    }

    /// One whole wait of a thread of `h` at `s`.
    pub(super) fn wait<P: Platform>(s: &BarrierState, h: &Proc, p: &P, parties: u32) -> Result<u32, BarrierError> {
        let arrival = {
            let (g, mine, _) = arriving(s, h);
            (g, mine)
        };
        let mut looks = 0u32;
        let look = || {
            looks += 1;
            assert!(looks < 200, "a waiter of pid {} looked 200 times: {}", h.pid, describe(s));
            true
        };
        wait_arrived(s, h, p, parties, arrival, Deadline::NEVER, || false, look).map(|r| r.index)
    }

    /// A thread of `h` that is killed in the middle of its wait at a
    /// barrier of `parties`, at `at` (the real `wait_arrived` up to there).
    pub(super) fn die_arriving(s: &BarrierState, h: &Proc, p: &Model, parties: u32, at: Point) {
        *h.kill_at.lock().unwrap() = Some(at);
        assert!(wait(s, h, p, parties).is_err());
    }

    /// A world of processes (`sliced`: waits that end at once, see the
    /// note above), their death flags, and a barrier of `parties`.
    pub(super) fn setup(parties: u32, sliced: bool) -> (Model, Arc<[AtomicBool; 4]>, Arc<BarrierState>) {
        (Model::world(sliced), Proc::world(), Arc::new(BarrierState::heap(parties)))
    }
}

fn barrier_builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.max_branches = 100_000;
    b
}

/// A futex whose sliced waits end only when no other thread can act: a
/// waiter sleeps until woken while another thread is runnable, and its
/// slice "times out" only once every other thread is asleep or finished.
/// So a waiter never spins through stale reads while others could move
/// (what `Model::world(true)` lets loom do with three threads), and a
/// protocol that needs a timeout to see a death still gets one. Every
/// thread calls `done` when it finishes (a dying one too). A wake makes
/// every sleeper runnable at once (counted by the waker), so a thread
/// woken but not yet running is never mistaken for an idle one.
#[derive(Clone)]
struct Quiet(Arc<(Mutex<QuietState>, Condvar)>);

struct QuietState {
    runnable: usize,
    sleeping: usize,
    wakes: u64,
}

impl Quiet {
    /// For `threads` threads, all runnable.
    fn new(threads: usize) -> Quiet {
        Quiet(Arc::new((Mutex::new(QuietState { runnable: threads, sleeping: 0, wakes: 0 }), Condvar::new())))
    }
    fn wake_all(&self, st: &mut QuietState) {
        st.runnable += std::mem::take(&mut st.sleeping);
        st.wakes += 1;
        self.0 .1.notify_all();
    }
    fn done(&self) {
        let mut st = self.0 .0.lock().unwrap();
        st.runnable -= 1;
        self.wake_all(&mut st);
    }
}

impl Platform for Quiet {
    fn wait(&self, word: &AtomicU32, expected: u32, _deadline: Deadline) -> Wait {
        let mut st = self.0 .0.lock().unwrap();
        if word.load(SeqCst) != expected {
            return Wait::Woken;
        }
        if st.runnable == 1 {
            return Wait::TimedOut;
        }
        st.runnable -= 1;
        st.sleeping += 1;
        let seen = st.wakes;
        while st.wakes == seen {
            st = self.0 .1.wait(st).unwrap();
        }
        Wait::Woken
    }
    fn wake(&self, _word: &AtomicU32, _n: u32) {
        let mut st = self.0 .0.lock().unwrap();
        self.wake_all(&mut st);
    }
    fn me(&self) -> Identity {
        Identity { id: 1, start_time: 1 }
    }
    fn alive(&self, _who: Identity) -> bool {
        true
    }
    fn liveness_slice(&self) -> Option<Duration> {
        Some(Duration::from_millis(20))
    }
}

/// A process with two threads and a one-thread process pass generation 0;
/// the one-thread process dies; both threads of the other end their wait at
/// generation 1 `Broken` (they never hang, and neither is told `Broken`
/// before the death).
#[test]
fn loom_barrier_a_death_beside_a_two_thread_process_breaks_it() {
    use barrier_model::*;
    barrier_builder().check(|| {
        let q = Quiet::new(3);
        let dead = Proc::world();
        let s = Arc::new(super::barrier::BarrierState::heap(3));
        let (a, b) = (Proc::new(1, &dead), Proc::new(2, &dead));
        let victim = {
            let (s, b, q) = (s.clone(), b.clone(), q.clone());
            loom::thread::spawn(move || {
                assert!(wait(&s, &b, &q, 3).is_ok());
                b.die();
                q.done();
            })
        };
        let sibling = {
            let (s, a, q) = (s.clone(), a.clone(), q.clone());
            loom::thread::spawn(move || {
                assert!(wait(&s, &a, &q, 3).is_ok());
                let r = wait(&s, &a, &q, 3);
                q.done();
                r
            })
        };
        let r0 = wait(&s, &a, &q, 3);
        assert!(r0.is_ok(), "{r0:?}: {}", super::barrier::describe(&s));
        let r = wait(&s, &a, &q, 3);
        q.done();
        assert_eq!(r, Err(super::barrier::BarrierError::Broken));
        assert_eq!(sibling.join().unwrap(), Err(super::barrier::BarrierError::Broken));
        victim.join().unwrap();
    });
}

/// Two processes pass generation 0; then process 2 dies as `dies` says
/// (which gets its barrier, itself and its thread). Returns process 1's
/// second wait, which must end.
fn barrier_survivor(
    dies: fn(&super::barrier::BarrierState, &barrier_model::Proc, &Model),
) -> Result<u32, super::barrier::BarrierError> {
    use barrier_model::*;
    let (world, dead, s) = setup(2, true);
    let (a, b) = (Proc::new(1, &dead), Proc::new(2, &dead));
    let t = {
        let (s, b, p) = (s.clone(), b.clone(), world.thread(2));
        loom::thread::spawn(move || {
            assert!(wait(&s, &b, &p, 2).is_ok());
            dies(&s, &b, &p);
        })
    };
    let p = world.thread(1);
    assert!(wait(&s, &a, &p, 2).is_ok());
    let r = wait(&s, &a, &p, 2);
    t.join().unwrap();
    r
}

/// A party that dies between two waits breaks the next generation (the
/// other's wait ends `Broken`, it never hangs), wherever the death falls.
#[test]
fn loom_barrier_a_party_dead_between_waits_breaks_it() {
    barrier_builder().check(|| {
        let r = barrier_survivor(|_, b, _| b.die());
        assert_eq!(r, Err(super::barrier::BarrierError::Broken));
    });
}

/// A party killed in the middle of its wait at generation 1 (its arrival
/// marked, or counted too; counted last, it has not opened the
/// generation) breaks it, or (counted first) leaves the other to open it:
/// the other party never hangs.
#[test]
fn loom_barrier_a_party_dead_while_arriving_breaks_it() {
    use super::barrier::{BarrierError, Point};
    use barrier_model::die_arriving;
    barrier_builder().check(|| {
        let r = barrier_survivor(|s, b, p| die_arriving(s, b, p, 2, Point::Marked));
        assert_eq!(r, Err(BarrierError::Broken));
    });
    barrier_builder().check(|| {
        let r = barrier_survivor(|s, b, p| die_arriving(s, b, p, 2, Point::Counted));
        assert!(r.is_ok() || r == Err(BarrierError::Broken), "{r:?}");
    });
}

/// A party that leaves cleanly and dies is replaced by another process:
/// nobody is told `Broken`, and every wait ends.
#[test]
fn loom_barrier_a_party_that_left_cleanly_can_be_replaced() {
    use barrier_model::*;
    barrier_builder().check(|| {
        let (world, dead, s) = setup(2, true);
        let (a, b, c) = (Proc::new(1, &dead), Proc::new(2, &dead), Proc::new(3, &dead));
        let t = {
            let (s, p) = (s.clone(), world.thread(2));
            loom::thread::spawn(move || {
                assert!(wait(&s, &b, &p, 2).is_ok());
                super::barrier::leave(&s, &*b);
                b.die();
                // Its replacement, another process.
                assert!(wait(&s, &c, &p, 2).is_ok());
            })
        };
        let p = world.thread(1);
        assert!(wait(&s, &a, &p, 2).is_ok());
        assert!(wait(&s, &a, &p, 2).is_ok());
        t.join().unwrap();
    });
}

/// Threads of one process share its entry: a process with two threads
/// passes a generation beside a one-thread process without a false
/// `Broken` (every process alive, each waiter looking at the table).
#[test]
fn loom_barrier_threads_of_one_process_share_its_entry() {
    use barrier_model::*;
    barrier_builder().check(|| {
        // Blocking waits: three threads spinning on sliced waits let loom
        // explore stale reads without end (see the note above).
        let (world, dead, s) = setup(3, false);
        let (a, b) = (Proc::new(1, &dead), Proc::new(2, &dead));
        let hs: Vec<_> = [(a.clone(), 1), (a.clone(), 3)]
            .into_iter()
            .map(|(h, id)| {
                let (s, p) = (s.clone(), world.thread(id));
                loom::thread::spawn(move || {
                    assert!(wait(&s, &h, &p, 3).is_ok());
                })
            })
            .collect();
        let p = world.thread(2);
        assert!(wait(&s, &b, &p, 3).is_ok());
        for h in hs {
            h.join().unwrap();
        }
    });
}
