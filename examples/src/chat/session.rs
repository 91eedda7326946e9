//! One chat session: the open conversation, the commands run against the
//! client, and the client's events shown as they arrive.

use std::{
    collections::{BTreeSet, HashSet},
    io::{BufRead, Write},
};

use futures::{Stream, StreamExt as _};
use kith::{
    Client, Conversation, ConversationId, ConversationKind, Event, GroupOptions, InboxId,
    InstallationId,
};
use tokio::sync::mpsc;

use super::{
    ChatError,
    command::{self, Command, HELP, Target},
    display::{message_line, short_inbox},
};

/// Lines read so far and not yet handled. Small: the reader waits for the
/// session rather than buffering a whole piped file.
const INPUT_BUFFER: usize = 16;

/// Read `input` line by line on a thread of its own (blocking reads cannot
/// be cancelled, and a pipe or a terminal may block for ever) and hand the
/// lines over. The thread ends at the end of input, or when the session
/// stops listening.
pub(super) fn read_lines(
    input: impl BufRead + Send + 'static,
) -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(INPUT_BUFFER);
    let spawned = std::thread::Builder::new()
        .name("kith-chat-input".into())
        .spawn(move || {
            for line in input.lines() {
                let failed = line.is_err();
                if tx.blocking_send(line).is_err() || failed {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        // The receiver then reports the failure as the first "line", and
        // the session ends.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

/// See the module docs.
pub(super) struct Session<W, E> {
    client: Client,
    me: InboxId,
    installation: InstallationId,
    current: Option<Conversation>,
    /// Show new messages of every conversation, not only the open one's.
    watch_all: bool,
    /// Conversations made by this session: their `Joined` is no news.
    created: HashSet<ConversationId>,
    /// Conversations whose new messages were announced since last opened.
    notified: HashSet<ConversationId>,
    out: W,
    err: E,
    interactive: bool,
    /// A prompt is on screen with nothing typed after it yet: output that
    /// arrives now goes over it, and it is shown again after.
    prompt_shown: bool,
}

impl<W: Write, E: Write> Session<W, E> {
    pub(super) fn new(client: Client, out: W, err: E, interactive: bool) -> Self {
        Self {
            me: client.inbox_id(),
            installation: client.installation_id(),
            client,
            current: None,
            watch_all: false,
            created: HashSet::new(),
            notified: HashSet::new(),
            out,
            err,
            interactive,
            prompt_shown: false,
        }
    }

    /// Handle lines and events until `quit`, the end of input, or lost
    /// output. Hands the client back for shutdown, with the result.
    pub(super) async fn run(
        mut self,
        mut lines: mpsc::Receiver<std::io::Result<String>>,
        mut events: impl Stream<Item = Event> + Unpin,
    ) -> (Client, Result<(), ChatError>) {
        let result = self.serve(&mut lines, &mut events).await;
        // The open conversation holds the client: drop it, so that the
        // store can be closed.
        self.current = None;
        (self.client, result)
    }

    async fn serve(
        &mut self,
        lines: &mut mpsc::Receiver<std::io::Result<String>>,
        events: &mut (impl Stream<Item = Event> + Unpin),
    ) -> Result<(), ChatError> {
        loop {
            self.prompt()?;
            tokio::select! {
                line = lines.recv() => {
                    if !self.handle_line(line).await? {
                        return Ok(());
                    }
                }
                Some(event) = events.next() => self.show_event(event).await?,
            }
        }
    }

    /// Handle one line of input (`None` at its end). Returns whether to
    /// go on; errors only when the output is gone.
    async fn handle_line(
        &mut self,
        line: Option<std::io::Result<String>>,
    ) -> Result<bool, ChatError> {
        // The person pressed enter: the prompt's line is theirs now.
        self.prompt_shown = false;
        let line = match line {
            None => return Ok(false),
            Some(Err(e)) => {
                self.error(&format!("reading input: {e}"))?;
                return Ok(false);
            }
            Some(Ok(line)) => line,
        };
        match command::parse(&line) {
            Ok(None) => {}
            Ok(Some(Command::Quit)) => return Ok(false),
            Ok(Some(command)) => match self.execute(command).await {
                Ok(()) => {}
                Err(ChatError::Io(e)) => return Err(ChatError::Io(e)),
                Err(e) => self.error(&e.to_string())?,
            },
            Err(e) => self.error(&e.to_string())?,
        }
        Ok(true)
    }

    fn prompt(&mut self) -> std::io::Result<()> {
        if self.interactive && !self.prompt_shown {
            write!(self.out, "> ")?;
            self.out.flush()?;
            self.prompt_shown = true;
        }
        Ok(())
    }

    /// Move to the start of the prompt's line, so that output replaces it.
    fn clear_prompt(&mut self) -> std::io::Result<()> {
        if self.prompt_shown {
            write!(self.out, "\r")?;
            self.prompt_shown = false;
        }
        Ok(())
    }

    fn say(&mut self, line: impl std::fmt::Display) -> std::io::Result<()> {
        self.clear_prompt()?;
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    fn progress(&mut self, line: impl std::fmt::Display) -> std::io::Result<()> {
        self.clear_prompt()?;
        writeln!(self.err, "{line}")?;
        self.err.flush()
    }

    fn warn(&mut self, line: impl std::fmt::Display) -> std::io::Result<()> {
        self.progress(format!("warning: {line}"))
    }

    fn error(&mut self, message: &str) -> std::io::Result<()> {
        self.progress(format!("error: {message}"))
    }

    async fn execute(&mut self, command: Command) -> Result<(), ChatError> {
        match command {
            Command::Help => self.say(HELP)?,
            Command::Whoami => {
                self.say(format!("inbox {}", self.me))?;
                self.say(format!("installation {}", self.installation))?;
            }
            Command::Register => {
                self.progress(format!("registering {} (the wallet signs)…", self.me))?;
                self.client.register().await?;
                self.say(format!("registered {}", self.me))?;
            }
            Command::List => self.list().await?,
            Command::Create { name, members } => {
                self.progress(format!("creating {name:?}…"))?;
                let conversation = self
                    .client
                    .create_group(&members, GroupOptions::default().name(name))
                    .await?;
                self.created.insert(conversation.id().clone());
                let label = self.label(&conversation).await;
                self.say(format!("created {label}"))?;
                self.open(conversation);
            }
            Command::Dm(peer) => {
                self.progress(format!("opening the DM with {peer}…"))?;
                let conversation = self.client.find_or_create_dm(peer).await?;
                self.created.insert(conversation.id().clone());
                let label = self.label(&conversation).await;
                self.say(format!("opened {label}"))?;
                self.open(conversation);
            }
            Command::Open(target) => {
                let conversation = self.find(target).await?;
                let label = self.label(&conversation).await;
                self.say(format!("opened {label}"))?;
                self.open(conversation);
            }
            Command::Send(text) => {
                let conversation = self.current.clone().ok_or(ChatError::NotOpen)?;
                let id = conversation.send_text(&text).await?;
                let published = conversation
                    .messages()
                    .await?
                    .iter()
                    .rev()
                    .find(|m| m.id == id)
                    .is_none_or(|m| m.published);
                if published {
                    self.say("sent")?;
                } else {
                    self.say(
                        "queued: not on the node yet (a DM waits until it is verified); \
                         it goes out by itself",
                    )?;
                }
            }
            Command::History => {
                let conversation = self.current.clone().ok_or(ChatError::NotOpen)?;
                let messages = conversation.messages().await?;
                if messages.is_empty() {
                    self.say("no messages yet")?;
                }
                for message in &messages {
                    self.say(message_line(message, &self.me))?;
                }
            }
            Command::Members => {
                let conversation = self.current.clone().ok_or(ChatError::NotOpen)?;
                for member in conversation.members().await? {
                    let you = if member.inbox == self.me {
                        " (you)"
                    } else {
                        ""
                    };
                    let n = member.installations.len();
                    let plural = if n == 1 { "" } else { "s" };
                    self.say(format!("{}  {n} installation{plural}{you}", member.inbox))?;
                }
            }
            Command::Watch(all) => {
                self.watch_all = all;
                if all {
                    self.say("showing new messages of every conversation")?;
                } else {
                    self.say("showing new messages of the open conversation only")?;
                }
            }
            Command::Sync => {
                self.client.sync().await?;
                self.say("synced")?;
            }
            // The loop handles `quit`; nothing to do if it gets here.
            Command::Quit => {}
        }
        Ok(())
    }

    fn open(&mut self, conversation: Conversation) {
        self.notified.remove(conversation.id());
        self.current = Some(conversation);
    }

    async fn find(&self, target: Target) -> Result<Conversation, ChatError> {
        match target {
            Target::Index(n) => {
                let conversations = self.client.conversations().await?;
                let count = conversations.len();
                n.checked_sub(1)
                    .and_then(|i| conversations.into_iter().nth(i))
                    .ok_or_else(|| {
                        ChatError::NoSuchConversation(format!(
                            "no conversation #{n}: `list` shows {count}"
                        ))
                    })
            }
            Target::Id(id) => {
                let unknown = || {
                    ChatError::NoSuchConversation(format!(
                        "no conversation with id {id}: `list` shows the ids"
                    ))
                };
                let conversation = match self.client.conversation(&id).await {
                    Ok(conversation) => conversation,
                    Err(kith::Error::UnknownConversation(_)) => return Err(unknown()),
                    Err(e) => return Err(e.into()),
                };
                if !conversation.is_active().await? {
                    return Err(ChatError::NoSuchConversation(format!(
                        "you are no longer a member of {id}"
                    )));
                }
                Ok(conversation)
            }
        }
    }

    async fn list(&mut self) -> Result<(), ChatError> {
        let conversations = self.client.conversations().await?;
        if conversations.is_empty() {
            self.say("no conversations yet: `create NAME INBOX...` or `dm INBOX`")?;
        }
        for (i, conversation) in conversations.iter().enumerate() {
            let open = self
                .current
                .as_ref()
                .is_some_and(|c| c.id() == conversation.id());
            let (kind, name) = match conversation.dm_peer() {
                Some(peer) => ("dm", peer.to_string()),
                None => ("group", self.name(conversation).await),
            };
            self.say(format!(
                "{}{:>2}  {kind:<5}  {name:<42}  {}",
                if open { '*' } else { ' ' },
                i + 1,
                conversation.id()
            ))?;
        }
        Ok(())
    }

    /// A group's name, as a person reads it.
    async fn name(&self, conversation: &Conversation) -> String {
        match conversation.metadata().await {
            Ok(metadata) if metadata.kind == ConversationKind::Dm => "DM".to_owned(),
            Ok(metadata) => metadata
                .name
                .unwrap_or_else(|| "(unnamed group)".to_owned()),
            Err(e) => format!("(unavailable: {e})"),
        }
    }

    /// A conversation's number in `list`, from 1.
    async fn number(&self, id: &ConversationId) -> Option<usize> {
        let all = self.client.conversations().await.ok()?;
        all.iter().position(|c| c.id() == id).map(|i| i + 1)
    }

    /// `#N name` (or `#N DM with 0x…`): the number `open` takes and what
    /// a person calls the conversation.
    async fn label(&self, conversation: &Conversation) -> String {
        let number = match self.number(conversation.id()).await {
            Some(n) => format!("#{n}"),
            None => "#?".to_owned(),
        };
        match conversation.dm_peer() {
            Some(peer) => format!("{number} DM with {peer}"),
            None => format!("{number} {}", self.name(conversation).await),
        }
    }

    async fn show_event(&mut self, event: Event) -> std::io::Result<()> {
        let current = self.current.as_ref().map(|c| c.id().clone());
        let is_current = |id: &ConversationId| current.as_ref() == Some(id);
        match event {
            Event::Message(message) => {
                if message.sender == self.me && message.sender_installation == self.installation {
                    // This installation's own send: `send` said so already.
                    return Ok(());
                }
                if is_current(&message.conversation) {
                    return self.say(message_line(&message, &self.me));
                }
                if !self.watch_all && self.notified.contains(&message.conversation) {
                    return Ok(());
                }
                let Ok(conversation) = self.client.conversation(&message.conversation).await else {
                    return Ok(());
                };
                let label = self.label(&conversation).await;
                if self.watch_all {
                    self.say(format!("({label}) {}", message_line(&message, &self.me)))
                } else {
                    self.notified.insert(message.conversation.clone());
                    let open = match self.number(&message.conversation).await {
                        Some(n) => n.to_string(),
                        None => message.conversation.to_string(),
                    };
                    self.say(format!("new message in {label}: `open {open}` to read it"))
                }
            }
            Event::Joined { conversation } => {
                if self.created.contains(&conversation) {
                    return Ok(());
                }
                match self.client.conversation(&conversation).await {
                    Ok(joined) => {
                        let label = self.label(&joined).await;
                        self.say(format!("you were added to {label}"))
                    }
                    Err(_) => Ok(()),
                }
            }
            Event::Removed { conversation } => {
                if is_current(&conversation) {
                    self.current = None;
                }
                self.say(format!("you were removed from conversation {conversation}"))
            }
            Event::MembersChanged {
                conversation,
                by,
                added,
                removed,
            } if is_current(&conversation) => {
                let inboxes = |list: &[(InboxId, InstallationId)]| {
                    let set: BTreeSet<InboxId> = list.iter().map(|(inbox, _)| *inbox).collect();
                    set.iter()
                        .map(|inbox| self.who(inbox))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (added, removed, by) = (inboxes(&added), inboxes(&removed), self.who(&by));
                if !added.is_empty() {
                    self.say(format!("* {by} added {added}"))?;
                }
                if !removed.is_empty() {
                    self.say(format!("* {by} removed {removed}"))?;
                }
                Ok(())
            }
            Event::MetadataChanged {
                conversation,
                by,
                metadata,
            } if is_current(&conversation) => {
                let by = self.who(&by);
                let name = metadata.name.as_deref().unwrap_or("(unnamed)");
                self.say(format!(
                    "* {by} changed the conversation's details; its name is {name:?}"
                ))
            }
            Event::ChangeFailed {
                conversation,
                reason,
            }
            | Event::VerificationFailed {
                conversation,
                reason,
            } => self.warn(format!("in {conversation}: {reason}")),
            Event::MessageFailed {
                conversation,
                reason,
                ..
            } => self.warn(format!(
                "a message in {conversation} was not delivered: {reason}"
            )),
            _ => Ok(()),
        }
    }

    fn who(&self, inbox: &InboxId) -> String {
        if *inbox == self.me {
            "you".to_owned()
        } else {
            short_inbox(inbox)
        }
    }
}
