//! Pod status from what the runtime has (pure): container states with
//! lastState and restartCount, the phase by kubelet's rules, the conditions,
//! IPs and QoS class.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    HostIP, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::plan::{self, RestartPolicy, Waiting};
use super::{ContainerKind, NodeContext, qos};
use crate::runtime::{ContainerPhase, ObservedContainer, RuntimePod};

pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub observed: &'a RuntimePod,
    /// Containers held back (back-off, image pulls, config errors), by name.
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// Readiness by container ID; a running container missing here is ready
    /// (no readiness probe).
    pub readiness: &'a BTreeMap<String, bool>,
    /// Whether a running container's startup probe has passed, by ID;
    /// missing means started (no startup probe).
    pub started: &'a BTreeMap<String, bool>,
    /// The pod is being removed and everything in it has stopped: its phase
    /// is terminal whatever the restart policy.
    pub terminating: bool,
    /// The node ended the pod (its activeDeadlineSeconds passed): phase
    /// Failed with this reason and message, whatever its containers did.
    pub failed: Option<&'a PodFailure>,
    pub previous: Option<&'a PodStatus>,
    pub start_time: Option<Timestamp>,
    pub node: &'a NodeContext,
    pub now: Timestamp,
    /// In-place resize: what waits, what is under way.
    pub resize: ResizeView<'a>,
}

/// A pod's resize as the status reports it (kubelet's PodResizePending and
/// PodResizeInProgress conditions; each container's allocatedResources and
/// resources).
#[derive(Debug, Clone, Copy, Default)]
pub struct ResizeView<'a> {
    /// Reason (Infeasible, Deferred) and message of a resize that waits.
    pub pending: Option<(&'a str, &'a str)>,
    /// A running container's resources differ from its allocation.
    pub in_progress: bool,
    /// The last failure to apply a resize.
    pub error: Option<&'a str>,
    /// What each running container was last given, by name.
    pub actuated: Option<&'a super::allocation::PodResources>,
}

/// kubelet's MaxPodTerminationMessageLogLength: all of a pod's termination
/// messages together.
pub const MAX_POD_TERMINATION_MESSAGES: usize = 12 * 1024;

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at = at.saturating_sub(1);
        }
        s.truncate(at);
    }
}

/// Why the node ended a pod, in kubelet's words (status.reason, .message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub reason: String,
    pub message: String,
    /// The node disrupted the pod (eviction, node shutdown): the status gets
    /// kubelet's `DisruptionTarget` condition (reason `TerminationByKubelet`),
    /// which Jobs' podFailurePolicy and PDB-aware tools read.
    pub disruption: bool,
}

impl PodFailure {
    /// activeDeadlineSeconds passed (kubelet's active deadline handler).
    pub fn deadline_exceeded() -> Self {
        Self { reason: "DeadlineExceeded".into(), message: "Pod was active on the node longer than the specified deadline".into(), disruption: false }
    }

    /// The node ends the pod to keep itself (eviction, shutdown).
    pub fn disruption(reason: &str, message: String) -> Self {
        Self { reason: reason.into(), message, disruption: true }
    }
}

/// Nanoseconds since the epoch as an API time (whole seconds, as the API
/// serialises them).
pub fn time(nanos: i64) -> Option<Time> {
    (nanos > 0).then(|| Timestamp::from_second(nanos / 1_000_000_000).ok()).flatten().map(Time)
}

fn terminated(x: &ObservedContainer, runtime: &str) -> ContainerStateTerminated {
    let reason = if !x.reason.is_empty() {
        x.reason.clone()
    } else if x.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: x.exit_code,
        reason: Some(reason),
        message: (!x.message.is_empty()).then(|| x.message.clone()),
        started_at: time(x.started_at),
        finished_at: time(x.finished_at),
        container_id: Some(format!("{runtime}://{}", x.id)),
        signal: None,
    }
}

fn waiting_state(w: &Waiting) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(w.reason.clone()),
            message: (!w.message.is_empty()).then(|| w.message.clone()),
        }),
        ..Default::default()
    }
}

