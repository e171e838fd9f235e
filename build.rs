//! Compiles the CRI v1 subset in proto/ into a tonic client.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri/v1/api.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_protos(&["proto/cri/v1/api.proto"], &["proto"])?;
    Ok(())
}
