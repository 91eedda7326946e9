//! Token gating through the public API (issue 23, item 2): a gated group
//! refuses an inbox that fails its rules (at creation and later, with
//! nothing changed), admits one that passes (every member taking the
//! commit and seeing the admission), answers allowlists without a
//! verifier, and lets only those the policies allow change the rules. A
//! commit that skips the check is refused by every member: that needs an
//! altered client, and is tested in `sim/tests/gating.rs`.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use common::{Net, joined, wallet};
use kith::{
    Client, Error, Gating, GatingVerdict, GatingVerifier, GroupOptions, InboxId, LocalWallet,
    Require, TokenRule,
};

const CHAIN: u64 = 8453;
const TOKEN: [u8; 20] = [0x42; 20];

/// A chain as a test sees it: ERC-20 balances of `TOKEN`, and a count of
/// the questions asked.
#[derive(Clone, Default)]
struct Chain {
    balances: Arc<Mutex<HashMap<InboxId, u128>>>,
    asked: Arc<Mutex<Vec<InboxId>>>,
    down: Arc<Mutex<bool>>,
    /// Never answers while set.
    hung: Arc<Mutex<bool>>,
}

#[async_trait::async_trait]
impl GatingVerifier for Chain {
    async fn verify(&self, rule: &TokenRule, inbox: InboxId) -> Result<GatingVerdict, String> {
        self.asked.lock().expect("lock").push(inbox);
        if *self.hung.lock().expect("lock") {
            return std::future::pending().await;
        }
        if *self.down.lock().expect("lock") {
            return Err("the RPC endpoint does not answer".into());
        }
        let TokenRule::Erc20 {
            chain_id,
            contract,
            min_balance,
        } = rule
        else {
            return Err(format!(
                "this chain only knows ERC-20 balances, not {rule:?}"
            ));
        };
        let balance = if (*chain_id, *contract) == (CHAIN, TOKEN) {
            self.balances
                .lock()
                .expect("lock")
                .get(&inbox)
                .copied()
                .unwrap_or(0)
        } else {
            0
        };
        Ok(if balance >= *min_balance {
            GatingVerdict::Satisfied {
                evidence: format!("block 21000000: balance {balance}").into_bytes(),
            }
        } else {
            GatingVerdict::NotSatisfied {
                reason: format!("holds {balance}, needs {min_balance}"),
            }
        })
    }
}

fn holders(min_balance: u128) -> Gating {
    Gating::new(
        [TokenRule::Erc20 {
            chain_id: CHAIN,
            contract: TOKEN,
            min_balance,
        }],
        Require::All,
    )
}

