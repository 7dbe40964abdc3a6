//! The server process: one thread per accepted client, all objects behind one
//! process-local lock, blocking calls (lock acquire, queue get, event and
//! condition waits, barriers) waiting on one `Condvar` in bounded slices so a
//! client that disconnects mid-wait is noticed.
//!
//! Every client connection has an id; locks record the id of the connection
//! that holds them, and when a connection ends (closed, its process died, or
//! it sent something malformed) every lock it held is released.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::proto::{Fault, Kind, Micros, Op, Request, Response};
use crate::connection::{self, Address, Listener, SocketConnection, HANDSHAKE_TIMEOUT};
use crate::pipe::{self, Pipe};
use crate::process::child;
use crate::sys;

/// Ring size of the shared-memory pipe a local client gets.
pub(crate) const LOCAL_RING: usize = 64 << 10;
/// Largest request or response.
pub(crate) const MAX_MESSAGE: u64 = 64 << 20;
/// How often a blocked call checks that its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(100);

/// A registered function, type-erased: (`fn` address, state, argument) ->
/// result. The state is `None` for a missing dict entry.
pub(crate) type Erased = fn(usize, &mut Option<Vec<u8>>, &[u8]) -> Result<Vec<u8>, String>;

/// A registered function as it travels to the server: offsets from the
/// executable's anchor (the server may be another exec of the same binary).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FnEntry {
    pub name: String,
    pub fp: u64,
    pub tramp: i64,
    pub func: i64,
}

/// What the server process is started with. Travels over the process's
/// private argument channel (memory of a fork, or a memfd for Spawn).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct ServerConfig {
    pub dir: PathBuf,
    pub local_key: Vec<u8>,
    pub tcp: Option<Address>,
    pub authkey: Vec<u8>,
    pub control: String,
    pub fns: Vec<FnEntry>,
}

impl std::fmt::Debug for ServerConfig {
    // The keys are left out on purpose.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("dir", &self.dir)
            .field("tcp", &self.tcp)
            .field("control", &self.control)
            .field("fns", &self.fns)
            .finish_non_exhaustive()
    }
}

/// Parent <-> server control messages.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    Ready { tcp: Option<Address> },
    Failed(String),
    Shutdown,
}

struct Registered {
    fp: u64,
    tramp: Erased,
    func: usize,
}

enum Obj {
    Dict(BTreeMap<Vec<u8>, Vec<u8>>),
    List(Vec<Vec<u8>>),
    Namespace(BTreeMap<String, (u64, Vec<u8>)>),
    Value(Vec<u8>),
    Queue {
        items: VecDeque<Vec<u8>>,
        max: u64,
    },
    Lock(Option<u64>),
    RLock {
        owner: Option<u64>,
        count: u64,
    },
    /// Value and, for a bounded semaphore, the bound.
    Semaphore(u64, Option<u64>),
    Event(bool),
    Condition {
        owner: Option<u64>,
        count: u64,
        waiting: VecDeque<u64>,
        woken: HashSet<u64>,
    },
    Barrier {
        parties: u64,
        count: u64,
        generation: u64,
        broken: bool,
    },
}

struct Entry {
    fp: u64,
    obj: Obj,
}

