//! The plan of a sync ([`super::Op`]) as one nf_tables netlink batch, and
//! the table read back over netlink. No `nft` process on the sync path:
//! the kernel gets the same objects `nft -f` of the plan's script would
//! give it (the expressions, set types and user data nft 1.0 writes), so
//! `nft list table` prints the same either way.

use std::collections::BTreeSet;

use super::rule::{self, Rule};
use super::{Op, COMMENT, TABLE};
use crate::proxy::ipvs::nfsets;
use crate::proxy::model::Family;
use crate::proxy::nfnl::{self, Batch, NLM_F_APPEND, NLM_F_CREATE, Writer};

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
// nft's data types (datatype.h) and how it writes a concatenation's type.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
fn concat(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}
// The user data nft 1.0 attaches to each kind of set (byte order, and for
// concatenations a marker), copied so that `nft list` reads them alike.
const UDATA_MAP: &[u8] = b"\x00\x04\x00\x00\x00\x00\x01\x04\x00\x00\x00\x00\x03\x08\x00\x04\x0d\x00\x00\x00\x01\x00\x06\x04\x00\x00\x00\x00";
const UDATA_PAIRS: &[u8] = b"\x00\x04\x00\x00\x00\x00\x03\x08\x00\x04\x0d\x00\x00\x00\x01\x00";
const UDATA_ADDRESSES: &[u8] = b"\x00\x04\x02\x00\x00\x00";
const UDATA_RANGES: &[u8] = b"\x00\x04\x02\x00\x00\x00\x02\x04\x01\x00\x00\x00";
/// Elements per message: a nested attribute's length is 16 bits.
const PER_MESSAGE: usize = 128;

/// What a message of the batch was about, for an error report.
pub enum About<'a> {
    Op(&'a Op<'a>),
    Elements(&'static str, &'a str),
}

fn addr_type(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    }
}

