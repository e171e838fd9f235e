//! Pod QoS classes, as the API defines them.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::resources as quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The cgroup level under kubepods: Guaranteed pods sit directly in it.
    pub fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

const TRACKED: [&str; 2] = ["cpu", "memory"];

fn amount(c: &Container, field: &str, resource: &str) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let map = if field == "limits" { r.limits.as_ref()? } else { r.requests.as_ref()? };
    let q = map.get(resource)?;
    quantity::milli(q).ok().filter(|v| *v > 0)
}

/// The QoS class of a pod: BestEffort without any CPU or memory request or
/// limit; Guaranteed when every container limits both and its requests equal
/// its limits; Burstable otherwise.
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(spec.containers.iter()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        for res in TRACKED {
            let limit = amount(c, "limits", res);
            // Requests default to limits when only limits are given.
            let request = amount(c, "requests", res).or(limit);
            if limit.is_some() || request.is_some() {
                any = true;
            }
            match (request, limit) {
                (Some(r), Some(l)) if r == l => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| kv.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect::<BTreeMap<_, _>>())
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements { requests: map(requests), limits: map(limits), ..Default::default() }),
            ..Default::default()
        }
    }

    fn spec(cs: Vec<Container>) -> PodSpec {
        PodSpec { containers: cs, ..Default::default() }
    }

    #[test]
    fn classes() {
        assert_eq!(qos_class(&spec(vec![container(&[], &[])])), QosClass::BestEffort);
        assert_eq!(
            qos_class(&spec(vec![container(&[], &[("cpu", "1"), ("memory", "1Gi")])])),
            QosClass::Guaranteed,
            "requests default to limits"
        );
        assert_eq!(
            qos_class(&spec(vec![container(&[("cpu", "500m"), ("memory", "1Gi")], &[("cpu", "1"), ("memory", "1Gi")])])),
            QosClass::Burstable
        );
        assert_eq!(qos_class(&spec(vec![container(&[("cpu", "100m")], &[])])), QosClass::Burstable);
        assert_eq!(
            qos_class(&spec(vec![container(&[], &[("cpu", "1"), ("memory", "1Gi")]), container(&[], &[])])),
            QosClass::Burstable,
            "one best-effort container makes the pod burstable"
        );
    }
}
