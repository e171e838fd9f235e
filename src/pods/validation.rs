//! Pod validation with the apiserver's field paths and message shapes, for
//! the pods that never pass through an apiserver (static pods).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Probe, Volume};

use crate::resources as quantity;

pub use crate::names::{FieldError, dns_label, dns_subdomain, label_key, label_value};

fn one_of(value: Option<&str>, allowed: &[&str], field: &str, errs: &mut Vec<FieldError>) {
    if let Some(v) = value
        && !allowed.contains(&v)
    {
        let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        errs.push(FieldError::new(field, format!("Unsupported value: {v:?}: supported values: {list}")));
    }
}

fn non_negative(v: Option<i64>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v
        && n < 0
    {
        errs.push(FieldError::new(field, format!("Invalid value: {n}: must be greater than or equal to 0")));
    }
}

fn forbidden_static(field: &str, what: &str, errs: &mut Vec<FieldError>) {
    errs.push(FieldError::new(
        field,
        format!("Forbidden: a static pod cannot reference {what}: it has no API object to read"),
    ));
}

/// Names of the API objects a volume source would need.
fn api_volume(v: &Volume) -> Option<&'static str> {
    if v.secret.is_some() {
        return Some("secrets");
    }
    if v.config_map.is_some() {
        return Some("configmaps");
    }
    if v.persistent_volume_claim.is_some() || v.ephemeral.is_some() {
        return Some("persistentvolumeclaims");
    }
    if let Some(p) = &v.projected {
        for s in p.sources.iter().flatten() {
            if s.secret.is_some() {
                return Some("secrets");
            }
            if s.config_map.is_some() {
                return Some("configmaps");
            }
            if s.service_account_token.is_some() {
                return Some("service account tokens");
            }
            if s.cluster_trust_bundle.is_some() {
                return Some("clustertrustbundles");
            }
        }
    }
    None
}

fn check_mode(mode: Option<i32>, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        errs.push(FieldError::new(field, format!("Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive")));
    }
}

fn check_items(items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>, field: &str, errs: &mut Vec<FieldError>) {
    for (k, item) in items.into_iter().flatten().enumerate() {
        let f = format!("{field}.items[{k}]");
        if item.key.is_empty() {
            errs.push(FieldError::new(&format!("{f}.key"), "Required value"));
        }
        check_file_path(&item.path, &format!("{f}.path"), errs);
        check_mode(item.mode, &format!("{f}.mode"), errs);
    }
}

fn check_file_path(path: &str, field: &str, errs: &mut Vec<FieldError>) {
    if path.is_empty() {
        errs.push(FieldError::new(field, "Required value"));
    } else if path.starts_with('/') {
        errs.push(FieldError::new(field, format!("Invalid value: {path:?}: must be a relative path")));
    } else if path.split('/').any(|p| p == "..") {
        errs.push(FieldError::new(field, format!("Invalid value: {path:?}: must not contain '..'")));
    } else if path.starts_with("..") {
        errs.push(FieldError::new(field, format!("Invalid value: {path:?}: must not start with '..'")));
    }
}

