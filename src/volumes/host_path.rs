//! hostPath volumes: the node's path, after its `type` check (creating it for
//! DirectoryOrCreate and FileOrCreate); never removed.

use super::*;

/// The `type` check of a hostPath volume.
pub(super) fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::metadata(path);
    let p = path.display();
    let want = |ok: bool, what: &str| if ok { Ok(()) } else { Err(format!("hostPath type check failed: {p} is not a {what}")) };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match md {
            Ok(m) => want(m.is_dir(), "directory"),
            Err(_) => make_dir(path, 0o755),
        },
        "FileOrCreate" => match md {
            Ok(m) => want(m.is_file(), "file"),
            Err(_) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(|_| ())
                .map_err(|e| format!("hostPath type check failed: cannot create {p}: {e}")),
        },
        _ => {
            let m = md.map_err(|_| format!("hostPath type check failed: {p} does not exist"))?;
            let t = m.file_type();
            match kind {
                "Directory" => want(t.is_dir(), "directory"),
                "File" => want(t.is_file(), "file"),
                "Socket" => want(t.is_socket(), "socket"),
                "CharDevice" => want(t.is_char_device(), "character device"),
                "BlockDevice" => want(t.is_block_device(), "block device"),
                other => Err(format!("hostPath type {other:?} is not supported")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        check_host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        check_host_path(&d, "Directory").unwrap();
        assert!(check_host_path(&d, "File").unwrap_err().contains("is not a file"));
        let f = tmp.path().join("f");
        check_host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert!(check_host_path(&tmp.path().join("none"), "Socket").unwrap_err().contains("does not exist"));
    }
}
