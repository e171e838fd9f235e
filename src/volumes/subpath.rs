//! subPath mounts that cannot leave their volume (the CVE-2017-1002101 and
//! CVE-2021-25741 class). A container that can write to a volume can swap a
//! directory for a symlink at any moment; a path checked and then mounted by
//! name is a race it can win. So, as kubelet's doBindSubPath:
//!
//! 1. the subPath must be relative and without `..` (kubelet's
//!    ValidatePathNoBacksteps);
//! 2. it is opened from the volume root by the kernel with `openat2` and
//!    RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, one component at a time, so a
//!    symlink is followed only while it stays inside the volume; a missing
//!    component is made with `mkdirat` relative to its opened parent, with
//!    the volume root's mode;
//! 3. the opened file (not a name) is bind-mounted through
//!    `/proc/self/fd/N` onto `<pod dir>/volume-subpaths/<volume>/<container>/<index>`,
//!    a path only nodelet writes to, and that is what CRI gets. What the
//!    container does to the volume afterwards cannot change what is mounted.
//!
//! A bind that is already there is kept when it shows the same file, else
//! replaced. Pod teardown unmounts these with the pod's other mounts.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

/// Why a subPath was refused or could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    /// Absolute, or with a `..` component.
    #[error("subPath {0:?} must be a relative path without '..'")]
    Backsteps(String),
    /// A symlink on the way leads out of the volume.
    #[error("subPath {sub:?} leads out of the volume at {at:?}")]
    Escapes { sub: String, at: String },
    /// A file system call failed.
    #[error("subPath {sub:?}: {what}: {source}")]
    Io {
        sub: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The components of a relative subPath without `..`, `.` and empty ones
/// dropped.
pub fn components(sub: &str) -> Result<Vec<&str>, SubPathError> {
    let path = Path::new(sub);
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_str().ok_or_else(|| SubPathError::Backsteps(sub.to_string()))?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(SubPathError::Backsteps(sub.to_string())),
        }
    }
    Ok(out)
}

fn beneath(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(root.as_fd(), rel, how)
}

/// Opens `sub` below the volume `root`, creating missing directories; the
/// file it names, as an O_PATH descriptor that is beneath the root whatever
/// the volume's contents do meanwhile.
pub fn open_in_volume(root: &Path, sub: &str) -> Result<OwnedFd, SubPathError> {
    let io = |what: String| move |e: Errno| SubPathError::Io { sub: sub.to_string(), what, source: e.into() };
    let parts = components(sub)?;
    let root_fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io(format!("opening the volume {}", root.display())))?;
    let mode = nix::sys::stat::fstat(root_fd.as_fd()).map_err(io("reading the volume's mode".into()))?.st_mode & 0o7777;
    let mut cur = root_fd.try_clone().map_err(|e| SubPathError::Io { sub: sub.to_string(), what: "dup".into(), source: e })?;
    let mut prefix = String::new();
    for part in parts {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let opened = match beneath(&root_fd, &prefix) {
            Err(Errno::ENOENT) => {
                // Made relative to the opened parent: never through a link.
                match nix::sys::stat::mkdirat(cur.as_fd(), part, Mode::from_bits_truncate(mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io(format!("creating {prefix:?}"))(e)),
                }
                beneath(&root_fd, &prefix)
            }
            other => other,
        };
        cur = match opened {
            Ok(fd) => fd,
            Err(Errno::EXDEV) | Err(Errno::ELOOP) => return Err(SubPathError::Escapes { sub: sub.to_string(), at: prefix }),
            Err(e) => return Err(io(format!("opening {prefix:?}"))(e)),
        };
    }
    Ok(cur)
}

