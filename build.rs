//! Compiles `proto/` with the protoc shipped in `protoc-bin-vendored` (no system
//! protoc, no download), and writes a descriptor set for gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("email_descriptor.bin"))
        // A request that does not decode is the caller's fault: INVALID_ARGUMENT.
        .codec_path("crate::transport::grpc::codec::Codec")
        .compile_with_config(config, &["proto/email.proto"], &["proto", include.to_str().ok_or("include path")?])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
