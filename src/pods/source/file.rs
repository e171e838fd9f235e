//! Static pods from a manifest directory (`--pod-manifest-path`,
//! `staticPodPath`): one Pod per file, YAML or JSON. Changes are seen through
//! inotify within about a second, and the directory is re-read every
//! `fileCheckFrequency` (20 s) regardless, as kubelet does.
//!
//! A file that fails to parse gives one error line naming the file and the
//! field, and changes nothing: a new bad file adds no pod, and a good file
//! edited into a bad one keeps its last good pod running until fixed or
//! removed. Hidden files (a leading dot) and subdirectories are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{Problems, SeenTimes, SourceName, SourceUpdate, drop_duplicates};
use crate::pods::manifest::{self, StaticOrigin};

/// How long to let a burst of file events settle before re-reading.
const DEBOUNCE: Duration = Duration::from_millis(20);

struct FileState {
    digest: [u8; 32],
    /// The last pod this file produced; kept while the file is broken.
    good: Option<Pod>,
}

pub struct FileSource {
    dir: PathBuf,
    node_name: String,
    check_every: Duration,
    files: BTreeMap<PathBuf, FileState>,
    seen: SeenTimes,
    problems: Problems,
    last_sent: Option<Vec<Pod>>,
    last_errors: Option<Vec<String>>,
    missing_logged: bool,
    /// A dry run: a path that does not exist is an error, not "no pods".
    missing_is_error: bool,
}

impl FileSource {
    pub fn new(dir: PathBuf, node_name: String, check_every: Duration) -> Self {
        Self {
            dir,
            node_name,
            check_every,
            files: BTreeMap::new(),
            seen: SeenTimes::default(),
            problems: Problems::default(),
            last_sent: None,
            last_errors: None,
            missing_logged: false,
            missing_is_error: false,
        }
    }

    /// A path that does not exist is reported as a problem naming it (a dry
    /// run checks the operator's inputs; the agent itself waits for the
    /// directory to appear, as kubelet does).
    pub fn missing_is_error(mut self) -> Self {
        self.missing_is_error = true;
        self
    }

    /// `--dry-run --strict`: everything one reading of `dir` finds to
    /// say (invalid manifests, misspelt and unknown fields, duplicates).
    pub fn check(dir: PathBuf, node_name: String) -> Vec<String> {
        let mut source = Self::new(dir, node_name, Duration::from_secs(20)).missing_is_error();
        source.scan();
        source.problems.all()
    }

