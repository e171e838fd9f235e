//! The pod-resources API (v1) on `<root-dir>/pod-resources/kubelet.sock`,
//! root's alone as kubelet's: which devices each container of each pod
//! holds, and every device the node can hand out. There is no CPU or memory
//! `memory` is the memory manager's pinned memory with its NUMA nodes
//! (empty with the `None` policy); `cpu_ids` are the CPU manager's exclusive CPUs and
//! `dynamic_resources` the DRA claims prepared for the container, with the
//! drivers' devices and CDI IDs.

use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;

use super::Devices;
use super::proto::podresources::{self as pr, pod_resources_lister_server};

pub const SOCKET: &str = "kubelet.sock";

struct Service {
    devices: Devices,
    cpus: crate::cpus::CpuManager,
    memory: crate::memory::MemoryManager,
    dra: crate::dra::Dra,
}

fn topology(numa: &[i64]) -> Option<pr::TopologyInfo> {
    (!numa.is_empty()).then(|| pr::TopologyInfo { nodes: numa.iter().map(|id| pr::NumaNode { id: *id }).collect() })
}

impl Service {
    fn pod(&self, uid: &str, e: &super::PodEntry) -> pr::PodResources {
        let all = self.devices.devices();
        let exclusive = self.cpus.exclusive(uid);
        let pinned = self.memory.pinned(uid);
        let containers = e
            .containers
            .iter()
            .map(|c| {
                let devices = e
                    .devices
                    .iter()
                    .filter(|((name, _), _)| name == c)
                    .map(|((_, resource), a)| {
                        let mut numa: Vec<i64> = a.ids.iter().filter_map(|id| all.get(resource).and_then(|d| d.get(id))).flat_map(|d| d.numa.iter().copied()).collect();
                        numa.sort_unstable();
                        numa.dedup();
                        pr::ContainerDevices { resource_name: resource.clone(), device_ids: a.ids.clone(), topology: topology(&numa) }
                    })
                    .collect();
                let cpu_ids = exclusive.get(c).map(|s| s.iter().map(|c| i64::from(*c)).collect()).unwrap_or_default();
                let dynamic_resources = self
                    .dra
                    .container_claims(uid, c)
                    .into_iter()
                    .map(|claim| pr::DynamicResource {
                        claim_name: claim.name,
                        claim_namespace: claim.namespace,
                        claim_resources: claim
                            .drivers
                            .into_iter()
                            .flat_map(|(driver, devices)| {
                                devices.into_iter().map(move |d| pr::ClaimResource {
                                    cdi_devices: d.cdi_ids.into_iter().map(|name| pr::CdiDevice { name }).collect(),
                                    driver_name: driver.clone(),
                                    pool_name: d.pool,
                                    device_name: d.device,
                                })
                            })
                            .collect(),
                    })
                    .collect();
                let memory = pinned
                    .get(c)
                    .map(|(size, numa)| {
                        vec![pr::ContainerMemory { memory_type: "memory".into(), size: *size, topology: topology(&numa.iter().map(|n| i64::from(*n)).collect::<Vec<_>>()) }]
                    })
                    .unwrap_or_default();
                pr::ContainerResources { name: c.clone(), devices, cpu_ids, memory, dynamic_resources }
            })
            .collect();
        pr::PodResources { name: e.name.clone(), namespace: e.namespace.clone(), containers }
    }
}

#[tonic::async_trait]
impl pod_resources_lister_server::PodResourcesLister for Service {
    async fn list(&self, _: tonic::Request<pr::ListPodResourcesRequest>) -> Result<tonic::Response<pr::ListPodResourcesResponse>, tonic::Status> {
        let pod_resources = self.devices.pods().iter().filter(|(_, e)| !e.name.is_empty()).map(|(uid, e)| self.pod(uid, e)).collect();
        Ok(tonic::Response::new(pr::ListPodResourcesResponse { pod_resources }))
    }

    async fn get(&self, req: tonic::Request<pr::GetPodResourcesRequest>) -> Result<tonic::Response<pr::GetPodResourcesResponse>, tonic::Status> {
        let r = req.into_inner();
        let pods = self.devices.pods();
        let (uid, e) = pods
            .iter()
            .find(|(_, e)| e.name == r.pod_name && e.namespace == r.pod_namespace)
            .ok_or_else(|| tonic::Status::not_found(format!("pod {} in namespace {} not found", r.pod_name, r.pod_namespace)))?;
        Ok(tonic::Response::new(pr::GetPodResourcesResponse { pod_resources: Some(self.pod(uid, e)) }))
    }

    async fn get_allocatable_resources(
        &self,
        _: tonic::Request<pr::AllocatableResourcesRequest>,
    ) -> Result<tonic::Response<pr::AllocatableResourcesResponse>, tonic::Status> {
        let mut devices = Vec::new();
        for (resource, list) in self.devices.devices() {
            // One entry per device, with its own topology, as kubelet lists them.
            for (id, d) in list.iter().filter(|(_, d)| d.healthy) {
                devices.push(pr::ContainerDevices { resource_name: resource.clone(), device_ids: vec![id.clone()], topology: topology(&d.numa) });
            }
        }
        let cpu_ids = self.cpus.allocatable().into_iter().map(i64::from).collect();
        let memory = self
            .memory
            .allocatable()
            .into_iter()
            .map(|(n, size)| pr::ContainerMemory { memory_type: "memory".into(), size, topology: topology(&[i64::from(n)]) })
            .collect();
        Ok(tonic::Response::new(pr::AllocatableResourcesResponse { devices, cpu_ids, memory }))
    }
}

/// Serves the API on `socket` until the process ends.
pub async fn serve(devices: Devices, cpus: crate::cpus::CpuManager, memory: crate::memory::MemoryManager, dra: crate::dra::Dra, socket: std::path::PathBuf) {
    let listener = loop {
        match crate::server::bind_local(&socket) {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the pod-resources API; trying again");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    tracing::info!(socket = %socket.display(), "pod-resources API served");
    let result = tonic::transport::Server::builder()
        .add_service(pod_resources_lister_server::PodResourcesListerServer::new(Service { devices, cpus, memory, dra }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the pod-resources API stopped");
    }
}
