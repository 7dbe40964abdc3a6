//! Helper binary for the segment tests: plays the "other process" role.
//!
//! Usage:
//! * `seg_child array-add <name> <delta>`: opens `Array<f64>` `<name>` and adds
//!   `<delta>` to every element under the lock.
//! * `seg_child value-incr <handle> <n>`: opens `Value<u64>` from a handle
//!   (`name:<n>` or an inherited `fd:<n>`) and increments it `n` times.
//! * `seg_child race <name> <n>`: `open_or_create`s `Value<u64>` `<name>` (initial
//!   value 0), increments it `n` times, and keeps the name.
//! * `seg_child open-array <name>`: opens `Array<f64>` and prints its length, or
//!   the error's Display on stderr with exit code 3.
//!
//! Exit code 0 on success, 2 on usage errors, 3 on shmproc errors.

use std::process::exit;
use std::time::Duration;

use shmproc::{Array, Handle, Value};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("seg_child: {msg}");
    exit(3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["array-add", name, delta] => {
            let delta: f64 = delta.parse().unwrap_or_else(|_| fail("bad delta"));
            let arr = Array::<f64>::open(name).unwrap_or_else(|e| fail(e));
            arr.update(|s| s.iter_mut().for_each(|x| *x += delta)).unwrap_or_else(|e| fail(e));
        }
        ["value-incr", handle, n] => {
            let h: Handle = handle.parse().unwrap_or_else(|e| fail(e));
            let n: u64 = n.parse().unwrap_or_else(|_| fail("bad count"));
            let v = Value::<u64>::builder().open_handle(&h).unwrap_or_else(|e| fail(e));
            for _ in 0..n {
                v.update(|x| *x += 1).unwrap_or_else(|e| fail(e));
            }
        }
        ["race", name, n] => {
            let n: u64 = n.parse().unwrap_or_else(|_| fail("bad count"));
            let v = Value::<u64>::builder()
                .name(*name)
                .unlink_on_drop(false)
                .open_timeout(Duration::from_secs(10))
                .open_or_create(0)
                .unwrap_or_else(|e| fail(e));
            for _ in 0..n {
                v.update(|x| *x += 1).unwrap_or_else(|e| fail(e));
            }
        }
        ["open-array", name] => {
            let arr = Array::<f64>::builder()
                .name(*name)
                .open_timeout(Duration::from_millis(300))
                .open()
                .unwrap_or_else(|e| fail(e));
            println!("{}", arr.len());
        }
        _ => {
            eprintln!("usage: seg_child array-add|value-incr|race|open-array ...");
            exit(2)
        }
    }
}
