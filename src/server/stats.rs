//! Resource usage for metrics-server, `kubectl top` and the HPA:
//! `/stats/summary` (the Summary API's JSON) and `/metrics/resource`
//! (kubelet's Prometheus families, what metrics-server scrapes today).
//!
//! Containers' CPU, memory working set and writable layer come from CRI
//! ListContainerStats (the runtime reads the containers' cgroups); pods
//! are the sums of their running containers; the node comes from
//! `/proc/stat`, `/proc/meminfo`, `/proc/net/dev` and the root directory's
//! filesystem. Working set is usage less inactive file pages, as cAdvisor
//! and the runtimes count it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::pods::store::StatusStore;
use crate::runtime::labels::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use crate::clock::UnixNanos;
use crate::runtime::{Runtime, cri};

/// Linux reports /proc/stat in USER_HZ ticks, 100 a second everywhere.
const TICK_NANOS: u64 = 10_000_000;

/// The node's CPU time in all modes but idle and iowait, in nanoseconds.
pub fn node_cpu_nanos(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7].iter().filter_map(|i| v.get(*i)).sum::<u64>();
    Some(busy * TICK_NANOS)
}

/// The figures of /proc/meminfo the node's memory stats use, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub inactive_file: u64,
}

impl MemInfo {
    pub fn parse(text: &str) -> Self {
        let mut m = MemInfo::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(kb)) = (parts.next(), parts.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
            let bytes = kb * 1024;
            match key {
                "MemTotal:" => m.total = bytes,
                "MemFree:" => m.free = bytes,
                "MemAvailable:" => m.available = bytes,
                "Inactive(file):" => m.inactive_file = bytes,
                _ => {}
            }
        }
        m
    }

    pub fn usage(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }

    /// Usage less inactive file pages (what can be reclaimed without I/O).
    pub fn working_set(&self) -> u64 {
        self.usage().saturating_sub(self.inactive_file)
    }
}

/// One network interface's counters (/proc/net/dev, or a pod's from the
/// runtime's sandbox stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interfaces of /proc/net/dev, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let name = name.trim().to_string();
            (name != "lo" && v.len() >= 11).then(|| Interface { name, rx_bytes: v[0], rx_errors: v[2], tx_bytes: v[8], tx_errors: v[10] })
        })
        .collect()
}

/// Figures the runtime reports, added without wrapping.
fn saturating_sum(values: impl Iterator<Item = u64>) -> u64 {
    values.fold(0, u64::saturating_add)
}

fn rfc3339(nanos: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(nanos as i128).map(|t| t.to_string()).unwrap_or_default()
}

/// What one container uses.
#[derive(Debug, Clone, Default)]
struct Usage {
    time: i64,
    cpu_nanos: u64,
    nano_cores: Option<u64>,
    working_set: u64,
    usage: u64,
    rss: u64,
    rootfs_used: u64,
    start_nanos: i64,
}

/// A running container with its pod.
#[derive(Debug, Clone)]
struct Row {
    namespace: String,
    pod: String,
    uid: String,
    container: String,
    usage: Usage,
}

/// Gathers the figures; remembers the last CPU reading per container to
/// compute `usageNanoCores`.
pub struct Collector {
    pub runtime: Arc<dyn Runtime>,
    pub statuses: StatusStore,
    pub node_name: String,
    pub root_dir: PathBuf,
    /// `podLogsDir`: the pods' logs count as their ephemeral storage.
    pub pod_logs_dir: PathBuf,
    last_cpu: Mutex<HashMap<String, (i64, u64)>>,
    volumes: Arc<super::volume_stats::VolumeStats>,
    /// The pods' volumes as their workers set them up.
    mounted: crate::volumes::Mounted,
}

/// What the pod's sandbox and disk add to its containers' figures.
#[derive(Debug, Default)]
struct PodExtras {
    network: Option<Value>,
    processes: Option<u64>,
    volumes: Vec<super::volume_stats::VolumeUsage>,
    logs_bytes: u64,
}

