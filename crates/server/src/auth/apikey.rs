//! API key secrets: made here, shown once, stored only as a hash.
//!
//! A key is a UUID (the `IoApiKeys` datasource's generated primary key; the CLI makes the same),
//! its secret 32 random bytes in unpadded base64url (no `:`, so `Token base64(apiKey:secret)`
//! splits cleanly). The stored hash is `sha256:<hex>` of the secret. A fast hash is enough here,
//! unlike for passwords: a password is guessable and Argon2id makes each guess expensive, but a
//! secret of 256 random bits cannot be guessed or looked up from its hash at any speed, so a
//! slow hash would only make every API-key login cost tens of milliseconds of CPU for nothing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new secret and the hash to store, or the random source's error.
pub fn new_secret() -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash(&secret);
    Ok((secret, hash))
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// Whether `secret` is the one `stored` was made from (constant time in the secret).
pub fn verify(secret: &str, stored: &str) -> bool {
    let given = hash(secret);
    given.len() == stored.len() && bool::from(given.as_bytes().ct_eq(stored.as_bytes()))
}

/// Whether a `Token` header's name part has the form of an API key (a hyphenated UUID); only
/// such names are looked up as keys.
pub fn looks_like_key(name: &str) -> bool {
    name.len() == 36 && uuid::Uuid::try_parse(name).is_ok()
}

/// A new key (its id).
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_only_against_their_own_hash() {
        let (secret, stored) = new_secret().unwrap();
        assert_eq!(secret.len(), 43);
        assert!(!secret.contains(':'));
        assert!(stored.starts_with("sha256:") && stored.len() == 7 + 64);
        assert!(verify(&secret, &stored));
        assert!(!verify(&format!("{secret}x"), &stored));
        assert!(!verify("", &stored));
        let (other, _) = new_secret().unwrap();
        assert_ne!(secret, other);
        assert!(!verify(&other, &stored));
    }

    #[test]
    fn only_uuids_look_like_keys() {
        assert!(looks_like_key(&new_key()));
        assert!(!looks_like_key("admin"));
        assert!(!looks_like_key("0b9e6f2c0d2a4c4e8f3a1b2c3d4e5f60"));
    }
}
