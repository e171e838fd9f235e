//! nftables mode, modelled on kube-proxy's: one table of its own per
//! family (`ip nodelet`, `ip6 nodelet`, the same layout), verdict maps from address · protocol · port to a chain per
//! Service port, a random pick of the endpoint in that chain, dynamic sets
//! with timeouts for ClientIP affinity. Each sync is one `nft -f`
//! transaction. The committed ruleset is kept in memory, so a sync adds and
//! deletes only the map and set elements that changed and rewrites only the
//! chains that changed; the kernel's table is listed once, at the first
//! sync, to find leftovers.
//!
//! Two departures from kube-proxy's layout, for speed with nft 1.0 (measured
//! in benches/proxy.rs): there is no chain per endpoint — `nft` loads every
//! chain of the table before each transaction, so five times fewer chains
//! make partial syncs five times cheaper — and the pick is a cascade of
//! `numgen random mod k == 0` rules (probability 1/n, 1/(n-1), ... as
//! iptables' statistic match) rather than an anonymous vmap, whose creation
//! in nft 1.0 costs time proportional to the anonymous sets already in the
//! table. Hairpin traffic (an endpoint reaching itself through its Service)
//! is masqueraded through one `hairpin` set of `endpoint . endpoint` pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::model::{Endpoint, Family, PortKey, ProxyState, ServicePort, select};
use super::{Context, ProxyError, SyncStats, chain_hash, run_with_input};

pub const TABLE: &str = "nodelet";

/// The table of `family`: `ip nodelet`, `ip6 nodelet`.
fn table(family: Family) -> String {
    format!("{} {TABLE}", family.nft())
}

/// Base chains and their hooks. Filter chains run before DNAT
/// (dstnat - 10), so traffic to a port without endpoints is rejected.
const BASE_CHAINS: &[(&str, &str)] = &[
    ("filter-input", "type filter hook input priority -110 ;"),
    ("filter-forward", "type filter hook forward priority -110 ;"),
    ("filter-output", "type filter hook output priority -110 ;"),
    ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
    ("nat-output", "type nat hook output priority -100 ;"),
    ("nat-postrouting", "type nat hook postrouting priority 100 ;"),
];

/// The maps, with `ipv4_addr` standing for the family's address type.
const MAPS: &[(&str, &str)] = &[
    ("service-ips", "type ipv4_addr . inet_proto . inet_service : verdict ;"),
    ("service-nodeports", "type inet_proto . inet_service : verdict ;"),
    ("no-endpoint-services", "type ipv4_addr . inet_proto . inet_service : verdict ;"),
    ("no-endpoint-nodeports", "type inet_proto . inet_service : verdict ;"),
    ("firewall-ips", "type ipv4_addr . inet_proto . inet_service : verdict ;"),
];

/// A ruleset: chains with their rules, map elements, affinity sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub family: Family,
    pub chains: BTreeMap<String, Vec<String>>,
    /// map → element key → verdict.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// affinity set → timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// `endpoint . endpoint` pairs for hairpin masquerade.
    pub hairpin: BTreeSet<String>,
}

impl Rendered {
    fn rule(&mut self, chain: &str, rule: String) {
        self.chains.entry(chain.to_string()).or_default().push(rule);
    }

    fn element(&mut self, map: &str, key: String, verdict: String) {
        self.maps.entry(map.to_string()).or_default().insert(key, verdict);
    }

    fn merge(&mut self, other: Rendered) {
        self.chains.extend(other.chains);
        for (map, elements) in other.maps {
            self.maps.entry(map).or_default().extend(elements);
        }
        self.sets.extend(other.sets);
        self.hairpin.extend(other.hairpin);
    }
}

fn base(key: &PortKey) -> String {
    let proto = key.protocol.as_str();
    let h = chain_hash(&[&key.to_string(), proto]);
    format!("{}-{}/{}/{proto}/{}", &h[..8], key.namespace, key.name, key.port)
}

fn endpoint_base(key: &PortKey, ep: &Endpoint) -> String {
    let proto = key.protocol.as_str();
    let h = chain_hash(&[&key.to_string(), proto, &ep.to_string()]);
    // No `:` in an nft name: an IPv6 address is written with dots.
    let ip = ep.ip.to_string().replace(':', ".");
    format!("{}-{}/{}/{proto}/{}__{ip}/{}", &h[..8], key.namespace, key.name, key.port, ep.port)
}

