//! Swap, as kubelet handles it: `failSwapOn` refuses to start on a node with
//! swap on, and `memorySwap.swapBehavior` decides what each container may
//! swap. The facts are read once at start; the per-container part is pure.
//!
//! kubelet's rules (kuberuntime_container_linux.go):
//! - no swap controller (no `memory.memsw.limit_in_bytes` on cgroup v1, no
//!   `memory.swap.max` on v2): nothing is set;
//! - NoSwap on cgroup v1: memory+swap limited to the memory limit;
//!   on v2: `memory.swap.max = 0`;
//! - LimitedSwap (v2 only, else NoSwap): only Burstable containers of
//!   non-critical pods that request memory below their limit get
//!   `request / node memory × node swap`; every other container NoSwap.
#![deny(clippy::arithmetic_side_effects)]

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::qos::{self, QosClass};
use crate::config::SwapBehavior;
use crate::runtime::cri;

/// What the node offers for swap, read once at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapFacts {
    pub behavior: SwapBehavior,
    pub cgroup_v2: bool,
    /// The kernel accounts swap per cgroup (kubelet's swapControllerAvailable).
    pub controller: bool,
    /// Total swap of the node (SwapTotal), bytes.
    pub capacity_bytes: i64,
}

impl SwapFacts {
    /// The node's facts under `cgroup_mount` (normally /sys/fs/cgroup).
    pub fn detect(behavior: SwapBehavior, cgroup_mount: &Path) -> Self {
        let cgroup_v2 = cgroup_mount.join("cgroup.controllers").exists();
        let controller = if cgroup_v2 {
            // memory.swap.max exists below the root only: look at our own cgroup's.
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim_start_matches('/').to_string())));
            own.is_some_and(|p| cgroup_mount.join(p).join("memory.swap.max").exists())
                || std::fs::read_dir(cgroup_mount).into_iter().flatten().flatten().any(|e| e.path().join("memory.swap.max").exists())
        } else {
            cgroup_mount.join("memory/memory.memsw.limit_in_bytes").exists()
        };
        let capacity_bytes = std::fs::read_to_string("/proc/meminfo").map(|s| swap_total(&s)).unwrap_or(0);
        Self { behavior, cgroup_v2, controller, capacity_bytes }
    }
}

