//! The kernel's mount table, read so that clean-up fails closed, and the one
//! way nodelet removes a directory tree: never across a mount.
//!
//! - [`table`] reads `/proc/self/mountinfo`; a table that cannot be read or
//!   has a line it cannot parse is an error, never an empty table (an empty
//!   one would say "nothing is mounted here" and let a removal go ahead).
//! - [`remove_all_one_filesystem`] is kubelet's RemoveAllOneFilesystem, made
//!   stricter: it refuses to start while the table lists a mount at or below
//!   the directory, and while walking it opens every directory relative to
//!   its parent without following symlinks and stops with an error at any
//!   directory on another mount (by mount ID where the kernel gives one, so a
//!   bind mount of the same filesystem counts, else by device). A volume that
//!   is still mounted is never emptied.
#![deny(clippy::arithmetic_side_effects)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Why a mount table could not be had, or a tree was not removed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/proc/self/mountinfo` could not be read: nothing may be removed.
    #[error("cannot read the mount table {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line of the mount table has fewer fields than the kernel writes.
    #[error("cannot parse line {line} of the mount table: {text:?}")]
    Unparsable { line: usize, text: String },
    /// Something is mounted at or below the directory to remove.
    #[error("{} is still mounted", .0.display())]
    StillMounted(PathBuf),
    /// A file system call failed on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> MountError {
    MountError::Io { path: path.to_path_buf(), source: e.into() }
}

/// The mount points of `/proc/self/mountinfo`.
pub fn table() -> Result<Vec<PathBuf>, MountError> {
    const PATH: &str = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(PATH).map_err(|source| MountError::Unreadable { path: PATH.into(), source })?;
    parse(&text)
}

/// The mount points of a mountinfo text (field 5 of each line, octal
/// escapes undone). Any line with fewer than ten fields, or without the
/// `-` separator, is an error.
pub fn parse(text: &str) -> Result<Vec<PathBuf>, MountError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = fields.get(4).filter(|_| fields.len() >= 10 && fields.contains(&"-"));
        match mount_point {
            Some(p) if p.starts_with('/') => out.push(PathBuf::from(OsStr::from_bytes(&unescape_octal(p)))),
            _ => return Err(MountError::Unparsable { line: i.saturating_add(1), text: line.to_string() }),
        }
    }
    if out.is_empty() {
        return Err(MountError::Unparsable { line: 0, text: "no mounts at all".into() });
    }
    Ok(out)
}

/// The mount points at or below `dir` in `table`, deepest first. The
/// kernel lists resolved paths, so `dir` is resolved first (a symlinked
/// root directory would otherwise hide every mount below it).
pub fn under(dir: &Path, table: &[PathBuf]) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found: Vec<PathBuf> = table.iter().filter(|p| p.starts_with(&dir)).cloned().collect();
    found.sort_by(|a, b| b.components().count().cmp(&a.components().count()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let digits = b.get(i.saturating_add(1)..i.saturating_add(4)).filter(|d| d.iter().all(|x| (b'0'..=b'7').contains(x)));
        match digits {
            Some(d) if c == b'\\' => {
                let v = d.iter().fold(0u32, |acc, x| acc.wrapping_mul(8).wrapping_add(u32::from(x.wrapping_sub(b'0'))));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i = i.saturating_add(4);
            }
            _ => {
                out.push(c);
                i = i.saturating_add(1);
            }
        }
    }
    out
}

/// Makes `dir` a shared mount with its submounts (kubelet's MakeRShared of
/// its root directory), so that mounts a CSI driver with Bidirectional
/// propagation makes below it reach the node and the node's reach it: `dir`
/// is bind-mounted onto itself first when it is not a mount point. Nothing
/// is done when the mount that holds it is already shared (as on a systemd
/// host, where `/` is): a bind would only make every later mount below it
/// appear twice, once hidden on the shared parent.
pub fn make_rshared(dir: &Path) -> Result<(), MountError> {
    use nix::mount::MsFlags;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| io(dir, e))?;
    const PATH: &str = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(PATH).map_err(|source| MountError::Unreadable { path: PATH.into(), source })?;
    parse(&text)?;
    let holder = holder(&text, &dir);
    if holder.is_some_and(is_shared) {
        return Ok(());
    }
    if !holder.is_some_and(|l| mount_point(l).as_deref() == Some(dir.as_path())) {
        nix::mount::mount(Some(&dir), &dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(|e| io(&dir, e))?;
    }
    nix::mount::mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>).map_err(|e| io(&dir, e))
}

fn mount_point(line: &str) -> Option<PathBuf> {
    line.split(' ').nth(4).map(|m| PathBuf::from(OsStr::from_bytes(&unescape_octal(m))))
}

