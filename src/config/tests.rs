use super::*;

#[test]
fn flags_override_the_file_and_zero_periods_are_refused() {
    let file = kubelet::KubeletConfig {
        cluster_domain: Some("file.local".into()),
        max_pods: Some(50),
        ..Default::default()
    };
    let o = Overrides { hostname_override: Some("Node-A".into()), max_pods: Some(20), ..Default::default() };
    let s = Settings::resolve(o, file.clone()).unwrap();
    assert_eq!(s.node_name, "node-a");
    assert_eq!(s.max_pods, 20, "the flag wins");
    assert_eq!(s.cluster_domain, "file.local", "the file fills what flags leave");
    assert_eq!(s.healthz, Some("127.0.0.1:10248".parse().unwrap()));
    let zero = Overrides { hostname_override: Some("n".into()), sync_frequency: Some(Duration::ZERO), ..Default::default() };
    assert_eq!(Settings::resolve(zero, file).unwrap_err().to_string(), "syncFrequency: must be greater than zero");
}

#[test]
fn pull_settings_default_as_kubelets() {
    let o = || Overrides { hostname_override: Some("n".into()), ..Default::default() };
    let parse = |y: &str| kubelet::KubeletConfig::parse(format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{y}").as_bytes(), "k.yaml");
    let s = Settings::resolve(o(), parse("").unwrap()).unwrap();
    assert_eq!(s.pulls, PullPolicy::default());
    let s = Settings::resolve(o(), parse("maxParallelImagePulls: 3\n").unwrap()).unwrap();
    assert!(!s.pulls.serialize, "asking for parallel pulls turns serial pulls off");
    let e = Settings::resolve(o(), parse("maxParallelImagePulls: 3\nserializeImagePulls: true\n").unwrap()).unwrap_err();
    assert!(e.to_string().starts_with("maxParallelImagePulls: 3 cannot be larger than 1"), "{e}");
    let s = Settings::resolve(o(), parse("imagePullCredentialsVerificationPolicy: AlwaysVerify\nregistryPullQPS: 0\n").unwrap()).unwrap();
    assert_eq!(s.pulls.verify, VerifyPolicy::AlwaysVerify);
    assert_eq!(s.pulls.qps, 0);
    assert!(parse("registryPullQPS: 1e-300\n").unwrap_err().to_string().starts_with("k.yaml: registryPullQPS: invalid type"));
    assert!(parse("imagePullCredentialsVerificationPolicy: Sometimes\n").unwrap_err().to_string().contains("Unsupported value"));
    let bad = Overrides { image_credential_provider_config: Some("/c".into()), ..o() };
    assert!(Settings::resolve(bad, parse("").unwrap()).unwrap_err().to_string().contains("--image-credential-provider-bin-dir"));
}

#[test]
fn api_and_event_rates_and_node_allocatable_settings() {
    let parse = |y: &str| kubelet::KubeletConfig::parse(format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{y}").as_bytes(), "k.yaml");
    let o = || Overrides { hostname_override: Some("n".into()), kubeconfig: Some("/k".into()), ..Default::default() };
    let cluster = |o: Overrides, y: &str| Settings::resolve(o, parse(y).unwrap()).unwrap().cluster.unwrap();
    let c = cluster(o(), "");
    assert_eq!((c.api_rate, c.event_rate), (Rate { qps: 50, burst: 100 }, Some(Rate { qps: 50, burst: 100 })), "kubelet's defaults");
    let c = cluster(o(), "kubeAPIQPS: 20\nkubeAPIBurst: 40\neventRecordQPS: 0\n");
    assert_eq!((c.api_rate, c.event_rate), (Rate { qps: 20, burst: 40 }, None), "eventRecordQPS 0: no limit");
    let c = cluster(Overrides { kube_api_qps: Some(0), event_qps: Some(3), event_burst: Some(6), ..o() }, "kubeAPIQPS: 20\n");
    assert_eq!((c.api_rate, c.event_rate), (Rate { qps: 5, burst: 100 }, Some(Rate { qps: 3, burst: 6 })), "the flag wins; a zero QPS is client-go's 5");
    assert!(parse("kubeAPIQPS: -1\n").unwrap_err().to_string().contains("kubeAPIQPS"));
    // Node Allocatable: the flags replace the file's settings, and an
    // enforcement without cgroupsPerQOS is refused as kubelet refuses it.
    let a = Overrides { allocatable: allocatable::AllocatableFields { kube_reserved: Some(allocatable::parse_pairs("memory=2Gi").unwrap()), ..Default::default() }, ..o() };
    let s = Settings::resolve(a, parse("kubeReserved: {memory: 1Gi, cpu: 100m}\n").unwrap()).unwrap();
    assert_eq!((s.allocatable.kube_reserved.memory_bytes, s.allocatable.kube_reserved.cpu_millis), (2 << 30, 0));
    let e = Settings::resolve(o(), parse("cgroupsPerQOS: false\n").unwrap()).unwrap_err().to_string();
    assert!(e.starts_with("enforceNodeAllocatable: is not supported unless cgroupsPerQOS"), "{e}");
    assert!(Settings::resolve(o(), parse("cgroupsPerQOS: false\nenforceNodeAllocatable: []\n").unwrap()).is_ok());
    assert!(parse("kubeReserved: {memory: lots}\n").unwrap_err().to_string().starts_with("k.yaml: kubeReserved.memory: Invalid value"));
}

#[test]
fn kubeadms_kubelet_config_means_what_it_means_to_kubelet() {
    // The kubelet-config ConfigMap of a kubeadm cluster (v1.34), as
    // `kubeadm join` writes it to /var/lib/kubelet/config.yaml: kubelet's
    // defaulting turns its zero durations and empty endpoint into the
    // defaults, so it must resolve exactly as the file without them.
    let kubeadm = include_str!("../../tests/kubeadm/kubelet-config.yaml");
    let o = || Overrides {
        hostname_override: Some("n".into()),
        kubeconfig: Some("/etc/kubernetes/kubelet.conf".into()),
        bootstrap_kubeconfig: Some("/etc/kubernetes/bootstrap-kubelet.conf".into()),
        ..Default::default()
    };
    let file = kubelet::KubeletConfig::parse(kubeadm.as_bytes(), "config.yaml").unwrap();
    assert!(file.ignored.is_empty(), "kubeadm's own fields all understood: {:?}", file.ignored);
    // The same file with every zero value (and what is empty without them) left out.
    fn prune(v: &mut serde_yaml::Value) -> bool {
        use serde_yaml::Value as Y;
        match v {
            Y::Mapping(m) => {
                m.retain(|_, v| !prune(v));
                m.is_empty()
            }
            Y::String(s) => s.is_empty() || s == "0s" || s == "0",
            Y::Number(n) => n.as_i64() == Some(0),
            _ => false,
        }
    }
    let mut doc: serde_yaml::Value = serde_yaml::from_str(kubeadm).unwrap();
    prune(&mut doc);
    let without_zeros = serde_yaml::to_string(&doc).unwrap();
    assert!(!without_zeros.contains("syncFrequency") && without_zeros.contains("staticPodPath"), "{without_zeros}");
    let plain = kubelet::KubeletConfig::parse(without_zeros.as_bytes(), "plain.yaml").unwrap();
    let (a, b) = (Settings::resolve(o(), file).unwrap(), Settings::resolve(o(), plain).unwrap());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert_eq!(a.sync_frequency, Duration::from_secs(60));
    assert_eq!(a.image_gc.min_age, Duration::from_secs(120));
    assert_eq!(a.runtime_endpoint, "unix:///run/containerd/containerd.sock");
    assert_eq!(a.healthz, Some("127.0.0.1:10248".parse().unwrap()));
    assert!(a.shutdown.is_none());
}

#[test]
fn node_ip_follows_kubelets_rules_one_address_or_a_dual_stack_pair() {
    let ok = |f: &str| super::node_ips(Some(f)).unwrap();
    let err = |f: &str| super::node_ips(Some(f)).unwrap_err().to_string();
    assert_eq!(ok("10.0.0.5"), ["10.0.0.5"]);
    assert_eq!(ok("fd00::5, 10.0.0.5"), ["fd00::5", "10.0.0.5"], "IPv6 primary: the order is kept");
    assert!(err("10.0.0.5,10.0.0.6").contains("must contain either a single IP or a dual-stack pair of IPs"));
    assert!(err("10.0.0.5,fd00::5,10.0.0.6").contains("must contain either a single IP or a dual-stack pair of IPs"));
    assert!(err("0.0.0.0,fd00::5").contains("cannot include '0.0.0.0' or '::'"));
    assert!(err("127.0.0.1").contains("loopback"));
    assert!(err("fe80::1").contains("link-local"));
    assert!(err("224.0.0.1").contains("multicast"));
    assert!(err("10.0.0.five").contains("--node-ip") && err("10.0.0.five").contains("\"10.0.0.five\" is not an IP address"));
    // `::` alone: the IPv6 default route's address, or a clear error.
    match super::default_node_ip_of(true) {
        Some(ip) => assert_eq!(ok("::"), [ip]),
        None => assert!(err("::").contains("no IPv6 default route")),
    }
    assert!(super::node_ips_not_local(&["192.0.2.250".to_string()]).contains(&"192.0.2.250".to_string()));
    assert!(super::node_ips_not_local(&["127.0.0.1".to_string()]).is_empty());
}
