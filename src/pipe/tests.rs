//! In-process tests of the pipe (threads); cross-process tests live in
//! `ipc-tests/tests/pipe_*.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ring::{Shared, DATA_OFFSET};
use super::*;
use crate::error::OpenError;

const T: Duration = Duration::from_secs(20);

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn shared(c: &Connection) -> &Shared {
    // SAFETY: test-only view of a live pipe segment's control block.
    unsafe { &*(c.segment().payload_ptr().as_ptr() as *const Shared) }
}

#[test]
fn bytes_values_and_empty_messages() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(b"hello").unwrap();
    a.send_bytes(b"").unwrap();
    a.send(&(1u8, "two".to_string(), vec![3u64; 3])).unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"hello");
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"");
    let v: (u8, String, Vec<u64>) = b.recv_timeout(T).unwrap();
    assert_eq!(v, (1, "two".to_string(), vec![3, 3, 3]));
    b.send_bytes(b"back").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"back");
    assert!(matches!(a.recv_bytes_timeout(Duration::from_millis(5)), Err(RecvError::Timeout)));
}

#[test]
fn wrong_type_is_a_deserialize_error() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(b.recv_timeout::<u32>(T), Err(RecvError::Deserialize(_))));
}

#[test]
fn messages_larger_than_the_ring_stream_through() {
    let (a, b) = Pipe::builder().ring_size(4096).pair().unwrap();
    let sizes = [0usize, 1, 7, 8, 4088, 4089, 4096, 10_000, 100_003, 1 << 20];
    let t = std::thread::spawn(move || {
        for (i, &n) in sizes.iter().enumerate() {
            a.send_bytes(&pattern(n, i as u64)).unwrap();
        }
        a
    });
    for (i, &n) in sizes.iter().enumerate() {
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), pattern(n, i as u64), "message {i} of {n} bytes");
    }
    drop(t.join().unwrap());
}

#[test]
fn too_large_is_an_error_on_the_sender() {
    let (a, _b) = Pipe::builder().max_message(100).pair().unwrap();
    assert!(matches!(a.send_bytes(&[0; 101]), Err(SendError::TooLarge { len: 101, limit: 100 })));
    a.send_bytes(&[0; 100]).unwrap();
}

#[test]
fn short_buffer_reports_the_size_and_keeps_the_message() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(&pattern(1000, 1)).unwrap();
    let mut small = [0u8; 10];
    match b.recv_bytes_into_timeout(&mut small, T) {
        Err(RecvError::BufferTooSmall { needed }) => assert_eq!(needed, 1000),
        other => panic!("{other:?}"),
    }
    let mut big = vec![0u8; 2000];
    assert_eq!(b.recv_bytes_into_timeout(&mut big, T).unwrap(), 1000);
    assert_eq!(&big[..1000], &pattern(1000, 1)[..]);
}

#[test]
fn timeout_mid_message_resumes() {
    let (a, b) = Pipe::builder().ring_size(1024).pair().unwrap();
    let msg = pattern(5000, 9);
    let m2 = msg.clone();
    let t = std::thread::spawn(move || {
        // More than the ring: blocks until the receiver drains.
        a.send_bytes(&m2).unwrap();
        a
    });
    // Drain part of it with a tiny buffer timeout loop: each call may time out
    // mid-message; the message must still arrive whole.
    let mut buf = vec![0u8; 5000];
    let mut got = None;
    for _ in 0..10_000 {
        match b.recv_bytes_into_timeout(&mut buf, Duration::from_micros(50)) {
            Ok(n) => {
                got = Some(n);
                break;
            }
            Err(RecvError::Timeout) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, Some(5000));
    assert_eq!(buf, msg);
    drop(t.join().unwrap());
}

#[test]
fn drop_drains_then_disconnects() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(b"1").unwrap();
    a.send_bytes(b"2").unwrap();
    drop(a);
    assert!(b.poll(Duration::ZERO));
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"1");
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"2");
    assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
    assert!(matches!(b.send_bytes(b"x"), Err(SendError::Disconnected)));
    assert!(b.poll(Duration::ZERO));
}

