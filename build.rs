//! Compiles the protocols in proto/: the CRI v1 subset nodelet uses (client
//! only), the CSI spec and the kubelet plugin registration API (clients for
//! nodelet, servers for the test CSI driver in tests/support), the device
//! plugin, pod-resources and DRA plugin APIs. Also records
//! the commit built (`NODELET_COMMIT`, "unknown" outside a git checkout) for
//! `--version`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=NODELET_COMMIT={commit}");
    // A new commit changes HEAD's ref; only paths that exist are watched
    // (a missing one would rerun this script on every build).
    for p in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    for p in [
        "proto/cri/v1/api.proto",
        "proto/csi/v1/csi.proto",
        "proto/pluginregistration/v1/api.proto",
        "proto/deviceplugin/v1beta1/api.proto",
        "proto/podresources/v1/api.proto",
        "proto/dra/v1/api.proto",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&["proto/cri/v1/api.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/csi/v1/csi.proto", "proto/pluginregistration/v1/api.proto"], &["proto"])?;
    // Device plugins (nodelet serves Registration and calls DevicePlugin; the
    // test plugin the other way round) and the pod-resources API (nodelet
    // serves it; tests and monitoring agents call it).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/deviceplugin/v1beta1/api.proto", "proto/podresources/v1/api.proto"], &["proto"])?;
    // DRA kubelet plugins (nodelet calls them; the test DRA driver serves).
    tonic_prost_build::configure().build_server(true).build_client(true).compile_protos(&["proto/dra/v1/api.proto"], &["proto"])?;
    Ok(())
}
