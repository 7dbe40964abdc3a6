//! [`StartMethod::ForkServer`](super::StartMethod::ForkServer): a
//! single-threaded server forks the children.
//!
//! ## Protocol
//! On first use the parent re-executes its own binary with
//! `SHMPROC_FORKSERVER=v1;<exe identity>;<socket fd>` and one end of a
//! `SOCK_SEQPACKET` socket pair. [`crate::init`] in that copy verifies the
//! executable identity (as Spawn does), says `ready`, and serves requests until
//! the parent's end of the socket closes (the parent exited or died); then it
//! exits, and the death signal of its daemon children fires.
//!
//! | message | bytes | fds (`SCM_RIGHTS`) |
//! |---|---|---|
//! | request | postcard `Request { tramp, func, daemon, token, name, args, objects }` (`args`: the argument bytes when at most 32 KiB) | child's end of the report socket, status pipe write end, then an args memfd when `args` is `None`, then the `objects` fds of the argument's anonymous objects (index order) |
//! | reply | postcard `Reply::Started { pid }` or `Reply::Failed(reason)` | the child's pidfd (opened by the server before it could reap the child) |
//! | status | 8 bytes on the status pipe: `u32` tag (0 exited, 1 signal) + `i32` value, little endian | |
//!
//! Requests are serialised by a mutex in the parent, held from the first
//! request of a batch to its last reply; the server answers each request
//! once, in order (a batch, such as a pool's workers, is sent whole before
//! the first reply is read). The server reaps each child through its pidfd and writes its
//! status; the parent learns of the exit from that pipe, and signals the
//! child through the pidfd it received, so a reused pid is never hit.
//!
//! The server is the same executable image, so the offsets of `fn` targets
//! mean the same there as in a Spawn child. Because it was started by `exec`,
//! it has one thread however many the parent has, which makes its forks safe.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::StartError;
use super::exec::{self, SERVER_ENV};
use super::reap::{self, Launched};
use super::{channel, child};
use crate::sys;
use crate::time::Deadline;

/// How long the parent waits for the server's `ready` and for each reply.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    tramp: i64,
    func: i64,
    daemon: bool,
    token: u64,
    name: String,
    /// The argument inline, or `None` when it comes in a memfd.
    args: Option<Vec<u8>>,
    /// How many fds of anonymous objects in the argument follow the others.
    objects: u32,
}

/// Largest argument sent inline in the request datagram.
const INLINE_ARGS: usize = 32 * 1024;
/// The server's receive buffer (a request with inline arguments fits).
const REQUEST_BUF: usize = INLINE_ARGS + 4096;

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started { pid: u32 },
    Failed(String),
}

struct Server {
    sock: OwnedFd,
    child: std::process::Child,
    /// `sys::process_stamp()` of the process that started the server (a
    /// forked child inherits this struct but must not use the socket).
    owner: u64,
}

/// The server of this process. A [`sys::ForkSafeMutex`]: it is held for the
/// whole of a start, and a child forked meanwhile by another thread must
/// still be able to start children through a server of its own. (Its
/// holder forks only in `launch`, through `Command::spawn`, whose child
/// execs at once and never locks it.)
static SERVER: sys::ForkSafeMutex<Option<Server>> = sys::ForkSafeMutex::new(None, || None);
/// Raw fd of the parent's socket, for closing it in forked children.
static CLIENT_FD: AtomicI32 = AtomicI32::new(-1);

/// In a child forked by [`StartMethod::Fork`](super::StartMethod::Fork):
/// closes the inherited socket to the fork server, so the server still sees
/// end of file when the parent dies. Async-signal-safe.
pub(crate) fn close_client_in_child() {
    let fd = CLIENT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // Forget the number too: once closed it is free for this child's own
        // files, and a grandchild forked later must not close it again.
        CLIENT_FD.store(-1, Ordering::Relaxed);
        // SAFETY: the `Server` that owns this fd is never used or dropped in a
        // child (its `owner` stamp differs; see `server_for`).
        unsafe { sys::close_raw(fd) };
    }
}

fn err(reason: impl Into<String>) -> StartError {
    StartError::ForkServer { reason: reason.into() }
}

