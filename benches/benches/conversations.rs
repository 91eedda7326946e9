//! Conversations end to end through the `kith` client (actors, sled, a
//! `LocalNode` over sled), each against raw OpenMLS in memory in the same
//! run:
//!
//! - send-to-receive: one client sends, another syncs and decrypts it, vs
//!   raw encrypt plus decrypt. Every message is numbered, and after each
//!   timed round (outside its time) the receiver must have announced
//!   exactly that message, with its id and body, by the time its sync
//!   returned; the run panics otherwise;
//! - creating groups of 100 and 1,000 installations, vs raw create + add;
//! - adding one member to a 1,000-member group, vs a raw add + merge.
//!
//! Every client's periodic timers are stretched to an hour
//! (`kith_benches::stretched_timers`; the run prints a note with its
//! figures): the figures leave out periodic re-syncs and installation
//! checks.
//!
//! The other members of the big groups are "virtual" installations: real
//! identity logs and real last-resort key packages on the node, but no
//! client running for them, so that the benchmark measures the adder.

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use criterion::Criterion;
use kith::{Client, ClientConfig, Conversation, Event, GroupOptions, InboxId, LocalNode};
use kith_benches::{
    Backend as _, Member, Pair, Recorder, STRETCHED_TIMERS_NOTE, bench_recorded, bench_timed,
    key_packages, registered_client, unlimited_local_node, virtual_member,
};
use kith_engine::delivery::{Cursor, Topic};
use kith_storage::SledNodeStore;
use kith_transport::client::DeliveryClient as _;
use openmls_rust_crypto::OpenMlsRustCrypto;
use tokio_stream::Stream;

type Node = LocalNode<SledNodeStore>;

const SEND: &str = "send to receive, 100 B";

fn node(dir: &std::path::Path) -> Node {
    unlimited_local_node(dir)
}

/// The events `events` holds now, without waiting for more. Polled outside
/// the runtime, where tokio's cooperative budget cannot make a ready
/// channel look empty.
fn ready_events(events: &mut (impl Stream<Item = Event> + Unpin)) -> Vec<Event> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready = Vec::new();
    while let Poll::Ready(Some(event)) = Pin::new(&mut *events).poll_next(&mut cx) {
        ready.push(event);
    }
    ready
}

