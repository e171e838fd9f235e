//! The nodelet command line. Parses flags and hands over to the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use nodelet::config::{Overrides, Settings, duration::parse_go_duration, kubelet::KubeletConfig, proxy::ProxyConfig};
use nodelet::runtime::containerd::import::{ImportOptions, import};
use nodelet::runtime::remote::socket_path;

/// `--version`: nodelet's version, the commit built, and the kubelet
/// version it reports to the cluster (the Kubernetes release whose API and
/// behaviour it follows).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NODELET_COMMIT"),
    "; Kubernetes ",
    nodelet::kubernetes_version!(),
    ", reported as kubelet ",
    nodelet::kubelet_version!(),
    "; CRI v1)"
);

/// `kubelet --version`, when nodelet runs under kubelet's name (the
/// package's `/usr/bin/kubelet`): kubelet's own line, which kubeadm's
/// preflight parses (`^Kubernetes v<semver>$`).
const KUBELET_VERSION_LINE: &str = concat!("Kubernetes ", nodelet::kubelet_version!());

/// Run under kubelet's name (kubeadm's unit runs `/usr/bin/kubelet`):
/// `--version` answers as kubelet does. Everything else is nodelet's.
fn invoked_as_kubelet() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n == "kubelet"))
        .unwrap_or(false)
}

#[derive(Parser)]
#[command(name = "nodelet", version = VERSION, about = "The kubelet and kube-proxy roles for one Kubernetes node, over CRI v1")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Show the pods this node runs (reads the local endpoint).
    Pods(PodsArgs),
    /// Say why a pod is (not) running: `nodelet explain pod NAMESPACE/NAME`
    /// (a static pod also by its name alone). Reads the local endpoint.
    Explain(ExplainArgs),
    /// Manage images in the container runtime.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Write the files a node joins with by TLS bootstrap, as `kubeadm
    /// join` does: the bootstrap kubeconfig (owner-only: it holds the token)
    /// and the cluster CA the packaged config names as clientCAFile.
    BootstrapKubeconfig(BootstrapArgs),
    /// The Service proxy's maintenance.
    Proxy {
        #[command(subcommand)]
        command: ProxyCommand,
    },
}

#[derive(Subcommand)]
enum ProxyCommand {
    /// Remove every rule nodelet's proxy made (iptables and nftables), as
    /// `kube-proxy --cleanup` does; run it with nodelet stopped.
    Cleanup,
}

#[derive(Subcommand)]
enum ImagesCommand {
    /// Import OCI image layout archives (.tar or .tar.gz) into containerd's
    /// CRI namespace and unpack them, for nodes that reach no registry.
    Import(ImportArgs),
}

