//! The node API's settings (port 10250): where it listens, its serving
//! certificate, and how callers are authenticated and authorized, from the
//! KubeletConfiguration and kubelet's flags. The defaults are the
//! KubeletConfiguration v1beta1 ones, the secure ones: no anonymous callers,
//! bearer tokens checked by TokenReview, every request authorized by
//! SubjectAccessReview.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::kubelet::KubeletConfig;

/// How requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// A SubjectAccessReview to the apiserver for each (uncached) request.
    Webhook,
    /// Every authenticated request is allowed.
    AlwaysAllow,
}

/// The node API's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeApiSettings {
    /// The KubeletFineGrainedAuthz gate (on in 1.34): /pods, /healthz and
    /// /configz are checked as nodes/pods, nodes/healthz, nodes/configz
    /// before nodes/proxy; off, as nodes/proxy only.
    pub fine_grained_authz: bool,
    pub address: IpAddr,
    /// 0 turns the node API off.
    pub port: u16,
    /// Plain HTTP, read-only paths, no authentication; 0 (the default) is off.
    pub read_only_port: u16,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Ask the `kubelet-serving` signer for the serving certificate.
    pub server_tls_bootstrap: bool,
    /// Client certificates signed by these CAs authenticate.
    pub client_ca_file: Option<PathBuf>,
    pub anonymous: bool,
    /// Bearer tokens through TokenReview.
    pub webhook_authentication: bool,
    pub authentication_cache_ttl: Duration,
    pub authorization: AuthorizationMode,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
    /// `enableDebuggingHandlers` (true): logs, exec, attach, port-forward
    /// and run; off, those paths are not served.
    pub debugging_handlers: bool,
    /// `enableSystemLogHandler` (true): `/logs/`, the node's /var/log.
    pub system_log_handler: bool,
    /// `tlsMinVersion`.
    pub tls_min_version: TlsMinVersion,
    /// `tlsCipherSuites` as offered (empty: every suite nodelet offers).
    pub tls_cipher_suites: Vec<String>,
    /// `streamingConnectionIdleTimeout` (4h): an exec, attach or
    /// port-forward stream with no byte either way for this long is closed;
    /// zero keeps idle streams open.
    pub streaming_idle_timeout: Duration,
}

/// The lowest TLS version the node API speaks (`tlsMinVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    /// TLS 1.2 (also what VersionTLS10 and VersionTLS11 get: nodelet's TLS
    /// library speaks nothing older, which is stricter and costs nothing).
    #[default]
    Tls12,
    Tls13,
}

/// Go's names for the cipher suites, the ones kubelet's `tlsCipherSuites`
/// accepts: those nodelet offers (ECDHE with an AEAD, and TLS 1.3's,
/// which Go and nodelet always enable), and those it knows but does not
/// offer (CBC, RC4, 3DES, plain RSA key exchange).
pub const OFFERED_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];
pub const KNOWN_NOT_OFFERED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// `tlsMinVersion` by kubelet's names.
pub fn parse_tls_min_version(v: &str) -> Result<TlsMinVersion, String> {
    match v {
        "" | "VersionTLS10" | "VersionTLS11" | "VersionTLS12" => Ok(TlsMinVersion::Tls12),
        "VersionTLS13" => Ok(TlsMinVersion::Tls13),
        other => Err(format!("Unsupported value: {other:?}: supported values: \"VersionTLS10\", \"VersionTLS11\", \"VersionTLS12\", \"VersionTLS13\"")),
    }
}

/// `tlsCipherSuites`: every name must be one Go knows (kubelet refuses
/// others); the ones nodelet does not offer are dropped with a warning, and
/// at least one TLS 1.2 suite must stay (TLS 1.3's are always on).
pub fn parse_tls_cipher_suites(names: &[String]) -> Result<Vec<String>, String> {
    let mut kept = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if OFFERED_CIPHER_SUITES.contains(&n) {
            kept.push(n.to_string());
        } else if KNOWN_NOT_OFFERED.contains(&n) {
            tracing::warn!(suite = n, "tlsCipherSuites: not offered by nodelet (no CBC, RC4, 3DES or plain RSA key exchange); left out");
        } else {
            return Err(format!("Unsupported value: {n:?}: not a cipher suite name kubelet knows"));
        }
    }
    if !names.is_empty() && !kept.iter().any(|n| n.starts_with("TLS_ECDHE_")) {
        return Err("none of the listed cipher suites can be offered for TLS 1.2 (nodelet offers ECDHE with AES-GCM or ChaCha20-Poly1305)".into());
    }
    Ok(kept)
}

/// Flag values for the node API; `None` when not given.
#[derive(Debug, Clone, Default)]
pub struct NodeApiFlags {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub read_only_port: Option<u16>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub anonymous_auth: Option<bool>,
    pub authentication_token_webhook: Option<bool>,
    pub authorization_mode: Option<String>,
    pub rotate_server_certificates: Option<bool>,
    pub tls_min_version: Option<String>,
    pub tls_cipher_suites: Vec<String>,
}

