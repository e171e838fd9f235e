//! The Node object: registration (create, or adopt the one that exists),
//! and its status every nodeStatusUpdateFrequency (10 s), posted when it
//! changed and at least every nodeStatusReportFrequency (5 min), as kubelet
//! does now that the Lease carries the heartbeat.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use super::{ClusterError, is_conflict};
use crate::config::ClusterSettings;
use crate::pods::NodeContext;
use crate::runtime::RuntimeHealth;

/// The version nodelet reports as its kubelet version.
pub const KUBELET_VERSION: &str = concat!("v1.34.0-nodelet.", env!("CARGO_PKG_VERSION"));
/// The kubelet API port in daemonEndpoints.
pub const KUBELET_PORT: i32 = 10250;

/// What the node reports about itself; gathered once at start.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub capacity: BTreeMap<String, Quantity>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub addresses: Vec<NodeAddress>,
    pub info: NodeSystemInfo,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The architecture as Kubernetes names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl NodeFacts {
    /// Facts from this machine.
    pub fn gather(node: &NodeContext, cs: &ClusterSettings, max_pods: u32, runtime_version: &str) -> Self {
        let name = node.node_name.as_str();
        let (extra_labels, taints) = (&cs.node_labels, cs.register_with_taints.clone());
        let (node_ips, root_dir) = (&node.host_ips, node.root_dir.as_path());
        let (cpu_millis, memory_bytes) = (node.cpu_capacity_millis, node.memory_capacity_bytes);
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), go_arch().to_string()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
        ]);
        labels.extend(extra_labels.clone());
        let storage = nix::sys::statvfs::statvfs(root_dir)
            .or_else(|_| nix::sys::statvfs::statvfs("/"))
            .map(|s| s.blocks() as i64 * s.fragment_size() as i64)
            .unwrap_or(0);
        let capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(format!("{}", (cpu_millis / 1000).max(1)))),
            ("memory".to_string(), Quantity(format!("{}Ki", memory_bytes / 1024))),
            ("pods".to_string(), Quantity(max_pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity(format!("{}Ki", storage / 1024))),
        ]);
        let mut addresses: Vec<NodeAddress> =
            node_ips.iter().map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.clone() }).collect();
        addresses.push(NodeAddress { type_: "Hostname".into(), address: name.to_string() });
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().to_string()).unwrap_or_default();
        let info = NodeSystemInfo {
            architecture: go_arch().into(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: runtime_version.into(),
            kernel_version: kernel,
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            ..Default::default()
        };
        Self { name: name.into(), labels, taints, allocatable: capacity.clone(), capacity, addresses, info }
    }

    /// The Node to create.
    pub fn object(&self) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(self.name.clone());
        node.metadata.labels = Some(self.labels.clone());
        node.metadata.annotations =
            Some(BTreeMap::from([("volumes.kubernetes.io/controller-managed-attach-detach".into(), "true".into())]));
        node.spec = Some(NodeSpec { taints: (!self.taints.is_empty()).then(|| self.taints.clone()), ..Default::default() });
        node
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, previous: Option<&NodeStatus>, now: Timestamp) -> NodeCondition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(since),
    }
}

/// The node's status (pure): conditions with heartbeat and transition
/// times, capacity, allocatable, addresses, daemon endpoints, system info.
pub fn status(facts: &NodeFacts, health: &RuntimeHealth, previous: Option<&NodeStatus>, now: Timestamp) -> NodeStatus {
    let ready = health.runtime_ready && health.network_ready;
    let not_ready = if !health.runtime_ready {
        format!("container runtime is down: {}", health.message)
    } else {
        format!("container runtime network not ready: {}", health.message)
    };
    let conditions = vec![
        condition("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available", previous, now),
        condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure", previous, now),
        condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available", previous, now),
        if ready {
            condition("Ready", true, "KubeletReady", "kubelet is posting ready status", previous, now)
        } else {
            condition("Ready", false, "KubeletNotReady", &not_ready, previous, now)
        },
    ];
    NodeStatus {
        capacity: Some(facts.capacity.clone()),
        allocatable: Some(facts.allocatable.clone()),
        conditions: Some(conditions),
        addresses: Some(facts.addresses.clone()),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }) }),
        node_info: Some(facts.info.clone()),
        ..Default::default()
    }
}

/// The status without its heartbeat times: what "changed" means.
fn without_heartbeats(s: &NodeStatus) -> NodeStatus {
    let mut s = s.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
    }
    s
}