/// The node-port address match: every local address, or the configured ones.
fn node_port_match(ctx: &Context) -> Option<String> {
    let nf = ctx.family.nft();
    match &ctx.node_port_ips {
        None => Some(format!("fib daddr type local {nf} daddr != {}", ctx.family.loopback().trim_end_matches("/128"))),
        Some(ips) => {
            let ips: Vec<String> = ips.iter().filter(|ip| Family::of(ip) == ctx.family).map(ToString::to_string).collect();
            (!ips.is_empty()).then(|| format!("{nf} daddr {{ {} }}", ips.join(", ")))
        }
    }
}

/// The endpoint pick in `chain`: affinity first, then a random cascade that
/// gives each endpoint the same chance. Each rule DNATs directly.
fn to_endpoints(r: &mut Rendered, chain: &str, svc: &ServicePort, eps: &[Endpoint]) {
    let proto = svc.key.protocol.as_str();
    let nf = svc.key.family.nft();
    let remember = |ep: &Endpoint| match svc.affinity {
        Some(_) => format!("update @affinity-{} {{ {nf} saddr }} ", endpoint_base(&svc.key, ep)),
        None => String::new(),
    };
    if let Some(timeout) = svc.affinity {
        for ep in eps {
            let b = endpoint_base(&svc.key, ep);
            r.sets.insert(format!("affinity-{b}"), timeout);
            r.rule(chain, format!("{nf} saddr @affinity-{b} {}meta l4proto {proto} dnat to {ep}", remember(ep)));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        r.hairpin.insert(format!("{} . {}", ep.ip, ep.ip));
        let pick = if i + 1 < n { format!("numgen random mod {} == 0 ", n - i) } else { String::new() };
        r.rule(chain, format!("{pick}{}meta l4proto {proto} dnat to {ep}", remember(ep)));
    }
}

/// Renders the whole ruleset of `ctx.family` for `state` (its Service
/// ports of that family). Pure and deterministic.
pub fn render(state: &ProxyState, ctx: &Context) -> Rendered {
    let mut r = Rendered { family: ctx.family, ..Default::default() };
    let nf = ctx.family.nft();
    let mark = format!("{:#x}", ctx.masq_mark());
    for (map, _) in MAPS {
        r.maps.insert(map.to_string(), BTreeMap::new());
    }
    r.rule("filter-input", "ct state new jump nodeport-endpoints-check".into());
    r.rule("filter-input", "ct state new jump service-endpoints-check".into());
    r.rule("filter-forward", "ct state new jump service-endpoints-check".into());
    // loadBalancerSourceRanges: a new connection to a load-balancer IP that
    // was not DNATed came from outside the ranges (see render_service).
    r.rule("filter-input", format!("ct state new {nf} daddr . meta l4proto . th dport vmap @firewall-ips"));
    r.rule("filter-forward", format!("ct state new {nf} daddr . meta l4proto . th dport vmap @firewall-ips"));
    r.rule("filter-output", "ct state new jump service-endpoints-check".into());
    r.rule("service-endpoints-check", format!("{nf} daddr . meta l4proto . th dport vmap @no-endpoint-services"));
    r.rule("nat-prerouting", "jump services".into());
    r.rule("nat-output", "jump services".into());
    r.rule("nat-postrouting", "jump masquerading".into());
    r.rule("services", format!("{nf} daddr . meta l4proto . th dport vmap @service-ips"));
    r.chains.entry("nodeport-endpoints-check".into()).or_default();
    if let Some(m) = node_port_match(ctx) {
        r.rule("services", format!("{m} meta l4proto . th dport vmap @service-nodeports"));
        r.rule("nodeport-endpoints-check", format!("{m} meta l4proto . th dport vmap @no-endpoint-nodeports"));
    }
    r.rule("mark-for-masquerade", format!("meta mark set meta mark | {mark}"));
    r.rule("masquerading", format!("ct status dnat {nf} saddr . {nf} daddr @hairpin masquerade fully-random"));
    r.rule("masquerading", format!("meta mark & {mark} == 0 return"));
    r.rule("masquerading", format!("meta mark set meta mark ^ {mark}"));
    r.rule("masquerading", "masquerade fully-random".into());
    r.rule("reject-chain", "reject".into());

    let empty = Vec::new();
    for (key, svc) in state.services.iter().filter(|(k, _)| k.family == ctx.family) {
        render_service(&mut r, key, svc, state.endpoints.get(key).unwrap_or(&empty), ctx);
    }
    r
}

/// One Service port's chains, map elements, affinity sets and hairpin pairs.
/// `service-` picks among every usable endpoint, `local-` among this
/// node's; each traffic policy uses one of them.
fn render_service(r: &mut Rendered, key: &PortKey, svc: &ServicePort, eps: &[Endpoint], ctx: &Context) {
    let sel = select(svc, eps);
    let proto = key.protocol.as_str();
    let nf = key.family.nft();
    let b = base(key);
    let svc_chain = format!("service-{b}");
    let local_chain = format!("local-{b}");
    let ext_chain = format!("external-{b}");
    let internal_chain = if svc.internal_local { &local_chain } else { &svc_chain };
    let (vip, port) = (svc.cluster_ip, svc.port);
    let mut wanted: BTreeMap<&String, &Vec<Endpoint>> = BTreeMap::new();
    let refusal = if sel.any { "drop" } else { "goto reject-chain" };

    if sel.cluster.is_empty() {
        r.element("no-endpoint-services", format!("{vip} . {proto} . {port}"), refusal.into());
    } else {
        r.element("service-ips", format!("{vip} . {proto} . {port}"), format!("goto {internal_chain}"));
        if ctx.masquerade_all {
            r.rule(internal_chain, format!("{nf} daddr {vip} {proto} dport {port} jump mark-for-masquerade"));
        } else if let Some(cidr) = ctx.cluster_cidr {
            r.rule(internal_chain, format!("{nf} daddr {vip} {proto} dport {port} {nf} saddr != {cidr} jump mark-for-masquerade"));
        }
        wanted.insert(internal_chain, &sel.cluster);
    }

    if svc.has_external() {
        // loadBalancerSourceRanges: the load-balancer IPs go through
        // firewall-, which sends the allowed sources on to external-; the
        // others are not DNATed and meet firewall-ips in the filter chains.
        let firewall = svc.source_ranges.as_ref().filter(|_| !svc.load_balancer_ips.is_empty());
        let fw_chain = format!("firewall-{b}");
        if let (Some(ranges), true) = (firewall, sel.any) {
            r.chains.entry(fw_chain.clone()).or_default();
            if !ranges.is_empty() {
                let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                r.rule(&fw_chain, format!("{nf} saddr {{ {} }} goto {ext_chain}", list.join(", ")));
            }
        }
        for ip in &svc.load_balancer_ips {
            if firewall.is_some() {
                r.element("firewall-ips", format!("{ip} . {proto} . {port}"), "drop".into());
            }
        }
        for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            let k = format!("{ip} . {proto} . {port}");
            let lb = svc.load_balancer_ips.contains(ip) && !svc.external_ips.contains(ip);
            if sel.any {
                let to = if lb && firewall.is_some() { &fw_chain } else { &ext_chain };
                r.element("service-ips", k, format!("goto {to}"));
            } else {
                r.element("no-endpoint-services", k, refusal.into());
            }
        }
        if let Some(np) = svc.node_port {
            let k = format!("{proto} . {np}");
            if sel.any {
                r.element("service-nodeports", k, format!("goto {ext_chain}"));
            } else {
                r.element("no-endpoint-nodeports", k, refusal.into());
            }
        }
        if sel.any {
            if svc.external_local {
                if !sel.cluster.is_empty() {
                    if let Some(cidr) = ctx.cluster_cidr {
                        // Pods reach the Service as cluster traffic does.
                        r.rule(&ext_chain, format!("{nf} saddr {cidr} goto {internal_chain}"));
                    }
                    r.rule(&ext_chain, "fib saddr type local jump mark-for-masquerade".into());
                    r.rule(&ext_chain, format!("fib saddr type local goto {internal_chain}"));
                }
                // Everything else keeps its source address and stays on
                // this node, or is dropped when no endpoint is here.
                if sel.external.is_empty() {
                    r.rule(&ext_chain, "drop".into());
                } else {
                    r.rule(&ext_chain, format!("goto {local_chain}"));
                    wanted.insert(&local_chain, &sel.local);
                }
            } else {
                r.rule(&ext_chain, "jump mark-for-masquerade".into());
                r.rule(&ext_chain, format!("goto {svc_chain}"));
                wanted.insert(&svc_chain, &sel.all);
            }
        }
    }
    for (chain, eps) in wanted {
        to_endpoints(r, chain, svc, eps);
    }
}

