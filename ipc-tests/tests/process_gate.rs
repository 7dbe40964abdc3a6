//! Spawn and ForkServer, which re-execute this test binary: `harness = false`,
//! so that `main` can call `shmproc::init()` first. Every check runs for both
//! start methods; a watchdog aborts the run if anything hangs.

use std::time::Duration;

use shmproc::process::{self, ExitStatus, JoinError, Process, StartMethod};

fn add(args: (u64, u64)) -> u64 {
    args.0 + args.1
}

fn boom(msg: String) -> u32 {
    panic!("target failed: {msg}");
}

fn sleeper(secs: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(secs));
    secs
}

fn who(_: ()) -> (String, u32, u32) {
    let me = process::current_process();
    (me.name, me.pid, me.ppid)
}

fn checksum(v: Vec<u8>) -> (u64, Vec<u8>) {
    let sum = v.iter().map(|&b| b as u64).sum();
    (sum, v.into_iter().rev().collect())
}

const JOIN: Duration = Duration::from_secs(60);

fn returns_value(m: StartMethod) {
    let mut p = Process::builder(add, (40, 2)).start_method(m).start().unwrap();
    assert_eq!(p.start_method(), m);
    assert_eq!(p.join_timeout(JOIN).unwrap(), 42);
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(0)));
}

fn large_argument_and_result(m: StartMethod) {
    let v: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
    let want: u64 = v.iter().map(|&b| b as u64).sum();
    let mut p = Process::builder(checksum, v.clone()).start_method(m).start().unwrap();
    let (sum, rev) = p.join_timeout(JOIN).unwrap();
    assert_eq!(sum, want);
    assert!(rev.iter().eq(v.iter().rev()));
}

fn panic_message(m: StartMethod) {
    let mut p = Process::builder(boom, "disk full".to_string()).start_method(m).start().unwrap();
    match p.join_timeout(JOIN) {
        Err(JoinError::Panicked { message, location, status }) => {
            assert_eq!(message, "target failed: disk full");
            assert!(location.unwrap().contains("process_gate.rs"));
            assert_eq!(status, ExitStatus::Exited(1));
        }
        other => panic!("{other:?}"),
    }
}

fn sigkill(m: StartMethod) {
    let mut p = Process::builder(sleeper, 30).start_method(m).start().unwrap();
    assert!(p.is_alive());
    p.kill().unwrap();
    match p.join_timeout(JOIN) {
        Err(JoinError::Died { status }) => assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL)),
        other => panic!("{other:?}"),
    }
}

fn timeout_then_terminate(m: StartMethod) {
    let mut p = Process::builder(sleeper, 30).start_method(m).start().unwrap();
    assert!(matches!(p.join_timeout(Duration::from_millis(50)), Err(JoinError::Timeout)));
    assert!(p.is_alive());
    p.terminate().unwrap();
    let e = p.join_timeout(JOIN).unwrap_err();
    assert_eq!(e.status(), Some(ExitStatus::Signaled(libc::SIGTERM)), "{e}");
}

