//! TLS bootstrap and client certificate rotation, as kubelet does them.
//!
//! With a usable `--kubeconfig` (a client certificate not yet expired, or a
//! token) nodelet uses it. Otherwise it takes `--bootstrap-kubeconfig` (a
//! bootstrap token), makes an ECDSA P-256 key, sends a CertificateSigningRequest
//! for `system:node:<node>` in `system:nodes` to the
//! `kubernetes.io/kube-apiserver-client-kubelet` signer with kubelet's usages
//! (digital signature, key encipherment, client auth), waits for it to be
//! approved and signed, writes the certificate and key to
//! `<cert-dir>/kubelet-client-<time>.pem` (0600) with the symlink
//! `kubelet-client-current.pem`, and writes a kubeconfig pointing at it.
//! Later it renews the certificate when 70–90 % (jittered) of its lifetime
//! has passed, through its own identity, without dropping connections.

use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{Api, PostParams};
use kube::config::Kubeconfig;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::client::{self, RotatingCert};
use crate::files;
use super::ClusterError;

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates (the node API on :10250).
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// The usages of a kubelet client CSR. The `kube-apiserver-client-kubelet`
/// signer and the CSR approver up to v1.24 accept exactly this set (v1.25
/// and later also accept it without key encipherment); kubelet sends it for
/// every key type until v1.27.
pub const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// The usages of a kubelet serving CSR, the only set the `kubelet-serving`
/// signer accepts.
pub const SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];
pub const CURRENT: &str = "kubelet-client-current.pem";

/// How long a CSR may wait for approval before the attempt is given up, as
/// kubelet's certificate manager does.
const CSR_WAIT: Duration = Duration::from_secs(15 * 60);

/// Where the credentials live.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub kubeconfig: PathBuf,
    pub bootstrap: Option<PathBuf>,
    pub cert_dir: PathBuf,
}

/// A certificate's validity, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// The first PEM certificate in `pem`.
    pub fn of_pem(pem: &[u8]) -> Option<Self> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let cert = p.parse_x509().ok()?;
        Some(Self { not_before: cert.validity().not_before.timestamp(), not_after: cert.validity().not_after.timestamp() })
    }

    /// When to renew: at a random point between 70 % and 90 % of the
    /// lifetime, as kubelet's certificate manager does.
    pub fn rotation_deadline(&self, jitter: f64) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0) as f64;
        self.not_before + (lifetime * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
    }
}

/// The node's credentials: its kubeconfig, and the rotating client
/// certificate when it uses one.
pub struct Credentials {
    pub kubeconfig: Kubeconfig,
    pub cert: Option<(Arc<RotatingCert>, Validity)>,
}

fn now_secs() -> i64 {
    crate::clock::UnixNanos::now().secs()
}

/// A kubeconfig file, within decode.rs' size and nesting bounds.
pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ClusterError> {
    let bytes = crate::decode::read_file(path).map_err(|e| ClusterError::file(path, e))?;
    if let Some(line) = crate::decode::flow_depth_exceeds(&bytes, crate::decode::MAX_DEPTH) {
        return Err(ClusterError::file(path, crate::decode::DecodeError::TooDeep { max: crate::decode::MAX_DEPTH, line }));
    }
    let text = String::from_utf8(bytes).map_err(|e| ClusterError::file(path, e))?;
    Kubeconfig::from_yaml(&text).map_err(|e| ClusterError::file(path, e))
}

/// A certificate and its key, PEM.
type PemPair = (Vec<u8>, Vec<u8>);

/// The client certificate and key a kubeconfig's current user presents.
fn client_pem(kc: &Kubeconfig, file: &Path) -> Result<Option<PemPair>, ClusterError> {
    use base64::Engine;
    let current = kc.current_context.clone().unwrap_or_default();
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.user.clone().unwrap_or_default())
        .or_else(|| kc.auth_infos.first().map(|a| a.name.clone()))
        .unwrap_or_default();
    let Some(auth) = kc.auth_infos.iter().find(|a| a.name == user).and_then(|a| a.auth_info.clone()) else {
        return Ok(None);
    };
    let load = |path: &Option<String>, data: &Option<String>| -> Result<Option<Vec<u8>>, ClusterError> {
        if let Some(d) = data {
            return base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|e| ClusterError::file(file, format!("bad base64 credential data: {e}")));
        }
        match path {
            Some(p) => std::fs::read(p).map(Some).map_err(|e| ClusterError::file(Path::new(p), e)),
            None => Ok(None),
        }
    };
    let cert = load(&auth.client_certificate, &auth.client_certificate_data)?;
    let key_data = auth.client_key_data.as_ref().map(|s| secrecy::ExposeSecret::expose_secret(s).to_string());
    let key = load(&auth.client_key, &key_data)?;
    Ok(cert.zip(key))
}

