//! Upstream's node conformance cases, ported: the `[Conformance]` and
//! `[NodeConformance]` cases of kubernetes/kubernetes test/e2e/common/node
//! and test/e2e/common/storage, with the same pods and the same assertions,
//! against the test apiserver and a real containerd. Each check names the
//! upstream case it follows (`Describe / It`); README's conformance table
//! counts what is covered here and elsewhere in the suite, and what is not.
//!
//! The cases run side by side in a few clusters (one node each), so that
//! forty pods cost about as much as a handful: each test creates its pods
//! at once, waits for all of them, then checks each.
//!
//! Differences from upstream's pods, where its images are not available here
//! (no registry is reachable): busybox instead of agnhost and mounttest, the
//! same commands spelled in busybox, and an image (`nodelet.local/entrypoint:1`)
//! whose Entrypoint and Cmd echo themselves in place of agnhost's
//! entrypoint-tester. The environment is printed by `env` run directly
//! (Debian's busybox sh drops variables whose names have a `-`, which
//! upstream's `sh -c env` shows). The hooks' handler is busybox httpd with
//! a CGI that logs each request, in place of agnhost netexec.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode, Pod, Secret, Service};
use kube::api::{Api, LogParams, Patch, PatchParams, PostParams};
use support::cluster::Cluster;
use support::eventually;

const S: Duration = Duration::from_secs(1);
const BUSYBOX: &str = "nodelet.local/busybox:1";

/// A pod bound to `node` that runs once (restartPolicy Never unless the
/// spec says otherwise).
fn pod(name: &str, node: &str, spec: serde_json::Value) -> Pod {
    let mut v = serde_json::json!({
        "metadata": {"name": name, "labels": {"case": name}},
        "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false}
    });
    for (k, val) in spec.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// One busybox container running `script`.
fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({"name": "c", "image": BUSYBOX, "command": ["sh", "-c", script]})
}

struct Run<'a> {
    c: &'a Cluster,
    pods: Api<Pod>,
}

impl<'a> Run<'a> {
    fn new(c: &'a Cluster) -> Self {
        Self { c, pods: c.pods("default") }
    }

    async fn create(&self, p: Pod) {
        self.pods.create(&PostParams::default(), &p).await.unwrap();
    }

    /// The pod once its phase is terminal.
    async fn finished(&self, name: &str) -> Pod {
        let pods = &self.pods;
        eventually(90 * S, &format!("{name} finished"), || async {
            let p = pods.get(name).await.ok()?;
            matches!(p.status.as_ref()?.phase.as_deref(), Some("Succeeded" | "Failed")).then_some(p)
        })
        .await
    }

    async fn phase_is(&self, name: &str, phase: &str) -> Pod {
        let pods = &self.pods;
        eventually(90 * S, &format!("{name} {phase}"), || async {
            let p = pods.get(name).await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some(phase)).then_some(p)
        })
        .await
    }

    async fn logs(&self, name: &str, container: &str) -> String {
        self.pods.logs(name, &LogParams { container: Some(container.into()), ..Default::default() }).await.unwrap_or_default()
    }

    /// `name` Succeeded, and its container `c`'s output.
    async fn output(&self, name: &str) -> String {
        let p = self.finished(name).await;
        let out = self.logs(name, "c").await;
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"), "{name}: {out}\n{:?}", p.status);
        out
    }

    fn node(&self) -> String {
        self.c.node.node_name()
    }
}

fn container_status<'p>(p: &'p Pod, name: &str) -> &'p k8s_openapi::api::core::v1::ContainerStatus {
    let st = p.status.as_ref().unwrap();
    st.container_statuses.iter().flatten().chain(st.init_container_statuses.iter().flatten()).find(|s| s.name == name).unwrap()
}

fn terminated<'p>(p: &'p Pod, name: &str) -> &'p k8s_openapi::api::core::v1::ContainerStateTerminated {
    container_status(p, name).state.as_ref().and_then(|s| s.terminated.as_ref()).unwrap_or_else(|| panic!("{name} not terminated: {:?}", p.status))
}

fn condition<'p>(p: &'p Pod, t: &str) -> &'p k8s_openapi::api::core::v1::PodCondition {
    p.status.as_ref().unwrap().conditions.iter().flatten().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t}: {:?}", p.status))
}

/// `KEY=value` lines of `env` output.
fn env_of(out: &str) -> BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Containers, Downward API (env), Variable Expansion, Security Context,
/// Kubelet, Container Runtime (termination messages), Pods (host IP,
/// service env vars) and KubeletManagedEtcHosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_env_expansion_security_context_and_termination_messages() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    // A Service made before the pods, for "should contain environment variables for services".
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    services
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "fooservice"},
            "spec": {"selector": {"name": "server"}, "ports": [{"port": 8765, "targetPort": 8080, "protocol": "TCP"}]}
        })).unwrap())
        .await
        .unwrap();
    let entry = |name: &str, extra: serde_json::Value| {
        let mut ctr = serde_json::json!({"name": "c", "image": "nodelet.local/entrypoint:1"});
        for (k, v) in extra.as_object().unwrap() {
            ctr[k] = v.clone();
        }
        pod(name, &node, serde_json::json!({"containers": [ctr]}))
    };
    let fref = |name: &str, path: &str| serde_json::json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let rref = |name: &str, res: &str| serde_json::json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": res}}});
    let mut all = vec![
        entry("defaults", serde_json::json!({})),
        entry("override-args", serde_json::json!({"args": ["override", "arguments"]})),
        entry("override-command", serde_json::json!({"command": ["/bin/echo", "[/ep-2]"]})),
        entry("override-both", serde_json::json!({"command": ["/bin/echo", "[/ep-2]"], "args": ["override", "arguments"]})),
        pod("dapi-env", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [fref("POD_NAME", "metadata.name"), fref("POD_NAMESPACE", "metadata.namespace"), fref("POD_IP", "status.podIP"),
                    fref("HOST_IP", "status.hostIP"), fref("HOST_IPS", "status.hostIPs"), fref("POD_UID", "metadata.uid")]}]})),
        pod("dapi-resources", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "resources": {"limits": {"cpu": "1250m", "memory": "64Mi"}, "requests": {"cpu": "1250m", "memory": "32Mi"}},
            "env": [rref("CPU_LIMIT", "limits.cpu"), rref("MEMORY_LIMIT", "limits.memory"), rref("CPU_REQUEST", "requests.cpu"), rref("MEMORY_REQUEST", "requests.memory")]}]})),
        pod("dapi-defaults", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [rref("CPU_LIMIT", "limits.cpu"), rref("MEMORY_LIMIT", "limits.memory")]}]})),
        pod("dapi-hostnet", &node, serde_json::json!({"hostNetwork": true, "containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [fref("HOST_IP", "status.hostIP"), fref("POD_IP", "status.podIP")]}]})),
        pod("expansion-env", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [{"name": "FOO", "value": "foo-value"}, {"name": "BAR", "value": "bar-value"}, {"name": "FOOBAR", "value": "$(FOO);;$(BAR)"}]}]})),
        pod("expansion-command", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "TEST_VAR=wrong echo \"$(TEST_VAR)\""],
            "env": [{"name": "TEST_VAR", "value": "test-value"}]}]})),
        pod("expansion-args", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c"], "args": ["TEST_VAR=wrong echo \"$(TEST_VAR)\""],
            "env": [{"name": "TEST_VAR", "value": "test-value"}]}]})),
        pod("expansion-subpath", &node, serde_json::json!({
            "volumes": [{"name": "workdir1", "emptyDir": {}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "test -d /testcontainer/$(POD_NAME)"],
                "env": [fref("POD_NAME", "metadata.name")],
                "volumeMounts": [{"name": "workdir1", "mountPath": "/logscontainer", "subPathExpr": "$(POD_NAME)"}, {"name": "workdir1", "mountPath": "/testcontainer"}]}]})),
        pod("run-as-65534", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "id -u"], "securityContext": {"runAsUser": 65534}}]})),
        pod("readonly-true", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "touch checkfile"], "securityContext": {"readOnlyRootFilesystem": true}}]})),
        pod("readonly-false", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "touch checkfile"], "securityContext": {"readOnlyRootFilesystem": false}}]})),
        pod("unprivileged", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "ip link add dummy1 type veth peer name dummy2 || true"], "securityContext": {"privileged": false}}]})),
        pod("privileged", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "ip link add dummy1 type veth peer name dummy2"], "securityContext": {"privileged": true}}]})),
        pod("no-new-privs", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "grep NoNewPrivs /proc/self/status"],
            "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 1000}}]})),
        pod("busybox-logs", &node, serde_json::json!({"containers": [sh("echo 'Hello World'")]})),
        pod("busybox-fails", &node, serde_json::json!({"containers": [sh("/bin/false")]})),
        pod("busybox-readonly", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo test > /file"], "securityContext": {"readOnlyRootFilesystem": true}}]})),
        pod("host-aliases", &node, serde_json::json!({"hostAliases": [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}], "containers": [sh("cat /etc/hosts")]})),
        pod("msg-file", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo -n OK > /dev/termination-log"], "terminationMessagePolicy": "FallbackToLogsOnError"}]})),
        pod("msg-log", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo -n DONE; /bin/false"], "terminationMessagePolicy": "FallbackToLogsOnError"}]})),
        pod("msg-empty", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo -n DONE; /bin/true"], "terminationMessagePolicy": "FallbackToLogsOnError"}]})),
        pod("msg-nonroot", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo -n DONE > /dev/termination-custom-log"],
            "terminationMessagePath": "/dev/termination-custom-log", "securityContext": {"runAsUser": 1000}}]})),
        pod("msg-path", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo -n DONE > /dev/termination-custom-log"],
            "terminationMessagePath": "/dev/termination-custom-log"}]})),
        pod("service-env", &node, serde_json::json!({"containers": [serde_json::json!({"name": "c", "image": BUSYBOX, "command": ["env"]})]})),
        pod("etc-hosts", &node, serde_json::json!({
            "volumes": [{"name": "host-etc-hosts", "hostPath": {"path": "/etc/hosts"}}],
            "containers": [
                {"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/hosts"]},
                {"name": "own", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/hosts"], "volumeMounts": [{"name": "host-etc-hosts", "mountPath": "/etc/hosts"}]}
            ]})),
        pod("etc-hosts-hostnet", &node, serde_json::json!({"hostNetwork": true, "containers": [sh("cat /etc/hosts")]})),
    ];
    for p in all.drain(..) {
        r.create(p).await;
    }

    // Containers [sig-node]: the image's Entrypoint and Cmd against the pod's command and args.
    assert_eq!(r.output("defaults").await.trim(), "[/ep] default arguments", "Containers / should use the image defaults if command and args are blank [Conformance]");
    assert_eq!(r.output("override-args").await.trim(), "[/ep] override arguments", "Containers / should be able to override the image's default arguments (container cmd) [Conformance]");
    assert_eq!(r.output("override-command").await.trim(), "[/ep-2]", "Containers / should be able to override the image's default command (container entrypoint) [Conformance]");
    assert_eq!(r.output("override-both").await.trim(), "[/ep-2] override arguments", "Containers / should be able to override the image's default command and arguments [Conformance]");

    // Downward API [sig-node].
    let p = r.finished("dapi-env").await;
    let env = env_of(&r.output("dapi-env").await);
    let st = p.status.as_ref().unwrap();
    assert_eq!(env["POD_NAME"], "dapi-env", "Downward API / should provide pod name, namespace and IP address as env vars [Conformance]");
    assert_eq!(env["POD_NAMESPACE"], "default");
    assert_eq!(Some(&env["POD_IP"]), st.pod_ip.as_ref());
    assert_eq!(Some(&env["HOST_IP"]), st.host_ip.as_ref(), "Downward API / should provide host IP as an env var [Conformance]");
    assert_eq!(Some(&env["POD_UID"]), p.metadata.uid.as_ref(), "Downward API / should provide pod UID as env vars [Conformance]");
    let host_ips: Vec<String> = st.host_ips.iter().flatten().map(|h| h.ip.clone()).collect();
    assert_eq!(env["HOST_IPS"], host_ips.join(","), "Downward API / should provide hostIPs as an env var [NodeConformance] [Conformance]");
    let env = env_of(&r.output("dapi-resources").await);
    let case = "Downward API / should provide container's limits.cpu/memory and requests.cpu/memory as env vars [Conformance]";
    assert_eq!((env["CPU_LIMIT"].as_str(), env["MEMORY_LIMIT"].as_str()), ("2", "67108864"), "{case}");
    assert_eq!((env["CPU_REQUEST"].as_str(), env["MEMORY_REQUEST"].as_str()), ("2", "33554432"), "{case}");
    let env = env_of(&r.output("dapi-defaults").await);
    let (cpu_millis, memory_bytes) = node_allocatable(&c).await;
    let cores = (cpu_millis + 999) / 1000;
    let case = "Downward API / should provide default limits.cpu/memory from node allocatable [Conformance]";
    assert_eq!(env["CPU_LIMIT"], cores.to_string(), "{case}");
    assert_eq!(env["MEMORY_LIMIT"], memory_bytes.to_string(), "{case}");
    let p = r.finished("dapi-hostnet").await;
    let env = env_of(&r.output("dapi-hostnet").await);
    let case = "Downward API / should provide host IP and pod IP as an env var if pod uses host network [LinuxOnly] [Conformance]";
    assert_eq!(env["HOST_IP"], env["POD_IP"], "{case}");
    assert_eq!(Some(&env["POD_IP"]), p.status.as_ref().unwrap().host_ip.as_ref(), "{case}");

    // Variable Expansion [sig-node].
    assert_eq!(env_of(&r.output("expansion-env").await)["FOOBAR"], "foo-value;;bar-value", "Variable Expansion / should allow composing env vars into new env vars [Conformance]");
    assert_eq!(r.output("expansion-command").await.trim(), "test-value", "Variable Expansion / should allow substituting values in a container's command [Conformance]");
    assert_eq!(r.output("expansion-args").await.trim(), "test-value", "Variable Expansion / should allow substituting values in a container's args [Conformance]");
    r.output("expansion-subpath").await; // Variable Expansion / should allow substituting values in a volume subpath [Conformance]

    // Security Context [sig-node].
    assert_eq!(r.output("run-as-65534").await.trim(), "65534", "Security Context / When creating a container with runAsUser / should run the container with uid 65534 [LinuxOnly] [NodeConformance]");
    let p = r.finished("readonly-true").await;
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Failed"), "Security Context / When creating a pod with readOnlyRootFilesystem / should run the container with readonly rootfs when readOnlyRootFilesystem=true [LinuxOnly] [NodeConformance]");
    r.output("readonly-false").await; // Security Context / When creating a pod with readOnlyRootFilesystem / should run the container with writable rootfs when readOnlyRootFilesystem=false [NodeConformance] [Conformance]
    let out = r.output("unprivileged").await;
    assert!(out.contains("Operation not permitted"), "Security Context / When creating a pod with privileged / should run the container as unprivileged when false [LinuxOnly] [NodeConformance]: {out}");
    r.output("privileged").await; // PrivilegedPod [NodeConformance] / should enable privileged commands [LinuxOnly] (a veth pair: this kernel has no dummy links)
    assert_eq!(r.output("no-new-privs").await.split_whitespace().collect::<Vec<_>>(), ["NoNewPrivs:", "1"], "Security Context / when creating containers with AllowPrivilegeEscalation / should not allow privilege escalation when false [LinuxOnly] [NodeConformance]");

    // Kubelet [sig-node].
    assert_eq!(r.output("busybox-logs").await, "Hello World\n", "Kubelet / when scheduling a busybox command in a pod / should print the output to logs [NodeConformance] [Conformance]");
    let p = r.finished("busybox-fails").await;
    let t = terminated(&p, "c");
    assert_eq!((t.reason.as_deref(), t.exit_code), (Some("Error"), 1), "Kubelet / when scheduling a busybox command that always fails in a pod / should have an terminated reason [NodeConformance] [Conformance]");
    r.finished("busybox-readonly").await;
    let out = r.logs("busybox-readonly", "c").await;
    assert!(out.contains("Read-only file system"), "Kubelet / when scheduling a read only busybox container / should not write to root filesystem [LinuxOnly] [NodeConformance] [Conformance]: {out}");
    let out = r.output("host-aliases").await;
    assert!(out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["123.45.67.89", "foo", "bar"]), "Kubelet / when scheduling an agnhost Pod with hostAliases / should write entries to /etc/hosts [NodeConformance] [Conformance]: {out}");

    // Container Runtime [sig-node] blackbox test / on terminated container.
    let msg = |p: &Pod| terminated(p, "c").message.clone().unwrap_or_default();
    let p = r.finished("msg-file").await;
    assert_eq!(msg(&p), "OK", "Container Runtime / ... should report termination message from file when pod succeeds and TerminationMessagePolicy FallbackToLogsOnError is set [NodeConformance] [Conformance]");
    let p = r.finished("msg-log").await;
    assert_eq!(msg(&p), "DONE", "Container Runtime / ... should report termination message from log output if TerminationMessagePolicy FallbackToLogsOnError is set [NodeConformance] [Conformance]");
    let p = r.finished("msg-empty").await;
    assert_eq!(msg(&p), "", "Container Runtime / ... should report termination message as empty when pod succeeds and TerminationMessagePolicy FallbackToLogsOnError is set [NodeConformance] [Conformance]");
    let p = r.finished("msg-nonroot").await;
    assert_eq!(msg(&p), "DONE", "Container Runtime / ... should report termination message if TerminationMessagePath is set as non-root user and at a non-default path [NodeConformance] [Conformance]");
    let p = r.finished("msg-path").await;
    assert_eq!(msg(&p), "DONE", "Container Runtime / ... should report termination message if TerminationMessagePath is set [NodeConformance]");

    // Pods [sig-node].
    let p = r.finished("service-env").await;
    let env = env_of(&r.output("service-env").await);
    let svc = services.get("fooservice").await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    let case = "Pods / should contain environment variables for services [NodeConformance] [Conformance]";
    assert_eq!(env.get("FOOSERVICE_SERVICE_HOST"), Some(&ip), "{case}");
    assert_eq!(env.get("FOOSERVICE_SERVICE_PORT").map(String::as_str), Some("8765"), "{case}");
    assert_eq!(env.get("FOOSERVICE_PORT").cloned(), Some(format!("tcp://{ip}:8765")), "{case}");
    assert_eq!(env.get("FOOSERVICE_PORT_8765_TCP_ADDR"), Some(&ip), "{case}");
    let host_ip = p.status.as_ref().unwrap().host_ip.clone();
    assert!(host_ip.as_deref().is_some_and(|h| !h.is_empty()), "Pods / should get a host IP [NodeConformance] [Conformance]");

    // KubeletManagedEtcHosts [sig-node].
    let case = "KubeletManagedEtcHosts / should test kubelet managed /etc/hosts file [LinuxOnly] [NodeConformance] [Conformance]";
    let p = r.finished("etc-hosts").await;
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"), "{case}: {:?}", p.status);
    assert!(r.logs("etc-hosts", "c").await.starts_with("# Kubernetes-managed hosts file."), "{case}: a pod's /etc/hosts is the kubelet's");
    let host = std::fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(r.logs("etc-hosts", "own").await, host, "{case}: a container mounting /etc/hosts itself keeps its own");
    // kubelet copies the node's file for a hostNetwork pod under its own
    // header, which upstream's check ("# Kubernetes-managed hosts file.")
    // does not count as managed.
    let hostnet = r.output("etc-hosts-hostnet").await;
    assert!(!hostnet.starts_with("# Kubernetes-managed hosts file."), "{case}: {hostnet}");
    assert_eq!(hostnet, format!("# Kubernetes-managed hosts file (host network).\n{host}"), "{case}: a hostNetwork pod sees the host's");
}