async fn client_with(net: &Net, name: &str, wallet: &LocalWallet, chain: &Chain) -> Client {
    let client = net
        .builder(name, wallet)
        .gating_verifier(chain.clone())
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_group_refuses_an_inbox_that_fails_and_admits_one_that_passes() {
    let net = Net::new();
    let chain = Chain::default();
    let alice = client_with(&net, "alice", &wallet(), &chain).await;
    let (bob, carol, dave) = (
        net.client("bob", &wallet()).await,
        net.client("carol", &wallet()).await,
        net.client("dave", &wallet()).await,
    );
    {
        let mut balances = chain.balances.lock().expect("lock");
        balances.insert(bob.inbox_id(), 500);
        balances.insert(carol.inbox_id(), 99);
        balances.insert(dave.inbox_id(), 100);
    }

    // Carol holds too little: the group is not even created.
    let refused = alice
        .create_group(
            &[bob.inbox_id(), carol.inbox_id()],
            GroupOptions::default().gating(holders(100)),
        )
        .await
        .expect_err("carol fails the rule");
    assert!(
        matches!(&refused, Error::GatingRefused { inbox, reason }
            if *inbox == carol.inbox_id() && reason.contains("needs 100")),
        "{refused:?}"
    );
    assert!(alice.conversations().await.expect("list").is_empty());

    // Bob passes.
    let group = alice
        .create_group(
            &[bob.inbox_id()],
            GroupOptions::default().gating(holders(100)),
        )
        .await
        .expect("create");
    let bobs = joined(&bob, group.id()).await;
    assert!(
        bobs.metadata()
            .await
            .expect("metadata")
            .gating
            .same_rules(&holders(100))
    );

    // Carol, later: refused, nothing changes for anyone.
    let epoch = group.epoch_state().await.expect("epoch");
    let refused = group
        .add_members(&[carol.inbox_id()])
        .await
        .expect_err("still too little");
    assert!(
        matches!(refused, Error::GatingRefused { .. }),
        "{refused:?}"
    );
    assert_eq!(group.epoch_state().await.expect("epoch"), epoch);
    assert_eq!(group.members().await.expect("members").len(), 2);

    // Dave passes: every member takes the commit, and sees the admission
    // with the verifier's evidence.
    group
        .add_members(&[dave.inbox_id()])
        .await
        .expect("add dave");
    bobs.sync().await.expect("sync");
    for view in [&group, &bobs] {
        let members: BTreeSet<InboxId> = view
            .members()
            .await
            .expect("members")
            .into_iter()
            .map(|m| m.inbox)
            .collect();
        assert!(members.contains(&dave.inbox_id()));
        let gating = view.metadata().await.expect("metadata").gating;
        assert_eq!(gating.admissions.len(), 1);
        assert_eq!(gating.admissions[0].inbox, dave.inbox_id());
        assert_eq!(gating.admissions[0].rules_digest, holders(100).digest());
        assert_eq!(
            gating.admissions[0].evidence,
            [b"block 21000000: balance 100".to_vec()]
        );
    }
    assert_eq!(
        group.epoch_state().await.expect("epoch"),
        bobs.epoch_state().await.expect("epoch"),
        "one group, one state"
    );
    joined(&dave, group.id()).await;

    // Members already in were not asked about again.
    let asked = chain.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        [
            bob.inbox_id(),
            carol.inbox_id(),
            bob.inbox_id(),
            carol.inbox_id(),
            dave.inbox_id()
        ],
        "the first creation stopped at carol; bob was asked once more for the second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answer_nothing_is_added() {
    let net = Net::new();
    let chain = Chain::default();
    let alice = client_with(&net, "alice", &wallet(), &chain).await;
    let bob = net.client("bob", &wallet()).await;
    chain
        .balances
        .lock()
        .expect("lock")
        .insert(bob.inbox_id(), 1_000);
    let group = alice
        .create_group(&[], GroupOptions::default().gating(holders(1)))
        .await
        .expect("create");

    *chain.down.lock().expect("lock") = true;
    let error = group
        .add_members(&[bob.inbox_id()])
        .await
        .expect_err("no answer");
    assert!(matches!(error, Error::GatingUnavailable(ref m) if m.contains("does not answer")));
    assert_eq!(group.members().await.expect("members").len(), 1);

    // A verifier that never answers holds the add, not the group: Alice
    // still sends, and nothing was added when she gives up.
    *chain.hung.lock().expect("lock") = true;
    let bob_inbox = [bob.inbox_id()];
    let waiting = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        group.add_members(&bob_inbox),
    );
    let (waited, sent) = tokio::join!(waiting, async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            group.send_text("the group goes on"),
        )
        .await
    });
    assert!(waited.is_err(), "the add waits for the verifier");
    sent.expect("the send is not held behind the verifier")
        .expect("a send while the verifier hangs");
    assert_eq!(group.members().await.expect("members").len(), 1);
    *chain.hung.lock().expect("lock") = false;

    // A client with no verifier at all cannot add to a token-gated group
    // (Bob, once a member, tries to add Carol).
    *chain.down.lock().expect("lock") = false;
    group.add_members(&[bob.inbox_id()]).await.expect("add bob");
    let bobs = joined(&bob, group.id()).await;
    let carol = net.client("carol", &wallet()).await;
    let error = bobs
        .add_members(&[carol.inbox_id()])
        .await
        .expect_err("no verifier");
    assert!(
        matches!(error, Error::GatingUnavailable(ref m) if m.contains("gating_verifier")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_need_no_verifier_and_rules_change_under_the_policy() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let carol = net.client("carol", &wallet()).await;
    let only_bob = Gating::new(
        [TokenRule::Allowlist {
            inboxes: BTreeSet::from([bob.inbox_id()]),
        }],
        Require::All,
    );
    let group = alice
        .create_group(&[bob.inbox_id()], GroupOptions::default().gating(only_bob))
        .await
        .expect("bob is on the list");
    let bobs = joined(&bob, group.id()).await;
    let refused = group
        .add_members(&[carol.inbox_id()])
        .await
        .expect_err("carol is not");
    assert!(
        matches!(&refused, Error::GatingRefused { inbox, reason }
            if *inbox == carol.inbox_id() && reason.contains("allowlist")),
        "{refused:?}"
    );

    // Bob is no super admin: the default policy keeps the rules from him.
    let with_carol = Gating::new(
        [TokenRule::Allowlist {
            inboxes: BTreeSet::from([bob.inbox_id(), carol.inbox_id()]),
        }],
        Require::All,
    );
    assert!(matches!(
        bobs.set_gating(with_carol.clone()).await,
        Err(Error::NotPermitted(_))
    ));
    // Alice is: the new rules reach Bob, and Carol can be added.
    group.set_gating(with_carol.clone()).await.expect("set");
    bobs.sync().await.expect("sync");
    assert!(
        bobs.metadata()
            .await
            .expect("metadata")
            .gating
            .same_rules(&with_carol)
    );
    bobs.add_members(&[carol.inbox_id()])
        .await
        .expect("bob adds carol");
    joined(&carol, group.id()).await;
    assert_eq!(group.members().await.expect("members").len(), 3);
}
