//! The chart of a run (pure: raw results in, SVG text out): each job's time from create to
//! `Succeeded`, jobs sorted, one panel per size and one line per operator.

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::raw::{RawResults, RawRow};

/// The axis titles.
pub const X_TITLE: &str = "jobs, sorted by time to Succeeded (% of the size's jobs)";
pub const Y_TITLE: &str = "seconds from create to Succeeded";

const PANEL: (u32, u32) = (600, 520);
/// Below each panel's plot: its legend, a row per operator.
const LEGEND_HEIGHT: i32 = 84;
const LEGEND_ROW: i32 = 22;
const TITLE_HEIGHT: u32 = 40;
const FONT: &str = "sans-serif";

/// An operator's colour: ours blue, training-operator tuned orange and with its defaults
/// red, the same in every panel; any other from a palette by its first place in the rows.
fn colour(label: &str, place: usize) -> RGBColor {
    let kubeflow = label.starts_with("training-operator");
    let base = label.split(" (").next().unwrap_or(label);
    if base == "tfjob-operator" {
        RGBColor(31, 119, 180)
    } else if kubeflow && base.ends_with(" tuned") {
        RGBColor(255, 127, 14)
    } else if kubeflow && base.ends_with(" defaults") {
        RGBColor(214, 39, 40)
    } else {
        const OTHERS: [RGBColor; 4] =
            [RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(127, 127, 127)];
        OTHERS[place % OTHERS.len()]
    }
}

/// A row's line, a step per succeeded job in order of its time: the k-th of the row's n
/// jobs spans k-1..k as a percentage of n at its seconds to `Succeeded`. Jobs that never
/// succeeded are left out, so the line ends short of 100 %.
pub fn line(row: &RawRow) -> Vec<(f64, f64)> {
    let mut times: Vec<f64> =
        row.per_job.iter().filter_map(|j| j.to_succeeded_s).filter(|t| t.is_finite()).collect();
    times.sort_by(f64::total_cmp);
    let n = row.jobs.max(times.len()).max(1) as f64;
    let at = |k: usize| k as f64 * 100.0 / n;
    times.into_iter().enumerate().flat_map(|(i, t)| [(at(i), t), (at(i + 1), t)]).collect()
}

