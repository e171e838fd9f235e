//! A test apiserver: HTTPS with client-certificate and bearer-token
//! authentication, serving the API semantics nodelet relies on (see
//! handlers.rs). It listens on 127.0.0.1 inside a test node's network
//! namespace, so nodelet reaches it as it would a real apiserver and the
//! host's network is untouched; the tests reach it through sockets opened in
//! that namespace. It can be stopped and restarted on the same port, and its
//! history compacted to force 410 Gone.

pub mod authz;
pub mod controllers;
pub mod defaults;
mod events;
pub mod handlers;
pub mod kubelet_proxy;
mod patch;
pub mod pods;
pub mod pki;
mod select;
pub mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

pub use handlers::{Identity, State};
pub use pki::Pair;

/// The bootstrap token the tests use (kubeadm's format: id.secret).
pub const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";

pub struct ApiServer {
    pub state: Arc<State>,
    pub netns: String,
    pub port: u16,
    tls: Arc<rustls::ServerConfig>,
    serving: Option<JoinHandle<()>>,
    controllers: JoinHandle<()>,
    pub admin: Pair,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TCP listener on 127.0.0.1:`port`, created inside network namespace
/// `netns`.
fn listen_in(netns: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    let ns = netns.to_string();
    std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
        super::enter_netns(&ns)?;
        let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| std::io::Error::other("listener thread panicked"))?
}