#[test]
fn drop_wakes_a_sleeping_receiver_and_sender() {
    let (a, b) = Pipe::builder().ring_size(64).pair().unwrap();
    let t = std::thread::spawn(move || b.recv_bytes_timeout(T).map(|_| ()));
    std::thread::sleep(Duration::from_millis(50));
    drop(a);
    assert!(matches!(t.join().unwrap(), Err(RecvError::Disconnected)));

    let (a, b) = Pipe::builder().ring_size(64).pair().unwrap();
    let t = std::thread::spawn(move || a.send_bytes(&[0; 1000]));
    std::thread::sleep(Duration::from_millis(50));
    drop(b);
    assert!(matches!(t.join().unwrap(), Err(SendError::Disconnected)));
}

#[test]
fn one_way_pipe() {
    let (r, w) = Pipe::builder().duplex(false).pair().unwrap();
    assert!(r.readable() && !r.writable() && w.writable() && !w.readable());
    assert!(matches!(r.send_bytes(b"x"), Err(SendError::NotWritable)));
    assert!(matches!(w.recv_bytes(), Err(RecvError::NotReadable)));
    w.send_bytes(b"ok").unwrap();
    assert_eq!(r.recv_bytes_timeout(T).unwrap(), b"ok");
    assert!(!w.poll(Duration::ZERO));
}

#[test]
fn poll_and_wait_with_timeouts() {
    let (a1, b1) = Pipe::new().unwrap();
    let (a2, b2) = Pipe::new().unwrap();
    let (a3, b3) = Pipe::new().unwrap();
    assert!(!a1.poll(Duration::from_millis(5)));
    assert!(wait(&[&a1, &a2, &a3], Some(Duration::from_millis(20))).is_empty());
    b3.send_bytes(b"3").unwrap();
    b1.send_bytes(b"1").unwrap();
    assert_eq!(wait(&[&a1, &a2, &a3], Some(T)), vec![0, 2]);
    assert_eq!(a1.recv_bytes_timeout(T).unwrap(), b"1");
    assert_eq!(wait(&[&a1, &a2, &a3], None), vec![2]);
    assert_eq!(a3.recv_bytes_timeout(T).unwrap(), b"3");
    // A sender in another thread wakes a sleeping wait.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        b2.send_bytes(b"2").unwrap();
        b2
    });
    assert_eq!(wait(&[&a1, &a2, &a3], Some(T)), vec![1]);
    let _b2 = t.join().unwrap();
    // A dropped peer makes its connection ready.
    drop(b1);
    assert_eq!(wait(&[&a1, &a3], Some(T)), vec![0]);
    drop(b3);
}

#[test]
fn hostile_frame_header_is_corrupt() {
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(&[7u8; 64]).unwrap();
    let sh = shared(&b);
    let cap = sh.control.capacity[0].load(Ordering::Relaxed) as usize;
    assert!(cap > 0);
    let data = unsafe_data(&b, 0);
    // A 1 TiB length with a valid tag: over the limit.
    data.store((0xA55A << 48) | (1 << 40), Ordering::Relaxed);
    assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })));
    // Stays broken.
    assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })));

    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(&[7u8; 64]).unwrap();
    unsafe_data(&b, 0).store(u64::MAX, Ordering::Relaxed); // bad tag
    assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })));
}

#[test]
fn hostile_indices_are_corrupt() {
    let (a, b) = Pipe::new().unwrap();
    let sh = shared(&a);
    // Ring 0 carries A to B. A tail far beyond the ring:
    sh.rings[0].prod.tail.store(u64::MAX / 2, Ordering::Relaxed);
    assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })));
    // A head beyond the sender's tail: the sender notices when it needs space.
    let (a, _b) = Pipe::builder().ring_size(64).pair().unwrap();
    let sh = shared(&a);
    sh.rings[0].cons.head.store(12345, Ordering::Relaxed);
    let r = (0..20).map(|_| a.send_bytes(&[1; 40])).find(|r| r.is_err());
    assert!(matches!(r, Some(Err(SendError::Corrupt { .. }))), "{r:?}");
}

