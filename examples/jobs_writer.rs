//! The writer of the two-binary example (see `jobs_reader.rs`): opens the
//! reader's named queue as a sender and its named array, sends `N` jobs,
//! records what it sent in the array, and exits: the reader's iterator ends.
//!
//! ```sh
//! cargo run --example jobs_writer -- my-jobs 50   # while jobs_reader runs
//! ```

use shmproc::{Array, Queue};

/// Runs the writer (also run by `ipc-tests/tests/examples.rs` as a binary).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "shmproc-example-jobs".into());
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    let jobs = Queue::<u64>::builder().name(&name).open_sender()?;
    let stats = Array::<u64>::open(&format!("{name}-stats"))?;
    let mut sum = 0;
    for job in 1..=n {
        jobs.send(job)?;
        sum += job;
    }
    stats.set(0, n)?;
    stats.set(1, sum)?;
    drop(jobs); // the reader drains the queue, then its iterator ends
    println!("jobs_writer: sent {n} jobs");
    Ok(())
}
