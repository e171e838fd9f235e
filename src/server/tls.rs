//! The node API's TLS: its serving certificate and which client
//! certificates it verifies.
//!
//! The certificate comes, as kubelet's does, from `tlsCertFile` and
//! `tlsPrivateKeyFile` when set, else from `<cert-dir>/kubelet.crt` and
//! `kubelet.key`, made self-signed (for the node's name, `localhost` and its
//! addresses, one year) when missing or expired. With
//! `authentication.x509.clientCAFile`, client certificates signed by those
//! CAs are verified in the handshake; a client may also come without one (a
//! bearer token, or anonymous) and is then judged by the node API.
//!
//! The client CA file and the configured serving certificate and key are
//! read again when their contents change (looked at every 5 s, as kubelet's
//! dynamic certificate files are): new connections get the new ones, open
//! ones keep theirs. A changed file that cannot be used is logged, naming
//! it, and the last good one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Errors setting up TLS; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file that cannot be read or used.
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

fn file_err(path: &Path, m: impl std::fmt::Display) -> TlsError {
    TlsError::File { file: path.display().to_string(), message: m.to_string() }
}

/// The serving certificate new connections get; can be replaced (rotation).
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    pub fn new(key: CertifiedKey) -> Self {
        Self { current: RwLock::new(Arc::new(key)) }
    }

    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A certificate chain and key from PEM.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| file_err(what, e))?;
    if chain.is_empty() {
        return Err(file_err(what, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| file_err(what, format!("the private key: {e}")))?;
    let signing = rustls::crypto::ring::default_provider().key_provider.load_private_key(key).map_err(|e| file_err(what, e))?;
    let ck = CertifiedKey::new(chain, signing);
    // A certificate and a key from different pairs (one file replaced, the
    // other not yet) would fail every handshake: refused here instead.
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(file_err(what, format!("the certificate and the private key do not belong together: {e}"))),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_err(path, e))
}

/// The serving certificate from the configured files.
pub fn from_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    certified_key(&read(cert)?, &read(key)?, cert)
}

/// `<cert-dir>/kubelet.crt` and `kubelet.key`: reused while valid, else
/// made anew, self-signed for `names` (DNS names or IP addresses), one year.
pub fn self_signed(cert_dir: &Path, names: &[String]) -> Result<CertifiedKey, TlsError> {
    let (crt, key) = (cert_dir.join("kubelet.crt"), cert_dir.join("kubelet.key"));
    if let (Ok(c), Ok(k)) = (std::fs::read(&crt), std::fs::read(&key)) {
        let valid = crate::cluster::certs::Validity::of_pem(&c).is_some_and(|v| v.not_after > crate::clock::UnixNanos::now().secs() + 60);
        if valid && let Ok(ck) = certified_key(&c, &k, &crt) {
            return Ok(ck);
        }
    }
    let host = names.first().cloned().unwrap_or_else(|| "localhost".into());
    let mut sans = names.to_vec();
    sans.push("localhost".into());
    sans.sort();
    sans.dedup();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| file_err(&key, e))?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| file_err(&crt, e))?;
    // rcgen's validity takes any SystemTime; jiff is the agent's one time crate.
    let now = std::time::SystemTime::now();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{host}@{}", jiff::Timestamp::now().as_second()));
    params.not_before = (now - std::time::Duration::from_secs(5 * 60)).into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 24 * 3600)).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&kp).map_err(|e| file_err(&crt, e))?;
    std::fs::create_dir_all(cert_dir).map_err(|e| file_err(cert_dir, e))?;
    crate::files::write_atomic(&key, kp.serialize_pem().as_bytes(), 0o600).map_err(|e| file_err(&key, e))?;
    crate::files::write_atomic(&crt, cert.pem().as_bytes(), 0o644).map_err(|e| file_err(&crt, e))?;
    tracing::info!(cert = %crt.display(), "made a self-signed serving certificate for the node API");
    certified_key(cert.pem().as_bytes(), kp.serialize_pem().as_bytes(), &crt)
}

/// What the operator allows of TLS (`tlsMinVersion`, `tlsCipherSuites`).
#[derive(Debug, Clone, Default)]
pub struct TlsPolicy {
    pub min_version: crate::config::node_api::TlsMinVersion,
    /// Go's names of the TLS 1.2 suites to offer; empty: all.
    pub cipher_suites: Vec<String>,
}

/// The crypto provider with the suites `policy` allows: the listed TLS 1.2
/// ones (Go's names; `…_CHACHA20_POLY1305` is the `_SHA256` suite) and all
/// of TLS 1.3's, which Go and kubelet never restrict either.
fn provider_for(policy: &TlsPolicy) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !policy.cipher_suites.is_empty() {
        let wanted: Vec<String> = policy
            .cipher_suites
            .iter()
            .map(|n| if n.ends_with("POLY1305") { format!("{n}_SHA256") } else { n.clone() })
            .collect();
        provider.cipher_suites.retain(|s| {
            let name = format!("{:?}", s.suite());
            name.starts_with("TLS13_") || wanted.contains(&name)
        });
    }
    provider
}

