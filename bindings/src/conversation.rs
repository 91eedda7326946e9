//! [`KithConversation`]: a group or DM, by id.
//!
//! A handle holds the conversation's id and the client's slot, not the
//! client itself: `KithClient::shutdown` must be able to close the store
//! while foreign code still holds conversation objects (a garbage
//! collector decides when those go), and calls on them fail with
//! `Shutdown` afterwards.

use std::sync::Arc;

use kith::{ConversationId, InboxId};

use crate::{
    Content, DmMode, DmVerification, EventListener, EventStream, Gating, KithError, Member,
    Message, MessagePage, MessageQuery, Metadata, Policies,
    client::ClientSlot,
    runtime,
    types::{parse_inbox, parse_inboxes},
};

/// A conversation: a group or a DM.
#[derive(Debug, uniffi::Object)]
pub struct KithConversation {
    slot: Arc<ClientSlot>,
    id: ConversationId,
    dm_peer: Option<InboxId>,
}

impl KithConversation {
    pub(crate) fn new(
        slot: Arc<ClientSlot>,
        id: ConversationId,
        dm_peer: Option<InboxId>,
    ) -> Arc<Self> {
        Arc::new(Self { slot, id, dm_peer })
    }

    /// Run `call` with the `kith` conversation on the runtime.
    async fn with<T, F, Fut>(&self, call: F) -> Result<T, KithError>
    where
        F: FnOnce(kith::Conversation) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, kith::Error>> + Send,
        T: Send + 'static,
    {
        let client = self.slot.get()?;
        let id = self.id.clone();
        runtime::run(async move {
            let conversation = client.conversation(&id).await?;
            Ok(call(conversation).await?)
        })
        .await
    }
}

#[uniffi::export]
impl KithConversation {
    /// Its id (hex).
    pub fn id(&self) -> String {
        self.id.to_string()
    }

    /// For a DM, the other inbox.
    pub fn dm_peer_inbox_id(&self) -> Option<String> {
        self.dm_peer.map(|p| p.to_string())
    }

    /// Whether this installation is still a member.
    pub async fn is_active(&self) -> Result<bool, KithError> {
        self.with(|c| async move { c.is_active().await }).await
    }

    /// Send text; returns the message id (hex) once the node has it.
    pub async fn send_text(&self, text: String) -> Result<String, KithError> {
        self.with(|c| async move { c.send_text(&text).await.map(|id| id.to_string()) })
            .await
    }

    /// Send a body of any content type; returns the message id (hex).
    pub async fn send(&self, content_type: String, body: Vec<u8>) -> Result<String, KithError> {
        self.with(|c| async move { c.send(&content_type, &body).await.map(|id| id.to_string()) })
            .await
    }

    /// Send typed content, with the fallback text `kith` makes for it;
    /// returns the message id (hex). A `Content.Unknown` goes out as it
    /// came (its type, body and fallback).
    pub async fn send_content(&self, content: Content) -> Result<String, KithError> {
        let content: kith::Content = content.try_into()?;
        self.with(|c| async move { c.send_content(&content).await.map(|id| id.to_string()) })
            .await
    }

    /// Send a body of any content type with `fallback`, the text clients
    /// that do not know the type show instead; returns the message id
    /// (hex).
    #[uniffi::method(default(fallback = None))]
    pub async fn send_raw(
        &self,
        content_type: String,
        body: Vec<u8>,
        fallback: Option<String>,
    ) -> Result<String, KithError> {
        self.with(|c| async move {
            c.send_raw(&content_type, &body, fallback.as_deref())
                .await
                .map(|id| id.to_string())
        })
        .await
    }

    /// A page of the stored messages, as `query` asks (every field of it
    /// may be left out). Pass the page's `next` as the next query's
    /// `after` to continue.
    pub async fn find_messages(&self, query: MessageQuery) -> Result<MessagePage, KithError> {
        let query: kith::MessageQuery = query.try_into()?;
        self.with(|c| async move { c.find_messages(&query).await.map(Into::into) })
            .await
    }

    /// Deliver this conversation's events from now on to `listener`,
    /// until the returned stream is stopped: the client's events about
    /// this conversation, and `Lagged`.
    pub async fn stream_events(
        &self,
        listener: Arc<dyn EventListener>,
    ) -> Result<Arc<EventStream>, KithError> {
        // Subscribed before this call returns, so that no event of a call
        // made after it is missed.
        let events = self.with(|c| async move { Ok(c.stream_events()) }).await?;
        Ok(EventStream::start(events, listener))
    }

