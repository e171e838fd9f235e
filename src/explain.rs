//! `nodelet explain pod NS/NAME`: why a pod is (not) running, in one place.
//! Every event a pod worker records also goes to a bounded in-memory trail
//! per pod ([`Trails`], [`TrailRecorder`]); the local endpoint's
//! `/explain/{namespace}/{name}` joins the trail with the pod's current
//! status and the pulls in flight, and [`summary`] says in one line what the
//! pod waits for now. Nothing here needs the apiserver, so it answers in
//! standalone mode and while the apiserver is down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pods::events::{EventRecorder, EventType};
use crate::pods::store::PodRecord;
use crate::pulls::Progress;
use crate::runtime::labels::PodIdentity;

/// Entries kept per pod; older ones go first.
pub const TRAIL_LEN: usize = 64;
/// Pods whose trails are kept; the least recently written goes first.
pub const MAX_PODS: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub at: Timestamp,
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
    /// How many times in a row the same entry came (kubelet's event count).
    pub count: u32,
}

#[derive(Default)]
struct PodTrail {
    entries: VecDeque<Entry>,
    touched: u64,
}

/// Every pod's trail, by UID.
#[derive(Default)]
pub struct Trails {
    inner: Mutex<(HashMap<String, PodTrail>, u64)>,
}

impl Trails {
    pub fn push(&self, uid: &str, kind: EventType, reason: &str, message: &str) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, clock) = &mut *g;
        *clock = clock.wrapping_add(1);
        if !map.contains_key(uid)
            && map.len() >= MAX_PODS
            && let Some(oldest) = map.iter().min_by_key(|(_, t)| t.touched).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let t = map.entry(uid.to_string()).or_default();
        t.touched = *clock;
        let kind = match kind {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        if let Some(last) = t.entries.back_mut()
            && last.reason == reason
            && last.message == message
        {
            last.count = last.count.saturating_add(1);
            last.at = Timestamp::now();
            return;
        }
        if t.entries.len() >= TRAIL_LEN {
            t.entries.pop_front();
        }
        t.entries.push_back(Entry { at: Timestamp::now(), kind: kind.into(), reason: reason.into(), message: message.into(), count: 1 });
    }

    pub fn get(&self, uid: &str) -> Vec<Entry> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.get(uid).map(|t| t.entries.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Records each event in the trail, then passes it on.
pub struct TrailRecorder {
    pub trails: Arc<Trails>,
    pub inner: Arc<dyn EventRecorder>,
}

impl EventRecorder for TrailRecorder {
    fn record(&self, pod: &PodIdentity, kind: EventType, reason: &str, message: &str) {
        self.trails.push(&pod.uid, kind, reason, message);
        self.inner.record(pod, kind, reason, message);
    }
}

/// What `/explain` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub pod: String,
    pub uid: String,
    /// What the pod waits for now, or that it needs nothing.
    pub summary: String,
    pub phase: String,
    pub containers: Vec<ContainerLine>,
    pub conditions: Vec<String>,
    pub pulls: Vec<Progress>,
    pub trail: Vec<Entry>,
    /// `<podLogsDir>/<ns>_<name>_<uid>`: the CLI reads previous logs there.
    pub log_directory: String,
    /// What the resource managers gave the pod's containers: exclusive
    /// CPUs, devices, DRA claims (one line each).
    #[serde(default)]
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLine {
    pub name: String,
    pub init: bool,
    pub image: String,
    pub state: String,
    pub ready: bool,
    pub restarts: i32,
    pub last: Option<String>,
}

fn state_of(c: &ContainerStatus) -> String {
    let s = c.state.as_ref();
    if let Some(w) = s.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
        return match w.message.as_deref() {
            Some(m) if !m.is_empty() => format!("waiting: {reason}: {m}"),
            _ => format!("waiting: {reason}"),
        };
    }
    if let Some(r) = s.and_then(|s| s.running.as_ref()) {
        let since = r.started_at.as_ref().map(|t| format!(" since {}", t.0)).unwrap_or_default();
        let started = if c.started == Some(false) { ", startup probe not passed yet" } else { "" };
        return format!("running{since}{started}");
    }
    if let Some(t) = s.and_then(|s| s.terminated.as_ref()) {
        return format!("terminated: exit code {} ({})", t.exit_code, t.reason.clone().unwrap_or_default());
    }
    "unknown".into()
}

fn last_of(c: &ContainerStatus) -> Option<String> {
    let t = c.last_state.as_ref()?.terminated.as_ref()?;
    let at = t.finished_at.as_ref().map(|f| format!(" at {}", f.0)).unwrap_or_default();
    Some(format!("exit code {} ({}){at}", t.exit_code, t.reason.clone().unwrap_or_default()))
}

