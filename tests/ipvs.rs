//! IPVS mode on a real IPVS kernel, with real packets. This machine's kernel
//! has neither IP_VS nor the dummy link type, so the test boots Debian's own
//! kernel under qemu (`tests/support/vm.sh`) and runs itself inside it
//! (`--in-vm`): the VM's root namespace is the node, pods are namespaces on a
//! bridge with small TCP and UDP servers that answer with their names, and a
//! client namespace on a veth is the outside world. The proxy's input is
//! built from real Service and EndpointSlice objects by the same code the
//! watch loop uses (`model::build`), and the IPVS backend is the one
//! `--proxy-mode ipvs` runs. `ipvsadm` and `ip` are the independent
//! witnesses of what the kernel holds.
//!
//! Then three nodes in both families: three namespaces of the VM, each
//! running the proxy's own loop in IPVS mode against one test apiserver,
//! pods behind each node and host-gw routes between them
//! (tests/support/fabric.rs, as tests/proxy.rs's three nodelets).
//!
//! On the host it also checks that a kernel without IPVS gets one clear
//! error naming the module.
//!
//! A test binary of its own (`harness = false`), printing libtest's lines.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodelet::proxy::Context;
use nodelet::proxy::ipvs::{Ipvs, IpvsSettings};
use nodelet::proxy::model::Family;
use nodelet::proxy::model::{self, ProxyState};
use serde_json::{Value, json};

const NODE: &str = "vm-node";

fn main() {
    if support::vm::in_vm() {
        in_vm();
        the_sync_loop_end_to_end();
        three_nodes_in_both_families();
        println!("{}", support::vm::PASSED);
        return;
    }
    support::vm::harness(&[
        ("a_kernel_without_ipvs_is_one_clear_error", a_kernel_without_ipvs_is_one_clear_error),
        ("set_element_transactions_on_this_kernel", set_element_transactions_on_this_kernel),
        ("ipvs_mode_in_a_vm", ipvs_mode_in_a_vm),
    ]);
}

fn a_kernel_without_ipvs_is_one_clear_error() {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        support::skip("a_kernel_without_ipvs_is_one_clear_error", "this kernel has IPVS");
        return;
    }
    let e = Ipvs::new(Family::V4, IpvsSettings::default(), false).err().expect("IPVS mode on a kernel without IPVS must fail");
    let text = e.to_string();
    assert!(text.contains("kernel module ip_vs") && text.contains("modprobe ip_vs"), "{text}");
    // A dry run plans without the kernel.
    assert!(Ipvs::new(Family::V4, IpvsSettings::default(), true).is_ok());
}

/// The IPVS table's set elements change through nf_tables netlink
/// transactions; this kernel has nf_tables, so they are checked here too, in
/// a namespace of the test's own: added and deleted elements as `nft` lists
/// them, and a transaction with one bad change leaves everything as it was.
fn set_element_transactions_on_this_kernel() {
    use nodelet::proxy::ipvs::{TABLE, nfsets, render_ruleset};
    let ns = format!("nlipvs-{}", std::process::id());
    sh("ip", &["netns", "add", &ns]);
    let ns2 = ns.clone();
    let result = std::panic::catch_unwind(move || {
        inside(Some(&ns2), || {
            let ctx = Context::default();
            let initial = [("vips", "10.96.0.1".to_string()), ("hairpin", "10.244.0.7 . 10.244.0.7 . tcp . 8080".to_string())];
            let text = render_ruleset(&ctx, initial.iter());
            let mut nft = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
            nft.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            assert!(nft.wait().unwrap().success());
            let list = |set: &str| sh("nft", &["list", "set", "ip", TABLE, set]);
            nfsets::apply(
                Family::V4,
                TABLE,
                &[
                    ("vips", true, "10.96.0.2"),
                    ("vip-ports", true, "10.96.0.2 . tcp . 80"),
                    ("nodeports", true, "udp . 30053"),
                    ("hairpin", false, "10.244.0.7 . 10.244.0.7 . tcp . 8080"),
                ],
            )
            .unwrap();
            assert!(list("vips").contains("10.96.0.1") && list("vips").contains("10.96.0.2"), "{}", list("vips"));
            assert!(list("vip-ports").contains("10.96.0.2 . tcp . 80"), "{}", list("vip-ports"));
            assert!(list("nodeports").contains("udp . 30053"), "{}", list("nodeports"));
            assert!(!list("hairpin").contains("10.244.0.7"), "{}", list("hairpin"));
            // Deleting an element that is not there fails the transaction,
            // and the addition in it does not happen.
            let e = nfsets::apply(Family::V4, TABLE, &[("vips", true, "10.96.0.3"), ("vips", false, "10.96.0.99")]).unwrap_err();
            assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
            assert!(e.to_string().contains("deleting 10.96.0.99 in set vips"), "the refusal names the element: {e}");
            assert!(!list("vips").contains("10.96.0.3"), "{}", list("vips"));
            // The IPv6 table: its own family in the messages, 16-byte keys.
            let ctx6 = Context { family: Family::V6, ..Default::default() };
            let initial6 = [("vips", "fd00:10:96::1".to_string())];
            let text = render_ruleset(&ctx6, initial6.iter());
            let mut nft = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
            nft.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            assert!(nft.wait().unwrap().success());
            nfsets::apply(
                Family::V6,
                TABLE,
                &[("vips", true, "fd00:10:96::2"), ("vip-ports", true, "fd00:10:96::2 . udp . 53"), ("hairpin", true, "fd00:10:244::7 . fd00:10:244::7 . tcp . 8080"), ("vips", false, "fd00:10:96::1")],
            )
            .unwrap();
            let list6 = |set: &str| sh("nft", &["list", "set", "ip6", TABLE, set]);
            assert!(list6("vips").contains("fd00:10:96::2") && !list6("vips").contains("fd00:10:96::1"), "{}", list6("vips"));
            assert!(list6("vip-ports").contains("fd00:10:96::2 . udp . 53"), "{}", list6("vip-ports"));
            assert!(list6("hairpin").contains("fd00:10:244::7 . fd00:10:244::7 . tcp . 8080"), "{}", list6("hairpin"));
            assert!(list("vips").contains("10.96.0.2"), "the IPv4 table is untouched: {}", list("vips"));
        })
    });
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn ipvs_mode_in_a_vm() {
    support::vm::run_self(900, &[]);
}

// ---- inside the VM ----

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    sh("ip", args);
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Runs `f` on a thread in namespace `ns` (None: the node's).
fn inside<T: Send + 'static>(ns: Option<&str>, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.map(str::to_string);
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            enter(&ns);
        }
        f()
    })
    .join()
    .unwrap()
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + i as u8)
}

