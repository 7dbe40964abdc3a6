//! Queue across real processes: exactly-once delivery, order, disconnection
//! after drop and after kill -9, a kill -9 chaos loop, a hostile scribbler, and
//! an idle receiver's CPU use.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_tests::queue_common::{unique_name, Msg};
use shmproc::{Queue, RawArray, RecvTimeoutError, Role, SendTimeoutError, TryRecvError};

const BIN: &str = env!("CARGO_BIN_EXE_queue_role");

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN).args(args).stdout(Stdio::piped()).spawn().expect("spawn queue_role")
}

/// Waits up to `t` for `c`; kills it and fails if it does not finish.
fn wait_code(c: &mut Child, t: Duration) -> i32 {
    let end = Instant::now() + t;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code().unwrap_or_else(|| panic!("helper killed by a signal: {st:?}"));
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("helper did not finish within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The first line the helper prints, waiting at most 30 s (kills it and fails after).
fn read_line(c: &mut Child) -> String {
    use std::io::BufRead;
    let out = c.stdout.take().expect("helper stdout is piped and read once");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut s);
        let _ = tx.send(s);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(s) => s,
        Err(_) => {
            let _ = c.kill();
            let _ = c.wait();
            panic!("helper printed no line within 30 s");
        }
    }
}

/// (producer, seq) records written by a consumer helper.
fn records(path: &std::path::Path) -> Vec<(u32, u64)> {
    let b = std::fs::read(path).unwrap_or_default();
    b.chunks_exact(12)
        .map(|c| (u32::from_le_bytes(c[..4].try_into().unwrap()), u64::from_le_bytes(c[4..].try_into().unwrap())))
        .collect()
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}.out"))
}

