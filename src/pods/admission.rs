//! Admission (pure): kubelet re-checks the scheduler's predicates before it
//! runs an apiserver pod, since a pod can be bound to a node directly
//! (spec.nodeName) or the node can have changed. A rejected pod is not run;
//! its status becomes Failed with the reason.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec, Taint, Toleration};

use crate::resources::{self as quantity, Amount};

/// What the node offers.
#[derive(Debug, Clone, Default)]
pub struct NodeResources {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The Node's taints as the apiserver has them (only NoExecute matter here).
    pub taints: Vec<Taint>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// Allocatable ephemeral storage (the node filesystem's capacity less
    /// what is reserved and the hard eviction threshold).
    pub ephemeral_storage_bytes: i64,
    /// Allocatable hugepages by resource name (`hugepages-2Mi`).
    pub hugepages: BTreeMap<String, i64>,
    /// Allocatable extended resources of the device plugins (healthy
    /// devices), by resource name.
    pub extended: BTreeMap<String, i64>,
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
    (request_in(spec, "cpu", true), request_in(spec, "memory", false))
}

/// A pod's effective request of one resource counted in whole units
/// (ephemeral-storage, hugepages): as `requests` counts cpu and memory.
pub fn request_of(spec: &PodSpec, r: &str) -> Amount {
    request_in(spec, r, false)
}

