//! [`Manager`]: a server process that holds ordinary objects (dicts, lists,
//! queues, locks, ...) of any serde type and hands out typed proxies, like
//! Python's `multiprocessing.Manager()`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmproc::manager::Manager;
//!
//! fn add(n: &mut u64, by: u64) -> u64 {
//!     *n += by;
//!     *n
//! }
//!
//! let m = Manager::builder().register("add", add).start()?;
//! let d = m.dict::<String, u64>()?;
//! d.insert(&"apples".into(), &3)?;
//! assert_eq!(d.get(&"apples".into())?, Some(3));
//! // Atomic read-modify-write on the server (no lost updates between processes):
//! assert_eq!(d.update::<u64, u64>(&"apples".into(), "add", &2)?, 5);
//! // A proxy is serde: pass it to a child process as (part of) its argument.
//! let l = m.list::<u32>()?;
//! let child = shmproc::Process::builder(|l: shmproc::manager::ListProxy<u32>| l.push(&7).is_ok(), l.clone()).start()?;
//! assert!(child.join()?);
//! assert_eq!(l.snapshot()?, vec![7]);
//! m.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! ## How it works
//! The server is a [`Process`] running a loop that accepts connections on a
//! Unix socket in a private directory (mode 0700, beside a 0600 file holding a
//! random *local key*) and, when the builder is given an
//! [`address`](ManagerBuilder::address), on a TCP [`Listener`](crate::connection::Listener)
//! authenticated with the *authkey*. Values are stored as postcard bytes: the
//! server never knows their types; a type fingerprint (of the type name) on
//! every object and call refuses a proxy of another type
//! ([`ManagerError::TypeMismatch`]).
//!
//! **Locally** a proxy connects to the Unix socket, runs the mutual HMAC
//! handshake with the local key (read from the 0600 file: only the same
//! user can), and the server hands it one end of a fresh shared-memory
//! [`Pipe`] over the socket (`SCM_RIGHTS`); every call then goes
//! over the pipe (a few microseconds). **Remotely** (a process that called
//! [`Manager::connect`]) calls go over the authenticated TCP connection.
//! Each thread has its own connection per manager.
//!
//! ## Proxies as arguments, and the authkey
//! A proxy serializes as where the manager is (its local directory and TCP
//! address), the object id and the type fingerprint: **never a key**. A
//! process on the same host and of the same user (any child, whatever its
//! start method) reaches the manager through the local directory; proving
//! it may read the key file is what authenticates it. A process elsewhere
//! must be given the authkey out of band, with [`Manager::connect`]
//! ([`ManagerError::NoAuthkey`] otherwise). So a serialized proxy that leaks
//! (logged, sent over a network) grants nothing by itself.
//!
//! ## Failure
//! A server that dies (even mid-call) gives every proxy call
//! [`ManagerError::ManagerGone`], never a hang: the pipe notices its peer's
//! death, a socket sees end of stream. A client that dies costs the server
//! that client's connection; every lock, rlock and condition it held is
//! released. Over TCP, a peer whose host crashed or whose network went away
//! sends no end of stream: keepalive probes and `TCP_USER_TIMEOUT` declare it
//! gone after [`DEAD_PEER_TIMEOUT`](crate::connection::DEAD_PEER_TIMEOUT)
//! (30 s) of silence, with the same effect on either side. A client that sends anything that is not a request (garbage, an
//! oversized frame) is disconnected; the others are served on.
//!
//! Objects live as long as the manager (there is no reference counting of
//! proxies yet).

mod client;
mod proto;
mod proxy;
mod server;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use proxy::{
    BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockGuard, LockProxy, Named, NamespaceProxy,
    QueueProxy, RLockProxy, SemaphoreProxy, ValueProxy,
};

use crate::connection::Address;
use crate::pipe::{self, Pipe};
use crate::process::{child, Process, StartMethod};
use client::ManagerRef;
use proto::{Fault, Kind, Request, Response};
use server::{Control, Erased, FnEntry, ServerConfig};

