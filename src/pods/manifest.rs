//! Pod manifests: decoding (YAML or JSON), the defaults the apiserver would
//! apply, kubelet's static-pod treatment (name suffix, content-hash UID,
//! config annotations), and validation with apiserver-style field paths.
//!
//! Errors name the origin (a file or URL) and the field, in one line.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe, Toleration};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::validation::{self as v, FieldError};

pub const ANNOTATION_CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const ANNOTATION_CONFIG_SEEN: &str = "kubernetes.io/config.seen";
pub const ANNOTATION_CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const ANNOTATION_CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{origin}: {message}")]
    Decode { origin: String, message: String },
    #[error("{origin}: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid { origin: String, errors: Vec<FieldError> },
}

impl ManifestError {
    fn decode(origin: &str, message: impl Into<String>) -> Self {
        ManifestError::Decode { origin: origin.to_string(), message: message.into() }
    }

    fn field(origin: &str, field: &str, message: impl Into<String>) -> Self {
        ManifestError::Invalid { origin: origin.to_string(), errors: vec![FieldError::new(field, message)] }
    }
}

/// A decoded pod and what was odd about its manifest.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub pod: Pod,
    /// Fields the manifest sets that a Pod does not have.
    pub unknown_fields: Vec<String>,
}

fn to_value(bytes: &[u8], origin: &str) -> Result<Value, ManifestError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ManifestError::decode(origin, "the manifest is empty"));
    }
    // Bounded in size and nesting (decode.rs).
    crate::decode::document(bytes).map_err(|e| match e {
        crate::decode::DecodeError::Syntax(m) => ManifestError::decode(origin, format!("not valid YAML or JSON: {m}")),
        other => ManifestError::decode(origin, other.to_string()),
    })
}

fn check_type_meta(obj: &Value, origin: &str, prefix: &str, kind: &str, required: bool) -> Result<(), ManifestError> {
    let Some(map) = obj.as_object() else {
        return Err(ManifestError::decode(origin, format!("{}expected an object", at(prefix))));
    };
    for (field, want) in [("apiVersion", "v1"), ("kind", kind)] {
        match map.get(field) {
            None | Some(Value::Null) if !required => {}
            None | Some(Value::Null) => {
                return Err(ManifestError::field(origin, &join(prefix, field), format!("Required value: must be {want:?}")));
            }
            Some(Value::String(s)) if s == want => {}
            Some(other) => {
                return Err(ManifestError::field(
                    origin,
                    &join(prefix, field),
                    format!("Unsupported value: {other}: a static pod manifest must be apiVersion \"v1\", kind \"Pod\""),
                ));
            }
        }
    }
    Ok(())
}

fn at(prefix: &str) -> String {
    if prefix.is_empty() { String::new() } else { format!("{prefix}: ") }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") }
}

/// Resource quantities may be written as bare numbers (`cpu: 1`); the API
/// type wants strings, as the apiserver's own decoder accepts both.
fn normalize_quantities(pod: &mut Value) {
    fn fix_map(m: Option<&mut Value>) {
        if let Some(Value::Object(map)) = m {
            for v in map.values_mut() {
                if let Value::Number(n) = v {
                    *v = Value::String(n.to_string());
                }
            }
        }
    }
    let Some(spec) = pod.get_mut("spec") else { return };
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs {
                if let Some(r) = c.get_mut("resources") {
                    fix_map(r.get_mut("limits"));
                    fix_map(r.get_mut("requests"));
                }
            }
        }
    }
    fix_map(spec.get_mut("overhead"));
    if let Some(r) = spec.get_mut("resources") {
        fix_map(r.get_mut("limits"));
        fix_map(r.get_mut("requests"));
    }
    if let Some(Value::Array(vols)) = spec.get_mut("volumes") {
        for vol in vols {
            if let Some(Value::Object(ed)) = vol.get_mut("emptyDir")
                && let Some(Value::Number(n)) = ed.get("sizeLimit").cloned()
            {
                ed.insert("sizeLimit".into(), Value::String(n.to_string()));
            }
        }
    }
}

fn decode_value(mut value: Value, origin: &str, prefix: &str) -> Result<Decoded, ManifestError> {
    normalize_quantities(&mut value);
    let pod: Pod = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { prefix.to_string() } else { join(prefix, &path) };
        ManifestError::field(origin, &field, e.inner().to_string())
    })?;
    let reencoded = serde_json::to_value(&pod).unwrap_or(Value::Null);
    let mut unknown_fields = Vec::new();
    unknown(&value, &reencoded, prefix, &mut unknown_fields);
    Ok(Decoded { pod, unknown_fields })
}

