//! The bound-pod source: a kube-rs watcher on pods with
//! `fieldSelector=spec.nodeName=<node>`, kept in a reflector store. Each
//! change sends the whole set (kubelet's SET) to the pod manager, once the
//! first list is in. Mirror pods are not pods to run: they go to the mirror
//! manager instead. Watch errors, 410 Gone and apiserver restarts are
//! handled by the watcher (relist with back-off); the last set stands
//! meanwhile, so nothing running is touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::{mpsc, watch};

use crate::pods::manifest::ANNOTATION_CONFIG_MIRROR;
use crate::pods::source::{SourceName, SourceUpdate};

/// Whether a pod is the mirror of a static pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_CONFIG_MIRROR))
}

/// Mirror pods by namespace/name.
pub type Mirrors = BTreeMap<(String, String), Arc<Pod>>;

/// How long a burst of watch events may settle before the set is sent.
const SETTLE: Duration = Duration::from_millis(10);

/// Follows the node's pods into `writer` (whose reader the status writer
/// shares) and sends each settled set.
pub async fn run(
    client: kube::Client,
    node: String,
    tx: mpsc::Sender<SourceUpdate>,
    mirrors: watch::Sender<Mirrors>,
    writer: reflector::store::Writer<Pod>,
) {
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let reader = writer.as_reader();
    let mut stream = crate::kubeapi::backed_off(watcher(pods, config)).reflect(writer).boxed();
    let mut ready = false;
    let mut outage = crate::kubeapi::Outage::default();
    const WHAT: &str = "the pod watch (running pods are not touched)";
    loop {
        let Some(event) = stream.next().await else { return };
        match &event {
            Err(e) => {
                outage.failed(WHAT, e);
                continue;
            }
            Ok(watcher::Event::InitDone) => ready = true,
            Ok(_) => {}
        }
        if crate::kubeapi::answered(&event) {
            outage.works(WHAT);
        }
        if !ready {
            continue;
        }
        // Let a burst of changes settle into one set.
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(ev)) = futures::FutureExt::now_or_never(stream.next()) {
            if let Ok(watcher::Event::InitDone) = ev {
                ready = true;
            }
        }
        let (run, mirror): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = reader.state().into_iter().partition(|p| !is_mirror(p));
        mirrors.send_replace(
            mirror
                .into_iter()
                .map(|p| ((p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default()), p))
                .collect(),
        );
        if tx.send(SourceUpdate { source: SourceName::Api, pods: Some(run), errors: Vec::new() }).await.is_err() {
            return;
        }
    }
}
