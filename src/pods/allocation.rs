//! In-place resize, kubelet's allocation manager: what each pod was
//! admitted with (allocated) and what its running containers were last
//! given (actuated), both kept in `<root-dir>/allocated_pods_state` and
//! `<root-dir>/actuated_pods_state` so that an agent restart neither
//! re-admits a pod at its new size unchecked nor forgets a resize half done.
//!
//! The pure part decides: whether a pod's desired resources differ from its
//! allocation (cpu and memory only, compared by value), the pod as it runs
//! (its spec with the allocation in place of what was asked), and which
//! resources of a running container still have to change and whether that
//! needs a restart (`resizePolicy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde::{Deserialize, Serialize};

use crate::resources;

/// The resizable resources.
pub const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// Per container name, the resources.
pub type PodResources = BTreeMap<String, ResourceRequirements>;

/// The containers whose resources can change in place: app containers and
/// sidecars (restartable init containers).
pub fn resizable_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let sidecars = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or(&[]).iter().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.map(|s| s.containers.as_slice()).unwrap_or(&[]).iter().chain(sidecars)
}

/// What `pod` asks for, per resizable container.
pub fn of_pod(pod: &Pod) -> PodResources {
    resizable_containers(pod).map(|c| (c.name.clone(), c.resources.clone().unwrap_or_default())).collect()
}

fn amount(r: &ResourceRequirements, list: &str, name: &str) -> Option<i64> {
    let m = if list == "limits" { r.limits.as_ref() } else { r.requests.as_ref() }?;
    let q = m.get(name)?;
    if name == "cpu" { resources::milli(q).ok() } else { resources::value(q).ok() }
}

/// Whether `a` and `b` differ in resource `name` (request or limit).
pub fn differs_in(a: &ResourceRequirements, b: &ResourceRequirements, name: &str) -> bool {
    ["requests", "limits"].iter().any(|l| amount(a, l, name) != amount(b, l, name))
}

/// Whether two containers' resources differ in what can be resized.
pub fn differs(a: &ResourceRequirements, b: &ResourceRequirements) -> bool {
    RESIZABLE.iter().any(|r| differs_in(a, b, r))
}

/// Whether the pod's desired resources differ from `allocated`.
pub fn resize_requested(pod: &Pod, allocated: &PodResources) -> bool {
    of_pod(pod).iter().any(|(name, want)| allocated.get(name).is_some_and(|have| differs(want, have)))
}

/// The pod as it runs: its spec with the allocated resources in place of
/// the desired ones (kubelet's UpdatePodFromAllocation).
pub fn with_allocation(pod: &Pod, allocated: &PodResources) -> Pod {
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        let lists = [Some(&mut spec.containers), spec.init_containers.as_mut()];
        for c in lists.into_iter().flatten().flat_map(|l| l.iter_mut()) {
            if let Some(a) = allocated.get(&c.name)
                && c.resources.as_ref().is_none_or(|r| differs(r, a))
            {
                c.resources = Some(a.clone());
            }
        }
    }
    pod
}

/// What a resize of one running container needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: it runs with what was allocated.
    None,
    /// UpdateContainerResources in place.
    Update,
    /// A changed resource's `resizePolicy` is RestartContainer.
    Restart,
}

/// The step container `c` (allocated spec) needs, running with `actuated`.
pub fn step(c: &Container, actuated: &ResourceRequirements) -> Step {
    let want = c.resources.clone().unwrap_or_default();
    let changed: Vec<&str> = RESIZABLE.iter().copied().filter(|r| differs_in(&want, actuated, r)).collect();
    if changed.is_empty() {
        return Step::None;
    }
    let restart = changed.iter().any(|r| {
        c.resize_policy.iter().flatten().any(|p| p.resource_name == *r && p.restart_policy == "RestartContainer")
    });
    if restart { Step::Restart } else { Step::Update }
}

/// One checkpoint file: per pod UID, per container, the resources.
#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    pods: BTreeMap<String, PodResources>,
}

/// A checkpointed map of pods' resources (allocated or actuated). Writes
/// are atomic, mode 0600; an unreadable file starts empty with a warning
/// (the pods are then taken at their spec, as a fresh kubelet does).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: Option<PathBuf>,
    data: Arc<Mutex<BTreeMap<String, PodResources>>>,
}

