//! The pod's /etc/hosts, as kubelet writes it to `<pod dir>/etc-hosts` and
//! mounts it into every container: localhost entries, the pod's IPs with
//! its hostname (and FQDN when it has a subdomain), then hostAliases. A
//! host-network pod gets the node's own /etc/hosts plus its aliases.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;

use crate::node::NodeContext;

const HEADER: &str = "# Kubernetes-managed hosts file.\n";
const HEADER_HOST_NETWORK: &str = "# Kubernetes-managed hosts file (host network).\n";

fn aliases(pod: &Pod) -> String {
    let list = pod.spec.as_ref().and_then(|s| s.host_aliases.clone()).unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for a in list {
        let names = a.hostnames.unwrap_or_default();
        if names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
    }
    out
}

/// The hostname and, with a subdomain, the FQDN a pod's IPs get.
pub fn names(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let hostname = hostname.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string();
    let fqdn = spec.subdomain.filter(|s| !s.is_empty()).map(|sub| {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        if cluster_domain.is_empty() { format!("{hostname}.{sub}.{ns}.svc") } else { format!("{hostname}.{sub}.{ns}.svc.{cluster_domain}") }
    });
    (hostname, fqdn)
}

/// The file for a pod with its own network namespace.
pub fn managed(pod: &Pod, ips: &[String], cluster_domain: &str) -> String {
    let (hostname, fqdn) = names(pod, cluster_domain);
    let mut out = String::from(HEADER);
    out.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    for ip in ips {
        match &fqdn {
            Some(f) => out.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    out.push_str(&aliases(pod));
    out
}

/// The file for a host-network pod: the node's, plus the pod's aliases.
pub fn host_network(pod: &Pod, node_hosts: &str) -> String {
    let mut out = String::from(HEADER_HOST_NETWORK);
    out.push_str(node_hosts);
    if !node_hosts.is_empty() && !node_hosts.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&aliases(pod));
    out
}

/// Writes the pod's /etc/hosts if it changed; returns its path. None when
/// kubelet would not manage it (no pod IP yet on a pod network).
pub fn write_etc_hosts(pod: &Pod, node: &NodeContext, ips: &[String], dry_run: bool) -> Result<Option<PathBuf>, String> {
    let on_host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if !on_host_network && ips.is_empty() {
        return Ok(None);
    }
    let text = if on_host_network {
        host_network(pod, &std::fs::read_to_string("/etc/hosts").unwrap_or_default())
    } else {
        managed(pod, ips, &node.dns.domain)
    };
    let path = node.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?.join("etc-hosts");
    if dry_run {
        return Ok(Some(path));
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        crate::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({"metadata": {"name": "web-0", "namespace": "shop"}, "spec": {"containers": []}});
        for (k, val) in extra.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_ip_hostname_fqdn_and_aliases() {
        let p = pod(serde_json::json!({"subdomain": "web", "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db", "db.local"]}]}));
        let text = managed(&p, &["10.0.0.7".into()], "cluster.local");
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.0.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"), "{text}");
        assert!(text.ends_with("# Entries added by HostAliases.\n10.1.2.3\tdb\tdb.local\n"), "{text}");
        let plain = managed(&pod(serde_json::json!({"hostname": "h"})), &["10.0.0.8".into()], "cluster.local");
        assert!(plain.contains("10.0.0.8\th\n"));
    }

    #[test]
    fn host_network_copies_the_node() {
        let p = pod(serde_json::json!({"hostNetwork": true}));
        let text = host_network(&p, "127.0.0.1 localhost\n192.168.1.5 node1");
        assert_eq!(text, "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n192.168.1.5 node1\n");
    }
}
