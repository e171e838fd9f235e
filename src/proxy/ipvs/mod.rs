//! IPVS mode, modelled on kube-proxy's: a virtual service per Service
//! address and port (ClusterIP, each externalIP and load-balancer IP, and
//! each node address for a NodePort), its endpoints as masquerading real
//! servers, ClientIP affinity as persistence; the Service addresses on the
//! `kube-ipvs0` dummy link; the little packet filtering IPVS still needs
//! (masquerade marks, hairpin, no-endpoint rejects, traffic to a VIP port
//! no Service serves) in one nftables table of its own whose rules are
//! fixed and whose sets hold the addresses, so the ruleset does not grow
//! with Services.
//!
//! The plan is incremental: each Service port's inputs are kept with what
//! they planned, and a sync replans only the ports whose Service or
//! endpoints changed, so an endpoint change with ten thousand Services
//! present costs a few netlink messages. The kernel's table is read in full
//! at the first sync (adopting what matches, removing what nodelet owns and
//! no longer wants: every IPv4 virtual service outside `excludeCIDRs`, as
//! kube-proxy) and after any failure.
//!
//! A removed TCP endpoint is not deleted at once: its weight drops to 0, so
//! it takes no new connections, and it is deleted when its connections have
//! drained (or after `drain_timeout`), as kube-proxy's graceful termination.

pub mod link;
pub mod netlink;
pub mod nfsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use self::netlink::{DestKey, Op, Protocol, ServiceKey, ServiceSpec};
use super::model::{self, Endpoint, PortKey, ProxyState, ServicePort};
use super::{Context, ProxyError, SyncStats, run_with_input};

pub const TABLE: &str = "nodelet-ipvs";
const T: &str = "ip nodelet-ipvs";

/// KubeProxyConfiguration `ipvs.*`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsSettings {
    pub scheduler: String,
    pub strict_arp: bool,
    /// Seconds; 0 leaves the kernel's value.
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
    /// Virtual services nodelet never touches.
    pub exclude_cidrs: Vec<ipnetwork::Ipv4Network>,
    /// How long a removed TCP real server may drain.
    pub drain_timeout: Duration,
}

