//! The gRPC face of [`NodeLogic`]: decode, delegate, encode. Every handler
//! runs in a tracing span; errors map to statuses in `error.rs`.
//!
//! One thing here is more than a translation: a key-package fetch that
//! finds no package for some installation is forwarded to the node's peers.
//! An installation's packages live on the node it uploaded them to (its
//! home), and only that node hands them out, so a one-time package is never
//! given twice however many nodes are asked, and the per-target rate limits
//! of the home node hold for every requester wherever it asks. A forwarded
//! request is the requester's own signed request, marked so that the peer
//! does not forward it again. A deniable fetch, whose MAC only this node can
//! check, goes to the peers as `ForwardDeniableFetch`, signed by this node
//! (`logic/forwarded.rs` says why that keeps it deniable); peers never pass
//! that on.

use std::{pin::Pin, sync::Arc, time::Duration};

use kith_engine::delivery::{NodeStore, StoredKeyPackage};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    error::NodeError,
    logic::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage,
        ForwardedDeniableFetch, KeyPackageFetch, KeyPackageUpload, NodeLogic,
    },
};
use crate::{convert, proto};

/// The tonic service over a [`NodeLogic`].
#[derive(Debug)]
pub struct NodeService<S> {
    logic: Arc<NodeLogic<S>>,
    /// gRPC clients of the configured peers, made on first use (a lazy
    /// channel needs the runtime).
    peers: tokio::sync::OnceCell<Vec<(u32, PeerClient)>>,
}

type PeerClient = proto::node_client::NodeClient<tonic::transport::Channel>;

/// The metadata key that marks a key-package fetch forwarded by a peer.
pub(crate) const FORWARDED_METADATA: &str = "kith-forwarded-by";

/// How long a forwarded fetch may take at one peer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

impl<S> NodeService<S> {
    /// A service over `logic`.
    pub fn new(logic: Arc<NodeLogic<S>>) -> Self {
        Self {
            logic,
            peers: tokio::sync::OnceCell::new(),
        }
    }
}

impl<S: NodeStore + 'static> NodeService<S> {
    async fn peers(&self) -> &[(u32, PeerClient)] {
        self.peers
            .get_or_init(|| async {
                self.logic
                    .config()
                    .peers
                    .iter()
                    .filter_map(|peer| {
                        let channel = tonic::transport::Channel::from_shared(peer.url.clone())
                            .map_err(|e| tracing::warn!(peer = peer.node_id, %e, "bad peer URL"))
                            .ok()?
                            .timeout(FORWARD_TIMEOUT)
                            .connect_lazy();
                        let limit = self.logic.config().limits.max_message_bytes;
                        let client = PeerClient::new(channel)
                            .max_decoding_message_size(limit)
                            .max_encoding_message_size(limit);
                        Some((peer.node_id, client))
                    })
                    .collect()
            })
            .await
    }

    /// Ask the peers for the packages `answer` lacks, with the requester's
    /// own signed `request`, and fill in what a peer hands out. A peer that
    /// fails is skipped (the fetch answers with what it has, as before).
    async fn forward_fetch(
        &self,
        request: &proto::FetchKeyPackagesRequest,
        answer: &mut proto::FetchKeyPackagesResponse,
    ) {
        let own_id = self.logic.config().node_id;
        for (peer_id, client) in self.peers().await {
            if answer.key_packages.iter().all(|f| f.key_package.is_some()) {
                return;
            }
            let mut forwarded = Request::new(request.clone());
            if let Ok(value) = own_id.to_string().parse() {
                forwarded.metadata_mut().insert(FORWARDED_METADATA, value);
            }
            let fetched = match client.clone().fetch_key_packages(forwarded).await {
                Ok(response) => response.into_inner().key_packages,
                Err(status) => {
                    tracing::debug!(peer = peer_id, %status, "forwarded key-package fetch failed");
                    continue;
                }
            };
            for (mine, theirs) in answer.key_packages.iter_mut().zip(fetched) {
                if mine.key_package.is_none()
                    && theirs.key_package.is_some()
                    && theirs.installation_id == mine.installation_id
                {
                    *mine = theirs;
                }
            }
        }
    }

    /// Ask the peers, in this node's name, for the deniable packages of
    /// `fetch`'s target that `answer` lacks (`fetch` was authenticated
    /// here), and fill in what a peer hands out. A peer that fails is
    /// skipped.
    async fn forward_deniable_fetch(
        &self,
        fetch: &DeniableKeyPackageFetch,
        answer: &mut [FetchedKeyPackage],
    ) -> Result<(), NodeError> {
        for (peer_id, client) in self.peers().await {
            let missing: Vec<_> = answer
                .iter()
                .filter(|f| f.key_package.is_none())
                .map(|f| f.installation)
                .collect();
            if missing.is_empty() {
                break;
            }
            let forwarded = self
                .logic
                .forward_deniable(
                    fetch.requester_inbox,
                    fetch.requester,
                    fetch.target,
                    missing,
                )
                .await?;
            let request = proto::ForwardDeniableFetchRequest {
                node_id: forwarded.node_id,
                timestamp_ms: forwarded.timestamp_ms,
                requester_inbox: forwarded.requester_inbox.as_bytes().to_vec(),
                requester_installation_id: forwarded.requester.as_bytes().to_vec(),
                inbox: forwarded.target.as_bytes().to_vec(),
                installation_ids: forwarded
                    .installations
                    .iter()
                    .map(|id| id.as_bytes().to_vec())
                    .collect(),
                signature: forwarded.signature,
            };
            let fetched = match client.clone().forward_deniable_fetch(request).await {
                Ok(response) => response.into_inner().key_packages,
                Err(status) => {
                    tracing::debug!(peer = peer_id, %status, "forwarded deniable fetch failed");
                    continue;
                }
            };
            // A peer's answer is trusted no more than the client trusts this
            // node's: only a package for an installation asked about fills a
            // gap, and the client checks each package it gets.
            for theirs in fetched {
                let (Ok(installation), Some(bytes)) = (
                    convert::installation("installation_id", &theirs.installation_id),
                    theirs.key_package,
                ) else {
                    continue;
                };
                if let Some(mine) = answer
                    .iter_mut()
                    .find(|f| f.installation == installation && f.key_package.is_none())
                {
                    mine.key_package = Some(StoredKeyPackage {
                        bytes,
                        last_resort: theirs.last_resort,
                    });
                }
            }
        }
        Ok(())
    }
}

