//! In-place resize: the allocated resources actuated on running
//! containers (UpdateContainerResources), and the resize conditions.

use super::*;

impl Worker {
    /// In-place resize of the running containers (kubelet's
    /// doPodResizeAction): those whose resources differ from the pod's
    /// allocation get UpdateContainerResources, between two writes of the pod
    /// cgroup (first the larger of old and new, then the new); those whose
    /// changed resource's resizePolicy is RestartContainer are returned, for
    /// the plan to restart.
    pub(super) async fn resize_in_place(&mut self, pod: &Pod, obs: &RuntimePod) -> BTreeSet<String> {
        use crate::pods::allocation::{self, Step};
        let uid = self.identity.uid.clone();
        let mut restart = BTreeSet::new();
        let mut updates = Vec::new();
        for c in allocation::resizable_containers(pod) {
            let Some(x) = obs.latest(&c.name).filter(|x| x.phase == crate::runtime::observe::ContainerPhase::Running) else { continue };
            let Some(actuated) = self.ctx.actuated.container(&uid, &c.name) else {
                // Started before its resources were recorded: as created.
                self.ctx.actuated.set_container(&uid, &c.name, c.resources.clone().unwrap_or_default());
                continue;
            };
            match allocation::step(c, &actuated) {
                Step::None => {}
                Step::Restart => {
                    restart.insert(x.id.clone());
                }
                Step::Update => updates.push((x.id.clone(), c.clone(), actuated)),
            }
        }
        if updates.is_empty() {
            if restart.is_empty() {
                self.resize_error = None;
            }
            return restart;
        }
        let node = self.ctx.node.clone();
        let pod_cgroup = (node.cgroup_driver == crate::pods::CgroupDriver::Cgroupfs && node.cgroups_per_qos && !self.ctx.dry_run)
            .then(|| sandbox::cgroup_parent(pod, &node));
        let mut before = pod.clone();
        if let Some(spec) = before.spec.as_mut() {
            for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
                if let Some((_, _, old)) = updates.iter().find(|(_, u, _)| u.name == c.name) {
                    c.resources = Some(old.clone());
                }
            }
        }
        let new_limits = crate::pods::cgroups::pod_limits(pod);
        let wider = crate::pods::cgroups::pod_limits(&before).max(&new_limits);
        if let Some(parent) = &pod_cgroup
            && let Err(e) = crate::pods::cgroups::ensure_pod_cgroup(parent, &wider, node.pod_pids_limit)
        {
            self.resize_failed(format!("setting the pod cgroup {parent}: {e}"));
            return restart;
        }
        let mut failed = None;
        for (id, c, _) in &updates {
            let linux = crate::pods::container::linux_resources(pod, c, &node);
            match self.ctx.runtime.update_container_resources(id, &linux).await {
                Ok(()) => {
                    tracing::info!(container = %c.name, "resized in place");
                    self.ctx.actuated.set_container(&uid, &c.name, c.resources.clone().unwrap_or_default());
                }
                Err(e) => failed = Some(format!("container {}: {e}", c.name)),
            }
        }
        // The pod cgroup at its new size once the containers fit in it (a
        // container that failed keeps the wider one until it is resized).
        if failed.is_none()
            && let Some(parent) = &pod_cgroup
            && let Err(e) = crate::pods::cgroups::ensure_pod_cgroup(parent, &new_limits, node.pod_pids_limit)
        {
            failed = Some(format!("setting the pod cgroup {parent}: {e}"));
        }
        match failed {
            Some(e) => self.resize_failed(e),
            None if restart.is_empty() => self.resize_error = None,
            None => {}
        }
        restart
    }

    pub(super) fn resize_failed(&mut self, message: String) {
        tracing::warn!(error = %message, "in-place resize failed; retrying");
        if self.resize_error.as_deref() != Some(message.as_str()) {
            self.event(EventType::Warning, "ResizeError", &message);
        }
        self.resize_error = Some(message);
    }

    /// Whether a running container's resources still differ from the pod's
    /// allocation (`actuated`: what the pod's containers were last given).
    pub(super) fn resize_in_progress(pod: &Pod, obs: &RuntimePod, actuated: Option<&crate::pods::allocation::PodResources>) -> bool {
        crate::pods::allocation::resizable_containers(pod).any(|c| {
            obs.latest(&c.name).is_some_and(|x| x.phase == crate::runtime::observe::ContainerPhase::Running)
                && actuated.and_then(|a| a.get(&c.name)).is_some_and(|a| crate::pods::allocation::step(c, a) != crate::pods::allocation::Step::None)
        })
    }
}
