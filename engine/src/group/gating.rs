//! Token gating: the rules a group's new members must satisfy (extension
//! `0xff14`), and how every member checks, on every commit, that they were
//! applied.
//!
//! # Why the verdict is the committer's
//!
//! Whether an inbox holds a token is a fact about a chain, and members see
//! chains through different RPC endpoints at different heights. If every
//! receiver asked its own chain view, two honest members could reach
//! different verdicts on the same commit and the group would fork. So the
//! chain is asked once, by the member who adds the inbox: its
//! application's verifier answers, and the commit records the answer as an
//! [`Admission`] of that inbox, naming a digest of the rules it was checked
//! against ([`Gating::digest`]) and carrying the verifier's evidence (a
//! block number and proof, say) for anyone to audit later.
//!
//! What every receiver checks is deterministic, a function of the commit
//! and the group state alone, so every member reaches the same verdict:
//!
//! - each inbox a commit brings in passes [`Gating::admits`]: allowlists
//!   are evaluated by every member (they are group state), and token rules
//!   need an admission for that inbox under the rules in force before the
//!   commit;
//! - a commit records admissions only for inboxes it brings in;
//! - only members whose role passes the `change_policies` policy may change
//!   the rules.
//!
//! A commit that skips the check (a client that does not know gating, or
//! one altered to leave it out) carries no admission and is rejected by
//! every member. A client altered to *lie* about the verdict can still
//! admit an inbox that fails a token rule: nothing a receiver can check
//! without asking a chain tells the two apart. The evidence is kept for
//! that case; a member that disagrees with it may remove the inbox under
//! the group's policies, which does not fork the group either.

use std::collections::BTreeSet;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::error::MetadataError;
use crate::identity::InboxId;

/// The most gating rules a group may carry.
pub const MAX_GATING_RULES: usize = 16;
/// The longest gating rule, in bytes: room for an allowlist of about
/// 1,400 inboxes.
pub const MAX_GATING_RULE_LEN: usize = 32 * 1024;
/// The most admissions one commit records (inboxes it brings in).
pub const MAX_ADMISSIONS: usize = 1000;
/// The longest evidence of one admission, in bytes.
pub const MAX_EVIDENCE_LEN: usize = 1024;

/// The kind of an ERC-20 balance rule.
pub const RULE_ERC20: &str = "erc20-balance";
/// The kind of an ERC-721 ownership rule.
pub const RULE_ERC721: &str = "erc721-owner";
/// The kind of an allowlist rule.
pub const RULE_ALLOWLIST: &str = "allowlist";

/// A gating rule as the group context carries it: a kind and the kind's
/// own encoding. [`TokenRule`] gives the standard kinds their types; a
/// kind this version does not know is kept as it is and, like a token
/// rule, needs an admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatingRule {
    /// The rule's kind, e.g. [`RULE_ERC20`].
    pub kind: String,
    /// Its parameters, in the kind's own encoding.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A typed gating rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRule {
    /// Holds at least `min_balance` (in the token's smallest unit) of the
    /// ERC-20 token at `contract` on chain `chain_id`.
    Erc20 {
        /// The EIP-155 chain id.
        chain_id: u64,
        /// The token contract.
        contract: [u8; 20],
        /// The least balance, in the token's smallest unit.
        min_balance: u128,
    },
    /// Owns a token of the ERC-721 collection at `contract` on chain
    /// `chain_id` (`token_id`: that token in particular).
    Erc721 {
        /// The EIP-155 chain id.
        chain_id: u64,
        /// The collection contract.
        contract: [u8; 20],
        /// One token in particular, big-endian; `None`: any token.
        token_id: Option<[u8; 32]>,
    },
    /// Is one of these inboxes. Evaluated by every member itself.
    Allowlist {
        /// The inboxes.
        inboxes: BTreeSet<InboxId>,
    },
}