#[derive(Args)]
struct BootstrapArgs {
    /// The apiserver, https://HOST:6443 (kubeadm's controlPlaneEndpoint).
    #[arg(long)]
    server: String,
    /// The cluster CA's certificate (PEM; /etc/kubernetes/pki/ca.crt on a
    /// control plane node).
    #[arg(long)]
    ca_file: PathBuf,
    /// A bootstrap token, ID.SECRET (`kubeadm token create`).
    #[arg(long)]
    token: String,
    /// Where the bootstrap kubeconfig goes.
    #[arg(long, default_value = "/etc/kubernetes/bootstrap-kubelet.conf")]
    kubeconfig: PathBuf,
    /// Where the CA goes (the packaged KubeletConfiguration's clientCAFile).
    #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
    ca_out: PathBuf,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct PodsArgs {
    /// nodelet's status socket (`<root-dir>/nodelet/status.sock`; root only).
    #[arg(long, default_value = "/var/lib/kubelet/nodelet/status.sock")]
    socket: std::path::PathBuf,
    /// Print the raw JSON instead of a table.
    #[arg(short = 'o', long = "output", value_parser = ["table", "json"], default_value = "table")]
    output: String,
}

#[derive(Args)]
struct ExplainArgs {
    /// What to explain: only `pod` for now.
    #[arg(value_parser = ["pod", "pods", "po"])]
    kind: String,
    /// NAMESPACE/NAME, or NAME of a static pod (its node suffix optional).
    target: String,
    /// nodelet's status socket (`<root-dir>/nodelet/status.sock`; root only).
    #[arg(long, default_value = "/var/lib/kubelet/nodelet/status.sock")]
    socket: std::path::PathBuf,
    /// Lines of each container's newest log to show.
    #[arg(long, default_value_t = 5)]
    tail: usize,
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

#[derive(Args)]
struct ImportArgs {
    /// Archive files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// containerd's socket.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    address: String,
    /// The snapshotter the CRI plugin uses.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

/// kubelet's flags that nodelet implements, under kubelet's names.
#[derive(Args, Default)]
struct RunArgs {
    /// KubeletConfiguration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plan against the real inputs and print the CRI calls and proxy rules
    /// instead of applying them; exits once every source has been read
    /// (non-zero if a manifest is invalid).
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: keep following the inputs instead of exiting.
    #[arg(long, requires = "dry_run")]
    watch: bool,
    /// With --dry-run: fail on any configuration field nodelet does not use
    /// (a misspelt one always fails), for checking configs in CI.
    #[arg(long, requires = "dry_run")]
    strict: bool,
    /// The node's name (default: the hostname, lowercased).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The CRI socket [default: unix:///run/containerd/containerd.sock].
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Deadline of each CRI call (Go duration) [default: 2m].
    #[arg(long, value_parser = duration)]
    runtime_request_timeout: Option<Duration>,
    /// Per-pod directories go below it [default: /var/lib/kubelet].
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// Where the /var/log/containers-style log symlinks go (kubelet fixes it
    /// there; nodelet lets tests and demos move it) [default: /var/log/containers].
    #[arg(long)]
    container_logs_dir: Option<PathBuf>,
    /// Directory of static pod manifests.
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// URL of static pod manifests (a Pod or a PodList).
    #[arg(long)]
    manifest_url: Option<String>,
    /// 'key:value' header for --manifest-url; repeatable.
    #[arg(long)]
    manifest_url_header: Vec<String>,
    /// Re-read the manifest directory this often [default: 20s].
    #[arg(long, value_parser = duration)]
    file_check_frequency: Option<Duration>,
    /// Poll the manifest URL this often [default: 20s].
    #[arg(long, value_parser = duration)]
    http_check_frequency: Option<Duration>,
    /// Re-check a quiet pod this often [default: 1m].
    #[arg(long, value_parser = duration)]
    sync_frequency: Option<Duration>,
    /// Comma-separated cluster DNS server IPs.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<String>,
    /// The cluster's DNS domain (e.g. cluster.local).
    #[arg(long)]
    cluster_domain: Option<String>,
    /// The resolver file for dnsPolicy Default [default: /etc/resolv.conf].
    #[arg(long)]
    resolv_conf: Option<PathBuf>,
    /// cgroupfs or systemd; must match the runtime's [default: cgroupfs].
    #[arg(long)]
    cgroup_driver: Option<String>,
    /// The cgroup the pod hierarchy lives under [default: /].
    #[arg(long)]
    cgroup_root: Option<String>,
    /// Put pods in per-QoS-class cgroups [default: true].
    #[arg(long)]
    cgroups_per_qos: Option<bool>,
    /// Port of /healthz and /pods; 0 turns them off [default: 10248].
    #[arg(long)]
    healthz_port: Option<u16>,
    /// Address of /healthz and /pods [default: 127.0.0.1].
    #[arg(long)]
    healthz_bind_address: Option<String>,
    /// Pods this node may run [default: 110].
    #[arg(long)]
    max_pods: Option<u32>,
    /// Unsafe sysctls (or `prefix*` patterns) pods may set, comma-separated.
    #[arg(long, value_delimiter = ',')]
    allowed_unsafe_sysctls: Vec<String>,
    /// nodelet's own oom_score_adj [default: -999].
    #[arg(long, allow_negative_numbers = true)]
    oom_score_adj: Option<i32>,
    /// RuntimeDefault seccomp for containers that name no profile [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    seccomp_default: Option<bool>,
    /// Refuse to start while the node has swap on [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    fail_swap_on: Option<bool>,
    /// Deprecated (kubelet's too, removed in v1.35): the sandbox image is the
    /// runtime's setting. Accepted because kubeadm up to v1.34 passes it;
    /// the image named is kept from image garbage collection, as kubelet does.
    #[arg(long)]
    pod_infra_container_image: Option<String>,
    /// `external` (the cloud's controller manager initializes the Node:
    /// nodelet registers it with the uninitialized taint and leaves its
    /// addresses to it), or empty. kubelet has no in-tree providers now.
    #[arg(long)]
    cloud_provider: Option<String>,
    /// Comma-separated node IPs (status.hostIP); default: the default route's.
    #[arg(long)]
    node_ip: Option<String>,
    /// First crash-loop back-off delay; lower it for tests [default: 10s].
    #[arg(long, value_parser = duration)]
    crash_loop_backoff_initial: Option<Duration>,
    /// Crash-loop back-off cap (KubeletConfiguration
    /// crashLoopBackOff.maxContainerRestartPeriod) [default: 5m].
    #[arg(long, value_parser = duration)]
    crash_loop_backoff_max: Option<Duration>,
    /// Image GC starts at this disk usage of the image filesystem, in percent
    /// (KubeletConfiguration imageGCHighThresholdPercent) [default: 85].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_high_threshold: Option<u8>,
    /// Image GC frees down to this usage (imageGCLowThresholdPercent) [default: 80].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: Option<u8>,
    /// An unused image younger than this is never collected (imageMinimumGCAge) [default: 2m].
    #[arg(long, value_parser = duration)]
    minimum_image_ttl_duration: Option<Duration>,
    /// How often image GC runs (nodelet's; kubelet: every 5m) [default: 5m].
    #[arg(long, value_parser = duration)]
    image_gc_period: Option<Duration>,
    /// A dead container younger than this is never collected [default: 0s].
    #[arg(long, value_parser = duration)]
    minimum_container_ttl_duration: Option<Duration>,
    /// Dead instances kept per container; negative: no limit [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    maximum_dead_containers_per_container: Option<i64>,
    /// Dead containers kept on the node; negative: no limit [default: -1].
    #[arg(long, allow_negative_numbers = true)]
    maximum_dead_containers: Option<i64>,
    /// The node's kubeconfig: cluster mode. Written by TLS bootstrap when
    /// missing or expired.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// A kubeconfig with a bootstrap token, for TLS bootstrap.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the client certificate goes [default: <root-dir>/pki].
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Labels to register the node with: k=v,k2=v2.
    #[arg(long)]
    node_labels: Option<String>,
    /// Taints to register the node with: key=value:Effect (repeatable).
    #[arg(long)]
    register_with_taints: Vec<String>,
    /// How often the node status is computed [default: 10s].
    #[arg(long, value_parser = duration)]
    node_status_update_frequency: Option<Duration>,
    /// Renew the client certificate before it expires [default: true].
    #[arg(long)]
    rotate_certificates: Option<bool>,
    /// A CredentialProviderConfig: image credential provider plugins.
    #[arg(long)]
    image_credential_provider_config: Option<PathBuf>,
    /// Where the credential provider plugins' binaries are.
    #[arg(long)]
    image_credential_provider_bin_dir: Option<PathBuf>,
    /// Set aside for Kubernetes daemons: `cpu=100m,memory=256Mi,ephemeral-storage=1Gi,pid=1000`
    /// (KubeletConfiguration kubeReserved).
    #[arg(long, value_parser = pairs)]
    kube_reserved: Option<BTreeMap<String, String>>,
    /// Set aside for system daemons, as --kube-reserved (systemReserved).
    #[arg(long, value_parser = pairs)]
    system_reserved: Option<BTreeMap<String, String>>,
    /// CPUs set aside for the system, e.g. `0-1` (reservedSystemCPUs); their
    /// count replaces the cpu of both reservations.
    #[arg(long)]
    reserved_cpus: Option<String>,
    /// What Node Allocatable is enforced on: `pods`, `kube-reserved`,
    /// `system-reserved`, or `none` (enforceNodeAllocatable) [default: pods].
    #[arg(long, value_delimiter = ',')]
    enforce_node_allocatable: Option<Vec<String>>,
    /// The cgroup that gets kubeReserved's limits (kubeReservedCgroup).
    #[arg(long)]
    kube_reserved_cgroup: Option<String>,
    /// The cgroup that gets systemReserved's limits (systemReservedCgroup).
    #[arg(long)]
    system_reserved_cgroup: Option<String>,
    /// Feature gates, `Name=true,Other=false` (featureGates; each over the file's).
    #[arg(long, value_parser = gates)]
    feature_gates: Option<BTreeMap<String, bool>>,
    /// Requests per second to the apiserver (kubeAPIQPS) [default: 50].
    #[arg(long)]
    kube_api_qps: Option<u32>,
    /// Burst of requests to the apiserver (kubeAPIBurst) [default: 100].
    #[arg(long)]
    kube_api_burst: Option<u32>,
    /// Events posted per second; 0 for no limit (eventRecordQPS) [default: 50].
    #[arg(long)]
    event_qps: Option<u32>,
    /// Burst of events (eventBurst) [default: 100].
    #[arg(long)]
    event_burst: Option<u32>,
    /// Most processes in any pod; -1 for no limit (podPidsLimit) [default: -1].
    #[arg(long, allow_negative_numbers = true)]
    pod_max_pids: Option<i64>,
    /// The node API's address [default: 0.0.0.0].
    #[arg(long)]
    address: Option<String>,
    /// The node API's port (HTTPS); 0 turns it off [default: 10250].
    #[arg(long)]
    port: Option<u16>,
    /// A read-only HTTP port without authentication; 0 is off [default: 0].
    #[arg(long)]
    read_only_port: Option<u16>,
    /// The node API's serving certificate [default: self-signed in --cert-dir].
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file.
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// The node API's lowest TLS version: VersionTLS12 or VersionTLS13 [default: VersionTLS12].
    #[arg(long)]
    tls_min_version: Option<String>,
    /// The node API's TLS 1.2 cipher suites, Go's names, comma-separated [default: all nodelet offers].
    #[arg(long, value_delimiter = ',')]
    tls_cipher_suites: Vec<String>,
    /// Client certificates signed by these CAs may call the node API.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Let callers without credentials in as system:anonymous [default: false].
    #[arg(long)]
    anonymous_auth: Option<bool>,
    /// Check bearer tokens with TokenReview [default: true].
    #[arg(long)]
    authentication_token_webhook: Option<bool>,
    /// Get the node API's certificate from the cluster's kubelet-serving
    /// signer and renew it (KubeletConfiguration serverTLSBootstrap).
    #[arg(long)]
    rotate_server_certificates: Option<bool>,
    /// Webhook (SubjectAccessReview) or AlwaysAllow [default: Webhook].
    #[arg(long, value_parser = ["Webhook", "AlwaysAllow"])]
    authorization_mode: Option<String>,
    /// The Service proxy mode: iptables, nftables, ipvs (needs the kernel's
    /// ip_vs module) or none (leave Services to another proxy)
    /// [default: the proxy config's mode, else iptables].
    #[arg(long, value_parser = ["iptables", "nftables", "ipvs", "none"])]
    proxy_mode: Option<String>,
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1).
    /// Also from `NODELET_PROXY_CONFIG` (nodelet.service sets it, and keeps
    /// it when kubeadm's drop-in replaces the command line).
    #[arg(long, env = "NODELET_PROXY_CONFIG")]
    proxy_config: Option<PathBuf>,
    /// Log verbosity, kubelet style: 0-1 info, 2-3 debug, 4+ trace.
    #[arg(long = "v", default_value_t = 0)]
    verbosity: u8,
    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    logging_format: String,
}

fn init_logging(verbosity: u8, format: &str) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "info,nodelet=debug",
        _ => "debug,nodelet=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn run_agent(a: RunArgs) -> anyhow::Result<()> {
    let file = match &a.config {
        Some(path) => KubeletConfig::load(path)?,
        None => KubeletConfig::default(),
    };
    let overrides = Overrides {
        hostname_override: a.hostname_override,
        dry_run: a.dry_run,
        dry_run_watch: a.watch,
        container_runtime_endpoint: a.container_runtime_endpoint,
        runtime_request_timeout: a.runtime_request_timeout,
        root_dir: a.root_dir,
        container_logs_dir: a.container_logs_dir,
        pod_manifest_path: a.pod_manifest_path,
        manifest_url: a.manifest_url,
        manifest_url_header: a.manifest_url_header,
        file_check_frequency: a.file_check_frequency,
        http_check_frequency: a.http_check_frequency,
        sync_frequency: a.sync_frequency,
        cluster_dns: a.cluster_dns,
        cluster_domain: a.cluster_domain,
        resolv_conf: a.resolv_conf,
        cgroup_driver: a.cgroup_driver,
        cgroup_root: a.cgroup_root,
        cgroups_per_qos: a.cgroups_per_qos,
        healthz_port: a.healthz_port,
        healthz_bind_address: a.healthz_bind_address,
        max_pods: a.max_pods,
        allowed_unsafe_sysctls: a.allowed_unsafe_sysctls,
        oom_score_adj: a.oom_score_adj,
        seccomp_default: a.seccomp_default,
        fail_swap_on: a.fail_swap_on,
        pod_infra_container_image: a.pod_infra_container_image,
        cloud_provider: a.cloud_provider,
        node_ip: a.node_ip,
        crash_loop_backoff_initial: a.crash_loop_backoff_initial,
        image_gc_high_threshold: a.image_gc_high_threshold,
        image_gc_low_threshold: a.image_gc_low_threshold,
        minimum_image_ttl_duration: a.minimum_image_ttl_duration,
        image_gc_period: a.image_gc_period,
        minimum_container_ttl_duration: a.minimum_container_ttl_duration,
        maximum_dead_containers_per_container: a.maximum_dead_containers_per_container,
        maximum_dead_containers: a.maximum_dead_containers,
        crash_loop_backoff_max: a.crash_loop_backoff_max,
        kubeconfig: a.kubeconfig,
        bootstrap_kubeconfig: a.bootstrap_kubeconfig,
        cert_dir: a.cert_dir,
        node_labels: a.node_labels,
        register_with_taints: a.register_with_taints,
        node_status_update_frequency: a.node_status_update_frequency,
        rotate_certificates: a.rotate_certificates,
        image_credential_provider_config: a.image_credential_provider_config,
        image_credential_provider_bin_dir: a.image_credential_provider_bin_dir,
        feature_gates: a.feature_gates.unwrap_or_default(),
        kube_api_qps: a.kube_api_qps,
        kube_api_burst: a.kube_api_burst,
        event_qps: a.event_qps,
        event_burst: a.event_burst,
        allocatable: nodelet::config::allocatable::AllocatableFields {
            kube_reserved: a.kube_reserved,
            system_reserved: a.system_reserved,
            reserved_system_cpus: a.reserved_cpus,
            enforce_node_allocatable: a.enforce_node_allocatable,
            kube_reserved_cgroup: a.kube_reserved_cgroup,
            system_reserved_cgroup: a.system_reserved_cgroup,
            pod_pids_limit: a.pod_max_pids,
        },
        node_api: nodelet::config::node_api::NodeApiFlags {
            address: a.address,
            port: a.port,
            read_only_port: a.read_only_port,
            tls_cert_file: a.tls_cert_file,
            tls_private_key_file: a.tls_private_key_file,
            tls_min_version: a.tls_min_version,
            tls_cipher_suites: a.tls_cipher_suites,
            client_ca_file: a.client_ca_file,
            anonymous_auth: a.anonymous_auth,
            authentication_token_webhook: a.authentication_token_webhook,
            authorization_mode: a.authorization_mode,
            rotate_server_certificates: a.rotate_server_certificates,
        },
    };
    let mut unused: Vec<String> = file.ignored.iter().map(|f| format!("KubeletConfiguration {f}")).collect();
    let settings = Settings::resolve(overrides, file)?;
    // As kubelet's node IP validation: a node IP no interface holds would
    // be reported to the cluster and reached by nobody.
    if settings.cluster.is_some() && !settings.dry_run {
        let missing = nodelet::config::node_ips_not_local(&settings.node_ips);
        if !missing.is_empty() {
            return Err(nodelet::config::ConfigError::Flag {
                flag: "--node-ip".into(),
                message: format!("{}: not found in this host's network interfaces", missing.join(",")),
            }
            .into());
        }
    }
    let mut proxy = None;
    if settings.cluster.is_some() {
        let proxy_file = a.proxy_config.as_deref().map(ProxyConfig::load).transpose()?;
        unused.extend(proxy_file.iter().flat_map(|p| p.ignored.iter().map(|f| format!("KubeProxyConfiguration {f}"))));
        proxy = Some(nodelet::proxy::resolve(
            a.proxy_mode.as_deref(),
            proxy_file.as_ref(),
            &settings.node_name,
            &settings.node_ips,
            settings.dry_run,
        )?);
    } else if a.proxy_mode.as_deref().is_some_and(|m| m != "none") || a.proxy_config.is_some() {
        tracing::warn!("the Service proxy needs an apiserver (--kubeconfig); it does not run standalone");
    }
    if a.strict && !unused.is_empty() {
        anyhow::bail!("--strict: configuration fields nodelet does not use: {}", unused.join(", "));
    }
    if a.strict
        && let Some(dir) = &settings.static_pod_path
    {
        let problems = nodelet::pods::source::file::FileSource::check(dir.clone(), settings.node_name.clone());
        if !problems.is_empty() {
            anyhow::bail!("--strict: static pod manifests: {}", problems.join("; "));
        }
    }
    nodelet::agent::run(settings, proxy, shutdown_signal()).await?;
    Ok(())
}

/// A GET on nodelet's status socket: the status and the body.
async fn local_get(socket: &std::path::Path, path: &str) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
        format!("cannot reach nodelet at {} (is it running, and are you root? a nodelet with another --root-dir: --socket <root-dir>/nodelet/status.sock)", socket.display())
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path).header(http::header::HOST, "localhost").body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await.with_context(|| format!("{}: GET {path}", socket.display()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn pods(a: PodsArgs) -> anyhow::Result<()> {
    let (status, body) = local_get(&a.socket, "/pods").await?;
    anyhow::ensure!(status.is_success(), "{}: GET /pods: {status}", a.socket.display());
    if a.output == "json" {
        println!("{}", String::from_utf8_lossy(&body));
    } else {
        print!("{}", nodelet::view::pods_table(&body, k8s_openapi::jiff::Timestamp::now())?);
        if let Ok((_, bytes)) = local_get(&a.socket, "/pulls").await
            && let Ok(list) = serde_json::from_slice::<Vec<nodelet::pulls::Progress>>(&bytes)
        {
            print!("{}", nodelet::view::pulls_table(&list));
        }
    }
    Ok(())
}

async fn explain(a: ExplainArgs) -> anyhow::Result<()> {
    let (ns, name) = a.target.split_once('/').unwrap_or(("-", &a.target));
    let (status, body) = local_get(&a.socket, &format!("/explain/{}/{}", enc(ns), enc(name))).await?;
    if status == http::StatusCode::NOT_FOUND {
        anyhow::bail!("{}", String::from_utf8_lossy(&body).trim());
    }
    anyhow::ensure!(status.is_success(), "{}: GET /explain: {status}", a.socket.display());
    if a.output == "json" {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let e: nodelet::explain::Explanation = serde_json::from_slice(&body).context("the endpoint's answer is not an explanation")?;
    // Logs are read here, by the operator's own rights, not served.
    let logs: Vec<(String, Vec<String>)> = if a.tail == 0 {
        Vec::new()
    } else {
        e.containers.iter().map(|c| (c.name.clone(), nodelet::explain::last_log_lines(&e.log_directory, &c.name, a.tail))).collect()
    };
    print!("{}", nodelet::explain::render(&e, &logs));
    Ok(())
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn images_import(a: ImportArgs) -> anyhow::Result<()> {
    let mut opts = ImportOptions::for_socket(socket_path(&a.address)?);
    opts.snapshotter = a.snapshotter;
    for file in &a.files {
        for img in import(file, &opts).await? {
            println!("imported {} ({})", img.name, img.digest);
        }
    }
    Ok(())
}

fn main() {
    nodelet::cluster::client::install_crypto();
    if invoked_as_kubelet() && std::env::args().skip(1).any(|a| a == "--version" || a == "--version=true") {
        println!("{KUBELET_VERSION_LINE}");
        return;
    }
    let cli = Cli::parse();
    let (verbosity, format) = (cli.run.verbosity, cli.run.logging_format.clone());
    init_logging(verbosity, &format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodelet: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            None => run_agent(cli.run).await,
            Some(Command::Pods(a)) => pods(a).await,
            Some(Command::Explain(a)) => explain(a).await,
            Some(Command::Images { command: ImagesCommand::Import(a) }) => images_import(a).await,
            Some(Command::BootstrapKubeconfig(a)) => {
                let files = nodelet::cluster::bootstrap_file::BootstrapFiles {
                    server: a.server,
                    ca_file: a.ca_file,
                    token: a.token,
                    kubeconfig: a.kubeconfig,
                    ca_out: a.ca_out,
                    force: a.force,
                };
                let written = nodelet::cluster::bootstrap_file::write(&files).map_err(|e| anyhow::anyhow!(e))?;
                for w in written {
                    println!("wrote {}", w.display());
                }
                Ok(())
            }
            Some(Command::Proxy { command: ProxyCommand::Cleanup }) => {
                let errors = tokio::task::spawn_blocking(nodelet::proxy::cleanup).await?;
                if errors.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(errors.join("; "))) }
            }
        }
    });
    if let Err(e) = result {
        eprintln!("nodelet: {}", chain(&e));
        std::process::exit(1);
    }
}

fn chain(e: &anyhow::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// A `name=quantity,…` flag value.
fn pairs(s: &str) -> Result<BTreeMap<String, String>, String> {
    nodelet::config::allocatable::parse_pairs(s)
}

/// A `--feature-gates` value.
fn gates(s: &str) -> Result<BTreeMap<String, bool>, String> {
    nodelet::config::features::parse_flag(s)
}
