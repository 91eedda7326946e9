//! Queries over the local store: pages of a conversation's messages (by
//! time, either way, filtered by content type and delivery state), the
//! conversation list by last activity, and a per-conversation event
//! stream.
//!
//! Everything here reads what this installation already stored; nothing
//! goes to the node. A page is a range read of the store, so its cost
//! follows its size, not the conversation's length.

use std::{collections::BTreeSet, sync::Arc};

use futures::{Stream, StreamExt as _};
use kith_engine::group::{
    ConversationKind, ConversationState, Delivery, MessageRange, StoredMessage,
};

use crate::{
    Client, Conversation, Error, Event,
    client::blocking,
    content::is_listed_type,
    events::{Message, MessageId},
};

/// How many messages a [`MessageQuery`] returns unless told otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Which way a page of messages runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Ascending,
    /// Newest first.
    Descending,
}

/// Where a page of messages ended: pass it to [`MessageQuery::after`] for
/// the next page. Messages of the same millisecond are told apart by id,
/// so none is skipped or repeated at a page boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCursor {
    /// The last message's place in the conversation (ms since the Unix
    /// epoch).
    pub time_ms: u64,
    /// The last message's id.
    pub id: MessageId,
}

/// A query for [`Conversation::find_messages`]. Every filter is optional;
/// the default is the first [`DEFAULT_PAGE_SIZE`] messages of any type
/// and state, oldest first.
///
/// ```
/// use kith::{Delivery, Direction, MessageQuery};
///
/// // The 20 newest text messages that reached the node, from 2026 on.
/// let query = MessageQuery::new()
///     .since_ms(1_767_225_600_000)
///     .direction(Direction::Descending)
///     .limit(20)
///     .content_types([kith::content::TEXT])
///     .delivery([Delivery::Published]);
/// # let _ = query;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQuery {
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    limit: usize,
    direction: Direction,
    content_types: Option<BTreeSet<String>>,
    delivery: Option<Vec<Delivery>>,
    listed_only: bool,
    after: Option<MessageCursor>,
}

impl Default for MessageQuery {
    fn default() -> Self {
        Self {
            since_ms: None,
            until_ms: None,
            limit: DEFAULT_PAGE_SIZE,
            direction: Direction::Ascending,
            content_types: None,
            delivery: None,
            listed_only: false,
            after: None,
        }
    }
}

impl MessageQuery {
    /// The default query.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only messages at or after `time_ms` (the time of their place in
    /// the conversation, [`Message::time_ms`]).
    pub fn since_ms(mut self, time_ms: u64) -> Self {
        self.since_ms = Some(time_ms);
        self
    }

    /// Only messages before `time_ms`.
    pub fn until_ms(mut self, time_ms: u64) -> Self {
        self.until_ms = Some(time_ms);
        self
    }

    /// At most `limit` messages.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Oldest or newest first.
    pub fn direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// Only messages of these content types.
    pub fn content_types<I, T>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.content_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Only messages in these delivery states.
    pub fn delivery(mut self, states: impl IntoIterator<Item = Delivery>) -> Self {
        self.delivery = Some(states.into_iter().collect());
        self
    }

    /// Leave out reactions and read receipts ([`Message::is_listed`]).
    pub fn listed_only(mut self) -> Self {
        self.listed_only = true;
        self
    }

    /// Continue after `cursor`, where the previous page (of the same
    /// direction) ended.
    pub fn after(mut self, cursor: MessageCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    fn keeps(&self, message: &StoredMessage) -> bool {
        self.content_types
            .as_ref()
            .is_none_or(|types| types.contains(&message.content_type))
            && self
                .delivery
                .as_ref()
                .is_none_or(|states| states.contains(&message.delivery))
            && (!self.listed_only || is_listed_type(&message.content_type))
    }

    fn range(&self) -> MessageRange {
        MessageRange {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            after: self.after.map(|c| (c.time_ms, c.id.0)),
            descending: self.direction == Direction::Descending,
        }
    }
}

/// A page of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    /// The messages, in the query's direction.
    pub messages: Vec<Message>,
    /// Where to continue: `Some` when the page is full (there may be
    /// more), `None` when the query has no more messages.
    pub next: Option<MessageCursor>,
}

/// A query for [`Client::list_conversations`]: the conversations this
/// installation is in, most recently active first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationQuery {
    kind: Option<ConversationKind>,
    limit: Option<usize>,
    include_inactive: bool,
}

