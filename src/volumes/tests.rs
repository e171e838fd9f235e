use super::*;

#[test]
fn mounts_are_found_through_a_symlinked_root_and_tear_down_leaves_none() {
    // A symlinked root directory (/var/lib/kubelet -> /data/kubelet) must
    // not hide a bind mount: the pod directory is then removed
    // recursively, and a local PV's data would go with it.
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    let data = tmp.path().join("pv");
    std::fs::create_dir_all(real.join("pods/u/volumes/v")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
    let target = real.join("pods/u/volumes/v");
    if let Err(e) = nix::mount::mount(Some(&data), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>) {
        panic!("bind-mounting the test volume: {e} (the suite runs as root; a skip would pass unseen)");
    }
    let via_link = tmp.path().join("link/pods/u");
    assert!(is_mounted(&tmp.path().join("link/pods/u/volumes/v")));
    assert_eq!(crate::mounts::under(&via_link, &crate::mounts::table().unwrap()).len(), 1);
    tear_down(&via_link).unwrap();
    assert!(crate::mounts::under(&via_link, &crate::mounts::table().unwrap()).is_empty());
    crate::mounts::remove_all_one_filesystem(&via_link).unwrap();
    assert!(data.join("keep").exists(), "the volume's data survives the pod directory's removal");
}

#[test]
fn volume_dirs_go_but_never_recursively_into_a_mount_kind() {
    let pod = tempfile::tempdir().unwrap();
    let v = pod.path().join("volumes");
    for d in ["kubernetes.io~empty-dir/scratch/sub", "kubernetes.io~secret/s", "kubernetes.io~local-volume/pv-a", "kubernetes.io~nfs/pv-b"] {
        std::fs::create_dir_all(v.join(d)).unwrap();
    }
    std::fs::write(v.join("kubernetes.io~empty-dir/scratch/sub/f"), "x").unwrap();
    // A local volume's mount point that is not empty: its data, as if
    // mounted again behind nodelet's back.
    std::fs::write(v.join("kubernetes.io~local-volume/pv-a/data"), "keep").unwrap();
    remove_volume_dirs(pod.path());
    assert!(!v.join("kubernetes.io~empty-dir").exists() && !v.join("kubernetes.io~secret").exists() && !v.join("kubernetes.io~nfs").exists());
    assert_eq!(std::fs::read_to_string(v.join("kubernetes.io~local-volume/pv-a/data")).unwrap(), "keep");
}
