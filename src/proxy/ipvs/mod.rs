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
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use self::netlink::{DestKey, Op, ServiceKey, ServiceSpec};
use self::plan::{Element, Planned};
pub use self::ruleset::{firewall_rules, render_ruleset};
use super::model::{Endpoint, PortKey, ProxyState, ServicePort};
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
    use crate::proxy::model;

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
