//! [`Pipe`]: a pair of duplex [`Connection`]s over shared memory, like Python's
//! `multiprocessing.Pipe()`, and [`wait`] on several connections at once.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::Pipe;
//! let (a, b) = Pipe::new()?; // inherited by children forked later
//! a.send(&("job", 42u32))?;
//! let (what, n): (String, u32) = b.recv()?;
//! assert_eq!((what.as_str(), n), ("job", 42));
//! b.send_bytes(b"done")?;
//! assert_eq!(a.recv_bytes()?, b"done");
//! # Ok(()) }
//! ```
//!
//! ## Algorithm
//! One segment holds both directions. Each direction is a single-producer,
//! single-consumer byte ring (Lamport's ring with cached indices: each side
//! keeps its own index privately, publishes it with a release store, and
//! reloads the other side's index only when its cached copy runs out) carrying
//! frames: a 64-byte aligned 8-byte header (a 16-bit tag and a 48-bit length)
//! followed by the message (from 1 KiB up, on the next cache line), padded to
//! 64 bytes. A frame that fits the ring with a line to spare is written body
//! first and header last, and the producer zeroes the header word after it
//! beforehand (a kilobytes-long window of them at a time), so a receiver that
//! finds the ring empty polls the *next header word*, on the line the frame
//! arrives in, rather than the producer's index on a line of its own: a
//! message costs about one line transfer, as a bare atomic ping-pong does,
//! instead of two in a row (the sequence-word idea of Vyukov's and the
//! Disruptor's slots, or Aeron's frame length written last, for a byte ring).
//! A message larger than that streams through the ring in fragments, followed
//! by the producer's index; the receiver assembles it and never returns a
//! partial message. The byte layout is in `SAFETY.md`, section 7.
//!
//! Waiting is adaptive: a receiver (or a sender facing a full ring) polls for
//! a short spin budget, then raises a *sleeper flag* (a futex word) and sleeps
//! on it. The other side only makes a system call when it sees that flag
//! raised. The flag store and the re-check on one side, and the publication
//! and the flag load on the other, are separated by SeqCst fences, so at
//! least one side sees the other's store: no lost wake-up.
//!
//! ## Ends and peer death
//! Each end has a slot naming the process that holds it (pid and start time),
//! so a third process cannot take an end from a live holder. Dropping a
//! [`Connection`] closes its end, and the peer sees [`RecvError::Disconnected`]
//! once it has drained every complete message; [`SendError::Disconnected`] on
//! the other side. A process that dies without dropping is detected through a
//! pid-reuse-proof liveness check (sleepers wake in bounded slices to re-check
//! it); a message it was in the middle of sending is discarded, never returned.
//!
//! Each end keeps a **holder count**, as the kernel counts an fd's references:
//! every process holding a copy of the end (its creator or opener, and every
//! child forked while a copy lived, registered by the fork handler) counts
//! until it drops its copy or dies (a liveness check discounts dead holders).
//! The peer is told `Disconnected` exactly when the count reaches zero. A
//! waiter never counts its own inherited, unused copy of the end it waits on,
//! so "create, fork, the child uses `b`, the parent drops `b` and uses `a`"
//! ends cleanly on both sides. Only one process *uses* an end at a time: a
//! child adopts its copy on first use. For a launched binary (not a fork),
//! hand the end over with [`Connection::hand_over`]: the end stays held (by a
//! ticket, while this process lives) until the binary opens it.
//! [`Connection::close`] closes the end for every holder at once.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Process A:                                  // Process B (another binary):
//! use shmproc::Pipe;                             // let b = Pipe::builder().name("jobs").open()?;
//! let a = Pipe::builder().name("jobs").create()?; // let n: u64 = b.recv()?;
//! a.send(&7u64)?;                                // b.send_bytes(b"ok")?;
//! assert_eq!(a.recv_bytes()?, b"ok");
//! # Ok(()) }
//! ```

mod connection;
pub(crate) mod ring;
mod typed;
mod wait;

use std::fmt;
use std::time::Duration;

pub(crate) use connection::forget_inherited_before_exec;
pub use connection::Connection;
pub use wait::wait;

use crate::error::OpenError;
use crate::object::Builder;

