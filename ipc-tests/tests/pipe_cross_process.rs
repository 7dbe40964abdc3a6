//! Pipe tests across real processes: fork, launched binaries, kill -9, a hostile writer.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipc_tests::{run_with_timeout, wait_child};
use shmproc::pipe::{wait, RecvError, SendError};
use shmproc::{Connection, Pipe};

const T: Duration = Duration::from_secs(60);
const PEER: &str = env!("CARGO_BIN_EXE_pipe_peer");

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("shmproc-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Deterministic bytes: message `seed`, `len` bytes long (fast in debug builds).
fn fill(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// A 64-bit hash of `b` (word-at-a-time, order-sensitive).
fn hash(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &x in chunks.remainder() {
        h = (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Forks a child that runs `f` and `_exit`s with its result (101 on panic).
fn fork(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs shmproc calls (glibc keeps malloc usable
    // after fork, and resets the locks it needs to start threads, which one
    // test does there) and leaves with _exit, never returning into the harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for `pid` up to `timeout`; kills it if it overstays. Returns the exit code (-signal if killed).
fn reap(pid: libc::pid_t, timeout: Duration) -> i32 {
    let end = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
        }
        if Instant::now() > end {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill9(pid: libc::pid_t) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn pingpong(a: &Connection, n: u64) {
    for i in 0..n {
        a.send_bytes(&i.to_le_bytes()).unwrap();
        let back = a.recv_bytes_timeout(T).unwrap();
        assert_eq!(back, i.to_le_bytes(), "round trip {i}");
    }
}

#[test]
fn pingpong_10000_across_fork() {
    let (a, b) = Pipe::new().unwrap();
    let pid = fork(|| {
        let mut buf = [0u8; 64];
        loop {
            match b.recv_bytes_into_timeout(&mut buf, T) {
                Ok(n) => {
                    if b.send_bytes(&buf[..n]).is_err() {
                        return 2;
                    }
                }
                Err(RecvError::Disconnected) => return 0,
                Err(_) => return 3,
            }
        }
    });
    pingpong(&a, 10_000);
    drop(a); // the child sees Disconnected and exits 0
    assert_eq!(reap(pid, T), 0);
}

#[test]
fn parent_drops_the_childs_end_before_the_child_uses_it() {
    // After a fork, dropping an end this process has not used since only
    // releases it: the child still adopts it, and the parent's own end (used
    // after the fork) closes for real on drop.
    let (a, b) = Pipe::new().unwrap();
    let pid = fork(|| {
        std::thread::sleep(Duration::from_millis(100));
        if b.send_bytes(b"from child").is_err() {
            return 2;
        }
        match b.recv_bytes_timeout(T) {
            Err(RecvError::Disconnected) => 0,
            _ => 3,
        }
    });
    drop(b);
    // Other tests of this binary fork on other threads meanwhile; only this
    // thread's forks decide whether dropping `a` releases or closes it.
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"from child");
    drop(a);
    assert_eq!(reap(pid, T), 0);
}

#[test]
fn pingpong_10000_across_two_binaries_by_name() {
    let name = unique("pipe-named");
    let a = Pipe::builder().name(&name).create().unwrap();
    let mut child = Command::new(PEER).args(["echo-name", &name, "10000"]).spawn().unwrap();
    pingpong(&a, 10_000);
    assert!(wait_child(&mut child, T).success());
    // The echo peer exited (dropping end B): we see Disconnected.
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
}

#[test]
fn a_third_process_cannot_take_a_held_end() {
    let name = unique("pipe-held");
    let a = Pipe::builder().name(&name).create().unwrap();
    let mut holder = Command::new(PEER).args(["echo-name", &name, "2"]).spawn().unwrap();
    // Once the holder answers, it holds end B, and it stays alive waiting for
    // the second message: the third process meets a live holder.
    a.send_bytes(b"x").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"x");
    let (st, _, err) = run_with_timeout(Command::new(PEER).args(["try-open", &name]), T);
    assert_eq!(st.code(), Some(3), "a third process took a held end: {err}");
    // The holder still owns the end and answers.
    a.send_bytes(b"y").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"y");
    assert!(wait_child(&mut holder, T).success());
}

/// Launches the peer binary, which opens end `b` by its handle (inherited
/// fd) and echoes 100 messages.
fn launch_echo(b: &Connection) -> std::process::Child {
    b.segment().set_inheritable(true).unwrap();
    let child = Command::new(PEER).args(["echo-handle", &b.handle().to_string(), "100"]).spawn().unwrap();
    b.segment().set_inheritable(false).unwrap();
    child
}

/// Echo rounds `range` through the launched peer.
fn echo_rounds(a: &Connection, range: std::ops::Range<u64>) {
    for i in range {
        a.send(&i).unwrap();
        assert_eq!(postcard_u64(&a.recv_bytes_timeout(T).unwrap()), i);
    }
}

#[test]
fn anonymous_pipe_handed_to_a_launched_binary() {
    let (a, b) = Pipe::new().unwrap();
    let mut child = launch_echo(&b);
    b.hand_over(); // the child claims it (or takes it over from us, its parent)
    echo_rounds(&a, 0..100);
    assert!(wait_child(&mut child, T).success());
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
}

/// The launched child claims the end *before* the parent hands it over (the
/// race a descheduled parent loses): the ticket made afterwards must not keep
/// the end held once the child is gone.
#[test]
fn hand_over_after_the_launched_binary_claimed_the_end() {
    let (a, b) = Pipe::new().unwrap();
    let mut child = launch_echo(&b);
    // The first echo proves the child has claimed the end.
    echo_rounds(&a, 0..1);
    b.hand_over();
    echo_rounds(&a, 1..100);
    assert!(wait_child(&mut child, T).success());
    // Bounded well below T: the end must read as closed once its only user exited.
    let r = a.recv_bytes_timeout(Duration::from_secs(10));
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
}

fn postcard_u64(b: &[u8]) -> u64 {
    // postcard encodes u64 as a varint.
    let (mut v, mut shift) = (0u64, 0);
    for &x in b {
        v |= ((x & 0x7f) as u64) << shift;
        shift += 7;
        if x & 0x80 == 0 {
            break;
        }
    }
    v
}

#[test]
fn message_of_256_mib_and_random_sizes_arrive_intact() {
    let (a, b) = Pipe::new().unwrap();
    const BIG: usize = 256 << 20;
    let sizes: Vec<usize> = {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut v = vec![0, 1, 4 << 20];
        for _ in 0..37 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push((x % ((4 << 20) + 1)) as usize);
        }
        v
    };
    let sizes2 = sizes.clone();
    let pid = fork(move || {
        let big = fill(BIG, 7);
        if b.send(&hash(&big)).is_err() || b.send_bytes(&big).is_err() {
            return 2;
        }
        drop(big);
        for (i, &n) in sizes2.iter().enumerate() {
            let m = fill(n, i as u64);
            if b.send(&hash(&m)).is_err() || b.send_bytes(&m).is_err() {
                return 3;
            }
        }
        0
    });
    let want: u64 = a.recv_timeout(T).unwrap();
    let got = a.recv_bytes_timeout(T).unwrap();
    assert_eq!(got.len(), BIG);
    assert_eq!(hash(&got), want);
    drop(got);
    for &n in &sizes {
        let want: u64 = a.recv_timeout(T).unwrap();
        let got = a.recv_bytes_timeout(T).unwrap();
        assert_eq!(got.len(), n);
        assert_eq!(hash(&got), want);
    }
    assert_eq!(reap(pid, T), 0);
}

#[test]
fn peer_killed_mid_message_gives_disconnected_after_complete_messages() {
    let (a, b) = Pipe::builder().ring_size(64 << 10).pair().unwrap();
    let (ctl_a, ctl_b) = Pipe::new().unwrap();
    let pid = fork(move || {
        for i in 0..3u64 {
            if b.send_bytes(&fill(1000, i)).is_err() {
                return 2;
            }
        }
        if ctl_b.send_bytes(b"go").is_err() {
            return 3;
        }
        // Far larger than the ring: blocks mid-message until killed.
        let _ = b.send_bytes(&fill(8 << 20, 99));
        4
    });
    assert_eq!(ctl_a.recv_bytes_timeout(T).unwrap(), b"go");
    std::thread::sleep(Duration::from_millis(200)); // let it fill the ring
    kill9(pid);
    assert_eq!(reap(pid, T), -libc::SIGKILL);
    for i in 0..3u64 {
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), fill(1000, i));
    }
    // Never the partial 8 MiB message; no hang.
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
    assert!(matches!(a.send_bytes(b"anyone?"), Err(SendError::Disconnected)));
}

#[test]
fn peer_killed_while_we_stream_a_message_in() {
    // The receiver is already inside the message (it has read part of it)
    // when the sender dies.
    let (a, b) = Pipe::builder().ring_size(64 << 10).pair().unwrap();
    let pid = fork(move || {
        let _ = b.send_bytes(b"whole");
        let _ = b.send_bytes(&fill(64 << 20, 5));
        4
    });
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"whole");
    // A tiny timeout: returns Timeout mid-message (or, rarely, the whole
    // message if the child is very fast; then there is nothing to test).
    let mut partial = false;
    let mut buf = vec![0u8; 64 << 20];
    match a.recv_bytes_into_timeout(&mut buf, Duration::from_millis(1)) {
        Err(RecvError::Timeout) => partial = true,
        Ok(n) => assert_eq!(n, 64 << 20),
        Err(e) => panic!("{e}"),
    }
    kill9(pid);
    assert_eq!(reap(pid, T), -libc::SIGKILL);
    if partial {
        match a.recv_bytes_into_timeout(&mut buf, T) {
            // The child may have finished the send before the kill.
            Ok(n) => {
                assert_eq!(n, 64 << 20);
                assert_eq!(hash(&buf), hash(&fill(64 << 20, 5)));
            }
            Err(RecvError::Disconnected) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(a.recv_bytes_timeout(T), Err(RecvError::Disconnected)));
}

#[test]
fn poll_and_wait_across_processes() {
    let pairs: Vec<(Connection, Connection)> = (0..3).map(|_| Pipe::new().unwrap()).collect();
    let (ours, theirs): (Vec<Connection>, Vec<Connection>) = pairs.into_iter().unzip();
    let pid = fork(move || {
        // Answer on connection i after being told i.
        for _ in 0..2 {
            let r = wait(&theirs.iter().collect::<Vec<_>>(), Some(T));
            for i in r {
                let m = match theirs[i].recv_bytes_timeout(T) {
                    Ok(m) => m,
                    Err(_) => return 2,
                };
                if theirs[i].send_bytes(&m).is_err() {
                    return 3;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = theirs[0].send_bytes(b"late");
        std::thread::sleep(Duration::from_millis(100));
        0
    });
    let refs: Vec<&Connection> = ours.iter().collect();
    assert!(wait(&refs, Some(Duration::from_millis(30))).is_empty());
    assert!(!ours[1].poll(Duration::from_millis(10)));
    ours[2].send_bytes(b"two").unwrap();
    assert_eq!(wait(&refs, Some(T)), vec![2]);
    assert!(ours[2].poll(Duration::ZERO));
    assert_eq!(ours[2].recv_bytes_timeout(T).unwrap(), b"two");
    ours[1].send_bytes(b"one").unwrap();
    assert!(ours[1].poll(T));
    assert_eq!(ours[1].recv_bytes_timeout(T).unwrap(), b"one");
    // The child sleeps 300 ms, then answers on 0: wait sleeps until then.
    assert_eq!(wait(&refs, Some(T)), vec![0]);
    assert_eq!(ours[0].recv_bytes_timeout(T).unwrap(), b"late");
    assert_eq!(reap(pid, T), 0);
    // The child exited (without dropping): all three peers are gone, so all are ready.
    assert_eq!(wait(&refs, Some(T)), vec![0, 1, 2]);
}

#[test]
fn short_buffer_across_processes() {
    let (a, b) = Pipe::new().unwrap();
    let pid = fork(move || if b.send_bytes(&fill(5000, 1)).is_ok() { 0 } else { 2 });
    let mut small = [0u8; 100];
    match a.recv_bytes_into_timeout(&mut small, T) {
        Err(RecvError::BufferTooSmall { needed }) => assert_eq!(needed, 5000),
        other => panic!("{other:?}"),
    }
    let mut big = vec![0u8; 5000];
    assert_eq!(a.recv_bytes_into_timeout(&mut big, T).unwrap(), 5000);
    assert_eq!(big, fill(5000, 1));
    assert_eq!(reap(pid, T), 0);
}

/// Segment offsets: 128-byte header, then the payload; ring 0 data at payload 1024,
/// ring 0's producer line (tail) at payload 256.
const RING0_DATA: u64 = 128 + 1024;
const RING0_TAIL: u64 = 128 + 256;

fn scribble(name: &str, off: u64, v: u64) {
    let (st, _, _) = run_with_timeout(Command::new(PEER).args(["scribble", name, &off.to_string(), &v.to_string()]), T);
    assert!(st.success());
}

#[test]
fn hostile_frame_header_from_another_process_is_an_error() {
    for (what, off, v) in [
        ("bad tag", RING0_DATA, 0xdead_beef_u64),
        ("length over the limit", RING0_DATA, (0xA55A << 48) | (1 << 47)),
        ("tail beyond the ring", RING0_TAIL, 1 << 60),
    ] {
        let name = unique("pipe-hostile");
        let a = Pipe::builder().name(&name).create().unwrap();
        let b = Pipe::builder().name(&name).open().unwrap();
        a.send_bytes(b"legit").unwrap();
        scribble(&name, off, v);
        let mut got = b.recv_bytes_timeout(T);
        if off == RING0_TAIL {
            // The frame was complete before the scribble and its header says
            // so: the receiver may deliver it without reading `tail` (see
            // `pipe/ring.rs`); the hostile index is then the next receive's error.
            if let Ok(m) = &got {
                assert_eq!(m, b"legit", "{what}");
                got = b.recv_bytes_timeout(T);
            }
        }
        match got {
            Err(RecvError::Corrupt { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    // A length within the limit but with no data behind it: no huge
    // allocation up front, just a wait that times out.
    let name = unique("pipe-hostile");
    let a = Pipe::builder().name(&name).create().unwrap();
    let b = Pipe::builder().name(&name).open().unwrap();
    a.send_bytes(b"legit").unwrap();
    scribble(&name, RING0_DATA, (0xA55A << 48) | ((1 << 30) - 1));
    assert!(matches!(b.recv_bytes_timeout(Duration::from_millis(100)), Err(RecvError::Timeout)));
    drop(a);
}

#[test]
fn a_child_adopting_a_send_side_continues_after_a_frame_published_only_by_its_header() {
    // What a producer killed between a whole frame's header and its `tail`
    // store leaves ("ghost" at stream position 64, `tail` still at 64): the
    // child that adopts the send side must write after it (the consumer may
    // have read it already), not over it.
    let name = unique("pipe-ghost");
    let a = Pipe::builder().name(&name).create().unwrap();
    let b = Pipe::builder().name(&name).open().unwrap();
    a.send_bytes(b"zero").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"zero");
    scribble(&name, RING0_DATA + 64 + 8, u64::from_le_bytes(*b"ghost\0\0\0"));
    scribble(&name, RING0_DATA + 64, (0xA55B << 48) | 5);
    let pid = fork(|| if a.send_bytes(b"c1").is_ok() { 0 } else { 2 });
    assert_eq!(reap(pid, T), 0);
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"ghost");
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"c1");
}

#[test]
fn a_child_adopting_a_receive_side_checks_the_shared_head_against_tail() {
    // A scribbled consumer `head`, aligned and ten rings ahead, on the
    // stale frame "zero" at ring offset 0: the adopting child moves to it (a
    // rewinding producer moves the positions on by nearly a ring per small
    // message, so no distance is too far to follow) and must then find it
    // inconsistent with `tail`, not deliver "zero" again.
    let name = unique("pipe-far-head");
    let a = Pipe::builder().name(&name).create().unwrap();
    let b = Pipe::builder().name(&name).open().unwrap();
    a.send_bytes(b"zero").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"zero");
    const RING0_HEAD: u64 = 128 + 384;
    scribble(&name, RING0_HEAD, 10 * (1 << 20));
    let pid = fork(|| match b.recv_bytes_timeout(Duration::from_secs(2)) {
        Err(RecvError::Corrupt { .. }) => 0,
        Err(RecvError::Timeout) => 3,
        _ => 4,
    });
    assert_eq!(reap(pid, T), 0, "4: the child delivered the stale frame");
    drop(a);
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn idle_receiver_does_not_burn_a_core() {
    let (a, b) = Pipe::new().unwrap();
    let (a2, b2) = Pipe::new().unwrap();
    let pid = fork(move || {
        std::thread::sleep(Duration::from_secs(2));
        let r1 = b.send_bytes(b"wake");
        std::thread::sleep(Duration::from_secs(1));
        let r2 = b2.send_bytes(b"wake");
        // Stay alive a little, so that end `a` is not made ready by our exit.
        std::thread::sleep(Duration::from_millis(500));
        if r1.is_ok() && r2.is_ok() {
            0
        } else {
            2
        }
    });
    let (t0, c0) = (Instant::now(), thread_cpu());
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"wake");
    let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
    assert!(cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(), "recv: {cpu:?} CPU in {wall:?}");
    let (t0, c0) = (Instant::now(), thread_cpu());
    assert_eq!(wait(&[&a, &a2], Some(T)), vec![1]);
    let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
    assert!(cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(), "wait: {cpu:?} CPU in {wall:?}");
    assert_eq!(reap(pid, T), 0);
}

#[test]
fn no_segments_left_behind() {
    // Named pipes are unlinked by their creator on drop; this runs alongside the
    // others, so only check our own prefix after creating and dropping one.
    let name = unique("pipe-cleanup");
    let a = Pipe::builder().name(&name).create().unwrap();
    assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
    drop(a);
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists());
    let _ = Stdio::null();
}

#[test]
fn close_after_an_unrelated_fork_still_disconnects_the_peer() {
    // Dropping an end unused since the latest fork only releases it; `close`
    // must close it regardless, so the peer hears `Disconnected` at once.
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(b"last words").unwrap();
    // An unrelated fork after the last use of `a` (its child never touches the pipe).
    let pid = fork(|| 0);
    assert_eq!(reap(pid, T), 0);
    a.close();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"last words");
    // Told at once: a released (not closed) end would make this time out.
    match b.recv_bytes_timeout(Duration::from_secs(5)) {
        Err(RecvError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn drop_after_another_threads_fork_still_disconnects_the_peer() {
    // Regression: every fork of the process used to turn a later drop into a
    // release, so a fork by an unrelated thread left the peer waiting for its
    // timeout instead of getting Disconnected (seen as a flaky test).
    let (a, b) = Pipe::new().unwrap();
    a.send_bytes(b"bye").unwrap();
    std::thread::spawn(|| {
        let pid = fork(|| 0);
        assert_eq!(reap(pid, T), 0);
    })
    .join()
    .unwrap();
    drop(a);
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"bye");
    // Told at once: a released (not closed) end would make this time out.
    match b.recv_bytes_timeout(Duration::from_secs(5)) {
        Err(RecvError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn the_parent_cannot_use_an_end_its_child_adopted() {
    // Each end is used by one process at a time: once a forked child has
    // adopted its copy of `b`, the parent's copy refuses (before, both wrote
    // into one ring and read from the other).
    let (a, b) = Pipe::new().unwrap();
    let pid = fork(|| {
        if b.send_bytes(b"adopted").is_err() {
            return 2;
        }
        match b.recv_bytes_timeout(T) {
            Ok(m) if m == b"done" => 0,
            Ok(_) => 3,
            Err(_) => 4,
        }
    });
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"adopted");
    match b.send_bytes(b"from the parent") {
        Err(SendError::EndInUse { pid: p }) => assert_eq!(p as i32, pid),
        other => panic!("the parent sent on an end its child holds: {other:?}"),
    }
    assert!(matches!(b.recv_bytes_timeout(Duration::from_millis(10)), Err(RecvError::EndInUse { .. })));
    a.send_bytes(b"done").unwrap();
    assert_eq!(reap(pid, T), 0);
    // The child died holding the end (it `_exit`ed, nothing dropped): the
    // parent takes it back, from where the child left it.
    b.send_bytes(b"parent again").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"parent again");

    // A child that drops its copy gives the end back too.
    let (a, b) = Pipe::new().unwrap();
    let slot = std::cell::RefCell::new(Some(b));
    let pid = fork(|| {
        let b = slot.borrow_mut().take().unwrap();
        if b.send_bytes(b"adopted").is_err() {
            return 2;
        }
        drop(b);
        0
    });
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"adopted");
    assert_eq!(reap(pid, T), 0);
    let b = slot.borrow_mut().take().unwrap();
    b.send_bytes(b"parent again").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"parent again");
}

#[test]
fn poll_on_a_copy_not_adopted_yet_sees_what_its_parent_took() {
    // The parent receives everything on `b` after the fork; the child's
    // copy, not used yet, must not poll "ready" for those frames.
    let (a, b) = Pipe::new().unwrap();
    let (go_tx, go_rx) = Pipe::new().unwrap();
    let pid = fork(|| {
        if go_rx.recv_bytes_timeout(T).is_err() {
            return 2;
        }
        if b.poll(Duration::ZERO) {
            return 3;
        }
        if go_rx.send_bytes(b"polled").is_err() {
            return 6;
        }
        if go_rx.recv_bytes_timeout(T).is_err() || !b.poll(T) {
            return 4;
        }
        match b.recv_bytes_timeout(T) {
            Ok(m) if m == b"three" => 0,
            _ => 5,
        }
    });
    a.send_bytes(b"one").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"one");
    go_tx.send_bytes(b"go").unwrap();
    // "three" only once the child has polled: it must not have been there.
    assert_eq!(go_tx.recv_bytes_timeout(T).unwrap(), b"polled");
    a.send_bytes(b"three").unwrap();
    go_tx.send_bytes(b"go").unwrap();
    assert_eq!(reap(pid, T), 0, "3: the child's poll saw the frame its parent had taken");
}

/// Forks a child that, once told "go" on `go_rx`, adopts `b`: receives one
/// message (exit 3 if it is not `want`, 4 on an error) and sends "c1".
fn fork_adopter(b: &Connection, go_rx: &Connection, want: &'static [u8]) -> libc::pid_t {
    fork(|| {
        if go_rx.recv_bytes_timeout(T).is_err() {
            return 2;
        }
        match b.recv_bytes_timeout(T) {
            Ok(m) if m == want => {}
            Ok(_) => return 3,
            Err(_) => return 4,
        }
        if b.send_bytes(b"c1").is_err() {
            return 5;
        }
        0
    })
}

#[test]
fn a_child_adopts_an_end_where_its_parent_left_it() {
    // The parent goes on using `b` after the fork (receives one message,
    // sends one), then the child adopts it: the child must start from the
    // shared positions, not from its copy of the fork-time ones (it received
    // "one" again, and overwrote "p1").
    let (a, b) = Pipe::new().unwrap();
    let (go_tx, go_rx) = Pipe::new().unwrap();
    let pid = fork_adopter(&b, &go_rx, b"two");
    a.send_bytes(b"one").unwrap();
    a.send_bytes(b"two").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"one");
    b.send_bytes(b"p1").unwrap();
    go_tx.send_bytes(b"go").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"p1");
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"c1");
    assert_eq!(reap(pid, T), 0, "3: the child received \"one\" again");
}

