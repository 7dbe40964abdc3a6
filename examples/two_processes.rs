//! Two processes share a named `Array<f64>` and an anonymous `Value<u64>`.
//!
//! ```sh
//! cargo run --example two_processes
//! ```
//!
//! The parent creates a named array, launches a second copy of this binary
//! (the "worker" role) that opens the array *by name* and the counter *by an
//! inherited fd handle*, and both update them under their robust locks.

use std::process::Command;

use shmproc::{Array, Handle, Value};

fn worker(name: &str, counter: &str) -> Result<(), Box<dyn std::error::Error>> {
    let prices = Array::<f64>::open(name)?;
    let counter = Value::<u64>::builder().open_handle(&counter.parse::<Handle>()?)?;
    prices.update(|p| p.iter_mut().for_each(|x| *x *= 2.0))?;
    counter.update(|n| *n += 1)?;
    println!("worker {}: doubled {} prices", std::process::id(), prices.len());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "worker" {
        return worker(&args[2], &args[3]);
    }

    let name = format!("shmproc-example-{}", std::process::id());
    let prices = Array::<f64>::create(&name, &[1.0, 2.5, 4.0])?; // unlinked when dropped
    let counter = Value::<u64>::anonymous(0)?;
    counter.segment().set_inheritable(true)?; // let the fd survive exec

    let status =
        Command::new(std::env::current_exe()?).args(["worker", &name, &counter.handle().to_string()]).status()?;
    assert!(status.success(), "worker failed: {status}");

    println!("parent: prices now {:?}", prices.to_vec()?);
    println!("parent: workers run: {}", counter.get()?);
    Ok(())
}
