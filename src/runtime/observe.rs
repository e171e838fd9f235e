//! What the runtime has, grouped by pod: the "observed" half of the pod
//! core's input. Two ways in:
//! - [`PodInspector::inspect`] reads one pod in full (sandbox IPs, container
//!   exit codes) before a pod worker plans;
//! - [`relist`] reads everything cheaply (two list calls) and gives each pod a
//!   fingerprint, so the relist loop can wake only the pods that changed.

use std::collections::{BTreeMap, HashMap};

use super::cri;
use super::cri_log;
use super::labels::{self, PodIdentity};
use super::{Result, Runtime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerPhase {
    pub fn from_cri(state: i32) -> Self {
        match cri::ContainerState::try_from(state) {
            Ok(cri::ContainerState::ContainerCreated) => ContainerPhase::Created,
            Ok(cri::ContainerState::ContainerRunning) => ContainerPhase::Running,
            Ok(cri::ContainerState::ContainerExited) => ContainerPhase::Exited,
            _ => ContainerPhase::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub phase: ContainerPhase,
    /// Nanoseconds since the epoch; 0 when not applicable.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The image as the pod spec named it.
    pub image: String,
    /// The image ID the container runs.
    pub image_ref: String,
    pub annotations: HashMap<String, String>,
}

impl ObservedContainer {
    pub fn hash(&self) -> Option<&str> {
        self.annotations.get(labels::CONTAINER_HASH).map(String::as_str)
    }

    /// The pod's grace period recorded when the container was made.
    pub fn grace_period(&self) -> Option<i64> {
        self.annotations.get(labels::POD_TERMINATION_GRACE_PERIOD).and_then(|v| v.parse().ok())
    }

    /// How the pod used the container ("init", "sidecar", "app"), as
    /// recorded when it was made.
    pub fn kind(&self) -> Option<&str> {
        self.annotations.get(labels::CONTAINER_KIND).map(String::as_str)
    }
}

/// Everything the runtime holds for one pod UID. Sandboxes and containers are
/// sorted newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePod {
    pub identity: PodIdentity,
    pub sandboxes: Vec<ObservedSandbox>,
    pub containers: Vec<ObservedContainer>,
}

impl RuntimePod {
    pub fn empty(identity: PodIdentity) -> Self {
        Self { identity, sandboxes: Vec::new(), containers: Vec::new() }
    }

    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }

    /// The newest instance of the named container, in any sandbox.
    pub fn latest(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn running(&self) -> impl Iterator<Item = &ObservedContainer> {
        self.containers.iter().filter(|c| matches!(c.phase, ContainerPhase::Running | ContainerPhase::Unknown))
    }

    fn sort(&mut self) {
        self.sandboxes.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.attempt.cmp(&a.attempt)));
        self.containers.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.attempt.cmp(&a.attempt)));
    }
}

fn uid_filter(uid: &str) -> HashMap<String, String> {
    HashMap::from([(labels::POD_UID.to_string(), uid.to_string())])
}

/// Reads pods in full, remembering what cannot change any more (an exited
/// container's status, a sandbox's IPs) so that repeat reads are cheap.
#[derive(Default)]
pub struct PodInspector {
    exited: HashMap<String, ObservedContainer>,
    sandbox_ips: HashMap<String, Vec<String>>,
}

impl PodInspector {
    /// Reads everything the runtime has for `identity.uid`.
    pub async fn inspect(&mut self, rt: &dyn Runtime, identity: &PodIdentity) -> Result<RuntimePod> {
        let sandboxes = rt
            .list_pod_sandbox(Some(cri::PodSandboxFilter { label_selector: uid_filter(&identity.uid), ..Default::default() }))
            .await?;
        let containers = rt
            .list_containers(Some(cri::ContainerFilter { label_selector: uid_filter(&identity.uid), ..Default::default() }))
            .await?;

        let mut pod = RuntimePod::empty(identity.clone());
        for s in sandboxes {
            let ready = s.state == cri::PodSandboxState::SandboxReady as i32;
            let ips = match self.sandbox_ips.get(&s.id) {
                Some(ips) => ips.clone(),
                None if ready => match rt.pod_sandbox_status(&s.id).await {
                    Ok(status) => {
                        let ips = sandbox_ips(&status);
                        self.sandbox_ips.insert(s.id.clone(), ips.clone());
                        ips
                    }
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                },
                None => Vec::new(),
            };
            pod.sandboxes.push(ObservedSandbox {
                attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
                id: s.id,
                ready,
                created_at: s.created_at,
                ips,
            });
        }
        for c in containers {
            if let Some(done) = self.exited.get(&c.id) {
                pod.containers.push(done.clone());
                continue;
            }
            let status = match rt.container_status(&c.id).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let observed = from_status(&c, status);
            if observed.phase == ContainerPhase::Exited {
                self.exited.insert(observed.id.clone(), observed.clone());
            }
            pod.containers.push(observed);
        }
        // Forget what the runtime no longer has.
        self.exited.retain(|id, _| pod.containers.iter().any(|c| &c.id == id));
        self.sandbox_ips.retain(|id, _| pod.sandboxes.iter().any(|s| &s.id == id));
        pod.sort();
        Ok(pod)
    }
}