/// The first 8 bytes of ring `i`'s data, as an atomic.
fn unsafe_data(c: &Connection, i: usize) -> &AtomicU64 {
    let sh = shared(c);
    let cap0 = sh.control.capacity[0].load(Ordering::Relaxed) as usize;
    let off = DATA_OFFSET + if i == 0 { 0 } else { cap0 };
    // SAFETY: test-only; the offset is inside the payload and 64-byte aligned.
    unsafe { &*(c.segment().payload_ptr().as_ptr().add(off) as *const AtomicU64) }
}

#[test]
fn named_pipe_create_and_open() {
    let name = format!("shmproc-test-pipe-unit-{}", std::process::id());
    let a = Pipe::builder().name(&name).ring_size(4096).create().unwrap();
    let b = Pipe::builder().name(&name).open().unwrap();
    // End B is now held (by this process): a second claim is refused, so a
    // ring never gets two consumers.
    assert!(matches!(Pipe::builder().name(&name).open(), Err(OpenError::PermissionDenied { .. })));
    assert!(matches!(Pipe::builder().name(&name).end(End::A).open(), Err(OpenError::PermissionDenied { .. })));
    a.send(&42u64).unwrap();
    assert_eq!(b.recv_timeout::<u64>(T).unwrap(), 42);
    b.send_bytes(&pattern(3000, 3)).unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), pattern(3000, 3));
    assert!(format!("{a:?}").contains("Connection"));
    drop(b);
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
    drop(a);
    assert!(crate::segment::Segment::builder().name(&name).open().is_err());
}

#[test]
fn sync_connection_shared_by_threads() {
    let (a, b) = Pipe::builder().ring_size(4096).pair().unwrap();
    let a = std::sync::Arc::new(a);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    a.send(&(t as u64, i, pattern((t * 97 + i as usize * 31) % 3000, i))).unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u64; 4];
    for _ in 0..800 {
        let (t, i, p): (u64, u64, Vec<u8>) = b.recv_timeout(T).unwrap();
        assert_eq!(i, next[t as usize]);
        next[t as usize] += 1;
        assert_eq!(p, pattern((t as usize * 97 + i as usize * 31) % 3000, i));
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn frame_body_layout() {
    use super::ring::FrameBody;
    for len in [0u64, 1, 8, 55, 56, 57, 1023, 1024, 1025, 65536, 100_000] {
        let fb = FrameBody::of(len);
        assert_eq!((8 + fb.body) % 64, 0, "len {len}");
        assert!(fb.body >= fb.skip + len);
        assert_eq!((8 + fb.skip) % 64 == 0, len >= 1024);
        // Splitting the body anywhere covers the message exactly once, in order.
        for step in [1u64, 7, 64, 1000, fb.body.max(1)] {
            let mut next = 0;
            let mut at = 0;
            while at < fb.body {
                let n = step.min(fb.body - at);
                let (off, from, count) = fb.data_in(len, at, n);
                if count > 0 {
                    assert_eq!(from, next);
                    assert!(off + count <= n);
                    next += count;
                }
                at += n;
                assert_eq!(fb.data_upto(len, at), next);
            }
            assert_eq!(next, len);
        }
    }
}

#[test]
fn wait_on_more_connections_than_futex_waitv_takes() {
    let pairs: Vec<(Connection, Connection)> =
        (0..crate::sys::FUTEX_WAITV_MAX + 5).map(|_| Pipe::builder().ring_size(64).pair().unwrap()).collect();
    let refs: Vec<&Connection> = pairs.iter().map(|(a, _)| a).collect();
    assert!(wait(&refs, Some(Duration::from_millis(20))).is_empty());
    let last = pairs.len() - 1;
    let t = {
        let b = &pairs[last].1;
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                b.send_bytes(b"x").unwrap();
            });
            wait(&refs, Some(T))
        })
    };
    assert_eq!(t, vec![last]);
}

