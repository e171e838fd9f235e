//! One task per pod. A worker reads its pod's runtime state, asks the pure
//! planner what to do, does it through the runtime, publishes the pod's
//! status, and sleeps until something changes: the desired pod, the runtime
//! (woken by the relist loop), a back-off expiring, or a periodic resync.
//!
//! Termination (the pod left its source, or an orphan was found) stops the
//! containers with the grace period, then the sandbox, removes them all,
//! and cleans up the pod's log directory, pod directory and cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::backoff::{Backoff, Failure};
use super::events::{EventRecorder, EventType};
use super::plan::{self, Action, PlanInput, Waiting};
use super::status::{StatusInput, pod_status};
use super::store::{PodRecord, StatusStore};
use super::{ContainerKind, DesiredPod, NodeContext, cgroups, container, logs, sandbox};
use crate::runtime::labels::PodIdentity;
use crate::runtime::observe::{self, PodInspector};
use crate::runtime::{unix_nanos as now_nanos, ObservedContainer, Runtime, RuntimeError, RuntimeHealth, RuntimePod, cri};

/// How often a quiet pod is re-checked anyway (kubelet's syncFrequency).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Rounds of back-to-back actions before an eager worker pauses.
const MAX_BUSY_ROUNDS: u32 = 20;
/// After acting, a worker looks again this soon even without news.
const AFTER_ACTING: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct WorkerContext {
    pub runtime: Arc<dyn Runtime>,
    pub node: Arc<NodeContext>,
    pub events: Arc<dyn EventRecorder>,
    pub statuses: StatusStore,
    pub health: watch::Receiver<RuntimeHealth>,
    pub resync: Duration,
    /// Re-plan right after acting instead of waiting for the relist (dry
    /// runs, where the simulated runtime changes at once).
    pub eager: bool,
}

#[derive(Debug)]
pub enum WorkerMsg {
    /// A new version of the desired pod.
    Update(DesiredPod),
    /// The runtime state of the pod changed.
    Changed,
    /// Stop and remove the pod.
    Terminate,
}

/// kubelet never gives StopContainer less than this.
const MIN_GRACE: i64 = 2;

