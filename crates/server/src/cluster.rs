//! Many nodes on one database: what one node changes, every node sees within a second.
//!
//! The caches that must stay coherent are this node's token cache (`auth::guard`) and its
//! metadata catalog (`engine::catalog`). A change is an [`Event`]; [`publish`] applies it here at
//! once and sends it to the other nodes, which [`apply`] it on receipt:
//! - PostgreSQL: `NOTIFY` on the database (always, so the CLI's changes travel the same way);
//! - Redis, when configured: pub/sub (`cache::Redis`), which also holds the shared session cache
//!   and drops its entries for the event.
//!
//! Neither channel is trusted alone. A node whose listener (re)connects drops every cached token
//! and compares its catalog's metadata version with the database's, since anything sent while
//! it was not listening is lost. And the bounds hold without any channel: a cached token is
//! re-checked after `token_recheck_millis` (1 s), and every node compares the metadata version
//! every [`METADATA_CHECK`]. The channels make the common case immediate.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::state::AppState;

/// How often a node compares its catalog's metadata version with the database's: the bound on
/// how long a missed notification leaves a node serving old metadata.
pub const METADATA_CHECK: Duration = Duration::from_millis(250);

/// The sender name of events from the CLI (`Event::payload`).
pub const CLI: &str = "cli";

/// A change other nodes must see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// A session ended (logout).
    Session { id: String },
    /// A user's sessions ended or roles changed (disabled, password changed, roles edited).
    User { org: String, user: String },
    /// Some app's metadata changed (a patch, an app loaded at start).
    Metadata,
    /// Workflow executions were queued (sent through Redis on MySQL, which has no `NOTIFY`):
    /// every node's runner looks at the queue.
    Workflow,
}

/// An event on the wire, with the node that sent it (which has applied it already).
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: String,
    event: Event,
}

impl Event {
    /// The event as sent on a channel by `from` (a node id, or `cli`).
    pub fn payload(&self, from: &str) -> String {
        serde_json::to_string(&Message {
            from: from.to_string(),
            event: self.clone(),
        })
        .unwrap_or_default()
    }
}

/// This node's identity on the channels.
pub struct Cluster {
    pub node: String,
    /// Received payloads, applied in order by one task.
    inbox: mpsc::UnboundedSender<Inbound>,
    inbox_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Inbound>>>,
}

/// What a channel delivered.
#[derive(Debug)]
pub enum Inbound {
    /// A payload sent by some node, and whether it came through the database (`NOTIFY`) rather
    /// than Redis.
    Payload { text: String, via_database: bool },
    /// The channel (re)connected: anything sent meanwhile may be lost.
    Resync,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        let (tx, rx) = mpsc::unbounded_channel();
        Cluster {
            node: uuid::Uuid::new_v4().simple().to_string(),
            inbox: tx,
            inbox_rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Where channels hand what they receive.
    pub fn inbox(&self) -> mpsc::UnboundedSender<Inbound> {
        self.inbox.clone()
    }
}

/// Applies `event` on this node, then sends it to the others. A failure to send is logged: the
/// other nodes still see the change within their re-check bounds.
pub async fn publish(state: &AppState, event: Event) {
    apply(state, &event).await;
    let payload = event.payload(&state.cluster.node);
    if state.store.has_notifications()
        && let Err(e) = state.store.notify_cluster(&payload).await
    {
        tracing::warn!(error = %e, ?event, "cluster notification failed; other nodes re-check within their bounds");
    }
    if let Some(redis) = &state.cache {
        redis.invalidate_and_publish(&event, &payload).await;
    }
}

/// Applies an event to this node's caches.
pub async fn apply(state: &AppState, event: &Event) {
    match event {
        Event::Session { id } => state.tokens.forget_session(id),
        Event::User { org, user } => state.tokens.forget_user(org, user),
        Event::Metadata => refresh_catalog(state).await,
        Event::Workflow => state.engine.workflow_wake.notify_one(),
    }
}

async fn refresh_catalog(state: &AppState) {
    match state.engine.catalog.refresh(&state.store).await {
        Ok(true) => tracing::info!("metadata changed on another node: catalog reloaded"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "catalog refresh failed"),
    }
}

/// Starts this node's listener on the database, the task that applies what arrives, and the
/// periodic metadata check; they stop when the handles are aborted.
pub fn spawn(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(mut rx) = state
        .cluster
        .inbox_rx
        .lock()
        .ok()
        .and_then(|mut r| r.take())
    {
        let s = state.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Inbound::Payload { text, via_database } => {
                        match serde_json::from_str::<Message>(&text) {
                            Ok(m) if m.from == s.cluster.node => {}
                            Ok(m) => {
                                // Through the database, the sender may have failed to reach Redis
                                // (or be the CLI, which may know no Redis): the shared cache must
                                // not keep what it revoked, so every node that hears of it drops it
                                // there too. Through Redis, the sender's invalidation went first.
                                if via_database && let Some(redis) = &s.cache {
                                    redis.invalidate(&m.event).await;
                                }
                                apply(&s, &m.event).await
                            }
                            Err(e) => tracing::warn!(error = %e, "unreadable cluster message"),
                        }
                    }
                    Inbound::Resync => {
                        s.tokens.forget_all();
                        refresh_catalog(&s).await;
                        // Work queued meanwhile.
                        s.engine.workflow_wake.notify_one();
                    }
                }
            }
        }));
    }
    if state.store.has_notifications() {
        let s = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let inbox = s.cluster.inbox();
                let result = s
                    .store
                    .listen_cluster(move |p| {
                        let _ = inbox.send(match p {
                            Some(text) => Inbound::Payload {
                                text,
                                via_database: true,
                            },
                            None => Inbound::Resync,
                        });
                    })
                    .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cluster LISTEN failed; listening again");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    if let Some(redis) = &state.cache {
        tasks.extend(redis.spawn(state.cluster.inbox()));
        // Without `NOTIFY` (MySQL), other nodes learn of work queued here through Redis; many
        // starts close together make one message.
        if !state.store.has_notifications() {
            let (s, redis) = (state.clone(), redis.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    s.engine.workflow_queued.notified().await;
                    let payload = Event::Workflow.payload(&s.cluster.node);
                    redis
                        .invalidate_and_publish(&Event::Workflow, &payload)
                        .await;
                }
            }));
        }
    }
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(METADATA_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Logged when it starts failing and when it works again, not four times a second.
        let mut failing = false;
        loop {
            tick.tick().await;
            match s.engine.catalog.refresh(&s.store).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!("metadata changed on another node: catalog reloaded");
                    }
                    if failing {
                        tracing::info!("the metadata check works again");
                        failing = false;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "the metadata check failed; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }));
    tasks
}
