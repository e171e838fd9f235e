//! Pod start latency: 30 static pods written at once, against the floor of
//! the same CRI calls made directly.
//!
//! For each round, on a private containerd:
//! - floor: RunPodSandbox, CreateContainer and StartContainer for 30 pods,
//!   issued concurrently by this program, with the configs nodelet would
//!   send;
//! - nodelet: 30 manifests renamed into the manifest directory of an idle
//!   nodelet; nodelet finds them, plans, checks the image and makes the same
//!   calls.
//!
//! Each pod's time is its container's `started_at` (the runtime's own
//! clock) minus the moment the calls were issued or the manifests written.
//! Prints p50/p99 per round, the ratio to the floor, nodelet's CPU seconds
//! and its peak RSS. Run: `cargo bench --bench pod_start`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nodelet::pods::manifest::{self, StaticOrigin};
use nodelet::pods::{ContainerKind, NodeContext, container, sandbox};
use nodelet::runtime::{Runtime, cri};
use support::{Agent, Node};

const PODS: usize = 30;
const ROUNDS: usize = 3;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn manifest(round: usize, i: usize, tag: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {tag}-{round}-{i:02}\nspec:\n  terminationGracePeriodSeconds: 2\n  \
         containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
         command: [sh, -c, \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Round {
    p50: f64,
    p99: f64,
    max: f64,
}

fn summarize(mut v: Vec<f64>) -> Round {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Round { p50: percentile(&v, 50.0), p99: percentile(&v, 99.0), max: *v.last().unwrap() }
}

async fn started_at(rt: &dyn Runtime, pod_prefix: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for c in rt.list_containers(None).await.unwrap() {
        if !c.labels.get("io.kubernetes.pod.name").is_some_and(|n| n.starts_with(pod_prefix)) {
            continue;
        }
        if let Ok(s) = rt.container_status(&c.id).await
            && s.state == cri::ContainerState::ContainerRunning as i32
        {
            out.push(s.started_at);
        }
    }
    out
}

async fn remove_everything(rt: &dyn Runtime) {
    for s in rt.list_pod_sandbox(None).await.unwrap() {
        let _ = rt.stop_pod_sandbox(&s.id).await;
        let _ = rt.remove_pod_sandbox(&s.id).await;
    }
}

/// The same calls nodelet makes to start a pod, made directly.
async fn floor_round(node: &Node, round: usize) -> Vec<f64> {
    let rt = node.cri().await;
    let mut ctx = NodeContext::for_tests(&node.node_name());
    ctx.pod_logs_dir = node.logs.clone();
    ctx.cgroup_root = node.cgroup_root.clone();
    let image = rt.image_status(support::BUSYBOX).await.unwrap().expect("busybox imported").id;
    let mut prepared = Vec::new();
    for i in 0..PODS {
        let origin = StaticOrigin::File(format!("/floor/{i}.yaml"));
        let (pod, _) = manifest::load_static(manifest(round, i, "floor").as_bytes(), &node.node_name(), &origin).unwrap();
        let (sb, _) = sandbox::sandbox_config(&pod, 0, &ctx);
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let cfg = container::container_config(&container::ContainerRequest {
            pod: &pod,
            container: &c,
            kind: ContainerKind::App,
            attempt: 0,
            image_ref: &image,
            pod_ips: &[],
            node: &ctx,
            env_sources: &Default::default(),
            volumes: &Default::default(),
            etc_hosts: None,
            termination_log: None,
            target_id: None,
            dry_run: false,
        })
        .unwrap()
        .0;
        std::fs::create_dir_all(std::path::Path::new(&sb.log_directory).join("c")).unwrap();
        prepared.push((sb, cfg));
    }
    let t0 = now_ns();
    let calls = prepared.iter().map(|(sb, cfg)| {
        let rt = rt.clone();
        async move {
            let id = rt.run_pod_sandbox(sb, "").await.unwrap();
            let cid = rt.create_container(&id, cfg, sb).await.unwrap();
            rt.start_container(&cid).await.unwrap();
        }
    });
    futures::future::join_all(calls).await;
    let starts = started_at(&rt, &format!("floor-{round}-")).await;
    assert_eq!(starts.len(), PODS, "floor: not every container runs");
    remove_everything(&rt).await;
    starts.iter().map(|s| (s - t0) as f64 / 1e9).collect()
}

struct NodeletRound {
    /// CRI calls per minute while idle, by operation.
    idle_calls: std::collections::BTreeMap<String, f64>,
    times: Vec<f64>,
    cpu: f64,
    rss: f64,
    /// CPU share of one core while the 30 pods just run.
    idle: f64,
}

/// The idle window: a minute, so the CRI calls per minute are counted, not
/// guessed (the relist's safety net runs once a minute).
const IDLE_WINDOW: Duration = Duration::from_secs(60);

/// The CRI calls nodelet has made (kubelet_runtime_operations_total, read on
/// its status socket), by operation.
fn cri_calls(node: &Node) -> std::collections::BTreeMap<String, f64> {
    let text = node.get("/metrics").unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("kubelet_runtime_operations_total{")) {
        let op = line.split("operation_type=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?").to_string();
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(op).or_insert(0.0) += n;
    }
    out
}

async fn nodelet_round(node: &Node, round: usize) -> NodeletRound {
    let rt = node.cri().await;
    let agent: Agent = node.nodelet(&[]);
    // Idle and relisting before the clock starts.
    support::eventually(Duration::from_secs(20), "nodelet healthy", || async { node.get("/healthz").filter(|b| b == "ok") }).await;
    let staging = node.dir.path().join(format!("staging-{round}"));
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..PODS {
        std::fs::write(staging.join(format!("p{i:02}.yaml")), manifest(round, i, "nodelet")).unwrap();
    }
    let cpu0 = support::proc_cpu_seconds(agent.pid());
    let t0 = now_ns();
    for i in 0..PODS {
        let f = format!("p{i:02}.yaml");
        std::fs::rename(staging.join(&f), node.manifests.join(&f)).unwrap();
    }
    let prefix = format!("nodelet-{round}-");
    let deadline = Instant::now() + Duration::from_secs(120);
    // Poll with one cheap list call, so the watching does not slow the
    // runtime down; read the start times once all run.
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    loop {
        let n = rt.list_containers(Some(running.clone())).await.unwrap().len();
        if n == PODS {
            break;
        }
        assert!(Instant::now() < deadline, "nodelet: only {n} of {PODS} pods running\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let starts = started_at(&rt, &prefix).await;
    let cpu = support::proc_cpu_seconds(agent.pid()) - cpu0;
    // Steady state: relisting every second, nothing to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle0 = support::proc_cpu_seconds(agent.pid());
    let calls0 = cri_calls(node);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = (support::proc_cpu_seconds(agent.pid()) - idle0) / IDLE_WINDOW.as_secs_f64();
    let calls1 = cri_calls(node);
    let per_minute = 60.0 / IDLE_WINDOW.as_secs_f64();
    let idle_calls: std::collections::BTreeMap<String, f64> =
        calls1.iter().map(|(op, n)| (op.clone(), (n - calls0.get(op).copied().unwrap_or(0.0)) * per_minute)).filter(|(_, n)| *n > 0.0).collect();
    let rss = support::proc_peak_rss_mib(agent.pid());
    // Let nodelet take its pods down again.
    for i in 0..PODS {
        std::fs::remove_file(node.manifests.join(format!("p{i:02}.yaml"))).unwrap();
    }
    support::eventually(Duration::from_secs(60), "pods removed", || async {
        rt.list_pod_sandbox(None).await.unwrap().is_empty().then_some(())
    })
    .await;
    drop(agent);
    NodeletRound { times: starts.iter().map(|s| (s - t0) as f64 / 1e9).collect(), cpu, rss, idle, idle_calls }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let node = Node::start().await;
        // Warm up the snapshotter, CNI and page cache.
        let _ = floor_round(&node, 99).await;
        println!("pod start: {PODS} static pods at once, {ROUNDS} rounds, private containerd {}", containerd_version());
        println!(
            "{:<8} {:>7} {:>8} {:>8} {:>8} {:>12} {:>10} {:>10}",
            "round", "who", "p50 s", "p99 s", "all s", "start CPU", "idle CPU", "peak RSS"
        );
        let mut ratios50 = Vec::new();
        let mut ratios99 = Vec::new();
        let mut cpus = Vec::new();
        let mut idles = Vec::new();
        let mut calls = Vec::new();
        let mut rss = 0f64;
        for round in 0..ROUNDS {
            let f = summarize(floor_round(&node, round).await);
            let n = nodelet_round(&node, round).await;
            let s = summarize(n.times);
            println!("{round:<8} {:>7} {:>8.3} {:>8.3} {:>8.3}", "floor", f.p50, f.p99, f.max);
            println!(
                "{round:<8} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>10.2} s {:>9.2}% {:>6.1} MiB",
                "nodelet",
                s.p50,
                s.p99,
                s.max,
                n.cpu,
                n.idle * 100.0,
                n.rss
            );
            let total: f64 = n.idle_calls.values().sum();
            println!("{round:<8} {:>7} idle CRI calls per minute: {total:.0} {:?}", "nodelet", n.idle_calls);
            calls.push(total);
            idles.push(n.idle);
            ratios50.push(s.p50 / f.p50);
            ratios99.push(s.p99 / f.p99);
            cpus.push(n.cpu);
            rss = rss.max(n.rss);
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        println!(
            "median over rounds: nodelet/floor p50 {:.2}x, p99 {:.2}x; nodelet CPU {:.2} s to start {PODS} pods, \
             {:.2}% of a core idle with them, {:.0} CRI calls a minute; peak RSS {:.1} MiB",
            med(ratios50),
            med(ratios99),
            med(cpus),
            med(idles) * 100.0,
            med(calls),
            rss
        );
    });
}

fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(2).unwrap_or("").to_string())
        .unwrap_or_default()
}
