//! Graceful node shutdown, as kubelet's shutdown manager on Linux: with
//! `shutdownGracePeriod` set, nodelet holds a systemd-logind *delay*
//! inhibitor lock over D-Bus, so a shutdown waits for it (up to logind's
//! `InhibitDelayMaxUSec`). On `PrepareForShutdown(true)` the node reports
//! NotReady ("node is shutting down"), regular pods are stopped within
//! `shutdownGracePeriod − shutdownGracePeriodCriticalPods`, then critical
//! ones (static pods, priority 2000000000 and up) within the rest, each
//! Failed with reason `Terminated` and kubelet's message; then the lock is
//! released and the shutdown goes on. `PrepareForShutdown(false)` (a
//! cancelled shutdown) takes the lock again and the node is Ready again.
//! The system bus is `DBUS_SYSTEM_BUS_ADDRESS` or the standard socket.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::eviction::Eviction;
use super::status::PodFailure;
use super::store::StatusStore;
use crate::config::ShutdownPeriods;

/// kubelet's status message for pods it stops for a shutdown.
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1 {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<zbus::zvariant::OwnedFd>;

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> zbus::Result<u64>;

    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;
}

pub struct Manager {
    pub periods: ShutdownPeriods,
    pub statuses: StatusStore,
    /// The pod manager ends pods through the eviction path.
    pub pods: mpsc::Sender<Eviction>,
    pub shutting_down: watch::Sender<bool>,
}

impl Manager {
    /// Runs for good; without logind it logs why and waits forever.
    pub async fn run(self) {
        if let Err(e) = self.serve().await {
            tracing::warn!(error = %e, "graceful node shutdown is off: cannot talk to systemd-logind");
        }
        std::future::pending::<()>().await;
    }

    async fn inhibit(proxy: &Login1Proxy<'_>) -> zbus::Result<zbus::zvariant::OwnedFd> {
        proxy.inhibit("shutdown", "nodelet", "nodelet stops the node's pods gracefully first", "delay").await
    }

    async fn serve(&self) -> zbus::Result<()> {
        let conn = zbus::Connection::system().await?;
        let proxy = Login1Proxy::new(&conn).await?;
        let mut signals = proxy.receive_prepare_for_shutdown().await?;
        if let Ok(max) = proxy.inhibit_delay_max_usec().await
            && Duration::from_micros(max) < self.periods.total
        {
            tracing::warn!(
                logind_max = ?Duration::from_micros(max),
                shutdown_grace_period = ?self.periods.total,
                "logind's InhibitDelayMaxSec is shorter than shutdownGracePeriod: the shutdown will not wait that long"
            );
        }
        let mut lock = Some(Self::inhibit(&proxy).await?);
        tracing::info!(period = ?self.periods.total, critical = ?self.periods.critical, "graceful node shutdown: holding a delay inhibitor lock");
        while let Some(signal) = signals.next().await {
            let start = signal.args()?.start;
            if start {
                tracing::info!("the node is shutting down: stopping its pods");
                self.shutting_down.send_replace(true);
                self.stop_pods().await;
                drop(lock.take());
                tracing::info!("pods stopped; the inhibitor lock is released");
            } else {
                tracing::info!("the shutdown was cancelled");
                self.shutting_down.send_replace(false);
                if lock.is_none() {
                    lock = Some(Self::inhibit(&proxy).await?);
                }
            }
        }
        Ok(())
    }

    /// Regular pods within their share of the period, then critical ones.
    async fn stop_pods(&self) {
        let regular_period = self.periods.total.saturating_sub(self.periods.critical);
        for (critical, period) in [(false, regular_period), (true, self.periods.critical)] {
            let started = Instant::now();
            let pods = self.statuses.snapshot();
            let group: Vec<String> = pods
                .iter()
                .filter(|(_, r)| super::is_critical(&r.pod) == critical && !super::is_terminal(&r.status))
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in &group {
                let own = pods.get(uid).and_then(|r| r.pod.spec.as_ref()?.termination_grace_period_seconds).unwrap_or(30);
                let grace = own.min(i64::try_from(period.as_secs()).unwrap_or(i64::MAX));
                let failure = PodFailure::disruption("Terminated", MESSAGE.into());
                let _ = self.pods.send(Eviction { uid: uid.clone(), failure, grace }).await;
            }
            tracing::info!(critical, pods = group.len(), period = ?period, "stopping pods for the shutdown");
            // Until they have stopped, or their share of the period is up.
            while started.elapsed() < period {
                let now = self.statuses.snapshot();
                // Failed is reported as soon as the pod is ended; done is
                // when nothing of it runs any more.
                let done = group.iter().all(|uid| {
                    now.get(uid).is_none_or(|r| {
                        super::is_terminal(&r.status)
                            && r.status.container_statuses.iter().flatten().all(|c| c.state.as_ref().is_none_or(|s| s.running.is_none()))
                    })
                });
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
