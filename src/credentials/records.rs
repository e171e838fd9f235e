//! Which credentials pulled which image, kept under
//! `<root-dir>/image_manager/` so that it survives restarts (kubelet's
//! "ensure secret pulled images"):
//! - `pulling/<sha256 of the image name>`: an intent, written before a pull
//!   and removed once its record is written. An image with an intent left
//!   over was being pulled when nodelet stopped: it is not "preloaded".
//! - `pulled/<sha256 of the image ID>`: for each repository the image was
//!   pulled as, the pull secrets that pulled it (namespace, name and a hash
//!   of the credential, never the credential), or that it is open to every
//!   pod on the node (pulled anonymously or with node-level credentials).
//!
//! With `imagePullCredentialsVerificationPolicy` a pod may use an image already on
//! the node only when its own pull secrets (the same one, or one holding
//! the same credential) or node-wide access let it; otherwise the image is
//! pulled again with the pod's credentials, and the registry decides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::config::VerifyPolicy;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub credential_hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    #[serde(default)]
    pub kubernetes_secrets: Vec<SecretRef>,
    #[serde(default)]
    pub node_pods_accessible: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PulledRecord {
    pub image_ref: String,
    /// By repository (`domain/path`).
    #[serde(default)]
    pub credential_mapping: BTreeMap<String, Access>,
}

/// What a pod brings to the check: its pull secrets' (namespace, name,
/// credential hash).
pub type PodSecrets = BTreeSet<(String, String, String)>;

/// What the disk says about an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Missing,
    Found(PulledRecord),
    /// There, but not readable: the image is pulled again.
    Unreadable,
}

/// Whether the records let a pod with `secrets` use image `image_ref` as
/// `repository` without pulling.
pub fn may_use(record: Option<&PulledRecord>, intent: bool, policy: VerifyPolicy, allowlisted: bool, repository: &str, secrets: &PodSecrets) -> bool {
    match policy {
        VerifyPolicy::NeverVerify => return true,
        _ if record.is_none() && !intent => {
            // Never pulled by nodelet: preloaded.
            return match policy {
                VerifyPolicy::NeverVerifyPreloadedImages => true,
                VerifyPolicy::NeverVerifyAllowlistedImages => allowlisted,
                _ => false,
            };
        }
        _ => {}
    }
    if policy == VerifyPolicy::NeverVerifyAllowlistedImages && allowlisted {
        return true;
    }
    let Some(access) = record.and_then(|r| r.credential_mapping.get(repository)) else { return false };
    // A pod's secret qualifies when its credentials are those the image was
    // pulled with, under whatever Secret holds them (kubelet's rule: the
    // same namespace and name with other credentials do not).
    access.node_pods_accessible || access.kubernetes_secrets.iter().any(|s| secrets.iter().any(|(_, _, hash)| &s.credential_hash == hash))
}

