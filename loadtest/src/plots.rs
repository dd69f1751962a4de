//! Pictures of a run (`loadtest run --plots DIR`): one SVG per latency with a CDF line per
//! tenant, and output tokens per second over the run, per tenant and overall. A CDF shows the
//! whole distribution at once: where the bulk sits, how long the tail is, and which tenant pays.
//! Each tenant keeps its colour in every picture (and in every report with the same tenants):
//! colours follow the tenants' sorted labels, the overall line is black. A latency with an SLO
//! in the scenario gets a dashed vertical line at its threshold.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::{tokens_per_second, Outcome, Report, RequestRecord};
use crate::scenario::Slo;

/// Why the pictures could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot create {path}: {source}")]
    /// The output folder could not be created.
    Dir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    /// A picture could not be drawn.
    Draw {
        /// The picture.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// What one CDF counts: requests, or the gaps between tokens (many per request).
#[derive(Clone, Copy)]
enum Counted {
    Requests,
    TokenGaps,
}

/// The latencies drawn as CDFs: file stem, axis label, what a point counts, the values of one
/// request, and the scenario's SLO for it.
type Extract = fn(&RequestRecord) -> Vec<f64>;
type SloOf = fn(&Slo) -> Option<f64>;
const LATENCIES: [(&str, &str, Counted, Extract, SloOf); 4] = [
    (
        "ttft_cdf",
        "time to first token (ms)",
        Counted::Requests,
        |r| r.ttft_ms.into_iter().collect(),
        |slo| slo.ttft_ms,
    ),
    (
        "itl_cdf",
        "inter-token latency (ms)",
        Counted::TokenGaps,
        |r| r.itl_ms.clone(),
        // The TPOT objective bounds the mean gap, not each gap: no line here.
        |_| None,
    ),
    (
        "tpot_cdf",
        "time per output token (ms)",
        Counted::Requests,
        |r| r.tpot_ms().into_iter().collect(),
        |slo| slo.tpot_ms,
    ),
    (
        "e2el_cdf",
        "end-to-end latency (ms)",
        Counted::Requests,
        |r| vec![r.e2el_ms],
        |slo| slo.e2el_ms,
    ),
];

/// The colour of `tenant` in every picture of `report`.
fn tenant_colour(report: &Report, tenant: &str) -> RGBColor {
    let index = report.tenants.keys().position(|t| t == tenant).unwrap_or(0);
    let (r, g, b) = Palette99::pick(index).rgb();
    RGBColor(r, g, b)
}

/// Writes every picture of `report` into `dir` (created if missing); returns the files written.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (stem, label, counted, extract, slo_of) in LATENCIES {
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
        let chart = CdfChart {
            x_label: label,
            counted,
            slo: slo_of(&report.slo),
        };
        draw_cdf(&path, &chart, report, &series).map_err(|message| PlotError::Draw {
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

/// What one CDF picture shows.
struct CdfChart<'a> {
    x_label: &'a str,
    counted: Counted,
    slo: Option<f64>,
}

fn draw_cdf(
    path: &Path,
    chart_of: &CdfChart<'_>,
    report: &Report,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let x_label = chart_of.x_label;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .chain(chart_of.slo)
        .fold(0.0_f64, f64::max)
        .max(1e-3)
        * 1.05;
    let (y_desc, unit) = match chart_of.counted {
        Counted::Requests => ("fraction of requests at or below", "requests"),
        Counted::TokenGaps => ("fraction of token gaps at or below", "gaps"),
    };
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
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for (tenant, points) in series {
        let colour = tenant_colour(report, tenant).stroke_width(2);
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
            .label(format!("{tenant} (n={} {unit})", points.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    if let Some(slo) = chart_of.slo {
        let style = RED.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(slo, 0.0), (slo, 1.0)], 8, 6, style))
            .map_err(|e| e.to_string())?
            .label(format!("SLO {slo} ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
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
        // The overall line is black; each tenant has its colour of the CDF pictures.
        let colour = match i {
            0 => BLACK.stroke_width(2),
            _ => tenant_colour(report, name).stroke_width(2),
        };
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
            cached_tokens: 0,
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
        assert!(ttft.contains("fraction of requests at or below"));
        let itl = std::fs::read_to_string(dir.path().join("itl_cdf.svg")).unwrap();
        assert!(itl.contains("fraction of token gaps at or below"));
        assert!(itl.contains("gaps)"));
        // One data line per tenant (legend swatches are paths too, and the mesh is lines).
        assert!(ttft.matches("<polyline").count() >= 2);
    }

    /// The `stroke` colours of an SVG's polylines, in drawing order.
    fn line_colours(svg: &str) -> Vec<String> {
        svg.split("<polyline")
            .skip(1)
            .filter_map(|p| p.split("stroke=\"").nth(1))
            .map(|p| p.split('"').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_tenant_keeps_its_colour_across_pictures_and_slos_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        // The throughput picture draws the overall line first: a colour taken from the drawing
        // order would shift every tenant by one between pictures.
        let slo = Slo {
            ttft_ms: Some(250.0),
            ..Slo::default()
        };
        let report = Report::new(
            "http://x",
            "m",
            2.0,
            vec![
                record("alpha", 0.0, 100.0, 500.0, 5),
                record("beta", 200.0, 300.0, 1500.0, 7),
            ],
            &slo,
        );
        write_plots(&report, dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let ttft = read("ttft_cdf.svg");
        let throughput = read("throughput.svg");
        let alpha = tenant_colour(&report, "alpha");
        let beta = tenant_colour(&report, "beta");
        assert_ne!(alpha, beta);
        let hex = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        let ttft_lines = line_colours(&ttft);
        let throughput_lines = line_colours(&throughput);
        for colour in [hex(alpha), hex(beta)] {
            assert!(ttft_lines.contains(&colour), "{colour} {ttft_lines:?}");
            assert!(
                throughput_lines.contains(&colour),
                "{colour} {throughput_lines:?}"
            );
        }
        // The overall line is black, and only in the throughput picture.
        assert!(throughput_lines.contains(&"#000000".to_string()));
        assert!(ttft.contains("SLO 250 ms"));
        assert!(!read("e2el_cdf.svg").contains("SLO"));
    }
}
