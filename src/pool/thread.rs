//! The pools' threads: each pool's dispatcher runs on one, and a thread whose
//! pool has finished waits a while ([`IDLE`]) to run the next pool's.
//!
//! Starting a thread and joining it cost about a tenth of a small pool's
//! whole life (create, map two items, terminate) on the machines we measure
//! on; a program that makes pools one after another (a loop, a test suite)
//! reuses one thread instead. A pool's workers are forked by its thread (a
//! daemon worker's parent-death signal fires when the *thread* that forked it
//! exits), so a thread only ever exits between pools, when it has no workers.

use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// How long a thread waits for the next pool before it exits.
const IDLE: Duration = Duration::from_secs(5);
/// Most threads kept waiting.
const MAX_IDLE: usize = 4;

/// A pool's dispatcher: it returns what to run once its thread waits for the
/// next pool (the signal that the pool is gone: a pool made right after it
/// then finds this thread waiting).
pub(crate) type Task = Box<dyn FnOnce() -> Then + Send>;
/// See [`Task`].
pub(crate) type Then = Box<dyn FnOnce() + Send>;

/// Threads waiting for a pool, each named by a serial and reached through
/// its channel.
static WAITING: Mutex<Vec<(u64, Sender<Task>)>> = Mutex::new(Vec::new());
/// The process whose threads wait in `WAITING` (see `sys::owned_here`): a
/// forked child has none of them (their channels look open, but no thread
/// would ever run what it sent) and may have inherited the lock held, so it
/// never touches the list: its pools each start a thread, which exits with
/// its pool.
static OWNER: AtomicU64 = AtomicU64::new(0);
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Runs `task` (a pool's dispatcher, to its end) on a waiting pool thread,
/// or on a new one.
pub(crate) fn run(task: Task) -> std::io::Result<()> {
    let mut task = task;
    while crate::sys::owned_here(&OWNER) {
        let waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match waiting {
            Some((_, tx)) => match tx.send(task) {
                Ok(()) => return Ok(()),
                // It exited meanwhile: try the next one.
                Err(mpsc::SendError(t)) => task = t,
            },
            None => break,
        }
    }
    std::thread::Builder::new().name("shmproc-pool".into()).spawn(move || serve(task)).map(drop)
}

fn serve(mut task: Task) {
    loop {
        let then = task();
        let id = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            if !crate::sys::owned_here(&OWNER) {
                then();
                return;
            }
            let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
            if w.len() >= MAX_IDLE {
                drop(w);
                then();
                return;
            }
            w.push((id, tx));
        }
        then();
        match next(id, &rx) {
            Some(t) => task = t,
            None => return,
        }
    }
}

/// The next task for the waiting thread `id`, or `None` when it should exit.
fn next(id: u64, rx: &Receiver<Task>) -> Option<Task> {
    match rx.recv_timeout(IDLE) {
        Ok(t) => Some(t),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => {
            let mut w = WAITING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = w.iter().position(|(k, _)| *k == id) {
                // Nobody took this thread: it may go.
                w.remove(i);
                None
            } else {
                // A pool took it and sends (or gives up on) its task now.
                drop(w);
                rx.recv().ok()
            }
        }
    }
}

/// Held by the library's tests that start pools, one at a time, so that
/// the one that checks the reuse of a thread sees only its own.
#[cfg(test)]
pub(crate) static TESTS: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_thread_runs_the_next_task() {
        let _one = TESTS.lock().unwrap_or_else(|e| e.into_inner());
        // Threads left waiting by earlier tests exit (their channels close).
        WAITING.lock().unwrap().clear();
        let (tx, rx) = mpsc::channel();
        let (t1, t2) = (tx.clone(), tx.clone());
        // A task's `Then` runs once its thread waits for the next task.
        run(Box::new(move || {
            t1.send(std::thread::current().id()).unwrap();
            Box::new(move || t2.send(std::thread::current().id()).unwrap())
        }))
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), first);
        assert_eq!(WAITING.lock().unwrap().len(), 1, "the thread waits for the next task");
        run(Box::new(move || {
            tx.send(std::thread::current().id()).unwrap();
            Box::new(|| ())
        }))
        .unwrap();
        let second = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(first, second, "the waiting thread ran the second task");
    }
}
