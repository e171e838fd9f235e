//! The control plane's controllers that a node lives with, each as
//! kube-controller-manager runs it (the parts a node can observe):
//!
//! - the **CSR approver** (`csrapproving`): recognises a kubelet client CSR
//!   (`nodeclient`, and `selfnodeclient` when the requester is the subject)
//!   only when it passes the signer's validation, and approves it when a
//!   SubjectAccessReview of the requester for `certificatesigningrequests/<that>`
//!   allows it (kubeadm's bindings grant nodeclient to bootstrappers and
//!   selfnodeclient to nodes); anything else stays Pending;
//! - the **signer** (`csrsigning`): validates an approved CSR by its signer's
//!   rules and signs it, or fails it with reason `SignerValidationFailure` and
//!   the validation's message;
//! - the **node lifecycle controller**: a node whose Lease and status
//!   heartbeat have not moved for `node-monitor-grace-period` (40 s; 60 s for
//!   a node that never posted Ready) gets its conditions set to Unknown
//!   ("Kubelet stopped posting node status."), its pods marked NotReady, and the
//!   `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute);
//!   Ready False gives the `not-ready` taints; Ready True removes both;
//! - the **taint manager**: a pod on a node with NoExecute taints it does not
//!   tolerate is deleted at once; one that tolerates them for
//!   `tolerationSeconds` is deleted that long after the taint was added, unless
//!   the taint goes first.
//!
//! - the **EndpointSlice controller**: slices for Services with a selector,
//!   from the pods' IPs and Ready conditions as the node posts them;
//! - the **PersistentVolume controller**'s binding of claims to volumes;
//! - the **disruption controller**: PodDisruptionBudget status (the
//!   eviction subresource in handlers.rs checks it);
//! - the **ServiceAccount controller** and **root CA publisher**: the
//!   `default` ServiceAccount and `kube-root-ca.crt` in every namespace;
//! - for DRA (resource.k8s.io/v1), the **resourceclaim controller** (a
//!   claim `<pod>-<claim>-<5 random>` owned by the pod for each template
//!   claim, named in the pod's `status.resourceClaimStatuses`; a pod that is
//!   done or gone taken out of `reservedFor`; a generated claim deleted with
//!   its pod, a named claim no pod reserves deallocated) and the
//!   **scheduler's allocation** for pods bound to a node: each request's
//!   `exactly` count (or `All`) of devices from the node's ResourceSlices of
//!   the driver its DeviceClass selects (`device.driver == "..."`, the one
//!   CEL form modelled), devices other claims hold left alone; the claim
//!   then reserved for the pod. Requests' own selectors, constraints,
//!   `firstAvailable` and admin access are not modelled.
//!
//! They run on the store itself, so they keep going while the apiserver is
//! "stopped" for the node (as the control plane does while a node is cut off).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::authz;
use super::handlers::{Identity, State, mark_deleted, now};
use super::pki;
use super::store::Store;

const CSRS: &str = "certificatesigningrequests.certificates.k8s.io";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn usages(csr: &Value) -> Vec<String> {
    serde_json::from_value(csr["spec"]["usages"].clone()).unwrap_or_default()
}

fn request_info(csr: &Value) -> Option<pki::CsrInfo> {
    let der_pem = csr["spec"]["request"].as_str().and_then(base64_decode)?;
    pki::csr_info(&String::from_utf8_lossy(&der_pem))
}

fn has_condition(csr: &Value, t: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == t)
}

/// The approver, on a new CSR: see the module doc.
pub fn approve(state: &Arc<State>, name: &str) {
    if !*state.auto_approve.lock().unwrap() {
        return;
    }
    let mut store = state.store.lock().unwrap();
    let Some(mut csr) = store.get(CSRS, "", name).cloned() else { return };
    if !csr["status"]["certificate"].is_null() || has_condition(&csr, "Approved") || has_condition(&csr, "Denied") {
        return;
    }
    let Some(info) = request_info(&csr) else { return };
    let user = csr["spec"]["username"].as_str().unwrap_or("").to_string();
    let groups: Vec<String> = serde_json::from_value(csr["spec"]["groups"].clone()).unwrap_or_default();
    let is_node_client =
        csr["spec"]["signerName"] == CLIENT_SIGNER && pki::validate_kubelet_client(&info, &usages(&csr)).is_ok();
    let recognisers = [
        (is_node_client && info.cn == user, "selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview."),
        (is_node_client, "nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."),
    ];
    let requester = Identity { user, groups };
    for (recognised, sub, message) in recognisers {
        if !recognised {
            continue;
        }
        let a = authz::Attrs {
            verb: "create".into(),
            group: "certificates.k8s.io".into(),
            resource: "certificatesigningrequests".into(),
            sub: Some(sub.into()),
            ns: None,
            name: None,
            fields: None,
        };
        if authz::authorize(&store, &requester, &a) == authz::Decision::Allow {
            csr["status"]["conditions"] = json!([{"type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": message, "lastUpdateTime": now()}]);
            store.put(CSRS, "", name, csr);
            drop(store);
            spawn_signer(state.clone(), name.to_string());
            return;
        }
    }
}

