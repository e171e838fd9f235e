//! Image pull time: a ~100 MiB image (random, incompressible) from a local
//! registry (Debian's docker-registry over TLS, in the node's network
//! namespace), pulled
//! - by nodelet for a static pod (`imagePullPolicy: Always`): the time
//!   "including waiting" in its `Pulled` event, which covers credential
//!   lookup, the pull gate, the pull record, progress polling and CRI
//!   PullImage with unpacking;
//! - by `ctr image pull` (containerd's own client: it fetches through its
//!   own resolver and streams the blobs into containerd's content store over
//!   gRPC, then unpacks), timed from process start to exit;
//! - by one CRI PullImage call from this program (the floor).
//!
//! The image is removed (and containerd's content collected) between
//! pulls; the three are interleaved, ROUNDS each. Prints each time, the
//! medians and the ratios. Run (as root): `cargo bench --bench pull`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use nodelet::runtime::Runtime;
use support::registry::{PUBLIC, Registries};
use support::{Node, pod_yaml};

const ROUNDS: usize = 5;
const MIB: u32 = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ctr(node: &Node, args: &[&str]) -> std::process::Output {
    let sock = node.dir.path().join("containerd.sock");
    let hosts = node.dir.path().join("certs.d");
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(&sock).args(["-n", "k8s.io"]);
    if args[0] == "image" && args[1] == "pull" {
        cmd.args(["image", "pull", "--hosts-dir"]).arg(&hosts).args(&args[2..]);
    } else {
        cmd.args(args);
    }
    let ns = node.netns.clone();
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(move || support::enter_netns(&ns));
    }
    cmd.output().expect("ctr")
}

async fn remove(node: &Node, image: &str) {
    let rt = node.cri().await;
    if let Ok(Some(img)) = rt.image_status(image).await {
        rt.remove_image(&img.id).await.unwrap();
    }
    let _ = ctr(node, &["image", "rm", "--sync", image]);
    // Let containerd's garbage collector take the blobs.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The `(X including waiting)` seconds of the `skip`-th `Successfully pulled image` line.
fn pulled_in(log: &str, skip: usize) -> Option<f64> {
    let line = log.lines().filter(|l| l.contains("Successfully pulled image")).nth(skip)?;
    let rest = line.split(" (").nth(1)?;
    let t = rest.split_whitespace().next()?;
    if let Some(ms) = t.strip_suffix("ms") { ms.parse::<f64>().ok().map(|m| m / 1000.0) } else { t.strip_suffix('s')?.parse().ok() }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = Node::start().await;
    let regs = Registries::start(&node);
    let archive = node.dir.path().join("big.tar");
    let st = Command::new(support::repo().join("tests/images/filler.sh")).arg(&archive).arg("big:1").arg(MIB.to_string()).status().unwrap();
    assert!(st.success());
    regs.push(&archive, PUBLIC, "bench/big:1");
    let image = format!("{PUBLIC}/bench/big:1");
    let agent = node.nodelet(&[]);
    let rt = node.cri().await;
    let sandbox = nodelet::runtime::cri::PodSandboxConfig::default();
    let (mut by_nodelet, mut by_ctr, mut by_cri) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        remove(&node, &image).await;
        let t = Instant::now();
        let out = ctr(&node, &["image", "pull", &image]);
        assert!(out.status.success(), "ctr image pull: {}", String::from_utf8_lossy(&out.stderr));
        by_ctr.push(t.elapsed().as_secs_f64());

        remove(&node, &image).await;
        let t = Instant::now();
        rt.pull_image(&image, None, &sandbox).await.unwrap();
        by_cri.push(t.elapsed().as_secs_f64());

        remove(&node, &image).await;
        let name = format!("pull-{round}");
        node.write_manifest(&format!("{name}.yaml"), &pod_yaml(&name, &format!(
            "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Always\n    command: [sleep, '3600']\n"
        )));
        let deadline = Instant::now() + Duration::from_secs(300);
        let secs = loop {
            if let Some(s) = pulled_in(&agent.log(), round) {
                break s;
            }
            assert!(Instant::now() < deadline, "nodelet never pulled: {}", agent.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        by_nodelet.push(secs);
        node.remove_manifest(&format!("{name}.yaml"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node.sandboxes(&name).await.is_empty() {
            assert!(Instant::now() < deadline, "the pod did not go");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("round {round}: ctr {:.3}s  CRI {:.3}s  nodelet {:.3}s", by_ctr[round], by_cri[round], by_nodelet[round]);
    }
    let (n, c, f) = (median(by_nodelet), median(by_ctr), median(by_cri));
    println!("pull of a {MIB} MiB image from a local TLS registry, median of {ROUNDS}:");
    println!("  ctr image pull   {c:.3}s");
    println!("  CRI PullImage    {f:.3}s");
    println!("  nodelet          {n:.3}s");
    println!("  nodelet / ctr    {:.2}x (goal <= 1.05x)", n / c);
    println!("  nodelet / CRI    {:.2}x", n / f);
}
