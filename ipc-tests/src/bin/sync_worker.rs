//! Plays one role in the cross-process synchronization tests
//! (`ipc-tests/tests/sync_procs.rs`). Objects arrive as handle strings
//! (`name:/...` or `fd:N`). Exit codes: 0 success, 2 bad usage or open
//! failure, others as documented per role.

use std::process::exit;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shmproc::{
    Barrier, BarrierError, Condition, Event, Handle, Mutex, RawArray, ReentrantMutex, Semaphore, ShmObject, Value,
};

fn open<T: ShmObject>(arg: &str) -> T {
    let h: Handle = arg.parse().unwrap_or_else(|e| {
        eprintln!("bad handle {arg}: {e}");
        exit(2)
    });
    T::open_handle(&h).unwrap_or_else(|e| {
        eprintln!("open {arg}: {e}");
        exit(2)
    })
}

fn num(arg: &str) -> u64 {
    arg.parse().unwrap_or_else(|_| exit(2))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| exit(2));
    match a(0) {
        // incr <mutex> <n> <start-event>: once the event is set, n locked,
        // deliberately non-atomic read-modify-writes with a gap in between.
        "incr" => {
            let m: Mutex<u64> = open(a(1));
            let start: Event = open(a(3));
            if !start.wait_timeout(Duration::from_secs(60)) {
                exit(4);
            }
            for _ in 0..num(a(2)) {
                let mut g = m.lock().unwrap_or_else(|e| {
                    eprintln!("lock: {e}");
                    exit(3)
                });
                let v = std::hint::black_box(*g);
                for _ in 0..20 {
                    std::hint::spin_loop();
                }
                *g = std::hint::black_box(v) + 1;
            }
        }
        // hold-mutex <mutex> <ready-event> sleep|abort: take the lock, scribble,
        // signal, then sleep (to be killed) or abort while holding it.
        "hold-mutex" => {
            let m: Mutex<u64> = open(a(1));
            let ready: Event = open(a(2));
            let mut g = m.lock().unwrap_or_else(|_| exit(3));
            *g = 0xDEAD;
            std::mem::forget(g);
            hold(&ready, a(3));
        }
        // hold-value <value> <ready-event> sleep|abort: the same for Value's lock.
        "hold-value" => {
            let v: Value<u64> = open(a(1));
            let ready: Event = open(a(2));
            let mut g = v.lock().unwrap_or_else(|_| exit(3));
            *g = 0xDEAD;
            std::mem::forget(g);
            hold(&ready, a(3));
        }
        // hold-rlock <reentrant-mutex> <ready-event> sleep|abort: take it twice, then hold.
        "hold-rlock" => {
            let r: ReentrantMutex = open(a(1));
            let ready: Event = open(a(2));
            let g1 = r.lock().unwrap_or_else(|_| exit(3));
            let g2 = r.lock().unwrap_or_else(|_| exit(3));
            if r.depth() != 2 {
                exit(4);
            }
            std::mem::forget((g1, g2));
            hold(&ready, a(3));
        }
        // sem <semaphore> <stats: RawArray<u64> [inside, max_inside, total]> <iters> <start-event>
        "sem" => {
            let s: Semaphore = open(a(1));
            let stats: RawArray<u64> = open(a(2));
            let st = stats.atomics();
            let start: Event = open(a(4));
            if !start.wait_timeout(Duration::from_secs(60)) {
                exit(5);
            }
            for _ in 0..num(a(3)) {
                if s.acquire_timeout(Duration::from_secs(20)).is_err() {
                    exit(3);
                }
                let inside = st[0].fetch_add(1, Ordering::SeqCst) + 1;
                st[1].fetch_max(inside, Ordering::SeqCst);
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
                std::thread::yield_now();
                st[0].fetch_sub(1, Ordering::SeqCst);
                st[2].fetch_add(1, Ordering::SeqCst);
                s.release().unwrap_or_else(|_| exit(4));
            }
        }
        // event-relay <wait-event> <set-event> <timeout_ms>: wait for one, set the other.
        // Exit 1 if the wait timed out.
        "event-relay" => {
            let w: Event = open(a(1));
            let s: Event = open(a(2));
            if !w.wait_timeout(Duration::from_millis(num(a(3)))) {
                exit(1);
            }
            s.set();
        }
        // cond-consumer <mutex: [u64; 20]> <condition> <count>: pop `count` items
        // from the ring in the mutex ([head, tail, sum, _, 16 slots]) and add them to sum.
        "cond-consumer" => {
            let m: Mutex<[u64; 20]> = open(a(1));
            let cv: Condition = open(a(2));
            let mut sum = 0;
            for _ in 0..num(a(3)) {
                let g = m.lock().unwrap_or_else(|_| exit(3));
                let (mut g, timed_out) =
                    cv.wait_timeout_while(g, Duration::from_secs(20), |d| d[0] == d[1]).unwrap_or_else(|_| exit(3));
                if timed_out {
                    exit(4);
                }
                let head = g[0];
                sum += g[4 + (head % 16) as usize];
                g[0] = head + 1;
                drop(g);
                cv.notify_all();
            }
            m.lock().unwrap_or_else(|_| exit(3))[2] += sum;
        }
        // barrier <barrier> <stats: RawArray<u64> [arrivals, leaders]> <generations>
        // Exit 4 if it passed before everyone arrived, 5 if someone ran two generations ahead.
        "barrier" => {
            let b: Barrier = open(a(1));
            let stats: RawArray<u64> = open(a(2));
            let st = stats.atomics();
            let parties = u64::from(b.parties());
            for g in 0..num(a(3)) {
                st[0].fetch_add(1, Ordering::SeqCst);
                let r = b.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|e| {
                    eprintln!("barrier generation {g}: {e}");
                    exit(3)
                });
                let arrivals = st[0].load(Ordering::SeqCst);
                if arrivals < (g + 1) * parties {
                    exit(4);
                }
                if arrivals > (g + 2) * parties {
                    exit(5);
                }
                if r.is_leader() {
                    st[1].fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        // barrier-n <barrier> <n> <timeout_ms> [sleep|panic|exit]: pass n
        // generations; exit 20 if the barrier broke, 21 on own timeout. Then,
        // with `sleep`: sleep (to be killed); `panic`: panic (unwinding drops
        // the handle while panicking); `exit`: exit(0) without dropping it;
        // none: return, dropping it.
        "barrier-n" => {
            let b: Barrier = open(a(1));
            for _ in 0..num(a(2)) {
                match b.wait_timeout(Duration::from_millis(num(a(3)))) {
                    Ok(_) => {}
                    Err(BarrierError::Broken) => exit(20),
                    Err(_) => exit(21),
                }
            }
            match args.get(4).map(String::as_str) {
                Some("sleep") => std::thread::sleep(Duration::from_secs(60)),
                Some("panic") => panic!("a party panics between two waits"),
                Some("exit") => exit(0),
                _ => {}
            }
        }
        other => {
            eprintln!("unknown role {other}");
            exit(2)
        }
    }
}

fn hold(ready: &Event, mode: &str) -> ! {
    ready.set();
    match mode {
        "abort" => std::process::abort(),
        _ => {
            std::thread::sleep(Duration::from_secs(60));
            exit(9)
        }
    }
}
