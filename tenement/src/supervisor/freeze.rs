//! The frozen state between running and stopped (`freeze_after`): an idle instance's cgroup
//! is frozen, keeping its memory and sockets; the next request thaws it in well under a
//! millisecond, with no start and no readiness wait.
//!
//! A freeze and a request must never miss each other: a request that found the instance
//! running must not reach it frozen a moment later, and a request that found it frozen must
//! not be left waiting on a frozen process. Both sides go through the instance's activity
//! lock: the proxy counts every request there (`ActivityGuard`) before it looks at the
//! instance's state or connects, and the freezer only freezes, under that same lock, an
//! instance with no request open and no health probe running. So either the request is
//! counted first and nothing is frozen, or the freeze happened first and the request's
//! count thaws it before the proxy connects.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{idle::Activity, instance::Instance, state::InstanceState, Shared};
use crate::store::EventKind;

/// How long the kernel may take to report a group frozen before the freeze is given up.
const FREEZE_CONFIRM: Duration = Duration::from_secs(2);

/// Why an instance is thawed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thaw {
    /// A request for it: it serves again.
    Request,
    /// An operator's `start`/`spawn`: it serves again.
    Operator,
    /// It is being stopped: it must get its SIGTERM. Its state is the stop's to set.
    Stop,
}

impl Thaw {
    fn detail(self) -> &'static str {
        match self {
            Thaw::Request => "thawed by a request",
            Thaw::Operator => "thawed by an operator's start",
            Thaw::Stop => "thawed to be stopped",
        }
    }
}

impl Shared {
    /// Freezes every instance idle for its `freeze_after` (what idle means: `idle.rs`).
    pub(super) fn freeze_idle(self: &Arc<Self>) {
        for instance in self.snapshot() {
            let after = instance.service().freeze_after;
            if after == 0 || !instance.state().serves() {
                continue;
            }
            let kernel = self.kernel_traffic(&instance);
            let mut activity = instance.lock_activity();
            if !self.may_freeze(&instance, &mut activity, kernel, after) {
                continue;
            }
            let Some(freezer) = activity.freezer.clone() else {
                continue;
            };
            if let Err(err) = freezer.freeze() {
                tracing::warn!("{}: {err}", instance.name);
                continue;
            }
            let was = instance.state();
            activity.frozen = Some(was);
            self.update(&instance, |s| s.state = InstanceState::Frozen);
            drop(activity);
            let shared = self.clone();
            tokio::spawn(async move { shared.confirm_frozen(&instance, after).await });
        }
    }

    /// Idle for `after` seconds, serving, with a freezer, nothing open and no probe running.
    fn may_freeze(
        &self,
        instance: &Instance,
        activity: &mut Activity,
        kernel: Option<super::KernelTraffic>,
        after: u64,
    ) -> bool {
        if activity.frozen.is_some() || activity.freezer.is_none() || activity.open > 0 {
            return false;
        }
        // The run loop may have begun stopping it since the state was read.
        if !instance.state().serves() {
            return false;
        }
        activity
            .idle_since(kernel)
            .is_some_and(|since| since.elapsed() >= Duration::from_secs(after))
    }

    /// Waits for the kernel to report the group frozen, then records it; a group that does
    /// not freeze in time is thawed again and the instance serves on.
    async fn confirm_frozen(&self, instance: &Instance, after: u64) {
        let Some(freezer) = instance.lock_activity().freezer.clone() else {
            return;
        };
        let began = Instant::now();
        while !freezer.is_frozen() && began.elapsed() < FREEZE_CONFIRM {
            if instance.lock_activity().frozen.is_none() {
                // Thawed by a request meanwhile.
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if freezer.is_frozen() {
            let detail = format!("idle for {after}s: frozen");
            tracing::info!("{}: {detail}", instance.name);
            self.logs.system(&instance.name, &detail);
            self.record(
                instance,
                EventKind::Frozen,
                &format!("no traffic for freeze_after ({after}s)"),
            );
            return;
        }
        let mut activity = instance.lock_activity();
        if let Some(was) = activity.frozen.take() {
            let _ = freezer.thaw();
            self.update(instance, |s| {
                if s.state == InstanceState::Frozen {
                    s.state = was;
                }
            });
            let detail = format!(
                "the kernel did not report cgroup {} frozen within {}s: thawed, it keeps \
                 running",
                freezer.dir().display(),
                FREEZE_CONFIRM.as_secs()
            );
            tracing::warn!("{}: {detail}", instance.name);
            self.logs.system(&instance.name, &detail);
        }
    }

    /// Thaws `instance` if it is frozen; returns whether it was. For a request or an
    /// operator's start it serves again at once; for a stop its state is left to the stop.
    pub(super) fn thaw(self: &Arc<Self>, instance: &Arc<Instance>, why: Thaw) -> bool {
        let mut activity = instance.lock_activity();
        self.thaw_locked(instance, &mut activity, why)
    }

    /// `thaw` for a caller that holds the activity lock already.
    pub(super) fn thaw_locked(
        self: &Arc<Self>,
        instance: &Arc<Instance>,
        activity: &mut Activity,
        why: Thaw,
    ) -> bool {
        let Some(was) = activity.frozen.take() else {
            return false;
        };
        if let Some(freezer) = &activity.freezer {
            if let Err(err) = freezer.thaw() {
                tracing::error!("{}: {err}", instance.name);
            }
        }
        activity.thawed();
        if why != Thaw::Stop {
            self.update(instance, |s| {
                if s.state == InstanceState::Frozen {
                    s.state = was;
                }
            });
        }
        // The event and the log line are written off the request's path.
        let shared = self.clone();
        let instance = instance.clone();
        tokio::spawn(async move {
            shared.logs.system(&instance.name, why.detail());
            shared.record(&instance, EventKind::Thawed, why.detail());
        });
        true
    }

    /// Forgets the freezer of a process that is ending, thawing it first so that its
    /// SIGTERM is delivered; nothing freezes it afterwards.
    pub(super) fn release_freezer(self: &Arc<Self>, instance: &Arc<Instance>) {
        let mut activity = instance.lock_activity();
        self.thaw_locked(instance, &mut activity, Thaw::Stop);
        activity.freezer = None;
    }
}
