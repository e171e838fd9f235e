//! Dynamic Resource Allocation: a DRA driver speaking kubelet's real
//! registration and `v1.DRAPlugin` gRPC APIs (tests/support/dra.rs), the test
//! apiserver serving resource.k8s.io/v1 with the resourceclaim controller and
//! the scheduler's allocation, and containerd 1.7 injecting the CDI devices
//! into real containers.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nodelet::devices::proto::podresources as pr;
use support::cluster::Cluster;
use support::dra::DraDriver;
use support::{eventually, is_running};

const S: Duration = Duration::from_secs(1);
const DRIVER: &str = "gpu.example.com";

fn claim_pod(name: &str, node: &str, claim: serde_json::Value) -> Pod {
    Cluster::sleeper(name, node, serde_json::json!({"claims": [{"name": "gpu"}]}), serde_json::json!({"resourceClaims": [claim]}))
}

/// The claim a pod's template claim became.
async fn claim_of(pods: &Api<Pod>, pod: &str) -> String {
    eventually(30 * S, &format!("{pod}'s claim"), || async {
        let st = pods.get(pod).await.ok()?.status?;
        st.resource_claim_statuses?.into_iter().find(|s| s.name == "gpu")?.resource_claim_name
    })
    .await
}

async fn setup(c: &Cluster) -> DraDriver {
    let classes: Api<DeviceClass> = Api::all(c.client.clone());
    let class: DeviceClass =
        serde_json::from_value(serde_json::json!({"metadata": {"name": DRIVER}, "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"{DRIVER}\"")}}]}})).unwrap();
    classes.create(&PostParams::default(), &class).await.unwrap();
    let templates: Api<ResourceClaimTemplate> = Api::namespaced(c.client.clone(), "default");
    let t: ResourceClaimTemplate = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "one-gpu"},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}}}
    }))
    .unwrap();
    templates.create(&PostParams::default(), &t).await.unwrap();
    let dir = c.node.dir.path();
    let driver = DraDriver::start(DRIVER, &c.node.node_name(), &["gpu-0", "gpu-1"], c.client.clone(), &dir.join("kubelet/plugins_registry"), &dir.join("dra-driver"), &dir.join("cdi")).await;
    let status = eventually(30 * S, "the DRA driver registered", || async { driver.registered() }).await;
    assert!(status.plugin_registered, "{status:?}");
    driver
}

fn calls_of(driver: &DraDriver, what: &str) -> usize {
    driver.calls().iter().filter(|c| *c == what).count()
}