/// The per-kind checks of a volume source that the apiserver also makes.
fn validate_volume_source(v: &Volume, f: &str, errs: &mut Vec<FieldError>) {
    if let Some(h) = &v.host_path {
        if h.path.is_empty() {
            errs.push(FieldError::new(&format!("{f}.hostPath.path"), "Required value"));
        }
        let types = ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"];
        if let Some(t) = h.type_.as_deref()
            && !types.contains(&t)
        {
            errs.push(FieldError::new(&format!("{f}.hostPath.type"), format!("Unsupported value: {t:?}")));
        }
    }
    if let Some(c) = &v.config_map {
        check_mode(c.default_mode, &format!("{f}.configMap.defaultMode"), errs);
        check_items(c.items.as_ref(), &format!("{f}.configMap"), errs);
    }
    if let Some(s) = &v.secret {
        check_mode(s.default_mode, &format!("{f}.secret.defaultMode"), errs);
        check_items(s.items.as_ref(), &format!("{f}.secret"), errs);
    }
    if let Some(d) = &v.downward_api {
        check_mode(d.default_mode, &format!("{f}.downwardAPI.defaultMode"), errs);
        for (k, item) in d.items.iter().flatten().enumerate() {
            let itf = format!("{f}.downwardAPI.items[{k}]");
            check_file_path(&item.path, &format!("{itf}.path"), errs);
            check_mode(item.mode, &format!("{itf}.mode"), errs);
            if item.field_ref.is_some() == item.resource_field_ref.is_some() {
                errs.push(FieldError::new(&itf, "Invalid value: exactly one of fieldRef and resourceFieldRef must be set"));
            }
        }
    }
    if let Some(p) = &v.projected {
        check_mode(p.default_mode, &format!("{f}.projected.defaultMode"), errs);
        for (k, s) in p.sources.iter().flatten().enumerate() {
            let sf = format!("{f}.projected.sources[{k}]");
            if let Some(c) = &s.config_map {
                check_items(c.items.as_ref(), &format!("{sf}.configMap"), errs);
            }
            if let Some(c) = &s.secret {
                check_items(c.items.as_ref(), &format!("{sf}.secret"), errs);
            }
            if let Some(t) = &s.service_account_token {
                check_file_path(&t.path, &format!("{sf}.serviceAccountToken.path"), errs);
                if t.expiration_seconds.is_some_and(|e| e < 600) {
                    errs.push(FieldError::new(&format!("{sf}.serviceAccountToken.expirationSeconds"), "Invalid value: may not be less than 10 minutes"));
                }
            }
        }
    }
}

