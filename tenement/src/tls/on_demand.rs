//! What a name must pass, beyond routing somewhere, before a handshake may start an order
//! for it: the operator's `ask` URL saying yes, and the `on_demand_rate` budget. Refusals
//! are counted by reason for `/metrics`.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::timeout};

use crate::config::Tls;

/// Longest wait for the `ask` URL's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an on-demand order was refused, as the `reason` label on `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The name routes nowhere.
    Unrouted,
    /// The `ask` URL did not answer 200.
    Ask,
    /// The `on_demand_rate` budget is spent.
    Rate,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Unrouted, Refusal::Ask, Refusal::Rate];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unrouted => "unrouted",
            Refusal::Ask => "ask",
            Refusal::Rate => "rate",
        }
    }
}

#[derive(Debug)]
pub(crate) struct OnDemandGate {
    ask: Option<http::Uri>,
    budget: Option<Budget>,
    refused: [AtomicU64; 3],
}

impl OnDemandGate {
    pub fn new(tls: &Tls) -> Result<OnDemandGate> {
        let budget = tls
            .on_demand_budget()
            .map_err(|err| anyhow!("settings.tls.on_demand_rate: {err}"))?
            .map(|(limit, window)| Budget {
                limit,
                window,
                started: Mutex::new(VecDeque::new()),
            });
        let ask = tls
            .ask
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|err| anyhow!("settings.tls.ask: {err}"))?;
        Ok(OnDemandGate {
            ask,
            budget,
            refused: Default::default(),
        })
    }

    pub fn count(&self, refusal: Refusal) {
        self.refused[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (*r, self.refused[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Ok when `ask` (if set) allows `name`; otherwise why not.
    pub async fn ask(&self, name: &str) -> Result<(), String> {
        let Some(uri) = &self.ask else {
            return Ok(());
        };
        match timeout(ASK_TIMEOUT, ask(uri, name)).await {
            Ok(Ok(200)) => Ok(()),
            Ok(Ok(status)) => Err(format!("the ask URL {uri} answered {status} for {name}")),
            Ok(Err(err)) => Err(format!("the ask URL {uri} failed for {name}: {err}")),
            Err(_) => Err(format!(
                "the ask URL {uri} did not answer within {}",
                humantime::format_duration(ASK_TIMEOUT)
            )),
        }
    }

    /// Takes one order from the budget; `Err` when it is spent.
    pub fn take(&self) -> Result<(), String> {
        match &self.budget {
            Some(budget) => budget.take(Instant::now()),
            None => Ok(()),
        }
    }

    /// Gives back what `take` took, for an order that did not start after all.
    pub fn give_back(&self) {
        if let Some(budget) = &self.budget {
            budget
                .started
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_back();
        }
    }
}

/// At most `limit` orders started in any `window` (a sliding window of start times).
#[derive(Debug)]
struct Budget {
    limit: u32,
    window: Duration,
    started: Mutex<VecDeque<Instant>>,
}

impl Budget {
    fn take(&self, now: Instant) -> Result<(), String> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        while started
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            started.pop_front();
        }
        if started.len() >= self.limit as usize {
            return Err(format!(
                "the on-demand budget of {} orders per {} is spent",
                self.limit,
                humantime::format_duration(self.window)
            ));
        }
        started.push_back(now);
        Ok(())
    }
}

/// `GET {uri}?domain={name}` over plain HTTP/1.1; the status code.
async fn ask(uri: &http::Uri, name: &str) -> Result<u16> {
    let host = uri.host().ok_or_else(|| anyhow!("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port)).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let path = uri.path();
    // Host names are letters, digits, dots and hyphens: nothing to escape.
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}&domain={name}"),
        None => format!("{path}?domain={name}"),
    };
    let request = http::Request::get(target)
        .header(
            http::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_slides() {
        let budget = Budget {
            limit: 2,
            window: Duration::from_secs(3600),
            started: Mutex::new(VecDeque::new()),
        };
        let start = Instant::now();
        assert!(budget.take(start).is_ok());
        assert!(budget.take(start + Duration::from_secs(10)).is_ok());
        let spent = budget.take(start + Duration::from_secs(20)).unwrap_err();
        assert_eq!(spent, "the on-demand budget of 2 orders per 1h is spent");
        assert!(budget.take(start + Duration::from_secs(3600)).is_ok());
        assert!(budget.take(start + Duration::from_secs(3605)).is_err());
    }

    #[test]
    fn rates_parse() {
        let mut tls = Tls::default();
        assert_eq!(tls.on_demand_budget(), Ok(None));
        tls.on_demand_rate = Some("10/h".into());
        assert_eq!(
            tls.on_demand_budget(),
            Ok(Some((10, Duration::from_secs(3600))))
        );
        tls.on_demand_rate = Some("5/d".into());
        assert_eq!(
            tls.on_demand_budget(),
            Ok(Some((5, Duration::from_secs(86400))))
        );
        for bad in ["10", "x/h", "10/w", "-1/h"] {
            tls.on_demand_rate = Some(bad.into());
            assert!(tls.on_demand_budget().is_err(), "{bad}");
        }
    }
}
