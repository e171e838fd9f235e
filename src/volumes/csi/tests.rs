use super::*;

#[test]
fn names_follow_kubelet() {
    // sha256("vol-1" + "csi.example.com" + "node-a")
    assert_eq!(attachment_name("vol-1", "csi.example.com", "node-a"), format!("csi-{}", sha256_hex("vol-1csi.example.comnode-a")));
    assert_eq!(attachment_name("vol-1", "csi.example.com", "node-a").len(), 4 + 64);
    assert_eq!(ephemeral_handle("uid", "data"), format!("csi-{}", sha256_hex("uiddata")));
    let d = VolData {
        driver_name: "d".into(),
        volume_handle: "h".into(),
        spec_volume_id: "pv".into(),
        volume_lifecycle_mode: "Persistent".into(),
        node_name: "n".into(),
        attachment_id: String::new(),
    };
    assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"driverName":"d","volumeHandle":"h","specVolID":"pv","volumeLifecycleMode":"Persistent","nodeName":"n"}"#);
    // kubelet's own file reads (its extra fields ignored).
    let kubelet = r#"{"attachmentID":"csi-abc","driverName":"hostpath.csi.k8s.io","nodeName":"n1","specVolID":"pvc-1","volumeHandle":"h1","volumeLifecycleMode":"Persistent"}"#;
    let k: VolData = serde_json::from_str(kubelet).unwrap();
    assert_eq!((k.driver_name.as_str(), k.volume_handle.as_str(), k.spec_volume_id.as_str(), k.attachment_id.as_str()), ("hostpath.csi.k8s.io", "h1", "pvc-1", "csi-abc"));
}
