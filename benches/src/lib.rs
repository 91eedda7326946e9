//! `kith-benches` holds Kith's criterion benchmarks.
//!
//! Every benchmark lives in `benches/benches/` and runs the raw-OpenMLS
//! baseline (`openmls_memory_storage`, no actors, no network) in the same run,
//! printing the ratio. Results are recorded in `BENCHMARKS.md` at the
//! workspace root.
