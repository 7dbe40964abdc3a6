//! Error types, one small enum per kind of operation.

use std::fmt;
use std::io;

use crate::header::{HeaderError, TypeInfo};

/// Why creating or opening a shared-memory object failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// No object has this name (or the handle's fd is not open).
    NotFound {
        /// The POSIX name, with its leading `/`.
        name: String,
    },
    /// `create` found an object of that name already.
    AlreadyExists {
        /// The POSIX name, with its leading `/`.
        name: String,
    },
    /// The creator did not finish initialising the object before the open timeout.
    NotReady {
        /// The POSIX name, with its leading `/`, or the handle.
        name: String,
    },
    /// The object was written by an incompatible version of the shmproc format.
    VersionMismatch {
        /// The format version this library reads.
        expected: u32,
        /// The version found in the header.
        found: u32,
    },
    /// The object is of another kind (say, a `Queue` opened as an `Array`).
    KindMismatch {
        /// The kind asked for.
        expected: crate::ObjectKind,
        /// The kind found in the header.
        found: crate::ObjectKind,
    },
    /// The stored element type differs from the one asked for.
    TypeMismatch {
        /// The type asked for.
        expected: Box<TypeInfo>,
        /// The type recorded in the header.
        found: Box<TypeInfo>,
    },
    /// The payload size differs from the one asked for (say, an array length).
    SizeMismatch {
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The object's bytes are not a valid shmproc object: too small, bad magic,
    /// or header fields that disagree with its real size.
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// Refused for safety: owned by another user, writable by group/other, or the
    /// OS denied access.
    PermissionDenied {
        /// What was refused and how to opt in if that is intended.
        reason: String,
    },
    /// The name is not a valid shmproc object name.
    NameInvalid {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A parameter given to the builder is unusable (zero capacity, too large, ...).
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// Creating: the tmpfs that holds shared memory (`/dev/shm` for a named
    /// object, the kernel's memfd tmpfs for an anonymous one) has no room for the
    /// object's pages. Every page is reserved at create (`fallocate`), so a full
    /// `/dev/shm` is this error and never a SIGBUS on first use.
    ///
    /// ```
    /// # use shmproc::OpenError;
    /// let e = OpenError::NoSpace { requested: 64 << 20, available: 16 << 20 };
    /// assert!(e.to_string().contains("67108864 bytes"));
    /// ```
    NoSpace {
        /// Bytes the object needs (header and payload, rounded as mapped).
        requested: u64,
        /// Bytes the filesystem reported free after the attempt.
        available: u64,
    },
    /// Opening an anonymous object by fd: the memfd is not sealed as shmproc
    /// seals it (against shrinking and growing, seals sealed), or its size is not
    /// the size its header claims. A peer holding such an fd could shrink it
    /// under our mapping and make us fault (SIGBUS), so it is refused.
    NotSealed {
        /// What is missing or wrong.
        reason: String,
    },
    /// Any other operating-system failure.
    Os(io::Error),
}

impl OpenError {
    pub(crate) fn corrupt(reason: impl Into<String>) -> OpenError {
        OpenError::Corrupt { reason: reason.into() }
    }
    pub(crate) fn invalid(reason: impl Into<String>) -> OpenError {
        OpenError::InvalidArgument { reason: reason.into() }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotFound { name } => write!(f, "shared-memory object {} not found", short(name)),
            OpenError::AlreadyExists { name } => write!(f, "shared-memory object {} already exists", short(name)),
            OpenError::NotReady { name } => write!(
                f,
                "shared-memory object {} was not initialised by its creator before the open timeout",
                short(name)
            ),
            OpenError::VersionMismatch { expected, found } => {
                write!(f, "shmproc format version mismatch: this library reads version {expected}, the object has version {found}")
            }
            OpenError::KindMismatch { expected, found } => {
                write!(f, "object kind mismatch: expected {expected}, found {found}")
            }
            OpenError::TypeMismatch { expected, found } => {
                write!(f, "element type mismatch: expected {expected}, found {found}")
            }
            OpenError::SizeMismatch { expected, found } => {
                write!(f, "payload size mismatch: expected {expected} bytes, found {found} bytes")
            }
            OpenError::Corrupt { reason } => write!(f, "corrupt shared-memory object: {reason}"),
            OpenError::PermissionDenied { reason } => write!(f, "permission denied: {reason}"),
            OpenError::NameInvalid { name, reason } => write!(f, "invalid object name {:?}: {reason}", short(name)),
            OpenError::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
            OpenError::NoSpace { requested, available } => write!(
                f,
                "no room for the shared-memory object: it needs {requested} bytes but only {available} bytes \
                 are free in /dev/shm (or the memfd tmpfs); make /dev/shm larger (docker: --shm-size) or the object smaller"
            ),
            OpenError::NotSealed { reason } => write!(f, "unsealed anonymous object refused: {reason}"),
            OpenError::Os(e) => write!(f, "operating-system error: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Os(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Os(e)
    }
}

impl From<HeaderError> for OpenError {
    /// Each header check has its own `OpenError` variant; the mapping is one to one.
    fn from(e: HeaderError) -> Self {
        match e {
            HeaderError::Corrupt(reason) => OpenError::Corrupt { reason },
            HeaderError::VersionMismatch { expected, found } => OpenError::VersionMismatch { expected, found },
            HeaderError::KindMismatch { expected, found } => OpenError::KindMismatch { expected, found },
            HeaderError::TypeMismatch { expected, found } => OpenError::TypeMismatch { expected, found },
            HeaderError::SizeMismatch { expected, found } => OpenError::SizeMismatch { expected, found },
        }
    }
}

/// Why taking a lock did not give a clean guard.
///
/// `G` is the guard type; it is handed back in [`LockError::OwnerDied`] so the
/// caller can inspect and repair the protected data.
///
/// `?` turns it into an owned error (dropping the guard): into
/// [`AccessError`], `Box<dyn Error + Send + Sync>` or `Box<dyn Error>`. It is
/// not itself a `std::error::Error` (the guard borrows the object, so it could
/// never be boxed as one); [`LockError::into_owned`] gives the owned error
/// where a conversion is not implied (`anyhow`: `.map_err(LockError::into_owned)?`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let counter = shmproc::Mutex::<u64>::anonymous(0)?;
/// *counter.lock()? += 1;
/// assert_eq!(*counter.lock()?, 1);
/// # Ok(()) }
/// ```
#[non_exhaustive]
pub enum LockError<G> {
    /// The previous holder died while holding the lock. The lock is now held by
    /// the caller through the guard inside; the data may be half-updated. Repair
    /// it and call the guard's `mark_consistent()`; if the guard is dropped
    /// without that, the lock becomes [`LockError::Unrecoverable`] for everyone.
    OwnerDied(G),
    /// An earlier holder died and the next one did not mark the data consistent:
    /// the lock is permanently unusable (as `ENOTRECOVERABLE` for pthread).
    Unrecoverable,
    /// The timeout elapsed before the lock could be taken.
    Timeout,
    /// `try_lock`: the lock is held by someone else.
    WouldBlock,
    /// The lock word in shared memory holds a value no valid lock can have,
    /// or the object's named segment was truncated by another process (its
    /// memory is gone for this process).
    Corrupt,
}

impl<G> LockError<G> {
    /// Maps the guard inside [`LockError::OwnerDied`].
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            LockError::OwnerDied(g) => LockError::OwnerDied(f(g)),
            LockError::Unrecoverable => LockError::Unrecoverable,
            LockError::Timeout => LockError::Timeout,
            LockError::WouldBlock => LockError::WouldBlock,
            LockError::Corrupt => LockError::Corrupt,
        }
    }

    /// Whether this is [`LockError::OwnerDied`].
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }

    /// The guard, if this is [`LockError::OwnerDied`].
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Unrecoverable => f.write_str("Unrecoverable"),
            LockError::Timeout => f.write_str("Timeout"),
            LockError::WouldBlock => f.write_str("WouldBlock"),
            LockError::Corrupt => f.write_str("Corrupt"),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("the previous lock holder died while holding the lock; the data may be inconsistent")
            }
            LockError::Unrecoverable => {
                f.write_str("the lock is unrecoverable: a holder died and the data was never marked consistent")
            }
            LockError::Timeout => f.write_str("timed out waiting for the lock"),
            LockError::WouldBlock => f.write_str("the lock is held by someone else"),
            LockError::Corrupt => {
                f.write_str("the lock word in shared memory is corrupt, or its segment was truncated")
            }
        }
    }
}

