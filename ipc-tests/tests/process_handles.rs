//! A launched executable receives shmproc objects by handle (anonymous ones by
//! inherited fd, named ones by name) and uses them; missing and mistyped
//! handles give precise errors.
//!
//! Queue, Pipe and Mutex are added with one `share` line here and one user
//! function in `src/bin/process_handle_user.rs` each.

use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmproc::process::{CommandExt, ShareError};
use shmproc::{Array, Segment, Value};

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

struct Objects {
    counter: Value<u64>,
    arr: Array<u32>,
    seg: Segment,
}

fn objects() -> Objects {
    Objects {
        counter: Value::anonymous(41).unwrap(),
        arr: Array::create(&unique("handles"), &[1, 2, 3]).unwrap(),
        seg: Segment::builder().size(64).create().unwrap(),
    }
}

fn run(mode: &str, o: &Objects) -> ExitStatus {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_process_handle_user"));
    cmd.arg(mode);
    cmd.share("counter", &o.counter).unwrap().share("ARR", &o.arr).unwrap().share("seg", &o.seg).unwrap();
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
    assert!(run("use", &o).success());
    assert_eq!(o.counter.get().unwrap(), 42);
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
fn bad_share_names_are_refused() {
    let o = objects();
    for bad in ["", "a-b", "sp ace", &"x".repeat(65)] {
        assert!(matches!(Command::new("true").share(bad, &o.counter), Err(ShareError::BadName { .. })), "{bad:?}");
    }
}
