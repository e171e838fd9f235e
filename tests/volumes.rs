//! The pod's world against a real containerd: volumes, environment,
//! resolv.conf and /etc/hosts, cgroup limits, oom_score_adj and the
//! security context, each read from inside the container through ExecSync.
//! (API-sourced data — configMap, secret, token — is in tests/cluster.rs.)

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Node, eventually, is_running, pod_yaml};

const S: Duration = Duration::from_secs(1);

/// Runs a shell script in a container: (exit code, stdout, stderr).
async fn sh(node: &Node, container_id: &str, script: &str) -> (i32, String, String) {
    let r = node.exec(container_id, &["sh", "-c", script]).await;
    (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned(), String::from_utf8_lossy(&r.stderr).into_owned())
}

async fn out(node: &Node, container_id: &str, script: &str) -> String {
    let (code, stdout, stderr) = sh(node, container_id, script).await;
    assert_eq!(code, 0, "`{script}` failed: {stdout}{stderr}");
    stdout
}

async fn running(node: &Node, pod: &str, container: &str) -> String {
    eventually(60 * S, &format!("{pod}/{container} running"), || async {
        node.instances(pod, container).await.into_iter().find(is_running).map(|c| c.id)
    })
    .await
}

/// A node whose nodelet knows a cluster DNS and has its own resolv.conf.
fn start_with_dns(node: &Node) -> support::Agent {
    let host_resolv = node.dir.path().join("host-resolv.conf");
    std::fs::write(&host_resolv, "nameserver 192.0.2.53\nsearch corp.example\noptions rotate\n").unwrap();
    let mut args = node.base_args();
    // The test network namespace has no default route to find the node's
    // IP by: one from the documentation range.
    args.extend(["--node-ip".to_string(), "192.0.2.7".to_string()]);
    node.write_config(&format!(
        "clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\nresolvConf: {}\n",
        host_resolv.display()
    ));
    node.nodelet_with(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_env_and_hosts_of_a_static_pod() {
    let node = Node::start().await;
    let _agent = start_with_dns(&node);
    let host_dir = node.dir.path().join("host-data");
    node.write_manifest(
        "web.yaml",
        &r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  hostname: web
  subdomain: sub
  hostAliases:
  - {ip: 10.1.2.3, hostnames: [db.example, db]}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - {name: host, hostPath: {path: @HOST@, type: DirectoryOrCreate}}
  - name: info
    downwardAPI:
      defaultMode: 288
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: limits/mem, resourceFieldRef: {containerName: app, resource: limits.memory, divisor: 1Mi}, mode: 256}
  containers:
  - name: app
    image: nodelet.local/busybox:1
    command: [sh, -c, 'echo $(GREETING) > /scratch/hello; echo ''$$(WHO)'' > /scratch/escaped; sleep 3600']
    env:
    - {name: WHO, value: world}
    - {name: GREETING, value: 'hello $(WHO)'}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    resources: {limits: {cpu: 250m, memory: 64Mi}}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: mem, mountPath: /mem}
    - {name: host, mountPath: /host}
    - {name: host, mountPath: /nested, subPath: a/b}
    - {name: info, mountPath: /info, readOnly: true}
  - name: reader
    image: nodelet.local/busybox:1
    command: [sleep, '3600']
    volumeMounts: [{name: scratch, mountPath: /shared, readOnly: true}]
"#
        .replace("@HOST@", &host_dir.display().to_string()),
    );
    let app = running(&node, "web", "app").await;
    let reader = running(&node, "web", "reader").await;

    // emptyDir: shared between the containers; read-only where mounted so.
    eventually(10 * S, "the greeting in the shared emptyDir", || async {
        let (code, text, _) = sh(&node, &reader, "cat /shared/hello").await;
        (code == 0 && text == "hello world\n").then_some(())
    })
    .await;
    assert_eq!(out(&node, &app, "cat /scratch/escaped").await, "$(WHO)\n", "$$ escapes an expansion");
    let (code, _, err) = sh(&node, &reader, "touch /shared/x").await;
    assert_ne!(code, 0, "a readOnly mount refuses writes");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(out(&node, &app, "stat -c %a /scratch").await.trim(), "777");

    // emptyDir medium Memory: tmpfs of sizeLimit.
    let mounts = out(&node, &app, "grep ' /mem ' /proc/mounts").await;
    assert!(mounts.starts_with("tmpfs /mem tmpfs") && mounts.contains("size=8192k"), "{mounts}");

    // hostPath DirectoryOrCreate, and a subPath inside it.
    out(&node, &app, "echo from-pod > /host/file && echo deep > /nested/file").await;
    assert_eq!(std::fs::read_to_string(host_dir.join("file")).unwrap(), "from-pod\n");
    assert_eq!(std::fs::read_to_string(host_dir.join("a/b/file")).unwrap(), "deep\n");

    // downwardAPI: the ..data layout, contents and modes.
    assert_eq!(out(&node, &app, "cat /info/labels").await, "app=\"web\"\ntier=\"front\"");
    assert_eq!(out(&node, &app, "cat /info/limits/mem").await, "64");
    assert_eq!(out(&node, &app, "stat -c %a /info/..data/labels /info/..data/limits/mem").await, "440\n400\n");
    assert!(out(&node, &app, "readlink /info/..data").await.starts_with("..20"), "a timestamped version directory");
    assert_eq!(out(&node, &app, "readlink /info/labels").await.trim(), "..data/labels");

    // Environment and $(VAR) expansion.
    assert_eq!(out(&node, &app, "echo $GREETING,$CPU").await, "hello world,250\n");
    let ip = out(&node, &app, "echo $MY_IP").await.trim().to_string();
    assert!(ip.starts_with("10.99.0."), "{ip}");

    // /etc/hosts: the pod's IP with its FQDN and hostname, then the aliases.
    let hosts = out(&node, &app, "cat /etc/hosts").await;
    assert!(hosts.starts_with("# Kubernetes-managed hosts file."), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains(&format!("{ip}\tweb.sub.default.svc.cluster.local\tweb\n")), "{hosts}");
    assert!(hosts.contains("10.1.2.3\tdb.example\tdb\n"), "{hosts}");
    assert_eq!(out(&node, &app, "hostname").await.trim(), "web");
    assert_eq!(out(&node, &reader, "cat /etc/hosts").await, hosts, "one hosts file per pod");

    // ClusterFirst resolv.conf.
    let resolv = out(&node, &app, "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.96.0.10\n"), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local corp.example\n"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // Teardown: emptyDir data goes, hostPath data stays.
    let uid = node.instances("web", "app").await[0].labels["io.kubernetes.pod.uid"].clone();
    let pod_dir = node.dir.path().join("kubelet/pods").join(&uid);
    let scratch = pod_dir.join("volumes/kubernetes.io~empty-dir/scratch/hello");
    assert!(scratch.exists(), "emptyDir lives under the pod directory");
    node.remove_manifest("web.yaml");
    eventually(60 * S, "the pod directory removed", || async { (!pod_dir.exists()).then_some(()) }).await;
    assert!(host_dir.join("file").exists(), "hostPath data stays");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&uid), "no mount of the pod is left: {mountinfo}");
}