// `LockError` is deliberately not a `std::error::Error`: its guard borrows
// the object, so it can never be a `'static` error, and implementing the trait
// would make the conversions below overlap with std's blanket
// `impl<E: Error + Send + Sync> From<E> for Box<dyn Error + Send + Sync>`.
// Without it, `m.lock()?` works into the boxed errors and into `AccessError`.

impl<G> From<LockError<G>> for Box<dyn std::error::Error + Send + Sync> {
    /// `?` on `lock()`: the owned [`AccessError`], boxed (a dead holder's
    /// guard is dropped unrepaired; see [`AccessError`]).
    fn from(e: LockError<G>) -> Self {
        Box::new(AccessError::from(e))
    }
}

impl<G> From<LockError<G>> for Box<dyn std::error::Error> {
    /// As for `Box<dyn Error + Send + Sync>`.
    fn from(e: LockError<G>) -> Self {
        Box::new(AccessError::from(e))
    }
}

/// Why a convenience call (`get`, `set`, `update`, `to_vec`, ...) failed.
///
/// Owned, `Send + Sync + 'static`: `?` turns it into `Box<dyn Error + Send +
/// Sync>` or an `anyhow::Error`. Only [`Mutex::lock`](crate::Mutex::lock)
/// hands back the guard of a dead holder ([`LockError::OwnerDied`]); a
/// convenience call drops it without marking the data consistent, so the lock
/// becomes unrecoverable: repair a dead holder's data through `lock()`.
///
/// It is a serde type, so a target may return it (`Result<T, AccessError>`).
///
/// [`LockError`] converts into it (`From`), dropping the guard; so do
/// [`Mutex::lock`](crate::Mutex::lock)'s errors in a function that returns
/// `Result<_, AccessError>`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let a = shmproc::Array::<u32>::anonymous(&[1, 2, 3])?;
/// assert!(matches!(a.set(99, 7), Err(shmproc::AccessError::IndexOutOfRange { index: 99, len: 3 })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum AccessError {
    /// The previous holder died while holding the lock; the data may be
    /// half-updated, and the lock is now unrecoverable (see the type's docs).
    OwnerDied,
    /// An earlier holder died and the data was never marked consistent.
    Unrecoverable,
    /// The timeout elapsed before the lock could be taken.
    Timeout,
    /// The lock is held by someone else (a `try_` call).
    WouldBlock,
    /// The lock word in shared memory holds a value no valid lock can have,
    /// or the object's named segment was truncated by another process.
    Corrupt,
    /// An index past the end (Python's `IndexError`).
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The number of elements.
        len: usize,
    },
}

