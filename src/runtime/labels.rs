//! The label and annotation conventions kubelet puts on CRI sandboxes and
//! containers. Following them lets a restarted agent adopt what it finds, and
//! lets crictl and log shippers see ordinary Kubernetes pods.

use std::collections::HashMap;

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Annotations on containers.
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const CONTAINER_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
pub const CONTAINER_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";
pub const POD_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
/// The container's preStop hook (JSON), so that an orphan is stopped as its
/// spec asked.
pub const CONTAINER_PRE_STOP_HANDLER: &str = "io.kubernetes.container.preStopHandler";
/// nodelet's own marker for init containers. kubelet tells init containers
/// from the pod spec; nodelet does too, but an orphan (no spec any more) and
/// the dry-run simulator need to know without one.
pub const CONTAINER_KIND: &str = "nodelet.io/container-kind";

/// The identity of a pod as the runtime labels record it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodIdentity {
    /// Reads the identity from CRI labels; `None` when the object was not
    /// made by a kubelet (or by nodelet).
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        let uid = labels.get(POD_UID)?;
        Some(Self {
            namespace: labels.get(POD_NAMESPACE).cloned().unwrap_or_default(),
            name: labels.get(POD_NAME).cloned().unwrap_or_default(),
            uid: uid.clone(),
        })
    }

    /// The labels kubelet sets on every sandbox and container of a pod.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (POD_NAME.to_string(), self.name.clone()),
            (POD_NAMESPACE.to_string(), self.namespace.clone()),
            (POD_UID.to_string(), self.uid.clone()),
        ])
    }
}

impl std::fmt::Display for PodIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_labels() {
        let id = PodIdentity { namespace: "kube-system".into(), name: "etcd-n1".into(), uid: "abc".into() };
        assert_eq!(PodIdentity::from_labels(&id.labels()), Some(id));
        assert_eq!(PodIdentity::from_labels(&HashMap::new()), None);
    }
}