#[test]
fn a_child_adopts_an_end_after_its_parent_rewound_the_ring_many_times() {
    // As above, but the parent's traffic after the fork rewinds both rings
    // lap after lap (a drained ring starts again at its start, each time
    // moving the stream positions on by nearly a ring): the shared indices
    // end up many rings ahead of the child's fork-time copy, and the child
    // must still start from them (it read stale frames of an earlier lap).
    let (a, b) = Pipe::new().unwrap();
    let (go_tx, go_rx) = Pipe::new().unwrap();
    let pid = fork_adopter(&b, &go_rx, b"last");
    for i in 0..400u32 {
        a.send_bytes(&i.to_le_bytes()).unwrap();
        assert_eq!(b.recv_bytes_timeout(T).unwrap(), i.to_le_bytes());
        b.send_bytes(&(i + 1).to_le_bytes()).unwrap();
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), (i + 1).to_le_bytes());
    }
    a.send_bytes(b"last").unwrap();
    go_tx.send_bytes(b"go").unwrap();
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"c1");
    assert_eq!(reap(pid, T), 0, "3: the child received a stale frame");
}

#[test]
fn a_child_forked_while_a_thread_waits_on_an_end_is_not_wedged() {
    // A thread of the parent waits in a receive on `b`, holding that side's
    // process-local lock, when the parent forks; the wait then times out
    // and the parent leaves `b` to the child. In the child no thread holds
    // that lock: the child adopts the end and receives from where the
    // parent left the ring (before, the child's copy of the lock stayed
    // locked and its first receive hung).
    let (a, b) = Pipe::new().unwrap();
    let (go_tx, go_rx) = Pipe::new().unwrap();
    a.send_bytes(b"before").unwrap();
    assert_eq!(b.recv_bytes_timeout(T).unwrap(), b"before");
    let pid = std::thread::scope(|s| {
        let b = &b;
        let waiter = s.spawn(move || b.recv_bytes_timeout(Duration::from_millis(300)));
        // Let the thread get into its wait (if it has not, the lock is free
        // at the fork and the test checks less, but still passes rightly).
        std::thread::sleep(Duration::from_millis(50));
        let pid = fork(|| {
            if go_rx.recv_bytes_timeout(T).ok().as_deref() != Some(&b"go"[..]) {
                return 2;
            }
            match b.recv_bytes_timeout(T) {
                Ok(m) if m == b"after" => {}
                Ok(m) if m == b"before" => return 3,
                Ok(_) => return 4,
                Err(_) => return 5,
            }
            // And the send side, whose lock no thread held.
            match b.send_bytes(b"from the child") {
                Ok(()) => 0,
                Err(_) => 6,
            }
        });
        assert!(matches!(waiter.join().unwrap(), Err(RecvError::Timeout)));
        pid
    });
    a.send_bytes(b"after").unwrap();
    go_tx.send_bytes(b"go").unwrap();
    let code = reap(pid, T);
    let why = match code {
        2 => "no go",
        3 => "it received the message the parent had already received",
        4 | 5 => "its receive failed",
        6 => "its send failed",
        _ => "it died or hung",
    };
    assert_eq!(code, 0, "{why}");
    assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"from the child");
}