impl ConversationQuery {
    /// Every active conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only groups, or only DMs.
    pub fn kind(mut self, kind: ConversationKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// At most `limit` conversations.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Include conversations this installation was removed from.
    pub fn include_inactive(mut self) -> Self {
        self.include_inactive = true;
        self
    }
}

/// A conversation in the list, with what a conversation list shows.
#[derive(Debug, Clone)]
pub struct ConversationItem {
    /// The conversation.
    pub conversation: Conversation,
    /// Group or DM.
    pub kind: ConversationKind,
    /// Its last activity: the time of its newest listed message (not a
    /// reaction or receipt), or when this installation first saw it if it
    /// has none. ms since the Unix epoch.
    pub last_activity_ms: u64,
    /// Its newest listed message.
    pub last_message: Option<Message>,
    /// Whether this installation is still a member.
    pub active: bool,
}

impl Conversation {
    /// A page of this conversation's stored messages.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use kith::{Client, GroupOptions, LocalNode, LocalWallet};
    /// # use kith_engine::delivery::MemoryNodeStore;
    /// # use kith_transport::node::{NodeConfig, NodeLogic};
    /// use kith::{Direction, MessageQuery};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
    /// # let dir = tempfile::tempdir()?;
    /// # let alice = Client::builder()
    /// #     .wallet(LocalWallet::generate(&mut rand_core::OsRng))
    /// #     .data_dir(dir.path().join("alice")).node(node.clone()).build().await?;
    /// # alice.register().await?;
    /// let group = alice.create_group(&[], GroupOptions::default()).await?;
    /// for n in 0..5 {
    ///     group.send_text(&format!("message {n}")).await?;
    /// }
    /// // Newest first, two at a time.
    /// let query = MessageQuery::new()
    ///     .direction(Direction::Descending)
    ///     .limit(2)
    ///     .content_types([kith::content::TEXT]);
    /// let first = group.find_messages(&query).await?;
    /// let texts: Vec<_> = first.messages.iter().filter_map(|m| m.text()).collect();
    /// assert_eq!(texts, ["message 4", "message 3"]);
    /// let cursor = first.next.expect("a full page has a next one");
    /// let second = group.find_messages(&query.clone().after(cursor)).await?;
    /// assert_eq!(second.messages[0].text(), Some("message 2"));
    /// # Ok(()) }
    /// ```
    pub async fn find_messages(&self, query: &MessageQuery) -> Result<MessagePage, Error> {
        let shared = Arc::clone(self.client.shared());
        let id = self.id().clone();
        let limit = query.limit;
        let query = query.clone();
        let stored = blocking(move || {
            Ok(shared
                .store()
                .messages_in(&id, &query.range(), query.limit, &mut |m| query.keeps(m))?)
        })
        .await?;
        let full = stored.len() == limit && limit > 0;
        let next = stored.last().filter(|_| full).map(|m| MessageCursor {
            time_ms: m.time_ms,
            id: MessageId(m.message_id),
        });
        Ok(MessagePage {
            messages: stored.into_iter().map(Message::from).collect(),
            next,
        })
    }

    /// The events of this conversation, as [`Client::stream_events`] gives
    /// them, and [`Event::Lagged`] (which may have cost this conversation
    /// events too).
    pub fn stream_events(&self) -> impl Stream<Item = Event> + Send + Unpin + use<> {
        let id = self.id().clone();
        self.client.stream_events().filter(move |event| {
            let keep = matches!(event, Event::Lagged { .. }) || event.conversation() == Some(&id);
            futures::future::ready(keep)
        })
    }
}

impl Client {
    /// The conversations this installation is in, most recently active
    /// first, each with its newest listed message.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use kith::{Client, GroupOptions, LocalNode, LocalWallet};
    /// # use kith_engine::delivery::MemoryNodeStore;
    /// # use kith_transport::node::{NodeConfig, NodeLogic};
    /// use kith::{ConversationKind, ConversationQuery};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
    /// # let dir = tempfile::tempdir()?;
    /// # let open = |name: &str| Client::builder()
    /// #     .wallet(LocalWallet::generate(&mut rand_core::OsRng))
    /// #     .data_dir(dir.path().join(name)).node(node.clone()).build();
    /// # let (alice, bob) = (open("alice").await?, open("bob").await?);
    /// # alice.register().await?; bob.register().await?;
    /// let older = alice.create_group(&[], GroupOptions::default().name("Older")).await?;
    /// let dm = alice.find_or_create_dm(bob.inbox_id()).await?;
    /// tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    /// older.send_text("the older group speaks last").await?;
    ///
    /// let list = alice.list_conversations(&ConversationQuery::new()).await?;
    /// assert_eq!(list[0].conversation.id(), older.id());
    /// let dms = alice
    ///     .list_conversations(&ConversationQuery::new().kind(ConversationKind::Dm))
    ///     .await?;
    /// assert_eq!(dms.len(), 1);
    /// assert_eq!(dms[0].conversation.id(), dm.id());
    /// # Ok(()) }
    /// ```
    pub async fn list_conversations(
        &self,
        query: &ConversationQuery,
    ) -> Result<Vec<ConversationItem>, Error> {
        let shared = Arc::clone(self.shared());
        let query = query.clone();
        let rows = blocking(move || {
            let store = shared.store();
            let newest = MessageRange {
                descending: true,
                ..MessageRange::default()
            };
            let mut rows = Vec::new();
            for record in store.conversations()? {
                let kind = match record.dm_peer {
                    Some(_) => ConversationKind::Dm,
                    None => ConversationKind::Group,
                };
                let active = record.state == ConversationState::Active;
                if query.kind.is_some_and(|k| k != kind) || (!active && !query.include_inactive) {
                    continue;
                }
                let last = store
                    .messages_in(&record.id, &newest, 1, &mut |m| {
                        is_listed_type(&m.content_type)
                    })?
                    .pop();
                rows.push((record, kind, active, last));
            }
            Ok(rows)
        })
        .await?;
        let mut items: Vec<ConversationItem> = rows
            .into_iter()
            .map(|(record, kind, active, last)| ConversationItem {
                last_activity_ms: last.as_ref().map_or(record.created_at_ms, |m| {
                    m.time_ms.max(record.created_at_ms)
                }),
                last_message: last.map(Message::from),
                conversation: self.conversation_from(record),
                kind,
                active,
            })
            .collect();
        items.sort_by(|a, b| {
            b.last_activity_ms
                .cmp(&a.last_activity_ms)
                .then_with(|| a.conversation.id().0.cmp(&b.conversation.id().0))
        });
        if let Some(limit) = query.limit {
            items.truncate(limit);
        }
        Ok(items)
    }
}