impl Default for IpvsSettings {
    fn default() -> Self {
        IpvsSettings {
            scheduler: "rr".into(),
            strict_arp: false,
            tcp_timeout: 0,
            tcp_fin_timeout: 0,
            udp_timeout: 0,
            exclude_cidrs: Vec::new(),
            drain_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// The schedulers kube-proxy accepts and the others the kernel ships.
pub const SCHEDULERS: &[&str] = &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"];

/// The nftables sets and their types.
const SETS: &[(&str, &str)] = &[
    ("cluster-ips", "ipv4_addr . inet_proto . inet_service"),
    ("external-ips", "ipv4_addr . inet_proto . inet_service"),
    ("nodeports", "inet_proto . inet_service"),
    ("no-endpoint-services", "ipv4_addr . inet_proto . inet_service"),
    ("no-endpoint-nodeports", "inet_proto . inet_service"),
    ("vips", "ipv4_addr"),
    ("vip-ports", "ipv4_addr . inet_proto . inet_service"),
    ("hairpin", "ipv4_addr . ipv4_addr . inet_proto . inet_service"),
];

const BASE_CHAINS: &[(&str, &str)] = &[
    ("filter-input", "type filter hook input priority -110 ;"),
    ("filter-output", "type filter hook output priority -110 ;"),
    ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
    ("nat-output", "type nat hook output priority -100 ;"),
    ("nat-postrouting", "type nat hook postrouting priority 100 ;"),
];

type Element = (&'static str, String);

/// What one Service port asks of the node.
#[derive(Debug, Clone, Default, PartialEq)]
struct Planned {
    services: BTreeMap<ServiceKey, (ServiceSpec, BTreeSet<DestKey>)>,
    addresses: BTreeSet<Ipv4Addr>,
    elements: BTreeSet<Element>,
}

fn protocol(p: model::Protocol) -> Protocol {
    match p {
        model::Protocol::Tcp => Protocol::Tcp,
        model::Protocol::Udp => Protocol::Udp,
        model::Protocol::Sctp => Protocol::Sctp,
    }
}

/// What one Service port asks for. `node_ips` are the addresses node ports
/// listen on; `node_addrs` every address of the node outside kube-ipvs0: an
/// external or load-balancer IP that is one of them gets its virtual
/// service but is neither bound to kube-ipvs0 nor filtered as a VIP (the
/// node's own services stay reachable on it, as kube-proxy's `shouldBind`).
fn plan_port(svc: &ServicePort, eps: &[Endpoint], settings: &IpvsSettings, node_ips: &[Ipv4Addr], node_addrs: &BTreeSet<Ipv4Addr>) -> Planned {
    let mut p = Planned::default();
    let proto = protocol(svc.key.protocol);
    let pname = proto.as_str();
    let sel = model::select(svc, eps);
    let spec = ServiceSpec::new(&settings.scheduler, svc.affinity);
    let dests = |list: &[Endpoint]| list.iter().map(|e| DestKey { addr: e.ip, port: e.port }).collect::<BTreeSet<_>>();
    let cluster = dests(&sel.cluster);
    let external = dests(&sel.external);
    // externalTrafficPolicy Local without a local endpoint: the external
    // and load-balancer IPs still reach the Service's endpoints from this
    // node's pods and processes (kube-proxy's IPVS mode does the same; a
    // load balancer's health check keeps outside traffic away).
    let external_vip = if svc.external_local && external.is_empty() { dests(&sel.all) } else { external.clone() };
    let vip = |p: &mut Planned, addr: Ipv4Addr, ds: &BTreeSet<DestKey>| {
        p.services.insert(ServiceKey { protocol: proto, addr, port: svc.port }, (spec.clone(), ds.clone()));
        if !sel.any {
            p.elements.insert(("no-endpoint-services", format!("{addr} . {pname} . {}", svc.port)));
        }
        if node_addrs.contains(&addr) {
            return;
        }
        p.addresses.insert(addr);
        p.elements.insert(("vips", addr.to_string()));
        p.elements.insert(("vip-ports", format!("{addr} . {pname} . {}", svc.port)));
    };
    vip(&mut p, svc.cluster_ip, &cluster);
    p.elements.insert(("cluster-ips", format!("{} . {pname} . {}", svc.cluster_ip, svc.port)));
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        vip(&mut p, *ip, &external_vip);
        if !svc.external_local {
            p.elements.insert(("external-ips", format!("{ip} . {pname} . {}", svc.port)));
        }
    }
    if let Some(np) = svc.node_port {
        for ip in node_ips {
            p.services.insert(ServiceKey { protocol: proto, addr: *ip, port: np }, (spec.clone(), external.clone()));
        }
        if !svc.external_local {
            p.elements.insert(("nodeports", format!("{pname} . {np}")));
        }
        if !sel.any {
            p.elements.insert(("no-endpoint-nodeports", format!("{pname} . {np}")));
        }
    }
    // Hairpin: this node's endpoints reaching themselves through the
    // Service (kube-proxy's KUBE-LOOP-BACK: endpoint, endpoint, port).
    for e in sel.all.iter().chain(&sel.local).filter(|e| e.local) {
        p.elements.insert(("hairpin", format!("{} . {} . {pname} . {}", e.ip, e.ip, e.port)));
    }
    p
}

/// A virtual service as nodelet last left it in the kernel.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    spec: ServiceSpec,
    dests: BTreeMap<DestKey, u32>,
}

/// The IPVS backend.
pub struct Ipvs {
    settings: IpvsSettings,
    dry_run: bool,
    sock: Option<netlink::Socket>,
    link: Option<link::Link>,
    link_index: Option<u32>,
    /// Each Service port's inputs and plan.
    ports: BTreeMap<PortKey, (ServicePort, Vec<Endpoint>, Planned)>,
    node_ips: Vec<Ipv4Addr>,
    /// When the node's addresses were last read (they are read at full
    /// syncs and at most every 10 s: with thousands of Service addresses on
    /// kube-ipvs0 the listing is not free).
    node_ips_read: Option<Instant>,
    /// Every address of the node outside kube-ipvs0.
    node_addrs: BTreeSet<Ipv4Addr>,
    /// The planned virtual services by the Service ports that plan them
    /// (the first one wins; another takes over when it goes), and the
    /// references to each address and set element.
    claims: HashMap<ServiceKey, BTreeMap<PortKey, (ServiceSpec, BTreeSet<DestKey>)>>,
    addr_refs: HashMap<Ipv4Addr, u32>,
    element_refs: HashMap<Element, u32>,
    /// The kernel as nodelet last left it.
    table: BTreeMap<ServiceKey, Known>,
    addresses: BTreeSet<Ipv4Addr>,
    elements: Option<BTreeSet<Element>>,
    /// Real servers at weight 0, each with its deadline.
    draining: BTreeMap<(ServiceKey, DestKey), Instant>,
    prepared: bool,
    /// The lines of the last sync's changes (what a dry run prints).
    pub last_changes: Vec<String>,
    /// Virtual services the kernel refused an operation on, each retried
    /// with back-off while the others are programmed.
    refused: BTreeMap<ServiceKey, Refused>,
    /// Refusals not yet reported as events: the Services and the message.
    reports: Vec<Report>,
    /// Operations the kernel refused, since the start.
    pub refusals_total: u64,
    /// The rules of the `firewall` chain as last written (None: unknown,
    /// write them).
    firewall: Option<Vec<String>>,
}

/// The `firewall` chain's rules for `state`: for each load-balancer IP
/// and port of a Service with loadBalancerSourceRanges, new connections
/// from outside the ranges are dropped before IPVS schedules them.
pub fn firewall_rules(state: &ProxyState) -> Vec<String> {
    let mut out = Vec::new();
    for svc in state.services.values() {
        let Some(ranges) = &svc.source_ranges else { continue };
        let proto = svc.key.protocol.as_str();
        for ip in &svc.load_balancer_ips {
            let from = if ranges.is_empty() {
                String::new()
            } else {
                format!(" ip saddr != {{ {} }}", ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            out.push(format!("ip daddr {ip} meta l4proto {proto} th dport {}{from} drop comment \"{} loadBalancerSourceRanges\"", svc.port, svc.key));
        }
    }
    out.sort();
    out
}

/// The `nft -f` input that makes the `firewall` chain hold `rules`.
fn firewall_text(rules: &[String]) -> String {
    let mut s = format!("flush chain {T} firewall\n");
    for r in rules {
        let _ = writeln!(s, "add rule {T} firewall {r}");
    }
    s
}

/// A virtual service the kernel refuses: how often, when to try again.
#[derive(Debug, Clone)]
struct Refused {
    attempts: u32,
    next: Instant,
    message: String,
}

/// A refusal to report on the Services it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// namespace/name of each Service whose port plans the virtual service.
    pub services: Vec<(String, String)>,
    pub message: String,
}

/// The back-off of a refused virtual service: the same as a refused
/// Service port's in the other modes.
use crate::proxy::refusals::backoff as refusal_backoff;

/// One sync's changes, in the order they are made.
#[derive(Debug, Default)]
struct Changes {
    create_link: bool,
    /// Services and servers added or updated (before the addresses).
    first: Vec<Op>,
    add_addresses: Vec<Ipv4Addr>,
    del_addresses: Vec<Ipv4Addr>,
    /// Servers and services deleted (after the addresses).
    last: Vec<Op>,
    /// The whole table, written with `nft -f` (at a full sync).
    nft: Option<String>,
    /// Otherwise the set elements to add (true) or delete, one transaction.
    elements: Vec<(Element, bool)>,
}

impl Changes {
    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.create_link {
            out.push(link::LinkOp::Create.to_string());
        }
        out.extend(self.first.iter().map(ToString::to_string));
        out.extend(self.add_addresses.iter().map(|ip| link::LinkOp::AddAddress(*ip).to_string()));
        out.extend(self.del_addresses.iter().map(|ip| link::LinkOp::DelAddress(*ip).to_string()));
        out.extend(self.last.iter().map(ToString::to_string));
        out
    }
    fn count(&self) -> usize {
        usize::from(self.create_link) + self.first.len() + self.add_addresses.len() + self.del_addresses.len() + self.last.len()
    }
}

fn io(tool: &str, e: impl std::fmt::Display) -> ProxyError {
    ProxyError::Failed { tool: tool.into(), status: "error".into(), stderr: e.to_string() }
}

impl Ipvs {
    /// Opens IPVS and the route netlink socket; a kernel without IPVS is an
    /// error that names the module. A dry run touches nothing.
    pub fn new(settings: IpvsSettings, dry_run: bool) -> Result<Ipvs, netlink::IpvsError> {
        let (sock, link) = if dry_run {
            (None, None)
        } else {
            (Some(netlink::Socket::open(&settings.scheduler)?), Some(link::Link::open()?))
        };
        Ok(Ipvs {
            settings,
            dry_run,
            sock,
            link,
            link_index: None,
            ports: BTreeMap::new(),
            node_ips: Vec::new(),
            node_ips_read: None,
            node_addrs: BTreeSet::new(),
            claims: HashMap::new(),
            addr_refs: HashMap::new(),
            element_refs: HashMap::new(),
            table: BTreeMap::new(),
            addresses: BTreeSet::new(),
            elements: None,
            draining: BTreeMap::new(),
            prepared: false,
            last_changes: Vec::new(),
            refused: BTreeMap::new(),
            reports: Vec::new(),
            refusals_total: 0,
            firewall: None,
        })
    }

    /// When the next look at draining servers is due.
    pub fn recheck(&self) -> Option<Duration> {
        (!self.draining.is_empty()).then_some(Duration::from_secs(2))
    }

    /// Deletes the draining servers whose connections are gone (or whose
    /// time is up), and nothing else: what the sync loop runs between syncs.
    pub fn drain(&mut self) -> Result<usize, ProxyError> {
        let ops = self.drained()?;
        let n = ops.len();
        if !ops.is_empty() {
            self.last_changes = ops.iter().map(ToString::to_string).collect();
            self.apply_ops(&ops)?;
        }
        Ok(n)
    }

    /// Reads the kernel: owned virtual services with their servers, the
    /// link and its addresses.
    fn read_kernel(&mut self) -> Result<(), ProxyError> {
        self.table.clear();
        self.addresses.clear();
        self.elements = None;
        self.link_index = None;
        let excluded: Vec<ipnetwork::Ipv4Network> = self.settings.exclude_cidrs.clone();
        if let Some(sock) = self.sock.as_mut() {
            let services = sock.services().map_err(|e| io("ipvs", e))?;
            for (key, spec) in services {
                if excluded.iter().any(|n| n.contains(key.addr)) {
                    continue;
                }
                let dests = sock.dests(&key).map_err(|e| io("ipvs", e))?;
                self.table.insert(key, Known { spec, dests: dests.into_iter().map(|d| (d.key, d.weight)).collect() });
            }
        }
        if let Some(link) = &self.link {
            self.link_index = link.index().map_err(|e| io(link::NAME, e))?;
            if let Some(i) = self.link_index {
                self.addresses = link.addresses(i).map_err(|e| io(link::NAME, e))?;
            }
        }
        // Servers found at weight 0 are draining from before a restart.
        let deadline = Instant::now() + self.settings.drain_timeout;
        for (k, known) in &self.table {
            for (d, w) in &known.dests {
                if *w == 0 {
                    self.draining.entry((*k, *d)).or_insert(deadline);
                }
            }
        }
        Ok(())
    }

    /// The node's addresses outside kube-ipvs0 (by interface, as kube-proxy's
    /// GetAllLocalAddressesExcept), and those node ports listen on.
    fn node_addresses(ctx: &Context) -> (BTreeSet<Ipv4Addr>, Vec<Ipv4Addr>) {
        let all: BTreeSet<Ipv4Addr> = super::local_ipv4s_except(Some(link::NAME)).into_iter().collect();
        let mut ips: Vec<Ipv4Addr> = match &ctx.node_port_ips {
            Some(ips) => ips.clone(),
            None => all.iter().copied().filter(|ip| !ip.is_loopback()).collect(),
        };
        ips.sort();
        ips.dedup();
        (all, ips)
    }

    /// Replans the Service ports whose inputs changed; the virtual
    /// services, addresses and elements they touched.
    fn replan(&mut self, state: &ProxyState, node_ips_changed: bool) -> (BTreeSet<ServiceKey>, BTreeSet<Ipv4Addr>, BTreeSet<Element>) {
        let mut touched = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let empty = Vec::new();
        // The ports whose inputs changed: one merge walk over the sorted
        // Services, endpoints and kept ports (no lookups, no hashing).
        let mut keys: Vec<PortKey> = Vec::new();
        let mut old = self.ports.iter().peekable();
        let mut eps_at = state.endpoints.iter().peekable();
        for (key, svc) in &state.services {
            while eps_at.peek().is_some_and(|(k, _)| *k < key) {
                eps_at.next();
            }
            let eps: &[Endpoint] = match eps_at.peek() {
                Some((k, v)) if *k == key => v.as_slice(),
                _ => &[],
            };
            while let Some((k, _)) = old.peek().filter(|(k, _)| *k < key) {
                keys.push((*k).clone());
                old.next();
            }
            match old.peek() {
                Some((k, (s, e, _))) if *k == key => {
                    if node_ips_changed || s != svc || e.as_slice() != eps {
                        keys.push(key.clone());
                    }
                    old.next();
                }
                _ => keys.push(key.clone()),
            }
        }
        keys.extend(old.map(|(k, _)| k.clone()));
        for key in keys {
            let old = self.ports.remove(&key).map(|(_, _, p)| p).unwrap_or_default();
            let new = match state.services.get(&key) {
                Some(svc) => {
                    let eps = state.endpoints.get(&key).unwrap_or(&empty);
                    let p = plan_port(svc, eps, &self.settings, &self.node_ips, &self.node_addrs);
                    self.ports.insert(key.clone(), (svc.clone(), eps.clone(), p.clone()));
                    p
                }
                None => Planned::default(),
            };
            for sk in old.services.keys() {
                if !new.services.contains_key(sk)
                    && let Some(c) = self.claims.get_mut(sk)
                {
                    c.remove(&key);
                    if c.is_empty() {
                        self.claims.remove(sk);
                    }
                    touched.0.insert(*sk);
                }
            }
            for (sk, (spec, dests)) in new.services {
                let c = self.claims.entry(sk).or_default();
                c.insert(key.clone(), (spec, dests));
                if c.len() == 2 {
                    let owners: Vec<String> = c.keys().map(ToString::to_string).collect();
                    tracing::warn!(address = %sk, services = ?owners, "two Service ports claim one IPVS virtual service; the first is used");
                }
                touched.0.insert(sk);
            }
            for a in old.addresses.difference(&new.addresses) {
                if let Some(n) = self.addr_refs.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        self.addr_refs.remove(a);
                    }
                }
                touched.1.insert(*a);
            }
            for a in new.addresses.difference(&old.addresses) {
                *self.addr_refs.entry(*a).or_default() += 1;
                touched.1.insert(*a);
            }
            for e in old.elements.difference(&new.elements) {
                if let Some(n) = self.element_refs.get_mut(e) {
                    *n -= 1;
                    if *n == 0 {
                        self.element_refs.remove(e);
                    }
                }
                touched.2.insert(e.clone());
            }
            for e in new.elements.difference(&old.elements) {
                *self.element_refs.entry(e.clone()).or_default() += 1;
                touched.2.insert(e.clone());
            }
        }
        touched
    }