fn last_trail<'a>(trail: &'a [Entry], f: impl Fn(&Entry) -> bool) -> Option<&'a Entry> {
    trail.iter().rev().find(|e| f(e))
}

/// When a crash-looping container is started again: its last exit plus
/// the back-off its waiting message names (`back-off 40s restarting ...`).
fn next_start(c: &ContainerStatus, message: &str) -> Option<Timestamp> {
    let word = message.split_whitespace().skip_while(|w| *w != "back-off").nth(1)?;
    let backoff = crate::config::duration::parse_go_duration(word).ok()?;
    let finished = c.last_state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()?.0;
    finished.checked_add(jiff_span(backoff)?).ok()
}

fn jiff_span(d: std::time::Duration) -> Option<k8s_openapi::jiff::SignedDuration> {
    k8s_openapi::jiff::SignedDuration::try_from(d).ok()
}

const IMAGE_REASONS: [&str; 5] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "ImageInspectError"];

/// One line: what the pod waits for now (pure).
pub fn summary(record: &PodRecord, trail: &[Entry], pulls: &[Progress]) -> String {
    let st: &PodStatus = &record.status;
    let phase = st.phase.clone().unwrap_or_default();
    let meta = &record.pod.metadata;
    if phase == "Succeeded" {
        return "finished: every container exited successfully".into();
    }
    if phase == "Failed" {
        let why = match (&st.reason, &st.message) {
            (Some(r), Some(m)) => format!("{r}: {m}"),
            (Some(r), None) => r.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "a container failed and the restart policy does not restart it".into(),
        };
        return format!("failed: {why}");
    }
    if let Some(d) = &meta.deletion_timestamp {
        let grace = meta.deletion_grace_period_seconds.unwrap_or(30);
        return format!("terminating: grace period {grace}s, containers are killed (SIGKILL) at {}", d.0);
    }
    let inits = st.init_container_statuses.clone().unwrap_or_default();
    let apps = st.container_statuses.clone().unwrap_or_default();
    let image_of = |name: &str| {
        let spec = record.pod.spec.as_ref();
        spec.and_then(|s| s.init_containers.iter().flatten().chain(s.containers.iter()).find(|c| c.name == name))
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let waiting_line = |c: &ContainerStatus, kind: &str| -> Option<String> {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.clone().unwrap_or_default();
        let msg = w.message.clone().unwrap_or_default();
        if IMAGE_REASONS.contains(&reason.as_str()) {
            return Some(format!("image {:?} of {kind} {:?} cannot be pulled ({reason}): {msg}", image_of(&c.name), c.name));
        }
        match reason.as_str() {
            "CrashLoopBackOff" => {
                let last = last_of(c).unwrap_or_else(|| "an unknown exit".into());
                let due = next_start(c, &msg).map(|t| format!(", next start at {t}")).unwrap_or_default();
                Some(format!("{kind} {:?} keeps crashing: last {last}, {} restarts{due}; {msg}", c.name, c.restart_count))
            }
            "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" | "PreStartHookError" | "PostStartHookError" => {
                Some(format!("{kind} {:?} cannot start ({reason}): {msg}", c.name))
            }
            _ => None,
        }
    };
    // Volumes first: nothing starts without them.
    let creating = inits.iter().chain(&apps).any(|c| {
        c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref()).is_some_and(|r| r == "ContainerCreating" || r == "PodInitializing")
    });
    if creating
        && let Some(e) = last_trail(trail, |e| e.reason == "FailedMount" || e.reason == "FailedAttachVolume")
        && !trail.iter().any(|x| x.at > e.at && x.reason == "Pulled" || x.at > e.at && x.reason == "Started")
    {
        return format!("volume set-up failed: {}", e.message);
    }
    for c in &inits {
        let done = c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0);
        if done {
            continue;
        }
        if let Some(line) = waiting_line(c, "init container") {
            return line;
        }
        if c.state.as_ref().and_then(|s| s.running.as_ref()).is_some() && !c.ready {
            return format!("init container {:?} is running; the app containers wait for it", c.name);
        }
        break;
    }
    for c in &apps {
        if let Some(line) = waiting_line(c, "container") {
            return line;
        }
    }
    if let Some(p) = pulls.first() {
        return format!(
            "pulling image {:?}: {} of {} so far, {:.0}s",
            p.image,
            crate::pulls::mib(p.done_bytes),
            crate::pulls::mib(p.total_bytes),
            p.seconds
        );
    }
    if creating {
        if let Some(e) = last_trail(trail, |e| e.kind == "Warning" && e.reason != crate::pods::dns::MISSING_CLUSTER_DNS) {
            return format!("containers are being created; last warning: {} {}", e.reason, e.message);
        }
        return "containers are being created".into();
    }
    let not_ready: Vec<&ContainerStatus> = apps.iter().filter(|c| !c.ready).collect();
    if let Some(c) = not_ready.first() {
        if c.started == Some(false) {
            let why = last_trail(trail, |e| e.reason == "Unhealthy" && e.message.starts_with("Startup")).map(|e| format!(": {}", e.message)).unwrap_or_default();
            return format!("container {:?} has not passed its startup probe yet{why}", c.name);
        }
        if let Some(e) = last_trail(trail, |e| e.reason == "Unhealthy" && e.message.starts_with("Readiness")) {
            return format!("container {:?} is not ready: {}", c.name, e.message);
        }
        if c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some() {
            return format!("container {:?} has exited ({})", c.name, state_of(c));
        }
        return format!("container {:?} is not ready yet", c.name);
    }
    if phase == "Pending" {
        return "pending: the pod has not started yet".into();
    }
    "running and Ready".into()
}

