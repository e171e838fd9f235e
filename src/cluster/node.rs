//! The Node object: registration (create, or adopt the one that exists),
//! and its status every nodeStatusUpdateFrequency (10 s), posted when the
//! server's copy differs from it and at least every nodeStatusReportFrequency
//! (5 min), as kubelet does now that the Lease carries the heartbeat.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

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
use crate::pods::eviction::Pressure;
use crate::runtime::RuntimeHealth;

/// The version nodelet reports as its kubelet version.
pub const KUBELET_VERSION: &str = crate::kubelet_version!();
/// The node API's port in daemonEndpoints, unless configured otherwise.
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
    /// The node API's port (daemonEndpoints.kubeletEndpoint).
    pub port: i32,
    /// Annotations the Node is registered with.
    pub annotations: BTreeMap<String, String>,
    /// `--cloud-provider=external`: addresses the cloud's controller manager
    /// set are kept (status).
    pub external_cloud: bool,
}

/// The taint kubelet registers a Node with under `--cloud-provider=external`,
/// which the cloud's controller manager removes once it has initialized it.
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// Where kubelet puts `--node-ip` for the cloud's controller manager.
pub const PROVIDED_NODE_IP: &str = "alpha.kubernetes.io/provided-node-ip";

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
        let (extra_labels, mut taints) = (&cs.node_labels, cs.register_with_taints.clone());
        let mut annotations = BTreeMap::from([("volumes.kubernetes.io/controller-managed-attach-detach".to_string(), "true".to_string())]);
        if let Some(cloud) = &cs.external_cloud {
            if !taints.iter().any(|t| t.key == UNINITIALIZED_TAINT) {
                taints.push(Taint { key: UNINITIALIZED_TAINT.into(), value: Some("true".into()), effect: "NoSchedule".into(), time_added: None });
            }
            if let Some(ip) = &cloud.provided_node_ip {
                annotations.insert(PROVIDED_NODE_IP.into(), ip.clone());
            }
        }
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
        let mut capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(format!("{}", (cpu_millis / 1000).max(1)))),
            ("memory".to_string(), Quantity(format!("{}Ki", memory_bytes / 1024))),
            ("pods".to_string(), Quantity(max_pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity(format!("{}Ki", storage / 1024))),
        ]);
        // Allocatable: capacity less kubeReserved, systemReserved and the
        // hard eviction thresholds (crate::allocatable).
        let a = &node.allocatable;
        let mut allocatable = BTreeMap::from([
            ("cpu".to_string(), Quantity(crate::allocatable::cpu_quantity(a.cpu_millis))),
            ("memory".to_string(), Quantity(crate::allocatable::bytes_quantity(a.memory_bytes))),
            ("pods".to_string(), Quantity(max_pods.to_string())),
            ("ephemeral-storage".to_string(), Quantity(crate::allocatable::bytes_quantity(a.ephemeral_storage_bytes))),
        ]);
        for (name, bytes) in &a.hugepages {
            capacity.insert(name.clone(), Quantity(crate::allocatable::bytes_quantity(*bytes)));
            allocatable.insert(name.clone(), Quantity(crate::allocatable::bytes_quantity(*bytes)));
        }
        let mut addresses: Vec<NodeAddress> =
            node_ips.iter().map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.clone() }).collect();
        addresses.push(NodeAddress { type_: "Hostname".into(), address: name.to_string() });
        // With an external cloud provider and no --node-ip, the addresses
        // are the cloud controller's alone (kubelet's NodeAddress setter).
        if cs.external_cloud.as_ref().is_some_and(|c| c.provided_node_ip.is_none()) {
            addresses.clear();
        }
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
        Self { name: name.into(), labels, taints, allocatable, capacity, addresses, info, port: KUBELET_PORT, annotations, external_cloud: cs.external_cloud.is_some() }
    }

    /// The Node to create.
    pub fn object(&self) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(self.name.clone());
        node.metadata.labels = Some(self.labels.clone());
        node.metadata.annotations = Some(self.annotations.clone());
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
pub fn status(
    facts: &NodeFacts,
    health: &RuntimeHealth,
    pressure: &Pressure,
    shutting_down: bool,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let ready = health.runtime_ready && health.network_ready && !shutting_down;
    let not_ready = if shutting_down {
        "node is shutting down".to_string()
    } else if !health.runtime_ready {
        format!("container runtime is down: {}", health.message)
    } else {
        format!("container runtime network not ready: {}", health.message)
    };
    let conditions = vec![
        if pressure.memory {
            condition("MemoryPressure", true, "KubeletHasInsufficientMemory", "kubelet has insufficient memory available", previous, now)
        } else {
            condition("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available", previous, now)
        },
        if pressure.disk {
            condition("DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure", previous, now)
        } else {
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure", previous, now)
        },
        if pressure.pid {
            condition("PIDPressure", true, "KubeletHasInsufficientPID", "kubelet has insufficient PID available", previous, now)
        } else {
            condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available", previous, now)
        },
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
        // Under an external cloud provider, once its controller has set the
        // addresses they are the Node's (kubelet's NodeAddress setter).
        addresses: Some(match previous.and_then(|p| p.addresses.as_ref()).filter(|a| facts.external_cloud && !a.is_empty()) {
            Some(set_by_cloud) => set_by_cloud.clone(),
            None => facts.addresses.clone(),
        }),
        daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: facts.port }) }),
        node_info: Some(facts.info.clone()),
        ..Default::default()
    }
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
/// among them) for admission, as kubelet's node lister does. When the
/// Node shows Ready Unknown — only the node lifecycle controller writes
/// that, when it thinks the node gone — `unknown` is notified, so the
/// status loop posts the node's own status at once instead of up to a
/// period later.
pub async fn watch_node(
    client: kube::Client,
    node: String,
    labels: watch::Sender<BTreeMap<String, String>>,
    taints: watch::Sender<Vec<k8s_openapi::api::core::v1::Taint>>,
    unknown: std::sync::Arc<tokio::sync::Notify>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = crate::kubeapi::backed_off(watcher(nodes, config)).boxed();
    while let Some(ev) = stream.next().await {
        let n = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "the node watch failed; retrying");
                continue;
            }
        };
        if marked_unknown(n.status.as_ref()) {
            unknown.notify_one();
        }
        let new_taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        taints.send_if_modified(|old| {
            if *old == new_taints {
                return false;
            }
            tracing::info!(taints = ?new_taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints changed");
            *old = new_taints;
            true
        });
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

/// Whether another party marked the node's Ready condition Unknown (a node
/// agent never reports Unknown itself).
pub fn marked_unknown(server: Option<&NodeStatus>) -> bool {
    server.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "Unknown"))
}

