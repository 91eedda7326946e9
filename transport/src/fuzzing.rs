//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus (`sim/tests/fuzz_corpus.rs`): the protobuf
//! messages on both sides of a node, decoded and turned into engine values
//! by [`crate::convert`].
//!
//! - [`proto_client`]: what a client receives from a node (the answers of
//!   every call), through the conversions the gRPC client applies.
//! - [`proto_node`]: what a node receives from anyone (the requests),
//!   handed to the real [`NodeService`] over a fresh in-memory node, which
//!   must answer each with a status or a response, never panic.
//!
//! Each checks the conversions' round trips (engine value to wire and
//! back), and panics when a property fails. Built only with the `fuzzing`
//! feature, which no normal build enables; nothing here is API.

use std::sync::Arc;

use kith_engine::{
    delivery::{Cursor, Envelope, MemoryNodeStore, StoredKeyPackage, Topic},
    identity::{
        IdentityUpdate, InboxId, InstallationId, InstallationKeys, LocalWallet,
        UnsignedIdentityUpdate,
    },
};
use prost::Message;
use tonic::Request;

use crate::{
    client::{
        CheckedClient, ClientError, DeliveryClient, EnvelopeStream, MAX_FUTURE_SKEW_MS,
        MAX_SEQUENCE_ID, NodeInfo, QueryPage,
    },
    convert,
    node::{
        Clock, DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage,
        KeyPackageFetch, KeyPackageUpload, NodeConfig, NodeLogic, NodeService, fetch_signed_bytes,
        upload_signed_bytes,
    },
    proto::{self, node_server::Node as _},
};

/// Checks what a client makes of an envelope from the wire: a topic that
/// parses must be the same topic in every form the client and the node
/// keep it in, and the envelope must survive the wire and back.
fn check_envelope(wire: proto::Envelope) -> bool {
    let Ok(envelope) = convert::envelope_from_proto(wire) else {
        return false;
    };
    check_topic(&envelope.topic);
    let again = convert::envelope_from_proto(convert::envelope_to_proto(&envelope));
    assert_eq!(again.as_ref(), Ok(&envelope), "an envelope round trip");
    true
}

/// A topic in its string form and its storage key reads back as itself.
fn check_topic(topic: &Topic) {
    let text = topic.to_string();
    assert_eq!(
        text.parse::<Topic>().as_ref(),
        Ok(topic),
        "a topic round trip through {text:?}"
    );
    assert_eq!(
        Topic::from_key(&topic.to_key()).as_ref(),
        Some(topic),
        "a topic round trip through its key"
    );
}

/// A cursor from the wire survives the wire and back.
fn check_cursor(wire: Option<proto::Cursor>) -> Cursor {
    let cursor = convert::cursor_from_proto(wire);
    let again = convert::cursor_from_proto(Some(convert::cursor_to_proto(&cursor)));
    assert_eq!(again, cursor, "a cursor round trip");
    cursor
}

/// An identity update from the wire survives the wire and back.
fn check_identity_update(wire: &proto::IdentityUpdate) -> bool {
    let Ok(update) = convert::identity_update_from_proto(wire) else {
        return false;
    };
    let back = convert::identity_update_to_proto(&update)
        .unwrap_or_else(|e| panic!("a decoded identity update to the wire: {e}"));
    let again = convert::identity_update_from_proto(&back);
    assert_eq!(again.as_ref(), Ok(&update), "an identity update round trip");
    true
}

/// The answers a client reads, by the input's first byte.
const CLIENT_MESSAGES: u8 = 7;

/// The group topic the client publishes to, queries and follows.
fn asked_topic() -> Topic {
    Topic::Group(vec![0xab; 16])
}

/// The installation that makes the seeds' signed requests and packages,
/// and whose key package the client asks for.
fn seed_keys() -> InstallationKeys {
    InstallationKeys::from_secret_bytes(&[0x7c; 64])
        .unwrap_or_else(|e| unreachable!("64 bytes are installation keys: {e}"))
}

/// The wallet of the seeds' identity updates, whose log the client asks
/// for.
fn seed_wallet() -> LocalWallet {
    LocalWallet::from_private_key_hex(&"33".repeat(32))
        .unwrap_or_else(|e| unreachable!("a valid secp256k1 key: {e}"))
}

