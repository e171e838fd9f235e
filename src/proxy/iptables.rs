//! iptables mode: kube-proxy's chain layout, written with one
//! `iptables-restore --noflush` per sync. The committed ruleset is kept in
//! memory so that a sync rewrites only the top-level chains and the
//! per-service chains that changed; a full sync (at start, periodically,
//! after a failure) rewrites everything and deletes stale chains found with
//! `iptables-save`. A restore is atomic per table, so the node is never
//! without its Service rules in between.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::model::{Endpoint, Family, PortKey, ProxyState, ServicePort, select};
use super::{Context, ProxyError, SyncStats, chain_hash, run_with_input};

pub const FILTER: &str = "filter";
pub const NAT: &str = "nat";

/// The chains that list every Service: written at a full sync (they are
/// in tables other programs share, so the hourly full sync rewrites them),
/// otherwise only when their rules change, as every other chain — an
/// endpoint change then restores a few chains instead of tens of thousands
/// of rules (kube-proxy rewrites them at every sync).
const TOP_LEVEL: &[&str] =
    &["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-FIREWALL"];

/// Prefixes of the per-service chains nodelet owns.
const OWNED_PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-"];

/// The jumps from the built-in chains: (table, chain, rule).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (FILTER, "INPUT", "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS"),
    (FILTER, "INPUT", "-j KUBE-FIREWALL"),
    (FILTER, "OUTPUT", "-j KUBE-FIREWALL"),
    (FILTER, "INPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
    (FILTER, "FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
    (FILTER, "FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES"),
    (FILTER, "FORWARD", "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"),
    (FILTER, "OUTPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
    (NAT, "PREROUTING", "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
    (NAT, "OUTPUT", "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
    (NAT, "POSTROUTING", "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"),
];

/// A ruleset: table → chain → rules (the arguments after `-A CHAIN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub tables: BTreeMap<&'static str, BTreeMap<String, Vec<String>>>,
}

impl Rendered {
    fn chain(&mut self, table: &'static str, chain: &str) -> &mut Vec<String> {
        self.tables.entry(table).or_default().entry(chain.to_string()).or_default()
    }

    fn rule(&mut self, table: &'static str, chain: &str, rule: String) {
        self.chain(table, chain).push(rule);
    }

    pub fn rule_count(&self) -> usize {
        self.tables.values().flat_map(|t| t.values()).map(Vec::len).sum()
    }
}

fn svc_chain(prefix: &str, key: &PortKey) -> String {
    format!("{prefix}{}", chain_hash(&[&key.to_string(), key.protocol.as_str()]))
}

fn sep_chain(key: &PortKey, ep: &Endpoint) -> String {
    format!("KUBE-SEP-{}", chain_hash(&[&key.to_string(), key.protocol.as_str(), &ep.to_string()]))
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

fn proto_match(p: &ServicePort) -> String {
    let proto = p.key.protocol.as_str();
    format!("-m {proto} -p {proto}")
}

/// Jumps from `chain` to the endpoint chains: affinity first, then a
/// random split with equal probability.
/// The `recent` match's mask of a whole address.
fn full_mask(family: Family) -> &'static str {
    match family {
        Family::V4 => "255.255.255.255",
        Family::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}

fn endpoint_jumps(r: &mut Rendered, chain: &str, svc: &ServicePort, eps: &[Endpoint]) {
    let n = eps.len();
    let mask = full_mask(svc.key.family);
    if let Some(timeout) = svc.affinity {
        for ep in eps {
            let sep = sep_chain(&svc.key, ep);
            let c = comment(&format!("{} -> {ep}", svc.key));
            r.rule(NAT, chain, format!("{c} -m recent --name {sep} --mask {mask} --rsource --rcheck --seconds {timeout} --reap -j {sep}"));
        }
    }
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(&svc.key, ep);
        let c = comment(&format!("{} -> {ep}", svc.key));
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            r.rule(NAT, chain, format!("{c} -m statistic --mode random --probability {p:.10} -j {sep}"));
        } else {
            r.rule(NAT, chain, format!("{c} -j {sep}"));
        }
    }
}

fn endpoint_chain(r: &mut Rendered, svc: &ServicePort, ep: &Endpoint) {
    let sep = sep_chain(&svc.key, ep);
    if r.tables.get(NAT).is_some_and(|t| t.contains_key(&sep)) {
        return;
    }
    let c = comment(&svc.key.to_string());
    let (bits, mask) = (svc.key.family.host_bits(), full_mask(svc.key.family));
    r.rule(NAT, &sep, format!("{c} -s {}/{bits} -j KUBE-MARK-MASQ", ep.ip));
    let recent = if svc.affinity.is_some() { format!(" -m recent --name {sep} --mask {mask} --rsource --set") } else { String::new() };
    r.rule(NAT, &sep, format!("{c}{recent} {} -j DNAT --to-destination {ep}", proto_match(svc)));
}

/// Renders the whole ruleset of `ctx.family` for `state` (its Service
/// ports of that family). Pure and deterministic.
pub fn render(state: &ProxyState, ctx: &Context) -> Rendered {
    let mut r = Rendered::default();
    let bits = ctx.family.host_bits();
    let mark = format!("{:#x}", ctx.masq_mark());
    for c in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-FIREWALL"] {
        r.chain(FILTER, c);
    }
    // Node ports on 127.0.0.1 (route_localnet): what reaches 127.0.0.0/8
    // from anywhere but the node itself is dropped, as kube-proxy does.
    if localhost_node_ports(ctx) {
        r.rule(
            FILTER,
            "KUBE-FIREWALL",
            format!("{} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP", comment("block incoming localnet connections")),
        );
    }
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        r.chain(NAT, c);
    }
    r.rule(NAT, "KUBE-POSTROUTING", format!("-m mark ! --mark {mark}/{mark} -j RETURN"));
    r.rule(NAT, "KUBE-POSTROUTING", format!("-j MARK --xor-mark {mark}"));
    r.rule(NAT, "KUBE-POSTROUTING", format!("{} -j MASQUERADE --random-fully", comment("kubernetes service traffic requiring SNAT")));
    r.rule(NAT, "KUBE-MARK-MASQ", format!("-j MARK --or-mark {mark}"));
    r.rule(FILTER, "KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP".into());
    r.rule(FILTER, "KUBE-FORWARD", format!("{} -m mark --mark {mark}/{mark} -j ACCEPT", comment("kubernetes forwarding rules")));
    r.rule(FILTER, "KUBE-FORWARD", format!("{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", comment("kubernetes forwarding conntrack rule")));

    let empty = Vec::new();
    for (key, svc) in state.services.iter().filter(|(k, _)| k.family == ctx.family) {
        let eps = state.endpoints.get(key).unwrap_or(&empty);
        let sel = select(svc, eps);
        let pm = proto_match(svc);
        let port = svc.port;
        let vip = svc.cluster_ip;
        let svc_name = svc_chain("KUBE-SVC-", key);
        let ext_name = svc_chain("KUBE-EXT-", key);
        let svl_name = svc_chain("KUBE-SVL-", key);
        let fw_name = svc_chain("KUBE-FW-", key);

        // KUBE-SVC holds every usable endpoint, KUBE-SVL this node's; each
        // traffic policy picks one of them.
        let internal_chain = if svc.internal_local { &svl_name } else { &svc_name };
        let mut wanted: BTreeMap<&String, &Vec<Endpoint>> = BTreeMap::new();

        // The cluster IP.
        if sel.cluster.is_empty() {
            let (verdict, why) = if sel.any { ("DROP", "has no local endpoints") } else { ("REJECT", "has no endpoints") };
            let c = comment(&format!("{key} {why}"));
            r.rule(FILTER, "KUBE-SERVICES", format!("{c} {pm} -d {vip}/{bits} --dport {port} -j {verdict}"));
        } else {
            let c = comment(&format!("{key} cluster IP"));
            r.rule(NAT, "KUBE-SERVICES", format!("{c} {pm} -d {vip}/{bits} --dport {port} -j {internal_chain}"));
            if ctx.masquerade_all {
                r.rule(NAT, internal_chain, format!("{c} {pm} -d {vip}/{bits} --dport {port} -j KUBE-MARK-MASQ"));
            } else if let Some(cidr) = ctx.cluster_cidr {
                r.rule(NAT, internal_chain, format!("{c} {pm} -d {vip}/{bits} --dport {port} ! -s {cidr} -j KUBE-MARK-MASQ"));
            }
            wanted.insert(internal_chain, &sel.cluster);
        }

        // External ways in: external IPs, load-balancer IPs, the node port.
        // With no endpoint at all they are rejected; with endpoints but
        // none for external traffic (Local, none here), outside traffic is
        // dropped while pods and the node still reach the Service.
        if svc.has_external() {
            let reachable = !sel.external.is_empty();
            // loadBalancerSourceRanges, as kube-proxy: the load-balancer IPs
            // go through KUBE-FW, which sends the allowed sources on; what
            // it does not send on is not DNATed and meets a DROP in
            // KUBE-EXTERNAL-SERVICES (filter INPUT/FORWARD, new connections).
            let firewall = svc.source_ranges.as_ref().filter(|_| !svc.load_balancer_ips.is_empty());
            if let (Some(ranges), true) = (firewall, sel.any) {
                let c = comment(&format!("{key} loadbalancer IP"));
                for cidr in ranges {
                    r.rule(NAT, &fw_name, format!("{c} -s {cidr} -j {ext_name}"));
                }
                r.chain(NAT, &fw_name);
            }
            if firewall.is_some() {
                for ip in &svc.load_balancer_ips {
                    let c = comment(&format!("{key} traffic not accepted by {fw_name}"));
                    r.rule(FILTER, "KUBE-EXTERNAL-SERVICES", format!("{c} {pm} -d {ip}/{bits} --dport {port} -j DROP"));
                }
            }
            for (ips, what) in [(&svc.external_ips, "external IP"), (&svc.load_balancer_ips, "loadbalancer IP")] {
                for ip in ips {
                    if sel.any {
                        let c = comment(&format!("{key} {what}"));
                        let to = if what == "loadbalancer IP" && firewall.is_some() { &fw_name } else { &ext_name };
                        r.rule(NAT, "KUBE-SERVICES", format!("{c} {pm} -d {ip}/{bits} --dport {port} -j {to}"));
                    }
                    if !reachable {
                        let (verdict, why) = if sel.any { ("DROP", "has no local endpoints") } else { ("REJECT", "has no endpoints") };
                        let c = comment(&format!("{key} {why}"));
                        r.rule(FILTER, "KUBE-EXTERNAL-SERVICES", format!("{c} {pm} -d {ip}/{bits} --dport {port} -j {verdict}"));
                    }
                }
            }
            // The health-check node port is let in, whatever the host's
            // INPUT policy (kube-proxy's filter KUBE-NODEPORTS).
            if let Some(hc) = svc.health_check_node_port {
                let rule = format!("{} -m tcp -p tcp --dport {hc} -j ACCEPT", comment(&format!("{key} health check node port")));
                let chain = r.chain(FILTER, "KUBE-NODEPORTS");
                if !chain.contains(&rule) {
                    chain.push(rule);
                }
            }
            if let Some(np) = svc.node_port {
                if sel.any {
                    r.rule(NAT, "KUBE-NODEPORTS", format!("{} {pm} --dport {np} -j {ext_name}", comment(&key.to_string())));
                }
                if !reachable {
                    let (verdict, why) = if sel.any { ("DROP", "has no local endpoints") } else { ("REJECT", "has no endpoints") };
                    let c = comment(&format!("{key} {why}"));
                    r.rule(FILTER, "KUBE-EXTERNAL-SERVICES", format!("{c} -m addrtype --dst-type LOCAL {pm} --dport {np} -j {verdict}"));
                }
            }
            if sel.any {
                if svc.external_local {
                    if !sel.cluster.is_empty() {
                        if let Some(cidr) = ctx.cluster_cidr {
                            let c = comment(&format!("pod traffic for {key} external destinations"));
                            r.rule(NAT, &ext_name, format!("{c} -s {cidr} -j {internal_chain}"));
                        }
                        let c = comment(&format!("masquerade LOCAL traffic for {key} external destinations"));
                        r.rule(NAT, &ext_name, format!("{c} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"));
                        let c = comment(&format!("route LOCAL traffic for {key} external destinations"));
                        r.rule(NAT, &ext_name, format!("{c} -m addrtype --src-type LOCAL -j {internal_chain}"));
                        wanted.insert(internal_chain, &sel.cluster);
                    }
                    if reachable {
                        r.rule(NAT, &ext_name, format!("-j {svl_name}"));
                        wanted.insert(&svl_name, &sel.local);
                    } else {
                        r.chain(NAT, &ext_name);
                    }
                } else {
                    let c = comment(&format!("masquerade traffic for {key} external destinations"));
                    r.rule(NAT, &ext_name, format!("{c} -j KUBE-MARK-MASQ"));
                    r.rule(NAT, &ext_name, format!("-j {svc_name}"));
                    wanted.insert(&svc_name, &sel.all);
                }
            }
        }
        for (chain, eps) in wanted {
            endpoint_jumps(&mut r, chain, svc, eps);
            for ep in eps {
                endpoint_chain(&mut r, svc, ep);
            }
        }
    }

    // The node ports, last in KUBE-SERVICES.
    let c = comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain");
    match &ctx.node_port_ips {
        None if localhost_node_ports(ctx) => r.rule(NAT, "KUBE-SERVICES", format!("{c} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")),
        None => r.rule(NAT, "KUBE-SERVICES", format!("{c} -m addrtype --dst-type LOCAL ! -d {} -j KUBE-NODEPORTS", ctx.family.loopback())),
        Some(ips) => {
            for ip in ips.iter().filter(|ip| !ip.is_loopback() || localhost_node_ports(ctx)) {
                r.rule(NAT, "KUBE-SERVICES", format!("{c} -d {ip}/{bits} -j KUBE-NODEPORTS"));
            }
        }
    }
    r
}