/// How long `start` waits for the server to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a manager call (or start) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server is gone (killed, shut down) or unreachable: the connection
    /// was refused, or hung up or reset before or during the handshake.
    ManagerGone,
    /// Connecting failed (authentication refused, bad handshake, no pipe).
    Connect(String),
    /// A remote manager whose authkey this process was not given
    /// ([`Manager::connect`]).
    NoAuthkey {
        /// The manager's TCP address.
        address: String,
    },
    /// The server process could not be started.
    Start(String),
    /// A blocking call's timeout passed.
    Timeout,
    /// `get` on an empty queue within the timeout.
    Empty,
    /// `put` on a full queue within the timeout.
    Full,
    /// The proxy's type is not the object's (or a function's signature differs).
    TypeMismatch,
    /// No such object on this manager.
    NoSuchObject,
    /// Release of a lock this connection (thread) does not hold, or
    /// `wait`/`notify` without holding the condition's lock.
    NotOwner,
    /// A list index beyond the end.
    IndexOutOfRange,
    /// The barrier is broken (a party timed out or called `abort`).
    BrokenBarrier,
    /// A bounded semaphore released more times than acquired (Python's `ValueError`).
    TooManyReleases,
    /// No function of that name was registered with the manager.
    UnknownFunction(String),
    /// A registered function failed or panicked; the state is unchanged.
    Function(String),
    /// A value could not be encoded.
    Serialize(postcard::Error),
    /// A value could not be decoded as the proxy's type.
    Deserialize(postcard::Error),
    /// The server answered something unexpected.
    Protocol(&'static str),
    /// A request, or the reply to it, was longer than the manager's message
    /// limit (64 MiB). A request that was too large was not sent; for a reply
    /// the call has run (a read changed nothing, an `update`'s change stands)
    /// and only its answer was dropped. The connection stays usable, and the
    /// locks this thread holds stay held.
    TooLarge {
        /// Bytes in the message.
        len: u64,
        /// The limit.
        limit: u64,
    },
}

impl fmt::Display for ManagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManagerError::ManagerGone => f.write_str("the manager is gone"),
            ManagerError::Connect(e) => write!(f, "could not connect to the manager: {e}"),
            ManagerError::NoAuthkey { address } => {
                write!(f, "no authkey known for the manager at {address}: call Manager::connect first")
            }
            ManagerError::Start(e) => write!(f, "could not start the manager: {e}"),
            ManagerError::Timeout => f.write_str("timed out"),
            ManagerError::Empty => f.write_str("the queue is empty"),
            ManagerError::Full => f.write_str("the queue is full"),
            ManagerError::TypeMismatch => f.write_str("the proxy's type differs from the managed object's"),
            ManagerError::NoSuchObject => f.write_str("no such managed object"),
            ManagerError::NotOwner => f.write_str("this connection does not hold the lock"),
            ManagerError::IndexOutOfRange => f.write_str("list index out of range"),
            ManagerError::BrokenBarrier => f.write_str("the barrier is broken"),
            ManagerError::TooManyReleases => f.write_str("bounded semaphore released too many times"),
            ManagerError::UnknownFunction(n) => write!(f, "no function {n:?} is registered with the manager"),
            ManagerError::Function(e) => write!(f, "registered function failed: {e}"),
            ManagerError::Serialize(e) => write!(f, "could not serialize the value: {e}"),
            ManagerError::Deserialize(e) => write!(f, "could not deserialize the value: {e}"),
            ManagerError::Protocol(e) => write!(f, "manager protocol error: {e}"),
            ManagerError::TooLarge { len, limit } => {
                write!(f, "a manager message of {len} bytes exceeds the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ManagerError {}

impl From<Fault> for ManagerError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::NoSuchObject => ManagerError::NoSuchObject,
            Fault::TypeMismatch => ManagerError::TypeMismatch,
            Fault::WrongKind => ManagerError::Protocol("operation not supported by this object"),
            Fault::Timeout => ManagerError::Timeout,
            Fault::NotOwner => ManagerError::NotOwner,
            Fault::Empty => ManagerError::Empty,
            Fault::Full => ManagerError::Full,
            Fault::IndexOutOfRange => ManagerError::IndexOutOfRange,
            Fault::Broken => ManagerError::BrokenBarrier,
            Fault::UnknownFunction(n) => ManagerError::UnknownFunction(n),
            Fault::Function(e) => ManagerError::Function(e),
            Fault::TooMany => ManagerError::TooManyReleases,
            Fault::TooLarge { len, limit } => ManagerError::TooLarge { len, limit },
        }
    }
}

