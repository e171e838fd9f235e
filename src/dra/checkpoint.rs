//! The DRA manager's checkpoint, `<root-dir>/dra_manager_state`, in
//! kubelet's layout (1.34): `{"Data": "<JSON>", "Checksum": <CRC-32 IEEE of
//! Data>}` where Data is a `DRACheckpoint` (`checkpoint.dra.kubelet.k8s.io/v1`)
//! listing each claim with the pods using it and every driver's devices. The
//! checksum is the same as kubelet's, so either agent reads the other's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ClaimInfo, PreparedDevice};

pub const FILE: &str = "dra_manager_state";
const KIND: &str = "DRACheckpoint";
const API_VERSION: &str = "checkpoint.dra.kubelet.k8s.io/v1";

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(rename = "Data")]
    data: String,
    #[serde(rename = "Checksum")]
    checksum: u32,
}

#[derive(Serialize, Deserialize)]
struct Data {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(rename = "apiVersion", default, skip_serializing_if = "String::is_empty")]
    api_version: String,
    #[serde(rename = "Entries", default, deserialize_with = "null_default")]
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "ClaimUID")]
    claim_uid: String,
    #[serde(rename = "ClaimName")]
    claim_name: String,
    #[serde(rename = "Namespace")]
    namespace: String,
    /// A Go set: each UID maps to `{}`.
    #[serde(rename = "PodUIDs", default, deserialize_with = "null_default")]
    pod_uids: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "DriverState", default, deserialize_with = "null_default")]
    driver_state: BTreeMap<String, DriverState>,
}

#[derive(Serialize, Deserialize, Default)]
struct DriverState {
    #[serde(rename = "Devices", default, deserialize_with = "null_default")]
    devices: Vec<Device>,
}

#[derive(Serialize, Deserialize)]
struct Device {
    #[serde(rename = "PoolName")]
    pool_name: String,
    #[serde(rename = "DeviceName")]
    device_name: String,
    #[serde(rename = "RequestNames", default, deserialize_with = "null_default")]
    request_names: Vec<String>,
    #[serde(rename = "CDIDeviceIDs", default, deserialize_with = "null_default")]
    cdi_device_ids: Vec<String>,
}

/// Go writes nil slices and maps as `null`.
fn null_default<'de, D: serde::Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub fn encode(claims: &[ClaimInfo]) -> Result<Vec<u8>, String> {
    let data = Data {
        kind: KIND.into(),
        api_version: API_VERSION.into(),
        entries: claims
            .iter()
            .map(|c| Entry {
                claim_uid: c.uid.clone(),
                claim_name: c.name.clone(),
                namespace: c.namespace.clone(),
                pod_uids: c.pods.iter().map(|p| (p.clone(), serde_json::Map::new())).collect(),
                driver_state: c
                    .drivers
                    .iter()
                    .map(|(driver, devices)| {
                        let devices = devices
                            .iter()
                            .map(|d| Device { pool_name: d.pool.clone(), device_name: d.device.clone(), request_names: d.requests.clone(), cdi_device_ids: d.cdi_ids.clone() })
                            .collect();
                        (driver.clone(), DriverState { devices })
                    })
                    .collect(),
            })
            .collect(),
    };
    let data = serde_json::to_string(&data).map_err(|e| e.to_string())?;
    let checksum = crc32fast::hash(data.as_bytes());
    serde_json::to_vec(&File { data, checksum }).map_err(|e| e.to_string())
}

pub fn decode(bytes: &[u8]) -> Result<Vec<ClaimInfo>, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| format!("not a DRA checkpoint: {e}"))?;
    let actual = crc32fast::hash(file.data.as_bytes());
    if actual != file.checksum {
        return Err(format!("checksum mismatch: the file says {}, its data hashes to {actual} (corrupt checkpoint)", file.checksum));
    }
    let data: Data = serde_json::from_str(&file.data).map_err(|e| format!("Data: {e}"))?;
    if !data.kind.is_empty() && (data.kind != KIND || data.api_version != API_VERSION) {
        return Err(format!("Data is a {} of {}, not a {KIND} of {API_VERSION}", data.kind, data.api_version));
    }
    Ok(data
        .entries
        .into_iter()
        .map(|e| ClaimInfo {
            uid: e.claim_uid,
            name: e.claim_name,
            namespace: e.namespace,
            pods: e.pod_uids.into_keys().collect::<BTreeSet<_>>(),
            drivers: e
                .driver_state
                .into_iter()
                .map(|(driver, st)| {
                    let devices = st
                        .devices
                        .into_iter()
                        .map(|d| PreparedDevice { pool: d.pool_name, device: d.device_name, requests: d.request_names, cdi_ids: d.cdi_device_ids })
                        .collect();
                    (driver, devices)
                })
                .collect(),
            // Asked again after a restart (drivers take it idempotently).
            prepared: false,
        })
        .collect())
}

/// The claims in the checkpoint (none when there is no file); an unreadable
/// or corrupt file is an error naming it: the agent does not start on a
/// state it cannot trust (prepared devices would be forgotten).
pub fn read(path: &Path) -> Result<Vec<ClaimInfo>, String> {
    match std::fs::read(path) {
        Ok(b) => decode(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the checkpoint atomically, readable by root only.
pub fn write(path: &Path, claims: &[ClaimInfo]) -> Result<(), String> {
    let bytes = encode(claims)?;
    crate::files::write_atomic(path, &bytes, 0o600).map_err(|e| format!("{}: {e}", path.display()))
}