fn launch() -> Result<Server, StartError> {
    let (mine, theirs) = sys::seqpacket_pair()?;
    let value = format!("v1;{};{}", exec::exe_id_string()?, theirs.as_raw_fd());
    let mut child = exec::spawn_self(&[(SERVER_ENV, value)], &[theirs.as_raw_fd()], None)?;
    drop(theirs);
    let mut buf = [0u8; 64];
    let ready = match sys::poll_readable([mine.as_fd()], Deadline::after(Some(SERVER_TIMEOUT)))? {
        [true] => sys::recv_with_fds(mine.as_fd(), &mut buf)?.0,
        [false] => 0,
    };
    if &buf[..ready] != b"ready" {
        let _ = child.kill();
        let status = child.wait();
        // A server that exited by itself (not killed above) ran `main`
        // instead of the server loop: `init()` was late or missing.
        return Err(match status.ok().and_then(|s| s.code()) {
            Some(child::EXIT_REFUSED) => err("the fork server refused to start (see its message on stderr)"),
            Some(code) => {
                err(format!("the fork server exited with code {code} before it became ready: {}", exec::INIT_NOT_FIRST))
            }
            None => err("the fork server did not become ready (see its message on stderr)"),
        });
    }
    CLIENT_FD.store(mine.as_raw_fd(), Ordering::Relaxed);
    Ok(Server { sock: mine, child, owner: sys::process_stamp() })
}

/// The live server of this process, started if needed.
fn server_for(slot: &mut Option<Server>) -> Result<&mut Server, StartError> {
    if let Some(s) = slot.take() {
        if s.owner == sys::process_stamp() {
            *slot = Some(s);
        } else {
            // Inherited through fork from a parent: its fd was closed (or
            // belongs to the parent's server); never touch it.
            std::mem::forget(s);
        }
    }
    if slot.is_none() {
        *slot = Some(launch()?);
    }
    Ok(slot.as_mut().expect("just set"))
}

fn retire(slot: &mut Option<Server>) {
    if let Some(mut s) = slot.take() {
        CLIENT_FD.store(-1, Ordering::Relaxed);
        drop(s.sock);
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
}

/// One child to ask the server for.
pub(crate) struct Spec<'a> {
    pub(crate) name: &'a str,
    pub(crate) daemon: bool,
    pub(crate) tramp: i64,
    pub(crate) func: i64,
    pub(crate) args: &'a [u8],
    pub(crate) objects: &'a [crate::Segment],
}

/// A request ready to send, and the parent's ends of what it hands over.
struct Prepared<'a> {
    req: Vec<u8>,
    chan: channel::Channel,
    st_rd: OwnedFd,
    st_wr: OwnedFd,
    args_fd: Option<OwnedFd>,
    objects: &'a [crate::Segment],
}

fn prepare<'a>(spec: &Spec<'a>) -> Result<Prepared<'a>, StartError> {
    let (inline, args_fd) = if spec.args.len() <= INLINE_ARGS {
        (Some(spec.args.to_vec()), None)
    } else {
        (None, Some(sys::memfd_with(spec.args)?))
    };
    let chan = channel::take()?;
    let (st_rd, st_wr) = sys::pipe()?;
    // The request must fit the server's buffer: names are cut at 1 KiB.
    let mut end = spec.name.len().min(1024);
    while !spec.name.is_char_boundary(end) {
        end -= 1;
    }
    let req = Request {
        tramp: spec.tramp,
        func: spec.func,
        daemon: spec.daemon,
        token: chan.token,
        name: spec.name[..end].to_owned(),
        args: inline,
        objects: spec.objects.len() as u32,
    };
    let req = postcard::to_allocvec(&req).map_err(|e| err(format!("encoding the request: {e}")))?;
    Ok(Prepared { req, chan, st_rd, st_wr, args_fd, objects: spec.objects })
}

fn send(server: &Server, p: &Prepared<'_>) -> io::Result<()> {
    let mut fds = vec![p.chan.wr.as_fd(), p.st_wr.as_fd()];
    fds.extend(p.args_fd.as_ref().map(|a| a.as_fd()));
    fds.extend(p.objects.iter().map(|o| o.fd()));
    sys::send_with_fds(server.sock.as_fd(), &p.req, &fds)
}

