//! Two binaries sharing a named queue and a named array: this one is the
//! reader (run it first), `jobs_writer.rs` the writer. The
//! port of two Python scripts sharing a queue through a manager.
//!
//! The reader creates the queue `NAME` taking only its receiving side, and the
//! array `NAME-stats`; a writer started later opens them by name. The queue
//! counts as disconnected only after a sender has joined, so the reader's
//! `for job in jobs.iter()` waits for the writer and ends when the writer
//! exits (dropped its sender, or died). Both names go when the reader ends.
//!
//! ```sh
//! cargo run --example jobs_reader -- my-jobs    # terminal 1 (prints "ready my-jobs")
//! cargo run --example jobs_writer -- my-jobs 50 # terminal 2, while the reader runs
//! ```

use std::io::Write;

use shmproc::{Array, Queue};

/// Runs the reader (also run by `ipc-tests/tests/examples.rs` as a binary).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "shmproc-example-jobs".into());
    let jobs = Queue::<u64>::builder().name(&name).capacity(64).create_receiver()?;
    let stats = Array::<u64>::create(&format!("{name}-stats"), &[0, 0])?;
    println!("ready {name}");
    std::io::stdout().flush()?;
    let (mut count, mut sum) = (0u64, 0u64);
    for job in jobs.iter() {
        count += 1;
        sum += job;
    }
    // The writer filled in what it sent before its sender went away.
    let sent = stats.to_vec()?;
    if sent != [count, sum] {
        return Err(format!("read {count} jobs summing to {sum}, the writer says {sent:?}").into());
    }
    println!("jobs_reader: {count} jobs, sum {sum}: the writer has exited");
    Ok(())
}
