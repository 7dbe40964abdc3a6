//! Output of `shmproc bench`: JSON lines and the human table.
//!
//! JSON (written by `serde_json`): exactly one object per measured case, one
//! per line, with the keys `scenario`, `transport`, `metric`, `median`, `p99`
//! (a number or `null`) and `runs`, in that order, and nothing else on stdout.
//!
//! Table: one row per case, with a ratio to the `os-pipe` row of the same
//! scenario. The ratio is always "how many times better than the pipe", so it
//! reads the same way for round-trip times (lower is better: pipe / x) and for
//! rates (higher is better: x / pipe): `120x faster`, or `2.5x slower`.
//!
//! A second ratio column compares each row with its scenario's *baseline*
//! (see [`baseline_for`]): the bare floor, or the peer an issue sets its target
//! against. It is the plain quotient `x / baseline` in the metric's own unit,
//! the form the targets are written in ("within 1.5x of raw-spin" for a time,
//! "at least 0.4x raw-ring" for a rate).

use std::fmt::Write as _;

use serde::Serialize;

use super::{Metric, Outcome};

/// One measured case.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Transport name.
    pub transport: String,
    /// The measurement.
    pub outcome: Outcome,
}

/// The transport every other is compared with.
pub const REFERENCE: &str = "os-pipe";

/// The baseline transport of a scenario, measured in the same run: the raw
/// floor for transports, the peer for `lock-incr`, bare fork for `spawn-join`.
pub fn baseline_for(scenario: &str) -> Option<&'static str> {
    match scenario {
        "pingpong-8B" => Some("raw-spin"),
        "stream-8B" | "stream-64KiB" | "stream-mpmc" => Some("raw-ring"),
        "event-pingpong" => Some("raw-futex"),
        "lock-incr" => Some("python-mp"),
        "spawn-join" => Some("raw-fork"),
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
}

/// The JSON line for one row (without the newline).
pub fn json_line(row: &Row) -> String {
    let o = &row.outcome;
    let j = JsonRow {
        scenario: &row.scenario,
        transport: &row.transport,
        metric: o.metric.as_str(),
        median: o.median,
        p99: o.p99,
        runs: o.runs,
    };
    // Serialising a struct of strings and numbers into a String cannot fail.
    serde_json::to_string(&j).expect("a bench row serialises")
}

/// How many times better `x` is than `reference` for `metric` (> 1: better).
pub fn speedup(metric: Metric, x: f64, reference: f64) -> Option<f64> {
    let r = if metric.lower_is_better() { reference / x } else { x / reference };
    (r.is_finite() && r > 0.0).then_some(r)
}

