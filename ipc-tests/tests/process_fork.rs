//! `Process` with `StartMethod::Fork`, inside the multi-threaded test harness,
//! plus the start-method checks that need no main gate.

use std::time::Duration;

use shmproc::process::{self, ExitStatus, JoinError, Process, StartError, StartMethod};

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

fn exits(code: i32) -> u8 {
    // A target that ends its process without returning.
    // SAFETY: `_exit` ends the child at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn who(_: ()) -> (String, u32, u32) {
    let me = process::current_process();
    (me.name, me.pid, me.ppid)
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

const JOIN: Duration = Duration::from_secs(30);

#[test]
fn fn_target_returns_its_value() {
    let mut p = Process::builder(add, (40, 2)).start_method(StartMethod::Fork).start().unwrap();
    assert_eq!(p.start_method(), StartMethod::Fork);
    assert_eq!(p.join_timeout(JOIN).unwrap(), 42);
    assert!(matches!(p.join_timeout(JOIN), Err(JoinError::AlreadyJoined)));
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(0)));
}

#[test]
fn closure_target_returns_its_value() {
    let words = ["a".to_string(), "bc".to_string()];
    let mut p = Process::closure(move || words.concat().len() as u32 * 10).start().unwrap();
    assert_eq!(p.join_timeout(JOIN).unwrap(), 30);
}

#[test]
fn default_without_init_is_fork_and_closures_only_fork() {
    assert_eq!(StartMethod::default(), StartMethod::Fork);
    let mut p = Process::builder(add, (1, 2)).start().unwrap();
    assert_eq!(p.start_method(), StartMethod::Fork);
    assert_eq!(p.join_timeout(JOIN).unwrap(), 3);
    let e = Process::closure(|| 1u8).start_method(StartMethod::Spawn).start().unwrap_err();
    assert!(matches!(e, StartError::ClosureNeedsFork { method: StartMethod::Spawn }), "{e}");
}

#[test]
fn spawn_and_forkserver_refuse_without_the_main_gate() {
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let e = Process::builder(add, (1, 2)).start_method(m).start().unwrap_err();
        assert!(matches!(e, StartError::NotInitialized { method } if method == m), "{e}");
        assert!(e.to_string().contains("shmproc::init()"), "{e}");
    }
}

