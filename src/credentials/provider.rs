//! kubelet's image credential provider plugins
//! (`--image-credential-provider-config`, `--image-credential-provider-bin-dir`):
//! for an image that matches a provider's `matchImages`, nodelet runs
//! `<bin-dir>/<name>` with the provider's args and env, writes a
//! `CredentialProviderRequest` to its stdin and reads a
//! `CredentialProviderResponse` from its stdout. The answer is cached for
//! the response's `cacheDuration` (or the provider's
//! `defaultCacheDuration`) under the key type it names: the image, its
//! registry, or everything. One run at a time per provider and key: pods
//! that ask together share the answer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{Credential, Keyring, Origin, key_matches};
use crate::reference;
use crate::config::duration::parse_go_duration;

const API_VERSIONS: [&str; 3] =
    ["credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v1beta1", "credentialprovider.kubelet.k8s.io/v1alpha1"];
/// kubelet gives a plugin a minute.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ProviderConfigError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("{file}: providers[{index}].{field}: {reason}")]
    Field { file: String, index: usize, field: &'static str, reason: String },
}

#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub match_images: Vec<String>,
    pub default_cache: Duration,
    pub api_version: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub binary: PathBuf,
}

/// The env values are left out: they may be secret.
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "Provider {{ name: {:?}, match_images: {:?}, binary: {:?}, env: {env:?} }}", self.name, self.match_images, self.binary)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    #[serde(default)]
    name: String,
    #[serde(default)]
    match_images: Vec<String>,
    default_cache_duration: Option<String>,
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    token_attributes: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

/// Reads and checks a CredentialProviderConfig; every binary must exist
/// in `bin_dir` (kubelet refuses to start otherwise).
pub fn load(file: &Path, bin_dir: &Path) -> Result<Vec<Provider>, ProviderConfigError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| ProviderConfigError::File { file: name.clone(), reason: e.to_string() })?;
    parse(&text, &name, bin_dir)
}

