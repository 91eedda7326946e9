//! The commands of `kith-chat`, parsed from one line of input, and the
//! help text that lists them.
//!
//! Parsing checks everything that can be checked without the client (an
//! inbox's form, a conversation reference's form, missing arguments), so
//! that a typo is refused with a message before anything is sent.

use std::str::FromStr as _;

use kith::{ConversationId, InboxId};

use super::ChatError;

/// What `help` prints.
pub const HELP: &str = "\
commands:
  whoami                 this inbox and installation
  register               register this installation (once; the wallet signs)
  list                   conversations: number, kind, name or DM peer, id
  create NAME INBOX...   create a group (quote a NAME with spaces) and open it
  dm INBOX               open the DM with INBOX, creating it if needed
  open N|ID              open a conversation by its number in `list` or its id
  send TEXT...           send TEXT to the open conversation
  history                the open conversation's messages
  members                the open conversation's members
  watch [on|off]         on: show new messages of every conversation as they
                         arrive; off (the default): only the open one's
  sync                   fetch what is new from the node now
  help                   this text
  quit                   shut down and exit (so does end of input)
New messages of the open conversation are shown as they arrive, as
[HH:MM:SS] SENDER: TEXT (UTC).";

/// Which conversation `open` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its number in `list`, from 1.
    Index(usize),
    /// Its id.
    Id(ConversationId),
}

/// One command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `help`.
    Help,
    /// `whoami`.
    Whoami,
    /// `register`.
    Register,
    /// `list`.
    List,
    /// `create NAME INBOX...`.
    Create {
        /// The group's name.
        name: String,
        /// The members besides this inbox (may be none).
        members: Vec<InboxId>,
    },
    /// `dm INBOX`.
    Dm(InboxId),
    /// `open N|ID`.
    Open(Target),
    /// `send TEXT...`: the rest of the line, as typed.
    Send(String),
    /// `history`.
    History,
    /// `members`.
    Members,
    /// `watch [on|off]`: whether every conversation's messages are shown.
    Watch(bool),
    /// `sync`.
    Sync,
    /// `quit` or `exit`.
    Quit,
}

/// Parse one line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command>, ChatError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (verb, rest) = match line.split_once(char::is_whitespace) {
        Some((verb, rest)) => (verb, rest.trim_start()),
        None => (line, ""),
    };
    let usage = |text: &str| Err(ChatError::Usage(text.to_owned()));
    let command = match verb {
        "help" | "?" => Command::Help,
        "whoami" => Command::Whoami,
        "register" => Command::Register,
        "list" | "ls" => Command::List,
        "history" => Command::History,
        "members" => Command::Members,
        "sync" => Command::Sync,
        "quit" | "exit" => Command::Quit,
        "send" => {
            if rest.is_empty() {
                return usage("nothing to send: `send TEXT`");
            }
            Command::Send(rest.to_owned())
        }
        "create" => {
            let mut words = split_words(rest)?.into_iter();
            let Some(name) = words.next() else {
                return usage("`create NAME INBOX...` needs a name");
            };
            let members = words.map(|w| inbox(&w)).collect::<Result<_, _>>()?;
            Command::Create { name, members }
        }
        "dm" => match split_words(rest)?.as_slice() {
            [peer] => Command::Dm(inbox(peer)?),
            _ => return usage("`dm INBOX` takes one inbox"),
        },
        "open" => match split_words(rest)?.as_slice() {
            [target] => Command::Open(parse_target(target)?),
            _ => return usage("`open N|ID` takes a number from `list` or a conversation id"),
        },
        "watch" => match rest {
            "" | "on" => Command::Watch(true),
            "off" => Command::Watch(false),
            _ => return usage("`watch` takes `on` or `off`"),
        },
        other => {
            return Err(ChatError::Usage(format!(
                "unknown command `{other}`; `help` lists the commands"
            )));
        }
    };
    Ok(Some(command))
}

fn inbox(word: &str) -> Result<InboxId, ChatError> {
    InboxId::from_str(word).map_err(|_| {
        ChatError::Usage(format!(
            "`{word}` is not an inbox: expected 0x and 40 hex digits"
        ))
    })
}

