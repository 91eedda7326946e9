//! Events to foreign code: [`KithEvent`] mirrors `kith::Event`, and a
//! foreign [`EventListener`] receives them until its [`EventStream`] is
//! stopped.

use std::{
    cell::Cell,
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::Duration,
};

use futures::StreamExt as _;
use tokio::sync::oneshot;

use crate::{InstallationRef, Message, Metadata, runtime};

/// Something that happened in one of the client's conversations; the
/// variants and their meaning are `kith::Event`'s.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum KithEvent {
    /// A message was received, or sent by this installation.
    Message {
        /// The message.
        message: Message,
    },
    /// Installations joined or left a conversation.
    MembersChanged {
        /// The conversation (hex).
        conversation_id: String,
        /// Who made the change.
        by_inbox_id: String,
        /// Installations added.
        added: Vec<InstallationRef>,
        /// Installations removed.
        removed: Vec<InstallationRef>,
    },
    /// A conversation's name, description, admins or policies changed.
    MetadataChanged {
        /// The conversation (hex).
        conversation_id: String,
        /// Who made the change.
        by_inbox_id: String,
        /// The metadata now.
        metadata: Metadata,
    },
    /// This installation joined a conversation.
    Joined {
        /// The conversation (hex).
        conversation_id: String,
    },
    /// This installation was removed from a conversation (or left it).
    Removed {
        /// The conversation (hex).
        conversation_id: String,
    },
    /// A change this installation asked for failed for good.
    ChangeFailed {
        /// The conversation (hex).
        conversation_id: String,
        /// Why.
        reason: String,
    },
    /// Another member's commit broke the group's rules and was ignored.
    CommitRejected {
        /// The conversation (hex).
        conversation_id: String,
        /// Why.
        reason: String,
    },
    /// A received message belonged to a branch that lost; it stays, marked
    /// superseded, until its re-sent copy arrives.
    MessageSuperseded {
        /// The conversation (hex).
        conversation_id: String,
        /// The message (hex).
        message_id: String,
    },
    /// A superseded message's re-sent copy arrived.
    MessageConfirmed {
        /// The conversation (hex).
        conversation_id: String,
        /// The message (hex).
        message_id: String,
    },
    /// An own message could not be delivered.
    MessageFailed {
        /// The conversation (hex).
        conversation_id: String,
        /// The message (hex).
        message_id: String,
        /// Why.
        reason: String,
    },
    /// Commits arrived out of order and the conversation was rolled back
    /// and replayed.
    RolledBack {
        /// The conversation (hex).
        conversation_id: String,
        /// The epoch restored.
        to_epoch: u64,
        /// Envelopes replayed by this rollback.
        replayed: u64,
        /// Rollbacks of this conversation so far.
        rollbacks: u64,
        /// The oldest any snapshot got, in ms.
        max_snapshot_age_ms: u64,
    },
    /// This installation found itself on a fork and asked to be re-added.
    Forked {
        /// The conversation (hex).
        conversation_id: String,
        /// Why it knows.
        reason: String,
    },
    /// This installation joined again after a fork.
    Rejoined {
        /// The conversation (hex).
        conversation_id: String,
        /// The epoch it joined at.
        epoch: u64,
    },
    /// In a deniable DM, an installation proved who it is.
    MemberVerified {
        /// The conversation (hex).
        conversation_id: String,
        /// The installation.
        member: InstallationRef,
    },
    /// In a deniable DM, a binding did not verify: nothing more is sent.
    VerificationFailed {
        /// The conversation (hex).
        conversation_id: String,
        /// Why.
        reason: String,
    },
    /// An envelope was passed over for good.
    EnvelopeSkipped {
        /// The conversation (hex).
        conversation_id: String,
        /// Why.
        reason: String,
    },
    /// A Welcome was refused (it would have changed a conversation this
    /// installation holds).
    WelcomeRefused {
        /// Why.
        reason: String,
    },
    /// The listener fell behind and this many events were lost to it.
    /// Nothing is lost from the store: re-read what the application shows
    /// (`find_messages`, `list_conversations`).
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
    /// An event of a kind this version of the bindings does not know.
    Other {
        /// Its debug form.
        description: String,
    },
}

