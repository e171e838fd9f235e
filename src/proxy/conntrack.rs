//! Stale UDP conntrack entries. UDP has no connection to end, so a flow
//! NATed to an endpoint that has gone (or a flow that hit a Service while
//! it had no endpoints) stays in conntrack and black-holes the client until
//! it expires. kube-proxy deletes those entries; so does nodelet, with the
//! `conntrack` tool.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::model::{Family, ProxyState, Protocol, select};

/// One `conntrack -D` filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stale {
    /// Flows to a service address and port (the Service had no endpoints).
    ToService { ip: IpAddr, port: u16 },
    /// Flows of a family to a node port (the Service had no endpoints).
    ToNodePort { family: Family, port: u16 },
    /// Flows to a service address NATed to an endpoint that went away.
    ServiceToEndpoint { ip: IpAddr, port: u16, endpoint: IpAddr },
    /// Flows to a node port NATed to an endpoint that went away.
    NodePortToEndpoint { port: u16, endpoint: IpAddr },
}

impl Stale {
    fn family(&self) -> Family {
        match self {
            Stale::ToService { ip, .. } | Stale::ServiceToEndpoint { ip, .. } => Family::of(ip),
            Stale::ToNodePort { family, .. } => *family,
            Stale::NodePortToEndpoint { endpoint, .. } => Family::of(endpoint),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        if self.family() == Family::V6 {
            a.extend(["-f".into(), "ipv6".into()]);
        }
        let s = |x: &dyn ToString| x.to_string();
        match self {
            Stale::ToService { ip, port } => a.extend([s(&"--orig-dst"), s(ip), s(&"--dport"), s(port)]),
            Stale::ToNodePort { port, .. } => a.extend([s(&"--dport"), s(port)]),
            Stale::ServiceToEndpoint { ip, port, endpoint } => {
                a.extend([s(&"--orig-dst"), s(ip), s(&"--dport"), s(port), s(&"--dst-nat"), s(endpoint)])
            }
            Stale::NodePortToEndpoint { port, endpoint } => a.extend([s(&"--dport"), s(port), s(&"--dst-nat"), s(endpoint)]),
        }
        a
    }
}

/// What to delete after going from `prev` to `next` (both already applied).
pub fn stale(prev: &ProxyState, next: &ProxyState) -> BTreeSet<Stale> {
    let mut out = BTreeSet::new();
    let empty = Vec::new();
    for (key, svc) in &next.services {
        if key.protocol != Protocol::Udp {
            continue;
        }
        let now = select(svc, next.endpoints.get(key).unwrap_or(&empty));
        let before = prev.services.get(key).map(|p| select(p, prev.endpoints.get(key).unwrap_or(&empty)));
        let had_none = before.as_ref().is_none_or(|b| b.cluster.is_empty());
        if had_none && !now.cluster.is_empty() {
            out.insert(Stale::ToService { ip: svc.cluster_ip, port: svc.port });
        }
        let had_no_external = before.as_ref().is_none_or(|b| b.external.is_empty());
        if had_no_external && !now.external.is_empty() {
            for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                out.insert(Stale::ToService { ip: *ip, port: svc.port });
            }
        }
        if let Some(np) = svc.node_port
            && had_no_external
            && !now.external.is_empty()
        {
            out.insert(Stale::ToNodePort { family: key.family, port: np });
        }
    }
    for (key, svc) in &prev.services {
        if key.protocol != Protocol::Udp {
            continue;
        }
        let before = select(svc, prev.endpoints.get(key).unwrap_or(&empty));
        // As kube-proxy: flows to an endpoint that still serves this
        // Service stay, whatever the traffic policies now choose, so a
        // terminating endpoint drains.
        let serving: Vec<&super::model::Endpoint> =
            next.endpoints.get(key).map(|eps| eps.iter().filter(|e| e.serving || e.ready).collect()).unwrap_or_default();
        for ep in before.all.iter() {
            if serving.iter().any(|e| e.ip == ep.ip && e.port == ep.port) {
                continue;
            }
            for ip in std::iter::once(&svc.cluster_ip).chain(&svc.external_ips).chain(&svc.load_balancer_ips) {
                out.insert(Stale::ServiceToEndpoint { ip: *ip, port: svc.port, endpoint: ep.ip });
            }
            if let Some(np) = svc.node_port {
                out.insert(Stale::NodePortToEndpoint { port: np, endpoint: ep.ip });
            }
        }
    }
    out
}

/// Deletes the entries; failures are logged (an entry that is not there is
/// not one).
pub fn clear(entries: &BTreeSet<Stale>) {
    for e in entries {
        let args = e.args();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match super::run_with_input("conntrack", &argv, "") {
            Ok(_) => tracing::debug!(filter = ?e, "stale UDP conntrack entries deleted"),
            Err(super::ProxyError::Failed { stderr, .. }) if stderr.contains("0 flow entries") => {}
            Err(err) => tracing::warn!(filter = ?e, error = %err, "could not delete stale UDP conntrack entries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Endpoint, PortKey, ServicePort};

    #[test]
    fn replaced_udp_endpoints_and_first_endpoints_are_cleared() {
        let key = PortKey { namespace: "d".into(), name: "dns".into(), port: String::new(), protocol: Protocol::Udp, family: Family::V4 };
        let svc = ServicePort::cluster_ip(key.clone(), std::net::Ipv4Addr::new(10, 96, 0, 53).into(), 53);
        let ep = |n| Endpoint { elsewhere: false, ip: std::net::Ipv4Addr::new(10, 244, 0, n).into(), port: 53, ready: true, serving: true, terminating: false, local: false };
        let mut empty = ProxyState::default();
        empty.services.insert(key.clone(), svc.clone());
        let mut one = empty.clone();
        one.endpoints.insert(key.clone(), vec![ep(1)]);
        let mut other = empty.clone();
        other.endpoints.insert(key.clone(), vec![ep(2)]);
        assert_eq!(stale(&empty, &one), BTreeSet::from([Stale::ToService { ip: svc.cluster_ip, port: 53 }]));
        assert_eq!(
            stale(&one, &other),
            BTreeSet::from([Stale::ServiceToEndpoint { ip: svc.cluster_ip, port: 53, endpoint: ep(1).ip }])
        );
        assert!(stale(&one, &one).is_empty());
        assert_eq!(Stale::ToService { ip: svc.cluster_ip, port: 53 }.args().join(" "), "-D -p udp --orig-dst 10.96.0.53 --dport 53");
        let v6 = Stale::ServiceToEndpoint { ip: "fd00:10:96::53".parse().unwrap(), port: 53, endpoint: "fd00:10:244::7".parse().unwrap() };
        assert_eq!(v6.args().join(" "), "-D -p udp -f ipv6 --orig-dst fd00:10:96::53 --dport 53 --dst-nat fd00:10:244::7");
        assert_eq!(Stale::ToNodePort { family: Family::V6, port: 30053 }.args().join(" "), "-D -p udp -f ipv6 --dport 30053");
    }
}
