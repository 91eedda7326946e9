//! Token gating: [`Gating`] (a group's rules, how they combine, and the
//! admissions its last add recorded), each rule a [`TokenRule`], and the
//! foreign [`GatingVerifier`] that answers token rules when this client
//! adds an inbox to a gated group.
//!
//! Values `kith` holds in fixed sizes or wider integers cross as what
//! every language has: a contract as its 20 bytes, an ERC-721 token id as
//! its 32 bytes (big-endian), an ERC-20 minimum balance (a `u128`) as a
//! decimal string. Each is checked when it comes back in, and a bad one is
//! `KithError::InvalidInput`.

use std::{collections::BTreeSet, sync::Arc};

use kith::InboxId;
use kith_engine::group::gating::GatingRule;

use crate::{
    KithError, VerifierError,
    types::{fixed_bytes, parse_inboxes},
};

/// A group's gating; `kith::Gating`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Gating {
    /// The rules; none: the group is not gated.
    pub rules: Vec<TokenRule>,
    /// How they combine.
    pub require: Require,
    /// The admissions recorded by the last commit that added inboxes to
    /// the group. Read only: ignored when gating is set.
    #[uniffi(default)]
    pub admissions: Vec<Admission>,
}

/// One gating rule; `kith::TokenRule`, and `Unknown` for a rule of a kind
/// this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TokenRule {
    /// Holds at least `min_balance` of the ERC-20 token at `contract` on
    /// chain `chain_id`.
    Erc20 {
        /// The EIP-155 chain id.
        chain_id: u64,
        /// The token contract (20 bytes).
        contract: Vec<u8>,
        /// The least balance, in the token's smallest unit: a decimal
        /// integer below 2^128, e.g. `"100000000000000000000"`.
        min_balance: String,
    },
    /// Owns a token of the ERC-721 collection at `contract` on chain
    /// `chain_id`.
    Erc721 {
        /// The EIP-155 chain id.
        chain_id: u64,
        /// The collection contract (20 bytes).
        contract: Vec<u8>,
        /// One token in particular (32 bytes, big-endian); none: any
        /// token of the collection.
        token_id: Option<Vec<u8>>,
    },
    /// Is one of these inboxes. Every member checks it itself; it needs
    /// no verifier.
    Allowlist {
        /// The inboxes.
        inbox_ids: Vec<String>,
    },
    /// A rule of a kind this version does not know (a newer client set
    /// it), kept as it came so that setting the gating back keeps it.
    /// Adding an inbox to a group with one fails with
    /// `KithError::GatingUnavailable`.
    Unknown {
        /// The rule's kind.
        kind: String,
        /// Its parameters, in the kind's encoding.
        data: Vec<u8>,
    },
}

/// How a group's rules combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Require {
    /// An inbox must satisfy every rule.
    All,
    /// An inbox must satisfy at least one rule.
    Any,
}

/// The record, in a commit, that an inbox it added satisfied the group's
/// token rules.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Admission {
    /// The inbox admitted.
    pub inbox_id: String,
    /// The SHA-256 digest of the rules it was checked against (32 bytes).
    pub rules_digest: Vec<u8>,
    /// The verifier's evidence, one entry per rule it answered for.
    pub evidence: Vec<Vec<u8>>,
}

/// A [`GatingVerifier`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum GatingVerdict {
    /// The inbox satisfies the rule; `evidence` (at most 1 KiB in all,
    /// e.g. the block read and a proof) is recorded in the commit.
    Satisfied {
        /// Opaque to Kith.
        evidence: Vec<u8>,
    },
    /// It does not; `reason` is shown to the user who tried to add it
    /// (in `KithError.GatingRefused`).
    NotSatisfied {
        /// Why not.
        reason: String,
    },
}

/// The application's answer to "does this inbox satisfy this token rule
/// now?" (an RPC client, an indexer). Called only when this client adds
/// inboxes to a gated group, once per inbox and token rule, never for
/// allowlists. It is called on a thread of its own, so it may block on
/// the network.
#[uniffi::export(with_foreign)]
pub trait GatingVerifier: Send + Sync {
    /// Whether `inbox_id` (a wallet address) satisfies `rule` (never an
    /// `Allowlist` or `Unknown` rule). Raise `VerifierError.Unavailable`
    /// when it cannot tell.
    fn verify(&self, rule: TokenRule, inbox_id: String) -> Result<GatingVerdict, VerifierError>;
}

/// A foreign [`GatingVerifier`] as `kith` sees it.
pub(crate) struct ForeignVerifier(pub(crate) Arc<dyn GatingVerifier>);

