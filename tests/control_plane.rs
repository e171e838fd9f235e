//! nodelet against the control plane a real cluster has around the API: the
//! CSR approver and signers with their validation, the node lifecycle
//! controller and taint manager, and the Node authorizer with RBAC (see
//! tests/support/apiserver/controllers.rs and authz.rs). Each of these tests
//! fails against a node agent that only fits the API.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use support::cluster::Cluster;
use support::{eventually, eventually_saw, is_running};

const S: Duration = Duration::from_secs(1);

fn pod(name: &str, node: &str, extra_spec: serde_json::Value) -> Pod {
    let mut spec = serde_json::json!({
        "nodeName": node,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "c", "image": "nodelet.local/busybox:1", "command": ["sleep", "3600"]}]
    });
    if let (Some(m), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        m.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn condition<'a>(csr: &'a CertificateSigningRequest, t: &str) -> Option<&'a k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition> {
    csr.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t)
}

/// The node's own client, from the kubeconfig nodelet wrote.
async fn as_node(c: &Cluster) -> kube::Client {
    let kubeconfig = std::fs::read_to_string(c.dir().join("kubelet.kubeconfig")).unwrap();
    support::apiserver::client_in_netns(&kubeconfig, &c.node.netns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_csr_is_auto_approved_and_signed_by_the_signers_rules() {
    let c = Cluster::start().await;
    c.api.set_auto_approve(true);
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the node Ready with no one approving by hand", || async { c.node_ready().await.then_some(()) }).await;
    let csrs = c.csrs().await;
    assert_eq!(csrs.len(), 1);
    let approved = condition(&csrs[0], "Approved").expect("approved");
    assert_eq!(approved.reason.as_deref(), Some("AutoApproved"));
    assert_eq!(approved.message.as_deref(), Some("Auto approving kubelet client certificate after SubjectAccessReview."));
    assert!(condition(&csrs[0], "Failed").is_none());
    assert!(csrs[0].status.as_ref().unwrap().certificate.is_some());

    // What nodelet sent, field by field, as kubelet sends it: the client
    // signer, kubelet's usages, CN system:node:<name> in O system:nodes, a
    // P-256 key, no SANs; requested with the bootstrap token's identity.
    let spec = &csrs[0].spec;
    assert_eq!(spec.signer_name, "kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(spec.usages.clone().unwrap(), ["digital signature", "key encipherment", "client auth"]);
    assert!(spec.username.as_deref().is_some_and(|u| u.starts_with("system:bootstrap:")), "{:?}", spec.username);
    let pem = String::from_utf8(spec.request.0.clone()).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    assert_eq!(block.label, "CERTIFICATE REQUEST");
    let (_, request) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&block.contents).unwrap();
    let info = &request.certification_request_info;
    let cn: Vec<&str> = info.subject.iter_common_name().filter_map(|a| a.as_str().ok()).collect();
    let o: Vec<&str> = info.subject.iter_organization().filter_map(|a| a.as_str().ok()).collect();
    assert_eq!(cn, [format!("system:node:{}", c.node.node_name())]);
    assert_eq!(o, ["system:nodes"]);
    assert_eq!(info.subject_pki.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1", "an EC key");
    assert!(request.requested_extensions().into_iter().flatten().all(|e| !matches!(e, x509_parser::extensions::ParsedExtension::SubjectAlternativeName(_))), "no SANs in a client CSR");
    // And what it did with the answer: the signed certificate is the one it
    // now uses (its kubeconfig's client certificate, signed by the cluster).
    let kubeconfig = std::fs::read_to_string(c.dir().join("kubelet.kubeconfig")).unwrap();
    assert!(kubeconfig.contains("client-certificate"), "{kubeconfig}");
    let nodes: Api<KubeNode> = Api::all(as_node(&c).await);
    nodes.get(&c.node.node_name()).await.expect("the node's own credentials read its Node");
}

/// The harness's own CSR approver and signers, on requests this test builds
/// (not nodelet's): they must refuse what a real control plane refuses, or
/// the tests of nodelet's joining could pass against a looser one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_the_csr_approver_and_signers_refuse_what_a_real_control_plane_refuses() {
    let c = Cluster::start().await;
    c.api.set_auto_approve(true);
    let _agent = c.nodelet(&[]);
    eventually(30 * S, "the node Ready with no one approving by hand", || async { c.node_ready().await.then_some(()) }).await;

    // A CSR without key encipherment (what nodelet once sent): the approver
    // does not recognise it, and the signer fails it when approved by hand,
    // as a v1.24 control plane does.
    let boot = support::apiserver::client_in_netns(&c.api.bootstrap_kubeconfig(support::apiserver::BOOTSTRAP_TOKEN), &c.node.netns).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:other");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let request = params.serialize_request(&key).unwrap().pem().unwrap();
    let old: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "old-usages"},
        "spec": {"request": base64(&request), "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"]}
    }))
    .unwrap();
    Api::<CertificateSigningRequest>::all(boot).create(&PostParams::default(), &old).await.unwrap();
    tokio::time::sleep(S).await;
    let pending = Api::<CertificateSigningRequest>::all(c.client.clone()).get("old-usages").await.unwrap();
    assert!(condition(&pending, "Approved").is_none(), "the approver does not recognise it");
    c.decide_csr("old-usages", true).await;
    let failed = eventually(10 * S, "the signer's verdict", || async {
        let csr = Api::<CertificateSigningRequest>::all(c.client.clone()).get("old-usages").await.ok()?;
        condition(&csr, "Failed").cloned()
    })
    .await;
    assert_eq!(failed.reason.as_deref(), Some("SignerValidationFailure"));
    assert_eq!(failed.message.as_deref(), Some("usages did not match [client auth digital signature key encipherment]"));

    // The kubelet-serving signer (the node API's certificate): the approver
    // leaves it to a person, the signer wants SANs and kubelet's usages.
    let node_api = Api::<CertificateSigningRequest>::all(as_node(&c).await);
    let node = c.node.node_name();
    let serving = |name: &str, sans: Vec<String>| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        let request = params.serialize_request(&key).unwrap().pem().unwrap();
        serde_json::from_value::<CertificateSigningRequest>(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"request": base64(&request), "signerName": "kubernetes.io/kubelet-serving",
                     "usages": nodelet::cluster::certs::SERVING_USAGES}
        }))
        .unwrap()
    };
    for (name, sans) in [("serving-ok", vec![node.clone(), "10.99.0.1".to_string()]), ("serving-no-san", vec![])] {
        node_api.create(&PostParams::default(), &serving(name, sans)).await.unwrap();
        c.decide_csr(name, true).await;
    }
    let signed = eventually(10 * S, "the serving certificate", || async {
        let csr = Api::<CertificateSigningRequest>::all(c.client.clone()).get("serving-ok").await.ok()?;
        csr.status?.certificate
    })
    .await;
    let pem = String::from_utf8(signed.0).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = p.parse_x509().unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let sans = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
    assert_eq!(sans, 2, "the node's name and address");
    let failed = eventually(10 * S, "the serving CSR without SANs failed", || async {
        let csr = Api::<CertificateSigningRequest>::all(c.client.clone()).get("serving-no-san").await.ok()?;
        condition(&csr, "Failed").cloned()
    })
    .await;
    assert_eq!(failed.message.as_deref(), Some("DNS or IP subjectAltName is required"));
}

