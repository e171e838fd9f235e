//! AppArmor as kubelet applies it: a container's profile comes from its
//! `securityContext.appArmorProfile`, else the pod's, else the legacy
//! annotation `container.apparmor.security.beta.kubernetes.io/<container>`
//! (`runtime/default`, `localhost/<profile>`, `unconfined`). It reaches CRI in
//! both the `apparmor` profile and the older `apparmor_profile` string (for
//! runtimes that know only that one). A pod that asks for a profile on a host
//! without AppArmor is refused at admission (reason `AppArmor`), never run
//! unconfined behind its back.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::cri;

/// The legacy per-container annotation's prefix.
pub const ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// A container's AppArmor profile, as the API states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

/// The profile `c` asks for, if any.
pub fn profile(pod: &Pod, c: &Container) -> Option<Profile> {
    let field = c
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .or_else(|| pod.spec.as_ref()?.security_context.as_ref()?.app_armor_profile.as_ref());
    if let Some(p) = field {
        return Some(match p.type_.as_str() {
            "RuntimeDefault" => Profile::RuntimeDefault,
            "Localhost" => Profile::Localhost(p.localhost_profile.clone().unwrap_or_default()),
            _ => Profile::Unconfined,
        });
    }
    let annotation = pod.metadata.annotations.as_ref()?.get(&format!("{ANNOTATION_PREFIX}{}", c.name))?;
    Some(match annotation.as_str() {
        "runtime/default" => Profile::RuntimeDefault,
        "unconfined" => Profile::Unconfined,
        other => match other.strip_prefix("localhost/") {
            Some(name) => Profile::Localhost(name.to_string()),
            None => Profile::RuntimeDefault,
        },
    })
}

/// What CRI gets for `c`: (the profile, the legacy string); none when the
/// pod says nothing (the runtime's default applies, as with kubelet).
pub fn cri_profile(pod: &Pod, c: &Container) -> (Option<cri::SecurityProfile>, String) {
    use cri::security_profile::ProfileType;
    match profile(pod, c) {
        None => (None, String::new()),
        Some(Profile::RuntimeDefault) => (Some(cri::SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() }), "runtime/default".into()),
        Some(Profile::Unconfined) => (Some(cri::SecurityProfile { profile_type: ProfileType::Unconfined as i32, localhost_ref: String::new() }), "unconfined".into()),
        Some(Profile::Localhost(name)) => (
            Some(cri::SecurityProfile { profile_type: ProfileType::Localhost as i32, localhost_ref: name.clone() }),
            format!("localhost/{name}"),
        ),
    }
}

/// Whether the kernel enforces AppArmor (`/sys/module/apparmor/parameters/enabled`).
pub fn host_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
}

/// kubelet's AppArmor admission: a pod any of whose containers asks for a
/// confining profile needs AppArmor on the host.
pub fn check(pod: &Pod, host_enabled: bool) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
    let wants = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| profile(pod, c).is_some_and(|p| p != Profile::Unconfined));
    if wants && !host_enabled {
        return Err("Cannot enforce AppArmor: AppArmor is not enabled on the host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_field_wins_over_the_pod_and_the_annotation() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"container.apparmor.security.beta.kubernetes.io/b": "localhost/k8s-nginx"}},
            "spec": {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}, "containers": [
                {"name": "a", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "mine"}}},
                {"name": "b"},
            ]}
        }));
        let spec = p.spec.clone().unwrap();
        assert_eq!(profile(&p, &spec.containers[0]), Some(Profile::Localhost("mine".into())));
        assert_eq!(profile(&p, &spec.containers[1]), Some(Profile::RuntimeDefault), "the pod's field before the annotation");
        assert_eq!(cri_profile(&p, &spec.containers[0]).1, "localhost/mine");
        let legacy = pod(serde_json::json!({
            "metadata": {"name": "p", "annotations": {"container.apparmor.security.beta.kubernetes.io/b": "unconfined"}},
            "spec": {"containers": [{"name": "b"}, {"name": "c"}]}
        }));
        let spec = legacy.spec.clone().unwrap();
        assert_eq!(profile(&legacy, &spec.containers[0]), Some(Profile::Unconfined));
        assert_eq!(cri_profile(&legacy, &spec.containers[1]), (None, String::new()));
        assert_eq!(check(&legacy, false), Ok(()), "unconfined needs nothing of the host");
        assert_eq!(check(&p, false), Err("Cannot enforce AppArmor: AppArmor is not enabled on the host".into()));
        assert_eq!(check(&p, true), Ok(()));
    }
}
