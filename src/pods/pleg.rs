//! The relist loop (kubelet's PLEG): every second, and at once when told of
//! a container exit by containerd's event stream, list the runtime's
//! sandboxes and containers and report which pods changed.
//!
//! containerd publishes a task exit before its CRI plugin has recorded it,
//! so after an exit the loop relists every few milliseconds until the CRI
//! view shows the container stopped (or a short limit passes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::runtime::Runtime;
use crate::runtime::labels::PodIdentity;
use crate::runtime::observe::{self, Fingerprint};

/// kubelet's relist period.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);
/// How soon to look again while an exited container still shows running.
const EXIT_RECHECK: Duration = Duration::from_millis(20);
/// How long to keep looking before leaving it to the regular relist.
const EXIT_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RelistEvent {
    /// Pods whose sandboxes or containers changed (appeared, changed state,
    /// or went away).
    pub changed: Vec<PodIdentity>,
    /// Every pod the runtime has, by UID.
    pub present: BTreeMap<String, PodIdentity>,
}

/// Runs until `tx` closes. `healthy` gets the time of each successful
/// relist (for /healthz).
pub async fn run(
    rt: Arc<dyn Runtime>,
    period: Duration,
    mut exits: mpsc::Receiver<String>,
    tx: mpsc::Sender<RelistEvent>,
    healthy: watch::Sender<Option<Instant>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut previous: Option<BTreeMap<String, Fingerprint>> = None;
    let mut failing = false;
    // Exited containers the CRI view has not caught up with, and since when.
    let mut pending: BTreeMap<String, Instant> = BTreeMap::new();
    let mut exits_open = true;
    let mut last_start: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let listed = observe::relist(rt.as_ref()).await;
        metrics.relisted(started.elapsed().as_secs_f64(), last_start.map(|l| started.duration_since(l).as_secs_f64()));
        last_start = Some(started);
        match listed {
            Ok(now) => {
                if failing {
                    tracing::info!("runtime relist works again");
                    failing = false;
                }
                let mut changed = Vec::new();
                let before = previous.clone().unwrap_or_default();
                for (uid, fp) in &now {
                    if before.get(uid) != Some(fp) {
                        changed.push(fp.identity.clone());
                    }
                }
                for (uid, fp) in &before {
                    if !now.contains_key(uid) {
                        changed.push(fp.identity.clone());
                    }
                }
                let first = previous.is_none();
                pending.retain(|id, since| since.elapsed() < EXIT_PATIENCE && now.values().any(|fp| fp.lists_running(id)));
                let present = now.iter().map(|(uid, fp)| (uid.clone(), fp.identity.clone())).collect();
                previous = Some(now);
                healthy.send_replace(Some(Instant::now()));
                if (first || !changed.is_empty()) && tx.send(RelistEvent { changed, present }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "runtime relist failed");
                    failing = true;
                }
            }
        }
        let wait = if pending.is_empty() { period } else { EXIT_RECHECK };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            exit = exits.recv(), if exits_open => match exit {
                Some(id) => {
                    pending.insert(id, Instant::now());
                }
                None => exits_open = false,
            },
            _ = tx.closed() => return,
        }
    }
}
