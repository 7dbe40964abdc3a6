//! Runs the crate's ported `multiprocessing` examples (`examples/*.rs`) as
//! part of the tests: each example's `main` calls `shmproc::init()` first, so
//! it can be this binary's `main` too (`harness = false`; Spawn and
//! ForkServer re-execute this binary and enter the same `main`).

#[path = "../../examples/fn_target.rs"]
mod fn_target;
#[path = "../../examples/shared_counter.rs"]
mod shared_counter;
#[path = "../../examples/task_queue.rs"]
mod task_queue;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits for `child` at most `limit`; kills (and reaps) it past that.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `examples/jobs_reader.rs` and `examples/jobs_writer.rs` as two binaries:
/// the reader's iterator ends when the writer exits.
fn jobs_two_binaries() {
    let name = format!("shmproc-test-jobs-{}", std::process::id());
    let mut reader = Command::new(env!("CARGO_BIN_EXE_jobs_reader"))
        .arg(&name)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start jobs_reader");
    let mut lines = BufReader::new(reader.stdout.take().expect("reader stdout")).lines();
    // Bounded: a reader that fails exits, and its stdout closes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = lines.next();
        let _ = tx.send(first);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = tx.send(rest.into_iter().next().map(Ok));
    });
    let ready = rx.recv_timeout(Duration::from_secs(30)).expect("the reader's first line in time");
    assert_eq!(ready.expect("a line").expect("utf-8"), format!("ready {name}"));
    let writer = Command::new(env!("CARGO_BIN_EXE_jobs_writer"))
        .args([name.as_str(), "200"])
        .stdout(Stdio::null())
        .spawn()
        .map(|mut w| wait_bounded(&mut w, Duration::from_secs(30), "jobs_writer"))
        .expect("start jobs_writer");
    assert!(writer.success(), "jobs_writer: {writer}");
    let status = wait_bounded(&mut reader, Duration::from_secs(30), "jobs_reader (its iterator must end)");
    let _ = shmproc::unlink(&name);
    let _ = shmproc::unlink(&format!("{name}-stats"));
    assert!(status.success(), "jobs_reader: {status}");
    let last = rx.recv_timeout(Duration::from_secs(30)).expect("the reader's output").expect("a last line");
    assert_eq!(last.expect("utf-8"), "jobs_reader: 200 jobs, sum 20100: the writer has exited");
}

fn main() {
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(180));
        eprintln!("examples: watchdog fired, aborting");
        std::process::abort();
    });
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Each example calls shmproc::init() first thing: the re-executed copies
    // of this binary become the example's children there.
    shared_counter::main().expect("examples/shared_counter.rs");
    println!("test shared_counter ... ok");
    fn_target::main().expect("examples/fn_target.rs");
    println!("test fn_target ... ok");
    task_queue::main().expect("examples/task_queue.rs");
    println!("test task_queue ... ok");
    jobs_two_binaries();
    println!("test jobs_reader + jobs_writer ... ok");
}
