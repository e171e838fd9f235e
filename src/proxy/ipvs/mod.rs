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
//! no longer wants: every virtual service of its family outside
//! `excludeCIDRs`, as kube-proxy) and after any failure.
//!
//! Dual-stack as kube-proxy: one backend per family, each owning its
//! family's virtual services, its addresses on the shared kube-ipvs0 and a
//! table of its own (`ip nodelet-ipvs`, `ip6 nodelet-ipvs`).
//!
//! A removed TCP endpoint is not deleted at once: its weight drops to 0, so
//! it takes no new connections, and it is deleted when its connections have
//! drained (or after `drain_timeout`), as kube-proxy's graceful termination.

//!
//! Where it lives: `plan` (what each Service port asks of IPVS, replanned
//! incrementally), `sync` (bringing the kernel to the plan), `ruleset`
//! (the nftables table beside IPVS), `link` (kube-ipvs0 and its addresses
//! over rtnetlink), `netlink` (IPVS over generic netlink), `nfsets` (set
//! elements over nf_tables netlink).

pub mod link;
pub mod netlink;
pub mod nfsets;
mod plan;
mod ruleset;
mod sync;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use self::netlink::{DestKey, Op, ServiceKey, ServiceSpec};
use self::plan::{Element, Planned};
pub use self::ruleset::{firewall_rules, render_ruleset};
use super::model::{Endpoint, Family, PortKey, ProxyState, ServicePort};
use super::{Context, ProxyError};

pub const TABLE: &str = "nodelet-ipvs";

/// KubeProxyConfiguration `ipvs.*`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsSettings {
    pub scheduler: String,
    pub strict_arp: bool,
    /// Seconds; 0 leaves the kernel's value.
    pub tcp_timeout: u32,
    pub tcp_fin_timeout: u32,
    pub udp_timeout: u32,
    /// Virtual services nodelet never touches (either family).
    pub exclude_cidrs: Vec<ipnetwork::IpNetwork>,
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

/// A virtual service as nodelet last left it in the kernel.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    spec: ServiceSpec,
    dests: BTreeMap<DestKey, u32>,
}

/// The IPVS backend of one address family.
pub struct Ipvs {
    family: Family,
    settings: IpvsSettings,
    dry_run: bool,
    sock: Option<netlink::Socket>,
    link: Option<link::Link>,
    link_index: Option<u32>,
    /// Each Service port's inputs and plan.
    ports: BTreeMap<PortKey, (ServicePort, Vec<Endpoint>, Planned)>,
    node_ips: Vec<IpAddr>,
    /// When the node's addresses were last read (they are read at full
    /// syncs and at most every 10 s: with thousands of Service addresses on
    /// kube-ipvs0 the listing is not free).
    node_ips_read: Option<Instant>,
    /// Every address of the node (of the family) outside kube-ipvs0.
    node_addrs: BTreeSet<IpAddr>,
    /// The planned virtual services by the Service ports that plan them
    /// (the first one wins; another takes over when it goes), and the
    /// references to each address and set element.
    claims: HashMap<ServiceKey, BTreeMap<PortKey, (ServiceSpec, BTreeSet<DestKey>)>>,
    addr_refs: HashMap<IpAddr, u32>,
    element_refs: HashMap<Element, u32>,
    /// The kernel as nodelet last left it.
    table: BTreeMap<ServiceKey, Known>,
    addresses: BTreeSet<IpAddr>,
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

fn io(tool: &str, e: impl std::fmt::Display) -> ProxyError {
    ProxyError::Failed { tool: tool.into(), status: "error".into(), stderr: e.to_string() }
}

impl Ipvs {
    /// Opens IPVS and the route netlink socket for `family`'s Services; a
    /// kernel without IPVS is an error that names the module. A dry run
    /// touches nothing.
    pub fn new(family: Family, settings: IpvsSettings, dry_run: bool) -> Result<Ipvs, netlink::IpvsError> {
        let (sock, link) = if dry_run {
            (None, None)
        } else {
            (Some(netlink::Socket::open(&settings.scheduler)?), Some(link::Link::open()?))
        };
        Ok(Ipvs {
            family,
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

    /// The family this backend serves.
    pub fn family(&self) -> Family {
        self.family
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

}

/// What a dry run prints for `ctx`'s family: every change from an empty
/// node, then the auxiliary ruleset.
pub fn render_full_text(state: &ProxyState, ctx: &Context, settings: &IpvsSettings) -> String {
    let mut b = match Ipvs::new(ctx.family, settings.clone(), true) {
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

/// `nodelet proxy cleanup` for IPVS: every IPv4 and IPv6 virtual service
/// (kube-proxy's cleanup flushes the table too), kube-ipvs0, and both
/// families' tables of rules. A kernel without IPVS has nothing to clean.
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
    let v4 = super::delete_nft_table(Family::V4, TABLE);
    let v6 = if super::ipv6_available() { super::delete_nft_table(Family::V6, TABLE) } else { Ok(()) };
    v4.and(v6)
}

#[cfg(test)]
mod tests;
