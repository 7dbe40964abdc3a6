//! Issue 13 item 5: fuzzing every parser of shared bytes, on stable.
//!
//! Each target builds an object in this process (its segment is ordinary
//! memory here, laid out exactly as in shared memory: the heap twin of a
//! segment that another process would share), then runs a random program of
//! scribbles (random, zero, all-ones or small bytes at random payload offsets,
//! as a hostile peer would write) and non-blocking operations. Any panic, any
//! out-of-bounds access or any wait that does not end fails the target;
//! `Err` results are the expected answers to hostile bytes.
//!
//! Budget: `SHMPROC_FUZZ_SECS` seconds per target (default 0: no time
//! budget) and at most `SHMPROC_FUZZ_ITERS` programs (default 200);
//! `ci/fuzz.sh SECONDS` runs each target for SECONDS. Each target prints its
//! executions. The seed is `SHMPROC_FUZZ_SEED` (default: time-based, printed,
//! so a failure can be replayed).

use std::time::{Duration, Instant};

use shmproc::header::HEADER_SIZE;
use shmproc::pipe::wait;
use shmproc::{Barrier, Event, FrameQueue, Mutex, Pipe, Queue, Segment, Semaphore};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Bytes a hostile writer picks: random, zeros, all-ones, or small values.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let kind = self.below(4);
        (0..n)
            .map(|_| match kind {
                0 => self.next() as u8,
                1 => 0,
                2 => 0xff,
                _ => self.below(4) as u8,
            })
            .collect()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs `program` with fresh random streams until the budget is spent;