async fn client(dir: &std::path::Path, name: &str, node: &Node) -> Client {
    registered_client(dir, name, node, ClientConfig::default()).await
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let recorder = Recorder::default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = node(dir.path());

    // --- send to receive ---------------------------------------------
    let (alice, bob) = rt.block_on(async {
        (
            client(dir.path(), "alice", &node).await,
            client(dir.path(), "bob", &node).await,
        )
    });
    let (group, bob_group): (Conversation, Conversation) = rt.block_on(async {
        let group = alice
            .create_group(&[bob.inbox_id()], GroupOptions::default())
            .await
            .expect("group");
        bob.sync().await.expect("sync");
        let bob_group = bob.conversation(group.id()).await.expect("joined");
        // The first send also checks installations; keep it out of the
        // measurement.
        group.send_text("warm up").await.expect("send");
        bob_group.sync().await.expect("sync");
        (group, bob_group)
    });
    let payload = "x".repeat(100);
    // Subscribed after the warm-up, so that every message event it holds
    // is one of the timed messages.
    let mut events = bob.stream_events();
    let mut sent = 0u64;
    {
        let mut criterion_group = c.benchmark_group(SEND);
        criterion_group
            .sample_size(20)
            .measurement_time(Duration::from_secs(10));
        bench_timed(
            &mut criterion_group,
            &recorder,
            (SEND, "kith actors + sled"),
            || {
                sent += 1;
                // Numbered, so that a stale or repeated message cannot pass
                // for this one; still 100 bytes.
                let body = format!("{sent:0>100}");
                let (elapsed, id) = rt.block_on(async {
                    let start = Instant::now();
                    let id = group.send_text(&body).await.expect("send");
                    bob_group.sync().await.expect("receive");
                    (start.elapsed(), id)
                });
                let received: Vec<kith::Message> = ready_events(&mut events)
                    .into_iter()
                    .filter_map(|event| match event {
                        Event::Message(m) if m.conversation == *bob_group.id() => Some(m),
                        _ => None,
                    })
                    .collect();
                match received.as_slice() {
                    [m] if m.id == id && m.body == body.as_bytes() => {}
                    [] => panic!(
                        "message {sent} was sent but not received by the time the \
                         receiver's sync returned"
                    ),
                    other => panic!(
                        "message {sent}: expected it alone, with its body, after the \
                         receiver's sync; got {} message(s): {:?}",
                        other.len(),
                        other
                            .iter()
                            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                            .collect::<Vec<_>>()
                    ),
                }
                elapsed
            },
        );
    }
    let mut pair = Pair::new(
        OpenMlsRustCrypto::default(),
        OpenMlsRustCrypto::default(),
        b"raw pair",
        &[],
    );
    bench_recorded(
        &mut c,
        &recorder,
        (SEND, "raw openmls memory"),
        (20, Duration::from_secs(5)),
        || pair.message_round_trip(payload.as_bytes()),
    );

    // --- big groups --------------------------------------------------
    let members: Vec<InboxId> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..1_000 {
            out.push(virtual_member(&node, 0).await.0);
        }
        out
    });
    for size in [100usize, 1_000] {
        let operation = format!("create a group of {size}");
        let others = &members[..size - 1];
        bench_recorded(
            &mut c,
            &recorder,
            (&operation, "kith actors + sled"),
            (10, Duration::from_secs(30)),
            || {
                rt.block_on(async {
                    alice
                        .create_group(others, GroupOptions::default())
                        .await
                        .expect("create");
                })
            },
        );
        let packages = key_packages(size - 1);
        let creator = Member::new("creator", OpenMlsRustCrypto::default());
        let mut n = 0u64;
        bench_recorded(
            &mut c,
            &recorder,
            (&operation, "raw openmls memory"),
            (10, Duration::from_secs(10)),
            || {
                n += 1;
                creator.create_and_add(&n.to_be_bytes(), &packages);
            },
        );
    }

    // --- add one member to a 1,000-member group ----------------------
    // On a fresh node and client: the group creations above leave
    // gigabytes of Welcomes in the node's store.
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = self::node(dir.path());
    let (alice, members, installations) = rt.block_on(async {
        let alice = client(dir.path(), "alice", &node).await;
        let mut members = Vec::new();
        let mut installations = Vec::new();
        for _ in 0..1_500 {
            let (inbox, installation) = virtual_member(&node, 0).await;
            members.push(inbox);
            installations.push(installation);
        }
        (alice, members, installations)
    });
    let big = rt.block_on(async {
        alice
            .create_group(&members[..999], GroupOptions::default())
            .await
            .expect("create")
    });
    // What a joiner of a 1,000-member group receives.
    let welcome = rt.block_on(async {
        node.query(&Topic::Welcome(installations[0]), &Cursor::new(), 1)
            .await
            .expect("query")
    });
    if let Some(envelope) = welcome.envelopes.first() {
        let shared = rt.block_on(shared_bytes(&node, &envelope.payload));
        println!(
            "Welcome for a 1,000-member group: {} bytes per joiner, and {shared} bytes of \
             shared GroupInfo that every joiner of the commit reads (published once)",
            envelope.payload.len()
        );
    }
    let mut spare = members[999..].iter();
    bench_recorded(
        &mut c,
        &recorder,
        ("add one member to 1,000", "kith actors + sled"),
        (10, Duration::from_secs(10)),
        || {
            let inbox = *spare.next().expect("enough spare members");
            rt.block_on(async { big.add_members(&[inbox]).await.expect("add") })
        },
    );
    // What the first member added to it received (no other joiners'
    // secrets in it).
    let added = rt.block_on(async {
        node.query(&Topic::Welcome(installations[999]), &Cursor::new(), 1)
            .await
            .expect("query")
    });
    if let Some(envelope) = added.envelopes.first() {
        let shared = rt.block_on(shared_bytes(&node, &envelope.payload));
        println!(
            "Welcome for one member added to a 1,000-member group: {} bytes, and {shared} \
             bytes of shared GroupInfo",
            envelope.payload.len()
        );
    }
    let creator = Member::new("creator", OpenMlsRustCrypto::default());
    let mut raw_group = creator.create_and_add(b"raw big group", &key_packages(999));
    // The joiners' packages are made before the clock starts, as the Kith
    // side's are uploaded beforehand.
    let mut joiners = key_packages(600).into_iter();
    bench_recorded(
        &mut c,
        &recorder,
        ("add one member to 1,000", "raw openmls memory"),
        (10, Duration::from_secs(10)),
        || {
            let joiner = [joiners.next().expect("enough spare key packages")];
            creator.provider.step(|| {
                raw_group
                    .add_members(&creator.provider, &creator.signer, &joiner)
                    .expect("add");
                raw_group
                    .merge_pending_commit(&creator.provider)
                    .expect("merge");
            });
        },
    );
    recorder.print_ratios("raw openmls memory");
    println!("\n{SEND}: {sent} messages sent, each received once with its body");
    println!("{STRETCHED_TIMERS_NOTE}");
    c.final_summary();
}

/// The bytes of the shared GroupInfo a Welcome payload names (0 if it was
/// sent whole).
async fn shared_bytes(node: &LocalNode<SledNodeStore>, payload: &[u8]) -> usize {
    let Some(shared) = kith_engine::group::WelcomePayload::from_bytes(payload)
        .ok()
        .and_then(|w| w.shared)
    else {
        return 0;
    };
    let (mut cursor, mut bytes) = (Cursor::new(), 0);
    loop {
        let page = node
            .query(&shared.topic(), &cursor, 0)
            .await
            .expect("query");
        bytes += page
            .envelopes
            .iter()
            .map(|e| e.payload.len())
            .sum::<usize>();
        cursor = page.next_cursor;
        if !page.more {
            return bytes;
        }
    }
}
