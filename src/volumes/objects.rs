//! The API objects pods read: ConfigMaps and Secrets (for volumes and
//! env), Services (for service environment variables) and service account
//! tokens (TokenRequest). As kubelet's watch-based managers do, each
//! ConfigMap or Secret a pod references gets a watch of its own
//! (`fieldSelector=metadata.name=<name>`) while some pod uses it; a change
//! is announced so the pods using it refresh their volumes at once.
//! Tokens are cached per pod and renewed at 80 % of their lifetime, or
//! after 24 hours.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::{broadcast, watch};

/// A ConfigMap's or Secret's data, decoded.
pub type Data = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    /// The lower-case name kubelet's messages use.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {message}")]
    Api { what: String, message: String },
}

/// A token for a pod's projected volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
}

impl Token {
    /// When to get a new one: 80 % into its life, or after a day.
    pub fn refresh_at(&self) -> i64 {
        let life = (self.expires_at - self.issued_at).max(0);
        (self.issued_at + life * 8 / 10).min(self.issued_at + 24 * 3600)
    }
}

/// What pods can read from the apiserver.
#[async_trait::async_trait]
pub trait ApiObjects: Send + Sync {
    /// A ConfigMap's or Secret's data (`None`: it does not exist), read
    /// through a watch that stays while `pod_uid` (or another pod) uses it.
    async fn get(&self, key: &ObjectKey, pod_uid: &str) -> Result<Option<Arc<Data>>, ObjectError>;
    /// A token, from the cache unless it is due for renewal.
    async fn token(&self, spec: &TokenSpec) -> Result<Token, ObjectError>;
    /// Every Service, once the first list is in.
    fn services(&self) -> Result<Vec<Arc<Service>>, ObjectError>;
    /// The pod no longer uses anything: its watches and tokens go.
    fn release(&self, pod_uid: &str);
    /// Objects whose data changed.
    fn changes(&self) -> broadcast::Receiver<ObjectKey>;
    /// A PersistentVolumeClaim as it is now (`None`: it does not exist).
    async fn claim(&self, _namespace: &str, _name: &str) -> Result<Option<PersistentVolumeClaim>, ObjectError> {
        Err(ObjectError::Unavailable("persistent volume claims need an apiserver".into()))
    }
    /// A PersistentVolume as it is now.
    async fn persistent_volume(&self, _name: &str) -> Result<Option<PersistentVolume>, ObjectError> {
        Err(ObjectError::Unavailable("persistent volumes need an apiserver".into()))
    }
    /// A CSIDriver object (`None`: the driver has none, and kubelet's
    /// defaults apply).
    async fn csi_driver(&self, _name: &str) -> Result<Option<k8s_openapi::api::storage::v1::CSIDriver>, ObjectError> {
        Err(ObjectError::Unavailable("CSI drivers need an apiserver".into()))
    }
    /// A node.k8s.io RuntimeClass (`None`: there is none of that name).
    async fn runtime_class(&self, _name: &str) -> Result<Option<k8s_openapi::api::node::v1::RuntimeClass>, ObjectError> {
        Err(ObjectError::Unavailable("RuntimeClasses need an apiserver".into()))
    }
    /// The Node's `status.volumesAttached` names (the attach-detach
    /// controller's record).
    async fn node_volumes_attached(&self, _node: &str) -> Result<Vec<String>, ObjectError> {
        Err(ObjectError::Unavailable("the node status needs an apiserver".into()))
    }
    /// A VolumeAttachment as it is now.
    async fn volume_attachment(&self, _name: &str) -> Result<Option<k8s_openapi::api::storage::v1::VolumeAttachment>, ObjectError> {
        Err(ObjectError::Unavailable("volume attachments need an apiserver".into()))
    }
    /// Takes a ReadWriteOncePod claim for `pod_uid`; the UID of the pod
    /// that holds it already, if another does. Freed by `release`.
    fn take_claim(&self, _namespace: &str, _name: &str, _pod_uid: &str) -> Result<(), String> {
        Ok(())
    }
    /// The pod finished: its ReadWriteOncePod claims are free.
    fn release_claims(&self, _pod_uid: &str) {}
}

/// Not yet listed, or listed with this result.
type State = Option<Option<Arc<Data>>>;

struct Watched {
    state: watch::Receiver<State>,
    users: HashSet<String>,
    task: tokio::task::AbortHandle,
}

