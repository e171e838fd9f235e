//! exec, attach and port-forward: the runtime answers CRI Exec, Attach or
//! PortForward with a URL of its streaming server, and the node API proxies
//! the client's upgraded connection to it, byte for byte both ways, as
//! kubelet does. The protocol is whatever the client and the runtime agree
//! on in the upgrade (SPDY/3.1 with `X-Stream-Protocol-Version`, or WebSocket
//! with `v4`/`v5.channel.k8s.io` or `portforward.k8s.io`): the headers pass
//! through untouched, so nodelet never needs to speak it. A joined stream
//! with no byte either way for `streamingConnectionIdleTimeout` is closed.

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
pub async fn proxy(mut req: Request<Incoming>, url: &str, idle: std::time::Duration, closed: Option<tokio::sync::oneshot::Sender<()>>) -> Response<Body> {
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
        match join(TokioIo::new(client), TokioIo::new(runtime), idle).await {
            Ok(Joined::Ended { up, down }) => tracing::debug!(bytes_in = up, bytes_out = down, "stream closed"),
            Ok(Joined::Idle) => tracing::info!(idle = ?idle, "a stream idle for streamingConnectionIdleTimeout was closed"),
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

/// How a joined stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// One side closed (bytes client → runtime, runtime → client).
    Ended { up: u64, down: u64 },
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Copies both ways at once until both directions have ended (each side's
/// end passed on as a shutdown, as copy_bidirectional does), or until no
/// byte has moved either way for `idle` (zero: no limit).
pub async fn join<A, B>(a: A, b: B, idle: std::time::Duration) -> std::io::Result<Joined>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;
    let last = std::sync::Mutex::new(Instant::now());
    let moved = || *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    async fn one_way<R: tokio::io::AsyncRead, W: tokio::io::AsyncWrite>(r: R, w: W, moved: &(dyn Fn() + Sync)) -> std::io::Result<u64> {
        let (mut r, mut w) = (std::pin::pin!(r), std::pin::pin!(w));
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                w.shutdown().await?;
                return Ok(total);
            }
            moved();
            w.write_all(&buf[..n]).await?;
            w.flush().await?;
            total += n as u64;
        }
    }
    let (ra, wa) = tokio::io::split(a);
    let (rb, wb) = tokio::io::split(b);
    let both = async { tokio::try_join!(one_way(ra, wb, &moved), one_way(rb, wa, &moved)) };
    let watchdog = async {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let deadline = *last.lock().unwrap_or_else(|e| e.into_inner()) + idle;
            if Instant::now() >= deadline {
                return Joined::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = both => r.map(|(up, down)| Joined::Ended { up, down }),
        idle = watchdog => Ok(idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_closed_after_the_idle_timeout_and_not_while_bytes_flow() {
        let (mut client, near) = tokio::io::duplex(1024);
        let (far, mut runtime) = tokio::io::duplex(1024);
        let joined = tokio::spawn(join(near, far, Duration::from_secs(60)));
        // Bytes every 50 s keep it open past the timeout.
        for i in 0..4u8 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            runtime.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [i]);
        }
        assert!(!joined.is_finished(), "200 s with bytes every 50 s: still open");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(joined.await.unwrap().unwrap(), Joined::Idle);
    }

    #[tokio::test]
    async fn both_ways_copy_until_both_sides_end_and_zero_means_no_limit() {
        let (mut client, near) = tokio::io::duplex(1024);
        let (far, mut runtime) = tokio::io::duplex(1024);
        let joined = tokio::spawn(join(near, far, Duration::ZERO));
        client.write_all(b"in").await.unwrap();
        runtime.write_all(b"out!").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        runtime.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"in");
        drop(runtime);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"out!");
        assert_eq!(joined.await.unwrap().unwrap(), Joined::Ended { up: 2, down: 4 });
    }

    #[tokio::test]
    async fn bulk_both_ways_at_once_does_not_deadlock() {
        let (client, near) = tokio::io::duplex(4096);
        let (far, runtime) = tokio::io::duplex(4096);
        let joined = tokio::spawn(join(near, far, Duration::from_secs(60)));
        let side = |io: tokio::io::DuplexStream| async move {
            let (mut r, mut w) = tokio::io::split(io);
            let write = async {
                w.write_all(&vec![7u8; 1 << 20]).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let read = async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got.len()
            };
            tokio::join!(write, read).1
        };
        let both = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(side(client), side(runtime)) }).await;
        assert_eq!(both.expect("no deadlock"), (1 << 20, 1 << 20));
        assert_eq!(joined.await.unwrap().unwrap(), Joined::Ended { up: 1 << 20, down: 1 << 20 });
    }
}
