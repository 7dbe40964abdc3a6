//! Plays one role in the multi-process queue tests (see ipc-tests/tests/queue_ipc.rs).
//!
//! Exit codes: 0 done, 2 usage, 3 timed out, 4 disconnected, 5 torn/invalid
//! message, 6 safety deadline, 7 open failed, 8 corrupt.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipc_tests::queue_common::Msg;
use shmproc::{Queue, RawArray, RecvTimeoutError, Role, SendTimeoutError, TryRecvError};

const SAFETY: Duration = Duration::from_secs(60);

fn open(name: &str, role: Role) -> Queue<Msg> {
    match Queue::<Msg>::builder().name(name).role(role).open() {
        Ok(q) => q,
        Err(e) => {
            eprintln!("open {name}: {e}");
            std::process::exit(7)
        }
    }
}

fn control(name: &str) -> Option<RawArray<u64>> {
    (name != "-").then(|| RawArray::<u64>::builder().name(name).open().expect("open control array"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| std::process::exit(2));
    let start = Instant::now();
    match arg(1) {
        // produce <queue> <id> <count (0 = until stopped)> <control|->
        "produce" => {
            let q = open(arg(2), Role::Sender);
            let id: u32 = arg(3).parse().unwrap();
            let count: u64 = arg(4).parse().unwrap();
            let ctl = control(arg(5));
            let mut seq = 0u64;
            while count == 0 || seq < count {
                if let Some(c) = &ctl {
                    if c.atomics()[0].load(Ordering::SeqCst) != 0 {
                        break;
                    }
                }
                match q.send_timeout(Msg::new(id, seq), Duration::from_secs(10)) {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(_)) => std::process::exit(3),
                    Err(SendTimeoutError::Disconnected(_)) => std::process::exit(4),
                    Err(SendTimeoutError::Corrupt(_)) => std::process::exit(8),
                }
                seq += 1;
                if let Some(c) = &ctl {
                    c.atomics()[2 + id as usize].store(seq, Ordering::SeqCst);
                }
                if start.elapsed() > SAFETY {
                    std::process::exit(6);
                }
            }
        }
        // consume <queue> <out file> <control|->
        "consume" => {
            let q = open(arg(2), Role::Receiver);
            let mut out = std::fs::OpenOptions::new().create(true).append(true).open(arg(3)).unwrap();
            let ctl = control(arg(4));
            let record = |out: &mut std::fs::File, m: &Msg| {
                if !m.valid() {
                    eprintln!("torn or invalid message: {m:?}");
                    std::process::exit(5);
                }
                let mut b = [0u8; 12];
                b[..4].copy_from_slice(&m.producer.to_le_bytes());
                b[4..].copy_from_slice(&m.seq.to_le_bytes());
                out.write_all(&b).unwrap();
            };
            loop {
                match q.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => record(&mut out, &m),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Corrupt) => std::process::exit(8),
                    Err(RecvTimeoutError::Timeout) => {
                        if let Some(c) = &ctl {
                            if c.atomics()[1].load(Ordering::SeqCst) != 0 {
                                loop {
                                    match q.try_recv() {
                                        Ok(m) => record(&mut out, &m),
                                        Err(TryRecvError::Corrupt) => std::process::exit(8),
                                        Err(_) => break,
                                    }
                                }
                                break;
                            }
                        }
                    }
                }
                if start.elapsed() > SAFETY {
                    std::process::exit(6);
                }
            }
        }
        // hang-sender <queue> <n>: sends n messages, then waits to be killed.
        "hang-sender" => {
            let q = open(arg(2), Role::Sender);
            for i in 0..arg(3).parse::<u64>().unwrap() {
                q.send_timeout(Msg::new(1, i), Duration::from_secs(10)).unwrap();
            }
            println!("sent");
            std::thread::sleep(SAFETY);
            std::process::exit(6);
        }
        // hang-receiver <queue>: registers as a receiver, then waits to be killed.
        "hang-receiver" => {
            let _q = open(arg(2), Role::Receiver);
            println!("ready");
            std::thread::sleep(SAFETY);
            std::process::exit(6);
        }
        // scribble <queue> <millis> <seed>: random bytes over the live segment (after its header).
        "scribble" => scribble(arg(2), arg(3).parse().unwrap(), arg(4).parse().unwrap()),
        // survive <queue> <millis> <send|recv>: keeps operating on a possibly scribbled queue.
        "survive" => {
            let role = if arg(4) == "send" { Role::Sender } else { Role::Receiver };
            let q = open(arg(2), role);
            let dur = Duration::from_millis(arg(3).parse().unwrap());
            let (mut ok, mut err) = (0u64, 0u64);
            while start.elapsed() < dur {
                let r = if role == Role::Sender {
                    q.send_timeout(Msg::new(9, ok), Duration::from_millis(20)).map_err(|_| ())
                } else {
                    q.recv_timeout(Duration::from_millis(20)).map(|_| ()).map_err(|_| ())
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(()) => err += 1,
                }
                let _ = (q.len(), q.is_full(), q.is_empty());
            }
            println!("ok={ok} err={err}");
        }
        _ => std::process::exit(2),
    }
}

fn scribble(name: &str, millis: u64, seed: u64) {
    use std::os::fd::AsRawFd;
    let path = format!("/dev/shm/{name}");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: mapping a file we opened read-write, shared, for its whole length.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    let base = p as *mut u8;
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let end = Instant::now() + Duration::from_millis(millis);
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            let off = 128 + (rnd() as usize % (len - 128 - 8));
            let v = rnd();
            // SAFETY: off + 8 <= len, inside our mapping. Racing with the queue's
            // users is the point of this test (they must survive it).
            unsafe {
                match v % 4 {
                    0 => std::ptr::write_volatile(base.add(off), v as u8),
                    1 => std::ptr::write_unaligned(base.add(off) as *mut u64, v),
                    2 => std::ptr::write_unaligned(base.add(off & !7) as *mut u64, v >> 8),
                    _ => std::ptr::write_unaligned(base.add(off & !7) as *mut u64, v >> 40),
                }
            }
            n += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    println!("scribbled {n}");
}