/// The signer, shortly after an approval: see the module doc.
pub fn spawn_signer(state: Arc<State>, name: String) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut store = state.store.lock().unwrap();
        let Some(mut csr) = store.get(CSRS, "", &name).cloned() else { return };
        if !has_condition(&csr, "Approved") || has_condition(&csr, "Failed") || !csr["status"]["certificate"].is_null() {
            return;
        }
        let signer = csr["spec"]["signerName"].as_str().unwrap_or("").to_string();
        let validate: fn(&pki::CsrInfo, &[String]) -> Result<(), String> = match signer.as_str() {
            CLIENT_SIGNER => pki::validate_kubelet_client,
            SERVING_SIGNER => pki::validate_kubelet_serving,
            // No controller signs for other signers here.
            _ => return,
        };
        let usages = usages(&csr);
        let request = csr["spec"]["request"].as_str().and_then(base64_decode).unwrap_or_default();
        let request = String::from_utf8_lossy(&request).to_string();
        let outcome = pki::csr_info(&request)
            .ok_or_else(|| format!("unable to parse csr {name:?}"))
            .and_then(|info| validate(&info, &usages))
            .and_then(|()| state.ca.sign_csr(&request, &usages, *state.cert_lifetime.lock().unwrap()));
        match outcome {
            Ok(pem) => csr["status"]["certificate"] = Value::String(base64_encode(pem.as_bytes())),
            Err(e) => {
                let cond = json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": e, "lastUpdateTime": now()});
                match csr["status"]["conditions"].as_array_mut() {
                    Some(c) => c.push(cond),
                    None => csr["status"]["conditions"] = json!([cond]),
                }
            }
        }
        store.put(CSRS, "", &name, csr);
    });
}

/// What the node lifecycle controller remembers of a node.
struct NodeHealth {
    /// When the controller last saw the node's heartbeat move.
    probe: Instant,
    heartbeat: String,
    renew: String,
    ready: String,
}

/// Settings and memory of the node lifecycle controller and taint manager.
pub struct Lifecycle {
    pub enabled: bool,
    /// The taint-eviction controller (kube-controller-manager can run
    /// without it: `--controllers=*,-taint-eviction-controller`).
    pub taint_eviction: bool,
    /// `--node-monitor-grace-period`.
    pub grace: Duration,
    /// `--node-startup-grace-period`: for a node that never posted Ready.
    pub startup_grace: Duration,
    nodes: HashMap<String, NodeHealth>,
    /// Pods the taint manager evicted: "namespace/name".
    pub evicted: Vec<String>,
    /// Times the controller set a node's conditions to Unknown.
    pub marked_unknown: Vec<String>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            enabled: true,
            taint_eviction: true,
            grace: Duration::from_secs(40),
            startup_grace: Duration::from_secs(60),
            nodes: HashMap::new(),
            evicted: Vec::new(),
            marked_unknown: Vec::new(),
        }
    }
}

/// How often the controllers look (kube-controller-manager's node monitor
/// period is 5 s; shorter here, for tests with short grace periods).
const PERIOD: Duration = Duration::from_millis(500);

/// Runs the node lifecycle controller and taint manager until aborted.
pub fn spawn(state: Arc<State>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PERIOD).await;
            namespace_defaults(&mut state.store.lock().unwrap(), &state.ca.cert_pem);
            endpoint_slices(&mut state.store.lock().unwrap());
            disruption_budgets(&mut state.store.lock().unwrap());
            bind_volumes(&mut state.store.lock().unwrap());
            ephemeral_claims(&mut state.store.lock().unwrap());
            dynamic_resources(&mut state.store.lock().unwrap());
            attach_detach(&mut state.store.lock().unwrap());
            let mut lifecycle = state.lifecycle.lock().unwrap();
            if !lifecycle.enabled {
                continue;
            }
            let mut store = state.store.lock().unwrap();
            monitor_nodes(&mut store, &mut lifecycle);
            if lifecycle.taint_eviction {
                evict_by_taints(&mut store, &mut lifecycle);
            }
        }
    })
}

/// kube-controller-manager's ServiceAccount controller and root CA
/// publisher: every namespace (not being deleted) has the `default`
/// ServiceAccount and the `kube-root-ca.crt` ConfigMap with the cluster's
/// CA, made again when deleted.
pub fn namespace_defaults(store: &mut Store, ca_pem: &str) {
    for ns in store.list("namespaces", None) {
        let Some(name) = ns["metadata"]["name"].as_str() else { continue };
        if ns["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        if store.get("serviceaccounts", name, "default").is_none() {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name, "uid": super::handlers::uid(), "creationTimestamp": super::handlers::now()}});
            store.put("serviceaccounts", name, "default", sa);
        }
        if store.get("configmaps", name, "kube-root-ca.crt").is_none() {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": name, "uid": super::handlers::uid(), "creationTimestamp": super::handlers::now(),
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": {"ca.crt": ca_pem}});
            store.put("configmaps", name, "kube-root-ca.crt", cm);
        }
    }
}

const SLICES: &str = "endpointslices.discovery.k8s.io";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    selector.iter().all(|(k, v)| pod["metadata"]["labels"][k] == *v)
}

