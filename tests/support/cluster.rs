//! A node joined to the test apiserver: containerd, nodelet and the
//! apiserver, for the tests that need a cluster.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::apiserver::{ApiServer, BOOTSTRAP_TOKEN};
use super::{Agent, Node, eventually};

const S: Duration = Duration::from_secs(1);

/// The node's InternalIP (also the pod bridge's gateway).
pub const NODE_IP: &str = "10.99.0.1";
/// The node's IPv6 address on a dual-stack cluster.
pub const NODE_IP6: &str = "fd00:99::1";

pub struct Cluster {
    pub node: Node,
    pub api: ApiServer,
    pub client: kube::Client,
    /// What nodelet gets as `--node-ip`.
    pub node_ip: String,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_on(Node::start().await, false).await
    }

    /// A dual-stack cluster: service CIDRs of both families, the node
    /// with an address of each (`--node-ip 10.99.0.1,fd00:99::1`), pods
    /// with an IPv4 and an IPv6 address.
    pub async fn start_dual_stack() -> Self {
        Self::start_on(Node::start_dual_stack().await, true).await
    }

    /// A cluster whose node's containerd (1.7) injects CDI devices, for DRA.
    pub async fn start_cdi() -> Self {
        Self::start_on(Node::start_cdi().await, false).await
    }

    async fn start_on(node: Node, dual_stack: bool) -> Self {
        // The node's own address (its InternalIP) is there from the start,
        // as on a real machine, not only once the pod bridge exists.
        let added = std::process::Command::new("ip").args(["-n", &node.netns, "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).status();
        assert!(added.is_ok_and(|s| s.success()), "giving the node its address");
        let mut node_ip = NODE_IP.to_string();
        if dual_stack {
            let added = std::process::Command::new("ip").args(["-n", &node.netns, "addr", "add", &format!("{NODE_IP6}/128"), "dev", "lo", "nodad"]).status();
            assert!(added.is_ok_and(|s| s.success()), "giving the node its IPv6 address");
            node_ip = format!("{NODE_IP},{NODE_IP6}");
        }
        let api = ApiServer::start(&node.netns).await;
        if dual_stack {
            api.set_service_cidrs(&["10.96.0.0/12", "fd00:10:96::/112"]);
        }
        let client = api.client().await;
        Self { node, api, client, node_ip }
    }

    /// A KubeProxyConfiguration in `mode` for `node`, with `extra` lines
    /// (each ending in a newline), watching with kube-proxy's own identity as
    /// the seed deploys it: a client certificate for system:kube-proxy, which
    /// a stock cluster binds to system:node-proxier (the node identity may
    /// not read EndpointSlices).
    pub fn proxy_config(&self, mode: &str, node: &str, extra: &str) -> PathBuf {
        self.proxy_config_in(&self.node, mode, node, extra)
    }

    /// [`Cluster::proxy_config`], written in `on`'s directory.
    pub fn proxy_config_in(&self, on: &Node, mode: &str, node: &str, extra: &str) -> PathBuf {
        let dir = on.dir.path();
        let kubeconfig = dir.join("kube-proxy.kubeconfig");
        std::fs::write(&kubeconfig, self.api.cert_kubeconfig(&self.api.client_cert("system:kube-proxy", &["k8s"]))).unwrap();
        let config = dir.join("kube-proxy.yaml");
        std::fs::write(
            &config,
            format!(
                "kind: KubeProxyConfiguration\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nmode: {mode}\n{extra}hostnameOverride: {node}\n\
                 clientConnection:\n  kubeconfig: {}\n",
                kubeconfig.display()
            ),
        )
        .unwrap();
        config
    }

    pub fn dir(&self) -> PathBuf {
        self.node.dir.path().to_path_buf()
    }

    /// nodelet joining with the bootstrap token.
    pub fn nodelet(&self, extra: &[&str]) -> Agent {
        self.nodelet_on(&self.node, &self.node_ip, extra)
    }

    /// Another node of this cluster: its own containerd, directory and
    /// network namespace, where the same apiserver is served too.
    pub async fn add_node(&self) -> Node {
        let node = Node::start().await;
        self.api.serve_in(&node.netns);
        node
    }

    /// nodelet on `node` (this cluster's or an added one) joining with the
    /// bootstrap token, with `node_ip` as its `--node-ip`.
    pub fn nodelet_on(&self, node: &Node, node_ip: &str, extra: &[&str]) -> Agent {
        let dir = node.dir.path();
        let boot = dir.join("bootstrap.kubeconfig");
        std::fs::write(&boot, self.api.bootstrap_kubeconfig(BOOTSTRAP_TOKEN)).unwrap();
        // The seed's kubelet config names the cluster CA as clientCAFile.
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, self.api.ca_pem()).unwrap();
        let mut args = vec![
            "--kubeconfig".to_string(),
            dir.join("kubelet.kubeconfig").display().to_string(),
            "--bootstrap-kubeconfig".into(),
            boot.display().to_string(),
            "--cert-dir".into(),
            dir.join("pki").display().to_string(),
            "--node-ip".into(),
            node_ip.to_string(),
            "--node-labels".into(),
            "nodelet.io/test=yes".into(),
            "--client-ca-file".into(),
            ca.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        node.nodelet(&argv)
    }

    /// A GET on the node API through the apiserver's node proxy, as
    /// metrics-server and `kubectl get --raw` reach it.
    pub async fn node_proxy(&self, path: &str) -> String {
        let uri = format!("/api/v1/nodes/{}/proxy{path}", self.node.node_name());
        self.client.request_text(http::Request::get(uri).body(Vec::new()).unwrap()).await.unwrap()
    }

    /// A pod's volume entry in the node's /stats/summary, once there.
    pub async fn volume_stats(&self, pod: &str, volume: &str) -> serde_json::Value {
        eventually(30 * S, &format!("volume {volume} of pod {pod} in /stats/summary"), || async {
            let summary: serde_json::Value = serde_json::from_str(&self.node_proxy("/stats/summary").await).ok()?;
            let p = summary["pods"].as_array()?.iter().find(|p| p["podRef"]["name"] == pod)?.clone();
            p["volume"].as_array()?.iter().find(|v| v["name"] == volume).cloned()
        })
        .await
    }

    /// A pod bound to `node` with one container `c` sleeping an hour, with
    /// `resources`, and `spec_extra` merged into its spec.
    pub fn sleeper(name: &str, node: &str, resources: serde_json::Value, spec_extra: serde_json::Value) -> Pod {
        let mut pod = serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "nodelet.local/busybox:1", "command": ["sleep", "3600"], "resources": resources}]
            }
        });
        if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), spec_extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(pod).unwrap()
    }

    /// `nodelet explain pod NS/NAME` on this node's agent.
    pub fn explain(&self, pod: &str) -> String {
        let socket = self.node.dir.path().join("kubelet/nodelet/status.sock");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet")).args(["explain", "pod", pod, "--socket"]).arg(&socket).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The running instance of container `c` of an apiserver pod (waits a minute).
    pub async fn running(&self, pod: &str) -> String {
        super::eventually(Duration::from_secs(60), &format!("{pod} running"), || async {
            self.node.instances_named(pod, "c").await.into_iter().find(super::is_running).map(|x| x.id)
        })
        .await
    }

    /// Runs `sh -c script` in a container; its output (it must succeed).
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let r = self.node.exec(id, &["sh", "-c", script]).await;
        assert_eq!(r.exit_code, 0, "`{script}`: {}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).into_owned()
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn csrs(&self) -> Vec<CertificateSigningRequest> {
        Api::<CertificateSigningRequest>::all(self.client.clone()).list(&ListParams::default()).await.unwrap().items
    }

    /// `kubectl certificate approve` (or deny).
    pub async fn decide_csr(&self, name: &str, approve: bool) {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let (t, reason) = if approve { ("Approved", "TestApproved") } else { ("Denied", "TestDenied") };
        let patch = serde_json::json!({"status": {"conditions": [
            {"type": t, "status": "True", "reason": reason, "message": format!("{t} by the test")}
        ]}});
        api.patch_approval(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    /// Bootstraps by approving the first CSR as an operator would.
    pub async fn join(&self) -> Agent {
        self.join_with(&[]).await
    }

    /// Joins with extra nodelet arguments.
    pub async fn join_with(&self, extra: &[&str]) -> Agent {
        let agent = self.nodelet(extra);
        let csr = eventually(20 * S, "the CSR", || async { self.csrs().await.into_iter().next() }).await;
        self.decide_csr(&csr.metadata.name.unwrap(), true).await;
        eventually(30 * S, "the node Ready", || async { self.node_ready().await.then_some(()) }).await;
        agent
    }

    pub async fn node_ready(&self) -> bool {
        let nodes: Api<KubeNode> = Api::all(self.client.clone());
        let Ok(n) = nodes.get(&self.node.node_name()).await else { return false };
        n.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

