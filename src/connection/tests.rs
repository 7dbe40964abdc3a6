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

#[test]
fn a_header_alone_allocates_only_what_arrived() {
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (s.unwrap(), c.unwrap());
    // Claims 60 MiB (under the 64 MiB default limit) and sends 10 bytes.
    let claim = 60u64 << 20;
    let mut wire = claim.to_le_bytes().to_vec();
    wire.extend_from_slice(&[7; 10]);
    c.stream.write_all(&wire).unwrap();
    assert!(matches!(s.recv_bytes_timeout(Duration::from_millis(100)), Err(RecvError::Timeout)));
    let held = lock(&s.rx).buf.len();
    assert!(held <= 2 * READ_CHUNK, "{held} bytes allocated for 18 received");
    // A real large message still arrives whole, sent in pieces.
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (s.unwrap(), c.unwrap());
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let sender = std::thread::spawn(move || {
        c.stream.write_all(&(big.len() as u64).to_le_bytes()).unwrap();
        for piece in big.chunks(100_003) {
            c.stream.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        big
    });
    let got = s.recv_bytes_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(got, sender.join().unwrap());
}

#[test]
fn an_unlimited_limit_cannot_overflow_the_frame_length() {
    let (s, c) = pair(b"k", b"k");
    let (mut s, c) = (s.unwrap(), c.unwrap());
    s.set_max_message(u64::MAX);
    assert_eq!(s.max_message(), isize::MAX as u64 - FRAME_HEADER as u64);
    c.stream.write_all(&(u64::MAX - 3).to_le_bytes()).unwrap();
    assert!(matches!(s.recv_bytes_timeout(Duration::from_secs(5)), Err(RecvError::TooLarge { .. })));
}

#[test]
fn tcp_connections_watch_for_a_vanished_peer() {
    use rustix::net::sockopt;
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (s.unwrap(), c.unwrap());
    for conn in [&s, &c] {
        let fd = conn.as_fd();
        assert!(sockopt::socket_keepalive(fd).unwrap());
        assert_eq!(sockopt::tcp_user_timeout(fd).unwrap(), DEAD_PEER_TIMEOUT.as_millis() as u32);
        assert_eq!(sockopt::tcp_keepidle(fd).unwrap(), DEAD_PEER_TIMEOUT / 2);
        assert_eq!(sockopt::tcp_keepcnt(fd).unwrap(), 3);
    }
    s.set_dead_peer_timeout(Duration::from_secs(6)).unwrap();
    assert_eq!(sockopt::tcp_user_timeout(s.as_fd()).unwrap(), 6000);
    assert_eq!(sockopt::tcp_keepintvl(s.as_fd()).unwrap(), Duration::from_secs(1));
    // Beyond what the kernel takes: clamped, not refused half-way.
    s.set_dead_peer_timeout(Duration::from_secs(30 * 86_400)).unwrap();
    assert_eq!(sockopt::tcp_keepidle(s.as_fd()).unwrap(), Duration::from_secs(32_767));
    assert_eq!(sockopt::tcp_user_timeout(s.as_fd()).unwrap(), i32::MAX as u32);
    // Zero: the watch is off.
    s.set_dead_peer_timeout(Duration::ZERO).unwrap();
    assert!(!sockopt::socket_keepalive(s.as_fd()).unwrap());
    assert_eq!(sockopt::tcp_user_timeout(s.as_fd()).unwrap(), 0);
}

#[test]
fn timed_calls_keep_their_bound_while_another_thread_receives() {
    let (s, c) = pair(b"k", b"k");
    let (s, c) = (std::sync::Arc::new(s.unwrap()), c.unwrap());
    let s2 = s.clone();
    // The untimed receive under test holds the buffer; its result comes back
    // through a channel read with a timeout.
    let (out, blocked) = std::sync::mpsc::channel();
    std::thread::spawn(move || out.send(s2.recv_bytes()).unwrap());
    // Until the other thread is inside its blocking read (holding the buffer).
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while s.rx.try_lock().is_ok() {
        assert!(std::time::Instant::now() < end, "the receiving thread never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (done, r) = std::sync::mpsc::channel();
    let s3 = s.clone();
    std::thread::spawn(move || {
        let polled = s3.poll(Duration::ZERO);
        let timed = s3.recv_bytes_timeout(Duration::from_millis(50));
        done.send((polled, matches!(timed, Err(RecvError::Timeout)))).unwrap();
    });
    let got = r.recv_timeout(Duration::from_secs(10)).expect("poll and the timed receive returned");
    assert_eq!(got, (false, true));
    c.send_bytes(b"x").unwrap();
    assert_eq!(blocked.recv_timeout(Duration::from_secs(10)).expect("the receive returned").unwrap(), b"x");
}
