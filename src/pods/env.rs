//! A container's environment: literal values, the downward API (`fieldRef`,
//! `resourceFieldRef`), and `$(VAR)` expansion in env values, command and
//! args, with Kubernetes' rules (`$$` escapes, unknown references stay as
//! written). Values from ConfigMaps and Secrets need the apiserver and are
//! reported as a configuration error until that source is wired in.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{NodeContext, quantity};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("env {name}: unsupported fieldRef {path:?}")]
    FieldPath { name: String, path: String },
    #[error("env {name}: {reason}")]
    Resource { name: String, reason: String },
    #[error("env {name}: {source_kind} {object} is not available on this node")]
    Unavailable { name: String, source_kind: &'static str, object: String },
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

fn field_value(sel: &ObjectFieldSelector, facts: &PodFacts<'_>, name: &str) -> Result<String, EnvError> {
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

fn resource_value(sel: &ResourceFieldSelector, own: &Container, facts: &PodFacts<'_>, name: &str) -> Result<String, EnvError> {
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
    let divisor = sel.divisor.clone().unwrap_or(Quantity("1".into()));
    let div = quantity::parse(&divisor.0).map_err(|e| err(e.to_string()))?;
    if div <= 0.0 {
        return Err(err("divisor must be positive".into()));
    }
    let amount = match set.as_ref().and_then(|m| m.get(res)) {
        Some(q) => quantity::parse(&q.0).map_err(|e| err(e.to_string()))?,
        // An unset limit is the node's allocatable amount, as kubelet does.
        None if kind == "limits" => match res {
            "cpu" => facts.node.cpu_capacity_millis as f64 / 1000.0,
            "memory" => facts.node.memory_capacity_bytes as f64,
            _ => 0.0,
        },
        None => 0.0,
    };
    let v = (amount / div).ceil();
    // CPU values round up to at least one unit of the divisor when set.
    let v = if res == "cpu" && amount > 0.0 { v.max(1.0) } else { v };
    Ok(format!("{}", v as i64))
}

/// The container's environment, in order, with `$(VAR)` expanded against
/// the variables defined before each one.
pub fn container_env(c: &Container, facts: &PodFacts<'_>) -> Result<Vec<(String, String)>, EnvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut map: HashMap<String, String> = HashMap::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_value(f, facts, &e.name)?
            } else if let Some(r) = &vf.resource_field_ref {
                resource_value(r, c, facts, &e.name)?
            } else if let Some(r) = &vf.config_map_key_ref {
                if r.optional == Some(true) {
                    continue;
                }
                return Err(EnvError::Unavailable { name: e.name.clone(), source_kind: "configmap", object: r.name.clone() });
            } else if let Some(r) = &vf.secret_key_ref {
                if r.optional == Some(true) {
                    continue;
                }
                return Err(EnvError::Unavailable { name: e.name.clone(), source_kind: "secret", object: r.name.clone() });
            } else {
                String::new()
            }
        } else {
            let lookup = |k: &str| map.get(k).cloned();
            expand(e.value.as_deref().unwrap_or(""), &lookup)
        };
        map.insert(e.name.clone(), value.clone());
        if let Some(slot) = out.iter_mut().find(|(k, _)| *k == e.name) {
            slot.1 = value;
        } else {
            out.push((e.name.clone(), value));
        }
    }
    Ok(out)
}

/// Expands `$(VAR)` in command and args against the final environment.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |k: &str| map.get(k).map(|v| v.to_string());
    items.iter().map(|s| expand(s, &lookup)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, PodSpec, ResourceRequirements};
    use std::collections::BTreeMap;

    fn lookup(k: &str) -> Option<String> {
        match k {
            "A" => Some("x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_rules() {
        assert_eq!(expand("$(A)-$(A)", &lookup), "x-x");
        assert_eq!(expand("$(B)", &lookup), "$(B)", "unknown stays");
        assert_eq!(expand("$$(A)", &lookup), "$(A)", "$$ escapes");
        assert_eq!(expand("$$$(A)", &lookup), "$x");
        assert_eq!(expand("$(A", &lookup), "$(A", "unclosed is literal");
        assert_eq!(expand("a$b$", &lookup), "a$b$");
        assert_eq!(expand("$(EMPTY)z", &lookup), "z");
        assert_eq!(expand("é$(A)ü", &lookup), "éxü");
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
    }

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn env_in_order_with_downward_api() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".to_string(), "w".to_string())]));
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                env("B", "$(A)"),
                env("A", "1"),
                env("C", "$(A)-$(POD)"),
                field("POD", "metadata.name"),
                field("IP", "status.podIP"),
                field("APP", "metadata.labels['app']"),
            ]),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        pod.spec = Some(PodSpec { containers: vec![c.clone()], ..Default::default() });
        let node = NodeContext::for_tests("n1");
        let ips = vec!["10.1.0.5".to_string()];
        let facts = PodFacts { pod: &pod, pod_ips: &ips, node: &node };
        let got = container_env(&c, &facts).unwrap();
        let m: HashMap<_, _> = got.iter().cloned().collect();
        assert_eq!(m["B"], "$(A)", "only earlier variables expand");
        assert_eq!(m["C"], "1-$(POD)");
        assert_eq!(m["POD"], "web");
        assert_eq!(m["IP"], "10.1.0.5");
        assert_eq!(m["APP"], "w");
        assert_eq!(expand_all(&["echo $(POD) $(IP)".to_string()], &got), vec!["echo web 10.1.0.5"]);

        let mem = EnvVar {
            name: "MEM".into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    resource: "limits.memory".into(),
                    divisor: Some(Quantity("1Mi".into())),
                    container_name: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c2 = Container { env: Some(vec![mem]), ..c.clone() };
        assert_eq!(container_env(&c2, &facts).unwrap()[0].1, "64");
    }

    #[test]
    fn secrets_are_a_clear_error_unless_optional() {
        let mut e = EnvVar { name: "S".into(), ..Default::default() };
        e.value_from = Some(EnvVarSource {
            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector { name: "db".into(), key: "pw".into(), optional: None }),
            ..Default::default()
        });
        let c = Container { name: "c".into(), env: Some(vec![e.clone()]), ..Default::default() };
        let pod = Pod::default();
        let node = NodeContext::for_tests("n1");
        let facts = PodFacts { pod: &pod, pod_ips: &[], node: &node };
        assert_eq!(container_env(&c, &facts).unwrap_err().to_string(), "env S: secret db is not available on this node");
        e.value_from.as_mut().unwrap().secret_key_ref.as_mut().unwrap().optional = Some(true);
        let c = Container { name: "c".into(), env: Some(vec![e]), ..Default::default() };
        assert!(container_env(&c, &facts).unwrap().is_empty());
    }
}
