//! `featureGates` (and `--feature-gates`), as kubelet v1.34 takes them:
//! every gate that kubelet knows is accepted, an unknown one is an error
//! ("unrecognized feature gate"), and so is setting a gate that is locked
//! to its default. nodelet acts on the gates in [`HONOURED`]; another gate
//! set away from its default is accepted with one warning saying nodelet
//! behaves as with the default.

use std::collections::BTreeMap;

use super::ConfigError;

/// kubelet v1.34's gates: `Name default locked`, one a line
/// (feature_gates.txt; where it comes from is at its end).
const TABLE: &str = include_str!("feature_gates.txt");

/// Gates that older documents still name, removed from kubelet long ago:
/// the refusal says so.
const REMOVED: &[(&str, &str)] = &[("PodPriority", "pod priority is GA since 1.14 and needs no gate; remove it")];

/// The gates nodelet changes its behaviour for.
pub const HONOURED: &[&str] = &["KubeletFineGrainedAuthz"];

/// One known gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub default: bool,
    pub locked: bool,
}

/// The known gates, by name.
pub fn known() -> &'static BTreeMap<&'static str, Gate> {
    static KNOWN: std::sync::OnceLock<BTreeMap<&'static str, Gate>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(parse)
}

fn parse() -> BTreeMap<&'static str, Gate> {
    TABLE
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let default = w.next()? == "true";
            let locked = w.next()? == "true";
            Some((name, Gate { default, locked }))
        })
        .collect()
}

/// The gates as set, resolved against the known ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureGates {
    set: BTreeMap<String, bool>,
}

impl FeatureGates {
    /// Checks `set` (the file's map, then the flag's over it); `source`
    /// names where they came from in errors.
    pub fn resolve(set: &BTreeMap<String, bool>, source: &str, field: &str) -> Result<Self, ConfigError> {
        let known = known();
        let bad = |name: &str, message: String| ConfigError::Field { file: source.into(), field: format!("{field}.{name}"), message };
        for (name, value) in set {
            if name == "AllAlpha" || name == "AllBeta" {
                continue;
            }
            let Some(g) = known.get(name.as_str()) else {
                let hint = REMOVED.iter().find(|(n, _)| n == name).map_or(String::new(), |(_, h)| format!(" ({h})"));
                return Err(bad(name, format!("unrecognized feature gate: {name}{hint}")));
            };
            if g.locked && *value != g.default {
                return Err(bad(name, format!("cannot set feature gate {name} to {value}, feature is locked to {}", g.default)));
            }
        }
        for (name, value) in set {
            if let Some(g) = known.get(name.as_str())
                && *value != g.default
                && !HONOURED.contains(&name.as_str())
            {
                tracing::warn!(gate = %name, value, "feature gate accepted; nodelet behaves as with its default ({})", g.default);
            }
        }
        Ok(FeatureGates { set: set.clone() })
    }

    /// Whether a known gate is on (its default unless set).
    pub fn enabled(&self, name: &str) -> bool {
        self.set.get(name).copied().unwrap_or_else(|| known().get(name).is_some_and(|g| g.default))
    }

    pub fn as_map(&self) -> &BTreeMap<String, bool> {
        &self.set
    }
}

/// `A=true,B=false` (the `--feature-gates` form).
pub fn parse_flag(text: &str) -> Result<BTreeMap<String, bool>, String> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("missing bool value for {pair}"))?;
        let v = match v.trim() {
            "true" | "True" | "TRUE" | "1" | "t" | "T" => true,
            "false" | "False" | "FALSE" | "0" | "f" | "F" => false,
            other => return Err(format!("invalid value of {k}={other}, err: strconv.ParseBool: parsing {other:?}: invalid syntax")),
        };
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gates_unknown_gates_and_locked_ones() {
        let k = known();
        assert_eq!(k["KubeletFineGrainedAuthz"], Gate { default: true, locked: false });
        let set = |pairs: &[(&str, bool)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        let g = FeatureGates::resolve(&set(&[("KubeletFineGrainedAuthz", false)]), "k.yaml", "featureGates").unwrap();
        assert!(!g.enabled("KubeletFineGrainedAuthz"));
        assert!(FeatureGates::default().enabled("KubeletFineGrainedAuthz"), "on by default in 1.34");
        assert!(k.len() > 200, "kubelet v1.34 knows about 200 gates: {}", k.len());
        let e = FeatureGates::resolve(&set(&[("NoSuchGate", true)]), "k.yaml", "featureGates").unwrap_err();
        assert_eq!(e.to_string(), "k.yaml: featureGates.NoSuchGate: unrecognized feature gate: NoSuchGate");
        let e = FeatureGates::resolve(&set(&[("PodPriority", true)]), "--feature-gates", "featureGates").unwrap_err();
        assert!(e.to_string().ends_with("unrecognized feature gate: PodPriority (pod priority is GA since 1.14 and needs no gate; remove it)"), "{e}");
        // Gates of the generic apiserver, client-go and component-base, which kubelet registers too.
        assert!(FeatureGates::resolve(&set(&[("APIServerTracing", true), ("ContextualLogging", true), ("WatchListClient", false)]), "k.yaml", "featureGates").is_ok());
        let e = FeatureGates::resolve(&set(&[("SidecarContainers", false)]), "k.yaml", "featureGates").unwrap_err();
        assert_eq!(e.to_string(), "k.yaml: featureGates.SidecarContainers: cannot set feature gate SidecarContainers to false, feature is locked to true");
        assert!(FeatureGates::resolve(&set(&[("AllAlpha", false)]), "k.yaml", "featureGates").is_ok());
        assert_eq!(parse_flag("A=true, B=false").unwrap(), set(&[("A", true), ("B", false)]));
        assert!(parse_flag("A").is_err());
        assert!(parse_flag("A=yes").is_err());
    }
}
