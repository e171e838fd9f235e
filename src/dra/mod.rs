//! Dynamic Resource Allocation, node side, as kubelet's DRA manager
//! (resource.k8s.io/v1, the kubelet plugin API `v1.DRAPlugin`, and
//! `v1beta1.DRAPlugin` for older drivers):
//!
//! - DRA drivers register through the plugin-registration directory
//!   (`<root-dir>/plugins_registry`, type `DRAPlugin`; csi/registry.rs
//!   watches it for both kinds) with the socket of their kubelet plugin;
//! - before a pod's sandbox is made, each of its claims (`spec.resourceClaims`:
//!   a claim by name, or the one the resourceclaim controller made from a
//!   template, named in `status.resourceClaimStatuses`) is read from the
//!   apiserver and must be allocated and reserved for the pod (a template's
//!   claim also owned by it); then NodePrepareResources is called on the
//!   driver(s) of its devices, once per claim however many pods share it.
//!   Until that works the pod starts nothing: the error is a
//!   `FailedPrepareDynamicResources` event and the pod is tried again;
//! - at container creation the CDI device IDs the drivers answered, for the
//!   claims (and requests) the container names in `resources.claims`, go to
//!   CRI's `CDI_devices` (the runtime injects them: containerd 1.7+ with
//!   `enable_cdi`);
//! - the claims, the pods using them and the drivers' answers are
//!   checkpointed in `<root-dir>/dra_manager_state` (kubelet's layout,
//!   CRC-32 of the data), written before and after each call, so an agent
//!   restart neither forgets a prepared claim nor prepares it twice in a
//!   way the driver cannot take (NodePrepareResources is idempotent for
//!   drivers and is asked again after a restart);
//! - NodeUnprepareResources is called when the last pod using a claim is
//!   gone, before the pod is reported gone (a driver that cannot be reached
//!   keeps the pod in its deletion, as kubelet does), and for pods deleted
//!   while the agent was down;
//! - the node's ResourceSlices are deleted at start (no driver has
//!   registered yet: pods must not be scheduled here for devices nobody
//!   serves; drivers publish theirs again when they register), and a
//!   driver's when it has been gone for 30 s (kubelet's wiping delay), unless
//!   it registers again meanwhile.

pub mod checkpoint;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::api::resource::v1::ResourceClaim;

pub mod proto {
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
}

use proto::v1 as pb;

/// kubelet's timeout for a call to a DRA plugin (and for reading a claim).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// The plugin type DRA drivers register with.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The services a driver may list among its supported versions, newest first.
const SERVICES: [(&str, &str); 2] = [("v1.DRAPlugin", "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"), ("v1beta1.DRAPlugin", "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin")];

/// A registered driver's kubelet plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub driver: String,
    pub endpoint: PathBuf,
    /// The gRPC service called: `<package>.DRAPlugin`.
    service: &'static str,
}

/// One device a driver prepared for a claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreparedDevice {
    pub pool: String,
    pub device: String,
    /// The claim's requests it serves; empty: all of them.
    pub requests: Vec<String>,
    pub cdi_ids: Vec<String>,
}

/// What the node knows of one claim (kubelet's ClaimInfo).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub pods: BTreeSet<String>,
    /// By driver: every driver of the allocation, with the devices it
    /// answered (none until prepared).
    pub drivers: BTreeMap<String, Vec<PreparedDevice>>,
    /// NodePrepareResources answered in this run of the agent.
    pub prepared: bool,
}

impl ClaimInfo {
    /// The CDI devices for one of the claim's requests ("" for all).
    fn cdi_devices(&self, request: &str) -> Vec<String> {
        let mut out = Vec::new();
        for devices in self.drivers.values() {
            for d in devices {
                let serves = request.is_empty()
                    || d.requests.is_empty()
                    || d.requests.iter().any(|r| r == request || r.split('/').next() == Some(request));
                if serves {
                    out.extend(d.cdi_ids.iter().cloned());
                }
            }
        }
        out
    }
}

