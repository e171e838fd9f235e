//! The Services the proxy benchmarks program: `services` ClusterIP Services
//! (every tenth also a NodePort) with `endpoints` ready endpoints each.

use std::net::Ipv4Addr;

use nodelet::proxy::model::{Endpoint, PortKey, Protocol, ProxyState, ServicePort};

pub fn synth(services: usize, endpoints: usize) -> ProxyState {
    let mut s = ProxyState::default();
    for i in 0..services {
        let key = PortKey { namespace: format!("ns{}", i % 50), name: format!("svc-{i}"), port: "http".into(), protocol: Protocol::Tcp };
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
        let node_port = (i % 10 == 0).then(|| 30000 + (i / 10) as u16 % 2768);
        s.services.insert(
            key.clone(),
            ServicePort { node_port, ..ServicePort::cluster_ip(key.clone(), ip, 80) },
        );
        let eps = (0..endpoints)
            .map(|e| Endpoint {
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i * endpoints + e) as u32 % 65000 + 2),
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

