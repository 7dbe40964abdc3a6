//! Manager and proxies across real processes: `harness = false` so that
//! `main` calls `shmproc::init()` first (the server and the children then
//! start with ForkServer and Spawn). A watchdog aborts the run on a hang.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use shmproc::connection::{Address, Client, RecvError};
use shmproc::manager::{DictProxy, EventProxy, ListProxy, LockProxy, Manager, ManagerError, QueueProxy};
use shmproc::process::{Process, StartMethod};

const JOIN: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(30);

fn add(n: &mut u64, by: u64) -> u64 {
    *n += by;
    *n
}

fn manager() -> Manager {
    Manager::builder().register("add", add).start().expect("manager starts")
}

fn scale() -> u64 {
    std::env::var("SHMPROC_TEST_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

type Shared = (DictProxy<String, u64>, ListProxy<u64>, u64, u64);

fn worker((d, l, me, n): Shared) -> u64 {
    for i in 0..n {
        let _: u64 = d.update(&"total".to_string(), "add", &1u64).unwrap();
        d.insert(&format!("w{me}-{i}"), &i).unwrap();
        l.push(&(me * 100_000 + i)).unwrap();
    }
    n
}

fn four_processes_update_one_dict_and_list() {
    let m = manager();
    let d = m.dict::<String, u64>().unwrap();
    let l = m.list::<u64>().unwrap();
    let n = scale();
    let mut ps: Vec<_> = (0..4u64)
        .map(|me| {
            let method = if me % 2 == 0 { StartMethod::ForkServer } else { StartMethod::Fork };
            Process::builder(worker, (d.clone(), l.clone(), me, n)).start_method(method).start().unwrap()
        })
        .collect();
    for p in &mut ps {
        assert_eq!(p.join_timeout(JOIN).unwrap(), n);
    }
    assert_eq!(d.get(&"total".to_string()).unwrap(), Some(4 * n));
    assert_eq!(d.len().unwrap() as u64, 4 * n + 1);
    let mut got = l.snapshot().unwrap();
    got.sort_unstable();
    let mut want: Vec<u64> = (0..4).flat_map(|me| (0..n).map(move |i| me * 100_000 + i)).collect();
    want.sort_unstable();
    assert_eq!(got, want);
    m.shutdown().unwrap();
}

fn child_uses_proxies((d, q): (DictProxy<String, u64>, QueueProxy<String>)) -> u32 {
    let pid = std::process::id();
    d.insert(&format!("pid-{pid}"), &(pid as u64)).unwrap();
    q.put(&shmproc::process::current_process().name).unwrap();
    pid
}

fn proxy_as_argument_of_spawn_and_forkserver_children() {
    let m = manager();
    let d = m.dict::<String, u64>().unwrap();
    let q = m.queue::<String>(0).unwrap();
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mut p = Process::builder(child_uses_proxies, (d.clone(), q.clone()))
            .name(format!("{method:?}-child"))
            .start_method(method)
            .start()
            .unwrap();
        let pid = p.join_timeout(JOIN).unwrap();
        assert_eq!(d.get(&format!("pid-{pid}")).unwrap(), Some(pid as u64));
        assert_eq!(q.get_timeout(WAIT).unwrap(), format!("{method:?}-child"));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn remote_manager() -> Manager {
    Manager::builder()
        .register("add", add)
        .address("127.0.0.1:0".parse().unwrap())
        .authkey(b"a test key that is long enough")
        .start()
        .unwrap()
}

fn remote_clients_in_other_processes() {
    let m = remote_manager();
    let addr = m.address().unwrap().to_string();
    let d = m.named("counts").dict::<String, u64>().unwrap();
    let l = m.named("log").list::<u64>().unwrap();
    let n = scale().to_string();
    let exe = env!("CARGO_BIN_EXE_manager_client");
    let kids: Vec<_> =
        (0..3).map(|_| Command::new(exe).args(["count", &addr, &hex(m.authkey()), &n]).spawn().unwrap()).collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let n: u64 = n.parse().unwrap();
    assert_eq!(d.get(&"total".to_string()).unwrap(), Some(3 * n));
    assert_eq!(l.len().unwrap() as u64, 3 * n);
    // A wrong key is refused before anything runs.
    let st = Command::new(exe).args(["wrong-key", &addr, &hex(b"not the key")]).status().unwrap();
    assert_eq!(st.code(), Some(3));
    assert_eq!(d.snapshot().unwrap(), vec![("total".to_string(), 3 * n)]);
    assert_eq!(l.len().unwrap() as u64, 3 * n);
    // A named object of another type is refused.
    assert!(matches!(m.named("counts").list::<u64>(), Err(ManagerError::TypeMismatch)));
    assert!(matches!(m.named("counts").dict::<String, i8>(), Err(ManagerError::TypeMismatch)));
}

fn closed_within(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn raw(c: &shmproc::connection::SocketConnection) -> TcpStream {
    TcpStream::from(c.as_fd().try_clone_to_owned().unwrap())
}

fn hostile_clients_are_disconnected_others_served() {
    let m = remote_manager();
    let addr = m.address().unwrap().clone();
    let Address::Tcp(sa) = addr.clone() else { unreachable!() };
    let key = m.authkey().to_vec();
    // The good client: another connection (TCP) to the same server.
    let good = Manager::connect(&addr, &key).unwrap();
    let d = good.named("d").dict::<u32, u32>().unwrap();
    d.insert(&1, &1).unwrap();

    // Garbage before authenticating.
    let mut g = TcpStream::connect(sa).unwrap();
    g.write_all(&[0xAB; 300]).unwrap();
    assert!(closed_within(&mut g), "garbage before the handshake closes the connection");
    // A 4 GiB length before authenticating.
    let mut g = TcpStream::connect(sa).unwrap();
    g.write_all(&(4u64 << 30).to_le_bytes()).unwrap();
    assert!(closed_within(&mut g));
    d.insert(&2, &2).unwrap();

    // Authenticated, then a frame that is not a request.
    let c = Client::connect(&addr, &key).unwrap();
    c.send_bytes(b"\xff\xfe this is not a request").unwrap();
    assert!(matches!(c.recv_bytes_timeout(WAIT), Err(RecvError::Disconnected)));
    // Authenticated, then a 4 GiB length.
    let c = Client::connect(&addr, &key).unwrap();
    raw(&c).write_all(&(4u64 << 30).to_le_bytes()).unwrap();
    assert!(matches!(c.recv_bytes_timeout(WAIT), Err(RecvError::Disconnected)));
    // Authenticated, then a truncated frame left hanging: only its own
    // connection waits.
    let t = Client::connect(&addr, &key).unwrap();
    let mut w = raw(&t);
    w.write_all(&100u64.to_le_bytes()).unwrap();
    w.write_all(&[1; 10]).unwrap();
    for i in 3..50 {
        d.insert(&i, &i).unwrap();
    }
    assert_eq!(d.len().unwrap(), 49);
    drop((w, t));
    assert_eq!(d.get(&7).unwrap(), Some(7));
    // A local proxy still works too.
    let local = m.named("d").dict::<u32, u32>().unwrap();
    assert_eq!(local.len().unwrap(), 49);
}

fn wait_for_event((q, ev): (QueueProxy<u32>, EventProxy)) -> String {
    q.put(&1).unwrap();
    match ev.wait() {
        Err(ManagerError::ManagerGone) => "gone".into(),
        other => format!("{other:?}"),
    }
}

fn kill(pid: u32) {
    // SAFETY: kill(2) with a pid we started and a valid signal number.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0);
}

fn server_killed_mid_call() {
    let m = manager();
    let q = m.queue::<u32>(0).unwrap();
    let ev = m.event().unwrap();
    let mut p = Process::builder(wait_for_event, (q.clone(), ev.clone())).start().unwrap();
    assert_eq!(q.get_timeout(WAIT).unwrap(), 1);
    std::thread::sleep(Duration::from_millis(100)); // let it enter the call
    kill(m.pid().unwrap());
    assert_eq!(p.join_timeout(JOIN).unwrap(), "gone");
    assert!(matches!(ev.is_set(), Err(ManagerError::ManagerGone)));
    assert!(matches!(m.dict::<u8, u8>(), Err(ManagerError::ManagerGone)));
    drop(m);
}

/// A server that dies while a client connects: the listener accepts (the
/// kernel does, from its backlog) and the socket is then closed mid-handshake.
/// That is a gone server, not a connection error.
fn server_hangs_up_during_the_handshake() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        // Accept once and close at once; then refuse (the listener is dropped).
        let (s, _) = listener.accept().unwrap();
        drop(s);
    });
    let addr = Address::Tcp(format!("127.0.0.1:{port}").parse().unwrap());
    let r = Manager::connect(&addr, b"key");
    assert!(matches!(r, Err(ManagerError::ManagerGone)), "{r:?}");
    t.join().unwrap();
    // Nothing listens any more: refused, also gone.
    assert!(matches!(Manager::connect(&addr, b"key"), Err(ManagerError::ManagerGone)));
}

fn hold_lock((lock, ev): (LockProxy, EventProxy)) -> u32 {
    lock.acquire().unwrap();
    ev.set().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn client_killed_holding_a_lock() {
    let m = manager();
    let lock = m.lock().unwrap();
    let ev = m.event().unwrap();
    let mut p = Process::builder(hold_lock, (lock.clone(), ev.clone())).start().unwrap();
    assert!(ev.wait_timeout(WAIT).unwrap());
    assert!(!lock.try_acquire().unwrap());
    p.kill().unwrap();
    let _ = p.join_timeout(JOIN);
    assert!(lock.acquire_timeout(WAIT).unwrap(), "the dead client's lock is released");
    lock.release().unwrap();
    assert!(matches!(lock.release(), Err(ManagerError::NotOwner)));
}

fn blocked_get((q, ev): (QueueProxy<u32>, EventProxy)) -> u32 {
    ev.set().unwrap();
    q.get().unwrap_or(0)
}

fn blocked_acquire((sem, ev): (shmproc::manager::SemaphoreProxy, EventProxy)) -> u32 {
    ev.set().unwrap();
    u32::from(sem.acquire().is_ok())
}

/// A client killed while blocked in `get` (or `acquire`) must not take the
/// item (permit) that arrives after its death: the next getter gets it, so
/// an acknowledged `put` is never lost. The put comes well inside the
/// server's periodic client check (100 ms), where a killed client used to
/// take it.
fn client_killed_while_blocked_takes_nothing() {
    let m = manager();
    for round in 0..3u32 {
        let q = m.queue::<u32>(0).unwrap();
        let ev = m.event().unwrap();
        let mut p = Process::builder(blocked_get, (q.clone(), ev.clone())).start().unwrap();
        assert!(ev.wait_timeout(WAIT).unwrap());
        std::thread::sleep(Duration::from_millis(30)); // let it enter the get
        p.kill().unwrap();
        let _ = p.join_timeout(JOIN);
        q.put(&(7 + round)).unwrap();
        let got = q.get_timeout(WAIT).ok();
        assert_eq!(got, Some(7 + round), "round {round}: the put item went to the dead client");

        let sem = m.semaphore(0).unwrap();
        let ev = m.event().unwrap();
        let mut p = Process::builder(blocked_acquire, (sem.clone(), ev.clone())).start().unwrap();
        assert!(ev.wait_timeout(WAIT).unwrap());
        std::thread::sleep(Duration::from_millis(30));
        p.kill().unwrap();
        let _ = p.join_timeout(JOIN);
        sem.release().unwrap();
        assert!(sem.acquire_timeout(WAIT).unwrap(), "round {round}: the released permit went to the dead client");
    }
}

/// A reply over the message limit (64 MiB) is a `TooLarge` error, not a gone
/// manager: the connection and the locks this thread holds stay. A request
/// over it likewise (it is not sent).
fn too_large_messages_are_errors_not_a_gone_manager() {
    let m = manager();
    let l = m.list::<Vec<u8>>().unwrap();
    let lock = m.lock().unwrap();
    assert!(lock.acquire_timeout(WAIT).unwrap());
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..65 {
        l.push(&chunk).unwrap();
    }
    match l.snapshot() {
        Err(ManagerError::TooLarge { len, limit }) => assert!(len > limit && limit == 64 << 20, "{len} {limit}"),
        Err(e) => panic!("a 65 MiB reply: {e:?}"),
        Ok(v) => panic!("a 65 MiB reply came through ({} items)", v.len()),
    }
    assert_eq!(l.len().unwrap(), 65);
    let big = vec![1u8; 65 << 20];
    assert!(matches!(l.push(&big), Err(ManagerError::TooLarge { .. })));
    assert_eq!(l.len().unwrap(), 65);
    // Still this thread's lock: the connection was not dropped.
    lock.release().unwrap();
}

fn server_threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A flood of TCP connections that never authenticate takes a bounded number
/// of the server's threads (64 handshakes at a time, the rest are closed at
/// once), and the server goes on serving: an authenticated client connects
/// once the flood is gone, and an old one is served throughout.
fn unauthenticated_flood_is_bounded() {
    let m = remote_manager();
    let addr = m.address().unwrap().clone();
    let Address::Tcp(sa) = addr.clone() else { unreachable!() };
    let pid = m.pid().unwrap();
    let d = m.dict::<u32, u32>().unwrap();
    d.insert(&1, &1).unwrap();
    let before = server_threads(pid);
    let flood: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(sa).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let during = server_threads(pid);
    assert!(during <= before + 64 + 4, "{during} server threads during a flood of {} (before: {before})", flood.len());
    assert_eq!(d.get(&1).unwrap(), Some(1), "an old client is served during the flood");
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let key = m.authkey().to_vec();
    let late = Manager::connect(&addr, &key).unwrap();
    let r = late.dict::<u32, u32>().and_then(|nd| nd.insert(&2, &2));
    assert!(r.is_ok(), "a client after the flood: {r:?}");
}

fn barrier_party(
    (b, c, ns): (shmproc::manager::BarrierProxy, shmproc::manager::ConditionProxy, shmproc::manager::NamespaceProxy),
) -> usize {
    let i = b.wait_timeout(WAIT).unwrap();
    c.acquire().unwrap();
    while ns.get::<bool>("go").unwrap() != Some(true) {
        assert!(c.wait_timeout(WAIT).unwrap() || ns.get::<bool>("go").unwrap() == Some(true));
    }
    c.release().unwrap();
    i
}

fn sync_objects() {
    let m = manager();
    let b = m.barrier(3).unwrap();
    let c = m.condition().unwrap();
    let ns = m.namespace().unwrap();
    let mut ps: Vec<_> =
        (0..2).map(|_| Process::builder(barrier_party, (b.clone(), c.clone(), ns.clone())).start().unwrap()).collect();
    let mine = b.wait_timeout(WAIT).unwrap();
    c.acquire().unwrap();
    ns.set("go", &true).unwrap();
    c.notify_all().unwrap();
    c.release().unwrap();
    let mut idx: Vec<usize> = ps.iter_mut().map(|p| p.join_timeout(JOIN).unwrap()).collect();
    idx.push(mine);
    idx.sort_unstable();
    assert_eq!(idx, vec![0, 1, 2]);
    assert!(matches!(ns.get::<u32>("go"), Err(ManagerError::TypeMismatch)));
    // Value with a registered function, semaphore, rlock, queue bounds.
    let v = m.value(&5u64).unwrap();
    assert_eq!(v.update::<u64, u64>("add", &3).unwrap(), 8);
    assert!(matches!(v.update::<u64, u64>("nope", &3), Err(ManagerError::UnknownFunction(_))));
    assert_eq!(v.get().unwrap(), 8);
    let s = m.semaphore(1).unwrap();
    assert!(s.try_acquire().unwrap());
    assert!(!s.acquire_timeout(Duration::from_millis(20)).unwrap());
    s.release().unwrap();
    let bs = m.bounded_semaphore(1).unwrap();
    assert!(matches!(bs.release(), Err(ManagerError::TooManyReleases)));
    bs.acquire().unwrap();
    bs.release().unwrap();
    let r = m.rlock().unwrap();
    let g1 = r.lock().unwrap();
    let g2 = r.lock().unwrap();
    drop((g1, g2));
    let q = m.queue::<u8>(1).unwrap();
    q.put(&1).unwrap();
    assert!(matches!(q.put_timeout(&2, Duration::from_millis(20)), Err(ManagerError::Full)));
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get_timeout(Duration::from_millis(20)), Err(ManagerError::Empty)));
    // A proxy read back as another type is refused by its fingerprint.
    let l = m.list::<u64>().unwrap();
    let bytes = postcard::to_stdvec(&l).unwrap();
    assert!(postcard::from_bytes::<ListProxy<String>>(&bytes).is_err());
    assert_eq!(postcard::from_bytes::<ListProxy<u64>>(&bytes).unwrap(), l);
}

