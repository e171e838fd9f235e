use super::*;

fn pod(uid: &str, containers: &str) -> Pod {
    serde_yaml::from_str(&format!("metadata: {{name: {uid}, uid: {uid}}}\nspec:\n{containers}")).unwrap()
}

fn guaranteed(name: &str, cpu: &str) -> String {
    format!("{{name: {name}, image: i, resources: {{requests: {{cpu: '{cpu}', memory: 1Gi}}, limits: {{cpu: '{cpu}', memory: 1Gi}}}}}}")
}

fn cfg(full: bool) -> StaticConfig {
    StaticConfig { reserved: CpuSet::new(), reserved_count: 1, full_pcpus_only: full, reconcile_period: Duration::from_secs(10) }
}

fn state(topo: &Topology, reserved: &[u32]) -> Assignments {
    Assignments { reserved: reserved.iter().copied().collect(), all: topo.cpus(), entries: BTreeMap::new() }
}

fn set(cpus: &[u32]) -> CpuSet {
    cpus.iter().copied().collect()
}

#[test]
fn cpu_lists_round_trip() {
    assert_eq!(format(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
    assert_eq!(parse("0-2,4,6-7").unwrap(), set(&[0, 1, 2, 4, 6, 7]));
    assert_eq!(format(&CpuSet::new()), "");
}

#[test]
fn only_whole_cpus_of_guaranteed_pods_are_exclusive() {
    let p = pod("a", &format!("  containers: [{}, {}]\n", guaranteed("whole", "2"), guaranteed("part", "1500m")));
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(exclusive_cpus(&p, &spec.containers[0]), 2);
    assert_eq!(exclusive_cpus(&p, &spec.containers[1]), 0, "a fraction shares the pool");
    let burstable = pod("b", "  containers: [{name: c, image: i, resources: {requests: {cpu: '2'}}}]\n");
    assert_eq!(exclusive_cpus(&burstable, &burstable.spec.as_ref().unwrap().containers[0]), 0);
}

/// 2 sockets × 4 cores × 2 threads: CPUs 0-7 are the first threads (socket 0:
/// 0-3, socket 1: 4-7), 8-15 their siblings.
#[test]
fn cpus_are_taken_by_topology_on_two_sockets_with_smt() {
    let topo = Topology::synthetic(2, 4, 2, 1);
    assert_eq!(topo.threads_per_core(), 2);
    let mut a = state(&topo, &[0, 8]); // core 0 of socket 0 reserved
    // Two CPUs: one whole core (both threads), on the socket with fewest free.
    allocate(&mut a, &topo, &cfg(false), &pod("a", &format!("  containers: [{}]\n", guaranteed("c", "2")))).unwrap();
    assert_eq!(a.entries["a"]["c"], set(&[1, 9]), "a whole core, on socket 0 (already partly used)");
    // A whole socket: socket 1 entirely.
    allocate(&mut a, &topo, &cfg(false), &pod("b", &format!("  containers: [{}]\n", guaranteed("c", "8")))).unwrap();
    assert_eq!(a.entries["b"]["c"], set(&[4, 5, 6, 7, 12, 13, 14, 15]));
    // One CPU: a thread of a free core.
    allocate(&mut a, &topo, &cfg(false), &pod("c", &format!("  containers: [{}]\n", guaranteed("c", "1")))).unwrap();
    assert_eq!(a.entries["c"]["c"].len(), 1);
    // The shared pool: the reserved CPUs and whatever nobody holds.
    let held: CpuSet = a.entries.values().flat_map(|c| c.values().flatten().copied()).collect();
    assert_eq!(a.default_set(), topo.cpus().difference(&held).copied().collect::<CpuSet>());
    assert!(a.default_set().contains(&0) && a.default_set().contains(&8), "reserved CPUs are in the shared pool");
    assert_eq!(a.cpuset_for("x", "y"), a.default_set());
    // More than is left: refused, nothing taken.
    let before = a.clone();
    let e = allocate(&mut a, &topo, &cfg(false), &pod("d", &format!("  containers: [{}]\n", guaranteed("c", "6")))).unwrap_err();
    assert_eq!(e.reason, "UnexpectedAdmissionError");
    assert_eq!(e.message, "not enough cpus available to satisfy request: requested=6, available=3");
    assert_eq!(a, before);
}

#[test]
fn full_pcpus_only_takes_whole_cores_or_refuses() {
    let topo = Topology::synthetic(1, 4, 2, 1);
    let mut a = state(&topo, &[0, 4]);
    let e = allocate(&mut a, &topo, &cfg(true), &pod("a", &format!("  containers: [{}]\n", guaranteed("c", "3")))).unwrap_err();
    assert_eq!((e.reason.as_str(), e.message.as_str()), ("SMTAlignmentError", "SMT Alignment Error: requested 3 cpus not multiple cpus per core = 2"));
    allocate(&mut a, &topo, &cfg(true), &pod("a", &format!("  containers: [{}]\n", guaranteed("c", "4")))).unwrap();
    let got = &a.entries["a"]["c"];
    for cpu in got {
        let sibling = if *cpu < 4 { cpu + 4 } else { cpu - 4 };
        assert!(got.contains(&sibling), "whole cores only: {got:?}");
    }
}

#[test]
fn init_containers_hand_their_cpus_on() {
    let topo = Topology::synthetic(1, 4, 1, 1);
    let mut a = state(&topo, &[0]);
    let p = pod("p", &format!("  initContainers: [{}]\n  containers: [{}, {}]\n", guaranteed("init", "2"), guaranteed("app", "2"), guaranteed("side", "1")));
    allocate(&mut a, &topo, &cfg(false), &p).unwrap();
    assert_eq!(a.entries["p"]["init"], a.entries["p"]["app"], "the app container reuses the init container's CPUs");
    assert!(a.entries["p"]["side"].is_disjoint(&a.entries["p"]["app"]));
    // Admitted again: nothing changes.
    let before = a.clone();
    assert!(!allocate(&mut a, &topo, &cfg(false), &p).unwrap());
    assert_eq!(a, before);
}

/// Four NUMA nodes on two sockets, for the pod-resources API's topology.
#[test]
fn numa_nodes_of_a_set() {
    let topo = Topology::synthetic(2, 4, 1, 2);
    assert_eq!(topo.numa_nodes(&set(&[0, 1])), BTreeSet::from([0]));
    assert_eq!(topo.numa_nodes(&set(&[2, 3, 4])), BTreeSet::from([1, 2]));
}

#[test]
fn sysfs_is_read_and_a_state_of_another_policy_or_cpu_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let cpu = t.path().join("devices/system/cpu");
    for (n, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
        let d = cpu.join(format!("cpu{n}/topology"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("core_id"), format!("{core}\n")).unwrap();
        std::fs::write(d.join("physical_package_id"), "0\n").unwrap();
    }
    std::fs::write(cpu.join("online"), "0-3\n").unwrap();
    std::fs::create_dir_all(t.path().join("devices/system/node/node0")).unwrap();
    std::fs::write(t.path().join("devices/system/node/node0/cpulist"), "0-3\n").unwrap();
    let topo = Topology::read(t.path()).unwrap();
    assert_eq!(topo.threads_per_core(), 2);
    let root = t.path().join("root");
    let m = CpuManager::start(StaticConfig { reserved: set(&[0]), ..cfg(false) }, topo.clone(), Some(&root), false).unwrap();
    m.admit(&pod("a", &format!("  containers: [{}]\n", guaranteed("c", "2")))).unwrap();
    assert_eq!(m.cpuset_for("a", "c").as_deref(), Some("1,3"), "a whole core: CPUs 1 and 3 share core 1");
    assert_eq!(m.cpuset_for("b", "c").as_deref(), Some("0,2"));
    let text = std::fs::read_to_string(root.join(state::FILE)).unwrap();
    assert!(text.contains("\"policyName\":\"static\"") && text.contains("\"defaultCpuSet\":\"0,2\"") && text.contains("\"a\":{\"c\":\"1,3\"}"), "{text}");
    // A dry run plans against the state and never writes it.
    let dry = CpuManager::start(StaticConfig { reserved: set(&[0]), ..cfg(false) }, topo.clone(), Some(&root), true).unwrap();
    assert_eq!(dry.cpuset_for("a", "c").as_deref(), Some("1,3"));
    dry.release("a");
    assert_eq!(std::fs::read_to_string(root.join(state::FILE)).unwrap(), text, "a dry run wrote the state");
    // A restart keeps the assignment.
    let again = CpuManager::start(StaticConfig { reserved: set(&[0]), ..cfg(false) }, topo.clone(), Some(&root), false).unwrap();
    assert_eq!(again.cpuset_for("a", "c").as_deref(), Some("1,3"));
    again.release("a");
    assert_eq!(again.cpuset_for("a", "c").as_deref(), Some("0-3"));
    std::fs::write(root.join(state::FILE), text.replace("\"static\"", "\"none\"")).unwrap();
    assert!(CpuManager::start(cfg(false), topo.clone(), Some(&root), false).err().unwrap().contains("policy \"none\""));
    // No reservation at all: refused as kubelet refuses it.
    let none = StaticConfig { reserved_count: 0, ..cfg(false) };
    assert!(CpuManager::start(none, topo, None, false).err().unwrap().contains("greater than zero"));
}