/// Regression: stream positions are free-running `u64`s read from shared memory
/// at attach, so a peer (or the creator) can start them just below 2^64. The
/// position arithmetic (`+=`, `-`) overflowed there and panicked in debug
/// builds; it must wrap like the positions themselves.
#[test]
fn hostile_indices_near_u64_max_do_not_overflow() {
    // 512 bytes: the largest frame below (256 bytes) goes in whole, with the
    // line the producer keeps free after its data.
    let (a, b) = Pipe::builder().ring_size(512).pair().unwrap();
    let seg = a.segment().clone();
    let near = u64::MAX - 127; // 64-byte aligned, two frames before the wrap
    for ring in &shared(&a).rings {
        ring.prod.tail.store(near, Ordering::Relaxed);
        ring.cons.head.store(near, Ordering::Relaxed);
    }
    // Give both ends up so that fresh connections attach to the scribbled indices.
    a.hand_over();
    b.hand_over();
    let a = Pipe::builder().end(End::A).open_handle(&seg.handle()).unwrap();
    let b = Pipe::builder().end(End::B).open_handle(&seg.handle()).unwrap();
    for i in 0..12u8 {
        let small = [i; 40];
        let big = pattern(100 + 10 * i as usize, i as u64); // frames fit the ring
        a.send_bytes(&small).unwrap();
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), small);
        b.send_bytes(&big).unwrap();
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), big);
    }
}

/// Regression: the spin phase of a wait ignored the caller's deadline (a spin
/// budget longer than the timeout overran it; `Duration::MAX` overflowed the
/// clock arithmetic and panicked). The spin now ends at the deadline.
#[test]
fn spin_budget_longer_than_the_timeout_ends_at_the_deadline() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let (a, b) = Pipe::builder().spin(Duration::MAX).pair().unwrap();
        let short = Duration::from_millis(20);
        let r = b.recv_bytes_timeout(short);
        let polled = b.poll(short);
        let waited = wait(&[&b], Some(short));
        done_tx.send((matches!(r, Err(RecvError::Timeout)), polled, waited.is_empty())).unwrap();
        drop(a);
    });
    // A generous guard against the spin running on: not a timing assertion.
    let got = done_rx.recv_timeout(Duration::from_secs(20));
    assert_eq!(got, Ok((true, false, true)));
    t.join().unwrap();
}

/// Regression (issue 10): `recv::<u64>()` of a message sent as a `String`
/// returned `Ok(8)` (the string's length prefix); it must be an error.
#[test]
fn regression_recv_of_another_type_is_an_error_not_a_misdecode() {
    let (a, b) = crate::Pipe::new().unwrap();
    a.send(&"eight ch".to_string()).unwrap();
    match b.recv::<u64>() {
        Err(RecvError::TrailingBytes { used: 1, len: 9 }) => {}
        other => panic!("expected TrailingBytes, got {other:?}"),
    }
    a.send(&"eight ch".to_string()).unwrap();
    assert_eq!(b.recv::<String>().unwrap(), "eight ch");
    // A &str is a String on the wire.
    a.send("x").unwrap();
    assert_eq!(b.recv::<String>().unwrap(), "x");
}

/// A message whose every 8-byte word looks like a whole frame's header of
/// `fake` bytes: what a stale line would show a consumer polling header
/// words if the producer did not zero the next header word ahead.
fn header_lookalike(len: usize, fake: u64) -> Vec<u8> {
    let word = ((super::ring::FRAME_TAG_WHOLE << super::ring::LEN_BITS) | fake).to_le_bytes();
    (0..len).map(|i| word[i % 8]).collect()
}