type Key = (String, String);

#[derive(Default)]
struct Inner {
    /// By driver: its registered plugin instances, oldest first (a rolling
    /// update runs two for a while); calls go to the newest.
    plugins: Mutex<BTreeMap<String, Vec<Plugin>>>,
    claims: Mutex<BTreeMap<Key, ClaimInfo>>,
    /// The checkpoint; None: nothing written (a dry run, unit tests).
    state: Option<PathBuf>,
    client: Option<kube::Client>,
    /// By pod UID: (namespace, container → the claims it names), for the
    /// pod-resources API.
    uses: Mutex<BTreeMap<String, (String, BTreeMap<String, Vec<String>>)>>,
    dry_run: bool,
    /// One prepare or unprepare at a time (they read, call and write the
    /// same claims; a node runs few and they are short).
    op: tokio::sync::Mutex<()>,
    reconciling: AtomicBool,
    /// The node's name (its ResourceSlices), when there is an apiserver to
    /// write to.
    node_name: Option<String>,
    /// By driver: registrations so far (a pending wipe checks it has not
    /// registered again since).
    registrations: Mutex<BTreeMap<String, u64>>,
    wiping_delay: std::time::Duration,
}

/// The DRA manager: cheap to clone, one per agent.
#[derive(Clone, Default)]
pub struct Dra {
    inner: Arc<Inner>,
}

/// How a pod names a claim: the claim's name, or None when the template
/// needed none (a claim the controller decided not to make).
pub fn claim_name(pod: &Pod, claim: &k8s_openapi::api::core::v1::PodResourceClaim) -> Result<(Option<String>, bool), String> {
    if let Some(n) = claim.resource_claim_name.as_deref().filter(|n| !n.is_empty()) {
        return Ok((Some(n.to_string()), false));
    }
    if claim.resource_claim_template_name.as_deref().is_some_and(|n| !n.is_empty()) {
        let statuses = pod.status.as_ref().and_then(|s| s.resource_claim_statuses.as_ref());
        return match statuses.and_then(|s| s.iter().find(|s| s.name == claim.name)) {
            Some(s) => Ok((s.resource_claim_name.clone().filter(|n| !n.is_empty()), true)),
            None => Err(format!("spec.resourceClaims[{}]: the ResourceClaim is not created yet (no entry in status.resourceClaimStatuses)", claim.name)),
        };
    }
    Err(format!("spec.resourceClaims[{}]: neither resourceClaimName nor resourceClaimTemplateName is set", claim.name))
}

fn pod_claims(pod: &Pod) -> &[k8s_openapi::api::core::v1::PodResourceClaim] {
    pod.spec.as_ref().and_then(|s| s.resource_claims.as_deref()).unwrap_or_default()
}

/// Whether the pod uses DRA at all.
pub fn uses_claims(pod: &Pod) -> bool {
    !pod_claims(pod).is_empty()
}

/// The claim's allocation as kubelet reads it: the drivers of its devices,
/// or why it cannot be used by `pod` (not reserved for it, not owned by it
/// when made from a template, not allocated).
pub fn check_claim(pod: &Pod, claim: &ResourceClaim, must_own: bool) -> Result<BTreeSet<String>, String> {
    let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    if must_own {
        let owned = claim.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == pod_uid);
        if !owned {
            return Err(format!("ResourceClaim {name} was not created for pod {} (pod is not owner)", pod.metadata.name.as_deref().unwrap_or_default()));
        }
    }
    let status = claim.status.as_ref();
    let reserved = status.and_then(|s| s.reserved_for.as_ref()).is_some_and(|r| r.iter().any(|c| c.resource == "pods" && c.uid == pod_uid));
    if !reserved {
        return Err(format!(
            "pod {} ({pod_uid}) is not allowed to use ResourceClaim {name} ({}): it is not reserved for the pod",
            pod.metadata.name.as_deref().unwrap_or_default(),
            claim.metadata.uid.as_deref().unwrap_or_default()
        ));
    }
    let Some(allocation) = status.and_then(|s| s.allocation.as_ref()) else {
        return Err(format!("ResourceClaim {name} is not allocated"));
    };
    Ok(allocation.devices.as_ref().and_then(|d| d.results.as_ref()).into_iter().flatten().map(|r| r.driver.clone()).collect())
}

