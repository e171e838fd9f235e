//! The runtime role: the CRI runtime nodelet runs pods in (or, in a dry
//! run, the simulator in front of it), checked to be a CRI v1 runtime and
//! waited for while it starts, and the loop that follows its readiness.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::AgentError;
use crate::config::{CgroupDriver, Settings};
use crate::metrics::Metrics;
use crate::runtime::dry_run::DryRunRuntime;
use crate::runtime::instrumented::Instrumented;
use crate::runtime::remote::RemoteRuntime;
use crate::runtime::{Runtime, RuntimeError, RuntimeHealth, cri};
use crate::tasks::Tasks;

/// What the other roles get from the runtime role.
pub struct RuntimeRole {
    pub runtime: Arc<dyn Runtime>,
    pub version: cri::VersionResponse,
    /// The cgroup driver the runtime's pods get, when the runtime says
    /// (containerd: its runc options' `SystemdCgroup`).
    pub cgroup_driver: Option<CgroupDriver>,
    /// The runtime's readiness, as its Status last said.
    pub health: watch::Receiver<RuntimeHealth>,
    /// Notified after each CRI call that changed the runtime's pods.
    pub changes: Arc<tokio::sync::Notify>,
}

/// Connects to the runtime (a dry run plans against the simulator, in
/// front of the real runtime when one answers) and starts following its
/// health.
pub async fn build(s: &Settings, metrics: &Arc<Metrics>, tasks: &mut Tasks) -> Result<RuntimeRole, AgentError> {
    let (mut cgroup_driver, mut cni_dir) = (None, "/etc/cni/net.d".to_string());
    let changes = Arc::new(tokio::sync::Notify::new());
    let (runtime, version): (Arc<dyn Runtime>, cri::VersionResponse) = if s.dry_run {
        let real = RemoteRuntime::connect(&s.runtime_endpoint, s.runtime_request_timeout).await.ok();
        if real.is_none() {
            tracing::warn!(endpoint = %s.runtime_endpoint, "dry run: no runtime answers; planning against an empty one");
        }
        let sim = DryRunRuntime::new(real.map(|r| Box::new(r) as Box<dyn Runtime>), Box::new(std::io::stdout())).await;
        let v = sim.version().await.unwrap_or_default();
        (Arc::new(sim), cri::VersionResponse { runtime_name: "containerd".into(), ..v })
    } else {
        let (rt, v) = wait_for_runtime(&s.runtime_endpoint, s.runtime_request_timeout).await?;
        match rt.status_info().await {
            Ok(info) => {
                cgroup_driver = runtime_cgroup_driver(&info);
                if let Some(dir) = cni_conf_dir(&info) {
                    cni_dir = dir;
                }
            }
            Err(e) => tracing::debug!(error = %e, "verbose runtime Status failed"),
        }
        if let Ok(st) = rt.status().await
            && !RuntimeHealth::from_status(&st).network_ready
        {
            tracing::warn!(
                cni_conf_dir = %cni_dir,
                "the runtime has no pod network yet: put a CNI network configuration in its conf_dir (your CNI plugin's \
                 installer does; containernetworking-plugins gives the plugins, not a network); until then only hostNetwork pods start"
            );
        }
        (Arc::new(Instrumented::new(Arc::new(rt), metrics.clone(), changes.clone())), v)
    };
    let (health_tx, health) = watch::channel(RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() });
    if !s.dry_run {
        tasks.spawn("runtime status", follow_health(runtime.clone(), health_tx));
    }
    Ok(RuntimeRole { runtime, version, cgroup_driver, health, changes })
}

/// The cgroup driver of the runtime's default handler, from containerd's
/// verbose Status (`config`: its CRI plugin's settings, where runc's
/// options hold `SystemdCgroup`). `None` when the runtime does not say.
pub fn runtime_cgroup_driver(info: &std::collections::HashMap<String, String>) -> Option<CgroupDriver> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    let containerd = config.get("containerd")?;
    let name = containerd.get("defaultRuntimeName").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).unwrap_or("runc");
    let runtime = containerd.get("runtimes")?.get(name)?;
    // Only runc (and crun, which takes the same option) say it this way.
    let kind = runtime.get("runtimeType").and_then(|t| t.as_str()).unwrap_or("");
    if !kind.is_empty() && kind != "io.containerd.runc.v2" && kind != "io.containerd.runc.v1" {
        return None;
    }
    let systemd = runtime.get("options").and_then(|o| o.get("SystemdCgroup")).and_then(|v| v.as_bool()).unwrap_or(false);
    Some(if systemd { CgroupDriver::Systemd } else { CgroupDriver::Cgroupfs })
}

