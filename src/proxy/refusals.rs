//! One Service port the kernel refuses never stalls the others, in the
//! iptables and nftables modes.
//!
//! Those modes apply the whole ruleset as one transaction, so one rule the
//! kernel refuses (a renderer mistake for some rare Service, a module one
//! feature needs and this kernel lacks) would fail every sync and leave
//! every later change unprogrammed. When a sync fails, the Service ports
//! at fault are found by asking the kernel, without committing anything,
//! about halves of the ruleset (the backends' `check`); each one found is
//! held at the version last applied (or left out, when it never was),
//! reported once, and tried again with back-off (1 s doubling to 5 min);
//! everything else is programmed at once. A failure that no single port
//! explains (the kernel refuses even an empty ruleset, or only the whole)
//! is left to the usual retry of the whole.
//!
//! (IPVS applies operation by operation and holds refused virtual services
//! itself: `ipvs::Ipvs::apply_ops`.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::model::{PortKey, ProxyState};

/// How many checks one isolation may take: enough for a handful of bad
/// ports among tens of thousands (about 2 log2 n each).
const CHECK_BUDGET: u32 = 64;

/// A Service port the kernel refused: how often, when to try again, why.
#[derive(Debug, Clone)]
struct Held {
    attempts: u32,
    next: Instant,
    message: String,
}

/// A refusal to report on the Service it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: PortKey,
    pub message: String,
}

/// The back-off of a refused Service port (or IPVS virtual service): 1 s
/// doubling to 5 min.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// The Service ports the kernel refuses now.
#[derive(Debug, Default)]
pub struct Refusals {
    held: BTreeMap<PortKey, Held>,
    reports: Vec<Refusal>,
    /// Refusals since the start.
    pub total: u64,
}

/// `state` with only the ports in `keys`.
fn restrict(state: &ProxyState, keys: &[PortKey]) -> ProxyState {
    let mut out = ProxyState::default();
    for k in keys {
        if let Some(s) = state.services.get(k) {
            out.services.insert(k.clone(), s.clone());
        }
        if let Some(e) = state.endpoints.get(k) {
            out.endpoints.insert(k.clone(), e.clone());
        }
    }
    out
}

/// `state` with the port `k` as in `applied` (absent if it is not there).
fn put_back(state: &mut ProxyState, applied: &ProxyState, k: &PortKey) {
    match applied.services.get(k) {
        Some(s) => {
            state.services.insert(k.clone(), s.clone());
        }
        None => {
            state.services.remove(k);
        }
    }
    match applied.endpoints.get(k) {
        Some(e) => {
            state.endpoints.insert(k.clone(), e.clone());
        }
        None => {
            state.endpoints.remove(k);
        }
    }
}

/// The keys that `check` refuses on their own, found by checking halves:
/// a set that passes is cleared whole, a single key that does not is one.
/// None when the budget runs out.
pub fn bisect<K: Clone>(keys: &[K], check: &mut dyn FnMut(&[K]) -> Result<(), String>, budget: &mut u32) -> Option<Vec<(K, String)>> {
    if keys.is_empty() {
        return Some(Vec::new());
    }
    if *budget == 0 {
        return None;
    }
    *budget -= 1;
    match check(keys) {
        Ok(()) => Some(Vec::new()),
        Err(e) if keys.len() == 1 => Some(vec![(keys[0].clone(), e)]),
        Err(_) => {
            let (left, right) = keys.split_at(keys.len() / 2);
            let mut bad = bisect(left, check, budget)?;
            bad.extend(bisect(right, check, budget)?);
            Some(bad)
        }
    }
}

/// The first lines of a tool's complaint, enough to name the rule.
fn brief(e: &str) -> String {
    let lines: Vec<&str> = e.lines().take(3).collect();
    lines.join(" | ")
}

