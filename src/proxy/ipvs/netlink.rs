//! IPVS over generic netlink (family `IPVS`, version 1), the protocol
//! `ipvsadm` speaks. The framing (netlink and generic netlink headers,
//! attribute layout, the controller that resolves the family id) comes from
//! the rust-netlink crates; this file holds only the IPVS commands and
//! attributes of `include/uapi/linux/ip_vs.h`.
//!
//! Changes go out in batches: many requests in one `sendmsg`, the kernel
//! handles them in order and answers failures (and the last request's
//! acknowledgement), so a sync of ten thousand Services costs a few hundred
//! system calls rather than one round trip per change.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Nla, NlaBuffer, NlasIterator, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, ParseableParametrized,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

mod socket;

pub use self::socket::*;

pub const FAMILY: &str = "IPVS";
const VERSION: u8 = 1;

/// `IPVS_CMD_*`.
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_INFO: u8 = 15;
}

/// `IPVS_CMD_ATTR_*`: a message's top-level attributes.
mod top {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
    pub const TIMEOUT_TCP: u16 = 4;
    pub const TIMEOUT_TCP_FIN: u16 = 5;
    pub const TIMEOUT_UDP: u16 = 6;
}

/// `IPVS_SVC_ATTR_*`.
mod svc {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
}

/// `IPVS_DEST_ATTR_*`.
mod dest {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const ADDR_FAMILY: u16 = 11;
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

fn af(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}
/// `IP_VS_SVC_F_PERSISTENT`.
const F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_SCHED2` (mh-port).
const F_SCHED2: u32 = 0x0010;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding, the only method kube-proxy uses.
const FWD_MASQ: u32 = 0;

/// One attribute: raw bytes or nested attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    kind: u16,
    value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

impl Attr {
    pub(crate) fn bytes(kind: u16, b: impl Into<Vec<u8>>) -> Attr {
        Attr { kind, value: Value::Bytes(b.into()) }
    }
    fn u16(kind: u16, v: u16) -> Attr {
        Attr::bytes(kind, v.to_ne_bytes())
    }
    fn u32(kind: u16, v: u32) -> Attr {
        Attr::bytes(kind, v.to_ne_bytes())
    }
    fn be16(kind: u16, v: u16) -> Attr {
        Attr::bytes(kind, v.to_be_bytes())
    }
    /// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
    fn addr(kind: u16, ip: IpAddr) -> Attr {
        let b = match ip {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                b
            }
            IpAddr::V6(a) => a.octets(),
        };
        Attr::bytes(kind, b.to_vec())
    }
    pub(crate) fn nested(kind: u16, attrs: Vec<Attr>) -> Attr {
        Attr { kind, value: Value::Nested(attrs) }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.value {
            Value::Bytes(b) => b.len(),
            Value::Nested(a) => a.as_slice().buffer_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self.value {
            Value::Bytes(_) => self.kind,
            Value::Nested(_) => self.kind | netlink_packet_core::NLA_F_NESTED,
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.value {
            Value::Bytes(b) => buffer[..b.len()].copy_from_slice(b),
            Value::Nested(a) => a.as_slice().emit(buffer),
        }
    }
}

/// A message of the IPVS family: a command and its attributes. Received
/// messages keep their top-level attributes as bytes; [`parse_service`] and
/// [`parse_dest`] read the nested ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage { cmd: header.cmd, attrs: raw_attrs(buf)? })
    }
}

fn raw_attrs(buf: &[u8]) -> Result<Vec<Attr>, DecodeError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla: NlaBuffer<&[u8]> = nla?;
        out.push(Attr::bytes(nla.kind() & netlink_packet_core::NLA_TYPE_MASK, nla.value().to_vec()));
    }
    Ok(out)
}

/// The transport protocol of a virtual service (`IPPROTO_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn number(self) -> u16 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    fn from_number(n: u16) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// What names a virtual service: protocol, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol.as_str(), SocketAddr::new(self.addr, self.port))
    }
}

/// A virtual service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub scheduler: String,
    /// ClientIP affinity: persistence with this timeout in seconds.
    pub persistence: Option<u32>,
    /// `IP_VS_SVC_F_SCHED2`: the mh scheduler hashes the source port too
    /// (kube-proxy sets it for mh, or every client sticks to one server).
    pub hash_port: bool,
}

impl ServiceSpec {
    pub fn new(scheduler: &str, persistence: Option<u32>) -> ServiceSpec {
        ServiceSpec { scheduler: scheduler.to_string(), persistence, hash_port: scheduler == "mh" }
    }
}

/// A real server: address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for DestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.addr, self.port))
    }
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub key: DestKey,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
}

