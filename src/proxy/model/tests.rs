use super::*;

fn svc(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn load_balancer_source_ranges_from_the_field_or_the_annotation() {
    let lb = |extra: &str| svc(&format!("metadata: {{name: lb, namespace: default{extra}}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.9, ports: [{{port: 80}}]}}"));
    let ranges = |s: &Service| service_ports(s).unwrap()[0].source_ranges.clone().map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(ranges(&svc("metadata: {name: lb}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, loadBalancerSourceRanges: [10.1.2.3/8, 192.168.0.7/32], ports: [{port: 80}]}")), Some(vec!["10.0.0.0/8".to_string(), "192.168.0.7/32".to_string()]), "normalized to the network");
    assert_eq!(ranges(&lb(", annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: \"10.0.0.0/8, 172.16.0.0/12\"}")), Some(vec!["10.0.0.0/8".to_string(), "172.16.0.0/12".to_string()]));
    assert_eq!(ranges(&lb("")), None, "no ranges: open");
    assert_eq!(ranges(&svc("metadata: {name: lb}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, loadBalancerSourceRanges: [0.0.0.0/0], ports: [{port: 80}]}")), None, "everyone: open");
    assert_eq!(ranges(&svc("metadata: {name: lb}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, loadBalancerSourceRanges: [\"2001:db8::/32\"], ports: [{port: 80}]}")), Some(vec![]), "IPv6 only: IPv4 closed");
    assert_eq!(ranges(&svc("metadata: {name: np}\nspec: {type: NodePort, clusterIP: 10.96.0.9, loadBalancerSourceRanges: [10.0.0.0/8], ports: [{port: 80}]}")), None, "only LoadBalancer Services");
    let bad = svc("metadata: {name: lb, namespace: default}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, loadBalancerSourceRanges: [10.0.0.0/8, ten], ports: [{port: 80}]}");
    assert_eq!(service_ports(&bad).unwrap_err().to_string(), "Service default/lb: spec.loadBalancerSourceRanges[1]: Invalid value: \"ten\": must be a valid CIDR (e.g. 10.0.0.0/8)");
}

#[test]
fn the_seed_services_are_refused_with_the_field() {
    // 003's Service with `protocol: tcp` and `sessionAffinity: CientIP`.
    let bad = svc("metadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80, protocol: tcp}]}");
    assert_eq!(service_ports(&bad).unwrap_err().to_string(), "Service default/web: spec.ports[0].protocol: Unsupported value: \"tcp\": supported values: \"SCTP\", \"TCP\", \"UDP\"");
    let bad = svc("metadata: {name: web}\nspec: {clusterIP: 10.96.0.9, sessionAffinity: CientIP, ports: [{port: 80}]}");
    assert!(service_ports(&bad).unwrap_err().to_string().contains("spec.sessionAffinity: Unsupported value: \"CientIP\""));
    // 000's `clusterIP: NodePort`, and a nodePort out of range.
    let bad = svc("metadata: {name: web}\nspec: {clusterIP: NodePort, ports: [{port: 80}]}");
    assert!(service_ports(&bad).unwrap_err().to_string().contains("spec.clusterIP: Invalid value: \"NodePort\""));
    let bad = svc("metadata: {name: web}\nspec: {type: NodePort, clusterIP: 10.96.0.9, ports: [{port: 80, nodePort: 70000}]}");
    assert!(service_ports(&bad).unwrap_err().to_string().contains("spec.ports[0].nodePort: Invalid value: 70000"));
    // The seed's nodePort 8081 is outside the default range, which the
    // apiserver enforces; a cluster may have configured another range.
    let custom = svc("metadata: {name: web}\nspec: {type: NodePort, clusterIP: 10.96.0.9, ports: [{port: 80, nodePort: 8081}]}");
    assert_eq!(service_ports(&custom).unwrap()[0].node_port, Some(8081));
}

#[test]
fn headless_and_external_name_get_nothing() {
    assert!(service_ports(&svc("metadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}")).unwrap().is_empty());
    assert!(service_ports(&svc("metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}")).unwrap().is_empty());
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let s = service_ports(&svc("metadata: {name: w}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}")).unwrap().remove(0);
    let ep = |n: u8, ready: bool, serving: bool, terminating: bool, local: bool| Endpoint {
        elsewhere: false,
        ip: std::net::IpAddr::from([10, 0, 0, n]),
        port: 80,
        ready,
        serving,
        terminating,
        local,
    };
    let eps = vec![ep(1, true, true, false, false), ep(2, false, true, true, true), ep(3, false, false, false, true)];
    let sel = select(&s, &eps);
    assert_eq!(sel.cluster, vec![eps[0].clone()]);
    let only_terminating = vec![eps[1].clone(), eps[2].clone()];
    assert_eq!(select(&s, &only_terminating).cluster, vec![eps[1].clone()]);
    let mut local = s.clone();
    local.external_local = true;
    let sel = select(&local, &eps);
    assert_eq!(sel.external, vec![eps[1].clone()], "local: serving-terminating since no local one is ready");
    assert_eq!(sel.local_count, 0, "a draining node reports no ready local endpoint to load balancers");
    let mut ready_local = eps.clone();
    ready_local[2].ready = true;
    assert_eq!(select(&local, &ready_local).local_count, 1);

    // internalTrafficPolicy Local: the cluster IP uses only local endpoints,
    // external traffic (Cluster) still all of them.
    let mut itp = s.clone();
    itp.internal_local = true;
    let sel = select(&itp, &eps);
    assert_eq!(sel.cluster, vec![eps[1].clone()]);
    assert_eq!(sel.external, vec![eps[0].clone()]);
}

#[test]
fn duplicate_endpoints_keep_the_ready_one() {
    let svc: Service = serde_yaml::from_str("metadata: {name: w, namespace: d}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}").unwrap();
    let slice = |name: &str, ready: bool, terminating: bool| -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: d, labels: {{kubernetes.io/service-name: w}}}}\naddressType: IPv4\n\
                 ports: [{{port: 80}}]\nendpoints: [{{addresses: [10.0.0.1], conditions: {{ready: {ready}, terminating: {terminating}}}}}]"
        ))
        .unwrap()
    };
    let (old, new) = (slice("a", false, true), slice("b", true, false));
    let state = build([&svc], [&old, &new], "n", &mut Vec::new());
    let eps = state.endpoints.values().next().unwrap();
    assert_eq!(eps.len(), 1);
    assert!(eps[0].ready && !eps[0].terminating, "{eps:?}");
}