/// A LabelSelector (matchLabels and matchExpressions) against a pod's
/// labels; an empty selector selects every pod, a null one none.
pub fn selects_pod(selector: &Value, pod: &Value) -> bool {
    if selector.is_null() {
        return false;
    }
    let labels = &pod["metadata"]["labels"];
    let by_labels = selector["matchLabels"].as_object().is_none_or(|m| selects(m, pod));
    let by_expressions = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let have = labels[key].as_str();
        match e["operator"].as_str().unwrap_or("") {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// kube-controller-manager's disruption controller, for budgets over bare
/// pods: expected pods are those selected and not being deleted, healthy
/// the Ready ones among them; `minAvailable` (a count or a percentage of
/// the expected pods) or `maxUnavailable` gives the desired healthy count,
/// and `disruptionsAllowed` is what is healthy beyond it. Evictions the
/// apiserver granted (`disruptedPods`) count as gone until the pod is.
fn disruption_budgets(store: &mut Store) {
    const KEY: &str = "poddisruptionbudgets.policy";
    for budget in store.list(KEY, None) {
        let ns = budget["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = budget["metadata"]["name"].as_str().unwrap_or("").to_string();
        let pods: Vec<Value> = store.list("pods", Some(&ns)).into_iter().filter(|p| selects_pod(&budget["spec"]["selector"], p)).collect();
        let live: Vec<&Value> = pods.iter().filter(|p| !p["metadata"]["deletionTimestamp"].is_string() && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).collect();
        let mut disrupted = budget["status"]["disruptedPods"].as_object().cloned().unwrap_or_default();
        disrupted.retain(|pod, _| live.iter().any(|p| p["metadata"]["name"] == pod.as_str()));
        let healthy = live
            .iter()
            .filter(|p| !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or("")))
            .filter(|p| p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            .count() as i64;
        let expected = live.len() as i64;
        let count = |v: &Value| -> Option<i64> {
            match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()).map(|p| (p * expected + 99) / 100),
                _ => None,
            }
        };
        let desired = match (count(&budget["spec"]["minAvailable"]), count(&budget["spec"]["maxUnavailable"])) {
            (Some(min), _) => min,
            (None, Some(max)) => (expected - max).max(0),
            (None, None) => expected,
        };
        let allowed = (healthy - desired).max(0);
        let generation = budget["metadata"]["generation"].as_i64().unwrap_or(1);
        let condition = if allowed > 0 { "True" } else { "False" };
        let old = &budget["status"]["conditions"][0];
        let since = if old["status"] == condition { old["lastTransitionTime"].as_str().map_or_else(now, String::from) } else { now() };
        let status = json!({"observedGeneration": generation, "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
            "disruptionsAllowed": allowed, "disruptedPods": disrupted,
            "conditions": [{"type": "DisruptionAllowed", "status": condition,
                "reason": if allowed > 0 { "SufficientPods" } else { "InsufficientPods" }, "message": "", "observedGeneration": generation,
                "lastTransitionTime": since}]});
        if budget["status"] != status {
            let mut updated = budget.clone();
            updated["status"] = status;
            store.put(KEY, &ns, &name, updated);
        }
    }
}

/// The ports of a Service for one pod: a named targetPort resolved against
/// the pod's container ports (a port the pod does not name is left out, as
/// the controller leaves it out).
fn endpoint_ports(svc: &Value, pod: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        let port = match &p["targetPort"] {
            Value::Number(n) => n.as_i64(),
            Value::String(name) => match name.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => pod["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .find(|cp| cp["name"] == *name && cp["protocol"].as_str().unwrap_or("TCP") == protocol)
                    .and_then(|cp| cp["containerPort"].as_i64()),
            },
            _ => p["port"].as_i64(),
        };
        let Some(port) = port else { continue };
        let mut e = json!({"port": port, "protocol": protocol, "name": p["name"].as_str().unwrap_or("")});
        if !p["appProtocol"].is_null() {
            e["appProtocol"] = p["appProtocol"].clone();
        }
        out.push(e);
    }
    out
}

/// kube-controller-manager's EndpointSlice controller for Services with a
/// selector: the pods it selects that have an IP and are not terminal, one
/// slice per IP family of the Service (`ipFamilies`; the pod's address of
/// that family from `podIPs`) and set of resolved ports, each endpoint `ready` when the pod's
/// Ready condition is True and it is not being deleted (`serving` by
/// readiness alone, `terminating` when deleted; publishNotReadyAddresses
/// makes every one ready), with the pod's node and a reference to it. A
/// selector that matches nothing leaves one empty slice. Slices of a
/// Service that is gone, or has no selector any more, are deleted. Slices
/// without the controller's managed-by label (written by hand for
/// selector-less Services) are never touched.
fn endpoint_slices(store: &mut Store) {
    let services = store.list("services", None);
    let slices = store.list(SLICES, None);
    for slice in &slices {
        if slice["metadata"]["labels"][MANAGED_BY] != CONTROLLER {
            continue;
        }
        let ns = slice["metadata"]["namespace"].as_str().unwrap_or("");
        let svc = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str().unwrap_or("");
        let has_selector = services.iter().any(|s| {
            s["metadata"]["namespace"] == ns && s["metadata"]["name"] == svc && s["spec"]["selector"].as_object().is_some_and(|m| !m.is_empty())
        });
        if !has_selector {
            let name = slice["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.remove(SLICES, ns, &name);
        }
    }
    for svc in services {
        let Some(selector) = svc["spec"]["selector"].as_object().filter(|m| !m.is_empty()) else { continue };
        if svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let publish = svc["spec"]["publishNotReadyAddresses"] == json!(true);
        // (family, resolved ports) → endpoints, in pod-name order.
        let mut groups: std::collections::BTreeMap<(String, String), (Value, Vec<Value>)> = std::collections::BTreeMap::new();
        let mut pods = store.list("pods", Some(&ns));
        pods.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
        let families: Vec<String> = match svc["spec"]["ipFamilies"].as_array() {
            Some(f) if !f.is_empty() => f.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => vec!["IPv4".to_string()],
        };
        let family_of = |ip: &str| if ip.contains(':') { "IPv6" } else { "IPv4" };
        for (family, pod) in families.iter().flat_map(|f| pods.iter().filter(|p| selects(selector, p)).map(move |p| (f, p))) {
            let phase = pod["status"]["phase"].as_str().unwrap_or("");
            let ips: Vec<&str> = match pod["status"]["podIPs"].as_array() {
                Some(list) => list.iter().filter_map(|p| p["ip"].as_str()).collect(),
                None => pod["status"]["podIP"].as_str().into_iter().collect(),
            };
            let Some(ip) = ips.into_iter().find(|ip| !ip.is_empty() && family_of(ip) == family) else { continue };
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let pod_ready = pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
            let terminating = pod["metadata"]["deletionTimestamp"].is_string();
            let serving = publish || pod_ready;
            let mut endpoint = json!({
                "addresses": [ip],
                "conditions": {"ready": serving && !terminating, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            });
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                endpoint["nodeName"] = json!(node);
                if let Some(zone) = store.get("nodes", "", node).and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str()) {
                    endpoint["zone"] = json!(zone);
                }
            }
            let ports = Value::Array(endpoint_ports(&svc, pod));
            groups.entry((family.clone(), ports.to_string())).or_insert_with(|| (ports, Vec::new())).1.push(endpoint);
        }
        for family in &families {
            if !groups.keys().any(|(f, _)| f == family) {
                groups.insert((family.clone(), String::new()), (json!([]), Vec::new()));
            }
        }
        let mut existing: Vec<Value> = slices
            .iter()
            .filter(|s| s["metadata"]["namespace"] == ns.as_str() && s["metadata"]["labels"]["kubernetes.io/service-name"] == name.as_str() && s["metadata"]["labels"][MANAGED_BY] == CONTROLLER)
            .cloned()
            .collect();
        for ((address_type, _), (ports, endpoints)) in groups {
            // Reuse the slice of this family that has these ports, else any
            // of this family left over (addressType cannot change).
            let at = existing
                .iter()
                .position(|s| s["ports"] == ports && s["addressType"] == address_type.as_str())
                .or_else(|| existing.iter().position(|s| s["addressType"] == address_type.as_str()));
            let mut slice = match at {
                Some(i) => existing.remove(i),
                None => json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{}", super::handlers::random_suffix(5)), "namespace": ns, "uid": super::handlers::uid(),
                        "creationTimestamp": now(), "generation": 1,
                        "labels": {"kubernetes.io/service-name": name, MANAGED_BY: CONTROLLER},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]}}),
            };
            let want_endpoints = Value::Array(endpoints);
            if slice["endpoints"] == want_endpoints && slice["ports"] == ports && slice["addressType"] == address_type {
                continue;
            }
            slice["endpoints"] = want_endpoints;
            slice["ports"] = ports;
            slice["addressType"] = json!(address_type);
            let slice_name = slice["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.put(SLICES, &ns, &slice_name, slice);
        }
        for extra in existing {
            let slice_name = extra["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.remove(SLICES, &ns, &slice_name);
        }
    }
}

