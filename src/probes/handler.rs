//! Probe and hook handlers: what to run (resolved from the spec: named
//! ports, the pod IP as the default host) and running it once.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPHeader, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::runtime::Runtime;

/// How much of a probe's output or response body goes into its message.
const MAX_OUTPUT: usize = 10 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("{field}: port {port:?} is not a port of the container")]
    NamedPort { field: String, port: String },
    #[error("{field}: invalid port {port}")]
    BadPort { field: String, port: i32 },
    #[error("{field}: no handler set")]
    Missing { field: String },
}

/// A resolved handler, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Exec { command: Vec<String> },
    Http { scheme: String, host: String, port: u16, path: String, headers: Vec<(String, String)> },
    Tcp { host: String, port: u16 },
    Grpc { host: String, port: u16, service: String },
    Sleep { seconds: i64 },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Exec { command } => write!(f, "exec {command:?}"),
            Target::Http { scheme, host, port, path, .. } => write!(f, "http-get {}://{host}:{port}{path}", scheme.to_lowercase()),
            Target::Tcp { host, port } => write!(f, "tcp-socket {host}:{port}"),
            Target::Grpc { host, port, service } => write!(f, "grpc {host}:{port} service={service:?}"),
            Target::Sleep { seconds } => write!(f, "sleep {seconds}s"),
        }
    }
}

/// A probe's or hook's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Success, with something worth telling (a redirect to another host).
    Warning(String),
    Failure(String),
    /// The check could not be run: no action is taken.
    Unknown(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success | Outcome::Warning(_))
    }
}

fn port(p: &IntOrString, c: &Container, field: &str) -> Result<u16, HandlerError> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| HandlerError::NamedPort { field: field.into(), port: s.clone() })?,
        },
    };
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or(HandlerError::BadPort { field: field.into(), port: n })
}

fn host(h: Option<&String>, pod_ip: &str) -> String {
    h.filter(|h| !h.is_empty()).cloned().unwrap_or_else(|| pod_ip.to_string())
}

fn headers(h: Option<&Vec<HTTPHeader>>) -> Vec<(String, String)> {
    h.into_iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect()
}

fn http(
    get: &k8s_openapi::api::core::v1::HTTPGetAction,
    c: &Container,
    pod_ip: &str,
    field: &str,
) -> Result<Target, HandlerError> {
    let path = get.path.clone().unwrap_or_default();
    Ok(Target::Http {
        scheme: get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
        host: host(get.host.as_ref(), pod_ip),
        port: port(&get.port, c, &format!("{field}.httpGet.port"))?,
        path: if path.starts_with('/') { path } else { format!("/{path}") },
        headers: headers(get.http_headers.as_ref()),
    })
}

/// What a probe runs, for a container of a pod at `pod_ip`.
pub fn probe_target(p: &Probe, c: &Container, pod_ip: &str, field: &str) -> Result<Target, HandlerError> {
    if let Some(e) = &p.exec {
        return Ok(Target::Exec { command: e.command.clone().unwrap_or_default() });
    }
    if let Some(g) = &p.http_get {
        return http(g, c, pod_ip, field);
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Target::Tcp { host: host(t.host.as_ref(), pod_ip), port: port(&t.port, c, &format!("{field}.tcpSocket.port"))? });
    }
    if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port).ok().filter(|p| *p > 0).ok_or(HandlerError::BadPort { field: format!("{field}.grpc.port"), port: g.port })?;
        return Ok(Target::Grpc { host: pod_ip.to_string(), port, service: g.service.clone().unwrap_or_default() });
    }
    Err(HandlerError::Missing { field: field.into() })
}

/// What a lifecycle hook runs; `None` for the deprecated tcpSocket hook,
/// which kubelet accepts and ignores.
pub fn hook_target(h: &LifecycleHandler, c: &Container, pod_ip: &str, field: &str) -> Result<Option<Target>, HandlerError> {
    if let Some(e) = &h.exec {
        return Ok(Some(Target::Exec { command: e.command.clone().unwrap_or_default() }));
    }
    if let Some(g) = &h.http_get {
        return http(g, c, pod_ip, field).map(Some);
    }
    if let Some(s) = &h.sleep {
        return Ok(Some(Target::Sleep { seconds: s.seconds }));
    }
    if h.tcp_socket.is_some() {
        return Ok(None);
    }
    Err(HandlerError::Missing { field: field.into() })
}

fn clip(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]);
    s.trim().to_string()
}