/// Whether the status on the server differs from what nodelet would report
/// now, heartbeat and transition times aside: a condition another party
/// changed (the node lifecycle controller sets them Unknown when the node
/// is unreachable), an address, capacity or system info someone else wrote,
/// or no status at all. Quantities compare by value, as the apiserver may
/// write them in another form ("8388608Ki" comes back as "8Gi").
pub fn server_differs(server: Option<&NodeStatus>, ours: &NodeStatus) -> bool {
    let Some(server) = server else { return true };
    let conditions_differ = ours.conditions.iter().flatten().any(|c| {
        let theirs = server.conditions.iter().flatten().find(|s| s.type_ == c.type_);
        theirs.is_none_or(|s| s.status != c.status || s.reason != c.reason || s.message != c.message)
    });
    let quantities_differ = |a: &Option<BTreeMap<String, Quantity>>, b: &Option<BTreeMap<String, Quantity>>| {
        let (a, b) = (a.clone().unwrap_or_default(), b.clone().unwrap_or_default());
        a.len() != b.len()
            || a.iter().any(|(k, v)| {
                b.get(k).is_none_or(|w| match (crate::resources::parse(&v.0), crate::resources::parse(&w.0)) {
                    (Ok(x), Ok(y)) => x != y,
                    _ => v != w,
                })
            })
    };
    conditions_differ
        || quantities_differ(&server.capacity, &ours.capacity)
        || quantities_differ(&server.allocatable, &ours.allocatable)
        || server.addresses.clone().unwrap_or_default() != ours.addresses.clone().unwrap_or_default()
        || server.daemon_endpoints != ours.daemon_endpoints
        || server.node_info != ours.node_info
        || ours.images.is_some() && server.images != ours.images
        || ours.volumes_in_use.as_ref().is_some_and(|v| *v != server.volumes_in_use.clone().unwrap_or_default())
}

