//! Events to the apiserver (events.k8s.io, with kube-runtime's series
//! aggregation), reported as kubelet on this node. Recording never blocks a
//! pod worker: events queue, and a full queue drops the newest with a log.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::pods::events::{EventRecorder, EventType, LogRecorder};
use crate::runtime::labels::PodIdentity;

type Queued = (PodIdentity, EventType, String, String);

pub struct ApiRecorder {
    tx: mpsc::Sender<Queued>,
}

impl ApiRecorder {
    /// Starts the sender task; it ends when the recorder is dropped.
    /// `rate`: eventRecordQPS and eventBurst (None: no limit); events wait
    /// their turn in the queue.
    pub fn start(client: kube::Client, node: &str, rate: Option<crate::config::Rate>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Queued>(1024);
        let limiter = rate.map(|r| governor::RateLimiter::direct(super::client::quota(r)));
        let recorder = Recorder::new(client, Reporter { controller: "kubelet".into(), instance: Some(node.into()) });
        tokio::spawn(async move {
            while let Some((pod, kind, reason, message)) = rx.recv().await {
                if let Some(l) = &limiter {
                    l.until_ready().await;
                }
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name.clone()),
                    namespace: Some(pod.namespace.clone()),
                    uid: Some(pod.uid.clone()),
                    ..Default::default()
                };
                let ev = Event {
                    type_: if kind == EventType::Warning { KubeEventType::Warning } else { KubeEventType::Normal },
                    reason: reason.clone(),
                    note: Some(message),
                    action: reason,
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::debug!(error = %e, "posting an event failed");
                }
            }
        });
        Self { tx }
    }
}

impl EventRecorder for ApiRecorder {
    fn record(&self, pod: &PodIdentity, kind: EventType, reason: &str, message: &str) {
        LogRecorder.record(pod, kind, reason, message);
        if self.tx.try_send((pod.clone(), kind, reason.to_string(), message.to_string())).is_err() {
            tracing::debug!(reason, "the event queue is full; event dropped");
        }
    }
}