fn pod_ns(i: usize) -> String {
    format!("pod{i}")
}

const CLIENT: &str = "client";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);

fn build_lab(pods: usize) {
    ip(&["link", "add", "kbr0", "type", "bridge"]);
    ip(&["addr", "add", "10.244.0.1/24", "dev", "kbr0"]);
    ip(&["link", "set", "kbr0", "up"]);
    for i in 0..pods {
        let ns = pod_ns(i);
        let veth = format!("vp{i}");
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["link", "set", &veth, "master", "kbr0", "up"]);
        ip(&["link", "set", &veth, "type", "bridge_slave", "hairpin", "on"]);
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", "10.244.0.1"]);
        serve_tcp(&ns, &format!("pod-{i}"), 8080);
        serve_lines(&ns, &format!("pod-{i}"), 8081);
        serve_udp(&ns, &format!("pod-{i}"), 5353);
    }
    ip(&["netns", "add", CLIENT]);
    ip(&["-n", CLIENT, "link", "set", "lo", "up"]);
    ip(&["link", "add", "vc0", "type", "veth", "peer", "name", "eth0", "netns", CLIENT]);
    ip(&["addr", "add", "192.168.50.1/24", "dev", "vc0"]);
    ip(&["link", "set", "vc0", "up"]);
    ip(&["-n", CLIENT, "addr", "add", "192.168.50.2/24", "dev", "eth0"]);
    ip(&["-n", CLIENT, "link", "set", "eth0", "up"]);
    ip(&["-n", CLIENT, "route", "add", "default", "via", "192.168.50.1"]);
}

/// Answers every connection with `name` and the peer's address, then
/// closes; on both families.
fn serve_tcp(ns: &str, name: &str, port: u16) {
    let l = inside(Some(ns), move || TcpListener::bind(("::", port)).unwrap());
    let name = name.to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let peer = s.peer_addr().map(|p| p.ip().to_canonical().to_string()).unwrap_or_default();
            let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
        }
    });
}

/// Answers every line of a kept connection with `name`.
fn serve_lines(ns: &str, name: &str, port: u16) {
    let l = inside(Some(ns), move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let name = name.to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    if line.is_err() || w.write_all(format!("{name}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn serve_udp(ns: &str, name: &str, port: u16) {
    let sock = inside(Some(ns), move || UdpSocket::bind(("::", port)).unwrap());
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    });
}

/// One request: (server name, the source address the server saw).
fn get(ns: Option<&str>, to: SocketAddr) -> Result<(String, String), String> {
    inside(ns, move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        answer(s, to)
    })
}

/// `get` from namespace `ns` with source address `from`; a connection
/// nobody answers times out after 3 s.
fn get_from(ns: &str, from: Ipv4Addr, to: SocketAddr) -> Result<(String, String), String> {
    inside(Some(ns), move || answer(support::connect_from(from, to, Duration::from_secs(3))?, to))
}

/// What a server of `serve_tcp` answered on `s`: its name and the peer.
fn answer(mut s: TcpStream, to: SocketAddr) -> Result<(String, String), String> {
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read {to}: {e}"))?;
    let mut w = out.split_whitespace();
    match (w.next(), w.next()) {
        (Some(n), Some(p)) => Ok((n.to_string(), p.to_string())),
        _ => Err(format!("{to} answered {out:?}")),
    }
}

fn name(ns: Option<&str>, to: SocketAddr) -> String {
    get(ns, to).unwrap_or_else(|e| panic!("{e}")).0
}

fn counts(ns: Option<&str>, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(name(ns, to)).or_default() += 1;
    }
    m
}

/// A kept connection to a line server.
struct Kept {
    s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Kept {
    fn open(to: SocketAddr) -> Kept {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        Kept { s, r }
    }
    fn ask(&mut self) -> Result<String, String> {
        self.s.write_all(b"?\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("closed".into());
        }
        Ok(line.trim().to_string())
    }
    /// Closes with a reset, as a client that gives up does: IPVS forgets the
    /// connection in seconds rather than after TIME_WAIT.
    fn reset(self) {
        use std::os::fd::AsRawFd;
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a linger struct of the size given.
        let rc = unsafe {
            libc::setsockopt(self.s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&l as *const libc::linger).cast(), size_of::<libc::linger>() as u32)
        };
        assert_eq!(rc, 0, "SO_LINGER");
    }
}

