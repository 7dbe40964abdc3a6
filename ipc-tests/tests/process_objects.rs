//! shmproc objects as arguments of `fn` targets, under every start method
//! (issue 10 item 2): anonymous ones travel by fd (Fork: inherited; Spawn:
//! kept open across the exec; ForkServer: `SCM_RIGHTS`), named ones by name.
//! The child uses a queue, a pipe end, a value, a lock and a named array it
//! received; the parent observes the effects. A handle that cannot be
//! resolved is an immediate, precise error, never a wait.
//!
//! `harness = false`: `main` calls `shmproc::init()` first (Spawn and
//! ForkServer re-execute this binary). A watchdog aborts the run if anything hangs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shmproc::process::{JoinError, Process, StartMethod};
use shmproc::{Array, Barrier, BarrierError, Connection, Handle, Lock, OpenError, Pipe, Queue, ShmObject, Value};

const WAIT: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

type Objects = (Queue<u64>, Connection, Value<u64>, Lock, Array<u32>);

/// Takes a job from the queue, answers on the pipe, adds to the value under
/// the lock, writes the named array and queues a reply.
fn worker((q, conn, v, lock, arr): Objects) -> u64 {
    let n = q.recv_timeout(WAIT).expect("a job on the inherited queue");
    conn.send(&(n * 2)).expect("send on the inherited pipe end");
    {
        let _held = lock.acquire_timeout(WAIT).expect("the inherited lock");
        v.update(|x| *x += n).expect("update the inherited value");
    }
    arr.set(0, 7).expect("write the named array");
    q.send(n + 1).expect("reply on the inherited queue");
    n
}

fn objects_reach_the_child(m: StartMethod) {
    let q = Queue::<u64>::anonymous(8).unwrap();
    let (ours, theirs) = Pipe::new().unwrap();
    let v = Value::<u64>::anonymous(100).unwrap();
    let lock = Lock::anonymous().unwrap();
    let arr = Array::<u32>::create(&unique("objargs"), &[0, 0]).unwrap();
    q.send(5).unwrap();
    let mut p = Process::builder(worker, (q.clone(), theirs, v.clone(), lock.clone(), arr.clone()))
        .start_method(m)
        .start()
        .unwrap();
    let answer: u64 = ours.recv_timeout(WAIT).unwrap();
    assert_eq!(answer, 10);
    assert_eq!(p.join_timeout(WAIT).unwrap(), 5);
    assert_eq!(v.get().unwrap(), 105);
    assert_eq!(arr.get(0).unwrap(), 7);
    assert_eq!(q.recv_timeout(WAIT).unwrap(), 6);
    // The lock is free again.
    drop(lock.try_acquire().expect("the child released the lock"));
}

fn bump(v: Value<u64>) -> u64 {
    v.update(|x| {
        *x += 1;
        *x
    })
    .unwrap()
}

/// The only handle of a named object is moved into the argument (and dropped
/// by the parent at once): the parent keeps the name until the join, so the
/// child still finds it.
fn moved_named_object_stays_until_join(m: StartMethod) {
    let v = Value::<u64>::create(&unique("moved"), 1).unwrap();
    let mut p = Process::builder(bump, v).start_method(m).start().unwrap();
    assert_eq!(p.join_timeout(WAIT).unwrap(), 2);
}

/// What an anonymous object looks like inside an argument: the index of a
/// carried fd (the same shape as shmproc's own `ObjRef`).
#[derive(serde::Serialize)]
#[allow(dead_code)]
enum StrayRef {
    Name(String),
    Fd(u32),
}

