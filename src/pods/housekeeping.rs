//! Node-level housekeeping, as kubelet's pod cleanups and container GC do
//! every minute: what pods left on disk after they are gone. A pod normally
//! takes its directories with it when its worker stops it; this sweep
//! catches what a crash, a reboot or an outage left behind:
//! - pod directories (`<root-dir>/pods/<uid>`: volumes with Secret data,
//!   etc-hosts, termination-message files), tmpfs volumes unmounted first;
//! - pod log directories (`<podLogsDir>/<ns>_<name>_<uid>`);
//! - dangling `/var/log/containers` links.
//!
//! A pod's files are removed only when no source wants it (it has no
//! status), the runtime holds nothing of it, and they have not changed for
//! a minute, so a pod that is just starting is never touched.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::NodeContext;
use super::store::StatusStore;
use crate::clock::UnixNanos;
use crate::runtime::Runtime;
use crate::runtime::labels;

pub use crate::config::ContainerGcPolicy;

/// A dead container as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadContainer {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    /// ns since the epoch.
    pub created_at: i64,
}

/// Pure: which dead containers go, as kubelet's container GC picks them:
/// those older than `min_age`, grouped by pod and container name; each
/// group keeps its newest `max_per_pod_container`; then, past
/// `max_containers` on the node, each group is cut to an even share (at
/// least one), and then the oldest go until the node is under the cap.
pub fn containers_to_remove(dead: &[DeadContainer], policy: &ContainerGcPolicy, now: UnixNanos) -> Vec<String> {
    let mut units: std::collections::BTreeMap<(&str, &str), Vec<&DeadContainer>> = std::collections::BTreeMap::new();
    for c in dead.iter().filter(|c| now.since(UnixNanos(c.created_at)) >= policy.min_age) {
        units.entry((c.pod_uid.as_str(), c.name.as_str())).or_default().push(c);
    }
    for list in units.values_mut() {
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    }
    let mut out = Vec::new();
    let cut = |units: &mut std::collections::BTreeMap<(&str, &str), Vec<&DeadContainer>>, keep: usize, out: &mut Vec<String>| {
        for list in units.values_mut() {
            if list.len() > keep {
                out.extend(list.drain(keep..).map(|c| c.id.clone()));
            }
        }
    };
    if let Ok(keep) = usize::try_from(policy.max_per_pod_container) {
        cut(&mut units, keep, &mut out);
    }
    if let Ok(max) = usize::try_from(policy.max_containers) {
        let total: usize = units.values().map(Vec::len).sum();
        if total > max {
            let share = max.checked_div(units.len()).unwrap_or(0).max(1);
            cut(&mut units, share, &mut out);
            let mut rest: Vec<&DeadContainer> = units.values().flatten().copied().collect();
            if rest.len() > max {
                rest.sort_by_key(|c| c.created_at);
                let extra = rest.len().saturating_sub(max);
                out.extend(rest.into_iter().take(extra).map(|c| c.id.clone()));
            }
        }
    }
    out
}

/// kubelet's ContainerGCPeriod and housekeeping cadence.
pub const PERIOD: Duration = Duration::from_secs(60);
/// Files younger than this are never swept.
const QUIET: Duration = Duration::from_secs(60);

/// The pod UID of a log directory (`<ns>_<name>_<uid>`).
pub fn log_dir_uid(name: &str) -> Option<&str> {
    let uid = name.rsplit('_').next()?;
    (!uid.is_empty() && name.matches('_').count() >= 2).then_some(uid)
}

fn quiet_since(path: &Path, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= QUIET))
}

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub pod_dirs: Vec<PathBuf>,
    pub log_dirs: Vec<PathBuf>,
    pub links: Vec<PathBuf>,
}

/// One sweep. `known` are the UIDs that must stay (pods with a status or
/// with anything in the runtime).
pub fn sweep(node: &NodeContext, known: &HashSet<String>, now: SystemTime) -> Swept {
    let mut out = Swept::default();
    // Listed first, then judged against `known`, which was read before.
    let pods_root = node.root_dir.join("pods");
    for e in std::fs::read_dir(&pods_root).into_iter().flatten().flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if known.contains(&uid) || !dir.is_dir() || !quiet_since(&dir, now) {
            continue;
        }
        // CSI volumes still published: their records stay until the driver
        // has unpublished them (the round before the sweep tries).
        if crate::volumes::csi::has_volumes(&dir) {
            continue;
        }
        match crate::volumes::tear_down(&dir) {
            Ok(()) => match crate::mounts::remove_all_one_filesystem(&dir) {
                Ok(()) => out.pod_dirs.push(dir),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an orphaned pod directory"),
            },
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount an orphaned pod directory's volumes"),
        }
    }
    for e in std::fs::read_dir(&node.pod_logs_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(uid) = log_dir_uid(&name) else { continue };
        let dir = e.path();
        if known.contains(uid) || !dir.is_dir() || !quiet_since(&dir, now) {
            continue;
        }
        match crate::mounts::remove_all_one_filesystem(&dir) {
            Ok(()) => out.log_dirs.push(dir),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an orphaned pod log directory"),
        }
    }
    // Links whose log file is gone (kubelet removes dead container log
    // symlinks the same way).
    for e in std::fs::read_dir(&node.container_logs_dir).into_iter().flatten().flatten() {
        let link = e.path();
        let is_link = std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && !link.exists() && link.extension().is_some_and(|x| x == "log") && std::fs::remove_file(&link).is_ok() {
            out.links.push(link);
        }
    }
    out
}