#[derive(Default)]
struct State {
    objects: HashMap<u64, Entry>,
    next_id: u64,
    next_ticket: u64,
    /// Named objects: name -> (id, kind).
    names: HashMap<String, (u64, Kind)>,
    /// Calls blocked on the condvar (notify only when someone waits).
    waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    fns: HashMap<String, Registered>,
    next_client: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a registered function is caught; the state stays valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a client is connected.
enum Link {
    // Boxed: a pipe end is a few hundred bytes, a socket connection a few words.
    Pipe(Box<pipe::Connection>),
    Sock(SocketConnection),
}

impl Link {
    fn recv(&self) -> Option<Vec<u8>> {
        match self {
            Link::Pipe(c) => c.recv_bytes().ok(),
            Link::Sock(c) => c.recv_bytes().ok(),
        }
    }
    /// Sends a reply; one over the message limit is answered with
    /// `Fault::TooLarge` instead, and the connection goes on. False: the
    /// client is gone.
    fn send(&self, r: &Response) -> bool {
        let too_large = match self {
            Link::Pipe(c) => match c.send(r) {
                Ok(()) => return true,
                Err(pipe::SendError::TooLarge { len, limit }) => Fault::TooLarge { len, limit },
                Err(_) => return false,
            },
            Link::Sock(c) => match c.send(r) {
                Ok(()) => return true,
                Err(crate::connection::SendError::TooLarge { len, limit }) => Fault::TooLarge { len, limit },
                Err(_) => return false,
            },
        };
        let r = Response::Fault(too_large);
        match self {
            Link::Pipe(c) => c.send(&r).is_ok(),
            Link::Sock(c) => c.send(&r).is_ok(),
        }
    }
    /// The client sent more or went away while a call of its was blocked.
    fn gone(&self) -> bool {
        match self {
            Link::Pipe(c) => c.ready_now(true),
            Link::Sock(c) => c.poll(Duration::ZERO),
        }
    }
}

/// The server's entry point (the target of the manager's `Process`).
pub(crate) fn server_main(cfg: ServerConfig) -> Result<(), String> {
    let control = Pipe::builder().name(cfg.control.clone()).open().map_err(|e| format!("control pipe: {e}"))?;
    match start(&cfg) {
        Ok((shared, tcp)) => {
            let _ = control.send(&Control::Ready { tcp });
            // Serve until told to stop or until the owner is gone.
            loop {
                match control.recv::<Control>() {
                    Ok(Control::Shutdown) => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            drop(shared);
            let _ = std::fs::remove_dir_all(&cfg.dir);
            let _ = control.send(&Control::Shutdown);
            Ok(())
        }
        Err(e) => {
            let _ = control.send(&Control::Failed(e.clone()));
            Err(e)
        }
    }
}

fn resolve(fns: &[FnEntry]) -> Result<HashMap<String, Registered>, String> {
    let mut out = HashMap::new();
    for f in fns {
        let (Some(t), Some(func)) = (child::address_at(f.tramp), child::address_at(f.func)) else {
            return Err(format!("registered function {:?} is not in this executable", f.name));
        };
        // SAFETY: `t` is an `Erased` trampoline's address from a process running this
        // same executable (checked by the process layer), rebased from the anchor
        // and checked to lie in this image.
        let tramp = unsafe { std::mem::transmute::<usize, Erased>(t) };
        out.insert(f.name.clone(), Registered { fp: f.fp, tramp, func });
    }
    Ok(out)
}

fn start(cfg: &ServerConfig) -> Result<(Arc<Shared>, Option<Address>), String> {
    let fns = resolve(&cfg.fns)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        cv: Condvar::new(),
        fns,
        next_client: AtomicU64::new(1),
    });
    let local = Listener::bind(&Address::Unix(cfg.dir.join("sock")), &cfg.local_key)
        .map_err(|e| format!("binding the local socket: {e}"))?;
    spawn_acceptor(local, shared.clone(), cfg.local_key.clone(), true)?;
    let mut tcp = None;
    if let Some(addr) = &cfg.tcp {
        let l = Listener::bind(addr, &cfg.authkey).map_err(|e| format!("binding {addr}: {e}"))?;
        tcp = Some(l.address().clone());
        spawn_acceptor(l, shared.clone(), cfg.authkey.clone(), false)?;
    }
    Ok((shared, tcp))
}

/// Connections of one listener still in their handshake (each on its own
/// thread, for up to `HANDSHAKE_TIMEOUT`); more are closed at once, so that a
/// flood of connections that never authenticate cannot take every thread or
/// file descriptor of the server from its clients.
const MAX_HANDSHAKES: usize = 64;

/// Counts a connection out of the handshake when its thread is done with it.
struct Handshaking(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_acceptor(l: Listener, shared: Arc<Shared>, key: Vec<u8>, local: bool) -> Result<(), String> {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("shmproc-mgr-accept".into())
        .spawn(move || loop {
            match l.accept_unauthenticated() {
                Ok(conn) => {
                    if pending.fetch_add(1, Ordering::Relaxed) >= MAX_HANDSHAKES {
                        pending.fetch_sub(1, Ordering::Relaxed);
                        drop(conn);
                        continue;
                    }
                    let guard = Handshaking(pending.clone());
                    let (sh, k) = (shared.clone(), key.clone());
                    // The handshake runs on the client's own thread, so a slow
                    // or hostile client cannot stall the others.
                    let _ = std::thread::Builder::new()
                        .name("shmproc-mgr-client".into())
                        .spawn(move || client_thread(sh, conn, &k, local, guard));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        })
        .map(|_| ())
        .map_err(|e| format!("starting the accept thread: {e}"))
}

fn client_thread(sh: Arc<Shared>, mut conn: SocketConnection, key: &[u8], local: bool, handshaking: Handshaking) {
    let ok = connection::server_handshake(&conn, key).is_ok();
    drop(handshaking);
    if !ok {
        return; // refused: nothing from it was read as a request
    }
    conn.set_max_message(MAX_MESSAGE);
    let client = sh.next_client.fetch_add(1, Ordering::Relaxed);
    let link = if local {
        match local_link(conn) {
            Some(l) => l,
            None => return,
        }
    } else {
        Link::Sock(conn)
    };
    serve(&sh, &link, client);
    drop(link);
    release_client(&sh, client);
}

/// A local client says whether it wants a shared-memory pipe; if so, one end
/// of a fresh anonymous pipe goes to it over the socket (`SCM_RIGHTS`).
fn local_link(conn: SocketConnection) -> Option<Link> {
    let hello: Request = conn.recv_timeout(HANDSHAKE_TIMEOUT).ok()?;
    match hello {
        Request::Hello { pipe: false } => Some(Link::Sock(conn)),
        Request::Hello { pipe: true } => {
            let (a, b) = Pipe::builder().ring_size(LOCAL_RING).max_message(MAX_MESSAGE).pair().ok()?;
            let fd = sys::dup_cloexec(b.segment().fd()).ok()?;
            // Free end B before the client can try to claim it; until it says
            // it has, keep the socket (its end of EOF tells us it died).
            b.hand_over();
            sys::send_with_fds(conn.stream().fd(), b"P", &[fd.as_fd()]).ok()?;
            drop(fd);
            match conn.recv_timeout::<Request>(HANDSHAKE_TIMEOUT) {
                Ok(Request::Claimed) => Some(Link::Pipe(Box::new(a))),
                _ => {
                    a.close();
                    None
                }
            }
        }
        _ => None,
    }
}

fn serve(sh: &Shared, link: &Link, client: u64) {
    while let Some(bytes) = link.recv() {
        // Anything that is not a request closes this client's connection.
        let Ok(req) = crate::decode::from_bytes::<Request>(&bytes) else { return };
        let resp = match req {
            Request::Create { kind, fp, n, init, name } => create(sh, kind, fp, n, init, name),
            Request::Call { id, fp, op } => match call(sh, link, client, id, fp, op) {
                Ok(r) => r,
                Err(f) => Response::Fault(f),
            },
            Request::Hello { .. } | Request::Claimed => return,
        };
        if !link.send(&resp) {
            return;
        }
    }
}

fn create(sh: &Shared, kind: Kind, fp: u64, n: u64, init: Vec<u8>, name: Option<String>) -> Response {
    let obj = match kind {
        Kind::Dict => Obj::Dict(BTreeMap::new()),
        Kind::List => Obj::List(Vec::new()),
        Kind::Namespace => Obj::Namespace(BTreeMap::new()),
        Kind::Value => Obj::Value(init),
        Kind::Queue => Obj::Queue { items: VecDeque::new(), max: n },
        Kind::Lock => Obj::Lock(None),
        Kind::RLock => Obj::RLock { owner: None, count: 0 },
        Kind::Semaphore => Obj::Semaphore(n, None),
        Kind::BoundedSemaphore => Obj::Semaphore(n, Some(n)),
        Kind::Event => Obj::Event(false),
        Kind::Condition => Obj::Condition { owner: None, count: 0, waiting: VecDeque::new(), woken: HashSet::new() },
        Kind::Barrier if n == 0 => return Response::Fault(Fault::WrongKind),
        Kind::Barrier => Obj::Barrier { parties: n, count: 0, generation: 0, broken: false },
    };
    let mut st = sh.lock();
    if let Some(n) = &name {
        if let Some(&(id, k)) = st.names.get(n) {
            return match st.objects.get(&id) {
                Some(e) if e.fp == fp && k == kind => Response::Id(id),
                _ => Response::Fault(Fault::TypeMismatch),
            };
        }
    }
    st.next_id += 1;
    let id = st.next_id;
    st.objects.insert(id, Entry { fp, obj });
    if let Some(n) = name {
        st.names.insert(n, (id, kind));
    }
    Response::Id(id)
}

fn release_client(sh: &Shared, client: u64) {
    let mut st = sh.lock();
    for e in st.objects.values_mut() {
        match &mut e.obj {
            Obj::Lock(owner) if *owner == Some(client) => *owner = None,
            Obj::RLock { owner, count } | Obj::Condition { owner, count, .. } if *owner == Some(client) => {
                *owner = None;
                *count = 0;
            }
            _ => {}
        }
    }
    drop(st);
    sh.cv.notify_all();
}

fn obj(st: &mut State, id: u64) -> Result<&mut Obj, Fault> {
    st.objects.get_mut(&id).map(|e| &mut e.obj).ok_or(Fault::NoSuchObject)
}

fn deadline(t: Micros) -> Option<Instant> {
    t.map(|us| Instant::now() + Duration::from_micros(us))
}

/// Runs `attempt` until it gives a result, the deadline passes
/// (`Fault::Timeout`) or the client goes away (also `Timeout`: nobody reads
/// the answer). Waits on the condvar in slices of at most [`CLIENT_CHECK`].
///
/// For calls that only look (an event's flag, a barrier's generation) or
/// whose result a dead client may keep (a put); see [`block_taking`].
fn block<'a, T>(
    sh: &'a Shared,
    link: &Link,
    st: MutexGuard<'a, State>,
    until: Option<Instant>,
    attempt: impl FnMut(&mut State) -> Result<Option<T>, Fault>,
) -> (MutexGuard<'a, State>, Result<T, Fault>) {
    block_with(sh, link, st, until, attempt, None::<fn(&mut State, T)>)
}

/// [`block`] for calls that take something (an item, a permit, a lock, a
/// notification): one found after waiting is handed out only if the client
/// is still there (one liveness check per such result), since a client
/// killed while it waited will never read the answer. Otherwise `undo` puts
/// it back, and the answer is `Timeout`.
fn block_taking<'a, T>(
    sh: &'a Shared,
    link: &Link,
    st: MutexGuard<'a, State>,
    until: Option<Instant>,
    attempt: impl FnMut(&mut State) -> Result<Option<T>, Fault>,
    undo: impl FnOnce(&mut State, T),
) -> (MutexGuard<'a, State>, Result<T, Fault>) {
    block_with(sh, link, st, until, attempt, Some(undo))
}

fn block_with<'a, T, U: FnOnce(&mut State, T)>(
    sh: &'a Shared,
    link: &Link,
    mut st: MutexGuard<'a, State>,
    until: Option<Instant>,
    mut attempt: impl FnMut(&mut State) -> Result<Option<T>, Fault>,
    mut undo: Option<U>,
) -> (MutexGuard<'a, State>, Result<T, Fault>) {
    let mut last_check = Instant::now();
    let mut waited = false;
    loop {
        match attempt(&mut st) {
            Ok(Some(v)) if waited && undo.is_some() && link.gone() => {
                if let Some(u) = undo.take() {
                    u(&mut st, v);
                }
                return (st, Err(Fault::Timeout));
            }
            Ok(Some(v)) => return (st, Ok(v)),
            Ok(None) => {}
            Err(f) => return (st, Err(f)),
        }
        let now = Instant::now();
        let slice = match until {
            Some(d) if d <= now => return (st, Err(Fault::Timeout)),
            Some(d) => (d - now).min(CLIENT_CHECK),
            None => CLIENT_CHECK,
        };
        st.waiters += 1;
        st = sh.cv.wait_timeout(st, slice).unwrap_or_else(|e| e.into_inner()).0;
        st.waiters -= 1;
        waited = true;
        if last_check.elapsed() >= CLIENT_CHECK {
            last_check = Instant::now();
            if link.gone() {
                return (st, Err(Fault::Timeout));
            }
        }
    }
}

fn wrong() -> Fault {
    Fault::WrongKind
}

fn call(sh: &Shared, link: &Link, client: u64, id: u64, fp: u64, op: Op) -> Result<Response, Fault> {
    let st = sh.lock();
    match st.objects.get(&id) {
        None => return Err(Fault::NoSuchObject),
        Some(e) if e.fp != fp => return Err(Fault::TypeMismatch),
        Some(_) => {}
    }
    let (st, r) = call_locked(sh, link, client, id, op, st);
    // Any call may have freed what a blocked call waits for.
    let wake = st.waiters > 0;
    drop(st);
    if wake {
        sh.cv.notify_all();
    }
    r
}

fn apply(sh: &Shared, func: &str, fp: u64, state: &mut Option<Vec<u8>>, arg: &[u8]) -> Result<Vec<u8>, Fault> {
    let f = sh.fns.get(func).ok_or_else(|| Fault::UnknownFunction(func.to_string()))?;
    if f.fp != fp {
        return Err(Fault::TypeMismatch);
    }
    let mut work = state.clone();
    let r = catch_unwind(AssertUnwindSafe(|| (f.tramp)(f.func, &mut work, arg)))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Fault::Function(format!("{func} panicked: {msg}"))
        })?
        .map_err(Fault::Function)?;
    // Only a function that returned changes the state.
    *state = work;
    Ok(r)
}

