//! The proxy model: Services and EndpointSlices reduced to what the rules
//! need, per Service port. Pure: the watches feed it, the backends render
//! from it. Objects that fail validation are skipped, each with one error
//! naming the object and the field, and never disturb the other Services.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// kube-proxy's default ClientIP affinity timeout (3 h).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower case, as iptables and nft spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// As the API spells it.
    pub fn api_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// An IP family. A dual-stack Service is two Service ports in the model,
/// one per family, each programmed in its family's tables (kube-proxy runs
/// one proxier per family the same way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn of_net(net: &ipnetwork::IpNetwork) -> Family {
        Family::of(&net.ip())
    }

    /// As the API spells it (`ipFamilies`, EndpointSlice `addressType`).
    pub fn api_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// The prefix length of one address.
    pub fn host_bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// nf_tables' family number (NFPROTO_IPV4, NFPROTO_IPV6).
    pub fn nfproto(self) -> u8 {
        match self {
            Family::V4 => 2,
            Family::V6 => 10,
        }
    }

    /// nftables' table family and address keyword (`ip`, `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// nftables' address type.
    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// The loopback network (no node port is served there but in
    /// iptables mode on IPv4 with route_localnet).
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The iptables programs of this family: (iptables, -save, -restore).
    pub fn iptables(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::V4 => ("iptables", "iptables-save", "iptables-restore"),
            Family::V6 => ("ip6tables", "ip6tables-save", "ip6tables-restore"),
        }
    }

    /// conntrack's `-f`.
    pub fn conntrack(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// `namespace/name:port` with the protocol and the family: one Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
    pub family: Family,
}

impl fmt::Display for PortKey {
    /// kube-proxy's ServicePortName: `ns/name:port` (`ns/name` for an
    /// unnamed port); the family is not part of it (each family's rules
    /// live in that family's tables, named as kube-proxy names them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() { write!(f, "{}/{}", self.namespace, self.name) } else { write!(f, "{}/{}:{}", self.namespace, self.name, self.port) }
    }
}

