//! # shmproc
//!
//! Inter-process communication over shared memory on one host: what Python's
//! `multiprocessing` offers (shared `Value`/`Array`, locks, queues, pipes,
//! processes, pools), built for Rust.
//!
//! Every object lives in a *segment*: named POSIX shared memory that any program
//! can open by name, or an anonymous sealed `memfd` inherited by forked children
//! or handed to a launched binary by [`Handle`]. Each segment starts with a
//! validated header (see `SAFETY.md`), so opening the wrong thing is a precise
//! [`OpenError`], never undefined behaviour.
//!
//! ## Two processes, side by side
//!
//! ```no_run
//! // Process A (creates, keeps the names):       // Process B (another binary, any time later):
//! use shmproc::{Array, ShmObject};                 // let a = shmproc::Array::<f64>::open("prices")?;
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let a = Array::<f64>::create("prices", &[0.0; 4])?;
//! a.set(0, 101.5)?;                                // a.get(0)? == 101.5
//! a.segment().persist(); // the name outlives A (remove it with shmproc::unlink or `shmproc gc`)
//! # Ok(()) }
//! ```
//!
//! Without [`persist`](Segment::persist), the creator removes the name when
//! its last handle drops: B must then open it while A is alive.
//!
//! ## Objects as arguments
//!
//! Every object is a serde type: a `Process` target takes it (and tuples of
//! objects and ordinary data) as its argument, under every start method.
//! Named objects travel by name; anonymous ones by file descriptor (inherited
//! across Fork, passed over the fork server's socket, kept open across the
//! exec of Spawn). Outside a `Process` argument an anonymous object cannot be
//! serialized (its fd means nothing elsewhere): a clear error.
//!
//! ```no_run
//! use shmproc::{Lock, Process, Queue, Value};
//!
//! fn worker((jobs, total, lock): (Queue<u64>, Value<u64>, Lock)) -> Result<(), shmproc::AccessError> {
//!     let n = jobs.recv().expect("a job");
//!     let _held = lock.acquire()?;
//!     total.update(|t| *t += n)
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     shmproc::init(); // first line of main
//!     let (jobs, total, lock) = (Queue::<u64>::anonymous(8)?, Value::<u64>::anonymous(0)?, Lock::anonymous()?);
//!     let p = Process::builder(worker, (jobs.clone(), total.clone(), lock.clone())).start()?;
//!     jobs.send(42)?;
//!     p.join()??;
//!     assert_eq!(total.get()?, 42);
//!     Ok(())
//! }
//! ```
//!
//! ## Errors and `?`
//!
//! Every error is owned, `Send + Sync + 'static`: `?` moves it into
//! `Box<dyn Error + Send + Sync>` (or an `anyhow::Error`). The convenience
//! methods return [`AccessError`]; only `lock()`-style calls hand back the
//! guard of a dead holder inside [`LockError::OwnerDied`], and `?` turns that
//! into an owned error too (`AccessError`, or boxed; [`LockError::into_owned`]
//! for other error types).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use shmproc::{Array, Event, Lock, LockError, Mutex, Pipe, Queue, RawValue, Semaphore, Value};
//! let v = Value::<u64>::anonymous(1)?;
//! v.set(2)?;
//! v.update(|x| *x += 1)?;
//! assert_eq!(v.get()?, 3);
//! let a = Array::<u32>::anonymous(&[1, 2, 3])?;
//! a.set(0, 9)?;
//! a.update(|s| s[1] += 1)?;
//! assert_eq!(a.get(0)? + a.to_vec()?.len() as u32, 12);
//! assert!(a.get(3).is_err()); // IndexOutOfRange, like Python's IndexError
//! let m = Mutex::<u64>::anonymous(0)?;
//! *m.lock()? += 1; // a dead holder's guard is dropped: see LockError
//! let l = Lock::anonymous()?;
//! drop(l.acquire()?);
//! let held = m.lock()?;
//! let again = m.try_lock().map(drop).map_err(LockError::into_owned);
//! assert_eq!(again, Err(shmproc::AccessError::WouldBlock));
//! drop(held);
//! let q = Queue::<u64>::anonymous(4)?;
//! q.send(7)?;
//! assert_eq!(q.recv()?, 7);
//! let (x, y) = Pipe::new()?;
//! x.send(&"hi")?;
//! assert_eq!(y.recv::<String>()?, "hi");
//! let s = Semaphore::anonymous(1)?;
//! s.try_acquire()?;
//! s.release()?;
//! let b = shmproc::Barrier::anonymous(1)?;
//! b.wait()?;
//! let e = Event::anonymous()?;
//! e.set();
//! assert!(e.is_set());
//! let r = RawValue::<u64>::anonymous(5)?;
//! assert_eq!(r.atomic().load(std::sync::atomic::Ordering::Relaxed), 5);
//! # Ok(()) }
//! ```
//!
//! Zero-sized element types do not compile (`Value<()>`, `Mutex<()>`: use
//! [`Lock`]; `Queue<()>`: use a [`Semaphore`]):
//!
//! ```compile_fail
//! let q = shmproc::Queue::<()>::anonymous(4);
//! ```
//!
//! ## Python's `multiprocessing` names
//!
//! | Python | shmproc |
//! |---|---|
//! | `Process(target=f, args=(a,))`, `start()`, `join()`, `is_alive()`, `terminate()`, `kill()`, `exitcode`, `pid`, `name`, `daemon` | [`Process::builder`]`(f, a)`, [`start`](process::Builder::start), [`join`](Process::join) (gives `f`'s result), [`is_alive`](Process::is_alive), [`terminate`](Process::terminate), [`kill`](Process::kill), [`exit_status`](Process::exit_status), [`pid`](Process::pid), [`name`](Process::name), [`daemon`](process::Builder::daemon) |
//! | a `lambda` / closure target | [`Process::closure`] (Fork only) |
//! | `set_start_method("fork" / "spawn" / "forkserver")` | [`StartMethod`](process::StartMethod) per process (`start_method`) |
//! | `if __name__ == "__main__":` / `freeze_support()` | [`init()`] as the first line of `main` |
//! | `current_process()`, `active_children()`, `cpu_count()` | [`current_process`], [`active_children`], [`cpu_count`] |
//! | `Value("d", 0.0)`, `value.get_lock()` | [`Value::<f64>::anonymous(0.0)`](Value), [`lock`](Mutex::lock) (through `Deref`) |
//! | `Array("i", [1, 2])` | [`Array::<i32>::anonymous(&[1, 2])`](Array) |
//! | `RawValue`, `RawArray` | [`RawValue`], [`RawArray`] |
//! | `Lock()`, `RLock()` | [`Lock`], [`RLock`] (= [`ReentrantMutex`]) |
//! | `Semaphore`, `BoundedSemaphore`, `Event`, `Condition`, `Barrier` | [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`] |
//! | `Queue()`, `SimpleQueue()` | [`Queue<T>`](Queue) (`T: Pod`, fixed size), [`FrameQueue`] (byte frames, serde values) |
//! | `JoinableQueue()` | [`JoinableQueue`] |
//! | `Pipe()`, `connection.wait` | [`Pipe::new`] gives two [`Connection`]s, [`pipe::wait`] |
//! | `shared_memory.SharedMemory(name, create, size)` | [`Segment::builder`]`().name(..).size(..).create()` |
//! | `IndexError` | [`AccessError::IndexOutOfRange`] |
//! | `Pool`, `Manager` | not built yet |
//!
//! Platform: Linux. All system calls live in the private `sys` module.

