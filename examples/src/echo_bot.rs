//! An echo bot on Kith's actor API: it answers every text message with
//! `echo: <text>`, in the conversation the message came from.
//!
//! ```text
//!   kith::Client ── stream_events() ──▶ EchoBot (actix actor, own thread)
//!        ▲                                 │ one event at a time (ctx.wait)
//!        └──── conversation.send_text ◀────┘ "echo: …\nre: <message id>"
//! ```
//!
//! Run it with `cargo run -p kith-examples --example echo_bot -- --data-dir
//! bot --node http://127.0.0.1:5556`. On first start it makes a wallet
//! (kept in `DIR/wallet.key`, see [`crate::wallet_file`]) and registers;
//! later starts reopen the same inbox and installation from `DIR/client`.
//! Kith joins a conversation by itself when someone adds the bot (a
//! Welcome), so accepting a conversation is only a log line
//! ([`kith::Event::Joined`]).
//!
//! # Each message is answered exactly once, across restarts
//!
//! The bot keeps no ledger of its own. Its replies are the ledger: each
//! reply ends with a line `re: <id>` naming the message it answers, and
//! the Kith store keeps the bot's own sent messages durably, storing a
//! message before it is published (one sled step, so a stored reply is
//! never lost and goes out on a later start if the crash came before
//! publication). So at every start:
//!
//! 1. it subscribes to the client's events first, so that nothing that
//!    arrives from now on can slip past;
//! 2. it reads every conversation's stored messages and collects the ids
//!    named by its own replies into an in-memory set;
//! 3. it answers every text message from others that is not in the set:
//!    those that arrived while it was down, and those it had received but
//!    not yet answered when it stopped;
//! 4. only then does it handle events, skipping every message whose id is
//!    in the set (the scan may already have answered a message whose event
//!    is still queued).
//!
//! An id goes into the set before its reply is sent. If the reply fails
//! before Kith stored it (the conversation is gone, say), the message stays
//! unanswered until the next start, which reads the store and tries again;
//! if it failed after (the node was unreachable), Kith publishes it later
//! by itself and the next start sees it. A crash between receiving a
//! message and storing the reply loses nothing either: the next start
//! finds the message without a reply.
//!
//! Two rules keep a conversation safe from loops and forgeries: the bot
//! never answers its own inbox (its replies come back as events too), and
//! only its own messages can mark a message as answered. A message whose
//! sender is not verified yet (in a deniable DM, before the sender's
//! binding verifies) waits: [`kith::Event::MemberVerified`] makes the bot
//! read that conversation again and answer what is now verified.
//!
//! The scan reads every stored message once per start, which is fine for
//! a bot of modest history. If the bot falls more than 4,096 events
//! behind, the client's event stream drops the oldest; a restart answers
//! what was dropped.
//!
//! # Threads
//!
//! The `kith` client runs its actors on threads of its own and works from
//! any tokio runtime; the bot's actor runs on an actix `System` in a
//! dedicated thread, so [`EchoBot::start`] works the same from
//! `#[tokio::main]` and from `#[tokio::test]`. [`EchoBotHandle::stop`]
//! stops that thread and shuts the client down, after which the data
//! directory can be opened again.

use std::{
    collections::HashSet,
    path::PathBuf,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext as _, ActorFutureExt as _, AsyncContext as _, Context, Handler,
    Message as ActixMessage, StreamHandler, WrapFuture as _,
};
use futures::{StreamExt as _, stream::BoxStream};
use kith::{
    Client, ClientConfig, Conversation, ConversationId, Event, InboxId, Message, MessageId,
};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::wallet_file::{self, WalletFileError};

/// The prefix of a reply's first line.
pub const ECHO_PREFIX: &str = "echo: ";

/// The prefix of a reply's last line, followed by the answered message's id.
pub const RE_PREFIX: &str = "re: ";

/// The reply to `text`, the body of message `id`.
pub fn reply_text(text: &str, id: &MessageId) -> String {
    format!("{ECHO_PREFIX}{text}\n{RE_PREFIX}{id}")
}

/// The message a reply answers: the id on the reply's last line, if that
/// line is a `re: ` line. Only the last line counts, so a quoted text that
/// itself holds a `re: ` line cannot name a second message.
pub fn replied_to(reply: &str) -> Option<MessageId> {
    let digits = reply.lines().last()?.strip_prefix(RE_PREFIX)?;
    let mut id = [0u8; 32];
    hex::decode_to_slice(digits.trim(), &mut id).ok()?;
    Some(MessageId(id))
}

