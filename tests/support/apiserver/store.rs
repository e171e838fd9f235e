//! The object store behind the test apiserver: objects as JSON, one global
//! resourceVersion counter, a bounded history of changes for watches (older
//! versions are "expired": a watch from them gets 410 Gone), and a broadcast
//! of every change.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// How many changes the store keeps for watches to resume from.
const HISTORY: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub change: Change,
    /// "pods", "leases.coordination.k8s.io", ...
    pub resource: String,
    /// The object before the change (for selector transitions).
    pub old: Option<Value>,
    pub object: Value,
}

pub type Key = (String, String, String);

pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches must start at or after this version.
    oldest: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { objects: BTreeMap::new(), rv: 1, history: VecDeque::new(), oldest: 1, tx }
    }
}

impl Store {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(resource.to_string(), ns.to_string(), name.to_string()))
    }

    /// Objects of a resource, in one namespace or all.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| r == resource && ns.is_none_or(|want| want == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn record(&mut self, change: Change, resource: &str, old: Option<Value>, object: Value) {
        let ev = Arc::new(Event { rv: self.rv, change, resource: resource.to_string(), old, object });
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Stores an object under a new resourceVersion; returns it as stored.
    pub fn put(&mut self, resource: &str, ns: &str, name: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let old = self.objects.insert(key, obj.clone());
        let change = if old.is_some() { Change::Modified } else { Change::Added };
        self.record(change, resource, old, obj.clone());
        obj
    }

    pub fn remove(&mut self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let mut obj = self.objects.remove(&key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record(Change::Deleted, resource, None, obj.clone());
        Some(obj)
    }

    /// The changes after `rv`, or `None` when that version is expired.
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<Event>>> {
        if rv < self.oldest {
            return None;
        }
        Some(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Forgets all history, as etcd compaction does: every watch from an
    /// older version now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }
}
