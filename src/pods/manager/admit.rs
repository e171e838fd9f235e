//! What the manager decides per pod before a worker runs it: admission
//! (kubelet's admit handlers, against the Node and the pods already
//! admitted), the rejection published as the pod's status, and in-place
//! resize requests checked and handed to the pod's worker.

use super::*;

impl PodManager {
    /// Admission for a new apiserver pod; static pods pass the resource
    /// checks (their manifests were validated). A UID that cannot name the
    /// pod's directory, or a sysctl the node does not allow, is refused
    /// whatever the source.
    pub(super) async fn admit(&self, pod: &DesiredPod) -> Result<(), Rejection> {
        self.admit_checks(pod)?;
        // Then the resource managers choose each container's CPUs and
        // devices, or refuse the pod with none chosen (kubelet's order:
        // CPU manager, then device manager).
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let held = !self.ctx.cpus.exclusive(uid).is_empty();
        let held_devices = spec_containers(pod).any(|c| !self.ctx.devices.assigned(uid, c).is_empty());
        let held_memory = !self.ctx.memory.pinned(uid).is_empty();
        let undo = |reason: String, message: String| {
            if !held {
                self.ctx.cpus.release(uid);
            }
            if !held_memory {
                self.ctx.memory.release(uid);
            }
            if !held_devices {
                self.ctx.devices.release(uid);
            }
            Rejection { reason, message: format!("Pod was rejected: {message}") }
        };
        let tm = self.ctx.topology;
        if !tm.is_on() {
            self.ctx.cpus.admit(pod).map_err(|r| Rejection { reason: r.reason, message: format!("Pod was rejected: {}", r.message) })?;
            self.ctx.memory.admit_aligned(pod, None, &|_| None).map_err(|r| undo(r.reason, r.message))?;
            return self.ctx.devices.admit(pod).await.map_err(|r| undo(r.reason, r.message));
        }
        // The topology manager: the providers' hints merged for each
        // container (or once for the pod), admitted by the policy, and the
        // chosen NUMA nodes handed to the CPU and device managers.
        let steps: Vec<Option<String>> = match tm.config.scope {
            crate::topology::Scope::Pod => vec![None],
            crate::topology::Scope::Container => pod
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                .map(|c| Some(c.name.clone()))
                .collect(),
        };
        for step in steps {
            let container = step.as_deref();
            let mut hints = vec![self.ctx.cpus.hints(pod, container), self.ctx.memory.hints(pod, container)];
            hints.extend(self.ctx.devices.hints(pod, container, tm.machine));
            let (best, admit) = crate::topology::merge(tm.machine, tm.config.policy, &hints);
            if !admit {
                tracing::info!(pod = %pod_ref(pod), container = container.unwrap_or("(pod scope)"), policy = tm.config.policy.name(), hints = ?hints, "topology manager: no aligned placement");
                return Err(undo(crate::topology::REASON.into(), crate::topology::MESSAGE.into()));
            }
            let mask = best.mask;
            tracing::debug!(pod = %pod_ref(pod), container = container.unwrap_or("(pod scope)"), numa = ?mask.map(crate::topology::nodes_of), preferred = best.preferred, "topology manager hint");
            let numa = |c: &str| if container.is_none_or(|x| x == c) { mask } else { None };
            self.ctx.cpus.admit_aligned(pod, container, &numa).map_err(|r| undo(r.reason, r.message))?;
            self.ctx.memory.admit_aligned(pod, container, &numa).map_err(|r| undo(r.reason, r.message))?;
            self.ctx.devices.admit_aligned(pod, container, &numa).await.map_err(|r| undo(r.reason, r.message))?;
        }
        Ok(())
    }

