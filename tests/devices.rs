//! Devices: a device plugin speaking kubelet's v1beta1 API
//! (tests/support/deviceplugin.rs) on a node joined to the test apiserver,
//! real containers on a private containerd.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use nodelet::devices::proto::podresources as pr;
use support::cluster::Cluster;
use support::deviceplugin::TestPlugin;
use support::eventually;

const S: Duration = Duration::from_secs(1);
const R: &str = "example.com/dev";

fn device_pod(name: &str, node: &str, n: u32) -> Pod {
    Cluster::sleeper(name, node, serde_json::json!({"limits": {R: n.to_string()}, "requests": {R: n.to_string()}}), serde_json::json!({}))
}

/// The Node's (capacity, allocatable) of the test resource.
async fn node_devices(c: &Cluster) -> Option<(String, String)> {
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let st = nodes.get(&c.node.node_name()).await.ok()?.status?;
    Some((st.capacity?.get(R)?.0.clone(), st.allocatable?.get(R)?.0.clone()))
}

async fn pod_resources(c: &Cluster) -> pr::pod_resources_lister_client::PodResourcesListerClient<tonic::transport::Channel> {
    let socket = c.node.dir.path().join("kubelet/pod-resources/kubelet.sock");
    let ch = eventually(20 * S, "the pod-resources socket", || async { nodelet::csi::channel(&socket).await.ok() }).await;
    pr::pod_resources_lister_client::PodResourcesListerClient::new(ch)
}

/// What the pod-resources API says `pod`'s container `c` holds.
async fn held(c: &Cluster, pod: &str) -> Vec<String> {
    let list = pod_resources(c).await.list(pr::ListPodResourcesRequest {}).await.unwrap().into_inner();
    let p = list.pod_resources.iter().find(|p| p.name == pod && p.namespace == "default").unwrap_or_else(|| panic!("{pod} not listed: {list:?}"));
    p.containers.iter().find(|x| x.name == "c").unwrap().devices.iter().filter(|d| d.resource_name == R).flat_map(|d| d.device_ids.clone()).collect()
}

async fn rejected(pods: &Api<Pod>, name: &str) -> (String, String) {
    eventually(30 * S, &format!("{name} rejected"), || async {
        let st = pods.get(name).await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then(|| (st.reason.unwrap_or_default(), st.message.unwrap_or_default()))
    })
    .await
}

