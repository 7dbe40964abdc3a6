//! The fork layer: one `pthread_atfork` registration for the whole crate.
//!
//! Two facts about forks are kept, both by handlers that only do atomic adds
//! (allowed in the parent before a fork and async-signal-safe in the child):
//!
//! * the **fork generation** ([`fork_generation`]), bumped by the *child*
//!   handler: a forked child sees a generation its parent never had, so any
//!   per-process state recorded with a generation (the identity cache of
//!   `proc`, the queue's registration) is known stale in the child;
//! * the **fork count** ([`fork_count`]), bumped by the *prepare* handler in
//!   the forking process;
//! * the pipe's **fork hooks** ([`set_fork_hooks`]): they add each forked
//!   child to the holder count of every pipe end it inherits.
//!
//! And two process-local primitives that a fork from another thread cannot
//! leave wedged in the child, where a `std::sync::Once` or `Mutex` would:
//! [`ForkSafeOnce`] and [`ForkSafeMutex`].
//!
//! Forks that bypass libc's `fork` (a raw `clone`) run no handlers; shmproc
//! forks only through libc. The fork server (`process::forkserver`) keeps its
//! own state for the processes it starts.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(1);
static FORKS: AtomicU64 = AtomicU64::new(0);
static ATFORK: ForkSafeOnce = ForkSafeOnce::new();
/// Hands out the thread serials of [`thread_fork_stamp`] (0 = not yet given).
static THREAD_SERIALS: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's serial (0 until first asked) and how many forks it made.
    /// `Cell`s without destructors: safe to touch from the atfork handler.
    static THREAD_FORKS: (Cell<u32>, Cell<u32>) = const { (Cell::new(0), Cell::new(0)) };
    /// The hooks this thread's current fork ran in its prepare handler: the
    /// parent and child handlers run those (the same thread, and its copy
    /// in the child), never hooks set by another thread meanwhile, whose
    /// prepare half did not run.
    static FORK_HOOKS: Cell<*const [fn(); 3]> = const { Cell::new(std::ptr::null()) };
}

/// Fork hooks of the pipe's holder count (`pipe::connection`): prepare,
/// parent, child; null until set. Run by the handlers below after their own
/// work. A pointer, not a `OnceLock`: nothing here can be left locked by a
/// thread that a `fork` did not copy.
static HOOKS: AtomicPtr<[fn(); 3]> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the pipe's fork hooks (the first set wins; later calls are ignored).
pub(crate) fn set_fork_hooks(hooks: &'static [fn(); 3]) {
    let _ = HOOKS.compare_exchange(
        std::ptr::null_mut(),
        hooks as *const [fn(); 3] as *mut [fn(); 3],
        Ordering::Release,
        Ordering::Relaxed,
    );
    watch_forks();
}

/// The hooks, once set (async-signal-safe: one atomic load).
fn hooks() -> Option<&'static [fn(); 3]> {
    // SAFETY: HOOKS is null or was set from a `&'static [fn(); 3]`.
    unsafe { HOOKS.load(Ordering::Acquire).as_ref() }
}

/// A `std::sync::Once` that a `fork` cannot wedge. If a process forks while
/// another of its threads runs a `Once`'s closure, the child inherits the
/// `Once` marked running with no thread to finish it, and its first call
/// waits for ever. Here the state records the process running the closure
/// (its pid and fork generation, [`once_runner`]): a caller in another
/// process (a child forked meanwhile) takes over and runs it itself. So the
/// closure may run again in a forked child, and must be safe to repeat there.
pub(crate) struct ForkSafeOnce(AtomicU64);

/// Names the calling process for [`ForkSafeOnce`]: its fork generation
/// (high 32 bits) and pid (low 32). The pid alone could name an ancestor
/// too: a descendant that got its pid back after it was freed, or a child
/// in a new pid namespace. The generation alone could not: it moves only
/// once the fork handlers are registered, which is itself a `ForkSafeOnce`.
/// Never `ONCE_DONE` (pids are below 2^22) nor 0 (a pid is never 0).
fn once_runner() -> u64 {
    let pid = u64::from(rustix::process::getpid().as_raw_nonzero().get().unsigned_abs());
    fork_generation() << 32 | pid
}

/// [`ForkSafeOnce`] state: done (any process).
const ONCE_DONE: u64 = u64::MAX;

impl ForkSafeOnce {
    pub(crate) const fn new() -> ForkSafeOnce {
        ForkSafeOnce(AtomicU64::new(0))
    }

