//! The README's examples, runnable: `cargo run --example readme`.
//!
//! "Process B" is played by a forked child here; in real use it is any other
//! program that opens the same names.

use shmproc::{Array, Process, Queue, ShmObject, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let (prices_name, jobs_name) = (format!("prices-{pid}"), format!("jobs-{pid}"));
    let (prices_b, jobs_b) = (prices_name.clone(), jobs_name.clone());

    // Process A
    let prices = Array::<f64>::create(&prices_name, &[0.0; 4])?;
    let jobs = Queue::<u64>::create(&jobs_name, 1024)?;
    prices.set(0, 101.5)?;
    jobs.send(42)?;
    prices.segment().persist(); // the names outlive A (removed below)
    jobs.segment().persist();

    // Process B
    let b = Process::closure(move || -> Result<(), String> {
        let prices = Array::<f64>::open(&prices_b).map_err(|e| e.to_string())?;
        let jobs = Queue::<u64>::open(&jobs_b).map_err(|e| e.to_string())?;
        assert_eq!(prices.get(0).map_err(|e| e.to_string())?, 101.5);
        assert_eq!(jobs.recv().map_err(|e| format!("{e:?}"))?, 42);
        Ok(())
    })
    .start()?;
    b.join()??;
    shmproc::unlink(&prices_name)?;
    shmproc::unlink(&jobs_name)?;

    // A forked child shares anonymous objects with no names at all.
    let counter = Value::<u64>::anonymous(0)?;
    let child = Process::closure({
        let c = counter.clone();
        move || c.update(|n| *n += 1).is_ok()
    })
    .start()?;
    assert!(child.join()?);
    assert_eq!(counter.get()?, 1);
    println!("readme examples: ok");
    Ok(())
}
