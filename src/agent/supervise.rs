//! How the agent runs once built: systemd told it is ready, its watchdog
//! fed while every watched loop makes progress, and the wait for shutdown,
//! a task's exit, or (a one-shot dry run) the plan.

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::AgentError;
use crate::config::Settings;
use crate::pods::store::StatusStore;
use crate::tasks::Tasks;
use crate::watchdog::{self, Beat, Watched};

/// Tells systemd the agent is ready and, under its watchdog, pings it while
/// every loop in `watched` (and the runtime relist) makes progress.
pub fn notify_and_watch(s: &Settings, relisted: &watch::Receiver<Option<Instant>>, statuses: &StatusStore, mut watched: Vec<Watched>, tasks: &mut Tasks) {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
    if s.dry_run || !watchdog::supervised() {
        return;
    }
    // PLEG's health as kubelet judges it: a relist within 3 minutes.
    let relist_beat = Beat::default();
    watched.push(Watched { name: "runtime relist", beat: relist_beat.clone(), allowance: Duration::from_secs(180) });
    let mut relisted = relisted.clone();
    tasks.spawn("relist heartbeat", async move {
        while relisted.changed().await.is_ok() {
            relist_beat.beat();
        }
    });
    let interval = watchdog::interval();
    if let Some(i) = interval {
        tracing::info!(interval = ?i, loops = watched.len(), "systemd watchdog on: pinging while every watched loop makes progress");
    }
    let pods = statuses.clone();
    tasks.spawn("watchdog", watchdog::run(interval, watched, move || {
        let n = pods.snapshot().len();
        format!("running {n} pod{}", if n == 1 { "" } else { "s" })
    }));
}

/// Runs until `shutdown` or until a task ends (a fault: the service
/// manager starts nodelet again). Pods keep running either way.
pub async fn until_shutdown(mut tasks: Tasks, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let fault = tokio::select! {
        _ = shutdown => None,
        why = tasks.first_exit() => Some(why),
    };
    if let Some(why) = &fault {
        tracing::error!("{why}; exiting so the service manager starts nodelet again (pods keep running)");
    } else {
        tracing::info!("shutting down; pods keep running");
    }
    tasks.shutdown().await;
    match fault {
        Some(why) => Err(AgentError::Fault(why)),
        None => Ok(()),
    }
}

/// A dry run without --watch: waits until every source has reported and
/// every pod has been planned (and the proxy's rules printed), then stops.
/// The sources' errors make it fail, so it can check manifests in CI.
pub async fn one_shot_dry_run(
    tasks: Tasks,
    planned: oneshot::Receiver<Vec<String>>,
    proxy_synced: Option<oneshot::Receiver<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut tasks = tasks;
    let outcome = async {
        let problems = planned.await.unwrap_or_default();
        if let Some(rx) = proxy_synced {
            let _ = rx.await;
        }
        problems
    };
    let result = tokio::select! {
        problems = outcome => if problems.is_empty() { Ok(()) } else { Err(AgentError::Invalid(problems)) },
        _ = shutdown => Ok(()),
        why = tasks.first_exit() => Err(AgentError::Fault(why)),
    };
    tasks.shutdown().await;
    result
}
