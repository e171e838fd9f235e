//! CSI node plugins, as kubelet finds and uses them: drivers register through
//! the plugin registration socket directory (`<root-dir>/plugins_registry`,
//! the `pluginregistration.Registration` gRPC API), nodelet asks each for its
//! node information, publishes it in the `CSINode` object and the Node's
//! `csi.volume.kubernetes.io/nodeid` annotation, and keeps a connection to
//! its CSI endpoint for the volume manager (src/volumes/csi.rs).
//!
//! The protocols are generated from proto/csi/v1/csi.proto (the CSI spec)
//! and proto/pluginregistration/v1/api.proto.

pub mod in_use;
pub mod registry;

pub use in_use::InUse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub mod proto {
    /// The CSI spec, v1.
    pub mod csi {
        #![allow(clippy::all)]
        tonic::include_proto!("csi.v1");
    }
    /// kubelet's plugin registration API.
    pub mod registration {
        #![allow(clippy::all)]
        tonic::include_proto!("pluginregistration");
    }
}

use proto::csi;

/// How long one CSI call may take (kubelet's csiTimeout is 2 minutes for
/// stage and publish; a test driver answers in milliseconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A registered driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    pub name: String,
    /// The CSI endpoint (a unix socket).
    pub endpoint: PathBuf,
    /// NodeGetInfo's answer.
    pub node_id: String,
    pub max_volumes: i64,
    pub topology: BTreeMap<String, String>,
    /// NodeGetCapabilities: STAGE_UNSTAGE_VOLUME.
    pub stage_unstage: bool,
    /// NodeGetCapabilities: SINGLE_NODE_MULTI_WRITER (the access modes are
    /// then mapped with the single-node multi/single writer pair).
    pub single_node_multi_writer: bool,
    /// NodeGetCapabilities: GET_VOLUME_STATS (NodeGetVolumeStats answers).
    pub volume_stats: bool,
}

/// The registered drivers, shared by the registry and the volume manager.
#[derive(Debug, Clone, Default)]
pub struct Drivers(Arc<RwLock<BTreeMap<String, Driver>>>);

impl Drivers {
    pub fn get(&self, name: &str) -> Option<Driver> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    fn insert(&self, d: Driver) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(d.name.clone(), d);
    }

    fn remove(&self, name: &str) -> Option<Driver> {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }
}

/// A gRPC channel to a unix socket.
pub async fn channel(path: &std::path::Path) -> Result<tonic::transport::Channel, String> {
    crate::runtime::remote::unix_channel(&format!("unix://{}", path.display())).await.map_err(|e| e.to_string())
}

/// The CSI node service of a driver.
pub async fn node_client(d: &Driver) -> Result<csi::node_client::NodeClient<tonic::transport::Channel>, String> {
    Ok(csi::node_client::NodeClient::new(channel(&d.endpoint).await.map_err(|e| format!("CSI driver {}: {e}", d.name))?))
}

/// A request with the CSI call deadline.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// A gRPC status in kubelet's words: `rpc error: code = X desc = Y`.
pub fn status_text(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}
