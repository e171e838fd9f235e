//! What a real apiserver does for `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward` and `nodes/proxy`: it finds the pod's node, calls the
//! node API at the node's InternalIP and `daemonEndpoints.kubeletEndpoint`
//! port over TLS with a client certificate of its own (user
//! `kube-apiserver-kubelet-client`; the kubelet's serving certificate is not
//! verified, as without `--kubelet-certificate-authority`), turns the pod
//! options into kubelet's query (`stdin=true` → `input=1`, ...), and passes
//! the answer back: a streamed body, or an upgraded connection joined byte
//! for byte.

use std::sync::Arc;

use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;

use super::handlers::State;

fn fail(code: u16, reason: &str, message: &str) -> Response<Body> {
    let v = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

/// Accepts any serving certificate (the apiserver's default towards kubelets).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration towards a kubelet: any serving certificate
/// accepted, `cert` presented if given.
fn client_config(cert: Option<&super::pki::Pair>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        Some(p) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(p.cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The node's InternalIP and kubelet port.
fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let ip = node["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"].as_str()?.to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    Some((ip, port as u16))
}

/// Kubelet's query for the pod options in `query` (PodLogOptions,
/// PodExecOptions, PodAttachOptions, PodPortForwardOptions).
fn translate(sub: &str, query: &[(String, String)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        match (sub, k.as_str()) {
            (_, "container") => {}
            ("exec" | "attach", "stdin" | "stdout" | "stderr" | "tty") => {
                if v == "true" || v == "1" {
                    let name = match k.as_str() {
                        "stdin" => "input",
                        "stdout" => "output",
                        "stderr" => "error",
                        other => other,
                    };
                    out.append_pair(name, "1");
                }
            }
            ("portforward", "ports") => {
                out.append_pair("port", v);
            }
            _ => {
                out.append_pair(k, v);
            }
        }
    }
    out.finish()
}

/// Serves a proxied subresource. `rest` is the path after `nodes/{n}/proxy`.
pub async fn proxy(state: Arc<State>, plural: &str, ns: &str, name: &str, sub: &str, rest: &str, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
    let query: Vec<(String, String)> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let (node_name, path) = {
        let store = state.store.lock().unwrap();
        if plural == "pods" {
            let Some(pod) = store.get("pods", ns, name) else {
                return fail(404, "NotFound", &format!("pods \"{name}\" not found"));
            };
            let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).map(str::to_string) else {
                return fail(400, "BadRequest", &format!("pod {name} does not have a host assigned"));
            };
            let containers: Vec<String> = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_string)).collect();
            let container = query.iter().find(|(k, _)| k == "container").map(|(_, v)| v.clone()).filter(|c| !c.is_empty());
            let container = match (container, containers.as_slice()) {
                (Some(c), _) => c,
                (None, [only]) => only.clone(),
                (None, _) if sub == "portforward" => String::new(),
                (None, _) => {
                    return fail(400, "BadRequest", &format!("a container name must be specified for pod {name}, choose one of: {containers:?}"));
                }
            };
            let path = match sub {
                "log" => format!("/containerLogs/{ns}/{name}/{container}"),
                "exec" => format!("/exec/{ns}/{name}/{container}"),
                "attach" => format!("/attach/{ns}/{name}/{container}"),
                _ => format!("/portForward/{ns}/{name}"),
            };
            (node, path)
        } else {
            (name.to_string(), format!("/{rest}"))
        }
    };
    let node = state.store.lock().unwrap().get("nodes", "", &node_name).cloned();
    let Some((ip, port)) = node.as_ref().and_then(kubelet_address) else {
        return fail(503, "ServiceUnavailable", &format!("no kubelet address for node {node_name}"));
    };
    let q = if plural == "pods" { translate(sub, &query) } else { req.uri().query().unwrap_or("").to_string() };
    let uri = if q.is_empty() { path } else { format!("{path}?{q}") };
    let tcp = match connect_in_netns(&state.netns, &ip, port).await {
        Ok(t) => t,
        Err(e) => return fail(503, "ServiceUnavailable", &format!("dial tcp {ip}:{port}: {e}")),
    };
    let config = match client_config(Some(&state.kubelet_client)) {
        Ok(c) => c,
        Err(e) => return fail(500, "InternalError", &e),
    };
    let server_name = ServerName::try_from(ip.clone()).unwrap_or_else(|_| ServerName::try_from("localhost").expect("static name"));
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await {
        Ok(t) => t,
        Err(e) => return fail(503, "ServiceUnavailable", &format!("TLS to the kubelet: {e}")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)).await {
        Ok(x) => x,
        Err(e) => return fail(503, "ServiceUnavailable", &e.to_string()),
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut out = Request::builder().method(req.method().clone()).uri(uri);
    for (k, v) in req.headers() {
        if !["authorization", "host"].contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let body = if upgrading { Body::empty() } else { Body::new(req.into_body()) };
    let out = match out.header(header::HOST, format!("{ip}:{port}")).body(body) {
        Ok(r) => r,
        Err(e) => return fail(400, "BadRequest", &e.to_string()),
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return fail(503, "ServiceUnavailable", &e.to_string()),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let kubelet_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        if let (Ok(a), Ok(b)) = tokio::join!(client_upgrade, kubelet_upgrade) {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
        }
    });
    let mut back = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        back = back.header(k, v);
    }
    back.body(Body::empty()).expect("static response parts")
}

