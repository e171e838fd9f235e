//! Request handling with the apiserver's semantics: routing of the
//! REST paths, authentication and a coarse authorization, list and watch
//! (resourceVersion, bookmarks, 410 Gone, selectors), create with
//! server-side defaulting, update with optimistic concurrency (409), the
//! status and approval subresources, patch, and graceful pod deletion.

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::authz;
use super::controllers;
use super::patch;
use super::pods;
use super::pki::Ca;
use super::select::Selector;
use super::store::{Change, Store};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

pub struct State {
    pub store: Mutex<Store>,
    pub ca: Ca,
    /// Bearer tokens (token.csv style and bootstrap tokens).
    pub tokens: Mutex<HashMap<String, Identity>>,
    /// Requests served, by user.
    pub requests: Mutex<HashMap<String, u64>>,
    /// How long certificates issued from CSRs last.
    pub cert_lifetime: Mutex<Duration>,
    /// Approve kubelet client CSRs as kube-controller-manager's approver
    /// does (from bootstrappers, and renewals by the node itself).
    pub auto_approve: Mutex<bool>,
    /// How often watches get a bookmark.
    pub bookmark_every: Duration,
    /// When service-account tokens issued by TokenRequest expire.
    pub token_expiry: Mutex<HashMap<String, std::time::SystemTime>>,
    /// Caps the lifetime of issued service-account tokens (tests of refresh).
    pub token_max_lifetime: Mutex<Option<Duration>>,
    /// TokenRequests served: (namespace/serviceaccount, audiences, pod name).
    pub token_requests: Mutex<Vec<(String, Vec<String>, String)>>,
    /// Until when the apiserver is "warming up" after a restart: its
    /// authorizers' caches are empty, so every caller but system:masters
    /// gets 403, as a real apiserver answers for its first seconds.
    pub warm_until: Mutex<Option<std::time::Instant>>,
    /// Requests refused with 403: "user verb resource namespace/name: reason".
    pub denied: Mutex<Vec<String>>,
    /// SubjectAccessReviews asked: "user verb resource/subresource".
    pub access_reviews: Mutex<Vec<String>>,
    /// Lists allowed: when, by whom, of what ("pods", "endpointslices.discovery.k8s.io").
    pub lists: Mutex<Vec<(std::time::Instant, String, String)>>,
    /// The test node's network namespace, where kubelets are called.
    pub netns: String,
    /// The client certificate the apiserver calls kubelets with.
    pub kubelet_client: super::pki::Pair,
    /// The node lifecycle controller and taint manager (controllers.rs).
    pub lifecycle: Mutex<super::controllers::Lifecycle>,
    /// `--service-cluster-ip-range`: one CIDR per family, the primary
    /// first (10.96.0.0/12 alone unless a test makes the cluster dual-stack).
    pub service_cidrs: Mutex<Vec<ipnetwork::IpNetwork>>,
}

struct Resource {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

const RESOURCES: &[Resource] = &[
    Resource { group: "", plural: "pods", kind: "Pod", namespaced: true },
    Resource { group: "", plural: "nodes", kind: "Node", namespaced: false },
    Resource { group: "", plural: "events", kind: "Event", namespaced: true },
    Resource { group: "", plural: "namespaces", kind: "Namespace", namespaced: false },
    Resource { group: "", plural: "configmaps", kind: "ConfigMap", namespaced: true },
    Resource { group: "", plural: "secrets", kind: "Secret", namespaced: true },
    Resource { group: "", plural: "persistentvolumeclaims", kind: "PersistentVolumeClaim", namespaced: true },
    Resource { group: "", plural: "persistentvolumes", kind: "PersistentVolume", namespaced: false },
    Resource { group: "", plural: "services", kind: "Service", namespaced: true },
    Resource { group: "", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true },
    Resource { group: "coordination.k8s.io", plural: "leases", kind: "Lease", namespaced: true },
    Resource { group: "storage.k8s.io", plural: "storageclasses", kind: "StorageClass", namespaced: false },
    Resource { group: "storage.k8s.io", plural: "csinodes", kind: "CSINode", namespaced: false },
    Resource { group: "storage.k8s.io", plural: "csidrivers", kind: "CSIDriver", namespaced: false },
    Resource { group: "storage.k8s.io", plural: "volumeattachments", kind: "VolumeAttachment", namespaced: false },
    Resource { group: "node.k8s.io", plural: "runtimeclasses", kind: "RuntimeClass", namespaced: false },
    Resource { group: "resource.k8s.io", plural: "deviceclasses", kind: "DeviceClass", namespaced: false },
    Resource { group: "resource.k8s.io", plural: "resourceclaims", kind: "ResourceClaim", namespaced: true },
    Resource { group: "resource.k8s.io", plural: "resourceclaimtemplates", kind: "ResourceClaimTemplate", namespaced: true },
    Resource { group: "resource.k8s.io", plural: "resourceslices", kind: "ResourceSlice", namespaced: false },
    Resource { group: "scheduling.k8s.io", plural: "priorityclasses", kind: "PriorityClass", namespaced: false },
    Resource { group: "policy", plural: "poddisruptionbudgets", kind: "PodDisruptionBudget", namespaced: true },
    Resource { group: "certificates.k8s.io", plural: "certificatesigningrequests", kind: "CertificateSigningRequest", namespaced: false },
    Resource { group: "events.k8s.io", plural: "events", kind: "Event", namespaced: true },
    Resource { group: "discovery.k8s.io", plural: "endpointslices", kind: "EndpointSlice", namespaced: true },
    Resource { group: "rbac.authorization.k8s.io", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false },
    Resource { group: "rbac.authorization.k8s.io", plural: "clusterroles", kind: "ClusterRole", namespaced: false },
    Resource { group: "rbac.authorization.k8s.io", plural: "roles", kind: "Role", namespaced: true },
    Resource { group: "rbac.authorization.k8s.io", plural: "rolebindings", kind: "RoleBinding", namespaced: true },
    Resource { group: "authorization.k8s.io", plural: "selfsubjectaccessreviews", kind: "SelfSubjectAccessReview", namespaced: false },
    Resource { group: "authorization.k8s.io", plural: "subjectaccessreviews", kind: "SubjectAccessReview", namespaced: false },
    Resource { group: "authentication.k8s.io", plural: "tokenreviews", kind: "TokenReview", namespaced: false },
];

impl Resource {
    fn key(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Where its objects are kept: events.k8s.io's Events are core Events,
    /// one storage served by both APIs, as the apiserver does.
    fn store_key(&self) -> String {
        if self.group == "events.k8s.io" { "events".into() } else { self.key() }
    }

    fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }
}

/// A parsed REST path.
struct Target {
    res: &'static Resource,
    version: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    /// The path after `nodes/{name}/proxy/`.
    rest: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let mut ns = None;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        ns = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let mut tail = String::new();
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        [p, n, "proxy", more @ ..] => {
            tail = more.join("/");
            (*p, Some(n.to_string()), Some("proxy".to_string()))
        }
        _ => return None,
    };
    let res = RESOURCES.iter().find(|r| r.group == group && r.plural == plural)?;
    if !res.namespaced && ns.is_some() {
        return None;
    }
    Some(Target { res, version: version.to_string(), ns, name, sub, rest: tail })
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

pub fn uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .expect("static response parts")
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &v)
}

