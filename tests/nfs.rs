//! NFS volumes on a real kernel NFS server and client, used by real pods.
//! This machine's kernel has neither, so the test boots Debian's kernel
//! under qemu (`tests/support/vm.sh`, with Debian's nfs-kernel-server and
//! nfs-common unpacked into the guest, never installed on the host) and runs
//! itself inside it (`--in-vm`). There it starts what tests/cluster.rs
//! starts on the host: a containerd of its own (with runc and the CNI
//! plugins), the test apiserver, and the real `nodelet` binary joining by TLS
//! bootstrap. An NFSv4 server in the node's network namespace exports a
//! directory; one pod writes through an inline `nfs` volume and a claim on an
//! NFS PV (with the PV's `mountOptions`), and after it is deleted (and its
//! mounts are gone) a second pod reads what the first wrote, its read-only
//! claim refusing writes. An export that is not there holds a pod with
//! kubelet's FailedMount.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, NODE_IP};
use support::eventually;

const S: Duration = Duration::from_secs(1);

const DEBS: &[&str] = &["nfs-kernel-server", "nfs-common", "libnfsidmap1", "libwrap0"];

fn main() {
    if support::vm::in_vm() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(in_vm());
        println!("{}", support::vm::PASSED);
        // The runtime's blocking threads may still wait on a child: do not
        // wait for them.
        std::process::exit(0);
    }
    support::vm::harness(&[("nfs_volumes_written_and_read_by_pods_in_a_vm", nfs_volumes_written_and_read_by_pods_in_a_vm)]);
}

fn nfs_volumes_written_and_read_by_pods_in_a_vm() {
    // Built here, carried into the VM at the same path.
    let images = support::images().display().to_string();
    let images = format!("{images}:{images}");
    let mut extra = vec!["--mem", "3072", "--file", images.as_str()];
    for bin in [
        env!("CARGO_BIN_EXE_nodelet"),
        "/usr/bin/mount",
        "/usr/bin/umount",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        extra.extend(["--bin", bin]);
    }
    for d in DEBS {
        extra.extend(["--deb", d]);
    }
    support::vm::run_self(900, &extra);
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The NFS mounts (mount point, options) under `needle`.
fn nfs_mounts(needle: &str) -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (w.len() > 3 && w[2].starts_with("nfs") && w[2] != "nfsd" && w[1].contains(needle)).then(|| (w[1].to_string(), w[3].to_string()))
        })
        .collect()
}

fn pod(name: &str, node: &str, command: &str, inline_path: &str, read_only_claim: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 2,
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": support::BUSYBOX, "command": ["sh", "-c", command],
                "volumeMounts": [{"name": "inline", "mountPath": "/inline"}, {"name": "claim", "mountPath": "/claim"}]}],
            "volumes": [
                {"name": "inline", "nfs": {"server": NODE_IP, "path": inline_path}},
                {"name": "claim", "persistentVolumeClaim": {"claimName": "data", "readOnly": read_only_claim}}
            ]
        }
    }))
    .unwrap()
}

async fn phase(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.status?.phase
}

