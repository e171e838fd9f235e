use super::*;
use crate::cpus::{Assignments, CpuSet, StaticConfig, Topology};

fn h(nodes: &[u32], preferred: bool) -> Hint {
    Hint { mask: Some(mask_of(nodes.iter().copied())), preferred }
}

const TWO: Mask = 0b11;
const FOUR: Mask = 0b1111;

#[test]
fn hints_are_every_placement_with_enough_the_narrowest_preferred() {
    // 4 free units on each of two NUMA nodes.
    let units: Vec<Mask> = [0b01; 4].into_iter().chain([0b10; 4]).collect();
    assert_eq!(generate(TWO, 2, &units, &units), vec![h(&[0], true), h(&[1], true), h(&[0, 1], false)]);
    // More than one node has: both, preferred (nothing narrower could do).
    assert_eq!(generate(TWO, 6, &units, &units), vec![h(&[0, 1], true)]);
    // Node 0 busy: only placements with node 1, but node 0 alone is still
    // the narrowest possible, so node 1 alone is preferred too.
    let free: Vec<Mask> = vec![0b10; 4];
    assert_eq!(generate(TWO, 2, &free, &units), vec![h(&[1], true), h(&[0, 1], false)]);
    assert_eq!(generate(TWO, 5, &free, &units), vec![]);
    // Four NUMA nodes, two units each: 3 units need two nodes.
    let four: Vec<Mask> = (0..4).flat_map(|n| [1u64 << n; 2]).collect();
    let g = generate(FOUR, 3, &four, &four);
    assert!(g.iter().filter(|x| x.preferred).all(|x| x.mask.unwrap().count_ones() == 2), "{g:?}");
    assert_eq!(g.iter().filter(|x| x.preferred).count(), 6, "every pair of the four nodes");
    assert_eq!(g.len(), 6 + 4 + 1);
}

#[test]
fn the_policies_merge_and_admit_as_kubelets() {
    let cpus = Some(vec![h(&[0], true), h(&[1], true), h(&[0, 1], false)]);
    let dev_on_1 = Some(vec![h(&[1], true), h(&[0, 1], false)]);
    for p in [Policy::BestEffort, Policy::Restricted, Policy::SingleNumaNode] {
        assert_eq!(merge(TWO, p, &[cpus.clone(), dev_on_1.clone()]), (h(&[1], true), true), "{p:?}");
    }
    // CPUs free only on node 0, the device only on node 1.
    let cpus_on_0 = Some(vec![h(&[0], true), h(&[0, 1], false)]);
    let (best, admit) = merge(TWO, Policy::BestEffort, &[cpus_on_0.clone(), dev_on_1.clone()]);
    assert_eq!((best, admit), (h(&[0], false), true), "best-effort: the narrowest, admitted all the same");
    assert!(!merge(TWO, Policy::Restricted, &[cpus_on_0.clone(), dev_on_1.clone()]).1, "restricted: no preferred placement");
    let (best, admit) = merge(TWO, Policy::SingleNumaNode, &[cpus_on_0, dev_on_1]);
    assert_eq!((best.mask, admit), (None, false), "single-numa-node: nothing on one node");
    // A provider with no preference leaves the other's choice.
    assert_eq!(merge(TWO, Policy::SingleNumaNode, &[None, cpus.clone()]), (h(&[0], true), true));
    assert_eq!(merge(TWO, Policy::SingleNumaNode, &[None, None]), (Hint { mask: None, preferred: true }, true));
    // A provider that cannot serve the request at all.
    assert!(!merge(TWO, Policy::Restricted, &[cpus.clone(), Some(vec![])]).1);
    assert!(!merge(TWO, Policy::SingleNumaNode, &[cpus.clone(), Some(vec![])]).1);
    assert!(merge(TWO, Policy::BestEffort, &[cpus.clone(), Some(vec![])]).1);
    // Needing both nodes: restricted admits (preferred), single-numa-node does not.
    let wide = Some(vec![h(&[0, 1], true)]);
    assert!(merge(TWO, Policy::Restricted, &[wide.clone()]).1);
    assert!(!merge(TWO, Policy::SingleNumaNode, &[wide]).1);
    // none: no hints asked for, always admitted, no NUMA nodes.
    assert_eq!(merge(TWO, Policy::None, &[Some(vec![])]), (Hint { mask: None, preferred: true }, true));
}

#[test]
fn four_numa_nodes_pick_the_narrowest_common_placement() {
    let cpus = Some(vec![h(&[2], true), h(&[3], true), h(&[2, 3], false), h(&[0, 1, 2, 3], false)]);
    let dev = Some(vec![h(&[1], true), h(&[3], true), h(&[1, 3], false)]);
    assert_eq!(merge(FOUR, Policy::SingleNumaNode, &[cpus.clone(), dev.clone()]), (h(&[3], true), true));
    let far = Some(vec![h(&[0], true), h(&[0, 2], false)]);
    let (best, admit) = merge(FOUR, Policy::Restricted, &[cpus, far]);
    // Nothing preferred in common: the narrowest, the lowest node first.
    assert_eq!((best, admit), (h(&[0], false), false));
}

fn guaranteed_pod(uid: &str, cpu: u32) -> k8s_openapi::api::core::v1::Pod {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {uid}, uid: {uid}}}\nspec:\n  containers: [{{name: c, image: i, resources: {{requests: {{cpu: '{cpu}', memory: 1Gi}}, limits: {{cpu: '{cpu}', memory: 1Gi}}}}}}]\n"
    ))
    .unwrap()
}

#[test]
fn cpu_hints_and_aligned_cpus_on_two_sockets() {
    // 2 sockets (NUMA nodes) × 4 cores × 2 threads: CPUs 0-3,8-11 on node 0.
    let topo = Topology::synthetic(2, 4, 2, 1);
    let mut a = Assignments { reserved: [0u32].into(), all: topo.cpus(), entries: Default::default() };
    let cfg = StaticConfig { reserved: [0u32].into(), reserved_count: 1, full_pcpus_only: false, reconcile_period: std::time::Duration::from_secs(10) };
    let pod = guaranteed_pod("a", 4);
    let hints = crate::cpus::hints(&a, &topo, &pod, Some("c")).unwrap();
    assert_eq!(hints, vec![h(&[0], true), h(&[1], true), h(&[0, 1], false)]);
    // Node 1 chosen: its CPUs, none of node 0's.
    crate::cpus::allocate_aligned(&mut a, &topo, &cfg, &pod, Some("c"), &|_| Some(0b10)).unwrap();
    let got: CpuSet = a.entries["a"]["c"].clone();
    assert_eq!(topo.numa_nodes(&got), [1].into(), "{got:?}");
    // Its hint is now where it is.
    assert_eq!(crate::cpus::hints(&a, &topo, &pod, Some("c")), Some(vec![h(&[1], true)]));
    // 7 free on node 0 (one reserved), 4 on node 1: 6 fit only on node 0.
    let big = guaranteed_pod("b", 6);
    assert_eq!(crate::cpus::hints(&a, &topo, &big, Some("c")), Some(vec![h(&[0], true), h(&[0, 1], false)]));
    // A BestEffort container has no preference.
    let be: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str("metadata: {name: e, uid: e}\nspec:\n  containers: [{name: c, image: i}]\n").unwrap();
    assert_eq!(crate::cpus::hints(&a, &topo, &be, Some("c")), None);
}