impl NodeApiSettings {
    /// Flags over the file over the v1beta1 defaults.
    pub fn resolve(f: &NodeApiFlags, file: &KubeletConfig) -> Result<Self, ConfigError> {
        let flag = |flag: &str, message: String| ConfigError::Flag { flag: flag.into(), message };
        let address_text = f.address.clone().or(file.address.clone()).unwrap_or_else(|| "0.0.0.0".into());
        let address: IpAddr =
            address_text.parse().map_err(|_| flag("address", format!("Invalid value: {address_text:?}: must be an IP address")))?;
        let mode_text = f.authorization_mode.clone().or(file.authorization.mode.clone()).unwrap_or_else(|| "Webhook".into());
        let authorization = match mode_text.as_str() {
            "Webhook" => AuthorizationMode::Webhook,
            "AlwaysAllow" => AuthorizationMode::AlwaysAllow,
            other => {
                return Err(flag("--authorization-mode", format!("Unsupported value: {other:?}: supported values: \"AlwaysAllow\", \"Webhook\"")));
            }
        };
        let tls_cert_file = f.tls_cert_file.clone().or(file.tls_cert_file.clone());
        let tls_private_key_file = f.tls_private_key_file.clone().or(file.tls_private_key_file.clone());
        if tls_cert_file.is_some() != tls_private_key_file.is_some() {
            return Err(flag("tlsCertFile", "tlsCertFile and tlsPrivateKeyFile go together".into()));
        }
        let auth = &file.authentication;
        let webhook = &file.authorization.webhook;
        let min_text = f.tls_min_version.clone().or(file.tls_min_version.clone()).unwrap_or_default();
        let tls_min_version = parse_tls_min_version(&min_text).map_err(|e| flag("tlsMinVersion", e))?;
        let suites = if f.tls_cipher_suites.is_empty() { file.tls_cipher_suites.clone().unwrap_or_default() } else { f.tls_cipher_suites.clone() };
        let tls_cipher_suites = parse_tls_cipher_suites(&suites).map_err(|e| flag("tlsCipherSuites", e))?;
        Ok(Self {
            fine_grained_authz: true,
            address,
            port: f.port.or(file.port).unwrap_or(10250),
            read_only_port: f.read_only_port.or(file.read_only_port).unwrap_or(0),
            tls_cert_file,
            tls_private_key_file,
            server_tls_bootstrap: f.rotate_server_certificates.or(file.server_tls_bootstrap).unwrap_or(false),
            client_ca_file: f.client_ca_file.clone().or(auth.x509.client_ca_file.clone()).filter(|p| !p.as_os_str().is_empty()),
            anonymous: f.anonymous_auth.or(auth.anonymous.enabled).unwrap_or(false),
            webhook_authentication: f.authentication_token_webhook.or(auth.webhook.enabled).unwrap_or(true),
            authentication_cache_ttl: auth.webhook.cache_ttl.unwrap_or(Duration::from_secs(120)),
            authorization,
            authorized_ttl: webhook.cache_authorized_ttl.unwrap_or(Duration::from_secs(300)),
            unauthorized_ttl: webhook.cache_unauthorized_ttl.unwrap_or(Duration::from_secs(30)),
            debugging_handlers: file.enable_debugging_handlers.unwrap_or(true),
            system_log_handler: file.enable_system_log_handler.unwrap_or(true),
            tls_min_version,
            tls_cipher_suites,
            streaming_idle_timeout: file.streaming_connection_idle_timeout.unwrap_or(Duration::from_secs(4 * 3600)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_secure_ones_and_flags_win() {
        let s = NodeApiSettings::resolve(&NodeApiFlags::default(), &KubeletConfig::default()).unwrap();
        assert_eq!(s.port, 10250);
        assert_eq!(s.read_only_port, 0);
        assert!(!s.anonymous);
        assert!(s.webhook_authentication);
        assert_eq!(s.authorization, AuthorizationMode::Webhook);
        assert_eq!((s.authentication_cache_ttl, s.authorized_ttl, s.unauthorized_ttl), (Duration::from_secs(120), Duration::from_secs(300), Duration::from_secs(30)));
        let mut file = KubeletConfig { port: Some(11250), ..Default::default() };
        file.authorization.mode = Some("Webhook".into());
        let flags = NodeApiFlags { authorization_mode: Some("AlwaysAllow".into()), ..Default::default() };
        let s = NodeApiSettings::resolve(&flags, &file).unwrap();
        assert_eq!(s.port, 11250);
        assert_eq!(s.authorization, AuthorizationMode::AlwaysAllow);
        let bad = NodeApiFlags { authorization_mode: Some("RBAC".into()), ..Default::default() };
        assert!(NodeApiSettings::resolve(&bad, &file).unwrap_err().to_string().contains("Unsupported value: \"RBAC\""));
        let half = KubeletConfig { tls_cert_file: Some("/c.pem".into()), ..Default::default() };
        assert!(NodeApiSettings::resolve(&NodeApiFlags::default(), &half).is_err());
    }

    #[test]
    fn tls_settings_by_kubelets_names() {
        assert_eq!(parse_tls_min_version("VersionTLS13"), Ok(TlsMinVersion::Tls13));
        assert_eq!(parse_tls_min_version("VersionTLS10"), Ok(TlsMinVersion::Tls12), "nothing older than 1.2 is spoken");
        assert!(parse_tls_min_version("TLS13").unwrap_err().contains("supported values"));
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A CIS-style list: the CBC and plain-RSA suites are left out, the rest kept.
        let kept = parse_tls_cipher_suites(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"])).unwrap();
        assert_eq!(kept, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert!(parse_tls_cipher_suites(&names(&["TLS_FANCY_NEW"])).unwrap_err().contains("TLS_FANCY_NEW"), "an unknown name is refused, as kubelet does");
        assert!(parse_tls_cipher_suites(&names(&["TLS_RSA_WITH_AES_128_CBC_SHA"])).is_err(), "nothing left to offer for TLS 1.2");
        assert_eq!(parse_tls_cipher_suites(&[]), Ok(vec![]));
        let f = NodeApiFlags { tls_min_version: Some("VersionTLS14".into()), ..Default::default() };
        let e = NodeApiSettings::resolve(&f, &KubeletConfig::default()).unwrap_err().to_string();
        assert!(e.contains("tlsMinVersion"), "{e}");
    }
}
