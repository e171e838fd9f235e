//! One proxy per node. kube-proxy and nodelet's proxy write the same kind of
//! rules (in iptables mode, the very same chains), so the two must never
//! both program a node. nodelet's proxy stands by while kube-proxy is on its
//! node: a kube-proxy pod bound to the node (kubeadm's DaemonSet puts one on
//! every node; nodelet, as the node's kubelet, sees it before it starts it)
//! or a kube-proxy process in nodelet's network namespace (a pod started
//! earlier, or a systemd service of a binary install). It takes the node
//! over again once kube-proxy is gone, first removing what kube-proxy leaves
//! behind, as kube-proxy itself does with the rules of the modes it does
//! not run.

use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use super::run::Mode;

/// The other proxy nodelet found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeProxy {
    /// A kube-proxy pod bound to this node: namespace/name, and its uid.
    Pod(String, String),
    /// A kube-proxy process in this network namespace: pid and command line.
    Process(u32, String),
}

impl fmt::Display for KubeProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeProxy::Pod(p, _) => write!(f, "kube-proxy pod {p} is bound to this node"),
            KubeProxy::Process(pid, cmd) => write!(f, "kube-proxy runs on this node (pid {pid}: {cmd})"),
        }
    }
}

/// What nodelet says when it stands by, and what to do about it.
pub fn standby_message(k: &KubeProxy) -> String {
    format!(
        "{k}: nodelet's Service proxy stands by and programs nothing, so that only one proxy programs the node. \
         To use nodelet's proxy, keep kube-proxy off nodes labelled {LABEL} (README: \"One proxy per node\"); \
         to keep kube-proxy, run nodelet with --proxy-mode none"
    )
}

/// The Node label nodelet sets while its proxy is on (mode none: absent):
/// kube-proxy's DaemonSet can keep off such nodes with a node affinity
/// `{key: nodelet.io/service-proxy, operator: DoesNotExist}`.
pub const LABEL: &str = "nodelet.io/service-proxy";

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Whether `pod` is a kube-proxy for its node: in the host's network (a
/// kube-proxy in a pod network programs nothing of the node's), running
/// kube-proxy's image or command or labelled as kubeadm's DaemonSet labels
/// it (`k8s-app: kube-proxy` in kube-system; kops and kubespray do the
/// same), and not finished.
pub fn is_kube_proxy(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let finished = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    let runs_it = spec.containers.iter().any(|c| {
        let image = c.image.as_deref().unwrap_or("");
        let repo = image.split('@').next().unwrap_or(image);
        // The repository's last part without the tag (a registry's port has
        // its colon before the last slash).
        let repo = basename(repo).split(':').next().unwrap_or("");
        repo == "kube-proxy" || c.command.as_ref().and_then(|c| c.first()).is_some_and(|c| basename(c) == "kube-proxy")
    });
    let labelled = pod.metadata.namespace.as_deref() == Some("kube-system")
        && pod.metadata.labels.as_ref().and_then(|l| l.get("k8s-app")).is_some_and(|v| v == "kube-proxy");
    spec.host_network == Some(true) && (runs_it || labelled) && !finished && pod.metadata.deletion_timestamp.is_none()
}

/// A kube-proxy process in this process's network namespace, read from
/// `proc` (/proc): its command name is `kube-proxy`.
pub fn running_process(proc: &Path) -> Option<KubeProxy> {
    let own_net = std::fs::read_link(proc.join("self/ns/net")).ok()?;
    let me = std::process::id();
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if comm.trim_end() != "kube-proxy" || std::fs::read_link(dir.join("ns/net")).ok().as_ref() != Some(&own_net) {
            continue;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" ");
        return Some(KubeProxy::Process(pid, cmd));
    }
    None
}

