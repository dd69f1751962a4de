//! The usage chart of a tenant's page: tokens per day as bars, drawn server-side as SVG by
//! plotters (as the load-test harness draws its pictures): no script, no font file, no request
//! beyond the page.

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
}

/// The SVG of `days` (oldest first): prompt and completion tokens stacked per day.
pub fn tokens_per_day(days: &[Day]) -> String {
    let mut svg = String::new();
    if let Err(error) = draw(days, &mut svg) {
        tracing::warn!(%error, "the usage chart failed to draw");
        return String::new();
    }
    svg
}

fn draw<'a>(days: &[Day], svg: &'a mut String) -> Result<(), Box<dyn std::error::Error + 'a>> {
    let root = SVGBackend::with_string(svg, (760, 280)).into_drawing_area();
    root.fill(&WHITE)?;
    let most = days
        .iter()
        .map(|d| d.prompt_tokens + d.completion_tokens)
        .max()
        .unwrap_or(0)
        .max(1);
    let count = days.len().max(1) as u32;
    let labels: Vec<String> = days.iter().map(|d| d.day.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Tokens per day (UTC)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..count).into_segmented(), 0u64..most + most / 10 + 1)?;
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
        .y_desc("tokens")
        .draw()?;
    let prompt = RGBColor(0x2b, 0x6c, 0xb0);
    let completion = RGBColor(0xe0, 0x8a, 0x1e);
    chart
        .draw_series(days.iter().enumerate().map(|(i, d)| {
            let i = i as u32;
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0),
                    (SegmentValue::Exact(i + 1), d.prompt_tokens),
                ],
                prompt.filled(),
            )
        }))?
        .label("prompt")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], prompt.filled()));
    chart
        .draw_series(days.iter().enumerate().map(|(i, d)| {
            let i = i as u32;
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), d.prompt_tokens),
                    (
                        SegmentValue::Exact(i + 1),
                        d.prompt_tokens + d.completion_tokens,
                    ),
                ],
                completion.filled(),
            )
        }))?
        .label("completion")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], completion.filled()));
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

    #[test]
    fn the_chart_draws_a_bar_per_day_and_names_its_days() {
        let days = [
            Day {
                day: "2026-12-06".into(),
                prompt_tokens: 100,
                completion_tokens: 50,
            },
            Day {
                day: "2026-12-07".into(),
                prompt_tokens: 40,
                completion_tokens: 10,
            },
        ];
        let svg = tokens_per_day(&days);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("2026-12-06") && svg.contains("2026-12-07"));
        // Two days, two stacked parts each, plus the legend's two swatches.
        let bars =
            svg.matches("fill=\"#2B6CB0\"").count() + svg.matches("fill=\"#E08A1E\"").count();
        assert!(bars >= 4, "{svg}");
        assert!(
            !svg.contains("style="),
            "inline styles would be refused by the CSP"
        );
    }
}