/// Decodes one Pod (YAML or JSON).
pub fn decode_pod(bytes: &[u8], origin: &str) -> Result<Decoded, ManifestError> {
    let value = to_value(bytes, origin)?;
    check_type_meta(&value, origin, "", "Pod", true)?;
    decode_value(value, origin, "")
}

/// Decodes a Pod or a PodList, as kubelet's URL source accepts either.
pub fn decode_pods(bytes: &[u8], origin: &str) -> Result<Vec<Decoded>, ManifestError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Vec::new());
    }
    let value = to_value(bytes, origin)?;
    if value.get("kind").and_then(Value::as_str) == Some("PodList") {
        let Some(items) = value.get("items").and_then(Value::as_array) else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let prefix = format!("items[{i}]");
                check_type_meta(item, origin, &prefix, "Pod", false)?;
                decode_value(item.clone(), origin, &prefix)
            })
            .collect()
    } else {
        check_type_meta(&value, origin, "", "Pod", true)?;
        Ok(vec![decode_value(value, origin, "")?])
    }
}

/// Lists fields present in `orig` that did not survive decoding into a Pod.
fn unknown(orig: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (k, ov) in o {
                let sub = join(path, k);
                match p.get(k) {
                    Some(pv) => unknown(ov, pv, &sub, out),
                    None if is_empty(ov) => {}
                    None => out.push(sub),
                }
            }
        }
        (Value::Object(o), _) => {
            // A map the type reads as something else (e.g. a quantity); only
            // report when the type dropped it entirely.
            let _ = o;
        }
        (Value::Array(o), Value::Array(p)) => {
            for (i, (ov, pv)) in o.iter().zip(p.iter()).enumerate() {
                unknown(ov, pv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The default image pull policy, as the apiserver's `SetDefaults_Container`
/// reads the reference: Always when its tag is `latest` (which a reference
/// without tag or digest gets), IfNotPresent for any other tag, a digest
/// alone, or a reference that does not parse (an upper-case repository).
pub fn default_pull_policy(image: &str) -> &'static str {
    let name = image.split('@').next().unwrap_or(image);
    let has_digest = name.len() < image.len();
    // The tag follows a colon in the last path component; a colon before a
    // slash is a registry's port.
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[slash..].find(':') {
        Some(i) => (&name[..slash + i], Some(&name[slash + i + 1..])),
        None => (name, None),
    };
    let mut components = repository.split('/');
    let first = components.next().unwrap_or("");
    let is_host = repository.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let path_upper = if is_host { components.any(|c| c.bytes().any(|b| b.is_ascii_uppercase())) } else { repository.bytes().any(|b| b.is_ascii_uppercase()) };
    if repository.is_empty() || path_upper {
        return "IfNotPresent";
    }
    match tag {
        Some("latest") => "Always",
        Some(_) => "IfNotPresent",
        None if has_digest => "IfNotPresent",
        None => "Always",
    }
}

/// Sets a string field the apiserver defaults when it is unset or empty.
fn default_str(field: &mut Option<String>, value: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(value.to_string());
    }
}

/// Sets a number field the apiserver defaults when it is unset or zero.
fn default_num(field: &mut Option<i32>, value: i32) {
    if field.is_none_or(|n| n == 0) {
        *field = Some(value);
    }
}

fn default_http_get(h: Option<&mut k8s_openapi::api::core::v1::HTTPGetAction>) {
    if let Some(h) = h {
        default_str(&mut h.path, "/");
        default_str(&mut h.scheme, "HTTP");
    }
}

fn default_probe(p: &mut Probe) {
    default_num(&mut p.timeout_seconds, 1);
    default_num(&mut p.period_seconds, 10);
    default_num(&mut p.success_threshold, 1);
    default_num(&mut p.failure_threshold, 3);
    default_http_get(p.http_get.as_mut());
    if let Some(g) = p.grpc.as_mut() {
        g.service.get_or_insert_with(String::new);
    }
}

fn default_env(env: Option<&mut Vec<k8s_openapi::api::core::v1::EnvVar>>) {
    for e in env.into_iter().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|vf| vf.field_ref.as_mut()) {
            default_str(&mut f.api_version, "v1");
        }
    }
}

