//! Output of `shmproc bench`: JSON lines and the human table.
//!
//! JSON (written by `serde_json`): exactly one object per measured case, one
//! per line, with the keys `scenario`, `transport`, `metric`, `median`, `p99`
//! (a number or `null`), `runs`, then the paired comparison: `ratio`,
//! `ratio_lo`, `ratio_hi` (the median, smallest and largest of the pairwise
//! ratios `transport / baseline`, `null` when unpaired), `baseline` (the
//! transport it was paired with, or `null`), `drift` (raw-spin after the case
//! divided by raw-spin before it, or `null`), `drifting` (whether that moved
//! over 20%), `unsteady` (whether the pairwise ratios span more than 4x,
//! largest over smallest: the row's own blocks swung), `floor_ns` (the raw-spin round trip around the case, in ns, or
//! `null`: where the host had placed the CPUs; compare ratios between rows or
//! runs at about the same floor) and `placement`, in that order, and nothing
//! else on stdout.
//!
//! Table: one row per case. The ratio column compares the row with its
//! baseline (see [`baseline_for`] and `Case::against`), measured in
//! alternating blocks within the case: the plain quotient `x / baseline` in
//! the metric's own unit, the form the targets are written in ("within 1.5x of
//! raw-spin" for a time, "at least 0.5x raw-ring" for a rate), with the range
//! of the pairwise ratios after it.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Measured, Metric};

/// One measured case.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Transport name.
    pub transport: String,
    /// The measurement.
    pub m: Measured,
}

/// The baseline transport of a scenario, measured in the same run: the raw
/// floor for transports, the peer for `lock-incr`, bare fork for `spawn-join`,
/// threads for the pool's maps, Python for its start, sequential calls for
/// its CPU-bound map, Python for the manager, bare TCP for `connection-tcp`.
pub fn baseline_for(scenario: &str) -> Option<&'static str> {
    match scenario {
        "pingpong-8B" => Some("raw-spin"),
        "stream-8B" | "stream-64KiB" => Some("raw-ring"),
        "stream-mpmc" => Some("raw-mpmc"),
        "event-pingpong" => Some("raw-spin"),
        "lock-incr" => Some("python-mp"),
        "spawn-join" => Some("raw-fork"),
        "pool-map-trivial" | "pool-map-chunk1" => Some("thread-pool"),
        "pool-start" => Some("python-mp"),
        "pool-map-cpu" => Some("sequential"),
        "manager-dict" => Some("python-mp"),
        "manager-dict-tcp" => Some("python-mp-tcp"),
        "connection-tcp" => Some("tcp-bare"),
        _ => None,
    }
}

/// The JSON object of one row: these keys, in this order (see the module docs).
/// A figure that is not finite is written as `null` (serde_json's rule for
/// non-finite floats), which JSON readers take as "no figure".
#[derive(Debug, Serialize)]
struct JsonRow<'a> {
    scenario: &'a str,
    transport: &'a str,
    metric: &'static str,
    median: f64,
    p99: Option<f64>,
    runs: usize,
    ratio: Option<f64>,
    ratio_lo: Option<f64>,
    ratio_hi: Option<f64>,
    baseline: Option<&'a str>,
    drift: Option<f64>,
    drifting: bool,
    unsteady: bool,
    floor_ns: Option<f64>,
    placement: &'a str,
}

/// The JSON line for one row (without the newline).
pub fn json_line(row: &Row) -> String {
    let m = &row.m;
    let o = &m.outcome;
    let j = JsonRow {
        scenario: &row.scenario,
        transport: &row.transport,
        metric: o.metric.as_str(),
        median: o.median,
        p99: o.p99,
        runs: o.runs,
        ratio: m.ratio.map(|r| r.median),
        ratio_lo: m.ratio.map(|r| r.lo),
        ratio_hi: m.ratio.map(|r| r.hi),
        baseline: m.baseline,
        drift: m.drift,
        drifting: m.drifted(),
        unsteady: m.unsteady(),
        floor_ns: m.floor,
        placement: &m.placement,
    };
    // Serialising a struct of strings and numbers into a String cannot fail.
    serde_json::to_string(&j).expect("a bench row serialises")
}