#[test]
fn an_address_claimed_twice_goes_to_the_older_service_and_never_from_a_cluster_ip() {
    let svc = |name: &str, created: &str, spec: &str| -> Service {
        serde_yaml::from_str(&format!("metadata: {{name: {name}, namespace: d, creationTimestamp: \"{created}\"}}\nspec: {spec}")).unwrap()
    };
    // "a-new" sorts first but came later: "z-old" keeps the address.
    let old = svc("z-old", "2026-01-01T00:00:00Z", "{clusterIP: 10.96.0.9, externalIPs: [198.51.100.7], ports: [{port: 80}]}");
    let new = svc("a-new", "2026-06-01T00:00:00Z", "{clusterIP: 10.96.0.8, externalIPs: [198.51.100.7, 198.51.100.8], ports: [{port: 80, name: a}, {port: 81, name: b}]}");
    let other_port = svc("other", "2026-07-01T00:00:00Z", "{clusterIP: 10.96.0.7, externalIPs: [198.51.100.7], ports: [{port: 443}]}");
    // An externalIP that is another Service's clusterIP and port, by an older Service.
    let thief = svc("thief", "2020-01-01T00:00:00Z", "{type: LoadBalancer, clusterIP: 10.96.0.6, externalIPs: [10.96.0.9], ports: [{port: 80}]}");
    let (mut errors, mut conflicts) = (Vec::new(), Vec::new());
    let state = build_reporting([&new, &old, &other_port, &thief], [], &Topology { node: "n", zone: None }, &mut errors, &mut conflicts);
    assert!(errors.is_empty(), "{errors:?}");
    let ips = |name: &str, port: &str| state.services.values().find(|s| s.key.name == name && s.key.port == port).unwrap().external_ips.clone();
    let a = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(ips("z-old", ""), vec![a("198.51.100.7")]);
    assert_eq!(ips("a-new", "a"), vec![a("198.51.100.8")], "port 80 on .7 is z-old's");
    assert_eq!(ips("a-new", "b"), vec![a("198.51.100.7"), a("198.51.100.8")], "port 81 is free");
    assert_eq!(ips("other", ""), vec![a("198.51.100.7")], "another port of the address is another claim");
    assert_eq!(ips("thief", ""), Vec::<IpAddr>::new(), "a clusterIP keeps its address");
    let lines: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "Service d/a-new: externalIP 198.51.100.7 port 80/TCP is already served by Service d/z-old (an older claim); this Service is not programmed on that address while the other holds it",
            "Service d/thief: externalIP 10.96.0.9 port 80/TCP is already served by Service d/z-old (its clusterIP); this Service is not programmed on that address while the other holds it",
        ]
    );
    // The holder gone, the next claimant has it.
    let state = build([&new, &other_port], [], "n", &mut Vec::new());
    assert_eq!(state.services.values().find(|s| s.key.name == "a-new" && s.key.port == "a").unwrap().external_ips, vec![a("198.51.100.7"), a("198.51.100.8")]);
}

