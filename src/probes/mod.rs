//! Probes and lifecycle hooks: the four handlers (exec through CRI ExecSync,
//! httpGet, tcpSocket, grpc), and the periodic probe loop with kubelet's
//! thresholds. Results go to the pod worker over a channel; this module
//! knows containers and handlers, not pods' lifecycles.

pub mod handler;
pub mod metrics;
pub mod worker;

pub use handler::{Outcome, Target};
pub use worker::{ProbeConfig, ProbeEvent, ProbeUpdate};

/// kubelet's three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}
