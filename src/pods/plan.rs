//! The pod planner: desired pod + what the runtime has → the next actions.
//! Pure; modelled on kubelet's computePodActions.
//!
//! Rules, in order:
//! 1. A pod that has finished (restartPolicy OnFailure/Never and no
//!    container left to restart, or a failed init container under Never) only
//!    has what still runs stopped.
//! 2. Without a ready sandbox everything still running is killed and a new
//!    sandbox is made (attempt + 1); init containers then run again from the
//!    first. Under restartPolicy Never a sandbox that died after its
//!    containers ran is not replaced.
//! 3. Init containers run one at a time, in order; each must exit 0 before
//!    the next starts (a failed one restarts, with back-off, unless the policy
//!    is Never). Sidecars (restartPolicy Always init containers) only need to
//!    be running, and are restarted whenever they exit.
//! 4. Then app containers: started if absent; restarted per restartPolicy
//!    after an exit, with crash-loop back-off; replaced when their spec hash
//!    changed.
//! 5. Dead containers are garbage-collected, keeping the newest per name,
//!    and old sandboxes with nothing left in them are removed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec};

use super::ContainerKind;
use super::backoff::{Backoff, Failure};
use super::container::container_hash;
use crate::clock::UnixNanos;
use crate::runtime::{ContainerPhase, ObservedContainer, RuntimePod};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The container's spec changed; it is replaced.
    SpecChanged,
    /// The runtime cannot tell the container's state.
    Unknown,
    /// The container runs in a sandbox that is no longer the pod's.
    StaleSandbox,
    /// Its liveness probe failed.
    LivenessFailed,
    /// Its startup probe failed.
    StartupFailed,
    /// Its resize needs a restart (resizePolicy RestartContainer).
    Resize,
}

impl KillReason {
    /// kubelet's Killing message for container `name`.
    pub fn message(self, name: &str) -> String {
        match self {
            KillReason::SpecChanged => format!("Container {name} definition changed, will be restarted"),
            KillReason::Unknown => format!("Container {name} is in unknown state, will be killed and recreated"),
            KillReason::StaleSandbox => format!("Container {name} belongs to an old pod sandbox"),
            KillReason::LivenessFailed => format!("Container {name} failed liveness probe, will be restarted"),
            KillReason::StartupFailed => format!("Container {name} failed startup probe, will be restarted"),
            KillReason::Resize => format!("Container {name} resize requires restart"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop every running container (app containers first, then sidecars)
    /// and every ready sandbox of the pod.
    KillPod,
    CreateSandbox { attempt: u32 },
    /// Ensure the image, create and start a container in the current
    /// sandbox. `restart_after` is the failure this instance restarts after,
    /// for back-off bookkeeping.
    StartContainer { name: String, kind: ContainerKind, attempt: u32, restart_after: Option<Failure> },
    KillContainer { id: String, name: String, reason: KillReason },
    StopSandbox { id: String },
    RemoveContainer { id: String },
    RemoveSandbox { id: String },
}

/// Why a container is not running, in kubelet's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self { reason: reason.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Containers held back, by name.
    pub waiting: BTreeMap<String, Waiting>,
    /// When to plan again even if nothing changes (a back-off expiring).
    pub wake_at: Option<UnixNanos>,
}

pub struct PlanInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a RuntimePod,
    pub backoff: &'a Backoff,
    pub now: UnixNanos,
    pub network_ready: bool,
    /// Running containers their liveness or startup probe condemned, by ID.
    pub unhealthy: &'a BTreeMap<String, KillReason>,
    /// Running containers (by ID) whose resize needs a restart
    /// (`resizePolicy: RestartContainer`): replaced at once.
    pub resize_restart: &'a std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(spec: &PodSpec) -> Self {
        match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }
}

/// Whether a container that exited with `exit_code` is started again.
pub fn should_restart(kind: ContainerKind, policy: RestartPolicy, exit_code: i32) -> bool {
    match kind {
        ContainerKind::Sidecar => true,
        ContainerKind::Ephemeral => false,
        ContainerKind::Init => exit_code != 0 && policy != RestartPolicy::Never,
        ContainerKind::App => match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        },
    }
}

/// An instance that exited and, by the restart policy, stays exited.
fn done_for_good(x: &ObservedContainer, kind: ContainerKind, policy: RestartPolicy) -> bool {
    x.phase == ContainerPhase::Exited && !should_restart(kind, policy, x.exit_code)
}

pub fn init_kind(c: &Container) -> ContainerKind {
    if c.restart_policy.as_deref() == Some("Always") { ContainerKind::Sidecar } else { ContainerKind::Init }
}

