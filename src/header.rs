//! The header at offset 0 of every shmproc segment, and its validation.
//!
//! Layout (little-endian, 128 bytes, `#[repr(C)]`; see `SAFETY.md`):
//!
//! | offset | size | field            | meaning                                             |
//! |-------:|-----:|------------------|-----------------------------------------------------|
//! | 0      | 8    | `magic`          | `b"SHMPROC\0"`                                      |
//! | 8      | 4    | `version`        | format version, [`FORMAT_VERSION`]                  |
//! | 12     | 4    | `kind`           | [`ObjectKind`] code                                 |
//! | 16     | 4    | `init_state`     | 0 = being initialised, [`READY`] = ready (atomic)   |
//! | 20     | 4    | `creator_pid`    | pid of the creating process                         |
//! | 24     | 8    | `total_size`     | size of the whole segment in bytes                  |
//! | 32     | 8    | `payload_offset` | where the object's payload starts                   |
//! | 40     | 8    | `payload_size`   | payload bytes                                       |
//! | 48     | 8    | `type_hash`      | FNV-1a 64 of the element type's name                |
//! | 56     | 4    | `type_size`      | `size_of` the element type                          |
//! | 60     | 4    | `type_align`     | `align_of` the element type                         |
//! | 64     | 64   | `type_name`      | the type's name, UTF-8, NUL padded, truncated       |
//!
//! The creator writes every field, initialises the payload, and only then stores
//! `READY` into `init_state` with release ordering. Openers load it with acquire
//! ordering and read nothing else before they see `READY`.
//!
//! Validation (`parse_header`) is a pure function over a private copy of these
//! 128 bytes. It reports a small `HeaderError`; the segment layer turns that
//! into the [`OpenError`](crate::OpenError) variant of the same name, so this
//! module sits below the error module and imports nothing from the crate.

use std::fmt;
use std::sync::atomic::AtomicU32;

/// `b"SHMPROC\0"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMPROC\0");
/// The segment format this library writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Value of `init_state` once the creator has finished.
pub const READY: u32 = 0x5245_4459; // "YDER" little-endian: unlikely by accident
/// Bytes taken by the header; payloads start at or after this offset.
pub const HEADER_SIZE: usize = 128;

/// The segment header, as laid out in memory.
#[repr(C)]
pub(crate) struct Header {
    pub(crate) magic: u64,
    pub(crate) version: u32,
    pub(crate) kind: u32,
    pub(crate) init_state: AtomicU32,
    pub(crate) creator_pid: u32,
    pub(crate) total_size: u64,
    pub(crate) payload_offset: u64,
    pub(crate) payload_size: u64,
    pub(crate) type_hash: u64,
    pub(crate) type_size: u32,
    pub(crate) type_align: u32,
    pub(crate) type_name: [u8; 64],
}

const _: () = assert!(std::mem::size_of::<Header>() == HEADER_SIZE);
const _: () = assert!(std::mem::align_of::<Header>() == 8);
const _: () = assert!(std::mem::offset_of!(Header, init_state) == 16);
const _: () = assert!(std::mem::offset_of!(Header, type_name) == 64);

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $code:expr,)*) => {
        /// What kind of object a segment holds (the header's `kind` field).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ObjectKind {
            $($(#[$doc])* $name,)*
            /// A code this version of shmproc does not know.
            Unknown(u32),
        }

        impl ObjectKind {
            /// The numeric code stored in the header.
            pub const fn code(self) -> u32 {
                match self {
                    $(ObjectKind::$name => $code,)*
                    ObjectKind::Unknown(c) => c,
                }
            }

            /// The kind for a header code.
            pub const fn from_code(code: u32) -> ObjectKind {
                match code {
                    $($code => ObjectKind::$name,)*
                    c => ObjectKind::Unknown(c),
                }
            }

            /// A short human-readable name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ObjectKind::$name => stringify!($name),)*
                    ObjectKind::Unknown(_) => "Unknown",
                }
            }
        }
    };
}

