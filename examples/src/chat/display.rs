//! How `kith-chat` shows times, inboxes and messages: short enough to read
//! at a glance, complete where a value is meant to be copied (ids in
//! `list`, the inbox in `whoami`).

use kith::{InboxId, Message};

/// `HH:MM:SS` (UTC) of a time in ms since the Unix epoch. UTC because
/// the standard library knows no time zones, and a chat log that mixes
/// zones would be worse.
pub fn clock(time_ms: u64) -> String {
    let seconds = (time_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

/// An inbox shortened for a message line: `0x1234…cdef`.
pub fn short_inbox(inbox: &InboxId) -> String {
    let full = inbox.to_string();
    match (full.get(..6), full.get(full.len().saturating_sub(4)..)) {
        (Some(head), Some(tail)) => format!("{head}…{tail}"),
        _ => full,
    }
}

/// A message as one entry of a chat log: `[HH:MM:SS] SENDER: TEXT`, with
/// the lines after the first indented under it. `me` is this inbox.
pub fn message_line(message: &Message, me: &InboxId) -> String {
    let sender = if !message.verified {
        "(unverified sender)".to_owned()
    } else if message.sender == *me {
        "me".to_owned()
    } else {
        short_inbox(&message.sender)
    };
    let body = match message.text() {
        Some(text) => text.replace('\n', "\n           "),
        None => format!("({}, {} bytes)", message.content_type, message.body.len()),
    };
    format!("[{}] {sender}: {body}", clock(message.time_ms))
}

#[cfg(test)]
mod tests {
    use kith::{ConversationId, InstallationId, MessageId};

    use super::*;

    fn message(sender: InboxId, text: &str) -> Message {
        Message {
            id: MessageId([7; 32]),
            conversation: ConversationId(vec![1; 16]),
            sender,
            sender_installation: InstallationId::UNKNOWN,
            content_type: "text/plain".into(),
            body: text.as_bytes().to_vec(),
            sent_at_ms: 0,
            time_ms: 1_700_000_000_000 + (3 * 3600 + 4 * 60 + 5) * 1000,
            published: true,
            delivery: kith::Delivery::Published,
            fallback: None,
            verified: true,
        }
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(86_399_999), "23:59:59");
        assert_eq!(clock(86_400_000 + 61_000), "00:01:01");
    }

    #[test]
    fn message_lines_name_the_sender_briefly() {
        let me = InboxId::from_bytes([0xaa; 20]);
        let other = InboxId::from_bytes([0x11; 20]);
        let theirs = message_line(&message(other, "hi\nthere"), &me);
        assert!(theirs.starts_with('['), "{theirs}");
        assert!(
            theirs.ends_with("] 0x1111…1111: hi\n           there"),
            "{theirs}"
        );
        assert!(message_line(&message(me, "yo"), &me).ends_with("] me: yo"));
    }
}
