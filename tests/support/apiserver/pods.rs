//! What a real apiserver does to pods beyond storing them: admission on
//! create (defaults, ServiceAccount, DefaultTolerationSeconds), the update
//! validation that keeps a pod's spec immutable, and the
//! `pods/ephemeralcontainers` subresource `kubectl debug` uses.

#![allow(clippy::result_large_err)]

use axum::body::Body;
use http::Response;
use serde_json::{Value, json};

use super::handlers::{random_suffix, status};

pub fn admit(obj: &mut Value) -> Result<(), Response<Body>> {
    // The apiserver's defaulting (its own, not nodelet's), then its
    // admission plugins on the typed pod.
    super::defaults::pod(obj);
    let mut pod: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(obj.clone()).map_err(|e| status(400, "BadRequest", &format!("invalid Pod: {e}")))?;
    let spec = pod.spec.get_or_insert_with(Default::default);
    // A real apiserver stores an omitted resourceFieldRef divisor as "0"
    // (Go's zero Quantity is not omitted): env, downwardAPI and projected.
    let zero = || Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("0".into()));
    for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        for e in c.env.iter_mut().flatten() {
            if let Some(r) = e.value_from.as_mut().and_then(|v| v.resource_field_ref.as_mut()) {
                r.divisor = r.divisor.take().or_else(zero);
            }
        }
    }
    for v in spec.volumes.iter_mut().flatten() {
        let downward = v.downward_api.iter_mut().flat_map(|d| d.items.iter_mut().flatten());
        let projected = v.projected.iter_mut().flat_map(|p| p.sources.iter_mut().flatten()).flat_map(|s| s.downward_api.iter_mut().flat_map(|d| d.items.iter_mut().flatten()));
        for item in downward.chain(projected) {
            if let Some(r) = item.resource_field_ref.as_mut() {
                r.divisor = r.divisor.take().or_else(zero);
            }
        }
    }
    // ServiceAccount admission (a mirror pod is left as the node sent it:
    // check_service_account refused what it may not have).
    let mirror = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(MIRROR));
    let spec = pod.spec.get_or_insert_with(Default::default);
    if !mirror && spec.service_account_name.as_deref().is_none_or(str::is_empty) {
        spec.service_account_name = Some("default".into());
    }
    // DefaultTolerationSeconds admission.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
            tolerations.push(k8s_openapi::api::core::v1::Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                ..Default::default()
            });
        }
    }
    let automount = !mirror && spec.automount_service_account_token != Some(false);
    if automount {
        let name = format!("kube-api-access-{}", random_suffix(5));
        let vol: k8s_openapi::api::core::v1::Volume = serde_json::from_value(json!({
            "name": name,
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}
        }))
        .expect("a valid volume");
        spec.volumes.get_or_insert_with(Vec::new).push(vol);
        for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
            c.volume_mounts.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::VolumeMount {
                name: name.clone(),
                mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    let mut v = serde_json::to_value(&pod).map_err(|e| status(500, "InternalError", &e.to_string()))?;
    if v["status"].is_null() {
        let qos = super::defaults::qos(&v["spec"]);
        v["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
    *obj = v;
    Ok(())
}


const MIRROR: &str = "kubernetes.io/config.mirror";

fn forbidden(pod: &Value, why: &str) -> Response<Body> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    status(403, "Forbidden", &format!("pods \"{name}\" is forbidden: {why}"))
}

/// The Priority admission plugin: the pod's priority and preemption policy
/// come from its PriorityClass (or the cluster's global default class, or
/// 0); a class that does not exist, or a priority the pod sets itself that
/// differs from its class's, is refused.
pub fn admit_priority(store: &super::store::Store, obj: &mut Value) -> Result<(), Response<Body>> {
    const KEY: &str = "priorityclasses.scheduling.k8s.io";
    let name = obj["spec"]["priorityClassName"].as_str().unwrap_or("").to_string();
    let class = if name.is_empty() {
        store.list(KEY, None).into_iter().find(|c| c["globalDefault"] == json!(true))
    } else {
        match store.get(KEY, "", &name) {
            Some(c) => Some(c.clone()),
            None => return Err(forbidden(obj, &format!("no PriorityClass with name {name} was found"))),
        }
    };
    let value = class.as_ref().and_then(|c| c["value"].as_i64()).unwrap_or(0);
    let policy = class.as_ref().and_then(|c| c["preemptionPolicy"].as_str()).unwrap_or("PreemptLowerPriority").to_string();
    if let Some(given) = obj["spec"]["priority"].as_i64()
        && given != value
    {
        return Err(forbidden(obj, &format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name")));
    }
    if let Some(given) = obj["spec"]["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(forbidden(obj, &format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name")));
    }
    if let Some(c) = &class {
        obj["spec"]["priorityClassName"] = c["metadata"]["name"].clone();
    }
    obj["spec"]["priority"] = json!(value);
    obj["spec"]["preemptionPolicy"] = json!(policy);
    Ok(())
}