/// A kube-proxy pod among this node's pods.
pub fn find_pod<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<KubeProxy> {
    pods.into_iter()
        .find(|p| is_kube_proxy(p))
        .map(|p| {
            let m = &p.metadata;
            KubeProxy::Pod(format!("{}/{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or("")), m.uid.clone().unwrap_or_default())
        })
}

/// Before nodelet's proxy programs a node (at its start, and when it takes
/// over from kube-proxy): removes the rules of the modes it does not run,
/// its own and kube-proxy's, as kube-proxy does at its start. Rules of the
/// iptables-based modes (iptables, IPVS) stay for each other, as with
/// kube-proxy; nftables rules go for both; every mode removes kube-proxy's
/// nftables tables. Errors are returned, not fatal (a table already gone is
/// no error).
pub fn remove_leftovers(mode: Mode) -> Vec<String> {
    let mut errors = Vec::new();
    let mut keep = |what: &str, r: Result<(), super::ProxyError>| {
        if let Err(e) = r {
            errors.push(format!("{what}: {e}"));
        }
    };
    for family in super::model::Family::BOTH {
        keep(&format!("nft table {} kube-proxy", family.nft()), super::delete_nft_table(family, "kube-proxy"));
    }
    match mode {
        Mode::Nftables => {
            keep("iptables", super::iptables::cleanup());
            keep("ipvs", super::ipvs::cleanup());
        }
        Mode::Iptables | Mode::Ipvs => keep("nftables", super::nftables::cleanup()),
        Mode::None => {}
    }
    if mode == Mode::Iptables {
        for family in super::model::Family::BOTH {
            keep("ipvs rules table", super::delete_nft_table(family, super::ipvs::TABLE));
        }
    }
    errors
}

/// What nodelet's proxy removes when it stands down for kube-proxy: its own
/// rules in the mode it ran, so that they do not rewrite traffic beside
/// kube-proxy's.
pub fn stand_down(mode: Mode) -> Result<(), super::ProxyError> {
    match mode {
        Mode::Iptables => super::iptables::cleanup(),
        Mode::Nftables => super::nftables::cleanup(),
        Mode::Ipvs => super::ipvs::cleanup(),
        Mode::None => Ok(()),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn kubeadms_daemonset_pod_is_kube_proxy_and_others_are_not() {
        // kubeadm's kube-proxy DaemonSet pod, as its controller creates it.
        let kubeadm = "metadata: {name: kube-proxy-x7k2p, namespace: kube-system, labels: {k8s-app: kube-proxy}}\n\
                       spec:\n  hostNetwork: true\n  containers:\n  - name: kube-proxy\n    image: registry.k8s.io/kube-proxy:v1.34.1\n    \
                       command: [/usr/local/bin/kube-proxy, --config=/var/lib/kube-proxy/config.conf, --hostname-override=$(NODE_NAME)]\n";
        assert!(is_kube_proxy(&pod(kubeadm)));
        // By command alone, from a private registry with a port.
        assert!(is_kube_proxy(&pod("metadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: c, image: 'reg:5000/k8s/kp:1', command: [kube-proxy]}]}\n")));
        assert!(is_kube_proxy(&pod("metadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: c, image: 'reg:5000/kube-proxy@sha256:ab'}]}\n")));
        // Not in the host's network: it programs nothing of the node's.
        assert!(!is_kube_proxy(&pod(&kubeadm.replace("hostNetwork: true", "hostNetwork: false"))));
        // Finished, or another program.
        assert!(!is_kube_proxy(&pod(&format!("{kubeadm}status: {{phase: Failed}}\n"))));
        assert!(!is_kube_proxy(&pod("metadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: c, image: 'reg/kube-proxy-exporter:1'}]}\n")));
        // kubeadm's label, whatever the image (a mirror's renamed one).
        let labelled = "metadata: {name: p, namespace: kube-system, labels: {k8s-app: kube-proxy}}\nspec: {hostNetwork: true, containers: [{name: c, image: 'mirror/kp:1'}]}\n";
        assert!(is_kube_proxy(&pod(labelled)));
        assert!(!is_kube_proxy(&pod(&labelled.replace("kube-system", "default"))));
        let m = standby_message(&KubeProxy::Pod("kube-system/kube-proxy-x7k2p".into(), "u".into()));
        assert!(m.starts_with("kube-proxy pod kube-system/kube-proxy-x7k2p is bound to this node: nodelet's Service proxy stands by"), "{m}");
    }

    #[test]
    fn a_process_named_kube_proxy_in_this_network_namespace_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let net = |pid: &str, ns: &str| {
            std::fs::create_dir_all(proc.join(pid).join("ns")).unwrap();
            std::os::unix::fs::symlink(ns, proc.join(pid).join("ns/net")).unwrap();
        };
        net("self", "net:[4026531840]");
        net("10", "net:[4026531840]");
        std::fs::write(proc.join("10/comm"), "containerd\n").unwrap();
        net("20", "net:[4026532999]");
        std::fs::write(proc.join("20/comm"), "kube-proxy\n").unwrap();
        assert_eq!(running_process(proc), None, "another network namespace's kube-proxy programs another namespace");
        net("30", "net:[4026531840]");
        std::fs::write(proc.join("30/comm"), "kube-proxy\n").unwrap();
        std::fs::write(proc.join("30/cmdline"), "/usr/local/bin/kube-proxy\0--config=/var/lib/kube-proxy/config.conf\0").unwrap();
        assert_eq!(running_process(proc), Some(KubeProxy::Process(30, "/usr/local/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf".into())));
    }
}
