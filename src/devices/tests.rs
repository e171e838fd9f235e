use super::*;

impl Devices {
    /// A plugin's devices as if it had registered and listed them.
    fn fake(&self, resource: &str, devices: &[(&str, bool)]) {
        let mut s = self.lock();
        s.generation += 1;
        let generation = s.generation;
        let devices = devices.iter().map(|(id, healthy)| (id.to_string(), Device { healthy: *healthy, numa: vec![0] })).collect();
        s.plugins.insert(resource.into(), Plugin { endpoint: PathBuf::new(), options: Default::default(), channel: None, devices, generation, removed: false });
        drop(s);
        self.publish();
    }
}

impl Devices {
    /// Like `fake`, each device on a NUMA node.
    fn fake_numa(&self, resource: &str, devices: &[(&str, i64)]) {
        self.fake(resource, &devices.iter().map(|(id, _)| (*id, true)).collect::<Vec<_>>());
        let mut s = self.lock();
        for (id, n) in devices {
            if let Some(d) = s.plugins.get_mut(resource).and_then(|p| p.devices.get_mut(*id)) {
                d.numa = vec![*n];
            }
        }
    }
}

#[tokio::test]
async fn topology_hints_and_aligned_devices() {
    use crate::topology::{Hint, mask_of};
    let h = |nodes: &[u32], preferred: bool| Hint { mask: Some(mask_of(nodes.iter().copied())), preferred };
    let d = Devices::default();
    d.fake_numa(R, &[("a0", 0), ("b0", 1), ("b1", 1)]);
    let one = pod("p", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '1'}}}]\n");
    assert_eq!(d.hints(&one, Some("c"), 0b11), vec![Some(vec![h(&[0], true), h(&[1], true), h(&[0, 1], false)])]);
    let two = pod("q", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '2'}}}]\n");
    assert_eq!(d.hints(&two, Some("c"), 0b11), vec![Some(vec![h(&[1], true), h(&[0, 1], false)])]);
    // Node 1 chosen: b0, though a0 comes first by name.
    d.admit_aligned(&one, Some("c"), &|_| Some(0b10)).await.unwrap();
    assert_eq!(d.assigned("p", "c")[R], vec!["b0"]);
    // Now two are not on one node any more (not preferred: node 1 could
    // have had them); three are not free at all.
    assert_eq!(d.hints(&two, Some("c"), 0b11), vec![Some(vec![h(&[0, 1], false)])]);
    let three = pod("r", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '3'}}}]\n");
    assert_eq!(d.hints(&three, Some("c"), 0b11), vec![Some(vec![])]);
    // Devices without a NUMA node: no preference.
    let plain = Devices::default();
    plain.fake(R, &[("x", true)]);
    plain.lock().plugins.get_mut(R).unwrap().devices.get_mut("x").unwrap().numa.clear();
    assert_eq!(plain.hints(&one, Some("c"), 0b11), vec![None]);
}

fn pod(uid: &str, yaml_containers: &str) -> Pod {
    let text = format!("metadata: {{name: {uid}, namespace: ns, uid: {uid}}}\nspec:\n{yaml_containers}");
    serde_yaml::from_str(&text).unwrap()
}

const R: &str = "example.com/dev";

#[test]
fn extended_resource_names() {
    assert!(is_extended("example.com/dev"));
    assert!(is_extended("nvidia.com/gpu"));
    for bad in ["cpu", "kubernetes.io/x", "node.kubernetes.io/x", "requests.example.com/x", "example.com/", "/x", "Example_.com/x", "a/b/c"] {
        assert!(!is_extended(bad), "{bad}");
    }
}

