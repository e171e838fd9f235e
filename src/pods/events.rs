//! Events about pods (Pulling, Created, Started, Killing, BackOff, ...).
//! Standalone, they go to the log; with an apiserver they become Event
//! objects (the recorder is swapped, the callers stay).

use crate::runtime::labels::PodIdentity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

pub trait EventRecorder: Send + Sync + 'static {
    fn record(&self, _pod: &PodIdentity, kind: EventType, reason: &str, message: &str);
}

/// Writes events to the log, one line each; the pod worker's span carries
/// the pod's name and UID.
pub struct LogRecorder;

impl EventRecorder for LogRecorder {
    fn record(&self, _pod: &PodIdentity, kind: EventType, reason: &str, message: &str) {
        match kind {
            // A node-wide condition, logged once at start; per pod it would
            // repeat the same line for every pod.
            _ if reason == crate::pods::dns::MISSING_CLUSTER_DNS => tracing::debug!(reason, "{message}"),
            EventType::Normal => tracing::info!(reason, "{message}"),
            EventType::Warning => tracing::warn!(reason, "{message}"),
        }
    }
}