fn container_status(
    input: &StatusInput<'_>,
    name: &str,
    image: &str,
    kind: ContainerKind,
    has_init_containers: bool,
) -> ContainerStatus {
    let runtime = input.node.runtime_name.as_str();
    let instances: Vec<&ObservedContainer> = input.observed.containers.iter().filter(|c| c.name == name).collect();
    let latest = instances.first().copied();
    let previous_exit = instances.iter().skip(1).find(|c| c.phase == ContainerPhase::Exited).copied();
    let held = input.waiting.get(name);
    // kubelet's default waiting state: PodInitializing for the app and init
    // containers of a pod that has init containers (a later init container
    // waiting behind a failing one too), else ContainerCreating.
    let default_wait = if kind != ContainerKind::Ephemeral && has_init_containers { "PodInitializing" } else { "ContainerCreating" };
    let mut status = ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: latest.map(|x| x.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|x| format!("{runtime}://{}", x.id)),
        restart_count: latest.map_or(0, |x| x.attempt as i32),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let last = |x: Option<&ObservedContainer>| {
        x.map(|x| ContainerState { terminated: Some(terminated(x, runtime)), ..Default::default() })
    };
    match latest {
        None => {
            status.state = Some(waiting_state(held.unwrap_or(&Waiting::new(default_wait, ""))));
        }
        Some(x) => match x.phase {
            ContainerPhase::Running => {
                status.state = Some(ContainerState {
                    running: Some(ContainerStateRunning { started_at: time(x.started_at) }),
                    ..Default::default()
                });
                status.last_state = last(previous_exit);
                let started = input.started.get(&x.id).copied().unwrap_or(true);
                status.started = Some(started);
                status.ready = kind != ContainerKind::Ephemeral && started && input.readiness.get(&x.id).copied().unwrap_or(true);
            }
            ContainerPhase::Exited => match held {
                Some(w) => {
                    status.state = Some(waiting_state(w));
                    status.last_state = last(Some(x));
                }
                None => {
                    status.state = Some(ContainerState { terminated: Some(terminated(x, runtime)), ..Default::default() });
                    status.last_state = last(previous_exit);
                    // A completed init container counts as ready.
                    status.ready = kind == ContainerKind::Init && x.exit_code == 0;
                }
            },
            ContainerPhase::Created => {
                status.state = Some(waiting_state(held.unwrap_or(&Waiting::new("ContainerCreating", ""))));
                status.last_state = last(previous_exit);
            }
            ContainerPhase::Unknown => {
                status.state = Some(waiting_state(&Waiting::new("ContainerStatusUnknown", "The container state could not be determined")));
                status.last_state = last(previous_exit);
            }
        },
    }
    status
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>, input: &StatusInput<'_>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = input
        .previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(input.now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// kubelet's getPhase over the computed statuses.
fn phase(spec: &PodSpec, initializing: bool, apps: &[ContainerStatus], finished: Option<&str>) -> &'static str {
    if let Some(done) = finished {
        return if done == "Succeeded" { "Succeeded" } else { "Failed" };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in apps {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.last_state.as_ref().and_then(|l| l.terminated.as_ref()).is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = RestartPolicy::of(spec);
    if initializing || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == RestartPolicy::Always {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == RestartPolicy::Never {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

/// The pod's status as kubelet would report it.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let spec = input.pod.spec.clone().unwrap_or_default();
    let obs = input.observed;
    let finished = if input.failed.is_some() {
        Some("Failed")
    } else if input.terminating {
        let all_ok = spec.containers.iter().all(|c| obs.latest(&c.name).is_some_and(|x| x.phase == ContainerPhase::Exited && x.exit_code == 0));
        Some(if all_ok { "Succeeded" } else { "Failed" })
    } else {
        plan::finished_phase(&spec, obs)
    };

    let init_specs: Vec<_> = spec.init_containers.iter().flatten().collect();
    // Once an app container exists in the current sandbox the pod has
    // initialized; a sidecar restarting after that does not undo it.
    let current = obs.latest_sandbox().map(|s| s.id.as_str());
    let apps_started = spec.containers.iter().any(|c| obs.containers.iter().any(|x| x.name == c.name && Some(x.sandbox_id.as_str()) == current));
    let mut initializing = false;
    let mut init_statuses = Vec::new();
    let mut incomplete = Vec::new();
    for c in &init_specs {
        let kind = plan::init_kind(c);
        let s = container_status(input, &c.name, c.image.as_deref().unwrap_or(""), kind, true);
        let done = match kind {
            ContainerKind::Sidecar => apps_started || s.started == Some(true),
            _ => s.state.as_ref().and_then(|st| st.terminated.as_ref()).is_some_and(|t| t.exit_code == 0),
        };
        if !done {
            initializing = true;
            incomplete.push(s.name.clone());
        }
        init_statuses.push(s);
    }
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(input, &c.name, c.image.as_deref().unwrap_or(""), ContainerKind::App, !init_specs.is_empty()))
        .collect();
    // The resources the node allocated (the spec the worker runs is the
    // allocation) and, for a running container, what it was given.
    let mut statuses = statuses;
    let resizable = spec.containers.iter().chain(init_specs.iter().copied().filter(|c| plan::init_kind(c) == ContainerKind::Sidecar));
    for c in resizable {
        let Some(s) = statuses.iter_mut().chain(init_statuses.iter_mut()).find(|s| s.name == c.name) else { continue };
        let allocated = c.resources.as_ref().and_then(|r| r.requests.clone()).filter(|r| !r.is_empty());
        s.allocated_resources = allocated;
        if s.state.as_ref().is_some_and(|st| st.running.is_some()) {
            let given = input.resize.actuated.and_then(|a| a.get(&c.name)).cloned().or_else(|| c.resources.clone());
            s.resources = given.map(|r| {
                let keep = |m: Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
                    m.map(|m| m.into_iter().filter(|(k, _)| super::allocation::RESIZABLE.contains(&k.as_str())).collect::<BTreeMap<_, _>>())
                        .filter(|m| !m.is_empty())
                };
                k8s_openapi::api::core::v1::ResourceRequirements { limits: keep(r.limits), requests: keep(r.requests), claims: None }
            });
        }
    }
    let phase = phase(&spec, initializing, &statuses, finished);
    // Ephemeral containers take no part in the phase or readiness.
    let ephemeral: Vec<ContainerStatus> = plan::ephemeral(&spec)
        .iter()
        .map(|(c, _)| container_status(input, &c.name, c.image.as_deref().unwrap_or(""), ContainerKind::Ephemeral, false))
        .collect();

    let names = |pred: &dyn Fn(&ContainerStatus) -> bool, list: &[ContainerStatus]| {
        list.iter().filter(|s| pred(s)).map(|s| s.name.clone()).collect::<Vec<_>>()
    };
    let unready: Vec<String> = names(&|s| !s.ready, &statuses)
        .into_iter()
        .chain(
            init_statuses
                .iter()
                .zip(&init_specs)
                .filter(|(s, c)| plan::init_kind(c) == ContainerKind::Sidecar && !s.ready)
                .map(|(s, _)| s.name.clone()),
        )
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let sandbox_ready = obs.latest_sandbox().is_some_and(|s| s.ready);

    let mut conditions = vec![condition("PodReadyToStartContainers", sandbox_ready, None, None, input)];
    conditions.push(if incomplete.is_empty() || terminal && phase == "Succeeded" {
        condition("Initialized", true, None, None, input)
    } else {
        let msg = format!("containers with incomplete status: [{}]", incomplete.join(" "));
        condition("Initialized", false, Some("ContainersNotInitialized"), Some(msg), input)
    });
    let (ready, reason, message) = if terminal {
        (false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (false, Some("ContainersNotReady"), Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    // Readiness gates: the pod is Ready only when each gate's condition,
    // which another party sets on the pod, is True (kubelet's
    // generatePodReadyCondition and its messages).
    let gates: Vec<String> = if ready {
        let theirs = input.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        spec.readiness_gates
            .iter()
            .flatten()
            .filter_map(|g| match theirs.and_then(|cs| cs.iter().find(|c| c.type_ == g.condition_type)) {
                None => Some(format!("corresponding condition of pod readiness gate {:?} does not exist.", g.condition_type)),
                Some(c) if c.status != "True" => Some(format!("the status of pod readiness gate {:?} is not \"True\", but {}", g.condition_type, c.status)),
                Some(_) => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    if gates.is_empty() {
        conditions.push(condition("Ready", ready, reason, message.clone(), input));
    } else {
        conditions.push(condition("Ready", false, Some("ReadinessGatesNotReady"), Some(gates.join(", ")), input));
    }
    conditions.push(condition("ContainersReady", ready, reason, message, input));
    conditions.push(condition("PodScheduled", true, None, None, input));
    if let Some((reason, message)) = input.resize.pending {
        conditions.push(condition("PodResizePending", true, Some(reason), Some(message.to_string()), input));
    }
    if input.resize.in_progress || input.resize.error.is_some() {
        let (reason, message) = match input.resize.error {
            Some(e) => (Some("Error"), Some(e.to_string())),
            None => (None, None),
        };
        conditions.push(condition("PodResizeInProgress", true, reason, message, input));
    }
    if let Some(f) = input.failed.filter(|f| f.disruption) {
        conditions.push(condition("DisruptionTarget", true, Some("TerminationByKubelet"), Some(f.message.clone()), input));
    }

    // kubelet's status manager: termination messages share 12 KiB evenly.
    let count = spec.containers.len().saturating_add(init_specs.len()).max(1);
    let per = MAX_POD_TERMINATION_MESSAGES / count;
    let (mut statuses, mut init_statuses, mut ephemeral) = (statuses, init_statuses, ephemeral);
    for s in statuses.iter_mut().chain(init_statuses.iter_mut()).chain(ephemeral.iter_mut()) {
        for state in [s.state.as_mut(), s.last_state.as_mut()].into_iter().flatten() {
            if let Some(t) = state.terminated.as_mut()
                && let Some(m) = t.message.as_mut()
            {
                truncate_at_char(m, per);
            }
        }
    }

    let ips: Vec<String> = if spec.host_network == Some(true) {
        input.node.host_ips.clone()
    } else {
        crate::runtime::observe::order_pod_ips(&input.node.host_ips, &obs.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default())
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        ephemeral_container_statuses: (!ephemeral.is_empty()).then_some(ephemeral),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        host_ip: input.node.host_ips.first().cloned(),
        host_ips: (!input.node.host_ips.is_empty())
            .then(|| input.node.host_ips.iter().map(|ip| HostIP { ip: ip.clone() }).collect()),
        start_time: input.start_time.map(Time),
        qos_class: Some(qos::qos_class(&spec).as_str().into()),
        reason: input.failed.map(|f| f.reason.clone()),
        message: input.failed.map(|f| f.message.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
