//! The proxy role (cluster mode): the Service proxy with its own client
//! (kube-proxy's kubeconfig when given, else the node's), its permissions
//! checked once at start, watched by the systemd watchdog.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::AgentError;
use crate::cluster;
use crate::proxy::run::ProxySettings;
use crate::tasks::Tasks;
use crate::watchdog::{Beat, Watched};

/// Starts the proxy; the receiver fires once its first rules are written
/// (printed, in a dry run).
/// `statuses` and `trails`: the node's pods, in which the proxy looks for a
/// kube-proxy (other.rs), and where it notes that it stands by for one.
pub async fn start(
    p: ProxySettings,
    node_client: &kube::Client,
    statuses: &crate::pods::store::StatusStore,
    trails: Arc<crate::explain::Trails>,
    tasks: &mut Tasks,
    watched: &mut Vec<Watched>,
) -> Result<oneshot::Receiver<()>, AgentError> {
    // The kube-proxy pod bound here, followed from the pod store.
    let mut pods = statuses.subscribe();
    let (bound_tx, bound) = tokio::sync::watch::channel(None);
    tasks.spawn("kube-proxy pods", async move {
        loop {
            let found = crate::proxy::other::find_pod(pods.borrow_and_update().values().map(|r| r.pod.as_ref()));
            bound_tx.send_if_modified(|old| std::mem::replace(old, found.clone()) != found);
            if pods.changed().await.is_err() {
                // The pod store is gone only as the agent stops.
                return std::future::pending().await;
            }
        }
    });
    let note: Box<dyn Fn(&str, &str) + Send + Sync> =
        Box::new(move |uid, message| trails.push(uid, crate::pods::events::EventType::Normal, "ServiceProxyStandby", message));
    let kube_proxy_pods = crate::proxy::run::KubeProxyPods { bound, note };
    let (client, grant) = cluster::proxy_client(p.kubeconfig.as_deref(), node_client).await?;
    let (synced_tx, synced_rx) = oneshot::channel();
    let beat = Beat::default();
    // The proxy's loop turns at least once per sync period.
    watched.push(Watched { name: "Service proxy loop", beat: beat.clone(), allowance: 2 * p.sync_period + Duration::from_secs(30) });
    tasks.spawn("service proxy", async move {
        let check = cluster::access::check(&client, "proxy", cluster::access::PROXY, grant);
        let _ = tokio::time::timeout(Duration::from_secs(10), check).await;
        crate::proxy::run::run(client, p, Some(synced_tx), beat, Some(kube_proxy_pods)).await
    });
    Ok(synced_rx)
}
