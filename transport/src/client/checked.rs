//! [`CheckedClient`]: every answer of a node is checked here before a
//! client acts on it.
//!
//! A client trusts its node to store and forward, not to tell the truth:
//! the node, or anything that implements [`DeliveryClient`] in its place,
//! may lie (DESIGN.md section 7, invariant 4). The wrapper sits around
//! whatever `DeliveryClient` a client is built with, so that the checks are
//! made once, in one place, and cover a custom implementation as well as
//! [`GrpcClient`](super::GrpcClient) and [`LocalNode`](super::LocalNode).
//!
//! ```text
//!  actors ──► CheckedClient ──► any DeliveryClient ──► node
//!                  └── refuses an answer that cannot be true: ClientError::Malformed
//! ```
//!
//! What is refused, whole (an answer is never half used):
//! - **envelopes** (publish, query, subscription): of a topic that was not
//!   asked for; not after the cursor given (or the ones before it in the
//!   same answer); an originator sequence id of 0 or above
//!   [`MAX_SEQUENCE_ID`]; an originator time more than
//!   [`MAX_FUTURE_SKEW_MS`] ahead of this clock; a query page with more
//!   envelopes than asked for (a limit of 0 is sent as
//!   [`DEFAULT_PAGE_LIMIT`], so that there is always a bound), or not in
//!   canonical order. A page's `next_cursor` is recomputed from its
//!   envelopes, never taken from the node. A subscription ends after its
//!   first refused envelope.
//! - **identity updates**: not one answer per inbox asked for, in order; an
//!   update of another inbox than the one it is filed under; sequence
//!   numbers that do not continue, one by one, from the one asked after.
//! - **key packages**: an answer for an installation that was not asked for,
//!   or more than one per installation asked for; a package that is not a
//!   key package, or whose leaf key (the installation id) is not the
//!   installation it is handed out for. A deniable package cannot be tied
//!   to its installation (that is the point of it): those answers are
//!   checked for shape (one per installation, never the requester's own)
//!   and the DM's bindings check the rest (DESIGN.md section 8).
//!
//! What a node can still do, and no check here can see: withhold. It can
//! leave out envelopes, identity updates (a revocation, say) or key
//! packages, answer a query with fewer envelopes than it has, or stop a
//! subscription. A sequence id that jumps ahead but stays under the bounds
//! skips what lies between for that originator: the same as withholding
//! it. Signatures (identity updates, key packages, MLS messages) are
//! verified where the data is used, not here.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::{IdentityUpdate, InboxId, InstallationId},
};
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, tls_codec::Deserialize as _};
use tokio_stream::StreamExt as _;

use super::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage};
use crate::node::{
    Clock, DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
    KeyPackageUpload, SystemClock,
};

/// How far ahead of this client's clock an originator time may be: a day.
/// Either clock may be wrong (a phone set to another time zone by hand, a
/// node whose clock jumped and which keeps its time monotonic); beyond a
/// day the time is a lie, and an envelope stamped far in the future would
/// sort after everything and never settle.
pub const MAX_FUTURE_SKEW_MS: u64 = 24 * 60 * 60 * 1000;

/// The largest originator sequence id believed: 2^53. A node storing a
/// million envelopes a second would need 285 years to get there; a larger
/// one (`u64::MAX`, say) could only move a cursor past everything the node
/// stores later.
pub const MAX_SEQUENCE_ID: u64 = 1 << 53;

/// The page size asked for when the caller leaves it to the node (a limit
/// of 0): the node's default page size.
pub const DEFAULT_PAGE_LIMIT: u32 = 1_000;

/// A [`DeliveryClient`] that checks every answer of the one it wraps. See
/// the module docs.
pub struct CheckedClient {
    inner: Arc<dyn DeliveryClient>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CheckedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedClient").finish_non_exhaustive()
    }
}

impl CheckedClient {
    /// Check the answers of `inner`, against the system clock.
    pub fn new(inner: Arc<dyn DeliveryClient>) -> Self {
        Self::with_clock(inner, Arc::new(SystemClock))
    }