    /// Every message, oldest first.
    pub async fn messages(&self) -> Result<Vec<Message>, KithError> {
        self.with(|c| async move {
            c.messages()
                .await
                .map(|m| m.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// The members, with their installations.
    pub async fn members(&self) -> Result<Vec<Member>, KithError> {
        self.with(|c| async move {
            c.members()
                .await
                .map(|m| m.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// The metadata.
    pub async fn metadata(&self) -> Result<Metadata, KithError> {
        self.with(|c| async move { c.metadata().await.map(Into::into) })
            .await
    }

    /// For a DM, its mode; none for a group.
    pub async fn dm_mode(&self) -> Result<Option<DmMode>, KithError> {
        self.with(|c| async move { c.dm_mode().await.map(|m| m.map(Into::into)) })
            .await
    }

    /// For a deniable DM, whether its members have proved who they are;
    /// none otherwise.
    pub async fn verification(&self) -> Result<Option<DmVerification>, KithError> {
        self.with(|c| async move { c.verification().await.map(|v| v.map(Into::into)) })
            .await
    }

    /// Add these inboxes (all their installations). In a gated group each
    /// is checked first: one that fails raises `GatingRefused` and nobody
    /// is added.
    pub async fn add_members(&self, inbox_ids: Vec<String>) -> Result<(), KithError> {
        let inboxes = parse_inboxes(&inbox_ids)?;
        self.with(|c| async move { c.add_members(&inboxes).await })
            .await
    }

    /// Remove these inboxes (all their installations).
    pub async fn remove_members(&self, inbox_ids: Vec<String>) -> Result<(), KithError> {
        let inboxes = parse_inboxes(&inbox_ids)?;
        self.with(|c| async move { c.remove_members(&inboxes).await })
            .await
    }

    /// Leave the conversation.
    pub async fn leave(&self) -> Result<(), KithError> {
        self.with(|c| async move { c.leave().await }).await
    }

    /// Rename it.
    pub async fn update_name(&self, name: String) -> Result<(), KithError> {
        self.with(|c| async move { c.update_name(&name).await })
            .await
    }

    /// Change its description.
    pub async fn update_description(&self, description: String) -> Result<(), KithError> {
        self.with(|c| async move { c.update_description(&description).await })
            .await
    }

    /// Set any attribute.
    pub async fn set_attribute(&self, key: String, value: String) -> Result<(), KithError> {
        self.with(|c| async move { c.set_attribute(&key, &value).await })
            .await
    }

    /// Make an inbox an admin.
    pub async fn add_admin(&self, inbox_id: String) -> Result<(), KithError> {
        let inbox = parse_inbox(&inbox_id)?;
        self.with(move |c| async move { c.add_admin(inbox).await })
            .await
    }

    /// Make an admin an ordinary member again.
    pub async fn remove_admin(&self, inbox_id: String) -> Result<(), KithError> {
        let inbox = parse_inbox(&inbox_id)?;
        self.with(move |c| async move { c.remove_admin(inbox).await })
            .await
    }

    /// Make an inbox a super admin.
    pub async fn add_super_admin(&self, inbox_id: String) -> Result<(), KithError> {
        let inbox = parse_inbox(&inbox_id)?;
        self.with(move |c| async move { c.add_super_admin(inbox).await })
            .await
    }

    /// Replace its policies.
    pub async fn set_policies(&self, policies: Policies) -> Result<(), KithError> {
        self.with(|c| async move { c.set_policies(policies.into()).await })
            .await
    }

    /// Replace the group's gating rules (and how they combine), under the
    /// `change_policies` policy; `gating.admissions` is ignored. Members
    /// already in stay; the rules apply to the next inboxes added. No
    /// rules ungates the group.
    pub async fn set_gating(&self, gating: Gating) -> Result<(), KithError> {
        let gating: kith::Gating = gating.try_into()?;
        self.with(|c| async move { c.set_gating(gating).await })
            .await
    }

    /// Add members' new installations and remove revoked ones now.
    pub async fn reconcile_installations(&self) -> Result<(), KithError> {
        self.with(|c| async move { c.reconcile_installations().await })
            .await
    }

    /// Read its new messages from the node now.
    pub async fn sync(&self) -> Result<(), KithError> {
        self.with(|c| async move { c.sync().await }).await
    }
}