/// returns the number of executions.
fn fuzz(target: &str, mut program: impl FnMut(&mut Rng)) -> u64 {
    let secs = env("SHMPROC_FUZZ_SECS", 0);
    let iters = if secs > 0 { u64::MAX } else { env("SHMPROC_FUZZ_ITERS", 200) };
    let seed = env(
        "SHMPROC_FUZZ_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    );
    let start = Instant::now();
    let mut n = 0u64;
    while n < iters && (secs == 0 || start.elapsed() < Duration::from_secs(secs)) {
        let mut rng = Rng((seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        program(&mut rng);
        n += 1;
    }
    println!("fuzz {target}: {n} executions (seed {seed})");
    n
}

/// Writes hostile bytes at a random place of `seg`'s payload.
fn scribble(seg: &Segment, rng: &mut Rng) {
    let len = seg.payload_len();
    let off = rng.below(len as u64) as usize;
    let n = (1 + rng.below(16) as usize).min(len - off);
    let bytes = rng.bytes(n);
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: `off + i < payload_len`, inside the mapping `seg` keeps alive;
        // single-threaded here, and every field of these objects is an atomic
        // or plain bytes, so any value is a (possibly corrupt) state.
        unsafe { std::ptr::write_volatile(seg.payload_ptr().as_ptr().add(off + i), *b) };
    }
}

/// Writes hostile bytes over the 128-byte header of a copy, as a peer would.
#[test]
fn fuzz_segment_header() {
    let seg = Segment::builder().size(256).create().unwrap();
    let mut good = [0u8; HEADER_SIZE];
    // SAFETY: the mapping starts with the header: HEADER_SIZE readable bytes
    // before the payload (payload offset 128 for this segment).
    unsafe {
        std::ptr::copy_nonoverlapping(seg.payload_ptr().as_ptr().sub(HEADER_SIZE), good.as_mut_ptr(), HEADER_SIZE)
    };
    let real = seg.len() as u64;
    assert!(shmproc::inspect::header_summary(&good, real).is_ok());
    fuzz("segment_header", |rng| {
        let mut h = if rng.below(4) == 0 {
            let mut h = [0u8; HEADER_SIZE];
            h.copy_from_slice(&rng.bytes(HEADER_SIZE));
            h
        } else {
            good
        };
        for _ in 0..=rng.below(4) {
            let off = rng.below(HEADER_SIZE as u64) as usize;
            let n = (1 + rng.below(8) as usize).min(HEADER_SIZE - off);
            h[off..off + n].copy_from_slice(&rng.bytes(n));
        }
        let size = match rng.below(3) {
            0 => real,
            1 => rng.next(),
            _ => rng.below(1 << 20),
        };
        let _ = shmproc::inspect::header_summary(&h, size);
    });
}

/// The pipe's rings (indices, frame headers, data) and end slots / holder tables.
#[test]
fn fuzz_pipe_rings_frames_and_end_slots() {
    fuzz("pipe", |rng| {
        let (a, b) = Pipe::builder().ring_size(256).pair().unwrap();
        let seg = a.segment().clone();
        for _ in 0..rng.below(24) {
            let (x, y) = if rng.below(2) == 0 { (&a, &b) } else { (&b, &a) };
            match rng.below(6) {
                0 | 1 => scribble(&seg, rng),
                2 => {
                    // Messages that go in whole (at most 184 bytes in a
                    // 256-byte ring): a larger one streams, and its send
                    // waits for a reader whatever the timeout (this test
                    // has none running).
                    let n = rng.below(185) as usize;
                    let msg = rng.bytes(n);
                    let _ = x.send_bytes_timeout(&msg, Duration::ZERO);
                }
                3 => {
                    let _ = y.recv_bytes_timeout(Duration::from_micros(rng.below(200)));
                }
                4 => {
                    let mut buf = vec![0u8; rng.below(300) as usize];
                    let _ = y.recv_bytes_into_timeout(&mut buf, Duration::ZERO);
                }
                _ => {
                    let _ = y.poll(Duration::ZERO);
                    let _ = wait(&[x, y], Some(Duration::ZERO));
                }
            }
        }
    });
}

/// The queue ring's stamps and indices, the participant table, and the frame
/// queue's frame headers.
#[test]
fn fuzz_queue_stamps_indices_and_frames() {
    fuzz("queue", |rng| {
        let q = Queue::<u64>::anonymous(8).unwrap();
        for _ in 0..rng.below(24) {
            match rng.below(5) {
                0 | 1 => scribble(q.segment(), rng),
                2 => {
                    let _ = q.try_send(rng.next());
                }
                3 => {
                    let _ = q.try_recv();
                }
                _ => {
                    let _ = (q.len(), q.is_empty(), q.is_full());
                    let _ = q.recv_timeout(Duration::ZERO);
                }
            }
        }
    });
    fuzz("frame_queue", |rng| {
        let q = FrameQueue::builder().max_frame(64).create().unwrap();
        for _ in 0..rng.below(24) {
            match rng.below(4) {
                0 | 1 => scribble(q.segment(), rng),
                2 => {
                    let n = rng.below(80) as usize;
                    let _ = q.try_send(&rng.bytes(n));
                }
                _ => {
                    let _ = q.try_recv();
                }
            }
        }
    });
}

/// Lock words: the robust mutex, the semaphore (count, waiters, bound and the
/// owned-permit table), the barrier and the event.
#[test]
fn fuzz_lock_words() {
    let short = Duration::from_micros(100);
    fuzz("mutex", |rng| {
        let m = Mutex::<u64>::anonymous(0).unwrap();
        for _ in 0..rng.below(16) {
            match rng.below(3) {
                0 => scribble(m.segment(), rng),
                1 => match m.try_lock() {
                    Ok(mut g) => *g = g.wrapping_add(1),
                    Err(e) => {
                        if let Some(g) = e.into_guard() {
                            g.mark_consistent();
                        }
                    }
                },
                _ => {
                    let _ = m.lock_timeout(short).map(|mut g| *g = g.wrapping_add(1));
                }
            }
        }
    });
    fuzz("semaphore", |rng| {
        let s = Semaphore::anonymous(2).unwrap();
        let mut guards = Vec::new();
        for _ in 0..rng.below(16) {
            match rng.below(5) {
                0 => scribble(s.segment(), rng),
                1 => {
                    let _ = s.try_acquire();
                }
                2 => {
                    let _ = s.release();
                }
                3 => {
                    if let Ok(g) = s.acquire_guard_timeout(short) {
                        guards.push(g);
                    }
                }
                _ => {
                    guards.pop();
                    let _ = s.acquire_timeout(short);
                }
            }
        }
    });
    fuzz("barrier_event", |rng| {
        let b = Barrier::anonymous(1 + rng.below(3) as u32).unwrap();
        let e = Event::anonymous().unwrap();
        for _ in 0..rng.below(16) {
            match rng.below(5) {
                0 => scribble(b.segment(), rng),
                1 => scribble(e.segment(), rng),
                2 => {
                    let _ = b.wait_timeout(short);
                }
                3 => {
                    let _ = (e.wait_timeout(short), e.is_set());
                }
                _ => {
                    if rng.below(2) == 0 {
                        e.set()
                    } else {
                        e.clear()
                    }
                }
            }
        }
    });
}
