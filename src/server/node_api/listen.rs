//! Serving connections with bounds: a request head must arrive in time and
//! fit in 1 MiB, idle keep-alive connections close, and each listener takes
//! at most so many connections at once.

use super::*;

/// How long a TLS handshake may take.
pub(super) const HANDSHAKE: Duration = Duration::from_secs(10);

/// A request head must arrive whole within this (a slow client holds
/// nothing longer).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection with no request in flight is closed after this
/// (kubelet's server: 90 s, Go's http.Server IdleTimeout there).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The largest request head taken (bigger ones get 431 and the connection
/// closes).
pub const MAX_HEAD_BYTES: usize = 1 << 20;
/// Connections served at once per listener; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 512;

/// Serves one HTTP/1 connection with the node API's bounds: a header-read
/// timeout, a cap on the head's size, and an idle timeout between requests
/// (an upgraded stream leaves this loop and keeps its own idle timeout).
pub(super) async fn serve_bounded<I, S>(io: I, svc: S, upgrades: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Requests in flight and the time of the last one's end.
    let active = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
    let (a, l) = (active.clone(), last.clone());
    let svc = Tracked { inner: svc, active: a, last: l };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, svc);
    let conn = if upgrades { futures::future::Either::Left(conn.with_upgrades()) } else { futures::future::Either::Right(conn) };
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_for = last.lock().map(|t| t.elapsed()).unwrap_or_default();
        let wait = IDLE_TIMEOUT.saturating_sub(idle_for).max(Duration::from_millis(100));
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "node API connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(wait), if !closing => {
                let idle = active.load(Ordering::SeqCst) == 0 && last.lock().map(|t| t.elapsed() >= IDLE_TIMEOUT).unwrap_or(false);
                if idle {
                    closing = true;
                    match conn.as_mut().as_pin_mut() {
                        futures::future::Either::Left(c) => c.graceful_shutdown(),
                        futures::future::Either::Right(c) => c.graceful_shutdown(),
                    }
                }
            }
        }
    }
}

/// A service that counts its requests in flight and notes when the last
/// one ended (for the idle timeout).
#[derive(Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    active: Arc<std::sync::atomic::AtomicUsize>,
    last: Arc<std::sync::Mutex<tokio::time::Instant>>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        use std::sync::atomic::Ordering;
        self.active.fetch_add(1, Ordering::SeqCst);
        let fut = self.inner.call(req);
        let (active, last) = (self.active.clone(), self.last.clone());
        Box::pin(async move {
            let r = fut.await;
            if let Ok(mut t) = last.lock() {
                *t = tokio::time::Instant::now();
            }
            active.fetch_sub(1, Ordering::SeqCst);
            r
        })
    }
}

/// Serves the read-only port (plain HTTP) on `listener`.
pub async fn serve_read_only(listener: tokio::net::TcpListener, api: Arc<NodeApi>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(limit = MAX_CONNECTIONS, "read-only port: too many connections; closing a new one");
            drop(tcp);
            continue;
        }
        let api = api.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle_read_only(req).await) }
            });
            serve_bounded(TokioIo::new(tcp), svc, false).await;
        });
    }
}

/// Serves the node API on `listener` until the task is dropped.
/// Each connection gets the configuration `tls` holds when it arrives.
pub async fn serve(listener: tokio::net::TcpListener, tls: tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>, api: Arc<NodeApi>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "node API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "node API: too many connections; closing a new one");
            drop(tcp);
            continue;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
        let api = api.clone();
        conns.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "node API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| User::from_certificate(c));
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let user = user.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, user).await) }
            });
            serve_bounded(TokioIo::new(tls), svc, true).await;
        });
    }
}
