//! `InstallationDiscovery`: finds installations that members added or
//! revoked (DESIGN.md section 9). On a timer, and when an identity topic
//! it follows gets an update, it fetches the logs of every member of every
//! group in one request, then asks each group to compare its leaves with
//! the logs and reconcile. A new installation whose key packages are not on the node
//! yet is retried shortly (`ClientConfig::discovery_retry`).

use std::{collections::BTreeSet, sync::Arc};

use actix::prelude::*;
use kith_engine::{delivery::Topic, identity::InboxId};
use tracing::Instrument as _;

use crate::{
    Error,
    group_actor::{Change, GroupActor, Info, Wake},
    network_poller::{NetworkPoller, Watch},
    shared::Shared,
    supervisor::{Groups, Supervisor},
};

/// See the module docs.
pub(crate) struct InstallationDiscovery {
    shared: Arc<Shared>,
    supervisor: Addr<Supervisor>,
    poller: Addr<NetworkPoller>,
    watched: BTreeSet<InboxId>,
    retry_scheduled: bool,
    /// A run is queued: further pushes fold into it.
    queued: bool,
}

impl std::fmt::Debug for InstallationDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationDiscovery")
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl InstallationDiscovery {
    pub(crate) fn new(
        shared: Arc<Shared>,
        supervisor: Addr<Supervisor>,
        poller: Addr<NetworkPoller>,
    ) -> Self {
        Self {
            shared,
            supervisor,
            poller,
            watched: BTreeSet::new(),
            retry_scheduled: false,
            queued: false,
        }
    }
}

impl Actor for InstallationDiscovery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self.shared.config.discovery_interval;
        ctx.run_interval(interval, |_, ctx| ctx.notify(Discover));
    }
}

impl InstallationDiscovery {
    fn watch(&mut self, inboxes: impl IntoIterator<Item = InboxId>, ctx: &mut Context<Self>) {
        for inbox in inboxes {
            if self.watched.insert(inbox) {
                self.poller.do_send(Watch {
                    topic: Topic::Identity(inbox),
                    recipient: ctx.address().recipient(),
                    deliveries: None,
                });
            }
        }
    }
}

/// Follow the identity topics of a group's members, so that their new
/// installations are noticed as soon as they register.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct WatchGroup(pub(crate) Addr<GroupActor>);

impl Handler<WatchGroup> for InstallationDiscovery {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: WatchGroup, _: &mut Self::Context) -> Self::Result {
        Box::pin(
            actix::fut::wrap_future(async move { msg.0.send(Info).await }).map(
                |info, act: &mut Self, ctx| {
                    if let Ok(Ok(info)) = info {
                        act.watch(info.members.into_iter().map(|(i, _)| i), ctx);
                    }
                },
            ),
        )
    }
}

impl Handler<Wake> for InstallationDiscovery {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        if self.shared.config.discovery_on_push && !self.queued {
            self.queued = true;
            ctx.notify(Discover);
        }
    }
}

/// Run discovery now; returns how many groups were reconciled.
#[derive(Message, Debug)]
#[rtype(result = "Result<usize, Error>")]
pub(crate) struct Discover;

impl Handler<Discover> for InstallationDiscovery {
    type Result = AtomicResponse<Self, Result<usize, Error>>;

    fn handle(&mut self, _: Discover, _: &mut Self::Context) -> Self::Result {
        self.queued = false;
        let shared = Arc::clone(&self.shared);
        let supervisor = self.supervisor.clone();
        let fut = async move {
            let groups = supervisor.send(Groups).await?;
            let mut members = Vec::new();
            for (_, addr) in &groups {
                let info = addr.send(Info).await??;
                if info.active {
                    members.push((addr.clone(), info.members));
                }
            }
            let inboxes: BTreeSet<InboxId> = members
                .iter()
                .flat_map(|(_, list)| list.iter().map(|(i, _)| *i))
                .collect();
            // A log the node revised is read whole first: reading past
            // the cached sequence would not see a replaced update.
            shared.reload_revised().await?;
            shared.refresh_identities(inboxes.iter().copied()).await?;
            // Every group compares its leaves with the logs, not only those
            // whose logs just grew: an installation whose key packages were
            // not on the node yet last time is still missing.
            let mut reconciled = 0;
            let mut retry = false;
            for (addr, _) in members {
                match addr.send(Change::Reconcile { refresh: false }).await? {
                    Ok(()) => reconciled += 1,
                    Err(e @ Error::Pending(_)) => {
                        tracing::debug!(error = %e, "reconciling again shortly");
                        retry = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "reconciling a group failed"),
                }
            }
            Ok((inboxes, reconciled, retry))
        };
        let span = tracing::info_span!("installation_discovery");
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(fut.instrument(span)).map(
            |result: Result<(BTreeSet<InboxId>, usize, bool), Error>, act: &mut Self, ctx| {
                let (inboxes, reconciled, retry) = result?;
                act.watch(inboxes, ctx);
                if retry && !act.retry_scheduled {
                    act.retry_scheduled = true;
                    ctx.run_later(act.shared.config.discovery_retry, |act, ctx| {
                        act.retry_scheduled = false;
                        ctx.notify(Discover);
                    });
                }
                Ok(reconciled)
            },
        )))
    }
}
