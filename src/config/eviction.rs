//! Node-pressure eviction settings (KubeletConfiguration `evictionHard`,
//! `evictionSoft`, `evictionSoftGracePeriod`, `evictionMaxPodGracePeriod`,
//! `evictionMinimumReclaim`, `evictionPressureTransitionPeriod`), as plain
//! data. An unset `evictionHard` takes kubelet's Linux defaults; a set one
//! replaces them whole, as in kubelet.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodefsAvailable,
        Signal::NodefsInodesFree,
        Signal::ImagefsAvailable,
        Signal::ImagefsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::NodefsInodesFree => "nodefs.inodesFree",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::ImagefsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A threshold's value: an absolute amount (bytes, inodes, PIDs) or a
/// percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Quantity(i64),
    Percent(f64),
}

impl Amount {
    fn parse(v: &str) -> Result<Self, String> {
        if let Some(p) = v.strip_suffix('%') {
            let pct: f64 = p.trim().parse().map_err(|_| format!("{v:?} is not a percentage"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("{v:?}: a percentage must be between 0% and 100%"));
            }
            return Ok(Amount::Percent(pct));
        }
        let q = crate::resources::parse(v).map_err(|e| format!("{v:?}: {e}"))?;
        if q < 0.0 {
            return Err(format!("{v:?} must not be negative"));
        }
        Ok(Amount::Quantity(if q >= i64::MAX as f64 { i64::MAX } else { q.ceil() as i64 }))
    }

    /// The amount against a capacity.
    pub fn of(self, capacity: i64) -> i64 {
        match self {
            Amount::Quantity(q) => q,
            Amount::Percent(p) => (capacity as f64 * p / 100.0).round() as i64,
        }
    }