impl<G> From<LockError<G>> for AccessError {
    /// Drops the guard of [`LockError::OwnerDied`] (see [`AccessError`]).
    fn from(e: LockError<G>) -> Self {
        match e {
            LockError::OwnerDied(_) => AccessError::OwnerDied,
            LockError::Unrecoverable => AccessError::Unrecoverable,
            LockError::Timeout => AccessError::Timeout,
            LockError::WouldBlock => AccessError::WouldBlock,
            LockError::Corrupt => AccessError::Corrupt,
        }
    }
}

impl<G> LockError<G> {
    /// The owned [`AccessError`] (drops the guard of `OwnerDied`), for error
    /// types `?` does not convert into by itself: `m.lock().map_err(LockError::into_owned)?`.
    pub fn into_owned(self) -> AccessError {
        self.into()
    }
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::OwnerDied => f.write_str(
                "the previous lock holder died while holding the lock; the data may be inconsistent (use lock() to repair it)",
            ),
            AccessError::Unrecoverable => {
                f.write_str("the lock is unrecoverable: a holder died and the data was never marked consistent")
            }
            AccessError::Timeout => f.write_str("timed out waiting for the lock"),
            AccessError::WouldBlock => f.write_str("the lock is held by someone else"),
            AccessError::Corrupt => {
                f.write_str("the lock word in shared memory is corrupt, or its segment was truncated")
            }
            AccessError::IndexOutOfRange { index, len } => {
                write!(f, "index {index} is out of range for an array of {len} elements")
            }
        }
    }
}

