//! Process control: fork, pidfd waiting and signalling, pipes, memfd argument
//! blobs, fd passing over Unix sockets, `prctl`, CPU affinity and the identity
//! of `/proc/self/exe`.
//!
//! Functions marked *async-signal-safe* make exactly one raw system call and
//! touch no lock or allocator, so they may run in a child forked from a
//! multi-threaded parent or in a `pre_exec` hook.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::time::Deadline;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It called `exit` / `_exit` with this code.
    Code(i32),
    /// It was ended by this signal.
    Signal(i32),
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `fork()`. Returns `Some(child_pid)` in the parent and `None` in the child.
///
/// # Safety
/// In the child of a multi-threaded process only async-signal-safe work is
/// sound until `exec` or `_exit`: locks held by other threads at the time of
/// the fork stay locked forever in the child. The caller must restrict the
/// child accordingly.
pub(crate) unsafe fn fork() -> io::Result<Option<u32>> {
    // SAFETY: forwarded to the caller (see `# Safety`).
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 { None } else { Some(pid as u32) })
}

/// `_exit(code)`: ends the process at once, without running destructors or
/// atexit handlers, and without flushing stdio buffers. Async-signal-safe.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `pidfd_open(pid, 0)`: an fd that refers to process `pid` for as long as the
/// fd lives, even after the pid is reused. Fails with `ENOSYS` before Linux 5.3.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: the raw syscall takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: signals exactly the process the
/// pidfd refers to (never a process that reused its pid).
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, a null siginfo and zero flags.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(pid, sig)`, for the fallback without pidfds.
pub(crate) fn kill(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::kill(pid as libc::pid_t, sig) }).map(|_| ())
}

fn ended_of(status: Option<rustix::process::WaitIdStatus>) -> Option<Ended> {
    let st = status?;
    if let Some(code) = st.exit_status() {
        Some(Ended::Code(code))
    } else {
        st.terminating_signal().map(Ended::Signal)
    }
}

/// `waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG])`: reaps the child behind `pidfd`.
/// `Ok(None)` with `nohang` when it still runs. Retries on `EINTR`.
pub(crate) fn wait_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<Ended>> {
    use rustix::process::{WaitId, WaitIdOptions};
    let mut opts = WaitIdOptions::EXITED;
    if nohang {
        opts |= WaitIdOptions::NOHANG;
    }
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), opts) {
            Ok(st) => return Ok(ended_of(st)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `waitpid(pid, WNOHANG?)`, for the fallback without pidfds.
pub(crate) fn wait_pid(pid: u32, nohang: bool) -> io::Result<Option<Ended>> {
    loop {
        let mut status = 0;
        let flags = if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: `status` is a valid out-pointer; `pid` is our own child.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, flags) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if libc::WIFEXITED(status) {
            return Ok(Some(Ended::Code(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(Ended::Signal(libc::WTERMSIG(status))));
        }
    }
}

/// `poll` on up to a few fds for readability until `deadline`. Returns, for
/// each fd, whether it is readable or hung up. Retries on `EINTR`.
pub(crate) fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N], deadline: Deadline) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    loop {
        let timeout_ms = match deadline.remaining() {
            None => -1,
            // Round up so that a short remainder does not spin with timeout 0.
            Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: `pfds` is a valid array of N pollfd structs.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 && !deadline.expired() {
            continue;
        }
        return Ok(pfds.map(|p| p.revents != 0));
    }
}

/// `poll` on a dynamic set of fds (the fork server's loop), blocking.
pub(crate) fn poll_many(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(pfds.iter().map(|p| p.revents != 0).collect());
    }
}

/// `pipe2(O_CLOEXEC | O_NONBLOCK)`: (read end, write end). Writers use
/// [`write_all`], which waits for room.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clears `FD_CLOEXEC` on a raw fd number. Async-signal-safe (for `pre_exec`).
pub(crate) fn clear_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments; an invalid fd gives EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(|_| ())
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
    unsafe { libc::close(fd) };
}

/// `read` once; `Ok(0)` at end of file, `WouldBlock` on an empty non-blocking fd.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n as usize);
    }
}

/// Writes all of `data`, retrying on `EINTR` and short writes; on a
/// non-blocking fd that is full it waits in `poll` for room. Makes no
/// allocation and takes no lock.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is valid for `data.len()` readable bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd; errors (EINTR) just retry the write.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// A `memfd` holding `data` (close-on-exec), for handing a byte blob to a
/// child by fd.
pub(crate) fn memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(c"shmproc-args", rustix::fs::MemfdFlags::CLOEXEC)?;
    write_all(fd.as_fd(), data)?;
    Ok(fd)
}

/// Reads a whole memfd (or file) from offset 0, refusing more than `max` bytes.
pub(crate) fn read_fd_all(fd: BorrowedFd<'_>, max: u64) -> io::Result<Vec<u8>> {
    let len = rustix::fs::fstat(fd)?.st_size as u64;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("argument blob of {len} bytes is too large")));
    }
    let mut buf = vec![0u8; len as usize];
    let mut off = 0usize;
    while off < buf.len() {
        let n = rustix::io::pread(fd, &mut buf[off..], off as u64)?;
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
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) }).map(|_| ())
}

/// Ignores `SIGPIPE` in this process (writes to a closed pipe fail with `EPIPE` instead).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installs the SIG_IGN disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `getppid()`. Async-signal-safe.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// `getpid()` without the cache of [`super::current_pid`] (for a just-forked child).
pub(crate) fn raw_pid() -> u32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `prctl(PR_SET_NAME)`: the name shown by `ps` (first 15 bytes). Async-signal-safe.
pub(crate) fn set_thread_name(name: &CStr) {
    // SAFETY: `name` is NUL-terminated; the kernel copies at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// `prctl(PR_SET_NAME)` from a NUL-terminated 16-byte buffer. Async-signal-safe.
pub(crate) fn set_thread_name_bytes(name: &[u8; 16]) {
    if name[15] == 0 {
        // SAFETY: the buffer ends with a NUL within its 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
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
    // SAFETY: Dl_info is plain data; all-zero is a valid initial value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
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
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Most fds passed in one message.
pub(crate) const MAX_PASSED_FDS: usize = 4;

/// Sends one datagram with `data` and (`SCM_RIGHTS`) `fds`. `MSG_NOSIGNAL`.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_parts_with_fds(sock, &[], data, fds)
}

/// [`send_with_fds`] of the datagram `head ++ data`, gathered from two
/// buffers (no allocation).
pub(crate) fn send_parts_with_fds(
    sock: BorrowedFd<'_>,
    head: &[u8],
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    assert!(fds.len() <= MAX_PASSED_FDS);
    // u64 array for cmsghdr alignment.
    let mut cbuf = [0u64; 16];
    // A fixed array, not a Vec: a forked child sends its report through here.
    let mut raw_buf = [0 as RawFd; MAX_PASSED_FDS];
    for (r, f) in raw_buf.iter_mut().zip(fds) {
        *r = f.as_raw_fd();
    }
    let raw = &raw_buf[..fds.len()];
    let mut iov = [
        libc::iovec { iov_base: head.as_ptr() as *mut libc::c_void, iov_len: head.len() },
        libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() },
    ];
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    if !raw.is_empty() {
        let payload = std::mem::size_of_val(raw) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` zeroed, aligned bytes, enough for
        // one header plus `raw` (checked above), so CMSG_FIRSTHDR is non-null and
        // CMSG_DATA has room for the fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), raw.len());
        }
    }
    loop {
        // SAFETY: `msg` points to live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != head.len() + data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg on a seqpacket socket"));
        }
        return Ok(());
    }
}