/// The labels kubelet keeps on its Node whoever removes them: hostname,
/// OS and architecture; and nodelet's Service proxy label when it has one
/// (a Node registered before nodelet ran gets it too). Returns the ones to
/// put back, if any.
pub fn missing_required_labels(server: &BTreeMap<String, String>, facts: &NodeFacts) -> BTreeMap<String, String> {
    ["kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", crate::proxy::other::LABEL]
        .into_iter()
        .filter_map(|k| {
            let want = facts.labels.get(k)?;
            (server.get(k) != Some(want)).then(|| (k.to_string(), want.clone()))
        })
        .collect()
}

/// The node status loop, as kubelet's `updateNodeStatus`: every
/// nodeStatusUpdateFrequency (and when the runtime's health changes) it
/// reads the Node as the server has it, computes the status from that, and
/// patches when the server's copy differs from it or nodeStatusReportFrequency
/// has passed since the last report. Comparing with the server, not with
/// what was last posted, is what brings a node back to Ready within one
/// period after an outage in which the node lifecycle controller set its
/// conditions to Unknown; the node watch seeing them Unknown brings it
/// back at once.
pub struct StatusLoop {
    pub client: kube::Client,
    pub facts: NodeFacts,
    pub health: watch::Receiver<RuntimeHealth>,
    /// `status.images`, as image GC last listed them.
    pub images: watch::Receiver<Vec<k8s_openapi::api::core::v1::ContainerImage>>,
    /// The device plugins' extended resources (capacity: every device;
    /// allocatable: the healthy ones; 0 for a plugin gone for good, so the
    /// merge patch replaces the old value rather than leaving it).
    pub extended: watch::Receiver<crate::devices::Extended>,
    /// The eviction manager's pressure conditions.
    pub pressure: watch::Receiver<Pressure>,
    /// Graceful node shutdown under way: NotReady.
    pub shutting_down: watch::Receiver<bool>,
    pub update_every: Duration,
    pub report_every: Duration,
    /// kubelet's root directory: `volumesInUse` are the attachable volumes
    /// mounted under it, and those pods want (`in_use`).
    pub root_dir: std::path::PathBuf,
    pub in_use: crate::csi::InUse,
    /// The node watch saw the node marked Unknown: report now.
    pub marked_unknown: std::sync::Arc<tokio::sync::Notify>,
}

