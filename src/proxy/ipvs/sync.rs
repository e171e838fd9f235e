//! The sync: bringing the kernel to the plan. Reading what nodelet owns in
//! the IPVS table and on kube-ipvs0, the changes for the touched keys in
//! the order they must be made (services and servers, then addresses, then
//! deletions), the kernel's refusals kept per virtual service with
//! back-off, draining servers, and the sysctls IPVS mode needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::netlink::{DestKey, Op, Protocol, ServiceKey};
use super::plan::Element;
use super::ruleset::{firewall_rules, firewall_text, render_ruleset};
use super::{Ipvs, Known, Refused, Report, TABLE, io, link, nfsets};
use crate::proxy::model::{Family, ProxyState};
use crate::proxy::refusals::backoff as refusal_backoff;
use crate::proxy::{Context, ProxyError, SyncStats, run_with_input};

/// One sync's changes, in the order they are made.
#[derive(Debug, Default)]
pub(super) struct Changes {
    create_link: bool,
    /// Services and servers added or updated (before the addresses).
    first: Vec<Op>,
    add_addresses: Vec<IpAddr>,
    del_addresses: Vec<IpAddr>,
    /// Servers and services deleted (after the addresses).
    last: Vec<Op>,
    /// The whole table, written with `nft -f` (at a full sync).
    nft: Option<String>,
    /// Otherwise the set elements to add (true) or delete, one transaction.
    elements: Vec<(Element, bool)>,
}

impl Changes {
    fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.create_link {
            out.push(link::LinkOp::Create.to_string());
        }
        out.extend(self.first.iter().map(ToString::to_string));
        out.extend(self.add_addresses.iter().map(|ip| link::LinkOp::AddAddress(*ip).to_string()));
        out.extend(self.del_addresses.iter().map(|ip| link::LinkOp::DelAddress(*ip).to_string()));
        out.extend(self.last.iter().map(ToString::to_string));
        out
    }
    fn count(&self) -> usize {
        usize::from(self.create_link) + self.first.len() + self.add_addresses.len() + self.del_addresses.len() + self.last.len()
    }
}

impl Ipvs {
    /// One sync: replan what changed, diff with the kernel, apply.
    pub fn sync(&mut self, state: &ProxyState, ctx: &Context, full: bool) -> Result<SyncStats, ProxyError> {
        let started = Instant::now();
        self.prepare()?;
        if full && !self.dry_run {
            self.read_kernel()?;
        }
        let stale = self.node_ips_read.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        let node_ips_changed = if full || stale {
            let (addrs, node_ips) = Self::node_addresses(self.family, ctx);
            self.node_ips_read = Some(Instant::now());
            let changed = node_ips != self.node_ips || addrs != self.node_addrs;
            self.node_ips = node_ips;
            self.node_addrs = addrs;
            changed
        } else {
            false
        };
        let (mut services, mut addresses, elements) = self.replan(state, node_ips_changed);
        if full {
            services.extend(self.table.keys().copied());
            services.extend(self.claims.keys().copied());
            addresses.extend(self.addresses.iter().copied());
            addresses.extend(self.addr_refs.keys().copied());
        }
        // Virtual services the kernel refused are looked at every sync:
        // what is still wanted of them is asked again (once their back-off
        // is over), and one with nothing left to ask is whole again.
        services.extend(self.refused.keys().copied());
        let mut c = self.diff(&services, &addresses, &elements, ctx);
        let pending: BTreeSet<ServiceKey> = c.first.iter().chain(c.last.iter()).filter_map(|op| op.service().copied()).collect();
        self.refused.retain(|k, _| {
            let still = pending.contains(k);
            if !still {
                tracing::info!(service = %k, "the virtual service the kernel refused is as planned now");
            }
            still
        });
        let drained = self.drained()?;
        c.last.extend(drained);
        let plan = started.elapsed();
        let lines = c.lines();
        let count = c.count();
        let applied = Instant::now();
        let rewrote_table = c.nft.is_some();
        let result = self.apply_changes(c);
        self.last_changes = lines;
        result?;
        // The firewall chain: written when its rules change (and after the
        // table was written anew, which empties it).
        let rules = firewall_rules(state, self.family);
        if rewrote_table || self.firewall.as_ref() != Some(&rules) {
            if !self.dry_run {
                run_with_input("nft", &["-f", "-"], &firewall_text(self.family, &rules))?;
            }
            if self.firewall.as_ref() != Some(&rules) {
                self.last_changes.extend(rules.iter().map(|r| format!("nft firewall: {r}")));
            }
            self.firewall = Some(rules);
        }
        Ok(SyncStats { changed_chains: count, input_bytes: 0, full, plan, apply: applied.elapsed() })
    }

