//! The CRI container config for one container of a pod (pure): command and
//! args with `$(VAR)` expansion, the environment, CPU and memory limits as
//! LinuxContainerResources, oom_score_adj by QoS class, the security context,
//! and the labels and annotations that make the container adoptable.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use sha2::{Digest, Sha256};

use super::env::{self, EnvError, EnvSources, PodFacts};
use super::qos::{self, QosClass};
use super::{ContainerKind, NodeContext, sandbox};
use crate::resources::{self as quantity, Amount};
use crate::runtime::cri;
use crate::runtime::labels;

/// CFS period kubelet uses (100 ms).
use crate::resources::CPU_PERIOD_US;
const GUARANTEED_OOM: i64 = -997;
const BEST_EFFORT_OOM: i64 = 1000;

/// Paths kubelet masks and makes read-only in unprivileged containers.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
pub const DEFAULT_READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A hash of the parts of a container spec whose change needs a new
/// container. Resources are left out: they can change in place.
pub fn container_hash(c: &Container) -> String {
    let mut c = c.clone();
    c.resources = None;
    c.resize_policy = None;
    let bytes = serde_json::to_vec(&c).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// `<container>/<attempt>.log` below the pod's log directory.
pub fn log_path(name: &str, attempt: u32) -> String {
    format!("{name}/{attempt}.log")
}

fn milli(c: &Container, field: &str, res: &str) -> i64 {
    let Some(r) = &c.resources else { return 0 };
    let map = if field == "limits" { &r.limits } else { &r.requests };
    map.as_ref().and_then(|m| m.get(res)).and_then(|q| quantity::milli(q).ok()).unwrap_or(0)
}

fn bytes(c: &Container, field: &str, res: &str) -> i64 {
    let Some(r) = &c.resources else { return 0 };
    let map = if field == "limits" { &r.limits } else { &r.requests };
    map.as_ref().and_then(|m| m.get(res)).and_then(|q| quantity::value(q).ok()).unwrap_or(0)
}

fn is_node_critical(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let is_static = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::manifest::ANNOTATION_CONFIG_SOURCE))
        .is_some_and(|s| s != "api");
    let critical = is_static || spec.and_then(|s| s.priority).is_some_and(|p| p >= 2_000_000_000);
    critical && spec.and_then(|s| s.priority_class_name.as_deref()) == Some("system-node-critical")
}

/// kubelet's OOM score policy, clamped to what the node allows.
pub fn oom_score_adj(pod: &Pod, c: &Container, node: &NodeContext) -> i64 {
    let spec = pod.spec.clone().unwrap_or_default();
    let score = if is_node_critical(pod) {
        GUARANTEED_OOM
    } else {
        match qos::qos_class(&spec) {
            QosClass::Guaranteed => GUARANTEED_OOM,
            QosClass::BestEffort => BEST_EFFORT_OOM,
            QosClass::Burstable => {
                let request = bytes(c, "requests", "memory");
                let capacity = node.memory_capacity_bytes.max(1);
                let s = 1000 - (1000 * request as i128 / capacity as i128) as i64;
                if s < 1000 + GUARANTEED_OOM {
                    1000 + GUARANTEED_OOM
                } else if s == BEST_EFFORT_OOM {
                    s - 1
                } else {
                    s
                }
            }
        }
    };
    score.max(node.oom_score_adj_floor)
}

/// CPU shares, CFS quota, the memory limit and swap for a container.
pub fn linux_resources(pod: &Pod, c: &Container, node: &NodeContext) -> cri::LinuxContainerResources {
    let shares = quantity::cpu_shares(Amount::new(milli(c, "requests", "cpu")));
    let quota = quantity::cpu_quota(Amount::new(milli(c, "limits", "cpu"))).unwrap_or(0);
    let mut lcr = cri::LinuxContainerResources {
        cpu_period: if quota > 0 { CPU_PERIOD_US } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: bytes(c, "limits", "memory"),
        oom_score_adj: oom_score_adj(pod, c, node),
        ..Default::default()
    };
    super::swap::apply(&mut lcr, pod, c, &node.swap, node.memory_capacity_bytes);
    lcr
}

fn security_context(pod: &Pod, spec: &PodSpec, c: &Container, node: &NodeContext) -> cri::LinuxContainerSecurityContext {
    let psc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged == Some(true);
    let unmasked = sc.proc_mount.as_deref() == Some("Unmasked");
    let mut groups = psc.supplemental_groups.clone().unwrap_or_default();
    if let Some(fs) = psc.fs_group
        && !groups.contains(&fs)
    {
        groups.push(fs);
    }
    let paths = |list: &[&str]| {
        if privileged || unmasked { Vec::new() } else { list.iter().map(|s| s.to_string()).collect() }
    };
    let apparmor = super::apparmor::cri_profile(pod, c);
    cri::LinuxContainerSecurityContext {
        capabilities: sc.capabilities.as_ref().map(|caps| cri::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
        }),
        privileged,
        namespace_options: Some(sandbox::namespace_options(spec)),
        run_as_user: sc.run_as_user.or(psc.run_as_user).map(|value| cri::Int64Value { value }),
        run_as_group: sc.run_as_group.or(psc.run_as_group).map(|value| cri::Int64Value { value }),
        run_as_username: String::new(),
        readonly_rootfs: sc.read_only_root_filesystem == Some(true),
        supplemental_groups: groups,
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        seccomp: Some(sandbox::seccomp(sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()), node)),
        apparmor: apparmor.0,
        apparmor_profile: apparmor.1,
    }
}