/// How a group's rules combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Require {
    /// An inbox must satisfy every rule.
    #[default]
    All,
    /// An inbox must satisfy at least one rule.
    Any,
}

/// The committer's record that an inbox it adds satisfied the token rules
/// of the group (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The inbox admitted.
    pub inbox: InboxId,
    /// [`Gating::digest`] of the rules it was checked against.
    pub rules_digest: [u8; 32],
    /// The verifier's evidence, one entry per rule it answered for (e.g.
    /// the block it read and a proof); opaque to Kith.
    #[serde(with = "super::records::byte_lists")]
    pub evidence: Vec<Vec<u8>>,
}

/// A group's gating: its rules, how they combine, and the admissions of
/// the last commit that brought inboxes in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gating {
    /// The rules; none: the group is not gated.
    pub rules: Vec<GatingRule>,
    /// How they combine.
    pub require: Require,
    /// Admissions recorded by the last commit that added inboxes.
    pub admissions: Vec<Admission>,
}

impl Gating {
    /// Gating by `rules`, combined as `require`.
    pub fn new(rules: impl IntoIterator<Item = TokenRule>, require: Require) -> Self {
        Self {
            rules: rules.into_iter().map(|r| r.to_rule()).collect(),
            require,
            admissions: Vec::new(),
        }
    }

    /// Whether new members must satisfy rules.
    pub fn is_gated(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether the rules (or how they combine) differ; admissions aside.
    pub fn same_rules(&self, other: &Gating) -> bool {
        self.rules == other.rules && self.require == other.require
    }

    /// The rules as typed rules, those of kinds this version does not
    /// know as errors.
    pub fn typed_rules(&self) -> Vec<Result<TokenRule, MetadataError>> {
        self.rules.iter().map(TokenRule::from_rule).collect()
    }

    /// The digest an admission names: SHA-256 over the rules and how they
    /// combine, in their wire encoding.
    pub fn digest(&self) -> [u8; 32] {
        let rules_only = Gating {
            rules: self.rules.clone(),
            require: self.require,
            admissions: Vec::new(),
        };
        let mut hasher = Sha256::new();
        hasher.update(b"kith gating rules v1");
        hasher.update(encode_gating(&rules_only));
        hasher.finalize().into()
    }

    /// Whether the rules need a verifier's verdict (some rule is not an
    /// allowlist).
    pub fn needs_verdict(&self) -> bool {
        self.rules.iter().any(|r| r.kind != RULE_ALLOWLIST)
    }

    /// Whether every member lets `inbox` in: the allowlists, evaluated
    /// here, with `admitted` (whether the commit carries an admission of
    /// `inbox` under these rules) standing for the other rules. To check
    /// many inboxes, use [`Gating::check`] once.
    pub fn admits(&self, inbox: &InboxId, admitted: bool) -> bool {
        self.check().admits(inbox, admitted)
    }

    /// The rules made ready to check inboxes against: the allowlists
    /// decoded and the digest taken once, however many inboxes follow.
    pub fn check(&self) -> GatingCheck {
        GatingCheck {
            gated: self.is_gated(),
            require: self.require,
            needs_verdict: self.needs_verdict(),
            // A malformed allowlist admits nobody.
            lists: self
                .rules
                .iter()
                .filter(|r| r.kind == RULE_ALLOWLIST)
                .map(|r| match TokenRule::from_rule(r) {
                    Ok(TokenRule::Allowlist { inboxes }) => inboxes,
                    _ => BTreeSet::new(),
                })
                .collect(),
            digest: self.digest(),
        }
    }

    /// Check the bounds.
    pub(crate) fn check_limits(&self) -> Result<(), MetadataError> {
        let too_long = |what: String, len, limit| Err(MetadataError::TooLong { what, len, limit });
        if self.rules.len() > MAX_GATING_RULES {
            return too_long(
                "the number of gating rules".into(),
                self.rules.len(),
                MAX_GATING_RULES,
            );
        }
        for rule in &self.rules {
            let len = rule.kind.len() + rule.data.len();
            if len > MAX_GATING_RULE_LEN {
                return too_long(
                    format!("gating rule {:?}", rule.kind),
                    len,
                    MAX_GATING_RULE_LEN,
                );
            }
        }
        if self.admissions.len() > MAX_ADMISSIONS {
            return too_long(
                "the number of admissions".into(),
                self.admissions.len(),
                MAX_ADMISSIONS,
            );
        }
        for admission in &self.admissions {
            if admission.evidence.len() > MAX_GATING_RULES {
                return too_long(
                    "the evidence entries of an admission".into(),
                    admission.evidence.len(),
                    MAX_GATING_RULES,
                );
            }
            let len: usize = admission.evidence.iter().map(Vec::len).sum();
            if len > MAX_EVIDENCE_LEN {
                return too_long("the evidence of an admission".into(), len, MAX_EVIDENCE_LEN);
            }
        }
        Ok(())
    }
}

/// A group's rules ready to check inboxes against ([`Gating::check`]).
#[derive(Debug, Clone)]
pub struct GatingCheck {
    gated: bool,
    require: Require,
    needs_verdict: bool,
    lists: Vec<BTreeSet<InboxId>>,
    digest: [u8; 32],
}

impl GatingCheck {
    /// See [`Gating::admits`].
    pub fn admits(&self, inbox: &InboxId, admitted: bool) -> bool {
        if !self.gated {
            return true;
        }
        let mut lists = self.lists.iter().map(|list| list.contains(inbox));
        let verdict = self.needs_verdict.then_some(admitted);
        match self.require {
            Require::All => lists.all(|on| on) && verdict.unwrap_or(true),
            Require::Any => lists.any(|on| on) || verdict.unwrap_or(false),
        }
    }