#![warn(missing_debug_implementations)]

pub mod connection;
mod decode;
mod error;
pub mod header;
pub mod inspect;
pub mod manager;
mod object;
mod peer;
pub mod pipe;
pub mod pool;
pub mod queue;
mod segment;
mod sync;
mod sys;
mod time;
mod value;
mod wait;

#[cfg(test)]
mod test_util {
    /// Runs `f` (a call that may block) on another thread and waits at most
    /// 10 s for its result, so a regression fails the test instead of hanging it.
    pub(crate) fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (out, r) = std::sync::mpsc::channel();
        std::thread::spawn(move || out.send(f()).unwrap());
        r.recv_timeout(std::time::Duration::from_secs(10)).expect("the call returned within 10 s")
    }
}

pub mod process;

pub use error::{AccessError, LockError, OpenError};
pub use header::{ObjectKind, TypeInfo};
pub use object::{Builder, SegmentBuilder};
pub use pipe::{Connection, Pipe, PipeBuilder};
pub use pool::{AsyncResult, MapError, Pool, PoolBuilder, PoolError, TaskError};
pub use process::{active_children, cpu_count, current_process, init, Process};
pub use queue::{
    FrameQueue, FrameQueueBuilder, FrameReceiver, FrameRecvError, FrameSendError, FrameSender, JoinableQueue,
    JoinableReceiver, JoinableSender, Queue, QueueBuilder, QueueJoinError, Receiver, RecvError, RecvTimeoutError, Role,
    SendError, SendTimeoutError, Sender, SpscReceiver, SpscSender, TaskDoneError, TryRecvError, TrySendError,
    TypedReceiver, TypedRecvError, TypedSendError, TypedSender, WaitMode,
};
pub use segment::{
    unlink, validate_name, Handle, Segment, SegmentOptions, ShmObject, DEFAULT_MODE, DEFAULT_OPEN_TIMEOUT, MAX_NAME_LEN,
};
pub use sync::{
    AcquireError, Barrier, BarrierBuilder, BarrierError, BarrierWaitResult, BoundedSemaphore, Condition,
    ConditionBuilder, Event, EventBuilder, Lock, LockBuilder, LockGuard, Mutex, MutexBuilder, MutexGuard, RLock,
    RLockBuilder, ReentrantMutex, ReentrantMutexBuilder, ReentrantMutexGuard, ReleaseError, Semaphore,
    SemaphoreBuilder, SemaphoreGuard, OWNED_PERMITS, WATCHED_PROCESSES,
};
pub use value::{
    Array, ArrayBuilder, ArrayGuard, RawArray, RawArrayBuilder, RawValue, RawValueBuilder, Value, ValueBuilder,
    ValueGuard,
};

#[doc(hidden)]
pub mod __private {
    //! Test support for shmproc's own multi-process tests (`ipc-tests`): they
    //! make segments that no API makes (foreign-owned, world-writable,
    //! truncated). Not API: these change a live segment under its mappers.
    //! What tools may read lives in [`crate::inspect`].

    /// `fchown` a segment's fd (tests create foreign-owned segments).
    pub fn set_owner(seg: &crate::Segment, uid: u32, gid: u32) -> std::io::Result<()> {
        crate::sys::set_owner(seg.fd(), uid, gid)
    }
    /// `fchmod` a segment's fd.
    pub fn set_mode(seg: &crate::Segment, mode: u32) -> std::io::Result<()> {
        crate::sys::set_mode(seg.fd(), mode)
    }
    /// `ftruncate` a segment's fd (tests truncate headers).
    pub fn set_len(seg: &crate::Segment, len: u64) -> std::io::Result<()> {
        crate::sys::set_len(seg.fd(), len)
    }
}
