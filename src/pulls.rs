//! Image pulls for the pod workers, as kubelet's image manager does them:
//! credentials from the pod's pull secrets, the node's Docker config and the
//! credential provider plugins, each matching one tried in turn; pulls one
//! at a time (`serializeImagePulls`) or at most `maxParallelImagePulls`;
//! `registryPullQPS`/`registryBurst` (a pull over the limit fails with
//! kubelet's "pull QPS exceeded" and backs off); the record of which
//! credentials pulled what, so an image pulled with a pod's secret serves
//! only pods that hold it ([`crate::credentials::records`]).
//!
//! While a pull runs its progress is read from containerd's content store
//! (the ingests in flight) every few seconds, logged, and served on the
//! local endpoint's `/pulls` for `nodelet pods` and `nodelet explain`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::credentials::provider::Providers;
use crate::credentials::records::{Lookup, PodSecrets, Records, SecretRef, may_use};
pub use crate::config::PullPolicy;
use crate::reference::Reference;
use crate::credentials::{self, Credential, Format, Keyring, Origin};
use crate::runtime::{Runtime, cri};

/// How often a running pull's progress is read (for `/pulls`) ...
pub const PROGRESS_PERIOD: Duration = Duration::from_millis(500);
/// ... and logged.
pub const PROGRESS_LOG_PERIOD: Duration = Duration::from_secs(5);

/// One pull in flight, as `/pulls` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub image: String,
    /// `namespace/name` of each pod waiting for it.
    pub pods: Vec<String>,
    pub done_bytes: u64,
    /// What is known so far (layers not started yet are not in it).
    pub total_bytes: u64,
    pub seconds: f64,
    #[serde(skip)]
    pub started: Option<Instant>,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: cri::Image,
    pub took: Duration,
    pub with_waiting: Duration,
    /// Who the successful credential came from (`None`: anonymous).
    pub origin: Option<Origin>,
}

pub struct Puller {
    runtime: Arc<dyn Runtime>,
    node_files: Vec<(PathBuf, Format)>,
    providers: Providers,
    records: Records,
    policy: PullPolicy,
    gate: Option<Semaphore>,
    limiter: Option<DefaultDirectRateLimiter>,
    progress: Mutex<BTreeMap<String, Progress>>,
    containerd: Option<PathBuf>,
    /// A dry run: nothing is written and no plugin is run.
    read_only: bool,
    /// Pulls in progress per image name, so the intent outlives the first
    /// of two pulls of the same image.
    intents: Mutex<BTreeMap<String, u32>>,
    /// The connection to containerd's own API, made at the first reading.
    channel: tokio::sync::Mutex<Option<tonic::transport::Channel>>,
}

