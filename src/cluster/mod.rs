//! The apiserver side of the node: the client (with a rotating client
//! certificate and kubelet's QPS), TLS bootstrap and certificate rotation,
//! Node registration and status, the Lease heartbeat, the bound-pod watch,
//! the pod status writer, mirror pods for static pods, Events, and the
//! deletion handshake.

pub mod access;
pub mod bootstrap_file;
pub mod certs;
pub mod client;
pub mod events;
pub mod finalize;
pub mod lease;
pub mod mirror;
pub mod node;
pub mod podsource;
pub mod serving;
pub mod status_writer;

/// Errors on the way into a cluster; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error("{0}")]
    Bootstrap(String),
    #[error("{what}: {message}")]
    Tls { what: String, message: String },
}

impl ClusterError {
    pub fn api(what: impl Into<String>, source: kube::Error) -> Self {
        ClusterError::Api { what: what.into(), source }
    }

    pub fn file(file: &std::path::Path, message: impl std::fmt::Display) -> Self {
        ClusterError::File { file: file.display().to_string(), message: message.to_string() }
    }
}

/// Whether an API error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error is a 409 (conflict, or already exists).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use crate::tasks::Tasks;

use crate::config::ClusterSettings;
use crate::pods::source::SourceUpdate;
use crate::pods::store::StatusStore;
use crate::pods::worker::Terminated;
use crate::runtime::RuntimeHealth;

/// A client for the Service proxy: from its own kubeconfig
/// (KubeProxyConfiguration `clientConnection.kubeconfig`, as kube-proxy's) when
/// it has one, else the node's. Either way, its access is checked once at
/// start and each missing permission logged with the binding that grants it.
pub async fn proxy_client(kubeconfig: Option<&std::path::Path>, node: &kube::Client) -> Result<(kube::Client, &'static str), ClusterError> {
    match kubeconfig {
        Some(path) => {
            let kc = certs::read_kubeconfig(path)?;
            let client = client::build(kc, None).await.map_err(|e| ClusterError::file(path, e))?;
            tracing::info!(kubeconfig = %path.display(), "the Service proxy uses its own credentials");
            Ok((client, access::PROXY_OWN_GRANT))
        }
        None => Ok((node.clone(), access::PROXY_AS_NODE_GRANT)),
    }
}

/// A node's connection to its cluster.
pub struct Joined {
    pub client: kube::Client,
    /// The Lease and node status go through this one: no rate limit.
    pub heartbeat: kube::Client,
    cert: Option<(Arc<client::RotatingCert>, certs::Validity)>,
}

/// Gets credentials (TLS bootstrap if needed) and a client. A dry run only
/// reads: it needs a usable kubeconfig and never bootstraps.
pub async fn join(cs: &ClusterSettings, node: &str, dry_run: bool) -> Result<Joined, ClusterError> {
    let paths = certs::CertPaths {
        kubeconfig: cs.kubeconfig.clone(),
        bootstrap: if dry_run { None } else { cs.bootstrap_kubeconfig.clone() },
        cert_dir: cs.cert_dir.clone(),
    };
    let creds = certs::load_or_bootstrap(&paths, node).await?;
    let cert = creds.cert.as_ref().map(|c| c.0.clone());
    let client = client::build_at(creds.kubeconfig.clone(), cert.clone(), cs.api_rate).await?;
    let heartbeat = client::build_heartbeat(creds.kubeconfig, cert).await?;
    // Kubernetes' version-skew policy, said once (it stops nothing: nodelet
    // keeps to what the apiserver serves).
    let check = client.clone();
    tokio::spawn(async move {
        match check.apiserver_version().await {
            Ok(v) => match skew_note(&v.major, &v.minor, &v.git_version) {
                Some(note) => tracing::warn!("{note}"),
                None => tracing::info!(apiserver = %v.git_version, kubelet = crate::kubelet_version!(), "within the version-skew policy"),
            },
            Err(e) => tracing::debug!(error = %e, "reading the apiserver's version failed"),
        }
    });
    Ok(Joined { client, heartbeat, cert: creds.cert })
}

