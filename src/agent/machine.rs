//! The machine's own facts and limits, before any pod: the swap check
//! kubelet makes first, the agent's oom_score_adj, capacity and Node Allocatable
//! (computed, logged and enforced on the cgroups), DNS, and the shared root
//! directory. What it builds, the `NodeContext`, every pod worker reads.

use std::io::Write;
use std::sync::Arc;

use super::AgentError;
use crate::config::Settings;
use crate::pods::{NodeContext, dns};

/// kubelet's first check: no swap unless the operator allows it.
pub fn preflight(s: &Settings) -> Result<(), AgentError> {
    if s.fail_swap_on
        && let Err(e) = crate::pods::swap::check_fail_swap_on(&std::fs::read_to_string("/proc/swaps").unwrap_or_default())
    {
        return Err(AgentError::Fault(e));
    }
    Ok(())
}

/// The node as pods see it: capacity and allocatable (enforced on the
/// kubepods and reserved cgroups), the oom_score_adj floor, DNS, the
/// cgroup and log layout. `runtime_name` is the runtime's own.
pub fn context(s: &Settings, runtime_name: String) -> Result<Arc<NodeContext>, AgentError> {
    if s.cluster_dns.is_empty() {
        tracing::warn!("{} (no clusterDNS in the config, no --cluster-dns)", dns::MISSING_CLUSTER_DNS_MESSAGE);
    }
    let oom_floor = if s.dry_run { -1000 } else { set_own_oom_score_adj(s.oom_score_adj) };
    let host = std::fs::read_to_string(&s.resolv_conf).unwrap_or_else(|e| {
        tracing::warn!(file = %s.resolv_conf.display(), error = %e, "cannot read resolvConf; pods with dnsPolicy Default get no nameservers");
        String::new()
    });
    let memory_capacity_bytes = node_memory_bytes();
    let cpu_capacity_millis = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000;
    let capacity = crate::allocatable::capacity(cpu_capacity_millis, memory_capacity_bytes, &s.root_dir);
    let allocatable = crate::allocatable::allocatable(&capacity, &s.allocatable, &s.eviction.thresholds);
    tracing::info!(
        cpu = %crate::allocatable::cpu_quantity(allocatable.cpu_millis),
        memory = %crate::allocatable::bytes_quantity(allocatable.memory_bytes),
        ephemeral_storage = %crate::allocatable::bytes_quantity(allocatable.ephemeral_storage_bytes),
        "node allocatable (capacity less kubeReserved, systemReserved and the hard eviction thresholds)"
    );
    enforce_node_allocatable(s, &capacity)?;
    // kubelet's root directory is a shared mount, so that what CSI drivers
    // with Bidirectional propagation mount below it is seen by the node.
    if !s.dry_run {
        crate::mounts::make_rshared(&s.root_dir).map_err(|e| AgentError::Fault(format!("configuring the root directory {}: {e}", s.root_dir.display())))?;
    }
    Ok(Arc::new(NodeContext {
        node_name: s.node_name.clone(),
        root_dir: s.root_dir.clone(),
        pod_logs_dir: s.pod_logs_dir.clone(),
        container_logs_dir: s.container_logs_dir.clone(),
        cgroup_driver: s.cgroup_driver,
        cgroup_root: s.cgroup_root.clone(),
        cgroups_per_qos: s.cgroups_per_qos,
        dns: dns::ClusterDns { servers: s.cluster_dns.clone(), domain: s.cluster_domain.clone(), host: dns::ResolvConf::parse(&host) },
        memory_capacity_bytes,
        cpu_capacity_millis,
        allocatable,
        pod_pids_limit: s.allocatable.pod_pids_limit,
        oom_score_adj_floor: oom_floor,
        host_ips: s.node_ips.clone(),
        backoff: s.backoff,
        seccomp_default: s.seccomp_default,
        swap: crate::pods::swap::SwapFacts::detect(s.swap_behavior, std::path::Path::new("/sys/fs/cgroup")),
        runtime_name,
    }))
}