/// The pod's grace period, from its spec or (for an orphan) as recorded on
/// its containers.
fn grace_of(pod: Option<&Pod>, obs: &RuntimePod) -> i64 {
    pod.and_then(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .or_else(|| obs.containers.iter().find_map(|c| c.grace_period()))
        .unwrap_or(30)
        .max(MIN_GRACE)
}

fn soonest(at: i64, wake: &mut Option<i64>) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// A failed step: the reason is already recorded; retry at `retry_at`.
struct Failed {
    retry_at: i64,
}

/// The sandbox the current round works in.
struct SandboxInUse {
    id: String,
    config: cri::PodSandboxConfig,
    ips: Vec<String>,
}

pub struct Worker {
    ctx: Arc<WorkerContext>,
    identity: PodIdentity,
    pod: Option<DesiredPod>,
    inspector: PodInspector,
    crash_backoff: Backoff,
    pull_backoff: Backoff,
    /// Last pull failure time per image.
    pull_failures: BTreeMap<String, i64>,
    /// Why containers could not be started, by container name.
    errors: BTreeMap<String, Waiting>,
    /// Containers already reported as in back-off (one BackOff event each).
    backoff_reported: BTreeSet<String>,
    warned_dns: bool,
    /// A pod-level hold after a failed sandbox or kill action.
    retry_at: Option<i64>,
    /// Containers whose last start failed, held until the time given; the
    /// rest of the pod carries on.
    held: BTreeMap<String, i64>,
    start_time: Timestamp,
    last_status: Option<PodStatus>,
}

impl Worker {
    pub fn new(ctx: Arc<WorkerContext>, identity: PodIdentity, pod: Option<DesiredPod>) -> Self {
        let backoff = ctx.node.backoff;
        Self {
            ctx,
            identity,
            pod,
            inspector: PodInspector::default(),
            crash_backoff: Backoff::new(backoff),
            pull_backoff: Backoff::new(backoff),
            pull_failures: BTreeMap::new(),
            errors: BTreeMap::new(),
            backoff_reported: BTreeSet::new(),
            warned_dns: false,
            retry_at: None,
            held: BTreeMap::new(),
            start_time: Timestamp::now(),
            last_status: None,
        }
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        self.ctx.events.record(&self.identity, kind, reason, message);
    }

    fn retry_later(&self) -> Failed {
        Failed { retry_at: now_nanos() + self.ctx.node.backoff.initial.as_nanos() as i64 }
    }

    /// Runs the worker until its pod has been terminated. `idle` counts the
    /// times the worker went quiet (used to serialise dry runs).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WorkerMsg>, idle: watch::Sender<u64>) {
        let span = tracing::info_span!("pod", pod = %self.identity, uid = %self.identity.uid);
        async move {
            let mut terminating = self.pod.is_none();
            let mut busy = 0;
            let mut health = self.ctx.health.clone();
            loop {
                if terminating {
                    self.terminate().await;
                    idle.send_modify(|n| *n += 1);
                    return;
                }
                let (progressed, wake_at) = self.sync().await;
                // Dry runs re-plan at once so a pod's whole start prints in
                // one go; otherwise the relist reports what the actions did.
                if progressed && self.ctx.eager && busy < MAX_BUSY_ROUNDS {
                    busy += 1;
                    while let Ok(m) = rx.try_recv() {
                        self.handle(m, &mut terminating);
                    }
                    continue;
                }
                busy = 0;
                let mut deadline = [wake_at, self.retry_at].into_iter().flatten().min();
                if progressed {
                    // Look again soon even if the relist reports nothing.
                    let soon = now_nanos() + AFTER_ACTING.as_nanos() as i64;
                    deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                }
                idle.send_modify(|n| *n += 1);
                let sleep_for = deadline
                    .map(|d| Duration::from_nanos((d - now_nanos()).max(0) as u64))
                    .unwrap_or(self.ctx.resync)
                    .min(self.ctx.resync);
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => self.handle(m, &mut terminating),
                        None => return,
                    },
                    _ = tokio::time::sleep(sleep_for) => {}
                    Ok(()) = health.changed() => {}
                }
                while let Ok(m) = rx.try_recv() {
                    self.handle(m, &mut terminating);
                }
            }
        }
        .instrument(span)
        .await
    }

    fn handle(&mut self, msg: WorkerMsg, terminating: &mut bool) {
        match msg {
            WorkerMsg::Update(pod) => self.pod = Some(pod),
            WorkerMsg::Changed => {}
            WorkerMsg::Terminate => *terminating = true,
        }
    }

    /// One round: observe, plan, act. Returns whether anything was done and
    /// when to look again.
    async fn sync(&mut self) -> (bool, Option<i64>) {
        let Some(pod) = self.pod.clone() else { return (false, None) };
        let obs = match self.inspector.inspect(self.ctx.runtime.as_ref(), &self.identity).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pod's runtime state");
                return (false, Some(now_nanos() + 1_000_000_000));
            }
        };
        let now = now_nanos();
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
        }
        self.held.retain(|_, until| *until > now);
        let network_ready = self.ctx.health.borrow().network_ready;
        let p = plan::plan(&PlanInput { pod: &pod, observed: &obs, backoff: &self.crash_backoff, now, network_ready });
        self.forget_old_backoffs(&pod);
        self.report_backoff(&p.waiting);
        let mut waiting = p.waiting.clone();
        for (name, w) in &self.errors {
            waiting.insert(name.clone(), w.clone());
        }
        self.publish(&pod, &obs, &waiting);
        let mut wake = p.wake_at;
        if let Some(r) = self.retry_at {
            soonest(r, &mut wake);
            return (false, wake);
        }
        let mut sandbox = obs.latest_sandbox().filter(|s| s.ready).map(|s| SandboxInUse {
            id: s.id.clone(),
            config: sandbox::sandbox_config(&pod, s.attempt, &self.ctx.node).0,
            ips: s.ips.clone(),
        });
        let mut acted = false;
        for action in p.actions {
            let container = match &action {
                Action::StartContainer { name, .. } => Some(name.clone()),
                _ => None,
            };
            if let Some(until) = container.as_ref().and_then(|n| self.held.get(n)) {
                soonest(*until, &mut wake);
                continue;
            }
            acted = true;
            if let Err(f) = self.execute(&pod, &obs, &mut sandbox, action).await {
                soonest(f.retry_at, &mut wake);
                match container {
                    // One container failing to start does not hold the others.
                    Some(name) => {
                        self.held.insert(name, f.retry_at);
                    }
                    None => {
                        self.retry_at = Some(f.retry_at);
                        break;
                    }
                }
            }
        }
        (acted, wake)
    }

    /// Back-off entries of container specs the pod no longer has.
    fn forget_old_backoffs(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else { return };
        let keys: BTreeSet<String> = plan::containers(spec).into_iter().map(|(c, _)| plan::backoff_key(c)).collect();
        self.crash_backoff.retain(|k| keys.contains(k));
    }

    fn report_backoff(&mut self, waiting: &BTreeMap<String, Waiting>) {
        let looping: BTreeSet<String> =
            waiting.iter().filter(|(_, w)| w.reason == "CrashLoopBackOff").map(|(n, _)| n.clone()).collect();
        for name in looping.difference(&self.backoff_reported) {
            self.event(EventType::Warning, "BackOff", &format!("Back-off restarting failed container {name} in pod {}", self.identity));
        }
        self.backoff_reported = looping;
    }

    fn publish(&mut self, pod: &DesiredPod, obs: &RuntimePod, waiting: &BTreeMap<String, Waiting>) {
        // An adopted pod started when its first sandbox did.
        if let Some(first) = obs.sandboxes.iter().map(|s| s.created_at).filter(|t| *t > 0).min()
            && let Ok(t) = Timestamp::from_nanosecond(first as i128)
            && t < self.start_time
        {
            self.start_time = t;
        }
        let status = pod_status(&StatusInput {
            pod,
            observed: obs,
            waiting,
            readiness: &BTreeMap::new(),
            previous: self.last_status.as_ref(),
            start_time: Some(self.start_time),
            node: &self.ctx.node,
            now: Timestamp::now(),
        });
        self.last_status = Some(status.clone());
        self.ctx.statuses.set(&self.identity.uid, PodRecord { pod: pod.clone(), status });
    }

    async fn execute(
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
                let c = plan::containers(pod.spec.as_ref().expect("planned pods have a spec"))
                    .into_iter()
                    .find(|(c, _)| c.name == name)
                    .map(|(c, _)| c.clone())
                    .ok_or_else(|| self.retry_later())?;
                self.start_container(pod, &c, kind, attempt, sb).await?;
                if let Some(exit) = restart_after {
                    self.crash_backoff.next(&plan::backoff_key(&c), exit);
                }
                Ok(())
            }
            Action::KillContainer { id, name, reason } => {
                let grace = grace_of(Some(pod), obs);
                if self.stop_container(&id, &name, reason.message(), grace).await {
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

    fn unlink_log(&self, obs: &RuntimePod, id: &str) {
        if let Some(c) = obs.containers.iter().find(|c| c.id == id) {
            logs::unlink(&self.ctx.node, &self.identity, &c.name, id);
        }
    }

    fn quietly(&self, r: Result<(), RuntimeError>, what: &str) -> Result<(), Failed> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed");
                Err(self.retry_later())
            }
        }
    }

    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<SandboxInUse, Failed> {
        let node = &self.ctx.node;
        let (config, warnings) = sandbox::sandbox_config(pod, attempt, node);
        if !self.warned_dns {
            for w in &warnings {
                self.event(EventType::Warning, "DNSConfigForming", w);
            }
            self.warned_dns = true;
        }
        if attempt > 0 {
            self.event(EventType::Normal, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.");
        }
        for dir in [std::path::PathBuf::from(&config.log_directory), sandbox::pod_dir(node, &self.identity.uid)] {
            if let Err(e) = make_dir(&dir) {
                self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create {}: {e}", dir.display()));
                return Err(self.retry_later());
            }
        }
        let handler = pod.spec.as_ref().and_then(|s| s.runtime_class_name.clone()).unwrap_or_default();
        let id = match self.ctx.runtime.run_pod_sandbox(&config, &handler).await {
            Ok(id) => id,
            Err(e) => {
                self.event(EventType::Warning, "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}"));
                return Err(self.retry_later());
            }
        };
        let ips = self.ctx.runtime.pod_sandbox_status(&id).await.map(|s| observe::sandbox_ips(&s)).unwrap_or_default();
        Ok(SandboxInUse { id, config, ips })
    }

    fn fail_container(&mut self, name: &str, reason: &str, message: String) -> Failed {
        self.event(EventType::Warning, "Failed", &format!("Error: {message}"));
        self.errors.insert(name.to_string(), Waiting::new(reason, message));
        self.retry_later()
    }

    /// ImageStatus, then a pull when the policy says so; the image ID.
    async fn ensure_image(&mut self, c: &Container, sb: &SandboxInUse) -> Result<cri::Image, Failed> {
        let image = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into());
        let present = match self.ctx.runtime.image_status(&image).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail_container(&c.name, "ImageInspectError", format!("Failed to inspect image {image:?}: {e}"))),
        };
        if policy != "Always"
            && let Some(img) = present
        {
            self.event(EventType::Normal, "Pulled", &format!("Container image {image:?} already present on machine"));
            return Ok(img);
        }
        if policy == "Never" {
            let msg = format!("Container image {image:?} is not present with pull policy of Never");
            self.event(EventType::Warning, "ErrImageNeverPull", &msg);
            self.errors.insert(c.name.clone(), Waiting::new("ErrImageNeverPull", msg));
            return Err(self.retry_later());
        }
        let now = now_nanos();
        if let Some(last) = self.pull_failures.get(&image).copied()
            && let Some(until) = self.pull_backoff.blocked_until(&image, Failure::instant(last), now)
        {
            let msg = format!("Back-off pulling image {image:?}");
            self.event(EventType::Normal, "BackOff", &msg);
            self.errors.insert(c.name.clone(), Waiting::new("ImagePullBackOff", msg));
            return Err(Failed { retry_at: until });
        }
        self.event(EventType::Normal, "Pulling", &format!("Pulling image {image:?}"));
        let started = Instant::now();
        match self.ctx.runtime.pull_image(&image, None, &sb.config).await {
            Ok(image_ref) => {
                self.pull_failures.remove(&image);
                self.event(
                    EventType::Normal,
                    "Pulled",
                    &format!("Successfully pulled image {image:?} in {:.3}s", started.elapsed().as_secs_f64()),
                );
                let status = self.ctx.runtime.image_status(&image_ref).await.ok().flatten();
                Ok(status.unwrap_or(cri::Image { id: image_ref, ..Default::default() }))
            }
            Err(e) => {
                let failed_at = now_nanos();
                self.pull_backoff.next(&image, Failure::instant(failed_at));
                self.pull_failures.insert(image.clone(), failed_at);
                let msg = format!("Failed to pull image {image:?}: {e}");
                self.event(EventType::Warning, "Failed", &msg);
                self.errors.insert(c.name.clone(), Waiting::new("ErrImagePull", msg));
                Err(self.retry_later())
            }
        }
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        c: &Container,
        kind: ContainerKind,
        attempt: u32,
        sb: &SandboxInUse,
    ) -> Result<(), Failed> {
        let image = self.ensure_image(c, sb).await?;
        if let Err(msg) = check_non_root(pod, c, &image) {
            return Err(self.fail_container(&c.name, "CreateContainerConfigError", msg));
        }
        let req = container::ContainerRequest {
            pod,
            container: c,
            kind,
            attempt,
            image_ref: &image.id,
            pod_ips: &sb.ips,
            node: &self.ctx.node,
        };
        let config = match container::container_config(&req) {
            Ok(cfg) => cfg,
            Err(e) => return Err(self.fail_container(&c.name, "CreateContainerConfigError", e.to_string())),
        };
        let log_dir = std::path::Path::new(&sb.config.log_directory).join(&c.name);
        if let Err(e) = make_dir(&log_dir) {
            return Err(self.fail_container(&c.name, "CreateContainerError", format!("{}: {e}", log_dir.display())));
        }
        let id = match self.ctx.runtime.create_container(&sb.id, &config, &sb.config).await {
            Ok(id) => id,
            Err(e) => return Err(self.fail_container(&c.name, "CreateContainerError", e.to_string())),
        };
        self.event(EventType::Normal, "Created", &format!("Created container: {}", c.name));
        if let Err(e) = self.ctx.runtime.start_container(&id).await {
            return Err(self.fail_container(&c.name, "RunContainerError", e.to_string()));
        }
        self.event(EventType::Normal, "Started", &format!("Started container {}", c.name));
        logs::link(&self.ctx.node, &self.identity, &c.name, &id, &std::path::Path::new(&sb.config.log_directory).join(&config.log_path));
        self.errors.remove(&c.name);
        Ok(())
    }

    /// StopContainer with the Killing event; false when it failed.
    async fn stop_container(&self, id: &str, name: &str, why: &str, grace: i64) -> bool {
        let msg = if why.is_empty() { format!("Stopping container {name}") } else { format!("Stopping container {name}: {why}") };
        self.event(EventType::Normal, "Killing", &msg);
        match self.ctx.runtime.stop_container(id, grace).await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "stopping the container failed");
                false
            }
        }
    }

    /// Stops the app containers together, then the sidecars one by one in
    /// reverse order, all within one grace period; then every ready sandbox.
    async fn kill_pod(&self, pod: Option<&Pod>, obs: &RuntimePod) {
        let grace = grace_of(pod, obs);
        let deadline = Instant::now() + Duration::from_secs(grace as u64);
        let order: Vec<String> = pod
            .and_then(|p| p.spec.as_ref())
            .map(|s| {
                plan::containers(s)
                    .into_iter()
                    .filter(|(_, k)| *k == ContainerKind::Sidecar)
                    .map(|(c, _)| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let is_sidecar = |c: &ObservedContainer| match pod {
            Some(_) => order.contains(&c.name),
            None => c.kind() == Some(ContainerKind::Sidecar.as_str()),
        };
        let (mut sidecars, apps): (Vec<&ObservedContainer>, Vec<&ObservedContainer>) =
            obs.running().partition(|c| is_sidecar(c));
        futures::future::join_all(apps.iter().map(|c| self.stop_container(&c.id, &c.name, "", grace))).await;
        // Reverse start order: by spec position, or newest first for orphans.
        sidecars.sort_by_key(|c| std::cmp::Reverse(order.iter().position(|n| *n == c.name).unwrap_or(0)));
        for c in sidecars {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs() as i64;
            self.stop_container(&c.id, &c.name, "", left.max(MIN_GRACE)).await;
        }
        for s in obs.sandboxes.iter().filter(|s| s.ready) {
            if let Err(e) = self.ctx.runtime.stop_pod_sandbox(&s.id).await
                && !e.is_not_found()
            {
                tracing::warn!(sandbox = %s.id, error = %e, "stopping the sandbox failed");
            }
        }
    }

    /// Stops and removes everything the pod has, retrying until done.
    async fn terminate(&mut self) {
        let pod = self.pod.clone();
        let mut delay = Duration::from_millis(200);
        loop {
            let obs = match self.inspector.inspect(self.ctx.runtime.as_ref(), &self.identity).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the pod's runtime state; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let actions = plan::teardown(&obs);
            if actions.is_empty() {
                break;
            }
            let mut ok = true;
            for a in actions {
                let result = match a {
                    Action::KillPod => {
                        self.kill_pod(pod.as_deref(), &obs).await;
                        Ok(())
                    }
                    Action::RemoveContainer { id } => {
                        let r = self.ctx.runtime.remove_container(&id).await;
                        if r.is_ok() {
                            self.unlink_log(&obs, &id);
                        }
                        r
                    }
                    Action::RemoveSandbox { id } => self.ctx.runtime.remove_pod_sandbox(&id).await,
                    _ => Ok(()),
                };
                if let Err(e) = result
                    && !e.is_not_found()
                {
                    tracing::warn!(error = %e, "removing the pod failed; retrying");
                    ok = false;
                    break;
                }
            }
            if !ok {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        let node = &self.ctx.node;
        for dir in [sandbox::log_dir(node, &self.identity), sandbox::pod_dir(node, &self.identity.uid)] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pod's directory");
            }
        }
        if node.cgroup_driver == super::CgroupDriver::Cgroupfs
            && let Some(p) = &pod
        {
            cgroups::remove_pod_cgroup(&sandbox::cgroup_parent(p, node));
        }
        self.ctx.statuses.remove(&self.identity.uid);
        tracing::info!("pod removed");
    }
}

fn make_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)
}

/// runAsNonRoot: the effective user (from the spec, else the image) must be
/// a non-zero numeric UID.
fn check_non_root(pod: &Pod, c: &Container, image: &cri::Image) -> Result<(), String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
        return Ok(());
    }
    if let Some(uid) = sc.run_as_user.or(psc.run_as_user) {
        return if uid == 0 { Err("container's runAsUser breaks non-root policy".into()) } else { Ok(()) };
    }
    match (&image.uid, image.username.as_str()) {
        (Some(u), _) if u.value == 0 => Err("container has runAsNonRoot and image will run as root".into()),
        (Some(_), _) => Ok(()),
        (None, "") => Err("container has runAsNonRoot and image will run as root".into()),
        (None, user) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
        )),
    }
}