/// InitContainer, Pods (lifecycle), Container Lifecycle Hook, ConfigMap and
/// Secrets (env).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_pod_lifecycle_hooks_and_env_from_objects() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    cms.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "configmap-test"}, "data": {"data-1": "value-1", "data-2": "value-2"}})).unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    secrets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "secret-test"}, "stringData": {"data-1": "value-1", "data-2": "value-2"}})).unwrap())
        .await
        .unwrap();
    // The hooks' target (upstream's agnhost netexec /echo): answers 200 and
    // logs every request's path and query ("GET /echo?msg=...").
    let handler = "mkdir -p /tmp/www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho ok\\necho \"GET /echo?$QUERY_STRING\" >&2\\n' > /tmp/www/cgi-bin/echo \
                   && chmod +x /tmp/www/cgi-bin/echo && exec httpd -f -p 8080 -h /tmp/www";
    r.create(pod("pod-handle-http-request", &node, serde_json::json!({"restartPolicy": "Always", "containers": [
        {"name": "c", "image": BUSYBOX, "command": ["sh", "-c", handler], "ports": [{"containerPort": 8080}]}
    ]})))
    .await;
    let handler = r.phase_is("pod-handle-http-request", "Running").await;
    let handler_ip = handler.status.unwrap().pod_ip.unwrap();
    let get = |msg: &str| format!("timeout 5 wget -q -O- 'http://{handler_ip}:8080/cgi-bin/echo?msg={msg}'");
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    let init = |name: &str, script: &str| serde_json::json!({"name": name, "image": BUSYBOX, "command": ["sh", "-c", script]});
    // Restartable Init Container Lifecycle Hook: the hooks on a sidecar.
    let sidecar_hooked = |name: &str, lifecycle: serde_json::Value| {
        pod(name, &node, serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": 15,
            "initContainers": [{"name": "sidecar", "image": BUSYBOX, "restartPolicy": "Always", "command": ["sh", "-c", forever], "lifecycle": lifecycle}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever]}]}))
    };
    let app = |script: &str| serde_json::json!({"name": "run1", "image": BUSYBOX, "command": ["sh", "-c", script]});
    let all = vec![
        pod("init-never", &node, serde_json::json!({"initContainers": [init("init1", "true"), init("init2", "true")], "containers": [app("true")]})),
        pod("init-always", &node, serde_json::json!({"restartPolicy": "Always", "initContainers": [init("init1", "true"), init("init2", "true")], "containers": [app(forever)]})),
        pod("init-fails-always", &node, serde_json::json!({"restartPolicy": "Always", "initContainers": [init("init1", "false"), init("init2", "true")], "containers": [app(forever)]})),
        pod("init-fails-never", &node, serde_json::json!({"initContainers": [init("init1", "true"), init("init2", "false")], "containers": [app("true")]})),
        pod("deadline", &node, serde_json::json!({"restartPolicy": "Always", "containers": [sh(forever)]})),
        pod("submitted", &node, serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "containers": [sh(forever)]})),
        pod("poststart-exec", &node, serde_json::json!({"restartPolicy": "Always", "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever],
            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", get("poststart")]}}}}]})),
        pod("prestop-exec", &node, serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": 15, "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", get("prestop")]}}}}]})),
        pod("poststart-http", &node, serde_json::json!({"restartPolicy": "Always", "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever],
            "lifecycle": {"postStart": {"httpGet": {"path": "/cgi-bin/echo?msg=poststart-http", "host": handler_ip, "port": 8080}}}}]})),
        pod("prestop-http", &node, serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": 15, "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever],
            "lifecycle": {"preStop": {"httpGet": {"path": "/cgi-bin/echo?msg=prestop-http", "host": handler_ip, "port": 8080}}}}]})),
        pod("cm-env", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [{"name": "CONFIG_DATA_1", "valueFrom": {"configMapKeyRef": {"name": "configmap-test", "key": "data-1"}}}]}]})),
        sidecar_hooked("sidecar-poststart-exec", serde_json::json!({"postStart": {"exec": {"command": ["sh", "-c", get("sidecar-poststart")]}}})),
        sidecar_hooked("sidecar-prestop-exec", serde_json::json!({"preStop": {"exec": {"command": ["sh", "-c", get("sidecar-prestop")]}}})),
        sidecar_hooked("sidecar-poststart-http", serde_json::json!({"postStart": {"httpGet": {"path": "/cgi-bin/echo?msg=sidecar-poststart-http", "host": handler_ip, "port": 8080}}})),
        sidecar_hooked("sidecar-prestop-http", serde_json::json!({"preStop": {"httpGet": {"path": "/cgi-bin/echo?msg=sidecar-prestop-http", "host": handler_ip, "port": 8080}}})),
        pod("cm-envfrom", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "envFrom": [{"configMapRef": {"name": "configmap-test"}}, {"prefix": "p-", "configMapRef": {"name": "configmap-test"}}]}]})),
        pod("secret-env", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "env": [{"name": "SECRET_DATA", "valueFrom": {"secretKeyRef": {"name": "secret-test", "key": "data-1"}}}]}]})),
        pod("secret-envfrom", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "envFrom": [{"secretRef": {"name": "secret-test"}}, {"prefix": "p-", "secretRef": {"name": "secret-test"}}]}]})),
    ];
    for p in all {
        r.create(p).await;
    }

    // InitContainer [NodeConformance].
    let p = r.finished("init-never").await;
    let case = "InitContainer [NodeConformance] / should invoke init containers on a RestartNever pod [Conformance]";
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"), "{case}");
    for i in ["init1", "init2"] {
        let t = terminated(&p, i);
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")), "{case}: {i}");
    }
    assert_eq!(condition(&p, "Initialized").status, "True", "{case}");
    let p = r.phase_is("init-always", "Running").await;
    let case = "InitContainer [NodeConformance] / should invoke init containers on a RestartAlways pod [Conformance]";
    assert_eq!(condition(&p, "Initialized").status, "True", "{case}");
    for i in ["init1", "init2"] {
        assert_eq!(terminated(&p, i).exit_code, 0, "{case}: {i}");
    }
    let case = "InitContainer [NodeConformance] / should not start app containers if init containers fail on a RestartAlways pod [Conformance]";
    let pods = &r.pods;
    let p = eventually(90 * S, "init1 restarted 3 times", || async {
        let p = pods.get("init-fails-always").await.ok()?;
        (container_status(&p, "init1").restart_count >= 3).then_some(p)
    })
    .await;
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"), "{case}");
    let init_cond = condition(&p, "Initialized");
    assert_eq!((init_cond.status.as_str(), init_cond.reason.as_deref()), ("False", Some("ContainersNotInitialized")), "{case}");
    assert_eq!(init_cond.message.as_deref(), Some("containers with incomplete status: [init1 init2]"), "{case}");
    for n in ["init2", "run1"] {
        let w = container_status(&p, n).state.as_ref().and_then(|s| s.waiting.as_ref()).unwrap_or_else(|| panic!("{case}: {n} waits"));
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"), "{case}: {n}");
    }
    assert!(c.node.containers_named("init-fails-always").await.iter().all(|x| x.metadata.as_ref().unwrap().name != "run1"), "{case}: run1 never created");
    let p = r.finished("init-fails-never").await;
    let case = "InitContainer [NodeConformance] / should not start app containers and fail the pod if init containers fail on a RestartNever pod [Conformance]";
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Failed"), "{case}");
    assert_eq!(terminated(&p, "init2").exit_code, 1, "{case}");
    assert!(container_status(&p, "run1").state.as_ref().and_then(|s| s.waiting.as_ref()).is_some(), "{case}: run1 never ran: {:?}", p.status);
    assert_eq!(condition(&p, "Initialized").status, "False", "{case}");

    // Pods [sig-node].
    r.phase_is("deadline", "Running").await;
    r.pods.patch("deadline", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"activeDeadlineSeconds": 5}}))).await.unwrap();
    let p = r.phase_is("deadline", "Failed").await;
    assert_eq!(p.status.as_ref().unwrap().reason.as_deref(), Some("DeadlineExceeded"), "Pods / should allow activeDeadlineSeconds to be updated [NodeConformance] [Conformance]");
    r.phase_is("submitted", "Running").await;
    r.pods.patch("submitted", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"time": "updated"}}}))).await.unwrap();
    tokio::time::sleep(S).await;
    assert_eq!(r.pods.get("submitted").await.unwrap().status.unwrap().phase.as_deref(), Some("Running"), "Pods / should be updated [NodeConformance] [Conformance]");
    r.pods.delete("submitted", &Default::default()).await.unwrap();
    eventually(30 * S, "submitted removed", || async { pods.get("submitted").await.is_err().then_some(()) }).await;
    assert!(c.node.containers_named("submitted").await.iter().all(|x| !support::is_running(x)), "Pods / should be submitted and removed [NodeConformance] [Conformance]");

    // Container Lifecycle Hook [sig-node] / when create a pod with lifecycle hook.
    let handled = || async { r.logs("pod-handle-http-request", "c").await };
    for (name, msg) in [("poststart-exec", "poststart"), ("poststart-http", "poststart-http")] {
        r.phase_is(name, "Running").await;
        eventually(30 * S, &format!("{name}'s postStart reached the handler"), || async { handled().await.lines().any(|l| l == format!("GET /echo?msg={msg}")).then_some(()) }).await;
        assert_eq!(container_status(&r.pods.get(name).await.unwrap(), "c").restart_count, 0, "{name}: the hook succeeded");
    }
    for (name, msg) in [("prestop-exec", "prestop"), ("prestop-http", "prestop-http")] {
        r.phase_is(name, "Running").await;
        r.pods.delete(name, &Default::default()).await.unwrap();
        eventually(30 * S, &format!("{name}'s preStop reached the handler"), || async { handled().await.lines().any(|l| l == format!("GET /echo?msg={msg}")).then_some(()) }).await;
    }
    for (name, msg) in [("sidecar-poststart-exec", "sidecar-poststart"), ("sidecar-poststart-http", "sidecar-poststart-http")] {
        r.phase_is(name, "Running").await;
        let case = format!("Restartable Init Container Lifecycle Hook / when create a pod with lifecycle hook / {name}: should execute poststart hook properly [NodeConformance]");
        eventually(30 * S, &case, || async { handled().await.lines().any(|l| l == format!("GET /echo?msg={msg}")).then_some(()) }).await;
    }
    for (name, msg) in [("sidecar-prestop-exec", "sidecar-prestop"), ("sidecar-prestop-http", "sidecar-prestop-http")] {
        r.phase_is(name, "Running").await;
        r.pods.delete(name, &Default::default()).await.unwrap();
        let case = format!("Restartable Init Container Lifecycle Hook / when create a pod with lifecycle hook / {name}: should execute prestop hook properly [NodeConformance]");
        eventually(30 * S, &case, || async { handled().await.lines().any(|l| l == format!("GET /echo?msg={msg}")).then_some(()) }).await;
    }
    // (Each wait above names its case: should execute poststart exec hook
    // properly, poststart http hook, prestop exec hook, prestop http hook
    // [NodeConformance] [Conformance].)

    // ConfigMap and Secrets [sig-node] (env).
    assert_eq!(env_of(&r.output("cm-env").await)["CONFIG_DATA_1"], "value-1", "ConfigMap / should be consumable via environment variable [NodeConformance] [Conformance]");
    let env = env_of(&r.output("cm-envfrom").await);
    assert_eq!((env["data-1"].as_str(), env["p-data-1"].as_str()), ("value-1", "value-1"), "ConfigMap / should be consumable via the environment [NodeConformance] [Conformance]");
    assert_eq!(env_of(&r.output("secret-env").await)["SECRET_DATA"], "value-1", "Secrets / should be consumable from pods in env vars [NodeConformance] [Conformance]");
    let env = env_of(&r.output("secret-envfrom").await);
    assert_eq!((env["data-1"].as_str(), env["p-data-1"].as_str()), ("value-1", "value-1"), "Secrets / should be consumable via the environment [NodeConformance] [Conformance]");
}

