//! Registry credentials, found as kubelet finds them: the pod's
//! `imagePullSecrets` (`kubernetes.io/dockerconfigjson`, `kubernetes.io/dockercfg`),
//! then the node's Docker config file (`<root-dir>/config.json`,
//! `./config.json`, `~/.docker/config.json`, `/.docker/config.json`, then the
//! same places for `.dockercfg`), then the image credential provider
//! plugins. Every credential whose key matches the image (host with `*.`
//! globs per label, port, path prefix) is a candidate; the most specific key
//! first. The puller tries each in turn until one works.
//!
//! A [`Credential`] never prints its secret parts: its `Debug` shows only
//! the user name and where it came from.

pub mod provider;
pub mod records;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};


/// Where a credential came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A pod's imagePullSecret.
    Secret { namespace: String, name: String },
    /// The node's Docker config file.
    NodeFile(PathBuf),
    /// An image credential provider plugin.
    Provider(String),
}

impl Origin {
    /// Node-level credentials serve every pod on the node.
    pub fn node_wide(&self) -> bool {
        !matches!(self, Origin::Secret { .. })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            Origin::NodeFile(p) => write!(f, "{}", p.display()),
            Origin::Provider(n) => write!(f, "credential provider {n}"),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
    pub origin: Origin,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential {{ username: {:?}, origin: {} }}", self.username, self.origin)
    }
}

impl Credential {
    /// A one-way hash of the secret parts, to recognise the same
    /// credential later without keeping it.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.username, &self.password, &self.auth, &self.identity_token, &self.registry_token] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(h.finalize())
    }
}

/// Why a Docker config could not be used; never contains its values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{origin}: not a Docker config: {reason}")]
    Parse { origin: String, reason: String },
}

/// No Debug: it holds a password.
#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// Which of Docker's two file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `config.json`, `.dockerconfigjson`: `{"auths": {...}}`.
    ConfigJson,
    /// `.dockercfg`: the entries at the top level.
    DockerCfg,
}

/// Parses a Docker config into (key, credential) pairs. `source` names it
/// in errors (a file, or a secret and its key); serde's message is left out
/// because it may quote the input.
pub fn parse_docker_config(bytes: &[u8], format: Format, source: &str, origin: &Origin) -> Result<Vec<(String, Credential)>, ConfigFileError> {
    let bad = |reason: String| ConfigFileError::Parse { origin: source.to_string(), reason };
    let entries: BTreeMap<String, Entry> = match format {
        Format::ConfigJson => serde_json::from_slice::<ConfigJson>(bytes).map_err(|e| bad(format!("line {} column {}", e.line(), e.column())))?.auths,
        Format::DockerCfg => serde_json::from_slice(bytes).map_err(|e| bad(format!("line {} column {}", e.line(), e.column())))?,
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, e) in entries {
        let (mut username, mut password) = (e.username, e.password);
        if !e.auth.is_empty() {
            // Padded or not, as Go's decoders used by kubelet accept.
            let raw = e.auth.trim();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw.trim_end_matches('=')))
                .map_err(|_| bad(format!("auths[{key:?}].auth: not base64")))?;
            let text = String::from_utf8(decoded).map_err(|_| bad(format!("auths[{key:?}].auth: not UTF-8")))?;
            let (u, p) = text.split_once(':').ok_or_else(|| bad(format!("auths[{key:?}].auth: not user:password")))?;
            username = u.to_string();
            password = p.trim_end_matches('\n').to_string();
        }
        out.push((
            key,
            Credential {
                username,
                password,
                auth: String::new(),
                identity_token: e.identity_token,
                registry_token: e.registry_token,
                origin: origin.clone(),
            },
        ));
    }
    Ok(out)
}

/// A key as kubelet's keyring stores it: no scheme, `/v1/` and `/v2/`
/// dropped, `host[:port][/path]`.
pub fn normalize_key(key: &str) -> String {
    let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") { &path[3..] } else { path };
    if path.is_empty() || path == "/" { host.to_string() } else { format!("{host}{path}") }
}

fn split(url: &str) -> (Vec<&str>, &str, &str) {
    let (hostport, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p),
        _ => (hostport, ""),
    };
    (host.split('.').collect(), port, path)
}

/// One label against a glob (`*` any run, `?` one character), as Go's
/// filepath.Match for labels (no separators inside).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// kubelet's URLsMatch: same number of host labels, each matching its glob,
/// the same port, and the target's path under the key's path.
pub fn key_matches(key: &str, target: &str) -> bool {
    let (kh, kp, kpath) = split(key);
    let (th, tp, tpath) = split(target);
    kp == tp && kh.len() == th.len() && tpath.starts_with(kpath) && kh.iter().zip(&th).all(|(k, t)| glob(k, t))
}