/// As kubelet's findMountInfo: the mountinfo line of the mount that holds
/// `dir` (the deepest mount point above it; of several entries for one
/// mount point, the last, which is on top).
fn holder<'a>(text: &'a str, dir: &Path) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| mount_point(l).filter(|m| dir.starts_with(m)).map(|m| (m.components().count(), l)))
        .fold(None::<(usize, &str)>, |best, (depth, l)| match best {
            Some((d, _)) if d > depth => best,
            _ => Some((depth, l)),
        })
        .map(|(_, l)| l)
}

/// Whether a mountinfo line's optional fields make it a shared mount.
fn is_shared(line: &str) -> bool {
    line.split(" - ").next().is_some_and(|head| head.split(' ').skip(6).any(|f| f.starts_with("shared:")))
}

/// Which mount a file is on: the kernel's mount ID where statx gives it
/// (Linux 5.8+), else the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MountKey {
    Id(u64),
    Dev(u64),
}

fn mount_key(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<(MountKey, u32)> {
    // SAFETY: statx writes into the zeroed struct we own; name is a valid C string.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT | if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    let rc = unsafe { libc::statx(dir.as_raw_fd(), name.as_ptr(), flags, libc::STATX_TYPE | libc::STATX_MNT_ID, &mut stx) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let key = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        MountKey::Id(stx.stx_mnt_id)
    } else {
        MountKey::Dev(libc::makedev(stx.stx_dev_major, stx.stx_dev_minor))
    };
    Ok((key, u32::from(stx.stx_mode) & libc::S_IFMT))
}

/// The names in the directory open as `dir` (an O_PATH descriptor will
/// do), without `.` and `..`; listed through a descriptor of its own.
pub fn names_in(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let listed = nix::fcntl::openat(dir.as_fd(), c".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut d = nix::dir::Dir::from_fd(listed)?;
    Ok(d.iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect())
}

fn open_dir(parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

/// Removes `path` and everything below it, on its own mount only. Missing
/// is fine. Stops with an error, removing nothing more, at a mount point,
/// and refuses to start when the mount table cannot be read.
pub fn remove_all_one_filesystem(path: &Path) -> Result<(), MountError> {
    remove_all_with(path, &table()?)
}

/// [`remove_all_one_filesystem`] against a given mount table.
pub fn remove_all_with(path: &Path, table: &[PathBuf]) -> Result<(), MountError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path).map_err(|e| io(path, e));
    }
    if let Some(m) = under(path, table).into_iter().next() {
        return Err(MountError::StillMounted(m));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io(path, std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    };
    let parent_fd = nix::fcntl::open(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| io(parent, e))?;
    let cname = CString::new(name.as_bytes()).map_err(|e| io(path, std::io::Error::other(e)))?;
    let fd = open_dir(parent_fd.as_fd(), &cname).map_err(|e| io(path, e))?;
    let (root_key, _) = mount_key(fd.as_fd(), c"").map_err(|e| io(path, e))?;
    empty_dir(fd, path, root_key)?;
    nix::unistd::unlinkat(parent_fd.as_fd(), cname.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir).map_err(|e| io(path, e))
}

