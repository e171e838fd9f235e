//! `nodelet bootstrap-kubeconfig`: the files a node needs to join by TLS
//! bootstrap, written as `kubeadm join` writes them: the bootstrap
//! kubeconfig (`/etc/kubernetes/bootstrap-kubelet.conf`, the token in it,
//! so owner-only) and the cluster CA (`/etc/kubernetes/pki/ca.crt`, which
//! the packaged KubeletConfiguration names as `clientCAFile`).

use std::path::{Path, PathBuf};

use base64::Engine;

/// What the command was given.
pub struct BootstrapFiles {
    pub server: String,
    pub ca_file: PathBuf,
    pub token: String,
    pub kubeconfig: PathBuf,
    pub ca_out: PathBuf,
    pub force: bool,
}

/// A bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`, as the apiserver's
/// bootstrap token authenticator accepts it.
pub fn valid_token(t: &str) -> bool {
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    t.split_once('.').is_some_and(|(id, secret)| ok(id, 6) && ok(secret, 16))
}

/// The bootstrap kubeconfig, in kubeadm's shape (user
/// `tls-bootstrap-token-user`, the CA embedded).
pub fn render(server: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n\
         contexts:\n- name: tls-bootstrap-token-user@kubernetes\n  context:\n    cluster: kubernetes\n    user: tls-bootstrap-token-user\n\
         current-context: tls-bootstrap-token-user@kubernetes\npreferences: {{}}\n\
         users:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\n"
    )
}

/// Checks everything, then writes both files atomically (the kubeconfig
/// 0600, the CA 0644). An existing kubeconfig is kept unless `force`; an
/// existing CA file that differs is an error (another cluster's CA).
/// Returns what was written.
pub fn write(b: &BootstrapFiles) -> Result<Vec<PathBuf>, String> {
    let url = b.server.parse::<http::Uri>().map_err(|e| format!("--server {:?}: {e}", b.server))?;
    if url.scheme_str() != Some("https") || url.host().is_none() {
        return Err(format!("--server {:?}: must be an https:// URL of the apiserver (https://HOST:6443)", b.server));
    }
    if !valid_token(&b.token) {
        return Err("--token: must be a bootstrap token, [a-z0-9]{6}.[a-z0-9]{16} (kubeadm token create prints one)".into());
    }
    let ca = std::fs::read(&b.ca_file).map_err(|e| format!("--ca-file {}: {e}", b.ca_file.display()))?;
    match x509_parser::pem::parse_x509_pem(&ca) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" && pem.parse_x509().is_ok() => {}
        _ => return Err(format!("--ca-file {}: not a PEM certificate", b.ca_file.display())),
    }
    if b.kubeconfig.exists() && !b.force {
        return Err(format!("{} exists; --force replaces it", b.kubeconfig.display()));
    }
    let same_ca = |p: &Path| std::fs::read(p).is_ok_and(|old| old == ca);
    if b.ca_out.exists() && !same_ca(&b.ca_out) && !b.force {
        return Err(format!("{} exists with another certificate (another cluster's CA?); --force replaces it", b.ca_out.display()));
    }
    let mut written = Vec::new();
    if !same_ca(&b.ca_out) {
        crate::files::write_atomic(&b.ca_out, &ca, 0o644).map_err(|e| format!("{}: {e}", b.ca_out.display()))?;
        written.push(b.ca_out.clone());
    }
    crate::files::write_atomic(&b.kubeconfig, render(&b.server, &ca, &b.token).as_bytes(), 0o600).map_err(|e| format!("{}: {e}", b.kubeconfig.display()))?;
    written.push(b.kubeconfig.clone());
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_kubeadms_files_and_refuses_what_would_not_join() {
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap().cert.pem();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).unwrap();
        let b = BootstrapFiles {
            server: "https://10.0.0.1:6443".into(),
            ca_file: ca_file.clone(),
            token: "abcdef.0123456789abcdef".into(),
            kubeconfig: dir.path().join("etc/kubernetes/bootstrap-kubelet.conf"),
            ca_out: dir.path().join("etc/kubernetes/pki/ca.crt"),
            force: false,
        };
        assert_eq!(write(&b).unwrap(), vec![b.ca_out.clone(), b.kubeconfig.clone()]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&b.kubeconfig), mode(&b.ca_out)), (0o600, 0o644));
        assert_eq!(std::fs::read_to_string(&b.ca_out).unwrap(), ca_pem);
        // kube-rs reads it as a token kubeconfig for that server.
        let kc = kube::config::Kubeconfig::read_from(&b.kubeconfig).unwrap();
        assert_eq!(kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(kc.auth_infos[0].auth_info.as_ref().unwrap().token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_string()), Some(b.token.clone()));
        // Not again without --force; the same CA is no conflict.
        assert!(write(&b).unwrap_err().ends_with("exists; --force replaces it"));
        assert_eq!(write(&BootstrapFiles { force: true, ..b }).unwrap().len(), 1, "the same CA is not rewritten");
        let b = |server: &str, token: &str| BootstrapFiles {
            server: server.into(),
            ca_file: ca_file.clone(),
            token: token.into(),
            kubeconfig: dir.path().join("k"),
            ca_out: dir.path().join("etc/kubernetes/pki/ca.crt"),
            force: false,
        };
        assert!(write(&b("http://10.0.0.1:6443", "abcdef.0123456789abcdef")).unwrap_err().contains("must be an https:// URL"));
        assert!(write(&b("https://10.0.0.1:6443", "ABCDEF.0123456789abcdef")).unwrap_err().starts_with("--token: must be a bootstrap token"));
        std::fs::write(&ca_file, "not a certificate").unwrap();
        assert!(write(&b("https://10.0.0.1:6443", "abcdef.0123456789abcdef")).unwrap_err().ends_with("not a PEM certificate"));
    }
}
