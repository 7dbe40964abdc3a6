//! Shared-memory segments: named (POSIX `shm_open`) or anonymous (sealed `memfd`),
//! each starting with a validated [header](crate::header).
//!
//! ## Creation protocol
//! 1. The creator makes the object under a temporary name (`.NAME~PID-RANDOM`)
//!    with `O_CREAT | O_EXCL` (mode 0600 unless told otherwise), sizes it with
//!    `ftruncate` (the kernel zero-fills), reserves every page with `fallocate`
//!    (a full tmpfs is [`OpenError::NoSpace`] here, never a SIGBUS later), and
//!    maps it.
//! 2. It writes every header field and initialises the payload in place.
//! 3. It publishes `init_state = READY` with release ordering, then renames the
//!    temporary name to NAME, failing if NAME exists (`RENAME_NOREPLACE`): the
//!    name appears complete and ready, or not at all. A creator killed before
//!    leaves only the temporary name (`shmproc gc` removes it).
//!
//! An opener maps the object, waits (polling, up to the open timeout) for
//! `READY` with acquire ordering (only a name made some other way can lack
//! it), and then validates every header field against the real size of the
//! object and against what it expects to find. Anything inconsistent is an
//! [`OpenError`], never an out-of-bounds access.
//!
//! `open_or_create` tries `create` first and falls back to `open` on `EEXIST`;
//! if the object vanishes between the two (its creator unlinked it), it tries
//! again, so two racing processes end with one object (each may have built
//! one; the loser's is discarded unseen).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::OpenError;
use crate::header::{self, HeaderInfo, ObjectKind, ObjectSpec, TypeInfo, HEADER_SIZE, READY};
use crate::sys;
use crate::time::Deadline;

/// Longest accepted name, in bytes, without the leading `/` (NAME_MAX is 255).
pub const MAX_NAME_LEN: usize = 250;

/// Default permission bits of a named segment: owner read/write only.
pub const DEFAULT_MODE: u32 = 0o600;

/// Default time `open` waits for a creator to finish initialising.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a segment name and returns its POSIX form (with the leading `/`).
///
/// A name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_`
/// and `-`, not starting with `.`. One leading `/` is accepted and ignored, so
/// `"jobs"` and `"/jobs"` name the same object, `/dev/shm/jobs`.
pub fn validate_name(name: &str) -> Result<String, OpenError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let bad = |reason| Err(OpenError::NameInvalid { name: name.to_owned(), reason });
    if bare.is_empty() {
        return bad("the name is empty");
    }
    if bare.len() > MAX_NAME_LEN {
        return bad("the name is longer than 250 bytes");
    }
    if bare.starts_with('.') {
        return bad("the name must not start with '.'");
    }
    if bare.contains('/') {
        return bad("the name must not contain '/' (other than one leading '/')");
    }
    if !bare.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(format!("/{bare}"))
}

/// Removes the named segment `name` from the system. Processes that have it
/// mapped keep their mapping.
pub fn unlink(name: &str) -> Result<(), OpenError> {
    let posix = validate_name(name)?;
    sys::shm_unlink(&posix).map_err(|e| map_os(e, &posix))
}

/// Options common to every named or anonymous shmproc object. The object
/// builder (`shmproc::Builder`, reached through `Value::builder()`,
/// `Queue::builder()`, ...) exposes these as methods.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub(crate) name: Option<String>,
    pub(crate) mode: u32,
    pub(crate) open_timeout: Duration,
    pub(crate) allow_foreign_owner: bool,
    pub(crate) allow_shared_write: bool,
    pub(crate) unlink_on_drop: bool,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            name: None,
            mode: DEFAULT_MODE,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            allow_foreign_owner: false,
            allow_shared_write: false,
            unlink_on_drop: true,
        }
    }
}

/// How another process finds a segment: by name, or by an inherited fd.
///
/// Its string form (`name:/jobs` or `fd:7`) travels through argv or the
/// environment; [`Handle::from_str`] parses it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Handle {
    /// A named segment.
    Name(String),
    /// An fd number, valid in a process that inherited it (fork, or exec with
    /// `FD_CLOEXEC` cleared).
    Fd(RawFd),
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Name(n) => write!(f, "name:{n}"),
            Handle::Fd(fd) => write!(f, "fd:{fd}"),
        }
    }
}