kinds! {
    /// Raw bytes ([`crate::Segment`]).
    Bytes = 1,
    /// A [`crate::Value`] (with its lock).
    Value = 2,
    /// A [`crate::RawValue`] (no lock).
    RawValue = 3,
    /// An [`crate::Array`] (with its lock).
    Array = 4,
    /// A [`crate::RawArray`] (no lock).
    RawArray = 5,
    /// A robust mutex.
    Mutex = 16,
    /// A reentrant robust mutex.
    ReentrantMutex = 17,
    /// A counting semaphore.
    Semaphore = 18,
    /// A bounded semaphore.
    BoundedSemaphore = 19,
    /// An event.
    Event = 20,
    /// A condition variable.
    Condition = 21,
    /// A barrier.
    Barrier = 22,
    /// A reader-writer lock.
    RwLock = 23,
    /// A plain lock ([`crate::Lock`]).
    Lock = 24,
    /// A queue of fixed-size messages.
    Queue = 32,
    /// A queue of variable-size byte frames.
    FrameQueue = 33,
    /// A joinable queue.
    JoinableQueue = 34,
    /// A duplex pipe.
    Pipe = 48,
    /// Process-launcher state.
    Process = 64,
    /// Pool state.
    Pool = 65,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKind::Unknown(c) => write!(f, "unknown kind {c}"),
            k => f.write_str(k.name()),
        }
    }
}

/// The layout fingerprint of an element type: size, alignment and a hash of its name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    /// `size_of::<T>()`.
    pub size: u32,
    /// `align_of::<T>()`.
    pub align: u32,
    /// FNV-1a 64 of `std::any::type_name::<T>()`.
    pub name_hash: u64,
    name: [u8; 64],
}

impl TypeInfo {
    /// The fingerprint of `T`.
    pub fn of<T: 'static>() -> TypeInfo {
        TypeInfo::from_parts(
            std::mem::size_of::<T>() as u32,
            std::mem::align_of::<T>() as u32,
            std::any::type_name::<T>(),
        )
    }

    /// A fingerprint for no element type (raw byte segments).
    pub fn none() -> TypeInfo {
        TypeInfo::from_parts(1, 1, "")
    }

    pub(crate) fn from_parts(size: u32, align: u32, name: &str) -> TypeInfo {
        let mut buf = [0u8; 64];
        // Truncate at a char boundary so the stored name stays valid UTF-8.
        let mut cut = name.len().min(64);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        buf[..cut].copy_from_slice(&name.as_bytes()[..cut]);
        TypeInfo { size, align, name_hash: fnv1a64(name.as_bytes()), name: buf }
    }

    /// The (possibly truncated) type name recorded in the segment.
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(64);
        match std::str::from_utf8(&self.name[..end]) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.name[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// Whether two fingerprints describe the same layout.
    pub fn matches(&self, other: &TypeInfo) -> bool {
        self.size == other.size && self.align == other.align && self.name_hash == other.name_hash
    }
}

impl fmt::Debug for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeInfo")
            .field("name", &self.name())
            .field("size", &self.size)
            .field("align", &self.align)
            .field("name_hash", &format_args!("{:#018x}", self.name_hash))
            .finish()
    }
}

impl fmt::Display for TypeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name().is_empty() { "<unnamed>" } else { self.name() };
        write!(f, "`{}` (size {}, align {})", name, self.size, self.align)
    }
}

/// FNV-1a, 64-bit: a tiny, stable, well-known hash for type names.
pub(crate) const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// How big the payload must be for an open to succeed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PayloadSize {
    /// Exactly this many bytes.
    Exact(u64),
    /// At least this many bytes (the object validates the rest itself).
    AtLeast(u64),
}

/// What an opener expects to find.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ObjectSpec {
    pub(crate) kind: ObjectKind,
    pub(crate) ty: TypeInfo,
    pub(crate) payload: PayloadSize,
}

/// The header fields after validation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderInfo {
    pub(crate) kind: ObjectKind,
    pub(crate) creator_pid: u32,
    pub(crate) payload_offset: usize,
    pub(crate) payload_size: usize,
    pub(crate) ty: TypeInfo,
}

/// Why a header failed validation. The caller (the segment layer) turns it
/// into the matching [`crate::OpenError`] variant (`impl From<HeaderError> for
/// OpenError`), so this module does not depend on the error module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Bad magic, or header fields that disagree with the segment's real size.
    Corrupt(String),
    /// Another format version.
    VersionMismatch {
        /// The version this library reads.
        expected: u32,
        /// The version in the header.
        found: u32,
    },
    /// Another kind of object.
    KindMismatch {
        /// The kind asked for.
        expected: ObjectKind,
        /// The kind in the header.
        found: ObjectKind,
    },
    /// Another element type.
    TypeMismatch {
        /// The type asked for.
        expected: Box<TypeInfo>,
        /// The type in the header.
        found: Box<TypeInfo>,
    },
    /// Another payload size.
    SizeMismatch {
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Corrupt(reason) => write!(f, "corrupt shared-memory object: {reason}"),
            HeaderError::VersionMismatch { expected, found } => write!(
                f,
                "shmproc format version mismatch: this library reads version {expected}, the object has version {found}"
            ),
            HeaderError::KindMismatch { expected, found } => {
                write!(f, "object kind mismatch: expected {expected}, found {found}")
            }
            HeaderError::TypeMismatch { expected, found } => {
                write!(f, "element type mismatch: expected {expected}, found {found}")
            }
            HeaderError::SizeMismatch { expected, found } => {
                write!(f, "payload size mismatch: expected {expected} bytes, found {found} bytes")
            }
        }
    }
}

