//! `shmproc::Pool` with real worker processes and real `kill -9`:
//! `harness = false`, so that `main` calls `shmproc::init()` first (Spawn and
//! ForkServer workers re-execute this binary). A watchdog aborts the run if
//! anything hangs. Sizes scale with `SHMPROC_POOL_TEST_SCALE` (default 1:
//! the sizes where they run in seconds, smaller where they would not).
//!
//! Run one check: `cargo test -p ipc-tests --test pool -- <name>`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmproc::pool::{Callbacks, TaskError};
use shmproc::process::{ExitStatus, StartMethod};
use shmproc::{MapError, Pool};

fn scale() -> usize {
    std::env::var("SHMPROC_POOL_TEST_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn slow_square(x: u64) -> u64 {
    // Long enough that a kill lands inside tasks, short enough to stay quick.
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(3) {
        std::hint::spin_loop();
    }
    x.wrapping_mul(x)
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn panics_on_7(x: u32) -> u32 {
    if x == 7 {
        panic!("seven is not allowed");
    }
    x + 1
}

fn aborts_on_3(x: u32) -> u32 {
    if x == 3 {
        std::process::abort();
    }
    x * 2
}

fn my_pid(_: u32) -> u32 {
    std::process::id()
}

/// Forks (libc's `fork`, so the fork layer sees it) and returns, in both
/// processes, the pid of the one that answers.
fn forks_and_returns_my_pid(_: u32) -> u32 {
    // SAFETY: a worker is single-threaded; the child only returns into the
    // worker's code, which ends it before it answers (the point of the check).
    let _ = unsafe { libc::fork() };
    std::process::id()
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

static INIT_VALUE: AtomicU32 = AtomicU32::new(0);

fn init_set(v: u32) {
    INIT_VALUE.store(v, Ordering::Relaxed);
}

fn read_init(_: u32) -> u32 {
    INIT_VALUE.load(Ordering::Relaxed)
}

fn init_fails(v: u32) {
    panic!("initializer refuses {v}");
}

/// An initializer that aborts once the file `marker` exists (the pool
/// starts; its replacements then die before they are ready).
fn init_aborts_if(marker: String) {
    if std::path::Path::new(&marker).exists() {
        std::process::abort();
    }
}

/// A value whose encoding always fails.
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be encoded"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|_| Unencodable)
    }
}

fn bad_result(x: u32) -> Result<u32, Unencodable> {
    if x == 1 {
        Err(Unencodable)
    } else {
        Ok(x)
    }
}

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the pool lists `n` live workers, all different from `gone`.
fn wait_full(pool: &Pool, gone: &HashSet<u32>) {
    let t = Instant::now();
    loop {
        let pids = pool.worker_pids();
        if pids.len() == pool.processes() && pids.iter().all(|p| !gone.contains(p) && alive(*p)) {
            return;
        }
        assert!(t.elapsed() < WAIT, "the pool did not get back to {} workers: {pids:?}", pool.processes());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn alive(pid: u32) -> bool {
    // Zombies count as dead: /proc/<pid>/stat's state field.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) with a pid of a worker of ours; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

fn assert_gone(pids: &[u32]) {
    let t = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(t.elapsed() < WAIT, "workers left running: {pids:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------

fn neg_half(x: i16) -> f32 {
    -f32::from(x) / 2.0
}

fn is_upper(c: char) -> bool {
    c.is_uppercase()
}

fn not(b: bool) -> bool {
    !b
}

fn even_or_none(x: u8) -> Option<u8> {
    x.is_multiple_of(2).then_some(x)
}

fn widen(x: u32) -> i64 {
    -i64::from(x)
}

fn len_of(s: String) -> usize {
    s.len()
}

/// A newtype of `u64`: not a bare primitive, so it takes the postcard lane.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Meters(u64);

fn double_meters(m: Meters) -> Meters {
    Meters(m.0 * 2)
}

/// Every primitive kind both ways (the plain lane), beside arguments and
/// results that are not one bare primitive (postcard), in the same pool.
fn primitives_and_others_round_trip(m: StartMethod) {
    let pool = Pool::builder().processes(2).start_method(m).create().unwrap();
    let xs: Vec<i16> = vec![i16::MIN, -3, 0, 1, i16::MAX];
    assert_eq!(pool.map(neg_half, xs.clone()).unwrap(), xs.iter().map(|&x| neg_half(x)).collect::<Vec<_>>());
    let cs: Vec<char> = "aZé\u{10FFFF}Ω".chars().collect();
    assert_eq!(pool.map(is_upper, cs.clone()).unwrap(), cs.iter().map(|c| c.is_uppercase()).collect::<Vec<_>>());
    assert_eq!(pool.map(not, [true, false]).unwrap(), vec![false, true]);
    assert_eq!(pool.map(even_or_none, 0..6u8).unwrap(), vec![Some(0), None, Some(2), None, Some(4), None]);
    assert_eq!(pool.map(widen, [0, u32::MAX]).unwrap(), vec![0, -i64::from(u32::MAX)]);
    assert_eq!(pool.map(len_of, ["", "abc"].map(String::from)).unwrap(), vec![0, 3]);
    assert_eq!(
        pool.map(double_meters, (0..100).map(Meters)).unwrap(),
        (0..100).map(|i| Meters(2 * i)).collect::<Vec<_>>()
    );
    assert_eq!(pool.map(|x: f64| x.sqrt(), [4.0, 2.25]).unwrap(), vec![2.0, 1.5]);
    assert_eq!(
        pool.map(|x: i8| i64::from(x) * 1_000_000_000_000, [i8::MIN, 5]).unwrap(),
        vec![-128_000_000_000_000, 5_000_000_000_000]
    );
}

fn map_equals_sequential(m: StartMethod) {
    let n = 100_000 * scale() as u64;
    let pool = Pool::builder().processes(2).start_method(m).create().unwrap();
    assert_eq!(pool.start_method(), m);
    let want: Vec<u64> = (0..n).map(square).collect();
    assert_eq!(pool.map(square, 0..n).unwrap(), want);
    // chunksize 1 and a closure that coerces to fn
    let got = pool.map_chunksize(|x: u64| x + 1, 0..2_000u64, 1).unwrap();
    assert!(got.iter().copied().eq(1..2_001u64));
    assert_eq!(
        pool.starmap(add, (0..100u64).map(|i| (i, 2 * i))).unwrap(),
        (0..100).map(|i| 3 * i).collect::<Vec<_>>()
    );
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    let pids = pool.worker_pids();
    pool.close();
    assert_eq!(pool.apply(square, 1), Err(TaskError::Closed));
    pool.join();
    assert!(pool.worker_pids().is_empty());
    assert_gone(&pids);
}

fn imap_endless_bounded_memory(_: StartMethod) {
    let total = 1_000_000 * scale();
    let pool = Pool::builder().processes(2).start_method(StartMethod::Fork).create().unwrap();
    let mut rss_100k = 0;
    let mut n = 0usize;
    // Python's default chunk size 1 over a stretch, then chunks of 16 (so
    // that a million items take a second, not ten, in a debug build).
    for (i, r) in pool.imap(square, 0u64..).take(20_000).enumerate() {
        assert_eq!(r.unwrap(), square(i as u64));
    }
    for (i, r) in pool.imap_chunksize(square, 0u64.., 16).enumerate() {
        assert_eq!(r.unwrap(), square(i as u64));
        n += 1;
        if n == total / 10 {
            rss_100k = rss_kib();
        }
        if n == total {
            break;
        }
    }
    let rss_1m = rss_kib();
    eprintln!("    imap: parent RSS {rss_100k} KiB at {} items, {rss_1m} KiB at {total}", total / 10);
    if std::env::var_os("SHMPROC_UNDER_ASAN").is_some() {
        // ci/asan.sh sets it: AddressSanitizer's quarantine keeps freed memory
        // resident (up to 256 MiB), so RSS measures the quarantine, not the pool.
        eprintln!("    imap: RSS bound not checked under AddressSanitizer (its quarantine holds freed memory)");
    } else {
        assert!(rss_1m < rss_100k + 4 * 1024, "RSS grew from {rss_100k} to {rss_1m} KiB");
    }
    // The pool is usable after an abandoned-early imap, too.
    let mut it = pool.imap(square, 0u64..);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
}

fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

fn imap_unordered_each_once(_: StartMethod) {
    let n = 20_000u64;
    let pool = Pool::new(2).unwrap();
    let mut seen = HashSet::new();
    for r in pool.imap_unordered(square, 0..n) {
        assert!(seen.insert(r.unwrap()), "a result came twice");
    }
    assert_eq!(seen, (0..n).map(square).collect::<HashSet<_>>());
    // With chunks of 7 (the last one short), and a three-argument function
    // spread from tuples (starmap's other arities).
    let mut seen = HashSet::new();
    for r in pool.imap_unordered_chunksize(square, 0..n, 7) {
        assert!(seen.insert(r.unwrap()), "a result came twice");
    }
    assert_eq!(seen, (0..n).map(square).collect::<HashSet<_>>());
    let three = pool.map(|(a, b, c): (u64, u64, u64)| a * b + c, (0..100u64).map(|i| (i, 2, 1))).unwrap();
    assert_eq!(three, (0..100u64).map(|i| i * 2 + 1).collect::<Vec<_>>());
}

fn apply_async_callbacks_and_get_timeout(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g1, g2) = (got.clone(), got.clone());
    let ok = pool.apply_async_with(
        square,
        5,
        Callbacks::new().on_result(move |r: &u64| g1.lock().unwrap().push(format!("ok {r}"))),
    );
    let bad = pool.apply_async_with(
        panics_on_7,
        7,
        Callbacks::new().on_error(move |e: &TaskError| g2.lock().unwrap().push(format!("err {e}"))),
    );
    assert!(ok.wait_timeout(WAIT) && bad.wait_timeout(WAIT));
    assert_eq!(ok.successful(), Some(true));
    assert_eq!(bad.successful(), Some(false));
    assert_eq!(ok.get().unwrap(), 25);
    assert!(matches!(bad.get(), Err(TaskError::Panicked { .. })));
    let mut msgs = got.lock().unwrap().clone();
    msgs.sort();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[1], "ok 25");
    assert!(msgs[0].starts_with("err ") && msgs[0].contains("seven is not allowed"), "{msgs:?}");

    let long = pool.apply_async(sleep_ms, 2_000);
    assert!(!long.ready());
    assert_eq!(long.successful(), None);
    let long = long.get_timeout(Duration::from_millis(50)).unwrap_err();
    // The pool stays usable meanwhile (the other worker answers).
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    assert_eq!(long.get_timeout(WAIT).ok().unwrap().unwrap(), 2_000);
    let m = pool.map_async(square, 0..10u64);
    m.wait();
    assert_eq!(m.get().unwrap()[3], 9);
}

/// A result whose decoding panics in the parent (a user `Deserialize`).
#[derive(Debug)]
struct Bomb;

impl serde::Serialize for Bomb {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for Bomb {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("Bomb does not decode")
    }
}

fn bomb(_: u32) -> Bomb {
    Bomb
}

/// A callback that panics, or a result decoder that panics in the pool's
/// thread, must neither leave its `get` waiting nor stop the pool.
fn a_panicking_callback_neither_hangs_its_result_nor_the_pool(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let r = pool.apply_async_with(
        square,
        3,
        Callbacks::new().on_result(|_: &u64| panic!("a callback that panics (expected by the test)")),
    );
    let got = r.get_timeout(WAIT).expect("get returned after the callback panicked");
    assert_eq!(got.unwrap(), 9);
    assert_eq!(pool.apply(square, 4).unwrap(), 16, "the pool still works");

    let b = pool.apply_async_with(bomb, 1, Callbacks::new().on_result(|_: &Bomb| unreachable!()));
    assert!(b.wait_timeout(WAIT), "finished although its decoder panicked");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.get())).unwrap_err();
    let msg = caught.downcast_ref::<&str>().copied().unwrap_or_default();
    assert_eq!(msg, "Bomb does not decode", "get re-raises the decoder's panic");
    assert_eq!(pool.map(square, 0..20u64).unwrap()[19], 361, "the pool still works");
}

fn chaos(_: StartMethod) {
    let rounds = 50 * scale();
    let n = 20_000u64;
    let pool = Arc::new(Pool::builder().processes(2).start_method(StartMethod::Fork).create().unwrap());
    let (mut ok, mut died, mut kills) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killed = Arc::new(Mutex::new(HashSet::new()));
        let killer = {
            let (stop, killed, pool) = (stop.clone(), killed.clone(), pool.clone());
            // Kills a random live worker of this pool every few milliseconds
            // (replacements included), at most 4 per round.
            std::thread::spawn(move || {
                let mut k = 0u64;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
                while !stop.load(Ordering::Relaxed) && k < 4 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    std::thread::sleep(Duration::from_millis(1 + rng % 4));
                    let pids = pool.worker_pids();
                    if pids.is_empty() {
                        continue;
                    }
                    let pid = pids[(rng % pids.len() as u64) as usize];
                    if killed.lock().unwrap().insert(pid) {
                        kill9(pid);
                        k += 1;
                    }
                }
                k
            })
        };
        let results = pool.map_results(slow_square, 0..n);
        stop.store(true, Ordering::Relaxed);
        kills += killer.join().unwrap();
        assert_eq!(results.len(), n as usize);
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(v) => {
                    assert_eq!(v, square(i as u64), "item {i} is wrong");
                    ok += 1;
                }
                Err(TaskError::WorkerDied { status, .. }) => {
                    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
                    died += 1;
                }
                Err(e) => panic!("item {i}: {e}"),
            }
        }
        wait_full(&pool, &killed.lock().unwrap());
    }
    assert_eq!(ok + died, rounds as u64 * n);
    // A kill fails at most the one item its worker had started: what it had
    // finished was answered or staged, what it had not started runs elsewhere.
    assert!(died <= kills, "{died} items failed for {kills} kills");
    // The common chaos line (ci/chaos.sh): every item was answered exactly once
    // (map_results has one slot per item), with its correct value or WorkerDied
    // (the kills' expected victims); a wrong value or another error panics above.
    eprintln!(
        "chaos pool: {rounds} rounds, {} items, {kills} kills, {ok} ok, {died} WorkerDied, lost 0, duplicated 0, \
         wrong 0, hangs 0",
        rounds as u64 * n
    );

    // With retries every item succeeds.
    let pool = Pool::builder().processes(2).start_method(StartMethod::Fork).retries(3).create().unwrap();
    for _ in 0..(10 * scale()) {
        let pids = pool.worker_pids();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            kill9(pids[0]);
        });
        let got = pool.map(slow_square, 0..n).unwrap();
        killer.join().unwrap();
        assert!(got.iter().copied().eq((0..n).map(square)));
        wait_full(&pool, &HashSet::new());
    }
}