impl Checkpoint {
    /// Loads `dir/name`; `dir` None keeps it in memory (dry runs, tests).
    pub fn open(dir: Option<&Path>, name: &str) -> Self {
        let path = dir.map(|d| d.join(name));
        let data = match path.as_ref().map(std::fs::read) {
            Some(Ok(bytes)) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f.pods,
                Err(e) => {
                    tracing::warn!(file = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(), error = %e, "resource checkpoint unreadable; starting afresh");
                    BTreeMap::new()
                }
            },
            _ => BTreeMap::new(),
        };
        Self { path, data: Arc::new(Mutex::new(data)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodResources>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, uid: &str) -> Option<PodResources> {
        self.lock().get(uid).cloned()
    }

    pub fn container(&self, uid: &str, name: &str) -> Option<ResourceRequirements> {
        self.lock().get(uid)?.get(name).cloned()
    }

    pub fn set(&self, uid: &str, resources: PodResources) {
        let mut d = self.lock();
        if d.get(uid) == Some(&resources) {
            return;
        }
        d.insert(uid.to_string(), resources);
        self.save(&d);
    }

    pub fn set_container(&self, uid: &str, name: &str, resources: ResourceRequirements) {
        let mut d = self.lock();
        let pod = d.entry(uid.to_string()).or_default();
        if pod.get(name) == Some(&resources) {
            return;
        }
        pod.insert(name.to_string(), resources);
        self.save(&d);
    }

    pub fn remove(&self, uid: &str) {
        let mut d = self.lock();
        if d.remove(uid).is_some() {
            self.save(&d);
        }
    }

    /// Drops every pod not in `keep`.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let mut d = self.lock();
        let before = d.len();
        d.retain(|uid, _| keep(uid));
        if d.len() != before {
            self.save(&d);
        }
    }

    fn save(&self, d: &BTreeMap<String, PodResources>) {
        let Some(path) = &self.path else { return };
        let bytes = serde_json::to_vec(&File { pods: d.clone() }).unwrap_or_default();
        if let Err(e) = crate::files::write_atomic(path, &bytes, 0o600) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the resource checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(cpu: &str, policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {
                "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                                "resizePolicy": [{"resourceName": "memory", "restartPolicy": policy}]}],
                "initContainers": [
                    {"name": "once", "image": "i", "resources": {"requests": {"cpu": "1"}}},
                    {"name": "side", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn allocation_replaces_what_was_asked_and_compares_by_value() {
        let admitted = pod("500m", "NotRequired");
        let alloc = of_pod(&admitted);
        assert_eq!(alloc.keys().collect::<Vec<_>>(), ["c", "side"], "app containers and sidecars only");
        assert!(!resize_requested(&pod("0.5", "NotRequired"), &alloc), "500m and 0.5 are the same");
        let bigger = pod("750m", "NotRequired");
        assert!(resize_requested(&bigger, &alloc));
        let runs = with_allocation(&bigger, &alloc);
        assert_eq!(of_pod(&runs), alloc, "the pod runs at its allocation until the resize is admitted");
    }

    #[test]
    fn the_policy_of_a_changed_resource_decides_restart() {
        let running = of_pod(&pod("500m", "RestartContainer"))["c"].clone();
        let cpu_only = pod("750m", "RestartContainer");
        assert_eq!(step(&cpu_only.spec.as_ref().unwrap().containers[0], &running), Step::Update, "cpu's policy defaults to NotRequired");
        let mut memory = pod("500m", "RestartContainer");
        memory.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap().limits.as_mut().unwrap().insert("memory".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("256Mi".into()));
        assert_eq!(step(&memory.spec.as_ref().unwrap().containers[0], &running), Step::Restart);
        assert_eq!(step(&pod("500m", "RestartContainer").spec.as_ref().unwrap().containers[0], &running), Step::None);
    }

    #[test]
    fn the_checkpoint_survives_a_restart_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoint::open(Some(dir.path()), "allocated_pods_state");
        c.set("u1", of_pod(&pod("500m", "NotRequired")));
        c.set_container("u2", "x", ResourceRequirements::default());
        let again = Checkpoint::open(Some(dir.path()), "allocated_pods_state");
        assert_eq!(again.get("u1"), Some(of_pod(&pod("500m", "NotRequired"))));
        again.retain(&|uid| uid == "u1");
        assert!(Checkpoint::open(Some(dir.path()), "allocated_pods_state").get("u2").is_none());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("allocated_pods_state")).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(dir.path().join("allocated_pods_state"), b"{not json").unwrap();
        assert!(Checkpoint::open(Some(dir.path()), "allocated_pods_state").get("u1").is_none(), "a broken file starts empty");
    }
}
