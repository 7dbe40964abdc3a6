//! [`Listener`] / [`Client`]: authenticated message connections over TCP and
//! Unix sockets, like Python's `multiprocessing.connection`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::connection::{Address, Client, Listener};
//! let listener = Listener::bind(&"127.0.0.1:0".parse()?, b"secret key")?;
//! let addr = listener.address().clone();
//! let t = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let conn = listener.accept()?;
//!     let n: u64 = conn.recv()?;
//!     conn.send(&(n + 1))?;
//!     Ok(())
//! });
//! let conn = Client::connect(&addr, b"secret key")?;
//! conn.send(&41u64)?;
//! assert_eq!(conn.recv::<u64>()?, 42);
//! # t.join().unwrap().unwrap(); Ok(()) }
//! ```
//!
//! ## Wire format
//! Every message is one frame: an 8-byte little-endian length, then that many
//! bytes (raw for `send_bytes`, postcard for `send`). The receiver checks the
//! length against its limit ([`DEFAULT_MAX_MESSAGE`], or
//! [`SocketConnection::set_max_message`]) **before** it allocates anything: a
//! frame claiming more closes the connection with [`RecvError::TooLarge`].
//!
//! ## Authentication
//! Before any message is accepted, both sides prove that they hold the same
//! `authkey`, each with a fresh challenge (see [`auth`](self#authentication)
//! and `SAFETY.md`, "Manager and connections"):
//!
//! 1. the listener sends 32 random bytes (`getrandom`); the client answers with
//!    `HMAC-SHA256(authkey, "client" ‖ challenge)`; the listener checks it in
//!    constant time (`hmac`'s `verify_slice`) and answers `WELCOME` or `FAILURE`;
//! 2. the same in the other direction, with the label `"server"`: the client
//!    only trusts a listener that knows the key too.
//!
//! The labels make an answer from one direction useless in the other (no
//! reflection). The whole handshake runs under a timeout
//! ([`HANDSHAKE_TIMEOUT`]) and messages of at most 256 bytes. A wrong key is
//! [`AuthError::WrongKey`] on the side that checked it and
//! [`AuthError::Rejected`] on the side that was refused.
//!
//! **What it does not protect**: nothing is encrypted and, after the
//! handshake, messages carry no MAC. Anyone who can read the traffic sees it;
//! anyone who can inject into or take over an established TCP stream can send
//! messages as the peer. Use it on a trusted network (loopback, a private
//! network) or through a tunnel (SSH, WireGuard, stunnel). TLS (rustls) would
//! be a follow-up, not offered here. The authkey is never sent.

mod auth;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use auth::AuthError;

use crate::sys;
use crate::time::Deadline;

/// Default largest message a connection accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;
/// How long the authentication handshake may take, each side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the frame header (little-endian `u64` length).
pub const FRAME_HEADER: usize = 8;
/// Initial (and usual) size of the receive buffer.
const READ_CHUNK: usize = 64 << 10;
/// The default of [`SocketConnection::set_dead_peer_timeout`]: a TCP peer that
/// stops answering for this long is treated as gone.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a [`Listener`] listens: `"127.0.0.1:6000"` (TCP) or `"/path/sock"`
/// (a Unix socket: anything containing a `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Address {
    /// A TCP address (`ip:port`; port 0 picks a free one at bind).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError(pub String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an address (\"ip:port\" or a path with '/'): {:?}", self.0)
    }
}

impl std::error::Error for AddressError {}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>().map(Address::Tcp).map_err(|_| AddressError(s.to_string()))
    }
}

/// Why `connect` or `accept` gave no connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError {
    /// The socket system call failed (refused, no such path, ...).
    Io(io::Error),
    /// The handshake failed: wrong key, timeout, or a peer that does not speak it.
    Auth(AuthError),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connection failed: {e}"),
            ConnectError::Auth(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) => Some(e),
            ConnectError::Auth(e) => Some(e),
        }
    }
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        ConnectError::Io(e)
    }
}

impl From<AuthError> for ConnectError {
    fn from(e: AuthError) -> Self {
        ConnectError::Auth(e)
    }
}

