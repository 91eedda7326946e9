//! Content types through the public API (issue 23, item 3): every
//! standard type goes from one member to another and decodes to what was
//! sent, with a fallback for clients that do not know it; an unknown type
//! round-trips with its fallback; reactions and receipts stay out of a
//! message list; group changes show in the transcript, saying who changed
//! what; and content that breaks a limit is refused before anything is
//! sent.

mod common;

use std::collections::HashMap;

use common::{Net, group_with, wallet};
use kith::{
    Attachment, Content, Conversation, Error, FieldChange, GroupOptions, GroupUpdated, Message,
    MessageQuery, Reaction, ReactionAction, ReadReceipt, RemoteAttachment, Reply, content,
};

/// `conversation`'s messages after a sync, without the transcript.
async fn sent(conversation: &Conversation) -> Vec<Message> {
    conversation.sync().await.expect("sync");
    conversation
        .messages()
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.content_type != content::GROUP_UPDATED)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_standard_type_reaches_another_member_as_sent() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bobs = &views[0];

    let question = group
        .send_text("Photos from Saturday?")
        .await
        .expect("send");
    let photo = Attachment {
        filename: "summit.jpg".into(),
        mime_type: "image/jpeg".into(),
        data: vec![0xd8; 50_000],
    };
    // The remote attachment's ciphertext goes to a blob store of the
    // application's; here, a map.
    let video = Attachment {
        filename: "descent.mp4".into(),
        mime_type: "video/mp4".into(),
        data: (0..3_000_000u32).map(|i| i as u8).collect(),
    };
    let (remote, ciphertext) =
        RemoteAttachment::encrypt(&video, "https://blobs.example/v/1").expect("encrypt");
    let blobs = HashMap::from([(remote.url.clone(), ciphertext)]);

    let contents = vec![
        Content::Reply(Reply {
            reference: question,
            content: Box::new(Content::Text("Here they are".into())),
        }),
        Content::Attachment(photo.clone()),
        Content::RemoteAttachment(remote.clone()),
        Content::Reaction(Reaction {
            reference: question,
            action: ReactionAction::Added,
            content: "🏔️".into(),
        }),
        Content::Reaction(Reaction {
            reference: question,
            action: ReactionAction::Removed,
            content: "🏔️".into(),
        }),
        Content::ReadReceipt(ReadReceipt),
    ];
    let mut ids = vec![question];
    for content in &contents {
        ids.push(group.send_content(content).await.expect("send"));
    }

    let received = sent(bobs).await;
    assert_eq!(
        received.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids,
        "every message arrives once, in order"
    );
    assert_eq!(
        received[0].content().expect("decodes"),
        Content::Text("Photos from Saturday?".into())
    );
    for (message, content) in received[1..].iter().zip(&contents) {
        assert_eq!(&message.content().expect("decodes"), content);
        assert_eq!(message.content_type, content.content_type());
        assert_eq!(message.sender, alice.inbox_id());
        // What a client that knows none of these types would show.
        assert_eq!(
            message.fallback,
            content.fallback(),
            "{}",
            message.content_type
        );
    }
    assert_eq!(
        received[1].fallback.as_deref(),
        Some("Replied to an earlier message: Here they are")
    );
    assert_eq!(
        received[4].fallback.as_deref(),
        Some("Reacted \"🏔️\" to an earlier message")
    );

    // Bob fetches the blob (the application's job) and opens it.
    let Content::RemoteAttachment(got) = received[3].content().expect("decodes") else {
        panic!("a remote attachment");
    };
    let opened = got.decrypt(&blobs[&got.url]).expect("decrypts");
    assert_eq!(opened, video);
    // A blob the storage swapped does not open.
    let mut swapped = blobs[&got.url].clone();
    swapped[10] ^= 1;
    assert_eq!(
        got.decrypt(&swapped),
        Err(kith::ContentError::DigestMismatch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_type_round_trips_with_its_fallback() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let poll = b"\x0a\x05Lunch\x12\x02Ja\x12\x04Nein";
    let id = group
        .send_raw(
            "example.com/poll:2.0",
            poll,
            Some("A poll: Lunch? (Ja / Nein)"),
        )
        .await
        .expect("send");

    let received = sent(&views[0]).await;
    let message = received.iter().find(|m| m.id == id).expect("received");
    let unknown = message.content().expect("an unknown type is not an error");
    assert_eq!(
        unknown,
        Content::Unknown {
            content_type: "example.com/poll:2.0".into(),
            body: poll.to_vec(),
            fallback: Some("A poll: Lunch? (Ja / Nein)".into()),
        }
    );
    assert!(message.is_listed(), "shown, by its fallback");

    // Bob passes it on as it came: Alice gets the same type, body and
    // fallback back.
    let forwarded = views[0].send_content(&unknown).await.expect("forward");
    let back = sent(&group).await;
    let again = back.iter().find(|m| m.id == forwarded).expect("received");
    assert_eq!(again.content().expect("decodes"), unknown);
    assert_eq!(
        again.fallback.as_deref(),
        Some("A poll: Lunch? (Ja / Nein)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_and_receipts_can_be_kept_out_of_the_message_list() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let first = group.send_text("one").await.expect("send");
    views[0].sync().await.expect("sync");
    views[0]
        .send_content(&Content::Reaction(Reaction {
            reference: first,
            action: ReactionAction::Added,
            content: "👀".into(),
        }))
        .await
        .expect("react");
    views[0]
        .send_content(&Content::ReadReceipt(ReadReceipt))
        .await
        .expect("receipt");
    group.send_text("two").await.expect("send");
    group.sync().await.expect("sync");

    let listed = group
        .find_messages(&MessageQuery::new().listed_only())
        .await
        .expect("query");
    let types: Vec<&str> = listed
        .messages
        .iter()
        .map(|m| m.content_type.as_str())
        .filter(|t| *t != content::GROUP_UPDATED)
        .collect();
    assert_eq!(types, [content::TEXT, content::TEXT]);
    let everything = group
        .find_messages(&MessageQuery::new())
        .await
        .expect("query");
    let reactions: Vec<_> = everything
        .messages
        .iter()
        .filter(|m| !m.is_listed())
        .map(|m| m.content_type.as_str())
        .collect();
    assert_eq!(reactions, [content::REACTION, content::READ_RECEIPT]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_over_a_limit_is_refused_and_nothing_is_sent() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let before = sent(&group).await.len();
    let too_big = Content::Attachment(Attachment {
        filename: "big.bin".into(),
        mime_type: "application/octet-stream".into(),
        data: vec![0; content::MAX_INLINE_ATTACHMENT + 1],
    });
    assert!(matches!(
        group.send_content(&too_big).await,
        Err(Error::Content(kith::ContentError::TooLarge { .. }))
    ));
    let nested = Content::Reply(Reply {
        reference: kith::MessageId([1; 32]),
        content: Box::new(Content::Reaction(Reaction {
            reference: kith::MessageId([1; 32]),
            action: ReactionAction::Added,
            content: "x".into(),
        })),
    });
    assert!(matches!(
        group.send_content(&nested).await,
        Err(Error::Content(kith::ContentError::NotAllowedInReply(_)))
    ));
    let (mut insecure, _) = RemoteAttachment::encrypt(
        &Attachment {
            filename: "a".into(),
            mime_type: "text/plain".into(),
            data: b"a".to_vec(),
        },
        "https://blobs.example/a",
    )
    .expect("encrypt");
    insecure.url = "http://blobs.example/a".into();
    assert!(matches!(
        group
            .send_content(&Content::RemoteAttachment(insecure))
            .await,
        Err(Error::Content(kith::ContentError::InsecureUrl))
    ));
    // Transcript entries are the engine's: an application cannot send one.
    let forged = Content::GroupUpdated(GroupUpdated {
        by: bob.inbox_id(),
        added: vec![],
        removed: vec![alice.inbox_id()],
        changes: vec![],
    });
    assert!(matches!(
        group.send_content(&forged).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(sent(&group).await.len(), before, "nothing was stored");
    assert_eq!(sent(&views[0]).await.len(), before, "nothing was sent");
}

/// The group updates in `conversation`'s transcript, oldest first.
async fn updates(conversation: &Conversation) -> Vec<GroupUpdated> {
    conversation.sync().await.expect("sync");
    conversation
        .find_messages(&MessageQuery::new().content_types([content::GROUP_UPDATED]))
        .await
        .expect("query")
        .messages
        .iter()
        .map(|m| match m.content().expect("decodes") {
            Content::GroupUpdated(update) => update,
            other => panic!("not a group update: {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transcript_says_who_changed_what() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let carol = net.client("carol", &wallet()).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default().name("Ropes")).await;
    let bobs = &views[0];
    group.add_members(&[carol.inbox_id()]).await.expect("add");
    bobs.sync().await.expect("sync");
    bobs.update_name("Ropes & knots").await.expect("rename");
    group.sync().await.expect("sync");
    group.add_admin(bob.inbox_id()).await.expect("admin");
    group
        .remove_members(&[carol.inbox_id()])
        .await
        .expect("remove");

    let change = |field: &str, old: Option<&str>, new: Option<&str>| FieldChange {
        field: field.into(),
        old: old.map(Into::into),
        new: new.map(Into::into),
    };
    let expected_after_bob_joined = vec![
        GroupUpdated {
            by: alice.inbox_id(),
            added: vec![carol.inbox_id()],
            removed: vec![],
            changes: vec![],
        },
        GroupUpdated {
            by: bob.inbox_id(),
            added: vec![],
            removed: vec![],
            changes: vec![change("name", Some("Ropes"), Some("Ropes & knots"))],
        },
        GroupUpdated {
            by: alice.inbox_id(),
            added: vec![],
            removed: vec![],
            changes: vec![change("admin", None, Some(&bob.inbox_id().to_string()))],
        },
        GroupUpdated {
            by: alice.inbox_id(),
            added: vec![],
            removed: vec![carol.inbox_id()],
            changes: vec![],
        },
    ];
    // Alice also has the commit that added Bob; Bob joined after it.
    let at_alice = updates(&group).await;
    assert_eq!(at_alice[0].added, vec![bob.inbox_id()]);
    assert_eq!(at_alice[1..], expected_after_bob_joined[..]);
    assert_eq!(updates(bobs).await, expected_after_bob_joined);
    // A client that does not know the type reads the fallback.
    let renamed = bobs
        .find_messages(&MessageQuery::new().content_types([content::GROUP_UPDATED]))
        .await
        .expect("query")
        .messages[1]
        .content()
        .expect("decodes")
        .fallback()
        .expect("a fallback");
    assert!(renamed.contains("Ropes & knots"), "{renamed}");
}
