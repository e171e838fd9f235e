//! The rules of nftables mode as data. One rule is a list of statements;
//! `Display` writes it in nft syntax (the dry run, the golden files,
//! `nft -f` for the kernel's check) and [`Rule::encode`] writes the same
//! rule as nf_tables expressions for the netlink batch. The expressions are
//! the ones `nft` 1.0 generates for the text (its `--debug=netlink`), so
//! that `nft list` prints the same table whichever way it was written; a
//! test proves that with the kernel.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::proxy::model::{Family, Protocol};
use crate::proxy::nfnl::Writer;

/// Which address of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
}

impl Dir {
    fn nft(self) -> &'static str {
        match self {
            Dir::Src => "saddr",
            Dir::Dst => "daddr",
        }
    }

    /// Offset of the address in the network header.
    fn offset(self, family: Family) -> u32 {
        match (family, self) {
            (Family::V4, Dir::Src) => 12,
            (Family::V4, Dir::Dst) => 16,
            (Family::V6, Dir::Src) => 8,
            (Family::V6, Dir::Dst) => 24,
        }
    }
}

/// One statement of a rule: a match, a set update or the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `ct state new`
    CtStateNew,
    /// `ct status dnat`
    CtStatusDnat,
    /// `ip saddr 10.0.0.0/8`, `ip daddr != 127.0.0.0/8`; a host address is
    /// written without its length.
    Addr { dir: Dir, neg: bool, net: IpNetwork },
    /// `ip saddr { 10.0.0.0/8, 192.0.2.1 }` (an anonymous set).
    AddrIn { dir: Dir, nets: Vec<IpNetwork> },
    /// `tcp dport 80`
    Dport(Protocol, u16),
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `fib saddr type local`
    FibLocal(Dir),
    /// `numgen random mod N == 0`
    Numgen(u32),
    /// `ip saddr @set`
    SaddrIn(String),
    /// `ip saddr . ip daddr @set`
    PairIn(String),
    /// `update @set { ip saddr }`
    UpdateSaddr(String),
    /// `meta mark & M == 0`
    MarkClear(u32),
    Jump(String),
    Goto(String),
    Drop,
    Return,
    Reject,
    /// `masquerade fully-random`
    Masquerade,
    /// `dnat to 10.244.0.5:8080`
    Dnat(SocketAddr),
    /// `meta mark set meta mark | M`
    MarkOr(u32),
    /// `meta mark set meta mark ^ M`
    MarkXor(u32),
    /// `ip daddr . meta l4proto . th dport vmap @map`, or without the
    /// address: `meta l4proto . th dport vmap @map`.
    Vmap { addr: bool, map: String },
}

/// A rule of one family's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub stmts: Vec<Stmt>,
}

impl Rule {
    pub fn new(family: Family, stmts: Vec<Stmt>) -> Rule {
        Rule { family, stmts }
    }

    /// The anonymous sets this rule needs (one per `AddrIn` of more than
    /// one address), in order.
    pub fn anonymous_sets(&self) -> impl Iterator<Item = &[IpNetwork]> {
        self.stmts.iter().filter_map(|s| match s {
            Stmt::AddrIn { nets, .. } if nets.len() > 1 => Some(nets.as_slice()),
            _ => None,
        })
    }
}

fn host_len(net: &IpNetwork) -> u8 {
    if net.is_ipv4() { 32 } else { 128 }
}

/// `10.0.0.0/8`, or `192.0.2.1` for a host.
struct Net<'a>(&'a IpNetwork);

impl fmt::Display for Net<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix() == host_len(self.0) { write!(f, "{}", self.0.ip()) } else { write!(f, "{}", self.0) }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nf = self.family.nft();
        for (i, s) in self.stmts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match s {
                Stmt::CtStateNew => f.write_str("ct state new")?,
                Stmt::CtStatusDnat => f.write_str("ct status dnat")?,
                Stmt::Addr { dir, neg, net } => write!(f, "{nf} {} {}{}", dir.nft(), if *neg { "!= " } else { "" }, Net(net))?,
                Stmt::AddrIn { dir, nets } => {
                    write!(f, "{nf} {} {{ ", dir.nft())?;
                    for (j, n) in nets.iter().enumerate() {
                        write!(f, "{}{}", if j > 0 { ", " } else { "" }, Net(n))?;
                    }
                    f.write_str(" }")?
                }
                Stmt::Dport(p, port) => write!(f, "{} dport {port}", p.as_str())?,
                Stmt::L4Proto(p) => write!(f, "meta l4proto {}", p.as_str())?,
                Stmt::FibLocal(dir) => write!(f, "fib {} type local", dir.nft())?,
                Stmt::Numgen(n) => write!(f, "numgen random mod {n} == 0")?,
                Stmt::SaddrIn(set) => write!(f, "{nf} saddr @{set}")?,
                Stmt::PairIn(set) => write!(f, "{nf} saddr . {nf} daddr @{set}")?,
                Stmt::UpdateSaddr(set) => write!(f, "update @{set} {{ {nf} saddr }}")?,
                Stmt::MarkClear(m) => write!(f, "meta mark & {m:#x} == 0")?,
                Stmt::Jump(c) => write!(f, "jump {c}")?,
                Stmt::Goto(c) => write!(f, "goto {c}")?,
                Stmt::Drop => f.write_str("drop")?,
                Stmt::Return => f.write_str("return")?,
                Stmt::Reject => f.write_str("reject")?,
                Stmt::Masquerade => f.write_str("masquerade fully-random")?,
                Stmt::Dnat(ep) => write!(f, "dnat to {ep}")?,
                Stmt::MarkOr(m) => write!(f, "meta mark set meta mark | {m:#x}")?,
                Stmt::MarkXor(m) => write!(f, "meta mark set meta mark ^ {m:#x}")?,
                Stmt::Vmap { addr: true, map } => write!(f, "{nf} daddr . meta l4proto . th dport vmap @{map}")?,
                Stmt::Vmap { addr: false, map } => write!(f, "meta l4proto . th dport vmap @{map}")?,
            }
        }
        Ok(())
    }
}

