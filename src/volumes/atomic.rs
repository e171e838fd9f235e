//! kubelet's atomic writer, for configMap, secret, downwardAPI and projected
//! volumes: the files of one version live in a timestamped directory
//! `..2026_11_22_07_41_21.123456789`, the symlink `..data` points at it,
//! and each top-level name in the volume is a symlink through `..data`. A
//! new version is written beside the old one and `..data` is swapped with
//! one rename, so a reader sees either the old files or the new ones,
//! never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
    /// The owner the file gets (a projected token for a pod whose
    /// containers all run as one user).
    pub uid: Option<u32>,
}

/// A volume's files by relative path.
pub type Payload = BTreeMap<String, FileProjection>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid path {path:?}: {why}")]
    Path { path: String, why: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.to_path_buf(), source }
}

/// A payload path must be relative, must not climb out, and must not start
/// with `..` (those names are the writer's own).
pub fn check_path(p: &str) -> Result<(), WriteError> {
    let bad = |why| Err(WriteError::Path { path: p.to_string(), why });
    if p.is_empty() {
        return bad("must not be empty");
    }
    if p.starts_with("..") {
        return bad("must not start with '..'");
    }
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return bad("must not contain '..'"),
            _ => return bad("must be a relative path"),
        }
    }
    Ok(())
}

/// What is in the version `..data` points at now.
fn current(dir: &Path) -> Option<(PathBuf, Payload)> {
    let target = std::fs::read_link(dir.join(DATA_DIR)).ok()?;
    let version = dir.join(&target);
    let mut payload = Payload::new();
    walk(&version, &version, &mut payload).ok()?;
    Some((version, payload))
}

fn walk(root: &Path, dir: &Path, out: &mut Payload) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let md = e.metadata()?;
        if md.is_dir() {
            walk(root, &e.path(), out)?;
        } else {
            let rel = e.path().strip_prefix(root).map_err(|_| std::io::Error::other("outside the version"))?.display().to_string();
            out.insert(rel, FileProjection { data: std::fs::read(e.path())?, mode: md.mode() & 0o7777, uid: Some(md.uid()) });
        }
    }
    Ok(())
}

/// The same files with the same contents; modes are compared as written
/// (before an fsGroup adjustment), so the caller passes `expect_mode`.
fn same(want: &Payload, have: &Payload, expect_mode: &dyn Fn(u32) -> u32) -> bool {
    want.len() == have.len()
        && want.iter().all(|(p, f)| {
            have.get(p).is_some_and(|h| h.data == f.data && h.mode == expect_mode(f.mode) && f.uid.is_none_or(|u| h.uid == Some(u)))
        })
}

/// The permission bits a file or directory ends up with once `fs_group`
/// owns it, as kubelet's SetVolumeOwnership does for read-only volumes:
/// group read (and search on directories), setgid on directories.
pub fn with_fs_group(mode: u32, dir: bool, fs_group: Option<u32>) -> u32 {
    match fs_group {
        None => mode,
        Some(_) if dir => mode | 0o440 | 0o110 | 0o2000,
        Some(_) => mode | 0o440,
    }
}

/// Writes `payload` into `dir` as a new version, unless it already holds
/// exactly that. Returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> Result<bool, WriteError> {
    for p in payload.keys() {
        check_path(p)?;
    }
    if let Some((_, have)) = current(dir)
        && same(payload, &have, &|m| with_fs_group(m, false, fs_group))
    {
        return Ok(false);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io(dir))?;
    let stamp = k8s_openapi::jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.%f").to_string();
    let version = dir.join(&stamp);
    std::fs::DirBuilder::new().mode(0o755).create(&version).map_err(io(&version))?;
    let result = fill(&version, payload, fs_group);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&version);
        return Err(e);
    }
    // Swap: a fresh symlink renamed over ..data.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA_DIR)).map_err(io(dir))?;
    // Top-level names through ..data; names no longer present go.
    let tops: BTreeSet<String> = payload.keys().filter_map(|p| p.split('/').next()).map(str::to_string).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(top), &link).map_err(io(&link))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("..") {
                if name != DATA_DIR && name != stamp && e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
                continue;
            }
            if !tops.contains(&name) && e.file_type().is_ok_and(|t| t.is_symlink()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(true)
}

fn fill(version: &Path, payload: &Payload, fs_group: Option<u32>) -> Result<(), WriteError> {
    for (rel, f) in payload {
        let path = version.join(rel);
        if let Some(parent) = path.parent()
            && parent != version
        {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(io(parent))?;
        }
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io(&path))?;
        file.write_all(&f.data).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        if f.uid.is_some() || fs_group.is_some() {
            std::os::unix::fs::chown(&path, f.uid, fs_group).map_err(io(&path))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(with_fs_group(f.mode, false, fs_group))).map_err(io(&path))?;
    }
    if let Some(g) = fs_group {
        own_dirs(version, g)?;
    }
    Ok(())
}

/// Gives every directory of a version (and the version itself) to the group.
fn own_dirs(dir: &Path, group: u32) -> Result<(), WriteError> {
    std::os::unix::fs::chown(dir, None, Some(group)).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(with_fs_group(0o755, true, Some(group)))).map_err(io(dir))?;
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            own_dirs(&e.path(), group)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> FileProjection {
        FileProjection { data: s.as_bytes().to_vec(), mode, uid: None }
    }

    #[test]
    fn versions_swap_through_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let p1 = Payload::from([("a".to_string(), file("one", 0o644)), ("sub/b".to_string(), file("two", 0o400))]);
        assert!(write(&dir, &p1, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "two");
        assert_eq!(std::fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
        let v1 = std::fs::read_link(dir.join(DATA_DIR)).unwrap();
        assert!(v1.to_string_lossy().starts_with("..20"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(dir.join("sub/b")).unwrap().mode() & 0o777, 0o400);
        assert!(!write(&dir, &p1, None).unwrap(), "the same payload is not written again");

        let p2 = Payload::from([("a".to_string(), file("uno", 0o644))]);
        assert!(write(&dir, &p2, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "uno");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err(), "a name gone from the payload goes");
        assert!(!dir.join(&v1).exists(), "the old version is removed");
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert_eq!(names.len(), 3, "..data, one version, a: {names:?}");
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["../x", "/etc/x", "..data", "a/../../b", ""] {
            assert!(check_path(p).is_err(), "{p}");
        }
        assert!(check_path("a/b.txt").is_ok());
        assert!(check_path("a..b").is_ok());
    }
}
