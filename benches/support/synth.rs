//! The Services the proxy benchmarks program: `services` ClusterIP Services
//! (every tenth also a NodePort) with `endpoints` ready endpoints each;
//! `synth_dual` makes every Service dual-stack (the same again in IPv6).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nodelet::proxy::model::{Endpoint, Family, PortKey, Protocol, ProxyState, ServicePort};

pub fn synth(services: usize, endpoints: usize) -> ProxyState {
    synth_family(services, endpoints, Family::V4)
}

/// Every Service in both families: twice the Service ports.
pub fn synth_dual(services: usize, endpoints: usize) -> ProxyState {
    let mut s = synth_family(services, endpoints, Family::V4);
    let v6 = synth_family(services, endpoints, Family::V6);
    s.services.extend(v6.services);
    s.endpoints.extend(v6.endpoints);
    s
}

fn synth_family(services: usize, endpoints: usize, family: Family) -> ProxyState {
    // The IPv4 numbering, mapped into fd00:10:96::/64 and fd00:10:244::/64 for IPv6.
    let addr = |v4: Ipv4Addr| -> IpAddr {
        match family {
            Family::V4 => v4.into(),
            Family::V6 => {
                let [a, b, c, d] = v4.octets();
                let net = if a == 10 && b == 96 { 0x96 } else { 0x244 };
                Ipv6Addr::new(0xfd00, 0x10, net, 0, 0, 0, u16::from(c), u16::from(d)).into()
            }
        }
    };
    let mut s = ProxyState::default();
    for i in 0..services {
        let key = PortKey { namespace: format!("ns{}", i % 50), name: format!("svc-{i}"), port: "http".into(), protocol: Protocol::Tcp, family };
        let ip = addr(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1));
        let node_port = (i % 10 == 0).then(|| 30000 + (i / 10) as u16 % 2768);
        s.services.insert(
            key.clone(),
            ServicePort { node_port, ..ServicePort::cluster_ip(key.clone(), ip, 80) },
        );
        let eps = (0..endpoints)
            .map(|e| Endpoint {
                elsewhere: false,
                ip: addr(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * endpoints + e) as u32 % 65000 + 2)),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: e == 0,
            })
            .collect();
        s.endpoints.insert(key, eps);
    }
    s
}