/// Sweeps every [`PERIOD`], and collects dead containers by `gc`; a
/// request on `reclaim` (the eviction manager's, under disk pressure) runs
/// a round at once and is answered with the number of containers removed.
pub async fn run(
    node: Arc<NodeContext>,
    runtime: Arc<dyn Runtime>,
    statuses: StatusStore,
    gc: ContainerGcPolicy,
    mut reclaim: Option<tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<u64>>>,
    csi: crate::csi::Drivers,
    mut sources_ready: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let request = async {
            match reclaim.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        // A round at once when every source has been seen (what a stop
        // left behind is cleaned up at start), then every PERIOD.
        let became_ready = async {
            if *sources_ready.borrow() {
                return std::future::pending().await;
            }
            if sources_ready.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let reply = tokio::select! {
            _ = tokio::time::sleep(PERIOD) => None,
            Some(reply) = request => Some(reply),
            () = became_ready => None,
        };
        let ready = *sources_ready.borrow();
        let removed = round(&node, runtime.as_ref(), &statuses, &gc, &csi, ready).await;
        if let Some(reply) = reply {
            let _ = reply.send(removed);
        }
    }
}

/// One housekeeping round; the number of dead containers removed. Until
/// every pod source has been seen once (`sources_ready`), nothing on disk is
/// called an orphan: a pod the apiserver has not listed yet is not gone.
async fn round(node: &Arc<NodeContext>, runtime: &dyn Runtime, statuses: &StatusStore, gc: &ContainerGcPolicy, csi: &crate::csi::Drivers, sources_ready: bool) -> u64 {
    let mut known: HashSet<String> = statuses.snapshot().keys().cloned().collect();
    let listed = async {
        let sandboxes = runtime.list_pod_sandbox(None).await?;
        let containers = runtime.list_containers(None).await?;
        Ok::<_, crate::runtime::RuntimeError>((sandboxes, containers))
    };
    let mut removed = 0u64;
    match listed.await {
        Ok((sandboxes, containers)) => {
            let dead: Vec<DeadContainer> = containers
                .iter()
                .filter(|c| c.state == crate::runtime::cri::ContainerState::ContainerExited as i32)
                .filter_map(|c| {
                    Some(DeadContainer {
                        id: c.id.clone(),
                        pod_uid: c.labels.get(labels::POD_UID)?.clone(),
                        name: c.labels.get(labels::CONTAINER_NAME)?.clone(),
                        created_at: c.created_at,
                    })
                })
                .collect();
            for id in containers_to_remove(&dead, gc, UnixNanos::now()) {
                match runtime.remove_container(&id).await {
                    Ok(()) => {
                        tracing::info!(container = %id, "removed a dead container (container GC)");
                        removed = removed.saturating_add(1);
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(container = %id, error = %e, "container GC could not remove a dead container"),
                }
            }
            known.extend(sandboxes.into_iter().filter_map(|s| s.labels.get(labels::POD_UID).cloned()));
            known.extend(containers.into_iter().filter_map(|c| c.labels.get(labels::POD_UID).cloned()));
        }
        Err(e) => {
            tracing::debug!(error = %e, "housekeeping skipped: the runtime did not answer");
            return removed;
        }
    }
    if !sources_ready {
        tracing::debug!("housekeeping: not every pod source has been seen yet; no orphan is swept");
        return removed;
    }
    // CSI volumes of gone pods (a pod removed while nodelet was down) are
    // unpublished through their drivers before the sweep unmounts the rest.
    let now = SystemTime::now();
    for e in std::fs::read_dir(node.root_dir.join("pods")).into_iter().flatten().flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if known.contains(&uid) || !quiet_since(&dir, now) || !crate::volumes::csi::has_volumes(&dir) {
            continue;
        }
        if let Err(err) = crate::volumes::csi::unpublish_pod(node, csi, &dir).await {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot unpublish an orphaned pod's CSI volumes yet");
        }
    }
    // Staged volumes no pod publishes any more (an agent stop between stage
    // and publish) are unstaged.
    if let Err(err) = crate::volumes::csi::unstage_unpublished(node, csi).await {
        tracing::warn!(error = %err, "cannot unstage CSI volumes no pod publishes yet");
    }
    let node = node.clone();
    let swept = tokio::task::spawn_blocking(move || sweep(&node, &known, SystemTime::now())).await.unwrap_or_default();
    for d in swept.pod_dirs.iter().chain(&swept.log_dirs) {
        tracing::info!(dir = %d.display(), "removed what a gone pod left behind");
    }
    if !swept.links.is_empty() {
        tracing::info!(count = swept.links.len(), "removed dangling container log links");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_gc_keeps_the_newest_per_container_and_honours_the_node_cap() {
        const S: i64 = 1_000_000_000;
        let d = |id: &str, pod: &str, name: &str, age: i64| DeadContainer { id: id.into(), pod_uid: pod.into(), name: name.into(), created_at: 1000 * S - age * S };
        let dead = [d("a3", "p", "a", 10), d("a2", "p", "a", 20), d("a1", "p", "a", 30), d("b1", "p", "b", 40), d("q1", "q", "a", 5)];
        let now = UnixNanos(1000 * S);
        let mut removed = containers_to_remove(&dead, &ContainerGcPolicy::default(), now);
        removed.sort();
        assert_eq!(removed, ["a1", "a2"], "one dead instance per container stays");
        let young = ContainerGcPolicy { min_age: Duration::from_secs(25), ..Default::default() };
        // a2 and a3 are younger than MinAge, so a1 is the newest evictable
        // instance of its container and stays (kubelet counts only those).
        assert!(containers_to_remove(&dead, &young, now).is_empty(), "younger than MinAge: never");
        let capped = ContainerGcPolicy { max_containers: 2, ..Default::default() };
        let mut removed = containers_to_remove(&dead, &capped, now);
        removed.sort();
        assert_eq!(removed, ["a1", "a2", "b1"], "three units over a cap of two: the oldest goes");
        let unlimited = ContainerGcPolicy { max_per_pod_container: -1, ..Default::default() };
        assert!(containers_to_remove(&dead, &unlimited, now).is_empty());
    }

    #[test]
    fn log_directories_name_their_pod() {
        assert_eq!(log_dir_uid("default_web-n1_8e47a"), Some("8e47a"));
        assert_eq!(log_dir_uid("kube-system_a_b_c_uid9"), Some("uid9"));
        assert_eq!(log_dir_uid("stray"), None);
    }

    #[test]
    fn only_old_files_of_unknown_pods_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeContext::for_tests("n");
        node.root_dir = dir.path().join("kubelet");
        node.pod_logs_dir = dir.path().join("pods-logs");
        node.container_logs_dir = dir.path().join("containers");
        for d in ["kubelet/pods/gone/volumes", "kubelet/pods/alive", "pods-logs/default_a_gone/c", "pods-logs/default_b_alive", "containers"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("kubelet/pods/gone/etc-hosts"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere.log"), dir.path().join("containers/a_default_c-1.log")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("kubelet/pods/alive"), dir.path().join("containers/b_default_c-2.log")).unwrap();
        let known: HashSet<String> = ["alive".to_string()].into();
        let now = SystemTime::now();

        let young = sweep(&node, &known, now);
        assert!(young.pod_dirs.is_empty() && young.log_dirs.is_empty(), "nothing younger than a minute");
        assert_eq!(young.links, vec![dir.path().join("containers/a_default_c-1.log")], "a dangling link goes at once");

        let later = sweep(&node, &known, now + Duration::from_secs(120));
        assert_eq!(later.pod_dirs, vec![dir.path().join("kubelet/pods/gone")]);
        assert_eq!(later.log_dirs, vec![dir.path().join("pods-logs/default_a_gone")]);
        assert!(dir.path().join("kubelet/pods/alive").exists() && dir.path().join("pods-logs/default_b_alive").exists());
        assert!(dir.path().join("containers/b_default_c-2.log").exists());
    }

    /// kubelet's sourcesReady: before every pod source has reported, a pod
    /// directory no status names may belong to a pod the apiserver has not
    /// listed yet; it is not swept (nor its CSI volumes unpublished).
    #[tokio::test]
    async fn nothing_is_an_orphan_until_every_source_has_been_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mut node = NodeContext::for_tests("n");
        node.root_dir = dir.path().join("kubelet");
        node.pod_logs_dir = dir.path().join("pods-logs");
        node.container_logs_dir = dir.path().join("containers");
        let pod = node.root_dir.join("pods/not-listed-yet");
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~empty-dir/data")).unwrap();
        std::fs::write(pod.join("volumes/kubernetes.io~empty-dir/data/f"), "keep").unwrap();
        let old = nix::sys::time::TimeSpec::new(1_000_000, 0);
        for p in [pod.join("volumes/kubernetes.io~empty-dir/data"), pod.join("volumes/kubernetes.io~empty-dir"), pod.join("volumes"), pod.clone()] {
            nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &p, &old, &old, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
        }
        let node = Arc::new(node);
        let runtime = crate::runtime::dry_run::DryRunRuntime::new(None, Box::new(std::io::sink())).await;
        let statuses = StatusStore::default();
        let csi = crate::csi::Drivers::default();
        round(&node, &runtime, &statuses, &ContainerGcPolicy::default(), &csi, false).await;
        assert_eq!(std::fs::read_to_string(pod.join("volumes/kubernetes.io~empty-dir/data/f")).unwrap(), "keep");
        round(&node, &runtime, &statuses, &ContainerGcPolicy::default(), &csi, true).await;
        assert!(!pod.exists(), "swept once every source has been seen");
    }
}