#[test]
fn panic_message_reaches_join() {
    let mut p = Process::builder(boom, "disk full".to_string()).start_method(StartMethod::Fork).start().unwrap();
    match p.join_timeout(JOIN) {
        Err(JoinError::Panicked { message, location, status }) => {
            assert_eq!(message, "target failed: disk full");
            assert!(location.unwrap().contains("process_fork.rs"));
            assert_eq!(status, ExitStatus::Exited(1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigkill_is_reported() {
    let mut p = Process::builder(sleeper, 30).start_method(StartMethod::Fork).start().unwrap();
    assert!(p.is_alive());
    p.kill().unwrap();
    match p.join_timeout(JOIN) {
        Err(JoinError::Died { status }) => assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL)),
        other => panic!("{other:?}"),
    }
    assert!(!p.is_alive());
    // Signalling an ended child is a no-op.
    p.kill().unwrap();
}

#[test]
fn join_timeout_then_terminate() {
    let mut p = Process::builder(sleeper, 30).start_method(StartMethod::Fork).start().unwrap();
    assert!(matches!(p.join_timeout(Duration::from_millis(50)), Err(JoinError::Timeout)));
    assert!(p.is_alive());
    assert_eq!(p.exit_status(), None);
    p.terminate().unwrap();
    let e = p.join_timeout(JOIN).unwrap_err();
    assert_eq!(e.status(), Some(ExitStatus::Signaled(libc::SIGTERM)), "{e}");
    assert!(e.to_string().contains("SIGTERM"), "{e}");
}

#[test]
fn exit_code_without_result() {
    let mut p = Process::builder(exits, 7).start_method(StartMethod::Fork).start().unwrap();
    match p.join_timeout(JOIN) {
        Err(JoinError::Died { status }) => assert_eq!(status, ExitStatus::Exited(7)),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.exit_status(), Some(ExitStatus::Exited(7)));
}

#[test]
fn result_larger_than_a_pipe_buffer() {
    let n = 3 << 20;
    let v = Process::builder(big, n).start_method(StartMethod::Fork).start().unwrap().join_timeout(JOIN).unwrap();
    assert_eq!(v, big(n));
}

#[test]
fn child_knows_its_name_pid_and_parent() {
    let mut p = Process::builder(who, ()).name("worker-7").start_method(StartMethod::Fork).start().unwrap();
    let pid = p.pid();
    assert_eq!(p.name(), "worker-7");
    let (name, cpid, ppid) = p.join_timeout(JOIN).unwrap();
    assert_eq!((name.as_str(), cpid, ppid), ("worker-7", pid, std::process::id()));
    let me = process::current_process();
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.name, "MainProcess");
}

#[test]
fn default_names_are_numbered() {
    let mut p = Process::builder(add, (0, 0)).start().unwrap();
    let mut q = Process::builder(add, (0, 0)).start().unwrap();
    let number = |name: &str| name.strip_prefix("Process-").and_then(|n| n.parse::<u64>().ok());
    let (a, b) = (number(p.name()), number(q.name()));
    assert!(a.is_some() && b.is_some(), "{} / {}", p.name(), q.name());
    assert_ne!(a, b, "two children share the name {}", p.name());
    p.join_timeout(JOIN).unwrap();
    q.join_timeout(JOIN).unwrap();
}

#[test]
fn active_children_lists_running_unjoined_children() {
    let mut a = Process::builder(sleeper, 30).name("sleepy-a").start().unwrap();
    let mut b = Process::builder(sleeper, 30).name("sleepy-b").start().unwrap();
    let listed = process::active_children();
    for p in [&a, &b] {
        assert!(listed.iter().any(|c| c.pid == p.pid() && c.name == p.name()), "{listed:?}");
    }
    a.kill().unwrap();
    assert!(a.join_timeout(JOIN).is_err());
    let listed = process::active_children();
    assert!(!listed.iter().any(|c| c.pid == a.pid()), "{listed:?}");
    assert!(listed.iter().any(|c| c.pid == b.pid()), "{listed:?}");
    b.kill().unwrap();
    assert!(b.join_timeout(JOIN).is_err());
}

#[test]
fn cpu_count_honours_the_affinity_mask() {
    let n = process::cpu_count();
    assert!(n >= 1);
    // available_parallelism also reads sched_getaffinity (no cgroup quota here).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string();
    let mut count = 0;
    for part in list.split(',') {
        let mut r = part.split('-').map(|x| x.parse::<usize>().unwrap());
        let lo = r.next().unwrap();
        let hi = r.next().unwrap_or(lo);
        count += hi - lo + 1;
    }
    // The harness thread may have a narrower mask than the process? No: the
    // mask is inherited and nobody changed it; both describe this thread.
    assert_eq!(n, count, "Cpus_allowed_list: {list}");
}

#[test]
fn many_children_from_many_threads() {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..10u64 {
                    let mut p = Process::builder(add, (t, i)).start().unwrap();
                    assert_eq!(p.join_timeout(JOIN).unwrap(), t + i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn dropping_a_daemon_kills_and_reaps_it() {
    let p = Process::builder(sleeper, 30).daemon(true).start().unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", p.pid()));
    assert!(proc_dir.exists());
    drop(p);
    // Drop SIGKILLs and reaps a daemon child before it returns, so its /proc
    // entry is gone (a reuse of the pid within these microseconds is not a
    // realistic concern).
    assert!(!proc_dir.exists());
}

#[test]
fn non_capturing_closure_is_a_fn_target() {
    let mut p = Process::builder(|x: u32| x + 1, 41).start_method(StartMethod::Fork).start().unwrap();
    assert_eq!(p.join_timeout(JOIN).unwrap(), 42);
}

#[test]
fn string_result_roundtrip() {
    fn text(_: ()) -> String {
        "\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}\u{ff}".to_string()
    }
    let mut p = Process::builder(text, ()).start().unwrap();
    assert_eq!(p.join_timeout(JOIN).unwrap(), text(()));
}

#[test]
fn results_around_the_inline_limits() {
    // Reports of up to 256 bytes are peeked, up to 4 KiB taken inline, larger
    // ones come in a memfd: check each side of both limits.
    for n in [0usize, 200, 250, 260, 1000, 4000, 4090, 4100, 5000, 70_000] {
        let v = Process::builder(big, n).start_method(StartMethod::Fork).start().unwrap().join_timeout(JOIN).unwrap();
        assert_eq!(v, big(n), "n = {n}");
    }
}

/// A Fork child holds only its own report-socket pair, not the idle pairs
/// its parent keeps for later children (a descendant could write into those).
/// Checked in the single-threaded helper binary `fork_fds`, where the pool
/// holds exactly what it left there.
#[test]
fn a_fork_child_holds_none_of_its_parents_idle_report_sockets() {
    let (status, out, err) = ipc_tests::run_with_timeout(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_fork_fds")),
        Duration::from_secs(60),
    );
    assert!(status.success() && out.trim() == "ok", "{out}{err}");
}

/// A child forked while another thread of its parent holds the registry of
/// children (here `active_children`, called in a loop) must still be able to
/// start and join children of its own: the lock it inherits is held by a
/// thread that did not come along. Before the registry's lock knew about
/// forks, a nested start waited for it for ever (the join below timed out).
#[test]
fn a_child_forked_while_another_thread_lists_children_can_start_its_own() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(process::active_children());
            }
        })
    };
    let mut failures = Vec::new();
    for round in 0..150 {
        let mut p = Process::closure(|| {
            let mut inner = Process::closure(|| 7u32).start().expect("nested start");
            inner.join_timeout(Duration::from_secs(10)).expect("nested join")
        })
        .start()
        .unwrap();
        match p.join_timeout(Duration::from_secs(10)) {
            Ok(7) => {}
            other => {
                let _ = p.kill();
                let _ = p.join_timeout(JOIN);
                failures.push(format!("round {round}: {other:?}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    lister.join().unwrap();
    assert!(failures.is_empty(), "a forked child could not start its own child: {failures:?}");
}
