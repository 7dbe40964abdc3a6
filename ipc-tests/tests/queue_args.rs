//! Queue halves as `Process` arguments (issue 10 items 1 and 2), under every
//! start method: the classic four-worker task/result program ends by itself
//! with every result exactly once, although the parent drops its own result
//! sender right after starting the workers (before a Spawn or ForkServer
//! child has opened its copy); a worker killed with SIGKILL does not keep the
//! results receiver waiting (its entry is discounted); typed and joinable
//! halves travel too, and a joinable worker killed mid-task ends the
//! parent's `join()` with `Disconnected`.
//!
//! `harness = false`: `main` calls `shmproc::init()` first (Spawn and
//! ForkServer re-execute this binary). A watchdog aborts the run if anything
//! hangs; every wait in the checks is bounded.

use std::time::Duration;

use shmproc::process::{Process, StartMethod};
use shmproc::queue::{
    channel, typed_channel, JoinableReceiver, QueueJoinError, Receiver, RecvTimeoutError, Sender, TryRecvError,
    TypedReceiver, TypedRecvError, TypedSender,
};
use shmproc::Queue;

const WAIT: Duration = Duration::from_secs(20);
/// Tasks per run (a size knob: `SHMPROC_TEST_TASKS`).
fn tasks() -> u64 {
    std::env::var("SHMPROC_TEST_TASKS").ok().and_then(|s| s.parse().ok()).unwrap_or(400)
}

/// Serves tasks until every task sender is gone; returns how many it served.
fn worker((tasks, results): (Receiver<u64>, Sender<u64>)) -> u64 {
    let mut served = 0;
    loop {
        match tasks.recv_timeout(WAIT) {
            Ok(t) => {
                results.send_timeout(t * 2 + 1, WAIT).expect("send a result");
                served += 1;
            }
            Err(RecvTimeoutError::Disconnected) => return served,
            Err(e) => panic!("worker: {e:?}"),
        }
    }
}

/// Receives until every sender is gone; a timeout fails the check.
fn drain(rx: &Receiver<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(v) => got.push(v),
            Err(RecvTimeoutError::Disconnected) => return got,
            Err(e) => panic!("results: {e:?} after {} results", got.len()),
        }
    }
}

fn four_workers_end_by_themselves(m: StartMethod) {
    let n = tasks();
    let (tx, rx) = channel::<u64>(n as usize).unwrap();
    let (rtx, rrx) = channel::<u64>(n as usize).unwrap();
    let mut workers: Vec<_> =
        (0..4).map(|_| Process::builder(worker, (rx.clone(), rtx.clone())).start_method(m).start().unwrap()).collect();
    // The parent's own halves go at once: only the children's count now.
    drop(rtx);
    drop(rx);
    // At once (a Spawn or ForkServer child has most likely not opened its
    // copies yet): the reserved entries keep both queues connected.
    assert_eq!(rrx.try_recv(), Err(TryRecvError::Empty), "results disconnected before the workers opened them");
    for t in 0..n {
        tx.send_timeout(t, WAIT).unwrap();
    }
    drop(tx);
    let mut got = drain(&rrx);
    got.sort_unstable();
    assert_eq!(got, (0..n).map(|t| t * 2 + 1).collect::<Vec<_>>(), "every result exactly once");
    let served: u64 = workers.iter_mut().map(|p| p.join_timeout(WAIT).unwrap()).sum();
    assert_eq!(served, n);
}

