//! The pod status writer: watches the statuses the pod workers publish and
//! patches `pods/status` when one changed, coalescing bursts. A static
//! pod's status goes to its mirror pod. Each patch carries the pod's UID as
//! a precondition, as kubelet's does, so a new pod under the same name is
//! never written with an old one's status.
//!
//! It also compares what it wrote with the pod as the server has it (the
//! bound-pod watch's cache) whenever that cache changes, and every ten
//! seconds as kubelet's status manager reconciles: when another party
//! changed what the node owns — the node lifecycle controller marks every
//! pod of an unreachable node NotReady — the node's status is written again
//! as soon as the node sees the change, not up to a period later.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
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
/// How long after a write the server's copy may still be the one from
/// before it (the watch's echo of the write not yet in the cache): a copy
/// that differs sooner is not taken as another party's change.
const ECHO: Duration = Duration::from_secs(2);
/// How often written statuses are compared with the server's copies even
/// when the server's copies did not change (kubelet's status manager syncs
/// in batches this often).
const RECONCILE: Duration = Duration::from_secs(10);

/// Whether the server's copy of a pod's status lost what the node wrote:
/// another phase, or a condition the node reports with another status.
pub fn server_differs(server: &PodStatus, ours: &PodStatus) -> bool {
    server.phase != ours.phase
        || ours.conditions.iter().flatten().any(|c| {
            server.conditions.iter().flatten().find(|s| s.type_ == c.type_).is_none_or(|s| s.status != c.status)
        })
}

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

/// Conditions the node sets only while something lasts (a resize): when
/// gone from its status they are deleted on the server, since a strategic
/// merge keeps list elements a patch does not name.
const TRANSIENT_CONDITIONS: &[&str] = &["PodResizePending", "PodResizeInProgress"];

/// A status as a patch body with explicit nulls for what it leaves unset:
/// top-level fields, a condition's reason and message (conditions merge by
/// type, so a reason from an earlier write would otherwise stay), and
/// `$patch: delete` for the transient conditions no longer reported.
pub fn explicit(status: &PodStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        for k in OWNED {
            m.entry(*k).or_insert(serde_json::Value::Null);
        }
        if let Some(serde_json::Value::Array(conditions)) = m.get_mut("conditions") {
            for c in conditions.iter_mut().filter_map(serde_json::Value::as_object_mut) {
                for k in ["reason", "message"] {
                    c.entry(k).or_insert(serde_json::Value::Null);
                }
            }
            for t in TRANSIENT_CONDITIONS {
                if !conditions.iter().any(|c| c["type"] == *t) {
                    conditions.push(serde_json::json!({"type": t, "$patch": "delete"}));
                }
            }
        }
    }
    v
}

/// Writes statuses forever. `server` is the bound-pod watch's cache;
/// `mirrors` is sent each time that cache settles after a change (the
/// bound-pod source sends it with every set), so its change is also the
/// sign to compare with the server again.
pub async fn run(
    client: kube::Client,
    mut statuses: watch::Receiver<Statuses>,
    mut mirrors: watch::Receiver<Mirrors>,
    server: Store<Pod>,
) {
    // What was written per UID, and when.
    let mut written: HashMap<String, (PodStatus, tokio::time::Instant)> = HashMap::new();
    let mut reconcile_tick = tokio::time::interval(RECONCILE);
    reconcile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut reconcile = false;
        tokio::select! {
            r = statuses.changed() => if r.is_err() { return },
            _ = mirrors.changed() => reconcile = true,
            _ = tokio::time::sleep(RETRY) => {}
            _ = reconcile_tick.tick() => reconcile = true,
        }
        tokio::time::sleep(COALESCE).await;
        let snapshot = statuses.borrow_and_update().clone();
        let mirror_set = mirrors.borrow_and_update().clone();
        let mut todo = Vec::new();
        for rec in snapshot.values() {
            let Some((ns, name, uid)) = target(&rec.pod, &mirror_set) else { continue };
            if let Some((status, at)) = written.get(&uid)
                && status == &rec.status
            {
                if at.elapsed() < ECHO {
                    continue;
                }
                let on_server = server.get(&ObjectRef::new(&name).within(&ns)).filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
                let lost = reconcile
                    && on_server.as_ref().and_then(|p| p.status.as_ref()).is_some_and(|s| server_differs(s, &rec.status));
                if !lost {
                    continue;
                }
                tracing::info!(pod = %format!("{ns}/{name}"), "the pod status on the server differs from the node's; writing it again");
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
                written.insert(uid, (status, tokio::time::Instant::now()));
            }
        }
        let live: Vec<String> = snapshot.values().filter_map(|r| target(&r.pod, &mirror_set).map(|t| t.2)).collect();
        written.retain(|uid, _| live.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodCondition;

    fn with_ready(phase: &str, ready: &str) -> PodStatus {
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![
                PodCondition { type_: "Ready".into(), status: ready.into(), ..Default::default() },
                PodCondition { type_: "Initialized".into(), status: "True".into(), ..Default::default() },
            ]),
            ..Default::default()
        }
    }

    #[test]
    fn a_status_another_party_changed_is_written_again() {
        let ours = with_ready("Running", "True");
        assert!(!server_differs(&ours, &ours));
        // The node lifecycle controller's MarkPodsNotReady.
        assert!(server_differs(&with_ready("Running", "False"), &ours));
        assert!(server_differs(&with_ready("Pending", "True"), &ours));
        assert!(server_differs(&PodStatus::default(), &ours));
        // Conditions the node does not report (a scheduler's, a readiness gate's) are not its business.
        let mut more = ours.clone();
        more.conditions.as_mut().unwrap().push(PodCondition { type_: "PodScheduled".into(), status: "True".into(), ..Default::default() });
        assert!(!server_differs(&more, &ours));
    }

    #[test]
    fn the_patch_clears_stale_reasons_and_ended_resize_conditions() {
        // Conditions merge by type on the server: a field the patch leaves out
        // would stay, an element it does not name would stay.
        let patch = explicit(&with_ready("Running", "True"));
        let conditions = patch["conditions"].as_array().unwrap();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert!(ready["reason"].is_null() && ready.as_object().unwrap().contains_key("reason"), "an explicit null clears it: {ready}");
        assert!(ready.as_object().unwrap().contains_key("message"));
        for t in ["PodResizePending", "PodResizeInProgress"] {
            assert!(conditions.iter().any(|c| c["type"] == t && c["$patch"] == "delete"), "{t}: {conditions:?}");
        }
        assert!(!conditions.iter().any(|c| c["type"] == "DisruptionTarget"), "another party's condition is left alone");
        let mut resizing = with_ready("Running", "True");
        resizing.conditions.as_mut().unwrap().push(PodCondition { type_: "PodResizeInProgress".into(), status: "True".into(), ..Default::default() });
        let patch = explicit(&resizing);
        assert!(!patch["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "PodResizeInProgress" && c["$patch"] == "delete"));
    }
}