/// "12.3x faster", "2.0x slower", "same" for a [`speedup`].
pub fn speedup_text(s: f64) -> String {
    let fmt = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    if (0.995..1.005).contains(&s) {
        "same".into()
    } else if s >= 1.0 {
        format!("{}x faster", fmt(s))
    } else {
        format!("{}x slower", fmt(1.0 / s))
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

/// The table of `rows`, with a ratio column against [`REFERENCE`].
pub fn table(rows: &[Row]) -> String {
    let reference = |r: &Row| {
        rows.iter()
            .find(|p| p.transport == REFERENCE && p.scenario == r.scenario && p.outcome.metric == r.outcome.metric)
    };
    let baseline = |r: &Row| {
        let b = baseline_for(&r.scenario)?;
        rows.iter().find(|p| p.transport == b && p.scenario == r.scenario && p.outcome.metric == r.outcome.metric)
    };
    let header = ["scenario", "transport", "metric", "median", "p99", "runs", "vs os-pipe", "vs baseline"];
    let mut cells: Vec<[String; 8]> = Vec::new();
    for r in rows {
        let o = &r.outcome;
        let ratio = match reference(r) {
            Some(p) if p.transport == r.transport => "(reference)".to_string(),
            Some(p) => speedup(o.metric, o.median, p.outcome.median).map(speedup_text).unwrap_or_else(|| "-".into()),
            None => "-".into(),
        };
        let vs_base = match baseline(r) {
            Some(b) if b.transport == r.transport => "(baseline)".to_string(),
            Some(b) if b.outcome.median > 0.0 && o.median.is_finite() => {
                format!("{}x {}", quotient(o.median / b.outcome.median), b.transport)
            }
            _ => "-".into(),
        };
        cells.push([
            r.scenario.clone(),
            r.transport.clone(),
            o.metric.as_str().to_string(),
            human(o.metric, o.median),
            o.p99.map(|p| human(o.metric, p)).unwrap_or_else(|| "-".into()),
            o.runs.to_string(),
            ratio,
            vs_base,
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
            if !(3..6).contains(&i) {
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
    use crate::bench::{latency, throughput};

    fn row(s: &str, t: &str, o: Outcome) -> Row {
        Row { scenario: s.into(), transport: t.into(), outcome: o }
    }

    #[test]
    fn json_line_has_exact_keys_and_order() {
        let r = row(
            "pingpong-8B",
            "os-pipe",
            Outcome { metric: Metric::RttNs, median: 61830.0, p99: Some(70123.5), runs: 4000 },
        );
        assert_eq!(
            json_line(&r),
            r#"{"scenario":"pingpong-8B","transport":"os-pipe","metric":"rtt_ns","median":61830.0,"p99":70123.5,"runs":4000}"#
        );
        let r = row("stream-8B", "raw-ring", Outcome { metric: Metric::MsgsPerS, median: 7.5e8, p99: None, runs: 9 });
        assert_eq!(
            json_line(&r),
            r#"{"scenario":"stream-8B","transport":"raw-ring","metric":"msgs_per_s","median":750000000.0,"p99":null,"runs":9}"#
        );
    }

    #[test]
    fn json_numbers_and_strings_are_valid() {
        let line = |median: f64, scenario: &str| {
            json_line(&row(scenario, "t", Outcome { metric: Metric::Us, median, p99: Some(median), runs: 1 }))
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
    fn speedup_reads_the_same_for_both_directions() {
        // Round trip: 250 ns vs a 62.5 us pipe is 250x faster.
        assert_eq!(speedup(Metric::RttNs, 250.0, 62_500.0), Some(250.0));
        assert_eq!(speedup_text(250.0), "250x faster");
        // Rate: 0.5 M/s vs 2 M/s is 4x slower.
        assert_eq!(speedup(Metric::MsgsPerS, 0.5e6, 2e6), Some(0.25));
        assert_eq!(speedup_text(0.25), "4.00x slower");
        // A slower round trip is slower.
        assert_eq!(speedup_text(speedup(Metric::RttNs, 124_000.0, 62_000.0).unwrap()), "2.00x slower");
        assert_eq!(speedup_text(1.0), "same");
        assert_eq!(speedup(Metric::RttNs, 0.0, 1.0), None);
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
    fn table_has_ratios_to_the_pipe_of_the_same_scenario() {
        let rows = vec![
            row("pingpong-8B", "raw-spin", latency(Metric::RttNs, vec![250.0; 3])),
            row("pingpong-8B", "os-pipe", latency(Metric::RttNs, vec![62_500.0; 3])),
            row("stream-8B", "raw-ring", throughput(Metric::MsgsPerS, vec![7e8])),
            row("stream-8B", "os-pipe", throughput(Metric::MsgsPerS, vec![2e6])),
            row("stream-9B", "other", throughput(Metric::MsgsPerS, vec![2e6])),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert!(lines[2].contains("250 ns") && lines[2].contains("250x faster"), "{t}");
        assert!(lines[2].ends_with("(baseline)"), "{t}");
        assert!(lines[3].contains("62.5 us") && lines[3].contains("(reference)"), "{t}");
        assert!(lines[3].ends_with("250x raw-spin"), "{t}");
        assert!(lines[4].contains("700 M msg/s") && lines[4].contains("350x faster"), "{t}");
        assert!(lines[5].ends_with("0.00286x raw-ring"), "{t}");
        assert!(lines[4].contains(" - "), "throughput rows have no p99: {t}");
        assert!(lines[6].ends_with('-'), "{t}");
    }
}
