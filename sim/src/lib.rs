//! A deterministic, seeded, virtual-time network simulator that drives
//! many clients' Kith engines (DESIGN.md section 7).
//!
//! One run, from one seed: a few originator nodes ([`network`]) replicate
//! to each other with per-link delays, duplicates and partitions; clients
//! ([`client`]), each with its own sled store, attach to a node, crash and
//! restart from their stores (sometimes in the middle of a step, which is
//! then discarded), lose power (and with it every step since their store
//! was last flushed), move to another node, and, while they are members,
//! send messages, add and remove members, rename the group and update
//! their keys. Then the network quiets down and [`run`] checks that:
//!
//! 1. every member agrees on the epoch, the epoch authenticator, the
//!    membership and the metadata;
//! 2. every client's whole message list (ids, order, delivery state, the
//!    events that announced it) is what the model of the run allows
//!    ([`model`]): each member holds every message of its time exactly
//!    once, in order, delivered unless its sender was told it failed, and
//!    nobody holds a message it could not have read;
//! 3. no snapshot outlived its bound, and none is left;
//! 4. no intent is stuck (each is done, or failed with an event);
//!
//! and, on every publish, that no two distinct published ciphertexts share
//! (group, epoch, sender leaf, generation, content kind), with the epoch
//! told apart by its authenticator, since the same epoch number on two
//! branches is two epochs with different secrets ([`oracle`]).
//!
//! Everything comes from the seed: the schedule, the clients' keys, and
//! every random byte OpenMLS draws ([`crypto`]), and time starts at a
//! fixed instant. A seed therefore replays byte for byte; each run's
//! [`Outcome::trace_hash`] proves it.

mod checks;
pub mod client;
mod config;
pub mod crypto;
/// The fuzz harness of `Group::handle_envelope` and the seeds a real group
/// gives; only with the `fuzzing` feature, never in normal builds.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod network;
pub mod oracle;
mod rng;
mod scenario;
pub mod trace;
pub mod world;

pub use config::{Config, PROFILES};
pub use scenario::{Outcome, START_MS, run};
