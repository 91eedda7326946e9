//! Token gating is enforced by every member on every commit: a member
//! whose client was altered to skip the check (it adds an inbox with no
//! admission, or with one made for other rules) commits in vain, since
//! every other member rejects the commit; the same add with a proper
//! admission is taken by all. Allowlists are checked by every member
//! itself.

use std::collections::BTreeSet;

use kith_engine::group::{
    GroupConfig, GroupEvent, IntentKind,
    gating::{Admission, Gating, Require, TokenRule},
};
use kith_sim::world::World;

const MEMBERS: usize = 3;
/// The client outside the group that the forger adds.
const NEWCOMER: usize = 3;

/// `client` 0 (the super admin) gates the group with `gating`; the commit
/// reaches every member.
fn gate(w: &mut World, gating: &Gating) {
    w.queue(
        0,
        IntentKind::SetGating {
            rules: gating.rules.clone(),
            require: gating.require,
        },
    );
    w.advance(0, 20);
    let commit = w.outbox(0).remove(0);
    let envelope = w.env(20, 1, 11, commit.payload);
    for member in 0..MEMBERS {
        w.handle(member, &envelope, 20);
        w.advance(member, 30);
    }
    for member in 0..MEMBERS {
        assert!(w.group(member).metadata().gating.same_rules(gating));
    }
}

/// Member 2 publishes a commit that adds the newcomer with `admissions`;
/// every member handles it. Returns whether each of 0 and 1 took it.
fn forged_add(w: &mut World, admissions: Vec<Admission>, sequence: u64) -> [bool; 2] {
    let before: Vec<u64> = (0..2).map(|m| w.state(m).0).collect();
    let mut metadata = w.group(2).metadata().clone();
    metadata.membership.insert(w.clients[NEWCOMER].inbox, 1);
    metadata.gating.admissions = admissions;
    let key_package = w.clients[NEWCOMER]
        .key_package
        .clone()
        .expect("the newcomer has a key package");
    let inbox = w.clients[2].inbox;
    let keys = w.clients[2].keys.clone();
    let commit = w.clients[2]
        .step(|group, provider, _| {
            let me = kith_engine::group::Me { inbox, keys: &keys };
            Ok(group.forged_add_commit_for_tests(
                provider,
                me,
                &metadata,
                std::slice::from_ref(&key_package),
            )?)
        })
        .expect("forge the commit");
    let envelope = w.env(100 + sequence, 1, sequence, commit);
    for member in 0..MEMBERS {
        w.handle(member, &envelope, 100 + sequence);
    }
    [0, 1].map(|m| w.state(m).0 > before[m])
}

fn rejected_for_gating(w: &World, member: usize) -> bool {
    w.events(member).iter().any(|e| {
        matches!(
            e,
            GroupEvent::CommitRejected { reason } if reason.contains("gating")
        )
    })
}

#[test]
fn an_add_that_skips_the_token_check_is_rejected_by_every_member() {
    let mut w = World::at(31, 1_000_000, 4, MEMBERS, GroupConfig::default());
    let gating = Gating::new(
        [TokenRule::Erc721 {
            chain_id: 1,
            contract: [0xbc; 20],
            token_id: None,
        }],
        Require::All,
    );
    gate(&mut w, &gating);
    let newcomer = w.clients[NEWCOMER].inbox;

    // No admission at all: the check was skipped.
    assert_eq!(forged_add(&mut w, Vec::new(), 12), [false, false]);
    // An admission made against other rules (an older rule set, say).
    let stale = Admission {
        inbox: newcomer,
        rules_digest: Gating::default().digest(),
        evidence: vec![b"block 1".to_vec()],
    };
    assert_eq!(forged_add(&mut w, vec![stale], 13), [false, false]);
    for member in 0..2 {
        assert!(
            rejected_for_gating(&w, member),
            "member {member}: {:?}",
            w.events(member)
        );
        assert!(!w.group(member).members().contains_key(&newcomer));
    }

    // The same add with the verifier's admission under the rules in force
    // is taken by every member: the admission is what was missing.
    let admitted = Admission {
        inbox: newcomer,
        rules_digest: gating.digest(),
        evidence: vec![b"block 19000000: owner of token 7".to_vec()],
    };
    assert_eq!(forged_add(&mut w, vec![admitted.clone()], 14), [true, true]);
    for member in 0..2 {
        assert!(w.group(member).members().contains_key(&newcomer));
        assert_eq!(
            w.group(member).metadata().gating.admissions,
            vec![admitted.clone()]
        );
    }
}

#[test]
fn every_member_checks_the_allowlist_itself_and_admissions_only_name_added_inboxes() {
    let mut w = World::at(32, 1_000_000, 4, MEMBERS, GroupConfig::default());
    let listed = w.clients[0].inbox;
    let gating = Gating::new(
        [TokenRule::Allowlist {
            inboxes: BTreeSet::from([listed]),
        }],
        Require::All,
    );
    gate(&mut w, &gating);
    let newcomer = w.clients[NEWCOMER].inbox;
    // An admission cannot stand in for the allowlist: every member reads
    // the list itself.
    let admission = Admission {
        inbox: newcomer,
        rules_digest: gating.digest(),
        evidence: Vec::new(),
    };
    assert_eq!(forged_add(&mut w, vec![admission], 12), [false, false]);
    assert!(rejected_for_gating(&w, 0) && rejected_for_gating(&w, 1));

    // With the newcomer on the list (a change by the super admin), an add
    // that records an admission of someone it does not add is refused.
    let mut w = World::at(33, 1_000_000, 4, MEMBERS, GroupConfig::default());
    let newcomer = w.clients[NEWCOMER].inbox;
    let open = Gating::new(
        [TokenRule::Allowlist {
            inboxes: BTreeSet::from([w.clients[0].inbox, newcomer]),
        }],
        Require::All,
    );
    gate(&mut w, &open);
    let stranger = Admission {
        inbox: w.clients[1].inbox,
        rules_digest: open.digest(),
        evidence: Vec::new(),
    };
    assert_eq!(forged_add(&mut w, vec![stranger], 12), [false, false]);
    assert!(w.events(0).iter().any(|e| matches!(
        e,
        GroupEvent::CommitRejected { reason } if reason.contains("does not add")
    )));
    // And without one, the listed newcomer is let in by every member.
    assert_eq!(
        forged_add(&mut w, Vec::new(), 13),
        [true, true],
        "{:?}",
        w.events(0)
    );
    assert!(w.group(0).members().contains_key(&newcomer));
}
