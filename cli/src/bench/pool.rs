//! Bench cases of the process pool (`shmproc::Pool`).
//!
//! * `pool-map-trivial`: `map(x * x)` over 1,000,000 `u64` (100,000 quick)
//!   with 2 workers and the default chunking; metric `tasks_per_s`.
//! * `pool-map-chunk1`: the same over 100,000 items (20,000 quick) with
//!   chunksize 1: the pool's own cost per task.
//!
//! Transports, measured in the same run: `shmproc-pool` (a `Pool` of 2,
//! created once per case, default start method), `thread-pool` (two
//! `std::thread` workers fed task by task through crossbeam-channel, results
//! sent back the same way and put in input order: a pool without the process
//! boundary) and `python-mp` (Python's `multiprocessing.Pool(2).map`, when
//! `python3` is on the PATH). Each case runs in a fresh thread whose CPU
//! affinity is reset to every CPU (the bench pins its main thread), so the
//! workers (and Python's children) may use both CPUs. The figure is the median
//! over runs of the whole map.

use std::time::{Duration, Instant};

use super::{throughput, Case, Config, Metric, Outcome};

/// The cases of this area.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: "pool-map-trivial", transport: "shmproc-pool", run: trivial_shmproc },
        Case { scenario: "pool-map-trivial", transport: "thread-pool", run: trivial_threads },
        Case { scenario: "pool-map-trivial", transport: "python-mp", run: trivial_python },
        Case { scenario: "pool-map-chunk1", transport: "shmproc-pool", run: chunk1_shmproc },
        Case { scenario: "pool-map-chunk1", transport: "thread-pool", run: chunk1_threads },
        Case { scenario: "pool-map-chunk1", transport: "python-mp", run: chunk1_python },
    ]
}

const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

fn trivial_items(cfg: &Config) -> u64 {
    if cfg.quick {
        100_000
    } else {
        1_000_000
    }
}

fn chunk1_items(cfg: &Config) -> u64 {
    if cfg.quick {
        20_000
    } else {
        100_000
    }
}

fn runs(cfg: &Config) -> usize {
    if cfg.quick {
        3
    } else {
        7
    }
}

/// Runs `f` in a new thread allowed on every CPU.
fn unpinned<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    std::thread::spawn(move || {
        let mut set = rustix::thread::CpuSet::new();
        for c in 0..rustix::thread::CpuSet::MAX_CPU {
            set.set(c);
        }
        let _ = rustix::thread::sched_setaffinity(None, &set);
        f()
    })
    .join()
    .map_err(|_| "the bench thread panicked".to_string())
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn check(out: &[u64], n: u64) -> Result<(), String> {
    if out.len() as u64 != n || out.iter().enumerate().any(|(i, &v)| v != square(i as u64)) {
        return Err("wrong results".into());
    }
    Ok(())
}

fn shmproc_pool(n: u64, chunksize: Option<usize>, runs: usize) -> Result<Outcome, String> {
    unpinned(move || {
        let pool = shmproc::Pool::builder().processes(2).create().map_err(|e| e.to_string())?;
        let mut per_run = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let out = match chunksize {
                None => pool.map(square, 0..n),
                Some(c) => pool.map_chunksize(square, 0..n, c),
            }
            .map_err(|e| e.to_string())?;
            per_run.push(n as f64 / t.elapsed().as_secs_f64());
            check(&out, n)?;
        }
        Ok(throughput(Metric::TasksPerS, per_run))
    })?
}

fn thread_pool(n: u64, runs: usize) -> Result<Outcome, String> {
    unpinned(move || {
        let (task_tx, task_rx) = crossbeam_channel::unbounded::<(usize, u64)>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, u64)>();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (rx, tx) = (task_rx.clone(), res_tx.clone());
                std::thread::spawn(move || {
                    for (i, x) in rx.iter() {
                        if tx.send((i, square(x))).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(res_tx);
        let mut per_run = Vec::new();
        let mut result = Ok(());
        for _ in 0..runs {
            let t = Instant::now();
            // Fed task by task while results come back (a feeder thread, as a pool has).
            let feeder = {
                let tx = task_tx.clone();
                std::thread::spawn(move || {
                    for x in 0..n {
                        let _ = tx.send((x as usize, x));
                    }
                })
            };
            let mut out = vec![0u64; n as usize];
            for _ in 0..n {
                match res_rx.recv_timeout(PYTHON_TIMEOUT) {
                    Ok((i, v)) => out[i] = v,
                    Err(_) => {
                        result = Err("a thread-pool worker stopped".to_string());
                        break;
                    }
                }
            }
            let _ = feeder.join();
            per_run.push(n as f64 / t.elapsed().as_secs_f64());
            if result.is_ok() {
                result = check(&out, n);
            }
            if result.is_err() {
                break;
            }
        }
        drop(task_tx);
        for w in workers {
            let _ = w.join();
        }
        result.map(|()| throughput(Metric::TasksPerS, per_run))
    })?
}

const PYTHON_POOL_MAP: &str = r#"
import multiprocessing as mp, os, sys, time
def f(x):
    return x * x
if __name__ == "__main__":
    # The bench pins its main thread; let Python's children use every CPU.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    n, chunksize, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    with mp.get_context("fork").Pool(2) as p:
        for _ in range(runs):
            t = time.perf_counter()
            out = p.map(f, range(n), chunksize=None if chunksize == 0 else chunksize)
            dt = time.perf_counter() - t
            if out[-1] != (n - 1) * (n - 1):
                sys.exit("wrong results")
            print(n / dt, flush=True)
"#;

fn python_pool(n: u64, chunksize: usize, runs: usize) -> Result<Outcome, String> {
    unpinned(move || {
        let mut child = match std::process::Command::new("python3")
            .args(["-c", PYTHON_POOL_MAP, &n.to_string(), &chunksize.to_string(), &runs.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("skipped: python3 not found".into()),
            Err(e) => return Err(format!("python3: {e}")),
        };
        let deadline = Instant::now() + PYTHON_TIMEOUT;
        loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("python3 did not finish in time; killed".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("python3 failed: {}", out.status));
        }
        let per_run: Vec<f64> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
        if per_run.is_empty() {
            return Err("python3 printed no rate".into());
        }
        Ok(throughput(Metric::TasksPerS, per_run))
    })?
}

fn trivial_shmproc(cfg: &Config) -> Result<Outcome, String> {
    shmproc_pool(trivial_items(cfg), None, runs(cfg))
}

fn trivial_threads(cfg: &Config) -> Result<Outcome, String> {
    thread_pool(trivial_items(cfg), runs(cfg))
}

/// Python is slow enough that fewer runs keep the case within its time budget.
fn python_runs(cfg: &Config) -> usize {
    if cfg.quick {
        2
    } else {
        3
    }
}

fn trivial_python(cfg: &Config) -> Result<Outcome, String> {
    python_pool(trivial_items(cfg), 0, python_runs(cfg))
}

fn chunk1_shmproc(cfg: &Config) -> Result<Outcome, String> {
    shmproc_pool(chunk1_items(cfg), Some(1), runs(cfg))
}

fn chunk1_threads(cfg: &Config) -> Result<Outcome, String> {
    thread_pool(chunk1_items(cfg), runs(cfg))
}

fn chunk1_python(cfg: &Config) -> Result<Outcome, String> {
    python_pool(chunk1_items(cfg), 1, python_runs(cfg))
}