/// What the client publishes (the seeds' node answers with it stored).
fn published_batch() -> Vec<(Topic, Vec<u8>)> {
    vec![
        (asked_topic(), vec![0; 8]),
        (Topic::Welcome(seed_keys().id()), vec![1; 8]),
        (Topic::Identity(seed_wallet().inbox_id()), vec![2; 8]),
    ]
}

/// The most envelopes the client asks a query for.
const QUERY_LIMIT: u32 = 10;

/// A node that answers every call of a client with what the input decoded
/// to, converted as [`GrpcClient`](crate::client::GrpcClient) converts it.
#[derive(Debug, Default)]
struct Replay {
    envelopes: Vec<Envelope>,
    next_cursor: Cursor,
    updates: Vec<Vec<IdentityUpdate>>,
    key_packages: Vec<FetchedKeyPackage>,
}

#[async_trait::async_trait]
impl DeliveryClient for Replay {
    async fn publish(&self, _: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        Ok(self.envelopes.clone())
    }

    async fn query(&self, _: &Topic, _: &Cursor, _: u32) -> Result<QueryPage, ClientError> {
        Ok(QueryPage {
            envelopes: self.envelopes.clone(),
            next_cursor: self.next_cursor.clone(),
            more: false,
        })
    }

    async fn subscribe(&self, _: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let items: Vec<Result<Envelope, ClientError>> =
            self.envelopes.iter().cloned().map(Ok).collect();
        Ok(Box::pin(tokio_stream::iter(items)))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        Ok(update.unsigned.sequence)
    }

    async fn identity_updates(
        &self,
        _: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        Ok(self.updates.clone())
    }

    async fn upload_key_packages(&self, _: KeyPackageUpload) -> Result<usize, ClientError> {
        Ok(0)
    }

    async fn fetch_key_packages(
        &self,
        _: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        Ok(self.key_packages.clone())
    }

    async fn upload_deniable_key_packages(
        &self,
        _: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        Ok(0)
    }

    async fn fetch_deniable_key_packages(
        &self,
        _: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        Ok(self.key_packages.clone())
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        Err(ClientError::Unavailable("not asked".into()))
    }
}

/// Envelopes from the wire, as the client converts them; `None` if one
/// does not convert (the client refuses the whole answer then).
fn envelopes_from(wire: Vec<proto::Envelope>) -> Option<Vec<Envelope>> {
    let mut out = Vec::with_capacity(wire.len());
    for envelope in wire {
        let converted = convert::envelope_from_proto(envelope.clone()).ok()?;
        assert!(check_envelope(envelope));
        out.push(converted);
    }
    Some(out)
}

/// What a client's checks let through must be what they promise
/// (`client/checked.rs`): envelopes of the topic asked for, with
/// believable originator fields, each after the one before.
fn assert_believable(envelopes: &[Envelope], topic: &Topic, mut cursor: Cursor) -> Cursor {
    for envelope in envelopes {
        assert_eq!(
            &envelope.topic, topic,
            "an envelope of another topic passed"
        );
        assert!(
            (1..=MAX_SEQUENCE_ID).contains(&envelope.originator_sequence_id),
            "an absurd sequence id passed"
        );
        assert!(
            envelope.originator_time_ms <= CLIENT_TIME_MS + MAX_FUTURE_SKEW_MS,
            "an envelope from the future passed"
        );
        assert!(
            cursor.is_before(envelope),
            "an envelope behind the cursor passed"
        );
        cursor.advance(envelope);
    }
    cursor
}

/// The client's clock when it checks answers: the seeds' time.
const CLIENT_TIME_MS: u64 = NODE_TIME_MS;

