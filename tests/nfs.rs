//! NFS volumes on a real kernel NFS server and client. This machine's
//! kernel has neither, so the test boots Debian's kernel under qemu
//! (`tests/support/vm.sh`, with Debian's nfs-kernel-server and nfs-common
//! unpacked into the guest, never installed on the host) and runs itself
//! inside it (`--in-vm`): an NFSv4 server exports a directory, and nodelet's
//! volume manager (`volumes::set_up` / `tear_down`, the code a pod's start
//! and stop run) mounts an inline `nfs` volume and a claim on an NFS PV
//! (with the PV's `mountOptions`) for one pod, which writes through them;
//! they are unmounted with it, and a second pod reads what the first wrote.
//! The claim and the PV come from a fixed stand-in for the apiserver (the
//! claim logic is tested against the test apiserver in tests/cluster.rs);
//! no container runtime runs in the VM: a pod's container sees these
//! directories through a bind mount, as every other volume kind, which the
//! other suites test with containerd.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use nodelet::node::NodeContext;
use nodelet::volumes::objects::{ApiObjects, Data, ObjectError, ObjectKey, Token, TokenSpec};
use nodelet::volumes::{VolumeContext, set_up, tear_down};
use serde_json::json;

const DEBS: &[&str] = &["nfs-kernel-server", "nfs-common", "libnfsidmap1", "libwrap0"];

fn main() {
    if support::vm::in_vm() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(in_vm());
        println!("{}", support::vm::PASSED);
        return;
    }
    support::vm::harness(&[("nfs_volumes_in_a_vm", nfs_volumes_in_a_vm)]);
}

fn nfs_volumes_in_a_vm() {
    let mut extra = vec!["--bin", "/usr/bin/mount", "--bin", "/usr/bin/umount"];
    for d in DEBS {
        extra.extend(["--deb", d]);
    }
    support::vm::run_self(600, &extra);
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The claim `data` bound to the NFS PV `nfs-pv`, as an apiserver would
/// answer the node for them.
struct Objects {
    claim: PersistentVolumeClaim,
    pv: PersistentVolume,
}

#[async_trait::async_trait]
impl ApiObjects for Objects {
    async fn get(&self, key: &ObjectKey, _: &str) -> Result<Option<Arc<Data>>, ObjectError> {
        Err(ObjectError::Unavailable(format!("{key}: not in this test")))
    }
    async fn token(&self, _: &TokenSpec) -> Result<Token, ObjectError> {
        Err(ObjectError::Unavailable("no tokens in this test".into()))
    }
    fn services(&self) -> Result<Vec<Arc<Service>>, ObjectError> {
        Ok(Vec::new())
    }
    fn release(&self, _: &str) {}
    fn changes(&self) -> tokio::sync::broadcast::Receiver<ObjectKey> {
        tokio::sync::broadcast::channel(1).1
    }
    async fn claim(&self, _: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, ObjectError> {
        Ok((name == "data").then(|| self.claim.clone()))
    }
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, ObjectError> {
        Ok((name == "nfs-pv").then(|| self.pv.clone()))
    }
}

fn pod(name: &str, uid: &str, read_only_claim: bool, inline_path: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [
            {"name": "inline", "nfs": {"server": "10.0.2.15", "path": inline_path}},
            {"name": "claim", "persistentVolumeClaim": {"claimName": "data", "readOnly": read_only_claim}}
        ]}
    }))
    .unwrap()
}

fn nfs_mounts() -> BTreeMap<String, String> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (w.len() > 3 && w[2].starts_with("nfs") && w[2] != "nfsd").then(|| (w[1].to_string(), w[3].to_string()))
        })
        .collect()
}

