//! `init()` called late or conditionally (issue 10 item 6): a re-executed
//! copy stops (or ends) instead of running `main` again, says why on stderr,
//! and the parent's `JoinError` (Spawn) and `StartError` (ForkServer) name
//! `shmproc::init()` as the first line of `main`. The checks run in the
//! helper binary `late_init`, which must be a program of its own.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run(mode: &str) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_late_init"));
    cmd.arg("parent").env("LATE_INIT_MODE", mode);
    let out = output_within_a_minute(&mut cmd, &format!("late_init {mode}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` with its output captured; kills it and fails if it runs past a minute.
fn output_within_a_minute(cmd: &mut Command, what: &str) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn init_called_late_stops_the_copy_at_its_first_shmproc_call() {
    let (code, out, err) = run("late");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("exited with code 122"), "{out}");
    // The copies said why, on their stderr (shared with the parent's).
    assert!(err.contains("call shmproc::init() as the first line of main"), "{err}");
}

#[test]
fn init_called_conditionally_is_reported_when_the_copy_ends() {
    let (code, out, err) = run("conditional");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("exited with code 0"), "{out}");
}

/// A program that ignores SIGCHLD starts a ForkServer child: the server,
/// which inherits the disposition through its exec, must still reap its
/// children and report them (it used to spin and never answer, so `join`
/// hung), and the child gets the program's disposition back. The check runs
/// in the helper binary `sigchld_ignored` (ignoring SIGCHLD here would
/// change every other test of this binary).
#[test]
fn a_program_that_ignores_sigchld_can_join_forkserver_children() {
    let out = output_within_a_minute(&mut Command::new(env!("CARGO_BIN_EXE_sigchld_ignored")), "sigchld_ignored");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim() == "ok", "{text}");
}
