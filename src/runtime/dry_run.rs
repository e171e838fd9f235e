//! The `--dry-run` runtime: a simulator that prints each CRI call that would
//! change the node, one deterministic line per call, and applies it to an
//! in-memory copy of the runtime instead of the real one.
//!
//! The copy starts from the real runtime's sandboxes, containers and images
//! when the socket answers (read-only calls only), and empty otherwise, so a
//! dry run works on a machine with no containerd at all. Reads (List*,
//! *Status) are answered from the copy and not printed: they happen every
//! second and change nothing. Simulated init containers exit 0 as soon as
//! they start, so the whole start-up plan of a pod is printed.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::cri;
use super::labels;
use super::{Result, Runtime, RuntimeError};

#[derive(Clone)]
struct SimSandbox {
    sandbox: cri::PodSandbox,
}

#[derive(Clone)]
struct SimContainer {
    container: cri::Container,
    status: cri::ContainerStatus,
}

#[derive(Default)]
struct SimState {
    sandboxes: BTreeMap<String, SimSandbox>,
    containers: BTreeMap<String, SimContainer>,
    images: BTreeMap<String, cri::Image>,
    /// Images asked about that neither the copy nor the real runtime has.
    missing: std::collections::BTreeSet<String>,
    clock: i64,
}

impl SimState {
    fn tick(&mut self) -> i64 {
        self.clock += 1_000;
        self.clock
    }
}

/// Where dry-run lines go.
pub type Sink = Box<dyn Write + Send>;

pub struct DryRunRuntime {
    state: Mutex<SimState>,
    out: Mutex<Sink>,
    /// The real runtime, for read-only image lookups, when it answers.
    real: Option<Box<dyn Runtime>>,
}

fn short_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("dryrun-{}", &hex::encode(h.finalize())[..12])
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".into())
}

fn ns_mode(mode: i32) -> &'static str {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Pod) => "POD",
        Ok(cri::NamespaceMode::Container) => "CONTAINER",
        Ok(cri::NamespaceMode::Node) => "NODE",
        Ok(cri::NamespaceMode::Target) => "TARGET",
        Err(_) => "?",
    }
}

fn protocol(p: i32) -> &'static str {
    match cri::Protocol::try_from(p) {
        Ok(cri::Protocol::Udp) => "UDP",
        Ok(cri::Protocol::Sctp) => "SCTP",
        _ => "TCP",
    }
}

fn pod_of(labels: &HashMap<String, String>) -> String {
    format!(
        "{}/{}",
        labels.get(labels::POD_NAMESPACE).map_or("", String::as_str),
        labels.get(labels::POD_NAME).map_or("", String::as_str)
    )
}

/// A plan line that is not a CRI call (an admission refused), on stdout
/// with the CRI lines.
pub fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The one-line rendering of RunPodSandbox.
pub fn render_sandbox(config: &cri::PodSandboxConfig, handler: &str) -> String {
    let md = config.metadata.clone().unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let ns = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
    let dns = config.dns_config.clone().unwrap_or_default();
    let ports: Vec<String> = config
        .port_mappings
        .iter()
        .map(|p| {
            let ip = if p.host_ip.is_empty() { String::new() } else { format!("{}:", p.host_ip) };
            format!("{ip}{}:{}/{}", p.host_port, p.container_port, protocol(p.protocol))
        })
        .collect();
    let mut line = format!(
        "pod={}/{} uid={} attempt={} hostname={:?} network={} pid={} ipc={} cgroup_parent={} log_directory={} \
         dns_servers={} dns_searches={} dns_options={} ports={}",
        md.namespace,
        md.name,
        md.uid,
        md.attempt,
        config.hostname,
        ns_mode(ns.network),
        ns_mode(ns.pid),
        ns_mode(ns.ipc),
        linux.cgroup_parent,
        config.log_directory,
        json(&dns.servers),
        json(&dns.searches),
        json(&dns.options),
        json(&ports),
    );
    if !handler.is_empty() {
        line.push_str(&format!(" runtime_handler={handler}"));
    }
    line
}

