//! Test harness: a private containerd per test, in a network namespace of
//! its own (so its CNI bridge and pod networks never touch the host's), with
//! the locally built images imported through `nodelet images import`; and the
//! real `nodelet` binary started in that namespace.
//!
//! Everything a test makes is removed when its `Node` drops: pods (through
//! CRI), containerd, the namespace, the pod cgroups and the directories.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nodelet::runtime::cri;
use nodelet::runtime::remote::RemoteRuntime;
use nodelet::runtime::Runtime;

pub mod apiserver;
pub mod cluster;
pub mod csi;
pub mod deviceplugin;
pub mod dra;
pub mod fabric;
pub mod logind;
pub mod registry;
pub mod spdy;
pub mod vm;

pub const BUSYBOX: &str = "nodelet.local/busybox:1";
const CONTAINERD_CONFIG: &str = include_str!("containerd-config.toml");
const CNI_CONFIG: &str = include_str!("cni.conflist");

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The image archives, built once per test process (the build is
/// reproducible, so concurrent test binaries write identical files).
pub fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("NODELET_TEST_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/test-images"));
        if ["busybox.tar", "pause.tar", "entrypoint.tar"].iter().any(|f| !dir.join(f).exists()) {
            let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
            let st = Command::new(repo().join("tests/images/build.sh")).arg(&tmp).status().expect("run build.sh");
            assert!(st.success(), "tests/images/build.sh failed");
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["busybox.tar", "pause.tar", "entrypoint.tar"] {
                std::fs::rename(tmp.join(f), dir.join(f)).unwrap();
            }
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
    .as_path()
}

pub fn enter_netns(name: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{name}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).expect("enter the test network namespace");
        f()
    })
    .join()
    .expect("netns thread")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// One simulated node: a containerd of its own and the directories nodelet
/// uses.
pub struct Node {
    pub id: String,
    pub netns: String,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub manifests: PathBuf,
    pub logs: PathBuf,
    pub cgroup_root: String,
    /// KubeletConfiguration lines every nodelet of this node gets.
    pub config_extra: std::sync::Mutex<String>,
    /// Environment for every nodelet this node runs (a D-Bus address, ...).
    pub env: std::sync::Mutex<Vec<(String, std::ffi::OsString)>>,
    containerd: Option<Child>,
    /// The containerd binary (Debian's, or 1.7 for CDI).
    containerd_bin: PathBuf,
}

/// containerd 1.7 (Debian 13's, unpacked by tests/setup.sh beside the
/// system's 1.6, which cannot inject CDI devices), or `$NODELET_TEST_CONTAINERD17`.
pub fn containerd17() -> PathBuf {
    std::env::var_os("NODELET_TEST_CONTAINERD17")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nodelet-test/containerd-1.7/usr/bin/containerd"))
}

impl Node {
    pub async fn start() -> Node {
        Self::start_with_image_fs(None).await
    }

    /// A node whose pods are dual-stack: the CNI's host-local IPAM gives
    /// each pod an IPv4 and an IPv6 address (fd00:99:0:1::/64).
    pub async fn start_dual_stack() -> Node {
        Self::start_inner(None, true, false).await
    }

    /// A node whose containerd (1.7) injects CDI devices, read from
    /// `<dir>/cdi` (where a test DRA driver writes its specs).
    pub async fn start_cdi() -> Node {
        Self::start_inner(None, false, true).await
    }

    /// A node whose containerd root (images and snapshots) is a tmpfs of
    /// `mib` MiB: a small image filesystem tests can fill.
    pub async fn start_with_image_fs(mib: Option<u64>) -> Node {
        Self::start_inner(mib, false, false).await
    }

