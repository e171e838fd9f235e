use super::*;

#[test]
fn references_normalise_like_containerd() {
    assert_eq!(normalize_reference("busybox"), "docker.io/library/busybox:latest");
    assert_eq!(normalize_reference("busybox:1.36"), "docker.io/library/busybox:1.36");
    assert_eq!(normalize_reference("team/app:v1"), "docker.io/team/app:v1");
    assert_eq!(normalize_reference("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
    assert_eq!(normalize_reference("localhost/x"), "localhost/x:latest");
    assert_eq!(normalize_reference("reg:5000/x"), "reg:5000/x:latest");
    assert_eq!(
        normalize_reference("nodelet.local/busybox@sha256:abcd"),
        "nodelet.local/busybox@sha256:abcd"
    );
}

#[test]
fn chain_ids_follow_the_image_spec() {
    let a = "sha256:aaaa".to_string();
    let b = "sha256:bbbb".to_string();
    let chains = chain_ids(&[a.clone(), b.clone()]);
    assert_eq!(chains[0], a);
    let expect = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
    assert_eq!(chains[1], expect);
}
