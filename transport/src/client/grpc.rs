//! [`GrpcClient`]: a [`DeliveryClient`] for a remote `kith-node`.
//!
//! The tonic channel reconnects by itself when a call finds the connection
//! gone. On top of that, idempotent reads are retried with exponential
//! backoff while the node is unavailable, and a subscription that breaks is
//! reopened, with backoff, from the cursors it had reached, so that the
//! consumer sees neither a gap nor a duplicate. Publishes are not retried:
//! after a broken call their outcome is unknown, and the caller decides.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use kith_engine::{
    delivery::{Cursor, Envelope, NodeId, Topic},
    identity::{IdentityUpdate, InboxId},
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic::{Code, Status, transport::Channel};

use super::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage};
use crate::{
    convert,
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload, NodeError, RETRY_AFTER_METADATA,
    },
    proto::{self, node_client::NodeClient},
};

/// Backoff between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How many times an idempotent read is tried while the node is down.
const READ_ATTEMPTS: u32 = 6;

/// A client of a remote node. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    client: NodeClient<Channel>,
    /// When set, every envelope received must carry a seal by one of these
    /// originators ([`GrpcClient::with_originator_keys`]).
    originators: Option<Arc<HashMap<NodeId, VerifyingKey>>>,
}

impl GrpcClient {
    /// A client for the node at `endpoint` (e.g. `http://127.0.0.1:5556`).
    /// It connects on first use and reconnects as needed.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, ClientError> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|e| ClientError::Unavailable(format!("bad endpoint {endpoint:?}: {e}")))?
            .connect_lazy();
        // The same message limit as a node with default limits, both ways:
        // tonic's own default (4 MiB decode, unlimited encode) would let a
        // request out that no node takes.
        let limit = crate::node::NodeLimits::default().max_message_bytes;
        Ok(Self {
            client: NodeClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            originators: None,
        })
    }

    /// Accept only envelopes sealed by one of `keys` (originator id and
    /// Ed25519 public key, as `kith-node --print-key` prints it): an
    /// envelope from another originator, or whose seal does not verify,
    /// is refused with [`ClientError::Malformed`]. Without this the client
    /// trusts its node for originator fields, as it must for order anyway.
    ///
    /// # Errors
    /// [`ClientError::Malformed`] when a key is not an Ed25519 public key.
    pub fn with_originator_keys(
        mut self,
        keys: impl IntoIterator<Item = (NodeId, [u8; 32])>,
    ) -> Result<Self, ClientError> {
        let keys = keys
            .into_iter()
            .map(|(node, key)| {
                VerifyingKey::from_bytes(&key)
                    .map(|key| (node, key))
                    .map_err(|e| malformed(format!("the key of originator {node}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        self.originators = Some(Arc::new(keys));
        Ok(self)
    }

    /// The originators the node vouches for (itself and its replication
    /// peers) with their keys, from `GetNodeInfo`: what
    /// [`GrpcClient::with_originator_keys`] takes, when the node is trusted
    /// on first use.
    pub async fn originator_keys(&self) -> Result<Vec<(NodeId, [u8; 32])>, ClientError> {
        let info = self
            .read(|mut c| async move { c.get_node_info(proto::GetNodeInfoRequest {}).await })
            .await?
            .into_inner();
        info.originator_keys
            .into_iter()
            .map(|k| {
                let key = k.public_key.as_slice().try_into().map_err(|_| {
                    malformed(format!(
                        "the key of originator {} is {} bytes, not 32",
                        k.node_id,
                        k.public_key.len()
                    ))
                })?;
                Ok((k.node_id, key))
            })
            .collect()
    }

    async fn read<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(NodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match call(self.client.clone()).await.map_err(status_error) {
                Err(ClientError::Unavailable(_)) if attempt < READ_ATTEMPTS => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The one mapping from gRPC statuses back to node errors.
fn status_error(status: Status) -> ClientError {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => {
            ClientError::Refused(NodeError::InvalidArgument(message))
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            ClientError::Refused(NodeError::Unauthenticated(message))
        }
        Code::ResourceExhausted => ClientError::Refused(NodeError::ResourceExhausted {
            message,
            retry_after_ms: status
                .metadata()
                .get(RETRY_AFTER_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }),
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
            ClientError::Refused(NodeError::FailedPrecondition(message))
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            ClientError::Unavailable(format!("{}: {message}", status.code()))
        }
        _ => ClientError::Refused(NodeError::Internal(message)),
    }
}

fn malformed(e: impl std::fmt::Display) -> ClientError {
    ClientError::Malformed(e.to_string())
}

/// An envelope from the wire, its seal checked when `originators` is set.
fn envelope_in(
    originators: Option<&HashMap<NodeId, VerifyingKey>>,
    envelope: proto::Envelope,
) -> Result<Envelope, ClientError> {
    let sealed = convert::sealed_from_proto(envelope).map_err(malformed)?;
    if let Some(originators) = originators {
        let envelope = &sealed.envelope;
        let (node, sequence) = (envelope.originator_node_id, envelope.originator_sequence_id);
        let key = originators.get(&node).ok_or_else(|| {
            malformed(format!(
                "envelope {sequence} names originator {node}, which is not one this client trusts"
            ))
        })?;
        let verified = Signature::from_slice(&sealed.seal)
            .ok()
            .is_some_and(|seal| key.verify(&envelope.seal_input(), &seal).is_ok());
        if !verified {
            return Err(malformed(format!(
                "envelope {sequence} of originator {node}: its seal does not verify"
            )));
        }
    }
    Ok(sealed.envelope)
}

fn subscribe_request(cursors: &HashMap<Topic, Cursor>) -> proto::SubscribeEnvelopesRequest {
    proto::SubscribeEnvelopesRequest {
        topics: cursors
            .iter()
            .map(|(topic, cursor)| proto::TopicCursor {
                topic: topic.to_string(),
                cursor: Some(convert::cursor_to_proto(cursor)),
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl DeliveryClient for GrpcClient {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        let request = proto::PublishEnvelopesRequest {
            envelopes: batch
                .into_iter()
                .map(|(topic, payload)| proto::PublishedEnvelope {
                    topic: topic.to_string(),
                    payload,
                })
                .collect(),
        };
        self.client
            .clone()
            .publish_envelopes(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .envelopes
            .into_iter()
            .map(|e| envelope_in(self.originators.as_deref(), e))
            .collect()
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let request = proto::QueryEnvelopesRequest {
            topic: topic.to_string(),
            cursor: Some(convert::cursor_to_proto(cursor)),
            limit,
        };
        let page = self
            .read(|mut c| {
                let request = request.clone();
                async move { c.query_envelopes(request).await }
            })
            .await?
            .into_inner();
        Ok(QueryPage {
            envelopes: page
                .envelopes
                .into_iter()
                .map(|e| envelope_in(self.originators.as_deref(), e))
                .collect::<Result<_, _>>()?,
            next_cursor: convert::cursor_from_proto(page.next_cursor),
            more: page.more,
        })
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let mut cursors: HashMap<Topic, Cursor> = topics.into_iter().collect();
        let mut client = self.client.clone();
        // The first attempt reports refusals (bad topics, limits) directly.
        let mut stream = client
            .subscribe_envelopes(subscribe_request(&cursors))
            .await
            .map_err(status_error)?
            .into_inner();
        let (tx, rx) = mpsc::channel(256);
        let originators = self.originators.clone();
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                // Forward until the stream breaks or ends.
                loop {
                    let item = tokio::select! {
                        () = tx.closed() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(batch)) => {
                            backoff = FIRST_BACKOFF;
                            for envelope in batch.envelopes {
                                let envelope = match envelope_in(originators.as_deref(), envelope) {
                                    Ok(envelope) => envelope,
                                    Err(e) => {
                                        if tx.send(Err(e)).await.is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                };
                                let Some(cursor) = cursors.get_mut(&envelope.topic) else {
                                    continue;
                                };
                                if !cursor.is_before(&envelope) {
                                    continue;
                                }
                                cursor.advance(&envelope);
                                if tx.send(Ok(envelope)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Some(Err(status)) => match status_error(status) {
                            ClientError::Unavailable(reason) => {
                                tracing::debug!(%reason, "subscription broke; resuming");
                                break;
                            }
                            refused => {
                                let _ = tx.send(Err(refused)).await;
                                return;
                            }
                        },
                        // The node ended the stream (it is shutting down):
                        // resume when it is back.
                        None => break,
                    }
                }
                // Reopen from the cursors reached, with backoff.
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    match client
                        .subscribe_envelopes(subscribe_request(&cursors))
                        .await
                    {
                        Ok(response) => {
                            stream = response.into_inner();
                            break;
                        }
                        Err(status) => match status_error(status) {
                            ClientError::Unavailable(_) => continue,
                            refused => {
                                let _ = tx.send(Err(refused)).await;
                                return;
                            }
                        },
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        let update = convert::identity_update_to_proto(&update).map_err(malformed)?;
        Ok(self
            .client
            .clone()
            .publish_identity_update(proto::PublishIdentityUpdateRequest {
                update: Some(update),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .sequence)
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        let request = proto::GetIdentityUpdatesRequest {
            inboxes: requests
                .iter()
                .map(|(inbox, after)| proto::InboxCursor {
                    inbox: inbox.as_bytes().to_vec(),
                    after_sequence: *after,
                })
                .collect(),
        };
        let answer = self
            .read(|mut c| {
                let request = request.clone();
                async move { c.get_identity_updates(request).await }
            })
            .await?
            .into_inner();
        answer
            .inboxes
            .iter()
            .map(|inbox| {
                inbox
                    .updates
                    .iter()
                    .map(|u| convert::identity_update_from_proto(u).map_err(malformed))
                    .collect()
            })
            .collect()
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        let left = self
            .client
            .clone()
            .upload_key_packages(proto::UploadKeyPackagesRequest {
                installation_id: upload.installation.as_bytes().to_vec(),
                one_time: upload.one_time,
                last_resort: upload.last_resort,
                timestamp_ms: upload.timestamp_ms,
                signature: upload.signature,
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .one_time_available;
        Ok(usize::try_from(left).unwrap_or(usize::MAX))
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let answer = self
            .client
            .clone()
            .fetch_key_packages(proto::FetchKeyPackagesRequest {
                installation_ids: fetch
                    .targets
                    .iter()
                    .map(|t| t.as_bytes().to_vec())
                    .collect(),
                requester_installation_id: fetch.requester.as_bytes().to_vec(),
                timestamp_ms: fetch.timestamp_ms,
                signature: fetch.signature,
                requester_inbox: fetch.requester_inbox.as_bytes().to_vec(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        fetched_from_proto(answer)
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        let left = self
            .client
            .clone()
            .upload_deniable_key_packages(proto::UploadDeniableKeyPackagesRequest {
                inbox: upload.inbox.as_bytes().to_vec(),
                installation_id: upload.installation.as_bytes().to_vec(),
                one_time: upload.one_time,
                last_resort: upload.last_resort,
                timestamp_ms: upload.timestamp_ms,
                mac: upload.mac,
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .one_time_available;
        Ok(usize::try_from(left).unwrap_or(usize::MAX))
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let answer = self
            .client
            .clone()
            .fetch_deniable_key_packages(proto::FetchDeniableKeyPackagesRequest {
                inbox: fetch.target.as_bytes().to_vec(),
                requester_inbox: fetch.requester_inbox.as_bytes().to_vec(),
                requester_installation_id: fetch.requester.as_bytes().to_vec(),
                timestamp_ms: fetch.timestamp_ms,
                mac: fetch.mac,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        fetched_from_proto(answer)
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        let info = self
            .client
            .clone()
            .get_node_info(proto::GetNodeInfoRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(NodeInfo {
            node_id: info.node_id,
            settle_window_ms: info.settle_window_ms,
            static_key: info.static_key.as_slice().try_into().map_err(|_| {
                malformed(format!(
                    "the node's static key is {} bytes, not 32",
                    info.static_key.len()
                ))
            })?,
            limits: info.limits.map(limits_from_proto).unwrap_or_default(),
        })
    }
}

/// The limits a node advertised; a field it left at zero (a node older
/// than the field) keeps its default.
fn limits_from_proto(l: proto::NodeLimits) -> crate::node::NodeLimits {
    use crate::node::{BucketLimit, NodeLimits};
    let d = NodeLimits::default();
    let size = |v: u64, default: usize| {
        if v == 0 {
            default
        } else {
            usize::try_from(v).unwrap_or(usize::MAX)
        }
    };
    let count = |v: u32, default: usize| size(u64::from(v), default);
    let bucket = |burst: u32, per_minute: u32, default: BucketLimit| {
        if burst == 0 && per_minute == 0 {
            default
        } else {
            BucketLimit { burst, per_minute }
        }
    };
    NodeLimits {
        max_envelope_bytes: size(l.max_envelope_bytes, d.max_envelope_bytes),
        max_message_bytes: size(l.max_message_bytes, d.max_message_bytes),
        max_batch_envelopes: count(l.max_batch_envelopes, d.max_batch_envelopes),
        max_page_envelopes: count(l.max_page_envelopes, d.max_page_envelopes),
        max_subscription_topics: count(l.max_subscription_topics, d.max_subscription_topics),
        max_identity_inboxes: count(l.max_identity_inboxes, d.max_identity_inboxes),
        max_batch_key_packages: count(l.max_batch_key_packages, d.max_batch_key_packages),
        fetch_per_requester: bucket(
            l.fetch_burst_per_requester,
            l.fetch_per_minute_per_requester,
            d.fetch_per_requester,
        ),
        fetch_per_target: bucket(
            l.fetch_burst_per_target,
            l.fetch_per_minute_per_target,
            d.fetch_per_target,
        ),
        fetch_per_pair: bucket(
            l.fetch_burst_per_pair,
            l.fetch_per_minute_per_pair,
            d.fetch_per_pair,
        ),
        timestamp_window: if l.timestamp_window_ms == 0 {
            d.timestamp_window
        } else {
            Duration::from_millis(l.timestamp_window_ms)
        },
    }
}

fn fetched_from_proto(
    answer: proto::FetchKeyPackagesResponse,
) -> Result<Vec<FetchedKeyPackage>, ClientError> {
    answer
        .key_packages
        .into_iter()
        .map(|p| {
            Ok(FetchedKeyPackage {
                installation: convert::installation("installation_id", &p.installation_id)
                    .map_err(malformed)?,
                key_package: p
                    .key_package
                    .map(|bytes| kith_engine::delivery::StoredKeyPackage {
                        bytes,
                        last_resort: p.last_resort,
                    }),
            })
        })
        .collect()
}