/// The hairpin pairs each Service port contributes, counted.
fn hairpin_counts(state: &ProxyState, ctx: &Context) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let empty = Vec::new();
    for (key, svc) in state.services.iter().filter(|(k, _)| k.family == ctx.family) {
        let mut one = Rendered::default();
        render_service(&mut one, key, svc, state.endpoints.get(key).unwrap_or(&empty), ctx);
        for pair in one.hairpin {
            *counts.entry(pair).or_insert(0) += 1;
        }
    }
    counts
}

fn elements(t: &str, map: &str, items: &[String], verb: &str, out: &mut String) {
    // Large element lists go in chunks to keep each command's line short.
    for chunk in items.chunks(1000) {
        let _ = writeln!(out, "{verb} element {t} {map} {{ {} }}", chunk.join(", "));
    }
}

/// The `nft -f` script taking the kernel from `prev` (None: unknown, write
/// everything) to `next`. `stale_chains`/`stale_sets` are leftovers found in
/// the kernel. Returns the script and how many chains it rewrites. The
/// table is `next`'s family's.
pub fn transaction(prev: Option<&Rendered>, next: &Rendered, stale_chains: &BTreeSet<String>, stale_sets: &BTreeSet<String>) -> (String, usize) {
    let mut out = String::new();
    let t = &table(next.family);
    let addr = next.family.nft_addr_type();
    let _ = writeln!(out, "add table {t} {{ comment \"rules for nodelet's Service proxy\" ; }}");
    for (chain, spec) in BASE_CHAINS {
        let _ = writeln!(out, "add chain {t} {chain} {{ {spec} }}");
    }
    for (map, spec) in MAPS {
        let _ = writeln!(out, "add map {t} {map} {{ {} }}", spec.replace("ipv4_addr", addr));
    }
    let _ = writeln!(out, "add set {t} hairpin {{ type {addr} . {addr} ; }}");
    // New sets and chains only: `add` is idempotent, but repeating it for
    // every object would make each sync as long as a full one.
    for (set, timeout) in next.sets.iter().filter(|(s, _)| prev.is_none_or(|p| !p.sets.contains_key(*s))) {
        let _ = writeln!(out, "add set {t} {set} {{ type {addr} ; flags dynamic,timeout ; timeout {timeout}s ; }}");
    }
    let is_base = |c: &str| BASE_CHAINS.iter().any(|(b, _)| *b == c);
    for chain in next.chains.keys().filter(|c| !is_base(c) && prev.is_none_or(|p| !p.chains.contains_key(*c))) {
        let _ = writeln!(out, "add chain {t} {chain}");
    }
    // Chains and sets that go: everything of prev and the leftovers not in next.
    let mut gone_chains: BTreeSet<&String> = stale_chains.iter().filter(|c| !next.chains.contains_key(*c)).collect();
    let mut gone_sets: BTreeSet<&String> = stale_sets.iter().filter(|s| !next.sets.contains_key(*s)).collect();
    if let Some(p) = prev {
        gone_chains.extend(p.chains.keys().filter(|c| !next.chains.contains_key(*c)));
        gone_sets.extend(p.sets.keys().filter(|s| !next.sets.contains_key(*s)));
    }
    // Map elements first, so that nothing refers to a chain that goes.
    for (map, _) in MAPS {
        let want = next.maps.get(*map).cloned().unwrap_or_default();
        match prev {
            None => {
                let _ = writeln!(out, "flush map {t} {map}");
                let items: Vec<String> = want.iter().map(|(k, v)| format!("{k} : {v}")).collect();
                elements(t, map, &items, "add", &mut out);
            }
            Some(p) => {
                let had = p.maps.get(*map).cloned().unwrap_or_default();
                let removed: Vec<String> =
                    had.iter().filter(|(k, v)| want.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
                let added: Vec<String> =
                    want.iter().filter(|(k, v)| had.get(*k) != Some(*v)).map(|(k, v)| format!("{k} : {v}")).collect();
                elements(t, map, &removed, "delete", &mut out);
                elements(t, map, &added, "add", &mut out);
            }
        }
    }
    match prev {
        None => {
            let _ = writeln!(out, "flush set {t} hairpin");
            elements(t, "hairpin", &next.hairpin.iter().cloned().collect::<Vec<_>>(), "add", &mut out);
        }
        Some(p) => {
            elements(t, "hairpin", &p.hairpin.difference(&next.hairpin).cloned().collect::<Vec<_>>(), "delete", &mut out);
            elements(t, "hairpin", &next.hairpin.difference(&p.hairpin).cloned().collect::<Vec<_>>(), "add", &mut out);
        }
    }
    let mut written = 0;
    for (chain, rules) in &next.chains {
        if prev.is_some_and(|p| p.chains.get(chain) == Some(rules)) {
            continue;
        }
        written += 1;
        let _ = writeln!(out, "flush chain {t} {chain}");
        for rule in rules {
            let _ = writeln!(out, "add rule {t} {chain} {rule}");
        }
    }
    for chain in &gone_chains {
        let _ = writeln!(out, "flush chain {t} {chain}");
    }
    for chain in &gone_chains {
        let _ = writeln!(out, "delete chain {t} {chain}");
    }
    for set in &gone_sets {
        let _ = writeln!(out, "delete set {t} {set}");
    }
    written += gone_chains.len();
    (out, written)
}

/// Names after `chain` / `set` in `nft list table ip nodelet` output.
pub fn parse_listed(output: &str, kind: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix(kind)?.strip_prefix(' '))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|n| n.trim_matches('"').to_string())
        .filter(|n| !BASE_CHAINS.iter().any(|(b, _)| b == n) && n != "hairpin")
        .collect()
}

