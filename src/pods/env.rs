//! A container's environment, as kubelet builds it: service variables
//! (`<SVC>_SERVICE_HOST`, Docker link variables) for the Services of the
//! pod's namespace when enableServiceLinks is on, and for the apiserver's
//! `kubernetes` Service always; then `envFrom` (ConfigMaps and Secrets,
//! with a prefix); then `env` with literal values, the downward API
//! (`fieldRef`, `resourceFieldRef`) and ConfigMap or Secret keys. `$(VAR)`
//! is expanded in env values, command and args with Kubernetes' rules
//! (`$$` escapes, unknown references stay as written).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use k8s_openapi::api::core::v1::Container;

pub use crate::downward::{EnvError, PodFacts, expand, field_value, resource_value};


/// The API data a container's environment reads, fetched beforehand so
/// the environment stays a pure function: ConfigMaps and Secrets by name
/// (`None`: it does not exist), and the service variables.
/// One ConfigMap's or Secret's data, `None` when it does not exist.
pub type ObjectData = Option<Arc<crate::volumes::objects::Data>>;

/// A container's environment, and the names skipped as invalid.
pub type Environment = (Vec<(String, String)>, Vec<String>);

#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    pub config_maps: BTreeMap<String, ObjectData>,
    pub secrets: BTreeMap<String, ObjectData>,
    pub services: Vec<(String, String)>,
    /// Why an object could not be read (no apiserver, a timeout), by
    /// `configmap/name` or `secret/name`.
    pub errors: BTreeMap<String, String>,
}