fn not_found(t: &Target) -> Response<Body> {
    let name = t.name.clone().unwrap_or_default();
    status(404, "NotFound", &format!("{} \"{name}\" not found", t.res.key()))
}

/// The request's verb as the apiserver's RequestInfo names it.
fn verb(method: &Method, t: &Target, q: &HashMap<String, String>) -> &'static str {
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method.as_str(), t.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// The request's attributes; a list or watch with a `metadata.name=`
/// field selector names its object, as the apiserver's RequestInfo does.
fn attrs(method: &Method, t: &Target, q: &HashMap<String, String>) -> authz::Attrs {
    let by_field = q.get("fieldSelector").and_then(|f| {
        f.split(',').find_map(|term| term.strip_prefix("metadata.name=").or_else(|| term.strip_prefix("metadata.name==")).map(str::to_string))
    });
    authz::Attrs {
        verb: verb(method, t, q).to_string(),
        group: t.res.group.to_string(),
        resource: t.res.plural.to_string(),
        sub: t.sub.clone(),
        ns: t.ns.clone(),
        name: t.name.clone().or(by_field),
        fields: q.get("fieldSelector").cloned(),
    }
}

fn deny(state: &State, who: &Identity, t: &Target, a: &authz::Attrs, why: &str) -> Response<Body> {
    let name = a.name.clone().unwrap_or_default();
    state.denied.lock().unwrap().push(format!(
        "{} {} {} {}/{name}: {why}",
        who.user,
        a.verb,
        t.res.key(),
        a.ns.clone().unwrap_or_default()
    ));
    let subject = if name.is_empty() { t.res.key() } else { format!("{} \"{name}\"", t.res.key()) };
    status(403, "Forbidden", &format!("{subject} is forbidden: {why}"))
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The subresources a real apiserver serves by calling the node's kubelet.
fn proxied(t: &Target) -> bool {
    matches!((t.res.plural, t.sub.as_deref()), ("pods", Some("log" | "exec" | "attach" | "portforward")) | ("nodes", Some("proxy")))
}

pub async fn handle(state: Arc<State>, who: Option<Identity>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    if let Some(t) = parse_path(req.uri().path()).filter(proxied) {
        let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::to_string);
        let who = who.or_else(|| bearer.and_then(|t| state.tokens.lock().unwrap().get(&t).cloned()));
        let Some(who) = who else { return status(401, "Unauthorized", "Unauthorized") };
        let a = attrs(req.method(), &t, &query(req.uri()));
        if let authz::Decision::Deny(why) = authz::authorize(&state.store.lock().unwrap(), &who, &a) {
            return deny(&state, &who, &t, &a, &why);
        }
        let (ns, name, sub) = (t.ns.clone().unwrap_or_default(), t.name.clone().unwrap_or_default(), t.sub.clone().unwrap_or_default());
        return super::kubelet_proxy::proxy(state, t.res.plural, &ns, &name, &sub, &t.rest, req).await;
    }
    let (parts, body) = req.into_parts();
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let expired = bearer
        .as_ref()
        .and_then(|t| state.token_expiry.lock().unwrap().get(t).copied())
        .is_some_and(|exp| exp <= std::time::SystemTime::now());
    // No credentials at all: system:anonymous, as an apiserver with
    // anonymous auth on (its default, and kubeadm's: discovery reads
    // kube-public/cluster-info so); RBAC decides what it may do. A token
    // that is presented but unknown or expired is a 401.
    let anonymous = who.is_none() && bearer.is_none();
    let who = who.or_else(|| bearer.filter(|_| !expired).and_then(|t| state.tokens.lock().unwrap().get(&t).cloned()));
    let who = match who {
        Some(who) => who,
        None if anonymous => Identity { user: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] },
        None => return status(401, "Unauthorized", "Unauthorized"),
    };
    *state.requests.lock().unwrap().entry(who.user.clone()).or_default() += 1;
    if parts.uri.path() == "/version" {
        return json_response(StatusCode::OK, &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-nodelet-test"}));
    }
    let Some(t) = parse_path(parts.uri.path()) else {
        return status(404, "NotFound", &format!("the server could not find the requested resource ({})", parts.uri.path()));
    };
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let q = query(&parts.uri);
    let a = attrs(&parts.method, &t, &q);
    let master = who.groups.iter().any(|g| g == "system:masters");
    let warming = state.warm_until.lock().unwrap().is_some_and(|until| std::time::Instant::now() < until);
    if warming && !master {
        return deny(&state, &who, &t, &a, &format!("User \"{}\" cannot {} resource \"{}\": the authorizer is not ready yet", who.user, a.verb, t.res.plural));
    }
    let sent = parse_body(&body).ok();
    let decision = {
        let store = state.store.lock().unwrap();
        match authz::authorize(&store, &who, &a) {
            authz::Decision::Allow => authz::node_restriction(&store, &who, &a, sent.as_ref()),
            deny => deny,
        }
    };
    if let authz::Decision::Deny(why) = decision {
        return deny(&state, &who, &t, &a, &why);
    }
    if a.verb == "list" {
        state.lists.lock().unwrap().push((std::time::Instant::now(), who.user.clone(), t.res.key()));
    }
    let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    match (parts.method.clone(), t.name.is_some()) {
        (Method::GET, false) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => watch(state, &t, &q),
        (Method::GET, false) => list(&state, &t, &q),
        (Method::GET, true) => get(&state, &t),
        (Method::POST, false) if t.res.plural == "selfsubjectaccessreviews" => access_review(&state, Some(&who), &body),
        (Method::POST, false) if t.res.plural == "subjectaccessreviews" => access_review(&state, None, &body),
        (Method::POST, false) if t.res.plural == "tokenreviews" => token_review(&state, &body),
        (Method::POST, false) => create(&state, &t, &who, &body),
        (Method::POST, true) if t.res.plural == "serviceaccounts" && t.sub.as_deref() == Some("token") => {
            token_request(&state, &t, &body)
        }
        (Method::POST, true) if t.res.plural == "pods" && t.sub.as_deref() == Some("eviction") => evict(&state, &t, &body),
        (Method::PUT, true) => update(&state, &t, &body),
        (Method::PATCH, true) => patch_object(&state, &t, &content_type, &body),
        (Method::DELETE, true) => delete(&state, &t, &q, &body),
        (Method::DELETE, false) if t.res.plural != "pods" => delete_collection(&state, &t, &q),
        _ => status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
    }
}