    /// The virtual service as planned: its first claimant's.
    fn wanted(&self, sk: &ServiceKey) -> Option<&(ServiceSpec, BTreeSet<DestKey>)> {
        self.claims.get(sk).and_then(|c| c.values().next())
    }

    /// The changes that bring the kernel to the plan for the touched keys.
    fn diff(&mut self, services: &BTreeSet<ServiceKey>, addresses: &BTreeSet<Ipv4Addr>, elements: &BTreeSet<Element>, ctx: &Context) -> Changes {
        let mut c = Changes::default();
        let now = Instant::now();
        for sk in services {
            let want = self.wanted(sk).cloned();
            let have = self.table.get(sk);
            match (want.as_ref(), have) {
                (None, None) => {}
                (None, Some(_)) => {
                    c.last.push(Op::DelService(*sk));
                }
                (Some((spec, dests)), None) => {
                    c.first.push(Op::AddService(*sk, spec.clone()));
                    c.first.extend(dests.iter().map(|d| Op::AddDest(*sk, *d, 1)));
                }
                (Some((spec, dests)), Some(known)) => {
                    if known.spec != *spec {
                        c.first.push(Op::UpdateService(*sk, spec.clone()));
                    }
                    for d in dests {
                        match known.dests.get(d) {
                            None => c.first.push(Op::AddDest(*sk, *d, 1)),
                            Some(0) => c.first.push(Op::UpdateDest(*sk, *d, 1)),
                            Some(_) => {}
                        }
                    }
                    for (d, w) in &known.dests {
                        if dests.contains(d) {
                            continue;
                        }
                        // TCP drains; UDP and SCTP servers go at once (their
                        // flows end on the next packet: expire_nodest_conn).
                        if sk.protocol == Protocol::Tcp {
                            if *w > 0 {
                                c.first.push(Op::UpdateDest(*sk, *d, 0));
                            }
                            self.draining.entry((*sk, *d)).or_insert(now + self.settings.drain_timeout);
                        } else {
                            c.last.push(Op::DelDest(*sk, *d));
                        }
                    }
                }
            }
        }
        for a in addresses {
            match (self.addr_refs.contains_key(a), self.addresses.contains(a)) {
                (true, false) => c.add_addresses.push(*a),
                (false, true) => c.del_addresses.push(*a),
                _ => {}
            }
        }
        if !c.add_addresses.is_empty() && self.link_index.is_none() {
            c.create_link = true;
        }
        match &self.elements {
            None => c.nft = Some(render_ruleset(ctx, self.element_refs.keys())),
            Some(applied) => {
                for e in elements {
                    match (self.element_refs.contains_key(e), applied.contains(e)) {
                        (true, false) => c.elements.push((e.clone(), true)),
                        (false, true) => c.elements.push((e.clone(), false)),
                        _ => {}
                    }
                }
            }
        }
        c
    }