impl FromStr for Handle {
    type Err = OpenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(n) = s.strip_prefix("name:") {
            return Ok(Handle::Name(validate_name(n)?));
        }
        if let Some(fd) = s.strip_prefix("fd:") {
            return fd
                .parse::<RawFd>()
                .ok()
                .filter(|&fd| fd >= 0)
                .map(Handle::Fd)
                .ok_or_else(|| OpenError::invalid(format!("bad fd in handle {s:?}")));
        }
        Err(OpenError::invalid(format!("handle {s:?} is neither name:<name> nor fd:<n>")))
    }
}

struct Inner {
    map: sys::Mapping,
    fd: OwnedFd,
    /// POSIX name with leading '/', for named segments.
    name: Option<String>,
    /// Pid of this process if it created the segment (only the creator process
    /// unlinks; a forked child's copy of the handle must not).
    created_by: Option<u32>,
    unlink_on_drop: AtomicBool,
    info: HeaderInfo,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let (Some(name), Some(pid)) = (&self.name, self.created_by) {
            if self.unlink_on_drop.load(Ordering::Relaxed) && sys::current_pid() == pid {
                // The name may already be gone (unlinked by hand or by `gc`),
                // or name another segment created since: only ours is
                // removed. Nothing useful to do with an error in drop.
                let _ = sys::shm_unlink_if_same(name, self.fd.as_fd());
            }
        }
        // `map` unmaps itself; munmap cannot fail for a mapping we own.
    }
}

/// A mapped shared-memory segment: a header and a payload.
///
/// Cloning is cheap and shares the mapping; the mapping stays valid while any
/// clone lives, even after the name is unlinked.
#[derive(Clone)]
pub struct Segment {
    inner: Arc<Inner>,
}

// SAFETY: `Segment` only hands out raw pointers into the mapping; the mapping
// itself (an address range and an fd) may be used and dropped from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above; shared access goes through atomics or `unsafe` APIs whose
// callers synchronise.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.info.kind)
            .field("len", &self.inner.map.len())
            .field("payload_len", &self.inner.info.payload_size)
            .finish()
    }
}

fn map_os(e: std::io::Error, name: &str) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => OpenError::NotFound { name: name.to_owned() },
        Some(libc::EEXIST) => OpenError::AlreadyExists { name: name.to_owned() },
        Some(libc::EACCES) | Some(libc::EPERM) => OpenError::PermissionDenied {
            reason: format!("the OS refused access to {}: {e}", crate::error::short(name)),
        },
        Some(libc::ENAMETOOLONG) | Some(libc::EINVAL) => {
            OpenError::NameInvalid { name: name.to_owned(), reason: "the OS rejected the name" }
        }
        _ => OpenError::Os(e),
    }
}

/// Refuses an fd handle unless it is a memfd sealed as [`sys::memfd_sealed`] seals
/// it: against shrinking (else a peer could truncate it under our mapping and make
/// us fault with SIGBUS), against growing, and with the seals themselves sealed.
fn check_sealed(fd: std::os::fd::BorrowedFd<'_>, raw: RawFd) -> Result<(), OpenError> {
    // Not a memfd at all (a file, a socket, /dev/null): no shmproc object.
    let seals = sys::seals(fd).map_err(|e| {
        OpenError::invalid(format!("fd:{raw} is open but is not a shmproc object (not a sealable memfd: {e})"))
    })?;
    let missing: Vec<&str> =
        [(seals.shrink, "F_SEAL_SHRINK"), (seals.grow, "F_SEAL_GROW"), (seals.seal, "F_SEAL_SEAL")]
            .iter()
            .filter(|(has, _)| !has)
            .map(|(_, n)| *n)
            .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OpenError::NotSealed { reason: format!("fd:{raw} lacks {}", missing.join(", ")) })
    }
}

/// Round `x` up to a multiple of `align` (a power of two).
const fn align_up(x: usize, align: usize) -> usize {
    (x + align - 1) & !(align - 1)
}

/// Where the payload starts for a given alignment (at least the header size).
fn payload_offset_for(align: usize) -> usize {
    align_up(HEADER_SIZE, align.max(8))
}

