//! `/metrics` families of the proxy: requests per instance by status class, wakes, and the
//! latency histograms per service, read from the proxy's counters at scrape time.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use super::metrics::{Exposition, Kind, Metrics};
use crate::proxy::{metrics::HistogramReading, RequestMetrics};

/// Adds the proxy's families to `/metrics`.
pub fn register(metrics: &Metrics, requests: Arc<RequestMetrics>) {
    metrics.register(move |out| write(&requests, out));
}

fn write(requests: &RequestMetrics, out: &mut Exposition) {
    let instances = requests.instances();
    let services = requests.services();

    out.family(
        "tenement_proxy_requests_total",
        Kind::Counter,
        "Requests the proxy forwarded to the instance (or answered for it), by status class; \
         code_class=\"none\": no response was sent (the client left first).",
    );
    for (name, slot) in &instances {
        let instance = name.to_string();
        for (class, count) in slot.outcomes.read() {
            out.sample(
                "tenement_proxy_requests_total",
                &[
                    ("instance", &instance),
                    ("service", &name.service),
                    ("code_class", class),
                ],
                count as f64,
            );
        }
    }
    out.family(
        "tenement_proxy_unrouted_requests_total",
        Kind::Counter,
        "Requests answered before reaching any instance (no route, no Host header, no \
         instance with weight, ACME challenges, redirects to HTTPS), by status class.",
    );
    for (class, count) in requests.unrouted().read() {
        out.sample(
            "tenement_proxy_unrouted_requests_total",
            &[("code_class", class)],
            count as f64,
        );
    }
    out.family(
        "tenement_proxy_wakes_total",
        Kind::Counter,
        "Requests that found their instance not running and waited for it to start: \
         result=\"ready\" when it did in time, \"failed\" otherwise.",
    );
    for (name, slot) in &instances {
        let instance = name.to_string();
        for (result, count) in [("ready", &slot.wakes_ready), ("failed", &slot.wakes_failed)] {
            out.sample(
                "tenement_proxy_wakes_total",
                &[
                    ("instance", &instance),
                    ("service", &name.service),
                    ("result", result),
                ],
                count.load(Relaxed) as f64,
            );
        }
    }
    out.family(
        "tenement_proxy_request_timeouts_total",
        Kind::Counter,
        "Requests answered 504 because the instance sent no response headers within its \
         service's request_timeout.",
    );
    for (name, slot) in &instances {
        out.sample(
            "tenement_proxy_request_timeouts_total",
            &[("instance", &name.to_string()), ("service", &name.service)],
            slot.timeouts.load(Relaxed) as f64,
        );
    }
    out.family(
        "tenement_proxy_request_duration_seconds",
        Kind::Histogram,
        "From a request's arrival to the end of its response body, for requests that reached \
         an instance of the service.",
    );
    for (service, slot) in &services {
        histogram(
            out,
            "tenement_proxy_request_duration_seconds",
            service,
            &slot.duration.read(),
        );
    }
    out.family(
        "tenement_proxy_wake_duration_seconds",
        Kind::Histogram,
        "How long requests waited for an instance of the service to start.",
    );
    for (service, slot) in &services {
        histogram(
            out,
            "tenement_proxy_wake_duration_seconds",
            service,
            &slot.wake_duration.read(),
        );
    }
}

fn histogram(out: &mut Exposition, name: &str, service: &str, reading: &HistogramReading) {
    let bucket = format!("{name}_bucket");
    for (bound, count) in &reading.buckets {
        let le = bound.to_string();
        out.sample(&bucket, &[("service", service), ("le", &le)], *count as f64);
    }
    let count = reading.count as f64;
    out.sample(&bucket, &[("service", service), ("le", "+Inf")], count);
    out.sample(
        &format!("{name}_sum"),
        &[("service", service)],
        reading.sum_secs,
    );
    out.sample(&format!("{name}_count"), &[("service", service)], count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut out = Exposition::default();
        let reading = HistogramReading {
            buckets: vec![(0.0005, 1), (0.001, 3)],
            count: 4,
            sum_secs: 2.25,
        };
        histogram(&mut out, "x_seconds", "api", &reading);
        assert_eq!(
            out.as_str(),
            "x_seconds_bucket{service=\"api\",le=\"0.0005\"} 1\n\
             x_seconds_bucket{service=\"api\",le=\"0.001\"} 3\n\
             x_seconds_bucket{service=\"api\",le=\"+Inf\"} 4\n\
             x_seconds_sum{service=\"api\"} 2.25\n\
             x_seconds_count{service=\"api\"} 4\n"
        );
    }

    #[test]
    fn unrouted_requests_show_without_instances() {
        let requests = RequestMetrics::new();
        requests.count_unrouted(404);
        let mut out = Exposition::default();
        write(&requests, &mut out);
        let text = out.as_str();
        assert!(
            text.lines()
                .any(|l| l == "tenement_proxy_unrouted_requests_total{code_class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(!text.contains("instance="), "{text}");
    }
}