    /// Whether the closure has run to the end (here or before a fork).
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.0.load(Ordering::Acquire) == ONCE_DONE
    }

    /// Marks it done without running anything (a fork handler that knows
    /// the closure ran before the fork).
    pub(crate) fn mark_done(&self) {
        self.0.store(ONCE_DONE, Ordering::Release);
    }

    /// Runs `f` unless it has run: at most once per process, waiting while
    /// another thread of this process runs it.
    pub(crate) fn call_once(&self, f: impl FnOnce()) {
        if self.is_done() {
            return;
        }
        let me = once_runner();
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur == ONCE_DONE {
                return;
            }
            if cur == me {
                // Another thread of ours runs it.
                std::thread::yield_now();
                cur = self.0.load(Ordering::Acquire);
                continue;
            }
            // Not started, or started by a process we were forked from.
            match self.0.compare_exchange(cur, me, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // A panicking `f` leaves it not run (0), not "running" for ever.
        struct Reset<'a>(&'a AtomicU64);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let reset = Reset(&self.0);
        f();
        std::mem::forget(reset);
        self.0.store(ONCE_DONE, Ordering::Release);
    }
}

/// A process-local mutex that a `fork` cannot wedge, for process-wide
/// bookkeeping (the registry of children, the fork-server connection) that a
/// forked child must be able to use whichever thread forked it.
///
/// A child forked while another thread holds a `std::sync::Mutex` inherits
/// it locked, with no thread to unlock it: its first `lock` waits for ever.
/// Here the lock word holds the fork generation ([`process_stamp`]) of the
/// process whose thread holds it. A caller that finds it held by another
/// generation is in a forked child of the holder's process, and the holder
/// did not come along: it takes the lock over and starts from `fresh()`,
/// without reading or dropping the value the holder may have been changing
/// half-way (that value is leaked, once per such fork). Waiters in the same
/// process back off: spin, yield, then sleep on a futex until the holder
/// unlocks (in slices of [`SLEEP_SLICE`]), so a lock held across a long
/// wait (a pipe's receive) wakes its next taker at once.
///
/// Never fork (or call anything that forks without an immediate `exec`)
/// while holding a guard: the forking thread comes along into the child
/// with its guard, and a second `lock` there would take the lock over from
/// under it.
pub(crate) struct ForkSafeMutex<T> {
    /// 0: free; else the fork generation of the holder's process.
    state: AtomicU64,
    /// 1 once a waiter is about to sleep: the unlock then clears it and
    /// wakes every sleeper (a forked child may inherit a 1: one needless
    /// wake-up, then 0).
    contended: std::sync::atomic::AtomicU32,
    value: std::cell::UnsafeCell<T>,
    fresh: fn() -> T,
}

/// The longest a [`ForkSafeMutex`] waiter sleeps before it looks again (a
/// safety net: the unlock wakes it).
const SLEEP_SLICE: std::time::Duration = std::time::Duration::from_millis(50);

// SAFETY: the value is only reached through a guard, which one thread at a
// time holds (the lock word); it moves between threads, so T: Send.
unsafe impl<T: Send> Sync for ForkSafeMutex<T> {}

impl<T> ForkSafeMutex<T> {
    /// A free mutex holding `value`; `fresh` makes the value a forked child
    /// starts from when it takes the lock over from a holder left behind.
    pub(crate) const fn new(value: T, fresh: fn() -> T) -> ForkSafeMutex<T> {
        ForkSafeMutex {
            state: AtomicU64::new(0),
            contended: std::sync::atomic::AtomicU32::new(0),
            value: std::cell::UnsafeCell::new(value),
            fresh,
        }
    }

    /// Locks, waiting while another thread of this process holds it.
    #[inline]
    pub(crate) fn lock(&self) -> ForkSafeGuard<'_, T> {
        // Registers the fork handlers before the first hold: a fork after
        // this gives the child another generation.
        let me = process_stamp();
        if self.state.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return ForkSafeGuard { m: self, _not_sync_unless_t_is: std::marker::PhantomData };
        }
        self.lock_slow(me)
    }

    /// Held (by a thread here, or by one left behind by a fork): take it
    /// over, or wait.
    #[cold]
    fn lock_slow(&self, me: u64) -> ForkSafeGuard<'_, T> {
        let mut tries = 0u32;
        loop {
            let cur = self.state.load(Ordering::Relaxed);
            if cur != me {
                // Free, or held by a thread of an ancestor process (from
                // before the fork that made this one), which is not here.
                if self.state.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    if cur != 0 {
                        // SAFETY: we hold the lock. The value may be half
                        // changed by the holder left behind: overwrite it
                        // without reading or dropping it.
                        unsafe { self.value.get().write((self.fresh)()) };
                    }
                    return ForkSafeGuard { m: self, _not_sync_unless_t_is: std::marker::PhantomData };
                }
                continue;
            }
            tries = tries.saturating_add(1);
            if tries < 64 {
                std::hint::spin_loop();
            } else if tries < 128 {
                std::thread::yield_now();
            } else {
                // Held for longer (a fork-server start, up to its timeout; a
                // pipe receive, for its wait): sleep until the unlock. The
                // flag's swap and the holder's unlock swap are both SeqCst,
                // so either our load below sees the lock free or the unlock
                // sees the flag and wakes us.
                self.contended.swap(1, Ordering::SeqCst);
                if self.state.load(Ordering::SeqCst) == me {
                    let until = super::futex::monotonic_now().saturating_add(SLEEP_SLICE);
                    super::futex::futex_wait(&self.contended, 1, Some(until));
                }
            }
        }
    }
}