fn default_container(c: &mut Container) {
    default_str(&mut c.image_pull_policy, default_pull_policy(c.image.as_deref().unwrap_or("")));
    default_str(&mut c.termination_message_path, "/dev/termination-log");
    default_str(&mut c.termination_message_policy, "File");
    for p in c.ports.iter_mut().flatten() {
        default_str(&mut p.protocol, "TCP");
    }
    for p in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
        default_probe(p);
    }
    if let Some(l) = c.lifecycle.as_mut() {
        for h in [&mut l.post_start, &mut l.pre_stop].into_iter().flatten() {
            default_http_get(h.http_get.as_mut());
        }
    }
    default_env(c.env.as_mut());
}

/// `SetDefaults_Pod` for a regular container or a sidecar: requests default
/// to limits for each resource given only a limit; with in-place resize (on
/// by default) cpu and memory, when set, get a NotRequired resize policy.
fn default_resources(c: &mut Container, resizable: bool) {
    if let Some(r) = c.resources.as_mut()
        && let Some(limits) = r.limits.clone()
    {
        let requests = r.requests.get_or_insert_with(BTreeMap::new);
        for (k, q) in limits {
            requests.entry(k).or_insert(q);
        }
    }
    let Some(r) = c.resources.as_ref().filter(|r| resizable && r.requests.is_some()) else { return };
    let set = |name: &str| r.requests.as_ref().is_some_and(|m| m.contains_key(name)) || r.limits.as_ref().is_some_and(|m| m.contains_key(name));
    let wanted: Vec<&str> = ["cpu", "memory"].into_iter().filter(|n| set(n)).collect();
    for name in wanted {
        let policies = c.resize_policy.get_or_insert_with(Vec::new);
        if !policies.iter().any(|p| p.resource_name == name) {
            policies.push(k8s_openapi::api::core::v1::ContainerResizePolicy { resource_name: name.into(), restart_policy: "NotRequired".into() });
        }
    }
}

/// The volume defaults: a volume without a source is an emptyDir; Secret,
/// ConfigMap, downward API and projected files get mode 0644; a hostPath
/// an empty type; a projected token an hour.
fn default_volume(v: &mut k8s_openapi::api::core::v1::Volume) {
    let sourceless = serde_json::to_value(&*v).ok().and_then(|x| x.as_object().map(|o| o.keys().all(|k| k == "name"))).unwrap_or(false);
    if sourceless {
        v.empty_dir = Some(Default::default());
    }
    const MODE: i32 = 0o644;
    if let Some(s) = v.secret.as_mut() {
        s.default_mode.get_or_insert(MODE);
    }
    if let Some(c) = v.config_map.as_mut() {
        c.default_mode.get_or_insert(MODE);
    }
    if let Some(h) = v.host_path.as_mut() {
        h.type_.get_or_insert_with(String::new);
    }
    let field_refs = |items: Option<&mut Vec<k8s_openapi::api::core::v1::DownwardAPIVolumeFile>>| {
        for i in items.into_iter().flatten() {
            if let Some(f) = i.field_ref.as_mut() {
                default_str(&mut f.api_version, "v1");
            }
        }
    };
    if let Some(d) = v.downward_api.as_mut() {
        d.default_mode.get_or_insert(MODE);
        field_refs(d.items.as_mut());
    }
    if let Some(p) = v.projected.as_mut() {
        p.default_mode.get_or_insert(MODE);
        for s in p.sources.iter_mut().flatten() {
            if let Some(t) = s.service_account_token.as_mut() {
                t.expiration_seconds.get_or_insert(3600);
            }
            field_refs(s.downward_api.as_mut().and_then(|d| d.items.as_mut()));
        }
    }
}

/// The defaults the apiserver (v1.34) applies to a new Pod. Pods from the
/// apiserver arrive with them; static pods never pass through it, so kubelet
/// (and nodelet) apply them. tests/control_plane.rs compares this with the
/// test apiserver's own defaulting, written separately.
pub fn set_defaults(pod: &mut Pod) {
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some("default".into());
    }
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    default_str(&mut spec.restart_policy, "Always");
    spec.termination_grace_period_seconds.get_or_insert(30);
    default_str(&mut spec.dns_policy, "ClusterFirst");
    default_str(&mut spec.scheduler_name, "default-scheduler");
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    let host_network = spec.host_network == Some(true);
    let containers = spec.init_containers.iter_mut().flatten().map(|c| (c, false)).chain(spec.containers.iter_mut().map(|c| (c, true)));
    for (c, regular) in containers {
        default_container(c);
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        default_resources(c, regular || sidecar);
        if host_network {
            // With the host's network the host port is the container port.
            for p in c.ports.iter_mut().flatten() {
                if p.host_port.is_none_or(|h| h == 0) {
                    p.host_port = Some(p.container_port);
                }
            }
        }
    }
    for e in spec.ephemeral_containers.iter_mut().flatten() {
        default_str(&mut e.image_pull_policy, default_pull_policy(e.image.as_deref().unwrap_or("")));
        default_str(&mut e.termination_message_path, "/dev/termination-log");
        default_str(&mut e.termination_message_policy, "File");
        for p in e.ports.iter_mut().flatten() {
            default_str(&mut p.protocol, "TCP");
        }
        default_env(e.env.as_mut());
    }
    for v in spec.volumes.iter_mut().flatten() {
        default_volume(v);
    }
}