impl StatusLoop {
    /// Posts the node status forever.
    pub async fn run(mut self) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut reported: Option<Instant> = None;
        let mut outage = crate::kubeapi::Outage::default();
        const WHAT: &str = "updating the node status";
        loop {
            // Neither a read nor a write may hang past the next period.
            let limit = self.update_every.max(Duration::from_secs(1));
            match tokio::time::timeout(limit, self.update(&nodes, reported)).await {
                Ok(Ok(Some(at))) => {
                    reported = Some(at);
                    outage.works(WHAT);
                }
                Ok(Ok(None)) => outage.works(WHAT),
                Ok(Err(e)) => outage.failed(WHAT, &e),
                Err(_) => outage.failed(WHAT, &"no answer in time"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.update_every) => {}
                Ok(()) = self.health.changed() => {}
                Ok(()) = self.pressure.changed() => {}
                Ok(()) = self.extended.changed() => {}
                Ok(()) = self.shutting_down.changed() => {}
                // A pod waits to stage a volume until the status lists it.
                _ = self.in_use.changed() => {}
                _ = self.marked_unknown.notified() => {}
            }
        }
    }

    /// One round; returns when it reported, if it did.
    async fn update(&self, nodes: &Api<Node>, reported: Option<Instant>) -> Result<Option<Instant>, ClusterError> {
        let name = &self.facts.name;
        let server = nodes.get(name).await.map_err(|e| ClusterError::api(format!("reading node {name}"), e))?;
        let labels = missing_required_labels(server.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()), &self.facts);
        if !labels.is_empty() {
            tracing::info!(?labels, "putting back the node's required labels");
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            nodes
                .patch(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map_err(|e| ClusterError::api(format!("labelling node {name}"), e))?;
        }
        let health = self.health.borrow().clone();
        let pressure = *self.pressure.borrow();
        let shutting_down = *self.shutting_down.borrow();
        let mut status = status(&self.facts, &health, &pressure, shutting_down, server.status.as_ref(), Timestamp::now());
        let images = self.images.borrow().clone();
        status.images = (!images.is_empty()).then_some(images);
        let extended = self.extended.borrow().clone();
        for (map, values) in [(&mut status.capacity, &extended.capacity), (&mut status.allocatable, &extended.allocatable)] {
            let map = map.get_or_insert_with(Default::default);
            for (name, n) in values {
                map.insert(name.clone(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(n.to_string()));
            }
        }
        // Always sent, empty too: the list is replaced, and the
        // attach-detach controller detaches only what is not in it.
        let root = self.root_dir.clone();
        let mut in_use: std::collections::BTreeSet<String> = tokio::task::spawn_blocking(move || crate::volumes::csi::in_use(&root)).await.unwrap_or_default().into_iter().collect();
        in_use.extend(self.in_use.wanted());
        let in_use: Vec<String> = in_use.into_iter().collect();
        status.volumes_in_use = Some(in_use.clone());
        let differs = server_differs(server.status.as_ref(), &status);
        let due = reported.is_none_or(|at| at.elapsed() >= self.report_every);
        if !differs && !due {
            // The server already has this list.
            self.in_use.reported_as(&in_use);
            return Ok(None);
        }
        if differs && reported.is_some() {
            tracing::info!("the node status on the server differs from the node's own; posting it");
        }
        let mut patch = serde_json::json!({"status": status});
        // Addresses merge by type: on a dual-stack node the second
        // InternalIP would overwrite the first. Replace the list.
        if let Some(list) = patch["status"]["addresses"].as_array_mut() {
            list.push(serde_json::json!({"$patch": "replace"}));
        }
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(|e| ClusterError::api(format!("posting the status of node {name}"), e))?;
        self.in_use.reported_as(&in_use);
        Ok(Some(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> NodeContext {
        let mut node = NodeContext::for_tests("n1");
        node.host_ips = vec!["10.0.0.9".into()];
        node.root_dir = "/".into();
        node.cpu_capacity_millis = 2000;
        node.memory_capacity_bytes = 8 << 30;
        node
    }

    fn settings(node_labels: BTreeMap<String, String>, external_cloud: Option<crate::config::ExternalCloud>) -> ClusterSettings {
        ClusterSettings {
            kubeconfig: "/k".into(),
            bootstrap_kubeconfig: None,
            cert_dir: "/pki".into(),
            node_labels,
            register_with_taints: vec![],
            status_update: Duration::from_secs(10),
            status_report: Duration::from_secs(300),
            lease_duration_seconds: 40,
            rotate_certificates: true,
            api_rate: crate::config::Rate { qps: 50, burst: 100 },
            event_rate: None,
            external_cloud,
        }
    }

    fn facts() -> NodeFacts {
        NodeFacts::gather(&context(), &settings(BTreeMap::from([("role".into(), "edge".into())]), None), 110, "containerd://1.6.20")
    }

    #[test]
    fn an_external_cloud_provider_initializes_the_node() {
        let node = context();
        let cs = |ip: Option<&str>| settings(BTreeMap::new(), Some(crate::config::ExternalCloud { provided_node_ip: ip.map(str::to_string) }));
        // With --node-ip: registered tainted, the IP offered to the cloud
        // controller, and used until the controller sets the addresses.
        let f = NodeFacts::gather(&node, &cs(Some("10.0.0.9")), 110, "containerd://1.6.20");
        let n = f.object();
        let taints = n.spec.unwrap().taints.unwrap();
        assert_eq!((taints[0].key.as_str(), taints[0].value.as_deref(), taints[0].effect.as_str()), (UNINITIALIZED_TAINT, Some("true"), "NoSchedule"));
        assert_eq!(n.metadata.annotations.unwrap()[PROVIDED_NODE_IP], "10.0.0.9");
        let ready = RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() };
        let now = Timestamp::now();
        let mine = status(&f, &ready, &Pressure::default(), false, None, now);
        assert_eq!(mine.addresses.as_ref().unwrap()[0].address, "10.0.0.9");
        let cloud = NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "172.31.5.7".into() }, NodeAddress { type_: "ExternalIP".into(), address: "3.4.5.6".into() }]),
            ..Default::default()
        };
        let kept = status(&f, &ready, &Pressure::default(), false, Some(&cloud), now);
        assert_eq!(kept.addresses, cloud.addresses, "the cloud controller's addresses stay");
        // Without --node-ip: no addresses of nodelet's at all.
        let f = NodeFacts::gather(&node, &cs(None), 110, "containerd://1.6.20");
        assert!(f.addresses.is_empty() && !f.annotations.contains_key(PROVIDED_NODE_IP));
        // Not external: as before.
        assert!(facts().taints.is_empty() && !facts().external_cloud);
    }

    #[test]
    fn only_ready_unknown_is_the_controllers_mark() {
        use k8s_openapi::api::core::v1::NodeCondition;
        let with = |t: &str, st: &str| NodeStatus {
            conditions: Some(vec![NodeCondition { type_: t.into(), status: st.into(), ..Default::default() }]),
            ..Default::default()
        };
        assert!(marked_unknown(Some(&with("Ready", "Unknown"))));
        assert!(!marked_unknown(Some(&with("Ready", "True"))));
        assert!(!marked_unknown(Some(&with("Ready", "False"))));
        // Another agent's condition (a node problem detector's) is not ours to answer.
        assert!(!marked_unknown(Some(&with("KernelDeadlock", "Unknown"))));
        assert!(!marked_unknown(None));
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
        let s1 = status(&f, &ready, &Pressure::default(), false, None, t1);
        let cond = |s: &NodeStatus, t: &str| s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(cond(&s1, "Ready").status, "True");
        let t2 = Timestamp::from_second(200).unwrap();
        let s2 = status(&f, &ready, &Pressure::default(), false, Some(&s1), t2);
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(cond(&s2, "Ready").last_heartbeat_time, Some(Time(t2)));
        assert!(!server_differs(Some(&s1), &s2), "only heartbeats changed");
        let down = RuntimeHealth { runtime_ready: true, network_ready: false, message: "NetworkReady=false reason:NoCNI".into() };
        let s3 = status(&f, &down, &Pressure::default(), false, Some(&s2), t2);
        assert_eq!(cond(&s3, "Ready").status, "False");
        assert!(cond(&s3, "Ready").message.unwrap().contains("network not ready"));
    }

    #[test]
    fn the_server_copy_decides_whether_to_post() {
        let f = facts();
        let ready = RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() };
        let t = Timestamp::from_second(100).unwrap();
        let ours = status(&f, &ready, &Pressure::default(), false, None, t);
        assert!(server_differs(None, &ours), "no status on the server yet");
        assert!(!server_differs(Some(&ours), &ours));

        // The node lifecycle controller marked the node unreachable.
        let mut unknown = ours.clone();
        for c in unknown.conditions.iter_mut().flatten() {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
        }
        assert!(server_differs(Some(&unknown), &ours));
        // And the status computed from that copy is True again, with a new transition time.
        let t2 = Timestamp::from_second(200).unwrap();
        let again = status(&f, &ready, &Pressure::default(), false, Some(&unknown), t2);
        let ready_cond = again.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready_cond.status, "True");
        assert_eq!(ready_cond.last_transition_time, Some(Time(t2)));

        // The apiserver writes quantities in its canonical form: no difference.
        let mut canonical = ours.clone();
        canonical.capacity.as_mut().unwrap().insert("memory".into(), Quantity("8Gi".into()));
        assert!(!server_differs(Some(&canonical), &ours));
        let mut smaller = ours.clone();
        smaller.allocatable.as_mut().unwrap().insert("memory".into(), Quantity("7Gi".into()));
        assert!(server_differs(Some(&smaller), &ours));

        // Someone else rewrote the addresses.
        let mut moved = ours.clone();
        moved.addresses = Some(vec![NodeAddress { type_: "InternalIP".into(), address: "10.0.0.10".into() }]);
        assert!(server_differs(Some(&moved), &ours));
    }

    #[test]
    fn required_labels_come_back() {
        let f = facts();
        let mut server = f.labels.clone();
        assert!(missing_required_labels(&server, &f).is_empty());
        server.remove("kubernetes.io/os");
        server.insert("kubernetes.io/arch".into(), "s390x".into());
        server.remove("role");
        let back = missing_required_labels(&server, &f);
        assert_eq!(back.len(), 2, "{back:?}");
        assert_eq!(back["kubernetes.io/os"], "linux");
        assert_eq!(back["kubernetes.io/arch"], go_arch());
    }
}
