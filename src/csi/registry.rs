//! The plugin watcher: every socket in `<root-dir>/plugins_registry` is a
//! plugin asking to register (node-driver-registrar puts one there for each
//! CSI driver; a DRA driver's kubelet plugin puts its own). Each is asked
//! `GetInfo`; a DRA plugin (type `DRAPlugin`) goes to the DRA manager
//! (dra/), which checks its name, endpoint and versions. A CSI plugin that speaks a 1.x
//! version is asked `NodeGetInfo` and `NodeGetCapabilities` on its endpoint,
//! recorded in [`Drivers`], published in the `CSINode` object and the Node's
//! annotation, and told the outcome (`NotifyRegistrationStatus`). A socket
//! that goes away unregisters its driver. The directory is looked at every
//! second (kubelet watches it with inotify; a scan is as good and survives
//! the directory being recreated).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::proto::csi;
use super::proto::registration::{InfoRequest, RegistrationStatus, registration_client::RegistrationClient};
use super::{Driver, Drivers, channel, request, status_text};

pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";

/// Where the registry publishes drivers: the apiserver and the node's name.
#[derive(Clone)]
pub struct Publisher {
    pub client: kube::Client,
    pub node_name: String,
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// What a registration socket registered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Registered {
    Csi(String),
    /// A DRA driver's plugin instance: the driver and its endpoint.
    Dra(String, PathBuf),
}

