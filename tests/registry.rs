//! Pulls from real registries (Debian's docker-registry with TLS and
//! htpasswd, pushed to with skopeo): credentials from the node's Docker
//! config, from a credential provider plugin and from pods' pull secrets;
//! kubelet's matching rules; private images staying private; no password
//! in any log or dry-run output. And `nodelet explain` on broken pods.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use support::cluster::Cluster;
use support::registry::{PASSWORD, PRIVATE, PUBLIC, Registries};
use support::{Node, eventually, images, pod_yaml};

const S: Duration = Duration::from_secs(1);

fn waiting(st: &serde_json::Value) -> Option<(String, String)> {
    let w = &st["status"]["containerStatuses"][0]["state"]["waiting"];
    Some((w["reason"].as_str()?.to_string(), w["message"].as_str().unwrap_or("").to_string()))
}

fn static_pod(image: &str, policy: &str) -> String {
    format!(
        "  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: {policy}\n    command: [sleep, '3600']\n"
    )
}

fn running(node: &Node, pod: &str) -> Option<()> {
    node.status(pod).filter(|p| p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["state"]["running"].is_object()).map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_docker_config_keys_match_by_path_prefix_and_wildcard_and_anonymous_pulls_are_refused() {
    let node = Node::start().await;
    let regs = Registries::start(&node);
    regs.push(&images().join("busybox.tar"), PRIVATE, "team/app:1");
    regs.push(&images().join("busybox.tar"), PRIVATE, "other/app:1");
    regs.push(&images().join("busybox.tar"), PUBLIC, "open/app:1");
    let root = node.dir.path().join("kubelet");
    std::fs::create_dir_all(&root).unwrap();
    let agent = node.nodelet(&[]);

    // No credentials: the private registry says 401; the public one serves anyone.
    node.write_manifest("anon.yaml", &pod_yaml("anon", &static_pod(&format!("{PRIVATE}/team/app:1"), "IfNotPresent")));
    node.write_manifest("public.yaml", &pod_yaml("public", &static_pod(&format!("{PUBLIC}/open/app:1"), "IfNotPresent")));
    node.write_manifest("invalid.yaml", &pod_yaml("invalid", &static_pod("registry.io/Team/App:1", "IfNotPresent")));
    eventually(60 * S, "the public image running", || async { running(&node, "public") }).await;
    let (_, msg) = eventually(30 * S, "InvalidImageName", || async {
        node.status("invalid").and_then(|s| waiting(&s)).filter(|(r, _)| r == "InvalidImageName")
    })
    .await;
    assert!(msg.contains("couldn't parse image name \"registry.io/Team/App:1\": repository name must be lowercase"), "{msg}");
    let (reason, msg) = eventually(60 * S, "ErrImagePull for the private image", || async {
        node.status("anon").and_then(|s| waiting(&s)).filter(|(r, _)| r == "ErrImagePull")
    })
    .await;
    assert!(msg.contains("401") || msg.to_lowercase().contains("unauthorized"), "{reason}: {msg}");
    eventually(60 * S, "ImagePullBackOff", || async {
        node.status("anon").and_then(|s| waiting(&s)).filter(|(r, m)| r == "ImagePullBackOff" && m.contains("401"))
    })
    .await;

    // The node's config.json: path-prefix keys, and a wildcard with a port that never matches.
    let config = Registries::docker_config(&[(&format!("{PRIVATE}/team"), true), (&format!("{PRIVATE}/other"), false), ("*.nodelet.test:5000", true)]);
    std::fs::write(root.join("config.json"), &config).unwrap();
    eventually(90 * S, "the private image pulled with the team key", || async { running(&node, "anon") }).await;
    node.write_manifest("other.yaml", &pod_yaml("other", &static_pod(&format!("{PRIVATE}/other/app:1"), "IfNotPresent")));
    let (_, msg) = eventually(60 * S, "the other path refused with its wrong key", || async {
        node.status("other").and_then(|s| waiting(&s)).filter(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;
    assert!(msg.contains("401") || msg.to_lowercase().contains("unauthorized"), "{msg}");

    // A wildcard key beside the wrong one: each matching credential is tried in turn.
    let config = Registries::docker_config(&[("*.nodelet.test", true), (&format!("{PRIVATE}/other"), false)]);
    std::fs::write(root.join("config.json"), &config).unwrap();
    eventually(90 * S, "the other image pulled with the wildcard key", || async { running(&node, "other") }).await;


    let log = agent.log();
    assert!(log.contains("Successfully pulled image"), "{log}");
    assert!(!log.contains(PASSWORD), "the password reached nodelet's log");
    for dir in ["image_manager/pulled", "image_manager/pulling"] {
        for f in std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
            assert!(!std::fs::read_to_string(f.path()).unwrap().contains(PASSWORD), "{} holds the password", f.path().display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_provider_plugin_is_asked_once_per_cache_period() {
    let node = Node::start().await;
    let regs = Registries::start(&node);
    regs.push(&images().join("busybox.tar"), PRIVATE, "team/app:1");
    let dir = node.dir.path().join("providers");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let count = dir.join("count");
    // The exec protocol: a CredentialProviderRequest on stdin, a response on stdout.
    let plugin = format!(
        "#!/bin/sh\nread -r req\necho \"$req\" >> {count}\ncase \"$req\" in *CredentialProviderRequest*) ;; *) exit 1;; esac\n\
         printf '%s' '{{\"apiVersion\":\"credentialprovider.kubelet.k8s.io/v1\",\"kind\":\"CredentialProviderResponse\",\
         \"cacheKeyType\":\"Registry\",\"cacheDuration\":\"6s\",\"auth\":{{\"*.nodelet.test\":{{\"username\":\"puller\",\"password\":\"{PASSWORD}\"}}}}}}'\n",
        count = count.display()
    );
    let bin = dir.join("bin/test-provider");
    std::fs::write(&bin, plugin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("providers.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n- name: test-provider\n  matchImages: ['*.nodelet.test']\n  \
         defaultCacheDuration: 1h\n  apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
    )
    .unwrap();
    let (c, b) = (config.display().to_string(), dir.join("bin").display().to_string());
    let agent = node.nodelet(&["--image-credential-provider-config", &c, "--image-credential-provider-bin-dir", &b]);
    let image = format!("{PRIVATE}/team/app:1");
    let calls = || std::fs::read_to_string(&count).unwrap_or_default().lines().count();
    node.write_manifest("a.yaml", &pod_yaml("a", &static_pod(&image, "Always")));
    node.write_manifest("b.yaml", &pod_yaml("b", &static_pod(&image, "Always")));
    eventually(60 * S, "both pods running", || async { running(&node, "a").and(running(&node, "b")) }).await;
    assert_eq!(calls(), 1, "two pulls within the cache period ask the plugin once");
    let req = std::fs::read_to_string(&count).unwrap();
    // kubelet asks about the repository, without the tag.
    assert!(req.contains(&format!("\"image\":\"{PRIVATE}/team/app\"")), "{req}");
    tokio::time::sleep(7 * S).await;
    node.write_manifest("c.yaml", &pod_yaml("c", &static_pod(&image, "Always")));
    eventually(60 * S, "the third pod running", || async { running(&node, "c") }).await;
    assert_eq!(calls(), 2, "after the cache period the plugin is asked again");

    assert!(!agent.log().contains(PASSWORD), "the password reached nodelet's log");
}

fn pod(name: &str, node: &str, image: &str, secret: Option<&str>) -> Pod {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]
        }
    });
    if let Some(s) = secret {
        v["spec"]["imagePullSecrets"] = serde_json::json!([{"name": s}]);
    }
    serde_json::from_value(v).unwrap()
}

fn api_waiting(p: &Pod) -> Option<(String, String)> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = cs.state.as_ref()?.waiting.as_ref()?;
    Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
}

fn api_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first()).and_then(|c| c.state.as_ref()).is_some_and(|s| s.running.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_pull_private_images_and_the_image_stays_private_to_them() {
    let c = Cluster::start().await;
    let regs = Registries::start(&c.node);
    regs.push(&images().join("busybox.tar"), PRIVATE, "team/app:1");
    regs.push(&images().join("busybox.tar"), PUBLIC, "open/app:1");
    let agent = c.join().await;
    let node = c.node.node_name();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": Registries::docker_config(&[(PRIVATE, true)])}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let pods = c.pods("default");
    let private = format!("{PRIVATE}/team/app:1");
    pods.create(&PostParams::default(), &pod("with-secret", &node, &private, Some("regcred"))).await.unwrap();
    eventually(90 * S, "the pod with the secret running", || async { pods.get("with-secret").await.ok().filter(api_running) }).await;

    // The image is on the node now; a pod without the secret still may not use it.
    pods.create(&PostParams::default(), &pod("without", &node, &private, None)).await.unwrap();
    pods.create(&PostParams::default(), &pod("public", &node, &format!("{PUBLIC}/open/app:1"), None)).await.unwrap();
    eventually(90 * S, "the public image running", || async { pods.get("public").await.ok().filter(api_running) }).await;
    let (_, msg) = eventually(60 * S, "the pod without the secret refused", || async {
        pods.get("without").await.ok().as_ref().and_then(api_waiting).filter(|(r, _)| r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;
    assert!(msg.contains("401") || msg.to_lowercase().contains("unauthorized"), "{msg}");
    // And it stays refused: the cached image never runs for it.
    tokio::time::sleep(5 * S).await;
    assert!(!api_running(&pods.get("without").await.unwrap()), "the pod without the secret ran the private image");

    // A dry run against the same cluster prints its CRI calls, without the password.
    let kubeconfig = c.dir().join("kubelet.kubeconfig").display().to_string();
    let mut args = c.node.base_args();
    args.extend(["--kubeconfig".to_string(), kubeconfig, "--dry-run".into(), "--healthz-port".into(), "0".into()]);
    let mut dry = c.node.nodelet_with(args);
    dry.wait_exit(60 * S);
    let out = dry.stdout();
    assert!(out.contains("PullImage"), "the dry run plans the pull for the pod without the secret: {out}");
    assert!(!out.contains(PASSWORD) && !dry.log().contains(PASSWORD), "the password reached the dry run's output");


    assert!(!agent.log().contains(PASSWORD), "the password reached nodelet's log");
}

/// `nodelet explain pod NS/NAME`, run as an operator would on the node;
/// `None` while the node does not know the pod yet (it was just created).
fn explain(c: &Cluster, target: &str) -> Option<String> {
    let out = cli(&c.node, &["explain", "pod", target]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no pod") && err.contains("on this node"), "nodelet explain {target}: {err}");
        return None;
    }
    Some(String::from_utf8(out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_cause_of_four_broken_pods_in_its_first_line() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let node = c.node.node_name();
    let pods = c.pods("default");
    let broken = |name: &str, container: serde_json::Value, volumes: serde_json::Value| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 2,
                     "containers": [container], "volumes": volumes}
        }))
        .unwrap()
    };
    let busybox = "nodelet.local/busybox:1";
    let specs = [
        broken("bad-image", serde_json::json!({"name": "c", "image": "nodelet.local/no-such-image:1"}), serde_json::json!([])),
        broken(
            "no-config",
            serde_json::json!({"name": "c", "image": busybox, "command": ["sleep", "3600"], "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}),
            serde_json::json!([{"name": "cfg", "configMap": {"name": "settings"}}]),
        ),
        broken(
            "crasher",
            serde_json::json!({"name": "c", "image": busybox, "command": ["sh", "-c", "echo giving up: no database; exit 3"]}),
            serde_json::json!([]),
        ),
        broken(
            "unready",
            serde_json::json!({"name": "c", "image": busybox, "command": ["sleep", "3600"],
                "readinessProbe": {"exec": {"command": ["sh", "-c", "echo not warmed up; exit 1"]}, "periodSeconds": 1}}),
            serde_json::json!([]),
        ),
    ];
    for p in &specs {
        pods.create(&PostParams::default(), p).await.unwrap();
    }
    let first = |target: &'static str, want: &'static [&'static str]| {
        let c = &c;
        async move {
            eventually(60 * S, &format!("explain {target}: {want:?}"), || async {
                let text = explain(c, target)?;
                let line = text.lines().next().unwrap_or("").to_string();
                want.iter().all(|w| line.contains(w)).then_some(text)
            })
            .await
        }
    };
    let text = first("default/bad-image", &["default/bad-image:", "image \"nodelet.local/no-such-image:1\"", "cannot be pulled"]).await;
    assert!(text.contains("Pulling"), "the trail shows the pull attempts: {text}");
    first("default/no-config", &["volume set-up failed", "configmap \"settings\" not found"]).await;
    let text = first("default/crasher", &["container \"c\" keeps crashing", "exit code 3"]).await;
    assert!(text.contains("| giving up: no database"), "the previous log's last lines: {text}");
    let text = first("default/unready", &["container \"c\" is not ready", "Readiness probe failed", "not warmed up"]).await;
    assert!(text.contains("Ready=False"), "{text}");

    // JSON for tools, and a clear answer for a pod that is not there.
    let out = cli(&c.node, &["explain", "pod", "default/crasher", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["summary"].as_str().unwrap().contains("keeps crashing"), "{v}");
    let out = cli(&c.node, &["explain", "pod", "default/nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pod default/nobody on this node"));
}

fn filler(node: &Node, name: &str, mib: u32) -> std::path::PathBuf {
    let out = node.dir.path().join(format!("{}.tar", name.replace(['/', ':'], "_")));
    let st = std::process::Command::new(support::repo().join("tests/images/filler.sh")).arg(&out).arg(name).arg(mib.to_string()).status().unwrap();
    assert!(st.success(), "filler.sh");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pull_shows_its_progress_in_nodelet_pods() {
    let node = Node::start().await;
    let regs = Registries::start(&node);
    let archive = filler(&node, "big:1", 256);
    regs.push(&archive, PUBLIC, "big/app:1");
    let _agent = node.nodelet(&[]);
    let image = format!("{PUBLIC}/big/app:1");
    node.write_manifest("big.yaml", &pod_yaml("big", &static_pod(&image, "IfNotPresent")));
    // Poll what `nodelet pods` reads until the pod runs; some reading in
    // between must show bytes moving.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut shown = None;
    let deadline = std::time::Instant::now() + 180 * S;
    while running(&node, "big").is_none() {
        assert!(std::time::Instant::now() < deadline, "the big pod never ran");
        if let Some(body) = node.get("/pulls")
            && let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(&body)
        {
            for p in list.iter().filter(|p| p["image"] == image.as_str()) {
                seen.push((p["doneBytes"].as_u64().unwrap(), p["totalBytes"].as_u64().unwrap()));
                assert_eq!(p["pods"][0], format!("default/{}", node.pod_name("big")));
                if shown.is_none() && p["doneBytes"].as_u64() > Some(0) {
                    let out = String::from_utf8_lossy(&cli(&node, &["pods"]).stdout).into_owned();
                    shown = out.contains("PULLING").then_some(out);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(seen.iter().any(|(d, t)| *d > 0 && *t >= *d), "progress was reported while pulling: {seen:?}");
    let shown = shown.unwrap_or_else(|| panic!("`nodelet pods` never showed the pull; /pulls said {seen:?}"));
    assert!(shown.contains("PULLING") && shown.contains(&image) && shown.contains("MiB of"), "{shown}");
    assert!(node.get("/pulls").unwrap().trim() == "[]", "nothing in flight once pulled");
    // A static pod is explained by its bare name, standalone.
    let out = cli(&node, &["explain", "pod", "big"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    assert!(first.starts_with(&format!("default/{}: ", node.pod_name("big"))) && first.ends_with("running and Ready"), "{text}");
    assert!(text.contains("Successfully pulled image"), "the trail has the pull: {text}");
}

/// Runs `nodelet <args> --socket <the node's status socket>`. No network
/// namespace is entered: the socket is a file.
fn cli(node: &support::Node, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nodelet")).args(args).arg("--socket").arg(node.status_socket()).output().unwrap()
}
