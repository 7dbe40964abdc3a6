//! Processes: run a function in a new process and get its result back.
//!
//! The counterpart of Python's `multiprocessing.Process`, with three start
//! methods and typed results.
//!
//! ```no_run
//! use shmproc::process::{Process, StartMethod};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() {
//!     shmproc::init(); // first line of main: the gate for Spawn and ForkServer children
//!     let p = Process::builder(square, 12).name("squarer").start().unwrap();
//!     assert_eq!(p.join().unwrap(), 144);
//!
//!     // A closure runs in a forked child (it is already in the child's memory).
//!     let base = 100u64;
//!     let p = Process::closure(move || base + 1).start().unwrap();
//!     assert_eq!(p.join().unwrap(), 101);
//! }
//! ```
//!
//! ## Start methods
//!
//! | method | how | targets | start + join of a trivial target* | multi-threaded parent |
//! |---|---|---|---|---|
//! | [`Fork`](StartMethod::Fork) | `fork()`; the child runs the target and `_exit`s | closure or `fn` | ~75-80 us (bare fork + wait: ~55 us) | restricted (below) |
//! | [`Spawn`](StartMethod::Spawn) | re-exec `/proc/self/exe`; [`init()`](crate::init) runs the target | `fn` | ~1 ms (bare exec + wait: ~0.9 ms) | safe |
//! | [`ForkServer`](StartMethod::ForkServer) | a server re-executed once, single-threaded, forks each child | `fn` | ~85-95 us | safe |
//!
//! \* `shmproc bench`, scenario `spawn-join`, on a 2-vCPU KVM guest; Python
//! 3.11 on the same machine: 1.7 ms (fork), 13 ms (forkserver), 49 ms (spawn).
//!
//! **Default** ([`StartMethod::default`]): `ForkServer` when this process called
//! [`shmproc::init()`](crate::init), otherwise `Fork`; a closure target always
//! forks. Why: forking a multi-threaded process copies only the calling thread,
//! and every lock another thread held at that instant (the allocator's, stdout's,
//! a user `Mutex`) stays locked forever in the child. Python made `forkserver`
//! its default on Linux (3.14) for exactly this reason. The fork server is
//! started by re-executing the binary, so it is single-threaded whatever the
//! parent does, and its forks are safe. Without `init()` neither Spawn nor
//! ForkServer can work (the re-executed copy would run `main` again), so the
//! default falls back to Fork, whose rules follow.
//!
//! ## Rules for forked children of a multi-threaded parent
//! The child runs only the target, then sends its report and `_exit`s: no
//! destructors, no atexit handlers, no stdio flush (use `eprintln!` or flush
//! yourself). glibc's `malloc` is fork-safe (it takes its arena locks around
//! `fork`), so allocating is fine; a lock held by another parent thread is not:
//! do not touch a `Mutex`, `stdout()`'s lock, a logger or a runtime that another
//! thread may have held while the parent forked. This includes starting
//! processes from the child: shmproc's own bookkeeping (the child registry,
//! the fork-server connection) sits behind short-held locks. If the target
//! needs such things, use a `fn` target with Spawn or ForkServer, whose
//! children start single-threaded.
//!
//! A non-capturing closure coerces to a `fn` and works with every method:
//! `Process::builder(|x: u32| x + 1, 41)`.
//!
//! ## Results, panics and deaths
//! The argument and the result travel as postcard bytes (a memfd for the
//! argument of a re-executed child, one datagram on a pooled socket pair for
//! the report). [`Process::join`]
//! gives the target's `R`, or [`JoinError::Panicked`] with the panic message, or
//! [`JoinError::Died`] with the [`ExitStatus`] (exit code or signal) when the
//! child ended without a report.
//!
//! ## Waiting without pid reuse
//! A pidfd is opened right after `fork` (Spawn: right after `spawn`, while the
//! child cannot have been reaped; ForkServer: by the server, which passes it
//! over the socket). Waiting (`waitid(P_PIDFD)`), polling (`poll` on the pidfd)
//! and signalling (`pidfd_send_signal`) all go through it, so a reused pid is
//! never mistaken for the child. Kernels without pidfds (before 5.3) fall back
//! to `waitpid` by pid, which is still exact for an unreaped child of ours.
//!
//! ## Daemon children
//! A [`daemon`](Builder::daemon) child gets `PR_SET_PDEATHSIG(SIGKILL)` and then
//! checks that its parent is still the one that started it (the parent may have
//! died between `fork` and `prctl`); if not it exits at once. Linux delivers
//! the death signal when the *thread* that created the child exits, so start
//! daemon children from a thread that lives as long as they should (the main
//! thread). ForkServer daemons are tied to the server, which exits as soon as
//! the parent's end of its socket closes (the parent died or exited).
//!
//! ## Without `init()`
//! Spawn and ForkServer refuse to start ([`StartError::NotInitialized`]) in a
//! process that never called [`shmproc::init()`](crate::init), so a binary
//! without the gate can never re-execute itself into a second copy of `main`.
//! If `init()` is called late in `main`, the child runs whatever comes before
//! it: call it first.
//!
//! ## Cooperating binaries
//! [`CommandExt::share`] hands any [`ShmObject`](crate::ShmObject) to another
//! executable through its environment; [`inherited`] gets it back there.
//!
//! ## Layout
//! Each file imports only files listed above it (no circle):
//!
//! | file | holds |
//! |---|---|
//! | `channel.rs` | the pooled report socket pairs |
//! | `child.rs` | what runs in a child: trampoline, report, panic capture, `fn` offsets, and `run_forked`, the one child side of Fork and ForkServer |
//! | `exec.rs` | the re-exec toolkit: the gate and [`StartMethod`], gate variable names, executable identity, `resolve`, `spawn_self`, `comm_name` |
//! | `error.rs` | the error types and [`ExitStatus`] |
//! | `reap.rs` | the OS side of a child: pid + pidfd; reaping, signalling, liveness, the exit-status conversion |
//! | `forkserver.rs`, `spawn.rs`, `fork.rs` | the three start methods (a forked child closes the fork server's socket, so `fork.rs` comes last) |
//! | `handles.rs` | handing objects to other executables |
//! | `mod.rs` | [`init`], [`Builder`], [`Process`] and the registry of children |

