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
use support::{eventually, is_running};

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

    // What the harness's controllers do with the CSR nodelet used to send
    // (no key encipherment): the approver does not recognise it, and the
    // signer fails it when approved by hand, as a v1.24 control plane does.
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
    // The pod's Ready condition, which the controller took away, is written back.
    eventually(20 * S, "tolerant Ready again in the API", || async { pods.get("tolerant").await.ok().filter(ready).map(|_| ()) }).await;

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
