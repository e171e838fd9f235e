//! `kube-ipvs0`: the dummy link that holds the Service addresses, made and
//! kept with rtnetlink. An address on it makes the kernel treat packets to a
//! VIP as local (and adds the /32 route to the `local` table), so they reach
//! IPVS's LOCAL_IN and LOCAL_OUT hooks; removing the address removes the
//! route. Like kube-proxy, the link stays down: a down dummy answers nothing
//! on the wire, and local delivery does not need it up (an IPv6 address on
//! the down link gets its local route too, without duplicate address
//! detection, which only runs on a link that is up).

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::proxy::model::Family;

pub const NAME: &str = "kube-ipvs0";

/// One change to the link or its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOp {
    Create,
    AddAddress(IpAddr),
    DelAddress(IpAddr),
}

impl std::fmt::Display for LinkOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkOp::Create => write!(f, "link add {NAME} type dummy"),
            LinkOp::AddAddress(ip) => write!(f, "address add {ip}/{} dev {NAME}", Family::of(ip).host_bits()),
            LinkOp::DelAddress(ip) => write!(f, "address delete {ip}/{} dev {NAME}", Family::of(ip).host_bits()),
        }
    }
}

/// A route netlink connection for the proxy's blocking sync (and
/// `nodelet proxy cleanup`). Its requests run on the process's runtime when
/// there is one (called from a blocking thread of it), else on a small
/// runtime of its own.
pub struct Link {
    own: Option<tokio::runtime::Runtime>,
    rt: tokio::runtime::Handle,
    handle: rtnetlink::Handle,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(rt) = self.own.take() {
            rt.shutdown_background();
        }
    }
}

fn err(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

impl Link {
    /// Opens the connection; call it outside asynchronous code.
    pub fn open() -> std::io::Result<Link> {
        let (own, rt) = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread => (None, h),
            _ => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
                let h = rt.handle().clone();
                (Some(rt), h)
            }
        };
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection()?
        };
        rt.spawn(conn);
        Ok(Link { own, rt, handle })
    }

    /// Runs a request: on the own runtime (only its `block_on` drives a
    /// current-thread runtime's I/O), else on the process's.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.own {
            Some(rt) => rt.block_on(f),
            None => self.rt.block_on(f),
        }
    }

    /// The link's index, None when it does not exist.
    pub fn index(&self) -> std::io::Result<Option<u32>> {
        self.block_on(async {
            let mut links = self.handle.link().get().match_name(NAME).execute();
            match links.try_next().await {
                Ok(Some(l)) => Ok(Some(l.header.index)),
                Ok(None) => Ok(None),
                Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| c.get()) == Some(-libc::ENODEV) => Ok(None),
                Err(e) => Err(err(e)),
            }
        })
    }

    /// Makes the dummy link; its index.
    pub fn create(&self) -> std::io::Result<u32> {
        self.block_on(async {
            let msg = rtnetlink::LinkDummy::new(NAME).build();
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| c.get()) == Some(-libc::EEXIST) => {}
                Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| c.get()) == Some(-libc::EOPNOTSUPP) => {
                    return Err(std::io::Error::other(format!(
                        "cannot make the {NAME} dummy link: the kernel has no dummy link type (module dummy)"
                    )));
                }
                Err(e) => return Err(err(e)),
            }
            let mut links = self.handle.link().get().match_name(NAME).execute();
            let l = links.try_next().await.map_err(err)?.ok_or_else(|| std::io::Error::other(format!("{NAME} vanished after it was made")))?;
            Ok(l.header.index)
        })
    }

    /// The link's addresses of `family` (the other family's are the other
    /// backend's).
    pub fn addresses(&self, index: u32, family: Family) -> std::io::Result<BTreeSet<IpAddr>> {
        self.block_on(async {
            let mut out = BTreeSet::new();
            let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
            while let Some(a) = addrs.try_next().await.map_err(err)? {
                if a.header.index != index {
                    continue;
                }
                for attr in &a.attributes {
                    if let AddressAttribute::Local(ip) | AddressAttribute::Address(ip) = attr
                        && Family::of(ip) == family
                        // The kernel's own link-local address, should the
                        // link ever have been up, is none of nodelet's.
                        && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
                    {
                        out.insert(*ip);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Adds and deletes addresses, in that order; the ones that failed with
    /// their errors (an address already there, or already gone, is no error).
    /// Requests are pipelined on the one connection, 128 in flight.
    pub fn apply(&self, index: u32, add: &[IpAddr], del: &[IpAddr]) -> Vec<(LinkOp, std::io::Error)> {
        use futures::StreamExt;
        const IN_FLIGHT: usize = 128;
        self.block_on(async {
            let adds = futures::stream::iter(add.iter().copied())
                .map(|ip| async move {
                    match self.handle.address().add(index, ip, Family::of(&ip).host_bits()).execute().await {
                        Ok(()) => None,
                        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| c.get()) == Some(-libc::EEXIST) => None,
                        Err(e) => Some((LinkOp::AddAddress(ip), err(e))),
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter_map(|r| async move { r })
                .collect::<Vec<_>>()
                .await;
            let dels = futures::stream::iter(del.iter().copied())
                .map(|ip| async move {
                    let msg = self.handle.address().add(index, ip, Family::of(&ip).host_bits()).message_mut().clone();
                    match self.handle.address().del(msg).execute().await {
                        Ok(()) => None,
                        Err(rtnetlink::Error::NetlinkError(m)) if m.code.map(|c| c.get()) == Some(-libc::EADDRNOTAVAIL) => None,
                        Err(e) => Some((LinkOp::DelAddress(ip), err(e))),
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter_map(|r| async move { r })
                .collect::<Vec<_>>()
                .await;
            adds.into_iter().chain(dels).collect()
        })
    }

    /// Deletes the link (and so its addresses and their routes).
    pub fn delete(&self) -> std::io::Result<()> {
        let Some(index) = self.index()? else { return Ok(()) };
        self.block_on(async { self.handle.link().del(index).execute().await.map_err(err) })
    }
}
