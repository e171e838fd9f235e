//! Stopping things: one container (its preStop hook first, within the
//! grace period), a whole pod, and the final teardown of a removed pod.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use super::{MIN_GRACE, Worker, grace_of};
use crate::pods::events::EventType;
use crate::pods::plan::{self, Action};
use crate::pods::{ContainerKind, cgroups, sandbox};
use crate::probes::handler::{self, Outcome, Target};
use crate::runtime::labels;
use crate::runtime::{ObservedContainer, RuntimePod};

/// kubelet's volume operation back-off: first retry, and the longest wait.
pub(super) const RECLAIM_FIRST_RETRY: Duration = Duration::from_millis(500);
pub(super) const RECLAIM_MAX_RETRY: Duration = Duration::from_secs(122);

/// The extension a preStop hook still running at the deadline gets.
const PRE_STOP_EXTENSION: i64 = 2;

/// A container to stop, and what its preStop hook needs.
pub(super) struct StopTarget<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The container's spec, when the pod still has one.
    pub spec: Option<&'a Container>,
    pub pod_ip: &'a str,
    /// The preStop hook recorded on the container (for orphans).
    pub recorded: Option<&'a str>,
}

impl<'a> StopTarget<'a> {
    pub fn of(c: &'a ObservedContainer, pod: Option<&'a Pod>, pod_ip: &'a str) -> Self {
        let spec = pod.and_then(|p| p.spec.as_ref()).and_then(|s| plan::containers(s).into_iter().find(|(x, _)| x.name == c.name).map(|(x, _)| x));
        Self {
            id: &c.id,
            name: &c.name,
            spec,
            pod_ip,
            recorded: c.annotations.get(labels::CONTAINER_PRE_STOP_HANDLER).map(String::as_str),
        }
    }

    fn pre_stop(&self) -> Option<LifecycleHandler> {
        match self.spec {
            Some(c) => c.lifecycle.as_ref()?.pre_stop.clone(),
            None => serde_json::from_str(self.recorded?).ok(),
        }
    }
}

impl Worker {
    /// Runs a lifecycle hook. A dry run only goes through the runtime (an
    /// exec hook prints its ExecSync); it reaches out to no network.
    pub(super) async fn run_hook(&self, target: &Target, container_id: &str, timeout: Duration) -> Outcome {
        if self.ctx.dry_run && !matches!(target, Target::Exec { .. }) {
            return Outcome::Success;
        }
        handler::run(target, container_id, self.ctx.runtime.as_ref(), timeout).await
    }

