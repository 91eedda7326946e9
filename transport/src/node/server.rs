//! Serving a [`NodeLogic`] over gRPC on a listener, with the standard health
//! and reflection services, until a shutdown future resolves.

use std::{future::Future, sync::Arc};

use kith_engine::delivery::NodeStore;
use tokio::net::TcpListener;
use tokio_stream::{StreamExt as _, wrappers::TcpListenerStream};

use super::{logic::NodeLogic, service::NodeService};
use crate::proto;

/// Serve `logic` on `listener` until `shutdown` resolves; in-flight calls
/// finish first. Includes `grpc.health.v1` (the node reports SERVING) and
/// server reflection, so that standard gRPC tools can list and call it.
pub async fn serve<S: NodeStore + 'static>(
    listener: TcpListener,
    logic: Arc<NodeLogic<S>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::node_server::NodeServer<NodeService<S>>>()
        .await;
    // Both reflection versions: grpcurl and grpcui ask for v1, while
    // Python's grpc_reflection client and older tools ask for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_alpha) = (
        reflection().build_v1().map_err(reflection_error),
        reflection().build_v1alpha().map_err(reflection_error),
    );
    let max_message_bytes = logic.config().limits.max_message_bytes;
    let closing = Arc::clone(&logic);
    let shutdown = async move {
        shutdown.await;
        closing.close_subscriptions();
    };
    let mut router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(
            proto::node_server::NodeServer::new(NodeService::new(logic))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    if let Ok(reflection) = reflection_alpha {
        router = router.add_service(reflection);
    }
    // Small request/response exchanges must not wait for Nagle's algorithm
    // to meet the peer's delayed ACK (about 40 ms per call otherwise).
    let incoming = TcpListenerStream::new(listener).map(|connection| {
        if let Ok(stream) = &connection
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
        connection
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The descriptor set is generated at build time and always valid; if it
/// ever is not, the node serves without reflection, and says why.
fn reflection_error(e: tonic_reflection::server::Error) -> tonic_reflection::server::Error {
    tracing::error!("reflection descriptor is invalid: {e}");
    e
}
