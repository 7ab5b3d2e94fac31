//! Argon2id password hashing, always off the async threads.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::ApiError;

#[derive(Clone, Debug)]
pub struct Hasher {
    params: Params,
    /// Verified against when the user does not exist, so both paths cost the same. Made on
    /// first use (or by [`Hasher::prewarm`]) so that start-up does not pay for a hash.
    dummy_hash: Arc<OnceLock<String>>,
    /// At most one hash per core at a time: each takes `argon2_memory_kib` of memory and a core
    /// for tens of milliseconds, so more in parallel only adds memory and latency.
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(config: &Config) -> Result<Hasher, String> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Hasher {
            params,
            dummy_hash: Arc::default(),
            permits: Arc::new(Semaphore::new(cores)),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn dummy(&self) -> &str {
        self.dummy_hash.get_or_init(|| {
            self.hash_blocking("not a real password")
                .unwrap_or_default()
        })
    }

    /// Makes the dummy hash on the blocking pool, off the start-up path.
    pub fn prewarm(&self) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.dummy();
        });
    }

    pub fn hash_blocking(&self, password: &str) -> Result<String, String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
        self.argon()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }

    /// Hashes on the blocking pool.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.hash_blocking(&password))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::Internal)
    }

    /// Verifies on the blocking pool. `None` (no such user, or no password) verifies against the
    /// dummy hash and fails, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let real = hash.is_some();
            let hash = hash.unwrap_or_else(|| this.dummy().to_string());
            let ok = this
                .argon()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok();
            ok && real
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
}
