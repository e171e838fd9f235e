//! configMap, secret, downwardAPI and projected volumes: the files the node
//! writes from API objects and the pod's own fields, through the atomic
//! writer, with `items`, `defaultMode`/`mode` and `optional`; and the
//! service account tokens of projected volumes.

use super::*;

/// The user all of a pod's containers run as, if it is one and the same.
pub(super) fn common_run_as_user(spec: &PodSpec) -> Option<u32> {
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_user));
    let first = users.next()??;
    users.all(|u| u == Some(first)).then_some(first as u32)
}

pub(super) fn mode_of(m: Option<i32>, default: Option<i32>) -> u32 {
    (m.or(default).unwrap_or(DEFAULT_MODE) & 0o7777) as u32
}

/// Files from a ConfigMap's or Secret's data, per `items`.
pub(super) fn from_data(
    data: Option<&objects::Data>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    key: &ObjectKey,
    out: &mut Payload,
) -> Result<(), String> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(format!("{} {:?} not found", key.kind.as_str(), key.name));
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), FileProjection { data: v.clone(), mode: mode_of(None, default_mode), uid: None });
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), FileProjection { data: v.clone(), mode: mode_of(it.mode, default_mode), uid: None });
                    }
                    None if optional => {}
                    None => {
                        let what = if key.kind == ObjectKind::Secret { "secret" } else { "config" };
                        return Err(format!("{} references non-existent {what} key: {}", key.kind.as_str(), it.key));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Quotes a label or annotation value as the downward API files do.
pub(super) fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn map_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter().flatten().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join("\n")
}

/// Files of a downwardAPI volume or source.
pub(super) fn downward_files(items: &[DownwardAPIVolumeFile], default_mode: Option<i32>, facts: &PodFacts<'_>, out: &mut Payload) -> Result<(), String> {
    let md = &facts.pod.metadata;
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => map_lines(md.labels.as_ref()),
                "metadata.annotations" => map_lines(md.annotations.as_ref()),
                _ => downward::field_value(f, facts, &it.path).map_err(|e| e.to_string())?,
            }
        } else if let Some(r) = &it.resource_field_ref {
            let cname = r.container_name.clone().unwrap_or_default();
            let spec = facts.pod.spec.as_ref();
            let c = spec
                .into_iter()
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .find(|c| c.name == cname)
                .ok_or_else(|| format!("{}: container {cname:?} not found", it.path))?;
            downward::resource_value(r, c, facts, &it.path).map_err(|e| e.to_string())?
        } else {
            String::new()
        };
        out.insert(it.path.clone(), FileProjection { data: value.into_bytes(), mode: mode_of(it.mode, default_mode), uid: None });
    }
    Ok(())
}

impl Round<'_, '_> {
    pub(super) async fn object(&mut self, kind: ObjectKind, name: &str) -> Result<Option<std::sync::Arc<objects::Data>>, String> {
        let key = ObjectKey { kind, namespace: self.namespace.clone(), name: name.to_string() };
        let Some(objects) = self.ctx.objects else {
            return Err(format!("{key}: no apiserver to read it from (static pods cannot use API objects)"));
        };
        self.out.uses.insert(key.clone());
        objects.get(&key, &self.uid).await.map_err(|e| e.to_string())
    }

    pub(super) fn write(&self, dir: &Path, payload: &Payload, tmpfs: bool) -> Result<(), String> {
        if self.ctx.dry_run {
            return Ok(());
        }
        make_dir(dir, 0o755)?;
        if tmpfs {
            mount_tmpfs(dir, None)?;
        }
        atomic::write(dir, payload, self.fs_group).map_err(|e| e.to_string())?;
        if let Some(g) = self.fs_group {
            std::os::unix::fs::chown(dir, None, Some(g)).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mode = atomic::with_fs_group(0o755, true, Some(g));
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    }

    pub(super) async fn token(&mut self, t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> Result<Vec<u8>, String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sa = spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
        let Some(objects) = self.ctx.objects else {
            return Err("a service account token needs an apiserver (static pods cannot use one)".into());
        };
        if self.ctx.dry_run {
            return Ok(Vec::new());
        }
        let req = TokenSpec {
            namespace: self.namespace.clone(),
            service_account: sa,
            audience: t.audience.clone().filter(|a| !a.is_empty()),
            expiration_seconds: t.expiration_seconds.unwrap_or(3600),
            pod_name: self.pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: self.uid.clone(),
        };
        let token = objects.token(&req).await.map_err(|e| e.to_string())?;
        let at = token.refresh_at();
        self.out.refresh_at = Some(self.out.refresh_at.map_or(at, |r| r.min(at)));
        Ok(token.token.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_labels_are_sorted_and_quoted() {
        let m = BTreeMap::from([("b".to_string(), "x\"y".to_string()), ("a".to_string(), "1".to_string())]);
        assert_eq!(map_lines(Some(&m)), "a=\"1\"\nb=\"x\\\"y\"");
    }

    #[test]
    fn items_modes_and_missing_keys() {
        let key = ObjectKey { kind: ObjectKind::ConfigMap, namespace: "ns".into(), name: "cfg".into() };
        let data = objects::Data::from([("k".to_string(), b"v".to_vec())]);
        let items = vec![KeyToPath { key: "k".into(), path: "dir/f".into(), mode: Some(0o600) }];
        let mut p = Payload::new();
        from_data(Some(&data), Some(&items), None, false, &key, &mut p).unwrap();
        assert_eq!(p["dir/f"].mode, 0o600);
        let bad = vec![KeyToPath { key: "nope".into(), path: "x".into(), mode: None }];
        let e = from_data(Some(&data), Some(&bad), None, false, &key, &mut p).unwrap_err();
        assert_eq!(e, "configmap references non-existent config key: nope");
        assert_eq!(from_data(None, None, None, false, &key, &mut p).unwrap_err(), "configmap \"cfg\" not found");
        assert!(from_data(None, None, None, true, &key, &mut p).is_ok(), "optional");
        let mut q = Payload::new();
        from_data(Some(&data), None, Some(0o400), false, &key, &mut q).unwrap();
        assert_eq!(q["k"].mode, 0o400);
    }
}