    /// Deletes draining servers whose connections are gone or whose time
    /// is up. Servers wanted again were set back to weight 1, and those of a
    /// virtual service being deleted go with it; both leave the list, as do
    /// servers that vanished from the kernel meanwhile.
    fn drained(&mut self) -> Result<Vec<Op>, ProxyError> {
        let now = Instant::now();
        let mut ops = Vec::new();
        let claims = &self.claims;
        let table = &self.table;
        self.draining.retain(|(sk, d), _| {
            let wanted = claims.get(sk).and_then(|c| c.values().next());
            wanted.is_some_and(|(_, ds)| !ds.contains(d)) && table.get(sk).is_some_and(|k| k.dests.contains_key(d))
        });
        let services: BTreeSet<ServiceKey> = self.draining.keys().map(|(sk, _)| *sk).collect();
        for sk in services {
            let counts: HashMap<DestKey, u32> = match self.sock.as_mut() {
                Some(sock) => sock.dests(&sk).map_err(|e| io("ipvs", e))?.into_iter().map(|d| (d.key, d.active + d.inactive)).collect(),
                None => HashMap::new(),
            };
            let due: Vec<DestKey> = self
                .draining
                .iter()
                // Only servers already at weight 0 in the kernel: one set to 0
                // by this sync is looked at by the next.
                .filter(|((k, d), _)| *k == sk && self.table.get(k).and_then(|known| known.dests.get(d)) == Some(&0))
                .filter(|((_, d), deadline)| counts.get(d).copied().unwrap_or(0) == 0 || **deadline <= now)
                .map(|((_, d), _)| *d)
                .collect();
            for d in due {
                self.draining.remove(&(sk, d));
                ops.push(Op::DelDest(sk, d));
            }
        }
        Ok(ops)
    }

