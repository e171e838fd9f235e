//! Node Allocatable settings, as kubelet reads them: `kubeReserved`,
//! `systemReserved`, `reservedSystemCPUs`, `enforceNodeAllocatable` with
//! `kubeReservedCgroup` / `systemReservedCgroup`, and `podPidsLimit` (and
//! their flags). What they make of the node is in crate::allocatable.

use std::collections::{BTreeMap, BTreeSet};

use super::ConfigError;

/// What one category (kube or system daemons) sets aside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservation {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub pids: i64,
}

impl Reservation {
    pub fn is_zero(&self) -> bool {
        *self == Reservation::default()
    }
}

/// An `enforceNodeAllocatable` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Enforce {
    Pods,
    KubeReserved,
    SystemReserved,
    /// `kube-reserved-compressible`: only the kube reservation's CPU is
    /// enforced on its cgroup.
    KubeReservedCompressible,
    /// `system-reserved-compressible`: only the system reservation's CPU.
    SystemReservedCompressible,
}

/// The node allocatable settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatableConfig {
    pub kube_reserved: Reservation,
    pub system_reserved: Reservation,
    /// `reservedSystemCPUs` (`--reserved-cpus`): the CPUs set aside; their
    /// count replaces the cpu of both reservations.
    pub reserved_cpus: Vec<u32>,
    pub enforce: BTreeSet<Enforce>,
    pub kube_reserved_cgroup: Option<String>,
    pub system_reserved_cgroup: Option<String>,
    /// `podPidsLimit`: None for kubelet's -1 (no limit).
    pub pod_pids_limit: Option<i64>,
}

impl Default for AllocatableConfig {
    fn default() -> Self {
        AllocatableConfig {
            kube_reserved: Reservation::default(),
            system_reserved: Reservation::default(),
            reserved_cpus: Vec::new(),
            enforce: BTreeSet::from([Enforce::Pods]),
            kube_reserved_cgroup: None,
            system_reserved_cgroup: None,
            pod_pids_limit: None,
        }
    }
}

/// The settings as the file and the flags give them, unchecked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocatableFields {
    pub kube_reserved: Option<BTreeMap<String, String>>,
    pub system_reserved: Option<BTreeMap<String, String>>,
    pub reserved_system_cpus: Option<String>,
    pub enforce_node_allocatable: Option<Vec<String>>,
    pub kube_reserved_cgroup: Option<String>,
    pub system_reserved_cgroup: Option<String>,
    pub pod_pids_limit: Option<i64>,
}

impl AllocatableFields {
    /// `other`'s settings where it has them (flags over the file).
    pub fn overlay(&self, other: &AllocatableFields) -> AllocatableFields {
        AllocatableFields {
            kube_reserved: other.kube_reserved.clone().or_else(|| self.kube_reserved.clone()),
            system_reserved: other.system_reserved.clone().or_else(|| self.system_reserved.clone()),
            reserved_system_cpus: other.reserved_system_cpus.clone().or_else(|| self.reserved_system_cpus.clone()),
            enforce_node_allocatable: other.enforce_node_allocatable.clone().or_else(|| self.enforce_node_allocatable.clone()),
            kube_reserved_cgroup: other.kube_reserved_cgroup.clone().or_else(|| self.kube_reserved_cgroup.clone()),
            system_reserved_cgroup: other.system_reserved_cgroup.clone().or_else(|| self.system_reserved_cgroup.clone()),
            pod_pids_limit: other.pod_pids_limit.or(self.pod_pids_limit),
        }
    }
}

/// Parses `cpu=100m,memory=1Gi` (the `--kube-reserved` form).
pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not name=quantity"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Parses a Linux CPU list (`0-3,6`), as `--reserved-cpus` takes it.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("{part:?} is not a CPU number or range"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 65_535 {
                    return Err(format!("{part:?} is not a CPU range"));
                }
                cpus.extend(a..=b);
            }
            None => {
                cpus.insert(num(part)?);
            }
        }
    }
    Ok(cpus.into_iter().collect())
}

