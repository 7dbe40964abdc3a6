//! Read-only inspection of segments and of the processes that made them, for
//! tools such as `shmproc ls` and `shmproc gc`.
//!
//! An ordinary program opens an object by name and kind (`Value::<u64>::open`)
//! and gets a precise [`OpenError`] when the segment holds something else. A
//! tool that lists every segment has no kind or type to expect; this module
//! gives it what it needs without mapping or changing anything:
//!
//! * [`list_shm`]: the regular files of [`SHM_DIR`], where glibc keeps POSIX
//!   shared-memory objects (shmproc's named segments and anyone else's).
//! * [`header_summary`]: validates a private copy of a segment's first
//!   [`HEADER_SIZE`] bytes exactly as `open` does (magic, format version,
//!   total size against the real size, payload offset and bounds; see
//!   `SAFETY.md`) but without a kind or type to match, and says what it found.
//!   The bytes are untrusted input: a corrupt header is an `Err`, never a panic.
//! * [`pending_creator`]: recognises the temporary name a named object is
//!   built under (and whose process builds it).
//! * [`process_alive`] and [`process_start_ticks`]: whether a segment's
//!   creator may still run. A header records only the creator's pid, so a tool
//!   compares the start time of the process that has that pid now with the
//!   segment's own timestamps to tell a reused pid from the creator.
//!
//! Reading a header this way is racy by nature (the creator may be writing it);
//! [`HeaderSummary::ready`] says whether the creator had published it.

use std::io;

use crate::header::{self, Header, HEADER_SIZE, READY};
use crate::{ObjectKind, OpenError, TypeInfo};

/// The directory of POSIX shared-memory objects on Linux (`shm_open` names).
pub const SHM_DIR: &str = "/dev/shm";

/// One regular file of [`SHM_DIR`], as `stat` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShmEntry {
    /// File name (the `shm_open` name without its leading `/`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Owner uid.
    pub uid: u32,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
}

/// The regular files of [`SHM_DIR`], sorted by name. Symbolic links,
/// directories and names that are not UTF-8 are left out; nothing is opened.
pub fn list_shm() -> io::Result<Vec<ShmEntry>> {
    Ok(crate::sys::list_shm_names()?
        .into_iter()
        .map(|(name, i)| ShmEntry { name, size: i.size, uid: i.uid, mode: i.mode })
        .collect())
}

/// For the temporary name a named object is built under before it is
/// renamed into place (`.NAME~PID-RANDOM`, see `SAFETY.md`): the pid of the
/// process building it and the name it will get (`NAME` cut to 200 bytes).
/// `None` for every other name.
///
/// ```
/// use shmproc::inspect::pending_creator;
/// assert_eq!(pending_creator(".jobs~4242-00000000deadbeef"), Some((4242, "jobs")));
/// assert_eq!(pending_creator("jobs"), None);
/// ```
pub fn pending_creator(file_name: &str) -> Option<(u32, &str)> {
    let rest = file_name.strip_prefix('.')?;
    let (name, tail) = rest.rsplit_once('~')?;
    let (pid, random) = tail.split_once('-')?;
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    let pid = pid.parse::<u32>().ok().filter(|&p| p > 0 && pid.bytes().all(|b| b.is_ascii_digit()))?;
    (hex && !name.is_empty()).then_some((pid, name))
}

/// What a segment's header says, read without expecting a kind or a type.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HeaderSummary {
    /// The kind of object.
    pub kind: ObjectKind,
    /// Pid of the creating process, as recorded (see [`process_alive`]).
    pub creator_pid: u32,
    /// Payload bytes.
    pub payload_size: u64,
    /// The element type recorded by the creator.
    pub ty: TypeInfo,
    /// Whether the creator published "ready" (false: initialising, or it died mid-way).
    pub ready: bool,
}

/// Validates `bytes`, a copy of the first [`HEADER_SIZE`] bytes of a segment
/// whose real size is `actual_size`, as `open` does but without a kind or
/// type to match, and summarises it.
///
/// Errors are those of `open`: [`OpenError::Corrupt`] (not a shmproc header,
/// or sizes and offsets that do not fit the segment) and
/// [`OpenError::VersionMismatch`].
pub fn header_summary(bytes: &[u8; HEADER_SIZE], actual_size: u64) -> Result<HeaderSummary, OpenError> {
    let info = header::parse_header(bytes, actual_size, None)?;
    let at = std::mem::offset_of!(Header, init_state);
    let state = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok(HeaderSummary {
        kind: info.kind,
        creator_pid: info.creator_pid,
        payload_size: info.payload_size as u64,
        ty: info.ty,
        ready: state == READY,
    })
}

/// Whether a process with id `pid` exists and is not a zombie.
///
/// A pid alone cannot tell a reused id from the original process: `true` may
/// mean "some process now has this pid" (compare [`process_start_ticks`] with
/// when the segment was made). Where `/proc` cannot be read (`hidepid`), this
/// falls back to `kill(pid, 0)` and errs towards `true`, so a cleaner built on
/// it never removes a live creator's segment.
pub fn process_alive(pid: u32) -> bool {
    crate::sys::liveness(crate::sys::Identity { id: pid, start_time: 0 }) == crate::sys::Liveness::Alive
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`; `sysconf(_SC_CLK_TCK)` ticks per second). `None` if
/// no such live process exists.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    crate::sys::identity_of(pid).map(|i| i.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_header(total: u64) -> [u8; HEADER_SIZE] {
        header::encode_header(ObjectKind::Value, &TypeInfo::of::<u64>(), 4242, total, HEADER_SIZE as u64, 8)
    }

    #[test]
    fn a_header_is_summarised_without_a_kind_or_type() {
        let mut b = valid_header(4096);
        let s = header_summary(&b, 4096).unwrap();
        assert_eq!((s.kind, s.creator_pid, s.payload_size, s.ready), (ObjectKind::Value, 4242, 8, false));
        assert_eq!(s.ty.name(), TypeInfo::of::<u64>().name());
        b[16..20].copy_from_slice(&READY.to_le_bytes());
        assert!(header_summary(&b, 4096).unwrap().ready);
    }

    #[test]
    fn a_corrupt_header_is_an_error() {
        let b = valid_header(4096);
        assert!(matches!(header_summary(&b, 8192), Err(OpenError::Corrupt { .. })), "size disagrees");
        assert!(header_summary(&[0u8; HEADER_SIZE], 4096).is_err(), "no magic");
        let mut v = b;
        v[8] = 99;
        assert!(matches!(header_summary(&v, 4096), Err(OpenError::VersionMismatch { .. })));
    }

    #[test]
    fn this_process_is_alive_and_has_a_start_time() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(process_start_ticks(me).is_some());
        assert!(!process_alive(0));
        assert_eq!(process_start_ticks(0), None);
    }
}
