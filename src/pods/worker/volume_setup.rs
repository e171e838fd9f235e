//! The pod's volumes: set up before its containers start (waiting, with
//! the time to look again, while a volume cannot be set up yet) and
//! released once its containers are gone.

use super::*;

impl Worker {
    /// Unpublishes the pod's CSI volumes, undoes its mounts and removes its
    /// volume directories (an emptyDir's data goes, as kubelet's TearDown
    /// does), and unprepares its DRA claims; the pod's directory stays until
    /// the pod is deleted.
    pub(super) async fn release_volumes(&mut self) -> Result<(), String> {
        self.ctx.mounted.remove(&self.identity.uid);
        self.volumes = None;
        let node = &self.ctx.node;
        let pod_dir = sandbox::pod_dir(node, &self.identity.uid).map_err(|e| e.to_string())?;
        crate::volumes::csi::unpublish_pod(node, &self.ctx.csi, &pod_dir).await?;
        crate::volumes::tear_down(&pod_dir)?;
        crate::volumes::remove_volume_dirs(&pod_dir);
        self.ctx.in_use.release(&self.identity.uid);
        // An ended pod's claims are let go of too (kubelet unprepares them
        // when the pod terminates, not when it is deleted).
        self.ctx.dra.unprepare(&self.identity.uid).await.map_err(|e| format!("unprepare dynamic resources: {e}"))?;
        Ok(())
    }

    /// Sets up or refreshes the pod's volumes. Ok: when a token must be
    /// renewed; Err: when to try again, the failures reported.
    pub(super) async fn set_up_volumes(&mut self, pod: &Pod, ips: &[String]) -> Result<Option<UnixNanos>, UnixNanos> {
        let ctx = VolumeContext {
            node: &self.ctx.node,
            objects: self.ctx.objects.as_deref(),
            dry_run: self.ctx.dry_run,
            csi: Some(&self.ctx.csi),
            in_use: Some(&self.ctx.in_use),
            node_labels: Some(&self.ctx.node_labels),
        };
        let (vols, errors) = volumes::set_up(&ctx, pod, ips, self.volumes.as_ref()).await;
        let refresh = vols.refresh_at.map(|s| UnixNanos(s.saturating_mul(1_000_000_000)));
        let first = self.volumes.is_none();
        if errors.is_empty() {
            if first && self.ctx.dry_run {
                for (name, v) in &vols.volumes {
                    tracing::info!(volume = %name, path = %v.host_path.display(), "dry run: volume planned, nothing written");
                }
            }
            self.mount_errors.clear();
            self.ctx.mounted.set(&self.identity.uid, &vols);
            self.volumes = Some(vols);
            return Ok(refresh);
        }
        let now: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        for e in now.difference(&self.mount_errors) {
            tracing::warn!("{e}");
            self.event(EventType::Warning, "FailedMount", e);
        }
        self.mount_errors = now;
        if self.volumes.is_some() {
            // A running pod keeps its volumes; the ones that set up are
            // refreshed, the failed ones keep their last contents.
            let mut merged = self.volumes.take().unwrap_or_default();
            merged.uses.extend(vols.uses);
            merged.volumes.extend(vols.volumes);
            merged.devices.extend(vols.devices);
            merged.measures.extend(vols.measures);
            merged.refresh_at = vols.refresh_at;
            self.ctx.mounted.set(&self.identity.uid, &merged);
            self.volumes = Some(merged);
        } else {
            // Not even set up once: watch what was asked for all the same.
            self.volumes = None;
            self.pending_uses = vols.uses;
        }
        Err(self.retry_later().retry_at)
    }
}
