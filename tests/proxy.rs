//! The Service proxy with real traffic. Each test builds a small network in
//! namespaces it creates and removes: the node's namespace (where nodelet
//! and its rules live, joined to the test apiserver), a client namespace
//! on a veth, and pod namespaces on a bridge, each running a small TCP and
//! UDP server that answers with its name. Every link has an IPv4 and an
//! IPv6 address. The host's rules are never touched. The same checks run
//! in iptables and in nftables mode, and a dual-stack cluster's Services
//! in both families.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::fabric::{Fabric, fabric_pod, fabric_pod6, node_addr, node_addr6};
use support::{eventually, eventually_saw, in_netns};

const S: Duration = Duration::from_secs(1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// The client and pod namespaces around a node namespace.
struct Lab {
    client: String,
    pods: Vec<String>,
}

impl Lab {
    fn build(node_ns: &str, id: &str, pods: usize) -> Lab {
        let client = format!("nlc-{id}");
        let lab = Lab { client: client.clone(), pods: (0..pods).map(|i| format!("nlp-{id}-{i}")).collect() };
        ip(&["-n", node_ns, "link", "add", "kbr0", "type", "bridge"]);
        ip(&["-n", node_ns, "addr", "add", "10.244.0.1/24", "dev", "kbr0"]);
        ip(&["-n", node_ns, "addr", "add", "fd00:10:244::1/64", "dev", "kbr0", "nodad"]);
        ip(&["-n", node_ns, "link", "set", "kbr0", "up"]);
        for (i, ns) in lab.pods.iter().enumerate() {
            let veth = format!("vp{i}");
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", node_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
            ip(&["-n", node_ns, "link", "set", &veth, "master", "kbr0", "up"]);
            // As the CNI bridge plugin's hairpinMode: with br_netfilter, a
            // pod's packet DNATed back to itself is bridged out of the port
            // it came in on.
            ip(&["-n", node_ns, "link", "set", &veth, "type", "bridge_slave", "hairpin", "on"]);
            ip(&["-n", ns, "addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "route", "add", "default", "via", "10.244.0.1"]);
            ip(&["-n", ns, "addr", "add", &format!("{}/64", pod_ip6(i)), "dev", "eth0", "nodad"]);
            ip(&["-n", ns, "-6", "route", "add", "default", "via", "fd00:10:244::1"]);
        }
        ip(&["netns", "add", &client]);
        ip(&["-n", &client, "link", "set", "lo", "up"]);
        ip(&["-n", node_ns, "link", "add", "vc0", "type", "veth", "peer", "name", "eth0", "netns", &client]);
        ip(&["-n", node_ns, "addr", "add", "192.168.50.1/24", "dev", "vc0"]);
        ip(&["-n", node_ns, "link", "set", "vc0", "up"]);
        ip(&["-n", &client, "addr", "add", "192.168.50.2/24", "dev", "eth0"]);
        ip(&["-n", &client, "link", "set", "eth0", "up"]);
        ip(&["-n", &client, "route", "add", "default", "via", "192.168.50.1"]);
        ip(&["-n", node_ns, "addr", "add", "fd00:50::1/64", "dev", "vc0", "nodad"]);
        ip(&["-n", &client, "addr", "add", "fd00:50::2/64", "dev", "eth0", "nodad"]);
        ip(&["-n", &client, "-6", "route", "add", "default", "via", "fd00:50::1"]);
        // A node has a default route; cluster IPs are routed by it before
        // the OUTPUT chain rewrites them.
        ip(&["-n", node_ns, "route", "add", "default", "via", "192.168.50.2"]);
        ip(&["-n", node_ns, "-6", "route", "add", "default", "via", "fd00:50::2"]);
        in_netns(node_ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("ip_forward in the node namespace");
        in_netns(node_ns, || std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")).expect("IPv6 forwarding in the node namespace");
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain([&self.client]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + i as u8)
}

fn pod_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x10 + i as u16)
}

/// A TCP server answering every connection with `name`, on both families
/// (an IPv6 socket takes IPv4 too).
fn serve_tcp(ns: &str, name: &str, port: u16) {
    let listener = in_netns(ns, move || TcpListener::bind(("::", port))).expect("bind a pod's TCP server");
    let name = name.to_string();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(format!("{name}\n").as_bytes());
        }
    });
}

/// A UDP server answering every datagram with `name`, on both families.
fn serve_udp(ns: &str, name: &str, port: u16) {
    let sock = in_netns(ns, move || UdpSocket::bind(("::", port))).expect("bind a pod's UDP server");
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    });
}

/// One TCP request from namespace `ns`: the server's answer.
fn tcp_get(ns: &str, to: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read {to}: {e}"))?;
        Ok(out.trim().to_string())
    })
}

/// One TCP request from namespace `ns` with source address `from`: the
/// server's answer. A connection nobody answers times out after 2 s.
fn tcp_get_from(ns: &str, from: Ipv4Addr, to: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || {
        let mut s = support::connect_from(from, to, Duration::from_secs(2))?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read {to}: {e}"))?;
        Ok(out.trim().to_string())
    })
}

/// An HTTP GET from namespace `ns`: (status, body).
fn http_get(ns: &str, to: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("no status line: {out}"))?;
        Ok((code, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    })
}