    /// The admission of `inbox` under these rules, if `admissions` has one.
    pub fn admission_in<'a>(
        &self,
        admissions: &'a [Admission],
        inbox: &InboxId,
    ) -> Option<&'a Admission> {
        admissions
            .iter()
            .find(|a| a.inbox == *inbox && a.rules_digest == self.digest)
    }

    /// [`Gating::digest`] of the rules.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

impl TokenRule {
    /// The rule as the group context carries it.
    pub fn to_rule(&self) -> GatingRule {
        let (kind, data) = match self {
            TokenRule::Erc20 {
                chain_id,
                contract,
                min_balance,
            } => (
                RULE_ERC20,
                wire::Token {
                    chain_id: *chain_id,
                    contract: contract.to_vec(),
                    amount: min_balance.to_be_bytes().to_vec(),
                    token_id: None,
                }
                .encode_to_vec(),
            ),
            TokenRule::Erc721 {
                chain_id,
                contract,
                token_id,
            } => (
                RULE_ERC721,
                wire::Token {
                    chain_id: *chain_id,
                    contract: contract.to_vec(),
                    amount: Vec::new(),
                    token_id: token_id.map(|t| t.to_vec()),
                }
                .encode_to_vec(),
            ),
            TokenRule::Allowlist { inboxes } => (
                RULE_ALLOWLIST,
                wire::Allowlist {
                    inboxes: inboxes.iter().map(|i| i.as_bytes().to_vec()).collect(),
                }
                .encode_to_vec(),
            ),
        };
        GatingRule {
            kind: kind.into(),
            data,
        }
    }

