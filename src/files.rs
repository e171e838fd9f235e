//! Files written atomically with tight modes: a temporary file in the same
//! directory, synced, then renamed over the target, then the directory
//! synced, so a crash leaves the old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A value taken from an object (a pod's UID, a volume, container, driver
/// or plugin name) that cannot serve as one path component. Refused before
/// any path is built from it: a UID of `..` would otherwise make the pod's
/// directory the root directory itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Invalid value: {value:?}: must be one plain path component (not empty, not '.' or '..', no '/' or NUL)")]
pub struct NotAComponent {
    /// The field the value came from (`metadata.uid`, `spec.volumes[0].name`).
    pub field: String,
    pub value: String,
}

/// `value` if it is one plain path component: not empty, not `.` or `..`,
/// without `/` or NUL, at most 255 bytes (NAME_MAX).
pub fn component<'a>(value: &'a str, field: &str) -> Result<&'a str, NotAComponent> {
    let plain = !value.is_empty() && value != "." && value != ".." && value.len() <= 255 && !value.contains(['/', '\0']);
    if plain { Ok(value) } else { Err(NotAComponent { field: field.to_string(), value: value.to_string() }) }
}

/// `base/value`, the one checked way to build a path from an object's field.
pub fn child(base: &Path, value: &str, field: &str) -> Result<std::path::PathBuf, NotAComponent> {
    component(value, field).map(|v| base.join(v))
}

/// Temporary names are unique per process and call: two writers of the
/// same file never share one.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// FNV-32a, the checksum nodelet puts in the checkpoints whose kubelet
/// checksum (a hash of a Go object dump) no other program can reproduce:
/// `cpu_manager_state`, `memory_manager_state`, `kubelet_internal_checkpoint`.
pub fn fnv32a(bytes: &[u8]) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

/// Whether a dry run can read a manager's state file: missing or readable.
/// One it may not read (a dry run by a user other than root) is planned
/// without, with a warning; the real run reads it.
pub fn dry_run_can_read(path: &Path) -> bool {
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(path = %path.display(), "dry run: cannot read the state file; planning as if it were empty");
            false
        }
        _ => true,
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Points `link` at `target` atomically (a new link renamed over the old).
pub fn symlink_atomic(target: &Path, link: &Path) -> std::io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link.file_name().and_then(|n| n.to_str()).unwrap_or("link");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// A filesystem's size and what is free of it: bytes (for unprivileged
/// users) and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// statfs of the filesystem holding `path`.
pub fn usage(path: &Path) -> Option<FsUsage> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = u64::from(st.fragment_size());
    Some(FsUsage {
        capacity: u64::from(st.blocks()).saturating_mul(frag),
        available: u64::from(st.blocks_available()).saturating_mul(frag),
        inodes: u64::from(st.files()),
        inodes_free: u64::from(st.files_free()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_plain_components_become_paths() {
        let base = Path::new("/var/lib/kubelet/pods");
        assert_eq!(child(base, "8e47a-1", "metadata.uid").unwrap(), base.join("8e47a-1"));
        assert_eq!(child(base, "..data", "metadata.uid").unwrap(), base.join("..data"), "dots inside a name are fine");
        for bad in ["", ".", "..", "a/b", "/", "../x", "a\0b"] {
            let e = child(base, bad, "metadata.uid").unwrap_err();
            assert_eq!(e.field, "metadata.uid");
            assert!(e.to_string().starts_with("metadata.uid: Invalid value:"), "{e}");
        }
        assert!(component(&"x".repeat(256), "f").is_err());
    }

    #[test]
    fn writes_replace_whole_files_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/key.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        let link = dir.path().join("current");
        symlink_atomic(&p, &link).unwrap();
        symlink_atomic(&p, &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), p);
    }
}