/// The IPs a sandbox status reports, primary first.
pub fn sandbox_ips(status: &cri::PodSandboxStatus) -> Vec<String> {
    let Some(net) = &status.network else { return Vec::new() };
    std::iter::once(net.ip.clone())
        .chain(net.additional_ips.iter().map(|p| p.ip.clone()))
        .filter(|ip| !ip.is_empty())
        .collect()
}

/// A pod's IPs as kubelet reports them (its sortPodIPs): the first of the
/// node's primary family (the family of the first node IP; IPv4 without
/// one), then the first of the other family; at most two.
pub fn order_pod_ips(node_ips: &[String], ips: &[String]) -> Vec<String> {
    let primary_v6 = node_ips.first().is_some_and(|ip| ip.contains(':'));
    let first = |v6: bool| ips.iter().find(|ip| ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_ipv6() == v6)).cloned();
    first(primary_v6).into_iter().chain(first(!primary_v6)).collect()
}

/// An exited container's message as kubelet reports it: the runtime's,
/// then what the container left in its terminationMessagePath (or, under
/// FallbackToLogsOnError after a failure, the end of its log).
fn exit_message(s: &cri::ContainerStatus) -> String {
    let annotation = |k: &str| s.annotations.get(k).map(String::as_str).unwrap_or("");
    let fallback = annotation(labels::CONTAINER_TERMINATION_MESSAGE_POLICY) == "FallbackToLogsOnError"
        && s.exit_code != 0
        && s.reason != "ContainerCannotRun";
    let path = annotation(labels::CONTAINER_TERMINATION_MESSAGE_PATH);
    let file = (!path.is_empty())
        .then(|| s.mounts.iter().find(|m| m.container_path == path))
        .flatten()
        .map(|m| std::path::Path::new(&m.host_path));
    let (mut text, from_log) = cri_log::message_from_file(file, fallback);
    if from_log && !s.log_path.is_empty() {
        text = cri_log::message_from_log(std::path::Path::new(&s.log_path));
    }
    match (s.message.is_empty(), text.is_empty()) {
        (_, true) => s.message.clone(),
        (true, false) => text,
        (false, false) => format!("{}: {text}", s.message),
    }
}

fn from_status(c: &cri::Container, s: cri::ContainerStatus) -> ObservedContainer {
    let message = if s.state == cri::ContainerState::ContainerExited as i32 { exit_message(&s) } else { s.message.clone() };
    ObservedContainer {
        id: s.id,
        sandbox_id: c.pod_sandbox_id.clone(),
        name: s.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
        phase: ContainerPhase::from_cri(s.state),
        created_at: s.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        reason: s.reason,
        message,
        image: c.image.as_ref().map(|i| i.user_specified_image.clone()).filter(|i| !i.is_empty())
            .or_else(|| s.image.as_ref().map(|i| i.image.clone()))
            .unwrap_or_default(),
        image_ref: s.image_ref,
        annotations: s.annotations,
    }
}

/// A cheap summary of one pod's runtime objects: ids and states only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub identity: PodIdentity,
    entries: Vec<(String, i32)>,
}

/// Container states in fingerprints are offset so they never equal a
/// sandbox state.
const CONTAINER_STATE: i32 = 100;

impl Fingerprint {
    /// Whether the runtime still lists container `id` as running.
    pub fn lists_running(&self, id: &str) -> bool {
        self.entries.iter().any(|(e, st)| e == id && *st == CONTAINER_STATE + cri::ContainerState::ContainerRunning as i32)
    }
}

/// Lists every kubelet-labelled sandbox and container and fingerprints them
/// per pod UID. Objects without the pod UID label are not ours and are left
/// out.
pub async fn relist(rt: &dyn Runtime) -> Result<BTreeMap<String, Fingerprint>> {
    let sandboxes = rt.list_pod_sandbox(None).await?;
    let containers = rt.list_containers(None).await?;
    let mut pods: BTreeMap<String, Fingerprint> = BTreeMap::new();
    let objects = sandboxes
        .iter()
        .map(|s| (&s.labels, &s.id, s.state))
        .chain(containers.iter().map(|c| (&c.labels, &c.id, CONTAINER_STATE + c.state)));
    for (labels, id, state) in objects {
        let Some(identity) = PodIdentity::from_labels(labels) else { continue };
        pods.entry(identity.uid.clone())
            .or_insert_with(|| Fingerprint { identity, entries: Vec::new() })
            .entries
            .push((id.clone(), state));
    }
    for fp in pods.values_mut() {
        fp.entries.sort();
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_ips_lead_with_the_nodes_primary_family_one_of_each() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let sandbox = s(&["fd00:10:244::5", "10.244.0.5", "10.244.9.9"]);
        assert_eq!(super::order_pod_ips(&s(&["10.0.0.1", "fd00::1"]), &sandbox), s(&["10.244.0.5", "fd00:10:244::5"]));
        assert_eq!(super::order_pod_ips(&s(&["fd00::1", "10.0.0.1"]), &sandbox), s(&["fd00:10:244::5", "10.244.0.5"]));
        assert_eq!(super::order_pod_ips(&[], &s(&["fd00:10:244::5"])), s(&["fd00:10:244::5"]), "a single-stack IPv6 pod");
        assert!(super::order_pod_ips(&[], &s(&["not-an-ip"])).is_empty());
    }
}