fn udp_ask(ns: Option<&str>, to: SocketAddr) -> Result<String, String> {
    inside(ns, move || {
        let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
        let sock = UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        sock.send_to(b"?", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf).map_err(|e| format!("no answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// An endpoint: its pod, conditions, and whether the pod is on this node
/// (every pod namespace is reachable from the VM; "elsewhere" only says so).
struct Ep {
    pod: usize,
    ready: bool,
    serving: bool,
    terminating: bool,
    here: bool,
}

/// The cluster's objects, as an apiserver would hand them to the watch.
struct Objects {
    services: BTreeMap<String, Service>,
    slices: BTreeMap<String, EndpointSlice>,
}

impl Objects {
    fn service(&mut self, name: &str, spec: Value) {
        let v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec});
        self.services.insert(name.into(), serde_json::from_value(v).unwrap());
    }
    /// (pod, ready) endpoints; every pod is on this node.
    fn slice(&mut self, svc: &str, eps: &[(usize, bool)], port: u16, protocol: &str) {
        let full: Vec<Ep> = eps.iter().map(|(i, ready)| Ep { pod: *i, ready: *ready, serving: *ready, terminating: false, here: true }).collect();
        self.slice_of(svc, &full, port, protocol);
    }
    fn slice_of(&mut self, svc: &str, eps: &[Ep], port: u16, protocol: &str) {
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|e| {
                json!({"addresses": [pod_ip(e.pod).to_string()], "nodeName": if e.here { NODE } else { "elsewhere" },
                       "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating}})
            })
            .collect();
        let v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": port, "protocol": protocol}]});
        self.slices.insert(svc.into(), serde_json::from_value(v).unwrap());
    }
    fn state(&self) -> ProxyState {
        let mut errors = Vec::new();
        let s = model::build(self.services.values(), self.slices.values(), NODE, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        s
    }
}

fn kube_ipvs0() -> BTreeSet<String> {
    sh("ip", &["-4", "-o", "addr", "show", "dev", "kube-ipvs0"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

/// `ipvsadm -Ln` as (virtual service, [(server, weight)]).
fn ipvsadm() -> BTreeMap<String, Vec<(String, u32)>> {
    let mut out: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    let mut current = None;
    for line in sh("ipvsadm", &["-Ln"]).lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first() {
            Some(&"TCP") | Some(&"UDP") | Some(&"SCTP") => {
                let key = format!("{} {}", w[0], w[1]);
                out.entry(key.clone()).or_default();
                current = Some(key);
            }
            Some(&"->") if w.len() >= 4 && w[1] != "RemoteAddress:Port" => {
                if let Some(k) = &current {
                    out.get_mut(k).unwrap().push((w[1].to_string(), w[3].parse().unwrap_or(0)));
                }
            }
            _ => {}
        }
    }
    out
}

fn step(name: &str) {
    println!("step: {name}");
}

fn settings() -> IpvsSettings {
    IpvsSettings {
        exclude_cidrs: vec!["10.0.9.0/24".parse().unwrap()],
        tcp_timeout: 900,
        tcp_fin_timeout: 120,
        udp_timeout: 300,
        drain_timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

fn in_vm() {
    let started = Instant::now();
    build_lab(4);
    let ctx = Context { cluster_cidr: Some("10.244.0.0/16".parse().unwrap()), ..Default::default() };

    // Leftovers of an earlier proxy: a virtual service and an address
    // nodelet owns and no longer wants, and one in excludeCIDRs.
    step("leftovers");
    sh("ipvsadm", &["-A", "-t", "10.96.9.9:80", "-s", "rr"]);
    sh("ipvsadm", &["-A", "-t", "10.0.9.1:80", "-s", "rr"]);
    ip(&["link", "add", "kube-ipvs0", "type", "dummy"]);
    ip(&["addr", "add", "10.96.9.9/32", "dev", "kube-ipvs0"]);

    let mut o = Objects { services: BTreeMap::new(), slices: BTreeMap::new() };
    o.service("web", json!({"clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.80"], "ports": [{"port": 80, "targetPort": 8080}]}));
    o.slice("web", &[(0, true), (1, true), (2, true), (3, false)], 8080, "TCP");
    o.service("sticky", json!({"type": "NodePort", "clusterIP": "10.96.0.11", "sessionAffinity": "ClientIP",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}));
    o.slice("sticky", &[(0, true), (1, true), (2, true)], 8080, "TCP");
    o.service("dns", json!({"clusterIP": "10.96.0.53", "ports": [{"port": 53, "targetPort": 5353, "protocol": "UDP"}]}));
    o.slice("dns", &[(0, true)], 5353, "UDP");
    o.service("empty", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}));
    o.service("hold", json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8081}]}));
    o.slice("hold", &[(0, true), (1, true)], 8081, "TCP");
    let ep = |pod, here| Ep { pod, ready: true, serving: true, terminating: false, here };
    o.service("local", json!({"type": "NodePort", "clusterIP": "10.96.0.12", "externalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30081}]}));
    o.slice_of("local", &[ep(0, true), ep(1, false)], 8080, "TCP");
    o.service("internal", json!({"clusterIP": "10.96.0.13", "internalTrafficPolicy": "Local", "ports": [{"port": 80, "targetPort": 8080}]}));
    o.slice_of("internal", &[ep(2, true), ep(3, false)], 8080, "TCP");
    o.service("ending", json!({"clusterIP": "10.96.0.14", "ports": [{"port": 80, "targetPort": 8080}]}));
    o.slice_of(
        "ending",
        &[Ep { pod: 1, ready: false, serving: true, terminating: true, here: true }, Ep { pod: 2, ready: false, serving: false, terminating: true, here: true }],
        8080,
        "TCP",
    );

    let mut b = Ipvs::new(Family::V4, settings(), false).expect("open IPVS");
    let t = Instant::now();
    b.sync(&o.state(), &ctx, true).expect("first sync");
    println!("  first sync: {:?}, {} changes", t.elapsed(), b.last_changes.len());

    step("kube-ipvs0 holds exactly the Service addresses");
    let want: BTreeSet<String> = [
        "10.96.0.10/32", "10.96.0.11/32", "10.96.0.12/32", "10.96.0.13/32", "10.96.0.14/32", "10.96.0.20/32", "10.96.0.30/32", "10.96.0.53/32",
        "192.0.2.80/32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kube_ipvs0(), want);
    let table = ipvsadm();
    assert!(!table.contains_key("TCP 10.96.9.9:80"), "the stale virtual service is gone: {table:?}");
    assert!(table.contains_key("TCP 10.0.9.1:80"), "excludeCIDRs is left alone: {table:?}");
    assert_eq!(table["TCP 10.96.0.10:80"].len(), 3, "the not-ready endpoint is no server: {table:?}");
    assert!(table.contains_key("TCP 192.168.50.1:30080") && table.contains_key("TCP 10.244.0.1:30080"), "a NodePort on every node address: {table:?}");
    assert!(!table.keys().any(|k| k.contains("10.96.0.10:30080")), "no NodePort on a Service address: {table:?}");

    step("round robin over every ready endpoint, never the not-ready one");
    let c = counts(None, sa([10, 96, 0, 10], 80), 30);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), ["pod-0", "pod-1", "pod-2"], "{c:?}");
    assert!(c.values().all(|n| *n == 10), "rr gives each server a third: {c:?}");
    let c = counts(Some(CLIENT), sa([192, 0, 2, 80], 80), 6);
    assert_eq!(c.len(), 3, "the externalIP reaches the same servers: {c:?}");

    step("a pod reaches the Service, itself included (hairpin)");
    let c = counts(Some(&pod_ns(0)), sa([10, 96, 0, 10], 80), 9);
    assert_eq!(c.len(), 3, "{c:?}");

    step("NodePort from outside, masqueraded, with ClientIP affinity");
    let first = get(Some(CLIENT), SocketAddr::from((NODE_IP, 30080))).unwrap();
    assert_eq!(first.1, "10.244.0.1", "NodePort traffic is masqueraded to the node's bridge address");
    for _ in 0..8 {
        assert_eq!(name(Some(CLIENT), SocketAddr::from((NODE_IP, 30080))), first.0, "ClientIP affinity keeps one server");
    }
    let c = counts(None, sa([10, 96, 0, 11], 80), 8);
    assert_eq!(c.len(), 1, "affinity on the ClusterIP too: {c:?}");
    let (_, src) = get(Some(&pod_ns(3)), sa([10, 96, 0, 11], 80)).unwrap();
    assert_eq!(src, pod_ip(3).to_string(), "pod-to-Service traffic keeps its source");

    step("traffic policies Local and terminating endpoints");
    for _ in 0..6 {
        let (who, src) = get(Some(CLIENT), SocketAddr::from((NODE_IP, 30081))).unwrap();
        assert_eq!((who.as_str(), src.as_str()), ("pod-0", "192.168.50.2"), "externalTrafficPolicy Local: this node's endpoint, the client's source kept");
    }
    let c = counts(None, sa([10, 96, 0, 12], 80), 6);
    assert_eq!(c.len(), 2, "the ClusterIP of an externally-Local Service reaches every endpoint: {c:?}");
    let c = counts(None, sa([10, 96, 0, 13], 80), 6);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), ["pod-2"], "internalTrafficPolicy Local: this node's endpoint only: {c:?}");
    let c = counts(None, sa([10, 96, 0, 14], 80), 4);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), ["pod-1"], "no ready endpoint: the serving terminating one, not the other: {c:?}");
    let timeouts = sh("ipvsadm", &["-L", "--timeout"]);
    assert!(timeouts.contains("900 120 300"), "ipvs.tcpTimeout/tcpFinTimeout/udpTimeout: {timeouts}");

    step("UDP through the ClusterIP");
    assert_eq!(udp_ask(Some(&pod_ns(2)), sa([10, 96, 0, 53], 53)).unwrap(), "pod-0");
    assert_eq!(udp_ask(None, sa([10, 96, 0, 53], 53)).unwrap(), "pod-0");

    step("no endpoints: rejected at once");
    let t = Instant::now();
    let e = TcpStream::connect_timeout(&sa([10, 96, 0, 20], 80), Duration::from_secs(3)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));

    step("a VIP answers only on its Services' ports");
    let l = TcpListener::bind(("0.0.0.0", 9999)).unwrap();
    std::thread::spawn(move || for _ in l.incoming() {});
    let connect = |ns: Option<&str>, to: SocketAddr| inside(ns, move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()));
    assert!(connect(Some(CLIENT), SocketAddr::from((NODE_IP, 9999))).is_ok(), "the node's own address serves the port");
    let e = connect(Some(CLIENT), sa([10, 96, 0, 10], 9999)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "through a VIP from outside: refused: {e}");
    // The node's own connections reach a local address through INPUT too.
    let e = connect(None, sa([10, 96, 0, 10], 9999)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "through a VIP from the node: refused: {e}");

    step("endpoint changes under continuous traffic lose no connection");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match get(None, sa([10, 96, 0, 10], 80)) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("  lost: {e}");
                        bad.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    o.slice("web", &[(0, true), (1, true), (2, true), (3, true)], 8080, "TCP");
    let t = Instant::now();
    b.sync(&o.state(), &ctx, false).unwrap();
    println!("  one endpoint added: {:?}: {:?}", t.elapsed(), b.last_changes);
    std::thread::sleep(Duration::from_millis(500));
    o.slice("web", &[(1, true), (2, true), (3, true)], 8080, "TCP");
    b.sync(&o.state(), &ctx, false).unwrap();
    println!("  one endpoint removed: {:?}", b.last_changes);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    println!("  {} requests during the changes", ok.load(Ordering::Relaxed));
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 10);
    let c = counts(None, sa([10, 96, 0, 10], 80), 12);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), ["pod-1", "pod-2", "pod-3"], "the removed server takes no new connection: {c:?}");
    let c = counts(Some(&pod_ns(3)), sa([10, 96, 0, 10], 80), 9);
    assert_eq!(c.len(), 3, "the added endpoint reaches itself too (its hairpin element came in a set transaction): {c:?}");

    step("a removed server's open connection survives its drain");
    let hold = sa([10, 96, 0, 30], 80);
    let mut kept = Kept::open(hold);
    let x = kept.ask().unwrap();
    let (xi, other) = if x == "pod-0" { (0, 1) } else { (1, 0) };
    o.slice("hold", &[(other, true)], 8081, "TCP");
    b.sync(&o.state(), &ctx, false).unwrap();
    let servers = ipvsadm()["TCP 10.96.0.30:80"].clone();
    assert!(servers.contains(&(format!("{}:8081", pod_ip(xi)), 0)), "weight 0 while draining: {servers:?}");
    assert_eq!(kept.ask().unwrap(), x, "the connection in flight still reaches its server");
    for _ in 0..4 {
        assert_eq!(Kept::open(hold).ask().unwrap(), format!("pod-{other}"), "no new connection to the draining server");
    }
    assert!(b.recheck().is_some());
    kept.reset();
    let t = Instant::now();
    loop {
        // What the sync loop does between syncs while servers drain.
        std::thread::sleep(b.recheck().expect("a server is draining"));
        b.drain().unwrap();
        if ipvsadm()["TCP 10.96.0.30:80"].len() == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the drained server was not deleted: {:?}", ipvsadm());
    }
    println!("  drained and deleted {:?} after the connection closed", t.elapsed());

    step("a restart adopts the table without a flush");
    let mut kept = Kept::open(hold);
    assert_eq!(kept.ask().unwrap(), format!("pod-{other}"));
    // web's first server may still be draining (its closed connections
    // linger in TIME_WAIT); the new process may delete it, nothing else.
    let draining = format!("{}:8080", pod_ip(0));
    let without_draining = |mut t: BTreeMap<String, Vec<(String, u32)>>| {
        for servers in t.values_mut() {
            servers.retain(|(s, w)| !(*s == draining && *w == 0));
        }
        t
    };
    let before = without_draining(ipvsadm());
    drop(b);
    let mut b = Ipvs::new(Family::V4, settings(), false).unwrap();
    b.sync(&o.state(), &ctx, true).unwrap();
    assert!(
        b.last_changes.iter().all(|l| *l == format!("ipvs delete server tcp 10.96.0.10:80 -> {draining}")),
        "nothing to change after a restart: {:?}",
        b.last_changes
    );
    assert_eq!(without_draining(ipvsadm()), before);
    assert_eq!(kept.ask().unwrap(), format!("pod-{other}"), "the connection in flight survives the restart");

    step("a deleted Service goes with its address and NodePorts");
    o.services.remove("sticky");
    o.slices.remove("sticky");
    b.sync(&o.state(), &ctx, false).unwrap();
    assert!(!kube_ipvs0().contains("10.96.0.11/32"));
    assert!(!ipvsadm().keys().any(|k| k.contains(":30080") || k.contains("10.96.0.11")), "{:?}", ipvsadm());
    let e = TcpStream::connect_timeout(&SocketAddr::from((NODE_IP, 30080)), Duration::from_secs(2)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    step("one endpoint the kernel refuses stalls no other Service");
    // IPVS refuses a multicast real server (EINVAL). The Service planned
    // first in the sync and one planned after it in the same sync.
    o.service("amulticast", json!({"clusterIP": "10.96.0.60", "ports": [{"port": 80, "targetPort": 8080}]}));
    let bad = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "amulticast-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "amulticast"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["239.1.1.1"], "conditions": {"ready": true}}, {"addresses": [pod_ip(1).to_string()], "conditions": {"ready": true}}],
        "ports": [{"port": 8080, "protocol": "TCP"}]});
    o.slices.insert("amulticast".into(), serde_json::from_value(bad).unwrap());
    o.service("zafter", json!({"clusterIP": "10.96.0.61", "ports": [{"port": 80, "targetPort": 8080}]}));
    o.slice("zafter", &[(2, true)], 8080, "TCP");
    b.sync(&o.state(), &ctx, false).expect("a refused server does not fail the sync");
    assert_eq!(name(None, sa([10, 96, 0, 61], 80)), "pod-2", "the Service after the refused one is programmed");
    let reports = b.take_reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].services, [("default".to_string(), "amulticast".to_string())]);
    assert!(reports[0].message.contains("239.1.1.1"), "{reports:?}");
    assert_eq!(b.refused_now(), 1);
    b.sync(&o.state(), &ctx, false).unwrap();
    assert!(b.take_reports().is_empty(), "one report per object, not one per sync");
    // The bad endpoint goes: once its back-off is over, the Service is whole.
    o.slice("amulticast", &[(1, true)], 8080, "TCP");
    std::thread::sleep(b.retry_in().unwrap_or_default() + Duration::from_millis(50));
    b.sync(&o.state(), &ctx, false).unwrap();
    assert_eq!(b.refused_now(), 0, "retried and accepted");
    assert_eq!(name(None, sa([10, 96, 0, 60], 80)), "pod-1");

    step("loadBalancerSourceRanges: a client inside passes, one outside is dropped");
    ip(&["-n", CLIENT, "addr", "add", "192.168.50.3/24", "dev", "eth0"]);
    let guarded = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "guarded", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.70", "loadBalancerSourceRanges": ["192.168.50.2/32"],
                 "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30090}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}});
    o.services.insert("guarded".into(), serde_json::from_value(guarded).unwrap());
    o.slice("guarded", &[(2, true)], 8080, "TCP");
    b.sync(&o.state(), &ctx, false).unwrap();
    let lb = sa([203, 0, 113, 10], 80);
    let (inside_ip, outside_ip) = (Ipv4Addr::new(192, 168, 50, 2), Ipv4Addr::new(192, 168, 50, 3));
    assert_eq!(get_from(CLIENT, inside_ip, lb).map(|a| a.0), Ok("pod-2".to_string()), "inside the ranges");
    let dropped = get_from(CLIENT, outside_ip, lb);
    assert!(dropped.as_ref().is_err_and(|e| e.contains("timed out")), "outside the ranges: {dropped:?}");
    assert_eq!(get_from(CLIENT, outside_ip, SocketAddr::from((NODE_IP, 30090))).map(|a| a.0), Ok("pod-2".to_string()), "the node port is open");

    step("cleanup leaves nothing");
    drop(b);
    nodelet::proxy::ipvs::cleanup().unwrap();
    assert!(ipvsadm().is_empty(), "{:?}", ipvsadm());
    assert!(!Command::new("ip").args(["link", "show", "kube-ipvs0"]).output().unwrap().status.success());
    assert!(!Command::new("nft").args(["list", "table", "ip", "nodelet-ipvs"]).output().unwrap().status.success());
    println!("  in the VM: {:?}", started.elapsed());
}

