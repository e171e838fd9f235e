//! The CRI sandbox config for a pod (pure): metadata, hostname, log
//! directory, DNS, host port mappings, CRI labels and annotations, cgroup
//! parent, namespaces and the pod-level security context.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::{CgroupDriver, NodeContext, dns, qos};
use crate::runtime::cri;
use crate::runtime::labels::PodIdentity;

/// `<podLogsDir>/<namespace>_<name>_<uid>`, the CRI log layout.
pub fn log_dir(node: &NodeContext, id: &PodIdentity) -> PathBuf {
    node.pod_logs_dir.join(format!("{}_{}_{}", id.namespace, id.name, id.uid))
}

/// `<root-dir>/pods/<uid>`, for a UID that is one plain path component.
pub fn pod_dir(node: &NodeContext, uid: &str) -> Result<PathBuf, crate::files::NotAComponent> {
    node.pod_dir(uid)
}

/// The pod's cgroup parent: `<cgroupRoot>/kubepods/<qos>/pod<uid>` with the
/// cgroupfs driver, `kubepods-<qos>-pod<uid>.slice` with systemd's.
pub fn cgroup_parent(pod: &Pod, node: &NodeContext) -> String {
    if !node.cgroups_per_qos {
        return String::new();
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let class = qos::qos_class(pod.spec.as_ref().unwrap_or(&PodSpec::default()));
    match node.cgroup_driver {
        CgroupDriver::Cgroupfs => {
            let root = node.cgroup_root.trim_end_matches('/');
            match class.cgroup_dir() {
                Some(q) => format!("{root}/kubepods/{q}/pod{uid}"),
                None => format!("{root}/kubepods/pod{uid}"),
            }
        }
        CgroupDriver::Systemd => {
            let uid = uid.replace('-', "_");
            match class.cgroup_dir() {
                Some(q) => format!("kubepods-{q}-pod{uid}.slice"),
                None => format!("kubepods-pod{uid}.slice"),
            }
        }
    }
}

/// Which namespaces the pod shares with the node or among its containers.
pub fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |node: bool, pod: bool| {
        if node {
            cri::NamespaceMode::Node
        } else if pod {
            cri::NamespaceMode::Pod
        } else {
            cri::NamespaceMode::Container
        }
    };
    cri::NamespaceOption {
        network: mode(spec.host_network == Some(true), true) as i32,
        pid: mode(spec.host_pid == Some(true), spec.share_process_namespace == Some(true)) as i32,
        ipc: mode(spec.host_ipc == Some(true), true) as i32,
        target_id: String::new(),
    }
}

fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return String::new();
    }
    let mut name = spec.hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    // A hostname is at most 63 characters; kubelet truncates and trims.
    let mut cut = name.len().min(63);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut);
    let trimmed = name.trim_end_matches(['-', '.']).to_string();
    if spec.set_hostname_as_fqdn == Some(true)
        && let Some(sub) = spec.subdomain.filter(|s| !s.is_empty())
    {
        return format!("{trimmed}.{sub}.{}.svc", pod.metadata.namespace.clone().unwrap_or_default());
    }
    trimmed
}

/// Seccomp from a pod or container securityContext; unset is RuntimeDefault
/// under `seccompDefault`, else Unconfined, as in kubelet. A Localhost
/// profile is a file below `<root-dir>/seccomp`: a path that would leave it
/// (absolute, `..`) is refused at admission; should one get here it gets
/// RuntimeDefault, never a file elsewhere.
pub fn seccomp(profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>, node: &NodeContext) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    let runtime_default = || cri::SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() };
    match profile.map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())) {
        Some(("RuntimeDefault", _)) => runtime_default(),
        Some(("Localhost", path)) => match path.and_then(|p| localhost_profile_path(&node.root_dir.join("seccomp"), p)) {
            Some(file) => cri::SecurityProfile { profile_type: ProfileType::Localhost as i32, localhost_ref: file.display().to_string() },
            None => runtime_default(),
        },
        Some(("Unconfined", _)) => cri::SecurityProfile { profile_type: ProfileType::Unconfined as i32, localhost_ref: String::new() },
        None if node.seccomp_default => runtime_default(),
        _ => cri::SecurityProfile { profile_type: ProfileType::Unconfined as i32, localhost_ref: String::new() },
    }
}

/// `dir/path` when `path` is relative and descends only (the apiserver's
/// rule for `localhostProfile`), else `None`.
pub fn localhost_profile_path(dir: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let p = std::path::Path::new(path);
    let descends = !path.is_empty() && !path.contains('\0') && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    descends.then(|| dir.join(p))
}