impl std::error::Error for HeaderError {}

/// Reads a header out of `bytes` (a private copy of the first [`HEADER_SIZE`]
/// bytes of a segment whose real size is `actual_size`) and checks it against
/// `spec`. Pure: unit-tested without shared memory.
pub(crate) fn parse_header(
    bytes: &[u8; HEADER_SIZE],
    actual_size: u64,
    spec: Option<&ObjectSpec>,
) -> Result<HeaderInfo, HeaderError> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));

    if u64_at(0) != MAGIC {
        return Err(HeaderError::Corrupt("bad magic: not a shmproc segment".into()));
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::VersionMismatch { expected: FORMAT_VERSION, found: version });
    }
    let kind = ObjectKind::from_code(u32_at(12));
    let creator_pid = u32_at(20);
    let total_size = u64_at(24);
    let payload_offset = u64_at(32);
    let payload_size = u64_at(40);
    let mut name = [0u8; 64];
    name.copy_from_slice(&bytes[64..128]);
    let ty = TypeInfo { name_hash: u64_at(48), size: u32_at(56), align: u32_at(60), name };

    if total_size != actual_size {
        return Err(HeaderError::Corrupt(format!(
            "header says the segment is {total_size} bytes but it is {actual_size} bytes"
        )));
    }
    if payload_offset < HEADER_SIZE as u64 || payload_offset % 8 != 0 {
        return Err(HeaderError::Corrupt(format!("payload offset {payload_offset} is invalid")));
    }
    match payload_offset.checked_add(payload_size) {
        Some(end) if end <= total_size => {}
        _ => {
            return Err(HeaderError::Corrupt(format!(
                "payload ({payload_size} bytes at offset {payload_offset}) exceeds the segment ({total_size} bytes)"
            )))
        }
    }
    if usize::try_from(total_size).is_err() {
        return Err(HeaderError::Corrupt("segment larger than the address space".into()));
    }
    if let Some(spec) = spec {
        if kind != spec.kind {
            return Err(HeaderError::KindMismatch { expected: spec.kind, found: kind });
        }
        if !spec.ty.matches(&ty) {
            return Err(HeaderError::TypeMismatch { expected: Box::new(spec.ty), found: Box::new(ty) });
        }
        match spec.payload {
            PayloadSize::Exact(n) if n != payload_size => {
                return Err(HeaderError::SizeMismatch { expected: n, found: payload_size })
            }
            PayloadSize::AtLeast(n) if payload_size < n => {
                return Err(HeaderError::SizeMismatch { expected: n, found: payload_size })
            }
            _ => {}
        }
    }
    Ok(HeaderInfo {
        kind,
        creator_pid,
        payload_offset: payload_offset as usize,
        payload_size: payload_size as usize,
        ty,
    })
}

/// Builds the bytes of a header (with `init_state` 0: the creator publishes
/// [`READY`] separately, last).
pub(crate) fn encode_header(
    kind: ObjectKind,
    ty: &TypeInfo,
    creator_pid: u32,
    total_size: u64,
    payload_offset: u64,
    payload_size: u64,
) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&kind.code().to_le_bytes());
    // 16..20: init_state stays 0.
    b[20..24].copy_from_slice(&creator_pid.to_le_bytes());
    b[24..32].copy_from_slice(&total_size.to_le_bytes());
    b[32..40].copy_from_slice(&payload_offset.to_le_bytes());
    b[40..48].copy_from_slice(&payload_size.to_le_bytes());
    b[48..56].copy_from_slice(&ty.name_hash.to_le_bytes());
    b[56..60].copy_from_slice(&ty.size.to_le_bytes());
    b[60..64].copy_from_slice(&ty.align.to_le_bytes());
    b[64..128].copy_from_slice(&ty.name);
    b
}