/// The client HTTPS probes and hooks share: no connection reuse (as kubelet:
/// probes must not keep connections open), certificates not verified,
/// redirects followed only within the same host.
fn http_client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let policy = reqwest::redirect::Policy::custom(|attempt| {
                let same_host = attempt.previous().first().map(|u| u.host_str()) == Some(attempt.url().host_str());
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if same_host {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            });
            reqwest::Client::builder()
                .redirect(policy)
                .pool_max_idle_per_host(0)
                .danger_accept_invalid_certs(true)
                .user_agent(concat!("kube-probe/nodelet-", env!("CARGO_PKG_VERSION")))
                .build()
                .ok()
        })
        .as_ref()
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

async fn run_http(scheme: &str, host: &str, port: u16, path: &str, headers: &[(String, String)], timeout: Duration) -> Outcome {
    if scheme.eq_ignore_ascii_case("HTTPS") {
        return run_https(host, port, path, headers, timeout).await;
    }
    let url = format!("http://{}:{port}{path}", bracket(host));
    match tokio::time::timeout(timeout, http_get(host, port, path, headers)).await {
        Err(_) => Outcome::Failure(format!("Get \"{url}\": context deadline exceeded")),
        Ok(Err(e)) => Outcome::Failure(format!("Get \"{url}\": {e}")),
        Ok(Ok(outcome)) => outcome,
    }
}

/// Plain-HTTP probes with a bare HTTP/1.1 exchange on a fresh connection:
/// they are the common case, run often, and need none of a general
/// client's machinery. Redirects within the same host are followed (up to
/// ten); one to elsewhere ends the probe as a success with a warning.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<Outcome, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let mut path = path.to_string();
    for _ in 0..10 {
        let stream = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("dial tcp: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| error_chain(&e))?;
        let driver = tokio::spawn(conn);
        let mut req = hyper::Request::get(path.as_str()).header("Connection", "close");
        // The probe's own headers win over the defaults (a Host header too).
        let given = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let defaults = [
            ("Host", format!("{}:{port}", bracket(host))),
            ("User-Agent", concat!("kube-probe/nodelet-", env!("CARGO_PKG_VERSION")).to_string()),
            ("Accept", "*/*".to_string()),
        ];
        for (k, v) in defaults.iter().filter(|(k, _)| !given(k)) {
            req = req.header(*k, v.as_str());
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Empty::<hyper::body::Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| error_chain(&e));
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = Limited::new(resp.into_body(), MAX_OUTPUT).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        driver.abort();
        if (300..400).contains(&status) {
            if let Some(next) = location.as_deref().and_then(|l| same_host_path(l, host, port)) {
                path = next;
                continue;
            }
            return Ok(Outcome::Warning(format!("Probe terminated redirects, Response body: {}", clip(&body))));
        }
        return Ok(if (200..400).contains(&status) {
            Outcome::Success
        } else {
            Outcome::Failure(format!("HTTP probe failed with statuscode: {status}"))
        });
    }
    Err("stopped after 10 redirects".into())
}

/// The path of a redirect that stays on `host:port`, if it does.
fn same_host_path(location: &str, host: &str, port: u16) -> Option<String> {
    if location.starts_with('/') {
        return Some(location.to_string());
    }
    let rest = location.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let same = authority == format!("{}:{port}", bracket(host)) || (port == 80 && authority == bracket(host));
    same.then_some(path)
}