/// The certificate and key in `<cert-dir>/kubelet-client-current.pem`, if
/// it holds a usable pair.
fn current_pem(cert_dir: &Path) -> Option<(PemPair, Validity)> {
    let pem = std::fs::read(cert_dir.join(CURRENT)).ok()?;
    let validity = Validity::of_pem(&pem)?;
    RotatingCert::default().set_pem(&pem, &pem).ok()?;
    Some(((pem.clone(), pem), validity))
}

/// Loads the node's kubeconfig, or bootstraps one. A client certificate
/// that is missing, unreadable or expired is no credential: with a
/// bootstrap kubeconfig, nodelet bootstraps again. A newer certificate in
/// the cert dir (rotated after the kubeconfig was written) wins over the
/// kubeconfig's own.
pub async fn load_or_bootstrap(paths: &CertPaths, node: &str) -> Result<Credentials, ClusterError> {
    if paths.kubeconfig.exists() {
        let kc = read_kubeconfig(&paths.kubeconfig)?;
        let from_kubeconfig = match client_pem(&kc, &paths.kubeconfig) {
            Ok(None) => return Ok(Credentials { kubeconfig: kc, cert: None }),
            Ok(Some((cert, key))) => match Validity::of_pem(&cert) {
                Some(v) => Some(((cert, key), v)),
                None => {
                    tracing::warn!(kubeconfig = %paths.kubeconfig.display(), "the client certificate does not parse");
                    None
                }
            },
            Err(e) if paths.bootstrap.is_some() => {
                tracing::warn!(error = %e, "the kubeconfig's client certificate cannot be read");
                None
            }
            Err(e) => return Err(e),
        };
        let rotated = current_pem(&paths.cert_dir);
        let best = match (from_kubeconfig, rotated) {
            (Some(a), Some(b)) => Some(if b.1.not_after > a.1.not_after { b } else { a }),
            (a, b) => a.or(b),
        };
        match best {
            Some(((cert, key), validity)) if validity.not_after > now_secs() => {
                let rotating = Arc::new(RotatingCert::default());
                rotating.set_pem(&cert, &key)?;
                tracing::info!(kubeconfig = %paths.kubeconfig.display(), "using the existing client certificate");
                return Ok(Credentials { kubeconfig: kc, cert: Some((rotating, validity)) });
            }
            Some(_) => tracing::warn!(kubeconfig = %paths.kubeconfig.display(), "the client certificate has expired"),
            None => {}
        }
    }
    let Some(bootstrap) = &paths.bootstrap else {
        return Err(ClusterError::Bootstrap(format!(
            "{}: no usable credentials, and no --bootstrap-kubeconfig to get some",
            paths.kubeconfig.display()
        )));
    };
    bootstrap_from(bootstrap, paths, node).await
}

async fn bootstrap_from(bootstrap: &Path, paths: &CertPaths, node: &str) -> Result<Credentials, ClusterError> {
    let boot = read_kubeconfig(bootstrap)?;
    tracing::info!(bootstrap = %bootstrap.display(), "TLS bootstrap: requesting a client certificate");
    let client = client::build(boot.clone(), None).await?;
    let (cert, key) = request_certificate(&client, node).await?;
    let current = write_pem(&paths.cert_dir, &cert, &key)?;
    write_kubeconfig(&boot, &paths.kubeconfig, &current)?;
    tracing::info!(kubeconfig = %paths.kubeconfig.display(), cert = %current.display(), "TLS bootstrap done");
    let kubeconfig = read_kubeconfig(&paths.kubeconfig)?;
    let rotating = Arc::new(RotatingCert::default());
    rotating.set_pem(cert.as_bytes(), key.as_bytes())?;
    let validity = Validity::of_pem(cert.as_bytes()).ok_or_else(|| ClusterError::Bootstrap("the issued certificate does not parse".into()))?;
    Ok(Credentials { kubeconfig, cert: Some((rotating, validity)) })
}

/// What a CSR asks for besides the node's identity.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub signer: &'a str,
    pub usages: &'a [&'a str],
    /// Subject alternative names: DNS names or IP addresses.
    pub sans: &'a [String],
}

/// The node's client certificate.
pub const CLIENT: Wanted<'static> = Wanted { signer: SIGNER, usages: &CLIENT_USAGES, sans: &[] };

/// Sends a CSR for the node's client certificate and waits until it is
/// issued; a denial or a failure is an error with the signer's reason.
pub async fn request_certificate(client: &kube::Client, node: &str) -> Result<(String, String), ClusterError> {
    request(client, node, CLIENT).await
}

