//! The three patch types the apiserver accepts for built-in objects.

use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// The merge keys of the lists the built-in types declare with
/// `patchStrategy: merge` (the ones nodelet's objects carry). Lists without
/// one (container statuses among them) are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" => "type",
        "addresses" => "type",
        "containers" | "initContainers" | "ephemeralContainers" => "name",
        "env" | "volumes" | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        "ownerReferences" => "uid",
        "podIPs" | "hostIPs" => "ip",
        "taints" => "key",
        _ => return None,
    })
}

/// Kubernetes strategic merge patch: like a merge patch, but lists with a
/// merge key are merged element by element, and `$patch: delete` removes an
/// element, and a `{"$patch": "replace"}` element replaces the whole list.
/// `$setElementOrder/...` directives are accepted and ignored.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k.starts_with("$retainKeys") || k == "$patch" {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(_), Value::Array(items))
                if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) =>
            {
                let kept: Vec<Value> =
                    items.iter().filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace")).cloned().collect();
                t.insert(k.clone(), Value::Array(kept));
            }
            (Some(key), Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert(Value::Array(vec![]));
                if !existing.is_array() {
                    *existing = Value::Array(vec![]);
                }
                let list = existing.as_array_mut().expect("made an array above");
                for item in items {
                    let id = item.get(key).cloned();
                    let pos = id.as_ref().and_then(|id| list.iter().position(|e| e.get(key) == Some(id)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (Some(i), false) => strategic(&mut list[i], item),
                        (None, false) => list.push(item.clone()),
                        (None, true) => {}
                    }
                }
            }
            (_, Value::Object(_)) => strategic(t.entry(k.clone()).or_insert(Value::Null), v),
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect()
}

/// RFC 6902 JSON patch (add, remove, replace, test).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is a list")? {
        let kind = op["op"].as_str().ok_or("op missing")?;
        let path = op["path"].as_str().ok_or("path missing")?;
        let parts = pointer_parts(path);
        let (last, parents) = parts.split_last().ok_or("the root cannot be patched")?;
        let mut parent = &mut *target;
        for p in parents {
            parent = match parent {
                Value::Object(m) => m.get_mut(p).ok_or(format!("{path}: missing"))?,
                Value::Array(a) => a.get_mut(p.parse::<usize>().map_err(|e| e.to_string())?).ok_or(format!("{path}: missing"))?,
                _ => return Err(format!("{path}: not a container")),
            };
        }
        match (kind, parent) {
            ("test", p) => {
                let cur = match p {
                    Value::Object(m) => m.get(last),
                    Value::Array(a) => last.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                };
                if cur != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            ("remove", Value::Object(m)) => {
                m.remove(last).ok_or(format!("{path}: missing"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                if i >= a.len() {
                    return Err(format!("{path}: missing"));
                }
                a.remove(i);
            }
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last.clone(), op["value"].clone());
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add" | "replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                if kind == "add" {
                    a.insert(i.min(a.len()), op["value"].clone());
                } else if let Some(slot) = a.get_mut(i) {
                    *slot = op["value"].clone();
                }
            }
            (other, _) => return Err(format!("unsupported op {other:?} at {path}")),
        }
    }
    Ok(())
}
