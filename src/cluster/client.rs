//! The apiserver client: kube-rs over rustls (ring), with kubelet's request
//! rate (kubeAPIQPS 50, kubeAPIBurst 100 unless set), and a client certificate that can be swapped
//! while the client is in use. When it is, the connection pool is replaced:
//! new requests open connections that present the new certificate, and the
//! old connections close once their last request (a watch, say) ends, as
//! kubelet closes its connections on rotation.
//!
//! The heartbeat (Lease and node status) gets a client of its own with no
//! rate limit, as kubelet's does, so a burst of events or status writes
//! never delays it.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::ClusterError;

/// kubelet's client defaults.
pub const QPS: u32 = 50;
pub const BURST: u32 = 100;

/// A token bucket for `rate` (zero counts as one).
pub fn quota(rate: crate::config::Rate) -> Quota {
    Quota::per_second(NonZeroU32::new(rate.qps).unwrap_or(NonZeroU32::MIN)).allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN))
}

/// Installs ring as rustls' process-wide provider, once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client certificate new TLS connections present.
#[derive(Debug, Default)]
pub struct RotatingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Bumped on every change, so clients know to drop old connections.
    generation: AtomicU64,
}

impl RotatingCert {
    /// Loads a PEM bundle holding the certificate chain and the key.
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), ClusterError> {
        let tls = |m: String| ClusterError::Tls { what: "client certificate".into(), message: m };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(|e| tls(e.to_string()))?;
        if chain.is_empty() {
            return Err(tls("no certificate in the PEM data".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(key).map_err(|e| tls(e.to_string()))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(CertifiedKey::new(chain, signing)));
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn has_certs(&self) -> bool {
        self.current.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// A tower layer that holds each request until the token bucket allows it.
#[derive(Clone)]
struct RateLimit<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl<S, R> tower::Service<R> for RateLimit<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let mut inner = self.inner.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move {
            limiter.until_ready().await;
            tower::ServiceExt::ready(&mut inner).await?;
            inner.call(req).await
        })
    }
}

type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;
type HyperClient = hyper_util::client::legacy::Client<Connector, kube::client::Body>;

/// Requests go to the pool of the current certificate generation; a new
/// generation gets a new pool and the old one is dropped with its idle
/// connections (busy ones finish their request first).
#[derive(Clone)]
struct PerCertPool {
    connector: Connector,
    cert: Option<Arc<RotatingCert>>,
    current: Arc<Mutex<(u64, HyperClient)>>,
}

impl PerCertPool {
    fn new(connector: Connector, cert: Option<Arc<RotatingCert>>) -> Self {
        let generation = cert.as_ref().map_or(0, |c| c.generation());
        let client = Self::pool(&connector);
        Self { connector, cert, current: Arc::new(Mutex::new((generation, client))) }
    }

    fn pool(connector: &Connector) -> HyperClient {
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector.clone())
    }

    fn client(&self) -> HyperClient {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cert) = &self.cert {
            let generation = cert.generation();
            if generation != cur.0 {
                tracing::info!("client certificate changed; new connections will present it");
                *cur = (generation, Self::pool(&self.connector));
            }
        }
        cur.1.clone()
    }
}

impl tower::Service<hyper::Request<kube::client::Body>> for PerCertPool {
    type Response = <HyperClient as tower::Service<hyper::Request<kube::client::Body>>>::Response;
    type Error = <HyperClient as tower::Service<hyper::Request<kube::client::Body>>>::Error;
    type Future = <HyperClient as tower::Service<hyper::Request<kube::client::Body>>>::Future;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<kube::client::Body>) -> Self::Future {
        tower::Service::call(&mut self.client(), req)
    }
}

/// How long a response may stay silent before the connection is given up:
/// a little over the apiserver's watch timeout, so a half-open connection
/// cannot hang a watch or a write for the minutes TCP takes to notice.
const READ_TIMEOUT: Duration = Duration::from_secs(295);

/// Builds a client from a kubeconfig, rate-limited as kubelet's is. With
/// `cert`, the client certificate comes from it (and can be rotated);
/// without, from the kubeconfig.
pub async fn build(kubeconfig: kube::config::Kubeconfig, cert: Option<Arc<RotatingCert>>) -> Result<kube::Client, ClusterError> {
    build_with(kubeconfig, cert, Some(crate::config::Rate { qps: QPS, burst: BURST })).await
}

/// [`build`] at `rate` (`kubeAPIQPS`, `kubeAPIBurst`).
pub async fn build_at(kubeconfig: kube::config::Kubeconfig, cert: Option<Arc<RotatingCert>>, rate: crate::config::Rate) -> Result<kube::Client, ClusterError> {
    build_with(kubeconfig, cert, Some(rate)).await
}

/// The heartbeat's client: the same credentials, no rate limit.
pub async fn build_heartbeat(kubeconfig: kube::config::Kubeconfig, cert: Option<Arc<RotatingCert>>) -> Result<kube::Client, ClusterError> {
    build_with(kubeconfig, cert, None).await
}

async fn build_with(
    kubeconfig: kube::config::Kubeconfig,
    cert: Option<Arc<RotatingCert>>,
    rate: Option<crate::config::Rate>,
) -> Result<kube::Client, ClusterError> {
    install_crypto();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| ClusterError::Bootstrap(format!("kubeconfig: {e}")))?;
    let mut tls = config
        .rustls_client_config()
        .map_err(|e| ClusterError::Tls { what: "TLS client configuration".into(), message: e.to_string() })?;
    if let Some(c) = &cert {
        tls.client_auth_cert_resolver = c.clone();
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout.or(Some(READ_TIMEOUT)));
    timeouts.set_write_timeout(config.write_timeout);
    let pool = PerCertPool::new(timeouts, cert);
    let limiter = rate.map(|r| Arc::new(RateLimiter::direct(quota(r))));
    let auth = config.auth_layer().map_err(|e| ClusterError::Bootstrap(format!("kubeconfig credentials: {e}")))?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .option_layer(limiter.map(|limiter| tower::layer::layer_fn(move |inner| RateLimit { inner, limiter: limiter.clone() })))
        .map_err(tower::BoxError::from)
        .service(pool);
    Ok(kube::Client::new(service, config.default_namespace))
}