#[test]
fn a_receive_waiting_when_a_child_adopts_the_end_leaves_the_message_to_it() {
    // A thread of the parent waits in a receive on `b` when a forked child
    // adopts its copy of `b`. The message that then arrives is the child's:
    // the parent's receive ends with `EndInUse` naming the child (before,
    // both received it).
    let (a, b) = Pipe::new().unwrap();
    let (adopted_tx, adopted_rx) = Pipe::new().unwrap();
    let (waited, queued, pid) = std::thread::scope(|s| {
        let b = &b;
        let waiter = s.spawn(move || b.recv_bytes_timeout(T));
        std::thread::sleep(Duration::from_millis(50));
        // A second receive, queued behind the first one's lock.
        let queued = s.spawn(move || b.recv_bytes_timeout(Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(50));
        let pid = fork(|| {
            // Adopts the end (nothing to receive yet).
            if !matches!(b.recv_bytes_timeout(Duration::from_millis(10)), Err(RecvError::Timeout)) {
                return 2;
            }
            if adopted_tx.send_bytes(b"adopted").is_err() {
                return 3;
            }
            match b.recv_bytes_timeout(T) {
                Ok(m) if m == b"one" => 0,
                Ok(_) => 4,
                Err(_) => 5,
            }
        });
        assert_eq!(adopted_rx.recv_bytes_timeout(T).unwrap(), b"adopted");
        a.send_bytes(b"one").unwrap();
        (waiter.join().unwrap(), queued.join().unwrap(), pid)
    });
    assert_eq!(reap(pid, T), 0, "the child did not receive the message");
    match waited {
        Err(RecvError::EndInUse { pid: p }) => assert_eq!(p as i32, pid),
        other => panic!("the parent's waiting receive went on after the child adopted the end: {other:?}"),
    }
    // Refused while the child holds the end; once the child has exited
    // (it may have by then) the parent takes the end back, and nothing is
    // left to receive.
    match queued {
        Err(RecvError::EndInUse { pid: p }) => assert_eq!(p as i32, pid),
        Err(RecvError::Timeout) => {}
        other => panic!("the parent's queued receive took the child's message: {other:?}"),
    }
}

#[test]
fn a_message_half_streamed_when_a_child_adopts_the_end_is_finished() {
    // A thread of the parent streams a message four times the ring's size
    // and waits for room half-way when a forked child adopts the sending
    // end. The frame has started: the parent finishes it (a frame stopped
    // half-way would leave the receiver waiting for the rest of its body),
    // and the receiver gets the whole message.
    let (a, b) = Pipe::builder().ring_size(4096).pair().unwrap();
    let msg: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    let (sent, pid) = std::thread::scope(|s| {
        let b = &b;
        let msg = &msg;
        let sender = s.spawn(move || b.send_bytes_timeout(msg, T));
        std::thread::sleep(Duration::from_millis(50));
        let pid = fork(|| {
            // Adopts the end (its send side's indices are inside the
            // parent's frame: refused, whatever the reason).
            let _ = b.send_bytes_timeout(b"x", Duration::from_millis(10));
            0
        });
        assert_eq!(reap(pid, T), 0);
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), *msg, "the message arrived whole");
        (sender.join().unwrap(), pid)
    });
    assert!(sent.is_ok(), "the parent's half-streamed send stopped ({sent:?}; child {pid})");
}

