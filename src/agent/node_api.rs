//! The node API role: the authenticated API on :10250 (and the read-only
//! port when enabled), with its serving certificate from files, the
//! cluster's signer or a self-signed pair; and the local endpoints, /healthz
//! and the root-only status socket.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::AgentError;
use super::machine::node_memory_bytes;
use crate::config::Settings;
use crate::pods::worker::WorkerContext;
use crate::server;
use crate::tasks::Tasks;

/// Serves /healthz (health only) and, unless a dry run, the status socket
/// `nodelet pods`, `nodelet explain` and the pull view read.
pub async fn serve_local(s: &Settings, relisted: watch::Receiver<Option<Instant>>, api: server::LocalApi, tasks: &mut Tasks) -> Result<(), AgentError> {
    if let Some(addr) = s.healthz {
        match server::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving /healthz");
                tasks.spawn("health endpoint", server::serve(listener, relisted));
            }
            Err(e) if s.dry_run => tracing::warn!(%addr, error = %e, "dry run: the health endpoint is not served"),
            Err(reason) => return Err(AgentError::Bind { addr, reason }),
        }
    }
    // The status socket is a file under the root directory: a dry run,
    // which touches nothing, does not make it.
    if !s.dry_run {
        let socket = server::status_socket(&s.root_dir);
        let listener = server::bind_local(&socket).map_err(|e| AgentError::Fault(format!("the status socket: {e}")))?;
        tracing::info!(socket = %socket.display(), "serving /pods, /pulls and /explain to root");
        tasks.spawn("status socket", server::serve_local(listener, api));
    }
    Ok(())
}

/// Where `/logs/` reads the node's own logs, as kubelet (fixed there too).
const NODE_LOG_DIR: &str = "/var/log";

