//! Argon2id password hashing, always off the async threads.

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::Config;

/// glibc serves an allocation above its mmap threshold with `mmap` and unmaps it on free, but
/// raises the threshold after such a free, up to 32 MiB on 64-bit systems: from the second hash
/// on, a 19 MiB Argon2 buffer would come from (and stay in) a per-thread arena, leaving hundreds
/// of MiB resident after a burst of logins. Reserving more than 32 MiB keeps every buffer on
/// `mmap`: the untouched tail costs no memory and all of it is returned when it is freed. (The
/// `cloudio` binary runs on jemalloc, whose background thread returns such buffers anyway; the
/// floor keeps a library user on glibc safe too.)
const MMAP_FLOOR_BLOCKS: usize = 33 * 1024;

/// Spare buffers are freed once no hash has run for this long.
const KEEP_SPARE: Duration = Duration::from_secs(1);

/// Hashing or verifying failed inside the server (never a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct PasswordError(pub String);

/// Argon2 working memory, reused while logins keep coming (a fresh buffer costs page faults and
/// zeroing: about a third of a login's CPU) and given back to the system once they stop.
#[derive(Debug, Default)]
struct Buffers {
    spare: Mutex<Vec<Vec<Block>>>,
    last_use: Mutex<Option<Instant>>,
}

impl Buffers {
    fn take(&self, blocks: usize) -> Vec<Block> {
        let reused = self.spare.lock().ok().and_then(|mut s| s.pop());
        match reused {
            Some(b) if b.len() == blocks => b,
            _ => {
                let mut memory = Vec::with_capacity(blocks.max(MMAP_FLOOR_BLOCKS));
                memory.resize(blocks, Block::default());
                memory
            }
        }
    }

    fn give_back(&self, memory: Vec<Block>) {
        if let Ok(mut last) = self.last_use.lock() {
            *last = Some(Instant::now());
        }
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(memory);
        }
    }

    /// Frees the spare buffers when none was used for [`KEEP_SPARE`].
    fn trim(&self) {
        let idle = self
            .last_use
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() >= KEEP_SPARE);
        if idle && let Ok(mut spare) = self.spare.lock() {
            spare.clear();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Hasher {
    params: Params,
    /// Verified against when the user does not exist, so both paths cost the same.
    dummy_hash: Arc<OnceLock<String>>,
    buffers: Arc<Buffers>,
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
            buffers: Arc::default(),
            permits: Arc::new(Semaphore::new(cores)),
        })
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A hash with the configured parameters, a random salt and a random output: checking a
    /// password against it costs one Argon2 run, like a real check, and never succeeds.
    fn dummy(&self) -> &str {
        self.dummy_hash.get_or_init(|| {
            let mut bytes = [0u8; 48];
            let _ = getrandom::fill(&mut bytes);
            self.phc(&bytes[..16], &bytes[16..]).unwrap_or_default()
        })
    }

    /// Frees idle Argon2 buffers (checked four times a second) while the runtime runs.
    pub fn start_trimmer(&self) {
        let buffers = Arc::downgrade(&self.buffers);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                match buffers.upgrade() {
                    Some(b) => b.trim(),
                    None => break,
                }
            }
        });
    }

    /// Runs Argon2 in a reused (or fresh) buffer.
    fn compute(
        &self,
        argon: &Argon2<'_>,
        params: &Params,
        pwd: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), String> {
        let mut memory = self.buffers.take(params.block_count());
        let result = argon.hash_password_into_with_memory(pwd, salt, out, &mut memory);
        self.buffers.give_back(memory);
        result.map_err(|e| e.to_string())
    }

    fn phc(&self, salt: &[u8], output: &[u8]) -> Result<String, String> {
        let err = |e: argon2::password_hash::phc::Error| e.to_string();
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| e.to_string())?,
            salt: Some(Salt::new(salt).map_err(err)?),
            hash: Some(Output::new(output).map_err(err)?),
        };
        Ok(hash.to_string())
    }

    pub fn hash_blocking(&self, password: &str) -> Result<String, String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
        let mut out = [0u8; 32];
        self.compute(
            &self.argon(),
            &self.params,
            password.as_bytes(),
            &salt,
            &mut out,
        )?;
        self.phc(&salt, &out)
    }

    /// Checks `password` against a PHC string; any malformed hash simply fails.
    fn verify_blocking(&self, password: &str, phc: &str) -> bool {
        let check = || -> Option<bool> {
            let parsed = PasswordHash::new(phc).ok()?;
            let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
            let version = match parsed.version {
                Some(v) => Version::try_from(v).ok()?,
                None => Version::default(),
            };
            let params = Params::try_from(&parsed).ok()?;
            let (salt, expected) = (parsed.salt?, parsed.hash?);
            let mut out = vec![0u8; expected.len()];
            let argon = Argon2::new(algorithm, version, params.clone());
            self.compute(
                &argon,
                &params,
                password.as_bytes(),
                salt.as_ref(),
                &mut out,
            )
            .ok()?;
            // `Output`'s equality is constant-time.
            Some(Output::new(&out).ok()? == expected)
        };
        check().unwrap_or(false)
    }

    /// Runs `work` on the blocking pool, holding one of the per-core permits.
    async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Hasher) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let internal = |e: &dyn std::fmt::Display| PasswordError(e.to_string());
        let _permit = self.permits.acquire().await.map_err(|e| internal(&e))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(|e| internal(&e))
    }

    /// Hashes on the blocking pool.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.off_thread(move |h| h.hash_blocking(&password))
            .await?
            .map_err(PasswordError)
    }

    /// Verifies on the blocking pool. `None` (no such user, or no password) verifies against the
    /// dummy hash and fails, taking the same time.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        self.off_thread(move |h| match hash {
            Some(hash) => h.verify_blocking(&password, &hash),
            None => {
                h.verify_blocking(&password, h.dummy());
                false
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

    fn hasher() -> Hasher {
        Hasher::new(&Config::default()).unwrap()
    }

    #[test]
    fn hashes_verify_and_interoperate_with_the_argon2_crate() {
        let h = hasher();
        let phc = h.hash_blocking("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify_blocking("correct horse", &phc));
        assert!(!h.verify_blocking("correct horsf", &phc));
        // The argon2 crate's own verifier accepts our hashes, and we accept its hashes.
        let standard = Argon2::default();
        assert!(
            standard
                .verify_password(b"correct horse", phc.as_str())
                .is_ok()
        );
        let theirs = standard
            .hash_password_with_salt(b"pw", b"saltsaltsaltsalt")
            .unwrap()
            .to_string();
        assert!(h.verify_blocking("pw", &theirs));
        assert!(!h.verify_blocking("pw", "not a hash"));
        assert!(!h.verify_blocking("pw", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$"));
    }

    #[test]
    fn the_dummy_hash_costs_a_real_check_and_never_matches() {
        let h = hasher();
        let dummy = h.dummy().to_string();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
        assert!(
            !h.verify_blocking("", &dummy) && !h.verify_blocking("not a real password", &dummy)
        );
        // Buffers are reused while in use and freed once idle.
        assert_eq!(h.buffers.spare.lock().unwrap().len(), 1);
        *h.buffers.last_use.lock().unwrap() = Some(Instant::now() - KEEP_SPARE);
        h.buffers.trim();
        assert!(h.buffers.spare.lock().unwrap().is_empty());
    }
}