/// The apiserver-backed implementation.
pub struct KubeObjects {
    client: kube::Client,
    watched: Mutex<HashMap<ObjectKey, Watched>>,
    tokens: Mutex<HashMap<TokenSpec, Token>>,
    services: reflector::Store<Service>,
    services_ready: watch::Receiver<bool>,
    changes: broadcast::Sender<ObjectKey>,
    /// ReadWriteOncePod claims and the pod using each.
    once_pod: Mutex<HashMap<(String, String), String>>,
}

/// How long a first read may take before the pod is told to retry.
const FIRST_READ: Duration = Duration::from_secs(30);

fn config_map_data(cm: &ConfigMap) -> Data {
    let mut d: Data = cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
    d.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    d
}

fn secret_data(s: &Secret) -> Data {
    let mut d: Data = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    // stringData is write-only in the API, but a test or a dry run may see it.
    d.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())));
    d
}

async fn follow<K, F>(api: Api<K>, key: ObjectKey, tx: watch::Sender<State>, changes: broadcast::Sender<ObjectKey>, data: F)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: Fn(&K) -> Data,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let (reader, writer) = reflector::store();
    let mut stream = crate::kubeapi::backed_off(watcher(api, config)).reflect(writer).boxed();
    let mut listed = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(object = %key, error = %e, "watch failed; retrying");
                continue;
            }
        }
        if !listed {
            continue;
        }
        let now: Option<Arc<Data>> = reader.state().first().map(|o| Arc::new(data(o)));
        let mut first = false;
        let changed = tx.send_if_modified(|s| {
            let new = Some(now.clone());
            if *s == new {
                return false;
            }
            first = s.is_none();
            *s = new;
            true
        });
        let changed = changed && !first;
        if changed {
            tracing::debug!(object = %key, "changed");
            let _ = changes.send(key.clone());
        }
    }
}

impl KubeObjects {
    /// Starts the Service watch; ConfigMaps and Secrets are watched as
    /// pods ask for them.
    pub fn start(client: kube::Client) -> Arc<Self> {
        let (reader, writer) = reflector::store();
        let (ready_tx, ready_rx) = watch::channel(false);
        let api: Api<Service> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut stream = crate::kubeapi::backed_off(watcher(api, watcher::Config::default())).reflect(writer).boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(watcher::Event::InitDone) = ev {
                    ready_tx.send_replace(true);
                }
            }
        });
        let (changes, _) = broadcast::channel(256);
        Arc::new(Self {
            client,
            watched: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            services: reader,
            services_ready: ready_rx,
            changes,
            once_pod: Mutex::new(HashMap::new()),
        })
    }

    fn watch(&self, key: &ObjectKey) -> (watch::Sender<State>, tokio::task::AbortHandle) {
        let (tx, _) = watch::channel(None);
        let changes = self.changes.clone();
        let task = match key.kind {
            ObjectKind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
                tokio::spawn(follow(api, key.clone(), tx.clone(), changes, config_map_data))
            }
            ObjectKind::Secret => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.namespace);
                tokio::spawn(follow(api, key.clone(), tx.clone(), changes, secret_data))
            }
        };
        (tx, task.abort_handle())
    }
}

#[async_trait::async_trait]
impl ApiObjects for KubeObjects {
    async fn get(&self, key: &ObjectKey, pod_uid: &str) -> Result<Option<Arc<Data>>, ObjectError> {
        let mut rx = {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            if !watched.contains_key(key) {
                let (tx, task) = self.watch(key);
                watched.insert(key.clone(), Watched { state: tx.subscribe(), users: HashSet::new(), task });
                // The sender lives in the task; keep the receiver here.
                drop(tx);
            }
            let w = watched.get_mut(key).expect("inserted above");
            w.users.insert(pod_uid.to_string());
            w.state.clone()
        };
        let state = tokio::time::timeout(FIRST_READ, rx.wait_for(|s| s.is_some()))
            .await
            .map_err(|_| ObjectError::Unavailable(format!("timed out waiting to read {key}")))?
            .map_err(|_| ObjectError::Unavailable(format!("the watch of {key} stopped")))?
            .clone();
        Ok(state.flatten())
    }