async fn run_https(host: &str, port: u16, path: &str, headers: &[(String, String)], timeout: Duration) -> Outcome {
    let Some(client) = http_client() else { return Outcome::Unknown("no HTTPS client".into()) };
    let url = format!("https://{}:{port}{path}", bracket(host));
    let mut req = client.get(&url).timeout(timeout).header("Accept", "*/*");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    match req.send().await {
        Err(e) if e.is_timeout() => Outcome::Failure(format!("Get \"{url}\": context deadline exceeded")),
        Err(e) => Outcome::Failure(format!("Get \"{url}\": {}", error_chain(&e))),
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await.map(|b| clip(&b)).unwrap_or_default();
            if status.is_redirection() {
                Outcome::Warning(format!("Probe terminated redirects, Response body: {body}"))
            } else if (200..400).contains(&status.as_u16()) {
                Outcome::Success
            } else {
                Outcome::Failure(format!("HTTP probe failed with statuscode: {}", status.as_u16()))
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

async fn run_tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = format!("{}:{port}", bracket(host));
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: connect: {e}")),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

async fn run_grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = format!("http://{}:{port}", bracket(host));
    let endpoint = match tonic::transport::Endpoint::from_shared(addr.clone()) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::Unknown(format!("{addr}: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failure(format!("timeout: failed to connect service {addr:?} within {timeout:?}: {}", error_chain(&e))),
    };
    let req = HealthCheckRequest { service: service.to_string() };
    match HealthClient::new(channel).check(req).await {
        Ok(resp) => match ServingStatus::try_from(resp.into_inner().status) {
            Ok(ServingStatus::Serving) => Outcome::Success,
            Ok(other) => Outcome::Failure(format!("service unhealthy (responded with {:?})", other.as_str_name())),
            Err(_) => Outcome::Failure("service unhealthy (unknown status)".into()),
        },
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
            Outcome::Failure(format!("timeout: health rpc did not complete within {timeout:?}"))
        }
        Err(s) => Outcome::Failure(format!("rpc error: code = {:?} desc = {}", s.code(), s.message())),
    }
}

async fn run_exec(command: &[String], container_id: &str, rt: &dyn Runtime, timeout: Duration) -> Outcome {
    let secs = timeout.as_secs().max(1) as i64;
    match rt.exec_sync(container_id, command, secs).await {
        Ok(r) if r.exit_code == 0 => Outcome::Success,
        Ok(r) => {
            let mut out = r.stdout;
            out.extend_from_slice(&r.stderr);
            let text = clip(&out);
            Outcome::Failure(if text.is_empty() { format!("command {command:?} exited with {}", r.exit_code) } else { text })
        }
        Err(crate::runtime::RuntimeError::Call { code: tonic::Code::DeadlineExceeded, .. }) => {
            Outcome::Failure(format!("command {command:?} timed out"))
        }
        Err(e) if e.to_string().contains("timeout") => Outcome::Failure(format!("command {command:?} timed out")),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// Runs a handler once against a container.
pub async fn run(target: &Target, container_id: &str, rt: &dyn Runtime, timeout: Duration) -> Outcome {
    match target {
        Target::Exec { command } => run_exec(command, container_id, rt, timeout).await,
        Target::Http { scheme, host, port, path, headers } => run_http(scheme, host, *port, path, headers, timeout).await,
        Target::Tcp { host, port } => run_tcp(host, *port, timeout).await,
        Target::Grpc { host, port, service } => run_grpc(host, *port, service, timeout).await,
        Target::Sleep { seconds } => {
            tokio::time::sleep(Duration::from_secs((*seconds).max(0) as u64).min(timeout)).await;
            Outcome::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
            ..Default::default()
        }
    }

    #[test]
    fn targets_resolve_named_ports_and_default_to_the_pod_ip() {
        let p = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = probe_target(&p, &container(), "10.0.0.5", "livenessProbe").unwrap();
        assert_eq!(
            t,
            Target::Http { scheme: "HTTP".into(), host: "10.0.0.5".into(), port: 8080, path: "/healthz".into(), headers: vec![] }
        );
        let p = Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::String("nope".into()), host: None }),
            ..Default::default()
        };
        assert_eq!(
            probe_target(&p, &container(), "10.0.0.5", "readinessProbe").unwrap_err().to_string(),
            "readinessProbe.tcpSocket.port: port \"nope\" is not a port of the container"
        );
    }

    #[tokio::test]
    async fn tcp_and_http_against_local_servers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if req.starts_with("GET /ok ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
                } else if req.starts_with("GET /away ") {
                    "HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n".to_string()
                } else if req.starts_with("GET /moved ") {
                    "HTTP/1.1 301 Moved\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom".to_string()
                };
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(run_tcp("127.0.0.1", port, t).await, Outcome::Success);
        assert!(matches!(run_tcp("127.0.0.1", 1, t).await, Outcome::Failure(m) if m.contains("refused")));
        assert_eq!(run_http("HTTP", "127.0.0.1", port, "/ok", &[], t).await, Outcome::Success);
        assert_eq!(
            run_http("HTTP", "127.0.0.1", port, "/bad", &[], t).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        assert!(matches!(run_http("HTTP", "127.0.0.1", port, "/away", &[], t).await, Outcome::Warning(_)), "a redirect to another host is a success with a warning");
        assert_eq!(run_http("HTTP", "127.0.0.1", port, "/moved", &[], t).await, Outcome::Success, "same-host redirects are followed");
        assert_eq!(same_host_path("http://10.0.0.1:8080/x", "10.0.0.1", 8080), Some("/x".into()));
        assert_eq!(same_host_path("http://other:8080/x", "10.0.0.1", 8080), None);
    }
}