pub fn validate_spec(spec: &PodSpec, static_pod: bool, errs: &mut Vec<FieldError>) {
    if spec.containers.is_empty() {
        errs.push(FieldError::new("spec.containers", "Required value"));
    }
    let mut volumes = BTreeSet::new();
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        let f = format!("spec.volumes[{i}]");
        dns_label(&vol.name, &format!("{f}.name"), errs);
        if !volumes.insert(vol.name.clone()) {
            errs.push(FieldError::new(&format!("{f}.name"), format!("Duplicate value: {:?}", vol.name)));
        }
        if static_pod && let Some(what) = api_volume(vol) {
            forbidden_static(&f, what, errs);
        }
        validate_volume_source(vol, &f, errs);
    }
    let mut names = BTreeSet::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        validate_container(c, &format!("spec.initContainers[{i}]"), true, &mut names, &volumes, spec, static_pod, errs);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        validate_container(c, &format!("spec.containers[{i}]"), false, &mut names, &volumes, spec, static_pod, errs);
    }
    one_of(spec.restart_policy.as_deref(), &["Always", "OnFailure", "Never"], "spec.restartPolicy", errs);
    one_of(
        spec.dns_policy.as_deref(),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        "spec.dnsPolicy",
        errs,
    );
    if spec.dns_policy.as_deref() == Some("None") && spec.dns_config.is_none() {
        errs.push(FieldError::new("spec.dnsConfig", "Required value: must provide `dnsConfig` when `dnsPolicy` is None"));
    }
    if let Some(dc) = &spec.dns_config {
        let ns = dc.nameservers.as_ref().map_or(0, Vec::len);
        if ns > 3 {
            errs.push(FieldError::new("spec.dnsConfig.nameservers", format!("Invalid value: must not have more than 3 nameservers, got {ns}")));
        }
        if spec.dns_policy.as_deref() == Some("None") && ns == 0 {
            errs.push(FieldError::new("spec.dnsConfig.nameservers", "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"));
        }
        let searches = dc.searches.as_ref().map_or(0, Vec::len);
        if searches > 32 {
            errs.push(FieldError::new("spec.dnsConfig.searches", format!("Invalid value: must not have more than 32 search paths, got {searches}")));
        }
    }
    non_negative(spec.termination_grace_period_seconds, "spec.terminationGracePeriodSeconds", errs);
    for (field, value) in [("spec.hostname", &spec.hostname), ("spec.subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            dns_label(v, field, errs);
        }
    }
    if let Some(d) = spec.active_deadline_seconds
        && d <= 0
    {
        errs.push(FieldError::new("spec.activeDeadlineSeconds", format!("Invalid value: {d}: must be between 1 and 2147483647, inclusive")));
    }
    if static_pod {
        if spec.service_account_name.as_deref().is_some_and(|s| !s.is_empty()) {
            forbidden_static("spec.serviceAccountName", "a service account", errs);
        }
        if spec.image_pull_secrets.as_ref().is_some_and(|s| !s.is_empty()) {
            forbidden_static("spec.imagePullSecrets", "secrets", errs);
        }
        if spec.resource_claims.as_ref().is_some_and(|s| !s.is_empty()) {
            forbidden_static("spec.resourceClaims", "resource claims", errs);
        }
        if spec.ephemeral_containers.as_ref().is_some_and(|s| !s.is_empty()) {
            forbidden_static("spec.ephemeralContainers", "ephemeral containers", errs);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn validate_container(
    c: &Container,
    f: &str,
    init: bool,
    names: &mut BTreeSet<String>,
    volumes: &BTreeSet<String>,
    spec: &PodSpec,
    static_pod: bool,
    errs: &mut Vec<FieldError>,
) {
    if c.name.is_empty() {
        errs.push(FieldError::new(&format!("{f}.name"), "Required value"));
    } else {
        dns_label(&c.name, &format!("{f}.name"), errs);
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::new(&format!("{f}.name"), format!("Duplicate value: {:?}", c.name)));
        }
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.push(FieldError::new(&format!("{f}.image"), "Required value"));
    }
    one_of(c.image_pull_policy.as_deref(), &["Always", "IfNotPresent", "Never"], &format!("{f}.imagePullPolicy"), errs);
    one_of(
        c.termination_message_policy.as_deref(),
        &["File", "FallbackToLogsOnError"],
        &format!("{f}.terminationMessagePolicy"),
        errs,
    );
    let sidecar = c.restart_policy.as_deref() == Some("Always");
    if init {
        one_of(c.restart_policy.as_deref(), &["Always"], &format!("{f}.restartPolicy"), errs);
    } else if c.restart_policy.is_some() {
        errs.push(FieldError::new(&format!("{f}.restartPolicy"), "Forbidden: may not be set for non-init containers"));
    }

    let mut port_names = BTreeSet::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let pf = format!("{f}.ports[{j}]");
        if !(1..=65535).contains(&p.container_port) {
            errs.push(FieldError::new(&format!("{pf}.containerPort"), format!("Invalid value: {}: must be between 1 and 65535, inclusive", p.container_port)));
        }
        if let Some(h) = p.host_port
            && !(0..=65535).contains(&h)
        {
            errs.push(FieldError::new(&format!("{pf}.hostPort"), format!("Invalid value: {h}: must be between 0 and 65535, inclusive")));
        }
        if spec.host_network == Some(true)
            && let Some(h) = p.host_port
            && h != p.container_port
        {
            errs.push(FieldError::new(&format!("{pf}.hostPort"), format!("Invalid value: {h}: must match `containerPort` when `hostNetwork` is true")));
        }
        one_of(p.protocol.as_deref(), &["TCP", "UDP", "SCTP"], &format!("{pf}.protocol"), errs);
        if let Some(n) = &p.name {
            let ok = !n.is_empty()
                && n.len() <= 15
                && n.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
                && n.chars().any(|ch| ch.is_ascii_lowercase())
                && !n.starts_with('-')
                && !n.ends_with('-')
                && !n.contains("--");
            if !ok {
                errs.push(FieldError::new(&format!("{pf}.name"), format!("Invalid value: {n:?}: must be an IANA_SVC_NAME (at most 15 characters, lower case letters, digits and '-', at least one letter)")));
            } else if !port_names.insert(n.clone()) {
                errs.push(FieldError::new(&format!("{pf}.name"), format!("Duplicate value: {n:?}")));
            }
        }
    }

    for (j, e) in c.env.iter().flatten().enumerate() {
        let ef = format!("{f}.env[{j}]");
        if e.name.is_empty() {
            errs.push(FieldError::new(&format!("{ef}.name"), "Required value"));
        } else if e.name.contains('=') || !e.name.chars().all(|ch| ch.is_ascii_graphic() || ch == ' ') {
            errs.push(FieldError::new(&format!("{ef}.name"), format!("Invalid value: {:?}: a valid environment variable name must consist only of printable ASCII characters other than '='", e.name)));
        }
        if let Some(vf) = &e.value_from {
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.push(FieldError::new(&format!("{ef}.valueFrom"), "Invalid value: may not be specified when `value` is not empty"));
            }
            let sources = [vf.field_ref.is_some(), vf.resource_field_ref.is_some(), vf.config_map_key_ref.is_some(), vf.secret_key_ref.is_some(), vf.file_key_ref.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                errs.push(FieldError::new(&format!("{ef}.valueFrom"), "Invalid value: may not have more than one field specified at a time"));
            }
            if static_pod && vf.config_map_key_ref.is_some() {
                forbidden_static(&format!("{ef}.valueFrom.configMapKeyRef"), "configmaps", errs);
            }
            if static_pod && vf.secret_key_ref.is_some() {
                forbidden_static(&format!("{ef}.valueFrom.secretKeyRef"), "secrets", errs);
            }
        }
    }
    if static_pod {
        for (j, ef) in c.env_from.iter().flatten().enumerate() {
            if ef.config_map_ref.is_some() {
                forbidden_static(&format!("{f}.envFrom[{j}].configMapRef"), "configmaps", errs);
            }
            if ef.secret_ref.is_some() {
                forbidden_static(&format!("{f}.envFrom[{j}].secretRef"), "secrets", errs);
            }
        }
    }

    if let Some(r) = &c.resources {
        for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, q) in map.iter().flatten() {
                let rf = format!("{f}.resources.{kind}[{name}]");
                match quantity::parse(&q.0) {
                    Err(e) => errs.push(FieldError::new(&rf, format!("Invalid value: {:?}: {e}", q.0))),
                    Ok(v) if v < 0.0 => errs.push(FieldError::new(&rf, format!("Invalid value: {:?}: must be greater than or equal to 0", q.0))),
                    Ok(_) => {}
                }
            }
        }
        if let (Some(limits), Some(requests)) = (&r.limits, &r.requests) {
            for (name, req) in requests {
                if let (Some(lim), Ok(rv), Ok(lv)) =
                    (limits.get(name), quantity::parse(&req.0), limits.get(name).map_or(Ok(0.0), |l| quantity::parse(&l.0)))
                    && rv > lv
                {
                    errs.push(FieldError::new(
                        &format!("{f}.resources.requests[{name}]"),
                        format!("Invalid value: {:?}: must be less than or equal to {name} limit of {}", req.0, lim.0),
                    ));
                }
            }
        }
    }

    let mut paths = BTreeSet::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mf = format!("{f}.volumeMounts[{j}]");
        if !volumes.contains(&m.name) {
            errs.push(FieldError::new(&format!("{mf}.name"), format!("Not found: {:?}", m.name)));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::new(&format!("{mf}.mountPath"), "Required value"));
        } else if !paths.insert(m.mount_path.clone()) {
            errs.push(FieldError::new(&format!("{mf}.mountPath"), format!("Invalid value: {:?}: must be unique", m.mount_path)));
        }
        let sub_path = m.sub_path.as_deref().unwrap_or("");
        let sub_path_expr = m.sub_path_expr.as_deref().unwrap_or("");
        if !sub_path.is_empty() && !sub_path_expr.is_empty() {
            errs.push(FieldError::new(&format!("{mf}.subPathExpr"), "Invalid value: subPathExpr and subPath are mutually exclusive"));
        }
        for (field, value) in [("subPath", sub_path), ("subPathExpr", sub_path_expr)] {
            if value.starts_with('/') {
                errs.push(FieldError::new(&format!("{mf}.{field}"), format!("Invalid value: {value:?}: must be a relative path")));
            } else if value.split('/').any(|part| part == "..") {
                errs.push(FieldError::new(&format!("{mf}.{field}"), format!("Invalid value: {value:?}: must not contain '..'")));
            }
        }
        if let Some(p) = m.mount_propagation.as_deref()
            && !["None", "HostToContainer", "Bidirectional"].contains(&p)
        {
            errs.push(FieldError::new(&format!("{mf}.mountPropagation"), format!("Unsupported value: {p:?}: supported values: \"Bidirectional\", \"HostToContainer\", \"None\"")));
        }
        if m.mount_propagation.as_deref() == Some("Bidirectional") && !c.security_context.as_ref().and_then(|s| s.privileged).unwrap_or(false) {
            errs.push(FieldError::new(&format!("{mf}.mountPropagation"), "Forbidden: Bidirectional mount propagation is available only to privileged containers"));
        }
    }

    let probes = [("livenessProbe", &c.liveness_probe), ("readinessProbe", &c.readiness_probe), ("startupProbe", &c.startup_probe)];
    for (field, probe) in probes {
        let Some(p) = probe else { continue };
        let pf = format!("{f}.{field}");
        if init && !sidecar {
            errs.push(FieldError::new(&pf, "Forbidden: may not be set for init containers without restartPolicy=Always"));
            continue;
        }
        validate_probe(p, &pf, field != "readinessProbe", errs);
    }
    if let Some(l) = &c.lifecycle {
        if init && !sidecar && (l.post_start.is_some() || l.pre_stop.is_some()) {
            errs.push(FieldError::new(&format!("{f}.lifecycle"), "Forbidden: may not be set for init containers without restartPolicy=Always"));
        }
        for (field, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = h {
                validate_handler(h, &format!("{f}.lifecycle.{field}"), errs);
            }
        }
    }
}

