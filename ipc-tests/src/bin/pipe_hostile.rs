//! Roles for the hostile-pipe test (`tests/pipe_hostile.rs`):
//!
//! * `send NAME`: opens end A, prints `ready`, sends 300-byte messages until a
//!   send fails, prints the error and exits 0.
//! * `recv NAME MILLIS`: opens end B, prints `ready`, receives with 50 ms
//!   timeouts (ignoring every error) for MILLIS ms, then closes and exits 0.
//! * `scribble NAME MILLIS SEED [slots]`: writes random bytes (random, zeros,
//!   or small values) at random places of the segment after its header for
//!   MILLIS ms; with `slots`, only into the end slots and the holder tables
//!   (the last 1 KiB), so that the rings' indices stay intact; with `zeros`,
//!   only zeros into those places (every end then reads "free, no holder").

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use shmproc::pipe::End;
use shmproc::Pipe;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let millis = |i: usize| Duration::from_millis(arg(i).parse().unwrap_or(1000));
    match arg(1).as_str() {
        "send" => {
            let c = Pipe::builder().name(arg(2)).end(End::A).open().expect("open end A");
            ready();
            let msg = [0x5au8; 300];
            let mut n = 0u64;
            let e = loop {
                if let Err(e) = c.send_bytes(&msg) {
                    break e;
                }
                n += 1;
            };
            println!("sent {n}, then: {e:?}");
        }
        "recv" => {
            let c = Pipe::builder().name(arg(2)).end(End::B).open().expect("open end B");
            ready();
            let until = Instant::now() + millis(3);
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < until {
                match c.recv_bytes_timeout(Duration::from_millis(50)) {
                    Ok(_) => ok += 1,
                    Err(_) => err += 1,
                }
            }
            println!("received {ok}, errors {err}");
            c.close();
        }
        "scribble" => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/dev/shm/{}", arg(2)))
                .expect("open the segment file");
            let len = f.metadata().expect("stat").len();
            let mut x = arg(4).parse::<u64>().unwrap_or(1) | 1;
            let until = Instant::now() + millis(3);
            let mut writes = 0u64;
            while Instant::now() < until {
                let off = if arg(5) == "slots" || arg(5) == "zeros" {
                    // Payload offset 128: end slots at payload 64..192.
                    if xorshift(&mut x) & 1 == 0 {
                        128 + 64 + xorshift(&mut x) % 128
                    } else {
                        len - 1024 + xorshift(&mut x) % 1024
                    }
                } else {
                    128 + xorshift(&mut x) % (len - 128)
                };
                let n = (1 + xorshift(&mut x) % 64).min(len - off) as usize;
                let kind = if arg(5) == "zeros" { 1 } else { xorshift(&mut x) % 3 };
                let bytes: Vec<u8> = (0..n)
                    .map(|_| match kind {
                        0 => xorshift(&mut x) as u8,
                        1 => 0,
                        _ => (xorshift(&mut x) % 4) as u8,
                    })
                    .collect();
                let _ = f.write_at(&bytes, off);
                writes += 1;
            }
            println!("wrote {writes} times");
        }
        other => {
            eprintln!("unknown role {other:?}");
            std::process::exit(2);
        }
    }
}