fn selectors(q: &HashMap<String, String>) -> Result<(Selector, Selector), Response<Body>> {
    let labels = Selector::parse(q.get("labelSelector").map_or("", String::as_str)).map_err(|e| status(400, "BadRequest", &e))?;
    let fields = Selector::parse(q.get("fieldSelector").map_or("", String::as_str)).map_err(|e| status(400, "BadRequest", &e))?;
    Ok((labels, fields))
}

fn with_type(t: &Target, mut v: Value) -> Value {
    if t.res.group == "events.k8s.io" {
        v = super::events::to_v1(v);
    }
    v["kind"] = Value::String(t.res.kind.to_string());
    v["apiVersion"] = Value::String(t.res.api_version(&t.version));
    v
}

fn list(state: &State, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let (labels, fields) = match selectors(q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let store = state.store.lock().unwrap();
    let items: Vec<Value> = store
        .list(&t.res.store_key(), t.ns.as_deref())
        .into_iter()
        .filter(|o| labels.matches_labels(o) && fields.matches_fields(o))
        .map(|o| with_type(t, o))
        .collect();
    let v = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(&t.version),
        "metadata": {"resourceVersion": store.rv().to_string()}, "items": items});
    json_response(StatusCode::OK, &v)
}

fn get(state: &State, t: &Target) -> Response<Body> {
    let store = state.store.lock().unwrap();
    match store.get(&t.res.store_key(), t.ns.as_deref().unwrap_or(""), t.name.as_deref().unwrap_or("")) {
        Some(o) => json_response(StatusCode::OK, &with_type(t, o.clone())),
        None => not_found(t),
    }
}

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn gone(rv: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {rv}"), "reason": "Expired", "code": 410})
}