/// The larger of the biggest init container's request and the sum over app
/// containers and sidecars, plus the RuntimeClass's overhead (the
/// scheduler's and kubelet's fit both add spec.overhead); in millis for
/// `milli`.
fn request_in(spec: &PodSpec, r: &str, milli: bool) -> Amount {
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let sum = spec.containers.iter().chain(sidecars).map(|c| container_request(c, r, milli)).sum::<Amount>();
    let init = spec.init_containers.iter().flatten().map(|c| container_request(c, r, milli)).max().unwrap_or(Amount::ZERO);
    sum.max(init).saturating_add(overhead(spec, r, milli))
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

/// Whether `t` tolerates `taint` (the API's rule: an empty key with Exists
/// matches every key; an empty effect every effect; Equal, the default,
/// compares values).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => !key.is_empty() && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// Admits `pod` next to the pods already admitted, or says why not.
pub fn admit(pod: &Pod, admitted: &[&Pod], node: &NodeResources) -> Result<(), Rejection> {
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.security_context.as_ref().and_then(|s| s.supplemental_groups_policy.as_deref()) == Some("Strict") {
        // kubelet's own reason: the runtime reports no support (containerd
        // 2.0's features.supplemental_groups_policy), so Strict cannot be kept.
        return reject("SupplementalGroupsPolicyNotSupported", "SupplementalGroupsPolicy=Strict is not supported in this node".into());
    }
    if spec.os.as_ref().is_some_and(|os| os.name != "linux") {
        return reject("PodOSNotSupported", "Failed to admit pod as the OS field doesn't match node OS".into());
    }
    if pod.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/os")).is_some_and(|os| os != "linux") {
        return reject("PodOSSelectorNodeLabelDoesNotMatch", "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label".into());
    }
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
        return reject("OutOfcpu", format!("Node didn't have enough resource: cpu, requested: {cpu}, used: {used_cpu}, capacity: {}", node.cpu_millis));
    }
    if !mem.is_zero() && used_mem.saturating_add(mem) > Amount::new(node.memory_bytes) {
        return reject(
            "OutOfmemory",
            format!("Node didn't have enough resource: memory, requested: {mem}, used: {used_mem}, capacity: {}", node.memory_bytes),
        );
    }
    // Ephemeral storage and hugepages, as kubelet's resource fit checks
    // every resource the node has (requests of hugepages it has none of do
    // not fit).
    // (A node that could not measure its filesystem, capacity 0, does not
    // check ephemeral storage rather than refuse every pod that asks.)
    let mut counted: Vec<(String, i64)> = Vec::new();
    if node.ephemeral_storage_bytes > 0 {
        counted.push(("ephemeral-storage".into(), node.ephemeral_storage_bytes));
    }
    let asked = spec.init_containers.iter().flatten().chain(spec.containers.iter()).flat_map(|c| c.resources.iter().flat_map(|r| r.requests.iter().flatten()));
    for (name, _) in asked {
        if name.starts_with("hugepages-") && !counted.iter().any(|(n, _)| n == name) {
            counted.push((name.clone(), node.hugepages.get(name).copied().unwrap_or(0)));
        }
        // Extended resources the node has (kubelet leaves out the ones it
        // has none of: a scheduler extender may serve them).
        if let Some(n) = node.extended.get(name).filter(|_| !counted.iter().any(|(n, _)| n == name)) {
            counted.push((name.clone(), *n));
        }
    }
    for (name, capacity) in counted {
        let want = request_of(&spec, &name);
        if want.is_zero() {
            continue;
        }
        let used = admitted.iter().filter_map(|p| p.spec.as_ref()).map(|s| request_of(s, &name)).fold(Amount::ZERO, Amount::saturating_add);
        if used.saturating_add(want) > Amount::new(capacity) {
            return reject(
                &format!("OutOf{name}"),
                format!("Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {capacity}"),
            );
        }
    }
    // Static pods are exempt: kubelet checks only NoExecute taints, and
    // only for pods from the apiserver.
    if super::from_api(pod) {
        let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
        if node.taints.iter().any(|taint| taint.effect == "NoExecute" && !tolerations.iter().any(|t| tolerates(t, taint))) {
            return reject("TaintToleration", "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate".into());
        }
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
            taints: Vec::new(),
            cpu_millis: 1000,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 10 << 30,
            hugepages: BTreeMap::from([("hugepages-2Mi".into(), 8 << 20)]),
            extended: BTreeMap::new(),
            max_pods: 2,
        }
    }

    #[test]
    fn ephemeral_storage_and_hugepages_are_admitted_against_allocatable() {
        let asking = |ephemeral: &str, huge: &str| {
            let mut p = pod("");
            let r = p.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap();
            let requests = r.requests.as_mut().unwrap();
            requests.insert("cpu".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1m".into()));
            requests.insert("ephemeral-storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(ephemeral.into()));
            if !huge.is_empty() {
                requests.insert(huge.split('=').next().unwrap().into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(huge.split('=').nth(1).unwrap().into()));
            }
            p.spec.as_mut().unwrap().containers[0].ports = None;
            p
        };
        let n = NodeResources { max_pods: 10, memory_bytes: 64 << 30, ..node() };
        assert!(admit(&asking("6Gi", ""), &[], &n).is_ok());
        let six = asking("6Gi", "");
        let e = admit(&asking("6Gi", ""), &[&six], &n).unwrap_err();
        assert_eq!(e.reason, "OutOfephemeral-storage");
        assert!(e.message.contains("Node didn't have enough resource: ephemeral-storage"), "{}", e.message);
        assert!(admit(&asking("1Gi", "hugepages-2Mi=8Mi"), &[], &n).is_ok());
        assert_eq!(admit(&asking("1Gi", "hugepages-2Mi=10Mi"), &[], &n).unwrap_err().reason, "OutOfhugepages-2Mi");
        assert_eq!(admit(&asking("1Gi", "hugepages-1Gi=1Gi"), &[], &n).unwrap_err().reason, "OutOfhugepages-1Gi", "none of that size");
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

    #[test]
    fn untolerated_no_execute_taints_refuse_apiserver_pods_only() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint { key: key.into(), value: value.map(Into::into), effect: effect.into(), ..Default::default() };
        let tainted = NodeResources {
            taints: vec![taint("dedicated", Some("db"), "NoExecute"), taint("gpu", None, "NoSchedule")],
            ..node()
        };
        let mut api = pod("");
        api.metadata.annotations.as_mut().unwrap().insert(manifest::ANNOTATION_CONFIG_SOURCE.into(), "api".into());
        // (load_static gave it the static pod's tolerate-all NoExecute.)
        api.spec.as_mut().unwrap().tolerations = None;
        let r = admit(&api, &[], &tainted).unwrap_err();
        assert_eq!(r.reason, "TaintToleration");
        assert_eq!(r.message, "Pod was rejected: Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate");
        // NoSchedule is the scheduler's business; a static pod is exempt.
        assert_eq!(admit(&pod(""), &[], &tainted), Ok(()), "static pods are not checked");
        let with = |t: &str| {
            let mut p = api.clone();
            p.spec.as_mut().unwrap().tolerations = Some(serde_json::from_str(t).unwrap());
            admit(&p, &[], &tainted)
        };
        assert_eq!(with(r#"[{"key": "dedicated", "value": "db", "effect": "NoExecute"}]"#), Ok(()));
        assert_eq!(with(r#"[{"key": "dedicated", "operator": "Exists"}]"#), Ok(()));
        assert_eq!(with(r#"[{"operator": "Exists"}]"#), Ok(()), "empty key with Exists tolerates everything");
        assert_eq!(with(r#"[{"key": "dedicated", "value": "web", "effect": "NoExecute"}]"#).unwrap_err().reason, "TaintToleration");
        assert_eq!(with(r#"[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]"#).unwrap_err().reason, "TaintToleration");
    }

    #[test]
    fn kubelets_reasons_for_what_the_node_cannot_offer() {
        let mut strict = pod("");
        strict.spec.as_mut().unwrap().security_context = Some(serde_json::from_str(r#"{"supplementalGroupsPolicy": "Strict"}"#).unwrap());
        assert_eq!(admit(&strict, &[], &node()).unwrap_err().reason, "SupplementalGroupsPolicyNotSupported");
        assert_eq!(admit(&pod("  os: {name: windows}\n"), &[], &node()).unwrap_err().reason, "PodOSNotSupported");
        assert_eq!(admit(&pod("  os: {name: linux}\n"), &[], &node()), Ok(()));
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

    #[test]
    fn extended_resources_fit_what_the_node_has_and_unknown_ones_pass() {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let with = |name: &str, n: &str| {
            let mut p = requesting("100m", "10Mi");
            let r = p.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap();
            r.requests.as_mut().unwrap().insert(name.into(), Quantity(n.into()));
            r.limits.get_or_insert_with(Default::default).insert(name.into(), Quantity(n.into()));
            p
        };
        let node = NodeResources { extended: BTreeMap::from([("example.com/dev".to_string(), 2)]), max_pods: 10, ..node() };
        let one = with("example.com/dev", "1");
        admit(&one, &[], &node).unwrap();
        let e = admit(&with("example.com/dev", "2"), &[&one], &node).unwrap_err();
        assert_eq!(e.reason, "OutOfexample.com/dev");
        assert_eq!(e.message, "Pod was rejected: Node didn't have enough resource: example.com/dev, requested: 2, used: 1, capacity: 2");
        // A resource the node does not have at all is left to whatever
        // serves it (kubelet's removeMissingExtendedResources).
        admit(&with("example.com/other", "5"), &[&one], &node).unwrap();
    }
}
