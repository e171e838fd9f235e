//! Container log locations: the CRI layout under podLogsDir, and kubelet's
//! legacy symlinks in /var/log/containers that log shippers read
//! (`<pod>_<namespace>_<container>-<containerID>.log`).

use std::path::{Path, PathBuf};

use super::NodeContext;
use crate::runtime::labels::PodIdentity;

/// kubelet truncates the symlink name to fit a file name.
const MAX_NAME: usize = 251;

pub fn legacy_symlink(node: &NodeContext, pod: &PodIdentity, container: &str, id: &str) -> PathBuf {
    let mut name = format!("{}_{}_{}-{}", pod.name, pod.namespace, container, id);
    if name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    node.container_logs_dir.join(format!("{name}.log"))
}

/// Links a started container's log file into the legacy directory.
pub fn link(node: &NodeContext, pod: &PodIdentity, container: &str, id: &str, log_file: &Path) {
    if !log_file.exists() {
        return;
    }
    let link = legacy_symlink(node, pod, container, id);
    let made = std::fs::create_dir_all(&node.container_logs_dir).and_then(|_| {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(log_file, &link)
    });
    if let Err(e) = made {
        tracing::warn!(link = %link.display(), error = %e, "cannot link the container log");
    }
}

/// Removes a container's legacy log symlink, if any.
pub fn unlink(node: &NodeContext, pod: &PodIdentity, container: &str, id: &str) {
    let link = legacy_symlink(node, pod, container, id);
    if let Err(e) = std::fs::remove_file(&link)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(link = %link.display(), error = %e, "cannot remove the container log link");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_named_like_kubelet() {
        let mut node = NodeContext::for_tests("n");
        node.container_logs_dir = "/var/log/containers".into();
        let pod = PodIdentity { namespace: "kube-system".into(), name: "etcd-n".into(), uid: "u".into() };
        assert_eq!(
            legacy_symlink(&node, &pod, "etcd", "abc123"),
            PathBuf::from("/var/log/containers/etcd-n_kube-system_etcd-abc123.log")
        );
        let long = PodIdentity { name: "x".repeat(300), ..pod };
        assert_eq!(legacy_symlink(&node, &long, "c", "id").file_name().unwrap().len(), MAX_NAME + 4);
    }

    #[test]
    fn link_and_unlink() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeContext::for_tests("n");
        node.container_logs_dir = dir.path().join("containers");
        let log = dir.path().join("0.log");
        std::fs::write(&log, "x").unwrap();
        let pod = PodIdentity { namespace: "ns".into(), name: "p".into(), uid: "u".into() };
        link(&node, &pod, "c", "id1", &log);
        let l = legacy_symlink(&node, &pod, "c", "id1");
        assert_eq!(std::fs::read_link(&l).unwrap(), log);
        unlink(&node, &pod, "c", "id1");
        assert!(!l.exists());
    }
}
