//! Listener / Client across processes, over TCP (127.0.0.1) and Unix sockets.

use std::process::Command;

use shmproc::connection::{Address, AuthError, ConnectError, Listener, RecvError};

fn serve(l: &Listener, n: u64) {
    let c = l.accept().unwrap();
    for _ in 0..n {
        let m: (u64, String) = c.recv().unwrap();
        c.send(&m).unwrap();
    }
    assert!(matches!(c.recv_bytes(), Err(RecvError::Disconnected)));
}

fn peer(addr: &Address, key: &str, n: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_conn_peer")).args([&addr.to_string(), key, &n.to_string()]).spawn().unwrap()
}

#[test]
fn tcp_echo_with_another_process_and_wrong_key() {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap(), b"good key").unwrap();
    let addr = l.address().clone();
    let mut child = peer(&addr, "good key", 500);
    serve(&l, 500);
    assert!(child.wait().unwrap().success());
    // A wrong key: the listener refuses it and accepts nothing from it.
    let mut child = peer(&addr, "bad key", 1);
    assert!(matches!(l.accept(), Err(ConnectError::Auth(AuthError::WrongKey))));
    assert_eq!(child.wait().unwrap().code(), Some(3));
}

#[test]
fn unix_echo_with_another_process() {
    let path = std::env::temp_dir().join(format!("shmproc-test-conn-ipc-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = Listener::bind(&Address::Unix(path.clone()), b"k").unwrap();
    let mut child = peer(l.address(), "k", 100);
    serve(&l, 100);
    assert!(child.wait().unwrap().success());
    drop(l);
    assert!(!path.exists());
}
