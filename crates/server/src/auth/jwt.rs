//! HS256 JWTs with the documented claims. Only HS256 is accepted (`alg: none` and every other
//! algorithm are refused), with 30 s of clock skew; previous secrets still verify after a
//! rotation, new tokens are signed with the current one.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const SKEW_SECS: i64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub session: String,
    pub csrf: String,
    pub org_uid: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct Keys {
    encoding: EncodingKey,
    /// Current secret first, then previous ones.
    decoding: Vec<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} verification keys)", self.decoding.len())
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is expired")]
    Expired,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token is invalid")]
    Invalid,
}

impl Keys {
    pub fn new(current: &[u8], previous: &[&[u8]]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = SKEW_SECS as u64;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        let mut decoding = vec![DecodingKey::from_secret(current)];
        decoding.extend(previous.iter().map(|p| DecodingKey::from_secret(p)));
        Keys {
            encoding: EncodingKey::from_secret(current),
            decoding,
            validation,
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| e.to_string())
    }

    /// Verifies signature, algorithm, expiry (with skew) and `iat` (not in the future beyond the
    /// skew). Tries each secret in turn.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let mut last = JwtError::Invalid;
        for key in &self.decoding {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    if data.claims.iat > now + SKEW_SECS {
                        return Err(JwtError::IssuedInFuture);
                    }
                    return Ok(data.claims);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(JwtError::Expired),
                        ErrorKind::InvalidSignature => last = JwtError::Invalid,
                        _ => return Err(JwtError::Invalid),
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn claims(now: i64) -> Claims {
        Claims {
            session: "s".into(),
            csrf: "c".into(),
            org_uid: "cloudio".into(),
            sub: "admin".into(),
            iat: now,
            exp: now + 3600,
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = Keys::new(b"old-secret-old-secret-old-secret", &[]);
        let token = old.sign(&claims(now())).unwrap();
        let rotated = Keys::new(
            b"new-secret-new-secret-new-secret",
            &[b"old-secret-old-secret-old-secret"],
        );
        assert_eq!(
            rotated.verify(&token, now()).unwrap(),
            claims(token_iat(&token))
        );
        let forgotten = Keys::new(b"new-secret-new-secret-new-secret", &[]);
        assert_eq!(forgotten.verify(&token, now()), Err(JwtError::Invalid));
    }

    fn token_iat(token: &str) -> i64 {
        let payload = token.split('.').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        v["iat"].as_i64().unwrap()
    }

    #[test]
    fn refuses_none_other_algorithms_and_tampering() {
        let keys = Keys::new(b"secret-secret-secret-secret-1234", &[]);
        let good = keys.sign(&claims(now())).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let payload = parts[1];
        let none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(keys.verify(&none, now()), Err(JwtError::Invalid));
        let hs512 = format!(
            "{}.{payload}.{}",
            B64.encode(r#"{"alg":"HS512","typ":"JWT"}"#),
            parts[2]
        );
        assert_eq!(keys.verify(&hs512, now()), Err(JwtError::Invalid));
        let mut c = claims(now());
        c.sub = "root".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_string(&c).unwrap()),
            parts[2]
        );
        assert_eq!(keys.verify(&tampered, now()), Err(JwtError::Invalid));
    }

    #[test]
    fn expiry_and_iat_respect_the_skew() {
        let keys = Keys::new(b"secret-secret-secret-secret-1234", &[]);
        let n = now();
        let mut c = claims(n - 7200);
        c.exp = n - 10;
        assert!(
            keys.verify(&keys.sign(&c).unwrap(), n).is_ok(),
            "within skew"
        );
        c.exp = n - 31;
        assert_eq!(
            keys.verify(&keys.sign(&c).unwrap(), n),
            Err(JwtError::Expired)
        );
        let c = claims(n + 60);
        assert_eq!(
            keys.verify(&keys.sign(&c).unwrap(), n),
            Err(JwtError::IssuedInFuture)
        );
    }
}