/// One change to the IPVS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddService(ServiceKey, ServiceSpec),
    UpdateService(ServiceKey, ServiceSpec),
    DelService(ServiceKey),
    AddDest(ServiceKey, DestKey, u32),
    UpdateDest(ServiceKey, DestKey, u32),
    DelDest(ServiceKey, DestKey),
    /// `ipvs.tcpTimeout` / `tcpFinTimeout` / `udpTimeout` in seconds; 0
    /// leaves one as it is.
    SetTimeouts { tcp: u32, tcp_fin: u32, udp: u32 },
}

impl Op {
    /// The virtual service an operation is about (none for the timeouts).
    pub fn service(&self) -> Option<&ServiceKey> {
        match self {
            Op::AddService(k, _) | Op::UpdateService(k, _) | Op::DelService(k) | Op::AddDest(k, ..) | Op::UpdateDest(k, ..) | Op::DelDest(k, _) => Some(k),
            Op::SetTimeouts { .. } => None,
        }
    }
}

impl fmt::Display for Op {
    /// One line per operation, as `--dry-run` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = |s: &ServiceSpec| {
            let mut t = format!("scheduler {}", s.scheduler);
            if s.hash_port {
                t.push_str(" hash-port");
            }
            if let Some(p) = s.persistence {
                t.push_str(&format!(" persistent {p}"));
            }
            t
        };
        match self {
            Op::AddService(k, s) => write!(f, "ipvs add service {k} {}", spec(s)),
            Op::UpdateService(k, s) => write!(f, "ipvs update service {k} {}", spec(s)),
            Op::DelService(k) => write!(f, "ipvs delete service {k}"),
            Op::AddDest(k, d, w) => write!(f, "ipvs add server {k} -> {d} masq weight {w}"),
            Op::UpdateDest(k, d, w) => write!(f, "ipvs update server {k} -> {d} masq weight {w}"),
            Op::DelDest(k, d) => write!(f, "ipvs delete server {k} -> {d}"),
            Op::SetTimeouts { tcp, tcp_fin, udp } => write!(f, "ipvs set timeouts tcp {tcp} tcpfin {tcp_fin} udp {udp}"),
        }
    }
}

fn service_key_attrs(k: &ServiceKey) -> Vec<Attr> {
    vec![
        Attr::u16(svc::AF, af(&k.addr)),
        Attr::u16(svc::PROTOCOL, k.protocol.number()),
        Attr::addr(svc::ADDR, k.addr),
        Attr::be16(svc::PORT, k.port),
    ]
}

fn service_attrs(k: &ServiceKey, s: &ServiceSpec) -> Vec<Attr> {
    let mut a = service_key_attrs(k);
    let mut name = s.scheduler.as_bytes().to_vec();
    name.push(0);
    a.push(Attr::bytes(svc::SCHED_NAME, name));
    // struct ip_vs_flags { flags, mask }: every flag set as given.
    let flags = if s.persistence.is_some() { F_PERSISTENT } else { 0 } | if s.hash_port { F_SCHED2 } else { 0 };
    let mut fl = flags.to_ne_bytes().to_vec();
    fl.extend(u32::MAX.to_ne_bytes());
    a.push(Attr::bytes(svc::FLAGS, fl));
    a.push(Attr::u32(svc::TIMEOUT, s.persistence.unwrap_or(0)));
    // The persistence netmask: the whole address (kube-proxy: 0xffffffff
    // for IPv4, a prefix length of 128 for IPv6).
    let netmask = if k.addr.is_ipv4() { u32::MAX } else { 128 };
    a.push(Attr::u32(svc::NETMASK, netmask));
    a
}

fn dest_attrs(d: &DestKey, weight: Option<u32>) -> Vec<Attr> {
    let mut a = vec![Attr::addr(dest::ADDR, d.addr), Attr::be16(dest::PORT, d.port)];
    if let Some(w) = weight {
        a.push(Attr::u32(dest::FWD_METHOD, FWD_MASQ));
        a.push(Attr::u32(dest::WEIGHT, w));
        a.push(Attr::u32(dest::U_THRESH, 0));
        a.push(Attr::u32(dest::L_THRESH, 0));
        a.push(Attr::u16(dest::ADDR_FAMILY, af(&d.addr)));
    }
    a
}

/// The request for one operation.
pub fn message(op: &Op) -> IpvsMessage {
    let (cmd, attrs) = match op {
        Op::AddService(k, s) => (cmd::NEW_SERVICE, vec![Attr::nested(top::SERVICE, service_attrs(k, s))]),
        Op::UpdateService(k, s) => (cmd::SET_SERVICE, vec![Attr::nested(top::SERVICE, service_attrs(k, s))]),
        Op::DelService(k) => (cmd::DEL_SERVICE, vec![Attr::nested(top::SERVICE, service_key_attrs(k))]),
        Op::AddDest(k, d, w) => (
            cmd::NEW_DEST,
            vec![Attr::nested(top::SERVICE, service_key_attrs(k)), Attr::nested(top::DEST, dest_attrs(d, Some(*w)))],
        ),
        Op::UpdateDest(k, d, w) => (
            cmd::SET_DEST,
            vec![Attr::nested(top::SERVICE, service_key_attrs(k)), Attr::nested(top::DEST, dest_attrs(d, Some(*w)))],
        ),
        Op::DelDest(k, d) => (
            cmd::DEL_DEST,
            vec![Attr::nested(top::SERVICE, service_key_attrs(k)), Attr::nested(top::DEST, dest_attrs(d, None))],
        ),
        Op::SetTimeouts { tcp, tcp_fin, udp } => (
            cmd::SET_CONFIG,
            vec![Attr::u32(top::TIMEOUT_TCP, *tcp), Attr::u32(top::TIMEOUT_TCP_FIN, *tcp_fin), Attr::u32(top::TIMEOUT_UDP, *udp)],
        ),
    };
    IpvsMessage { cmd, attrs }
}

