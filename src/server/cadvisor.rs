//! `/metrics/cadvisor`: the per-container families kubelet's built-in
//! cAdvisor exports, with its names and labels (`container`, `id`, `image`,
//! `name`, `namespace`, `pod`), what dashboards, alerts and the
//! prometheus-adapter path of the HPA read.
//!
//! The figures come from each container's own cgroup (found through its
//! init process's /proc/<pid>/cgroup, so any cgroup driver and layout
//! works), cgroup v1 or v2; the pod's row is the parent cgroup (`container`
//! empty, as cAdvisor reports pod cgroups) and carries the pod's network
//! from the runtime's sandbox stats. Reading is pure over a directory, so
//! tests feed it fixture trees.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a process's cgroups are: one path per v1 controller, or the v2 path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// `None` for the unified (v2) hierarchy.
    pub v1: Option<BTreeMap<String, String>>,
    pub v2: String,
}

impl CgroupPaths {
    /// From the text of /proc/<pid>/cgroup.
    pub fn parse(text: &str) -> Self {
        let mut v1 = BTreeMap::new();
        let mut v2 = String::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if controllers.is_empty() {
                v2 = path.to_string();
            } else {
                for c in controllers.split(',') {
                    v1.insert(c.trim_start_matches("name=").to_string(), path.to_string());
                }
            }
        }
        Self { v1: (!v1.is_empty()).then_some(v1), v2 }
    }

    /// The cgroup's path as cAdvisor names it (`id`): the memory
    /// controller's on v1, the unified one on v2.
    pub fn id(&self) -> String {
        match &self.v1 {
            Some(m) => m.get("memory").or_else(|| m.get("cpu")).cloned().unwrap_or_default(),
            None => self.v2.clone(),
        }
    }

    /// The parent cgroup (the pod's, for a container).
    pub fn parent(&self) -> Self {
        let up = |p: &String| Path::new(p).parent().map_or_else(|| "/".to_string(), |p| p.display().to_string());
        Self { v1: self.v1.as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), up(v))).collect()), v2: up(&self.v2) }
    }

    /// The directory of `controller` below the cgroup mount.
    fn dir(&self, mount: &Path, controller: &str) -> Option<PathBuf> {
        let rel = match &self.v1 {
            Some(m) => Path::new(controller).join(m.get(controller)?.trim_start_matches('/')),
            None => PathBuf::from(self.v2.trim_start_matches('/')),
        };
        Some(mount.join(rel))
    }
}

/// One cgroup's figures, as cAdvisor reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub cfs_periods: u64,
    pub cfs_throttled_periods: u64,
    pub cfs_throttled_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub cache: u64,
    pub mapped_file: u64,
    pub swap: u64,
    pub oom_events: u64,
    pub threads: u64,
    pub processes: u64,
    /// 0 when unlimited, as cAdvisor reports it.
    pub memory_limit: u64,
    pub cpu_quota: Option<u64>,
    pub cpu_period: u64,
    pub cpu_shares: u64,
}

/// USER_HZ: cpuacct.stat counts in ticks of 10 ms.
const TICK_NS: u64 = 10_000_000;
/// cgroup v1's "no limit" (PAGE_COUNTER_MAX pages, rounded); anything this
/// large is unlimited.
const UNLIMITED: u64 = 1 << 62;

fn read(dir: Option<&PathBuf>, file: &str) -> Option<String> {
    std::fs::read_to_string(dir?.join(file)).ok()
}

fn number(dir: Option<&PathBuf>, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events).
fn keyed(text: Option<String>) -> BTreeMap<String, u64> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.parse().ok()?))
        })
        .collect()
}

fn lines(text: Option<String>) -> u64 {
    u64::try_from(text.unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).count()).unwrap_or(u64::MAX)
}

/// cgroup v2's cpu.weight back to v1 shares (cAdvisor's and runc's formula).
fn weight_to_shares(weight: u64) -> u64 {
    weight.saturating_sub(1).saturating_mul(262_142).checked_div(9_999).unwrap_or(0).saturating_add(2)
}

