//! Shared-memory objects: POSIX `shm_open` names, sealed anonymous `memfd`s, and
//! their mappings.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{self, Mode, SealFlags};
use rustix::shm;

/// What `fstat` says about a shared-memory fd.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdInfo {
    pub(crate) size: u64,
    pub(crate) uid: u32,
    pub(crate) mode: u32,
}

/// Where Linux keeps POSIX shared-memory names (`shm_open` is an `open` there).
const SHM_DIR: &str = "/dev/shm";

/// `shm_open(name, O_RDWR | O_CREAT | O_EXCL, mode)`. `name` includes the leading '/'.
/// Done as glibc does it, an `open` in `/dev/shm` with `O_NOFOLLOW` (rustix's
/// own `shm::open` on its raw-syscall backend omits the flag).
pub(crate) fn shm_create(name: &str, mode: u32) -> io::Result<OwnedFd> {
    let flags = fs::OFlags::RDWR | fs::OFlags::CREATE | fs::OFlags::EXCL | fs::OFlags::NOFOLLOW | fs::OFlags::CLOEXEC;
    let path = shm_path(name)?;
    let fd = fs::open(&path, flags, Mode::from_raw_mode(mode))?;
    // open applies the umask; the caller asked for exactly `mode`.
    if let Err(e) = fs::fchmod(&fd, Mode::from_raw_mode(mode)) {
        let _ = fs::unlink(&path);
        return Err(e.into());
    }
    Ok(fd)
}

/// `shm_open(name, O_RDWR)`, never following a symbolic link (another user
/// could plant one in the world-writable `/dev/shm`, pointing at a file of
/// ours) and refusing anything but a regular file (a FIFO, a device).
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    let flags = fs::OFlags::RDWR | fs::OFlags::NOFOLLOW | fs::OFlags::NONBLOCK | fs::OFlags::CLOEXEC;
    let fd = fs::open(shm_path(name)?, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{SHM_DIR}{name} is a symbolic link, not a segment"))
        } else {
            io::Error::from(e)
        }
    })?;
    let st = fs::fstat(&fd)?;
    if fs::FileType::from_raw_mode(st.st_mode) != fs::FileType::RegularFile {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{SHM_DIR}{name} is not a regular file")));
    }
    Ok(fd)
}

/// `/dev/shm/NAME` for a POSIX name `/NAME` (one component: no other '/').
fn shm_path(name: &str) -> io::Result<String> {
    match name.strip_prefix('/') {
        Some(rest) if !rest.is_empty() && !rest.contains('/') && rest != "." && rest != ".." => {
            Ok(format!("{SHM_DIR}/{rest}"))
        }
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// Renames the POSIX name `from` to `to`, failing with `EEXIST` if `to`
/// exists (`renameat2(RENAME_NOREPLACE)`, which tmpfs supports): the atomic
/// publication of a segment built under a temporary name.
///
/// Where `RENAME_NOREPLACE` is not supported (a `/dev/shm` that is not
/// tmpfs, an old seccomp profile: `EINVAL`, `ENOSYS`, `EPERM`), a hard link
/// (which fails atomically with `EEXIST` too) and then the removal of `from`.
pub(crate) fn shm_publish(from: &str, to: &str) -> io::Result<()> {
    let (from, to) = (shm_path(from)?, shm_path(to)?);
    match fs::renameat_with(fs::CWD, &from, fs::CWD, &to, fs::RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            fs::linkat(fs::CWD, &from, fs::CWD, &to, fs::AtFlags::empty())?;
            let _ = fs::unlink(&from);
            Ok(())
        }
        r => Ok(r?),
    }
}

/// Whether the POSIX name `name` exists now (without following a link).
pub(crate) fn shm_exists(name: &str) -> bool {
    shm_path(name).is_ok_and(|p| fs::statat(fs::CWD, p, fs::AtFlags::SYMLINK_NOFOLLOW).is_ok())
}

/// `shm_unlink(name)`.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(shm::unlink(name)?)
}

/// Unlinks `name` only if it still names the file behind `fd` (same device
/// and inode): a name that was unlinked and created again by someone else
/// since is theirs, not ours to remove. `Ok(false)`: not ours (or gone).
/// A replacement between the check and the unlink is not caught.
pub(crate) fn shm_unlink_if_same(name: &str, fd: BorrowedFd<'_>) -> io::Result<bool> {
    let ours = fs::fstat(fd)?;
    let theirs = match fs::statat(fs::CWD, shm_path(name)?, fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino) {
        return Ok(false);
    }
    shm_unlink(name)?;
    Ok(true)
}

