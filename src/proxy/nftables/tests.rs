use super::*;
use crate::proxy::run_with_input;

#[test]
fn golden_full_ruleset() {
    let (s, ctx) = crate::proxy::fixture::basic();
    let text = render_full_text(&s, &ctx);
    crate::proxy::golden::check("tests/golden/nftables/basic.nft", &text);
    assert_eq!(text, render_full_text(&s, &ctx), "deterministic");
}

#[test]
fn golden_ipv6_ruleset_in_its_own_table_and_the_kernel_takes_both() {
    let (s, ctx) = crate::proxy::fixture::basic_v6();
    let text = render_full_text(&s, &ctx);
    crate::proxy::golden::check("tests/golden/nftables/basic-v6.nft", &text);
    assert!(text.contains("add table ip6 nodelet") && !text.contains(" ip nodelet") && !text.contains("ip daddr"), "{text}");
    // One dual-stack model: each family's rules have its Service ports only.
    let (dual, contexts) = crate::proxy::fixture::dual();
    assert_eq!(render(&dual, &contexts[0]), render(&s4(), &contexts[0]));
    assert_eq!(render(&dual, &contexts[1]), render(&s, &ctx));
    // The kernel checks the syntax and the types (`nft --check` aborts the
    // transaction in the kernel; nothing is committed).
    assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does");
    for c in &contexts {
        check(&dual, c).unwrap_or_else(|e| panic!("{}: {e}", c.family));
    }
}

fn s4() -> ProxyState {
    crate::proxy::fixture::basic().0
}

#[test]
fn an_endpoint_change_touches_only_its_elements_and_chains() {
    let (mut s, ctx) = crate::proxy::fixture::basic();
    let before = render(&s, &ctx);
    let key = s.endpoints.keys().find(|k| k.name == "web").unwrap().clone();
    s.endpoints.get_mut(&key).unwrap()[1].ip = std::net::Ipv4Addr::new(10, 244, 0, 99).into();
    let after = render(&s, &ctx);
    let (script, n) = transaction(Some(&before), &after, &BTreeSet::new(), &BTreeSet::new());
    assert_eq!(n, 1, "only the service chain: {script}");
    assert!(script.contains(&format!("flush chain ip nodelet service-{}", base(&key))), "{script}");
    assert!(script.contains("add element ip nodelet hairpin { 10.244.0.99 . 10.244.0.99 }"), "{script}");
    assert!(!script.contains("delete element ip nodelet hairpin"), "10.244.0.11 still serves other Services: {script}");
    assert!(!script.contains("element ip nodelet service-ips"), "no map element changes: {script}");
    assert!(!script.contains("sticky"), "other Services untouched: {script}");
    assert!(!script.contains("add chain ip nodelet service-"), "existing chains are not added again: {script}");

    // The last endpoint gone: the element moves to no-endpoint-services
    // and the chain goes after nothing refers to it.
    s.endpoints.remove(&key);
    let (script, _) = transaction(Some(&after), &render(&s, &ctx), &BTreeSet::new(), &BTreeSet::new());
    let del = script.find("delete element ip nodelet service-ips { 10.96.0.10 . tcp . 80 }").expect(&script);
    assert!(script.contains("add element ip nodelet no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }"), "{script}");
    let gone = script.find(&format!("delete chain ip nodelet service-{}", base(&key))).expect(&script);
    assert!(del < gone, "{script}");
}

/// The commands of a script, ignoring order, header and how elements
/// are grouped into commands.
fn commands(script: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in script.lines() {
        if let Some((verb, rest)) = line.split_once(" element ip nodelet ") {
            let (set, items) = rest.split_once(' ').unwrap();
            for item in items.trim_matches(|c| c == '{' || c == '}' || c == ' ').split(", ") {
                out.insert(format!("{verb} {set} {item}"));
            }
        } else if !line.starts_with("add table") && !line.starts_with("add map") && !line.contains(" hook ") && !line.starts_with("add set ip nodelet hairpin") {
            out.insert(line.to_string());
        }
    }
    out
}

