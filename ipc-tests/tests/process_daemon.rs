//! A daemon child dies when its parent is SIGKILLed, for every start method;
//! a plain child outlives its parent (so the check can fail).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Field 22 (start time) and field 3 (state) of /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((fields[19].parse().ok()?, fields[0].to_string()))
}

fn alive(pid: u32, start: u64) -> bool {
    matches!(stat(pid), Some((s, state)) if s == start && state != "Z" && state != "X")
}

/// Runs the parent role, returns (child pid, its start time) after killing the parent.
fn kill_parent_of(method: &str, mode: &str) -> (u32, u64) {
    let mut parent = Command::new(env!("CARGO_BIN_EXE_process_daemon_parent"))
        .args([method, mode])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = parent.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            let _ = parent.kill();
            let _ = parent.wait();
            panic!("the parent role did not report its child");
        }
    };
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
    let (start, _) = stat(pid).expect("child exists");
    assert!(alive(pid, start));
    parent.kill().unwrap(); // SIGKILL
    parent.wait().unwrap();
    (pid, start)
}

fn gone_within(pid: u32, start: u64, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !alive(pid, start) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn daemon_dies_with_parent(method: &str) {
    let (pid, start) = kill_parent_of(method, "daemon");
    assert!(gone_within(pid, start, Duration::from_secs(20)), "{method} daemon child {pid} outlived its parent");
}

#[test]
fn fork_daemon_dies_with_parent() {
    daemon_dies_with_parent("fork");
}

#[test]
fn spawn_daemon_dies_with_parent() {
    daemon_dies_with_parent("spawn");
}

#[test]
fn forkserver_daemon_dies_with_parent() {
    daemon_dies_with_parent("forkserver");
}

#[test]
fn plain_child_outlives_parent() {
    let (pid, start) = kill_parent_of("fork", "plain");
    let outlived = !gone_within(pid, start, Duration::from_millis(500));
    if alive(pid, start) {
        // Clean up: same pid and start time, so it is still our grandchild.
        // SAFETY: kill with integer arguments.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(outlived, "a non-daemon child died with its parent");
}
