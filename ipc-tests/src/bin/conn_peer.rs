//! Plays the client of `tests/connection.rs`: `conn_peer <addr> <key> <n>`
//! connects, sends `n` numbered messages and checks each echo (exit 0), or
//! exits 3 if authentication is refused.

use shmproc::connection::{Client, ConnectError};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args[1].parse().unwrap();
    let n: u64 = args[3].parse().unwrap();
    let c = match Client::connect(&addr, args[2].as_bytes()) {
        Ok(c) => c,
        Err(ConnectError::Auth(e)) => {
            eprintln!("refused: {e}");
            std::process::exit(3)
        }
        Err(e) => panic!("{e}"),
    };
    for i in 0..n {
        c.send(&(i, format!("msg {i}"))).unwrap();
        let (j, s): (u64, String) = c.recv().unwrap();
        assert_eq!((j, s), (i, format!("msg {i}")));
    }
}