    /// The typed rule of `rule`; an unknown kind or malformed data is an
    /// error.
    pub fn from_rule(rule: &GatingRule) -> Result<Self, MetadataError> {
        let malformed = |reason: String| MetadataError::Malformed {
            extension: "gating rules",
            reason,
        };
        let fixed = |bytes: &[u8], what: &str| -> Result<[u8; 20], MetadataError> {
            bytes
                .try_into()
                .map_err(|_| malformed(format!("{what} is {} bytes, not 20", bytes.len())))
        };
        match rule.kind.as_str() {
            RULE_ERC20 | RULE_ERC721 => {
                let w = wire::Token::decode(rule.data.as_slice())
                    .map_err(|e| malformed(e.to_string()))?;
                let contract = fixed(&w.contract, "a token contract")?;
                if rule.kind == RULE_ERC20 {
                    let amount: [u8; 16] = w
                        .amount
                        .as_slice()
                        .try_into()
                        .map_err(|_| malformed("an ERC-20 balance is not 16 bytes".into()))?;
                    Ok(TokenRule::Erc20 {
                        chain_id: w.chain_id,
                        contract,
                        min_balance: u128::from_be_bytes(amount),
                    })
                } else {
                    let token_id = w
                        .token_id
                        .map(|t| {
                            <[u8; 32]>::try_from(t.as_slice()).map_err(|_| {
                                malformed("an ERC-721 token id is not 32 bytes".into())
                            })
                        })
                        .transpose()?;
                    Ok(TokenRule::Erc721 {
                        chain_id: w.chain_id,
                        contract,
                        token_id,
                    })
                }
            }
            RULE_ALLOWLIST => {
                let w = wire::Allowlist::decode(rule.data.as_slice())
                    .map_err(|e| malformed(e.to_string()))?;
                let inboxes = w
                    .inboxes
                    .iter()
                    .map(|b| fixed(b, "an allowlisted inbox").map(InboxId::from_bytes))
                    .collect::<Result<_, _>>()?;
                Ok(TokenRule::Allowlist { inboxes })
            }
            other => Err(malformed(format!("unknown gating rule kind {other:?}"))),
        }
    }
}

mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Rule {
        #[prost(string, tag = "1")]
        pub kind: String,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Admission {
        #[prost(bytes = "vec", tag = "1")]
        pub inbox: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub rules_digest: Vec<u8>,
        #[prost(bytes = "vec", repeated, tag = "3")]
        pub evidence: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Gating {
        #[prost(message, repeated, tag = "1")]
        pub rules: Vec<Rule>,
        /// 0: all, 1: any.
        #[prost(uint32, tag = "2")]
        pub require: u32,
        #[prost(message, repeated, tag = "3")]
        pub admissions: Vec<Admission>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Token {
        #[prost(uint64, tag = "1")]
        pub chain_id: u64,
        #[prost(bytes = "vec", tag = "2")]
        pub contract: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub amount: Vec<u8>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub token_id: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Allowlist {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub inboxes: Vec<Vec<u8>>,
    }
}

/// The gating extension's bytes.
pub fn encode_gating(gating: &Gating) -> Vec<u8> {
    wire::Gating {
        rules: gating
            .rules
            .iter()
            .map(|r| wire::Rule {
                kind: r.kind.clone(),
                data: r.data.clone(),
            })
            .collect(),
        require: match gating.require {
            Require::All => 0,
            Require::Any => 1,
        },
        admissions: gating
            .admissions
            .iter()
            .map(|a| wire::Admission {
                inbox: a.inbox.as_bytes().to_vec(),
                rules_digest: a.rules_digest.to_vec(),
                evidence: a.evidence.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decode the gating extension (its bounds are checked with the rest of
/// the metadata).
pub fn decode_gating(bytes: &[u8]) -> Result<Gating, MetadataError> {
    let malformed = |reason: String| MetadataError::Malformed {
        extension: "gating rules",
        reason,
    };
    let w = wire::Gating::decode(bytes).map_err(|e| malformed(e.to_string()))?;
    let require = match w.require {
        0 => Require::All,
        1 => Require::Any,
        other => return Err(malformed(format!("unknown combination {other}"))),
    };
    let admissions =
        w.admissions
            .into_iter()
            .map(|a| {
                let inbox: [u8; 20] = a
                    .inbox
                    .as_slice()
                    .try_into()
                    .map_err(|_| malformed("an admitted inbox is not 20 bytes".into()))?;
                let rules_digest: [u8; 32] =
                    a.rules_digest.as_slice().try_into().map_err(|_| {
                        malformed("an admission's rules digest is not 32 bytes".into())
                    })?;
                Ok(Admission {
                    inbox: InboxId::from_bytes(inbox),
                    rules_digest,
                    evidence: a.evidence,
                })
            })
            .collect::<Result<_, MetadataError>>()?;
    Ok(Gating {
        rules: w
            .rules
            .into_iter()
            .map(|r| GatingRule {
                kind: r.kind,
                data: r.data,
            })
            .collect(),
        require,
        admissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox(n: u8) -> InboxId {
        InboxId::from_bytes([n; 20])
    }

    fn token() -> TokenRule {
        TokenRule::Erc721 {
            chain_id: 10,
            contract: [7; 20],
            token_id: Some([1; 32]),
        }
    }

    fn list(inboxes: &[u8]) -> TokenRule {
        TokenRule::Allowlist {
            inboxes: inboxes.iter().map(|n| inbox(*n)).collect(),
        }
    }

    #[test]
    fn rules_round_trip_typed_and_on_the_wire() {
        let erc20 = TokenRule::Erc20 {
            chain_id: 1,
            contract: [3; 20],
            min_balance: u128::MAX,
        };
        for rule in [erc20, token(), list(&[1, 2])] {
            assert_eq!(TokenRule::from_rule(&rule.to_rule()), Ok(rule));
        }
        let mut gating = Gating::new([token(), list(&[1])], Require::Any);
        gating.admissions.push(Admission {
            inbox: inbox(5),
            rules_digest: gating.digest(),
            evidence: vec![b"proof".to_vec()],
        });
        assert_eq!(decode_gating(&encode_gating(&gating)), Ok(gating.clone()));
        // The digest covers the rules and how they combine, not admissions.
        let mut other = gating.clone();
        other.admissions.clear();
        assert_eq!(other.digest(), gating.digest());
        other.require = Require::All;
        assert_ne!(other.digest(), gating.digest());
    }

    #[test]
    fn admits_combines_allowlists_and_admissions() {
        let all = Gating::new([token(), list(&[1])], Require::All);
        assert!(all.admits(&inbox(1), true));
        assert!(
            !all.admits(&inbox(1), false),
            "the token rule needs an admission"
        );
        assert!(
            !all.admits(&inbox(2), true),
            "the allowlist is checked by everyone"
        );
        let any = Gating::new([token(), list(&[1])], Require::Any);
        assert!(any.admits(&inbox(1), false));
        assert!(any.admits(&inbox(2), true));
        assert!(!any.admits(&inbox(2), false));
        let lists_only = Gating::new([list(&[1])], Require::Any);
        assert!(
            !lists_only.admits(&inbox(2), true),
            "an admission is no allowlist"
        );
        assert!(Gating::default().admits(&inbox(2), false), "ungated");
    }

    #[test]
    fn malformed_and_oversized_gating_is_refused() {
        let bad = GatingRule {
            kind: RULE_ERC20.into(),
            data: vec![0x12, 0x03, 1, 2, 3],
        };
        assert!(TokenRule::from_rule(&bad).is_err(), "a 3-byte contract");
        let unknown = GatingRule {
            kind: "solana-spl".into(),
            data: vec![],
        };
        assert!(TokenRule::from_rule(&unknown).is_err());
        let too_many = Gating::new((0..=MAX_GATING_RULES).map(|_| token()), Require::All);
        assert!(too_many.check_limits().is_err());
        let mut heavy = Gating::new([token()], Require::All);
        heavy.admissions.push(Admission {
            inbox: inbox(1),
            rules_digest: heavy.digest(),
            evidence: vec![vec![0; MAX_EVIDENCE_LEN + 1]],
        });
        assert!(heavy.check_limits().is_err());
        // An unknown combination does not decode.
        assert!(decode_gating(&[0x10, 0x07]).is_err());
    }
}