/// `memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)` sized to `len` and sealed against
/// shrinking and growing, so no holder of the fd can make our mapping fault (SIGBUS).
pub(crate) fn memfd_sealed(debug_name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = fs::memfd_create(debug_name, fs::MemfdFlags::CLOEXEC | fs::MemfdFlags::ALLOW_SEALING)?;
    fs::ftruncate(&fd, len)?;
    fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Why [`reserve`] could not reserve a segment's pages.
#[derive(Debug)]
pub(crate) enum ReserveError {
    /// The tmpfs behind the fd (`/dev/shm`, or the kernel's internal one for a
    /// memfd) has no room for the pages; `available` is the room it reports left.
    NoSpace { available: u64 },
    /// Any other failure of `fallocate`.
    Os(io::Error),
}

/// `fallocate(fd, 0, 0, len)`: makes tmpfs allocate every page of the object now.
///
/// tmpfs accepts an `ftruncate` to any size and only allocates a page when it is
/// first touched; a touch it has no room for kills the toucher with SIGBUS. After a
/// successful `fallocate` every page exists, so no touch of the first `len` bytes
/// can fault for want of room. On `ENOSPC` tmpfs gives back the pages it took, and
/// the room left is read with `fstatvfs` (or, for a tmpfs without a size limit
/// such as the one behind memfds, from `sysinfo`'s free memory).
///
/// A request larger than the room the filesystem reports (for the unlimited
/// memfd tmpfs: larger than all RAM and swap) fails at once, without trying:
/// trying would first take every free page.
pub(crate) fn reserve(fd: BorrowedFd<'_>, len: u64) -> Result<(), ReserveError> {
    let ceiling = match fs::fstatvfs(fd) {
        Ok(st) if st.f_blocks != 0 => st.f_bavail.saturating_mul(st.f_frsize),
        _ => {
            let si = rustix::system::sysinfo();
            (si.totalram as u64).saturating_add(si.totalswap as u64).saturating_mul(u64::from(si.mem_unit))
        }
    };
    if len > ceiling {
        return Err(ReserveError::NoSpace { available: room_left(fd) });
    }
    match fs::fallocate(fd, fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::NOMEM => {
            Err(ReserveError::NoSpace { available: room_left(fd) })
        }
        Err(e) => Err(ReserveError::Os(e.into())),
    }
}

/// Bytes still free in the filesystem behind `fd` (0 if it cannot be read).
pub(crate) fn room_left(fd: BorrowedFd<'_>) -> u64 {
    match fs::fstatvfs(fd) {
        Ok(st) if st.f_blocks != 0 => st.f_bavail.saturating_mul(st.f_frsize),
        _ => {
            let si = rustix::system::sysinfo();
            (si.freeram as u64).saturating_mul(u64::from(si.mem_unit))
        }
    }
}

/// `fcntl(F_GET_SEALS)`: whether a memfd is sealed against shrinking, growing,
/// and further sealing, as [`memfd_sealed`] seals it.
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<Seals> {
    let s = fs::fcntl_get_seals(fd)?;
    Ok(Seals {
        shrink: s.contains(SealFlags::SHRINK),
        grow: s.contains(SealFlags::GROW),
        seal: s.contains(SealFlags::SEAL),
    })
}

/// The seals of a memfd that matter to a mapper (see [`seals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seals {
    pub(crate) shrink: bool,
    pub(crate) grow: bool,
    pub(crate) seal: bool,
}

/// `fstat(fd)`: size, owner and permission bits.
pub(crate) fn fd_info(fd: BorrowedFd<'_>) -> io::Result<FdInfo> {
    let st = fs::fstat(fd)?;
    Ok(FdInfo { size: st.st_size as u64, uid: st.st_uid, mode: st.st_mode & 0o7777 })
}

/// `ftruncate(fd, len)`.
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    Ok(fs::ftruncate(fd, len)?)
}

/// `fchown(fd, uid, gid)`.
pub(crate) fn set_owner(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    Ok(fs::fchown(fd, Some(u), Some(g))?)
}

/// `fchmod(fd, mode)`.
pub(crate) fn set_mode(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    Ok(fs::fchmod(fd, Mode::from_raw_mode(mode))?)
}

/// Sets or clears `FD_CLOEXEC`; a cleared fd survives `exec` into a launched binary.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { rustix::io::FdFlags::CLOEXEC } else { rustix::io::FdFlags::empty() };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// `fcntl(F_DUPFD_CLOEXEC)`.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// Borrows fd number `raw` of this process, checking that it is open.
pub(crate) fn borrow_raw_fd(raw: i32) -> io::Result<BorrowedFd<'static>> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl(F_GETFD) on any integer is safe; it only checks the fd exists.
    let rc = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above). The caller promises (through the
    // handle it was given) that nobody closes it while borrowed; we only dup it.
    Ok(unsafe { BorrowedFd::borrow_raw(raw) })
}

/// Names of the entries of `/dev/shm` (where glibc keeps POSIX shm objects).
pub(crate) fn list_shm_names() -> io::Result<Vec<(String, FdInfo)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/dev/shm")? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        use std::os::unix::fs::MetadataExt;
        out.push((name, FdInfo { size: meta.len(), uid: meta.uid(), mode: meta.mode() & 0o7777 }));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A shared, read-write mapping of a whole shared-memory object.
///
/// The mapping is `MAP_SHARED`, so stores are visible to every process that maps
/// the same object, and it is inherited by `fork`. It is unmapped on drop.
pub(crate) struct Mapping {
    /// Declared first, so dropped (unregistered) before `map` is unmapped.
    watch: Option<super::sigbus::Watch>,
    map: memmap2::MmapRaw,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("ptr", &self.map.as_ptr()).field("len", &self.map.len()).finish()
    }
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
    /// `watch`: the object can be truncated under us (a POSIX name, not a
    /// sealed memfd): a fault in the mapping replaces it with zeros and marks
    /// it [lost](Self::lost) instead of killing the process ([`super::sigbus`]).
    pub(crate) fn map(fd: &OwnedFd, len: usize, watch: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map an empty object"));
        }
        let file = File::from(dup_cloexec(fd.as_fd())?);
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file)?;
        let watch = if watch { super::sigbus::watch(map.as_mut_ptr(), map.len()) } else { None };
        Ok(Mapping { watch, map })
    }

    /// Whether the object was truncated under this mapping and the mapping
    /// replaced with private zero pages (only for mappings made with `watch`).
    #[inline]
    pub(crate) fn lost(&self) -> bool {
        super::sigbus::any_lost() && self.watch.as_ref().is_some_and(|w| w.lost())
    }

    /// Base address; page aligned.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_mut_ptr()).expect("mmap never returns null on success")
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
