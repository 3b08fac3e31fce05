//! Refused tokens are counted and, past a limit, refused outright for a while: guessing
//! tokens from one address gets slow. The API and the dashboard both identify callers here.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use hyper::{header::HeaderValue, StatusCode};

use super::{
    auth::{Caller, Peer},
    error::{ApiError, ApiResult},
    Context,
};

/// Refused tokens allowed from one address within [`WINDOW`]; the next ones get 429.
pub const FAILURES_ALLOWED: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond that the oldest windows are forgotten first.
const ADDRESSES_KEPT: usize = 10_000;

#[derive(Default)]
pub struct AuthFailures {
    windows: Mutex<HashMap<Source, Window>>,
    /// Requests refused for a malformed or unknown token.
    pub refused: AtomicU64,
    /// Requests refused with 429 because their address had too many refusals.
    pub throttled: AtomicU64,
}

/// Where failures are counted: per IP address (any port), or per user on the unix socket
/// (another local user's guesses must not lock root out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    Ip(IpAddr),
    Unix(u32),
}

struct Window {
    started: Instant,
    failures: u32,
}

impl AuthFailures {
    /// Seconds until `source` may try again, when it is over the limit.
    fn blocked_for(&self, source: Source, now: Instant) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.get(&source)?;
        let elapsed = now.saturating_duration_since(window.started);
        (window.failures >= FAILURES_ALLOWED && elapsed < WINDOW)
            .then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    fn failed(&self, source: Source, now: Instant) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= ADDRESSES_KEPT {
            windows.retain(|_, window| now.saturating_duration_since(window.started) < WINDOW);
        }
        let window = windows.entry(source).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures += 1;
    }
}

fn source(peer: Peer) -> Source {
    match peer {
        Peer::Unix { uid } => Source::Unix(uid),
        Peer::Tcp { address } => Source::Ip(address.ip()),
    }
}

/// Who is calling ([`Caller::identify`]), with refusals counted and rate limited.
pub fn identify(
    context: &Context,
    peer: Peer,
    authorization: Option<&HeaderValue>,
) -> ApiResult<Caller> {
    // Root (or tenement's own user) on the unix socket without a token is known by its
    // kernel credentials, not by a guess: never throttled.
    let by_credentials = authorization.is_none()
        && matches!(peer, Peer::Unix { uid } if super::auth::trusted_uid(uid));
    if !by_credentials {
        check(context, peer)?;
    }
    let identified = Caller::identify(peer, authorization, &context.api.store);
    // Only a presented token is a guess: a client without one is not configured yet.
    let guessed = authorization.is_some();
    if guessed && matches!(&identified, Err(err) if err.status == StatusCode::UNAUTHORIZED) {
        refused(context, peer);
    }
    identified
}

/// Counts a refusal that did not come through [`identify`] (a bad token on the dashboard's
/// sign-in form), so both paths share one limit.
pub fn refused(context: &Context, peer: Peer) {
    context.auth_failures.failed(source(peer), Instant::now());
}

/// The 429 for `peer`, if it is over the limit.
pub fn check(context: &Context, peer: Peer) -> ApiResult<()> {
    match context
        .auth_failures
        .blocked_for(source(peer), Instant::now())
    {
        None => Ok(()),
        Some(seconds) => {
            context
                .auth_failures
                .throttled
                .fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many refused tokens from this address ({FAILURES_ALLOWED} within {}s): \
                     try again in {seconds}s",
                    WINDOW.as_secs()
                ),
            ))
        }
    }
}

/// `tenement_api_auth_refused_total` and `tenement_api_auth_throttled_total` on `/metrics`.
pub fn register_metrics(context: &std::sync::Arc<Context>) {
    // Weak: the registry lives inside the context; a strong reference would be a cycle.
    let weak = std::sync::Arc::downgrade(context);
    context.metrics.register(move |out| {
        let Some(context) = weak.upgrade() else {
            return;
        };
        let failures = &context.auth_failures;
        out.family(
            "tenement_api_auth_refused_total",
            super::Kind::Counter,
            "Requests to the API or the dashboard refused for a malformed or unknown token.",
        )
        .sample(
            "tenement_api_auth_refused_total",
            &[],
            failures.refused.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "tenement_api_auth_throttled_total",
            super::Kind::Counter,
            "Requests refused with 429: their address had too many refused tokens.",
        )
        .sample(
            "tenement_api_auth_throttled_total",
            &[],
            failures.throttled.load(Ordering::Relaxed) as f64,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let failures = AuthFailures::default();
        let source = Source::Ip("127.0.0.1".parse().unwrap());
        let other = Source::Ip("127.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(failures.blocked_for(source, start), None);
            failures.failed(source, start);
        }
        assert!(failures.blocked_for(source, start).is_some());
        assert_eq!(failures.blocked_for(other, start), None);
        assert_eq!(failures.blocked_for(source, start + WINDOW), None);
        assert_eq!(
            failures.refused.load(Ordering::Relaxed),
            u64::from(FAILURES_ALLOWED)
        );
    }
}
