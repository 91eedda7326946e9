//! `kith-engine` is Kith's sans-IO protocol core.
//!
//! It holds identity, key packages, groups and DMs, metadata and policies,
//! commit conflict resolution (rollback and replay when a group's commits
//! arrive out of canonical order) and deniable DMs, driven purely by inputs
//! (envelopes, the current time, randomness) and pulled outputs. It does no
//! I/O of its own: no sockets, no disk, no clocks (`clippy.toml` forbids the
//! clock and OS-randomness calls). It defines the storage ports (traits)
//! that `kith-storage` implements.
//!
//! - [`identity`]: wallets and inboxes, installations, identity logs, the
//!   Kith credential, key packages and their inventory, deniable keys.
//! - [`delivery`]: topics, envelopes in canonical order, vector cursors and
//!   the node's storage port.
//! - [`group`]: groups and DMs (metadata and policies in GroupContext
//!   extensions, commit validation, the commit flow, rollback and replay,
//!   forks and their healing, deniable bindings) and the client-store port.
//!
//! ```text
//!  inputs (envelopes, now, commands) ──► group::Group ──► outputs pulled with poll_*
//!                                          │  (outbound payloads, events)
//!                           OpenMLS + ClientStore (one storage step per input)
//! ```
//!
//! The group engine runs on a strongly ordered node (settle window 0: no
//! snapshot is ever taken) and on eventually consistent ones, where it
//! keeps a ring of snapshots per group and rolls back when an earlier
//! commit shows up (DESIGN.md section 7, `docs/conflict-resolution.md`).

pub mod delivery;
pub mod group;
pub mod identity;

/// Entry points for the fuzz targets (`fuzz/`) and their corpus replay;
/// only with the `fuzzing` feature, never in normal builds.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