/// What a client receives from a node. The first byte picks the answer
/// (modulo [`CLIENT_MESSAGES`]: publish, query, subscription batch,
/// identity updates, key packages, deniable key packages, node info); the
/// rest is its protobuf encoding. It is converted as the gRPC client
/// converts it, then checked by the real [`CheckedClient`] against a fixed
/// request, whose promises must hold for whatever it lets through.
/// Returns whether the answer decoded.
pub fn proto_client(data: &[u8]) -> bool {
    let Some((&pick, bytes)) = data.split_first() else {
        return false;
    };
    let mut replay = Replay::default();
    let pick = pick % CLIENT_MESSAGES;
    match pick {
        0 | 2 => {
            let wire = if pick == 0 {
                proto::PublishEnvelopesResponse::decode(bytes).map(|m| m.envelopes)
            } else {
                proto::SubscribeEnvelopesResponse::decode(bytes).map(|m| m.envelopes)
            };
            let Ok(wire) = wire else { return false };
            let Some(envelopes) = envelopes_from(wire) else {
                return true;
            };
            replay.envelopes = envelopes;
        }
        1 => {
            let Ok(answer) = proto::QueryEnvelopesResponse::decode(bytes) else {
                return false;
            };
            replay.next_cursor = check_cursor(answer.next_cursor);
            let Some(envelopes) = envelopes_from(answer.envelopes) else {
                return true;
            };
            replay.envelopes = envelopes;
        }
        3 => {
            let Ok(answer) = proto::GetIdentityUpdatesResponse::decode(bytes) else {
                return false;
            };
            let mut logs = Vec::new();
            for inbox in &answer.inboxes {
                let _ = convert::inbox("inboxes.inbox", &inbox.inbox);
                let mut log = Vec::new();
                for update in &inbox.updates {
                    let Ok(update) = convert::identity_update_from_proto(update) else {
                        return true;
                    };
                    log.push(update);
                }
                inbox
                    .updates
                    .iter()
                    .for_each(|u| _ = check_identity_update(u));
                logs.push(log);
            }
            replay.updates = logs;
        }
        4 | 5 => {
            let Ok(answer) = proto::FetchKeyPackagesResponse::decode(bytes) else {
                return false;
            };
            let mut fetched = Vec::new();
            for package in answer.key_packages {
                let Ok(installation) =
                    convert::installation("installation_id", &package.installation_id)
                else {
                    return true;
                };
                fetched.push(FetchedKeyPackage {
                    installation,
                    key_package: package.key_package.map(|bytes| StoredKeyPackage {
                        bytes,
                        last_resort: package.last_resort,
                    }),
                });
            }
            replay.key_packages = fetched;
        }
        _ => return proto::GetNodeInfoResponse::decode(bytes).is_ok(),
    }
    let client = CheckedClient::with_clock(Arc::new(replay), Arc::new(FixedClock));
    RUNTIME.with(|runtime| runtime.block_on(ask(&client, pick)));
    true
}

/// Makes the call `pick` stands for, and asserts what the checks promise
/// of an answer they let through.
async fn ask(client: &CheckedClient, pick: u8) {
    let topic = asked_topic();
    let keys = seed_keys();
    let inbox = seed_wallet().inbox_id();
    match pick {
        0 => {
            let batch = published_batch();
            if let Ok(stored) = client.publish(batch.clone()).await {
                let sent: Vec<_> = stored
                    .iter()
                    .map(|e| (e.topic.clone(), e.payload.clone()))
                    .collect();
                assert_eq!(sent, batch, "a publish answer other than the batch passed");
            }
        }
        1 => {
            if let Ok(page) = client.query(&topic, &Cursor::new(), QUERY_LIMIT).await {
                assert!(
                    page.envelopes.len() <= QUERY_LIMIT as usize,
                    "a long page passed"
                );
                let next = assert_believable(&page.envelopes, &topic, Cursor::new());
                assert_eq!(
                    page.next_cursor, next,
                    "a page's cursor is not its envelopes'"
                );
            }
        }
        2 => {
            if let Ok(mut stream) = client.subscribe(vec![(topic.clone(), Cursor::new())]).await {
                let mut passed = Vec::new();
                while let Some(item) = tokio_stream::StreamExt::next(&mut stream).await {
                    match item {
                        Ok(envelope) => passed.push(envelope),
                        Err(_) => break,
                    }
                }
                assert_believable(&passed, &topic, Cursor::new());
            }
        }
        3 => {
            if let Ok(logs) = client.identity_updates(vec![(inbox, 0)]).await {
                assert_eq!(logs.len(), 1, "an identity answer for other inboxes passed");
                for (update, sequence) in logs[0].iter().zip(1..) {
                    assert_eq!(
                        update.unsigned.inbox, inbox,
                        "another inbox's update passed"
                    );
                    assert_eq!(update.unsigned.sequence, sequence, "a gap in a log passed");
                }
            }
        }
        4 => {
            let fetch = KeyPackageFetch {
                targets: vec![keys.id()],
                requester_inbox: inbox,
                requester: InstallationId([9; 32]),
                timestamp_ms: CLIENT_TIME_MS,
                signature: Vec::new(),
            };
            if let Ok(answer) = client.fetch_key_packages(fetch).await {
                assert!(answer.len() <= 1, "more key packages than asked for passed");
                for fetched in &answer {
                    assert_eq!(
                        fetched.installation,
                        keys.id(),
                        "a package not asked for passed"
                    );
                }
            }
        }
        _ => {
            let requester = InstallationId([9; 32]);
            let fetch = DeniableKeyPackageFetch {
                target: inbox,
                requester_inbox: inbox,
                requester,
                timestamp_ms: CLIENT_TIME_MS,
                mac: Vec::new(),
            };
            if let Ok(answer) = client.fetch_deniable_key_packages(fetch).await {
                assert!(
                    answer.iter().all(|f| f.installation != requester),
                    "the requester's own deniable package passed"
                );
            }
        }
    }
}

