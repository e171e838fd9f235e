//! Authorization as a stock cluster does it (kube-apiserver
//! `--authorization-mode=Node,RBAC` with the NodeRestriction admission
//! plugin), so a test sees the 403s a real node would:
//!
//! - `system:masters` may do anything.
//! - The Node authorizer, for a user `system:node:<name>` in `system:nodes`:
//!   Secrets, ConfigMaps, PersistentVolumeClaims and PersistentVolumes only by
//!   name and only when a pod bound to the node references them; a service
//!   account's token only for a service account its pods run as; and kubelet's
//!   static node rules for the rest. No EndpointSlices.
//! - NodeRestriction on top: a node writes only its own Node and Lease, creates
//!   only mirror pods bound to itself, and changes (status, deletion) only pods
//!   bound to itself.
//! - RBAC from the ClusterRoleBindings in the store, over the built-in
//!   ClusterRoles below; the default bindings are those a kubeadm cluster has.

use serde_json::{Value, json};

use super::handlers::Identity;
use super::store::Store;

/// What a request asks to do, as the apiserver's RequestInfo has it.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub sub: Option<String>,
    pub ns: Option<String>,
    /// For list and watch: from a `metadata.name=` field selector.
    pub name: Option<String>,
    /// The request's field selector, for the rules that depend on it.
    pub fields: Option<String>,
}

/// A rule of a ClusterRole: verbs on group/resource[/subresource]; `*` for any.
struct Rule {
    verbs: &'static [&'static str],
    groups: &'static [&'static str],
    resources: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];

const fn r(verbs: &'static [&'static str], groups: &'static [&'static str], resources: &'static [&'static str]) -> Rule {
    Rule { verbs, groups, resources }
}