// The examples show `shmproc::init()` as the first line of `main`, on purpose.
#![allow(clippy::needless_doctest_main)]

mod channel;
pub(crate) mod child;
mod error;
mod exec;
mod fork;
mod forkserver;
mod handles;
mod reap;
mod spawn;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::{ExitStatus, InheritError, JoinError, ShareError, StartError};
pub(crate) use exec::check_gate;
pub use exec::StartMethod;
pub use handles::{inherited, CommandExt, HANDLE_ENV_PREFIX};

use crate::object::Carried;
use crate::sys;
use crate::time::Deadline;
use child::{Report, Trampoline, TAG_OK, TAG_REPORT};
use reap::{Launched, OsChild};

// The pool (`crate::pool`) sends its task functions to workers the way a
// `Process` sends its target: as offsets from the anchor (see `child.rs`).
pub(crate) use child::{address_at, offset_of, same_object};

/// The main gate: call it first in `main` of every binary that starts
/// processes with [`StartMethod::Spawn`] or [`StartMethod::ForkServer`].
///
/// In an ordinary run it records that the gate exists and returns at once
/// (one environment lookup). In a process re-executed by shmproc it never
/// returns: it verifies that it runs the same executable file as its parent,
/// runs the target (Spawn) or the fork server loop (ForkServer), and exits.
///
/// ```no_run
/// fn main() {
///     shmproc::init();
///     // ... the program
/// }
/// ```
pub fn init() {
    exec::mark_initialized();
    if !exec::reexecuted() {
        return;
    }
    if let Some(v) = std::env::var_os(exec::SPAWN_ENV) {
        std::env::remove_var(exec::SPAWN_ENV);
        spawn::child_main(&v.to_string_lossy());
    }
    if let Some(v) = std::env::var_os(exec::SERVER_ENV) {
        std::env::remove_var(exec::SERVER_ENV);
        forkserver::server_main(&v.to_string_lossy());
    }
}

/// The name, pid and parent pid of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The name given at start (`Process-N` by default), or `MainProcess`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid (for a ForkServer child: the server).
    pub ppid: u32,
}

