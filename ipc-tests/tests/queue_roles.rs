//! Senders and receivers as types across real processes (issue 10 item 1):
//! iterators end once every sender is gone (dropped, exited or killed), and a
//! send after every receiver is gone fails at once, handing the value back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipc_tests::unique_name;
use shmproc::{Process, Queue, RecvTimeoutError, SendError, TrySendError};

const T: Duration = Duration::from_secs(30);

/// The tests that fork run one at a time: a child forked by one test while
/// another test's halves were just cloned would inherit them (as a forked
/// child inherits a pipe's fds) and keep that queue connected until it exits.
static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_forker() -> std::sync::MutexGuard<'static, ()> {
    FORKS.lock().unwrap_or_else(|e| e.into_inner())
}
const WRITER: &str = env!("CARGO_BIN_EXE_queue_writer");

/// Receives until `Disconnected`, failing the test on a timeout.
fn drain(rx: &shmproc::Receiver<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(T) {
            Ok(v) => got.push(v),
            Err(RecvTimeoutError::Disconnected) => return got,
            Err(e) => panic!("receiver did not see the senders go: {e}"),
        }
    }
}

/// Regression (issue 10): four forked workers iterating a task queue hung
/// after the producer dropped its handle (each worker's handle counted as a
/// sender). With `channel()` halves the workers' `for t in rx.iter()` ends.
#[test]
fn four_workers_end_when_the_producer_drops_its_sender() {
    let _one = one_forker();
    let n: u64 = if cfg!(debug_assertions) { 2_000 } else { 20_000 };
    let (tasks_tx, tasks_rx) = shmproc::queue::channel::<u64>(64).unwrap();
    let (results_tx, results_rx) = shmproc::queue::channel::<u64>(64).unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (rx, tx) = (tasks_rx.clone(), results_tx.clone());
        workers.push(
            Process::closure(move || {
                let mut done = 0u64;
                for t in rx.iter() {
                    tx.send(t * 2).unwrap();
                    done += 1;
                }
                done
            })
            .start()
            .unwrap(),
        );
    }
    // The parent keeps no receiver of tasks and no sender of results.
    drop((tasks_rx, results_tx));
    // Results are drained while tasks go out (both rings are small).
    let producer = std::thread::spawn(move || {
        for t in 0..n {
            tasks_tx.send_timeout(t, T).unwrap();
        }
        // tasks_tx drops here: the last sender of tasks.
    });
    let got = drain(&results_rx);
    producer.join().unwrap();
    let mut per_worker = 0;
    for mut w in workers {
        match w.join_timeout(T) {
            Ok(k) => per_worker += k,
            Err(e) => {
                let _ = w.kill();
                panic!("a worker did not end after the producer dropped its sender: {e}");
            }
        }
    }
    assert_eq!(per_worker, n);
    assert_eq!(got.len() as u64, n);
    assert_eq!(got.iter().sum::<u64>(), n * (n - 1));
}

fn writer(name: &str, count: u64, mode: &str) -> Child {
    Command::new(WRITER)
        .args([name, &count.to_string(), mode])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn queue_writer")
}

fn first_line(c: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line
}

/// Two binaries share a named queue: the reader's iterator ends when the
/// writer exits.
#[test]
fn named_reader_ends_when_the_writer_binary_exits() {
    let name = unique_name("qroles-exit");
    let rx = Queue::<u64>::builder().name(&name).capacity(16).create_receiver().unwrap();
    let mut w = writer(&name, 500, "exit");
    let got = drain(&rx);
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    assert_eq!(ipc_tests::wait_child(&mut w, T).code(), Some(0));
}

/// As above, with the writer killed (kill -9) after it sent everything.
#[test]
fn named_reader_ends_when_the_writer_binary_is_killed() {
    let name = unique_name("qroles-kill");
    let rx = Queue::<u64>::builder().name(&name).capacity(256).create_receiver().unwrap();
    let mut w = writer(&name, 100, "hold");
    assert_eq!(first_line(&mut w).trim(), "sent");
    w.kill().unwrap();
    let got = drain(&rx);
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let _ = ipc_tests::wait_child(&mut w, T);
}

/// Regression (issue 10): a send after every receiver was gone succeeded
/// until the ring was full (the messages were lost), then failed after ~50 ms.
#[test]
fn send_after_every_receiver_is_gone_fails_at_once_with_the_value() {
    let _one = one_forker();
    let (tx, rx) = shmproc::queue::channel::<u64>(1024).unwrap();
    let mut child = Process::closure(move || rx.recv_timeout(T).unwrap()).start().unwrap();
    tx.send(41).unwrap();
    assert_eq!(child.join_timeout(T).unwrap(), 41);
    // The ring has room for 1023 more: the send must still fail, at once.
    assert_eq!(tx.send(42), Err(SendError::Disconnected(42)));
    assert_eq!(tx.try_send(43), Err(TrySendError::Disconnected(43)));
    assert!(tx.is_empty(), "nothing was queued after the receivers went");
}

/// Regression (CI of 2026-11-27, `typed_messages` failing about 1 run in
/// 200): a fork by *another* thread between making a sender and starting the
/// child it was moved into made the parent skip registering that child, so
/// the parent's drop of its own sender (with the closure) left the queue
/// without senders and the receiver saw `Disconnected` before the child's
/// first send. The hand-over is now counted per forking thread. The child
/// waits before it sends, so without the fix the receiver reliably sees the
/// queue disconnected first.
#[test]
fn a_fork_by_another_thread_does_not_lose_the_hand_over_to_the_next_child() {
    let _one = one_forker();
    let (tx, rx) = shmproc::queue::channel::<u64>(8).unwrap();
    std::thread::spawn(|| Process::closure(|| 0u8).start().unwrap().join_timeout(T).unwrap()).join().unwrap();
    let mut child = Process::closure(move || {
        std::thread::sleep(Duration::from_millis(300));
        tx.send(7).unwrap();
        0u8
    })
    .start()
    .unwrap();
    // The parent's only sender went with the closure.
    assert_eq!(rx.recv_timeout(T), Ok(7));
    assert_eq!(rx.recv_timeout(T), Err(RecvTimeoutError::Disconnected));
    child.join_timeout(T).unwrap();
}
