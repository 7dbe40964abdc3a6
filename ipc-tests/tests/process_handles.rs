//! A launched executable receives shmproc objects by handle (anonymous ones by
//! inherited fd, named ones by name) and uses them; missing and mistyped
//! handles give precise errors.
//!
//! The objects: an anonymous `Value`, a named `Array`, a raw `Segment`, an
//! anonymous `Queue`, one end of an anonymous `Pipe` and an anonymous `Mutex`.

use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmproc::process::{CommandExt, ShareError};
use shmproc::{Array, Connection, Mutex, Pipe, Queue, Segment, Value};

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

struct Objects {
    counter: Value<u64>,
    arr: Array<u32>,
    seg: Segment,
    jobs: Queue<u64>,
    /// (ours, the child's)
    pipe: (Connection, Connection),
    lock: Mutex<u64>,
}

fn objects() -> Objects {
    Objects {
        counter: Value::anonymous(41).unwrap(),
        arr: Array::create(&unique("handles"), &[1, 2, 3]).unwrap(),
        seg: Segment::builder().size(64).create().unwrap(),
        jobs: Queue::anonymous(16).unwrap(),
        pipe: Pipe::new().unwrap(),
        lock: Mutex::anonymous(1).unwrap(),
    }
}

fn run(mode: &str, o: &Objects) -> ExitStatus {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_process_handle_user"));
    cmd.arg(mode);
    cmd.share("counter", &o.counter).unwrap().share("ARR", &o.arr).unwrap().share("seg", &o.seg).unwrap();
    cmd.share("jobs", &o.jobs).unwrap().share("pipe", &o.pipe.1).unwrap().share("lock", &o.lock).unwrap();
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process_handle_user {mode} did not finish");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn launched_binary_uses_shared_objects() {
    let o = objects();
    assert!(matches!(o.counter.handle(), shmproc::Handle::Fd(_)));
    assert!(matches!(o.arr.handle(), shmproc::Handle::Name(_)));
    for n in 1..=3 {
        o.jobs.send(n).unwrap();
    }
    o.pipe.0.send(&7u64).unwrap();
    assert!(run("use", &o).success());
    assert_eq!(o.counter.get().unwrap(), 42);
    assert_eq!(o.jobs.recv_timeout(Duration::from_secs(10)).unwrap(), 60, "queue reply");
    assert_eq!(o.pipe.0.recv_timeout::<u64>(Duration::from_secs(10)).unwrap(), 42, "pipe reply");
    assert_eq!(*o.lock.lock_timeout(Duration::from_secs(10)).unwrap(), 101, "mutex update");
    assert_eq!(o.arr.to_vec().unwrap(), vec![2, 4, 6]);
    // SAFETY: the child has exited; 5 of the 64 payload bytes are read.
    let got = unsafe { std::slice::from_raw_parts(o.seg.payload_ptr().as_ptr(), 5) };
    assert_eq!(got, b"hello");
}

#[test]
fn missing_and_mistyped_handles_are_precise_errors() {
    let o = objects();
    for mode in ["missing", "wrong-kind", "wrong-type"] {
        assert!(run(mode, &o).success(), "mode {mode}");
    }
}

#[test]
fn shared_fds_do_not_leak_into_other_children() {
    let o = objects();
    let mut cmd = Command::new("true");
    cmd.share("counter", &o.counter).unwrap();
    let value = cmd
        .get_envs()
        .find(|(k, _)| *k == "SHMPROC_HANDLE_COUNTER")
        .and_then(|(_, v)| v)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let fd: i32 = value.strip_prefix("fd:").unwrap().parse().unwrap();
    let ours = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("the Command keeps its duplicate open");
    assert!(ours.to_string_lossy().contains("memfd:"), "{ours:?}");
    // Only `cmd`'s child gets FD_CLOEXEC cleared; any other program does not
    // inherit the fd (its fd {fd}, if any, is something else).
    let out = Command::new("sh").arg("-c").arg(format!("readlink /proc/$$/fd/{fd} || true")).output().unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), ours.to_string_lossy());
    drop(cmd);
}

#[test]
fn regression_inherited_fd_leaks_into_the_launched_programs_children() {
    let o = objects();
    assert!(run("no-leak", &o).success());
}

#[test]
fn bad_share_names_are_refused() {
    let o = objects();
    for bad in ["", "a-b", "sp ace", &"x".repeat(65)] {
        assert!(matches!(Command::new("true").share(bad, &o.counter), Err(ShareError::BadName { .. })), "{bad:?}");
    }
}