    /// Runs the container's preStop hook, then StopContainer with what is
    /// left of the grace period. A hook still running at the deadline is
    /// cut off and the container gets one 2 s extension, as with kubelet.
    /// False when StopContainer failed.
    pub(super) async fn stop_container(&self, t: &StopTarget<'_>, why: &str, grace: i64) -> bool {
        // Any int64 the API allows: waits beyond 292 years are that long.
        let grace = crate::clock::clamp_secs(grace);
        let msg = if why.is_empty() { format!("Stopping container {}", t.name) } else { why.to_string() };
        self.event(EventType::Normal, "Killing", &msg);
        let mut timeout = grace;
        if let Some(hook) = t.pre_stop() {
            let spec = t.spec.cloned().unwrap_or_default();
            let budget = crate::clock::secs(grace);
            let started = Instant::now();
            let run = async {
                match handler::hook_target(&hook, &spec, t.pod_ip, &format!("{}.lifecycle.preStop", t.name)) {
                    Ok(Some(target)) => self.run_hook(&target, t.id, budget).await,
                    Ok(None) => Outcome::Success,
                    Err(e) => Outcome::Failure(e.to_string()),
                }
            };
            match tokio::time::timeout(budget, run).await {
                Ok(Outcome::Failure(w)) | Ok(Outcome::Unknown(w)) => {
                    self.event(EventType::Warning, "FailedPreStopHook", &format!("PreStopHook failed: {w}"));
                    timeout = grace.saturating_sub_unsigned(started.elapsed().as_secs());
                }
                Ok(_) => timeout = grace.saturating_sub_unsigned(started.elapsed().as_secs()),
                Err(_) => {
                    tracing::info!(container = %t.name, grace, "preStop hook did not complete within the grace period; 2 s more");
                    timeout = PRE_STOP_EXTENSION;
                }
            }
        }
        match self.ctx.runtime.stop_container(t.id, timeout.max(MIN_GRACE)).await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                tracing::warn!(container = %t.name, error = %e, "stopping the container failed");
                false
            }
        }
    }

    /// Stops the app containers together, then the sidecars one by one in
    /// reverse order, all within one grace period; then every ready sandbox.
    pub(super) async fn kill_pod(&self, pod: Option<&Pod>, obs: &RuntimePod) {
        let grace = self.grace_override.map_or_else(|| grace_of(pod, obs), |g| g.max(MIN_GRACE));
        let deadline = crate::clock::deadline(Instant::now(), crate::clock::secs(grace));
        let order: Vec<String> = pod
            .and_then(|p| p.spec.as_ref())
            .map(|s| {
                plan::containers(s)
                    .into_iter()
                    .filter(|(_, k)| *k == ContainerKind::Sidecar)
                    .map(|(c, _)| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let is_sidecar = |c: &ObservedContainer| match pod {
            Some(_) => order.contains(&c.name),
            None => c.kind() == Some(ContainerKind::Sidecar.as_str()),
        };
        let (mut sidecars, apps): (Vec<&ObservedContainer>, Vec<&ObservedContainer>) =
            obs.running().partition(|c| is_sidecar(c));
        let ips = super::pod_ips(pod, &self.ctx.node, &obs.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default());
        let pod_ip = ips.first().map(String::as_str).unwrap_or("");
        futures::future::join_all(apps.iter().map(|c| {
            let t = StopTarget::of(c, pod, pod_ip);
            async move { self.stop_container(&t, "", grace).await }
        }))
        .await;
        // Reverse start order: by spec position, or newest first for orphans.
        sidecars.sort_by_key(|c| std::cmp::Reverse(order.iter().position(|n| *n == c.name).unwrap_or(0)));
        for c in sidecars {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs() as i64;
            self.stop_container(&StopTarget::of(c, pod, pod_ip), "", left.max(MIN_GRACE)).await;
        }
        for s in obs.sandboxes.iter().filter(|s| s.ready) {
            if let Err(e) = self.ctx.runtime.stop_pod_sandbox(&s.id).await
                && !e.is_not_found()
            {
                tracing::warn!(sandbox = %s.id, error = %e, "stopping the sandbox failed");
            }
        }
    }

    /// Stops and removes everything the pod has, retrying until done.
    pub(super) async fn terminate(&mut self) {
        let pod = self.pod.clone();
        let mut delay = Duration::from_millis(200);
        let mut final_status = None;
        loop {
            let obs = match self.inspector.inspect(self.ctx.runtime.as_ref(), &self.identity).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the pod's runtime state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let actions = plan::teardown(&obs);
            if actions.is_empty() {
                break;
            }
            if actions.contains(&Action::KillPod) {
                // Stop first, then look again: the final status is what the
                // stopped containers say, taken before they are removed.
                self.kill_pod(pod.as_deref(), &obs).await;
                continue;
            }
            if final_status.is_none() {
                final_status = Some(self.final_status(&obs));
            }
            let mut ok = true;
            for a in actions {
                let result = match a {
                    Action::RemoveContainer { id } => {
                        let r = self.ctx.runtime.remove_container(&id).await;
                        if r.is_ok() {
                            self.unlink_log(&obs, &id);
                        }
                        r
                    }
                    Action::RemoveSandbox { id } => self.ctx.runtime.remove_pod_sandbox(&id).await,
                    _ => Ok(()),
                };
                if let Err(e) = result
                    && !e.is_not_found()
                {
                    tracing::warn!(error = %e, "removing the pod failed; retrying");
                    ok = false;
                    break;
                }
            }
            if !ok {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2).min(Duration::from_secs(5));
            }
        }
        let node = &self.ctx.node;
        if let Some(objects) = &self.ctx.objects {
            objects.release(&self.identity.uid);
        }
        // Not measured any more from here on (nor measured while unmounted).
        self.ctx.mounted.remove(&self.identity.uid);
        if !self.ctx.dry_run {
            self.reclaim(pod.as_deref()).await;
            let logs = sandbox::log_dir(node, &self.identity);
            if let Err(e) = std::fs::remove_dir_all(&logs)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %logs.display(), error = %e, "cannot remove the pod's log directory");
            }
        }
        self.ctx.statuses.remove(&self.identity.uid);
        // Only apiserver pods take part in the deletion handshake; a static
        // pod's mirror is the mirror writer's business.
        if let (Some(tx), Some(pod)) = (&self.ctx.terminated, pod.filter(|p| crate::pods::from_api(p))) {
            let status = final_status.unwrap_or_else(|| self.final_status(&RuntimePod::empty(self.identity.clone())));
            let _ = tx.send(super::Terminated { pod, status });
        }
        tracing::info!("pod removed");
    }

    /// kubelet's podResourcesAreReclaimed, made to hold before the pod is
    /// reported gone (and so before its API object is deleted): every CSI
    /// volume unpublished, every mount below the pod directory undone, the
    /// directory removed (never across a mount), its DRA claims unprepared
    /// and the pod cgroup removed.
    /// Retried with kubelet's volume back-off (0.5 s, doubling to 2 min 2 s)
    /// for as long as it takes; each new reason it is stuck is a
    /// FailedUnMount event. Meanwhile the volume records stay, so the volume
    /// stays in the Node's volumesInUse and is not detached.
    pub(super) async fn reclaim(&self, pod: Option<&Pod>) {
        let mut delay = RECLAIM_FIRST_RETRY;
        let mut reported: Option<String> = None;
        loop {
            let stuck = match self.try_reclaim(pod).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if reported.as_deref() != Some(stuck.as_str()) {
                self.event(EventType::Warning, "FailedUnMount", &format!("The pod's resources are not reclaimed yet, it stays until they are: {stuck}"));
                reported = Some(stuck.clone());
            }
            tracing::warn!(error = %stuck, retry_in = ?delay, "the pod's resources are not reclaimed yet");
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(RECLAIM_MAX_RETRY);
        }
    }

    async fn try_reclaim(&self, pod: Option<&Pod>) -> Result<(), String> {
        let node = &self.ctx.node;
        // A UID that names no directory never had one (workers are only
        // given plain UIDs): nothing on disk to reclaim.
        if let Ok(pod_dir) = sandbox::pod_dir(node, &self.identity.uid) {
            crate::volumes::csi::unpublish_pod(node, &self.ctx.csi, &pod_dir).await?;
            crate::volumes::tear_down(&pod_dir)?;
            crate::mounts::remove_all_one_filesystem(&pod_dir).map_err(|e| format!("removing the pod directory: {e}"))?;
        }
        self.ctx.in_use.release(&self.identity.uid);
        // DRA: the drivers unprepare the claims only this pod used (a
        // driver that cannot be reached keeps the pod until it can).
        self.ctx.dra.unprepare(&self.identity.uid).await.map_err(|e| format!("unprepare dynamic resources: {e}"))?;
        if node.cgroup_driver == crate::pods::CgroupDriver::Cgroupfs
            && let Some(p) = pod
        {
            cgroups::remove_pod_cgroup(&sandbox::cgroup_parent(p, node))?;
        }
        Ok(())
    }

    /// The status of a pod whose containers have all stopped: a terminal
    /// phase (Succeeded only if every container exited 0), as kubelet
    /// reports a deleted pod before removing it.
    fn final_status(&self, obs: &RuntimePod) -> k8s_openapi::api::core::v1::PodStatus {
        let Some(pod) = &self.pod else { return Default::default() };
        crate::pods::status::pod_status(&crate::pods::status::StatusInput {
            pod,
            observed: obs,
            waiting: &Default::default(),
            readiness: &Default::default(),
            started: &Default::default(),
            terminating: true,
            failed: self.failure.as_ref(),
            previous: self.last_status.as_ref(),
            start_time: Some(self.start_time),
            node: &self.ctx.node,
            now: k8s_openapi::jiff::Timestamp::now(),
            resize: Default::default(),
        })
    }
}