/// All containers of a spec with their kinds, init containers first.
pub fn containers(spec: &PodSpec) -> Vec<(&Container, ContainerKind)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, init_kind(c)))
        .chain(spec.containers.iter().map(|c| (c, ContainerKind::App)))
        .collect()
}

/// An ephemeral container as the container it runs as. What the API forbids
/// for it (ports, probes, lifecycle, resources) is left out, as kubelet
/// ignores it.
pub fn ephemeral_as_container(e: &EphemeralContainer) -> Container {
    Container {
        name: e.name.clone(),
        image: e.image.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        working_dir: e.working_dir.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        volume_mounts: e.volume_mounts.clone(),
        volume_devices: e.volume_devices.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        ..Default::default()
    }
}

/// The pod's ephemeral containers, as containers, with the container whose
/// process namespace each one joins.
pub fn ephemeral(spec: &PodSpec) -> Vec<(Container, Option<String>)> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .map(|e| (ephemeral_as_container(e), e.target_container_name.clone().filter(|t| !t.is_empty())))
        .collect()
}

/// The spec of the container `name`, of any kind, with its kind.
pub fn container_spec(spec: &PodSpec, name: &str) -> Option<(Container, ContainerKind)> {
    containers(spec)
        .into_iter()
        .find(|(c, _)| c.name == name)
        .map(|(c, k)| (c.clone(), k))
        .or_else(|| ephemeral(spec).into_iter().find(|(c, _)| c.name == name).map(|(c, _)| (c, ContainerKind::Ephemeral)))
}

/// The back-off key of a container: its name and spec hash.
pub fn backoff_key(c: &Container) -> String {
    format!("{}_{}", c.name, container_hash(c))
}

/// The phase a finished pod ends in, or `None` while it is not finished.
pub fn finished_phase(spec: &PodSpec, obs: &RuntimePod) -> Option<&'static str> {
    let policy = RestartPolicy::of(spec);
    if policy == RestartPolicy::Always {
        return None;
    }
    for (c, kind) in containers(spec) {
        if kind == ContainerKind::Init
            && policy == RestartPolicy::Never
            && obs.latest(&c.name).is_some_and(|x| x.phase == ContainerPhase::Exited && x.exit_code != 0)
        {
            return Some("Failed");
        }
    }
    let mut all_ok = true;
    for c in &spec.containers {
        match obs.latest(&c.name) {
            Some(x) if done_for_good(x, ContainerKind::App, policy) => all_ok &= x.exit_code == 0,
            _ => return None,
        }
    }
    Some(if all_ok { "Succeeded" } else { "Failed" })
}

