use super::*;

fn pod(claims: serde_json::Value, statuses: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "pod-1"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"claims": [{"name": "gpu"}, {"name": "two", "request": "b"}]}}],
                 "resourceClaims": claims},
        "status": {"resourceClaimStatuses": statuses}
    }))
    .unwrap()
}

fn claim(owner: Option<&str>, reserved: &[&str], allocated: bool) -> ResourceClaim {
    let mut c = serde_json::json!({
        "metadata": {"name": "p-gpu-abcde", "namespace": "ns", "uid": "claim-1"},
        "spec": {"devices": {"requests": [{"name": "a", "exactly": {"deviceClassName": "gpu"}}]}},
        "status": {"reservedFor": reserved.iter().map(|u| serde_json::json!({"resource": "pods", "name": "p", "uid": u})).collect::<Vec<_>>()}
    });
    if let Some(o) = owner {
        c["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": o, "controller": true}]);
    }
    if allocated {
        c["status"]["allocation"] = serde_json::json!({"devices": {"results": [
            {"request": "a", "driver": "gpu.example.com", "pool": "node-1", "device": "gpu-0"},
            {"request": "a", "driver": "nic.example.com", "pool": "node-1", "device": "nic-0"}]}});
    }
    serde_json::from_value(c).unwrap()
}

#[test]
fn claim_names_follow_kubelet() {
    let p = pod(
        serde_json::json!([{"name": "gpu", "resourceClaimTemplateName": "t"}, {"name": "two", "resourceClaimName": "shared"}, {"name": "none", "resourceClaimTemplateName": "t"}]),
        serde_json::json!([{"name": "gpu", "resourceClaimName": "p-gpu-abcde"}, {"name": "none"}]),
    );
    let pcs = pod_claims(&p);
    assert_eq!(claim_name(&p, &pcs[0]).unwrap(), (Some("p-gpu-abcde".to_string()), true));
    assert_eq!(claim_name(&p, &pcs[1]).unwrap(), (Some("shared".to_string()), false));
    // The controller decided no claim was needed.
    assert_eq!(claim_name(&p, &pcs[2]).unwrap(), (None, true));
    // A template claim not made yet: the pod waits, naming the claim.
    let early = pod(serde_json::json!([{"name": "gpu", "resourceClaimTemplateName": "t"}]), serde_json::json!([]));
    let e = claim_name(&early, &pod_claims(&early)[0]).unwrap_err();
    assert!(e.contains("spec.resourceClaims[gpu]") && e.contains("not created yet"), "{e}");
}

#[test]
fn a_claim_must_be_reserved_owned_and_allocated() {
    let p = pod(serde_json::json!([]), serde_json::json!([]));
    let drivers = check_claim(&p, &claim(Some("pod-1"), &["pod-1"], true), true).unwrap();
    assert_eq!(drivers.into_iter().collect::<Vec<_>>(), ["gpu.example.com", "nic.example.com"]);
    let e = check_claim(&p, &claim(Some("pod-1"), &["other"], true), true).unwrap_err();
    assert!(e.contains("not allowed to use ResourceClaim p-gpu-abcde") && e.contains("not reserved"), "{e}");
    let e = check_claim(&p, &claim(Some("someone-else"), &["pod-1"], true), true).unwrap_err();
    assert!(e.contains("not created for pod p"), "{e}");
    // A claim by name need not be owned by the pod.
    assert!(check_claim(&p, &claim(None, &["pod-1"], true), false).is_ok());
    let e = check_claim(&p, &claim(Some("pod-1"), &["pod-1"], false), true).unwrap_err();
    assert!(e.contains("is not allocated"), "{e}");
}

fn info() -> ClaimInfo {
    ClaimInfo {
        uid: "claim-1".into(),
        name: "shared".into(),
        namespace: "ns".into(),
        pods: ["pod-1".to_string(), "pod-2".to_string()].into(),
        drivers: [(
            "gpu.example.com".to_string(),
            vec![
                PreparedDevice { pool: "n".into(), device: "gpu-0".into(), requests: vec!["a".into()], cdi_ids: vec!["example.com/gpu=gpu-0".into()] },
                PreparedDevice { pool: "n".into(), device: "gpu-1".into(), requests: vec!["b".into()], cdi_ids: vec!["example.com/gpu=gpu-1".into()] },
                PreparedDevice { pool: "n".into(), device: "all".into(), requests: vec![], cdi_ids: vec!["example.com/gpu=common".into()] },
            ],
        )]
        .into(),
        prepared: true,
    }
}

#[test]
fn cdi_devices_by_request() {
    let i = info();
    assert_eq!(i.cdi_devices(""), ["example.com/gpu=gpu-0", "example.com/gpu=gpu-1", "example.com/gpu=common"]);
    assert_eq!(i.cdi_devices("b"), ["example.com/gpu=gpu-1", "example.com/gpu=common"]);
    // A subrequest's device serves its parent request.
    let mut sub = info();
    sub.drivers.get_mut("gpu.example.com").unwrap()[0].requests = vec!["a/small".into()];
    assert_eq!(sub.cdi_devices("a"), ["example.com/gpu=gpu-0", "example.com/gpu=common"]);
}

