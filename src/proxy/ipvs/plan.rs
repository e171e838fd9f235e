//! What each Service port asks of IPVS: its virtual services and real
//! servers, the addresses bound to kube-ipvs0 and the nftables set elements;
//! and the incremental replan that keeps, per Service port, its inputs with
//! what they planned, so only the ports whose Service or endpoints changed
//! are planned again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::netlink::{DestKey, Protocol, ServiceKey, ServiceSpec};
use super::{Ipvs, IpvsSettings};
use crate::proxy::model::{self, Endpoint, PortKey, ProxyState, ServicePort};

pub(super) type Element = (&'static str, String);

/// What one Service port asks of the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Planned {
    services: BTreeMap<ServiceKey, (ServiceSpec, BTreeSet<DestKey>)>,
    addresses: BTreeSet<IpAddr>,
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
/// Every address is of the Service port's family (the model keeps each
/// family's ports, endpoints, external and load-balancer IPs apart); the
/// node's are of the backend's.
pub(super) fn plan_port(svc: &ServicePort, eps: &[Endpoint], settings: &IpvsSettings, node_ips: &[IpAddr], node_addrs: &BTreeSet<IpAddr>) -> Planned {
    let mut p = Planned::default();
    let family = svc.key.family;
    let of_family = |ip: &IpAddr| (model::Family::of(ip) == family).then_some(*ip);
    let cluster_ip = svc.cluster_ip;
    let proto = protocol(svc.key.protocol);
    let pname = proto.as_str();
    let sel = model::select(svc, eps);
    let spec = ServiceSpec::new(&settings.scheduler, svc.affinity);
    let dests = |list: &[Endpoint]| list.iter().filter_map(|e| Some(DestKey { addr: of_family(&e.ip)?, port: e.port })).collect::<BTreeSet<_>>();
    let cluster = dests(&sel.cluster);
    let external = dests(&sel.external);
    // externalTrafficPolicy Local without a local endpoint: the external
    // and load-balancer IPs still reach the Service's endpoints from this
    // node's pods and processes (kube-proxy's IPVS mode does the same; a
    // load balancer's health check keeps outside traffic away).
    let external_vip = if svc.external_local && external.is_empty() { dests(&sel.all) } else { external.clone() };
    let vip = |p: &mut Planned, addr: IpAddr, ds: &BTreeSet<DestKey>| {
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
    vip(&mut p, cluster_ip, &cluster);
    p.elements.insert(("cluster-ips", format!("{} . {pname} . {}", cluster_ip, svc.port)));
    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips).filter_map(of_family) {
        vip(&mut p, ip, &external_vip);
        if !svc.external_local {
            p.elements.insert(("external-ips", format!("{ip} . {pname} . {}", svc.port)));
        }
    }
    if let Some(np) = svc.node_port {
        for ip in node_ips.iter().filter(|ip| model::Family::of(ip) == family) {
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

impl Ipvs {
    /// Replans the Service ports of this backend's family whose inputs
    /// changed; the virtual services, addresses and elements they touched.
    pub(super) fn replan(&mut self, state: &ProxyState, node_ips_changed: bool) -> (BTreeSet<ServiceKey>, BTreeSet<IpAddr>, BTreeSet<Element>) {
        let mut touched = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let empty = Vec::new();
        // The ports whose inputs changed: one merge walk over the sorted
        // Services, endpoints and kept ports (no lookups, no hashing).
        let mut keys: Vec<PortKey> = Vec::new();
        let mut old = self.ports.iter().peekable();
        let mut eps_at = state.endpoints.iter().peekable();
        for (key, svc) in state.services.iter().filter(|(k, _)| k.family == self.family) {
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
    pub(super) fn wanted(&self, sk: &ServiceKey) -> Option<&(ServiceSpec, BTreeSet<DestKey>)> {
        self.claims.get(sk).and_then(|c| c.values().next())
    }
}