/// The temporary name a named object is built under: `/.` + (up to 200
/// bytes of) its name + `~PID-RANDOM`. User names never start with '.' nor
/// contain '~', so it can clash with none of them; `shmproc gc` recognises
/// it ([`crate::inspect::pending_creator`]).
///
/// The suffix only has to be unique (the create is `O_EXCL` and retried with
/// another on `EEXIST`), not secret: `/dev/shm` is sticky, so another user
/// can take a name but never touch ours. So it is mixed from the clock, the
/// pid and a counter rather than drawn from the kernel's random source,
/// which blocks until it is seeded (early boot).
fn temp_name(posix: &str, pid: u32) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let bare = &posix[1..];
    // Validated names are ASCII: any byte index is a char boundary.
    let head = &bare[..bare.len().min(200)];
    let seed = (sys::monotonic_now().as_nanos() as u64) ^ (u64::from(pid) << 32) ^ N.fetch_add(1, Ordering::Relaxed);
    // splitmix64's finaliser: neighbouring seeds give unrelated suffixes.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("/.{head}~{pid}-{:016x}", z ^ (z >> 31))
}

/// A named object under construction: its temporary name is unlinked on
/// drop unless it was published (renamed into place).
struct Pending {
    temp: String,
    published: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.published {
            let _ = sys::shm_unlink(&self.temp);
        }
    }
}