/// A pod with a template claim: the resourceclaim controller makes its
/// claim, the scheduler allocates a device; nodelet prepares it with the
/// driver before anything starts, and containerd injects the driver's CDI
/// device: the device node and env are in the container. The pod-resources
/// API and the checkpoint say so. A claim shared by two pods is prepared
/// once and unprepared only when the last of them is gone. An agent restart
/// keeps the container; a pod force-deleted while the agent is down has its
/// claim unprepared when it is back (and its container removed), its CDI
/// spec and checkpoint entry gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_prepared_injected_shared_and_released() {
    let c = Cluster::start_cdi().await;
    let mut agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let driver = setup(&c).await;

    pods.create(&PostParams::default(), &claim_pod("a", &node, serde_json::json!({"name": "gpu", "resourceClaimTemplateName": "one-gpu"}))).await.unwrap();
    let a = c.running("a").await;
    let claim_a = claim_of(&pods, "a").await;
    assert_eq!(c.sh(&a, "test -c /dev/dra-gpu-0 && echo chardev; echo $DRA_GPU_0").await, format!("chardev\n{claim_a}\n"), "the CDI device injected");
    assert_eq!(calls_of(&driver, &format!("NodePrepareResources {claim_a}")), 1, "{:?}", driver.calls());
    assert_eq!(driver.specs().len(), 1);

    // The pod-resources API: the claim, its device and CDI ID.
    let socket = c.node.dir.path().join("kubelet/pod-resources/kubelet.sock");
    let ch = eventually(20 * S, "the pod-resources socket", || async { nodelet::csi::channel(&socket).await.ok() }).await;
    let mut api = pr::pod_resources_lister_client::PodResourcesListerClient::new(ch);
    let got = api.get(pr::GetPodResourcesRequest { pod_name: "a".into(), pod_namespace: "default".into() }).await.unwrap().into_inner();
    let dynamic = &got.pod_resources.unwrap().containers[0].dynamic_resources;
    assert_eq!(dynamic.len(), 1, "{dynamic:?}");
    assert_eq!(dynamic[0].claim_name, claim_a);
    let r = &dynamic[0].claim_resources[0];
    assert_eq!((r.driver_name.as_str(), r.pool_name.as_str(), r.device_name.as_str()), (DRIVER, node.as_str(), "gpu-0"));
    assert!(r.cdi_devices[0].name.starts_with("dra.example.com/gpu="), "{r:?}");
    // `nodelet explain` says what the container got.
    let explained = c.explain("default/a");
    assert!(explained.contains(&format!("c: ResourceClaim {claim_a}: {DRIVER}/{node}/gpu-0 (CDI dra.example.com/gpu=")), "{explained}");
    // The checkpoint, in kubelet's layout.
    let state = c.node.dir.path().join("kubelet/dra_manager_state");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("DRACheckpoint") && text.contains(&claim_a), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the checkpoint is root's alone");

    // A claim by name, shared by two pods: prepared once, unprepared with the last.
    let claims: Api<ResourceClaim> = Api::namespaced(c.client.clone(), "default");
    let shared: ResourceClaim =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "shared"}, "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}}})).unwrap();
    claims.create(&PostParams::default(), &shared).await.unwrap();
    for p in ["b1", "b2"] {
        pods.create(&PostParams::default(), &claim_pod(p, &node, serde_json::json!({"name": "gpu", "resourceClaimName": "shared"}))).await.unwrap();
    }
    let b1 = c.running("b1").await;
    let b2 = c.running("b2").await;
    for id in [&b1, &b2] {
        assert_eq!(c.sh(id, "test -c /dev/dra-gpu-1 && echo $DRA_GPU_1").await.trim(), "shared", "both pods have the shared device");
    }
    assert_eq!(calls_of(&driver, "NodePrepareResources shared"), 1, "{:?}", driver.calls());
    pods.delete("b1", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "b1 gone", || async { pods.get_opt("b1").await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(calls_of(&driver, "NodeUnprepareResources shared"), 0, "b2 still uses it");
    assert_eq!(c.sh(&b2, "test -c /dev/dra-gpu-1 && echo ok").await.trim(), "ok");
    pods.delete("b2", &DeleteParams::default()).await.unwrap();
    eventually(60 * S, "b2 gone", || async { pods.get_opt("b2").await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(calls_of(&driver, "NodeUnprepareResources shared"), 1, "unprepared with the last pod, before it left: {:?}", driver.calls());

    // A restart: the running container stays; the claim is still known.
    agent.kill9();
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the driver registering again", || async { (calls_of(&driver, &format!("NodePrepareResources {claim_a}")) >= 2).then_some(()) }).await;
    assert_eq!(c.running("a").await, a, "the container was not restarted");
    // Force-deleted while the agent is down: gone from the apiserver at once.
    let mut agent = _agent;
    eventually(30 * S, "a prepared again after the restart", || async { c.explain("default/a").contains("ResourceClaim").then_some(()) }).await;
    agent.kill9();
    pods.delete("a", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    eventually(30 * S, "a gone from the apiserver", || async { pods.get_opt("a").await.ok()?.is_none().then_some(()) }).await;
    assert_eq!(calls_of(&driver, &format!("NodeUnprepareResources {claim_a}")), 0);
    let _agent = c.nodelet(&[]);
    eventually(60 * S, "a's claim unprepared", || async { (calls_of(&driver, &format!("NodeUnprepareResources {claim_a}")) == 1).then_some(()) }).await;
    eventually(60 * S, "a's container removed", || async { c.node.instances_named("a", "c").await.is_empty().then_some(()) }).await;
    assert!(driver.specs().is_empty(), "the driver's CDI specs removed: {:?}", driver.specs());
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(!text.contains(&claim_a), "the checkpoint forgot the claim: {text}");
    // The controller deletes the generated claim once its pod is gone.
    eventually(30 * S, "a's claim deleted", || async { claims.get_opt(&claim_a).await.ok()?.is_none().then_some(()) }).await;
}

/// A driver that fails to prepare holds the pod before anything starts,
/// with a FailedPrepareDynamicResources event in the driver's words; once
/// it works the pod starts. A driver that is gone when the pod is deleted
/// keeps the pod in its deletion (its claim cannot be unprepared); when it
/// comes back, the claim is unprepared and the pod goes.
///
/// The node's ResourceSlices: one a driver left before the agent started is
/// deleted at start (no driver serves it yet); a driver gone for the wiping
/// delay has its slice deleted, and publishes it again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_missing_driver_holds_the_pod() {
    let c = Cluster::start_cdi().await;
    let node = c.node.node_name();
    let slices: Api<ResourceSlice> = Api::all(c.client.clone());
    let stale: ResourceSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stale"},
        "spec": {"driver": "gone.example.com", "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": [{"name": "x"}]}
    }))
    .unwrap();
    slices.create(&PostParams::default(), &stale).await.unwrap();
    c.node.env.lock().unwrap().push(("NODELET_TEST_DRA_WIPING_DELAY_MS".into(), "3000".into()));
    let _agent = c.join().await;
    eventually(30 * S, "the stale ResourceSlice deleted at start", || async { slices.get_opt("stale").await.ok()?.is_none().then_some(()) }).await;
    let pods = c.pods("default");
    let mut driver = setup(&c).await;
    eventually(30 * S, "the driver's slice published", || async { driver.slice_published().await.then_some(()) }).await;

    driver.fail_prepare(Some("the device is on fire"));
    pods.create(&PostParams::default(), &claim_pod("held", &node, serde_json::json!({"name": "gpu", "resourceClaimTemplateName": "one-gpu"}))).await.unwrap();
    // Each message is its own event (the first may say the claim was not
    // made yet: the pod is bound at creation here, before the resourceclaim
    // controller ran), as kubelet's recorder keeps them; read through the
    // core API too, which serves the same Events.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    eventually(60 * S, "a FailedPrepareDynamicResources event with the driver's words", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedPrepareDynamicResources") && e.note.as_deref().is_some_and(|n| n.contains("the device is on fire"))).map(|_| ())
    })
    .await;
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let listed = core.list(&ListParams::default()).await.unwrap().items;
    assert!(
        listed.iter().any(|e| e.reason.as_deref() == Some("FailedPrepareDynamicResources") && e.involved_object.name.as_deref().is_some_and(|n| n == "held") && e.message.as_deref().is_some_and(|m| m.contains("the device is on fire"))),
        "{listed:?}"
    );
    let explained = eventually(60 * S, "`nodelet explain` naming the driver's error", || async {
        let text = c.explain("default/held");
        text.contains("the device is on fire").then_some(text)
    })
    .await;
    assert!(explained.contains("FailedPrepareDynamicResources") && explained.contains("NodePrepareResources failed for ResourceClaim held-gpu-"), "{explained}");
    assert!(c.node.sandboxes_named("held").await.is_empty(), "nothing of the pod started");
    driver.fail_prepare(None);
    let id = c.running("held").await;
    assert_eq!(c.sh(&id, "test -c /dev/dra-gpu-0 && echo ok").await.trim(), "ok");

    // The driver goes away; the deleted pod waits for it; its slice goes
    // after the wiping delay.
    driver.stop();
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    eventually(30 * S, "the gone driver's slice deleted", || async { (!driver.slice_published().await).then_some(()) }).await;
    tokio::time::sleep(3 * S).await;
    assert!(pods.get_opt("held").await.unwrap().is_some(), "the pod stays while its claim cannot be unprepared");
    assert!(c.node.instances_named("held", "c").await.iter().all(|x| !is_running(x)), "its containers are stopped all the same");
    driver.restart();
    eventually(90 * S, "held gone", || async { pods.get_opt("held").await.ok()?.is_none().then_some(()) }).await;
    eventually(30 * S, "the slice published again", || async { driver.slice_published().await.then_some(()) }).await;
    assert_eq!(driver.calls().iter().filter(|c| c.starts_with("NodeUnprepareResources held-gpu-")).count(), 1, "{:?}", driver.calls());
}
