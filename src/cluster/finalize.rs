//! The deletion handshake: once a deleted apiserver pod's containers have
//! stopped, post its final status and delete the object with grace 0 and a
//! UID precondition, as kubelet does, so the apiserver removes it only after
//! the node let go of it (and never removes a newer pod of the same name).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;

use super::{is_conflict, is_not_found};
use crate::pods::worker::Terminated;

pub async fn run(client: kube::Client, mut rx: mpsc::UnboundedReceiver<Terminated>) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => { handshakes.spawn(finish(client.clone(), t)); }
                None => break,
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
    while handshakes.join_next().await.is_some() {}
}

/// Posts the final status and deletes the object, retrying with a growing
/// delay until the apiserver answers: a pod left Terminating for ever is
/// worse than a late delete.
async fn finish(client: kube::Client, t: Terminated) {
    let ns = t.pod.metadata.namespace.clone().unwrap_or_default();
    let name = t.pod.metadata.name.clone().unwrap_or_default();
    let uid = t.pod.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let patch = serde_json::json!({"metadata": {"uid": uid}, "status": super::status_writer::explicit(&t.status)});
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    let mut delay = Duration::from_secs(1);
    let mut status_posted = false;
    loop {
        if !status_posted {
            match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch.clone())).await {
                Ok(_) => status_posted = true,
                Err(e) if is_not_found(&e) || is_conflict(&e) => return,
                Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "posting the final status failed; retrying"),
            }
        }
        if status_posted {
            match pods.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(pod = %format!("{ns}/{name}"), "pod object deleted");
                    return;
                }
                Err(e) if is_not_found(&e) || is_conflict(&e) => return,
                Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, retry_in = delay.as_secs(), "deleting the pod object failed; retrying"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