thread_local! {
    /// The runtime the node's handlers run on: one per thread, made on
    /// first use.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
}

/// The requests a node serves, by a frame's first byte.
const NODE_REQUESTS: u8 = 10;

/// Hands one request (`pick` modulo [`NODE_REQUESTS`], in the order of
/// `node.proto`'s service) to `service`, after checking the conversions
/// the service applies to it. Returns whether it decoded.
async fn serve(service: &NodeService<MemoryNodeStore>, pick: u8, bytes: &[u8]) -> bool {
    macro_rules! call {
        ($message:ty, $method:ident, $check:expr) => {{
            let Ok(request) = <$message>::decode(bytes) else {
                return false;
            };
            #[allow(clippy::redundant_closure_call)]
            ($check)(&request);
            // Any status is a fine answer to a stranger's request.
            let _ = service.$method(Request::new(request)).await;
            true
        }};
    }
    match pick % NODE_REQUESTS {
        0 => call!(
            proto::PublishEnvelopesRequest,
            publish_envelopes,
            |r: &proto::PublishEnvelopesRequest| {
                for envelope in &r.envelopes {
                    if let Ok(topic) = envelope.topic.parse::<Topic>() {
                        check_topic(&topic);
                    }
                }
            }
        ),
        1 => call!(
            proto::QueryEnvelopesRequest,
            query_envelopes,
            |r: &proto::QueryEnvelopesRequest| _ = check_cursor(r.cursor.clone())
        ),
        2 => call!(
            proto::SubscribeEnvelopesRequest,
            subscribe_envelopes,
            |r: &proto::SubscribeEnvelopesRequest| {
                r.topics
                    .iter()
                    .for_each(|t| _ = check_cursor(t.cursor.clone()));
            }
        ),
        3 => call!(
            proto::UploadKeyPackagesRequest,
            upload_key_packages,
            |_: &proto::UploadKeyPackagesRequest| ()
        ),
        4 => call!(
            proto::FetchKeyPackagesRequest,
            fetch_key_packages,
            |_: &proto::FetchKeyPackagesRequest| ()
        ),
        5 => call!(
            proto::UploadDeniableKeyPackagesRequest,
            upload_deniable_key_packages,
            |_: &proto::UploadDeniableKeyPackagesRequest| ()
        ),
        6 => call!(
            proto::FetchDeniableKeyPackagesRequest,
            fetch_deniable_key_packages,
            |_: &proto::FetchDeniableKeyPackagesRequest| ()
        ),
        7 => call!(
            proto::PublishIdentityUpdateRequest,
            publish_identity_update,
            |r: &proto::PublishIdentityUpdateRequest| {
                if let Some(update) = &r.update {
                    check_identity_update(update);
                }
            }
        ),
        8 => call!(
            proto::GetIdentityUpdatesRequest,
            get_identity_updates,
            |_: &proto::GetIdentityUpdatesRequest| ()
        ),
        _ => call!(
            proto::GetNodeInfoRequest,
            get_node_info,
            |_: &proto::GetNodeInfoRequest| ()
        ),
    }
}