/// The built-in ClusterRoles the tests bind (their rules as in Kubernetes'
/// bootstrap policy, trimmed to the resources this apiserver serves).
fn cluster_role(name: &str) -> &'static [Rule] {
    const ADMIN: &[Rule] = &[r(&["*"], &["*"], &["*"])];
    const NODE_PROXIER: &[Rule] = &[
        r(&["list", "watch"], &[""], &["services", "endpoints"]),
        r(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
        r(READ, &[""], &["nodes"]),
        r(&["create", "patch", "update"], &["", "events.k8s.io"], &["events"]),
    ];
    const NODE_BOOTSTRAPPER: &[Rule] = &[r(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"])];
    const NODECLIENT: &[Rule] = &[r(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"])];
    const SELFNODECLIENT: &[Rule] = &[r(&["create"], &["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"])];
    const BASIC_USER: &[Rule] = &[r(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"])];
    const KUBELET_API_ADMIN: &[Rule] = &[
        r(READ, &[""], &["nodes"]),
        r(&["proxy"], &[""], &["nodes"]),
        r(&["*"], &[""], &["nodes/proxy", "nodes/log", "nodes/stats", "nodes/metrics", "nodes/spec", "nodes/checkpoint", "nodes/configz", "nodes/healthz", "nodes/pods"]),
    ];
    const VIEW: &[Rule] = &[r(READ, &["", "discovery.k8s.io", "coordination.k8s.io"], &["pods", "configmaps", "services", "endpointslices", "serviceaccounts", "leases", "events"])];
    match name {
        "cluster-admin" => ADMIN,
        "system:node-proxier" => NODE_PROXIER,
        "system:node-bootstrapper" => NODE_BOOTSTRAPPER,
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient" => NODECLIENT,
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient" => SELFNODECLIENT,
        "system:basic-user" => BASIC_USER,
        "view" => VIEW,
        "system:kubelet-api-admin" => KUBELET_API_ADMIN,
        _ => &[],
    }
}

/// The user of the client certificate the apiserver calls kubelets with.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// The ClusterRoleBindings of a new kubeadm cluster (and one the tests use
/// so a pod's token can read its namespace).
pub fn default_bindings() -> Vec<Value> {
    let b = |name: &str, role: &str, kind: &str, subject: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": kind, "name": subject}]})
    };
    vec![
        b("system:basic-user", "system:basic-user", "Group", "system:authenticated"),
        b("system:node-proxier", "system:node-proxier", "User", "system:kube-proxy"),
        b("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", "Group", "system:bootstrappers"),
        b("kubeadm:node-autoapprove-bootstrap", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", "Group", "system:bootstrappers"),
        b("kubeadm:node-autoapprove-certificate-rotation", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "Group", "system:nodes"),
        b("test:serviceaccounts-view", "view", "Group", "system:serviceaccounts"),
        // What the seed's binary install runs for the apiserver's own client
        // certificate, so it may call the kubelets.
        b("kube-apiserver:kubelet-apis", "system:kubelet-api-admin", "User", KUBELET_CLIENT),
    ]
}

/// kubelet's static rules in the Node authorizer (bootstrap policy's
/// NodeRules), for resources the graph does not decide.
const NODE_RULES: &[Rule] = &[
    r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
    r(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews", "localsubjectaccessreviews"]),
    r(&["create", "get", "list", "watch", "update", "patch", "delete"], &[""], &["nodes"]),
    r(&["patch", "update"], &[""], &["nodes/status"]),
    r(&["create", "update", "patch"], &["", "events.k8s.io"], &["events"]),
    r(READ, &[""], &["pods"]),
    r(&["create", "delete"], &[""], &["pods"]),
    r(&["update", "patch"], &[""], &["pods/status"]),
    r(&["create"], &[""], &["pods/eviction"]),
    r(READ, &[""], &["services"]),
    r(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
    r(&["get", "create", "update", "patch", "delete"], &["coordination.k8s.io"], &["leases"]),
    // The system:node ClusterRole's storage rules (the Node authorizer
    // decides volumeattachments).
    r(READ, &["storage.k8s.io"], &["csidrivers"]),
    r(READ, &["node.k8s.io"], &["runtimeclasses"]),
    r(&["get", "create", "update", "patch", "delete"], &["storage.k8s.io"], &["csinodes"]),
];

fn matches(rules: &[Rule], a: &Attrs) -> bool {
    let resource = match &a.sub {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    rules.iter().any(|rule| {
        (rule.verbs.contains(&"*") || rule.verbs.contains(&a.verb.as_str()))
            && (rule.groups.contains(&"*") || rule.groups.contains(&a.group.as_str()))
            && (rule.resources.contains(&"*") || rule.resources.contains(&resource.as_str()))
    })
}

/// The outcome, with the apiserver's reason when it is a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

fn subject_matches(s: &Value, who: &Identity) -> bool {
    let name = s["name"].as_str().unwrap_or("");
    match s["kind"].as_str() {
        Some("User") => who.user == name,
        Some("Group") => who.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => who.user == format!("system:serviceaccount:{}:{name}", s["namespace"].as_str().unwrap_or("")),
        _ => false,
    }
}

/// A stored role's rules (`rules: [{apiGroups, resources, verbs,
/// resourceNames}]`), as RBAC evaluates them.
fn stored_rules_match(role: &Value, a: &Attrs) -> bool {
    let resource = match &a.sub {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let has = |list: &Value, want: &str| list.as_array().into_iter().flatten().any(|v| v == "*" || v == want);
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        has(&rule["verbs"], &a.verb)
            && has(&rule["apiGroups"], &a.group)
            && has(&rule["resources"], &resource)
            && match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
                None => true,
                Some(names) => a.name.as_ref().is_some_and(|n| names.iter().any(|v| v == n.as_str())),
            }
    })
}

/// What a binding's roleRef grants: a built-in ClusterRole, or a stored
/// ClusterRole or (for a RoleBinding, in its namespace) Role.
fn role_grants(store: &Store, role_ref: &Value, ns: &str, a: &Attrs) -> bool {
    let name = role_ref["name"].as_str().unwrap_or("");
    match role_ref["kind"].as_str() {
        Some("Role") => store.get("roles.rbac.authorization.k8s.io", ns, name).is_some_and(|r| stored_rules_match(r, a)),
        _ => {
            matches(cluster_role(name), a)
                || store.get("clusterroles.rbac.authorization.k8s.io", "", name).is_some_and(|r| stored_rules_match(r, a))
        }
    }
}

fn rbac(store: &Store, who: &Identity, a: &Attrs) -> bool {
    let bound = |b: &Value| b["subjects"].as_array().into_iter().flatten().any(|s| subject_matches(s, who));
    store.list("clusterrolebindings.rbac.authorization.k8s.io", None).iter().any(|b| bound(b) && role_grants(store, &b["roleRef"], "", a))
        || a.ns.as_deref().is_some_and(|ns| {
            store.list("rolebindings.rbac.authorization.k8s.io", Some(ns)).iter().any(|b| bound(b) && role_grants(store, &b["roleRef"], ns, a))
        })
}

/// The node a user is, if it is one.
pub fn node_of(who: &Identity) -> Option<&str> {
    who.user.strip_prefix("system:node:").filter(|_| who.groups.iter().any(|g| g == "system:nodes"))
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) if !s.is_empty() => vec![s.clone()],
        _ => vec![],
    }
}

/// What a pod references, as the Node authorizer's graph has it:
/// (resource, name) pairs in the pod's namespace.
pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        out.extend(names(&v["secret"]["secretName"]).into_iter().map(|n| ("secrets", n)));
        out.extend(names(&v["configMap"]["name"]).into_iter().map(|n| ("configmaps", n)));
        out.extend(names(&v["persistentVolumeClaim"]["claimName"]).into_iter().map(|n| ("persistentvolumeclaims", n)));
        if !v["ephemeral"].is_null() {
            let claim = format!("{}-{}", pod["metadata"]["name"].as_str().unwrap_or(""), v["name"].as_str().unwrap_or(""));
            out.push(("persistentvolumeclaims", claim));
        }
        out.extend(names(&v["csi"]["nodePublishSecretRef"]["name"]).into_iter().map(|n| ("secrets", n)));
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            out.extend(names(&src["secret"]["name"]).into_iter().map(|n| ("secrets", n)));
            out.extend(names(&src["configMap"]["name"]).into_iter().map(|n| ("configmaps", n)));
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                out.extend(names(&e["valueFrom"]["secretKeyRef"]["name"]).into_iter().map(|n| ("secrets", n)));
                out.extend(names(&e["valueFrom"]["configMapKeyRef"]["name"]).into_iter().map(|n| ("configmaps", n)));
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                out.extend(names(&e["secretRef"]["name"]).into_iter().map(|n| ("secrets", n)));
                out.extend(names(&e["configMapRef"]["name"]).into_iter().map(|n| ("configmaps", n)));
            }
        }
    }
    // DRA: the claims a pod names, by name or through its status (the
    // graph's pod → ResourceClaim edges).
    for pc in spec["resourceClaims"].as_array().into_iter().flatten() {
        out.extend(names(&pc["resourceClaimName"]).into_iter().map(|n| ("resourceclaims", n)));
    }
    for st in pod["status"]["resourceClaimStatuses"].as_array().into_iter().flatten() {
        out.extend(names(&st["resourceClaimName"]).into_iter().map(|n| ("resourceclaims", n)));
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        out.extend(names(&s["name"]).into_iter().map(|n| ("secrets", n)));
    }
    let sa = spec["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
    out.push(("serviceaccounts", sa.to_string()));
    out
}

fn pods_on<'a>(store: &'a Store, node: &'a str) -> impl Iterator<Item = Value> + 'a {
    store.list("pods", None).into_iter().filter(move |p| p["spec"]["nodeName"].as_str() == Some(node))
}

/// The Node authorizer's graph: whether a pod on `node` references the object.
fn related(store: &Store, node: &str, resource: &str, ns: &str, name: &str) -> bool {
    pods_on(store, node).any(|p| {
        p["metadata"]["namespace"].as_str() == Some(ns) && references(&p).iter().any(|(r, n)| *r == resource && n == name)
    })
}

/// The graph's PV → secret edges: a secret a CSI PV names (its node stage,
/// publish, expand or controller secrets), when a pod on the node uses a
/// claim bound to that PV.
fn pv_secret(store: &Store, node: &str, ns: &str, name: &str) -> bool {
    store.list("persistentvolumes", None).iter().any(|pv| {
        let c = &pv["spec"]["csi"];
        let names_it = ["nodeStageSecretRef", "nodePublishSecretRef", "nodeExpandSecretRef"]
            .iter()
            .any(|k| c[k]["namespace"].as_str() == Some(ns) && c[k]["name"].as_str() == Some(name));
        let r = &pv["spec"]["claimRef"];
        names_it && related(store, node, "persistentvolumeclaims", r["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""))
    })
}

fn forbidden(who: &Identity, a: &Attrs, why: &str) -> Decision {
    let scope = match &a.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let resource = match &a.sub {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let mut msg = format!("User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}", who.user, a.verb, a.group);
    if !why.is_empty() {
        msg.push_str(": ");
        msg.push_str(why);
    }
    Decision::Deny(msg)
}

/// The Node authorizer: Some(decision) when it decides, None for no opinion
/// (then RBAC decides).
fn node_authorizer(store: &Store, who: &Identity, a: &Attrs) -> Option<Decision> {
    let node = node_of(who)?;
    let ns = a.ns.as_deref().unwrap_or("");
    match (a.group.as_str(), a.resource.as_str(), a.sub.as_deref()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", None) => {
            if !READ.contains(&a.verb.as_str()) {
                return None;
            }
            // Claims: get only (the Node authorizer's rule).
            if a.resource == "persistentvolumeclaims" && a.verb != "get" {
                return Some(forbidden(who, a, &format!("can only get individual resources of this type")));
            }
            let Some(name) = &a.name else {
                return Some(forbidden(who, a, &format!("can only {} individual resources of this type", a.verb)));
            };
            if related(store, node, &a.resource, ns, name) || (a.resource == "secrets" && pv_secret(store, node, ns, name)) {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("no relationship found between node '{node}' and this object")))
            }
        }
        // authorizeResourceSlice: a node lists, watches and deletes (as a
        // collection) only its own ResourceSlices, by field selector.
        ("resource.k8s.io", "resourceslices", None) => {
            if matches!(a.verb.as_str(), "list" | "watch" | "deletecollection") {
                let own = a.fields.as_deref().is_some_and(|f| f.split(',').any(|t| t == format!("spec.nodeName={node}") || t == format!("spec.nodeName=={node}")));
                if !own {
                    return Some(forbidden(who, a, &format!("can only {} resourceslices with the field selector spec.nodeName={node}", a.verb)));
                }
            }
            Some(Decision::Allow)
        }
        // The graph's ResourceClaim → pod → node edges: get only.
        ("resource.k8s.io", "resourceclaims", None) => {
            if a.verb != "get" {
                return Some(forbidden(who, a, &format!("can only get individual resources of this type")));
            }
            let name = a.name.clone().unwrap_or_default();
            if related(store, node, "resourceclaims", ns, &name) {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("no relationship found between node '{node}' and this object")))
            }
        }
        // authorizeCSINode: a node reaches only its own CSINode (create
        // is checked by NodeRestriction).
        ("storage.k8s.io", "csinodes", None) => {
            let name = a.name.clone().unwrap_or_default();
            if a.verb == "create" || name == node {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("can only access CSINode with the same name as the requesting node")))
            }
        }
        // The graph's VolumeAttachment → node edge: get only, its own.
        ("storage.k8s.io", "volumeattachments", None) => {
            if a.verb != "get" {
                return Some(forbidden(who, a, &format!("can only get individual resources of this type")));
            }
            let name = a.name.clone().unwrap_or_default();
            let va = store.get("volumeattachments.storage.k8s.io", "", &name).cloned().unwrap_or_default();
            if va["spec"]["nodeName"].as_str() == Some(node) {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("no relationship found between node '{node}' and this object")))
            }
        }
        // The graph links a PV to the claim its claimRef names (AddPV);
        // a node may only get it, when a pod of its uses that claim.
        ("", "persistentvolumes", None) => {
            if a.verb != "get" {
                return Some(forbidden(who, a, &format!("can only get individual resources of this type")));
            }
            let name = a.name.clone().unwrap_or_default();
            let pv = store.get("persistentvolumes", "", &name).cloned().unwrap_or_default();
            let r = &pv["spec"]["claimRef"];
            let (cns, cname) = (r["namespace"].as_str().unwrap_or(""), r["name"].as_str().unwrap_or(""));
            if !cname.is_empty() && related(store, node, "persistentvolumeclaims", cns, cname) {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("no relationship found between node '{node}' and this object")))
            }
        }
        ("", "serviceaccounts", Some("token")) => {
            let name = a.name.as_deref().unwrap_or("");
            if a.verb == "create" && related(store, node, "serviceaccounts", ns, name) {
                Some(Decision::Allow)
            } else {
                Some(forbidden(who, a, &format!("no relationship found between node '{node}' and this object")))
            }
        }
        _ => matches(NODE_RULES, a).then_some(Decision::Allow),
    }
}

