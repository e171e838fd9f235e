//! The node API on :10250, reached the way users reach it: `kubectl logs`,
//! `exec`, `attach` and `port-forward` go through the test apiserver (which
//! calls the node as a real apiserver does) with kube-rs; the
//! authentication and authorization matrix is checked straight against the
//! port.

mod support;

use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, LogParams, PostParams};
use support::apiserver::kubelet_proxy::call_node;
use support::cluster::Cluster;
use support::{eventually, is_running, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const S: Duration = Duration::from_secs(1);

fn pod(name: &str, node: &str, container: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                 "containers": [container]}
    }))
    .unwrap()
}

async fn running(c: &Cluster, name: &str) -> String {
    eventually(30 * S, &format!("{name} running"), || async { c.node.containers_named(name).await.into_iter().find(is_running).map(|s| s.id) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_through_the_apiserver_with_kubectls_options() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    // Each run prints its own first line, five lines, one on stderr, a
    // long line written in pieces, then fails: the next run is a restart.
    // (stdout and stderr are separate pipes: only time orders them.)
    let script = "echo run-$(cat /proc/sys/kernel/random/uuid); for i in 1 2 3 4 5; do echo line $i; done; sleep 0.3; echo oops >&2; \
                  sleep 0.3; printf 'long-'; sleep 0.1; printf 'line\\n'; sleep 2; exit 1";
    pods.create(&PostParams::default(), &pod("talker", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1", "command": ["sh", "-c", script]})))
        .await
        .unwrap();
    eventually(60 * S, "a restart", || async {
        let p = pods.get("talker").await.ok()?;
        (p.status?.container_statuses?.first()?.restart_count >= 1).then_some(())
    })
    .await;
    let current = eventually(10 * S, "the current run's log", || async {
        let l = pods.logs("talker", &LogParams::default()).await.ok()?;
        l.contains("long-line").then_some(l)
    })
    .await;
    let lines: Vec<&str> = current.lines().collect();
    assert!(lines[0].starts_with("run-"), "{current}");
    assert_eq!(&lines[1..8], ["line 1", "line 2", "line 3", "line 4", "line 5", "oops", "long-line"], "both streams, partial lines joined");
    let previous = pods.logs("talker", &LogParams { previous: true, ..Default::default() }).await.unwrap();
    assert!(previous.starts_with("run-") && previous.contains("long-line"), "{previous}");
    assert_ne!(previous.lines().next(), current.lines().next(), "previous is the run before");
    let tail = pods.logs("talker", &LogParams { tail_lines: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(tail, "oops\nlong-line\n");
    let stamped = pods.logs("talker", &LogParams { timestamps: true, tail_lines: Some(1), ..Default::default() }).await.unwrap();
    let (ts, text) = stamped.trim_end().split_once(' ').unwrap();
    assert_eq!(text, "long-line");
    assert!(ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "an RFC 3339 time: {ts}");
    let limited = pods.logs("talker", &LogParams { limit_bytes: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(limited.len(), 10);
    let none = pods.logs("talker", &LogParams { since_seconds: Some(1), ..Default::default() }).await;
    assert!(none.is_ok(), "{none:?}");

    // follow: lines arrive as they are written.
    pods.create(&PostParams::default(), &pod("ticker", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]})))
        .await
        .unwrap();
    running(&c, "ticker").await;
    let stream = pods.log_stream("ticker", &LogParams { follow: true, ..Default::default() }).await.unwrap();
    let mut lines = stream.lines();
    let mut seen = Vec::new();
    let read = tokio::time::timeout(10 * S, async {
        while seen.len() < 10 {
            seen.push(lines.try_next().await.unwrap().unwrap());
        }
    })
    .await;
    assert!(read.is_ok(), "followed lines: {seen:?}");
    let numbers: Vec<u32> = seen.iter().map(|l| l.strip_prefix("tick ").unwrap().parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost or doubled: {numbers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_attach_and_port_forward_through_the_apiserver() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod("web", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "stdin": true,
        "command": ["sh", "-c", "mkdir -p /www; echo hello-from-the-pod > /www/index.html; httpd -p 8080 -h /www; while read l; do echo got:$l; done"]})))
        .await
        .unwrap();
    running(&c, "web").await;

    // A path that names a UID reaches that pod only.
    let uid = pods.get("web").await.unwrap().metadata.uid.unwrap();
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    for path in ["/portForward/default/web/not-its-uid", "/exec/default/web/not-its-uid/c?command=true", "/attach/default/web/not-its-uid/c"] {
        let (code, body) = call_node(&c.node.netns, 10250, path, Some(&apiserver), None).await.unwrap();
        assert_eq!((code, body.as_str()), (404, "pod not found"), "{path}");
    }
    let (code, body) = call_node(&c.node.netns, 10250, &format!("/portForward/default/web/{uid}"), Some(&apiserver), None).await.unwrap();
    assert_eq!((code, body.as_str()), (400, "Upgrade request required"), "its own UID passes the check");

    // exec: output, stderr and the exit code come back.
    let mut p = pods
        .exec("web", vec!["sh", "-c", "echo out; echo err >&2; exit 3"], &AttachParams::default().stderr(true))
        .await
        .expect("exec through the apiserver");
    let mut out = String::new();
    p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    let mut err = String::new();
    p.stderr().unwrap().read_to_string(&mut err).await.unwrap();
    let status = p.take_status().unwrap().await.unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"), "{status:?}");
    let code = status.details.unwrap().causes.unwrap().into_iter().find(|c| c.reason.as_deref() == Some("ExitCode")).unwrap().message;
    assert_eq!(code.as_deref(), Some("3"));

    // exec with stdin.
    // (containerd 1.6 speaks WebSocket v4, which cannot half-close stdin:
    // the command reads one line rather than waiting for the end of input.)
    let mut p = pods.exec("web", vec!["sh", "-c", "read l; echo got:$l"], &AttachParams::default().stdin(true).stderr(false)).await.unwrap();
    let mut stdin = p.stdin().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    let mut out = String::new();
    p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "got:ping\n");
    drop(stdin);

    // exec with a tty: the shell sees a terminal.
    let mut p = pods.exec("web", vec!["sh", "-c", "test -t 0 && echo tty"], &AttachParams::interactive_tty()).await.unwrap();
    let mut out = String::new();
    p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(out.contains("tty"), "{out:?}");

    // A resized terminal reaches the process.
    let mut p = pods.exec("web", vec!["sh", "-c", "sleep 1; stty size"], &AttachParams::interactive_tty()).await.unwrap();
    let mut resize = p.terminal_size().unwrap();
    futures::SinkExt::send(&mut resize, kube::api::TerminalSize { width: 123, height: 45 }).await.unwrap();
    let mut out = String::new();
    p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(out.contains("45 123"), "{out:?}");

    // A client that goes away takes its interactive session with it.
    let web = running(&c, "web").await;
    let lingering = || async { String::from_utf8_lossy(&c.node.exec(&web, &["sh", "-c", "ps -o args | grep -c '^sleep 4321'"]).await.stdout).trim().to_string() };
    let mut p = pods.exec("web", vec!["sleep", "4321"], &AttachParams::interactive_tty()).await.unwrap();
    let mut out = p.stdout().unwrap();
    let reader = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink).await;
    });
    eventually(10 * S, "the session's process running", || async { (lingering().await == "1").then_some(()) }).await;
    tokio::time::sleep(S).await;
    assert!(!reader.is_finished(), "the session is still open");
    drop(p.stdin());
    p.abort();
    drop(p);
    eventually(20 * S, "the session's process gone", || async { (lingering().await == "0").then_some(()) }).await;

    // Two sessions begun together on one container: the first one's client
    // goes, and only its process goes; the second's stays.
    let count = |what: &'static str| {
        let (c, web) = (&c, web.clone());
        async move { String::from_utf8_lossy(&c.node.exec(&web, &["sh", "-c", &format!("ps -o args | grep -c '^sleep {what}'")]).await.stdout).trim().to_string() }
    };
    let tty = AttachParams::interactive_tty();
    let tty2 = AttachParams::interactive_tty();
    let (a, b) = tokio::join!(pods.exec("web", vec!["sleep", "5001"], &tty), pods.exec("web", vec!["sleep", "5002"], &tty2));
    let (mut a, b) = (a.unwrap(), b.unwrap());
    eventually(10 * S, "both sessions' processes running", || async { (count("5001").await == "1" && count("5002").await == "1").then_some(()) }).await;
    drop(a.stdin());
    a.abort();
    drop(a);
    eventually(20 * S, "the first session's process gone", || async { (count("5001").await == "0").then_some(()) }).await;
    tokio::time::sleep(3 * S).await;
    assert_eq!(count("5002").await, "1", "the second session's process survives the first one's reaper");
    drop(b);
    eventually(20 * S, "the second session's process gone with its client", || async { (count("5002").await == "0").then_some(()) }).await;

    // attach to the running container's stdin and stdout.
    let mut p = pods.attach("web", &AttachParams::default().stdin(true).stderr(false)).await.unwrap();
    p.stdin().unwrap().write_all(b"x\n").await.unwrap();
    let mut reader = tokio::io::BufReader::new(p.stdout().unwrap());
    let mut line = String::new();
    tokio::time::timeout(10 * S, tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)).await.unwrap().unwrap();
    assert_eq!(line, "got:x\n");
    p.abort();

    // SPDY/3.1, as kubectl up to 1.29 speaks it: the upgrade, an error and
    // a stdout stream, the command's output and its status back.
    use support::spdy;
    let uid = pods.get("web").await.unwrap().metadata.uid.unwrap();
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    let mut conn = support::apiserver::kubelet_proxy::node_tls(&c.node.netns, 10250, Some(&apiserver)).await.unwrap();
    let path = format!("/exec/default/web/{uid}/c?command=sh&command=-c&command=echo%20spdy-hello%3B%20exit%205&output=1");
    let head = spdy::upgrade(&mut conn, &path, "v4.channel.k8s.io").await.unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
    let mut session = spdy::Session::default();
    let error = session.open(&mut conn, "error").await.unwrap();
    let stdout = session.open(&mut conn, "stdout").await.unwrap();
    let got = tokio::time::timeout(20 * S, spdy::read_until_fin(&mut conn, error)).await.expect("the exec ends").unwrap();
    assert_eq!(String::from_utf8_lossy(got.get(&stdout).map_or(&[][..], Vec::as_slice)), "spdy-hello\n");
    let status = String::from_utf8_lossy(got.get(&error).map_or(&[][..], Vec::as_slice)).into_owned();
    assert!(status.contains("NonZeroExitCode") && status.contains("\"message\":\"5\""), "{status}");
    drop(conn);

    // port-forward to httpd in the pod: real bytes.
    let mut pf = pods.portforward("web", &[8080]).await.unwrap();
    let mut conn = pf.take_stream(8080).unwrap();
    conn.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(10 * S, conn.read_to_end(&mut resp)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.") && resp.contains("hello-from-the-pod"), "{resp}");
    drop(conn);
    pf.abort();
}