#[async_trait::async_trait]
impl kith::GatingVerifier for ForeignVerifier {
    async fn verify(
        &self,
        rule: &kith::TokenRule,
        inbox: InboxId,
    ) -> Result<kith::GatingVerdict, String> {
        let verifier = Arc::clone(&self.0);
        let rule = TokenRule::from(rule.clone());
        // The foreign call may block on the network; keep it off the
        // workers.
        let verdict = tokio::task::spawn_blocking(move || verifier.verify(rule, inbox.to_string()))
            .await
            .map_err(|e| format!("the verifier did not return: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(verdict.into())
    }
}

impl From<GatingVerdict> for kith::GatingVerdict {
    fn from(v: GatingVerdict) -> Self {
        match v {
            GatingVerdict::Satisfied { evidence } => Self::Satisfied { evidence },
            GatingVerdict::NotSatisfied { reason } => Self::NotSatisfied { reason },
        }
    }
}

impl From<kith::Gating> for Gating {
    fn from(g: kith::Gating) -> Self {
        Self {
            rules: g.rules.iter().map(TokenRule::from_rule).collect(),
            require: g.require.into(),
            admissions: g.admissions.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<Gating> for kith::Gating {
    type Error = KithError;

    /// Fails on a rule that does not convert; admissions are left out.
    fn try_from(g: Gating) -> Result<Self, KithError> {
        Ok(Self {
            rules: g
                .rules
                .into_iter()
                .map(TokenRule::into_rule)
                .collect::<Result<_, _>>()?,
            require: g.require.into(),
            admissions: Vec::new(),
        })
    }
}

impl TokenRule {
    /// The rule a group carries, typed where this version knows its kind.
    fn from_rule(rule: &GatingRule) -> Self {
        match kith::TokenRule::from_rule(rule) {
            Ok(typed) => typed.into(),
            Err(_) => Self::Unknown {
                kind: rule.kind.clone(),
                data: rule.data.clone(),
            },
        }
    }

    /// The rule as a group carries it.
    fn into_rule(self) -> Result<GatingRule, KithError> {
        match self {
            Self::Unknown { kind, data } => Ok(GatingRule { kind, data }),
            typed => Ok(kith::TokenRule::try_from(typed)?.to_rule()),
        }
    }
}

impl From<kith::TokenRule> for TokenRule {
    fn from(rule: kith::TokenRule) -> Self {
        match rule {
            kith::TokenRule::Erc20 {
                chain_id,
                contract,
                min_balance,
            } => Self::Erc20 {
                chain_id,
                contract: contract.to_vec(),
                min_balance: min_balance.to_string(),
            },
            kith::TokenRule::Erc721 {
                chain_id,
                contract,
                token_id,
            } => Self::Erc721 {
                chain_id,
                contract: contract.to_vec(),
                token_id: token_id.map(|t| t.to_vec()),
            },
            kith::TokenRule::Allowlist { inboxes } => Self::Allowlist {
                inbox_ids: inboxes.iter().map(ToString::to_string).collect(),
            },
        }
    }
}

impl TryFrom<TokenRule> for kith::TokenRule {
    type Error = KithError;

    /// Fails on a contract, token id, balance or inbox that does not
    /// convert, and on an `Unknown` rule, which has no typed form.
    fn try_from(rule: TokenRule) -> Result<Self, KithError> {
        Ok(match rule {
            TokenRule::Erc20 {
                chain_id,
                contract,
                min_balance,
            } => Self::Erc20 {
                chain_id,
                contract: fixed_bytes("a token contract", &contract)?,
                min_balance: min_balance.parse().map_err(|_| {
                    KithError::InvalidInput(format!(
                        "an ERC-20 min_balance is a decimal integer from 0 to 2^128 - 1, \
                         not {min_balance:?}"
                    ))
                })?,
            },
            TokenRule::Erc721 {
                chain_id,
                contract,
                token_id,
            } => Self::Erc721 {
                chain_id,
                contract: fixed_bytes("a token contract", &contract)?,
                token_id: token_id
                    .map(|t| fixed_bytes("an ERC-721 token id", &t))
                    .transpose()?,
            },
            TokenRule::Allowlist { inbox_ids } => Self::Allowlist {
                inboxes: parse_inboxes(&inbox_ids)?
                    .into_iter()
                    .collect::<BTreeSet<_>>(),
            },
            TokenRule::Unknown { kind, .. } => {
                return Err(KithError::InvalidInput(format!(
                    "a gating rule of kind {kind:?} has no typed form"
                )));
            }
        })
    }
}

impl From<kith::Require> for Require {
    fn from(r: kith::Require) -> Self {
        match r {
            kith::Require::All => Self::All,
            kith::Require::Any => Self::Any,
        }
    }
}

impl From<Require> for kith::Require {
    fn from(r: Require) -> Self {
        match r {
            Require::All => Self::All,
            Require::Any => Self::Any,
        }
    }
}

impl From<kith_engine::group::gating::Admission> for Admission {
    fn from(a: kith_engine::group::gating::Admission) -> Self {
        Self {
            inbox_id: a.inbox.to_string(),
            rules_digest: a.rules_digest.to_vec(),
            evidence: a.evidence,
        }
    }
}