/// ServiceAccount admission's checks: a pod's ServiceAccount must exist; a
/// mirror pod may name none and reference no Secret or token.
pub fn check_service_account(store: &super::store::Store, obj: &Value) -> Result<(), Response<Body>> {
    let spec = &obj["spec"];
    if obj["metadata"]["annotations"][MIRROR].is_string() {
        if spec["serviceAccountName"].as_str().is_some_and(|s| !s.is_empty()) {
            return Err(forbidden(obj, "a mirror pod may not reference service accounts"));
        }
        let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
        let secret_env = ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|l| spec[*l].as_array().cloned().unwrap_or_default()).any(|c| {
            c["env"].as_array().into_iter().flatten().any(|e| !e["valueFrom"]["secretKeyRef"].is_null())
                || c["envFrom"].as_array().into_iter().flatten().any(|e| !e["secretRef"].is_null())
        });
        let secrets = secret_env
            || !spec["imagePullSecrets"].as_array().is_none_or(Vec::is_empty)
            || volumes.iter().any(|v| !v["secret"].is_null() || v["projected"]["sources"].as_array().into_iter().flatten().any(|s| !s["secret"].is_null()));
        if secrets {
            return Err(forbidden(obj, "a mirror pod may not reference secrets"));
        }
        if volumes.iter().any(|v| v["projected"]["sources"].as_array().into_iter().flatten().any(|s| !s["serviceAccountToken"].is_null())) {
            return Err(forbidden(obj, "a mirror pod may not use ServiceAccountToken volume projections"));
        }
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
    let sa = spec["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    if store.get("serviceaccounts", ns, sa).is_none() {
        return Err(forbidden(obj, &format!("error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found")));
    }
    Ok(())
}

fn invalid(pod: &Value, detail: &str) -> Response<Body> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    status(422, "Invalid", &format!("Pod \"{name}\" is invalid: {detail}"))
}

const MAY_CHANGE: &str = "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// ValidatePodUpdate: through the main resource a pod's spec keeps all but
/// its container images, activeDeadlineSeconds, added tolerations and the
/// grace period. Ephemeral containers in particular only come through
/// their subresource.
pub fn validate_update(current: &Value, new: &Value) -> Result<(), Response<Body>> {
    let strip = |spec: &Value| {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("image");
                }
            }
        }
        if let Some(o) = spec.as_object_mut() {
            for f in ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"] {
                o.remove(f);
            }
        }
        spec
    };
    if strip(&current["spec"]) != strip(&new["spec"]) {
        return Err(invalid(current, MAY_CHANGE));
    }
    let old = current["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let now = new["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    if old.iter().any(|t| !now.contains(t)) {
        return Err(invalid(current, MAY_CHANGE));
    }
    Ok(())
}

/// The `pods/resize` subresource (in-place resize, GA in 1.35): the pod as
/// stored with only the cpu and memory resources of its app containers and
/// sidecars taken from `new`, as ValidatePodResize allows: no other field,
/// no other resource, no non-restartable init container, and the QoS class
/// unchanged. A change bumps `metadata.generation`.
pub fn resize_update(current: &Value, new: &Value) -> Result<Value, Response<Body>> {
    if current["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Err(invalid(current, "spec: Forbidden: static pods cannot be resized"));
    }
    let mut merged = current.clone();
    for list in ["containers", "initContainers"] {
        let Some(items) = merged["spec"][list].as_array_mut() else { continue };
        for (i, c) in items.iter_mut().enumerate() {
            let Some(want) = new["spec"][list].as_array().and_then(|l| l.iter().find(|n| n["name"] == c["name"])) else { continue };
            if want["resources"] == c["resources"] {
                continue;
            }
            if list == "initContainers" && c["restartPolicy"] != "Always" {
                return Err(invalid(current, &format!("spec.initContainers[{i}].resources: Forbidden: resize is not supported for non-restartable init containers")));
            }
            for part in ["requests", "limits"] {
                let names = |v: &Value| v[part].as_object().map(|m| m.iter().filter(|(k, _)| *k != "cpu" && *k != "memory").map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()).unwrap_or_default();
                if names(&c["resources"]) != names(&want["resources"]) {
                    return Err(invalid(current, &format!("spec.{list}[{i}].resources.{part}: Forbidden: only cpu and memory resources are mutable")));
                }
            }
            c["resources"] = want["resources"].clone();
        }
    }
    // Anything else in the spec is not the resize's to change.
    let strip = |spec: &Value| {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if let Some(o) = c.as_object_mut() {
                    o.remove("resources");
                }
            }
        }
        spec
    };
    if !new["spec"].is_null() && strip(&new["spec"]) != strip(&current["spec"]) {
        return Err(invalid(current, "spec: Forbidden: pod resize may not change fields other than cpu and memory"));
    }
    if super::defaults::qos(&current["spec"]) != super::defaults::qos(&merged["spec"]) {
        return Err(invalid(current, "spec: Forbidden: Pod QOS Class may not change as a result of resizing"));
    }
    if merged != *current {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        merged["metadata"]["generation"] = json!(generation + 1);
    }
    Ok(merged)
}