/// Asks the kernel for `wanted` as this process's oom_score_adj. Without
/// CAP_SYS_RESOURCE a lower score than the current one is refused: then the
/// current score is the floor for every container too, logged once.
pub fn set_own_oom_score_adj(wanted: i32) -> i64 {
    let path = "/proc/self/oom_score_adj";
    let current = || std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
    match std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(wanted.to_string().as_bytes())) {
        Ok(()) => -1000,
        Err(e) => {
            let floor = current();
            tracing::warn!(
                wanted,
                current = floor,
                error = %e,
                "the kernel refused a lower oom_score_adj (no CAP_SYS_RESOURCE); container scores below {floor} are clamped to {floor}"
            );
            floor
        }
    }
}

/// Node Allocatable enforcement at start, as kubelet's container manager
/// does: the pods' top-level cgroup gets its limits (capacity less the
/// reservations with `enforceNodeAllocatable: [pods]`), and the named
/// kube/system reserved cgroups theirs; a named cgroup that does not exist
/// fails the start. A dry run says what it would write; the systemd driver's
/// kubepods.slice is left to systemd (logged).
fn enforce_node_allocatable(s: &Settings, capacity: &crate::allocatable::Capacity) -> Result<(), AgentError> {
    use crate::allocatable::{apply, pods_limits, reserved_limits};
    use crate::config::allocatable::Enforce;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut plan: Vec<(String, crate::allocatable::Limits, bool)> = Vec::new();
    if s.cgroups_per_qos {
        match s.cgroup_driver {
            crate::pods::CgroupDriver::Cgroupfs => plan.push((format!("{}/kubepods", s.cgroup_root.trim_end_matches('/')), pods_limits(capacity, &s.allocatable), true)),
            crate::pods::CgroupDriver::Systemd => tracing::warn!("with the systemd cgroup driver nodelet does not set kubepods.slice's limits; Node Allocatable is reported and admitted against"),
        }
    }
    let a = &s.allocatable;
    if a.enforce.contains(&Enforce::KubeReserved) {
        plan.push((a.kube_reserved_cgroup.clone().unwrap_or_default(), reserved_limits(&a.kube_reserved), false));
    }
    if a.enforce.contains(&Enforce::SystemReserved) {
        plan.push((a.system_reserved_cgroup.clone().unwrap_or_default(), reserved_limits(&a.system_reserved), false));
    }
    // The -compressible forms: CPU only (throttling a daemon is safe; an
    // OOM kill of the runtime is not).
    let cpu_only = |l: crate::allocatable::Limits| crate::allocatable::Limits { memory_bytes: None, pids: None, ..l };
    if a.enforce.contains(&Enforce::KubeReservedCompressible) {
        plan.push((a.kube_reserved_cgroup.clone().unwrap_or_default(), cpu_only(reserved_limits(&a.kube_reserved)), false));
    }
    if a.enforce.contains(&Enforce::SystemReservedCompressible) {
        plan.push((a.system_reserved_cgroup.clone().unwrap_or_default(), cpu_only(reserved_limits(&a.system_reserved)), false));
    }
    for (cgroup, limits, create) in plan {
        if s.dry_run {
            tracing::info!(cgroup, ?limits, "dry run: would set the cgroup's limits (Node Allocatable)");
            continue;
        }
        apply(root, &cgroup, &limits, create).map_err(|e| AgentError::Fault(format!("enforcing Node Allocatable on the cgroup {cgroup}: {e}")))?;
        tracing::info!(cgroup, cpu_shares = limits.cpu_shares, memory = ?limits.memory_bytes, pids = ?limits.pids, "Node Allocatable enforced");
    }
    Ok(())
}

pub fn node_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok()))
        .map_or(0, |kb| kb * 1024)
}