// nf_tables expression attributes (linux/netfilter/nf_tables.h).
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NF_CT_STATE_NEW: u32 = 1 << 3;
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// A verdict as nf_tables data (also the data of a verdict map's element).
pub fn verdict(w: &mut Writer, code: i32, chain: Option<&str>) {
    w.nest(NFTA_DATA_VERDICT, |w| {
        w.be32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            w.str(NFTA_VERDICT_CHAIN, c);
        }
    });
}

/// A map element's verdict text (`goto chain`, `jump chain`, `drop`) as
/// code and chain. None for anything else.
pub fn parse_verdict(text: &str) -> Option<(i32, Option<&str>)> {
    match text.split_once(' ') {
        Some(("goto", c)) => Some((NFT_GOTO, Some(c))),
        Some(("jump", c)) => Some((NFT_JUMP, Some(c))),
        None if text == "drop" => Some((NF_DROP, None)),
        None if text == "return" => Some((NFT_RETURN, None)),
        _ => None,
    }
}

/// nft numbers registers in 32-bit units and writes a four-aligned one
/// as the 128-bit register holding it (NFT_REG_1..4), the others as
/// NFT_REG32_00 + n; the kernel takes both.
fn reg32(index: u32) -> u32 {
    if index % 4 == 0 { NFT_REG_1 + index / 4 } else { 8 + index }
}

fn expr(w: &mut Writer, name: &str, data: impl FnOnce(&mut Writer)) {
    w.nest(NFTA_LIST_ELEM, |w| {
        w.str(NFTA_EXPR_NAME, name);
        w.nest(NFTA_EXPR_DATA, data);
    });
}

fn payload(w: &mut Writer, base: u32, offset: u32, len: u32, dreg: u32) {
    expr(w, "payload", |w| {
        w.be32(1, dreg);
        w.be32(2, base);
        w.be32(3, offset);
        w.be32(4, len);
    });
}

fn cmp(w: &mut Writer, op: u32, data: &[u8]) {
    expr(w, "cmp", |w| {
        w.be32(1, NFT_REG_1);
        w.be32(2, op);
        w.nest(3, |w| w.bytes(NFTA_DATA_VALUE, data));
    });
}

fn bitwise(w: &mut Writer, mask: &[u8], xor: &[u8]) {
    expr(w, "bitwise", |w| {
        w.be32(1, NFT_REG_1);
        w.be32(2, NFT_REG_1);
        w.be32(3, mask.len() as u32);
        w.nest(4, |w| w.bytes(NFTA_DATA_VALUE, mask));
        w.nest(5, |w| w.bytes(NFTA_DATA_VALUE, xor));
    });
}

fn meta_load(w: &mut Writer, key: u32, dreg: u32) {
    expr(w, "meta", |w| {
        w.be32(2, key);
        w.be32(1, dreg);
    });
}

fn ct_load(w: &mut Writer, key: u32) {
    expr(w, "ct", |w| {
        w.be32(2, key);
        w.be32(1, NFT_REG_1);
    });
}

fn immediate_data(w: &mut Writer, dreg: u32, data: &[u8]) {
    expr(w, "immediate", |w| {
        w.be32(1, dreg);
        w.nest(2, |w| w.bytes(NFTA_DATA_VALUE, data));
    });
}

fn immediate_verdict(w: &mut Writer, code: i32, chain: Option<&str>) {
    expr(w, "immediate", |w| {
        w.be32(1, NFT_REG_VERDICT);
        w.nest(2, |w| verdict(w, code, chain));
    });
}