/// Receives one datagram into `buf` with up to [`MAX_PASSED_FDS`] fds
/// (received close-on-exec), without blocking (`WouldBlock` when none is
/// queued). `Ok((0, []))` at end of stream. A truncated datagram is an
/// `InvalidData` error (and its fds are closed).
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and the
    // kernel only ever writes initialised bytes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    recv_with_fds_uninit(sock, uninit, false)
}

/// [`recv_with_fds`] into an uninitialised buffer (no page is touched beyond
/// the bytes received); the first `min(n, buf.len())` bytes are initialised
/// on success. With `peek` (`MSG_PEEK | MSG_TRUNC`) the datagram stays queued,
/// `n` is its full length even when larger than `buf`, and the fds it carries
/// are received as duplicates.
pub(crate) fn recv_with_fds_uninit(
    sock: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    peek: bool,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let extra = if peek { libc::MSG_PEEK | libc::MSG_TRUNC } else { 0 };
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: `msg` points to live, writable buffers for the duration of the call.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT | extra) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed cmsg headers; the CMSG_* macros walk within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len - (data as usize - c as usize);
                let count = bytes / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let truncated = if peek { libc::MSG_CTRUNC } else { libc::MSG_TRUNC | libc::MSG_CTRUNC };
    if msg.msg_flags & truncated != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated message on the control socket"));
    }
    Ok((n, fds))
}

/// Sleeps a little (fallback polling without pidfds).
pub(crate) fn nap() {
    std::thread::sleep(Duration::from_micros(500));
}