/// Sends a CSR for `system:node:<node>` in `system:nodes` with `wanted`'s
/// signer, usages and SANs, and waits until it is issued.
pub async fn request(client: &kube::Client, node: &str, wanted: Wanted<'_>) -> Result<(String, String), ClusterError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| ClusterError::Bootstrap(format!("key: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
    for name in wanted.sans {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                name.clone().try_into().map_err(|e| ClusterError::Bootstrap(format!("subject alternative name {name:?}: {e}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| ClusterError::Bootstrap(format!("CSR: {e}")))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut obj = CertificateSigningRequest::default();
    obj.metadata.generate_name = Some("csr-".into());
    obj.spec = CertificateSigningRequestSpec {
        request: ByteString(csr_pem.into_bytes()),
        signer_name: wanted.signer.into(),
        usages: Some(wanted.usages.iter().map(|u| u.to_string()).collect()),
        ..Default::default()
    };
    let created = create_retrying(&csrs, &obj).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "waiting for the certificate signing request to be approved and signed");
    let decided = |c: Option<&CertificateSigningRequest>| {
        let Some(status) = c.and_then(|c| c.status.as_ref()) else { return false };
        status.certificate.as_ref().is_some_and(|b| !b.0.is_empty())
            || status.conditions.iter().flatten().any(|c| c.type_ == "Denied" || c.type_ == "Failed")
    };
    let waited = tokio::time::timeout(CSR_WAIT, kube::runtime::wait::await_condition(csrs, &name, decided))
        .await
        .map_err(|_| ClusterError::Bootstrap(format!("certificate signing request {name} was not approved within {} minutes", CSR_WAIT.as_secs() / 60)))?;
    let done = waited
        .map_err(|e| ClusterError::Bootstrap(format!("watching CSR {name}: {e}")))?
        .ok_or_else(|| ClusterError::Bootstrap(format!("certificate signing request {name} was deleted")))?;
    let status = done.status.unwrap_or_default();
    if let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "Denied" || c.type_ == "Failed") {
        let verb = if c.type_ == "Denied" { "denied" } else { "failed" };
        return Err(ClusterError::Bootstrap(format!(
            "certificate signing request {name} was {verb}: {}: {}",
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        )));
    }
    let cert = String::from_utf8(status.certificate.map(|b| b.0).unwrap_or_default())
        .map_err(|_| ClusterError::Bootstrap(format!("CSR {name}: the certificate is not PEM")))?;
    Ok((cert, key.serialize_pem()))
}

/// How long nodelet keeps sending its CSR while the apiserver does not
/// answer or answers with a transient error, as kubelet waits for the
/// apiserver before it bootstraps.
const CSR_CREATE_PATIENCE: Duration = Duration::from_secs(60);

/// Creates the CSR, sending it again while the apiserver is unreachable,
/// overloaded, or still warming its authorizers (a 403 right after it
/// starts); any other error, or a transient one that lasts a minute, fails.
async fn create_retrying(csrs: &Api<CertificateSigningRequest>, obj: &CertificateSigningRequest) -> Result<CertificateSigningRequest, ClusterError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match csrs.create(&PostParams::default(), obj).await {
            Ok(c) => return Ok(c),
            Err(e) if crate::kubeapi::is_transient(&e) && started.elapsed() < CSR_CREATE_PATIENCE => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sending the certificate signing request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(ClusterError::api("creating the CSR", e)),
        }
    }
}

/// Writes certificate and key to a new timestamped file (0600) and points
/// `kubelet-client-current.pem` at it.
pub fn write_pem(cert_dir: &Path, cert: &str, key: &str) -> Result<PathBuf, ClusterError> {
    write_pem_as(cert_dir, "client", cert, key)
}

/// Writes `kubelet-<kind>-<time>.pem` (0600) and points
/// `kubelet-<kind>-current.pem` at it, as kubelet names its client and
/// server certificates.
pub fn write_pem_as(cert_dir: &Path, kind: &str, cert: &str, key: &str) -> Result<PathBuf, ClusterError> {
    let stamp = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d-%H-%M-%S").to_string();
    let file = cert_dir.join(format!("kubelet-{kind}-{stamp}.pem"));
    let mut pem = cert.trim_end().to_string();
    pem.push('\n');
    pem.push_str(key);
    files::write_atomic(&file, pem.as_bytes(), 0o600).map_err(|e| ClusterError::file(&file, e))?;
    let current = cert_dir.join(format!("kubelet-{kind}-current.pem"));
    files::symlink_atomic(&file, &current).map_err(|e| ClusterError::file(&current, e))?;
    Ok(current)
}

