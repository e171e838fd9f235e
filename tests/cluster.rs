//! Cluster mode against the test apiserver and a real containerd: TLS
//! bootstrap, Node and Lease, bound pods, mirror pods, the deletion
//! handshake, and apiserver outages.

mod support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::cluster::Cluster;
use support::{eventually, is_running, pod_yaml};

const S: Duration = Duration::from_secs(1);

fn bound_pod(name: &str, node: &str, command: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "c", "image": "nodelet.local/busybox:1", "command": ["sh", "-c", command]}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_bootstrap_then_a_ready_node_and_a_renewing_lease() {
    let c = Cluster::start().await;
    let agent = c.nodelet(&[]);
    let csr = eventually(20 * S, "a CSR from the bootstrap token", || async { c.csrs().await.into_iter().next() }).await;
    let spec = csr.spec.clone();
    assert_eq!(spec.signer_name, "kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(spec.username.as_deref(), Some("system:bootstrap:abcdef"));
    let mut usages = spec.usages.clone().unwrap();
    usages.sort();
    assert_eq!(usages, vec!["client auth", "digital signature", "key encipherment"], "kubelet's usages, the only set a v1.24 signer takes");
    c.decide_csr(&csr.metadata.name.unwrap(), true).await;

    // nodelet writes its certificate and kubeconfig, tightly, and carries on with them.
    let current = c.dir().join("pki/kubelet-client-current.pem");
    eventually(30 * S, "the client certificate", || async { current.exists().then_some(()) }).await;
    use std::os::unix::fs::PermissionsExt;
    let target = std::fs::canonicalize(&current).unwrap();
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    let kc = c.dir().join("kubelet.kubeconfig");
    assert_eq!(std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777, 0o600);
    let kubeconfig = std::fs::read_to_string(&kc).unwrap();
    assert!(kubeconfig.contains(&current.display().to_string()), "{kubeconfig}");

    eventually(30 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    let node: KubeNode = Api::<KubeNode>::all(c.client.clone()).get(&c.node.node_name()).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], c.node.node_name());
    assert_eq!(labels["nodelet.io/test"], "yes");
    let status = node.status.unwrap();
    assert_eq!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, 10250);
    assert_eq!(status.capacity.unwrap()["pods"].0, "110");
    assert!(status.node_info.unwrap().container_runtime_version.starts_with("containerd://"));
    assert!(status.addresses.unwrap().iter().any(|a| a.type_ == "InternalIP" && a.address == "10.99.0.1"));
    assert!(c.api.requests_by(&format!("system:node:{}", c.node.node_name())) > 0, "the node talks with its own identity");
    // The images the runtime holds, largest first, by digest and tag.
    let images = eventually(30 * S, "status.images", || async {
        let n = Api::<KubeNode>::all(c.client.clone()).get(&c.node.node_name()).await.ok()?;
        n.status?.images.filter(|i| i.len() >= 2)
    })
    .await;
    let names: Vec<String> = images.iter().flat_map(|i| i.names.clone().unwrap_or_default()).collect();
    assert!(names.iter().any(|n| n == "nodelet.local/busybox:1") && names.iter().any(|n| n == "nodelet.local/pause:1"), "{names:?}");
    let sizes: Vec<i64> = images.iter().map(|i| i.size_bytes.unwrap_or(0)).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]) && sizes[0] > 0, "largest first: {sizes:?}");

    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    let first = eventually(20 * S, "the lease", || async { leases.get(&c.node.node_name()).await.ok() }).await;
    let spec = first.spec.clone().unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert_eq!(spec.holder_identity.as_deref(), Some(c.node.node_name().as_str()));
    assert_eq!(first.metadata.owner_references.unwrap()[0].kind, "Node");
    let renewed = eventually(20 * S, "a renewal", || async {
        let l = leases.get(&c.node.node_name()).await.ok()?;
        (l.spec.as_ref()?.renew_time != spec.renew_time).then_some(l)
    })
    .await;
    assert!(renewed.spec.unwrap().renew_time > spec.renew_time);

    // A restart reuses the certificate: no new CSR.
    drop(agent);
    let _again = c.nodelet(&[]);
    tokio::time::sleep(3 * S).await;
    assert_eq!(c.csrs().await.len(), 1, "a valid certificate is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_csr_fails_clearly() {
    let c = Cluster::start().await;
    let mut agent = c.nodelet(&[]);
    let csr = eventually(20 * S, "the CSR", || async { c.csrs().await.into_iter().next() }).await;
    let name = csr.metadata.name.unwrap();
    c.decide_csr(&name, false).await;
    assert_eq!(agent.wait_exit(20 * S), Some(1));
    let last = agent.log().lines().last().unwrap_or("").to_string();
    assert_eq!(last, format!("nodelet: joining the cluster: certificate signing request {name} was denied: TestDenied: Denied by the test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pod_runs_reports_status_and_goes_through_the_deletion_handshake() {
    let c = Cluster::start().await;
    let agent = c.join().await;
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &bound_pod("api-pod", &c.node.node_name(), "trap 'exit 0' TERM; while true; do sleep 0.2; done"))
        .await
        .unwrap();
    let running = eventually(30 * S, "Running with a pod IP in the API", || async {
        let p = pods.get("api-pod").await.ok()?;
        let st = p.status.clone()?;
        (st.phase.as_deref() == Some("Running") && st.pod_ip.is_some()).then_some(p)
    })
    .await;
    let st = running.status.unwrap();
    assert!(st.pod_ip.unwrap().starts_with("10.99.0."));
    assert_eq!(st.host_ip.as_deref(), Some("10.99.0.1"));
    assert!(st.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cs = st.container_statuses.unwrap();
    assert!(cs[0].ready);
    let state = cs[0].state.clone().unwrap();
    assert!(state.running.is_some() && state.waiting.is_none(), "no stale waiting state beside running: {state:?}");
    let c_id = eventually(10 * S, "the container", || async {
        c.node.instances_named("api-pod", "c").await.into_iter().find(is_running)
    })
    .await
    .id;
    assert!(!c_id.is_empty());

    pods.delete("api-pod", &DeleteParams::default()).await.unwrap();
    eventually(30 * S, "the object removed after the containers stopped", || async {
        pods.get("api-pod").await.is_err().then_some(())
    })
    .await;
    assert!(c.node.containers_named("api-pod").await.is_empty(), "the containers are gone");
    assert!(c.node.sandboxes_named("api-pod").await.is_empty());
    let log = agent.log();
    assert!(log.contains("pod deleted in the API; stopping it"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_loses_a_deletion_nor_runs_a_finished_pod_again() {
    let c = Cluster::start().await;
    let mut agent = c.join().await;
    let pods = c.pods("default");
    let node = c.node.node_name();
    let mut once = bound_pod("once", &node, "exit 0");
    once.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    pods.create(&PostParams::default(), &once).await.unwrap();
    let doomed = bound_pod("doomed", &node, "trap 'exit 0' TERM; while true; do sleep 0.2; done");
    pods.create(&PostParams::default(), &doomed).await.unwrap();
    eventually(30 * S, "once Succeeded and doomed Running", || async {
        let a = pods.get("once").await.ok()?.status?.phase;
        let b = pods.get("doomed").await.ok()?.status?.phase;
        (a.as_deref() == Some("Succeeded") && b.as_deref() == Some("Running")).then_some(())
    })
    .await;

    // While nodelet is down, doomed is deleted in the API, and once's
    // containers are collected (as after a reboot).
    agent.kill9();
    pods.delete("doomed", &DeleteParams::default()).await.unwrap();
    c.node.collect_pod("once").await;
    assert!(c.node.containers_named("once").await.is_empty());

    let agent = c.nodelet(&[]);
    eventually(30 * S, "doomed's object removed", || async { pods.get("doomed").await.is_err().then_some(()) }).await;
    assert!(c.node.containers_named("doomed").await.is_empty(), "the object went only after the containers");
    tokio::time::sleep(3 * S).await;
    assert!(c.node.sandboxes_named("once").await.is_empty(), "a Succeeded pod never runs again:\n{}", agent.log());
    let phase = pods.get("once").await.unwrap().status.unwrap().phase;
    assert_eq!(phase.as_deref(), Some("Succeeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pod_gets_a_mirror_that_comes_back_when_deleted() {
    let c = Cluster::start().await;
    c.node.write_manifest("static.yaml", &pod_yaml("static", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n"));
    let _agent = c.join().await;
    let pods = c.pods("default");
    let name = c.node.pod_name("static");
    let mirror = eventually(30 * S, "the mirror pod", || async { pods.get(&name).await.ok() }).await;
    let ann = mirror.metadata.annotations.clone().unwrap();
    assert!(ann.contains_key("kubernetes.io/config.mirror"), "{ann:?}");
    assert_eq!(ann["kubernetes.io/config.source"], "file");
    assert_eq!(mirror.metadata.owner_references.unwrap()[0].kind, "Node");
    eventually(30 * S, "the static pod's status on its mirror", || async {
        let p = pods.get(&name).await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let container = c.node.instances("static", "c").await.into_iter().find(is_running).unwrap();

    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let again = eventually(30 * S, "a new mirror", || async {
        let p = pods.get(&name).await.ok()?;
        (p.metadata.uid != mirror.metadata.uid && p.metadata.deletion_timestamp.is_none()).then_some(p)
    })
    .await;
    assert!(again.metadata.annotations.unwrap().contains_key("kubernetes.io/config.mirror"));
    let now = c.node.instances("static", "c").await.into_iter().find(is_running).unwrap();
    assert_eq!(now.id, container.id, "deleting the mirror does not touch the static pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_outages_and_410s_disturb_no_container() {
    let mut c = Cluster::start().await;
    let _agent = c.join().await;
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &bound_pod("steady", &c.node.node_name(), "sleep 3600")).await.unwrap();
    pods.create(&PostParams::default(), &bound_pod("crashy", &c.node.node_name(), "sleep 4; exit 1")).await.unwrap();
    eventually(30 * S, "both Running", || async {
        let a = pods.get("steady").await.ok()?.status?.phase;
        let b = pods.get("crashy").await.ok()?.status?.phase;
        (a.as_deref() == Some("Running") && b.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let before = c.node.instances_named("steady", "c").await.into_iter().find(is_running).unwrap();

    // The apiserver goes away; crashy restarts meanwhile.
    c.api.stop();
    eventually(30 * S, "crashy restarted during the outage", || async {
        c.node.instances_named("crashy", "c").await.iter().any(|x| x.metadata.as_ref().unwrap().attempt >= 1).then_some(())
    })
    .await;
    c.api.restart().await;
    eventually(30 * S, "the restart count caught up in the API", || async {
        let p = pods.get("crashy").await.ok()?;
        (p.status?.container_statuses?[0].restart_count >= 1).then_some(())
    })
    .await;

    // Expired resource versions: every watch gets 410 Gone and relists.
    c.api.force_410().await;
    let probe = bound_pod("after-410", &c.node.node_name(), "sleep 3600");
    pods.create(&PostParams::default(), &probe).await.unwrap();
    eventually(30 * S, "a pod created after the 410 runs", || async {
        let p = pods.get("after-410").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let after = c.node.instances_named("steady", "c").await;
    assert_eq!(after.len(), 1, "no new container");
    assert_eq!(after[0].id, before.id, "the steady container was never restarted");
    assert!(is_running(&after[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_rejects_what_the_node_cannot_run_and_events_reach_the_api() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let pods = c.pods("default");
    let mut picky = bound_pod("picky", &c.node.node_name(), "sleep 3600");
    picky.spec.as_mut().unwrap().node_selector = Some([("disk".to_string(), "nvme".to_string())].into());
    pods.create(&PostParams::default(), &picky).await.unwrap();
    let mut fine = bound_pod("fine", &c.node.node_name(), "sleep 3600");
    fine.spec.as_mut().unwrap().node_selector = Some([("nodelet.io/test".to_string(), "yes".to_string())].into());
    pods.create(&PostParams::default(), &fine).await.unwrap();
    let rejected = eventually(30 * S, "picky rejected", || async {
        let st = pods.get("picky").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(rejected.reason.as_deref(), Some("NodeAffinity"));
    assert!(rejected.message.unwrap().starts_with("Pod was rejected: "));
    assert!(c.node.containers_named("picky").await.is_empty(), "a rejected pod does not run");
    eventually(30 * S, "fine Running", || async {
        (pods.get("fine").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;

    // A pod with a volume kind this node has no plugin for is refused with
    // a reason rather than started without its data.
    let mut claim = bound_pod("claim", &c.node.node_name(), "sleep 3600");
    claim.spec.as_mut().unwrap().volumes =
        Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "image": {"reference": "registry.example/data:1"}})).unwrap()]);
    pods.create(&PostParams::default(), &claim).await.unwrap();
    let st = eventually(30 * S, "claim rejected", || async {
        let st = pods.get("claim").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(st.reason.as_deref(), Some("UnsupportedPodSpec"));
    assert!(st.message.unwrap().contains("spec.volumes[0]: Unsupported value: image volumes"));

    // More ephemeral storage than the Node's allocatable says it has: refused
    // as kubelet refuses it, never started.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    let allocatable = nodes.get(&c.node.node_name()).await.unwrap().status.unwrap().allocatable.unwrap();
    let storage = nodelet::resources::value(&allocatable["ephemeral-storage"]).unwrap();
    let mut hungry = bound_pod("hungry", &c.node.node_name(), "sleep 3600");
    hungry.spec.as_mut().unwrap().containers[0].resources = Some(serde_json::from_value(serde_json::json!({"requests": {"ephemeral-storage": (storage + (1 << 20)).to_string()}})).unwrap());
    pods.create(&PostParams::default(), &hungry).await.unwrap();
    let st = eventually(30 * S, "hungry rejected", || async {
        let st = pods.get("hungry").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(st.reason.as_deref(), Some("OutOfephemeral-storage"));
    assert!(st.message.unwrap().contains("Node didn't have enough resource: ephemeral-storage"));
    assert!(c.node.containers_named("hungry").await.is_empty());

    // kubelet re-checks NoExecute taints (the taint-eviction controller is
    // off here, as some clusters run it, so nothing but the node refuses):
    // a pod bound straight to a node it does not tolerate never runs.
    c.api.set_taint_eviction(false);
    let taint = serde_json::json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoExecute"}, {"key": "gpu", "effect": "NoSchedule"}]}});
    nodes.patch(&c.node.node_name(), &PatchParams::default(), &Patch::Merge(&taint)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    pods.create(&PostParams::default(), &bound_pod("untolerated", &c.node.node_name(), "sleep 3600")).await.unwrap();
    let mut tolerated = bound_pod("tolerated", &c.node.node_name(), "sleep 3600");
    tolerated.spec.as_mut().unwrap().tolerations =
        Some(vec![serde_json::from_value(serde_json::json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoExecute"})).unwrap()]);
    pods.create(&PostParams::default(), &tolerated).await.unwrap();
    let st = eventually(30 * S, "untolerated rejected", || async {
        let st = pods.get("untolerated").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(st.reason.as_deref(), Some("TaintToleration"));
    assert_eq!(st.message.as_deref(), Some("Pod was rejected: Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"));
    assert!(c.node.containers_named("untolerated").await.is_empty(), "an untolerated pod does not run");
    eventually(30 * S, "tolerated Running (NoSchedule is the scheduler's business)", || async {
        (pods.get("tolerated").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let reasons = eventually(30 * S, "Started and rejection events", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.iter().any(|r| r == "Started") && reasons.iter().any(|r| r == "NodeAffinity")).then_some(reasons)
    })
    .await;
    for r in ["Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "missing a {r} event: {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_rotates_without_dropping_the_watch() {
    let c = Cluster::start().await;
    c.api.set_auto_approve(true);
    c.api.set_cert_lifetime(Duration::from_secs(20));
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    let current = c.dir().join("pki/kubelet-client-current.pem");
    let first = std::fs::canonicalize(&current).unwrap();
    // Renewal comes at 70-90 % of 20 s.
    let second = eventually(40 * S, "a renewed certificate", || async {
        let now = std::fs::canonicalize(&current).ok()?;
        (now != first).then_some(now)
    })
    .await;
    assert_eq!(c.csrs().await.len(), 2, "one CSR to bootstrap, one to renew");
    assert!(second.exists() && first.exists());
    // The same watch still delivers: a pod created now runs.
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &bound_pod("after-rotation", &c.node.node_name(), "sleep 3600")).await.unwrap();
    eventually(30 * S, "the pod Running", || async {
        (pods.get("after-rotation").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_maps_secrets_services_and_tokens_reach_the_pod() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    let c = Cluster::start().await;
    c.api.set_token_max_lifetime(20 * S);
    let _agent = c.join().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let cm = serde_json::json!({"metadata": {"name": "app-config"}, "data": {"a": "one", "b": "two"}});
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let secret = serde_json::json!({"metadata": {"name": "app-secret"}, "data": {"password": "czNjcmV0"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc = serde_json::json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.5.5",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}});
    services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.unwrap();

    let pod = |name: &str, env_key: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": c.node.node_name(),
                "terminationGracePeriodSeconds": 2,
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "app-config", "items": [{"key": "a", "path": "first"}], "defaultMode": 256}},
                    {"name": "sec", "secret": {"secretName": "app-secret"}},
                    {"name": "opt", "configMap": {"name": "absent", "optional": true}},
                    {"name": "limits", "downwardAPI": {"items": [{"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory"}}]}}
                ],
                "containers": [{
                    "name": "c", "image": "nodelet.local/busybox:1", "command": ["sleep", "3600"],
                    "env": [
                        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": env_key}}},
                        {"name": "P", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}},
                        {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": true}}},
                        {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}
                    ],
                    "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                    "envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/cfg"},
                        {"name": "sec", "mountPath": "/sec"},
                        {"name": "opt", "mountPath": "/opt-cfg"},
                        {"name": "limits", "mountPath": "/limits"}
                    ]
                }]
            }
        }))
        .unwrap()
    };
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod("reader", "a")).await.unwrap();
    pods.create(&PostParams::default(), &pod("broken", "nope")).await.unwrap();
    let id = eventually(60 * S, "reader running", || async {
        c.node.containers_named("reader").await.into_iter().find(is_running).map(|s| s.id)
    })
    .await;
    let sh = |script: &'static str| {
        let (node, id) = (&c.node, id.clone());
        async move {
            let r = node.exec(&id, &["sh", "-c", script]).await;
            assert_eq!(r.exit_code, 0, "`{script}`: {}", String::from_utf8_lossy(&r.stderr));
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
    };

    // configMap with items and defaultMode; secret on tmpfs; optional and absent is empty.
    assert_eq!(sh("cat /cfg/first").await, "one");
    assert_eq!(sh("ls /cfg").await, "first\n");
    assert_eq!(sh("stat -c %a /cfg/..data/first").await, "400\n");
    assert_eq!(sh("cat /sec/password").await, "s3cret");
    assert!(sh("grep ' /sec ' /proc/mounts").await.starts_with("tmpfs /sec tmpfs"), "secrets live on tmpfs");
    assert_eq!(sh("ls -A /opt-cfg | grep -v '^[.][.]' | wc -l").await.trim(), "0");

    // Environment from the objects, and the service links.
    let env = sh("echo $A,$P,$CFG_a,$CFG_b,${MAYBE-unset},$WEB_SERVICE_HOST,$WEB_SERVICE_PORT,$WEB_PORT_8080_TCP_ADDR,$KUBERNETES_SERVICE_HOST,$KUBERNETES_SERVICE_PORT").await;
    assert_eq!(env, "one,s3cret,one,two,unset,10.96.5.5,8080,10.96.5.5,10.96.0.1,443\n");
    // resourceFieldRef without a divisor (stored as "0" by the apiserver):
    // read as 1, as kubelet does (GOMAXPROCS, JVM heap sizes).
    assert_eq!(sh("echo $MEM_LIMIT,$CPU_LIMIT").await, "67108864,1\n");
    assert_eq!(sh("cat /limits/mem").await, "67108864");

    // The projected service-account volume: a token the apiserver accepts,
    // the CA bundle and the namespace.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(sh("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace").await, "default");
    assert!(sh("cat /var/run/secrets/kubernetes.io/serviceaccount/ca.crt").await.contains("BEGIN CERTIFICATE"));
    let read_token = || async { c.node.exec(&id, &["cat", &format!("{sa}/token")]).await.stdout };
    let token = String::from_utf8(read_token().await).unwrap();
    let as_pod = support::apiserver::client_in_netns(&c.api.bootstrap_kubeconfig(&token), &c.node.netns).await;
    let root_ca = Api::<ConfigMap>::namespaced(as_pod, "default").get("kube-root-ca.crt").await;
    assert!(root_ca.is_ok(), "the pod's token authenticates: {root_ca:?}");
    let requests = c.api.token_requests();
    assert!(requests.iter().any(|(sa, _, pod)| sa == "default/default" && pod == "reader"), "{requests:?}");
    // Tokens last 20 s here: nodelet fetches a new one at 80 % of that.
    let renewed = eventually(40 * S, "a renewed token in the file", || async {
        let now = String::from_utf8(read_token().await).unwrap();
        (!now.is_empty() && now != token).then_some(now)
    })
    .await;
    let as_pod = support::apiserver::client_in_netns(&c.api.bootstrap_kubeconfig(&renewed), &c.node.netns).await;
    assert!(Api::<ConfigMap>::namespaced(as_pod, "default").get("kube-root-ca.crt").await.is_ok());

    // A configMap update reaches the running container through the ..data swap.
    let before = sh("readlink /cfg/..data").await;
    cms.patch("app-config", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"a": "uno"}}))).await.unwrap();
    eventually(30 * S, "the updated configMap in the container", || async {
        let r = c.node.exec(&id, &["cat", "/cfg/first"]).await;
        (r.stdout == b"uno").then_some(())
    })
    .await;
    assert_ne!(sh("readlink /cfg/..data").await, before, "a new version directory");
    assert_eq!(sh("ls -A /cfg | grep '^[.][.]20' | wc -l").await.trim(), "1", "old versions are removed");

    // A missing key fails that container's start with a clear reason.
    let waiting = eventually(60 * S, "broken waiting with CreateContainerConfigError", || async {
        let st = pods.get("broken").await.ok()?.status?;
        let w = st.container_statuses?.into_iter().next()?.state?.waiting?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w)
    })
    .await;
    assert_eq!(waiting.message.as_deref(), Some("couldn't find key nope in ConfigMap default/app-config"));
    assert!(c.node.containers_named("broken").await.is_empty());
}

/// The memory cgroup the node's pods live under, with a limit of `mib`: the
/// memory.available signal is judged against it (cgroup v2 or v1).
/// A quantity as the node writes it (`123Ki`, `2`, `1500m`, plain bytes):
/// bytes, or millicores for cpu.
fn amount(q: &str, cpu: bool) -> i64 {
    let (n, unit) = q.find(|c: char| !c.is_ascii_digit()).map_or((q, ""), |i| q.split_at(i));
    let n: i64 = n.parse().unwrap();
    match (unit, cpu) {
        ("", true) => n * 1000,
        ("m", true) => n,
        ("", false) => n,
        ("Ki", false) => n << 10,
        ("Mi", false) => n << 20,
        ("Gi", false) => n << 30,
        other => panic!("unexpected quantity {q}: {other:?}"),
    }
}

/// Node Allocatable: the Node reports capacity less kubeReserved,
/// systemReserved and the hard eviction threshold (and the huge pages);
/// a pod that fits capacity but not allocatable is refused OutOfmemory;
/// the pods' top-level cgroup is limited to capacity less the reservations
/// and each pod cgroup to podPidsLimit processes, which a pod that forks
/// more meets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocatable_is_capacity_less_what_is_reserved_and_the_cgroups_hold_it() {
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("kubeReserved: {cpu: 500m, memory: 1Gi, pid: '1000'}\nsystemReserved: {memory: 512Mi}\npodPidsLimit: 40\n");
    let _agent = c.join().await;
    let node = c.node.node_name();
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let status = eventually(30 * S, "the node's status", || async { nodes.get(&node).await.ok()?.status.filter(|s| s.allocatable.is_some()) }).await;
    let (cap, alloc) = (status.capacity.unwrap(), status.allocatable.unwrap());
    let huge: i64 = cap.iter().filter(|(k, _)| k.starts_with("hugepages-")).map(|(_, q)| amount(&q.0, false)).sum();
    let cap_mem = amount(&cap["memory"].0, false);
    assert_eq!(amount(&alloc["memory"].0, false), cap_mem - (1 << 30) - (512 << 20) - (100 << 20) - huge, "memory: {cap:?} {alloc:?}");
    assert_eq!(amount(&alloc["cpu"].0, true), amount(&cap["cpu"].0, true) - 500, "cpu");
    assert_eq!(alloc["pods"], cap["pods"]);
    assert_eq!(alloc["ephemeral-storage"].0, cap["ephemeral-storage"].0, "no nodefs threshold in the tests' config");

    // Fits capacity, not allocatable: refused.
    let pods = c.pods("default");
    let mut big = bound_pod("big", &node, "sleep 3600");
    let want = amount(&alloc["memory"].0, false) + (256 << 20);
    big.spec.as_mut().unwrap().containers[0].resources =
        Some(serde_json::from_value(serde_json::json!({"requests": {"memory": want.to_string()}})).unwrap());
    assert!(want < cap_mem, "the request fits the capacity");
    pods.create(&PostParams::default(), &big).await.unwrap();
    let refused = eventually(30 * S, "big refused", || async {
        let st = pods.get("big").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(refused.reason.as_deref(), Some("OutOfmemory"), "{refused:?}");

    // The pods' cgroup, and a pod that tries to run 60 processes.
    let rel = format!("{}/kubepods", c.node.cgroup_root.trim_start_matches('/'));
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let file = |ctrl: &str, path: &str, name: &str| {
        let p = if v2 { format!("/sys/fs/cgroup/{path}/{name}") } else { format!("/sys/fs/cgroup/{ctrl}/{path}/{name}") };
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().to_string()
    };
    let (mem_file, cpu_file) = if v2 { ("memory.max", "cpu.weight") } else { ("memory.limit_in_bytes", "cpu.shares") };
    assert_eq!(file("memory", &rel, mem_file), (cap_mem - (1 << 30) - (512 << 20)).to_string(), "kubepods: capacity less the reservations");
    let cpu_millis = amount(&cap["cpu"].0, true) - 500;
    if !v2 {
        assert_eq!(file("cpu", &rel, cpu_file), (cpu_millis * 1024 / 1000).to_string());
    }
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    assert_eq!(file("pids", &rel, "pids.max"), (pid_max - 1000).to_string());
    // (exec: once the limit is met the shell cannot fork another sleep.)
    // A pod that forks 60 sleeps in a subshell (which dies when a fork is
    // refused) and then stays: the pod holds at the limit, and a fork was
    // refused below it (cgroup v1 counts the refusal where the forking task
    // is: the container's cgroup).
    let sixty: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    let forks = format!("( for i in {}; do sleep 600 & done ) 2>/dev/null; exec sleep 3600", sixty.join(" "));
    let created = pods.create(&PostParams::default(), &bound_pod("forks", &node, &forks)).await.unwrap();
    let pod_cgroup = format!("{rel}/besteffort/pod{}", created.metadata.uid.unwrap());
    let pod_dir = if v2 { format!("/sys/fs/cgroup/{pod_cgroup}") } else { format!("/sys/fs/cgroup/pids/{pod_cgroup}") };
    let refused_forks = eventually(60 * S, "the pod at its process limit with a fork refused", || async {
        let current: i64 = std::fs::read_to_string(format!("{pod_dir}/pids.current")).ok()?.trim().parse().ok()?;
        let mut refused = 0i64;
        let mut stack = vec![std::path::PathBuf::from(&pod_dir)];
        while let Some(d) = stack.pop() {
            if let Ok(events) = std::fs::read_to_string(d.join("pids.events")) {
                refused += events.split_whitespace().nth(1).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        // At the refusal the subshell made 40; it is gone since.
        ((38..=40).contains(&current) && refused > 0).then_some(refused)
    })
    .await;
    assert_eq!(file("pids", &pod_cgroup, "pids.max"), "40", "podPidsLimit");
    let current: i64 = file("pids", &pod_cgroup, "pids.current").parse().unwrap();
    assert!(current <= 40, "at most podPidsLimit processes: {current}");
    assert!(refused_forks > 0, "forks beyond the limit were refused");
}

fn limit_pod_memory(cgroup_root: &str, mib: u64) {
    let rel = cgroup_root.trim_start_matches('/');
    let (dir, file) = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        (std::path::Path::new("/sys/fs/cgroup").join(rel), "memory.max")
    } else {
        (std::path::Path::new("/sys/fs/cgroup/memory").join(rel), "memory.limit_in_bytes")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), (mib << 20).to_string()).unwrap();
}

/// Upstream's RuntimeClass cases ([sig-node] RuntimeClass "should run a Pod
/// requesting a RuntimeClass with a configured handler", "should fail to run
/// a Pod requesting a RuntimeClass with an unconfigured handler", "should
/// reject a Pod requesting a non-existent RuntimeClass", and the pod
/// overhead case): CRI gets the class's handler, not its name; the class's
/// fixed overhead (which the apiserver's admission copies into the pod) is
/// added to the pod cgroup's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_class_gives_cri_its_handler_and_the_pod_cgroup_its_overhead() {
    use k8s_openapi::api::node::v1::RuntimeClass;
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let classes: Api<RuntimeClass> = Api::all(c.client.clone());
    for rc in [
        serde_json::json!({"metadata": {"name": "fast"}, "handler": "runc", "overhead": {"podFixed": {"cpu": "250m", "memory": "32Mi"}}}),
        serde_json::json!({"metadata": {"name": "sandboxed"}, "handler": "kata-not-here"}),
    ] {
        classes.create(&PostParams::default(), &serde_json::from_value(rc).unwrap()).await.unwrap();
    }
    let pods = c.pods("default");
    let with_class = |name: &str, class: &str| -> Pod {
        let mut p = bound_pod(name, &node, "sleep 3600");
        let spec = p.spec.as_mut().unwrap();
        spec.runtime_class_name = Some(class.into());
        spec.containers[0].resources = Some(serde_json::from_value(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}})).unwrap());
        p
    };
    let created = pods.create(&PostParams::default(), &with_class("with-class", "fast")).await.unwrap();
    assert_eq!(created.spec.as_ref().unwrap().overhead.as_ref().map(|o| o["memory"].0.clone()), Some("32Mi".to_string()), "admission copied the overhead");
    eventually(60 * S, "the pod running", || async { (pods.get("with-class").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(()) }).await;
    let sandbox = c.node.sandboxes_named("with-class").await.into_iter().next().expect("its sandbox");
    assert_eq!(sandbox.runtime_handler, "runc", "the class's handler reached CRI, not its name");
    let uid = created.metadata.uid.unwrap();
    let rel = c.node.cgroup_root.trim_start_matches('/');
    let limit = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        std::fs::read_to_string(std::path::Path::new("/sys/fs/cgroup").join(rel).join(format!("kubepods/pod{uid}/memory.max")))
    } else {
        std::fs::read_to_string(std::path::Path::new("/sys/fs/cgroup/memory").join(rel).join(format!("kubepods/pod{uid}/memory.limit_in_bytes")))
    };
    assert_eq!(limit.unwrap().trim(), ((64u64 + 32) << 20).to_string(), "the containers' 64Mi plus the class's 32Mi overhead");

    // A handler the runtime does not have: the sandbox fails, saying so.
    pods.create(&PostParams::default(), &with_class("unconfigured", "sandboxed")).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let note = eventually(30 * S, "a FailedCreatePodSandBox event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("unconfigured"))
            .find_map(|e| e.note)
    })
    .await;
    assert!(note.contains("kata-not-here"), "{note}");
    // A class that does not exist: the apiserver refuses the pod.
    let refused = pods.create(&PostParams::default(), &with_class("no-class", "absent")).await.unwrap_err();
    assert!(refused.to_string().contains("RuntimeClass \"absent\" not found"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_evicted_while_a_guaranteed_pod_stays_and_memory_pressure_comes_and_goes() {
    let c = Cluster::start().await;
    // The pods' cgroup may use 200 MiB; evict below 100 MiB available.
    limit_pod_memory(&c.node.cgroup_root, 200);
    c.node.config_extra.lock().unwrap().push_str("evictionHard: {memory.available: 100Mi}\nevictionPressureTransitionPeriod: 15s\n");
    let agent = c.join().await;
    let pods = c.pods("default");
    let node = c.node.node_name();
    let mut steady = bound_pod("steady", &node, "trap 'exit 0' TERM; while true; do sleep 1; done");
    steady.spec.as_mut().unwrap().containers[0].resources = Some(serde_json::from_value(serde_json::json!({
        "requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}
    })).unwrap());
    pods.create(&PostParams::default(), &steady).await.unwrap();
    eventually(30 * S, "steady Running", || async {
        (pods.get("steady").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    // 140 MiB held by busybox awk, in 10 MiB strings (no peak that would
    // hit the cgroup's limit): 60 of the 200 MiB stay available.
    let hog = bound_pod("hog", &node, "awk 'BEGIN { for (i = 0; i < 14; i++) a[i] = sprintf(\"%10485760s\", i); system(\"sleep 3600\") }'");
    pods.create(&PostParams::default(), &hog).await.unwrap();

    let evicted = eventually(60 * S, "the hog Failed: Evicted", || async {
        let st = pods.get("hog").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(evicted.reason.as_deref(), Some("Evicted"), "{evicted:?}");
    let msg = evicted.message.unwrap_or_default();
    assert!(msg.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi, available: "), "{msg}");
    assert!(msg.contains("Container c was using"), "{msg}");
    // kubelet's DisruptionTarget, which a Job's podFailurePolicy matches on.
    let disruption = evicted.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget").expect("a DisruptionTarget condition");
    assert_eq!((disruption.status.as_str(), disruption.reason.as_deref()), ("True", Some("TerminationByKubelet")));
    assert_eq!(disruption.message.as_deref(), Some(msg.as_str()));
    // Under memory pressure a BestEffort pod is turned away, as kubelet's
    // eviction admission does.
    pods.create(&PostParams::default(), &bound_pod("late", &node, "sleep 3600")).await.unwrap();
    let refused = eventually(20 * S, "late refused", || async {
        let st = pods.get("late").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(refused.reason.as_deref(), Some("Evicted"));
    assert_eq!(refused.message.as_deref(), Some("The node had condition: [MemoryPressure]. "));
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let pressure = |n: &KubeNode| {
        n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "MemoryPressure").map(|c| c.status.clone())
    };
    // The hog's memory is back; the condition goes once the transition
    // period has passed without a breach.
    eventually(45 * S, "MemoryPressure False again", || async {
        let n = nodes.get(&node).await.ok()?;
        (pressure(&n).as_deref() == Some("False")).then_some(())
    })
    .await;
    let log = agent.log();
    assert!(log.contains("node pressure changed memory=true"), "MemoryPressure was True: {log}");
    let st = pods.get("steady").await.unwrap().status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"), "the Guaranteed pod stays");
    assert!(c.node.containers_named("hog").await.iter().all(|x| x.state != 1), "the hog is not running any more");
    tokio::time::sleep(3 * S).await;
    assert_eq!(pods.get("hog").await.unwrap().status.unwrap().phase.as_deref(), Some("Failed"), "an evicted pod is not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutdown_stops_regular_pods_then_critical_ones_and_then_lets_go() {
    let c = Cluster::start().await;
    let logind = support::logind::FakeLogind::start(&c.dir()).await;
    c.node.env.lock().unwrap().push(("DBUS_SYSTEM_BUS_ADDRESS".into(), logind.address.clone().into()));
    c.node.config_extra.lock().unwrap().push_str("shutdownGracePeriod: 20s\nshutdownGracePeriodCriticalPods: 8s\n");
    let agent = c.join().await;
    eventually(20 * S, "a delay inhibitor lock", || async {
        logind.held().contains(&("shutdown/nodelet".to_string(), "delay".to_string())).then_some(())
    })
    .await;
    let pods = c.pods("default");
    let node = c.node.node_name();
    let sleeper = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    // The regular pod takes a second to stop: were both stopped at once, the
    // critical one would finish first.
    pods.create(&PostParams::default(), &bound_pod("regular", &node, "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.2; done")).await.unwrap();
    let mut critical = bound_pod("critical", &node, sleeper);
    // Priority admission gives it the class's 2000001000.
    critical.spec.as_mut().unwrap().priority_class_name = Some("system-node-critical".into());
    pods.create(&PostParams::default(), &critical).await.unwrap();
    for name in ["regular", "critical"] {
        eventually(30 * S, "Running", || async { (pods.get(name).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(()) }).await;
    }

    logind.prepare_for_shutdown(true).await;
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    eventually(20 * S, "the node NotReady: shutting down", || async {
        let n = nodes.get(&node).await.ok()?;
        let ready = n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.message.as_deref() == Some("node is shutting down")).then_some(())
    })
    .await;
    let mut finished = Vec::new();
    for name in ["regular", "critical"] {
        let st = eventually(30 * S, "Failed: Terminated", || async {
            let st = pods.get(name).await.ok()?.status?;
            let stopped = st.container_statuses.iter().flatten().all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
            (st.phase.as_deref() == Some("Failed") && stopped).then_some(st)
        })
        .await;
        assert_eq!(st.reason.as_deref(), Some("Terminated"), "{name}: {st:?}");
        assert_eq!(st.message.as_deref(), Some("Pod was terminated in response to imminent node shutdown."));
        let disruption = st.conditions.iter().flatten().find(|c| c.type_ == "DisruptionTarget").expect("a DisruptionTarget condition");
        assert_eq!((disruption.status.as_str(), disruption.reason.as_deref()), ("True", Some("TerminationByKubelet")), "{name}");
        // The runtime's nanoseconds (the API's finishedAt has whole seconds).
        let c = c.node.instances_named(name, "c").await.into_iter().next().expect("the container");
        finished.push(c.finished_at);
    }
    assert!(finished[0] > 0 && finished[0] < finished[1], "regular pods stop before critical ones: {finished:?}");
    eventually(20 * S, "the inhibitor lock released", || async { logind.held().is_empty().then_some(()) }).await;
    // A pod bound while the node shuts down is turned away.
    pods.create(&PostParams::default(), &bound_pod("late", &node, sleeper)).await.unwrap();
    let late = eventually(20 * S, "late refused", || async {
        let st = pods.get("late").await.ok()?.status?;
        (st.phase.as_deref() == Some("Failed")).then_some(st)
    })
    .await;
    assert_eq!(late.reason.as_deref(), Some("NodeShutdown"), "{late:?}");
    assert!(agent.log().contains("pods stopped; the inhibitor lock is released"), "{}", agent.log());
}

/// A 32 MiB ext4 filesystem on a loop device, mounted at `dir`; undone on drop.
struct LoopDisk {
    dir: std::path::PathBuf,
    device: String,
}

impl LoopDisk {
    fn new(dir: std::path::PathBuf) -> Self {
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let image = dir.with_extension("img");
        std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
        let device = run(std::process::Command::new("losetup").args(["--find", "--show"]).arg(&image));
        run(std::process::Command::new("mkfs.ext4").args(["-q", &device]));
        std::fs::create_dir_all(&dir).unwrap();
        run(std::process::Command::new("mount").arg(&device).arg(&dir));
        LoopDisk { dir, device }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::process::Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// A loop device on a new sparse file of `size` bytes; detached on drop.
struct RawDisk {
    device: String,
}

impl RawDisk {
    fn new(image: std::path::PathBuf, size: u64) -> Self {
        std::fs::File::create(&image).unwrap().set_len(size).unwrap();
        let out = std::process::Command::new("losetup").args(["--find", "--show"]).arg(&image).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        RawDisk { device: String::from_utf8(out.stdout).unwrap().trim().to_string() }
    }
}

impl Drop for RawDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn mounted_under(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.contains(needle)))
}

/// The StorageClass local PVs are made for, as operators define it: no
/// provisioner, bound once a pod is scheduled.
/// Waits for the PV controller (the harness's) to bind a claim.
async fn claim_bound(claims: &Api<k8s_openapi::api::core::v1::PersistentVolumeClaim>, name: &str) {
    eventually(30 * S, &format!("claim {name} Bound by the PV controller"), || async {
        (claims.get(name).await.ok()?.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
}

async fn local_storage_class(c: &Cluster) {
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(c.client.clone());
    let class = serde_json::from_value(serde_json::json!({"metadata": {"name": "local"},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}))
    .unwrap();
    classes.create(&PostParams::default(), &class).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_local_volume_keeps_its_data_across_pods_and_an_unbound_claim_waits() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let disk = LoopDisk::new(c.dir().join("disk1"));
    local_storage_class(&c).await;
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "local-1"},
        "spec": {"capacity": {"storage": "30Mi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                 "storageClassName": "local", "local": {"path": disk.dir.display().to_string()},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
    }))
    .unwrap();
    pvs.create(&PostParams::default(), &pv).await.unwrap();
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOncePod"], "storageClassName": "local", "resources": {"requests": {"storage": "30Mi"}}}
    }))
    .unwrap();
    let created = claims.create(&PostParams::default(), &claim).await.unwrap();

    // Not bound yet: the pod waits with FailedMount.
    let pods = c.pods("default");
    let with_claim = |name: &str, command: &str, restart: &str| -> Pod {
        let mut p = bound_pod(name, &node, command);
        let spec = p.spec.as_mut().unwrap();
        spec.restart_policy = Some(restart.into());
        spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})).unwrap()]);
        spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "mountPath": "/data"})).unwrap()]);
        p
    };
    let mut writer = with_claim("writer", "echo written-by-writer > /data/hello && sleep 3600", "Always");
    writer.spec.as_mut().unwrap().security_context = Some(serde_json::from_value(serde_json::json!({"fsGroup": 2345})).unwrap());
    pods.create(&PostParams::default(), &writer).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let note = eventually(30 * S, "a FailedMount event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedMount")).and_then(|e| e.note)
    })
    .await;
    assert!(note.contains("has non-bound phase") && note.contains("error processing PVC default/data"), "{note}");
    assert!(c.node.containers_named("writer").await.is_empty(), "nothing starts without its volume");

    // Pre-bound by hand, as an operator pre-binds: both sides point at each
    // other, and the PV controller completes the binding (status Bound).
    let uid = created.metadata.uid.clone().unwrap();
    pvs.patch("local-1", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"claimRef":
        {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data", "uid": uid}}}))).await.unwrap();
    claims.patch("data", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"volumeName": "local-1"}}))).await.unwrap();
    eventually(60 * S, "the writer running once the claim is bound", || async {
        (pods.get("writer").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let written = eventually(10 * S, "the file on the disk", || async { std::fs::read_to_string(disk.dir.join("hello")).ok().filter(|s| !s.is_empty()) }).await;
    assert_eq!(written.trim(), "written-by-writer");
    // fsGroup: the volume is given to the group, setgid, so the pod's files are too.
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(&disk.dir).unwrap();
    assert_eq!((root.gid(), root.mode() & 0o2070), (2345, 0o2070), "the volume root is the fsGroup's");
    assert_eq!(std::fs::metadata(disk.dir.join("hello")).unwrap().gid(), 2345, "files made in it inherit the group");
    let writer_uid = pods.get("writer").await.unwrap().metadata.uid.unwrap();
    assert!(mounted_under(&format!("{writer_uid}/volumes/kubernetes.io~local-volume/local-1")), "the local volume is bind-mounted into the pod's directory");
    // Its figures are its filesystem's (kubelet's statfs for local volumes).
    let vol = c.volume_stats("writer", "d").await;
    assert_eq!(vol["pvcRef"], serde_json::json!({"name": "data", "namespace": "default"}), "{vol}");
    let fs = nix::sys::statvfs::statvfs(&disk.dir).unwrap();
    assert_eq!(vol["capacityBytes"].as_u64(), Some(fs.blocks() as u64 * fs.fragment_size() as u64), "the 32 MiB disk's: {vol}");
    assert_eq!(vol["inodes"].as_u64(), Some(fs.files() as u64));
    // What the filesystem counts as used (ext4's reserved inodes too), not a
    // walk of the directory (the root, lost+found and hello: 3 inodes).
    let fs_used = (fs.blocks() - fs.blocks_free()) as u64 * fs.fragment_size() as u64;
    assert_eq!(vol["usedBytes"].as_u64(), Some(fs_used), "{vol}");
    assert_eq!(vol["inodesUsed"].as_u64(), Some((fs.files() - fs.files_free()) as u64), "statfs's, not a walk: {vol}");
    assert!(vol["inodesUsed"].as_u64().unwrap() > 3, "{vol}");

    // ReadWriteOncePod: a second pod on the claim is held while the writer has it.
    pods.create(&PostParams::default(), &with_claim("intruder", "sleep 3600", "Always")).await.unwrap();
    let note = eventually(30 * S, "the intruder held", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().filter_map(|e| e.note).find(|n| n.contains("ReadWriteOncePod"))
    })
    .await;
    assert!(note.contains(&writer_uid), "{note}");
    assert!(c.node.containers_named("intruder").await.is_empty(), "the intruder never runs");
    pods.delete("intruder", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "the intruder gone", || async { pods.get_opt("intruder").await.ok()?.is_none().then_some(()) }).await;

    // Deleted: its mount goes; a new pod on the same claim reads the data.
    pods.delete("writer", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "the writer gone", || async { pods.get_opt("writer").await.ok()?.is_none().then_some(()) }).await;
    eventually(20 * S, "the writer's mount gone", || async { (!mounted_under(&writer_uid)).then_some(()) }).await;
    // The reader mounts the claim read-only with an fsGroup of its own: a
    // read-only local volume is never chowned (kubelet's local plugin), so
    // it starts and the volume keeps the writer's group.
    let mut reader = with_claim("reader", "cat /data/hello", "Never");
    let spec = reader.spec.as_mut().unwrap();
    spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "persistentVolumeClaim": {"claimName": "data", "readOnly": true}})).unwrap()]);
    spec.security_context = Some(serde_json::from_value(serde_json::json!({"fsGroup": 3456})).unwrap());
    pods.create(&PostParams::default(), &reader).await.unwrap();
    eventually(60 * S, "the reader done", || async {
        (pods.get("reader").await.ok()?.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
    let log = pods.logs("reader", &Default::default()).await.unwrap();
    assert_eq!(log.trim(), "written-by-writer");
    assert_eq!(std::fs::metadata(&disk.dir).unwrap().gid(), 2345, "a read-only mount is not given to the reader's fsGroup");
    // Ended, not deleted: it lets go of the volume all the same (kubelet
    // unmounts a terminated pod's volumes), and its logs stay.
    let reader_uid = pods.get("reader").await.unwrap().metadata.uid.unwrap();
    eventually(30 * S, "the ended reader's mount gone", || async { (!mounted_under(&reader_uid)).then_some(()) }).await;
    assert!(pods.get_opt("reader").await.unwrap().is_some());
    assert_eq!(pods.logs("reader", &Default::default()).await.unwrap().trim(), "written-by-writer");
    assert_eq!(std::fs::read_to_string(disk.dir.join("hello")).unwrap().trim(), "written-by-writer", "the data stays on the volume");
    pods.delete("reader", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "the reader gone", || async { pods.get_opt("reader").await.ok()?.is_none().then_some(()) }).await;
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_claim_is_a_device_inside_the_container() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let image = c.dir().join("raw.img");
    let disk = RawDisk::new(image.clone(), 8 << 20);
    let device = disk.device.clone();

    // A pre-bound pair, as an operator makes for a local disk.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "raw"},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "volumeName": "block-1", "storageClassName": "",
                 "resources": {"requests": {"storage": "8Mi"}}}
    }))
    .unwrap();
    let created = claims.create(&PostParams::default(), &claim).await.unwrap();
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "block-1"},
        "spec": {"capacity": {"storage": "8Mi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "storageClassName": "",
                 "local": {"path": device},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "raw", "uid": created.metadata.uid},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
    }))
    .unwrap();
    Api::<PersistentVolume>::all(c.client.clone()).create(&PostParams::default(), &pv).await.unwrap();

    let pods = c.pods("default");
    let mut p = bound_pod("raw-user", &node, "[ -b /dev/xvda ] && printf block-data-ok | dd of=/dev/xvda conv=notrunc 2>/dev/null && sync && sleep 3600");
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "raw", "persistentVolumeClaim": {"claimName": "raw"}})).unwrap()]);
    spec.containers[0].volume_devices = Some(vec![serde_json::from_value(serde_json::json!({"name": "raw", "devicePath": "/dev/xvda"})).unwrap()]);
    pods.create(&PostParams::default(), &p).await.unwrap();
    eventually(60 * S, "the pod running with its device", || async {
        (pods.get("raw-user").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let head = eventually(20 * S, "the container's write on the device", || async {
        let mut buf = vec![0u8; 13];
        use std::io::Read;
        std::fs::File::open(&image).ok()?.read_exact(&mut buf).ok()?;
        (buf == b"block-data-ok").then_some(buf)
    })
    .await;
    assert_eq!(head, b"block-data-ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_ephemeral_volume_uses_the_claim_made_for_the_pod() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let dir = c.dir().join("scratch-pv");
    std::fs::create_dir_all(&dir).unwrap();
    local_storage_class(&c).await;
    let pods = c.pods("default");
    let mut p = bound_pod("scratch", &node, "echo from-the-ephemeral-claim > /scratch/out && sleep 3600");
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local", "resources": {"requests": {"storage": "1Mi"}}}}}})).unwrap()]);
    spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "work", "mountPath": "/scratch"})).unwrap()]);
    pods.create(&PostParams::default(), &p).await.unwrap();

    // The control plane made the claim `scratch-work`, owned by the pod; bind it.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let claim = eventually(20 * S, "the ephemeral claim", || async { claims.get_opt("scratch-work").await.ok().flatten() }).await;
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "scratch-pv"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                 "local": {"path": dir.display().to_string()},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "scratch-work", "uid": claim.metadata.uid}}
    }))
    .unwrap();
    Api::<PersistentVolume>::all(c.client.clone()).create(&PostParams::default(), &pv).await.unwrap();
    claims.patch("scratch-work", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"volumeName": "scratch-pv"}}))).await.unwrap();
    let out = eventually(60 * S, "the pod's file on the PV", || async { std::fs::read_to_string(dir.join("out")).ok().filter(|s| !s.is_empty()) }).await;
    assert_eq!(out.trim(), "from-the-ephemeral-claim");
    let vol = c.volume_stats("scratch", "work").await;
    assert_eq!(vol["pvcRef"], serde_json::json!({"name": "scratch-work", "namespace": "default"}), "the claim made for the pod: {vol}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pv_is_mounted_only_where_its_node_affinity_matches_the_node_labels() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    // Two local PVs: one for nodes labelled nodelet.io/test=no, one for
    // nodes with the label this node was given (--node-labels).
    for (name, terms) in [
        ("elsewhere", serde_json::json!([{"matchExpressions": [{"key": "nodelet.io/test", "operator": "In", "values": ["no"]}]}])),
        ("here", serde_json::json!([{"matchExpressions": [{"key": "nodelet.io/test", "operator": "In", "values": ["yes"]}]}])),
    ] {
        let dir = c.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let claim = claims
            .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": name, "resources": {"requests": {"storage": "1Mi"}}}})).unwrap())
            .await
            .unwrap();
        pvs.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "", "local": {"path": dir.display().to_string()},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": terms}},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": name, "uid": claim.metadata.uid}}})).unwrap())
            .await
            .unwrap();
        // The scheduler waits for a pod's claims to be bound (this test binds
        // pods to the node itself): so does the test.
        claim_bound(&claims, name).await;
        let mut p = bound_pod(name, &node, "echo mounted > /v/out && sleep 3600");
        let spec = p.spec.as_mut().unwrap();
        spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "v", "persistentVolumeClaim": {"claimName": name}})).unwrap()]);
        spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "v", "mountPath": "/v"})).unwrap()]);
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    // (Not empty: the shell creates the file before it writes to it.)
    let out = eventually(60 * S, "the pod on the matching PV writing", || async { std::fs::read_to_string(c.dir().join("here/out")).ok().filter(|s| !s.is_empty()) }).await;
    assert_eq!(out.trim(), "mounted");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let note = eventually(30 * S, "FailedMount for the PV of other nodes", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().filter(|e| e.reason.as_deref() == Some("FailedMount")).find_map(|e| e.note.filter(|n| n.contains("elsewhere")))
    })
    .await;
    assert!(note.contains("MountVolume.NodeAffinity check failed for volume \"elsewhere\" : no matching NodeSelectorTerms"), "{note}");
    assert!(c.node.containers_named("elsewhere").await.is_empty() && !c.dir().join("elsewhere/out").exists());
}