/// Creates the Node, or adopts the one that exists (its labels are
/// reconciled with ours, the rest is kept). Returns the Node's UID.
pub async fn register(client: &kube::Client, facts: &NodeFacts) -> Result<String, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.create(&PostParams::default(), &facts.object()).await {
        Ok(n) => {
            tracing::info!(node = %facts.name, "node registered");
            return Ok(n.metadata.uid.unwrap_or_default());
        }
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(ClusterError::api(format!("registering node {}", facts.name), e)),
    }
    let patch = serde_json::json!({"metadata": {"labels": facts.labels}});
    let n = nodes
        .patch(&facts.name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| ClusterError::api(format!("adopting node {}", facts.name), e))?;
    tracing::info!(node = %facts.name, "node already registered; adopted");
    Ok(n.metadata.uid.unwrap_or_default())
}

/// Follows the Node object's labels (an operator's `kubectl label node`
/// among them) for admission, as kubelet's node lister does.
pub async fn watch_labels(client: kube::Client, node: String, labels: watch::Sender<BTreeMap<String, String>>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(nodes, config).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        let n = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "the node watch failed; retrying");
                continue;
            }
        };
        let new = n.metadata.labels.unwrap_or_default();
        labels.send_if_modified(|old| {
            if *old == new {
                return false;
            }
            tracing::info!(labels = ?new, "node labels changed");
            *old = new;
            true
        });
    }
}

pub struct StatusLoop {
    pub client: kube::Client,
    pub facts: NodeFacts,
    pub health: watch::Receiver<RuntimeHealth>,
    pub update_every: Duration,
    pub report_every: Duration,
}

impl StatusLoop {
    /// Posts the node status forever.
    pub async fn run(mut self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut posted: Option<(NodeStatus, Instant)> = None;
        loop {
            let health = self.health.borrow().clone();
            let status = status(&self.facts, &health, posted.as_ref().map(|(s, _)| s), Timestamp::now());
            let due = match &posted {
                None => true,
                Some((last, at)) => without_heartbeats(last) != without_heartbeats(&status) || at.elapsed() >= self.report_every,
            };
            if due {
                let mut patch = serde_json::json!({"status": status});
                // Addresses merge by type: on a dual-stack node the second
                // InternalIP would overwrite the first. Replace the list.
                if let Some(list) = patch["status"]["addresses"].as_array_mut() {
                    list.push(serde_json::json!({"$patch": "replace"}));
                }
                let (params, patch) = (PatchParams::default(), Patch::Strategic(patch));
                let post = nodes.patch_status(&self.facts.name, &params, &patch);
                match tokio::time::timeout(self.update_every.max(Duration::from_secs(1)), post).await {
                    Ok(Ok(_)) => posted = Some((status, Instant::now())),
                    Ok(Err(e)) => tracing::warn!(error = %e, "posting the node status failed"),
                    Err(_) => tracing::warn!("posting the node status failed: no answer in time"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.update_every) => {}
                Ok(()) = self.health.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        let mut node = NodeContext::for_tests("n1");
        node.host_ips = vec!["10.0.0.9".into()];
        node.root_dir = "/".into();
        node.cpu_capacity_millis = 2000;
        node.memory_capacity_bytes = 8 << 30;
        let cs = ClusterSettings {
            kubeconfig: "/k".into(),
            bootstrap_kubeconfig: None,
            cert_dir: "/pki".into(),
            node_labels: BTreeMap::from([("role".into(), "edge".into())]),
            register_with_taints: vec![],
            status_update: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
            lease_duration_seconds: 40,
            rotate_certificates: true,
        };
        NodeFacts::gather(&node, &cs, 110, "containerd://1.6.20")
    }

    #[test]
    fn the_node_describes_itself() {
        let f = facts();
        let n = f.object();
        let labels = n.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["role"], "edge");
        assert_eq!(f.capacity["pods"].0, "110");
        assert_eq!(f.capacity["cpu"].0, "2");
        assert_eq!(f.capacity["memory"].0, "8388608Ki");
        assert_eq!(f.addresses[0].type_, "InternalIP");
    }

    #[test]
    fn readiness_follows_the_runtime_and_transitions_keep_their_time() {
        let f = facts();
        let ready = RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() };
        let t1 = Timestamp::from_second(100).unwrap();
        let s1 = status(&f, &ready, None, t1);
        let cond = |s: &NodeStatus, t: &str| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(cond(&s1, "Ready").status, "True");
        let t2 = Timestamp::from_second(200).unwrap();
        let s2 = status(&f, &ready, Some(&s1), t2);
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(cond(&s2, "Ready").last_heartbeat_time, Some(Time(t2)));
        assert_eq!(without_heartbeats(&s1), without_heartbeats(&s2), "only heartbeats changed");
        let down = RuntimeHealth { runtime_ready: true, network_ready: false, message: "NetworkReady=false reason:NoCNI".into() };
        let s3 = status(&f, &down, Some(&s2), t2);
        assert_eq!(cond(&s3, "Ready").status, "False");
        assert!(cond(&s3, "Ready").message.unwrap().contains("network not ready"));
    }
}