/// Why the bot could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BotError {
    /// The wallet file could not be read or made.
    #[error("wallet: {0}")]
    Wallet(#[from] WalletFileError),
    /// The Kith client failed (opening the store, registering, reading).
    #[error(transparent)]
    Client(#[from] kith::Error),
    /// The bot's actor thread could not be started, or died.
    #[error("the bot's actor thread: {0}")]
    Thread(String),
}

/// What the bot needs to start.
#[derive(Debug, Clone)]
pub struct EchoBotConfig {
    /// Its data directory: `wallet.key` and the client's store `client/`.
    pub data_dir: PathBuf,
    /// The node: a `kith-node` URL or an in-process [`kith::LocalNode`].
    pub node: kith::Node,
    /// The client's tuning (default: [`ClientConfig::default`]).
    pub client: ClientConfig,
}

impl EchoBotConfig {
    /// A bot in `data_dir`, talking to `node`, with the default tuning.
    pub fn new(data_dir: impl Into<PathBuf>, node: impl Into<kith::Node>) -> Self {
        Self {
            data_dir: data_dir.into(),
            node: node.into(),
            client: ClientConfig::default(),
        }
    }
}

/// The state the bot's async work needs: the client, and the ids of the
/// messages it has answered.
///
/// It is moved into each event's future and back into the actor when the
/// future ends. `ctx.wait` guarantees that nothing else runs on the actor
/// meanwhile, so the async code owns its state outright, with no lock.
#[derive(Debug)]
struct Responder {
    client: Client,
    me: InboxId,
    answered: HashSet<MessageId>,
}

impl Responder {
    fn new(client: Client) -> Self {
        Self {
            me: client.inbox_id(),
            client,
            answered: HashSet::new(),
        }
    }

    fn wants_answer(&self, message: &Message) -> bool {
        message.verified
            && message.sender != self.me
            && message.text().is_some()
            && !self.answered.contains(&message.id)
    }

    /// Answer what every conversation holds unanswered (steps 2 and 3 of
    /// the module docs). Returns how many it answered.
    async fn catch_up(&mut self) -> Result<usize, kith::Error> {
        let mut answered = 0;
        for conversation in self.client.conversations().await? {
            answered += self.scan(&conversation).await?;
        }
        Ok(answered)
    }

    /// Read one conversation's stored messages and answer those not yet
    /// answered. A reply is always in the conversation of the message it
    /// answers, so one conversation's own replies are all it needs.
    async fn scan(&mut self, conversation: &Conversation) -> Result<usize, kith::Error> {
        let messages = conversation.messages().await?;
        for message in &messages {
            if message.sender == self.me
                && let Some(id) = message.text().and_then(replied_to)
            {
                self.answered.insert(id);
            }
        }
        let mut answered = 0;
        for message in &messages {
            if self.wants_answer(message) {
                let span = tracing::info_span!("answer", message_id = %message.id);
                self.answer(conversation, message).instrument(span).await;
                answered += 1;
            }
        }
        Ok(answered)
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(message) => self.on_message(message).await,
            Event::Joined { .. } => tracing::info!("joined a conversation"),
            Event::Removed { .. } => tracing::info!("removed from a conversation"),
            Event::MemberVerified { conversation, .. } => {
                // Messages that waited for their sender's binding can be
                // answered now.
                match self.client.conversation(&conversation).await {
                    Ok(conversation) => match self.scan(&conversation).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(answered = n, "a member verified"),
                        Err(e) => tracing::warn!(error = %e, "cannot read the conversation"),
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot open the conversation"),
                }
            }
            Event::VerificationFailed { reason, .. } => {
                tracing::warn!(%reason, "a DM failed verification: nothing more is sent in it");
            }
            other => tracing::debug!(event = ?other, "not for the bot"),
        }
    }

    async fn on_message(&mut self, message: Message) {
        if message.sender == self.me {
            // Its own reply, or one from another installation of the bot's
            // inbox: either way the message it names is answered.
            if let Some(id) = message.text().and_then(replied_to) {
                self.answered.insert(id);
            }
            return;
        }
        if !message.verified {
            tracing::debug!("the sender is not verified yet; waiting for its binding");
            return;
        }
        if !self.wants_answer(&message) {
            tracing::debug!("answered already, or not text");
            return;
        }
        match self.client.conversation(&message.conversation).await {
            Ok(conversation) => self.answer(&conversation, &message).await,
            Err(e) => tracing::warn!(error = %e, "cannot open the conversation"),
        }
    }

    async fn answer(&mut self, conversation: &Conversation, message: &Message) {
        let Some(text) = message.text() else {
            return;
        };
        // Into the set first: if the send fails after Kith stored the
        // reply, it goes out later by itself and must not be sent twice.
        self.answered.insert(message.id);
        match conversation.send_text(&reply_text(text, &message.id)).await {
            Ok(reply) => tracing::info!(%reply, "answered"),
            Err(e) => tracing::warn!(
                error = %e,
                "the reply failed; it is sent later by Kith if it was stored, \
                 else retried on the next start"
            ),
        }
    }
}

