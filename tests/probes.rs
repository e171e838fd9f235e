//! Probes and lifecycle hooks against a real containerd, with busybox
//! containers (and a gRPC health server) whose behaviour the test controls.

mod support;

use std::time::{Duration, Instant};

use support::{Node, eventually, is_exited, is_running, pod_yaml};

const S: Duration = Duration::from_secs(1);

fn container_status(st: &serde_json::Value, name: &str) -> serde_json::Value {
    st["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
}

fn condition(st: &serde_json::Value, t: &str) -> String {
    st["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap()["status"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    node.write_manifest(
        "live.yaml",
        &pod_yaml(
            "live",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 3600']\n    \
             livenessProbe:\n      exec: {command: [cat, /tmp/healthy]}\n      periodSeconds: 1\n      failureThreshold: 2\n      \
             terminationGracePeriodSeconds: 2\n",
        ),
    );
    let st = eventually(40 * S, "a restart after the liveness probe failed", || async {
        node.status("live").filter(|st| container_status(st, "c")["restartCount"].as_i64() >= Some(1))
    })
    .await;
    assert_eq!(st["status"]["phase"], "Running");
    let log = agent.log();
    assert!(log.contains("Liveness probe failed: cat: can't open '/tmp/healthy'"), "the failure and its reason are logged:\n{log}");
    assert!(log.contains("Container c failed liveness probe, will be restarted"), "{log}");
    let last = &container_status(&st, "c")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "killed at the probe's grace period: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_readiness_probe_flips_ready_without_restarting() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "  containers:\n  - name: httpd\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'mkdir -p /www && echo ok > /www/ready.html && exec httpd -f -p 8080 -h /www']\n    \
             ports: [{name: http, containerPort: 8080}]\n    \
             readinessProbe:\n      httpGet: {path: /ready.html, port: http}\n      periodSeconds: 1\n",
        ),
    );
    let ready = |want: bool| {
        let node = &node;
        async move {
            eventually(30 * S, &format!("ready={want}"), || async {
                node.status("web").filter(|st| container_status(st, "httpd")["ready"] == want && condition(st, "Ready") == if want { "True" } else { "False" })
            })
            .await
        }
    };
    ready(true).await;
    let c = node.instances("web", "httpd").await.into_iter().find(is_running).unwrap();
    let out = node.exec(&c.id, &["rm", "/www/ready.html"]).await;
    assert_eq!(out.exit_code, 0);
    let st = ready(false).await;
    assert_eq!(condition(&st, "ContainersReady"), "False");
    node.exec(&c.id, &["sh", "-c", "echo ok > /www/ready.html"]).await;
    let st = ready(true).await;
    assert_eq!(container_status(&st, "httpd")["restartCount"], 0, "readiness never restarts");
    assert_eq!(node.instances("web", "httpd").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_grpc_probes_pass_and_fail() {
    use tonic_health::ServingStatus;
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "tcp.yaml",
        &pod_yaml(
            "tcp",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'nc -ll -p 9000 -e true & sleep 3600']\n    \
             readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}\n",
        ),
    );
    node.write_manifest(
        "grpc.yaml",
        &pod_yaml(
            "grpc",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             readinessProbe: {grpc: {port: 9100, service: nodelet}, periodSeconds: 1}\n",
        ),
    );
    let ready = |pod: &'static str, want: bool| {
        let node = &node;
        async move {
            eventually(30 * S, &format!("{pod} ready={want}"), || async {
                node.status(pod).filter(|st| container_status(st, "c")["ready"] == want)
            })
            .await
        }
    };
    // tcpSocket: the listener answers, then goes away.
    ready("tcp", true).await;
    let c = node.instances("tcp", "c").await.into_iter().find(is_running).unwrap();
    assert_eq!(node.exec(&c.id, &["killall", "nc"]).await.exit_code, 0);
    ready("tcp", false).await;

    // grpc: a health server in the pod's network namespace, run by the test.
    eventually(30 * S, "grpc running", || async { node.instances("grpc", "c").await.into_iter().find(is_running) }).await;
    let netns = node.pod_netns("grpc").await;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("nodelet", ServingStatus::NotServing).await;
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("0.0.0.0:9100").await.unwrap();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
        });
    });
    tokio::time::sleep(3 * S).await;
    assert_eq!(container_status(&node.status("grpc").unwrap(), "c")["ready"], false, "NOT_SERVING is not ready");
    reporter.set_service_status("nodelet", ServingStatus::Serving).await;
    ready("grpc", true).await;
    reporter.set_service_status("nodelet", ServingStatus::NotServing).await;
    ready("grpc", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_probe_protects_a_slow_starter_and_kills_one_that_never_starts() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "slow.yaml",
        &pod_yaml(
            "slow",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'sleep 4; touch /tmp/started; sleep 3600']\n    \
             startupProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 15}\n    \
             livenessProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 1}\n",
        ),
    );
    node.write_manifest(
        "never.yaml",
        &pod_yaml(
            "never",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             startupProbe: {exec: {command: ['false']}, periodSeconds: 1, failureThreshold: 2, terminationGracePeriodSeconds: 2}\n",
        ),
    );
    let before = eventually(20 * S, "slow running, not started yet", || async {
        node.status("slow").filter(|st| container_status(st, "c")["state"]["running"].is_object())
    })
    .await;
    assert_eq!(container_status(&before, "c")["started"], false);
    let started = eventually(30 * S, "slow started", || async {
        node.status("slow").filter(|st| container_status(st, "c")["started"] == true && container_status(st, "c")["ready"] == true)
    })
    .await;
    assert_eq!(container_status(&started, "c")["restartCount"], 0, "liveness was held back until startup passed");
    tokio::time::sleep(3 * S).await;
    assert_eq!(container_status(&node.status("slow").unwrap(), "c")["restartCount"], 0);

    eventually(40 * S, "never killed and restarted", || async {
        node.status("never").filter(|st| container_status(st, "c")["restartCount"].as_i64() >= Some(1))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_runs_before_the_stop_signal_and_a_hanging_one_is_cut_off() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    // Killed by its liveness probe (so its log stays): preStop first, then TERM.
    node.write_manifest(
        "hooked.yaml",
        &pod_yaml(
            "hooked",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, \"touch /tmp/alive; trap 'echo got TERM; exit 0' TERM; (sleep 2; rm /tmp/alive) & while true; do sleep 0.2; done\"]\n    \
             livenessProbe: {exec: {command: [test, -f, /tmp/alive]}, periodSeconds: 1, failureThreshold: 1}\n    \
             lifecycle:\n      preStop: {exec: {command: [sh, -c, 'echo prestop ran > /proc/1/fd/1']}}\n",
        ),
    );
    node.write_manifest(
        "hanging.yaml",
        &pod_yaml(
            "hanging",
            "  terminationGracePeriodSeconds: 3\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sleep, '3600']\n    lifecycle:\n      preStop: {exec: {command: [sleep, '100']}}\n",
        ),
    );
    let first = eventually(40 * S, "hooked's first instance stopped", || async {
        node.instances("hooked", "c").await.into_iter().find(|c| c.metadata.as_ref().unwrap().attempt == 0 && is_exited(c))
    })
    .await;
    let log = std::fs::read_to_string(&first.log_path).unwrap();
    let pre = log.find("prestop ran").unwrap_or_else(|| panic!("preStop output missing:\n{log}"));
    let term = log.find("got TERM").unwrap_or_else(|| panic!("TERM handling missing:\n{log}"));
    assert!(pre < term, "preStop ran after the stop signal:\n{log}");
    assert_eq!(first.exit_code, 0, "the container stopped on its TERM handler");

    eventually(30 * S, "hanging running", || async { node.instances("hanging", "c").await.into_iter().find(is_running) }).await;
    let t0 = Instant::now();
    node.remove_manifest("hanging.yaml");
    eventually(20 * S, "hanging removed", || async { node.instances("hanging", "c").await.is_empty().then_some(()) }).await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(4500), "cut off before the grace period and the 2 s extension: {took:?}");
    assert!(took < 9 * S, "a hanging preStop held the pod too long: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_start_hook_kills_the_container() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    node.write_manifest(
        "post.yaml",
        &pod_yaml(
            "post",
            "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sleep, '3600']\n    lifecycle:\n      postStart: {exec: {command: [sh, -c, 'echo no; exit 3']}}\n",
        ),
    );
    let st = eventually(40 * S, "the container killed and restarted", || async {
        node.status("post").filter(|st| container_status(st, "c")["restartCount"].as_i64() >= Some(1))
    })
    .await;
    assert!(agent.log().contains("PostStartHook failed: no"), "{}", agent.log());
    let first = node.instances("post", "c").await.into_iter().find(|c| c.metadata.as_ref().unwrap().attempt == 0);
    if let Some(first) = first {
        assert!(is_exited(&first), "the first instance was not killed");
    }
    assert_ne!(container_status(&st, "c")["lastState"], serde_json::Value::Null);
}