/// The holder's access to a [`ForkSafeMutex`]'s value; unlocks on drop.
pub(crate) struct ForkSafeGuard<'a, T> {
    m: &'a ForkSafeMutex<T>,
    /// Shared across threads only if `T` is `Sync` (as `&mut T`).
    _not_sync_unless_t_is: std::marker::PhantomData<&'a mut T>,
}

impl<T> std::ops::Deref for ForkSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock: no other reference to the value.
        unsafe { &*self.m.value.get() }
    }
}

impl<T> std::ops::DerefMut for ForkSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T> Drop for ForkSafeGuard<'_, T> {
    fn drop(&mut self) {
        // SeqCst swap, then the flag: see the waiter's side in `lock`.
        self.m.state.swap(0, Ordering::SeqCst);
        if self.m.contended.load(Ordering::SeqCst) != 0 && self.m.contended.swap(0, Ordering::SeqCst) != 0 {
            super::futex::futex_wake(&self.m.contended, i32::MAX as u32);
        }
    }
}

extern "C" fn before_fork() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    // Runs in the forking thread. `try_with`: never panic in a fork handler
    // (a thread being torn down has no locals left to count in).
    let _ = THREAD_FORKS.try_with(|(_, forks)| forks.set(forks.get().wrapping_add(1)));
    let h = hooks();
    let _ = FORK_HOOKS.try_with(|c| c.set(h.map_or(std::ptr::null(), |h| h as *const [fn(); 3])));
    if let Some(h) = h {
        h[0]();
    }
}

/// The hooks whose prepare half this thread's fork ran ([`FORK_HOOKS`]).
fn prepared_hooks() -> Option<&'static [fn(); 3]> {
    // SAFETY: FORK_HOOKS is null or a pointer taken from `hooks()` (`'static`).
    FORK_HOOKS.try_with(|c| unsafe { c.get().as_ref() }).ok().flatten()
}

extern "C" fn after_fork_in_parent() {
    if let Some(h) = prepared_hooks() {
        h[1]();
    }
}

extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    // The handlers run, so they were registered: done here, even if the
    // registering thread (not copied) had not yet said so.
    ATFORK.mark_done();
    if let Some(h) = prepared_hooks() {
        h[2]();
    }
}

/// Registers (once per process; a child inherits the registration) the fork
/// handlers behind [`fork_generation`], [`fork_count`] and the pipe's hooks.
///
/// `pthread_atfork` stays on libc: it is a libc (pthread) facility that
/// rustix does not wrap.
#[inline]
pub(crate) fn watch_forks() {
    // One load once done: callers on hot paths (`process_stamp` in every
    // `ForkSafeMutex::lock`, a pipe's send and receive) pay no call.
    if !ATFORK.is_done() {
        register_fork_handlers();
    }
}

#[cold]
#[inline(never)]
fn register_fork_handlers() {
    ATFORK.call_once(|| {
        // The handlers are `extern "C" fn()`s doing atomic adds (and a thread-local
        // update in the parent), then the pipe's hooks: a process-local spin lock
        // across the fork and atomics in shared memory (`pipe::connection` holders).
        let (prepare, parent, child) = (before_fork as extern "C" fn(), after_fork_in_parent, after_fork_in_child);
        // SAFETY: as said above: each handler is async-signal-safe where it runs.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        debug_assert_eq!(rc, 0, "pthread_atfork failed");
    });
}

/// The process's fork generation: it differs in a forked child from every
/// value its parent (or any ancestor) read, once [`watch_forks`] has run.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// A stamp of "this process": registers the fork handlers if needed and
/// returns [`fork_generation`]. An object that records it can later tell,
/// with one atomic load, whether it is still in the process that made it or
/// was inherited by a forked child (which must not use it as its own).
#[inline]
pub(crate) fn process_stamp() -> u64 {
    watch_forks();
    fork_generation()
}