/// The batch of `ops` for `family`'s table, with what each message is
/// about (by index into the returned list).
pub fn batch<'a>(family: Family, ops: &'a [Op<'a>]) -> Result<(Batch, Vec<About<'a>>), String> {
    let mut b = Batch::new(family.nfproto());
    let mut about: Vec<About> = Vec::new();
    let (atype, alen) = addr_type(family);
    let mut set_id: u32 = 0;
    let mut next_id = || {
        set_id += 1;
        set_id
    };
    for op in ops {
        let tag = about.len();
        about.push(About::Op(op));
        match op {
            Op::Table => b.message(nfnl::NFT_MSG_NEWTABLE, NLM_F_CREATE, tag, |w| {
                w.str(NFTA_TABLE_NAME, TABLE);
                w.be32(NFTA_TABLE_FLAGS, 0);
                let mut udata = vec![0u8, (COMMENT.len() + 1) as u8];
                udata.extend(COMMENT.as_bytes());
                udata.push(0);
                w.bytes(NFTA_TABLE_USERDATA, &udata);
            }),
            Op::BaseChain(chain, kind, _, num, prio) => b.message(nfnl::NFT_MSG_NEWCHAIN, NLM_F_CREATE, tag, |w| {
                w.str(NFTA_CHAIN_TABLE, TABLE);
                w.str(NFTA_CHAIN_NAME, chain);
                w.str(NFTA_CHAIN_TYPE, kind);
                w.nest(NFTA_CHAIN_HOOK, |w| {
                    w.be32(NFTA_HOOK_HOOKNUM, *num);
                    w.be32(NFTA_HOOK_PRIORITY, *prio as u32);
                });
            }),
            Op::Chain(chain) => b.message(nfnl::NFT_MSG_NEWCHAIN, NLM_F_CREATE, tag, |w| {
                w.str(NFTA_CHAIN_TABLE, TABLE);
                w.str(NFTA_CHAIN_NAME, chain);
            }),
            Op::Map(map, addr) => {
                let id = next_id();
                let (ktype, klen) = if *addr { (concat(&[atype, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), alen + 8) } else { (concat(&[TYPE_INET_PROTOCOL, TYPE_INET_SERVICE]), 8) };
                b.message(nfnl::NFT_MSG_NEWSET, NLM_F_CREATE, tag, |w| {
                    w.str(NFTA_SET_TABLE, TABLE);
                    w.str(NFTA_SET_NAME, map);
                    w.be32(NFTA_SET_FLAGS, NFT_SET_MAP);
                    w.be32(NFTA_SET_KEY_TYPE, ktype);
                    w.be32(NFTA_SET_KEY_LEN, klen);
                    w.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                    w.be32(NFTA_SET_DATA_LEN, 0);
                    w.be32(NFTA_SET_ID, id);
                    w.bytes(NFTA_SET_USERDATA, UDATA_MAP);
                })
            }
            Op::Hairpin => {
                let id = next_id();
                b.message(nfnl::NFT_MSG_NEWSET, NLM_F_CREATE, tag, |w| {
                    w.str(NFTA_SET_TABLE, TABLE);
                    w.str(NFTA_SET_NAME, "hairpin");
                    w.be32(NFTA_SET_FLAGS, 0);
                    w.be32(NFTA_SET_KEY_TYPE, concat(&[atype, atype]));
                    w.be32(NFTA_SET_KEY_LEN, alen * 2);
                    w.be32(NFTA_SET_ID, id);
                    w.bytes(NFTA_SET_USERDATA, UDATA_PAIRS);
                })
            }
            Op::AffinitySet(set, timeout) => {
                let id = next_id();
                b.message(nfnl::NFT_MSG_NEWSET, NLM_F_CREATE, tag, |w| {
                    w.str(NFTA_SET_TABLE, TABLE);
                    w.str(NFTA_SET_NAME, set);
                    w.be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                    w.be32(NFTA_SET_KEY_TYPE, atype);
                    w.be32(NFTA_SET_KEY_LEN, alen);
                    w.be32(NFTA_SET_ID, id);
                    w.be64(NFTA_SET_TIMEOUT, u64::from(*timeout) * 1000);
                    w.bytes(NFTA_SET_USERDATA, UDATA_ADDRESSES);
                })
            }
            Op::FlushSet(set) => b.message(nfnl::NFT_MSG_DELSETELEM, 0, tag, |w| {
                w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                w.str(NFTA_SET_ELEM_LIST_SET, set);
            }),
            Op::Elements { set, add, items } => {
                let mut keyed = Vec::with_capacity(items.len());
                for (k, v) in items {
                    let key = nfsets::key(k).ok_or_else(|| format!("set {set}: element {k:?} has no key"))?;
                    let verdict = match v {
                        Some(v) => Some(rule::parse_verdict(v).ok_or_else(|| format!("map {set}: element {k:?} has no verdict {v:?}"))?),
                        None => None,
                    };
                    keyed.push((key, verdict));
                }
                about.pop();
                for (chunk, names) in keyed.chunks(PER_MESSAGE).zip(items.chunks(PER_MESSAGE)) {
                    let tag = about.len();
                    about.push(About::Elements(set, names[0].0));
                    let (kind, flags) = if *add { (nfnl::NFT_MSG_NEWSETELEM, NLM_F_CREATE) } else { (nfnl::NFT_MSG_DELSETELEM, 0) };
                    b.message(kind, flags, tag, |w| {
                        w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                        w.str(NFTA_SET_ELEM_LIST_SET, set);
                        w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                            for (key, verdict) in chunk {
                                w.nest(NFTA_LIST_ELEM, |w| {
                                    w.nest(NFTA_SET_ELEM_KEY, |w| w.bytes(NFTA_DATA_VALUE, key));
                                    if let Some((code, chain)) = verdict {
                                        w.nest(NFTA_SET_ELEM_DATA, |w| rule::verdict(w, *code, *chain));
                                    }
                                });
                            }
                        });
                    });
                }
            }
            Op::FlushChain(chain) => b.message(nfnl::NFT_MSG_DELRULE, 0, tag, |w| {
                w.str(NFTA_RULE_TABLE, TABLE);
                w.str(NFTA_RULE_CHAIN, chain);
            }),
            Op::AddRule(chain, r) => {
                let ids = anonymous_sets(&mut b, tag, r, atype, alen, &mut next_id);
                b.message(nfnl::NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, tag, |w| {
                    w.str(NFTA_RULE_TABLE, TABLE);
                    w.str(NFTA_RULE_CHAIN, chain);
                    w.nest(NFTA_RULE_EXPRESSIONS, |w| r.encode(w, &ids));
                });
            }
            Op::DeleteChain(chain) => b.message(nfnl::NFT_MSG_DELCHAIN, 0, tag, |w| {
                w.str(NFTA_CHAIN_TABLE, TABLE);
                w.str(NFTA_CHAIN_NAME, chain);
            }),
            Op::DeleteSet(set) => b.message(nfnl::NFT_MSG_DELSET, 0, tag, |w| {
                w.str(NFTA_SET_TABLE, TABLE);
                w.str(NFTA_SET_NAME, set);
            }),
        }
    }
    Ok((b, about))
}

/// The anonymous sets of `r`, made in the batch before it: returns their ids.
fn anonymous_sets(b: &mut Batch, tag: usize, r: &Rule, atype: u32, alen: u32, next_id: &mut impl FnMut() -> u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for nets in r.anonymous_sets() {
        let id = next_id();
        ids.push(id);
        let (elements, interval) = rule::anonymous_elements(nets);
        let flags = NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | if interval { NFT_SET_INTERVAL } else { 0 };
        b.message(nfnl::NFT_MSG_NEWSET, NLM_F_CREATE, tag, |w| {
            w.str(NFTA_SET_TABLE, TABLE);
            w.str(NFTA_SET_NAME, "__set%d");
            w.be32(NFTA_SET_FLAGS, flags);
            w.be32(NFTA_SET_KEY_TYPE, atype);
            w.be32(NFTA_SET_KEY_LEN, alen);
            w.be32(NFTA_SET_ID, id);
            w.nest(NFTA_SET_DESC, |w| w.be32(NFTA_SET_DESC_SIZE, elements.len() as u32));
            w.bytes(NFTA_SET_USERDATA, if interval { UDATA_RANGES } else { UDATA_ADDRESSES });
        });
        for chunk in elements.chunks(PER_MESSAGE) {
            b.message(nfnl::NFT_MSG_NEWSETELEM, NLM_F_CREATE, tag, |w| {
                w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
                w.str(NFTA_SET_ELEM_LIST_SET, "__set%d");
                w.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
                w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                    for (key, end) in chunk {
                        w.nest(NFTA_LIST_ELEM, |w| {
                            if *end {
                                w.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                            }
                            w.nest(NFTA_SET_ELEM_KEY, |w| w.bytes(NFTA_DATA_VALUE, key));
                        });
                    }
                });
            });
        }
    }
    ids
}