async fn connect_in_netns(netns: &str, ip: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (ns, ip) = (netns.to_string(), ip.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = super::super::enter_netns(&ns).and_then(|_| std::net::TcpStream::connect((ip.as_str(), port)));
        let _ = tx.send(r);
    });
    let std = rx.await.map_err(|_| std::io::Error::other("connect thread died"))??;
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// A TLS connection to the node API at 127.0.0.1:`port` in `netns`,
/// presenting `cert` if given (the serving certificate is not checked).
pub async fn node_tls(netns: &str, port: u16, cert: Option<&super::pki::Pair>) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config = client_config(cert)?;
    let tcp = connect_in_netns(netns, "127.0.0.1", port).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("static name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))
}

/// A handshake with the node API offering only `versions` and, if given,
/// only the TLS 1.2 suites named (rustls' names): the negotiated version and
/// suite, or the error.
pub async fn node_handshake(netns: &str, port: u16, versions: &[&'static rustls::SupportedProtocolVersion], suites: Option<&[&str]>) -> Result<(String, String), String> {
    within(CALL_TIMEOUT, handshake(netns, port, versions, suites)).await
}

/// How long a test's own call to the node API may take: a server that
/// never answers is a failure with a message, not a test that hangs.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn within<T>(limit: std::time::Duration, f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

async fn handshake(netns: &str, port: u16, versions: &[&'static rustls::SupportedProtocolVersion], suites: Option<&[&str]>) -> Result<(String, String), String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = suites {
        provider.cipher_suites.retain(|s| names.contains(&format!("{:?}", s.suite()).as_str()));
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = connect_in_netns(netns, "127.0.0.1", port).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("static name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let conn = tls.get_ref().1;
    Ok((format!("{:?}", conn.protocol_version()), format!("{:?}", conn.negotiated_cipher_suite().map(|s| s.suite()))))
}

/// Calls the node API directly (as a metrics collector would), from inside
/// the node's network namespace: with a client certificate, a bearer token,
/// or neither. Returns the status and body, or the TLS or connection error.
pub async fn call_node(netns: &str, port: u16, path: &str, cert: Option<&super::pki::Pair>, token: Option<&str>) -> Result<(u16, String), String> {
    within(CALL_TIMEOUT, call(netns, port, path, cert, token)).await
}

async fn call(netns: &str, port: u16, path: &str, cert: Option<&super::pki::Pair>, token: Option<&str>) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let tls = node_tls(netns, port, cert).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)).await.map_err(|e| format!("TLS: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header(header::HOST, "localhost");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender.send_request(req.body(Body::empty()).expect("request")).await.map_err(|e| format!("TLS: {e}"))?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}
