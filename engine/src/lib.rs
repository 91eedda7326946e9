//! `kith-engine` is Kith's sans-IO protocol core.
//!
//! It will hold identity, key packages, groups and DMs, metadata and
//! policies, commit conflict resolution and deniable DMs, driven purely by
//! inputs (envelopes, the current time, randomness) and pulled outputs. It
//! does no I/O of its own: no sockets, no disk, no clocks (`clippy.toml`
//! forbids the clock and OS-randomness calls). It defines the storage ports
//! (traits) that `kith-storage` implements.
//!
//! Today it holds [`identity`] (wallets and inboxes, installations, identity
//! logs, the Kith credential and key packages) and [`delivery`] (topics,
//! envelopes, cursors and the node's storage port).

pub mod delivery;
pub mod group;
pub mod identity;