/// The node's kubeconfig: the bootstrap kubeconfig's cluster entry as it
/// is (server, CA, TLS server name, proxy), with the client certificate and
/// key in `pem`.
fn write_kubeconfig(boot: &Kubeconfig, path: &Path, pem: &Path) -> Result<(), ClusterError> {
    use kube::config::{AuthInfo, Context, NamedAuthInfo, NamedCluster, NamedContext};
    let context = boot.current_context.as_ref().and_then(|c| boot.contexts.iter().find(|x| &x.name == c));
    let cluster_name = context.and_then(|c| c.context.as_ref()).map(|c| c.cluster.clone());
    let cluster = cluster_name
        .and_then(|n| boot.clusters.iter().find(|c| c.name == n))
        .or_else(|| boot.clusters.first())
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| ClusterError::Bootstrap("the bootstrap kubeconfig names no cluster".into()))?;
    let pem = pem.display().to_string();
    let kc = Kubeconfig {
        clusters: vec![NamedCluster { name: "default-cluster".into(), cluster: Some(cluster), other: Default::default() }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo { client_certificate: Some(pem.clone()), client_key: Some(pem), ..Default::default() }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("default-context".into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Default::default()
    };
    let yaml = serde_yaml::to_string(&kc).map_err(|e| ClusterError::file(path, e))?;
    files::write_atomic(path, yaml.as_bytes(), 0o600).map_err(|e| ClusterError::file(path, e))
}

/// Renews the client certificate at a jittered 70–90 % of its lifetime,
/// forever. New connections use the new certificate at once. If renewal
/// keeps failing until the certificate expires, it returns: the agent then
/// exits, and on its next start bootstraps again (as kubelet does).
pub async fn rotate(client: kube::Client, cert: Arc<RotatingCert>, validity: Validity, cert_dir: PathBuf, node: String, metrics: Arc<Metrics>) {
    keep_renewed(Certificate::Client, validity, &metrics, || async {
        let (pem, key) = request_certificate(&client, &node).await?;
        // Check the pair before anything points at it.
        let v = Validity::of_pem(pem.as_bytes()).ok_or_else(|| ClusterError::Bootstrap("the renewed certificate does not parse".into()))?;
        RotatingCert::default().set_pem(pem.as_bytes(), key.as_bytes())?;
        write_pem(&cert_dir, &pem, &key)?;
        cert.set_pem(pem.as_bytes(), key.as_bytes())?;
        Ok(v)
    })
    .await
}

/// Which of the node's certificates a rotation keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certificate {
    Client,
    Serving,
}

/// Calls `renew` at a jittered 70–90 % of the certificate's lifetime,
/// forever, retrying a failed renewal with a growing delay; returns once a
/// renewal has failed past the certificate's expiry. The certificate in use
/// and failed renewals go to kubelet's certificate-manager metrics.
pub async fn keep_renewed<F, Fut>(cert: Certificate, mut validity: Validity, metrics: &Metrics, mut renew: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Validity, ClusterError>>,
{
    let serving = cert == Certificate::Serving;
    let which = if serving { "serving" } else { "client" };
    let errors = if serving { &metrics.server_renew_errors } else { &metrics.client_renew_errors };
    metrics.certificate_in_use(serving, validity.not_after);
    loop {
        let deadline = validity.rotation_deadline(rand::random::<f64>());
        // A floor, so an odd certificate cannot start a storm of CSRs.
        let wait = (deadline - now_secs()).max(5) as u64;
        tracing::info!(certificate = which, in_seconds = wait, "certificate rotation scheduled");
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let mut delay = Duration::from_secs(2);
        loop {
            match renew().await {
                Ok(v) => {
                    tracing::info!(certificate = which, not_after = v.not_after, "certificate rotated");
                    validity = v;
                    metrics.certificate_in_use(serving, validity.not_after);
                    break;
                }
                Err(e) if now_secs() >= validity.not_after => {
                    errors.inc();
                    tracing::error!(certificate = which, error = %e, "certificate rotation failed and the certificate has expired");
                    return;
                }
                Err(e) => {
                    errors.inc();
                    tracing::warn!(certificate = which, error = %e, retry_in = delay.as_secs(), "certificate rotation failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_happens_between_70_and_90_percent() {
        let v = Validity { not_before: 1000, not_after: 2000 };
        assert_eq!(v.rotation_deadline(0.0), 1700);
        assert_eq!(v.rotation_deadline(1.0), 1900);
        assert_eq!(v.rotation_deadline(0.5), 1800);
    }
}
