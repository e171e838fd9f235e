//! Set element changes for the IPVS mode's nftables table, sent as one
//! nf_tables netlink transaction (batch begin, NEWSETELEM / DELSETELEM,
//! batch end): all of them take effect or none does. Going to the kernel
//! directly spares the `nft` process, which loads every set of the table
//! (tens of thousands of elements with ten thousand Services) before each
//! change; the whole table is still written with `nft -f` at a full sync.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::proxy::model::Family;
use crate::proxy::nfnl::{self, Batch};

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

/// The transaction for `family`'s table named `table`: one message per set
/// and verb with up to `PER_MESSAGE` elements. Each message's tag is the
/// index of its first change.
pub fn batch(family: Family, table: &str, changes: &[Change]) -> Result<Batch, String> {
    let mut b = Batch::new(family.nfproto());
    let mut groups: Vec<(usize, &str, bool, Vec<&str>)> = Vec::new();
    for (i, (set, add, e)) in changes.iter().enumerate() {
        match groups.last_mut() {
            Some((_, s, a, es)) if s == set && a == add && es.len() < PER_MESSAGE => es.push(e),
            _ => groups.push((i, set, *add, vec![e])),
        }
    }
    for (first, set, add, elements) in groups {
        let mut keys = Vec::with_capacity(elements.len());
        for e in elements {
            keys.push(key(e).ok_or_else(|| format!("set {set}: element {e:?} has no key"))?);
        }
        let (kind, flags) = if add { (nfnl::NFT_MSG_NEWSETELEM, nfnl::NLM_F_CREATE) } else { (nfnl::NFT_MSG_DELSETELEM, 0) };
        b.message(kind, flags, first, |w| {
            w.str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.str(NFTA_SET_ELEM_LIST_SET, set);
            w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                for k in &keys {
                    w.nest(NFTA_LIST_ELEM, |w| w.nest(NFTA_SET_ELEM_KEY, |w| w.bytes(NFTA_DATA_VALUE, k)));
                }
            });
        });
    }
    Ok(b)
}

/// Sends the changes to `family`'s table `table` as one transaction; an
/// error names the set and element of the first message the kernel refused
/// (and nothing took effect).
pub fn apply(family: Family, table: &str, changes: &[Change]) -> Result<(), nfnl::NfError> {
    if changes.is_empty() {
        return Ok(());
    }
    let b = batch(family, table, changes).map_err(nfnl::NfError::Protocol)?;
    let mut sock = nfnl::Socket::open()?;
    sock.commit(b, |i| changes.get(i).map(|(set, add, e)| format!("{} {e} in set {set}", if *add { "adding" } else { "deleting" })).unwrap_or_default())
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
    /// per set and verb, NLM_F_CREATE on additions, batch end), with an
    /// acknowledgement asked of the last message only.
    #[test]
    fn golden_batch() {
        let changes = [("hairpin", true, "10.244.0.7 . 10.244.0.7 . tcp . 8080"), ("vips", false, "10.96.0.9")];
        let bytes = batch(Family::V4, "nodelet-ipvs", &changes).unwrap().bytes();
        let mut text = String::new();
        for chunk in bytes.chunks(16) {
            text.push_str(&hex::encode(chunk));
            text.push('\n');
        }
        crate::proxy::golden::check("tests/golden/ipvs/setelem.hex", &text);
    }
}