pub fn parse(text: &str, file: &str, bin_dir: &Path) -> Result<Vec<Provider>, ProviderConfigError> {
    let file_err = |reason: String| ProviderConfigError::File { file: file.to_string(), reason };
    let value = crate::decode::document(text.as_bytes()).map_err(|e| file_err(e.to_string()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        // serde's words may quote the value; env values may be secret.
        let path = e.path().to_string();
        if path.contains(".env") { file_err(format!("{path}: invalid value")) } else { file_err(format!("{path}: {}", e.inner())) }
    })?;
    if raw.kind.as_deref() != Some("CredentialProviderConfig") {
        return Err(file_err(format!("kind: want CredentialProviderConfig, got {:?}", raw.kind.unwrap_or_default())));
    }
    let v = raw.api_version.unwrap_or_default();
    if !["kubelet.config.k8s.io/v1", "kubelet.config.k8s.io/v1beta1", "kubelet.config.k8s.io/v1alpha1"].contains(&v.as_str()) {
        return Err(file_err(format!("apiVersion: unsupported {v:?}")));
    }
    if raw.providers.is_empty() {
        return Err(file_err("providers: at least 1 item is required".into()));
    }
    let mut out: Vec<Provider> = Vec::new();
    for (index, p) in raw.providers.into_iter().enumerate() {
        let bad = |field, reason: String| ProviderConfigError::Field { file: file.to_string(), index, field, reason };
        if p.name.is_empty() || p.name.contains('/') || p.name == "." || p.name == ".." || p.name.contains(' ') {
            return Err(bad("name", format!("Invalid value: {:?}: must be a file name in the bin dir", p.name)));
        }
        if out.iter().any(|o| o.name == p.name) {
            return Err(bad("name", format!("Duplicate value: {:?}", p.name)));
        }
        if p.match_images.is_empty() {
            return Err(bad("matchImages", "Required value: at least one pattern".into()));
        }
        for m in &p.match_images {
            let probe = m.replace('*', "x");
            if m.is_empty() || m.contains("://") || reference::parse(&format!("{}/x", probe.split('/').next().unwrap_or(""))).is_err() {
                return Err(bad("matchImages", format!("Invalid value: {m:?}: not a registry pattern")));
            }
        }
        let cache = p.default_cache_duration.ok_or_else(|| bad("defaultCacheDuration", "Required value".into()))?;
        let default_cache = parse_go_duration(&cache).map_err(|e| bad("defaultCacheDuration", format!("Invalid value: {cache:?}: {e}")))?;
        if !API_VERSIONS.contains(&p.api_version.as_str()) {
            return Err(bad("apiVersion", format!("Unsupported value: {:?}: supported values: {}", p.api_version, API_VERSIONS.join(", "))));
        }
        if p.token_attributes.is_some() {
            return Err(bad("tokenAttributes", "service account tokens for providers are not supported by nodelet".into()));
        }
        let binary = bin_dir.join(&p.name);
        if !binary.is_file() {
            return Err(bad("name", format!("plugin binary executable {} did not exist", binary.display())));
        }
        out.push(Provider {
            name: p.name,
            match_images: p.match_images,
            default_cache,
            api_version: p.api_version,
            args: p.args,
            env: p.env.into_iter().map(|e| (e.name, e.value)).collect(),
            binary,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    api_version: String,
    kind: String,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

struct Cached {
    ring: Keyring,
    until: Instant,
}

/// The providers and their answers.
pub struct Providers {
    providers: Vec<Provider>,
    cache: std::sync::Mutex<HashMap<(String, String), Arc<Cached>>>,
    /// One run per provider and image at a time (kubelet's singleflight):
    /// pods asking together share the answer.
    running: std::sync::Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>,
}

fn registry_of(image: &str) -> String {
    reference::parse(image).map(|r| r.domain).unwrap_or_default()
}

impl Providers {
    pub fn new(providers: Vec<Provider>) -> Self {
        Self { providers, cache: Default::default(), running: Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    fn cached(&self, provider: &str, image: &str) -> Option<Arc<Cached>> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, c| c.until > now);
        let keys = [image.to_string(), registry_of(image), "global".to_string()];
        keys.iter().find_map(|k| cache.get(&(provider.to_string(), k.clone())).cloned())
    }

    /// Every credential the matching providers give for `image` (as the
    /// pod names it) that applies to `repository`. A provider that fails
    /// is logged and skipped, as kubelet does.
    pub async fn lookup(&self, image: &str, repository: &str) -> Vec<Credential> {
        let mut out = Vec::new();
        for p in &self.providers {
            if !p.match_images.iter().any(|m| key_matches(m, repository)) {
                continue;
            }
            let ring = match self.cached(&p.name, image) {
                Some(c) => c,
                None => {
                    let flight = {
                        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                        running.retain(|_, m| Arc::strong_count(m) > 1);
                        running.entry((p.name.clone(), image.to_string())).or_default().clone()
                    };
                    let _one = flight.lock().await;
                    match self.cached(&p.name, image) {
                        Some(c) => c,
                        None => match self.run(p, image).await {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(provider = %p.name, image, error = %e, "image credential provider failed");
                                continue;
                            }
                        },
                    }
                }
            };
            out.extend(ring.ring.lookup(repository));
        }
        out
    }

    async fn run(&self, p: &Provider, image: &str) -> Result<Arc<Cached>, String> {
        let request = serde_json::json!({"apiVersion": p.api_version, "kind": "CredentialProviderRequest", "image": image});
        let mut child = tokio::process::Command::new(&p.binary)
            .args(&p.args)
            .envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", p.binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let body = request.to_string();
            stdin.write_all(body.as_bytes()).await.map_err(|e| format!("writing the request: {e}"))?;
        }
        let out = tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("no answer within {}s", EXEC_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("{} ({})", out.status, err.trim().chars().take(300).collect::<String>()));
        }
        let r: Response = serde_json::from_slice(&out.stdout).map_err(|e| format!("the response is not a CredentialProviderResponse (line {} column {})", e.line(), e.column()))?;
        if r.kind != "CredentialProviderResponse" || r.api_version != p.api_version {
            return Err(format!("the response is {} {}, want CredentialProviderResponse {}", r.api_version, r.kind, p.api_version));
        }
        let duration = match &r.cache_duration {
            Some(d) => parse_go_duration(d).map_err(|e| format!("cacheDuration {d:?}: {e}"))?,
            None => p.default_cache,
        };
        let key = match r.cache_key_type.as_str() {
            "Image" => image.to_string(),
            "Registry" => registry_of(image),
            "Global" => "global".to_string(),
            other => return Err(format!("cacheKeyType {other:?}: want Image, Registry or Global")),
        };
        let mut ring = Keyring::default();
        let origin = Origin::Provider(p.name.clone());
        for (pattern, a) in r.auth {
            ring.add(
                &pattern,
                Credential {
                    username: a.username,
                    password: a.password,
                    auth: String::new(),
                    identity_token: String::new(),
                    registry_token: String::new(),
                    origin: origin.clone(),
                },
            );
        }
        let cached = Arc::new(Cached { ring, until: Instant::now() + duration });
        if !duration.is_zero() {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert((p.name.clone(), key), cached.clone());
        }
        tracing::info!(provider = %p.name, image, cache = ?duration, "image credential provider answered");
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p"), "").unwrap();
        let ok = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- name: p\n  matchImages: ['*.r.io', 'r.io:5000/team']\n  defaultCacheDuration: 5m\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n";
        let ps = parse(ok, "c.yaml", dir.path()).unwrap();
        assert_eq!(ps[0].default_cache, Duration::from_secs(300));
        let cases = [
            (ok.replace("name: p", "name: q"), "providers[0].name: plugin binary executable"),
            (ok.replace("5m", "soon"), "providers[0].defaultCacheDuration"),
            (ok.replace("  defaultCacheDuration: 5m\n", ""), "providers[0].defaultCacheDuration: Required"),
            (ok.replace("credentialprovider.kubelet.k8s.io/v1", "x/v1"), "providers[0].apiVersion"),
            (ok.replace("['*.r.io', 'r.io:5000/team']", "[]"), "providers[0].matchImages"),
            (ok.replace("kind: CredentialProviderConfig", "kind: Other"), "c.yaml: kind"),
        ];
        for (text, want) in cases {
            let e = parse(&text, "c.yaml", dir.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should contain {want}");
        }
    }
}