/// The calling process: its shmproc name, pid and parent pid.
pub fn current_process() -> ProcessInfo {
    ProcessInfo { name: child::current_name(), pid: sys::raw_pid(), ppid: sys::parent_pid() }
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn cpu_count() -> usize {
    sys::affinity_cpu_count().ok().or_else(|| std::thread::available_parallelism().ok().map(|n| n.get())).unwrap_or(1)
}

/// Children started by this process that were neither joined nor dropped and
/// are still running.
pub fn active_children() -> Vec<ProcessInfo> {
    let me = sys::raw_pid();
    let stamp = sys::process_stamp();
    let list = REGISTRY.lock();
    list.iter()
        .filter(|s| s.owner == stamp && s.os.alive())
        .map(|s| ProcessInfo { name: s.name.clone(), pid: s.os.pid, ppid: me })
        .collect()
}

/// Per-child data shared with the registry.
#[derive(Debug)]
struct Shared {
    os: OsChild,
    name: String,
    /// `sys::process_stamp()` of the starting process: a forked child's copy
    /// of the registry lists its parent's children, which are not its own.
    owner: u64,
}

/// Locked with a [`sys::ForkSafeMutex`]: a child forked while another thread
/// of its parent held the registry still starts and joins its own children.
static REGISTRY: sys::ForkSafeMutex<Vec<Arc<Shared>>> = sys::ForkSafeMutex::new(Vec::new(), Vec::new);
static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A closure called through `&mut`, so that a forked child can call it
/// without freeing its box (a free there is only copy-on-write faults).
trait CallOnce<R> {
    fn call_once(&mut self) -> Option<R>;
}

impl<R, F: FnOnce() -> R> CallOnce<R> for Option<F> {
    fn call_once(&mut self) -> Option<R> {
        self.take().map(|f| f())
    }
}

enum Target<R> {
    Closure(Box<dyn CallOnce<R>>),
    Fn { tramp: Trampoline, func: usize, args: Result<Vec<u8>, String>, carried: Carried },
}

/// Configures and starts a [`Process`]. Made by [`Process::builder`] or [`Process::closure`].
#[must_use = "a builder does nothing until start()"]
pub struct Builder<R> {
    target: Target<R>,
    name: Option<String>,
    method: Option<StartMethod>,
    daemon: bool,
}

impl<R> fmt::Debug for Builder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("target", &matches!(self.target, Target::Closure(_)).then_some("closure").unwrap_or("fn"))
            .field("name", &self.name)
            .field("method", &self.method)
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl<R: Serialize + DeserializeOwned + 'static> Builder<R> {
    /// The process name (default `Process-N`, see [`current_process`]). A
    /// name given here is also the child's OS-visible name (`PR_SET_NAME`,
    /// first 15 bytes, shown by `ps`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The start method (default: [`StartMethod::default`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Whether the child is killed when its parent dies (default false).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Starts the child.
    pub fn start(self) -> Result<Process<R>, StartError> {
        let Prepared { launch, rest } = self.prepare()?;
        let launched = match launch {
            Launch::Done(l) => l,
            Launch::Server { t, f, args, objects } => forkserver::start(forkserver::Spec {
                name: &rest.name,
                daemon: rest.daemon,
                tramp: t,
                func: f,
                args: &args,
                objects: &objects,
            })?,
        };
        Ok(rest.finish(launched))
    }

    /// Starts several children; one result per builder, in order. Fork-server
    /// children are requested together (one round trip to the server for all
    /// of them, which halves a pool's start); the others start one by one.
    pub(crate) fn start_many(builders: Vec<Builder<R>>) -> Vec<Result<Process<R>, StartError>> {
        let prepared: Vec<Result<Prepared, StartError>> = builders.into_iter().map(Builder::prepare).collect();
        let specs: Vec<forkserver::Spec<'_>> = prepared
            .iter()
            .filter_map(|p| match p {
                Ok(Prepared { launch: Launch::Server { t, f, args, objects }, rest }) => {
                    Some(forkserver::Spec { name: &rest.name, daemon: rest.daemon, tramp: *t, func: *f, args, objects })
                }
                _ => None,
            })
            .collect();
        let mut served = forkserver::start_many(&specs).into_iter();
        drop(specs);
        prepared
            .into_iter()
            .map(|p| {
                let Prepared { launch, rest } = p?;
                let launched = match launch {
                    Launch::Done(l) => l,
                    Launch::Server { .. } => {
                        served.next().unwrap_or_else(|| Err(StartError::ForkServer { reason: "no reply".into() }))?
                    }
                };
                Ok(rest.finish(launched))
            })
            .collect()
    }

    /// Everything of a start up to the launch; Fork and Spawn children are
    /// launched here, a fork-server child is left as its request.
    fn prepare(self) -> Result<Prepared, StartError> {
        exec::check_gate();
        let method = match (&self.target, self.method) {
            (Target::Closure(_), None) => StartMethod::Fork,
            (_, Some(m)) => m,
            (Target::Fn { .. }, None) => StartMethod::default(),
        };
        let named = self.name.is_some();
        let name = self.name.unwrap_or_else(|| format!("Process-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let mut keep = Vec::new();
        let mut hooks = Vec::new();
        let launch = match self.target {
            Target::Closure(mut f) => {
                if method != StartMethod::Fork {
                    return Err(StartError::ClosureNeedsFork { method });
                }
                let f = &mut *f;
                Launch::Done(fork::start(&name, named, self.daemon, move |out| match f.call_once() {
                    Some(r) => {
                        let sent = child::emit_ok(&r, out);
                        std::mem::forget(r);
                        sent
                    }
                    None => Err("the closure was already called".into()),
                })?)
            }
            Target::Fn { tramp, func, args, mut carried } => {
                let args = args.map_err(|reason| StartError::Encode { reason })?;
                let fds = carried.raw_fds();
                hooks = std::mem::take(&mut carried.hooks);
                keep = std::mem::take(&mut carried.keep);
                match method {
                    // Borrowed: the child must not free the parent's buffer.
                    // The carried fds are inherited: the same numbers.
                    StartMethod::Fork => Launch::Done(fork::start(&name, named, self.daemon, |out| {
                        if !fds.is_empty() {
                            crate::object::set_inbound(fds.clone(), false);
                        }
                        tramp(func, &args, out)
                    })?),
                    StartMethod::Spawn | StartMethod::ForkServer => {
                        if !exec::initialized() {
                            return Err(StartError::NotInitialized { method });
                        }
                        if !child::same_object(func) || !child::same_object(tramp as usize) {
                            return Err(StartError::TargetOutsideExecutable);
                        }
                        let (t, f) = (child::offset_of(tramp as usize), child::offset_of(func));
                        if method == StartMethod::Spawn {
                            Launch::Done(spawn::start(&name, self.daemon, t, f, &args, &fds)?)
                        } else {
                            Launch::Server { t, f, args, objects: std::mem::take(&mut carried.fds) }
                        }
                    }
                }
            }
        };
        Ok(Prepared { launch, rest: Rest { name, method, daemon: self.daemon, hooks, keep } })
    }
}

/// A start prepared by [`Builder::prepare`]: its launch, and the rest.
struct Prepared {
    launch: Launch,
    rest: Rest,
}

/// The launch of a prepared start.
enum Launch {
    /// Launched already (Fork, Spawn).
    Done(Launched),
    /// A fork-server request still to send: the target's offsets, the
    /// argument, and the anonymous objects whose fds go with it.
    Server { t: i64, f: i64, args: Vec<u8>, objects: Vec<crate::Segment> },
}

/// What a start does once its child is launched.
struct Rest {
    name: String,
    method: StartMethod,
    daemon: bool,
    hooks: Vec<crate::object::ChildHook>,
    keep: Vec<crate::Segment>,
}

impl Rest {
    fn finish<R: Serialize + DeserializeOwned + 'static>(self, launched: Launched) -> Process<R> {
        // The child's pid is known: carried queue halves reserve their
        // participant entries for it before the caller can drop its own.
        crate::object::run_child_hooks(self.hooks, launched.child.pid, launched.start_time);
        let mut p = Process::from_launched(launched, self.name, self.method, self.daemon);
        p.keep = self.keep;
        p
    }
}

/// A child process running a target that returns `R`.
///
/// Dropping a `Process` without joining it detaches the child (a daemon child
/// is killed and reaped instead); a detached child that has not finished yet
/// stays a zombie until this process exits, as with `std::process::Child`.
pub struct Process<R> {
    shared: Arc<Shared>,
    method: StartMethod,
    daemon: bool,
    result: Option<channel::Channel>,
    status_pipe: Option<OwnedFd>,
    /// ForkServer: when the child was first seen dead by its pidfd with no
    /// status record yet (see `try_reap`).
    dead_unrecorded: Option<std::time::Instant>,
    buf: Vec<u8>,
    ended: Option<ExitStatus>,
    joined: bool,
    /// The objects of the argument, kept until the child was joined (a named
    /// one's creator must not unlink it before the child opened it).
    keep: Vec<crate::Segment>,
    /// Spawn: the argument memfd (see `spawn.rs`: did the child reach `init()`?).
    gate: Option<OwnedFd>,
    _r: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.shared.name)
            .field("pid", &self.shared.os.pid)
            .field("method", &self.method)
            .field("daemon", &self.daemon)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<R: Serialize + DeserializeOwned + 'static> Process<R> {
    /// A process that runs `target(arg)`; works with every start method.
    pub fn builder<A: Serialize + DeserializeOwned + 'static>(target: fn(A) -> R, arg: A) -> Builder<R> {
        // Objects in `arg` are collected here: named ones travel by name,
        // anonymous ones by fd (see `Carried`); `arg` itself drops now.
        let (args, carried) = match crate::object::serialize_carrying(&arg) {
            Ok((b, c)) => (Ok(b), c),
            Err(e) => (Err(e), Carried::default()),
        };
        Builder {
            target: Target::Fn { tramp: child::trampoline::<A, R>, func: target as usize, args, carried },
            name: None,
            method: None,
            daemon: false,
        }
    }

    /// A process that runs a closure; [`StartMethod::Fork`] only (the closure
    /// is already in the forked child's memory).
    pub fn closure(target: impl FnOnce() -> R + 'static) -> Builder<R> {
        Builder { target: Target::Closure(Box::new(Some(target))), name: None, method: None, daemon: false }
    }
}

