//! OpenID Connect (authorization code flow with state, nonce and PKCE S256) against any
//! provider by issuer URL: its discovery document, its token endpoint and its JWKS.
//!
//! The ID token is checked here, each check with its own refusal: the algorithm (RS256 or
//! ES256 only: `none`, HMAC and everything else are refused before any key is looked at), the
//! key (by `kid` in the JWKS, fetched again once when the `kid` is unknown), the signature, `iss`
//! (the discovery document's issuer, which must be the configured one), `aud` (the client id;
//! `azp` too when there are several audiences), `exp` and `iat` with the JWT skew, and `nonce`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use super::{Identity, PENDING_TTL_SECS, denied, random_token};
use crate::auth::jwt::SKEW_SECS;
use crate::config::{OidcConfig, Secret, sso_url_allowed};
use crate::error::{ApiError, ApiResult};

/// How long a discovery document is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The JWKS is fetched again for an unknown `kid`, but not more often than this.
const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);
/// Provider answers larger than this are refused.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The configured OpenID Connect providers, with what was fetched from them.
pub struct Oidc {
    providers: HashMap<String, Arc<Provider>>,
    http: reqwest::Client,
}

struct Provider {
    cfg: OidcConfig,
    secret: Secret,
    discovery: RwLock<Option<(Instant, Discovery)>>,
    jwks: RwLock<Option<(Instant, JwkSet)>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// What a sign-in under way keeps until the callback (as the pending row's data).
#[derive(Debug, serde::Serialize, Deserialize)]
struct Pending {
    nonce: String,
    verifier: String,
}

impl Oidc {
    /// From validated configuration (client secrets resolved now).
    pub fn new(configs: &[OidcConfig]) -> Result<Oidc, String> {
        let mut providers = HashMap::new();
        for cfg in configs {
            let secret = cfg.client_secret()?;
            providers.insert(
                cfg.provider.clone(),
                Arc::new(Provider {
                    cfg: cfg.clone(),
                    secret,
                    discovery: RwLock::new(None),
                    jwks: RwLock::new(None),
                }),
            );
        }
        let http = reqwest::Client::builder()
            // A provider's answer must not walk us elsewhere (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("OIDC HTTP client: {e}"))?;
        Ok(Oidc { providers, http })
    }

