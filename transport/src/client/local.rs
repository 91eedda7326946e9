//! [`LocalNode`]: the node logic in-process, behind the same
//! [`DeliveryClient`] trait as a remote node.

use std::sync::Arc;

use kith_engine::{
    delivery::{Cursor, Envelope, NodeStore, SealedEnvelope, Topic},
    identity::{IdentityUpdate, InboxId},
};
use tokio_stream::wrappers::ReceiverStream;

use super::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage};
use crate::node::{
    DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
    KeyPackageUpload, NodeLogic,
};

/// A node running in this process. Cloning shares it.
#[derive(Debug)]
pub struct LocalNode<S> {
    logic: Arc<NodeLogic<S>>,
}

impl<S> Clone for LocalNode<S> {
    fn clone(&self) -> Self {
        Self {
            logic: Arc::clone(&self.logic),
        }
    }
}

impl<S: NodeStore + 'static> LocalNode<S> {
    /// A local node over `logic` (which a gRPC server may share).
    pub fn new(logic: Arc<NodeLogic<S>>) -> Self {
        Self { logic }
    }
}

fn unseal(sealed: Vec<SealedEnvelope>) -> Vec<Envelope> {
    sealed.into_iter().map(|s| s.envelope).collect()
}

#[async_trait::async_trait]
impl<S: NodeStore + 'static> DeliveryClient for LocalNode<S> {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        let batch = batch.into_iter().map(|(t, p)| (t.to_string(), p)).collect();
        // In-process, the seals vouch for nothing the caller does not
        // already trust.
        Ok(unseal(self.logic.publish(batch).await?))
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (envelopes, next_cursor, more) = self
            .logic
            .query(&topic.to_string(), cursor.clone(), limit)
            .await?;
        Ok(QueryPage {
            envelopes: unseal(envelopes),
            next_cursor,
            more,
        })
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let topics = topics
            .into_iter()
            .map(|(t, c)| (t.to_string(), c))
            .collect();
        let mut batches = self.logic.subscribe(topics)?;
        // Unbatch into single envelopes; stop as soon as the consumer leaves,
        // which in turn ends the node's subscription task.
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    () = tx.closed() => return,
                    batch = batches.recv() => batch,
                };
                match batch {
                    Some(Ok(envelopes)) => {
                        for envelope in unseal(envelopes) {
                            if tx.send(Ok(envelope)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(ClientError::from(e))).await;
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        Ok(self.logic.publish_identity_update(update).await?)
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        Ok(self.logic.identity_updates(requests).await?)
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        Ok(self.logic.upload_key_packages(upload).await?)
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        Ok(self.logic.fetch_key_packages(fetch).await?)
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        Ok(self.logic.upload_deniable_key_packages(upload).await?)
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        Ok(self.logic.fetch_deniable_key_packages(fetch).await?)
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        Ok(NodeInfo {
            node_id: self.logic.config().node_id,
            settle_window_ms: self.logic.config().settle_window_ms(),
            static_key: self.logic.static_key().await?,
            limits: self.logic.config().limits,
        })
    }
}