/// The header's `init_state` word, the one header field accessed in place.
/// Only it gets a reference: the other fields are plain bytes another
/// process may write at any time, so they are read through
/// [`copy_header`] and never referenced.
///
/// # Safety
/// `base` points at the start of a mapped, 8-aligned header of at least
/// [`HEADER_SIZE`] bytes that stays mapped for `'a`.
pub(crate) unsafe fn init_state_word<'a>(base: std::ptr::NonNull<u8>) -> &'a AtomicU32 {
    // SAFETY: offset 16 (asserted above) is inside the header and 4-aligned;
    // the word is only ever accessed atomically, by every process.
    unsafe { &*(base.as_ptr().add(std::mem::offset_of!(Header, init_state)) as *const AtomicU32) }
}

/// Copies a mapped header into private memory with volatile 8-byte reads: a
/// peer may write it meanwhile, and the copy is validated afterwards, never
/// the shared bytes.
///
/// # Safety
/// As for [`init_state_word`].
pub(crate) unsafe fn copy_header(base: std::ptr::NonNull<u8>) -> [u8; HEADER_SIZE] {
    let mut out = [0u8; HEADER_SIZE];
    let words = base.as_ptr() as *const u64;
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        // SAFETY: word `i < HEADER_SIZE / 8` is mapped and 8-aligned (the
        // caller's promise); a volatile read of plain bytes, racing or not,
        // yields some value and nothing else.
        let w = unsafe { std::ptr::read_volatile(words.add(i)) };
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ObjectSpec {
        ObjectSpec { kind: ObjectKind::Array, ty: TypeInfo::of::<f64>(), payload: PayloadSize::Exact(64 + 80) }
    }

    fn good() -> [u8; HEADER_SIZE] {
        encode_header(ObjectKind::Array, &TypeInfo::of::<f64>(), 42, 4096, 128, 64 + 80)
    }

    #[test]
    fn roundtrip() {
        let h = parse_header(&good(), 4096, Some(&spec())).unwrap();
        assert_eq!(h.kind, ObjectKind::Array);
        assert_eq!(h.creator_pid, 42);
        assert_eq!(h.payload_offset, 128);
        assert_eq!(h.payload_size, 144);
        assert_eq!(h.ty.name(), "f64");
    }

    #[test]
    fn bad_magic_is_corrupt() {
        let mut b = good();
        b[0] ^= 0xff;
        assert!(matches!(parse_header(&b, 4096, None), Err(HeaderError::Corrupt(_))));
    }

    #[test]
    fn version_mismatch() {
        let mut b = good();
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(parse_header(&b, 4096, None), Err(HeaderError::VersionMismatch { expected: 1, found: 7 })));
    }

    #[test]
    fn size_disagreement_is_corrupt() {
        assert!(matches!(parse_header(&good(), 2048, None), Err(HeaderError::Corrupt(_))));
        let mut b = good();
        b[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_header(&b, 4096, None), Err(HeaderError::Corrupt(_))));
        let mut b = good();
        b[32..40].copy_from_slice(&8u64.to_le_bytes());
        assert!(matches!(parse_header(&b, 4096, None), Err(HeaderError::Corrupt(_))));
    }

    #[test]
    fn kind_type_and_size_mismatch() {
        let mut s = spec();
        s.kind = ObjectKind::Value;
        assert!(matches!(parse_header(&good(), 4096, Some(&s)), Err(HeaderError::KindMismatch { .. })));
        let mut s = spec();
        s.ty = TypeInfo::of::<u32>();
        match parse_header(&good(), 4096, Some(&s)) {
            Err(HeaderError::TypeMismatch { expected, found }) => {
                assert_eq!(expected.name(), "u32");
                assert_eq!(found.name(), "f64");
            }
            other => panic!("{other:?}"),
        }
        let mut s = spec();
        s.payload = PayloadSize::Exact(8);
        assert!(matches!(
            parse_header(&good(), 4096, Some(&s)),
            Err(HeaderError::SizeMismatch { expected: 8, found: 144 })
        ));
    }

    #[test]
    fn random_headers_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut b = good();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b[(x % 128) as usize] = (x >> 32) as u8;
            }
            let _ = parse_header(&b, x % 8192, Some(&spec()));
        }
    }

    #[test]
    fn long_type_names_truncate_on_char_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let t = TypeInfo::from_parts(1, 1, &long);
        assert_eq!(t.name().len(), 64);
        assert!(t.name().chars().all(|c| c == 'é'));
    }
}