/// The chains and sets of the family's table in the kernel (empty when it
/// is absent).
fn list(family: Family) -> Result<(BTreeSet<String>, BTreeSet<String>), ProxyError> {
    match run_with_input("nft", &["list", "table", family.nft(), TABLE], "") {
        Ok(out) => Ok((parse_listed(&out, "chain"), parse_listed(&out, "set"))),
        Err(ProxyError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => Ok(Default::default()),
        Err(e) => Err(e),
    }
}

/// What the kernel holds, as the inputs it was rendered from: a partial
/// sync re-renders only the Service ports whose inputs changed.
struct Committed {
    ctx: Context,
    inputs: BTreeMap<PortKey, (ServicePort, Vec<Endpoint>)>,
    /// How many Service ports use each hairpin pair.
    hairpin: BTreeMap<String, usize>,
}

/// The nftables backend of one family with its committed state.
pub struct Nftables {
    family: Family,
    committed: Option<Committed>,
    dry_run: bool,
    listed: bool,
    #[cfg(test)]
    last_script: String,
}

fn inputs_of(state: &ProxyState, family: Family) -> BTreeMap<PortKey, (ServicePort, Vec<Endpoint>)> {
    state.services.iter().filter(|(k, _)| k.family == family).map(|(k, svc)| (k.clone(), (svc.clone(), state.endpoints.get(k).cloned().unwrap_or_default()))).collect()
}

impl Nftables {
    pub fn new(family: Family, dry_run: bool) -> Self {
        Nftables {
            family,
            committed: None,
            dry_run,
            listed: false,
            #[cfg(test)]
            last_script: String::new(),
        }
    }

    /// Brings the kernel to `state`. `full` forgets what was committed.
    pub fn sync(&mut self, state: &ProxyState, ctx: &Context, full: bool) -> Result<SyncStats, ProxyError> {
        let started = std::time::Instant::now();
        if full || self.committed.as_ref().is_some_and(|c| c.ctx != *ctx) {
            self.committed = None;
        }
        let is_full = self.committed.is_none();
        let (script, changed, update) = match &self.committed {
            None => {
                let next = render(state, ctx);
                let (mut stale_chains, mut stale_sets) = (BTreeSet::new(), BTreeSet::new());
                if !self.listed && !self.dry_run {
                    (stale_chains, stale_sets) = list(self.family)?;
                }
                let (script, changed) = transaction(None, &next, &stale_chains, &stale_sets);
                (script, changed, None)
            }
            Some(c) => {
                // Only the Service ports whose inputs changed: the old and
                // the new rendering of each, diffed.
                let empty = Vec::new();
                let mut keys: Vec<PortKey> = Vec::new();
                for (k, svc) in state.services.iter().filter(|(k, _)| k.family == self.family) {
                    let eps = state.endpoints.get(k).unwrap_or(&empty);
                    if c.inputs.get(k).is_none_or(|(s, e)| s != svc || e != eps) {
                        keys.push(k.clone());
                    }
                }
                keys.extend(c.inputs.keys().filter(|k| !state.services.contains_key(*k) || k.family != self.family).cloned());
                let family = self.family;
                let (mut old, mut new) = (Rendered { family, ..Default::default() }, Rendered { family, ..Default::default() });
                let mut delta: BTreeMap<String, i64> = BTreeMap::new();
                for k in &keys {
                    if let Some((svc, eps)) = c.inputs.get(k) {
                        let mut one = Rendered::default();
                        render_service(&mut one, k, svc, eps, ctx);
                        for pair in std::mem::take(&mut one.hairpin) {
                            *delta.entry(pair).or_insert(0) -= 1;
                        }
                        old.merge(one);
                    }
                    if let Some(svc) = state.services.get(k) {
                        let mut one = Rendered::default();
                        render_service(&mut one, k, svc, state.endpoints.get(k).unwrap_or(&empty), ctx);
                        for pair in std::mem::take(&mut one.hairpin) {
                            *delta.entry(pair).or_insert(0) += 1;
                        }
                        new.merge(one);
                    }
                }
                // A pair goes when no Service port uses it any more, and
                // comes when the first one does.
                for (pair, d) in &delta {
                    let before = c.hairpin.get(pair).copied().unwrap_or(0) as i64;
                    if before > 0 && before + d <= 0 {
                        old.hairpin.insert(pair.clone());
                    } else if before == 0 && before + d > 0 {
                        new.hairpin.insert(pair.clone());
                    }
                }
                let (script, changed) = transaction(Some(&old), &new, &BTreeSet::new(), &BTreeSet::new());
                (script, changed, Some((keys, delta)))
            }
        };
        let plan = started.elapsed();
        #[cfg(test)]
        {
            self.last_script = script.clone();
        }
        if !self.dry_run
            && let Err(e) = run_with_input("nft", &["-f", "-"], &script)
        {
            self.committed = None;
            self.listed = false;
            return Err(e);
        }
        self.listed = true;
        match (update, self.committed.as_mut()) {
            (Some((keys, delta)), Some(c)) => {
                for k in keys {
                    match state.services.get(&k) {
                        Some(svc) => {
                            let eps = state.endpoints.get(&k).cloned().unwrap_or_default();
                            c.inputs.insert(k, (svc.clone(), eps));
                        }
                        None => {
                            c.inputs.remove(&k);
                        }
                    }
                }
                for (pair, d) in delta {
                    let n = c.hairpin.entry(pair.clone()).or_insert(0);
                    *n = (*n as i64 + d).max(0) as usize;
                    if *n == 0 {
                        c.hairpin.remove(&pair);
                    }
                }
            }
            _ => self.committed = Some(Committed { ctx: ctx.clone(), inputs: inputs_of(state, self.family), hairpin: hairpin_counts(state, ctx) }),
        }
        Ok(SyncStats { changed_chains: changed, input_bytes: script.len(), full: is_full, plan, apply: started.elapsed() - plan })
    }
}

/// Whether the kernel would take the whole ruleset for `state`, asked
/// without committing anything (`nft --check`: the transaction goes to the
/// kernel and is aborted there).
pub fn check(state: &ProxyState, ctx: &Context) -> Result<(), ProxyError> {
    let (script, _) = transaction(None, &render(state, ctx), &BTreeSet::new(), &BTreeSet::new());
    run_with_input("nft", &["--check", "-f", "-"], &script).map(|_| ())
}

/// The whole ruleset as one `nft -f` script, for `--dry-run`.
pub fn render_full_text(state: &ProxyState, ctx: &Context) -> String {
    transaction(None, &render(state, ctx), &BTreeSet::new(), &BTreeSet::new()).0
}

/// Removes the tables of both families and everything in them.
pub fn cleanup() -> Result<(), ProxyError> {
    // Both families, even when one fails.
    let v4 = super::delete_nft_table(Family::V4, TABLE);
    let v6 = if super::ipv6_available() { super::delete_nft_table(Family::V6, TABLE) } else { Ok(()) };
    v4.and(v6)
}

#[cfg(test)]
mod tests;