/// The one-line rendering of CreateContainer. Environment values are not
/// printed (they may hold secrets), only their names.
pub fn render_container(config: &cri::ContainerConfig) -> String {
    let md = config.metadata.clone().unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let res = linux.resources.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let env: Vec<&str> = config.envs.iter().map(|kv| kv.key.as_str()).collect();
    let mounts: Vec<String> = config
        .mounts
        .iter()
        .map(|m| format!("{}:{}{}", m.host_path, m.container_path, if m.readonly { ":ro" } else { "" }))
        .collect();
    let mut line = format!(
        "pod={} container={} attempt={} image={} command={} args={} working_dir={:?} env={} mounts={} log_path={} \
         cpu_shares={} cpu_quota={} cpu_period={} memory_limit={} oom_score_adj={} privileged={} run_as_user={}",
        pod_of(&config.labels),
        md.name,
        md.attempt,
        config.image.as_ref().map_or("", |i| i.image.as_str()),
        json(&config.command),
        json(&config.args),
        config.working_dir,
        json(&env),
        json(&mounts),
        config.log_path,
        res.cpu_shares,
        res.cpu_quota,
        res.cpu_period,
        res.memory_limit_in_bytes,
        res.oom_score_adj,
        sc.privileged,
        sc.run_as_user.map_or_else(|| "-".to_string(), |u| u.value.to_string()),
    );
    // What the resource managers gave the container, when they gave it
    // anything: exclusive CPUs, NUMA memory, device nodes, CDI devices.
    if !res.cpuset_cpus.is_empty() {
        line.push_str(&format!(" cpuset_cpus={}", res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        line.push_str(&format!(" cpuset_mems={}", res.cpuset_mems));
    }
    if !config.devices.is_empty() {
        let devices: Vec<String> = config.devices.iter().map(|d| format!("{}:{}:{}", d.host_path, d.container_path, d.permissions)).collect();
        line.push_str(&format!(" devices={}", json(&devices)));
    }
    if !config.cdi_devices.is_empty() {
        let cdi: Vec<&str> = config.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        line.push_str(&format!(" cdi_devices={}", json(&cdi)));
    }
    line
}

impl DryRunRuntime {
    /// Starts from the real runtime's state when `real` answers, else empty.
    pub async fn new(real: Option<Box<dyn Runtime>>, out: Sink) -> Self {
        let mut state = SimState { clock: crate::clock::UnixNanos::now().0, ..Default::default() };
        let mut reachable = None;
        if let Some(rt) = real {
            match seed(rt.as_ref(), &mut state).await {
                Ok(()) => reachable = Some(rt),
                Err(e) => tracing::warn!(error = %e, "dry-run: cannot read the runtime; planning against an empty one"),
            }
        }
        Self { state: Mutex::new(state), out: Mutex::new(out), real: reachable }
    }

    fn print(&self, method: &str, rest: &str) {
        let mut out = self.out.lock().expect("dry-run sink lock");
        // A closed stdout must not take the agent down; the line is lost.
        let _ = writeln!(out, "CRI {method} {rest}");
        let _ = out.flush();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().expect("dry-run state lock")
    }

    fn container_line(&self, id: &str) -> String {
        let st = self.lock();
        match st.containers.get(id) {
            Some(c) => format!(
                "id={id} pod={} container={}",
                pod_of(&c.container.labels),
                c.container.metadata.as_ref().map_or("", |m| m.name.as_str())
            ),
            None => format!("id={id}"),
        }
    }

    fn sandbox_line(&self, id: &str) -> String {
        let st = self.lock();
        match st.sandboxes.get(id) {
            Some(s) => format!("id={id} pod={}", pod_of(&s.sandbox.labels)),
            None => format!("id={id}"),
        }
    }
}

async fn seed(rt: &dyn Runtime, st: &mut SimState) -> Result<()> {
    rt.version().await?;
    for s in rt.list_pod_sandbox(None).await? {
        st.sandboxes.insert(s.id.clone(), SimSandbox { sandbox: s });
    }
    for c in rt.list_containers(None).await? {
        let status = match rt.container_status(&c.id).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        st.containers.insert(c.id.clone(), SimContainer { container: c, status });
    }
    Ok(())
}

fn not_found(method: &'static str, id: &str) -> RuntimeError {
    RuntimeError::NotFound { method, what: id.to_string() }
}

#[async_trait]
impl Runtime for DryRunRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "dry-run".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn status(&self) -> Result<cri::StatusResponse> {
        let cond = |t: &str| cri::RuntimeCondition { r#type: t.into(), status: true, ..Default::default() };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![cond("RuntimeReady"), cond("NetworkReady")] }),
            info: HashMap::new(),
        })
    }

    async fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let md = config.metadata.clone().unwrap_or_default();
        let id = short_id(&["sandbox", &md.uid, &md.attempt.to_string()]);
        self.print("RunPodSandbox", &format!("{} -> {id}", render_sandbox(config, handler)));
        let mut st = self.lock();
        let created_at = st.tick();
        st.sandboxes.insert(
            id.clone(),
            SimSandbox {
                sandbox: cri::PodSandbox {
                    id: id.clone(),
                    metadata: Some(md),
                    state: cri::PodSandboxState::SandboxReady as i32,
                    created_at,
                    labels: config.labels.clone(),
                    annotations: config.annotations.clone(),
                    runtime_handler: handler.into(),
                },
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.print("StopPodSandbox", &self.sandbox_line(id));
        let mut st = self.lock();
        let now = st.tick();
        if let Some(s) = st.sandboxes.get_mut(id) {
            s.sandbox.state = cri::PodSandboxState::SandboxNotready as i32;
        }
        for c in st.containers.values_mut().filter(|c| c.container.pod_sandbox_id == id) {
            stop_sim(c, now, 137, "Error");
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.print("RemovePodSandbox", &self.sandbox_line(id));
        let mut st = self.lock();
        st.sandboxes.remove(id);
        st.containers.retain(|_, c| c.container.pod_sandbox_id != id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let st = self.lock();
        let s = st.sandboxes.get(id).ok_or_else(|| not_found("PodSandboxStatus", id))?;
        Ok(cri::PodSandboxStatus {
            id: s.sandbox.id.clone(),
            metadata: s.sandbox.metadata.clone(),
            state: s.sandbox.state,
            created_at: s.sandbox.created_at,
            network: None,
            labels: s.sandbox.labels.clone(),
            annotations: s.sandbox.annotations.clone(),
            runtime_handler: s.sandbox.runtime_handler.clone(),
        })
    }

    async fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        let st = self.lock();
        let f = filter.unwrap_or_default();
        Ok(st
            .sandboxes
            .values()
            .map(|s| &s.sandbox)
            .filter(|s| f.id.is_empty() || s.id == f.id)
            .filter(|s| f.state.as_ref().is_none_or(|v| v.state == s.state))
            .filter(|s| f.label_selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &cri::ContainerConfig,
        _sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let md = config.metadata.clone().unwrap_or_default();
        let id = short_id(&["container", sandbox_id, &md.name, &md.attempt.to_string()]);
        self.print("CreateContainer", &format!("sandbox={sandbox_id} {} -> {id}", render_container(config)));
        let mut st = self.lock();
        if !st.sandboxes.contains_key(sandbox_id) {
            return Err(not_found("CreateContainer", sandbox_id));
        }
        let created_at = st.tick();
        let image = config.image.clone();
        let container = cri::Container {
            id: id.clone(),
            pod_sandbox_id: sandbox_id.into(),
            metadata: Some(md.clone()),
            image: image.clone(),
            image_ref: image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
            state: cri::ContainerState::ContainerCreated as i32,
            created_at,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            image_id: String::new(),
        };
        let status = cri::ContainerStatus {
            id: id.clone(),
            metadata: Some(md),
            state: cri::ContainerState::ContainerCreated as i32,
            created_at,
            image,
            image_ref: container.image_ref.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: config.log_path.clone(),
            ..Default::default()
        };
        st.containers.insert(id.clone(), SimContainer { container, status });
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.print("StartContainer", &self.container_line(id));
        let mut st = self.lock();
        let now = st.tick();
        let c = st.containers.get_mut(id).ok_or_else(|| not_found("StartContainer", id))?;
        c.status.started_at = now;
        if c.container.annotations.get(labels::CONTAINER_KIND).is_some_and(|k| k == "init") {
            stop_sim(c, now, 0, "Completed");
        } else {
            c.container.state = cri::ContainerState::ContainerRunning as i32;
            c.status.state = c.container.state;
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        self.print("StopContainer", &format!("{} timeout={timeout_secs}", self.container_line(id)));
        let mut st = self.lock();
        let now = st.tick();
        if let Some(c) = st.containers.get_mut(id) {
            // As if the container died of its stop signal.
            stop_sim(c, now, 143, "Error");
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.print("RemoveContainer", &self.container_line(id));
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        let st = self.lock();
        let f = filter.unwrap_or_default();
        Ok(st
            .containers
            .values()
            .map(|c| &c.container)
            .filter(|c| f.id.is_empty() || c.id == f.id)
            .filter(|c| f.pod_sandbox_id.is_empty() || c.pod_sandbox_id == f.pod_sandbox_id)
            .filter(|c| f.state.as_ref().is_none_or(|v| v.state == c.state))
            .filter(|c| f.label_selector.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn container_pid(&self, _id: &str) -> Result<Option<u32>> {
        Ok(None)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let st = self.lock();
        st.containers.get(id).map(|c| c.status.clone()).ok_or_else(|| not_found("ContainerStatus", id))
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout_secs: i64) -> Result<cri::ExecSyncResponse> {
        self.print("ExecSync", &format!("{} cmd={} timeout={timeout_secs}", self.container_line(id), json(&cmd)));
        Ok(cri::ExecSyncResponse::default())
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<String> {
        self.print("Exec", &format!("{} cmd={}", self.container_line(&req.container_id), json(&req.cmd)));
        Err(RuntimeError::Call { method: "streaming", code: tonic::Code::Unimplemented, message: "a dry run opens no streams".into() })
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String> {
        self.print("Attach", &self.container_line(&req.container_id));
        Err(RuntimeError::Call { method: "streaming", code: tonic::Code::Unimplemented, message: "a dry run opens no streams".into() })
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String> {
        self.print("PortForward", &format!("sandbox={} ports={:?}", req.pod_sandbox_id, req.port));
        Err(RuntimeError::Call { method: "streaming", code: tonic::Code::Unimplemented, message: "a dry run opens no streams".into() })
    }

    async fn reopen_container_log(&self, id: &str) -> Result<()> {
        self.print("ReopenContainerLog", &self.container_line(id));
        Ok(())
    }

    async fn update_container_resources(&self, id: &str, linux: &cri::LinuxContainerResources) -> Result<()> {
        self.print(
            "UpdateContainerResources",
            &format!(
                "{} cpu_shares={} cpu_quota={} cpu_period={} memory_limit={}",
                self.container_line(id),
                linux.cpu_shares,
                linux.cpu_quota,
                linux.cpu_period,
                linux.memory_limit_in_bytes
            ),
        );
        Ok(())
    }

    async fn list_container_stats(&self, filter: Option<cri::ContainerStatsFilter>) -> Result<Vec<cri::ContainerStats>> {
        match &self.real {
            Some(rt) => rt.list_container_stats(filter).await,
            None => Ok(Vec::new()),
        }
    }

    async fn list_pod_sandbox_stats(&self, filter: Option<cri::PodSandboxStatsFilter>) -> Result<Vec<cri::PodSandboxStats>> {
        match &self.real {
            Some(rt) => rt.list_pod_sandbox_stats(filter).await,
            None => Ok(Vec::new()),
        }
    }

    async fn list_images(&self) -> Result<Vec<cri::Image>> {
        match &self.real {
            Some(rt) => rt.list_images().await,
            None => Ok(self.lock().images.values().cloned().collect()),
        }
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.print("RemoveImage", &format!("image={image}"));
        Ok(())
    }

    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>> {
        match &self.real {
            Some(rt) => rt.image_fs_info().await,
            None => Ok(Vec::new()),
        }
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        {
            let st = self.lock();
            if let Some(img) = st.images.get(image) {
                return Ok(Some(img.clone()));
            }
            if st.missing.contains(image) {
                return Ok(None);
            }
        }
        let found = match &self.real {
            Some(rt) => rt.image_status(image).await.unwrap_or(None),
            None => None,
        };
        let mut st = self.lock();
        match &found {
            Some(img) => {
                st.images.insert(image.to_string(), img.clone());
            }
            None => {
                st.missing.insert(image.to_string());
            }
        }
        Ok(found)
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        _sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        self.print("PullImage", &format!("image={image} auth={}", if auth.is_some() { "yes" } else { "none" }));
        let id = short_id(&["image", image]);
        let mut st = self.lock();
        st.missing.remove(image);
        st.images.insert(
            image.to_string(),
            cri::Image { id: id.clone(), repo_tags: vec![image.to_string()], size: 1, ..Default::default() },
        );
        Ok(id)
    }
}

fn stop_sim(c: &mut SimContainer, now: i64, exit_code: i32, reason: &str) {
    if c.container.state == cri::ContainerState::ContainerExited as i32 {
        return;
    }
    c.container.state = cri::ContainerState::ContainerExited as i32;
    c.status.state = c.container.state;
    c.status.finished_at = now;
    c.status.exit_code = exit_code;
    c.status.reason = reason.into();
}