/// The status of ephemeral container `name` of pod `pod`, once it has one
/// in state `state` ("running", "terminated").
async fn ephemeral_state(pods: &kube::Api<Pod>, pod: &str, name: &str, state: &str) -> k8s_openapi::api::core::v1::ContainerStatus {
    eventually(60 * S, &format!("ephemeral container {name} {state}"), || async {
        let p = pods.get(pod).await.ok()?;
        let s = p.status?.ephemeral_container_statuses?.into_iter().find(|s| s.name == name)?;
        let st = serde_json::to_value(s.state.as_ref()?).ok()?;
        st.get(state).is_some().then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_debug_adds_an_ephemeral_container_that_shares_the_targets_processes() {
    use kube::api::{Patch, PatchParams};
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    pods.create(&PostParams::default(), &pod("debuggee", &node, serde_json::json!({"name": "app", "image": "nodelet.local/busybox:1",
        "command": ["sleep", "3600"]})))
        .await
        .unwrap();
    running(&c, "debuggee").await;

    // As `kubectl debug -it debuggee --image=busybox --target=app`: a
    // strategic merge patch of the ephemeralcontainers subresource, then an
    // attach to the new container's stdin and stdout.
    let debugger = serde_json::json!({"name": "debugger", "image": "nodelet.local/busybox:1", "command": ["sh"],
        "stdin": true, "targetContainerName": "app"});
    pods.patch_ephemeral_containers("debuggee", &PatchParams::default(), &Patch::Strategic(serde_json::json!({"spec": {"ephemeralContainers": [debugger]}})))
        .await
        .expect("the ephemeralcontainers subresource");
    let st = ephemeral_state(&pods, "debuggee", "debugger", "running").await;
    assert!(!st.ready);
    let mut p = pods.attach("debuggee", &AttachParams::default().container("debugger").stdin(true).stderr(false)).await.unwrap();
    // containerd wires an attach's stdin before its stdout: output written in
    // between is not seen (as with `kubectl attach`), so the shell waits a moment.
    p.stdin().unwrap().write_all(b"sleep 1; ps -o pid,args; exit 3\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(20 * S, p.stdout().unwrap().read_to_string(&mut out)).await.expect("the shell's output, then its end").unwrap();
    assert!(out.lines().any(|l| l.trim_end().ends_with("sleep 3600")), "the target's process is visible: {out}");

    // It ends, is reported with its exit code, and is never restarted.
    let st = ephemeral_state(&pods, "debuggee", "debugger", "terminated").await;
    assert_eq!(st.state.unwrap().terminated.unwrap().exit_code, 3);
    tokio::time::sleep(3 * S).await;
    let p = pods.get("debuggee").await.unwrap();
    let st = p.status.as_ref().unwrap().ephemeral_container_statuses.as_ref().unwrap()[0].clone();
    assert_eq!(st.restart_count, 0);
    assert!(st.state.unwrap().terminated.is_some());
    let instances = c.node.containers_named("debuggee").await.into_iter().filter(|s| s.metadata.as_ref().is_some_and(|m| m.name == "debugger")).count();
    assert_eq!(instances, 1, "one instance, never restarted");
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"), "the pod is not disturbed");

    // Without a target it has a process namespace of its own.
    let loner = serde_json::json!({"name": "loner", "image": "nodelet.local/busybox:1", "command": ["ps", "-o", "pid,args"]});
    pods.patch_ephemeral_containers("debuggee", &PatchParams::default(), &Patch::Strategic(serde_json::json!({"spec": {"ephemeralContainers": [loner]}})))
        .await
        .unwrap();
    ephemeral_state(&pods, "debuggee", "loner", "terminated").await;
    let log = pods.logs("debuggee", &LogParams { container: Some("loner".into()), ..Default::default() }).await.unwrap();
    assert!(log.contains("ps -o pid,args") && !log.contains("sleep 3600"), "{log}");

    // The apiserver's rules hold: names are unique, existing ones are
    // immutable, and the main resource cannot add one.
    let dup = serde_json::json!({"spec": {"ephemeralContainers": [{"name": "app", "image": "nodelet.local/busybox:1"}]}});
    let err = pods.patch_ephemeral_containers("debuggee", &PatchParams::default(), &Patch::Strategic(dup)).await.unwrap_err();
    assert!(err.to_string().contains("Duplicate value"), "{err}");
    let sneak = serde_json::json!({"spec": {"ephemeralContainers": [{"name": "sneak", "image": "nodelet.local/busybox:1"}]}});
    let err = pods.patch("debuggee", &PatchParams::default(), &Patch::Strategic(sneak)).await.unwrap_err();
    assert!(err.to_string().contains("may not change fields"), "{err}");
}

/// `featureGates: {KubeletFineGrainedAuthz: false}`: /pods is checked as
/// nodes/proxy only, as before 1.32; a locked gate set away from its
/// default, or a gate kubelet does not know, stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fine_grained_authz_gate_off_checks_nodes_proxy_only() {
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("featureGates: {KubeletFineGrainedAuthz: false}\n");
    let _agent = c.join().await;
    let ns = &c.node.netns;
    eventually(20 * S, "the node API listening", || async { call_node(ns, 10250, "/healthz", None, None).await.ok() }).await;
    let nobody = c.api.client_cert("nobody", &[]);
    let (code, body) = call_node(ns, 10250, "/pods", Some(&nobody), None).await.unwrap();
    assert_eq!((code, body.as_str()), (403, "Forbidden (user=nobody, verb=get, resource=nodes, subresource(s)=[proxy])"));
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    let (code, body) = call_node(ns, 10250, "/pods", Some(&apiserver), None).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let config = c.node.write_config("featureGates: {SidecarContainers: false}\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet")).args(["--dry-run", "--config", config.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("featureGates.SidecarContainers: cannot set feature gate SidecarContainers to false, feature is locked to true"), "{err}");
    let config = c.node.write_config("featureGates: {NoSuchGate: true}\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet")).args(["--dry-run", "--config", config.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("featureGates.NoSuchGate: unrecognized feature gate: NoSuchGate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_lets_in_only_who_it_should() {
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("readOnlyPort: 10255\n");
    let _agent = c.join().await;
    let ns = &c.node.netns;
    eventually(20 * S, "the node API listening", || async { call_node(ns, 10250, "/healthz", None, None).await.ok() }).await;

    // No credentials: 401.
    let (code, _) = call_node(ns, 10250, "/pods", None, None).await.unwrap();
    assert_eq!(code, 401);
    // A certificate from another CA: the handshake refuses it.
    let other = support::apiserver::pki::Ca::new().client("intruder", &["system:masters"]);
    let refused = call_node(ns, 10250, "/pods", Some(&other), None).await;
    assert!(matches!(&refused, Err(e) if e.starts_with("TLS")) || matches!(&refused, Ok((401, _))), "{refused:?}");
    // A bad token: 401.
    let (code, _) = call_node(ns, 10250, "/pods", None, Some("not-a-token")).await.unwrap();
    assert_eq!(code, 401);

    // Valid identities that the SubjectAccessReview denies: 403.
    let nobody = c.api.client_cert("nobody", &[]);
    let (code, body) = call_node(ns, 10250, "/pods", Some(&nobody), None).await.unwrap();
    assert_eq!(code, 403, "{body}");
    assert_eq!(body, "Forbidden (user=nobody, verb=get, resource=nodes, subresource(s)=[pods proxy])");
    c.api.add_token("t0ken-of-a-reader", "metrics-reader", &[]);
    let (code, _) = call_node(ns, 10250, "/stats/summary", None, Some("t0ken-of-a-reader")).await.unwrap();
    assert_eq!(code, 403);

    // Allowed: the apiserver's own kubelet client, and a token bound to the role.
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    let (code, body) = call_node(ns, 10250, "/pods", Some(&apiserver), None).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"kind\":\"PodList\""));
    c.api.bind_user("reader-can-read", "system:kubelet-api-admin", "metrics-reader");
    // (A denial is cached for cacheUnauthorizedTTL, 30 s: a new path is a new question.)
    let (code, _) = call_node(ns, 10250, "/metrics", None, Some("t0ken-of-a-reader")).await.unwrap();
    assert_ne!(code, 403, "authorized once bound");
    assert_ne!(code, 401);

    // /spec and /configz, for an allowed caller.
    let (_, spec) = call_node(ns, 10250, "/spec", Some(&apiserver), None).await.unwrap();
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert!(spec["num_cores"].as_i64().unwrap() >= 1 && spec["memory_capacity"].as_i64().unwrap() > 0, "{spec}");
    let (_, configz) = call_node(ns, 10250, "/configz", Some(&apiserver), None).await.unwrap();
    let configz: serde_json::Value = serde_json::from_str(&configz).unwrap();
    assert_eq!(configz["kubeletconfig"]["readOnlyPort"], 10255);
    assert_eq!(configz["kubeletconfig"]["authorization"]["mode"], "Webhook");

    // The read-only port: plain HTTP, no credentials, reading paths only.
    let (status, body) = c.node.get_port(10255, "/pods").unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("\"kind\":\"PodList\""));
    let (status, _) = c.node.get_port(10255, "/configz").unwrap();
    assert!(status.contains(" 404 "), "no configuration on the read-only port: {status}");
    // kubelet's read-only server installs no debugging handler.
    for path in ["/exec/default/x/c?command=sh", "/runningpods", "/logs/", "/debug/pprof/", "/containerLogs/default/x/c"] {
        let (status, _) = c.node.get_port(10255, path).unwrap();
        assert!(status.contains(" 404 "), "{path} on the read-only port: {status}");
    }
    for path in ["/healthz/ping", "/healthz/syncloop", "/metrics/probes", "/spec"] {
        let (status, _) = c.node.get_port(10255, path).unwrap();
        assert!(status.contains(" 200 "), "{path} on the read-only port: {status}");
    }

    // The health port serves health only: anyone on the node may call it,
    // and pods' metadata (annotations may hold last-applied configuration)
    // is for root, over the status socket.
    let (status, body) = c.node.get_port(10248, "/healthz").unwrap();
    assert!(status.contains(" 200 ") && body == "ok", "{status} {body}");
    for path in ["/pods", "/pulls", "/explain/-/x"] {
        let (status, _) = c.node.get_port(10248, path).unwrap();
        assert!(status.contains(" 404 "), "{path} on the health port: {status}");
    }
    assert!(c.node.get("/pods").unwrap().contains("\"kind\":\"PodList\""), "the status socket serves /pods");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(c.node.status_socket().parent().unwrap()).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o700, "the status socket's directory is root's alone");

    // The node's own logs (`kubectl get --raw /api/v1/nodes/<node>/proxy/logs/…`):
    // /var/log listed and served, as nodes/log, and nothing outside it.
    let mut log = tempfile::Builder::new().prefix("nodelet-test-").suffix(".log").tempfile_in("/var/log").unwrap();
    std::io::Write::write_all(&mut log, b"a line in the node's log\n").unwrap();
    let name = log.path().file_name().unwrap().to_str().unwrap().to_string();
    let listing = c.node_proxy("/logs/").await;
    assert!(listing.contains(&format!("<a href=\"{name}\">")), "{listing}");
    assert_eq!(c.node_proxy(&format!("/logs/{name}")).await, "a line in the node's log\n");
    let (code, _) = call_node(ns, 10250, "/logs/../etc/passwd", Some(&apiserver), None).await.unwrap();
    assert_eq!(code, 400, "no way out of /var/log");
    let (code, body) = call_node(ns, 10250, &format!("/logs/{name}"), Some(&nobody), None).await.unwrap();
    assert_eq!((code, body.as_str()), (403, "Forbidden (user=nobody, verb=get, resource=nodes, subresource(s)=[log])"));

    // The right subresource was asked for each path.
    let reviews = c.api.access_reviews();
    for want in ["nobody get nodes/proxy", "metrics-reader get nodes/stats", "metrics-reader get nodes/metrics", "kube-apiserver-kubelet-client get nodes/proxy", "kube-apiserver-kubelet-client get nodes/log"] {
        assert!(reviews.iter().any(|r| r == want), "{want} not among {reviews:?}");
    }
}

/// The working set the container's own cgroup reports (usage less inactive
/// file pages), read inside the container: cgroup v2 or v1.
async fn cgroup_working_set(c: &Cluster, id: &str) -> u64 {
    let script = "if [ -f /sys/fs/cgroup/memory.current ]; then echo $(cat /sys/fs/cgroup/memory.current) $(awk '/^inactive_file /{print $2}' /sys/fs/cgroup/memory.stat); \
                  else echo $(cat /sys/fs/cgroup/memory/memory.usage_in_bytes) $(awk '/^total_inactive_file /{print $2}' /sys/fs/cgroup/memory/memory.stat); fi";
    let r = c.node.exec(id, &["sh", "-c", script]).await;
    let text = String::from_utf8_lossy(&r.stdout).to_string();
    let v: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    assert_eq!(v.len(), 2, "cgroup figures: {text:?} {}", String::from_utf8_lossy(&r.stderr));
    v[0].saturating_sub(v[1])
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_resource_metrics_match_the_cgroups_and_grow_with_work() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    // About 40 MB held in a shell variable (the loop keeps the shell from
    // exec-ing its last command, which would free it).
    pods.create(&PostParams::default(), &pod("hog", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sh", "-c", "x=$(yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c 40000000); touch /tmp/ready; while true; do sleep 1; done"]})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("busy", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sh", "-c", "while true; do :; done"]})))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("probed", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sleep", "3600"], "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
        "resources": {"limits": {"memory": "64Mi", "cpu": "200m"}}})))
        .await
        .unwrap();
    // 5 MiB in an emptyDir, and a few packets out of the pod.
    let mut disk = pod("disk", &node, serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sh", "-c", "dd if=/dev/zero of=/data/f bs=1M count=5; sync; touch /data/ready; sleep 3600"],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}));
    disk.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(serde_json::json!({"name": "data", "emptyDir": {}})).unwrap()]);
    pods.create(&PostParams::default(), &disk).await.unwrap();
    let hog = running(&c, "hog").await;
    running(&c, "busy").await;
    let disk = running(&c, "disk").await;
    eventually(30 * S, "the hog's memory filled", || async { (c.node.exec(&hog, &["test", "-f", "/tmp/ready"]).await.exit_code == 0).then_some(()) }).await;
    eventually(30 * S, "the disk pod's file written", || async { (c.node.exec(&disk, &["test", "-f", "/data/ready"]).await.exit_code == 0).then_some(()) }).await;
    c.node.exec(&disk, &["ping", "-c", "3", "-W", "1", support::cluster::NODE_IP]).await;

    let summary: serde_json::Value = serde_json::from_str(&c.node_proxy("/stats/summary").await).unwrap();
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    assert!(summary["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    assert!(summary["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
    let pod_stats = |name: &str| summary["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == name).cloned().unwrap();
    let reported = pod_stats("hog")["containers"][0]["memory"]["workingSetBytes"].as_u64().unwrap();
    let actual = cgroup_working_set(&c, &hog).await;
    assert!(reported > 35_000_000, "the hog's working set: {reported} (its cgroup: {actual})");
    let off = (reported as f64 - actual as f64).abs() / actual as f64;
    assert!(off < 0.10, "stats say {reported}, the cgroup {actual}");
    assert_eq!(pod_stats("hog")["memory"]["workingSetBytes"].as_u64().unwrap(), reported, "a one-container pod is its container");
    // The pod's own network (from its sandbox), volumes and ephemeral storage.
    let d = pod_stats("disk");
    let net = &d["network"];
    assert!(net["txBytes"].as_u64().unwrap() > 0 && net["rxBytes"].as_u64().unwrap() > 0, "the pod's traffic: {net}");
    assert_eq!(net["name"], "eth0");
    let data = d["volume"].as_array().unwrap().iter().find(|v| v["name"] == "data").cloned().unwrap_or_else(|| panic!("{d}"));
    assert!(data["usedBytes"].as_u64().unwrap() >= 5 << 20, "{data}");
    assert!(data["capacityBytes"].as_u64().unwrap() >= data["availableBytes"].as_u64().unwrap());
    assert!(d["ephemeral-storage"]["usedBytes"].as_u64().unwrap() >= 5 << 20, "the emptyDir is ephemeral storage: {d}");
    assert!(d["process_stats"]["process_count"].as_u64().unwrap() >= 1, "{d}");

    let first = c.node_proxy("/metrics/resource").await;
    let series = |name: &str, pod: &str| format!("{name}{{container=\"c\",namespace=\"default\",pod=\"{pod}\"}}");
    let ws = sample(&first, &series("container_memory_working_set_bytes", "hog")).unwrap();
    assert!((ws - actual as f64).abs() / (actual as f64) < 0.10, "metrics say {ws}, the cgroup {actual}");
    let cpu0 = sample(&first, &series("container_cpu_usage_seconds_total", "busy")).unwrap();
    assert_eq!(sample(&first, "scrape_error"), Some(0.0));
    assert!(sample(&first, "node_cpu_usage_seconds_total").unwrap() > 0.0);
    assert!(sample(&first, "pod_memory_working_set_bytes{namespace=\"default\",pod=\"hog\"}").unwrap() > 35e6);
    tokio::time::sleep(2 * S).await;
    let second = c.node_proxy("/metrics/resource").await;
    let cpu1 = sample(&second, &series("container_cpu_usage_seconds_total", "busy")).unwrap();
    assert!(cpu1 - cpu0 > 0.5, "a busy loop uses CPU: {cpu0} -> {cpu1}");

    // cAdvisor's families, labels and figures, read from the cgroups.
    let cadvisor = c.node_proxy("/metrics/cadvisor").await;
    let find = |name: &str, pod: &str, container: &str| -> Option<(String, f64)> {
        cadvisor.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let ok = labels.contains(&format!("container=\"{container}\"")) && labels.contains(&format!("pod=\"{pod}\""));
            if !ok {
                return None;
            }
            Some((labels.to_string(), value.split_whitespace().next()?.parse().ok()?))
        })
    };
    let (labels, ws) = find("container_memory_working_set_bytes", "hog", "c").unwrap_or_else(|| panic!("no hog row:\n{cadvisor}"));
    assert!((ws - actual as f64).abs() / (actual as f64) < 0.10, "cadvisor says {ws}, the cgroup {actual}");
    assert!(labels.contains(&format!("name=\"{hog}\"")) && labels.contains("image=\"nodelet.local/busybox:1\"") && labels.contains("namespace=\"default\""), "{labels}");
    assert!(labels.contains("id=\"/") && labels.contains(&hog), "the cgroup path is the id: {labels}");
    assert!(find("container_cpu_usage_seconds_total", "busy", "c").is_some_and(|(l, v)| l.contains("cpu=\"total\"") && v > 0.5), "{cadvisor}");
    assert_eq!(find("container_spec_memory_limit_bytes", "probed", "c").map(|x| x.1), Some(64.0 * 1024.0 * 1024.0));
    assert_eq!(find("container_spec_cpu_quota", "probed", "c").map(|x| x.1), Some(20_000.0));
    assert_eq!(find("container_spec_memory_limit_bytes", "busy", "c").map(|x| x.1), Some(0.0), "no limit reads 0");
    assert!(find("container_processes", "hog", "c").is_some_and(|(_, n)| n >= 1.0));
    // The pod's row (container empty): its cgroup and its network.
    assert!(find("container_memory_working_set_bytes", "hog", "").is_some_and(|(_, v)| v >= ws * 0.9), "{cadvisor}");
    let (net_labels, rx) = find("container_network_receive_bytes_total", "disk", "").unwrap_or_else(|| panic!("no network row:\n{cadvisor}"));
    assert!(net_labels.contains("interface=\"eth0\"") && rx > 0.0, "{net_labels} {rx}");
    assert!(sample(&cadvisor, "machine_cpu_cores{").is_none() && cadvisor.contains("\nmachine_cpu_cores{"), "machine figures");

    // Probe runs by result, and kubelet's own families.
    let probes = c.node_proxy("/metrics/probes").await;
    let uid = pods.get("probed").await.unwrap().metadata.uid.unwrap();
    let series = format!("prober_probe_total{{container=\"c\",namespace=\"default\",pod=\"probed\",pod_uid=\"{uid}\",probe_type=\"Readiness\",result=\"successful\"}}");
    assert!(sample(&probes, &series).is_some_and(|n| n >= 2.0), "{probes}");
    let metrics = c.node_proxy("/metrics").await;
    assert_eq!(sample(&metrics, &format!("kubelet_node_name{{node=\"{node}\"}}")), Some(1.0), "{metrics}");
    assert!(sample(&metrics, "kubelet_running_pods").is_some_and(|n| n >= 3.0), "{metrics}");
    assert!(sample(&metrics, "kubelet_running_containers{container_state=\"running\"}").is_some_and(|n| n >= 3.0), "{metrics}");
    for (series, at_least) in [
        ("kubelet_runtime_operations_total{operation_type=\"create_container\"}", 3.0),
        ("kubelet_runtime_operations_duration_seconds_count{operation_type=\"run_podsandbox\"}", 3.0),
        ("kubelet_started_pods_total", 3.0),
        ("kubelet_started_containers_total{container_type=\"container\"}", 3.0),
        ("kubelet_pod_start_duration_seconds_count", 3.0),
        ("kubelet_pleg_relist_duration_seconds_count", 2.0),
    ] {
        assert!(sample(&metrics, series).is_some_and(|n| n >= at_least), "{series} >= {at_least}:\n{metrics}");
    }
    let ttl = sample(&metrics, "kubelet_certificate_manager_client_ttl_seconds").unwrap();
    assert!(ttl.is_finite() && ttl > 0.0, "the client certificate's TTL: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_certificate_from_the_cluster_serves_once_approved_and_is_renewed() {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let c = Cluster::start().await;
    // Client renewals are approved by the controller; serving CSRs never are
    // (as on a real cluster): the test approves those as an operator would.
    c.api.set_auto_approve(true);
    c.api.set_cert_lifetime(30 * S);
    let _agent = c.nodelet(&["--rotate-server-certificates", "true"]);
    eventually(30 * S, "the node Ready", || async { c.node_ready().await.then_some(()) }).await;
    let serving = || async {
        c.csrs().await.into_iter().filter(|r| r.spec.signer_name == "kubernetes.io/kubelet-serving").collect::<Vec<CertificateSigningRequest>>()
    };
    let first = eventually(20 * S, "a serving CSR", || async { serving().await.into_iter().next() }).await;
    let mut usages = first.spec.usages.clone().unwrap();
    usages.sort();
    assert_eq!(usages, ["digital signature", "key encipherment", "server auth"]);
    let request = String::from_utf8(first.spec.request.0.clone()).unwrap();
    let info = support::apiserver::pki::csr_info(&request).unwrap();
    assert_eq!(info.cn, format!("system:node:{}", c.node.node_name()));
    assert!(info.dns.contains(&c.node.node_name()) && info.ips.iter().any(|ip| ip.to_string() == "10.99.0.1"), "{info:?}");
    let ns = &c.node.netns;
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    assert!(call_node(ns, 10250, "/healthz", Some(&apiserver), None).await.is_err(), "not served before a certificate is issued");

    c.decide_csr(first.metadata.name.as_deref().unwrap(), true).await;
    let (code, _) = eventually(20 * S, "the node API served", || async { call_node(ns, 10250, "/healthz", Some(&apiserver), None).await.ok() }).await;
    assert_eq!(code, 200);
    let current = c.dir().join("pki/kubelet-server-current.pem");
    let issued = std::fs::canonicalize(&current).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&issued).unwrap().permissions().mode() & 0o777, 0o600);

    // Renewed at 70-90 % of its 30 s.
    let second = eventually(40 * S, "a second serving CSR", || async { serving().await.into_iter().find(|r| r.metadata.name != first.metadata.name) }).await;
    c.decide_csr(second.metadata.name.as_deref().unwrap(), true).await;
    eventually(20 * S, "the renewed certificate in use", || async { (std::fs::canonicalize(&current).ok()? != issued).then_some(()) }).await;
    let (code, _) = call_node(ns, 10250, "/healthz", Some(&apiserver), None).await.unwrap();
    assert_eq!(code, 200, "still served after the renewal");
    let (_, metrics) = call_node(ns, 10250, "/metrics", Some(&apiserver), None).await.unwrap();
    let ttl = sample(&metrics, "kubelet_certificate_manager_server_ttl_seconds").unwrap();
    assert!(ttl > 0.0 && ttl <= 30.0, "the serving certificate's TTL: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_and_a_followed_log_loses_and_doubles_nothing_across_rotations() {
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("containerLogMaxSize: 16Ki\ncontainerLogMaxFiles: 3\ncontainerLogMonitorInterval: 3s\nstreamingConnectionIdleTimeout: 3s\n");
    let _agent = c.join().await;
    let pods = c.pods("default");
    // About 5 KiB a second of numbered lines.
    let line = "x".repeat(80);
    pods.create(&PostParams::default(), &pod("chatty", &c.node.node_name(), serde_json::json!({"name": "c", "image": "nodelet.local/busybox:1",
        "command": ["sh", "-c", format!("i=0; while true; do i=$((i+1)); echo \"line $i {line}\"; usleep 20000; done")]})))
        .await
        .unwrap();
    let id = running(&c, "chatty").await;
    let stream = pods.log_stream("chatty", &LogParams { follow: true, ..Default::default() }).await.unwrap();
    let mut lines = stream.lines();
    let mut numbers = Vec::new();
    let read = tokio::time::timeout(40 * S, async {
        // 600 lines: about 12 s, several rotations.
        while numbers.len() < 600 {
            let l = lines.try_next().await.unwrap().unwrap();
            numbers.push(l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap());
        }
    })
    .await;
    assert!(read.is_ok(), "followed {} lines", numbers.len());
    let first = numbers[0];
    assert_eq!(numbers, (first..first + 600).collect::<Vec<_>>(), "every line once, in order, across the rotations");

    let status = nodelet::runtime::Runtime::container_status(&c.node.cri().await, &id).await.unwrap();
    let log = std::path::PathBuf::from(status.log_path);
    let dir = log.parent().unwrap();
    let live = log.file_name().unwrap().to_string_lossy().into_owned();
    // The pod writes on: wait for the full set of containerLogMaxFiles (the
    // live file and two rotated ones) with the rotation's compression done,
    // in which the older rotated file is compressed and the newer is not
    // (kubelet's rule).
    let listing = || {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir).unwrap().flatten().filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len()))).collect();
        files.sort();
        files
    };
    let deadline = std::time::Instant::now() + 30 * S;
    let files = loop {
        let files = listing();
        let rotated: Vec<&String> = files.iter().map(|(n, _)| n).filter(|n| **n != live).collect();
        let settled = rotated.len() == 2 && !rotated.iter().any(|n| n.ends_with(".tmp"));
        let gz: Vec<&&String> = rotated.iter().filter(|n| n.ends_with(".gz")).collect();
        // Rotated names carry their rotation time: the compressed one is older.
        if settled && gz.len() == 1 && rotated.iter().any(|n| !n.ends_with(".gz") && gz[0].trim_end_matches(".gz") < n.as_str()) {
            break files;
        }
        assert!(std::time::Instant::now() < deadline, "no live file with two rotated ones, the older compressed: {files:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, size) in &files {
        // 16 KiB plus what arrives in one 3 s check interval.
        assert!(*size < 48 * 1024, "{name} is {size} bytes");
    }

    // A container that can write its log directory (a hostPath) puts a
    // link where its log is: `kubectl logs` does not read through it.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "the node's secret\n").unwrap();
    std::fs::rename(&log, dir.join("aside")).unwrap();
    std::os::unix::fs::symlink(secret.path(), &log).unwrap();
    let read = pods.logs("chatty", &LogParams::default()).await;
    assert!(read.as_ref().is_err_and(|e| e.to_string().contains("symbolic link")), "{read:?}");
    assert!(!format!("{read:?}").contains("the node's secret"));

    // streamingConnectionIdleTimeout (3 s here): an exec stream with no
    // byte either way is closed, and its process ended with it.
    let started = std::time::Instant::now();
    let mut p = pods.exec("chatty", vec!["sleep", "3600"], &AttachParams::interactive_tty()).await.unwrap();
    let _stdin = p.stdin();
    let ended = tokio::time::timeout(30 * S, p.join()).await;
    assert!(ended.is_ok(), "the idle stream was not closed");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "closed before the idle timeout: {took:?}");
    let ps = || async { String::from_utf8_lossy(&c.node.exec(&id, &["sh", "-c", "ps -o args | grep -c '^sleep 3600'"]).await.stdout).trim().to_string() };
    eventually(20 * S, "the idle session's process ended", || async { (ps().await == "0").then_some(()) }).await;
}