#[tokio::test]
async fn devices_are_chosen_at_admission_released_with_the_pod_and_never_shared() {
    let d = Devices::default();
    d.fake(R, &[("d0", true), ("d1", true), ("d2", true), ("d3", false)]);
    assert_eq!(d.subscribe().borrow().capacity[R], 4);
    assert_eq!(d.allocatable()[R], 3, "the unhealthy one is not allocatable");
    let a = pod("a", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '2'}}}]\n");
    d.admit(&a).await.unwrap();
    assert_eq!(d.assigned("a", "c")[R], vec!["d0", "d1"]);
    // Admitted again (a resync, a restart): the same devices.
    d.admit(&a).await.unwrap();
    assert_eq!(d.assigned("a", "c")[R], vec!["d0", "d1"]);
    let b = pod("b", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '2'}}}]\n");
    let e = d.admit(&b).await.unwrap_err();
    assert_eq!(e.reason, "UnexpectedAdmissionError");
    assert_eq!(e.message, "Allocate failed due to requested number of devices unavailable for example.com/dev. Requested: 2, Available: 1, which is unexpected");
    assert!(d.assigned("b", "c").is_empty(), "nothing chosen for a refused pod");
    d.release("a");
    d.admit(&b).await.unwrap();
    assert_eq!(d.assigned("b", "c")[R], vec!["d0", "d1"]);
}

#[tokio::test]
async fn init_containers_hand_their_devices_on_and_sidecars_keep_theirs() {
    let d = Devices::default();
    d.fake(R, &[("d0", true), ("d1", true), ("d2", true)]);
    let p = pod(
        "p",
        "  initContainers:\n  - {name: init, image: i, resources: {limits: {example.com/dev: '2'}}}\n  - {name: side, image: i, restartPolicy: Always, resources: {limits: {example.com/dev: '1'}}}\n  containers: [{name: app, image: i, resources: {limits: {example.com/dev: '2'}}}]\n",
    );
    d.admit(&p).await.unwrap();
    assert_eq!(d.assigned("p", "init")[R], vec!["d0", "d1"]);
    // As kubelet: a sidecar takes from the finished init container's devices
    // too, and keeps what it took; the app container reuses the rest.
    assert_eq!(d.assigned("p", "side")[R], vec!["d0"]);
    assert_eq!(d.assigned("p", "app")[R], vec!["d1", "d2"], "the init container's d1 reused, d2 new; never the sidecar's d0");
}

#[tokio::test]
async fn a_resource_no_plugin_serves_is_not_the_device_managers() {
    let d = Devices::default();
    let p = pod("p", "  containers: [{name: c, image: i, resources: {limits: {example.com/other: '1'}}}]\n");
    d.admit(&p).await.unwrap();
    assert!(d.assigned("p", "c").is_empty());
    assert!(d.pods().iter().any(|(u, e)| u == "p" && e.name == "p" && e.containers == ["c"]));
}

#[tokio::test]
async fn a_gone_plugin_leaves_its_devices_unhealthy_and_the_checkpoint_keeps_assignments() {
    let t = tempfile::tempdir().unwrap();
    let d = Devices::new(Some(t.path().to_path_buf()));
    d.fake(R, &[("d0", true), ("d1", true)]);
    d.admit(&pod("a", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '1'}}}]\n")).await.unwrap();
    let generation = d.lock().plugins[R].generation;
    d.disconnected(R, generation);
    assert_eq!(d.allocatable()[R], 0);
    assert_eq!(d.subscribe().borrow().capacity[R], 2, "capacity stays through the grace period");
    // A restart: the assignment is back, the resource known (unhealthy until
    // the plugin registers again).
    let again = Devices::new(Some(t.path().to_path_buf()));
    assert_eq!(again.assigned("a", "c")[R], vec!["d0"]);
    assert_eq!(again.subscribe().borrow().capacity[R], 2);
    assert_eq!(again.allocatable()[R], 0);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(t.path().join(checkpoint::FILE)).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A dry run plans as if the plugin were back, all healthy, and writes
    // nothing; the device without an Allocate answer is reported unasked.
    let written = std::fs::read(t.path().join(checkpoint::FILE)).unwrap();
    let dry = Devices::read_only(t.path().to_path_buf());
    assert_eq!(dry.allocatable()[R], 2);
    dry.admit(&pod("b", "  containers: [{name: c, image: i, resources: {limits: {example.com/dev: '1'}}}]\n")).await.unwrap();
    assert_eq!(dry.assigned("b", "c")[R], vec!["d1"], "not a's d0");
    let (opts, unasked) = dry.planned_options("a", "c");
    assert!(opts.is_empty());
    assert_eq!(unasked, vec![(R.to_string(), vec!["d0".to_string()])]);
    assert_eq!(std::fs::read(t.path().join(checkpoint::FILE)).unwrap(), written, "a dry run wrote the checkpoint");
}