    /// Records applied operations in `table`.
    fn record(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::AddService(k, s) | Op::UpdateService(k, s) => {
                    self.table.entry(*k).or_insert_with(|| Known { spec: s.clone(), dests: BTreeMap::new() }).spec = s.clone();
                }
                Op::DelService(k) => {
                    self.table.remove(k);
                }
                Op::AddDest(k, d, w) | Op::UpdateDest(k, d, w) => {
                    if let Some(known) = self.table.get_mut(k) {
                        known.dests.insert(*d, *w);
                    }
                }
                Op::DelDest(k, d) => {
                    if let Some(known) = self.table.get_mut(k) {
                        known.dests.remove(d);
                    }
                }
                Op::SetTimeouts { .. } => {}
            }
        }
    }

    /// Applies `ops`: what the kernel refuses is left out (not recorded, so
    /// the next sync asks again once its back-off is over), reported once per
    /// virtual service, and never stops the rest. Operations on a virtual
    /// service still in back-off are held. Only a failure of the socket
    /// itself fails the sync.
    fn apply_ops(&mut self, ops: &[Op]) -> Result<(), ProxyError> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let send: Vec<Op> = ops.iter().filter(|op| op.service().and_then(|k| self.refused.get(k)).is_none_or(|r| r.next <= now)).cloned().collect();
        let Some(sock) = self.sock.as_mut() else {
            self.record(&send);
            return Ok(());
        };
        let refused = sock.apply(&send).map_err(|e| io("ipvs", e))?;
        let mut bad: BTreeMap<usize, String> = BTreeMap::new();
        for (i, e) in &refused {
            let hint = match &send[*i] {
                Op::AddService(_, spec) | Op::UpdateService(_, spec) if e.raw_os_error() == Some(libc::ENOENT) => {
                    format!(" (is the scheduler {:?} available? it needs the kernel module ip_vs_{})", spec.scheduler, spec.scheduler)
                }
                _ => String::new(),
            };
            bad.insert(*i, format!("{}: {e}{hint}", send[*i]));
        }
        self.refusals_total += refused.len() as u64;
        // Per virtual service: the first refusal's words; or, for one that
        // was refused before and went through now, its recovery.
        let mut failed_now: BTreeMap<ServiceKey, String> = BTreeMap::new();
        for (i, message) in &bad {
            match send[*i].service() {
                Some(k) => {
                    failed_now.entry(*k).or_insert_with(|| message.clone());
                }
                None => tracing::error!("the kernel refused {message}"),
            }
        }
        for op in &send {
            if let Some(k) = op.service()
                && !failed_now.contains_key(k)
                && self.refused.remove(k).is_some()
            {
                tracing::info!(service = %k, "the kernel accepts the virtual service again");
            }
        }
        for (k, message) in failed_now {
            let services: Vec<(String, String)> =
                self.claims.get(&k).map(|c| c.keys().map(|p| (p.namespace.clone(), p.name.clone())).collect::<BTreeSet<_>>().into_iter().collect()).unwrap_or_default();
            let entry = self.refused.entry(k).or_insert_with(|| Refused { attempts: 0, next: now, message: String::new() });
            entry.attempts += 1;
            entry.next = now + refusal_backoff(entry.attempts);
            if entry.message != message {
                let names: Vec<String> = services.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
                tracing::error!(
                    service = %k,
                    services = ?names,
                    retry_in = ?refusal_backoff(entry.attempts),
                    "the kernel refused {message}; every other Service is programmed, this one is retried with back-off"
                );
                entry.message = message.clone();
                self.reports.push(Report { services, message });
            }
        }
        let ok: Vec<Op> = send.into_iter().enumerate().filter(|(i, _)| !bad.contains_key(i)).map(|(_, op)| op).collect();
        self.record(&ok);
        Ok(())
    }

    /// Refusals to report as events since the last call.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// Virtual services the kernel refuses now.
    pub fn refused_now(&self) -> usize {
        self.refused.len()
    }

    /// How soon a refused virtual service is due to be tried again.
    pub fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.refused.values().map(|r| r.next.saturating_duration_since(now)).min()
    }

    /// Prepares the kernel once: sysctls and connection timeouts.
    fn prepare(&mut self) -> Result<(), ProxyError> {
        if self.prepared || self.dry_run {
            return Ok(());
        }
        let mut want: Vec<(&str, &str)> = vec![
            ("net/ipv4/vs/conntrack", "1"),
            ("net/ipv4/vs/expire_nodest_conn", "1"),
            ("net/ipv4/vs/expire_quiescent_template", "1"),
            ("net/ipv4/ip_forward", "1"),
        ];
        if kernel_before(5, 9) {
            // Older kernels drop a reused port's SYN for a second with
            // conn_reuse_mode 1; kube-proxy sets 0 there.
            want.push(("net/ipv4/vs/conn_reuse_mode", "0"));
        }
        if self.settings.strict_arp {
            want.push(("net/ipv4/conf/all/arp_ignore", "1"));
            want.push(("net/ipv4/conf/all/arp_announce", "2"));
        }
        for (name, value) in want {
            set_sysctl(name, value);
        }
        let s = &self.settings;
        if s.tcp_timeout > 0 || s.tcp_fin_timeout > 0 || s.udp_timeout > 0 {
            let op = Op::SetTimeouts { tcp: s.tcp_timeout, tcp_fin: s.tcp_fin_timeout, udp: s.udp_timeout };
            // A value the kernel refuses is reported, as kube-proxy does; the
            // Services are programmed all the same.
            let refused_before = self.refusals_total;
            match self.apply_ops(std::slice::from_ref(&op)) {
                // A refusal was logged by apply_ops, naming the operation.
                Ok(()) if self.refusals_total == refused_before => tracing::info!("{op}"),
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "the kernel refused the ipvs.*Timeout settings"),
            }
        }
        self.prepared = true;
        Ok(())
    }

    /// One sync: replan what changed, diff with the kernel, apply.
    pub fn sync(&mut self, state: &ProxyState, ctx: &Context, full: bool) -> Result<SyncStats, ProxyError> {
        let started = Instant::now();
        self.prepare()?;
        if full && !self.dry_run {
            self.read_kernel()?;
        }
        let stale = self.node_ips_read.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        let node_ips_changed = if full || stale {
            let (addrs, node_ips) = Self::node_addresses(ctx);
            self.node_ips_read = Some(Instant::now());
            let changed = node_ips != self.node_ips || addrs != self.node_addrs;
            self.node_ips = node_ips;
            self.node_addrs = addrs;
            changed
        } else {
            false
        };
        let (mut services, mut addresses, elements) = self.replan(state, node_ips_changed);
        if full {
            services.extend(self.table.keys().copied());
            services.extend(self.claims.keys().copied());
            addresses.extend(self.addresses.iter().copied());
            addresses.extend(self.addr_refs.keys().copied());
        }
        // Virtual services the kernel refused are looked at every sync:
        // what is still wanted of them is asked again (once their back-off
        // is over), and one with nothing left to ask is whole again.
        services.extend(self.refused.keys().copied());
        let mut c = self.diff(&services, &addresses, &elements, ctx);
        let pending: BTreeSet<ServiceKey> = c.first.iter().chain(c.last.iter()).filter_map(|op| op.service().copied()).collect();
        self.refused.retain(|k, _| {
            let still = pending.contains(k);
            if !still {
                tracing::info!(service = %k, "the virtual service the kernel refused is as planned now");
            }
            still
        });
        let drained = self.drained()?;
        c.last.extend(drained);
        let plan = started.elapsed();
        let lines = c.lines();
        let count = c.count();
        let applied = Instant::now();
        let rewrote_table = c.nft.is_some();
        let result = self.apply_changes(c);
        self.last_changes = lines;
        result?;
        // The firewall chain: written when its rules change (and after the
        // table was written anew, which empties it).
        let rules = firewall_rules(state);
        if rewrote_table || self.firewall.as_ref() != Some(&rules) {
            if !self.dry_run {
                run_with_input("nft", &["-f", "-"], &firewall_text(&rules))?;
            }
            if self.firewall.as_ref() != Some(&rules) {
                self.last_changes.extend(rules.iter().map(|r| format!("nft firewall: {r}")));
            }
            self.firewall = Some(rules);
        }
        Ok(SyncStats { changed_chains: count, input_bytes: 0, full, plan, apply: applied.elapsed() })
    }

    fn apply_changes(&mut self, c: Changes) -> Result<(), ProxyError> {
        if c.create_link {
            if let Some(link) = &self.link {
                self.link_index = Some(link.create().map_err(|e| io(link::NAME, e))?);
            } else {
                self.link_index = Some(0);
            }
        }
        self.apply_ops(&c.first)?;
        if !c.add_addresses.is_empty() || !c.del_addresses.is_empty() {
            // An address the kernel refuses is left out (asked again at the
            // next sync) and logged; the others go on.
            let mut refused_addrs: BTreeSet<Ipv4Addr> = BTreeSet::new();
            if let (Some(link), Some(index)) = (&self.link, self.link_index) {
                for (op, e) in link.apply(index, &c.add_addresses, &c.del_addresses) {
                    if let link::LinkOp::AddAddress(a) | link::LinkOp::DelAddress(a) = op {
                        refused_addrs.insert(a);
                    }
                    self.refusals_total += 1;
                    tracing::error!("{}: {op}: {e}; the other addresses are programmed", link::NAME);
                }
            }
            for a in c.add_addresses.iter().filter(|a| !refused_addrs.contains(a)) {
                self.addresses.insert(*a);
            }
            for a in c.del_addresses.iter().filter(|a| !refused_addrs.contains(a)) {
                self.addresses.remove(a);
            }
        }
        self.apply_ops(&c.last)?;
        if let Some(text) = &c.nft {
            if !self.dry_run {
                run_with_input("nft", &["-f", "-"], text)?;
            }
            self.elements = Some(self.element_refs.keys().cloned().collect());
        } else if !c.elements.is_empty() {
            if !self.dry_run {
                let changes: Vec<nfsets::Change> = c.elements.iter().map(|((set, e), add)| (*set, *add, e.as_str())).collect();
                nfsets::apply(TABLE, &changes).map_err(|e| io("nf_tables set elements", e))?;
            }
            let applied = self.elements.get_or_insert_with(BTreeSet::new);
            for (e, add) in c.elements {
                if add {
                    applied.insert(e);
                } else {
                    applied.remove(&e);
                }
            }
        }
        Ok(())
    }
}

