//! Token gating in the client: the application's verifier, and the
//! admissions this installation records when it adds inboxes to a gated
//! group.
//!
//! Kith does not read chains. The application supplies a
//! [`GatingVerifier`] (an RPC client, an indexer, a test double), which
//! answers whether an inbox satisfies a token rule and returns evidence.
//! Only the member who adds an inbox asks it; the commit then records the
//! admission, and every other member checks the record, not the chain, so
//! that members with different chain views never disagree about a commit
//! (the reasoning is in `kith_engine::group::gating`). Allowlists are group
//! state, so every member evaluates them itself.

use std::sync::Arc;

use kith_engine::{
    group::gating::{Admission, Gating, MAX_EVIDENCE_LEN, RULE_ALLOWLIST, Require, TokenRule},
    identity::InboxId,
};

use crate::Error;

/// What a [`GatingVerifier`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatingVerdict {
    /// The inbox satisfies the rule; `evidence` (at most 1 KiB: the block
    /// read and a proof, say) is recorded in the commit for audit.
    Satisfied {
        /// Opaque to Kith.
        evidence: Vec<u8>,
    },
    /// It does not; `reason` is shown to the user who tried to add it.
    NotSatisfied {
        /// Why not.
        reason: String,
    },
}

/// The application's answer to "does this inbox satisfy this rule now?".
/// Called only by the member adding an inbox to a gated group, for each
/// token rule (never for allowlists, which Kith evaluates).
///
/// An `Err` means the verifier could not tell (its chain endpoint is down,
/// say): the add is refused with [`Error::GatingUnavailable`] and nothing
/// changes; it can be tried again.
#[async_trait::async_trait]
pub trait GatingVerifier: Send + Sync + 'static {
    /// Whether `inbox` (a wallet address) satisfies `rule`.
    async fn verify(&self, rule: &TokenRule, inbox: InboxId) -> Result<GatingVerdict, String>;
}

/// The admissions of `inboxes` under `gating`, asking `verifier` for the
/// token rules: an error names the first inbox that does not pass, and
/// nothing is recorded then.
pub(crate) async fn admit(
    verifier: Option<&Arc<dyn GatingVerifier>>,
    gating: &Gating,
    inboxes: &[InboxId],
) -> Result<Vec<Admission>, Error> {
    if !gating.is_gated() {
        return Ok(Vec::new());
    }
    let mut token_rules = Vec::new();
    for rule in gating.rules.iter().filter(|r| r.kind != RULE_ALLOWLIST) {
        token_rules.push(TokenRule::from_rule(rule).map_err(|e| {
            Error::GatingUnavailable(format!(
                "this client cannot check a rule of the group ({e}); update it"
            ))
        })?);
    }
    let rules = gating.check();
    let mut admissions = Vec::new();
    for inbox in inboxes {
        let refuse = |reason: String| Error::GatingRefused {
            inbox: *inbox,
            reason,
        };
        // Allowlists decide alone where they can: on one is enough for
        // "any", off one is too much for "all", and without token rules
        // they are all there is.
        let listed = rules.admits(inbox, gating.require == Require::All);
        match gating.require {
            Require::Any if listed => continue,
            Require::All if !listed => return Err(refuse("not on the group's allowlist".into())),
            _ => {}
        }
        if token_rules.is_empty() {
            match gating.require {
                Require::All => continue,
                Require::Any => return Err(refuse("not on the group's allowlist".into())),
            }
        }
        let verifier = verifier.ok_or_else(|| {
            Error::GatingUnavailable(
                "the group is token-gated and this client has no verifier: set one with \
                 ClientBuilder::gating_verifier"
                    .into(),
            )
        })?;
        let mut evidence = Vec::new();
        let mut reasons = Vec::new();
        for rule in &token_rules {
            match verifier
                .verify(rule, *inbox)
                .await
                .map_err(|e| Error::GatingUnavailable(format!("the gating verifier: {e}")))?
            {
                GatingVerdict::Satisfied { evidence: e } => {
                    evidence.push(e);
                    if gating.require == Require::Any {
                        break;
                    }
                }
                GatingVerdict::NotSatisfied { reason } => {
                    if gating.require == Require::All {
                        return Err(refuse(reason));
                    }
                    reasons.push(reason);
                }
            }
        }
        if evidence.is_empty() {
            return Err(refuse(reasons.join("; ")));
        }
        let len: usize = evidence.iter().map(Vec::len).sum();
        if len > MAX_EVIDENCE_LEN {
            return Err(Error::GatingUnavailable(format!(
                "the gating verifier's evidence is {len} bytes; the limit is {MAX_EVIDENCE_LEN}"
            )));
        }
        admissions.push(Admission {
            inbox: *inbox,
            rules_digest: rules.digest(),
            evidence,
        });
    }
    Ok(admissions)
}

/// Put into each add of `intents` the admissions of the inboxes it adds.
pub(crate) fn attach(intents: &mut [kith_engine::group::IntentKind], admissions: &[Admission]) {
    for intent in intents {
        if let kith_engine::group::IntentKind::AddMembers {
            sequences,
            admissions: attached,
            ..
        } = intent
        {
            *attached = admissions
                .iter()
                .filter(|a| sequences.iter().any(|(inbox, _)| *inbox == a.inbox))
                .cloned()
                .collect();
        }
    }
}
