//! The client side: one connection per (thread, manager), made on first use
//! and dropped when the thread ends. Locally it is a shared-memory
//! [`Pipe`](crate::Pipe) handed over by the server; remotely an
//! authenticated TCP [`SocketConnection`].
//!
//! A connection is per thread because the server blocks a call (a lock
//! acquire, a queue get) until it completes: threads must not queue behind
//! each other, and lock ownership is per connection, so per thread (as
//! Python's proxies, which also connect once per thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::proto::{Request, Response};
use super::server::MAX_MESSAGE;
use super::ManagerError;
use crate::connection::{Address, Client, SocketConnection, HANDSHAKE_TIMEOUT};
use crate::pipe::{self, Pipe};
use crate::segment::Handle;
use crate::sys;
use crate::time::Deadline;

/// How to reach a manager: its private local directory (socket + key file,
/// same host, same user) and/or its TCP address. No secret in here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ManagerRef {
    pub dir: Option<PathBuf>,
    pub tcp: Option<Address>,
}

/// Authkeys of remote managers this process was told about
/// ([`Manager::connect`](super::Manager::connect), or started here).
/// Inherited by forked children; a child forked while another thread held
/// it starts from an empty keyring (a [`sys::ForkSafeMutex`]) rather than
/// wait for ever: its connections to every remote manager then fail with
/// `NoAuthkey` until it is told the keys again.
static KEYRING: sys::ForkSafeMutex<Vec<(Address, Vec<u8>)>> = sys::ForkSafeMutex::new(Vec::new(), Vec::new);

pub(crate) fn remember_key(addr: &Address, key: &[u8]) {
    let mut k = KEYRING.lock();
    k.retain(|(a, _)| a != addr);
    k.push((addr.clone(), key.to_vec()));
}

fn key_for(addr: &Address) -> Option<Vec<u8>> {
    let k = KEYRING.lock();
    k.iter().find(|(a, _)| a == addr).map(|(_, key)| key.clone())
}

enum Link {
    // Boxed: a pipe end is a few hundred bytes, a socket connection a few words.
    Pipe(Box<pipe::Connection>),
    Sock(SocketConnection),
}

impl Link {
    fn call(&self, req: &Request) -> Result<Response, ManagerError> {
        match self {
            Link::Pipe(c) => {
                c.send(req).map_err(|e| match e {
                    pipe::SendError::Serialize(e) => ManagerError::Serialize(e),
                    pipe::SendError::TooLarge { len, limit } => ManagerError::TooLarge { len, limit },
                    _ => ManagerError::ManagerGone,
                })?;
                c.recv().map_err(|e| match e {
                    pipe::RecvError::Deserialize(_) => ManagerError::Protocol("undecodable response"),
                    _ => ManagerError::ManagerGone,
                })
            }
            Link::Sock(c) => {
                c.send(req).map_err(|e| match e {
                    crate::connection::SendError::Serialize(e) => ManagerError::Serialize(e),
                    crate::connection::SendError::TooLarge { len, limit } => ManagerError::TooLarge { len, limit },
                    _ => ManagerError::ManagerGone,
                })?;
                c.recv().map_err(|e| match e {
                    crate::connection::RecvError::Deserialize(_) => ManagerError::Protocol("undecodable response"),
                    _ => ManagerError::ManagerGone,
                })
            }
        }
    }
}

struct Conns {
    stamp: u64,
    map: HashMap<ManagerRef, Rc<Link>>,
}

thread_local! {
    static CONNS: RefCell<Conns> = RefCell::new(Conns { stamp: 0, map: HashMap::new() });
}

fn link(m: &ManagerRef) -> Result<Rc<Link>, ManagerError> {
    let stamp = sys::process_stamp();
    let found = CONNS.with(|c| {
        let mut c = c.borrow_mut();
        if c.stamp != stamp {
            // Inherited over fork: the parent's connections are not ours.
            // Dropping them here closes nothing of the parent's (a pipe end
            // this process never used is left alone; a socket fd is ours).
            c.map.clear();
            c.stamp = stamp;
        }
        c.map.get(m).cloned()
    });
    if let Some(l) = found {
        return Ok(l);
    }
    let l = Rc::new(connect(m)?);
    CONNS.with(|c| c.borrow_mut().map.insert(m.clone(), l.clone()));
    Ok(l)
}