impl<R: DeserializeOwned> Process<R> {
    fn from_launched(l: Launched, name: String, method: StartMethod, daemon: bool) -> Process<R> {
        let shared = Arc::new(Shared { os: l.child, name, owner: sys::process_stamp() });
        REGISTRY.lock().push(shared.clone());
        Process {
            shared,
            method,
            daemon,
            result: Some(l.result),
            status_pipe: l.status,
            dead_unrecorded: None,
            buf: Vec::new(),
            ended: None,
            joined: false,
            keep: Vec::new(),
            gate: l.gate,
            _r: PhantomData,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.shared.os.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The start method used.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// Whether it is a daemon child.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Whether the child still runs (reaps it if it has ended).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.progress(Deadline::after(Some(Duration::ZERO))), Ok(false))
    }

    /// How the child ended, or `None` while it runs (Python's `exitcode`).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let _ = self.progress(Deadline::after(Some(Duration::ZERO)));
        self.ended
    }

    /// Kills the child and waits up to `bound` for it to end (reaping it, or
    /// for a fork-server child, reading how it ended); whether it has. The
    /// pool reuses a worker's segments only once the worker is known gone.
    pub(crate) fn kill_and_wait(mut self, bound: Duration) -> bool {
        let _ = self.kill();
        self.wait_ended(bound).is_some()
    }