#[test]
fn two_threads_of_a_child_adopt_its_end_at_once() {
    // A forked child whose first operations on its inherited end come from
    // two threads at the same moment (one sends, one receives): one of them
    // claims the end for the process, and the other must go on under that
    // claim, not be refused with `EndInUse` naming its own process.
    for round in 0..100 {
        let (a, b) = Pipe::new().unwrap();
        let pid = fork(|| {
            let start = std::sync::Barrier::new(2);
            let (sent, got) = std::thread::scope(|s| {
                let sender = s.spawn(|| {
                    start.wait();
                    b.send_bytes(b"from the child")
                });
                start.wait();
                let got = b.recv_bytes_timeout(T);
                (sender.join().unwrap_or(Err(SendError::NotWritable)), got)
            });
            match (sent, got) {
                (Err(SendError::EndInUse { .. }), _) => 3,
                (_, Err(RecvError::EndInUse { .. })) => 4,
                (Err(_), _) | (_, Err(_)) => 5,
                (Ok(()), Ok(m)) if m == b"from the parent" => 0,
                _ => 6,
            }
        });
        a.send_bytes(b"from the parent").unwrap();
        // The child never waits for us to read (its ring has room), so reap
        // it first: a child that failed must not leave us waiting for its
        // message (our own copy of its end keeps the pipe connected).
        let code = reap(pid, T);
        let why = match code {
            3 => "its sending thread was refused its own process's end",
            4 => "its receiving thread was refused its own process's end",
            5 => "another error",
            6 => "it received the wrong message",
            _ => "it died",
        };
        assert_eq!(code, 0, "round {round}: {why}");
        assert_eq!(a.recv_bytes_timeout(T).unwrap(), b"from the child", "round {round}");
    }
}
