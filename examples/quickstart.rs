//! Kith in one screen: three wallets, an embedded node, one group.
//!
//! Run it with `cargo run --release -p kith-examples --example quickstart`.
//! Everything lives in a temporary directory: the node's store and each
//! client's store are sled databases there.

use std::{error::Error, path::Path, sync::Arc};

use kith::{Client, Conversation, GroupOptions, LocalNode, LocalWallet};
use kith_storage::SledNodeStore;
use kith_transport::node::{NodeConfig, NodeLogic};

async fn client(
    dir: &Path,
    name: &str,
    node: &LocalNode<SledNodeStore>,
) -> Result<Client, Box<dyn Error>> {
    let client = Client::builder()
        .wallet(LocalWallet::generate(&mut rand_core::OsRng))
        .data_dir(dir.join(name))
        .node(node.clone())
        .build()
        .await?;
    client.register().await?;
    println!("{name:>5} registered as inbox {}", client.inbox_id());
    Ok(client)
}

async fn show(name: &str, conversation: &Conversation) -> Result<(), Box<dyn Error>> {
    let metadata = conversation.metadata().await?;
    println!(
        "\n--- {name} sees \"{}\" ---",
        metadata.name.as_deref().unwrap_or("(unnamed)")
    );
    for message in conversation.messages().await? {
        println!(
            "  {}: {}",
            short(&message.sender.to_string()),
            message.text().unwrap_or("(not text)")
        );
    }
    Ok(())
}

fn short(inbox: &str) -> &str {
    inbox.get(..10).unwrap_or(inbox)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = SledNodeStore::open(dir.path().join("node"))?;
    let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store)));

    // 1. Three wallets register an installation each.
    let alice = client(dir.path(), "alice", &node).await?;
    let bob = client(dir.path(), "bob", &node).await?;
    let carol = client(dir.path(), "carol", &node).await?;

    // 2. Alice creates a named group with Bob and Carol.
    let group = alice
        .create_group(
            &[bob.inbox_id(), carol.inbox_id()],
            GroupOptions::default()
                .name("Weekend climbing")
                .description("Who brings the rope?"),
        )
        .await?;
    println!("\nalice created {} with bob and carol", group.id());
    bob.sync().await?;
    carol.sync().await?;
    let bob_group = bob.conversation(group.id()).await?;
    let carol_group = carol.conversation(group.id()).await?;

    // 3. They talk.
    group.send_text("Saturday at 9?").await?;
    bob_group.sync().await?;
    bob_group.send_text("I'm in, I'll bring the rope.").await?;
    carol_group.sync().await?;
    carol_group.send_text("Count me in!").await?;
    for conversation in [&group, &bob_group, &carol_group] {
        conversation.sync().await?;
    }
    show("alice", &group).await?;
    show("bob", &bob_group).await?;

    // 4. The name changes, on everyone's side.
    group.update_name("Sunday climbing").await?;
    bob_group.sync().await?;
    carol_group.sync().await?;
    println!(
        "\nalice renamed the group; bob now sees {:?}, carol {:?}",
        bob_group.metadata().await?.name,
        carol_group.metadata().await?.name
    );

    // 5. Carol is removed and cannot read what follows.
    group.remove_members(&[carol.inbox_id()]).await?;
    group.send_text("Carol can't read this one.").await?;
    bob_group.sync().await?;
    carol_group.sync().await?;
    show("bob", &bob_group).await?;
    let carol_messages = carol_group.messages().await?;
    println!(
        "\ncarol was removed (still a member: {}); she holds {} messages, and the last one she \
         could read is {:?}",
        carol_group.is_active().await?,
        carol_messages.len(),
        carol_messages
            .last()
            .and_then(|m| m.text().map(str::to_owned))
    );
    let leaked = carol_messages
        .iter()
        .any(|m| m.text() == Some("Carol can't read this one."));
    println!("did carol read the message sent after her removal? {leaked}");
    if leaked {
        return Err("a removed member read a later message".into());
    }
    Ok(())
}