/// A type fingerprint: FNV-1a of the type's name.
pub(crate) fn fingerprint<T: ?Sized>() -> u64 {
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The type-erased trampoline of a registered `fn(&mut S, A) -> R`.
fn erased<S, A, R>(f: usize, state: &mut Option<Vec<u8>>, arg: &[u8]) -> Result<Vec<u8>, String>
where
    S: Serialize + DeserializeOwned + Default,
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `f` is the address of a `fn(&mut S, A) -> R` with these very
    // type parameters: `register` stores it beside this instantiation of the
    // trampoline (rebased for the server's image by the same offset scheme).
    let f = unsafe { std::mem::transmute::<usize, fn(&mut S, A) -> R>(f) };
    let mut s: S = match state {
        Some(b) => crate::decode::from_bytes(b).map_err(|e| format!("stored value: {e}"))?,
        None => S::default(),
    };
    let a: A = crate::decode::from_bytes(arg).map_err(|e| format!("argument: {e}"))?;
    let r = f(&mut s, a);
    let out = postcard::to_stdvec(&r).map_err(|e| format!("result: {e}"))?;
    *state = Some(postcard::to_stdvec(&s).map_err(|e| format!("state: {e}"))?);
    Ok(out)
}

/// Configures and starts a [`Manager`].
#[must_use = "a builder does nothing until start()"]
pub struct ManagerBuilder {
    method: Option<StartMethod>,
    name: Option<String>,
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    fns: Vec<FnEntry>,
}

