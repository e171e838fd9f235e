//! kubelet's volumesInUse handshake with the attach-detach controller. The
//! controller detaches a volume from a node only when the Node's status does
//! not list it in `volumesInUse`; so a node must have *posted* a volume there
//! before it stages or publishes it, or the controller may detach it (and
//! attach it to another node) while this one mounts it. kubelet's volume
//! manager waits for "ReportedInUse" the same way.
//!
//! The pod workers say which attachable volumes their pods want; the node
//! status loop posts them (with those the disk records show staged or
//! published) and then marks them reported. Standalone nodes (no
//! apiserver, no controller) need no handshake.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Volume unique name → the pods that want it.
    wanted: BTreeMap<String, BTreeSet<String>>,
    /// What the apiserver has in the Node's volumesInUse, as last posted.
    reported: BTreeSet<String>,
}

/// The volumes pods want and what the Node's status reports; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    /// Without a status loop (standalone, dry run) nothing is waited for.
    enforced: bool,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
    /// Bumped whenever a status is posted (waiters look again).
    posted: Arc<tokio::sync::watch::Sender<u64>>,
}

impl InUse {
    /// A handshake that waits for the node status (cluster mode).
    pub fn enforced() -> Self {
        Self { enforced: true, ..Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pod `uid` wants volume `unique`; whether the Node's status already
    /// lists it (staging and publishing may go ahead). When it does not, the
    /// status loop is asked to post it now.
    pub fn want(&self, uid: &str, unique: &str) -> bool {
        let (new, reported) = {
            let mut s = self.lock();
            let new = s.wanted.entry(unique.to_string()).or_default().insert(uid.to_string());
            (new, s.reported.contains(unique))
        };
        if new && !reported {
            self.changed.notify_one();
        }
        !self.enforced || reported
    }

    /// Pod `uid` wants none of its volumes any more (they are unpublished).
    pub fn release(&self, uid: &str) {
        let mut s = self.lock();
        s.wanted.retain(|_, pods| {
            pods.remove(uid);
            !pods.is_empty()
        });
    }

    /// The volumes pods want, for the node status.
    pub fn wanted(&self) -> BTreeSet<String> {
        self.lock().wanted.keys().cloned().collect()
    }

    /// The apiserver's Node status now lists exactly `list`.
    pub fn reported_as(&self, list: &[String]) {
        self.lock().reported = list.iter().cloned().collect();
        self.posted.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Pod `uid` wants `unique`: waits up to `limit` for the status loop
    /// (asked to post at once) to report it; whether it is reported.
    pub async fn want_and_wait(&self, uid: &str, unique: &str, limit: std::time::Duration) -> bool {
        let mut posted = self.posted.subscribe();
        if self.want(uid, unique) {
            return true;
        }
        let wait = async {
            loop {
                if posted.changed().await.is_err() {
                    return false;
                }
                if self.lock().reported.contains(unique) {
                    return true;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Resolves when a pod asked for a volume that is not reported yet.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_may_be_staged_only_once_the_status_lists_it() {
        let h = InUse::enforced();
        assert!(!h.want("pod-a", "kubernetes.io/csi/d^v1"), "not posted yet");
        assert_eq!(h.wanted(), ["kubernetes.io/csi/d^v1".to_string()].into());
        h.reported_as(&["kubernetes.io/csi/d^v1".into()]);
        assert!(h.want("pod-a", "kubernetes.io/csi/d^v1"));
        assert!(h.want("pod-b", "kubernetes.io/csi/d^v1"));
        h.release("pod-a");
        assert_eq!(h.wanted().len(), 1, "pod-b still wants it");
        h.release("pod-b");
        assert!(h.wanted().is_empty());
        assert!(InUse::default().want("p", "x"), "standalone: nothing to wait for");
    }

    #[tokio::test]
    async fn a_waiter_goes_on_as_soon_as_the_status_is_posted() {
        let h = InUse::enforced();
        let poster = h.clone();
        tokio::spawn(async move {
            poster.changed().await;
            let list: Vec<String> = poster.wanted().into_iter().collect();
            poster.reported_as(&list);
        });
        assert!(h.want_and_wait("p", "kubernetes.io/csi/d^v", std::time::Duration::from_secs(5)).await);
        assert!(!h.want_and_wait("p", "kubernetes.io/csi/d^other", std::time::Duration::from_millis(50)).await, "nobody posts it");
    }
}