/// The proxy's own loop, as `--proxy-mode ipvs` runs it inside nodelet: the
/// test apiserver (in a namespace of its own in the VM), Service and
/// EndpointSlice watches, the IPVS backend opened and synced on the
/// runtime's blocking threads, changes through the API reaching the kernel.
fn the_sync_loop_end_to_end() {
    use k8s_openapi::api::core::v1::Service as Svc;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
    step("the sync loop end to end: watches, IPVS on the runtime's blocking threads");
    ip(&["netns", "add", "apins"]);
    ip(&["-n", "apins", "link", "set", "lo", "up"]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let api = support::apiserver::ApiServer::start("apins").await;
        let client = api.client().await;
        let services: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<Svc>(&()));
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<EndpointSlice>(&()));
        let obj = |v: Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
        let slice = |pods: &[usize]| {
            let eps: Vec<Value> = pods
                .iter()
                .map(|i| json!({"addresses": [pod_ip(*i).to_string()], "nodeName": NODE, "conditions": {"ready": true}}))
                .collect();
            obj(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "e2e-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "e2e"}},
                "addressType": "IPv4", "endpoints": eps, "ports": [{"port": 8080, "protocol": "TCP"}]}))
        };
        services
            .create(&PostParams::default(), &obj(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "e2e", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.40", "ports": [{"port": 80, "targetPort": 8080}]}})))
            .await
            .unwrap();
        slices.create(&PostParams::default(), &slice(&[1])).await.unwrap();
        let config = nodelet::config::proxy::ProxyConfig {
            cluster_cidr: Some("10.244.0.0/16".into()),
            healthz_bind_address: Some(String::new()),
            metrics_bind_address: Some(String::new()),
            ..Default::default()
        };
        let settings = nodelet::proxy::resolve(Some("ipvs"), Some(&config), NODE, &[], false).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(nodelet::proxy::run::run(client.clone(), settings, Some(tx), Default::default(), None));
        tokio::time::timeout(Duration::from_secs(60), rx).await.expect("the first sync within a minute").unwrap();
        let vip = sa([10, 96, 0, 40], 80);
        let answer = tokio::task::spawn_blocking(move || name(None, vip)).await.unwrap();
        assert_eq!(answer, "pod-1");
        // An endpoint added through the API reaches the kernel.
        let mut new = slice(&[1, 2]);
        let old = slices.get("e2e-1").await.unwrap();
        new.metadata.resource_version = old.metadata.resource_version;
        slices.replace("e2e-1", &PostParams::default(), &new).await.unwrap();
        let t = Instant::now();
        loop {
            let c = tokio::task::spawn_blocking(move || counts(None, vip, 6)).await.unwrap();
            if c.len() == 2 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "the new endpoint never answered: {c:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The Service deleted through the API: its address and virtual service go.
        services.delete("e2e", &DeleteParams::default()).await.unwrap();
        let t = Instant::now();
        while kube_ipvs0().contains("10.96.0.40/32") || ipvsadm().contains_key("TCP 10.96.0.40:80") {
            assert!(t.elapsed() < Duration::from_secs(20), "the deleted Service stayed: {:?}", ipvsadm());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        task.abort();
        let _ = task.await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    nodelet::proxy::ipvs::cleanup().unwrap();
    let _ = Command::new("ip").args(["netns", "del", "apins"]).status();
}

/// Three nodes in both families, IPVS mode as nodelet runs it: each node a
/// namespace of the VM with its own IPVS table, kube-ipvs0 and nftables
/// tables, running the proxy's own loop (Service and EndpointSlice watches
/// of one test apiserver, one IPVS backend per family); pods behind each
/// node, host-gw routes between the pod CIDRs, a client outside behind
/// node 0. Real TCP and UDP through ClusterIPs from a pod on one node to
/// pods on the others, a node port of one node reaching every node's pods,
/// externalTrafficPolicy Local answering with the client's own address
/// only where an endpoint is; in IPv4 and IPv6. Both families' backends
/// share each node's kernel table and link: each owns its family only (the
/// IPv6 backend's first full sync runs after the IPv4 one's, and IPv4
/// traffic still flows).
fn three_nodes_in_both_families() {
    use kube::api::{Api, ApiResource, DynamicObject, PostParams};
    use support::fabric::{Fabric, fabric_pod, fabric_pod6, node_addr, node_addr6};
    step("three nodes, both families: the proxy's loop in each node's namespace");
    let nodes = ["vmn0", "vmn1", "vmn2"];
    let names: Vec<String> = (0..3).map(|n| format!("vm-node-{n}")).collect();
    for ns in nodes.iter().chain(&["apins3"]) {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let fabric = Fabric::build("vm", &nodes);
    for (n, pods) in fabric.pods.iter().enumerate() {
        for (i, ns) in pods.iter().enumerate() {
            serve_tcp(ns, &format!("n{n}-p{i}"), 8080);
            serve_udp(ns, &format!("n{n}-p{i}"), 5353);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let api = rt.block_on(support::apiserver::ApiServer::start("apins3"));
    api.set_service_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]);
    let kubeconfig = api.cert_kubeconfig(&api.admin);
    rt.block_on(async {
        let client = api.client().await;
        let obj = |v: Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
        let services: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<Service>(&()));
        let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<EndpointSlice>(&()));
        let service = |name: &str, spec: Value| obj(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec}));
        let slice = |family: &str, svc: &str, eps: &[(usize, usize)], ports: Value| {
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|(n, i)| {
                    let addr = if family == "IPv6" { fabric_pod6(*n, *i).to_string() } else { fabric_pod(*n, *i).to_string() };
                    json!({"addresses": [addr], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": format!("vm-node-{n}")})
                })
                .collect();
            let suffix = if family == "IPv6" { "6" } else { "4" };
            obj(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{svc}-{suffix}"), "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
                "addressType": family, "endpoints": endpoints, "ports": ports}))
        };
        let pp = PostParams::default();
        let tcp = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        let far = [(1, 0), (1, 1), (2, 0)];
        services.create(&pp, &service("far", json!({"type": "NodePort", "clusterIPs": ["10.96.0.80", "fd00:10:96::80"], "clusterIP": "10.96.0.80",
            "ipFamilyPolicy": "RequireDualStack", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30180}]}))).await.unwrap();
        services.create(&pp, &service("dns", json!({"clusterIPs": ["10.96.0.53", "fd00:10:96::53"], "clusterIP": "10.96.0.53", "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}))).await.unwrap();
        services.create(&pp, &service("edge", json!({"type": "NodePort", "clusterIPs": ["10.96.0.81", "fd00:10:96::81"], "clusterIP": "10.96.0.81",
            "ipFamilyPolicy": "RequireDualStack", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30191}]}))).await.unwrap();
        for family in ["IPv4", "IPv6"] {
            slices.create(&pp, &slice(family, "far", &far, tcp.clone())).await.unwrap();
            slices.create(&pp, &slice(family, "dns", &[(2, 1)], json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]))).await.unwrap();
            slices.create(&pp, &slice(family, "edge", &[(1, 1)], tcp.clone())).await.unwrap();
        }
    });
    // Each node's proxy: a runtime on a thread in the node's namespace (its
    // worker and blocking threads are made there too), until told to stop.
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    for n in 0..3 {
        let (ns, name, kubeconfig, ready) = (nodes[n].to_string(), names[n].clone(), kubeconfig.clone(), ready_tx.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop_tx);
        threads.push(std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let client = support::apiserver::client_in_netns(&kubeconfig, "apins3").await;
                let config = nodelet::config::proxy::ProxyConfig {
                    cluster_cidr: Some("10.244.0.0/16,fd00:10:244::/56".into()),
                    healthz_bind_address: Some(String::new()),
                    metrics_bind_address: Some(String::new()),
                    ..Default::default()
                };
                let node_ips = [node_addr(n).to_string(), node_addr6(n).to_string()];
                let settings = nodelet::proxy::resolve(Some("ipvs"), Some(&config), &name, &node_ips, false).unwrap();
                let families: Vec<Family> = settings.contexts.iter().map(|c| c.family).collect();
                assert_eq!(families, [Family::V4, Family::V6], "IPVS mode serves both families");
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(nodelet::proxy::run::run(client, settings, Some(tx), Default::default(), None));
                tokio::time::timeout(Duration::from_secs(60), rx).await.expect("the first sync within a minute").unwrap();
                ready.send(n).unwrap();
                let _ = stop_rx.await;
                task.abort();
                let _ = task.await;
            });
            rt.shutdown_timeout(Duration::from_secs(5));
        }));
    }
    for _ in 0..3 {
        ready_rx.recv_timeout(Duration::from_secs(90)).expect("every node's first sync");
    }
    // What each node's kernel holds: both families' virtual services and
    // addresses, side by side.
    for (n, ns) in nodes.iter().enumerate() {
        let table = inside(Some(ns), ipvsadm);
        let np4 = format!("TCP {}:30180", node_addr(n));
        let np6 = format!("TCP [{}]:30180", node_addr6(n));
        for vs in ["TCP 10.96.0.80:80", "TCP [fd00:10:96::80]:80", "UDP 10.96.0.53:53", "UDP [fd00:10:96::53]:53", &np4, &np6] {
            assert!(table.contains_key(vs), "{ns}: {vs} missing: {table:?}");
        }
        let addrs = sh("ip", &["-n", ns, "-o", "addr", "show", "dev", "kube-ipvs0"]);
        assert!(addrs.contains("10.96.0.80/32") && addrs.contains("fd00:10:96::80/128"), "{ns}: {addrs}");
    }
    let pod0 = fabric.pods[0][0].clone();
    let client = fabric.client.clone();
    let responders = |ns: &str, to: SocketAddr, n: usize| -> BTreeSet<String> {
        (0..n).map(|_| get(Some(ns), to).unwrap_or_else(|e| panic!("{to} from {ns}: {e}")).0).collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    for family in [Family::V4, Family::V6] {
        let (vip, dns, pod0_ip, client_ip): (IpAddr, IpAddr, IpAddr, IpAddr) = match family {
            Family::V4 => ([10, 96, 0, 80].into(), [10, 96, 0, 53].into(), fabric_pod(0, 0).into(), [192, 168, 50, 2].into()),
            Family::V6 => (
                "fd00:10:96::80".parse().unwrap(),
                "fd00:10:96::53".parse().unwrap(),
                fabric_pod6(0, 0).into(),
                "fd00:50::2".parse().unwrap(),
            ),
        };
        let node = |n: usize| -> IpAddr { if family == Family::V4 { node_addr(n).into() } else { node_addr6(n).into() } };
        step(&format!("{family}: ClusterIP across nodes, the pod's own address arriving"));
        let web = SocketAddr::new(vip, 80);
        assert_eq!(responders(&pod0, web, 30), set(&["n1-p0", "n1-p1", "n2-p0"]), "{family}: every endpoint, all on other nodes");
        assert_eq!(get(Some(&pod0), web).unwrap().1, pod0_ip.to_string(), "{family}: no masquerade inside the cluster CIDR");
        step(&format!("{family}: UDP across nodes"));
        assert_eq!(udp_ask(Some(&pod0), SocketAddr::new(dns, 53)).unwrap(), "n2-p1", "{family}");
        step(&format!("{family}: a node port reaching every node's endpoints, masqueraded"));
        let np = SocketAddr::new(node(2), 30180);
        assert_eq!(responders(&client, np, 30), set(&["n1-p0", "n1-p1", "n2-p0"]), "{family}: node 2's node port");
        let (who, seen) = get(Some(&client), SocketAddr::new(node(0), 30180)).unwrap();
        assert!(who.starts_with("n1-") || who.starts_with("n2-"), "{family}: node 0's node port, no endpoint there: {who}");
        assert_eq!(seen, node(0).to_string(), "{family}: masqueraded to node 0's own address, so the answer returns through it");
        step(&format!("{family}: externalTrafficPolicy Local"));
        let (who, seen) = get(Some(&client), SocketAddr::new(node(1), 30191)).unwrap();
        assert_eq!((who.as_str(), seen), ("n1-p1", client_ip.to_string()), "{family}: node 1 answers with the client's own address kept");
        let elsewhere = get(Some(&client), SocketAddr::new(node(0), 30191));
        assert!(elsewhere.is_err(), "{family}: node 0 has no endpoint of it: {elsewhere:?}");
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for t in threads {
        t.join().unwrap();
    }
    step("a restart adopts both families' virtual services and addresses without a change");
    let (svcs, slcs) = rt.block_on(async {
        let c = api.client().await;
        let svcs = kube::Api::<Service>::namespaced(c.clone(), "default").list(&Default::default()).await.unwrap().items;
        let slcs = kube::Api::<EndpointSlice>::namespaced(c, "default").list(&Default::default()).await.unwrap().items;
        (svcs, slcs)
    });
    let mut errors = Vec::new();
    let state = model::build(svcs.iter(), slcs.iter(), "vm-node-1", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    inside(Some(nodes[1]), move || {
        let config = nodelet::config::proxy::ProxyConfig { cluster_cidr: Some("10.244.0.0/16,fd00:10:244::/56".into()), ..Default::default() };
        let node_ips = [node_addr(1).to_string(), node_addr6(1).to_string()];
        let settings = nodelet::proxy::resolve(Some("ipvs"), Some(&config), "vm-node-1", &node_ips, false).unwrap();
        for ctx in &settings.contexts {
            let mut b = Ipvs::new(ctx.family, settings.ipvs.clone(), false).unwrap();
            b.sync(&state, ctx, true).unwrap();
            assert!(b.last_changes.is_empty(), "{}: a restart changed {:?}", ctx.family, b.last_changes);
            assert_eq!(b.refused_now(), 0);
        }
    });
    step("cleanup on every node leaves nothing of either family");
    for ns in nodes {
        inside(Some(ns), || nodelet::proxy::ipvs::cleanup().unwrap());
        assert!(inside(Some(ns), ipvsadm).is_empty(), "{ns}");
        for family in ["ip", "ip6"] {
            let left = inside(Some(ns), move || Command::new("nft").args(["list", "table", family, "nodelet-ipvs"]).output().unwrap());
            assert!(!left.status.success(), "{ns}: table {family} nodelet-ipvs is left");
        }
    }
    drop(api);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(fabric);
    for ns in nodes.iter().chain(&["apins3"]) {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}
