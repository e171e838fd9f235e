//! The manager's wiring against the dry-run simulator: pods added,
//! removed, and orphans taken down only once every source reported.

use std::io::Write;
use std::sync::Mutex;

use super::*;
use crate::pods::events::LogRecorder;
use crate::pods::manifest::{self, StaticOrigin};
use crate::pods::store::StatusStore;
use crate::pods::{NodeContext, pleg};
use crate::runtime::dry_run::DryRunRuntime;
use crate::runtime::{Runtime, RuntimeHealth};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
    fn count(&self, prefix: &str) -> usize {
        self.text().lines().filter(|l| l.starts_with(prefix)).count()
    }
}

struct Harness {
    sources: mpsc::Sender<SourceUpdate>,
    statuses: StatusStore,
    tasks: JoinSet<()>,
}

fn start(rt: Arc<DryRunRuntime>) -> Harness {
    let statuses = StatusStore::default();
    let ready = RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() };
    let (_health_tx, health) = watch::channel(ready);
    let ctx = Arc::new(WorkerContext {
        devices: Default::default(),
        cpus: Default::default(),
        memory: Default::default(),
        dra: Default::default(),
        topology: Default::default(),
        runtime: rt.clone(),
        node: Arc::new(NodeContext::for_tests("n")),
        events: Arc::new(LogRecorder),
        statuses: statuses.clone(),
        health,
        resync: Duration::from_secs(60),
        dry_run: true,
        terminated: None,
        objects: None,
        csi: Default::default(),
        in_use: Default::default(),
        mounted: Default::default(),
        node_labels: tokio::sync::watch::channel(Default::default()).1,
        allocated: crate::pods::allocation::Checkpoint::open(None, "allocated_pods_state"),
        actuated: crate::pods::allocation::Checkpoint::open(None, "actuated_pods_state"),
        probe_counts: Default::default(),
        metrics: Default::default(),
        pulls: Arc::new(
            crate::pulls::Puller::new(rt.clone(), std::path::Path::new("/nonexistent"), Default::default(), crate::credentials::provider::Providers::new(vec![]))
                .read_only(),
        ),
    });
    let (src_tx, src_rx) = mpsc::channel(4);
    let (relist_tx, relist_rx) = mpsc::channel(4);
    let (_exits_tx, exits_rx) = mpsc::channel(4);
    let (healthy, _) = watch::channel(None);
    let mut tasks = JoinSet::new();
    let runtime: Arc<dyn Runtime> = rt;
    tasks.spawn(async move {
        let _keep = _exits_tx;
        pleg::run(runtime, Duration::from_millis(20), exits_rx, Default::default(), tokio::sync::watch::channel(false).1, relist_tx, healthy, Default::default()).await
    });
    tasks.spawn(async move {
        let _keep = _health_tx;
        PodManager::new(ctx, BTreeSet::from([SourceName::File]), true).run(src_rx, relist_rx).await
    });
    Harness { sources: src_tx, statuses, tasks }
}

fn pod(name: &str) -> DesiredPod {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers: [{{name: c, image: 'busybox:1'}}]\n"
    );
    Arc::new(manifest::load_static(yaml.as_bytes(), "n", &StaticOrigin::File(format!("/m/{name}.yaml"))).unwrap().0)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn pods_follow_their_source() {
    let out = Lines::default();
    let rt = Arc::new(DryRunRuntime::new(None, Box::new(out.clone())).await);
    let h = start(rt);
    h.sources.send(SourceUpdate { source: SourceName::File, pods: Some(vec![pod("a"), pod("b")]), errors: vec![] }).await.unwrap();
    until("both pods started", || out.count("CRI StartContainer") == 2).await;
    let text = out.text();
    let a = text.find("pod=default/a-n container=c").unwrap();
    let b = text.find("pod=default/b-n container=c").unwrap();
    assert!(a < b, "serial dry runs go in name order:\n{text}");
    until("statuses published", || h.statuses.snapshot().len() == 2).await;

    h.sources.send(SourceUpdate { source: SourceName::File, pods: Some(vec![pod("b")]), errors: vec![] }).await.unwrap();
    until("a removed", || out.count("CRI RemovePodSandbox") == 1).await;
    assert!(out.text().lines().any(|l| l.starts_with("CRI StopContainer") && l.contains("pod=default/a-n")));
    until("a's status gone", || h.statuses.snapshot().len() == 1).await;
    assert_eq!(out.count("CRI RunPodSandbox"), 2, "b was left alone");
    drop(h.tasks);
}

#[tokio::test]
async fn orphans_go_only_after_every_source_reported() {
    let out = Lines::default();
    let rt = Arc::new(DryRunRuntime::new(None, Box::new(out.clone())).await);
    let first = start(rt.clone());
    first.sources.send(SourceUpdate { source: SourceName::File, pods: Some(vec![pod("old")]), errors: vec![] }).await.unwrap();
    until("old started", || out.count("CRI StartContainer") == 1).await;
    drop(first.tasks); // an agent that went away, leaving its pod

    let second = start(rt);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(out.count("CRI StopPodSandbox"), 0, "no source has reported: nothing may be removed");
    second.sources.send(SourceUpdate { source: SourceName::File, pods: Some(vec![]), errors: vec![] }).await.unwrap();
    until("the orphan removed", || out.count("CRI RemovePodSandbox") == 1).await;
    assert_eq!(out.count("CRI RemoveContainer"), 1);
}