/// The span of one handled event: its conversation and message, when it
/// has them. (`message_id`, because tracing-subscriber prints a field
/// named `message` as the log line's text.)
fn span_for(event: &Event) -> tracing::Span {
    let (conversation, message): (Option<&ConversationId>, Option<&MessageId>) = match event {
        Event::Message(m) => (Some(&m.conversation), Some(&m.id)),
        Event::Joined { conversation }
        | Event::Removed { conversation }
        | Event::MemberVerified { conversation, .. }
        | Event::VerificationFailed { conversation, .. }
        | Event::MembersChanged { conversation, .. }
        | Event::MetadataChanged { conversation, .. } => (Some(conversation), None),
        _ => (None, None),
    };
    let span = tracing::info_span!(
        "event",
        conversation = tracing::field::Empty,
        message_id = tracing::field::Empty
    );
    if let Some(conversation) = conversation {
        span.record("conversation", tracing::field::display(conversation));
    }
    if let Some(message) = message {
        span.record("message_id", tracing::field::display(message));
    }
    span
}

/// The bot's actor: it takes the client's events as a stream and handles
/// them one at a time. Start it with [`EchoBot::start`].
pub struct EchoBot {
    /// `None` only while an event's future holds it (see [`Responder`]).
    responder: Option<Responder>,
    /// The event stream, subscribed before the actor starts and added to
    /// the context in `started`.
    events: Option<BoxStream<'static, Event>>,
    /// Told once the start-up scan is done, with how many it answered.
    ready: Option<oneshot::Sender<Result<usize, kith::Error>>>,
}

impl std::fmt::Debug for EchoBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoBot")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl EchoBot {
    /// Open (or create) the bot in `config.data_dir`, register it, answer
    /// what arrived while it was down, and run it on a thread of its own
    /// until [`EchoBotHandle::stop`].
    pub async fn start(config: EchoBotConfig) -> Result<EchoBotHandle, BotError> {
        let EchoBotConfig {
            data_dir,
            node,
            client: client_config,
        } = config;
        let wallet_dir = data_dir.clone();
        let wallet = tokio::task::spawn_blocking(move || wallet_file::load_or_create(&wallet_dir))
            .await
            .map_err(|e| BotError::Thread(format!("reading the wallet: {e}")))??;
        let client = Client::builder()
            .wallet(wallet)
            .data_dir(data_dir.join("client"))
            .node(node)
            .config(client_config)
            .build()
            .await?;
        tracing::info!(
            inbox = %client.inbox_id(),
            installation = %client.installation_id(),
            data_dir = %data_dir.display(),
            "opened"
        );
        // `register` does nothing for an installation that is registered
        // already, so every start calls it: a first start that crashed
        // before registering finishes the job.
        if let Err(e) = client.register().await {
            let _ = client.shutdown().await;
            return Err(e.into());
        }
        // Step 1 of the module docs: subscribe before the scan.
        let events = client.stream_events().boxed();
        let (ready_tx, ready_rx) = oneshot::channel();
        let bot = EchoBot {
            responder: Some(Responder::new(client.clone())),
            events: Some(events),
            ready: Some(ready_tx),
        };
        let (addr_tx, addr_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kith-echo-bot".into())
            .spawn(move || {
                let system = actix::System::new();
                let addr = system.block_on(async move { bot.start() });
                let _ = addr_tx.send((addr, actix::System::current()));
                if let Err(e) = system.run() {
                    tracing::error!(error = %e, "the bot's actor system failed");
                }
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                let _ = client.shutdown().await;
                return Err(BotError::Thread(e.to_string()));
            }
        };
        let (addr, system) = match addr_rx.await {
            Ok(started) => started,
            Err(_) => {
                let _ = client.shutdown().await;
                return Err(BotError::Thread("the actor did not start".into()));
            }
        };
        let handle = EchoBotHandle {
            addr,
            system,
            inbox: client.inbox_id(),
            client: Some(client),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(answered)) => {
                tracing::info!(answered, "caught up; answering new messages");
                Ok(handle)
            }
            Ok(Err(e)) => {
                let _ = handle.stop().await;
                Err(e.into())
            }
            Err(_) => {
                let _ = handle.stop().await;
                Err(BotError::Thread("the actor stopped during start-up".into()))
            }
        }
    }

    /// Run `work` on the responder with the actor paused, then put the
    /// responder back.
    fn with_responder<F, Fut>(&mut self, ctx: &mut Context<Self>, span: tracing::Span, work: F)
    where
        F: FnOnce(Responder) -> Fut,
        Fut: std::future::Future<Output = Responder> + 'static,
    {
        let Some(responder) = self.responder.take() else {
            // ctx.wait keeps a second event out while one holds the
            // responder, so this cannot happen; drop the event loudly.
            tracing::error!("an event arrived while another was being handled");
            return;
        };
        ctx.wait(
            work(responder)
                .instrument(span)
                .into_actor(self)
                .map(|responder, bot, _| bot.responder = Some(responder)),
        );
    }
}

