//! The node API on `address:port` (10250), HTTPS, what the apiserver and
//! metrics collectors call on a kubelet: every request is authenticated and
//! authorized (auth.rs), then served:
//!
//! - `/healthz`; `/pods` (the pods the node runs, as a PodList);
//! - `/stats/summary` and `/metrics/resource` (stats.rs); `/spec`, `/configz`,
//!   `/runningpods`;
//! - `/containerLogs/{ns}/{pod}/{container}` (logs.rs);
//! - `/exec/…`, `/attach/{ns}/{pod}[/{uid}]/{container}` and
//!   `/portForward/{ns}/{pod}[/{uid}]` proxied to the runtime's streaming server
//!   (stream.rs); `/run/{ns}/{pod}[/{uid}]/{container}?cmd=…` runs a command and
//!   returns its output.
//!
//! With `readOnlyPort`, the reading paths are also served on plain HTTP
//! without authentication, as kubelet's read-only port does.
//!
//! Pods are found by namespace and name among those the node runs (a static
//! pod by its mirror's name), containers through the runtime by the pod's UID
//! and the container's name.

mod containers;
mod listen;

pub use self::listen::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::FutureExt;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::auth::{Gate, Refusal, User, attributes};
use super::logs::{LogOptions, form_pairs};
use super::stream;
use crate::pods::store::StatusStore;
use crate::runtime::labels::{CONTAINER_NAME, POD_UID};
use crate::runtime::{Runtime, cri};

/// The read-only port's paths: kubelet's InstallDefaultHandlers.
pub const READ_ONLY_PATHS: [&str; 11] = [
    "/healthz",
    "/healthz/ping",
    "/healthz/log",
    "/healthz/syncloop",
    "/pods",
    "/spec",
    "/stats/summary",
    "/metrics",
    "/metrics/cadvisor",
    "/metrics/resource",
    "/metrics/probes",
];

/// What the node API serves from.
pub struct NodeApi {
    pub runtime: Arc<dyn Runtime>,
    pub statuses: StatusStore,
    pub gate: Gate,
    pub stats: super::stats::Collector,
    pub info: MachineInfo,
    pub probe_counts: Arc<crate::probes::metrics::ProbeCounts>,
    /// kubelet's own families: runtime operations, PLEG, pod and container
    /// starts, certificates.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `enableDebuggingHandlers`: container logs, exec, attach,
    /// port-forward and run are served.
    pub debugging: bool,
    /// `enableSystemLogHandler`: the directory `/logs/` serves (/var/log).
    pub system_logs: Option<std::path::PathBuf>,
    /// `podLogsDir`: container logs are read only from below it.
    pub pod_logs_dir: std::path::PathBuf,
    /// `streamingConnectionIdleTimeout`; zero is none.
    pub streaming_idle: Duration,
    /// The KubeletFineGrainedAuthz gate: off, /pods, /healthz and /configz
    /// need nodes/proxy, as before 1.32.
    pub fine_grained_authz: bool,
}

/// What `/spec` and `/configz` report.
#[derive(Debug, Clone, Default)]
pub struct MachineInfo {
    pub num_cores: i64,
    pub memory_capacity: i64,
    /// The effective configuration, as KubeletConfiguration fields (no
    /// secrets: headers of the manifest URL are left out).
    pub config: serde_json::Value,
}

