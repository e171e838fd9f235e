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
        Ok(Self {
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
}
