//! Plays a remote manager client for `tests/manager.rs`:
//! `manager_client <role> <addr> <authkey-hex> [n]`.
//!
//! Roles:
//! - `count N`: connects over TCP, adds 1 to `counts["total"]` N times (the
//!   registered function `add`) and pushes N items to the list `log`; exit 0.
//! - `wrong-key`: connects with the given (wrong) key: exit 3 when refused
//!   with an authentication error, 1 otherwise.

use shmproc::connection::Address;
use shmproc::manager::{Manager, ManagerError};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role = args[1].as_str();
    let addr: Address = args[2].parse().unwrap();
    let key = hex(&args[3]);
    match role {
        "count" => {
            let n: u64 = args[4].parse().unwrap();
            let m = Manager::connect(&addr, &key).unwrap();
            let d = m.named("counts").dict::<String, u64>().unwrap();
            let l = m.named("log").list::<u64>().unwrap();
            let me = std::process::id() as u64;
            for i in 0..n {
                let _: u64 = d.update(&"total".to_string(), "add", &1u64).unwrap();
                l.push(&(me * 1_000_000 + i)).unwrap();
            }
        }
        "wrong-key" => match Manager::connect(&addr, &key) {
            Err(ManagerError::Connect(e)) => {
                eprintln!("refused as expected: {e}");
                std::process::exit(3)
            }
            other => {
                eprintln!("unexpected: {other:?}");
                std::process::exit(1)
            }
        },
        _ => panic!("unknown role {role}"),
    }
}
