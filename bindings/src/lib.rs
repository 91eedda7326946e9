//! `kith-ffi` will be the thin FFI layer over `kith`.
//!
//! It will expose a small, flat subset of the client API to Kotlin, Swift and
//! Python through uniffi, with no logic of its own.
