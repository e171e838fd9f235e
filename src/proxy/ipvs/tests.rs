use super::*;
use crate::proxy::model;
use std::net::Ipv4Addr;

fn settings() -> IpvsSettings {
    IpvsSettings::default()
}

fn fixture() -> (ProxyState, Context) {
    let (s, mut ctx) = crate::proxy::fixture::basic();
    ctx.node_port_ips = Some(vec![Ipv4Addr::new(192, 168, 1, 10).into()]);
    (s, ctx)
}

#[test]
fn golden_dry_run() {
    let (s, ctx) = fixture();
    let text = render_full_text(&s, &ctx, &settings());
    crate::proxy::golden::check("tests/golden/ipvs/basic.txt", &text);
}

#[test]
fn the_ruleset_does_not_grow_with_services() {
    let (mut s, ctx) = fixture();
    let rules = |s: &ProxyState| render_full_text(s, &ctx, &settings()).lines().filter(|l| l.starts_with("add rule")).count();
    let before = rules(&s);
    for i in 0..50u8 {
        let key = PortKey { namespace: "bulk".into(), name: format!("s{i}"), port: String::new(), protocol: model::Protocol::Tcp, family: model::Family::V4 };
        let mut sp = ServicePort::cluster_ip(key.clone(), Ipv4Addr::new(10, 97, 0, i).into(), 80);
        sp.node_port = Some(31000 + u16::from(i));
        s.services.insert(key, sp);
    }
    assert_eq!(rules(&s), before);
}

#[test]
fn an_endpoint_change_is_a_few_operations() {
    let (mut s, ctx) = fixture();
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    let key = s.endpoints.keys().find(|k| k.name == "web").unwrap().clone();
    s.endpoints.get_mut(&key).unwrap()[1].ip = Ipv4Addr::new(10, 244, 0, 99).into();
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(
        b.last_changes,
        vec![
            "ipvs add server tcp 10.96.0.10:80 -> 10.244.0.99:8080 masq weight 1".to_string(),
            "ipvs update server tcp 10.96.0.10:80 -> 10.244.0.11:8080 masq weight 0".to_string(),
        ]
    );
    // The drained server goes at the next sync (a dry run sees no
    // connections); then there is nothing to do.
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(b.last_changes, vec!["ipvs delete server tcp 10.96.0.10:80 -> 10.244.0.11:8080".to_string()]);
    assert_eq!(b.recheck(), None);
    b.sync(&s, &ctx, false).unwrap();
    assert!(b.last_changes.is_empty(), "{:?}", b.last_changes);
}

#[test]
fn a_deleted_service_goes_with_its_address_and_a_shared_address_stays() {
    let (mut s, ctx) = fixture();
    // A second port on web's ClusterIP.
    let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
    let mut https = web.clone();
    https.port = "https".into();
    let mut sp = s.services[&web].clone();
    sp.key = https.clone();
    sp.port = 443;
    s.services.insert(https.clone(), sp);
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    s.services.remove(&https);
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(b.last_changes, vec!["ipvs delete service tcp 10.96.0.10:443".to_string()]);
    s.services.remove(&web);
    s.endpoints.remove(&web);
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(
        b.last_changes,
        vec!["address delete 10.96.0.10/32 dev kube-ipvs0".to_string(), "ipvs delete service tcp 10.96.0.10:80".to_string()]
    );
}

#[test]
fn a_shared_virtual_service_passes_to_the_other_service() {
    let (mut s, ctx) = fixture();
    let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
    let sticky = s.services.keys().find(|k| k.name == "sticky").unwrap().clone();
    let shared = Ipv4Addr::new(192, 0, 2, 50);
    s.services.get_mut(&web).unwrap().external_ips = vec![shared.into()];
    s.services.get_mut(&sticky).unwrap().external_ips = vec![shared.into()];
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    // default/sticky sorts before default/web: the first claimant wins.
    assert!(b.last_changes.iter().any(|l| l == "ipvs add service tcp 192.0.2.50:80 scheduler rr persistent 10800"), "{:?}", b.last_changes);
    s.services.get_mut(&sticky).unwrap().external_ips.clear();
    b.sync(&s, &ctx, false).unwrap();
    assert!(!b.last_changes.iter().any(|l| l.contains("delete service tcp 192.0.2.50:80") || l.contains("address delete 192.0.2.50")), "{:?}", b.last_changes);
    assert!(b.last_changes.iter().any(|l| l == "ipvs update service tcp 192.0.2.50:80 scheduler rr"), "web's spec takes over: {:?}", b.last_changes);
    assert!(b.last_changes.iter().any(|l| l == "ipvs add server tcp 192.0.2.50:80 -> 10.244.0.10:8080 masq weight 1"), "{:?}", b.last_changes);
    assert!(b.last_changes.iter().any(|l| l == "ipvs update server tcp 192.0.2.50:80 -> 10.244.0.10:80 masq weight 0"), "{:?}", b.last_changes);
}