/// The node API bounds what one client can make it hold, and honours
/// `enableDebuggingHandlers: false` as kubelet does: a client that never
/// finishes its request head is closed after the header-read timeout (10 s);
/// a 4 MiB header is refused (431) while another client is served; the
/// debugging paths answer 405 "Debug endpoints are disabled.".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_bounds_slow_and_huge_clients_and_turns_debugging_off() {
    use std::io::{Read, Write};
    let mut c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("readOnlyPort: 10255\nenableDebuggingHandlers: false\n");
    let _agent = c.join().await;
    let ns = c.node.netns.clone();
    eventually(20 * S, "the node API listening", || async { call_node(&ns, 10250, "/healthz", None, None).await.ok() }).await;

    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    for path in ["/exec/default/p/c?command=sh&output=1", "/containerLogs/default/p/c", "/runningpods/", "/run/default/p/c", "/attach/default/p/c", "/portForward/default/p", "/logs/", "/debug/pprof/"] {
        let (code, body) = call_node(&ns, 10250, path, Some(&apiserver), None).await.unwrap();
        assert_eq!((code, body.trim()), (405, "Debug endpoints are disabled."), "{path}");
    }
    let (code, _) = call_node(&ns, 10250, "/pods", Some(&apiserver), None).await.unwrap();
    assert_eq!(code, 200, "the rest is served");

    // A slow client: half a request head, then nothing.
    let slow = support::in_netns(&ns, || std::net::TcpStream::connect(("127.0.0.1", 10255)).unwrap());
    let mut slow_w = slow.try_clone().unwrap();
    slow_w.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut slow = slow;
        slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let _ = slow.read_to_end(&mut buf);
        buf
    });
    // Meanwhile a 4 MiB header is refused and a plain client is served.
    let big = support::in_netns(&ns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 10255)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let header = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(4 << 20));
        let _ = s.write_all(header.as_bytes());
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).lines().next().unwrap_or("").to_string()
    });
    assert!(big.is_empty() || big.contains(" 431 "), "a 4 MiB head is refused: {big:?}");
    let (status, body) = c.node.get_port(10255, "/healthz").unwrap();
    assert!(status.contains(" 200 ") && body == "ok", "another client is served meanwhile: {status}");
    let got = closed.await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(8) && took < Duration::from_secs(25), "closed after the header-read timeout: {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(" 200 "), "the half request was never answered: {text}");

    // The apiserver away: its errors are logged, never handed to a caller
    // (kubelet's answers: 401 for a token that cannot be reviewed, 500 with
    // the request's attributes when authorization cannot be checked).
    let someone = c.api.client_cert("someone", &[]);
    c.api.stop();
    let (code, body) = call_node(&ns, 10250, "/pods", None, Some("a-token-nobody-can-review")).await.unwrap();
    assert_eq!((code, body.trim()), (401, "Unauthorized"));
    let (code, body) = call_node(&ns, 10250, "/pods", Some(&someone), None).await.unwrap();
    assert_eq!((code, body.trim()), (500, "Authorization error (user=someone, verb=get, resource=nodes, subresource=pods)"));
}