/// Default capacity of each ring: 1 MiB.
pub const DEFAULT_RING_SIZE: usize = 1 << 20;
/// Default largest message: 1 GiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;
/// Default spin budget before a waiting side goes to sleep.
pub const DEFAULT_SPIN: Duration = crate::wait::PIPE_SPIN;

/// Which end of a pipe a [`Connection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The first end: the creator's (`create`), the first of `pair`/`new`. In a
    /// one-way pipe, the receiving end.
    A,
    /// The second end: the one `open`/`open_handle` connects. In a one-way
    /// pipe, the sending end.
    B,
}

impl End {
    pub(crate) fn index(self) -> usize {
        match self {
            End::A => 0,
            End::B => 1,
        }
    }
}

/// Entry point: [`Pipe::new`] for an anonymous pair, [`Pipe::builder`] for the rest.
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// An anonymous duplex pair with default settings, usable across `fork` (or
    /// handed to a launched binary with [`Connection::handle`]). Named after
    /// Python's `Pipe()`, it returns the two ends rather than a `Pipe`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<(Connection, Connection), OpenError> {
        Pipe::builder().pair()
    }

    /// A builder: ring size, message limit, one-way, name, permissions.
    pub fn builder() -> PipeBuilder {
        Builder::default()
    }
}

/// Builder for a [`Pipe`]: `pair()` (both ends here), `create()` (end A of a
/// named pipe) and `open()`/`open_handle()` (end B, or the end chosen with
/// [`end`](Builder::end); `open` fails with [`OpenError::PermissionDenied`] if a
/// live process other than our parent holds that end, while after
/// `open_handle` a child takes its end over from its launching parent).
pub type PipeBuilder = Builder<Connection>;

/// The pipe builder's own settings. Not part of the API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub(crate) ring_size: usize,
    pub(crate) max_message: u64,
    pub(crate) duplex: bool,
    pub(crate) spin: Duration,
    pub(crate) end: End,
}

impl Default for PipeConfig {
    fn default() -> Self {
        PipeConfig {
            ring_size: DEFAULT_RING_SIZE,
            max_message: DEFAULT_MAX_MESSAGE,
            duplex: true,
            spin: DEFAULT_SPIN,
            end: End::B,
        }
    }
}

impl Builder<Connection> {
    /// Capacity of each ring in bytes, rounded up to a power of two (at least
    /// 128; default 1 MiB). The sender keeps one 64-byte line free after its
    /// data, so a message goes in whole when its frame fits in `ring_size - 64`
    /// bytes: 8 bytes of header and the message (from 1 KiB up, 64 bytes and
    /// the message), padded to a multiple of 64. A larger one streams through
    /// in fragments as the receiver reads (its send then waits for the
    /// receiver, whatever its timeout, once the first fragment is in).
    pub fn ring_size(mut self, bytes: usize) -> Self {
        self.params.ring_size = bytes;
        self
    }

    /// Largest message accepted, in bytes (default 1 GiB, at most 2^48 - 1).
    /// Sending more is [`SendError::TooLarge`]; a frame header claiming more is
    /// [`RecvError::Corrupt`].
    pub fn max_message(mut self, bytes: u64) -> Self {
        self.params.max_message = bytes;
        self
    }

    /// `false`: a one-way pipe; end A only receives and end B only sends, like
    /// `multiprocessing.Pipe(duplex=False)` (default `true`).
    pub fn duplex(mut self, duplex: bool) -> Self {
        self.params.duplex = duplex;
        self
    }

    /// How long a waiting side polls shared memory before it sleeps on a futex
    /// (default 5 us). Longer lowers latency under load and burns more CPU.
    /// Process-local: each side sets its own.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.params.spin = spin;
        self
    }

    /// Which end `open`/`open_handle` claim (default [`End::B`]).
    pub fn end(mut self, end: End) -> Self {
        self.params.end = end;
        self
    }

    /// Creates the pipe and returns both ends `(a, b)`, held by this process.
    /// Anonymous unless a name was set.
    pub fn pair(self) -> Result<(Connection, Connection), OpenError> {
        connection::create(&self.opts, &self.params, true)
    }

    /// Creates a named pipe and returns end A; another process [`open`](Self::open)s end B.
    pub fn create(self) -> Result<Connection, OpenError> {
        if self.opts.name.is_none() {
            return Err(OpenError::invalid("create needs a name; use pair() or Pipe::new() for an anonymous pipe"));
        }
        connection::create(&self.opts, &self.params, false).map(|(a, _)| a)
    }
}