#[test]
fn an_endpoint_stays_in_the_directory() {
    let dir = Path::new("/var/lib/kubelet/device-plugins");
    assert_eq!(endpoint_in(dir, "gpu.sock").unwrap(), dir.join("gpu.sock"));
    for bad in ["../kubelet.sock", "/run/x.sock", "a/b.sock", "", ".."] {
        assert!(endpoint_in(dir, bad).is_err(), "{bad}");
    }
}

fn devices_on(list: &[(&str, Option<i64>)]) -> BTreeMap<String, Device> {
    list.iter().map(|(id, n)| (id.to_string(), Device { healthy: true, numa: n.iter().copied().collect() })).collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_plugins_preference_is_asked_where_kubelet_asks_it() {
    let none = BTreeSet::new();
    // More aligned devices than needed: the plugin chooses among them only.
    let devs = devices_on(&[("a0", Some(0)), ("a1", Some(0)), ("a2", Some(0)), ("b0", Some(1))]);
    let plan = Plan::new(R, 2, &[], &devs, &none, Some(0b01)).unwrap();
    assert_eq!(plan.asks(), Some((ids(&["a0", "a1", "a2"]), vec![])));
    assert_eq!(plan.clone().finish(Some(ids(&["b0", "a2", "a1"]))).unwrap(), ids(&["a2", "a1"]), "b0 is off the NUMA node: never taken from the preference");
    assert_eq!(plan.clone().finish(None).unwrap(), ids(&["a0", "a1"]));
    assert_eq!(plan.finish(Some(ids(&["a2"]))).unwrap(), ids(&["a2", "a0"]), "a short preference is filled from the aligned ones");

    // Too few aligned ones: all of them, then the plugin's choice among the
    // rest (must include what is already chosen), then the other NUMA
    // nodes', then those without one.
    let devs = devices_on(&[("a0", Some(0)), ("b0", Some(1)), ("b1", Some(1)), ("x0", None)]);
    let plan = Plan::new(R, 3, &[], &devs, &none, Some(0b01)).unwrap();
    assert_eq!(plan.asks(), Some((ids(&["a0", "b0", "b1", "x0"]), ids(&["a0"]))));
    assert_eq!(plan.clone().finish(Some(ids(&["a0", "x0", "zz"]))).unwrap(), ids(&["a0", "x0", "b0"]), "an unknown id in the answer is ignored");
    assert_eq!(plan.finish(None).unwrap(), ids(&["a0", "b0", "b1"]));

    // Exactly enough aligned: nothing to ask.
    let plan = Plan::new(R, 1, &[], &devs, &none, Some(0b01)).unwrap();
    assert_eq!(plan.asks(), None);
    assert_eq!(plan.finish(None).unwrap(), ids(&["a0"]));

    // No hint: no alignment, the plugin chooses among every free device;
    // a finished init container's devices come first and are a must.
    let taken: BTreeSet<String> = ["b0".to_string()].into();
    let plan = Plan::new(R, 2, &ids(&["r0"]), &devs, &taken, None).unwrap();
    assert_eq!(plan.asks(), Some((ids(&["r0", "a0", "b1", "x0"]), ids(&["r0"]))));
    assert_eq!(plan.finish(Some(ids(&["b0", "x0"]))).unwrap(), ids(&["r0", "x0"]), "b0 is another pod's");

    // Not enough free: kubelet's words.
    let e = Plan::new(R, 4, &[], &devs, &taken, None).unwrap_err();
    assert_eq!(e, "requested number of devices unavailable for example.com/dev. Requested: 4, Available: 3");
}
