//! What the worker tells the world: the pod's status (published to the
//! status store), activeDeadlineSeconds, and the back-off it waits out.

use super::*;

impl Worker {
    /// kubelet's active deadline: once `activeDeadlineSeconds` have passed
    /// since the pod started on this node, the pod is ended (phase Failed,
    /// reason DeadlineExceeded). Otherwise, when to look again.
    pub(super) fn check_deadline(&mut self, pod: &Pod, now: UnixNanos) -> Option<UnixNanos> {
        if self.failure.is_some() {
            return None;
        }
        let secs = pod.spec.as_ref()?.active_deadline_seconds?;
        let start = UnixNanos(i64::try_from(self.start_time.as_nanosecond()).unwrap_or(i64::MAX));
        let at = start.after(crate::clock::secs(secs));
        if now < at {
            return Some(at);
        }
        let failure = PodFailure::deadline_exceeded();
        tracing::info!(deadline = secs, "{}; stopping the pod", failure.message);
        self.event(EventType::Normal, &failure.reason, &failure.message);
        self.failure = Some(failure);
        None
    }

    /// Back-off entries of container specs the pod no longer has.
    pub(super) fn forget_old_backoffs(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else { return };
        let keys: BTreeSet<String> = plan::containers(spec).into_iter().map(|(c, _)| plan::backoff_key(c)).collect();
        self.crash_backoff.retain(|k| keys.contains(k));
    }

    pub(super) fn report_backoff(&mut self, waiting: &BTreeMap<String, Waiting>) {
        let looping: BTreeSet<String> =
            waiting.iter().filter(|(_, w)| w.reason == "CrashLoopBackOff").map(|(n, _)| n.clone()).collect();
        for name in looping.difference(&self.backoff_reported) {
            self.event(EventType::Warning, "BackOff", &format!("Back-off restarting failed container {name} in pod {}", self.identity));
        }
        self.backoff_reported = looping;
    }

    pub(super) fn publish(&mut self, pod: &DesiredPod, obs: &RuntimePod, waiting: &BTreeMap<String, Waiting>, probes: &ProbeView) {
        // An adopted pod started when its first sandbox did.
        if let Some(first) = obs.sandboxes.iter().map(|s| s.created_at).filter(|t| *t > 0).min()
            && let Ok(t) = Timestamp::from_nanosecond(first as i128)
            && t < self.start_time
        {
            self.start_time = t;
        }
        let actuated = self.ctx.actuated.get(&self.identity.uid);
        let status = pod_status(&StatusInput {
            pod,
            observed: obs,
            waiting,
            readiness: &probes.ready,
            started: &probes.started,
            terminating: false,
            failed: self.failure.as_ref(),
            previous: self.last_status.as_ref(),
            start_time: Some(self.start_time),
            node: &self.ctx.node,
            now: Timestamp::now(),
            resize: crate::pods::status::ResizeView {
                pending: self.resize_pending.as_ref().map(|p| (p.reason.as_str(), p.message.as_str())),
                in_progress: Self::resize_in_progress(pod, obs, actuated.as_ref()),
                error: self.resize_error.as_deref(),
                actuated: actuated.as_ref(),
            },
        });
        let was_pending = self.last_status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Pending"));
        if was_pending && status.phase.as_deref() == Some("Running") {
            self.ctx.metrics.pod_start_duration.observe(self.first_seen.elapsed().as_secs_f64());
        }
        // A finished pod holds no ReadWriteOncePod claim (the scheduler
        // does not count it either).
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
            && let Some(objects) = &self.ctx.objects
        {
            objects.release_claims(&self.identity.uid);
        }
        self.last_status = Some(status.clone());
        self.ctx.statuses.set(&self.identity.uid, PodRecord { pod: pod.clone(), status });
    }
}