    fn admit_checks(&self, pod: &DesiredPod) -> Result<(), Rejection> {
        if let Err(e) = crate::files::component(pod.metadata.uid.as_deref().unwrap_or_default(), "metadata.uid") {
            return Err(Rejection { reason: "InvalidUID".into(), message: format!("Pod was rejected: {e}") });
        }
        // kubelet's sysctl admission runs for pods of every source.
        if let Err(message) = self.sysctls.check(pod) {
            return Err(Rejection { reason: crate::sysctls::FORBIDDEN_REASON.into(), message: format!("Pod was rejected: {message}") });
        }
        // kubelet's AppArmor admission, for pods not yet running (a running
        // pod is not checked again).
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if !self.runtime_pods.contains_key(uid)
            && let Err(message) = crate::pods::apparmor::check(pod, self.apparmor_enabled)
        {
            return Err(Rejection { reason: "AppArmor".into(), message: format!("Pod was rejected: {message}") });
        }
        let Some((node, labels, taints)) = &self.admission else { return Ok(()) };
        if !from_api(pod) {
            return Ok(());
        }
        if self.shutting_down.as_ref().is_some_and(|s| *s.borrow()) {
            return Err(Rejection { reason: "NodeShutdown".into(), message: "Pod was rejected as the node is shutting down.".into() });
        }
        // kubelet's eviction admission: under memory pressure no BestEffort
        // pod; under disk or PID pressure no pod (critical ones aside).
        if let Some(p) = self.pressure.as_ref().map(|p| *p.borrow()) {
            let critical = is_critical(pod);
            let best_effort = pod.spec.as_ref().is_some_and(|s| crate::pods::qos::qos_class(s) == crate::pods::qos::QosClass::BestEffort);
            let mut conditions = Vec::new();
            if p.memory && (best_effort || p.disk || p.pid) {
                conditions.push("MemoryPressure");
            }
            if p.disk {
                conditions.push("DiskPressure");
            }
            if p.pid {
                conditions.push("PIDPressure");
            }
            if !critical && !conditions.is_empty() {
                return Err(Rejection { reason: "Evicted".into(), message: format!("The node had condition: [{}]. ", conditions.join(", ")) });
            }
        }
        let own = pod.metadata.uid.as_deref().unwrap_or_default();
        // A pod that already holds its devices (the checkpoint, after a
        // restart) is not counted against devices that are unhealthy only
        // until their plugin registers again.
        let holds_devices = spec_containers(pod).any(|c| !self.ctx.devices.assigned(own, c).is_empty());
        let extended = if holds_devices { Default::default() } else { self.ctx.devices.allocatable() };
        let node = NodeResources { labels: labels.borrow().clone(), taints: taints.borrow().clone(), extended, ..node.clone() };
        let node = &node;
        let others = self.admitted_pods(own);
        admission::admit(pod, &others.iter().collect::<Vec<_>>(), node)
    }

    /// The pods admitted here, but `except`, at their allocated resources.
    pub(super) fn admitted_pods(&self, except: &str) -> Vec<Pod> {
        let statuses = self.ctx.statuses.snapshot();
        let done = |uid: &str| statuses.get(uid).is_some_and(|r| is_terminal(&r.status));
        self.workers
            .iter()
            .filter(|(uid, h)| uid.as_str() != except && !h.terminating && !done(uid))
            .filter_map(|(uid, h)| Some(self.effective(uid, h.pod.as_deref()?)))
            .collect()
    }

    /// The pod as it runs here: its spec at the resources it was allocated.
    pub(super) fn effective(&self, uid: &str, pod: &Pod) -> Pod {
        match self.ctx.allocated.get(uid) {
            Some(a) => allocation::with_allocation(pod, &a),
            None => pod.clone(),
        }
    }

