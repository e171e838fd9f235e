//! The node heartbeat: the Lease kube-node-lease/<node>, owned by the Node,
//! nodeLeaseDurationSeconds long (40 s), renewed every quarter of that
//! (10 s), as kubelet does. Failures are retried
//! with a growing delay (200 ms up to 7 s), as kubelet's lease controller
//! does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::{is_conflict, is_not_found};

pub const NAMESPACE: &str = "kube-node-lease";

pub struct LeaseLoop {
    pub client: kube::Client,
    pub node: String,
    pub node_uid: String,
    pub renew_every: Duration,
    pub duration_seconds: i32,
}

impl LeaseLoop {
    fn fresh(&self) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(self.node.clone());
        lease.metadata.namespace = Some(NAMESPACE.into());
        lease.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: self.node_uid.clone(),
            ..Default::default()
        }]);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.node.clone()),
            lease_duration_seconds: Some(self.duration_seconds),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        });
        lease
    }

    /// One renewal: update the Lease last written (reading it first when
    /// there is none, creating it if missing), as kubelet's lease
    /// controller does: one request per renewal when all is well.
    async fn renew(&self, leases: &Api<Lease>, last: &mut Option<Lease>) -> Result<(), kube::Error> {
        let mut lease = match last.take() {
            Some(l) => l,
            None => match leases.get(&self.node).await {
                Ok(l) => l,
                Err(e) if is_not_found(&e) => {
                    return match leases.create(&PostParams::default(), &self.fresh()).await {
                        Ok(l) => {
                            *last = Some(l);
                            Ok(())
                        }
                        Err(e) if is_conflict(&e) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
                Err(e) => return Err(e),
            },
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.node.clone());
        spec.lease_duration_seconds = Some(self.duration_seconds);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if lease.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()) {
            lease.metadata.owner_references = self.fresh().metadata.owner_references;
        }
        *last = Some(leases.replace(&self.node, &PostParams::default(), &lease).await?);
        Ok(())
    }

    pub async fn run(self) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NAMESPACE);
        let mut backoff = Duration::from_millis(200);
        let mut last = None;
        let mut outage = crate::kubeapi::Outage::default();
        loop {
            // A renewal may not hang on a dead connection past the next one.
            let attempt = tokio::time::timeout(self.renew_every, self.renew(&leases, &mut last)).await;
            match attempt {
                Ok(Ok(())) => {
                    outage.works("renewing the node lease");
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(self.renew_every).await;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {}s", self.renew_every.as_secs()),
                    };
                    last = None;
                    outage.failed("renewing the node lease", &error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(7));
                }
            }
        }
    }
}
