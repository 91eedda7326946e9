//! Compile `proto/kith/v1/*.proto` with tonic-prost-build. protoc comes from
//! the `protoc-bin-vendored` crate, so a fresh machine needs nothing
//! installed; it is handed to prost-build directly rather than through the
//! `PROTOC` environment variable.

use std::{env, io, path::PathBuf};

const PROTOS: [&str; 4] = [
    "proto/kith/v1/envelopes.proto",
    "proto/kith/v1/identity.proto",
    "proto/kith/v1/key_packages.proto",
    "proto/kith/v1/node.proto",
];

fn main() -> io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .map_err(|e| io::Error::other(format!("no vendored protoc for this platform: {e}")))?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    tonic_prost_build::configure()
        // Malformed requests are the caller's fault: INVALID_ARGUMENT.
        .codec_path("crate::codec::KithCodec")
        // For tonic-reflection, so that standard gRPC tools can list the API.
        .file_descriptor_set_path(out_dir.join("kith_v1_descriptor.bin"))
        .compile_with_config(config, &PROTOS, &["proto"])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