fn same_file(a: &nix::sys::stat::FileStat, b: &nix::sys::stat::FileStat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Binds subPath `sub` of the volume at `root` onto `target` (made here:
/// a directory or an empty file, as the source is) and returns `target`.
pub fn bind(root: &Path, sub: &str, target: &Path) -> Result<PathBuf, SubPathError> {
    let io = |what: String| move |e: std::io::Error| SubPathError::Io { sub: sub.to_string(), what, source: e };
    let fd = open_in_volume(root, sub)?;
    let source = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| io("stat".into())(e.into()))?;
    let is_dir = SFlag::from_bits_truncate(source.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if let Ok(existing) = nix::sys::stat::lstat(target) {
        if super::is_mounted(target) {
            if same_file(&existing, &source) {
                return Ok(target.to_path_buf());
            }
            nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| io(format!("unmounting the old bind at {}", target.display()))(e.into()))?;
        }
        let existing_dir = SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if existing_dir != is_dir {
            let removed = if existing_dir { std::fs::remove_dir(target) } else { std::fs::remove_file(target) };
            removed.map_err(io(format!("replacing {}", target.display())))?;
        }
    }
    if let Some(parent) = target.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o750).create(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if is_dir {
        match std::fs::create_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", target.display()))(e)),
        }
    } else {
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(target).map_err(io(format!("creating {}", target.display())))?;
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::mount(Some(proc_path.as_str()), target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| io(format!("bind-mounting onto {}", target.display()))(e.into()))?;
    // What is mounted must be what was opened.
    let mounted = nix::sys::stat::stat(target).map_err(|e| io("stat of the bind".into())(e.into()))?;
    if !same_file(&mounted, &source) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(SubPathError::Escapes { sub: sub.to_string(), at: target.display().to_string() });
    }
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backsteps_and_absolute_paths_are_refused() {
        assert_eq!(components("a/./b/").unwrap(), ["a", "b"]);
        for bad in ["../x", "a/../../x", "/abs", "a/.."] {
            assert!(matches!(components(bad), Err(SubPathError::Backsteps(_))), "{bad}");
        }
    }

    #[test]
    fn links_inside_the_volume_are_followed_and_links_out_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        std::fs::create_dir_all(root.join("real/deeper")).unwrap();
        std::os::unix::fs::symlink("real", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("absolute")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("real/up")).unwrap();
        open_in_volume(&root, "inside/deeper").unwrap();
        open_in_volume(&root, "new/dirs").unwrap();
        assert!(root.join("new/dirs").is_dir(), "missing directories are made");
        for bad in ["absolute", "absolute/passwd", "real/up", "real/up/x"] {
            let e = open_in_volume(&root, bad).unwrap_err();
            assert!(matches!(e, SubPathError::Escapes { .. }), "{bad}: {e}");
        }
        assert!(!tmp.path().join("x").exists(), "nothing made outside the volume");
    }

    /// The race itself, made deterministic: the subPath is a directory when
    /// it is bound and a link to the host right after. What was bound stays
    /// the volume's directory. (Resolving a name and mounting it later, as
    /// nodelet used to, mounts the host directory.)
    #[test]
    fn a_directory_swapped_for_a_link_after_the_bind_changes_nothing() {
        assert!(nix::unistd::geteuid().is_root(), "needs root to mount, as the whole suite does (a skip would pass unseen)");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let host = tmp.path().join("host");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "host data").unwrap();
        std::fs::write(root.join("d/mine"), "volume data").unwrap();
        let target = tmp.path().join("pod/volume-subpaths/v/c/0");
        // The volume's directory is opened; then the container swaps it.
        let fd = open_in_volume(&root, "d").unwrap();
        std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("d")).unwrap();
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::create_dir_all(&target).unwrap();
        nix::mount::mount(Some(proc_path.as_str()), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
        assert!(target.join("mine").exists() && !target.join("secret").exists(), "the opened directory was mounted");
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        // Now through `bind`: the link is refused, the directory bound.
        assert!(matches!(bind(&root, "d", &target), Err(SubPathError::Escapes { .. })));
        std::fs::remove_file(root.join("d")).unwrap();
        std::fs::rename(root.join("d.old"), root.join("d")).unwrap();
        assert_eq!(bind(&root, "d", &target).unwrap(), target);
        std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
        std::os::unix::fs::symlink(&host, root.join("d")).unwrap();
        assert!(target.join("mine").exists() && !target.join("secret").exists(), "the swap after the bind changes nothing");
        // Bound again (a restart): the stale bind is replaced by a refusal.
        assert!(bind(&root, "d", &target).is_err());
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        // A file subPath binds onto a file.
        std::fs::write(root.join("f"), "file").unwrap();
        let file_target = tmp.path().join("pod/volume-subpaths/v/c/1");
        bind(&root, "f", &file_target).unwrap();
        assert_eq!(std::fs::read_to_string(&file_target).unwrap(), "file");
        nix::mount::umount2(&file_target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