/// Reads the figures of the cgroup at `paths` below `mount`.
pub fn read_figures(mount: &Path, paths: &CgroupPaths) -> Figures {
    let mut f = Figures::default();
    if paths.v1.is_some() {
        let cpuacct = paths.dir(mount, "cpuacct");
        let cpu = paths.dir(mount, "cpu");
        let memory = paths.dir(mount, "memory");
        let pids = paths.dir(mount, "pids");
        f.cpu_usage_ns = number(cpuacct.as_ref(), "cpuacct.usage").unwrap_or(0);
        let stat = keyed(read(cpuacct.as_ref(), "cpuacct.stat"));
        f.cpu_user_ns = stat.get("user").copied().unwrap_or(0).saturating_mul(TICK_NS);
        f.cpu_system_ns = stat.get("system").copied().unwrap_or(0).saturating_mul(TICK_NS);
        let cs = keyed(read(cpu.as_ref(), "cpu.stat"));
        f.cfs_periods = cs.get("nr_periods").copied().unwrap_or(0);
        f.cfs_throttled_periods = cs.get("nr_throttled").copied().unwrap_or(0);
        f.cfs_throttled_ns = cs.get("throttled_time").copied().unwrap_or(0);
        f.cpu_period = number(cpu.as_ref(), "cpu.cfs_period_us").unwrap_or(0);
        f.cpu_quota = read(cpu.as_ref(), "cpu.cfs_quota_us").and_then(|q| q.trim().parse::<i64>().ok()).and_then(|q| u64::try_from(q).ok());
        f.cpu_shares = number(cpu.as_ref(), "cpu.shares").unwrap_or(0);
        f.memory_usage = number(memory.as_ref(), "memory.usage_in_bytes").unwrap_or(0);
        let ms = keyed(read(memory.as_ref(), "memory.stat"));
        let get = |k: &str| ms.get(k).copied().unwrap_or(0);
        f.working_set = f.memory_usage.saturating_sub(get("total_inactive_file"));
        f.rss = get("total_rss");
        f.cache = get("total_cache");
        f.mapped_file = get("total_mapped_file");
        f.swap = get("total_swap");
        f.memory_limit = number(memory.as_ref(), "memory.limit_in_bytes").filter(|l| *l < UNLIMITED).unwrap_or(0);
        f.oom_events = keyed(read(memory.as_ref(), "memory.oom_control")).get("oom_kill").copied().unwrap_or(0);
        f.threads = number(pids.as_ref(), "pids.current").unwrap_or(0);
        f.processes = lines(read(pids.as_ref().or(memory.as_ref()), "cgroup.procs"));
    } else {
        let dir = paths.dir(mount, "");
        let d = dir.as_ref();
        let cs = keyed(read(d, "cpu.stat"));
        let us = |k: &str| cs.get(k).copied().unwrap_or(0).saturating_mul(1000);
        f.cpu_usage_ns = us("usage_usec");
        f.cpu_user_ns = us("user_usec");
        f.cpu_system_ns = us("system_usec");
        f.cfs_periods = cs.get("nr_periods").copied().unwrap_or(0);
        f.cfs_throttled_periods = cs.get("nr_throttled").copied().unwrap_or(0);
        f.cfs_throttled_ns = us("throttled_usec");
        if let Some(max) = read(d, "cpu.max") {
            let mut p = max.split_whitespace();
            f.cpu_quota = p.next().and_then(|q| q.parse().ok());
            f.cpu_period = p.next().and_then(|q| q.parse().ok()).unwrap_or(0);
        }
        f.cpu_shares = number(d, "cpu.weight").map_or(0, weight_to_shares);
        f.memory_usage = number(d, "memory.current").unwrap_or(0);
        let ms = keyed(read(d, "memory.stat"));
        let get = |k: &str| ms.get(k).copied().unwrap_or(0);
        f.working_set = f.memory_usage.saturating_sub(get("inactive_file"));
        f.rss = get("anon");
        f.cache = get("file");
        f.mapped_file = get("file_mapped");
        f.swap = number(d, "memory.swap.current").unwrap_or(0);
        f.memory_limit = number(d, "memory.max").unwrap_or(0);
        f.oom_events = keyed(read(d, "memory.events")).get("oom_kill").copied().unwrap_or(0);
        f.threads = number(d, "pids.current").unwrap_or(0);
        f.processes = lines(read(d, "cgroup.procs"));
    }
    f
}

