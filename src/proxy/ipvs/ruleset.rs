//! IPVS mode's nftables table: fixed chains and rules whose sets hold the
//! addresses (so the ruleset does not grow with Services), and the
//! `firewall` chain for loadBalancerSourceRanges.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::TABLE;
use super::plan::Element;
use crate::proxy::Context;
use crate::proxy::model::{Family, ProxyState};

/// The family's table as nft names it: `ip nodelet-ipvs`, `ip6 nodelet-ipvs`.
pub(super) fn table(family: Family) -> String {
    format!("{} {TABLE}", family.nft())
}

/// The nftables sets and their types (`A`: the family's address type).
const SETS: &[(&str, &str)] = &[
    ("cluster-ips", "A . inet_proto . inet_service"),
    ("external-ips", "A . inet_proto . inet_service"),
    ("nodeports", "inet_proto . inet_service"),
    ("no-endpoint-services", "A . inet_proto . inet_service"),
    ("no-endpoint-nodeports", "inet_proto . inet_service"),
    ("vips", "A"),
    ("vip-ports", "A . inet_proto . inet_service"),
    ("hairpin", "A . A . inet_proto . inet_service"),
];

const BASE_CHAINS: &[(&str, &str)] = &[
    ("filter-input", "type filter hook input priority -110 ;"),
    ("filter-output", "type filter hook output priority -110 ;"),
    ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
    ("nat-output", "type nat hook output priority -100 ;"),
    ("nat-postrouting", "type nat hook postrouting priority 100 ;"),
];

/// The `firewall` chain's rules for `state`'s Service ports of `family`:
/// for each load-balancer IP and port of a Service with
/// loadBalancerSourceRanges, new connections from outside the ranges (of
/// the family: none of it drops all) are dropped before IPVS schedules them.
pub fn firewall_rules(state: &ProxyState, family: Family) -> Vec<String> {
    let ip = family.nft();
    let mut out = Vec::new();
    for svc in state.services.values().filter(|s| s.key.family == family) {
        let Some(ranges) = &svc.source_ranges else { continue };
        let proto = svc.key.protocol.as_str();
        for lb in &svc.load_balancer_ips {
            let from = if ranges.is_empty() {
                String::new()
            } else {
                format!(" {ip} saddr != {{ {} }}", ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            out.push(format!("{ip} daddr {lb} meta l4proto {proto} th dport {}{from} drop comment \"{} loadBalancerSourceRanges\"", svc.port, svc.key));
        }
    }
    out.sort();
    out
}

/// The `nft -f` input that makes the `firewall` chain of `family`'s table
/// hold `rules`.
pub(super) fn firewall_text(family: Family, rules: &[String]) -> String {
    let t = table(family);
    let mut s = format!("flush chain {t} firewall\n");
    for r in rules {
        let _ = writeln!(s, "add rule {t} firewall {r}");
    }
    s
}

/// The whole auxiliary ruleset of `ctx`'s family, replacing any older table
/// in the same transaction.
pub fn render_ruleset<'a>(ctx: &Context, elements: impl Iterator<Item = &'a Element>) -> String {
    let family = ctx.family;
    let (ip, addr_type, loopback) = (family.nft(), family.nft_addr_type(), family.loopback());
    let t = table(family);
    let mut s = String::new();
    let _ = writeln!(s, "add table {t} {{ comment \"rules for nodelet's Service proxy (IPVS mode)\" ; }}");
    let _ = writeln!(s, "delete table {t}");
    let _ = writeln!(s, "add table {t} {{ comment \"rules for nodelet's Service proxy (IPVS mode)\" ; }}");
    for (name, hook) in BASE_CHAINS {
        let _ = writeln!(s, "add chain {t} {name} {{ {hook} }}");
    }
    for name in ["endpoints-check", "services", "mark-for-masquerade", "firewall"] {
        let _ = writeln!(s, "add chain {t} {name}");
    }
    for (name, ty) in SETS {
        let _ = writeln!(s, "add set {t} {name} {{ type {} ; }}", ty.replace('A', addr_type));
    }
    let mark = ctx.masq_mark();
    let rules: Vec<(&str, String)> = {
        let mut r = vec![
            ("filter-input", "ct state new jump endpoints-check".to_string()),
            // loadBalancerSourceRanges (kube-proxy's KUBE-LOAD-BALANCER-FW
            // and KUBE-FIREWALL): before IPVS sees the packet (LOCAL_IN).
            ("filter-input", "ct state new jump firewall".to_string()),
            // A VIP answers only on its Services' ports (kube-proxy's
            // KUBE-IPVS-FILTER, on input): nothing else on the node is
            // reachable through it from outside.
            ("filter-input", format!("ct state new meta l4proto {{ tcp, udp, sctp }} {ip} daddr @vips {ip} daddr . meta l4proto . th dport != @vip-ports reject")),
            ("filter-output", "ct state new jump endpoints-check".to_string()),
            ("endpoints-check", format!("{ip} daddr . meta l4proto . th dport @no-endpoint-services reject")),
            (
                "endpoints-check",
                format!("fib daddr type local {ip} daddr != {loopback} meta l4proto . th dport @no-endpoint-nodeports reject"),
            ),
            ("nat-prerouting", "jump services".to_string()),
            ("nat-output", "jump services".to_string()),
            // The node itself connecting to a cluster IP leaves with the
            // VIP as its source (the local route's): masqueraded, or remote
            // endpoints could not answer (kube-proxy's KUBE-CLUSTER-IP
            // src,dst rule).
            ("services", format!("{ip} saddr . meta l4proto . th dport @cluster-ips jump mark-for-masquerade")),
        ];
        if ctx.masquerade_all {
            r.push(("services", format!("{ip} daddr . meta l4proto . th dport @cluster-ips jump mark-for-masquerade")));
        } else if let Some(cidr) = ctx.cluster_cidr {
            r.push(("services", format!("{ip} daddr . meta l4proto . th dport @cluster-ips {ip} saddr != {cidr} jump mark-for-masquerade")));
        }
        r.push(("services", format!("{ip} daddr . meta l4proto . th dport @external-ips jump mark-for-masquerade")));
        r.push(("services", format!("fib daddr type local {ip} daddr != {loopback} meta l4proto . th dport @nodeports jump mark-for-masquerade")));
        r.push(("mark-for-masquerade", format!("meta mark set meta mark | {mark:#x}")));
        r.push(("nat-postrouting", format!("{ip} saddr . {ip} daddr . meta l4proto . th dport @hairpin masquerade fully-random")));
        r.push(("nat-postrouting", format!("meta mark & {mark:#x} == 0 return")));
        r.push(("nat-postrouting", format!("meta mark set meta mark ^ {mark:#x}")));
        r.push(("nat-postrouting", "masquerade fully-random".to_string()));
        r
    };
    for (chain, rule) in rules {
        let _ = writeln!(s, "add rule {t} {chain} {rule}");
    }
    let mut by_set: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (set, e) in elements {
        by_set.entry(set).or_default().push(e);
    }
    for (set, mut es) in by_set {
        es.sort();
        for chunk in es.chunks(1000) {
            let _ = writeln!(s, "add element {t} {set} {{ {} }}", chunk.join(", "));
        }
    }
    s
}
