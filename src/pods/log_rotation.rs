//! Container log rotation, as kubelet's container log manager does it:
//! every `containerLogMonitorInterval` (10 s) each running container's log
//! file is looked at; one over `containerLogMaxSize` (10Mi) is renamed to
//! `<log>.<YYYYMMDD-HHMMSS>` and the runtime told to reopen its log
//! (CRI ReopenContainerLog), so it writes on at the original path. Older
//! rotated files are gzip-compressed (`.gz`), and the oldest removed so a
//! container keeps at most `containerLogMaxFiles` (5) files, the live one
//! included. If the runtime cannot reopen, the rename is undone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LogRotation;
use crate::runtime::Runtime;

/// What to do to a log file's rotated siblings before rotating it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The oldest rotated files, and leftovers of an interrupted compression.
    pub remove: Vec<PathBuf>,
    /// Rotated files that stay but are not yet compressed.
    pub compress: Vec<PathBuf>,
}

/// Decides (pure) which of `rotated` (the files named `<log>.*`) go and
/// which get compressed, so that after the rotation — the live file, the
/// file just rotated and what is kept — there are at most `max_files`.
pub fn plan(rotated: &[PathBuf], max_files: usize) -> Plan {
    let mut p = Plan::default();
    let mut kept: Vec<&PathBuf> = Vec::new();
    for f in rotated {
        if f.extension().is_some_and(|e| e == "tmp") {
            p.remove.push(f.clone());
        } else {
            kept.push(f);
        }
    }
    // The timestamp in the name orders them.
    kept.sort();
    let room = max_files.saturating_sub(2);
    let excess = kept.len().saturating_sub(room);
    p.remove.extend(kept.iter().take(excess).map(|f| (*f).clone()));
    p.compress.extend(kept.iter().skip(excess).filter(|f| f.extension().is_none_or(|e| e != "gz")).map(|f| (*f).clone()));
    p
}

/// The files named `<log>.*` beside the log.
fn rotated_siblings(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else { return Vec::new() };
    let prefix = format!("{name}.");
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix))).collect())
        .unwrap_or_default()
}

/// Compresses `file` to `file.gz` (through a `.tmp`), then removes it.
/// The log directory may be writable from a container (a hostPath): the
/// file is read only if it is a regular file and not a link (never another
/// file's content into the log directory), and the `.tmp` is created anew,
/// never opened through a link someone left in its place.
fn compress(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let gz = PathBuf::from(format!("{}.gz", file.display()));
    let tmp = PathBuf::from(format!("{}.tmp", gz.display()));
    let mut input = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(file)?;
    if !input.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).custom_flags(nix::libc::O_NOFOLLOW).open(&tmp)?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()?;
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(file)
}