/// `tlsMinVersion` and `tlsCipherSuites` are enforced on the node API: with
/// VersionTLS13 a TLS 1.2 client is refused and a TLS 1.3 one served; with
/// a TLS 1.2 suite list, a client offering only an unlisted suite is
/// refused and one offering a listed suite gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_and_cipher_suites_are_enforced() {
    use support::apiserver::kubelet_proxy::node_handshake;
    let c = Cluster::start().await;
    c.node.config_extra.lock().unwrap().push_str("tlsMinVersion: VersionTLS13\n");
    let mut agent = c.join().await;
    let ns = c.node.netns.clone();
    eventually(20 * S, "the node API listening", || async { call_node(&ns, 10250, "/healthz", None, None).await.ok() }).await;
    let tls12 = node_handshake(&ns, 10250, &[&rustls::version::TLS12], None).await;
    assert!(tls12.is_err(), "a TLS 1.2 client is refused under VersionTLS13: {tls12:?}");
    let (version, _) = node_handshake(&ns, 10250, &[&rustls::version::TLS13], None).await.unwrap();
    assert_eq!(version, "Some(TLSv1_3)");

    // A suite list (with a CBC suite nodelet leaves out, as CIS lists carry them).
    agent.kill9();
    *c.node.config_extra.lock().unwrap() = "tlsCipherSuites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_CBC_SHA]\n".into();
    let _agent = c.nodelet(&[]);
    eventually(20 * S, "the node API listening again", || async { call_node(&ns, 10250, "/healthz", None, None).await.ok() }).await;
    let refused = node_handshake(&ns, 10250, &[&rustls::version::TLS12], Some(&["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"])).await;
    assert!(refused.is_err(), "an unlisted TLS 1.2 suite is refused: {refused:?}");
    let (version, suite) = node_handshake(&ns, 10250, &[&rustls::version::TLS12], None).await.unwrap();
    assert_eq!(version, "Some(TLSv1_2)");
    assert!(suite.contains("AES_256_GCM_SHA384"), "a listed suite: {suite}");

    // The client CA file changes on disk: a second CA added is trusted for
    // new connections without a restart, and trusted no more once removed.
    let other = support::apiserver::pki::Ca::new();
    let admin = other.client("other-admin", &["system:masters"]);
    let accepted = || async { matches!(call_node(&ns, 10250, "/pods", Some(&admin), None).await, Ok((200, _))) };
    assert!(!accepted().await, "a certificate from an unknown CA is not a user");
    let ca_file = c.dir().join("ca.pem");
    std::fs::write(&ca_file, format!("{}{}", c.api.ca_pem(), other.cert_pem)).unwrap();
    eventually(20 * S, "the added CA trusted", || async { accepted().await.then_some(()) }).await;
    let apiserver = c.api.client_cert(support::apiserver::authz::KUBELET_CLIENT, &[]);
    assert_eq!(call_node(&ns, 10250, "/pods", Some(&apiserver), None).await.unwrap().0, 200, "the cluster CA still trusted");
    std::fs::write(&ca_file, "not a certificate").unwrap();
    tokio::time::sleep(7 * S).await;
    assert!(accepted().await, "a broken CA file leaves the last good one in place");
    std::fs::write(&ca_file, c.api.ca_pem()).unwrap();
    eventually(20 * S, "the removed CA no longer trusted", || async { (!accepted().await).then_some(()) }).await;
}