    /// kubelet's handlePodResourcesResize: the desired pod's resources
    /// against what it was allocated. A resize that fits is allocated (and
    /// checkpointed); one that cannot be made says why (Infeasible: never on
    /// this node; Deferred: not while the other pods hold what they hold).
    pub(super) fn resize(&self, uid: &str, desired: &Pod) -> Option<ResizePending> {
        let Some(allocated) = self.ctx.allocated.get(uid) else {
            self.ctx.allocated.set(uid, allocation::of_pod(desired));
            return None;
        };
        if !allocation::resize_requested(desired, &allocated) {
            return None;
        }
        let pending = |reason: &str, message: String| Some(ResizePending { reason: reason.into(), message });
        if !from_api(desired) {
            return pending("Infeasible", "In-place resize of static-pods is not supported".into());
        }
        let running = allocation::with_allocation(desired, &allocated);
        // kubelet 1.34 (the InPlacePodVerticalScalingExclusiveCPUs and
        // ...ExclusiveMemory gates off): a Guaranteed pod's cpu does not
        // change under the static CPU manager, nor its memory under the
        // Static memory manager (its exclusive CPUs or NUMA memory would not
        // follow); other resizes of it go ahead.
        let changed = |resource: &str| {
            allocation::resizable_containers(desired)
                .zip(allocation::resizable_containers(&running))
                .any(|(want, have)| allocation::differs_in(&want.resources.clone().unwrap_or_default(), &have.resources.clone().unwrap_or_default(), resource))
        };
        let guaranteed = running.spec.as_ref().is_some_and(|s| crate::pods::qos::qos_class(s) == crate::pods::qos::QosClass::Guaranteed);
        if guaranteed && self.ctx.cpus.is_static() && changed("cpu") {
            return pending("Infeasible", "Resize is infeasible for Guaranteed Pods alongside CPU Manager policy \"static\"".into());
        }
        if guaranteed && self.ctx.memory.is_static() && changed("memory") {
            return pending("Infeasible", "Resize is infeasible for Guaranteed Pods alongside Memory Manager policy \"Static\"".into());
        }
        let swap = &self.ctx.node.swap;
        let swapping = allocation::resizable_containers(desired).zip(allocation::resizable_containers(&running)).any(|(want, have)| {
            let memory_changed = allocation::differs_in(&want.resources.clone().unwrap_or_default(), &have.resources.clone().unwrap_or_default(), "memory");
            let restarts = have.resize_policy.iter().flatten().any(|p| p.resource_name == "memory" && p.restart_policy == "RestartContainer");
            memory_changed
                && !restarts
                && (crate::pods::swap::behavior_for(desired, want, swap) != crate::config::SwapBehavior::NoSwap
                    || crate::pods::swap::behavior_for(&running, have, swap) != crate::config::SwapBehavior::NoSwap)
        });
        if swapping {
            return pending("Infeasible", "In-place resize of containers with swap is not supported.".into());
        }
        let (cpu_cap, mem_cap) = match &self.admission {
            Some((n, _, _)) => (n.cpu_millis, n.memory_bytes),
            None => (self.ctx.node.cpu_capacity_millis, self.ctx.node.memory_capacity_bytes),
        };
        let (cpu, mem) = admission::requests(desired.spec.as_ref().unwrap_or(&Default::default()));
        if mem > crate::resources::Amount::new(mem_cap) {
            return pending("Infeasible", format!("Node didn't have enough capacity: memory, requested: {mem}, capacity: {mem_cap}"));
        }
        if cpu > crate::resources::Amount::new(cpu_cap) {
            return pending("Infeasible", format!("Node didn't have enough capacity: cpu, requested: {}, capacity: {cpu_cap}", cpu));
        }
        if let Some((node, labels, taints)) = &self.admission {
            let node = NodeResources { labels: labels.borrow().clone(), taints: taints.borrow().clone(), ..node.clone() };
            let others = self.admitted_pods(uid);
            if let Err(r) = admission::admit(desired, &others.iter().collect::<Vec<_>>(), &node) {
                let message = r.message.strip_prefix("Pod was rejected: ").unwrap_or(&r.message).to_string();
                return pending("Deferred", message);
            }
        }
        tracing::info!(pod = %identity(desired), "resize allocated");
        self.ctx.allocated.set(uid, allocation::of_pod(desired));
        None
    }

    /// Evaluates a running pod's resize and tells its worker what changed.
    pub(super) async fn resize_and_update(&mut self, uid: &str, desired: &DesiredPod, changed: bool) {
        let before = self.ctx.allocated.get(uid);
        let pending = self.resize(uid, desired);
        let reallocated = self.ctx.allocated.get(uid) != before;
        let effective = Arc::new(self.effective(uid, desired));
        let was = self.resize_pending.get(uid).cloned();
        match &pending {
            Some(p) => {
                if was.as_ref() != Some(p) {
                    tracing::info!(pod = %identity(desired), reason = %p.reason, "resize pending: {}", p.message);
                }
                self.resize_pending.insert(uid.to_string(), p.clone());
            }
            None => {
                self.resize_pending.remove(uid);
            }
        }
        if was != pending {
            self.send(uid, WorkerMsg::ResizePending(pending)).await;
        }
        if changed || reallocated {
            self.send(uid, WorkerMsg::Update(effective)).await;
        }
    }

    /// Publishes a Failed status for a rejected pod.
    pub(super) fn publish_rejection(&self, pod: &DesiredPod, r: &Rejection) {
        let status = PodStatus {
            phase: Some("Failed".into()),
            reason: Some(r.reason.clone()),
            message: Some(r.message.clone()),
            ..Default::default()
        };
        self.ctx.statuses.set(&identity(pod).uid, PodRecord { pod: pod.clone(), status });
    }
}

/// The names of every container of `pod` (init and app).
fn spec_containers(pod: &DesiredPod) -> impl Iterator<Item = &str> {
    pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers)).map(|c| c.name.as_str())
}

fn pod_ref(pod: &DesiredPod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or_default())
}