/// The node's allocatable as the apiserver has it: cpu in millicores, memory in bytes.
async fn node_allocatable(c: &Cluster) -> (i64, i64) {
    let nodes: Api<KubeNode> = Api::all(c.client.clone());
    let alloc = nodes.get(&c.node.node_name()).await.unwrap().status.unwrap().allocatable.unwrap();
    (nodelet::resources::milli(&alloc["cpu"]).unwrap(), nodelet::resources::value(&alloc["memory"]).unwrap())
}

/// The downward API's "should update labels/annotations on modification"
/// cases: pod `name` prints its labels and annotations files in a loop.
async fn labels_and_annotations_follow(r: &Run<'_>, name: &str, describe: &str) {
    r.phase_is(name, "Running").await;
    r.pods
        .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"key3": "value3"}, "annotations": {"builder": "foo"}}})))
        .await
        .unwrap();
    eventually(90 * S, &format!("{describe} / should update labels on modification [NodeConformance] [Conformance]"), || async {
        r.logs(name, "c").await.contains("key3=\"value3\"").then_some(())
    })
    .await;
    eventually(30 * S, &format!("{describe} / should update annotations on modification [NodeConformance] [Conformance]"), || async {
        r.logs(name, "c").await.contains("builder=\"foo\"").then_some(())
    })
    .await;
}

/// A file's mode (through the symlinks of the atomic writer, as upstream's
/// mounttest reads it), its content and the filesystem type of its mount.
fn describe(path: &str, mount: &str) -> String {
    format!("stat -L -c %A {path} && echo \"$(cat {path})\" && grep ' {mount} ' /proc/mounts | cut -d' ' -f3")
}