    /// Reads the directory; `None` when it cannot be listed (the last set
    /// stands).
    pub fn scan(&mut self) -> Option<Vec<Pod>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => {
                self.missing_logged = false;
                self.problems.set("dir", None, false);
                e
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.missing_is_error => {
                self.problems.set("dir", Some(format!("{}: the static pod path does not exist", self.dir.display())), false);
                self.files.clear();
                return Some(Vec::new());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.missing_logged {
                    tracing::warn!(path = %self.dir.display(), "static pod path does not exist; no static pods from it");
                    self.missing_logged = true;
                }
                self.files.clear();
                return Some(Vec::new());
            }
            Err(e) => {
                self.problems.set("dir", Some(format!("{}: cannot read the static pod path: {e}", self.dir.display())), false);
                return None;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        self.files.retain(|p, _| paths.contains(p));
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        self.problems.retain(|k| k == "dir" || names.iter().any(|n| k.starts_with(n.as_str())));
        let mut found = Vec::new();
        for path in paths {
            if let Some(pod) = self.read(&path) {
                found.push((path.display().to_string(), pod));
            }
        }
        let (mut pods, dropped) = drop_duplicates(found);
        for origin in &names {
            let msg = dropped.iter().find(|m| m.starts_with(&format!("{origin}: "))).cloned();
            self.problems.set(&format!("{origin} duplicate"), msg, false);
        }
        self.seen.stamp(&mut pods);
        Some(pods)
    }

    fn read(&mut self, path: &Path) -> Option<Pod> {
        let key = path.display().to_string();
        let bytes = match crate::decode::read_file(path) {
            Ok(b) => b,
            Err(e) => {
                self.problems.set(&key, Some(format!("{}: cannot read the manifest: {e}", path.display())), false);
                return self.files.get(path).and_then(|f| f.good.clone());
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(f) = self.files.get(path)
            && f.digest == digest
        {
            return f.good.clone();
        }
        let origin = StaticOrigin::File(path.display().to_string());
        let previous = self.files.get(path).and_then(|f| f.good.clone());
        let good = match manifest::load_static(&bytes, &self.node_name, &origin) {
            Ok((pod, unknown)) => {
                self.problems.set(&key, None, false);
                let fields = (!unknown.is_empty()).then(|| format!("{}: ignored: {}", path.display(), unknown.join("; ")));
                self.problems.set(&format!("{key} unknown"), fields, true);
                Some(pod)
            }
            Err(e) => {
                let keep = if previous.is_some() { " (the pod from its last good version keeps running)" } else { "" };
                self.problems.set(&key, Some(format!("{e}{keep}")), false);
                previous
            }
        };
        self.files.insert(path.to_path_buf(), FileState { digest, good: good.clone() });
        good
    }

    /// Runs until the receiver goes away.
    pub async fn run(mut self, tx: mpsc::Sender<SourceUpdate>) {
        let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
        let mut watched: Option<(notify::RecommendedWatcher, u64)> = None;
        let mut tick = tokio::time::interval(self.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            watched = self.ensure_watch(watched, &ev_tx);
            let pods = self.scan();
            let errors = self.problems.errors();
            let changed = pods.as_ref().is_some_and(|p| self.last_sent.as_ref() != Some(p));
            if changed || self.last_errors.as_ref() != Some(&errors) {
                if changed {
                    self.last_sent.clone_from(&pods);
                }
                self.last_errors = Some(errors.clone());
                let pods = pods.filter(|_| changed).map(|p| p.into_iter().map(Arc::new).collect());
                if tx.send(SourceUpdate { source: SourceName::File, pods, errors }).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = ev_rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while ev_rx.try_recv().is_ok() {}
                }
                _ = tx.closed() => return,
            }
        }
    }

    /// (Re)watches the directory when it appears or is replaced.
    fn ensure_watch(
        &self,
        current: Option<(notify::RecommendedWatcher, u64)>,
        ev_tx: &mpsc::Sender<()>,
    ) -> Option<(notify::RecommendedWatcher, u64)> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&self.dir).ok().map(|m| m.ino());
        match (current, ino) {
            (Some((w, old)), Some(new)) if old == new => Some((w, old)),
            (_, None) => None,
            (_, Some(new)) => {
                let tx = ev_tx.clone();
                let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    // Reading the manifests makes access events of its own;
                    // only changes count, or every scan would trigger the next.
                    if res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_))) {
                        let _ = tx.try_send(());
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot watch the static pod path; re-reading it periodically"))
                .ok()?;
                if let Err(e) = w.watch(&self.dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(path = %self.dir.display(), error = %e, "cannot watch the static pod path; re-reading it periodically");
                    return None;
                }
                Some((w, new))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec:\n  containers: [{name: c, image: 'busybox:1'}]\n";

    fn source(dir: &Path) -> FileSource {
        FileSource::new(dir.to_path_buf(), "node".into(), Duration::from_secs(20))
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn reads_each_file_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("NAME", "a")).unwrap();
        std::fs::write(dir.path().join("b.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#).unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "junk").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut s = source(dir.path());
        assert_eq!(names(&s.scan().unwrap()), vec!["a-node", "b-node"]);
    }

    #[test]
    fn a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("NAME", "a")).unwrap();
        let mut s = source(dir.path());
        let first = s.scan().unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c}]}\n").unwrap();
        assert_eq!(s.scan().unwrap(), first, "a new bad file adds nothing");
        std::fs::write(dir.path().join("a.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: 7}]}\n").unwrap();
        assert_eq!(s.scan().unwrap(), first, "a broken edit keeps the last good pod");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(s.scan().unwrap().is_empty(), "removing the file removes the pod");
    }

    #[test]
    fn rereading_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD.replace("NAME", "a")).unwrap();
        let mut s = source(dir.path());
        let first = s.scan().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(s.scan().unwrap(), first, "config.seen stays stable");
    }

    #[test]
    fn duplicate_names_keep_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), GOOD.replace("NAME", "a")).unwrap();
        std::fs::write(dir.path().join("2.yaml"), GOOD.replace("NAME", "a").replace("busybox:1", "busybox:2")).unwrap();
        let mut s = source(dir.path());
        let pods = s.scan().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].spec.as_ref().unwrap().containers[0].image.as_deref(), Some("busybox:1"));
    }

    #[test]
    fn a_missing_directory_is_an_empty_set() {
        let mut s = source(Path::new("/nonexistent/nodelet-manifests"));
        assert_eq!(s.scan(), Some(vec![]));
    }
}
