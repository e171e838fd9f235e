//! The apiserver's own defaulting of a Pod and its QoS class, written from
//! kube-apiserver v1.34 (`pkg/apis/core/v1/defaults.go`, the generated
//! defaulters, `GetPodQOS`) on the JSON the API stores. It shares no code
//! with nodelet: nodelet applies the same defaults to static pods, and a bug
//! there must not be copied here (tests/control_plane.rs compares the two on
//! a table of pods).
//!
//! Left out: the round-up of quantities to milli precision
//! (`SetDefaults_ResourceList`) and the defaults of volume plugins nodelet
//! does not run (iSCSI, RBD, Azure disk, ScaleIO).

use serde_json::{Map, Value, json};

/// Sets `v[key]` to `default` when it is absent, null or Go's zero value
/// (the defaulters test `== ""` / `== 0` / `== nil`).
fn zero_default(v: &mut Value, key: &str, default: Value) {
    let zero = match &v[key] {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    };
    if zero && let Some(o) = v.as_object_mut() {
        o.insert(key.into(), default);
    }
}

/// Sets `v[key]` when it is absent (a pointer field: an explicit zero stays).
fn nil_default(v: &mut Value, key: &str, default: Value) {
    if v[key].is_null()
        && let Some(o) = v.as_object_mut()
    {
        o.insert(key.into(), default);
    }
}

fn items<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}

/// The image's tag as the apiserver's `parsers.ParseImageName` reads it:
/// "latest" when the reference has neither a tag nor a digest, "" when it
/// has only a digest or does not parse.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // A colon after the last slash starts the tag; one before it is a
    // registry's port.
    let (repository, tag) = match name.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((l, t)) => (format!("{head}/{l}"), Some(t)),
            None => (name.to_string(), None),
        },
        None => match name.split_once(':') {
            Some((l, t)) => (l.to_string(), Some(t)),
            None => (name.to_string(), None),
        },
    };
    // The path (after a registry host, which has a dot or a port or is
    // localhost) must be lower case, and a reference must name something.
    let path = match repository.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => repository.as_str(),
    };
    if path.is_empty() || path.chars().any(|c| c.is_ascii_uppercase()) {
        return "";
    }
    match tag {
        Some(t) => t,
        None if digest.is_some() => "",
        None => "latest",
    }
}

/// `SetDefaults_Container`: Always for the tag "latest" (which an untagged
/// reference gets), IfNotPresent for any other tag and for a digest alone.
pub fn pull_policy(image: &str) -> &'static str {
    if image_tag(image) == "latest" { "Always" } else { "IfNotPresent" }
}

fn http_get(h: &mut Value) {
    zero_default(h, "path", json!("/"));
    zero_default(h, "scheme", json!("HTTP"));
}

fn handler(h: &mut Value) {
    if let Some(g) = h.get_mut("httpGet").filter(|g| g.is_object()) {
        http_get(g);
    }
}

fn probe(p: &mut Value) {
    zero_default(p, "timeoutSeconds", json!(1));
    zero_default(p, "periodSeconds", json!(10));
    zero_default(p, "successThreshold", json!(1));
    zero_default(p, "failureThreshold", json!(3));
    handler(p);
    if let Some(g) = p.get_mut("grpc").filter(|g| g.is_object()) {
        nil_default(g, "service", json!(""));
    }
}

/// The defaults of a container of any kind (app, init, ephemeral).
fn container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or("").to_string();
    zero_default(c, "imagePullPolicy", json!(pull_policy(&image)));
    zero_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    zero_default(c, "terminationMessagePolicy", json!("File"));
    for p in items(c, "ports") {
        zero_default(p, "protocol", json!("TCP"));
    }
    for kind in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(kind).filter(|p| p.is_object()) {
            probe(p);
        }
    }
    if let Some(l) = c.get_mut("lifecycle").filter(|l| l.is_object()) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = l.get_mut(hook).filter(|h| h.is_object()) {
                handler(h);
            }
        }
    }
    for e in items(c, "env") {
        if let Some(f) = e.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef")).filter(|f| f.is_object()) {
            zero_default(f, "apiVersion", json!("v1"));
        }
    }
}