/// A driver's answers (claim UID, error) to a batch, as kubelet checks
/// them: none for a claim not asked about, no error, none missing.
fn check_answers<'a>(method: &str, driver: &str, batch: &[pb::Claim], answers: impl Iterator<Item = (&'a String, &'a str)>) -> Result<(), String> {
    let mut answered = 0;
    for (uid, error) in answers {
        let Some(claim) = batch.iter().find(|c| &c.uid == uid) else {
            return Err(format!("{method} of DRA driver {driver} answered for an unknown claim UID {uid}"));
        };
        if !error.is_empty() {
            return Err(format!("{method} failed for ResourceClaim {}: {error}", claim.name));
        }
        answered += 1;
    }
    let missing = batch.len().saturating_sub(answered);
    if missing > 0 {
        return Err(format!("{method} of DRA driver {driver} skipped {missing} ResourceClaims"));
    }
    Ok(())
}

/// kubelet's wiping delay: how long a driver may be gone before its
/// ResourceSlices are deleted (a test build may shorten it).
fn wiping_delay() -> std::time::Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("NODELET_TEST_DRA_WIPING_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        return std::time::Duration::from_millis(ms);
    }
    std::time::Duration::from_secs(30)
}

fn grpc_text(s: &tonic::Status) -> String {
    crate::csi::status_text(s)
}

impl Dra {
    /// A manager that checkpoints in `root_dir` (None: writes nothing),
    /// reads claims with `client` (None: pods with claims cannot start), and
    /// deletes the ResourceSlices of `node_name` when their drivers are gone
    /// (None: it touches none).
    pub fn new(root_dir: Option<&std::path::Path>, client: Option<kube::Client>, node_name: Option<String>, dry_run: bool) -> Result<Dra, String> {
        let state = root_dir.filter(|_| !dry_run).map(|d| d.join(checkpoint::FILE));
        let mut claims = BTreeMap::new();
        let read_from = root_dir.map(|d| d.join(checkpoint::FILE));
        if let Some(path) = &read_from {
            for c in checkpoint::read(path)? {
                claims.insert((c.namespace.clone(), c.name.clone()), c);
            }
        }
        Ok(Dra {
            inner: Arc::new(Inner {
                claims: Mutex::new(claims),
                state,
                client,
                dry_run,
                node_name: node_name.filter(|_| !dry_run),
                wiping_delay: wiping_delay(),
                ..Default::default()
            }),
        })
    }

