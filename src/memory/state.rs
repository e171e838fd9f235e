//! `<root-dir>/memory_manager_state`, in kubelet's layout:
//! `{"policyName":"Static","machineState":{"0":{"numberOfAssignments":1,"memoryMap":{"memory":{"total":..,
//! "systemReserved":..,"allocatable":..,"reserved":..,"free":..}},"cells":[0]}},"entries":{"<pod uid>":
//! {"<container>":[{"numaAffinity":[0],"type":"memory","size":..}]}},"checksum":N}`.
//! Its checksum is nodelet's (FNV-32a of the other fields' JSON); kubelet's
//! hashes a Go object dump. A state of another policy, of other NUMA nodes
//! or memory sizes (the machine or `reservedMemory` changed), or that does
//! not add up, is refused naming the file, as kubelet refuses to start on
//! one: drain the node and remove it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Assignments, Block, NodeState};

pub const FILE: &str = "memory_manager_state";

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
struct Table {
    total: u64,
    system_reserved: u64,
    allocatable: u64,
    reserved: u64,
    free: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    number_of_assignments: u32,
    memory_map: BTreeMap<String, Table>,
    cells: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileBlock {
    numa_affinity: Vec<u32>,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    policy_name: String,
    machine_state: BTreeMap<String, Node>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    entries: BTreeMap<String, BTreeMap<String, Vec<FileBlock>>>,
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(flatten)]
    body: Body,
    checksum: u64,
}

pub fn encode(a: &Assignments) -> Vec<u8> {
    let machine_state = a
        .machine
        .iter()
        .map(|(id, s)| {
            let t = Table { total: s.total, system_reserved: s.system_reserved, allocatable: s.allocatable, reserved: s.reserved, free: s.free };
            (id.to_string(), Node { number_of_assignments: s.assignments, memory_map: [("memory".to_string(), t)].into(), cells: s.cells.iter().copied().collect() })
        })
        .collect();
    let entries = a
        .entries
        .iter()
        .map(|(uid, cs)| {
            let cs = cs
                .iter()
                .map(|(c, bs)| (c.clone(), bs.iter().map(|b| FileBlock { numa_affinity: b.numa.iter().copied().collect(), kind: "memory".into(), size: b.size }).collect()))
                .collect();
            (uid.clone(), cs)
        })
        .collect();
    let body = Body { policy_name: "Static".into(), machine_state, entries };
    let checksum = crate::files::fnv32a(&serde_json::to_vec(&body).unwrap_or_default());
    serde_json::to_vec(&File { body, checksum }).unwrap_or_default()
}

/// The state in `path` checked against the machine as it is now (`fresh`:
/// no assignments); no file gives `fresh`.
pub fn read(path: &Path, fresh: &BTreeMap<u32, NodeState>) -> Result<Assignments, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Assignments { machine: fresh.clone(), entries: BTreeMap::new() }),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    decode(&bytes, fresh).map_err(|m| format!("{}: {m}: drain the node and remove the file, as with kubelet", path.display()))
}

pub fn decode(bytes: &[u8], fresh: &BTreeMap<u32, NodeState>) -> Result<Assignments, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.body.policy_name != "Static" {
        return Err(format!("the state is of policy {:?}, this node is configured with \"Static\"", file.body.policy_name));
    }
    let sum = crate::files::fnv32a(&serde_json::to_vec(&file.body).unwrap_or_default());
    if sum != file.checksum {
        return Err(format!("checksum {} does not match its data ({sum})", file.checksum));
    }
    let mut machine = BTreeMap::new();
    for (id, n) in file.body.machine_state {
        let id: u32 = id.parse().map_err(|_| format!("machineState: {id:?} is not a NUMA node id"))?;
        let Some(now) = fresh.get(&id) else { return Err(format!("machineState: NUMA node {id} is not on this machine")) };
        let t = n.memory_map.get("memory").copied().unwrap_or_default();
        if (t.total, t.system_reserved, t.allocatable) != (now.total, now.system_reserved, now.allocatable) {
            return Err(format!(
                "machineState[{id}]: memory total {} reserved {} allocatable {} was recorded, the machine has {} {} {} now",
                t.total, t.system_reserved, t.allocatable, now.total, now.system_reserved, now.allocatable
            ));
        }
        if t.reserved.checked_add(t.free) != Some(t.allocatable) {
            return Err(format!("machineState[{id}]: reserved {} and free {} do not add up to allocatable {}", t.reserved, t.free, t.allocatable));
        }
        machine.insert(id, NodeState { reserved: t.reserved, free: t.free, assignments: n.number_of_assignments, cells: n.cells.into_iter().collect(), ..now.clone() });
    }
    if machine.len() != fresh.len() {
        return Err(format!("machineState has {} NUMA nodes, the machine {}", machine.len(), fresh.len()));
    }
    let mut entries: BTreeMap<String, BTreeMap<String, Vec<Block>>> = BTreeMap::new();
    for (uid, cs) in file.body.entries {
        for (c, bs) in cs {
            let mut blocks = Vec::new();
            for b in bs.into_iter().filter(|b| b.kind == "memory") {
                let numa: BTreeSet<u32> = b.numa_affinity.into_iter().collect();
                if let Some(n) = numa.iter().find(|n| !fresh.contains_key(n)) {
                    return Err(format!("entries[{uid}][{c}]: NUMA node {n} is not on this machine"));
                }
                blocks.push(Block { numa, size: b.size });
            }
            entries.entry(uid.clone()).or_default().insert(c, blocks);
        }
    }
    // What the entries hold is what the machine has reserved.
    let held: u64 = entries.values().flat_map(|cs| cs.values().flatten()).map(|b| b.size).sum();
    let reserved: u64 = machine.values().map(|s| s.reserved).sum();
    if held != reserved {
        return Err(format!("the entries hold {held} bytes, the machine state has {reserved} reserved"));
    }
    Ok(Assignments { machine, entries })
}