impl Segment {
    /// Creates a segment holding an object of `spec.kind`, runs `init` on the
    /// zero-filled payload, then publishes it. `payload_align` must be a power of
    /// two no larger than 4096.
    pub(crate) fn create_object(
        opts: &SegmentOptions,
        kind: ObjectKind,
        ty: TypeInfo,
        payload_size: usize,
        payload_align: usize,
        init: impl FnOnce(NonNull<u8>, usize),
    ) -> Result<Segment, OpenError> {
        crate::process::check_gate();
        if !payload_align.is_power_of_two() || payload_align > 4096 {
            return Err(OpenError::invalid(format!("payload alignment {payload_align} is not a power of two <= 4096")));
        }
        let offset = payload_offset_for(payload_align);
        let total = offset
            .checked_add(payload_size)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| OpenError::invalid(format!("payload of {payload_size} bytes is too large")))?;
        let pid = sys::current_pid();
        // A named object is built under a temporary name and renamed into
        // place once ready: its name never shows a half-built segment, and a
        // creator killed on the way leaves only the temporary name (which
        // `shmproc gc` removes), never a name that cannot be opened or created.
        let (fd, name, mut pending) = match &opts.name {
            Some(n) => {
                let posix = validate_name(n)?;
                // Early and not authoritative (the rename is): no work for a
                // name that is taken.
                if sys::shm_exists(&posix) {
                    return Err(OpenError::AlreadyExists { name: posix });
                }
                // A temporary name already taken (by chance, or by another
                // user who guessed it) is tried again with a new suffix.
                let mut tries = 0;
                let (temp, fd) = loop {
                    let temp = temp_name(&posix, pid);
                    match sys::shm_create(&temp, opts.mode) {
                        Ok(fd) => break (temp, fd),
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 8 => tries += 1,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(OpenError::Os(e)),
                        Err(e) => return Err(map_os(e, &posix)),
                    }
                };
                let pending = Pending { temp, published: false };
                sys::set_len(fd.as_fd(), total as u64).map_err(|e| map_os(e, &posix))?;
                (fd, Some(posix), Some(pending))
            }
            None => (sys::memfd_sealed("shmproc", total as u64)?, None, None),
        };
        // Reserve every page now, before the header is written: a tmpfs without
        // room fails here with a precise error instead of SIGBUS on first touch.
        if let Err(e) = sys::reserve(fd.as_fd(), total as u64) {
            return Err(match e {
                sys::ReserveError::NoSpace { available } => OpenError::NoSpace { requested: total as u64, available },
                sys::ReserveError::Os(e) => OpenError::Os(e),
            });
        }
        let map = sys::Mapping::map(&fd, total, name.is_some()).map_err(OpenError::Os)?;
        let base = map.ptr();
        let hdr = header::encode_header(kind, &ty, pid, total as u64, offset as u64, payload_size as u64);
        // SAFETY: the mapping is `total >= HEADER_SIZE` bytes long, page aligned,
        // and freshly created by us (O_EXCL or memfd): nobody else initialises it.
        // Bytes 16..20 (init_state) stay zero until the release store below.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), base.as_ptr(), 16);
            std::ptr::copy_nonoverlapping(hdr.as_ptr().add(20), base.as_ptr().add(20), HEADER_SIZE - 20);
        }
        // SAFETY: offset + payload_size == total, within the mapping.
        let payload = unsafe { NonNull::new_unchecked(base.as_ptr().add(offset)) };
        init(payload, payload_size);
        // SAFETY: the mapping starts with a page-aligned 128-byte header and
        // lives as long as `map`, which outlives this use.
        unsafe { header::init_state_word(base) }.store(READY, Ordering::Release);
        if map.lost() {
            return Err(OpenError::corrupt(format!(
                "{} was truncated by another process while it was being created",
                crate::error::short(name.as_deref().unwrap_or("segment"))
            )));
        }
        if let (Some(p), Some(posix)) = (&mut pending, &name) {
            match sys::shm_publish(&p.temp, posix) {
                Ok(()) => p.published = true,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    return Err(OpenError::AlreadyExists { name: posix.clone() })
                }
                // The temporary name vanished (removed by someone else): not
                // "NAME not found".
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(OpenError::Os(e)),
                Err(e) => return Err(map_os(e, posix)),
            }
        }
        let info = HeaderInfo { kind, creator_pid: pid, payload_offset: offset, payload_size, ty };
        Ok(Segment {
            inner: Arc::new(Inner {
                map,
                fd,
                created_by: name.as_ref().map(|_| pid),
                name,
                unlink_on_drop: AtomicBool::new(opts.unlink_on_drop),
                info,
            }),
        })
    }

    /// Opens a named segment and validates it against `spec`.
    pub(crate) fn open_object(opts: &SegmentOptions, spec: &ObjectSpec) -> Result<Segment, OpenError> {
        let Some(name) = &opts.name else {
            return Err(OpenError::invalid("open needs a name (anonymous objects are opened by handle)"));
        };
        let posix = validate_name(name)?;
        let deadline = Deadline::after(Some(opts.open_timeout));
        let fd = sys::shm_open(&posix).map_err(|e| map_os(e, &posix))?;
        let st = sys::fd_info(fd.as_fd())?;
        let me = sys::effective_uid();
        if st.uid != me && !opts.allow_foreign_owner {
            return Err(OpenError::PermissionDenied {
                reason: format!(
                    "{posix} is owned by uid {} but this process runs as uid {me}; \
                     use allow_foreign_owner(true) if you trust its owner",
                    st.uid
                ),
            });
        }
        if st.mode & 0o022 != 0 && !opts.allow_shared_write {
            return Err(OpenError::PermissionDenied {
                reason: format!(
                    "{posix} has mode {:o}, writable by group or others; \
                     use allow_shared_write(true) if that is intended",
                    st.mode
                ),
            });
        }
        Self::attach(fd, Some(posix), spec, deadline)
    }

    /// Opens the segment behind `handle` (a name, or an inherited fd).
    pub(crate) fn open_handle(handle: &Handle, opts: &SegmentOptions, spec: &ObjectSpec) -> Result<Segment, OpenError> {
        match handle {
            Handle::Name(n) => {
                let mut o = opts.clone();
                o.name = Some(n.clone());
                Self::open_object(&o, spec)
            }
            Handle::Fd(raw) => {
                let borrowed =
                    sys::borrow_raw_fd(*raw).map_err(|_| OpenError::NotFound { name: format!("fd:{raw}") })?;
                let fd = sys::dup_cloexec(borrowed)?;
                // An fd handle comes from a created (published) object, so it
                // never waits. It must be a memfd sealed against resizing
                // (else a peer could shrink it under our mapping: SIGBUS), and
                // an fd that is not a ready segment (an unrelated file that took
                // the number) is an immediate, precise error.
                check_sealed(fd.as_fd(), *raw)?;
                let seg = match Self::attach(fd, None, spec, Deadline::after(Some(Duration::ZERO))) {
                    Err(OpenError::NotReady { .. }) => {
                        return Err(OpenError::invalid(format!(
                            "fd:{raw} is open but is not a shmproc object (anonymous objects reach another \
                             process only as Process/Pool arguments or through CommandExt::share)"
                        )))
                    }
                    other => other?,
                };
                // The header's total size must be the memfd's (sealed) size: a
                // header claiming less would leave pages the seals do not describe.
                let claimed = (seg.inner.info.payload_offset + seg.inner.info.payload_size) as u64;
                let real = seg.inner.map.len() as u64;
                if claimed != real {
                    return Err(OpenError::NotSealed {
                        reason: format!("fd:{raw} is {real} bytes but its header claims {claimed}"),
                    });
                }
                Ok(seg)
            }
        }
    }

    /// Maps `fd`, waits for READY and validates the header.
    fn attach(fd: OwnedFd, name: Option<String>, spec: &ObjectSpec, deadline: Deadline) -> Result<Segment, OpenError> {
        crate::process::check_gate();
        let label = name.clone().unwrap_or_else(|| format!("fd:{}", fd.as_raw_fd()));
        let mut backoff = Duration::from_micros(50);
        loop {
            let size = sys::fd_info(fd.as_fd())?.size;
            if size == 0 {
                // The creator has not sized it yet (between shm_open and ftruncate).
                if deadline.expired() {
                    return Err(OpenError::NotReady { name: label });
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(5));
                continue;
            }
            if size < HEADER_SIZE as u64 {
                return Err(OpenError::corrupt(format!(
                    "{} is {size} bytes, too small for the {HEADER_SIZE}-byte header",
                    crate::error::short(&label)
                )));
            }
            let len = usize::try_from(size).map_err(|_| OpenError::corrupt("segment larger than the address space"))?;
            let map = sys::Mapping::map(&fd, len, name.is_some())?;
            // SAFETY: the mapping is at least HEADER_SIZE bytes and page
            // aligned, and `map` outlives this use.
            let state = unsafe { header::init_state_word(map.ptr()) }.load(Ordering::Acquire);
            if state != READY {
                // A creator writes the magic before it initialises; other
                // non-zero bytes there are no shmproc segment at all: say so
                // at once rather than wait for an init that never comes.
                // SAFETY: the first 8 bytes are mapped and 8-aligned; a racy
                // read of plain bytes, only compared.
                let magic = unsafe { std::ptr::read_volatile(map.ptr().as_ptr() as *const u64) };
                if magic != 0 && magic != header::MAGIC {
                    return Err(OpenError::corrupt(format!(
                        "{} has bad magic: not a shmproc segment",
                        crate::error::short(&label)
                    )));
                }
                if deadline.expired() {
                    return Err(OpenError::NotReady { name: label });
                }
                drop(map);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(5));
                continue;
            }
            // Copied out once and the private copy validated, so a concurrent
            // scribbler cannot change what we check after we checked it.
            // SAFETY: the first HEADER_SIZE bytes are mapped and page aligned.
            let copy = unsafe { header::copy_header(map.ptr()) };
            let info = header::parse_header(&copy, size, Some(spec))?;
            if map.lost() {
                return Err(OpenError::corrupt(format!(
                    "{} was truncated while it was being opened",
                    crate::error::short(&label)
                )));
            }
            return Ok(Segment {
                inner: Arc::new(Inner {
                    map,
                    fd,
                    name,
                    created_by: None,
                    unlink_on_drop: AtomicBool::new(false),
                    info,
                }),
            });
        }
    }

    /// Creates or, if it exists, opens the named object, retrying if it vanishes in between.
    pub(crate) fn open_or_create_object(
        opts: &SegmentOptions,
        spec: &ObjectSpec,
        payload_size: usize,
        payload_align: usize,
        init: impl Fn(NonNull<u8>, usize),
    ) -> Result<Segment, OpenError> {
        let deadline = Deadline::after(Some(opts.open_timeout));
        loop {
            match Self::create_object(opts, spec.kind, spec.ty, payload_size, payload_align, &init) {
                Err(OpenError::AlreadyExists { .. }) => {}
                // A racer that lost while building (say, no room for a second
                // copy) opens the winner's object rather than fail.
                Err(e) if !matches!(e, OpenError::NameInvalid { .. }) && Self::name_exists(opts) => {}
                other => return other,
            }
            match Self::open_object(opts, spec) {
                Err(OpenError::NotFound { name }) => {
                    if deadline.expired() {
                        return Err(OpenError::NotFound { name });
                    }
                }
                other => return other,
            }
        }
    }

    /// Whether `opts`' name exists now.
    fn name_exists(opts: &SegmentOptions) -> bool {
        opts.name.as_deref().and_then(|n| validate_name(n).ok()).is_some_and(|p| sys::shm_exists(&p))
    }

    /// Pointer to the first payload byte (aligned as requested at creation).
    pub fn payload_ptr(&self) -> NonNull<u8> {
        // SAFETY: payload_offset was validated to lie within the mapping.
        unsafe { NonNull::new_unchecked(self.inner.map.ptr().as_ptr().add(self.inner.info.payload_offset)) }
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        self.inner.info.payload_size
    }

    /// Length of the whole mapping (header + payload) in bytes.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether this is an anonymous segment and the only handle to it in
    /// this process (the pool reuses such a segment once no other process
    /// maps it either: see `pool::spare`).
    pub(crate) fn is_sole(&self) -> bool {
        self.inner.name.is_none() && Arc::strong_count(&self.inner) == 1 && Arc::weak_count(&self.inner) == 0
    }

    /// Whether the segment's file was truncated under this process's mapping
    /// (a named segment only: memfds are sealed). The mapping then holds
    /// private zeros, never the object again; every object's slow paths check
    /// this and fail with their corrupt error (see `sys::sigbus`).
    #[inline]
    pub(crate) fn lost(&self) -> bool {
        self.inner.map.lost()
    }

    /// Never true: a segment always holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The kind recorded in the header.
    pub fn kind(&self) -> ObjectKind {
        self.inner.info.kind
    }

    /// The element type recorded in the header.
    pub fn type_info(&self) -> TypeInfo {
        self.inner.info.ty
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.inner.info.creator_pid
    }

    /// The POSIX name (with its leading `/`) of a named segment.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Keeps the name after the creator's handles drop (remove it with [`unlink`]).
    pub fn persist(&self) {
        self.inner.unlink_on_drop.store(false, Ordering::Relaxed);
    }

    /// How another process finds this segment: its name, or for an anonymous
    /// segment its fd number (valid in children that inherit the fd).
    pub fn handle(&self) -> Handle {
        match &self.inner.name {
            Some(n) => Handle::Name(n.clone()),
            None => Handle::Fd(self.inner.fd.as_raw_fd()),
        }
    }

    /// The underlying fd (shm object or memfd).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    /// Lets the segment's fd survive `exec`, so a launched binary can open
    /// [`Segment::handle`]. Fork-inherited anonymous segments need nothing.
    pub fn set_inheritable(&self, inheritable: bool) -> Result<(), OpenError> {
        Ok(sys::set_cloexec(self.inner.fd.as_fd(), !inheritable)?)
    }
}

