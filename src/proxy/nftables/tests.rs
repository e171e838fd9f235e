use super::*;

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
    assert!(rules[1].starts_with("numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.0.10:8080"), "{rules:?}");
    assert_eq!(rules[2], "meta l4proto tcp dnat to 10.244.0.11:8080");
}

#[test]
fn leftovers_are_found_in_a_listing() {
    let listing = "table ip nodelet {\n\tchain services {\n\t}\n\tchain nat-output {\n\t\ttype nat hook output priority dstnat; policy accept;\n\t}\n\tchain endpoint-ABCDEFGH-a/b/tcp/__10.0.0.1/80 {\n\t}\n}\n";
    assert_eq!(
        parse_listed(listing, "chain"),
        BTreeSet::from(["endpoint-ABCDEFGH-a/b/tcp/__10.0.0.1/80".to_string(), "services".to_string()])
    );
}
