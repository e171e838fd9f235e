//! Fixtures shared by the planner and status tests: a pod spec and a
//! runtime state built up container by container.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pods::backoff::{Backoff, BackoffConfig};
use crate::pods::container::container_hash;
use crate::pods::manifest::{self, StaticOrigin};
use crate::pods::plan::{Plan, PlanInput, container_spec, plan};
use crate::runtime::labels::{self, PodIdentity};
use crate::runtime::{ContainerPhase, ObservedContainer, ObservedSandbox, RuntimePod};

pub const S: i64 = 1_000_000_000;
pub const NOW: i64 = 1_000 * S;

pub fn pod(restart: &str, init: &[&str], apps: &[&str]) -> Pod {
    let list = |names: &[&str]| {
        names.iter().map(|n| format!("  - {{name: {n}, image: 'busybox:1', command: [sh]}}\n")).collect::<String>()
    };
    let mut yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  restartPolicy: {restart}\n");
    if !init.is_empty() {
        yaml += &format!("  initContainers:\n{}", list(init));
    }
    yaml += &format!("  containers:\n{}", list(apps));
    manifest::load_static(yaml.as_bytes(), "n", &StaticOrigin::File("/p.yaml".into())).unwrap().0
}

pub fn spec_container(p: &Pod, name: &str) -> Container {
    container_spec(p.spec.as_ref().unwrap(), name).unwrap().0
}

/// Adds an ephemeral container (as `kubectl debug` does) to a pod.
pub fn with_ephemeral(mut p: Pod, name: &str, target: Option<&str>) -> Pod {
    let e = k8s_openapi::api::core::v1::EphemeralContainer {
        name: name.into(),
        image: Some("busybox:1".into()),
        target_container_name: target.map(Into::into),
        ..Default::default()
    };
    p.spec.as_mut().unwrap().ephemeral_containers.get_or_insert_with(Vec::new).push(e);
    p
}

pub struct World {
    pub pod: Pod,
    pub obs: RuntimePod,
    pub unhealthy: std::collections::BTreeMap<String, crate::pods::plan::KillReason>,
    pub resize_restart: std::collections::BTreeSet<String>,
    clock: i64,
}

impl World {
    pub fn new(pod: Pod) -> Self {
        let id = PodIdentity { namespace: "default".into(), name: "p-n".into(), uid: "u".into() };
        Self { pod, obs: RuntimePod::empty(id), unhealthy: Default::default(), resize_restart: Default::default(), clock: S }
    }

    pub fn sandbox(mut self, id: &str, attempt: u32, ready: bool) -> Self {
        self.clock += 1;
        self.obs.sandboxes.insert(0, ObservedSandbox { id: id.into(), attempt, ready, created_at: self.clock, ips: vec![] });
        self
    }

    /// A container instance in sandbox `sb`; `exit` None means running.
    pub fn container(mut self, sb: &str, name: &str, attempt: u32, exit: Option<i32>) -> Self {
        self.clock += 1;
        let hash = container_hash(&spec_container(&self.pod, name));
        let phase = if exit.is_some() { ContainerPhase::Exited } else { ContainerPhase::Running };
        self.obs.containers.insert(
            0,
            ObservedContainer {
                id: format!("{name}-{attempt}"),
                sandbox_id: sb.into(),
                name: name.into(),
                attempt,
                phase,
                created_at: self.clock,
                started_at: if exit.is_some() { NOW - 6 * S } else { self.clock },
                finished_at: if exit.is_some() { NOW - 5 * S } else { 0 },
                exit_code: exit.unwrap_or(0),
                reason: String::new(),
                message: String::new(),
                image: "busybox:1".into(),
                image_ref: "sha256:x".into(),
                annotations: HashMap::from([(labels::CONTAINER_HASH.to_string(), hash)]),
            },
        );
        self
    }

    pub fn plan_with(&self, backoff: &Backoff) -> Plan {
        plan(&PlanInput { pod: &self.pod, observed: &self.obs, backoff, now: crate::clock::UnixNanos(NOW), network_ready: true, unhealthy: &self.unhealthy, resize_restart: &self.resize_restart })
    }

    pub fn plan(&self) -> Plan {
        self.plan_with(&Backoff::new(BackoffConfig::default()))
    }
}

