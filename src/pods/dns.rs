//! The DNS configuration a pod's sandbox gets, per dnsPolicy, as kubelet
//! computes it: cluster DNS with the namespace search list and `ndots:5`, the
//! node's resolv.conf, or only what the pod's dnsConfig says; then the pod's
//! dnsConfig merged in, within resolv.conf's limits.

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::cri;

/// At most this many nameservers are honoured by the resolver.
pub const MAX_NAMESERVERS: usize = 3;
/// Limits kubelet applies to the search list.
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_CHARS: usize = 2048;

pub use crate::node::{ClusterDns, ResolvConf};

fn merge_options(base: &mut Vec<String>, extra: impl IntoIterator<Item = String>) {
    for opt in extra {
        let name = opt.split(':').next().unwrap_or("").to_string();
        base.retain(|o| o.split(':').next() != Some(name.as_str()));
        base.push(opt);
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// kubelet's event reason when a ClusterFirst pod meets a node without
/// clusterDNS.
pub const MISSING_CLUSTER_DNS: &str = "MissingClusterDNS";

/// kubelet's event reason for nameserver and search limits exceeded.
pub const DNS_CONFIG_FORMING: &str = "DNSConfigForming";

/// kubelet's words for it, logged once for the node at start.
pub const MISSING_CLUSTER_DNS_MESSAGE: &str =
    "kubelet does not have ClusterDNS IP configured and cannot create Pod using \"ClusterFirst\" policy. Falling back to \"Default\" policy.";

/// A warning about a pod's DNS config, with the event reason kubelet gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsWarning {
    pub reason: &'static str,
    pub message: String,
}

/// The sandbox DNS config for a pod, plus warnings worth an event (limits
/// exceeded, no cluster DNS configured).
pub fn dns_config(pod: &Pod, dns: &ClusterDns) -> (cri::DnsConfig, Vec<DnsWarning>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let host_network = spec.host_network == Some(true);
    let mut warnings = Vec::new();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut cfg = cri::DnsConfig::default();
    if cluster && dns.servers.is_empty() {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        warnings.push(DnsWarning {
            reason: MISSING_CLUSTER_DNS,
            message: format!("pod: \"{name}_{namespace}({uid})\". {MISSING_CLUSTER_DNS_MESSAGE}"),
        });
    }
    match policy {
        "None" => {}
        _ if cluster && !dns.servers.is_empty() => {
            cfg.servers = dns.servers.clone();
            if !dns.domain.is_empty() {
                let d = &dns.domain;
                cfg.searches = vec![format!("{namespace}.svc.{d}"), format!("svc.{d}"), d.clone()];
            }
            cfg.searches.extend(dns.host.searches.iter().cloned());
            cfg.options = vec!["ndots:5".into()];
        }
        _ => {
            cfg.servers = dns.host.nameservers.clone();
            cfg.searches = dns.host.searches.clone();
            cfg.options = dns.host.options.clone();
        }
    }
    if let Some(pc) = &spec.dns_config {
        cfg.servers.extend(pc.nameservers.iter().flatten().cloned());
        cfg.searches.extend(pc.searches.iter().flatten().cloned());
        merge_options(
            &mut cfg.options,
            pc.options.iter().flatten().map(|o| match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            }),
        );
    }
    dedup(&mut cfg.servers);
    dedup(&mut cfg.searches);
    if cfg.servers.len() > MAX_NAMESERVERS {
        warnings.push(DnsWarning {
            reason: DNS_CONFIG_FORMING,
            message: format!(
                "Nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
                cfg.servers[..MAX_NAMESERVERS].join(" ")
            ),
        });
        cfg.servers.truncate(MAX_NAMESERVERS);
    }
    let mut total = 0;
    let before = cfg.searches.len();
    cfg.searches = cfg
        .searches
        .into_iter()
        .take(MAX_SEARCHES)
        .take_while(|s| {
            total += s.len() + 1;
            total <= MAX_SEARCH_CHARS
        })
        .collect();
    if cfg.searches.len() < before {
        warnings.push(DnsWarning {
            reason: DNS_CONFIG_FORMING,
            message: format!(
                "Search Line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
                cfg.searches.join(" ")
            ),
        });
    }
    (cfg, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn pod(policy: &str, host_network: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("team".into());
        p.spec = Some(PodSpec { dns_policy: Some(policy.into()), host_network: Some(host_network), ..Default::default() });
        p
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            servers: vec!["10.96.0.10".into()],
            domain: "cluster.local".into(),
            host: ResolvConf::parse("nameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch corp.example\noptions rotate\n"),
        }
    }

    #[test]
    fn cluster_first() {
        let (c, w) = dns_config(&pod("ClusterFirst", false), &cluster());
        assert!(w.is_empty());
        assert_eq!(c.servers, vec!["10.96.0.10"]);
        assert_eq!(c.searches, vec!["team.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]);
        assert_eq!(c.options, vec!["ndots:5"]);
    }

    #[test]
    fn host_network_falls_back_to_the_node_unless_with_host_net() {
        let (c, _) = dns_config(&pod("ClusterFirst", true), &cluster());
        assert_eq!(c.servers, vec!["1.1.1.1", "8.8.8.8"]);
        let (c, _) = dns_config(&pod("ClusterFirstWithHostNet", true), &cluster());
        assert_eq!(c.servers, vec!["10.96.0.10"]);
    }

    #[test]
    fn default_and_none_with_dns_config() {
        let (c, _) = dns_config(&pod("Default", false), &cluster());
        assert_eq!(c.options, vec!["rotate"]);
        let mut p = pod("None", false);
        p.spec.as_mut().unwrap().dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["9.9.9.9".into()]),
            searches: Some(vec!["a.example".into()]),
            options: Some(vec![PodDNSConfigOption { name: Some("ndots".into()), value: Some("2".into()) }]),
        });
        let (c, _) = dns_config(&p, &cluster());
        assert_eq!((c.servers, c.searches, c.options), (vec!["9.9.9.9".to_string()], vec!["a.example".to_string()], vec!["ndots:2".to_string()]));
    }

    #[test]
    fn no_cluster_dns_warns_and_uses_the_node() {
        let mut d = cluster();
        d.servers.clear();
        let (c, w) = dns_config(&pod("ClusterFirst", false), &d);
        assert_eq!(c.servers, vec!["1.1.1.1", "8.8.8.8"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].reason, "MissingClusterDNS");
        assert!(w[0].message.ends_with(MISSING_CLUSTER_DNS_MESSAGE), "{}", w[0].message);
    }

    #[test]
    fn limits() {
        let mut p = pod("ClusterFirst", false);
        p.spec.as_mut().unwrap().dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.0.0.1".into(), "1.0.0.2".into(), "1.0.0.3".into()]),
            searches: Some((0..40).map(|i| format!("s{i}.example")).collect()),
            options: None,
        });
        let (c, w) = dns_config(&p, &cluster());
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.searches.len(), 32);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|w| w.reason == "DNSConfigForming"));
    }
}