fn lookup(w: &mut Writer, set: &str, set_id: Option<u32>, dreg: Option<u32>) {
    expr(w, "lookup", |w| {
        w.be32(2, NFT_REG_1);
        w.str(1, set);
        if let Some(id) = set_id {
            w.be32(4, id);
        }
        if let Some(d) = dreg {
            w.be32(3, d);
        }
    });
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `meta l4proto P`: the protocol number, one byte.
fn l4proto(w: &mut Writer, p: Protocol) {
    meta_load(w, NFT_META_L4PROTO, NFT_REG_1);
    cmp(w, NFT_CMP_EQ, &[p.number()]);
}

impl Rule {
    /// The rule's expressions (the NFTA_RULE_EXPRESSIONS list's content).
    /// `anonymous` gives the set id of each of [`Rule::anonymous_sets`],
    /// in order: those sets are made in the same batch.
    pub fn encode(&self, w: &mut Writer, anonymous: &[u32]) {
        let alen = match self.family {
            Family::V4 => 4,
            Family::V6 => 16,
        };
        let mut anonymous = anonymous.iter();
        for s in &self.stmts {
            match s {
                Stmt::CtStateNew | Stmt::CtStatusDnat => {
                    let (key, bit) = if *s == Stmt::CtStateNew { (NFT_CT_STATE, NF_CT_STATE_NEW) } else { (NFT_CT_STATUS, IPS_DST_NAT) };
                    ct_load(w, key);
                    bitwise(w, &bit.to_ne_bytes(), &[0; 4]);
                    cmp(w, NFT_CMP_NEQ, &[0; 4]);
                }
                Stmt::Addr { dir, neg, net } => addr_match(w, self.family, *dir, *neg, net),
                Stmt::AddrIn { dir, nets } if nets.len() == 1 => addr_match(w, self.family, *dir, false, &nets[0]),
                Stmt::AddrIn { dir, .. } => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, dir.offset(self.family), alen, NFT_REG_1);
                    lookup(w, "__set%d", anonymous.next().copied(), None);
                }
                Stmt::Dport(p, port) => {
                    l4proto(w, *p);
                    payload(w, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, NFT_REG_1);
                    cmp(w, NFT_CMP_EQ, &port.to_be_bytes());
                }
                Stmt::L4Proto(p) => l4proto(w, *p),
                Stmt::FibLocal(dir) => {
                    expr(w, "fib", |w| {
                        w.be32(1, NFT_REG_1);
                        w.be32(2, NFT_FIB_RESULT_ADDRTYPE);
                        w.be32(3, if *dir == Dir::Src { NFTA_FIB_F_SADDR } else { NFTA_FIB_F_DADDR });
                    });
                    cmp(w, NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                }
                Stmt::Numgen(n) => {
                    expr(w, "numgen", |w| {
                        w.be32(1, NFT_REG_1);
                        w.be32(2, *n);
                        w.be32(3, NFT_NG_RANDOM);
                        w.be32(4, 0);
                    });
                    cmp(w, NFT_CMP_EQ, &0u32.to_ne_bytes());
                }
                Stmt::SaddrIn(set) => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, Dir::Src.offset(self.family), alen, NFT_REG_1);
                    lookup(w, set, None, None);
                }
                Stmt::PairIn(set) => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, Dir::Src.offset(self.family), alen, NFT_REG_1);
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, Dir::Dst.offset(self.family), alen, reg32(alen / 4));
                    lookup(w, set, None, None);
                }
                Stmt::UpdateSaddr(set) => {
                    payload(w, NFT_PAYLOAD_NETWORK_HEADER, Dir::Src.offset(self.family), alen, NFT_REG_1);
                    expr(w, "dynset", |w| {
                        w.be32(4, NFT_REG_1);
                        w.be32(3, NFT_DYNSET_OP_UPDATE);
                        w.str(1, set);
                    });
                }
                Stmt::MarkClear(m) => {
                    meta_load(w, NFT_META_MARK, NFT_REG_1);
                    bitwise(w, &m.to_ne_bytes(), &[0; 4]);
                    cmp(w, NFT_CMP_EQ, &[0; 4]);
                }
                Stmt::Jump(c) => immediate_verdict(w, NFT_JUMP, Some(c)),
                Stmt::Goto(c) => immediate_verdict(w, NFT_GOTO, Some(c)),
                Stmt::Drop => immediate_verdict(w, NF_DROP, None),
                Stmt::Return => immediate_verdict(w, NFT_RETURN, None),
                Stmt::Reject => expr(w, "reject", |w| {
                    w.be32(1, NFT_REJECT_ICMP_UNREACH);
                    // Port unreachable: ICMP code 3, ICMPv6 code 4.
                    w.bytes(2, &[if self.family == Family::V4 { 3 } else { 4 }]);
                }),
                Stmt::Masquerade => expr(w, "masq", |w| w.be32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY)),
                Stmt::Dnat(ep) => {
                    immediate_data(w, NFT_REG_1, &addr_bytes(ep.ip()));
                    immediate_data(w, NFT_REG_2, &ep.port().to_be_bytes());
                    expr(w, "nat", |w| {
                        w.be32(1, NFT_NAT_DNAT);
                        w.be32(2, u32::from(self.family.nfproto()));
                        w.be32(3, NFT_REG_1);
                        w.be32(5, NFT_REG_2);
                        w.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED);
                    });
                }
                Stmt::MarkOr(m) | Stmt::MarkXor(m) => {
                    meta_load(w, NFT_META_MARK, NFT_REG_1);
                    let mask = if matches!(s, Stmt::MarkOr(_)) { !m } else { u32::MAX };
                    bitwise(w, &mask.to_ne_bytes(), &m.to_ne_bytes());
                    expr(w, "meta", |w| {
                        w.be32(2, NFT_META_MARK);
                        w.be32(3, NFT_REG_1);
                    });
                }
                Stmt::Vmap { addr, map } => {
                    let mut at = 0;
                    if *addr {
                        payload(w, NFT_PAYLOAD_NETWORK_HEADER, Dir::Dst.offset(self.family), alen, NFT_REG_1);
                        at = alen / 4;
                    }
                    meta_load(w, NFT_META_L4PROTO, reg32(at));
                    payload(w, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, reg32(at + 1));
                    lookup(w, map, None, Some(NFT_REG_VERDICT));
                }
            }
        }
    }
}