fn panics_and_aborts(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let r = pool.map_results(panics_on_7, 0..10u32);
    for (i, r) in r.iter().enumerate() {
        if i == 7 {
            match r {
                Err(TaskError::Panicked { message, location }) => {
                    assert_eq!(message, "seven is not allowed");
                    assert!(location.as_deref().unwrap_or("").contains("pool.rs"), "{location:?}");
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert_eq!(r.as_ref().unwrap(), &(i as u32 + 1));
        }
    }
    match pool.map(panics_on_7, 0..10u32) {
        Err(MapError { index: 7, error: TaskError::Panicked { .. } }) => {}
        other => panic!("{other:?}"),
    }
    // abort() kills the worker: that item fails, the others do not.
    let r = pool.map_chunksize(aborts_on_3, 0..8u32, 1);
    match r {
        Err(MapError { index: 3, error: TaskError::WorkerDied { status, .. } }) => {
            assert_eq!(status, ExitStatus::Signaled(libc::SIGABRT))
        }
        other => panic!("{other:?}"),
    }
    let each = pool.map_results(aborts_on_3, 0..8u32);
    assert_eq!(each.iter().filter(|r| r.is_err()).count(), 1);
    // One chunk of 8: the worker dies inside it. Items 0..3 had finished
    // (their results come from its staging area), item 3 fails, items 4..8
    // never started and run on another worker.
    let each = pool.map_results_chunksize(aborts_on_3, 0..8u32, 8);
    for (i, r) in each.iter().enumerate() {
        match (i, r) {
            (3, Err(TaskError::WorkerDied { status, .. })) => assert_eq!(*status, ExitStatus::Signaled(libc::SIGABRT)),
            (3, other) => panic!("item 3: {other:?}"),
            (i, r) => assert_eq!(r.as_ref().ok(), Some(&(i as u32 * 2)), "item {i}"),
        }
    }
    wait_full(&pool, &HashSet::new());
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

fn task_timeout(_: StartMethod) {
    let pool = Pool::builder().processes(2).task_timeout(Duration::from_millis(200)).create().unwrap();
    let before = pool.worker_pids();
    let r = pool.map_results(sleep_ms, [10u64, 5_000, 20]);
    assert_eq!(r[0], Ok(10));
    assert!(matches!(r[1], Err(TaskError::TimedOut { .. })), "{:?}", r[1]);
    assert_eq!(r[2], Ok(20));
    wait_full(&pool, &HashSet::new());
    assert_ne!(pool.worker_pids(), before);
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
}

fn maxtasksperchild_1(_: StartMethod) {
    let pool = Pool::builder().processes(2).maxtasksperchild(1).create().unwrap();
    let pids = pool.map_chunksize(my_pid, 0..200u32, 1).unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "each task ran in its own worker");
    wait_full(&pool, &HashSet::new());
}

fn terminate_during_work(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let h = pool.map_async(sleep_ms, vec![1_000u64; 8]);
    std::thread::sleep(Duration::from_millis(50));
    pool.terminate();
    match h.get_timeout(WAIT) {
        Ok(Err(MapError { error: TaskError::Terminated, .. })) => {}
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("terminate left the map hanging"),
    }
    assert_gone(&pids);
    assert_eq!(pool.apply(square, 2), Err(TaskError::Closed));
}

fn drop_with_pending_work(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let pids = pool.worker_pids();
    let h = pool.map_async(sleep_ms, vec![1_000u64; 8]);
    let t = Instant::now();
    drop(pool);
    assert!(t.elapsed() < WAIT);
    assert!(matches!(h.get(), Err(MapError { error: TaskError::Terminated, .. })));
    assert_gone(&pids);
}

/// Regression: a forked child holding a copy of its parent's pool (here an
/// `Arc` clone moved into a closure) waited forever in `apply` (its copy has
/// no thread to dispatch) and in the drop (for a thread that never ends).
/// The copy is closed in the child; the parent's pool goes on.
fn a_forked_child_s_copy_is_closed_and_drops_at_once(_: StartMethod) {
    let pool = Arc::new(Pool::new(2).unwrap());
    let copy = pool.clone();
    let mut child = shmproc::Process::closure(move || {
        let r = copy.apply(square, 3);
        copy.terminate();
        drop(copy);
        r == Err(TaskError::Closed)
    })
    .start()
    .unwrap();
    assert!(join_or_kill(&mut child, "the child with a copy of the pool"), "the child's copy of the pool ran a task");
    assert_eq!(pool.map(square, 0..100u64).unwrap(), (0..100u64).map(square).collect::<Vec<_>>());
    let pids = pool.worker_pids();
    drop(pool);
    assert_gone(&pids);
}

/// Regression: a forked child given an `AsyncResult` of its parent's call
/// waited forever in `get` (nothing delivers to its copy). It is closed there.
fn a_forked_child_s_copy_of_an_async_result_is_closed(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let one = pool.apply_async(sleep_ms, 300);
    let many = pool.map_async(sleep_ms, vec![300u64; 4]);
    let mut child = shmproc::Process::closure(move || {
        let quick = one.get_timeout(WAIT).is_ok_and(|r| r == Err(TaskError::Closed));
        quick && matches!(many.get(), Err(MapError { error: TaskError::Closed, .. }))
    })
    .start()
    .unwrap();
    assert!(join_or_kill(&mut child, "the child with a copy of an AsyncResult"), "the copy was not closed");
    assert_eq!(pool.apply(square, 3), Ok(9), "the parent's pool goes on");
}

/// Regression (review of the thread reuse): a pool made in a forked child
/// while its parent had a pool thread waiting for the next pool handed its
/// dispatcher to that (inherited, not running) thread and waited forever.
fn a_pool_made_in_a_forked_child_works(_: StartMethod) {
    drop(Pool::new(2).unwrap()); // leaves this process a waiting pool thread
    let mut child = shmproc::Process::closure(|| {
        let pool = Pool::new(2).unwrap();
        let out = pool.map(square, 0..100u64).unwrap();
        drop(pool);
        out == (0..100u64).map(square).collect::<Vec<_>>()
    })
    .start()
    .unwrap();
    assert!(join_or_kill(&mut child, "the child that made a pool"), "the child's pool gave wrong results");
}

/// The child's result; kills it and fails the check if it does not end in time.
fn join_or_kill(child: &mut shmproc::Process<bool>, who: &str) -> bool {
    match child.join_timeout(WAIT) {
        Ok(r) => r,
        Err(e) => {
            let _ = child.kill();
            panic!("{who} did not end: {e}");
        }
    }
}

/// A task that forks and returns in the child made a copy of the worker
/// that answered the rest of its run (and staged results in the worker's
/// slot) as if it were the worker. The copy now ends before it answers: every
/// answer comes from a worker.
fn a_task_that_forks_and_returns_does_not_answer_twice(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    for i in 0..40 {
        let workers = pool.worker_pids();
        let pid = pool.apply(forks_and_returns_my_pid, i).unwrap();
        assert!(workers.contains(&pid), "item {i} was answered by {pid}, not by a worker ({workers:?})");
    }
}

fn initializer(_: StartMethod) {
    let pool = Pool::builder().processes(2).initializer(init_set, 77).create().unwrap();
    assert_eq!(pool.map(read_init, 0..4u32).unwrap(), vec![77; 4]);
    drop(pool);
    let t = Instant::now();
    match Pool::builder().processes(2).initializer(init_fails, 5).create() {
        Err(shmproc::PoolError::Initializer { reason }) => {
            assert!(reason.contains("initializer refuses 5"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < WAIT);
}

fn replacements_that_die_early_are_not_replaced_forever(_: StartMethod) {
    let marker = format!("/tmp/shmproc-test-pool-marker-{}", std::process::id());
    let _ = std::fs::remove_file(&marker);
    let pool = Pool::builder().processes(2).initializer(init_aborts_if, marker.clone()).create().unwrap();
    assert_eq!(pool.map(square, 0..10u64).unwrap(), (0..10).map(square).collect::<Vec<_>>());
    std::fs::write(&marker, b"").unwrap();
    // From now on every new worker aborts in its initializer: after the
    // kills, the pool tries a few replacements per slot, then gives up, and
    // the tasks fail with StartFailed instead of waiting forever.
    let pids = pool.worker_pids();
    for &pid in &pids {
        kill9(pid);
    }
    let t = Instant::now();
    let r = pool.map_results(square, 0..4u64);
    assert!(t.elapsed() < WAIT);
    for r in &r {
        match r {
            Err(TaskError::StartFailed { reason }) => {
                assert!(reason.contains("died before they were ready"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    // New work fails at once too, and the pool tears down cleanly.
    assert!(matches!(pool.apply(square, 3), Err(TaskError::StartFailed { .. })));
    assert!(pool.worker_pids().is_empty());
    drop(pool);
    let _ = std::fs::remove_file(&marker);
    assert_gone(&pids);
}

fn unencodable_result(_: StartMethod) {
    let pool = Pool::new(2).unwrap();
    let r = pool.map_results(bad_result, 0..3u32);
    assert!(matches!(r[0], Ok(Ok(0))));
    assert!(matches!(&r[1], Err(TaskError::Serialize { .. })), "{:?}", r[1].as_ref().err());
    assert!(matches!(r[2], Ok(Ok(2))));
    // An argument that cannot be encoded fails its own item in the parent.
    let r = pool.map_results(|_: Unencodable| 1u8, [Unencodable]);
    assert!(matches!(r[0], Err(TaskError::Serialize { .. })));
    // An oversize argument fails alone.
    let r = pool.map_results(|v: Vec<u8>| v.len(), [vec![0u8; 10], vec![0u8; 1 << 20], vec![1u8; 3]]);
    assert_eq!(r[0], Ok(10));
    assert!(matches!(r[1], Err(TaskError::Serialize { .. })));
    assert_eq!(r[2], Ok(3));
}

fn from_many_threads(_: StartMethod) {
    let pool = Arc::new(Pool::new(2).unwrap());
    let hs: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || pool.map(square, (t * 1000)..(t * 1000 + 5000)).unwrap())
        })
        .collect();
    for (t, h) in hs.into_iter().enumerate() {
        let got = h.join().unwrap();
        assert!(got.iter().copied().eq(((t as u64 * 1000)..(t as u64 * 1000 + 5000)).map(square)));
    }
}

fn parent_sigkill_leaves_no_worker(m: StartMethod) {
    use std::io::{BufRead, BufReader};
    let arg = match m {
        StartMethod::Fork => "fork",
        StartMethod::Spawn => "spawn",
        StartMethod::ForkServer => "forkserver",
    };
    let mut parent = std::process::Command::new(env!("CARGO_BIN_EXE_pool_parent"))
        .arg(arg)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = parent.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(WAIT) {
        Ok(l) => l,
        Err(_) => {
            let _ = parent.kill();
            let _ = parent.wait();
            panic!("the parent role did not report its workers");
        }
    };
    let pids: Vec<u32> = line.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3, "{line:?}");
    assert!(pids[1..].iter().all(|&p| alive(p)));
    parent.kill().unwrap(); // SIGKILL
    parent.wait().unwrap();
    assert_gone(&pids[1..]);
    // The pool's objects are anonymous under every start method (carried as
    // process arguments): a SIGKILLed parent leaves no name in /dev/shm.
    // (Removed here before the assertion, so a failure leaves nothing either.)
    let mut left = Vec::new();
    for e in std::fs::read_dir("/dev/shm").unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("shmproc-pool-{}-", pids[0])) {
            let _ = std::fs::remove_file(e.path());
            left.push(name);
        }
    }
    assert!(left.is_empty(), "{m:?}: the killed parent left {left:?} in /dev/shm");
}

/// Capturing closures: run under Fork when made before the pool (also in a
/// replacement worker), refused (each item a `Serialize` error, nothing
/// sent) when made after it or under Spawn/ForkServer.
fn capturing_closures(m: StartMethod) {
    use shmproc::pool::Closure;
    let table: Vec<u64> = (0..1_000u64).map(|i| i * 7 + 3).collect();
    let want = table.clone();
    let lookup = Closure::new(move |i: usize| table[i]);
    let k = 5u64;
    let add_k = Closure::new(move |x: u64| x + k);
    let pool = Pool::builder().processes(2).start_method(m).create().unwrap();
    let late = Closure::new(move |x: u64| x * k);
    let refused = |e: &TaskError| matches!(e, TaskError::Serialize { .. });
    if m != StartMethod::Fork {
        match pool.map_closure(&lookup, [1usize, 2]) {
            Err(MapError { index: 0, error }) if refused(&error) => {}
            other => panic!("{m:?}: a closure must be refused, got {other:?}"),
        }
        return;
    }
    assert_eq!(pool.map_closure(&lookup, 0..1_000usize).unwrap(), want);
    assert_eq!(pool.apply_closure(&add_k, 37).unwrap(), 42);
    match pool.apply_closure(&late, 3) {
        Err(e) if refused(&e) => {}
        other => panic!("a closure made after the pool must be refused, got {other:?}"),
    }
    // A replacement worker (forked later) has the closures too.
    for pid in pool.worker_pids() {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    // The workers were dead before the map: no item was started by them, so
    // every item runs on the replacements and succeeds.
    let got = pool.map_closure_async(&add_k, 0..100u64).get_timeout(WAIT).expect("map_closure after kills hung");
    assert!(got.unwrap().iter().copied().eq(5..105u64));
    pool.close();
    pool.join();
}

/// A hostile task: finds the pool's results queue among the worker's
/// anonymous shmproc segments (`/proc/self/fd`, then the header and queue
/// layouts of SAFETY.md: a FrameQueue, MPMC, 4 slots) and moves its `head`
/// two laps ahead, so that every receive of the dispatcher finds the ring
/// corrupt. Returns how many queues it scribbled.
fn scribbles_the_results_queue(_: u32) -> u32 {
    let mut hit = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().starts_with("/memfd:shmproc") {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        // SAFETY: `stat` is plain data, valid all-zero.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor number into our `st`: at worst EBADF.
        let stat_failed = unsafe { libc::fstat(fd, &mut st) } != 0;
        if stat_failed || st.st_size < 1024 {
            continue;
        }
        let len = st.st_size as usize;
        // SAFETY: a fresh shared mapping of the whole sealed memfd; unmapped below.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if p == libc::MAP_FAILED {
            continue;
        }
        let base = p as *mut u8;
        // SAFETY: every read is within the first `len >= 1024` bytes, at the
        // header's offsets (checked before use) and 8-aligned; the head is
        // written as an atomic, as the queue writes it.
        unsafe {
            let kind = std::ptr::read_unaligned(base.add(12) as *const u32);
            let off = std::ptr::read_unaligned(base.add(32) as *const u64) as usize;
            if std::slice::from_raw_parts(base, 8) == b"SHMPROC\0"
                && kind == 33
                && off.is_multiple_of(8)
                && off + 512 <= len
            {
                let ctl = base.add(off);
                let mode = std::ptr::read_unaligned(ctl.add(4) as *const u32);
                let cap = std::ptr::read_unaligned(ctl.add(16) as *const u64);
                if std::slice::from_raw_parts(ctl, 4) == b"SHQ1" && mode == 1 && cap == 4 {
                    let head = &*(ctl.add(256) as *const std::sync::atomic::AtomicU64);
                    head.fetch_add(2 * cap, Ordering::SeqCst);
                    hit += 1;
                }
            }
            libc::munmap(p, len);
        }
    }
    hit
}

/// A worker's task scribbles the results queue: the pool must neither hang
/// nor spin for ever. Every task in it fails with `Corrupt`, the pool
/// closes (later tasks fail with `Closed`) and drops cleanly.
fn corrupt_results_queue_stops_the_pool(_: StartMethod) {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.map(square, 0..10u64).unwrap()[3], 9);
    let h = pool.map_async(scribbles_the_results_queue, vec![0u32]);
    match h.get_timeout(WAIT) {
        Ok(Err(MapError { error: TaskError::Corrupt, .. })) => {}
        Ok(other) => panic!("expected Corrupt, got {other:?}"),
        Err(_) => panic!("a corrupt results queue left the map hanging"),
    }
    match pool.map_async(square, 0..4u64).get_timeout(WAIT) {
        Ok(Err(MapError { error: TaskError::Closed, .. })) => {}
        Ok(other) => panic!("expected Closed after Corrupt, got {other:?}"),
        Err(_) => panic!("a map after Corrupt hung"),
    }
    drop(pool);
}

fn leftovers(_: StartMethod) {
    // Every pool above is gone: no pool segment of this process remains.
    let me = std::process::id();
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("shmproc-pool-{me}-")))
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
    assert!(shmproc::process::active_children().is_empty(), "{:?}", shmproc::process::active_children());
}

fn main() {
    shmproc::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(600));
        eprintln!("pool: watchdog fired, aborting");
        std::process::abort();
    });
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    type Check = fn(StartMethod);
    let all = [StartMethod::Fork, StartMethod::Spawn, StartMethod::ForkServer];
    let checks: Vec<(&str, Check, &[StartMethod])> = vec![
        ("map_equals_sequential", map_equals_sequential, &all),
        ("primitives_and_others_round_trip", primitives_and_others_round_trip, &all),
        ("imap_endless_bounded_memory", imap_endless_bounded_memory, &all[..1]),
        ("imap_unordered_each_once", imap_unordered_each_once, &all[..1]),
        ("apply_async_callbacks_and_get_timeout", apply_async_callbacks_and_get_timeout, &all[..1]),
        (
            "a_panicking_callback_neither_hangs_its_result_nor_the_pool",
            a_panicking_callback_neither_hangs_its_result_nor_the_pool,
            &all[..1],
        ),
        ("chaos", chaos, &all[..1]),
        ("panics_and_aborts", panics_and_aborts, &all[..1]),
        ("task_timeout", task_timeout, &all[..1]),
        ("maxtasksperchild_1", maxtasksperchild_1, &all[..1]),
        ("terminate_during_work", terminate_during_work, &all[..1]),
        ("drop_with_pending_work", drop_with_pending_work, &all[..1]),
        ("initializer", initializer, &all[..1]),
        ("a_pool_made_in_a_forked_child_works", a_pool_made_in_a_forked_child_works, &all[..1]),
        (
            "a_forked_child_s_copy_of_an_async_result_is_closed",
            a_forked_child_s_copy_of_an_async_result_is_closed,
            &all[..1],
        ),
        (
            "a_task_that_forks_and_returns_does_not_answer_twice",
            a_task_that_forks_and_returns_does_not_answer_twice,
            &all[..1],
        ),
        (
            "a_forked_child_s_copy_is_closed_and_drops_at_once",
            a_forked_child_s_copy_is_closed_and_drops_at_once,
            &all[..1],
        ),
        (
            "replacements_that_die_early_are_not_replaced_forever",
            replacements_that_die_early_are_not_replaced_forever,
            &all[..1],
        ),
        ("unencodable_result", unencodable_result, &all[..1]),
        ("corrupt_results_queue_stops_the_pool", corrupt_results_queue_stops_the_pool, &all[..1]),
        ("from_many_threads", from_many_threads, &all[..1]),
        ("parent_sigkill_leaves_no_worker", parent_sigkill_leaves_no_worker, &all),
        ("capturing_closures", capturing_closures, &all),
        ("leftovers", leftovers, &all[..1]),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _, ms) in &checks {
            for m in ms.iter() {
                println!("{m:?}::{name}: test");
            }
        }
        return;
    }
    let mut ran = 0;
    for (name, check, ms) in &checks {
        for m in ms.iter() {
            let full = format!("{m:?}::{name}");
            if filter.as_deref().is_some_and(|f| !full.contains(f)) {
                continue;
            }
            let t = Instant::now();
            check(*m);
            eprintln!("test {full} ... ok ({:.2?})", t.elapsed());
            ran += 1;
        }
    }
    eprintln!("pool: {ran} checks passed");
}
