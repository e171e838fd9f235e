//! The container paths: logs, exec, attach, port-forward and run, each
//! finding its pod (and UID, when given) among those the node runs and its
//! container through the runtime.

use super::*;

impl NodeApi {
    /// The pod's UID, by namespace and name.
    pub(super) fn pod_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.statuses.snapshot().values().find_map(|r| {
            (r.pod.metadata.namespace.as_deref() == Some(ns) && r.pod.metadata.name.as_deref() == Some(name))
                .then(|| r.pod.metadata.uid.clone().unwrap_or_default())
        })
    }

    /// The pod's instances of a container, newest first.
    pub(super) async fn instances(&self, uid: &str, container: &str) -> Result<Vec<cri::Container>, Response<Body>> {
        let filter = cri::ContainerFilter {
            label_selector: HashMap::from([(POD_UID.to_string(), uid.to_string()), (CONTAINER_NAME.to_string(), container.to_string())]),
            ..Default::default()
        };
        let mut list = self
            .runtime
            .list_containers(Some(filter))
            .await
            .map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        list.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(list)
    }

    /// The running instance of a container, for exec and attach.
    pub(super) async fn running(&self, ns: &str, pod: &str, container: &str) -> Result<String, Response<Body>> {
        let uid = self.pod_uid(ns, pod).ok_or_else(|| text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on this node")))?;
        let list = self.instances(&uid, container).await?;
        list.into_iter()
            .find(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| c.id)
            .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("container {container:?} in pod {ns}/{pod} is not running")))
    }

    pub(super) async fn logs(&self, ns: &str, pod: &str, container: &str, query: &str) -> Response<Body> {
        let o = match LogOptions::from_query(query) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let Some(uid) = self.pod_uid(ns, pod) else {
            return text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on this node"));
        };
        let list = match self.instances(&uid, container).await {
            Ok(l) => l,
            Err(r) => return r,
        };
        let picked = if o.previous { list.get(1) } else { list.first() };
        let Some(c) = picked else {
            let what = if o.previous { "previous terminated container" } else { "container" };
            return text(StatusCode::BAD_REQUEST, format!("{what} {container:?} in pod {pod:?} not found"));
        };
        let status = match self.runtime.container_status(&c.id).await {
            Ok(s) => s,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let path = std::path::PathBuf::from(&status.log_path);
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let runtime = self.runtime.clone();
        let id = c.id.clone();
        let running = move || {
            let (runtime, id) = (runtime.clone(), id.clone());
            async move {
                runtime
                    .container_status(&id)
                    .await
                    .is_ok_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
            }
            .boxed()
        };
        let shown = path.display().to_string();
        let (root, pod_dir) = (self.pod_logs_dir.clone(), format!("{ns}_{pod}_{uid}"));
        // Opened here, so that a refusal is the caller's answer.
        if let Err(e) = crate::server::logs::open_confined(&path, &root, &pod_dir).await {
            tracing::warn!(file = %shown, error = %e, "a container log was not read");
            let code = if e.kind() == std::io::ErrorKind::NotFound { StatusCode::NOT_FOUND } else { StatusCode::FORBIDDEN };
            return text(code, format!("cannot read the log of container {container:?} in pod {pod:?}: {e}"));
        }
        tokio::spawn(async move {
            if let Err(e) = crate::server::logs::stream(path, (&root, &pod_dir), o, tx, running).await {
                tracing::debug!(file = %shown, error = %e, "reading a container log failed");
            }
        });
        let body = Body::from_stream(futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok::<_, std::io::Error>));
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
        r
    }

    pub(super) async fn exec(&self, req: Request<Incoming>, ns: &str, pod: &str, container: &str, q: &[(String, String)]) -> Response<Body> {
        let cmd: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
        if cmd.is_empty() {
            return text(StatusCode::BAD_REQUEST, "you must specify at least one command for the container");
        }
        let id = match self.running(ns, pod, container).await {
            Ok(id) => id,
            Err(r) => return r,
        };
        let exec = cri::ExecRequest {
            container_id: id,
            cmd,
            tty: flag(q, &["tty"]),
            stdin: flag(q, &["input", "stdin"]),
            stdout: flag(q, &["output", "stdout"]),
            stderr: flag(q, &["error", "stderr"]),
        };
        // What the session starts is ended when its client goes (see
        // exec_reaper.rs); without the container's PID it is left as is.
        let session = match self.runtime.container_pid(&exec.container_id).await {
            Ok(Some(init)) => Some(crate::server::exec_reaper::Session::begin(init, exec.cmd.clone()).await),
            _ => None,
        };
        let url = match self.runtime.exec(exec).await {
            Ok(url) => url,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let resp = stream::proxy(req, &url, self.streaming_idle, Some(closed_tx)).await;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(s) = session
        {
            tokio::spawn(s.watch(async move {
                let _ = closed_rx.await;
            }));
        }
        resp
    }

    pub(super) async fn attach(&self, req: Request<Incoming>, ns: &str, pod: &str, container: &str, q: &[(String, String)]) -> Response<Body> {
        let id = match self.running(ns, pod, container).await {
            Ok(id) => id,
            Err(r) => return r,
        };
        let attach = cri::AttachRequest {
            container_id: id,
            tty: flag(q, &["tty"]),
            stdin: flag(q, &["input", "stdin"]),
            stdout: flag(q, &["output", "stdout"]),
            stderr: flag(q, &["error", "stderr"]),
        };
        match self.runtime.attach(attach).await {
            Ok(url) => stream::proxy(req, &url, self.streaming_idle, None).await,
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    pub(super) async fn port_forward(&self, req: Request<Incoming>, ns: &str, pod: &str, q: &[(String, String)]) -> Response<Body> {
        let Some(uid) = self.pod_uid(ns, pod) else {
            return text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} not found on this node"));
        };
        let filter = cri::PodSandboxFilter {
            label_selector: HashMap::from([(POD_UID.to_string(), uid)]),
            ..Default::default()
        };
        let sandboxes = match self.runtime.list_pod_sandbox(Some(filter)).await {
            Ok(s) => s,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let Some(sb) = sandboxes.into_iter().filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32).max_by_key(|s| s.created_at) else {
            return text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} has no ready sandbox"));
        };
        let mut ports = Vec::new();
        for (k, v) in q.iter().filter(|(k, _)| k == "port" || k == "ports") {
            for p in v.split(',').filter(|p| !p.is_empty()) {
                match p.trim().parse::<u16>() {
                    Ok(n) if n > 0 => ports.push(n as i32),
                    _ => return text(StatusCode::BAD_REQUEST, format!("{k}: invalid port {p:?}")),
                }
            }
        }
        match self.runtime.port_forward(cri::PortForwardRequest { pod_sandbox_id: sb.id, port: ports }).await {
            Ok(url) => stream::proxy(req, &url, self.streaming_idle, None).await,
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    /// `/run`: the command's output, as kubelet returns it.
    pub(super) async fn run(&self, ns: &str, pod: &str, container: &str, q: &[(String, String)]) -> Response<Body> {
        let cmd: Vec<String> = q
            .iter()
            .filter(|(k, _)| k == "cmd")
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .collect();
        if cmd.is_empty() {
            return text(StatusCode::BAD_REQUEST, "missing cmd");
        }
        let id = match self.running(ns, pod, container).await {
            Ok(id) => id,
            Err(r) => return r,
        };
        match self.runtime.exec_sync(&id, &cmd, 60).await {
            Ok(out) => {
                let mut body = out.stdout;
                body.extend(out.stderr);
                Response::new(Body::from(body))
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}
