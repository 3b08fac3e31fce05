//! The TLS certificates in the API's view: the expiry gauge on `/metrics` (the status lists
//! them too, see `stats::status`). The TLS manager is attached once the front door exists.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Exposition, Kind, Metrics};
use crate::tls::{CertificateInfo, CertificateSource, Refusal, TlsManager};

/// Registers `tenement_tls_certificate_expiry_timestamp_seconds` (one sample per certificate,
/// labelled by its first name and its source) and `tenement_tls_certificate_errors` (names
/// whose last attempt to obtain or renew failed), read from `manager` at every scrape.
pub fn register_metrics(metrics: &Metrics, manager: TlsManager) {
    metrics.register(move |out| {
        collect(&manager.certificates(), out);
        collect_refusals(&manager.on_demand_refusals(), out);
    });
}

/// `tenement_tls_on_demand_refused_total{reason}`: handshakes whose name got no order.
fn collect_refusals(refusals: &[(Refusal, u64)], out: &mut Exposition) {
    let name = "tenement_tls_on_demand_refused_total";
    out.family(
        name,
        Kind::Counter,
        "On-demand certificate orders refused: the name routes nowhere (unrouted), the ask URL said no (ask), or the on_demand_rate budget was spent (rate).",
    );
    for (refusal, count) in refusals {
        out.sample(name, &[("reason", refusal.label())], *count as f64);
    }
}

fn collect(certificates: &[CertificateInfo], out: &mut Exposition) {
    let name = "tenement_tls_certificate_expiry_timestamp_seconds";
    out.family(
        name,
        Kind::Gauge,
        "When each TLS certificate expires (not after), in seconds since the Unix epoch.",
    );
    for info in certificates {
        if let Some(not_after) = info.not_after {
            out.sample(name, &labels(info), unix_seconds(not_after));
        }
    }
    let name = "tenement_tls_certificate_errors";
    out.family(
        name,
        Kind::Gauge,
        "1 for each certificate name whose last attempt to obtain, renew or reload it failed.",
    );
    for info in certificates {
        if info.last_error.is_some() {
            out.sample(name, &labels(info), 1.0);
        }
    }
}

/// How long before a served certificate expires `GET /health` turns `degraded`. Renewal
/// starts at two thirds of the lifetime (a month ahead for a 90-day certificate), so a
/// certificate this close to its end means renewal has been failing for weeks.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `degraded` reasons of `GET /health`: one per served certificate that expires within
/// [`EXPIRY_WARNING`] of `now` (or has expired). Names still waiting for their first
/// certificate serve nothing, so they are not reasons.
pub fn expiry_reasons(certificates: &[CertificateInfo], now: SystemTime) -> Vec<String> {
    certificates
        .iter()
        .filter_map(|info| {
            let not_after = info.not_after?;
            let names = info.names.join(", ");
            let until = humantime::format_rfc3339_seconds(not_after);
            match not_after.duration_since(now) {
                Ok(left) if left >= EXPIRY_WARNING => None,
                Ok(left) => Some(format!(
                    "certificate for {names} expires in {} ({until})",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                )),
                Err(_) => Some(format!("certificate for {names} expired at {until}")),
            }
        })
        .collect()
}

fn labels(info: &CertificateInfo) -> [(&str, &str); 2] {
    let source = match info.source {
        CertificateSource::Acme => "acme",
        CertificateSource::File => "file",
    };
    [
        ("name", info.names.first().map_or("", String::as_str)),
        ("source", source),
    ]
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_errors_per_certificate() {
        let issued = CertificateInfo {
            names: vec!["alice.notes.example.com".into()],
            source: CertificateSource::Acme,
            issuer: Some("CN=Test".into()),
            not_before: Some(UNIX_EPOCH),
            not_after: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            renew_at: None,
            last_error: None,
        };
        let failing = CertificateInfo {
            names: vec!["bob.notes.example.com".into()],
            source: CertificateSource::Acme,
            issuer: None,
            not_before: None,
            not_after: None,
            renew_at: None,
            last_error: Some("validation failed".into()),
        };
        let mut out = Exposition::default();
        collect(&[issued, failing], &mut out);
        let text = out.as_str();
        assert!(text.contains(
            "tenement_tls_certificate_expiry_timestamp_seconds{name=\"alice.notes.example.com\",source=\"acme\"} 1900000000\n"
        ), "{text}");
        assert!(
            !text.contains("expiry_timestamp_seconds{name=\"bob"),
            "{text}"
        );
        assert!(text.contains(
            "tenement_tls_certificate_errors{name=\"bob.notes.example.com\",source=\"acme\"} 1\n"
        ), "{text}");
    }

    #[test]
    fn refusals_by_reason() {
        let mut out = Exposition::default();
        collect_refusals(
            &[
                (Refusal::Unrouted, 4),
                (Refusal::Ask, 0),
                (Refusal::Rate, 1),
            ],
            &mut out,
        );
        let text = out.as_str();
        for line in [
            "# TYPE tenement_tls_on_demand_refused_total counter\n",
            "tenement_tls_on_demand_refused_total{reason=\"unrouted\"} 4\n",
            "tenement_tls_on_demand_refused_total{reason=\"ask\"} 0\n",
            "tenement_tls_on_demand_refused_total{reason=\"rate\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    #[test]
    fn degraded_only_within_seven_days_of_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expiring = |names: &[&str], left: i64| CertificateInfo {
            names: names.iter().map(|name| name.to_string()).collect(),
            source: CertificateSource::File,
            issuer: Some("CN=Test".into()),
            not_before: Some(UNIX_EPOCH),
            not_after: Some(if left >= 0 {
                now + Duration::from_secs(left as u64)
            } else {
                now - Duration::from_secs(left.unsigned_abs())
            }),
            renew_at: None,
            last_error: None,
        };
        let waiting = CertificateInfo {
            not_after: None,
            ..expiring(&["carol.example.com"], 0)
        };
        let reasons = expiry_reasons(
            &[
                expiring(&["far.example.com"], 7 * 24 * 3600),
                expiring(
                    &["soon.example.com", "www.soon.example.com"],
                    3 * 24 * 3600 + 60,
                ),
                expiring(&["gone.example.com"], -60),
                waiting,
            ],
            now,
        );
        assert_eq!(
            reasons,
            [
                "certificate for soon.example.com, www.soon.example.com expires in 3days 1m (2027-01-18T08:01:00Z)",
                "certificate for gone.example.com expired at 2027-01-15T07:59:00Z",
            ]
        );
    }
}
