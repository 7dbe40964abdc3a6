//! `Value<u64>` and `Array<f64>` against `std::sync::Mutex`, in one run.
//!
//! * `value_u64`: one locked `get` / `set` of a shmproc `Value<u64>` (futex lock
//!   in a shared anonymous segment) beside `Mutex<u64>` lock + read / write.
//! * `array_f64_4096`: bulk copies of a 4096-element `Array<f64>` (`to_vec`,
//!   and `update` with `copy_from_slice`), reported per element, beside the same
//!   copies out of and into a `Mutex<Vec<f64>>`.
//!
//! After the measurements it prints the ratios shmproc / std from the
//! estimates criterion printed and saved (`target/criterion/.../new/estimates.json`).
//!
//! Run: `cargo bench --bench value` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, Criterion, Throughput};
use shmproc::{Array, Value};

const N: usize = 4096;

fn value_u64(c: &mut Criterion) {
    let v = Value::<u64>::anonymous(0).expect("anonymous Value");
    let m = Mutex::new(0u64);
    let mut g = c.benchmark_group("value_u64");
    g.bench_function("shmproc_get", |b| b.iter(|| black_box(v.get().ok())));
    g.bench_function("shmproc_set", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            black_box(v.set(black_box(i)).is_ok())
        })
    });
    g.bench_function("mutex_get", |b| b.iter(|| black_box(*m.lock().unwrap())));
    g.bench_function("mutex_set", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            *m.lock().unwrap() = black_box(i);
        })
    });
    g.finish();
}

fn array_f64(c: &mut Criterion) {
    let init: Vec<f64> = (0..N).map(|i| i as f64).collect();
    let a = Array::<f64>::anonymous(&init).expect("anonymous Array");
    let m = Mutex::new(init.clone());
    let src = init.clone();
    let mut g = c.benchmark_group("array_f64_4096");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("shmproc_to_vec", |b| b.iter(|| black_box(a.to_vec().ok())));
    g.bench_function("shmproc_update_copy", |b| b.iter(|| a.update(|d| d.copy_from_slice(black_box(&src))).is_ok()));
    g.bench_function("mutex_to_vec", |b| b.iter(|| black_box(m.lock().unwrap().to_vec())));
    g.bench_function("mutex_update_copy", |b| b.iter(|| m.lock().unwrap().copy_from_slice(black_box(&src))));
    g.finish();
}

/// The time (ns) criterion printed for `group/id` in this run (its slope
/// estimate, else the mean), from its saved estimates.
fn estimate_ns(group: &str, id: &str, since: std::time::SystemTime) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir.join("criterion").join(group).join(id).join("new").join("estimates.json");
    // Only estimates written by this run (not left over from an earlier one).
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["slope"]["point_estimate"].as_f64().or_else(|| v["mean"]["point_estimate"].as_f64())
}

fn ratios(since: std::time::SystemTime) {
    println!("\nshmproc vs std::sync::Mutex (criterion's estimates of this run; ratio = shmproc time / Mutex time):");
    for (group, ours, theirs, per) in [
        ("value_u64", "shmproc_get", "mutex_get", 1.0),
        ("value_u64", "shmproc_set", "mutex_set", 1.0),
        ("array_f64_4096", "shmproc_to_vec", "mutex_to_vec", N as f64),
        ("array_f64_4096", "shmproc_update_copy", "mutex_update_copy", N as f64),
    ] {
        match (estimate_ns(group, ours, since), estimate_ns(group, theirs, since)) {
            (Some(a), Some(b)) => {
                let unit = if per > 1.0 { "ns/elem" } else { "ns" };
                println!(
                    "  {group}/{ours:<20} {:>8.3} {unit:<7}  vs {theirs:<18} {:>8.3} {unit:<7}  ratio {:.2}",
                    a / per,
                    b / per,
                    a / b
                )
            }
            _ => println!("  {group}/{ours}: not measured in this run"),
        }
    }
}

criterion_group!(benches, value_u64, array_f64);

fn main() {
    let since = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios(since);
}