/// The most requests one input makes.
const MAX_REQUESTS: usize = 8;

/// Splits an input into frames `pick (1) | length (2, big-endian) | bytes`;
/// the last frame takes what is left if the input is shorter than its
/// length says.
fn frames(mut data: &[u8], max: usize) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some((&pick, rest)) = data.split_first() else {
            break;
        };
        let (len, rest) = match rest.split_first_chunk::<2>() {
            Some((len, rest)) => (usize::from(u16::from_be_bytes(*len)), rest),
            None => (rest.len(), rest),
        };
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        out.push((pick, frame));
        data = rest;
    }
    out
}

/// The node's time in [`proto_node`], and the time its seeds sign:
/// fixed, so that an input does the same on every run and signed seeds
/// stay within the node's timestamp window.
const NODE_TIME_MS: u64 = 1_767_225_600_000;

/// The clock of [`proto_node`]'s node, stopped at [`NODE_TIME_MS`].
struct FixedClock;

impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        NODE_TIME_MS
    }
}

/// What a node receives: up to [`MAX_REQUESTS`] requests, each a frame
/// `pick | u16 length | protobuf`, served in order by one fresh in-memory
/// node, so that a request can find what an earlier one stored. The pick
/// chooses the call (modulo [`NODE_REQUESTS`], in `node.proto`'s order).
/// Returns whether any request decoded.
pub fn proto_node(data: &[u8]) -> bool {
    let logic = Arc::new(NodeLogic::with_clock(
        NodeConfig::new(1),
        MemoryNodeStore::default(),
        Arc::new(FixedClock),
    ));
    let service = NodeService::new(logic);
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let mut decoded = false;
            for (pick, bytes) in frames(data, MAX_REQUESTS) {
                decoded |= serve(&service, pick, bytes).await;
            }
            decoded
        })
    })
}