/// One Service port as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub key: PortKey,
    /// Of the key's family, as every address below.
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` of this family when they restrict who
    /// reaches the load-balancer IPs: None lets everyone in (no ranges, or
    /// one that holds every address of the family). Some(empty) lets nobody
    /// in: the Service named ranges of the other family only, and this
    /// family's load-balancer IPs stay closed rather than open to all.
    pub source_ranges: Option<Vec<ipnetwork::IpNetwork>>,
    /// ClientIP affinity timeout in seconds.
    pub affinity: Option<u32>,
    /// externalTrafficPolicy: Local.
    pub external_local: bool,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
}

impl ServicePort {
    /// A plain ClusterIP port: no node port, external addresses, affinity or
    /// Local policies.
    pub fn cluster_ip(key: PortKey, cluster_ip: IpAddr, port: u16) -> Self {
        ServicePort {
            key,
            cluster_ip,
            port,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            source_ranges: None,
            affinity: None,
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
        }
    }

    /// Whether traffic from outside reaches this port (NodePort, external
    /// or load-balancer IPs).
    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
}

/// One endpoint of one Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node.
    pub local: bool,
    /// Kept out of cluster-wide traffic by topology: the Service's slices
    /// hint every ready endpoint to nodes or zones, and this one is not
    /// hinted to this node or its zone (kube-proxy's PreferSameNode /
    /// PreferSameZone). Traffic policies Local ignore it.
    pub elsewhere: bool,
}

impl fmt::Display for Endpoint {
    /// `ip:port`, `[ip6]:port` (as kube-proxy, iptables' DNAT and nft spell it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.ip, self.port))
    }
}

/// Everything the rules are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyState {
    pub services: BTreeMap<PortKey, ServicePort>,
    /// Every endpoint of each port, sorted, without duplicates.
    pub endpoints: BTreeMap<PortKey, Vec<Endpoint>>,
}

impl ProxyState {
    /// The Service ports of one family and their endpoints.
    pub fn family(&self, family: Family) -> ProxyState {
        ProxyState {
            services: self.services.iter().filter(|(k, _)| k.family == family).map(|(k, v)| (k.clone(), v.clone())).collect(),
            endpoints: self.endpoints.iter().filter(|(k, _)| k.family == family).map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The families the model has Service ports of.
    pub fn families(&self) -> std::collections::BTreeSet<Family> {
        self.services.keys().map(|k| k.family).collect()
    }
}

/// The endpoints traffic may use, as kube-proxy's CategorizeEndpoints
/// picks them: ready ones, or, when none is ready, the serving and
/// terminating ones; the traffic policies choose between all of them and
/// this node's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selected {
    /// Usable endpoints anywhere.
    pub all: Vec<Endpoint>,
    /// Usable endpoints on this node.
    pub local: Vec<Endpoint>,
    /// For traffic to the cluster IP (internalTrafficPolicy).
    pub cluster: Vec<Endpoint>,
    /// For NodePort / external / load-balancer traffic (externalTrafficPolicy).
    pub external: Vec<Endpoint>,
    /// Ready endpoints on this node, by address (the health-check count).
    pub local_count: usize,
    /// Whether any endpoint is usable at all (else traffic is rejected).
    pub any: bool,
}

fn usable(eps: &[Endpoint], local_only: bool) -> Vec<Endpoint> {
    let pool: Vec<&Endpoint> = eps.iter().filter(|e| if local_only { e.local } else { !e.elsewhere }).collect();
    let ready: Vec<Endpoint> = pool.iter().filter(|e| e.ready).map(|e| (*e).clone()).collect();
    if !ready.is_empty() {
        return ready;
    }
    pool.iter().filter(|e| e.serving && e.terminating).map(|e| (*e).clone()).collect()
}

pub fn select(svc: &ServicePort, eps: &[Endpoint]) -> Selected {
    let all = usable(eps, false);
    let local = usable(eps, true);
    let ready_local: std::collections::BTreeSet<IpAddr> = eps.iter().filter(|e| e.local && e.ready).map(|e| e.ip).collect();
    Selected {
        cluster: if svc.internal_local { local.clone() } else { all.clone() },
        external: if svc.external_local { local.clone() } else { all.clone() },
        local_count: ready_local.len(),
        any: !all.is_empty(),
        all,
        local,
    }
}

/// A Service that cannot be programmed, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {field}: {message}")]
pub struct Invalid {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

fn invalid(kind: &'static str, ns: &str, name: &str, field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { kind, namespace: ns.into(), name: name.into(), field: field.into(), message: message.into() }
}

/// The ports of one Service, for each family it has a cluster IP of
/// (`spec.clusterIPs`); `Ok(empty)` for Services kube-proxy ignores
/// (headless, ExternalName, no cluster IP).
pub fn service_ports(svc: &Service) -> Result<Vec<ServicePort>, Invalid> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let bad = |field: &str, message: String| invalid("Service", ns, name, field, message);
    let Some(spec) = &svc.spec else { return Ok(Vec::new()) };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        return Err(bad("spec.type", format!("Unsupported value: {kind:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"")));
    }
    if kind == "ExternalName" {
        return Ok(Vec::new());
    }
    let ip_text = spec.cluster_ip.as_deref().unwrap_or("");
    if ip_text.is_empty() || ip_text == "None" {
        return Ok(Vec::new());
    }
    let Ok(primary) = ip_text.parse::<IpAddr>() else {
        return Err(bad("spec.clusterIP", format!("Invalid value: {ip_text:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")));
    };
    // clusterIPs: the primary (= clusterIP) and, dual-stack, one of the
    // other family; an older object may have clusterIP alone.
    let mut cluster_ips = vec![primary];
    for (i, text) in spec.cluster_ips.iter().flatten().enumerate().skip(1) {
        let Ok(ip) = text.parse::<IpAddr>() else {
            return Err(bad(&format!("spec.clusterIPs[{i}]"), format!("Invalid value: {text:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")));
        };
        if i > 1 || Family::of(&ip) == Family::of(&primary) {
            return Err(bad(&format!("spec.clusterIPs[{i}]"), format!("Invalid value: {text:?}: may specify no more than one IP for each IP family")));
        }
        cluster_ips.push(ip);
    }
    let affinity = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let t = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            let t = t.unwrap_or(DEFAULT_AFFINITY_SECONDS as i32);
            if !(1..=86400).contains(&t) {
                return Err(bad("spec.sessionAffinityConfig.clientIP.timeoutSeconds", format!("Invalid value: {t}: must be greater than 0 and less than 86400")));
            }
            Some(t as u32)
        }
        other => return Err(bad("spec.sessionAffinity", format!("Unsupported value: {other:?}: supported values: \"ClientIP\", \"None\""))),
    };
    let policy = |field: &str, v: Option<&str>| -> Result<bool, Invalid> {
        match v.unwrap_or("Cluster") {
            "Cluster" => Ok(false),
            "Local" => Ok(true),
            other => Err(bad(field, format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Local\""))),
        }
    };
    let has_external_kind = kind == "NodePort" || kind == "LoadBalancer";
    let mut external_ips = Vec::new();
    for (i, e) in spec.external_ips.iter().flatten().enumerate() {
        match e.parse::<IpAddr>() {
            Ok(a) => external_ips.push(a),
            Err(_) => return Err(bad(&format!("spec.externalIPs[{i}]"), format!("Invalid value: {e:?}: must be a valid IP address"))),
        }
    }
    let external_local = policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?
        && (has_external_kind || !external_ips.is_empty());
    let internal_local = policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?;
    let load_balancer_ips: Vec<IpAddr> = if kind == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            // ipMode Proxy: the load balancer proxies to the node, and its
            // address is not the node's to capture (kube-proxy skips it).
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    // The field, else kube-proxy's annotation (a comma-separated list).
    let annotated: Vec<String> = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("service.beta.kubernetes.io/load-balancer-source-ranges"))
        .map(|v| v.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect())
        .unwrap_or_default();
    let (ranges_text, ranges_field) = match spec.load_balancer_source_ranges.as_deref() {
        Some(r) if !r.is_empty() => (r.to_vec(), "spec.loadBalancerSourceRanges"),
        _ => (annotated, "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]"),
    };
    let mut ranges = Vec::new();
    for (i, r) in ranges_text.iter().enumerate() {
        // The apiserver keeps surrounding spaces; kube-proxy trims them.
        match r.trim().parse::<ipnetwork::IpNetwork>() {
            Ok(n) => ranges.push(ipnetwork::IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)),
            Err(_) => return Err(bad(&format!("{ranges_field}[{i}]"), format!("Invalid value: {r:?}: must be a valid CIDR (e.g. 10.0.0.0/8)"))),
        }
    }
    // Per family, as kube-proxy filters them; one that holds every address
    // of a family opens that family.
    let source_ranges = |family: Family| -> Option<Vec<ipnetwork::IpNetwork>> {
        let mine: Vec<ipnetwork::IpNetwork> = ranges.iter().filter(|n| Family::of_net(n) == family).copied().collect();
        (kind == "LoadBalancer" && !ranges_text.is_empty() && !mine.iter().any(|n| n.prefix() == 0)).then_some(mine)
    };
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let proto_text = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(proto_text) else {
            return Err(bad(&format!("{f}.protocol"), format!("Unsupported value: {proto_text:?}: supported values: \"SCTP\", \"TCP\", \"UDP\"")));
        };
        if !(1..=65535).contains(&p.port) {
            return Err(bad(&format!("{f}.port"), format!("Invalid value: {}: must be between 1 and 65535, inclusive", p.port)));
        }
        if ports.len() > 1 && p.name.as_deref().unwrap_or("").is_empty() {
            return Err(bad(&format!("{f}.name"), "Required value".into()));
        }
        // The apiserver enforces its --service-node-port-range (30000-32767
        // by default, possibly another); here any valid port is taken.
        let node_port = match p.node_port {
            Some(n) if has_external_kind && n != 0 => match u16::try_from(n).ok().filter(|n| *n != 0) {
                Some(n) => Some(n),
                None => return Err(bad(&format!("{f}.nodePort"), format!("Invalid value: {n}: must be between 1 and 65535, inclusive"))),
            },
            _ => None,
        };
        if !seen.insert((p.port, protocol)) {
            return Err(bad(&f, format!("Duplicate value: {{\"port\": {}, \"protocol\": {proto_text:?}}}", p.port)));
        }
        let hc = spec.health_check_node_port.filter(|_| external_local).and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0);
        for cluster_ip in &cluster_ips {
            let family = Family::of(cluster_ip);
            let of_family = |ips: &[IpAddr]| ips.iter().filter(|ip| Family::of(ip) == family).copied().collect::<Vec<_>>();
            out.push(ServicePort {
                key: PortKey { namespace: ns.into(), name: name.into(), port: p.name.clone().unwrap_or_default(), protocol, family },
                cluster_ip: *cluster_ip,
                port: p.port as u16,
                node_port,
                external_ips: of_family(&external_ips),
                load_balancer_ips: of_family(&load_balancer_ips),
                source_ranges: source_ranges(family),
                affinity,
                external_local,
                internal_local,
                health_check_node_port: hc,
            });
        }
    }
    Ok(out)
}

/// The Service an EndpointSlice belongs to (`kubernetes.io/service-name`).
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let name = slice.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
    Some((slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone()))
}

/// The family of a slice's addresses; None for FQDN (and unknown) slices.
pub fn slice_family(slice: &EndpointSlice) -> Option<Family> {
    Family::parse(&slice.address_type)
}

/// The endpoints one slice gives, by (port name, protocol); all of the
/// slice's family (`addressType`, see [`slice_family`]).
pub fn slice_endpoints(slice: &EndpointSlice, node_name: &str) -> Result<BTreeMap<(String, Protocol), Vec<Endpoint>>, Invalid> {
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    let name = slice.metadata.name.as_deref().unwrap_or("");
    let bad = |field: String, message: String| invalid("EndpointSlice", ns, name, field, message);
    let mut out: BTreeMap<(String, Protocol), Vec<Endpoint>> = BTreeMap::new();
    let family = match Family::parse(&slice.address_type) {
        Some(f) => f,
        None if slice.address_type == "FQDN" => return Ok(out),
        None => {
            return Err(bad("addressType".into(), format!("Unsupported value: {:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"", slice.address_type)));
        }
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let proto_text = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(proto_text) else {
            return Err(bad(format!("ports[{i}].protocol"), format!("Unsupported value: {proto_text:?}")));
        };
        let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0) else {
            return Err(bad(format!("ports[{i}].port"), format!("Invalid value: {:?}: must be between 1 and 65535, inclusive", p.port)));
        };
        ports.push((p.name.clone().unwrap_or_default(), protocol, port));
    }
    for (j, e) in slice.endpoints.iter().enumerate() {
        let Some(addr) = e.addresses.first() else {
            return Err(bad(format!("endpoints[{j}].addresses"), "Required value".into()));
        };
        let Some(ip) = addr.parse::<IpAddr>().ok().filter(|ip| Family::of(ip) == family) else {
            return Err(bad(format!("endpoints[{j}].addresses[0]"), format!("Invalid value: {addr:?}: must be a valid {family} address")));
        };
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let local = e.node_name.as_deref() == Some(node_name);
        for (pname, proto, port) in &ports {
            out.entry((pname.clone(), *proto)).or_default().push(Endpoint {
                elsewhere: false,
                ip,
                port: *port,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                local,
            });
        }
    }
    Ok(out)
}

/// Builds the model from valid Services and slices. `errors` gets one line
/// per object skipped; address conflicts are settled (see [`arbitrate`]).
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
    errors: &mut Vec<Invalid>,
) -> ProxyState {
    build_reporting(services, slices, &Topology { node: node_name, zone: None }, errors, &mut Vec::new())
}

/// Where the proxy's node is, for topology-aware routing: its name and its
/// `topology.kubernetes.io/zone` label.
#[derive(Debug, Clone, Copy)]
pub struct Topology<'a> {
    pub node: &'a str,
    pub zone: Option<&'a str>,
}

/// The hints of one endpoint address: (zones, nodes) it is for.
type Hints = (Vec<String>, Vec<String>);

fn slice_hints(slice: &EndpointSlice) -> Vec<(IpAddr, Hints)> {
    slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip = e.addresses.first()?.parse().ok()?;
            let h = e.hints.as_ref();
            let zones = h.and_then(|h| h.for_zones.as_ref()).map(|z| z.iter().map(|z| z.name.clone()).collect()).unwrap_or_default();
            let nodes = h.and_then(|h| h.for_nodes.as_ref()).map(|n| n.iter().map(|n| n.name.clone()).collect()).unwrap_or_default();
            Some((ip, (zones, nodes)))
        })
        .collect()
}

/// kube-proxy's topology mode for one Service port: same node when every
/// ready endpoint has node hints and one is for this node; else same zone
/// when every ready endpoint has zone hints and one is for this node's
/// zone; else none. Marks the endpoints the mode leaves out.
fn apply_topology(eps: &mut [Endpoint], hints: &BTreeMap<(IpAddr, u16), Hints>, at: &Topology) {
    let ready: Vec<&Hints> = eps.iter().filter(|e| e.ready).filter_map(|e| hints.get(&(e.ip, e.port))).collect();
    let ready_count = eps.iter().filter(|e| e.ready).count();
    if ready.is_empty() || ready.len() < ready_count {
        return;
    }
    let for_node = |h: &Hints| h.1.iter().any(|n| n == at.node);
    let for_zone = |h: &Hints| at.zone.is_some_and(|z| h.0.iter().any(|x| x == z));
    let keep: &dyn Fn(&Hints) -> bool = if ready.iter().all(|h| !h.1.is_empty()) && ready.iter().any(|h| for_node(h)) {
        &for_node
    } else if ready.iter().all(|h| !h.0.is_empty()) && ready.iter().any(|h| for_zone(h)) {
        &for_zone
    } else {
        return;
    };
    for e in eps.iter_mut() {
        e.elsewhere = !hints.get(&(e.ip, e.port)).is_some_and(keep);
    }
}

/// [`build`] for the proxy's node and zone (topology-aware routing), with
/// the address claims that lost their conflict in `conflicts`.
pub fn build_reporting<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    at: &Topology,
    errors: &mut Vec<Invalid>,
    conflicts: &mut Vec<Conflict>,
) -> ProxyState {
    let node_name = at.node;
    let mut hints: BTreeMap<PortKey, BTreeMap<(IpAddr, u16), Hints>> = BTreeMap::new();
    let mut state = ProxyState::default();
    let mut created: BTreeMap<(String, String), Time> = BTreeMap::new();
    for svc in services {
        if let Some(t) = &svc.metadata.creation_timestamp {
            let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            created.insert((ns, svc.metadata.name.clone().unwrap_or_default()), t.clone());
        }
        match service_ports(svc) {
            Ok(ports) => {
                for p in ports {
                    state.services.insert(p.key.clone(), p);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for slice in slices {
        let Some((ns, svc)) = slice_service(slice) else { continue };
        match slice_endpoints(slice, node_name) {
            Ok(by_port) => {
                let family = slice_family(slice).unwrap_or_default();
                let hinted: Vec<(IpAddr, Hints)> = slice_hints(slice).into_iter().filter(|(_, h)| !h.0.is_empty() || !h.1.is_empty()).collect();
                for ((port, protocol), eps) in by_port {
                    let key = PortKey { namespace: ns.clone(), name: svc.clone(), port, protocol, family };
                    if state.services.contains_key(&key) {
                        if !hinted.is_empty() {
                            let h = hints.entry(key.clone()).or_default();
                            for e in &eps {
                                if let Some((_, hint)) = hinted.iter().find(|(ip, _)| *ip == e.ip) {
                                    h.insert((e.ip, e.port), hint.clone());
                                }
                            }
                        }
                        state.endpoints.entry(key).or_default().extend(eps);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for eps in state.endpoints.values_mut() {
        // One entry per address and port; where slices disagree (a new pod
        // reusing a terminating one's IP), the ready, non-terminating one wins.
        eps.sort_by_key(|e| (e.ip, e.port, !e.ready, e.terminating));
        eps.dedup_by(|later, first| later.ip == first.ip && later.port == first.port);
    }
    for (key, h) in &hints {
        if let Some(eps) = state.endpoints.get_mut(key) {
            apply_topology(eps, h, at);
        }
    }
    conflicts.extend(arbitrate(&mut state, &created));
    conflicts.sort();
    state
}

/// What a Service port claims an address as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Claim {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
}

impl Claim {
    fn as_str(self) -> &'static str {
        match self {
            Claim::ClusterIp => "clusterIP",
            Claim::ExternalIp => "externalIP",
            Claim::LoadBalancerIp => "load-balancer IP",
        }
    }
}

/// An external or load-balancer address that two Service ports claim with
/// the same port and protocol: only one can be programmed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The Service port whose claim is not programmed.
    pub loser: PortKey,
    pub ip: IpAddr,
    pub port: u16,
    pub claim: Claim,
    /// The Service port that keeps the address, and how it holds it.
    pub holder: PortKey,
    pub held_as: Claim,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = if self.held_as == Claim::ClusterIp { "its clusterIP" } else { "an older claim" };
        write!(
            f,
            "Service {}/{}: {} {} port {}/{} is already served by Service {}/{} ({why}); this Service is not programmed on that address while the other holds it",
            self.loser.namespace,
            self.loser.name,
            self.claim.as_str(),
            self.ip,
            self.port,
            self.loser.protocol.api_name(),
            self.holder.namespace,
            self.holder.name,
        )
    }
}

/// Settles address claims: an address, port and protocol can lead to one
/// Service port only (nftables refuses a second map element for it, IPVS
/// has one virtual service for it, and in iptables the first rule would
/// silently win). A clusterIP always keeps its address (the apiserver
/// allocated it); among external and load-balancer claims the oldest
/// Service keeps it (then the first by name), so a new Service can never
/// take over an address that another one serves. The losing claims are
/// taken out of the model and returned; when the holder goes, the next
/// claimant gets the address at the next sync.
pub fn arbitrate(state: &mut ProxyState, created: &BTreeMap<(String, String), Time>) -> Vec<Conflict> {
    let mut holders: std::collections::HashMap<(IpAddr, Protocol, u16), (PortKey, Claim)> = std::collections::HashMap::new();
    for svc in state.services.values() {
        holders.entry((svc.cluster_ip, svc.key.protocol, svc.port)).or_insert_with(|| (svc.key.clone(), Claim::ClusterIp));
    }
    let mut order: Vec<&ServicePort> = state.services.values().filter(|s| !s.external_ips.is_empty() || !s.load_balancer_ips.is_empty()).collect();
    order.sort_by_cached_key(|s| {
        let t = created.get(&(s.key.namespace.clone(), s.key.name.clone()));
        (t.is_none(), t.cloned(), s.key.clone())
    });
    let mut conflicts = Vec::new();
    for svc in order {
        let claims = svc.external_ips.iter().map(|ip| (*ip, Claim::ExternalIp)).chain(svc.load_balancer_ips.iter().map(|ip| (*ip, Claim::LoadBalancerIp)));
        for (ip, claim) in claims {
            let (holder, held_as) = holders.entry((ip, svc.key.protocol, svc.port)).or_insert_with(|| (svc.key.clone(), claim));
            if *holder != svc.key {
                conflicts.push(Conflict { loser: svc.key.clone(), ip, port: svc.port, claim, holder: holder.clone(), held_as: *held_as });
            }
        }
    }
    for c in &conflicts {
        if let Some(svc) = state.services.get_mut(&c.loser) {
            svc.external_ips.retain(|ip| *ip != c.ip);
            svc.load_balancer_ips.retain(|ip| *ip != c.ip);
        }
    }
    conflicts.dedup();
    conflicts
}

#[cfg(test)]
mod tests;
