//! Thread and process identity, and a liveness check that pid reuse cannot fool.
//!
//! A pid (or tid) alone does not identify a process over time: the kernel hands
//! the number out again once the process is reaped. shmproc therefore records an
//! *identity* `(id, start_time)`, where `start_time` is field 22 of
//! `/proc/<id>/stat` (clock ticks since boot). A later check re-reads that field:
//! a different value means the number now belongs to someone else, so the
//! original is dead. Two processes would have to receive the same id within the
//! same clock tick (10 ms) for this to be fooled.
//!
//! Identities are cached per thread (the process's also once per process),
//! tagged with the fork generation of the fork layer
//! ([`super::fork`](mod@super::fork)), so the cache of a forked child is
//! refreshed (its tid and pid differ from the parent's). That holds for forks
//! through libc, whose handlers the fork layer installs; a raw `clone` or
//! `syscall(SYS_fork)` bypasses them (see the fork layer).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A thread or process identity that survives id reuse: the id and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    /// Thread id (for a thread identity) or process id (for a process identity).
    pub(crate) id: u32,
    /// Field 22 of `/proc/<id>/stat`.
    pub(crate) start_time: u64,
}

/// What a liveness check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// The identity still runs (or we could not prove otherwise).
    Alive,
    /// Gone, a zombie, or the id now belongs to a different process or thread.
    Dead,
}

#[derive(Clone, Copy)]
struct Cached {
    generation: u64,
    pid: Identity,
    /// Read on the first [`current_thread`] (most threads never need it).
    tid: Option<Identity>,
}

thread_local! {
    static CACHE: Cell<Option<Cached>> = const { Cell::new(None) };
}

/// The process's identity, shared by its threads (a new thread then reads
/// no `/proc` file for it): `PROC_GEN` is the fork generation it belongs to,
/// stored last (Release) and read first (Acquire). No lock: a forked child's
/// fork handlers read the identity, and a lock another thread held at the
/// fork would never be released in the child. Every writer of one process
/// and generation stores the same values (only a successful read is stored).
static PROC_GEN: AtomicU64 = AtomicU64::new(u64::MAX);
static PROC_ID: AtomicU32 = AtomicU32::new(0);
static PROC_START: AtomicU64 = AtomicU64::new(0);

#[cold]
fn refresh(generation: u64) -> Cached {
    super::fork::watch_forks();
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let known = (PROC_GEN.load(Ordering::Acquire) == generation && PROC_ID.load(Ordering::Relaxed) == pid)
        .then(|| PROC_START.load(Ordering::Relaxed));
    let start_time = match known {
        Some(start) => start,
        None => match start_time_of(pid) {
            Ok(Some((start, _))) => {
                PROC_ID.store(pid, Ordering::Relaxed);
                PROC_START.store(start, Ordering::Relaxed);
                PROC_GEN.store(generation, Ordering::Release);
                start
            }
            // Unknown (0) for this thread only: the next thread reads again.
            _ => 0,
        },
    };
    let c = Cached { generation, pid: Identity { id: pid, start_time }, tid: None };
    CACHE.with(|cell| cell.set(Some(c)));
    c
}

#[inline]
fn cached() -> Cached {
    let generation = super::fork::fork_generation();
    match CACHE.with(|c| c.get()) {
        Some(c) if c.generation == generation => c,
        _ => refresh(generation),
    }
}

/// The calling thread's identity (tid and its start time). Cheap after the first call.
#[inline]
pub(crate) fn current_thread() -> Identity {
    let c = cached();
    match c.tid {
        Some(t) => t,
        None => thread_identity(c),
    }
}

#[cold]
fn thread_identity(mut c: Cached) -> Identity {
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let t = Identity { id: tid, start_time: start_time_of(tid).ok().flatten().map_or(0, |s| s.0) };
    c.tid = Some(t);
    CACHE.with(|cell| cell.set(Some(c)));
    t
}

/// The calling process's identity (pid and its start time).
#[inline]
pub(crate) fn current_process() -> Identity {
    cached().pid
}

/// The calling process's pid, without a system call after the first use.
#[inline]
pub(crate) fn current_pid() -> u32 {
    // The process-wide copy first: two loads. The thread-local path copies the
    // whole cached identity out of its cell, then reads four bytes of the copy
    // back: a store-forwarding stall on every queue operation that claims a
    // slot (perf: a quarter of an MPMC send's own time).
    if PROC_GEN.load(Ordering::Acquire) == super::fork::fork_generation() {
        return PROC_ID.load(Ordering::Relaxed);
    }
    cached().pid.id
}

/// The text of `/proc/<id>/stat`, in one `read` into a stack buffer: the
/// kernel renders the whole file at the first read, and it fits (a command
/// name of at most 64 bytes, 16 for user tasks, and 52 numbers).
/// `read_to_string` would `statx` and read in five growing steps (and refuse
/// a command name that is not UTF-8); this runs on every thread's first use
/// and on every liveness check.
fn read_stat(id: u32) -> io::Result<String> {
    read_stat_at(&format!("/proc/{id}/stat"))
}