/// Drops this thread's connection to `m` (after a shutdown or a failure).
pub(crate) fn forget(m: &ManagerRef) {
    let _ = CONNS.try_with(|c| c.borrow_mut().map.remove(m));
}

pub(crate) fn call(m: &ManagerRef, req: &Request) -> Result<Response, ManagerError> {
    let l = link(m)?;
    let r = l.call(req);
    if matches!(r, Err(ManagerError::ManagerGone)) {
        forget(m);
    }
    r
}

fn connect(m: &ManagerRef) -> Result<Link, ManagerError> {
    let mut refused = None;
    if let Some(dir) = &m.dir {
        match local_key(dir) {
            Ok(Some((key, dir))) => return connect_local(&dir, &key),
            Ok(None) => {}
            Err(why) => refused = Some(why),
        }
    }
    match &m.tcp {
        Some(addr) => {
            let key = key_for(addr).ok_or_else(|| ManagerError::NoAuthkey { address: addr.to_string() })?;
            let mut c = Client::connect(addr, &key).map_err(connect_err)?;
            c.set_max_message(MAX_MESSAGE);
            Ok(Link::Sock(c))
        }
        None => Err(refused.map_or(ManagerError::ManagerGone, ManagerError::Connect)),
    }
}

/// The local key of the manager whose directory a proxy names, and the
/// directory itself, opened. The path came from another process (a proxy is
/// plain serialized data), so it is trusted only as far as a manager started
/// by this user could have made it: a real directory (not a symlink) owned by
/// our effective uid, closed to others (`Manager::start` creates it 0700),
/// holding a regular 32-byte `key` file of ours. The directory is opened
/// once (`O_NOFOLLOW`) and everything after goes through that fd (the key by
/// `openat`, the socket by `/proc/self/fd/N/sock`), so swapping a directory
/// on the path after the checks changes nothing; the key is opened without
/// following links or blocking (a FIFO there cannot stall us). `Ok(None)`:
/// no such directory or key (the manager is gone), or another user's
/// directory (reachable over TCP only); `Err`: present but not one a manager
/// of ours made.
fn local_key(dir: &std::path::Path) -> Result<Option<(Vec<u8>, std::fs::File)>, String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    const KEY_LEN: u64 = 32;
    let absent = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let refuse = |what: &str| format!("refusing manager directory {}: {what}", dir.display());
    let d = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(dir)
    {
        Ok(d) => d,
        Err(e) if absent(&e) => return Ok(None),
        // ELOOP (a symlink) or ENOTDIR (not a directory).
        Err(e) => return Err(refuse(&e.to_string())),
    };
    let meta = d.metadata().map_err(|e| refuse(&e.to_string()))?;
    let me = sys::effective_uid();
    if meta.uid() != me {
        // Another user's manager: not ours to open locally.
        return Ok(None);
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(&format!("mode {:o} is open to other users", meta.mode() & 0o7777)));
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let f = match rustix::fs::openat(&d, "key", flags, Mode::empty()) {
        Ok(f) => std::fs::File::from(f),
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(refuse(&format!("its key: {e}"))),
    };
    let km = f.metadata().map_err(|e| refuse(&format!("its key: {e}")))?;
    if !km.is_file() || km.uid() != me || km.len() != KEY_LEN {
        return Err(refuse(&format!("its key is not a {KEY_LEN}-byte file of uid {me}")));
    }
    let mut key = vec![0u8; KEY_LEN as usize];
    (&f).read_exact(&mut key).map_err(|e| refuse(&format!("its key: {e}")))?;
    Ok(Some((key, d)))
}

