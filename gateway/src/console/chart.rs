//! The usage charts of a tenant's page: tokens and cost per day as bars, drawn server-side as
//! SVG by plotters (as the load-test harness draws its pictures): no script, no font file, no
//! request beyond the page.

use plotters::prelude::*;

/// One day's usage.
#[derive(Debug, Clone)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// What the day's requests cost, in minor units of the currency (cents, won).
    pub cost: f64,
}

const PROMPT: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const COMPLETION: RGBColor = RGBColor(0xe0, 0x8a, 0x1e);
const COST: RGBColor = RGBColor(0x1f, 0x7a, 0x3f);

/// One series of bars: its name, colour and a value per day.
struct Series {
    name: &'static str,
    colour: RGBColor,
    values: Vec<f64>,
}

/// The SVG of `days` (oldest first): prompt and completion tokens stacked per day.
pub fn tokens_per_day(days: &[Day]) -> String {
    let series = [
        Series {
            name: "prompt",
            colour: PROMPT,
            values: days.iter().map(|d| d.prompt_tokens as f64).collect(),
        },
        Series {
            name: "completion",
            colour: COMPLETION,
            values: days.iter().map(|d| d.completion_tokens as f64).collect(),
        },
    ];
    svg("Tokens per day (UTC)", "tokens", days, &series)
}

/// The SVG of `days`' cost per day, labelled `unit`.
pub fn cost_per_day(days: &[Day], unit: &str) -> String {
    let series = [Series {
        name: "cost",
        colour: COST,
        values: days.iter().map(|d| d.cost).collect(),
    }];
    svg("Cost per day (UTC)", unit, days, &series)
}

fn svg(caption: &str, unit: &str, days: &[Day], series: &[Series]) -> String {
    let mut svg = String::new();
    if let Err(error) = draw(caption, unit, days, series, &mut svg) {
        tracing::warn!(%error, "a usage chart failed to draw");
        return String::new();
    }
    svg
}

fn draw<'a>(
    caption: &str,
    unit: &str,
    days: &[Day],
    series: &[Series],
    svg: &'a mut String,
) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(svg, (760, 280)).into_drawing_area();
    root.fill(&WHITE)?;
    let totals = (0..days.len()).map(|i| series.iter().map(|s| s.values[i]).sum::<f64>());
    let most = totals.fold(0.0, f64::max);
    let top = if most > 0.0 { most * 1.1 } else { 1.0 };
    let count = days.len().max(1) as u32;
    let labels: Vec<String> = days.iter().map(|d| d.day.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..count).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(days.len().clamp(1, 7))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc(unit)
        .draw()?;
    let mut below = vec![0f64; days.len()];
    for s in series {
        let colour = s.colour;
        let bars: Vec<_> = (0..days.len())
            .map(|i| {
                let (from, to) = (below[i], below[i] + s.values[i]);
                below[i] = to;
                let i = i as u32;
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), from),
                        (SegmentValue::Exact(i + 1), to),
                    ],
                    colour.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days() -> [Day; 2] {
        [
            Day {
                day: "2026-12-06".into(),
                prompt_tokens: 100,
                completion_tokens: 50,
                cost: 0.25,
            },
            Day {
                day: "2026-12-07".into(),
                prompt_tokens: 40,
                completion_tokens: 10,
                cost: 0.0,
            },
        ]
    }

    #[test]
    fn the_token_chart_stacks_a_bar_per_day_and_names_its_days() {
        let svg = tokens_per_day(&days());
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("2026-12-06") && svg.contains("2026-12-07"));
        // Two days, two stacked parts each, plus the legend's two swatches.
        let bars =
            svg.matches("fill=\"#2B6CB0\"").count() + svg.matches("fill=\"#E08A1E\"").count();
        assert!(bars >= 6, "{svg}");
        assert!(
            !svg.contains("style="),
            "inline styles would be refused by the CSP"
        );
    }

    #[test]
    fn the_cost_chart_names_its_currency() {
        let svg = cost_per_day(&days(), "USD");
        assert!(svg.contains("USD") && svg.contains("Cost per day"), "{svg}");
        assert!(svg.matches("fill=\"#1F7A3F\"").count() >= 3, "{svg}");
    }
}
