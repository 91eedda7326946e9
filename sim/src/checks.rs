//! The checks of a run: the rewind ring's bounds after every advance, and,
//! once the network is quiet, that the members converged, that nothing is
//! stuck, and that every client's message list matches the model
//! ([`crate::model`]). The end state also goes into the run's trace.

use std::collections::BTreeSet;

use kith_engine::{
    group::{CONTENT_TYPE_GROUP_UPDATED, ClientStore, Group, StoredMessage},
    identity::InboxId,
};

use crate::{
    client::Client,
    model::Holder,
    scenario::Sim,
    trace::{self, hex, hex8},
};

/// After an advance of `index`, every snapshot left must still be within
/// its bound, and the ring within its size.
pub(crate) fn ring(sim: &mut Sim, index: usize) {
    let policy = sim.policy.rewind;
    let snapshots = sim.clients[index].snapshots();
    if snapshots.len() > policy.max_rewind {
        sim.failures.push(format!(
            "client {index}: {} snapshots retained, over the bound of {}",
            snapshots.len(),
            policy.max_rewind
        ));
    }
    for snapshot in snapshots {
        if sim.now >= snapshot.commit_key.0 + policy.settle_window_ms {
            sim.failures.push(format!(
                "client {index}: the snapshot of epoch {} outlived the settle window",
                snapshot.epoch
            ));
        }
    }
}

/// Everything checked once the network is quiet.
pub(crate) fn end(sim: &mut Sim) {
    // A member removed on the canonical branch while it was on a fork
    // cannot learn of the removal (it cannot decrypt that branch); it must
    // know it is on a fork, and then it is not counted a member.
    let forked: BTreeSet<usize> = sim
        .clients
        .iter()
        .filter(|c| c.group.as_ref().is_some_and(|g| g.fork().is_some()))
        .map(|c| c.index)
        .collect();
    if trace::enabled() {
        print_chains(&sim.clients);
    }
    let members: Vec<usize> = sim
        .clients
        .iter()
        .filter(|c| c.is_member() && !forked.contains(&c.index))
        .map(|c| c.index)
        .collect();
    convergence(sim, &members);
    nothing_stuck(sim, &forked);
    messages(sim, &members, &forked);
    trace_end(sim);
}

/// Every member agrees on the epoch, the authenticator, the membership
/// and the metadata, and the tree's members are the clients that think
/// they are members.
fn convergence(sim: &mut Sim, members: &[usize]) {
    let Some(&first) = members.first() else {
        sim.failures.push("no member is left".into());
        return;
    };
    let Some(reference) = sim.clients[first].group.as_ref() else {
        return;
    };
    let member_inboxes: BTreeSet<InboxId> = members.iter().map(|i| sim.clients[*i].inbox).collect();
    let tree = reference.members();
    if tree.keys().copied().collect::<BTreeSet<_>>() != member_inboxes {
        sim.failures.push(format!(
            "the tree's members {:?} are not the clients that think they are members {:?}",
            tree.keys().collect::<Vec<_>>(),
            member_inboxes
        ));
    }
    let mut found = Vec::new();
    for &index in members {
        let Some(g) = sim.clients[index].group.as_ref() else {
            continue;
        };
        if g.epoch() != reference.epoch() || g.epoch_digest() != reference.epoch_digest() {
            found.push(format!(
                "client {index} ended in epoch {} ({}), client {first} in epoch {} ({})",
                g.epoch(),
                hex8(&g.epoch_digest()),
                reference.epoch(),
                hex8(&reference.epoch_digest())
            ));
        }
        if g.members() != tree {
            found.push(format!("client {index} disagrees on the membership"));
        }
        if g.metadata() != reference.metadata() {
            found.push(format!("client {index} disagrees on the metadata"));
        }
        if let Some(fork) = g.fork() {
            found.push(format!("client {index} is on a fork: {}", fork.reason));
        }
    }
    sim.failures.extend(found);
}

