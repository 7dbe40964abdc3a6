//! How a [`shmproc::Pool`] scales with its workers on this machine.
//!
//! For 1, 2, 4, ... workers up to the CPUs this process may use, prints:
//! * `cpu`: the speed-up over running them one after the other in this
//!   thread, for 2,000 tasks of about 200 us of CPU each (counting primes,
//!   chunksize 1);
//! * `trivial`: tasks per second of `map(|x| x * x)` over 1,000,000 `u64`
//!   (default chunking): the pool's own cost per item;
//! * `chunk1`: tasks per second of the same over 100,000 items with
//!   chunksize 1: the cost per task of handing tasks out one by one.
//!
//! Each figure is the median of 5 runs. Run it with
//! `cargo run --release --example pool_scaling`.

use std::time::Instant;

use shmproc::Pool;

/// The primes below `n`, by trial division: a CPU-bound task whose length
/// grows with `n`.
fn count_primes(n: u64) -> u64 {
    (2..n).filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0)).count() as u64
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Median of `runs` timings of `f`, in seconds.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shmproc::init();
    // The `n` for which `count_primes(n)` takes about 200 us here.
    let mut n = 64u64;
    while median_secs(3, || {
        std::hint::black_box(count_primes(std::hint::black_box(n)));
    }) < 200e-6
    {
        n += n / 4;
    }
    let tasks = 2_000usize;
    let sequential = median_secs(3, || {
        for _ in 0..tasks {
            std::hint::black_box(count_primes(std::hint::black_box(n)));
        }
    });

    let cpus = shmproc::process::cpu_count();
    println!("{cpus} CPUs; {tasks} tasks of ~200 us take {:.3} s one after the other", sequential);
    println!("{:>7}  {:>12}  {:>16}  {:>16}", "workers", "cpu speed-up", "trivial tasks/s", "chunk1 tasks/s");
    let mut workers = 1;
    while workers <= cpus {
        let pool = Pool::builder().processes(workers).create()?;
        let mut check = Ok(());
        let cpu = median_secs(5, || {
            let out = pool.map_chunksize(count_primes, std::iter::repeat(n).take(tasks), 1);
            check = check.clone().and(out.map(|_| ()));
        });
        let trivial = median_secs(5, || {
            let out = pool.map(square, 0..1_000_000u64);
            check = check.clone().and(out.map(|_| ()));
        });
        let chunk1 = median_secs(5, || {
            let out = pool.map_chunksize(square, 0..100_000u64, 1);
            check = check.clone().and(out.map(|_| ()));
        });
        check?;
        println!(
            "{workers:>7}  {:>11.2}x  {:>14.1} M  {:>14.2} M",
            sequential / cpu,
            1e6 / trivial / 1e6,
            1e5 / chunk1 / 1e6
        );
        workers *= 2;
    }
    Ok(())
}