/// What a container config is built from.
pub struct ContainerRequest<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub kind: ContainerKind,
    pub attempt: u32,
    /// The image ID to run (from ImageStatus or PullImage).
    pub image_ref: &'a str,
    pub pod_ips: &'a [String],
    pub node: &'a NodeContext,
    /// The ConfigMaps, Secrets and service variables the env reads.
    pub env_sources: &'a EnvSources,
    pub volumes: &'a crate::volumes::PodVolumes,
    /// The pod's managed /etc/hosts, when it has one.
    pub etc_hosts: Option<&'a std::path::Path>,
    /// The file on the node mounted at the container's
    /// terminationMessagePath (none in a dry run).
    pub termination_log: Option<&'a std::path::Path>,
    /// For an ephemeral container with a target: the running target's ID,
    /// whose process namespace it joins.
    pub target_id: Option<&'a str>,
    /// Plan only: subPaths are not created.
    pub dry_run: bool,
}

/// Why a container config cannot be made (kubelet's
/// CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{0}")]
    Mount(String),
}

/// Adds what a container's device plugins answered to its CRI config, as
/// kubelet: their envs before the container's own (which win), their mounts
/// and device nodes, their annotations, and CDI devices as the CRI field
/// (containerd 1.7+); the CDI devices also as `cdi.k8s.io/` annotations, for
/// runtimes that read CDI devices only from annotations (containerd 1.6
/// reads neither, so a CDI-only device plugin needs containerd 1.7).
pub fn add_devices(config: &mut cri::ContainerConfig, opts: crate::devices::RunOptions) {
    if opts.is_empty() {
        return;
    }
    let mut envs: Vec<cri::KeyValue> = opts.envs.into_iter().map(|(key, value)| cri::KeyValue { key, value }).collect();
    envs.append(&mut config.envs);
    config.envs = envs;
    config.mounts.extend(opts.mounts.into_iter().map(|m| cri::Mount {
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.read_only,
        ..Default::default()
    }));
    config.devices.extend(opts.devices.into_iter().map(|d| cri::Device { container_path: d.container_path, host_path: d.host_path, permissions: d.permissions }));
    for (k, v) in opts.annotations {
        config.annotations.entry(k).or_insert(v);
    }
    for (i, name) in opts.cdi_devices.iter().enumerate() {
        config.annotations.insert(format!("cdi.k8s.io/devicemanager_{i}"), name.clone());
    }
    config.cdi_devices.extend(opts.cdi_devices.into_iter().map(|name| cri::CdiDevice { name }));
}

