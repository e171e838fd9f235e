//! Proxy rule programming against the real kernel, inside a network
//! namespace this benchmark creates and removes: a full sync of 1,000 and
//! 10,000 Services × 5 endpoints, and one endpoint change with 10,000
//! Services present, in iptables and nftables mode; plus the memory the
//! proxy state takes. Goals (issue 32, nftables mode over netlink): a
//! 10,000-Service full sync under 300 ms, a one-endpoint change under 5 ms,
//! the model and committed state under 30 MiB; iptables mode's earlier
//! goals (1 s, 50 ms) are printed beside it. Beside them, a dual-stack load: 1,000
//! Services in both families (each family's tables synced, as the proxy
//! does), against the same 1,000 in IPv4 only.
//!
//! Run as root: `cargo bench --bench proxy`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nodelet::proxy::model::{Family, ProxyState};
use nodelet::proxy::{Context, SyncStats, iptables, nftables};

#[path = "support/synth.rs"]
mod synth;
use synth::{synth, synth_dual};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn enter_fresh_netns(name: &str) {
    let ok = std::process::Command::new("ip").args(["netns", "add", name]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "ip netns add {name} (run as root)");
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

trait Backend {
    fn sync(&mut self, s: &ProxyState, ctx: &Context, full: bool) -> SyncStats;
}

impl Backend for iptables::Iptables {
    fn sync(&mut self, s: &ProxyState, ctx: &Context, full: bool) -> SyncStats {
        iptables::Iptables::sync(self, s, ctx, full).expect("iptables sync")
    }
}

impl Backend for nftables::Nftables {
    fn sync(&mut self, s: &ProxyState, ctx: &Context, full: bool) -> SyncStats {
        nftables::Nftables::sync(self, s, ctx, full).expect("nftables sync")
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Every rule of every mode gone, so that each figure starts from an empty
/// kernel (nft and iptables-nft share nf_tables: one mode's 10,000
/// Services would weigh on the next one's transactions).
fn clean_slate() {
    let _ = nodelet::proxy::cleanup();
}

fn bench(mode: &str, make: fn() -> Box<dyn Backend>, ctx: &Context) -> (Duration, Duration, Duration) {
    clean_slate();
    let mut b = make();
    let small = synth(1000, 5);
    let (t1k, _) = time(|| b.sync(&small, ctx, true));
    clean_slate();
    let mut b = make();
    let mut big = synth(10_000, 5);
    let (t10k, full) = time(|| b.sync(&big, ctx, true));
    let mut changes = Vec::new();
    let mut splits = Vec::new();
    for round in 0..7u32 {
        let key = big.endpoints.keys().nth(1234 + round as usize * 97).unwrap().clone();
        big.endpoints.get_mut(&key).unwrap()[2].ip = Ipv4Addr::new(10, 250, round as u8, 1).into();
        let (t, st) = time(|| b.sync(&big, ctx, false));
        assert!(st.changed_chains < 20, "{mode}: a one-endpoint change rewrote {} chains", st.changed_chains);
        changes.push(t);
        splits.push((st.plan, st.apply, st.input_bytes));
    }
    println!("{mode:>9}  full sync 1,000: {:>8.1} ms   10,000: {:>9.1} ms   one endpoint with 10,000: {:>7.1} ms (median of 7)",
        ms(t1k), ms(t10k), ms(median(changes.clone())));
    splits.sort();
    let (plan, apply, bytes) = splits[splits.len() / 2];
    println!("{:>9}  10,000 full: plan {:.1} ms + apply {:.1} ms ({} KiB)   one endpoint: plan {:.1} ms + apply {:.1} ms ({} bytes)",
        "", ms(full.plan), ms(full.apply), full.input_bytes / 1024, ms(plan), ms(apply), bytes);
    (t10k, median(changes), t1k)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ns = format!("nlbench-{}", std::process::id());
    enter_fresh_netns(&ns);
    let ctx = Context { cluster_cidr: Some("10.244.0.0/16".parse().unwrap()), ..Default::default() };
    let ctx6 = Context { family: Family::V6, cluster_cidr: Some("fd00:10:244::/56".parse().unwrap()), ..Default::default() };

    let before = rss_kib();
    let state = synth(10_000, 5);
    let model = rss_kib().saturating_sub(before);
    let mut nft = nftables::Nftables::new(Family::V4, true);
    nft.sync(&state, &ctx, true).unwrap();
    let with_nft = rss_kib().saturating_sub(before);
    let mut ipt = iptables::Iptables::new(Family::V4, true);
    ipt.sync(&state, &ctx, true).unwrap();
    let held = rss_kib().saturating_sub(before);
    drop((state, ipt, nft));

    println!("proxy rule programming, inside network namespace {ns}");
    // NODELET_BENCH_MODES=nftables skips the (slow) iptables run.
    let modes = std::env::var("NODELET_BENCH_MODES").unwrap_or_else(|_| "iptables,nftables".into());
    let skipped = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (ipt_full, ipt_one, _) =
        if modes.contains("iptables") { bench("iptables", || Box::new(iptables::Iptables::new(Family::V4, false)), &ctx) } else { skipped };
    let (nft_full, nft_one, _) =
        if modes.contains("nftables") { bench("nftables", || Box::new(nftables::Nftables::new(Family::V4, false)), &ctx) } else { skipped };
    // Dual-stack: 1,000 Services in both families, one backend per family
    // as the proxy runs them, beside the same 1,000 in IPv4 only.
    let dual = synth_dual(1000, 5);
    let single = synth(1000, 5);
    for mode in ["iptables", "nftables"].into_iter().filter(|m| modes.contains(m)) {
        let make = |family| -> Box<dyn Backend> {
            if mode == "iptables" { Box::new(iptables::Iptables::new(family, false)) } else { Box::new(nftables::Nftables::new(family, false)) }
        };
        clean_slate();
        let (one, _) = time(|| make(Family::V4).sync(&single, &ctx, true));
        clean_slate();
        let (both, _) = time(|| {
            make(Family::V4).sync(&dual, &ctx, true);
            make(Family::V6).sync(&dual, &ctx6, true);
        });
        println!("{mode:>9}  dual-stack full sync of 1,000 Services (2,000 Service ports): {:>8.1} ms, IPv4 only: {:>8.1} ms ({:.2}x)",
            ms(both), ms(one), ms(both) / ms(one).max(0.001));
    }
    println!("goals: full sync of 10,000 under 300 ms (nftables) / 1000 ms (iptables): nftables {:.2}x, iptables {:.2}x of the goal", ms(nft_full) / 300.0, ms(ipt_full) / 1000.0);
    println!("       one endpoint change under 5 ms (nftables) / 50 ms (iptables):  nftables {:.2}x, iptables {:.2}x of the goal", ms(nft_one) / 5.0, ms(ipt_one) / 50.0);
    println!(
        "memory: 10,000 Services x 5 endpoints: the model {:.1} MiB, with nftables mode's committed state {:.1} MiB of RSS (goal 30: {:.2}x); with iptables mode's too {:.1} MiB; process peak {:.1} MiB",
        model as f64 / 1024.0,
        with_nft as f64 / 1024.0,
        with_nft as f64 / 1024.0 / 30.0,
        held as f64 / 1024.0,
        peak_mib()
    );
    let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).status();
}

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}