/// A device plugin registers, the Node advertises its devices (healthy
/// ones allocatable), a pod gets two: the plugin's env, its read-only file
/// mount and its device nodes are in the container, PreStartContainer was
/// called; a pod asking for more than is left is refused, never started;
/// the pod-resources API lists who holds what; a device turning unhealthy
/// leaves allocatable; an agent restart keeps the running container and its
/// devices (the checkpoint) and the plugin registers again on the new
/// socket, so a new pod gets the free device, not one already held; a
/// deleted pod's devices go to the next; a plugin's GetPreferredAllocation
/// chooses among the free devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_plugins_devices_reach_containers_and_survive_a_restart() {
    let c = Cluster::start().await;
    let mut agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let dir = c.node.dir.path().join("kubelet/device-plugins");
    eventually(20 * S, "kubelet.sock", || async { dir.join("kubelet.sock").exists().then_some(()) }).await;
    let plugin = TestPlugin::start(&dir, R, &["d0", "d1", "d2"], &c.node.dir.path().join("plugin-work")).await;
    eventually(30 * S, "the Node advertising 3 devices", || async { (node_devices(&c).await? == ("3".into(), "3".into())).then_some(()) }).await;

    pods.create(&PostParams::default(), &device_pod("gpu", &node, 2)).await.unwrap();
    let id = c.running("gpu").await;
    assert_eq!(c.sh(&id, "echo $TEST_DEVICES").await.trim(), "d0,d1");
    assert_eq!(c.sh(&id, "cat /run/devices/d0.info /run/devices/d1.info").await, "device d0\ndevice d1\n");
    assert_eq!(c.sh(&id, "test -c /dev/test-d0 && test -c /dev/test-d1 && echo chardevs; test -e /dev/test-d2 || echo no-d2").await, "chardevs\nno-d2\n");
    let ro = c.node.exec(&id, &["sh", "-c", "echo x > /run/devices/d0.info"]).await;
    assert_ne!(ro.exit_code, 0, "the plugin's mount is read-only");
    {
        let calls = plugin.calls.lock().unwrap();
        assert_eq!(calls.allocate, vec![vec!["d0".to_string(), "d1".to_string()]]);
        assert_eq!(calls.pre_start, vec![vec!["d0".to_string(), "d1".to_string()]], "PreStartContainer, as the plugin asked");
    }

    // Two more than the one left: refused by admission, never started.
    pods.create(&PostParams::default(), &device_pod("greedy", &node, 2)).await.unwrap();
    let (reason, message) = rejected(&pods, "greedy").await;
    assert_eq!(reason, format!("OutOf{R}"));
    assert!(message.contains("Node didn't have enough resource: example.com/dev, requested: 2, used: 2, capacity: 3"), "{message}");
    assert!(c.node.containers_named("greedy").await.is_empty());

    // The pod-resources API.
    assert_eq!(held(&c, "gpu").await, ["d0", "d1"]);
    let mut api = pod_resources(&c).await;
    let alloc = api.get_allocatable_resources(pr::AllocatableResourcesRequest {}).await.unwrap().into_inner();
    let mut ids: Vec<String> = alloc.devices.iter().filter(|d| d.resource_name == R).flat_map(|d| d.device_ids.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["d0", "d1", "d2"]);
    assert!(alloc.devices.iter().all(|d| d.topology.as_ref().is_some_and(|t| t.nodes.iter().any(|n| n.id == 0))), "{alloc:?}");
    let got = api.get(pr::GetPodResourcesRequest { pod_name: "gpu".into(), pod_namespace: "default".into() }).await.unwrap().into_inner();
    assert_eq!(got.pod_resources.unwrap().containers[0].devices[0].device_ids, ["d0", "d1"]);
    let missing = api.get(pr::GetPodResourcesRequest { pod_name: "nope".into(), pod_namespace: "default".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(c.node.dir.path().join("kubelet/pod-resources/kubelet.sock")).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the pod-resources socket is root's alone");

    // A device turns unhealthy: allocatable drops, capacity stays.
    plugin.set_healthy("d2", false);
    eventually(30 * S, "allocatable 2 of 3", || async { (node_devices(&c).await? == ("3".into(), "2".into())).then_some(()) }).await;

    // Restart: the container keeps running with its devices, the plugin
    // registers again on the new socket.
    agent.kill9();
    assert_eq!(plugin.registrations(), 1);
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the plugin registering again", || async { (plugin.registrations() >= 2).then_some(()) }).await;
    plugin.set_healthy("d2", true);
    eventually(30 * S, "allocatable 3 again", || async { (node_devices(&c).await? == ("3".into(), "3".into())).then_some(()) }).await;
    assert_eq!(c.running("gpu").await, id, "the container was not restarted");
    assert_eq!(held(&c, "gpu").await, ["d0", "d1"], "its devices kept through the restart");
    pods.create(&PostParams::default(), &device_pod("one", &node, 1)).await.unwrap();
    let one = c.running("one").await;
    assert_eq!(c.sh(&one, "echo $TEST_DEVICES").await.trim(), "d2", "the free device, not one the running pod holds");

    // The pod deleted: its devices go to the next pod.
    pods.delete("gpu", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "gpu gone", || async { pods.get_opt("gpu").await.ok()?.is_none().then_some(()) }).await;
    pods.create(&PostParams::default(), &device_pod("next", &node, 2)).await.unwrap();
    let next = c.running("next").await;
    assert_eq!(c.sh(&next, "echo $TEST_DEVICES").await.trim(), "d0,d1");
    let checkpoint = std::fs::read_to_string(dir.join("kubelet_internal_checkpoint")).unwrap();
    assert!(checkpoint.contains("\"PodDeviceEntries\"") && checkpoint.contains("\"ResourceName\":\"example.com/dev\""), "{checkpoint}");

    // A plugin with a preference of its own (GetPreferredAllocation): asked
    // with every free device, its choice is the container's.
    let picky = TestPlugin::start_preferring(&dir, "example.com/picky", &["p0", "p1", "p2", "p3"], &c.node.dir.path().join("picky-work"), &["p3", "p1"]).await;
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    eventually(30 * S, "the Node advertising the picky devices", || async {
        let st = nodes.get(&node).await.ok()?.status?;
        (st.allocatable?.get("example.com/picky")?.0 == "4").then_some(())
    })
    .await;
    let limits = serde_json::json!({"limits": {"example.com/picky": "2"}, "requests": {"example.com/picky": "2"}});
    pods.create(&PostParams::default(), &Cluster::sleeper("picky", &node, limits, serde_json::json!({}))).await.unwrap();
    let picked = c.running("picky").await;
    assert_eq!(c.sh(&picked, "echo $TEST_DEVICES").await.trim(), "p3,p1", "the plugin's preferred devices");
    let asked = picky.calls.lock().unwrap().preferred.clone();
    let all: Vec<String> = ["p0", "p1", "p2", "p3"].iter().map(|s| s.to_string()).collect();
    assert_eq!(asked, vec![(all, vec![], 2)], "asked once, with every free device and nothing it must include");

    // A plugin whose GetPreferredAllocation keeps failing: the pod is
    // refused with the plugin's words, never started, nothing held.
    let _broken = TestPlugin::start_preferring(&dir, "example.com/broken", &["b0", "b1"], &c.node.dir.path().join("broken-work"), &[]).await;
    eventually(30 * S, "the Node advertising the broken plugin's devices", || async {
        let st = nodes.get(&node).await.ok()?.status?;
        (st.allocatable?.get("example.com/broken")?.0 == "2").then_some(())
    })
    .await;
    let limits = serde_json::json!({"limits": {"example.com/broken": "1"}, "requests": {"example.com/broken": "1"}});
    pods.create(&PostParams::default(), &Cluster::sleeper("unlucky", &node, limits, serde_json::json!({}))).await.unwrap();
    let (reason, message) = rejected(&pods, "unlucky").await;
    assert_eq!(reason, "UnexpectedAdmissionError");
    assert!(message.contains("device plugin GetPreferredAllocation rpc failed with err: the preference service is down"), "{message}");
    assert!(c.node.containers_named("unlucky").await.is_empty());
    let checkpoint = std::fs::read_to_string(dir.join("kubelet_internal_checkpoint")).unwrap();
    assert!(!checkpoint.contains("example.com/broken\",\"DeviceIDs"), "nothing held for the refused pod: {checkpoint}");
}

fn cpu_pod(name: &str, node: &str, cpu: &str, guaranteed: bool) -> Pod {
    let resources = if guaranteed {
        serde_json::json!({"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "64Mi"}})
    } else {
        // BestEffort: on a 2-CPU node with one reserved, a Guaranteed 1-CPU
        // pod takes all of the allocatable cpu, as kubelet counts it.
        serde_json::json!({})
    };
    Cluster::sleeper(name, node, resources, serde_json::json!({}))
}

/// The CPU manager's static policy, CPU 0 reserved (on this 2-core machine):
/// a Guaranteed 1-CPU pod gets another CPU for itself (read inside the container:
/// the CPUs its process may run on), a BestEffort one runs on the shared pool, CPU 0
/// only, while it is held; the state file says so in kubelet's layout; a
/// restart keeps the assignment; the pod-resources API lists the CPU; when
/// the Guaranteed pod goes, the shared pool grows back to both CPUs in the
/// running BestEffort container (UpdateContainerResources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_cpu_manager_gives_a_guaranteed_pod_a_cpu_of_its_own() {
    // Any machine of two CPUs or more: CPU 0 reserved, the pod gets another.
    let online = nodelet::cpus::parse(std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap().trim()).unwrap();
    assert!(online.len() >= 2, "the suite needs two CPUs: {online:?}");
    let all = nodelet::cpus::format(&online);
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("cpuManagerPolicy: static\nreservedSystemCPUs: \"0\"\ncpuManagerReconcilePeriod: 1s\n");
    let mut agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &cpu_pod("shared", &node, "100m", false)).await.unwrap();
    let shared = c.running("shared").await;
    let effective = |id: String| {
        let c = &c;
        // The CPUs the kernel lets the container's process run on (its
        // cpuset, whichever cgroup version the node has).
        async move { c.sh(&id, "grep Cpus_allowed_list /proc/1/status").await.split_whitespace().nth(1).unwrap_or_default().to_string() }
    };
    assert_eq!(effective(shared.clone()).await, all, "alone, the shared pool is every CPU");
    pods.create(&PostParams::default(), &cpu_pod("dedicated", &node, "1", true)).await.unwrap();
    let dedicated = c.running("dedicated").await;
    let own = effective(dedicated.clone()).await;
    let cpu: u32 = own.parse().unwrap_or_else(|_| panic!("one CPU of its own, not {own:?}"));
    assert_ne!(cpu, 0, "never the reserved CPU");
    let mut rest = online.clone();
    rest.remove(&cpu);
    let rest = nodelet::cpus::format(&rest);
    eventually(20 * S, "the shared pool without the pod's CPU", || async { (effective(shared.clone()).await == rest).then_some(()) }).await;
    let state = std::fs::read_to_string(c.node.dir.path().join("kubelet/cpu_manager_state")).unwrap();
    assert!(state.contains("\"policyName\":\"static\"") && state.contains(&format!("\"defaultCpuSet\":\"{rest}\"")) && state.contains(&format!("{{\"c\":\"{cpu}\"}}")), "{state}");
    let list = pod_resources(&c).await.list(pr::ListPodResourcesRequest {}).await.unwrap().into_inner();
    let p = list.pod_resources.iter().find(|p| p.name == "dedicated").unwrap();
    assert_eq!(p.containers[0].cpu_ids, [i64::from(cpu)]);
    let alloc = pod_resources(&c).await.get_allocatable_resources(pr::AllocatableResourcesRequest {}).await.unwrap().into_inner();
    assert!(!alloc.cpu_ids.contains(&0) && alloc.cpu_ids.len() == online.len() - 1, "the reserved CPU is not allocatable: {:?}", alloc.cpu_ids);

    // A restart keeps the assignment and restarts nothing.
    agent.kill9();
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the node Ready again", || async { c.node_ready().await.then_some(()) }).await;
    assert_eq!(c.running("dedicated").await, dedicated);
    assert_eq!(effective(dedicated.clone()).await, own);

    // The Guaranteed pod goes: the shared pool grows back.
    pods.delete("dedicated", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "dedicated gone", || async { pods.get_opt("dedicated").await.ok()?.is_none().then_some(()) }).await;
    eventually(20 * S, "the shared pool back to every CPU", || async { (effective(shared.clone()).await == all).then_some(()) }).await;
}

fn device_and_cpu_pod(name: &str, node: &str, resource: &str, cpu: Option<&str>) -> Pod {
    let mut limits = serde_json::json!({resource: "1"});
    if let Some(cpu) = cpu {
        limits["cpu"] = cpu.into();
        limits["memory"] = "64Mi".into();
    }
    Cluster::sleeper(name, node, serde_json::json!({"limits": limits, "requests": limits}), serde_json::json!({}))
}

/// The topology manager on this machine's one NUMA node, with the static
/// CPU manager and two device plugins, one of whose devices says it is on
/// NUMA node 1 (which this machine does not have): with `single-numa-node`,
/// a Guaranteed pod with a CPU and a node-0 device is admitted and runs on
/// them; a pod wanting the node-1 device is refused TopologyAffinityError
/// and never started. Restarted with `best-effort`, the agent keeps the
/// running pod, and a pod wanting the node-1 device is admitted and gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_manager_refuses_what_cannot_be_aligned() {
    let c = Cluster::start().await;
    let base = "cpuManagerPolicy: static\nreservedSystemCPUs: \"0\"\ncpuManagerReconcilePeriod: 1s\n";
    c.node.config_extra.lock().unwrap().push_str(&format!("{base}topologyManagerPolicy: single-numa-node\n"));
    let mut agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let dir = c.node.dir.path().join("kubelet/device-plugins");
    eventually(20 * S, "kubelet.sock", || async { dir.join("kubelet.sock").exists().then_some(()) }).await;
    let work = c.node.dir.path().join("plugin-work");
    let near = TestPlugin::start(&dir, "example.com/near", &["n0"], &work).await;
    let far = TestPlugin::start_on_numa(&dir, "example.com/far", &["f0"], &work, 1).await;
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    eventually(30 * S, "both resources allocatable", || async {
        let a = nodes.get(&node).await.ok()?.status?.allocatable?;
        (a.contains_key("example.com/near") && a.contains_key("example.com/far")).then_some(())
    })
    .await;

    pods.create(&PostParams::default(), &device_and_cpu_pod("aligned", &node, "example.com/near", Some("1"))).await.unwrap();
    let id = c.running("aligned").await;
    assert_eq!(c.sh(&id, "test -c /dev/test-n0 && echo ok").await.trim(), "ok");
    let cpus = c.sh(&id, "grep Cpus_allowed_list /proc/1/status").await;
    assert!(!cpus.split_whitespace().nth(1).unwrap_or_default().split(',').any(|r| r == "0" || r.starts_with("0-")), "an exclusive CPU, not the reserved one: {cpus}");

    let explained = c.explain("default/aligned");
    assert!(explained.contains("Resources:\n  c: exclusive CPUs ") && explained.contains("  c: example.com/near n0\n"), "{explained}");

    pods.create(&PostParams::default(), &device_and_cpu_pod("unaligned", &node, "example.com/far", None)).await.unwrap();
    let (reason, message) = rejected(&pods, "unaligned").await;
    assert_eq!((reason.as_str(), message.as_str()), ("TopologyAffinityError", "Pod was rejected: Resources cannot be allocated with Topology locality"));
    assert!(c.node.sandboxes_named("unaligned").await.is_empty(), "never started");
    assert!(far.calls.lock().unwrap().allocate.is_empty(), "its device never allocated");

    // best-effort: the same pod is admitted, on the device it asked for.
    agent.kill9();
    {
        let mut extra = c.node.config_extra.lock().unwrap();
        extra.clear();
        extra.push_str(&format!("{base}topologyManagerPolicy: best-effort\n"));
    }
    let _agent = c.nodelet(&[]);
    assert_eq!(c.running("aligned").await, id, "the running pod kept through the restart");
    eventually(30 * S, "the plugins registering again", || async { (near.registrations() >= 2 && far.registrations() >= 2).then_some(()) }).await;
    pods.create(&PostParams::default(), &device_and_cpu_pod("anywhere", &node, "example.com/far", None)).await.unwrap();
    let any = c.running("anywhere").await;
    assert_eq!(c.sh(&any, "test -c /dev/test-f0 && echo ok").await.trim(), "ok");
}

