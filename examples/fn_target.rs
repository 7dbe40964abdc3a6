//! An `fn` target handed shmproc objects as arguments, under
//! `StartMethod::Spawn` (a fresh copy of this binary): the port of Python's
//!
//! ```python
//! def worker(jobs, results, lock, done):
//!     for n in iter(jobs.get, None):
//!         results.send(n * n)
//!         with lock:
//!             done.value += 1
//!
//! p = Process(target=worker, args=(jobs, child_end, lock, done))
//! ```
//!
//! Every object here is anonymous: the queue, the pipe end, the lock and the
//! value reach the spawned child as inherited fds, carried with its argument.
//!
//! ```sh
//! cargo run --example fn_target
//! ```

use std::time::Duration;

use shmproc::process::StartMethod;
use shmproc::{Connection, Lock, Pipe, Process, Queue, Value};

/// Squares the jobs until a 0 arrives; answers on the pipe; counts under the lock.
fn worker((jobs, results, lock, done): (Queue<u64>, Connection, Lock, Value<u64>)) -> Result<u64, String> {
    let mut served = 0;
    loop {
        let n = jobs.recv_timeout(Duration::from_secs(30)).map_err(|e| format!("{e:?}"))?;
        if n == 0 {
            return Ok(served);
        }
        results.send(&(n * n)).map_err(|e| e.to_string())?;
        let _held = lock.acquire().map_err(|e| e.to_string())?;
        done.update(|d| *d += 1).map_err(|e| e.to_string())?;
        served += 1;
    }
}

/// Runs the example (also called by `ipc-tests/tests/examples.rs`).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    shmproc::init(); // first line of main: the spawned copy runs `worker` from here
    let jobs = Queue::<u64>::anonymous(16)?;
    let (results, child_end) = Pipe::new()?;
    let lock = Lock::anonymous()?;
    let done = Value::<u64>::anonymous(0)?;
    let p = Process::builder(worker, (jobs.clone(), child_end, lock.clone(), done.clone()))
        .start_method(StartMethod::Spawn)
        .start()?;
    for n in 1..=5 {
        jobs.send(n)?;
    }
    jobs.send(0)?;
    let squares =
        (0..5).map(|_| results.recv_timeout::<u64>(Duration::from_secs(30))).collect::<Result<Vec<_>, _>>()?;
    assert_eq!(squares, [1, 4, 9, 16, 25]);
    assert_eq!(p.join()??, 5);
    assert_eq!(done.get()?, 5);
    println!("fn_target: squares {squares:?} from a spawned child");
    Ok(())
}
