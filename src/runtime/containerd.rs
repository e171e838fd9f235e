//! What nodelet takes from containerd's own API (not CRI): its event stream
//! (task exits, OOM kills, deleted containers), so the relist loop acts on a
//! change at once and relists only rarely otherwise, and
//! image import for air-gapped nodes (see [`import`]).

pub mod import;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::events::TaskExit;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::services::v1::events_client::EventsClient;
use prost::Message;
use tokio::sync::{mpsc, watch};

/// The containerd namespace the CRI plugin keeps its objects in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// One container exit reported by containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExitEvent {
    pub container_id: String,
    pub exit_status: u32,
}

/// What containerd's event stream tells the relist loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A container's (or sandbox's) process exited.
    Exit(TaskExitEvent),
    /// Something else changed (an OOM kill, a container removed by another
    /// client), or the stream was (re)established and what happened while
    /// it was down is unknown: relist.
    Changed,
}

/// The topic nodelet publishes to see its own subscription working
/// (containerd sends a subscription's response headers only with its first
/// event, so without one a stream cannot be told from one still being set up).
const PING: &str = "/nodelet/ping";

/// Subscribes to task exits, OOM kills and container deletions in the CRI
/// namespace and forwards them until `tx` closes; `live` says whether the
/// subscription is known to work (its ping came back), which lets the
/// relist loop slow down. Reconnects with back-off when containerd goes
/// away; a runtime that is not containerd never confirms, with one warning,
/// and the relist stays at its fast period.
pub async fn watch_events(socket: PathBuf, tx: mpsc::Sender<RuntimeEvent>, live: watch::Sender<bool>) {
    let mut delay = Duration::from_millis(500);
    let mut warned = false;
    loop {
        let result = subscribe_once(&socket, &tx, &live).await;
        let was_live = live.send_replace(false);
        match result {
            Ok(()) => return, // receiver gone: shutting down
            Err(e) => {
                if was_live {
                    tracing::warn!(error = %e, "containerd event stream lost; relisting every second until it is back");
                    delay = Duration::from_millis(500);
                } else if !warned {
                    tracing::warn!(socket = %socket.display(), error = %e,
                        "containerd event stream unavailable; container changes are seen at the next relist (every second)");
                } else {
                    tracing::debug!(error = %e, "containerd event stream retry");
                }
                warned = true;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn subscribe_once(socket: &Path, tx: &mpsc::Sender<RuntimeEvent>, live: &watch::Sender<bool>) -> Result<(), String> {
    if hooks::dropped() {
        return Err("dropped for a test (NODELET_TEST_DROP_EVENT_STREAM)".into());
    }
    let channel = containerd_client::connect(socket).await.map_err(|e| e.to_string())?;
    let mut client = EventsClient::new(channel.clone());
    let topics = ["/tasks/exit", "/tasks/oom", "/containers/delete", PING];
    let filters = topics.iter().map(|t| format!("topic==\"{t}\",namespace==\"{CRI_NAMESPACE}\"")).collect();
    let subscribe = client.subscribe(SubscribeRequest { filters });
    tokio::pin!(subscribe);
    // Ping until the subscription answers (with the ping, or a real event).
    let mut publisher = EventsClient::new(channel);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        tokio::select! {
            r = &mut subscribe => break r,
            _ = tick.tick() => {
                if tokio::time::Instant::now() > deadline {
                    return Err("the subscription did not answer its ping in 10 s".into());
                }
                let mut req = tonic::Request::new(PublishRequest {
                    topic: PING.into(),
                    event: Some(prost_types::Any { type_url: "nodelet.io/ping".into(), value: Vec::new() }),
                });
                req.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE));
                if let Err(s) = publisher.publish(req).await {
                    return Err(format!("publishing the ping: {}", s.message()));
                }
            }
        }
    };
    let mut stream = response.map_err(|s| s.message().to_string())?.into_inner();
    loop {
        let envelope = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return Err("event stream closed".into()),
            Err(s) => return Err(s.message().to_string()),
        };
        if *live.borrow() && hooks::drop_now() {
            return Err("dropped for a test, with the event it carried (NODELET_TEST_DROP_EVENT_STREAM)".into());
        }
        let event = match envelope.topic.as_str() {
            // The first event proves the stream; relist for whatever
            // happened before it.
            _ if !*live.borrow() => {
                live.send_replace(true);
                tracing::info!("containerd event stream live; the periodic relist slows down");
                Some(RuntimeEvent::Changed)
            }
            PING => None,
            "/tasks/exit" => {
                let Some(any) = envelope.event else { continue };
                let Ok(exit) = TaskExit::decode(any.value.as_slice()) else { continue };
                // Exec processes (probes) exit too; only the container's
                // init process (id == container id) is a container exit.
                if exit.id != exit.container_id && !exit.id.is_empty() {
                    continue;
                }
                Some(RuntimeEvent::Exit(TaskExitEvent { container_id: exit.container_id, exit_status: exit.exit_status }))
            }
            _ => Some(RuntimeEvent::Changed),
        };
        if let Some(ev) = event
            && tx.send(ev).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Test hook (NODELET_TEST_DROP_EVENT_STREAM): once live, the stream breaks
/// at its next event, losing it, and never comes back.
mod hooks {
    use std::sync::atomic::{AtomicBool, Ordering};

    static DROPPED: AtomicBool = AtomicBool::new(false);

    fn on() -> bool {
        cfg!(feature = "test-hooks") && std::env::var_os("NODELET_TEST_DROP_EVENT_STREAM").is_some()
    }

    pub fn drop_now() -> bool {
        on() && !DROPPED.swap(true, Ordering::SeqCst)
    }

    pub fn dropped() -> bool {
        on() && DROPPED.load(Ordering::SeqCst)
    }
}
