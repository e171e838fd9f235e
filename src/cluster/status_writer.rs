//! The pod status writer: watches the statuses the pod workers publish and
//! patches `pods/status` when one changed, coalescing bursts. A static
//! pod's status goes to its mirror pod. Each patch carries the pod's UID as
//! a precondition, as kubelet's does, so a new pod under the same name is
//! never written with an old one's status.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

use super::podsource::Mirrors;
use crate::pods::manifest::{ANNOTATION_CONFIG_MIRROR, ANNOTATION_CONFIG_SOURCE};
use crate::pods::store::Statuses;

/// How long changes may pile up before they are written.
const COALESCE: Duration = Duration::from_millis(20);
/// Failed writes are tried again this often.
const RETRY: Duration = Duration::from_secs(5);
/// Patches in flight at once.
const PARALLEL: usize = 16;

fn is_static(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CONFIG_SOURCE)).is_some_and(|s| s != "api")
}

/// Where a status goes: namespace, name, and the UID the object must have.
fn target(pod: &Pod, mirrors: &Mirrors) -> Option<(String, String, String)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if !is_static(pod) {
        return Some((ns, name, uid));
    }
    let mirror = mirrors.get(&(ns.clone(), name.clone()))?;
    let hash = mirror.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CONFIG_MIRROR))?;
    (hash == &uid).then(|| (ns, name, mirror.metadata.uid.clone().unwrap_or_default()))
}

/// Top-level status fields nodelet owns: one it leaves unset is sent as
/// `null`, so a value from an earlier write (a pod IP, a message) is
/// cleared rather than kept by the merge. Container status lists have no
/// merge key in the API and are replaced whole.
const OWNED: &[&str] = &[
    "phase", "conditions", "message", "reason", "hostIP", "hostIPs", "podIP", "podIPs", "startTime", "qosClass",
    "initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses",
];

/// A status as a patch body with explicit nulls for what it leaves unset.
pub fn explicit(status: &PodStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in OWNED {
            m.entry(*k).or_insert(serde_json::Value::Null);
        }
    }
    v
}

pub async fn run(client: kube::Client, mut statuses: watch::Receiver<Statuses>, mut mirrors: watch::Receiver<Mirrors>) {
    let mut written: HashMap<String, PodStatus> = HashMap::new();
    loop {
        tokio::select! {
            r = statuses.changed() => if r.is_err() { return },
            _ = mirrors.changed() => {}
            _ = tokio::time::sleep(RETRY) => {}
        }
        tokio::time::sleep(COALESCE).await;
        let snapshot = statuses.borrow_and_update().clone();
        let mirror_set = mirrors.borrow_and_update().clone();
        let mut todo = Vec::new();
        for rec in snapshot.values() {
            let Some((ns, name, uid)) = target(&rec.pod, &mirror_set) else { continue };
            if written.get(&uid) == Some(&rec.status) {
                continue;
            }
            todo.push((ns, name, uid, rec.status.clone()));
        }
        let client = &client;
        let results: Vec<(String, PodStatus, bool)> = futures::stream::iter(todo)
            .map(|(ns, name, uid, status)| async move {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let patch = serde_json::json!({"metadata": {"uid": uid}, "status": explicit(&status)});
                let ok = match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "writing the pod status failed; will retry");
                        false
                    }
                };
                (uid, status, ok)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (uid, status, ok) in results {
            if ok {
                written.insert(uid, status);
            }
        }
        let live: Vec<String> = snapshot.values().filter_map(|r| target(&r.pod, &mirror_set).map(|t| t.2)).collect();
        written.retain(|uid, _| live.contains(uid));
    }
}