/// No snapshot left, no intent stuck or failed in silence, no outbox left.
fn nothing_stuck(sim: &mut Sim, forked: &BTreeSet<usize>) {
    let mut found = Vec::new();
    for client in &sim.clients {
        let Some(group) = client.group.as_ref() else {
            continue;
        };
        let index = client.index;
        if !client.snapshots().is_empty() {
            found.push(format!(
                "client {index}: snapshots are left after the network settled"
            ));
        }
        match ClientStore(client.storage()).intents(group.group_id()) {
            // Waiting to be re-added, by members that removed it.
            Ok(_) if forked.contains(&index) => {}
            Ok(intents) => {
                for intent in intents {
                    if !intent.state.is_final() {
                        found.push(format!(
                            "client {index}: intent {} is stuck in {:?}",
                            intent.id, intent.state
                        ));
                    } else if !client.events.iter().any(|e| {
                        matches!(e, kith_engine::group::GroupEvent::IntentFailed { id, .. } if *id == intent.id)
                    }) {
                        found.push(format!(
                            "client {index}: intent {} failed without an event",
                            intent.id
                        ));
                    }
                }
            }
            Err(e) => found.push(format!("client {index}: {e}")),
        }
        if group.pending_outbound().next().is_some() {
            found.push(format!(
                "client {index}: outbox not empty after the network settled"
            ));
        }
        // Removed for good: the group's secrets must be gone (RFC 9420
        // section 8), not kept beside the messages.
        if !group.is_active() && !forked.contains(&index) {
            let id = openmls::prelude::GroupId::from_slice(group.group_id());
            match client.storage().raw_group_entries(&id) {
                Ok(entries) if entries.is_empty() => {}
                Ok(entries) => found.push(format!(
                    "client {index}: removed, yet {} MLS entries of the group are kept",
                    entries.len()
                )),
                Err(e) => found.push(format!("client {index}: {e}")),
            }
        }
    }
    sim.failures.extend(found);
}

/// Every client's whole message list against the model.
fn messages(sim: &mut Sim, members: &[usize], forked: &BTreeSet<usize>) {
    let Some(conversation) = sim
        .clients
        .iter()
        .find_map(|c| c.group.as_ref().map(Group::conversation_id))
    else {
        return;
    };
    let mut lists: Vec<Vec<StoredMessage>> = Vec::with_capacity(sim.clients.len());
    for client in &sim.clients {
        match ClientStore(client.storage()).messages(&conversation) {
            // The model is of application messages; transcript entries
            // are each member's own record of the commits it merged.
            Ok(mut list) => {
                list.retain(|m| m.content_type != CONTENT_TYPE_GROUP_UPDATED);
                lists.push(list);
            }
            Err(e) => {
                sim.failures
                    .push(format!("client {}: its messages: {e}", client.index));
                lists.push(Vec::new());
            }
        }
    }
    let holders: Vec<Holder<'_>> = sim
        .clients
        .iter()
        .zip(&lists)
        .map(|(client, list)| Holder {
            index: client.index,
            messages: list,
            events: &client.events,
            incarnation: client.incarnation,
            member: members.contains(&client.index),
            stranded: forked.contains(&client.index),
        })
        .collect();
    let found = sim.model.check(&holders);
    sim.failures.extend(found);
    for (client, list) in sim.clients.iter().zip(&lists) {
        for message in list {
            sim.trace.line(format_args!(
                "end client {} message {} at {} {:?}",
                client.index,
                hex(&message.message_id),
                message.time_ms,
                message.delivery
            ));
        }
    }
}

/// Every client's end state and events, into the trace.
fn trace_end(sim: &mut Sim) {
    for client in &sim.clients {
        let state = client
            .group
            .as_ref()
            .map(|g| (g.epoch(), g.members(), g.metadata().clone()));
        sim.trace.line(format_args!(
            "end client {} incarnation {} node {} {state:?}",
            client.index, client.incarnation, client.node
        ));
        if let Some(group) = &client.group {
            sim.trace.bytes(hex(&group.epoch_authenticator()));
        }
        for event in &client.events {
            sim.trace
                .line(format_args!("end client {} event {event:?}", client.index));
        }
    }
}

/// The commit applied for each recorded epoch, per client: where two
/// members' chains part is where one of them went wrong.
fn print_chains(clients: &[Client]) {
    for client in clients {
        eprintln!(
            "client {} node {} join {:?} epoch {:?}",
            client.index,
            client.node,
            client.join_epoch,
            client.group.as_ref().map(Group::epoch)
        );
        if let Some(group) = client.group.as_ref() {
            let store = ClientStore(client.storage());
            let chain: Vec<String> = (0..group.epoch())
                .filter_map(|epoch| {
                    let (key, auth) = store.commit_record(group.group_id(), epoch).ok()??;
                    Some(format!(
                        "{epoch}:({},{},{})@{}",
                        key.0 % 100_000,
                        key.1,
                        key.2,
                        hex8(&auth)
                    ))
                })
                .collect();
            eprintln!("    chain {}", chain.join(" "));
        }
        for event in &client.events {
            eprintln!("    {}", trace::event(event));
        }
    }
}