impl Puller {
    pub fn new(runtime: Arc<dyn Runtime>, root_dir: &std::path::Path, policy: PullPolicy, providers: Providers) -> Self {
        let gate = match (policy.serialize, policy.max_parallel) {
            (true, _) => Some(Semaphore::new(1)),
            (false, Some(n)) if n > 0 => Some(Semaphore::new(n as usize)),
            _ => None,
        };
        let limiter = std::num::NonZeroU32::new(policy.qps).map(|qps| {
            let burst = std::num::NonZeroU32::new(policy.burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
            RateLimiter::direct(Quota::per_second(qps).allow_burst(burst))
        });
        Self {
            runtime,
            node_files: credentials::node_config_paths(root_dir),
            providers,
            records: Records::new(root_dir),
            policy,
            gate,
            limiter,
            progress: Mutex::new(BTreeMap::new()),
            containerd: None,
            read_only: false,
            intents: Mutex::new(BTreeMap::new()),
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads pull progress from containerd's own API on `socket`.
    pub fn with_containerd(mut self, socket: PathBuf) -> Self {
        self.containerd = Some(socket);
        self
    }

    /// For dry runs: no intents or records are written.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Pulls in flight.
    pub fn in_flight(&self) -> Vec<Progress> {
        let map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|p| Progress { seconds: p.started.map_or(0.0, |s| s.elapsed().as_secs_f64()), ..p.clone() })
            .collect()
    }

    /// The pod secrets (namespace, name, credential hash) that apply to
    /// `repo`, for the use check.
    pub fn pod_secrets(ring: &Keyring, repo: &str) -> PodSecrets {
        ring.lookup(repo)
            .into_iter()
            .filter_map(|c| match &c.origin {
                Origin::Secret { namespace, name } => Some((namespace.clone(), name.clone(), c.hash())),
                _ => None,
            })
            .collect()
    }

    /// Whether a pod holding `secrets` may use the image already present
    /// (`image_id`) without pulling it again.
    pub fn may_use_present(&self, r: &Reference, image_id: &str, secrets: &PodSecrets) -> bool {
        let record = match self.records.lookup(image_id) {
            Lookup::Found(rec) => Some(rec),
            Lookup::Missing => None,
            Lookup::Unreadable => return false,
        };
        let repo = r.repository();
        // kubelet's allowlist: an exact repository, or `prefix/*`.
        let allowlisted = self.policy.allowlist.iter().any(|a| match a.strip_suffix("/*") {
            Some(prefix) => repo.starts_with(&format!("{prefix}/")),
            None => repo == *a,
        });
        may_use(record.as_ref(), self.records.has_intent(&r.normalized()), self.policy.verify, allowlisted, &repo, secrets)
    }

    /// Every credential for the image: the pod's secrets first, then the
    /// node's file, then the providers.
    async fn candidates(&self, image: &str, r: &Reference, secrets: &Keyring) -> Vec<Credential> {
        let repo = r.repository();
        let mut out = secrets.lookup(&repo);
        let (ring, errors) = credentials::node_keyring(&self.node_files);
        for e in errors {
            tracing::warn!(error = %e, "a Docker config file of the node is unusable; skipped");
        }
        out.extend(ring.lookup(&repo));
        if !self.providers.is_empty() {
            if self.read_only {
                tracing::info!(image, "dry run: image credential provider plugins are not run");
            } else {
                // kubelet asks plugins about the repository, without tag.
                out.extend(self.providers.lookup(&repo, &repo).await);
            }
        }
        out
    }

    /// Pulls `image` for `pod` (`namespace/name`), trying each credential
    /// in turn. The error is the registry's words (all of them when several
    /// credentials failed), never a credential.
    pub async fn pull(&self, image: &str, r: &Reference, pod: &str, secrets: &Keyring, sandbox: &cri::PodSandboxConfig) -> Result<Pulled, String> {
        let asked = Instant::now();
        let candidates = self.candidates(image, r, secrets).await;
        let _permit = match &self.gate {
            Some(g) => Some(g.acquire().await.map_err(|e| e.to_string())?),
            None => None,
        };
        if let Some(l) = &self.limiter
            && l.check().is_err()
        {
            return Err("pull QPS exceeded.".into());
        }
        let normalized = r.normalized();
        if !self.read_only {
            // Without its intent a pull could leave an image that looks
            // preloaded: no intent, no pull (as kubelet).
            self.records.write_intent(&normalized).map_err(|e| format!("cannot record the pull intent: {e}"))?;
            *self.intents.lock().unwrap_or_else(|e| e.into_inner()).entry(normalized.clone()).or_insert(0) += 1;
        }
        let started = Instant::now();
        let key = format!("{normalized}\u{0}{pod}");
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key.clone(),
            Progress { image: image.to_string(), pods: vec![pod.to_string()], done_bytes: 0, total_bytes: 0, seconds: 0.0, started: Some(started) },
        );
        let attempts = async {
            let mut errors = Vec::new();
            if candidates.is_empty() {
                return self.runtime.pull_image(image, None, sandbox).await.map(|id| (id, None)).map_err(|e| e.to_string());
            }
            for c in &candidates {
                match self.runtime.pull_image(image, Some(auth_config(c)), sandbox).await {
                    Ok(id) => return Ok((id, Some(c))),
                    Err(e) => {
                        tracing::debug!(image, credential = ?c, error = %e, "pull with this credential failed; trying the next");
                        errors.push(e.to_string());
                    }
                }
            }
            Err(if errors.len() == 1 { errors.remove(0) } else { format!("[{}]", errors.join(", ")) })
        };
        let result = {
            tokio::pin!(attempts);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_PERIOD, PROGRESS_PERIOD);
            let mut seen = Ingests::default();
            let mut logged = Instant::now();
            loop {
                tokio::select! {
                    r = &mut attempts => break r,
                    _ = tick.tick() => {
                        let log = logged.elapsed() >= PROGRESS_LOG_PERIOD;
                        if log {
                            logged = Instant::now();
                        }
                        self.report_progress(&key, image, &mut seen, log).await;
                    }
                }
            }
        };
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let (image_ref, cred) = match result {
            Ok(r) => r,
            Err(e) => {
                // Nothing new is on the node; an image that was there stays as it was.
                self.end_intent(&normalized, true);
                return Err(e);
            }
        };
        let secret = cred.and_then(|c| match &c.origin {
            Origin::Secret { namespace, name } => Some(SecretRef { namespace: namespace.clone(), name: name.clone(), credential_hash: c.hash() }),
            _ => None,
        });
        let status = self.runtime.image_status(&image_ref).await.ok().flatten().unwrap_or(cri::Image { id: image_ref.clone(), ..Default::default() });
        if !self.read_only {
            match self.records.record(&status.id, &r.repository(), secret) {
                Ok(()) => self.end_intent(&normalized, true),
                Err(e) => {
                    // The intent stays: the image is verified again later.
                    tracing::warn!(error = %e, "cannot write the image pull record");
                    self.end_intent(&normalized, false);
                }
            }
        }
        Ok(Pulled { image: status, took: started.elapsed(), with_waiting: asked.elapsed(), origin: cred.map(|c| c.origin.clone()) })
    }