/// Why sending failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The peer closed the connection (or it was closed after an error).
    Disconnected,
    /// The message is longer than the limit.
    TooLarge {
        /// Bytes in the message.
        len: u64,
        /// The connection's limit.
        limit: u64,
    },
    /// The socket failed.
    Io(io::Error),
    /// `send`: the value could not be serialized.
    Serialize(postcard::Error),
}

/// Why receiving did not return a message.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer closed the connection (Python's `EOFError`), possibly in the
    /// middle of a frame (the partial frame is discarded).
    Disconnected,
    /// The timeout passed first; a partly received frame is kept.
    Timeout,
    /// A frame header claimed more than the limit: nothing was allocated, and
    /// the connection is closed (its stream cannot be resynchronised).
    TooLarge {
        /// The claimed length.
        len: u64,
        /// The connection's limit.
        limit: u64,
    },
    /// The socket failed; the connection is closed.
    Io(io::Error),
    /// `recv`: the message is not a valid encoding of the requested type (the
    /// connection stays usable).
    Deserialize(postcard::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("the connection is closed"),
            SendError::TooLarge { len, limit } => {
                write!(f, "message of {len} bytes exceeds the limit of {limit} bytes")
            }
            SendError::Io(e) => write!(f, "socket error: {e}"),
            SendError::Serialize(e) => write!(f, "could not serialize the value: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str("the connection is closed and nothing is left to read"),
            RecvError::Timeout => f.write_str("timed out waiting for a message"),
            RecvError::TooLarge { len, limit } => {
                write!(f, "frame of {len} bytes exceeds the limit of {limit} bytes: connection closed")
            }
            RecvError::Io(e) => write!(f, "socket error: {e}"),
            RecvError::Deserialize(e) => write!(f, "could not deserialize the message: {e}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A connected stream socket.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => (&*s).write_all(buf),
            Stream::Unix(s) => (&*s).write_all(buf),
        }
    }
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }
    fn shutdown(&self) {
        // Errors (already closed) do not matter: the point is that the peer
        // sees EOF and we stop reading.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

#[derive(Debug)]
struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Sticky: the stream was closed after an error or EOF.
    closed: bool,
}

/// One end of an authenticated socket connection: messages as bytes or serde
/// values, [`poll`](Self::poll). Made by [`Listener::accept`] and
/// [`Client::connect`]. `Send + Sync`: concurrent senders (and receivers)
/// are serialised, so messages never interleave.
pub struct SocketConnection {
    stream: Stream,
    rx: Mutex<RxBuf>,
    tx: Mutex<Vec<u8>>,
    max_message: u64,
}

