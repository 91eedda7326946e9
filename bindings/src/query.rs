//! Queries over what this installation stored: [`MessageQuery`] for
//! pages of a conversation's messages (`KithConversation::find_messages`)
//! and [`ConversationQuery`] for the conversation list
//! (`KithClient::list_conversations`). Each is a record whose every field
//! may be left out, turned into the `kith` builder of the same name.

use std::sync::Arc;

use crate::{
    ConversationKind, Delivery, KithConversation, KithError, Message, types::parse_message_id,
};

/// Which way a page of messages runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Direction {
    /// Oldest first (the default).
    Ascending,
    /// Newest first.
    Descending,
}

impl From<Direction> for kith::Direction {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ascending => Self::Ascending,
            Direction::Descending => Self::Descending,
        }
    }
}

/// Where a page of messages ended: put it in the next query's `after`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MessageCursor {
    /// The last message's place in the conversation, ms since the Unix
    /// epoch.
    pub time_ms: u64,
    /// The last message's id (hex).
    pub message_id: String,
}

impl From<kith::MessageCursor> for MessageCursor {
    fn from(c: kith::MessageCursor) -> Self {
        Self {
            time_ms: c.time_ms,
            message_id: c.id.to_string(),
        }
    }
}

impl TryFrom<MessageCursor> for kith::MessageCursor {
    type Error = KithError;

    fn try_from(c: MessageCursor) -> Result<Self, KithError> {
        Ok(Self {
            time_ms: c.time_ms,
            id: parse_message_id(&c.message_id)?,
        })
    }
}

/// A query for `KithConversation::find_messages`. Every field may be left
/// out: the default is the first 100 messages of any type and state,
/// oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct MessageQuery {
    /// Only messages at or after this time (their place in the
    /// conversation, `Message.time_ms`).
    #[uniffi(default)]
    pub since_ms: Option<u64>,
    /// Only messages before this time.
    #[uniffi(default)]
    pub until_ms: Option<u64>,
    /// At most this many messages (default 100).
    #[uniffi(default)]
    pub limit: Option<u32>,
    /// Oldest or newest first (default oldest).
    #[uniffi(default)]
    pub direction: Option<Direction>,
    /// Only messages of these content types.
    #[uniffi(default)]
    pub content_types: Option<Vec<String>>,
    /// Only messages in these delivery states.
    #[uniffi(default)]
    pub delivery: Option<Vec<Delivery>>,
    /// Leave out reactions and read receipts (`Message.is_listed`).
    #[uniffi(default = false)]
    pub listed_only: bool,
    /// Continue after this cursor, where the previous page (of the same
    /// direction) ended.
    #[uniffi(default)]
    pub after: Option<MessageCursor>,
}

impl TryFrom<MessageQuery> for kith::MessageQuery {
    type Error = KithError;

    /// Fails only on a cursor whose id is not a message id.
    fn try_from(q: MessageQuery) -> Result<Self, KithError> {
        let mut query = kith::MessageQuery::new();
        if let Some(since) = q.since_ms {
            query = query.since_ms(since);
        }
        if let Some(until) = q.until_ms {
            query = query.until_ms(until);
        }
        if let Some(limit) = q.limit {
            query = query.limit(limit as usize);
        }
        if let Some(direction) = q.direction {
            query = query.direction(direction.into());
        }
        if let Some(types) = q.content_types {
            query = query.content_types(types);
        }
        if let Some(states) = q.delivery {
            query = query.delivery(states.into_iter().map(Into::into));
        }
        if q.listed_only {
            query = query.listed_only();
        }
        if let Some(after) = q.after {
            query = query.after(after.try_into()?);
        }
        Ok(query)
    }
}

/// A page of messages.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MessagePage {
    /// The messages, in the query's direction.
    pub messages: Vec<Message>,
    /// Where to continue: set when the page is full (there may be more),
    /// none when the query has no more messages.
    pub next: Option<MessageCursor>,
}

impl From<kith::MessagePage> for MessagePage {
    fn from(p: kith::MessagePage) -> Self {
        Self {
            messages: p.messages.into_iter().map(Into::into).collect(),
            next: p.next.map(Into::into),
        }
    }
}

/// A query for `KithClient::list_conversations`. Every field may be left
/// out: the default is every active conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ConversationQuery {
    /// Only groups, or only DMs.
    #[uniffi(default)]
    pub kind: Option<ConversationKind>,
    /// At most this many conversations.
    #[uniffi(default)]
    pub limit: Option<u32>,
    /// Include conversations this installation was removed from.
    #[uniffi(default = false)]
    pub include_inactive: bool,
}

impl From<ConversationQuery> for kith::ConversationQuery {
    fn from(q: ConversationQuery) -> Self {
        let mut query = kith::ConversationQuery::new();
        if let Some(kind) = q.kind {
            query = query.kind(kind.into());
        }
        if let Some(limit) = q.limit {
            query = query.limit(limit as usize);
        }
        if q.include_inactive {
            query = query.include_inactive();
        }
        query
    }
}

/// A conversation in the list, with what a conversation list shows.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConversationItem {
    /// The conversation.
    pub conversation: Arc<KithConversation>,
    /// Group or DM.
    pub kind: ConversationKind,
    /// Its last activity, ms since the Unix epoch: the time of its newest
    /// listed message, or when this installation first saw it if it has
    /// none.
    pub last_activity_ms: u64,
    /// Its newest listed message (not a reaction or receipt).
    pub last_message: Option<Message>,
    /// Whether this installation is still a member.
    pub active: bool,
}