fn parse_target(word: &str) -> Result<Target, ChatError> {
    // Conversation ids are 16 bytes or more, so a short run of digits is
    // always a list number.
    if word.len() <= 6
        && let Ok(index) = word.parse::<usize>()
    {
        return Ok(Target::Index(index));
    }
    let digits = word.strip_prefix("0x").unwrap_or(word);
    match hex::decode(digits) {
        Ok(bytes) if !bytes.is_empty() => Ok(Target::Id(ConversationId(bytes))),
        _ => Err(ChatError::Usage(format!(
            "`{word}` is neither a number from `list` nor a conversation id (hex)"
        ))),
    }
}

/// Split on whitespace, keeping "double-quoted words" together.
fn split_words(text: &str) -> Result<Vec<String>, ChatError> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => word.push(c),
                    None => {
                        return Err(ChatError::Usage(
                            "a quote is not closed: end the name with \"".into(),
                        ));
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "0xeefca179f40d3b8b3d941e6a13e48835a3af8241";
    const BOB: &str = "0x0000000000000000000000000000000000000001";

    fn ok(line: &str) -> Command {
        parse(line)
            .expect("parses")
            .expect("a command, not a blank line")
    }

    fn refused(line: &str) -> String {
        match parse(line) {
            Err(ChatError::Usage(message)) => message,
            other => panic!("{line:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn simple_commands_and_blank_lines() {
        assert_eq!(parse("   ").expect("blank"), None);
        assert_eq!(ok("whoami"), Command::Whoami);
        assert_eq!(ok("  list  "), Command::List);
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("exit"), Command::Quit);
        assert_eq!(ok("watch"), Command::Watch(true));
        assert_eq!(ok("watch off"), Command::Watch(false));
        assert!(refused("frobnicate now").contains("unknown command `frobnicate`"));
        assert!(refused("watch sideways").contains("on` or `off"));
    }

    #[test]
    fn send_keeps_the_rest_of_the_line_as_typed() {
        assert_eq!(
            ok("send  hello,   \"world\" "),
            Command::Send("hello,   \"world\"".into())
        );
        assert!(refused("send").contains("nothing to send"));
    }

    #[test]
    fn create_takes_a_name_quoted_or_not_and_inboxes() {
        let alice: InboxId = ALICE.parse().expect("inbox");
        let bob: InboxId = BOB.parse().expect("inbox");
        assert_eq!(
            ok(&format!("create Climbing {ALICE} {BOB}")),
            Command::Create {
                name: "Climbing".into(),
                members: vec![alice, bob]
            }
        );
        assert_eq!(
            ok("create \"Weekend climbing\""),
            Command::Create {
                name: "Weekend climbing".into(),
                members: vec![]
            }
        );
        assert!(refused("create").contains("needs a name"));
        assert!(refused("create \"open").contains("quote"));
        assert!(refused("create Climbing bob").contains("`bob` is not an inbox"));
    }

    #[test]
    fn dm_takes_exactly_one_valid_inbox() {
        let alice: InboxId = ALICE.parse().expect("inbox");
        assert_eq!(ok(&format!("dm {ALICE}")), Command::Dm(alice));
        assert!(refused("dm not-an-inbox").contains("not an inbox"));
        assert!(refused("dm").contains("one inbox"));
        assert!(refused(&format!("dm {ALICE} {BOB}")).contains("one inbox"));
        // A mixed-case address must carry a correct EIP-55 checksum.
        assert!(refused("dm 0xEEfca179f40d3b8b3d941e6a13e48835a3af8241").contains("not an inbox"));
    }

    #[test]
    fn open_takes_a_list_number_or_an_id() {
        assert_eq!(ok("open 2"), Command::Open(Target::Index(2)));
        let id = "00112233445566778899aabbccddeeff";
        assert_eq!(
            ok(&format!("open {id}")),
            Command::Open(Target::Id(ConversationId(hex::decode(id).expect("hex"))))
        );
        assert!(refused("open nope").contains("neither a number"));
        assert!(refused("open").contains("`open N|ID`"));
    }

    #[test]
    fn help_names_every_command() {
        for verb in [
            "whoami", "register", "list", "create", "dm", "open", "send", "history", "members",
            "watch", "sync", "help", "quit",
        ] {
            assert!(HELP.contains(&format!("\n  {verb}")), "{verb}");
        }
    }
}