/// What Kubernetes' version-skew policy says of a kubelet at nodelet's
/// release beside an apiserver at `major.minor`: a kubelet must not be newer
/// than kube-apiserver, and may be up to three minor versions older. `None`
/// within it (or when the apiserver's version cannot be read).
pub fn skew_note(major: &str, minor: &str, git_version: &str) -> Option<String> {
    let own: u32 = crate::kubernetes_version!().trim_start_matches("v1.").split('.').next()?.parse().ok()?;
    let minor: u32 = minor.trim_end_matches('+').parse().ok()?;
    if major != "1" {
        return None;
    }
    let kubelet = crate::kubelet_version!();
    if minor < own {
        Some(format!(
            "the apiserver is {git_version}, older than the kubelet nodelet reports ({kubelet}): outside Kubernetes' version-skew \
             policy (a kubelet must not be newer than kube-apiserver); nodelet keeps to the API the apiserver serves"
        ))
    } else if minor > own + 3 {
        Some(format!(
            "the apiserver is {git_version}, more than three minor versions newer than the kubelet nodelet reports ({kubelet}): \
             outside Kubernetes' version-skew policy; upgrade nodelet"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod skew_tests {
    #[test]
    fn the_version_skew_policy_of_a_v1_34_kubelet() {
        assert_eq!(super::skew_note("1", "34", "v1.34.1"), None);
        assert_eq!(super::skew_note("1", "37+", "v1.37.0-eks"), None);
        assert!(super::skew_note("1", "24", "v1.24.17").unwrap().contains("must not be newer than kube-apiserver"));
        assert!(super::skew_note("1", "38", "v1.38.0").unwrap().contains("more than three minor versions newer"));
        assert_eq!(super::skew_note("1", "x", "?"), None);
    }
}

/// What cluster mode runs beside the pod manager.
pub struct ClusterParts {
    pub settings: ClusterSettings,
    pub facts: node::NodeFacts,
    pub health: watch::Receiver<RuntimeHealth>,
    pub statuses: StatusStore,
    pub sources: mpsc::Sender<SourceUpdate>,
    pub terminated: Option<mpsc::UnboundedReceiver<Terminated>>,
    /// The Node's labels as the apiserver has them, for admission.
    pub node_labels: watch::Sender<std::collections::BTreeMap<String, String>>,
    /// The Node's taints as the apiserver has them, for admission.
    pub node_taints: watch::Sender<Vec<k8s_openapi::api::core::v1::Taint>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The node's images for its status (from image GC's listing).
    pub images: watch::Receiver<Vec<k8s_openapi::api::core::v1::ContainerImage>>,
    /// The device plugins' extended resources.
    pub extended: watch::Receiver<crate::devices::Extended>,
    /// The eviction manager's pressure, for the node conditions.
    pub pressure: watch::Receiver<crate::pods::eviction::Pressure>,
    pub shutting_down: watch::Receiver<bool>,
    /// kubelet's root directory (the volumes in use are read from it).
    pub root_dir: std::path::PathBuf,
    /// The volumes pods want, and what the posted status reports.
    pub in_use: crate::csi::InUse,
}

/// Starts the bound-pod watch, and unless `dry_run` everything that writes:
/// registration (retried until the apiserver answers), node status, the
/// Lease, mirror pods, the status writer, the deletion handshake and
/// certificate rotation.
pub fn start(tasks: &mut Tasks, joined: Joined, p: ClusterParts, dry_run: bool) {
    let client = joined.client.clone();
    let node = p.facts.name.clone();
    let (mirrors_tx, mirrors_rx) = watch::channel(podsource::Mirrors::new());
    let (bound_pods, bound_pods_writer) = kube::runtime::reflector::store();
    tasks.spawn("pod watch", podsource::run(client.clone(), node.clone(), p.sources, mirrors_tx, bound_pods_writer));
    let marked_unknown = std::sync::Arc::new(tokio::sync::Notify::new());
    tasks.spawn("node watch", node::watch_node(client.clone(), node.clone(), p.node_labels, p.node_taints, marked_unknown.clone()));
    if dry_run {
        return;
    }
    tasks.spawn("pod status writer", status_writer::run(client.clone(), p.statuses.subscribe(), mirrors_rx.clone(), bound_pods));
    if let Some(rx) = p.terminated {
        tasks.spawn("deletion handshake", finalize::run(client.clone(), rx));
    }
    if let Some((_, validity)) = &joined.cert {
        p.metrics.certificate_in_use(false, validity.not_after);
    }
    if let Some((cert, validity)) = joined.cert.filter(|_| p.settings.rotate_certificates) {
        tasks.spawn("certificate rotation", certs::rotate(client.clone(), cert, validity, p.settings.cert_dir.clone(), node.clone(), p.metrics.clone()));
    }
    let heartbeat = joined.heartbeat.clone();
    let settings = p.settings;
    let facts = p.facts;
    let health = p.health;
    let statuses = p.statuses;
    let images = p.images;
    let extended = p.extended;
    let pressure = p.pressure;
    let shutting_down = p.shutting_down;
    tasks.spawn("node heartbeat", async move {
        let check = access::check(&client, "node", access::NODE, access::NODE_GRANT);
        let _ = tokio::time::timeout(Duration::from_secs(10), check).await;
        let mut delay = Duration::from_millis(500);
        let mut outage = crate::kubeapi::Outage::default();
        let uid = loop {
            match node::register(&client, &facts).await {
                Ok(uid) => {
                    outage.works("registering the node");
                    break uid;
                }
                Err(e) => {
                    outage.failed("registering the node", &e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(7));
                }
            }
        };
        let renew = Duration::from_secs((settings.lease_duration_seconds as u64 / 4).max(1));
        let lease = lease::LeaseLoop { client: heartbeat.clone(), node: node.clone(), node_uid: uid.clone(), renew_every: renew, duration_seconds: settings.lease_duration_seconds };
        let status = node::StatusLoop {
            client: heartbeat.clone(),
            facts,
            health,
            images,
            extended,
            pressure,
            shutting_down,
            update_every: settings.status_update,
            report_every: settings.status_report,
            root_dir: p.root_dir.clone(),
            in_use: p.in_use.clone(),
            marked_unknown,
        };
        let mirrors = mirror::run(client.clone(), node.clone(), uid, statuses.subscribe(), mirrors_rx);
        tokio::join!(lease.run(), status.run(), mirrors);
    });
}