/// An address match as nft writes it: a host compared whole, a prefix on
/// a byte boundary by loading only its bytes, any other prefix through a
/// mask.
fn addr_match(w: &mut Writer, family: Family, dir: Dir, neg: bool, net: &IpNetwork) {
    let full = host_len(net);
    let bytes = addr_bytes(net.network());
    let op = if neg { NFT_CMP_NEQ } else { NFT_CMP_EQ };
    let prefix = net.prefix();
    let offset = dir.offset(family);
    if prefix == full {
        payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len() as u32, NFT_REG_1);
        cmp(w, op, &bytes);
    } else if prefix % 8 == 0 && prefix > 0 {
        let n = usize::from(prefix / 8);
        payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, n as u32, NFT_REG_1);
        cmp(w, op, &bytes[..n]);
    } else {
        payload(w, NFT_PAYLOAD_NETWORK_HEADER, offset, bytes.len() as u32, NFT_REG_1);
        bitwise(w, &addr_bytes(net.mask()), &vec![0; bytes.len()]);
        cmp(w, op, &bytes);
    }
}

/// The elements of an anonymous set of `nets`, as nft writes them: hosts
/// as they are; with any prefix, an interval set whose ranges are merged
/// where they overlap or touch, each range a start element and an end
/// element (flag INTERVAL_END) after it, with an end element at zero when
/// the first range does not start there. Returns the keys with their
/// end flags and whether the set is an interval set.
pub fn anonymous_elements(nets: &[IpNetwork]) -> (Vec<(Vec<u8>, bool)>, bool) {
    let interval = nets.iter().any(|n| n.prefix() != host_len(n));
    if !interval {
        let mut keys: Vec<Vec<u8>> = nets.iter().map(|n| addr_bytes(n.ip())).collect();
        keys.sort();
        keys.dedup();
        return (keys.into_iter().map(|k| (k, false)).collect(), false);
    }
    // Ranges [start, end] as integers.
    let mut ranges: Vec<(u128, u128, usize)> = nets
        .iter()
        .map(|n| {
            let len = addr_bytes(n.ip()).len();
            let start = to_int(&addr_bytes(n.network()));
            let host_bits = u32::from(host_len(n) - n.prefix());
            let end = if host_bits >= 128 { u128::MAX } else { start | ((1u128 << host_bits) - 1) };
            (start, end, len)
        })
        .collect();
    ranges.sort();
    let mut merged: Vec<(u128, u128, usize)> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.0 <= last.1.saturating_add(1) => last.1 = last.1.max(r.1),
            _ => merged.push(r),
        }
    }
    let len = merged.first().map_or(4, |r| r.2);
    let max = if len == 4 { u128::from(u32::MAX) } else { u128::MAX };
    let mut out = Vec::new();
    if merged.first().is_some_and(|r| r.0 != 0) {
        out.push((from_int(0, len), true));
    }
    for (start, end, _) in merged {
        out.push((from_int(start, len), false));
        if end < max {
            out.push((from_int(end + 1, len), true));
        }
    }
    (out, true)
}

fn to_int(b: &[u8]) -> u128 {
    b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x))
}

fn from_int(v: u128, len: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - len..].to_vec()
}
