//! `InstallationDiscovery`: finds installations that members added or
//! revoked (DESIGN.md section 9). On a timer, and when an identity topic
//! it follows gets an update, it fetches the logs of every member of every
//! group in one request, then asks each group whose members' logs grew to
//! reconcile.

use std::{collections::BTreeSet, sync::Arc};

use actix::prelude::*;
use kith_engine::{delivery::Topic, identity::InboxId};

use crate::{
    Error,
    group_actor::{Change, Info, Wake},
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

impl Handler<Wake> for InstallationDiscovery {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        if self.shared.config.discovery_on_push {
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
            shared.refresh_identities(inboxes.iter().copied()).await?;
            // Every group compares its leaves with the logs, not only those
            // whose logs just grew: an installation whose key packages were
            // not on the node yet last time is still missing.
            let mut reconciled = 0;
            for (addr, _) in members {
                match addr.send(Change::Reconcile { refresh: false }).await? {
                    Ok(()) => reconciled += 1,
                    Err(e) => tracing::warn!(error = %e, "reconciling a group failed"),
                }
            }
            Ok((inboxes, reconciled))
        };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(fut).map(
            |result: Result<(BTreeSet<InboxId>, usize), Error>, act: &mut Self, ctx| {
                let (inboxes, reconciled) = result?;
                for inbox in inboxes {
                    if act.watched.insert(inbox) {
                        act.poller.do_send(Watch {
                            topic: Topic::Identity(inbox),
                            recipient: ctx.address().recipient(),
                        });
                    }
                }
                Ok(reconciled)
            },
        )))
    }
}