impl std::error::Error for AccessError {}

/// A name or other user text for an error message: at most 40 characters,
/// then `…` (an error that repeats a 300-character name stays readable).
pub(crate) fn short(text: &str) -> String {
    const KEEP: usize = 40;
    match text.char_indices().nth(KEEP) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::ObjectKind;

    #[test]
    fn long_names_are_shortened_in_messages() {
        assert_eq!(short("jobs"), "jobs");
        let long = "x".repeat(300);
        assert_eq!(short(&long), format!("{}…", "x".repeat(40)));
        assert!(OpenError::NotFound { name: format!("/{long}") }.to_string().len() < 100);
        assert!(OpenError::AlreadyExists { name: format!("/{long}") }.to_string().len() < 100);
        assert!(OpenError::NameInvalid { name: long.clone(), reason: "too long" }.to_string().len() < 100);
    }

    #[test]
    fn access_errors_are_owned_and_convert_from_lock_errors() {
        fn owned<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
        let e = AccessError::from(LockError::OwnerDied(Box::new(1u8)));
        owned(&e);
        assert_eq!(e, AccessError::OwnerDied);
        assert_eq!(LockError::<()>::Timeout.into_owned(), AccessError::Timeout);
        // `?` on a lock error, into the boxed errors (the guard is dropped).
        fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            Err(LockError::OwnerDied(std::rc::Rc::new(1u8)))?
        }
        assert_eq!(boxed().unwrap_err().downcast_ref::<AccessError>(), Some(&AccessError::OwnerDied));
        fn boxed_local() -> Result<(), Box<dyn std::error::Error>> {
            Err(LockError::<()>::Corrupt)?
        }
        assert_eq!(boxed_local().unwrap_err().to_string(), AccessError::Corrupt.to_string());
    }

    #[test]
    fn header_errors_keep_their_variant_and_message() {
        let cases = [
            HeaderError::Corrupt("bad magic".into()),
            HeaderError::VersionMismatch { expected: 1, found: 7 },
            HeaderError::KindMismatch { expected: ObjectKind::Array, found: ObjectKind::Queue },
            HeaderError::TypeMismatch {
                expected: Box::new(TypeInfo::of::<u32>()),
                found: Box::new(TypeInfo::of::<f64>()),
            },
            HeaderError::SizeMismatch { expected: 8, found: 144 },
        ];
        for h in cases {
            let text = h.to_string();
            let o = OpenError::from(h.clone());
            assert_eq!(o.to_string(), text);
            let same = match (&h, &o) {
                (HeaderError::Corrupt(a), OpenError::Corrupt { reason }) => a == reason,
                (HeaderError::VersionMismatch { .. }, OpenError::VersionMismatch { expected: 1, found: 7 }) => true,
                (
                    HeaderError::KindMismatch { .. },
                    OpenError::KindMismatch { expected: ObjectKind::Array, found: ObjectKind::Queue },
                ) => true,
                (HeaderError::TypeMismatch { .. }, OpenError::TypeMismatch { expected, found }) => {
                    expected.name() == "u32" && found.name() == "f64"
                }
                (HeaderError::SizeMismatch { .. }, OpenError::SizeMismatch { expected: 8, found: 144 }) => true,
                _ => false,
            };
            assert!(same, "{h:?} became {o:?}");
        }
    }
}