fn mount_count(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.contains(needle))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_mounted_claims_and_unmounts_those_of_pods_deleted_meanwhile() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Cluster::start().await;
    let mut agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    for name in ["keep", "gone"] {
        let dir = c.dir().join(format!("pv-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": format!("pv-{name}"), "storageClassName": "",
                     "resources": {"requests": {"storage": "1Mi"}}}
        }))
        .unwrap();
        let created = claims.create(&PostParams::default(), &claim).await.unwrap();
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pv-{name}")},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "", "local": {"path": dir.display().to_string()},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": name, "uid": created.metadata.uid}}
        }))
        .unwrap();
        Api::<PersistentVolume>::all(c.client.clone()).create(&PostParams::default(), &pv).await.unwrap();
        let mut p = bound_pod(name, &node, "echo $$ > /d/pid && sleep 3600");
        let spec = p.spec.as_mut().unwrap();
        spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "persistentVolumeClaim": {"claimName": name}})).unwrap()]);
        spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "mountPath": "/d"})).unwrap()]);
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    for name in ["keep", "gone"] {
        eventually(60 * S, &format!("{name} running"), || async {
            (pods.get(name).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
    let keep_uid = pods.get("keep").await.unwrap().metadata.uid.unwrap();
    let gone_uid = pods.get("gone").await.unwrap().metadata.uid.unwrap();
    let keep_mount = format!("{keep_uid}/volumes/kubernetes.io~local-volume/pv-keep");
    assert_eq!(mount_count(&keep_mount), 1);
    let container = c.node.containers_named("keep").await.into_iter().find(support::is_running).unwrap().id;

    // nodelet dies; meanwhile one pod is deleted for good.
    agent.kill9();
    pods.delete("gone", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    assert_eq!(mount_count(&gone_uid), 1, "nothing unmounts while nodelet is down");
    let _agent = c.nodelet(&[]);
    eventually(60 * S, "the deleted pod's volume unmounted at start", || async { (mount_count(&gone_uid) == 0).then_some(()) }).await;
    eventually(30 * S, "the node Ready again", || async { c.node_ready().await.then_some(()) }).await;
    tokio::time::sleep(3 * S).await;
    assert_eq!(mount_count(&keep_mount), 1, "the kept pod's volume is adopted, not mounted again");
    let still = c.node.containers_named("keep").await.into_iter().find(support::is_running).unwrap().id;
    assert_eq!(still, container, "the kept pod's container ran on undisturbed");
    assert!(std::fs::read_to_string(c.dir().join("pv-keep/pid")).is_ok(), "its data is there");
    // The adopted volume is the new nodelet's to report.
    let vol = c.volume_stats("keep", "d").await;
    assert_eq!(vol["pvcRef"]["name"], "keep", "{vol}");
}

/// CSI through a real driver: the test driver registers through the
/// registration socket directory (a pod waiting for it meanwhile with
/// kubelet's FailedMount), the CSINode object and the Node's annotation and
/// topology label carry it, the attach-detach controller's VolumeAttachment
/// is waited for, the volume (a raw loop device) is staged once (formatted
/// and mounted by the driver, with its stage secret), published for the
/// pod, and unpublished then unstaged when the pod goes; a second pod reads
/// what the first wrote. An ephemeral inline volume is published with its
/// attributes and pod information, and unpublished with its pod. A Block
/// claim reaches its container as a raw device. Both volumes' figures in
/// /stats/summary (and the claim's kubelet_volume_stats_* in /metrics) are
/// the driver's NodeGetVolumeStats answers. With the driver away while
/// its pod is deleted, the volume's record waits for it and is unpublished
/// and unstaged when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csi_driver_registers_stages_and_publishes_and_data_outlives_the_pod() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
    use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, VolumeAttachment};
    const DRIVER: &str = "csi.nodelet.test";
    let c = Cluster::start().await;
    let agent = c.join().await;
    let node = c.node.node_name();
    let ns = "default";
    let disk = RawDisk::new(c.dir().join("csi-disk.img"), 32 << 20);
    let device = disk.device.clone();

    let drivers: Api<CSIDriver> = Api::all(c.client.clone());
    drivers
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": DRIVER},
            "spec": {"attachRequired": true, "podInfoOnMount": true, "fsGroupPolicy": "File",
                     "volumeLifecycleModes": ["Persistent", "Ephemeral"]}})).unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), ns);
    secrets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "csi-stage"}, "stringData": {"password": "s3cret"}})).unwrap())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), ns);
    let claim = claims
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "csi-data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "30Mi"}}, "volumeName": "csi-pv-1"}})).unwrap())
        .await
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(c.client.clone());
    pvs.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "csi-pv-1"},
        "spec": {"capacity": {"storage": "30Mi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": "csi-data", "uid": claim.metadata.uid.clone().unwrap()},
                 "csi": {"driver": DRIVER, "volumeHandle": "vol-1", "fsType": "ext4",
                         "volumeAttributes": {"device": device.clone(), "stageSecretKey": "password"},
                         "nodeStageSecretRef": {"name": "csi-stage", "namespace": ns}}}})).unwrap())
        .await
        .unwrap();

    claim_bound(&claims, "csi-data").await;
    let pods = c.pods(ns);
    let with_claim = |name: &str, command: &str| -> Pod {
        let mut p = bound_pod(name, &node, command);
        let spec = p.spec.as_mut().unwrap();
        spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "persistentVolumeClaim": {"claimName": "csi-data"}})).unwrap()]);
        spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "d", "mountPath": "/data"})).unwrap()]);
        p
    };
    // The driver is not there yet: the pod waits, with kubelet's message.
    pods.create(&PostParams::default(), &with_claim("csi-writer", "echo written-through-csi > /data/hello && sleep 3600")).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), ns);
    let note = eventually(30 * S, "a FailedMount event for the missing driver", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().filter(|e| e.reason.as_deref() == Some("FailedMount")).find_map(|e| e.note.filter(|n| n.contains(DRIVER)))
    })
    .await;
    assert!(note.contains("not found in the list of registered CSI drivers"), "{note}");

    // The driver registers through <root-dir>/plugins_registry.
    let root = c.dir().join("kubelet");
    let driver = support::csi::CsiDriver::start(DRIVER, &root.join("plugins_registry"), &c.dir().join("csi-driver")).await;
    // Its first NodePublishVolume answers OK without mounting anything: the
    // node must not hand the container its own empty directory.
    driver.publish_without_mount_once();
    // And it checks that the node listed each volume in volumesInUse before
    // staging it (the attach-detach controller detaches what is not there).
    driver.check_in_use(c.client.clone(), &node);
    eventually(20 * S, "the registration answered", || async { driver.registration() }).await;
    assert_eq!(driver.registration(), Some((true, String::new())));
    let csinodes: Api<CSINode> = Api::all(c.client.clone());
    let entry = eventually(20 * S, "the driver in the CSINode object", || async {
        csinodes.get(&node).await.ok()?.spec.drivers.into_iter().find(|d| d.name == DRIVER)
    })
    .await;
    assert_eq!(entry.node_id, format!("{DRIVER}-node"));
    assert_eq!(entry.topology_keys, Some(vec![support::csi::TOPOLOGY_KEY.to_string()]));
    assert_eq!(entry.allocatable.and_then(|a| a.count), Some(16));
    let kn = Api::<KubeNode>::all(c.client.clone()).get(&node).await.unwrap();
    let ann = kn.metadata.annotations.unwrap_or_default();
    assert!(ann.get("csi.volume.kubernetes.io/nodeid").is_some_and(|v| v.contains(&format!("{DRIVER}-node"))), "{ann:?}");
    assert_eq!(kn.metadata.labels.unwrap_or_default().get(support::csi::TOPOLOGY_KEY).map(String::as_str), Some("zone-1"));

    eventually(60 * S, "the writer running once the driver is there", || async {
        (pods.get("csi-writer").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let vas: Api<VolumeAttachment> = Api::all(c.client.clone());
    let va = vas.list(&ListParams::default()).await.unwrap().items;
    assert!(va.iter().any(|v| v.spec.node_name == node && v.spec.attacher == DRIVER), "the volume was attached first: {va:?}");
    let unique = format!("kubernetes.io/csi/{DRIVER}^vol-1");
    let nodes = Api::<KubeNode>::all(c.client.clone());
    eventually(30 * S, "the volume in the node's volumesInUse (and the controller's volumesAttached)", || async {
        let st = nodes.get(&node).await.ok()?.status?;
        let in_use = st.volumes_in_use.unwrap_or_default().contains(&unique);
        let attached = st.volumes_attached.unwrap_or_default().iter().any(|v| v.name == unique);
        (in_use && attached).then_some(())
    })
    .await;
    let staging = std::fs::read_dir(root.join("plugins/kubernetes.io/csi").join(DRIVER)).unwrap().flatten().next().unwrap().path().join("globalmount");
    let written = eventually(10 * S, "the file on the staged volume", || async { std::fs::read_to_string(staging.join("hello")).ok().filter(|s| !s.is_empty()) }).await;
    assert_eq!(written.trim(), "written-through-csi");
    assert_eq!(driver.calls(), vec!["NodeStageVolume vol-1", "NodePublishVolume unmounted vol-1", "NodePublishVolume vol-1"]);
    let log = agent.log();
    assert!(log.contains("MountVolume.SetUp failed for volume \"d\" : the driver published volume \"csi-pv-1\" but ") && log.contains("is not a mount point"), "{log}");
    // Each FailedMount message is its own event on the apiserver, as
    // kubelet's recorder keeps them.
    eventually(30 * S, "the FailedMount event naming the unmounted target", || async {
        let list = events.list(&ListParams::default()).await.ok()?.items;
        list.into_iter().find(|e| e.reason.as_deref() == Some("FailedMount") && e.note.as_deref().is_some_and(|n| n.contains("is not a mount point"))).map(|_| ())
    })
    .await;

    // The volume's figures in /stats/summary come from the driver's
    // NodeGetVolumeStats, under the pod's volume name with its claim, and
    // /metrics has kubelet's per-claim gauges.
    let vol = c.volume_stats("csi-writer", "d").await;
    assert_eq!(vol["pvcRef"], serde_json::json!({"name": "csi-data", "namespace": ns}), "{vol}");
    let capacity = vol["capacityBytes"].as_u64().unwrap();
    assert!(capacity > 16 << 20 && capacity <= 32 << 20, "the 32 MiB ext4 volume, not the node's disk: {vol}");
    assert!(vol["usedBytes"].as_u64().unwrap() > 0 && vol["inodesUsed"].as_u64().unwrap() > 0 && vol["inodes"].as_u64().unwrap() > 0, "{vol}");
    assert!(driver.stats_calls().iter().any(|v| v == "vol-1"), "asked the driver: {:?}", driver.stats_calls());
    let metrics = c.node_proxy("/metrics").await;
    let gauge = |name: &str| support::sample(&metrics, &format!("kubelet_volume_stats_{name}{{namespace=\"{ns}\",persistentvolumeclaim=\"csi-data\"}}"));
    assert_eq!(gauge("capacity_bytes"), Some(capacity as f64), "{metrics}");
    assert!(gauge("available_bytes").is_some_and(|a| a > 0.0 && a < capacity as f64));

    // The pod goes: unpublished, then (no other pod uses it) unstaged.
    pods.delete("csi-writer", &DeleteParams::default().grace_period(0)).await.unwrap();
    eventually(60 * S, "unpublished and unstaged", || async { (driver.calls().len() == 5).then_some(()) }).await;
    assert_eq!(driver.calls()[3..], ["NodeUnpublishVolume vol-1", "NodeUnstageVolume vol-1"]);
    assert!(!mounted_under(&device) && !mounted_under("kubernetes.io~csi"), "nothing of the volume stays mounted");
    eventually(30 * S, "the volume out of volumesInUse", || async {
        let st = nodes.get(&node).await.ok()?.status?;
        (!st.volumes_in_use.unwrap_or_default().contains(&unique)).then_some(())
    })
    .await;

    // A second pod reads what the first wrote.
    pods.create(&PostParams::default(), &with_claim("csi-reader", "test \"$(cat /data/hello)\" = written-through-csi && sleep 3600")).await.unwrap();
    eventually(60 * S, "the reader running (it read the file)", || async {
        (pods.get("csi-reader").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;

    // An ephemeral inline volume: published (no staging) with its
    // attributes, unpublished with its pod.
    let mut eph = bound_pod("csi-inline", &node, "test \"$(cat /e/greeting)\" = hello-inline && sleep 3600");
    let spec = eph.spec.as_mut().unwrap();
    spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "e", "csi": {"driver": DRIVER, "volumeAttributes": {"greeting": "hello-inline"}}})).unwrap()]);
    spec.containers[0].volume_mounts = Some(vec![serde_json::from_value(serde_json::json!({"name": "e", "mountPath": "/e"})).unwrap()]);
    pods.create(&PostParams::default(), &eph).await.unwrap();
    eventually(60 * S, "the inline volume's pod running (it read its greeting)", || async {
        (pods.get("csi-inline").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let inline_publish = driver.calls().into_iter().find(|c| c.starts_with("NodePublishVolume csi-")).expect("the inline volume published");
    assert!(!driver.calls().iter().any(|c| c.starts_with("NodeStageVolume csi-")), "an inline volume is not staged");
    pods.delete("csi-inline", &DeleteParams::default().grace_period(0)).await.unwrap();
    let handle = inline_publish.trim_start_matches("NodePublishVolume ").to_string();
    eventually(60 * S, "the inline volume unpublished", || async {
        driver.calls().contains(&format!("NodeUnpublishVolume {handle}")).then_some(())
    })
    .await;

    // A Block claim through the driver: a raw device inside the container,
    // staged and published as kubelet lays block volumes out.
    let raw_disk = RawDisk::new(c.dir().join("csi-raw.img"), 8 << 20);
    let raw_device = raw_disk.device.clone();
    std::fs::write(&raw_device, b"MAGIC-BLOCK").unwrap();
    let blk_claim = claims
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "csi-blk"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "resources": {"requests": {"storage": "8Mi"}}, "volumeName": "csi-blk-1"}})).unwrap())
        .await
        .unwrap();
    pvs.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "csi-blk-1"},
        "spec": {"capacity": {"storage": "8Mi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": "csi-blk", "uid": blk_claim.metadata.uid.clone().unwrap()},
                 "csi": {"driver": DRIVER, "volumeHandle": "vol-blk", "volumeAttributes": {"device": raw_device.clone()}}}})).unwrap())
        .await
        .unwrap();
    let mut raw_pod = bound_pod("csi-raw", &node, "test -b /dev/xvdb && test \"$(head -c 11 /dev/xvdb)\" = MAGIC-BLOCK && sleep 3600");
    let spec = raw_pod.spec.as_mut().unwrap();
    spec.volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "b", "persistentVolumeClaim": {"claimName": "csi-blk"}})).unwrap()]);
    spec.containers[0].volume_devices = Some(vec![serde_json::from_value(serde_json::json!({"name": "b", "devicePath": "/dev/xvdb"})).unwrap()]);
    // Its first NodeStageVolume times out: staged or not, the node does not
    // know, so it keeps the record and stages again.
    driver.time_out_next_block_stage();
    pods.create(&PostParams::default(), &raw_pod).await.unwrap();
    eventually(60 * S, "the raw-device pod running (it read the device)", || async {
        (pods.get("csi-raw").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    assert!(driver.calls().contains(&"NodeStageVolume vol-blk".to_string()) && driver.calls().contains(&"NodePublishVolume vol-blk".to_string()), "{:?}", driver.calls());
    let blk_calls: Vec<String> = driver.calls().into_iter().filter(|c| c.ends_with(" vol-blk")).collect();
    assert_eq!(blk_calls[..2], ["NodeStageVolume timed-out vol-blk", "NodeStageVolume vol-blk"], "a timed-out stage is tried again: {blk_calls:?}");
    assert_eq!(driver.staged_before_in_use(), Vec::<String>::new(), "staged before the Node's volumesInUse listed them");
    let vol = c.volume_stats("csi-raw", "b").await;
    assert_eq!(vol["capacityBytes"].as_u64(), Some(8 << 20), "the block volume's size from the driver: {vol}");
    assert_eq!(vol["pvcRef"]["name"], "csi-blk");
    pods.delete("csi-raw", &DeleteParams::default().grace_period(0)).await.unwrap();
    eventually(60 * S, "the block volume unpublished and unstaged", || async {
        let calls = driver.calls();
        (calls.contains(&"NodeUnpublishVolume vol-blk".to_string()) && calls.contains(&"NodeUnstageVolume vol-blk".to_string())).then_some(())
    })
    .await;
    assert!(!mounted_under("volumeDevices"), "the block volume's publish file is unmounted");

    // A pod that ends (a Job's) lets go of its volume before it is deleted:
    // unpublished, while the reader keeps it staged.
    let count = |call: &str| driver.calls().iter().filter(|c| *c == call).count();
    let unpublished = count("NodeUnpublishVolume vol-1");
    let mut job = with_claim("csi-job", "test \"$(cat /data/hello)\" = written-through-csi");
    job.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    pods.create(&PostParams::default(), &job).await.unwrap();
    eventually(60 * S, "the job's pod Succeeded", || async {
        (pods.get("csi-job").await.ok()?.status?.phase.as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
    let job_uid = pods.get("csi-job").await.unwrap().metadata.uid.unwrap();
    eventually(30 * S, "the ended pod's volume unpublished", || async {
        (count("NodeUnpublishVolume vol-1") == unpublished + 1 && !mounted_under(&job_uid)).then_some(())
    })
    .await;
    assert_eq!(count("NodeUnstageVolume vol-1"), 1, "still staged for the reader: {:?}", driver.calls());
    assert!(pods.get_opt("csi-job").await.unwrap().is_some(), "the pod is still there");
    pods.delete("csi-job", &DeleteParams::default().grace_period(0)).await.unwrap();
    eventually(60 * S, "the job's pod gone", || async { pods.get_opt("csi-job").await.ok()?.is_none().then_some(()) }).await;

    // The reader is deleted while the driver's NodeUnpublishVolume keeps
    // failing for longer than any fixed number of tries would wait (35 s):
    // the pod object stays (the final delete waits until its resources are
    // reclaimed), the volume stays mounted, staged and in volumesInUse (so
    // it is not detached and attached elsewhere), and an event says what is
    // stuck. Once the driver unpublishes, the pod goes and so does the volume.
    let reader_uid = pods.get("csi-reader").await.unwrap().metadata.uid.unwrap();
    let refused_for = 35 * S;
    driver.refuse_unpublish_for(refused_for);
    let t0 = std::time::Instant::now();
    // A graceful delete (grace 0 would remove the object at once, as a
    // real apiserver does): the node makes the final delete.
    pods.delete("csi-reader", &DeleteParams::default().grace_period(1)).await.unwrap();
    let record = root.join("pods").join(&reader_uid).join("volumes/kubernetes.io~csi/csi-pv-1/vol_data.json");
    while t0.elapsed() < refused_for - 3 * S {
        assert!(pods.get_opt("csi-reader").await.unwrap().is_some(), "the pod was deleted after {:?} while its volume is still published", t0.elapsed());
        tokio::time::sleep(S).await;
    }
    assert!(driver.calls().iter().filter(|c| *c == "NodeUnpublishVolume refused vol-1").count() >= 4, "{:?}", driver.calls());
    assert!(record.exists(), "the record stays while the volume is published");
    assert!(mounted_under(&reader_uid) && mounted_under("globalmount"), "still published and staged");
    let st = nodes.get(&node).await.unwrap().status.unwrap();
    assert!(st.volumes_in_use.unwrap_or_default().contains(&unique), "the volume stays in volumesInUse while it is published");
    let stuck = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedUnMount") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("csi-reader"))
        .find_map(|e| e.note)
        .expect("a FailedUnMount event on the pod");
    assert!(stuck.contains("UnmountVolume.TearDown failed for volume \"csi-pv-1\"") && stuck.contains("target is busy"), "{stuck}");
    eventually(120 * S, "the reader gone from the API once its volume is unpublished and unstaged", || async {
        pods.get_opt("csi-reader").await.ok()?.is_none().then_some(())
    })
    .await;
    let calls = driver.calls();
    assert_eq!(calls[calls.len() - 2..], ["NodeUnpublishVolume vol-1", "NodeUnstageVolume vol-1"], "{calls:?}");

    // A stage with no publish (the node stopped between the two): kubelet's
    // layout on disk and the driver's mount, as a previous run left them.
    // Housekeeping unstages it through the driver and removes the record.
    let mut layout = nodelet::node::NodeContext::for_tests(&node);
    layout.root_dir = root.clone();
    let staging = nodelet::volumes::csi::staging_path(&layout, DRIVER, "vol-1").unwrap();
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(
        staging.parent().unwrap().join("vol_data.json"),
        serde_json::json!({"driverName": DRIVER, "volumeHandle": "vol-1", "specVolID": "csi-pv-1", "volumeLifecycleMode": "Persistent", "nodeName": node, "attachmentID": ""}).to_string(),
    )
    .unwrap();
    driver.stage_directly("vol-1", &staging, &device).await;
    assert!(mounted_under("globalmount"));
    eventually(90 * S, "the stage no pod publishes undone by housekeeping", || async {
        (driver.calls().last().map(String::as_str) == Some("NodeUnstageVolume vol-1") && !mounted_under("globalmount") && !staging.parent().unwrap().exists()).then_some(())
    })
    .await;
    eventually(10 * S, "nothing mounted, the record gone", || async { (!mounted_under("globalmount") && !record.exists()).then_some(()) }).await;
}

/// In-place pod resize (upstream's "[sig-node] Pod InPlace Resize Container"
/// cases, GA in 1.35), through the `pods/resize` subresource: a cpu and
/// memory change with the default NotRequired policy reaches the running
/// container's cgroup without a restart; a memory change under
/// `RestartContainer` restarts that container with its new limit; the status
/// reports allocatedResources and resources; a resize beyond the node is
/// Infeasible, one that needs what another pod holds is Deferred until it
/// leaves; and an agent restart keeps the allocation and restarts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_resized_in_place_or_told_why_not() {
    let c = Cluster::start().await;
    let mut agent = c.join().await;
    let pods = c.pods("default");
    let node = c.node.node_name();
    let mut pod = bound_pod("resizable", &node, "sleep 3600");
    let spec = pod.spec.as_mut().unwrap();
    spec.containers[0].resources = Some(serde_json::from_value(serde_json::json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}})).unwrap());
    let mut b = spec.containers[0].clone();
    b.name = "b".into();
    b.resize_policy = Some(vec![serde_json::from_value(serde_json::json!({"resourceName": "memory", "restartPolicy": "RestartContainer"})).unwrap()]);
    spec.containers.push(b);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(30 * S, "resizable Running", || async {
        (pods.get("resizable").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let container = |name: &'static str| {
        let c = &c;
        async move { c.node.containers_named("resizable").await.into_iter().find(|x| x.metadata.as_ref().unwrap().name == name && is_running(x)).unwrap() }
    };
    let cgroup = |id: String, file: &'static str| {
        let c = &c;
        async move {
            let out = c.node.exec(&id, &["cat", file]).await;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let a0 = container("c").await;
    let b0 = container("b").await;
    assert_eq!(cgroup(a0.id.clone(), "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").await, "20000");
    assert_eq!(cgroup(a0.id.clone(), "/sys/fs/cgroup/memory/memory.limit_in_bytes").await, (64u64 << 20).to_string());

    let resize = |body: serde_json::Value| {
        let pods = &pods;
        async move { pods.patch_subresource("resize", "resizable", &PatchParams::default(), &Patch::Strategic(body)).await }
    };
    resize(serde_json::json!({"spec": {"containers": [
        {"name": "c", "resources": {"requests": {"cpu": "200m", "memory": "32Mi"}, "limits": {"cpu": "400m", "memory": "96Mi"}}},
        {"name": "b", "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}}
    ]}}))
    .await
    .unwrap();
    let status_of = |p: &Pod, name: &str| p.status.as_ref().unwrap().container_statuses.iter().flatten().find(|s| s.name == name).cloned().unwrap();
    let cond = |p: &Pod, t: &str| p.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == t).cloned());
    let done = eventually(30 * S, "the resize applied", || async {
        let p = pods.get("resizable").await.ok()?;
        let a = status_of(&p, "c");
        let b = status_of(&p, "b");
        let applied = a.resources.as_ref()?.limits.as_ref()?.get("cpu")?.0 == "400m" && b.restart_count == 1 && b.state.as_ref()?.running.is_some();
        (applied && cond(&p, "PodResizeInProgress").is_none()).then_some(p)
    })
    .await;
    let a = status_of(&done, "c");
    assert_eq!(a.restart_count, 0, "NotRequired: resized in place");
    assert_eq!(a.allocated_resources.as_ref().unwrap()["cpu"].0, "200m");
    assert_eq!(a.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "96Mi");
    assert!(cond(&done, "PodResizePending").is_none());
    let ready = cond(&done, "Ready").unwrap();
    assert!(ready.status == "True" && ready.reason.is_none() && ready.message.is_none(), "no stale reason stays on the server: {ready:?}");
    let a1 = container("c").await;
    assert_eq!(a1.id, a0.id, "the same container");
    assert_eq!(cgroup(a1.id.clone(), "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").await, "40000", "the new CPU limit in its cgroup");
    assert_eq!(cgroup(a1.id.clone(), "/sys/fs/cgroup/memory/memory.limit_in_bytes").await, (96u64 << 20).to_string());
    let b1 = container("b").await;
    assert_ne!(b1.id, b0.id, "RestartContainer: a new container");
    assert_eq!(cgroup(b1.id.clone(), "/sys/fs/cgroup/memory/memory.limit_in_bytes").await, (128u64 << 20).to_string());

    // Beyond what the node has: Infeasible, and nothing changes.
    resize(serde_json::json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1000", "memory": "32Mi"}, "limits": {"cpu": "1000", "memory": "96Mi"}}}]}}))
        .await
        .unwrap();
    let infeasible = eventually(30 * S, "PodResizePending Infeasible", || async { cond(&pods.get("resizable").await.ok()?, "PodResizePending") }).await;
    assert_eq!((infeasible.status.as_str(), infeasible.reason.as_deref()), ("True", Some("Infeasible")));
    assert!(infeasible.message.as_deref().unwrap().starts_with("Node didn't have enough capacity: cpu, requested: 1000100, capacity: "), "{infeasible:?}");
    assert_eq!(cgroup(a1.id.clone(), "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").await, "40000");

    // What another pod holds: Deferred, then done once it leaves.
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let capacity = nodelet::resources::milli(&nodes.get(&node).await.unwrap().status.unwrap().allocatable.unwrap()["cpu"]).unwrap();
    let mut filler = bound_pod("filler", &node, "sleep 3600");
    filler.spec.as_mut().unwrap().containers[0].resources =
        Some(serde_json::from_value(serde_json::json!({"requests": {"cpu": format!("{}m", capacity / 2)}})).unwrap());
    pods.create(&PostParams::default(), &filler).await.unwrap();
    eventually(30 * S, "filler Running", || async { (pods.get("filler").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(()) }).await;
    let half = format!("{}m", capacity / 2);
    resize(serde_json::json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": half, "memory": "32Mi"}, "limits": {"cpu": "1000", "memory": "96Mi"}}}]}}))
        .await
        .unwrap();
    let deferred = eventually(30 * S, "PodResizePending Deferred", || async {
        cond(&pods.get("resizable").await.ok()?, "PodResizePending").filter(|c| c.reason.as_deref() == Some("Deferred"))
    })
    .await;
    assert!(deferred.message.as_deref().unwrap().starts_with("Node didn't have enough resource: cpu, requested: "), "{deferred:?}");
    pods.delete("filler", &DeleteParams::default()).await.unwrap();
    let p = eventually(60 * S, "the deferred resize applied", || async {
        let p = pods.get("resizable").await.ok()?;
        let cpu = status_of(&p, "c").allocated_resources?.get("cpu")?.0.clone();
        (cpu == half && cond(&p, "PodResizePending").is_none() && cond(&p, "PodResizeInProgress").is_none()).then_some(p)
    })
    .await;
    assert_eq!(status_of(&p, "c").restart_count, 0);
    assert_eq!(cgroup(a1.id.clone(), "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").await, "100000000", "1000 cores of quota");

    // An agent restart keeps the allocation and restarts nothing.
    agent.kill9();
    let _agent = c.nodelet(&[]);
    tokio::time::sleep(5 * S).await;
    let p = pods.get("resizable").await.unwrap();
    assert_eq!(status_of(&p, "c").allocated_resources.unwrap()["cpu"].0, half);
    assert_eq!((status_of(&p, "c").restart_count, status_of(&p, "b").restart_count), (0, 1), "nothing restarted");
    assert_eq!(container("c").await.id, a1.id);
}

/// One HTTP GET from the node's network namespace (as a host process would
/// reach a ClusterIP): the body.
fn node_http_get(netns: &str, to: std::net::SocketAddr) -> Result<String, String> {
    use std::io::{Read, Write};
    support::in_netns(netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read {to}: {e}"))?;
        Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default())
    })
}

/// The apiserver away for five minutes (NODELET_OUTAGE_SECS shortens it
/// when run by hand) with 30 pods and a Service through the proxy; a third
/// of the way in the agent is killed (-9) and containerd restarted, and a
/// new agent starts while the apiserver is still away. No container
/// restarts, the Service answers all along, the node is Ready again within
/// 40 s of the apiserver's return, a new pod starts, and the agents log a
/// handful of warnings for the whole outage, not one per retry. The control
/// plane is down with the apiserver: its taint-eviction controller does
/// nothing meanwhile (the lifecycle controller still marks the node
/// Unknown, as kube-controller-manager does on its return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_minutes_without_the_apiserver_disturb_nothing() {
    let outage = Duration::from_secs(std::env::var("NODELET_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300));
    let mut c = Cluster::start().await;
    c.api.set_taint_eviction(false);
    let node = c.node.node_name();
    let proxy = c.proxy_config("nftables", &node, "");
    let mut agent = c.join_with(&["--proxy-config", proxy.to_str().unwrap()]).await;
    let pods = c.pods("default");
    const N: usize = 50;
    for i in 0..N {
        let serve = format!("mkdir -p /www; echo p{i} > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait");
        pods.create(&PostParams::default(), &bound_pod(&format!("p{i}"), &node, &serve)).await.unwrap();
    }
    let pods = &pods;
    let running = |name: String| async move { pods.get(&name).await.ok().and_then(|p| p.status).is_some_and(|s| s.phase.as_deref() == Some("Running")) };
    eventually(240 * S, "every pod Running", || async {
        for i in 0..N {
            if !running(format!("p{i}")).await {
                return None;
            }
        }
        Some(())
    })
    .await;
    // A node routes cluster IPs somewhere (its default route) before the
    // OUTPUT chain rewrites them; this namespace has no default route.
    let routed = std::process::Command::new("ip").args(["-n", &c.node.netns, "route", "add", "10.96.0.0/12", "dev", "nlt0"]).status().unwrap();
    assert!(routed.success());
    // Ten Services, web-k on 10.96.0.(50+k) to pod p(5k).
    const SERVICES: usize = 10;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.client.clone(), "default");
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let mut vips = Vec::new();
    for k in 0..SERVICES {
        let ip = pods.get(&format!("p{}", 5 * k)).await.unwrap().status.unwrap().pod_ip.unwrap();
        let svc = serde_json::json!({"metadata": {"name": format!("web-{k}")}, "spec": {"clusterIP": format!("10.96.0.{}", 50 + k), "ports": [{"port": 80, "targetPort": 8080}]}});
        services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.unwrap();
        let slice = serde_json::json!({"metadata": {"name": format!("web-{k}-1"), "labels": {"kubernetes.io/service-name": format!("web-{k}")}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": node}], "ports": [{"port": 8080, "protocol": "TCP"}]});
        slices.create(&PostParams::default(), &serde_json::from_value(slice).unwrap()).await.unwrap();
        vips.push((format!("10.96.0.{}:80", 50 + k).parse::<std::net::SocketAddr>().unwrap(), format!("p{}", 5 * k)));
    }
    let netns = c.node.netns.clone();
    // Which Service does not answer as it should (None: all do).
    let all_answer = |netns: &str| vips.iter().find(|(vip, want)| node_http_get(netns, *vip).ok().as_deref() != Some(want.as_str())).map(|(vip, want)| format!("{vip} (to {want}): {:?}", node_http_get(netns, *vip)));
    eventually(60 * S, "every Service answering", || async { all_answer(&netns).is_none().then_some(()) }).await;
    let mut before = std::collections::BTreeMap::new();
    for i in 0..N {
        let name = format!("p{i}");
        let id = c.node.instances_named(&name, "c").await.into_iter().find(is_running).unwrap().id;
        before.insert(name, id);
    }

    let lines_before = agent.log().lines().count();
    c.api.stop();
    let down = std::time::Instant::now();
    let mut checks = 0;
    let mut first: Option<support::Agent> = None;
    while down.elapsed() < outage {
        tokio::time::sleep((outage.saturating_sub(down.elapsed())).min(20 * S)).await;
        assert_eq!(all_answer(&netns), None, "every Service answers {:?} into the outage", down.elapsed());
        checks += 1;
        if first.is_none() && down.elapsed() >= outage / 3 {
            // The agent killed, the runtime restarted, a new agent started:
            // all while the apiserver is away.
            agent.kill9();
            c.node.restart_containerd().await;
            first = Some(std::mem::replace(&mut agent, c.nodelet(&["--proxy-config", proxy.to_str().unwrap()])));
            assert_eq!(all_answer(&netns), None, "every Service answers with the agent killed and containerd restarted");
        }
    }
    let first_log = first.as_ref().map(|a| a.log()).unwrap_or_default();
    let log = agent.log();
    let during: Vec<&str> = first_log.lines().skip(lines_before).chain(log.lines()).collect();
    let loud_lines: Vec<&str> = during.iter().copied().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    let loud = loud_lines.len();
    for l in &loud_lines {
        println!("drill: during the outage: {}", l.chars().take(300).collect::<String>());
    }

    c.api.restart().await;
    let back = std::time::Instant::now();
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let since = k8s_openapi::jiff::Timestamp::now();
    eventually(60 * S, "the node Ready with a fresh heartbeat", || async {
        let n = nodes.get(&node).await.ok()?;
        let ready = n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "True" && ready.last_heartbeat_time.is_some_and(|t| t.0 >= since)).then_some(())
    })
    .await;
    let ready_after = back.elapsed();
    eventually(60 * S, "p0 Ready again in the API", || async {
        let p = pods.get("p0").await.ok()?;
        p.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    pods.create(&PostParams::default(), &bound_pod("after", &node, "sleep 3600")).await.unwrap();
    eventually(60 * S, "a pod created after the outage Running", || async { running("after".into()).await.then_some(()) }).await;
    let new_pod = back.elapsed();
    for (name, id) in &before {
        let now = c.node.instances_named(name, "c").await;
        assert_eq!(now.len(), 1, "{name}: no new container");
        assert!(now[0].id == *id && is_running(&now[0]), "{name}'s container was never restarted");
    }
    println!(
        "drill: apiserver away {:?} (agent killed -9 and containerd restarted a third of the way in); Service checked {checks} times, always answered; {} log lines during the outage, {loud} of them warnings or errors; \
         node Ready {:?} after the apiserver returned; a new pod Running {:?} after it",
        outage,
        during.len(),
        ready_after,
        new_pod
    );
    assert!(ready_after < Duration::from_secs(40), "the node Ready again within 40 s: {ready_after:?}");
    assert!(loud <= 60, "a handful of warnings for the whole outage, not one per retry: {loud}:\n{}", during.join("\n"));
}

/// Readiness decides traffic, end to end as in a real cluster: nodelet posts
/// the pod's Ready condition from its probe, the EndpointSlice controller
/// (the harness's, as kube-controller-manager's) turns it into the slice's
/// `ready`, and nodelet's proxy sends the Service's traffic (to a named
/// target port) only while the pod is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_selector_sends_traffic_only_to_a_ready_pod() {
    let c = Cluster::start().await;
    let node = c.node.node_name();
    let proxy = c.proxy_config("nftables", &node, "");
    let _agent = c.join_with(&["--proxy-config", proxy.to_str().unwrap()]).await;
    let gate = c.dir().join("ready-web");
    std::fs::create_dir_all(&gate).unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.client.clone(), "default");
    let svc = serde_json::json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.80",
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "gate", "hostPath": {"path": gate.to_str().unwrap(), "type": "Directory"}}],
            "containers": [{"name": "c", "image": "nodelet.local/busybox:1",
                "command": ["sh", "-c", "mkdir -p /www; echo web > /www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "volumeMounts": [{"name": "gate", "mountPath": "/gate"}],
                "readinessProbe": {"exec": {"command": ["cat", "/gate/ready"]}, "periodSeconds": 1, "failureThreshold": 1}}]}
    }))
    .unwrap();
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let endpoint = || async {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.ok()?;
        let slice = list.items.into_iter().next()?;
        let e = slice.endpoints.into_iter().next()?;
        let port = slice.ports.into_iter().flatten().next()?.port?;
        Some((e.addresses[0].clone(), port, e.conditions?.ready?))
    };
    let vip: std::net::SocketAddr = "10.96.0.80:80".parse().unwrap();
    let netns = c.node.netns.clone();

    // Running, not ready: in the slice as not ready (its named port
    // resolved), and the Service refuses.
    let (ip, port, ready) = eventually(60 * S, "the pod in the Service's slice", endpoint).await;
    assert_eq!(port, 8080, "targetPort \"http\" is the container's port 8080");
    assert!(!ready, "not ready before its probe passes");
    assert_eq!(Some(ip), pods.get("web").await.unwrap().status.unwrap().pod_ip);
    // A node routes cluster IPs somewhere (its default route) before the
    // OUTPUT chain rewrites them; this namespace has no default route (the
    // pods' bridge exists once a pod runs).
    let routed = std::process::Command::new("ip").args(["-n", &c.node.netns, "route", "add", "10.96.0.0/12", "dev", "nlt0"]).status().unwrap();
    assert!(routed.success());
    tokio::time::sleep(3 * S).await;
    assert!(node_http_get(&netns, vip).is_err(), "a Service without a ready endpoint must not answer");

    // Ready: the probe passes, the node posts Ready, the slice follows, the
    // proxy sends traffic.
    std::fs::write(gate.join("ready"), "ok").unwrap();
    eventually(30 * S, "the Service answering from the ready pod", || async { (node_http_get(&netns, vip).ok()? == "web").then_some(()) }).await;
    assert!(endpoint().await.unwrap().2);

    // Not ready again: out of the Service.
    std::fs::remove_file(gate.join("ready")).unwrap();
    eventually(30 * S, "the slice's endpoint not ready", || async { (!endpoint().await?.2).then_some(()) }).await;
    eventually(20 * S, "the Service refusing again", || async { node_http_get(&netns, vip).is_err().then_some(()) }).await;

    // Deleted: terminating, then gone from the slice with the pod.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "the pod gone from the slice", || async { endpoint().await.is_none().then_some(()) }).await;
}

/// `kubectl drain`'s way of removing pods: the eviction subresource, held
/// back by a PodDisruptionBudget (the harness's disruption controller and
/// eviction check, as kube-apiserver and kube-controller-manager). The
/// evicted pod is stopped and deleted by nodelet; the one the budget
/// protects keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_respects_a_disruption_budget_and_the_evicted_pod_stops() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    for name in ["db-0", "db-1"] {
        let mut p = bound_pod(name, &node, "trap 'exit 0' TERM; while true; do sleep 0.2; done");
        p.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(c.client.clone(), "default");
    budgets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "db"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}}})).unwrap())
        .await
        .unwrap();
    eventually(60 * S, "one disruption allowed with both pods Ready", || async {
        (budgets.get("db").await.ok()?.status?.disruptions_allowed == 1).then_some(())
    })
    .await;
    pods.evict("db-0", &kube::api::EvictParams::default()).await.expect("the first eviction is allowed");
    let refused = pods.evict("db-1", &kube::api::EvictParams::default()).await.expect_err("the second would break the budget");
    assert!(refused.to_string().contains("Cannot evict pod as it would violate the pod's disruption budget"), "{refused}");
    eventually(60 * S, "db-0 stopped by the node and gone", || async { pods.get("db-0").await.is_err().then_some(()) }).await;
    assert!(c.node.containers_named("db-0").await.iter().all(|ctr| !is_running(ctr)), "db-0's container stopped");
    let db1 = pods.get("db-1").await.unwrap();
    assert!(db1.metadata.deletion_timestamp.is_none() && db1.status.unwrap().phase.as_deref() == Some("Running"), "db-1 kept");
    assert!(pods.evict("db-1", &kube::api::EvictParams::default()).await.is_err(), "still the last healthy pod");
}