    /// Check the answers of `inner`, against `clock`.
    pub fn with_clock(inner: Arc<dyn DeliveryClient>, clock: Arc<dyn Clock>) -> Self {
        Self { inner, clock }
    }
}

fn malformed(message: impl Into<String>) -> ClientError {
    ClientError::Malformed(message.into())
}

/// Refuse originator fields that cannot be true.
fn check_originator(envelope: &Envelope, now_ms: u64) -> Result<(), ClientError> {
    let sequence = envelope.originator_sequence_id;
    if sequence == 0 || sequence > MAX_SEQUENCE_ID {
        return Err(malformed(format!(
            "an envelope of {} has originator sequence id {sequence} (node {}); ids run from 1 \
             to {MAX_SEQUENCE_ID}",
            envelope.topic, envelope.originator_node_id
        )));
    }
    let latest = now_ms.saturating_add(MAX_FUTURE_SKEW_MS);
    if envelope.originator_time_ms > latest {
        return Err(malformed(format!(
            "an envelope of {} is stamped {} ms, more than a day ahead of this clock ({now_ms} ms)",
            envelope.topic, envelope.originator_time_ms
        )));
    }
    Ok(())
}

/// Check one envelope that should be of `topic` and after `cursor`, and
/// advance the cursor past it.
fn check_next(
    envelope: &Envelope,
    topic: &Topic,
    cursor: &mut Cursor,
    now_ms: u64,
) -> Result<(), ClientError> {
    if envelope.topic != *topic {
        return Err(malformed(format!(
            "an envelope of topic {} in an answer for topic {topic}",
            envelope.topic
        )));
    }
    check_originator(envelope, now_ms)?;
    if !cursor.is_before(envelope) {
        return Err(malformed(format!(
            "an envelope of {topic} with sequence id {} of node {} is not after the cursor \
             (which is at {})",
            envelope.originator_sequence_id,
            envelope.originator_node_id,
            cursor.get(envelope.originator_node_id)
        )));
    }
    cursor.advance(envelope);
    Ok(())
}

/// Check a query page for `topic` after `cursor` of at most `limit`
/// envelopes; returns it with its `next_cursor` recomputed.
fn check_page(
    mut page: QueryPage,
    topic: &Topic,
    cursor: &Cursor,
    limit: u32,
    now_ms: u64,
) -> Result<QueryPage, ClientError> {
    if page.envelopes.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        return Err(malformed(format!(
            "a page of {} envelopes of {topic}; at most {limit} were asked for",
            page.envelopes.len()
        )));
    }
    let mut next = cursor.clone();
    for envelope in &page.envelopes {
        check_next(envelope, topic, &mut next, now_ms)?;
    }
    if page
        .envelopes
        .windows(2)
        .any(|pair| pair[0].canonical_cmp(&pair[1]).is_gt())
    {
        return Err(malformed(format!(
            "a page of {topic} is not in canonical order"
        )));
    }
    page.next_cursor = next;
    Ok(page)
}

/// Check the answer to a publish of `batch`: the same envelopes, stored.
fn check_published(
    batch: &[(Topic, Vec<u8>)],
    stored: &[Envelope],
    now_ms: u64,
) -> Result<(), ClientError> {
    if stored.len() != batch.len() {
        return Err(malformed(format!(
            "{} envelopes stored for a publish of {}",
            stored.len(),
            batch.len()
        )));
    }
    for ((topic, payload), envelope) in batch.iter().zip(stored) {
        if envelope.topic != *topic || envelope.payload != *payload {
            return Err(malformed(format!(
                "the node stored another envelope than the one published to {topic}"
            )));
        }
        check_originator(envelope, now_ms)?;
    }
    Ok(())
}

