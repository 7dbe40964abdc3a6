//! Process control: fork, pidfd waiting and signalling, pipes, memfd argument
//! blobs, fd passing over Unix sockets, `prctl`, CPU affinity and the identity
//! of `/proc/self/exe`.
//!
//! Everything goes through `rustix` (raw system calls, no libc wrapper) except
//! the few calls rustix does not offer to a program that links libc; each of
//! those says why it stays on `libc`.
//!
//! Functions marked *async-signal-safe* make exactly one raw system call and
//! touch no lock or allocator, so they may run in a child forked from a
//! multi-threaded parent or in a `pre_exec` hook.

use std::ffi::CStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions, WaitOptions};

pub(crate) use rustix::process::Signal;

use crate::time::Deadline;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It called `exit` / `_exit` with this code.
    Code(i32),
    /// It was ended by this signal.
    Signal(i32),
}

/// Retries `f` while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// A pid as rustix takes it; `EINVAL` for 0 or a value beyond `pid_t`, so
/// that a bad number can never address a process group.
fn pid_of(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw).ok_or_else(|| Errno::INVAL.into())
}

/// `fork()`. Returns `Some(child_pid)` in the parent and `None` in the child.
///
/// # Safety
/// In the child of a multi-threaded process only async-signal-safe work is
/// sound until `exec` or `_exit`: locks held by other threads at the time of
/// the fork stay locked forever in the child. The caller must restrict the
/// child accordingly.
pub(crate) unsafe fn fork() -> io::Result<Option<u32>> {
    // libc: the `pthread_atfork` handlers (malloc's locks, our fork
    // generation) must run; rustix's `kernel_fork` skips them.
    // SAFETY: forwarded to the caller (see `# Safety`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if pid == 0 { None } else { Some(pid as u32) })
}

/// `_exit(code)`: ends the process at once, without running destructors or
/// atexit handlers, and without flushing stdio buffers. Async-signal-safe.
pub(crate) fn exit_now(code: i32) -> ! {
    // libc: rustix has `exit_group` only in its unstable, hidden `runtime` module.
    // SAFETY: `_exit` never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `pidfd_open(pid, 0)`: an fd that refers to process `pid` for as long as the
/// fd lives, even after the pid is reused. Fails with `ENOSYS` before Linux 5.3.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(pid_of(pid)?, PidfdFlags::empty())?)
}

/// The pid a pidfd refers to, from its `/proc/self/fdinfo` entry (`Pid:`;
/// -1 once the process was reaped). `Ok(None)`: the fd is no pidfd (no such
/// line); `Err`: the entry could not be read (no `/proc`).
pub(crate) fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<i64>> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    Ok(info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok()))
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signals exactly the process the
/// pidfd refers to (never a process that reused its pid).
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, sig)?)
}

/// `kill(pid, sig)`, for the fallback without pidfds.
pub(crate) fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    Ok(rustix::process::kill_process(pid_of(pid)?, sig)?)
}

/// `kill(pid, 0)`: whether process `pid` exists (for the fallback without pidfds).
pub(crate) fn pid_exists(pid: u32) -> bool {
    pid_of(pid).is_ok_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// `waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG])`: reaps the child behind `pidfd`.
/// `Ok(None)` with `nohang` when it still runs. Retries on `EINTR`.
pub(crate) fn wait_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<Ended>> {
    let mut opts = WaitIdOptions::EXITED;
    if nohang {
        opts |= WaitIdOptions::NOHANG;
    }
    let status = retry(|| rustix::process::waitid(WaitId::PidFd(pidfd), opts))?;
    Ok(status.and_then(|st| match st.exit_status() {
        Some(code) => Some(Ended::Code(code)),
        None => st.terminating_signal().map(Ended::Signal),
    }))
}

/// `waitpid(pid, WNOHANG?)`, for the fallback without pidfds. Retries on
/// `EINTR` (and on a status that is neither an exit nor a death by signal).
pub(crate) fn wait_pid(pid: u32, nohang: bool) -> io::Result<Option<Ended>> {
    let pid = pid_of(pid)?;
    let opts = if nohang { WaitOptions::NOHANG } else { WaitOptions::empty() };
    loop {
        let Some((_, st)) = retry(|| rustix::process::waitpid(Some(pid), opts))? else { return Ok(None) };
        if let Some(code) = st.exit_status() {
            return Ok(Some(Ended::Code(code)));
        }
        if let Some(sig) = st.terminating_signal() {
            return Ok(Some(Ended::Signal(sig)));
        }
    }
}

/// The time left until `deadline` as a `poll` timeout (`None`: forever).
fn poll_timeout(deadline: Deadline) -> Option<Timespec> {
    // A remainder too large for a timespec is as good as forever.
    deadline.remaining().and_then(|d| Timespec::try_from(d).ok())
}

/// `poll` on up to a few fds for readability until `deadline`. Returns, for
/// each fd, whether it is readable or hung up. Retries on `EINTR`.
pub(crate) fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N], deadline: Deadline) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
    loop {
        let n = retry(|| rustix::event::poll(&mut pfds, poll_timeout(deadline).as_ref()))?;
        if n == 0 && !deadline.expired() {
            continue;
        }
        return Ok(pfds.map(|p| !p.revents().is_empty()));
    }
}