pub use super::stats::Interface;

/// One row: a container's cgroup, or a pod's (`container` empty).
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub container: String,
    pub id: String,
    pub image: String,
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub figures: Figures,
    pub start_seconds: f64,
    pub network: Vec<Interface>,
}

/// The machine's figures (cAdvisor's `machine_*`).
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub boot_id: String,
    pub machine_id: String,
    pub system_uuid: String,
}

/// A label value in the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(r: &Row, extra: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let base = [("container", &r.container), ("id", &r.id), ("image", &r.image), ("name", &r.name), ("namespace", &r.namespace), ("pod", &r.pod)];
    let mut all: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).chain(extra.iter().copied()).collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (k, v)) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

type Value = fn(&Row) -> Option<f64>;

/// The families, cAdvisor's names, types and help texts.
const FAMILIES: &[(&str, &str, &str, Value)] = &[
    ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.", |r| Some(r.figures.cpu_usage_ns as f64 / 1e9)),
    ("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time consumed in seconds.", |r| Some(r.figures.cpu_user_ns as f64 / 1e9)),
    ("container_cpu_system_seconds_total", "counter", "Cumulative system cpu time consumed in seconds.", |r| Some(r.figures.cpu_system_ns as f64 / 1e9)),
    ("container_cpu_cfs_periods_total", "counter", "Number of elapsed enforcement period intervals.", |r| Some(r.figures.cfs_periods as f64)),
    ("container_cpu_cfs_throttled_periods_total", "counter", "Number of throttled period intervals.", |r| Some(r.figures.cfs_throttled_periods as f64)),
    ("container_cpu_cfs_throttled_seconds_total", "counter", "Total time duration the container has been throttled.", |r| Some(r.figures.cfs_throttled_ns as f64 / 1e9)),
    ("container_memory_usage_bytes", "gauge", "Current memory usage in bytes, including all memory regardless of when it was accessed", |r| Some(r.figures.memory_usage as f64)),
    ("container_memory_working_set_bytes", "gauge", "Current working set in bytes.", |r| Some(r.figures.working_set as f64)),
    ("container_memory_rss", "gauge", "Size of RSS in bytes.", |r| Some(r.figures.rss as f64)),
    ("container_memory_cache", "gauge", "Number of bytes of page cache memory.", |r| Some(r.figures.cache as f64)),
    ("container_memory_mapped_file", "gauge", "Size of memory mapped files in bytes.", |r| Some(r.figures.mapped_file as f64)),
    ("container_memory_swap", "gauge", "Container swap usage in bytes.", |r| Some(r.figures.swap as f64)),
    ("container_oom_events_total", "counter", "Count of out of memory events observed for the container", |r| Some(r.figures.oom_events as f64)),
    ("container_processes", "gauge", "Number of processes running inside the container.", |r| Some(r.figures.processes as f64)),
    ("container_threads", "gauge", "Number of threads running inside the container", |r| Some(r.figures.threads as f64)),
    ("container_spec_cpu_period", "gauge", "CPU period of the container.", |r| (r.figures.cpu_period > 0).then_some(r.figures.cpu_period as f64)),
    ("container_spec_cpu_quota", "gauge", "CPU quota of the container.", |r| r.figures.cpu_quota.map(|q| q as f64)),
    ("container_spec_cpu_shares", "gauge", "CPU share of the container.", |r| Some(r.figures.cpu_shares as f64)),
    ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container.", |r| Some(r.figures.memory_limit as f64)),
    ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds.", |r| (r.start_seconds > 0.0).then_some(r.start_seconds)),
];

type NetValue = fn(&Interface) -> u64;

const NETWORK: &[(&str, &str, NetValue)] = &[
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", |i| i.rx_bytes),
    ("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", |i| i.rx_errors),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", |i| i.tx_bytes),
    ("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", |i| i.tx_errors),
];