/// Frames one request for [`proto_node`].
fn node_frame(pick: u8, message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![pick];
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// A real key package of [`seed_keys`], as a node hands it out.
fn seed_key_package() -> Vec<u8> {
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let package = kith_engine::identity::generate_key_package(
        &provider,
        &seed_keys(),
        seed_wallet().inbox_id(),
        NODE_TIME_MS / 1000,
        // A century, so that OpenMLS's check against the real clock passes
        // on any day.
        100 * 365 * 24 * 60 * 60,
        false,
    )
    .unwrap_or_else(|e| unreachable!("a key package: {e}"));
    MlsMessageOut::from(package)
        .tls_serialize_detached()
        .unwrap_or_else(|e| unreachable!("a key package serializes: {e:?}"))
}

/// Prefixes `message`'s encoding with `pick`, for [`proto_client`].
fn client_input(pick: u8, message: &impl Message) -> Vec<u8> {
    let mut out = vec![pick];
    out.extend_from_slice(&message.encode_to_vec());
    out
}

/// Seed inputs for the targets above, made by the real encoders, by target
/// name: honest answers to the client's fixed requests (and a few lies),
/// and requests as a client makes them, signed at the node's time.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let keys = seed_keys();
    let wallet = seed_wallet();
    let unsigned =
        UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, NODE_TIME_MS);
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    let update = convert::identity_update_to_proto(&unsigned.sign(signature, Some(&keys)))
        .unwrap_or_else(|e| unreachable!("an update to the wire: {e}"));
    let key_package = seed_key_package();
    let stored = |batch: Vec<(Topic, Vec<u8>)>| -> Vec<proto::Envelope> {
        batch
            .into_iter()
            .zip(1u64..)
            .map(|((topic, payload), sequence)| {
                convert::envelope_to_proto(&Envelope {
                    topic,
                    payload,
                    originator_node_id: 1,
                    originator_sequence_id: sequence,
                    originator_time_ms: NODE_TIME_MS + sequence,
                })
            })
            .collect()
    };
    let published = stored(published_batch());
    let page = stored((0..3).map(|i| (asked_topic(), vec![i; 4])).collect());
    let mut lying = page.clone();
    lying[1].originator_sequence_id = u64::MAX;
    let cursor = convert::cursor_to_proto(&[(1, 3), (2, 9)].into_iter().collect());
    let fetched = |installation: &InstallationId| proto::FetchKeyPackagesResponse {
        key_packages: vec![proto::FetchedKeyPackage {
            installation_id: installation.as_bytes().to_vec(),
            key_package: Some(key_package.clone()),
            last_resort: true,
        }],
    };
    let client_seeds = vec![
        client_input(
            0,
            &proto::PublishEnvelopesResponse {
                envelopes: published.clone(),
            },
        ),
        client_input(
            1,
            &proto::QueryEnvelopesResponse {
                envelopes: page.clone(),
                next_cursor: Some(cursor.clone()),
                more: true,
            },
        ),
        client_input(
            2,
            &proto::SubscribeEnvelopesResponse {
                envelopes: page.clone(),
            },
        ),
        client_input(2, &proto::SubscribeEnvelopesResponse { envelopes: lying }),
        client_input(
            3,
            &proto::GetIdentityUpdatesResponse {
                inboxes: vec![proto::InboxUpdates {
                    inbox: wallet.inbox_id().as_bytes().to_vec(),
                    updates: vec![update.clone()],
                }],
            },
        ),
        client_input(4, &fetched(&keys.id())),
        client_input(4, &fetched(&InstallationId([9; 32]))),
        client_input(5, &fetched(&keys.id())),
        client_input(
            6,
            &proto::GetNodeInfoResponse {
                node_id: 1,
                static_key: vec![7; 32],
                ..Default::default()
            },
        ),
    ];
    let one_time = vec![key_package];
    let upload_signature = keys.sign(&upload_signed_bytes(
        NODE_TIME_MS,
        &keys.id(),
        &one_time,
        None,
    ));
    let fetch_signature = keys.sign(&fetch_signed_bytes(
        NODE_TIME_MS,
        &wallet.inbox_id(),
        &keys.id(),
        &[keys.id()],
    ));
    let node_seeds = vec![
        [
            node_frame(
                0,
                &proto::PublishEnvelopesRequest {
                    envelopes: published_batch()
                        .into_iter()
                        .map(|(topic, payload)| proto::PublishedEnvelope {
                            topic: topic.to_string(),
                            payload,
                        })
                        .collect(),
                },
            ),
            node_frame(
                1,
                &proto::QueryEnvelopesRequest {
                    topic: asked_topic().to_string(),
                    cursor: Some(cursor.clone()),
                    limit: QUERY_LIMIT,
                },
            ),
        ]
        .concat(),
        [
            node_frame(
                7,
                &proto::PublishIdentityUpdateRequest {
                    update: Some(update.clone()),
                },
            ),
            node_frame(
                8,
                &proto::GetIdentityUpdatesRequest {
                    inboxes: vec![proto::InboxCursor {
                        inbox: wallet.inbox_id().as_bytes().to_vec(),
                        after_sequence: 0,
                    }],
                },
            ),
        ]
        .concat(),
        node_frame(
            2,
            &proto::SubscribeEnvelopesRequest {
                topics: vec![proto::TopicCursor {
                    topic: asked_topic().to_string(),
                    cursor: Some(cursor),
                }],
            },
        ),
        [
            node_frame(
                7,
                &proto::PublishIdentityUpdateRequest {
                    update: Some(update),
                },
            ),
            node_frame(
                3,
                &proto::UploadKeyPackagesRequest {
                    installation_id: keys.id().as_bytes().to_vec(),
                    one_time,
                    last_resort: None,
                    timestamp_ms: NODE_TIME_MS,
                    signature: upload_signature.to_vec(),
                },
            ),
            node_frame(
                4,
                &proto::FetchKeyPackagesRequest {
                    installation_ids: vec![keys.id().as_bytes().to_vec()],
                    requester_installation_id: keys.id().as_bytes().to_vec(),
                    timestamp_ms: NODE_TIME_MS,
                    signature: fetch_signature.to_vec(),
                    requester_inbox: wallet.inbox_id().as_bytes().to_vec(),
                },
            ),
        ]
        .concat(),
        node_frame(9, &proto::GetNodeInfoRequest {}),
    ];
    vec![("proto_client", client_seeds), ("proto_node", node_seeds)]
}