/// The authorizers' decision (what a SubjectAccessReview answers).
pub fn authorize(store: &Store, who: &Identity, a: &Attrs) -> Decision {
    if who.groups.iter().any(|g| g == "system:masters") {
        return Decision::Allow;
    }
    match node_authorizer(store, who, a) {
        Some(decision) => decision,
        None if rbac(store, who, a) => Decision::Allow,
        None => forbidden(who, a, ""),
    }
}

/// The NodeRestriction admission plugin, for a request the authorizers
/// allowed: what a node may change is its own. `body` is the object sent.
pub fn node_restriction(store: &Store, who: &Identity, a: &Attrs, body: Option<&Value>) -> Decision {
    let Some(node) = node_of(who) else { return Decision::Allow };
    let writes = !READ.contains(&a.verb.as_str());
    if !writes {
        return Decision::Allow;
    }
    let deny = |m: String| Decision::Deny(m);
    let name = a.name.clone().or_else(|| body.and_then(|b| b["metadata"]["name"].as_str().map(str::to_string))).unwrap_or_default();
    match (a.group.as_str(), a.resource.as_str(), a.sub.as_deref()) {
        ("", "nodes", _) if name != node => deny(format!("node \"{node}\" is not allowed to modify node \"{name}\"")),
        ("storage.k8s.io", "csinodes", _) if name != node => deny(format!("node \"{node}\" is not allowed to modify CSINode \"{name}\"")),
        ("coordination.k8s.io", "leases", _) if a.ns.as_deref() != Some("kube-node-lease") || name != node => {
            deny("can only access node lease with the same name as the requesting node".to_string())
        }
        ("", "pods", None) if a.verb == "create" => {
            let pod = body.cloned().unwrap_or_default();
            if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
                deny(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"))
            } else if pod["spec"]["nodeName"].as_str() != Some(node) {
                deny(format!("node \"{node}\" can only create pods with spec.nodeName set to itself"))
            } else {
                Decision::Allow
            }
        }
        ("", "pods", sub) => {
            let ns = a.ns.as_deref().unwrap_or("");
            match store.get("pods", ns, &name) {
                Some(p) if p["spec"]["nodeName"].as_str() != Some(node) => {
                    let what = match sub {
                        Some("status") => "update status of",
                        _ if a.verb == "delete" => "delete",
                        _ => "modify",
                    };
                    deny(format!("node \"{node}\" can only {what} pods with spec.nodeName set to itself"))
                }
                _ => Decision::Allow,
            }
        }
        _ => Decision::Allow,
    }
}