/// The container's OCI spec as containerd wrote it (what runc runs).
fn oci_spec(c: &Cluster, id: &str) -> serde_json::Value {
    let path = c.node.dir.path().join(format!("state/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The memory manager's static policy on this machine's NUMA node 0: a
/// Guaranteed pod's container is created with `cpuset.mems` 0 (read from
/// the OCI spec containerd handed runc), a BestEffort one's without; the
/// state file and the pod-resources API say so, an in-place resize is
/// refused as infeasible (kubelet's rule), and a restart keeps it. A
/// `reservedMemory` that does not add up to the reservations stops the agent
/// with a message naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_memory_manager_pins_guaranteed_pods_to_numa_nodes() {
    let c = Cluster::start().await;
    let bad = "memoryManagerPolicy: Static\nsystemReserved: {memory: 100Mi}\nevictionHard: {memory.available: 100Mi}\nreservedMemory: [{numaNode: 0, limits: {memory: 150Mi}}]\n";
    c.node.config_extra.lock().unwrap().push_str(bad);
    let mut wrong = c.nodelet(&[]);
    let csr = eventually(20 * S, "the CSR", || async { c.csrs().await.into_iter().next() }).await;
    c.decide_csr(&csr.metadata.name.unwrap(), true).await;
    assert!(wrong.wait_exit(Duration::from_secs(30)).is_some_and(|code| code != 0), "the agent refuses the configuration: {}", wrong.log());
    let log = wrong.log();
    assert!(log.contains("reservedMemory: the memory reserved on the NUMA nodes adds up to 157286400 bytes") && log.contains("209715200"), "{log}");
    {
        let mut extra = c.node.config_extra.lock().unwrap();
        extra.clear();
        extra.push_str(&bad.replace("150Mi", "200Mi"));
    }
    // Joined already (its certificate is on disk).
    let mut agent = c.nodelet(&[]);
    eventually(30 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let limits = serde_json::json!({"cpu": "100m", "memory": "64Mi"});
    let guaranteed = Cluster::sleeper("pinned", &node, serde_json::json!({"limits": limits, "requests": limits}), serde_json::json!({}));
    pods.create(&PostParams::default(), &guaranteed).await.unwrap();
    pods.create(&PostParams::default(), &cpu_pod("loose", &node, "100m", false)).await.unwrap();
    let pinned = c.running("pinned").await;
    let loose = c.running("loose").await;
    assert_eq!(oci_spec(&c, &pinned)["linux"]["resources"]["cpu"]["mems"], "0", "the Guaranteed container's memory on NUMA node 0");
    assert!(oci_spec(&c, &loose)["linux"]["resources"]["cpu"]["mems"].as_str().unwrap_or_default().is_empty(), "the BestEffort one not pinned");
    let uid = pods.get("pinned").await.unwrap().metadata.uid.unwrap();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(c.node.dir.path().join("kubelet/memory_manager_state")).unwrap()).unwrap();
    assert_eq!(state["entries"][&uid]["c"][0], serde_json::json!({"numaAffinity": [0], "type": "memory", "size": 64 << 20}), "{state}");
    assert_eq!(state["machineState"]["0"]["memoryMap"]["memory"]["reserved"], 64 << 20);
    let mut api = pod_resources(&c).await;
    let got = api.get(pr::GetPodResourcesRequest { pod_name: "pinned".into(), pod_namespace: "default".into() }).await.unwrap().into_inner();
    let mem = &got.pod_resources.unwrap().containers[0].memory;
    assert_eq!((mem[0].memory_type.as_str(), mem[0].size), ("memory", 64 << 20), "{mem:?}");
    assert!(c.explain("default/pinned").contains(&format!("c: memory {} bytes on NUMA nodes 0", 64 << 20)));
    // In-place resize of a pinned (Guaranteed) pod: infeasible, as kubelet
    // says, and the container keeps its memory.
    let more = serde_json::json!({"cpu": "100m", "memory": "96Mi"});
    let body = serde_json::json!({"spec": {"containers": [{"name": "c", "resources": {"requests": more, "limits": more}}]}});
    pods.patch_subresource("resize", "pinned", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(body)).await.unwrap();
    let pending = eventually(30 * S, "PodResizePending", || async {
        pods.get("pinned").await.ok()?.status?.conditions?.into_iter().find(|c| c.type_ == "PodResizePending")
    })
    .await;
    assert_eq!(pending.reason.as_deref(), Some("Infeasible"));
    assert_eq!(pending.message.as_deref(), Some("Resize is infeasible for Guaranteed Pods alongside Memory Manager policy \"Static\""));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(c.node.dir.path().join("kubelet/memory_manager_state")).unwrap()).unwrap();
    assert_eq!(state["entries"][&uid]["c"][0]["size"], 64 << 20, "{state}");
    // A restart keeps the pinning; the pod's deletion gives the memory back.
    agent.kill9();
    let _agent = c.nodelet(&[]);
    assert_eq!(c.running("pinned").await, pinned);
    pods.delete("pinned", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "the memory given back", || async {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(c.node.dir.path().join("kubelet/memory_manager_state")).ok()?).ok()?;
        (state["machineState"]["0"]["memoryMap"]["memory"]["reserved"] == 0).then_some(())
    })
    .await;
}