impl fmt::Debug for SocketConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketConnection")
            .field("stream", &self.stream)
            .field("max_message", &self.max_message)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Buffers stay consistent across a panic (positions advance after copies).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`], giving up at `deadline`: another thread's receive holds the
/// receive buffer across its blocking read, possibly for ever, and a timed
/// receive must not wait for it longer than its own timeout.
fn lock_by<T>(m: &Mutex<T>, deadline: Deadline) -> Option<MutexGuard<'_, T>> {
    if deadline.at().is_none() {
        return Some(lock(m));
    }
    let mut nap = Duration::from_micros(50);
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if deadline.expired() => return None,
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(nap.min(deadline.remaining().unwrap_or(nap)));
                nap = (nap * 2).min(Duration::from_millis(2));
            }
        }
    }
}

impl SocketConnection {
    pub(crate) fn new(stream: Stream) -> SocketConnection {
        if let Stream::Tcp(s) = &stream {
            // Small request/response messages: do not let Nagle delay them.
            let _ = s.set_nodelay(true);
            // Best effort: a socket that refuses keeps TCP's own (hours-long)
            // bound on unacknowledged data.
            let _ = sys::tcp_dead_peer_timeout(s.as_fd(), DEAD_PEER_TIMEOUT);
        }
        SocketConnection {
            stream,
            rx: Mutex::new(RxBuf { buf: vec![0; READ_CHUNK], start: 0, end: 0, closed: false }),
            tx: Mutex::new(Vec::with_capacity(256)),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// Sets the largest message accepted (and sent), in bytes. A receive
    /// allocates as the bytes arrive, not for the length a header claims.
    /// Limits above `isize::MAX - 8` (what a buffer can hold) are lowered to it.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit.min(isize::MAX as u64 - FRAME_HEADER as u64);
    }

    /// How long a TCP peer may stay silent to keepalive probes, or leave sent
    /// data unacknowledged, before a blocked receive ends with
    /// [`RecvError::Disconnected`] (and sends fail): the bound on waiting for
    /// a peer whose host crashed or whose network went away without closing
    /// the connection. Default [`DEAD_PEER_TIMEOUT`]; at least 2 s are
    /// useful (probes go in whole seconds, at most 32767 s apart);
    /// `Duration::ZERO` turns the watch off. It does not limit an idle but
    /// live peer: probes are answered by its kernel (older kernels may also
    /// drop a peer that keeps its receive window closed, not reading, for
    /// that long). A no-op on Unix sockets, whose peer is on this host: its
    /// death closes the socket.
    pub fn set_dead_peer_timeout(&self, timeout: Duration) -> io::Result<()> {
        match &self.stream {
            Stream::Tcp(s) => sys::tcp_dead_peer_timeout(s.as_fd(), timeout),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The largest message accepted.
    pub fn max_message(&self) -> u64 {
        self.max_message
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Whether bytes are buffered here that the kernel no longer holds.
    pub(crate) fn has_buffered(&self) -> bool {
        let rx = lock(&self.rx);
        rx.end > rx.start
    }

    /// Sends `data` as one message.
    pub fn send_bytes(&self, data: &[u8]) -> Result<(), SendError> {
        self.send_limited(data, self.max_message)
    }

    fn send_limited(&self, data: &[u8], limit: u64) -> Result<(), SendError> {
        let len = data.len() as u64;
        if len > limit {
            return Err(SendError::TooLarge { len, limit });
        }
        let mut tx = lock(&self.tx);
        if data.len() <= READ_CHUNK {
            // One write (one segment on the wire) for small messages.
            tx.clear();
            tx.extend_from_slice(&len.to_le_bytes());
            tx.extend_from_slice(data);
            self.write(&tx)
        } else {
            self.write(&len.to_le_bytes())?;
            self.write(data)
        }
    }

    /// Sends `value` encoded with postcard as one message.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let mut tx = lock(&self.tx);
        tx.clear();
        tx.extend_from_slice(&[0; FRAME_HEADER]);
        let mut buf = postcard::to_extend(value, std::mem::take(&mut *tx)).map_err(SendError::Serialize)?;
        let len = (buf.len() - FRAME_HEADER) as u64;
        if len > self.max_message {
            *tx = buf;
            return Err(SendError::TooLarge { len, limit: self.max_message });
        }
        buf[..FRAME_HEADER].copy_from_slice(&len.to_le_bytes());
        let r = self.write(&buf);
        *tx = buf;
        r
    }

    fn write(&self, data: &[u8]) -> Result<(), SendError> {
        self.stream.write_all(data).map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected => {
                SendError::Disconnected
            }
            _ => SendError::Io(e),
        })
    }

    /// Receives one message, blocking until it is complete.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.recv_frame(Deadline::after(None), self.max_message)
    }

    /// [`recv_bytes`](Self::recv_bytes) with a timeout.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        self.recv_frame(Deadline::after(Some(timeout)), self.max_message)
    }

    /// Receives one message and decodes it as a `T` (postcard).
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let b = self.recv_bytes()?;
        crate::decode::from_bytes(&b).map_err(RecvError::Deserialize)
    }

    /// [`recv`](Self::recv) with a timeout.
    pub fn recv_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvError> {
        let b = self.recv_bytes_timeout(timeout)?;
        crate::decode::from_bytes(&b).map_err(RecvError::Deserialize)
    }

    /// Whether a receive would not block (data buffered or readable, or the
    /// peer gone), waiting up to `timeout` (`Duration::ZERO`: just look).
    pub fn poll(&self, timeout: Duration) -> bool {
        // Busy: another thread is inside a receive (and owns what is
        // buffered); then only the socket itself is looked at.
        let rx = match self.rx.try_lock() {
            Ok(rx) => Some(rx),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if rx.is_some_and(|rx| rx.end > rx.start || rx.closed) {
            return true;
        }
        sys::poll_readable([self.stream.fd()], Deadline::after(Some(timeout))).map(|[r]| r).unwrap_or(true)
    }

    /// Closes the connection: the peer's receives see end of stream.
    pub fn close(self) {
        self.stream.shutdown();
    }

    fn fail(&self, rx: &mut RxBuf) {
        rx.closed = true;
        rx.start = 0;
        rx.end = 0;
        self.stream.shutdown();
    }

    pub(crate) fn recv_frame(&self, deadline: Deadline, limit: u64) -> Result<Vec<u8>, RecvError> {
        let Some(mut guard) = lock_by(&self.rx, deadline) else { return Err(RecvError::Timeout) };
        let rx = &mut *guard;
        loop {
            if rx.closed {
                return Err(RecvError::Disconnected);
            }
            let have = rx.end - rx.start;
            let mut need = FRAME_HEADER;
            if have >= FRAME_HEADER {
                let mut h = [0u8; FRAME_HEADER];
                h.copy_from_slice(&rx.buf[rx.start..rx.start + FRAME_HEADER]);
                let len = u64::from_le_bytes(h);
                // The limit is checked before anything is allocated for the frame.
                if len > limit {
                    self.fail(rx);
                    return Err(RecvError::TooLarge { len, limit });
                }
                // `len <= limit <= isize::MAX - FRAME_HEADER` (set_max_message).
                need = FRAME_HEADER + len as usize;
                if have >= need {
                    let msg = rx.buf[rx.start + FRAME_HEADER..rx.start + need].to_vec();
                    rx.start += need;
                    if rx.start == rx.end {
                        rx.start = 0;
                        rx.end = 0;
                        // Shrink a buffer that grew for one large message.
                        if rx.buf.len() > 4 * READ_CHUNK {
                            rx.buf = vec![0; READ_CHUNK];
                        }
                    }
                    return Ok(msg);
                }
            }
            // Room for the rest of the frame: move what we have to the front,
            // then grow if it still does not fit. Growth follows the bytes
            // that actually arrive (at most doubling per read), never the
            // header's claim alone: a peer that sends only headers makes us
            // allocate nothing beyond what it sent.
            if rx.buf.len() - rx.start < need {
                rx.buf.copy_within(rx.start..rx.end, 0);
                rx.end -= rx.start;
                rx.start = 0;
                if rx.buf.len() < need && rx.end == rx.buf.len() {
                    let grown = rx.buf.len().saturating_mul(2).max(READ_CHUNK).min(need);
                    rx.buf.resize(grown, 0);
                }
            } else if rx.end == rx.buf.len() {
                rx.buf.copy_within(rx.start..rx.end, 0);
                rx.end -= rx.start;
                rx.start = 0;
            }
            if deadline.at().is_some() {
                match sys::poll_readable([self.stream.fd()], deadline) {
                    Ok([true]) => {}
                    Ok([false]) => return Err(RecvError::Timeout),
                    Err(e) => {
                        self.fail(rx);
                        return Err(RecvError::Io(e));
                    }
                }
            }
            let end = rx.end;
            match self.stream.read(&mut rx.buf[end..]) {
                Ok(0) => {
                    self.fail(rx);
                    return Err(RecvError::Disconnected);
                }
                Ok(n) => rx.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // SO_RCVTIMEO (the handshake's read bound) ran out.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(RecvError::Timeout),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    // ETIMEDOUT: keepalive or TCP_USER_TIMEOUT gave up on a
                    // peer that stopped answering (see `set_dead_peer_timeout`).
                    self.fail(rx);
                    return Err(RecvError::Disconnected);
                }
                Err(e) => {
                    self.fail(rx);
                    return Err(match e.kind() {
                        io::ErrorKind::ConnectionReset => RecvError::Disconnected,
                        _ => RecvError::Io(e),
                    });
                }
            }
        }
    }
}

impl AsFd for SocketConnection {
    /// The socket, for `poll`/`select` with other fds. Reading or writing it
    /// directly bypasses the framing.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.fd()
    }
}

#[derive(Debug)]
enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Accepts authenticated connections, like Python's
/// `multiprocessing.connection.Listener`. A Unix socket file it created is
/// removed when it is dropped.
pub struct Listener {
    kind: ListenerKind,
    address: Address,
    authkey: Vec<u8>,
}

impl fmt::Debug for Listener {
    // The authkey is left out on purpose.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("address", &self.address).finish_non_exhaustive()
    }
}

fn check_key(authkey: &[u8]) -> io::Result<()> {
    if authkey.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty authkey authenticates nothing"));
    }
    Ok(())
}

impl Listener {
    /// Binds `addr` (TCP port 0 picks a free port: see [`address`](Self::address)).
    /// Every connection must prove it knows `authkey` (non-empty).
    pub fn bind(addr: &Address, authkey: &[u8]) -> io::Result<Listener> {
        check_key(authkey)?;
        let (kind, address) = match addr {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let real = l.local_addr()?;
                (ListenerKind::Tcp(l), Address::Tcp(real))
            }
            Address::Unix(p) => (ListenerKind::Unix(UnixListener::bind(p)?), Address::Unix(p.clone())),
        };
        Ok(Listener { kind, address, authkey: authkey.to_vec() })
    }

    /// The bound address (with the real port for TCP port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a connection and authenticates it (both directions, under
    /// [`HANDSHAKE_TIMEOUT`]). A client with the wrong key gives
    /// `Err(ConnectError::Auth(AuthError::WrongKey))`; call `accept` again
    /// for the next client.
    pub fn accept(&self) -> Result<SocketConnection, ConnectError> {
        let s = self.accept_unauthenticated()?;
        server_handshake(&s, &self.authkey)?;
        Ok(s)
    }

    /// Accepts without the handshake: the caller runs [`server_handshake`]
    /// (the manager does it on the client's own thread).
    pub(crate) fn accept_unauthenticated(&self) -> io::Result<SocketConnection> {
        let stream = match &self.kind {
            ListenerKind::Tcp(l) => Stream::Tcp(l.accept()?.0),
            ListenerKind::Unix(l) => Stream::Unix(l.accept()?.0),
        };
        Ok(SocketConnection::new(stream))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(p) = &self.address {
            // Best effort: the path may already be gone.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The server side of the mutual handshake on a fresh connection.
pub(crate) fn server_handshake(conn: &SocketConnection, authkey: &[u8]) -> Result<(), AuthError> {
    with_handshake_timeout(conn, |c, by| {
        auth::deliver_challenge(c, authkey, auth::Role::Client, by)?;
        auth::answer_challenge(c, authkey, auth::Role::Server, by)
    })
}

/// The client side of the mutual handshake.
pub(crate) fn client_handshake(conn: &SocketConnection, authkey: &[u8]) -> Result<(), AuthError> {
    with_handshake_timeout(conn, |c, by| {
        auth::answer_challenge(c, authkey, auth::Role::Client, by)?;
        auth::deliver_challenge(c, authkey, auth::Role::Server, by)
    })
}

fn with_handshake_timeout(
    conn: &SocketConnection,
    f: impl FnOnce(&SocketConnection, Deadline) -> Result<(), AuthError>,
) -> Result<(), AuthError> {
    // Reads share one deadline for the whole handshake (a peer that answers
    // each message just in time cannot stretch it); writes are bounded by this.
    conn.stream.set_timeouts(Some(HANDSHAKE_TIMEOUT)).map_err(AuthError::Io)?;
    let r = f(conn, Deadline::after(Some(HANDSHAKE_TIMEOUT)));
    if r.is_err() {
        conn.stream.shutdown();
        return r;
    }
    conn.stream.set_timeouts(None).map_err(AuthError::Io)
}

/// Connects to a [`Listener`], like Python's `multiprocessing.connection.Client`.
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Connects to `addr` and runs the mutual handshake with `authkey`.
    pub fn connect(addr: &Address, authkey: &[u8]) -> Result<SocketConnection, ConnectError> {
        check_key(authkey)?;
        let stream = match addr {
            Address::Tcp(a) => Stream::Tcp(TcpStream::connect_timeout(a, HANDSHAKE_TIMEOUT)?),
            Address::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        };
        let conn = SocketConnection::new(stream);
        client_handshake(&conn, authkey)?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests;