/// A shmproc object that another process can open from a [`Handle`].
///
/// Every primitive implements it, so a launcher can hand any of them to a child
/// (through its environment or argv) and the child gets it back with
/// [`ShmObject::open_handle`]. Opening checks the object's kind and element type,
/// so a wrong or missing handle is a precise [`OpenError`]. It is implemented
/// once, by the typed-object layer, for every object (`Segment` included).
pub trait ShmObject: Sized {
    /// The kind recorded in the segment header.
    const KIND: ObjectKind;
    /// How another process finds this object.
    fn handle(&self) -> Handle;
    /// Opens the object behind `handle` with default options.
    fn open_handle(handle: &Handle) -> Result<Self, OpenError>;
    /// The segment the object lives in.
    fn segment(&self) -> &Segment;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("jobs").unwrap(), "/jobs");
        assert_eq!(validate_name("/jobs").unwrap(), "/jobs");
        assert_eq!(validate_name("a.b_c-9").unwrap(), "/a.b_c-9");
        for bad in ["", "/", "a/b", "//a", ".hidden", "sp ace", "ü", "a\0b", &"x".repeat(251)] {
            match validate_name(bad) {
                Err(OpenError::NameInvalid { .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(validate_name(&"x".repeat(250)).is_ok());
    }

    #[test]
    fn handles_roundtrip() {
        for h in [Handle::Name("/abc".into()), Handle::Fd(7)] {
            assert_eq!(h.to_string().parse::<Handle>().unwrap(), h);
        }
        assert!("fd:-1".parse::<Handle>().is_err());
        assert!("name:a/b".parse::<Handle>().is_err());
        assert!("bogus".parse::<Handle>().is_err());
    }

    #[test]
    fn anonymous_bytes() {
        let s = Segment::builder().size(100).create().unwrap();
        assert_eq!(s.payload_len(), 100);
        assert!(matches!(s.handle(), Handle::Fd(_)));
        let s2 = Segment::builder().open_handle(&s.handle()).unwrap();
        // SAFETY: both map the same 100-byte payload; single-threaded test.
        unsafe {
            *s.payload_ptr().as_ptr() = 42;
            assert_eq!(*s2.payload_ptr().as_ptr(), 42);
        }
    }
}