    async fn start_inner(mib: Option<u64>, dual_stack: bool, cdi: bool) -> Node {
        remember_failures();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let netns = format!("nlt-{id}");
        let dir = tempfile::Builder::new().prefix("nodelet-test-").tempdir().unwrap();
        let root = dir.path();
        for d in ["cni", "manifests", "logs", "kubelet", "cdi"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let r = root.display().to_string();
        let mut config = CONTAINERD_CONFIG.replace("@ROOT@", &r).replace("@CNI_BIN@", "/usr/lib/cni");
        if vm::in_vm() {
            // The VM's root is its initramfs, which pivot_root cannot leave:
            // runc moves and chroots into the container's root instead.
            config = config.replace("SystemdCgroup = false", "SystemdCgroup = false\n        NoPivotRoot = true");
        }
        let containerd_bin = if cdi {
            config = config.replace("  enable_selinux = false\n", &format!("  enable_selinux = false\n  enable_cdi = true\n  cdi_spec_dirs = [\"{r}/cdi\"]\n"));
            let bin = containerd17();
            assert!(bin.exists(), "{} is missing: run tests/setup.sh (containerd 1.7 from Debian 13 for CDI)", bin.display());
            bin
        } else {
            PathBuf::from("containerd")
        };
        std::fs::write(root.join("config.toml"), config).unwrap();
        std::fs::write(
            root.join("cni/10-pods.conflist"),
            CNI_CONFIG.replace("@ROOT@", &r).replace("@BRIDGE@", "nlt0").replace(
                "[[{ \"subnet\": \"@SUBNET@\" }]]",
                if dual_stack { "[[{ \"subnet\": \"10.99.0.0/24\" }], [{ \"subnet\": \"fd00:99:0:1::/64\" }]]" } else { "[[{ \"subnet\": \"10.99.0.0/24\" }]]" },
            ),
        )
        .unwrap();
        if let Some(mib) = mib {
            std::fs::create_dir_all(root.join("root")).unwrap();
            run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m")]).arg("nodelet-imagefs").arg(root.join("root")));
        }
        run(Command::new("ip").args(["netns", "add", &netns]));
        run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        let child = spawn_containerd(&containerd_bin, root, &netns);
        let sock = root.join("containerd.sock");
        let endpoint = format!("unix://{}", sock.display());
        let mut node = Node {
            cgroup_root: format!("/nodelet-test-{id}"),
            id,
            netns,
            endpoint,
            manifests: root.join("manifests"),
            logs: root.join("logs"),
            config_extra: std::sync::Mutex::new(String::new()),
            env: std::sync::Mutex::new(Vec::new()),
            containerd: Some(child),
            containerd_bin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while RemoteRuntime::connect(&node.endpoint, Duration::from_secs(5)).await.is_err() {
            assert!(Instant::now() < deadline, "containerd did not come up: {}", node.containerd_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let imgs = images();
        let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
            .args(["images", "import", "--address", &node.endpoint])
            .arg(imgs.join("busybox.tar"))
            .arg(imgs.join("pause.tar"))
            .arg(imgs.join("entrypoint.tar"))
            .output()
            .unwrap();
        assert!(out.status.success(), "nodelet images import: {}", String::from_utf8_lossy(&out.stderr));
        node.wait_network_ready().await;
        node
    }

    async fn wait_network_ready(&mut self) {
        let rt = self.cri().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = rt.status().await.unwrap();
            if nodelet::runtime::RuntimeHealth::from_status(&st).network_ready {
                return;
            }
            assert!(Instant::now() < deadline, "CNI never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops containerd (SIGTERM, as systemd does; the shims and so the
    /// containers keep running) and starts it again on the same root.
    pub async fn restart_containerd(&mut self) {
        if let Some(mut old) = self.containerd.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = old.wait();
        }
        self.containerd = Some(spawn_containerd(&self.containerd_bin, self.dir.path(), &self.netns));
        let deadline = Instant::now() + Duration::from_secs(30);
        while RemoteRuntime::connect(&self.endpoint, Duration::from_secs(5)).await.is_err() {
            assert!(Instant::now() < deadline, "containerd did not come back: {}", self.containerd_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub async fn cri(&self) -> RemoteRuntime {
        RemoteRuntime::connect(&self.endpoint, Duration::from_secs(30)).await.expect("CRI connect")
    }

    pub fn node_name(&self) -> String {
        format!("node-{}", self.id)
    }

    /// A KubeletConfiguration for this node, plus extra lines.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("kubelet-config.yaml");
        // The disk thresholds are left out unless a test sets its own: a
        // machine whose disk is 90 % full must not turn the tests' pods away.
        let eviction = if extra.contains("evictionHard") { "" } else { "evictionHard: {memory.available: 100Mi}\n" };
        let body = format!(
            "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\npodLogsDir: {}\ncgroupRoot: {}\n\
             fileCheckFrequency: 20s\n{eviction}{extra}",
            self.logs.display(),
            self.cgroup_root
        );
        std::fs::write(&path, body).unwrap();
        path
    }

    /// The arguments every nodelet of this node runs with.
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "--config".into(),
            self.write_config(&self.config_extra.lock().unwrap().clone()).display().to_string(),
            "--pod-manifest-path".into(),
            self.manifests.display().to_string(),
            "--container-runtime-endpoint".into(),
            self.endpoint.clone(),
            "--root-dir".into(),
            self.dir.path().join("kubelet").display().to_string(),
            "--container-logs-dir".into(),
            self.dir.path().join("containers").display().to_string(),
            "--hostname-override".into(),
            self.node_name(),
            "--crash-loop-backoff-initial".into(),
            "1s".into(),
            "--v".into(),
            "2".into(),
        ]
    }

    /// Starts nodelet in this node's network namespace.
    pub fn nodelet(&self, extra: &[&str]) -> Agent {
        let mut args = self.base_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.nodelet_with(args)
    }

    pub fn nodelet_with(&self, args: Vec<String>) -> Agent {
        self.nodelet_env(args, &[])
    }

    /// nodelet with extra environment variables (NOTIFY_SOCKET, ...).
    pub fn nodelet_env(&self, args: Vec<String>, envs: &[(&str, &std::ffi::OsStr)]) -> Agent {
        self.spawn_agent(Path::new(env!("CARGO_BIN_EXE_nodelet")), args, envs)
    }

    /// `program` (nodelet under another name, e.g. kubelet's) in this
    /// node's network namespace, with the environment every nodelet here gets.
    pub fn spawn_agent(&self, program: &Path, args: Vec<String>, envs: &[(&str, &std::ffi::OsStr)]) -> Agent {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("nodelet-{n}.log"));
        let out = self.dir.path().join(format!("nodelet-{n}.out"));
        let ns = self.netns.clone();
        let mut cmd = Command::new(program);
        cmd.args(&args)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&log).unwrap())
            .env("RUST_LOG", "info,nodelet=debug")
            .envs(self.env.lock().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_os_str())))
            .envs(envs.iter().copied());
        unsafe {
            cmd.pre_exec(move || enter_netns(&ns));
        }
        Agent { child: Some(cmd.spawn().expect("start nodelet")), log, out, netns: self.netns.clone() }
    }

