//! The node API's serving certificate from the cluster (`serverTLSBootstrap`,
//! kubelet's `--rotate-server-certificates`): a CSR to the
//! `kubernetes.io/kubelet-serving` signer for `system:node:<node>` in
//! `system:nodes`, with the node's name and addresses as SANs and the usages
//! digital signature, key encipherment and server auth. The control plane
//! does not approve these by itself (an operator or an approver does); until
//! one is issued the node API is not served. The certificate is written as
//! `<cert-dir>/kubelet-server-<time>.pem` with the link
//! `kubelet-server-current.pem`, reused on restart while valid for the same
//! names, and renewed at 70–90 % of its lifetime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ClusterError;
use super::certs::{self, SERVING_SIGNER, SERVING_USAGES, Validity, Wanted};

/// The link to the current serving certificate and key.
pub const CURRENT: &str = "kubelet-server-current.pem";

/// A certificate and key (PEM) and its validity.
pub type Issued = (String, String, Validity);

fn wanted(names: &[String]) -> Wanted<'_> {
    Wanted { signer: SERVING_SIGNER, usages: &SERVING_USAGES, sans: names }
}

/// Whether a PEM certificate names every one of `names`.
fn covers(pem: &[u8], names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem) else { return false };
    let Ok(cert) = p.parse_x509() else { return false };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    let have: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) if b.len() == 4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
            GeneralName::IPAddress(b) if b.len() == 16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
            _ => None,
        })
        .collect();
    names.iter().all(|n| have.contains(n))
}

/// The current serving certificate in `cert_dir`, if valid and for `names`.
fn current(cert_dir: &Path, names: &[String]) -> Option<Issued> {
    let pem = std::fs::read(cert_dir.join(CURRENT)).ok()?;
    let v = Validity::of_pem(&pem)?;
    let now = crate::clock::UnixNanos::now().secs();
    if v.not_after <= now || !covers(&pem, names) {
        return None;
    }
    let text = String::from_utf8(pem).ok()?;
    Some((text.clone(), text, v))
}

/// The serving certificate: the one in the cert dir while valid, else a new
/// one from the signer (waiting for approval, asking again after a failed
/// or timed-out request).
pub async fn obtain(client: &kube::Client, node: &str, names: &[String], cert_dir: &Path) -> Issued {
    if let Some(c) = current(cert_dir, names) {
        tracing::info!(cert = %cert_dir.join(CURRENT).display(), "using the existing serving certificate");
        return c;
    }
    loop {
        tracing::info!(?names, "requesting a serving certificate from the kubelet-serving signer; the node API waits for it");
        match issue(client, node, names, cert_dir).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "no serving certificate yet; asking again in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

async fn issue(client: &kube::Client, node: &str, names: &[String], cert_dir: &Path) -> Result<Issued, ClusterError> {
    let (cert, key) = certs::request(client, node, wanted(names)).await?;
    let v = Validity::of_pem(cert.as_bytes()).ok_or_else(|| ClusterError::Bootstrap("the serving certificate does not parse".into()))?;
    certs::write_pem_as(cert_dir, "server", &cert, &key)?;
    Ok((cert, key, v))
}

/// Renews the serving certificate for ever; `apply` installs each new one.
pub async fn rotate(
    client: kube::Client,
    node: String,
    names: Vec<String>,
    cert_dir: PathBuf,
    validity: Validity,
    metrics: &crate::metrics::Metrics,
    apply: impl Fn(&str, &str) -> Result<(), String>,
) {
    certs::keep_renewed(certs::Certificate::Serving, validity, metrics, || async {
        let (cert, key, v) = issue(&client, &node, &names, &cert_dir).await?;
        apply(&cert, &key).map_err(|e| ClusterError::Tls { what: "the renewed serving certificate".into(), message: e })?;
        Ok(v)
    })
    .await
}