impl ApiServer {
    pub async fn start(netns: &str) -> ApiServer {
        let ca = pki::Ca::new();
        let server = ca.server();
        let admin = ca.client("admin", &["system:masters"]);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("CA root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(server.cert_pem.as_bytes()).map(|c| c.expect("server cert")).collect();
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).expect("server key");
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .expect("server TLS config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut tokens = HashMap::new();
        let (id, _) = BOOTSTRAP_TOKEN.split_once('.').expect("token format");
        tokens.insert(
            BOOTSTRAP_TOKEN.to_string(),
            // kubeadm's tokens carry its extra group (auth-extra-groups).
            Identity {
                user: format!("system:bootstrap:{id}"),
                groups: vec!["system:bootstrappers".into(), "system:bootstrappers:kubeadm:default-node-token".into(), "system:authenticated".into()],
            },
        );
        let kubelet_client = ca.client(authz::KUBELET_CLIENT, &[]);
        let state = Arc::new(State {
            store: Mutex::new(store::Store::default()),
            ca,
            tokens: Mutex::new(tokens),
            requests: Mutex::new(HashMap::new()),
            cert_lifetime: Mutex::new(Duration::from_secs(86400)),
            auto_approve: Mutex::new(false),
            bookmark_every: Duration::from_secs(1),
            token_expiry: Mutex::new(HashMap::new()),
            token_max_lifetime: Mutex::new(None),
            token_requests: Mutex::new(Vec::new()),
            warm_until: Mutex::new(None),
            denied: Mutex::new(Vec::new()),
            lists: Mutex::new(Vec::new()),
            access_reviews: Mutex::new(Vec::new()),
            lifecycle: Mutex::new(controllers::Lifecycle::default()),
            service_cidrs: Mutex::new(vec!["10.96.0.0/12".parse().unwrap()]),
            netns: netns.to_string(),
            kubelet_client,
        });
        {
            // What kube-controller-manager and the apiserver itself publish:
            // the CA bundle every namespace gets, the `kubernetes` Service,
            // and the ClusterRoleBindings of a new cluster.
            let mut store = state.store.lock().unwrap();
            for b in authz::default_bindings() {
                let name = b["metadata"]["name"].as_str().expect("binding name").to_string();
                store.put("clusterrolebindings.rbac.authorization.k8s.io", "", &name, b);
            }
            // A new cluster's namespaces, with what the ServiceAccount
            // controller and the root CA publisher put in each, and the
            // built-in PriorityClasses.
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                store.put(
                    "namespaces",
                    "",
                    ns,
                    serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "uid": handlers::uid(), "labels": {"kubernetes.io/metadata.name": ns}},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                );
            }
            controllers::namespace_defaults(&mut store, &state.ca.cert_pem);
            for (name, value) in [("system-node-critical", 2_000_001_000), ("system-cluster-critical", 2_000_000_000)] {
                store.put(
                    "priorityclasses.scheduling.k8s.io",
                    "",
                    name,
                    serde_json::json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                        "metadata": {"name": name, "uid": handlers::uid()}, "value": value, "globalDefault": false,
                        "preemptionPolicy": "PreemptLowerPriority", "description": "Used for system critical pods that must not be moved from their current node."}),
                );
            }
            store.put(
                "services",
                "default",
                "kubernetes",
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "kubernetes", "namespace": "default", "uid": "00000000-0000-0000-0000-00000000c0a1"},
                    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}),
            );
        }
        let listener = listen_in(netns, 0).expect("apiserver listener");
        let port = listener.local_addr().expect("local addr").port();
        let controllers = controllers::spawn(state.clone());
        let mut api = ApiServer { state, netns: netns.to_string(), port, tls: Arc::new(tls), serving: None, controllers, admin };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        self.serving = Some(self.accept_on(listener));
    }

    /// Serves the same apiserver in another network namespace too, at
    /// 127.0.0.1 on the same port, so every node of a multi-node cluster
    /// reaches it at the one URL its kubeconfig names (as nodes reach a
    /// control-plane endpoint). Not stopped by `stop`.
    pub fn serve_in(&self, netns: &str) {
        let listener = listen_in(netns, self.port).expect("the apiserver's port in another namespace");
        drop(self.accept_on(listener));
    }

    fn accept_on(&self, listener: std::net::TcpListener) -> JoinHandle<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let state = self.state.clone();
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let state = state.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let who = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| pki::subject(c)).map(
                        |(user, mut groups)| {
                            groups.push("system:authenticated".into());
                            Identity { user, groups }
                        },
                    );
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let who = who.clone();
                        async move { Ok::<_, Infallible>(handlers::handle(state, who, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        })
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stops serving and drops every connection (watches break, as when a
    /// real apiserver goes away); the data stays.
    pub fn stop(&mut self) {
        if let Some(h) = self.serving.take() {
            h.abort();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = listen_in(&self.netns, self.port).expect("re-listen on the same port");
        self.serve(listener);
    }

    /// Compacts the history and drops every connection, so each watch
    /// resumes from an expired resourceVersion and gets 410 Gone.
    pub async fn force_410(&mut self) {
        self.state.store.lock().unwrap().compact();
        self.restart().await;
    }

    /// Restarts as a real apiserver process does: the watch cache is gone
    /// (every watch resumes from an expired resourceVersion and gets 410
    /// Gone) and for `warming` its authorizers have not filled their caches,
    /// so every caller but system:masters gets 403.
    pub async fn restart_cold(&mut self, warming: Duration) {
        self.state.store.lock().unwrap().compact();
        *self.state.warm_until.lock().unwrap() = Some(std::time::Instant::now() + warming);
        self.restart().await;
    }

    /// Runs kube-controller-manager with or without its taint-eviction
    /// controller (`--controllers=*,-taint-eviction-controller`).
    pub fn set_taint_eviction(&self, on: bool) {
        self.state.lifecycle.lock().unwrap().taint_eviction = on;
    }

    /// kube-controller-manager's `--node-monitor-grace-period`.
    pub fn set_node_monitor_grace_period(&self, d: Duration) {
        self.state.lifecycle.lock().unwrap().grace = d;
    }

    /// An object as stored, read directly (also while the apiserver is
    /// stopped): resource as "nodes", "leases.coordination.k8s.io".
    pub fn stored(&self, resource: &str, ns: &str, name: &str) -> Option<serde_json::Value> {
        self.state.store.lock().unwrap().get(resource, ns, name).cloned()
    }

    /// Pods the taint manager evicted ("namespace/name").
    pub fn evicted(&self) -> Vec<String> {
        self.state.lifecycle.lock().unwrap().evicted.clone()
    }

    /// Nodes whose conditions the node lifecycle controller set to Unknown,
    /// once per time it did.
    pub fn marked_unknown(&self) -> Vec<String> {
        self.state.lifecycle.lock().unwrap().marked_unknown.clone()
    }

    /// Requests refused with 403, by users whose name starts with `user`.
    pub fn denied(&self, user: &str) -> Vec<String> {
        self.state.denied.lock().unwrap().iter().filter(|d| d.starts_with(user)).cloned().collect()
    }

    /// When `user` first listed `resource` after `since`, if it did.
    pub fn first_list_since(&self, user: &str, resource: &str, since: std::time::Instant) -> Option<std::time::Instant> {
        self.state.lists.lock().unwrap().iter().find(|(at, u, r)| *at >= since && u == user && r == resource).map(|(at, _, _)| *at)
    }

    /// A client certificate for `user` in `groups` from the cluster CA (as
    /// the seed makes kube-proxy's: CN system:kube-proxy).
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Pair {
        self.state.ca.client(user, groups)
    }

    /// `kubectl create clusterrolebinding NAME --clusterrole=ROLE --user=USER`.
    pub fn bind_user(&self, name: &str, role: &str, user: &str) {
        let b = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": user}]});
        self.state.store.lock().unwrap().put("clusterrolebindings.rbac.authorization.k8s.io", "", name, b);
    }

    /// `kubectl create clusterrolebinding NAME --clusterrole=ROLE --group=GROUP`.
    pub fn bind_group(&self, name: &str, role: &str, group: &str) {
        let b = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "Group", "name": group}]});
        self.state.store.lock().unwrap().put("clusterrolebindings.rbac.authorization.k8s.io", "", name, b);
    }

    /// Requests served for a user so far.
    pub fn requests_by(&self, user: &str) -> u64 {
        self.state.requests.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// Makes the cluster dual-stack (or IPv6-primary): the service CIDRs,
    /// primary first, as `--service-cluster-ip-range`.
    pub fn set_service_cidrs(&self, cidrs: &[&str]) {
        *self.state.service_cidrs.lock().unwrap() = cidrs.iter().map(|c| c.parse().expect("a CIDR")).collect();
    }

    pub fn set_auto_approve(&self, on: bool) {
        *self.state.auto_approve.lock().unwrap() = on;
    }

    /// Caps how long service-account tokens last.
    pub fn set_token_max_lifetime(&self, d: Duration) {
        *self.state.token_max_lifetime.lock().unwrap() = Some(d);
    }

    /// TokenRequests served: (namespace/serviceaccount, audiences, pod name).
    pub fn token_requests(&self) -> Vec<(String, Vec<String>, String)> {
        self.state.token_requests.lock().unwrap().clone()
    }

    pub fn set_cert_lifetime(&self, d: Duration) {
        *self.state.cert_lifetime.lock().unwrap() = d;
    }

    fn ca_b64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.state.ca.cert_pem.as_bytes())
    }

    /// The cluster CA's certificate (PEM): what nodes trust client
    /// certificates with (`authentication.x509.clientCAFile`).
    pub fn ca_pem(&self) -> String {
        self.state.ca.cert_pem.clone()
    }

    /// SubjectAccessReviews asked so far: "user verb resource/subresource".
    pub fn access_reviews(&self) -> Vec<String> {
        self.state.access_reviews.lock().unwrap().clone()
    }

    /// Registers a bearer token for a user (token.csv style).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        let mut g: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        g.push("system:authenticated".into());
        self.state.tokens.lock().unwrap().insert(token.to_string(), Identity { user: user.to_string(), groups: g });
    }

    /// What `kubeadm init` leaves for nodes that join (its phases
    /// bootstrap-token, upload-config and kubelet-start, v1.34): the
    /// cluster-info ConfigMap anonymous discovery reads in kube-public, the
    /// kubeadm-config and kubelet-config ConfigMaps (`kubelet` is the
    /// KubeletConfiguration all nodes get) with the Roles that let the
    /// joining token and the nodes read them, and the ClusterRole with
    /// which the token checks for a Node of the same name.
    pub fn kubeadm_init(&self, kubelet: &str, pod_subnet: &str) {
        use serde_json::json;
        let uid = handlers::uid;
        let mut store = self.state.store.lock().unwrap();
        let cm = |ns: &str, name: &str, data: serde_json::Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "uid": uid()}, "data": data})
        };
        let cluster_info = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: \"\"\n\
             contexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
            self.ca_b64(),
            self.url()
        );
        store.put("configmaps", "kube-public", "cluster-info", cm("kube-public", "cluster-info", json!({"kubeconfig": cluster_info})));
        let cluster_config = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.34.1\ncontrolPlaneEndpoint: {}\n\
             certificatesDir: /etc/kubernetes/pki\nclusterName: kubernetes\nimageRepository: registry.k8s.io\n\
             networking:\n  dnsDomain: cluster.local\n  podSubnet: {pod_subnet}\n  serviceSubnet: 10.96.0.0/12\n",
            self.url().trim_start_matches("https://")
        );
        store.put("configmaps", "kube-system", "kubeadm-config", cm("kube-system", "kubeadm-config", json!({"ClusterConfiguration": cluster_config})));
        store.put("configmaps", "kube-system", "kubelet-config", cm("kube-system", "kubelet-config", json!({"kubelet": kubelet})));
        let rbac = "rbac.authorization.k8s.io";
        let role = |ns: &str, name: &str, resource: &str, names: &[&str]| {
            json!({"apiVersion": format!("{rbac}/v1"), "kind": "Role", "metadata": {"name": name, "namespace": ns, "uid": uid()},
                "rules": [{"apiGroups": [""], "resources": [resource], "resourceNames": names, "verbs": ["get"]}]})
        };
        let binding = |kind: &str, ns: &str, name: &str, role_kind: &str, subjects: serde_json::Value| {
            json!({"apiVersion": format!("{rbac}/v1"), "kind": kind, "metadata": {"name": name, "namespace": ns, "uid": uid()},
                "roleRef": {"apiGroup": rbac, "kind": role_kind, "name": name}, "subjects": subjects})
        };
        let joiners = json!([
            {"apiGroup": rbac, "kind": "Group", "name": "system:bootstrappers:kubeadm:default-node-token"},
            {"apiGroup": rbac, "kind": "Group", "name": "system:nodes"}
        ]);
        for (ns, name, cm_name, subjects) in [
            ("kube-public", "kubeadm:bootstrap-signer-clusterinfo", "cluster-info", json!([{"apiGroup": rbac, "kind": "User", "name": "system:anonymous"}])),
            ("kube-system", "kubeadm:nodes-kubeadm-config", "kubeadm-config", joiners.clone()),
            ("kube-system", "kubeadm:kubelet-config", "kubelet-config", joiners.clone()),
        ] {
            store.put(&format!("roles.{rbac}"), ns, name, role(ns, name, "configmaps", &[cm_name]));
            store.put(&format!("rolebindings.{rbac}"), ns, name, binding("RoleBinding", ns, name, "Role", subjects));
        }
        let get_nodes = json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRole", "metadata": {"name": "kubeadm:get-nodes", "uid": uid()},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]});
        store.put(&format!("clusterroles.{rbac}"), "", "kubeadm:get-nodes", get_nodes);
        let b = binding("ClusterRoleBinding", "", "kubeadm:get-nodes", "ClusterRole", json!([{"apiGroup": rbac, "kind": "Group", "name": "system:bootstrappers:kubeadm:default-node-token"}]));
        store.put(&format!("clusterrolebindings.{rbac}"), "", "kubeadm:get-nodes", b);
    }

    /// A kubeconfig for the bootstrap token, as kubeadm and the seed's
    /// bootstrap.kubeconfig write it.
    pub fn bootstrap_kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             contexts:\n- name: default\n  context: {{cluster: kubernetes, user: kubelet-bootstrap}}\ncurrent-context: default\n\
             users:\n- name: kubelet-bootstrap\n  user:\n    token: {token}\n",
            self.url(),
            self.ca_b64()
        )
    }

    /// A kubeconfig with a client certificate.
    pub fn cert_kubeconfig(&self, pair: &Pair) -> String {
        use base64::Engine;
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             contexts:\n- name: default\n  context: {{cluster: kubernetes, user: u}}\ncurrent-context: default\n\
             users:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            self.url(),
            self.ca_b64(),
            b(&pair.cert_pem),
            b(&pair.key_pem)
        )
    }

    /// A kube client for the tests, as cluster admin, connecting from inside
    /// the node's network namespace.
    pub async fn client(&self) -> kube::Client {
        client_in_netns(&self.cert_kubeconfig(&self.admin), &self.netns).await
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
        self.controllers.abort();
    }
}

/// Opens TCP connections from inside a network namespace.
#[derive(Clone)]
struct NetnsConnector {
    netns: String,
}

impl tower::Service<http::Uri> for NetnsConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let ns = self.netns.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(443);
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own: setns changes the calling thread for good.
            std::thread::spawn(move || {
                let r = super::enter_netns(&ns).and_then(|_| std::net::TcpStream::connect((host.as_str(), port)));
                let _ = tx.send(r);
            });
            let std = rx.await.map_err(|_| std::io::Error::other("connect thread died"))??;
            std.set_nonblocking(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(std)?))
        })
    }
}

/// A kube client from a kubeconfig, with its connections opened inside
/// `netns`.
pub async fn client_in_netns(kubeconfig: &str, netns: &str) -> kube::Client {
    use kube::client::ConfigExt;
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("kube config");
    let tls = config.rustls_client_config().expect("TLS config");
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(NetnsConnector { netns: netns.to_string() });
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().expect("auth layer"))
        .map_err(tower::BoxError::from)
        .service(http);
    kube::Client::new(service, config.default_namespace)
}