fn main() {
    shmproc::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(240));
        eprintln!("manager: watchdog fired, aborting");
        std::process::abort();
    });
    type Check = fn();
    let checks: [(&str, Check); 11] = [
        ("four_processes_update_one_dict_and_list", four_processes_update_one_dict_and_list),
        ("proxy_as_argument_of_spawn_and_forkserver_children", proxy_as_argument_of_spawn_and_forkserver_children),
        ("remote_clients_in_other_processes", remote_clients_in_other_processes),
        ("hostile_clients_are_disconnected_others_served", hostile_clients_are_disconnected_others_served),
        ("server_killed_mid_call", server_killed_mid_call),
        ("server_hangs_up_during_the_handshake", server_hangs_up_during_the_handshake),
        ("client_killed_holding_a_lock", client_killed_holding_a_lock),
        ("client_killed_while_blocked_takes_nothing", client_killed_while_blocked_takes_nothing),
        ("too_large_messages_are_errors_not_a_gone_manager", too_large_messages_are_errors_not_a_gone_manager),
        ("unauthenticated_flood_is_bounded", unauthenticated_flood_is_bounded),
        ("sync_objects", sync_objects),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in checks {
            println!("{name}: test");
        }
        return;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut ran = 0;
    for (name, check) in checks {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        eprint!("test {name} ... ");
        check();
        eprintln!("ok");
        ran += 1;
    }
    eprintln!("manager: {ran} checks passed");
}
