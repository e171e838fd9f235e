//! nftables mode, modelled on kube-proxy's: one table of its own per
//! family (`ip nodelet`, `ip6 nodelet`, the same layout), verdict maps from address · protocol · port to a chain per
//! Service port, a random pick of the endpoint in that chain, dynamic sets
//! with timeouts for ClientIP affinity.
//!
//! The rules are data ([`rule::Rule`]); a sync is a plan of steps
//! ([`Op`]) encoded twice: as one nf_tables netlink transaction that goes to
//! the kernel (`netlink`: no `nft` process anywhere in this mode), and as
//! the `nft -f` script a human reads (`--dry-run`, the golden files). A
//! test proves with the kernel that both give the same table. The
//! committed ruleset is kept in memory, so a sync adds and deletes only the
//! map and set elements that changed and rewrites only the chains that
//! changed; the kernel's table is read back over netlink once, at the first
//! sync, to remove leftovers.
//!
//! Two departures from kube-proxy's layout, chosen when `nft` wrote the
//! rules (measured in benches/proxy.rs) and kept since: there is no chain
//! per endpoint — the kernel validates the whole graph of chains reachable
//! from the base chains at each commit that adds a rule or a verdict, so
//! fewer chains make every partial sync cheaper — and the pick is a cascade
//! of `numgen random mod k == 0` rules (probability 1/n, 1/(n-1), ... as
//! iptables' statistic match) rather than an anonymous vmap per Service.
//! Hairpin traffic (an endpoint reaching itself through its Service) is
//! masqueraded through one `hairpin` set of `endpoint . endpoint` pairs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnetwork::IpNetwork;

use super::model::{Endpoint, Family, PortKey, ProxyState, ServicePort, select};
use super::{Context, ProxyError, SyncStats, chain_hash};
use rule::{Dir, Rule, Stmt};

pub mod rule;
mod netlink;

pub const TABLE: &str = "nodelet";

/// The table of `family`: `ip nodelet`, `ip6 nodelet`.
fn table(family: Family) -> String {
    format!("{} {TABLE}", family.nft())
}

/// Base chains and their hooks. Filter chains run before DNAT
/// (dstnat - 10), so traffic to a port without endpoints is rejected.
/// Name, type, hook, hook number (NF_INET_*), priority.
const BASE_CHAINS: &[(&str, &str, &str, u32, i32)] = &[
    ("filter-input", "filter", "input", 1, -110),
    ("filter-forward", "filter", "forward", 2, -110),
    ("filter-output", "filter", "output", 3, -110),
    ("nat-prerouting", "nat", "prerouting", 0, -100),
    ("nat-output", "nat", "output", 3, -100),
    ("nat-postrouting", "nat", "postrouting", 4, 100),
];

/// The verdict maps; true: keyed by address . protocol . port, false: by
/// protocol . port.
const MAPS: &[(&str, bool)] = &[
    ("service-ips", true),
    ("service-nodeports", false),
    ("no-endpoint-services", true),
    ("no-endpoint-nodeports", false),
    ("firewall-ips", true),
];

/// A ruleset: chains with their rules, map elements, affinity sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub family: Family,
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// map → element key → verdict.
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// affinity set → timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// `endpoint . endpoint` pairs for hairpin masquerade.
    pub hairpin: BTreeSet<String>,
}

