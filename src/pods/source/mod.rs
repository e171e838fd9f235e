//! Where desired pods come from. Each source sends its whole current set
//! (kubelet's SET operation) whenever it changes; the pod manager merges
//! them. Static sources (a manifest directory, a manifest URL) live here;
//! the apiserver source joins them in cluster mode.

pub mod file;
pub mod http;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use super::DesiredPod;
use super::manifest::ANNOTATION_CONFIG_SEEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceName {
    File,
    Http,
    Api,
}

impl SourceName {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceName::File => "file",
            SourceName::Http => "http",
            SourceName::Api => "api",
        }
    }
}

/// What one source reports: the complete set of pods it currently wants,
/// and its current errors (a manifest that does not parse, a URL that does
/// not answer).
#[derive(Debug, Clone)]
pub struct SourceUpdate {
    pub source: SourceName,
    /// `None`: the source has no set to give (it could not read its input);
    /// the set it gave last, if any, stands.
    pub pods: Option<Vec<DesiredPod>>,
    pub errors: Vec<String>,
}

/// Stamps `kubernetes.io/config.seen` with the time a pod (by UID) was first
/// seen, and keeps it stable across re-reads so a re-read is not a change.
#[derive(Default)]
pub struct SeenTimes(HashMap<String, String>);

impl SeenTimes {
    pub fn stamp(&mut self, pods: &mut [Pod]) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut live = HashMap::new();
        for pod in pods.iter_mut() {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let seen = self.0.get(&uid).cloned().unwrap_or_else(|| now.clone());
            pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(ANNOTATION_CONFIG_SEEN.into(), seen.clone());
            live.insert(uid, seen);
        }
        self.0 = live;
    }
}

/// Drops pods whose namespace/name an earlier pod already took, as kubelet
/// does; returns the kept pods and one message per dropped one.
pub fn drop_duplicates(pods: Vec<(String, Pod)>) -> (Vec<Pod>, Vec<String>) {
    let mut taken: HashMap<(String, String), String> = HashMap::new();
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    for (origin, pod) in pods {
        let key = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        if let Some(first) = taken.get(&key) {
            dropped.push(format!(
                "{origin}: metadata.name: Duplicate value: {:?}: pod {}/{} is already defined by {first}",
                key.1, key.0, key.1
            ));
            continue;
        }
        taken.insert(key, origin);
        out.push(pod);
    }
    (out, dropped)
}

/// Logs each problem once while it lasts: a message is logged when it first
/// appears for its key, and again only if it changed or went away and came
/// back.
#[derive(Default)]
pub struct Problems(HashMap<String, (String, bool)>);

impl Problems {
    /// Sets the current problem for `key` (`None`: it is fine now).
    pub fn set(&mut self, key: &str, problem: Option<String>, warn: bool) {
        match problem {
            None => {
                self.0.remove(key);
            }
            Some(msg) => {
                if self.0.get(key).map(|(m, _)| m) != Some(&msg) {
                    if warn {
                        tracing::warn!("{msg}");
                    } else {
                        tracing::error!("{msg}");
                    }
                    self.0.insert(key.to_string(), (msg, warn));
                }
            }
        }
    }

    /// The current errors (not the warnings), sorted.
    /// Every problem, errors and warnings, sorted.
    pub fn all(&self) -> Vec<String> {
        let mut e: Vec<String> = self.0.values().map(|(m, _)| m.clone()).collect();
        e.sort();
        e
    }

    pub fn errors(&self) -> Vec<String> {
        let mut e: Vec<String> = self.0.values().filter(|(_, warn)| !warn).map(|(m, _)| m.clone()).collect();
        e.sort();
        e
    }

    /// Forgets every key `keep` rejects.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.0.retain(|k, _| keep(k));
    }
}
