//! The apiserver client: kube-rs over rustls (ring), with kubelet's request
//! rate (QPS 50, burst 100), and a client certificate that can be swapped
//! while the client is in use: new connections present the new certificate,
//! open ones (watches among them) carry on.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
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

/// Installs ring as rustls' process-wide provider, once.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client certificate new TLS connections present.
#[derive(Debug, Default)]
pub struct RotatingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
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
        Ok(())
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

/// Builds a client from a kubeconfig. With `cert`, the client certificate
/// comes from it (and can be rotated); without, from the kubeconfig.
pub async fn build(
    kubeconfig: kube::config::Kubeconfig,
    cert: Option<Arc<RotatingCert>>,
) -> Result<kube::Client, ClusterError> {
    install_crypto();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| ClusterError::Bootstrap(format!("kubeconfig: {e}")))?;
    let mut tls = config
        .rustls_client_config()
        .map_err(|e| ClusterError::Tls { what: "TLS client configuration".into(), message: e.to_string() })?;
    if let Some(c) = cert {
        tls.client_auth_cert_resolver = c;
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
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timeouts);
    let quota = Quota::per_second(NonZeroU32::new(QPS).expect("non-zero"))
        .allow_burst(NonZeroU32::new(BURST).expect("non-zero"));
    let limiter = Arc::new(RateLimiter::direct(quota));
    let auth = config.auth_layer().map_err(|e| ClusterError::Bootstrap(format!("kubeconfig credentials: {e}")))?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .layer(tower::layer::layer_fn(move |inner| RateLimit { inner, limiter: limiter.clone() }))
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}
