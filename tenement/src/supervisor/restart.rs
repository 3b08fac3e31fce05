//! When to restart an instance that ended, and how long to wait first: exponential backoff
//! from `backoff_base_ms` to `backoff_max_ms`; more than `max_restarts` within
//! `restart_window` and the instance is `failed`, with no more tries until someone acts.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::config::{RestartPolicy, Settings};

/// Why an attempt ended, as far as restarting is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The program exited with status 0.
    CleanExit,
    /// Crashed, killed, unhealthy or never ready.
    Failure,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Restart {
        delay: Duration,
    },
    /// The policy says no (a clean exit under `on-failure`, anything under `never`).
    Stay,
    /// Too many restarts within the window.
    GiveUp {
        restarts: usize,
        window: Duration,
    },
}

#[derive(Debug)]
pub struct RestartTracker {
    max_restarts: u32,
    window: Duration,
    base: Duration,
    max_delay: Duration,
    recent: VecDeque<Instant>,
    /// Failures since the instance last ran stable; drives the backoff exponent.
    consecutive: u32,
}

impl RestartTracker {
    pub fn new(settings: &Settings) -> RestartTracker {
        RestartTracker {
            max_restarts: settings.max_restarts,
            window: Duration::from_secs(settings.restart_window),
            base: Duration::from_millis(settings.backoff_base_ms),
            max_delay: Duration::from_millis(settings.backoff_max_ms.max(settings.backoff_base_ms)),
            recent: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// Decides after an attempt that ended at `now`. `ran_ready_for` is how long it was ready
    /// (`None`: it never was): an instance that stayed up longer than the longest backoff
    /// starts over from the base delay.
    pub fn decide(
        &mut self,
        policy: RestartPolicy,
        ending: Ending,
        ran_ready_for: Option<Duration>,
        now: Instant,
    ) -> Decision {
        let wanted = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => ending == Ending::Failure,
            RestartPolicy::Never => false,
        };
        if !wanted {
            return Decision::Stay;
        }
        if ran_ready_for.is_some_and(|ran| ran >= self.max_delay) {
            self.consecutive = 0;
        }
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts as usize {
            return Decision::GiveUp {
                restarts: self.recent.len(),
                window: self.window,
            };
        }
        self.recent.push_back(now);
        let factor = 2u32.saturating_pow(self.consecutive.min(31));
        let delay = self.base.saturating_mul(factor).min(self.max_delay);
        self.consecutive += 1;
        Decision::Restart { delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(max_restarts: u32) -> RestartTracker {
        RestartTracker::new(&Settings {
            max_restarts,
            restart_window: 60,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            ..Settings::default()
        })
    }

    fn delay(decision: Decision) -> u128 {
        match decision {
            Decision::Restart { delay } => delay.as_millis(),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_then_gives_up() {
        let mut t = tracker(6);
        let now = Instant::now();
        let delays: Vec<u128> = (0..6)
            .map(|_| delay(t.decide(RestartPolicy::OnFailure, Ending::Failure, None, now)))
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert!(matches!(
            t.decide(RestartPolicy::OnFailure, Ending::Failure, None, now),
            Decision::GiveUp { restarts: 6, .. }
        ));
    }

    #[test]
    fn restarts_outside_the_window_do_not_count() {
        let mut t = tracker(2);
        let start = Instant::now();
        t.decide(RestartPolicy::Always, Ending::Failure, None, start);
        t.decide(RestartPolicy::Always, Ending::Failure, None, start);
        let later = start + Duration::from_secs(61);
        assert!(matches!(
            t.decide(RestartPolicy::Always, Ending::Failure, None, later),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut t = tracker(10);
        let now = Instant::now();
        for _ in 0..3 {
            t.decide(RestartPolicy::OnFailure, Ending::Failure, None, now);
        }
        let stable = Some(Duration::from_secs(5));
        assert_eq!(
            delay(t.decide(RestartPolicy::OnFailure, Ending::Failure, stable, now)),
            100
        );
    }

    #[test]
    fn policies() {
        let now = Instant::now();
        let mut t = tracker(5);
        assert_eq!(
            t.decide(RestartPolicy::OnFailure, Ending::CleanExit, None, now),
            Decision::Stay
        );
        assert_eq!(
            t.decide(RestartPolicy::Never, Ending::Failure, None, now),
            Decision::Stay
        );
        assert!(matches!(
            t.decide(RestartPolicy::Always, Ending::CleanExit, None, now),
            Decision::Restart { .. }
        ));
    }
}