    /// Writes a manifest atomically (as editors and config managers do).
    pub fn write_manifest(&self, file: &str, body: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).unwrap();
    }

    /// The full pod name nodelet gives a static pod here.
    pub fn pod_name(&self, name: &str) -> String {
        format!("{name}-{}", self.node_name())
    }

    /// Every container of a static pod, newest first, with its status.
    pub async fn containers(&self, pod: &str) -> Vec<cri::ContainerStatus> {
        self.containers_named(&self.pod_name(pod)).await
    }

    /// Every container of the pod with this exact name (an apiserver pod).
    pub async fn containers_named(&self, full_name: &str) -> Vec<cri::ContainerStatus> {
        let rt = self.cri().await;
        let filter = cri::ContainerFilter {
            label_selector: HashMap::from([("io.kubernetes.pod.name".to_string(), full_name.to_string())]),
            ..Default::default()
        };
        let mut out = Vec::new();
        for c in rt.list_containers(Some(filter)).await.unwrap() {
            if let Ok(s) = rt.container_status(&c.id).await {
                out.push(s);
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        out
    }

    pub async fn sandboxes(&self, pod: &str) -> Vec<cri::PodSandbox> {
        self.sandboxes_named(&self.pod_name(pod)).await
    }

    pub async fn sandboxes_named(&self, full_name: &str) -> Vec<cri::PodSandbox> {
        let rt = self.cri().await;
        let filter = cri::PodSandboxFilter {
            label_selector: HashMap::from([("io.kubernetes.pod.name".to_string(), full_name.to_string())]),
            ..Default::default()
        };
        rt.list_pod_sandbox(Some(filter)).await.unwrap()
    }

    /// Stops and removes a pod's sandboxes through CRI, as a reboot or a
    /// container GC would. StopPodSandbox is retried: right after nodelet
    /// killed the pod, containerd can answer "ttrpc: closed" while the shim
    /// goes away; the call is idempotent and succeeds once it has.
    pub async fn collect_pod(&self, full_name: &str) {
        let rt = self.cri().await;
        eventually(Duration::from_secs(20), "the pod's sandboxes stopped and removed", || async {
            for sb in self.sandboxes_named(full_name).await {
                rt.stop_pod_sandbox(&sb.id).await.ok()?;
                rt.remove_pod_sandbox(&sb.id).await.ok()?;
            }
            self.sandboxes_named(full_name).await.is_empty().then_some(())
        })
        .await;
    }

    /// Instances of one container of a static pod, newest first.
    pub async fn instances(&self, pod: &str, container: &str) -> Vec<cri::ContainerStatus> {
        self.instances_named(&self.pod_name(pod), container).await
    }

    /// Instances of one container of the pod with this exact name.
    pub async fn instances_named(&self, full_name: &str, container: &str) -> Vec<cri::ContainerStatus> {
        self.containers_named(full_name).await.into_iter().filter(|c| c.metadata.as_ref().unwrap().name == container).collect()
    }

    /// Runs a command in a container through CRI.
    pub async fn exec(&self, container_id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        self.cri().await.exec_sync(container_id, &cmd, 10).await.expect("ExecSync")
    }

    /// The path of a pod's network namespace, from the runtime's verbose
    /// sandbox status (pod IPs repeat across test nodes, namespaces do not).
    pub async fn pod_netns(&self, pod: &str) -> PathBuf {
        let sandbox = self.sandboxes(pod).await.into_iter().find(|s| s.state == 0).expect("a ready sandbox");
        let channel = nodelet::runtime::remote::unix_channel(&self.endpoint).await.unwrap();
        let mut client = cri::runtime_service_client::RuntimeServiceClient::new(channel);
        let status = client
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox.id, verbose: true })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"].as_array().unwrap();
        let net = namespaces.iter().find(|n| n["type"] == "network").expect("a network namespace");
        PathBuf::from(net["path"].as_str().unwrap())
    }

    /// nodelet's status socket (`<root-dir>/nodelet/status.sock`).
    pub fn status_socket(&self) -> PathBuf {
        self.dir.path().join("kubelet/nodelet/status.sock")
    }

    /// GET from nodelet's status socket: the body.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.status_socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let (_, body) = resp.split_once("\r\n\r\n")?;
        Some(body.to_string())
    }

    /// A plain HTTP GET to 127.0.0.1:`port` in the node's namespace: the
    /// status line and the body.
    pub fn get_port(&self, port: u16, path: &str) -> Option<(String, String)> {
        let path = path.to_string();
        in_netns(&self.netns, move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).ok()?;
            let (head, body) = resp.split_once("\r\n\r\n")?;
            Some((head.lines().next().unwrap_or("").to_string(), body.to_string()))
        })
    }

    /// The pod as nodelet's /pods reports it.
    pub fn status(&self, pod: &str) -> Option<serde_json::Value> {
        let body = self.get("/pods")?;
        let list: serde_json::Value = serde_json::from_str(&body).ok()?;
        let want = self.pod_name(pod);
        list["items"].as_array()?.iter().find(|p| p["metadata"]["name"] == want.as_str()).cloned()
    }

}

