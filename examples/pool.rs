//! A process pool, as Python's `Pool(5).map(f, [1, 2, 3])`, plus what
//! Python's pool cannot do: a worker killed mid-map fails only its own task.
//!
//! Run: `cargo run --example pool`

use std::time::Duration;

use shmproc::pool::{Callbacks, TaskError};
use shmproc::Pool;

fn f(x: u64) -> u64 {
    x * x
}

fn slow(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmproc::init(); // first line of main: Spawn and ForkServer workers re-execute this binary

    let p = Pool::builder().processes(5).create()?;
    println!("{:?}", p.map(f, [1, 2, 3])?); // [1, 4, 9]

    // Lazy, ordered, bounded memory: an endless input works.
    let first: Vec<u64> = p.imap(f, 0u64..).take(5).map(|r| r.unwrap()).collect();
    println!("imap: {first:?}");

    // Asynchronous, with a callback that runs in this process.
    let h = p.apply_async_with(f, 12, Callbacks::new().on_result(|r: &u64| println!("callback: {r}")));
    println!("apply_async: {}", h.get()?);

    // A task that outlives its worker: kill -9 the worker running it.
    let h = p.apply_async(slow, 5_000);
    std::thread::sleep(Duration::from_millis(200));
    for pid in p.worker_pids() {
        // The pool names its workers; kill them all (only one runs the task).
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    match h.get() {
        Err(TaskError::WorkerDied { pid, status }) => println!("worker {pid} died ({status:?}); the pool goes on"),
        other => println!("unexpected: {other:?}"),
    }
    println!("after the kill: {:?}", p.map(f, [4, 5, 6])?);
    p.close();
    p.join();
    Ok(())
}