/// Empties the directory open as `fd` (at `path`, for messages), staying on
/// mount `root`.
fn empty_dir(fd: OwnedFd, path: &Path, root: MountKey) -> Result<(), MountError> {
    for name in names_in(&fd).map_err(|e| io(path, e))? {
        let child = path.join(OsStr::from_bytes(name.as_bytes()));
        let (key, kind) = match mount_key(fd.as_fd(), &name) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&child, e)),
        };
        if kind == libc::S_IFDIR {
            if key != root {
                return Err(MountError::StillMounted(child));
            }
            let sub = open_dir(fd.as_fd(), &name).map_err(|e| io(&child, e))?;
            // The directory opened must be the one checked (no swap since).
            let (opened, _) = mount_key(sub.as_fd(), c"").map_err(|e| io(&child, e))?;
            if opened != root {
                return Err(MountError::StillMounted(child));
            }
            empty_dir(sub, &child, root)?;
            nix::unistd::unlinkat(fd.as_fd(), name.as_c_str(), nix::unistd::UnlinkatFlags::RemoveDir).map_err(|e| io(&child, e))?;
        } else {
            match nix::unistd::unlinkat(fd.as_fd(), name.as_c_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io(&child, e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue";

    #[test]
    fn a_table_that_cannot_be_parsed_is_an_error_not_an_empty_table() {
        assert_eq!(parse(LINE).unwrap(), vec![PathBuf::from("/mnt/a b")]);
        assert!(matches!(parse("36 35 98:0 /mnt1"), Err(MountError::Unparsable { line: 1, .. })));
        assert!(matches!(parse(&format!("{LINE}\ngarbage")), Err(MountError::Unparsable { line: 2, .. })));
        assert!(parse("").is_err(), "no mounts at all is no table");
    }

    #[test]
    fn removal_refuses_while_the_table_lists_a_mount_below() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(pod.join("volumes/v")).unwrap();
        std::fs::write(pod.join("volumes/v/data"), "keep").unwrap();
        let real = std::fs::canonicalize(&pod).unwrap();
        let table = vec![PathBuf::from("/"), real.join("volumes/v")];
        let e = remove_all_with(&pod, &table).unwrap_err();
        assert!(matches!(e, MountError::StillMounted(ref p) if p.ends_with("volumes/v")), "{e}");
        assert_eq!(std::fs::read_to_string(pod.join("volumes/v/data")).unwrap(), "keep");
        remove_all_with(&pod, &[PathBuf::from("/")]).unwrap();
        assert!(!pod.exists());
        remove_all_with(&pod, &[PathBuf::from("/")]).unwrap();
    }

    #[test]
    fn removal_does_not_follow_symlinks_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), "x").unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir_all(pod.join("a")).unwrap();
        std::os::unix::fs::symlink(&outside, pod.join("a/link")).unwrap();
        remove_all_with(&pod, &[PathBuf::from("/")]).unwrap();
        assert!(!pod.exists());
        assert!(outside.join("canary").exists(), "the link went, not what it points at");
    }

    /// A real mount (root only): the walk stops at it even when the table it
    /// was given is stale and does not list it.
    #[test]
    fn the_walk_stops_at_a_mount_the_table_missed() {
        assert!(nix::unistd::geteuid().is_root(), "needs root to mount, as the whole suite does (a skip would pass unseen)");
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        for (name, bind) in [("tmpfs", false), ("bind", true)] {
            let mnt = pod.join("volumes").join(name);
            std::fs::create_dir_all(&mnt).unwrap();
            if bind {
                let src = dir.path().join("src");
                std::fs::create_dir_all(&src).unwrap();
                nix::mount::mount(Some(&src), &mnt, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
            } else {
                nix::mount::mount(Some("tmpfs"), &mnt, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
            }
            std::fs::write(mnt.join("data"), "keep").unwrap();
            let e = remove_all_with(&pod, &[PathBuf::from("/")]).unwrap_err();
            assert!(matches!(e, MountError::StillMounted(ref p) if p.ends_with(name)), "{name}: {e}");
            assert_eq!(std::fs::read_to_string(mnt.join("data")).unwrap(), "keep", "{name}: the mounted volume was emptied");
            let e = remove_all_one_filesystem(&pod).unwrap_err();
            assert!(matches!(e, MountError::StillMounted(_)), "{e}");
            nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
        remove_all_one_filesystem(&pod).unwrap();
        assert!(!pod.exists());
    }

    #[test]
    fn the_root_dir_becomes_a_shared_mount() {
        assert!(nix::unistd::geteuid().is_root(), "needs root to mount, as the whole suite does (a skip would pass unseen)");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("kubelet");
        let before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let was_shared = holder(&before, &std::fs::canonicalize(tmp.path()).unwrap()).is_some_and(is_shared);
        make_rshared(&root).unwrap();
        let real = std::fs::canonicalize(&root).unwrap();
        let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(holder(&after, &real).is_some_and(is_shared), "the root dir is on a shared mount");
        let own = after.lines().filter(|l| mount_point(l).as_deref() == Some(real.as_path())).count();
        assert_eq!(own, usize::from(!was_shared), "bound onto itself only when its mount was not shared");
        make_rshared(&root).unwrap();
        // Only this test's mounts count: other tests mount and unmount meanwhile.
        let ours = |table: &str| table.lines().filter(|l| mount_point(l).is_some_and(|m| m.starts_with(&real))).count();
        assert_eq!(ours(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()), ours(&after), "a second start mounts nothing more");
        if own > 0 {
            nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
    }

    #[test]
    fn the_mount_holding_a_directory_is_the_deepest_one_above_it() {
        let text = "1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n2 1 0:5 / /var/lib rw - tmpfs t rw\n3 1 0:6 / /var/lib rw shared:7 - tmpfs t rw\n";
        assert!(holder(text, Path::new("/var/lib/kubelet")).is_some_and(|l| l.starts_with("3 ")), "the last of two on one mount point");
        assert!(holder(text, Path::new("/var/libx")).is_some_and(|l| l.starts_with("1 ")));
        assert!(is_shared(holder(text, Path::new("/srv")).unwrap()));
        assert!(!is_shared("2 1 0:5 / /var/lib rw - tmpfs t rw"));
    }
}
