//! Admission (pure): kubelet re-checks the scheduler's predicates before it
//! runs an apiserver pod, since a pod can be bound to a node directly
//! (spec.nodeName) or the node can have changed. A rejected pod is not run;
//! its status becomes Failed with the reason.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::resources::{self as quantity, Amount};

/// What the node offers.
#[derive(Debug, Clone, Default)]
pub struct NodeResources {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub max_pods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

fn reject(reason: &str, message: String) -> Result<(), Rejection> {
    Err(Rejection { reason: reason.into(), message: format!("Pod was rejected: {message}") })
}

/// A pod's effective requests: the larger of its biggest init container and
/// the sum of its app containers (and sidecars), as the scheduler counts.
/// Sums saturate: requests beyond what any node has stay beyond it.
pub fn requests(spec: &PodSpec) -> (Amount, Amount) {
    let sidecars: Vec<_> = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")).collect();
    let sum = |milli: bool, r: &str| spec.containers.iter().chain(sidecars.iter().copied()).map(|c| container_request(c, r, milli)).sum::<Amount>();
    let init = |milli: bool, r: &str| spec.init_containers.iter().flatten().map(|c| container_request(c, r, milli)).max().unwrap_or(Amount::ZERO);
    // The RuntimeClass's overhead counts too (the scheduler's and kubelet's
    // fit both add spec.overhead).
    (
        sum(true, "cpu").max(init(true, "cpu")).saturating_add(overhead(spec, "cpu", true)),
        sum(false, "memory").max(init(false, "memory")).saturating_add(overhead(spec, "memory", false)),
    )
}

/// The pod's `spec.overhead` of resource `r` (in millis for `milli`): what
/// its RuntimeClass costs beyond the containers, set by the apiserver.
pub fn overhead(spec: &PodSpec, r: &str, milli: bool) -> Amount {
    spec.overhead
        .as_ref()
        .and_then(|o| o.get(r))
        .and_then(|q| if milli { quantity::milli(q).ok() } else { quantity::value(q).ok() })
        .map_or(Amount::ZERO, Amount::new)
}

/// One container's request of resource `r` (in millis for `milli`).
pub fn container_request(c: &k8s_openapi::api::core::v1::Container, r: &str, milli: bool) -> Amount {
    c.resources
        .as_ref()
        .and_then(|x| x.requests.as_ref())
        .and_then(|m| m.get(r))
        .and_then(|q| if milli { quantity::milli(q).ok() } else { quantity::value(q).ok() })
        .map_or(Amount::ZERO, Amount::new)
}

fn host_ports(spec: &PodSpec) -> Vec<(i32, String, String)> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| (p.host_port.unwrap_or(0), p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.host_ip.clone().unwrap_or_default()))
        .collect()
}

fn node_affinity_ok(spec: &PodSpec, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    if !spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|sel| crate::node_selector::matches(&sel.node_selector_terms, labels, node_name))
}

