//! Entry points for fuzzing: each takes arbitrary bytes and runs them
//! through one of nodelet's input paths the way the agent does, returning
//! nothing. They must never panic, hang or allocate far beyond their input.
//! `fuzz/` (cargo-fuzz, nightly) drives them with libFuzzer; the test suite
//! runs them over a seed corpus and seeded mutations (tests/fuzz_smoke.rs).

use std::collections::BTreeMap;

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The fuzz targets by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("static_pod", static_pod),
    ("kubelet_config", kubelet_config),
    ("proxy_config", proxy_config),
    ("proxy_rules", proxy_rules),
    ("quantity_duration", quantity_duration),
    ("image_archive", image_archive),
    ("cri_log", cri_log),
    ("node_api_paths", node_api_paths),
    ("registry_credentials", registry_credentials),
];

/// A static pod file: decode, default, validate, admit, and compute its
/// cgroup limits and CRI sandbox and container configs.
pub fn static_pod(data: &[u8]) {
    use crate::pods::{ContainerKind, NodeContext, admission, cgroups, container, manifest, sandbox};
    let origin = manifest::StaticOrigin::File("/fuzz.yaml".into());
    let Ok((pod, _)) = manifest::load_static(data, "fuzz-node", &origin) else { return };
    let node = NodeContext::for_tests("fuzz-node");
    let resources = admission::NodeResources {
        name: "fuzz-node".into(),
        labels: BTreeMap::new(),
        taints: vec![k8s_openapi::api::core::v1::Taint { key: "k".into(), effect: "NoExecute".into(), value: Some("v".into()), ..Default::default() }],
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 100 << 30,
        hugepages: BTreeMap::new(),
        extended: BTreeMap::from([("example.com/dev".to_string(), 2)]),
        max_pods: 110,
    };
    let _ = admission::admit(&pod, &[&pod], &resources);
    let _ = cgroups::pod_limits(&pod);
    let (sb, _) = sandbox::sandbox_config(&pod, 0, &node);
    let _ = sb;
    for (c, kind) in crate::pods::plan::containers(pod.spec.as_ref().expect("validated pods have a spec")) {
        let _ = container::container_config(&container::ContainerRequest {
            pod: &pod,
            container: c,
            kind,
            attempt: 0,
            image_ref: "sha256:fuzz",
            pod_ips: &["10.0.0.2".to_string()],
            node: &node,
            env_sources: &Default::default(),
            volumes: &Default::default(),
            etc_hosts: None,
            termination_log: None,
            target_id: None,
            dry_run: true,
        });
        let _ = kind == ContainerKind::App;
    }
}

/// A KubeletConfiguration file.
pub fn kubelet_config(data: &[u8]) {
    let _ = crate::config::kubelet::KubeletConfig::parse(data, "fuzz.yaml");
}

/// A KubeProxyConfiguration file.
pub fn proxy_config(data: &[u8]) {
    let _ = crate::config::proxy::ProxyConfig::parse(data, "fuzz.yaml");
}

/// Services and EndpointSlices (a YAML or JSON list of either) through the
/// proxy model and both renderers.
pub fn proxy_rules(data: &[u8]) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let Ok(doc) = crate::decode::document(data) else { return };
    let items = match doc {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for item in items {
        if item.get("endpoints").is_some() || item.get("addressType").is_some() {
            if let Ok(s) = serde_json::from_value::<EndpointSlice>(item) {
                slices.push(s);
            }
        } else if let Ok(s) = serde_json::from_value::<Service>(item) {
            services.push(s);
        }
    }
    let mut errors = Vec::new();
    let state = crate::proxy::model::build(&services, &slices, "fuzz-node", &mut errors);
    let ctx = crate::proxy::Context::default();
    let ipt = crate::proxy::iptables::render(&state, &ctx);
    let _ = crate::proxy::iptables::restore_input(None, &ipt, &BTreeMap::new());
    let nft = crate::proxy::nftables::render(&state, &ctx);
    let _ = crate::proxy::nftables::transaction(None, &nft, &Default::default(), &Default::default());
    let _ = crate::proxy::nftables::full_batch_size(&state, &ctx);
}