/// Regression guard for the header-word protocol (`ring.rs`): over many
/// laps of a small ring, with frames of changing sizes whose bodies are
/// full of header look-alikes (so next lap's header positions hold them),
/// every message arrives once, whole and in order, ping-pong and streaming.
#[test]
fn stale_lines_never_read_as_frames_across_laps() {
    let (a, b) = Pipe::builder().ring_size(512).pair().unwrap();
    // One message at a time: after each, the next header word must read as
    // empty (it held a look-alike a lap ago unless the sender zeroed it).
    for i in 0..2000usize {
        let len = [0, 7, 56, 57, 120, 200, 300, 430][i % 8] + i % 5; // each fits: at most 440 bytes
        let m = header_lookalike(len, 8);
        a.send_bytes(&m).unwrap();
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), m, "message {i}");
        assert!(matches!(b.recv_bytes_timeout(Duration::ZERO), Err(RecvError::Timeout)), "after message {i}");
    }
    // Streaming from another thread, including frames larger than the ring
    // (they stream through it): the consumer sees every one in order.
    let t = std::thread::spawn(move || {
        for i in 0..3000usize {
            let len = (i * 37) % 1500;
            let mut m = header_lookalike(len, (i % 50) as u64);
            if let Some(first) = m.first_mut() {
                *first = i as u8;
            }
            a.send_bytes(&m).unwrap();
        }
        a
    });
    for i in 0..3000usize {
        let len = (i * 37) % 1500;
        let mut m = header_lookalike(len, (i % 50) as u64);
        if let Some(first) = m.first_mut() {
            *first = i as u8;
        }
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), m, "streamed message {i}");
    }
    let _a = t.join().unwrap();
    assert!(matches!(b.recv_bytes_timeout(Duration::from_millis(5)), Err(RecvError::Timeout)));
}

/// A producer that dies after a whole frame's header but before it
/// publishes `tail` left a frame the consumer can read (it polls the header
/// word). The next producer of that end must continue after it, not write
/// over it: simulated by taking the published `tail` back over the last frame.
#[test]
fn a_new_producer_continues_after_a_frame_published_only_by_its_header() {
    let (a, b) = Pipe::builder().ring_size(256 << 10).pair().unwrap();
    let seg = a.segment().clone();
    a.send_bytes(b"first").unwrap();
    let tail = &shared(&a).rings[0].prod.tail;
    let end = tail.load(Ordering::Relaxed);
    a.send_bytes(b"second, header only").unwrap();
    tail.store(end, Ordering::Relaxed); // the second frame's `tail` store "never happened"
    a.hand_over();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"first");
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"second, header only");
    // The receiving end can be handed over and reopened while `tail` lags.
    b.hand_over();
    // (The receiver spins while it waits, so that it sees the next header
    // as soon as it is stored.)
    let b = Pipe::builder().end(End::B).spin(Duration::from_secs(10)).open_handle(&seg.handle()).unwrap();
    let a = Pipe::builder().end(End::A).open_handle(&seg.handle()).unwrap();
    // A first message of 1 KiB or more goes header first and is followed by
    // `tail`: the new producer must have published the walked `tail` before
    // that header shows to a receiver already waiting (else it reads the
    // lagging `tail` and calls the pipe corrupt; 64 KiB of copying after the
    // header gives it the time to look).
    let big = pattern(64 << 10, 3);
    let (a, b) = {
        let (a, b) = (a, b);
        let expect = big.clone();
        let rx = std::thread::spawn(move || {
            let got = b.recv_bytes_timeout(T);
            (b, got.map(|m| m == expect))
        });
        std::thread::sleep(Duration::from_millis(2));
        a.send_bytes(&big).unwrap();
        let (b, got) = rx.join().unwrap();
        assert!(got.unwrap(), "the first message after the hand-over arrives whole");
        (a, b)
    };
    a.send_bytes(b"third").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"third");
    assert!(matches!(b.recv_bytes_timeout(Duration::from_millis(5)), Err(RecvError::Timeout)));
    // `poll` is not fooled by a lagging `tail` either.
    assert!(!b.poll(Duration::ZERO));
    a.send_bytes(b"fourth").unwrap();
    assert!(b.poll(Duration::ZERO));
}

