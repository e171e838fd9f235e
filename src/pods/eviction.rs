//! Node-pressure eviction, as kubelet's eviction manager: every 10 s the
//! signals are read from the kernel (memory from the cgroup the pods live
//! under or /proc/meminfo, filesystems with statfs, PIDs from /proc), the
//! thresholds are judged (hard at once, soft after their grace period), the
//! node conditions MemoryPressure, DiskPressure and PIDPressure follow them
//! (held for `evictionPressureTransitionPeriod` after the last breach), and
//! while a threshold is met one pod at a time is evicted: the worst by
//! kubelet's ranking (usage above requests first, then lower priority, then
//! more usage above requests), stopped with no grace (hard) or at most
//! `evictionMaxPodGracePeriod` (soft), and Failed with reason `Evicted` and
//! kubelet's message. Static pods and pods of priority 2000000000 and up are
//! critical and never evicted, as in kubelet. For disk signals the image
//! collector is asked to free space before any pod goes.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::status::PodFailure;
use super::store::StatusStore;
use crate::config::eviction::{EvictionConfig, Signal, Threshold};
use crate::runtime::{Runtime, labels};

/// One signal's reading: what is available of what capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub available: i64,
    pub capacity: i64,
}

/// Where the signals come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The cgroup the pods live under (`cgroupRoot`); with a memory limit of
    /// its own, memory is judged against it rather than the whole machine.
    pub cgroup_root: PathBuf,
    /// The filesystem of `--root-dir` (nodefs).
    pub nodefs: PathBuf,
}

fn read_i64(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(text: &str, key: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == key).then(|| f.next()?.parse().ok()).flatten()
    })
}

/// memory.available = capacity − working set (usage − inactive file pages):
/// of the cgroup the pods live under when it has a memory limit below the
/// machine's (cgroup v2 or v1), else of the whole machine (/proc/meminfo).
pub fn memory(cgroup_root: &Path) -> Option<Reading> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |k: &str| stat_field(&info, k).map(|v| v.saturating_mul(1024));
    let total = kib("MemTotal:")?;
    let rel = cgroup_root.strip_prefix("/").unwrap_or(cgroup_root);
    let v2 = Path::new("/sys/fs/cgroup").join(rel);
    let v1 = Path::new("/sys/fs/cgroup/memory").join(rel);
    let limited = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        read_i64(&v2.join("memory.max")).zip(read_i64(&v2.join("memory.current"))).map(|(l, c)| (l, c, v2.join("memory.stat"), "inactive_file"))
    } else {
        read_i64(&v1.join("memory.limit_in_bytes"))
            .zip(read_i64(&v1.join("memory.usage_in_bytes")))
            .map(|(l, c)| (l, c, v1.join("memory.stat"), "total_inactive_file"))
    };
    if let Some((limit, current, stat, key)) = limited.filter(|(l, ..)| *l < total) {
        let stat = std::fs::read_to_string(stat).unwrap_or_default();
        let working = current.saturating_sub(stat_field(&stat, key).unwrap_or(0)).max(0);
        return Some(Reading { available: limit.saturating_sub(working), capacity: limit });
    }
    let used = total.saturating_sub(kib("MemFree:")?);
    let working = used.saturating_sub(kib("Inactive(file):").unwrap_or(0)).max(0);
    Some(Reading { available: total.saturating_sub(working), capacity: total })
}

/// Bytes and inodes of the filesystem holding `path`.
pub fn filesystem(path: &Path) -> Option<(Reading, Reading)> {
    let u = crate::files::usage(path)?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Some((Reading { available: n(u.available), capacity: n(u.capacity) }, Reading { available: n(u.inodes_free), capacity: n(u.inodes) }))
}

/// pid.available = pid_max − processes (threads) running.
pub fn pids() -> Option<Reading> {
    let max = read_i64(Path::new("/proc/sys/kernel/pid_max"))?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let running: i64 = loadavg.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()?;
    Some(Reading { available: max.saturating_sub(running), capacity: max })
}