/// CVE-2017-1002101's race: a sidecar swaps a directory of a shared
/// emptyDir (renamed away, so it lives on) for a symlink to a host
/// directory in a loop while eight init
/// containers, one after the other, mount that directory by subPath. None
/// may ever see the host directory (a name checked and then mounted by the
/// runtime lets about half of them in); each either gets the volume's own
/// directory or is refused and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subpath_swapped_for_a_symlink_never_shows_the_host() {
    let node = Node::start().await;
    let agent = node.nodelet(&[]);
    let host = node.dir.path().join("host-secrets");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("secret"), "host only").unwrap();
    let mut spec = format!(
        "  initContainers:\n  - name: swapper\n    image: nodelet.local/busybox:1\n    restartPolicy: Always\n    \
         command: [sh, -c, 'mkdir /work/d; while true; do mv /work/d /work/keep; ln -s {} /work/d; rm /work/d; mv /work/keep /work/d; done']\n    \
         volumeMounts: [{{name: work, mountPath: /work}}]\n",
        host.display()
    );
    for i in 0..8 {
        spec.push_str(&format!(
            "  - name: victim{i}\n    image: nodelet.local/busybox:1\n    \
             command: [sh, -c, 'if [ -e /sub/secret ]; then echo victim{i} >> /report/leaks; fi; echo victim{i} >> /report/runs']\n    \
             volumeMounts: [{{name: work, mountPath: /sub, subPath: d}}, {{name: report, mountPath: /report}}]\n"
        ));
    }
    spec.push_str(
        "  containers:\n  - name: app\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
         volumeMounts: [{name: report, mountPath: /report}]\n  volumes:\n  - {name: work, emptyDir: {}}\n  - {name: report, emptyDir: {}}\n",
    );
    node.write_manifest("race.yaml", &pod_yaml("race", &spec));
    let app = eventually(120 * S, "every victim run and the app running", || async {
        node.instances("race", "app").await.into_iter().find(is_running).map(|c| c.id)
    })
    .await;
    let runs = out(&node, &app, "cat /report/runs").await;
    assert_eq!(runs.lines().count(), 8, "{runs}");
    let (code, leaks, _) = sh(&node, &app, "cat /report/leaks").await;
    assert!(code != 0 && leaks.is_empty(), "a victim saw the host directory: {leaks}");
    assert_eq!(std::fs::read_to_string(host.join("secret")).unwrap(), "host only");
    // The binds live under the pod directory, named by volume, container
    // and mount index; refusals were reported as the mount's.
    let uid = node.instances("race", "app").await[0].labels["io.kubernetes.pod.uid"].clone();
    let pod_dir = node.dir.path().join("kubelet/pods").join(&uid);
    assert!(pod_dir.join("volume-subpaths/work/victim0/0").is_dir());
    let log = agent.log();
    if log.contains("leads out of the volume") {
        assert!(log.contains("failed to prepare subPath for volumeMount \"work\" of container \"victim"), "refusals name the mount");
    }
    node.remove_manifest("race.yaml");
    eventually(60 * S, "the pod directory removed", || async { (!pod_dir.exists()).then_some(()) }).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&uid), "no subPath bind of the pod is left: {mountinfo}");
    assert!(host.join("secret").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolv_conf_for_each_dns_policy_and_bad_volumes_refused() {
    let node = Node::start().await;
    let agent = start_with_dns(&node);
    let sleep = "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n";
    node.write_manifest("def.yaml", &pod_yaml("def", &format!("  dnsPolicy: Default\n{sleep}")));
    node.write_manifest(
        "none.yaml",
        &pod_yaml(
            "none",
            &format!(
                "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.1]\n    searches: [a.example]\n    \
                 options: [{{name: ndots, value: '2'}}, {{name: edns0}}]\n{sleep}"
            ),
        ),
    );
    node.write_manifest(
        "hn.yaml",
        &pod_yaml(
            "hn",
            "  hostNetwork: true\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             env:\n    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n    \
             - {name: MY_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}\n",
        ),
    );
    node.write_manifest("hncf.yaml", &pod_yaml("hncf", &format!("  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n{sleep}")));
    // A hostPath of the wrong type fails the pod's mounts, and only its.
    let not_a_dir = node.dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    node.write_manifest(
        "badpath.yaml",
        &pod_yaml(
            "badpath",
            &format!(
                "  volumes: [{{name: h, hostPath: {{path: {}, type: Directory}}}}]\n  containers:\n  - name: c\n    \
                 image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    volumeMounts: [{{name: h, mountPath: /h}}]\n",
                not_a_dir.display()
            ),
        ),
    );

    let resolv = |pod: &'static str| {
        let node = &node;
        async move {
            let id = running(node, pod, "c").await;
            out(node, &id, "cat /etc/resolv.conf").await
        }
    };
    let def = resolv("def").await;
    assert!(def.contains("nameserver 192.0.2.53") && def.contains("search corp.example"), "Default is the node's: {def}");
    assert!(!def.contains("10.96.0.10"), "{def}");
    let none = resolv("none").await;
    assert_eq!(none, "search a.example\nnameserver 192.0.2.1\noptions ndots:2 edns0\n");
    let hn = resolv("hn").await;
    // (This node's IP is --node-ip's, see start_with_dns.)
    // Upstream's "should provide host IP and pod IP as an env var if pod uses
    // host network": a hostNetwork pod's IPs are the node's, in its status
    // and in fieldRef: status.podIP(s).
    let hn_status = eventually(10 * S, "hn's status with its pod IP", || async { node.status("hn").filter(|p| p["status"]["podIP"].is_string()) }).await;
    let node_ip = hn_status["status"]["hostIP"].as_str().unwrap().to_string();
    assert_eq!(hn_status["status"]["podIP"], node_ip.as_str(), "{hn_status}");
    let hn_id = running(&node, "hn", "c").await;
    assert_eq!(out(&node, &hn_id, "echo $MY_IP,$MY_IPS").await, format!("{node_ip},{node_ip}\n"));
    assert!(hn.contains("nameserver 192.0.2.53") && !hn.contains("10.96.0.10"), "ClusterFirst on the host network falls back: {hn}");
    let hncf = resolv("hncf").await;
    assert!(hncf.contains("nameserver 10.96.0.10") && hncf.contains("search default.svc.cluster.local"), "{hncf}");

    eventually(30 * S, "a FailedMount for the wrong hostPath type", || async {
        let log = agent.log();
        log.lines()
            .find(|l| l.contains("FailedMount") && l.contains("badpath") && l.contains("is not a directory"))
            .map(str::to_string)
    })
    .await;
    assert!(node.instances("badpath", "c").await.is_empty(), "no container starts without its mounts");
}