type EnvelopeStream =
    Pin<Box<dyn Stream<Item = Result<proto::SubscribeEnvelopesResponse, Status>> + Send>>;
type OriginatedStream =
    Pin<Box<dyn Stream<Item = Result<proto::SubscribeOriginatedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: NodeStore + 'static> proto::node_server::Node for NodeService<S> {
    #[tracing::instrument(skip_all, fields(envelopes = request.get_ref().envelopes.len()))]
    async fn publish_envelopes(
        &self,
        request: Request<proto::PublishEnvelopesRequest>,
    ) -> Result<Response<proto::PublishEnvelopesResponse>, Status> {
        let batch = request
            .into_inner()
            .envelopes
            .into_iter()
            .map(|e| (e.topic, e.payload))
            .collect();
        let stored = self.logic.publish(batch).await?;
        Ok(Response::new(proto::PublishEnvelopesResponse {
            envelopes: stored.iter().map(convert::sealed_to_proto).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(topic = %request.get_ref().topic))]
    async fn query_envelopes(
        &self,
        request: Request<proto::QueryEnvelopesRequest>,
    ) -> Result<Response<proto::QueryEnvelopesResponse>, Status> {
        let request = request.into_inner();
        let cursor = convert::cursor_from_proto(request.cursor);
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let (page, next, more) = self.logic.query(&request.topic, cursor, limit).await?;
        Ok(Response::new(proto::QueryEnvelopesResponse {
            envelopes: page.iter().map(convert::sealed_to_proto).collect(),
            next_cursor: Some(convert::cursor_to_proto(&next)),
            more,
        }))
    }

    type SubscribeEnvelopesStream = EnvelopeStream;

    #[tracing::instrument(skip_all, fields(topics = request.get_ref().topics.len()))]
    async fn subscribe_envelopes(
        &self,
        request: Request<proto::SubscribeEnvelopesRequest>,
    ) -> Result<Response<Self::SubscribeEnvelopesStream>, Status> {
        let topics = request
            .into_inner()
            .topics
            .into_iter()
            .map(|t| (t.topic, convert::cursor_from_proto(t.cursor)))
            .collect();
        let receiver = self.logic.subscribe(topics)?;
        let stream = ReceiverStream::new(receiver).map(|batch| {
            batch
                .map(|envelopes| proto::SubscribeEnvelopesResponse {
                    envelopes: envelopes.iter().map(convert::sealed_to_proto).collect(),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(one_time = request.get_ref().one_time.len()))]
    async fn upload_key_packages(
        &self,
        request: Request<proto::UploadKeyPackagesRequest>,
    ) -> Result<Response<proto::UploadKeyPackagesResponse>, Status> {
        let request = request.into_inner();
        let upload = KeyPackageUpload {
            installation: convert::installation("installation_id", &request.installation_id)
                .map_err(NodeError::from)?,
            one_time: request.one_time,
            last_resort: request.last_resort,
            timestamp_ms: request.timestamp_ms,
            signature: request.signature,
        };
        let left = self.logic.upload_key_packages(upload).await?;
        Ok(Response::new(proto::UploadKeyPackagesResponse {
            one_time_available: u32::try_from(left).unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(skip_all, fields(targets = request.get_ref().installation_ids.len()))]
    async fn fetch_key_packages(
        &self,
        request: Request<proto::FetchKeyPackagesRequest>,
    ) -> Result<Response<proto::FetchKeyPackagesResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let request = request.into_inner();
        let targets = request
            .installation_ids
            .iter()
            .map(|id| convert::installation("installation_ids", id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(NodeError::from)?;
        let fetch = KeyPackageFetch {
            targets,
            requester_inbox: convert::inbox("requester_inbox", &request.requester_inbox)
                .map_err(NodeError::from)?,
            requester: convert::installation(
                "requester_installation_id",
                &request.requester_installation_id,
            )
            .map_err(NodeError::from)?,
            timestamp_ms: request.timestamp_ms,
            signature: request.signature.clone(),
        };
        let fetched = self.logic.fetch_key_packages(fetch).await?;
        let mut answer = fetched_to_proto(fetched);
        if !forwarded {
            self.forward_fetch(&request, &mut answer).await;
        }
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, fields(one_time = request.get_ref().one_time.len()))]
    async fn upload_deniable_key_packages(
        &self,
        request: Request<proto::UploadDeniableKeyPackagesRequest>,
    ) -> Result<Response<proto::UploadKeyPackagesResponse>, Status> {
        let request = request.into_inner();
        let upload = DeniableKeyPackageUpload {
            inbox: convert::inbox("inbox", &request.inbox).map_err(NodeError::from)?,
            installation: convert::installation("installation_id", &request.installation_id)
                .map_err(NodeError::from)?,
            one_time: request.one_time,
            last_resort: request.last_resort,
            timestamp_ms: request.timestamp_ms,
            mac: request.mac,
        };
        let left = self.logic.upload_deniable_key_packages(upload).await?;
        Ok(Response::new(proto::UploadKeyPackagesResponse {
            one_time_available: u32::try_from(left).unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn fetch_deniable_key_packages(
        &self,
        request: Request<proto::FetchDeniableKeyPackagesRequest>,
    ) -> Result<Response<proto::FetchKeyPackagesResponse>, Status> {
        let request = request.into_inner();
        let fetch = DeniableKeyPackageFetch {
            target: convert::inbox("inbox", &request.inbox).map_err(NodeError::from)?,
            requester_inbox: convert::inbox("requester_inbox", &request.requester_inbox)
                .map_err(NodeError::from)?,
            requester: convert::installation(
                "requester_installation_id",
                &request.requester_installation_id,
            )
            .map_err(NodeError::from)?,
            timestamp_ms: request.timestamp_ms,
            mac: request.mac,
        };
        let mut fetched = self
            .logic
            .fetch_deniable_key_packages(fetch.clone())
            .await?;
        self.forward_deniable_fetch(&fetch, &mut fetched).await?;
        Ok(Response::new(fetched_to_proto(fetched)))
    }

    #[tracing::instrument(skip_all, fields(peer = request.get_ref().node_id))]
    async fn forward_deniable_fetch(
        &self,
        request: Request<proto::ForwardDeniableFetchRequest>,
    ) -> Result<Response<proto::FetchKeyPackagesResponse>, Status> {
        let request = request.into_inner();
        let forwarded = ForwardedDeniableFetch {
            node_id: request.node_id,
            timestamp_ms: request.timestamp_ms,
            requester_inbox: convert::inbox("requester_inbox", &request.requester_inbox)
                .map_err(NodeError::from)?,
            requester: convert::installation(
                "requester_installation_id",
                &request.requester_installation_id,
            )
            .map_err(NodeError::from)?,
            target: convert::inbox("inbox", &request.inbox).map_err(NodeError::from)?,
            installations: request
                .installation_ids
                .iter()
                .map(|id| convert::installation("installation_ids", id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(NodeError::from)?,
            signature: request.signature,
        };
        let fetched = self.logic.fetch_forwarded_deniable(forwarded).await?;
        Ok(Response::new(fetched_to_proto(fetched)))
    }

    #[tracing::instrument(skip_all)]
    async fn publish_identity_update(
        &self,
        request: Request<proto::PublishIdentityUpdateRequest>,
    ) -> Result<Response<proto::PublishIdentityUpdateResponse>, Status> {
        let update = request
            .into_inner()
            .update
            .ok_or_else(|| NodeError::InvalidArgument("missing update".into()))?;
        let update = convert::identity_update_from_proto(&update).map_err(NodeError::from)?;
        let sequence = self.logic.publish_identity_update(update).await?;
        Ok(Response::new(proto::PublishIdentityUpdateResponse {
            sequence,
        }))
    }

    #[tracing::instrument(skip_all, fields(inboxes = request.get_ref().inboxes.len()))]
    async fn get_identity_updates(
        &self,
        request: Request<proto::GetIdentityUpdatesRequest>,
    ) -> Result<Response<proto::GetIdentityUpdatesResponse>, Status> {
        let requests = request
            .into_inner()
            .inboxes
            .iter()
            .map(|i| Ok((convert::inbox("inboxes.inbox", &i.inbox)?, i.after_sequence)))
            .collect::<Result<Vec<_>, convert::ConvertError>>()
            .map_err(NodeError::from)?;
        let inboxes: Vec<_> = requests.iter().map(|(inbox, _)| *inbox).collect();
        let answers = self.logic.identity_updates(requests).await?;
        let inboxes = inboxes
            .into_iter()
            .zip(answers)
            .map(|(inbox, updates)| {
                Ok(proto::InboxUpdates {
                    inbox: inbox.as_bytes().to_vec(),
                    updates: updates
                        .iter()
                        .map(convert::identity_update_to_proto)
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, convert::ConvertError>>()
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(Response::new(proto::GetIdentityUpdatesResponse { inboxes }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_node_info(
        &self,
        _request: Request<proto::GetNodeInfoRequest>,
    ) -> Result<Response<proto::GetNodeInfoResponse>, Status> {
        let config = self.logic.config();
        let static_key = self.logic.static_key().await?;
        let originators = self.logic.originator_keys().await?;
        let l = config.limits;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let consistency_mode = if config.peers.is_empty() {
            proto::ConsistencyMode::Strong
        } else {
            proto::ConsistencyMode::Eventual
        };
        Ok(Response::new(proto::GetNodeInfoResponse {
            node_id: config.node_id,
            consistency_mode: consistency_mode as i32,
            settle_window_ms: config.settle_window_ms(),
            limits: Some(proto::NodeLimits {
                max_envelope_bytes: l.max_envelope_bytes as u64,
                max_message_bytes: l.max_message_bytes as u64,
                max_batch_envelopes: n(l.max_batch_envelopes),
                max_page_envelopes: n(l.max_page_envelopes),
                max_subscription_topics: n(l.max_subscription_topics),
                max_identity_inboxes: n(l.max_identity_inboxes),
                max_batch_key_packages: n(l.max_batch_key_packages),
                fetch_burst_per_requester: l.fetch_per_requester.burst,
                fetch_per_minute_per_requester: l.fetch_per_requester.per_minute,
                fetch_burst_per_target: l.fetch_per_target.burst,
                fetch_per_minute_per_target: l.fetch_per_target.per_minute,
                fetch_burst_per_pair: l.fetch_per_pair.burst,
                fetch_per_minute_per_pair: l.fetch_per_pair.per_minute,
                timestamp_window_ms: u64::try_from(l.timestamp_window.as_millis())
                    .unwrap_or(u64::MAX),
            }),
            static_key: static_key.to_vec(),
            node_key: self.logic.public_key().await?.to_vec(),
            originator_keys: originators
                .into_iter()
                .map(|(node_id, key)| proto::OriginatorKey {
                    node_id,
                    public_key: key.to_vec(),
                })
                .collect(),
        }))
    }

    type SubscribeOriginatedStream = OriginatedStream;

    #[tracing::instrument(skip_all, fields(
        originator = request.get_ref().originator_node_id,
        after = request.get_ref().after_sequence_id,
    ))]
    async fn subscribe_originated(
        &self,
        request: Request<proto::SubscribeOriginatedRequest>,
    ) -> Result<Response<Self::SubscribeOriginatedStream>, Status> {
        let request = request.into_inner();
        let receiver = self
            .logic
            .subscribe_originated(request.originator_node_id, request.after_sequence_id);
        let stream = ReceiverStream::new(receiver).map(|batch| {
            batch
                .map(|envelopes| proto::SubscribeOriginatedResponse {
                    envelopes: envelopes.iter().map(convert::sealed_to_proto).collect(),
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn fetched_to_proto(fetched: Vec<FetchedKeyPackage>) -> proto::FetchKeyPackagesResponse {
    proto::FetchKeyPackagesResponse {
        key_packages: fetched
            .into_iter()
            .map(|f| proto::FetchedKeyPackage {
                installation_id: f.installation.as_bytes().to_vec(),
                last_resort: f.key_package.as_ref().is_some_and(|p| p.last_resort),
                key_package: f.key_package.map(|p| p.bytes),
            })
            .collect(),
    }
}