/// Makes a connected TCP socket notice a peer that vanished without closing
/// (host down, network cut): keepalive probes after `dead / 2` of silence,
/// three more `dead / 6` apart, and `TCP_USER_TIMEOUT` of `dead` for data
/// left unacknowledged. A blocked read then fails with `ETIMEDOUT` about
/// `dead` after the peer stopped answering.
/// `Duration::ZERO` turns both off (TCP's own bounds, hours long, apply).
pub(crate) fn tcp_dead_peer_timeout(fd: BorrowedFd<'_>, dead: Duration) -> io::Result<()> {
    use rustix::net::sockopt;
    if dead.is_zero() {
        sockopt::set_tcp_user_timeout(fd, 0)?;
        return Ok(sockopt::set_socket_keepalive(fd, false)?);
    }
    // The kernel counts the probes in whole seconds, 1..=32767 each, and the
    // user timeout in milliseconds as a C int.
    let secs = |d: Duration| d.clamp(Duration::from_secs(1), Duration::from_secs(32767));
    let ms = u32::try_from(dead.as_millis()).unwrap_or(u32::MAX).clamp(1, i32::MAX as u32);
    // Every value is set before keepalive is turned on, so a refused one
    // leaves the socket as it was.
    sockopt::set_tcp_keepidle(fd, secs(dead / 2))?;
    sockopt::set_tcp_keepintvl(fd, secs(dead / 6))?;
    sockopt::set_tcp_keepcnt(fd, 3)?;
    sockopt::set_tcp_user_timeout(fd, ms)?;
    sockopt::set_socket_keepalive(fd, true)?;
    Ok(())
}

/// `poll` on a dynamic set of fds (the fork server's loop), blocking.
pub(crate) fn poll_many(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN)).collect();
    retry(|| rustix::event::poll(&mut pfds, None))?;
    Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect())
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end). Writers use
/// [`write_all`], which waits for room.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pipe::PipeFlags;
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?)
}

/// Clears `FD_CLOEXEC` on a raw fd number. Async-signal-safe (for `pre_exec`).
pub(crate) fn clear_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: the fd is borrowed for this one fcntl call only; if the number is
    // not open the kernel answers EBADF, nothing is read or written through it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(rustix::io::fcntl_setfd(fd, FdFlags::empty())?)
}

/// Closes a raw fd number. Async-signal-safe; errors are ignored (the fd may
/// already be closed).
///
/// # Safety
/// No live `OwnedFd`/`File` in this process may own `fd` and be used or
/// dropped afterwards (in a child about to `_exit` that is trivially true for
/// objects never touched again).
pub(crate) unsafe fn close_raw(fd: RawFd) {
    // SAFETY: forwarded to the caller.
    unsafe { rustix::io::close(fd) };
}

/// `read` once; `Ok(0)` at end of file, `WouldBlock` on an empty non-blocking fd.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| rustix::io::read(fd, &mut *buf))
}

/// Writes all of `data`, retrying on `EINTR` and short writes; on a
/// non-blocking fd that is full it waits in `poll` for room. Makes no
/// allocation and takes no lock.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                // Errors (EINTR) just retry the write.
                let _ = rustix::event::poll(&mut [PollFd::from_borrowed_fd(fd, PollFlags::OUT)], None);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A `memfd` holding `data` (close-on-exec), for handing a byte blob to a
/// child by fd.
pub(crate) fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(c"shmproc-args", rustix::fs::MemfdFlags::CLOEXEC)?;
    write_all(fd.as_fd(), data)?;
    // Back to offset 0 (readers use pread; a Spawn child moves it to say it
    // reached init(), see `mark_offset`).
    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0))?;
    Ok(fd)
}

/// Moves `fd`'s file offset to 1: a re-executed child tells its parent, which
/// shares the open file description, that it reached `init()`.
pub(crate) fn mark_offset(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(1))?;
    Ok(())
}