/// A refused connection, and a handshake the server hung up on or reset, mean
/// the server is gone (a server killed while a client connects closes the
/// accepted socket mid-handshake); a wrong key, a peer that does not speak
/// the handshake, or a local failure (the random source) is a connection error.
fn connect_err(e: crate::connection::ConnectError) -> ManagerError {
    use crate::connection::{AuthError, ConnectError};
    use std::io::ErrorKind;
    let hung_up = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        )
    };
    match e {
        ConnectError::Io(_) | ConnectError::Auth(AuthError::Disconnected) => ManagerError::ManagerGone,
        ConnectError::Auth(AuthError::Io(ref io)) if hung_up(io) => ManagerError::ManagerGone,
        e => ManagerError::Connect(e.to_string()),
    }
}

/// Connects to the manager's socket in the directory `local_key` opened.
fn connect_local(dir: &std::fs::File, key: &[u8]) -> Result<Link, ManagerError> {
    let sock = format!("/proc/self/fd/{}/sock", dir.as_raw_fd());
    let conn = Client::connect(&Address::Unix(sock.into()), key).map_err(connect_err)?;
    conn.send(&Request::Hello { pipe: true }).map_err(|_| ManagerError::ManagerGone)?;
    if conn.has_buffered() {
        return Err(ManagerError::Protocol("the server sent data before the pipe"));
    }
    let fd = conn.stream().fd();
    match sys::poll_readable([fd], Deadline::after(Some(HANDSHAKE_TIMEOUT))) {
        Ok([true]) => {}
        _ => return Err(ManagerError::Protocol("no pipe from the server")),
    }
    let mut byte = [0u8; 1];
    let (n, fds) = sys::recv_with_fds(fd, &mut byte).map_err(|_| ManagerError::ManagerGone)?;
    if n == 0 {
        // End of stream: the server closed the socket (it died) before the pipe.
        return Err(ManagerError::ManagerGone);
    }
    if n != 1 || byte != *b"P" || fds.len() != 1 {
        return Err(ManagerError::Protocol("expected one pipe fd from the server"));
    }
    let pipe = Pipe::builder()
        .open_handle(&Handle::Fd(fds[0].as_raw_fd()))
        .map_err(|e| ManagerError::Connect(format!("opening the server's pipe: {e}")))?;
    drop(fds);
    conn.send(&Request::Claimed).map_err(|_| ManagerError::ManagerGone)?;
    Ok(Link::Pipe(Box::new(pipe)))
}

#[cfg(test)]
mod tests {
    use super::local_key;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("shmproc-test-mgrdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
        d
    }

    fn key_file(dir: &std::path::Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("key")).unwrap();
        std::fs::write(dir.join("key"), bytes).unwrap();
    }

    /// A proxy's directory comes from another process: only a directory a
    /// manager of this user could have made yields a key.
    #[test]
    fn a_proxy_directory_is_trusted_only_as_a_manager_of_ours_makes_it() {
        let good = scratch("good");
        key_file(&good, &[7; 32]);
        assert_eq!(local_key(&good).map(|k| k.map(|(key, _)| key)), Ok(Some(vec![7; 32])));
        assert!(matches!(local_key(&good.join("absent")), Ok(None)));

        // Open to others.
        let open = scratch("open");
        key_file(&open, &[7; 32]);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(local_key(&open).unwrap_err().contains("refusing manager directory"));

        // The directory, or the key, a symlink to a good one.
        let link = std::env::temp_dir().join(format!("shmproc-test-mgrdir-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(local_key(&link).is_err());
        let keylink = scratch("keylink");
        std::os::unix::fs::symlink(good.join("key"), keylink.join("key")).unwrap();
        assert!(local_key(&keylink).is_err());

        // A FIFO as the key: refused at once, not a read that blocks.
        let fifo = scratch("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, fifo.join("key"), rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let (done, r) = std::sync::mpsc::channel();
        let f2 = fifo.clone();
        std::thread::spawn(move || done.send(local_key(&f2)).unwrap());
        let got = r.recv_timeout(std::time::Duration::from_secs(10)).expect("local_key returned");
        assert!(got.is_err(), "{got:?}");

        // A key of the wrong size (a huge file would be read whole before).
        let big = scratch("big");
        key_file(&big, &[1; 4096]);
        assert!(local_key(&big).is_err());

        let _ = std::fs::remove_file(&link);
        for d in [good, open, keylink, fifo, big] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
