//! exec, attach and port-forward: the runtime answers CRI Exec, Attach or
//! PortForward with a URL of its streaming server, and the node API proxies
//! the client's upgraded connection to it, byte for byte both ways, as
//! kubelet does. The protocol is whatever the client and the runtime agree
//! on in the upgrade (SPDY/3.1 with `X-Stream-Protocol-Version`, or WebSocket
//! with `v4`/`v5.channel.k8s.io` or `portforward.k8s.io`): the headers pass
//! through untouched, so nodelet never needs to speak it.

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

fn error(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(message.into()));
    *r.status_mut() = code;
    r
}

/// Whether a request asks to upgrade the connection.
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && req.headers().contains_key(header::UPGRADE)
}

/// Headers that belong to this hop or to the caller's credentials: not
/// passed to the runtime.
const DROPPED: [&str; 3] = ["authorization", "host", "content-length"];

/// Proxies the upgrade request to the runtime's streaming `url`
/// (`http://host:port/path`). The runtime's answer goes back to the client;
/// on 101 the two connections are joined until either side closes, and then
/// `closed` is told (it is dropped untold if no stream was joined).
pub async fn proxy(mut req: Request<Incoming>, url: &str, closed: Option<tokio::sync::oneshot::Sender<()>>) -> Response<Body> {
    if !is_upgrade(&req) {
        return error(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("the runtime's streaming URL is not plain HTTP: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    // The runtime's streaming server is local: a connection that does not
    // come within 10 s is not coming.
    let tcp = match tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return error(StatusCode::BAD_GATEWAY, format!("cannot reach the runtime's streaming server at {authority}: {e}")),
        Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, format!("the runtime's streaming server at {authority} did not answer within 10 s")),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("streaming server handshake: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming connection ended");
        }
    });
    let mut out = Request::builder().method(req.method().clone()).uri(path);
    for (name, value) in req.headers() {
        if !DROPPED.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let out = match out.header(header::HOST, HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static("localhost"))).body(Body::empty()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot forward the request: {e}")),
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("the runtime's streaming server: {e}")),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let runtime_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, runtime) = match tokio::join!(client_upgrade, runtime_upgrade) {
            (Ok(c), Ok(r)) => (c, r),
            (c, r) => {
                tracing::debug!(client = ?c.err(), runtime = ?r.err(), "a stream upgrade failed");
                return;
            }
        };
        let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
        match tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            Ok((up, down)) => tracing::debug!(bytes_in = up, bytes_out = down, "stream closed"),
            Err(e) => tracing::debug!(error = %e, "stream closed"),
        }
        if let Some(tx) = closed {
            let _ = tx.send(());
        }
    });
    let mut back = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in resp.headers() {
        back = back.header(name, value);
    }
    back.body(Body::empty()).unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
