use std::io::Write;
use std::time::Duration;

use super::*;

fn pair(
    key_srv: &'static [u8],
    key_cli: &'static [u8],
) -> (Result<SocketConnection, ConnectError>, Result<SocketConnection, ConnectError>) {
    let l = Listener::bind(&"127.0.0.1:0".parse().unwrap(), key_srv).unwrap();
    let addr = l.address().clone();
    let t = std::thread::spawn(move || l.accept());
    let c = Client::connect(&addr, key_cli);
    (t.join().unwrap(), c)
}

#[test]
fn address_parses() {
    assert_eq!("127.0.0.1:6000".parse::<Address>().unwrap(), Address::Tcp("127.0.0.1:6000".parse().unwrap()));
    assert_eq!("/tmp/x.sock".parse::<Address>().unwrap(), Address::Unix("/tmp/x.sock".into()));
    assert!("nonsense".parse::<Address>().is_err());
}

#[test]
fn round_trip_and_poll() {
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (s.unwrap(), c.unwrap());
    assert!(!s.poll(Duration::ZERO));
    c.send(&("hi", 7u32)).unwrap();
    assert!(s.poll(Duration::from_secs(5)));
    let (w, n): (String, u32) = s.recv().unwrap();
    assert_eq!((w.as_str(), n), ("hi", 7));
    let big = vec![5u8; 300_000];
    s.send_bytes(&big).unwrap();
    assert_eq!(c.recv_bytes().unwrap(), big);
    assert!(matches!(c.recv_bytes_timeout(Duration::from_millis(20)), Err(RecvError::Timeout)));
    drop(s);
    assert!(matches!(c.recv_bytes(), Err(RecvError::Disconnected)));
}

#[test]
fn wrong_key_is_refused_both_ways() {
    let (s, c) = pair(b"right", b"wrong");
    assert!(matches!(s, Err(ConnectError::Auth(AuthError::WrongKey))), "{s:?}");
    assert!(matches!(c, Err(ConnectError::Auth(AuthError::Rejected))), "{c:?}");
}

#[test]
fn oversized_length_closes_before_allocating() {
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (s.unwrap(), c.unwrap());
    // A raw header claiming 4 GiB.
    match c.stream() {
        Stream::Tcp(t) => (&*t).write_all(&(4u64 << 30).to_le_bytes()).unwrap(),
        Stream::Unix(_) => unreachable!(),
    }
    assert!(matches!(s.recv_bytes(), Err(RecvError::TooLarge { len, .. }) if len == 4 << 30));
    assert!(matches!(s.recv_bytes(), Err(RecvError::Disconnected)));
    assert!(matches!(c.recv_bytes_timeout(Duration::from_secs(5)), Err(RecvError::Disconnected)));
}

#[test]
fn unix_socket_round_trip() {
    let path = std::env::temp_dir().join(format!("shmproc-test-conn-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = Listener::bind(&Address::Unix(path.clone()), b"key").unwrap();
    let addr = l.address().clone();
    let t = std::thread::spawn(move || {
        let s = l.accept().unwrap();
        let v: Vec<u64> = s.recv().unwrap();
        s.send(&v.iter().sum::<u64>()).unwrap();
    });
    let c = Client::connect(&addr, b"key").unwrap();
    c.send(&vec![1u64, 2, 3]).unwrap();
    assert_eq!(c.recv::<u64>().unwrap(), 6);
    t.join().unwrap();
    assert!(!path.exists(), "the listener removes its socket file");
}