/// A dry run with the static CPU manager plans against it without writing
/// its state: the first Guaranteed 1-CPU static pod's container is planned
/// with a CPU of its own (CPU 0 reserved), the second, with no CPU left on
/// a 2-CPU machine, is printed as refused with kubelet's reason; nothing is
/// written under the root directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_cpus_a_pod_would_get_and_why_not() {
    let online = nodelet::cpus::parse(std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap().trim()).unwrap();
    let node = support::Node::start().await;
    node.config_extra.lock().unwrap().push_str("cpuManagerPolicy: static\nreservedSystemCPUs: \"0\"\n");
    // Every CPU but the reserved one asked for, by two pods: the second gets none.
    let cpus = online.len() - 1;
    for name in ["a-first", "b-second"] {
        let limits = format!("{{cpu: '{cpus}', memory: 64Mi}}");
        let spec = format!("  containers:\n  - {{name: c, image: nodelet.local/busybox:1, command: [sleep, '3600'], resources: {{limits: {limits}, requests: {limits}}}}}\n");
        node.write_manifest(&format!("{name}.yaml"), &support::pod_yaml(name, &spec));
    }
    let mut args = node.base_args();
    args.extend(["--dry-run".to_string(), "--healthz-port".into(), "0".into()]);
    let mut agent = node.nodelet_with(args);
    let code = tokio::task::block_in_place(|| agent.wait_exit(60 * S));
    assert_eq!(code, Some(0), "{}", agent.log());
    let out = agent.stdout();
    let mut rest = online.clone();
    rest.remove(&0);
    let want = format!(" cpuset_cpus={}", nodelet::cpus::format(&rest));
    let created: Vec<&str> = out.lines().filter(|l| l.starts_with("CRI CreateContainer")).collect();
    assert_eq!(created.len(), 1, "{out}");
    assert!(created[0].contains(&node.pod_name("a-first")) && created[0].contains(&want), "{out}");
    let refused: Vec<&str> = out.lines().filter(|l| l.starts_with("ADMIT rejected")).collect();
    assert_eq!(refused.len(), 1, "{out}");
    assert!(
        refused[0].contains(&node.pod_name("b-second")) && refused[0].contains("reason=UnexpectedAdmissionError") && refused[0].contains("not enough cpus available to satisfy request"),
        "{out}"
    );
    assert!(!node.dir.path().join("kubelet/cpu_manager_state").exists(), "a dry run wrote the CPU manager's state");
}
