//! The Service proxy (kube-proxy's role): Services and EndpointSlices are
//! watched, reduced to a [`model::ProxyState`], and programmed into the
//! kernel by one backend: iptables (iptables-restore), nftables (`nft -f`),
//! IPVS (generic netlink, with kube-ipvs0 over rtnetlink). One model holds
//! both families; iptables and nftables mode program each family the
//! kernel has in that family's tables (ip6tables, `ip6 nodelet`), IPVS mode
//! IPv4 only.

pub mod model;
pub mod nftables;
pub mod nfnl;
pub mod iptables;
pub mod ipvs;
pub mod other;
pub mod refusals;

use std::net::IpAddr;

use model::Family;

/// What a backend needs besides the Services, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The family these rules are for.
    pub family: Family,
    /// The pod CIDR of this family (`clusterCIDR`): traffic to a cluster IP
    /// from outside it is masqueraded. None: only `masquerade_all` does.
    pub cluster_cidr: Option<ipnetwork::IpNetwork>,
    /// `iptables.masqueradeAll`: masquerade all traffic to cluster IPs.
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit` (default 14): the packet-mark bit for SNAT.
    pub masquerade_bit: u8,
    /// `nodePortAddresses` resolved for this family: None = every local
    /// address.
    pub node_port_ips: Option<Vec<IpAddr>>,
    /// `iptables.localhostNodePorts` (iptables mode, IPv4): node ports
    /// answer on 127.0.0.1 too (route_localnet), and connections to
    /// 127.0.0.0/8 from elsewhere are dropped (KUBE-FIREWALL).
    pub localhost_node_ports: bool,
}

impl Default for Context {
    fn default() -> Self {
        Context { family: Family::V4, cluster_cidr: None, masquerade_all: false, masquerade_bit: 14, node_port_ips: None, localhost_node_ports: false }
    }
}

/// Whether `mode`'s tools work for `family` here: `ip6tables -S` of the nat
/// table, or an nftables transaction of that family checked by the kernel
/// (over netlink in nftables mode, `nft --check` in IPVS mode; nothing
/// committed).
fn family_usable(mode: run::Mode, family: Family) -> Result<(), ProxyError> {
    match mode {
        run::Mode::Iptables => run_with_input(family.iptables().0, &["-w", "5", "-t", "nat", "-S", "POSTROUTING"], "").map(|_| ()),
        run::Mode::Nftables => nftables::family_usable(family),
        // IPVS mode's rules beside IPVS are an nftables table too, written
        // with `nft -f` at a full sync.
        run::Mode::Ipvs => {
            let script = format!("add table {} nodelet-check\nadd chain {} nodelet-check c {{ type nat hook postrouting priority 100 ; }}\n", family.nft(), family.nft());
            run_with_input("nft", &["--check", "-f", "-"], &script).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// Whether this kernel (in this network namespace) has IPv6.
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").map_or(true, |v| v.trim() == "0")
}

impl Context {
    pub fn masq_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

/// What a sync did and where its time went.
#[derive(Debug, Clone, Default)]
pub struct SyncStats {
    pub changed_chains: usize,
    pub input_bytes: usize,
    pub full: bool,
    /// Rendering and diffing the rules.
    pub plan: std::time::Duration,
    /// The iptables-restore / nft run.
    pub apply: std::time::Duration,
}

/// Why rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("running {tool}: {reason}")]
    Spawn { tool: String, reason: std::io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed { tool: String, status: String, stderr: String },
    #[error("nf_tables over netlink: {0}")]
    Netlink(#[from] nfnl::NfError),
}

/// Runs `tool args` with `input` on stdin; Ok(stdout) when it exits 0.
pub fn run_with_input(tool: &str, args: &[&str], input: &str) -> Result<String, ProxyError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|reason| ProxyError::Spawn { tool: tool.into(), reason })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|reason| ProxyError::Spawn { tool: tool.into(), reason })?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(ProxyError::Failed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the nftables table `name` of `family`; one that is not there is
/// no error.
pub fn delete_nft_table(family: Family, name: &str) -> Result<(), ProxyError> {
    Ok(nftables::delete_table(family, name)?)
}

/// kube-proxy's chain-name hash: base32 of the SHA-256 of the parts,
/// first 16 characters.
pub fn chain_hash(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    data_encoding::BASE32.encode(&h.finalize())[..16].to_string()
}

/// Golden files for rendered rules: `UPDATE_GOLDEN=1` rewrites them.
#[cfg(test)]
pub(crate) mod golden {
    pub fn check(rel: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
        if want != text {
            let first = want.lines().zip(text.lines()).position(|(a, b)| a != b).unwrap_or(want.lines().count().min(text.lines().count()));
            panic!(
                "{} differs from the rendered rules at line {}:\n  golden:   {:?}\n  rendered: {:?}\n(UPDATE_GOLDEN=1 rewrites it after review)",
                path.display(),
                first + 1,
                want.lines().nth(first),
                text.lines().nth(first)
            );
        }
    }
}

pub mod conntrack;
pub mod run;

/// Resolves the proxy's settings from `--proxy-mode`, `--proxy-config` and
/// the node.
pub fn resolve(
    mode_flag: Option<&str>,
    file: Option<&crate::config::proxy::ProxyConfig>,
    node_name: &str,
    node_ips: &[String],
    dry_run: bool,
) -> Result<run::ProxySettings, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let default = crate::config::proxy::ProxyConfig::default();
    let f = file.unwrap_or(&default);
    for field in &f.ignored {
        if field == "kubeconfig" {
            tracing::warn!(field = %field, "KubeProxyConfiguration field not used: a top-level kubeconfig is no field of kube-proxy's either; indent it under clientConnection for the proxy to use it");
        } else if field.contains('.') || crate::config::fields::KUBE_PROXY.contains(&field.as_str()) {
            tracing::warn!(field = %field, "a KubeProxyConfiguration field nodelet does not implement; ignored");
        } else {
            tracing::warn!(field = %field, "not a KubeProxyConfiguration field (kubeproxy.config.k8s.io/v1alpha1); ignored");
        }
    }
    // hostnameOverride names the node whose endpoints are local, as
    // kube-proxy's does (lowercased, trimmed).
    let proxy_node = match f.hostname_override.as_deref().map(|h| h.trim().to_lowercase()).filter(|h| !h.is_empty()) {
        Some(h) => {
            if h != node_name {
                tracing::info!(hostname_override = %h, node = %node_name, "the proxy takes the node name from its hostnameOverride");
            }
            h
        }
        None => node_name.to_string(),
    };
    let mode_text = mode_flag.map(str::to_string).or_else(|| f.mode.clone()).unwrap_or_else(|| "iptables".into());
    let mode = match mode_text.as_str() {
        "iptables" => run::Mode::Iptables,
        "nftables" => run::Mode::Nftables,
        "none" => run::Mode::None,
        "ipvs" => run::Mode::Ipvs,
        other => {
            return Err(ConfigError::Flag {
                flag: "--proxy-mode".into(),
                message: format!("Unsupported value: {other:?}: supported values: \"iptables\", \"ipvs\", \"nftables\", \"none\""),
            });
        }
    };
    let bad = |field: &str, message: String| ConfigError::Field { file: "--proxy-config".into(), field: field.into(), message };
    // clusterCIDR: one CIDR per family, comma-separated (as kube-proxy).
    let mut cluster_cidrs: Vec<ipnetwork::IpNetwork> = Vec::new();
    for part in f.cluster_cidr.as_deref().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net: ipnetwork::IpNetwork = part.parse().map_err(|_| bad("clusterCIDR", format!("Invalid value: {part:?}: must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)")))?;
        if cluster_cidrs.iter().any(|n| Family::of_net(n) == Family::of_net(&net)) {
            return Err(bad("clusterCIDR", format!("Invalid value: {:?}: at most one CIDR of each IP family", f.cluster_cidr.as_deref().unwrap_or(""))));
        }
        cluster_cidrs.push(net);
    }
    // The families served: IPv4, and IPv6 where the kernel has it (as
    // kube-proxy runs a proxier for each family it can).
    let mut families = vec![Family::V4];
    if ipv6_available() {
        // As kube-proxy asks whether the other family's iptables is
        // present: a family whose tools or kernel support fail is not
        // served (its failures would hold the other family's syncs).
        match family_usable(mode, Family::V6) {
            Ok(()) => families.push(Family::V6),
            Err(e) => tracing::warn!(error = %e, "IPv6 Services are not programmed: this node's {} for IPv6 does not work", mode.as_str()),
        }
    }
    let node_ips: Vec<IpAddr> = node_ips.iter().filter_map(|s| s.parse().ok()).collect();
    for (i, a) in f.node_port_addresses.iter().enumerate() {
        if a != "primary" && a.parse::<ipnetwork::IpNetwork>().is_err() {
            return Err(bad(&format!("nodePortAddresses[{i}]"), format!("Invalid value: {a:?}: must be a valid CIDR or \"primary\"")));
        }
    }
    let local = if f.node_port_addresses.is_empty() { Vec::new() } else { local_ips() };
    let node_port_ips = |family: Family| -> Result<Option<Vec<IpAddr>>, ConfigError> {
        Ok(node_port_ips(&f.node_port_addresses, &node_ips, family, &local))
    };
    let mut contexts = Vec::new();
    for family in families {
        contexts.push(Context {
            family,
            cluster_cidr: cluster_cidrs.iter().find(|n| Family::of_net(n) == family).copied(),
            masquerade_all: f.masquerade_all.unwrap_or(false),
            masquerade_bit: f.masquerade_bit.unwrap_or(14),
            node_port_ips: node_port_ips(family)?,
            localhost_node_ports: mode == run::Mode::Iptables && family == Family::V4 && f.localhost_node_ports.unwrap_or(true),
        });
    }
    let addr = |field: &str, v: Option<&String>, default: &str| -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let text = v.map(String::as_str).unwrap_or(default);
        if text.is_empty() {
            return Ok(None);
        }
        let with_port = if text.contains(':') { text.to_string() } else { format!("{text}:{}", default.rsplit(':').next().unwrap_or("0")) };
        with_port.parse().map(Some).map_err(|e| bad(field, format!("Invalid value: {text:?}: {e}")))
    };
    Ok(run::ProxySettings {
        mode,
        contexts,
        node_port_addresses: f.node_port_addresses.clone(),
        node_ips,
        node_name: proxy_node,
        min_sync_period: f.min_sync_period.unwrap_or(std::time::Duration::from_secs(1)),
        sync_period: f.sync_period.unwrap_or(std::time::Duration::from_secs(30)),
        kubeconfig: f.kubeconfig.clone(),
        ipvs: {
            let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
            ipvs::IpvsSettings {
                scheduler: f.ipvs.scheduler.clone().unwrap_or_else(|| "rr".into()),
                strict_arp: f.ipvs.strict_arp,
                tcp_timeout: secs(f.ipvs.tcp_timeout),
                tcp_fin_timeout: secs(f.ipvs.tcp_fin_timeout),
                udp_timeout: secs(f.ipvs.udp_timeout),
                exclude_cidrs: f.ipvs.exclude_cidrs.clone(),
                ..Default::default()
            }
        },
        healthz: addr("healthzBindAddress", f.healthz_bind_address.as_ref(), "0.0.0.0:10256")?,
        metrics: addr("metricsBindAddress", f.metrics_bind_address.as_ref(), "127.0.0.1:10249")?,
        dry_run,
    })
}

/// `nodePortAddresses` resolved for one family against the node's
/// addresses now (`local`): None when not set (every local address); the
/// addresses in its CIDRs of this family, and with `primary` the node's
/// IP of this family. A family the list says nothing of (no CIDR of it, no
/// node IP of it for `primary`) serves node ports on every address, as
/// kube-proxy adds `0.0.0.0/0` or `::/0` for it. The proxy resolves them
/// again at every sync, so node ports follow addresses as they come and go.
pub fn node_port_ips(addresses: &[String], node_ips: &[IpAddr], family: Family, local: &[IpAddr]) -> Option<Vec<IpAddr>> {
    let names_family = addresses.iter().any(|a| match a.as_str() {
        "primary" => node_ips.iter().any(|ip| Family::of(ip) == family),
        other => other.parse::<ipnetwork::IpNetwork>().is_ok_and(|n| Family::of_net(&n) == family),
    });
    if !names_family {
        return None;
    }
    let mut ips = Vec::new();
    for a in addresses {
        if a == "primary" {
            ips.extend(node_ips.iter().filter(|ip| Family::of(ip) == family));
        } else if let Ok(net) = a.parse::<ipnetwork::IpNetwork>()
            && Family::of_net(&net) == family
        {
            ips.extend(local.iter().filter(|ip| net.contains(**ip)));
        }
    }
    ips.sort();
    ips.dedup();
    Some(ips)
}

/// The node's addresses of both families.
pub fn local_ips() -> Vec<IpAddr> {
    local_ips_except(None)
}

/// The node's addresses, both families, on every interface but `except`
/// (kube-proxy's GetAllLocalAddressesExcept).
pub fn local_ips_except(except: Option<&str>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if Some(a.interface_name.as_str()) == except {
                continue;
            }
            let Some(s) = a.address.as_ref() else { continue };
            if let Some(sin) = s.as_sockaddr_in() {
                out.push(IpAddr::V4(sin.ip()));
            } else if let Some(sin6) = s.as_sockaddr_in6() {
                out.push(IpAddr::V6(sin6.ip()));
            }
        }
    }
    out
}

/// `nodelet proxy cleanup`: removes the rules of every mode.
pub fn cleanup() -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = iptables::cleanup() {
        errors.push(format!("iptables: {e}"));
    }
    if let Err(e) = nftables::cleanup() {
        errors.push(format!("nftables: {e}"));
    }
    if let Err(e) = ipvs::cleanup() {
        errors.push(format!("ipvs: {e}"));
    }
    errors
}

/// A fixed set of Services for the golden files and the backends' tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::Context;
    use super::model::{Endpoint, Family, PortKey, Protocol, ProxyState, ServicePort};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub fn basic() -> (ProxyState, Context) {
        fixture(Family::V4)
    }

    /// The same Services in IPv6 (cluster IPs fd00:10:96::…, endpoints
    /// fd00:10:244::…, the load balancer 2001:db8::80).
    pub fn basic_v6() -> (ProxyState, Context) {
        fixture(Family::V6)
    }

    /// Both, as one dual-stack model, with each family's context.
    pub fn dual() -> (ProxyState, Vec<Context>) {
        let (mut s, c4) = basic();
        let (s6, c6) = basic_v6();
        s.services.extend(s6.services);
        s.endpoints.extend(s6.endpoints);
        (s, vec![c4, c6])
    }

    fn hex(n: u8) -> u16 {
        u16::from_str_radix(&n.to_string(), 16).unwrap_or(0)
    }

    fn fixture(family: Family) -> (ProxyState, Context) {
        let addr = |v4: [u8; 4]| -> IpAddr {
            match family {
                Family::V4 => Ipv4Addr::from(v4).into(),
                // The IPv4 numbers' decimal digits as hex digits: 10.96.0.10 is fd00:10:96::10.
                Family::V6 if v4[0] == 192 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, hex(v4[3])).into(),
                Family::V6 => Ipv6Addr::new(0xfd00, 0x10, hex(v4[1]), 0, 0, 0, 0, hex(v4[3])).into(),
            }
        };
        let key = |name: &str, port: &str, protocol| PortKey { namespace: "default".into(), name: name.into(), port: port.into(), protocol, family };
        let svc = |k: &PortKey, ip: [u8; 4], port| ServicePort::cluster_ip(k.clone(), addr(ip), port);
        let ep = |n: u8, port, ready, local| Endpoint { elsewhere: false, ip: addr([10, 244, 0, n]), port, ready, serving: ready, terminating: false, local };
        let mut s = ProxyState::default();
        let web = key("web", "http", Protocol::Tcp);
        s.services.insert(web.clone(), svc(&web, [10, 96, 0, 10], 80));
        s.endpoints.insert(web.clone(), vec![ep(10, 8080, true, true), ep(11, 8080, true, false), ep(12, 8080, false, false)]);
        let sticky = key("sticky", "", Protocol::Tcp);
        let mut sp = svc(&sticky, [10, 96, 0, 11], 80);
        sp.node_port = Some(30080);
        sp.affinity = Some(10800);
        s.services.insert(sticky.clone(), sp);
        s.endpoints.insert(sticky.clone(), vec![ep(10, 80, true, true), ep(11, 80, true, false)]);
        let local = key("local", "", Protocol::Tcp);
        let mut lp = svc(&local, [10, 96, 0, 12], 80);
        lp.node_port = Some(30081);
        lp.load_balancer_ips = vec![addr([192, 0, 2, 80])];
        lp.external_local = true;
        lp.health_check_node_port = Some(32000);
        s.services.insert(local.clone(), lp);
        s.endpoints.insert(local.clone(), vec![ep(10, 80, true, true), ep(11, 80, true, false)]);
        // internalTrafficPolicy Local with no endpoint here, externally Cluster.
        let internal = key("internal", "", Protocol::Tcp);
        let mut ip = svc(&internal, [10, 96, 0, 13], 80);
        ip.node_port = Some(30082);
        ip.internal_local = true;
        s.services.insert(internal.clone(), ip);
        s.endpoints.insert(internal.clone(), vec![ep(12, 80, true, false)]);
        // externalTrafficPolicy Local with no endpoint here.
        let edge = key("edge", "", Protocol::Tcp);
        let mut ep_edge = svc(&edge, [10, 96, 0, 14], 80);
        ep_edge.node_port = Some(30083);
        ep_edge.external_local = true;
        s.services.insert(edge.clone(), ep_edge);
        s.endpoints.insert(edge.clone(), vec![ep(12, 80, true, false)]);
        let dns = key("dns", "dns", Protocol::Udp);
        s.services.insert(dns.clone(), svc(&dns, [10, 96, 0, 53], 53));
        let cidr = if family == Family::V4 { "10.244.0.0/16" } else { "fd00:10:244::/56" };
        // kube-proxy's default localhostNodePorts (its IPv4 iptables rules).
        let ctx = Context { family, cluster_cidr: Some(cidr.parse().unwrap()), localhost_node_ports: family == Family::V4, ..Default::default() };
        (s, ctx)
    }

}

#[cfg(test)]
mod resolve_tests {
    #[test]
    fn hostname_override_names_the_proxys_node_and_both_cluster_cidr_families_are_read() {
        let f = crate::config::proxy::ProxyConfig::parse(
            b"kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nhostnameOverride: ' Worker-7 '\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n",
            "p.yaml",
        )
        .unwrap();
        let s = super::resolve(None, Some(&f), "node-a", &[], true).unwrap();
        assert_eq!(s.node_name, "worker-7", "kube-proxy's: trimmed, lowercased");
        assert_eq!(s.contexts[0].cluster_cidr, Some("10.244.0.0/16".parse().unwrap()));
        // This machine has IPv6 and ip6tables: both families are served.
        assert!(super::ipv6_available(), "the test machine has IPv6");
        assert_eq!(s.contexts.len(), 2, "{:?}", s.contexts);
        assert_eq!(s.contexts[1].family, super::model::Family::V6);
        assert_eq!(s.contexts[1].cluster_cidr, Some("fd00:10:244::/56".parse().unwrap()), "each family its own");
        let twice = crate::config::proxy::ProxyConfig::parse(b"kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nclusterCIDR: 10.244.0.0/16,10.245.0.0/16\n", "p.yaml").unwrap();
        let e = super::resolve(None, Some(&twice), "node-a", &[], true).unwrap_err().to_string();
        assert!(e.contains("clusterCIDR") && e.contains("at most one CIDR of each IP family"), "{e}");
        assert_eq!(f.cluster_cidr.as_deref(), Some("10.244.0.0/16,fd00:10:244::/56"), "both families kept");
        let s = super::resolve(None, None, "node-a", &[], true).unwrap();
        assert_eq!(s.node_name, "node-a");
    }
}

#[cfg(test)]
mod node_port_tests {
    use super::*;

    #[test]
    fn node_port_addresses_per_family_and_a_family_not_named_serves_everywhere() {
        let local: Vec<IpAddr> = ["10.0.0.5", "192.168.1.20", "fd00:1::20", "fe80::1"].iter().map(|s| s.parse().unwrap()).collect();
        let node_ips: Vec<IpAddr> = vec!["192.168.1.20".parse().unwrap()];
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(node_port_ips(&[], &node_ips, Family::V4, &local), None, "not set: every address");
        let v4_only = list(&["10.0.0.0/8"]);
        assert_eq!(node_port_ips(&v4_only, &node_ips, Family::V4, &local), Some(vec!["10.0.0.5".parse().unwrap()]));
        // kube-proxy adds ::/0 for a family the list does not name.
        assert_eq!(node_port_ips(&v4_only, &node_ips, Family::V6, &local), None);
        let primary = list(&["primary"]);
        assert_eq!(node_port_ips(&primary, &node_ips, Family::V4, &local), Some(node_ips.clone()));
        assert_eq!(node_port_ips(&primary, &node_ips, Family::V6, &local), None, "no IPv6 node IP: every IPv6 address");
        let both = list(&["192.168.0.0/16", "fd00:1::/64"]);
        assert_eq!(node_port_ips(&both, &node_ips, Family::V6, &local), Some(vec!["fd00:1::20".parse().unwrap()]));
        // A CIDR of the family that holds no address now: none (until one comes).
        assert_eq!(node_port_ips(&list(&["172.16.0.0/12"]), &node_ips, Family::V4, &local), Some(vec![]));
    }
}