#[test]
fn a_dual_stack_service_is_one_port_per_family_each_with_its_own_addresses_and_slices() {
    let s = svc(
        "metadata: {name: web, namespace: d}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, clusterIPs: [10.96.0.9, 'fd00:10:96::9'], ipFamilies: [IPv4, IPv6], ipFamilyPolicy: PreferDualStack,\n  externalIPs: [198.51.100.7, '2001:db8::7'], loadBalancerSourceRanges: [192.0.2.0/24], ports: [{name: http, port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.9}, {ip: '2001:db8::9'}]}}",
    );
    let ports = service_ports(&s).unwrap();
    assert_eq!(ports.len(), 2);
    let (v4, v6) = (&ports[0], &ports[1]);
    assert_eq!((v4.key.family, v6.key.family), (Family::V4, Family::V6));
    assert_eq!(v4.key.to_string(), v6.key.to_string(), "one ServicePortName, as kube-proxy's");
    assert_eq!(v6.cluster_ip.to_string(), "fd00:10:96::9");
    assert_eq!(v6.external_ips, vec!["2001:db8::7".parse::<IpAddr>().unwrap()]);
    assert_eq!(v4.external_ips, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(v6.load_balancer_ips, vec!["2001:db8::9".parse::<IpAddr>().unwrap()]);
    assert_eq!(v4.source_ranges.as_ref().map(Vec::len), Some(1));
    assert_eq!(v6.source_ranges, Some(vec![]), "ranges of IPv4 only: IPv6's load-balancer IP stays closed");
    assert_eq!((v4.node_port, v6.node_port), (Some(30080), Some(30080)), "one node port, both families");

    let v6_only = svc("metadata: {name: six}\nspec: {clusterIP: 'fd00:10:96::6', clusterIPs: ['fd00:10:96::6'], ipFamilies: [IPv6], ports: [{port: 53, protocol: UDP}]}");
    assert_eq!(service_ports(&v6_only).unwrap()[0].key.family, Family::V6, "an IPv6-only Service is programmed");

    let twice = svc("metadata: {name: two, namespace: d}\nspec: {clusterIP: 10.96.0.9, clusterIPs: [10.96.0.9, 10.96.0.10], ports: [{port: 80}]}");
    assert_eq!(
        service_ports(&twice).unwrap_err().to_string(),
        "Service d/two: spec.clusterIPs[1]: Invalid value: \"10.96.0.10\": may specify no more than one IP for each IP family"
    );

    // Slices: one per family, each feeding its family's port.
    let slice = |name: &str, family: &str, addr: &str| -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: d, labels: {{kubernetes.io/service-name: web}}}}\naddressType: {family}\nendpoints: [{{addresses: ['{addr}'], nodeName: n}}]\nports: [{{name: http, port: 8080}}]"
        ))
        .unwrap()
    };
    let (a, b) = (slice("web-v4", "IPv4", "10.244.0.5"), slice("web-v6", "IPv6", "fd00:10:244::5"));
    let mut errors = Vec::new();
    let state = build([&s], [&a, &b], "n", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(state.families(), [Family::V4, Family::V6].into());
    let eps = |f: Family| state.endpoints.iter().find(|(k, _)| k.family == f).map(|(_, e)| e.iter().map(|e| e.to_string()).collect::<Vec<_>>());
    assert_eq!(eps(Family::V4), Some(vec!["10.244.0.5:8080".to_string()]));
    assert_eq!(eps(Family::V6), Some(vec!["[fd00:10:244::5]:8080".to_string()]));
    assert_eq!(state.family(Family::V6).services.len(), 1);

    let mixed = slice("web-bad", "IPv4", "fd00:10:244::5");
    let mut errors = Vec::new();
    build([&s], [&mixed], "n", &mut errors);
    assert_eq!(errors[0].to_string(), "EndpointSlice d/web-bad: endpoints[0].addresses[0]: Invalid value: \"fd00:10:244::5\": must be a valid IPv4 address");
}