    /// One pull of `image` ended; the intent goes with the last one (and
    /// only if `clear`).
    fn end_intent(&self, image: &str, clear: bool) {
        if self.read_only {
            return;
        }
        let mut m = self.intents.lock().unwrap_or_else(|e| e.into_inner());
        let left = m.get(image).copied().unwrap_or(1).saturating_sub(1);
        if left == 0 {
            m.remove(image);
            if clear {
                self.records.clear_intent(image);
            }
        } else {
            m.insert(image.to_string(), left);
        }
    }

    async fn report_progress(&self, key: &str, image: &str, seen: &mut Ingests, log: bool) {
        let Some(socket) = &self.containerd else { return };
        // Never long: the pull's own future waits while this runs.
        let read = async {
            let mut slot = self.channel.lock().await;
            let channel = match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = containerd_client::connect(socket).await.map_err(|e| e.to_string())?;
                    *slot = Some(c.clone());
                    c
                }
            };
            drop(slot);
            let r = ingest_statuses(channel).await;
            if r.is_err() {
                *self.channel.lock().await = None;
            }
            r
        };
        let statuses = match tokio::time::timeout(Duration::from_secs(2), read).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read containerd's ingests");
                return;
            }
        };
        let (done, total) = seen.update(&statuses);
        if let Some(p) = self.progress.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key) {
            p.done_bytes = done;
            p.total_bytes = total;
        }
        if log {
            tracing::info!(image, done = %mib(done), total = %mib(total), "pulling image");
        }
    }
}

/// The CRI AuthConfig for a credential. No server address: containerd then
/// gives it to whichever host (mirror included) serves the image, as with
/// kubelet.
fn auth_config(c: &Credential) -> cri::AuthConfig {
    cri::AuthConfig {
        username: c.username.clone(),
        password: c.password.clone(),
        auth: c.auth.clone(),
        server_address: String::new(),
        identity_token: c.identity_token.clone(),
        registry_token: c.registry_token.clone(),
    }
}

pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// The ingests seen during one pull: those still running and those that
/// finished (gone from the list), so the figures only grow.
#[derive(Debug, Default)]
pub struct Ingests {
    active: BTreeMap<String, (u64, u64)>,
    finished: u64,
}

impl Ingests {
    /// (ref, offset, total) of the ingests now; returns (done, total).
    pub fn update(&mut self, now: &[(String, u64, u64)]) -> (u64, u64) {
        let current: BTreeMap<String, (u64, u64)> = now.iter().map(|(r, o, t)| (r.clone(), (*o, *t))).collect();
        for (r, (_, total)) in &self.active {
            if !current.contains_key(r) {
                self.finished = self.finished.saturating_add(*total);
            }
        }
        self.active = current;
        let done = self.active.values().fold(self.finished, |a, (o, _)| a.saturating_add(*o));
        let total = self.active.values().fold(self.finished, |a, (_, t)| a.saturating_add(*t));
        (done, total)
    }
}

async fn ingest_statuses(channel: tonic::transport::Channel) -> Result<Vec<(String, u64, u64)>, String> {
    use containerd_client::services::v1::ListStatusesRequest;
    use containerd_client::services::v1::content_client::ContentClient;
    let mut req = tonic::Request::new(ListStatusesRequest { filters: vec![] });
    if let Ok(v) = crate::runtime::containerd::CRI_NAMESPACE.parse() {
        req.metadata_mut().insert("containerd-namespace", v);
    }
    let resp = ContentClient::new(channel).list_statuses(req).await.map_err(|s| s.message().to_string())?;
    Ok(resp
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| (s.r#ref, u64::try_from(s.offset).unwrap_or(0), u64::try_from(s.total).unwrap_or(0)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::provider::Providers;

    async fn puller(policy: PullPolicy) -> (Puller, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::runtime::dry_run::DryRunRuntime::new(None, Box::new(std::io::sink())).await;
        (Puller::new(Arc::new(rt), dir.path(), policy, Providers::new(vec![])), dir)
    }

    #[tokio::test]
    async fn over_the_registry_qps_a_pull_fails_as_kubelets_does() {
        let (p, _dir) = puller(PullPolicy { qps: 1, burst: 2, ..Default::default() }).await;
        let r = crate::reference::parse("r.io/app:1").unwrap();
        let sb = cri::PodSandboxConfig::default();
        let none = Keyring::default();
        assert!(p.pull("r.io/app:1", &r, "ns/a", &none, &sb).await.is_ok());
        assert!(p.pull("r.io/app:1", &r, "ns/a", &none, &sb).await.is_ok());
        assert_eq!(p.pull("r.io/app:1", &r, "ns/a", &none, &sb).await.unwrap_err(), "pull QPS exceeded.");
    }

    #[tokio::test]
    async fn a_pull_leaves_a_record_open_to_node_pods_when_anonymous_and_no_intent() {
        let (p, dir) = puller(PullPolicy::default()).await;
        let r = crate::reference::parse("r.io/app:1").unwrap();
        let pulled = p.pull("r.io/app:1", &r, "ns/a", &Keyring::default(), &cri::PodSandboxConfig::default()).await.unwrap();
        assert!(pulled.origin.is_none());
        let rec = Records::new(dir.path()).pulled(&pulled.image.id).expect("a record");
        assert!(rec.credential_mapping["r.io/app"].node_pods_accessible);
        assert!(!Records::new(dir.path()).has_intent("r.io/app:1"));
        assert!(p.in_flight().is_empty());
    }

    #[test]
    fn progress_counts_finished_ingests_and_only_grows() {
        let mut i = Ingests::default();
        assert_eq!(i.update(&[("a".into(), 10, 100), ("b".into(), 0, 50)]), (10, 150));
        assert_eq!(i.update(&[("b".into(), 20, 50)]), (120, 150));
        assert_eq!(i.update(&[]), (150, 150));
        assert_eq!(i.update(&[("c".into(), 5, 10)]), (155, 160));
    }
}