#[allow(clippy::too_many_lines)]
fn call_locked<'a>(
    sh: &'a Shared,
    link: &Link,
    client: u64,
    id: u64,
    op: Op,
    mut st: MutexGuard<'a, State>,
) -> (MutexGuard<'a, State>, Result<Response, Fault>) {
    let o = match obj(&mut st, id) {
        Ok(o) => o,
        Err(f) => return (st, Err(f)),
    };
    let r = match (o, op) {
        // ---- collections
        (Obj::Dict(d), Op::Len) => Ok(Response::Num(d.len() as u64)),
        (Obj::List(l), Op::Len) => Ok(Response::Num(l.len() as u64)),
        (Obj::Queue { items, .. }, Op::Len) => Ok(Response::Num(items.len() as u64)),
        (Obj::Namespace(n), Op::Len) => Ok(Response::Num(n.len() as u64)),
        (Obj::Dict(d), Op::Clear) => Ok(Response::Unit).inspect(|_| d.clear()),
        (Obj::List(l), Op::Clear) => Ok(Response::Unit).inspect(|_| l.clear()),
        (Obj::Queue { items, .. }, Op::Clear) => Ok(Response::Unit).inspect(|_| items.clear()),
        (Obj::Dict(d), Op::Snapshot) => Ok(Response::Pairs(d.iter().map(|(k, v)| (k.clone(), v.clone())).collect())),
        (Obj::List(l), Op::Snapshot) => Ok(Response::Items(l.clone())),
        (Obj::Queue { items, .. }, Op::Snapshot) => Ok(Response::Items(items.iter().cloned().collect())),
        (Obj::Namespace(n), Op::Snapshot) => {
            Ok(Response::Fields(n.iter().map(|(k, (f, v))| (k.clone(), *f, v.clone())).collect()))
        }
        (Obj::Dict(d), Op::Get(k)) => Ok(Response::Maybe(d.get(&k).cloned())),
        (Obj::Dict(d), Op::Insert(k, v)) => Ok(Response::Maybe(d.insert(k, v))),
        (Obj::Dict(d), Op::Remove(k)) => Ok(Response::Maybe(d.remove(&k))),
        (Obj::Dict(d), Op::Contains(k)) => Ok(Response::Bool(d.contains_key(&k))),
        (Obj::Dict(d), Op::Keys) => Ok(Response::Items(d.keys().cloned().collect())),
        (Obj::Dict(d), Op::ExtendPairs(p)) => Ok(Response::Unit).inspect(|_| d.extend(p)),
        (Obj::Dict(d), Op::Apply { key: Some(k), func, fp, arg }) => {
            let mut cur = d.get(&k).cloned();
            let r = apply(sh, &func, fp, &mut cur, &arg);
            if let (Ok(_), Some(v)) = (&r, cur) {
                d.insert(k, v);
            }
            r.map(Response::Bytes)
        }
        (Obj::Value(v), Op::Apply { key: None, func, fp, arg }) => {
            let mut cur = Some(std::mem::take(v));
            let r = apply(sh, &func, fp, &mut cur, &arg);
            *v = cur.unwrap_or_default();
            r.map(Response::Bytes)
        }
        (Obj::List(l), Op::Push(v)) => Ok(Response::Unit).inspect(|_| l.push(v)),
        (Obj::List(l), Op::Pop) => Ok(Response::Maybe(l.pop())),
        (Obj::List(l), Op::ExtendItems(v)) => Ok(Response::Unit).inspect(|_| l.extend(v)),
        (Obj::List(l), Op::Index(i)) => Ok(Response::Maybe(l.get(i as usize).cloned())),
        (Obj::List(l), Op::SetIndex(i, v)) => match l.get_mut(i as usize) {
            Some(slot) => Ok(Response::Bytes(std::mem::replace(slot, v))),
            None => Err(Fault::IndexOutOfRange),
        },
        (Obj::Value(v), Op::Load) => Ok(Response::Bytes(v.clone())),
        (Obj::Value(v), Op::Store(n)) => Ok(Response::Bytes(std::mem::replace(v, n))),
        (Obj::Namespace(n), Op::GetAttr(name, fp)) => match n.get(&name) {
            Some((f, _)) if *f != fp => Err(Fault::TypeMismatch),
            x => Ok(Response::Maybe(x.map(|(_, v)| v.clone()))),
        },
        (Obj::Namespace(n), Op::SetAttr(name, fp, v)) => Ok(Response::Unit).inspect(|_| {
            n.insert(name, (fp, v));
        }),
        (Obj::Namespace(n), Op::DelAttr(name)) => Ok(Response::Bool(n.remove(&name).is_some())),
        // ---- queue
        (Obj::Queue { .. }, Op::Put(item, t)) => {
            let mut item = Some(item);
            let (g, r) = block(sh, link, st, deadline(t), |s| match obj(s, id)? {
                Obj::Queue { items, max } if *max == 0 || (items.len() as u64) < *max => {
                    items.push_back(item.take().unwrap_or_default());
                    Ok(Some(Response::Unit))
                }
                _ => Ok(None),
            });
            return (g, r.map_err(|f| if f == Fault::Timeout { Fault::Full } else { f }));
        }
        (Obj::Queue { .. }, Op::Take(t)) => {
            let (g, r) = block_taking(
                sh,
                link,
                st,
                deadline(t),
                |s| match obj(s, id)? {
                    Obj::Queue { items, .. } => Ok(items.pop_front().map(Response::Bytes)),
                    _ => Err(wrong()),
                },
                |s, taken| {
                    if let (Ok(Obj::Queue { items, .. }), Response::Bytes(b)) = (obj(s, id), taken) {
                        items.push_front(b);
                    }
                },
            );
            return (g, r.map_err(|f| if f == Fault::Timeout { Fault::Empty } else { f }));
        }
        // ---- locks
        (Obj::Lock(_) | Obj::RLock { .. } | Obj::Condition { .. } | Obj::Semaphore(..), Op::Acquire(t)) => {
            let (g, r) = block_taking(
                sh,
                link,
                st,
                deadline(t),
                |s| {
                    Ok(match obj(s, id)? {
                        Obj::Lock(owner @ None) => {
                            *owner = Some(client);
                            Some(())
                        }
                        Obj::RLock { owner, count } | Obj::Condition { owner, count, .. }
                            if owner.is_none() || *owner == Some(client) =>
                        {
                            *owner = Some(client);
                            *count += 1;
                            Some(())
                        }
                        Obj::Semaphore(n, _) if *n > 0 => {
                            *n -= 1;
                            Some(())
                        }
                        _ => None,
                    })
                },
                |s, ()| match obj(s, id) {
                    Ok(Obj::Lock(owner)) => *owner = None,
                    Ok(Obj::RLock { owner, count } | Obj::Condition { owner, count, .. }) => {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            *owner = None;
                        }
                    }
                    Ok(Obj::Semaphore(n, _)) => *n = n.saturating_add(1),
                    _ => {}
                },
            );
            return match r {
                Ok(()) => (g, Ok(Response::Bool(true))),
                Err(Fault::Timeout) => (g, Ok(Response::Bool(false))),
                Err(f) => (g, Err(f)),
            };
        }
        (Obj::Lock(owner), Op::Release) => {
            if *owner == Some(client) {
                *owner = None;
                Ok(Response::Unit)
            } else {
                Err(Fault::NotOwner)
            }
        }
        (Obj::RLock { owner, count } | Obj::Condition { owner, count, .. }, Op::Release) => {
            if *owner == Some(client) {
                *count -= 1;
                if *count == 0 {
                    *owner = None;
                }
                Ok(Response::Unit)
            } else {
                Err(Fault::NotOwner)
            }
        }
        (Obj::Semaphore(n, bound), Op::Release) => {
            if bound.is_some_and(|b| *n >= b) {
                Err(Fault::TooMany)
            } else {
                *n = n.saturating_add(1);
                Ok(Response::Unit)
            }
        }
        // ---- event
        (Obj::Event(f), Op::SetFlag) => Ok(Response::Unit).inspect(|_| *f = true),
        (Obj::Event(f), Op::ClearFlag) => Ok(Response::Unit).inspect(|_| *f = false),
        (Obj::Event(f), Op::IsSet) => Ok(Response::Bool(*f)),
        (Obj::Event(_), Op::WaitFlag(t)) => {
            let (g, r) = block(sh, link, st, deadline(t), |s| match obj(s, id)? {
                Obj::Event(true) => Ok(Some(())),
                _ => Ok(None),
            });
            return match r {
                Ok(()) => (g, Ok(Response::Bool(true))),
                Err(Fault::Timeout) => (g, Ok(Response::Bool(false))),
                Err(f) => (g, Err(f)),
            };
        }
        // ---- condition
        (Obj::Condition { owner, count, .. }, Op::Wait(t)) => {
            if *owner != Some(client) {
                return (st, Err(Fault::NotOwner));
            }
            let saved = std::mem::take(count);
            *owner = None;
            st.next_ticket += 1;
            let ticket = st.next_ticket;
            if let Ok(Obj::Condition { waiting, .. }) = obj(&mut st, id) {
                waiting.push_back(ticket);
            }
            sh.cv.notify_all();
            let (g, r) = block_taking(
                sh,
                link,
                st,
                deadline(t),
                |s| match obj(s, id)? {
                    Obj::Condition { woken, .. } => Ok(woken.remove(&ticket).then_some(())),
                    _ => Err(wrong()),
                },
                // Pass the wake-up on to the next waiter, if any.
                |s, ()| {
                    if let Ok(Obj::Condition { waiting, woken, .. }) = obj(s, id) {
                        if let Some(t) = waiting.pop_front() {
                            woken.insert(t);
                        }
                    }
                },
            );
            let mut st = g;
            let notified = match r {
                Ok(()) => true,
                Err(_) => {
                    // Not woken: leave the queue (or take a wake-up that came
                    // just now).
                    if let Ok(Obj::Condition { waiting, woken, .. }) = obj(&mut st, id) {
                        waiting.retain(|&t| t != ticket);
                        woken.remove(&ticket)
                    } else {
                        false
                    }
                }
            };
            // Take the lock back, however long that takes (as Python).
            let (g, r) = block_taking(
                sh,
                link,
                st,
                None,
                |s| match obj(s, id)? {
                    Obj::Condition { owner, count, .. } if owner.is_none() => {
                        *owner = Some(client);
                        *count = saved;
                        Ok(Some(()))
                    }
                    _ => Ok(None),
                },
                |s, ()| {
                    if let Ok(Obj::Condition { owner, count, .. }) = obj(s, id) {
                        *owner = None;
                        *count = 0;
                    }
                },
            );
            return (g, r.map(|()| Response::Bool(notified)));
        }
        (Obj::Condition { owner, waiting, woken, .. }, Op::Notify(n)) => {
            if *owner != Some(client) {
                Err(Fault::NotOwner)
            } else {
                for _ in 0..n {
                    match waiting.pop_front() {
                        Some(t) => {
                            woken.insert(t);
                        }
                        None => break,
                    }
                }
                Ok(Response::Unit)
            }
        }
        // ---- barrier
        (Obj::Barrier { parties, count, generation, broken }, Op::BarrierWait(t)) => {
            if *broken {
                return (st, Err(Fault::Broken));
            }
            let index = *count;
            *count += 1;
            if *count == *parties {
                *count = 0;
                *generation += 1;
                sh.cv.notify_all();
                return (st, Ok(Response::Num(index)));
            }
            let gen = *generation;
            let (mut g, r) = block(sh, link, st, deadline(t), |s| match obj(s, id)? {
                Obj::Barrier { broken: true, .. } => Err(Fault::Broken),
                Obj::Barrier { generation, .. } => Ok((*generation != gen).then_some(())),
                _ => Err(wrong()),
            });
            if r.is_err() {
                // A party that gives up breaks the barrier for all (Python).
                if let Ok(Obj::Barrier { broken, .. }) = obj(&mut g, id) {
                    *broken = true;
                }
                sh.cv.notify_all();
            }
            return (g, r.map(|()| Response::Num(index)));
        }
        (Obj::Barrier { broken, .. }, Op::Abort) => {
            *broken = true;
            Ok(Response::Unit)
        }
        (Obj::Barrier { parties, .. }, Op::Len) => Ok(Response::Num(*parties)),
        _ => Err(wrong()),
    };
    (st, r)
}