#[test]
fn container_cdi_devices_come_from_the_claims_it_names() {
    let dra = Dra::default();
    let mut shared = info();
    shared.namespace = "ns".into();
    dra.inner.claims.lock().unwrap().insert(("ns".into(), "shared".into()), shared);
    let mut gpu = info();
    gpu.name = "p-gpu-abcde".into();
    gpu.drivers.get_mut("gpu.example.com").unwrap().truncate(1);
    dra.inner.claims.lock().unwrap().insert(("ns".into(), "p-gpu-abcde".into()), gpu);
    let p = pod(
        serde_json::json!([{"name": "gpu", "resourceClaimTemplateName": "t"}, {"name": "two", "resourceClaimName": "shared"}]),
        serde_json::json!([{"name": "gpu", "resourceClaimName": "p-gpu-abcde"}]),
    );
    let c = &p.spec.as_ref().unwrap().containers[0];
    assert_eq!(dra.cdi_devices(&p, c).unwrap(), ["example.com/gpu=gpu-0", "example.com/gpu=gpu-1", "example.com/gpu=common"]);
    // A container naming no claim gets none.
    let mut plain = c.clone();
    plain.resources = None;
    assert!(dra.cdi_devices(&p, &plain).unwrap().is_empty());
}

#[test]
fn checkpoint_round_trip_and_kubelet_layout() {
    let claims = vec![info()];
    let bytes = checkpoint::encode(&claims).unwrap();
    let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let data: serde_json::Value = serde_json::from_str(file["Data"].as_str().unwrap()).unwrap();
    assert_eq!(data["kind"], "DRACheckpoint");
    assert_eq!(data["apiVersion"], "checkpoint.dra.kubelet.k8s.io/v1");
    assert_eq!(data["Entries"][0]["PodUIDs"], serde_json::json!({"pod-1": {}, "pod-2": {}}));
    assert_eq!(data["Entries"][0]["DriverState"]["gpu.example.com"]["Devices"][1]["CDIDeviceIDs"], serde_json::json!(["example.com/gpu=gpu-1"]));
    assert_eq!(file["Checksum"].as_u64().unwrap(), u64::from(crc32fast::hash(file["Data"].as_str().unwrap().as_bytes())));
    let mut back = checkpoint::decode(&bytes).unwrap();
    assert!(!back[0].prepared, "asked again after a restart");
    back[0].prepared = true;
    assert_eq!(back, claims);
}

#[test]
fn a_checkpoint_as_kubelet_writes_it_is_read() {
    // Go's encoding: nil slices as null, the set as an object.
    let data = r#"{"kind":"DRACheckpoint","apiVersion":"checkpoint.dra.kubelet.k8s.io/v1","Entries":[{"ClaimUID":"u1","ClaimName":"c1","Namespace":"default","PodUIDs":{"p1":{}},"DriverState":{"d.example.com":{"Devices":[{"PoolName":"n","DeviceName":"d0","RequestNames":null,"CDIDeviceIDs":null}]}}}]}"#;
    let file = serde_json::json!({"Data": data, "Checksum": crc32fast::hash(data.as_bytes())});
    let claims = checkpoint::decode(file.to_string().as_bytes()).unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].pods, ["p1".to_string()].into());
    assert_eq!(claims[0].drivers["d.example.com"][0].device, "d0");
    assert!(claims[0].drivers["d.example.com"][0].cdi_ids.is_empty());
}

#[test]
fn a_tampered_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(checkpoint::FILE);
    checkpoint::write(&path, &[info()]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap().replace("pod-2", "pod-3");
    std::fs::write(&path, text).unwrap();
    let e = Dra::new(Some(dir.path()), None, None, false).err().unwrap();
    assert!(e.contains("dra_manager_state") && e.contains("checksum mismatch"), "{e}");
}

#[test]
fn registration_checks_name_endpoint_and_version() {
    let dra = Dra::default();
    let p = dra.register("gpu.example.com", "/var/lib/kubelet/plugins/gpu/dra.sock", &["v1beta1.DRAPlugin".into(), "v1.DRAPlugin".into()]).unwrap();
    assert_eq!(p.service, "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin");
    let old = dra.register("old.example.com", "unix:///run/old.sock", &["v1beta1.DRAPlugin".into()]).unwrap();
    assert_eq!(old.service, "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin");
    assert_eq!(old.endpoint, std::path::PathBuf::from("/run/old.sock"));
    assert!(dra.register("x.example.com", "/s", &["v1alpha4.DRAPlugin".into()]).unwrap_err().contains("none of the plugin's versions"));
    assert!(dra.register("x.example.com", "relative.sock", &["v1.DRAPlugin".into()]).unwrap_err().contains("not an absolute socket path"));
    assert!(dra.register("Bad_Name", "/s", &["v1.DRAPlugin".into()]).unwrap_err().contains("driver name"));
    assert_eq!(dra.plugins().len(), 2);
    dra.unregister("old.example.com", std::path::Path::new("/run/old.sock"));
    assert!(dra.plugin("old.example.com").unwrap_err().contains("not registered"));
    // A rolling update: two instances of one driver; the old one going
    // leaves the new one registered.
    dra.register("gpu.example.com", "/var/lib/kubelet/plugins/gpu/dra-2.sock", &["v1.DRAPlugin".into()]).unwrap();
    assert_eq!(dra.plugin("gpu.example.com").unwrap().endpoint, std::path::PathBuf::from("/var/lib/kubelet/plugins/gpu/dra-2.sock"), "the newest is called");
    dra.unregister("gpu.example.com", std::path::Path::new("/var/lib/kubelet/plugins/gpu/dra.sock"));
    assert_eq!(dra.plugin("gpu.example.com").unwrap().endpoint, std::path::PathBuf::from("/var/lib/kubelet/plugins/gpu/dra-2.sock"));
    dra.unregister("gpu.example.com", std::path::Path::new("/var/lib/kubelet/plugins/gpu/dra-2.sock"));
    assert!(dra.plugin("gpu.example.com").is_err());
}
