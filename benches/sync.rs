//! Uncontended lock + unlock: shmproc's robust cross-process `Mutex<u64>` beside
//! `std::sync::Mutex<u64>` (process-private, the target is within 1.3x of it)
//! and `raw_sync::locks::Mutex` (a process-shared, non-robust pthread mutex in
//! shared memory), measured in the same run. Also `Value<u64>` (same lock) and
//! a Semaphore acquire + release pair.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

fn lock_unlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended-lock-unlock");
    let std_m = std::sync::Mutex::new(0u64);
    g.bench_function("std::sync::Mutex<u64>", |b| {
        b.iter(|| {
            *black_box(&std_m).lock().unwrap() += 1;
        })
    });
    let m = shmproc::Mutex::<u64>::anonymous(0).unwrap();
    g.bench_function("shmproc::Mutex<u64>", |b| {
        b.iter(|| {
            if let Ok(mut guard) = black_box(&m).lock() {
                *guard += 1;
            }
        })
    });
    let v = shmproc::Value::<u64>::anonymous(0).unwrap();
    g.bench_function("shmproc::Value<u64>", |b| {
        b.iter(|| {
            if let Ok(mut guard) = black_box(&v).lock() {
                *guard += 1;
            }
        })
    });
    // raw_sync's pthread mutex (PTHREAD_PROCESS_SHARED, not robust) in a shared
    // anonymous segment, guarding a u64 that follows it.
    let seg = shmproc::Segment::builder().size(4096).create().unwrap();
    let base = seg.payload_ptr().as_ptr();
    // SAFETY: the segment's payload is 4096 zeroed bytes, enough for a
    // pthread_mutex_t (40 bytes) at offset 0 and the u64 at offset 512; the
    // segment outlives the lock (dropped at the end of this function).
    let (raw, _) = unsafe { <raw_sync::locks::Mutex as raw_sync::locks::LockInit>::new(base, base.add(512)).unwrap() };
    g.bench_function("raw_sync::locks::Mutex", |b| {
        b.iter(|| {
            let guard = black_box(&raw).lock().unwrap();
            // SAFETY: the guard holds the lock; the data pointer is the
            // 8-aligned u64 at offset 512 of the payload.
            unsafe { *(*guard as *mut u64) += 1 };
        })
    });
    g.finish();
    drop(raw);
    drop(seg);

    let mut g = c.benchmark_group("uncontended-semaphore");
    let s = shmproc::Semaphore::anonymous(1).unwrap();
    g.bench_function("shmproc::Semaphore acquire+release", |b| {
        b.iter(|| {
            black_box(&s).acquire().unwrap();
            let _ = s.release();
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = lock_unlock
}
criterion_main!(benches);
