//! Bench cases of the synchronization primitives.
//!
//! * `lock-incr`: two processes each do N locked increments of one shared
//!   counter; metric `incr_per_s` (both processes together). Transports:
//!   `mutex` (a shmproc `Value<u64>`, i.e. the robust futex lock) and
//!   `python-mp` (Python's `multiprocessing.Value` with its lock, run in the
//!   same bench run when `python3` is on the PATH; skipped otherwise).
//! * `event-pingpong`: two processes bounce two flags, each side blocking
//!   until its flag is set; metric `rtt_ns`. Transports: `event` (two shmproc
//!   `Event`s) and `raw-futex` (the same protocol on two bare futex words, the
//!   floor for any blocking handoff), measured in the same run so their ratio
//!   is meaningful.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::os::fork_child;
use super::{latency, throughput, Case, Config, Metric, Outcome};

/// The cases of this area.
pub fn cases() -> Vec<Case> {
    vec![
        Case { scenario: "lock-incr", transport: "mutex", run: lock_incr_mutex },
        Case { scenario: "lock-incr", transport: "python-mp", run: lock_incr_python },
        Case { scenario: "event-pingpong", transport: "event", run: pingpong_event },
        // The same bare futex ping-pong as `pingpong-8B`/`raw-futex`, measured again in this scenario.
        Case { scenario: "event-pingpong", transport: "raw-futex", run: super::baselines::futex_pingpong },
    ]
}

const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Spins (yielding) until `f` holds or `timeout` passes.
fn spin_wait(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return Err("the other process did not answer in time".into());
        }
        std::thread::yield_now();
    }
    Ok(())
}

fn lock_incr_mutex(cfg: &Config) -> Result<Outcome, String> {
    let n: u64 = if cfg.quick { 200_000 } else { 1_000_000 };
    let runs = if cfg.quick { 3 } else { 5 };
    let mut per_run = Vec::new();
    for _ in 0..runs {
        let counter = shmproc::Value::<u64>::anonymous(0).map_err(|e| e.to_string())?;
        // flags[0]: start, flags[1]: child done.
        let flags = shmproc::RawArray::<u32>::builder().create_zeroed(2).map_err(|e| e.to_string())?;
        let work = move |counter: &shmproc::Value<u64>| -> bool {
            for _ in 0..n {
                match counter.lock() {
                    Ok(mut g) => *g += 1,
                    Err(_) => return false,
                }
            }
            true
        };
        let mut child = {
            let (counter, flags) = (counter.clone(), flags.clone());
            fork_child(cfg.child_cpu, move || {
                let f = flags.atomics();
                if spin_wait(CHILD_TIMEOUT, || f[0].load(Ordering::Acquire) == 1).is_err() {
                    return 2;
                }
                let ok = work(&counter);
                f[1].store(1, Ordering::Release);
                if ok {
                    0
                } else {
                    3
                }
            })
            .map_err(|e| format!("fork: {e}"))?
        };
        let f = flags.atomics();
        let t0 = Instant::now();
        f[0].store(1, Ordering::Release);
        let ok = work(&counter);
        spin_wait(CHILD_TIMEOUT, || f[1].load(Ordering::Acquire) == 1)?;
        let dt = t0.elapsed();
        let code = child.wait_timeout(CHILD_TIMEOUT)?;
        if !ok || code != 0 {
            return Err(format!("lock failed (parent ok: {ok}, child exit {code})"));
        }
        let total = counter.get().map_err(|e| e.to_string())?;
        if total != 2 * n {
            return Err(format!("lost increments: {total} != {}", 2 * n));
        }
        per_run.push(total as f64 / dt.as_secs_f64());
    }
    Ok(throughput(Metric::IncrPerS, per_run))
}

const PYTHON_LOCK_INCR: &str = r#"
import multiprocessing as mp, sys, time
def work(v, n, b):
    b.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
if __name__ == "__main__":
    ctx = mp.get_context("fork")
    n = int(sys.argv[1])
    v = ctx.Value("Q", 0)
    b = ctx.Barrier(3)
    ps = [ctx.Process(target=work, args=(v, n, b)) for _ in range(2)]
    for p in ps:
        p.start()
    b.wait()
    t = time.perf_counter()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t
    if v.value != 2 * n:
        sys.exit("lost increments")
    print(2 * n / dt)
"#;

fn lock_incr_python(cfg: &Config) -> Result<Outcome, String> {
    let n = if cfg.quick { 100_000 } else { 300_000 };
    let runs = if cfg.quick { 3 } else { 5 };
    let mut per_run = Vec::new();
    for _ in 0..runs {
        let mut child = match std::process::Command::new("python3")
            .args(["-c", PYTHON_LOCK_INCR, &n.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("skipped: python3 not found".into()),
            Err(e) => return Err(format!("python3: {e}")),
        };
        let deadline = Instant::now() + CHILD_TIMEOUT;
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
        let rate: f64 =
            String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "python3 printed no rate".to_string())?;
        per_run.push(rate);
    }
    Ok(throughput(Metric::IncrPerS, per_run))
}

fn rounds(cfg: &Config) -> usize {
    if cfg.quick {
        2_000
    } else {
        10_000
    }
}

fn pingpong_event(cfg: &Config) -> Result<Outcome, String> {
    let a = shmproc::Event::anonymous().map_err(|e| e.to_string())?;
    let b = shmproc::Event::anonymous().map_err(|e| e.to_string())?;
    let n = rounds(cfg);
    let mut child = {
        let (a, b) = (a.clone(), b.clone());
        fork_child(cfg.child_cpu, move || {
            for _ in 0..n {
                if !a.wait_timeout(CHILD_TIMEOUT) {
                    return 2;
                }
                a.clear();
                b.set();
            }
            0
        })
        .map_err(|e| format!("fork: {e}"))?
    };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.set();
        if !b.wait_timeout(CHILD_TIMEOUT) {
            return Err("the child stopped answering".into());
        }
        b.clear();
        samples.push(t.elapsed().as_nanos() as f64);
    }
    let code = child.wait_timeout(CHILD_TIMEOUT)?;
    if code != 0 {
        return Err(format!("child exited with {code}"));
    }
    Ok(latency(Metric::RttNs, samples))
}