/// Check identity answers: one per request, in order, each continuing the
/// log of its own inbox from the sequence asked after.
fn check_identity_answers(
    requests: &[(InboxId, u64)],
    answers: &[Vec<IdentityUpdate>],
) -> Result<(), ClientError> {
    if answers.len() != requests.len() {
        return Err(malformed(format!(
            "identity logs for {} inboxes in an answer for {}; every inbox asked for needs its \
             entry (empty if nothing is new)",
            answers.len(),
            requests.len()
        )));
    }
    for ((inbox, after), updates) in requests.iter().zip(answers) {
        let mut expected = *after;
        for update in updates {
            if update.unsigned.inbox != *inbox {
                return Err(malformed(format!(
                    "an identity update of inbox {} filed under inbox {inbox}",
                    update.unsigned.inbox
                )));
            }
            expected = expected
                .checked_add(1)
                .ok_or_else(|| malformed(format!("the identity log of inbox {inbox} overflows")))?;
            if update.unsigned.sequence != expected {
                return Err(malformed(format!(
                    "the identity log of inbox {inbox} jumps to sequence {} where {expected} was \
                     due",
                    update.unsigned.sequence
                )));
            }
        }
    }
    Ok(())
}

/// The leaf key of a serialized key package: the installation id for an
/// ordinary one, a fresh key for a deniable one.
fn key_package_leaf(bytes: &[u8]) -> Result<[u8; 32], String> {
    let message =
        MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| format!("does not parse: {e:?}"))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err("is not a KeyPackage message".into());
    };
    key_package
        .unverified_credential()
        .signature_key
        .as_slice()
        .try_into()
        .map_err(|_| "has a leaf key that is not a 32-byte Ed25519 key".into())
}

/// Check an ordinary key-package answer for `targets`: only installations
/// asked for, at most once each, each package with that installation's key.
fn check_key_packages(
    targets: &[InstallationId],
    answer: &[FetchedKeyPackage],
) -> Result<(), ClientError> {
    let mut owed: HashMap<InstallationId, usize> = HashMap::new();
    for target in targets {
        *owed.entry(*target).or_default() += 1;
    }
    for fetched in answer {
        let Some(left) = owed
            .get_mut(&fetched.installation)
            .filter(|left| **left > 0)
        else {
            return Err(malformed(format!(
                "a key package for installation {}, which was not asked for (or more than one \
                 for it)",
                fetched.installation
            )));
        };
        *left -= 1;
        if let Some(package) = &fetched.key_package {
            let leaf = key_package_leaf(&package.bytes).map_err(|e| {
                malformed(format!(
                    "the key package for installation {} {e}",
                    fetched.installation
                ))
            })?;
            if leaf != fetched.installation.0 {
                return Err(malformed(format!(
                    "the key package handed out for installation {} belongs to installation {}",
                    fetched.installation,
                    InstallationId(leaf)
                )));
            }
        }
    }
    Ok(())
}