/// Reads every signal it can; a signal that cannot be read is left out.
pub fn observe(src: &Sources, imagefs: Option<&Path>) -> BTreeMap<Signal, Reading> {
    let mut out = BTreeMap::new();
    if let Some(m) = memory(&src.cgroup_root) {
        out.insert(Signal::MemoryAvailable, m);
    }
    if let Some((b, i)) = filesystem(&src.nodefs) {
        out.insert(Signal::NodefsAvailable, b);
        out.insert(Signal::NodefsInodesFree, i);
        // Without an image filesystem of its own, imagefs is nodefs.
        let (ib, ii) = imagefs.and_then(filesystem).unwrap_or((b, i));
        out.insert(Signal::ImagefsAvailable, ib);
        out.insert(Signal::ImagefsInodesFree, ii);
    }
    if let Some(p) = pids() {
        out.insert(Signal::PidAvailable, p);
    }
    out
}

/// The node conditions the signals drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

fn condition_of(s: Signal) -> fn(&mut Pressure) -> &mut bool {
    match s {
        Signal::MemoryAvailable => |p| &mut p.memory,
        Signal::PidAvailable => |p| &mut p.pid,
        _ => |p| &mut p.disk,
    }
}

/// A threshold that is met now, with what the signal reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub threshold: Threshold,
    pub reading: Reading,
    /// The threshold's value in the signal's unit.
    pub value: i64,
}

/// The evaluator's memory across rounds.
#[derive(Debug, Default)]
pub struct State {
    /// Soft thresholds first seen met, by signal.
    soft_since: HashMap<Signal, Instant>,
    /// The last time each condition's thresholds were met.
    last_met: HashMap<&'static str, Instant>,
    /// Thresholds met last round (by signal and softness): they stay met
    /// until `evictionMinimumReclaim` beyond them is free again.
    active: BTreeSet<(Signal, bool)>,
}

/// Pure (given `now`): which thresholds are met now (soft ones only after
/// their grace period), and the node conditions, which hold for the
/// transition period after their last breach.
pub fn evaluate(cfg: &EvictionConfig, readings: &BTreeMap<Signal, Reading>, state: &mut State, now: Instant) -> (Vec<Breach>, Pressure) {
    let mut breaches = Vec::new();
    let mut observed = Pressure::default();
    for t in &cfg.thresholds {
        let Some(r) = readings.get(&t.signal) else { continue };
        let value = t.value.of(r.capacity);
        let key = (t.signal, t.grace.is_some());
        // Once met, a threshold holds until its minimum reclaim is free too.
        let reclaim = t.min_reclaim.filter(|_| state.active.contains(&key)).map_or(0, |m| m.of(r.capacity));
        let met = r.available < value.saturating_add(reclaim);
        if met {
            state.active.insert(key);
        } else {
            state.active.remove(&key);
        }
        if !met {
            if t.grace.is_some() {
                state.soft_since.remove(&t.signal);
            }
            continue;
        }
        *condition_of(t.signal)(&mut observed) = true;
        if let Some(grace) = t.grace {
            let since = *state.soft_since.entry(t.signal).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
        }
        breaches.push(Breach { threshold: t.clone(), reading: *r, value });
    }
    let mut pressure = Pressure::default();
    for (name, on, slot) in [
        ("memory", observed.memory, &mut pressure.memory),
        ("disk", observed.disk, &mut pressure.disk),
        ("pid", observed.pid, &mut pressure.pid),
    ] {
        if on {
            state.last_met.insert(name, now);
        }
        *slot = state.last_met.get(name).is_some_and(|t| now.duration_since(*t) < cfg.pressure_transition_period);
    }
    (breaches, pressure)
}

/// A pod as the ranking sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub uid: String,
    pub name: String,
    pub priority: i32,
    /// Bytes (memory) or bytes on disk, for the signal's resource.
    pub usage: i64,
    /// The pod's requests of that resource (memory); 0 for disk and PIDs.
    pub requests: i64,
    pub critical: bool,
    /// Per container: name, usage, request (memory), for the message.
    pub containers: Vec<(String, i64, i64)>,
}

/// kubelet's ranking: pods whose usage exceeds their requests first, then
/// lower priority, then more usage above requests. Critical pods are left
/// out.
pub fn rank(mut pods: Vec<Candidate>) -> Vec<Candidate> {
    pods.retain(|p| !p.critical);
    pods.sort_by(|a, b| {
        let over = |c: &Candidate| c.usage > c.requests;
        over(b)
            .cmp(&over(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage.saturating_sub(b.requests)).cmp(&a.usage.saturating_sub(a.requests)))
            .then(a.name.cmp(&b.name))
    });
    pods
}

