//! Role for `tests/process_init_misuse.rs`: a program that gets `init()`
//! wrong, so that its re-executed copies (Spawn children, the fork server)
//! do not run the target.
//!
//! The mode comes in `LATE_INIT_MODE` (the environment reaches the
//! re-executed copies; argv does not):
//!
//! * `late`: `main` creates a `Value` before calling `shmproc::init()`; the
//!   copy stops at that first shmproc call.
//! * `conditional`: `init()` only runs when an argument was given (the
//!   copies get none), and the copy's path through `main` touches no shmproc
//!   code: it runs `main` to its end.
//!
//! Prints the errors the parent got, one per line, and exits 0 when both
//! (Spawn's `JoinError`, ForkServer's `StartError`) name `shmproc::init()`;
//! 2 otherwise.

use shmproc::process::{JoinError, Process, StartError, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn parent() -> ! {
    let mut ok = true;
    match Process::builder(square, 7).start_method(StartMethod::Spawn).start().map(|p| p.join()) {
        Ok(Err(e @ JoinError::InitNotFirst { .. })) => {
            println!("spawn: {e}");
            ok &= e.to_string().contains("shmproc::init() as the first line of main");
        }
        other => {
            println!("spawn: unexpected {other:?}");
            ok = false;
        }
    }
    match Process::builder(square, 7).start_method(StartMethod::ForkServer).start() {
        Err(e @ StartError::ForkServer { .. }) => {
            println!("forkserver: {e}");
            ok &= e.to_string().contains("shmproc::init() as the first line of main");
        }
        other => {
            println!("forkserver: unexpected {:?}", other.map(|p| p.pid()));
            ok = false;
        }
    }
    std::process::exit(if ok { 0 } else { 2 })
}

fn main() {
    match std::env::var("LATE_INIT_MODE").as_deref() {
        Ok("late") => {
            // Wrong: shmproc code before init().
            let v = shmproc::Value::<u64>::anonymous(0).expect("a value");
            shmproc::init();
            drop(v);
            parent()
        }
        Ok("conditional") => {
            // Wrong: init() only on some paths.
            if std::env::args().len() > 1 {
                shmproc::init();
                parent()
            }
            // The copies come here and leave main.
        }
        _ => {
            eprintln!("late_init: set LATE_INIT_MODE to late or conditional");
            std::process::exit(2)
        }
    }
}