/// A TCP connection to `to` from the local address `from` (call it inside
/// the namespace that holds `from`); one nobody answers fails after
/// `timeout` with "timed out" in the error.
pub fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr, timeout: Duration) -> Result<std::net::TcpStream, String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt};
    use std::os::fd::AsRawFd;
    let std::net::SocketAddr::V4(to4) = to else { return Err("IPv4 only".into()) };
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| e.to_string())?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0))).map_err(|e| format!("bind {from}: {e}"))?;
    // Linux bounds a blocking connect by the send timeout.
    let t = nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    setsockopt(&fd, sockopt::SendTimeout, &t).map_err(|e| e.to_string())?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to4)).map_err(|e| match e {
        nix::errno::Errno::EINPROGRESS | nix::errno::Errno::EAGAIN => format!("connect {to} from {from}: timed out"),
        e => format!("connect {to} from {from}: {e}"),
    })?;
    let s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    Ok(s)
}

/// containerd on the node's root, inside its network namespace, logging
/// (appending) to `<root>/containerd.log`.
fn spawn_containerd(bin: &Path, root: &Path, netns: &str) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("containerd.log")).unwrap();
    let ns = netns.to_string();
    let mut cmd = Command::new(bin);
    // Its own shim first (containerd finds shims on PATH).
    if let Some(dir) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    cmd.arg("--config").arg(root.join("config.toml")).stdout(log.try_clone().unwrap()).stderr(log);
    unsafe {
        cmd.pre_exec(move || enter_netns(&ns));
    }
    cmd.spawn().expect("start containerd (apt-get install containerd)")
}

