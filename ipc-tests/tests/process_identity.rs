//! The main gate refuses to turn offsets into code unless it runs the very
//! same executable as the parent that sent them: a gate variable that reaches
//! another binary (or carries offsets outside the executable, or is
//! malformed) makes `shmproc::init()` exit with code 121 without running
//! anything.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};

/// The identity string `init()` compares: dev:ino:size:mtime:mtime_nsec.
fn identity_of(path: &str) -> String {
    let m = std::fs::metadata(path).unwrap();
    format!("{}:{}:{}:{}:{}", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
}

/// Runs the role binary (whose main calls `shmproc::init()` first) with a gate variable.
fn run_gate(var: &str, value: &str) -> Output {
    // "fork daemon" would start a child if the gate let main run: the gate
    // must exit before main gets that far.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_process_daemon_parent"));
    let (status, stdout, stderr) =
        ipc_tests::run_with_timeout(cmd.args(["fork", "plain"]).env(var, value), std::time::Duration::from_secs(60));
    Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() }
}

fn assert_refused(out: &Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(121), "{why}: {:?} stderr {err}", out.status);
    assert!(err.contains("refus"), "{why}: {err}");
    assert!(out.stdout.is_empty(), "{why}: main ran: {:?}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn spawn_gate_refuses_another_executable() {
    let other = identity_of(env!("CARGO_BIN_EXE_process_handle_user"));
    let out = run_gate("SHMPROC_SPAWN", &format!("v2;{other};0;0;0;1;0;1;-;x"));
    assert_refused(&out, "foreign identity");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the parent's"));
}

#[test]
fn spawn_gate_refuses_offsets_outside_the_executable() {
    let me = identity_of(env!("CARGO_BIN_EXE_process_daemon_parent"));
    let far = i64::MIN / 2;
    let out = run_gate("SHMPROC_SPAWN", &format!("v2;{me};{far};{far};0;1;0;1;-;x"));
    assert_refused(&out, "outside offsets");
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside this executable"));
}

#[test]
fn malformed_gates_are_refused() {
    for v in ["", "v2", "v3;1:2:3:4:5;0;0;0;1;0;1;-;x", "v2;1:2:3:4:5;zero;0;0;1;0;1;-;x"] {
        assert_refused(&run_gate("SHMPROC_SPAWN", v), v);
    }
    assert_refused(&run_gate("SHMPROC_FORKSERVER", "v1;nope"), "forkserver malformed");
}

#[test]
fn forkserver_gate_refuses_another_executable() {
    let other = identity_of(env!("CARGO_BIN_EXE_process_handle_user"));
    assert_refused(&run_gate("SHMPROC_FORKSERVER", &format!("v1;{other};3")), "forkserver foreign identity");
}