async fn in_vm() {
    println!("step: an NFSv4 server exporting /export");
    sh("mkdir -p /proc/fs/nfsd /export/inline /export/pv /var/lib/nfs/v4recovery /var/lib/nodelet \
        && mount -t nfsd nfsd /proc/fs/nfsd \
        && echo '/export *(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0)' > /etc/exports \
        && touch /var/lib/nfs/etab /var/lib/nfs/rmtab && exportfs -ra \
        && rpc.mountd -N 2 -N 3 --no-udp && rpc.nfsd -N 3 -U 4");

    let mut node = NodeContext::for_tests("vm-node");
    node.root_dir = "/var/lib/nodelet".into();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data", "namespace": "default", "uid": "claim-uid"},
        "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "nfs-pv", "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}
    }))
    .unwrap();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "nfs-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "mountOptions": ["nfsvers=4.2", "hard"],
                 "nfs": {"server": "10.0.2.15", "path": "/pv"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data", "uid": "claim-uid"}}
    }))
    .unwrap();
    let objects = Objects { claim, pv };
    let ctx = VolumeContext { node: &node, objects: Some(&objects), dry_run: false, csi: None };

    println!("step: one pod's volumes mounted and written through");
    let a = pod("writer", "uid-a", false, "/inline");
    let (vols, errors) = set_up(&ctx, &a, &[], None).await;
    assert!(errors.is_empty(), "{errors:?}");
    let inline = vols.volumes["inline"].host_path.clone();
    let claimed = vols.volumes["claim"].host_path.clone();
    assert_eq!(inline, node.pod_dir("uid-a").join("volumes/kubernetes.io~nfs/inline"));
    assert_eq!(claimed, node.pod_dir("uid-a").join("volumes/kubernetes.io~nfs/nfs-pv"), "kubelet's path: the PV's name");
    let mounts = nfs_mounts();
    let opts = mounts.get(&claimed.display().to_string()).unwrap_or_else(|| panic!("the claim is an NFS mount: {mounts:?}"));
    assert!(opts.contains("vers=4.2") && opts.contains("hard"), "the PV's mountOptions: {opts}");
    assert!(mounts.contains_key(&inline.display().to_string()), "{mounts:?}");
    std::fs::write(inline.join("note"), "inline from the writer").unwrap();
    std::fs::write(claimed.join("note"), "claimed from the writer").unwrap();
    // Through the server, not a local directory.
    assert_eq!(std::fs::read_to_string("/export/inline/note").unwrap(), "inline from the writer");
    assert_eq!(std::fs::read_to_string("/export/pv/note").unwrap(), "claimed from the writer");
    // A second round keeps the mounts (no second mount).
    let (again, errors) = set_up(&ctx, &a, &[], Some(&vols)).await;
    assert!(errors.is_empty() && again.volumes["claim"] == vols.volumes["claim"]);
    assert_eq!(nfs_mounts().len(), 2, "{:?}", nfs_mounts());

    println!("step: unmounted with the pod");
    tear_down(&node.pod_dir("uid-a")).unwrap();
    assert!(nfs_mounts().is_empty(), "{:?}", nfs_mounts());

    println!("step: a second pod reads what the first wrote; a read-only claim stays read-only");
    let b = pod("reader", "uid-b", true, "/inline");
    let (vols, errors) = set_up(&ctx, &b, &[], None).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(std::fs::read_to_string(vols.volumes["inline"].host_path.join("note")).unwrap(), "inline from the writer");
    let claimed = vols.volumes["claim"].host_path.clone();
    assert_eq!(std::fs::read_to_string(claimed.join("note")).unwrap(), "claimed from the writer");
    assert!(vols.volumes["claim"].read_only);
    let e = std::fs::write(claimed.join("other"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    tear_down(&node.pod_dir("uid-b")).unwrap();
    assert!(nfs_mounts().is_empty());

    println!("step: an export that is not there is kubelet's FailedMount message, and nothing is left");
    let c = pod("broken", "uid-c", false, "/nowhere");
    let (_, errors) = set_up(&ctx, &c, &[], None).await;
    let e = errors.iter().find(|e| e.volume == "inline").expect("the missing export fails");
    assert!(e.message.starts_with("mount failed: ") && e.message.contains("Mounting arguments: -t nfs 10.0.2.15:/nowhere"), "{}", e.message);
    tear_down(&node.pod_dir("uid-c")).unwrap();
    assert!(nfs_mounts().is_empty());
}
