//! Runs the crate's ported `multiprocessing` examples (`examples/*.rs`) as
//! part of the tests: each example's `main` calls `shmproc::init()` first, so
//! it can be this binary's `main` too (`harness = false`; Spawn and
//! ForkServer re-execute this binary and enter the same `main`).

#[path = "../../examples/fn_target.rs"]
mod fn_target;
#[path = "../../examples/shared_counter.rs"]
mod shared_counter;

fn main() {
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(180));
        eprintln!("examples: watchdog fired, aborting");
        std::process::abort();
    });
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Each example calls shmproc::init() first thing: the re-executed copies
    // of this binary become the example's children there.
    shared_counter::main().expect("examples/shared_counter.rs");
    println!("test shared_counter ... ok");
    fn_target::main().expect("examples/fn_target.rs");
    println!("test fn_target ... ok");
}