/// Whether node ports answer on 127.0.0.1: `iptables.localhostNodePorts`
/// (IPv4 only; IPv6 has no route_localnet), unless `nodePortAddresses`
/// leaves loopback out.
fn localhost_node_ports(ctx: &Context) -> bool {
    ctx.localhost_node_ports
        && ctx.family == Family::V4
        && ctx.node_port_ips.as_ref().is_none_or(|ips| ips.iter().any(|ip| ip.is_loopback()))
}

/// route_localnet, so that 127.0.0.1 can be DNATed to a pod (kube-proxy
/// sets it for localhost node ports and says so).
fn ensure_route_localnet() {
    let path = "/proc/sys/net/ipv4/conf/all/route_localnet";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    match std::fs::write(path, "1") {
        Ok(()) => tracing::info!(
            "set net.ipv4.conf.all.route_localnet=1 to allow node ports on localhost; to change this, set iptables.localhostNodePorts: false or leave 127.0.0.0/8 out of nodePortAddresses"
        ),
        Err(e) => tracing::warn!(error = %e, "could not set net.ipv4.conf.all.route_localnet=1: node ports will not answer on localhost"),
    }
}

/// The `iptables-restore --noflush` input taking the kernel from `prev`
/// (None: unknown, write everything) to `next`; `stale` are owned chains
/// found in the kernel that `next` does not have. Returns the text and how
/// many chains it rewrites.
pub fn restore_input(prev: Option<&Rendered>, next: &Rendered, stale: &BTreeMap<&'static str, BTreeSet<String>>) -> (String, usize) {
    let mut out = String::new();
    let mut written = 0;
    let no_chains = BTreeMap::new();
    for table in [FILTER, NAT] {
        let want = next.tables.get(table).unwrap_or(&no_chains);
        let had = prev.and_then(|p| p.tables.get(table));
        let changed: Vec<(&String, &Vec<String>)> = want
            .iter()
            .filter(|(name, rules)| had.is_none_or(|h| h.get(*name) != Some(*rules)))
            .collect();
        let mut gone: BTreeSet<&String> = had.map(|h| h.keys().filter(|c| !want.contains_key(*c)).collect()).unwrap_or_default();
        gone.extend(stale.get(table).into_iter().flatten().filter(|c| !want.contains_key(*c)));
        let _ = writeln!(out, "*{table}");
        for (name, _) in &changed {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for name in &gone {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, rules) in &changed {
            for rule in *rules {
                let _ = writeln!(out, "-A {name} {rule}");
            }
        }
        for name in &gone {
            let _ = writeln!(out, "-X {name}");
        }
        let _ = writeln!(out, "COMMIT");
        written += changed.len() + gone.len();
    }
    (out, written)
}

/// The owned per-service chains in `iptables-save` output.
pub fn owned_chains(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| OWNED_PREFIXES.iter().any(|p| c.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// The iptables backend of one family (iptables or ip6tables) with its
/// committed state.
pub struct Iptables {
    committed: Option<Rendered>,
    dry_run: bool,
    family: Family,
}

impl Iptables {
    pub fn new(family: Family, dry_run: bool) -> Self {
        Iptables { committed: None, dry_run, family }
    }

    /// Brings the kernel to `state`. `full` forgets what was committed.
    pub fn sync(&mut self, state: &ProxyState, ctx: &Context, full: bool) -> Result<SyncStats, ProxyError> {
        let started = std::time::Instant::now();
        let next = render(state, ctx);
        if full {
            self.committed = None;
        }
        let mut stale = BTreeMap::new();
        let is_full = self.committed.is_none();
        let (_, save_tool, restore_tool) = self.family.iptables();
        if is_full && !self.dry_run {
            for table in [FILTER, NAT] {
                let save = run_with_input(save_tool, &["-t", table], "")?;
                stale.insert(table, owned_chains(&save));
            }
        }
        let (input, changed) = restore_input(self.committed.as_ref(), &next, &stale);
        let plan = started.elapsed();
        if self.dry_run {
            self.committed = Some(next);
            return Ok(SyncStats { changed_chains: changed, input_bytes: input.len(), full: is_full, plan, apply: Default::default() });
        }
        if let Err(e) = run_with_input(restore_tool, &["-w", "5", "--noflush"], &input) {
            self.committed = None;
            return Err(e);
        }
        if is_full {
            ensure_jumps(self.family)?;
            if localhost_node_ports(ctx) {
                ensure_route_localnet();
            }
        }
        self.committed = Some(next);
        Ok(SyncStats { changed_chains: changed, input_bytes: input.len(), full: is_full, plan, apply: started.elapsed() - plan })
    }
}

/// Whether the kernel would take the whole ruleset for `state`: the same
/// restore, run in a network namespace of its own (`unshare --net`) that
/// goes away with it, so the node's rules are never touched.
/// (`iptables-restore --test` only parses: the kernel never sees it.)
pub fn check(state: &ProxyState, ctx: &Context) -> Result<(), ProxyError> {
    let (input, _) = restore_input(None, &render(state, ctx), &BTreeMap::new());
    run_with_input("unshare", &["--net", ctx.family.iptables().2, "-w", "5", "--noflush"], &input).map(|_| ())
}

fn split_rule(rule: &str) -> Vec<String> {
    // The rules hold only simple double-quoted comments.
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in rule.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

/// Adds the jumps from the built-in chains that are missing.
pub fn ensure_jumps(family: Family) -> Result<(), ProxyError> {
    let tool = family.iptables().0;
    for (table, chain, rule) in JUMPS {
        let args = split_rule(rule);
        let mut check = vec!["-w", "5", "-t", table, "-C", chain];
        check.extend(args.iter().map(String::as_str));
        if run_with_input(tool, &check, "").is_ok() {
            continue;
        }
        let mut insert = vec!["-w", "5", "-t", table, "-I", chain, "1"];
        insert.extend(args.iter().map(String::as_str));
        run_with_input(tool, &insert, "")?;
    }
    Ok(())
}

/// The whole ruleset of `ctx.family` as one restore input, for `--dry-run`.
pub fn render_full_text(state: &ProxyState, ctx: &Context) -> String {
    let mut text = restore_input(None, &render(state, ctx), &BTreeMap::new()).0;
    text.push_str("# and, in the built-in chains:\n");
    for (table, chain, rule) in JUMPS {
        let _ = writeln!(text, "# -t {table} -A {chain} {rule}");
    }
    if localhost_node_ports(ctx) {
        text.push_str("# and the sysctl net.ipv4.conf.all.route_localnet=1 (node ports on localhost)\n");
    }
    text
}

/// Removes every rule and chain this mode makes, in both families (a
/// family whose tools or kernel support are missing has nothing to remove).
pub fn cleanup() -> Result<(), ProxyError> {
    let mut first = None;
    for family in Family::BOTH {
        if let Err(e) = cleanup_family(family) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn cleanup_family(family: Family) -> Result<(), ProxyError> {
    let (tool, save_tool, restore_tool) = family.iptables();
    if family == Family::V6 && !super::ipv6_available() {
        return Ok(());
    }
    for (table, chain, rule) in JUMPS {
        let args = split_rule(rule);
        let mut delete = vec!["-w", "5", "-t", table, "-D", chain];
        delete.extend(args.iter().map(String::as_str));
        while run_with_input(tool, &delete, "").is_ok() {}
    }
    for table in [FILTER, NAT] {
        let save = match run_with_input(save_tool, &["-t", table], "") {
            Ok(s) => s,
            Err(_) => continue,
        };
        let mut chains = owned_chains(&save);
        for top in TOP_LEVEL {
            if save.lines().any(|l| l.starts_with(&format!(":{top} "))) {
                chains.insert(top.to_string());
            }
        }
        if chains.is_empty() {
            continue;
        }
        let mut input = format!("*{table}\n");
        for c in &chains {
            let _ = writeln!(input, ":{c} - [0:0]");
        }
        for c in &chains {
            let _ = writeln!(input, "-X {c}");
        }
        input.push_str("COMMIT\n");
        run_with_input(restore_tool, &["-w", "5", "--noflush"], &input)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_full_ruleset() {
        let (s, ctx) = crate::proxy::fixture::basic();
        let text = render_full_text(&s, &ctx);
        crate::proxy::golden::check("tests/golden/iptables/basic.rules", &text);
        assert_eq!(text, render_full_text(&s, &ctx), "deterministic");
    }

    #[test]
    fn golden_ipv6_ruleset_and_the_kernel_takes_both_families() {
        let (s, ctx) = crate::proxy::fixture::basic_v6();
        let text = render_full_text(&s, &ctx);
        crate::proxy::golden::check("tests/golden/iptables/basic-v6.rules", &text);
        assert!(text.contains("/128") && !text.contains("/32 ") && !text.contains("255.255.255.255"), "{text}");
        let (dual, contexts) = crate::proxy::fixture::dual();
        assert_eq!(render(&dual, &contexts[1]), render(&s, &ctx), "each family its own Service ports");
        assert_eq!(render(&dual, &contexts[0]), render(&crate::proxy::fixture::basic().0, &contexts[0]));
        // Each family's restore, in a network namespace of its own.
        assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does");
        for c in &contexts {
            check(&dual, c).unwrap_or_else(|e| panic!("{}: {e}", c.family));
        }
    }

    #[test]
    fn a_partial_sync_rewrites_only_what_changed() {
        let (mut s, ctx) = crate::proxy::fixture::basic();
        let before = render(&s, &ctx);
        let key = s.endpoints.keys().find(|k| k.name == "web").unwrap().clone();
        let removed = s.endpoints.get_mut(&key).unwrap().remove(1);
        let after = render(&s, &ctx);
        let (text, n) = restore_input(Some(&before), &after, &BTreeMap::new());
        let svc = svc_chain("KUBE-SVC-", &key);
        let sep = sep_chain(&key, &removed);
        assert!(text.contains(&format!(":{svc} - [0:0]")), "{text}");
        assert!(text.contains(&format!("-X {sep}")), "{text}");
        assert_eq!(n, 2, "the service chain and the removed endpoint chain only: {text}");
        assert!(!text.contains(":KUBE-SERVICES"), "the top-level chains did not change and are not rewritten: {text}");
        let sticky = s.services.keys().find(|k| k.name == "sticky").unwrap();
        assert!(!text.contains(&format!(":{} - [0:0]", svc_chain("KUBE-SVC-", sticky))), "untouched services are not rewritten: {text}");
        // A Service's last endpoint gone: KUBE-SERVICES changes (its jump
        // goes, a reject comes) and is written whole, in the same restore
        // as the chains it no longer names are deleted.
        s.endpoints.remove(&key);
        let (text, _) = restore_input(Some(&after), &render(&s, &ctx), &BTreeMap::new());
        assert!(text.contains(":KUBE-SERVICES - [0:0]") && text.contains(&format!("-X {svc}")), "{text}");
        // A full sync writes every chain, the top-level ones included.
        let (text, _) = restore_input(None, &after, &BTreeMap::new());
        for top in TOP_LEVEL.iter().filter(|t| after.tables.values().any(|c| c.contains_key(**t))) {
            assert!(text.contains(&format!(":{top} - [0:0]")), "{top}: {text}");
        }
    }

    #[test]
    fn owned_chains_are_found_in_a_save() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:KUBE-SEP-DEF - [0:0]\n:CNI-X - [0:0]\nCOMMIT\n";
        assert_eq!(owned_chains(save), BTreeSet::from(["KUBE-SEP-DEF".to_string(), "KUBE-SVC-ABC".to_string()]));
        assert_eq!(split_rule("-m comment --comment \"a b\" -j X"), vec!["-m", "comment", "--comment", "a b", "-j", "X"]);
    }
}