#[test]
fn spsc_across_processes_in_order() {
    let name = unique_name("qspsc");
    let q = Queue::<Msg>::builder().name(&name).capacity(256).spsc(true).role(Role::Receiver).create().unwrap();
    let n = 100_000u64;
    let mut p = spawn(&["produce", &name, "3", &n.to_string(), "-"]);
    for i in 0..n {
        let m = q.recv_timeout(Duration::from_secs(20)).expect("message");
        assert!(m.valid(), "torn message {m:?}");
        assert_eq!((m.producer, m.seq), (3, i), "out of order");
    }
    assert_eq!(wait_code(&mut p, Duration::from_secs(20)), 0);
    assert_eq!(q.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn mpmc_two_by_two_exactly_once() {
    let name = unique_name("qmpmc");
    let q = Queue::<Msg>::builder().name(&name).capacity(64).role(Role::Receiver).create().unwrap();
    let n = 50_000u64;
    let outs = [tmp(&format!("{name}-a")), tmp(&format!("{name}-b"))];
    let mut cons: Vec<Child> = outs.iter().map(|o| spawn(&["consume", &name, o.to_str().unwrap(), "-"])).collect();
    let mut prods: Vec<Child> =
        (0..2).map(|i| spawn(&["produce", &name, &i.to_string(), &n.to_string(), "-"])).collect();
    for p in &mut prods {
        assert_eq!(wait_code(p, Duration::from_secs(30)), 0);
    }
    for c in &mut cons {
        assert_eq!(wait_code(c, Duration::from_secs(30)), 0, "consumer failed (5 = torn message)");
    }
    drop(q);
    let mut seen: HashMap<u32, Vec<u64>> = HashMap::new();
    for o in &outs {
        let rs = records(o);
        std::fs::remove_file(o).unwrap();
        // Per consumer, each producer's messages arrive in increasing order.
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (p, s) in rs {
            if let Some(&l) = last.get(&p) {
                assert!(s > l, "producer {p}: {s} after {l}");
            }
            last.insert(p, s);
            seen.entry(p).or_default().push(s);
        }
    }
    for p in 0..2 {
        let mut v = seen.remove(&p).unwrap_or_default();
        v.sort_unstable();
        assert_eq!(v.len() as u64, n, "producer {p}: duplicates or losses");
        assert!(v.iter().copied().eq(0..n), "producer {p}: not exactly once");
    }
}

#[test]
fn disconnected_after_senders_exit() {
    let name = unique_name("qdrop");
    let q = Queue::<Msg>::builder().name(&name).capacity(16).role(Role::Receiver).create().unwrap();
    let mut p = spawn(&["produce", &name, "1", "10", "-"]);
    for i in 0..10 {
        assert_eq!(q.recv_timeout(Duration::from_secs(10)).unwrap().seq, i);
    }
    assert_eq!(wait_code(&mut p, Duration::from_secs(10)), 0);
    assert_eq!(q.recv_timeout(Duration::from_secs(10)), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn disconnected_after_senders_killed() {
    let name = unique_name("qkill");
    let q = Queue::<Msg>::builder().name(&name).capacity(16).role(Role::Receiver).create().unwrap();
    let mut a = spawn(&["hang-sender", &name, "3"]);
    let mut b = spawn(&["hang-sender", &name, "2"]);
    assert_eq!(read_line(&mut a).trim(), "sent");
    assert_eq!(read_line(&mut b).trim(), "sent");
    a.kill().unwrap();
    a.wait().unwrap();
    // One sender still alive: no disconnection yet, just a timeout after draining.
    for _ in 0..5 {
        q.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(q.recv_timeout(Duration::from_millis(200)), Err(RecvTimeoutError::Timeout));
    b.kill().unwrap();
    b.wait().unwrap();
    // A polling receiver notices too (within a bounded time).
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match q.try_recv() {
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => assert!(Instant::now() < end, "try_recv never saw the disconnection"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(q.recv_timeout(Duration::from_secs(20)), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn send_disconnected_after_receiver_killed() {
    let name = unique_name("qrxkill");
    let q = Queue::<Msg>::builder().name(&name).capacity(4).role(Role::Sender).create().unwrap();
    let mut r = spawn(&["hang-receiver", &name]);
    assert_eq!(read_line(&mut r).trim(), "ready");
    r.kill().unwrap();
    r.wait().unwrap();
    let mut i = 0;
    let res = loop {
        match q.send_timeout(Msg::new(1, i), Duration::from_secs(20)) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(i <= 4, "sent more than the capacity without a receiver");
    };
    assert!(matches!(res, SendTimeoutError::Disconnected(m) if m.seq == i), "{res:?}");
}

/// Kill -9 a random producer or consumer at a random moment, round after round.
/// Checks: survivors never hang (every helper wait is bounded), no torn or
/// duplicated message, and the loss is within the documented bound: at most one
/// message per killed consumer (the one it had claimed or not yet recorded);
/// a killed producer loses only its unfinished send (never counted as sent).
#[test]
fn chaos_kill_random_participants() {
    let rounds: usize = std::env::var("SHMPROC_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let name = unique_name("qchaos");
    let ctl_name = format!("{name}-ctl");
    let max_producers = 2 + rounds + 1;
    let ctl = RawArray::<u64>::builder().name(&ctl_name).create_zeroed(2 + max_producers).unwrap();
    let q = Queue::<Msg>::builder().name(&name).capacity(64).max_participants(16).create().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    let mut rnd = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut next_id = 0u32;
    let mut outs = Vec::new();
    let spawn_producer = |next_id: &mut u32| {
        let c = spawn(&["produce", &name, &next_id.to_string(), "0", &ctl_name]);
        *next_id += 1;
        c
    };
    let spawn_consumer = |outs: &mut Vec<std::path::PathBuf>| {
        let o = tmp(&format!("{name}-c{}", outs.len()));
        let c = spawn(&["consume", &name, o.to_str().unwrap(), &ctl_name]);
        outs.push(o);
        c
    };
    let mut producers: Vec<Child> = (0..2).map(|_| spawn_producer(&mut next_id)).collect();
    let mut consumers: Vec<Child> = (0..2).map(|_| spawn_consumer(&mut outs)).collect();
    let mut consumer_kills = 0u64;
    for _ in 0..rounds {
        std::thread::sleep(Duration::from_micros(rnd() % 3000));
        let victim = (rnd() % 2) as usize;
        if rnd() % 2 == 0 {
            let mut c = std::mem::replace(&mut producers[victim], spawn_producer(&mut next_id));
            let _ = c.kill();
            let st = c.wait().unwrap();
            assert!(st.code().is_none(), "producer ended by itself: {st:?}");
        } else {
            let mut c = std::mem::replace(&mut consumers[victim], spawn_consumer(&mut outs));
            let _ = c.kill();
            let st = c.wait().unwrap();
            assert!(st.code().is_none(), "consumer ended by itself: {st:?} (5 = torn)");
            consumer_kills += 1;
        }
    }
    // Stop producers, then consumers; every wait is bounded.
    ctl.atomics()[0].store(1, Ordering::SeqCst);
    for p in &mut producers {
        assert_eq!(wait_code(p, Duration::from_secs(30)), 0);
    }
    ctl.atomics()[1].store(1, Ordering::SeqCst);
    for c in &mut consumers {
        assert_eq!(wait_code(c, Duration::from_secs(30)), 0);
    }
    let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
    while let Ok(m) = q.try_recv() {
        assert!(m.valid());
        got.entry(m.producer).or_default().push(m.seq);
    }
    for o in &outs {
        for (p, s) in records(o) {
            got.entry(p).or_default().push(s);
        }
        let _ = std::fs::remove_file(o);
    }
    let mut lost = 0u64;
    let mut total = 0u64;
    for id in 0..next_id {
        let sent = ctl.atomics()[2 + id as usize].load(Ordering::SeqCst);
        let mut v = got.remove(&id).unwrap_or_default();
        v.sort_unstable();
        let before = v.len();
        v.dedup();
        assert_eq!(before, v.len(), "producer {id}: duplicated message");
        // A killed producer may have published one message it had not counted yet.
        assert!(v.last().is_none_or(|&l| l <= sent), "producer {id}: message beyond its sends");
        let delivered = v.iter().filter(|&&s| s < sent).count() as u64;
        lost += sent - delivered;
        total += sent;
    }
    assert!(got.is_empty(), "messages from unknown producers: {:?}", got.keys());
    assert!(total > 0, "no traffic");
    assert!(lost <= consumer_kills, "lost {lost} messages with {consumer_kills} consumer kills (of {total})");
    // Same line as the other chaos loops (ipc-tests/tests/chaos.rs); duplicates,
    // torn messages and hangs were asserted absent above.
    eprintln!(
        "chaos queue: rounds {rounds}, messages {total}, lost {lost} (bound {consumer_kills}), duplicated 0, torn 0, hangs 0"
    );
}

#[test]
fn scribbler_causes_errors_not_crashes() {
    let name = unique_name("qscrib");
    let q = Queue::<Msg>::builder().name(&name).capacity(32).create().unwrap();
    let mut s = spawn(&["survive", &name, "1500", "send"]);
    let mut r = spawn(&["survive", &name, "1500", "recv"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut w = spawn(&["scribble", &name, "1000", &std::process::id().to_string()]);
    // The parent operates on the scribbled queue too, and counts what it sees.
    let (mut ok, mut corrupt) = (0u32, 0u32);
    let end = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < end {
        let sent = q.send_timeout(Msg::new(7, 7), Duration::from_millis(5));
        ok += sent.is_ok() as u32;
        corrupt += matches!(sent, Err(SendTimeoutError::Corrupt(_))) as u32;
        let got = q.recv_timeout(Duration::from_millis(5));
        ok += got.is_ok() as u32;
        corrupt += matches!(got, Err(RecvTimeoutError::Corrupt)) as u32;
        let _ = q.try_recv();
        let _ = (q.len(), q.is_full());
    }
    // Each helper prints its counts when done (read before reaping: bounded).
    let scribbled: u64 = read_line(&mut w).trim().strip_prefix("scribbled ").and_then(|n| n.parse().ok()).unwrap_or(0);
    let (s_line, r_line) = (read_line(&mut s), read_line(&mut r));
    assert_eq!(wait_code(&mut w, Duration::from_secs(20)), 0);
    assert_eq!(wait_code(&mut s, Duration::from_secs(20)), 0, "sender crashed on a scribbled segment");
    assert_eq!(wait_code(&mut r, Duration::from_secs(20)), 0, "receiver crashed on a scribbled segment");
    assert!(scribbled > 0, "the scribbler wrote nothing");
    assert!(s_line.starts_with("ok=") && r_line.starts_with("ok="), "survivors report: {s_line:?} {r_line:?}");
    // "ok=N err=M" from a survivor.
    let counts = |line: &str| -> (u64, u64) {
        let field =
            |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|n| n.parse().ok()).unwrap_or(0);
        (field("ok="), field("err="))
    };
    let ((s_ok, s_err), (r_ok, r_err)) = (counts(&s_line), counts(&r_line));
    let seen =
        format!("scribbled {scribbled}; parent ok={ok} corrupt={corrupt}; sender {s_line:?}; receiver {r_line:?}");
    // The scribbles reached the queue's state: the parent was told `Corrupt`,
    // and the survivors kept running and saw failures, not crashes.
    assert!(corrupt > 0, "the parent never saw Corrupt: {seen}");
    assert!(s_ok > 0 && r_ok > 0, "the survivors never worked: {seen}");
    assert!(s_err > 0 && r_err > 0, "the survivors never saw an error: {seen}");
}

#[test]
fn idle_receiver_does_not_burn_a_core() {
    let q = Queue::<u64>::anonymous(16).unwrap();
    let cpu = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let (c0, t0) = (cpu(), Instant::now());
    assert_eq!(q.recv_timeout(Duration::from_secs(2)), Err(RecvTimeoutError::Timeout));
    let (used, wall) = (cpu() - c0, t0.elapsed());
    assert!(wall >= Duration::from_secs(2));
    let pct = used.as_secs_f64() / wall.as_secs_f64() * 100.0;
    eprintln!("idle receiver: {pct:.3}% of a core");
    assert!(pct < 25.0, "an idle receiver burned {pct:.1}% of a core");
}