    /// Registers a driver's kubelet plugin (from its registration's
    /// GetInfo): the service it speaks, or why it cannot be used.
    pub fn register(&self, driver: &str, endpoint: &str, versions: &[String]) -> Result<Plugin, String> {
        let mut errs = Vec::new();
        crate::names::dns_subdomain(driver, "name", &mut errs);
        if let Some(e) = errs.first() {
            return Err(format!("the driver name {driver:?}: {e}"));
        }
        let endpoint = PathBuf::from(endpoint.trim_start_matches("unix://"));
        if !endpoint.is_absolute() {
            return Err(format!("the plugin's endpoint {:?} is not an absolute socket path", endpoint.display()));
        }
        let Some((_, service)) = SERVICES.iter().find(|(v, _)| versions.iter().any(|x| x == v)) else {
            return Err(format!(
                "none of the plugin's versions {versions:?} is supported (one of {:?})",
                SERVICES.iter().map(|(v, _)| *v).collect::<Vec<_>>()
            ));
        };
        let plugin = Plugin { driver: driver.to_string(), endpoint, service };
        {
            let mut plugins = self.inner.plugins.lock().unwrap_or_else(|p| p.into_inner());
            let list = plugins.entry(driver.to_string()).or_default();
            list.retain(|p| p.endpoint != plugin.endpoint);
            list.push(plugin.clone());
        }
        *self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).entry(driver.to_string()).or_default() += 1;
        Ok(plugin)
    }

    /// One plugin instance of the driver is gone (its registration socket
    /// went away); when it was the last, the driver's ResourceSlices go too
    /// unless it is back within the wiping delay.
    pub fn unregister(&self, driver: &str, endpoint: &std::path::Path) {
        let last = {
            let mut plugins = self.inner.plugins.lock().unwrap_or_else(|p| p.into_inner());
            let list = plugins.entry(driver.to_string()).or_default();
            list.retain(|p| p.endpoint != endpoint);
            let empty = list.is_empty();
            if empty {
                plugins.remove(driver);
            }
            empty
        };
        if !last || self.inner.node_name.is_none() || self.inner.client.is_none() {
            return;
        }
        let seen = self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).get(driver).copied();
        let (me, driver) = (self.clone(), driver.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(me.inner.wiping_delay).await;
            let now = me.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).get(&driver).copied();
            let back = me.inner.plugins.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&driver);
            if now == seen && !back {
                me.wipe(Some(&driver)).await;
            }
        });
    }

    /// Deletes the node's ResourceSlices (of one driver, or all), retrying
    /// with back-off (1 s doubling to 5 min) until it works.
    pub async fn wipe(&self, driver: Option<&str>) {
        let (Some(node), Some(client)) = (&self.inner.node_name, &self.inner.client) else { return };
        let mut fields = format!("spec.nodeName={node}");
        if let Some(d) = driver {
            fields.push_str(&format!(",spec.driver={d}"));
        }
        let api: kube::Api<k8s_openapi::api::resource::v1::ResourceSlice> = kube::Api::all(client.clone());
        let mut delay = std::time::Duration::from_secs(1);
        for _ in 0..100 {
            // The start's wipe is moot once a driver has registered (it
            // publishes its slices again): never delete those.
            if driver.is_none() && !self.inner.registrations.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                tracing::info!("a DRA driver registered before the node's stale ResourceSlices could be deleted; leaving them to the drivers");
                return;
            }
            match api.delete_collection(&kube::api::DeleteParams::default(), &kube::api::ListParams::default().fields(&fields)).await {
                Ok(_) => {
                    tracing::info!(selector = %fields, "the node's ResourceSlices deleted (no registered driver serves them)");
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                // A cluster before 1.34 (no resource.k8s.io/v1, nothing
                // authorizes it) has no slices of ours: not worth hours of retries.
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::info!(selector = %fields, reason = %e.message, "the apiserver does not let this node delete ResourceSlices (no DRA on this cluster?); left alone");
                    return;
                }
                Err(e) => tracing::debug!(selector = %fields, error = %e, "deleting ResourceSlices failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(std::time::Duration::from_secs(300));
        }
    }

    pub fn plugins(&self) -> Vec<Plugin> {
        self.inner.plugins.lock().unwrap_or_else(|p| p.into_inner()).values().flatten().cloned().collect()
    }

    fn plugin(&self, driver: &str) -> Result<Plugin, String> {
        self.inner
            .plugins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(driver)
            .and_then(|l| l.last())
            .cloned()
            .ok_or_else(|| format!("DRA driver {driver} is not registered on this node"))
    }

    /// The claims as known now.
    pub fn claims(&self) -> Vec<ClaimInfo> {
        self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn save(&self) -> Result<(), String> {
        let Some(path) = &self.inner.state else { return Ok(()) };
        let claims = self.claims();
        checkpoint::write(path, &claims)
    }

    /// One call to a driver's plugin, given up after kubelet's 45 s.
    async fn call<Req: prost::Message + 'static, Resp: prost::Message + Default + 'static>(plugin: &Plugin, method: &str, req: Req) -> Result<Resp, String> {
        let driver = &plugin.driver;
        let work = async {
            let ch = crate::csi::channel(&plugin.endpoint).await?;
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready().await.map_err(|e| e.to_string())?;
            let path = http::uri::PathAndQuery::try_from(format!("/{}/{method}", plugin.service)).map_err(|e| e.to_string())?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            let mut r = tonic::Request::new(req);
            r.set_timeout(CALL_TIMEOUT);
            grpc.unary(r, path, codec).await.map(|r| r.into_inner()).map_err(|s| grpc_text(&s))
        };
        match tokio::time::timeout(CALL_TIMEOUT, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("{method} of DRA driver {driver} at {}: {e}", plugin.endpoint.display())),
            Err(_) => Err(format!("{method} of DRA driver {driver} at {}: no answer in {}s", plugin.endpoint.display(), CALL_TIMEOUT.as_secs())),
        }
    }

    /// Prepares the pod's claims (kubelet's PrepareResources). Ok when every
    /// claim is prepared (or the pod has none); the error is for the pod's
    /// events and names the claim, the driver and what they said.
    pub async fn prepare(&self, pod: &Pod) -> Result<(), String> {
        if !uses_claims(pod) {
            return Ok(());
        }
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let Some(client) = &self.inner.client else {
            return Err("the pod has resourceClaims but this node reads no apiserver".into());
        };
        let api: kube::Api<ResourceClaim> = kube::Api::namespaced(client.clone(), &ns);
        // Check everything before changing anything (and before waiting
        // for other pods' driver calls): a pod that cannot be prepared is
        // never recorded, so it can go without a driver call.
        let mut wanted: Vec<(ResourceClaim, BTreeSet<String>)> = Vec::new();
        for pc in pod_claims(pod) {
            let (name, must_own) = claim_name(pod, pc)?;
            let Some(name) = name else { continue };
            let claim = match tokio::time::timeout(CALL_TIMEOUT, api.get(&name)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(format!("fetch ResourceClaim {ns}/{name}: {e}")),
                Err(_) => return Err(format!("fetch ResourceClaim {ns}/{name}: no answer in {}s", CALL_TIMEOUT.as_secs())),
            };
            let drivers = check_claim(pod, &claim, must_own)?;
            if !self.inner.dry_run {
                for d in &drivers {
                    self.plugin(d).map_err(|e| format!("ResourceClaim {name}: {e}"))?;
                }
            }
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            if let Some(old) = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).get(&(ns.clone(), name.clone()))
                && old.uid != uid
            {
                return Err(format!("an old ResourceClaim {name} with UID {} is still prepared here (its pod force-deleted?)", old.uid));
            }
            wanted.push((claim, drivers));
        }
        let _op = self.inner.op.lock().await;
        if self.inner.dry_run {
            for (claim, drivers) in &wanted {
                tracing::info!(claim = claim.metadata.name.as_deref().unwrap_or_default(), drivers = ?drivers, "dry run: NodePrepareResources would be called");
            }
            return Ok(());
        }
        // Record the pod on each claim before calling (a pod deleted in
        // between is found by the reconcile and unprepared).
        let mut batches: BTreeMap<String, Vec<pb::Claim>> = BTreeMap::new();
        {
            let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            for (claim, drivers) in &wanted {
                let name = claim.metadata.name.clone().unwrap_or_default();
                let uid = claim.metadata.uid.clone().unwrap_or_default();
                let info = claims.entry((ns.clone(), name.clone())).or_insert_with(|| ClaimInfo {
                    uid: uid.clone(),
                    name: name.clone(),
                    namespace: ns.clone(),
                    drivers: drivers.iter().map(|d| (d.clone(), Vec::new())).collect(),
                    ..Default::default()
                });
                if info.uid != uid {
                    return Err(format!("an old ResourceClaim {name} with UID {} is still prepared here (its pod force-deleted?)", info.uid));
                }
                info.pods.insert(pod_uid.clone());
                if info.prepared {
                    continue;
                }
                for d in info.drivers.keys() {
                    batches.entry(d.clone()).or_default().push(pb::Claim { namespace: ns.clone(), uid: uid.clone(), name: name.clone() });
                }
            }
        }
        self.save().map_err(|e| format!("checkpoint ResourceClaim state: {e}"))?;
        let mut answered: BTreeMap<String, BTreeMap<String, Vec<PreparedDevice>>> = BTreeMap::new();
        for (driver, batch) in &batches {
            let plugin = self.plugin(driver)?;
            let resp: pb::NodePrepareResourcesResponse = Self::call(&plugin, "NodePrepareResources", pb::NodePrepareResourcesRequest { claims: batch.clone() }).await?;
            check_answers("NodePrepareResources", driver, batch, resp.claims.iter().map(|(uid, r)| (uid, r.error.as_str())))?;
            for (uid, result) in &resp.claims {
                let devices = result
                    .devices
                    .iter()
                    .map(|d| PreparedDevice { pool: d.pool_name.clone(), device: d.device_name.clone(), requests: d.request_names.clone(), cdi_ids: d.cdi_device_ids.clone() })
                    .collect();
                answered.entry(uid.clone()).or_default().insert(driver.clone(), devices);
            }
        }
        {
            let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            for info in claims.values_mut().filter(|c| c.pods.contains(&pod_uid)) {
                if let Some(by_driver) = answered.remove(&info.uid) {
                    info.drivers.extend(by_driver);
                }
                info.prepared = true;
            }
        }
        self.save().map_err(|e| format!("checkpoint ResourceClaim state: {e}"))?;
        let mut by_container = BTreeMap::new();
        if let Some(spec) = &pod.spec {
            for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
                let mut names = Vec::new();
                for rc in c.resources.as_ref().and_then(|r| r.claims.as_ref()).into_iter().flatten() {
                    if let Some(pc) = pod_claims(pod).iter().find(|pc| pc.name == rc.name)
                        && let Ok((Some(n), _)) = claim_name(pod, pc)
                        && !names.contains(&n)
                    {
                        names.push(n);
                    }
                }
                by_container.insert(c.name.clone(), names);
            }
        }
        self.inner.uses.lock().unwrap_or_else(|p| p.into_inner()).insert(pod_uid, (ns, by_container));
        Ok(())
    }

    /// The claims one container of a pod uses, as prepared, for the
    /// pod-resources API.
    pub fn container_claims(&self, pod_uid: &str, container: &str) -> Vec<ClaimInfo> {
        let uses = self.inner.uses.lock().unwrap_or_else(|p| p.into_inner());
        let Some((ns, by_container)) = uses.get(pod_uid) else { return Vec::new() };
        let claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
        by_container
            .get(container)
            .into_iter()
            .flatten()
            .filter_map(|n| claims.get(&(ns.clone(), n.clone())))
            .filter(|c| c.pods.contains(pod_uid))
            .cloned()
            .collect()
    }

    /// The CDI devices for one of the pod's containers: those of the claims
    /// (and requests) its `resources.claims` name (kubelet's GetResources).
    pub fn cdi_devices(&self, pod: &Pod, container: &Container) -> Result<Vec<String>, String> {
        let wanted: Vec<(String, String)> =
            container.resources.as_ref().and_then(|r| r.claims.as_ref()).into_iter().flatten().map(|c| (c.name.clone(), c.request.clone().unwrap_or_default())).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<String> = Vec::new();
        for pc in pod_claims(pod) {
            let requests: Vec<&str> = wanted.iter().filter(|(n, _)| *n == pc.name).map(|(_, r)| r.as_str()).collect();
            if requests.is_empty() {
                continue;
            }
            let Some(name) = claim_name(pod, pc)?.0 else { continue };
            let Some(info) = claims.get(&(ns.clone(), name.clone())) else {
                return Err(format!("ResourceClaim {name} is not prepared on this node"));
            };
            for r in requests {
                for id in info.cdi_devices(r) {
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether every claim the pod names is prepared for it in this run of
    /// the agent (then nothing needs the apiserver or a driver to start its
    /// containers again).
    pub fn prepared_for(&self, pod: &Pod) -> bool {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
        pod_claims(pod).iter().all(|pc| match claim_name(pod, pc) {
            Ok((None, _)) => true,
            Ok((Some(name), _)) => claims.get(&(ns.clone(), name)).is_some_and(|c| c.prepared && c.pods.contains(uid)),
            Err(_) => false,
        }) && self.inner.uses.lock().unwrap_or_else(|p| p.into_inner()).contains_key(uid)
    }

    /// Whether the pod still holds a claim here (its deletion must wait).
    pub fn holds(&self, pod_uid: &str) -> bool {
        self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).values().any(|c| c.pods.contains(pod_uid))
    }

    /// Lets go of the pod's claims (kubelet's UnprepareResources): the last
    /// pod of a claim has its drivers unprepare it. Idempotent.
    pub async fn unprepare(&self, pod_uid: &str) -> Result<(), String> {
        if self.inner.dry_run || !self.holds(pod_uid) {
            return Ok(());
        }
        let _op = self.inner.op.lock().await;
        let mut batches: BTreeMap<String, Vec<pb::Claim>> = BTreeMap::new();
        let mut last: Vec<Key> = Vec::new();
        {
            let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            for (key, info) in claims.iter_mut().filter(|(_, c)| c.pods.contains(pod_uid)) {
                if info.pods.len() > 1 {
                    info.pods.remove(pod_uid);
                    continue;
                }
                last.push(key.clone());
                for d in info.drivers.keys() {
                    batches.entry(d.clone()).or_default().push(pb::Claim { namespace: info.namespace.clone(), uid: info.uid.clone(), name: info.name.clone() });
                }
            }
        }
        for (driver, batch) in &batches {
            let called = async {
                let plugin = self.plugin(driver)?;
                let resp: pb::NodeUnprepareResourcesResponse = Self::call(&plugin, "NodeUnprepareResources", pb::NodeUnprepareResourcesRequest { claims: batch.clone() }).await?;
                check_answers("NodeUnprepareResources", driver, batch, resp.claims.iter().map(|(uid, r)| (uid, r.error.as_str())))
            };
            if let Err(e) = called.await {
                // What changed already (the pod let go of shared claims) is kept.
                let _ = self.save();
                let names: Vec<&str> = batch.iter().map(|c| c.name.as_str()).collect();
                return Err(format!("ResourceClaims {}: {e}", names.join(", ")));
            }
        }
        {
            let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            for key in &last {
                claims.remove(key);
            }
        }
        self.inner.uses.lock().unwrap_or_else(|p| p.into_inner()).remove(pod_uid);
        self.save().map_err(|e| format!("checkpoint ResourceClaim state: {e}"))
    }

    /// Pods that hold claims but are no longer wanted (`keep` says no):
    /// deleted while the agent was down, or whose worker ended without
    /// letting go. Their claims are unprepared in the background, once at a
    /// time, and tried again at the next call on failure.
    pub fn reconcile(&self, keep: &dyn Fn(&str) -> bool) {
        if self.inner.dry_run {
            return;
        }
        let stale: BTreeSet<String> =
            self.inner.claims.lock().unwrap_or_else(|p| p.into_inner()).values().flat_map(|c| c.pods.iter()).filter(|uid| !keep(uid)).cloned().collect();
        if stale.is_empty() || self.inner.reconciling.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            for uid in stale {
                if let Err(e) = me.unprepare(&uid).await {
                    tracing::warn!(pod_uid = %uid, error = %e, "unpreparing the claims of a pod that is gone failed; will retry");
                } else {
                    tracing::info!(pod_uid = %uid, "claims of a pod that is gone unprepared");
                }
            }
            me.inner.reconciling.store(false, Ordering::SeqCst);
        });
    }
}
