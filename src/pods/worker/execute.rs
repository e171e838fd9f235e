//! Carrying out the planner's actions through the runtime.

use super::*;

impl Worker {
    pub(super) async fn execute(
        &mut self,
        pod: &Pod,
        obs: &RuntimePod,
        sandbox: &mut Option<SandboxInUse>,
        action: Action,
    ) -> Result<(), Failed> {
        let rt = self.ctx.runtime.clone();
        match action {
            Action::KillPod => {
                self.kill_pod(Some(pod), obs).await;
                *sandbox = None;
                Ok(())
            }
            Action::CreateSandbox { attempt } => {
                let s = self.create_sandbox(pod, attempt).await?;
                *sandbox = Some(s);
                Ok(())
            }
            Action::StartContainer { name, kind, attempt, restart_after } => {
                let Some(sb) = sandbox.as_ref() else {
                    return Err(self.retry_later());
                };
                let spec = pod.spec.as_ref().expect("planned pods have a spec");
                let found = match kind {
                    crate::pods::ContainerKind::Ephemeral => plan::ephemeral(spec).into_iter().find(|(e, _)| e.name == name),
                    _ => plan::container_spec(spec, &name).map(|(c, _)| (c, None)),
                };
                let (c, target) = found.ok_or_else(|| self.retry_later())?;
                // An ephemeral container with a target joins the target's
                // process namespace: the target must be running here.
                let target = match target {
                    None => None,
                    Some(t) => match obs.running().find(|x| x.name == t && x.sandbox_id == sb.id) {
                        Some(x) => Some(x.id.clone()),
                        None => {
                            let msg = format!("target container {t:?} of ephemeral container {name:?} is not running");
                            return Err(self.fail_container(&name, "CreateContainerConfigError", msg));
                        }
                    },
                };
                self.start_container(pod, &c, kind, attempt, sb, target.as_deref()).await?;
                if let Some(exit) = restart_after {
                    self.crash_backoff.next(&plan::backoff_key(&c), exit);
                }
                Ok(())
            }
            Action::KillContainer { id, name, reason } => {
                let grace = PodProbes::grace_override(pod, &name, reason).map_or_else(|| grace_of(Some(pod), obs), |g| g.max(MIN_GRACE));
                let ips = pod_ips(Some(pod), &self.ctx.node, &obs.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default());
                let pod_ip = ips.first().map(String::as_str).unwrap_or("");
                let Some(c) = obs.containers.iter().find(|c| c.id == id) else { return Ok(()) };
                if self.stop_container(&stop::StopTarget::of(c, Some(pod), pod_ip), &reason.message(&name), grace).await {
                    Ok(())
                } else {
                    Err(self.retry_later())
                }
            }
            Action::StopSandbox { id } => self.quietly(rt.stop_pod_sandbox(&id).await, "StopPodSandbox"),
            Action::RemoveContainer { id } => {
                self.quietly(rt.remove_container(&id).await, "RemoveContainer")?;
                self.unlink_log(obs, &id);
                Ok(())
            }
            Action::RemoveSandbox { id } => self.quietly(rt.remove_pod_sandbox(&id).await, "RemovePodSandbox"),
        }
    }

    pub(super) fn unlink_log(&self, obs: &RuntimePod, id: &str) {
        if let Some(c) = obs.containers.iter().find(|c| c.id == id) {
            logs::unlink(&self.ctx.node, &self.identity, &c.name, id);
        }
    }

    pub(super) fn quietly(&self, r: Result<(), RuntimeError>, what: &str) -> Result<(), Failed> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                Err(self.retry_later())
            }
        }
    }
}
