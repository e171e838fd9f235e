use super::*;

const GIB: u64 = 1 << 30;

fn two_nodes() -> Assignments {
    let totals: BTreeMap<u32, u64> = [(0, 5 * GIB), (1, 5 * GIB)].into();
    let reserved: BTreeMap<u32, u64> = [(0, GIB), (1, GIB)].into();
    Assignments { machine: machine_state(&totals, &reserved, &BTreeMap::new()), entries: BTreeMap::new() }
}

fn pod(uid: &str, init: Option<&str>, app: &str) -> Pod {
    let c = |name: &str, mem: &str| format!("{{name: {name}, image: i, resources: {{requests: {{cpu: '1', memory: '{mem}'}}, limits: {{cpu: '1', memory: '{mem}'}}}}}}");
    let inits = init.map(|m| format!("  initContainers: [{}]\n", c("init", m))).unwrap_or_default();
    serde_yaml::from_str(&format!("metadata: {{name: {uid}, uid: {uid}}}\nspec:\n{inits}  containers: [{}]\n", c("app", app))).unwrap()
}

fn h(nodes: &[u32], preferred: bool) -> Hint {
    Hint { mask: Some(mask_of(nodes.iter().copied())), preferred }
}

#[test]
fn machine_state_is_total_less_reserved() {
    let a = two_nodes();
    assert_eq!(a.machine[&0], NodeState { total: 5 * GIB, system_reserved: GIB, allocatable: 4 * GIB, reserved: 0, free: 4 * GIB, assignments: 0, cells: [0].into() });
}

#[test]
fn hints_prefer_one_node_when_it_can_hold_the_request() {
    let a = two_nodes();
    assert_eq!(hints(&a, &pod("p", None, "2Gi"), Some("app")), Some(vec![h(&[0], true), h(&[1], true), h(&[0, 1], false)]));
    assert_eq!(hints(&a, &pod("p", None, "6Gi"), Some("app")), Some(vec![h(&[0, 1], true)]));
    assert_eq!(hints(&a, &pod("p", None, "9Gi"), Some("app")), Some(vec![]));
    // Not Guaranteed: nothing pinned, no preference.
    let burstable: Pod = serde_yaml::from_str("metadata: {name: b, uid: b}\nspec:\n  containers: [{name: app, image: i, resources: {requests: {memory: 1Gi}}}]\n").unwrap();
    assert_eq!(hints(&a, &burstable, Some("app")), None);
    let mut b = a.clone();
    assert!(!allocate(&mut b, &burstable, None, &|_| None).unwrap());
}

#[test]
fn single_and_multi_node_allocations_never_mix() {
    let mut a = two_nodes();
    // 1 GiB on node 1 as the topology manager chose.
    assert!(allocate(&mut a, &pod("small", None, "1Gi"), None, &|_| Some(0b10)).unwrap());
    assert_eq!(a.numa_of("small", "app"), Some([1].into()));
    assert_eq!((a.machine[&1].free, a.machine[&1].reserved, a.machine[&1].assignments), (3 * GIB, GIB, 1));
    // 6 GiB needs both nodes, but node 1 is used alone: refused, nothing taken.
    let before = a.clone();
    let e = allocate(&mut a, &pod("big", None, "6Gi"), None, &|_| None).unwrap_err();
    assert_eq!(e.reason, "UnexpectedAdmissionError");
    assert!(e.message.contains("failed to find NUMA nodes"), "{}", e.message);
    assert_eq!(a, before);
    assert_eq!(hints(&a, &pod("big", None, "6Gi"), Some("app")), Some(vec![]));
    // Once the small one is gone, the big one spans both nodes as a group.
    assert!(a.release("small"));
    assert_eq!(a.machine[&1].cells, [1].into());
    assert!(allocate(&mut a, &pod("big", None, "6Gi"), None, &|_| None).unwrap());
    assert_eq!(a.numa_of("big", "app"), Some([0, 1].into()));
    assert_eq!(a.machine[&0].free + a.machine[&1].free, 2 * GIB);
    assert_eq!(a.machine[&0].cells, [0, 1].into());
    // A single-node container cannot go to a node of the group; only the
    // whole group can take it.
    assert_eq!(hints(&a, &pod("next", None, "1Gi"), Some("app")), Some(vec![h(&[0, 1], false)]));
    assert!(allocate(&mut a, &pod("next", None, "1Gi"), None, &|_| Some(0b01)).unwrap(), "extended to the group");
    assert_eq!(a.numa_of("next", "app"), Some([0, 1].into()));
    a.release("next");
    a.release("big");
    assert_eq!(a, two_nodes(), "everything given back");
}

#[test]
fn init_container_memory_is_reused_by_the_app() {
    let mut a = two_nodes();
    let p = pod("p", Some("2Gi"), "3Gi");
    assert!(allocate(&mut a, &p, None, &|_| Some(0b01)).unwrap());
    assert_eq!(a.machine[&0].reserved, 3 * GIB, "the app's 3 GiB include the init container's 2");
    let held: u64 = a.entries["p"].values().flatten().map(|b| b.size).sum();
    assert_eq!(held, 3 * GIB, "each byte in one block");
    a.release("p");
    assert_eq!(a, two_nodes());
}

