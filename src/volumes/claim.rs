//! persistentVolumeClaim (and generic ephemeral) volumes: the claim must
//! exist, be Bound and not be being deleted, and its PersistentVolume must
//! name it in `claimRef`; the PV's node affinity is checked against the
//! Node's labels. A `hostPath` PV is used in place, a `local` PV is
//! bind-mounted at `kubernetes.io~local-volume/<pv>`, an `nfs` PV mounted,
//! a `csi` PV staged and published (see csi_setup.rs). Until then the pod
//! waits with FailedMount and retries.

use super::*;

impl Round<'_, '_> {
    /// A claim's volume, as kubelet's volume manager resolves it.
    pub(super) async fn claim(&mut self, src: &k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource, owner: Option<&str>) -> Result<(Claimed, Measure), String> {
        let Some(objects) = self.ctx.objects else {
            return Err("a persistentVolumeClaim needs an apiserver (static pods cannot use one)".into());
        };
        let (ns, name) = (self.namespace.clone(), src.claim_name.clone());
        let claim = objects
            .claim(&ns, &name)
            .await
            .map_err(|e| format!("error processing PVC {ns}/{name}: failed to fetch PVC from API server: {e}"))?
            .ok_or_else(|| format!("error processing PVC {ns}/{name}: failed to fetch PVC from API server: persistentvolumeclaims {name:?} not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("error processing PVC {ns}/{name}: PVC is being deleted"));
        }
        if let Some(pod_uid) = owner {
            let owned = claim.metadata.owner_references.iter().flatten().any(|o| o.kind == "Pod" && o.uid == pod_uid && o.controller == Some(true));
            if !owned {
                return Err(format!("error processing PVC {ns}/{name}: PVC was not created for pod (pod is not owner)"));
            }
        }
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        if phase != "Bound" || volume_name.is_empty() {
            return Err(format!("error processing PVC {ns}/{name}: PVC {ns}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume_name:?})"));
        }
        let pv_name = volume_name;
        let pv = objects
            .persistent_volume(&pv_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("error processing PVC {ns}/{name}: persistentvolume {pv_name:?} not found"))?;
        let spec = pv.spec.unwrap_or_default();
        let claim_uid = claim.metadata.uid.clone().unwrap_or_default();
        // kubelet's getPVSpec: the PV's claimRef carries this claim's UID.
        let bound_to_claim = !claim_uid.is_empty() && spec.claim_ref.as_ref().is_some_and(|r| r.uid.as_deref() == Some(claim_uid.as_str()));
        if !bound_to_claim {
            return Err(format!("error processing PVC {ns}/{name}: persistentvolume {pv_name:?} is not bound to it (claimRef)"));
        }
        // kubelet's checkNodeAffinity: the PV's required terms against the
        // Node's labels as the apiserver has them (labels only, as there).
        if let Some(terms) = spec.node_affinity.as_ref().and_then(|a| a.required.as_ref()).map(|r| &r.node_selector_terms) {
            let labels = self.ctx.node_labels.map(|l| l.borrow().clone()).unwrap_or_default();
            if !crate::node_selector::matches(terms, &labels, "") {
                return Err(format!("MountVolume.NodeAffinity check failed for volume {pv_name:?} : no matching NodeSelectorTerms"));
            }
        }
        let once_pod = claim.spec.as_ref().and_then(|s| s.access_modes.as_ref()).is_some_and(|m| m.iter().any(|a| a == "ReadWriteOncePod"));
        // Taken last of the checks, once the volume is known to be usable here.
        let take = |objects: &dyn ApiObjects, uid: &str| -> Result<(), String> {
            if once_pod && let Err(holder) = objects.take_claim(&ns, &name, uid) {
                return Err(format!("volume uses the ReadWriteOncePod access mode and is already in use by another pod ({holder})"));
            }
            Ok(())
        };
        let read_only = src.read_only == Some(true);
        let block = spec.volume_mode.as_deref() == Some("Block");
        let claim_block = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
        if block != claim_block {
            return Err(format!("error processing PVC {ns}/{name}: its volumeMode does not match persistentvolume {pv_name:?}'s"));
        }
        if block && let Some(c) = &spec.csi {
            let modes = spec.access_modes.clone().unwrap_or_default();
            let mode = modes.first().cloned().unwrap_or_default();
            take(objects, &self.uid)?;
            let device = self.csi_persistent(&pv_name, c, read_only, &mode, &modes, Vec::new(), true).await?;
            let measure = Measure::Csi { driver: c.driver.clone(), handle: c.volume_handle.clone(), staging: None };
            return Ok((Claimed::Block(BlockDevice { device, read_only }), measure));
        }
        if block {
            use std::os::unix::fs::FileTypeExt;
            let device = spec
                .local
                .as_ref()
                .map(|l| PathBuf::from(&l.path))
                .ok_or_else(|| format!("persistentvolume {pv_name:?}: block volumes need a local PV on a block device with this nodelet"))?;
            if !self.ctx.dry_run {
                let md = std::fs::metadata(&device).map_err(|e| format!("block device {}: {e}", device.display()))?;
                if !md.file_type().is_block_device() {
                    return Err(format!("{} is not a block device (volumeMode Block)", device.display()));
                }
            }
            take(objects, &self.uid)?;
            return Ok((Claimed::Block(BlockDevice { device, read_only }), Measure::BlockSize));
        }
        if let Some(hp) = &spec.host_path {
            let path = PathBuf::from(&hp.path);
            if !self.ctx.dry_run {
                check_host_path(&path, hp.type_.as_deref().unwrap_or(""))?;
            }
            take(objects, &self.uid)?;
            return Ok((Claimed::Mount(Mountable { host_path: path, read_only }), Measure::Nothing));
        }
        if let Some(n) = &spec.nfs {
            let target = plugin_dir(self.ctx.node, &self.uid, "nfs", &pv_name)?;
            let read_only = read_only || n.read_only == Some(true);
            if !self.ctx.dry_run {
                take(objects, &self.uid)?;
                mount_nfs(&n.server, &n.path, &target, read_only, spec.mount_options.as_deref().unwrap_or(&[])).await?;
            }
            return Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs));
        }
        if let Some(c) = &spec.csi {
            let modes = spec.access_modes.clone().unwrap_or_default();
            let mode = if modes.len() == 1 { modes[0].clone() } else { modes.first().cloned().unwrap_or_default() };
            take(objects, &self.uid)?;
            let flags = spec.mount_options.clone().unwrap_or_default();
            // The claim's readOnly is what NodePublish gets; the PV's
            // csi.readOnly is the controller's (ControllerPublish).
            let path = self.csi_persistent(&pv_name, c, read_only, &mode, &modes, flags, false).await?;
            let staging = Some(csi::staging_path(self.ctx.node, &c.driver, &c.volume_handle)?);
            let measure = Measure::Csi { driver: c.driver.clone(), handle: c.volume_handle.clone(), staging };
            return Ok((Claimed::Mount(Mountable { host_path: path, read_only }), measure));
        }
        let Some(local) = &spec.local else {
            return Err(format!("persistentvolume {pv_name:?}: only hostPath and local persistent volumes are implemented by this nodelet yet"));
        };
        let source = PathBuf::from(&local.path);
        let target = plugin_dir(self.ctx.node, &self.uid, "local-volume", &pv_name)?;
        if self.ctx.dry_run {
            return Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs));
        }
        take(objects, &self.uid)?;
        let md = std::fs::metadata(&source).map_err(|e| format!("local volume path {}: {e}", source.display()))?;
        if !md.is_dir() {
            return Err(format!("local volume path {} is not a directory (block devices are not implemented by this nodelet yet)", source.display()));
        }
        if !is_mounted(&target) {
            make_dir(&target, 0o750)?;
            use nix::mount::MsFlags;
            nix::mount::mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| format!("bind mount {} on {}: {e}", source.display(), target.display()))?;
            if read_only {
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                if let Err(e) = nix::mount::mount(None::<&str>, &target, None::<&str>, ro, None::<&str>) {
                    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
                    return Err(format!("remount {} read-only: {e}", target.display()));
                }
            }
            tracing::info!(pv = %pv_name, path = %source.display(), target = %target.display(), "local volume mounted");
            // kubelet's local volume: ownership only on a writable mount
            // (a read-only bind could not be chowned, and must not be).
            if let Some(g) = self.fs_group.filter(|_| !read_only) {
                let policy = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.fs_group_change_policy.clone());
                set_volume_ownership(&target, g, read_only, policy.as_deref() == Some("OnRootMismatch"))?;
            }
        }
        Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs))
    }
}