fn claim_ref_matches(pv: &Value, claim: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    r["name"] == claim["metadata"]["name"]
        && r["namespace"] == claim["metadata"]["namespace"]
        && (r["uid"].as_str().is_none_or(str::is_empty) || r["uid"] == claim["metadata"]["uid"])
}

/// Whether an unclaimed volume can serve a claim (`checkVolumeSatisfyClaim`
/// and the matcher's filters): the same class, every access mode the claim
/// asks for, the same volume mode, at least the requested size, and the
/// claim's label selector.
fn satisfies(pv: &Value, claim: &Value) -> bool {
    let class = |v: &Value| v.as_str().unwrap_or("").to_string();
    let modes: Vec<&Value> = pv["spec"]["accessModes"].as_array().into_iter().flatten().collect();
    let mode = |v: &Value| v.as_str().unwrap_or("Filesystem").to_string();
    let size = |v: &Value| v.as_str().and_then(super::defaults::milli).unwrap_or(0);
    class(&pv["spec"]["storageClassName"]) == class(&claim["spec"]["storageClassName"])
        && claim["spec"]["accessModes"].as_array().into_iter().flatten().all(|m| modes.contains(&m))
        && mode(&pv["spec"]["volumeMode"]) == mode(&claim["spec"]["volumeMode"])
        && size(&pv["spec"]["capacity"]["storage"]) >= size(&claim["spec"]["resources"]["requests"]["storage"])
        && (claim["spec"]["selector"].is_null() || selects_pod(&claim["spec"]["selector"], pv))
}

