//! Where the milliseconds of a start go: timestamps of the steps of one attempt, logged at
//! debug level once it is ready (`RUST_LOG=tenement=debug` or `--log-level debug`), so that
//! a wake can be taken apart without a profiler. `cargo xtask bench wake` reads these lines.

use std::time::{Duration, Instant};

use crate::config::InstanceName;

/// The steps of one attempt, from the decision to start to the first request it can take.
pub(crate) struct WakeSteps {
    began: Instant,
    /// Data directory, uid, port, cgroup and launch command ready.
    prepared: Option<Instant>,
    /// Kernel network policy and counters registered for its cgroup.
    confined: Option<Instant>,
    /// Forked and exec'd (the spawner returned a child).
    spawned: Option<Instant>,
    /// Prepare and confine were done while the instance slept (`ahead.rs`).
    ahead: bool,
}

impl WakeSteps {
    pub(crate) fn begin() -> WakeSteps {
        WakeSteps {
            began: Instant::now(),
            prepared: None,
            confined: None,
            spawned: None,
            ahead: false,
        }
    }

    pub(crate) fn began(&self) -> Instant {
        self.began
    }

    pub(crate) fn prepared(&mut self) {
        self.prepared = Some(Instant::now());
    }

    /// The start was prepared while the instance slept.
    pub(crate) fn ahead(&mut self) {
        self.ahead = true;
    }

    pub(crate) fn confined(&mut self) {
        self.confined = Some(Instant::now());
    }

    pub(crate) fn spawned(&mut self) {
        self.spawned = Some(Instant::now());
    }

    /// The line logged when the instance is ready (`ready` is when readiness was seen).
    pub(crate) fn describe(&self, ready: Instant) -> String {
        let mut at = self.began;
        let mut step = |until: Option<Instant>| -> f64 {
            let until = until.unwrap_or(at);
            let took = until.saturating_duration_since(at);
            at = until;
            ms(took)
        };
        let prepare = step(self.prepared);
        let confine = step(self.confined);
        let spawn = step(self.spawned);
        let app = step(Some(ready));
        format!(
            "prepare {prepare:.3} ms, confine {confine:.3} ms, spawn {spawn:.3} ms, \
             app until ready {app:.3} ms, total {:.3} ms{}",
            ms(ready.saturating_duration_since(self.began)),
            if self.ahead {
                " (prepared while it slept)"
            } else {
                ""
            }
        )
    }

    pub(crate) fn log(&self, name: &InstanceName, ready: Instant) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!("{name}: wake steps: {}", self.describe(ready));
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_to_the_total() {
        let mut steps = WakeSteps::begin();
        steps.prepared();
        steps.confined();
        steps.spawned();
        let line = steps.describe(steps.began() + Duration::from_millis(5));
        assert!(line.starts_with("prepare "), "{line}");
        assert!(line.ends_with("total 5.000 ms"), "{line}");
        steps.ahead();
        let line = steps.describe(steps.began() + Duration::from_millis(5));
        assert!(line.ends_with("(prepared while it slept)"), "{line}");
        // A step that never happened (no cgroup, say) counts as zero.
        let bare = WakeSteps::begin();
        let line = bare.describe(bare.began());
        assert!(line.contains("confine 0.000 ms"), "{line}");
    }
}