fn kernel_before(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Sets a sysctl IPVS mode needs, saying so when it changes one.
fn set_sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/{name}");
    let dotted = name.replace('/', ".");
    match std::fs::read_to_string(&path) {
        Ok(old) if old.trim() == value => {}
        Ok(old) => match std::fs::write(&path, value) {
            Ok(()) => tracing::info!(sysctl = %dotted, from = %old.trim(), to = value, "set a sysctl the IPVS proxy mode needs"),
            Err(e) => tracing::error!(sysctl = %dotted, want = value, error = %e, "cannot set a sysctl the IPVS proxy mode needs"),
        },
        Err(e) => tracing::error!(sysctl = %dotted, want = value, error = %e, "cannot read a sysctl the IPVS proxy mode needs"),
    }
}

/// The whole auxiliary ruleset, replacing any older table in the same
/// transaction.
pub fn render_ruleset<'a>(ctx: &Context, elements: impl Iterator<Item = &'a Element>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table {T} {{ comment \"rules for nodelet's Service proxy (IPVS mode)\" ; }}");
    let _ = writeln!(s, "delete table {T}");
    let _ = writeln!(s, "add table {T} {{ comment \"rules for nodelet's Service proxy (IPVS mode)\" ; }}");
    for (name, hook) in BASE_CHAINS {
        let _ = writeln!(s, "add chain {T} {name} {{ {hook} }}");
    }
    for name in ["endpoints-check", "services", "mark-for-masquerade", "firewall"] {
        let _ = writeln!(s, "add chain {T} {name}");
    }
    for (name, ty) in SETS {
        let _ = writeln!(s, "add set {T} {name} {{ type {ty} ; }}");
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
            ("filter-input", "ct state new meta l4proto { tcp, udp, sctp } ip daddr @vips ip daddr . meta l4proto . th dport != @vip-ports reject".to_string()),
            ("filter-output", "ct state new jump endpoints-check".to_string()),
            ("endpoints-check", "ip daddr . meta l4proto . th dport @no-endpoint-services reject".to_string()),
            (
                "endpoints-check",
                "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @no-endpoint-nodeports reject".to_string(),
            ),
            ("nat-prerouting", "jump services".to_string()),
            ("nat-output", "jump services".to_string()),
            // The node itself connecting to a cluster IP leaves with the
            // VIP as its source (the local route's): masqueraded, or remote
            // endpoints could not answer (kube-proxy's KUBE-CLUSTER-IP
            // src,dst rule).
            ("services", "ip saddr . meta l4proto . th dport @cluster-ips jump mark-for-masquerade".to_string()),
        ];
        if ctx.masquerade_all {
            r.push(("services", "ip daddr . meta l4proto . th dport @cluster-ips jump mark-for-masquerade".to_string()));
        } else if let Some(cidr) = ctx.cluster_cidr {
            r.push(("services", format!("ip daddr . meta l4proto . th dport @cluster-ips ip saddr != {cidr} jump mark-for-masquerade")));
        }
        r.push(("services", "ip daddr . meta l4proto . th dport @external-ips jump mark-for-masquerade".to_string()));
        r.push(("services", "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @nodeports jump mark-for-masquerade".to_string()));
        r.push(("mark-for-masquerade", format!("meta mark set meta mark | {mark:#x}")));
        r.push(("nat-postrouting", "ip saddr . ip daddr . meta l4proto . th dport @hairpin masquerade fully-random".to_string()));
        r.push(("nat-postrouting", format!("meta mark & {mark:#x} == 0 return")));
        r.push(("nat-postrouting", format!("meta mark set meta mark ^ {mark:#x}")));
        r.push(("nat-postrouting", "masquerade fully-random".to_string()));
        r
    };
    for (chain, rule) in rules {
        let _ = writeln!(s, "add rule {T} {chain} {rule}");
    }
    let mut by_set: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (set, e) in elements {
        by_set.entry(set).or_default().push(e);
    }
    for (set, mut es) in by_set {
        es.sort();
        for chunk in es.chunks(1000) {
            let _ = writeln!(s, "add element {T} {set} {{ {} }}", chunk.join(", "));
        }
    }
    s
}

