//! The proxy role (cluster mode): the Service proxy with its own client
//! (kube-proxy's kubeconfig when given, else the node's), its permissions
//! checked once at start, watched by the systemd watchdog.

use std::time::Duration;

use tokio::sync::oneshot;

use super::AgentError;
use crate::cluster;
use crate::proxy::run::ProxySettings;
use crate::tasks::Tasks;
use crate::watchdog::{Beat, Watched};

/// Starts the proxy; the receiver fires once its first rules are written
/// (printed, in a dry run).
/// `pods`: the node's pods, in which the proxy looks for kube-proxy.
pub async fn start(
    p: ProxySettings,
    node_client: &kube::Client,
    pods: crate::proxy::run::NodePods,
    tasks: &mut Tasks,
    watched: &mut Vec<Watched>,
) -> Result<oneshot::Receiver<()>, AgentError> {
    let (client, grant) = cluster::proxy_client(p.kubeconfig.as_deref(), node_client).await?;
    let (synced_tx, synced_rx) = oneshot::channel();
    let beat = Beat::default();
    // The proxy's loop turns at least once per sync period.
    watched.push(Watched { name: "Service proxy loop", beat: beat.clone(), allowance: 2 * p.sync_period + Duration::from_secs(30) });
    tasks.spawn("service proxy", async move {
        let check = cluster::access::check(&client, "proxy", cluster::access::PROXY, grant);
        let _ = tokio::time::timeout(Duration::from_secs(10), check).await;
        crate::proxy::run::run(client, p, Some(synced_tx), beat, Some(pods)).await
    });
    Ok(synced_rx)
}
