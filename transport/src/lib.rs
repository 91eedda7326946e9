//! `kith-transport` will be Kith's wire layer.
//!
//! It will hold the `kith.v1` protobuf definitions, the generated prost and
//! tonic code, the gRPC delivery-service node (binary `kith-node`), the gRPC
//! client, and `LocalNode`, the same node logic running in-process.