impl Refusals {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Service ports the kernel refuses now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// The state to program: a held port whose back-off is not over stays
    /// as last applied. Returns the held ports that are tried again.
    pub fn hold(&self, state: &mut ProxyState, applied: &ProxyState) -> BTreeSet<PortKey> {
        let now = Instant::now();
        let mut tried = BTreeSet::new();
        for (k, h) in &self.held {
            if !state.services.contains_key(k) {
                // Deleted: it goes, whatever it was.
                continue;
            }
            if h.next <= now {
                tried.insert(k.clone());
            } else {
                put_back(state, applied, k);
            }
        }
        tried
    }

    /// After a sync of `state` failed: finds the Service ports the kernel
    /// refuses with `check` (a whole-ruleset check of a state), holds them
    /// and returns the state without them, which the kernel takes. None
    /// when no single port explains the failure.
    pub fn isolate(&mut self, state: &ProxyState, applied: &ProxyState, check: &mut dyn FnMut(&ProxyState) -> Result<(), String>) -> Option<ProxyState> {
        if let Err(e) = check(&ProxyState::default()) {
            tracing::debug!(error = %e, "the kernel refuses even an empty ruleset: no Service port is at fault");
            return None;
        }
        let keys: Vec<PortKey> = state.services.keys().cloned().collect();
        let mut budget = CHECK_BUDGET;
        let bad = bisect(&keys, &mut |ks: &[PortKey]| check(&restrict(state, ks)), &mut budget)?;
        if bad.is_empty() {
            return None;
        }
        let mut reduced = state.clone();
        for (k, _) in &bad {
            put_back(&mut reduced, applied, k);
        }
        if check(&reduced).is_err() {
            // The last applied version of a port is refused now too: leave
            // the refused ports out altogether.
            for (k, _) in &bad {
                reduced.services.remove(k);
                reduced.endpoints.remove(k);
            }
            if let Err(e) = check(&reduced) {
                tracing::debug!(error = %e, "the rules without the refused Service ports are refused too");
                return None;
            }
        }
        let now = Instant::now();
        self.total += bad.len() as u64;
        for (k, e) in bad {
            let message = format!("the rules of Service port {k}: {}", brief(&e));
            let h = self.held.entry(k.clone()).or_insert_with(|| Held { attempts: 0, next: now, message: String::new() });
            h.attempts += 1;
            h.next = now + backoff(h.attempts);
            if h.message != message {
                tracing::error!(retry_in = ?backoff(h.attempts), "the kernel refused {message}; every other Service is programmed, this one is retried with back-off");
                h.message = message.clone();
                self.reports.push(Refusal { key: k, message });
            }
        }
        Some(reduced)
    }

    /// After a sync went through: the ports that were tried again and not
    /// refused are released, and ports no longer `wanted` forgotten.
    pub fn applied(&mut self, tried: &BTreeSet<PortKey>, wanted: &ProxyState) {
        let now = Instant::now();
        self.held.retain(|k, h| {
            if !wanted.services.contains_key(k) {
                return false;
            }
            if tried.contains(k) && h.next <= now {
                tracing::info!(service = %k, "the kernel accepts the Service port's rules again");
                return false;
            }
            true
        });
    }

