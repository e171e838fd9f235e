//! The relist loop (kubelet's PLEG): list the runtime's sandboxes and
//! containers and report which pods changed.
//!
//! It relists at once when the agent's own CRI calls changed something (the
//! instrumented runtime says so) and when containerd's event stream reports
//! an exit, an OOM kill or a removed container; while that stream is known
//! to work, the periodic relist is only a slow safety net (every minute, as
//! kubelet's Evented PLEG keeps one), so an idle node costs no CRI calls per
//! second; without it, every second as kubelet's generic PLEG.
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
/// The relist period while containerd's event stream works (well inside
/// the 3 minutes after which /healthz calls the relist stale).
pub const EVENTED_PERIOD: Duration = Duration::from_secs(60);
/// Changes in a burst (30 pods starting) are relisted at most this often.
const MIN_GAP: Duration = Duration::from_millis(100);
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
/// `changed`: something changed, relist; `live`: whether the event stream
/// works (the period is then [`EVENTED_PERIOD`]).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    rt: Arc<dyn Runtime>,
    period: Duration,
    mut exits: mpsc::Receiver<String>,
    changed: Arc<tokio::sync::Notify>,
    mut live: watch::Receiver<bool>,
    tx: mpsc::Sender<RelistEvent>,
    healthy: watch::Sender<Option<Instant>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut live_open = true;
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
        let wait = if !pending.is_empty() {
            EXIT_RECHECK
        } else if *live.borrow() {
            EVENTED_PERIOD
        } else {
            period
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            exit = exits.recv(), if exits_open => match exit {
                Some(id) => {
                    pending.insert(id, Instant::now());
                }
                None => exits_open = false,
            },
            _ = changed.notified() => {
                // A burst of changes is relisted in steps, not per call.
                let since = started.elapsed();
                if since < MIN_GAP {
                    tokio::time::sleep(MIN_GAP - since).await;
                }
            }
            r = live.changed(), if live_open => {
                if r.is_err() {
                    live_open = false;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