fn oom_floor() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap()
}

fn mem_total() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: i64 = meminfo.lines().find(|l| l.starts_with("MemTotal:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// The cgroup v1 file of `controller`, or cgroup v2's unified one.
fn host_cgroup_file(rel: &str, controller: &str, file_v1: &str) -> Option<String> {
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join(rel.trim_start_matches('/')).join(file_v1);
    std::fs::read_to_string(v1).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_oom_score_and_security_context_hold_inside_the_container() {
    let node = Node::start().await;
    let _agent = node.nodelet(&[]);
    node.write_manifest(
        "locked.yaml",
        &pod_yaml(
            "locked",
            "  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}\n  \
             volumes: [{name: data, emptyDir: {}}]\n  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    \
             command: [sleep, '3600']\n    resources: {limits: {cpu: 500m, memory: 64Mi}}\n    \
             volumeMounts: [{name: data, mountPath: /data}]\n    securityContext:\n      readOnlyRootFilesystem: true\n      \
             allowPrivilegeEscalation: false\n      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n",
        ),
    );
    node.write_manifest(
        "burst.yaml",
        &pod_yaml(
            "burst",
            "  containers:\n  - name: c\n    image: nodelet.local/busybox:1\n    command: [sleep, '3600']\n    \
             resources: {requests: {memory: 4Gi, cpu: 100m}}\n",
        ),
    );
    node.write_manifest(
        "free.yaml",
        &pod_yaml("free", "  containers:\n  - {name: c, image: nodelet.local/busybox:1, command: [sleep, '3600']}\n"),
    );
    let locked = running(&node, "locked", "c").await;

    // Identity, groups and the filesystem.
    assert_eq!(out(&node, &locked, "id -u; id -g").await, "1000\n3000\n");
    let groups = out(&node, &locked, "id -G").await;
    for g in ["2000", "4000"] {
        assert!(groups.split_whitespace().any(|x| x == g), "fsGroup and supplementalGroups: {groups}");
    }
    let (code, _, err) = sh(&node, &locked, "touch /rootfs-write").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    out(&node, &locked, "touch /data/ok").await;
    assert_eq!(out(&node, &locked, "stat -c '%g %A' /data").await.trim(), "2000 drwxrwsrwx", "fsGroup owns the emptyDir");

    // Capabilities: everything dropped but NET_BIND_SERVICE (bit 10); no new privileges.
    let status = out(&node, &locked, "cat /proc/self/status").await;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(field("CapEff:"), "0000000000000000", "a non-root process keeps no effective capability: {status}");
    assert_eq!(field("CapBnd:"), "0000000000000400", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");

    // The container's cgroup carries the limits.
    let mem = out(&node, &locked, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await;
    assert_eq!(mem.trim(), "67108864");
    let quota = out(&node, &locked, "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max").await;
    assert!(quota == "50000\n100000\n" || quota == "50000 100000\n", "{quota}");
    // 500m is 512 shares (cgroup v1); on v2 runc converts them to a weight:
    // 20 by its linear rule, 59 by the quadratic one of runc 1.3.2 and later.
    let v2 = !Path::new("/sys/fs/cgroup/cpu").exists();
    if v2 {
        let weight = out(&node, &locked, "cat /sys/fs/cgroup/cpu.weight").await;
        assert!(weight == "20\n" || weight == "59\n", "cpu.weight for 512 shares: {weight}");
    } else {
        let shares = out(&node, &locked, "cat /sys/fs/cgroup/cpu/cpu.shares").await;
        assert_eq!(shares, "512\n");
    }

    // ... and so does the pod's cgroup on the host, under kubepods.
    let uid = node.instances("locked", "c").await[0].labels["io.kubernetes.pod.uid"].clone();
    let pod_cgroup = format!("{}/kubepods/pod{uid}", node.cgroup_root);
    if let Some(limit) = host_cgroup_file(&pod_cgroup, "memory", "memory.limit_in_bytes") {
        assert_eq!(limit.trim(), "67108864", "the Guaranteed pod's cgroup {pod_cgroup}");
        assert_eq!(host_cgroup_file(&pod_cgroup, "cpu", "cpu.cfs_quota_us").unwrap().trim(), "50000");
    } else {
        let max = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(pod_cgroup.trim_start_matches('/')).join("memory.max"));
        assert_eq!(max.expect("a pod cgroup, v1 or v2").trim(), "67108864");
    }

    // oom_score_adj by QoS class (never below what this node allows).
    let floor = oom_floor();
    let adj = |id: String| {
        let node = &node;
        async move { out(node, &id, "cat /proc/1/oom_score_adj").await.trim().parse::<i64>().unwrap() }
    };
    assert_eq!(adj(locked.clone()).await, (-997).max(floor), "Guaranteed");
    let burst = running(&node, "burst", "c").await;
    let want = (1000 - 1000 * (4i64 << 30) / mem_total()).clamp(3, 999);
    assert_eq!(adj(burst).await, want.max(floor), "Burstable: 1000 - 1000 * request / capacity");
    let free = running(&node, "free", "c").await;
    assert_eq!(adj(free).await, 1000, "BestEffort");
    let burst_uid = node.instances("burst", "c").await[0].labels["io.kubernetes.pod.uid"].clone();
    let burst_cgroup = format!("{}/kubepods/burstable/pod{burst_uid}", node.cgroup_root);
    if v2 {
        let weight = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(burst_cgroup.trim_start_matches('/')).join("cpu.weight")).unwrap();
        assert_eq!(weight.trim(), "4", "100m of requests is 102 shares, weight 1 + (102 - 2) * 9999 / 262142 (kubelet's rule)");
    } else {
        let shares = host_cgroup_file(&burst_cgroup, "cpu", "cpu.shares").expect("the Burstable pod's cpu cgroup");
        assert_eq!(shares.trim(), "102", "100m of requests is 102 shares");
    }
}