    /// Reads the kernel: owned virtual services (of the family) with their
    /// servers, the link and its addresses (of the family).
    pub(super) fn read_kernel(&mut self) -> Result<(), ProxyError> {
        self.table.clear();
        self.addresses.clear();
        self.elements = None;
        self.link_index = None;
        let excluded: Vec<ipnetwork::IpNetwork> = self.settings.exclude_cidrs.clone();
        let family = self.family;
        if let Some(sock) = self.sock.as_mut() {
            let services = sock.services().map_err(|e| io("ipvs", e))?;
            for (key, spec) in services {
                if Family::of(&key.addr) != family || excluded.iter().any(|n| n.contains(key.addr)) {
                    continue;
                }
                let dests = sock.dests(&key).map_err(|e| io("ipvs", e))?;
                self.table.insert(key, Known { spec, dests: dests.into_iter().map(|d| (d.key, d.weight)).collect() });
            }
        }
        if let Some(link) = &self.link {
            self.link_index = link.index().map_err(|e| io(link::NAME, e))?;
            if let Some(i) = self.link_index {
                self.addresses = link.addresses(i, family).map_err(|e| io(link::NAME, e))?;
            }
        }
        // Servers found at weight 0 are draining from before a restart.
        let deadline = Instant::now() + self.settings.drain_timeout;
        for (k, known) in &self.table {
            for (d, w) in &known.dests {
                if *w == 0 {
                    self.draining.entry((*k, *d)).or_insert(deadline);
                }
            }
        }
        Ok(())
    }