impl fmt::Debug for ManagerBuilder {
    // The authkey is left out on purpose.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerBuilder")
            .field("method", &self.method)
            .field("name", &self.name)
            .field("address", &self.address)
            .field("functions", &self.fns.iter().map(|e| e.name.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ManagerBuilder {
    /// The server's start method (default: [`StartMethod::default`]).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The server process's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Also serve remote proxies on this TCP address (port 0: a free port,
    /// see [`Manager::address`]). Without it the manager is local only.
    pub fn address(mut self, addr: Address) -> Self {
        self.address = Some(addr);
        self
    }

    /// The key remote clients must prove they hold (default: 32 random bytes,
    /// see [`Manager::authkey`]).
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// Registers a server-side function by name, as Python's
    /// `BaseManager.register`: [`DictProxy::update`] and [`ValueProxy::update`]
    /// run it on the server, on the stored value (`S::default()` for a
    /// missing dict entry), atomically with respect to every other call.
    pub fn register<S, A, R>(mut self, name: &str, f: fn(&mut S, A) -> R) -> Self
    where
        S: Serialize + DeserializeOwned + Default + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let tramp = erased::<S, A, R> as Erased as usize;
        self.fns.retain(|e| e.name != name);
        self.fns.push(FnEntry {
            name: name.to_string(),
            fp: fingerprint::<(S, A, R)>(),
            tramp: child::offset_of(tramp),
            func: child::offset_of(f as usize),
        });
        self
    }

    /// Starts the server process and waits until it serves.
    pub fn start(self) -> Result<Manager, ManagerError> {
        let start = |what: &str, e: &dyn fmt::Display| ManagerError::Start(format!("{what}: {e}"));
        let tag = format!("{}-{:016x}", std::process::id(), random_u64());
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("shmproc-mgr-{tag}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| start("creating its directory", &e))?;
        let cleanup = DirGuard(Some(dir.clone()));
        let mut local_key = [0u8; 32];
        getrandom::fill(&mut local_key).map_err(|e| start("random key", &e))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("key"))
            .and_then(|mut f| f.write_all(&local_key))
            .map_err(|e| start("writing the key file", &e))?;
        let authkey = match self.authkey {
            Some(k) if !k.is_empty() => k,
            _ => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(|e| start("random key", &e))?;
                k
            }
        };
        let control_name = format!("shmproc-mgr-{tag}");
        let control = Pipe::builder()
            .name(control_name.clone())
            .ring_size(4096)
            .create()
            .map_err(|e| start("control pipe", &e))?;
        let cfg = ServerConfig {
            dir: dir.clone(),
            local_key: local_key.to_vec(),
            tcp: self.address,
            authkey: authkey.clone(),
            control: control_name.clone(),
            fns: self.fns,
        };
        let mut b = Process::builder(server::server_main, cfg).name(self.name.unwrap_or_else(|| "Manager".into()));
        if let Some(m) = self.method {
            b = b.start_method(m);
        }
        let started = b.start();
        let mut process = match started {
            Ok(p) => p,
            Err(e) => {
                let _ = crate::unlink(&control_name);
                return Err(start("starting the server", &e));
            }
        };
        let ready = wait_ready(&control, &mut process);
        let _ = crate::unlink(&control_name);
        let tcp = match ready {
            Ok(tcp) => tcp,
            Err(e) => {
                let _ = process.kill();
                let _ = process.join_timeout(Duration::from_secs(5));
                return Err(e);
            }
        };
        if let Some(a) = &tcp {
            client::remember_key(a, &authkey);
        }
        let mut cleanup = cleanup;
        cleanup.0 = None;
        Ok(Manager {
            mref: ManagerRef { dir: Some(dir), tcp },
            authkey,
            owner: Some(Owner { process, control, stamp: crate::sys::process_stamp() }),
        })
    }
}

fn wait_ready(
    control: &pipe::Connection,
    p: &mut Process<Result<(), String>>,
) -> Result<Option<Address>, ManagerError> {
    let until = Instant::now() + START_TIMEOUT;
    loop {
        match control.recv_timeout::<Control>(Duration::from_millis(50)) {
            Ok(Control::Ready { tcp }) => return Ok(tcp),
            Ok(Control::Failed(e)) => return Err(ManagerError::Start(e)),
            Ok(Control::Shutdown) => return Err(ManagerError::Start("unexpected message".into())),
            Err(pipe::RecvError::Timeout) => {
                if !p.is_alive() {
                    return Err(ManagerError::Start("the server process ended before it was ready".into()));
                }
                if Instant::now() > until {
                    return Err(ManagerError::Start("the server was not ready in time".into()));
                }
            }
            Err(e) => return Err(ManagerError::Start(format!("control pipe: {e}"))),
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // A failure leaves zeros: the name also holds the pid, and creation is
    // exclusive (create_new / O_EXCL), so a clash is an error, not a mix-up.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Removes the manager's directory unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            // Best effort: nothing to do about a directory we cannot remove.
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Owner {
    process: Process<Result<(), String>>,
    control: pipe::Connection,
    /// `process_stamp()` of the starting process: a forked copy of the
    /// handle does not stop the server.
    stamp: u64,
}

/// A running manager: creates managed objects and returns their proxies.
/// Dropping a manager this process started stops its server (as
/// [`shutdown`](Self::shutdown)).
pub struct Manager {
    mref: ManagerRef,
    authkey: Vec<u8>,
    owner: Option<Owner>,
}

impl fmt::Debug for Manager {
    // The authkey is left out on purpose.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("dir", &self.mref.dir)
            .field("address", &self.mref.tcp)
            .field("server_pid", &self.owner.as_ref().map(|o| o.process.pid()))
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts a local manager with default settings.
    pub fn start() -> Result<Manager, ManagerError> {
        Manager::builder().start()
    }

    /// A builder: start method, name, TCP address, authkey, functions.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder { method: None, name: None, address: None, authkey: None, fns: Vec::new() }
    }

    /// Connects to a manager served at `addr` (TCP) by another process,
    /// possibly on another host (Python's `BaseManager.connect`). Proxies
    /// received from elsewhere that name this address use `authkey` too.
    pub fn connect(addr: &Address, authkey: &[u8]) -> Result<Manager, ManagerError> {
        client::remember_key(addr, authkey);
        let m =
            Manager { mref: ManagerRef { dir: None, tcp: Some(addr.clone()) }, authkey: authkey.to_vec(), owner: None };
        // Connect now, so that a wrong key or address fails here.
        proxy::ping(&m.mref)?;
        Ok(m)
    }

    /// The TCP address remote clients connect to, if serving remotely.
    pub fn address(&self) -> Option<&Address> {
        self.mref.tcp.as_ref()
    }

    /// The authkey remote clients need.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// The server's pid, for a manager this process started.
    pub fn pid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.process.pid())
    }

    fn create(
        &self,
        name: Option<&str>,
        kind: Kind,
        fp: u64,
        n: u64,
        init: Vec<u8>,
    ) -> Result<(ManagerRef, u64), ManagerError> {
        let name = name.map(str::to_string);
        match client::call(&self.mref, &Request::Create { kind, fp, n, init, name })? {
            Response::Id(id) => Ok((self.mref.clone(), id)),
            Response::Fault(f) => Err(f.into()),
            _ => Err(ManagerError::Protocol("expected an object id")),
        }
    }

    /// Stops the server (a manager this process started) and waits for it.
    pub fn shutdown(mut self) -> Result<(), ManagerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ManagerError> {
        client::forget(&self.mref);
        let Some(mut o) = self.owner.take() else { return Ok(()) };
        if o.stamp != crate::sys::process_stamp() {
            return Ok(());
        }
        let _ = o.control.send(&Control::Shutdown);
        let r = match o.process.join_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ManagerError::Start(e)),
            Err(_) => {
                let _ = o.process.kill();
                let _ = o.process.join_timeout(Duration::from_secs(5));
                Ok(())
            }
        };
        if let Some(d) = &self.mref.dir {
            // The server removes it; this covers a server that was killed.
            let _ = std::fs::remove_dir_all(d);
        }
        r
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // Errors have nowhere to go from a destructor; `shutdown` reports them.
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits<T: Clone + Send + Sync + fmt::Debug + Serialize + DeserializeOwned + 'static>() {}

