//! The generated `kith.v1` protobuf and tonic code. Kith's own crates use
//! engine types; `convert` turns one into the other. These are public for
//! tools and tests that speak the wire protocol directly.

#![allow(missing_docs, unreachable_pub, dead_code, clippy::all)]

tonic::include_proto!("kith.v1");

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kith_v1_descriptor");