    /// The node's addresses of `family` outside kube-ipvs0 (by interface,
    /// as kube-proxy's GetAllLocalAddressesExcept), and those node ports
    /// listen on: `nodePortAddresses`', else every one but loopback and
    /// IPv6 link-local (as kube-proxy's IPVS mode).
    pub(super) fn node_addresses(family: Family, ctx: &Context) -> (BTreeSet<IpAddr>, Vec<IpAddr>) {
        let all: BTreeSet<IpAddr> = crate::proxy::local_ips_except(Some(link::NAME)).into_iter().filter(|ip| Family::of(ip) == family).collect();
        let mut ips: Vec<IpAddr> = match &ctx.node_port_ips {
            Some(ips) => ips.iter().filter(|ip| Family::of(ip) == family).copied().collect(),
            None => all.iter().copied().filter(|ip| !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())).collect(),
        };
        ips.sort();
        ips.dedup();
        (all, ips)
    }

    /// The changes that bring the kernel to the plan for the touched keys.
    pub(super) fn diff(&mut self, services: &BTreeSet<ServiceKey>, addresses: &BTreeSet<IpAddr>, elements: &BTreeSet<Element>, ctx: &Context) -> Changes {
        let mut c = Changes::default();
        let now = Instant::now();
        for sk in services {
            let want = self.wanted(sk).cloned();
            let have = self.table.get(sk);
            match (want.as_ref(), have) {
                (None, None) => {}
                (None, Some(_)) => {
                    c.last.push(Op::DelService(*sk));
                }
                (Some((spec, dests)), None) => {
                    c.first.push(Op::AddService(*sk, spec.clone()));
                    c.first.extend(dests.iter().map(|d| Op::AddDest(*sk, *d, 1)));
                }
                (Some((spec, dests)), Some(known)) => {
                    if known.spec != *spec {
                        c.first.push(Op::UpdateService(*sk, spec.clone()));
                    }
                    for d in dests {
                        match known.dests.get(d) {
                            None => c.first.push(Op::AddDest(*sk, *d, 1)),
                            Some(0) => c.first.push(Op::UpdateDest(*sk, *d, 1)),
                            Some(_) => {}
                        }
                    }
                    for (d, w) in &known.dests {
                        if dests.contains(d) {
                            continue;
                        }
                        // TCP drains; UDP and SCTP servers go at once (their
                        // flows end on the next packet: expire_nodest_conn).
                        if sk.protocol == Protocol::Tcp {
                            if *w > 0 {
                                c.first.push(Op::UpdateDest(*sk, *d, 0));
                            }
                            self.draining.entry((*sk, *d)).or_insert(now + self.settings.drain_timeout);
                        } else {
                            c.last.push(Op::DelDest(*sk, *d));
                        }
                    }
                }
            }
        }
        for a in addresses {
            match (self.addr_refs.contains_key(a), self.addresses.contains(a)) {
                (true, false) => c.add_addresses.push(*a),
                (false, true) => c.del_addresses.push(*a),
                _ => {}
            }
        }
        if !c.add_addresses.is_empty() && self.link_index.is_none() {
            c.create_link = true;
        }
        match &self.elements {
            None => c.nft = Some(render_ruleset(ctx, self.element_refs.keys())),
            Some(applied) => {
                for e in elements {
                    match (self.element_refs.contains_key(e), applied.contains(e)) {
                        (true, false) => c.elements.push((e.clone(), true)),
                        (false, true) => c.elements.push((e.clone(), false)),
                        _ => {}
                    }
                }
            }
        }
        c
    }

    /// Deletes draining servers whose connections are gone or whose time
    /// is up. Servers wanted again were set back to weight 1, and those of a
    /// virtual service being deleted go with it; both leave the list, as do
    /// servers that vanished from the kernel meanwhile.
    pub(super) fn drained(&mut self) -> Result<Vec<Op>, ProxyError> {
        let now = Instant::now();
        let mut ops = Vec::new();
        let claims = &self.claims;
        let table = &self.table;
        self.draining.retain(|(sk, d), _| {
            let wanted = claims.get(sk).and_then(|c| c.values().next());
            wanted.is_some_and(|(_, ds)| !ds.contains(d)) && table.get(sk).is_some_and(|k| k.dests.contains_key(d))
        });
        let services: BTreeSet<ServiceKey> = self.draining.keys().map(|(sk, _)| *sk).collect();
        for sk in services {
            let counts: HashMap<DestKey, u32> = match self.sock.as_mut() {
                Some(sock) => sock.dests(&sk).map_err(|e| io("ipvs", e))?.into_iter().map(|d| (d.key, d.active + d.inactive)).collect(),
                None => HashMap::new(),
            };
            let due: Vec<DestKey> = self
                .draining
                .iter()
                // Only servers already at weight 0 in the kernel: one set to 0
                // by this sync is looked at by the next.
                .filter(|((k, d), _)| *k == sk && self.table.get(k).and_then(|known| known.dests.get(d)) == Some(&0))
                .filter(|((_, d), deadline)| counts.get(d).copied().unwrap_or(0) == 0 || **deadline <= now)
                .map(|((_, d), _)| *d)
                .collect();
            for d in due {
                self.draining.remove(&(sk, d));
                ops.push(Op::DelDest(sk, d));
            }
        }
        Ok(ops)
    }

    /// Records applied operations in `table`.
    pub(super) fn record(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::AddService(k, s) | Op::UpdateService(k, s) => {
                    self.table.entry(*k).or_insert_with(|| Known { spec: s.clone(), dests: BTreeMap::new() }).spec = s.clone();
                }
                Op::DelService(k) => {
                    self.table.remove(k);
                }
                Op::AddDest(k, d, w) | Op::UpdateDest(k, d, w) => {
                    if let Some(known) = self.table.get_mut(k) {
                        known.dests.insert(*d, *w);
                    }
                }
                Op::DelDest(k, d) => {
                    if let Some(known) = self.table.get_mut(k) {
                        known.dests.remove(d);
                    }
                }
                Op::SetTimeouts { .. } => {}
            }
        }
    }

    /// Applies `ops`: what the kernel refuses is left out (not recorded, so
    /// the next sync asks again once its back-off is over), reported once per
    /// virtual service, and never stops the rest. Operations on a virtual
    /// service still in back-off are held. Only a failure of the socket
    /// itself fails the sync.
    pub(super) fn apply_ops(&mut self, ops: &[Op]) -> Result<(), ProxyError> {
        if ops.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let send: Vec<Op> = ops.iter().filter(|op| op.service().and_then(|k| self.refused.get(k)).is_none_or(|r| r.next <= now)).cloned().collect();
        let Some(sock) = self.sock.as_mut() else {
            self.record(&send);
            return Ok(());
        };
        let refused = sock.apply(&send).map_err(|e| io("ipvs", e))?;
        let mut bad: BTreeMap<usize, String> = BTreeMap::new();
        for (i, e) in &refused {
            let hint = match &send[*i] {
                Op::AddService(_, spec) | Op::UpdateService(_, spec) if e.raw_os_error() == Some(libc::ENOENT) => {
                    format!(" (is the scheduler {:?} available? it needs the kernel module ip_vs_{})", spec.scheduler, spec.scheduler)
                }
                _ => String::new(),
            };
            bad.insert(*i, format!("{}: {e}{hint}", send[*i]));
        }
        self.refusals_total += refused.len() as u64;
        // Per virtual service: the first refusal's words; or, for one that
        // was refused before and went through now, its recovery.
        let mut failed_now: BTreeMap<ServiceKey, String> = BTreeMap::new();
        for (i, message) in &bad {
            match send[*i].service() {
                Some(k) => {
                    failed_now.entry(*k).or_insert_with(|| message.clone());
                }
                None => tracing::error!("the kernel refused {message}"),
            }
        }
        for op in &send {
            if let Some(k) = op.service()
                && !failed_now.contains_key(k)
                && self.refused.remove(k).is_some()
            {
                tracing::info!(service = %k, "the kernel accepts the virtual service again");
            }
        }
        for (k, message) in failed_now {
            let services: Vec<(String, String)> =
                self.claims.get(&k).map(|c| c.keys().map(|p| (p.namespace.clone(), p.name.clone())).collect::<BTreeSet<_>>().into_iter().collect()).unwrap_or_default();
            let entry = self.refused.entry(k).or_insert_with(|| Refused { attempts: 0, next: now, message: String::new() });
            entry.attempts += 1;
            entry.next = now + refusal_backoff(entry.attempts);
            if entry.message != message {
                let names: Vec<String> = services.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
                tracing::error!(
                    service = %k,
                    services = ?names,
                    retry_in = ?refusal_backoff(entry.attempts),
                    "the kernel refused {message}; every other Service is programmed, this one is retried with back-off"
                );
                entry.message = message.clone();
                self.reports.push(Report { services, message });
            }
        }
        let ok: Vec<Op> = send.into_iter().enumerate().filter(|(i, _)| !bad.contains_key(i)).map(|(_, op)| op).collect();
        self.record(&ok);
        Ok(())
    }

    /// Prepares the kernel once: sysctls and connection timeouts.
    pub(super) fn prepare(&mut self) -> Result<(), ProxyError> {
        if self.prepared || self.dry_run {
            return Ok(());
        }
        let mut want: Vec<(&str, &str)> = vec![
            ("net/ipv4/vs/conntrack", "1"),
            ("net/ipv4/vs/expire_nodest_conn", "1"),
            ("net/ipv4/vs/expire_quiescent_template", "1"),
            ("net/ipv4/ip_forward", "1"),
        ];
        if kernel_before(5, 9) {
            // Older kernels drop a reused port's SYN for a second with
            // conn_reuse_mode 1; kube-proxy sets 0 there.
            want.push(("net/ipv4/vs/conn_reuse_mode", "0"));
        }
        if self.settings.strict_arp {
            want.push(("net/ipv4/conf/all/arp_ignore", "1"));
            want.push(("net/ipv4/conf/all/arp_announce", "2"));
        }
        for (name, value) in want {
            set_sysctl(name, value);
        }
        let s = &self.settings;
        // The timeouts are the kernel's, for both families: set once, by
        // the IPv4 backend (every node runs one).
        if self.family == Family::V4 && (s.tcp_timeout > 0 || s.tcp_fin_timeout > 0 || s.udp_timeout > 0) {
            let op = Op::SetTimeouts { tcp: s.tcp_timeout, tcp_fin: s.tcp_fin_timeout, udp: s.udp_timeout };
            // A value the kernel refuses is reported, as kube-proxy does; the
            // Services are programmed all the same.
            let refused_before = self.refusals_total;
            match self.apply_ops(std::slice::from_ref(&op)) {
                // A refusal was logged by apply_ops, naming the operation.
                Ok(()) if self.refusals_total == refused_before => tracing::info!("{op}"),
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "the kernel refused the ipvs.*Timeout settings"),
            }
        }
        self.prepared = true;
        Ok(())
    }

    pub(super) fn apply_changes(&mut self, c: Changes) -> Result<(), ProxyError> {
        if c.create_link {
            if let Some(link) = &self.link {
                self.link_index = Some(link.create().map_err(|e| io(link::NAME, e))?);
            } else {
                self.link_index = Some(0);
            }
        }
        self.apply_ops(&c.first)?;
        if !c.add_addresses.is_empty() || !c.del_addresses.is_empty() {
            // An address the kernel refuses is left out (asked again at the
            // next sync) and logged; the others go on.
            let mut refused_addrs: BTreeSet<IpAddr> = BTreeSet::new();
            if let (Some(link), Some(index)) = (&self.link, self.link_index) {
                for (op, e) in link.apply(index, &c.add_addresses, &c.del_addresses) {
                    if let link::LinkOp::AddAddress(a) | link::LinkOp::DelAddress(a) = op {
                        refused_addrs.insert(a);
                    }
                    self.refusals_total += 1;
                    tracing::error!("{}: {op}: {e}; the other addresses are programmed", link::NAME);
                }
            }
            for a in c.add_addresses.iter().filter(|a| !refused_addrs.contains(a)) {
                self.addresses.insert(*a);
            }
            for a in c.del_addresses.iter().filter(|a| !refused_addrs.contains(a)) {
                self.addresses.remove(a);
            }
        }
        self.apply_ops(&c.last)?;
        if let Some(text) = &c.nft {
            if !self.dry_run {
                run_with_input("nft", &["-f", "-"], text)?;
            }
            self.elements = Some(self.element_refs.keys().cloned().collect());
        } else if !c.elements.is_empty() {
            if !self.dry_run {
                let changes: Vec<nfsets::Change> = c.elements.iter().map(|((set, e), add)| (*set, *add, e.as_str())).collect();
                nfsets::apply(self.family, TABLE, &changes).map_err(|e| io("nf_tables set elements", e))?;
            }
            let applied = self.elements.get_or_insert_with(BTreeSet::new);
            for (e, add) in c.elements {
                if add {
                    applied.insert(e);
                } else {
                    applied.remove(&e);
                }
            }
        }
        Ok(())
    }
}

fn kernel_before(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Sets a sysctl IPVS mode needs, saying so when it changes one.
fn set_sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/{name}");
    let dotted = name.replace('/', ".");
    match std::fs::read_to_string(&path) {
        Ok(old) if old.trim() == value => {}
        Ok(old) => match std::fs::write(&path, value) {
            Ok(()) => tracing::info!(sysctl = %dotted, from = %old.trim(), to = value, "set a sysctl the IPVS proxy mode needs"),
            Err(e) => tracing::error!(sysctl = %dotted, want = value, error = %e, "cannot set a sysctl the IPVS proxy mode needs"),
        },
        Err(e) => tracing::error!(sysctl = %dotted, want = value, error = %e, "cannot read a sysctl the IPVS proxy mode needs"),
    }
}