/// The CRI config for one container instance, and the envFrom keys that
/// were skipped as invalid names.
pub fn container_config(r: &ContainerRequest<'_>) -> Result<(cri::ContainerConfig, Vec<String>), ConfigError> {
    let pod = r.pod;
    let c = r.container;
    // The name names the container's log and subPath directories.
    crate::files::component(&c.name, "name").map_err(|e| ConfigError::Mount(e.to_string()))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let id = super::identity(pod);
    let facts = PodFacts { pod, pod_ips: r.pod_ips, node: r.node };
    let (envs, skipped) = env::container_env(c, &facts, r.env_sources)?;
    let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
    let pod_dir = r.node.pod_dir(&id.uid).map_err(|e| ConfigError::Mount(e.to_string()))?;
    let mut mounts = crate::volumes::container_mounts(c, r.volumes, &envs, r.etc_hosts, privileged, &pod_dir, r.dry_run).map_err(ConfigError::Mount)?;
    let devices = crate::volumes::container_devices(c, r.volumes).map_err(ConfigError::Mount)?;
    if let (Some(host), Some(path)) = (r.termination_log, c.termination_message_path.as_deref().filter(|p| !p.is_empty())) {
        mounts.push(cri::Mount { container_path: path.into(), host_path: host.display().to_string(), ..Default::default() });
    }
    let command = env::expand_all(c.command.as_deref().unwrap_or(&[]), &envs);
    let args = env::expand_all(c.args.as_deref().unwrap_or(&[]), &envs);
    let mut container_labels = id.labels();
    container_labels.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    let annotations: HashMap<String, String> = [
        (labels::CONTAINER_HASH, container_hash(c)),
        (labels::CONTAINER_RESTART_COUNT, r.attempt.to_string()),
        (labels::CONTAINER_TERMINATION_MESSAGE_PATH, c.termination_message_path.clone().unwrap_or_default()),
        (labels::CONTAINER_TERMINATION_MESSAGE_POLICY, c.termination_message_policy.clone().unwrap_or_default()),
        (labels::POD_TERMINATION_GRACE_PERIOD, spec.termination_grace_period_seconds.unwrap_or(30).to_string()),
        (labels::CONTAINER_KIND, r.kind.as_str().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(
        c.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| serde_json::to_string(h).ok())
            .map(|h| (labels::CONTAINER_PRE_STOP_HANDLER.to_string(), h)),
    )
    .collect();
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt: r.attempt }),
        image: Some(cri::ImageSpec {
            image: r.image_ref.to_string(),
            annotations: HashMap::new(),
            user_specified_image: c.image.clone().unwrap_or_default(),
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: envs.into_iter().map(|(key, value)| cri::KeyValue { key, value }).collect(),
        mounts,
        devices,
        labels: container_labels,
        annotations,
        log_path: log_path(&c.name, r.attempt),
        cdi_devices: Vec::new(),
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        tty: c.tty == Some(true),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, c, r.node)),
            security_context: Some({
                let mut sc = security_context(pod, &spec, c, r.node);
                if let (Some(target), Some(ns)) = (r.target_id, sc.namespace_options.as_mut()) {
                    ns.pid = cri::NamespaceMode::Target as i32;
                    ns.target_id = target.to_string();
                }
                sc
            }),
        }),
    };
    Ok((config, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::manifest;

    fn pod(resources: &str, extra: &str) -> Pod {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: app\n    image: busybox:1\n    \
             command: [sh, -c, 'echo $(GREETING)']\n    env: [{{name: GREETING, value: hi}}]\n{extra}    resources: {resources}\n"
        );
        manifest::load_static(yaml.as_bytes(), "n1", &manifest::StaticOrigin::File("/m.yaml".into())).unwrap().0
    }

    fn config(p: &Pod, node: &NodeContext) -> cri::ContainerConfig {
        let c = &p.spec.as_ref().unwrap().containers[0];
        container_config(&ContainerRequest {
            pod: p,
            container: c,
            kind: ContainerKind::App,
            attempt: 3,
            image_ref: "sha256:abc",
            pod_ips: &[],
            node,
            env_sources: &EnvSources::default(),
            volumes: &Default::default(),
            etc_hosts: None,
            termination_log: None,
            target_id: None,
            dry_run: true,
        })
        .unwrap()
        .0
    }

    #[test]
    fn limits_become_cgroup_settings() {
        let node = NodeContext::for_tests("n1");
        let p = pod("{limits: {cpu: 500m, memory: 128Mi}}", "");
        let cfg = config(&p, &node);
        let res = cfg.linux.as_ref().unwrap().resources.clone().unwrap();
        assert_eq!(res.cpu_shares, 512);
        assert_eq!(res.cpu_quota, 50_000);
        assert_eq!(res.cpu_period, 100_000);
        assert_eq!(res.memory_limit_in_bytes, 128 << 20);
        assert_eq!(res.oom_score_adj, -997, "guaranteed");
        assert_eq!(cfg.command, vec!["sh", "-c", "echo hi"]);
        assert_eq!(cfg.log_path, "app/3.log");
        assert_eq!(cfg.annotations[labels::CONTAINER_RESTART_COUNT], "3");
        assert_eq!(cfg.labels[labels::CONTAINER_NAME], "app");
        let sc = cfg.linux.unwrap().security_context.unwrap();
        assert!(sc.masked_paths.contains(&"/proc/kcore".to_string()));
    }

    #[test]
    fn oom_scores_by_qos_and_floor() {
        let mut node = NodeContext::for_tests("n1");
        let be = pod("{}", "");
        assert_eq!(linux_resources(&be, &be.spec.as_ref().unwrap().containers[0], &node).oom_score_adj, 1000);
        assert_eq!(linux_resources(&be, &be.spec.as_ref().unwrap().containers[0], &node).cpu_shares, 2);
        let bu = pod("{requests: {memory: 4Gi}}", "");
        // 8 GiB node, 4 GiB request: 1000 - 500
        assert_eq!(oom_score_adj(&bu, &bu.spec.as_ref().unwrap().containers[0], &node), 500);
        let g = pod("{limits: {cpu: 1, memory: 1Gi}}", "");
        node.oom_score_adj_floor = 0;
        assert_eq!(oom_score_adj(&g, &g.spec.as_ref().unwrap().containers[0], &node), 0, "clamped to the floor");
    }

    #[test]
    fn hash_ignores_resources_but_not_command() {
        let a = pod("{limits: {cpu: 1}}", "");
        let b = pod("{limits: {cpu: 2}}", "");
        let ca = &a.spec.as_ref().unwrap().containers[0];
        let cb = &b.spec.as_ref().unwrap().containers[0];
        assert_eq!(container_hash(ca), container_hash(cb));
        let mut cc = ca.clone();
        cc.args = Some(vec!["x".into()]);
        assert_ne!(container_hash(ca), container_hash(&cc));
    }

    #[test]
    fn security_context_maps() {
        let node = NodeContext::for_tests("n1");
        let p = pod(
            "{}",
            "    securityContext: {runAsUser: 1000, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}\n",
        );
        let sc = config(&p, &node).linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop_capabilities, vec!["ALL"]);
        assert_eq!(caps.add_capabilities, vec!["NET_BIND_SERVICE"]);
    }
}
