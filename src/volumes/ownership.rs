//! fsGroup: volumes given to the pod's group as kubelet's SetVolumeOwnership
//! does. The walk goes by descriptors, never by path: every entry is opened
//! relative to its opened parent without following symlinks (O_PATH |
//! O_NOFOLLOW), chowned through that descriptor and chmodded through
//! `/proc/self/fd/N`, so a container sharing the volume that swaps a
//! directory for a symlink mid-walk cannot make nodelet change a file
//! outside the volume.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

use super::*;

/// The group bits kubelet adds: read (and write unless read-only), plus
/// search and setgid on directories.
fn mask(read_only: bool, dir: bool) -> u32 {
    let base = if read_only { 0o440 } else { 0o660 };
    if dir { base | 0o110 | 0o2000 } else { base }
}

/// kubelet's SetVolumeOwnership: every file and directory of the volume
/// given to group `gid` with group read (and write, unless read-only)
/// access, directories also searchable and setgid, symlinks only chowned.
/// With `OnRootMismatch`, nothing is done when the root is already so.
pub(super) fn set_volume_ownership(root: &Path, gid: u32, read_only: bool, on_root_mismatch: bool) -> Result<(), String> {
    if on_root_mismatch
        && let Ok(md) = std::fs::metadata(root)
        && md.gid() == gid
        && md.mode() & 0o7777 & mask(read_only, true) == mask(read_only, true)
    {
        return Ok(());
    }
    let fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| format!("{}: {e}", root.display()))?;
    apply(fd, root, gid, read_only)
}

/// Chowns and chmods the entry open as `fd` (O_PATH), then its children.
fn apply(fd: OwnedFd, path: &Path, gid: u32, read_only: bool) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", path.display());
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| fail("stat of", &e))?;
    // SAFETY: fchownat on a descriptor we own, with an empty C string.
    let rc = unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), u32::MAX, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(fail("setting the fsGroup on", &std::io::Error::last_os_error()));
    }
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        return Ok(());
    }
    let is_dir = kind == SFlag::S_IFDIR;
    let mode = st.st_mode & 0o7777;
    let want = mode | mask(read_only, is_dir);
    if want != mode {
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::set_permissions(&proc_path, std::fs::Permissions::from_mode(want)).map_err(|e| fail("setting the mode of", &e))?;
    }
    if !is_dir {
        return Ok(());
    }
    for name in crate::mounts::names_in(&fd).map_err(|e| fail("listing", &e))? {
        let child_path = path.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        let child = match open_nofollow(&fd, &name) {
            Ok(c) => c,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(format!("opening {}: {e}", child_path.display())),
        };
        apply(child, &child_path, gid, read_only)?;
    }
    Ok(())
}

fn open_nofollow(parent: &OwnedFd, name: &CStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(parent.as_fd(), name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_reaches_every_file_and_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::fs::write(outside.join("host"), "x").unwrap();
        std::fs::set_permissions(root.join("a/b/f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(outside.join("host"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let gid = 4242;
        set_volume_ownership(&root, gid, false, false).unwrap();
        let f = std::fs::metadata(root.join("a/b/f")).unwrap();
        assert_eq!((f.gid(), f.mode() & 0o7777), (gid, 0o660));
        let d = std::fs::metadata(root.join("a")).unwrap();
        assert_eq!((d.gid(), d.mode() & 0o2070), (gid, 0o2070));
        assert_eq!(std::fs::symlink_metadata(root.join("link")).unwrap().gid(), gid, "the link itself is chowned");
        let host = std::fs::metadata(outside.join("host")).unwrap();
        assert_ne!(host.gid(), gid, "nothing behind a link is touched");
        assert_eq!(host.mode() & 0o7777, 0o600);
    }
}