/// `SetDefaults_Pod`'s part for one regular container or sidecar: requests
/// from limits, then (InPlacePodVerticalScaling, on by default) a
/// NotRequired resize policy for cpu and memory when either is set.
fn requests_and_resize(c: &mut Value, resize: bool) {
    if let Some(limits) = c["resources"]["limits"].as_object().cloned() {
        let requests = &mut c["resources"]["requests"];
        if !requests.is_object() {
            *requests = Value::Object(Map::new());
        }
        let requests = requests.as_object_mut().expect("an object");
        for (k, q) in limits {
            requests.entry(k).or_insert(q);
        }
    }
    if !resize || !c["resources"]["requests"].is_object() {
        return;
    }
    let given: Vec<String> = c["resizePolicy"].as_array().into_iter().flatten().filter_map(|p| p["resourceName"].as_str().map(String::from)).collect();
    for r in ["cpu", "memory"] {
        let set = !c["resources"]["requests"][r].is_null() || !c["resources"]["limits"][r].is_null();
        if set && !given.iter().any(|g| g == r) {
            if !c["resizePolicy"].is_array() {
                c["resizePolicy"] = json!([]);
            }
            c["resizePolicy"].as_array_mut().expect("an array").push(json!({"resourceName": r, "restartPolicy": "NotRequired"}));
        }
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath", "emptyDir", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "secret", "nfs", "iscsi", "glusterfs",
    "persistentVolumeClaim", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "downwardAPI", "fc", "azureFile",
    "configMap", "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "projected", "portworxVolume",
    "scaleIO", "storageos", "csi", "ephemeral", "image",
];

fn volume(v: &mut Value) {
    if !VOLUME_SOURCES.iter().any(|s| !v[*s].is_null()) {
        v["emptyDir"] = json!({});
    }
    for s in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(s).filter(|x| x.is_object()) {
            nil_default(src, "defaultMode", json!(420));
        }
    }
    if let Some(h) = v.get_mut("hostPath").filter(|x| x.is_object()) {
        nil_default(h, "type", json!(""));
    }
    let field_refs = |items: &mut Value| {
        for i in items.as_array_mut().into_iter().flatten() {
            if let Some(f) = i.get_mut("fieldRef").filter(|f| f.is_object()) {
                zero_default(f, "apiVersion", json!("v1"));
            }
        }
    };
    if let Some(items) = v.get_mut("downwardAPI").and_then(|d| d.get_mut("items")) {
        field_refs(items);
    }
    if let Some(sources) = v.get_mut("projected").and_then(|p| p.get_mut("sources")).and_then(Value::as_array_mut) {
        for s in sources {
            if let Some(t) = s.get_mut("serviceAccountToken").filter(|t| t.is_object()) {
                nil_default(t, "expirationSeconds", json!(3600));
            }
            if let Some(items) = s.get_mut("downwardAPI").and_then(|d| d.get_mut("items")) {
                field_refs(items);
            }
        }
    }
}

/// Every default the apiserver gives a new Pod (v1.34 with its default
/// feature gates). The pod's namespace comes from the request, not here.
pub fn pod(p: &mut Value) {
    if !p["spec"].is_object() {
        p["spec"] = json!({});
    }
    let spec = &mut p["spec"];
    zero_default(spec, "dnsPolicy", json!("ClusterFirst"));
    zero_default(spec, "restartPolicy", json!("Always"));
    nil_default(spec, "securityContext", json!({}));
    nil_default(spec, "terminationGracePeriodSeconds", json!(30));
    zero_default(spec, "schedulerName", json!("default-scheduler"));
    nil_default(spec, "enableServiceLinks", json!(true));
    let host_network = spec["hostNetwork"] == json!(true);
    for list in ["initContainers", "containers"] {
        for c in items(spec, list) {
            container(c);
            // Only regular containers and sidecars are resized in place.
            let resizable = list == "containers" || c["restartPolicy"] == "Always";
            requests_and_resize(c, resizable);
            if host_network {
                for port in items(c, "ports") {
                    if port["hostPort"].as_i64().unwrap_or(0) == 0 {
                        port["hostPort"] = port["containerPort"].clone();
                    }
                }
            }
        }
    }
    for e in items(spec, "ephemeralContainers") {
        container(e);
    }
    for v in items(spec, "volumes") {
        volume(v);
    }
    pod_requests(spec);
}

/// PodLevelResources (beta, on in v1.34): with pod-level limits, the
/// pod-level requests of cpu, memory and hugepages default to the
/// containers' effective requests, else to the pod-level limits.
fn pod_requests(spec: &mut Value) {
    let Some(limits) = spec["resources"]["limits"].as_object().filter(|l| !l.is_empty()).cloned() else { return };
    let supported = |k: &str| k == "cpu" || k == "memory" || k.starts_with("hugepages-");
    let mut requests = spec["resources"]["requests"].as_object().cloned().unwrap_or_default();
    let effective = effective_requests(spec);
    for (k, milli) in effective {
        if supported(&k) && !requests.contains_key(&k) {
            requests.insert(k, json!(format_milli(milli)));
        }
    }
    for (k, q) in limits {
        if supported(&k) && !requests.contains_key(&k) {
            requests.insert(k, q);
        }
    }
    if !requests.is_empty() {
        spec["resources"]["requests"] = Value::Object(requests);
    }
}