fn network_json(n: &cri::NetworkUsage) -> Option<Value> {
    let v = |x: &Option<cri::UInt64Value>| x.as_ref().map_or(0, |x| x.value);
    let iface = |i: &cri::NetworkInterfaceUsage| {
        json!({"name": i.name, "rxBytes": v(&i.rx_bytes), "rxErrors": v(&i.rx_errors), "txBytes": v(&i.tx_bytes), "txErrors": v(&i.tx_errors)})
    };
    let default = n.default_interface.as_ref()?;
    let mut out = iface(default);
    out["time"] = json!(rfc3339(n.timestamp));
    let all: Vec<Value> = std::iter::once(default).chain(n.interfaces.iter().filter(|i| i.name != default.name)).map(iface).collect();
    out["interfaces"] = json!(all);
    Some(out)
}

impl Collector {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        statuses: StatusStore,
        node_name: String,
        root_dir: PathBuf,
        pod_logs_dir: PathBuf,
        mounted: crate::volumes::Mounted,
        csi: crate::csi::Drivers,
    ) -> Self {
        let volumes = Arc::new(super::volume_stats::VolumeStats::new(root_dir.clone(), csi));
        Self { runtime, statuses, node_name, root_dir, pod_logs_dir, last_cpu: Mutex::new(HashMap::new()), volumes, mounted }
    }

    /// Network and process counts from the runtime's pod sandbox stats
    /// (left out if the runtime has none), volumes and logs from the disk.
    async fn pod_extras(&self, pods: &[(String, String, String)]) -> HashMap<String, PodExtras> {
        let mut out: HashMap<String, PodExtras> = HashMap::new();
        match self.runtime.list_pod_sandbox_stats(None).await {
            Ok(stats) => {
                for s in stats {
                    let (Some(a), Some(linux)) = (s.attributes, s.linux) else { continue };
                    let Some(uid) = a.labels.get(POD_UID) else { continue };
                    let e = out.entry(uid.clone()).or_default();
                    if let Some(n) = linux.network.as_ref().and_then(network_json) {
                        e.network = Some(n);
                    }
                    if let Some(c) = linux.process.and_then(|p| p.process_count) {
                        e.processes = Some(c.value);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "no pod sandbox stats from the runtime"),
        }
        let logs = self.pod_logs_dir.clone();
        let dirs: Vec<(String, PathBuf)> = pods.iter().map(|(ns, name, uid)| (uid.clone(), logs.join(format!("{ns}_{name}_{uid}")))).collect();
        let logs = tokio::task::spawn_blocking(move || dirs.into_iter().map(|(uid, d)| (uid, super::volume_stats::du(&d).0)).collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        for (uid, logs_bytes) in logs {
            out.entry(uid).or_default().logs_bytes = logs_bytes;
        }
        self.forget_gone_volumes();
        for (_, _, uid) in pods {
            let Some(vols) = self.mounted.get(uid) else { continue };
            out.entry(uid.clone()).or_default().volumes = self.volumes.of_pod(&vols).await;
        }
        out
    }

    fn rate(&self, key: &str, time: i64, cpu: u64) -> Option<u64> {
        let mut last = self.last_cpu.lock().unwrap_or_else(|e| e.into_inner());
        let before = last.insert(key.to_string(), (time, cpu));
        let (t0, c0) = before?;
        let dt = time - t0;
        (dt > 0 && cpu >= c0).then(|| ((cpu - c0) as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    /// The running containers' usage, from the runtime.
    async fn rows(&self) -> Result<Vec<Row>, String> {
        let running = crate::runtime::running_containers();
        let containers = self.runtime.list_container_stats(None).await.map_err(|e| e.to_string())?;
        let alive: HashMap<String, i64> = self
            .runtime
            .list_containers(Some(running))
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| (c.id, c.created_at))
            .collect();
        let v = |x: &Option<cri::UInt64Value>| x.as_ref().map_or(0, |x| x.value);
        let mut rows = Vec::new();
        for s in containers {
            let Some(attrs) = s.attributes else { continue };
            let Some(start) = alive.get(&attrs.id) else { continue };
            let label = |k: &str| attrs.labels.get(k).cloned().unwrap_or_default();
            let (cpu, mem) = (s.cpu.unwrap_or_default(), s.memory.unwrap_or_default());
            let time = if cpu.timestamp > 0 { cpu.timestamp } else { UnixNanos::now().0 };
            let cpu_nanos = v(&cpu.usage_core_nano_seconds);
            let usage = Usage {
                time,
                cpu_nanos,
                nano_cores: self.rate(&attrs.id, time, cpu_nanos),
                working_set: v(&mem.working_set_bytes),
                usage: v(&mem.usage_bytes),
                rss: v(&mem.rss_bytes),
                rootfs_used: s.writable_layer.as_ref().map_or(0, |w| v(&w.used_bytes)),
                start_nanos: *start,
            };
            rows.push(Row { namespace: label(POD_NAMESPACE), pod: label(POD_NAME), uid: label(POD_UID), container: label(CONTAINER_NAME), usage });
        }
        rows.sort_by(|a, b| (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container)));
        Ok(rows)
    }

    fn node_usage(&self) -> (Usage, MemInfo) {
        let time = UnixNanos::now().0;
        let cpu = std::fs::read_to_string("/proc/stat").ok().and_then(|s| node_cpu_nanos(&s)).unwrap_or(0);
        let mem = MemInfo::parse(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
        let usage = Usage {
            time,
            cpu_nanos: cpu,
            nano_cores: self.rate("", time, cpu),
            working_set: mem.working_set(),
            usage: mem.usage(),
            ..Default::default()
        };
        (usage, mem)
    }

    // statvfs' field types differ between platforms: the casts are not
    // useless everywhere.
    #[allow(clippy::unnecessary_cast)]
    fn fs(&self, time: &str) -> Value {
        match nix::sys::statvfs::statvfs(&self.root_dir).or_else(|_| nix::sys::statvfs::statvfs("/")) {
            Ok(s) => {
                let f = s.fragment_size() as u64;
                json!({"time": time, "capacityBytes": s.blocks() as u64 * f, "availableBytes": s.blocks_available() as u64 * f,
                    "usedBytes": (s.blocks() as u64 - s.blocks_free() as u64) * f, "inodes": s.files() as u64,
                    "inodesFree": s.files_free() as u64, "inodesUsed": s.files() as u64 - s.files_free() as u64})
            }
            Err(_) => json!({"time": time}),
        }
    }

    /// Drops the figures of volumes no pod has any more.
    fn forget_gone_volumes(&self) {
        let live = self.mounted.paths();
        self.volumes.retain(&|p| live.contains(p));
    }

    /// kubelet's `kubelet_volume_stats_*` gauges for `/metrics`: one series
    /// per claim in use (by namespace and claim), however many pods use it.
    pub async fn volume_metrics(&self) -> String {
        self.forget_gone_volumes();
        let mut claims: BTreeMap<(String, String), super::volume_stats::VolumeUsage> = BTreeMap::new();
        for r in self.statuses.snapshot().values() {
            let (Some(uid), Some(ns)) = (r.pod.metadata.uid.as_deref(), r.pod.metadata.namespace.as_deref()) else { continue };
            let Some(vols) = self.mounted.get(uid) else { continue };
            for u in self.volumes.of_pod(&vols).await {
                if let Some(c) = u.claim.clone() {
                    claims.entry((ns.to_string(), c)).or_insert(u);
                }
            }
        }
        type Figure = fn(&super::volume_stats::VolumeUsage) -> u64;
        let families: [(&str, &str, Figure); 6] = [
            ("capacity_bytes", "Capacity in bytes of the volume", |u| u.capacity_bytes),
            ("available_bytes", "Number of available bytes in the volume", |u| u.available_bytes),
            ("used_bytes", "Number of used bytes in the volume", |u| u.used_bytes),
            ("inodes", "Maximum number of inodes in the volume", |u| u.inodes),
            ("inodes_free", "Number of free inodes in the volume", |u| u.inodes_free),
            ("inodes_used", "Number of used inodes in the volume", |u| u.inodes_used),
        ];
        let mut out = String::new();
        if claims.is_empty() {
            return out;
        }
        for (name, help, figure) in families {
            out.push_str(&format!("# HELP kubelet_volume_stats_{name} [ALPHA] {help}\n# TYPE kubelet_volume_stats_{name} gauge\n"));
            for ((ns, claim), u) in &claims {
                out.push_str(&format!("kubelet_volume_stats_{name}{{namespace=\"{ns}\",persistentvolumeclaim=\"{claim}\"}} {}\n", figure(u)));
            }
        }
        out
    }

    /// `/stats/summary`.
    pub async fn summary(&self) -> Result<Value, String> {
        let rows = self.rows().await?;
        let (node, mem) = self.node_usage();
        let now = rfc3339(node.time);
        let cpu = |u: &Usage| {
            let mut c = json!({"time": rfc3339(u.time), "usageCoreNanoSeconds": u.cpu_nanos});
            if let Some(n) = u.nano_cores {
                c["usageNanoCores"] = json!(n);
            }
            c
        };
        let memory = |u: &Usage| json!({"time": rfc3339(u.time), "workingSetBytes": u.working_set, "usageBytes": u.usage, "rssBytes": u.rss});
        let mut node_memory = memory(&node);
        node_memory["availableBytes"] = json!(mem.available);
        let interfaces: Vec<Value> = parse_net_dev(&std::fs::read_to_string("/proc/net/dev").unwrap_or_default())
            .into_iter()
            .map(|i| json!({"name": i.name, "rxBytes": i.rx_bytes, "rxErrors": i.rx_errors, "txBytes": i.tx_bytes, "txErrors": i.tx_errors}))
            .collect();
        let mut network = interfaces.first().cloned().unwrap_or_else(|| json!({}));
        network["time"] = json!(now);
        network["interfaces"] = json!(interfaces);
        let fs = self.fs(&now);
        let start_times: HashMap<String, Option<String>> = self
            .statuses
            .snapshot()
            .values()
            .map(|r| (r.pod.metadata.uid.clone().unwrap_or_default(), r.status.start_time.as_ref().map(|t| t.0.to_string())))
            .collect();
        let mut pods: BTreeMap<(String, String, String), Vec<&Row>> = BTreeMap::new();
        for r in &rows {
            pods.entry((r.namespace.clone(), r.pod.clone(), r.uid.clone())).or_default().push(r);
        }
        let extras = self.pod_extras(&pods.keys().cloned().collect::<Vec<_>>()).await;
        let pod_stats: Vec<Value> = pods
            .iter()
            .map(|((ns, name, uid), rows)| {
                let total = Usage {
                    time: rows.iter().map(|r| r.usage.time).max().unwrap_or(node.time),
                    cpu_nanos: saturating_sum(rows.iter().map(|r| r.usage.cpu_nanos)),
                    nano_cores: rows.iter().map(|r| r.usage.nano_cores).try_fold(0u64, |a, n| n.map(|n| a.saturating_add(n))),
                    working_set: saturating_sum(rows.iter().map(|r| r.usage.working_set)),
                    usage: saturating_sum(rows.iter().map(|r| r.usage.usage)),
                    rss: saturating_sum(rows.iter().map(|r| r.usage.rss)),
                    rootfs_used: saturating_sum(rows.iter().map(|r| r.usage.rootfs_used)),
                    start_nanos: 0,
                };
                let containers: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        json!({"name": r.container, "startTime": rfc3339(r.usage.start_nanos), "cpu": cpu(&r.usage), "memory": memory(&r.usage),
                            "rootfs": {"time": rfc3339(r.usage.time), "usedBytes": r.usage.rootfs_used}})
                    })
                    .collect();
                let x = extras.get(uid);
                let volumes: Vec<&super::volume_stats::VolumeUsage> = x.map(|x| x.volumes.iter().collect()).unwrap_or_default();
                // kubelet's pod ephemeral storage: the containers' writable
                // layers, their logs and the volumes kept on the node's disk.
                let ephemeral = saturating_sum(
                    [total.rootfs_used, x.map_or(0, |x| x.logs_bytes)].into_iter().chain(volumes.iter().filter(|v| v.on_node_disk).map(|v| v.used_bytes)),
                );
                let mut pod = json!({
                    "podRef": {"name": name, "namespace": ns, "uid": uid},
                    "startTime": start_times.get(uid).cloned().flatten(),
                    "containers": containers,
                    "cpu": cpu(&total),
                    "memory": memory(&total),
                    "ephemeral-storage": {"time": rfc3339(total.time), "usedBytes": ephemeral},
                });
                if let Some(n) = x.and_then(|x| x.network.clone()) {
                    pod["network"] = n;
                }
                if let Some(c) = x.and_then(|x| x.processes) {
                    pod["process_stats"] = json!({"process_count": c});
                }
                if !volumes.is_empty() {
                    pod["volume"] = volumes
                        .iter()
                        .map(|v| {
                            let mut j = json!({"time": rfc3339(v.time), "name": v.name, "usedBytes": v.used_bytes, "inodesUsed": v.inodes_used,
                                "capacityBytes": v.capacity_bytes, "availableBytes": v.available_bytes, "inodes": v.inodes, "inodesFree": v.inodes_free});
                            if let Some(c) = &v.claim {
                                j["pvcRef"] = json!({"name": c, "namespace": ns});
                            }
                            j
                        })
                        .collect();
                }
                pod
            })
            .collect();
        Ok(json!({
            "node": {
                "nodeName": self.node_name,
                "startTime": boot_time().map(|t| rfc3339(t * 1_000_000_000)),
                "cpu": cpu(&node),
                "memory": node_memory,
                "network": network,
                "fs": fs.clone(),
                "runtime": {"imageFs": fs},
            },
            "pods": pod_stats,
        }))
    }

    /// `/metrics/cadvisor`: every running container's cgroup and its pod's,
    /// in cAdvisor's families (see cadvisor.rs).
    pub async fn cadvisor_metrics(&self) -> String {
        use super::cadvisor::{self, CgroupPaths, Interface, Row};
        let running = crate::runtime::running_containers();
        let containers = match self.runtime.list_containers(Some(running)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing containers for /metrics/cadvisor failed");
                Vec::new()
            }
        };
        let mut networks: HashMap<String, Vec<Interface>> = HashMap::new();
        if let Ok(stats) = self.runtime.list_pod_sandbox_stats(None).await {
            let v = |x: &Option<cri::UInt64Value>| x.as_ref().map_or(0, |x| x.value);
            for s in stats {
                let (Some(a), Some(linux)) = (s.attributes, s.linux) else { continue };
                let Some(uid) = a.labels.get(POD_UID) else { continue };
                let Some(n) = linux.network else { continue };
                let all = n.default_interface.iter().chain(n.interfaces.iter().filter(|i| Some(&i.name) != n.default_interface.as_ref().map(|d| &d.name)));
                networks.insert(
                    uid.clone(),
                    all.map(|i| Interface { name: i.name.clone(), rx_bytes: v(&i.rx_bytes), rx_errors: v(&i.rx_errors), tx_bytes: v(&i.tx_bytes), tx_errors: v(&i.tx_errors) })
                        .collect(),
                );
            }
        }
        let mount = std::path::Path::new("/sys/fs/cgroup");
        // The image as the pod's status names it (what the container was
        // created from), as cAdvisor labels it; the runtime's ID otherwise.
        let statuses = self.statuses.snapshot();
        let image_of = |uid: &str, container: &str| -> Option<String> {
            let st = &statuses.get(uid)?.status;
            let all = st.container_statuses.iter().flatten().chain(st.init_container_statuses.iter().flatten()).chain(st.ephemeral_container_statuses.iter().flatten());
            all.into_iter().find(|c| c.name == container).map(|c| c.image.clone()).filter(|i| !i.is_empty())
        };
        let mut rows = Vec::new();
        let mut pods: BTreeMap<String, Row> = BTreeMap::new();
        for c in containers {
            let Ok(Some(pid)) = self.runtime.container_pid(&c.id).await else { continue };
            let Ok(text) = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup")).await else { continue };
            let paths = CgroupPaths::parse(&text);
            let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            let (namespace, pod, uid) = (label(POD_NAMESPACE), label(POD_NAME), label(POD_UID));
            let parent = paths.parent();
            let (p2, ns2, pod2, uid2) = (parent.clone(), namespace.clone(), pod.clone(), uid.clone());
            let figures = tokio::task::spawn_blocking(move || (cadvisor::read_figures(mount, &paths), paths.id())).await;
            let Ok((figures, id)) = figures else { continue };
            rows.push(Row {
                container: label(CONTAINER_NAME),
                id,
                image: image_of(&uid, &label(CONTAINER_NAME))
                    .or_else(|| c.image.as_ref().map(|i| i.image.clone()).filter(|i| !i.is_empty()))
                    .unwrap_or(c.image_ref.clone()),
                name: c.id.clone(),
                namespace,
                pod,
                figures,
                start_seconds: c.created_at as f64 / 1e9,
                network: Vec::new(),
            });
            if !pods.contains_key(&uid2) {
                let Ok((figures, id)) = tokio::task::spawn_blocking(move || (cadvisor::read_figures(mount, &p2), p2.id())).await else { continue };
                let network = networks.remove(&uid2).unwrap_or_default();
                pods.insert(uid2, Row { id, namespace: ns2, pod: pod2, figures, network, ..Default::default() });
            }
        }
        rows.extend(pods.into_values());
        rows.sort_by(|a, b| (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container)));
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        let machine = cadvisor::Machine {
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_bytes: std::fs::read_to_string("/proc/meminfo").map(|s| MemInfo::parse(&s).total).unwrap_or(0),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid"),
        };
        cadvisor::render(&rows, &machine, UnixNanos::now().millis())
    }

    /// `/metrics/resource`, in kubelet's families and labels.
    pub async fn resource_metrics(&self) -> String {
        let mut out = String::new();
        let rows = self.rows().await;
        let (node, _) = self.node_usage();
        let ms = |t: i64| t / 1_000_000;
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            out.push_str(&format!("# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}\n"));
        };
        let rows = match rows {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "container stats failed");
                None
            }
        };
        let rows_ref = rows.as_deref().unwrap_or(&[]);
        type Value = fn(&Usage) -> f64;
        let containers: [(&str, &str, &str, Value); 3] = [
            ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the container in core-seconds", |u| u.cpu_nanos as f64 / 1e9),
            ("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes", |u| u.working_set as f64),
            ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds", |u| u.start_nanos as f64 / 1e9),
        ];
        for (name, kind, help, value) in containers {
            family(&mut out, name, kind, help);
            for r in rows_ref {
                out.push_str(&format!(
                    "{name}{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
                    r.container,
                    r.namespace,
                    r.pod,
                    value(&r.usage),
                    ms(r.usage.time)
                ));
            }
        }
        family(&mut out, "node_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the node in core-seconds");
        out.push_str(&format!("node_cpu_usage_seconds_total {} {}\n", node.cpu_nanos as f64 / 1e9, ms(node.time)));
        family(&mut out, "node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes");
        out.push_str(&format!("node_memory_working_set_bytes {} {}\n", node.working_set, ms(node.time)));
        let mut pods: BTreeMap<(&str, &str), (u64, u64, i64)> = BTreeMap::new();
        for r in rows_ref {
            let e = pods.entry((&r.namespace, &r.pod)).or_default();
            e.0 += r.usage.cpu_nanos;
            e.1 += r.usage.working_set;
            e.2 = e.2.max(r.usage.time);
        }
        family(&mut out, "pod_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the pod in core-seconds");
        for ((ns, pod), (cpu, _, t)) in &pods {
            out.push_str(&format!("pod_cpu_usage_seconds_total{{namespace=\"{ns}\",pod=\"{pod}\"}} {} {}\n", *cpu as f64 / 1e9, ms(*t)));
        }
        family(&mut out, "pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes");
        for ((ns, pod), (_, ws, t)) in &pods {
            out.push_str(&format!("pod_memory_working_set_bytes{{namespace=\"{ns}\",pod=\"{pod}\"}} {ws} {}\n", ms(*t)));
        }
        family(&mut out, "scrape_error", "gauge", "1 if there was an error while getting container metrics, 0 otherwise");
        out.push_str(&format!("scrape_error {}\n", u8::from(rows.is_none())));
        out
    }
}

/// When the machine booted, in seconds since the epoch.
fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nbtime 1700000000\n";
        assert_eq!(node_cpu_nanos(stat), Some((100 + 5 + 50 + 3 + 2 + 1) * TICK_NANOS));
        let mem = MemInfo::parse("MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    600 kB\nInactive(file):  300 kB\n");
        assert_eq!(mem, MemInfo { total: 1_024_000, free: 204_800, available: 614_400, inactive_file: 307_200 });
        assert_eq!(mem.usage(), 819_200);
        assert_eq!(mem.working_set(), 512_000);
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 5000 10 1 0 0 0 0 0 7000 12 2 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), vec![Interface { name: "eth0".into(), rx_bytes: 5000, rx_errors: 1, tx_bytes: 7000, tx_errors: 2 }]);
    }
}
