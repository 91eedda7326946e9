//! `kith-transport`: Kith's wire layer.
//!
//! It holds the `kith.v1` protobuf definitions (`proto/kith/v1/`), the
//! generated prost and tonic code ([`proto`], for tools and tests; the rest
//! of Kith uses engine types), the conversions between the two
//! ([`convert`]), and the delivery-service [`node`]: its logic, limits,
//! authentication, rate limits and gRPC service, plus the `kith-node`
//! binary. [`client`] is how a Kith client reaches a node: the
//! `DeliveryClient` trait, over gRPC (`GrpcClient`) or in-process
//! (`LocalNode`).
//!
//! ```text
//!  proto/kith/v1/*.proto ──build.rs (tonic-prost-build, vendored protoc)──► proto (generated)
//!  proto types ◄──convert──► kith_engine::{delivery, identity} types
//! ```

pub mod client;
pub mod codec;
pub mod convert;
pub mod node;
pub mod proto;

/// Entry points for the fuzz targets (`fuzz/`) and their corpus replay;
/// only with the `fuzzing` feature, never in normal builds.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