    #[test]
    fn proxies_are_clone_send_sync_debug_serde() {
        traits::<DictProxy<String, Vec<u8>>>();
        traits::<ListProxy<std::rc::Rc<u8>>>(); // even for a !Send element type
        traits::<NamespaceProxy>();
        traits::<ValueProxy<u64>>();
        traits::<QueueProxy<String>>();
        traits::<LockProxy>();
        traits::<RLockProxy>();
        traits::<SemaphoreProxy>();
        traits::<EventProxy>();
        traits::<ConditionProxy>();
        traits::<BarrierProxy>();
    }

    fn add(n: &mut u64, by: u32) -> u64 {
        *n += by as u64;
        *n
    }

    #[test]
    fn erased_function_round_trip_and_default_state() {
        let f = add as fn(&mut u64, u32) -> u64 as usize;
        let mut state = None;
        let out = erased::<u64, u32, u64>(f, &mut state, &postcard::to_stdvec(&5u32).unwrap()).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 5);
        let out = erased::<u64, u32, u64>(f, &mut state, &postcard::to_stdvec(&2u32).unwrap()).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 7);
        assert_eq!(postcard::from_bytes::<u64>(state.as_deref().unwrap()).unwrap(), 7);
        // A bad argument is an error and leaves the state alone.
        assert!(erased::<u64, u32, u64>(f, &mut state, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(postcard::from_bytes::<u64>(state.as_deref().unwrap()).unwrap(), 7);
    }

    #[test]
    fn fingerprints_differ_by_type() {
        assert_ne!(fingerprint::<u64>(), fingerprint::<u32>());
        assert_ne!(fingerprint::<(String, u64)>(), fingerprint::<(u64, String)>());
        assert_eq!(fingerprint::<Vec<u8>>(), fingerprint::<Vec<u8>>());
    }
}