    async fn token(&self, spec: &TokenSpec) -> Result<Token, ObjectError> {
        let now = crate::clock::UnixNanos::now().secs();
        if let Some(t) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(spec)
            && now < t.refresh_at()
        {
            return Ok(t.clone());
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &spec.namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: spec.audience.clone().into_iter().collect(),
                expiration_seconds: Some(spec.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(spec.pod_name.clone()),
                    uid: Some(spec.pod_uid.clone()),
                }),
            },
            ..Default::default()
        };
        let what = format!("requesting a token for serviceaccount {}/{}", spec.namespace, spec.service_account);
        let got = api
            .create_token_request(&spec.service_account, &PostParams::default(), &req)
            .await
            .map_err(|e| ObjectError::Api { what: what.clone(), message: e.to_string() })?;
        let status = got.status.ok_or_else(|| ObjectError::Api { what: what.clone(), message: "no token in the answer".into() })?;
        let expires_at = status.expiration_timestamp.0.as_second();
        let token = Token { token: status.token, issued_at: now, expires_at };
        tracing::debug!(serviceaccount = %format!("{}/{}", spec.namespace, spec.service_account), pod_uid = %spec.pod_uid, expires_at, "service account token issued");
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.clone(), token.clone());
        Ok(token)
    }

    fn services(&self) -> Result<Vec<Arc<Service>>, ObjectError> {
        if !*self.services_ready.borrow() {
            return Err(ObjectError::Unavailable("services have not yet been read at least once, cannot construct envvars".into()));
        }
        Ok(self.services.state())
    }

    fn take_claim(&self, namespace: &str, name: &str, pod_uid: &str) -> Result<(), String> {
        let mut held = self.once_pod.lock().unwrap_or_else(|e| e.into_inner());
        let holder = held.entry((namespace.to_string(), name.to_string())).or_insert_with(|| pod_uid.to_string());
        if holder == pod_uid { Ok(()) } else { Err(holder.clone()) }
    }

    fn release_claims(&self, pod_uid: &str) {
        self.once_pod.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, uid| uid != pod_uid);
    }

    fn release(&self, pod_uid: &str) {
        self.release_claims(pod_uid);
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|_, w| {
            w.users.remove(pod_uid);
            if w.users.is_empty() {
                w.task.abort();
                return false;
            }
            true
        });
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).retain(|s, _| s.pod_uid != pod_uid);
    }

    async fn claim(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, ObjectError> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(|e| ObjectError::Api { what: format!("persistentvolumeclaim {namespace}/{name}"), message: e.to_string() })
    }

    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, ObjectError> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        api.get_opt(name).await.map_err(|e| ObjectError::Api { what: format!("persistentvolume {name}"), message: e.to_string() })
    }

    async fn csi_driver(&self, name: &str) -> Result<Option<k8s_openapi::api::storage::v1::CSIDriver>, ObjectError> {
        let api: Api<k8s_openapi::api::storage::v1::CSIDriver> = Api::all(self.client.clone());
        api.get_opt(name).await.map_err(|e| ObjectError::Api { what: format!("csidriver {name}"), message: e.to_string() })
    }

    async fn runtime_class(&self, name: &str) -> Result<Option<k8s_openapi::api::node::v1::RuntimeClass>, ObjectError> {
        let api: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(self.client.clone());
        api.get_opt(name).await.map_err(|e| ObjectError::Api { what: format!("runtimeclass {name}"), message: e.to_string() })
    }

    async fn node_volumes_attached(&self, node: &str) -> Result<Vec<String>, ObjectError> {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let n = api.get(node).await.map_err(|e| ObjectError::Api { what: format!("node {node}"), message: e.to_string() })?;
        Ok(n.status.and_then(|s| s.volumes_attached).unwrap_or_default().into_iter().map(|v| v.name).collect())
    }

    async fn volume_attachment(&self, name: &str) -> Result<Option<k8s_openapi::api::storage::v1::VolumeAttachment>, ObjectError> {
        let api: Api<k8s_openapi::api::storage::v1::VolumeAttachment> = Api::all(self.client.clone());
        api.get_opt(name).await.map_err(|e| ObjectError::Api { what: format!("volumeattachment {name}"), message: e.to_string() })
    }

    fn changes(&self) -> broadcast::Receiver<ObjectKey> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_renew_at_80_percent_or_after_a_day() {
        let t = Token { token: String::new(), issued_at: 1000, expires_at: 1000 + 3607 };
        assert_eq!(t.refresh_at(), 1000 + 2885);
        let long = Token { token: String::new(), issued_at: 0, expires_at: 365 * 86400 };
        assert_eq!(long.refresh_at(), 86400);
    }
}