/// A frame whose header word is scribbled to zero after its `tail` was
/// published would leave the receiver polling a zero word forever (and the
/// sender, once the ring is full, waiting for it): it is reported as corrupt.
#[test]
fn a_published_frame_without_its_header_is_corrupt() {
    let (a, b) = Pipe::builder().ring_size(4096).pair().unwrap();
    a.send_bytes(b"x").unwrap();
    unsafe_data(&b, 0).store(0, Ordering::Relaxed);
    match b.recv_bytes_timeout(T) {
        Err(RecvError::Corrupt { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// The zeroed window over a ring larger than it (the default ring is 1 MiB,
/// the window 4 KiB): small messages streamed from a thread over many laps,
/// with header look-alike bodies, arrive whole and in order.
#[test]
fn small_messages_stream_through_a_large_ring_across_laps() {
    let (a, b) = Pipe::builder().ring_size(16 << 10).pair().unwrap();
    let n = 60_000usize;
    let t = std::thread::spawn(move || {
        for i in 0..n {
            let mut m = header_lookalike(i % 300, 8);
            m.extend_from_slice(&(i as u32).to_le_bytes());
            a.send_bytes(&m).unwrap();
        }
        a
    });
    for i in 0..n {
        let mut m = header_lookalike(i % 300, 8);
        m.extend_from_slice(&(i as u32).to_le_bytes());
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), m, "message {i}");
    }
    let _a = t.join().unwrap();
}

#[test]
fn copy_bytes_moves_exactly_n_bytes_for_every_small_size() {
    for n in 0..=40usize {
        let src = pattern(n, n as u64 + 1);
        // Guard bytes on both sides of the destination catch a move past its end.
        let mut dst = vec![0xEEu8; n + 16];
        // SAFETY: `src` has `n` bytes and `dst[8..]` at least `n`; they are distinct vectors.
        unsafe { super::ring::copy_bytes(src.as_ptr(), dst.as_mut_ptr().add(8), n) };
        assert_eq!(&dst[8..8 + n], &src[..], "size {n}");
        assert!(dst[..8].iter().chain(&dst[8 + n..]).all(|&b| b == 0xEE), "size {n} wrote outside its range");
    }
}

#[test]
fn every_size_round_trips_through_the_smallest_rings_across_the_wrap() {
    // 128 bytes holds one whole frame (a message of up to 56 bytes) and its
    // free line; larger messages stream. Every receive form, on and off the
    // one-pass paths, with frames wrapping around the ring's end.
    for cap in [128usize, 256] {
        let (a, b) = Pipe::builder().ring_size(cap).pair().unwrap();
        let t = std::thread::spawn(move || {
            for round in 0..3u64 {
                for n in 0..=300usize {
                    a.send_bytes(&pattern(n, round * 1000 + n as u64)).unwrap();
                }
            }
            a
        });
        let mut buf = vec![0u8; 512];
        for round in 0..3u64 {
            for n in 0..=300usize {
                let want = pattern(n, round * 1000 + n as u64);
                match (n + round as usize) % 3 {
                    0 => assert_eq!(b.recv_bytes_timeout(T).unwrap(), want, "cap {cap} size {n}"),
                    1 => {
                        let got = b.recv_bytes_into_timeout(&mut buf, T).unwrap();
                        assert_eq!(&buf[..got], &want[..], "cap {cap} size {n}");
                    }
                    _ => {
                        // An exact-size buffer, after one too small when there is room for that.
                        if n > 0 {
                            let mut short = vec![0u8; n - 1];
                            match b.recv_bytes_into_timeout(&mut short, T) {
                                Err(RecvError::BufferTooSmall { needed }) => assert_eq!(needed, n),
                                other => panic!("cap {cap} size {n}: {other:?}"),
                            }
                        }
                        let mut exact = vec![0u8; n];
                        assert_eq!(b.recv_bytes_into_timeout(&mut exact, T).unwrap(), n);
                        assert_eq!(exact, want, "cap {cap} size {n}");
                    }
                }
            }
        }
        let _a = t.join().unwrap();
    }
}

#[test]
fn hostile_whole_frame_headers_are_corrupt() {
    // Tag of a whole frame with lengths the one-pass receive leaves to the
    // general path: over the message limit, and too large for the ring.
    for fake in [(0xA55B_u64 << 48) | (1 << 40), (0xA55B_u64 << 48) | 4000] {
        let (a, b) = Pipe::builder().ring_size(4096).pair().unwrap();
        a.send_bytes(&[7u8; 8]).unwrap();
        unsafe_data(&b, 0).store(fake, Ordering::Relaxed);
        assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })), "{fake:#x}");
        let mut buf = [0u8; 16];
        assert!(matches!(b.recv_bytes_into_timeout(&mut buf, T), Err(RecvError::Corrupt { .. })), "{fake:#x}");
    }
}