/// Describes a refused message for the error report, in nft syntax.
pub fn describe(family: Family, about: &About) -> String {
    match about {
        About::Op(op) => {
            let text = super::script(family, std::slice::from_ref(op));
            let text = text.lines().next().unwrap_or_default();
            match op {
                Op::AddRule(..) => format!("the rule `{text}`"),
                _ => format!("`{text}`"),
            }
        }
        About::Elements(set, first) => format!("elements of {set} (from {first})"),
    }
}

/// The user chains and sets of `family`'s table in the kernel, read over
/// netlink (both empty when the table is absent).
pub fn list(sock: &mut nfnl::Socket, family: Family) -> Result<(BTreeSet<String>, BTreeSet<String>), nfnl::NfError> {
    let nfproto = family.nfproto();
    let Some(_) = sock.dump(nfnl::NFT_MSG_GETTABLE, nfproto, |w| w.str(NFTA_TABLE_NAME, TABLE))? else {
        return Ok(Default::default());
    };
    let named = |answers: Vec<Vec<u8>>, table_attr: u16, name_attr: u16| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for a in answers {
            let attrs = nfnl::attributes(&a);
            let field = |k: u16| attrs.iter().find(|(kind, _)| *kind == k).map(|(_, v)| nfnl::text(v));
            if field(table_attr).as_deref() == Some(TABLE)
                && let Some(name) = field(name_attr)
            {
                out.insert(name);
            }
        }
        out
    };
    let chains = sock.dump(nfnl::NFT_MSG_GETCHAIN, nfproto, |w| w.str(NFTA_CHAIN_TABLE, TABLE))?.unwrap_or_default();
    let sets = sock.dump(nfnl::NFT_MSG_GETSET, nfproto, |w| w.str(NFTA_SET_TABLE, TABLE))?.unwrap_or_default();
    let chains = named(chains, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME).into_iter().filter(|c| !super::BASE_CHAINS.iter().any(|b| b.0 == c)).collect();
    let sets = named(sets, NFTA_SET_TABLE, NFTA_SET_NAME).into_iter().filter(|s| s != "hairpin" && !super::MAPS.iter().any(|m| m.0 == s) && !s.starts_with("__")).collect();
    Ok((chains, sets))
}

/// Whether `set` of `family`'s table holds the element written `key` (as
/// in the script: `10.244.0.7 . 10.244.0.7`), asked of the kernel.
pub fn has_element(sock: &mut nfnl::Socket, family: Family, set: &str, key: &str) -> Result<bool, nfnl::NfError> {
    let k = nfsets::key(key).ok_or_else(|| nfnl::NfError::Protocol(format!("{key:?} is not an element key")))?;
    sock.get(nfnl::NFT_MSG_GETSETELEM, family.nfproto(), |w| {
        w.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
        w.str(NFTA_SET_ELEM_LIST_SET, set);
        w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| w.nest(NFTA_LIST_ELEM, |w| w.nest(NFTA_SET_ELEM_KEY, |w| w.bytes(NFTA_DATA_VALUE, &k))));
    })
}

/// A table `nodelet-check` with a NAT chain, for [`super::family_usable`].
pub fn probe(b: &mut Batch) {
    b.message(nfnl::NFT_MSG_NEWTABLE, NLM_F_CREATE, 0, |w| w.str(NFTA_TABLE_NAME, "nodelet-check"));
    b.message(nfnl::NFT_MSG_NEWCHAIN, NLM_F_CREATE, 1, |w| {
        w.str(NFTA_CHAIN_TABLE, "nodelet-check");
        w.str(NFTA_CHAIN_NAME, "c");
        w.str(NFTA_CHAIN_TYPE, "nat");
        w.nest(NFTA_CHAIN_HOOK, |w| {
            w.be32(NFTA_HOOK_HOOKNUM, 4);
            w.be32(NFTA_HOOK_PRIORITY, 100);
        });
    });
}

/// Removes `family`'s table named `name` and everything in it; Ok when it
/// is not there.
pub fn delete_table(family: Family, name: &str) -> Result<(), nfnl::NfError> {
    let mut sock = nfnl::Socket::open()?;
    let mut b = Batch::new(family.nfproto());
    b.message(nfnl::NFT_MSG_DELTABLE, 0, 0, |w: &mut Writer| w.str(NFTA_TABLE_NAME, name));
    match sock.commit(b, |_| format!("deleting table {} {name}", family.nft())) {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
