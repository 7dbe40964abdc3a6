//! A shared counter: four processes add to one `Value<u64>` under its lock,
//! the port of Python's
//!
//! ```python
//! def work(counter, n):
//!     for _ in range(n):
//!         with counter.get_lock():
//!             counter.value += 1
//!
//! counter = Value('Q', 0)
//! ps = [Process(target=work, args=(counter, 1000)) for _ in range(4)]
//! ```
//!
//! The counter is anonymous: it travels to each child as an argument (by fd)
//! under the default start method (ForkServer, since `main` calls
//! `shmproc::init()`).
//!
//! ```sh
//! cargo run --example shared_counter
//! ```

use shmproc::{AccessError, Process, Value};

/// Adds 1 to the counter `n` times, each under the lock.
fn work((counter, n): (Value<u64>, u64)) -> Result<u64, AccessError> {
    for _ in 0..n {
        counter.update(|c| *c += 1)?;
    }
    Ok(n)
}

/// Runs the example (also called by `ipc-tests/tests/examples.rs`).
pub fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    shmproc::init(); // first line of main: Spawn and ForkServer children start here
    let counter = Value::<u64>::anonymous(0)?;
    let workers =
        (0..4).map(|_| Process::builder(work, (counter.clone(), 1000)).start()).collect::<Result<Vec<_>, _>>()?;
    let mut added = 0;
    for w in workers {
        added += w.join()??;
    }
    assert_eq!(counter.get()?, added);
    println!("shared_counter: {} from 4 processes", counter.get()?);
    Ok(())
}