    pub fn is_zero(self) -> bool {
        match self {
            Amount::Quantity(q) => q == 0,
            Amount::Percent(p) => p == 0.0,
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Quantity(q) => write!(f, "{q}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One threshold: `signal < value`, met at once (hard) or after being met
/// for `grace` (soft).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: Amount,
    /// Soft thresholds only.
    pub grace: Option<Duration>,
    /// `evictionMinimumReclaim`: reclaim this much beyond the threshold.
    pub min_reclaim: Option<Amount>,
}

/// The eviction manager's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    pub thresholds: Vec<Threshold>,
    /// `evictionMaxPodGracePeriod`: the longest grace a soft eviction gives.
    pub max_pod_grace_period: i64,
    /// `evictionPressureTransitionPeriod`: how long a condition stays after
    /// its threshold is no longer met.
    pub pressure_transition_period: Duration,
    /// How often signals are read (kubelet: 10 s).
    pub monitoring_interval: Duration,
}

/// kubelet's Linux default for `evictionHard`.
pub const DEFAULT_HARD: [(&str, &str); 4] =
    [("memory.available", "100Mi"), ("nodefs.available", "10%"), ("nodefs.inodesFree", "5%"), ("imagefs.available", "15%")];

/// The file's eviction fields, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvictionFields {
    pub hard: Option<BTreeMap<String, String>>,
    pub soft: Option<BTreeMap<String, String>>,
    pub soft_grace: Option<BTreeMap<String, String>>,
    pub minimum_reclaim: Option<BTreeMap<String, String>>,
    pub max_pod_grace_period: Option<i64>,
    pub pressure_transition_period: Option<Duration>,
}

impl EvictionConfig {
    pub fn resolve(f: &EvictionFields, file: &str) -> Result<Self, ConfigError> {
        let bad = |field: String, message: String| ConfigError::Field { file: file.into(), field, message };
        let parse_map = |name: &str, map: &BTreeMap<String, String>| -> Result<Vec<(Signal, Amount)>, ConfigError> {
            map.iter()
                .map(|(k, v)| {
                    let s = Signal::parse(k).ok_or_else(|| {
                        bad(format!("{name}.{k}"), format!("unknown signal: supported: {}", Signal::ALL.map(|s| s.as_str()).join(", ")))
                    })?;
                    let a = Amount::parse(v).map_err(|m| bad(format!("{name}.{k}"), m))?;
                    Ok((s, a))
                })
                .collect()
        };
        let defaults: BTreeMap<String, String> = DEFAULT_HARD.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let hard = parse_map("evictionHard", f.hard.as_ref().unwrap_or(&defaults))?;
        let soft = parse_map("evictionSoft", f.soft.as_ref().unwrap_or(&BTreeMap::new()))?;
        let reclaim: BTreeMap<Signal, Amount> =
            parse_map("evictionMinimumReclaim", f.minimum_reclaim.as_ref().unwrap_or(&BTreeMap::new()))?.into_iter().collect();
        let mut graces = BTreeMap::new();
        for (k, v) in f.soft_grace.iter().flatten() {
            let s = Signal::parse(k).ok_or_else(|| bad(format!("evictionSoftGracePeriod.{k}"), "unknown signal".into()))?;
            let d = super::duration::parse_go_duration(v).map_err(|e| bad(format!("evictionSoftGracePeriod.{k}"), e.to_string()))?;
            graces.insert(s, d);
        }
        let mut thresholds = Vec::new();
        for (signal, value) in hard {
            if !value.is_zero() {
                thresholds.push(Threshold { signal, value, grace: None, min_reclaim: reclaim.get(&signal).copied() });
            }
        }
        for (signal, value) in soft {
            let grace = graces.get(&signal).copied().ok_or_else(|| {
                bad(format!("evictionSoftGracePeriod.{}", signal.as_str()), "a soft eviction threshold needs a grace period".into())
            })?;
            if !value.is_zero() {
                thresholds.push(Threshold { signal, value, grace: Some(grace), min_reclaim: reclaim.get(&signal).copied() });
            }
        }
        let max_pod_grace_period = f.max_pod_grace_period.unwrap_or(0);
        if max_pod_grace_period < 0 {
            return Err(bad("evictionMaxPodGracePeriod".into(), format!("Invalid value: {max_pod_grace_period}: must not be negative")));
        }
        Ok(EvictionConfig {
            thresholds,
            max_pod_grace_period,
            pressure_transition_period: f.pressure_transition_period.unwrap_or(Duration::from_secs(300)),
            monitoring_interval: Duration::from_secs(10),
        })
    }
}

impl Default for EvictionConfig {
    fn default() -> Self {
        Self::resolve(&EvictionFields::default(), "defaults").expect("kubelet's defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_are_kubelets_and_a_set_map_replaces_them() {
        let d = EvictionConfig::default();
        assert_eq!(d.thresholds.len(), 4);
        assert!(d.thresholds.contains(&Threshold { signal: Signal::MemoryAvailable, value: Amount::Quantity(100 << 20), grace: None, min_reclaim: None }));
        assert!(d.thresholds.contains(&Threshold { signal: Signal::NodefsAvailable, value: Amount::Percent(10.0), grace: None, min_reclaim: None }));
        assert_eq!(d.pressure_transition_period, Duration::from_secs(300));
        let one = EvictionConfig::resolve(&EvictionFields { hard: map(&[("memory.available", "1Gi")]), ..Default::default() }, "f").unwrap();
        assert_eq!(one.thresholds.len(), 1);
    }

    #[test]
    fn soft_thresholds_need_a_grace_period_and_bad_values_name_the_field() {
        let f = EvictionFields { soft: map(&[("memory.available", "500Mi")]), ..Default::default() };
        let e = EvictionConfig::resolve(&f, "kubelet.yaml").unwrap_err().to_string();
        assert!(e.contains("evictionSoftGracePeriod.memory.available"), "{e}");
        let f = EvictionFields { hard: map(&[("memory.available", "lots")]), ..Default::default() };
        let e = EvictionConfig::resolve(&f, "kubelet.yaml").unwrap_err().to_string();
        assert!(e.contains("kubelet.yaml") && e.contains("evictionHard.memory.available"), "{e}");
        let f = EvictionFields { hard: map(&[("disk.free", "1Gi")]), ..Default::default() };
        assert!(EvictionConfig::resolve(&f, "k").unwrap_err().to_string().contains("unknown signal"));
        let f = EvictionFields {
            soft: map(&[("memory.available", "500Mi")]),
            soft_grace: map(&[("memory.available", "1m30s")]),
            minimum_reclaim: map(&[("memory.available", "0.5Gi")]),
            ..Default::default()
        };
        let c = EvictionConfig::resolve(&f, "k").unwrap();
        let soft = c.thresholds.iter().find(|t| t.grace.is_some()).unwrap();
        assert_eq!(soft.grace, Some(Duration::from_secs(90)));
        assert_eq!(soft.min_reclaim, Some(Amount::Quantity(512 << 20)));
    }
}