/// Whether an object stamped with `stamp` ([`process_stamp`]) is a forked
/// child's copy here: made in another process (an ancestor of this one).
#[inline]
pub(crate) fn inherited(stamp: u64) -> bool {
    fork_generation() != stamp
}

/// How many times this process has called `fork()` (through libc) since
/// [`watch_forks`] was first called. A forked child inherits the parent's count
/// at the moment of the fork.
#[inline]
#[cfg_attr(not(test), allow(dead_code))] // a fact of the fork layer; only its tests read it now
pub(crate) fn fork_count() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// For process-wide state behind a lock that a forked child must neither use
/// nor wait for (another thread may have held the lock at the fork, and the
/// state is its parent's): `owner` names the one process that uses it,
/// claimed by the first caller (0: unclaimed). Whether that is this process.
pub(crate) fn owned_here(owner: &AtomicU64) -> bool {
    let me = process_stamp();
    match owner.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(cur) => cur == me,
    }
}

/// The calling thread's serial (high 32 bits) and the number of forks it
/// made (low 32 bits, wrapping): a handle stamped with it before a fork can
/// tell, in [`forked_since`], whether the *same thread's* next fork is the
/// one right after, however many forks other threads made meanwhile.
#[inline]
pub(crate) fn thread_fork_stamp() -> u64 {
    THREAD_FORKS
        .try_with(|(serial, forks)| {
            if serial.get() == 0 {
                // Serials wrap after 4 billion threads; a repeat only makes
                // `forked_since` compare against another thread's count.
                let mut s = THREAD_SERIALS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                if s == 0 {
                    s = THREAD_SERIALS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                }
                serial.set(s);
            }
            (serial.get() as u64) << 32 | forks.get() as u64
        })
        .unwrap_or(0)
}

/// How many forks the calling thread made since `stamp` (an earlier
/// [`thread_fork_stamp`]), or `None` if another thread took that stamp.
#[inline]
pub(crate) fn forked_since(stamp: u64) -> Option<u32> {
    let now = thread_fork_stamp();
    (stamp >> 32 != 0 && now >> 32 == stamp >> 32).then(|| (now as u32).wrapping_sub(stamp as u32))
}