/// Check a deniable key-package answer: one per installation, never the
/// requester's own, each a key package.
fn check_deniable_key_packages(
    requester: &InstallationId,
    answer: &[FetchedKeyPackage],
) -> Result<(), ClientError> {
    let mut seen = std::collections::BTreeSet::new();
    for fetched in answer {
        if fetched.installation == *requester {
            return Err(malformed(
                "a deniable key package of the requesting installation itself",
            ));
        }
        if !seen.insert(fetched.installation) {
            return Err(malformed(format!(
                "more than one deniable key package for installation {}",
                fetched.installation
            )));
        }
        if let Some(package) = &fetched.key_package {
            key_package_leaf(&package.bytes).map_err(|e| {
                malformed(format!(
                    "the deniable key package for installation {} {e}",
                    fetched.installation
                ))
            })?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl DeliveryClient for CheckedClient {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        let stored = self.inner.publish(batch.clone()).await?;
        check_published(&batch, &stored, self.clock.now_ms())?;
        Ok(stored)
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let limit = if limit == 0 {
            DEFAULT_PAGE_LIMIT
        } else {
            limit
        };
        let page = self.inner.query(topic, cursor, limit).await?;
        check_page(page, topic, cursor, limit, self.clock.now_ms())
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let mut cursors: BTreeMap<Topic, Cursor> = topics.iter().cloned().collect();
        let inner = self.inner.subscribe(topics).await?;
        let clock = Arc::clone(&self.clock);
        let mut refused = false;
        let checked = inner
            .map(move |item| {
                let envelope = item?;
                let Some(cursor) = cursors.get_mut(&envelope.topic) else {
                    return Err(malformed(format!(
                        "an envelope of topic {}, which is not subscribed to",
                        envelope.topic
                    )));
                };
                let topic = envelope.topic.clone();
                check_next(&envelope, &topic, cursor, clock.now_ms())?;
                Ok(envelope)
            })
            // A node that lied once is not read further on this stream; the
            // subscriber sees the refusal, then the end.
            .take_while(move |item| {
                let go = !refused;
                refused |= matches!(item, Err(ClientError::Malformed(_)));
                go
            });
        Ok(Box::pin(checked))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        let sequence = update.unsigned.sequence;
        let stored = self.inner.publish_identity_update(update).await?;
        if stored != sequence {
            return Err(malformed(format!(
                "identity update {sequence} was stored as {stored}"
            )));
        }
        Ok(stored)
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        let answers = self.inner.identity_updates(requests.clone()).await?;
        check_identity_answers(&requests, &answers)?;
        Ok(answers)
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        self.inner.upload_key_packages(upload).await
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let targets = fetch.targets.clone();
        let answer = self.inner.fetch_key_packages(fetch).await?;
        check_key_packages(&targets, &answer)?;
        Ok(answer)
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        self.inner.upload_deniable_key_packages(upload).await
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let requester = fetch.requester;
        let answer = self.inner.fetch_deniable_key_packages(fetch).await?;
        check_deniable_key_packages(&requester, &answer)?;
        Ok(answer)
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.inner.node_info().await
    }
}

#[cfg(test)]
mod tests {
    use kith_engine::identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    use super::*;

    const NOW: u64 = 1_750_000_000_000;

    fn envelope(topic: &Topic, sequence: u64) -> Envelope {
        Envelope {
            topic: topic.clone(),
            payload: vec![1],
            originator_node_id: 1,
            originator_sequence_id: sequence,
            originator_time_ms: NOW,
        }
    }

    fn page(envelopes: Vec<Envelope>) -> QueryPage {
        QueryPage {
            envelopes,
            next_cursor: Cursor::new(),
            more: false,
        }
    }

    #[test]
    fn an_honest_page_passes_and_its_cursor_is_recomputed() {
        let topic = Topic::Group(vec![1]);
        let from = Cursor::from_iter([(1, 4)]);
        let checked = check_page(
            page(vec![envelope(&topic, 5), envelope(&topic, 9)]),
            &topic,
            &from,
            2,
            NOW,
        )
        .expect("honest");
        assert_eq!(checked.next_cursor, Cursor::from_iter([(1, 9)]));
    }

    #[test]
    fn pages_that_cannot_be_true_are_refused() {
        let topic = Topic::Group(vec![1]);
        let other = Topic::Group(vec![2]);
        let from = Cursor::from_iter([(1, 4)]);
        let late = Envelope {
            originator_time_ms: NOW + MAX_FUTURE_SKEW_MS + 1,
            ..envelope(&topic, 6)
        };
        let earlier_time = Envelope {
            originator_time_ms: NOW - 1,
            ..envelope(&topic, 7)
        };
        for (what, envelopes, limit) in [
            ("u64::MAX", vec![envelope(&topic, u64::MAX)], 10),
            (
                "beyond 2^53",
                vec![envelope(&topic, MAX_SEQUENCE_ID + 1)],
                10,
            ),
            ("sequence 0", vec![envelope(&topic, 0)], 10),
            ("another topic", vec![envelope(&other, 5)], 10),
            ("at the cursor", vec![envelope(&topic, 4)], 10),
            (
                "a duplicate",
                vec![envelope(&topic, 5), envelope(&topic, 5)],
                10,
            ),
            (
                "too many",
                vec![envelope(&topic, 5), envelope(&topic, 6)],
                1,
            ),
            ("in the future", vec![late], 10),
            ("out of order", vec![envelope(&topic, 6), earlier_time], 10),
        ] {
            let refused = check_page(page(envelopes), &topic, &from, limit, NOW);
            assert!(
                matches!(refused, Err(ClientError::Malformed(_))),
                "{what}: {refused:?}"
            );
        }
        // Skew within the allowance is fine.
        let ahead = Envelope {
            originator_time_ms: NOW + MAX_FUTURE_SKEW_MS,
            ..envelope(&topic, 5)
        };
        check_page(page(vec![ahead]), &topic, &from, 10, NOW).expect("within the allowance");
    }

    #[test]
    fn a_publish_answer_must_be_the_batch_stored() {
        let topic = Topic::Group(vec![1]);
        let batch = vec![(topic.clone(), vec![1])];
        check_published(&batch, &[envelope(&topic, 1)], NOW).expect("honest");
        assert!(check_published(&batch, &[], NOW).is_err());
        let changed = Envelope {
            payload: vec![2],
            ..envelope(&topic, 1)
        };
        assert!(check_published(&batch, &[changed], NOW).is_err());
    }

    fn update(wallet: &LocalWallet, keys: &InstallationKeys, sequence: u64) -> IdentityUpdate {
        let unsigned =
            UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), keys, sequence, NOW);
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        unsigned.sign(signature, Some(keys))
    }

    #[test]
    fn identity_answers_must_cover_every_inbox_under_its_own_name() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (a, b) = (
            LocalWallet::generate(&mut rng),
            LocalWallet::generate(&mut rng),
        );
        let keys = InstallationKeys::generate(&mut rng);
        let requests = vec![(a.inbox_id(), 0), (b.inbox_id(), 1)];
        let a1 = update(&a, &keys, 1);
        let b2 = update(&b, &keys, 2);
        let b3 = update(&b, &keys, 3);
        check_identity_answers(&requests, &[vec![a1.clone()], vec![b2.clone(), b3.clone()]])
            .expect("honest");
        check_identity_answers(&requests, &[vec![], vec![]]).expect("nothing new");
        for (what, answers) in [
            ("an inbox left out", vec![vec![a1.clone()]]),
            ("an extra entry", vec![vec![], vec![], vec![]]),
            ("filed under another inbox", vec![vec![b2.clone()], vec![]]),
            ("a gap", vec![vec![], vec![b3.clone()]]),
            ("a replay", vec![vec![], vec![update(&b, &keys, 1)]]),
        ] {
            assert!(
                matches!(
                    check_identity_answers(&requests, &answers),
                    Err(ClientError::Malformed(_))
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn key_package_answers_only_for_installations_asked_for() {
        let (x, y) = (InstallationId([1; 32]), InstallationId([2; 32]));
        let none = |installation| FetchedKeyPackage {
            installation,
            key_package: None,
        };
        check_key_packages(&[x, y], &[none(x)]).expect("one withheld");
        assert!(
            check_key_packages(&[x], &[none(y)]).is_err(),
            "not asked for"
        );
        assert!(
            check_key_packages(&[x], &[none(x), none(x)]).is_err(),
            "twice"
        );
        let junk = FetchedKeyPackage {
            installation: x,
            key_package: Some(kith_engine::delivery::StoredKeyPackage {
                bytes: vec![0, 1, 2],
                last_resort: false,
            }),
        };
        assert!(
            check_key_packages(&[x], std::slice::from_ref(&junk)).is_err(),
            "junk"
        );
        assert!(check_deniable_key_packages(&y, &[junk]).is_err(), "junk");
        assert!(check_deniable_key_packages(&x, &[none(x)]).is_err(), "own");
        assert!(
            check_deniable_key_packages(&y, &[none(x), none(x)]).is_err(),
            "twice"
        );
    }
}