/// Where a static pod came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaticOrigin {
    File(String),
    Http(String),
}

impl StaticOrigin {
    pub fn source_name(&self) -> &'static str {
        match self {
            StaticOrigin::File(_) => "file",
            StaticOrigin::Http(_) => "http",
        }
    }

    pub fn location(&self) -> &str {
        match self {
            StaticOrigin::File(p) | StaticOrigin::Http(p) => p,
        }
    }
}

/// kubelet's treatment of a static pod: apiserver defaults, a UID hashed
/// from the content, the node and the origin (so an edit makes a new pod),
/// the name suffixed with the node name, the node name set, the config
/// annotations, and a toleration of every NoExecute taint.
pub fn make_static(mut pod: Pod, node_name: &str, origin: &StaticOrigin) -> Pod {
    set_defaults(&mut pod);
    if pod.metadata.uid.as_deref().is_none_or(str::is_empty) {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&pod).unwrap_or_default());
        match origin {
            StaticOrigin::File(p) => h.update(format!("host:{node_name}file:{p}")),
            StaticOrigin::Http(u) => h.update(format!("url:{u}")),
        }
        pod.metadata.uid = Some(hex::encode(&h.finalize()[..16]));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(name) = pod.metadata.name.as_mut().filter(|n| !n.is_empty()) {
        *name = format!("{name}-{}", node_name.to_lowercase());
    }
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node_name.to_string());
    spec.tolerations
        .get_or_insert_with(Vec::new)
        .push(Toleration { operator: Some("Exists".into()), effect: Some("NoExecute".into()), ..Default::default() });
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(ANNOTATION_CONFIG_HASH.into(), uid);
    ann.insert(ANNOTATION_CONFIG_SOURCE.into(), origin.source_name().into());
    pod
}

/// Validates a (defaulted) pod as the apiserver would on create. Static pods
/// additionally may not reference API objects they could never get.
pub fn validate(pod: &Pod, static_pod: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let md = &pod.metadata;
    match md.name.as_deref() {
        None | Some("") => errs.push(FieldError::new("metadata.name", "Required value: name is required")),
        Some(n) => v::dns_subdomain(n, "metadata.name", &mut errs),
    }
    if let Some(ns) = md.namespace.as_deref() {
        v::dns_label(ns, "metadata.namespace", &mut errs);
    }
    // The UID names the pod's directory under the root dir: one plain path
    // component only (a manifest's `uid: ..` would make it the root dir).
    if let Some(uid) = md.uid.as_deref()
        && crate::files::component(uid, "metadata.uid").is_err()
    {
        errs.push(FieldError::new("metadata.uid", format!("Invalid value: {uid:?}: must be one plain path component (not empty, not '.' or '..', no '/')")));
    }
    for (k, val) in md.labels.iter().flatten() {
        v::label_key(k, &format!("metadata.labels[{k}]"), &mut errs);
        v::label_value(val, &format!("metadata.labels[{k}]"), &mut errs);
    }
    match pod.spec.as_ref() {
        None => errs.push(FieldError::new("spec", "Required value")),
        Some(spec) => super::validation::validate_spec(spec, static_pod, &mut errs),
    }
    errs
}

/// Decodes, defaults and validates one static pod manifest. The second value
/// lists what nodelet ignores in it (unknown fields).
pub fn load_static(bytes: &[u8], node_name: &str, origin: &StaticOrigin) -> Result<(Pod, Vec<String>), ManifestError> {
    let decoded = decode_pod(bytes, origin.location())?;
    finish_static(decoded, node_name, origin)
}