/// Bytes as a quantity: Mi when whole, else Ki.
fn bytes(n: i64) -> String {
    if n == 0 {
        "0".into()
    } else if n % (1 << 20) == 0 {
        format!("{}Mi", n >> 20)
    } else if n % 1024 == 0 {
        format!("{}Ki", n / 1024)
    } else {
        n.to_string()
    }
}

/// kubelet's words for an eviction (its nodeLowMessageFmt and, for memory,
/// containerMessageFmt per container using more than it requested).
pub fn message(signal: Signal, value: i64, available: i64, pod: &Candidate) -> String {
    let resource = match signal {
        Signal::MemoryAvailable => "memory",
        Signal::PidAvailable => "pids",
        Signal::NodefsInodesFree | Signal::ImagefsInodesFree => "inodes",
        _ => "ephemeral-storage",
    };
    let q = |n: i64| if resource == "memory" || resource == "ephemeral-storage" { bytes(n) } else { n.to_string() };
    let mut m = format!("The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ", q(value), q(available.max(0)));
    if resource == "memory" {
        for (name, usage, request) in pod.containers.iter().filter(|(_, u, r)| u > r) {
            m.push_str(&format!("Container {name} was using {}, request is {}, has larger consumption of memory. ", q(*usage), q(*request)));
        }
    }
    m
}

/// A pod to end, sent to the pod manager.
#[derive(Debug, Clone)]
pub struct Eviction {
    pub uid: String,
    pub failure: PodFailure,
    pub grace: i64,
}

/// The eviction manager's loop.
pub struct Manager {
    pub config: EvictionConfig,
    pub sources: Sources,
    pub runtime: Arc<dyn Runtime>,
    pub statuses: StatusStore,
    pub pressure: watch::Sender<Pressure>,
    pub evictions: mpsc::Sender<Eviction>,
    /// Node-level reclaim before any pod goes for a disk signal: the image
    /// collector removes every unused image old enough.
    pub reclaim: Option<crate::images::ReclaimRequests>,
    /// And the container collector removes what its policy allows now.
    pub reclaim_containers: Option<crate::images::ReclaimRequests>,
}

impl Manager {
    pub async fn run(self) {
        let mut state = State::default();
        let mut evicted: BTreeSet<String> = BTreeSet::new();
        loop {
            let imagefs = match self.runtime.image_fs_info().await {
                Ok(list) => list.into_iter().find_map(|u| u.fs_id.map(|f| PathBuf::from(f.mountpoint))),
                Err(_) => None,
            };
            let sources = self.sources.clone();
            let readings = tokio::task::spawn_blocking(move || observe(&sources, imagefs.as_deref())).await.unwrap_or_default();
            let (breaches, pressure) = evaluate(&self.config, &readings, &mut state, Instant::now());
            self.pressure.send_if_modified(|old| {
                if *old != pressure {
                    tracing::info!(memory = pressure.memory, disk = pressure.disk, pid = pressure.pid, "node pressure changed");
                    *old = pressure;
                    return true;
                }
                false
            });
            if let Some(b) = breaches.first() {
                let disk = !matches!(b.threshold.signal, Signal::MemoryAvailable | Signal::PidAvailable);
                let (containers, freed) = if disk {
                    (Self::ask(self.reclaim_containers.as_ref()).await, Self::ask(self.reclaim.as_ref()).await)
                } else {
                    (0, 0)
                };
                if freed > 0 || containers > 0 {
                    tracing::info!(
                        signal = b.threshold.signal.as_str(),
                        images_freed = freed,
                        dead_containers = containers,
                        "reclaimed node-level resources before evicting any pod"
                    );
                } else {
                    self.evict_one(b, &mut evicted).await;
                }
            }
            tokio::time::sleep(self.config.monitoring_interval).await;
        }
    }

