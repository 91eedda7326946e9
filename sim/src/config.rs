//! What a run looks like: [`Config`], its defaults and the named profiles
//! the seed tests run.

/// What a run looks like. The defaults keep every delay and partition
/// inside the settle window, so no member may end on a fork.
#[derive(Clone, Debug)]
pub struct Config {
    /// Originator nodes.
    pub nodes: usize,
    /// Clients (one installation of one inbox each).
    pub clients: usize,
    /// Members at the start (the creator included).
    pub initial_members: usize,
    /// Operations to issue before the network quiets down.
    pub ops: usize,
    /// Virtual time per tick, in ms.
    pub tick_ms: u64,
    /// Largest base delay of a link, in ms.
    pub max_delay_ms: u64,
    /// Extra random delay per envelope, in ms.
    pub jitter_ms: u64,
    /// The settle window, in ms.
    pub settle_window_ms: u64,
    /// At most this many unsettled transitions.
    pub max_rewind: usize,
    /// Chance of a duplicated replication, per mille.
    pub duplicate_per_mille: u64,
    /// Chance per tick that a member issues an operation, per mille.
    pub op_per_mille: u64,
    /// Chance per tick that a client crashes, per mille.
    pub crash_per_mille: u64,
    /// Chance that a client crashes inside a step, per mille of steps.
    pub crash_in_step_per_mille: u64,
    /// Chance per tick that a partition starts, per mille.
    pub partition_per_mille: u64,
    /// Longest partition, in ms.
    pub max_partition_ms: u64,
    /// Chance per tick that a client moves to another node, per mille.
    pub reconnect_per_mille: u64,
    /// Give up (and fail) after this many ticks.
    pub max_ticks: u64,
    /// Whether metadata changes and key updates go out as proposals first.
    pub propose_first: bool,
    /// How long a proposer waits for someone else to commit its proposal.
    pub proposal_wait_ms: u64,
    /// How long a removed member keeps the group's state after its
    /// removal, to find a fork its removal may turn out to be on. Longer
    /// than any partition a profile makes, with room for the heal.
    pub retire_grace_ms: u64,
    /// Chance per tick that a client loses power, per mille: besides what
    /// a crash loses, every step since its store was last flushed is gone.
    pub power_loss_per_mille: u64,
    /// A deliberate bug, for the oracle's mutation test: the first message
    /// sent is sent again from a restored snapshot of its group, so that a
    /// sender ratchet is reused. Never set it otherwise.
    pub reuse_ratchet: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 3,
            clients: 5,
            initial_members: 3,
            ops: 12,
            tick_ms: 5,
            max_delay_ms: 25,
            jitter_ms: 15,
            settle_window_ms: 200,
            max_rewind: 5,
            duplicate_per_mille: 50,
            op_per_mille: 25,
            crash_per_mille: 3,
            crash_in_step_per_mille: 10,
            partition_per_mille: 3,
            max_partition_ms: 60,
            reconnect_per_mille: 4,
            max_ticks: 20_000,
            propose_first: true,
            proposal_wait_ms: 40,
            retire_grace_ms: 2_000,
            power_loss_per_mille: 1,
            reuse_ratchet: false,
        }
    }
}

/// The profiles [`Config::for_seed`] picks from, by `seed % 3`.
pub const PROFILES: [&str; 3] = ["calm", "busy", "crashy"];

impl Config {
    /// The configuration the seed tests use: the seed picks one of three
    /// [`PROFILES`] (calm, busy, crashy), all of whose delays and
    /// partitions stay inside the settle window.
    pub fn for_seed(seed: u64) -> Self {
        let base = Self::default();
        match seed % PROFILES.len() as u64 {
            1 => Self {
                nodes: 4,
                ops: 24,
                op_per_mille: 80,
                max_delay_ms: 60,
                jitter_ms: 40,
                settle_window_ms: 300,
                max_partition_ms: 120,
                partition_per_mille: 5,
                proposal_wait_ms: 0,
                ..base
            },
            2 => Self {
                crash_per_mille: 10,
                crash_in_step_per_mille: 30,
                power_loss_per_mille: 5,
                reconnect_per_mille: 10,
                op_per_mille: 50,
                ..base
            },
            _ => base,
        }
    }

    /// The name of the profile [`Config::for_seed`] picks for `seed`.
    pub fn profile_of(seed: u64) -> &'static str {
        PROFILES[(seed % PROFILES.len() as u64) as usize]
    }

    /// Replication that can lag past the settle window (partitions up to
    /// three windows long): members end up on forks, which must be found
    /// and healed. [`Config::heavy_lag`] is harsher.
    pub fn lagging() -> Self {
        Self {
            settle_window_ms: 100,
            max_partition_ms: 300,
            partition_per_mille: 20,
            op_per_mille: 40,
            ops: 30,
            ..Self::default()
        }
    }

    /// Frequent partitions several settle windows long (over six windows):
    /// forks are frequent and older, and several members often answer one
    /// rejoin request.
    pub fn heavy_lag() -> Self {
        Self {
            settle_window_ms: 60,
            max_partition_ms: 400,
            partition_per_mille: 25,
            op_per_mille: 60,
            ops: 20,
            ..Self::default()
        }
    }
}
