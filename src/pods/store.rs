//! The latest status of every pod the node runs, published by the pod
//! workers and read by the status endpoint (and, in cluster mode, the status
//! writer). A watch channel: readers get the current map and can wait for
//! the next change.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::watch;

/// A pod with the status nodelet computed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub pod: Arc<Pod>,
    pub status: PodStatus,
}

pub type Statuses = BTreeMap<String, Arc<PodRecord>>;

#[derive(Clone)]
pub struct StatusStore {
    tx: Arc<watch::Sender<Statuses>>,
}

impl Default for StatusStore {
    fn default() -> Self {
        Self { tx: Arc::new(watch::Sender::new(BTreeMap::new())) }
    }
}

impl StatusStore {
    /// Publishes a pod's status; readers are woken only when it changed.
    pub fn set(&self, uid: &str, record: PodRecord) {
        self.tx.send_if_modified(|m| {
            if m.get(uid).is_some_and(|old| **old == record) {
                return false;
            }
            m.insert(uid.to_string(), Arc::new(record));
            true
        });
    }

    pub fn remove(&self, uid: &str) {
        self.tx.send_if_modified(|m| m.remove(uid).is_some());
    }

    pub fn snapshot(&self) -> Statuses {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Statuses> {
        self.tx.subscribe()
    }
}
