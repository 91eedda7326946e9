//! The node over real gRPC on a loopback port, on a sled store: every RPC's
//! normal path and the rejections of bad input, signatures, MACs,
//! timestamps and rate limits.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use kith_engine::identity::{
    InstallationKeys, LocalWallet, UnsignedIdentityUpdate, generate_deniable_key_package,
    generate_key_package, upload_key, upload_tag,
};
use kith_storage::SledNodeStore;
use kith_transport::{
    convert,
    node::{
        Clock, NodeConfig, NodeLogic, RETRY_AFTER_METADATA, deniable_fetch_bytes,
        deniable_upload_bytes, fetch_signed_bytes, serve, upload_signed_bytes,
    },
    proto::{self, node_client::NodeClient},
};
use openmls::prelude::MlsMessageOut;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::oneshot;
use tokio_stream::StreamExt as _;
use tonic::{Code, transport::Channel};

/// A clock the test moves by hand, starting at the real time (so that the
/// key packages OpenMLS checks against the system clock are valid).
#[derive(Debug)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

struct Node {
    client: NodeClient<Channel>,
    endpoint: String,
    clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledNodeStore::open(dir.path().join("node")).expect("open store");
        let clock = Arc::new(ManualClock(AtomicU64::new(system_now_ms())));
        let logic = Arc::new(NodeLogic::with_clock(
            NodeConfig::new(7),
            store,
            clock.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(listener, logic, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        let endpoint = format!("http://{address}");
        let client = NodeClient::connect(endpoint.clone())
            .await
            .expect("connect");
        Self {
            client,
            endpoint,
            clock,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.expect("server stopped cleanly");
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The node's static X25519 key, from `GetNodeInfo`.
    async fn static_key(&mut self) -> [u8; 32] {
        self.client
            .get_node_info(proto::GetNodeInfoRequest {})
            .await
            .expect("node info")
            .into_inner()
            .static_key
            .try_into()
            .expect("a 32-byte static key")
    }

    async fn deniable_left(&mut self, who: &Identity) -> u32 {
        let node_key = self.static_key().await;
        let now = self.now();
        self.client
            .upload_deniable_key_packages(who.deniable_upload(&node_key, vec![], None, now))
            .await
            .expect("count")
            .into_inner()
            .one_time_available
    }
}

fn envelope(topic: &str, payload: &[u8]) -> proto::PublishedEnvelope {
    proto::PublishedEnvelope {
        topic: topic.into(),
        payload: payload.to_vec(),
    }
}

async fn publish(
    client: &mut NodeClient<Channel>,
    envelopes: Vec<proto::PublishedEnvelope>,
) -> Result<Vec<proto::Envelope>, tonic::Status> {
    client
        .publish_envelopes(proto::PublishEnvelopesRequest { envelopes })
        .await
        .map(|r| r.into_inner().envelopes)
}

async fn query_all(client: &mut NodeClient<Channel>, topic: &str) -> Vec<proto::Envelope> {
    client
        .query_envelopes(proto::QueryEnvelopesRequest {
            topic: topic.into(),
            cursor: None,
            limit: 0,
        })
        .await
        .expect("query")
        .into_inner()
        .envelopes
}

const GROUP: &str = "group/0a0b";

#[tokio::test]
async fn publish_query_and_page() {
    let mut node = Node::start().await;
    let stored = publish(
        &mut node.client,
        (0..5u8).map(|i| envelope(GROUP, &[i])).collect(),
    )
    .await
    .expect("publish");
    assert_eq!(stored.len(), 5);
    assert!(stored.iter().all(|e| e.originator_node_id == 7));
    assert_eq!(
        stored
            .iter()
            .map(|e| e.originator_sequence_id)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );

    // Page two at a time with the returned cursor.
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = node
            .client
            .query_envelopes(proto::QueryEnvelopesRequest {
                topic: GROUP.into(),
                cursor: cursor.clone(),
                limit: 2,
            })
            .await
            .expect("query")
            .into_inner();
        seen.extend(page.envelopes.iter().map(|e| e.payload[0]));
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert!(query_all(&mut node.client, "group/ffff").await.is_empty());

    let info = node
        .client
        .get_node_info(proto::GetNodeInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, 7);
    assert_eq!(info.consistency_mode, proto::ConsistencyMode::Strong as i32);
    assert_eq!(
        info.limits.expect("limits").max_envelope_bytes,
        2 * 1024 * 1024
    );
    node.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer_standard_tools() {
    let node = Node::start().await;
    let channel = tonic::transport::Channel::from_shared(node.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kith.v1.Node".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("an answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"kith.v1.Node".to_owned()), "{names:?}");

    // The older protocol too, which Python's grpc_reflection client speaks.
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let channel = Channel::from_shared(node.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("v1alpha reflection is served")
            .into_inner();
        let response = responses.next().await.expect("an answer").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("expected a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"kith.v1.Node".to_owned()), "{names:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn bad_envelopes_are_rejected_and_store_nothing() {
    let mut node = Node::start().await;
    let status = publish(&mut node.client, vec![]).await.expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);

    // One bad topic spoils the batch: nothing of it is stored.
    let status = publish(
        &mut node.client,
        vec![envelope(GROUP, b"ok"), envelope("chat/room", b"bad")],
    )
    .await
    .expect_err("bad topic");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("envelope 1"),
        "{}",
        status.message()
    );
    assert!(query_all(&mut node.client, GROUP).await.is_empty());

    let big = vec![0u8; 2 * 1024 * 1024 + 1];
    let status = publish(&mut node.client, vec![envelope(GROUP, &big)])
        .await
        .expect_err("too big");
    assert_eq!(status.code(), Code::ResourceExhausted);

    let many = (0..1_001).map(|_| envelope(GROUP, b"x")).collect();
    let status = publish(&mut node.client, many).await.expect_err("too many");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(query_all(&mut node.client, GROUP).await.is_empty());

    // Bytes that are not a PublishEnvelopesRequest: field 1 sent as a
    // varint where the schema has a message.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bogus {
        #[prost(uint64, tag = "1")]
        envelopes: u64,
    }
    let channel = tonic::transport::Channel::from_shared(node.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    let status = raw
        .unary::<Bogus, proto::PublishEnvelopesResponse, _>(
            tonic::Request::new(Bogus { envelopes: 7 }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/kith.v1.Node/PublishEnvelopes"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("malformed protobuf");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(query_all(&mut node.client, GROUP).await.is_empty());

    let status = node
        .client
        .query_envelopes(proto::QueryEnvelopesRequest {
            topic: "group/XYZ".into(),
            cursor: None,
            limit: 0,
        })
        .await
        .expect_err("bad topic");
    assert_eq!(status.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test]
async fn concurrent_publishers_reach_a_subscriber_exactly_once() {
    let node = Node::start().await;
    const PUBLISHERS: u8 = 4;
    const EACH: u8 = 50;
    // Some envelopes exist before the subscription, more race with it.
    let mut client = node.client.clone();
    publish(&mut client, vec![envelope(GROUP, &[255, 0])])
        .await
        .expect("publish");

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut client = node.client.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    publish(&mut client, vec![envelope(GROUP, &[p, i])])
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    let mut stream = node
        .client
        .clone()
        .subscribe_envelopes(proto::SubscribeEnvelopesRequest {
            topics: vec![proto::TopicCursor {
                topic: GROUP.into(),
                cursor: None,
            }],
        })
        .await
        .expect("subscribe")
        .into_inner();
    let expected = 1 + usize::from(PUBLISHERS) * usize::from(EACH);
    let mut received = Vec::new();
    while received.len() < expected {
        let batch = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {expected}", received.len()))
            .expect("stream open")
            .expect("batch");
        received.extend(batch.envelopes);
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let sequences: Vec<u64> = received.iter().map(|e| e.originator_sequence_id).collect();
    let mut sorted = sequences.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), expected, "no duplicate");
    assert_eq!(sorted, (1..=expected as u64).collect::<Vec<_>>(), "no gap");
    // Nothing more arrives: the next envelope on the stream is one published
    // after all of them, not a repeat.
    publish(&mut client, vec![envelope(GROUP, &[254, 0])])
        .await
        .expect("publish the marker");
    let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the marker arrives")
        .expect("stream open")
        .expect("batch");
    let payloads: Vec<&[u8]> = next
        .envelopes
        .iter()
        .map(|e| e.payload.as_slice())
        .collect();
    assert_eq!(payloads, [[254u8, 0].as_slice()], "only the marker follows");
    assert_eq!(
        next.envelopes[0].originator_sequence_id,
        expected as u64 + 1
    );
    // Shutting the node down ends the open subscription instead of waiting
    // for it forever.
    node.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends on shutdown");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no more envelopes after shutdown"
    );
}

struct Identity {
    wallet: LocalWallet,
    keys: InstallationKeys,
}

impl Identity {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        Self {
            wallet: LocalWallet::generate(&mut rng),
            keys: InstallationKeys::generate(&mut rng),
        }
    }

    fn add_update(&self, sequence: u64, time_ms: u64) -> proto::IdentityUpdate {
        let request = UnsignedIdentityUpdate::add_installation(
            self.wallet.inbox_id(),
            &self.keys,
            sequence,
            time_ms,
        );
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        convert::identity_update_to_proto(&request.sign(signature, Some(&self.keys)))
            .expect("to proto")
    }

    /// Another installation of the same inbox.
    fn second_installation(&self, seed: u64) -> Self {
        Self {
            wallet: self.wallet.clone(),
            keys: InstallationKeys::generate(&mut ChaCha20Rng::seed_from_u64(seed)),
        }
    }

    async fn register(&self, node: &mut Node) {
        self.register_as(node, 1).await;
    }

    async fn register_as(&self, node: &mut Node, sequence: u64) {
        let update = self.add_update(sequence, node.now());
        node.client
            .publish_identity_update(proto::PublishIdentityUpdateRequest {
                update: Some(update),
            })
            .await
            .expect("register installation");
    }

    fn key_package(&self, last_resort: bool) -> Vec<u8> {
        self.key_package_made_at(system_now_ms() / 1000, last_resort)
    }

    fn key_package_made_at(&self, now_secs: u64, last_resort: bool) -> Vec<u8> {
        let provider = OpenMlsRustCrypto::default();
        let kp = generate_key_package(
            &provider,
            &self.keys,
            self.wallet.inbox_id(),
            now_secs,
            30 * 24 * 3600,
            last_resort,
        )
        .expect("key package");
        MlsMessageOut::from(kp).to_bytes().expect("serialise")
    }

    fn upload(
        &self,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> proto::UploadKeyPackagesRequest {
        let signed = upload_signed_bytes(now, &self.keys.id(), &one_time, last_resort.as_deref());
        proto::UploadKeyPackagesRequest {
            installation_id: self.keys.id().as_bytes().to_vec(),
            one_time,
            last_resort,
            timestamp_ms: now,
            signature: self.keys.sign(&signed).to_vec(),
        }
    }

    fn deniable_package(&self, last_resort: bool) -> Vec<u8> {
        let provider = OpenMlsRustCrypto::default();
        let made = generate_deniable_key_package(
            &provider,
            &mut rand_core::OsRng,
            system_now_ms() / 1000,
            30 * 24 * 3600,
            last_resort,
        )
        .expect("deniable key package");
        MlsMessageOut::from(made.key_package)
            .to_bytes()
            .expect("serialise")
    }

    /// The MAC key this installation shares with the node whose static key
    /// is `node_key`.
    fn mac_key(&self, node_key: &[u8; 32]) -> [u8; 32] {
        *upload_key(self.keys.identity_secret(), node_key).expect("mac key")
    }

    fn deniable_upload(
        &self,
        node_key: &[u8; 32],
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        now: u64,
    ) -> proto::UploadDeniableKeyPackagesRequest {
        let inbox = self.wallet.inbox_id();
        let macd = deniable_upload_bytes(
            now,
            &inbox,
            &self.keys.id(),
            &one_time,
            last_resort.as_deref(),
        );
        proto::UploadDeniableKeyPackagesRequest {
            inbox: inbox.as_bytes().to_vec(),
            installation_id: self.keys.id().as_bytes().to_vec(),
            one_time,
            last_resort,
            timestamp_ms: now,
            mac: upload_tag(&self.mac_key(node_key), &macd).to_vec(),
        }
    }

    fn deniable_fetch(
        &self,
        node_key: &[u8; 32],
        target: &Identity,
        now: u64,
    ) -> proto::FetchDeniableKeyPackagesRequest {
        let (inbox, target) = (self.wallet.inbox_id(), target.wallet.inbox_id());
        let macd = deniable_fetch_bytes(now, &inbox, &self.keys.id(), &target);
        proto::FetchDeniableKeyPackagesRequest {
            inbox: target.as_bytes().to_vec(),
            requester_inbox: inbox.as_bytes().to_vec(),
            requester_installation_id: self.keys.id().as_bytes().to_vec(),
            timestamp_ms: now,
            mac: upload_tag(&self.mac_key(node_key), &macd).to_vec(),
        }
    }

    fn fetch(&self, targets: &[&Identity], now: u64) -> proto::FetchKeyPackagesRequest {
        let ids: Vec<_> = targets.iter().map(|t| t.keys.id()).collect();
        let signed = fetch_signed_bytes(now, &self.wallet.inbox_id(), &self.keys.id(), &ids);
        proto::FetchKeyPackagesRequest {
            installation_ids: ids.iter().map(|id| id.as_bytes().to_vec()).collect(),
            requester_installation_id: self.keys.id().as_bytes().to_vec(),
            timestamp_ms: now,
            signature: self.keys.sign(&signed).to_vec(),
            requester_inbox: self.wallet.inbox_id().as_bytes().to_vec(),
        }
    }
}

#[tokio::test]
async fn identity_updates_are_verified_stored_and_served() {
    let mut node = Node::start().await;
    let alice = Identity::new(1);
    let bob = Identity::new(2);
    alice.register(&mut node).await;

    // A replay of the same update: refused, and the log is unchanged.
    let status = node
        .client
        .publish_identity_update(proto::PublishIdentityUpdateRequest {
            update: Some(alice.add_update(1, node.now())),
        })
        .await
        .expect_err("replay");
    assert_eq!(status.code(), Code::FailedPrecondition);

    // Signed by another wallet: unauthenticated.
    // Bob's wallet signs "alice's" next update.
    let mut forged = bob.add_update(2, node.now());
    forged.inbox = alice.wallet.inbox_id().as_bytes().to_vec();
    let status = node
        .client
        .publish_identity_update(proto::PublishIdentityUpdateRequest {
            update: Some(forged),
        })
        .await
        .expect_err("forged");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Malformed.
    let mut short = bob.add_update(1, node.now());
    short.installation_key.pop();
    let status = node
        .client
        .publish_identity_update(proto::PublishIdentityUpdateRequest {
            update: Some(short),
        })
        .await
        .expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);

    bob.register(&mut node).await;
    let answer = node
        .client
        .get_identity_updates(proto::GetIdentityUpdatesRequest {
            inboxes: vec![
                proto::InboxCursor {
                    inbox: alice.wallet.inbox_id().as_bytes().to_vec(),
                    after_sequence: 0,
                },
                proto::InboxCursor {
                    inbox: bob.wallet.inbox_id().as_bytes().to_vec(),
                    after_sequence: 1,
                },
            ],
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(answer.inboxes.len(), 2);
    assert_eq!(answer.inboxes[0].updates.len(), 1);
    assert_eq!(answer.inboxes[0].updates[0].sequence, 1);
    assert!(
        answer.inboxes[1].updates.is_empty(),
        "bob has nothing after 1"
    );

    let too_many = (0..10_001)
        .map(|_| proto::InboxCursor {
            inbox: vec![0; 20],
            after_sequence: 0,
        })
        .collect();
    let status = node
        .client
        .get_identity_updates(proto::GetIdentityUpdatesRequest { inboxes: too_many })
        .await
        .expect_err("too many");
    assert_eq!(status.code(), Code::ResourceExhausted);
    node.stop().await;
}

#[tokio::test]
async fn key_packages_are_uploaded_fetched_once_then_last_resort() {
    let mut node = Node::start().await;
    let alice = Identity::new(3);
    let bob = Identity::new(4);
    alice.register(&mut node).await;
    bob.register(&mut node).await;

    let one_time = vec![bob.key_package(false), bob.key_package(false)];
    let last_resort = bob.key_package(true);
    let left = node
        .client
        .upload_key_packages(bob.upload(one_time.clone(), Some(last_resort.clone()), node.now()))
        .await
        .expect("upload")
        .into_inner()
        .one_time_available;
    assert_eq!(left, 2);

    let mut handed_out = Vec::new();
    for _ in 0..3 {
        let answer = node
            .client
            .fetch_key_packages(alice.fetch(&[&bob], node.now()))
            .await
            .expect("fetch")
            .into_inner();
        handed_out.push(answer.key_packages[0].clone());
    }
    assert_eq!(handed_out[0].key_package.as_ref(), Some(&one_time[0]));
    assert_eq!(handed_out[1].key_package.as_ref(), Some(&one_time[1]));
    assert!(!handed_out[0].last_resort && !handed_out[1].last_resort);
    assert_eq!(handed_out[2].key_package.as_ref(), Some(&last_resort));
    assert!(
        handed_out[2].last_resort,
        "empty pool: the last-resort package, marked"
    );

    // The owner reads its count with an empty upload.
    let left = node
        .client
        .upload_key_packages(bob.upload(vec![], None, node.now()))
        .await
        .expect("count")
        .into_inner()
        .one_time_available;
    assert_eq!(left, 0);
    node.stop().await;
}

#[tokio::test]
async fn bad_uploads_and_fetches_are_rejected() {
    let mut node = Node::start().await;
    let alice = Identity::new(5);
    let bob = Identity::new(6);
    let mallory = Identity::new(7);
    alice.register(&mut node).await;
    bob.register(&mut node).await;
    let now = node.now();

    // Bad signature.
    let mut upload = bob.upload(vec![bob.key_package(false)], None, now);
    upload.signature[0] ^= 1;
    let status = node
        .client
        .upload_key_packages(upload)
        .await
        .expect_err("bad signature");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Stale timestamp (6 minutes old).
    let stale = bob.upload(vec![bob.key_package(false)], None, now - 6 * 60 * 1000);
    let status = node
        .client
        .upload_key_packages(stale)
        .await
        .expect_err("stale");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Mallory uploads her own package as Bob's: it names another
    // installation than the signer.
    let mut theft = mallory.upload(vec![mallory.key_package(false)], None, now);
    theft.installation_id = bob.keys.id().as_bytes().to_vec();
    let status = node
        .client
        .upload_key_packages(theft)
        .await
        .expect_err("theft");
    assert_eq!(status.code(), Code::Unauthenticated);

    // An unregistered installation's package.
    let status = node
        .client
        .upload_key_packages(mallory.upload(vec![mallory.key_package(false)], None, now))
        .await
        .expect_err("unregistered");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Garbage bytes and a one-time package in the last-resort slot.
    let status = node
        .client
        .upload_key_packages(bob.upload(vec![b"garbage".to_vec()], None, now))
        .await
        .expect_err("garbage");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = node
        .client
        .upload_key_packages(bob.upload(vec![], Some(bob.key_package(false)), now))
        .await
        .expect_err("not last resort");
    assert_eq!(status.code(), Code::InvalidArgument);
    // An expired package (made 100 days ago, valid for 30).
    let expired = bob.key_package_made_at(now / 1000 - 100 * 24 * 3600, false);
    let status = node
        .client
        .upload_key_packages(bob.upload(vec![expired], None, now))
        .await
        .expect_err("expired");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A package without the Kith capabilities (a plain OpenMLS one, with a
    // Basic credential and Bob's key), in an otherwise valid upload.
    let plain = {
        use openmls::prelude::*;
        let provider = OpenMlsRustCrypto::default();
        let kp = KeyPackage::builder()
            .build(
                Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
                &provider,
                &bob.keys,
                CredentialWithKey {
                    credential: BasicCredential::new(b"bob".to_vec()).into(),
                    signature_key: bob.keys.id().as_bytes().to_vec().into(),
                },
            )
            .expect("plain key package");
        MlsMessageOut::from(kp.key_package().clone())
            .to_bytes()
            .expect("serialise")
    };
    let status = node
        .client
        .upload_key_packages(bob.upload(vec![bob.key_package(false), plain], None, now))
        .await
        .expect_err("no Kith capabilities");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("key package 1"),
        "{}",
        status.message()
    );

    let left = node
        .client
        .upload_key_packages(bob.upload(vec![], None, now))
        .await
        .expect("count")
        .into_inner()
        .one_time_available;
    assert_eq!(left, 0, "no rejected upload stored anything");

    // Fetches: unregistered requester, bad signature, wrong id length.
    let status = node
        .client
        .fetch_key_packages(mallory.fetch(&[&bob], now))
        .await
        .expect_err("unregistered requester");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut forged = alice.fetch(&[&bob], now);
    forged.timestamp_ms += 1;
    let status = node
        .client
        .fetch_key_packages(forged)
        .await
        .expect_err("forged");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut short = alice.fetch(&[&bob], now);
    short.installation_ids[0].pop();
    let status = node
        .client
        .fetch_key_packages(short)
        .await
        .expect_err("short id");
    assert_eq!(status.code(), Code::InvalidArgument);
    node.stop().await;
}

/// The retry-after a rate-limited fetch carries.
fn retry_after(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .expect("retry-after metadata")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

/// Fetch `victim` as `who` until refused (at most 100 times); returns how
/// many fetches got through and the refusal.
async fn fetch_until_refused(
    node: &mut Node,
    who: &Identity,
    victim: &Identity,
) -> (usize, Option<tonic::Status>) {
    let mut got = 0;
    for _ in 0..100 {
        match node
            .client
            .fetch_key_packages(who.fetch(&[victim], node.now()))
            .await
        {
            Ok(_) => got += 1,
            Err(status) => return (got, Some(status)),
        }
    }
    (got, None)
}

/// With the default limits, one requester takes at most its pair's share
/// of a victim's packages (burst 5, 2 a minute), so others can still add
/// the victim; all requesters together take at most the victim's own
/// allowance (burst 20, 10 a minute), so the pool is never drained at once.
#[tokio::test]
async fn no_requester_drains_a_victims_pool_or_starves_other_adders() {
    let mut node = Node::start().await;
    let attacker = Identity::new(8);
    let victim = Identity::new(9);
    let honest = Identity::new(10);
    let sybils: Vec<Identity> = (11..14).map(Identity::new).collect();
    for who in [&attacker, &victim, &honest].into_iter().chain(&sybils) {
        who.register(&mut node).await;
    }
    let pool: Vec<Vec<u8>> = (0..40).map(|_| victim.key_package(false)).collect();
    node.client
        .upload_key_packages(victim.upload(pool, Some(victim.key_package(true)), node.now()))
        .await
        .expect("upload");

    // The attacker fetches as fast as it can, with the clock frozen: its
    // pair bucket stops it at 5, and says when to come back.
    let (got, refused) = fetch_until_refused(&mut node, &attacker, &victim).await;
    assert_eq!(got, 5);
    let status = refused.expect("the attacker was refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let wait = retry_after(&status);
    assert!(wait > 0 && wait <= 30_000, "{wait}");
    // Someone else still adds the victim, with a one-time package.
    let answer = node
        .client
        .fetch_key_packages(honest.fetch(&[&victim], node.now()))
        .await
        .expect("an honest fetch is not starved")
        .into_inner();
    assert!(!answer.key_packages[0].last_resort);

    // Many requesters at once meet the victim's own bucket: 6 of its 20
    // are spent, the sybils get 14 between them, and then nobody gets any.
    let mut taken = 0;
    for sybil in &sybils {
        taken += fetch_until_refused(&mut node, sybil, &victim).await.0;
    }
    assert_eq!(taken, 14);
    let status = node
        .client
        .fetch_key_packages(honest.fetch(&[&victim], node.now()))
        .await
        .expect_err("the victim's allowance is spent");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(retry_after(&status) > 0);

    // A minute later the attacker gets its pair's refill, 2.
    node.clock.0.fetch_add(60_000, Ordering::SeqCst);
    assert_eq!(
        fetch_until_refused(&mut node, &attacker, &victim).await.0,
        2
    );
    node.stop().await;
}

/// A fetch that names more targets than a requester may ever fetch at once
/// can never pass: it is refused with no retry-after and a message that
/// says to split it. Over the batch limit is RESOURCE_EXHAUSTED too, like
/// every limit. Targets without packages cost nothing.
#[tokio::test]
async fn oversized_fetches_say_to_split_and_unknown_targets_cost_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(7);
    config.limits.fetch_per_requester = kith_transport::node::BucketLimit {
        burst: 2,
        per_minute: 1,
    };
    config.limits.max_batch_key_packages = 8;
    let logic = Arc::new(NodeLogic::new(
        config,
        SledNodeStore::open(dir.path().join("node")).expect("open store"),
    ));
    let node = kith_transport::client::LocalNode::new(Arc::clone(&logic));
    let requester = common::Identity::new(20);
    let known = common::Identity::new(21);
    requester.register(&node).await;
    known.register(&node).await;
    known
        .upload(
            &node,
            vec![known.key_package(false)],
            known.key_package(true),
        )
        .await;
    let strangers: Vec<common::Identity> = (22..27).map(common::Identity::new).collect();

    let fetch = |targets: Vec<kith_engine::identity::InstallationId>| {
        let t = system_now_ms();
        let signed = fetch_signed_bytes(
            t,
            &requester.wallet.inbox_id(),
            &requester.keys.id(),
            &targets,
        );
        kith_transport::node::KeyPackageFetch {
            signature: requester.keys.sign(&signed).to_vec(),
            targets,
            requester_inbox: requester.wallet.inbox_id(),
            requester: requester.keys.id(),
            timestamp_ms: t,
        }
    };
    // Five strangers and one known installation: only the known one is
    // charged (1 of the burst of 2), the strangers get nothing, free.
    let mut targets: Vec<_> = strangers.iter().map(|s| s.keys.id()).collect();
    targets.push(known.keys.id());
    let answer = logic
        .fetch_key_packages(fetch(targets.clone()))
        .await
        .expect("strangers cost nothing");
    assert_eq!(answer.len(), 6);
    assert!(answer[..5].iter().all(|f| f.key_package.is_none()));
    assert!(answer[5].key_package.is_some());
    // Three known targets can never pass a burst of 2: no retry-after.
    let refused = logic
        .fetch_key_packages(fetch(vec![known.keys.id(); 3]))
        .await
        .expect_err("over the burst");
    match refused {
        kith_transport::node::NodeError::ResourceExhausted {
            retry_after_ms: None,
            message,
        } => assert!(message.contains("split it"), "{message}"),
        other => panic!("expected a refusal without retry-after, got {other:?}"),
    }
    // Over the batch limit: RESOURCE_EXHAUSTED, as node.proto says.
    let refused = logic
        .fetch_key_packages(fetch(vec![known.keys.id(); 9]))
        .await
        .expect_err("over the batch limit");
    assert!(
        matches!(
            refused,
            kith_transport::node::NodeError::ResourceExhausted {
                retry_after_ms: None,
                ..
            }
        ),
        "{refused:?}"
    );
}

/// The deniable answers of one fetch, as `(installation, package, last
/// resort)`.
async fn fetch_deniable(
    node: &mut Node,
    requester: &Identity,
    target: &Identity,
) -> Vec<(Vec<u8>, Option<Vec<u8>>, bool)> {
    let node_key = node.static_key().await;
    let now = node.now();
    node.client
        .fetch_deniable_key_packages(requester.deniable_fetch(&node_key, target, now))
        .await
        .expect("deniable fetch")
        .into_inner()
        .key_packages
        .into_iter()
        .map(|p| (p.installation_id, p.key_package, p.last_resort))
        .collect()
}

#[tokio::test]
async fn deniable_packages_are_macd_kept_apart_and_fetched_by_inbox() {
    let mut node = Node::start().await;
    let node_key = node.static_key().await;
    assert_ne!(node_key, [0; 32]);
    assert_eq!(
        node.static_key().await,
        node_key,
        "the static key is stable"
    );
    let alice = Identity::new(21);
    let bob = Identity::new(22);
    let bob_phone = bob.second_installation(23);
    alice.register(&mut node).await;
    bob.register(&mut node).await;
    bob_phone.register_as(&mut node, 2).await;
    let now = node.now();

    let deniable = vec![bob.deniable_package(false), bob.deniable_package(false)];
    let deniable_last = bob.deniable_package(true);
    let left = node
        .client
        .upload_deniable_key_packages(bob.deniable_upload(
            &node_key,
            deniable.clone(),
            Some(deniable_last.clone()),
            now,
        ))
        .await
        .expect("deniable upload")
        .into_inner()
        .one_time_available;
    assert_eq!(left, 2);
    let phone_package = bob_phone.deniable_package(false);
    node.client
        .upload_deniable_key_packages(bob_phone.deniable_upload(
            &node_key,
            vec![phone_package.clone()],
            None,
            now,
        ))
        .await
        .expect("deniable upload");
    // An ordinary package of Bob's, in the ordinary pool.
    let ordinary = bob.key_package(false);
    node.client
        .upload_key_packages(bob.upload(vec![ordinary.clone()], None, now))
        .await
        .expect("ordinary upload");

    // What the node keeps says nothing about whose a package is: no inbox
    // and no installation key appear in it.
    for package in deniable.iter().chain([&deniable_last, &phone_package]) {
        for name in [
            bob.wallet.inbox_id().as_bytes().as_slice(),
            bob.keys.id().as_bytes(),
            bob_phone.keys.id().as_bytes(),
        ] {
            assert!(
                !package.windows(name.len()).any(|w| w == name),
                "a deniable package names its owner"
            );
        }
    }

    let (bob_id, phone_id) = (
        bob.keys.id().as_bytes().to_vec(),
        bob_phone.keys.id().as_bytes().to_vec(),
    );
    // One per active installation of the inbox, each handed out once.
    let first = fetch_deniable(&mut node, &alice, &bob).await;
    assert_eq!(
        first,
        vec![
            (bob_id.clone(), Some(deniable[0].clone()), false),
            (phone_id.clone(), Some(phone_package), false),
        ]
    );
    let second = fetch_deniable(&mut node, &alice, &bob).await;
    assert_eq!(
        second,
        vec![
            (bob_id.clone(), Some(deniable[1].clone()), false),
            (phone_id.clone(), None, false),
        ]
    );
    // Bob's pool is empty: his deniable last resort, never an ordinary one.
    for _ in 0..2 {
        let answer = fetch_deniable(&mut node, &alice, &bob).await;
        assert_eq!(
            answer[0],
            (bob_id.clone(), Some(deniable_last.clone()), true)
        );
    }
    // The ordinary pool was not touched.
    let ordinary_answer = node
        .client
        .fetch_key_packages(alice.fetch(&[&bob], node.now()))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(
        ordinary_answer.key_packages[0].key_package.as_ref(),
        Some(&ordinary)
    );
    // An installation asking for its own inbox gets its siblings only.
    let own = fetch_deniable(&mut node, &bob_phone, &bob).await;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].0, bob_id);
    // An inbox with no installations: an empty answer.
    let nobody = Identity::new(24);
    assert!(fetch_deniable(&mut node, &alice, &nobody).await.is_empty());
    node.stop().await;
}

#[tokio::test]
async fn bad_deniable_requests_are_rejected_and_store_nothing() {
    let mut node = Node::start().await;
    let node_key = node.static_key().await;
    let alice = Identity::new(31);
    let bob = Identity::new(32);
    let mallory = Identity::new(33);
    let stranger = Identity::new(34);
    for who in [&alice, &bob, &mallory] {
        who.register(&mut node).await;
    }
    let now = node.now();
    let package = || bob.deniable_package(false);
    let refused = |status: Result<
        tonic::Response<proto::UploadKeyPackagesResponse>,
        tonic::Status,
    >| { status.expect_err("refused") };

    // A changed byte in the MAC.
    let mut upload = bob.deniable_upload(&node_key, vec![package()], None, now);
    upload.mac[0] ^= 1;
    let status = refused(node.client.upload_deniable_key_packages(upload).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // MACed with a key made for another node.
    let upload = bob.deniable_upload(&[9; 32], vec![package()], None, now);
    let status = refused(node.client.upload_deniable_key_packages(upload).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Mallory uploads into Bob's pool: she can only key the MAC with her
    // own identity key.
    let mut theft =
        mallory.deniable_upload(&node_key, vec![mallory.deniable_package(false)], None, now);
    theft.inbox = bob.wallet.inbox_id().as_bytes().to_vec();
    theft.installation_id = bob.keys.id().as_bytes().to_vec();
    let status = refused(node.client.upload_deniable_key_packages(theft).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // An installation the inbox's log does not list.
    let upload = stranger.deniable_upload(&node_key, vec![package()], None, now);
    let status = refused(node.client.upload_deniable_key_packages(upload).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Stale.
    let upload = bob.deniable_upload(&node_key, vec![package()], None, now - 6 * 60 * 1000);
    let status = refused(node.client.upload_deniable_key_packages(upload).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // An ordinary package (it names Bob) in the deniable pool; garbage; a
    // one-time package in the last-resort slot; a bad inbox length.
    for (upload, what) in [
        (
            bob.deniable_upload(
                &node_key,
                vec![package(), bob.key_package(false)],
                None,
                now,
            ),
            "an ordinary package",
        ),
        (
            bob.deniable_upload(&node_key, vec![b"garbage".to_vec()], None, now),
            "garbage",
        ),
        (
            bob.deniable_upload(&node_key, vec![], Some(package()), now),
            "not last resort",
        ),
        (
            proto::UploadDeniableKeyPackagesRequest {
                inbox: vec![1; 19],
                ..bob.deniable_upload(&node_key, vec![package()], None, now)
            },
            "short inbox",
        ),
    ] {
        let status = refused(node.client.upload_deniable_key_packages(upload).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    assert_eq!(
        node.deniable_left(&bob).await,
        0,
        "nothing refused was stored"
    );

    node.client
        .upload_deniable_key_packages(bob.deniable_upload(&node_key, vec![package()], None, now))
        .await
        .expect("a good upload");
    // Fetches: a bad MAC, a requester the node does not know, a MAC that
    // does not cover the target asked for.
    let mut forged = alice.deniable_fetch(&node_key, &bob, now);
    forged.mac[31] ^= 1;
    let mut unknown = stranger.deniable_fetch(&node_key, &bob, now);
    unknown.requester_inbox = alice.wallet.inbox_id().as_bytes().to_vec();
    let mut retargeted = alice.deniable_fetch(&node_key, &mallory, now);
    retargeted.inbox = bob.wallet.inbox_id().as_bytes().to_vec();
    for (fetch, what) in [
        (forged, "forged"),
        (unknown, "unknown"),
        (retargeted, "retargeted"),
    ] {
        let status = node
            .client
            .fetch_deniable_key_packages(fetch)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    assert_eq!(
        node.deniable_left(&bob).await,
        1,
        "no refused fetch took a package"
    );
    node.stop().await;
}

#[tokio::test]
async fn deniable_fetches_are_rate_limited_per_requester_and_target() {
    let mut node = Node::start().await;
    let node_key = node.static_key().await;
    let attacker = Identity::new(41);
    let victim = Identity::new(42);
    attacker.register(&mut node).await;
    victim.register(&mut node).await;
    let pool: Vec<Vec<u8>> = (0..30).map(|_| victim.deniable_package(false)).collect();
    node.client
        .upload_deniable_key_packages(victim.deniable_upload(&node_key, pool, None, node.now()))
        .await
        .expect("upload");
    let mut got = 0;
    let mut refused = None;
    for _ in 0..30 {
        match node
            .client
            .fetch_deniable_key_packages(attacker.deniable_fetch(&node_key, &victim, node.now()))
            .await
        {
            Ok(_) => got += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    // The pair bucket (burst 5), as for ordinary packages.
    assert_eq!(got, 5);
    let status = refused.expect("the attacker was refused");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.metadata().get(RETRY_AFTER_METADATA).is_some());
    assert_eq!(node.deniable_left(&victim).await, 25);
    node.stop().await;
}

/// One-time packages past their lifetime (by the node's clock) are never
/// handed out: a fetch skips them, removing them, and falls back to the
/// last-resort package. Nor are they counted: the count a client refills
/// by purges them first.
#[tokio::test]
async fn expired_key_packages_are_purged_never_counted_or_handed_out() {
    let mut node = Node::start().await;
    let (alice, bob, carol) = (Identity::new(50), Identity::new(51), Identity::new(52));
    let mut last_resorts = Vec::new();
    for who in [&alice, &bob, &carol] {
        who.register(&mut node).await;
    }
    for who in [&bob, &carol] {
        let one_time: Vec<Vec<u8>> = (0..3).map(|_| who.key_package(false)).collect();
        let last_resort = who.key_package(true);
        let left = node
            .client
            .upload_key_packages(who.upload(one_time, Some(last_resort.clone()), node.now()))
            .await
            .expect("upload")
            .into_inner()
            .one_time_available;
        assert_eq!(left, 3);
        last_resorts.push(last_resort);
    }

    // The packages live 30 days; 31 days later every one-time one is stale.
    node.clock
        .0
        .fetch_add(31 * 24 * 3600 * 1000, Ordering::SeqCst);
    // Bob asks for his count: none of his three counts any more.
    let left = node
        .client
        .upload_key_packages(bob.upload(vec![], None, node.now()))
        .await
        .expect("count")
        .into_inner()
        .one_time_available;
    assert_eq!(left, 0, "expired packages are not counted");
    // Carol's are still in her pool; a fetch skips all three.
    let answer = node
        .client
        .fetch_key_packages(alice.fetch(&[&carol], node.now()))
        .await
        .expect("fetch")
        .into_inner();
    let package = &answer.key_packages[0];
    assert!(
        package.last_resort,
        "an expired one-time package is skipped"
    );
    assert_eq!(
        package.key_package.as_deref(),
        Some(last_resorts[1].as_slice())
    );
    node.stop().await;
}

/// A page holds as many envelopes as fit in one message of the node's
/// `max_message_bytes` and says there is more. (Small limits here: the
/// binary test in actors/tests/over_grpc.rs does it with 1 MB envelopes and
/// the default 4 MiB, in its own process, away from this binary's other
/// sled stores.)
#[tokio::test]
async fn pages_are_cut_to_the_message_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::new(7);
    config.limits.max_envelope_bytes = 20_000;
    config.limits.max_message_bytes = kith_transport::node::MESSAGE_HEADROOM + 25_000;
    config.limits.check().expect("limits that fit together");
    let logic = NodeLogic::new(
        config,
        SledNodeStore::open(dir.path().join("node")).expect("open store"),
    );
    for i in 0..5u8 {
        logic
            .publish(vec![(GROUP.into(), vec![i; 10_000])])
            .await
            .expect("publish");
    }
    let (mut cursor, mut pages) = (kith_engine::delivery::Cursor::new(), Vec::new());
    loop {
        let (page, next, more) = logic.query(GROUP, cursor, 0).await.expect("query");
        pages.push(page.len());
        cursor = next;
        if !more {
            break;
        }
    }
    assert_eq!(pages, [2, 2, 1]);
}