/// The `pods/ephemeralcontainers` subresource: the pod as stored with only
/// its ephemeral containers taken from `new`. Existing ones may not change
/// or go; new ones are validated as the apiserver does, defaulted, and get
/// the ServiceAccount token mount the pod's other containers have.
pub fn ephemeral_update(current: &Value, new: &Value) -> Result<Value, Response<Body>> {
    let old_list = current["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    let mut new_list = new["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| current["spec"][*l].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut names: Vec<String> = regular.iter().map(|s| s.to_string()).collect();
    let token_mount = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| current["spec"][*l].as_array().into_iter().flatten())
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        .cloned();
    for (i, e) in new_list.iter_mut().enumerate() {
        let f = format!("spec.ephemeralContainers[{i}]");
        let name = e["name"].as_str().unwrap_or("").to_string();
        if let Some(old) = old_list.iter().find(|o| o["name"] == name.as_str()) {
            if old != e {
                let mut defaulted = e.clone();
                default_ephemeral(&mut defaulted, token_mount.as_ref());
                if *old != defaulted {
                    return Err(invalid(current, &format!("spec.ephemeralContainers: Forbidden: existing ephemeral containers \"{name}\" may not be changed")));
                }
                *e = old.clone();
            }
            names.push(name);
            continue;
        }
        if name.is_empty() {
            return Err(invalid(current, &format!("{f}.name: Required value")));
        }
        if names.contains(&name) {
            return Err(invalid(current, &format!("{f}.name: Duplicate value: \"{name}\"")));
        }
        names.push(name.clone());
        if e["image"].as_str().is_none_or(str::is_empty) {
            return Err(invalid(current, &format!("{f}.image: Required value")));
        }
        for forbidden in ["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources"] {
            if !e[forbidden].is_null() {
                return Err(invalid(current, &format!("{f}.{forbidden}: Forbidden: cannot be set for an Ephemeral Container")));
            }
        }
        if let Some(target) = e["targetContainerName"].as_str()
            && !regular.contains(&target)
        {
            return Err(invalid(current, &format!("{f}.targetContainerName: Not found: \"{target}\"")));
        }
        default_ephemeral(e, token_mount.as_ref());
    }
    if let Some(gone) = old_list.iter().find(|o| !new_list.iter().any(|e| e["name"] == o["name"])) {
        return Err(invalid(current, &format!("spec.ephemeralContainers: Forbidden: existing ephemeral containers \"{}\" may not be removed", gone["name"].as_str().unwrap_or(""))));
    }
    let mut merged = current.clone();
    merged["spec"]["ephemeralContainers"] = Value::Array(new_list);
    Ok(merged)
}

/// The API defaults of an ephemeral container, and (from ServiceAccount
/// admission) the pod's token mount.
fn default_ephemeral(e: &mut Value, token_mount: Option<&Value>) {
    if e["imagePullPolicy"].as_str().is_none_or(str::is_empty) {
        e["imagePullPolicy"] = json!(super::defaults::pull_policy(e["image"].as_str().unwrap_or("")));
    }
    if e["terminationMessagePath"].is_null() {
        e["terminationMessagePath"] = json!("/dev/termination-log");
    }
    if e["terminationMessagePolicy"].is_null() {
        e["terminationMessagePolicy"] = json!("File");
    }
    if let Some(m) = token_mount {
        let mounts = e["volumeMounts"].as_array().cloned().unwrap_or_default();
        if !mounts.iter().any(|x| x["mountPath"] == m["mountPath"]) {
            let mut mounts = mounts;
            mounts.push(m.clone());
            e["volumeMounts"] = Value::Array(mounts);
        }
    }
}
