//! `KeyPackageManager`: keeps this installation's one-time key packages on
//! the node topped up and its last-resort package fresh (DESIGN.md
//! section 4), by running the engine's inventory plan on a timer and after
//! every Welcome.

use std::sync::Arc;

use actix::prelude::*;
use kith_engine::identity::{KeyPackageInventoryStore as _, execute_plan};
use kith_transport::node::{KeyPackageUpload, upload_signed_bytes};
use openmls::prelude::tls_codec::Serialize as _;
use tracing::Instrument as _;

use crate::{
    Error,
    shared::{Shared, now_ms},
};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct KeyPackageManager {
    shared: Arc<Shared>,
    /// One-time packages the node last reported; unknown (0) at start, so
    /// the first run tops the pool up.
    remaining: Arc<std::sync::atomic::AtomicU32>,
}

impl KeyPackageManager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            remaining: Arc::default(),
        }
    }
}

impl Actor for KeyPackageManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self.shared.config.key_package_interval;
        ctx.run_interval(interval, |_, ctx| ctx.notify(Refill));
    }
}

async fn refill(shared: Arc<Shared>, remaining: u32) -> Result<Option<u32>, Error> {
    let now = now_ms();
    let generated = {
        let shared = Arc::clone(&shared);
        // Generating a hundred packages is CPU work plus an fsync: keep it
        // off the actor's thread.
        tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let storage = shared.storage();
            let step = storage.begin_step()?;
            let mut inventory = storage.load_inventory()?;
            let plan = shared.config.key_packages.plan(&inventory, remaining, now);
            if plan.is_empty() {
                return Ok(None);
            }
            let generated = execute_plan(
                &shared.provider,
                &shared.keys,
                shared.inbox,
                &shared.config.key_packages,
                &mut inventory,
                &plan,
                now,
            )
            .map_err(|e| Error::Storage(e.to_string()))?;
            storage.save_inventory(&inventory)?;
            step.commit()?;
            Ok(Some(generated))
        })
        .await
        .map_err(|e| Error::Storage(format!("key-package generation: {e}")))??
    };
    let Some(generated) = generated else {
        return Ok(None);
    };
    let encode = |kp: &openmls::prelude::KeyPackage| -> Result<Vec<u8>, Error> {
        openmls::prelude::MlsMessageOut::from(kp.clone())
            .tls_serialize_detached()
            .map_err(|e| Error::Storage(format!("encoding a key package: {e}")))
    };
    let one_time = generated
        .one_time
        .iter()
        .map(encode)
        .collect::<Result<Vec<_>, _>>()?;
    let last_resort = generated.last_resort.as_ref().map(encode).transpose()?;
    let timestamp_ms = now_ms();
    let installation = shared.keys.id();
    let signed = upload_signed_bytes(
        timestamp_ms,
        &installation,
        &one_time,
        last_resort.as_deref(),
    );
    let left = shared
        .node
        .upload_key_packages(KeyPackageUpload {
            installation,
            one_time,
            last_resort,
            timestamp_ms,
            signature: shared.keys.sign(&signed).to_vec(),
        })
        .await?;
    Ok(Some(u32::try_from(left).unwrap_or(u32::MAX)))
}

/// Check the pool now.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Refill;

impl Handler<Refill> for KeyPackageManager {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, _: Refill, _: &mut Self::Context) -> Self::Result {
        let shared = Arc::clone(&self.shared);
        let remaining = Arc::clone(&self.remaining);
        let fut = async move {
            use std::sync::atomic::Ordering;
            if let Some(left) = refill(shared, remaining.load(Ordering::SeqCst)).await? {
                tracing::debug!(left, "key packages uploaded");
                remaining.store(left, Ordering::SeqCst);
            }
            Ok(())
        };
        let span = tracing::debug_span!("key_package_refill");
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(fut.instrument(span))))
    }
}

/// A Welcome used one of our packages.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Consumed;

impl Handler<Consumed> for KeyPackageManager {
    type Result = ();

    fn handle(&mut self, _: Consumed, ctx: &mut Self::Context) {
        use std::sync::atomic::Ordering;
        let left = self.remaining.load(Ordering::SeqCst).saturating_sub(1);
        self.remaining.store(left, Ordering::SeqCst);
        ctx.notify(Refill);
    }
}