/// Tests: waits up to `timeout` for forked child `pid`; whether it exited
/// with status 0. A child still running then is killed and reaped (`false`):
/// a child stuck for ever must fail its test, not hang the suite.
#[cfg(test)]
pub(crate) fn exited_zero_within(pid: libc::pid_t, timeout: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + timeout;
    let mut status = 0;
    loop {
        // SAFETY: polls our own child; `status` is ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        assert_eq!(r, 0, "waitpid failed");
        if std::time::Instant::now() > end {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ForkSafeOnce` left "running" by a process we were forked from (its
    /// pid in the state, no thread here to finish) is taken over and run
    /// here, where a `std::sync::Once` would wait for ever; one running in
    /// this process is waited for, then not run again.
    #[test]
    fn fork_safe_once_takes_over_a_run_left_by_another_process() {
        let o = ForkSafeOnce::new();
        // As a child inherits it: "running" in the parent (some other pid).
        let other = once_runner() + 1;
        o.0.store(other, Ordering::Relaxed);
        let mut ran = 0;
        o.call_once(|| ran += 1);
        assert_eq!(ran, 1, "not taken over");
        assert!(o.is_done());
        o.call_once(|| ran += 1);
        assert_eq!(ran, 1, "ran twice in one process");

        // "Running" in an ancestor that had our pid (a pid freed and handed
        // out again, or another pid namespace): its generation is older.
        // (In a thread: if it is taken for this process, the call waits for
        // ever, and the test fails at the timeout instead of hanging.)
        watch_forks();
        let o = std::sync::Arc::new(ForkSafeOnce::new());
        o.0.store(once_runner() - (1 << 32), Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        let o2 = o.clone();
        std::thread::spawn(move || {
            let mut ran = false;
            o2.call_once(|| ran = true);
            let _ = tx.send(ran);
        });
        let ran = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(ran, Ok(true), "an ancestor with our pid was taken for this process");

        // Running in this process (another thread): waited for.
        let o = std::sync::Arc::new(ForkSafeOnce::new());
        o.0.store(once_runner(), Ordering::Relaxed);
        let o2 = o.clone();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            o2.mark_done();
        });
        let t = std::time::Instant::now();
        o.call_once(|| panic!("run again while this process's own run was in progress"));
        assert!(t.elapsed() >= std::time::Duration::from_millis(40), "did not wait for the running thread");
        finisher.join().unwrap();
    }

    /// The case itself: a process forks while another of its threads is
    /// inside the closure. The child (no such thread) runs it itself instead
    /// of waiting for ever, as it would on a `std::sync::Once`.
    #[test]
    fn a_child_forked_during_another_threads_run_is_not_wedged() {
        use std::sync::mpsc;
        let o = std::sync::Arc::new(ForkSafeOnce::new());
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let o2 = o.clone();
        let runner = std::thread::spawn(move || {
            o2.call_once(|| {
                entered_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(std::time::Duration::from_secs(30));
            })
        });
        entered_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the runner entered");
        // SAFETY: the child only calls `call_once` (atomics, getpid,
        // sched_yield) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut ran = false;
            o.call_once(|| ran = true);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ran { 0 } else { 1 }) };
        }
        release_tx.send(()).unwrap();
        runner.join().unwrap();
        let ok = exited_zero_within(pid, std::time::Duration::from_secs(30));
        assert!(ok, "the forked child waited for a run that no thread of it would finish");
        assert!(o.is_done());
    }

    /// A process forks while another of its threads holds a
    /// Threads that find the lock held sleep (past the spin and the yields)
    /// and are woken by the unlock: mutual exclusion holds, and nobody is
    /// left asleep (a lost wake-up would still end after `SLEEP_SLICE`, so
    /// this checks the exclusion; the pipe tests check the waits).
    #[test]
    fn fork_safe_mutex_excludes_with_sleeping_waiters() {
        static M: ForkSafeMutex<(u64, bool)> = ForkSafeMutex::new((0, false), || (0, false));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let mut g = M.lock();
                        assert!(!g.1, "two holders at once");
                        g.1 = true;
                        // Long enough that the others get to sleep.
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        g.0 += 1;
                        g.1 = false;
                    }
                });
            }
        });
        assert_eq!(M.lock().0, 800);
        assert_eq!(M.contended.load(Ordering::SeqCst), 0, "the last unlock cleared the flag");
    }

    /// `ForkSafeMutex`: the child takes the lock over and starts from the
    /// fresh value (the holder's half-made changes are not its own), where
    /// a `std::sync::Mutex` would wait for ever. In the parent, the holder's
    /// value stays and a second locker waits for it.
    #[test]
    fn a_child_forked_while_another_thread_holds_the_lock_takes_it_over() {
        use std::sync::mpsc;
        static M: ForkSafeMutex<Vec<u32>> = ForkSafeMutex::new(Vec::new(), Vec::new);
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut g = M.lock();
            g.push(1);
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(30));
            g.push(2);
        });
        held_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the holder locked");
        // SAFETY: the child only locks (atomics, getpid), pushes into an
        // empty Vec (one allocation: this test process's other threads hold
        // no allocator lock while parked in `recv_timeout`) and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut g = M.lock();
            let fresh = g.is_empty();
            g.push(7);
            let ok = fresh && g.as_slice() == [7];
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let t = std::time::Instant::now();
        let waiter = std::thread::spawn(|| M.lock().clone());
        std::thread::sleep(std::time::Duration::from_millis(50));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(waiter.join().unwrap(), [1, 2], "the parent's second locker did not wait for the holder");
        assert!(t.elapsed() >= std::time::Duration::from_millis(40));
        let ok = exited_zero_within(pid, std::time::Duration::from_secs(30));
        assert!(ok, "the forked child waited for a lock that no thread of it would release, or saw the holder's value");
    }

    #[test]
    fn a_forked_child_sees_a_new_generation_and_the_fork_counted() {
        watch_forks();
        let (generation, forks) = (fork_generation(), fork_count());
        // libc's fork, not a raw one: only it runs the atfork handlers under test.
        // SAFETY: the child only reads atomics and calls `_exit`, which is
        // async-signal-safe, as required after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = fork_generation() != generation && fork_count() > forks;
            // SAFETY: `_exit` ends the child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert_eq!(fork_generation(), generation, "the parent's generation never moves");
        assert!(fork_count() > forks);
        let child = rustix::process::Pid::from_raw(pid).expect("a child pid is positive");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            match rustix::process::waitpid(Some(child), rustix::process::WaitOptions::NOHANG) {
                Ok(Some((_, status))) => break status,
                Ok(None) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("waitpid: {e}"),
            }
            assert!(std::time::Instant::now() < end, "the child did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status.exit_status(), Some(0), "{status:?}");
    }
}