/// Credentials by key, most specific key first (kubelet sorts the keys in
/// reverse order), several per key in the order added.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    entries: Vec<(String, Credential)>,
}

impl Keyring {
    pub fn add(&mut self, key: &str, cred: Credential) {
        self.extend([(key.to_string(), cred)]);
    }

    /// Adds all, then sorts once (stable: a key's credentials keep their
    /// order).
    pub fn extend(&mut self, pairs: impl IntoIterator<Item = (String, Credential)>) {
        self.entries.extend(pairs.into_iter().map(|(k, c)| (normalize_key(&k), c)));
        self.entries.sort_by(|a, b| b.0.cmp(&a.0));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every credential for `repository` (`domain/path`, normalised); for
    /// Docker Hub images the `index.docker.io` entry when nothing else
    /// matched.
    pub fn lookup(&self, repository: &str) -> Vec<Credential> {
        let found: Vec<Credential> = self.entries.iter().filter(|(k, _)| key_matches(k, repository)).map(|(_, c)| c.clone()).collect();
        if !found.is_empty() {
            return found;
        }
        let hub = repository.starts_with("docker.io/") || repository.starts_with("index.docker.io/");
        if hub {
            return self.entries.iter().filter(|(k, _)| k == crate::reference::DOCKER_HUB_INDEX).map(|(_, c)| c.clone()).collect();
        }
        Vec::new()
    }
}

/// The pull secrets' keyring. A secret whose data is not a Docker config is
/// skipped with a message naming it (kubelet logs and goes on).
pub fn secrets_keyring(secrets: &[(String, String, BTreeMap<String, Vec<u8>>)]) -> (Keyring, Vec<String>) {
    let mut ring = Keyring::default();
    let mut problems = Vec::new();
    for (namespace, name, data) in secrets {
        let origin = Origin::Secret { namespace: namespace.clone(), name: name.clone() };
        let (bytes, format, key) = if let Some(b) = data.get(".dockerconfigjson") {
            (b, Format::ConfigJson, ".dockerconfigjson")
        } else if let Some(b) = data.get(".dockercfg") {
            (b, Format::DockerCfg, ".dockercfg")
        } else {
            problems.push(format!("secret {namespace}/{name}: no .dockerconfigjson or .dockercfg key; not an image pull secret"));
            continue;
        };
        match parse_docker_config(bytes, format, &format!("secret {namespace}/{name} key {key}"), &origin) {
            Ok(pairs) => ring.extend(pairs),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (ring, problems)
}

/// The node's Docker config: the first file found on kubelet's search path.
pub fn node_config_paths(root_dir: &Path) -> Vec<(PathBuf, Format)> {
    let cwd = std::env::current_dir().ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut out = Vec::new();
    let json_dirs = [Some(root_dir.to_path_buf()), cwd.clone(), home.as_ref().map(|h| h.join(".docker")), Some(PathBuf::from("/.docker"))];
    for d in json_dirs.into_iter().flatten() {
        out.push((d.join("config.json"), Format::ConfigJson));
    }
    for d in [Some(root_dir.to_path_buf()), cwd, home, Some(PathBuf::from("/"))].into_iter().flatten() {
        out.push((d.join(".dockercfg"), Format::DockerCfg));
    }
    out
}

/// Reads the node's Docker config: the first file on the path that exists
/// and parses. A file that does not parse is reported (naming it) and the
/// search goes on, as kubelet's; no file is an empty keyring.
pub fn node_keyring(paths: &[(PathBuf, Format)]) -> (Keyring, Vec<ConfigFileError>) {
    let mut ring = Keyring::default();
    let mut errors = Vec::new();
    for (path, format) in paths {
        let Ok(bytes) = std::fs::read(path) else { continue };
        let origin = Origin::NodeFile(path.clone());
        match parse_docker_config(&bytes, *format, &path.display().to_string(), &origin) {
            Ok(pairs) => {
                ring.extend(pairs);
                break;
            }
            Err(e) => errors.push(e),
        }
    }
    (ring, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> Credential {
        Credential {
            username: user.into(),
            password: format!("{user}-pw"),
            auth: String::new(),
            identity_token: String::new(),
            registry_token: String::new(),
            origin: Origin::Provider("t".into()),
        }
    }

    fn users(v: &[Credential]) -> Vec<&str> {
        v.iter().map(|c| c.username.as_str()).collect()
    }

    #[test]
    fn keys_match_as_kubelet_matches_them() {
        assert!(key_matches("registry.io", "registry.io/app"));
        assert!(key_matches("*.registry.io", "eu.registry.io/app"));
        assert!(!key_matches("*.registry.io", "registry.io/app"), "a glob stands for exactly one label");
        assert!(!key_matches("*.registry.io", "a.eu.registry.io/app"));
        assert!(key_matches("*.*.registry.io", "a.eu.registry.io/app"));
        assert!(key_matches("eu-*.registry.io", "eu-west.registry.io/x"));
        assert!(key_matches("registry.io:5000", "registry.io:5000/app"));
        assert!(!key_matches("registry.io:5000", "registry.io/app"), "ports must be equal");
        assert!(!key_matches("registry.io", "registry.io:5000/app"));
        assert!(key_matches("registry.io/team", "registry.io/team/app"));
        assert!(!key_matches("registry.io/team", "registry.io/other/app"));
        assert!(key_matches("registry.io/team/app", "registry.io/team/app"));
        assert!(!key_matches("registry.io/team/app", "registry.io/team"));
    }

    #[test]
    fn keys_lose_scheme_and_api_version() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(normalize_key("http://r.io:5000/v2/team"), "r.io:5000/team");
        assert_eq!(normalize_key("r.io/team/"), "r.io/team/");
        assert_eq!(normalize_key("r.io"), "r.io");
    }

    #[test]
    fn the_most_specific_key_comes_first_then_the_rest() {
        let mut ring = Keyring::default();
        ring.add("r.io", cred("host"));
        ring.add("r.io/team", cred("team"));
        ring.add("*.io", cred("glob"));
        ring.add("r.io/other", cred("other"));
        ring.add("r.io/team", cred("team2"));
        assert_eq!(users(&ring.lookup("r.io/team/app")), ["team", "team2", "host", "glob"]);
        assert_eq!(users(&ring.lookup("r.io/x")), ["host", "glob"]);
        assert!(ring.lookup("q.example/app").is_empty());
    }

    #[test]
    fn docker_hub_uses_the_index_entry() {
        let mut ring = Keyring::default();
        ring.add("https://index.docker.io/v1/", cred("hub"));
        assert_eq!(users(&ring.lookup("docker.io/library/busybox")), ["hub"]);
        assert!(ring.lookup("quay.io/app").is_empty());
    }

    #[test]
    fn both_file_formats_parse_and_auth_wins() {
        let o = Origin::NodeFile("/x".into());
        let json = br#"{"auths":{"r.io":{"auth":"dXNlcjpwYXNz"},"q.io":{"username":"u2","password":"p2"}}}"#;
        let pairs = parse_docker_config(json, Format::ConfigJson, "f", &o).unwrap();
        assert_eq!(pairs.len(), 2);
        let r = &pairs.iter().find(|(k, _)| k == "r.io").unwrap().1;
        assert_eq!((r.username.as_str(), r.password.as_str()), ("user", "pass"));
        let unpadded = br#"{"auths":{"r.io":{"auth":"dXNlcjpwYXNzMQ"}}}"#;
        let pairs = parse_docker_config(unpadded, Format::ConfigJson, "f", &o).unwrap();
        assert_eq!(pairs[0].1.password, "pass1");
        let cfg = br#"{"r.io":{"username":"a","password":"b","email":"e"}}"#;
        let pairs = parse_docker_config(cfg, Format::DockerCfg, "f", &o).unwrap();
        assert_eq!(pairs[0].1.username, "a");
    }

    #[test]
    fn errors_name_the_source_and_never_the_values() {
        let o = Origin::NodeFile("/x".into());
        let e = parse_docker_config(br#"{"auths":{"r.io":{"auth":"hunter2!!"}}}"#, Format::ConfigJson, "/root/config.json", &o).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/root/config.json") && s.contains("auth") && !s.contains("hunter2"), "{s}");
        let e = parse_docker_config(b"{\"auths\": [\"hunter2\"]}", Format::ConfigJson, "/root/config.json", &o).unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        let c = cred("u");
        assert!(!format!("{c:?}").contains("u-pw"));
    }

    #[test]
    fn a_secret_without_docker_config_is_named() {
        let mut data = BTreeMap::new();
        data.insert("token".to_string(), b"x".to_vec());
        let (ring, problems) = secrets_keyring(&[("ns".into(), "s".into(), data)]);
        assert!(ring.is_empty());
        assert!(problems[0].contains("ns/s"), "{problems:?}");
    }
}
