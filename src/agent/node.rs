//! The node role (cluster mode): the Node registered and its status, the
//! Lease, the bound-pod watch, mirror pods, the pod status writer, the
//! deletion handshake and certificate rotation (`cluster::start`), plugged
//! into what the pod sync role shares. It gives back the Node's resources
//! for admission.

use std::sync::Arc;

use super::pod_sync::{self, PodSync};
use super::runtime::RuntimeRole;
use crate::cluster::{self, Joined, node::NodeFacts};
use crate::config::{ClusterSettings, Settings};
use crate::metrics::Metrics;
use crate::pods::admission::NodeResources;
use crate::tasks::Tasks;

/// Starts the node role; returns what pods are admitted against.
pub fn start(s: &Settings, cs: &ClusterSettings, joined: Joined, rt: &RuntimeRole, pods: &mut PodSync, metrics: &Arc<Metrics>, tasks: &mut Tasks) -> NodeResources {
    pods.expect_api();
    let runtime_version = format!("{}://{}", rt.version.runtime_name, rt.version.runtime_version);
    let machine = pods.ctx.node.clone();
    let mut facts = NodeFacts::gather(&machine, cs, s.max_pods, &runtime_version);
    facts.port = i32::from(s.node_api.port);
    let admission = pod_sync::admission(&s.node_name, &facts, &machine, s.max_pods);
    let (Some(node_labels), Some(node_taints)) = (pods.node_labels.take(), pods.node_taints.take()) else {
        // Built once per agent: the senders are there the one time this runs.
        tracing::error!("the node role was started twice; the second is ignored");
        return admission;
    };
    node_labels.send_replace(facts.labels.clone());
    let parts = cluster::ClusterParts {
        settings: cs.clone(),
        facts,
        health: rt.health.clone(),
        statuses: pods.statuses.clone(),
        sources: pods.sources.clone(),
        terminated: pods.terminated.take(),
        node_labels,
        node_taints,
        metrics: metrics.clone(),
        images: pods.images.clone(),
        extended: pods.extended.clone(),
        pressure: pods.pressure.clone(),
        shutting_down: pods.shutting_down.clone(),
        root_dir: s.root_dir.clone(),
        in_use: pods.in_use.clone(),
    };
    cluster::start(tasks, joined, parts, s.dry_run);
    admission
}
