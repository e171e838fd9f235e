//! Compiles the protocols in proto/: the CRI v1 subset nodelet uses (client
//! only), the CSI spec and the kubelet plugin registration API (clients for
//! nodelet, servers for the test CSI driver in tests/support).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in ["proto/cri/v1/api.proto", "proto/csi/v1/csi.proto", "proto/pluginregistration/v1/api.proto"] {
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
    Ok(())
}
