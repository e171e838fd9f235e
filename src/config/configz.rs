//! `/configz`: the effective configuration as KubeletConfiguration fields.

use super::*;

pub(super) fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

impl Settings {
    /// The effective configuration as KubeletConfiguration fields, for
    /// `/configz`. Nothing secret: the manifest URL's headers are left out.
    pub fn kubelet_configuration(&self) -> serde_json::Value {
        let na = &self.node_api;
        let mode = match na.authorization {
            node_api::AuthorizationMode::Webhook => "Webhook",
            node_api::AuthorizationMode::AlwaysAllow => "AlwaysAllow",
        };
        let mut v = serde_json::json!({
            "kind": "KubeletConfiguration",
            "apiVersion": kubelet::API_VERSION,
            "staticPodPath": self.static_pod_path,
            "staticPodURL": self.static_pod_url,
            "fileCheckFrequency": go_duration(self.file_check_frequency),
            "httpCheckFrequency": go_duration(self.http_check_frequency),
            "syncFrequency": go_duration(self.sync_frequency),
            "clusterDNS": self.cluster_dns,
            "clusterDomain": self.cluster_domain,
            "resolvConf": self.resolv_conf,
            "cgroupDriver": match self.cgroup_driver { CgroupDriver::Cgroupfs => "cgroupfs", CgroupDriver::Systemd => "systemd" },
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": self.cgroups_per_qos,
            "containerRuntimeEndpoint": self.runtime_endpoint,
            "runtimeRequestTimeout": go_duration(self.runtime_request_timeout),
            "podLogsDir": self.pod_logs_dir,
            "maxPods": self.max_pods,
            "oomScoreAdj": self.oom_score_adj,
            "address": na.address.to_string(),
            "port": na.port,
            "readOnlyPort": na.read_only_port,
            "serverTLSBootstrap": na.server_tls_bootstrap,
            "enableDebuggingHandlers": na.debugging_handlers,
            "enableSystemLogHandler": na.system_log_handler,
            "streamingConnectionIdleTimeout": go_duration(na.streaming_idle_timeout),
            "tlsCertFile": na.tls_cert_file,
            "tlsPrivateKeyFile": na.tls_private_key_file,
            "authentication": {
                "x509": {"clientCAFile": na.client_ca_file},
                "webhook": {"enabled": na.webhook_authentication, "cacheTTL": go_duration(na.authentication_cache_ttl)},
                "anonymous": {"enabled": na.anonymous},
            },
            "authorization": {"mode": mode, "webhook": {"cacheAuthorizedTTL": go_duration(na.authorized_ttl), "cacheUnauthorizedTTL": go_duration(na.unauthorized_ttl)}},
            "containerLogMaxSize": self.log_rotation.max_size.to_string(),
            "containerLogMaxFiles": self.log_rotation.max_files,
            "containerLogMonitorInterval": go_duration(self.log_rotation.interval),
            "imageGCHighThresholdPercent": self.image_gc.high_percent,
            "imageGCLowThresholdPercent": self.image_gc.low_percent,
            "imageMinimumGCAge": go_duration(self.image_gc.min_age),
            "imageMaximumGCAge": go_duration(self.image_gc.max_age.unwrap_or_default()),
            "nodeStatusMaxImages": self.image_gc.status_max_images.map_or(-1, |n| n as i64),
            "nodeStatusUpdateFrequency": self.cluster.as_ref().map(|c| go_duration(c.status_update)),
            "nodeStatusReportFrequency": self.cluster.as_ref().map(|c| go_duration(c.status_report)),
            "nodeLeaseDurationSeconds": self.cluster.as_ref().map(|c| c.lease_duration_seconds),
            "rotateCertificates": self.cluster.as_ref().map(|c| c.rotate_certificates),
        });
        if let Some(m) = v.as_object_mut() {
            m.insert("seccompDefault".into(), self.seccomp_default.into());
            let min = match self.node_api.tls_min_version {
                node_api::TlsMinVersion::Tls12 => "VersionTLS12",
                node_api::TlsMinVersion::Tls13 => "VersionTLS13",
            };
            m.insert("tlsMinVersion".into(), min.into());
            m.insert("tlsCipherSuites".into(), serde_json::json!(self.node_api.tls_cipher_suites));
            m.insert("failSwapOn".into(), self.fail_swap_on.into());
            m.insert("memorySwap".into(), serde_json::json!({"swapBehavior": self.swap_behavior.as_str()}));
            m.insert("serializeImagePulls".into(), self.pulls.serialize.into());
            m.insert("maxParallelImagePulls".into(), serde_json::json!(self.pulls.max_parallel));
            m.insert("registryPullQPS".into(), serde_json::json!(self.pulls.qps));
            m.insert("registryBurst".into(), self.pulls.burst.into());
            m.insert("imagePullCredentialsVerificationPolicy".into(), format!("{:?}", self.pulls.verify).into());
            if let Some(c) = &self.cluster {
                m.insert("kubeAPIQPS".into(), c.api_rate.qps.into());
                m.insert("kubeAPIBurst".into(), c.api_rate.burst.into());
                m.insert("eventRecordQPS".into(), c.event_rate.map_or(0, |r| r.qps).into());
                m.insert("eventBurst".into(), c.event_rate.map_or(0, |r| r.burst).into());
            }
            let a = &self.allocatable;
            let reserved = |r: &allocatable::Reservation| {
                let mut out = serde_json::Map::new();
                for (k, v, text) in [
                    ("cpu", r.cpu_millis, format!("{}m", r.cpu_millis)),
                    ("memory", r.memory_bytes, r.memory_bytes.to_string()),
                    ("ephemeral-storage", r.ephemeral_storage_bytes, r.ephemeral_storage_bytes.to_string()),
                    ("pid", r.pids, r.pids.to_string()),
                ] {
                    if v > 0 {
                        out.insert(k.into(), text.into());
                    }
                }
                serde_json::Value::Object(out)
            };
            m.insert("kubeReserved".into(), reserved(&a.kube_reserved));
            m.insert("systemReserved".into(), reserved(&a.system_reserved));
            let enforce: Vec<&str> = a
                .enforce
                .iter()
                .map(|e| match e {
                    allocatable::Enforce::Pods => "pods",
                    allocatable::Enforce::KubeReserved => "kube-reserved",
                    allocatable::Enforce::SystemReserved => "system-reserved",
                    allocatable::Enforce::KubeReservedCompressible => "kube-reserved-compressible",
                    allocatable::Enforce::SystemReservedCompressible => "system-reserved-compressible",
                })
                .collect();
            m.insert("enforceNodeAllocatable".into(), serde_json::json!(enforce));
            m.insert("kubeReservedCgroup".into(), serde_json::json!(a.kube_reserved_cgroup));
            m.insert("systemReservedCgroup".into(), serde_json::json!(a.system_reserved_cgroup));
            m.insert("podPidsLimit".into(), a.pod_pids_limit.unwrap_or(-1).into());
            m.insert("featureGates".into(), serde_json::json!(self.feature_gates.as_map()));
        }
        v
    }
}
