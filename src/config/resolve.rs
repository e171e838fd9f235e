//! Resolving the configuration once at start: flags over the
//! KubeletConfiguration file over kubelet's defaults, each value validated
//! with the field or flag named.

use super::*;

impl Settings {
    /// Flags over `file` over kubelet's defaults.
    pub fn resolve(o: Overrides, file: kubelet::KubeletConfig) -> Result<Self, ConfigError> {
        let node_name = o.hostname_override.clone().unwrap_or_else(default_node_name).trim().to_lowercase();
        if node_name.is_empty() {
            return Err(flag_err("--hostname-override", "the node name is empty"));
        }
        let cgroup_driver = match o.cgroup_driver.clone().or(file.cgroup_driver.clone()).as_deref() {
            None | Some("cgroupfs") => CgroupDriver::Cgroupfs,
            Some("systemd") => CgroupDriver::Systemd,
            Some(other) => return Err(flag_err("--cgroup-driver", format!("unsupported value {other:?}: use cgroupfs or systemd"))),
        };
        let port = o.healthz_port.or(file.healthz_port).unwrap_or(10248);
        let bind = o.healthz_bind_address.clone().or(file.healthz_bind_address.clone()).unwrap_or_else(|| "127.0.0.1".into());
        let healthz = if port == 0 {
            None
        } else {
            let ip: IpAddr = bind.parse().map_err(|_| flag_err("--healthz-bind-address", format!("{bind:?} is not an IP address")))?;
            Some(SocketAddr::new(ip, port))
        };
        let mut headers = Vec::new();
        for (k, vs) in &file.static_pod_url_header {
            for v in vs {
                headers.push((k.clone(), v.clone()));
            }
        }
        for h in &o.manifest_url_header {
            let (k, v) = h.split_once(':').ok_or_else(|| flag_err("--manifest-url-header", format!("{h:?} is not 'key:value'")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let node_ips = super::node_ips(o.node_ip.as_deref())?;
        let max = o.crash_loop_backoff_max.or(file.max_container_restart_period).unwrap_or(Duration::from_secs(300));
        let initial = o.crash_loop_backoff_initial.unwrap_or(Duration::from_secs(10)).min(max);
        if initial.is_zero() {
            return Err(flag_err("--crash-loop-backoff-initial", "must be greater than zero"));
        }
        if let Err(e) = crate::sysctls::Allowlist::new(&o.allowed_unsafe_sysctls) {
            return Err(flag_err("--allowed-unsafe-sysctls", &e));
        }
        let positive = |name: &str, d: Option<Duration>, default: u64| -> Result<Duration, ConfigError> {
            let d = d.unwrap_or(Duration::from_secs(default));
            if d.is_zero() {
                return Err(flag_err(name, "must be greater than zero"));
            }
            Ok(d)
        };
        let file_check_frequency = positive("fileCheckFrequency", o.file_check_frequency.or(file.file_check_frequency), 20)?;
        let http_check_frequency = positive("httpCheckFrequency", o.http_check_frequency.or(file.http_check_frequency), 20)?;
        let sync_frequency = positive("syncFrequency", o.sync_frequency.or(file.sync_frequency), 60)?;
        let runtime_request_timeout =
            positive("runtimeRequestTimeout", o.runtime_request_timeout.or(file.runtime_request_timeout), 120)?;
        let root_dir: PathBuf = o.root_dir.clone().unwrap_or_else(|| "/var/lib/kubelet".into());
        let cluster = match (&o.kubeconfig, &o.bootstrap_kubeconfig) {
            (None, None) => None,
            (None, Some(_)) => return Err(flag_err("--bootstrap-kubeconfig", "needs --kubeconfig: the path to write the node's kubeconfig to")),
            (Some(kc), boot) => {
                let mut taints = file.register_with_taints.clone().unwrap_or_default();
                for t in &o.register_with_taints {
                    taints.push(parse_taint(t)?);
                }
                let external_cloud = match o.cloud_provider.as_deref() {
                    None | Some("") => None,
                    Some("external") => Some(super::ExternalCloud { provided_node_ip: o.node_ip.clone() }),
                    Some(other) => {
                        return Err(flag_err(
                            "--cloud-provider",
                            format!("Unsupported value: {other:?}: kubelet has no in-tree cloud providers since v1.31; use \"external\" with the cloud's controller manager"),
                        ));
                    }
                };
                Some(ClusterSettings {
                    external_cloud,
                    kubeconfig: kc.clone(),
                    bootstrap_kubeconfig: boot.clone(),
                    cert_dir: o.cert_dir.clone().unwrap_or_else(|| root_dir.join("pki")),
                    node_labels: parse_labels(o.node_labels.as_deref().unwrap_or(""))?,
                    register_with_taints: taints,
                    status_update: positive("nodeStatusUpdateFrequency", o.node_status_update_frequency.or(file.node_status_update_frequency), 10)?,
                    status_report: positive("nodeStatusReportFrequency", file.node_status_report_frequency, 300)?,
                    lease_duration_seconds: file.node_lease_duration_seconds.unwrap_or(40),
                    rotate_certificates: o.rotate_certificates.or(file.rotate_certificates).unwrap_or(true),
                    // client-go's: a zero QPS or burst is its default (5, 10).
                    api_rate: Rate {
                        qps: match o.kube_api_qps.or(file.kube_api_qps).unwrap_or(50) {
                            0 => 5,
                            n => n,
                        },
                        burst: match o.kube_api_burst.or(file.kube_api_burst).unwrap_or(100) {
                            0 => 10,
                            n => n,
                        },
                    },
                    // kubelet's: zero QPS is no limit.
                    event_rate: match o.event_qps.or(file.event_record_qps).unwrap_or(50) {
                        0 => None,
                        qps => Some(Rate { qps, burst: o.event_burst.or(file.event_burst).unwrap_or(100).max(1) }),
                    },
                })
            }
        };
        let mut gates = file.feature_gates.clone().unwrap_or_default();
        gates.extend(o.feature_gates.clone());
        let feature_gates = features::FeatureGates::resolve(&gates, "--feature-gates", "featureGates")?;
        let mut node_api = node_api::NodeApiSettings::resolve(&o.node_api, &file)?;
        node_api.fine_grained_authz = feature_gates.enabled("KubeletFineGrainedAuthz");
        let log_rotation = LogRotation {
            max_size: file.container_log_max_size.unwrap_or(10 << 20),
            max_files: file.container_log_max_files.unwrap_or(5),
            interval: file.container_log_monitor_interval.unwrap_or(Duration::from_secs(10)),
        };
        let image_gc = ImageGcPolicy {
            high_percent: o.image_gc_high_threshold.or(file.image_gc_high_threshold_percent).unwrap_or(85),
            low_percent: o.image_gc_low_threshold.or(file.image_gc_low_threshold_percent).unwrap_or(80),
            min_age: o.minimum_image_ttl_duration.or(file.image_minimum_gc_age).unwrap_or(Duration::from_secs(120)),
            max_age: file.image_maximum_gc_age.filter(|d| !d.is_zero()),
            period: o.image_gc_period.unwrap_or(Duration::from_secs(300)),
            status_max_images: match file.node_status_max_images.unwrap_or(50) {
                -1 => None,
                n => Some(usize::try_from(n).unwrap_or(0)),
            },
        };
        if image_gc.low_percent > image_gc.high_percent || image_gc.high_percent > 100 {
            return Err(flag_err(
                "imageGCLowThresholdPercent",
                format!("{} must be at most imageGCHighThresholdPercent ({}), both at most 100", image_gc.low_percent, image_gc.high_percent),
            ));
        }
        // kubelet's defaulting: serial unless maxParallelImagePulls is 2 or more.
        let parallel_asked = file.max_parallel_image_pulls.is_some_and(|n| n >= 2);
        let pulls = PullPolicy {
            serialize: file.serialize_image_pulls.unwrap_or(!parallel_asked),
            max_parallel: file.max_parallel_image_pulls,
            qps: file.registry_pull_qps.unwrap_or(5),
            burst: file.registry_burst.unwrap_or(10),
            verify: file.image_pull_credentials_verify_policy.unwrap_or_default(),
            allowlist: file.preloaded_images_verification_allowlist.clone().unwrap_or_default(),
        };
        if pulls.serialize && parallel_asked {
            return Err(flag_err(
                "maxParallelImagePulls",
                format!("{} cannot be larger than 1 unless serializeImagePulls is false", pulls.max_parallel.unwrap_or(0)),
            ));
        }
        let credential_providers = match (o.image_credential_provider_config.clone(), o.image_credential_provider_bin_dir.clone()) {
            (Some(c), Some(b)) => Some((c, b)),
            (None, None) => None,
            (Some(_), None) => return Err(flag_err("--image-credential-provider-bin-dir", "required with --image-credential-provider-config")),
            (None, Some(_)) => return Err(flag_err("--image-credential-provider-config", "required with --image-credential-provider-bin-dir")),
        };
        let cluster_dns = if o.cluster_dns.is_empty() { file.cluster_dns.clone().unwrap_or_default() } else { o.cluster_dns.clone() };
        for ip in &cluster_dns {
            ip.parse::<IpAddr>().map_err(|_| flag_err("clusterDNS", format!("{ip:?} is not an IP address")))?;
        }
        let cgroups_per_qos = o.cgroups_per_qos.or(file.cgroups_per_qos).unwrap_or(true);
        let allocatable = allocatable::AllocatableConfig::resolve(&file.allocatable.overlay(&o.allocatable), "the command line")?;
        if !cgroups_per_qos && !allocatable.enforce.is_empty() {
            return Err(flag_err(
                "enforceNodeAllocatable",
                "is not supported unless cgroupsPerQOS (--cgroups-per-qos) is on; set it to [] (or --enforce-node-allocatable=none)",
            ));
        }
        Ok(Settings {
            node_name,
            dry_run: o.dry_run,
            dry_run_watch: o.dry_run && o.dry_run_watch,
            runtime_endpoint: o
                .container_runtime_endpoint
                .or(file.container_runtime_endpoint)
                .unwrap_or_else(|| "unix:///run/containerd/containerd.sock".into()),
            runtime_request_timeout,
            root_dir,
            pod_logs_dir: file.pod_logs_dir.unwrap_or_else(|| "/var/log/pods".into()),
            container_logs_dir: o.container_logs_dir.unwrap_or_else(|| "/var/log/containers".into()),
            static_pod_path: o.pod_manifest_path.or(file.static_pod_path).filter(|p| !p.as_os_str().is_empty()),
            static_pod_url: o.manifest_url.or(file.static_pod_url).filter(|u| !u.is_empty()),
            static_pod_url_headers: headers,
            file_check_frequency,
            http_check_frequency,
            sync_frequency,
            cluster_dns,
            cluster_domain: o.cluster_domain.or(file.cluster_domain).unwrap_or_default(),
            resolv_conf: o.resolv_conf.or(file.resolv_conf).unwrap_or_else(|| "/etc/resolv.conf".into()),
            cgroup_driver,
            cgroup_root: o.cgroup_root.or(file.cgroup_root).unwrap_or_else(|| "/".into()),
            cgroups_per_qos,
            healthz,
            max_pods: o.max_pods.or(file.max_pods).unwrap_or(110),
            cpu_manager: file.cpu_manager_static.then(|| crate::cpus::StaticConfig {
                reserved: allocatable.reserved_cpus.iter().copied().collect(),
                // kubelet: the cpu reservations rounded up to whole CPUs.
                reserved_count: u32::try_from((allocatable.kube_reserved.cpu_millis.saturating_add(allocatable.system_reserved.cpu_millis)).max(0).unsigned_abs().div_ceil(1000)).unwrap_or(u32::MAX),
                full_pcpus_only: file.cpu_full_pcpus_only,
                reconcile_period: file.cpu_manager_reconcile_period.unwrap_or(std::time::Duration::from_secs(10)),
            }),
            topology_manager: file.topology_manager,
            memory_manager: file.memory_manager_static.then(|| crate::memory::StaticConfig { reserved: file.reserved_memory.clone() }),
            allowed_unsafe_sysctls: if o.allowed_unsafe_sysctls.is_empty() { file.allowed_unsafe_sysctls.clone().unwrap_or_default() } else { o.allowed_unsafe_sysctls.clone() },
            oom_score_adj: o.oom_score_adj.or(file.oom_score_adj).unwrap_or(-999),
            seccomp_default: o.seccomp_default.or(file.seccomp_default).unwrap_or(false),
            fail_swap_on: o.fail_swap_on.or(file.fail_swap_on).unwrap_or(true),
            pod_infra_container_image: o.pod_infra_container_image.filter(|i| !i.is_empty()),
            swap_behavior: file.swap_behavior.unwrap_or_default(),
            node_ips,
            backoff: BackoffConfig { initial, max, ..BackoffConfig::default() },
            cluster,
            log_rotation,
            image_gc,
            pulls,
            credential_providers,
            eviction: file.eviction.clone(),
            allocatable,
            feature_gates,
            container_gc: ContainerGcPolicy {
                min_age: o.minimum_container_ttl_duration.unwrap_or(Duration::ZERO),
                max_per_pod_container: o.maximum_dead_containers_per_container.unwrap_or(1),
                max_containers: o.maximum_dead_containers.unwrap_or(-1),
            },
            shutdown: file.shutdown_grace_period.filter(|d| !d.is_zero()).map(|total| ShutdownPeriods {
                total,
                critical: file.shutdown_grace_period_critical_pods.unwrap_or_default().min(total),
            }),
            node_api,
        })
    }
}
