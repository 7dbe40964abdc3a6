//! A task queue and a result queue served by four workers: the port of
//! Python's classic
//!
//! ```python
//! def worker(tasks, results):
//!     for n in iter(tasks.get, None):
//!         results.put((n, n * n))
//!
//! workers = [Process(target=worker, args=(tasks, results)) for _ in range(4)]
//! ```
//!
//! without the `None` sentinels: the workers are `fn` targets handed a
//! `Receiver` of tasks and a `Sender` of results; their `for t in tasks.iter()`
//! ends once the producer drops its sender, and the parent's `results.iter()`
//! ends once every worker has exited (each dropped its result sender). The
//! parent drops its own halves right after starting the workers: the halves it
//! handed them keep their sides connected until each child has opened its copy.
//!
//! ```sh
//! cargo run --example task_queue
//! ```

use shmproc::queue::{channel, Receiver, Sender};
use shmproc::Process;

const TASKS: u64 = 100;

/// Squares tasks until every task sender is gone; returns how many it served.
fn worker((tasks, results): (Receiver<u64>, Sender<[u64; 2]>)) -> Result<u64, String> {
    let mut served = 0;
    for n in tasks.iter() {
        results.send([n, n * n]).map_err(|e| e.to_string())?;
        served += 1;
    }
    Ok(served)
}

/// Runs the example (also called by `ipc-tests/tests/examples.rs`).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    shmproc::init(); // first line of main: Spawn and ForkServer children start here
    let (tasks, task_rx) = channel::<u64>(128)?;
    let (result_tx, results) = channel::<[u64; 2]>(128)?;
    let workers = (0..4)
        .map(|_| Process::builder(worker, (task_rx.clone(), result_tx.clone())).start())
        .collect::<Result<Vec<_>, _>>()?;
    drop((task_rx, result_tx)); // only the workers' halves count from here on
    for n in 1..=TASKS {
        tasks.send(n)?;
    }
    drop(tasks); // the workers' loops end once the queue is drained
    let mut seen = vec![false; TASKS as usize + 1];
    for [n, square] in results.iter() {
        assert_eq!(square, n * n);
        assert!(!std::mem::replace(&mut seen[n as usize], true), "result {n} twice");
    }
    assert!(seen[1..].iter().all(|&s| s), "a result is missing");
    let mut served = Vec::new();
    for p in workers {
        served.push(p.join()??);
    }
    assert_eq!(served.iter().sum::<u64>(), TASKS);
    println!("task_queue: {TASKS} results, served per worker {served:?}");
    Ok(())
}
