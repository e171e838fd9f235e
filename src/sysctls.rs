//! kubelet's sysctl admission (pkg/kubelet/sysctl): a pod may set only the
//! safe, namespaced sysctls, plus those the operator's `allowedUnsafeSysctls`
//! patterns allow, and none of the network namespace's with hostNetwork nor
//! of the IPC namespace's with hostIPC. Anything else is refused at admission
//! (phase Failed, reason `SysctlForbidden`), never passed to the runtime.

use k8s_openapi::api::core::v1::Pod;

/// kubelet's SafeSysctlAllowlist (all of them: this kernel is newer than
/// every minimum version the list names).
pub const SAFE: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The reason kubelet gives a refused pod.
pub const FORBIDDEN_REASON: &str = "SysctlForbidden";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Ipc,
    Net,
    Uts,
}

impl Namespace {
    fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Uts => "uts",
        }
    }
}

/// Which namespace a sysctl (or a pattern's prefix) belongs to, if any.
fn namespace(name: &str) -> Option<Namespace> {
    match name {
        "kernel.sem" => return Some(Namespace::Ipc),
        "kernel.hostname" | "kernel.domainname" => return Some(Namespace::Uts),
        _ => {}
    }
    [("kernel.shm", Namespace::Ipc), ("kernel.msg", Namespace::Ipc), ("fs.mqueue.", Namespace::Ipc), ("net.", Namespace::Net)]
        .into_iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, ns)| ns)
}

/// kubelet's NormalizeName: `net/ipv4/ip_forward` is `net.ipv4.ip_forward`
/// (when the first separator is a slash, slashes and dots swap).
pub fn normalize(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes().get(i) == Some(&b'/') => name.chars().map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        }).collect(),
        _ => name.to_string(),
    }
}

/// The sysctls pods may set on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    /// Exact names and `prefix*` patterns.
    patterns: Vec<String>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Self { patterns: SAFE.iter().map(|s| s.to_string()).collect() }
    }
}

impl Allowlist {
    /// The safe sysctls plus the operator's `allowedUnsafeSysctls`; a pattern
    /// outside every namespace is an error (as kubelet refuses to start).
    pub fn new(unsafe_patterns: &[String]) -> Result<Self, String> {
        let mut list = Self::default();
        for p in unsafe_patterns {
            let name = normalize(p);
            let base = name.strip_suffix('*').unwrap_or(&name);
            let valid = !base.is_empty() && base.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')) && !name[..name.len() - 1].contains('*');
            if !valid {
                return Err(format!("Invalid value: {p:?}: must be a sysctl name or a prefix ending in '*'"));
            }
            if namespace(base).is_none() {
                return Err(format!("Invalid value: {p:?}: the sysctl is not known to be namespaced"));
            }
            list.patterns.push(name);
        }
        Ok(list)
    }

    fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        })
    }

    /// kubelet's sysctl admission of `pod`: the message of a refusal
    /// (`forbidden sysctl: "kernel.msgmax" not allowlisted`).
    pub fn check(&self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        let host_net = spec.host_network == Some(true);
        let host_ipc = spec.host_ipc == Some(true);
        for s in spec.security_context.as_ref().and_then(|c| c.sysctls.as_ref()).into_iter().flatten() {
            let name = normalize(&s.name);
            if !self.allows(&name) {
                return Err(format!("forbidden sysctl: {name:?} not allowlisted"));
            }
            match namespace(&name) {
                Some(ns @ Namespace::Net) if host_net => return Err(format!("forbidden sysctl: {name:?} not allowed with host {} enabled", ns.name())),
                Some(ns @ Namespace::Ipc) if host_ipc => return Err(format!("forbidden sysctl: {name:?} not allowed with host {} enabled", ns.name())),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sysctls: &[&str], host_net: bool, host_ipc: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"hostNetwork": host_net, "hostIPC": host_ipc, "containers": [],
                     "securityContext": {"sysctls": sysctls.iter().map(|n| serde_json::json!({"name": n, "value": "1"})).collect::<Vec<_>>()}}
        }))
        .unwrap()
    }

    #[test]
    fn safe_sysctls_pass_and_unsafe_ones_need_the_operator() {
        let safe = Allowlist::default();
        assert_eq!(safe.check(&pod(&["net.ipv4.ip_unprivileged_port_start", "kernel.shm_rmid_forced"], false, false)), Ok(()));
        assert_eq!(safe.check(&pod(&["net/ipv4/tcp_syncookies"], false, false)), Ok(()), "slash-separated names too");
        assert_eq!(safe.check(&pod(&["kernel.msgmax"], false, false)), Err("forbidden sysctl: \"kernel.msgmax\" not allowlisted".into()));
        let ops = Allowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()]).unwrap();
        assert_eq!(ops.check(&pod(&["kernel.msgmax", "net.core.somaxconn"], false, false)), Ok(()));
        assert!(ops.check(&pod(&["net.core.rmem_max"], false, false)).is_err());
        assert_eq!(
            ops.check(&pod(&["net.core.somaxconn"], true, false)),
            Err("forbidden sysctl: \"net.core.somaxconn\" not allowed with host net enabled".into())
        );
        assert!(ops.check(&pod(&["kernel.msgmax"], false, true)).unwrap_err().contains("host ipc"));
    }

    #[test]
    fn unsafe_patterns_must_be_namespaced() {
        assert!(Allowlist::new(&["vm.swappiness".into()]).unwrap_err().contains("not known to be namespaced"));
        assert!(Allowlist::new(&["kernel.*".into()]).is_err(), "kernel.* reaches outside the IPC namespace");
        assert!(Allowlist::new(&["net.*".into(), "fs.mqueue.*".into(), "kernel.sem".into()]).is_ok());
        assert!(Allowlist::new(&["net.*.x".into()]).is_err());
    }
}
