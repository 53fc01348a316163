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
    git_sha();
    Ok(())
}

/// `MAILLEDGER_GIT_SHA` for `mailledger_build_info`: the variable when set (a Docker
/// build has no `.git`: `--build-arg MAILLEDGER_GIT_SHA=$(git rev-parse --short HEAD)`),
/// else `git rev-parse --short HEAD`, else `unknown`. Rebuilt when HEAD moves.
fn git_sha() {
    println!("cargo:rerun-if-env-changed=MAILLEDGER_GIT_SHA");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let sha = std::env::var("MAILLEDGER_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "logs/HEAD"] {
            let path = std::path::Path::new(&dir).join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    println!("cargo:rustc-env=MAILLEDGER_GIT_SHA={sha}");
}
