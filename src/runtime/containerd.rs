//! What nodelet takes from containerd's own API (not CRI): task exit events,
//! so a container exit is acted on at once instead of at the next relist, and
//! image import for air-gapped nodes (see [`import`]).

pub mod import;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::events::TaskExit;
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::services::v1::events_client::EventsClient;
use prost::Message;
use tokio::sync::mpsc;

/// The containerd namespace the CRI plugin keeps its objects in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// One container exit reported by containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExitEvent {
    pub container_id: String,
    pub exit_status: u32,
}

/// Subscribes to `/tasks/exit` in the CRI namespace and forwards each exit
/// until `tx` closes. Reconnects with back-off when containerd goes away; a
/// runtime that is not containerd just never sends anything (the relist is
/// the safety net), with one warning.
pub async fn watch_task_exits(socket: PathBuf, tx: mpsc::Sender<TaskExitEvent>) {
    let mut delay = Duration::from_millis(500);
    let mut warned = false;
    loop {
        match subscribe_once(&socket, &tx).await {
            Ok(()) => return, // receiver gone: shutting down
            Err(e) => {
                if !warned {
                    tracing::warn!(socket = %socket.display(), error = %e,
                        "containerd event stream unavailable; container exits are seen at the next relist");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "containerd event stream retry");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn subscribe_once(socket: &Path, tx: &mpsc::Sender<TaskExitEvent>) -> Result<(), String> {
    let channel = containerd_client::connect(socket).await.map_err(|e| e.to_string())?;
    let mut client = EventsClient::new(channel);
    let req = SubscribeRequest { filters: vec![format!("topic==\"/tasks/exit\",namespace==\"{CRI_NAMESPACE}\"")] };
    // containerd sends the response headers with the first event, so this
    // returns only once something has exited.
    let mut stream = client.subscribe(req).await.map_err(|s| s.message().to_string())?.into_inner();
    loop {
        let envelope = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("event stream closed".into()),
            Err(s) => return Err(s.message().to_string()),
        };
        let Some(any) = envelope.event else { continue };
        let Ok(exit) = TaskExit::decode(any.value.as_slice()) else { continue };
        // Exec processes (probes) exit too; only the container's init process
        // (id == container id) is a container exit.
        if exit.id != exit.container_id && !exit.id.is_empty() {
            continue;
        }
        let ev = TaskExitEvent { container_id: exit.container_id, exit_status: exit.exit_status };
        if tx.send(ev).await.is_err() {
            return Ok(());
        }
    }
}
