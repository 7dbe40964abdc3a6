//! Segments of finished pools, kept for the next pool of this process.
//!
//! A pool's segments (its results queue, its in-flight table and one task
//! queue per worker incarnation) are anonymous memfds whose every page is
//! reserved with `fallocate` when they are made (so that a full tmpfs is an
//! error at creation, never a SIGBUS later), and whose pages are freed when
//! they are dropped. For a small pool that is about a fifth of its whole
//! life (create, map two items, terminate: see `pool-start` in the bench).
//! So a pool hands the segments of workers that are *known to have ended*
//! here, and the next pool of the same shape (or the replacement of a
//! worker) takes one instead of making a new one; the queue or table in it
//! is initialised again as at creation (`Engine::recycle`, `Table::create`).
//!
//! A spare is handed out only when nothing else can touch it:
//! * it is anonymous: no other process can open it by name;
//! * every process that mapped it has ended: the pool gives a segment only
//!   after it reaped (or, through the fork server, saw the end of) every
//!   worker that had it. A process that a *task* forked inherits the
//!   worker's mappings, but runs the task's code, which has no access to
//!   the pool's objects (a copy that returns from the task into the
//!   worker's code ends before it answers anything: see `worker.rs`);
//! * this process holds no other handle to it ([`Segment::is_sole`], checked
//!   when it is taken, so a pool may give its segments while its last
//!   handles are still being dropped);
//! * it was given in this process, not inherited through a fork: the spares
//!   belong to the first process that used them, and a forked child never
//!   touches (nor waits for the lock of) what it inherited, nor keeps its own.
//!
//! At most [`MAX_SEGMENTS`] segments and [`MAX_BYTES`] bytes are kept (the
//! oldest go first); they stay until they are taken or the process exits.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::header::{ObjectKind, TypeInfo};
use crate::segment::Segment;
use crate::sys;

/// Most segments kept.
const MAX_SEGMENTS: usize = 64;
/// Most bytes (whole mappings) kept.
const MAX_BYTES: usize = 16 << 20;

/// Oldest first.
static SPARES: Mutex<Vec<Segment>> = Mutex::new(Vec::new());
/// The process whose spares those are (see `sys::owned_here`).
static OWNER: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on this process's spares, unless another process owns them (a
/// forked child never touches, nor waits for, what it inherited). Segments
/// `f` evicts are dropped after the lock is released.
fn with<R>(f: impl FnOnce(&mut Vec<Segment>) -> R) -> Option<R> {
    if !sys::owned_here(&OWNER) {
        return None;
    }
    let mut gone = Vec::new();
    let r = {
        // Held by another thread of this process for a few vector operations
        // at most (a forked child never gets here: `owned_here`).
        let mut segs = SPARES.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut segs);
        let mut bytes: usize = segs.iter().map(Segment::len).sum();
        while segs.len() > MAX_SEGMENTS || bytes > MAX_BYTES {
            let old = segs.remove(0);
            bytes -= old.len();
            gone.push(old);
        }
        r
    };
    drop(gone);
    Some(r)
}

/// Keeps `seg` for a later pool. The caller guarantees that every other
/// process that mapped it has ended, and that no handle to it left in this
/// process will be used again (they may still be dropping: a spare is taken
/// only once it is the last one).
pub(crate) fn give(seg: Segment) {
    // Named segments are not the pool's; one alone over the budget would only
    // push every other spare out.
    if seg.name().is_some() || seg.len() > MAX_BYTES {
        return;
    }
    let _ = with(|segs| segs.push(seg));
}

/// A spare segment of `kind`, element type `ty` and exactly `payload` bytes
/// of payload that nothing else holds, newest first.
pub(crate) fn take(kind: ObjectKind, ty: TypeInfo, payload: usize) -> Option<Segment> {
    with(|segs| {
        let i = segs
            .iter()
            .rposition(|s| s.kind() == kind && s.type_info() == ty && s.payload_len() == payload && s.is_sole())?;
        Some(segs.remove(i))
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameQueue;

    // Each test uses its own frame size: the spares are the process's, and
    // tests run at once.
    fn builder(max_frame: usize) -> crate::queue::FrameQueueBuilder {
        FrameQueue::builder().capacity(2).max_frame(max_frame).spsc(true).fenced(true)
    }

    fn spare_for(max_frame: usize) -> Option<Segment> {
        let ty = builder(64).create().unwrap().segment().type_info();
        take(ObjectKind::FrameQueue, ty, builder(max_frame).payload_size().unwrap())
    }

    #[test]
    fn a_spare_is_taken_only_once_its_last_other_handle_is_gone() {
        let q = builder(1000).create().unwrap();
        q.send(b"stale").unwrap();
        give(q.segment().clone());
        // The queue itself still holds the segment: not a spare yet.
        assert!(spare_for(1000).is_none());
        drop(q);
        let seg = spare_for(1000).expect("the dropped queue's segment is a spare now");
        let q = builder(1000).create_in(seg).unwrap();
        // Initialised again: empty, and it works.
        assert!(q.is_empty());
        q.send(b"fresh").unwrap();
        assert_eq!(q.recv().unwrap(), b"fresh");
        // Taken once: no second taker.
        assert!(spare_for(1000).is_none());
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    /// `map` with a bound: a hang fails the test instead of stopping the suite.
    fn map_within(p: &crate::Pool, n: u64) -> Result<Vec<u64>, crate::MapError> {
        match p.map_async(square, 0..n).get_timeout(std::time::Duration::from_secs(60)) {
            Ok(r) => r,
            Err(_) => panic!("a map of {n} items did not finish in 60 s"),
        }
    }

    #[test]
    fn a_dropped_pool_s_segments_serve_the_next_pool() {
        let _one = crate::pool::thread::TESTS.lock().unwrap_or_else(|e| e.into_inner());
        // A frame size no other test uses: these spares are this test's.
        let b = || crate::Pool::builder().processes(2).max_frame(64 * 1024 + 192);
        let want: Vec<u64> = (0..1000u64).map(square).collect();
        let p = b().create().unwrap();
        assert_eq!(map_within(&p, 1000).unwrap(), want);
        // The memfd's inode names it (a fresh one could be mapped where the old one was).
        let inode = |p: &crate::Pool| rustix::fs::fstat(p.shared.wake.segment().fd()).unwrap().st_ino;
        let results = inode(&p);
        drop(p);
        let p = b().create().unwrap();
        assert_eq!(inode(&p), results, "the results queue is the last pool's");
        assert_eq!(map_within(&p, 1000).unwrap(), want);
        // Killed workers' task queues serve their replacements; all still works.
        for pid in p.worker_pids() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        // Items the killed workers held may fail (`WorkerDied`); then all is well.
        let _ = map_within(&p, 1000);
        assert_eq!(map_within(&p, 1000).unwrap(), want);
    }

    #[test]
    fn a_spare_of_another_size_or_kind_is_not_taken() {
        let q = builder(1200).create().unwrap();
        let seg = q.segment().clone();
        drop(q);
        let ty = seg.type_info();
        let len = seg.payload_len();
        give(seg);
        assert!(take(ObjectKind::FrameQueue, ty, len + 64).is_none());
        assert!(take(ObjectKind::Pool, ty, len).is_none());
        assert!(take(ObjectKind::FrameQueue, ty, len).is_some());
    }
}
