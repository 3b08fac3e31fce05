//! Who may order a certificate now: one order per name at a time (everyone else waits for
//! it), a growing pause after each failure of a name, and a global token bucket, so that a
//! storm of handshakes can never become a storm of orders.

use std::sync::PoisonError;
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use super::{retry_after, Tuning};

/// The end of one order, as the handshakes waiting for it see it.
pub(crate) type Outcome = Option<Result<(), String>>;

pub(crate) enum Admission {
    /// Start the order now; report its end through `finish`. `failed_before` counts the
    /// name's failed attempts since its last success.
    Start {
        done: watch::Sender<Outcome>,
        outcome: watch::Receiver<Outcome>,
        failed_before: u32,
    },
    /// An order for this name is already running.
    Join(watch::Receiver<Outcome>),
    /// Not now; says why.
    Refused(String),
}

#[derive(Debug)]
struct Failure {
    attempts: u32,
    retry_at: Instant,
    error: String,
}

#[derive(Debug)]
struct Book {
    running: HashMap<String, watch::Receiver<Outcome>>,
    failures: HashMap<String, Failure>,
    bucket: TokenBucket,
}

#[derive(Debug)]
pub(crate) struct OrderBook {
    book: Mutex<Book>,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl OrderBook {
    pub fn new(tuning: &Tuning) -> OrderBook {
        OrderBook {
            book: Mutex::new(Book {
                running: HashMap::new(),
                failures: HashMap::new(),
                bucket: TokenBucket::new(tuning.order_burst, tuning.order_interval, Instant::now()),
            }),
            backoff_base: tuning.failure_backoff_base,
            backoff_max: tuning.failure_backoff_max,
        }
    }

    /// Whether an order for `name` is running now (a handshake would join it).
    pub fn is_running(&self, name: &str) -> bool {
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
            .contains_key(name)
    }

    pub fn admit(&self, name: &str) -> Admission {
        let now = Instant::now();
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = book.running.get(name) {
            return Admission::Join(running.clone());
        }
        let failed_before = book.failures.get(name).map_or(0, |f| f.attempts);
        if let Some(failure) = book.failures.get(name) {
            if now < failure.retry_at {
                return Admission::Refused(format!(
                    "waiting {} after {} failed attempt(s); last: {}",
                    humantime::format_duration(round_up(failure.retry_at - now)),
                    failure.attempts,
                    failure.error
                ));
            }
        }
        if !book.bucket.try_take(now) {
            return Admission::Refused(
                "too many certificate orders lately (global rate limit); will retry".into(),
            );
        }
        let (done, outcome) = watch::channel(None);
        book.running.insert(name.to_string(), outcome.clone());
        Admission::Start {
            done,
            outcome,
            failed_before,
        }
    }

    /// Records the end of an order started by `admit`; returns the pause before the next
    /// attempt when it failed.
    /// `retry_after`: the CA's `Retry-After`, which lengthens the pause (up to a day).
    pub fn finish(
        &self,
        name: &str,
        result: &Result<(), String>,
        retry_after: Option<SystemTime>,
    ) -> Option<Duration> {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.running.remove(name);
        match result {
            Ok(()) => {
                book.failures.remove(name);
                None
            }
            Err(error) => {
                let attempts = book.failures.get(name).map_or(0, |f| f.attempts) + 1;
                let pause = retry_after::pause(
                    backoff(self.backoff_base, self.backoff_max, attempts),
                    retry_after,
                    SystemTime::now(),
                );
                book.failures.insert(
                    name.to_string(),
                    Failure {
                        attempts,
                        retry_at: Instant::now() + pause,
                        error: error.clone(),
                    },
                );
                Some(pause)
            }
        }
    }

    /// Names whose last order failed, with the error.
    pub fn failures(&self) -> Vec<(String, String)> {
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failures: Vec<_> = book
            .failures
            .iter()
            .map(|(name, failure)| (name.clone(), failure.error.clone()))
            .collect();
        failures.sort();
        failures
    }
}

fn round_up(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

/// `base`, then doubling after each further failure, never more than `max`.
fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

/// `capacity` orders at once, then one more every `interval`.
#[derive(Debug)]
struct TokenBucket {
    capacity: u32,
    interval: Duration,
    tokens: u32,
    refilled_at: Instant,
}

impl TokenBucket {
    fn new(capacity: u32, interval: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            interval,
            tokens: capacity,
            refilled_at: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        if self.tokens < self.capacity && !self.interval.is_zero() {
            let elapsed = now.saturating_duration_since(self.refilled_at);
            let earned = (elapsed.as_nanos() / self.interval.as_nanos()).min(u32::MAX as u128);
            if earned > 0 {
                self.tokens = self.capacity.min(self.tokens.saturating_add(earned as u32));
                self.refilled_at += self.interval * earned as u32;
            }
        }
        if self.tokens == self.capacity {
            // A full bucket earns nothing: the interval starts again at the next take.
            self.refilled_at = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(120);
        let max = Duration::from_secs(3600);
        let pauses: Vec<u64> = (1..=7).map(|n| backoff(base, max, n).as_secs()).collect();
        assert_eq!(pauses, [120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(base, max, 1000), max);
    }

    #[test]
    fn bucket_allows_a_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, Duration::from_secs(10), start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_secs(9)));
        assert!(bucket.try_take(start + Duration::from_secs(10)));
        assert!(!bucket.try_take(start + Duration::from_secs(11)));
        // A long quiet period refills the bucket, but never beyond its capacity.
        let later = start + Duration::from_secs(1000);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn one_order_per_name_and_failures_pause_the_name() {
        let tuning = Tuning {
            failure_backoff_base: Duration::from_secs(60),
            ..Tuning::default()
        };
        let book = OrderBook::new(&tuning);
        let Admission::Start { failed_before, .. } = book.admit("a.example.com") else {
            panic!("first admission must start an order");
        };
        assert_eq!(failed_before, 0);
        assert!(matches!(book.admit("a.example.com"), Admission::Join(_)));
        assert!(matches!(
            book.admit("b.example.com"),
            Admission::Start { .. }
        ));

        assert_eq!(
            book.finish("a.example.com", &Err("connection refused".into()), None),
            Some(Duration::from_secs(60))
        );
        match book.admit("a.example.com") {
            Admission::Refused(why) => assert!(why.contains("connection refused"), "{why}"),
            _ => panic!("a failed name must wait"),
        }
        assert_eq!(book.failures().len(), 1);
        assert_eq!(book.finish("b.example.com", &Ok(()), None), None);
    }

    #[test]
    fn a_retry_after_longer_than_the_backoff_wins() {
        let tuning = Tuning {
            failure_backoff_base: Duration::from_secs(60),
            ..Tuning::default()
        };
        let book = OrderBook::new(&tuning);
        let _ = book.admit("a.example.com");
        let asked = SystemTime::now() + Duration::from_secs(7200);
        let pause = book
            .finish("a.example.com", &Err("rateLimited".into()), Some(asked))
            .unwrap();
        assert!(pause > Duration::from_secs(7100), "{pause:?}");
        assert!(pause <= Duration::from_secs(7200), "{pause:?}");
    }
}