#[test]
fn partial_syncs_equal_the_diff_of_full_renders() {
    let (a, ctx) = crate::proxy::fixture::basic();
    let mut steps = vec![a.clone()];
    let web = a.endpoints.keys().find(|k| k.name == "web").unwrap().clone();
    let sticky = a.services.keys().find(|k| k.name == "sticky").unwrap().clone();
    let mut b = a.clone();
    b.endpoints.get_mut(&web).unwrap()[0].ip = std::net::Ipv4Addr::new(10, 244, 0, 77).into();
    steps.push(b.clone());
    let mut c = b.clone();
    c.services.remove(&sticky);
    c.endpoints.remove(&sticky);
    steps.push(c.clone());
    let mut d = c.clone();
    d.endpoints.insert(web.clone(), vec![]);
    steps.push(d);
    steps.push(a.clone());
    let mut nft = Nftables::new(crate::proxy::model::Family::V4, true);
    nft.sync(&steps[0], &ctx, true).unwrap();
    for w in steps.windows(2) {
        nft.sync(&w[1], &ctx, false).unwrap();
        let want = transaction(Some(&render(&w[0], &ctx)), &render(&w[1], &ctx), &BTreeSet::new(), &BTreeSet::new()).0;
        assert_eq!(commands(&nft.last_script), commands(&want), "partial:\n{}\nfull diff:\n{want}", nft.last_script);
    }
}

#[test]
fn each_endpoint_gets_an_equal_chance() {
    // P(i) = 1/(n-i) × Π_{j<i} (1 - 1/(n-j)) = 1/n.
    let (s, ctx) = crate::proxy::fixture::basic();
    let r = render(&s, &ctx);
    let key = s.endpoints.keys().find(|k| k.name == "web").unwrap();
    let rules = &r.chains[&format!("service-{}", base(key))];
    assert!(rules[1].to_string().starts_with("numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.0.10:8080"), "{rules:?}");
    assert_eq!(rules[2].to_string(), "meta l4proto tcp dnat to 10.244.0.11:8080");
}

/// What a previous run left in the table (a chain and an affinity set no
/// Service has now, a rule in a base chain) is read back over netlink at
/// the first sync and removed; the Services' own objects stay.
#[test]
fn leftovers_are_read_over_netlink_and_removed_at_the_first_sync() {
    let (s, ctx) = crate::proxy::fixture::basic();
    let (listed, after) = in_scratch_netns(move || {
        let mut first = Nftables::new(ctx.family, false);
        first.sync(&s, &ctx, true).unwrap();
        run_with_input(
            "nft",
            &["-f", "-"],
            "add chain ip nodelet endpoint-ABCDEFGH-a/b/tcp/__10.0.0.1/80\nadd set ip nodelet affinity-OLD { type ipv4_addr ; flags dynamic,timeout ; timeout 10s ; }\nadd rule ip nodelet nat-output jump endpoint-ABCDEFGH-a/b/tcp/__10.0.0.1/80\n",
        )
        .unwrap();
        let mut sock = crate::proxy::nfnl::Socket::open().unwrap();
        // Single elements asked of the kernel (as the event benchmark does).
        assert!(has_element(&mut sock, ctx.family, "hairpin", "10.244.0.10 . 10.244.0.10").unwrap());
        assert!(!has_element(&mut sock, ctx.family, "hairpin", "10.244.0.99 . 10.244.0.99").unwrap());
        assert!(has_element(&mut sock, ctx.family, "service-ips", "10.96.0.10 . tcp . 80").unwrap());
        let listed = netlink::list(&mut sock, ctx.family).unwrap();
        let mut next = Nftables::new(ctx.family, false);
        next.sync(&s, &ctx, true).unwrap();
        (listed, nft_list(ctx.family))
    });
    assert!(listed.0.contains("endpoint-ABCDEFGH-a/b/tcp/__10.0.0.1/80") && listed.0.contains("services"), "{listed:?}");
    assert!(!listed.0.contains("nat-output"), "base chains are not leftovers: {listed:?}");
    assert!(listed.1.contains("affinity-OLD") && !listed.1.contains("hairpin") && !listed.1.contains("service-ips"), "{listed:?}");
    assert!(!after.contains("endpoint-ABCDEFGH") && !after.contains("affinity-OLD"), "{after}");
    assert!(after.contains("chain services") && after.contains("affinity-6INKFCIS"), "{after}");
}

