//! A process pool, as Python's `Pool(5).map(f, [1, 2, 3])`, plus what
//! Python's pool cannot do: a worker killed mid-map fails only its own task.
//!
//! Run: `cargo run --example pool`; `cargo run --release --example pool -- --speed`
//! times `map` with chunksize 1 against two threads fed task by task through
//! a channel (std's `mpsc`, crossbeam-channel's algorithm), in the same run.

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
    if std::env::args().any(|a| a == "--speed") {
        return speed();
    }

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

/// Tasks per second of `map` with chunksize 1 (100,000 items, 2 workers) and
/// of the same map over two threads fed task by task, three rounds each.
fn speed() -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::mpsc;
    use std::time::Instant;
    const N: u64 = 100_000;
    let items: Vec<u64> = (0..N).collect();
    let p = Pool::builder().processes(2).create()?;
    for _ in 0..3 {
        let t = Instant::now();
        let v = p.map_chunksize(f, items.clone(), 1)?;
        let pool = N as f64 / t.elapsed().as_secs_f64();
        assert_eq!(v[7], 49);
        let t = Instant::now();
        let (res_tx, res_rx) = mpsc::channel::<(u64, u64)>();
        let mut txs = Vec::new();
        let mut hs = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel::<(u64, u64)>();
            let res_tx = res_tx.clone();
            txs.push(tx);
            hs.push(std::thread::spawn(move || {
                for (i, x) in rx {
                    let _ = res_tx.send((i, f(x)));
                }
            }));
        }
        let mut out = vec![0u64; N as usize];
        for (i, &x) in items.iter().enumerate() {
            let _ = txs[i % 2].send((i as u64, x));
        }
        drop(txs);
        for _ in 0..N {
            let (i, r) = res_rx.recv()?;
            out[i as usize] = r;
        }
        for h in hs {
            let _ = h.join();
        }
        let threads = N as f64 / t.elapsed().as_secs_f64();
        println!(
            "map chunksize 1, {N} items, 2 workers: pool {:.0} k tasks/s, thread pool {:.0} k tasks/s, ratio {:.1}x",
            pool / 1e3,
            threads / 1e3,
            threads / pool
        );
    }
    p.close();
    p.join();
    Ok(())
}
