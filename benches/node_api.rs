//! What the node API costs over the thing it serves, on a nodelet node
//! joined to the test apiserver on a private containerd:
//!
//! - **logs**: a container's 100 MiB of log. Baseline: reading the CRI log
//!   file and taking the lines out of it in-process (what any reader of the
//!   file must do). Then `/containerLogs` straight from the node API (HTTPS,
//!   authenticated, authorized), and `kubectl logs`-style through the
//!   apiserver. Time to first byte and throughput.
//! - **exec round trip**: `true` run by exec, until the stream closes.
//!   Baseline: the runtime's streaming URL (CRI Exec, then WebSocket
//!   `v4.channel.k8s.io` to containerd). Then the same through the node API.
//!
//! Run as root: `cargo bench --bench node_api`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use nodelet::runtime::{Runtime, cri};
use support::apiserver::kubelet_proxy::node_tls;
use support::cluster::Cluster;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LOG_BYTES: u64 = 100 << 20;
const EXECS: usize = 20;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs one exec over a WebSocket already connected; returns when the
/// server closes the stream.
async fn exec_over<S>(stream: S, uri: &str) -> Duration
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut req = uri.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("websocket");
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            break;
        }
    }
    let _ = ws.close(None).await;
    started.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let c = Cluster::start().await;
        c.node.config_extra.lock().unwrap().push_str("containerLogMaxSize: 4Gi\n");
        let _agent = c.join().await;
        let pods = c.pods("default");
        let line = "y".repeat(99);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "writer"},
            "spec": {"nodeName": c.node.node_name(), "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "nodelet.local/busybox:1",
                    "command": ["sh", "-c", format!("yes {line} | head -c {LOG_BYTES}; while true; do sleep 1; done")]}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let cri = c.node.cri().await;
        let id = support::eventually(Duration::from_secs(60), "the writer running", || async {
            c.node.containers_named("writer").await.into_iter().find(support::is_running).map(|s| s.id)
        })
        .await;
        let log = std::path::PathBuf::from(cri.container_status(&id).await.unwrap().log_path);
        // The file holds the lines plus CRI's prefixes; wait until it stops growing.
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if size >= LOG_BYTES && size == last {
                break;
            }
            last = size;
        }
        let file_size = last;

        // Baseline: the file, parsed in-process.
        let started = Instant::now();
        let mut f = tokio::fs::File::open(&log).await.unwrap();
        let mut joiner = nodelet::server::logs::Joiner::new(&Default::default());
        let mut buf = vec![0u8; 64 * 1024];
        let mut base_bytes = 0usize;
        let mut base_first = None;
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            let out = joiner.feed(&buf[..n]);
            if base_first.is_none() && !out.is_empty() {
                base_first = Some(started.elapsed());
            }
            base_bytes += out.len();
        }
        let base_total = started.elapsed();

        // The node API, directly.
        let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
        let started = Instant::now();
        let tls = node_tls(&c.node.netns, 10250, Some(&apiserver)).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/containerLogs/default/writer/c").header("host", "localhost").body(http_body_util::Empty::new()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut api_first = None;
        let mut api_bytes = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                if api_first.is_none() {
                    api_first = Some(started.elapsed());
                }
                api_bytes += data.len();
            }
        }
        let api_total = started.elapsed();
        assert_eq!(api_bytes, base_bytes, "the node API returns the same lines");

        // Through the apiserver, as kubectl logs.
        let started = Instant::now();
        let text = pods.logs("writer", &LogParams::default()).await.unwrap();
        let via_total = started.elapsed();
        assert_eq!(text.len(), base_bytes);

        // Exec round trips: the runtime's URL, then the node API.
        let mut direct = Vec::new();
        for _ in 0..EXECS {
            let started = Instant::now();
            let url = cri
                .exec(cri::ExecRequest { container_id: id.clone(), cmd: vec!["true".into()], stdout: true, stderr: true, ..Default::default() })
                .await
                .unwrap();
            let authority = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
            let tcp = support::in_netns(&c.node.netns, move || std::net::TcpStream::connect(authority.as_str()).unwrap());
            tcp.set_nonblocking(true).unwrap();
            let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
            exec_over(tcp, &url.replace("http://", "ws://")).await;
            direct.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let mut through = Vec::new();
        for _ in 0..EXECS {
            let started = Instant::now();
            let tls = node_tls(&c.node.netns, 10250, Some(&apiserver)).await.unwrap();
            exec_over(tls, "ws://localhost:10250/exec/default/writer/c?command=true&output=1&error=1").await;
            through.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let (d, t) = (median(&mut direct), median(&mut through));

        let mib = |b: usize, d: Duration| b as f64 / (1 << 20) as f64 / d.as_secs_f64();
        println!("node API benchmark ({} MiB of log lines, a {} MiB CRI log file)", base_bytes >> 20, file_size >> 20);
        println!(
            "logs   file+parse (baseline): first byte {:>7.2} ms, all {:>7.0} ms, {:>6.0} MiB/s",
            base_first.unwrap().as_secs_f64() * 1e3,
            base_total.as_secs_f64() * 1e3,
            mib(base_bytes, base_total)
        );
        println!(
            "logs   node API (HTTPS):      first byte {:>7.2} ms, all {:>7.0} ms, {:>6.0} MiB/s   {:.2}x the baseline's time",
            api_first.unwrap().as_secs_f64() * 1e3,
            api_total.as_secs_f64() * 1e3,
            mib(api_bytes, api_total),
            api_total.as_secs_f64() / base_total.as_secs_f64()
        );
        println!(
            "logs   through the apiserver:                      all {:>7.0} ms, {:>6.0} MiB/s   {:.2}x",
            via_total.as_secs_f64() * 1e3,
            mib(text.len(), via_total),
            via_total.as_secs_f64() / base_total.as_secs_f64()
        );
        println!("exec   runtime URL (baseline): median {d:>6.1} ms of {EXECS} round trips of `true`");
        println!("exec   node API:               median {t:>6.1} ms   {:.2}x", t / d);
    });
}