/// Quantities and Go durations, and the time and resource arithmetic on
/// what they give.
pub fn quantity_duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(text.to_string());
    if let Ok(m) = crate::resources::milli(&q) {
        let a = crate::resources::Amount::new(m);
        let _ = crate::resources::cpu_shares(a);
        let _ = crate::resources::cpu_quota(a);
        let _ = [a, a].into_iter().sum::<crate::resources::Amount>();
    }
    let _ = crate::resources::value(&q);
    if let Ok(d) = crate::config::duration::parse_go_duration(text) {
        let _ = crate::clock::grpc_timeout(d, d);
        let _ = crate::clock::deadline(std::time::Instant::now(), d);
    }
    if let Ok(n) = text.trim().parse::<i64>() {
        let _ = crate::clock::secs(n);
    }
}

/// An image archive (`nodelet images import`), read up to what it would
/// upload.
pub fn image_archive(data: &[u8]) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("nodelet-fuzz-{}-{n}.tar", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::runtime::containerd::import::read_layout(&path);
    }
    let _ = std::fs::remove_file(&path);
}

/// CRI log lines through the container-log reader with every option.
pub fn cri_log(data: &[u8]) {
    use crate::server::logs::{Joiner, LogOptions};
    for q in ["", "timestamps=true", "tailLines=2&limitBytes=10", "sinceTime=2024-01-01T00:00:00Z"] {
        let Ok(o) = LogOptions::from_query(q) else { continue };
        let mut j = Joiner::new(&o);
        let half = data.len() / 2;
        let _ = j.feed(&data[..half]);
        let _ = j.feed(&data[half..]);
    }
    for line in data.split(|b| *b == b'\n') {
        let _ = crate::runtime::cri_log::parse_line(line);
    }
}

/// The node API's request parsing: query strings, paths and the attributes
/// authorization asks about, /logs paths, and /proc stat lines.
pub fn node_api_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::server::logs::LogOptions::from_query(&text);
    let _ = crate::server::logs::form_pairs(&text);
    let path = format!("/{text}");
    for m in [http::Method::GET, http::Method::POST] {
        let _ = crate::server::auth::attributes(&m, &path);
    }
    let _ = crate::server::node_logs::resolve(std::path::Path::new("/nonexistent-fuzz-root"), &text);
    let _ = crate::server::exec_reaper::parse_stat(&text);
}

/// What a namespace user or a plugin hands nodelet about registries: pull
/// secrets' Docker configs (both formats) looked up for an image, image
/// names, a CredentialProviderConfig, and a pull record file.
pub fn registry_credentials(data: &[u8]) {
    use crate::credentials::{self, Format, Keyring, Origin};
    use crate::reference;
    let origin = Origin::Secret { namespace: "ns".into(), name: "s".into() };
    let text = String::from_utf8_lossy(data);
    for format in [Format::ConfigJson, Format::DockerCfg] {
        if let Ok(pairs) = credentials::parse_docker_config(data, format, "fuzz", &origin) {
            let mut ring = Keyring::default();
            for (k, c) in pairs.into_iter().take(64) {
                let _ = c.hash();
                ring.add(&k, c);
            }
            for line in text.lines().take(8) {
                if let Ok(r) = reference::parse(line) {
                    let _ = ring.lookup(&r.repository());
                    let _ = r.normalized();
                }
            }
        }
    }
    for line in text.lines().take(32) {
        if let Ok(r) = reference::parse(line) {
            let _ = credentials::key_matches(line, &r.repository());
        }
        let _ = credentials::normalize_key(line);
    }
    let _ = credentials::provider::parse(&text, "fuzz.yaml", std::path::Path::new("/nonexistent-fuzz-bin"));
    let _ = serde_json::from_slice::<credentials::records::PulledRecord>(data);
}