fn identity(m: StartMethod) {
    let p = Process::builder(who, ()).name("gate-child").start_method(m).start().unwrap();
    let pid = p.pid();
    let (name, cpid, ppid) = p.join().unwrap();
    assert_eq!(name, "gate-child");
    assert_eq!(cpid, pid);
    if m == StartMethod::Spawn {
        assert_eq!(ppid, std::process::id());
    } else {
        // A ForkServer child's parent is the server, itself our child.
        assert_ne!(ppid, std::process::id());
        let stat = std::fs::read_to_string(format!("/proc/{ppid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let server_parent: u32 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(server_parent, std::process::id());
    }
}

fn from_many_threads(m: StartMethod) {
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..5u64 {
                    let mut p = Process::builder(add, (t, i)).start_method(m).start().unwrap();
                    assert_eq!(p.join_timeout(JOIN).unwrap(), t + i);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// The fork server dies (SIGKILL): a child it started still ends and is
/// joined (how it ended is then unknown), and the next start launches a new
/// server.
fn forkserver_restarts() {
    let mut running = Process::builder(sleeper, 30).start_method(StartMethod::ForkServer).start().unwrap();
    let (_, _, server) =
        Process::builder(who, ()).start_method(StartMethod::ForkServer).start().unwrap().join().unwrap();
    // SAFETY: kill with integer arguments; `server` is our live child (the fork server).
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    running.kill().unwrap();
    match running.join_timeout(JOIN) {
        Err(JoinError::Died { status }) => {
            assert!(matches!(status, ExitStatus::Unknown | ExitStatus::Signaled(9)), "{status:?}")
        }
        other => panic!("{other:?}"),
    }
    let (_, _, server2) =
        Process::builder(who, ()).start_method(StartMethod::ForkServer).start().unwrap().join().unwrap();
    assert_ne!(server2, server);
    assert_eq!(
        Process::builder(add, (5, 6)).start_method(StartMethod::ForkServer).start().unwrap().join().unwrap(),
        11
    );
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

fn triple(x: u64) -> u64 {
    3 * x
}

/// A pool's workers are requested from the fork server in one batch (every
/// request sent before the first reply is read): after the server died, the
/// batch's first request starts a new server, and every worker is its child.
fn forkserver_batch_after_server_death() {
    let (_, _, server) =
        Process::builder(who, ()).start_method(StartMethod::ForkServer).start().unwrap().join().unwrap();
    // SAFETY: kill with integer arguments; `server` is our live child (the fork server).
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    let pool = shmproc::Pool::builder().processes(3).start_method(StartMethod::ForkServer).create().unwrap();
    assert_eq!(pool.map(triple, 0..300u64).unwrap(), (0..300).map(triple).collect::<Vec<_>>());
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    let parents: Vec<u32> = pids.iter().map(|&p| parent_of(p)).collect();
    assert!(parents.iter().all(|&p| p == parents[0] && p != server), "{parents:?} (old server {server})");
    drop(pool);
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Dropping an unjoined ForkServer child closes its status pipe; the server
/// must survive writing the exit status into it.
fn forkserver_survives_dropped_children() {
    let server = || Process::builder(who, ()).start_method(StartMethod::ForkServer).start().unwrap().join().unwrap().2;
    let before = server();
    for _ in 0..3 {
        drop(Process::builder(sleep_ms, 50).start_method(StartMethod::ForkServer).start().unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server(), before, "the fork server was restarted");
}

/// Regression: a `Fork` child closed the parent's fork-server socket by its
/// fd number but left that number recorded, so a grandchild it forked closed
/// the same number again, by then reused for one of the child's own files.
fn regression_nested_fork_closes_a_reused_fd() {
    // This process runs a fork server, so it holds a client socket.
    let p = Process::builder(add, (1, 1)).start_method(StartMethod::ForkServer).start().unwrap();
    assert_eq!(p.join().unwrap(), 2);
    let mut child = Process::closure(|| {
        // Fill the lowest free fd numbers (the closed server socket's among them).
        let files: Vec<std::fs::File> = (0..64).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        let mut grandchild = Process::closure(move || {
            // SAFETY: fcntl(F_GETFD) only asks whether the fd is open.
            fds.iter().filter(|&&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0).count() as u32
        })
        .start()
        .unwrap();
        let closed = grandchild.join_timeout(JOIN).unwrap();
        drop(files);
        closed
    })
    .start()
    .unwrap();
    assert_eq!(child.join_timeout(JOIN).unwrap(), 0, "the grandchild found some of its inherited files closed");
}

fn default_is_forkserver() {
    assert_eq!(StartMethod::default(), StartMethod::ForkServer);
    let p = Process::builder(add, (2, 3)).start().unwrap();
    assert_eq!(p.start_method(), StartMethod::ForkServer);
    assert_eq!(p.join().unwrap(), 5);
    // Closures still fork.
    let p = Process::closure(|| 9u8).start().unwrap();
    assert_eq!(p.start_method(), StartMethod::Fork);
    assert_eq!(p.join().unwrap(), 9);
}

/// Whether a check runs under the command-line filter (a substring of its name).
fn wanted(filter: &Option<String>, name: &str) -> bool {
    match filter {
        None => true,
        Some(f) => name.contains(f.as_str()),
    }
}

fn main() {
    shmproc::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(300));
        eprintln!("process_gate: watchdog fired, aborting");
        std::process::abort();
    });
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    type Check = fn(StartMethod);
    let checks: [(&str, Check); 7] = [
        ("returns_value", returns_value),
        ("large_argument_and_result", large_argument_and_result),
        ("panic_message", panic_message),
        ("sigkill", sigkill),
        ("timeout_then_terminate", timeout_then_terminate),
        ("identity", identity),
        ("from_many_threads", from_many_threads),
    ];
    if std::env::args().any(|a| a == "--list") {
        // The libtest listing format, for tools that enumerate tests first.
        for m in ["Spawn", "ForkServer"] {
            for (name, _) in checks {
                println!("{m}::{name}: test");
            }
        }
        println!("forkserver_restarts: test");
        println!("forkserver_batch_after_server_death: test");
        println!("forkserver_survives_dropped_children: test");
        println!("default_is_forkserver: test");
        println!("regression_nested_fork_closes_a_reused_fd: test");
        return;
    }
    let mut ran = 0;
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        for (name, check) in checks {
            let full = format!("{m:?}::{name}");
            if !wanted(&filter, &full) {
                continue;
            }
            check(m);
            println!("test {full} ... ok");
            ran += 1;
        }
    }
    if wanted(&filter, "forkserver_restarts") {
        forkserver_restarts();
        println!("test forkserver_restarts ... ok");
        ran += 1;
    }
    if wanted(&filter, "forkserver_batch_after_server_death") {
        forkserver_batch_after_server_death();
        println!("test forkserver_batch_after_server_death ... ok");
        ran += 1;
    }
    if wanted(&filter, "forkserver_survives_dropped_children") {
        forkserver_survives_dropped_children();
        println!("test forkserver_survives_dropped_children ... ok");
        ran += 1;
    }
    if wanted(&filter, "default_is_forkserver") {
        default_is_forkserver();
        println!("test default_is_forkserver ... ok");
        ran += 1;
    }
    if wanted(&filter, "regression_nested_fork_closes_a_reused_fd") {
        regression_nested_fork_closes_a_reused_fd();
        println!("test regression_nested_fork_closes_a_reused_fd ... ok");
        ran += 1;
    }
    println!("process_gate: {ran} checks passed");
}