/// "0.512x raw-ring [0.49-0.53]" for a paired row (with " UNSTEADY" after
/// it when [`Measured::unsteady`]), "(baseline)" for a baseline's own row,
/// "-" when unpaired.
pub fn ratio_text(m: &Measured) -> String {
    match (m.ratio, m.baseline) {
        (Some(r), Some(b)) => format!(
            "{}x {b} [{}-{}]{}",
            quotient(r.median),
            quotient(r.lo),
            quotient(r.hi),
            if m.unsteady() { " UNSTEADY" } else { "" }
        ),
        (Some(_), None) => "(baseline)".into(),
        _ => "-".into(),
    }
}

/// "+3%" or "-31% DRIFT" for the drift probe, "-" without one.
pub fn drift_text(m: &Measured) -> String {
    match m.drift {
        Some(d) => {
            let pct = (d - 1.0) * 100.0;
            format!("{pct:+.0}%{}", if m.drifted() { " DRIFT" } else { "" })
        }
        None => "-".into(),
    }
}

/// A figure with its unit, scaled for reading: `262 ns`, `61.8 us`, `712 M msg/s`, `14.1 GB/s`.
pub fn human(metric: Metric, x: f64) -> String {
    fn si(x: f64, unit: &str) -> String {
        let (v, p) = if x >= 1e9 {
            (x / 1e9, "G")
        } else if x >= 1e6 {
            (x / 1e6, "M")
        } else if x >= 1e3 {
            (x / 1e3, "k")
        } else {
            (x, "")
        };
        // "14.1 GB/s", but "712 M msg/s".
        let sep = if unit.starts_with('B') { "" } else { " " };
        format!("{} {p}{sep}{unit}", sig3(v))
    }
    match metric {
        Metric::RttNs => {
            if x >= 1e6 {
                format!("{} ms", sig3(x / 1e6))
            } else if x >= 1e3 {
                format!("{} us", sig3(x / 1e3))
            } else {
                format!("{} ns", sig3(x))
            }
        }
        Metric::MsgsPerS => si(x, "msg/s"),
        Metric::BytesPerS => si(x, "B/s"),
        Metric::TasksPerS => si(x, "tasks/s"),
        Metric::IncrPerS => si(x, "incr/s"),
        Metric::Us => format!("{} us", sig3(x)),
        Metric::CpuPct => format!("{}%", sig3(x)),
    }
}

/// Three significant digits, no exponent.
/// A quotient with three significant digits, small ones included (0.00286).
fn quotient(v: f64) -> String {
    if v.is_nan() || v <= 0.0 || v >= 1.0 {
        return sig3(v);
    }
    let digits = (2.0 - v.log10().floor()).clamp(2.0, 9.0) as usize;
    format!("{v:.digits$}")
}

