//! Cluster mode against the test apiserver and a real containerd.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use support::Node;
use support::apiserver::ApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_apiserver_serves_lists_and_watches() {
    let node = Node::start().await;
    let api = ApiServer::start(&node.netns).await;
    let client = api.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}], "automountServiceAccountToken": false}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.spec.unwrap().restart_policy.as_deref(), Some("Always"));
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let _ = Duration::from_secs(1);
}
