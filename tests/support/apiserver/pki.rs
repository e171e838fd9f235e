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
    let now = std::time::SystemTime::now();
    let backdate = Duration::from_secs((lifetime.as_secs() / 10).min(300));
    p.not_before = (now - backdate).into();
    p.not_after = (now + lifetime).into();
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

    /// Signs a CSR (PEM) as kube-controller-manager's signer does: the
    /// subject and SANs as requested, the key usages asked for in the CSR
    /// object, client or server auth, `lifetime` long.
    pub fn sign_csr(&self, csr_pem: &str, usages: &[String], lifetime: Duration) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| format!("bad CSR: {e}"))?;
        csr.params.extended_key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
                _ => None,
            })
            .collect();
        csr.params.key_usages = usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                _ => None,
            })
            .collect();
        csr.params.is_ca = IsCa::NoCa;
        validity(&mut csr.params, lifetime);
        csr.signed_by(&self.issuer).map(|c| c.pem()).map_err(|e| e.to_string())
    }
}

/// What a CSR asks for: its subject and subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrInfo {
    pub cn: String,
    pub orgs: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

/// Parses a CSR (PEM); None when it is not one.
pub fn csr_info(csr_pem: &str) -> Option<CsrInfo> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let der = pem_der(csr_pem)?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).ok()?;
    let subject = &csr.certification_request_info.subject;
    let mut info = CsrInfo {
        cn: subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string(),
        orgs: subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                    GeneralName::RFC822Name(e) => info.emails.push(e.to_string()),
                    GeneralName::URI(u) => info.uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => info.ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                        16 => info.ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
    Some(info)
}

/// Go's `sets.List` of usages, as the signer prints it: `[a b c]`.
fn usage_list(set: &[&str]) -> String {
    let mut v: Vec<&str> = set.to_vec();
    v.sort();
    format!("[{}]", v.join(" "))
}

fn same_set(usages: &[String], want: &[&str]) -> bool {
    let mut a: Vec<&str> = usages.iter().map(String::as_str).collect();
    a.sort();
    a.dedup();
    let mut b = want.to_vec();
    b.sort();
    a == b
}

/// The only usage set the v1.24 `kube-apiserver-client-kubelet` signer and
/// approver accept (v1.25 and later also accept it without key encipherment;
/// this apiserver is as strict as the oldest supported control plane).
pub const KUBELET_CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];
/// The only usage set the `kubelet-serving` signer accepts.
pub const KUBELET_SERVING_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

/// `ValidateKubeletClientCSR`: the errors and their order as upstream's.
pub fn validate_kubelet_client(info: &CsrInfo, usages: &[String]) -> Result<(), String> {
    if info.orgs != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !info.dns.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if !info.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !info.ips.is_empty() {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if !info.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !info.cn.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    if !same_set(usages, &KUBELET_CLIENT_USAGES) {
        return Err(format!("usages did not match {}", usage_list(&KUBELET_CLIENT_USAGES)));
    }
    Ok(())
}

/// `ValidateKubeletServingCSR`: the errors and their order as upstream's.
pub fn validate_kubelet_serving(info: &CsrInfo, usages: &[String]) -> Result<(), String> {
    if info.orgs != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if info.dns.is_empty() && info.ips.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if !info.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !info.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !same_set(usages, &KUBELET_SERVING_USAGES) {
        return Err(format!("usages did not match {}", usage_list(&KUBELET_SERVING_USAGES)));
    }
    if !info.cn.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// The CN and O entries of a DER certificate's subject.
pub fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, groups))
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(p.contents)
}
