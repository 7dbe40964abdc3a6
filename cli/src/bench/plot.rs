//! `shmproc bench --plot FILE.svg`: one panel per scenario, one horizontal
//! bar per transport on a log scale (the panel's own scale, from a decade
//! below its smallest figure to a decade above its largest), each labelled
//! with its figure and its paired ratio and spread (the table's
//! "vs baseline" column). Drawn with `plotters`' SVG backend, placing every
//! element in pixels, so no font file is needed.

use plotters::prelude::*;

use super::report::{human, ratio_text, Row};

const WIDTH: u32 = 1100;
const BAR: i32 = 22;
const TITLE: i32 = 30;
const GAP: i32 = 14;
/// Where bars start (the transport names are left of it).
const LEFT: i32 = 140;
/// Where bars may end (the labels are right of it).
const RIGHT: i32 = 620;

/// The scenarios of `rows`, in order, each with its rows.
fn panels(rows: &[Row]) -> Vec<(&str, Vec<&Row>)> {
    let mut out: Vec<(&str, Vec<&Row>)> = Vec::new();
    for r in rows {
        let good = r.m.outcome.median.is_finite() && r.m.outcome.median > 0.0;
        if !good {
            continue;
        }
        match out.iter_mut().find(|(s, _)| *s == r.scenario) {
            Some((_, v)) => v.push(r),
            None => out.push((&r.scenario, vec![r])),
        }
    }
    out
}

/// Draws `rows` into the SVG file `path`; `title` heads the picture.
pub fn draw(rows: &[Row], path: &str, title: &str) -> Result<(), String> {
    let panels = panels(rows);
    let height: i32 = 40 + panels.iter().map(|(_, v)| TITLE + BAR * v.len() as i32 + GAP).sum::<i32>();
    let root = SVGBackend::new(path, (WIDTH, height.max(60) as u32)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("plot {path}: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(title.to_string(), (10, 10), font(16).style(FontStyle::Bold))).map_err(e)?;
    let mut y = 40;
    for (scenario, rows) in &panels {
        let metric = rows[0].m.outcome.metric;
        let lower = if metric.lower_is_better() { "lower is better" } else { "higher is better" };
        root.draw(&Text::new(format!("{scenario} ({}, log scale, {lower})", metric.as_str()), (10, y + 8), font(14)))
            .map_err(e)?;
        y += TITLE;
        let (lo, hi) = rows
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r.m.outcome.median), hi.max(r.m.outcome.median)));
        let (lo, hi) = ((lo / 10.0).log10().floor(), (hi * 1.5).log10().ceil());
        let x_of = |v: f64| LEFT + ((v.log10() - lo) / (hi - lo).max(1e-9) * f64::from(RIGHT - LEFT)) as i32;
        for r in rows {
            let v = r.m.outcome.median;
            let color = if r.m.baseline.is_none() && r.m.ratio.is_some() { RGBColor(150, 150, 150) } else { BLUE };
            root.draw(&Text::new(r.transport.clone(), (10, y + 4), font(12))).map_err(e)?;
            root.draw(&Rectangle::new([(LEFT, y + 3), (x_of(v).max(LEFT + 1), y + BAR - 3)], color.filled()))
                .map_err(e)?;
            let drift = if r.m.drifted() { "  DRIFT" } else { "" };
            let label = format!("{}  {}{drift}", human(metric, v), ratio_text(&r.m));
            root.draw(&Text::new(label, (RIGHT + 10, y + 4), font(12))).map_err(e)?;
            y += BAR;
        }
        root.draw(&PathElement::new(vec![(LEFT, y - BAR * rows.len() as i32), (LEFT, y)], BLACK)).map_err(e)?;
        y += GAP;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{throughput, Measured, Metric, Ratio};

    #[test]
    fn every_row_gets_a_labelled_bar() {
        let row = |s: &str, t: &str, v: f64, ratio: Option<Ratio>, b: Option<&'static str>| Row {
            scenario: s.into(),
            transport: t.into(),
            m: Measured {
                outcome: throughput(Metric::MsgsPerS, vec![v]),
                baseline: b,
                ratio,
                drift: Some(1.0),
                floor: Some(80.0),
                placement: String::new(),
            },
        };
        let rows = vec![
            row("stream-8B", "raw-ring", 7e8, Some(Ratio { median: 1.0, lo: 1.0, hi: 1.0 }), None),
            row("stream-8B", "queue", 3.5e8, Some(Ratio { median: 0.5, lo: 0.45, hi: 0.55 }), Some("raw-ring")),
            row("stream-64KiB", "os-pipe", 1e9, None, None),
            row("stream-64KiB", "broken", f64::NAN, None, None),
        ];
        let path = std::env::temp_dir().join(format!("shmproc-plot-test-{}.svg", std::process::id()));
        draw(&rows, path.to_str().unwrap(), "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{svg}");
        for want in ["stream-8B", "stream-64KiB", "raw-ring", "0.500x raw-ring [0.450-0.550]", "(baseline)", "os-pipe"]
        {
            assert!(svg.contains(want), "{want} missing");
        }
        assert!(!svg.contains("broken"), "a row without a figure gets no bar");
        assert_eq!(svg.matches("<rect").count(), 1 + 3, "background and three bars");
    }
}