/// kube-controller-manager's PersistentVolume controller, binding only (no
/// provisioning, no reclaiming): a pending claim binds to the volume it
/// names when that volume is unclaimed and satisfies it, or is pre-bound to
/// the claim; a claim naming no volume binds to a volume pre-bound to it,
/// else to the smallest Available one that satisfies it (never for a class
/// with `WaitForFirstConsumer`, which waits for a scheduler this harness
/// does not have). Binding sets both sides (claimRef with the UID,
/// volumeName, the annotations) and both phases Bound, the claim's capacity
/// and access modes from the volume. A volume whose bound claim is gone is
/// Released; one never claimed is Available.
fn bind_volumes(store: &mut Store) {
    const PVS: &str = "persistentvolumes";
    const PVCS: &str = "persistentvolumeclaims";
    let claims = store.list(PVCS, None);
    for pv in store.list(PVS, None) {
        let name = pv["metadata"]["name"].as_str().unwrap_or("").to_string();
        let r = &pv["spec"]["claimRef"];
        let phase = if r.is_null() {
            "Available"
        } else if claims.iter().any(|c| claim_ref_matches(&pv, c)) {
            if r["uid"].as_str().is_some_and(|u| !u.is_empty()) { "Bound" } else { "Available" }
        } else if r["uid"].as_str().is_some_and(|u| !u.is_empty()) {
            "Released"
        } else {
            "Available"
        };
        if pv["status"]["phase"] != phase && pv["status"]["phase"] != "Released" {
            let mut updated = pv.clone();
            updated["status"]["phase"] = json!(phase);
            store.put(PVS, "", &name, updated);
        }
    }
    for claim in claims {
        if claim["status"]["phase"] == "Bound" && claim["spec"]["volumeName"].as_str().is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let ns = claim["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let claim_name = claim["metadata"]["name"].as_str().unwrap_or("").to_string();
        let pvs = store.list(PVS, None);
        let chosen = match claim["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            Some(wanted) => pvs.into_iter().find(|pv| {
                pv["metadata"]["name"] == wanted && (if pv["spec"]["claimRef"].is_null() { satisfies(pv, &claim) } else { claim_ref_matches(pv, &claim) })
            }),
            None => {
                let class = claim["spec"]["storageClassName"].as_str().unwrap_or("");
                let waits = !class.is_empty() && store.get("storageclasses.storage.k8s.io", "", class).is_some_and(|c| c["volumeBindingMode"] == "WaitForFirstConsumer");
                let size = |pv: &Value| pv["spec"]["capacity"]["storage"].as_str().and_then(super::defaults::milli).unwrap_or(0);
                let pre_bound = pvs.iter().find(|pv| !pv["spec"]["claimRef"].is_null() && claim_ref_matches(pv, &claim)).cloned();
                pre_bound.or_else(|| {
                    if waits {
                        return None;
                    }
                    pvs.into_iter()
                        .filter(|pv| pv["spec"]["claimRef"].is_null() && pv["status"]["phase"] != "Released" && satisfies(pv, &claim))
                        .min_by_key(size)
                })
            }
        };
        let Some(pv) = chosen else { continue };
        let pv_name = pv["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut bound_pv = pv.clone();
        if pv["spec"]["claimRef"].is_null() {
            bound_pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        }
        bound_pv["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": claim_name,
            "uid": claim["metadata"]["uid"], "resourceVersion": claim["metadata"]["resourceVersion"]});
        bound_pv["status"]["phase"] = json!("Bound");
        store.put(PVS, "", &pv_name, bound_pv);
        let mut bound = claim.clone();
        if claim["spec"]["volumeName"].as_str().is_none_or(str::is_empty) {
            bound["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        }
        bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = json!("yes");
        bound["spec"]["volumeName"] = json!(pv_name);
        bound["status"]["phase"] = json!("Bound");
        bound["status"]["capacity"] = pv["spec"]["capacity"].clone();
        bound["status"]["accessModes"] = pv["spec"]["accessModes"].clone();
        store.put(PVCS, &ns, &claim_name, bound);
    }
}

/// kube-controller-manager's ephemeral volume controller: for each pod's
/// `ephemeral.volumeClaimTemplate`, the claim `<pod>-<volume>`, owned by
/// the pod. (bind_volumes binds it.)
fn ephemeral_claims(store: &mut Store) {
    // The garbage collector: a claim whose owning pod is gone goes too.
    let pods = store.list("pods", None);
    for claim in store.list("persistentvolumeclaims", None) {
        let Some(owner) = claim["metadata"]["ownerReferences"].as_array().and_then(|o| o.iter().find(|r| r["kind"] == "Pod")) else { continue };
        if !pods.iter().any(|p| p["metadata"]["uid"] == owner["uid"]) {
            let ns = claim["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            let name = claim["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.remove("persistentvolumeclaims", &ns, &name);
        }
    }
    for pod in pods {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let t = &v["ephemeral"]["volumeClaimTemplate"];
            if t.is_null() {
                continue;
            }
            let name = format!("{pod_name}-{}", v["name"].as_str().unwrap_or(""));
            if store.get("persistentvolumeclaims", &ns, &name).is_some() {
                continue;
            }
            let claim = serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns, "uid": format!("eph-{}", pod["metadata"]["uid"].as_str().unwrap_or("")),
                    "labels": t["metadata"]["labels"].clone(),
                    "annotations": t["metadata"]["annotations"].clone(),
                    "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string(),
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod["metadata"]["uid"],
                        "controller": true, "blockOwnerDeletion": true}]},
                "spec": t["spec"].clone(),
                "status": {"phase": "Pending"}
            });
            store.put("persistentvolumeclaims", &ns, &name, claim);
        }
    }
}

/// kube-controller-manager's attach-detach controller together with the
/// driver's external-attacher: for each CSI persistent volume a pod on a
/// node uses through a bound claim, whose CSIDriver requires attaching
/// (the default, also without a CSIDriver object), the VolumeAttachment
/// `csi-<sha256(handle + driver + node)>`, marked attached; deleted when no
/// pod on that node uses the volume any more. As the real controller, it
/// manages only nodes whose kubelet asked it to (the Node's
/// `volumes.kubernetes.io/controller-managed-attach-detach` annotation), and
/// follows generic ephemeral volumes to the claim made for the pod.
fn attach_detach(store: &mut Store) {
    use sha2::Digest;
    let mut wanted = std::collections::BTreeMap::new();
    for pod in store.list("pods", None) {
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else { continue };
        if matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            continue;
        }
        if !managed(store, node) {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let claim = match (v["persistentVolumeClaim"]["claimName"].as_str(), v["ephemeral"].is_object()) {
                (Some(c), _) => c.to_string(),
                (None, true) => format!("{pod_name}-{}", v["name"].as_str().unwrap_or("")),
                (None, false) => continue,
            };
            let Some(pvc) = store.get("persistentvolumeclaims", ns, &claim) else { continue };
            let Some(pv_name) = pvc["spec"]["volumeName"].as_str() else { continue };
            let Some(pv) = store.get("persistentvolumes", "", pv_name) else { continue };
            let csi = &pv["spec"]["csi"];
            let (Some(driver), Some(handle)) = (csi["driver"].as_str(), csi["volumeHandle"].as_str()) else { continue };
            let attach = store.get("csidrivers.storage.k8s.io", "", driver).is_none_or(|d| d["spec"]["attachRequired"] != Value::Bool(false));
            if !attach {
                continue;
            }
            let name = format!("csi-{}", hex::encode(sha2::Sha256::digest(format!("{handle}{driver}{node}").as_bytes())));
            wanted.insert(name, (driver.to_string(), node.to_string(), pv_name.to_string(), handle.to_string()));
        }
    }
    // A volume no pod wants any more is detached only once its node no
    // longer reports it in volumesInUse (the real controller also gives up
    // waiting after maxWaitForUnmountDuration, 6 minutes; not modelled).
    for va in store.list("volumeattachments.storage.k8s.io", None) {
        let name = va["metadata"]["name"].as_str().unwrap_or("").to_string();
        if wanted.contains_key(&name) {
            continue;
        }
        let node = va["spec"]["nodeName"].as_str().unwrap_or("");
        let driver = va["spec"]["attacher"].as_str().unwrap_or("");
        let handle = va["status"]["attachmentMetadata"]["handle"].as_str().unwrap_or("");
        let unique = format!("kubernetes.io/csi/{driver}^{handle}");
        let in_use = store.get("nodes", "", node).is_some_and(|n| n["status"]["volumesInUse"].as_array().is_some_and(|l| l.iter().any(|v| v.as_str() == Some(&unique))));
        if in_use {
            let pv = va["spec"]["source"]["persistentVolumeName"].as_str().unwrap_or("").to_string();
            wanted.insert(name, (driver.to_string(), node.to_string(), pv, handle.to_string()));
        } else {
            store.remove("volumeattachments.storage.k8s.io", "", &name);
        }
    }
    // The controller's record on each Node: status.volumesAttached.
    let mut attached: std::collections::BTreeMap<String, Vec<Value>> = std::collections::BTreeMap::new();
    for (driver, node, _, handle) in wanted.values() {
        attached.entry(node.clone()).or_default().push(serde_json::json!({"name": format!("kubernetes.io/csi/{driver}^{handle}"), "devicePath": ""}));
    }
    for n in store.list("nodes", None) {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        if !managed(store, &name) {
            continue;
        }
        let list = Value::Array(attached.remove(&name).unwrap_or_default());
        let current = n["status"]["volumesAttached"].clone();
        if current != list && !(current.is_null() && list == Value::Array(vec![])) {
            let mut n = n.clone();
            n["status"]["volumesAttached"] = list;
            store.put("nodes", "", &name, n);
        }
    }
    for (name, (driver, node, pv, handle)) in wanted {
        if store.get("volumeattachments.storage.k8s.io", "", &name).is_some() {
            continue;
        }
        let va = serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name, "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()},
            "spec": {"attacher": driver, "nodeName": node, "source": {"persistentVolumeName": pv}},
            "status": {"attached": true, "attachmentMetadata": {"attached-by": "test-attacher", "handle": handle}}
        });
        store.put("volumeattachments.storage.k8s.io", "", &name, va);
    }
}