/// The sizes drawn, ascending: those of the rows other than the huge-job row.
pub fn sizes(raw: &RawResults) -> Vec<usize> {
    let mut sizes: Vec<usize> = raw.rows.iter().filter(|r| !r.huge).map(|r| r.jobs).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The chart as SVG text: a panel per size (up to three side by side), titled with the run's
/// date and commit when known.
pub fn svg(raw: &RawResults) -> Result<String> {
    let sizes = sizes(raw);
    if sizes.is_empty() {
        return Err(anyhow!("no rows to draw"));
    }
    let cols = sizes.len().min(3);
    let rows = sizes.len().div_ceil(cols);
    let (w, h) = (PANEL.0 * cols as u32, PANEL.1 * rows as u32 + TITLE_HEIGHT);
    let mut title = "tfjob-bench: time from create to Succeeded, per job".to_string();
    let when: Vec<&str> = [raw.date.as_deref(), raw.commit.as_deref()].into_iter().flatten().collect();
    if !when.is_empty() {
        title.push_str(&format!(" ({})", when.join(", commit ")));
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let root = root.titled(&title, (FONT, 24)).map_err(draw_error)?;
        let labels: Vec<&str> = raw.rows.iter().map(|r| r.operator.as_str()).collect();
        for (area, &n) in root.split_evenly((rows, cols)).iter().zip(&sizes) {
            let lines: Vec<(&str, Vec<(f64, f64)>)> = raw
                .rows
                .iter()
                .filter(|r| r.jobs == n && !r.huge)
                .map(|r| (r.operator.as_str(), line(r)))
                .collect();
            panel(area, n, &lines, &labels)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(out)
}

/// One size's panel: a line per operator, with its legend below the plot.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    n: usize,
    lines: &[(&str, Vec<(f64, f64)>)],
    labels: &[&str],
) -> Result<()> {
    let top = lines.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let y_max = if top > 0.0 { top * 1.08 } else { 1.0 };
    let (plot, legend) = area.split_vertically(area.dim_in_pixel().1 as i32 - LEGEND_HEIGHT);
    let mut chart = ChartBuilder::on(&plot)
        .caption(format!("{n} jobs"), (FONT, 24))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(58)
        .build_cartesian_2d(0.0..100.0, 0.0..y_max)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(X_TITLE)
        .y_desc(Y_TITLE)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 16))
        .max_light_lines(1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| if y_max < 10.0 { format!("{y:.1}") } else { format!("{y:.0}") })
        .draw()
        .map_err(draw_error)?;
    let mut keys = Vec::new();
    for (label, points) in lines {
        let place = labels.iter().position(|l| l == label).unwrap_or(0);
        let c = colour(label, place);
        chart.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2))).map_err(draw_error)?;
        keys.push((format!("{label} ({} of {n} succeeded)", points.len() / 2), c));
    }
    for (i, (text, c)) in keys.into_iter().enumerate() {
        let y = 8 + i as i32 * LEGEND_ROW;
        legend.draw(&PathElement::new(vec![(72, y), (102, y)], c.stroke_width(2))).map_err(draw_error)?;
        legend.draw(&Text::new(text, (110, y - 9), (FONT, 17))).map_err(draw_error)?;
    }
    Ok(())
}

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::raw::JobTimes;

    const OURS: &str = "tfjob-operator";
    const TUNED: &str = "training-operator v1.9.2 tuned";
    const DEFAULTS: &str = "training-operator v1.9.2 defaults";

    fn row(operator: &str, jobs: usize, huge: bool, times: &[Option<f64>]) -> RawRow {
        let per_job = times
            .iter()
            .enumerate()
            .map(|(i, t)| JobTimes { name: format!("j-{i}"), to_succeeded_s: *t, ..Default::default() })
            .collect();
        RawRow { operator: operator.into(), jobs, huge, per_job }
    }

    fn fixture() -> RawResults {
        RawResults {
            date: Some("2026-12-02T05:59:00Z".into()),
            commit: Some("abc1234".into()),
            jobs_shape: "1 PS + 4 Workers".into(),
            rows: vec![
                row(OURS, 4, false, &[Some(6.0), Some(5.0), Some(7.5), Some(5.5)]),
                row(OURS, 2, false, &[Some(5.2), Some(5.1)]),
                row(OURS, 2, true, &[Some(90.0), Some(91.0)]),
                row(TUNED, 2, false, &[Some(4.7), Some(4.6)]),
                row(TUNED, 4, false, &[Some(9.0), None, Some(8.0), Some(8.5)]),
                row(DEFAULTS, 2, false, &[Some(14.0), Some(9.9)]),
            ],
        }
    }

    /// The drawn polylines of width 2 (series and legend samples): (stroke, number of points).
    fn lines_of(svg: &str) -> Vec<(String, usize)> {
        let attr = |l: &str, k: &str| {
            l.split(&format!(" {k}=\"")).nth(1).and_then(|r| r.split('"').next()).map(str::to_string)
        };
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && attr(l, "stroke-width").as_deref() == Some("2"))
            .map(|l| {
                (
                    attr(l, "stroke").unwrap_or_default(),
                    attr(l, "points").unwrap_or_default().split_whitespace().count(),
                )
            })
            .collect()
    }

    #[test]
    fn chart_has_a_panel_per_size_and_a_line_per_operator() {
        let svg = svg(&fixture()).unwrap();
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains("per job (2026-12-02T05:59:00Z, commit abc1234)"), "title with date and commit");
        let count = |t: &str| svg.matches(t).count();
        // Two panels (2 and 4 jobs; the huge-job row has none), each with both axis titles.
        assert_eq!((count(">\n2 jobs\n<"), count(">\n4 jobs\n<")), (1, 1));
        assert_eq!(count(">\nseconds from create to Succeeded\n<"), 2);
        assert_eq!(count(">\njobs, sorted by time to Succeeded (% of the size&apos;s jobs)\n<"), 2);
        // Each panel's y axis reaches its slowest job (14 s and 9 s), its x axis 100 %.
        assert_eq!((count(">\n14\n<"), count(">\n16\n<")), (1, 0), "2 jobs: ticks 0 to 14 s");
        assert_eq!((count(">\n9.0\n<"), count(">\n10.0\n<")), (1, 0), "4 jobs: ticks 0.0 to 9.0 s");
        assert_eq!(count(">\n100\n<"), 2);
        // A legend entry per operator and panel, counting the jobs that succeeded.
        for (entry, n) in [
            ("tfjob-operator (2 of 2 succeeded)", 1),
            ("tfjob-operator (4 of 4 succeeded)", 1),
            ("training-operator v1.9.2 tuned (2 of 2 succeeded)", 1),
            ("training-operator v1.9.2 tuned (3 of 4 succeeded)", 1),
            ("training-operator v1.9.2 defaults (2 of 2 succeeded)", 1),
            ("defaults (4 of", 0),
        ] {
            assert_eq!(count(&format!(">\n{entry}\n<")), n, "{entry}");
        }
        // In order: the 2-jobs panel's three lines, its legend, the 4-jobs panel's two lines,
        // its legend; a step (two points) per succeeded job, in each operator's colour.
        let (ours, tuned, defaults) = ("#1F77B4".to_string(), "#FF7F0E".to_string(), "#D62728".to_string());
        let want = vec![
            (ours.clone(), 4),
            (tuned.clone(), 4),
            (defaults.clone(), 4),
            (ours.clone(), 2),
            (tuned.clone(), 2),
            (defaults, 2),
            (ours.clone(), 8),
            (tuned.clone(), 6),
            (ours, 2),
            (tuned, 2),
        ];
        assert_eq!(lines_of(&svg), want);
    }

    #[test]
    fn a_line_is_the_sorted_times_as_steps() {
        type Case = (&'static str, RawRow, Vec<(f64, f64)>);
        let cases: Vec<Case> = vec![
            (
                "sorted",
                row(OURS, 2, false, &[Some(6.0), Some(5.0)]),
                vec![(0.0, 5.0), (50.0, 5.0), (50.0, 6.0), (100.0, 6.0)],
            ),
            ("one never succeeded", row(OURS, 2, false, &[None, Some(3.0)]), vec![(0.0, 3.0), (50.0, 3.0)]),
            ("not finite left out", row(OURS, 1, false, &[Some(f64::NAN)]), vec![]),
            ("none", row(OURS, 0, false, &[]), vec![]),
        ];
        for (name, r, want) in cases {
            assert_eq!(line(&r), want, "{name}");
        }
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let mut raw = fixture();
        raw.rows.retain(|r| r.huge);
        assert_eq!(sizes(&raw), Vec::<usize>::new());
        assert!(svg(&raw).is_err());
    }
}
