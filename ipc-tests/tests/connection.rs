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

/// The handshake's timeout (5 s) is for the whole handshake, not for each of
/// its messages: a listener that answers each one just in time cannot hold a
/// client for longer. This fake listener (a real socket, the real framing)
/// sends its challenge at once, waits 3 s before its verdict, then never
/// answers the client's challenge: the client must give up about 5 s after it
/// started, not 5 s after the last message (8 s).
#[test]
fn the_handshake_timeout_bounds_the_whole_handshake() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }
    fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
        let mut h = [0u8; 8];
        s.read_exact(&mut h).unwrap();
        let mut b = vec![0u8; u64::from_le_bytes(h) as usize];
        s.read_exact(&mut b).unwrap();
        b
    }
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = Address::Tcp(fake.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = fake.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut challenge = b"#SHMPROC-CHALLENGE#{sha256}".to_vec();
        challenge.extend_from_slice(&[7u8; 32]);
        s.write_all(&frame(&challenge)).unwrap();
        let _answer = read_frame(&mut s); // not checked: this listener lets anyone in
        std::thread::sleep(Duration::from_secs(3));
        s.write_all(&frame(b"#WELCOME#")).unwrap();
        let _their_challenge = read_frame(&mut s);
        // Never answer; keep the socket open until the client gives up.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let t = Instant::now();
    let r = shmproc::connection::Client::connect(&addr, b"key");
    let took = t.elapsed();
    assert!(matches!(r, Err(ConnectError::Auth(AuthError::Timeout))), "{r:?}");
    assert!(took < Duration::from_millis(6500), "the handshake ran {took:?}, past its 5 s");
    server.join().unwrap();
}
