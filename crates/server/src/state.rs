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

    /// Disables or enables a user; disabling ends the user's sessions at once on this node
    /// (other nodes notice within `token_recheck_millis`).
    pub async fn set_user_enabled(
        &self,
        org: &str,
        user: &str,
        enabled: bool,
        by: &str,
    ) -> store::Result<bool> {
        let found = self.store.set_enabled(org, user, enabled, by).await?;
        if !enabled {
            self.tokens.forget_user(org, user);
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
        self.tokens.forget_user(org, user);
        Ok(found)
    }
}
