//! The CA's `Retry-After`. instant-acme turns an error answer into a `Problem` and drops its
//! headers, so the HTTP client under it notes the header of every `429 Too Many Requests`
//! and `503 Service Unavailable` answer. The note is task-local: it belongs to the order
//! that got the answer, never to a concurrent order of another name.

use std::{
    cell::Cell,
    future::Future,
    path::Path,
    pin::Pin,
    str::FromStr,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{header::RETRY_AFTER, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// The longest wait a `Retry-After` imposes. A CA's weekly limit can ask for days; tenement
/// asks again after a day at the latest (and then waits for what that answer says).
pub(crate) const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

tokio::task_local! {
    static NOTED: Cell<Option<SystemTime>>;
}

/// Runs `work` (one order) and returns what it returned, with the latest point in time a
/// `Retry-After` of the CA asked to wait for during it, if any did.
pub(crate) async fn noting<F: Future>(work: F) -> (F::Output, Option<SystemTime>) {
    NOTED
        .scope(Cell::new(None), async {
            let output = work.await;
            (output, NOTED.with(Cell::get))
        })
        .await
}

/// An HTTPS client for instant-acme (the same as its own: HTTP/1.1 and HTTP/2, the
/// platform's roots or `root`) that notes `Retry-After`.
pub(crate) struct NotingClient(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl NotingClient {
    pub fn new(root: Option<&Path>) -> Result<NotingClient> {
        let builder = match root {
            Some(root) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(root)
                    .with_context(|| format!("settings.tls.acme_root {}", root.display()))?;
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: rustls_pki_types::CertificateDer<'static> =
                        cert.with_context(|| format!("settings.tls.acme_root {}", root.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("settings.tls.acme_root {}", root.display()))?;
                }
                HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
            None => HttpsConnectorBuilder::new()
                .try_with_platform_verifier()
                .context("loading the system's trusted roots")?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(NotingClient(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }
}

impl HttpClient for NotingClient {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.0.request(request);
        Box::pin(async move {
            let response = response
                .await
                .map_err(|err| instant_acme::Error::Other(Box::new(err)))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                let until = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse(value, SystemTime::now()));
                if let Some(until) = until {
                    // Outside an order (no scope) there is nobody to tell.
                    let _ = NOTED.try_with(|noted| noted.set(noted.get().max(Some(until))));
                }
            }
            Ok(BytesResponse::from(response))
        })
    }
}

/// `Retry-After: 120` (seconds) or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
pub(crate) fn parse(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    match u64::from_str(value) {
        Ok(seconds) => now.checked_add(Duration::from_secs(seconds)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// The pause before the next attempt: the backoff, or longer when the CA asked for longer
/// (at most [`RETRY_AFTER_MAX`]).
pub(crate) fn pause(
    backoff: Duration,
    retry_after: Option<SystemTime>,
    now: SystemTime,
) -> Duration {
    let asked = retry_after
        .and_then(|until| until.duration_since(now).ok())
        .map_or(Duration::ZERO, |wait| wait.min(RETRY_AFTER_MAX));
    backoff.max(asked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(946_684_000);
        assert_eq!(parse(" 120 ", now), Some(now + Duration::from_secs(120)));
        assert_eq!(
            parse("Fri, 31 Dec 1999 23:59:59 GMT", now),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_799))
        );
        assert_eq!(parse("soon", now), None);
        assert_eq!(parse("-5", now), None);
    }

    #[test]
    fn the_longer_of_backoff_and_retry_after_capped_at_a_day() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let backoff = Duration::from_secs(120);
        assert_eq!(pause(backoff, None, now), backoff);
        let soon = now + Duration::from_secs(30);
        assert_eq!(pause(backoff, Some(soon), now), backoff);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(pause(backoff, Some(hour), now), Duration::from_secs(3600));
        let week = now + Duration::from_secs(7 * 24 * 3600);
        assert_eq!(pause(backoff, Some(week), now), RETRY_AFTER_MAX);
        // A date already past asks for nothing.
        assert_eq!(
            pause(backoff, Some(now - Duration::from_secs(5)), now),
            backoff
        );
    }

    #[tokio::test]
    async fn noted_only_inside_its_own_order() {
        let (_, noted) = noting(async {}).await;
        assert_eq!(noted, None);
        let until = UNIX_EPOCH + Duration::from_secs(5);
        let (_, noted) = noting(async {
            NOTED.with(|noted| noted.set(noted.get().max(Some(until))));
        })
        .await;
        assert_eq!(noted, Some(until));
    }
}