    /// Waits up to `bound` for the child to end (reaping it, or for a
    /// fork-server child, reading how it ended); how it ended, if it has.
    pub(crate) fn wait_ended(&mut self, bound: Duration) -> Option<ExitStatus> {
        // An error taking its report still leaves `ended` set: it has ended.
        let _ = self.progress(Deadline::after(Some(bound)));
        self.ended
    }

    /// Asks the child to stop: `SIGTERM`. Nothing happens if it already ended.
    pub fn terminate(&self) -> Result<(), std::io::Error> {
        self.signal(sys::Signal::TERM)
    }

    /// Kills the child: `SIGKILL`. Nothing happens if it already ended.
    pub fn kill(&self) -> Result<(), std::io::Error> {
        self.signal(sys::Signal::KILL)
    }

    fn signal(&self, sig: sys::Signal) -> Result<(), std::io::Error> {
        if self.ended.is_some() {
            return Ok(());
        }
        self.shared.os.signal(sig)
    }

    /// Waits for the child and returns the target's result.
    pub fn join(mut self) -> Result<R, JoinError> {
        self.join_deadline(Deadline::NEVER)
    }

    /// Waits up to `timeout`; [`JoinError::Timeout`] leaves the child running
    /// and this handle usable.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, JoinError> {
        self.join_deadline(Deadline::after(Some(timeout)))
    }

    fn join_deadline(&mut self, deadline: Deadline) -> Result<R, JoinError> {
        if self.joined {
            return Err(JoinError::AlreadyJoined);
        }
        if !self.progress(deadline)? {
            return Err(JoinError::Timeout);
        }
        self.joined = true;
        self.unregister();
        self.keep.clear();
        let status = self.ended.unwrap_or(ExitStatus::Unknown);
        let buf = std::mem::take(&mut self.buf);
        let reached_init = match &self.gate {
            // Only `init()` moves the offset; a refusal (exit 121) is not about init.
            Some(g) => {
                status == ExitStatus::Exited(child::EXIT_REFUSED) || sys::offset_marked(g.as_fd()).unwrap_or(true)
            }
            None => true,
        };
        match buf.split_first() {
            None if !reached_init && !matches!(status, ExitStatus::Signaled(_)) => {
                Err(JoinError::InitNotFirst { status })
            }
            None => Err(JoinError::Died { status }),
            Some((&TAG_OK, bytes)) => match crate::decode::from_bytes::<R>(bytes) {
                Ok(r) => Ok(r),
                // A truncated report: the child died while writing it.
                Err(_) if !status.success() => Err(JoinError::Died { status }),
                Err(e) => Err(JoinError::Decode { reason: format!("decoding the result: {e}") }),
            },
            Some((&TAG_REPORT, bytes)) => match crate::decode::from_bytes::<Report>(bytes) {
                Ok(Report::Panic { message, location }) => Err(JoinError::Panicked { message, location, status }),
                Ok(Report::Serde(reason)) => Err(JoinError::Decode { reason }),
                Err(_) if !status.success() => Err(JoinError::Died { status }),
                Err(e) => Err(JoinError::Decode { reason: format!("malformed report: {e}") }),
            },
            Some((tag, _)) => Err(JoinError::Decode { reason: format!("unknown report tag {tag}") }),
        }
    }

    /// Reaps the child once it ended and collects its report. Returns
    /// whether it has ended, waiting at most until `deadline`.
    ///
    /// Only the exit is waited for (the pidfd, or the fork server's status
    /// pipe): the child's report is one datagram that never blocks its sender,
    /// so the parent wakes once per child, not once for the report and again
    /// for the exit.
    fn progress(&mut self, deadline: Deadline) -> Result<bool, JoinError> {
        if self.ended.is_some() {
            return Ok(true);
        }
        let blocking_own_reap = deadline == Deadline::NEVER
            && self.status_pipe.is_none()
            && self.method != StartMethod::ForkServer
            && self.shared.os.pidfd.is_some();
        if blocking_own_reap {
            // `join()`: sleep in waitid itself, as a bare waitpid would.
            if let Some(st) = self.shared.os.reap(false)? {
                self.ended = Some(st);
                self.collect()?;
                return Ok(true);
            }
        }
        loop {
            // Poll first (it returns at once for an ended child): a reap
            // attempt on a child that is still starting is a wasted syscall.
            if self.wait_exit(deadline)? {
                if let Some(st) = self.try_reap()? {
                    self.ended = Some(st);
                    self.collect()?;
                    return Ok(true);
                }
                if self.dead_unrecorded.is_some() {
                    // Dead, its record on the way: the pidfd stays readable,
                    // so wait on the status pipe alone.
                    self.wait_record(deadline)?;
                }
            }
            if deadline.expired() {
                return Ok(false);
            }
        }
    }

    /// Takes the child's report datagram (and the memfd of a large one),
    /// then returns the socket pair to the pool (the child was reaped).
    fn collect(&mut self) -> Result<(), JoinError> {
        let Some(chan) = self.result.take() else { return Ok(()) };
        let report = take_report(&chan);
        // Reused only when clean: a report that did not decode, or anything
        // still queued after it (datagrams of a descendant that kept the
        // child's end), would meet the next child that gets this pair.
        let empty =
            || matches!(sys::poll_readable([chan.rd.as_fd()], Deadline::after(Some(Duration::ZERO))), Ok([false]));
        if report.is_ok() && empty() {
            channel::give_back(chan.rd, chan.wr);
        }
        self.buf = report?;
        Ok(())
    }

    fn try_reap(&mut self) -> Result<Option<ExitStatus>, JoinError> {
        if let Some(sp) = &self.status_pipe {
            let mut rec = [0u8; reap::STATUS_LEN];
            return match sys::read(sp.as_fd(), &mut rec) {
                // The server writes the record once it has reaped the child,
                // so by then the pidfd polls readable. A record for a child
                // still running is not one: stop listening to the server (the
                // pidfd tells when the child ends, not how). Without a pidfd
                // (kernels before 5.3) liveness is by pid, which a reaped
                // child's reused pid would fake: the record is taken then.
                Ok(reap::STATUS_LEN) if self.shared.os.pidfd.is_some() && self.shared.os.alive() => {
                    self.status_pipe = None;
                    Ok(None)
                }
                Ok(reap::STATUS_LEN) => Ok(Some(reap::decode_status(&rec))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Dead by its pidfd and still no record after a grace
                    // period: the server died, and the pipe's write end it
                    // held lives on in some process forked meanwhile (so no
                    // end of file comes either).
                    if self.shared.os.alive() {
                        return Ok(None);
                    }
                    let since = *self.dead_unrecorded.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < reap::RECORD_GRACE {
                        return Ok(None);
                    }
                    self.status_pipe = None;
                    Ok(Some(ExitStatus::Unknown))
                }
                // End of file or a short record: the server died. Fall back
                // to the child's pidfd to learn when it ends.
                _ => {
                    self.status_pipe = None;
                    Ok(if self.shared.os.alive() { None } else { Some(ExitStatus::Unknown) })
                }
            };
        }
        if self.method == StartMethod::ForkServer {
            // Server gone: the pidfd tells when the child ends, not how.
            return Ok(if self.shared.os.alive() { None } else { Some(ExitStatus::Unknown) });
        }
        Ok(self.shared.os.reap(true)?)
    }

    /// Sleeps until the child may have ended or `deadline` passes; returns
    /// whether it may have ended.
    fn wait_exit(&self, deadline: Deadline) -> Result<bool, JoinError> {
        Ok(match (&self.status_pipe, &self.shared.os.pidfd) {
            // Both: the record, or the child's death without one (a server
            // that died; see `try_reap`).
            (Some(st), Some(pidfd)) => sys::poll_readable([st.as_fd(), pidfd.as_fd()], deadline)?.contains(&true),
            (Some(fd), None) | (None, Some(fd)) => sys::poll_readable([fd.as_fd()], deadline)?[0],
            // No pidfd (kernel before 5.3): poll for the exit in short naps.
            (None, None) => {
                if !deadline.expired() {
                    sys::nap();
                }
                true
            }
        })
    }

    /// A fork-server child that its pidfd shows dead before the server's
    /// record of it came (the usual order: the server wakes, reaps, then
    /// writes): waits for the record on the status pipe alone, until the
    /// deadline or the end of [`reap::RECORD_GRACE`], whichever comes first.
    /// The server's write wakes us at once (a fixed nap here cost every
    /// join half a millisecond).
    fn wait_record(&self, deadline: Deadline) -> Result<(), JoinError> {
        match (&self.status_pipe, self.dead_unrecorded) {
            (Some(st), Some(since)) => {
                let left = reap::RECORD_GRACE.saturating_sub(since.elapsed());
                sys::poll_readable([st.as_fd()], deadline.min_after(left))?;
            }
            _ => sys::nap(),
        }
        Ok(())
    }

    fn unregister(&self) {
        let mut list = REGISTRY.lock();
        list.retain(|s| !Arc::ptr_eq(s, &self.shared));
    }
}