/// Where containerd reads CNI network configurations (`cni.confDir`).
pub fn cni_conf_dir(info: &std::collections::HashMap<String, String>) -> Option<String> {
    let config: serde_json::Value = serde_json::from_str(info.get("config")?).ok()?;
    config.get("cni")?.get("confDir")?.as_str().map(str::to_string)
}

/// The driver to use: the runtime's when it says one, as kubelet takes it
/// from the runtime (KubeletCgroupDriverFromCRI); a different configured
/// one gets a warning that says what to change.
pub fn choose_cgroup_driver(configured: CgroupDriver, runtime: Option<CgroupDriver>) -> (CgroupDriver, Option<String>) {
    match runtime {
        Some(r) if r != configured => {
            let (name, systemd) = match r {
                CgroupDriver::Systemd => ("systemd", "true"),
                CgroupDriver::Cgroupfs => ("cgroupfs", "false"),
            };
            let want = if configured == CgroupDriver::Systemd { "true" } else { "false" };
            let note = format!(
                "the runtime's default handler uses the {name} cgroup driver (containerd: SystemdCgroup = {systemd}) and the \
                 KubeletConfiguration says cgroupDriver: {}; nodelet follows the runtime, as kubelet does. To make them agree, set \
                 cgroupDriver: {name}, or SystemdCgroup = {want} under [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options] \
                 in /etc/containerd/config.toml and restart containerd (systemd hosts: systemd is kubeadm's default)",
                match configured {
                    CgroupDriver::Systemd => "systemd",
                    CgroupDriver::Cgroupfs => "cgroupfs",
                }
            );
            (r, Some(note))
        }
        _ => (configured, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_driver_and_cni_directory_come_from_containerds_config() {
        // containerd 1.6's verbose Status `config`, trimmed.
        let info = |systemd: &str| {
            std::collections::HashMap::from([(
                "config".to_string(),
                format!(
                    r#"{{"containerd":{{"snapshotter":"overlayfs","defaultRuntimeName":"runc","runtimes":{{"runc":{{"runtimeType":"io.containerd.runc.v2","options":{{"BinaryName":""{systemd}}}}}}}}},"cni":{{"binDir":"/usr/lib/cni","confDir":"/etc/cni/net.d"}}}}"#
                ),
            )])
        };
        assert_eq!(runtime_cgroup_driver(&info(r#","SystemdCgroup":true"#)), Some(CgroupDriver::Systemd));
        assert_eq!(runtime_cgroup_driver(&info(r#","SystemdCgroup":false"#)), Some(CgroupDriver::Cgroupfs));
        assert_eq!(runtime_cgroup_driver(&info("")), Some(CgroupDriver::Cgroupfs), "containerd's default");
        assert_eq!(runtime_cgroup_driver(&Default::default()), None, "another runtime says nothing");
        assert_eq!(cni_conf_dir(&info("")).as_deref(), Some("/etc/cni/net.d"));
        let (d, note) = choose_cgroup_driver(CgroupDriver::Systemd, Some(CgroupDriver::Cgroupfs));
        assert_eq!(d, CgroupDriver::Cgroupfs);
        assert!(note.unwrap().contains("set cgroupDriver: cgroupfs, or SystemdCgroup = true under [plugins."));
        assert_eq!(choose_cgroup_driver(CgroupDriver::Systemd, None), (CgroupDriver::Systemd, None));
        assert_eq!(choose_cgroup_driver(CgroupDriver::Cgroupfs, Some(CgroupDriver::Cgroupfs)), (CgroupDriver::Cgroupfs, None));
    }
}

/// Reads the runtime's Status every [`HEALTH_PERIOD`], saying when it changes.
async fn follow_health(rt: Arc<dyn Runtime>, health_tx: watch::Sender<RuntimeHealth>) {
    loop {
        match rt.status().await {
            Ok(st) => {
                let h = RuntimeHealth::from_status(&st);
                health_tx.send_if_modified(|old| {
                    if *old != h {
                        tracing::info!(runtime_ready = h.runtime_ready, network_ready = h.network_ready, conditions = %h.message, "runtime status changed");
                        *old = h;
                        return true;
                    }
                    false
                });
            }
            Err(e) => tracing::warn!(error = %e, "runtime Status failed"),
        }
        tokio::time::sleep(HEALTH_PERIOD).await;
    }
}

/// How often the runtime's Status (runtime and network readiness) is read.
const HEALTH_PERIOD: Duration = Duration::from_secs(5);

/// Connects to the CRI runtime and checks that it answers Version and
/// Status as a CRI v1 runtime.
pub async fn connect_runtime(endpoint: &str, timeout: Duration) -> Result<(RemoteRuntime, cri::VersionResponse), AgentError> {
    let rt = RemoteRuntime::connect(endpoint, timeout)
        .await
        .map_err(|reason| AgentError::Runtime { endpoint: endpoint.into(), reason })?;
    let version = rt.version().await.map_err(|e| match e {
        RuntimeError::Call { code: tonic::Code::Unimplemented, .. } => AgentError::NotCri {
            endpoint: endpoint.into(),
            detail: "it does not serve runtime.v1.RuntimeService".into(),
        },
        // containerd's CRI plugin while it starts: a runtime, not yet ready.
        e @ RuntimeError::Call { .. } if matches!(&e, RuntimeError::Call { message, .. } if message.contains("not initialized")) => {
            AgentError::Runtime { endpoint: endpoint.into(), reason: e }
        }
        RuntimeError::Call { code, message, .. } if code == tonic::Code::Unknown || code == tonic::Code::Internal => {
            AgentError::NotCri { endpoint: endpoint.into(), detail: format!("Version answered {code:?}: {message}") }
        }
        reason => AgentError::Runtime { endpoint: endpoint.into(), reason },
    })?;
    if !version.runtime_api_version.starts_with("v1") || version.runtime_api_version.starts_with("v1alpha") {
        return Err(AgentError::NotCri {
            endpoint: endpoint.into(),
            detail: format!("it reports runtime API version {:?}", version.runtime_api_version),
        });
    }
    let status = rt.status().await.map_err(|reason| AgentError::Runtime { endpoint: endpoint.into(), reason })?;
    let health = RuntimeHealth::from_status(&status);
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        runtime_ready = health.runtime_ready,
        network_ready = health.network_ready,
        "container runtime connected"
    );
    if !health.runtime_ready || !health.network_ready {
        tracing::warn!(conditions = %health.message, "the container runtime is not fully ready yet");
    }
    Ok((rt, version))
}

/// How long a starting agent waits for a runtime that is itself starting
/// (containerd restarted beside it, or started by the same boot).
pub const RUNTIME_START_WAIT: Duration = Duration::from_secs(60);

/// Whether a runtime error says the runtime is starting (or restarting):
/// its socket is there but refuses connections, or it answers "not
/// initialized". A missing socket, or a server that answers but not as
/// CRI, is a configuration error and fails at once.
fn starting(e: &AgentError) -> bool {
    match e {
        AgentError::Runtime { reason: RuntimeError::Connect { reason, .. }, .. } => reason.to_lowercase().contains("connection refused"),
        AgentError::Runtime { reason: RuntimeError::Call { message, code, .. }, .. } => {
            message.contains("not initialized") || *code == tonic::Code::Unavailable && message.to_lowercase().contains("connection refused")
        }
        _ => false,
    }
}

/// `connect_runtime`, waiting out a runtime that says it is still starting
/// (see `starting`): one warning, then retries with back-off for up to
/// [`RUNTIME_START_WAIT`]. Any other failure fails at once.
pub async fn wait_for_runtime(endpoint: &str, timeout: Duration) -> Result<(RemoteRuntime, cri::VersionResponse), AgentError> {
    let deadline = tokio::time::Instant::now() + RUNTIME_START_WAIT;
    let mut delay = Duration::from_millis(200);
    let mut waited = false;
    loop {
        match connect_runtime(endpoint, timeout).await {
            Ok(x) => {
                if waited {
                    tracing::info!(endpoint, "the container runtime answers now");
                }
                return Ok(x);
            }
            Err(e) if starting(&e) && tokio::time::Instant::now() + delay < deadline => {
                if !waited {
                    tracing::warn!(error = %e, wait_s = RUNTIME_START_WAIT.as_secs(), "the container runtime is not up yet; waiting for it");
                    waited = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