/// Removes every pod through CRI (what a kubelet would leave behind).
async fn remove_all_pods(endpoint: &str) {
    let Ok(rt) = RemoteRuntime::connect(endpoint, Duration::from_secs(10)).await else { return };
    if let Ok(list) = rt.list_pod_sandbox(None).await {
        for s in list {
            let _ = rt.stop_pod_sandbox(&s.id).await;
            let _ = rt.remove_pod_sandbox(&s.id).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let endpoint = self.endpoint.clone();
        // Drop may run inside a tokio runtime: clean up from a thread of its own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // A wedged runtime must not hang the test: containerd is stopped next anyway.
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), remove_all_pods(&endpoint)).await });
        })
        .join()
        .ok();
        if let Some(c) = self.containerd.take() {
            stop_child(c, Duration::from_secs(10));
        }
        remove_cgroup_tree(&self.cgroup_root);
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        // Mounts left by a crashed run would make the directory undeletable.
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut targets: Vec<&str> =
                mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|t| t.starts_with(&root)).collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop_child(mut c: Child, grace: Duration) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Removes a cgroup directory tree (deepest first) in every hierarchy.
fn remove_cgroup_tree(rel: &str) {
    let rel = rel.trim_start_matches('/');
    let roots: Vec<PathBuf> = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        std::fs::read_dir("/sys/fs/cgroup").map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    for root in roots {
        let top = root.join(rel);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A running nodelet; killed when dropped.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
    pub out: PathBuf,
    pub netns: String,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit; its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nodelet log ({}) ---\n{}\n--- nodelet stdout ---\n{}", self.log.display(), self.log(), self.stdout());
            // CI shows the end of a failing test's output: the failure again,
            // after the agent's (long) log.
            if let Some(failure) = LAST_FAILURE.with(|f| f.borrow().clone()) {
                eprintln!("--- the test failed (repeated after the agent's log) ---\n{failure}");
            }
        }
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(5));
        }
    }
}

/// A test that cannot check its claim on this host says so here instead of
/// passing quietly: the line goes to stderr and to `$NODELET_SKIP_LOG`
/// (tests/run.sh lists every skip at the end of the run). With
/// `NODELET_NO_SKIP` set (CI) a skip is a failure.
pub fn skip(test: &str, why: &str) {
    assert!(std::env::var_os("NODELET_NO_SKIP").is_none(), "{test} cannot run on this host ({why}), and NODELET_NO_SKIP says every test must");
    eprintln!("SKIPPED {test}: {why}");
    if let Some(log) = std::env::var_os("NODELET_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "  {test}: {why}");
        }
    }
}

thread_local! {
    /// The message and place of the last panic on this thread.
    static LAST_FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Keeps each panic's message, so that an agent dropped while its test fails
/// can print it again after the agent's log.
fn remember_failures() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            LAST_FAILURE.with(|f| *f.borrow_mut() = Some(format!("{message}{at}")));
            default(info);
        }));
    });
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `eventually` for a check that can say what it saw instead: `f` returns
/// `Err(what it saw)` until it holds, and a timeout names the last thing
/// seen, so a failure on CI says more than "timed out".
pub async fn eventually_saw<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last seen: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_running(c: &cri::ContainerStatus) -> bool {
    c.state == cri::ContainerState::ContainerRunning as i32
}

pub fn is_exited(c: &cri::ContainerStatus) -> bool {
    c.state == cri::ContainerState::ContainerExited as i32
}

/// A pod manifest with the given containers section (already indented).
pub fn pod_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// User plus system CPU seconds a process has used.
pub fn proc_cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// User and system CPU seconds, apart.
pub fn proc_cpu_split(pid: i32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (get(11), get(12))
}

/// A process's peak resident set size.
pub fn proc_peak_rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A Prometheus sample's value by its exact series name and labels.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}