/// Reads the report datagram carrying `chan.token` (skipping stale ones);
/// empty when the child sent none.
fn take_report(chan: &channel::Channel) -> Result<Vec<u8>, JoinError> {
    const T: usize = child::TOKEN_LEN;
    // Bounded, so that a descendant flooding the socket cannot stall a join.
    for _ in 0..64 {
        // Peek into a small stack buffer first: a typical report fits, and a
        // larger one is then taken into a buffer of its exact size.
        let mut small = [0u8; 256];
        let (len, fds) = match sys::peek_with_fds(chan.rd.as_fd(), &mut small) {
            Ok(x) => x,
            // No report: the child died before sending one.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(JoinError::Decode { reason: e.to_string() })
            }
            Err(e) => return Err(JoinError::Os(e)),
        };
        // The peek filled the first `min(len, 256)` bytes.
        let head = &small[..len.min(small.len())];
        if len < T || head[..T] != chan.token.to_le_bytes() {
            // A stale datagram (from a descendant of an earlier child that
            // inherited this socket): consume it, close its fds, look again.
            drop(fds);
            let _ = sys::recv_with_fds(chan.rd.as_fd(), &mut small);
            continue;
        }
        let (mut buf, fds) = if len <= small.len() {
            // Take the datagram off the socket (the peek left it queued, and
            // the pair goes back to the pool): the same bytes, and the fds
            // installed by this receive rather than the peek's copies.
            drop(fds);
            let (n, taken) = sys::recv_with_fds(chan.rd.as_fd(), &mut small)
                .map_err(|e| JoinError::Decode { reason: e.to_string() })?;
            let got = &small[..n.min(small.len())];
            if got.len() < T || got[..T] != chan.token.to_le_bytes() {
                return Err(JoinError::Decode { reason: "report changed between peek and receive".into() });
            }
            (got[T..].to_vec(), taken)
        } else {
            if len > T + child::INLINE_MAX {
                return Err(JoinError::Decode { reason: format!("report datagram of {len} bytes is too large") });
            }
            drop(fds);
            let mut buf = vec![0u8; len];
            let (n, taken) = sys::recv_with_fds(chan.rd.as_fd(), &mut buf)
                .map_err(|e| JoinError::Decode { reason: e.to_string() })?;
            buf.truncate(n);
            buf.drain(..T.min(buf.len()));
            (buf, taken)
        };
        if buf.first() == Some(&child::TAG_IN_MEMFD) {
            let [fd] = <[OwnedFd; 1]>::try_from(fds)
                .map_err(|_| JoinError::Decode { reason: "a large report came without its memfd".into() })?;
            buf = sys::read_fd_all(fd.as_fd(), child::MAX_REPORT)
                .map_err(|e| JoinError::Decode { reason: format!("reading the report: {e}") })?;
        }
        return Ok(buf);
    }
    Err(JoinError::Decode { reason: "too many stale datagrams on the report socket".into() })
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if !self.joined {
            let mut list = REGISTRY.lock();
            list.retain(|s| !Arc::ptr_eq(s, &self.shared));
        }
        if self.ended.is_some() {
            return;
        }
        if self.method == StartMethod::ForkServer {
            // The server reaps it; a daemon child is killed like any other.
            if self.daemon {
                let _ = self.shared.os.signal(sys::Signal::KILL);
            }
            return;
        }
        if self.daemon {
            let _ = self.shared.os.signal(sys::Signal::KILL);
            let _ = self.shared.os.reap(false);
        } else {
            let _ = self.shared.os.reap(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a raw child that sends `report` (if any) on a report socket and
    /// exits with `code`, and wraps it in a `Process<u64>`.
    fn fake_child(report: Option<&'static [u8]>, code: i32) -> Process<u64> {
        let chan = channel::take().unwrap();
        // SAFETY: the child only makes raw system calls (sendmsg, _exit).
        match unsafe { sys::fork() }.unwrap() {
            None => {
                // A stale datagram first (another token), then the report.
                let _ = sys::send_parts_with_fds(
                    chan.wr.as_fd(),
                    &chan.token.wrapping_add(1).to_le_bytes(),
                    &[TAG_OK, 7],
                    &[],
                );
                if let Some(r) = report {
                    let _ = sys::send_parts_with_fds(chan.wr.as_fd(), &chan.token.to_le_bytes(), r, &[]);
                }
                sys::exit_now(code)
            }
            Some(pid) => {
                Process::from_launched(Launched::own_child(pid, chan), "fake".into(), StartMethod::Fork, false)
            }
        }
    }

    /// A datagram left after the report (a descendant of the child kept its
    /// end and wrote to it) must not meet the next child: the pair is closed,
    /// not put back in the pool.
    #[test]
    fn a_pair_with_a_datagram_left_after_the_report_is_not_reused() {
        let chan = channel::take().unwrap();
        let ino = rustix::fs::fstat(&chan.rd).unwrap().st_ino;
        // SAFETY: the child only makes raw system calls (sendmsg, _exit).
        let p = match unsafe { sys::fork() }.unwrap() {
            None => {
                let _ = sys::send_parts_with_fds(chan.wr.as_fd(), &chan.token.to_le_bytes(), &[TAG_OK, 42], &[]);
                let stray = chan.token.wrapping_add(99).to_le_bytes();
                let _ = sys::send_parts_with_fds(chan.wr.as_fd(), &stray, &[TAG_OK, 7], &[]);
                sys::exit_now(0)
            }
            Some(pid) => {
                Process::<u64>::from_launched(Launched::own_child(pid, chan), "fake".into(), StartMethod::Fork, false)
            }
        };
        assert_eq!(p.join().unwrap(), 42);
        // Every idle pair of the pool: none is the one with the stray datagram.
        let idle: Vec<channel::Channel> = (0..20).filter_map(|_| channel::take().ok()).collect();
        assert!(
            idle.iter().all(|c| rustix::fs::fstat(&c.rd).unwrap().st_ino != ino),
            "the pair with a datagram left in it went back to the pool"
        );
    }

    /// A report socket whose buffer another holder of the child's end filled
    /// (datagrams queue until the child is reaped): the child's report waits
    /// for room at most `REPORT_SEND_TIMEOUT`, then the child ends and its
    /// join reports the missing report instead of hanging.
    #[test]
    fn a_child_whose_report_socket_is_full_still_ends() {
        let chan = channel::take().unwrap();
        let now = || Deadline::after(Some(Duration::ZERO));
        let mut queued = 0;
        while sys::send_parts_with_fds_until(chan.wr.as_fd(), &[0u8; 8], &[0u8; 1024], &[], now()).is_ok() {
            queued += 1;
            assert!(queued < 1_000_000, "the socket never filled");
        }
        // SAFETY: the child only makes raw system calls (sendmsg, poll, _exit).
        let p = match unsafe { sys::fork() }.unwrap() {
            None => {
                child::emit(chan.wr.as_fd(), &[TAG_OK, 42]);
                sys::exit_now(0)
            }
            Some(pid) => {
                Process::<u64>::from_launched(Launched::own_child(pid, chan), "fake".into(), StartMethod::Fork, false)
            }
        };
        let pid = p.pid();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(p.join());
        });
        let r = rx.recv_timeout(child::REPORT_SEND_TIMEOUT + Duration::from_secs(20));
        if r.is_err() {
            // Leave no blocked child behind.
            let _ = sys::kill(pid, sys::Signal::KILL);
        }
        assert!(r.is_ok(), "join hung: the child blocked sending into a full report socket");
        assert!(r.unwrap().is_err(), "a report that could not be sent must not read as a value");
    }

    #[test]
    fn tokens_are_not_a_sequence() {
        let t: Vec<u64> = (0..4).map(|_| channel::take().unwrap().token).collect();
        assert!(t.windows(2).all(|w| w[1] != w[0].wrapping_add(1)), "{t:?}");
    }

    #[test]
    fn regression_small_report_is_consumed_not_left_queued() {
        // A small report used to be read with MSG_PEEK only, so it stayed queued
        // in the socket pair that then went back to the pool (with any fd it carried).
        let chan = channel::take().unwrap();
        sys::send_parts_with_fds(chan.wr.as_fd(), &chan.token.to_le_bytes(), &[TAG_OK, 42], &[]).unwrap();
        assert_eq!(take_report(&chan).unwrap(), vec![TAG_OK, 42]);
        let mut probe = [0u8; 16];
        match sys::peek_with_fds(chan.rd.as_fd(), &mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the report is still queued: {:?}", other.map(|(n, _)| n)),
        }
    }

    #[test]
    fn malformed_reports_are_errors_not_panics() {
        // A valid report for comparison.
        assert_eq!(fake_child(Some(&[TAG_OK, 42]), 0).join().unwrap(), 42);
        // Truncated varint after TAG_OK, clean exit: Decode.
        assert!(matches!(fake_child(Some(&[TAG_OK, 0xff]), 0).join(), Err(JoinError::Decode { .. })));
        // Same bytes but the child died: Died.
        match fake_child(Some(&[TAG_OK, 0xff]), 3).join() {
            Err(JoinError::Died { status }) => assert_eq!(status, ExitStatus::Exited(3)),
            other => panic!("{other:?}"),
        }
        // Garbage Report, unknown tag, empty datagram, memfd tag without an fd.
        for bad in [&[TAG_REPORT, 0xee, 1][..], &[9, 1, 2][..], &[][..], &[child::TAG_IN_MEMFD][..]] {
            let r = fake_child(Some(bad), 0).join();
            assert!(matches!(r, Err(JoinError::Decode { .. }) | Err(JoinError::Died { .. })), "{bad:?}: {r:?}");
        }
        // No report at all.
        match fake_child(None, 0).join() {
            Err(JoinError::Died { status }) => assert_eq!(status, ExitStatus::Exited(0)),
            other => panic!("{other:?}"),
        }
    }
}