/// The exposition text: every family for every row, then the machine's.
pub fn render(rows: &[Row], machine: &Machine, now_ms: i64) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in rows {
            let Some(v) = value(r) else { continue };
            let extra: &[(&str, &str)] = if *name == "container_cpu_usage_seconds_total" { &[("cpu", "total")] } else { &[] };
            let _ = writeln!(out, "{name}{{{}}} {v} {now_ms}", labels(r, extra));
        }
    }
    let _ = writeln!(out, "# HELP container_last_seen Last time a container was seen by the exporter\n# TYPE container_last_seen gauge");
    for r in rows {
        let _ = writeln!(out, "container_last_seen{{{}}} {} {now_ms}", labels(r, &[]), now_ms / 1000);
    }
    for (name, help, value) in NETWORK {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for r in rows {
            for i in &r.network {
                let _ = writeln!(out, "{name}{{{}}} {} {now_ms}", labels(r, &[("interface", &i.name)]), value(i));
            }
        }
    }
    let m = format!("boot_id=\"{}\",machine_id=\"{}\",system_uuid=\"{}\"", escape(&machine.boot_id), escape(&machine.machine_id), escape(&machine.system_uuid));
    let _ = writeln!(out, "# HELP machine_cpu_cores Number of logical CPU cores.\n# TYPE machine_cpu_cores gauge\nmachine_cpu_cores{{{m}}} {}", machine.cpu_cores);
    let _ = writeln!(out, "# HELP machine_memory_bytes Amount of memory installed on the machine.\n# TYPE machine_memory_bytes gauge\nmachine_memory_bytes{{{m}}} {}", machine.memory_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "12:pids:/kubepods/burstable/podu1/c1\n11:memory:/kubepods/burstable/podu1/c1\n4:cpu,cpuacct:/kubepods/burstable/podu1/c1\n1:name=systemd:/kubepods/burstable/podu1/c1\n0::/\n";

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (f, body) in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
    }

    #[test]
    fn v1_figures_from_the_controllers_directories() {
        let paths = CgroupPaths::parse(V1);
        assert_eq!(paths.id(), "/kubepods/burstable/podu1/c1");
        assert_eq!(paths.parent().id(), "/kubepods/burstable/podu1");
        let mount = tempfile::tempdir().unwrap();
        let c = "kubepods/burstable/podu1/c1";
        write(
            mount.path(),
            &[
                (&format!("cpuacct/{c}/cpuacct.usage"), "2500000000\n"),
                (&format!("cpuacct/{c}/cpuacct.stat"), "user 150\nsystem 50\n"),
                (&format!("cpu/{c}/cpu.stat"), "nr_periods 40\nnr_throttled 3\nthrottled_time 1500000\n"),
                (&format!("cpu/{c}/cpu.cfs_period_us"), "100000\n"),
                (&format!("cpu/{c}/cpu.cfs_quota_us"), "-1\n"),
                (&format!("cpu/{c}/cpu.shares"), "256\n"),
                (&format!("memory/{c}/memory.usage_in_bytes"), "10485760\n"),
                (&format!("memory/{c}/memory.limit_in_bytes"), "9223372036854771712\n"),
                (&format!("memory/{c}/memory.stat"), "cache 1\ntotal_cache 4194304\ntotal_rss 5242880\ntotal_inactive_file 2097152\ntotal_mapped_file 4096\ntotal_swap 0\n"),
                (&format!("memory/{c}/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                (&format!("pids/{c}/pids.current"), "7\n"),
                (&format!("pids/{c}/cgroup.procs"), "10\n11\n"),
            ],
        );
        let f = read_figures(mount.path(), &paths);
        assert_eq!(f.cpu_usage_ns, 2_500_000_000);
        assert_eq!((f.cpu_user_ns, f.cpu_system_ns), (1_500_000_000, 500_000_000));
        assert_eq!((f.cfs_periods, f.cfs_throttled_periods, f.cfs_throttled_ns), (40, 3, 1_500_000));
        assert_eq!((f.cpu_quota, f.cpu_period, f.cpu_shares), (None, 100_000, 256), "-1 is no quota");
        assert_eq!(f.working_set, 10_485_760 - 2_097_152, "usage less inactive file");
        assert_eq!((f.rss, f.cache, f.mapped_file), (5_242_880, 4_194_304, 4096));
        assert_eq!(f.memory_limit, 0, "v1's unlimited reads as 0, as cAdvisor reports it");
        assert_eq!((f.oom_events, f.threads, f.processes), (2, 7, 2));
    }

    #[test]
    fn v2_figures_from_the_unified_directory() {
        let paths = CgroupPaths::parse("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-c1.scope\n");
        assert!(paths.v1.is_none());
        assert_eq!(paths.parent().id(), "/kubepods.slice/kubepods-pod1.slice");
        let mount = tempfile::tempdir().unwrap();
        let c = "kubepods.slice/kubepods-pod1.slice/cri-containerd-c1.scope";
        write(
            mount.path(),
            &[
                (&format!("{c}/cpu.stat"), "usage_usec 3000000\nuser_usec 2000000\nsystem_usec 1000000\nnr_periods 10\nnr_throttled 1\nthrottled_usec 5000\n"),
                (&format!("{c}/cpu.max"), "50000 100000\n"),
                (&format!("{c}/cpu.weight"), "10000\n"),
                (&format!("{c}/memory.current"), "8388608\n"),
                (&format!("{c}/memory.max"), "67108864\n"),
                (&format!("{c}/memory.stat"), "anon 4194304\nfile 2097152\ninactive_file 1048576\nfile_mapped 8192\n"),
                (&format!("{c}/memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
                (&format!("{c}/pids.current"), "3\n"),
                (&format!("{c}/cgroup.procs"), "1\n"),
            ],
        );
        let f = read_figures(mount.path(), &paths);
        assert_eq!((f.cpu_usage_ns, f.cpu_user_ns, f.cpu_system_ns), (3_000_000_000, 2_000_000_000, 1_000_000_000));
        assert_eq!((f.cpu_quota, f.cpu_period, f.cpu_shares), (Some(50_000), 100_000, 262_144));
        assert_eq!((f.memory_limit, f.working_set, f.rss, f.cache), (67_108_864, 7_340_032, 4_194_304, 2_097_152));
        assert_eq!((f.oom_events, f.threads, f.processes, f.cfs_throttled_ns), (1, 3, 1, 5_000_000));
        assert_eq!(weight_to_shares(39), 998, "runc's weight for 1024 shares, back");
    }

    #[test]
    fn renders_cadvisors_names_and_labels() {
        let row = Row {
            container: "app".into(),
            id: "/kubepods/podu1/c1".into(),
            image: "reg.local/app:\"1\"".into(),
            name: "c1".into(),
            namespace: "ns".into(),
            pod: "web".into(),
            figures: Figures { cpu_usage_ns: 1_500_000_000, memory_limit: 1024, ..Default::default() },
            start_seconds: 100.0,
            network: vec![Interface { name: "eth0".into(), rx_bytes: 9, ..Default::default() }],
        };
        let text = render(&[row], &Machine { cpu_cores: 2, memory_bytes: 8, ..Default::default() }, 5000);
        assert!(
            text.contains(r#"container_cpu_usage_seconds_total{container="app",cpu="total",id="/kubepods/podu1/c1",image="reg.local/app:\"1\"",name="c1",namespace="ns",pod="web"} 1.5 5000"#),
            "{text}"
        );
        assert!(text.contains(r#"container_spec_memory_limit_bytes{container="app","#));
        assert!(!text.contains("container_spec_cpu_quota{"), "no quota, no sample");
        assert!(text.contains(r#"container_network_receive_bytes_total{container="app",id="/kubepods/podu1/c1",image="reg.local/app:\"1\"",interface="eth0","#));
        assert!(text.contains("# TYPE container_memory_working_set_bytes gauge"));
        assert!(text.contains("machine_cpu_cores{boot_id=\"\",machine_id=\"\",system_uuid=\"\"} 2"));
    }
}