    /// Asks a collector to reclaim what it can now; what it reports.
    async fn ask(to: Option<&crate::images::ReclaimRequests>) -> u64 {
        let Some(tx) = to else { return 0 };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx.send(reply).await.is_err() {
            return 0;
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), rx).await.ok().and_then(Result::ok).unwrap_or(0)
    }

    /// Ends the worst-ranked pod for `b`, if one can go.
    async fn evict_one(&self, b: &Breach, evicted: &mut BTreeSet<String>) {
        let pods = self.statuses.snapshot();
        evicted.retain(|uid| pods.contains_key(uid));
        let usage = self.usage(b.threshold.signal).await;
        let candidates: Vec<Candidate> = pods
            .iter()
            .filter(|(uid, r)| !evicted.contains(*uid) && !super::is_terminal(&r.status))
            .map(|(uid, r)| {
                let memory = b.threshold.signal == Signal::MemoryAvailable;
                let per = usage.get(uid).cloned().unwrap_or_default();
                Candidate {
                    uid: uid.clone(),
                    name: r.pod.metadata.name.clone().unwrap_or_default(),
                    priority: r.pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                    usage: per.iter().map(|(_, u)| *u).fold(0i64, i64::saturating_add),
                    requests: if memory { r.pod.spec.as_ref().map_or(0, |s| super::admission::requests(s).1.get()) } else { 0 },
                    critical: super::is_critical(&r.pod),
                    containers: per
                        .into_iter()
                        .map(|(name, u)| {
                            let req = r.pod.spec.iter().flat_map(|s| &s.containers).find(|c| c.name == name).map_or(0, |c| super::admission::container_request(c, "memory", false).get());
                            (name, u, if memory { req } else { 0 })
                        })
                        .collect(),
                }
            })
            .collect();
        let Some(victim) = rank(candidates).into_iter().next() else {
            tracing::warn!(signal = b.threshold.signal.as_str(), "eviction threshold met, but no pod can be evicted");
            return;
        };
        let grace = if b.threshold.grace.is_some() {
            let own = pods.get(&victim.uid).and_then(|r| r.pod.spec.as_ref()?.termination_grace_period_seconds).unwrap_or(30);
            own.min(self.config.max_pod_grace_period)
        } else {
            0
        };
        let msg = message(b.threshold.signal, b.value, b.reading.available, &victim);
        tracing::warn!(pod = %victim.name, signal = b.threshold.signal.as_str(), grace, "evicting: {msg}");
        evicted.insert(victim.uid.clone());
        let _ = self.evictions.send(Eviction { uid: victim.uid, failure: PodFailure::disruption("Evicted", msg), grace }).await;
    }

    /// Per pod, per container usage for a signal: memory working set,
    /// writable-layer bytes or inodes, from CRI container stats; for PIDs,
    /// the pod's process count from CRI pod sandbox stats (one entry, "").
    async fn usage(&self, signal: Signal) -> HashMap<String, Vec<(String, i64)>> {
        let mut out: HashMap<String, Vec<(String, i64)>> = HashMap::new();
        if signal == Signal::PidAvailable {
            let Ok(stats) = self.runtime.list_pod_sandbox_stats(None).await else { return out };
            for s in stats {
                let (Some(a), Some(linux)) = (s.attributes, s.linux) else { continue };
                let Some(uid) = a.labels.get(labels::POD_UID).cloned() else { continue };
                let n = linux.process.and_then(|p| p.process_count).map_or(0, |c| c.value);
                out.entry(uid).or_default().push((String::new(), i64::try_from(n).unwrap_or(i64::MAX)));
            }
            return out;
        }
        let Ok(stats) = self.runtime.list_container_stats(None).await else { return out };
        for s in stats {
            let Some(a) = s.attributes.as_ref() else { continue };
            let Some(uid) = a.labels.get(labels::POD_UID).cloned() else { continue };
            let name = a.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            let v = match signal {
                Signal::MemoryAvailable => s.memory.and_then(|m| m.working_set_bytes).map_or(0, |v| v.value),
                Signal::NodefsInodesFree | Signal::ImagefsInodesFree => s.writable_layer.and_then(|w| w.inodes_used).map_or(0, |v| v.value),
                _ => s.writable_layer.and_then(|w| w.used_bytes).map_or(0, |v| v.value),
            };
            out.entry(uid).or_default().push((name, i64::try_from(v).unwrap_or(i64::MAX)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::eviction::{Amount, EvictionFields};
    use std::time::Duration;

    const MI: i64 = 1 << 20;

    fn readings(mem_avail: i64) -> BTreeMap<Signal, Reading> {
        BTreeMap::from([
            (Signal::MemoryAvailable, Reading { available: mem_avail, capacity: 1024 * MI }),
            (Signal::NodefsAvailable, Reading { available: 50, capacity: 100 }),
        ])
    }

    #[test]
    fn hard_thresholds_are_met_at_once_and_conditions_hold_for_the_transition_period() {
        let cfg = EvictionConfig::default();
        let mut st = State::default();
        let t0 = Instant::now();
        let (b, p) = evaluate(&cfg, &readings(50 * MI), &mut st, t0);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].threshold.signal, Signal::MemoryAvailable);
        assert_eq!(b[0].value, 100 * MI);
        assert!(p.memory && !p.disk && !p.pid);
        let (b, p) = evaluate(&cfg, &readings(500 * MI), &mut st, t0 + Duration::from_secs(60));
        assert!(b.is_empty());
        assert!(p.memory, "held for evictionPressureTransitionPeriod");
        let (_, p) = evaluate(&cfg, &readings(500 * MI), &mut st, t0 + Duration::from_secs(301));
        assert!(!p.memory);
    }

    #[test]
    fn a_met_threshold_holds_until_its_minimum_reclaim_is_free() {
        let mut hard = BTreeMap::new();
        hard.insert("memory.available".to_string(), "100Mi".to_string());
        let mut reclaim = BTreeMap::new();
        reclaim.insert("memory.available".to_string(), "50Mi".to_string());
        let f = EvictionFields { hard: Some(hard), minimum_reclaim: Some(reclaim), ..Default::default() };
        let cfg = EvictionConfig::resolve(&f, "k").unwrap();
        let mut st = State::default();
        let t0 = Instant::now();
        assert!(evaluate(&cfg, &readings(120 * MI), &mut st, t0).0.is_empty(), "not met: reclaim counts only once met");
        assert_eq!(evaluate(&cfg, &readings(90 * MI), &mut st, t0).0.len(), 1);
        assert_eq!(evaluate(&cfg, &readings(120 * MI), &mut st, t0).0.len(), 1, "still met: 100Mi + 50Mi not free yet");
        assert!(evaluate(&cfg, &readings(160 * MI), &mut st, t0).0.is_empty());
    }

    #[test]
    fn soft_thresholds_wait_out_their_grace_period() {
        let mut soft = BTreeMap::new();
        soft.insert("memory.available".to_string(), "200Mi".to_string());
        let mut grace = BTreeMap::new();
        grace.insert("memory.available".to_string(), "30s".to_string());
        let f = EvictionFields { hard: Some(BTreeMap::new()), soft: Some(soft), soft_grace: Some(grace), ..Default::default() };
        let cfg = EvictionConfig::resolve(&f, "k").unwrap();
        let mut st = State::default();
        let t0 = Instant::now();
        let (b, p) = evaluate(&cfg, &readings(150 * MI), &mut st, t0);
        assert!(b.is_empty() && p.memory, "pressure at once, eviction after the grace period");
        let (b, _) = evaluate(&cfg, &readings(150 * MI), &mut st, t0 + Duration::from_secs(31));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].threshold.value, Amount::Quantity(200 * MI));
    }

    #[test]
    fn ranking_puts_usage_above_requests_first_then_low_priority_then_the_most_over() {
        let c = |name: &str, priority: i32, usage: i64, requests: i64, critical: bool| Candidate {
            uid: name.into(),
            name: name.into(),
            priority,
            usage,
            requests,
            critical,
            containers: vec![],
        };
        let ranked = rank(vec![
            c("guaranteed", 0, 10, 64, false),
            c("hog", 0, 200, 0, false),
            c("important-hog", 1000, 300, 0, false),
            c("small-over", 0, 20, 10, false),
            c("static", 0, 900, 0, true),
        ]);
        let names: Vec<&str> = ranked.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hog", "small-over", "important-hog", "guaranteed"]);
    }

    #[test]
    fn the_message_is_kubelets() {
        let pod = Candidate {
            uid: "u".into(),
            name: "hog".into(),
            priority: 0,
            usage: 200 * MI,
            requests: 0,
            critical: false,
            containers: vec![("eat".into(), 200 * MI + 4096, 0)],
        };
        assert_eq!(
            message(Signal::MemoryAvailable, 100 * MI, 50 * MI - 1024, &pod),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51199Ki. \
             Container eat was using 204804Ki, request is 0, has larger consumption of memory. "
        );
    }

    #[test]
    fn signals_are_read_from_the_kernel() {
        let m = memory(Path::new("/")).expect("memory.available");
        assert!(m.capacity > 0 && m.available > 0 && m.available <= m.capacity);
        let (b, i) = filesystem(Path::new("/")).unwrap();
        assert!(b.capacity > 0 && i.capacity > 0);
        let p = pids().unwrap();
        assert!(p.available > 0 && p.available < p.capacity);
    }
}
