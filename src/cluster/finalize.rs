//! The deletion handshake: once a deleted apiserver pod's containers have
//! stopped, post its final status and delete the object with grace 0 and a
//! UID precondition, as kubelet does, so the apiserver removes it only after
//! the node let go of it (and never removes a newer pod of the same name).

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;

use super::{is_conflict, is_not_found};
use crate::pods::worker::Terminated;

pub async fn run(client: kube::Client, mut rx: mpsc::UnboundedReceiver<Terminated>) {
    while let Some(t) = rx.recv().await {
        let ns = t.pod.metadata.namespace.clone().unwrap_or_default();
        let name = t.pod.metadata.name.clone().unwrap_or_default();
        let uid = t.pod.metadata.uid.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({"metadata": {"uid": uid}, "status": t.status});
        if let Err(e) = pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await
            && !is_not_found(&e)
        {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "posting the final status failed");
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match pods.delete(&name, &dp).await {
            Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod object deleted"),
            Err(e) if is_not_found(&e) || is_conflict(&e) => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting the pod object failed"),
        }
    }
}