/// Rotates one container's log now.
async fn rotate(runtime: &dyn Runtime, id: &str, log: &Path, max_files: usize) -> Result<(), String> {
    let p = plan(&rotated_siblings(log), max_files);
    let work = p.clone();
    tokio::task::spawn_blocking(move || {
        for f in &work.remove {
            let _ = std::fs::remove_file(f);
        }
        for f in &work.compress {
            if let Err(e) = compress(f) {
                tracing::warn!(file = %f.display(), error = %e, "cannot compress a rotated log");
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let stamp = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
    let to = PathBuf::from(format!("{}.{stamp}", log.display()));
    std::fs::rename(log, &to).map_err(|e| format!("{}: {e}", log.display()))?;
    if let Err(e) = runtime.reopen_container_log(id).await {
        // The runtime still writes to the renamed file: put it back.
        let _ = std::fs::rename(&to, log);
        return Err(format!("ReopenContainerLog: {e}"));
    }
    tracing::debug!(container = id, log = %log.display(), rotated = %to.display(), "container log rotated");
    Ok(())
}

/// Checks every running container's log each interval, for ever. A
/// container's log path never changes, so it is asked of the runtime once
/// per container (not every interval: 30 pods would cost 180 CRI calls a
/// minute).
pub async fn run(runtime: Arc<dyn Runtime>, settings: LogRotation) {
    let running = crate::runtime::running_containers();
    let mut paths: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    loop {
        tokio::time::sleep(settings.interval).await;
        let containers = match runtime.list_containers(Some(running.clone())).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "log rotation: cannot list containers");
                continue;
            }
        };
        paths.retain(|id, _| containers.iter().any(|c| &c.id == id));
        for c in containers {
            let log_path = match paths.get(&c.id) {
                Some(p) => p.clone(),
                None => {
                    let Ok(status) = runtime.container_status(&c.id).await else { continue };
                    paths.insert(c.id.clone(), status.log_path.clone());
                    status.log_path
                }
            };
            let log = PathBuf::from(&log_path);
            // The file itself, not what a link there points at.
            if log_path.is_empty() || std::fs::symlink_metadata(&log).map_or(true, |m| !m.file_type().is_file() || m.len() <= settings.max_size) {
                continue;
            }
            if let Err(e) = rotate(runtime.as_ref(), &c.id, &log, settings.max_files).await {
                tracing::warn!(container = %c.id, log = %log.display(), error = %e, "cannot rotate a container log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(|n| PathBuf::from(format!("/logs/c/0.log.{n}"))).collect()
    }

    #[test]
    fn the_oldest_go_the_rest_are_compressed() {
        // max 5 files: live + just rotated + 3 kept.
        let p = plan(&paths(&["20260101-000001.gz", "20260101-000002.gz", "20260101-000003", "20260101-000004", "20260101-000005.gz.tmp"]), 5);
        assert_eq!(p.remove, paths(&["20260101-000005.gz.tmp", "20260101-000001.gz"]), "a leftover, and one too many");
        assert_eq!(p.compress, paths(&["20260101-000003", "20260101-000004"]));
        let p = plan(&paths(&["20260101-000002.gz", "20260101-000003", "20260101-000001.gz"]), 5);
        assert!(p.remove.is_empty(), "three kept fit: {p:?}");
        assert_eq!(p.compress, paths(&["20260101-000003"]));
        let p = plan(&paths(&["20260101-000003", "20260101-000001.gz", "20260101-000002.gz", "20260101-000004"]), 4);
        assert_eq!(p.remove, paths(&["20260101-000001.gz", "20260101-000002.gz"]));
        assert_eq!(p.compress, paths(&["20260101-000003", "20260101-000004"]));
        let p = plan(&paths(&["20260101-000001"]), 2);
        assert_eq!(p.remove, paths(&["20260101-000001"]), "with 2 files only the live one and the new rotation remain");
        assert!(plan(&[], 5).remove.is_empty());
    }

    #[test]
    fn compression_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("0.log.20260101-000001");
        std::fs::write(&f, "x".repeat(10_000)).unwrap();
        compress(&f).unwrap();
        assert!(!f.exists());
        let gz = dir.path().join("0.log.20260101-000001.gz");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap()), &mut out).unwrap();
        assert_eq!(out.len(), 10_000);
    }

    #[test]
    fn compression_never_reads_or_writes_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, "not for the log directory").unwrap();
        let dir = t.path().join("c");
        std::fs::create_dir(&dir).unwrap();
        // A rotated "file" that is a link to another file: not read.
        let linked = dir.join("0.log.20260101-000000");
        std::os::unix::fs::symlink(&secret, &linked).unwrap();
        assert!(compress(&linked).is_err());
        assert!(!dir.join("0.log.20260101-000000.gz").exists());
        // A link where the .tmp goes: not written through.
        let victim = t.path().join("victim");
        std::fs::write(&victim, "intact").unwrap();
        let real = dir.join("0.log.20260101-000001");
        std::fs::write(&real, "log line\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("0.log.20260101-000001.gz.tmp")).unwrap();
        assert!(compress(&real).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "intact");
    }
}
