//! How a [`shmproc::Pool`] scales with its workers on this machine.
//!
//! For 1, 2, 4, ... workers up to the CPUs this process may use, prints:
//! * `cpu`: the speed-up over running them one after the other in this
//!   thread, for tasks of about 200 us of CPU each (chunksize 1);
//! * `trivial`: tasks per second of `map(|x| x * x)` over 1,000,000 `u64`
//!   (default chunking): the pool's own cost per item;
//! * `chunk1`: tasks per second of the same over 100,000 items with
//!   chunksize 1: the cost per task of handing tasks out one by one.
//!
//! Each figure is the median of 5 runs. Run it with
//! `cargo run --release --example pool_scaling`.

use std::time::Instant;

use shmproc::Pool;

/// About `iters` steps of integer mixing: CPU work no compiler folds.
fn burn(iters: u64) -> u64 {
    let mut x = iters | 1;
    for i in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    std::hint::black_box(x)
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
    // Iterations of `burn` that take about 200 us here.
    let mut iters = 1_000u64;
    while median_secs(3, || {
        burn(iters);
    }) < 0.02
    {
        iters *= 2;
    }
    let per_task = median_secs(3, || {
        burn(iters);
    }) / iters as f64;
    let iters = ((200e-6 / per_task) as u64).max(1);
    let tasks = 2_000usize;
    let sequential = median_secs(3, || {
        for _ in 0..tasks {
            burn(iters);
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
            let out = pool.map_chunksize(burn, std::iter::repeat_n(iters, tasks), 1);
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