/// Whether `fd`'s file offset was moved off 0 (see [`mark_offset`]).
pub(crate) fn offset_marked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0))? != 0)
}

/// Reads a whole memfd (or file) from offset 0, refusing more than `max` bytes.
pub(crate) fn read_fd_all(fd: BorrowedFd<'_>, max: u64) -> io::Result<Vec<u8>> {
    let len = rustix::fs::fstat(fd)?.st_size as u64;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("argument blob of {len} bytes is too large")));
    }
    // The size comes from another process (a child's report, a parent's
    // arguments): an allocation that fails is an error here, not an abort.
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, format!("no memory for a blob of {len} bytes: {e}")))?;
    buf.resize(len as usize, 0);
    let mut off = 0usize;
    while off < buf.len() {
        let n = retry(|| rustix::io::pread(fd, &mut buf[off..], off as u64))?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "argument blob shrank while reading"));
        }
        off += n;
    }
    Ok(buf)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills the calling process
/// when the *thread* that created it exits. Async-signal-safe.
pub(crate) fn set_death_signal_kill() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?)
}

/// Ignores `SIGPIPE` in this process (writes to a closed pipe fail with `EPIPE` instead).
pub(crate) fn ignore_sigpipe() {
    // libc: rustix wraps sigaction only in its unstable `runtime` module, for
    // programs without a libc (whose signal state it would bypass).
    // SAFETY: installs the SIG_IGN disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Gives `SIGCHLD` its default disposition; returns whether it was ignored
/// before. A process that ignores `SIGCHLD` has its children reaped by the
/// kernel, so it could never wait for them (the fork server must).
pub(crate) fn default_sigchld() -> bool {
    // libc: as in `ignore_sigpipe`.
    // SAFETY: installs the SIG_DFL disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) == libc::SIG_IGN }
}

/// Ignores `SIGCHLD` (gives a fork server's child back the disposition of the
/// program that started the server). Async-signal-safe.
pub(crate) fn ignore_sigchld() {
    // libc: as in `ignore_sigpipe`.
    // SAFETY: installs the SIG_IGN disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
}

/// `getppid()` (0 when there is no parent in this pid namespace). Async-signal-safe.
pub(crate) fn parent_pid() -> u32 {
    Pid::as_raw(rustix::process::getppid()) as u32
}

/// `getpid()` without the cache of [`super::current_pid`] (for a just-forked child).
pub(crate) fn raw_pid() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

/// `prctl(PR_SET_NAME)`: the name shown by `ps` (first 15 bytes). Async-signal-safe.
pub(crate) fn set_thread_name(name: &CStr) {
    // Best effort: a name is cosmetic.
    let _ = rustix::thread::set_name(name);
}

/// `prctl(PR_SET_NAME)` from a NUL-terminated 16-byte buffer. Async-signal-safe.
pub(crate) fn set_thread_name_bytes(name: &[u8; 16]) {
    if name[15] == 0 {
        if let Ok(name) = CStr::from_bytes_until_nul(name) {
            set_thread_name(name);
        }
    }
}

/// Number of CPUs in the calling thread's affinity mask (at least 1).
pub(crate) fn affinity_cpu_count() -> io::Result<usize> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((set.count() as usize).max(1))
}

/// Identity of the running executable: `(dev, inode, size, mtime_s, mtime_ns)`
/// of `/proc/self/exe` (the file the kernel mapped, even if since renamed).
pub(crate) fn exe_identity() -> io::Result<[u64; 5]> {
    let st = rustix::fs::stat("/proc/self/exe")?;
    Ok([st.st_dev, st.st_ino, st.st_size as u64, st.st_mtime as u64, st.st_mtime_nsec as u64])
}

/// Base address of the loaded object (executable or shared library) that
/// contains `addr`, from `dladdr`; `None` if the loader does not know it.
pub(crate) fn object_base(addr: usize) -> Option<usize> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // libc: `dladdr` asks the dynamic loader (part of libc), not the kernel.
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    let rc = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) };
    if rc == 0 || info.dli_fbase.is_null() {
        None
    } else {
        Some(info.dli_fbase as usize)
    }
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// Most fds passed in one message (a fork-server request carries three of
/// its own and up to `object::MAX_CARRIED` objects of the argument).
pub(crate) const MAX_PASSED_FDS: usize = 64;

/// Most fds taken from one received message: a message with more is a
/// truncation error.
const MAX_RECEIVED_FDS: usize = 64;

