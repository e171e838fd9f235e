//! CSI volumes as a pod sets them up: persistent ones (attached when the
//! driver needs it, staged once per node, published per pod) and ephemeral
//! inline ones, with the driver's CSIDriver settings, secrets and
//! fsGroupPolicy. The calls and records themselves are in csi.rs.

use super::*;

impl Round<'_, '_> {
    /// The registered driver and its CSIDriver object's settings.
    pub(super) async fn csi_driver(&mut self, name: &str) -> Result<(crate::csi::Driver, k8s_openapi::api::storage::v1::CSIDriverSpec), String> {
        let driver = self
            .ctx
            .csi
            .and_then(|d| d.get(name))
            .ok_or_else(|| format!("kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name {name} not found in the list of registered CSI drivers"))?;
        let spec = match self.ctx.objects {
            Some(o) => o.csi_driver(name).await.map_err(|e| e.to_string())?.map(|d| d.spec).unwrap_or_default(),
            None => Default::default(),
        };
        Ok((driver, spec))
    }

    /// A secret a CSI volume names, as strings.
    pub(super) async fn csi_secret(&mut self, r: Option<(&str, &str)>) -> Result<std::collections::HashMap<String, String>, String> {
        let Some((namespace, name)) = r else { return Ok(Default::default()) };
        let Some(objects) = self.ctx.objects else { return Err("CSI secrets need an apiserver".into()) };
        let key = ObjectKey { kind: ObjectKind::Secret, namespace: namespace.to_string(), name: name.to_string() };
        self.out.uses.insert(key.clone());
        let data = objects.get(&key, &self.uid).await.map_err(|e| e.to_string())?;
        let data = data.ok_or_else(|| format!("secret {namespace}/{name} not found"))?;
        csi::secret_strings(Some(&data)).map_err(|e| format!("secret {namespace}/{name}: {e}"))
    }