async fn in_vm() {
    let c = Cluster::start().await;
    let ns = c.node.netns.clone();

    println!("step: an NFSv4 server exporting /export in the node's network namespace ({NODE_IP})");
    // nfsd and its export cache belong to a network namespace: the server
    // runs in the node's, where nodelet (and so its mounts) lives. Outside
    // the initial namespace nfsd cannot end its grace period early (no
    // client tracking upcall), so it is made the shortest there is.
    sh(&format!(
        "mkdir -p /export/inline /export/pv /var/lib/nfs/v4recovery \
         && echo '/export *(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0)' > /etc/exports \
         && touch /var/lib/nfs/etab /var/lib/nfs/rmtab \
         && ip netns exec {ns} sh -c 'mount -t nfsd nfsd /proc/fs/nfsd && exportfs -ra && rpc.mountd -N 2 -N 3 --no-udp && rpc.nfsd -N 3 -U 4 --grace-time 10 --lease-time 10'"
    ));

    println!("step: nodelet joins");
    let agent = c.join_with(&["--proxy-mode", "none"]).await;
    let node = c.node.node_name();

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), "default");
    let claim = claims
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteMany"], "volumeName": "nfs-pv", "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}})).unwrap())
        .await
        .unwrap();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "nfs-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "", "mountOptions": ["nfsvers=4.2", "hard"],
                 "nfs": {"server": NODE_IP, "path": "/pv"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data", "uid": claim.metadata.uid}}
    }))
    .unwrap();
    Api::<PersistentVolume>::all(c.client.clone()).create(&PostParams::default(), &pv).await.unwrap();

    // The PV controller (the harness's) completes the pre-binding, as the
    // scheduler would wait for it.
    eventually(30 * S, "the claim Bound", || async { (claims.get("data").await.ok()?.status?.phase.as_deref() == Some("Bound")).then_some(()) }).await;
    println!("step: a pod writes through both volumes");
    let pods = c.pods("default");
    let writer = pod(
        "writer",
        &node,
        "echo inline-from-the-writer > /inline/note && echo claimed-from-the-writer > /claim/note && touch /tmp/written && sleep 3600",
        "/inline",
        false,
    );
    pods.create(&PostParams::default(), &writer).await.unwrap();
    eventually(240 * S, "the writer running", || async { (phase(&pods, "writer").await.as_deref() == Some("Running")).then_some(()) }).await;
    // Waited for by content: a file that exists may not be written yet.
    let written = eventually(60 * S, "the files' contents on the server", || async {
        let inline = std::fs::read_to_string("/export/inline/note").ok().filter(|t| t.ends_with('\n'))?;
        let claimed = std::fs::read_to_string("/export/pv/note").ok().filter(|t| t.ends_with('\n'))?;
        Some((inline, claimed))
    })
    .await;
    assert_eq!(written, ("inline-from-the-writer\n".to_string(), "claimed-from-the-writer\n".to_string()), "written through NFS, on the server's disk");
    let uid = pods.get("writer").await.unwrap().metadata.uid.unwrap();
    let mounts = nfs_mounts(&uid);
    assert_eq!(mounts.len(), 2, "the two volumes, mounted once each: {mounts:?}");
    let (_, opts) = mounts.iter().find(|(m, _)| m.ends_with("kubernetes.io~nfs/nfs-pv")).unwrap_or_else(|| panic!("the claim at kubelet's path (the PV's name): {mounts:?}"));
    assert!(opts.contains("vers=4.2") && opts.contains("hard"), "the PV's mountOptions: {opts}");
    assert!(mounts.iter().any(|(m, _)| m.ends_with("kubernetes.io~nfs/inline")), "{mounts:?}");
    // Their figures in /stats/summary are the NFS filesystem's (statfs
    // through the client: the server's disk), the claim's with its pvcRef.
    let claim_stats = c.volume_stats("writer", "claim").await;
    assert_eq!(claim_stats["pvcRef"], json!({"name": "data", "namespace": "default"}), "{claim_stats}");
    let (claim_mount, _) = mounts.iter().find(|(m, _)| m.ends_with("nfs-pv")).unwrap();
    let fs = nix::sys::statvfs::statvfs(claim_mount.as_str()).unwrap();
    assert_eq!(claim_stats["capacityBytes"].as_u64(), Some(fs.blocks() as u64 * fs.fragment_size() as u64), "{claim_stats}");
    assert!(c.volume_stats("writer", "inline").await.get("pvcRef").is_none());

    println!("step: the writer is deleted and its mounts go");
    pods.delete("writer", &DeleteParams::default()).await.unwrap();
    eventually(120 * S, "the writer gone, its mounts too", || async {
        (pods.get_opt("writer").await.ok()?.is_none() && nfs_mounts(&uid).is_empty()).then_some(())
    })
    .await;

    println!("step: a second pod reads what the first wrote; its read-only claim refuses writes");
    let reader = pod(
        "reader",
        &node,
        "cat /inline/note /claim/note; if touch /claim/other 2>/dev/null; then echo claim-writable; else echo claim-read-only; fi",
        "/inline",
        true,
    );
    pods.create(&PostParams::default(), &reader).await.unwrap();
    eventually(240 * S, "the reader done", || async { (phase(&pods, "reader").await.as_deref() == Some("Succeeded")).then_some(()) }).await;
    let log = pods.logs("reader", &Default::default()).await.unwrap();
    assert_eq!(log, "inline-from-the-writer\nclaimed-from-the-writer\nclaim-read-only\n");
    assert!(!std::path::Path::new("/export/pv/other").exists());

    println!("step: an export that is not there holds its pod with kubelet's FailedMount");
    pods.create(&PostParams::default(), &pod("broken", &node, "true", "/nowhere", false)).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "default");
    let note = eventually(120 * S, "a FailedMount event for the broken pod", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedMount") && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken"))
            .find_map(|e| e.note)
    })
    .await;
    assert!(note.contains("mount failed: ") && note.contains(&format!("Mounting arguments: -t nfs {NODE_IP}:/nowhere")), "{note}");
    assert_eq!(phase(&pods, "broken").await.as_deref(), Some("Pending"));
    assert!(c.node.containers_named("broken").await.is_empty(), "nothing starts without its volume");
    for p in ["reader", "broken"] {
        pods.delete(p, &DeleteParams::default()).await.unwrap();
    }
    eventually(120 * S, "the pods gone, no NFS mount left", || async {
        (pods.list(&ListParams::default()).await.ok()?.items.is_empty() && nfs_mounts("").is_empty()).then_some(())
    })
    .await;
    drop(agent);
}
