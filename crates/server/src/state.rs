//! Shared state handed to every handler.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use store::Store;

use crate::auth::guard::TokenCache;
use crate::auth::jwt::Keys;
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub config: Config,
    pub keys: Keys,
    pub tokens: TokenCache,
    /// The datasource engine: catalog, hook chain, scripts, password hashing.
    pub engine: Engine,
    pub metrics: Metrics,
    pub started: Instant,
    /// Held while a patch is verified or applied: one at a time on this node.
    pub patching: tokio::sync::Mutex<()>,
    /// The workflow engine: starts instances, runs their executions.
    pub workflows: crate::workflow::Workflows,
    /// This node among the others sharing its database (`cluster`).
    pub cluster: crate::cluster::Cluster,
    /// Redis, when configured (`cache`): pub/sub, the shared session cache, login lockouts.
    pub cache: Option<Arc<crate::cache::Redis>>,
    /// The configured single sign-on providers.
    pub sso: crate::sso::Sso,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }

    /// Disables or enables a user; disabling ends the user's sessions at once on this node and,
    /// through the cluster's channels, on the others (within `token_recheck_millis` at worst).
    pub async fn set_user_enabled(
        &self,
        org: &str,
        user: &str,
        enabled: bool,
        by: &str,
    ) -> store::Result<bool> {
        let found = self.store.set_enabled(org, user, enabled, by).await?;
        if !enabled {
            self.user_changed(org, user).await;
        }
        Ok(found)
    }

    /// Sets a password (already hashed) and ends the user's sessions.
    pub async fn set_user_password(
        &self,
        org: &str,
        user: &str,
        hash: &str,
        by: &str,
    ) -> store::Result<bool> {
        let found = self.store.set_password(org, user, hash, by).await?;
        self.user_changed(org, user).await;
        Ok(found)
    }

    /// A user's sessions ended or roles changed: every node forgets its cached tokens.
    pub async fn user_changed(&self, org: &str, user: &str) {
        let event = crate::cluster::Event::User {
            org: org.to_string(),
            user: user.to_string(),
        };
        crate::cluster::publish(self, event).await;
    }
}
