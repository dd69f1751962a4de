//! Pictures of a run (`loadtest run --plots DIR`): one SVG per latency with a CDF line per
//! tenant, and output tokens per second over the run, per tenant and overall. A CDF shows the
//! whole distribution at once: where the bulk sits, how long the tail is, and which tenant pays.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{tokens_per_second, Outcome, Report, RequestRecord};

/// Why the pictures could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// The latencies drawn as CDFs: file stem, axis label, and the values of one request.
type Extract = fn(&RequestRecord) -> Vec<f64>;
const LATENCIES: [(&str, &str, Extract); 4] = [
    ("ttft_cdf", "time to first token (ms)", |r| {
        r.ttft_ms.into_iter().collect()
    }),
    ("itl_cdf", "inter-token latency (ms)", |r| r.itl_ms.clone()),
    ("tpot_cdf", "time per output token (ms)", |r| {
        r.tpot_ms().into_iter().collect()
    }),
    ("e2el_cdf", "end-to-end latency (ms)", |r| vec![r.e2el_ms]),
];

/// Writes every picture of `report` into `dir` (created if missing); returns the files written.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (stem, label, extract) in LATENCIES {
        let series: Vec<(String, Vec<(f64, f64)>)> = report
            .tenants
            .keys()
            .map(|tenant| {
                let values = report
                    .requests
                    .iter()
                    .filter(|r| &r.tenant == tenant && r.outcome == Outcome::Ok)
                    .flat_map(extract);
                (tenant.clone(), cdf_points(values))
            })
            .filter(|(_, points)| !points.is_empty())
            .collect();
        if series.is_empty() {
            continue; // e.g. no streamed request: no TTFT to draw
        }
        let path = dir.join(format!("{stem}.svg"));
        draw_cdf(&path, label, &series).map_err(|message| PlotError::Draw {
            path: path.clone(),
            message,
        })?;
        written.push(path);
    }
    let path = dir.join("throughput.svg");
    draw_throughput(&path, report).map_err(|message| PlotError::Draw {
        path: path.clone(),
        message,
    })?;
    written.push(path);
    Ok(written)
}

/// The empirical CDF: sorted values, each with the fraction of values at or below it.
pub fn cdf_points(values: impl IntoIterator<Item = f64>) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.into_iter()
        .enumerate()
        .map(|(i, x)| (x, (i + 1) as f64 / n))
        .collect()
}

fn draw_cdf(
    path: &Path,
    x_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.05;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("CDF of {x_label}"), ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("fraction of requests at or below")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (tenant, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).stroke_width(2);
        // A step line: the CDF jumps at each value.
        let mut steps = Vec::with_capacity(points.len() * 2 + 1);
        let mut previous = 0.0;
        steps.push((points[0].0, 0.0));
        for &(x, y) in points {
            steps.push((x, previous));
            steps.push((x, y));
            previous = y;
        }
        chart
            .draw_series(LineSeries::new(steps, colour))
            .map_err(|e| e.to_string())?
            .label(format!("{tenant} (n={})", points.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

fn draw_throughput(path: &Path, report: &Report) -> Result<(), String> {
    let per_second = |tenant| tokens_per_second(&report.requests, report.duration_s, tenant);
    let mut series: Vec<(String, Vec<u64>)> = vec![("overall".into(), per_second(None))];
    if report.tenants.len() > 1 {
        for tenant in report.tenants.keys() {
            series.push((tenant.clone(), per_second(Some(tenant))));
        }
    }
    let seconds = series[0].1.len();
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Output tokens per second ({})", report.url),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds as f64, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run (by request completion)")
        .y_desc("output tokens / s")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, values)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).stroke_width(2);
        // Each bucket drawn at its midpoint.
        let points = values
            .iter()
            .enumerate()
            .map(|(s, &v)| (s as f64 + 0.5, v as f64));
        chart
            .draw_series(LineSeries::new(points, colour))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Slo;

    fn record(tenant: &str, sent_at_ms: f64, ttft: f64, e2el: f64, tokens: u64) -> RequestRecord {
        RequestRecord {
            tenant: tenant.into(),
            outcome: Outcome::Ok,
            status: Some(200),
            sent_at_ms,
            ttft_ms: Some(ttft),
            itl_ms: vec![(e2el - ttft) / (tokens - 1) as f64; tokens as usize - 1],
            e2el_ms: e2el,
            prompt_tokens: 10,
            output_tokens: tokens,
            error: None,
        }
    }

    #[test]
    fn cdf_is_sorted_and_ends_at_one() {
        assert!(cdf_points(Vec::<f64>::new()).is_empty());
        let points = cdf_points([30.0, 10.0, f64::NAN, 20.0, 40.0]);
        assert_eq!(
            points,
            vec![(10.0, 0.25), (20.0, 0.5), (30.0, 0.75), (40.0, 1.0)]
        );
    }

    #[test]
    fn tokens_per_second_splits_by_tenant_and_completion_second() {
        let report = Report::new(
            "http://x",
            "m",
            3.0,
            vec![
                record("a", 0.0, 100.0, 500.0, 5),
                record("b", 200.0, 100.0, 1500.0, 7),
                record("a", 2000.0, 50.0, 900.0, 3),
            ],
            &Slo::default(),
        );
        let per_second = |t| tokens_per_second(&report.requests, 3.0, t);
        assert_eq!(report.output_tokens_per_second, vec![5, 7, 3]);
        assert_eq!(per_second(None), vec![5, 7, 3]);
        assert_eq!(per_second(Some("a")), vec![5, 0, 3]);
        assert_eq!(per_second(Some("b")), vec![0, 7, 0]);
    }

    #[test]
    fn writes_one_svg_per_latency_and_a_throughput_chart_with_every_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::new(
            "http://x",
            "m",
            2.0,
            vec![
                record("alpha", 0.0, 100.0, 500.0, 5),
                record("beta", 200.0, 300.0, 1500.0, 7),
            ],
            &Slo::default(),
        );
        let files = write_plots(&report, dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ttft_cdf.svg",
                "itl_cdf.svg",
                "tpot_cdf.svg",
                "e2el_cdf.svg",
                "throughput.svg"
            ]
        );
        for file in &files {
            let svg = std::fs::read_to_string(file).unwrap();
            assert!(svg.starts_with("<svg"), "{}", file.display());
            // Both tenants appear in the legend of every picture.
            assert!(svg.contains("alpha"), "{}", file.display());
            assert!(svg.contains("beta"), "{}", file.display());
        }
        let ttft = std::fs::read_to_string(dir.path().join("ttft_cdf.svg")).unwrap();
        assert!(ttft.contains("time to first token"));
        // One data line per tenant (legend swatches are paths too, and the mesh is lines).
        assert!(ttft.matches("<polyline").count() >= 2);
    }
}