/// The node API, ready to run: the serving certificate from the configured
/// files, or from the cluster's `kubelet-serving` signer (serverTLSBootstrap:
/// the port is served once one is issued, and it is renewed), or kubelet's
/// self-signed pair in the cert dir; TokenReview and SubjectAccessReview
/// through the node's client.
pub async fn build(
    s: &Settings,
    cs: &crate::config::ClusterSettings,
    client: &kube::Client,
    ctx: &WorkerContext,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, AgentError> {
    let na = s.node_api.clone();
    let mut names = vec![s.node_name.clone()];
    names.extend(s.node_ips.iter().cloned());
    let gate = server::auth::Gate::new(Some(client.clone()), &s.node_name, &na);
    let (runtime, statuses, probe_counts, metrics) = (ctx.runtime.clone(), ctx.statuses.clone(), ctx.probe_counts.clone(), ctx.metrics.clone());
    let stats = server::stats::Collector::new(
        runtime.clone(),
        statuses.clone(),
        s.node_name.clone(),
        s.root_dir.clone(),
        s.pod_logs_dir.clone(),
        ctx.mounted.clone(),
        ctx.csi.clone(),
    );
    let info = server::node_api::MachineInfo {
        num_cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as i64,
        memory_capacity: node_memory_bytes(),
        config: s.kubelet_configuration(),
    };
    let api = Arc::new(server::node_api::NodeApi {
        runtime,
        statuses,
        gate,
        stats,
        info,
        probe_counts,
        metrics,
        debugging: na.debugging_handlers,
        system_logs: na.system_log_handler.then(|| std::path::PathBuf::from(NODE_LOG_DIR)),
        pod_logs_dir: s.pod_logs_dir.clone(),
        streaming_idle: na.streaming_idle_timeout,
        fine_grained_authz: na.fine_grained_authz,
    });
    let read_only = if na.read_only_port != 0 {
        let ro_addr = std::net::SocketAddr::new(na.address, na.read_only_port);
        let listener = server::bind(ro_addr).await.map_err(|reason| AgentError::Bind { addr: ro_addr, reason })?;
        tracing::warn!(addr = %ro_addr, "serving the read-only port: pods, stats and metrics over plain HTTP, without authentication");
        Some(server::node_api::serve_read_only(listener, api.clone()))
    } else {
        None
    };
    let main = node_api_main(s, cs, client, &names, na.clone(), api).await?;
    Ok(Box::pin(async move {
        match read_only {
            Some(ro) => {
                tokio::join!(main, ro);
            }
            None => main.await,
        }
    }))
}

/// The node API's HTTPS side (see `node_api`).
async fn node_api_main(
    s: &Settings,
    cs: &crate::config::ClusterSettings,
    client: &kube::Client,
    names: &[String],
    na: crate::config::node_api::NodeApiSettings,
    api: Arc<server::node_api::NodeApi>,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, AgentError> {
    let names = names.to_vec();
    let addr = std::net::SocketAddr::new(na.address, na.port);
    let tls_err = |e: server::tls::TlsError| AgentError::Fault(format!("the node API's TLS: {e}"));
    let tls_policy = server::tls::TlsPolicy { min_version: na.tls_min_version, cipher_suites: na.tls_cipher_suites.clone() };
    let static_cert = match (&na.tls_cert_file, &na.tls_private_key_file) {
        (Some(c), Some(k)) => Some(server::tls::from_files(c, k).map_err(tls_err)?),
        _ if na.server_tls_bootstrap => None,
        _ => Some(server::tls::self_signed(&cs.cert_dir, &names).map_err(tls_err)?),
    };
    if let Some(cert) = static_cert {
        let sources = server::tls::Sources {
            client_ca: na.client_ca_file.clone(),
            cert_files: na.tls_cert_file.clone().zip(na.tls_private_key_file.clone()),
        };
        let (tls, follow) = server::tls::reloading(Arc::new(server::tls::ServingCert::new(cert)), sources, tls_policy).map_err(tls_err)?;
        let listener = server::bind(addr).await.map_err(|reason| AgentError::Bind { addr, reason })?;
        tracing::info!(%addr, authorization = ?na.authorization, anonymous = na.anonymous, "serving the node API");
        return Ok(Box::pin(async move {
            tokio::join!(server::node_api::serve(listener, tls, api), follow);
        }));
    }
    let (client, node, cert_dir) = (client.clone(), s.node_name.clone(), cs.cert_dir.clone());
    Ok(Box::pin(async move {
        let (cert, key, validity) = crate::cluster::serving::obtain(&client, &node, &names, &cert_dir).await;
        let load = |c: &str, k: &str| server::tls::certified_key(c.as_bytes(), k.as_bytes(), &cert_dir.join(crate::cluster::serving::CURRENT));
        let serving = match load(&cert, &key) {
            Ok(ck) => Arc::new(server::tls::ServingCert::new(ck)),
            Err(e) => return tracing::error!(error = %e, "the issued serving certificate cannot be used"),
        };
        let sources = server::tls::Sources { client_ca: na.client_ca_file.clone(), cert_files: None };
        let (tls, follow) = match server::tls::reloading(serving.clone(), sources, tls_policy) {
            Ok(t) => t,
            Err(e) => return tracing::error!(error = %e, "the node API's TLS"),
        };
        let listener = match server::bind(addr).await {
            Ok(l) => l,
            Err(e) => return tracing::error!(%addr, error = %e, "cannot serve the node API"),
        };
        tracing::info!(%addr, authorization = ?na.authorization, anonymous = na.anonymous, "serving the node API with the cluster-signed certificate");
        let apply = |c: &str, k: &str| load(c, k).map(|ck| serving.set(ck)).map_err(|e| e.to_string());
        let metrics = api.metrics.clone();
        tokio::join!(
            server::node_api::serve(listener, tls, api),
            follow,
            crate::cluster::serving::rotate(client.clone(), node.clone(), names.clone(), cert_dir.clone(), validity, &metrics, apply)
        );
    }))
}