/// A deterministic pseudo-random model of `n` Service ports of `family`:
/// every protocol, node ports, external and load-balancer IPs with source
/// ranges (overlapping, touching, host-sized, none), affinity, both traffic
/// policies, endpoints here and elsewhere, ready, serving, terminating, and
/// ports with no endpoint at all.
fn random_model(n: usize, family: Family, seed: u64) -> ProxyState {
    use crate::proxy::model::Protocol;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut x = seed;
    let mut rnd = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let addr = |a: u8, b: u8, c: u8, d: u8| -> IpAddr {
        match family {
            Family::V4 => Ipv4Addr::new(a, b, c, d).into(),
            Family::V6 => Ipv6Addr::new(0xfd00, u16::from(a), u16::from(b), 0, 0, 0, u16::from(c), u16::from(d)).into(),
        }
    };
    let net = |a: u8, b: u8, prefix4: u8| -> IpNetwork {
        match family {
            Family::V4 => IpNetwork::new(Ipv4Addr::new(a, b, 0, 0).into(), prefix4).unwrap(),
            Family::V6 => IpNetwork::new(Ipv6Addr::new(0xfd00, u16::from(a), u16::from(b), 0, 0, 0, 0, 0).into(), prefix4 + 96).unwrap(),
        }
    };
    let mut s = ProxyState::default();
    for i in 0..n {
        let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][rnd(3) as usize];
        let key = PortKey { namespace: format!("ns{}", rnd(7)), name: format!("svc-{i}"), port: if rnd(2) == 0 { String::new() } else { "p".into() }, protocol, family };
        let mut sp = ServicePort::cluster_ip(key.clone(), addr(10, 96, (i / 250) as u8, (i % 250) as u8 + 1), 80 + rnd(3) as u16);
        if rnd(4) == 0 {
            sp.node_port = Some(30000 + i as u16);
        }
        if rnd(8) == 0 {
            sp.external_ips = vec![addr(198, 51, (i / 250) as u8, (i % 250) as u8 + 1)];
        }
        if rnd(6) == 0 {
            sp.load_balancer_ips = vec![addr(203, 0, (i / 250) as u8, (i % 250) as u8 + 1)];
            sp.source_ranges = match rnd(5) {
                0 => None,
                1 => Some(vec![]),
                2 => Some(vec![net(10, 0, 8)]),
                3 => Some(vec![net(10, 0, 8), net(11, 0, 8), net(10, 1, 16), net(172, 16, 12)]),
                _ => Some(vec![net(192, 168, 16), IpNetwork::from(addr(1, 2, 3, 4)), IpNetwork::from(addr(1, 2, 3, 5))]),
            };
        }
        if rnd(5) == 0 {
            sp.affinity = Some(10 + rnd(10800) as u32);
        }
        sp.external_local = rnd(4) == 0;
        sp.internal_local = rnd(6) == 0;
        let eps = (0..rnd(5))
            .map(|e| {
                let ready = rnd(5) != 0;
                Endpoint {
                    elsewhere: false,
                    ip: addr(10, 244, (i / 200) as u8, (e * 40 + rnd(40)) as u8 + 1),
                    port: 8000 + rnd(3) as u16,
                    ready,
                    serving: ready || rnd(2) == 0,
                    terminating: !ready && rnd(2) == 0,
                    local: rnd(2) == 0,
                }
            })
            .collect::<Vec<_>>();
        s.services.insert(key.clone(), sp);
        if !eps.is_empty() {
            s.endpoints.insert(key, eps);
        }
    }
    s
}

/// Runs `f` on a thread of its own in a new network namespace, which goes
/// away with the thread (nft children inherit it).
fn in_scratch_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    assert!(nix::unistd::Uid::effective().is_root(), "needs root, as the whole suite does");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of the test's own");
        f()
    })
    .join()
    .expect("the namespace's thread")
}

/// `nft list table` of `family`'s table with its chains, sets and maps in
/// name order: the kernel lists them in the order they were made, which
/// differs between a partial sync and a full write of the same rules (rules
/// keep their order inside a chain).
fn nft_list(family: Family) -> String {
    let text = run_with_input("nft", &["list", "table", family.nft(), TABLE], "").expect("nft list");
    let mut head = Vec::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        let top = line.starts_with('\t') && !line.starts_with("\t\t");
        if top && ["\tchain ", "\tset ", "\tmap "].iter().any(|p| line.starts_with(p)) {
            blocks.push(vec![line]);
        } else if let Some(b) = blocks.last_mut().filter(|b| b.last() != Some(&"\t}")) {
            b.push(line);
        } else if !line.trim().is_empty() {
            head.push(line);
        }
    }
    blocks.sort();
    let mut out = head.join("\n");
    for b in blocks {
        out.push('\n');
        out.push_str(&b.join("\n"));
    }
    out
}