    /// Refusals to report as events since the last call.
    pub fn take_reports(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.reports)
    }

    /// How soon a held port is due to be tried again.
    pub fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.held.values().map(|h| h.next.saturating_duration_since(now)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Endpoint, Protocol, ServicePort};
    use std::net::Ipv4Addr;

    fn key(name: &str) -> PortKey {
        PortKey { namespace: "d".into(), name: name.into(), port: String::new(), protocol: Protocol::Tcp, family: crate::proxy::model::Family::V4 }
    }

    fn state(names: &[(&str, u8)]) -> ProxyState {
        let mut s = ProxyState::default();
        for (n, ip) in names {
            s.services.insert(key(n), ServicePort::cluster_ip(key(n), Ipv4Addr::new(10, 96, 0, *ip).into(), 80));
            s.endpoints.insert(key(n), vec![Endpoint { elsewhere: false, ip: Ipv4Addr::new(10, 244, 0, *ip).into(), port: 8080, ready: true, serving: true, terminating: false, local: true }]);
        }
        s
    }

    #[test]
    fn bisection_finds_each_bad_key_within_its_budget() {
        let keys: Vec<u32> = (0..10_000).collect();
        let bad = [17u32, 4242, 9999];
        let mut checks = 0;
        let mut check = |ks: &[u32]| {
            checks += 1;
            match ks.iter().find(|k| bad.contains(k)) {
                Some(k) => Err(format!("refused {k}")),
                None => Ok(()),
            }
        };
        let mut budget = CHECK_BUDGET * 2;
        let found = bisect(&keys, &mut check, &mut budget).unwrap();
        assert_eq!(found.iter().map(|(k, _)| *k).collect::<Vec<_>>(), bad);
        assert!(checks <= 3 * 2 * 14 + 1, "{checks} checks");
        // Out of budget: no guess.
        let mut budget = 3;
        assert!(bisect(&keys, &mut |ks: &[u32]| if ks.contains(&17) { Err("x".into()) } else { Ok(()) }, &mut budget).is_none());
    }

    #[test]
    fn a_refused_port_is_held_at_its_applied_version_and_tried_again_after_its_back_off() {
        let applied = state(&[("a", 1), ("b", 2)]);
        // b changed (its endpoint moved) into something the "kernel" refuses;
        // c is new.
        let mut next = state(&[("a", 1), ("b", 99), ("c", 3)]);
        let refused_ip = Ipv4Addr::new(10, 244, 0, 99);
        let mut kernel = |s: &ProxyState| {
            if s.endpoints.values().flatten().any(|e| e.ip == refused_ip) { Err("Error: Could not process rule: Invalid argument\nadd rule ...".to_string()) } else { Ok(()) }
        };
        let mut r = Refusals::default();
        let reduced = r.isolate(&next, &applied, &mut kernel).expect("b explains the failure");
        assert_eq!(reduced.endpoints[&key("b")], applied.endpoints[&key("b")], "b stays as applied");
        assert!(reduced.services.contains_key(&key("c")), "the new Service is programmed");
        assert_eq!(r.len(), 1);
        let reports = r.take_reports();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].message, "the rules of Service port d/b: Error: Could not process rule: Invalid argument | add rule ...");
        // Within the back-off the next sync keeps b as applied without asking.
        let tried = r.hold(&mut next, &applied);
        assert!(tried.is_empty());
        assert_eq!(next.endpoints[&key("b")], applied.endpoints[&key("b")]);
        assert!(r.retry_in().is_some_and(|d| d <= Duration::from_secs(1)));
        // Refused again with the same words: no second report.
        r.held.get_mut(&key("b")).unwrap().next = Instant::now();
        let mut again = state(&[("a", 1), ("b", 99), ("c", 3)]);
        let tried = r.hold(&mut again, &applied);
        assert_eq!(tried, BTreeSet::from([key("b")]));
        r.isolate(&again, &applied, &mut kernel).unwrap();
        assert!(r.take_reports().is_empty(), "one report per object, not per sync");
        assert_eq!(r.held[&key("b")].attempts, 2);
        // Fixed: tried, accepted, released.
        r.held.get_mut(&key("b")).unwrap().next = Instant::now();
        let mut fixed = state(&[("a", 1), ("b", 4), ("c", 3)]);
        let tried = r.hold(&mut fixed, &applied);
        r.applied(&tried, &fixed);
        assert!(r.is_empty());
    }

    #[test]
    fn a_failure_no_single_port_explains_is_left_to_the_whole_retry() {
        let s = state(&[("a", 1), ("b", 2)]);
        let mut r = Refusals::default();
        assert!(r.isolate(&s, &ProxyState::default(), &mut |_| Err("no nft here".into())).is_none(), "even an empty ruleset is refused");
        assert!(r.isolate(&s, &ProxyState::default(), &mut |x| if x.services.len() == 2 { Err("only together".into()) } else { Ok(()) }).is_none());
        assert!(r.is_empty());
    }

    /// The real kernel: nft --check in a network namespace of the test's
    /// own, with one Service port whose rules carry a statement the kernel
    /// refuses (what a renderer mistake would produce).
    #[test]
    fn the_nftables_check_finds_a_port_the_kernel_refuses() {
        assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does (a skip would pass unseen)");
        let s = state(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        let ctx = crate::proxy::Context::default();
        let mut kernel = |st: &ProxyState| -> Result<(), String> {
            let mut r = crate::proxy::nftables::render(st, &ctx);
            // Chains of port d get a jump to a chain that does not exist.
            for (name, rules) in r.chains.iter_mut() {
                if name.contains("/d/") {
                    rules.push(crate::proxy::nftables::rule::Rule::new(r.family, vec![crate::proxy::nftables::rule::Stmt::Jump("no-such-chain".into())]));
                }
            }
            let (script, _) = crate::proxy::nftables::transaction(None, &r, &BTreeSet::new(), &BTreeSet::new());
            run_in_scratch_netns("nft", &["--check", "-f", "-"], &script)
        };
        assert!(kernel(&s).is_err(), "the whole ruleset is refused");
        let mut r = Refusals::default();
        let reduced = r.isolate(&s, &ProxyState::default(), &mut kernel).expect("d explains it");
        assert_eq!(reduced.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let reports = r.take_reports();
        assert_eq!(reports.len(), 1);
        assert!(reports[0].message.starts_with("the rules of Service port d/d: "), "{}", reports[0].message);
        assert!(reports[0].message.contains("no-such-chain"), "{}", reports[0].message);
    }

    /// The iptables check really reaches the kernel, in a namespace that
    /// goes away with it: a whole ruleset (affinity, node ports, masquerade)
    /// passes; one with a jump to a missing chain for port d does not; and
    /// the node's own rules are not touched.
    #[test]
    fn the_iptables_check_restores_in_a_scratch_namespace() {
        assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does (a skip would pass unseen)");
        let mut s = state(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        for p in s.services.values_mut() {
            p.affinity = Some(10800);
            p.node_port = Some(30000 + p.cluster_ip.to_string().rsplit('.').next().unwrap().parse::<u16>().unwrap());
        }
        let ctx = crate::proxy::Context { cluster_cidr: Some("10.244.0.0/16".parse().unwrap()), ..Default::default() };
        // `iptables -S` for each table: the rules without counters.
        let rules = || ["filter", "nat"].map(|t| std::process::Command::new("iptables").args(["-t", t, "-S"]).output().unwrap().stdout);
        let before = rules();
        crate::proxy::iptables::check(&s, &ctx).expect("a whole ruleset passes the check");
        let mut kernel = |st: &ProxyState| -> Result<(), String> {
            let mut r = crate::proxy::iptables::render(st, &ctx);
            for chains in r.tables.values_mut() {
                for (name, rules) in chains.iter_mut() {
                    if name.starts_with("KUBE-SVC-") && rules.iter().any(|r| r.contains("d/d")) {
                        rules.push("-j NO-SUCH-CHAIN".into());
                    }
                }
            }
            let (input, _) = crate::proxy::iptables::restore_input(None, &r, &BTreeMap::new());
            run_in_scratch_netns("iptables-restore", &["-w", "5", "--noflush"], &input)
        };
        let mut r = Refusals::default();
        let reduced = r.isolate(&s, &ProxyState::default(), &mut kernel).expect("d explains it");
        assert_eq!(reduced.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(rules(), before, "the node's rules are untouched");
    }

    fn run_in_scratch_netns(tool: &str, args: &[&str], input: &str) -> Result<(), String> {
        let mut all = vec!["--net", tool];
        all.extend_from_slice(args);
        crate::proxy::run_with_input("unshare", &all, input).map(|_| ()).map_err(|e| e.to_string())
    }
}
