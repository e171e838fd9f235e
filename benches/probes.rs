//! Probe cost: 30 pods, each with a startup probe (tcpSocket), a liveness
//! probe (httpGet) and a readiness probe (tcpSocket), all at a 1 s period,
//! against busybox httpd in each pod. Measures nodelet's CPU while the
//! probes run (the startup probes finish first) and prints it as a share of
//! one core against the 2 % goal. Run: `cargo bench --bench probes`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::Node;

const PODS: usize = 30;
const WINDOW: Duration = Duration::from_secs(60);
const GOAL: f64 = 0.02;

fn manifest(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probed-{i:02}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  \
         - name: web\n    image: nodelet.local/busybox:1\n    command: [httpd, -f, -p, '8080', -h, /var/www]\n    \
         ports: [{{name: http, containerPort: 8080}}]\n    \
         startupProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1, failureThreshold: 30}}\n    \
         livenessProbe: {{httpGet: {{path: /index.html, port: http}}, periodSeconds: 1}}\n    \
         readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n"
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let node = Node::start().await;
        let agent = node.nodelet(&[]);
        for i in 0..PODS {
            node.write_manifest(&format!("p{i:02}.yaml"), &manifest(i));
        }
        let t0 = Instant::now();
        support::eventually(Duration::from_secs(180), "every pod ready", || async {
            let body = node.get("/pods")?;
            let list: serde_json::Value = serde_json::from_str(&body).ok()?;
            let ready = list["items"]
                .as_array()?
                .iter()
                .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
                .count();
            (ready == PODS).then_some(())
        })
        .await;
        println!("probes: {PODS} pods x 3 probes (startup tcpSocket, liveness httpGet, readiness tcpSocket), period 1 s");
        println!("all {PODS} pods ready after {:.1} s", t0.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = support::proc_cpu_seconds(agent.pid());
        let (user0, sys0) = support::proc_cpu_split(agent.pid());
        tokio::time::sleep(WINDOW).await;
        let used = support::proc_cpu_seconds(agent.pid()) - cpu0;
        let (user1, sys1) = support::proc_cpu_split(agent.pid());
        let share = used / WINDOW.as_secs_f64();
        let restarts = node.get("/pods").map_or(0, |b| b.matches("\"restartCount\":1").count());
        println!(
            "nodelet CPU over {} s: {:.2} s = {:.2}% of one core ({:.2}x the 2% goal); {} probe runs/s; peak RSS {:.1} MiB; restarts {restarts}",
            WINDOW.as_secs(),
            used,
            share * 100.0,
            share / GOAL,
            PODS * 2,
            support::proc_peak_rss_mib(agent.pid()),
        );
        println!(
            "of which user {:.2} s, kernel {:.2} s (the kernel's share includes the pods' side of each probe connection, processed on nodelet's CPU time)",
            user1 - user0,
            sys1 - sys0
        );
    });
}