/// The harness serves Events as the apiserver does: one storage behind the
/// core API and events.k8s.io/v1 (the note is the message, regarding the
/// involved object), and events.k8s.io/v1's validation (the deprecated
/// fields unset, a note of at most 1024 bytes, only the series changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_events_are_one_storage_for_both_apis_and_validated_as_the_apiserver_does() {
    use k8s_openapi::api::events::v1::Event;
    let c = Cluster::start().await;
    let v1: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let event = |name: &str, note: &str| -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "eventTime": "2026-12-05T10:00:00.000000Z", "type": "Normal", "reason": "Created", "action": "Created", "note": note,
            "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "default", "uid": "u"},
            "reportingController": "kubelet", "reportingInstance": "node-1",
        }))
        .unwrap()
    };
    v1.create(&PostParams::default(), &event("ok", "Created container: app")).await.unwrap();
    let seen = core.get("ok").await.unwrap();
    assert_eq!(seen.message.as_deref(), Some("Created container: app"));
    assert_eq!(seen.involved_object.name.as_deref(), Some("p"));
    assert_eq!(seen.reporting_component.as_deref(), Some("kubelet"));
    let mut old_style = event("old", "x");
    old_style.deprecated_count = Some(3);
    let e = v1.create(&PostParams::default(), &old_style).await.unwrap_err();
    assert!(e.to_string().contains("deprecatedCount") && e.to_string().contains("needs to be unset"), "{e}");
    let e = v1.create(&PostParams::default(), &event("long", &"x".repeat(1025))).await.unwrap_err();
    assert!(e.to_string().contains("note"), "{e}");
    let series = serde_json::json!({"series": {"count": 2, "lastObservedTime": "2026-12-05T10:01:00.000000Z"}});
    v1.patch("ok", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&series)).await.unwrap();
    assert_eq!(core.get("ok").await.unwrap().series.unwrap().count, Some(2));
    let e = v1.patch("ok", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(serde_json::json!({"note": "changed"}))).await.unwrap_err();
    assert!(e.to_string().contains("note") && e.to_string().contains("immutable"), "{e}");
    assert_eq!(v1.get("ok").await.unwrap().note.as_deref(), Some("Created container: app"));
}

fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_long_outage_leaves_the_node_ready_and_its_pods_in_place() {
    let mut c = Cluster::start().await;
    // The lifecycle controller's grace period is 40 s on a real cluster; 20 s
    // here, so the node is surely marked Unknown well inside the outage.
    c.api.set_node_monitor_grace_period(20 * S);
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    // Tolerates the unreachable taint for 60 s: the taint manager evicts it
    // unless the node is Ready again within about 40 s of the return.
    let tolerant = pod(
        "tolerant",
        &node,
        serde_json::json!({"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]}),
    );
    pods.create(&PostParams::default(), &tolerant).await.unwrap();
    let ready = |p: &Pod| {
        p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    eventually(30 * S, "tolerant Ready in the API", || async { pods.get("tolerant").await.ok().filter(ready).map(|_| ()) }).await;
    let before = c.node.instances_named("tolerant", "c").await.into_iter().find(is_running).unwrap();

    // The apiserver goes away for a minute; the control plane sees the node
    // fall silent.
    let stopped = Instant::now();
    c.api.stop();
    eventually(50 * S, "the node marked Unknown during the outage", || async {
        c.api.marked_unknown().contains(&node).then_some(())
    })
    .await;
    // (Read from the store: the apiserver is away for the test too.)
    let tainted = eventually(5 * S, "the unreachable NoExecute taint", || async {
        let n = c.api.stored("nodes", "", &node)?;
        n["spec"]["taints"].as_array()?.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute").then_some(n)
    })
    .await;
    let ready_cond = tainted["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready_cond["status"], "Unknown");
    assert_eq!(ready_cond["message"], "Kubelet stopped posting node status.");
    let marked: Pod = serde_json::from_value(c.api.stored("pods", "default", "tolerant").unwrap()).unwrap();
    assert!(!ready(&marked), "the lifecycle controller marked the pod NotReady");
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    tokio::time::sleep((60 * S).saturating_sub(stopped.elapsed())).await;

    // It comes back as a restarted apiserver does: empty watch cache (410s)
    // and 403s for the first 3 s.
    c.api.restart_cold(3 * S).await;
    let back = Instant::now();
    let answering = back + 3 * S;
    let user = format!("system:node:{node}");

    // The node is Ready again within a status period of the return, and the
    // controller takes its taints away.
    eventually(15 * S, "the node Ready again", || async { c.node_ready().await.then_some(()) }).await;
    let ready_after = back.elapsed();
    eventually(5 * S, "the unreachable taints gone", || async {
        let n = nodes.get(&node).await.ok()?;
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        (!taints.iter().any(|t| t.key.starts_with("node.kubernetes.io/unreachable"))).then_some(())
    })
    .await;
    // The pod watch came back within 5 s of the apiserver answering it.
    let relisted = eventually(10 * S, "the node relisting its pods", || async { c.api.first_list_since(&user, "pods", answering) }).await;
    let watch_back = relisted.saturating_duration_since(answering);
    assert!(watch_back <= 5 * S, "the pod watch came back {watch_back:?} after the apiserver answered again");
    // The pod's Ready condition, which the controller took away, is written
    // back once the node sees the change (the relist), not a period later.
    eventually_saw(20 * S, "tolerant Ready again in the API", || async {
        let p = pods.get("tolerant").await.map_err(|e| format!("get: {e}"))?;
        if ready(&p) {
            return Ok(());
        }
        let conditions = p.status.and_then(|s| s.conditions).unwrap_or_default();
        Err(format!("conditions {:?}", conditions.iter().map(|c| format!("{}={} ({:?})", c.type_, c.status, c.last_transition_time)).collect::<Vec<_>>()))
    })
    .await;

    // Past the toleration: nothing was evicted, nothing restarted.
    tokio::time::sleep((95 * S).saturating_sub(stopped.elapsed())).await;
    assert_eq!(c.api.evicted(), Vec::<String>::new(), "no pod evicted");
    let p = pods.get("tolerant").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_none());
    let now = c.node.instances_named("tolerant", "c").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].id, before.id, "the container was never restarted");
    eprintln!("node Ready {ready_after:?} after the return; pod watch back {watch_back:?} after the apiserver answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_only_the_secrets_its_pods_reference_and_asks_for_no_other() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    for name in ["used", "unused"] {
        let s = serde_json::json!({"metadata": {"name": name}, "data": {"password": "czNjcmV0"}});
        secrets.create(&PostParams::default(), &serde_json::from_value(s).unwrap()).await.unwrap();
    }
    let node = c.node.node_name();
    let env = serde_json::json!({"containers": [{"name": "c", "image": "nodelet.local/busybox:1", "command": ["sleep", "3600"],
        "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "used", "key": "password"}}}]}]});
    c.pods("default").create(&PostParams::default(), &pod("user", &node, env)).await.unwrap();
    let id = eventually(30 * S, "the pod running", || async { c.node.containers_named("user").await.into_iter().find(is_running).map(|s| s.id) }).await;
    let r = c.node.exec(&id, &["sh", "-c", "echo $P"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "s3cret\n", "the referenced secret reached the pod");
    let user = format!("system:node:{node}");
    // (Its proxy, on the node's identity by default, is refused EndpointSlices
    // on a stock cluster: that is the other test's business.)
    let refused: Vec<String> = c.api.denied(&user).into_iter().filter(|d| !d.contains("endpointslices")).collect();
    assert_eq!(refused, Vec::<String>::new(), "nodelet asked for nothing the Node authorizer refuses");

    // The node identity itself: what its pods reference, and nothing else.
    let mine: Api<Secret> = Api::namespaced(as_node(&c).await, "default");
    assert!(mine.get("used").await.is_ok());
    let e = mine.get("unused").await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    assert!(e.to_string().contains("no relationship found between node"), "{e}");
    let e = mine.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    // NodeRestriction: a node writes only its own Node.
    let nodes: Api<KubeNode> = Api::all(as_node(&c).await);
    let other: KubeNode = serde_json::from_value(serde_json::json!({"metadata": {"name": "someone-else"}})).unwrap();
    let e = nodes.create(&PostParams::default(), &other).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_without_node_proxier_says_which_binding_it_needs_and_works_once_bound() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let c = Cluster::start().await;
    let config = c.dir().join("kube-proxy.yaml");
    std::fs::write(&config, "kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nmode: nftables\nclusterCIDR: 10.244.0.0/16\n").unwrap();
    let agent = c.join_with(&["--proxy-config", config.to_str().unwrap()]).await;
    let node = c.node.node_name();
    let user = format!("system:node:{node}");
    let line = eventually(20 * S, "the missing-permission line", || async {
        agent.log().lines().find(|l| l.contains("missing permission") && l.contains("list endpointslices.discovery.k8s.io")).map(str::to_string)
    })
    .await;
    assert!(line.contains("bind ClusterRole system:node-proxier to Group system:nodes"), "{line}");
    assert!(!agent.log().lines().any(|l| l.contains("missing permission") && l.contains("services")), "services are the node's to read");
    assert!(agent.log().contains("the node role has every permission it needs"), "{}", agent.log());
    eventually(20 * S, "the EndpointSlice watch refused", || async {
        c.api.denied(&user).iter().any(|d| d.contains("list endpointslices")).then_some(())
    })
    .await;

    // The binding README names: the proxy's watch gets through and the rules follow.
    c.api.bind_group("nodelet-node-proxier", "system:node-proxier", "system:nodes");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let svc = serde_json::json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.7.7", "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}});
    services.create(&PostParams::default(), &serde_json::from_value(svc).unwrap()).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), "default");
    let slice = serde_json::json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": true}}], "ports": [{"port": 8080, "protocol": "TCP"}]});
    slices.create(&PostParams::default(), &serde_json::from_value(slice).unwrap()).await.unwrap();
    eventually(20 * S, "the Service's rules in the node's nftables", || async {
        let out = std::process::Command::new("ip").args(["netns", "exec", &c.node.netns, "nft", "list", "table", "ip", "nodelet"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.contains("10.96.7.7") && text.contains("10.244.0.9")).then_some(())
    })
    .await;
}

/// The test apiserver defaults pods with code of its own (written from
/// kube-apiserver's defaulters), not nodelet's: nodelet's defaulting of
/// static pods must give what the apiserver gives, on every pod of the
/// table, and both must agree on the QoS class and the pull policy.
#[test]
fn the_harness_defaults_pods_as_the_apiserver_and_nodelet_agrees() {
    use serde_json::json;
    use support::apiserver::defaults;
    // (image, the policy kube-apiserver v1.34 gives it)
    let images = [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        ("registry.example:5000/busybox", "Always"),
        ("registry.example:5000/team/busybox:v1", "IfNotPresent"),
        ("localhost/busybox", "Always"),
        ("busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "IfNotPresent"),
        ("busybox:latest@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "Always"),
        ("busybox:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "IfNotPresent"),
        ("Busybox", "IfNotPresent"),
        ("REGISTRY.example/busybox", "Always"),
    ];
    for (image, want) in images {
        assert_eq!(defaults::pull_policy(image), want, "the harness: {image}");
        assert_eq!(nodelet::pods::manifest::default_pull_policy(image), want, "nodelet: {image}");
    }
    let c = |extra: serde_json::Value| {
        let mut c = json!({"name": "c", "image": "busybox:1"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let probe = json!({"httpGet": {"port": 8080}, "timeoutSeconds": 0});
    let table = [
        json!({"containers": [c(json!({}))]}),
        json!({"restartPolicy": "", "dnsPolicy": "", "containers": [c(json!({"image": "busybox", "imagePullPolicy": "", "terminationMessagePath": ""}))]}),
        json!({"containers": [c(json!({"ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
            "livenessProbe": probe, "readinessProbe": {"grpc": {"port": 9000}, "periodSeconds": 0},
            "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 30},
            "lifecycle": {"preStop": {"httpGet": {"port": 80}}, "postStart": {"exec": {"command": ["true"]}}},
            "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}))]}),
        json!({"hostNetwork": true, "initContainers": [c(json!({"name": "i", "ports": [{"containerPort": 81}]}))],
            "containers": [c(json!({"ports": [{"containerPort": 80}, {"containerPort": 82, "hostPort": 8082}]}))]}),
        // Requests from limits, and the resize policy of what is resizable.
        json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}))]}),
        json!({"containers": [c(json!({"resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}},
            "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]}))]}),
        json!({"initContainers": [c(json!({"name": "i", "resources": {"limits": {"cpu": "1"}}})),
                                  c(json!({"name": "s", "restartPolicy": "Always", "resources": {"requests": {"memory": "10Mi"}}}))],
            "containers": [c(json!({"resources": {"limits": {"ephemeral-storage": "1Gi"}}}))]}),
        json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}})), c(json!({"name": "d", "resources": {"requests": {"cpu": "1"}}}))]}),
        json!({"containers": [c(json!({}))], "ephemeralContainers": [{"name": "e", "image": "busybox",
            "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}),
        // Volumes: a source-less one, the file modes, a hostPath's type, a
        // projected token's lifetime, the downward API's field version.
        json!({"containers": [c(json!({}))], "volumes": [
            {"name": "bare"},
            {"name": "h", "hostPath": {"path": "/var/log"}},
            {"name": "s", "secret": {"secretName": "x"}},
            {"name": "m", "configMap": {"name": "x", "defaultMode": 256}},
            {"name": "d", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}},
                {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]}),
        json!({"terminationGracePeriodSeconds": 0, "enableServiceLinks": false, "securityContext": {"runAsUser": 1000}, "containers": [c(json!({}))]}),
    ];
    for (i, spec) in table.iter().enumerate() {
        let typed: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "namespace": "default"}, "spec": spec})).unwrap();
        // Both start from the same typed pod (k8s-openapi's view of the JSON).
        let mut by_harness = serde_json::to_value(&typed).unwrap();
        defaults::pod(&mut by_harness);
        let mut by_nodelet = typed.clone();
        nodelet::pods::manifest::set_defaults(&mut by_nodelet);
        let by_nodelet = serde_json::to_value(&by_nodelet).unwrap();
        assert_eq!(
            by_nodelet["spec"],
            by_harness["spec"],
            "pod {i}: nodelet's defaults (left) differ from the apiserver's (right)\n{}",
            serde_json::to_string_pretty(spec).unwrap()
        );
        let typed_spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(by_harness["spec"].clone()).unwrap();
        assert_eq!(nodelet::pods::qos::qos_class(&typed_spec).as_str(), defaults::qos(&by_harness["spec"]), "pod {i}: QoS");
    }
    // Expected QoS classes, so that the two cannot agree on a wrong answer.
    let qos = |spec: serde_json::Value| {
        let mut p = json!({"metadata": {"name": "q"}, "spec": spec});
        defaults::pod(&mut p);
        defaults::qos(&p["spec"])
    };
    assert_eq!(qos(json!({"containers": [c(json!({}))]})), "BestEffort");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}))]})), "Guaranteed");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}}))]})), "Burstable");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1"}}}))]})), "Burstable");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"requests": {"ephemeral-storage": "1Gi"}}}))]})), "BestEffort", "only cpu and memory count");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}})), c(json!({"name": "d"}))]})), "Burstable");
    assert_eq!(qos(json!({"containers": [c(json!({"resources": {"limits": {"cpu": "0", "memory": "0"}}}))]})), "BestEffort", "zero is none");
    // Pod-level resources decide the class; nodelet refuses such pods
    // rather than run them with container-level limits only.
    let pod_level = json!({"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}, "containers": [c(json!({}))]});
    assert_eq!(qos(pod_level.clone()), "Guaranteed");
    let mut p = json!({"metadata": {"name": "q"}, "spec": pod_level});
    defaults::pod(&mut p);
    assert_eq!(p["spec"]["resources"]["requests"], json!({"cpu": "1", "memory": "1Gi"}), "pod-level requests from pod-level limits");
    let typed: Pod = serde_json::from_value(p).unwrap();
    assert!(nodelet::pods::manifest::not_yet_supported(&typed).iter().any(|e| e.to_string().contains("spec.resources")));
}

/// Waits until pod `name`'s container runs, as the apiserver has it.
async fn running(pods: &Api<Pod>, name: &str) {
    eventually_saw(60 * S, &format!("pod {name} running"), || async {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = p.status.unwrap_or_default();
        let runs = status.container_statuses.iter().flatten().any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
        if runs {
            return Ok(());
        }
        Err(format!("phase {:?}, reason {:?}, message {:?}", status.phase, status.reason, status.message))
    })
    .await;
}

/// The command line systemd runs for a service made of `units` (the unit
/// and its drop-ins, in order): `Environment=` (a quoted or bare
/// `KEY=value`), `EnvironmentFile=` (read by `read`; `-` for optional;
/// these override `Environment=`), `ExecStart=` (an empty one resets), with
/// `$VAR` split into words and `${VAR}` kept as one, as systemd.exec says.
/// Also the environment the process gets.
fn systemd_exec(units: &[&str], read: &dyn Fn(&str) -> Option<String>) -> (Vec<String>, Vec<(String, String)>) {
    let unquote = |v: &str| v.trim().trim_matches('"').to_string();
    let (mut env, mut files, mut exec) = (Vec::<(String, String)>::new(), Vec::new(), None::<String>);
    for unit in units {
        for line in unit.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            if let Some(v) = line.strip_prefix("Environment=") {
                let (k, v) = unquote(v).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).expect("KEY=value");
                env.retain(|(e, _)| *e != k);
                env.push((k, v));
            } else if let Some(v) = line.strip_prefix("EnvironmentFile=") {
                files.push(v.to_string());
            } else if let Some(v) = line.strip_prefix("ExecStart=") {
                exec = (!v.is_empty()).then(|| v.to_string());
            }
        }
    }
    for f in files {
        let (optional, path) = f.strip_prefix('-').map_or((false, f.as_str()), |p| (true, p));
        let Some(text) = read(path) else {
            assert!(optional, "{path} is missing");
            continue;
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').expect("KEY=value");
            env.retain(|(e, _)| e != k);
            env.push((k.to_string(), unquote(v)));
        }
    }
    let value = |k: &str| env.iter().find(|(e, _)| e == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let mut words = Vec::new();
    for word in exec.expect("an ExecStart").split_whitespace() {
        match word.strip_prefix('$').filter(|v| !v.starts_with('{')) {
            Some(var) => words.extend(value(var).split_whitespace().map(str::to_string)),
            None => {
                let mut w = word.to_string();
                while let Some(start) = w.find("${") {
                    let end = start + w[start..].find('}').expect("${VAR}");
                    w = format!("{}{}{}", &w[..start], value(&w[start + 2..end]), &w[end + 1..]);
                }
                words.push(w);
            }
        }
    }
    (words, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_join_runs_nodelet_in_kubelets_place_and_kube_proxy_keeps_it_standing_by() {
    // `kubeadm join` (v1.34) on a node where the nodelet package is
    // installed, step by step as kubeadm takes them, with kubeadm's own
    // files: its kubelet-config ConfigMap, the drop-in of its package
    // (10-kubeadm.conf), kubeadm-flags.env and instance-config.yaml. The
    // node's absolute paths (/etc/kubernetes, /var/lib/kubelet, /etc/nodelet,
    // /etc/default, /usr/bin) live under `host`; they are the only change.
    let c = Cluster::start().await;
    let repo = support::repo();
    let kubelet_config = std::fs::read_to_string(repo.join("tests/kubeadm/kubelet-config.yaml")).unwrap();
    c.api.kubeadm_init(&kubelet_config, "10.244.0.0/16");
    c.api.set_auto_approve(true);
    let host = c.dir().join("host");
    let on_host = |p: &str| host.join(p.trim_start_matches('/'));
    let rebase = |s: &str| {
        ["/etc/kubernetes", "/var/lib/kubelet", "/etc/nodelet", "/etc/default", "/usr/bin"]
            .iter()
            .fold(s.to_string(), |s, p| s.replace(p, &on_host(p).display().to_string()))
    };
    // What the package installed (tests/package.rs checks the package has it).
    for d in ["usr/bin", "etc/kubernetes/manifests", "etc/nodelet", "var/lib/kubelet/pki", "etc/default"] {
        std::fs::create_dir_all(host.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nodelet"), on_host("/usr/bin/kubelet")).unwrap();
    std::fs::copy(repo.join("manifests/kube-proxy-config.yaml"), on_host("/etc/nodelet/kube-proxy-config.yaml")).unwrap();
    // The cluster's side of the quick start: nodelet's proxy may read
    // EndpointSlices (manifests/nodelet-rbac.yaml), applied as kubectl would.
    let rbac: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(repo.join("manifests/nodelet-rbac.yaml")).unwrap()).unwrap();
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(rbac).unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(c.client.clone()).create(&PostParams::default(), &binding).await.unwrap();

    // Preflight: `kubelet --version`, parsed with kubeadm's pattern, at least
    // kubeadm v1.34's MinimumKubeletVersion (v1.31.0); the kubelet service
    // exists (the package's alias).
    let out = std::process::Command::new(on_host("/usr/bin/kubelet")).arg("--version").output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let re = regex::Regex::new(r"^\s*Kubernetes v((0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-0-9a-zA-Z_\.+]*)?)\s*$").unwrap();
    let caps = re.captures(line.trim()).unwrap_or_else(|| panic!("kubeadm cannot parse {line:?}"));
    let (major, minor): (u32, u32) = (caps[2].parse().unwrap(), caps[3].parse().unwrap());
    assert!((major, minor) >= (1, 31), "{line}");
    assert!(caps.get(5).is_none_or(|pre| !pre.as_str().starts_with('-')), "a pre-release ranks below the release: {line}");

    // Discovery: cluster-info, read anonymously; then, with the token, the
    // cluster's kubeadm-config and kubelet-config, and no Node of this name.
    let cm = |client: kube::Client, ns: &'static str, name: &'static str| async move {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, ns).get(name).await.unwrap().data.unwrap()
    };
    let anonymous = c.api.bootstrap_kubeconfig("").replace("    token: \n", "    {}\n").replace("  user:\n    {}\n", "  user: {}\n");
    let info = cm(support::apiserver::client_in_netns(&anonymous, &c.node.netns).await, "kube-public", "cluster-info").await;
    let discovered: serde_yaml::Value = serde_yaml::from_str(&info["kubeconfig"]).unwrap();
    let cluster = &discovered["clusters"][0]["cluster"];
    let (server, ca_data) = (cluster["server"].as_str().unwrap().to_string(), cluster["certificate-authority-data"].as_str().unwrap().to_string());
    let token = support::apiserver::BOOTSTRAP_TOKEN;
    let bootstrap_conf = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: {server}\n  name: kubernetes\ncontexts:\n\
         - context:\n    cluster: kubernetes\n    user: tls-bootstrap-token-user\n  name: tls-bootstrap-token-user@kubernetes\n\
         current-context: tls-bootstrap-token-user@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\n"
    );
    let as_token = support::apiserver::client_in_netns(&bootstrap_conf, &c.node.netns).await;
    assert!(cm(as_token.clone(), "kube-system", "kubeadm-config").await["ClusterConfiguration"].contains("podSubnet: 10.244.0.0/16"));
    let kubelet = cm(as_token.clone(), "kube-system", "kubelet-config").await.remove("kubelet").unwrap();
    let node_name = c.node.node_name();
    assert!(Api::<KubeNode>::all(as_token).get_opt(&node_name).await.unwrap().is_none());

    // kubelet-start: the bootstrap kubeconfig and the CA, then (kubelet
    // stopped) config.yaml: the cluster's KubeletConfiguration with
    // instance-config.yaml's containerRuntimeEndpoint and the node's patch
    // (kubeadm join --patches, target kubeletconfiguration); then
    // kubeadm-flags.env.
    use base64::Engine;
    std::fs::write(on_host("/etc/kubernetes/bootstrap-kubelet.conf"), &bootstrap_conf).unwrap();
    std::fs::create_dir_all(on_host("/etc/kubernetes/pki")).unwrap();
    std::fs::write(on_host("/etc/kubernetes/pki/ca.crt"), base64::engine::general_purpose::STANDARD.decode(&ca_data).unwrap()).unwrap();
    let instance = std::fs::read_to_string(repo.join("tests/kubeadm/instance-config.yaml")).unwrap().replace("unix:///var/run/containerd/containerd.sock", &c.node.endpoint);
    std::fs::write(on_host("/var/lib/kubelet/instance-config.yaml"), &instance).unwrap();
    let mut config: serde_yaml::Mapping = serde_yaml::from_str(&rebase(&kubelet)).unwrap();
    let patch = format!(
        "containerRuntimeEndpoint: {}\npodLogsDir: {}\ncgroupRoot: {}\nevictionHard: {{memory.available: 100Mi}}\n",
        c.node.endpoint,
        c.node.logs.display(),
        c.node.cgroup_root
    );
    config.extend(serde_yaml::from_str::<serde_yaml::Mapping>(&patch).unwrap());
    std::fs::write(on_host("/var/lib/kubelet/config.yaml"), serde_yaml::to_string(&config).unwrap()).unwrap();
    let flags = format!("KUBELET_KUBEADM_ARGS=\"--hostname-override={node_name} --node-ip={} --pod-infra-container-image=registry.k8s.io/pause:3.10.1\"\n", support::cluster::NODE_IP);
    std::fs::write(on_host("/var/lib/kubelet/kubeadm-flags.env"), flags).unwrap();
    // The operator's own file: only where this node keeps what kubelet keeps
    // under /var/lib/kubelet and /var/log.
    let extra = format!("KUBELET_EXTRA_ARGS=\"--root-dir=/var/lib/kubelet --container-logs-dir={} --v=2\"\n", c.dir().join("containers").display());
    std::fs::write(on_host("/etc/default/kubelet"), extra).unwrap();

    // `systemctl restart kubelet`: the package's unit under its alias with
    // kubeadm's drop-in, as systemd runs it.
    let unit = std::fs::read_to_string(repo.join("systemd/nodelet.service")).unwrap();
    let dropin = std::fs::read_to_string(repo.join("tests/kubeadm/10-kubeadm.conf")).unwrap();
    let start = || {
        let (words, env) = systemd_exec(&[&unit, &dropin], &|p| std::fs::read_to_string(on_host(p)).ok());
        assert_eq!(words[0], "/usr/bin/kubelet", "kubeadm's drop-in runs kubelet: {words:?}");
        let args: Vec<String> = words[1..].iter().map(|w| rebase(w)).collect();
        let env: Vec<(String, std::ffi::OsString)> = env.into_iter().map(|(k, v)| (k, rebase(&v).into())).collect();
        let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())).collect();
        c.node.spawn_agent(&on_host("/usr/bin/kubelet"), args, &env)
    };
    let mut agent = start();
    // kubeadm waits for kubelet's healthz, then for the TLS bootstrap's
    // kubelet.conf, then removes the bootstrap kubeconfig.
    eventually(60 * S, "kubelet's healthz on 127.0.0.1:10248", || async { c.node.get_port(10248, "/healthz").filter(|(s, b)| s.contains("200") && b == "ok") })
        .await;
    let kubelet_conf = eventually(60 * S, "kubelet.conf written by the TLS bootstrap", || async {
        std::fs::read_to_string(on_host("/etc/kubernetes/kubelet.conf")).ok()
    })
    .await;
    // (kubeadm v1.33 and older then annotated the Node with its CRI socket,
    // retrying until the Node is registered; with the node's credentials.)
    let as_node = support::apiserver::client_in_netns(&kubelet_conf, &c.node.netns).await;
    let nodes = Api::<KubeNode>::all(as_node);
    eventually(30 * S, "the Node, read with the node's own credentials", || async { nodes.get(&node_name).await.ok() }).await;
    std::fs::remove_file(on_host("/etc/kubernetes/bootstrap-kubelet.conf")).unwrap();

    // A joined node: Ready, reporting kubelet's version, with nodelet's
    // proxy label; a pod runs; the proxy programs the Services.
    eventually(60 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    let node = Api::<KubeNode>::all(c.client.clone()).get(&node_name).await.unwrap();
    assert_eq!(node.status.unwrap().node_info.unwrap().kubelet_version, nodelet::cluster::node::KUBELET_VERSION);
    assert_eq!(node.metadata.labels.unwrap().get("nodelet.io/service-proxy").map(String::as_str), Some("iptables"));
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod("web", &node_name, serde_json::json!({}))).await.unwrap();
    running(&pods, "web").await;
    // The kubernetes Service's rule, in the node's network namespace.
    let proxied = || {
        let out = std::process::Command::new("ip").args(["netns", "exec", &c.node.netns, "iptables-save"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("default/kubernetes:https")
    };
    eventually(30 * S, "the kubernetes Service in KUBE-SERVICES", || async { proxied().then_some(()) }).await;

    // `systemctl restart kubelet` after the join: no bootstrap kubeconfig
    // now; kubelet.conf is enough, and the pod is left running.
    let container_id = |p: Pod| p.status.and_then(|s| s.container_statuses).and_then(|s| s.into_iter().next()).and_then(|s| s.container_id);
    let before = container_id(pods.get("web").await.unwrap()).expect("web's container");
    drop(agent);
    agent = start();
    eventually(60 * S, "kubelet's healthz after the restart", || async { c.node.get_port(10248, "/healthz").filter(|(s, _)| s.contains("200")) }).await;
    eventually(30 * S, "the node Ready after the restart", || async { c.node_ready().await.then_some(()) }).await;
    assert_eq!(container_id(pods.get("web").await.unwrap()), Some(before), "the restart left the pod's container running");

    // One proxy per node: kubeadm's kube-proxy DaemonSet puts a pod here
    // (labelled k8s-app=kube-proxy, host network). nodelet's proxy stands by
    // before it runs, removing its rules and freeing kube-proxy's ports,
    // and says why; when the pod goes, it takes the node back.
    let kube_proxy: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-proxy-x7k2p", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
        "spec": {"nodeName": node_name, "hostNetwork": true, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
            "priorityClassName": "system-node-critical",
            "containers": [{"name": "kube-proxy", "image": "nodelet.local/busybox:1", "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    let system = c.pods("kube-system");
    system.create(&PostParams::default(), &kube_proxy).await.unwrap();
    eventually(30 * S, "nodelet's rules gone for kube-proxy", || async { (!proxied()).then_some(()) }).await;
    assert!(agent.log().contains("kube-proxy pod kube-system/kube-proxy-x7k2p is bound to this node: nodelet's Service proxy stands by"), "{}", agent.log());
    assert!(c.node.get_port(10256, "/healthz").is_none(), "10256 is free for kube-proxy");
    // `nodelet explain` on the kube-proxy pod says so too.
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["explain", "pod", "kube-system/kube-proxy-x7k2p", "--socket"])
        .arg(on_host("/var/lib/kubelet/nodelet/status.sock"))
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explain.stdout);
    assert!(explained.contains("ServiceProxyStandby") && explained.contains("nodelet's Service proxy stands by"), "{explained}");
    system.delete("kube-proxy-x7k2p", &Default::default()).await.unwrap();
    eventually(60 * S, "nodelet's proxy back once kube-proxy is gone", || async { proxied().then_some(()) }).await;
    assert!(agent.log().contains("kube-proxy is gone from this node: nodelet's Service proxy takes the node over"));

    // A kube-proxy process in the node's network namespace (a binary
    // install's systemd service) is seen too.
    let binary = c.dir().join("kube-proxy");
    std::fs::copy("/bin/sleep", &binary).unwrap();
    let ns = c.node.netns.clone();
    let mut cmd = std::process::Command::new(&binary);
    cmd.arg("600");
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || support::enter_netns(&ns));
    }
    let mut process = cmd.spawn().unwrap();
    eventually(30 * S, "nodelet's rules gone for a kube-proxy process", || async { (!proxied()).then_some(()) }).await;
    assert!(agent.log().contains(&format!("kube-proxy runs on this node (pid {}", process.id())), "{}", agent.log());
    process.kill().unwrap();
    process.wait().unwrap();
    eventually(30 * S, "nodelet's proxy back once the process is gone", || async { proxied().then_some(()) }).await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_start_node_from_the_packaged_files_joins_with_only_the_readmes_steps() {
    // README's "On a node", step by step, with the files the package
    // installs (systemd/, manifests/): the bootstrap files from `nodelet
    // bootstrap-kubeconfig`, the RBAC manifest applied, then the unit as
    // systemd runs it. The node's absolute paths live under `host`; the
    // operator's /etc/default/nodelet adds only this node's address and
    // where its cgroups and logs go (tests never touch the host's).
    let c = Cluster::start().await;
    c.api.set_auto_approve(true);
    let repo = support::repo();
    let host = c.dir().join("host");
    let on_host = |p: &str| host.join(p.trim_start_matches('/'));
    let rebase = |s: &str| {
        ["/etc/kubernetes", "/var/lib/kubelet", "/etc/nodelet", "/etc/default", "/usr/bin", "/var/log", "/run/containerd"]
            .iter()
            .fold(s.to_string(), |s, p| s.replace(p, &on_host(p).display().to_string()))
    };
    // What the package installs.
    for d in ["usr/bin", "etc/kubernetes/manifests", "etc/nodelet", "var/lib/kubelet/pki", "etc/default", "var/log/pods", "var/log/containers", "run/containerd"] {
        std::fs::create_dir_all(host.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nodelet"), on_host("/usr/bin/nodelet")).unwrap();
    for f in ["kubelet-config.yaml", "kube-proxy-config.yaml"] {
        let mut text = rebase(&std::fs::read_to_string(repo.join("manifests").join(f)).unwrap());
        if f == "kubelet-config.yaml" {
            // The one departure from the packaged file: this node's disk is
            // the test machine's, which may be past kubelet's default
            // imagefs.available<15% (DiskPressure refuses every pod).
            assert!(!text.contains("evictionHard"), "the packaged file sets no thresholds of its own");
            text.push_str("\nevictionHard: {memory.available: 100Mi}\n");
        }
        std::fs::write(on_host(&format!("/etc/nodelet/{f}")), text).unwrap();
    }
    let env = std::fs::read_to_string(repo.join("systemd/nodelet.env")).unwrap();
    let node_name = c.node.node_name();
    let env = env.replace(
        "--v=0\"",
        &format!(
            "--v=2 --node-ip {} --hostname-override {node_name} --cgroup-root {} --root-dir /var/lib/kubelet --container-logs-dir /var/log/containers\"",
            support::cluster::NODE_IP,
            c.node.cgroup_root
        ),
    );
    std::fs::write(on_host("/etc/default/nodelet"), env).unwrap();
    // containerd's socket where the packaged config looks for it.
    std::os::unix::fs::symlink(c.node.endpoint.trim_start_matches("unix://"), on_host("/run/containerd/containerd.sock")).unwrap();

    // 1. nodelet bootstrap-kubeconfig --server --ca-file --token.
    let ca = c.dir().join("cluster-ca.crt");
    std::fs::write(&ca, c.api.ca_pem()).unwrap();
    let out = std::process::Command::new(on_host("/usr/bin/nodelet"))
        .args(["bootstrap-kubeconfig", "--server", &c.api.url(), "--token", support::apiserver::BOOTSTRAP_TOKEN, "--ca-file"])
        .arg(&ca)
        .arg("--kubeconfig")
        .arg(on_host("/etc/kubernetes/bootstrap-kubelet.conf"))
        .arg("--ca-out")
        .arg(on_host("/etc/kubernetes/pki/ca.crt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 2. kubectl apply -f manifests/nodelet-rbac.yaml.
    let rbac: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(repo.join("manifests/nodelet-rbac.yaml")).unwrap()).unwrap();
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(rbac).unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(c.client.clone()).create(&PostParams::default(), &binding).await.unwrap();
    // 3. systemctl start nodelet: the packaged unit as systemd runs it.
    let unit = std::fs::read_to_string(repo.join("systemd/nodelet.service")).unwrap();
    let (words, env) = systemd_exec(&[&unit], &|p| std::fs::read_to_string(on_host(p)).ok());
    assert_eq!(words[0], "/usr/bin/nodelet");
    let args: Vec<String> = words[1..].iter().map(|w| rebase(w)).collect();
    let env: Vec<(String, std::ffi::OsString)> = env.into_iter().map(|(k, v)| (k, rebase(&v).into())).collect();
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())).collect();
    let agent = c.node.spawn_agent(&on_host("/usr/bin/nodelet"), args, &env);

    // Joined: Ready, the node API checking clients against the CA the
    // bootstrap command wrote, a pod running, the Services programmed.
    eventually(60 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    assert!(on_host("/etc/kubernetes/kubelet.conf").exists());
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod("web", &node_name, serde_json::json!({}))).await.unwrap();
    running(&pods, "web").await;
    eventually(30 * S, "the kubernetes Service programmed", || async {
        let out = std::process::Command::new("ip").args(["netns", "exec", &c.node.netns, "iptables-save"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).contains("default/kubernetes:https").then_some(())
    })
    .await;
    let log = agent.log();
    assert!(log.contains("the proxy role has every permission it needs"), "the RBAC manifest is enough for the proxy: {log}");
}