fn hash_name(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The records on disk.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
    /// Read-modify-write of a record is one at a time.
    lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Records {
    pub fn new(root_dir: &Path) -> Self {
        Self { dir: root_dir.join("image_manager"), lock: Default::default() }
    }

    fn pulled_path(&self, image_ref: &str) -> PathBuf {
        self.dir.join("pulled").join(hash_name(image_ref))
    }

    fn intent_path(&self, image: &str) -> PathBuf {
        self.dir.join("pulling").join(hash_name(image))
    }

    /// The record for an image ID. A file that cannot be read or parsed
    /// is `Unreadable` (logged): the image is pulled again, never assumed
    /// preloaded.
    pub fn lookup(&self, image_ref: &str) -> Lookup {
        let path = self.pulled_path(image_ref);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "image pull record unreadable; the image will be pulled again");
                return Lookup::Unreadable;
            }
        };
        match serde_json::from_slice::<PulledRecord>(&bytes) {
            Ok(r) if r.image_ref == image_ref => Lookup::Found(r),
            Ok(_) => Lookup::Unreadable,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "image pull record unreadable; the image will be pulled again");
                Lookup::Unreadable
            }
        }
    }

    pub fn pulled(&self, image_ref: &str) -> Option<PulledRecord> {
        match self.lookup(image_ref) {
            Lookup::Found(r) => Some(r),
            _ => None,
        }
    }

    pub fn has_intent(&self, image: &str) -> bool {
        self.intent_path(image).exists()
    }

    pub fn write_intent(&self, image: &str) -> std::io::Result<()> {
        let body = serde_json::json!({"image": image});
        crate::files::write_atomic(&self.intent_path(image), body.to_string().as_bytes(), 0o600)
    }

    pub fn clear_intent(&self, image: &str) {
        let _ = std::fs::remove_file(self.intent_path(image));
    }

    /// Adds who pulled (or may use) `image_ref` as `repository`.
    pub fn record(&self, image_ref: &str, repository: &str, secret: Option<SecretRef>) -> std::io::Result<()> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut rec = self.pulled(image_ref).unwrap_or_else(|| PulledRecord { image_ref: image_ref.to_string(), ..Default::default() });
        let access = rec.credential_mapping.entry(repository.to_string()).or_default();
        match secret {
            None => access.node_pods_accessible = true,
            Some(s) => {
                if access.kubernetes_secrets.contains(&s) {
                    return Ok(());
                }
                access.kubernetes_secrets.push(s);
            }
        }
        let body = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
        crate::files::write_atomic(&self.pulled_path(image_ref), &body, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(v: &[(&str, &str, &str)]) -> PodSecrets {
        v.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
    }

    #[test]
    fn a_private_image_serves_only_pods_with_its_credential() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path());
        let sref = SecretRef { namespace: "a".into(), name: "pull".into(), credential_hash: "h1".into() };
        r.record("sha256:1", "r.io/app", Some(sref)).unwrap();
        let rec = r.pulled("sha256:1");
        let p = VerifyPolicy::default();
        assert!(may_use(rec.as_ref(), false, p, false, "r.io/app", &secrets(&[("a", "pull", "h1")])));
        assert!(may_use(rec.as_ref(), false, p, false, "r.io/app", &secrets(&[("b", "other", "h1")])), "same credential, other secret");
        assert!(!may_use(rec.as_ref(), false, p, false, "r.io/app", &secrets(&[])));
        assert!(!may_use(rec.as_ref(), false, p, false, "r.io/app", &secrets(&[("a", "pull", "h2")])));
        assert!(!may_use(rec.as_ref(), false, p, false, "r.io/other", &secrets(&[("a", "pull", "h1")])));
        assert!(may_use(rec.as_ref(), false, VerifyPolicy::NeverVerify, false, "r.io/app", &secrets(&[])));
        // Anonymous pulls open it to everyone.
        r.record("sha256:1", "r.io/app", None).unwrap();
        assert!(may_use(r.pulled("sha256:1").as_ref(), false, p, false, "r.io/app", &secrets(&[])));
    }

    #[test]
    fn preloaded_images_follow_the_policy_and_intents_are_not_preloaded() {
        let none = secrets(&[]);
        assert!(may_use(None, false, VerifyPolicy::NeverVerifyPreloadedImages, false, "r", &none));
        assert!(!may_use(None, true, VerifyPolicy::NeverVerifyPreloadedImages, false, "r", &none));
        assert!(!may_use(None, false, VerifyPolicy::AlwaysVerify, false, "r", &none));
        assert!(may_use(None, false, VerifyPolicy::NeverVerifyAllowlistedImages, true, "r", &none));
        assert!(!may_use(None, false, VerifyPolicy::NeverVerifyAllowlistedImages, false, "r", &none));
    }

    #[test]
    fn records_and_intents_survive_on_disk_with_tight_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let r = Records::new(dir.path());
        r.write_intent("r.io/app:1").unwrap();
        assert!(Records::new(dir.path()).has_intent("r.io/app:1"));
        r.record("sha256:2", "r.io/app", None).unwrap();
        r.clear_intent("r.io/app:1");
        assert!(!r.has_intent("r.io/app:1"));
        let again = Records::new(dir.path()).pulled("sha256:2").unwrap();
        assert!(again.credential_mapping["r.io/app"].node_pods_accessible);
        let mode = std::fs::metadata(r.pulled_path("sha256:2")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