/// One plan, two encodings, proved equal by the kernel: the table a
/// netlink sync leaves, as `nft list` prints it, is the table `nft -f` of
/// the printed script gives — for the golden fixture in both families, a
/// random model of 1,000 Service ports, and a partial sync after changes.
#[test]
fn the_netlink_batch_and_the_printed_script_give_the_kernel_the_same_table() {
    let (s4, c4) = crate::proxy::fixture::basic();
    let (s6, c6) = crate::proxy::fixture::basic_v6();
    let cidr4 = "10.244.0.0/20".parse().unwrap();
    let mut cases = vec![
        ("golden", s4.clone(), c4.clone(), None),
        ("golden v6", s6, c6.clone(), None),
        ("random 1,000", random_model(1000, Family::V4, 7), Context { cluster_cidr: Some(cidr4), ..c4.clone() }, Some(11)),
        ("random v6", random_model(300, Family::V6, 9), Context { masquerade_all: true, ..c6.clone() }, Some(13)),
    ];
    // Configured node-port addresses (an anonymous set), masquerade-all.
    let ips = vec!["192.0.2.10".parse().unwrap(), "192.0.2.11".parse().unwrap(), "2001:db8::1".parse().unwrap()];
    cases.push(("node-port addresses", random_model(50, Family::V4, 3), Context { node_port_ips: Some(ips), masquerade_all: true, ..c4 }, None));
    for (name, state, ctx, change_seed) in cases {
        let (via_netlink, via_nft, partial) = in_scratch_netns(move || {
            let mut n = Nftables::new(ctx.family, false);
            n.sync(&state, &ctx, true).unwrap_or_else(|e| panic!("{name}: {e}"));
            let via_netlink = nft_list(ctx.family);
            // A partial sync after changes, against a full write of the result.
            let partial = change_seed.map(|seed| {
                let mut changed = random_model(state.services.len(), ctx.family, seed);
                changed.services.retain(|k, _| !k.name.ends_with('7'));
                n.sync(&changed, &ctx, false).unwrap_or_else(|e| panic!("{name}, partial: {e}"));
                let after = nft_list(ctx.family);
                delete_table(ctx.family, TABLE).unwrap();
                run_with_input("nft", &["-f", "-"], &render_full_text(&changed, &ctx)).unwrap_or_else(|e| panic!("{name}, partial: {e}"));
                (after, nft_list(ctx.family))
            });
            delete_table(ctx.family, TABLE).unwrap();
            assert!(run_with_input("nft", &["list", "table", ctx.family.nft(), TABLE], "").is_err(), "deleted over netlink");
            run_with_input("nft", &["-f", "-"], &render_full_text(&state, &ctx)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (via_netlink, nft_list(ctx.family), partial)
        });
        assert!(via_netlink.lines().count() > 20, "{name}: {via_netlink}");
        if via_netlink != via_nft {
            let diff: Vec<_> = via_netlink.lines().zip(via_nft.lines()).filter(|(a, b)| a != b).take(10).collect();
            panic!("{name}: the tables differ (netlink, nft -f): {diff:#?}");
        }
        if let Some((a, b)) = partial {
            if a != b {
                let diff: Vec<_> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).take(10).collect();
                panic!("{name}: after a partial sync the tables differ (netlink, nft -f): {diff:#?}");
            }
        }
    }
}

/// A batch the kernel refuses changes nothing, and the error names the
/// refused object in nft syntax; the check (a batch without its end)
/// finds the same refusal and commits nothing either.
#[test]
fn a_refused_batch_names_the_rule_and_changes_nothing() {
    let (s, ctx) = crate::proxy::fixture::basic();
    let (checked, committed, table_after) = in_scratch_netns(move || {
        let mut r = render(&s, &ctx);
        r.chains.get_mut("services").unwrap().push(Rule::new(Family::V4, vec![Stmt::Jump("no-such-chain".into())]));
        let none = BTreeSet::new();
        let (ops, _) = plan(None, &r, &none, &none);
        let mut sock = crate::proxy::nfnl::Socket::open().unwrap();
        let describe = |about: &Vec<netlink::About>| {
            let about: Vec<String> = about.iter().map(|a| netlink::describe(Family::V4, a)).collect();
            move |tag: usize| about[tag].clone()
        };
        let (batch, about) = netlink::batch(Family::V4, &ops).unwrap();
        let checked = sock.check(batch, describe(&about)).unwrap_err().to_string();
        let (batch, about) = netlink::batch(Family::V4, &ops).unwrap();
        let committed = sock.commit(batch, describe(&about)).unwrap_err().to_string();
        (checked, committed, run_with_input("nft", &["list", "table", "ip", TABLE], ""))
    });
    for e in [&checked, &committed] {
        assert!(e.contains("the rule `add rule ip nodelet services jump no-such-chain`"), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
    }
    assert!(table_after.is_err(), "nothing committed: {table_after:?}");
}