/// Holds its halves and never returns (killed by the parent).
fn stuck((_tasks, _results): (Receiver<u64>, Sender<u64>)) -> u64 {
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn killed_worker_is_discounted(m: StartMethod) {
    let (tx, rx) = channel::<u64>(16).unwrap();
    let (rtx, rrx) = channel::<u64>(16).unwrap();
    let mut good = Process::builder(worker, (rx.clone(), rtx.clone())).start_method(m).start().unwrap();
    let mut bad = Process::builder(stuck, (rx.clone(), rtx.clone())).start_method(m).start().unwrap();
    drop((rx, rtx));
    tx.send(1).unwrap();
    drop(tx);
    // The good worker's result comes; the stuck one keeps the side open.
    assert_eq!(rrx.recv_timeout(WAIT), Ok(3));
    assert_eq!(good.join_timeout(WAIT).unwrap(), 1);
    assert_eq!(rrx.recv_timeout(Duration::from_millis(100)), Err(RecvTimeoutError::Timeout));
    bad.kill().unwrap();
    assert!(bad.join_timeout(WAIT).is_err(), "killed");
    assert_eq!(rrx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
enum Job {
    Greet(String),
    Stop,
}

fn typed_worker((jobs, out): (TypedReceiver<Job>, TypedSender<String>)) -> usize {
    let mut n = 0;
    loop {
        match jobs.recv_timeout(WAIT) {
            Ok(Job::Greet(s)) => out.send(format!("hello {s}")).expect("typed send"),
            Ok(Job::Stop) => return n,
            Err(e) => panic!("typed worker: {e:?}"),
        }
        n += 1;
    }
}

fn typed_halves_travel(m: StartMethod) {
    let (jtx, jrx) = typed_channel::<Job>(16).unwrap();
    let (otx, orx) = typed_channel::<String>(16).unwrap();
    let mut p = Process::builder(typed_worker, (jrx, otx)).start_method(m).start().unwrap();
    for who in ["a", "b"] {
        jtx.send(Job::Greet(who.into())).unwrap();
    }
    jtx.send(Job::Stop).unwrap();
    assert_eq!(orx.recv_timeout(WAIT).unwrap(), "hello a");
    assert_eq!(orx.recv_timeout(WAIT).unwrap(), "hello b");
    assert_eq!(p.join_timeout(WAIT).unwrap(), 2);
    // The child's sender went with it, and ours was moved into the argument.
    assert!(matches!(orx.recv_timeout(WAIT), Err(TypedRecvError::Disconnected)));
}

/// Takes items and reports each done until every sender is gone.
fn joinable_worker(items: JoinableReceiver<u32>) -> u32 {
    let mut sum = 0;
    loop {
        match items.get_timeout(WAIT) {
            Ok(v) => {
                sum += v;
                items.task_done().expect("task_done");
            }
            Err(RecvTimeoutError::Disconnected) => return sum,
            Err(e) => panic!("joinable worker: {e:?}"),
        }
    }
}

fn joinable_halves_travel(m: StartMethod) {
    let (tx, rx) = Queue::<u32>::builder().capacity(16).create_joinable_split().unwrap();
    let mut p = Process::builder(joinable_worker, rx).start_method(m).start().unwrap();
    for v in 1..=4 {
        tx.put(v).unwrap();
    }
    tx.join_timeout(WAIT).expect("every item reported done");
    drop(tx);
    assert_eq!(p.join_timeout(WAIT).unwrap(), 10);
}

/// Takes one item, says so, and never reports it done (killed by the parent).
fn stuck_mid_task((items, took): (JoinableReceiver<u32>, Sender<u32>)) -> u32 {
    let v = items.get_timeout(WAIT).expect("get");
    took.send_timeout(v, WAIT).expect("ack");
    std::thread::sleep(Duration::from_secs(60));
    v
}

/// `join()` without a timeout must not outlive the last receiver: a worker
/// killed between `get` and `task_done` ends it with `Disconnected`.
fn join_ends_when_the_last_receiver_dies_mid_task(m: StartMethod) {
    let (tx, rx) = Queue::<u32>::builder().capacity(16).create_joinable_split().unwrap();
    let (atx, arx) = channel::<u32>(4).unwrap();
    let mut p = Process::builder(stuck_mid_task, (rx, atx)).start_method(m).start().unwrap();
    tx.put(7).unwrap();
    assert_eq!(arx.recv_timeout(WAIT), Ok(7));
    // Alive and holding the task: join keeps waiting.
    assert_eq!(tx.join_timeout(Duration::from_millis(300)), Err(QueueJoinError::Timeout));
    p.kill().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || done_tx.send(tx.join()).unwrap());
    let r = done_rx.recv_timeout(WAIT).expect("join() returned after the last receiver died");
    assert_eq!(r, Err(QueueJoinError::Disconnected { unfinished: 1 }));
    joiner.join().unwrap();
    assert!(p.join_timeout(WAIT).is_err(), "killed");
}

fn main() {
    shmproc::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(240));
        eprintln!("queue_args: watchdog fired, aborting");
        std::process::abort();
    });
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    type Check = fn(StartMethod);
    let checks: [(&str, Check); 5] = [
        ("four_workers_end_by_themselves", four_workers_end_by_themselves),
        ("killed_worker_is_discounted", killed_worker_is_discounted),
        ("typed_halves_travel", typed_halves_travel),
        ("joinable_halves_travel", joinable_halves_travel),
        ("join_ends_when_the_last_receiver_dies_mid_task", join_ends_when_the_last_receiver_dies_mid_task),
    ];
    for m in [StartMethod::Fork, StartMethod::Spawn, StartMethod::ForkServer] {
        for (name, check) in checks {
            check(m);
            println!("test {m:?}::{name} ... ok");
        }
    }
}