/// A delay as Go prints durations ("10s", "1m20s", "5m0s"), as in
/// kubelet's back-off messages.
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 60 { format!("{}m{}s", s / 60, s % 60) } else { format!("{s}s") }
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn obs(&self) -> &'a RuntimePod {
        self.input.observed
    }

    fn next_attempt(&self, name: &str) -> u32 {
        self.obs().containers.iter().filter(|c| c.name == name).map(|c| c.attempt + 1).max().unwrap_or(0)
    }

    fn wake(&mut self, at: UnixNanos) {
        self.plan.wake_at = Some(self.plan.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Starts a container, or holds it back while it is in crash back-off.
    fn start(&mut self, c: &Container, kind: ContainerKind) {
        let attempt = self.next_attempt(&c.name);
        let last_exit = self
            .obs()
            .latest(&c.name)
            .filter(|x| x.phase == ContainerPhase::Exited)
            .map(|x| Failure { started: UnixNanos(x.started_at), at: UnixNanos(x.finished_at) });
        if let Some(exit) = last_exit {
            let key = backoff_key(c);
            if let Some(until) = self.input.backoff.blocked_until(&key, exit, self.input.now) {
                let delay = self.input.backoff.delay(&key).unwrap_or_default();
                let pod = super::identity(self.input.pod);
                self.plan.waiting.insert(
                    c.name.clone(),
                    Waiting::new(
                        "CrashLoopBackOff",
                        format!("back-off {} restarting failed container={} pod={}_{}({})", human(delay), c.name, pod.name, pod.namespace, pod.uid),
                    ),
                );
                self.wake(until);
                return;
            }
        }
        self.plan.actions.push(Action::StartContainer { name: c.name.clone(), kind, attempt, restart_after: last_exit });
    }

    fn kill(&mut self, x: &ObservedContainer, reason: KillReason) {
        self.plan.actions.push(Action::KillContainer { id: x.id.clone(), name: x.name.clone(), reason });
    }

    fn anything_running(&self) -> bool {
        anything_running(self.obs())
    }

    /// Dead containers beyond the newest per name, and old sandboxes left
    /// empty. Never touches the current sandbox. While the newest instance
    /// of a container is itself dead (between a crash and its restart), the
    /// dead one before it stays too: it is the status's `lastState`.
    fn gc(&mut self) {
        let obs = self.obs();
        let current = obs.latest_sandbox().map(|s| s.id.as_str());
        // Per name: dead instances kept so far, and how many may stay.
        let mut kept: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut removed = Vec::new();
        // Newest first, as observed.
        for c in &obs.containers {
            let (_, allowed) = kept.entry(c.name.as_str()).or_insert((0, if c.phase == ContainerPhase::Exited { 2 } else { 1 }));
            let allowed = *allowed;
            // A container left Created (a failed start) in an old sandbox
            // will never run.
            if c.phase == ContainerPhase::Created && Some(c.sandbox_id.as_str()) != current {
                removed.push(c.id.clone());
                continue;
            }
            if c.phase != ContainerPhase::Exited {
                continue;
            }
            if let Some((seen, _)) = kept.get_mut(c.name.as_str()) {
                if *seen >= allowed {
                    removed.push(c.id.clone());
                } else {
                    *seen += 1;
                }
            }
        }
        for id in &removed {
            self.plan.actions.push(Action::RemoveContainer { id: id.clone() });
        }
        for s in &obs.sandboxes {
            if Some(s.id.as_str()) == current {
                continue;
            }
            if s.ready {
                self.plan.actions.push(Action::StopSandbox { id: s.id.clone() });
                continue;
            }
            let left = obs.containers.iter().any(|c| c.sandbox_id == s.id && !removed.contains(&c.id));
            if !left {
                self.plan.actions.push(Action::RemoveSandbox { id: s.id.clone() });
            }
        }
    }
}

/// The next actions for a pod that should be running.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let spec = input.pod.spec.clone().unwrap_or_default();
    let mut p = Planner { input, plan: Plan::default() };
    let obs = input.observed;
    let policy = RestartPolicy::of(&spec);
    let sandbox = obs.latest_sandbox();

    if finished_phase(&spec, obs).is_some() {
        if p.anything_running() {
            p.plan.actions.push(Action::KillPod);
        }
        p.gc();
        return p.plan;
    }

    if sandbox.is_none_or(|s| !s.ready) {
        if policy == RestartPolicy::Never && sandbox.is_some() && !obs.containers.is_empty() {
            // kubelet does not recreate the sandbox of a Never pod whose
            // containers already ran.
            if p.anything_running() {
                p.plan.actions.push(Action::KillPod);
            }
            p.gc();
            return p.plan;
        }
        if !input.network_ready && spec.host_network != Some(true) {
            for (c, _) in containers(&spec) {
                p.plan.waiting.insert(c.name.clone(), Waiting::new("ContainerCreating", "network is not ready"));
            }
            return p.plan;
        }
        if p.anything_running() {
            p.plan.actions.push(Action::KillPod);
        }
        p.plan.actions.push(Action::CreateSandbox { attempt: sandbox.map_or(0, |s| s.attempt + 1) });
        // Nothing exists in the new sandbox yet: the first init container,
        // or every app container that should run, starts now.
        let first_init = spec.init_containers.iter().flatten().next();
        match first_init {
            Some(ic) => p.start(ic, init_kind(ic)),
            None => {
                for c in &spec.containers {
                    if !obs.latest(&c.name).is_some_and(|x| done_for_good(x, ContainerKind::App, policy)) {
                        p.start(c, ContainerKind::App);
                    }
                }
            }
        }
        return p.plan;
    }
    let sb = sandbox.expect("checked above");
    let current = |name: &str| obs.containers.iter().find(|c| c.name == name && c.sandbox_id == sb.id);

    for x in obs.running().filter(|c| c.sandbox_id != sb.id) {
        p.kill(x, KillReason::StaleSandbox);
    }

    // Ephemeral containers start once in the running sandbox, even before
    // the pod has initialized (so a stuck init container can be debugged),
    // and are never restarted; an instance of any state means it ran.
    for (c, _) in ephemeral(&spec) {
        if obs.latest(&c.name).is_none() {
            p.plan.actions.push(Action::StartContainer { name: c.name, kind: ContainerKind::Ephemeral, attempt: 0, restart_after: None });
        }
    }

    // Init containers, one at a time. Once an app container exists in this
    // sandbox the pod has initialized: sidecars are then restarted beside
    // the apps instead of ahead of them.
    let apps_started = spec.containers.iter().any(|c| current(&c.name).is_some());
    let mut initialized = true;
    for ic in spec.init_containers.iter().flatten() {
        let kind = init_kind(ic);
        let done = match current(&ic.name) {
            None => {
                p.start(ic, kind);
                false
            }
            Some(x) => match x.phase {
                ContainerPhase::Running if kind == ContainerKind::Sidecar => {
                    let same = x.hash() == Some(container_hash(ic).as_str());
                    if let Some(reason) = input.unhealthy.get(&x.id) {
                        p.kill(x, *reason);
                        false
                    } else if !same || input.resize_restart.contains(&x.id) {
                        p.kill(x, if same { KillReason::Resize } else { KillReason::SpecChanged });
                        p.start(ic, kind);
                        false
                    } else {
                        true
                    }
                }
                ContainerPhase::Running => false,
                ContainerPhase::Unknown => {
                    p.kill(x, KillReason::Unknown);
                    false
                }
                ContainerPhase::Created => {
                    p.plan.actions.push(Action::RemoveContainer { id: x.id.clone() });
                    p.start(ic, kind);
                    false
                }
                ContainerPhase::Exited if kind == ContainerKind::Init && x.exit_code == 0 => true,
                ContainerPhase::Exited => {
                    if should_restart(kind, policy, x.exit_code) {
                        p.start(ic, kind);
                    }
                    false
                }
            },
        };
        let blocks_the_rest = !(kind == ContainerKind::Sidecar && apps_started);
        if !done && blocks_the_rest {
            initialized = false;
            break;
        }
    }
    if !initialized {
        for c in &spec.containers {
            p.plan.waiting.entry(c.name.clone()).or_insert_with(|| Waiting::new("PodInitializing", ""));
        }
        p.gc();
        return p.plan;
    }

    for c in &spec.containers {
        match current(&c.name) {
            None => {
                if !obs.latest(&c.name).is_some_and(|x| done_for_good(x, ContainerKind::App, policy)) {
                    p.start(c, ContainerKind::App);
                }
            }
            Some(x) => match x.phase {
                ContainerPhase::Running => {
                    if let Some(reason) = input.unhealthy.get(&x.id) {
                        // The restart policy decides what follows the kill.
                        p.kill(x, *reason);
                    } else if x.hash() != Some(container_hash(c).as_str()) || input.resize_restart.contains(&x.id) {
                        let reason = if input.resize_restart.contains(&x.id) { KillReason::Resize } else { KillReason::SpecChanged };
                        p.kill(x, reason);
                        p.plan.actions.push(Action::StartContainer {
                            name: c.name.clone(),
                            kind: ContainerKind::App,
                            attempt: p.next_attempt(&c.name),
                            restart_after: None,
                        });
                    }
                }
                ContainerPhase::Unknown => p.kill(x, KillReason::Unknown),
                ContainerPhase::Created => {
                    p.plan.actions.push(Action::RemoveContainer { id: x.id.clone() });
                    p.start(c, ContainerKind::App);
                }
                ContainerPhase::Exited => {
                    if should_restart(ContainerKind::App, policy, x.exit_code) {
                        p.start(c, ContainerKind::App);
                    }
                }
            },
        }
    }
    p.gc();
    p.plan
}

/// A container running, or a sandbox still up.
pub fn anything_running(obs: &RuntimePod) -> bool {
    obs.running().next().is_some() || obs.sandboxes.iter().any(|s| s.ready)
}

/// A pod the node has ended (its activeDeadlineSeconds passed): what still
/// runs is stopped and nothing starts again, whatever the restart policy.
/// Its dead containers stay, for their logs and the status.
pub fn end(obs: &RuntimePod) -> Plan {
    let actions = if anything_running(obs) { vec![Action::KillPod] } else { Vec::new() };
    Plan { actions, ..Plan::default() }
}

/// Everything needed to remove a pod from the node: stop what runs, then
/// remove every container and sandbox.
pub fn teardown(obs: &RuntimePod) -> Vec<Action> {
    let mut actions = Vec::new();
    if anything_running(obs) {
        actions.push(Action::KillPod);
    }
    actions.extend(obs.containers.iter().map(|c| Action::RemoveContainer { id: c.id.clone() }));
    actions.extend(obs.sandboxes.iter().map(|s| Action::RemoveSandbox { id: s.id.clone() }));
    actions
}

#[cfg(test)]
mod tests;