/// EmptyDir, ConfigMap, Secrets, Downward API and Projected volumes
/// ([sig-storage]), with updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_empty_dir_config_map_secret_downward_api_and_projected() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let make_cm = |name: &str, data: serde_json::Value| serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": name}, "data": data})).unwrap();
    cms.create(&PostParams::default(), &make_cm("configmap-test-volume", serde_json::json!({"data-1": "value-1", "data-2": "value-2", "data-3": "value-3"}))).await.unwrap();
    cms.create(&PostParams::default(), &make_cm("configmap-test-upd", serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "configmap-test-binary"}, "data": {"data-1": "value-1"}, "binaryData": {"dump.bin": "3q2+7w=="}})).unwrap(),
    )
    .await
    .unwrap();
    secrets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "secret-test"}, "stringData": {"data-1": "value-1", "data-2": "value-2", "data-3": "value-3"}})).unwrap())
        .await
        .unwrap();

    // EmptyDir volumes: 12 (user, mode, medium) cases, each in its own container and volume.
    let mut ed_containers = Vec::new();
    let mut ed_volumes = Vec::new();
    let mut ed_cases = Vec::new();
    for medium in ["tmpfs", "default"] {
        for (user, uid) in [("root", 0), ("non-root", 1001)] {
            for mode in ["0644", "0666", "0777"] {
                let name = format!("{}-{mode}-{medium}", if uid == 0 { "root" } else { "nonroot" });
                let vol = format!("v-{name}");
                let mount = format!("/test-volume-{name}");
                let file = format!("{mount}/test-file");
                ed_volumes.push(serde_json::json!({"name": vol, "emptyDir": if medium == "tmpfs" { serde_json::json!({"medium": "Memory"}) } else { serde_json::json!({}) }}));
                ed_containers.push(serde_json::json!({"name": name, "image": BUSYBOX, "securityContext": {"runAsUser": uid},
                    "command": ["sh", "-c", format!("echo 'mount-tester new file' > {file} && chmod {mode} {file} && {}", describe(&file, &mount))],
                    "volumeMounts": [{"name": vol, "mountPath": mount}]}));
                ed_cases.push((name, user, mode, medium));
            }
        }
    }
    let mut all = vec![
        pod("emptydir-modes", &node, serde_json::json!({"volumes": ed_volumes, "containers": ed_containers})),
        pod("emptydir-dirs", &node, serde_json::json!({
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory"}}, {"name": "disk", "emptyDir": {}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "stat -c %A /t && grep ' /t ' /proc/mounts | cut -d' ' -f3 && stat -c %A /d"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/t"}, {"name": "disk", "mountPath": "/d"}]}]})),
        pod("emptydir-shared", &node, serde_json::json!({"restartPolicy": "Always",
            "volumes": [{"name": "shared-data", "emptyDir": {}}],
            "containers": [
                {"name": "busybox-main-container", "image": BUSYBOX, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"], "volumeMounts": [{"name": "shared-data", "mountPath": "/usr/share/volumeshare"}]},
                {"name": "busybox-sub-container", "image": BUSYBOX, "command": ["sh", "-c", "echo Hello from the busy-box sub-container > /pod-data/shareddata.txt; trap 'exit 0' TERM; while true; do sleep 0.2; done"], "volumeMounts": [{"name": "shared-data", "mountPath": "/pod-data"}]}
            ]})),
    ];
    let cm_vol = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"name": "configmap-volume", "configMap": {"name": "configmap-test-volume"}});
        for (k, val) in extra.as_object().unwrap() {
            v["configMap"][k] = val.clone();
        }
        v
    };
    let reader = |name: &str, vol: serde_json::Value, script: &str, sc: serde_json::Value| {
        pod(name, &node, serde_json::json!({"securityContext": sc, "volumes": [vol], "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "configmap-volume", "mountPath": "/etc/configmap-volume"}]}]}))
    };
    let items = serde_json::json!([{"key": "data-2", "path": "path/to/data-2"}]);
    let items_mode = serde_json::json!([{"key": "data-2", "path": "path/to/data-2", "mode": 0o400}]);
    all.extend([
        reader("cm-volume", cm_vol(serde_json::json!({})), &describe("/etc/configmap-volume/data-1", "/etc/configmap-volume"), serde_json::json!({})),
        reader("cm-volume-mode", cm_vol(serde_json::json!({"defaultMode": 0o400})), "stat -L -c %A /etc/configmap-volume/data-1", serde_json::json!({})),
        reader("cm-volume-nonroot", cm_vol(serde_json::json!({})), "cat /etc/configmap-volume/data-1", serde_json::json!({"runAsUser": 1000})),
        reader("cm-volume-map", cm_vol(serde_json::json!({"items": items})), "cat /etc/configmap-volume/path/to/data-2", serde_json::json!({})),
        reader("cm-volume-map-mode", cm_vol(serde_json::json!({"items": items_mode})), "stat -L -c %A /etc/configmap-volume/path/to/data-2 && cat /etc/configmap-volume/path/to/data-2", serde_json::json!({})),
        reader("cm-volume-map-nonroot", cm_vol(serde_json::json!({"items": items})), "cat /etc/configmap-volume/path/to/data-2", serde_json::json!({"runAsUser": 1000})),
        pod("cm-volume-multi", &node, serde_json::json!({
            "volumes": [{"name": "one", "configMap": {"name": "configmap-test-volume"}}, {"name": "two", "configMap": {"name": "configmap-test-volume"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/one/data-1 /etc/two/data-1"],
                "volumeMounts": [{"name": "one", "mountPath": "/etc/one"}, {"name": "two", "mountPath": "/etc/two"}]}]})),
        pod("cm-volume-binary", &node, serde_json::json!({
            "volumes": [{"name": "v", "configMap": {"name": "configmap-test-binary"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/v/data-1; echo; od -An -tx1 /etc/v/dump.bin"], "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        pod("cm-volume-upd", &node, serde_json::json!({"restartPolicy": "Always",
            "volumes": [{"name": "v", "configMap": {"name": "configmap-test-upd"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "while true; do cat /etc/v/data-1; echo; sleep 1; done"], "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        pod("secret-volume", &node, serde_json::json!({"volumes": [{"name": "secret-volume", "secret": {"secretName": "secret-test"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", describe("/etc/secret-volume/data-1", "/etc/secret-volume")],
                "volumeMounts": [{"name": "secret-volume", "mountPath": "/etc/secret-volume"}]}]})),
        pod("secret-volume-mode", &node, serde_json::json!({"volumes": [{"name": "secret-volume", "secret": {"secretName": "secret-test", "defaultMode": 0o400}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "stat -L -c %A /etc/secret-volume/data-1"],
                "volumeMounts": [{"name": "secret-volume", "mountPath": "/etc/secret-volume"}]}]})),
        pod("secret-volume-nonroot", &node, serde_json::json!({"securityContext": {"runAsUser": 1000, "fsGroup": 1001},
            "volumes": [{"name": "secret-volume", "secret": {"secretName": "secret-test", "defaultMode": 0o440}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "stat -L -c '%A %g' /etc/secret-volume/data-1 && cat /etc/secret-volume/data-1"],
                "volumeMounts": [{"name": "secret-volume", "mountPath": "/etc/secret-volume"}]}]})),
        pod("secret-volume-map-mode", &node, serde_json::json!({"volumes": [{"name": "secret-volume", "secret": {"secretName": "secret-test", "items": [{"key": "data-1", "path": "new-path-data-1", "mode": 0o400}]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "stat -L -c %A /etc/secret-volume/new-path-data-1 && cat /etc/secret-volume/new-path-data-1"],
                "volumeMounts": [{"name": "secret-volume", "mountPath": "/etc/secret-volume"}]}]})),
        pod("dapi-volume", &node, serde_json::json!({
            "volumes": [{"name": "podinfo", "downwardAPI": {"items": [
                {"path": "podname", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "podname-mode", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
                {"path": "cpu_limit", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
                {"path": "memory_limit", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "cpu_request", "resourceFieldRef": {"containerName": "c", "resource": "requests.cpu", "divisor": "1m"}},
                {"path": "memory_request", "resourceFieldRef": {"containerName": "c", "resource": "requests.memory", "divisor": "1Mi"}}
            ]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}},
                "command": ["sh", "-c", "for f in podname cpu_limit memory_limit cpu_request memory_request; do echo $f=$(cat /etc/podinfo/$f); done; stat -L -c 'mode=%A' /etc/podinfo/podname-mode"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}]})),
        pod("dapi-volume-defaults", &node, serde_json::json!({
            "volumes": [{"name": "podinfo", "downwardAPI": {"defaultMode": 0o400, "items": [
                {"path": "cpu_limit", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
                {"path": "memory_limit", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory"}}
            ]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo cpu_limit=$(cat /etc/podinfo/cpu_limit); echo memory_limit=$(cat /etc/podinfo/memory_limit); stat -L -c 'mode=%A' /etc/podinfo/cpu_limit"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}]})),
        pod("dapi-volume-upd", &node, serde_json::json!({"restartPolicy": "Always",
            "volumes": [{"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}, {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "while true; do cat /etc/podinfo/labels /etc/podinfo/annotations; echo; sleep 1; done"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}]})),
        pod("projected-all", &node, serde_json::json!({
            "volumes": [{"name": "podinfo", "projected": {"sources": [
                {"secret": {"name": "secret-test", "items": [{"key": "data-1", "path": "secret-data"}]}},
                {"configMap": {"name": "configmap-test-volume", "items": [{"key": "data-1", "path": "configmap-data"}]}},
                {"downwardAPI": {"items": [{"path": "podname", "fieldRef": {"fieldPath": "metadata.name"}}]}}
            ]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /all/podname; echo; cat /all/secret-data; echo; cat /all/configmap-data"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/all"}]}]})),
    ]);
    for p in all {
        r.create(p).await;
    }

    // EmptyDir volumes [sig-storage].
    let p = r.finished("emptydir-modes").await;
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Succeeded"), "{:?}", p.status);
    for (name, user, mode, medium) in &ed_cases {
        let case = format!("EmptyDir volumes / should support ({user},{mode},{medium}) [LinuxOnly] [NodeConformance] [Conformance]");
        let out = r.logs("emptydir-modes", name).await;
        let lines: Vec<&str> = out.lines().collect();
        let perms = match *mode { "0644" => "-rw-r--r--", "0666" => "-rw-rw-rw-", _ => "-rwxrwxrwx" };
        assert_eq!(lines.first().copied(), Some(perms), "{case}: {out}");
        assert_eq!(lines.get(1).copied(), Some("mount-tester new file"), "{case}");
        if *medium == "tmpfs" {
            assert_eq!(lines.get(2).copied(), Some("tmpfs"), "{case}: the volume is memory-backed");
        } else {
            assert_ne!(lines.get(2).copied(), Some("tmpfs"), "{case}");
        }
    }
    let out = r.output("emptydir-dirs").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["drwxrwxrwx", "tmpfs"], "EmptyDir volumes / volume on tmpfs should have the correct mode [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(lines[2], "drwxrwxrwx", "EmptyDir volumes / volume on default medium should have the correct mode [LinuxOnly] [NodeConformance] [Conformance]");
    r.phase_is("emptydir-shared", "Running").await;
    let main = c.node.containers_named("emptydir-shared").await.into_iter().find(|x| x.metadata.as_ref().unwrap().name == "busybox-main-container" && support::is_running(x)).unwrap();
    let got = eventually(20 * S, "the shared file", || async {
        let out = c.node.exec(&main.id, &["cat", "/usr/share/volumeshare/shareddata.txt"]).await;
        (out.exit_code == 0).then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .await;
    assert_eq!(got.trim(), "Hello from the busy-box sub-container", "EmptyDir volumes / pod should support shared volumes between containers [Conformance]");

    // ConfigMap [sig-storage].
    let out = r.output("cm-volume").await;
    assert_eq!(out.lines().collect::<Vec<_>>()[..2], ["-rw-r--r--", "value-1"], "ConfigMap / should be consumable from pods in volume [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-mode").await.trim(), "-r--------", "ConfigMap / should be consumable from pods in volume with defaultMode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-nonroot").await.trim(), "value-1", "ConfigMap / should be consumable from pods in volume as non-root [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-map").await.trim(), "value-2", "ConfigMap / should be consumable from pods in volume with mappings [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-map-mode").await.lines().collect::<Vec<_>>(), ["-r--------", "value-2"], "ConfigMap / should be consumable from pods in volume with mappings and Item mode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-map-nonroot").await.trim(), "value-2", "ConfigMap / should be consumable from pods in volume with mappings as non-root [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-multi").await, "value-1value-1", "ConfigMap / should be consumable in multiple volumes in the same pod [NodeConformance] [Conformance]");
    assert_eq!(r.output("cm-volume-binary").await.lines().map(str::trim).collect::<Vec<_>>(), ["value-1", "de ad be ef"], "ConfigMap / binary data should be reflected in volume [NodeConformance] [Conformance]");
    r.phase_is("cm-volume-upd", "Running").await;
    eventually(30 * S, "value-1 seen", || async { r.logs("cm-volume-upd", "c").await.lines().any(|l| l == "value-1").then_some(()) }).await;
    cms.patch("configmap-test-upd", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"data-1": "value-2"}}))).await.unwrap();
    eventually(90 * S, "ConfigMap / updates should be reflected in volume [NodeConformance] [Conformance]", || async {
        r.logs("cm-volume-upd", "c").await.lines().any(|l| l == "value-2").then_some(())
    })
    .await;

    // Secrets [sig-storage].
    let out = r.output("secret-volume").await;
    assert_eq!(out.lines().collect::<Vec<_>>()[..2], ["-rw-r--r--", "value-1"], "Secrets / should be consumable from pods in volume [NodeConformance] [Conformance]");
    assert_eq!(r.output("secret-volume-mode").await.trim(), "-r--------", "Secrets / should be consumable from pods in volume with defaultMode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(
        r.output("secret-volume-nonroot").await.lines().collect::<Vec<_>>(),
        ["-r--r----- 1001", "value-1"],
        "Secrets / should be consumable from pods in volume as non-root with defaultMode and fsGroup set [LinuxOnly] [NodeConformance] [Conformance]"
    );
    assert_eq!(r.output("secret-volume-map-mode").await.lines().collect::<Vec<_>>(), ["-r--------", "value-1"], "Secrets / should be consumable from pods in volume with mappings and Item Mode set [LinuxOnly] [NodeConformance] [Conformance]");

    // Downward API volume [sig-storage].
    let env = env_of(&r.output("dapi-volume").await);
    assert_eq!(env["podname"], "dapi-volume", "Downward API volume / should provide podname only [NodeConformance] [Conformance]");
    assert_eq!(env["mode"], "-r--------", "Downward API volume / should set mode on item file [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(env["cpu_limit"], "500", "Downward API volume / should provide container's cpu limit [NodeConformance] [Conformance]");
    assert_eq!(env["memory_limit"], "64", "Downward API volume / should provide container's memory limit [NodeConformance] [Conformance]");
    assert_eq!(env["cpu_request"], "250", "Downward API volume / should provide container's cpu request [NodeConformance] [Conformance]");
    assert_eq!(env["memory_request"], "32", "Downward API volume / should provide container's memory request [NodeConformance] [Conformance]");
    let env = env_of(&r.output("dapi-volume-defaults").await);
    let (cpu_millis, memory_bytes) = node_allocatable(&c).await;
    assert_eq!(env["cpu_limit"], cpu_millis.to_string(), "Downward API volume / should provide node allocatable (cpu) as default cpu limit if the limit is not set [NodeConformance] [Conformance]");
    assert_eq!(env["memory_limit"], memory_bytes.to_string(), "Downward API volume / should provide node allocatable (memory) as default memory limit if the limit is not set [NodeConformance] [Conformance]");
    assert_eq!(env["mode"], "-r--------", "Downward API volume / should set DefaultMode on files [LinuxOnly] [NodeConformance] [Conformance]");
    labels_and_annotations_follow(&r, "dapi-volume-upd", "Downward API volume").await;

    // Projected combined [sig-storage].
    assert_eq!(
        r.output("projected-all").await.lines().collect::<Vec<_>>(),
        ["projected-all", "value-1", "value-1"],
        "Projected combined / should project all components that make up the projection API [Projection] [NodeConformance] [Conformance]"
    );
}

/// Probing container ([sig-node], the cases for app containers), with the
/// upstream pods' probes and shorter observation windows (upstream watches
/// for up to four minutes that nothing restarts; here ten seconds of
/// one-second probes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_container() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    let probed = |name: &str, script: &str, probes: serde_json::Value| {
        let mut ctr = serde_json::json!({"name": "c", "image": BUSYBOX, "command": ["sh", "-c", script]});
        for (k, v) in probes.as_object().unwrap() {
            ctr[k] = v.clone();
        }
        pod(name, &node, serde_json::json!({"restartPolicy": "Always", "containers": [ctr]}))
    };
    let exec = |cmd: &str, extra: serde_json::Value| {
        let mut p = serde_json::json!({"exec": {"command": ["sh", "-c", cmd]}, "periodSeconds": 1, "failureThreshold": 1});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let httpd = |prep: &str| format!("mkdir -p /www && echo ok > /www/healthz && {prep} httpd -f -p 8080 -h /www");
    // agnhost's /redirect?loc=…: a CGI answering 302 to the given location.
    let redirector = |prep: &str| {
        format!(
            "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho \"Status: 302 Found\"\\necho \"Location: ${{QUERY_STRING#loc=}}\"\\necho\\n' > /www/cgi-bin/redirect \
             && chmod +x /www/cgi-bin/redirect && {}",
            httpd(prep)
        )
    };
    // The pods that must never restart probe every second with upstream's
    // failureThreshold 1 (upstream probes every 10 s after 15 s): they wait
    // 5 s for their server or file to be there (a probe before it is a true
    // failure, and a loaded machine starts them late), and their timeout is
    // 5 s, so that a slow exec or accept is not taken for a failing probe.
    let all = vec![
        probed("readiness-delay", forever, serde_json::json!({"readinessProbe": exec("true", serde_json::json!({"initialDelaySeconds": 6}))})),
        probed("readiness-fails", forever, serde_json::json!({"readinessProbe": exec("false", serde_json::json!({}))})),
        probed("liveness-exec", "echo ok > /tmp/health; sleep 4; rm -f /tmp/health; sleep 600", serde_json::json!({"livenessProbe": exec("cat /tmp/health", serde_json::json!({"initialDelaySeconds": 1}))})),
        probed("liveness-exec-ok", "echo ok > /tmp/health; sleep 600", serde_json::json!({"livenessProbe": exec("cat /tmp/health", serde_json::json!({"timeoutSeconds": 5, "initialDelaySeconds": 5}))})),
        probed("liveness-http", &httpd("(sleep 4; rm /www/healthz) &"), serde_json::json!({"livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1, "initialDelaySeconds": 1}})),
        probed("liveness-http-ok", &httpd(""), serde_json::json!({"livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 5, "initialDelaySeconds": 5}})),
        probed("liveness-tcp-ok", &httpd(""), serde_json::json!({"livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 5, "initialDelaySeconds": 5}})),
        probed("liveness-monotonic", forever, serde_json::json!({"livenessProbe": exec("false", serde_json::json!({}))})),
        probed("liveness-timeout", forever, serde_json::json!({"livenessProbe": exec("sleep 10", serde_json::json!({"timeoutSeconds": 1}))})),
        probed("readiness-timeout", forever, serde_json::json!({"readinessProbe": exec("sleep 10", serde_json::json!({"timeoutSeconds": 1}))})),
        probed("startup-then-ready", "sleep 4; echo ok > /tmp/startup; trap 'exit 0' TERM; while true; do sleep 0.2; done", serde_json::json!({
            "startupProbe": exec("cat /tmp/startup", serde_json::json!({"failureThreshold": 60})),
            "readinessProbe": exec("true", serde_json::json!({"periodSeconds": 60}))})),
        probed("liveness-redirect-local", &redirector("(sleep 4; rm /www/healthz) &"), serde_json::json!({"livenessProbe": {"httpGet": {"path": "/cgi-bin/redirect?loc=/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1, "initialDelaySeconds": 1}})),
        probed("liveness-redirect-remote", &redirector(""), serde_json::json!({"livenessProbe": {"httpGet": {"path": "/cgi-bin/redirect?loc=http://0.0.0.0/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 5, "initialDelaySeconds": 5}})),
        probed("startup-fails", forever, serde_json::json!({"startupProbe": exec("false", serde_json::json!({"failureThreshold": 3})), "livenessProbe": exec("true", serde_json::json!({}))})),
        probed("startup-delays", forever, serde_json::json!({"startupProbe": exec("false", serde_json::json!({"failureThreshold": 300})), "livenessProbe": exec("false", serde_json::json!({}))})),
        probed("startup-enables", "sleep 5; echo ok > /tmp/startup; trap 'exit 0' TERM; while true; do sleep 0.2; done", serde_json::json!({
            "startupProbe": exec("cat /tmp/startup", serde_json::json!({"failureThreshold": 60})), "livenessProbe": exec("false", serde_json::json!({}))})),
        probed("liveness-exec-longer", forever, serde_json::json!({"livenessProbe": exec("sleep 10 & exit 1", serde_json::json!({"timeoutSeconds": 1}))})),
        {
            let mut p = probed("startup-grace", "trap '' TERM; while true; do sleep 0.2; done", serde_json::json!({
                "startupProbe": exec("false", serde_json::json!({"terminationGracePeriodSeconds": 5, "failureThreshold": 2}))}));
            p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(500);
            p
        },
        {
            // Ignores TERM: only the probe's own 5 s grace (not the pod's 500) ends it quickly.
            let mut p = probed("liveness-grace", "trap '' TERM; while true; do sleep 0.2; done", serde_json::json!({
                "livenessProbe": exec("false", serde_json::json!({"terminationGracePeriodSeconds": 5, "initialDelaySeconds": 2}))}));
            p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(500);
            p
        },
    ];
    // The same pods with the probed container as a sidecar (a restartable
    // init container) beside a plain app: "Probing restartable init container".
    let sidecars: Vec<Pod> = all
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.metadata.name = Some(format!("sc-{}", p.metadata.name.clone().unwrap()));
            let spec = p.spec.as_mut().unwrap();
            let mut sidecar = spec.containers.remove(0);
            sidecar.restart_policy = Some("Always".into());
            spec.init_containers = Some(vec![sidecar]);
            spec.containers = vec![serde_json::from_value(serde_json::json!({"name": "main", "image": BUSYBOX, "command": ["sh", "-c", forever]})).unwrap()];
            p
        })
        .collect();
    let created = std::time::Instant::now();
    for p in all.into_iter().chain(sidecars) {
        r.create(p).await;
    }
    let pods = &r.pods;
    let restarts = |name: String| async move {
        let p = pods.get(&name).await.ok()?;
        let st = p.status?;
        st.container_statuses.into_iter().flatten().chain(st.init_container_statuses.into_iter().flatten()).find(|s| s.name == "c").map(|s| s.restart_count)
    };
    let restarts = |name: String| async move { restarts(name).await.unwrap_or(0) };
    let ready = |name: String| async move { pods.get(&name).await.ok().is_some_and(|p| p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))) };

    for (prefix, describe) in [("", "Probing container"), ("sc-", "Probing restartable init container")] {
        let n = |name: &str| format!("{prefix}{name}");
        // Restarts that must happen.
        for (name, it) in [
            ("liveness-exec", "should be restarted with a exec \"cat /tmp/health\" liveness probe [NodeConformance] [Conformance]"),
            ("liveness-http", "should be restarted with a /healthz http liveness probe [NodeConformance] [Conformance]"),
            ("liveness-timeout", "should be restarted with an exec liveness probe with timeout [MinimumKubeletVersion:1.20] [NodeConformance]"),
            ("liveness-exec-longer", "should be restarted with a failing exec liveness probe that took longer than the timeout [NodeConformance]"),
            ("startup-fails", "should be restarted startup probe fails [NodeConformance]"),
            ("liveness-redirect-local", "should be restarted with a local redirect http liveness probe [NodeConformance]"),
            ("startup-enables", "should be restarted by liveness probe after startup probe enables it [NodeConformance]"),
        ] {
            let case = format!("{describe} / {it}");
            eventually(60 * S, &case, || async { (restarts(n(name)).await >= 1).then_some(()) }).await;
        }
        let case = format!("{describe} / should override timeoutGracePeriodSeconds when LivenessProbe field is set [NodeConformance]");
        eventually(40 * S, &case, || async { (restarts(n("liveness-grace")).await >= 1).then_some(()) }).await;
        let case = format!("{describe} / should override timeoutGracePeriodSeconds when StartupProbe field is set [NodeConformance]");
        eventually(40 * S, &case, || async { (restarts(n("startup-grace")).await >= 1).then_some(()) }).await;
        assert!(created.elapsed() < Duration::from_secs(150), "{case}: the probe's 5 s grace, not the pod's 500");
        let case = format!("{describe} / should have monotonically increasing restart count [NodeConformance] [Conformance]");
        let mut seen: Vec<i32> = Vec::new();
        let deadline = std::time::Instant::now() + 90 * S;
        while seen.last().is_none_or(|n| *n < 3) {
            assert!(std::time::Instant::now() < deadline, "{case}: {seen:?}");
            // A GET that fails says nothing about the count (it is not a 0);
            // a pod without the container's status is a 0 and must not
            // follow a higher count.
            let Ok(p) = pods.get(&n("liveness-monotonic")).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let st = p.status.unwrap_or_default();
            let count = st.container_statuses.into_iter().flatten().chain(st.init_container_statuses.into_iter().flatten()).find(|s| s.name == "c").map_or(0, |s| s.restart_count);
            if seen.last() != Some(&count) {
                seen.push(count);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{case}: {seen:?}");

        // Readiness.
        let case = format!("{describe} / with readiness probe should not be ready before initial delay and never restart [NodeConformance] [Conformance]");
        let p = r.phase_is(&n("readiness-delay"), "Running").await;
        let st = p.status.as_ref().unwrap();
        let started = st.container_statuses.iter().flatten().chain(st.init_container_statuses.iter().flatten()).find(|s| s.name == "c").and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone()).unwrap().0;
        eventually(30 * S, &case, || async { ready(n("readiness-delay")).await.then_some(()) }).await;
        let p = r.pods.get(&n("readiness-delay")).await.unwrap();
        let became = condition(&p, "Ready").last_transition_time.clone().unwrap().0;
        assert!(became.duration_since(started).as_secs() >= 5, "{case}: ready {became} after start {started}");
        let case = format!("{describe} / should be ready immediately after startupProbe succeeds [NodeConformance]");
        eventually(20 * S, &case, || async { ready(n("startup-then-ready")).await.then_some(()) }).await;
    }

    // What must not happen, over ten seconds.
    tokio::time::sleep(10 * S).await;
    for (prefix, describe) in [("", "Probing container"), ("sc-", "Probing restartable init container")] {
        for (name, it) in [
            ("readiness-delay", "with readiness probe should not be ready before initial delay and never restart [NodeConformance] [Conformance]"),
            ("readiness-fails", "with readiness probe that fails should never be ready and never restart [NodeConformance] [Conformance]"),
            ("liveness-exec-ok", "should *not* be restarted with a exec \"cat /tmp/health\" liveness probe [NodeConformance] [Conformance]"),
            ("liveness-http-ok", "should *not* be restarted with a /healthz http liveness probe [NodeConformance] [Conformance]"),
            ("liveness-tcp-ok", "should *not* be restarted with a tcp:8080 liveness probe [NodeConformance] [Conformance]"),
            ("readiness-timeout", "should not be ready with an exec readiness probe timeout [MinimumKubeletVersion:1.20] [NodeConformance] [Conformance]"),
            ("startup-delays", "should *not* be restarted by liveness probe because startup probe delays it [NodeConformance]"),
            ("liveness-redirect-remote", "should *not* be restarted with a non-local redirect http liveness probe [NodeConformance]"),
        ] {
            let name = format!("{prefix}{name}");
            if restarts(name.clone()).await != 0 {
                let p = r.pods.get(&name).await.unwrap();
                let st = p.status.unwrap_or_default();
                let c = st.container_statuses.into_iter().flatten().chain(st.init_container_statuses.into_iter().flatten()).find(|s| s.name == "c");
                panic!("{describe} / {it}: {name} restarted: {}", serde_json::to_string(&c).unwrap());
            }
        }
        for name in ["readiness-fails", "readiness-timeout"] {
            assert!(!ready(format!("{prefix}{name}")).await, "{describe}: {name} never ready");
        }
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.client.clone(), "default");
        let pod_name = format!("{prefix}liveness-redirect-remote");
        let warned = events.list(&Default::default()).await.unwrap().items.iter().any(|e| {
            e.involved_object.name.as_deref() == Some(pod_name.as_str()) && e.reason.as_deref() == Some("ProbeWarning") && e.message.as_deref().is_some_and(|m| m.contains("Probe terminated redirects"))
        });
        let events_v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
        let warned = warned || events_v1.list(&Default::default()).await.unwrap().items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod_name.as_str()) && e.reason.as_deref() == Some("ProbeWarning") && e.note.as_deref().is_some_and(|m| m.contains("Probe terminated redirects"))
        });
        assert!(warned, "{describe} / should *not* be restarted with a non-local redirect http liveness probe: a ProbeWarning event");
    }
}

/// Deletes a running pod (with `grace`, or its own) and says how long it
/// took to go.
async fn deleted_within(r: &Run<'_>, name: &str, grace: Option<i64>) -> Duration {
    r.phase_is(name, "Running").await;
    let t = std::time::Instant::now();
    let dp = kube::api::DeleteParams { grace_period_seconds: grace.map(|g| g as u32), ..Default::default() };
    r.pods.delete(name, &dp).await.unwrap();
    eventually(120 * S, &format!("{name} gone"), || async { r.pods.get(name).await.is_err().then_some(()) }).await;
    t.elapsed()
}

/// Pods (readiness gates), Lifecycle Sleep Hook, PodOSRejection, Kubelet
/// (deleting a failing pod, hostAliases with hostNetwork), the rest of
/// Security Context, Container Runtime's expected status, Secrets' env
/// prefixes and Sysctls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_sleep_hooks_os_rejection_and_the_rest() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    secrets
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "secret-prefixes"}, "stringData": {"data-1": "value-1", "data_2": "value-2"}})).unwrap())
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    cms.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "cm-prefixes"}, "data": {"data-1": "value-1", "data_2": "value-2"}})).unwrap())
        .await
        .unwrap();
    let classes: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(c.client.clone());
    classes.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "plain"}, "handler": "runc"})).unwrap()).await.unwrap();
    let forever = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
    let sleeper = |name: &str, grace: i64, seconds: i64| {
        pod(name, &node, serde_json::json!({"restartPolicy": "Always", "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", forever], "lifecycle": {"preStop": {"sleep": {"seconds": seconds}}}}]}))
    };
    let sc = |name: &str, script: &str, sc: serde_json::Value| pod(name, &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", script], "securityContext": sc}]}));
    let mut all = vec![
        pod("gated", &node, serde_json::json!({"restartPolicy": "Always", "readinessGates": [{"conditionType": "k8s.io/test-condition1"}, {"conditionType": "k8s.io/test-condition2"}], "containers": [sh(forever)]})),
        sleeper("sleep-valid", 30, 5),
        sleeper("sleep-reduce", 100, 50),
        sleeper("sleep-zero", 30, 0),
        pod("sleep-terminated", &node, serde_json::json!({"terminationGracePeriodSeconds": 30,
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "exit 0"], "lifecycle": {"preStop": {"sleep": {"seconds": 20}}}}]})),
        pod("windows", &node, serde_json::json!({"os": {"name": "windows"}, "containers": [sh("true")]})),
        pod("fails-delete", &node, serde_json::json!({"containers": [sh("/bin/false")]})),
        pod("aliases-hostnet", &node, serde_json::json!({"hostNetwork": true, "hostAliases": [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}], "containers": [sh("cat /etc/hosts")]})),
        sc("uid-0", "id -u", serde_json::json!({"runAsUser": 0})),
        sc("escalation-unset", "grep NoNewPrivs /proc/self/status", serde_json::json!({"runAsUser": 1000})),
        sc("escalation-true", "grep NoNewPrivs /proc/self/status", serde_json::json!({"runAsUser": 1000, "allowPrivilegeEscalation": true})),
        pod("secret-prefixes", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "envFrom": [{"secretRef": {"name": "secret-prefixes"}}, {"prefix": "-", "secretRef": {"name": "secret-prefixes"}}, {"prefix": "1", "secretRef": {"name": "secret-prefixes"}}, {"prefix": ".", "secretRef": {"name": "secret-prefixes"}}]}]})),
        pod("sysctls", &node, serde_json::json!({"securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}, {"name": "net/ipv4/ip_local_port_range", "value": "1024 65000"}]},
            "containers": [sh("cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_local_port_range")]})),
        pod("cm-prefixes", &node, serde_json::json!({"containers": [{"name": "c", "image": BUSYBOX, "command": ["env"],
            "envFrom": [{"configMapRef": {"name": "cm-prefixes"}}, {"prefix": "-", "configMapRef": {"name": "cm-prefixes"}}, {"prefix": "1", "configMapRef": {"name": "cm-prefixes"}}, {"prefix": ".", "configMapRef": {"name": "cm-prefixes"}}]}]})),
        pod("runtimeclass-plain", &node, serde_json::json!({"runtimeClassName": "plain", "containers": [sh("true")]})),
        pod("ephemeral-target", &node, serde_json::json!({"restartPolicy": "Always", "containers": [sh(forever)]})),
        pod("sysctl-unsafe", &node, serde_json::json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "10000000000"}]}, "containers": [sh("true")]})),
    ];
    // Container Runtime / when starting a container that exits: each restart
    // policy against an exit 0 and an exit 1 container.
    for (policy, code) in [("Always", 0), ("Always", 1), ("OnFailure", 0), ("OnFailure", 1), ("Never", 0), ("Never", 1)] {
        let name = format!("exits-{}-{code}", policy.to_lowercase());
        all.push(pod(&name, &node, serde_json::json!({"restartPolicy": policy, "containers": [sh(&format!("sleep 1; exit {code}"))]})));
    }
    for p in all {
        r.create(p).await;
    }
    let pods = &r.pods;

    // Pods / should support pod readiness gates [NodeConformance].
    let case = "Pods / should support pod readiness gates [NodeConformance]";
    r.phase_is("gated", "Running").await;
    let ready_of = |p: &Pod| condition(p, "Ready").clone();
    let p = eventually(30 * S, case, || async {
        let p = pods.get("gated").await.ok()?;
        (condition(&p, "ContainersReady").status == "True").then_some(p)
    })
    .await;
    let ready = ready_of(&p);
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("False", Some("ReadinessGatesNotReady")), "{case}: {ready:?}");
    assert_eq!(
        ready.message.as_deref(),
        Some("corresponding condition of pod readiness gate \"k8s.io/test-condition1\" does not exist., corresponding condition of pod readiness gate \"k8s.io/test-condition2\" does not exist."),
        "{case}"
    );
    let gate = |t: &str, status: &str| serde_json::json!({"status": {"conditions": [{"type": t, "status": status}]}});
    pods.patch_status("gated", &PatchParams::default(), &Patch::Strategic(gate("k8s.io/test-condition1", "True"))).await.unwrap();
    tokio::time::sleep(3 * S).await;
    assert_eq!(ready_of(&pods.get("gated").await.unwrap()).status, "False", "{case}: one gate is not enough");
    pods.patch_status("gated", &PatchParams::default(), &Patch::Strategic(gate("k8s.io/test-condition2", "True"))).await.unwrap();
    eventually(30 * S, case, || async { (ready_of(&pods.get("gated").await.ok()?).status == "True").then_some(()) }).await;
    pods.patch_status("gated", &PatchParams::default(), &Patch::Strategic(gate("k8s.io/test-condition1", "False"))).await.unwrap();
    eventually(30 * S, case, || async { (ready_of(&pods.get("gated").await.ok()?).status == "False").then_some(()) }).await;

    // Lifecycle Sleep Hook [NodeConformance].
    let took = deleted_within(&r, "sleep-valid", None).await;
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(30), "Lifecycle Sleep Hook / ... / valid prestop hook using sleep action [NodeConformance]: {took:?}");
    let took = deleted_within(&r, "sleep-reduce", Some(2)).await;
    assert!(took < Duration::from_secs(15), "Lifecycle Sleep Hook / ... / reduce GracePeriodSeconds during runtime [NodeConformance]: {took:?}");
    let took = deleted_within(&r, "sleep-zero", None).await;
    assert!(took < Duration::from_secs(10), "Lifecycle sleep action zero value / ... / prestop hook using sleep action with zero duration [NodeConformance]: {took:?}");
    r.finished("sleep-terminated").await;
    let t = std::time::Instant::now();
    r.pods.delete("sleep-terminated", &Default::default()).await.unwrap();
    eventually(60 * S, "sleep-terminated gone", || async { pods.get("sleep-terminated").await.is_err().then_some(()) }).await;
    assert!(t.elapsed() < Duration::from_secs(15), "Lifecycle Sleep Hook / ... / ignore terminated container [NodeConformance]: {:?}", t.elapsed());

    // PodOSRejection [NodeConformance] / Kubelet.
    let p = r.phase_is("windows", "Failed").await;
    assert_eq!(p.status.as_ref().unwrap().reason.as_deref(), Some("PodOSNotSupported"), "PodOSRejection / Kubelet / [LinuxOnly] should reject pod when the node OS doesn't match pod's OS [NodeConformance]");

    // Kubelet [sig-node].
    r.finished("fails-delete").await;
    r.pods.delete("fails-delete", &Default::default()).await.unwrap();
    eventually(30 * S, "Kubelet / when scheduling a busybox command that always fails in a pod / should be possible to delete [NodeConformance] [Conformance]", || async {
        pods.get("fails-delete").await.is_err().then_some(())
    })
    .await;
    let out = r.output("aliases-hostnet").await;
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["123.45.67.89", "foo", "bar"]),
        "Kubelet with pods in a privileged namespace / when scheduling an agnhost Pod with hostAliases and hostNetwork / should write entries to /etc/hosts when hostNetwork is enabled [NodeConformance]: {out}"
    );

    // Security Context [sig-node].
    assert_eq!(r.output("uid-0").await.trim(), "0", "Security Context / When creating a container with runAsUser / should run the container with uid 0 [LinuxOnly] [NodeConformance]");
    assert_eq!(r.output("escalation-unset").await.split_whitespace().nth(1), Some("0"), "Security Context / when creating containers with AllowPrivilegeEscalation / should allow privilege escalation when not explicitly set and uid != 0 [LinuxOnly] [NodeConformance]");
    assert_eq!(r.output("escalation-true").await.split_whitespace().nth(1), Some("0"), "Security Context / when creating containers with AllowPrivilegeEscalation / should allow privilege escalation when true [LinuxOnly] [NodeConformance]");

    // Secrets [sig-node]: every prefix kubelet accepts reaches the container.
    let env = env_of(&r.output("secret-prefixes").await);
    for k in ["data-1", "data_2", "-data-1", "1data-1", ".data-1", ".data_2"] {
        assert!(env.contains_key(k), "Secrets / should be consumable as environment variable names variable names with various prefixes [Conformance]: {k} in {env:?}");
    }

    let env = env_of(&r.output("cm-prefixes").await);
    for k in ["data-1", "data_2", "-data-1", "1data-1", ".data-1", ".data_2"] {
        assert!(env.contains_key(k), "ConfigMap / should be consumable as environment variable names with various prefixes [Conformance]: {k} in {env:?}");
    }
    r.output("runtimeclass-plain").await; // RuntimeClass / should schedule a Pod requesting a RuntimeClass without PodOverhead [NodeConformance] [Conformance]
    assert!(r.pods.get("runtimeclass-plain").await.unwrap().spec.unwrap().overhead.is_none());

    // Ephemeral Containers [NodeConformance] / should update the ephemeral containers in an existing pod [Conformance].
    let case = "Ephemeral Containers / should update the ephemeral containers in an existing pod [Conformance]";
    r.phase_is("ephemeral-target", "Running").await;
    let ec = |name: &str| serde_json::json!({"name": name, "image": BUSYBOX, "command": ["sh", "-c", "echo polo; sleep 3600"], "stdin": true, "tty": true});
    pods.patch_subresource("ephemeralcontainers", "ephemeral-target", &PatchParams::default(), &Patch::Strategic(serde_json::json!({"spec": {"ephemeralContainers": [ec("debugger")]}})))
        .await
        .unwrap();
    pods.patch_subresource("ephemeralcontainers", "ephemeral-target", &PatchParams::default(), &Patch::Strategic(serde_json::json!({"spec": {"ephemeralContainers": [ec("debugger"), ec("debugger2")]}})))
        .await
        .unwrap();
    let p = eventually(60 * S, case, || async {
        let p = pods.get("ephemeral-target").await.ok()?;
        let st = p.status.as_ref()?.ephemeral_container_statuses.clone()?;
        (st.len() == 2 && st.iter().all(|s| s.state.as_ref().is_some_and(|x| x.running.is_some()))).then_some(p)
    })
    .await;
    assert_eq!(p.spec.unwrap().ephemeral_containers.unwrap().len(), 2, "{case}");
    assert!(r.logs("ephemeral-target", "debugger2").await.contains("polo"), "{case}");

    // Sysctls [LinuxOnly] [NodeConformance].
    assert_eq!(r.output("sysctls").await.split_whitespace().collect::<Vec<_>>(), ["1", "1024", "65000"], "Sysctls / should support sysctls [Conformance] and should support sysctls with slashes as separator [NodeConformance]");
    let p = r.phase_is("sysctl-unsafe", "Failed").await;
    assert_eq!(p.status.as_ref().unwrap().reason.as_deref(), Some("SysctlForbidden"), "Sysctls / should not launch unsafe, but not explicitly enabled sysctls on the node [MinimumKubeletVersion:1.21] [NodeConformance]");

    // Container Runtime / blackbox test / when starting a container that exits / should run with the expected status [NodeConformance] [Conformance].
    let case = "Container Runtime / ... / should run with the expected status [NodeConformance] [Conformance]";
    for (policy, code, phase, restarts) in [("always", 0, "Running", true), ("always", 1, "Running", true), ("onfailure", 0, "Succeeded", false), ("onfailure", 1, "Running", true), ("never", 0, "Succeeded", false), ("never", 1, "Failed", false)] {
        let name = format!("exits-{policy}-{code}");
        let p = eventually(60 * S, &name, || async {
            let p = pods.get(&name).await.ok()?;
            let n = p.status.as_ref()?.container_statuses.as_ref()?.first()?.restart_count;
            let phase_ok = p.status.as_ref()?.phase.as_deref() == Some(phase);
            (phase_ok && (n >= 1) == restarts).then_some(p)
        })
        .await;
        if !restarts {
            let t = terminated(&p, "c");
            assert_eq!(t.exit_code, code, "{case}: {name}");
        }
    }
}