/// Whether the attach-detach controller manages the node's volumes: its
/// kubelet set the annotation (any value, as upstream checks).
fn managed(store: &Store, node: &str) -> bool {
    store.get("nodes", "", node).is_some_and(|n| n["metadata"]["annotations"].get("volumes.kubernetes.io/controller-managed-attach-detach").is_some())
}

fn condition<'a>(node: &'a Value, t: &str) -> Option<&'a Value> {
    node["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t)
}

const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";

fn monitor_nodes(store: &mut Store, lc: &mut Lifecycle) {
    let at = Instant::now();
    for node in store.list("nodes", None) {
        let name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ready = condition(&node, "Ready").cloned();
        let heartbeat = ready.as_ref().and_then(|c| c["lastHeartbeatTime"].as_str()).unwrap_or("").to_string();
        let renew = store
            .get("leases.coordination.k8s.io", "kube-node-lease", &name)
            .and_then(|l| l["spec"]["renewTime"].as_str())
            .unwrap_or("")
            .to_string();
        let ready_status = ready.as_ref().and_then(|c| c["status"].as_str()).unwrap_or("").to_string();
        let h = lc.nodes.entry(name.clone()).or_insert(NodeHealth { probe: at, heartbeat: heartbeat.clone(), renew: renew.clone(), ready: ready_status.clone() });
        if h.heartbeat != heartbeat || h.renew != renew {
            h.probe = at;
            h.heartbeat = heartbeat;
            h.renew = renew;
        }
        let grace = if ready.is_none() { lc.startup_grace } else { lc.grace };
        let mut node = node;
        let mut changed = false;
        if at.duration_since(h.probe) > grace {
            let never = ready.is_none();
            let (reason, message) = if never {
                ("NodeStatusNeverUpdated", "Kubelet never posted node status.")
            } else {
                ("NodeStatusUnknown", "Kubelet stopped posting node status.")
            };
            let mut conditions: Vec<Value> = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
            for t in CONDITIONS {
                match conditions.iter_mut().find(|c| c["type"] == t) {
                    Some(c) if c["status"] == "Unknown" => {}
                    Some(c) => {
                        c["status"] = json!("Unknown");
                        c["reason"] = json!(reason);
                        c["message"] = json!(message);
                        c["lastTransitionTime"] = json!(now());
                        changed = true;
                    }
                    None => {
                        conditions.push(json!({"type": t, "status": "Unknown", "reason": reason, "message": message,
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}));
                        changed = true;
                    }
                }
            }
            if changed {
                node["status"]["conditions"] = json!(conditions);
                lc.marked_unknown.push(name.clone());
            }
        }
        let ready_now = condition(&node, "Ready").and_then(|c| c["status"].as_str()).unwrap_or("").to_string();
        // MarkPodsNotReady, when the node leaves Ready.
        if h.ready == "True" && ready_now != "True" {
            mark_pods_not_ready(store, &name);
        }
        h.ready = ready_now.clone();
        // The taints that follow the Ready condition.
        let wanted: &[(&str, &str)] = match ready_now.as_str() {
            "False" => &[(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
            "Unknown" => &[(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
            _ => &[],
        };
        let taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let ours = |t: &Value| t["key"] == UNREACHABLE || t["key"] == NOT_READY;
        let mut next: Vec<Value> = taints.iter().filter(|t| !ours(t)).cloned().collect();
        for (key, effect) in wanted {
            match taints.iter().find(|t| t["key"] == *key && t["effect"] == *effect) {
                Some(t) => next.push(t.clone()),
                None => {
                    let mut t = json!({"key": key, "effect": effect});
                    if *effect == "NoExecute" {
                        t["timeAdded"] = json!(now());
                    }
                    next.push(t);
                }
            }
        }
        if next != taints {
            node["spec"]["taints"] = if next.is_empty() { Value::Null } else { json!(next) };
            changed = true;
        }
        if changed {
            store.put("nodes", "", &name, node);
        }
    }
}

fn mark_pods_not_ready(store: &mut Store, node: &str) {
    for mut pod in store.list("pods", None) {
        if pod["spec"]["nodeName"].as_str() != Some(node) {
            continue;
        }
        let mut changed = false;
        for c in pod["status"]["conditions"].as_array_mut().into_iter().flatten() {
            if c["type"] == "Ready" && c["status"] != "False" {
                c["status"] = json!("False");
                c["lastTransitionTime"] = json!(now());
                changed = true;
            }
        }
        if changed {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            store.put("pods", &ns, &name, pod);
        }
    }
}

/// Whether a toleration tolerates a taint (the API's matching rules).
fn tolerates(tol: &Value, taint: &Value) -> bool {
    let effect_ok = tol["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
    let key_ok = match tol["key"].as_str().filter(|k| !k.is_empty()) {
        None => tol["operator"] == "Exists",
        Some(k) => taint["key"] == k,
    };
    let value_ok = tol["operator"] == "Exists" || tol["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("");
    effect_ok && key_ok && value_ok
}

fn parse_time(v: &Value) -> Option<k8s_openapi::jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

fn evict_by_taints(store: &mut Store, lc: &mut Lifecycle) {
    let now_ts = k8s_openapi::jiff::Timestamp::now();
    for node in store.list("nodes", None) {
        let name = node["metadata"]["name"].as_str().unwrap_or("");
        let taints: Vec<Value> =
            node["spec"]["taints"].as_array().into_iter().flatten().filter(|t| t["effect"] == "NoExecute").cloned().collect();
        if taints.is_empty() {
            continue;
        }
        for pod in store.list("pods", None) {
            if pod["spec"]["nodeName"].as_str() != Some(name) || !pod["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let tolerations: Vec<Value> = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
            // The latest time the pod may stay; None = forever.
            let mut until: Option<Option<k8s_openapi::jiff::Timestamp>> = Some(None);
            for taint in &taints {
                let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
                if matching.is_empty() {
                    until = None;
                    break;
                }
                let seconds = matching.iter().filter_map(|t| t["tolerationSeconds"].as_i64()).min();
                if let (Some(secs), Some(added)) = (seconds, parse_time(&taint["timeAdded"])) {
                    let deadline = added + k8s_openapi::jiff::SignedDuration::from_secs(secs.max(0));
                    let current = until.flatten();
                    until = Some(Some(current.map_or(deadline, |c| c.min(deadline))));
                }
            }
            let evict = match until {
                None => true,
                Some(None) => false,
                Some(Some(deadline)) => now_ts >= deadline,
            };
            if evict {
                let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30).max(0);
                let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
                let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
                mark_deleted(store, &pod, grace);
                lc.evicted.push(format!("{ns}/{pod_name}"));
            }
        }
    }
}

const RESOURCE_CLAIMS: &str = "resourceclaims.resource.k8s.io";
const CLAIM_TEMPLATES: &str = "resourceclaimtemplates.resource.k8s.io";
const RESOURCE_SLICES: &str = "resourceslices.resource.k8s.io";
const DEVICE_CLASSES: &str = "deviceclasses.resource.k8s.io";

fn pod_done(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) || (!pod["metadata"]["deletionTimestamp"].is_null() && pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty())
}

/// The claims a pod names: (pod claim name, claim name) for those that exist.
fn pod_claim_names(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for pc in pod["spec"]["resourceClaims"].as_array().into_iter().flatten() {
        if let Some(n) = pc["resourceClaimName"].as_str() {
            out.push(n.to_string());
        } else if let Some(st) = pod["status"]["resourceClaimStatuses"].as_array().and_then(|a| a.iter().find(|s| s["name"] == pc["name"]))
            && let Some(n) = st["resourceClaimName"].as_str()
        {
            out.push(n.to_string());
        }
    }
    out
}

/// The driver a DeviceClass selects, from its `device.driver == "x"` CEL selector.
fn class_driver(class: &Value) -> Option<String> {
    class["spec"]["selectors"].as_array()?.iter().find_map(|s| {
        let e = s["cel"]["expression"].as_str()?;
        let rest = e.trim().strip_prefix("device.driver")?.trim_start().strip_prefix("==")?.trim();
        Some(rest.trim_matches('"').trim_matches('\'').to_string())
    })
}

/// The scheduler's allocation of a claim's devices on `node`, or None when
/// the node has not enough free devices.
fn allocate_claim(store: &Store, claim: &Value, node: &str) -> Option<Value> {
    let mut taken: Vec<(String, String, String)> = Vec::new();
    for c in store.list(RESOURCE_CLAIMS, None) {
        for r in c["status"]["allocation"]["devices"]["results"].as_array().into_iter().flatten() {
            taken.push((r["driver"].as_str()?.to_string(), r["pool"].as_str()?.to_string(), r["device"].as_str()?.to_string()));
        }
    }
    let slices = store.list(RESOURCE_SLICES, None);
    let mut results = Vec::new();
    for req in claim["spec"]["devices"]["requests"].as_array().into_iter().flatten() {
        let ex = &req["exactly"];
        let class = store.get(DEVICE_CLASSES, "", ex["deviceClassName"].as_str()?)?;
        let driver = class_driver(class)?;
        let mut free: Vec<(String, String)> = Vec::new();
        for s in slices.iter().filter(|s| s["spec"]["driver"].as_str() == Some(driver.as_str()) && s["spec"]["nodeName"].as_str() == Some(node)) {
            let pool = s["spec"]["pool"]["name"].as_str().unwrap_or("").to_string();
            for d in s["spec"]["devices"].as_array().into_iter().flatten() {
                let name = d["name"].as_str().unwrap_or("").to_string();
                if !taken.contains(&(driver.clone(), pool.clone(), name.clone())) {
                    free.push((pool.clone(), name));
                }
            }
        }
        let want = match ex["allocationMode"].as_str() {
            // All: every matching device on the node, none of them taken.
            Some("All") => {
                let matching = slices
                    .iter()
                    .filter(|s| s["spec"]["driver"].as_str() == Some(driver.as_str()) && s["spec"]["nodeName"].as_str() == Some(node))
                    .map(|s| s["spec"]["devices"].as_array().map_or(0, Vec::len))
                    .sum::<usize>();
                if matching == 0 || free.len() < matching {
                    return None;
                }
                matching
            }
            _ => usize::try_from(ex["count"].as_u64().unwrap_or(1)).unwrap_or(usize::MAX),
        };
        if free.len() < want {
            return None;
        }
        for (pool, device) in free.into_iter().take(want) {
            taken.push((driver.clone(), pool.clone(), device.clone()));
            results.push(serde_json::json!({"request": req["name"], "driver": driver, "pool": pool, "device": device}));
        }
    }
    Some(serde_json::json!({
        "devices": {"results": results},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]},
        "allocationTimestamp": now(),
    }))
}

/// The resourceclaim controller and the scheduler's allocation (see the
/// module's documentation).
fn dynamic_resources(store: &mut Store) {
    // Claims from templates, named in the pod's status.
    for mut pod in store.list("pods", None) {
        if pod["spec"]["resourceClaims"].as_array().is_none_or(|a| a.is_empty()) || !pod["metadata"]["deletionTimestamp"].is_null() || pod_done(&pod) {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut statuses: Vec<Value> = pod["status"]["resourceClaimStatuses"].as_array().cloned().unwrap_or_default();
        let mut changed = false;
        for pc in pod["spec"]["resourceClaims"].as_array().cloned().unwrap_or_default() {
            let Some(template) = pc["resourceClaimTemplateName"].as_str() else { continue };
            if statuses.iter().any(|s| s["name"] == pc["name"]) {
                continue;
            }
            let Some(t) = store.get(CLAIM_TEMPLATES, &ns, template).cloned() else { continue };
            let name = format!("{pod_name}-{}-{}", pc["name"].as_str().unwrap_or(""), super::handlers::random_suffix(5));
            let claim = serde_json::json!({
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": name, "namespace": ns, "uid": super::handlers::uid(), "creationTimestamp": now(),
                    "annotations": {"resource.kubernetes.io/pod-claim-name": pc["name"]},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod["metadata"]["uid"],
                        "controller": true, "blockOwnerDeletion": true}]},
                "spec": t["spec"]["spec"].clone(),
                "status": {}
            });
            store.put(RESOURCE_CLAIMS, &ns, &name, claim);
            statuses.push(serde_json::json!({"name": pc["name"], "resourceClaimName": name}));
            changed = true;
        }
        if changed {
            pod["status"]["resourceClaimStatuses"] = Value::Array(statuses);
            store.put("pods", &ns, &pod_name, pod);
        }
    }
    // Allocation and reservation for pods bound to a node.
    let pods = store.list("pods", None);
    for pod in &pods {
        let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else { continue };
        if pod_done(pod) || !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        for name in pod_claim_names(pod) {
            let Some(mut claim) = store.get(RESOURCE_CLAIMS, ns, &name).cloned() else { continue };
            let mut changed = false;
            if claim["status"]["allocation"].is_null() {
                let Some(a) = allocate_claim(store, &claim, node) else { continue };
                claim["status"]["allocation"] = a;
                changed = true;
            }
            let reserved = claim["status"]["reservedFor"].as_array().is_some_and(|r| r.iter().any(|c| c["uid"] == pod["metadata"]["uid"]));
            if !reserved {
                let entry = serde_json::json!({"resource": "pods", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]});
                match claim["status"]["reservedFor"].as_array_mut() {
                    Some(r) => r.push(entry),
                    None => claim["status"]["reservedFor"] = serde_json::json!([entry]),
                }
                changed = true;
            }
            if changed {
                store.put(RESOURCE_CLAIMS, ns, &name, claim);
            }
        }
    }
    // Reservations of pods done or gone; a claim nobody reserves is
    // deallocated, and deleted when it was made for a pod that is done or gone.
    for mut claim in store.list(RESOURCE_CLAIMS, None) {
        let ns = claim["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = claim["metadata"]["name"].as_str().unwrap_or("").to_string();
        let live = |uid: &Value| pods.iter().any(|p| &p["metadata"]["uid"] == uid && !pod_done(p));
        let reserved = claim["status"]["reservedFor"].as_array().cloned().unwrap_or_default();
        let keep: Vec<Value> = reserved.iter().filter(|c| live(&c["uid"])).cloned().collect();
        if !keep.is_empty() {
            if keep.len() != reserved.len() {
                claim["status"]["reservedFor"] = Value::Array(keep);
                store.put(RESOURCE_CLAIMS, &ns, &name, claim);
            }
            continue;
        }
        let owner = claim["metadata"]["ownerReferences"].as_array().and_then(|o| o.iter().find(|r| r["kind"] == "Pod")).map(|r| r["uid"].clone());
        if let Some(uid) = owner
            && !live(&uid)
        {
            store.remove(RESOURCE_CLAIMS, &ns, &name);
            continue;
        }
        if !reserved.is_empty() || !claim["status"]["allocation"].is_null() {
            if let Some(st) = claim["status"].as_object_mut() {
                st.remove("reservedFor");
                st.remove("allocation");
            }
            store.put(RESOURCE_CLAIMS, &ns, &name, claim);
        }
    }
}