/// The ConfigMaps and Secrets a container's env and envFrom name.
pub fn references(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for e in c.env_from.iter().flatten() {
        cms.extend(e.config_map_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(e.secret_ref.as_ref().map(|r| r.name.clone()));
    }
    for e in c.env.iter().flatten() {
        let Some(vf) = &e.value_from else { continue };
        cms.extend(vf.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(vf.secret_key_ref.as_ref().map(|r| r.name.clone()));
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// Service environment variables, as kubelet's FromServices makes them:
/// the Services of `namespace` with a cluster IP when `links` is on, and
/// the `kubernetes` Service of `default` always.
pub fn service_env(services: &[Arc<Service>], namespace: &str, links: bool) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let spec = s.spec.as_ref();
        let ip = spec.and_then(|sp| sp.cluster_ip.as_deref()).unwrap_or("");
        if ip.is_empty() || ip == "None" || spec.and_then(|sp| sp.ports.as_ref()).is_none_or(|p| p.is_empty()) {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(s);
        } else if ns == namespace && links {
            chosen.insert(name, s);
        }
    }
    let mut out = Vec::new();
    for (name, s) in chosen {
        let spec = s.spec.as_ref().expect("checked above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.clone().unwrap_or_default();
        let prefix = env_name(&name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((format!("{prefix}_SERVICE_PORT_{}", env_name(pn)), p.port.to_string()));
            }
        }
        let host = |port: i32| if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let url = format!("{}://{}", proto.to_lowercase(), host(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

/// Relaxed environment variable names (the default since Kubernetes 1.32):
/// printable ASCII without '='.
fn valid_env_name(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

/// The container's environment, in order: service variables, envFrom,
/// env; `$(VAR)` in a value expands against what was defined before it
/// and the service variables. Keys envFrom skipped as invalid names are
/// returned for an event.
pub fn container_env(c: &Container, facts: &PodFacts<'_>, sources: &EnvSources) -> Result<Environment, EnvError> {
    let namespace = facts.pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut out: Vec<(String, String)> = Vec::new();
    let mut map: HashMap<String, String> = HashMap::new();
    let mut skipped = Vec::new();
    let set = |out: &mut Vec<(String, String)>, map: &mut HashMap<String, String>, k: String, v: String| {
        map.insert(k.clone(), v.clone());
        if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            out.push((k, v));
        }
    };
    let object = |kind: &'static str, name: &str, optional: bool| -> Result<ObjectData, EnvError> {
        let list = if kind == "configmap" { &sources.config_maps } else { &sources.secrets };
        if let Some(why) = sources.errors.get(&format!("{kind}/{name}")) {
            return Err(EnvError::Unavailable(why.clone()));
        }
        match list.get(name).cloned().flatten() {
            Some(d) => Ok(Some(d)),
            None if optional => Ok(None),
            None => Err(EnvError::NotFound { kind, name: name.to_string() }),
        }
    };
    for ef in c.env_from.iter().flatten() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let found = if let Some(r) = &ef.config_map_ref {
            object("configmap", &r.name, r.optional == Some(true))?
        } else if let Some(r) = &ef.secret_ref {
            object("secret", &r.name, r.optional == Some(true))?
        } else {
            None
        };
        for (k, v) in found.iter().flat_map(|d| d.iter()) {
            let k = format!("{prefix}{k}");
            if !valid_env_name(&k) {
                skipped.push(k);
                continue;
            }
            set(&mut out, &mut map, k, String::from_utf8_lossy(v).to_string());
        }
    }
    let services: HashMap<&str, &str> = sources.services.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            if let Some(f) = &vf.field_ref {
                field_value(f, facts, &e.name)?
            } else if let Some(r) = &vf.resource_field_ref {
                resource_value(r, c, facts, &e.name)?
            } else if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional == Some(true);
                let Some(d) = object("configmap", &r.name, optional)? else { continue };
                match d.get(&r.key) {
                    Some(v) => String::from_utf8_lossy(v).to_string(),
                    None if optional => continue,
                    None => return Err(EnvError::MissingKey { key: r.key.clone(), kind: "ConfigMap", namespace, name: r.name.clone() }),
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional == Some(true);
                let Some(d) = object("secret", &r.name, optional)? else { continue };
                match d.get(&r.key) {
                    Some(v) => String::from_utf8_lossy(v).to_string(),
                    None if optional => continue,
                    None => return Err(EnvError::MissingKey { key: r.key.clone(), kind: "Secret", namespace, name: r.name.clone() }),
                }
            } else {
                String::new()
            }
        } else {
            let lookup = |k: &str| map.get(k).cloned().or_else(|| services.get(k).map(|v| v.to_string()));
            expand(e.value.as_deref().unwrap_or(""), &lookup)
        };
        set(&mut out, &mut map, e.name.clone(), value);
    }
    let mut all: Vec<(String, String)> = sources.services.iter().filter(|(k, _)| !map.contains_key(k)).cloned().collect();
    all.extend(out);
    skipped.sort();
    Ok((all, skipped))
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
    use crate::pods::NodeContext;
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, ResourceFieldSelector, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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
        let got = container_env(&c, &facts, &EnvSources::default()).unwrap().0;
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
        assert_eq!(container_env(&c2, &facts, &EnvSources::default()).unwrap().0[0].1, "64");
        // An omitted divisor, as the apiserver stores it ("0"): read as 1.
        let stored = |resource: &str| EnvVar {
            name: "V".into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector { resource: resource.into(), divisor: Some(Quantity("0".into())), container_name: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c3 = Container { env: Some(vec![stored("limits.memory")]), ..c.clone() };
        assert_eq!(container_env(&c3, &facts, &EnvSources::default()).unwrap().0[0].1, (64u64 << 20).to_string());
        let c4 = Container { env: Some(vec![stored("limits.cpu")]), ..c.clone() };
        assert_eq!(container_env(&c4, &facts, &EnvSources::default()).unwrap().0[0].1, "4", "the node's 4 CPUs when no limit is set");
    }

    #[test]
    fn config_maps_secrets_and_env_from() {
        use k8s_openapi::api::core::v1::{ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, SecretKeySelector};
        let data = |kv: &[(&str, &str)]| Some(Arc::new(kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()));
        let sources = EnvSources {
            config_maps: BTreeMap::from([("cfg".to_string(), data(&[("mode", "fast"), ("bad=key", "x")]))]),
            secrets: BTreeMap::from([("db".to_string(), data(&[("pw", "s3cret")]))]),
            services: vec![("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into())],
            errors: BTreeMap::new(),
        };
        let key_ref = |name: &str, key: &str, optional: Option<bool>| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector { name: "cfg".into(), key: key.into(), optional }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let secret = EnvVar {
            name: "PW".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector { name: "db".into(), key: "pw".into(), optional: None }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                prefix: Some("CFG_".into()),
                config_map_ref: Some(ConfigMapEnvSource { name: "cfg".into(), optional: None }),
                ..Default::default()
            }]),
            env: Some(vec![key_ref("MODE", "mode", None), secret, key_ref("GONE", "nope", Some(true)), env("API", "$(KUBERNETES_SERVICE_HOST)")]),
            ..Default::default()
        };
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        let node = NodeContext::for_tests("n1");
        let facts = PodFacts { pod: &pod, pod_ips: &[], node: &node };
        let (got, skipped) = container_env(&c, &facts, &sources).unwrap();
        let m: HashMap<_, _> = got.iter().cloned().collect();
        assert_eq!(m["CFG_mode"], "fast");
        assert_eq!(m["MODE"], "fast");
        assert_eq!(m["PW"], "s3cret");
        assert_eq!(m["API"], "10.96.0.1", "service variables expand");
        assert!(!m.contains_key("GONE"), "an optional missing key is left out");
        assert_eq!(got[0].0, "KUBERNETES_SERVICE_HOST");
        assert_eq!(skipped, vec!["CFG_bad=key"]);

        let missing = Container { env: Some(vec![key_ref("X", "nope", None)]), ..c.clone() };
        assert_eq!(container_env(&missing, &facts, &sources).unwrap_err().to_string(), "couldn't find key nope in ConfigMap ns/cfg");
        let no_cm = EnvSources { config_maps: BTreeMap::from([("cfg".to_string(), None)]), ..sources.clone() };
        assert_eq!(container_env(&c, &facts, &no_cm).unwrap_err().to_string(), "configmap \"cfg\" not found");
    }

    #[test]
    fn service_variables_follow_kubelet() {
        let svc = |ns: &str, name: &str, ip: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP", "name": "dns-udp"}]}
                }))
                .unwrap(),
            )
        };
        let all = vec![svc("default", "kubernetes", "10.96.0.1"), svc("shop", "redis-main", "10.96.0.9"), svc("shop", "headless", "None"), svc("other", "x", "10.96.0.3")];
        let env: HashMap<_, _> = service_env(&all, "shop", true).into_iter().collect();
        assert_eq!(env["REDIS_MAIN_SERVICE_HOST"], "10.96.0.9");
        assert_eq!(env["REDIS_MAIN_SERVICE_PORT"], "80");
        assert_eq!(env["REDIS_MAIN_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(env["REDIS_MAIN_PORT"], "tcp://10.96.0.9:80");
        assert_eq!(env["REDIS_MAIN_PORT_53_UDP"], "udp://10.96.0.9:53");
        assert_eq!(env["REDIS_MAIN_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["REDIS_MAIN_PORT_53_UDP_ADDR"], "10.96.0.9");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert!(!env.contains_key("HEADLESS_SERVICE_HOST") && !env.contains_key("X_SERVICE_HOST"));
        let off: HashMap<_, _> = service_env(&all, "shop", false).into_iter().collect();
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST") && !off.contains_key("REDIS_MAIN_SERVICE_HOST"));
    }
}