/// Projected configMap, secret and downwardAPI volumes, the rest of Secret
/// volumes, optional updates, HostPath, and Variable Expansion's failing
/// subpaths ([sig-storage] and [sig-node]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projected_volumes_optional_updates_host_path_and_failing_subpaths() {
    let c = Cluster::start().await;
    let _agent = c.join().await;
    let r = Run::new(&c);
    let node = r.node();
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.client.clone(), "default");
    let data = serde_json::json!({"data-1": "value-1", "data-2": "value-2", "data-3": "value-3"});
    let cm = |name: &str, d: serde_json::Value| serde_json::from_value::<ConfigMap>(serde_json::json!({"metadata": {"name": name}, "data": d})).unwrap();
    let secret = |name: &str, ns: &str, d: serde_json::Value| serde_json::from_value::<Secret>(serde_json::json!({"metadata": {"name": name, "namespace": ns}, "stringData": d})).unwrap();
    cms.create(&PostParams::default(), &cm("projected-cm", data.clone())).await.unwrap();
    cms.create(&PostParams::default(), &cm("projected-cm-upd", serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    secrets.create(&PostParams::default(), &secret("projected-secret", "default", data.clone())).await.unwrap();
    // A Secret of the same name elsewhere must not leak in.
    let other: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
    other.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "elsewhere"}})).unwrap()).await.unwrap();
    Api::<Secret>::namespaced(c.client.clone(), "elsewhere")
        .create(&PostParams::default(), &secret("projected-secret", "elsewhere", serde_json::json!({"data-1": "not-this-one"})))
        .await
        .unwrap();
    // For the optional-updates cases: one of each that will be deleted, one updated; the third is created later.
    for kind in ["cm", "pcm"] {
        cms.create(&PostParams::default(), &cm(&format!("{kind}-test-opt-del"), serde_json::json!({"data-1": "value-1"}))).await.unwrap();
        cms.create(&PostParams::default(), &cm(&format!("{kind}-test-opt-upd"), serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    }
    for kind in ["s", "ps"] {
        secrets.create(&PostParams::default(), &secret(&format!("{kind}-test-opt-del"), "default", serde_json::json!({"data-1": "value-1"}))).await.unwrap();
        secrets.create(&PostParams::default(), &secret(&format!("{kind}-test-opt-upd"), "default", serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    }

    let one = |name: &str, sc: serde_json::Value, vol: serde_json::Value, script: &str| {
        pod(name, &node, serde_json::json!({"securityContext": sc, "volumes": [vol], "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]}))
    };
    let projected = |source: serde_json::Value, default_mode: Option<i32>| {
        let mut v = serde_json::json!({"name": "v", "projected": {"sources": [source]}});
        if let Some(m) = default_mode {
            v["projected"]["defaultMode"] = serde_json::json!(m);
        }
        v
    };
    let pcm = |items: Option<serde_json::Value>| {
        let mut s = serde_json::json!({"configMap": {"name": "projected-cm"}});
        if let Some(i) = items {
            s["configMap"]["items"] = i;
        }
        s
    };
    let psec = |items: Option<serde_json::Value>| {
        let mut s = serde_json::json!({"secret": {"name": "projected-secret"}});
        if let Some(i) = items {
            s["secret"]["items"] = i;
        }
        s
    };
    let map2 = serde_json::json!([{"key": "data-2", "path": "path/to/data-2"}]);
    let map2_mode = serde_json::json!([{"key": "data-2", "path": "path/to/data-2", "mode": 0o400}]);
    let map1 = serde_json::json!([{"key": "data-1", "path": "new-path-data-1"}]);
    let map1_mode = serde_json::json!([{"key": "data-1", "path": "new-path-data-1", "mode": 0o400}]);
    let none = serde_json::json!({});
    let nonroot = serde_json::json!({"runAsUser": 1000});
    let dapi_item = |path: &str, field: serde_json::Value| {
        let mut i = serde_json::json!({"path": path});
        for (k, v) in field.as_object().unwrap() {
            i[k] = v.clone();
        }
        i
    };
    let resources = |c: &str, r: &str| serde_json::json!({"resourceFieldRef": {"containerName": c, "resource": r}});
    let mut all = vec![
        one("pcm", none.clone(), projected(pcm(None), None), &describe("/etc/v/data-1", "/etc/v")),
        one("pcm-mode", none.clone(), projected(pcm(None), Some(0o400)), "stat -L -c %A /etc/v/data-1"),
        one("pcm-nonroot", nonroot.clone(), projected(pcm(None), None), "cat /etc/v/data-1"),
        one("pcm-map", none.clone(), projected(pcm(Some(map2.clone())), None), "stat -L -c %A /etc/v/path/to/data-2 && cat /etc/v/path/to/data-2"),
        one("pcm-map-mode", none.clone(), projected(pcm(Some(map2_mode)), None), "stat -L -c %A /etc/v/path/to/data-2 && cat /etc/v/path/to/data-2"),
        one("pcm-map-nonroot", nonroot.clone(), projected(pcm(Some(map2)), None), "cat /etc/v/path/to/data-2"),
        pod("pcm-multi", &node, serde_json::json!({"volumes": [projected(pcm(None), None), {"name": "w", "projected": {"sources": [pcm(None)]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/v/data-1 /etc/w/data-1"],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}, {"name": "w", "mountPath": "/etc/w"}]}]})),
        pod("pcm-upd", &node, serde_json::json!({"restartPolicy": "Always", "volumes": [projected(serde_json::json!({"configMap": {"name": "projected-cm-upd"}}), None)],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "while true; do cat /etc/v/data-1; echo; sleep 1; done"], "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        one("psec", none.clone(), projected(psec(None), None), &describe("/etc/v/data-1", "/etc/v")),
        one("psec-mode", none.clone(), projected(psec(None), Some(0o400)), "stat -L -c %A /etc/v/data-1"),
        one("psec-nonroot", serde_json::json!({"runAsUser": 1000, "fsGroup": 1001}), projected(psec(None), Some(0o440)), "stat -L -c '%A %g' /etc/v/data-1 && cat /etc/v/data-1"),
        one("psec-map", none.clone(), projected(psec(Some(map1.clone())), None), "stat -L -c %A /etc/v/new-path-data-1 && cat /etc/v/new-path-data-1"),
        one("psec-map-mode", none.clone(), projected(psec(Some(map1_mode)), None), "stat -L -c %A /etc/v/new-path-data-1 && cat /etc/v/new-path-data-1"),
        pod("psec-multi", &node, serde_json::json!({"volumes": [projected(psec(None), None), {"name": "w", "projected": {"sources": [psec(None)]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/v/data-1 /etc/w/data-1"],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}, {"name": "w", "mountPath": "/etc/w"}]}]})),
        one("secret-map", none.clone(), serde_json::json!({"name": "v", "secret": {"secretName": "projected-secret", "items": map1}}), "stat -L -c %A /etc/v/new-path-data-1 && cat /etc/v/new-path-data-1"),
        pod("secret-multi", &node, serde_json::json!({"volumes": [{"name": "v", "secret": {"secretName": "projected-secret"}}, {"name": "w", "secret": {"secretName": "projected-secret"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /etc/v/data-1 /etc/w/data-1"],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}, {"name": "w", "mountPath": "/etc/w"}]}]})),
        pod("pdapi", &node, serde_json::json!({"volumes": [{"name": "v", "projected": {"sources": [{"downwardAPI": {"items": [
                dapi_item("podname", serde_json::json!({"fieldRef": {"fieldPath": "metadata.name"}})),
                dapi_item("podname-mode", serde_json::json!({"fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400})),
                dapi_item("cpu_limit", resources("c", "limits.cpu")), dapi_item("memory_limit", resources("c", "limits.memory")),
                dapi_item("cpu_request", resources("c", "requests.cpu")), dapi_item("memory_request", resources("c", "requests.memory"))]}}]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "resources": {"limits": {"cpu": "1250m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "32Mi"}},
                "command": ["sh", "-c", "for f in podname cpu_limit memory_limit cpu_request memory_request; do echo $f=$(cat /etc/v/$f); done; stat -L -c 'mode=%A' /etc/v/podname-mode"],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        pod("pdapi-defaults", &node, serde_json::json!({"volumes": [{"name": "v", "projected": {"defaultMode": 0o400, "sources": [{"downwardAPI": {"items": [
                dapi_item("podname", serde_json::json!({"fieldRef": {"fieldPath": "metadata.name"}})),
                dapi_item("cpu_limit", resources("c", "limits.cpu")), dapi_item("memory_limit", resources("c", "limits.memory"))]}}]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "for f in cpu_limit memory_limit; do echo $f=$(cat /etc/v/$f); done; stat -L -c 'mode=%A' /etc/v/podname"],
                "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        pod("pdapi-upd", &node, serde_json::json!({"restartPolicy": "Always", "volumes": [{"name": "v", "projected": {"sources": [{"downwardAPI": {"items": [
                dapi_item("labels", serde_json::json!({"fieldRef": {"fieldPath": "metadata.labels"}})), dapi_item("annotations", serde_json::json!({"fieldRef": {"fieldPath": "metadata.annotations"}}))]}}]}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "while true; do cat /etc/v/labels /etc/v/annotations; echo; sleep 1; done"], "volumeMounts": [{"name": "v", "mountPath": "/etc/v"}]}]})),
        pod("hostpath-mode", &node, serde_json::json!({"volumes": [{"name": "v", "hostPath": {"path": "/tmp"}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["stat", "-c", "%A", "/test-volume"], "volumeMounts": [{"name": "v", "mountPath": "/test-volume"}]}]})),
        pod("hostpath-rw", &node, serde_json::json!({"volumes": [{"name": "v", "hostPath": {"path": format!("/tmp/nodelet-conformance-{node}"), "type": "DirectoryOrCreate"}}],
            "initContainers": [{"name": "writer", "image": BUSYBOX, "command": ["sh", "-c", "echo 'mount-tester new file' > /test-volume/test-file && chmod 0644 /test-volume/test-file && mkdir -p /test-volume/sub-path"],
                "volumeMounts": [{"name": "v", "mountPath": "/test-volume"}]},
                {"name": "sub-writer", "image": BUSYBOX, "command": ["sh", "-c", "echo 'mount-tester new file' > /sub/test-file"],
                "volumeMounts": [{"name": "v", "mountPath": "/sub", "subPath": "sub-path"}]}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "cat /test-volume/test-file /test-volume/sub-path/test-file"], "volumeMounts": [{"name": "v", "mountPath": "/test-volume"}]}]})),
    ];
    for (name, value) in [("expansion-backticks", ".."), ("expansion-absolute", "/tmp")] {
        all.push(pod(name, &node, serde_json::json!({"volumes": [{"name": "workdir1", "emptyDir": {}}],
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["true"], "env": [{"name": "POD_NAME", "value": value}],
                "volumeMounts": [{"name": "workdir1", "mountPath": "/logscontainer", "subPathExpr": "$(POD_NAME)"}]}]})));
    }
    // Optional updates: configMap, projected configMap, secret, projected secret.
    let optional = |kind: &str| -> serde_json::Value {
        let vol = |name: String| match kind {
            "cm" => serde_json::json!({"configMap": {"name": name, "optional": true}}),
            "pcm" => serde_json::json!({"projected": {"sources": [{"configMap": {"name": name, "optional": true}}]}}),
            "s" => serde_json::json!({"secret": {"secretName": name, "optional": true}}),
            _ => serde_json::json!({"projected": {"sources": [{"secret": {"name": name, "optional": true}}]}}),
        };
        let mut vols = Vec::new();
        let mut mounts = Vec::new();
        for which in ["del", "upd", "create"] {
            let mut v = vol(format!("{kind}-test-opt-{which}"));
            v["name"] = serde_json::json!(which);
            vols.push(v);
            mounts.push(serde_json::json!({"name": which, "mountPath": format!("/etc/{which}")}));
        }
        serde_json::json!({"restartPolicy": "Always", "volumes": vols, "containers": [{"name": "c", "image": BUSYBOX, "volumeMounts": mounts,
            "command": ["sh", "-c", "while true; do for d in del upd create; do for f in data-1 data-3; do [ -f /etc/$d/$f ] && echo \"$d/$f=$(cat /etc/$d/$f)\" || echo \"$d/$f missing\"; done; done; sleep 1; done"]}]})
    };
    for kind in ["cm", "pcm", "s", "ps"] {
        all.push(pod(&format!("optional-{kind}"), &node, optional(kind)));
    }
    for p in all {
        r.create(p).await;
    }

    // Projected configMap [sig-storage].
    assert_eq!(r.output("pcm").await.lines().collect::<Vec<_>>()[..2], ["-rw-r--r--", "value-1"], "Projected configMap / should be consumable from pods in volume [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-mode").await.trim(), "-r--------", "Projected configMap / should be consumable from pods in volume with defaultMode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-nonroot").await, "value-1", "Projected configMap / should be consumable from pods in volume as non-root [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-map").await.lines().collect::<Vec<_>>(), ["-rw-r--r--", "value-2"], "Projected configMap / should be consumable from pods in volume with mappings [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-map-mode").await.lines().collect::<Vec<_>>(), ["-r--------", "value-2"], "Projected configMap / should be consumable from pods in volume with mappings and Item mode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-map-nonroot").await, "value-2", "Projected configMap / should be consumable from pods in volume with mappings as non-root [NodeConformance] [Conformance]");
    assert_eq!(r.output("pcm-multi").await, "value-1value-1", "Projected configMap / should be consumable in multiple volumes in the same pod [NodeConformance] [Conformance]");
    r.phase_is("pcm-upd", "Running").await;
    eventually(30 * S, "value-1", || async { r.logs("pcm-upd", "c").await.lines().any(|l| l == "value-1").then_some(()) }).await;
    cms.patch("projected-cm-upd", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"data-1": "value-2"}}))).await.unwrap();
    eventually(90 * S, "Projected configMap / updates should be reflected in volume [NodeConformance] [Conformance]", || async {
        r.logs("pcm-upd", "c").await.lines().any(|l| l == "value-2").then_some(())
    })
    .await;

    // Projected secret and Secrets [sig-storage].
    assert_eq!(r.output("psec").await.lines().collect::<Vec<_>>()[..2], ["-rw-r--r--", "value-1"], "Projected secret / should be consumable from pods in volume [NodeConformance] [Conformance]");
    assert_eq!(r.output("psec-mode").await.trim(), "-r--------", "Projected secret / should be consumable from pods in volume with defaultMode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("psec-nonroot").await.lines().collect::<Vec<_>>(), ["-r--r----- 1001", "value-1"], "Projected secret / should be consumable from pods in volume as non-root with defaultMode and fsGroup set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("psec-map").await.lines().collect::<Vec<_>>(), ["-rw-r--r--", "value-1"], "Projected secret / should be consumable from pods in volume with mappings [NodeConformance] [Conformance]");
    assert_eq!(r.output("psec-map-mode").await.lines().collect::<Vec<_>>(), ["-r--------", "value-1"], "Projected secret / should be consumable from pods in volume with mappings and Item Mode set [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(r.output("psec-multi").await, "value-1value-1", "Projected secret / should be consumable in multiple volumes in a pod [NodeConformance] [Conformance]; and regardless of a different secret existing with same name in different namespace [NodeConformance]");
    assert_eq!(r.output("secret-map").await.lines().collect::<Vec<_>>(), ["-rw-r--r--", "value-1"], "Secrets / should be consumable from pods in volume with mappings [NodeConformance] [Conformance]");
    assert_eq!(r.output("secret-multi").await, "value-1value-1", "Secrets / should be consumable in multiple volumes in a pod [NodeConformance] [Conformance]; and regardless of a different secret existing with same name in different namespace [NodeConformance] [Conformance]");

    // Projected downwardAPI [sig-storage].
    let env = env_of(&r.output("pdapi").await);
    assert_eq!(env["podname"], "pdapi", "Projected downwardAPI / should provide podname only [NodeConformance] [Conformance]");
    assert_eq!(env["mode"], "-r--------", "Projected downwardAPI / should set mode on item file [LinuxOnly] [NodeConformance] [Conformance]");
    assert_eq!(env["cpu_limit"], "2", "Projected downwardAPI / should provide container's cpu limit [NodeConformance] [Conformance]");
    assert_eq!(env["memory_limit"], "134217728", "Projected downwardAPI / should provide container's memory limit [NodeConformance] [Conformance]");
    assert_eq!(env["cpu_request"], "1", "Projected downwardAPI / should provide container's cpu request [NodeConformance] [Conformance]");
    assert_eq!(env["memory_request"], "33554432", "Projected downwardAPI / should provide container's memory request [NodeConformance] [Conformance]");
    let env = env_of(&r.output("pdapi-defaults").await);
    let (cpu_millis, memory_bytes) = node_allocatable(&c).await;
    let cores = (cpu_millis + 999) / 1000;
    assert_eq!(env["cpu_limit"], cores.to_string(), "Projected downwardAPI / should provide node allocatable (cpu) as default cpu limit if the limit is not set [NodeConformance] [Conformance]");
    assert_eq!(env["memory_limit"], memory_bytes.to_string(), "Projected downwardAPI / should provide node allocatable (memory) as default memory limit if the limit is not set [NodeConformance] [Conformance]");
    assert_eq!(env["mode"], "-r--------", "Projected downwardAPI / should set DefaultMode on files [LinuxOnly] [NodeConformance] [Conformance]");
    labels_and_annotations_follow(&r, "pdapi-upd", "Projected downwardAPI").await;

    // HostPath [NodeConformance].
    let mode = r.output("hostpath-mode").await;
    assert!(mode.trim().starts_with('d') && mode.trim().ends_with("rwxrwxrwt"), "HostPath / should give a volume the correct mode [LinuxOnly] [NodeConformance]: {mode}");
    let out = r.output("hostpath-rw").await;
    assert_eq!(out, "mount-tester new file\nmount-tester new file\n", "HostPath / should support r/w [NodeConformance] and should support subPath [NodeConformance]");
    let _ = std::fs::remove_dir_all(format!("/tmp/nodelet-conformance-{node}"));

    // Variable Expansion [sig-node]: a subPathExpr that leaves its volume never starts the container.
    for (name, case) in [
        ("expansion-backticks", "Variable Expansion / should fail substituting values in a volume subpath with backticks [Slow] [Conformance]"),
        ("expansion-absolute", "Variable Expansion / should fail substituting values in a volume subpath with absolute path [Slow] [Conformance]"),
    ] {
        let pods = &r.pods;
        eventually(30 * S, case, || async {
            let p = pods.get(name).await.ok()?;
            let w = container_status(&p, "c").state.as_ref()?.waiting.clone()?;
            (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(())
        })
        .await;
        assert!(c.node.containers_named(name).await.is_empty(), "{case}: never created");
    }

    // Optional updates [NodeConformance] [Conformance]: the del volume's
    // object is deleted (its files go), the upd one gains data-3, the
    // create one appears.
    for kind in ["cm", "pcm", "s", "ps"] {
        r.phase_is(&format!("optional-{kind}"), "Running").await;
    }
    cms.delete("cm-test-opt-del", &Default::default()).await.unwrap();
    cms.delete("pcm-test-opt-del", &Default::default()).await.unwrap();
    secrets.delete("s-test-opt-del", &Default::default()).await.unwrap();
    secrets.delete("ps-test-opt-del", &Default::default()).await.unwrap();
    for kind in ["cm", "pcm"] {
        cms.patch(&format!("{kind}-test-opt-upd"), &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"data-3": "value-3"}}))).await.unwrap();
        cms.create(&PostParams::default(), &cm(&format!("{kind}-test-opt-create"), serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    }
    for kind in ["s", "ps"] {
        secrets.patch(&format!("{kind}-test-opt-upd"), &PatchParams::default(), &Patch::Merge(serde_json::json!({"stringData": {"data-3": "value-3"}}))).await.unwrap();
        secrets.create(&PostParams::default(), &secret(&format!("{kind}-test-opt-create"), "default", serde_json::json!({"data-1": "value-1"}))).await.unwrap();
    }
    for (kind, case) in [
        ("cm", "ConfigMap / optional updates should be reflected in volume [NodeConformance] [Conformance]"),
        ("pcm", "Projected configMap / optional updates should be reflected in volume [NodeConformance] [Conformance]"),
        ("s", "Secrets / optional updates should be reflected in volume [NodeConformance] [Conformance]"),
        ("ps", "Projected secret / optional updates should be reflected in volume [NodeConformance] [Conformance]"),
    ] {
        let name = format!("optional-{kind}");
        eventually(120 * S, case, || async {
            let log = r.logs(&name, "c").await;
            let last: Vec<&str> = log.lines().rev().take(6).collect();
            let want = ["del/data-1 missing", "upd/data-3=value-3", "create/data-1=value-1"];
            want.iter().all(|w| last.contains(w)).then_some(())
        })
        .await;
    }
}