/// The whole explanation for a pod (pure but for the clock in the pulls).
pub fn explain(record: &PodRecord, trail: Vec<Entry>, pulls: Vec<Progress>, log_directory: String) -> Explanation {
    let st = &record.status;
    let images: Vec<String> = record
        .pod
        .spec
        .as_ref()
        .map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()).filter_map(|c| c.image.clone()).collect())
        .unwrap_or_default();
    let pulls: Vec<Progress> = pulls.into_iter().filter(|p| images.contains(&p.image)).collect();
    let line = |c: &ContainerStatus, init: bool| ContainerLine {
        name: c.name.clone(),
        init,
        image: c.image.clone(),
        state: state_of(c),
        ready: c.ready,
        restarts: c.restart_count,
        last: last_of(c),
    };
    let mut containers: Vec<ContainerLine> = st.init_container_statuses.iter().flatten().map(|c| line(c, true)).collect();
    containers.extend(st.container_statuses.iter().flatten().map(|c| line(c, false)));
    let conditions = st
        .conditions
        .iter()
        .flatten()
        .map(|c| {
            let why = [c.reason.clone(), c.message.clone()].into_iter().flatten().collect::<Vec<_>>().join(": ");
            if why.is_empty() { format!("{}={}", c.type_, c.status) } else { format!("{}={} ({why})", c.type_, c.status) }
        })
        .collect();
    let summary = summary(record, &trail, &pulls);
    Explanation {
        pod: format!("{}/{}", record.pod.metadata.namespace.clone().unwrap_or_default(), record.pod.metadata.name.clone().unwrap_or_default()),
        uid: record.pod.metadata.uid.clone().unwrap_or_default(),
        summary,
        phase: st.phase.clone().unwrap_or_default(),
        containers,
        conditions,
        pulls,
        trail,
        log_directory,
        resources: Vec::new(),
    }
}

/// What the CPU, device and DRA managers gave each container of a pod, for
/// `nodelet explain`: one line per container and kind.
pub fn resources(
    pod: &k8s_openapi::api::core::v1::Pod,
    cpus: &crate::cpus::CpuManager,
    memory: &crate::memory::MemoryManager,
    devices: &crate::devices::Devices,
    dra: &crate::dra::Dra,
) -> Vec<String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = &pod.spec else { return Vec::new() };
    let exclusive = cpus.exclusive(&uid);
    let pinned = memory.pinned(&uid);
    let mut out = Vec::new();
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        if let Some(set) = exclusive.get(&c.name) {
            out.push(format!("{}: exclusive CPUs {}", c.name, crate::cpus::format(set)));
        }
        if let Some((size, numa)) = pinned.get(&c.name) {
            out.push(format!("{}: memory {size} bytes on NUMA nodes {}", c.name, crate::cpus::format(numa)));
        }
        for (resource, ids) in devices.assigned(&uid, &c.name) {
            out.push(format!("{}: {resource} {}", c.name, ids.join(", ")));
        }
        for claim in dra.container_claims(&uid, &c.name) {
            let devs: Vec<String> = claim
                .drivers
                .iter()
                .flat_map(|(driver, ds)| ds.iter().map(move |d| format!("{driver}/{}/{} (CDI {})", d.pool, d.device, d.cdi_ids.join(", "))))
                .collect();
            out.push(format!("{}: ResourceClaim {}: {}", c.name, claim.name, if devs.is_empty() { "no devices".to_string() } else { devs.join("; ") }));
        }
    }
    out
}

