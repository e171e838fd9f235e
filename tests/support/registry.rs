//! Real image registries for the pull tests: Debian's `docker-registry`
//! (the CNCF distribution registry) in the node's network namespace, with
//! TLS from a CA of the test's own, one with htpasswd basic auth
//! (`private.nodelet.test`) and one open to anyone (`public.nodelet.test`).
//! The node's containerd finds them through `certs.d/<name>/hosts.toml`
//! (address and CA), as an operator would configure a private registry.
//! Images are pushed with Debian's `skopeo` from the OCI archives
//! tests/images/build.sh makes.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::Node;
use super::apiserver::pki::Ca;

pub const PRIVATE: &str = "private.nodelet.test";
pub const PUBLIC: &str = "public.nodelet.test";
pub const USER: &str = "puller";
/// Distinctive, so a grep of the logs for it means something.
pub const PASSWORD: &str = "Pw-7c1e9b3f-nodelet-registry";

pub struct Registries {
    dir: PathBuf,
    children: Vec<Child>,
    netns: String,
    pub ca_file: PathBuf,
}

const PRIVATE_PORT: u16 = 5443;
const PUBLIC_PORT: u16 = 5444;

impl Registries {
    /// Starts both registries for `node` and points its containerd at them.
    pub fn start(node: &Node) -> Registries {
        let dir = node.dir.path().join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new();
        let server = ca.server();
        let ca_file = dir.join("ca.crt");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
        let out = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().expect("htpasswd (apt-get install apache2-utils)");
        assert!(out.status.success());
        std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
        let mut regs = Registries { dir: dir.clone(), children: Vec::new(), netns: node.netns.clone(), ca_file: ca_file.clone() };
        for (name, port, auth) in [(PRIVATE, PRIVATE_PORT, true), (PUBLIC, PUBLIC_PORT, false)] {
            let auth_block = if auth {
                format!("auth:\n  htpasswd:\n    realm: nodelet-test\n    path: {}\n", dir.join("htpasswd").display())
            } else {
                String::new()
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data-{port}\nhttp:\n  addr: 127.0.0.1:{port}\n  \
                 tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n{auth_block}",
                d = dir.display()
            );
            let cfg = dir.join(format!("config-{port}.yml"));
            std::fs::write(&cfg, config).unwrap();
            let log = File::create(dir.join(format!("registry-{port}.log"))).unwrap();
            let ns = node.netns.clone();
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&cfg).stdout(log.try_clone().unwrap()).stderr(log);
            unsafe {
                cmd.pre_exec(move || super::enter_netns(&ns));
            }
            regs.children.push(cmd.spawn().expect("docker-registry (apt-get install docker-registry)"));
            let hosts = node.dir.path().join("certs.d").join(name);
            std::fs::create_dir_all(&hosts).unwrap();
            std::fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"https://127.0.0.1:{port}\"\n\n[host.\"https://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                    ca_file.display()
                ),
            )
            .unwrap();
        }
        for port in [PRIVATE_PORT, PUBLIC_PORT] {
            regs.wait_listening(port);
        }
        regs
    }

    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = super::in_netns(&self.netns, move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "registry on {port} did not come up: {}", self.log(port));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self, port: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("registry-{port}.log"))).unwrap_or_default()
    }

    /// Pushes an OCI archive to `registry` (PRIVATE or PUBLIC) as `repo:tag`.
    pub fn push(&self, archive: &Path, registry: &str, repo_tag: &str) {
        let port = if registry == PRIVATE { PRIVATE_PORT } else { PUBLIC_PORT };
        let certs = self.dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(&self.ca_file, certs.join("ca.crt")).unwrap();
        let ns = self.netns.clone();
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-cert-dir"]).arg(&certs);
        if registry == PRIVATE {
            cmd.args(["--dest-creds", &format!("{USER}:{PASSWORD}")]);
        }
        cmd.arg(format!("oci-archive:{}", archive.display())).arg(format!("docker://127.0.0.1:{port}/{repo_tag}"));
        unsafe {
            cmd.pre_exec(move || super::enter_netns(&ns));
        }
        let out = cmd.output().expect("skopeo (apt-get install skopeo)");
        assert!(out.status.success(), "skopeo copy to {registry}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A dockerconfigjson for the private registry under `key`, with the
    /// right password or a wrong one.
    pub fn docker_config(keys: &[(&str, bool)]) -> String {
        use base64::Engine;
        let auths: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|(k, right)| {
                let pw = if *right { PASSWORD.to_string() } else { "wrong-password".to_string() };
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{pw}"));
                (k.to_string(), serde_json::json!({"auth": auth}))
            })
            .collect();
        serde_json::json!({ "auths": auths }).to_string()
    }
}

impl Drop for Registries {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