fn sig3(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "75.1 ns" for the floor a row ran at, with " MOVED" when it is not the
/// run's usual placement (`moved`, see [`super::placement_outliers`]); "-"
/// without a probe.
pub fn floor_text(m: &Measured, moved: bool) -> String {
    match m.floor {
        Some(f) => format!("{}{}", human(Metric::RttNs, f), if moved { " MOVED" } else { "" }),
        None => "-".into(),
    }
}

/// The rows (indices) that ran at another placement than most of `rows`.
pub fn moved_rows(rows: &[Row]) -> Vec<usize> {
    super::placement_outliers(&rows.iter().map(|r| r.m.floor).collect::<Vec<_>>())
}

/// The table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let header =
        ["scenario", "transport", "metric", "median", "p99", "vs baseline [min-max]", "drift", "floor", "placement"];
    let moved = moved_rows(rows);
    let mut cells: Vec<[String; 9]> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let o = &r.m.outcome;
        cells.push([
            r.scenario.clone(),
            r.transport.clone(),
            o.metric.as_str().to_string(),
            human(o.metric, o.median),
            o.p99.map(|p| human(o.metric, p)).unwrap_or_else(|| "-".into()),
            ratio_text(&r.m),
            drift_text(&r.m),
            floor_text(&r.m, moved.contains(&i)),
            r.m.placement.clone(),
        ]);
    }
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c) {
            *w = (*w).max(s.len());
        }
    }
    let mut out = String::new();
    let mut line = |c: &[String]| {
        for (i, (s, w)) in c.iter().zip(width).enumerate() {
            // Text columns left-aligned, figures right-aligned.
            if !(3..5).contains(&i) {
                let _ = write!(out, "{s:<w$}");
            } else {
                let _ = write!(out, "{s:>w$}");
            }
            if i + 1 < c.len() {
                out.push_str("  ");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&header.map(String::from));
    line(&width.map(|w| "-".repeat(w)));
    for c in &cells {
        line(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{latency, throughput, Outcome, Ratio};

    fn row(s: &str, t: &str, outcome: Outcome, ratio: Option<(f64, f64, f64)>, baseline: Option<&'static str>) -> Row {
        Row {
            scenario: s.into(),
            transport: t.into(),
            m: Measured {
                outcome,
                baseline,
                ratio: ratio.map(|(median, lo, hi)| Ratio { median, lo, hi }),
                drift: Some(1.05),
                floor: Some(75.0),
                placement: "parent CPU 0, child CPU 1".into(),
            },
        }
    }

    #[test]
    fn json_line_has_exact_keys_and_order() {
        let r = row(
            "pingpong-8B",
            "os-pipe",
            Outcome { metric: Metric::RttNs, median: 61830.0, p99: Some(70123.5), runs: 10 },
            Some((240.0, 230.0, 250.5)),
            Some("raw-spin"),
        );
        assert_eq!(
            json_line(&r),
            r#"{"scenario":"pingpong-8B","transport":"os-pipe","metric":"rtt_ns","median":61830.0,"p99":70123.5,"runs":10,"ratio":240.0,"ratio_lo":230.0,"ratio_hi":250.5,"baseline":"raw-spin","drift":1.05,"drifting":false,"unsteady":false,"floor_ns":75.0,"placement":"parent CPU 0, child CPU 1"}"#
        );
        let mut r = row(
            "stream-8B",
            "raw-ring",
            Outcome { metric: Metric::MsgsPerS, median: 7.5e8, p99: None, runs: 9 },
            None,
            None,
        );
        r.m.drift = Some(1.5);
        assert_eq!(
            json_line(&r),
            r#"{"scenario":"stream-8B","transport":"raw-ring","metric":"msgs_per_s","median":750000000.0,"p99":null,"runs":9,"ratio":null,"ratio_lo":null,"ratio_hi":null,"baseline":null,"drift":1.5,"drifting":true,"unsteady":false,"floor_ns":75.0,"placement":"parent CPU 0, child CPU 1"}"#
        );
    }

    #[test]
    fn json_numbers_and_strings_are_valid() {
        let line = |median: f64, scenario: &str| {
            json_line(&row(
                scenario,
                "t",
                Outcome { metric: Metric::Us, median, p99: Some(median), runs: 1 },
                None,
                None,
            ))
        };
        // Not finite: JSON has no such number, so null.
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(line(x, "s").contains(r#""median":null,"p99":null"#), "{}", line(x, "s"));
        }
        // Every line reads back as JSON with the same figures and names.
        for x in [0.25, -3.0, 1e20, 1.5e-7, 61830.0] {
            let text = line(x, "a\"b\\c\nd\u{1}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(v["median"].as_f64(), Some(x), "{text}");
            assert_eq!(v["p99"].as_f64(), Some(x), "{text}");
            assert_eq!(v["scenario"], "a\"b\\c\nd\u{1}", "{text}");
        }
        assert!(line(1.0, "a\"b\\c\nd\u{1}").contains(r#""a\"b\\c\nd\u0001""#));
    }

    #[test]
    fn stats_median_and_p99() {
        let o = latency(Metric::RttNs, (1..=100).rev().map(f64::from).collect());
        assert_eq!(o.runs, 100);
        assert_eq!(o.median, 51.0); // index round(99 * 0.5) = 50 (0-based) of 1..=100
        assert_eq!(o.p99, Some(99.0)); // index round(99 * 0.99) = 98
        let o = throughput(Metric::BytesPerS, vec![3.0, 1.0, 2.0]);
        assert_eq!((o.median, o.p99, o.runs), (2.0, None, 3));
        let o = latency(Metric::RttNs, vec![7.0]);
        assert_eq!((o.median, o.p99), (7.0, Some(7.0)));
    }

    #[test]
    fn table_shows_paired_ratios_with_their_range_drift_and_placement() {
        let mut drifted = row(
            "stream-8B",
            "os-pipe",
            throughput(Metric::MsgsPerS, vec![2e6]),
            Some((0.00286, 0.0025, 0.003)),
            Some("raw-ring"),
        );
        drifted.m.drift = Some(0.7);
        let rows = vec![
            row("pingpong-8B", "raw-spin", latency(Metric::RttNs, vec![250.0; 3]), Some((1.0, 1.0, 1.0)), None),
            row(
                "pingpong-8B",
                "os-pipe",
                latency(Metric::RttNs, vec![62_500.0; 3]),
                Some((250.0, 240.0, 262.0)),
                Some("raw-spin"),
            ),
            row("stream-8B", "raw-ring", throughput(Metric::MsgsPerS, vec![7e8]), Some((1.0, 1.0, 1.0)), None),
            drifted,
            row("stream-9B", "other", throughput(Metric::MsgsPerS, vec![2e6]), None, None),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert!(lines[2].contains("250 ns") && lines[2].contains("(baseline)"), "{t}");
        assert!(lines[3].contains("62.5 us") && lines[3].contains("250x raw-spin [240-262]"), "{t}");
        assert!(lines[4].contains("700 M msg/s"), "{t}");
        assert!(lines[5].contains("0.00286x raw-ring [0.00250-0.00300]") && lines[5].contains("-30% DRIFT"), "{t}");
        assert!(lines[2].contains("+5%") && !lines[2].contains("DRIFT"), "{t}");
        assert!(lines[2].ends_with("parent CPU 0, child CPU 1"), "{t}");
        assert!(lines[6].contains(" - "), "unpaired: {t}");
        // Every row ran at the same floor: none is marked.
        assert!(lines[2].contains("75.0 ns") && !t.contains("MOVED"), "{t}");
        // One case ran with the CPUs far apart.
        let mut rows = rows;
        rows[1].m.floor = Some(371.0);
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[3].contains("371 ns MOVED"), "{t}");
        assert_eq!(t.matches("MOVED").count(), 1, "{t}");
        assert_eq!(moved_rows(&rows), vec![1]);
        assert!(!t.contains("UNSTEADY"), "{t}");
    }

    #[test]
    fn a_row_whose_pairs_swing_over_4x_is_unsteady() {
        let paired = |lo: f64, hi: f64| {
            row(
                "stream-64KiB",
                "ipc-channel",
                throughput(Metric::BytesPerS, vec![5e9]),
                Some((0.45, lo, hi)),
                Some("raw-ring"),
            )
        };
        // 0.030 to 0.48: 16x apart.
        let r = paired(0.030, 0.48);
        assert!(r.m.unsteady() && !r.m.drifted());
        assert!(ratio_text(&r.m).ends_with("[0.0300-0.480] UNSTEADY"), "{}", ratio_text(&r.m));
        assert!(json_line(&r).contains(r#""drifting":false,"unsteady":true"#), "{}", json_line(&r));
        // 4x exactly is still steady; a range that cannot be judged (a zero or
        // NaN end) is unsteady.
        assert!(!paired(0.12, 0.48).m.unsteady());
        assert!(paired(0.0, 0.48).m.unsteady());
        assert!(paired(f64::NAN, 0.48).m.unsteady());
        // A baseline's own row and an unpaired row never are.
        let own =
            row("stream-64KiB", "raw-ring", throughput(Metric::BytesPerS, vec![1e10]), Some((1.0, 1.0, 1.0)), None);
        assert!(!own.m.unsteady());
        let unpaired = row("stream-64KiB", "x", throughput(Metric::BytesPerS, vec![1e10]), None, None);
        assert!(!unpaired.m.unsteady());
    }
}