/// The last `n` lines of the newest log file of `container` under the pod's
/// log directory (the CRI format's prefix removed).
pub fn last_log_lines(log_directory: &str, container: &str, n: usize) -> Vec<String> {
    let dir = std::path::Path::new(log_directory).join(container);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let newest = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u64 = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    let Some((_, path)) = newest else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string(&path) else { return Vec::new() };
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            // <time> <stream> <P|F> <text>
            let mut parts = l.splitn(4, ' ');
            let (_, _, _, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
            rest.unwrap_or(l).to_string()
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Text for people: the summary first, then the details.
pub fn render(e: &Explanation, logs: &[(String, Vec<String>)]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: {}", e.pod, e.summary);
    let _ = writeln!(s, "  phase {}, uid {}", e.phase, e.uid);
    if !e.containers.is_empty() {
        let _ = writeln!(s, "Containers:");
        for c in &e.containers {
            let kind = if c.init { "init " } else { "" };
            let _ = writeln!(s, "  {kind}{} ({}): {}; ready {}, restarts {}", c.name, c.image, c.state, c.ready, c.restarts);
            if let Some(l) = &c.last {
                let _ = writeln!(s, "    last: {l}");
            }
        }
    }
    if !e.conditions.is_empty() {
        let _ = writeln!(s, "Conditions: {}", e.conditions.join(", "));
    }
    if !e.resources.is_empty() {
        let _ = writeln!(s, "Resources:");
        for r in &e.resources {
            let _ = writeln!(s, "  {r}");
        }
    }
    for p in &e.pulls {
        let _ = writeln!(s, "Pulling {}: {} of {} so far, {:.0}s", p.image, crate::pulls::mib(p.done_bytes), crate::pulls::mib(p.total_bytes), p.seconds);
    }
    if !e.trail.is_empty() {
        let _ = writeln!(s, "How it got here (oldest first):");
        for t in &e.trail {
            let count = if t.count > 1 { format!(" (x{})", t.count) } else { String::new() };
            let _ = writeln!(s, "  {} {:<7} {}: {}{count}", t.at.strftime("%H:%M:%S"), t.kind, t.reason, t.message);
        }
    }
    for (name, lines) in logs {
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(s, "Last log lines of {name}:");
        for l in lines {
            let _ = writeln!(s, "  | {l}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn record(status: serde_json::Value) -> PodRecord {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "app", "image": "r.io/app:1"}]}
        }))
        .unwrap();
        PodRecord { pod: Arc::new(pod), status: serde_json::from_value(status).unwrap() }
    }

    fn entry(reason: &str, message: &str) -> Entry {
        Entry { at: Timestamp::now(), kind: "Warning".into(), reason: reason.into(), message: message.into(), count: 1 }
    }

    #[test]
    fn the_first_line_names_the_cause() {
        let r = record(serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "r.io/app:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"r.io/app:1\": 401 Unauthorized"}}}]}));
        let s = summary(&r, &[], &[]);
        assert!(s.starts_with("image \"r.io/app:1\" of container \"app\" cannot be pulled (ImagePullBackOff)") && s.contains("401"), "{s}");

        let r = record(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "r.io/app:1", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=app"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "finishedAt": "2026-11-26T10:00:00Z"}}}]}));
        let s = summary(&r, &[], &[]);
        assert!(s.contains("keeps crashing") && s.contains("exit code 3"), "{s}");
        assert!(s.contains("next start at 2026-11-26T10:00:40Z"), "{s}");

        let r = record(serde_json::json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "r.io/app:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        let s = summary(&r, &[entry("FailedMount", "MountVolume.SetUp failed for volume \"cfg\" : configmap \"gone\" not found")], &[]);
        assert!(s.starts_with("volume set-up failed") && s.contains("configmap \"gone\""), "{s}");

        let r = record(serde_json::json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "r.io/app:1", "imageID": "", "ready": false, "started": true, "restartCount": 0,
            "state": {"running": {}}}]}));
        let s = summary(&r, &[entry("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500")], &[]);
        assert!(s.starts_with("container \"app\" is not ready: Readiness probe failed") && s.contains("500"), "{s}");

        let r = record(serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "app", "image": "r.io/app:1", "imageID": "", "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {}}}]}));
        assert_eq!(summary(&r, &[], &[]), "running and Ready");
    }

    #[test]
    fn trails_are_bounded_and_fold_repeats() {
        let t = Trails::default();
        for i in 0..(TRAIL_LEN + 10) {
            t.push("u", EventType::Normal, "R", &format!("m{i}"));
        }
        let got = t.get("u");
        assert_eq!(got.len(), TRAIL_LEN);
        assert_eq!(got[0].message, "m10");
        t.push("u", EventType::Warning, "BackOff", "same");
        t.push("u", EventType::Warning, "BackOff", "same");
        assert_eq!(t.get("u").last().unwrap().count, 2);
        for i in 0..(MAX_PODS + 5) {
            t.push(&format!("p{i}"), EventType::Normal, "R", "m");
        }
        assert!(t.get("u").is_empty(), "the least recently written pod's trail went first");
    }
}
