//! `kith-engine` is Kith's sans-IO protocol core.
//!
//! It will hold identity, key packages, groups and DMs, metadata and
//! policies, commit conflict resolution and deniable DMs, driven purely by
//! inputs (envelopes, the current time, randomness) and pulled outputs. It
//! does no I/O of its own: no sockets, no disk, no clocks (`clippy.toml`
//! forbids the clock and OS-randomness calls). It defines the storage ports
//! (traits) that `kith-storage` implements.
//!
//! It holds [`identity`] (wallets and inboxes, installations, identity
//! logs, the Kith credential and key packages), [`delivery`] (topics,
//! envelopes, cursors and the node's storage port) and [`group`] (groups
//! and DMs: metadata and policies in GroupContext extensions, commit
//! validation, the commit flow, and the client-store port).
//!
//! ```text
//!  inputs (envelopes, now, commands) ──► group::Group ──► outputs pulled with poll_*
//!                                          │  (outbound payloads, events)
//!                           OpenMLS + ClientStore (one storage step per input)
//! ```
//!
//! Rollback and replay across eventually consistent nodes (DESIGN.md
//! section 7) is not here yet: today the engine assumes the strongly
//! ordered mode (one node, settle window 0).

pub mod delivery;
pub mod group;
pub mod identity;