#[test]
fn a_load_balancer_ip_in_proxy_mode_is_not_captured() {
    let s = svc("metadata: {name: lb}\nspec: {type: LoadBalancer, clusterIP: 10.96.0.9, ports: [{port: 80}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1, ipMode: Proxy}, {ip: 203.0.113.2, ipMode: VIP}, {ip: 203.0.113.3}]}}");
    let ips: Vec<String> = service_ports(&s).unwrap()[0].load_balancer_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["203.0.113.2", "203.0.113.3"]);
}

#[test]
fn topology_hints_keep_cluster_traffic_in_the_zone_or_on_the_node_when_every_ready_endpoint_has_them() {
    let s = svc("metadata: {name: web, namespace: d}\nspec: {clusterIP: 10.96.0.9, trafficDistribution: PreferClose, ports: [{port: 80}]}");
    let slice = |endpoints: &str| -> EndpointSlice {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web-1, namespace: d, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: {endpoints}\nports: [{{port: 8080}}]"
        ))
        .unwrap()
    };
    let zoned = slice(
        "[{addresses: [10.0.0.1], nodeName: n, hints: {forZones: [{name: a}]}},\n  {addresses: [10.0.0.2], nodeName: m, hints: {forZones: [{name: a}]}},\n  {addresses: [10.0.0.3], nodeName: o, hints: {forZones: [{name: b}]}}]",
    );
    let cluster = |sl: &EndpointSlice, node: &str, zone: Option<&str>| -> Vec<String> {
        let mut errors = Vec::new();
        let state = build_reporting([&s], [sl], &Topology { node, zone }, &mut errors, &mut Vec::new());
        assert!(errors.is_empty(), "{errors:?}");
        let (key, svc) = state.services.iter().next().unwrap();
        select(svc, &state.endpoints[key]).cluster.iter().map(|e| e.ip.to_string()).collect()
    };
    assert_eq!(cluster(&zoned, "n", Some("a")), ["10.0.0.1", "10.0.0.2"], "zone a's endpoints for a node in zone a");
    assert_eq!(cluster(&zoned, "o", Some("b")), ["10.0.0.3"]);
    assert_eq!(cluster(&zoned, "x", Some("c")), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "no endpoint for zone c: every endpoint");
    assert_eq!(cluster(&zoned, "n", None), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "a node without a zone label: every endpoint");
    let partly = slice("[{addresses: [10.0.0.1], nodeName: n, hints: {forZones: [{name: a}]}}, {addresses: [10.0.0.2], nodeName: m}]");
    assert_eq!(cluster(&partly, "n", Some("a")), ["10.0.0.1", "10.0.0.2"], "hints on some endpoints only: ignored");
    let not_ready_unhinted = slice("[{addresses: [10.0.0.1], nodeName: n, hints: {forZones: [{name: a}]}}, {addresses: [10.0.0.2], nodeName: m, conditions: {ready: false}}]");
    assert_eq!(cluster(&not_ready_unhinted, "m", Some("a")), ["10.0.0.1"], "only ready endpoints need hints");
    let same_node = slice(
        "[{addresses: [10.0.0.1], nodeName: n, hints: {forZones: [{name: a}], forNodes: [{name: n}]}},\n  {addresses: [10.0.0.2], nodeName: m, hints: {forZones: [{name: a}], forNodes: [{name: m}]}}]",
    );
    assert_eq!(cluster(&same_node, "n", Some("a")), ["10.0.0.1"], "PreferSameNode: this node's endpoint");
    assert_eq!(cluster(&same_node, "z", Some("a")), ["10.0.0.1", "10.0.0.2"], "no endpoint for this node: the zone's");
    // Local traffic policies are not narrowed by hints.
    let local = svc("metadata: {name: web, namespace: d}\nspec: {clusterIP: 10.96.0.9, internalTrafficPolicy: Local, ports: [{port: 80}]}");
    let state = build_reporting([&local], [&zoned], &Topology { node: "o", zone: Some("a") }, &mut Vec::new(), &mut Vec::new());
    let (key, svc) = state.services.iter().next().unwrap();
    assert_eq!(select(svc, &state.endpoints[key]).cluster.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(), ["10.0.0.3"], "this node's endpoint, though hinted to zone b");
}
