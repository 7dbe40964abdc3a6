//! A Fork child must not hold its parent's idle report-socket pairs (kept for
//! the parent's later children): only its own pair. Single-threaded, so that
//! the pool holds exactly what this program left there. Prints `ok` and exits
//! 0, or what it found and exits 1.

use std::collections::HashSet;

use shmproc::process::{Process, StartMethod};

/// Inodes of this process's sockets (`socket:[N]` links in /proc/self/fd).
fn socket_inodes(_: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                out.extend(n.parse::<u64>());
            }
        }
    }
    out
}

fn main() {
    shmproc::init();
    // Four children started together and joined: their four pairs go back to the pool.
    let kids: Vec<_> = (0..4)
        .map(|_| Process::builder(socket_inodes, 0u32).start_method(StartMethod::Fork).start().unwrap())
        .collect();
    for k in kids {
        k.join().unwrap();
    }
    let mine: HashSet<u64> = socket_inodes(0).into_iter().collect();
    let child: HashSet<u64> = Process::builder(socket_inodes, 0u32)
        .start_method(StartMethod::Fork)
        .start()
        .unwrap()
        .join()
        .unwrap()
        .into_iter()
        .collect();
    let shared = mine.intersection(&child).count();
    // Its own pair (both ends: the child keeps the parent's copy of the read end too).
    if mine.len() >= 6 && shared <= 2 {
        println!("ok");
    } else {
        println!("the child holds {shared} of the parent's {} socket ends: {child:?} / {mine:?}", mine.len());
        std::process::exit(1);
    }
}
