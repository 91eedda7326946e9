//! `KeyPackageManager`: keeps this installation's one-time key packages on
//! the node topped up and its last-resort package fresh (DESIGN.md
//! section 4), by running the engine's inventory plan on a timer and after
//! every Welcome. It keeps two pools: the ordinary one, and the deniable
//! one that deniable DMs add this installation from (DESIGN.md section 8),
//! whose uploads are MACed instead of signed.

use std::sync::Arc;

use actix::prelude::*;
use kith_engine::identity::{
    KeyPackageInventoryStore as _, execute_deniable_plan, execute_plan, upload_tag,
};
use kith_transport::node::{
    DeniableKeyPackageUpload, KeyPackageUpload, deniable_upload_bytes, upload_signed_bytes,
};
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
}

impl KeyPackageManager {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Actor for KeyPackageManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self.shared.config.key_package_interval;
        ctx.run_interval(interval, |_, ctx| ctx.notify(Refill));
    }
}

/// Upload packages (possibly none, to learn the count), signed by the
/// installation; returns the one-time packages the node now holds.
async fn upload(
    shared: &Shared,
    one_time: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<u32, Error> {
    let timestamp_ms = now_ms();
    let installation = shared.keys.id();
    let signed = upload_signed_bytes(
        timestamp_ms,
        &installation,
        &one_time,
        last_resort.as_deref(),
    );
    // The private keys of what goes out must survive a power loss.
    shared.flush_before_output()?;
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
    Ok(u32::try_from(left).unwrap_or(u32::MAX))
}

/// One of the two pools this installation keeps on the node.
#[derive(Clone, Copy, Debug)]
enum Pool {
    Ordinary,
    Deniable,
}

/// Encoded packages to upload: one-time ones and a last-resort one.
type Made = (Vec<Vec<u8>>, Option<Vec<u8>>);

async fn upload_to(
    shared: &Shared,
    pool: Pool,
    one_time: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<u32, Error> {
    match pool {
        Pool::Ordinary => upload(shared, one_time, last_resort).await,
        Pool::Deniable => upload_deniable(shared, one_time, last_resort).await,
    }
}

/// Run `pool`'s inventory plan once; returns the one-time packages left on
/// the node.
async fn refill(shared: Arc<Shared>, pool: Pool) -> Result<u32, Error> {
    // Ask the node how many are left (an empty upload) rather than keep an
    // estimate: others' fetches drain the pool without telling us, and
    // after a restart an estimate would be gone.
    let remaining = upload_to(&shared, pool, Vec::new(), None).await?;
    let now = now_ms();
    let made = {
        let shared = Arc::clone(&shared);
        // Generating a hundred packages is CPU work plus an fsync: keep it
        // off the actor's thread. Keys and inventory commit in one step.
        tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let step = shared.storage().begin_step()?;
            let made = match pool {
                Pool::Ordinary => generate_ordinary(&shared, remaining, now)?,
                Pool::Deniable => generate_deniable(&shared, remaining, now)?,
            };
            step.commit()?;
            Ok(made)
        })
        .await
        .map_err(|e| Error::Storage(format!("key-package generation: {e}")))??
    };
    match made {
        Some((one_time, last_resort)) => upload_to(&shared, pool, one_time, last_resort).await,
        None => Ok(remaining),
    }
}

fn generate_ordinary(shared: &Shared, remaining: u32, now: u64) -> Result<Option<Made>, Error> {
    let storage = shared.storage();
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
    Ok(Some((
        generated
            .one_time
            .iter()
            .map(encode)
            .collect::<Result<_, _>>()?,
        generated.last_resort.as_ref().map(encode).transpose()?,
    )))
}

/// Each deniable package's leaf key is kept in the same storage step as
/// its HPKE keys, before the upload: a Welcome for the package needs both.
/// Leaf keys of retired last-resort packages are deleted unless a DM signs
/// with them.
fn generate_deniable(shared: &Shared, remaining: u32, now: u64) -> Result<Option<Made>, Error> {
    let storage = shared.storage();
    let mut inventory = storage.load_deniable_inventory()?;
    let policy = &shared.config.deniable_key_packages;
    let plan = policy.plan(&inventory, remaining, now);
    if plan.is_empty() {
        return Ok(None);
    }
    let generated = execute_deniable_plan(
        &shared.provider,
        &mut rand_core::OsRng,
        policy,
        &mut inventory,
        &plan,
        now,
    )
    .map_err(|e| Error::Storage(e.to_string()))?;
    let store = shared.store();
    for made in generated.one_time.iter().chain(&generated.last_resort) {
        store.put_ephemeral_key(&made.leaf_key)?;
    }
    for leaf_key in &generated.retired_leaf_keys {
        store.retire_ephemeral_key(leaf_key)?;
    }
    storage.save_deniable_inventory(&inventory)?;
    Ok(Some((
        generated
            .one_time
            .iter()
            .map(|made| encode(&made.key_package))
            .collect::<Result<_, _>>()?,
        generated
            .last_resort
            .as_ref()
            .map(|made| encode(&made.key_package))
            .transpose()?,
    )))
}

fn encode(key_package: &openmls::prelude::KeyPackage) -> Result<Vec<u8>, Error> {
    openmls::prelude::MlsMessageOut::from(key_package.clone())
        .tls_serialize_detached()
        .map_err(|e| Error::Storage(format!("encoding a key package: {e}")))
}

/// Upload deniable packages (possibly none, to learn the count), MACed with
/// the key this installation shares with the node; returns the one-time
/// deniable packages the node now holds.
async fn upload_deniable(
    shared: &Shared,
    one_time: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<u32, Error> {
    let installation = shared.keys.id();
    shared.flush_before_output()?;
    let left = shared
        .with_deniable_mac(|key| {
            let timestamp_ms = now_ms();
            let macd = deniable_upload_bytes(
                timestamp_ms,
                &shared.inbox,
                &installation,
                &one_time,
                last_resort.as_deref(),
            );
            shared
                .node
                .upload_deniable_key_packages(DeniableKeyPackageUpload {
                    inbox: shared.inbox,
                    installation,
                    one_time: one_time.clone(),
                    last_resort: last_resort.clone(),
                    timestamp_ms,
                    mac: upload_tag(&key, &macd).to_vec(),
                })
        })
        .await?;
    Ok(u32::try_from(left).unwrap_or(u32::MAX))
}

/// Check the pool now.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Refill;

impl Handler<Refill> for KeyPackageManager {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, _: Refill, _: &mut Self::Context) -> Self::Result {
        let shared = Arc::clone(&self.shared);
        let fut = async move {
            let left = refill(Arc::clone(&shared), Pool::Ordinary).await?;
            let deniable_left = refill(shared, Pool::Deniable).await?;
            tracing::debug!(left, deniable_left, "key-package pools checked");
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
        ctx.notify(Refill);
    }
}
