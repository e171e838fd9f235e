//! The relist loop (kubelet's PLEG): every second, and at once when poked
//! (a containerd task-exit event, or a worker that just acted), list the
//! runtime's sandboxes and containers and report which pods changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::runtime::Runtime;
use crate::runtime::labels::PodIdentity;
use crate::runtime::observe::{self, Fingerprint};

/// kubelet's relist period.
pub const RELIST_PERIOD: Duration = Duration::from_secs(1);

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
    poke: Arc<Notify>,
    tx: mpsc::Sender<RelistEvent>,
    healthy: watch::Sender<Option<Instant>>,
) {
    let mut previous: Option<BTreeMap<String, Fingerprint>> = None;
    let mut failing = false;
    loop {
        match observe::relist(rt.as_ref()).await {
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
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = poke.notified() => {}
            _ = tx.closed() => return,
        }
    }
}
