//! The kubelet core against a real containerd: static pods run, restart,
//! back off, stop, are adopted after `kill -9`, and bad input is contained.
//! Every test has its own containerd in its own network namespace.

mod support;

use std::time::{Duration, Instant};

use support::{Node, eventually, is_exited, is_running, pod_yaml};

const S: Duration = Duration::from_secs(1);

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pod_runs_and_its_output_lands_in_its_log() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "  containers:\n  - name: app\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'echo hello from $(POD_NAME); sleep 3600']\n    \
             env:\n    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n    \
             resources: {limits: {cpu: 100m, memory: 32Mi}}\n",
        ),
    );
    let app = eventually(30 * S, "the app container running", || async {
        node.instances("web", "app").await.into_iter().find(is_running)
    })
    .await;
    let want = format!("hello from {}", node.pod_name("web"));
    let log = eventually(10 * S, "the container's output in its log", || async {
        std::fs::read_to_string(&app.log_path).ok().filter(|l| l.contains(&want))
    })
    .await;
    assert!(log.contains(" stdout F "), "CRI log format: {log}");
    let dir = std::path::Path::new(&app.log_path).parent().unwrap().parent().unwrap();
    assert_eq!(dir.parent().unwrap(), node.logs, "logs live under podLogsDir");
    let uid = &app.labels["io.kubernetes.pod.uid"];
    assert_eq!(dir.file_name().unwrap().to_str().unwrap(), format!("default_{}_{uid}", node.pod_name("web")));
    assert!(app.log_path.ends_with("/app/0.log"), "{}", app.log_path);
    let link = node.dir.path().join("containers").join(format!("{}_default_app-{}.log", node.pod_name("web"), app.id));
    // Made once StartContainer returns (as kubelet's), which may be after
    // the container's first output.
    let target = eventually(10 * S, "the /var/log/containers link", || async { std::fs::read_link(&link).ok() }).await;
    assert_eq!(target.display().to_string(), app.log_path, "the /var/log/containers link");

    let status = eventually(10 * S, "Running in /pods", || async {
        node.status("web").filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    let cs = &status["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["restartCount"], 0);
    assert!(status["status"]["podIP"].as_str().unwrap().starts_with("10.99.0."), "{status}");
    assert_eq!(status["status"]["qosClass"], "Guaranteed");
    let sandbox = &node.sandboxes("web").await[0];
    assert_eq!(sandbox.labels["io.kubernetes.pod.namespace"], "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_a_failing_one_blocks_the_app() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    let app = "  containers:\n  - {name: app, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n";
    node.write_manifest(
        "ordered.yaml",
        &pod_yaml(
            "ordered",
            &format!(
                "  initContainers:\n  - {{name: first, image: nodelet.local/busybox:1, command: [sh, -c, 'sleep 1; echo first']}}\n  \
                 - {{name: second, image: nodelet.local/busybox:1, command: [sh, -c, 'echo second']}}\n{app}"
            ),
        ),
    );
    let failing_init = "  initContainers:\n  - {name: fail, image: nodelet.local/busybox:1, command: [sh, -c, 'exit 1']}\n";
    node.write_manifest("blocked.yaml", &pod_yaml("blocked", &format!("{failing_init}{app}")));
    node.write_manifest("never.yaml", &pod_yaml("never", &format!("  restartPolicy: Never\n{failing_init}{app}")));

    let app_c = eventually(30 * S, "ordered's app running", || async {
        node.instances("ordered", "app").await.into_iter().find(is_running)
    })
    .await;
    let first = &node.instances("ordered", "first").await[0];
    let second = &node.instances("ordered", "second").await[0];
    assert_eq!((first.exit_code, second.exit_code), (0, 0));
    assert!(first.finished_at <= second.started_at, "second started before first finished");
    assert!(second.finished_at <= app_c.started_at, "app started before the init containers finished");

    // Under Always the failed init container is retried and the app never starts.
    eventually(30 * S, "the failing init container retried", || async {
        let fails = node.instances("blocked", "fail").await;
        fails.iter().any(|c| c.metadata.as_ref().unwrap().attempt >= 1 && is_exited(c)).then_some(())
    })
    .await;
    assert!(node.instances("blocked", "app").await.is_empty(), "the app must not start after a failed init");
    let st = node.status("blocked").unwrap();
    assert_eq!(st["status"]["phase"], "Pending");
    assert_eq!(st["status"]["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing");

    // Under Never the pod fails and nothing is retried.
    eventually(20 * S, "never fails", || async { node.status("never").filter(|p| p["status"]["phase"] == "Failed") }).await;
    tokio::time::sleep(3 * S).await;
    assert_eq!(node.instances("never", "fail").await.len(), 1);
    assert!(node.instances("never", "app").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_restart_policy_against_exit_0_and_exit_1() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    let cases = [("Always", 0), ("Always", 1), ("OnFailure", 0), ("OnFailure", 1), ("Never", 0), ("Never", 1)];
    for (policy, code) in cases {
        let name = format!("{}-{code}", policy.to_lowercase());
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod_yaml(
                &name,
                &format!(
                    "  restartPolicy: {policy}\n  containers:\n  - {{name: c, image: nodelet.local/busybox:1, command: [sh, -c, 'sleep 1; exit {code}']}}\n"
                ),
            ),
        );
    }
    let attempt = |name: String| {
        let node = &node;
        async move {
            node.instances(&name, "c").await.first().map_or(-1, |c| c.metadata.as_ref().unwrap().attempt as i64)
        }
    };
    // Restarting pods reach a third instance (exit, immediate restart, exit, 1 s back-off, restart).
    for name in ["always-0", "always-1", "onfailure-1"] {
        eventually(40 * S, &format!("{name} restarted twice"), || async { (attempt(name.to_string()).await >= 2).then_some(()) }).await;
    }
    for (name, phase) in [("onfailure-0", "Succeeded"), ("never-0", "Succeeded"), ("never-1", "Failed")] {
        let st = eventually(20 * S, &format!("{name} {phase}"), || async {
            node.status(name).filter(|p| p["status"]["phase"] == phase)
        })
        .await;
        assert_eq!(st["status"]["containerStatuses"][0]["restartCount"], 0, "{name}");
        assert_eq!(attempt(name.to_string()).await, 0, "{name} must not restart");
        let exit = &st["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(exit["exitCode"], if name.ends_with('1') { 1 } else { 0 }, "{name}");
        // A finished pod's sandbox is stopped.
        eventually(10 * S, &format!("{name}'s sandbox stopped"), || async {
            let s = node.sandboxes(name).await;
            (s.len() == 1 && s[0].state != 0).then_some(())
        })
        .await;
    }
    eventually(10 * S, "always-0 Running with restarts", || async {
        node.status("always-0").filter(|st| {
            st["status"]["phase"] == "Running" && st["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(2)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_back_off_grows_and_dead_containers_are_collected() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "crash.yaml",
        &pod_yaml("crash", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sh, -c, 'exit 1']}\n"),
    );
    // attempt -> (started_at, finished_at), collected as they appear; the
    // runtime keeps only the newest dead instance, so poll often.
    let mut seen: std::collections::BTreeMap<u32, (i64, i64)> = Default::default();
    let mut saw_backoff = false;
    let deadline = Instant::now() + 60 * S;
    while !(seen.get(&4).is_some_and(|s| s.0 > 0) && seen.get(&3).is_some_and(|s| s.1 > 0)) {
        assert!(Instant::now() < deadline, "never reached the fifth start: {seen:?}");
        let instances = node.instances("crash", "c").await;
        assert!(instances.len() <= 3, "dead containers pile up: {}", instances.len());
        for c in instances {
            let e = seen.entry(c.metadata.as_ref().unwrap().attempt).or_default();
            e.0 = c.started_at.max(e.0);
            e.1 = c.finished_at.max(e.1);
        }
        if let Some(st) = node.status("crash") {
            saw_backoff |= st["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap = |n: u32| secs(seen[&n].0 - seen[&(n - 1)].1);
    let gaps: Vec<f64> = (1..=4).map(gap).collect();
    eprintln!("restart gaps after each exit: {gaps:?}");
    assert!(gaps[0] < 0.9, "the first restart is immediate: {gaps:?}");
    assert!(gaps[1] >= 0.9 && gaps[2] >= 1.8 && gaps[3] >= 3.6, "back-off 1s, 2s, 4s: {gaps:?}");
    assert!(gaps[1] < gaps[2] && gaps[2] < gaps[3], "back-off grows: {gaps:?}");
    assert!(saw_backoff, "status never showed CrashLoopBackOff");
    let instances = node.instances("crash", "c").await;
    assert!(instances.len() <= 2, "only the newest dead container is kept: {}", instances.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_manifest_stops_the_pod_within_its_grace_period() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "polite.yaml",
        &pod_yaml(
            "polite",
            "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sh, -c, \"trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done\"]}\n",
        ),
    );
    node.write_manifest(
        "stubborn.yaml",
        &pod_yaml(
            "stubborn",
            "  terminationGracePeriodSeconds: 3\n  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n",
        ),
    );
    for p in ["polite", "stubborn"] {
        eventually(30 * S, &format!("{p} running"), || async { node.instances(p, "c").await.into_iter().find(is_running) }).await;
    }
    let polite_log = node.instances("polite", "c").await[0].log_path.clone();
    let log_dir = std::path::Path::new(&polite_log).parent().unwrap().parent().unwrap().to_path_buf();
    let t0 = Instant::now();
    node.remove_manifest("polite.yaml");
    node.remove_manifest("stubborn.yaml");

    eventually(10 * S, "polite removed", || async {
        (node.instances("polite", "c").await.is_empty() && node.sandboxes("polite").await.is_empty()).then_some(())
    })
    .await;
    let polite_took = t0.elapsed();
    assert!(polite_took < 5 * S, "a pod that stops on SIGTERM goes at once: {polite_took:?}");
    // The worker removes the pod's log directory and links right after its sandbox.
    let links = node.dir.path().join("containers");
    let polite_links = || std::fs::read_dir(&links).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("polite-")).count();
    eventually(2 * S, "the pod's log directory and links removed", || async { (!log_dir.exists() && polite_links() == 0).then_some(()) }).await;

    // PID 1 without a handler ignores SIGTERM: the kill comes at the grace period.
    eventually(15 * S, "stubborn removed", || async {
        (node.instances("stubborn", "c").await.is_empty() && node.sandboxes("stubborn").await.is_empty()).then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(2800), "killed before its grace period: {took:?}");
    assert!(took < 8 * S, "not killed at its 3 s grace period: {took:?}");
    // The worker drops the pod's status right after its sandbox is gone.
    eventually(2 * S, "stubborn gone from /pods", || async { node.status("stubborn").is_none().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_grace_periods_the_api_allows_stop_at_once_when_the_container_does() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    let polite = "    command: [sh, -c, \"trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done\"]\n";
    // int64's maximum (valid for the apiserver) used to panic computing the
    // deadline; 359999999880 s and more, passed into a gRPC deadline (the
    // preStop exec's and StopContainer's), panicked in tonic.
    node.write_manifest(
        "eternal.yaml",
        &pod_yaml("eternal", &format!("  terminationGracePeriodSeconds: 9223372036854775807\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n{polite}")),
    );
    node.write_manifest(
        "hooked.yaml",
        &pod_yaml(
            "hooked",
            &format!(
                "  terminationGracePeriodSeconds: 359999999880\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n{polite}    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo pre > /proc/1/fd/1']}}}}}}\n"
            ),
        ),
    );
    for p in ["eternal", "hooked"] {
        eventually(30 * S, &format!("{p} running"), || async { node.instances(p, "c").await.into_iter().find(is_running) }).await;
    }
    let t0 = Instant::now();
    node.remove_manifest("eternal.yaml");
    node.remove_manifest("hooked.yaml");
    for p in ["eternal", "hooked"] {
        eventually(15 * S, &format!("{p} stopped and removed"), || async {
            (node.instances(p, "c").await.is_empty() && node.sandboxes(p).await.is_empty()).then_some(())
        })
        .await;
    }
    assert!(t0.elapsed() < 10 * S, "a container that stops on SIGTERM goes at once: {:?}", t0.elapsed());
    // nodelet carries on with other pods.
    node.write_manifest("after.yaml", &pod_yaml("after", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n"));
    eventually(30 * S, "a new pod runs", || async { node.instances("after", "c").await.into_iter().find(is_running) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_adopts_the_pods_without_restarting_anything() {
    let node = Node::start().await;
    let mut agent = node.nodelet(&[]);
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "  initContainers:\n  - {name: init, image: nodelet.local/busybox:1, command: ['true']}\n  \
             containers:\n  - {name: a, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n  \
             - {name: b, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n",
        ),
    );
    node.write_manifest(
        "done.yaml",
        &pod_yaml("done", "  restartPolicy: Never\n  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: ['true']}\n"),
    );
    eventually(30 * S, "web running", || async {
        (node.containers("web").await.iter().filter(|c| is_running(c)).count() == 2).then_some(())
    })
    .await;
    eventually(20 * S, "done succeeded", || async { node.status("done").filter(|p| p["status"]["phase"] == "Succeeded") }).await;
    let before: Vec<String> = node.containers("web").await.into_iter().chain(node.containers("done").await).map(|c| c.id).collect();

    agent.kill9();
    tokio::time::sleep(2 * S).await;
    let agent2 = node.nodelet(&[]);
    let st = eventually(20 * S, "the new nodelet reporting web", || async {
        node.status("web").filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    tokio::time::sleep(4 * S).await;
    let after: Vec<String> = node.containers("web").await.into_iter().chain(node.containers("done").await).map(|c| c.id).collect();
    assert_eq!(before, after, "no container was created, restarted or removed");
    for c in node.containers("web").await {
        assert_eq!(c.metadata.as_ref().unwrap().attempt, 0);
    }
    for cs in st["status"]["containerStatuses"].as_array().unwrap() {
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(cs["ready"], true);
    }
    assert_eq!(node.status("done").unwrap()["status"]["phase"], "Succeeded");
    assert_eq!(node.sandboxes("web").await.len(), 1);
    assert!(!agent2.log().contains("Created container"), "the restarted agent created a container:\n{}", agent2.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_manifest_is_reported_and_changes_nothing() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    let good = pod_yaml("good", "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n");
    node.write_manifest("good.yaml", &good);
    let running = eventually(30 * S, "good running", || async { node.instances("good", "c").await.into_iter().find(is_running) }).await;

    node.write_manifest(
        "bad.yaml",
        &pod_yaml("bad", "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    ports: [{containerPort: eighty}]\n"),
    );
    let needle = "bad.yaml: spec.containers[0].ports[0].containerPort: invalid type: string \"eighty\"";
    eventually(10 * S, "the error line", || async { agent.log().contains(needle).then_some(()) }).await;
    node.write_manifest("empty-image.yaml", &pod_yaml("x", "  containers:\n  - {name: c, image: ''}\n"));
    eventually(10 * S, "the second error line", || async {
        agent.log().contains("empty-image.yaml: spec.containers[0].image: Required value").then_some(())
    })
    .await;
    // A broken edit of a running pod's manifest keeps the pod as it was.
    node.write_manifest("good.yaml", &good.replace("[sleep, '3600']", "[sleep, '3600']\n    resources: {limits: {cpu: plenty}}"));
    eventually(10 * S, "the third error line", || async {
        agent.log().contains("good.yaml: spec.containers[0].resources.limits[cpu]: Invalid value").then_some(())
    })
    .await;
    // Hostile files are refused cheaply, naming the file and the bound.
    node.write_manifest("deep.yaml", &"[".repeat(1_000_000));
    node.write_manifest("huge.yaml", &format!("# {}\n", "x".repeat(2 << 20)));
    eventually(10 * S, "the bound errors", || async {
        let log = agent.log();
        (log.contains("deep.yaml: nested deeper than 100 levels at line 1") && log.contains("huge.yaml: cannot read the manifest: larger than 1572864 bytes"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(3 * S).await;
    assert_eq!(agent.log().matches(needle).count(), 1, "one error line per problem, not one per re-read");
    let now: Vec<_> = node.instances("good", "c").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].id, running.id, "the good pod was disturbed");
    assert!(is_running(&now[0]));
    assert!(node.sandboxes("bad").await.is_empty() && node.sandboxes("x").await.is_empty());
}

/// A manifest's metadata.uid names the pod's directory under the root dir:
/// `uid: ..` once made the pod's removal delete the whole root dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pod_whose_uid_names_no_directory_is_refused_and_the_root_dir_stays() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    let root = node.dir.path().join("kubelet");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("canary"), "still here").unwrap();
    let good = pod_yaml("good", "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n");
    node.write_manifest("good.yaml", &good);
    for (file, uid) in [("dotdot.yaml", ".."), ("slash.yaml", "../../etc"), ("dot.yaml", ".")] {
        let body = pod_yaml(file.trim_end_matches(".yaml"), "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n")
            .replace("metadata:\n", &format!("metadata:\n  uid: '{uid}'\n"));
        node.write_manifest(file, &body);
        let needle = format!("{file}: metadata.uid: Invalid value: {uid:?}: must be one plain path component");
        eventually(15 * S, &format!("the error naming {file} and metadata.uid"), || async { agent.log().contains(&needle).then_some(()) }).await;
    }
    eventually(30 * S, "good running", || async { node.instances("good", "c").await.into_iter().find(is_running) }).await;
    for p in ["dotdot", "slash", "dot"] {
        assert!(node.sandboxes(p).await.is_empty(), "{p} must never run");
    }
    for f in ["good.yaml", "dotdot.yaml", "slash.yaml", "dot.yaml"] {
        node.remove_manifest(f);
    }
    eventually(15 * S, "good removed", || async { node.sandboxes("good").await.is_empty().then_some(()) }).await;
    tokio::time::sleep(2 * S).await;
    assert_eq!(std::fs::read_to_string(root.join("canary")).unwrap(), "still here", "the root dir was touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_the_calls_and_creates_nothing() {
    let node = Node::start().await;
    node.write_manifest(
        "web.yaml",
        &pod_yaml(
            "web",
            "  initContainers:\n  - {name: init, image: nodelet.local/busybox:1, command: ['true']}\n  \
             containers:\n  - {name: app, image: nodelet.local/busybox:1, command: [sleep, '3600'], ports: [{containerPort: 80, hostPort: 8080}]}\n",
        ),
    );
    let run = |endpoint: String| {
        let node = &node;
        async move {
            let mut args = node.base_args();
            let at = args.iter().position(|a| a == "--container-runtime-endpoint").unwrap();
            args[at + 1] = endpoint;
            args.extend(["--dry-run".to_string(), "--healthz-port".into(), "0".into()]);
            let mut agent = node.nodelet_with(args);
            // Without --watch, a dry run exits once it has planned every pod.
            let code = tokio::task::block_in_place(|| agent.wait_exit(30 * S));
            assert_eq!(code, Some(0), "a dry run of good manifests succeeds:\n{}", agent.log());
            agent.stdout()
        }
    };
    let out = run(node.endpoint.clone()).await;
    let lines: Vec<&str> = out.lines().collect();
    let pod = node.pod_name("web");
    let kinds: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(1).unwrap_or("")).collect();
    assert_eq!(
        kinds,
        vec!["RunPodSandbox", "CreateContainer", "StartContainer", "CreateContainer", "StartContainer"],
        "{out}"
    );
    assert!(lines[0].contains(&format!("pod=default/{pod} ")) && lines[0].contains("attempt=0"), "{}", lines[0]);
    assert!(lines[0].contains("ports=[\"8080:80/TCP\"]"), "{}", lines[0]);
    assert!(lines[1].contains("container=init"), "{}", lines[1]);
    assert!(lines[3].contains("container=app") && lines[3].contains("command=[\"sleep\",\"3600\"]"), "{}", lines[3]);

    let rt = node.cri().await;
    use nodelet::runtime::Runtime;
    assert!(rt.list_pod_sandbox(None).await.unwrap().is_empty(), "a dry run created a sandbox");
    assert!(rt.list_containers(None).await.unwrap().is_empty(), "a dry run created a container");

    let again = run(node.endpoint.clone()).await;
    assert_eq!(out, again, "dry-run output is deterministic");

    // With no containerd at all, the image is unknown and would be pulled.
    let offline = run("unix:///nonexistent/containerd.sock".into()).await;
    assert!(offline.lines().any(|l| l == "CRI PullImage image=nodelet.local/busybox:1 auth=none"), "{offline}");

    // One bad manifest: the good pod is still planned, and the run fails
    // naming the file and the field (a check for manifests in CI).
    node.write_manifest("bad.yaml", &pod_yaml("bad", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, imagePullPolicy: Sometimes}\n"));
    let mut args = node.base_args();
    args.extend(["--dry-run".to_string(), "--healthz-port".into(), "0".into()]);
    let mut agent = node.nodelet_with(args);
    let code = tokio::task::block_in_place(|| agent.wait_exit(30 * S));
    assert_eq!(code, Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("nodelet: dry run: the inputs have problems:"), "{log}");
    assert!(log.contains("bad.yaml") && log.contains("spec.containers[0].imagePullPolicy"), "{log}");
    assert!(agent.stdout().lines().any(|l| l.starts_with("CRI StartContainer") && l.contains("container=app")), "the good pod is still planned");
    assert!(!agent.stdout().contains(&node.pod_name("bad")), "{}", agent.stdout());
}

/// A dry run is pure: it writes nothing outside its own output (no pod or
/// log directories), plans the same as root and as an unprivileged user,
/// and fails naming a manifest path that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_plans_the_same_for_any_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        pod_yaml(
            "web",
            "  containers:\n  - name: app\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             volumeMounts: [{name: s, mountPath: /s, subPath: x/y}, {name: m, mountPath: /m}]\n  \
             volumes: [{name: s, emptyDir: {}}, {name: m, emptyDir: {medium: Memory}}]\n",
        ),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    let logs = dir.path().join("pod-logs");
    std::fs::write(&config, format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\npodLogsDir: {}\nclusterDNS: [10.96.0.10]\n", logs.display())).unwrap();
    for p in [&manifests, &config, &manifests.join("web.yaml")] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let root = dir.path().join("root");
    let run = |uid: Option<u32>, manifest_path: &std::path::Path| {
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg("60").arg(env!("CARGO_BIN_EXE_nodelet")).args([
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
            "--pod-manifest-path",
            manifest_path.to_str().unwrap(),
            "--root-dir",
            root.to_str().unwrap(),
            "--container-logs-dir",
            dir.path().join("containers").to_str().unwrap(),
            "--container-runtime-endpoint",
            "unix:///nonexistent/containerd.sock",
            "--hostname-override",
            "dry",
            "--healthz-port",
            "0",
        ]);
        if let Some(u) = uid {
            cmd.uid(u).gid(u);
        }
        cmd.output().unwrap()
    };
    let as_root = tokio::task::block_in_place(|| run(None, &manifests));
    assert_eq!(as_root.status.code(), Some(0), "{}", String::from_utf8_lossy(&as_root.stderr));
    let plan = String::from_utf8_lossy(&as_root.stdout).into_owned();
    assert!(plan.lines().any(|l| l.starts_with("CRI StartContainer") && l.contains("container=app")), "{plan}");
    assert!(plan.contains(&format!("{}/pods/", root.display())) && plan.contains("volume-subpaths/s/app/0:/s"), "the subPath is named: {plan}");
    let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!({ let mut m = made.clone(); m.sort(); m }, ["config.yaml", "manifests"], "a dry run wrote {made:?}");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&dir.path().display().to_string()), "a dry run mounted");

    let as_nobody = tokio::task::block_in_place(|| run(Some(65534), &manifests));
    assert_eq!(as_nobody.status.code(), Some(0), "{}", String::from_utf8_lossy(&as_nobody.stderr));
    assert_eq!(String::from_utf8_lossy(&as_nobody.stdout), plan, "the same plan for an unprivileged user");

    let missing = tokio::task::block_in_place(|| run(None, &dir.path().join("no-such-dir")));
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains(&format!("{}: the static pod path does not exist", dir.path().join("no-such-dir").display())), "{err}");
}

/// Upstream's Sysctls cases ([sig-node] Sysctls [LinuxOnly] [NodeConformance]
/// "should support sysctls", "should reject invalid sysctls", "should not
/// launch unsafe, but not explicitly enabled sysctls on the node"): a safe
/// sysctl is set in the pod; an unsafe one is refused at admission (Failed,
/// SysctlForbidden) and never reaches the runtime, until the operator's
/// allowedUnsafeSysctls allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_sysctls_are_set_and_unsafe_ones_refused_unless_allowed() {
    let node = Node::start().await;
    let mut agent = node.nodelet(&[]);
    let with_sysctl = |name: &str, sysctl: &str, value: &str| {
        pod_yaml(
            name,
            &format!(
                "  terminationGracePeriodSeconds: 2\n  securityContext:\n    sysctls: [{{name: {sysctl}, value: '{value}'}}]\n  \
                 containers:\n  - {{name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}}\n"
            ),
        )
    };
    node.write_manifest("safe.yaml", &with_sysctl("safe", "net.ipv4.ip_unprivileged_port_start", "77"));
    node.write_manifest("unsafe.yaml", &with_sysctl("unsafe", "kernel.msgmax", "4321"));
    let safe = eventually(30 * S, "the safe-sysctl pod running", || async { node.instances("safe", "c").await.into_iter().find(is_running) }).await;
    let got = node.exec(&safe.id, &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).await;
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "77");
    let refused = eventually(15 * S, "the unsafe pod Failed", || async { node.status("unsafe").filter(|p| p["status"]["phase"] == "Failed") }).await;
    assert_eq!(refused["status"]["reason"], "SysctlForbidden", "{refused}");
    assert_eq!(refused["status"]["message"], "Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted", "{refused}");
    assert!(node.sandboxes("unsafe").await.is_empty(), "a refused sysctl never reaches the runtime");

    // The operator allows kernel.msg* (a namespaced prefix): the pod runs with it.
    agent.kill9();
    let _agent = node.nodelet(&["--allowed-unsafe-sysctls", "kernel.msg*"]);
    let unsafe_pod = eventually(30 * S, "the allowed pod running", || async { node.instances("unsafe", "c").await.into_iter().find(is_running) }).await;
    let got = node.exec(&unsafe_pod.id, &["cat", "/proc/sys/kernel/msgmax"]).await;
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "4321");
    // A pattern outside every namespace stops the agent with the flag named.
    let mut bad = node.nodelet(&["--allowed-unsafe-sysctls", "vm.swappiness"]);
    let code = tokio::task::block_in_place(|| bad.wait_exit(10 * S));
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {}", bad.log());
    assert!(bad.log().contains("--allowed-unsafe-sysctls") && bad.log().contains("not known to be namespaced"), "{}", bad.log());
}

/// kubelet's AppArmor admission: a pod that asks for a confining profile
/// (the field or the legacy annotation) is refused on a host without
/// AppArmor (reason AppArmor), never run unconfined behind its back; an
/// unconfined one runs. (This machine's kernel has no AppArmor; where it has,
/// the confined pod runs and CRI gets the profile, see src/pods/apparmor.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apparmor_profile_is_enforced_or_the_pod_refused() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    let confined = "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
                    securityContext: {appArmorProfile: {type: RuntimeDefault}}\n";
    node.write_manifest("confined.yaml", &pod_yaml("confined", confined));
    node.write_manifest(
        "legacy.yaml",
        &pod_yaml("legacy", "  terminationGracePeriodSeconds: 2\n  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n")
            .replace("metadata:\n", "metadata:\n  annotations: {container.apparmor.security.beta.kubernetes.io/c: unconfined}\n"),
    );
    eventually(30 * S, "the unconfined pod running", || async { node.instances("legacy", "c").await.into_iter().find(is_running) }).await;
    if nodelet::pods::apparmor::host_enabled() {
        eventually(30 * S, "the confined pod running", || async { node.instances("confined", "c").await.into_iter().find(is_running) }).await;
        return;
    }
    let refused = eventually(15 * S, "the confined pod Failed", || async { node.status("confined").filter(|p| p["status"]["phase"] == "Failed") }).await;
    assert_eq!(refused["status"]["reason"], "AppArmor", "{refused}");
    assert_eq!(refused["status"]["message"], "Pod was rejected: Cannot enforce AppArmor: AppArmor is not enabled on the host");
    assert!(node.sandboxes("confined").await.is_empty(), "never run unconfined");
}

/// kubelet's `seccompDefault`: a container that names no seccomp profile
/// runs under the runtime's default filter (the kernel reports `Seccomp: 2`),
/// one that asks for Unconfined runs without (0); and NoSwap: a container
/// with a memory limit may not swap beyond it (cgroup v1: memory+swap =
/// memory; on v2 memory.swap.max is 0, see src/pods/swap.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_default_confines_containers_that_name_no_profile() {
    let node = Node::start().await;
    let _agent = node.nodelet(&["--seccomp-default"]);
    let spec = |sc: &str| {
        format!(
            "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             resources: {{limits: {{memory: 64Mi}}}}\n{sc}"
        )
    };
    node.write_manifest("plain.yaml", &pod_yaml("plain", &spec("")));
    node.write_manifest("open.yaml", &pod_yaml("open", &spec("    securityContext: {seccompProfile: {type: Unconfined}}\n")));
    let seccomp_mode = |id: String| {
        let node = &node;
        async move {
            let out = node.exec(&id, &["grep", "^Seccomp:", "/proc/self/status"]).await;
            String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap_or_default().to_string()
        }
    };
    let plain = eventually(30 * S, "the plain pod running", || async { node.instances("plain", "c").await.into_iter().find(is_running) }).await;
    let open = eventually(30 * S, "the unconfined pod running", || async { node.instances("open", "c").await.into_iter().find(is_running) }).await;
    assert_eq!(seccomp_mode(plain.id.clone()).await, "2", "RuntimeDefault filter under seccompDefault");
    assert_eq!(seccomp_mode(open.id.clone()).await, "0", "an explicit Unconfined stays unconfined");
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        let out = node.exec(&plain.id, &["cat", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"]).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (64u64 << 20).to_string(), "memory+swap capped at the memory limit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_a_manifest_url_run_and_follow_its_changes() {
    let node = Node::start().await;
    let body = std::sync::Arc::new(std::sync::Mutex::new(pod_yaml(
        "fromurl",
        "  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n",
    )));
    let served = body.clone();
    let port = support::in_netns(&node.netns, move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let b = served.lock().unwrap().clone();
                let auth_ok = req.to_lowercase().contains("x-node-token: secret");
                let resp = if auth_ok {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len())
                } else {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                };
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        port
    });
    let url = format!("http://127.0.0.1:{port}/pods.yaml");
    let agent = node.nodelet(&["--manifest-url", &url, "--manifest-url-header", "X-Node-Token:secret", "--http-check-frequency", "1s"]);
    let first = eventually(30 * S, "the URL's pod running", || async {
        node.instances("fromurl", "c").await.into_iter().find(is_running)
    })
    .await;
    assert_eq!(node.status("fromurl").unwrap()["metadata"]["annotations"]["kubernetes.io/config.source"], "http");
    *body.lock().unwrap() = pod_yaml("fromurl", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '7200']}\n");
    let second = eventually(30 * S, "the changed pod running", || async {
        node.instances("fromurl", "c").await.into_iter().find(|c| is_running(c) && c.id != first.id)
    })
    .await;
    assert_ne!(first.labels["io.kubernetes.pod.uid"], second.labels["io.kubernetes.pod.uid"], "a changed manifest is a new pod");
    eventually(15 * S, "the old pod gone", || async {
        node.containers("fromurl").await.iter().all(|c| c.id != first.id).then_some(())
    })
    .await;
    // A body past the bound is refused, naming the URL, and what runs stays.
    *body.lock().unwrap() = format!("# {}\n", "x".repeat(2 << 20));
    eventually(15 * S, "the size error", || async {
        agent.log().contains(&format!("{url}: the body is larger than 1572864 bytes")).then_some(())
    })
    .await;
    assert!(node.instances("fromurl", "c").await.iter().any(|c| c.id == second.id && is_running(c)), "the running pod is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_runtime_nodelet_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |endpoint: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
            .args(["--container-runtime-endpoint", endpoint, "--healthz-port", "0", "--root-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run("unix:///nonexistent/containerd.sock");
    assert_eq!(code, Some(1));
    let last = err.lines().last().unwrap();
    assert_eq!(
        last,
        "nodelet: container runtime at unix:///nonexistent/containerd.sock: cannot connect: socket \
         /nonexistent/containerd.sock does not exist"
    );

    // A socket that answers something other than gRPC.
    let sock = dir.path().join("not-cri.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for c in listener.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let (code, err) = run(&format!("unix://{}", sock.display()));
    assert_eq!(code, Some(1));
    let last = err.lines().last().unwrap();
    assert!(last.starts_with(&format!("nodelet: container runtime at unix://{}", sock.display())), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_cannot_start_does_not_hold_the_others() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "mixed.yaml",
        &pod_yaml(
            "mixed",
            "  containers:\n  - {name: never, image: nodelet.local/missing:1, imagePullPolicy: Never}\n  \
             - {name: unpullable, image: registry.invalid/missing:1}\n  \
             - {name: fine, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n",
        ),
    );
    eventually(30 * S, "the fine container running", || async { node.instances("mixed", "fine").await.into_iter().find(is_running) }).await;
    let st = eventually(30 * S, "both failures in the status", || async {
        node.status("mixed").filter(|p| {
            let reasons: Vec<String> = p["status"]["containerStatuses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["state"]["waiting"]["reason"].as_str().unwrap_or("").to_string())
                .collect();
            reasons.contains(&"ErrImageNeverPull".to_string())
                && (reasons.contains(&"ErrImagePull".to_string()) || reasons.contains(&"ImagePullBackOff".to_string()))
        })
    })
    .await;
    assert_eq!(st["status"]["phase"], "Pending", "containers still waiting keep the pod Pending");
    let never = st["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == "never").unwrap().clone();
    assert_eq!(
        never["state"]["waiting"]["message"],
        "Container image \"nodelet.local/missing:1\" is not present with pull policy of Never"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_manifest_replaces_the_pod_only_after_the_old_one_stopped() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    let spec = |arg: &str| {
        pod_yaml(
            "edited",
            &format!("  terminationGracePeriodSeconds: 3\n  containers:\n  - {{name: c, image: nodelet.local/busybox:1, command: [sleep, '{arg}']}}\n"),
        )
    };
    node.write_manifest("edited.yaml", &spec("3600"));
    let old = eventually(30 * S, "the first version running", || async { node.instances("edited", "c").await.into_iter().find(is_running) }).await;
    node.write_manifest("edited.yaml", &spec("7200"));
    let new = eventually(30 * S, "the second version running", || async {
        node.instances("edited", "c").await.into_iter().find(|c| is_running(c) && c.id != old.id)
    })
    .await;
    // The old container is gone by now; its sandbox's removal shows when it ended.
    assert!(node.containers("edited").await.iter().all(|c| c.id != old.id), "the old pod was not removed");
    let took = secs(new.started_at - old.started_at);
    assert!(took >= 2.8, "the new version started {took:.1}s after the old one, before its 3 s grace period ran out");
    assert_ne!(new.labels["io.kubernetes.pod.uid"], old.labels["io.kubernetes.pod.uid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadlines_end_pods_and_termination_messages_come_from_the_file_or_the_log() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    node.write_manifest(
        "deadline.yaml",
        &pod_yaml(
            "deadline",
            "  activeDeadlineSeconds: 3\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n",
        ),
    );
    node.write_manifest(
        "msg.yaml",
        &pod_yaml(
            "msg",
            "  restartPolicy: Never\n  containers:\n  - name: file\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'printf \"all done\" > /dev/termination-log']\n  - name: logs\n    \
             image: nodelet.local/busybox:1\n    terminationMessagePolicy: FallbackToLogsOnError\n    \
             command: [sh, -c, 'echo starting >&2; echo \"fatal: disk full\" >&2; exit 3']\n  - name: quiet\n    \
             image: nodelet.local/busybox:1\n    terminationMessagePolicy: FallbackToLogsOnError\n    \
             command: [sh, -c, 'echo fine; exit 0']\n",
        ),
    );

    // The deadline: the pod is stopped (SIGTERM, honoured at once) and
    // Failed with kubelet's reason, and restartPolicy Always restarts nothing.
    let running = eventually(30 * S, "the deadline pod running", || async {
        node.instances("deadline", "c").await.into_iter().find(is_running)
    })
    .await;
    let st = eventually(20 * S, "Failed with DeadlineExceeded", || async {
        node.status("deadline").filter(|p| p["status"]["phase"] == "Failed")
    })
    .await;
    assert_eq!(st["status"]["reason"], "DeadlineExceeded", "{st}");
    assert_eq!(st["status"]["message"], "Pod was active on the node longer than the specified deadline");
    let started = chrono_secs(st["status"]["startTime"].as_str().unwrap());
    let gone = eventually(10 * S, "the container stopped", || async {
        node.instances("deadline", "c").await.into_iter().find(|c| c.id == running.id && is_exited(c))
    })
    .await;
    let ran = secs(gone.finished_at) - started;
    assert!((2.5..10.0).contains(&ran), "stopped {ran:.1}s after the start, deadline 3s");
    tokio::time::sleep(3 * S).await;
    assert_eq!(node.instances("deadline", "c").await.len(), 1, "never restarted");
    assert!(agent.log().contains("Pod was active on the node longer than the specified deadline"));

    // Termination messages: the file the container wrote; the log's end
    // after a failure under FallbackToLogsOnError; nothing after success.
    let st = eventually(30 * S, "msg Failed", || async {
        node.status("msg").filter(|p| p["status"]["phase"] == "Failed")
    })
    .await;
    let message = |name: &str| {
        st["status"]["containerStatuses"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["state"]["terminated"]
            ["message"]
            .clone()
    };
    assert_eq!(message("file"), "all done", "{st}");
    assert_eq!(message("logs"), "starting\nfatal: disk full\n", "{st}");
    assert!(message("quiet").is_null(), "{st}");
    let file = node.instances("msg", "file").await.remove(0);
    assert!(file.mounts.iter().any(|m| m.container_path == "/dev/termination-log" && m.host_path.contains("/containers/file/")), "{:?}", file.mounts);
}

/// Seconds since the epoch of an RFC 3339 time.
fn chrono_secs(t: &str) -> f64 {
    t.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second() as f64
}

/// What nodelet tells its service manager on a NOTIFY_SOCKET, read as it
/// comes (as systemd does), with the time each line arrived.
struct Notifications(std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>);

impl Notifications {
    fn listen(path: &std::path::Path) -> Self {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = lines.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let now = Instant::now();
                out.lock().unwrap().extend(String::from_utf8_lossy(&buf[..n]).lines().map(|l| (now, l.to_string())));
            }
        });
        Notifications(lines)
    }

    fn since(&self, t: Instant) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|(at, _)| *at >= t).map(|(_, l)| l.clone()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature (tests/run.sh builds with it)")]
async fn the_watchdog_is_pinged_while_the_sync_loop_turns_and_not_once_it_wedges() {
    let node = Node::start().await;
    let sock_path = node.dir.path().join("notify.sock");
    let notes = Notifications::listen(&sock_path);
    let wedge = node.dir.path().join("wedge");
    node.write_manifest("app.yaml", &pod_yaml("app", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n"));
    let start = Instant::now();
    let _agent = node.nodelet_env(
        node.base_args(),
        &[
            ("NOTIFY_SOCKET", sock_path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("1000000")),
            ("NODELET_TEST_WEDGE_POD_SYNC", wedge.as_os_str()),
        ],
    );
    eventually(30 * S, "the pod running", || async { node.containers("app").await.into_iter().find(is_running) }).await;

    // Healthy: READY, a STATUS line, and WATCHDOG=1 every half second.
    let t = Instant::now();
    tokio::time::sleep(4 * S).await;
    let healthy = notes.since(t);
    let pings = healthy.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!((6..=10).contains(&pings), "about 8 pings in 4 s: {healthy:?}");
    let all = notes.since(start);
    assert!(all.iter().any(|l| l == "READY=1"), "{all:?}");
    assert!(all.iter().any(|l| l == "STATUS=running 1 pod"), "{all:?}");

    // Wedged: the pings stop once the loop has been quiet for 10 s (twice
    // the interval, at least 10 s), and STATUS says which loop.
    let t = Instant::now();
    std::fs::write(&wedge, "").unwrap();
    let after = eventually(20 * S, "STATUS=stalled", || async {
        let after = notes.since(t);
        after.iter().any(|l| l == "STATUS=stalled: pod sync loop").then_some(after)
    })
    .await;
    let stalled_at = after.iter().position(|l| l == "STATUS=stalled: pod sync loop").unwrap();
    let before = after[..stalled_at].iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(before >= 16, "pings went on until the loop had been quiet for 10 s: {after:?}");
    let t = Instant::now();
    tokio::time::sleep(3 * S).await;
    let quiet = notes.since(t);
    assert!(!quiet.iter().any(|l| l == "WATCHDOG=1"), "no ping once stalled: {quiet:?}");
    assert!(after[stalled_at..].iter().all(|l| l != "WATCHDOG=1"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_image_filesystem_loses_its_unused_images_down_to_the_low_threshold() {
    use nodelet::runtime::Runtime;
    // A 96 MiB image filesystem and three images of 8 MiB of random data
    // (each takes about twice that: the compressed blob and the unpacked
    // snapshot).
    let node = Node::start_with_image_fs(Some(96)).await;
    let dir = node.dir.path().join("fillers");
    std::fs::create_dir_all(&dir).unwrap();
    let mut tars = Vec::new();
    for name in ["filler-a", "filler-b", "filler-c"] {
        let tar = dir.join(format!("{name}.tar"));
        let st = std::process::Command::new(support::repo().join("tests/images/filler.sh"))
            .arg(&tar)
            .arg(format!("nodelet.local/{name}:1"))
            .arg("8")
            .status()
            .unwrap();
        assert!(st.success());
        tars.push(tar);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["images", "import", "--address", &node.endpoint])
        .args(&tars)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fs_usage = || {
        let st = nix::sys::statvfs::statvfs(&node.dir.path().join("root")).unwrap();
        100 - st.blocks_available() * 100 / st.blocks()
    };
    let before = fs_usage();
    assert!(before >= 40, "the fillers fill the image filesystem: {before} %");

    // A pod runs from filler-a; GC starts at 40 % and frees down to 20 %.
    // Images younger than imageMinimumGCAge (first seen at start) stay,
    // which keeps filler-a until the pod uses it.
    // Below half the image filesystem free is also DiskPressure (logged
    // here: a standalone node has no Node object).
    *node.config_extra.lock().unwrap() = "imageGCHighThresholdPercent: 40\nimageGCLowThresholdPercent: 20\nimageMinimumGCAge: 5s\n\
        evictionHard: {imagefs.available: 50%}\nevictionPressureTransitionPeriod: 2s\n"
        .into();
    node.write_manifest("uses-a.yaml", &pod_yaml("uses-a", "  containers:\n  - {name: c, image: nodelet.local/filler-a:1, command: [sleep, '3600']}\n"));
    let mut args = node.base_args();
    args.extend(["--image-gc-period".to_string(), "2s".into()]);
    let agent = node.nodelet_with(args);
    eventually(30 * S, "the pod running from filler-a", || async { node.containers("uses-a").await.into_iter().find(is_running) }).await;

    let rt = node.cri().await;
    eventually(30 * S, "filler-b and filler-c removed", || async {
        let b = rt.image_status("nodelet.local/filler-b:1").await.unwrap();
        let c = rt.image_status("nodelet.local/filler-c:1").await.unwrap();
        (b.is_none() && c.is_none()).then_some(())
    })
    .await;
    assert!(rt.image_status("nodelet.local/filler-a:1").await.unwrap().is_some(), "the image in use stays");
    assert!(rt.image_status("nodelet.local/pause:1").await.unwrap().is_some(), "the sandbox image stays");
    let after = fs_usage();
    assert!(after < before, "{before} % → {after} %");
    let log = agent.log();
    assert!(log.contains("the image filesystem is past the high threshold"), "{log}");
    // filler-a (in use) alone holds more than 20 %: GC says it cannot do more.
    assert!(after <= 20 || log.contains("cannot free enough of the image filesystem"), "{after} %\n{log}");
    assert!(log.contains("node pressure changed memory=false disk=true"), "DiskPressure while above the threshold:\n{log}");
    // Either way the signal follows the filesystem: it clears below 50 %
    // used, and stays while GC could not get there.
    if after < 50 {
        eventually(30 * S, "DiskPressure gone", || async { agent.log().contains("node pressure changed memory=false disk=false").then_some(()) }).await;
    } else {
        tokio::time::sleep(5 * S).await;
        assert!(!agent.log().contains("node pressure changed memory=false disk=false"), "DiskPressure cleared at {after} % used");
    }
}

/// A misspelt KubeletConfiguration field stops the start and says which
/// field was meant; a kubelet field nodelet does not implement is a warning
/// that names it, and `--dry-run --strict` fails on it.
#[test]
fn a_misspelt_config_field_is_an_error_and_strict_fails_on_unused_ones() {
    let tmp = tempfile::tempdir().unwrap();
    // A dry run with `flag PATH`: whether it succeeded, and what it said.
    let dry_run = |flag: &str, path: &std::path::Path, strict: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"));
        cmd.args(["--dry-run", "--healthz-port", "0", "--container-runtime-endpoint", "unix:///nonexistent/containerd.sock", "--root-dir"])
            .arg(tmp.path().join("kubelet"))
            .arg(flag)
            .arg(path);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let run = |body: &str, strict: bool| {
        let config = tmp.path().join("kubelet-config.yaml");
        std::fs::write(&config, format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{body}")).unwrap();
        dry_run("--config", &config, strict)
    };
    let (ok, out) = run("evictonHard: {memory.available: 100Mi}\n", false);
    assert!(!ok && out.contains("evictonHard") && out.contains("did you mean \"evictionHard\""), "{out}");
    let (ok, out) = run("volumeStatsAggPeriod: 2m\n", false);
    assert!(ok && out.contains("volumeStatsAggPeriod") && out.contains("a KubeletConfiguration field nodelet does not implement"), "{out}");
    let (ok, out) = run("volumeStatsAggPeriod: 2m\n", true);
    assert!(!ok && out.contains("--strict: configuration fields nodelet does not use: KubeletConfiguration volumeStatsAggPeriod"), "{out}");
    // Its default (and the zero kubeadm writes) changes nothing: no warning.
    let (ok, out) = run("volumeStatsAggPeriod: 0s\ncpuManagerReconcilePeriod: 0s\n", true);
    assert!(ok, "kubelet's defaults pass --strict: {out}");
    let (ok, out) = run("maxPods: 20\n", true);
    assert!(ok, "every field used: --strict passes: {out}");

    // Static pod manifests the same way: a field one slip from a real one
    // refuses that pod, naming file, field and the one meant; an unknown
    // one is a warning; --strict fails on either.
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let pod = |extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: app\n    image: nodelet.local/busybox:1\n{extra}")
    };
    let run_manifests = |strict: bool| dry_run("--pod-manifest-path", &manifests, strict);
    std::fs::write(manifests.join("web.yaml"), pod("    imagePullPolcy: Never\n")).unwrap();
    let (_, out) = run_manifests(false);
    assert!(out.contains("web.yaml") && out.contains("spec.containers[0].imagePullPolcy: unknown field; did you mean \"imagePullPolicy\"?"), "{out}");
    assert!(!out.contains("CreateContainer"), "the misspelt pod is not started: {out}");
    std::fs::write(manifests.join("web.yaml"), pod("    colour: blue\n")).unwrap();
    let (ok, out) = run_manifests(false);
    assert!(ok && out.contains("spec.containers[0].colour: unknown field") && out.contains("CreateContainer"), "a warning, and the pod runs: {out}");
    let (ok, out) = run_manifests(true);
    assert!(!ok && out.contains("--strict: static pod manifests:") && out.contains("colour: unknown field"), "{out}");
    std::fs::write(manifests.join("web.yaml"), pod("")).unwrap();
    let (ok, out) = run_manifests(true);
    assert!(ok, "a clean manifest passes --strict: {out}");
}

/// `--version` names nodelet's version, the commit built and the Kubernetes
/// release it follows, as the kubelet version it reports.
#[test]
fn the_version_names_the_commit_and_the_kubernetes_release() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet")).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{v}");
    let want = format!("nodelet {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v}");
    let commit = v[want.len()..].split(';').next().unwrap();
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{v}");
    assert!(v.contains(&format!("Kubernetes {}, reported as kubelet {}", nodelet::kubernetes_version!(), nodelet::cluster::node::KUBELET_VERSION)), "{v}");
}

/// A KubeletConfiguration whose cgroupDriver differs from the runtime's
/// (here containerd's runc has SystemdCgroup = false; the packaged config
/// says systemd, kubeadm's default): nodelet follows the runtime, as kubelet
/// takes the driver from the runtime, says what to change to make them
/// agree, and its pods run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_driver_other_than_the_runtimes_is_the_runtimes_with_a_warning_that_says_what_to_change() {
    let node = Node::start().await;
    let agent = node.nodelet(&["--cgroup-driver", "systemd"]);
    node.write_manifest("web.yaml", &pod_yaml("web", "  containers:\n  - name: app\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    resources: {limits: {memory: 32Mi}}\n"));
    let app = eventually(30 * S, "the app container running", || async { node.instances("web", "app").await.into_iter().find(is_running) }).await;
    let log = agent.log();
    assert!(log.contains("the runtime's default handler uses the cgroupfs cgroup driver (containerd: SystemdCgroup = false)"), "{log}");
    assert!(log.contains("set cgroupDriver: cgroupfs, or SystemdCgroup = true under"), "{log}");
    // The pod's cgroup is a cgroupfs path under the node's cgroupRoot, not a systemd slice.
    let pid = node.exec(&app.id, &["cat", "/proc/self/cgroup"]).await;
    let cgroup = String::from_utf8_lossy(&pid.stdout).to_string();
    assert!(cgroup.contains(&format!("{}/kubepods", node.cgroup_root)) && !cgroup.contains(".slice"), "{cgroup}");
}

/// The relist follows containerd's event stream: once the stream is live,
/// the periodic relist slows to a safety net and a container's exit is
/// still acted on at once (the event); when the stream breaks, losing the
/// exit event with it (a test hook), the agent says so, relists every
/// second again, and the exit is seen and the container restarted anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_seen_by_events_and_by_the_relist_when_the_stream_breaks() {
    let node = Node::start().await;
    let mut agent = node.nodelet(&[]);
    let stopper = |name: &str| {
        pod_yaml(name, "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sh, -c, 'while [ ! -f /tmp/stop ]; do sleep 0.1; done; exit 3']}\n")
    };
    node.write_manifest("evented.yaml", &stopper("evented"));
    eventually(30 * S, "the event stream live", || async { agent.log().contains("containerd event stream live").then_some(()) }).await;
    let first = eventually(30 * S, "evented running", || async { node.instances("evented", "c").await.into_iter().find(is_running) }).await;
    // With the stream live the periodic relist runs once a minute; the
    // exit is seen through its event.
    let t = std::time::Instant::now();
    node.exec(&first.id, &["touch", "/tmp/stop"]).await;
    eventually(10 * S, "evented restarted", || async {
        node.instances("evented", "c").await.into_iter().find(|c| c.metadata.as_ref().is_some_and(|m| m.attempt == 1) && is_running(c))
    })
    .await;
    assert!(t.elapsed() < 5 * S, "the exit acted on through its event: {:?}", t.elapsed());
    drop(agent);

    // The stream breaks at its next event and stays broken.
    node.env.lock().unwrap().push(("NODELET_TEST_DROP_EVENT_STREAM".into(), "1".into()));
    agent = node.nodelet(&[]);
    eventually(30 * S, "the event stream live", || async { agent.log().contains("containerd event stream live").then_some(()) }).await;
    let running = eventually(30 * S, "evented running", || async { node.instances("evented", "c").await.into_iter().find(is_running) }).await;
    let attempt = running.metadata.as_ref().unwrap().attempt;
    node.exec(&running.id, &["touch", "/tmp/stop"]).await;
    eventually(30 * S, "the stream lost", || async { agent.log().contains("containerd event stream lost").then_some(()) }).await;
    eventually(30 * S, "evented restarted by the relist's finding", || async {
        node.instances("evented", "c").await.into_iter().find(|c| c.metadata.as_ref().is_some_and(|m| m.attempt == attempt + 1) && is_running(c))
    })
    .await;
}