impl Rendered {
    fn rule(&mut self, chain: &str, stmts: Vec<Stmt>) {
        let family = self.family;
        self.chains.entry(chain.to_string()).or_default().push(Rule::new(family, stmts));
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
fn node_port_match(ctx: &Context) -> Option<Vec<Stmt>> {
    match &ctx.node_port_ips {
        None => {
            let loopback = ctx.family.loopback().parse().expect("a loopback network");
            Some(vec![Stmt::FibLocal(Dir::Dst), Stmt::Addr { dir: Dir::Dst, neg: true, net: loopback }])
        }
        Some(ips) => {
            let nets: Vec<IpNetwork> = ips.iter().filter(|ip| Family::of(ip) == ctx.family).map(|ip| IpNetwork::from(*ip)).collect();
            (!nets.is_empty()).then(|| vec![Stmt::AddrIn { dir: Dir::Dst, nets }])
        }
    }
}

fn with(mut stmts: Vec<Stmt>, more: impl IntoIterator<Item = Stmt>) -> Vec<Stmt> {
    stmts.extend(more);
    stmts
}

/// The endpoint pick in `chain`: affinity first, then a random cascade that
/// gives each endpoint the same chance. Each rule DNATs directly.
fn to_endpoints(r: &mut Rendered, chain: &str, svc: &ServicePort, eps: &[Endpoint]) {
    let proto = svc.key.protocol;
    let remember = |ep: &Endpoint| match svc.affinity {
        Some(_) => vec![Stmt::UpdateSaddr(format!("affinity-{}", endpoint_base(&svc.key, ep)))],
        None => Vec::new(),
    };
    let dnat = |ep: &Endpoint| [Stmt::L4Proto(proto), Stmt::Dnat(std::net::SocketAddr::new(ep.ip, ep.port))];
    if let Some(timeout) = svc.affinity {
        for ep in eps {
            let b = endpoint_base(&svc.key, ep);
            r.sets.insert(format!("affinity-{b}"), timeout);
            let stmts = with(with(vec![Stmt::SaddrIn(format!("affinity-{b}"))], remember(ep)), dnat(ep));
            r.rule(chain, stmts);
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        r.hairpin.insert(format!("{} . {}", ep.ip, ep.ip));
        let pick = if i + 1 < n { vec![Stmt::Numgen((n - i) as u32)] } else { Vec::new() };
        r.rule(chain, with(with(pick, remember(ep)), dnat(ep)));
    }
}

/// Renders the whole ruleset of `ctx.family` for `state` (its Service
/// ports of that family). Pure and deterministic.
pub fn render(state: &ProxyState, ctx: &Context) -> Rendered {
    let mut r = Rendered { family: ctx.family, ..Default::default() };
    let mark = ctx.masq_mark();
    for (map, _) in MAPS {
        r.maps.insert(map.to_string(), BTreeMap::new());
    }
    let vmap = |map: &str| Stmt::Vmap { addr: true, map: map.into() };
    r.rule("filter-input", vec![Stmt::CtStateNew, Stmt::Jump("nodeport-endpoints-check".into())]);
    r.rule("filter-input", vec![Stmt::CtStateNew, Stmt::Jump("service-endpoints-check".into())]);
    r.rule("filter-forward", vec![Stmt::CtStateNew, Stmt::Jump("service-endpoints-check".into())]);
    // loadBalancerSourceRanges: a new connection to a load-balancer IP that
    // was not DNATed came from outside the ranges (see render_service).
    r.rule("filter-input", vec![Stmt::CtStateNew, vmap("firewall-ips")]);
    r.rule("filter-forward", vec![Stmt::CtStateNew, vmap("firewall-ips")]);
    r.rule("filter-output", vec![Stmt::CtStateNew, Stmt::Jump("service-endpoints-check".into())]);
    r.rule("service-endpoints-check", vec![vmap("no-endpoint-services")]);
    r.rule("nat-prerouting", vec![Stmt::Jump("services".into())]);
    r.rule("nat-output", vec![Stmt::Jump("services".into())]);
    r.rule("nat-postrouting", vec![Stmt::Jump("masquerading".into())]);
    r.rule("services", vec![vmap("service-ips")]);
    r.chains.entry("nodeport-endpoints-check".into()).or_default();
    if let Some(m) = node_port_match(ctx) {
        r.rule("services", with(m.clone(), [Stmt::Vmap { addr: false, map: "service-nodeports".into() }]));
        r.rule("nodeport-endpoints-check", with(m, [Stmt::Vmap { addr: false, map: "no-endpoint-nodeports".into() }]));
    }
    r.rule("mark-for-masquerade", vec![Stmt::MarkOr(mark)]);
    r.rule("masquerading", vec![Stmt::CtStatusDnat, Stmt::PairIn("hairpin".into()), Stmt::Masquerade]);
    r.rule("masquerading", vec![Stmt::MarkClear(mark), Stmt::Return]);
    r.rule("masquerading", vec![Stmt::MarkXor(mark)]);
    r.rule("masquerading", vec![Stmt::Masquerade]);
    r.rule("reject-chain", vec![Stmt::Reject]);

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
    let b = base(key);
    let svc_chain = format!("service-{b}");
    let local_chain = format!("local-{b}");
    let ext_chain = format!("external-{b}");
    let internal_chain = if svc.internal_local { &local_chain } else { &svc_chain };
    let (vip, port) = (svc.cluster_ip, svc.port);
    let mut wanted: BTreeMap<&String, &Vec<Endpoint>> = BTreeMap::new();
    let refusal = if sel.any { "drop" } else { "goto reject-chain" };
    let to_masq = || Stmt::Jump("mark-for-masquerade".into());

    if sel.cluster.is_empty() {
        r.element("no-endpoint-services", format!("{vip} . {proto} . {port}"), refusal.into());
    } else {
        r.element("service-ips", format!("{vip} . {proto} . {port}"), format!("goto {internal_chain}"));
        let this = [Stmt::Addr { dir: Dir::Dst, neg: false, net: IpNetwork::from(vip) }, Stmt::Dport(key.protocol, port)];
        if ctx.masquerade_all {
            r.rule(internal_chain, with(this.to_vec(), [to_masq()]));
        } else if let Some(cidr) = ctx.cluster_cidr {
            r.rule(internal_chain, with(this.to_vec(), [Stmt::Addr { dir: Dir::Src, neg: true, net: cidr }, to_masq()]));
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
                r.rule(&fw_chain, vec![Stmt::AddrIn { dir: Dir::Src, nets: ranges.clone() }, Stmt::Goto(ext_chain.clone())]);
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
                        r.rule(&ext_chain, vec![Stmt::Addr { dir: Dir::Src, neg: false, net: cidr }, Stmt::Goto(internal_chain.clone())]);
                    }
                    r.rule(&ext_chain, vec![Stmt::FibLocal(Dir::Src), to_masq()]);
                    r.rule(&ext_chain, vec![Stmt::FibLocal(Dir::Src), Stmt::Goto(internal_chain.clone())]);
                }
                // Everything else keeps its source address and stays on
                // this node, or is dropped when no endpoint is here.
                if sel.external.is_empty() {
                    r.rule(&ext_chain, vec![Stmt::Drop]);
                } else {
                    r.rule(&ext_chain, vec![Stmt::Goto(local_chain.clone())]);
                    wanted.insert(&local_chain, &sel.local);
                }
            } else {
                r.rule(&ext_chain, vec![to_masq()]);
                r.rule(&ext_chain, vec![Stmt::Goto(svc_chain.clone())]);
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
        let mut one = Rendered { family: key.family, ..Default::default() };
        render_service(&mut one, key, svc, state.endpoints.get(key).unwrap_or(&empty), ctx);
        for pair in one.hairpin {
            *counts.entry(pair).or_insert(0) += 1;
        }
    }
    counts
}

/// One step of a transaction. The plan is written once and encoded
/// twice: as an `nft -f` script ([`script`]) and as a netlink batch
/// (`netlink::batch`), so what a human reads is what the kernel gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Table,
    /// A base chain: name, type, hook name, hook number, priority.
    BaseChain(&'static str, &'static str, &'static str, u32, i32),
    /// A verdict map; true: keyed by address . protocol . port.
    Map(&'static str, bool),
    /// The hairpin set of address pairs.
    Hairpin,
    /// An affinity set with its timeout in seconds.
    AffinitySet(&'a str, u32),
    Chain(&'a str),
    /// All elements of a map or set go.
    FlushSet(&'static str),
    /// Elements added (with their verdict for a map) or deleted.
    Elements { set: &'static str, add: bool, items: Vec<(&'a str, Option<&'a str>)> },
    FlushChain(&'a str),
    AddRule(&'a str, &'a Rule),
    DeleteChain(&'a str),
    DeleteSet(&'a str),
}

/// The steps taking the kernel from `prev` (None: unknown, write
/// everything) to `next`. `stale_chains`/`stale_sets` are leftovers found in
/// the kernel. Returns the steps and how many chains they rewrite.
pub fn plan<'a>(prev: Option<&'a Rendered>, next: &'a Rendered, stale_chains: &'a BTreeSet<String>, stale_sets: &'a BTreeSet<String>) -> (Vec<Op<'a>>, usize) {
    let mut ops = vec![Op::Table];
    for &(chain, kind, hook, num, prio) in BASE_CHAINS {
        ops.push(Op::BaseChain(chain, kind, hook, num, prio));
    }
    for &(map, addr) in MAPS {
        ops.push(Op::Map(map, addr));
    }
    ops.push(Op::Hairpin);
    // New sets and chains only: `add` is idempotent, but repeating it for
    // every object would make each sync as long as a full one.
    for (set, timeout) in next.sets.iter().filter(|(s, _)| prev.is_none_or(|p| !p.sets.contains_key(*s))) {
        ops.push(Op::AffinitySet(set, *timeout));
    }
    let is_base = |c: &str| BASE_CHAINS.iter().any(|b| b.0 == c);
    for chain in next.chains.keys().filter(|c| !is_base(c) && prev.is_none_or(|p| !p.chains.contains_key(*c))) {
        ops.push(Op::Chain(chain));
    }
    // Chains and sets that go: everything of prev and the leftovers not in next.
    let mut gone_chains: BTreeSet<&String> = stale_chains.iter().filter(|c| !next.chains.contains_key(*c)).collect();
    let mut gone_sets: BTreeSet<&String> = stale_sets.iter().filter(|s| !next.sets.contains_key(*s)).collect();
    if let Some(p) = prev {
        gone_chains.extend(p.chains.keys().filter(|c| !next.chains.contains_key(*c)));
        gone_sets.extend(p.sets.keys().filter(|s| !next.sets.contains_key(*s)));
    }
    // Map elements first, so that nothing refers to a chain that goes.
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    for &(map, _) in MAPS {
        let want = next.maps.get(map).unwrap_or(&NONE);
        match prev {
            None => {
                ops.push(Op::FlushSet(map));
                let items: Vec<_> = want.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
                if !items.is_empty() {
                    ops.push(Op::Elements { set: map, add: true, items });
                }
            }
            Some(p) => {
                let had = p.maps.get(map).unwrap_or(&NONE);
                let removed: Vec<_> = had.iter().filter(|(k, v)| want.get(*k) != Some(*v)).map(|(k, _)| (k.as_str(), None)).collect();
                let added: Vec<_> = want.iter().filter(|(k, v)| had.get(*k) != Some(*v)).map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
                if !removed.is_empty() {
                    ops.push(Op::Elements { set: map, add: false, items: removed });
                }
                if !added.is_empty() {
                    ops.push(Op::Elements { set: map, add: true, items: added });
                }
            }
        }
    }
    let pairs = |it: Vec<&'a String>| -> Vec<(&'a str, Option<&'a str>)> { it.into_iter().map(|k| (k.as_str(), None)).collect() };
    match prev {
        None => {
            ops.push(Op::FlushSet("hairpin"));
            if !next.hairpin.is_empty() {
                ops.push(Op::Elements { set: "hairpin", add: true, items: pairs(next.hairpin.iter().collect()) });
            }
        }
        Some(p) => {
            let removed = pairs(p.hairpin.difference(&next.hairpin).collect());
            let added = pairs(next.hairpin.difference(&p.hairpin).collect());
            if !removed.is_empty() {
                ops.push(Op::Elements { set: "hairpin", add: false, items: removed });
            }
            if !added.is_empty() {
                ops.push(Op::Elements { set: "hairpin", add: true, items: added });
            }
        }
    }
    let mut written = 0;
    for (chain, rules) in &next.chains {
        if prev.is_some_and(|p| p.chains.get(chain) == Some(rules)) {
            continue;
        }
        written += 1;
        ops.push(Op::FlushChain(chain));
        for rule in rules {
            ops.push(Op::AddRule(chain, rule));
        }
    }
    for chain in &gone_chains {
        ops.push(Op::FlushChain(chain));
    }
    for chain in &gone_chains {
        ops.push(Op::DeleteChain(chain));
    }
    for set in &gone_sets {
        ops.push(Op::DeleteSet(set));
    }
    written += gone_chains.len();
    (ops, written)
}

/// The plan as an `nft -f` script for `family`'s table.
pub fn script(family: Family, ops: &[Op]) -> String {
    let mut out = String::new();
    let t = &table(family);
    let addr = family.nft_addr_type();
    for op in ops {
        let _ = match op {
            Op::Table => writeln!(out, "add table {t} {{ comment \"{COMMENT}\" ; }}"),
            Op::BaseChain(chain, kind, hook, _, prio) => writeln!(out, "add chain {t} {chain} {{ type {kind} hook {hook} priority {prio} ; }}"),
            Op::Map(map, true) => writeln!(out, "add map {t} {map} {{ type {addr} . inet_proto . inet_service : verdict ; }}"),
            Op::Map(map, false) => writeln!(out, "add map {t} {map} {{ type inet_proto . inet_service : verdict ; }}"),
            Op::Hairpin => writeln!(out, "add set {t} hairpin {{ type {addr} . {addr} ; }}"),
            Op::AffinitySet(set, timeout) => writeln!(out, "add set {t} {set} {{ type {addr} ; flags dynamic,timeout ; timeout {timeout}s ; }}"),
            Op::Chain(chain) => writeln!(out, "add chain {t} {chain}"),
            Op::FlushSet(set) => writeln!(out, "flush {} {t} {set}", if *set == "hairpin" { "set" } else { "map" }),
            Op::Elements { set, add, items } => {
                // Large element lists go in chunks to keep each command's line short.
                for chunk in items.chunks(1000) {
                    let list: Vec<String> = chunk.iter().map(|(k, v)| match v {
                        Some(v) => format!("{k} : {v}"),
                        None => k.to_string(),
                    }).collect();
                    let _ = writeln!(out, "{} element {t} {set} {{ {} }}", if *add { "add" } else { "delete" }, list.join(", "));
                }
                Ok(())
            }
            Op::FlushChain(chain) => writeln!(out, "flush chain {t} {chain}"),
            Op::AddRule(chain, rule) => writeln!(out, "add rule {t} {chain} {rule}"),
            Op::DeleteChain(chain) => writeln!(out, "delete chain {t} {chain}"),
            Op::DeleteSet(set) => writeln!(out, "delete set {t} {set}"),
        };
    }
    out
}

const COMMENT: &str = "rules for nodelet's Service proxy";

/// The `nft -f` script taking the kernel from `prev` (None: unknown, write
/// everything) to `next`. `stale_chains`/`stale_sets` are leftovers found in
/// the kernel. Returns the script and how many chains it rewrites. The
/// table is `next`'s family's.
pub fn transaction(prev: Option<&Rendered>, next: &Rendered, stale_chains: &BTreeSet<String>, stale_sets: &BTreeSet<String>) -> (String, usize) {
    let (ops, written) = plan(prev, next, stale_chains, stale_sets);
    (script(next.family, &ops), written)
}


/// Whether `set` (`hairpin`, a map) of `family`'s table holds the element
/// written `key`, asked of the kernel over netlink (benchmarks and tests
/// watch a change arrive with it).
pub fn has_element(sock: &mut super::nfnl::Socket, family: Family, set: &str, key: &str) -> Result<bool, super::nfnl::NfError> {
    netlink::has_element(sock, family, set, key)
}

/// Removes `family`'s table `name` over netlink; Ok when it is absent.
pub fn delete_table(family: Family, name: &str) -> Result<(), super::nfnl::NfError> {
    netlink::delete_table(family, name)
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
    socket: Option<super::nfnl::Socket>,
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
            socket: None,
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
        if self.socket.is_none() && !self.dry_run {
            self.socket = Some(super::nfnl::Socket::open().map_err(super::nfnl::NfError::from)?);
        }
        let (sent, changed, update) = match &self.committed {
            None => {
                let next = render(state, ctx);
                let (mut stale_chains, mut stale_sets) = (BTreeSet::new(), BTreeSet::new());
                if !self.listed && let Some(sock) = self.socket.as_mut() {
                    match netlink::list(sock, self.family) {
                        Ok(listed) => (stale_chains, stale_sets) = listed,
                        Err(e) => {
                            // A socket that failed is not used again.
                            self.socket = None;
                            return Err(e.into());
                        }
                    }
                }
                let (ops, changed) = plan(None, &next, &stale_chains, &stale_sets);
                (self.send(&ops, started), changed, None)
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
                        let mut one = Rendered { family: k.family, ..Default::default() };
                        render_service(&mut one, k, svc, eps, ctx);
                        for pair in std::mem::take(&mut one.hairpin) {
                            *delta.entry(pair).or_insert(0) -= 1;
                        }
                        old.merge(one);
                    }
                    if let Some(svc) = state.services.get(k) {
                        let mut one = Rendered { family: k.family, ..Default::default() };
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
                let (empty_chains, empty_sets) = (BTreeSet::new(), BTreeSet::new());
                let (ops, changed) = plan(Some(&old), &new, &empty_chains, &empty_sets);
                (self.send(&ops, started), changed, Some((keys, delta)))
            }
        };
        let (planned, size) = match sent {
            Ok(x) => x,
            Err(e) => {
                self.committed = None;
                self.listed = false;
                self.socket = None;
                return Err(e);
            }
        };
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
        Ok(SyncStats { changed_chains: changed, input_bytes: size, full: is_full, plan: planned, apply: started.elapsed() - planned })
    }

    /// Encodes `ops` as one batch and commits it (not in a dry run);
    /// returns the time until the batch was ready and its size.
    fn send(&mut self, ops: &[Op], started: std::time::Instant) -> Result<(std::time::Duration, usize), ProxyError> {
        #[cfg(test)]
        {
            self.last_script = script(self.family, ops);
        }
        let family = self.family;
        let (batch, about) = netlink::batch(family, ops).map_err(|e| ProxyError::Failed { tool: "nf_tables".into(), status: "plan".into(), stderr: e })?;
        let planned = started.elapsed();
        let size = batch.size();
        if !self.dry_run
            && let Some(sock) = self.socket.as_mut()
        {
            sock.commit(batch, |tag| about.get(tag).map(|a| netlink::describe(family, a)).unwrap_or_default())?;
        }
        Ok((planned, size))
    }
}

/// Whether the kernel would take the whole ruleset for `state`, asked
/// without committing anything: the batch goes to the kernel without its
/// end, so the kernel checks it and aborts (as `nft --check`).
pub fn check(state: &ProxyState, ctx: &Context) -> Result<(), ProxyError> {
    let next = render(state, ctx);
    let none = BTreeSet::new();
    let (ops, _) = plan(None, &next, &none, &none);
    let (batch, about) = netlink::batch(ctx.family, &ops).map_err(|e| ProxyError::Failed { tool: "nf_tables".into(), status: "plan".into(), stderr: e })?;
    let mut sock = super::nfnl::Socket::open().map_err(super::nfnl::NfError::from)?;
    Ok(sock.check(batch, |tag| about.get(tag).map(|a| netlink::describe(ctx.family, a)).unwrap_or_default())?)
}

/// Whether nf_tables takes a table of `family` with a NAT chain, asked
/// without committing anything.
pub fn family_usable(family: Family) -> Result<(), ProxyError> {
    let mut b = super::nfnl::Batch::new(family.nfproto());
    netlink::probe(&mut b);
    let mut sock = super::nfnl::Socket::open().map_err(super::nfnl::NfError::from)?;
    Ok(sock.check(b, |_| format!("a {} table with a NAT chain", family.nft()))?)
}

/// The whole ruleset's netlink batch size in bytes, or why it cannot be
/// encoded (for the fuzz target: encoding never panics).
pub fn full_batch_size(state: &ProxyState, ctx: &Context) -> Result<usize, String> {
    let next = render(state, ctx);
    let none = BTreeSet::new();
    let (ops, _) = plan(None, &next, &none, &none);
    Ok(netlink::batch(ctx.family, &ops)?.0.size())
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