impl Actor for EchoBot {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(events) = self.events.take() {
            ctx.add_stream(events);
        }
        let ready = self.ready.take();
        let span = tracing::info_span!("catch_up");
        // Waited for: no event is handled before the scan is done.
        self.with_responder(ctx, span, |mut responder| async move {
            let result = responder.catch_up().await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "the start-up scan failed");
            }
            if let Some(ready) = ready {
                let _ = ready.send(result);
            }
            responder
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::info!("stopped");
        // The bot's system runs only this actor.
        actix::System::current().stop();
    }
}

impl StreamHandler<Event> for EchoBot {
    fn handle(&mut self, event: Event, ctx: &mut Self::Context) {
        let span = span_for(&event);
        self.with_responder(ctx, span, |mut responder| async move {
            responder.on_event(event).await;
            responder
        });
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        tracing::info!("the client's event stream ended");
        ctx.stop();
    }
}

/// Stop the bot once the event in hand is handled.
#[derive(Debug)]
struct Stop;

impl ActixMessage for Stop {
    type Result = ();
}

impl Handler<Stop> for EchoBot {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// A running bot. Dropping it stops the actor but cannot wait for the
/// client to shut down; call [`EchoBotHandle::stop`] to reopen the data
/// directory afterwards.
#[derive(Debug)]
pub struct EchoBotHandle {
    addr: actix::Addr<EchoBot>,
    /// The bot thread's system, stopped by force if the actor does not
    /// stop in time.
    system: actix::System,
    inbox: InboxId,
    /// `None` once [`EchoBotHandle::stop`] took it to shut it down.
    client: Option<Client>,
    thread: Option<JoinHandle<()>>,
}

/// How long [`EchoBotHandle::stop`] waits for the event in hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl EchoBotHandle {
    /// The bot's inbox: add it to a group, or open a DM with it.
    pub fn inbox_id(&self) -> InboxId {
        self.inbox
    }

    /// Stop the actor (after the event in hand), then shut the client down
    /// so that the data directory can be opened again.
    pub async fn stop(mut self) -> Result<(), BotError> {
        let started = Instant::now();
        // A mailbox error means the actor stopped already.
        if tokio::time::timeout(STOP_TIMEOUT, self.addr.send(Stop))
            .await
            .is_err()
        {
            tracing::warn!("the event in hand did not finish in time; dropping it");
        }
        // The actor stops its system when it stops; this covers an actor
        // still stuck in an event (its future is dropped with the system).
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| BotError::Thread(e.to_string()))?
                .map_err(|_| BotError::Thread("the bot's actor thread panicked".into()))?;
        }
        if let Some(client) = self.client.take() {
            client.shutdown().await?;
        }
        tracing::info!(took_ms = started.elapsed().as_millis(), "shut down");
        Ok(())
    }
}

impl Drop for EchoBotHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.addr.do_send(Stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_the_message_on_its_last_line() {
        let id = MessageId([0xab; 32]);
        let reply = reply_text("hello", &id);
        assert_eq!(reply, format!("echo: hello\nre: {}", "ab".repeat(32)));
        assert_eq!(replied_to(&reply), Some(id));
    }

    #[test]
    fn only_the_last_line_names_the_answered_message() {
        let quoted = MessageId([1; 32]);
        let real = MessageId([2; 32]);
        // A text that quotes a reply is echoed whole; the bot's own last
        // line still wins.
        let reply = reply_text(&reply_text("hi", &quoted), &real);
        assert_eq!(replied_to(&reply), Some(real));
        assert_eq!(replied_to("re: not hex"), None);
        assert_eq!(replied_to("just text"), None);
        assert_eq!(replied_to(""), None);
        assert_eq!(
            replied_to(&format!("re: {}\nmore", "00".repeat(32))),
            None,
            "not on the last line"
        );
    }
}
