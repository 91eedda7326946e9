//! `kith-engine` will be Kith's sans-IO protocol core.
//!
//! It will hold identity, key packages, groups and DMs, metadata and policies,
//! commit conflict resolution and deniable DMs, driven purely by inputs
//! (envelopes, the current time, randomness) and pulled outputs. It does no
//! I/O of its own: no sockets, no disk, no clocks. It will also define the
//! storage ports (traits) that `kith-storage` implements.