/// Asks one plugin and registers it; what it registered, or why not.
async fn register(socket: &Path, drivers: &Drivers, dra: Option<&crate::dra::Dra>, publisher: Option<&Publisher>) -> Result<Registered, String> {
    let ch = channel(socket).await?;
    let mut reg = RegistrationClient::new(ch);
    let info = reg.get_info(request(InfoRequest {})).await.map_err(|s| format!("GetInfo: {}", status_text(&s)))?.into_inner();
    if info.r#type == crate::dra::PLUGIN_TYPE
        && let Some(dra) = dra
    {
        let outcome = dra.register(&info.name, &info.endpoint, &info.supported_versions);
        let status = match &outcome {
            Ok(_) => RegistrationStatus { plugin_registered: true, error: String::new() },
            Err(e) => RegistrationStatus { plugin_registered: false, error: e.clone() },
        };
        if let Err(s) = reg.notify_registration_status(request(status)).await {
            tracing::warn!(plugin = %info.name, error = %status_text(&s), "NotifyRegistrationStatus failed");
        }
        return outcome.map(|p| Registered::Dra(p.driver, p.endpoint));
    }
    let outcome = async {
        if info.r#type != "CSIPlugin" {
            return Err(format!("plugin type {:?} is not handled by this node (only CSIPlugin and DRAPlugin)", info.r#type));
        }
        if info.name.is_empty() {
            return Err("the plugin gave no name".to_string());
        }
        // The name becomes a directory under plugins/kubernetes.io/csi.
        crate::files::component(&info.name, "name").map_err(|e| format!("the plugin's {e}"))?;
        if !info.supported_versions.iter().any(|v| v.trim_start_matches('v').starts_with("1.")) {
            return Err(format!("none of the plugin's versions {:?} is supported (1.x)", info.supported_versions));
        }
        let endpoint = PathBuf::from(info.endpoint.trim_start_matches("unix://"));
        if !endpoint.is_absolute() {
            return Err(format!("the plugin's endpoint {:?} is not an absolute socket path", info.endpoint));
        }
        let mut node = csi::node_client::NodeClient::new(channel(&endpoint).await?);
        let ni = node.node_get_info(request(csi::NodeGetInfoRequest {})).await.map_err(|s| format!("NodeGetInfo: {}", status_text(&s)))?.into_inner();
        if ni.node_id.is_empty() {
            return Err("NodeGetInfo gave an empty node_id".into());
        }
        let caps = node
            .node_get_capabilities(request(csi::NodeGetCapabilitiesRequest {}))
            .await
            .map_err(|s| format!("NodeGetCapabilities: {}", status_text(&s)))?
            .into_inner();
        let has = |t: csi::node_service_capability::rpc::Type| {
            caps.capabilities.iter().any(|c| matches!(&c.r#type, Some(csi::node_service_capability::Type::Rpc(r)) if r.r#type == t as i32))
        };
        let stage_unstage = has(csi::node_service_capability::rpc::Type::StageUnstageVolume);
        let single_node_multi_writer = has(csi::node_service_capability::rpc::Type::SingleNodeMultiWriter);
        let volume_stats = has(csi::node_service_capability::rpc::Type::GetVolumeStats);
        let driver = Driver {
            name: info.name.clone(),
            endpoint,
            node_id: ni.node_id,
            max_volumes: ni.max_volumes_per_node,
            topology: ni.accessible_topology.map(|t| t.segments.into_iter().collect()).unwrap_or_default(),
            stage_unstage,
            single_node_multi_writer,
            volume_stats,
        };
        if let Some(p) = publisher {
            publish(p, Some(&driver), &driver.name).await?;
        }
        Ok(driver)
    }
    .await;
    let status = match &outcome {
        Ok(_) => RegistrationStatus { plugin_registered: true, error: String::new() },
        Err(e) => RegistrationStatus { plugin_registered: false, error: e.clone() },
    };
    if let Err(s) = reg.notify_registration_status(request(status)).await {
        tracing::warn!(plugin = %info.name, error = %status_text(&s), "NotifyRegistrationStatus failed");
    }
    let driver = outcome?;
    drivers.insert(driver.clone());
    tracing::info!(driver = %driver.name, endpoint = %driver.endpoint.display(), node_id = %driver.node_id, socket = %socket.display(), "CSI driver registered");
    Ok(Registered::Csi(driver.name))
}

/// Puts `driver` into (or, with None, takes `name` out of) the node's
/// CSINode object and the Node's annotation and topology labels, as
/// kubelet's nodeinfomanager does.
pub async fn publish(p: &Publisher, driver: Option<&Driver>, name: &str) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(p.client.clone());
    let node = nodes.get(&p.node_name).await.map_err(|e| format!("get node {}: {e}", p.node_name))?;
    let mut ids: BTreeMap<String, String> = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ID_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    match driver {
        Some(d) => ids.insert(d.name.clone(), d.node_id.clone()),
        None => ids.remove(name),
    };
    let annotation = if ids.is_empty() { serde_json::Value::Null } else { serde_json::Value::String(serde_json::to_string(&ids).unwrap_or_default()) };
    let mut patch = serde_json::json!({"metadata": {"annotations": {NODE_ID_ANNOTATION: annotation}}});
    if let Some(d) = driver
        && !d.topology.is_empty()
    {
        patch["metadata"]["labels"] = serde_json::to_value(&d.topology).unwrap_or_default();
    }
    nodes
        .patch(&p.node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("patch node {}: {e}", p.node_name))?;

    let csinodes: Api<CSINode> = Api::all(p.client.clone());
    for _ in 0..5 {
        let existing = csinodes.get_opt(&p.node_name).await.map_err(|e| format!("get CSINode {}: {e}", p.node_name))?;
        let mut obj = existing.clone().unwrap_or_else(|| CSINode {
            metadata: kube::api::ObjectMeta {
                name: Some(p.node_name.clone()),
                owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: p.node_name.clone(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: CSINodeSpec { drivers: Vec::new() },
        });
        obj.spec.drivers.retain(|x| x.name != name);
        if let Some(d) = driver {
            let mut keys: Vec<String> = d.topology.keys().cloned().collect();
            keys.sort();
            obj.spec.drivers.push(CSINodeDriver {
                name: d.name.clone(),
                node_id: d.node_id.clone(),
                topology_keys: (!keys.is_empty()).then_some(keys),
                allocatable: (d.max_volumes > 0).then(|| VolumeNodeResources { count: Some(i32::try_from(d.max_volumes).unwrap_or(i32::MAX)) }),
            });
            obj.spec.drivers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let result = match existing {
            Some(_) => csinodes.replace(&p.node_name, &PostParams::default(), &obj).await.map(|_| ()),
            None => csinodes.create(&PostParams::default(), &obj).await.map(|_| ()),
        };
        match result {
            Ok(()) => return Ok(()),
            // Someone else wrote it meanwhile: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(format!("write CSINode {}: {e}", p.node_name)),
        }
    }
    Err(format!("write CSINode {}: conflicts kept coming", p.node_name))
}

/// Makes sure the node's CSINode object exists (kubelet creates it at start,
/// drivers or not).
pub async fn ensure_csinode(p: &Publisher) -> Result<(), String> {
    let csinodes: Api<CSINode> = Api::all(p.client.clone());
    if csinodes.get_opt(&p.node_name).await.map_err(|e| e.to_string())?.is_some() {
        return Ok(());
    }
    publish(p, None, "").await
}

/// Watches `dir` for plugin sockets until the process ends.
pub async fn watch(dir: PathBuf, drivers: Drivers, dra: Option<crate::dra::Dra>, publisher: Option<Publisher>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot make the plugin registration directory; CSI drivers cannot register");
    }
    // socket → the driver it registered (None: it failed; tried again when
    // the socket is replaced, or every minute).
    let mut seen: HashMap<PathBuf, (Option<Registered>, std::time::SystemTime, std::time::Instant)> = HashMap::new();
    let mut csinode_done = false;
    let mut csinode_outage = crate::kubeapi::Outage::default();
    loop {
        if !csinode_done && let Some(p) = &publisher {
            match ensure_csinode(p).await {
                Ok(()) => {
                    csinode_done = true;
                    csinode_outage.works("creating the node's CSINode object");
                }
                Err(e) => csinode_outage.failed("creating the node's CSINode object", &e),
            }
        }
        let mut present = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if is_socket(&path) {
                let mtime = std::fs::symlink_metadata(&path).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                present.push((path, mtime));
            }
        }
        for (path, mtime) in &present {
            let retry = match seen.get(path) {
                None => true,
                Some((_, m, _)) if m != mtime => true,
                Some((None, _, at)) => at.elapsed() >= Duration::from_secs(60),
                Some(_) => false,
            };
            if !retry {
                continue;
            }
            match register(path, &drivers, dra.as_ref(), publisher.as_ref()).await {
                Ok(r) => {
                    if let Registered::Dra(name, _) = &r {
                        tracing::info!(driver = %name, socket = %path.display(), "DRA driver registered");
                    }
                    seen.insert(path.clone(), (Some(r), *mtime, std::time::Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "plugin registration failed");
                    seen.insert(path.clone(), (None, *mtime, std::time::Instant::now()));
                }
            }
        }
        let gone: Vec<PathBuf> = seen.keys().filter(|p| !present.iter().any(|(q, _)| q == *p)).cloned().collect();
        for path in gone {
            if let Some((Some(Registered::Dra(name, endpoint)), _, _)) = seen.get(&path).cloned() {
                seen.remove(&path);
                if let Some(dra) = &dra {
                    dra.unregister(&name, &endpoint);
                }
                tracing::info!(driver = %name, socket = %path.display(), "DRA driver unregistered (its registration socket is gone)");
                continue;
            }
            if let Some((Some(Registered::Csi(name)), _, _)) = seen.remove(&path) {
                drivers.remove(&name);
                tracing::info!(driver = %name, socket = %path.display(), "CSI driver unregistered (its registration socket is gone)");
                if let Some(p) = &publisher
                    && let Err(e) = publish(p, None, &name).await
                {
                    tracing::warn!(driver = %name, error = %e, "cannot take the driver out of the CSINode object");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