/// Defaults and validates a decoded static pod.
pub fn finish_static(decoded: Decoded, node_name: &str, origin: &StaticOrigin) -> Result<(Pod, Vec<String>), ManifestError> {
    let pod = make_static(decoded.pod, node_name, origin);
    let mut errors = validate(&pod, true);
    // A field one slip from a real one is a mistake, not an extension: the
    // pod would run without what it meant (a probe, a pull policy).
    let mut unknown = Vec::new();
    for f in decoded.unknown_fields {
        match fields::meant(&f) {
            Some(meant) => errors.push(FieldError::new(&f, format!("unknown field; did you mean {meant:?}?"))),
            None => unknown.push(f),
        }
    }
    errors.extend(not_yet_supported(&pod));
    if !errors.is_empty() {
        return Err(ManifestError::Invalid { origin: origin.location().to_string(), errors });
    }
    let warnings = unknown.into_iter().map(|f| format!("{f}: unknown field")).collect();
    Ok((pod, warnings))
}

/// What this version of nodelet cannot honour: volume kinds it has no
/// plugin for, block devices, and paths that would leave their directory. A pod started without its mounts (etcd
/// without its data directory) would be worse than no pod, so such pods are
/// refused rather than run half-way.
pub fn not_yet_supported(pod: &Pod) -> Vec<FieldError> {
    let mut refused = Vec::new();
    let Some(spec) = &pod.spec else { return refused };
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(what) = crate::volumes::unsupported(v) {
            refused.push(FieldError::new(&format!("spec.volumes[{i}]"), format!("Unsupported value: {what} are not implemented by this nodelet")));
        }
    }
    // The apiserver's rule: a device comes from a claim (or an ephemeral one).
    let claims: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
        .map(|v| v.name.as_str())
        .collect();
    // Features a pod must get or be refused for, never run without
    // (upstream's: user namespaces, pod-level resources, the Strict
    // supplemental groups policy, recursive read-only mounts).
    if spec.host_users == Some(false) {
        refused.push(FieldError::new("spec.hostUsers", "Unsupported value: false: user namespaces are not implemented by this nodelet"));
    }
    if spec.resources.as_ref().is_some_and(|r| r.limits.as_ref().is_some_and(|m| !m.is_empty()) || r.requests.as_ref().is_some_and(|m| !m.is_empty())) {
        refused.push(FieldError::new("spec.resources", "Unsupported value: pod-level resources are not implemented by this nodelet"));
    }
    if spec.security_context.as_ref().and_then(|s| s.supplemental_groups_policy.as_deref()) == Some("Strict") {
        refused.push(FieldError::new(
            "spec.securityContext.supplementalGroupsPolicy",
            "Unsupported value: \"Strict\": not implemented by this nodelet",
        ));
    }
    // A Localhost seccomp profile is a file below <root-dir>/seccomp; a path
    // out of it is refused (the apiserver's rule, kept for static pods too).
    let seccomp_path = |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>, field: &str, refused: &mut Vec<FieldError>| {
        if let Some(p) = p.filter(|p| p.type_ == "Localhost") {
            let path = p.localhost_profile.as_deref().unwrap_or("");
            if super::sandbox::localhost_profile_path(std::path::Path::new("/"), path).is_none() {
                refused.push(FieldError::new(
                    &format!("{field}.seccompProfile.localhostProfile"),
                    format!("Invalid value: {path:?}: must be a relative path below the seccomp profile root, without '..'"),
                ));
            }
        }
    };
    seccomp_path(spec.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()), "spec.securityContext", &mut refused);
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        seccomp_path(c.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()), &format!("spec.ephemeralContainers[{i}].securityContext"), &mut refused);
    }
    let lists = [("initContainers", spec.init_containers.as_deref().unwrap_or(&[])), ("containers", &spec.containers[..])];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            seccomp_path(c.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref()), &format!("spec.{list}[{i}].securityContext"), &mut refused);
            for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
                // IfPossible falls back to a plain read-only mount, as
                // kubelet does on a runtime without it; Enabled cannot.
                if m.recursive_read_only.as_deref() == Some("Enabled") {
                    refused.push(FieldError::new(
                        &format!("spec.{list}[{i}].volumeMounts[{j}].recursiveReadOnly"),
                        "Unsupported value: \"Enabled\": recursive read-only mounts are not implemented by this nodelet",
                    ));
                }
            }
            for (j, d) in c.volume_devices.iter().flatten().enumerate() {
                if !claims.contains(&d.name.as_str()) {
                    refused.push(FieldError::new(
                        &format!("spec.{list}[{i}].volumeDevices[{j}].name"),
                        format!("Invalid value: {:?}: can only use volume source type of PersistentVolumeClaim or Ephemeral for block mode", d.name),
                    ));
                }
            }
        }
    }
    refused
}

pub mod fields;

#[cfg(test)]
mod tests;
