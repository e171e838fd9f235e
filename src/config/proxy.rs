//! The KubeProxyConfiguration file (`--proxy-config`,
//! kubeproxy.config.k8s.io/v1alpha1). The fields nodelet's proxy uses are
//! read and checked (a wrong type or value names the file and the field);
//! any other field is accepted with a warning, as kube-proxy's lenient
//! decoding does, so the files operators have parse as they are.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::ConfigError;
use super::kubelet::{config_object, duration, field};

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// The fields nodelet uses; `None` means unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    pub mode: Option<String>,
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Vec<String>,
    pub hostname_override: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<u8>,
    /// `iptables.localhostNodePorts` (iptables mode; kube-proxy's default
    /// is true): node ports on 127.0.0.1 too, with route_localnet.
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    /// `clientConnection.kubeconfig`: the proxy's own credentials (kube-proxy's
    /// kubeconfig, user `system:kube-proxy`), used for its watches instead of
    /// the node's identity.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `ipvs.*`, read in IPVS mode.
    pub ipvs: IpvsConfig,
    /// Fields accepted but not used, for one warning each.
    pub ignored: Vec<String>,
}

/// KubeProxyConfiguration `ipvs.*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IpvsConfig {
    pub scheduler: Option<String>,
    pub strict_arp: bool,
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
    /// Both families.
    pub exclude_cidrs: Vec<ipnetwork::IpNetwork>,
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let bytes = crate::decode::read_file(path).map_err(|e| ConfigError::Read { file: file.clone(), message: e.to_string() })?;
        Self::parse(&bytes, &file)
    }

    pub fn parse(bytes: &[u8], file: &str) -> Result<Self, ConfigError> {
        let map = config_object(bytes, file, KIND, API_VERSION)?;
        let bad = |f: &str, m: String| ConfigError::Field { file: file.into(), field: f.into(), message: m };
        let mut c = ProxyConfig::default();
        let mut per_mode: Vec<(&str, &serde_json::Map<String, Value>)> = Vec::new();
        for (k, v) in &map {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "kind" | "apiVersion" => {}
                "mode" => {
                    let m: String = field(file, k, v)?;
                    if m == "kernelspace" {
                        return Err(bad(k, "Unsupported value: \"kernelspace\": that is kube-proxy's Windows mode; supported values: \"iptables\", \"ipvs\", \"nftables\"".into()));
                    }
                    if !["", "iptables", "nftables", "ipvs"].contains(&m.as_str()) {
                        return Err(bad(k, format!("Unsupported value: {m:?}: supported values: \"iptables\", \"ipvs\", \"nftables\"")));
                    }
                    c.mode = (!m.is_empty()).then_some(m);
                }
                "clusterCIDR" => {
                    let s: String = field(file, k, v)?;
                    for part in s.split(',').filter(|p| !p.is_empty()) {
                        part.parse::<ipnetwork::IpNetwork>().map_err(|e| bad(k, format!("Invalid value: {part:?}: {e}")))?;
                    }
                    c.cluster_cidr = (!s.is_empty()).then_some(s);
                }
                "nodePortAddresses" => {
                    let list: Vec<String> = field(file, k, v)?;
                    for a in &list {
                        if a != "primary" && a.parse::<ipnetwork::IpNetwork>().is_err() {
                            return Err(bad(k, format!("Invalid value: {a:?}: must be a CIDR or \"primary\"")));
                        }
                    }
                    c.node_port_addresses = list;
                }
                "hostnameOverride" => c.hostname_override = Some(field(file, k, v)?).filter(|s: &String| !s.is_empty()),
                "healthzBindAddress" => c.healthz_bind_address = Some(field(file, k, v)?),
                "metricsBindAddress" => c.metrics_bind_address = Some(field(file, k, v)?),
                "clientConnection" => match v {
                    Value::Object(m) => {
                        for (ck, cv) in m {
                            match ck.as_str() {
                                _ if cv.is_null() => {}
                                "kubeconfig" => {
                                    let path: String = field(file, "clientConnection.kubeconfig", cv)?;
                                    c.kubeconfig = (!path.is_empty()).then(|| path.into());
                                }
                                other => c.ignored.push(format!("clientConnection.{other}")),
                            }
                        }
                    }
                    _ => return Err(bad(k, "expected an object".into())),
                },
                "iptables" | "nftables" | "ipvs" => match v {
                    Value::Object(m) => per_mode.push((k.as_str(), m)),
                    _ => return Err(bad(k, "expected an object".into())),
                },
                other => match super::fields::classify(other, super::fields::KUBE_PROXY) {
                    super::fields::Unused::Typo(meant) => {
                        return Err(bad(other, format!("unknown field: no KubeProxyConfiguration has it; did you mean {meant:?}?")));
                    }
                    _ => c.ignored.push(other.to_string()),
                },
            }
        }
        // iptables.* applies in iptables mode, nftables.* in nftables mode;
        // IPVS mode takes its sync periods from ipvs.* and the masquerade
        // settings from iptables.*, as kube-proxy.
        let mode = c.mode.clone().unwrap_or_else(|| "iptables".into());
        for (section, m) in per_mode {
            let applies = section == mode || (section == "iptables" && mode != "nftables");
            let periods = section == mode || (section == "iptables" && mode != "nftables" && mode != "ipvs");
            for (k, v) in m {
                let name = format!("{section}.{k}");
                if v.is_null() {
                    continue;
                }
                if section == "ipvs" {
                    match k.as_str() {
                        "syncPeriod" if periods => c.sync_period = Some(duration(file, &name, v)?),
                        "minSyncPeriod" if periods => c.min_sync_period = Some(duration(file, &name, v)?),
                        "syncPeriod" | "minSyncPeriod" => {}
                        "scheduler" => {
                            let sched: String = field(file, &name, v)?;
                            if !sched.is_empty() && !crate::names::IPVS_SCHEDULERS.contains(&sched.as_str()) {
                                return Err(bad(
                                    &name,
                                    format!("Invalid value: {sched:?}: supported values: {}", crate::names::IPVS_SCHEDULERS.join(", ")),
                                ));
                            }
                            c.ipvs.scheduler = (!sched.is_empty()).then_some(sched);
                        }
                        "strictARP" => c.ipvs.strict_arp = field(file, &name, v)?,
                        "tcpTimeout" => c.ipvs.tcp_timeout = Some(duration(file, &name, v)?),
                        "tcpFinTimeout" => c.ipvs.tcp_fin_timeout = Some(duration(file, &name, v)?),
                        "udpTimeout" => c.ipvs.udp_timeout = Some(duration(file, &name, v)?),
                        "excludeCIDRs" => {
                            let list: Vec<String> = field(file, &name, v)?;
                            for (i, cidr) in list.iter().enumerate() {
                                match cidr.parse::<ipnetwork::IpNetwork>() {
                                    Ok(n) => c.ipvs.exclude_cidrs.push(n),
                                    Err(e) => return Err(bad(&format!("{name}[{i}]"), format!("Invalid value: {cidr:?}: {e}"))),
                                }
                            }
                        }
                        _ => c.ignored.push(name),
                    }
                    continue;
                }
                match k.as_str() {
                    "syncPeriod" if periods => c.sync_period = Some(duration(file, &name, v)?),
                    "minSyncPeriod" if periods => c.min_sync_period = Some(duration(file, &name, v)?),
                    "masqueradeAll" if applies => c.masquerade_all = Some(field(file, &name, v)?),
                    "masqueradeBit" if applies => {
                        let b: i64 = field(file, &name, v)?;
                        if !(0..=31).contains(&b) {
                            return Err(bad(&name, format!("Invalid value: {b}: must be within the range [0, 31]")));
                        }
                        c.masquerade_bit = Some(b as u8);
                    }
                    "localhostNodePorts" if section == "iptables" && mode == "iptables" => c.localhost_node_ports = Some(field(file, &name, v)?),
                    "masqueradeAll" | "masqueradeBit" | "syncPeriod" | "minSyncPeriod" | "localhostNodePorts" => {}
                    _ => c.ignored.push(name),
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_file_parses_as_is() {
        // 004's kube-proxy-config.yml, with its flattened clientConnection.
        let seed = "kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nbindAddress: 0.0.0.0\n\
                    metricsBindAddress: 0.0.0.0:10249\nclientConnection:\nkubeconfig: /opt/kubernetes/cfg/kube-proxy.kubeconfig\n\
                    hostnameOverride: k8s-master\nclusterCIDR: 10.0.0.0/24\n";
        let c = ProxyConfig::parse(seed.as_bytes(), "kube-proxy-config.yml").unwrap();
        assert_eq!(c.cluster_cidr.as_deref(), Some("10.0.0.0/24"));
        assert_eq!(c.hostname_override.as_deref(), Some("k8s-master"));
        assert_eq!(c.metrics_bind_address.as_deref(), Some("0.0.0.0:10249"));
        assert_eq!(c.ignored, vec!["bindAddress".to_string(), "kubeconfig".to_string()]);
        // kube-proxy reads the kubeconfig only under clientConnection (the
        // seed's flattened key is ignored there too, with a warning).
        assert_eq!(c.kubeconfig, None);
        let nested = seed.replace("\nkubeconfig:", "\n  kubeconfig:");
        let c = ProxyConfig::parse(nested.as_bytes(), "kube-proxy-config.yml").unwrap();
        assert_eq!(c.kubeconfig.as_deref(), Some(Path::new("/opt/kubernetes/cfg/kube-proxy.kubeconfig")));
        let e = ProxyConfig::parse(b"kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nclientConnection: {kubeconfig: 7}\n", "p.yaml").unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: clientConnection.kubeconfig: "), "{e}");
    }

    #[test]
    fn mode_sections_and_errors() {
        let f = "kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nmode: nftables\n\
                 nftables: {syncPeriod: 45s, minSyncPeriod: 2s, masqueradeBit: 15}\niptables: {syncPeriod: 10s}\n";
        let c = ProxyConfig::parse(f.as_bytes(), "p.yaml").unwrap();
        assert_eq!(c.sync_period, Some(Duration::from_secs(45)));
        assert_eq!(c.min_sync_period, Some(Duration::from_secs(2)));
        assert_eq!(c.masquerade_bit, Some(15));
        let e = ProxyConfig::parse(f.replace("nftables\n", "userspace\n").as_bytes(), "p.yaml").unwrap_err();
        assert_eq!(e.to_string(), "p.yaml: mode: Unsupported value: \"userspace\": supported values: \"iptables\", \"ipvs\", \"nftables\"");
        let e = ProxyConfig::parse(f.replace("nftables\n", "kernelspace\n").as_bytes(), "p.yaml").unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: mode: Unsupported value: \"kernelspace\": that is kube-proxy's Windows mode"), "{e}");
        let e = ProxyConfig::parse(f.replace("45s", "soon").as_bytes(), "p.yaml").unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: nftables.syncPeriod: "), "{e}");
    }

    #[test]
    fn the_ipvs_section() {
        let f = "kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nmode: ipvs\n\
                 iptables: {syncPeriod: 10s, masqueradeAll: true}\n\
                 ipvs: {scheduler: wlc, syncPeriod: 20s, minSyncPeriod: 0s, strictARP: true, tcpTimeout: 900s, \
                 tcpFinTimeout: 2m, udpTimeout: 300s, excludeCIDRs: [10.0.9.0/24, 'fd00::/8']}\n";
        let c = ProxyConfig::parse(f.as_bytes(), "p.yaml").unwrap();
        assert_eq!(c.sync_period, Some(Duration::from_secs(20)), "ipvs.syncPeriod, not iptables'");
        assert_eq!(c.min_sync_period, Some(Duration::ZERO));
        assert_eq!(c.masquerade_all, Some(true), "iptables.masqueradeAll applies in IPVS mode");
        assert_eq!(c.ipvs.scheduler.as_deref(), Some("wlc"));
        assert!(c.ipvs.strict_arp);
        assert_eq!((c.ipvs.tcp_timeout, c.ipvs.tcp_fin_timeout), (Some(Duration::from_secs(900)), Some(Duration::from_secs(120))));
        assert_eq!(c.ipvs.exclude_cidrs, vec!["10.0.9.0/24".parse().unwrap(), "fd00::/8".parse().unwrap()], "both families");
        let e = ProxyConfig::parse(f.replace("wlc", "fastest").as_bytes(), "p.yaml").unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: ipvs.scheduler: Invalid value: \"fastest\""), "{e}");
        let e = ProxyConfig::parse(f.replace("10.0.9.0/24", "10.0.9.0/99").as_bytes(), "p.yaml").unwrap_err();
        assert!(e.to_string().starts_with("p.yaml: ipvs.excludeCIDRs[0]: "), "{e}");
    }
}
