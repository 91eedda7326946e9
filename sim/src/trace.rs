//! A run's trace: a hash over everything that happened in it, so that two
//! runs of one seed can be compared byte for byte, and the optional
//! human-readable log (`KITH_SIM_TRACE_LINES=1`) for studying one seed.

use std::fmt::Display;

use kith_engine::group::GroupEvent;
use sha2::{Digest as _, Sha256};

/// The running hashes of a run's trace. Each line is one thing that
/// happened: a publish, a partition, a crash, a power loss, a move to
/// another node, a join, and at the end every client's events, messages
/// and state. Bytes that come out of MLS (payload hashes, epoch
/// authenticators) go into the byte hash only; everything else into both.
/// With `KITH_SIM_TRACE_LINES=1` the lines are printed too, so that two
/// runs can be diffed.
#[derive(Debug)]
pub struct Trace {
    run: Sha256,
    bytes: Sha256,
    seed: u64,
    print: bool,
}

/// A finished trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHashes {
    /// Over the run: the schedule, every event, every stored message, the
    /// end states (membership, metadata, epochs).
    pub run: String,
    /// Over all of that and the bytes MLS produced: every published
    /// payload and every end state's epoch authenticator.
    pub bytes: String,
}

impl Trace {
    /// The trace of the run of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            run: Sha256::new(),
            bytes: Sha256::new(),
            seed,
            print: std::env::var_os("KITH_SIM_TRACE_LINES").is_some(),
        }
    }

    /// Add one line about the run.
    pub fn line(&mut self, line: impl Display) {
        let line = line.to_string();
        if self.print {
            eprintln!("trace {}: {line}", self.seed);
        }
        for hasher in [&mut self.run, &mut self.bytes] {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
        }
    }

    /// Add one line of bytes MLS produced.
    pub fn bytes(&mut self, line: impl Display) {
        let line = line.to_string();
        if self.print {
            eprintln!("trace {} bytes: {line}", self.seed);
        }
        self.bytes.update(line.as_bytes());
        self.bytes.update(b"\n");
    }

    /// The hashes of every line so far, as hex.
    pub fn finish(self) -> TraceHashes {
        TraceHashes {
            run: hex(&self.run.finalize()),
            bytes: hex(&self.bytes.finalize()),
        }
    }
}

/// Whether the human-readable log is asked for.
pub fn enabled() -> bool {
    std::env::var_os("KITH_SIM_TRACE").is_some()
}

/// Every byte as hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first four bytes as hex: enough to tell things apart in a log.
pub fn hex8(bytes: &[u8]) -> String {
    hex(&bytes[..bytes.len().min(4)])
}

/// The first eight bytes of a payload's SHA-256.
pub fn digest8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&Sha256::digest(bytes)[..8]);
    out
}

/// A payload's SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// An event, short, for the log.
pub fn event(event: &GroupEvent) -> String {
    match event {
        GroupEvent::Message(m) => format!(
            "message {} from {} at {}",
            hex8(&m.message_id),
            m.sender_inbox,
            m.time_ms % 100_000
        ),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}
