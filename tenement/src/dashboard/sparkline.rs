//! Inline-SVG sparklines: a polyline scaled to its own maximum, no script needed.

use maud::{html, Markup};

const WIDTH: f32 = 160.0;
const HEIGHT: f32 = 32.0;

/// A sparkline of `values` (oldest first), labelled for screen readers with `label` and the
/// latest value.
pub fn sparkline(values: &[f32], label: &str, latest: &str) -> Markup {
    let max = values.iter().copied().fold(0.0_f32, f32::max);
    let step = if values.len() > 1 {
        WIDTH / (values.len() - 1) as f32
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let y = if max > 0.0 {
                HEIGHT - value / max * (HEIGHT - 2.0) - 1.0
            } else {
                HEIGHT - 1.0
            };
            format!("{:.1},{:.1}", index as f32 * step, y)
        })
        .collect();
    html! {
        figure.spark {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT)
                role="img" aria-label={ (label) ": " (latest) } {
                polyline points=(points.join(" ")) fill="none" stroke="currentColor" stroke-width="1.5" {}
            }
            figcaption { (label) " " strong { (latest) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_to_the_maximum() {
        let svg = sparkline(&[0.0, 5.0, 10.0], "CPU", "10%").into_string();
        assert!(
            svg.contains("points=\"0.0,31.0 80.0,16.0 160.0,1.0\""),
            "{svg}"
        );
        assert!(svg.contains("aria-label=\"CPU: 10%\""), "{svg}");
        assert!(sparkline(&[], "x", "–").into_string().contains("<svg"));
    }
}
