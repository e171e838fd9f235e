//! Pods through the API: 30 pods created at once against the test
//! apiserver, bound to a nodelet node on a private containerd. Prints the
//! time from creation until each pod's Running status is posted (p50/p99),
//! and the API requests nodelet made per pod. Run:
//! `cargo bench --bench api_pods`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use support::Node;
use support::apiserver::{ApiServer, BOOTSTRAP_TOKEN};

const PODS: usize = 30;

fn pod(i: usize, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bench-{i:02}")},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": "nodelet.local/busybox:1", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]}
    }))
    .unwrap()
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[(((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize).min(v.len() - 1)]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let node = Node::start().await;
        let api = ApiServer::start(&node.netns).await;
        api.set_auto_approve(true);
        let client = api.client().await;
        let dir = node.dir.path().to_path_buf();
        std::fs::write(dir.join("bootstrap.kubeconfig"), api.bootstrap_kubeconfig(BOOTSTRAP_TOKEN)).unwrap();
        let kc = dir.join("kubelet.kubeconfig").display().to_string();
        let boot = dir.join("bootstrap.kubeconfig").display().to_string();
        let certs = dir.join("pki").display().to_string();
        let _agent = node.nodelet(&["--kubeconfig", &kc, "--bootstrap-kubeconfig", &boot, "--cert-dir", &certs]);
        let nodes: Api<KubeNode> = Api::all(client.clone());
        support::eventually(Duration::from_secs(60), "the node Ready", || async {
            let n = nodes.get(&node.node_name()).await.ok()?;
            n.status?.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let user = format!("system:node:{}", node.node_name());
        let before = api.requests_by(&user);
        let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
        let t0 = Instant::now();
        let creates = (0..PODS).map(|i| {
            let pods = pods.clone();
            let p = pod(i, &node.node_name());
            async move { pods.create(&PostParams::default(), &p).await.unwrap() }
        });
        futures::future::join_all(creates).await;
        let mut running: HashMap<String, f64> = HashMap::new();
        let deadline = t0 + Duration::from_secs(180);
        while running.len() < PODS && Instant::now() < deadline {
            let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await else { continue };
            let objs = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => vec![],
            };
            for p in objs {
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    running.entry(p.metadata.name.unwrap_or_default()).or_insert(t0.elapsed().as_secs_f64());
                }
            }
        }
        assert_eq!(running.len(), PODS, "not every pod reached Running");
        let all_at = t0.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let requests = api.requests_by(&user) - before;
        let mut times: Vec<f64> = running.values().copied().collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("api pods: {PODS} pods created at once through the test apiserver, private containerd");
        println!(
            "created -> Running status posted: p50 {:.3} s, p99 {:.3} s, all {:.3} s",
            pct(&times, 50.0),
            pct(&times, 99.0),
            times.last().unwrap()
        );
        println!(
            "nodelet API requests during the run (until 3 s after the last Running): {requests} = {:.1} per pod (includes events, status patches, node status and lease)",
            requests as f64 / PODS as f64
        );
        let _ = all_at;
    });
}
