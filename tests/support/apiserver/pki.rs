//! The test cluster's certificate authority: the apiserver's serving
//! certificate, client certificates for test users, and the signer that
//! issues kubelet client certificates from approved CSRs.

use std::time::Duration;

use x509_parser::prelude::FromDer;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Certificates are backdated for clock skew, as kube-controller-manager's
/// signer does (5 minutes, less for short test lifetimes).
fn validity(p: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    let backdate = (lifetime.as_secs() as i64 / 10).min(300);
    p.not_before = now - time::Duration::seconds(backdate);
    p.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "nodelet-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, Duration::from_secs(365 * 86400));
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// The apiserver's serving certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Pair {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, Duration::from_secs(86400));
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A client certificate for user `cn` in `groups`.
    pub fn client(&self, cn: &str, groups: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, Duration::from_secs(86400));
        let cert = params.signed_by(&key, &self.issuer).expect("client certificate");
        Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// Signs a CSR (PEM) as the kube-apiserver-client-kubelet signer does:
    /// the subject as requested, client auth, `lifetime` long.
    pub fn sign_csr(&self, csr_pem: &str, lifetime: Duration) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| format!("bad CSR: {e}"))?;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.is_ca = IsCa::NoCa;
        validity(&mut csr.params, lifetime);
        csr.signed_by(&self.issuer).map(|c| c.pem()).map_err(|e| e.to_string())
    }
}

/// The CN and O entries of a DER certificate's subject.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, groups))
}

/// The subject CN, O entries and key usage a CSR (PEM) asks for.
pub fn csr_subject(csr_pem: &str) -> Option<(String, Vec<String>)> {
    let der = pem_der(csr_pem)?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).ok()?;
    let subject = &csr.certification_request_info.subject;
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, groups))
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(p.contents)
}