fn format_milli(m: i128) -> String {
    if m % 1000 == 0 { format!("{}", m / 1000) } else { format!("{m}m") }
}

/// The pod's effective requests (in milli-units): the sum over app
/// containers and sidecars, or the largest init container's need at its
/// turn (with the sidecars started before it), whichever is larger.
fn effective_requests(spec: &Value) -> std::collections::BTreeMap<String, i128> {
    use std::collections::BTreeMap;
    let of = |c: &Value| -> BTreeMap<String, i128> {
        c["resources"]["requests"].as_object().into_iter().flatten().filter_map(|(k, q)| Some((k.clone(), milli(q.as_str()?)?))).collect()
    };
    let add = |into: &mut BTreeMap<String, i128>, from: &BTreeMap<String, i128>| {
        for (k, v) in from {
            *into.entry(k.clone()).or_default() += v;
        }
    };
    let mut sum = BTreeMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        add(&mut sum, &of(c));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_max: BTreeMap<String, i128> = BTreeMap::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let own = of(c);
        if c["restartPolicy"] == "Always" {
            add(&mut sum, &own);
            add(&mut sidecars, &own);
        } else {
            let mut at_turn = sidecars.clone();
            add(&mut at_turn, &own);
            for (k, v) in at_turn {
                let e = init_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }
    for (k, v) in init_max {
        let e = sum.entry(k).or_default();
        *e = (*e).max(v);
    }
    sum
}

/// A quantity in milli-units (`"1Gi"`, `"500m"`, `"1.5"`, `"1e3"`); None
/// for what does not parse.
pub fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (factor_num, factor_den): (i128, i128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        "m" => (1, 1),
        "k" => (1_000_000, 1),
        "M" => (1_000_000_000, 1),
        "G" => (1_000_000_000_000, 1),
        "T" => (1_000_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            if exp >= -3 { (1000 * 10i128.checked_pow(u32::try_from(exp + 3).ok()?)? / 1000, 1) } else { (1, 10i128.checked_pow(u32::try_from(-exp - 3).ok()?)?) }
        }
        _ => return None,
    };
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let scale = 10i128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let mantissa: i128 = format!("{whole}{frac}").parse().ok()?;
    // Round up, as the apiserver does to milli precision.
    let num = mantissa.checked_mul(factor_num)?;
    let den = scale.checked_mul(factor_den)?;
    let v = (num + den - 1) / den;
    Some(if negative { -v } else { v })
}

/// `GetPodQOS` (v1.34): from pod-level cpu and memory when the pod sets
/// them, else from every container's; BestEffort without any nonzero
/// request or limit; Guaranteed when every container (or the pod) limits
/// both cpu and memory and the requests equal the limits; else Burstable.
pub fn qos(spec: &Value) -> &'static str {
    let compute = |r: &Value, part: &str| -> std::collections::BTreeMap<String, i128> {
        r[part]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k == "cpu" || *k == "memory")
            .filter_map(|(k, q)| Some((k.clone(), milli(q.as_str()?)?)))
            .filter(|(_, v)| *v > 0)
            .collect()
    };
    let pod_level = &spec["resources"];
    if !compute(pod_level, "requests").is_empty() || !compute(pod_level, "limits").is_empty() {
        let requests = compute(pod_level, "requests");
        let limits = compute(pod_level, "limits");
        let guaranteed = limits.len() == 2 && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) && requests.len() == limits.len();
        return if guaranteed { "Guaranteed" } else { "Burstable" };
    }
    let mut requests = std::collections::BTreeMap::<String, i128>::new();
    let mut limits = std::collections::BTreeMap::<String, i128>::new();
    let mut guaranteed = true;
    for c in spec["initContainers"].as_array().into_iter().flatten().chain(spec["containers"].as_array().into_iter().flatten()) {
        for (k, v) in compute(&c["resources"], "requests") {
            *requests.entry(k).or_default() += v;
        }
        let own = compute(&c["resources"], "limits");
        if own.len() < 2 {
            guaranteed = false;
        }
        for (k, v) in own {
            *limits.entry(k).or_default() += v;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