    /// fsGroup on a published CSI volume, by the driver's fsGroupPolicy
    /// (kubelet's default ReadWriteOnceWithFSType: only a ReadWriteOnce
    /// volume with an fsType).
    pub(super) fn csi_fs_group(&self, target: &Path, policy: Option<&str>, fs_type: &str, access_modes: &[String], read_only: bool) -> Result<(), String> {
        let Some(g) = self.fs_group else { return Ok(()) };
        // kubelet's supportsFSGroup: never on a read-only volume; by default
        // only with an fsType and a ReadWriteOnce access mode among them.
        let applies = !read_only
            && match policy.unwrap_or("ReadWriteOnceWithFSType") {
                "File" => true,
                "None" => false,
                _ => !fs_type.is_empty() && access_modes.iter().any(|m| m == "ReadWriteOnce"),
            };
        if applies {
            let change = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.fs_group_change_policy.clone());
            set_volume_ownership(target, g, read_only, change.as_deref() == Some("OnRootMismatch"))?;
        }
        Ok(())
    }

    /// A CSI persistent volume: attached (when the driver needs it), staged
    /// and published.
    pub(super) async fn csi_persistent(
        &mut self,
        pv_name: &str,
        c: &k8s_openapi::api::core::v1::CSIPersistentVolumeSource,
        read_only: bool,
        mode: &str,
        modes: &[String],
        mount_flags: Vec<String>,
        block: bool,
    ) -> Result<PathBuf, String> {
        let target = if block {
            csi::block_publish(self.ctx.node, pv_name, &self.uid)?
        } else {
            plugin_dir(self.ctx.node, &self.uid, "csi", pv_name)?.join("mount")
        };
        if self.ctx.dry_run {
            return Ok(target);
        }
        let (driver, dspec) = self.csi_driver(&c.driver).await?;
        if dspec.volume_lifecycle_modes.as_ref().is_some_and(|m| !m.iter().any(|x| x == "Persistent")) {
            return Err(format!("volume mode \"Persistent\" not supported by driver {}", c.driver));
        }
        let mut publish_context = std::collections::HashMap::new();
        let mut attachment_id = String::new();
        if dspec.attach_required != Some(false) {
            // The attach-detach controller and the driver's attacher make the
            // VolumeAttachment; the node waits for the controller's record in
            // its Node status (kubelet's VerifyControllerAttachedVolume), then
            // for the attachment to say attached (the CSI attacher's wait).
            let name = csi::attachment_name(&c.volume_handle, &c.driver, &self.ctx.node.node_name);
            let objects = self.ctx.objects.ok_or("an attachable CSI volume needs an apiserver")?;
            let unique = format!("kubernetes.io/csi/{}^{}", c.driver, c.volume_handle);
            if !objects.node_volumes_attached(&self.ctx.node.node_name).await.map_err(|e| e.to_string())?.contains(&unique) {
                return Err(format!("Volume not attached according to node status for volume {unique:?}"));
            }
            let va = objects
                .volume_attachment(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is not there yet"))?;
            if va.metadata.deletion_timestamp.is_some() {
                return Err(format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is being deleted"));
            }
            attachment_id = name.clone();
            let status = va.status.unwrap_or_default();
            if !status.attached {
                let why = status.attach_error.and_then(|e| e.message).map(|m| format!(": {m}")).unwrap_or_default();
                return Err(format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is not attached yet{why}"));
            }
            publish_context = status.attachment_metadata.unwrap_or_default().into_iter().collect();
        }
        let mut volume_context: std::collections::HashMap<String, String> = c.volume_attributes.clone().unwrap_or_default().into_iter().collect();
        if dspec.pod_info_on_mount == Some(true) {
            volume_context.extend(csi::pod_info(self.pod, false));
        }
        // Staged or published only once the Node's status lists the volume
        // in volumesInUse: the attach-detach controller never detaches it
        // from under a mount (kubelet's ReportedInUse).
        let unique = format!("kubernetes.io/csi/{}^{}", c.driver, c.volume_handle);
        if let Some(in_use) = self.ctx.in_use
            && !in_use.want_and_wait(&self.uid, &unique, std::time::Duration::from_secs(10)).await
        {
            return Err(format!("volume {unique:?} has not been added to the list of VolumesInUse in the node's volume status yet"));
        }
        // The stage secret only when there is staging to do.
        let staging = csi::staging_path(self.ctx.node, &c.driver, &c.volume_handle)?;
        let stage_secrets = if driver.stage_unstage && !is_mounted(&staging) {
            self.csi_secret(c.node_stage_secret_ref.as_ref().map(|r| (r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or("")))).await?
        } else {
            Default::default()
        };
        let publish_secrets =
            self.csi_secret(c.node_publish_secret_ref.as_ref().map(|r| (r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or("")))).await?;
        let fs_type = c.fs_type.clone().unwrap_or_default();
        let req = csi::Publish {
            driver: &driver,
            handle: c.volume_handle.clone(),
            spec_name: pv_name.to_string(),
            ephemeral: false,
            fs_type: fs_type.clone(),
            mount_flags,
            read_only,
            access_mode: mode.to_string(),
            volume_context,
            publish_context,
            stage_secrets,
            publish_secrets,
            attachment_id,
            block,
        };
        if block {
            return csi::publish_block(self.ctx.node, &self.uid, &req).await;
        }
        let target = csi::publish(self.ctx.node, &self.uid, &req).await?;
        self.csi_fs_group(&target, dspec.fs_group_policy.as_deref(), &fs_type, modes, read_only)?;
        Ok(target)
    }

    /// A CSI ephemeral inline volume: published only, its handle made from
    /// the pod and the volume.
    pub(super) async fn csi_inline(&mut self, volume: &str, c: &k8s_openapi::api::core::v1::CSIVolumeSource) -> Result<Mountable, String> {
        let read_only = c.read_only == Some(true);
        let target = plugin_dir(self.ctx.node, &self.uid, "csi", volume)?.join("mount");
        if self.ctx.dry_run {
            return Ok(Mountable { host_path: target, read_only });
        }
        let (driver, dspec) = self.csi_driver(&c.driver).await?;
        let modes = dspec.volume_lifecycle_modes.clone().unwrap_or_else(|| vec!["Persistent".into()]);
        if !modes.iter().any(|m| m == "Ephemeral") {
            return Err(format!("volume mode \"Ephemeral\" not supported by driver {} (only supports {modes:?})", c.driver));
        }
        let mut volume_context: std::collections::HashMap<String, String> = c.volume_attributes.clone().unwrap_or_default().into_iter().collect();
        if dspec.pod_info_on_mount == Some(true) {
            volume_context.extend(csi::pod_info(self.pod, true));
        }
        let ns = self.namespace.clone();
        let publish_secrets = self.csi_secret(c.node_publish_secret_ref.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty()).map(|n| (ns.as_str(), n))).await?;
        let fs_type = c.fs_type.clone().unwrap_or_default();
        let req = csi::Publish {
            driver: &driver,
            handle: csi::ephemeral_handle(&self.uid, volume),
            spec_name: volume.to_string(),
            ephemeral: true,
            fs_type: fs_type.clone(),
            mount_flags: Vec::new(),
            read_only,
            access_mode: "ReadWriteOnce".into(),
            volume_context,
            publish_context: Default::default(),
            stage_secrets: Default::default(),
            publish_secrets,
            attachment_id: String::new(),
            block: false,
        };
        let target = csi::publish(self.ctx.node, &self.uid, &req).await?;
        self.csi_fs_group(&target, dspec.fs_group_policy.as_deref(), &fs_type, &["ReadWriteOnce".to_string()], read_only)?;
        Ok(Mountable { host_path: target, read_only })
    }
}