/// A UDP question from a fixed source port (so conntrack sees one flow).
fn udp_ask(ns: &str, from_port: u16, to: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || {
        let any: IpAddr = if to.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        let sock = UdpSocket::bind((any, from_port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(700))).map_err(|e| e.to_string())?;
        sock.send_to(b"?", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, _) = sock.recv_from(&mut buf).map_err(|e| format!("no answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn responders(ns: &str, to: SocketAddr, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| tcp_get(ns, to).unwrap_or_else(|e| panic!("{e}"))).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn dynamic<K: kube::Resource<DynamicType = ()>>(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "default", &ApiResource::erase::<K>(&()))
}

async fn create<K: kube::Resource<DynamicType = ()>>(client: &kube::Client, obj: Value) {
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    dynamic::<K>(client).create(&PostParams::default(), &obj).await.unwrap();
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// An EndpointSlice for `svc`: (pod index, ready, on this node) per endpoint.
fn slice(name: &str, svc: &str, node: &str, eps: &[(usize, bool, bool)], ports: Value) -> Value {
    slice_of("IPv4", name, svc, node, eps, ports)
}

/// [`slice`] of a family (`IPv4`, `IPv6`): the pods' addresses of that family.
fn slice_of(family: &str, name: &str, svc: &str, node: &str, eps: &[(usize, bool, bool)], ports: Value) -> Value {
    let addr = |i: usize| if family == "IPv6" { pod_ip6(i).to_string() } else { pod_ip(i).to_string() };
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(i, ready, local)| {
            json!({"addresses": [addr(*i)], "conditions": {"ready": ready, "serving": ready, "terminating": false},
                   "nodeName": if *local { node.to_string() } else { "elsewhere".to_string() }})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
           "addressType": family, "endpoints": endpoints, "ports": ports})
}

/// The proxy's configuration for these tests: `mode`, the pods' CIDR, and
/// `extra` lines (see `Cluster::proxy_config`).
fn proxy_config(c: &Cluster, mode: &str, node: &str, extra: &str) -> std::path::PathBuf {
    c.proxy_config(mode, node, &format!("clusterCIDR: 10.244.0.0/16\n{extra}"))
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

async fn traffic(mode: &str) {
    let c = Cluster::start().await;
    let id = c.node.id.clone();
    let lab = Lab::build(&c.node.netns, &id, 4);
    for (i, ns) in lab.pods.iter().enumerate() {
        serve_tcp(ns, &format!("pod-{i}"), 8080);
        serve_udp(ns, &format!("pod-{i}"), 5353);
    }
    let node = c.node.node_name();
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let plain = json!([{"port": 8080, "protocol": "TCP"}]);
    let client = &c.client;
    create::<Service>(client, service("web", json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice("web-1", "web", &node, &[(0, true, true), (1, true, true), (2, true, false), (3, false, true)], http.clone())).await;
    create::<Service>(client, service("sticky", json!({"type": "NodePort", "clusterIP": "10.96.0.11", "sessionAffinity": "ClientIP",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}))).await;
    create::<EndpointSlice>(client, slice("sticky-1", "sticky", &node, &[(0, true, true), (1, true, true), (2, true, false)], plain.clone())).await;
    create::<Service>(client, service("local", json!({"type": "NodePort", "clusterIP": "10.96.0.12", "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32100, "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30081}]}))).await;
    create::<EndpointSlice>(client, slice("local-1", "local", &node, &[(0, true, true), (1, true, true), (2, true, false)], plain.clone())).await;
    create::<Service>(client, service("dns", json!({"clusterIP": "10.96.0.53", "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}))).await;
    let udp = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
    create::<EndpointSlice>(client, slice("dns-1", "dns", &node, &[(0, true, true)], udp.clone())).await;
    // The seed's invalid Services, and slices that do not decode or validate.
    create::<Service>(client, service("bad-proto", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80, "protocol": "tcp"}]}))).await;
    create::<Service>(client, service("bad-port", json!({"clusterIP": "10.96.0.21", "ports": [{"port": "eighty"}]}))).await;
    create::<Service>(client, service("bad-affinity", json!({"clusterIP": "10.96.0.22", "sessionAffinity": "CientIP", "ports": [{"port": 80}]}))).await;
    let mut bad_slice = slice("web-bad", "web", &node, &[(0, true, true)], http.clone());
    bad_slice["endpoints"][0]["addresses"] = json!(["not-an-ip"]);
    create::<EndpointSlice>(client, bad_slice).await;

    // kube-proxy's own identity, as the seed deploys it.
    let config = proxy_config(&c, mode, &node, "metricsBindAddress: 127.0.0.1:10249\n");
    let mut agent = c.join_with(&["--proxy-config", config.to_str().unwrap()]).await;
    eventually(20 * S, "the proxy's access check", || async {
        agent.log().contains("the proxy role has every permission it needs").then_some(())
    })
    .await;
    assert!(c.api.requests_by("system:kube-proxy") > 0, "the proxy watches with its own identity");

    // ClusterIP: every ready backend answers, the not-ready one never.
    let web = sa([10, 96, 0, 10], 80);
    eventually(30 * S, "the web ClusterIP answering", || async { tcp_get(&lab.client, web).ok() }).await;
    assert_eq!(responders(&lab.client, web, 60), set(&["pod-0", "pod-1", "pod-2"]), "from the client namespace");
    let from_node = tcp_get(&c.node.netns, web).unwrap();
    assert!(from_node.starts_with("pod-"), "from the node itself: {from_node}");
    let from_pod = tcp_get(&lab.pods[3], web).unwrap();
    assert!(from_pod.starts_with("pod-"), "from a pod: {from_pod}");

    // Hairpin: an endpoint reaching itself through its Service (masqueraded,
    // or its own address would answer itself and the connection hang).
    create::<Service>(client, service("self", json!({"clusterIP": "10.96.0.40", "ports": [{"port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice("self-1", "self", &node, &[(1, true, true)], plain.clone())).await;
    let own = sa([10, 96, 0, 40], 80);
    eventually(10 * S, "the endpoint reaching itself through its Service", || async {
        (tcp_get(&lab.pods[1], own).ok().as_deref() == Some("pod-1")).then_some(())
    })
    .await;

    // NodePort with ClientIP affinity: one client, one backend.
    let sticky = responders(&lab.client, SocketAddr::from((NODE_IP, 30080)), 25);
    assert_eq!(sticky.len(), 1, "affinity keeps one backend: {sticky:?}");
    // Node ports on localhost: iptables mode with kube-proxy's default
    // localhostNodePorts (route_localnet), never in nftables mode.
    let on_lo = tcp_get(&c.node.netns, sa([127, 0, 0, 1], 30080));
    if mode == "iptables" {
        assert!(on_lo.as_ref().is_ok_and(|r| r.starts_with("pod-")), "a node port on 127.0.0.1: {on_lo:?}");
        let sysctl = in_netns(&c.node.netns, || std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet").unwrap());
        assert_eq!(sysctl.trim(), "1");
    } else {
        assert!(on_lo.is_err(), "nftables mode serves no node port on localhost, as kube-proxy's: {on_lo:?}");
    }

    // externalTrafficPolicy Local: only local endpoints, and the health check counts them.
    let local = responders(&lab.client, SocketAddr::from((NODE_IP, 30081)), 40);
    assert_eq!(local, set(&["pod-0", "pod-1"]), "only this node's endpoints");
    let (code, body) = http_get(&lab.client, SocketAddr::from((NODE_IP, 32100)), "/").unwrap();
    assert_eq!(code, 200, "{body}");
    let hc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hc["localEndpoints"], 2, "{body}");
    assert_eq!(hc["service"]["name"], "local");

    // loadBalancerSourceRanges: the load-balancer IP lets in a client inside
    // the ranges and drops one outside them (the same client namespace with
    // a second address); the Service's other ways in are not restricted.
    ip(&["-n", &lab.client, "addr", "add", "192.168.50.3/24", "dev", "eth0"]);
    create::<Service>(client, service("guarded", json!({"type": "LoadBalancer", "clusterIP": "10.96.0.42",
        "loadBalancerSourceRanges": ["192.168.50.2/32", "10.99.0.0/16"], "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30090}]}))).await;
    create::<EndpointSlice>(client, slice("guarded-1", "guarded", &node, &[(2, true, true)], plain.clone())).await;
    dynamic::<Service>(client)
        .patch_status("guarded", &PatchParams::default(), &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}})))
        .await
        .unwrap();
    let lb = sa([203, 0, 113, 10], 80);
    let (inside, outside) = ("192.168.50.2".parse().unwrap(), "192.168.50.3".parse().unwrap());
    eventually(20 * S, "the load-balancer IP answering a client inside the ranges", || async {
        (tcp_get_from(&lab.client, inside, lb).ok().as_deref() == Some("pod-2")).then_some(())
    })
    .await;
    let refused = tcp_get_from(&lab.client, outside, lb);
    assert!(refused.as_ref().is_err_and(|e| e.contains("timed out") || e.contains("temporarily unavailable")), "a client outside the ranges is dropped: {refused:?}");
    assert_eq!(tcp_get_from(&lab.client, outside, SocketAddr::from((NODE_IP, 30090))).unwrap(), "pod-2", "the node port is not behind the ranges");
    assert_eq!(tcp_get_from(&lab.client, inside, lb).unwrap(), "pod-2");

    // Health and metrics.
    let (code, body) = http_get(&lab.client, SocketAddr::from((NODE_IP, 10256)), "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("lastUpdated"), "{body}");
    let (code, metrics) = http_get(&c.node.netns, sa([127, 0, 0, 1], 10249), "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in ["kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_sync_proxy_rules_endpoint_changes_total"] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }

    // Bad objects are skipped with a line naming the object and the field.
    let log = agent.log();
    for want in [
        "skipping Service default/bad-proto: spec.ports[0].protocol: Unsupported value: \"tcp\"",
        "skipping Service default/bad-port: spec.ports[0].port",
        "skipping Service default/bad-affinity: spec.sessionAffinity: Unsupported value: \"CientIP\"",
        "skipping EndpointSlice default/web-bad: endpoints[0].addresses[0]: Invalid value: \"not-an-ip\"",
    ] {
        assert!(log.contains(want), "missing {want:?} in the log:\n{log}");
    }

    // UDP: the backend is replaced; the stale conntrack flow is removed so
    // the same client flow reaches the new backend.
    let dns = sa([10, 96, 0, 53], 53);
    assert_eq!(udp_ask(&lab.client, 40053, dns).unwrap(), "pod-0");
    let slices = dynamic::<EndpointSlice>(client);
    let replaced = slice("dns-1", "dns", &node, &[(1, true, true)], udp.clone());
    slices.patch("dns-1", &PatchParams::default(), &Patch::Merge(replaced)).await.unwrap();
    eventually(10 * S, "the UDP flow reaching the new backend", || async {
        (udp_ask(&lab.client, 40053, dns).ok().as_deref() == Some("pod-1")).then_some(())
    })
    .await;

    // Changes while traffic flows: not one connection fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, ok, failed, errors, ns) = (stop.clone(), ok.clone(), failed.clone(), errors.clone(), lab.client.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp_get(&ns, web) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let web_slice = |eps: &[(usize, bool, bool)]| slice("web-1", "web", &node, eps, http.clone());
    for eps in [&[(1, true, true), (2, true, false)][..], &[(0, true, true), (1, true, true)][..], &[(0, true, true), (1, true, true), (2, true, false)][..]] {
        slices.patch("web-1", &PatchParams::default(), &Patch::Merge(web_slice(eps))).await.unwrap();
        tokio::time::sleep(1500 * Duration::from_millis(1)).await;
    }
    create::<Service>(client, service("extra", json!({"clusterIP": "10.96.0.30", "ports": [{"port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice("extra-1", "extra", &node, &[(3, true, true)], plain.clone())).await;
    let extra = sa([10, 96, 0, 30], 80);
    eventually(10 * S, "the new Service answering", || async { (tcp_get(&lab.client, extra).ok().as_deref() == Some("pod-3")).then_some(()) }).await;
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "requests during the changes: {ok}");
    assert_eq!(failed, 0, "requests failed during the changes: {:?}", errors.lock().unwrap());

    // A service without endpoints is rejected at once, not left to time out.
    slices.delete("extra-1", &Default::default()).await.unwrap();
    let refused = eventually(10 * S, "a refusal for the Service without endpoints", || async {
        tcp_get(&lab.client, extra).err().filter(|e| e.contains("refused"))
    })
    .await;
    assert!(refused.contains("refused"), "{refused}");

    // Two Services claiming one external address and port: the older keeps
    // it (though the newer sorts first), the newer gets an event, removing
    // the newer leaves the older's address alone, and when the older goes
    // the newer takes over. Every other Service is programmed throughout.
    // (Last: the client's hairpinned connections earn it ICMP redirects,
    // and the kernel then rate-limits the rejections the checks above
    // wait for.)
    let shared = sa([198, 51, 100, 7], 80);
    create::<Service>(client, service("z-old", json!({"clusterIP": "10.96.0.44", "externalIPs": ["198.51.100.7"], "ports": [{"port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice("z-old-1", "z-old", &node, &[(0, true, true)], plain.clone())).await;
    eventually(20 * S, "the external IP answering for z-old", || async { (tcp_get(&lab.client, shared).ok().as_deref() == Some("pod-0")).then_some(()) }).await;
    let newer = || async {
        // creationTimestamp has whole seconds: the newer one is a second later.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        create::<Service>(client, service("a-new", json!({"clusterIP": "10.96.0.43", "externalIPs": ["198.51.100.7"], "ports": [{"port": 80, "targetPort": 8080}]}))).await;
        create::<EndpointSlice>(client, slice("a-new-1", "a-new", &node, &[(1, true, true)], plain.clone())).await;
        eventually(20 * S, "a-new's clusterIP answering", || async { (tcp_get(&lab.client, sa([10, 96, 0, 43], 80)).ok().as_deref() == Some("pod-1")).then_some(()) }).await;
    };
    newer().await;
    assert_eq!(responders(&lab.client, shared, 10), set(&["pod-0"]), "the older Service keeps the address");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let note = eventually(20 * S, "an AddressInUse event on a-new", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("AddressInUse") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("a-new"))?.note
    })
    .await;
    assert!(note.contains("externalIP 198.51.100.7 port 80/TCP is already served by Service default/z-old"), "{note}");
    let services = dynamic::<Service>(client);
    services.delete("a-new", &Default::default()).await.unwrap();
    eventually(20 * S, "a-new's clusterIP gone", || async { tcp_get(&lab.client, sa([10, 96, 0, 43], 80)).is_err().then_some(()) }).await;
    assert_eq!(responders(&lab.client, shared, 10), set(&["pod-0"]), "removing the newer claim leaves the older one's address");
    dynamic::<EndpointSlice>(client).delete("a-new-1", &Default::default()).await.unwrap();
    newer().await;
    services.delete("z-old", &Default::default()).await.unwrap();
    eventually(20 * S, "a-new taking the address over", || async { (tcp_get(&lab.client, shared).ok().as_deref() == Some("pod-1")).then_some(()) }).await;
    let log = agent.log();
    let starts = log.lines().filter(|l| l.contains("WARN") && l.contains("Service default/a-new: externalIP 198.51.100.7 port 80/TCP is already served")).count();
    assert_eq!(starts, 2, "one line each time the conflict starts:\n{log}");

    // nodelet gone: its rules stay (traffic keeps flowing), and the cleanup
    // removes every one of them.
    agent.kill9();
    assert!(tcp_get(&lab.client, web).unwrap().starts_with("pod-"), "rules survive the agent");
    proxy_cleanup(&c.node.netns);
    assert!(tcp_get(&lab.client, web).is_err(), "no Service rule is left");
    let leftovers = rules_in(&c.node.netns, "iptables-save");
    assert!(!leftovers.contains("KUBE-SVC-") && !leftovers.contains("KUBE-SERVICES") && !leftovers.contains("table ip nodelet"), "{leftovers}");

    // A dry run prints the whole ruleset for the cluster's Services and applies nothing.
    let kubeconfig = c.dir().join("kubelet.kubeconfig");
    let dry = c.node.nodelet(&["--dry-run", "--kubeconfig", kubeconfig.to_str().unwrap(), "--proxy-config", config.to_str().unwrap()]);
    let header = format!("# nodelet proxy ({mode}) ruleset: ");
    let printed = eventually(30 * S, "the dry-run ruleset", || async {
        let out = dry.stdout();
        (out.contains(&header) && out.contains(if mode == "iptables" { "COMMIT" } else { "numgen random" })).then_some(out)
    })
    .await;
    assert!(printed.contains("10.96.0.30") || printed.contains("10.96.0.10"), "{printed}");
    let out = rules_in(&c.node.netns, "iptables-save");
    assert!(!out.contains("KUBE-SERVICES") && !out.contains("table ip nodelet"), "a dry run applies nothing: {out}");
    assert!(tcp_get(&lab.client, web).is_err());
}

/// `nodelet proxy cleanup` in the node's namespace, which must succeed.
fn proxy_cleanup(netns: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodelet")).args(["proxy", "cleanup"]).pre_exec_netns(netns).output().unwrap();
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
}

/// What a namespace's netfilter holds: `save` (iptables-save or
/// ip6tables-save, which must work) and the nftables tables.
fn rules_in(netns: &str, save: &'static str) -> String {
    in_netns(netns, move || {
        let ipt = Command::new(save).output().unwrap();
        assert!(ipt.status.success(), "{save}: {}", String::from_utf8_lossy(&ipt.stderr));
        let nft = Command::new("nft").args(["list", "tables"]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&ipt.stdout), String::from_utf8_lossy(&nft.stdout))
    })
}

/// Runs a command inside a network namespace.
trait PreExecNetns {
    fn pre_exec_netns(&mut self, ns: &str) -> &mut Self;
}

impl PreExecNetns for Command {
    fn pre_exec_netns(&mut self, ns: &str) -> &mut Self {
        use std::os::unix::process::CommandExt;
        let path = format!("/run/netns/{ns}");
        unsafe {
            self.pre_exec(move || {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_carries_real_traffic() {
    traffic("iptables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_carries_real_traffic() {
    traffic("nftables").await;
}

/// A dual-stack cluster (service CIDRs in both families, the apiserver's
/// allocator and family rules): dual-stack and IPv6-only Services carry
/// real TCP and UDP in each family, to the endpoints of that family's
/// slices; node ports answer on the node's IPv6 address;
/// externalTrafficPolicy Local keeps to this node's endpoints in IPv6;
/// a stale IPv6 UDP flow is cleared; an IPv6 Service without endpoints is
/// refused; the cleanup removes both families' rules.
async fn dual_stack(mode: &str) {
    let c = Cluster::start().await;
    c.api.set_service_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]);
    let id = c.node.id.clone();
    let lab = Lab::build(&c.node.netns, &id, 4);
    for (i, ns) in lab.pods.iter().enumerate() {
        serve_tcp(ns, &format!("pod-{i}"), 8080);
        serve_udp(ns, &format!("pod-{i}"), 5353);
    }
    let node = c.node.node_name();
    let client = &c.client;
    let plain = json!([{"port": 8080, "protocol": "TCP"}]);
    let udp = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
    // Dual-stack, addresses given; the other two allocated by the apiserver.
    create::<Service>(client, service("web", json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
        "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice_of("IPv4", "web-4", "web", &node, &[(0, true, true), (1, true, true)], plain.clone())).await;
    create::<EndpointSlice>(client, slice_of("IPv6", "web-6", "web", &node, &[(1, true, true), (2, true, false), (3, false, true)], plain.clone())).await;
    create::<Service>(client, service("six", json!({"ipFamilies": ["IPv6"], "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}))).await;
    create::<EndpointSlice>(client, slice_of("IPv6", "six-6", "six", &node, &[(0, true, true)], udp.clone())).await;
    create::<Service>(client, service("local", json!({"type": "NodePort", "ipFamilyPolicy": "PreferDualStack", "externalTrafficPolicy": "Local",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30081}]}))).await;
    create::<EndpointSlice>(client, slice_of("IPv6", "local-6", "local", &node, &[(0, true, true), (1, true, true), (2, true, false)], plain.clone())).await;
    create::<Service>(client, service("empty", json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80, "targetPort": 8080}]}))).await;
    let services = dynamic::<Service>(client);
    let cluster_ips = |name: &'static str| {
        let services = services.clone();
        async move {
            let s = services.get(name).await.unwrap();
            let ips: Vec<IpAddr> = s.data["spec"]["clusterIPs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect();
            (ips, s.data["spec"]["ipFamilies"].clone())
        }
    };
    let (six_ips, six_families) = cluster_ips("six").await;
    assert_eq!(six_families, json!(["IPv6"]));
    assert!(six_ips[0].is_ipv6(), "{six_ips:?}");
    let (local_ips, local_families) = cluster_ips("local").await;
    assert_eq!(local_families, json!(["IPv4", "IPv6"]), "PreferDualStack on a dual-stack cluster: both");
    let (empty_ips, _) = cluster_ips("empty").await;
    // The apiserver's rules, as a real one answers them.
    let refused = dynamic::<Service>(client)
        .create(&PostParams::default(), &serde_json::from_value(service("two", json!({"clusterIPs": ["10.96.0.50", "fd00:10:96::50"], "ports": [{"port": 80}]}))).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("must be RequireDualStack or PreferDualStack"), "{refused}");

    // Node ports on the client link's networks only (nodePortAddresses, one
    // CIDR per family), resolved again at every sync (every 2 s here).
    let extra = format!("clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\nnodePortAddresses: [\"192.168.50.0/24\", \"fd00:50::/64\"]\n{mode}:\n  syncPeriod: 2s\n");
    let config = c.proxy_config(mode, &node, &extra);
    let mut agent = c.join_with(&["--proxy-config", config.to_str().unwrap()]).await;
    let v6 = |ip: Ipv6Addr, port: u16| SocketAddr::from((ip, port));
    let web6 = v6("fd00:10:96::10".parse().unwrap(), 80);
    eventually(30 * S, "the web Service's IPv6 cluster IP answering", || async { tcp_get(&lab.client, web6).ok() }).await;
    // Each family goes to the endpoints of its own slices only.
    assert_eq!(responders(&lab.client, web6, 40), set(&["pod-1", "pod-2"]), "IPv6: the IPv6 slice's ready endpoints");
    assert_eq!(responders(&lab.client, sa([10, 96, 0, 10], 80), 40), set(&["pod-0", "pod-1"]), "IPv4: the IPv4 slice's");
    let from_node = tcp_get(&c.node.netns, web6).unwrap();
    assert!(from_node.starts_with("pod-"), "from the node itself: {from_node}");
    // IPv6-only UDP, and a stale flow cleared when the backend changes.
    let dns6 = SocketAddr::new(six_ips[0], 53);
    eventually(10 * S, "the IPv6-only UDP Service answering", || async { (udp_ask(&lab.client, 40053, dns6).ok().as_deref() == Some("pod-0")).then_some(()) }).await;
    let slices = dynamic::<EndpointSlice>(client);
    slices.patch("six-6", &PatchParams::default(), &Patch::Merge(slice_of("IPv6", "six-6", "six", &node, &[(3, true, true)], udp.clone()))).await.unwrap();
    eventually(10 * S, "the IPv6 UDP flow reaching the new backend", || async {
        (udp_ask(&lab.client, 40053, dns6).ok().as_deref() == Some("pod-3")).then_some(())
    })
    .await;
    // A node port on the node's IPv6 address; externalTrafficPolicy Local
    // keeps to this node's endpoints.
    let np6 = v6(NODE_IP6, 30081);
    eventually(10 * S, "the node port answering on IPv6", || async { tcp_get(&lab.client, np6).ok() }).await;
    assert_eq!(responders(&lab.client, np6, 40), set(&["pod-0", "pod-1"]), "only this node's endpoints");
    assert!(local_ips[1].is_ipv6());
    // nodePortAddresses: the node's address on the pod bridge is outside
    // them, so no node port there (the node's own stack refuses); an address
    // added inside them serves node ports from the next sync on.
    let outside = tcp_get(&lab.client, v6("fd00:10:244::1".parse().unwrap(), 30081));
    assert!(outside.as_ref().is_err_and(|e| e.contains("refused")), "no node port outside nodePortAddresses: {outside:?}");
    ip(&["-n", &c.node.netns, "addr", "add", "fd00:50::9/64", "dev", "vc0", "nodad"]);
    let added = v6("fd00:50::9".parse().unwrap(), 30081);
    let who = eventually(15 * S, "the node port on an address added inside nodePortAddresses", || async { tcp_get(&lab.client, added).ok() }).await;
    assert!(who.starts_with("pod-"), "{who}");
    // No IPv4 slice for it: IPv4 is refused, IPv6 is served.
    let refused = tcp_get(&lab.client, SocketAddr::from((NODE_IP, 30081)));
    assert!(refused.as_ref().is_err_and(|e| e.contains("refused")), "{refused:?}");
    // No endpoints: refused at once, not left to time out.
    let empty = SocketAddr::new(empty_ips[0], 80);
    let refused = tcp_get(&lab.client, empty);
    assert!(refused.as_ref().is_err_and(|e| e.contains("refused")), "{refused:?}");
    let log = agent.log();
    assert!(log.contains("families=[\"IPv4\", \"IPv6\"]"), "the proxy says it serves both families:\n{log}");

    agent.kill9();
    proxy_cleanup(&c.node.netns);
    assert!(tcp_get(&lab.client, web6).is_err(), "no IPv6 Service rule is left");
    let leftovers = rules_in(&c.node.netns, "ip6tables-save");
    assert!(!leftovers.contains("KUBE-SVC-") && !leftovers.contains("KUBE-SERVICES") && !leftovers.contains("nodelet"), "{leftovers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_carries_both_families_of_a_dual_stack_cluster() {
    dual_stack("iptables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_carries_both_families_of_a_dual_stack_cluster() {
    dual_stack("nftables").await;
}

/// IPVS mode on this machine's kernel, which has no IP_VS: one clear error
/// naming the module, no silent fallback to another mode (no rules of any
/// mode appear, /healthz says the proxy is down), while the kubelet side
/// runs on. A dry run plans the IPVS changes from the cluster's objects
/// without the kernel. The traffic tests of IPVS mode run under qemu with
/// Debian's kernel (tests/ipvs.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipvs_mode_without_the_module_is_a_clear_error_and_a_dry_run_plans_it() {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        support::skip("ipvs_mode_without_the_module_is_a_clear_error_and_a_dry_run_plans_it", "this kernel has IPVS (tests/ipvs.rs runs IPVS mode)");
        return;
    }
    let c = Cluster::start().await;
    let node = c.node.node_name();
    let client = &c.client;
    let plain = json!([{"port": 8080, "protocol": "TCP"}]);
    create::<Service>(client, service("web", json!({"type": "NodePort", "clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP",
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}))).await;
    create::<EndpointSlice>(client, slice("web-1", "web", &node, &[(0, true, true), (1, false, true)], plain)).await;
    let config = proxy_config(&c, "ipvs", &node, "healthzBindAddress: 127.0.0.1:10256\nipvs:\n  scheduler: wlc\n");
    let agent = c.join_with(&["--proxy-config", config.to_str().unwrap()]).await;
    let line = eventually(20 * S, "the IPVS error", || async {
        agent.log().lines().find(|l| l.contains("cannot run in IPVS mode")).map(str::to_string)
    })
    .await;
    assert!(line.contains("kernel module ip_vs") && line.contains("modprobe ip_vs"), "{line}");
    let healthz = in_netns(&c.node.netns, || Command::new("busybox").args(["timeout", "3", "wget", "-qO-", "http://127.0.0.1:10256/healthz"]).output().unwrap());
    assert!(!healthz.status.success(), "the proxy's /healthz must fail: {}", String::from_utf8_lossy(&healthz.stdout));
    let rules = rules_in(&c.node.netns, "iptables-save");
    assert!(!rules.contains("KUBE-SERVICES") && !rules.contains("table ip nodelet"), "no silent fallback: {rules}");

    let kubeconfig = c.dir().join("kubelet.kubeconfig");
    let dry = c.node.nodelet(&["--dry-run", "--kubeconfig", kubeconfig.to_str().unwrap(), "--proxy-config", config.to_str().unwrap()]);
    let printed = eventually(30 * S, "the dry-run IPVS plan", || async {
        let out = dry.stdout();
        (out.contains("# nodelet proxy (ipvs) ruleset: ") && out.contains("add element ip nodelet-ipvs vips")).then_some(out)
    })
    .await;
    for want in [
        "link add kube-ipvs0 type dummy",
        "ipvs add service tcp 10.96.0.10:80 scheduler wlc persistent 10800",
        "ipvs add server tcp 10.96.0.10:80 -> 10.244.0.10:8080 masq weight 1",
        "address add 10.96.0.10/32 dev kube-ipvs0",
        "add rule ip nodelet-ipvs services ip daddr . meta l4proto . th dport @cluster-ips ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
    ] {
        assert!(printed.contains(want), "{want:?} missing from:\n{printed}");
    }
    assert!(!printed.contains("10.244.0.11"), "the not-ready endpoint is no server:\n{printed}");
    assert!(printed.lines().any(|l| l.starts_with("ipvs add service tcp ") && l.contains(":30080 ")), "a NodePort service:\n{printed}");
}

/// Three nodelets, each in its own network namespace with its own
/// containerd, one apiserver (dual-stack), host-gw routes between the pod
/// CIDRs: real TCP and UDP through a ClusterIP from a pod on one node to
/// pods on the others, a node port of one node reaching pods on every node
/// (masqueraded, so the answers come back the same way), and
/// externalTrafficPolicy Local answering only on nodes with an endpoint
/// (keeping the client's address) and dropping elsewhere; in both families.
/// With the nodes in zones, topology hints keep cluster traffic in the
/// zone; internalTrafficPolicy Local keeps it on the node.
async fn three_nodes(mode: &str) {
    let c = Cluster::start().await;
    c.api.set_service_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]);
    c.api.set_auto_approve(true);
    let (b, d) = (c.add_node().await, c.add_node().await);
    let nodes = [&c.node, &b, &d];
    let fabric = Fabric::build(&c.node.id, &[&c.node.netns, &b.netns, &d.netns]);
    for (n, pods) in fabric.pods.iter().enumerate() {
        for (i, ns) in pods.iter().enumerate() {
            serve_tcp(ns, &format!("n{n}-p{i}"), 8080);
            serve_udp(ns, &format!("n{n}-p{i}"), 5353);
            // Who the pod saw: the source address of each connection.
            let seen = in_netns(ns, || TcpListener::bind(("::", 9090))).expect("bind a pod's source echo");
            std::thread::spawn(move || {
                for mut s in seen.incoming().flatten() {
                    let from = s.peer_addr().map(|a| a.ip().to_canonical().to_string()).unwrap_or_default();
                    let _ = s.write_all(format!("{from}\n").as_bytes());
                }
            });
        }
    }
    let client = &c.client;
    // Endpoints: (node, pod) with the node's name, for each family.
    let names: Vec<String> = nodes.iter().map(|n| n.node_name()).collect();
    let slice3 = |family: &str, name: &str, svc: &str, eps: &[(usize, usize)], ports: Value| {
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|(n, i)| {
                let addr = if family == "IPv6" { fabric_pod6(*n, *i).to_string() } else { fabric_pod(*n, *i).to_string() };
                json!({"addresses": [addr], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": names[*n]})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
               "addressType": family, "endpoints": endpoints, "ports": ports})
    };
    let tcp = json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "who", "port": 9090, "protocol": "TCP"}]);
    let udp = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
    // On nodes 1 and 2 only: traffic from node 0 must cross the fabric.
    let far = [(1, 0), (1, 1), (2, 0)];
    create::<Service>(client, service("far", json!({"type": "NodePort", "clusterIPs": ["10.96.0.80", "fd00:10:96::80"], "clusterIP": "10.96.0.80",
        "ipFamilyPolicy": "RequireDualStack",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30180}, {"name": "who", "port": 90, "targetPort": 9090, "nodePort": 30190}]}))).await;
    create::<EndpointSlice>(client, slice3("IPv4", "far-4", "far", &far, tcp.clone())).await;
    create::<EndpointSlice>(client, slice3("IPv6", "far-6", "far", &far, tcp.clone())).await;
    create::<Service>(client, service("dns", json!({"clusterIPs": ["10.96.0.53", "fd00:10:96::53"], "clusterIP": "10.96.0.53", "ipFamilyPolicy": "RequireDualStack",
        "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}))).await;
    create::<EndpointSlice>(client, slice3("IPv4", "dns-4", "dns", &[(2, 1)], udp.clone())).await;
    create::<EndpointSlice>(client, slice3("IPv6", "dns-6", "dns", &[(2, 1)], udp.clone())).await;
    // externalTrafficPolicy Local with an endpoint on node 1 only.
    create::<Service>(client, service("edge", json!({"type": "NodePort", "clusterIPs": ["10.96.0.81", "fd00:10:96::81"], "clusterIP": "10.96.0.81",
        "ipFamilyPolicy": "RequireDualStack", "externalTrafficPolicy": "Local",
        "ports": [{"name": "who", "port": 90, "targetPort": 9090, "nodePort": 30191}]}))).await;
    let who = json!([{"name": "who", "port": 9090, "protocol": "TCP"}]);
    create::<EndpointSlice>(client, slice3("IPv4", "edge-4", "edge", &[(1, 1)], who.clone())).await;
    create::<EndpointSlice>(client, slice3("IPv6", "edge-6", "edge", &[(1, 1)], who.clone())).await;

    let mut agents = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let config = c.proxy_config_in(node, mode, &node.node_name(), "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n");
        let node_ip = format!("{},{}", node_addr(n), node_addr6(n));
        agents.push(c.nodelet_on(node, &node_ip, &["--proxy-config", config.to_str().unwrap()]));
    }
    let nodes_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(60 * S, "three Ready nodes", || async {
        let list = nodes_api.list(&Default::default()).await.ok()?;
        let ready = list.items.iter().filter(|n| {
            n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        (ready.count() == 3).then_some(())
    })
    .await;

    let pod0 = &fabric.pods[0][0];
    // Topology: nodes 0 and 1 in zone a, node 2 in zone b (as a cloud
    // controller labels them); a PreferClose Service whose slices hint each
    // endpoint to its node's zone keeps cluster traffic in the zone.
    for (n, zone) in [(0, "a"), (1, "a"), (2, "b")] {
        let patch = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}});
        nodes_api.patch(&names[n], &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }
    create::<Service>(client, service("zonal", json!({"clusterIP": "10.96.0.82", "trafficDistribution": "PreferClose",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}))).await;
    let mut zonal = slice3("IPv4", "zonal-4", "zonal", &[(1, 0), (2, 0)], tcp.clone());
    zonal["endpoints"][0]["hints"] = json!({"forZones": [{"name": "a"}]});
    zonal["endpoints"][1]["hints"] = json!({"forZones": [{"name": "b"}]});
    create::<EndpointSlice>(client, zonal).await;
    let zonal = sa([10, 96, 0, 82], 80);
    eventually(30 * S, "zone a's pod reaching only zone a's endpoint", || async {
        let seen: Option<BTreeSet<String>> = (0..10).map(|_| tcp_get(pod0, zonal).ok()).collect();
        (seen? == set(&["n1-p0"])).then_some(())
    })
    .await;
    assert_eq!(responders(pod0, zonal, 30), set(&["n1-p0"]), "node 0 (zone a): the endpoint hinted to zone a");
    eventually(30 * S, "zone b's pod reaching the zonal Service", || async { tcp_get(&fabric.pods[2][1], zonal).ok() }).await;
    assert_eq!(responders(&fabric.pods[2][1], zonal, 30), set(&["n2-p0"]), "node 2 (zone b): the endpoint hinted to zone b");
    // internalTrafficPolicy Local: only this node's endpoints; a node
    // without one drops.
    create::<Service>(client, service("near", json!({"clusterIP": "10.96.0.83", "internalTrafficPolicy": "Local",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}))).await;
    create::<EndpointSlice>(client, slice3("IPv4", "near-4", "near", &[(1, 0), (2, 0)], tcp.clone())).await;
    let near = sa([10, 96, 0, 83], 80);
    eventually(30 * S, "ITP Local answering on node 1", || async { tcp_get(&fabric.pods[1][1], near).ok() }).await;
    assert_eq!(responders(&fabric.pods[1][1], near, 20), set(&["n1-p0"]), "node 1's own endpoint only");
    eventually(30 * S, "ITP Local answering on node 2", || async { tcp_get(&fabric.pods[2][1], near).ok() }).await;
    assert_eq!(responders(&fabric.pods[2][1], near, 20), set(&["n2-p0"]), "node 2's own endpoint only");
    // Node 0 rejects while it knows the Service but not yet its slice (no
    // endpoints at all: kube-proxy's REJECT); once it has the slice, with
    // none of them local, it drops.
    let dropped = |r: &Result<String, String>| r.as_ref().is_err_and(|e| e.contains("timed out") || e.contains("temporarily unavailable"));
    eventually_saw(30 * S, "node 0, without a local endpoint, dropping", || async {
        let r = tcp_get(pod0, near);
        if dropped(&r) { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .await;
    let none_here = tcp_get(pod0, near);
    assert!(dropped(&none_here), "node 0 has none: dropped: {none_here:?}");

    for (family, vip, dns, np_ip, np_ip_other) in [
        ("IPv4", IpAddr::from([10, 96, 0, 80]), IpAddr::from([10, 96, 0, 53]), IpAddr::from(node_addr(2)), IpAddr::from(node_addr(0))),
        (
            "IPv6",
            "fd00:10:96::80".parse().unwrap(),
            "fd00:10:96::53".parse().unwrap(),
            IpAddr::from(node_addr6(2)),
            IpAddr::from(node_addr6(0)),
        ),
    ] {
        // ClusterIP from a pod on node 0 to pods on nodes 1 and 2: no
        // masquerade inside the cluster CIDR, the pod's own address arrives.
        let web = SocketAddr::new(vip, 80);
        eventually(30 * S, &format!("{family}: node 0's pod reaching the far Service"), || async { tcp_get(pod0, web).ok() }).await;
        assert_eq!(responders(pod0, web, 40), set(&["n1-p0", "n1-p1", "n2-p0"]), "{family}: every endpoint, all on other nodes");
        let pod0_ip = if family == "IPv4" { fabric_pod(0, 0).to_string() } else { fabric_pod6(0, 0).to_string() };
        assert_eq!(tcp_get(pod0, SocketAddr::new(vip, 90)).unwrap(), pod0_ip, "{family}: the pod's own address arrives across nodes");
        // UDP to an endpoint on node 2.
        assert_eq!(udp_ask(pod0, 40053, SocketAddr::new(dns, 53)).unwrap(), "n2-p1", "{family}: UDP across nodes");
        // The client's connection to node 2's node port reaches pods on
        // node 1 too (masqueraded by node 2, so the answer returns through it).
        let np = SocketAddr::new(np_ip, 30180);
        assert_eq!(responders(&fabric.client, np, 40), set(&["n1-p0", "n1-p1", "n2-p0"]), "{family}: a node port reaches every node's endpoints");
        // The node port of node 0, where the far Service has no endpoint.
        assert!(tcp_get(&fabric.client, SocketAddr::new(np_ip_other, 30180)).unwrap().starts_with("n"), "{family}");
        // externalTrafficPolicy Local: node 1 answers with the client's own
        // address; node 0, without an endpoint of it, drops.
        let client_ip = if family == "IPv4" { "192.168.50.2" } else { "fd00:50::2" };
        let node1 = if family == "IPv4" { IpAddr::from(node_addr(1)) } else { IpAddr::from(node_addr6(1)) };
        assert_eq!(tcp_get(&fabric.client, SocketAddr::new(node1, 30191)).unwrap(), client_ip, "{family}: ETP Local keeps the client's address");
        let dropped = tcp_get(&fabric.client, SocketAddr::new(np_ip_other, 30191));
        assert!(dropped.as_ref().is_err_and(|e| e.contains("timed out") || e.contains("temporarily unavailable")), "{family}: ETP Local elsewhere is dropped: {dropped:?}");
    }
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_across_three_nodes_in_both_families() {
    three_nodes("iptables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_across_three_nodes_in_both_families() {
    three_nodes("nftables").await;
}