/// A dual-stack node (`--node-ip 10.99.0.1,fd00:99::1`, pods given an
/// address of each family by the CNI): both InternalIPs on the Node, the
/// pod's `podIPs` from the sandbox (primary and additional IP, the node's
/// primary family first) and `hostIPs`, the downward API with both, and
/// a hostNetwork pod reporting the node's IPs. Its Service proxy serves
/// the IPv6 family too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_reports_both_families_for_itself_and_its_pods() {
    let c = Cluster::start_dual_stack().await;
    let agent = c.join().await;
    let node_name = c.node.node_name();
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let status = nodes.get(&node_name).await.unwrap().status.unwrap();
    let internal: Vec<String> = status.addresses.unwrap().into_iter().filter(|a| a.type_ == "InternalIP").map(|a| a.address).collect();
    assert_eq!(internal, ["10.99.0.1", "fd00:99::1"], "one InternalIP per family, the primary first");

    let pods = c.pods("default");
    let mut p = bound_pod("dual", &node_name, "echo \"ips=$POD_IPS ip=$POD_IP hosts=$HOST_IPS\"; sleep 3600");
    let env = serde_json::json!([
        {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
    ]);
    p.spec.as_mut().unwrap().containers[0].env = Some(serde_json::from_value(env).unwrap());
    pods.create(&PostParams::default(), &p).await.unwrap();
    let ips = eventually(60 * S, "the pod's two IPs", || async {
        let s = pods.get("dual").await.ok()?.status?;
        let ips: Vec<String> = s.pod_ips?.into_iter().map(|i| i.ip).collect();
        (ips.len() == 2).then_some(ips)
    })
    .await;
    assert!(ips[0].starts_with("10.99.0.") && ips[1].starts_with("fd00:99:0:1:"), "IPv4 (the node's primary family) first: {ips:?}");
    let s = pods.get("dual").await.unwrap().status.unwrap();
    assert_eq!(s.pod_ip.as_deref(), Some(ips[0].as_str()));
    let host_ips: Vec<String> = s.host_ips.unwrap().into_iter().map(|h| h.ip).collect();
    assert_eq!(host_ips, ["10.99.0.1", "fd00:99::1"]);
    let line = eventually(30 * S, "the container's downward API line", || async {
        let log = pods.logs("dual", &Default::default()).await.ok()?;
        log.lines().find(|l| l.starts_with("ips=")).map(str::to_string)
    })
    .await;
    assert_eq!(line, format!("ips={},{} ip={} hosts=10.99.0.1,fd00:99::1", ips[0], ips[1], ips[0]));

    let mut h = bound_pod("host", &node_name, "sleep 3600");
    h.spec.as_mut().unwrap().host_network = Some(true);
    pods.create(&PostParams::default(), &h).await.unwrap();
    let host_pod_ips = eventually(60 * S, "the hostNetwork pod's IPs", || async {
        let s = pods.get("host").await.ok()?.status?;
        let ips: Vec<String> = s.pod_ips?.into_iter().map(|i| i.ip).collect();
        (!ips.is_empty()).then_some(ips)
    })
    .await;
    assert_eq!(host_pod_ips, ["10.99.0.1", "fd00:99::1"], "a hostNetwork pod has the node's IPs");
    drop(agent);
}