#[test]
fn a_deleted_service_takes_its_draining_servers_along() {
    let (mut s, ctx) = fixture();
    let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    s.endpoints.get_mut(&web).unwrap().remove(0);
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(b.last_changes, vec!["ipvs update server tcp 10.96.0.10:80 -> 10.244.0.10:8080 masq weight 0".to_string()]);
    s.services.remove(&web);
    s.endpoints.remove(&web);
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(b.last_changes, vec!["address delete 10.96.0.10/32 dev kube-ipvs0".to_string(), "ipvs delete service tcp 10.96.0.10:80".to_string()]);
    assert_eq!(b.recheck(), None);
}

#[test]
fn an_external_ip_of_the_node_is_not_bound() {
    let (mut s, ctx) = fixture();
    let web = s.services.keys().find(|k| k.name == "web").unwrap().clone();
    s.services.get_mut(&web).unwrap().external_ips = vec![Ipv4Addr::LOCALHOST.into()];
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    assert!(b.last_changes.iter().any(|l| l == "ipvs add service tcp 127.0.0.1:80 scheduler rr"), "{:?}", b.last_changes);
    assert!(!b.last_changes.iter().any(|l| l.contains("address add 127.0.0.1")), "{:?}", b.last_changes);
    assert!(!b.element_refs.contains_key(&("vips", "127.0.0.1".to_string())));
}

#[test]
fn a_udp_server_goes_at_once() {
    let (mut s, ctx) = fixture();
    let dns = s.services.keys().find(|k| k.name == "dns").unwrap().clone();
    let ep = Endpoint { elsewhere: false, ip: Ipv4Addr::new(10, 244, 0, 20).into(), port: 53, ready: true, serving: true, terminating: false, local: true };
    s.endpoints.insert(dns.clone(), vec![ep]);
    let mut b = Ipvs::new(Family::V4, settings(), true).unwrap();
    b.sync(&s, &ctx, true).unwrap();
    s.endpoints.remove(&dns);
    b.sync(&s, &ctx, false).unwrap();
    assert_eq!(b.last_changes, vec!["ipvs delete server udp 10.96.0.53:53 -> 10.244.0.20:53".to_string()]);
}

/// Dual-stack: one backend per family over one model, each planning only
/// its family's Service ports (IPv6 virtual services, servers and /128
/// addresses on kube-ipvs0, its own `ip6` table); the kernel takes both
/// rulesets (`nft --check`: checked, nothing committed).
#[test]
fn each_family_has_its_backend_and_the_kernel_takes_both_rulesets() {
    let (s6, mut c6) = crate::proxy::fixture::basic_v6();
    c6.node_port_ips = Some(vec!["fd00:1::10".parse().unwrap()]);
    let text = render_full_text(&s6, &c6, &settings());
    crate::proxy::golden::check("tests/golden/ipvs/basic-v6.txt", &text);
    let (dual, mut contexts) = crate::proxy::fixture::dual();
    contexts[0].node_port_ips = Some(vec![Ipv4Addr::new(192, 168, 1, 10).into()]);
    contexts[1].node_port_ips = c6.node_port_ips.clone();
    assert_eq!(render_full_text(&dual, &contexts[1], &settings()), text, "the IPv6 backend of a dual-stack model plans its family only");
    let (s4, c4) = fixture();
    assert_eq!(render_full_text(&dual, &contexts[0], &settings()), render_full_text(&s4, &c4, &settings()));
    assert!(text.contains("ipvs add service tcp [fd00:10:96::10]:80 scheduler rr"), "{text}");
    assert!(text.contains("ipvs add server tcp [fd00:10:96::10]:80 -> [fd00:10:244::10]:8080 masq weight 1"), "{text}");
    assert!(text.contains("address add fd00:10:96::10/128 dev kube-ipvs0"), "{text}");
    assert!(text.contains("ipvs add service tcp [fd00:1::10]:30080 scheduler rr persistent 10800"), "the node port on the node's IPv6 address: {text}");
    assert!(text.contains("add table ip6 nodelet-ipvs") && !text.contains("ip daddr") && !text.contains(" ip nodelet-ipvs"), "{text}");
    assert!(!text.contains("10.96.") && !text.contains("192.168."), "no IPv4 in the IPv6 backend's plan: {text}");
    assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does");
    for ctx in &contexts {
        let mut b = Ipvs::new(ctx.family, settings(), true).unwrap();
        b.sync(&dual, ctx, true).unwrap();
        let mut ruleset = render_ruleset(ctx, b.element_refs.keys());
        // A firewall rule of each family's syntax, as loadBalancerSourceRanges write it.
        let lb = if ctx.family == Family::V4 { "192.0.2.80" } else { "2001:db8::80" };
        let range = if ctx.family == Family::V4 { "192.0.2.0/24" } else { "2001:db8::/64" };
        ruleset.push_str(&format!("add rule {} firewall {} daddr {lb} meta l4proto tcp th dport 80 {} saddr != {{ {range} }} drop\n", ruleset::table(ctx.family), ctx.family.nft(), ctx.family.nft()));
        crate::proxy::run_with_input("nft", &["--check", "-f", "-"], &ruleset).unwrap_or_else(|e| panic!("{}: {e}\n{ruleset}", ctx.family));
    }
}