fn validate_handler(h: &LifecycleHandler, f: &str, errs: &mut Vec<FieldError>) {
    let n = [h.exec.is_some(), h.http_get.is_some(), h.tcp_socket.is_some(), h.sleep.is_some()].iter().filter(|b| **b).count();
    if n != 1 {
        errs.push(FieldError::new(f, "Required value: must specify exactly one handler type"));
    }
    if let Some(s) = &h.sleep
        && s.seconds < 0
    {
        errs.push(FieldError::new(&format!("{f}.sleep.seconds"), "Invalid value: must be greater than or equal to 0"));
    }
}

fn validate_probe(p: &Probe, f: &str, success_must_be_one: bool, errs: &mut Vec<FieldError>) {
    let n = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()].iter().filter(|b| **b).count();
    if n != 1 {
        errs.push(FieldError::new(f, "Required value: must specify exactly one handler type"));
    }
    non_negative(p.initial_delay_seconds.map(i64::from), &format!("{f}.initialDelaySeconds"), errs);
    for (name, v) in [
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if let Some(v) = v
            && v < 1
        {
            errs.push(FieldError::new(&format!("{f}.{name}"), format!("Invalid value: {v}: must be greater than or equal to 1")));
        }
    }
    if success_must_be_one && p.success_threshold.is_some_and(|s| s != 1) {
        errs.push(FieldError::new(&format!("{f}.successThreshold"), "Invalid value: must be 1"));
    }
    if !success_must_be_one && p.termination_grace_period_seconds.is_some() {
        errs.push(FieldError::new(&format!("{f}.terminationGracePeriodSeconds"), "Invalid value: must not be set for readinessProbes"));
    }
    if let Some(g) = p.termination_grace_period_seconds
        && g < 1
    {
        errs.push(FieldError::new(&format!("{f}.terminationGracePeriodSeconds"), format!("Invalid value: {g}: must be greater than 0")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let mut e = vec![];
        dns_label("web-1", "f", &mut e);
        dns_subdomain("a.b-c.d", "f", &mut e);
        label_key("app.kubernetes.io/name", "f", &mut e);
        label_value("", "f", &mut e);
        assert!(e.is_empty(), "{e:?}");
        dns_label("-x", "f", &mut e);
        dns_label("X", "f", &mut e);
        dns_subdomain("a..b", "f", &mut e);
        label_key("/x", "f", &mut e);
        label_value("-v", "f", &mut e);
        assert_eq!(e.len(), 5);
    }
}