/// The rustls server configuration: the serving certificate, and client
/// certificates verified against `client_ca` when given (optional: a client
/// may authenticate otherwise), under the operator's TLS policy.
pub fn server_config(cert: Arc<ServingCert>, client_ca: Option<&PathBuf>, policy: &TlsPolicy) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(provider_for(policy));
    let versions: &[&rustls::SupportedProtocolVersion] = match policy.min_version {
        crate::config::node_api::TlsMinVersion::Tls13 => &[&rustls::version::TLS13],
        crate::config::node_api::TlsMinVersion::Tls12 => rustls::DEFAULT_VERSIONS,
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::File { file: "TLS".into(), message: e.to_string() })?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(path)?) {
                roots.add(c.map_err(|e| file_err(path, e))?).map_err(|e| file_err(path, e))?;
            }
            if roots.is_empty() {
                return Err(file_err(path, "no CA certificate in the file"));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| file_err(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The files the node API's TLS is read from, followed while it runs.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub client_ca: Option<PathBuf>,
    /// `tlsCertFile` and `tlsPrivateKeyFile`, when the certificate is the
    /// operator's (not self-signed, not from the cluster's signer).
    pub cert_files: Option<(PathBuf, PathBuf)>,
}

/// How often the files are looked at.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn digest(paths: &[&PathBuf]) -> Option<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).ok()?);
        h.update([0u8]);
    }
    Some(h.finalize().into())
}

/// The server configuration, kept current with its files: the receiver
/// always holds the configuration new connections should get; the future
/// follows the files (run it beside the server).
pub fn reloading(
    serving: Arc<ServingCert>,
    sources: Sources,
    policy: TlsPolicy,
) -> Result<(tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>, impl std::future::Future<Output = ()> + Send), TlsError> {
    let first = Arc::new(server_config(serving.clone(), sources.client_ca.as_ref(), &policy)?);
    let (tx, rx) = tokio::sync::watch::channel(first);
    let follow = async move {
        let ca_paths: Vec<&PathBuf> = sources.client_ca.iter().collect();
        let cert_paths: Vec<&PathBuf> = sources.cert_files.iter().flat_map(|(c, k)| [c, k]).collect();
        let (mut ca_seen, mut cert_seen) = (digest(&ca_paths), digest(&cert_paths));
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            if let Some((cert, key)) = &sources.cert_files {
                let now = digest(&cert_paths);
                if now.is_some() && now != cert_seen {
                    cert_seen = now;
                    match from_files(cert, key) {
                        Ok(ck) => {
                            serving.set(ck);
                            tracing::info!(cert = %cert.display(), "the node API's serving certificate changed on disk: new connections get it");
                        }
                        Err(e) => tracing::error!(error = %e, "the changed serving certificate cannot be used; keeping the last good one"),
                    }
                }
            }
            if let Some(ca) = &sources.client_ca {
                let now = digest(&ca_paths);
                if now.is_some() && now != ca_seen {
                    ca_seen = now;
                    match server_config(serving.clone(), Some(ca), &policy) {
                        Ok(c) => {
                            let _ = tx.send(Arc::new(c));
                            tracing::info!(file = %ca.display(), "the node API's client CA changed on disk: new connections are verified against it");
                        }
                        Err(e) => tracing::error!(error = %e, "the changed client CA file cannot be used; keeping the last good one"),
                    }
                }
            }
        }
    };
    Ok((rx, follow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_pair_is_made_once_and_reused() {
        crate::cluster::client::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["node-1".to_string(), "10.0.0.9".to_string()];
        self_signed(dir.path(), &names).unwrap();
        let first = std::fs::read(dir.path().join("kubelet.crt")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("kubelet.key")).unwrap().permissions().mode() & 0o777, 0o600);
        self_signed(dir.path(), &names).unwrap();
        assert_eq!(std::fs::read(dir.path().join("kubelet.crt")).unwrap(), first, "reused while valid");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&first).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap().value.general_names.len();
        assert_eq!(sans, 3, "name, address and localhost");
        let e = from_files(&dir.path().join("missing.crt"), &dir.path().join("kubelet.key")).unwrap_err();
        assert!(e.to_string().contains("missing.crt"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_serving_certificate_is_served_and_a_broken_one_is_not() {
        crate::cluster::client::install_crypto();
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        self_signed(&a, &["node-a".to_string()]).unwrap();
        self_signed(&b, &["node-b".to_string()]).unwrap();
        let (crt, key) = (t.path().join("tls.crt"), t.path().join("tls.key"));
        std::fs::copy(a.join("kubelet.crt"), &crt).unwrap();
        std::fs::copy(a.join("kubelet.key"), &key).unwrap();
        let serving = Arc::new(ServingCert::new(from_files(&crt, &key).unwrap()));
        let sources = Sources { client_ca: None, cert_files: Some((crt.clone(), key.clone())) };
        let (_rx, follow) = reloading(serving.clone(), sources, TlsPolicy::default()).unwrap();
        tokio::spawn(follow);
        let served = || serving.current.read().unwrap().cert[0].to_vec();
        let der = |dir: &Path| {
            let pem = std::fs::read(dir.join("kubelet.crt")).unwrap();
            CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
        };
        assert_eq!(served(), der(&a));
        std::fs::write(&crt, "garbage").unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert_eq!(served(), der(&a), "a broken file leaves the last good certificate");
        std::fs::copy(b.join("kubelet.crt"), &crt).unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert_eq!(served(), der(&a), "b's certificate with a's key is not a pair");
        assert!(from_files(&crt, &key).unwrap_err().to_string().contains("do not belong together"));
        std::fs::copy(b.join("kubelet.key"), &key).unwrap();
        tokio::time::sleep(RELOAD_EVERY * 2).await;
        assert_eq!(served(), der(&b), "the new certificate is served");
    }
}