/// [`read_stat`] of a `stat` file by path.
fn read_stat_at(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = [0u8; 1024];
    let mut len = 0;
    // Until the line's end, end of file, or a full buffer (then the slow way).
    while len < buf.len() && !(len > 0 && buf[len - 1] == b'\n') {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if len == buf.len() {
        let mut all = buf.to_vec();
        f.read_to_end(&mut all)?;
        return Ok(String::from_utf8_lossy(&all).into_owned());
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Reads `(start_time, is_zombie_or_dead)` from `/proc/<id>/stat`; `Ok(None)` if there
/// is no such process or thread.
fn start_time_of(id: u32) -> io::Result<Option<(u64, bool)>> {
    stat_start_time(read_stat(id))
}

/// Whether `tid` is a live thread of this process: `/proc/self/task/<tid>`
/// exists and is not a zombie. `false` where `/proc` cannot say.
pub(crate) fn own_live_thread(tid: u32) -> bool {
    tid != 0 && matches!(stat_start_time(read_stat_at(&format!("/proc/self/task/{tid}/stat"))), Ok(Some((_, false))))
}

/// `(start_time, is_zombie_or_dead)` from a read of a `stat` file; `Ok(None)`
/// if there is no such process or thread.
fn stat_start_time(read: io::Result<String>) -> io::Result<Option<(u64, bool)>> {
    let text = match read {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ESRCH can surface while the task is being torn down.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may itself contain ')' and
    // spaces, so parse from the last ')'. Field 3 (state) follows it.
    let rest = text.rfind(')').map(|i| &text[i + 1..]).ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().unwrap_or("?");
    let start = fields
        .nth(18) // field 22 is the 19th after the state (field 3)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let dead = matches!(state, "Z" | "X" | "x");
    Ok(Some((start, dead)))
}

/// The parent pid of process `id` (field 4 of `/proc/<id>/stat`), if it exists.
pub(crate) fn parent_of(id: u32) -> Option<u32> {
    let text = read_stat(id).ok()?;
    // Parse from the last ')': the command name may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Looks up the identity of process or thread `id` now (None if it does not exist).
pub(crate) fn identity_of(id: u32) -> Option<Identity> {
    match start_time_of(id) {
        Ok(Some((start_time, false))) => Some(Identity { id, start_time }),
        _ => None,
    }
}

/// `CLOCK_BOOTTIME` in the unit of the start time of `/proc/<pid>/stat`
/// (clock ticks since boot: the kernel records a child's start on this clock
/// during `fork` and divides it by the same tick).
pub(crate) fn boot_ticks() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let ns = (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64);
    let per_tick = 1_000_000_000 / rustix::param::clock_ticks_per_second().clamp(1, 1_000_000_000);
    ns / per_tick
}

/// 0: not yet checked; 1: the [`boot_ticks`] reading agreed with `/proc`; 2: it did not.
static TICKS_AGREE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The start time of `child`, which this process forked between two
/// [`boot_ticks`] readings `before` and `after` and has not reaped. When
/// both readings name the same tick (a fork takes well under one), that
/// tick *is* its start time: no `/proc` read (tens of microseconds).
/// The first such fork of the process checks the reading against `/proc`
/// and, should they differ, every later one reads `/proc`. 0 if unknown.
pub(crate) fn forked_start_time(child: u32, before: u64, after: u64) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let agree = TICKS_AGREE.load(Relaxed);
    if before == after && agree == 1 {
        return before;
    }
    let read = identity_of(child).map_or(0, |who| who.start_time);
    if before == after && agree == 0 && read != 0 {
        TICKS_AGREE.store(if read == before { 1 } else { 2 }, Relaxed);
    }
    read
}

/// Whether `who` still runs. A recorded `start_time` of 0 means "unknown" and
/// falls back to checking that the id exists.
pub(crate) fn liveness(who: Identity) -> Liveness {
    if alive_matching(who.id, |start| who.start_time == 0 || start == who.start_time) {
        Liveness::Alive
    } else {
        Liveness::Dead
    }
}

/// Whether process `pid` runs and `recorded(start)` accepts its start time
/// (a record packs a truncated start time: the caller compares). A `/proc`
/// that cannot be read or does not show the process (a `hidepid` mount
/// hides another user's processes as if they did not exist; no file
/// descriptors left) proves nothing: then the kernel decides ([`exists`]: a
/// pidfd, or `kill(pid, 0)`). Only a process that is gone, a zombie, or one
/// whose start time the record rejects is not alive.
pub(crate) fn alive_matching(pid: u32, recorded: impl FnOnce(u64) -> bool) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match start_time_of(pid) {
        Ok(Some((_, true))) => false,
        Ok(Some((start, false))) => recorded(start),
        // Not in /proc: gone, unless /proc hides it (checked by the kernel).
        Ok(None) | Err(_) => exists(pid),
    }
}

/// Whether `pid` names a process that has not exited, asked of the kernel
/// where `/proc` does not say: a pidfd polled without waiting (readable
/// once the process has exited, so a zombie is not alive), or, where there
/// is no pidfd (a thread id, a kernel before 5.3), `kill(pid, 0)` (sends
/// nothing; `EPERM`: in use by a process we may not signal). Without
/// `/proc` there is no start time to compare: a pid reused by a process
/// hidden from us reads as alive.
fn exists(pid: u32) -> bool {
    match super::process::pidfd_open(pid) {
        Ok(fd) => {
            let mut p = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
            let now = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
            !matches!(rustix::event::poll(&mut p, Some(&now)), Ok(n) if n > 0)
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => false,
        Err(_) => match rustix::process::Pid::from_raw(pid as i32) {
            Some(p) => !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH)),
            None => false,
        },
    }
}

/// The effective uid of the calling process.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_is_alive() {
        assert_eq!(liveness(current_process()), Liveness::Alive);
        assert_eq!(liveness(current_thread()), Liveness::Alive);
        assert_ne!(current_process().start_time, 0);
    }

    #[test]
    fn alive_matching_needs_a_live_process_its_record_accepts() {
        let me = current_process();
        assert!(alive_matching(me.id, |start| start == me.start_time));
        assert!(!alive_matching(me.id, |start| start == me.start_time + 1), "a rejected start time is not alive");
        assert!(!alive_matching(0, |_| true));
        assert!(!alive_matching(u32::MAX, |_| true));
        // A child that has exited and been reaped is gone.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!alive_matching(pid, |_| true), "a reaped child counted as alive");
    }

    #[test]
    fn own_live_threads_are_this_processs_running_threads() {
        assert!(own_live_thread(current_thread().id));
        assert!(own_live_thread(current_pid()), "the main thread");
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(current_thread().id).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert!(own_live_thread(tid), "a running thread of ours");
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        // The kernel may release the task a moment after `join` returns.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while own_live_thread(tid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!own_live_thread(tid), "a thread that exited");
        // Another process's pid is not a thread of ours.
        let mut c = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let other = own_live_thread(c.id());
        let _ = c.kill();
        let _ = c.wait();
        assert!(!other, "another process");
        assert!(!own_live_thread(0));
    }

    #[test]
    fn wrong_start_time_is_dead() {
        let mut me = current_process();
        me.start_time += 1;
        assert_eq!(liveness(me), Liveness::Dead);
    }

    #[test]
    fn threads_share_the_process_identity_and_have_their_own() {
        let me = current_process();
        // A command name with a space, parentheses (the stat line is parsed
        // from its last ')') and a byte that is not UTF-8.
        let (p, t, named) = std::thread::spawn(|| {
            rustix::thread::set_name(c"x) \xff(y").unwrap();
            let named =
                std::fs::read(format!("/proc/self/task/{}/comm", rustix::thread::gettid().as_raw_nonzero())).unwrap();
            (current_process(), current_thread(), named)
        })
        .join()
        .unwrap();
        assert_eq!(named, b"x) \xff(y\n");
        assert_eq!(p, me);
        assert_ne!(t.id, me.id);
        assert_ne!(t.start_time, 0, "the thread's stat line was not parsed");
    }

    #[test]
    fn a_forked_child_has_its_own_identity() {
        let parent = current_process();
        // SAFETY: the child only reads its identity and /proc, then leaves
        // with `_exit` (no destructors, no test harness in the child).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let me = current_process();
            let fresh = identity_of(rustix::process::getpid().as_raw_nonzero().get() as u32);
            let ok = me.id != parent.id && Some(me) == fresh && me.start_time != 0;
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        // Reaped within 10 s, or killed (a child stuck in its fork handlers
        // is the failure this test looks for: it must not hang the suite).
        let ok = super::super::fork::exited_zero_within(pid, std::time::Duration::from_secs(10));
        assert!(ok, "the forked child failed its checks or did not finish within 10 s");
        assert_eq!(current_process(), parent);
    }

    /// `forked_start_time`'s shortcut: a child started between two equal
    /// `boot_ticks` readings has that tick as its `/proc` start time.
    #[test]
    fn a_child_started_within_one_tick_has_that_tick_as_its_start_time() {
        let mut checked = 0;
        for _ in 0..20 {
            let before = boot_ticks();
            let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
            let after = boot_ticks();
            let read = identity_of(child.id()).map(|who| who.start_time);
            let known = forked_start_time(child.id(), before, after);
            child.kill().unwrap();
            child.wait().unwrap();
            if before == after {
                assert_eq!(read, Some(before), "the tick read around the start is the /proc start time");
                assert_eq!(known, before);
                checked += 1;
            }
        }
        assert!(checked > 0, "no start fell within one tick in 20 tries");
    }

    #[test]
    fn exited_thread_is_dead() {
        let ident = std::thread::spawn(current_thread).join().unwrap();
        // The thread has been joined; its tid no longer runs.
        assert_eq!(liveness(ident), Liveness::Dead);
    }
}
