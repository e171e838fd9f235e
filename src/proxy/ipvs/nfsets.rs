//! Set element changes for the IPVS mode's nftables table, sent as one
//! nf_tables netlink transaction (batch begin, NEWSETELEM / DELSETELEM,
//! batch end): all of them take effect or none does. Going to the kernel
//! directly spares the `nft` process, which loads every set of the table
//! (tens of thousands of elements with ten thousand Services) before each
//! change; the whole table is still written with `nft -f` at a full sync.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{Emitable, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

use super::netlink::Attr;
use crate::proxy::model::Family;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// Elements per message.
const PER_MESSAGE: usize = 256;

/// An element's key as nf_tables stores it: each field of a concatenation
/// in network order, padded to four bytes. None for text that is not an
/// element of the IPVS table's sets.
pub fn key(element: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for field in element.split(" . ") {
        let field = field.trim();
        if let Ok(ip) = field.parse::<Ipv4Addr>() {
            out.extend(ip.octets());
        } else if let Ok(ip) = field.parse::<Ipv6Addr>() {
            out.extend(ip.octets());
        } else if let Some(p) = match field {
            "tcp" => Some(6u8),
            "udp" => Some(17),
            "sctp" => Some(132),
            _ => None,
        } {
            out.extend([p, 0, 0, 0]);
        } else {
            let port: u16 = field.parse().ok()?;
            out.extend(port.to_be_bytes());
            out.extend([0, 0]);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// One element to add (true) or delete (false) in a set.
pub type Change<'a> = (&'a str, bool, &'a str);

fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[Attr]) {
    let payload = attrs.buffer_len();
    let len = 16 + 4 + payload;
    out.extend((len as u32).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([family, 0]);
    out.extend(res_id.to_be_bytes());
    let at = out.len();
    out.resize(at + payload, 0);
    attrs.emit(&mut out[at..]);
}

/// The transaction's bytes: batch begin, one message per set, verb and
/// up to `PER_MESSAGE` elements, batch end, for `family`'s table named
/// `table`. Returns the bytes and the sequence number of the last message
/// that asks for an acknowledgement.
pub fn batch(family: Family, table: &str, changes: &[Change], first_seq: u32) -> Result<(Vec<u8>, u32), String> {
    let nfproto = match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    };
    let mut out = Vec::new();
    let mut seq = first_seq;
    message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let mut groups: Vec<(&str, bool, Vec<&str>)> = Vec::new();
    for (set, add, e) in changes {
        match groups.last_mut() {
            Some((s, a, es)) if s == set && a == add && es.len() < PER_MESSAGE => es.push(e),
            _ => groups.push((set, *add, vec![e])),
        }
    }
    let mut last = seq;
    for (set, add, elements) in groups {
        let mut list = Vec::new();
        for e in elements {
            let k = key(e).ok_or_else(|| format!("set {set}: element {e:?} has no key"))?;
            list.push(Attr::nested(NFTA_LIST_ELEM, vec![Attr::nested(NFTA_SET_ELEM_KEY, vec![Attr::bytes(NFTA_DATA_VALUE, k)])]));
        }
        let name = |s: &str| {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            b
        };
        let attrs = [
            Attr::bytes(NFTA_SET_ELEM_LIST_TABLE, name(table)),
            Attr::bytes(NFTA_SET_ELEM_LIST_SET, name(set)),
            Attr::nested(NFTA_SET_ELEM_LIST_ELEMENTS, list),
        ];
        let (kind, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        seq = seq.wrapping_add(1);
        last = seq;
        message(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, nfproto, 0, &attrs);
    }
    seq = seq.wrapping_add(1);
    message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    Ok((out, last))
}

/// Sends the changes to `family`'s table `table` as one transaction; an
/// error names the first message the kernel refused (and nothing took
/// effect).
pub fn apply(family: Family, table: &str, changes: &[Change]) -> std::io::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    {
        use std::os::fd::AsRawFd;
        let tv = libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: a valid socket and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let first = 1;
    let (bytes, last) = batch(family, table, changes, first).map_err(std::io::Error::other)?;
    // The whole transaction goes in one message buffer: make room for it, as
    // nft does (SO_SNDBUFFORCE, we are root).
    {
        use std::os::fd::AsRawFd;
        let size = libc::c_int::try_from(bytes.len().saturating_mul(2).max(1 << 20)).unwrap_or(libc::c_int::MAX);
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: a valid socket and an int of the size given.
            unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, (&size as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32) };
        }
    }
    sock.send(&bytes, 0)?;
    let mut buf = Vec::with_capacity(1 << 16);
    let mut failure: Option<std::io::Error> = None;
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)?;
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
            if len < 16 || off + len > buf.len() {
                return Err(std::io::Error::other("a short nf_tables netlink reply"));
            }
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
            if kind == netlink_packet_core::NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or([0; 4]));
                if code != 0 && failure.is_none() {
                    failure = Some(std::io::Error::from_raw_os_error(-code));
                }
                if seq == last || (code != 0 && seq == first) {
                    return match failure {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_concatenations() {
        assert_eq!(key("10.96.0.10 . tcp . 80").unwrap(), vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(key("udp . 30053").unwrap(), vec![17, 0, 0, 0, 0x75, 0x65, 0, 0]);
        assert_eq!(key("10.244.0.7 . 10.244.0.7").unwrap(), vec![10, 244, 0, 7, 10, 244, 0, 7]);
        assert_eq!(key("10.96.0.1").unwrap(), vec![10, 96, 0, 1]);
        assert_eq!(key("bogus . 1"), None);
        let mut v6 = vec![0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
        v6.extend([17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(key("fd00:10:96::a . udp . 53").unwrap(), v6);
    }

    /// The transaction's bytes, pinned: what `nft add element` sends for the
    /// same changes (batch begin with the nf_tables subsystem, one message
    /// per set and verb, NLM_F_CREATE on additions, batch end).
    #[test]
    fn golden_batch() {
        let changes = [("hairpin", true, "10.244.0.7 . 10.244.0.7 . tcp . 8080"), ("vips", false, "10.96.0.9")];
        let (bytes, last) = batch(Family::V4, "nodelet-ipvs", &changes, 1).unwrap();
        assert_eq!(last, 3);
        let mut text = String::new();
        for chunk in bytes.chunks(16) {
            text.push_str(&hex::encode(chunk));
            text.push('\n');
        }
        crate::proxy::golden::check("tests/golden/ipvs/setelem.hex", &text);
    }
}