impl From<kith::Event> for KithEvent {
    fn from(event: kith::Event) -> Self {
        use kith::Event as E;
        match event {
            E::Message(message) => Self::Message {
                message: message.into(),
            },
            E::MembersChanged {
                conversation,
                by,
                added,
                removed,
            } => Self::MembersChanged {
                conversation_id: conversation.to_string(),
                by_inbox_id: by.to_string(),
                added: added.into_iter().map(Into::into).collect(),
                removed: removed.into_iter().map(Into::into).collect(),
            },
            E::MetadataChanged {
                conversation,
                by,
                metadata,
            } => Self::MetadataChanged {
                conversation_id: conversation.to_string(),
                by_inbox_id: by.to_string(),
                metadata: metadata.into(),
            },
            E::Joined { conversation } => Self::Joined {
                conversation_id: conversation.to_string(),
            },
            E::Removed { conversation } => Self::Removed {
                conversation_id: conversation.to_string(),
            },
            E::ChangeFailed {
                conversation,
                reason,
            } => Self::ChangeFailed {
                conversation_id: conversation.to_string(),
                reason,
            },
            E::CommitRejected {
                conversation,
                reason,
            } => Self::CommitRejected {
                conversation_id: conversation.to_string(),
                reason,
            },
            E::MessageSuperseded { conversation, id } => Self::MessageSuperseded {
                conversation_id: conversation.to_string(),
                message_id: id.to_string(),
            },
            E::MessageConfirmed { conversation, id } => Self::MessageConfirmed {
                conversation_id: conversation.to_string(),
                message_id: id.to_string(),
            },
            E::MessageFailed {
                conversation,
                id,
                reason,
            } => Self::MessageFailed {
                conversation_id: conversation.to_string(),
                message_id: id.to_string(),
                reason,
            },
            E::RolledBack {
                conversation,
                to_epoch,
                replayed,
                rollbacks,
                max_snapshot_age_ms,
            } => Self::RolledBack {
                conversation_id: conversation.to_string(),
                to_epoch,
                replayed,
                rollbacks,
                max_snapshot_age_ms,
            },
            E::Forked {
                conversation,
                reason,
            } => Self::Forked {
                conversation_id: conversation.to_string(),
                reason,
            },
            E::Rejoined {
                conversation,
                epoch,
            } => Self::Rejoined {
                conversation_id: conversation.to_string(),
                epoch,
            },
            E::MemberVerified {
                conversation,
                inbox,
                installation,
            } => Self::MemberVerified {
                conversation_id: conversation.to_string(),
                member: (inbox, installation).into(),
            },
            E::VerificationFailed {
                conversation,
                reason,
            } => Self::VerificationFailed {
                conversation_id: conversation.to_string(),
                reason,
            },
            E::EnvelopeSkipped {
                conversation,
                reason,
            } => Self::EnvelopeSkipped {
                conversation_id: conversation.to_string(),
                reason,
            },
            E::WelcomeRefused { reason } => Self::WelcomeRefused { reason },
            E::Lagged { missed } => Self::Lagged { missed },
            other => Self::Other {
                description: format!("{other:?}"),
            },
        }
    }
}

/// Receives a client's (or one conversation's) events, one at a time, in order, on a thread of
/// the library's (hand them to the UI thread as the platform requires).
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: KithEvent);
}

/// How long [`EventStream::stop`] waits for the listener to be released.
const STOP_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// Set while a listener runs on this thread, so that a listener that
    /// stops its own stream does not wait for itself.
    static IN_LISTENER: Cell<bool> = const { Cell::new(false) };
}

/// A running delivery of events to a listener; stopping it (or dropping
/// it) ends the delivery.
#[derive(Debug, uniffi::Object)]
pub struct EventStream {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Disconnects when the delivery task has ended and released the
    /// listener.
    done: Mutex<mpsc::Receiver<()>>,
}

impl EventStream {
    /// Deliver `events` to `listener` until stopped.
    pub(crate) fn start(
        events: impl futures::Stream<Item = kith::Event> + Send + Unpin + 'static,
        listener: Arc<dyn EventListener>,
    ) -> Arc<Self> {
        let (stop, mut stopped) = oneshot::channel();
        let (done_tx, done) = mpsc::channel::<()>();
        let mut events = events;
        runtime::get().spawn(async move {
            let _done = done_tx;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    event = events.next() => {
                        let Some(event) = event else { break };
                        let listener = Arc::clone(&listener);
                        let event = KithEvent::from(event);
                        // A listener may block; keep it off the workers,
                        // and wait for it so that events stay in order.
                        let deliver = move || {
                            IN_LISTENER.with(|l| l.set(true));
                            listener.on_event(event);
                            IN_LISTENER.with(|l| l.set(false));
                        };
                        if tokio::task::spawn_blocking(deliver)
                            .await
                            .is_err()
                        {
                            tracing::warn!("an event listener panicked; events to it stop");
                            break;
                        }
                    }
                }
            }
        });
        Arc::new(Self {
            stop: Mutex::new(Some(stop)),
            done: Mutex::new(done),
        })
    }
}

#[uniffi::export]
impl EventStream {
    /// Stop delivering events, and wait (a few seconds at most) until the
    /// listener is released: no event reaches it after this returns, and
    /// nothing calls into foreign code from this stream later, which
    /// matters to an interpreter that is about to exit. Idempotent.
    pub fn stop(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
        // Called from the listener itself: the task waits for it to
        // return, so waiting here would wait forever.
        if !IN_LISTENER.with(Cell::get) {
            let _ = self
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv_timeout(STOP_WAIT);
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.stop();
    }
}
