//! Opens a named queue as a sender (`shmproc::Queue::builder().open_sender()`),
//! sends `count` u64 values 0..count, prints "sent", then either exits
//! (dropping its sender) or, with `hold`, waits to be killed.
//!
//! Usage: `queue_writer <name> <count> <exit|hold>`
//! Exit codes: 0 done, 2 usage, 4 disconnected, 7 open failed, 8 other send error.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        std::process::exit(2);
    }
    let count: u64 = args[2].parse().unwrap_or_else(|_| std::process::exit(2));
    let tx = match shmproc::Queue::<u64>::builder().name(&args[1]).open_sender() {
        Ok(tx) => tx,
        Err(e) => {
            eprintln!("open {}: {e}", args[1]);
            std::process::exit(7)
        }
    };
    for i in 0..count {
        match tx.send_timeout(i, Duration::from_secs(30)) {
            Ok(()) => {}
            Err(shmproc::SendTimeoutError::Disconnected(_)) => std::process::exit(4),
            Err(_) => std::process::exit(8),
        }
    }
    println!("sent");
    let _ = std::io::stdout().flush();
    if args[3] == "hold" {
        // Killed by the test; a safety deadline so it never outlives a failed test for long.
        std::thread::sleep(Duration::from_secs(60));
    }
}
