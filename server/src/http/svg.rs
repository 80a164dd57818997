//! The SVG charts of the dashboard: bars and lines per closed round on a
//! linear or log value axis, drawn as plain markup with no script.

use convoy_shared::units::human_bytes;
use convoy_store::RoundRow;
use std::fmt::Write as _;

/// Text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Draw {
    /// Bars, stacked on the chart's other bar series.
    Bar,
    /// A line with a dot per round.
    Line,
}

#[derive(Debug)]
pub(super) struct Series {
    pub(super) name: &'static str,
    pub(super) color: &'static str,
    pub(super) draw: Draw,
    pub(super) values: Vec<Option<f64>>,
}

#[derive(Debug)]
pub(super) struct Chart {
    pub(super) metric: &'static str,
    pub(super) title: String,
    pub(super) log: bool,
    pub(super) format: fn(f64) -> String,
    pub(super) series: Vec<Series>,
}

pub(super) const W: f64 = 600.0;
pub(super) const H: f64 = 220.0;
pub(super) const LEFT: f64 = 64.0;
pub(super) const RIGHT: f64 = 10.0;
pub(super) const TOP: f64 = 10.0;
pub(super) const BOTTOM: f64 = 26.0;

pub(super) fn bytes(v: f64) -> String {
    human_bytes(v.max(0.0) as u64)
}

pub(super) fn plain(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub(super) fn ratio(v: f64) -> String {
    format!("{v:.1}x")
}

pub(super) fn seconds(v: f64) -> String {
    format!("{v:.2}s")
}

pub(super) fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

impl Chart {
    /// The value axis: maps a value to a y coordinate.
    fn scale(&self) -> Box<dyn Fn(f64) -> f64> {
        let rounds = self.series.first().map_or(0, |s| s.values.len());
        let mut max: f64 = 0.0;
        let mut min_pos = f64::INFINITY;
        for i in 0..rounds {
            let stack: f64 = self
                .series
                .iter()
                .filter(|s| s.draw == Draw::Bar)
                .filter_map(|s| s.values[i])
                .sum();
            max = max.max(stack);
            for s in &self.series {
                if let Some(v) = s.values[i] {
                    max = max.max(v);
                    if v > 0.0 {
                        min_pos = min_pos.min(v);
                    }
                }
            }
        }
        let max = if max > 0.0 { max * 1.05 } else { 1.0 };
        let plot = H - TOP - BOTTOM;
        if self.log && min_pos.is_finite() {
            let lo = (min_pos / 2.0).log10();
            let hi = max.log10().max(lo + 1e-9);
            Box::new(move |v: f64| {
                let l = v.max(min_pos / 2.0).log10();
                TOP + plot * (1.0 - (l - lo) / (hi - lo))
            })
        } else {
            Box::new(move |v: f64| TOP + plot * (1.0 - v.max(0.0) / max))
        }
    }

    fn top_value(&self) -> f64 {
        let rounds = self.series.first().map_or(0, |s| s.values.len());
        (0..rounds)
            .map(|i| {
                let stack: f64 = self
                    .series
                    .iter()
                    .filter(|s| s.draw == Draw::Bar)
                    .filter_map(|s| s.values[i])
                    .sum();
                self.series
                    .iter()
                    .filter_map(|s| s.values[i])
                    .fold(stack, f64::max)
            })
            .fold(0.0, f64::max)
    }

    pub(super) fn render(&self, rounds: &[u64]) -> String {
        let y = self.scale();
        let n = rounds.len().max(1) as f64;
        let step = (W - LEFT - RIGHT) / n;
        let x = |i: usize| LEFT + step * (i as f64 + 0.5);
        let base = H - BOTTOM;
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<figure class=\"chart\" data-metric=\"{}\"><figcaption>{}</figcaption>\
             <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
            self.metric,
            esc(&self.title),
            esc(&self.title)
        );
        // axes and two value labels
        let top = self.top_value();
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\"/>\
             <line class=\"axis\" x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <text class=\"tick\" x=\"{}\" y=\"{base}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y(top) + 4.0,
            esc(&(self.format)(top)),
            LEFT - 4.0,
            if self.log { "" } else { "0" },
        );
        if let (Some(first), Some(last)) = (rounds.first(), rounds.last()) {
            let _ = write!(
                svg,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">round {first}</text>",
                x(0),
                H - 8.0
            );
            if rounds.len() > 1 {
                let _ = write!(
                    svg,
                    "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{last}</text>",
                    x(rounds.len() - 1),
                    H - 8.0
                );
            }
        }
        for s in self.series.iter().filter(|s| s.draw == Draw::Line) {
            let points: Vec<String> = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            let _ = write!(
                svg,
                "<polyline class=\"line\" fill=\"none\" stroke=\"{}\" points=\"{}\"/>",
                s.color,
                points.join(" ")
            );
        }
        let bar_w = (step * 0.7).max(1.0);
        for (i, round) in rounds.iter().enumerate() {
            let mut tip = format!("round {round}");
            let _ = write!(svg, "<g class=\"pt\" data-round=\"{round}\">");
            let mut stacked = 0.0;
            for s in &self.series {
                let Some(v) = s.values[i] else { continue };
                let _ = write!(tip, "\n{}: {}", s.name, (self.format)(v));
                match s.draw {
                    Draw::Bar => {
                        let (y0, y1) = (y(stacked), y(stacked + v));
                        stacked += v;
                        let _ = write!(
                            svg,
                            "<rect x=\"{:.1}\" y=\"{y1:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                            x(i) - bar_w / 2.0,
                            (y0 - y1).max(0.0),
                            s.color
                        );
                    }
                    Draw::Line => {
                        let _ = write!(
                            svg,
                            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                            x(i),
                            y(v),
                            s.color
                        );
                    }
                }
            }
            let _ = write!(svg, "<title>{}</title></g>", esc(&tip));
        }
        svg.push_str("</svg><div class=\"legend\">");
        for s in &self.series {
            let _ = write!(
                svg,
                "<span><i style=\"background:{}\"></i>{}</span>",
                s.color,
                esc(s.name)
            );
        }
        svg.push_str("</div></figure>");
        svg
    }
}

pub(super) fn series(
    name: &'static str,
    color: &'static str,
    draw: Draw,
    rounds: &[&RoundRow],
    f: impl Fn(&RoundRow) -> Option<f64>,
) -> Series {
    Series {
        name,
        color,
        draw,
        values: rounds.iter().map(|r| f(r)).collect(),
    }
}

pub(super) const BLUE: &str = "#2b6cb0";
pub(super) const ORANGE: &str = "#dd6b20";
pub(super) const GREY: &str = "#a0aec0";
pub(super) const GREEN: &str = "#2f855a";
pub(super) const RED: &str = "#c53030";
pub(super) const PURPLE: &str = "#6b46c1";
