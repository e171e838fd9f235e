//! nfs volumes, inline and as a PersistentVolume source.

use super::*;

/// Mounts an NFS export at `target` as kubelet's nfs plugin does: `mount -t
/// nfs [-o options] server:path target` (the node needs `mount.nfs`, Debian's
/// nfs-common), the PV's `mountOptions` and `ro` for a read-only volume. An
/// IPv6 server is bracketed. Already mounted: nothing to do.
pub(super) async fn mount_nfs(server: &str, path: &str, target: &Path, read_only: bool, options: &[String]) -> Result<(), String> {
    if is_mounted(target) {
        return Ok(());
    }
    make_dir(target, 0o750)?;
    let source = if server.contains(':') { format!("[{server}]:{path}") } else { format!("{server}:{path}") };
    let mut opts: Vec<String> = options.to_vec();
    if read_only {
        opts.push("ro".into());
    }
    let mut args: Vec<String> = vec!["-t".into(), "nfs".into()];
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.join(","));
    }
    args.push(source.clone());
    args.push(target.display().to_string());
    let out = tokio::process::Command::new("mount")
        .args(&args)
        .output()
        .await
        .map_err(|e| format!("mount failed: {e}\nMounting command: mount\nMounting arguments: {}", args.join(" ")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(target);
        return Err(format!(
            "mount failed: {}\nMounting command: mount\nMounting arguments: {}\nOutput: {}",
            out.status,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    tracing::info!(source = %source, target = %target.display(), "NFS volume mounted");
    Ok(())
}