#[test]
fn the_state_round_trips_and_refuses_what_it_cannot_trust() {
    let mut a = two_nodes();
    allocate(&mut a, &pod("p", None, "2Gi"), None, &|_| Some(0b10)).unwrap();
    let bytes = state::encode(&a);
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["policyName"], "Static");
    assert_eq!(v["machineState"]["1"]["memoryMap"]["memory"]["reserved"], 2 * GIB);
    assert_eq!(v["machineState"]["1"]["cells"], serde_json::json!([1]));
    assert_eq!(v["entries"]["p"]["app"][0], serde_json::json!({"numaAffinity": [1], "type": "memory", "size": 2 * GIB}));
    let fresh = two_nodes().machine;
    assert_eq!(state::decode(&bytes, &fresh).unwrap(), a);
    let tampered = String::from_utf8(bytes.clone()).unwrap().replace("\"numberOfAssignments\":1", "\"numberOfAssignments\":2");
    assert!(state::decode(tampered.as_bytes(), &fresh).unwrap_err().contains("checksum"));
    // The machine (or reservedMemory) changed.
    let other = machine_state(&[(0, 5 * GIB), (1, 5 * GIB)].into(), &[(0, 2 * GIB), (1, GIB)].into(), &BTreeMap::new());
    assert!(state::decode(&bytes, &other).unwrap_err().contains("machineState[0]"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(state::FILE), tampered).unwrap();
    let e = MemoryManager::start(&StaticConfig { reserved: [(0, GIB), (1, GIB)].into() }, &[(0, 5 * GIB), (1, 5 * GIB)].into(), &BTreeMap::new(), Some(dir.path()), false).err().unwrap();
    assert!(e.contains("memory_manager_state") && e.contains("drain the node"), "{e}");
}

#[test]
fn the_manager_pins_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StaticConfig { reserved: [(0, GIB), (1, GIB)].into() };
    let totals: BTreeMap<u32, u64> = [(0, 5 * GIB), (1, 5 * GIB)].into();
    let m = MemoryManager::start(&cfg, &totals, &BTreeMap::new(), Some(dir.path()), false).unwrap();
    m.admit_aligned(&pod("p", None, "1Gi"), None, &|_| None).unwrap();
    assert_eq!(m.cpuset_mems("p", "app").as_deref(), Some("0"));
    assert_eq!(m.cpuset_mems("p", "other"), None);
    // A dry run plans against the state and never writes it.
    let written = std::fs::read(dir.path().join(state::FILE)).unwrap();
    let dry = MemoryManager::start(&cfg, &totals, &BTreeMap::new(), Some(dir.path()), true).unwrap();
    assert_eq!(dry.pinned("p")["app"], (GIB, [0].into()));
    dry.release("p");
    assert_eq!(std::fs::read(dir.path().join(state::FILE)).unwrap(), written, "a dry run wrote the state");
    // A restart keeps it.
    let again = MemoryManager::start(&cfg, &totals, &BTreeMap::new(), Some(dir.path()), false).unwrap();
    assert_eq!(again.pinned("p")["app"], (GIB, [0].into()));
    again.release("p");
    assert!(again.pinned("p").is_empty());
    assert!(MemoryManager::start(&StaticConfig { reserved: [(3, GIB)].into() }, &totals, &BTreeMap::new(), None, false).err().unwrap().contains("NUMA node 3 does not exist"));
    assert!(MemoryManager::start(&StaticConfig { reserved: [(0, 0)].into() }, &totals, &BTreeMap::new(), None, false).err().unwrap().contains("needs memory reserved for the system"));
    assert!(MemoryManager::start(&StaticConfig { reserved: Default::default() }, &totals, &BTreeMap::new(), None, false).is_err());
}

#[test]
fn hugepages_are_not_regular_memory() {
    let t = tempfile::tempdir().unwrap();
    for (node, size, pages) in [(0, "hugepages-2048kB", "512"), (0, "hugepages-1048576kB", "1"), (1, "hugepages-2048kB", "0")] {
        let d = t.path().join(format!("devices/system/node/node{node}/hugepages/{size}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("nr_hugepages"), format!("{pages}\n")).unwrap();
    }
    let huge = read_hugepages(t.path());
    assert_eq!(huge, [(0, 2 * GIB), (1, 0)].into(), "512 × 2 MiB and one 1 GiB page on node 0");
    let m = machine_state(&[(0, 5 * GIB), (1, 5 * GIB)].into(), &[(0, GIB), (1, GIB)].into(), &huge);
    assert_eq!((m[&0].total, m[&0].allocatable, m[&0].free), (5 * GIB, 2 * GIB, 2 * GIB), "total stays the node's, as kubelet's TotalMemSize");
    assert_eq!(m[&1].allocatable, 4 * GIB);
    assert!(read_hugepages(&t.path().join("nowhere")).is_empty());
}