/// The sandbox config for attempt `attempt` of a pod, plus warnings (DNS
/// limits) worth an event.
pub fn sandbox_config(pod: &Pod, attempt: u32, node: &NodeContext) -> (cri::PodSandboxConfig, Vec<dns::DnsWarning>) {
    let id = super::identity(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let (dns_config, warnings) = dns::dns_config(pod, &node.dns);
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp,
                Some("SCTP") => cri::Protocol::Sctp,
                _ => cri::Protocol::Tcp,
            } as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let mut labels = pod.metadata.labels.clone().unwrap_or_default().into_iter().collect::<std::collections::HashMap<_, _>>();
    labels.extend(id.labels());
    let annotations = pod.metadata.annotations.clone().unwrap_or_default().into_iter().collect();
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
    let sysctls = psc.sysctls.iter().flatten().map(|s| (s.name.clone(), s.value.clone())).collect();
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: id.name.clone(), uid: id.uid.clone(), namespace: id.namespace.clone(), attempt }),
        hostname: hostname(pod),
        log_directory: log_dir(node, &id).display().to_string(),
        dns_config: Some(dns_config),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(pod, node),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                readonly_rootfs: false,
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                seccomp: Some(seccomp(psc.seccomp_profile.as_ref(), node)),
            }),
            sysctls,
            overhead: None,
            resources: None,
        }),
    };
    (config, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::manifest;

    fn pod(yaml: &str) -> Pod {
        manifest::load_static(yaml.as_bytes(), "node1", &manifest::StaticOrigin::File("/m/p.yaml".into())).unwrap().0
    }

    const BASE: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: team, labels: {app: web}}\nspec:\n  containers:\n  - name: app\n    image: busybox:1\n    ports: [{containerPort: 80, hostPort: 8080}, {containerPort: 53, protocol: UDP}]\n";

    #[test]
    fn seccomp_default_and_localhost_profiles_stay_below_their_root() {
        use cri::security_profile::ProfileType;
        use k8s_openapi::api::core::v1::SeccompProfile;
        let mut node = NodeContext::for_tests("n");
        let kind = |p: &cri::SecurityProfile| ProfileType::try_from(p.profile_type).unwrap();
        assert_eq!(kind(&seccomp(None, &node)), ProfileType::Unconfined, "kubelet's default without seccompDefault");
        node.seccomp_default = true;
        assert_eq!(kind(&seccomp(None, &node)), ProfileType::RuntimeDefault);
        let unconfined = SeccompProfile { type_: "Unconfined".into(), localhost_profile: None };
        assert_eq!(kind(&seccomp(Some(&unconfined), &node)), ProfileType::Unconfined, "asked for explicitly");
        let local = |p: &str| SeccompProfile { type_: "Localhost".into(), localhost_profile: Some(p.into()) };
        let ok = seccomp(Some(&local("profiles/audit.json")), &node);
        assert_eq!((kind(&ok), ok.localhost_ref.as_str()), (ProfileType::Localhost, "/var/lib/kubelet/seccomp/profiles/audit.json"));
        for bad in ["/etc/shadow", "../../etc/shadow", "a/../../b", ""] {
            let p = seccomp(Some(&local(bad)), &node);
            assert_eq!(kind(&p), ProfileType::RuntimeDefault, "{bad:?} never names a file elsewhere");
            assert!(p.localhost_ref.is_empty());
        }
        let missing = SeccompProfile { type_: "Localhost".into(), localhost_profile: None };
        assert_eq!(kind(&seccomp(Some(&missing), &node)), ProfileType::RuntimeDefault);
        // And admission names the field.
        let mut p = pod(BASE);
        p.spec.as_mut().unwrap().containers[0].security_context = Some(serde_json::from_str(r#"{"seccompProfile": {"type": "Localhost", "localhostProfile": "../x"}}"#).unwrap());
        let refused = manifest::not_yet_supported(&p);
        assert!(refused.iter().any(|e| e.to_string().contains("spec.containers[0].securityContext.seccompProfile.localhostProfile")), "{refused:?}");
    }

    #[test]
    fn sandbox_config_follows_kubelet() {
        let p = pod(BASE);
        let node = NodeContext::for_tests("node1");
        let (c, _) = sandbox_config(&p, 2, &node);
        let uid = p.metadata.uid.clone().unwrap();
        let md = c.metadata.unwrap();
        assert_eq!((md.name.as_str(), md.namespace.as_str(), md.attempt), ("web-node1", "team", 2));
        assert_eq!(c.hostname, "web-node1");
        assert_eq!(c.log_directory, format!("/var/log/pods/team_web-node1_{uid}"));
        assert_eq!(c.labels["io.kubernetes.pod.uid"], uid);
        assert_eq!(c.labels["app"], "web");
        assert_eq!(c.annotations["kubernetes.io/config.source"], "file");
        assert_eq!(c.port_mappings.len(), 1, "only ports with a hostPort are mapped");
        assert_eq!(c.port_mappings[0].host_port, 8080);
        let linux = c.linux.unwrap();
        assert_eq!(linux.cgroup_parent, format!("/kubepods/besteffort/pod{uid}"));
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (cri::NamespaceMode::Pod as i32, cri::NamespaceMode::Container as i32, cri::NamespaceMode::Pod as i32));
    }

    #[test]
    fn host_namespaces_and_systemd_slices() {
        let p = pod(&BASE.replace("spec:\n", "spec:\n  hostNetwork: true\n  hostPID: true\n").replace("hostPort: 8080", "hostPort: 80"));
        let mut node = NodeContext::for_tests("node1");
        node.cgroup_driver = CgroupDriver::Systemd;
        let (c, _) = sandbox_config(&p, 0, &node);
        assert_eq!(c.hostname, "");
        let linux = c.linux.unwrap();
        assert!(linux.cgroup_parent.starts_with("kubepods-besteffort-pod") && linux.cgroup_parent.ends_with(".slice"));
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid), (cri::NamespaceMode::Node as i32, cri::NamespaceMode::Node as i32));
    }
}
