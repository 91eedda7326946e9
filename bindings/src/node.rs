//! [`EmbeddedNode`]: a Kith node inside the process, for apps and tests
//! that run without a `kith-node` server.

use std::sync::Arc;

use kith::LocalNode;
use kith_engine::delivery::MemoryNodeStore;
use kith_storage::SledNodeStore;
use kith_transport::{
    client::DeliveryClient,
    node::{NodeConfig, NodeLogic},
};

use crate::KithError;

/// A node in this process. Clients of the same process share it by
/// passing it in their [`ClientOptions`](crate::ClientOptions).
#[derive(uniffi::Object)]
pub struct EmbeddedNode {
    client: Arc<dyn DeliveryClient>,
}

impl std::fmt::Debug for EmbeddedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedNode")
    }
}

impl EmbeddedNode {
    pub(crate) fn client(&self) -> Arc<dyn DeliveryClient> {
        Arc::clone(&self.client)
    }
}

#[uniffi::export]
impl EmbeddedNode {
    /// A node that keeps everything in memory and forgets it on exit.
    #[uniffi::constructor]
    pub fn in_memory() -> Arc<Self> {
        let logic = NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default());
        Arc::new(Self {
            client: Arc::new(LocalNode::new(Arc::new(logic))),
        })
    }

    /// A node whose store is a sled database in `path` (created if
    /// missing), kept across runs.
    #[uniffi::constructor]
    pub fn open(path: String) -> Result<Arc<Self>, KithError> {
        let store = SledNodeStore::open(&path)
            .map_err(|e| KithError::Storage(format!("node store at {path}: {e}")))?;
        let logic = NodeLogic::new(NodeConfig::new(1), store);
        Ok(Arc::new(Self {
            client: Arc::new(LocalNode::new(Arc::new(logic))),
        }))
    }
}
