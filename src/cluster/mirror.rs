//! Mirror pods: every static pod gets a pod object in the API, bound to
//! this node, owned by the Node, marked `kubernetes.io/config.mirror` with
//! the static pod's hash. A mirror that is deleted, or that no longer
//! matches its static pod, is replaced; a mirror without a static pod is
//! removed. Deleting a mirror never stops the static pod.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use tokio::sync::watch;

use super::podsource::Mirrors;
use super::{is_conflict, is_not_found};
use crate::pods::manifest::{ANNOTATION_CONFIG_MIRROR, ANNOTATION_CONFIG_SOURCE};
use crate::pods::store::Statuses;

const RECHECK: Duration = Duration::from_secs(10);

/// A mirror whose static pod is not known is deleted only once it has been
/// missing this long: at start-up the static pod sources may not have
/// reported yet, and a mirror deleted then would only be made again.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);

/// The mirror pod for a static pod (pure).
pub fn mirror_of(static_pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut m = Pod { metadata: static_pod.metadata.clone(), spec: static_pod.spec.clone(), status: None };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.creation_timestamp = None;
    let hash = static_pod.metadata.uid.clone().unwrap_or_default();
    m.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(ANNOTATION_CONFIG_MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    m
}

pub async fn run(client: kube::Client, node: String, node_uid: String, mut statuses: watch::Receiver<Statuses>, mut mirrors: watch::Receiver<Mirrors>) {
    let mut missing_since: BTreeMap<(String, String), std::time::Instant> = BTreeMap::new();
    // Static pods this process has run: when one goes, its mirror goes at once.
    let mut seen: std::collections::BTreeSet<(String, String)> = Default::default();
    // The last failure per pod, so a persistent one is logged once.
    let mut failing: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        let statics: BTreeMap<(String, String), Pod> = statuses
            .borrow_and_update()
            .values()
            .filter(|r| r.pod.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CONFIG_SOURCE)).is_some_and(|s| s != "api"))
            .map(|r| ((r.pod.metadata.namespace.clone().unwrap_or_default(), r.pod.metadata.name.clone().unwrap_or_default()), (*r.pod).clone()))
            .collect();
        let existing = mirrors.borrow_and_update().clone();
        seen.extend(statics.keys().cloned());
        for ((ns, name), pod) in &statics {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let hash = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(m) = existing.get(&(ns.clone(), name.clone())) {
                let current = m.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_CONFIG_MIRROR)) == Some(&hash);
                if current && m.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                tracing::info!(pod = %format!("{ns}/{name}"), "replacing the mirror pod");
                delete(&pods, m).await;
            }
            let key = (ns.clone(), name.clone());
            match pods.create(&PostParams::default(), &mirror_of(pod, &node, &node_uid)).await {
                Ok(_) => {
                    failing.remove(&key);
                    tracing::info!(pod = %format!("{ns}/{name}"), "mirror pod created");
                }
                Err(e) if is_conflict(&e) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if failing.get(&key) != Some(&msg) {
                        tracing::warn!(pod = %format!("{ns}/{name}"), error = %msg, "creating the mirror pod failed; retrying");
                        failing.insert(key, msg);
                    }
                }
            }
        }
        failing.retain(|k, _| statics.contains_key(k));
        let now = std::time::Instant::now();
        missing_since.retain(|k, _| existing.contains_key(k) && !statics.contains_key(k));
        for (key, m) in &existing {
            if statics.contains_key(key) {
                continue;
            }
            let since = *missing_since.entry(key.clone()).or_insert(now);
            if seen.contains(key) || now.duration_since(since) >= ORPHAN_AFTER {
                tracing::info!(pod = %format!("{}/{}", key.0, key.1), "deleting a mirror pod without its static pod");
                delete(&Api::namespaced(client.clone(), &key.0), m).await;
                seen.remove(key);
            }
        }
        tokio::select! {
            r = statuses.changed() => if r.is_err() { return },
            _ = mirrors.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

async fn delete(pods: &Api<Pod>, m: &Pod) {
    let name = m.metadata.name.clone().unwrap_or_default();
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: m.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match pods.delete(&name, &dp).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) || is_conflict(&e) => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "deleting the mirror pod failed"),
    }
}
