//! `<root-dir>/cpu_manager_state`, in kubelet's layout:
//! `{"policyName":"static","defaultCpuSet":"0,3","entries":{"<pod uid>":{"<container>":"1-2"}},"checksum":N}`.
//! Its checksum is nodelet's (FNV-32a of the other fields' JSON); kubelet's
//! hashes a Go object dump. A state of another policy is refused, as kubelet
//! refuses to start on one: the operator removes the file after draining.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Assignments, CpuSet, format, parse};

pub const FILE: &str = "cpu_manager_state";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    policy_name: String,
    default_cpu_set: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    entries: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    body: Body,
    checksum: u64,
}

pub fn encode(a: &Assignments) -> Vec<u8> {
    let entries = a.entries.iter().map(|(uid, c)| (uid.clone(), c.iter().map(|(n, s)| (n.clone(), format(s))).collect())).collect();
    let body = Body { policy_name: "static".into(), default_cpu_set: format(&a.default_set()), entries };
    let checksum = crate::files::fnv32a(&serde_json::to_vec(&body).unwrap_or_default());
    serde_json::to_vec(&File { body, checksum }).unwrap_or_default()
}

/// The exclusive assignments in `path` (none without a file).
pub fn read(path: &Path, online: &CpuSet) -> Result<BTreeMap<String, BTreeMap<String, CpuSet>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let named = |m: String| format!("{}: {m}", path.display());
    let file: File = serde_json::from_slice(&bytes).map_err(|e| named(e.to_string()))?;
    if file.body.policy_name != "static" {
        return Err(named(format!(
            "the state is of policy {:?}, this node is configured with \"static\": drain the node and remove the file, as with kubelet",
            file.body.policy_name
        )));
    }
    let sum = crate::files::fnv32a(&serde_json::to_vec(&file.body).unwrap_or_default());
    if sum != file.checksum {
        return Err(named(format!("checksum {} does not match its data ({sum}): drain the node and remove the file", file.checksum)));
    }
    let mut out: BTreeMap<String, BTreeMap<String, CpuSet>> = BTreeMap::new();
    for (uid, cs) in file.body.entries {
        for (name, text) in cs {
            let set = parse(&text).map_err(|e| named(format!("entries[{uid}][{name}]: {e}")))?;
            if let Some(cpu) = set.iter().find(|c| !online.contains(c)) {
                return Err(named(format!("entries[{uid}][{name}]: CPU {cpu} is not online on this node")));
            }
            out.entry(uid.clone()).or_default().insert(name, set);
        }
    }
    Ok(out)
}