/// Admits `pod` next to the pods already admitted, or says why not.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeResources) -> Result<(), Rejection> {
    let spec = pod.spec.clone().unwrap_or_default();
    let unsupported = super::manifest::not_yet_supported(pod);
    if !unsupported.is_empty() {
        let list = unsupported.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return reject("UnsupportedPodSpec", format!("this node cannot run it yet: {list}"));
    }
    if spec.node_name.as_deref().is_some_and(|n| n != node.name) {
        return reject("NodeName", format!("the pod is bound to {}, not to this node", spec.node_name.unwrap_or_default()));
    }
    if !node_affinity_ok(&spec, &node.labels, &node.name) {
        return reject("NodeAffinity", "Predicate NodeAffinity failed: the node's labels do not match the pod's node selector or required node affinity".into());
    }
    let used = u32::try_from(admitted.len()).unwrap_or(u32::MAX);
    if used >= node.max_pods {
        return reject("OutOfpods", format!("Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {}", node.max_pods));
    }
    let (cpu, mem) = requests(&spec);
    let (used_cpu, used_mem) = admitted
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .map(requests)
        .fold((Amount::ZERO, Amount::ZERO), |(a, b), (c, d)| (a.saturating_add(c), b.saturating_add(d)));
    if !cpu.is_zero() && used_cpu.saturating_add(cpu) > Amount::new(node.cpu_millis) {
        return reject("OutOfcpu", format!("Node didn't have enough resource: cpu, requested: {cpu}m, used: {used_cpu}m, capacity: {}m", node.cpu_millis));
    }
    if !mem.is_zero() && used_mem.saturating_add(mem) > Amount::new(node.memory_bytes) {
        return reject(
            "OutOfmemory",
            format!("Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}", node.memory_bytes),
        );
    }
    let taken: Vec<(i32, String, String)> = admitted.iter().filter_map(|p| p.spec.as_ref()).flat_map(host_ports).collect();
    for (port, proto, ip) in host_ports(&spec) {
        let clash = taken.iter().any(|(p, pr, i)| *p == port && *pr == proto && (i.is_empty() || ip.is_empty() || *i == ip));
        if clash {
            return reject("HostPortConflict", format!("Predicate HostPort failed: host port {port}/{proto} is already in use"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::manifest::{self, StaticOrigin};

    fn pod(extra: &str) -> Pod {
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{extra}  containers:\n  - name: c\n    image: i:1\n    resources: {{requests: {{cpu: 500m, memory: 1Gi}}}}\n    ports: [{{containerPort: 80, hostPort: 8080}}]\n");
        let mut p = manifest::load_static(yaml.as_bytes(), "n1", &StaticOrigin::File("/p".into())).unwrap().0;
        p.spec.as_mut().unwrap().node_name = Some("n1".into());
        p
    }

    fn node() -> NodeResources {
        NodeResources {
            name: "n1".into(),
            labels: BTreeMap::from([("disk".into(), "ssd".into())]),
            cpu_millis: 1000,
            memory_bytes: 4 << 30,
            max_pods: 2,
        }
    }

    #[test]
    fn admits_what_fits_and_rejects_what_does_not() {
        let a = pod("");
        assert_eq!(admit(&a, &[], &node()), Ok(()));
        assert_eq!(admit(&a, &[&a], &node()).unwrap_err().reason, "HostPortConflict");
        let b = pod("").clone();
        let mut b2 = b.clone();
        b2.spec.as_mut().unwrap().containers[0].ports = None;
        b2.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap().requests.as_mut().unwrap().insert("cpu".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("600m".into()));
        assert_eq!(admit(&b2, &[&a], &node()).unwrap_err().reason, "OutOfcpu");
        let mut small = b2.clone();
        small.spec.as_mut().unwrap().containers[0].resources = None;
        assert_eq!(admit(&small, &[&a, &a], &node()).unwrap_err().reason, "OutOfpods");
        assert_eq!(admit(&pod("  nodeSelector: {disk: hdd}\n"), &[], &node()).unwrap_err().reason, "NodeAffinity");
        assert_eq!(admit(&pod("  nodeSelector: {disk: ssd}\n"), &[], &node()), Ok(()));
        let affinity = "  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions: [{key: disk, operator: In, values: [nvme]}]\n        - matchExpressions: [{key: disk, operator: Exists}]\n";
        assert_eq!(admit(&pod(affinity), &[], &node()), Ok(()), "terms are ORed");
        let mut with_volume = pod("");
        with_volume.spec.as_mut().unwrap().volumes = Some(vec![k8s_openapi::api::core::v1::Volume { name: "v".into(), ..Default::default() }]);
        let r = admit(&with_volume, &[], &node()).unwrap_err();
        assert_eq!(r.reason, "UnsupportedPodSpec");
        assert!(r.message.contains("spec.volumes[0]: Unsupported value"), "{}", r.message);
        with_volume.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].empty_dir = Some(Default::default());
        assert_eq!(admit(&with_volume, &[], &node()), Ok(()));
    }

    fn requesting(cpu: &str, memory: &str) -> Pod {
        let mut p = pod("");
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.ports = None;
        let r = c.resources.as_mut().unwrap().requests.as_mut().unwrap();
        r.insert("cpu".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(cpu.into()));
        r.insert("memory".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(memory.into()));
        p
    }

    #[test]
    fn huge_requests_are_refused_never_wrapped_into_fitting() {
        let big = NodeResources { max_pods: 110, ..node() };
        // One pod: 5P of CPU in two containers (5e18 millicores each) used to wrap.
        let mut two = requesting("5P", "1");
        let second = two.spec.as_ref().unwrap().containers[0].clone();
        two.spec.as_mut().unwrap().containers.push(k8s_openapi::api::core::v1::Container { name: "d".into(), ..second });
        assert_eq!(admit(&two, &[], &big).unwrap_err().reason, "OutOfcpu");
        // Summed over admitted pods: 4P already there, 5P more.
        let there = requesting("4P", "1");
        assert_eq!(admit(&requesting("5P", "1"), &[&there], &big).unwrap_err().reason, "OutOfcpu");
        // Memory near the int64 limit, twice.
        let near = requesting("1m", "8Ei");
        assert_eq!(admit(&near, &[&near], &big).unwrap_err().reason, "OutOfmemory");
        assert_eq!(admit(&requesting("1m", "1"), &[&near], &big).unwrap_err().reason, "OutOfmemory", "the node is full");
        let (cpu, mem) = requests(two.spec.as_ref().unwrap());
        assert_eq!((cpu, mem.get()), (Amount::MAX, 2));
    }
}