/// Whether a failed [`send_with_fds`] refused this datagram itself (too many
/// fds for one message or for the sender's limit, too large, no memory for
/// it) rather than found the peer gone: nothing of it was sent and the socket
/// is still good.
pub(crate) fn datagram_refused(e: &io::Error) -> bool {
    let e = Errno::from_io_error(e);
    [Errno::INVAL, Errno::TOOMANYREFS, Errno::MSGSIZE, Errno::NOBUFS, Errno::NOMEM].iter().any(|x| e == Some(*x))
}

/// Sends one datagram with `data` and (`SCM_RIGHTS`) `fds`. `MSG_NOSIGNAL`.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_parts_with_fds(sock, &[], data, fds)
}

/// [`send_with_fds`] of the datagram `head ++ data`, gathered from two
/// buffers. Allocates nothing (a forked child sends its report through here):
/// the control message is built in a stack buffer.
pub(crate) fn send_parts_with_fds(
    sock: BorrowedFd<'_>,
    head: &[u8],
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_parts_flags(sock, head, data, fds, SendFlags::NOSIGNAL)
}

/// [`send_parts_with_fds`] that waits for room in the socket until
/// `deadline` at most (then `TimedOut`): a socket whose buffer another holder
/// of its end filled must not block the sender for ever. Async-signal-safe.
pub(crate) fn send_parts_with_fds_until(
    sock: BorrowedFd<'_>,
    head: &[u8],
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Deadline,
) -> io::Result<()> {
    loop {
        match send_parts_flags(sock, head, data, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.expired() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the socket stayed full"));
                }
                let mut p = [PollFd::from_borrowed_fd(sock, PollFlags::OUT)];
                retry(|| rustix::event::poll(&mut p, poll_timeout(deadline).as_ref()))?;
            }
            r => return r,
        }
    }
}

fn send_parts_flags(
    sock: BorrowedFd<'_>,
    head: &[u8],
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: SendFlags,
) -> io::Result<()> {
    assert!(fds.len() <= MAX_PASSED_FDS);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let fits = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(fits, "the control buffer has room for MAX_PASSED_FDS");
    }
    let iov = [IoSlice::new(head), IoSlice::new(data)];
    let n = retry(|| rustix::net::sendmsg(sock, &iov, &mut control, flags))?;
    if n != head.len() + data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg on a seqpacket socket"));
    }
    Ok(())
}

/// Receives one datagram into `buf` with the fds it carries (received
/// close-on-exec), without blocking (`WouldBlock` when none is queued).
/// `Ok((0, []))` at end of stream. A truncated datagram is an `InvalidData`
/// error (and its fds are closed).
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_msg(sock, buf, false)
}

/// [`recv_with_fds`] that leaves the datagram queued (`MSG_PEEK | MSG_TRUNC`):
/// `n` is its full length even when larger than `buf` (only `min(n,
/// buf.len())` bytes are filled), and the fds it carries are received as
/// duplicates.
pub(crate) fn peek_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_msg(sock, buf, true)
}

fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8], peek: bool) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    if peek {
        flags |= RecvFlags::PEEK | RecvFlags::TRUNC;
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECEIVED_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = retry(|| rustix::net::recvmsg(sock, &mut iov, &mut control, flags))?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    let truncated = if peek { ReturnFlags::CTRUNC } else { ReturnFlags::TRUNC | ReturnFlags::CTRUNC };
    if msg.flags.intersects(truncated) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated message on the control socket"));
    }
    Ok((msg.bytes, fds))
}

/// Sleeps a little (fallback polling without pidfds).
pub(crate) fn nap() {
    std::thread::sleep(Duration::from_micros(500));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_pid_names_the_process_and_refuses_other_fds() {
        let me = std::process::id();
        let pidfd = pidfd_open(me).unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), Some(i64::from(me)));
        let (rd, _wr) = pipe().unwrap();
        assert_eq!(pidfd_pid(rd.as_fd()).unwrap(), None);
    }

    #[test]
    fn read_fd_all_refuses_what_it_cannot_hold() {
        let fd = memfd_with(b"abc").unwrap();
        assert_eq!(read_fd_all(fd.as_fd(), 3).unwrap(), b"abc");
        assert!(read_fd_all(fd.as_fd(), 2).is_err());
        // A size no allocation can satisfy is an error, not an abort.
        // (1 PiB: beyond any x86-64 address space, whatever the overcommit mode.)
        rustix::fs::ftruncate(&fd, 1 << 50).unwrap();
        let e = read_fd_all(fd.as_fd(), u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
    }
}
