//! The downward API: what a pod may learn about itself and its node
//! (`fieldRef`, `resourceFieldRef`), and Kubernetes' `$(VAR)` expansion.
//! Used by the container environment and by downwardAPI volumes.

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::node::NodeContext;
use crate::resources as quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("env {name}: unsupported fieldRef {path:?}")]
    FieldPath { name: String, path: String },
    #[error("env {name}: {reason}")]
    Resource { name: String, reason: String },
    /// kubelet's wording: `configmap "x" not found`.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey { key: String, kind: &'static str, namespace: String, name: String },
    #[error("{0}")]
    Unavailable(String),
}

/// Expands `$(VAR)` references with Kubernetes' semantics.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) if !name.is_empty() => out.push_str(&v),
                            _ => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        // Copy one UTF-8 character.
        let ch = input[i..].chars().next().expect("index is on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// What the downward API can see of a running pod.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ips: &'a [String],
    pub node: &'a NodeContext,
}

pub fn field_value(sel: &ObjectFieldSelector, facts: &PodFacts<'_>, name: &str) -> Result<String, EnvError> {
    let md = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let path = sel.field_path.as_str();
    let keyed = |prefix: &str, map: &Option<std::collections::BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| facts.node.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        "status.hostIP" => facts.node.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => facts.node.host_ips.join(","),
        _ => {
            if let Some(v) = keyed("metadata.labels['", &md.labels) {
                v
            } else if let Some(v) = keyed("metadata.annotations['", &md.annotations) {
                v
            } else {
                return Err(EnvError::FieldPath { name: name.into(), path: path.into() });
            }
        }
    })
}

pub fn resource_value(sel: &ResourceFieldSelector, own: &Container, facts: &PodFacts<'_>, name: &str) -> Result<String, EnvError> {
    let err = |reason: String| EnvError::Resource { name: name.into(), reason };
    let c = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => own,
        Some(cn) => facts
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .find(|c| c.name == cn)
            .ok_or_else(|| err(format!("container {cn:?} not found")))?,
    };
    let (kind, res) = sel.resource.split_once('.').ok_or_else(|| err(format!("unsupported resource {:?}", sel.resource)))?;
    let r = c.resources.clone().unwrap_or_default();
    let set = if kind == "limits" { r.limits } else if kind == "requests" { r.requests } else { None };
    if kind != "limits" && kind != "requests" {
        return Err(err(format!("unsupported resource {:?}", sel.resource)));
    }
    // An omitted divisor is stored by the apiserver as "0" (the zero
    // Quantity): kubelet reads zero as 1, and so must a node agent, or every
    // pod that passes its limits to its process fails.
    let divisor = sel.divisor.clone().unwrap_or(Quantity("1".into()));
    let div = match quantity::parse(&divisor.0).map_err(|e| err(e.to_string()))? {
        0.0 => 1.0,
        d => d,
    };
    if div < 0.0 {
        return Err(err("divisor must not be negative".into()));
    }
    let amount = match set.as_ref().and_then(|m| m.get(res)) {
        Some(q) => quantity::parse(&q.0).map_err(|e| err(e.to_string()))?,
        // An unset limit is the node's allocatable amount, as kubelet does.
        None if kind == "limits" => match res {
            "cpu" => facts.node.allocatable.cpu_millis as f64 / 1000.0,
            "memory" => facts.node.allocatable.memory_bytes as f64,
            "ephemeral-storage" => facts.node.allocatable.ephemeral_storage_bytes as f64,
            _ => 0.0,
        },
        None => 0.0,
    };
    let v = (amount / div).ceil();
    // CPU values round up to at least one unit of the divisor when set.
    let v = if res == "cpu" && amount > 0.0 { v.max(1.0) } else { v };
    Ok(format!("{}", v as i64))
}