/// SwapTotal from /proc/meminfo, in bytes.
pub fn swap_total(meminfo: &str) -> i64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// The swap devices /proc/swaps lists (its lines after the header).
pub fn active_swaps(proc_swaps: &str) -> Vec<String> {
    proc_swaps.lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// kubelet's start-up check under `failSwapOn`, with its message.
pub fn check_fail_swap_on(proc_swaps: &str) -> Result<(), String> {
    let swaps = active_swaps(proc_swaps);
    if swaps.is_empty() {
        return Ok(());
    }
    Err(format!(
        "running with swap on is not supported, please disable swap or set --fail-swap-on flag to false (failSwapOn: false); /proc/swaps contained: {swaps:?}"
    ))
}

fn memory(c: &Container, field: &str) -> i64 {
    let list = c.resources.as_ref().and_then(|r| if field == "limits" { r.limits.as_ref() } else { r.requests.as_ref() });
    list.and_then(|m| m.get("memory")).and_then(|q| crate::resources::value(q).ok()).unwrap_or(0)
}

/// The behaviour container `c` of `pod` gets (kubelet's GetContainerSwapBehavior).
pub fn behavior_for(pod: &Pod, c: &Container, facts: &SwapFacts) -> SwapBehavior {
    if facts.behavior != SwapBehavior::LimitedSwap || !facts.controller || !facts.cgroup_v2 || super::is_critical(pod) {
        return SwapBehavior::NoSwap;
    }
    let (request, limit) = (memory(c, "requests"), memory(c, "limits"));
    // kubelet compares the request with the limit as given: an unset limit is 0.
    let burstable = pod.spec.as_ref().is_some_and(|s| qos::qos_class(s) == QosClass::Burstable);
    if !burstable || (request == 0 && limit == 0) || request == limit {
        return SwapBehavior::NoSwap;
    }
    SwapBehavior::LimitedSwap
}

/// `request / node memory × node swap` (KEP 2400), or `None` when the
/// request is beyond the node (kubelet then falls back to no swap).
pub fn limited_swap_bytes(request: i64, node_memory: i64, node_swap: i64) -> Option<i64> {
    if node_memory <= 0 || request > node_memory || request < 0 {
        return None;
    }
    // 128-bit product: no overflow, no float rounding.
    let bytes = i128::from(request).checked_mul(i128::from(node_swap))?.checked_div(i128::from(node_memory))?;
    i64::try_from(bytes).ok()
}

/// Sets the swap part of a container's resources.
pub fn apply(lcr: &mut cri::LinuxContainerResources, pod: &Pod, c: &Container, facts: &SwapFacts, node_memory: i64) {
    if !facts.controller {
        return;
    }
    let allowed = match behavior_for(pod, c, facts) {
        SwapBehavior::LimitedSwap => limited_swap_bytes(memory(c, "requests"), node_memory, facts.capacity_bytes).unwrap_or(0),
        SwapBehavior::NoSwap => 0,
    };
    if facts.cgroup_v2 {
        lcr.unified.insert("memory.swap.max".into(), allowed.to_string());
    } else {
        // memory+swap equal to memory: nothing beyond the limit goes to
        // swap. A container without a limit keeps the runtime's default.
        lcr.memory_swap_limit_in_bytes = lcr.memory_limit_in_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: &str, critical: bool) -> Pod {
        let prio = if critical { ", \"priority\": 2000001000" } else { "" };
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"name": "p", "uid": "u", "annotations": {{"kubernetes.io/config.source": "api"}}}},
                "spec": {{"containers": [{{"name": "c", "image": "i", "resources": {resources}}}]{prio}}}}}"#
        ))
        .unwrap()
    }

    fn v2(behavior: SwapBehavior) -> SwapFacts {
        SwapFacts { behavior, cgroup_v2: true, controller: true, capacity_bytes: 4 << 30 }
    }

    #[test]
    fn fail_swap_on_reads_proc_swaps() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert_eq!(check_fail_swap_on(header), Ok(()));
        assert_eq!(check_fail_swap_on(""), Ok(()));
        let on = format!("{header}/swapfile                               file\t\t1048572\t\t0\t\t-2\n");
        let e = check_fail_swap_on(&on).unwrap_err();
        assert!(e.contains("running with swap on is not supported") && e.contains("/swapfile"), "{e}");
        assert_eq!(swap_total("MemTotal: 100 kB\nSwapTotal:     1048572 kB\n"), 1048572 * 1024);
    }

    #[test]
    fn limited_swap_only_for_burstable_below_their_limit() {
        let burstable = pod(r#"{"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}"#, false);
        let c = &burstable.spec.as_ref().unwrap().containers[0];
        assert_eq!(behavior_for(&burstable, c, &v2(SwapBehavior::LimitedSwap)), SwapBehavior::LimitedSwap);
        let mut lcr = cri::LinuxContainerResources { memory_limit_in_bytes: 2 << 30, ..Default::default() };
        apply(&mut lcr, &burstable, c, &v2(SwapBehavior::LimitedSwap), 8 << 30);
        // 1 GiB of 8 GiB memory: an eighth of the 4 GiB swap.
        assert_eq!(lcr.unified.get("memory.swap.max").map(String::as_str), Some("536870912"));

        for (other, why) in [
            (pod(r#"{"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}"#, false), "request = limit"),
            (pod(r#"{"requests": {"cpu": "1"}}"#, false), "no memory asked"),
            (pod("{}", false), "BestEffort"),
            (pod(r#"{"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}"#, true), "critical"),
        ] {
            let c = &other.spec.as_ref().unwrap().containers[0];
            assert_eq!(behavior_for(&other, c, &v2(SwapBehavior::LimitedSwap)), SwapBehavior::NoSwap, "{why}");
            let mut lcr = cri::LinuxContainerResources::default();
            apply(&mut lcr, &other, c, &v2(SwapBehavior::LimitedSwap), 8 << 30);
            assert_eq!(lcr.unified.get("memory.swap.max").map(String::as_str), Some("0"), "{why}");
        }
        // LimitedSwap needs cgroup v2.
        let v1 = SwapFacts { cgroup_v2: false, ..v2(SwapBehavior::LimitedSwap) };
        assert_eq!(behavior_for(&burstable, c, &v1), SwapBehavior::NoSwap);
        assert_eq!(limited_swap_bytes(9 << 30, 8 << 30, 4 << 30), None, "a request beyond the node");
    }

    #[test]
    fn no_swap_on_v1_caps_memory_and_swap_at_the_limit() {
        let p = pod(r#"{"limits": {"memory": "64Mi"}}"#, false);
        let c = &p.spec.as_ref().unwrap().containers[0];
        let v1 = SwapFacts { behavior: SwapBehavior::NoSwap, cgroup_v2: false, controller: true, capacity_bytes: 0 };
        let mut lcr = cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() };
        apply(&mut lcr, &p, c, &v1, 8 << 30);
        assert_eq!(lcr.memory_swap_limit_in_bytes, 64 << 20);
        assert!(lcr.unified.is_empty());
        // Without the controller nothing is set.
        let mut lcr = cri::LinuxContainerResources { memory_limit_in_bytes: 64 << 20, ..Default::default() };
        apply(&mut lcr, &p, c, &SwapFacts { controller: false, ..v1 }, 8 << 30);
        assert_eq!(lcr.memory_swap_limit_in_bytes, 0);
    }
}
