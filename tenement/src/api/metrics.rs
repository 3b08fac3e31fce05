//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! A [`Metrics`] registry holds collectors: functions that write their families into an
//! [`Exposition`] each time `/metrics` is scraped. The API registers the supervisor's view
//! (instance state, restarts, weights); other parts (the proxy's request counters, the eBPF
//! monitor's kernel counters) register their own with [`Metrics::register`]. Collectors read
//! live state when scraped, so nothing is copied or kept in step by hand.

use std::{
    fmt::Write,
    sync::{Arc, RwLock},
};

/// A collector appends its families to the exposition on every scrape.
pub type Collector = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    collectors: RwLock<Vec<Collector>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Adds a collector; it is called on every scrape, in registration order.
    pub fn register(&self, collector: impl Fn(&mut Exposition) + Send + Sync + 'static) {
        self.collectors
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::new(collector));
    }

    /// The whole exposition, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let collectors = self
            .collectors
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut exposition = Exposition::default();
        for collector in collectors {
            collector(&mut exposition);
        }
        exposition.text
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text being built for one scrape.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its `# HELP` and `# TYPE` lines. Samples of it follow.
    /// Names follow Prometheus conventions: `tenement_` prefix, `_total` for counters,
    /// base units (`_bytes`, `_seconds`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample: `name{label="value",...} value`. For histograms, `name` carries the
    /// `_bucket`/`_sum`/`_count` suffix and buckets an `le` label.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    /// The text so far (for tests of a collector).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_from_every_collector() {
        let metrics = Metrics::new();
        metrics.register(|out| {
            out.family("tenement_up", Kind::Gauge, "1 while tenement serves")
                .sample("tenement_up", &[], 1.0);
        });
        metrics.register(|out| {
            out.family("tenement_x_total", Kind::Counter, "odd \"labels\"")
                .sample("tenement_x_total", &[("instance", "a\"b\\c\nd")], 2.5);
        });
        assert_eq!(
            metrics.render(),
            "# HELP tenement_up 1 while tenement serves\n\
             # TYPE tenement_up gauge\n\
             tenement_up 1\n\
             # HELP tenement_x_total odd \"labels\"\n\
             # TYPE tenement_x_total counter\n\
             tenement_x_total{instance=\"a\\\"b\\\\c\\nd\"} 2.5\n"
        );
    }
}