#[test]
fn a_drained_ring_rewinds_to_its_start() {
    use super::ring::REWIND_AT;
    // Ping-pong keeps the ring drained: the producer's offset stays below
    // REWIND_AT and a frame, lap after lap, while the stream positions run
    // on (each rewind skips to the next lap).
    let (a, b) = Pipe::new().unwrap();
    let cap = shared(&a).control.capacity[0].load(Ordering::Relaxed);
    let echo = std::thread::spawn(move || {
        for _ in 0..20_000u32 {
            let m = b.recv_bytes_timeout(T).unwrap();
            b.send_bytes(&m).unwrap();
        }
        b
    });
    let mut max_off = 0;
    for i in 0..20_000u32 {
        let m = pattern(1 + (i % 40) as usize, u64::from(i));
        a.send_bytes(&m).unwrap();
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), m, "round trip {i}");
        max_off = max_off.max(shared(&a).rings[0].prod.tail.load(Ordering::Relaxed) % cap);
    }
    let _b = echo.join().unwrap();
    let tail = shared(&a).rings[0].prod.tail.load(Ordering::Relaxed);
    assert!(max_off < REWIND_AT + 128, "the producer went up to offset {max_off}");
    assert!(tail > 20_000 * 64, "no skip was taken: the stream is at {tail}");
}

#[test]
fn hostile_skip_frames_are_corrupt() {
    use super::ring::frame_header_skip;
    // One ending short of the lap start, one running past it, and one at a
    // lap start (never valid: it would skip the whole ring).
    let cap = 4096u64;
    for (at, len) in [(64u64, 1000u64), (64, cap), (0, cap - 8)] {
        let (a, b) = Pipe::builder().ring_size(cap as usize).pair().unwrap();
        if at == 64 {
            a.send_bytes(b"x").unwrap();
            assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"x");
        }
        a.send_bytes(b"y").unwrap();
        let word = |pos: u64| {
            // SAFETY: test-only; `pos` is a multiple of 64 below the ring's capacity.
            unsafe { &*(b.segment().payload_ptr().as_ptr().add(DATA_OFFSET + pos as usize) as *const AtomicU64) }
        };
        word(at).store(frame_header_skip(len), Ordering::Release);
        assert!(matches!(b.recv_bytes_timeout(T), Err(RecvError::Corrupt { .. })), "skip of {len} at {at}");
    }
}

#[test]
fn poll_looks_past_a_skip_frame() {
    use super::ring::{frame_header_skip, frame_header_whole};
    let cap = 4096u64;
    let (a, b) = Pipe::builder().ring_size(cap as usize).pair().unwrap();
    a.send_bytes(b"x").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"x");
    // What a rewinding producer writes at position 64: the lap start's header
    // word zeroed, then a skip to it; its frame not there yet.
    let word = |pos: u64| {
        // SAFETY: test-only; `pos` is a multiple of 64 below the ring's capacity.
        unsafe { &*(b.segment().payload_ptr().as_ptr().add(DATA_OFFSET + pos as usize) as *const AtomicU64) }
    };
    word(0).store(0, Ordering::Relaxed);
    word(64).store(frame_header_skip(cap - 64 - 8), Ordering::Release);
    assert!(!b.poll(Duration::ZERO), "a skip alone is no message");
    assert!(matches!(b.recv_bytes_timeout(Duration::from_millis(5)), Err(RecvError::Timeout)));
    // The frame at the lap start shows: a whole, empty message.
    word(0).store(frame_header_whole(0), Ordering::Release);
    assert!(b.poll(Duration::ZERO));
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"");
    drop(a);
}
