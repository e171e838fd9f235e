//! Facts about this node that shape how pods are run: its name, directories,
//! cgroup layout, DNS, capacity and addresses. Built once at start; below
//! the pod and volume code that reads it.

use std::path::PathBuf;

use crate::config::{BackoffConfig, CgroupDriver};

/// The parts of a resolv.conf that matter to pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => r.nameservers.extend(fields.next().map(str::to_string)),
                // The last search (or domain) line wins, as in the resolver.
                Some("search") | Some("domain") => r.searches = fields.map(str::to_string).collect(),
                Some("options") => r.options.extend(fields.map(str::to_string)),
                _ => {}
            }
        }
        r
    }
}

/// What the node offers for pod DNS.
#[derive(Debug, Clone, Default)]
pub struct ClusterDns {
    pub servers: Vec<String>,
    pub domain: String,
    /// The node's resolv.conf (`resolvConf`), for dnsPolicy Default and the
    /// host part of the ClusterFirst search list.
    pub host: ResolvConf,
}

/// Facts about this node that shape how pods are run. Built once at start.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node_name: String,
    /// `--root-dir`: per-pod directories live under `pods/<uid>`.
    pub root_dir: PathBuf,
    /// `podLogsDir`: `<ns>_<name>_<uid>/<container>/<n>.log` below it.
    pub pod_logs_dir: PathBuf,
    /// kubelet's legacy log symlinks (`/var/log/containers`).
    pub container_logs_dir: PathBuf,
    pub cgroup_driver: CgroupDriver,
    pub cgroup_root: String,
    pub cgroups_per_qos: bool,
    pub dns: ClusterDns,
    /// Node capacity, for the Burstable oom_score_adj and downward API
    /// defaults.
    pub memory_capacity_bytes: i64,
    pub cpu_capacity_millis: i64,
    /// Node Allocatable: what pods are admitted against, and the downward
    /// API's default limits.
    pub allocatable: crate::allocatable::Allocatable,
    /// `podPidsLimit`: pids.max of each pod cgroup (None: no limit).
    pub pod_pids_limit: Option<i64>,
    /// The lowest oom_score_adj this node lets processes have (-1000 unless
    /// the kernel refused nodelet a lower score).
    pub oom_score_adj_floor: i64,
    /// The node's own addresses (status.hostIP).
    pub host_ips: Vec<String>,
    pub backoff: BackoffConfig,
    /// `seccompDefault`: RuntimeDefault for containers that name no profile.
    pub seccomp_default: bool,
    /// What containers may swap (`memorySwap`), and what the node has.
    pub swap: crate::pods::swap::SwapFacts,
    /// Prefix of containerIDs in status (`containerd://...`).
    pub runtime_name: String,
}

impl NodeContext {
    /// `<root-dir>/pods/<uid>`: the pod's volumes, etc-hosts and plugin data.
    /// A UID that is not one plain path component has no directory.
    pub fn pod_dir(&self, uid: &str) -> Result<PathBuf, crate::files::NotAComponent> {
        crate::files::child(&self.root_dir.join("pods"), uid, "metadata.uid")
    }

    /// A context with kubelet's defaults, for tests and dry runs.
    pub fn for_tests(node_name: &str) -> Self {
        Self {
            node_name: node_name.into(),
            root_dir: "/var/lib/kubelet".into(),
            pod_logs_dir: "/var/log/pods".into(),
            container_logs_dir: "/var/log/containers".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_root: "/".into(),
            cgroups_per_qos: true,
            dns: ClusterDns::default(),
            memory_capacity_bytes: 8 << 30,
            cpu_capacity_millis: 4000,
            allocatable: crate::allocatable::Allocatable { cpu_millis: 4000, memory_bytes: 8 << 30, ..Default::default() },
            pod_pids_limit: None,
            oom_score_adj_floor: -1000,
            host_ips: vec![],
            backoff: BackoffConfig::default(),
            seccomp_default: false,
            swap: Default::default(),
            runtime_name: "containerd".into(),
        }
    }
}
