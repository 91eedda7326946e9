//! A deterministic, seeded, virtual-time network simulator that drives
//! many clients' Kith engines (DESIGN.md section 7).
//!
//! One run, from one seed: a few originator nodes ([`network`]) replicate
//! to each other with per-link delays, duplicates and partitions; clients
//! ([`client`]), each with its own sled store, attach to a node, crash and
//! restart from their stores (sometimes in the middle of a step, which is
//! then discarded), move to another node, and, while they are members,
//! send messages, add and remove members, rename the group and update
//! their keys. Then the network quiets down and [`run`] checks that:
//!
//! 1. every member agrees on the epoch, the epoch authenticator, the
//!    membership and the metadata;
//! 2. every application message is stored exactly once, not superseded, by
//!    every member of its canonical epoch, unless its sender was told it
//!    failed;
//! 3. no snapshot outlived its bound, and none is left;
//! 4. no intent is stuck (each is done, or failed with an event);
//!
//! and, on every step, that no two distinct published ciphertexts share
//! (group, epoch, sender leaf, generation, content kind), with the epoch
//! told apart by its authenticator, since the same epoch number on two
//! branches is two epochs with different secrets ([`oracle`]).
//!
//! Everything the schedule depends on comes from the seed. The MLS
//! randomness (key material, group ids) comes from the crypto provider and
//! differs between runs, but no decision of the engine or of the schedule
//! depends on it, so a seed replays the same schedule.

pub mod client;
pub mod network;
pub mod oracle;
mod rng;
mod scenario;
pub mod world;

pub use scenario::{Config, Outcome, run};
