//! A network of several nodes for the proxy's multi-node tests, each node a
//! network namespace (tests/proxy.rs: a nodelet's; tests/ipvs.rs: a node
//! of the IPVS VM).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use super::in_netns;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Three nodes' network: each node's pods on its own bridge and pod CIDR
/// (10.244.N.0/24 and fd00:10:244:N::/64, pods at .10 and .11), the nodes
/// on one fabric (a bridge in a namespace of its own: 172.30.0.N+1 and
/// fd00:30::N+1), routes between the pod CIDRs host-gw style, and a client
/// outside (192.168.50.2, fd00:50::2) behind node 0. Everything is removed
/// with it.
pub struct Fabric {
    pub ns: String,
    pub client: String,
    /// Per node, its pod namespaces.
    pub pods: Vec<Vec<String>>,
}

pub fn node_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, n as u8 + 1)
}

pub fn node_addr6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, n as u16 + 1)
}

pub fn fabric_pod(n: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n as u8, 10 + i as u8)
}

pub fn fabric_pod6(n: usize, i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, n as u16, 0, 0, 0, 0x10 + i as u16)
}

impl Fabric {
    pub fn build(id: &str, nodes: &[&str]) -> Fabric {
        let ns = format!("nlf-{id}");
        let client = format!("nlc-{id}");
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "add", "fab", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "fab", "up"]);
        let mut pods = Vec::new();
        for (n, node_ns) in nodes.iter().enumerate() {
            let port = format!("f{n}");
            ip(&["-n", node_ns, "link", "add", "fab0", "type", "veth", "peer", "name", &port, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &port, "master", "fab", "up"]);
            ip(&["-n", node_ns, "addr", "add", &format!("{}/24", node_addr(n)), "dev", "fab0"]);
            ip(&["-n", node_ns, "addr", "add", &format!("{}/64", node_addr6(n)), "dev", "fab0", "nodad"]);
            ip(&["-n", node_ns, "link", "set", "fab0", "up"]);
            ip(&["-n", node_ns, "link", "add", "kbr0", "type", "bridge"]);
            ip(&["-n", node_ns, "addr", "add", &format!("10.244.{n}.1/24"), "dev", "kbr0"]);
            ip(&["-n", node_ns, "addr", "add", &format!("fd00:10:244:{n}::1/64"), "dev", "kbr0", "nodad"]);
            ip(&["-n", node_ns, "link", "set", "kbr0", "up"]);
            let mut mine = Vec::new();
            for i in 0..2 {
                let pod = format!("nlp-{id}-{n}-{i}");
                let veth = format!("vp{i}");
                ip(&["netns", "add", &pod]);
                ip(&["-n", &pod, "link", "set", "lo", "up"]);
                ip(&["-n", node_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod]);
                ip(&["-n", node_ns, "link", "set", &veth, "master", "kbr0", "up"]);
                ip(&["-n", &pod, "addr", "add", &format!("{}/24", fabric_pod(n, i)), "dev", "eth0"]);
                ip(&["-n", &pod, "addr", "add", &format!("{}/64", fabric_pod6(n, i)), "dev", "eth0", "nodad"]);
                ip(&["-n", &pod, "link", "set", "eth0", "up"]);
                ip(&["-n", &pod, "route", "add", "default", "via", &format!("10.244.{n}.1")]);
                ip(&["-n", &pod, "-6", "route", "add", "default", "via", &format!("fd00:10:244:{n}::1")]);
                mine.push(pod);
            }
            pods.push(mine);
            // host-gw: every other node's pod CIDRs through that node.
            for m in (0..nodes.len()).filter(|m| *m != n) {
                ip(&["-n", node_ns, "route", "add", &format!("10.244.{m}.0/24"), "via", &node_addr(m).to_string()]);
                ip(&["-n", node_ns, "-6", "route", "add", &format!("fd00:10:244:{m}::/64"), "via", &node_addr6(m).to_string()]);
            }
            in_netns(node_ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")).expect("ip_forward");
            in_netns(node_ns, || std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")).expect("IPv6 forwarding");
        }
        // The client, behind node 0; the other nodes reach it (and route
        // what they do not know) through node 0.
        ip(&["netns", "add", &client]);
        ip(&["-n", &client, "link", "set", "lo", "up"]);
        ip(&["-n", nodes[0], "link", "add", "vc0", "type", "veth", "peer", "name", "eth0", "netns", &client]);
        ip(&["-n", nodes[0], "addr", "add", "192.168.50.1/24", "dev", "vc0"]);
        ip(&["-n", nodes[0], "addr", "add", "fd00:50::1/64", "dev", "vc0", "nodad"]);
        ip(&["-n", nodes[0], "link", "set", "vc0", "up"]);
        ip(&["-n", &client, "addr", "add", "192.168.50.2/24", "dev", "eth0"]);
        ip(&["-n", &client, "addr", "add", "fd00:50::2/64", "dev", "eth0", "nodad"]);
        ip(&["-n", &client, "link", "set", "eth0", "up"]);
        ip(&["-n", &client, "route", "add", "default", "via", "192.168.50.1"]);
        ip(&["-n", &client, "-6", "route", "add", "default", "via", "fd00:50::1"]);
        ip(&["-n", nodes[0], "route", "add", "default", "via", "192.168.50.2"]);
        ip(&["-n", nodes[0], "-6", "route", "add", "default", "via", "fd00:50::2"]);
        for node_ns in &nodes[1..] {
            ip(&["-n", node_ns, "route", "add", "default", "via", &node_addr(0).to_string()]);
            ip(&["-n", node_ns, "-6", "route", "add", "default", "via", &node_addr6(0).to_string()]);
        }
        Fabric { ns, client, pods }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for ns in self.pods.iter().flatten().chain([&self.client, &self.ns]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