    fn provider(&self, name: &str) -> ApiResult<&Arc<Provider>> {
        self.providers
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("no OpenID Connect provider `{name}`")))
    }

    /// `GET /v1/sso/oidc/<provider>/login`: the provider's authorization URL to redirect to,
    /// with a new state, nonce and PKCE challenge (the state kept for 10 minutes).
    pub async fn login_url(&self, store: &store::Store, name: &str) -> ApiResult<String> {
        let p = self.provider(name)?;
        let d = self.discovery(p).await?;
        let state = random_token(32)?;
        let pending = Pending {
            nonce: random_token(32)?,
            verifier: random_token(32)?,
        };
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
        let expires = chrono::Utc::now().timestamp_micros() + PENDING_TTL_SECS * 1_000_000;
        let data =
            serde_json::to_string(&pending).map_err(|e| ApiError::Internal(e.to_string()))?;
        store
            .put_sso_pending(&state, &pending_key(name), &data, expires)
            .await?;
        let mut url = url::Url::parse(&d.authorization_endpoint)
            .map_err(|e| unavailable(name, format!("bad authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &p.cfg.client_id)
            .append_pair("redirect_uri", &p.cfg.redirect_uri)
            .append_pair("scope", &p.cfg.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// `GET /v1/sso/oidc/<provider>/callback`: the state taken (once), the code exchanged with
    /// the client secret and the PKCE verifier, the ID token checked; who signed in, and the
    /// org and app URL of the provider.
    pub async fn callback(
        &self,
        store: &store::Store,
        name: &str,
        q: &HashMap<String, String>,
    ) -> ApiResult<(Identity, Option<String>, String)> {
        let p = self.provider(name)?;
        if let Some(err) = q.get("error") {
            return Err(denied(format!(
                "the provider answered `{err}` ({})",
                q.get("error_description").map_or("", String::as_str)
            )));
        }
        let state = q
            .get("state")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| denied("state mismatch: the callback has no state"))?;
        let now = chrono::Utc::now();
        let data = store
            .take_sso_pending(state, &pending_key(name), now.timestamp_micros())
            .await?
            .ok_or_else(|| denied("state mismatch: the state is unknown, used or expired"))?;
        let pending: Pending =
            serde_json::from_str(&data).map_err(|e| ApiError::Internal(e.to_string()))?;
        let code = q
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| denied("the callback has no code"))?;
        let d = self.discovery(p).await?;
        let id_token = self.redeem(p, &d, code, &pending.verifier).await?;
        let claims = self
            .verify(p, &d, &id_token, &pending.nonce, now.timestamp())
            .await?;
        let claim = |k: &str| claims.get(k).and_then(Json::as_str).map(str::to_string);
        let user_name = claim(&p.cfg.user_claim)
            .ok_or_else(|| denied(format!("the ID token has no `{}` claim", p.cfg.user_claim)))?;
        if p.cfg.user_claim == "email" && claims.get("email_verified") == Some(&json!(false)) {
            return Err(denied("the provider has not verified the email address"));
        }
        let who = Identity {
            user_name,
            display_name: claim(&p.cfg.display_name_attribute),
            email_address: claim(&p.cfg.email_attribute),
        };
        Ok((who, p.cfg.org_uid.clone(), p.cfg.app_url.clone()))
    }

    /// The discovery document (cached), checked: its issuer is the configured one, and its
    /// endpoints are https (or http on loopback).
    async fn discovery(&self, p: &Provider) -> ApiResult<Discovery> {
        if let Some((at, d)) = p.discovery.read().await.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(d.clone());
        }
        let name = &p.cfg.provider;
        let issuer = p.cfg.issuer();
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let d: Discovery = serde_json::from_value(self.get_json(name, &url).await?)
            .map_err(|e| unavailable(name, format!("its discovery document is invalid: {e}")))?;
        if d.issuer != issuer {
            return Err(unavailable(
                name,
                format!(
                    "its discovery document names issuer {:?}, not {issuer:?}",
                    d.issuer
                ),
            ));
        }
        for u in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
            if !sso_url_allowed(u) {
                return Err(unavailable(
                    name,
                    format!("its discovery document has a non-https endpoint {u:?}"),
                ));
            }
        }
        *p.discovery.write().await = Some((Instant::now(), d.clone()));
        Ok(d)
    }

    /// The token endpoint's `id_token` for a code (client_secret_basic, PKCE verifier).
    async fn redeem(
        &self,
        p: &Provider,
        d: &Discovery,
        code: &str,
        verifier: &str,
    ) -> ApiResult<String> {
        let name = &p.cfg.provider;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &p.cfg.redirect_uri)
            .append_pair("client_id", &p.cfg.client_id)
            .append_pair("code_verifier", verifier)
            .finish();
        // RFC 6749 2.3.1: id and secret form-encoded, then as HTTP Basic.
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&p.cfg.client_id),
            enc(p.secret.expose())
        ));
        let r = self
            .http
            .post(&d.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("authorization", format!("Basic {basic}"))
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(name, format!("its token endpoint did not answer: {e}")))?;
        let status = r.status();
        let answer = read_json(r)
            .await
            .map_err(|e| unavailable(name, format!("its token endpoint's answer: {e}")))?;
        if !status.is_success() {
            let err = answer.get("error").and_then(Json::as_str).unwrap_or("?");
            return Err(denied(format!(
                "the provider refused the code (`{err}`): used before, expired, or the PKCE verifier does not match"
            )));
        }
        answer
            .get("id_token")
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| denied("the provider's token answer has no id_token"))
    }

    /// The ID token's claims, once every check passed.
    async fn verify(
        &self,
        p: &Provider,
        d: &Discovery,
        token: &str,
        nonce: &str,
        now: i64,
    ) -> ApiResult<serde_json::Map<String, Json>> {
        let header = token_header(token)?;
        let alg_name = header.get("alg").and_then(Json::as_str).unwrap_or("");
        let alg = match alg_name {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err(denied(format!(
                    "the ID token's algorithm `{other}` is not allowed (RS256 or ES256 only)"
                )));
            }
        };
        let kid = header.get("kid").and_then(Json::as_str);
        let jwk = self.key(p, d, kid, alg).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| denied(format!("the provider's key is unusable: {e}")))?;
        // The signature only; every claim is checked below, each with its own answer.
        let mut v = Validation::new(alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Json>>(token, &key, &v)
            .map_err(|_| denied("the ID token's signature does not verify"))?
            .claims;
        let num = |k: &str| claims.get(k).and_then(Json::as_i64);
        let iss = claims.get("iss").and_then(Json::as_str).unwrap_or("");
        if iss != d.issuer {
            return Err(denied(format!(
                "the ID token's issuer {iss:?} is not {:?}",
                d.issuer
            )));
        }
        let client = &p.cfg.client_id;
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Json::String(a)) => vec![a.as_str()],
            Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
            _ => Vec::new(),
        };
        if !auds.contains(&client.as_str()) {
            return Err(denied(format!(
                "the ID token's audience {auds:?} does not include this client"
            )));
        }
        if let Some(azp) = claims.get("azp").and_then(Json::as_str)
            && azp != client
        {
            return Err(denied(format!(
                "the ID token's authorized party {azp:?} is not this client"
            )));
        }
        match num("exp") {
            Some(exp) if exp + SKEW_SECS >= now => {}
            Some(_) => return Err(denied("the ID token has expired (exp)")),
            None => return Err(denied("the ID token has no expiry (exp)")),
        }
        match num("iat") {
            Some(iat) if iat <= now + SKEW_SECS => {}
            Some(_) => return Err(denied("the ID token was issued in the future (iat)")),
            None => return Err(denied("the ID token has no issue time (iat)")),
        }
        let got = claims.get("nonce").and_then(Json::as_str).unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_bytes(),
            nonce.as_bytes(),
        )) {
            return Err(denied("the ID token's nonce does not match this sign-in"));
        }
        Ok(claims)
    }

    /// The JWKS key for `kid` and `alg`, fetching the JWKS again (at most every few seconds)
    /// when the `kid` is not in the copy held: providers rotate keys.
    async fn key(
        &self,
        p: &Provider,
        d: &Discovery,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> ApiResult<Jwk> {
        let pick = |set: &JwkSet| -> Option<Jwk> {
            let fits = |k: &&Jwk| {
                let kind_ok = matches!(
                    (&k.algorithm, alg),
                    (AlgorithmParameters::RSA(_), Algorithm::RS256)
                        | (AlgorithmParameters::EllipticCurve(_), Algorithm::ES256)
                );
                let alg_ok = k
                    .common
                    .key_algorithm
                    .is_none_or(|a| format!("{a:?}") == format!("{alg:?}"));
                kind_ok && alg_ok
            };
            match kid {
                Some(kid) => set
                    .keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .filter(fits)
                    .cloned(),
                // No kid: only a JWKS with exactly one key of the kind is unambiguous.
                None => {
                    let mut it = set.keys.iter().filter(fits);
                    match (it.next(), it.next()) {
                        (Some(k), None) => Some(k.clone()),
                        _ => None,
                    }
                }
            }
        };
        let held = p.jwks.read().await.clone();
        if let Some((_, set)) = &held
            && let Some(k) = pick(set)
        {
            return Ok(k);
        }
        let fresh = held
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < JWKS_MIN_REFETCH);
        if !fresh {
            let name = &p.cfg.provider;
            let set: JwkSet = serde_json::from_value(self.get_json(name, &d.jwks_uri).await?)
                .map_err(|e| unavailable(name, format!("its JWKS is invalid: {e}")))?;
            let found = pick(&set);
            *p.jwks.write().await = Some((Instant::now(), set));
            if let Some(k) = found {
                return Ok(k);
            }
        }
        Err(denied(format!(
            "the ID token's key {:?} ({alg:?}) is not in the provider's JWKS (unknown kid)",
            kid.unwrap_or("")
        )))
    }

    async fn get_json(&self, name: &str, url: &str) -> ApiResult<Json> {
        let r = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(name, format!("{url} did not answer: {e}")))?;
        if !r.status().is_success() {
            return Err(unavailable(name, format!("{url} answered {}", r.status())));
        }
        read_json(r)
            .await
            .map_err(|e| unavailable(name, format!("{url}: {e}")))
    }
}

/// The pending row's provider column: OIDC and SAML providers may share a name.
fn pending_key(name: &str) -> String {
    format!("oidc:{name}")
}

/// The provider could not be used: a 502 that says so (never a session).
fn unavailable(name: &str, why: String) -> ApiError {
    tracing::warn!(provider = ?name, reason = ?why, "OIDC provider unavailable");
    ApiError::BadGateway(format!(
        "the identity provider `{name}` is unavailable: {why}"
    ))
}

async fn read_json(r: reqwest::Response) -> Result<Json, String> {
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_ANSWER_BYTES {
        return Err("the answer is too large".into());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
}

/// A compact JWS's header, parsed without trusting anything in it yet.
fn token_header(token: &str) -> ApiResult<serde_json::Map<String, Json>> {
    let bad = || denied("the ID token is not a signed JWT");
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}