fn nested<'a>(m: &'a IpvsMessage, kind: u16) -> Option<&'a [u8]> {
    m.attrs.iter().find(|a| a.kind == kind).and_then(|a| match &a.value {
        Value::Bytes(b) => Some(b.as_slice()),
        Value::Nested(_) => None,
    })
}

fn field<const N: usize>(attrs: &[Attr], kind: u16) -> Option<[u8; N]> {
    attrs.iter().find(|a| a.kind == kind).and_then(|a| match &a.value {
        Value::Bytes(b) if b.len() >= N => b[..N].try_into().ok(),
        _ => None,
    })
}

/// An address of family `af` from its `union nf_inet_addr`.
fn inet_addr(attrs: &[Attr], kind: u16, af: u16) -> Option<IpAddr> {
    if af == AF_INET6 { field::<16>(attrs, kind).map(|b| IpAddr::V6(Ipv6Addr::from(b))) } else { field::<4>(attrs, kind).map(|b| IpAddr::V4(Ipv4Addr::from(b))) }
}

/// A dumped virtual service; None for one nodelet never makes (another
/// address family, firewall-mark or an unknown protocol), which it leaves
/// alone.
pub fn parse_service(m: &IpvsMessage) -> Result<Option<(ServiceKey, ServiceSpec)>, DecodeError> {
    let a = raw_attrs(nested(m, top::SERVICE).ok_or("IPVS service message without a service")?)?;
    let Some(af) = field::<2>(&a, svc::AF).map(u16::from_ne_bytes).filter(|af| *af == AF_INET || *af == AF_INET6) else {
        return Ok(None);
    };
    if a.iter().any(|x| x.kind == svc::FWMARK && x.value != Value::Bytes(vec![0; 4])) {
        return Ok(None);
    }
    let Some(protocol) = field::<2>(&a, svc::PROTOCOL).map(u16::from_ne_bytes).and_then(Protocol::from_number) else {
        return Ok(None);
    };
    let addr = inet_addr(&a, svc::ADDR, af).ok_or("IPVS service without an address")?;
    let port = field::<2>(&a, svc::PORT).map(u16::from_be_bytes).ok_or("IPVS service without a port")?;
    let scheduler = a
        .iter()
        .find(|x| x.kind == svc::SCHED_NAME)
        .and_then(|x| match &x.value {
            Value::Bytes(b) => Some(String::from_utf8_lossy(b).trim_end_matches('\0').to_string()),
            Value::Nested(_) => None,
        })
        .unwrap_or_default();
    let flags = field::<4>(&a, svc::FLAGS).map(u32::from_ne_bytes).unwrap_or(0);
    let timeout = field::<4>(&a, svc::TIMEOUT).map(u32::from_ne_bytes).unwrap_or(0);
    let persistence = (flags & F_PERSISTENT != 0).then_some(timeout);
    let hash_port = flags & F_SCHED2 != 0;
    Ok(Some((ServiceKey { protocol, addr, port }, ServiceSpec { scheduler, persistence, hash_port })))
}

/// A dumped real server; `service_af` is its virtual service's family (a
/// kernel that does not say the server's own is older than mixed families).
pub fn parse_dest(m: &IpvsMessage, service_af: u16) -> Result<Option<Dest>, DecodeError> {
    let a = raw_attrs(nested(m, top::DEST).ok_or("IPVS destination message without a destination")?)?;
    let af = field::<2>(&a, dest::ADDR_FAMILY).map(u16::from_ne_bytes).unwrap_or(service_af);
    if af != AF_INET && af != AF_INET6 {
        return Ok(None);
    }
    let addr = inet_addr(&a, dest::ADDR, af).ok_or("IPVS destination without an address")?;
    let port = field::<2>(&a, dest::PORT).map(u16::from_be_bytes).ok_or("IPVS destination without a port")?;
    let u = |k| field::<4>(&a, k).map(u32::from_ne_bytes).unwrap_or(0);
    Ok(Some(Dest { key: DestKey { addr, port }, weight: u(dest::WEIGHT), active: u(dest::ACTIVE_CONNS), inactive: u(dest::INACT_CONNS) }))
}

#[cfg(test)]
mod tests;
