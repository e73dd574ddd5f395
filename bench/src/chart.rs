//! SVG bar charts: one group per scenario, bars scaled to the group's reference (its
//! limit or baseline), so groups of different scales share one axis.

/// One bar: a label, its value, and the text printed after it.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
}

/// Bars scaled against `reference` (drawn as the dashed line).
#[derive(Debug, Clone)]
pub struct Group {
    pub title: String,
    pub reference: f64,
    pub bars: Vec<Bar>,
}

fn colour(label: &str) -> &'static str {
    let label = label.to_lowercase();
    if label.contains("eddy") {
        "#2e86de"
    } else if label.contains("raw")
        || label.contains("pgbench")
        || label.contains("limit")
        || label.contains("batched")
    {
        "#7f8c8d"
    } else if label.contains("fastify") {
        "#27ae60"
    } else if label.contains("fastapi") || label.contains("faststream") {
        "#e67e22"
    } else {
        "#999999"
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart, titled `title`.
pub fn svg(title: &str, groups: &[Group]) -> String {
    let bar_h = 16.0;
    let group_gap = 28.0;
    let left = 190.0;
    let width = 480.0;
    let mut y = 40.0;
    let mut body = String::new();
    for group in groups {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>\n",
            y - 6.0,
            escape(&group.title)
        ));
        for bar in &group.bars {
            let fraction = if group.reference > 0.0 {
                (bar.value / group.reference).clamp(0.0, 1.5)
            } else {
                0.0
            };
            body.push_str(&format!(
                "<text x=\"20\" y=\"{:.0}\">{}</text><rect x=\"{left}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{bar_h}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n",
                y + 12.0,
                escape(&bar.label),
                y,
                fraction * width,
                colour(&bar.label),
                left + fraction * width + 6.0,
                y + 12.0,
                escape(&bar.text)
            ));
            y += bar_h + 4.0;
        }
        body.push_str(&format!(
            "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#c0392b\" stroke-dasharray=\"4\"/>\n",
            left + width,
            y - (bar_h + 4.0) * group.bars.len() as f64 - 2.0,
            left + width,
            y - 2.0
        ));
        y += group_gap;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n<line x1=\"{left}\" y1=\"26\" x2=\"{left}\" y2=\"{:.0}\" stroke=\"#333\"/>\n{body}</svg>\n",
        y,
        escape(title),
        y - group_gap
    )
}