/// A child the server started: its pid and pidfd.
type Started = (u32, Option<OwnedFd>);

/// Asks the server for a child.
pub(crate) fn start(spec: Spec<'_>) -> Result<Launched, StartError> {
    start_many(std::slice::from_ref(&spec)).pop().unwrap_or_else(|| Err(err("no reply")))
}

/// Asks the server for several children at once: every request is sent
/// before the first reply is read, so the server forks them back to back
/// (a pool's workers start in one round trip, not one each). One result per
/// spec, in order.
pub(crate) fn start_many(specs: &[Spec<'_>]) -> Vec<Result<Launched, StartError>> {
    let mut prepared: Vec<Result<Prepared<'_>, StartError>> = specs.iter().map(prepare).collect();
    let mut slot = SERVER.lock();
    // Requests sent, in order (indices into `prepared`); the server answers
    // each once, in the order it got them.
    let mut sent: Vec<usize> = Vec::new();
    let mut failed: Vec<Option<StartError>> = specs.iter().map(|_| None).collect();
    // The server failed after requests of this batch were sent: no new one
    // may be started for the rest, or its replies would be read as the
    // replies to those requests.
    let mut broken = false;
    for (i, p) in prepared.iter().enumerate() {
        let Ok(p) = p else { continue };
        if broken {
            failed[i] = Some(err("the fork server failed while this batch of starts was being sent"));
            continue;
        }
        // A server that died since the last request is replaced, but only
        // while no request of this batch waits for its reply.
        let tries = if sent.is_empty() { 2 } else { 1 };
        let mut ok = false;
        for _ in 0..tries {
            match server_for(&mut slot) {
                Ok(server) => match send(server, p) {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    // This request alone was refused (too many fds, ...):
                    // nothing of it was sent (one datagram), and the server
                    // is fine; retiring it would kill its other children.
                    Err(e) if sys::datagram_refused(&e) => {
                        failed[i] = Some(err(format!("the fork server's socket refused the request: {e}")));
                        break;
                    }
                    Err(_) => retire(&mut slot),
                },
                Err(e) => {
                    failed[i] = Some(e);
                    break;
                }
            }
        }
        if ok {
            sent.push(i);
        } else if failed[i].is_none() {
            failed[i] = Some(err("could not send the request to a fresh fork server"));
            broken = !sent.is_empty();
        }
    }
    let mut replies: Vec<Option<Result<Started, StartError>>> = specs.iter().map(|_| None).collect();
    for &i in &sent {
        let Some(server) = slot.as_mut() else {
            replies[i] = Some(Err(err("the fork server died while starting an earlier child")));
            continue;
        };
        let mut buf = [0u8; 1024];
        let got = match sys::poll_readable([server.sock.as_fd()], Deadline::after(Some(SERVER_TIMEOUT))) {
            Ok([true]) => sys::recv_with_fds(server.sock.as_fd(), &mut buf),
            Ok([false]) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply")),
            Err(e) => Err(e),
        };
        replies[i] = Some(match got {
            Ok((n, mut fds)) if n > 0 => match crate::decode::from_bytes::<Reply>(&buf[..n]) {
                // The pid must be the pidfd's: it names the child to the
                // queues' liveness checks and in errors. (A child reaped
                // already reads -1; unreadable fdinfo cannot be checked.)
                Ok(Reply::Started { pid }) if fds.len() == 1 => match sys::pidfd_pid(fds[0].as_fd()) {
                    Ok(Some(p)) if p != i64::from(pid) && p != -1 => {
                        Err(err(format!("the fork server named pid {pid} for a pidfd of pid {p}")))
                    }
                    Ok(None) => Err(err("the fork server's reply carries no pidfd")),
                    _ => Ok((pid, fds.pop())),
                },
                Ok(Reply::Failed(reason)) => Err(err(reason)),
                _ => Err(err("malformed reply from the fork server")),
            },
            Ok(_) => {
                retire(&mut slot);
                Err(err("the fork server died while starting the child"))
            }
            Err(e) => {
                retire(&mut slot);
                Err(err(format!("no reply from the fork server: {e}")))
            }
        });
    }
    drop(slot);
    let mut out = Vec::with_capacity(specs.len());
    for (i, p) in prepared.drain(..).enumerate() {
        out.push(match (p, failed[i].take(), replies[i].take()) {
            (Err(e), _, _) => Err(e),
            (Ok(_), Some(e), _) => Err(e),
            (Ok(p), None, Some(Ok((pid, pidfd)))) => {
                drop(p.st_wr);
                Ok(Launched::new(pid, pidfd, p.chan, Some(p.st_rd)))
            }
            (Ok(_), None, Some(Err(e))) => Err(e),
            (Ok(_), None, None) => Err(err("no reply from the fork server")),
        });
    }
    out
}

struct Kid {
    pidfd: OwnedFd,
    status: OwnedFd,
}

fn refuse(reason: &str) -> ! {
    exec::refuse("the fork server refuses to start", reason)
}

/// The server, called by `init()`; never returns.
/// The program that started the server ignored `SIGCHLD` (see `server_main`).
static CHILDREN_IGNORE_SIGCHLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn server_main(v: &str) -> ! {
    let mut it = v.splitn(3, ';');
    let (Some("v1"), Some(exe), Some(fd)) = (it.next(), it.next(), it.next()) else {
        refuse(&format!("malformed {SERVER_ENV} value {v:?}"))
    };
    if let Err(r) = exec::verify_identity(exe) {
        refuse(&r);
    }
    let Some(fd) = fd.parse::<i32>().ok().filter(|&f| f >= 0 && sys::borrow_raw_fd(f).is_ok()) else {
        refuse("the socket fd is not open")
    };
    // SAFETY: the fd was handed to this process as the server socket; nothing
    // else in it owns the number.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Keep the socket from leaking into programs the children exec.
    let _ = sys::set_cloexec(sock.as_fd(), true);
    sys::set_thread_name(c"shmproc-fsrv");
    // A parent that dropped its Process closed the status pipe: the write
    // must fail with EPIPE, not kill the server (whatever the program did
    // with SIGPIPE before calling init()).
    sys::ignore_sigpipe();
    // The server reaps its children itself: with SIGCHLD ignored (inherited
    // through the exec from a program that ignores it) the kernel would reap
    // them first, no status would ever be written and every join would hang.
    // The children get the program's disposition back.
    CHILDREN_IGNORE_SIGCHLD.store(sys::default_sigchld(), Ordering::Relaxed);
    child::ensure_panic_hook();
    if sys::send_with_fds(sock.as_fd(), b"ready", &[]).is_err() {
        std::process::exit(0);
    }
    let mut kids: Vec<Kid> = Vec::new();
    let mut buf = vec![0u8; REQUEST_BUF];
    loop {
        let ready = {
            let mut fds = vec![sock.as_fd()];
            fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
            match sys::poll_many(&fds) {
                Ok(r) => r,
                Err(_) => sys::exit_now(1),
            }
        };
        // Reap first, so that finished children free their slots.
        for i in (0..kids.len()).rev() {
            if !ready[i + 1] {
                continue;
            }
            if let Ok(Some(ended)) = sys::wait_pidfd(kids[i].pidfd.as_fd(), true) {
                // The parent may have dropped its Process: ignore EPIPE.
                let _ = sys::write_all(kids[i].status.as_fd(), &reap::encode_status(ended));
                kids.swap_remove(i);
            }
        }
        if !ready[0] {
            continue;
        }
        let (n, fds) = match sys::recv_with_fds(sock.as_fd(), &mut buf) {
            // End of file: every copy of the parent's end closed. Exiting
            // fires the death signal of the daemon children.
            Ok((0, _)) => sys::exit_now(0),
            Ok(x) => x,
            Err(_) => continue,
        };
        let reply = match crate::decode::from_bytes::<Request>(&buf[..n]) {
            Ok(req) => serve(&sock, &kids, req, fds),
            Err(_) => Err(Reply::Failed("malformed request".into())),
        };
        let (msg, pidfd) = match reply {
            Ok((kid, pid)) => match sys::dup_cloexec(kid.pidfd.as_fd()) {
                Ok(dup) => {
                    kids.push(kid);
                    (postcard::to_allocvec(&Reply::Started { pid }).unwrap_or_default(), Some(dup))
                }
                Err(e) => {
                    // Without its pidfd the parent cannot own the child:
                    // kill it (reaped below like any other) and say so.
                    let _ = sys::pidfd_signal(kid.pidfd.as_fd(), sys::Signal::KILL);
                    kids.push(kid);
                    let r = Reply::Failed(format!("duplicating the child's pidfd: {e}"));
                    (postcard::to_allocvec(&r).unwrap_or_default(), None)
                }
            },
            Err(r) => (postcard::to_allocvec(&r).unwrap_or_default(), None),
        };
        let sent = match &pidfd {
            Some(p) => sys::send_with_fds(sock.as_fd(), &msg, &[p.as_fd()]),
            None => sys::send_with_fds(sock.as_fd(), &msg, &[]),
        };
        if sent.is_err() {
            sys::exit_now(0);
        }
    }
}

/// Forks one child for `req`. In the server: returns the child's pidfd and
/// status pipe.
fn serve(sock: &OwnedFd, kids: &[Kid], mut req: Request, fds: Vec<OwnedFd>) -> Result<(Kid, u32), Reply> {
    let mut fds = fds.into_iter();
    let (Some(result), Some(status)) = (fds.next(), fds.next()) else {
        return Err(Reply::Failed("a request without its report socket and status pipe".into()));
    };
    let (tramp, func) = exec::resolve(req.tramp, req.func).map_err(Reply::Failed)?;
    let args = match req.args.take() {
        Some(inline) => inline,
        None => match fds.next() {
            Some(args_fd) => {
                sys::read_fd_all(args_fd.as_fd(), exec::MAX_ARGS).map_err(|e| Reply::Failed(e.to_string()))?
            }
            None => return Err(Reply::Failed("a request without its argument".into())),
        },
    };
    let objects: Vec<OwnedFd> = fds.collect();
    if objects.len() != req.objects as usize {
        return Err(Reply::Failed(format!(
            "a request announced {} object fds but carried {}",
            req.objects,
            objects.len()
        )));
    }
    let comm = exec::comm_name(&req.name);
    let parent = sys::raw_pid();
    // SAFETY: the server is single-threaded (it was started by exec and never
    // spawns threads), so the child may do anything before it exits.
    match unsafe { sys::fork() } {
        Err(e) => Err(Reply::Failed(format!("fork failed: {e}"))),
        Ok(None) => {
            let close_server_fds = || {
                if CHILDREN_IGNORE_SIGCHLD.load(Ordering::Relaxed) {
                    sys::ignore_sigchld();
                }
                // SAFETY: these fds belong to the server's bookkeeping, which this
                // child never uses again (it exits without dropping them).
                unsafe {
                    sys::close_raw(sock.as_raw_fd());
                    sys::close_raw(status.as_raw_fd());
                    for k in kids {
                        sys::close_raw(k.pidfd.as_raw_fd());
                        sys::close_raw(k.status.as_raw_fd());
                    }
                }
            };
            // The objects' fds: opened (duplicated) while the argument is decoded, then closed.
            if !objects.is_empty() {
                crate::object::set_inbound(objects.iter().map(|o| o.as_raw_fd()).collect(), true);
            }
            let ctx = child::ChildCtx::new(&req.name, result.as_fd(), req.token);
            let daemon_parent = req.daemon.then_some(parent);
            child::run_forked(&ctx, daemon_parent, Some(&comm), close_server_fds, |out| tramp(func, &args, out))
        }
        Ok(Some(pid)) => {
            drop(result);
            match sys::pidfd_open(pid) {
                Ok(pidfd) => Ok((Kid { pidfd, status }, pid)),
                Err(e) => {
                    // The server's own unreaped child: exact by pid.
                    let orphan = reap::OsChild { pid, pidfd: None };
                    let _ = orphan.signal(sys::Signal::KILL);
                    let _ = orphan.reap(false);
                    Err(Reply::Failed(format!("pidfd_open failed: {e}")))
                }
            }
        }
    }
}
