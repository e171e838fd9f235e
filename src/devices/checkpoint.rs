//! The device manager's checkpoint, `<root-dir>/device-plugins/
//! kubelet_internal_checkpoint`, in kubelet's layout: every container's
//! devices with the plugin's Allocate answer (protobuf, base64 in JSON), and
//! the devices each resource had. Its `Checksum` is nodelet's (FNV-32a of
//! the `Data` JSON): kubelet's hashes a Go object dump no other program can
//! reproduce, so a kubelet reading this file after nodelet starts without
//! it, as it does with any checkpoint it cannot verify.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::proto::v1beta1;
use super::{Assigned, PodEntry};

pub const FILE: &str = "kubelet_internal_checkpoint";

#[derive(Serialize, Deserialize, Default)]
struct File {
    #[serde(rename = "Data")]
    data: Data,
    #[serde(rename = "Checksum")]
    checksum: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Data {
    #[serde(rename = "PodDeviceEntries", default)]
    entries: Vec<Entry>,
    #[serde(rename = "RegisteredDevices", default)]
    registered: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "PodUID")]
    pod_uid: String,
    #[serde(rename = "ContainerName")]
    container: String,
    #[serde(rename = "ResourceName")]
    resource: String,
    /// By NUMA node; kubelet writes "-1" for devices without one.
    #[serde(rename = "DeviceIDs")]
    device_ids: BTreeMap<String, Vec<String>>,
    #[serde(rename = "AllocResp", default, with = "b64")]
    alloc_resp: Vec<u8>,
}

mod b64 {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        BASE64.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// The file's bytes for `pods` and the devices each resource has.
pub fn encode(pods: &BTreeMap<String, PodEntry>, registered: &BTreeMap<String, Vec<String>>) -> Vec<u8> {
    let mut entries = Vec::new();
    for (uid, e) in pods {
        for ((container, resource), a) in &e.devices {
            entries.push(Entry {
                pod_uid: uid.clone(),
                container: container.clone(),
                resource: resource.clone(),
                device_ids: BTreeMap::from([("-1".to_string(), a.ids.clone())]),
                alloc_resp: a.response.as_ref().map(|r| r.encode_to_vec()).unwrap_or_default(),
            });
        }
    }
    let data = Data { entries, registered: registered.clone() };
    let checksum = crate::files::fnv32a(&serde_json::to_vec(&data).unwrap_or_default());
    serde_json::to_vec(&File { data, checksum }).unwrap_or_default()
}

/// The pods' device assignments and the registered devices in `path`;
/// nothing when there is no file. A file that does not parse or whose
/// checksum does not match is an error naming it.
pub fn read(path: &Path) -> Result<(BTreeMap<String, PodEntry>, BTreeMap<String, Vec<String>>), String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let sum = crate::files::fnv32a(&serde_json::to_vec(&file.data).unwrap_or_default());
    if sum != file.checksum {
        return Err(format!("{}: checksum {} does not match its data ({sum}); a checkpoint of another program or a damaged one", path.display(), file.checksum));
    }
    let mut pods: BTreeMap<String, PodEntry> = BTreeMap::new();
    for e in file.data.entries {
        let response = if e.alloc_resp.is_empty() {
            None
        } else {
            Some(v1beta1::ContainerAllocateResponse::decode(e.alloc_resp.as_slice()).map_err(|err| format!("{}: the Allocate answer of pod {} container {}: {err}", path.display(), e.pod_uid, e.container))?)
        };
        let ids: Vec<String> = e.device_ids.into_values().flatten().collect();
        pods.entry(e.pod_uid).or_default().devices.insert((e.container, e.resource), Assigned { ids, response });
    }
    Ok((pods, file.data.registered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_and_answers_round_trip_and_a_damaged_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(FILE);
        let mut pods = BTreeMap::new();
        let mut e = PodEntry::default();
        let response = v1beta1::ContainerAllocateResponse {
            envs: [("DEVICES".to_string(), "d0,d1".to_string())].into_iter().collect(),
            mounts: vec![v1beta1::Mount { container_path: "/info".into(), host_path: "/var/lib/x".into(), read_only: true }],
            ..Default::default()
        };
        e.devices.insert(("c".into(), "example.com/dev".into()), Assigned { ids: vec!["d0".into(), "d1".into()], response: Some(response.clone()) });
        e.devices.insert(("init".into(), "example.com/dev".into()), Assigned { ids: vec!["d2".into()], response: None });
        pods.insert("uid-1".to_string(), e);
        let registered = BTreeMap::from([("example.com/dev".to_string(), vec!["d0".to_string(), "d1".into(), "d2".into()])]);
        std::fs::write(&path, encode(&pods, &registered)).unwrap();
        let (back, reg) = read(&path).unwrap();
        assert_eq!(reg, registered);
        assert_eq!(back["uid-1"].devices, pods["uid-1"].devices);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"PodDeviceEntries\"") && text.contains("\"DeviceIDs\":{\"-1\":[\"d0\",\"d1\"]}") && text.contains("\"AllocResp\""), "{text}");
        std::fs::write(&path, text.replace("[\"d0\",\"d1\"]", "[\"d0\",\"d9\"]")).unwrap();
        assert!(read(&path).unwrap_err().contains("checksum"));
        assert_eq!(read(&t.path().join("none")).unwrap().0.len(), 0);
    }
}