fn reservation(field: &str, map: &BTreeMap<String, String>, bad: &dyn Fn(String, String) -> ConfigError) -> Result<Reservation, ConfigError> {
    let mut r = Reservation::default();
    for (k, v) in map {
        let q = crate::resources::parse(v).map_err(|e| bad(format!("{field}.{k}"), format!("Invalid value: {v:?}: {e}")))?;
        if q < 0.0 {
            return Err(bad(format!("{field}.{k}"), format!("Invalid value: {v:?}: must not be negative")));
        }
        let whole = |x: f64| if x >= i64::MAX as f64 { i64::MAX } else { x.ceil() as i64 };
        match k.as_str() {
            "cpu" => r.cpu_millis = whole(q * 1000.0),
            "memory" => r.memory_bytes = whole(q),
            "ephemeral-storage" => r.ephemeral_storage_bytes = whole(q),
            "pid" => r.pids = whole(q),
            other => {
                return Err(bad(
                    format!("{field}.{other}"),
                    "Unsupported value: supported resources: \"cpu\", \"memory\", \"ephemeral-storage\", \"pid\"".into(),
                ));
            }
        }
    }
    Ok(r)
}

impl AllocatableConfig {
    /// Checks and resolves the settings; `source` names the file (or
    /// "flags") in errors.
    pub fn resolve(f: &AllocatableFields, source: &str) -> Result<Self, ConfigError> {
        let bad = |field: String, message: String| ConfigError::Field { file: source.into(), field, message };
        let mut c = AllocatableConfig::default();
        if let Some(m) = &f.kube_reserved {
            c.kube_reserved = reservation("kubeReserved", m, &bad)?;
        }
        if let Some(m) = &f.system_reserved {
            c.system_reserved = reservation("systemReserved", m, &bad)?;
        }
        if let Some(list) = &f.reserved_system_cpus {
            c.reserved_cpus = parse_cpu_list(list).map_err(|e| bad("reservedSystemCPUs".into(), format!("Invalid value: {list:?}: {e}")))?;
        }
        if !c.reserved_cpus.is_empty() {
            // As kubelet: the reserved CPUs' count is the system
            // reservation's cpu, and the kube reservation has none.
            c.kube_reserved.cpu_millis = 0;
            c.system_reserved.cpu_millis = c.reserved_cpus.len() as i64 * 1000;
        }
        if let Some(list) = &f.enforce_node_allocatable {
            c.enforce.clear();
            for (i, e) in list.iter().enumerate() {
                match e.as_str() {
                    "pods" => c.enforce.insert(Enforce::Pods),
                    "kube-reserved" => c.enforce.insert(Enforce::KubeReserved),
                    "system-reserved" => c.enforce.insert(Enforce::SystemReserved),
                    "kube-reserved-compressible" => c.enforce.insert(Enforce::KubeReservedCompressible),
                    "system-reserved-compressible" => c.enforce.insert(Enforce::SystemReservedCompressible),
                    "none" if list.len() == 1 => false,
                    "none" => return Err(bad(format!("enforceNodeAllocatable[{i}]"), "Invalid value: \"none\": none cannot be combined with other values".into())),
                    other => {
                        return Err(bad(
                            format!("enforceNodeAllocatable[{i}]"),
                            format!("Unsupported value: {other:?}: supported values: \"pods\", \"kube-reserved\", \"system-reserved\", \"kube-reserved-compressible\", \"system-reserved-compressible\", \"none\""),
                        ));
                    }
                };
            }
        }
        // A cgroup name is a path below the cgroup mount: no `..` or `.`
        // component may take the limits' writes out of it.
        let cgroup = |v: &Option<String>, field: &str| -> Result<Option<String>, ConfigError> {
            let Some(name) = v.clone().filter(|s| !s.is_empty()) else { return Ok(None) };
            if !crate::names::is_cgroup_name(&name) {
                return Err(bad(field.into(), format!("Invalid value: {name:?}: a cgroup path below the cgroup mount, without \".\" or \"..\"")));
            }
            Ok(Some(name))
        };
        c.kube_reserved_cgroup = cgroup(&f.kube_reserved_cgroup, "kubeReservedCgroup")?;
        c.system_reserved_cgroup = cgroup(&f.system_reserved_cgroup, "systemReservedCgroup")?;
        for (whole, compressible, name, field, cgroup) in [
            (Enforce::KubeReserved, Enforce::KubeReservedCompressible, "kube-reserved", "kubeReservedCgroup", &c.kube_reserved_cgroup),
            (Enforce::SystemReserved, Enforce::SystemReservedCompressible, "system-reserved", "systemReservedCgroup", &c.system_reserved_cgroup),
        ] {
            if c.enforce.contains(&whole) && c.enforce.contains(&compressible) {
                return Err(bad(
                    "enforceNodeAllocatable".into(),
                    format!("Invalid value: \"{name}\" and \"{name}-compressible\" cannot both be enforced"),
                ));
            }
            if c.enforce.contains(&whole) && cgroup.is_none() {
                return Err(bad(field.into(), format!("Required value: enforceNodeAllocatable has \"{name}\"")));
            }
            if c.enforce.contains(&compressible) && cgroup.is_none() {
                return Err(bad(field.into(), format!("Required value: enforceNodeAllocatable has \"{name}-compressible\"")));
            }
        }
        c.pod_pids_limit = match f.pod_pids_limit {
            None | Some(-1) => None,
            Some(n) if n > 0 => Some(n),
            Some(n) => return Err(bad("podPidsLimit".into(), format!("Invalid value: {n}: must be -1 (no limit) or more than 0"))),
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(yaml: &str) -> AllocatableFields {
        let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let map = |k: &str| v.get(k).map(|m| serde_json::from_value::<BTreeMap<String, String>>(m.clone()).unwrap());
        AllocatableFields {
            kube_reserved: map("kubeReserved"),
            system_reserved: map("systemReserved"),
            reserved_system_cpus: v.get("reservedSystemCPUs").and_then(|s| s.as_str()).map(Into::into),
            enforce_node_allocatable: v.get("enforceNodeAllocatable").map(|l| serde_json::from_value(l.clone()).unwrap()),
            kube_reserved_cgroup: v.get("kubeReservedCgroup").and_then(|s| s.as_str()).map(Into::into),
            system_reserved_cgroup: v.get("systemReservedCgroup").and_then(|s| s.as_str()).map(Into::into),
            pod_pids_limit: v.get("podPidsLimit").and_then(|s| s.as_i64()),
        }
    }

    #[test]
    fn reservations_enforcement_and_their_errors() {
        let c = AllocatableConfig::resolve(&fields("{kubeReserved: {cpu: 100m, memory: 256Mi, pid: '1000'}, systemReserved: {cpu: '0.5', ephemeral-storage: 1Gi}, podPidsLimit: 4096}"), "k.yaml").unwrap();
        assert_eq!(c.kube_reserved, Reservation { cpu_millis: 100, memory_bytes: 256 << 20, ephemeral_storage_bytes: 0, pids: 1000 });
        assert_eq!(c.system_reserved, Reservation { cpu_millis: 500, memory_bytes: 0, ephemeral_storage_bytes: 1 << 30, pids: 0 });
        assert_eq!(c.enforce, BTreeSet::from([Enforce::Pods]), "kubelet's default");
        assert_eq!(c.pod_pids_limit, Some(4096));
        let cpus = AllocatableConfig::resolve(&fields("{kubeReserved: {cpu: '1'}, systemReserved: {cpu: 100m}, reservedSystemCPUs: '0-1,3'}"), "k.yaml").unwrap();
        assert_eq!((cpus.kube_reserved.cpu_millis, cpus.system_reserved.cpu_millis), (0, 3000), "the reserved CPUs' count replaces both");
        assert!(AllocatableConfig::resolve(&fields("{enforceNodeAllocatable: [none]}"), "k").unwrap().enforce.is_empty());
        let err = |y: &str| AllocatableConfig::resolve(&fields(y), "k.yaml").unwrap_err().to_string();
        assert_eq!(err("{kubeReserved: {gpu: '1'}}"), "k.yaml: kubeReserved.gpu: Unsupported value: supported resources: \"cpu\", \"memory\", \"ephemeral-storage\", \"pid\"");
        assert!(err("{systemReserved: {memory: '-1Gi'}}").contains("systemReserved.memory: Invalid value: \"-1Gi\": must not be negative"));
        assert!(err("{enforceNodeAllocatable: [pods, system-reserved]}").contains("systemReservedCgroup: Required value"));
        assert!(err("{enforceNodeAllocatable: [kube-reserved-compressible]}").contains("kubeReservedCgroup: Required value"));
        assert!(err("{enforceNodeAllocatable: [kube-reserved], kubeReservedCgroup: /../../etc}").contains("kubeReservedCgroup: Invalid value"));
        assert!(err("{systemReservedCgroup: system.slice/./x}").contains("systemReservedCgroup: Invalid value"));
        assert!(err("{enforceNodeAllocatable: [kube-reserved, kube-reserved-compressible], kubeReservedCgroup: /k}").contains("cannot both be enforced"));
        assert!(err("{enforceNodeAllocatable: [pods, none]}").contains("enforceNodeAllocatable[1]"));
        assert!(err("{podPidsLimit: 0}").contains("podPidsLimit: Invalid value: 0"));
        assert!(err("{reservedSystemCPUs: '3-1'}").contains("reservedSystemCPUs"));
        assert_eq!(parse_pairs("cpu=100m, memory=1Gi").unwrap(), BTreeMap::from([("cpu".into(), "100m".into()), ("memory".into(), "1Gi".into())]));
        assert!(parse_pairs("cpu").is_err());
    }
}