/// What a dry run prints: every change from an empty node, then the
/// auxiliary ruleset.
pub fn render_full_text(state: &ProxyState, ctx: &Context, settings: &IpvsSettings) -> String {
    let mut b = match Ipvs::new(settings.clone(), true) {
        Ok(b) => b,
        Err(e) => return format!("# {e}\n"),
    };
    let mut out = String::new();
    if let Err(e) = b.sync(state, ctx, true) {
        let _ = writeln!(out, "# {e}");
    }
    for l in &b.last_changes {
        let _ = writeln!(out, "{l}");
    }
    out.push_str(&render_ruleset(ctx, b.element_refs.keys().collect::<BTreeSet<_>>().into_iter()));
    out
}

/// `nodelet proxy cleanup` for IPVS: every IPv4 virtual service (kube-proxy's
/// cleanup flushes the table too), kube-ipvs0, and the table of rules. A
/// kernel without IPVS has nothing to clean.
pub fn cleanup() -> Result<(), ProxyError> {
    match netlink::Socket::open("rr") {
        Ok(mut sock) => {
            let services = sock.services().map_err(|e| io("ipvs", e))?;
            let ops: Vec<Op> = services.into_iter().map(|(k, _)| Op::DelService(k)).collect();
            let refused = sock.apply(&ops).map_err(|e| io("ipvs", e))?;
            if let Some((i, e)) = refused.first() {
                return Err(io("ipvs", format!("{}: {e}", ops[*i])));
            }
        }
        Err(netlink::IpvsError::NoModule { .. }) => {}
        Err(e) => return Err(io("ipvs", e)),
    }
    match link::Link::open().and_then(|l| l.delete()) {
        Ok(()) => {}
        Err(e) => return Err(io(link::NAME, e)),
    }
    super::delete_nft_table(TABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IpvsSettings {
        IpvsSettings::default()
    }

    fn fixture() -> (ProxyState, Context) {
        let (s, mut ctx) = crate::proxy::fixture::basic();
        ctx.node_port_ips = Some(vec![Ipv4Addr::new(192, 168, 1, 10)]);
        (s, ctx)
    }

    #[test]
    fn golden_dry_run() {
        let (s, ctx) = fixture();
        let text = render_full_text(&s, &ctx, &settings());
        crate::proxy::golden::check("tests/golden/ipvs/basic.txt", &text);
    }

    #[test]
    fn the_ruleset_does_not_grow_with_services() {
        let (mut s, ctx) = fixture();
        let rules = |s: &ProxyState| render_full_text(s, &ctx, &settings()).lines().filter(|l| l.starts_with("add rule")).count();
        let before = rules(&s);
        for i in 0..50u8 {
            let key = PortKey { namespace: "bulk".into(), name: format!("s{i}"), port: String::new(), protocol: model::Protocol::Tcp };
            let mut sp = ServicePort::cluster_ip(key.clone(), Ipv4Addr::new(10, 97, 0, i), 80);
            sp.node_port = Some(31000 + u16::from(i));
            s.services.insert(key, sp);
        }
        assert_eq!(rules(&s), before);
    }

    #[test]
    fn an_endpoint_change_is_a_few_operations() {
        let (mut s, ctx) = fixture();
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        let key = s.endpoints.keys().find(|k| k.name == "web").unwrap().clone();
        s.endpoints.get_mut(&key).unwrap()[1].ip = Ipv4Addr::new(10, 244, 0, 99);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(
            b.last_changes,
            vec![
                "ipvs add server tcp 10.96.0.10:80 -> 10.244.0.99:8080 masq weight 1".to_string(),
                "ipvs update server tcp 10.96.0.10:80 -> 10.244.0.11:8080 masq weight 0".to_string(),
            ]
        );
        // The drained server goes at the next sync (a dry run sees no
        // connections); then there is nothing to do.
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(b.last_changes, vec!["ipvs delete server tcp 10.96.0.10:80 -> 10.244.0.11:8080".to_string()]);
        assert_eq!(b.recheck(), None);
        b.sync(&s, &ctx, false).unwrap();
        assert!(b.last_changes.is_empty(), "{:?}", b.last_changes);
    }

    #[test]
    fn a_deleted_service_goes_with_its_address_and_a_shared_address_stays() {
        let (mut s, ctx) = fixture();
        // A second port on web's ClusterIP.
        let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
        let mut https = web.clone();
        https.port = "https".into();
        let mut sp = s.services[&web].clone();
        sp.key = https.clone();
        sp.port = 443;
        s.services.insert(https.clone(), sp);
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        s.services.remove(&https);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(b.last_changes, vec!["ipvs delete service tcp 10.96.0.10:443".to_string()]);
        s.services.remove(&web);
        s.endpoints.remove(&web);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(
            b.last_changes,
            vec!["address delete 10.96.0.10/32 dev kube-ipvs0".to_string(), "ipvs delete service tcp 10.96.0.10:80".to_string()]
        );
    }

    #[test]
    fn a_shared_virtual_service_passes_to_the_other_service() {
        let (mut s, ctx) = fixture();
        let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
        let sticky = s.services.keys().find(|k| k.name == "sticky").unwrap().clone();
        let shared = Ipv4Addr::new(192, 0, 2, 50);
        s.services.get_mut(&web).unwrap().external_ips = vec![shared];
        s.services.get_mut(&sticky).unwrap().external_ips = vec![shared];
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        // default/sticky sorts before default/web: the first claimant wins.
        assert!(b.last_changes.iter().any(|l| l == "ipvs add service tcp 192.0.2.50:80 scheduler rr persistent 10800"), "{:?}", b.last_changes);
        s.services.get_mut(&sticky).unwrap().external_ips.clear();
        b.sync(&s, &ctx, false).unwrap();
        assert!(!b.last_changes.iter().any(|l| l.contains("delete service tcp 192.0.2.50:80") || l.contains("address delete 192.0.2.50")), "{:?}", b.last_changes);
        assert!(b.last_changes.iter().any(|l| l == "ipvs update service tcp 192.0.2.50:80 scheduler rr"), "web's spec takes over: {:?}", b.last_changes);
        assert!(b.last_changes.iter().any(|l| l == "ipvs add server tcp 192.0.2.50:80 -> 10.244.0.10:8080 masq weight 1"), "{:?}", b.last_changes);
        assert!(b.last_changes.iter().any(|l| l == "ipvs update server tcp 192.0.2.50:80 -> 10.244.0.10:80 masq weight 0"), "{:?}", b.last_changes);
    }

    #[test]
    fn a_deleted_service_takes_its_draining_servers_along() {
        let (mut s, ctx) = fixture();
        let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        s.endpoints.get_mut(&web).unwrap().remove(0);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(b.last_changes, vec!["ipvs update server tcp 10.96.0.10:80 -> 10.244.0.10:8080 masq weight 0".to_string()]);
        s.services.remove(&web);
        s.endpoints.remove(&web);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(b.last_changes, vec!["address delete 10.96.0.10/32 dev kube-ipvs0".to_string(), "ipvs delete service tcp 10.96.0.10:80".to_string()]);
        assert_eq!(b.recheck(), None);
    }

    #[test]
    fn an_external_ip_of_the_node_is_not_bound() {
        let (mut s, ctx) = fixture();
        let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
        s.services.get_mut(&web).unwrap().external_ips = vec![Ipv4Addr::LOCALHOST];
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        assert!(b.last_changes.iter().any(|l| l == "ipvs add service tcp 127.0.0.1:80 scheduler rr"), "{:?}", b.last_changes);
        assert!(!b.last_changes.iter().any(|l| l.contains("address add 127.0.0.1")), "{:?}", b.last_changes);
        assert!(!b.element_refs.contains_key(&("vips", "127.0.0.1".to_string())));
    }

    #[test]
    fn a_udp_server_goes_at_once() {
        let (mut s, ctx) = fixture();
        let dns = s.services.keys().find(|k| k.name == "dns").unwrap().clone();
        let ep = Endpoint { ip: Ipv4Addr::new(10, 244, 0, 20), port: 53, ready: true, serving: true, terminating: false, local: true };
        s.endpoints.insert(dns.clone(), vec![ep]);
        let mut b = Ipvs::new(settings(), true).unwrap();
        b.sync(&s, &ctx, true).unwrap();
        s.endpoints.remove(&dns);
        b.sync(&s, &ctx, false).unwrap();
        assert_eq!(b.last_changes, vec!["ipvs delete server udp 10.96.0.53:53 -> 10.244.0.20:53".to_string()]);
    }
}
