//! Events: one storage served by the core API (v1) and events.k8s.io/v1, as
//! the apiserver keeps them. Objects are stored in the core form and
//! converted field by field for events.k8s.io; an Event created or changed
//! through events.k8s.io/v1 is validated as strictly as the apiserver
//! validates it (ValidateEventCreate / ValidateEventUpdate).

use serde_json::Value;

/// events.k8s.io/v1 field, core/v1 field.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

/// The apiserver's limit on an Event's note.
const NOTE_LIMIT: usize = 1024;

fn rename(mut v: Value, to_v1: bool) -> Value {
    if let Some(m) = v.as_object_mut() {
        for (new, core) in RENAMED {
            let (from, to) = if to_v1 { (core, new) } else { (new, core) };
            if let Some(x) = m.remove(*from) {
                m.insert(to.to_string(), x);
            }
        }
    }
    v
}

/// A stored (core) Event as events.k8s.io/v1 serves it.
pub fn to_v1(v: Value) -> Value {
    rename(v, true)
}

/// An events.k8s.io/v1 Event in the stored (core) form.
pub fn to_core(v: Value) -> Value {
    rename(v, false)
}

fn set(v: &Value, field: &str) -> bool {
    !v[field].is_null() && v[field] != Value::String(String::new())
}

/// ValidateEventCreate for events.k8s.io/v1: the fields a reporter must set,
/// the deprecated ones it must leave unset, a valid series.
pub fn validate_create(v: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        if !set(v, field) {
            errs.push(format!("{field}: Required value"));
        }
    }
    for field in ["action", "reason", "reportingInstance"] {
        if v[field].as_str().is_some_and(|s| s.len() > 128) {
            errs.push(format!("{field}: Too long: may not be more than 128 bytes"));
        }
    }
    if v["note"].as_str().is_some_and(|s| s.len() > NOTE_LIMIT) {
        errs.push(format!("note: Invalid value: \"\": can have at most {NOTE_LIMIT} characters"));
    }
    match v["type"].as_str() {
        Some("Normal" | "Warning") => {}
        other => errs.push(format!("type: Invalid value: {other:?}: has invalid value")),
    }
    // As the apiserver: a zero count and an empty source are unset.
    let source = &v["deprecatedSource"];
    let unset = [
        ("deprecatedFirstTimestamp", !set(v, "deprecatedFirstTimestamp")),
        ("deprecatedLastTimestamp", !set(v, "deprecatedLastTimestamp")),
        ("deprecatedCount", v["deprecatedCount"].as_i64().unwrap_or(0) == 0),
        ("deprecatedSource", !set(source, "component") && !set(source, "host")),
    ];
    for (field, ok) in unset {
        if !ok {
            errs.push(format!("{field}: Invalid value: \"\": needs to be unset"));
        }
    }
    let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
    if v["regarding"]["namespace"].as_str().unwrap_or_default().is_empty() && !["", "default", "kube-system"].contains(&ns) {
        errs.push("regarding.namespace: Invalid value: \"\": does not match event.namespace".to_string());
    }
    errs.extend(series(v));
    if errs.is_empty() { Ok(()) } else { Err(errs.join(", ")) }
}

fn series(v: &Value) -> Vec<String> {
    let s = &v["series"];
    if s.is_null() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if s["count"].as_i64().is_none_or(|c| c < 2) {
        errs.push("series.count: Invalid value: should be at least 2".to_string());
    }
    if s["lastObservedTime"].is_null() {
        errs.push("series.lastObservedTime: Required value".to_string());
    }
    errs
}

/// ValidateEventUpdate for events.k8s.io/v1 (both in v1 form): only the
/// series may change.
pub fn validate_update(old: &Value, new: &Value) -> Result<(), String> {
    let mut errs = Vec::new();
    for field in [
        "action",
        "reason",
        "regarding",
        "related",
        "reportingController",
        "reportingInstance",
        "type",
        "eventTime",
        "note",
        "deprecatedSource",
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
    ] {
        if old[field] != new[field] {
            errs.push(format!("{field}: Invalid value: field is immutable"));
        }
    }
    if old["series"] != new["series"] {
        errs.extend(series(new));
    }
    if errs.is_empty() { Ok(()) } else { Err(errs.join(", ")) }
}