/// Why sending failed. The message was not delivered (for a message that was
/// being streamed in fragments when the peer vanished, the receiver discards
/// the part it got).
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The other end was closed or its process died.
    Disconnected,
    /// The message is longer than the pipe's limit.
    TooLarge {
        /// Bytes in the message.
        len: u64,
        /// The pipe's [`PipeBuilder::max_message`].
        limit: u64,
    },
    /// This end of a one-way pipe cannot send.
    NotWritable,
    /// Another live process holds this end (a copy of the connection was taken over).
    EndInUse {
        /// The holder's pid.
        pid: u32,
    },
    /// The ring's shared indices hold values no correct peer writes.
    Corrupt {
        /// What is wrong.
        reason: &'static str,
    },
    /// `send`: the value could not be serialized.
    Serialize(postcard::Error),
    /// `send_timeout` / `send_bytes_timeout`: no room for the message before
    /// the timeout; nothing was sent.
    Timeout,
}

/// Why receiving did not return a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvError {
    /// The other end was closed or its process died, and every complete message
    /// has been received (Python's `EOFError`).
    Disconnected,
    /// The timeout passed first. A message being streamed in is kept and
    /// completed by the next call.
    Timeout,
    /// `recv_bytes_into`: the buffer is too small; the message is kept for the
    /// next call.
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
    },
    /// This end of a one-way pipe cannot receive.
    NotReadable,
    /// Another live process holds this end.
    EndInUse {
        /// The holder's pid.
        pid: u32,
    },
    /// A frame header or shared index holds a value no correct peer writes (a
    /// bad tag, a length over the limit, an index beyond the ring). The
    /// connection stays broken.
    Corrupt {
        /// What is wrong.
        reason: &'static str,
    },
    /// `recv`: the message is not a valid encoding of the requested type.
    Deserialize(postcard::Error),
    /// `recv`: a value of the requested type decoded from only the first
    /// `used` of the message's `len` bytes, so the message was sent as another
    /// type (it was consumed). `send`/`recv` check only what the encoding
    /// shows; [`Connection::send_value`]/[`Connection::recv_value`] carry the
    /// type's fingerprint and always tell (`TypeMismatch`).
    TrailingBytes {
        /// Bytes the decoded value used.
        used: usize,
        /// Bytes in the message.
        len: usize,
    },
    /// `recv_value`: the message was sent (with `send_value`) as another type,
    /// or without a type (`send`, `send_bytes`); it was consumed.
    TypeMismatch {
        /// The fingerprint of the requested type ([`crate::queue::fingerprint_of`]).
        expected: u64,
        /// The message's fingerprint (0: a message too short to carry one).
        found: u64,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("the other end of the pipe is closed"),
            SendError::TooLarge { len, limit } => {
                write!(f, "message of {len} bytes exceeds the pipe's limit of {limit} bytes")
            }
            SendError::NotWritable => f.write_str("this end of a one-way pipe cannot send"),
            SendError::EndInUse { pid } => write!(f, "this end of the pipe is held by live process {pid}"),
            SendError::Corrupt { reason } => write!(f, "corrupt pipe: {reason}"),
            SendError::Serialize(e) => write!(f, "could not serialize the value: {e}"),
            SendError::Timeout => f.write_str("timed out waiting for room in the pipe"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Serialize(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str("the other end of the pipe is closed and nothing is left to read"),
            RecvError::Timeout => f.write_str("timed out waiting for a message"),
            RecvError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the message needs {needed} bytes (it is kept for the next call)")
            }
            RecvError::NotReadable => f.write_str("this end of a one-way pipe cannot receive"),
            RecvError::EndInUse { pid } => write!(f, "this end of the pipe is held by live process {pid}"),
            RecvError::Corrupt { reason } => write!(f, "corrupt pipe: {reason}"),
            RecvError::Deserialize(e) => write!(f, "could not deserialize the message: {e}"),
            RecvError::TrailingBytes { used, len } => {
                write!(f, "the message was sent as another type: the requested type used {used} of its {len} bytes")
            }
            RecvError::TypeMismatch { expected, found } => write!(
                f,
                "the message is of another type (fingerprint {found:#018x}, the receiver expects {expected:#018x})"
            ),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Deserialize(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