/// A watch stream: the current objects (from version "0" or none), or the
/// changes after the given version (410 Gone when it is expired), then live
/// changes, with bookmarks when asked for, until timeoutSeconds.
fn watch(state: Arc<State>, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let (labels, fields) = match selectors(q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let matches = move |o: &Value| labels.matches_labels(o) && fields.matches_fields(o);
    let key = t.res.store_key();
    let ns = t.ns.clone();
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs).unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let kind = t.res.kind;
    let api_version = t.res.api_version(&t.version);
    let events_v1 = t.res.group == "events.k8s.io";
    let typed = move |mut v: Value| {
        if events_v1 {
            v = super::events::to_v1(v);
        }
        v["kind"] = Value::String(kind.to_string());
        v["apiVersion"] = Value::String(api_version.clone());
        v
    };
    let in_scope = {
        let key = key.clone();
        let ns = ns.clone();
        move |resource: &str, o: &Value| {
            resource == key && ns.as_deref().is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let every = state.bookmark_every;
    tokio::spawn(async move {
        let (mut live, backlog, mut sent_rv) = {
            let store = state.store.lock().unwrap();
            let live = store.subscribe();
            let current = store.rv();
            if rv_param.is_empty() || rv_param == "0" {
                let initial: Vec<(Change, Value)> =
                    store.list(&key, ns.as_deref()).into_iter().filter(|o| matches(o)).map(|o| (Change::Added, o)).collect();
                (live, Ok(initial), current)
            } else {
                match rv_param.parse::<u64>().ok().and_then(|rv| store.since(rv).map(|evs| (rv, evs))) {
                    None => (live, Err(()), current),
                    Some((rv, evs)) => {
                        let mut out = Vec::new();
                        for e in evs.iter().filter(|e| in_scope(&e.resource, &e.object)) {
                            if let Some(line) = transition(e.change, e.old.as_ref(), &e.object, &matches) {
                                out.push(line);
                            }
                        }
                        (live, Ok(out), evs.last().map_or(rv, |e| e.rv).max(rv))
                    }
                }
            }
        };
        match backlog {
            Err(()) => {
                let _ = tx.send(Ok(watch_line("ERROR", &gone(&rv_param)))).await;
                return;
            }
            Ok(items) => {
                for (change, obj) in items {
                    if tx.send(Ok(watch_line(change.as_str(), &typed(obj)))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let rv = state.store.lock().unwrap().rv();
                    let mark = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(Ok(watch_line("BOOKMARK", &mark))).await.is_err() {
                        return;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= sent_rv || !in_scope(&e.resource, &e.object) {
                            continue;
                        }
                        sent_rv = e.rv;
                        if let Some((change, obj)) = transition(e.change, e.old.as_ref(), &e.object, &matches)
                            && tx.send(Ok(watch_line(change.as_str(), &typed(obj)))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(watch_line("ERROR", &gone(&sent_rv.to_string())))).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

/// What a watcher with a selector sees of a change: objects moving into or
/// out of the selection appear as added or deleted.
fn transition(change: Change, old: Option<&Value>, new: &Value, matches: &dyn Fn(&Value) -> bool) -> Option<(Change, Value)> {
    let now = matches(new);
    let before = old.is_some_and(matches);
    match change {
        Change::Deleted => now.then(|| (Change::Deleted, new.clone())),
        Change::Added => now.then(|| (Change::Added, new.clone())),
        Change::Modified => match (before, now) {
            (true, true) => Some((Change::Modified, new.clone())),
            (false, true) => Some((Change::Added, new.clone())),
            (true, false) => Some((Change::Deleted, new.clone())),
            (false, false) => None,
        },
    }
}

/// TokenRequest: issues a bearer token for the service account, bound to
/// the pod named in `boundObjectRef`, that this apiserver then accepts
/// until it expires. The token is JWT-shaped: its claims can be read.
fn token_request(state: &State, t: &Target, body: &Bytes) -> Response<Body> {
    use base64::Engine;
    let req = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ns = t.ns.clone().unwrap_or_default();
    let sa = t.name.clone().unwrap_or_default();
    if state.store.lock().unwrap().get("serviceaccounts", &ns, &sa).is_none() {
        return status(404, "NotFound", &format!("serviceaccounts \"{sa}\" not found"));
    }
    let bound = &req["spec"]["boundObjectRef"];
    if bound["kind"] != "Pod" {
        return status(422, "Invalid", "spec.boundObjectRef.kind: Unsupported value: kubelet tokens are bound to pods");
    }
    let pod_name = bound["name"].as_str().unwrap_or_default().to_string();
    let audiences: Vec<String> = req["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec!["https://kubernetes.default.svc".into()]);
    let mut lifetime = Duration::from_secs(req["spec"]["expirationSeconds"].as_u64().unwrap_or(3600));
    if let Some(max) = *state.token_max_lifetime.lock().unwrap() {
        lifetime = lifetime.min(max);
    }
    let issued = std::time::SystemTime::now();
    let exp = issued + lifetime;
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({
        "aud": audiences, "iat": secs(issued), "exp": secs(exp), "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:{ns}:{sa}"), "jti": uid(),
        "kubernetes.io": {"namespace": ns, "pod": {"name": pod_name, "uid": bound["uid"]}, "serviceaccount": {"name": sa}},
    });
    let token = format!("{}.{}.{}", b64(&json!({"alg": "RS256", "kid": "test"})), b64(&claims), random_suffix(32));
    state.tokens.lock().unwrap().insert(
        token.clone(),
        Identity {
            user: format!("system:serviceaccount:{ns}:{sa}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), "system:authenticated".into()],
        },
    );
    state.token_expiry.lock().unwrap().insert(token.clone(), exp);
    state.token_requests.lock().unwrap().push((format!("{ns}/{sa}"), audiences, pod_name));
    let expiration = k8s_openapi::jiff::Timestamp::from_second(secs(exp) as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut out = req.clone();
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"] = json!({"name": sa, "namespace": ns, "creationTimestamp": now()});
    out["spec"]["expirationSeconds"] = json!(lifetime.as_secs());
    out["status"] = json!({"token": token, "expirationTimestamp": expiration});
    json_response(StatusCode::CREATED, &out)
}

/// SelfSubjectAccessReview (`who` is the caller) and SubjectAccessReview
/// (the user in the spec: what a kubelet's webhook authorizer asks): may
/// that user do this? Answered by the same authorizer requests go through.
fn access_review(state: &State, who: Option<&Identity>, body: &Bytes) -> Response<Body> {
    let mut review = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let spec = &review["spec"];
    let (kind, who) = match who {
        Some(w) => ("SelfSubjectAccessReview", w.clone()),
        None => (
            "SubjectAccessReview",
            Identity {
                user: spec["user"].as_str().unwrap_or("").to_string(),
                groups: serde_json::from_value(spec["groups"].clone()).unwrap_or_default(),
            },
        ),
    };
    let ra = &spec["resourceAttributes"];
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let a = authz::Attrs {
        verb: text(&ra["verb"]).unwrap_or_default(),
        group: text(&ra["group"]).unwrap_or_default(),
        resource: text(&ra["resource"]).unwrap_or_default(),
        sub: text(&ra["subresource"]),
        ns: text(&ra["namespace"]),
        name: text(&ra["name"]),
        fields: text(&ra["fieldSelector"]["rawSelector"]),
    };
    if kind == "SubjectAccessReview" {
        let asked = format!("{} {} {}/{}", who.user, a.verb, a.resource, a.sub.clone().unwrap_or_default());
        state.access_reviews.lock().unwrap().push(asked);
    }
    let decision = authz::authorize(&state.store.lock().unwrap(), &who, &a);
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    review["kind"] = json!(kind);
    review["status"] = match decision {
        authz::Decision::Allow => json!({"allowed": true}),
        authz::Decision::Deny(why) => json!({"allowed": false, "reason": why}),
    };
    json_response(StatusCode::CREATED, &review)
}

/// TokenReview (a kubelet's webhook authenticator asks): whose token is it?
fn token_review(state: &State, body: &Bytes) -> Response<Body> {
    let mut review = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
    let expired = state.token_expiry.lock().unwrap().get(&token).is_some_and(|exp| *exp <= std::time::SystemTime::now());
    let who = state.tokens.lock().unwrap().get(&token).cloned().filter(|_| !expired);
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenReview");
    review["status"] = match who {
        Some(w) => json!({"authenticated": true, "user": {"username": w.user, "groups": w.groups}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json_response(StatusCode::CREATED, &review)
}

fn parse_body(body: &Bytes) -> Result<Value, Response<Body>> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body).map_err(|e| status(400, "BadRequest", &format!("the body is not JSON or YAML: {e}")))
}

/// The defaults and admission a real apiserver applies to a new pod.
fn create(state: &Arc<State>, t: &Target, who: &Identity, body: &Bytes) -> Response<Body> {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    if t.res.group == "events.k8s.io" {
        if let Err(e) = super::events::validate_create(&obj) {
            return status(422, "Invalid", &format!("Event.events.k8s.io {:?} is invalid: {e}", obj["metadata"]["name"].as_str().unwrap_or_default()));
        }
        obj = super::events::to_core(obj);
    }
    let ns = if t.res.namespaced {
        let url_ns = t.ns.clone().unwrap_or_default();
        match obj["metadata"]["namespace"].as_str() {
            Some(n) if !n.is_empty() && n != url_ns => {
                return status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request");
            }
            _ => obj["metadata"]["namespace"] = Value::String(url_ns.clone()),
        }
        url_ns
    } else {
        String::new()
    };
    // NamespaceLifecycle admission: nothing is created in a namespace that
    // does not exist, or that is being deleted.
    if t.res.namespaced {
        let store = state.store.lock().unwrap();
        match store.get("namespaces", "", &ns) {
            None => return status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                return status(403, "Forbidden", &format!("unable to create new content in namespace {ns} because it is being terminated"));
            }
            Some(_) => {}
        }
    }
    let name = match obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{}", random_suffix(5)),
            None => return status(422, "Invalid", "metadata.name: Required value: name or generateName is required"),
        },
    };
    obj["metadata"]["name"] = Value::String(name.clone());
    obj["metadata"]["uid"] = Value::String(uid());
    obj["metadata"]["creationTimestamp"] = Value::String(now());
    obj["metadata"]["generation"] = json!(1);
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
    }
    match t.res.plural {
        "pods" => {
            // The RuntimeClass admission plugin: the class must exist, and
            // its fixed overhead becomes the pod's.
            if let Some(class) = obj["spec"]["runtimeClassName"].as_str().filter(|c| !c.is_empty()) {
                let found = state.store.lock().unwrap().get("runtimeclasses.node.k8s.io", "", class).cloned();
                let Some(rc) = found else {
                    return status(403, "Forbidden", &format!("pod rejected: RuntimeClass \"{class}\" not found"));
                };
                let fixed = rc["overhead"]["podFixed"].clone();
                if !fixed.is_null() {
                    if !obj["spec"]["overhead"].is_null() && obj["spec"]["overhead"] != fixed {
                        return status(403, "Forbidden", "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead");
                    }
                    obj["spec"]["overhead"] = fixed;
                }
            }
            {
                let store = state.store.lock().unwrap();
                if let Err(r) = pods::admit_priority(&store, &mut obj).and_then(|()| pods::check_service_account(&store, &obj)) {
                    return r;
                }
            }
            if let Err(r) = pods::admit(&mut obj) {
                return r;
            }
        }
        "services" => {
            if let Err(message) = allocate_service(state, &mut obj) {
                return status(422, "Invalid", &format!("Service \"{name}\" is invalid: {message}"));
            }
        }
        "namespaces" => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = Value::String(name.clone());
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"] = json!({"phase": "Active"});
        }
        "certificatesigningrequests" => {
            obj["spec"]["username"] = Value::String(who.user.clone());
            obj["spec"]["groups"] = json!(who.groups);
            obj["status"] = json!({});
        }
        _ => {}
    }
    let mut store = state.store.lock().unwrap();
    if store.get(&t.res.store_key(), &ns, &name).is_some() {
        return status(409, "AlreadyExists", &format!("{} \"{name}\" already exists", t.res.key()));
    }
    let stored = store.put(&t.res.store_key(), &ns, &name, obj);
    drop(store);
    if t.res.plural == "certificatesigningrequests" {
        controllers::approve(state, &name);
    }
    json_response(StatusCode::CREATED, &with_type(t, stored))
}

/// The apiserver's Service allocators and defaults: the IP families
/// (`ipFamilyPolicy` SingleStack unless asked; `ipFamilies` from the
/// clusterIPs given, else the cluster's primary family, and the other one
/// too for PreferDualStack on a dual-stack cluster and RequireDualStack,
/// which a single-stack cluster refuses), a cluster IP of each family from
/// that family's service CIDR (10.96.0.0/12 as kubeadm's default, the
/// second family's when the test made the cluster dual-stack) unless
/// given, clusterIP = clusterIPs[0]; none for headless and ExternalName;
/// node ports from 30000-32767 for NodePort and LoadBalancer ports without
/// one.
fn allocate_service(state: &Arc<State>, obj: &mut Value) -> Result<(), String> {
    let spec = &mut obj["spec"];
    if spec["type"].as_str().is_none_or(str::is_empty) {
        spec["type"] = json!("ClusterIP");
    }
    if spec["sessionAffinity"].is_null() {
        spec["sessionAffinity"] = json!("None");
    }
    let kind = spec["type"].as_str().unwrap_or("").to_string();
    if kind == "ExternalName" {
        return Ok(());
    }
    let cidrs = state.service_cidrs.lock().unwrap().clone();
    let family_of = |ip: &str| if ip.contains(':') { "IPv6" } else { "IPv4" };
    let cidr_family = |n: &ipnetwork::IpNetwork| if n.is_ipv6() { "IPv6" } else { "IPv4" };
    let store = state.store.lock().unwrap();
    let services = store.list("services", None);
    // clusterIPs as given (clusterIP alone counts as the first).
    let mut given: Vec<String> = spec["clusterIPs"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
    if given.is_empty()
        && let Some(ip) = spec["clusterIP"].as_str().filter(|s| !s.is_empty())
    {
        given.push(ip.to_string());
    }
    if let (Some(first), Some(ip)) = (given.first(), spec["clusterIP"].as_str().filter(|s| !s.is_empty()))
        && first != ip
    {
        return Err(format!("spec.clusterIPs[0]: Invalid value: {first:?}: must be same as clusterIP"));
    }
    let headless = given.first().is_some_and(|ip| ip == "None");
    let asked: Vec<String> = spec["ipFamilies"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
    let policy = match spec["ipFamilyPolicy"].as_str() {
        Some(p) => p.to_string(),
        None if given.len() > 1 || asked.len() > 1 => {
            return Err("spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple IP families are specified".into());
        }
        None => "SingleStack".into(),
    };
    let dual_cluster = cidrs.len() > 1;
    let primary = cidrs.first().map(cidr_family).unwrap_or("IPv4");
    let mut families: Vec<String> = if !asked.is_empty() {
        asked.clone()
    } else if !headless && !given.is_empty() {
        given.iter().map(|ip| family_of(ip).to_string()).collect()
    } else {
        vec![primary.to_string()]
    };
    match policy.as_str() {
        "SingleStack" => families.truncate(1),
        "PreferDualStack" | "RequireDualStack" => {
            if policy == "RequireDualStack" && !dual_cluster {
                return Err("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into());
            }
            if dual_cluster && families.len() == 1 {
                let other = if families[0] == "IPv4" { "IPv6" } else { "IPv4" };
                families.push(other.to_string());
            }
        }
        other => return Err(format!("spec.ipFamilyPolicy: Unsupported value: {other:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"")),
    }
    for (i, f) in families.iter().enumerate() {
        if !cidrs.iter().any(|n| cidr_family(n) == f) {
            return Err(format!("spec.ipFamilies[{i}]: Invalid value: {f:?}: not configured on this cluster"));
        }
    }
    if !headless {
        for (i, ip) in given.iter().enumerate() {
            if families.get(i).map(String::as_str) != Some(family_of(ip)) {
                return Err(format!("spec.clusterIPs[{i}]: Invalid value: {ip:?}: expected an {} address", families.get(i).map(String::as_str).unwrap_or("IP")));
            }
        }
        let used: std::collections::HashSet<String> =
            services.iter().flat_map(|s| s["spec"]["clusterIPs"].as_array().cloned().unwrap_or_default()).filter_map(|v| v.as_str().map(str::to_string)).collect();
        let mut ips = given.clone();
        for f in families.iter().skip(ips.len()) {
            let Some(net) = cidrs.iter().find(|n| cidr_family(n) == f) else { continue };
            let free = (2u32..(1 << 16)).map(|n| match net {
                ipnetwork::IpNetwork::V4(n4) => std::net::Ipv4Addr::from(u32::from(n4.network()) + n).to_string(),
                ipnetwork::IpNetwork::V6(n6) => std::net::Ipv6Addr::from(u128::from(n6.network()) + n as u128).to_string(),
            });
            match free.into_iter().find(|ip| !used.contains(ip)) {
                Some(ip) => ips.push(ip),
                None => return Err(format!("spec.clusterIPs: Internal error: no {f} address left in {net}")),
            }
        }
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
    } else {
        spec["clusterIPs"] = json!(["None"]);
    }
    spec["ipFamilies"] = json!(families);
    spec["ipFamilyPolicy"] = json!(policy);
    if kind == "NodePort" || kind == "LoadBalancer" {
        let used: std::collections::HashSet<i64> = services
            .iter()
            .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["nodePort"].as_i64())
            .collect();
        let mut next = (30000..=32767).filter(|p| !used.contains(p));
        for p in spec["ports"].as_array_mut().into_iter().flatten() {
            if p["nodePort"].as_i64().is_none_or(|n| n == 0)
                && let Some(n) = next.next()
            {
                p["nodePort"] = json!(n);
            }
        }
    }
    for p in spec["ports"].as_array_mut().into_iter().flatten() {
        if p["protocol"].is_null() {
            p["protocol"] = json!("TCP");
        }
        if p["targetPort"].is_null() {
            p["targetPort"] = p["port"].clone();
        }
    }
    Ok(())
}

/// Applies a new version of an object through the main resource or a
/// subresource: the main resource keeps the stored status, `status` keeps
/// everything but the status, `approval` only takes the conditions.
fn apply_update(t: &Target, current: &Value, mut new: Value) -> Value {
    match t.sub.as_deref() {
        Some("status") => {
            let mut merged = current.clone();
            merged["status"] = new["status"].take();
            merged
        }
        Some("approval") => {
            let mut merged = current.clone();
            merged["status"]["conditions"] = new["status"]["conditions"].take();
            merged
        }
        _ => {
            // Identity and bookkeeping stay the server's.
            for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name"] {
                match current["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            if t.res.plural != "certificatesigningrequests" && !current["status"].is_null() {
                new["status"] = current["status"].clone();
            }
            new
        }
    }
}

fn store_update(state: &Arc<State>, t: &Target, new: Value, check_rv: Option<String>) -> Response<Body> {
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut store = state.store.lock().unwrap();
    let Some(current) = store.get(&t.res.store_key(), &ns, &name).cloned() else { return not_found(t) };
    if let Some(rv) = check_rv.filter(|rv| !rv.is_empty())
        && current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
    {
        return status(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.res.key()),
        );
    }
    let merged = match (t.res.plural, t.sub.as_deref()) {
        ("pods", Some("ephemeralcontainers")) => match pods::ephemeral_update(&current, &new) {
            Ok(v) => v,
            Err(r) => return r,
        },
        ("pods", Some("resize")) => match pods::resize_update(&current, &new) {
            Ok(v) => v,
            Err(r) => return r,
        },
        _ => apply_update(t, &current, new),
    };
    if t.res.plural == "pods"
        && t.sub.is_none()
        && let Err(r) = pods::validate_update(&current, &merged)
    {
        return r;
    }
    if t.res.group == "events.k8s.io"
        && let Err(e) = super::events::validate_update(&super::events::to_v1(current.clone()), &super::events::to_v1(merged.clone()))
    {
        return status(422, "Invalid", &format!("Event.events.k8s.io {name:?} is invalid: {e}"));
    }
    if merged == current {
        return json_response(StatusCode::OK, &with_type(t, current));
    }
    let stored = store.put(&t.res.store_key(), &ns, &name, merged);
    drop(store);
    if t.sub.as_deref() == Some("approval") {
        controllers::spawn_signer(state.clone(), name);
    }
    json_response(StatusCode::OK, &with_type(t, stored))
}

fn update(state: &Arc<State>, t: &Target, body: &Bytes) -> Response<Body> {
    let new = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let rv = new["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let new = if t.res.group == "events.k8s.io" { super::events::to_core(new) } else { new };
    store_update(state, t, new, rv)
}

fn patch_object(state: &Arc<State>, t: &Target, content_type: &str, body: &Bytes) -> Response<Body> {
    let p = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let current = {
        let store = state.store.lock().unwrap();
        match store.get(&t.res.store_key(), t.ns.as_deref().unwrap_or(""), t.name.as_deref().unwrap_or("")) {
            Some(c) => c.clone(),
            None => return not_found(t),
        }
    };
    let events_v1 = t.res.group == "events.k8s.io";
    let mut new = if events_v1 { super::events::to_v1(current.clone()) } else { current.clone() };
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/merge-patch+json" => patch::merge(&mut new, &p),
        "application/strategic-merge-patch+json" => patch::strategic(&mut new, &p),
        "application/json-patch+json" => {
            if let Err(e) = patch::json_patch(&mut new, &p) {
                return status(422, "Invalid", &e);
            }
        }
        other => return status(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format: {other}")),
    }
    // A patch may carry preconditions of its own: a resourceVersion, and a
    // UID that must be the object's (kubelet sends one with status patches).
    if let Some(uid) = p["metadata"]["uid"].as_str()
        && current["metadata"]["uid"].as_str() != Some(uid)
    {
        return status(
            409,
            "Conflict",
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", current["metadata"]["uid"]),
        );
    }
    let rv = p["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let new = if events_v1 { super::events::to_core(new) } else { new };
    store_update(state, t, new, rv)
}

/// Graceful deletion of a bound pod: the deletion timestamp and grace
/// period are set, and the kubelet removes the object once it has stopped
/// the pod (with grace 0).
pub fn mark_deleted(store: &mut Store, pod: &Value, grace: i64) -> Value {
    let mut marked = pod.clone();
    let at = k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(grace);
    marked["metadata"]["deletionTimestamp"] = Value::String(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    store.put("pods", &ns, &name, marked)
}

/// A pod's deletion with `grace` (else its own): graceful when it is bound
/// and the grace is above 0 (marked; its kubelet stops it, then deletes it
/// with grace 0), and a pod already marked with a grace no longer than this
/// one stays as it is; otherwise removed at once. The pod as it is after.
fn delete_pod(store: &mut Store, current: &Value, grace: Option<i64>) -> Value {
    let bound = current["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let grace = grace.unwrap_or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0);
    let already = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
    if bound && grace > 0 {
        if already.is_some_and(|a| a <= grace) {
            return current.clone();
        }
        return mark_deleted(store, current, grace);
    }
    let ns = current["metadata"]["namespace"].as_str().unwrap_or("");
    let name = current["metadata"]["name"].as_str().unwrap_or("");
    store.remove("pods", ns, name).unwrap_or_else(|| current.clone())
}

fn delete(state: &Arc<State>, t: &Target, q: &HashMap<String, String>, body: &Bytes) -> Response<Body> {
    let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let grace = opts["gracePeriodSeconds"].as_i64().or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut store = state.store.lock().unwrap();
    let Some(current) = store.get(&t.res.store_key(), &ns, &name).cloned() else { return not_found(t) };
    let pre = &opts["preconditions"];
    let conflict = (pre["uid"].is_string() && pre["uid"] != current["metadata"]["uid"])
        || (pre["resourceVersion"].is_string() && pre["resourceVersion"] != current["metadata"]["resourceVersion"]);
    if conflict {
        return status(409, "Conflict", &format!("Precondition failed for {} \"{name}\"", t.res.key()));
    }
    if t.res.plural == "pods" {
        let after = delete_pod(&mut store, &current, grace);
        return json_response(StatusCode::OK, &with_type(t, after));
    }
    match store.remove(&t.res.store_key(), &ns, &name) {
        Some(gone) => json_response(StatusCode::OK, &with_type(t, gone)),
        None => not_found(t),
    }
}

/// DELETE on a collection: every object its label and field selectors
/// match goes; the answer lists them.
fn delete_collection(state: &Arc<State>, t: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let (labels, fields) = match selectors(q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut store = state.store.lock().unwrap();
    let matching: Vec<Value> = store.list(&t.res.store_key(), t.ns.as_deref()).into_iter().filter(|o| labels.matches_labels(o) && fields.matches_fields(o)).collect();
    let mut items = Vec::new();
    for o in matching {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
        if let Some(gone) = store.remove(&t.res.store_key(), &ns, &name) {
            items.push(with_type(t, gone));
        }
    }
    let list = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(&t.version), "metadata": {"resourceVersion": store.rv().to_string()}, "items": items});
    json_response(StatusCode::OK, &list)
}

/// The `pods/eviction` subresource, as `kubectl drain` uses it: a pod that
/// is terminal, pending or already being deleted goes without a check; else
/// the one PodDisruptionBudget that selects it (two or more is an error)
/// must allow a disruption (its status, kept by the disruption controller
/// in controllers.rs), or the answer is 429 naming the budget. An evicted
/// pod is deleted as a DELETE would delete it (the Eviction's
/// deleteOptions), and the budget's allowance used up at once.
fn evict(state: &Arc<State>, t: &Target, body: &Bytes) -> Response<Body> {
    let eviction: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let ns = t.ns.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut store = state.store.lock().unwrap();
    let Some(pod) = store.get("pods", &ns, &name).cloned() else { return not_found(t) };
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let exempt = matches!(phase, "Succeeded" | "Failed" | "Pending") || pod["metadata"]["deletionTimestamp"].is_string();
    if !exempt {
        let budgets: Vec<Value> = store
            .list("poddisruptionbudgets.policy", Some(&ns))
            .into_iter()
            .filter(|b| super::controllers::selects_pod(&b["spec"]["selector"], &pod))
            .collect();
        if budgets.len() > 1 {
            return status(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.");
        }
        if let Some(budget) = budgets.into_iter().next() {
            let st = &budget["status"];
            let ready = pod["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
            let current = st["currentHealthy"].as_i64().unwrap_or(0);
            let desired = st["desiredHealthy"].as_i64().unwrap_or(0);
            let allowed = st["disruptionsAllowed"].as_i64().unwrap_or(0);
            let observed = st["observedGeneration"].as_i64().unwrap_or(0) >= budget["metadata"]["generation"].as_i64().unwrap_or(1);
            let budget_name = budget["metadata"]["name"].as_str().unwrap_or("").to_string();
            // An unhealthy pod may go while the budget is met
            // (IfHealthyBudget), or always (AlwaysAllow).
            let ok = if ready {
                observed && allowed > 0
            } else {
                budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" || current >= desired
            };
            if !ok {
                let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 429, "reason": "TooManyRequests",
                    "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                    "details": {"causes": [{"reason": "DisruptionBudget",
                        "message": format!("The disruption budget {budget_name} needs {desired} healthy pods and has {current} currently")}]}});
                return json_response(StatusCode::TOO_MANY_REQUESTS, &body);
            }
            if ready {
                let mut used = budget.clone();
                used["status"]["disruptionsAllowed"] = json!(allowed - 1);
                used["status"]["disruptedPods"][&name] = json!(now());
                store.put("poddisruptionbudgets.policy", &ns, &budget_name, used);
            }
        }
    }
    delete_pod(&mut store, &pod, eviction["deleteOptions"]["gracePeriodSeconds"].as_i64());
    json_response(StatusCode::CREATED, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}))
}
