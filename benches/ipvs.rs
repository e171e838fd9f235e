//! IPVS mode against a real IPVS kernel: Debian's kernel under qemu
//! (`tests/support/vm.sh`, TCG: no KVM here, so every figure is a slowed-down
//! machine's), the benchmark running itself inside it (`--in-vm`). A full
//! sync of 1,000 and 10,000 Services × 5 endpoints, one endpoint change with
//! 10,000 present, and a restart that adopts the 10,000; nftables mode is
//! measured in the same VM for a fair ratio. Goals: full sync of 10,000
//! under 1 s, one endpoint change under 10 ms.
//!
//! Run as root: `cargo bench --bench ipvs`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nodelet::proxy::ipvs::{Ipvs, IpvsSettings};
use nodelet::proxy::model::Family;
use nodelet::proxy::{Context, nftables};

#[path = "support/synth.rs"]
mod synth;
use synth::synth;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn in_vm() {
    let ctx = Context {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_port_ips: Some(vec![Ipv4Addr::new(10, 0, 2, 15).into()]),
        ..Default::default()
    };
    let settings = IpvsSettings::default();
    println!("IPVS mode in a qemu VM (TCG) with Debian's kernel {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());

    let mut b = Ipvs::new(Family::V4, settings.clone(), false).expect("open IPVS");
    let (t1k, _) = time(|| b.sync(&synth(1000, 5), &ctx, true).expect("sync 1,000"));
    drop(b);
    nodelet::proxy::ipvs::cleanup().unwrap();

    let mut big = synth(10_000, 5);
    let mut b = Ipvs::new(Family::V4, settings.clone(), false).unwrap();
    let (t10k, full) = time(|| b.sync(&big, &ctx, true).expect("sync 10,000"));
    let ops = full.changed_chains;
    let mut changes = Vec::new();
    let mut splits = Vec::new();
    for round in 0..7u32 {
        let key = big.endpoints.keys().nth(1234 + round as usize * 97).unwrap().clone();
        big.endpoints.get_mut(&key).unwrap()[2].ip = Ipv4Addr::new(10, 250, round as u8, 1).into();
        let (t, st) = time(|| b.sync(&big, &ctx, false).expect("sync one change"));
        assert!(st.changed_chains <= 3, "a one-endpoint change made {} changes: {:?}", st.changed_chains, b.last_changes);
        changes.push(t);
        splits.push((st.plan, st.apply));
    }
    splits.sort();
    let (one_plan, one_apply) = splits[splits.len() / 2];
    drop(b);
    let mut b = Ipvs::new(Family::V4, settings, false).unwrap();
    let (adopt, st) = time(|| b.sync(&big, &ctx, true).expect("adopting sync"));
    assert!(st.changed_chains <= 7, "a restart changed {} things", st.changed_chains);
    drop(b);
    nodelet::proxy::ipvs::cleanup().unwrap();
    let one = median(changes);
    println!(
        "     ipvs  full sync 1,000: {:>8.1} ms   10,000: {:>9.1} ms   one endpoint with 10,000: {:>7.2} ms (median of 7)",
        ms(t1k),
        ms(t10k),
        ms(one)
    );
    println!(
        "           10,000 full: plan {:.1} ms + apply {:.1} ms ({ops} netlink and link operations)   one endpoint: plan {:.2} ms + apply {:.2} ms",
        ms(full.plan),
        ms(full.apply),
        ms(one_plan),
        ms(one_apply)
    );
    println!("           restart adopting 10,000 (reads the table, changes nothing): {:.1} ms", ms(adopt));

    // nftables mode in the same VM.
    let mut n = nftables::Nftables::new(nodelet::proxy::model::Family::V4, false);
    let (n10k, _) = time(|| n.sync(&big, &ctx, true).expect("nftables sync"));
    let mut nchanges = Vec::new();
    for round in 0..7u32 {
        let key = big.endpoints.keys().nth(4321 + round as usize * 89).unwrap().clone();
        big.endpoints.get_mut(&key).unwrap()[2].ip = Ipv4Addr::new(10, 251, round as u8, 1).into();
        nchanges.push(time(|| n.sync(&big, &ctx, false).expect("nftables change")).0);
    }
    let none = median(nchanges);
    println!(" nftables  10,000: {:>9.1} ms   one endpoint with 10,000: {:>7.2} ms (median of 7, same VM)", ms(n10k), ms(none));
    println!(
        "goals: full sync of 10,000 under 1000 ms: ipvs {:.2}x of the goal; one endpoint change under 10 ms: ipvs {:.2}x of the goal",
        ms(t10k) / 1000.0,
        ms(one) / 10.0
    );
    println!("ipvs / nftables in the same VM: full sync {:.2}x, one endpoint {:.2}x", ms(t10k) / ms(n10k), ms(one) / ms(none));
}

/// The planning alone, on this machine at native speed: a dry-run backend
/// does everything but talk to the kernel.
fn native_planning() {
    let ctx = Context {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_port_ips: Some(vec![Ipv4Addr::new(10, 0, 2, 15).into()]),
        ..Default::default()
    };
    let mut big = synth(10_000, 5);
    let mut b = Ipvs::new(Family::V4, IpvsSettings::default(), true).unwrap();
    let (full, _) = time(|| b.sync(&big, &ctx, true).unwrap());
    let mut changes = Vec::new();
    for round in 0..7u32 {
        let key = big.endpoints.keys().nth(1234 + round as usize * 97).unwrap().clone();
        big.endpoints.get_mut(&key).unwrap()[2].ip = Ipv4Addr::new(10, 250, round as u8, 1).into();
        changes.push(time(|| b.sync(&big, &ctx, false).unwrap()).0);
    }
    println!(
        "ipvs planning on this machine (no kernel): 10,000 full {:.1} ms, one endpoint with 10,000 {:.2} ms (median of 7)",
        ms(full),
        ms(median(changes))
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "--in-vm") {
        in_vm();
        return;
    }
    native_planning();
    if std::env::var_os("NODELET_BENCH_NATIVE_ONLY").is_some() {
        return;
    }
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/vm.sh");
    let status = std::process::Command::new(script)
        .args(["run", "--timeout", "1800", "--mem", "2048", "--bin", me, "--", me, "--in-vm"])
        .status()
        .expect("run tests/support/vm.sh");
    assert!(status.success(), "the benchmark VM failed: {status}");
}