/// Decodes an anonymous object's bytes that came without any fd.
fn decode_stray(bytes: Vec<u8>) -> String {
    match postcard::from_bytes::<Value<u64>>(&bytes) {
        Ok(_) => "opened".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn anonymous_handle_in_the_wrong_place(m: StartMethod) {
    let bytes = postcard::to_allocvec(&StrayRef::Fd(0)).unwrap();
    let mut p = Process::builder(decode_stray, bytes).start_method(m).start().unwrap();
    let got = p.join_timeout(WAIT).unwrap();
    assert!(got.starts_with("error"), "{got}");
}

/// An argument that claims to carry anonymous object #3 though no fd came
/// with it (it serializes the shape of a carried reference by hand and
/// decodes as a `Value<u64>`).
struct Stray(#[allow(dead_code)] Value<u64>);

impl serde::Serialize for Stray {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&StrayRef::Fd(3), s)
    }
}

impl<'de> serde::Deserialize<'de> for Stray {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Value<u64> as serde::Deserialize>::deserialize(d).map(Stray)
    }
}

fn takes_stray(_: Stray) -> u64 {
    unreachable!("the argument cannot decode")
}

fn unresolvable_index_is_a_precise_join_error(m: StartMethod) {
    let stray = Stray(Value::anonymous(0).unwrap());
    let mut p = Process::builder(takes_stray, stray).start_method(m).start().unwrap();
    match p.join_timeout(WAIT) {
        Err(JoinError::Decode { reason }) => assert!(reason.contains("#3 cannot be resolved"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

fn unrelated_fd_is_refused_at_once() {
    let f = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    match Value::<u64>::open_handle(&Handle::Fd(fd)) {
        Err(OpenError::InvalidArgument { reason }) => assert!(reason.contains("not a shmproc object"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

fn anonymous_object_outside_an_argument_is_refused() {
    let v = Value::<u64>::anonymous(1).unwrap();
    assert!(postcard::to_allocvec(&v).is_err());
    // A named object travels anywhere, by name.
    let n = Value::<u64>::create(&unique("byname"), 9).unwrap();
    let bytes = postcard::to_allocvec(&n).unwrap();
    let back: Value<u64> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.get().unwrap(), 9);
}

/// The README's two-binary example: A creates, writes and `persist()`s, then
/// exits; B opens the names later and reads.
fn persisted_names_outlive_the_creator() {
    let (pn, jn) = (unique("prices"), unique("jobs"));
    let (p2, j2) = (pn.clone(), jn.clone());
    let a = Process::closure(move || -> Result<(), String> {
        let prices = Array::<f64>::create(&p2, &[0.0; 4]).map_err(|e| e.to_string())?;
        let jobs = Queue::<u64>::create(&j2, 1024).map_err(|e| e.to_string())?;
        prices.set(0, 101.5).map_err(|e| e.to_string())?;
        jobs.send(42).map_err(|e| format!("{e:?}"))?;
        prices.segment().persist();
        jobs.segment().persist();
        Ok(())
    })
    .start()
    .unwrap();
    a.join().unwrap().unwrap();
    let prices = Array::<f64>::open(&pn).unwrap();
    let jobs = Queue::<u64>::open(&jn).unwrap();
    assert_eq!(prices.get(0).unwrap(), 101.5);
    assert_eq!(jobs.recv_timeout(WAIT).unwrap(), 42);
    shmproc::unlink(&pn).unwrap();
    shmproc::unlink(&jn).unwrap();
}

fn after_2_s(_: ()) -> u32 {
    std::thread::sleep(Duration::from_secs(2));
    5
}

/// The parent pid of `pid`, from `/proc/PID/stat` (field 4, after the
/// parenthesised name).
fn ppid(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("the child ended before the test stopped its server: {e}"));
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A ForkServer child's join learns the exit from the server's status
/// record. A server that stops writing it (stopped here; in life, a server
/// that died while a process forked meanwhile still holds the record pipe's
/// write end, so no end of file comes either) must not keep `join` waiting
/// once the child is dead by its pidfd.
fn a_forkserver_join_ends_when_no_status_record_comes() {
    let mut p = Process::builder(after_2_s, ()).start_method(StartMethod::ForkServer).start().unwrap();
    let server = ppid(p.pid());
    assert!(p.is_alive(), "stopped the server while its child still runs");
    // SAFETY: plain kill(2) on the fork server, our own child process.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    let r = p.join_timeout(WAIT);
    // SAFETY: as above.
    unsafe { libc::kill(server, libc::SIGCONT) };
    assert_eq!(r.unwrap(), 5);
}

/// Passes the barrier three times, then returns (a clean leave).
fn three_generations(b: Barrier) -> u32 {
    (0..3).filter(|_| b.wait_timeout(WAIT).is_ok()).count() as u32
}

/// Passes the barrier once, then panics before its next arrival.
fn passes_once_then_panics(b: Barrier) -> u32 {
    b.wait_timeout(WAIT).expect("generation 0");
    panic!("a party panics between two waits");
}

/// A shmproc child whose body returns leaves the barriers it waited at, so
/// that a second batch of parties can replace the first, under every start
/// method (a forked child `_exit`s and drops none of the copies of the
/// handle it inherited); one whose body panics between two waits breaks
/// the next generation for the others.
fn barrier_parties_started_as_processes(m: StartMethod) {
    let b = Barrier::anonymous(3).unwrap();
    let batch = || -> Vec<Process<u32>> {
        (0..2)
            .map(|_| match m {
                // A closure's child waits through a copy of the handle it
                // inherited, whose other copies it never drops.
                StartMethod::Fork => {
                    let b = b.clone();
                    Process::closure(move || three_generations(b)).start().unwrap()
                }
                _ => Process::builder(three_generations, b.clone()).start_method(m).start().unwrap(),
            })
            .collect()
    };
    let first = batch();
    for _ in 0..3 {
        b.wait_timeout(WAIT).unwrap();
    }
    for mut p in first {
        assert_eq!(p.join_timeout(WAIT).unwrap(), 3);
    }
    // Several dead-party looks (one per 50 ms slice) pass before the second
    // batch arrives: the first batch owes nothing.
    let waiter = b.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(waiter.wait_timeout(WAIT)));
    std::thread::sleep(Duration::from_millis(300));
    let second = batch();
    assert!(rx.recv_timeout(WAIT).expect("the waiter hung").is_ok(), "{m:?}: a clean leave broke the barrier");
    for _ in 0..2 {
        b.wait_timeout(WAIT).unwrap();
    }
    for mut p in second {
        assert_eq!(p.join_timeout(WAIT).unwrap(), 3);
    }
    assert!(!b.is_broken());

    let b = Barrier::anonymous(2).unwrap();
    let mut p = Process::builder(passes_once_then_panics, b.clone()).start_method(m).start().unwrap();
    b.wait_timeout(WAIT).unwrap();
    assert_eq!(b.wait_timeout(WAIT), Err(BarrierError::Broken), "{m:?}: the panicked party never arrives");
    assert!(matches!(p.join_timeout(WAIT), Err(JoinError::Panicked { .. })));
}

fn main() {
    shmproc::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(240));
        eprintln!("process_objects: watchdog fired, aborting");
        std::process::abort();
    });
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    type Check = fn(StartMethod);
    let checks: [(&str, Check); 5] = [
        ("objects_reach_the_child", objects_reach_the_child),
        ("moved_named_object_stays_until_join", moved_named_object_stays_until_join),
        ("anonymous_handle_in_the_wrong_place", anonymous_handle_in_the_wrong_place),
        ("unresolvable_index_is_a_precise_join_error", unresolvable_index_is_a_precise_join_error),
        ("barrier_parties_started_as_processes", barrier_parties_started_as_processes),
    ];
    for m in [StartMethod::Fork, StartMethod::Spawn, StartMethod::ForkServer] {
        for (name, check) in checks {
            check(m);
            println!("test {m:?}::{name} ... ok");
        }
    }
    persisted_names_outlive_the_creator();
    println!("test persisted_names_outlive_the_creator ... ok");
    unrelated_fd_is_refused_at_once();
    println!("test unrelated_fd_is_refused_at_once ... ok");
    anonymous_object_outside_an_argument_is_refused();
    println!("test anonymous_object_outside_an_argument_is_refused ... ok");
    a_forkserver_join_ends_when_no_status_record_comes();
    println!("test a_forkserver_join_ends_when_no_status_record_comes ... ok");
}