impl MachineInfo {
    /// cAdvisor's MachineInfo, the fields nodelet knows.
    fn spec(&self) -> serde_json::Value {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        serde_json::json!({
            "num_cores": self.num_cores,
            "memory_capacity": self.memory_capacity,
            "machine_id": read("/etc/machine-id"),
            "system_uuid": read("/sys/class/dmi/id/product_uuid"),
            "boot_id": read("/proc/sys/kernel/random/boot_id"),
        })
    }
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(message.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn prometheus(body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

fn refused(r: &Refusal) -> Response<Body> {
    let code = match r {
        Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
        Refusal::AuthenticationError(detail) => {
            tracing::warn!(error = %detail, "node API: unable to authenticate the request due to an error");
            StatusCode::UNAUTHORIZED
        }
        Refusal::AuthorizationError { detail, .. } => {
            tracing::warn!(error = %detail, "node API: unable to authorize the request due to an error");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    text(code, r.to_string())
}

/// The query flag kubelet reads: `1` or `true`; the apiserver sends
/// `input`/`output`/`error`, clients that call the node directly may send
/// `stdin`/`stdout`/`stderr`.
fn flag(q: &[(String, String)], names: &[&str]) -> bool {
    q.iter().any(|(k, v)| names.contains(&k.as_str()) && (v == "1" || v == "true"))
}

impl NodeApi {
    /// Serves one request from `user` (the client certificate's, if the
    /// handshake verified one).
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, cert_user: Option<User>) -> Response<Body> {
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let user = match self.gate.authenticate(cert_user.as_ref(), bearer.as_deref()).await {
            Ok(u) => u,
            Err(r) => return refused(&r),
        };
        let path = req.uri().path().to_string();
        let (verb, mut subs) = attributes(req.method(), &path);
        if !self.fine_grained_authz {
            subs.retain(|s| !matches!(*s, "pods" | "healthz" | "configz"));
        }
        if let Err(r) = self.gate.authorize(&user, verb, &subs).await {
            tracing::debug!(user = %user.name, verb, subresources = ?subs, %path, "node API request refused");
            return refused(&r);
        }
        self.route(req).await
    }

    /// The read-only port (`readOnlyPort`): plain HTTP, no authentication,
    /// exactly kubelet's default handlers (its read-only server installs
    /// no debugging handler): health, pods, spec, stats and metrics;
    /// `/runningpods` is a debugging path and is not served.
    pub async fn handle_read_only(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        if req.method() != Method::GET || !READ_ONLY_PATHS.contains(&path.as_str()) {
            return text(StatusCode::NOT_FOUND, format!("404 page not found: {path}"));
        }
        self.route(req).await
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let q = form_pairs(req.uri().query().unwrap_or(""));
        let parts: Vec<String> = path.trim_matches('/').split('/').map(str::to_string).collect();
        let p: Vec<&str> = parts.iter().map(String::as_str).collect();
        match (req.method().clone(), p.as_slice()) {
            // kubelet's InstallDebuggingDisabledHandlers: with
            // enableDebuggingHandlers false these answer 405, not 404.
            (_, [first, ..]) if !self.debugging && DEBUGGING_PATHS.contains(first) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "Debug endpoints are disabled.")
            }
            (Method::GET, ["healthz"] | ["healthz", "ping" | "log" | "syncloop"]) => text(StatusCode::OK, "ok"),
            (Method::GET, ["pods"]) => self.pods(),
            (Method::GET, ["runningpods"]) => self.running_pods().await,
            (Method::GET, ["spec"]) => json(&self.info.spec()),
            (Method::GET, ["configz"]) => json(&serde_json::json!({"kubeletconfig": self.info.config})),
            (Method::GET, ["stats", "summary"]) => match self.stats.summary().await {
                Ok(v) => json(&v),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot get the container stats: {e}")),
            },
            (Method::GET, ["metrics", "probes"]) => prometheus(self.probe_metrics().await),
            (Method::GET, ["metrics", "cadvisor"]) => prometheus(self.stats.cadvisor_metrics().await),
            (Method::GET, ["metrics"]) => prometheus(self.kubelet_metrics().await),
            (Method::GET, ["metrics", "resource"]) => {
                let mut r = Response::new(Body::from(self.stats.resource_metrics().await));
                r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            (Method::GET, ["logs", ..]) if self.system_logs.is_some() => {
                let root = self.system_logs.as_deref().expect("checked by the guard");
                super::node_logs::serve(root, path.trim_start_matches('/').strip_prefix("logs").unwrap_or("")).await
            }
            // A path that names the pod's UID reaches that pod only: one
            // deleted and created again under its name is another pod.
            (_, ["exec" | "attach" | "run", ns, pod, uid, _] | ["portForward", ns, pod, uid]) if self.pod_uid(ns, pod).as_deref() != Some(*uid) => {
                text(StatusCode::NOT_FOUND, "pod not found")
            }
            (Method::GET, ["containerLogs", ns, pod, container]) => self.logs(ns, pod, container, req.uri().query().unwrap_or("")).await,
            (Method::GET | Method::POST, ["exec", ns, pod, container] | ["exec", ns, pod, _, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.exec(req, &ns, &pod, &container, &q).await
            }
            (Method::GET | Method::POST, ["attach", ns, pod, container] | ["attach", ns, pod, _, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.attach(req, &ns, &pod, &container, &q).await
            }
            (Method::GET | Method::POST, ["portForward", ns, pod] | ["portForward", ns, pod, _]) => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                self.port_forward(req, &ns, &pod, &q).await
            }
            (Method::POST, ["run", ns, pod, container] | ["run", ns, pod, _, container]) => self.run(ns, pod, container, &q).await,
            _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
        }
    }

    fn pods(&self) -> Response<Body> {
        let items: Vec<serde_json::Value> = self
            .statuses
            .snapshot()
            .values()
            .map(|r| {
                let mut pod = (*r.pod).clone();
                pod.status = Some(r.status.clone());
                serde_json::to_value(pod).unwrap_or_default()
            })
            .collect();
        json(&serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
    }

    /// `/metrics/probes`: `prober_probe_total` by container and result.
    async fn probe_metrics(&self) -> String {
        let containers = self.runtime.list_containers(None).await.unwrap_or_default();
        let labels: HashMap<&str, &HashMap<String, String>> = containers.iter().map(|c| (c.id.as_str(), &c.labels)).collect();
        let mut out = String::from(
            "# HELP prober_probe_total [ALPHA] Cumulative number of a liveness, readiness or startup probe for a container by result.\n\
             # TYPE prober_probe_total counter\n",
        );
        for (id, kind, result, n) in self.probe_counts.snapshot(&|id| labels.contains_key(id)) {
            let Some(l) = labels.get(id.as_str()) else { continue };
            let get = |k: &str| l.get(k).map_or("", String::as_str);
            out.push_str(&format!(
                "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{}\",result=\"{}\"}} {n}\n",
                get(CONTAINER_NAME),
                get(crate::runtime::labels::POD_NAMESPACE),
                get(crate::runtime::labels::POD_NAME),
                get(POD_UID),
                kind.as_str(),
                result.as_str()
            ));
        }
        out
    }

    /// `/metrics`: kubelet's families for what nodelet has.
    async fn kubelet_metrics(&self) -> String {
        let containers = self.runtime.list_containers(None).await.unwrap_or_default();
        let ready = crate::runtime::ready_sandboxes();
        let pods = self.runtime.list_pod_sandbox(Some(ready)).await.map(|s| s.len()).unwrap_or(0);
        let mut by_state: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for c in &containers {
            let state = match cri::ContainerState::try_from(c.state) {
                Ok(cri::ContainerState::ContainerCreated) => "created",
                Ok(cri::ContainerState::ContainerRunning) => "running",
                Ok(cri::ContainerState::ContainerExited) => "exited",
                _ => "unknown",
            };
            *by_state.entry(state).or_default() += 1;
        }
        let mut out = format!(
            "# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\n\
             kubelet_node_name{{node=\"{}\"}} 1\n\
             # HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\n\
             kubelet_running_pods {pods}\n\
             # HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\n",
            self.stats.node_name
        );
        for (state, n) in by_state {
            out.push_str(&format!("kubelet_running_containers{{container_state=\"{state}\"}} {n}\n"));
        }
        out.push_str(&self.metrics.render());
        out.push_str(&self.stats.volume_metrics().await);
        out
    }

    /// `/runningpods`: the pods as the runtime has them (ready sandboxes and
    /// their running containers).
    async fn running_pods(&self) -> Response<Body> {
        let ready = crate::runtime::ready_sandboxes();
        let running = crate::runtime::running_containers();
        let (sandboxes, containers) = match (self.runtime.list_pod_sandbox(Some(ready)).await, self.runtime.list_containers(Some(running)).await) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let items: Vec<serde_json::Value> = sandboxes
            .iter()
            .map(|sb| {
                let meta = sb.metadata.clone().unwrap_or_default();
                let names: Vec<serde_json::Value> = containers
                    .iter()
                    .filter(|c| c.pod_sandbox_id == sb.id)
                    .map(|c| serde_json::json!({"name": c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(), "image": c.image_ref}))
                    .collect();
                serde_json::json!({"metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid}, "spec": {"containers": names}})
            })
            .collect();
        json(&serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
    }

}

/// The first path segments kubelet turns off with enableDebuggingHandlers.
const DEBUGGING_PATHS: &[&str] = &["run", "exec", "attach", "portForward", "containerLogs", "runningpods", "debug", "logs"];
