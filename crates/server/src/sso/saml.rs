//! SAML 2.0 service provider: the redirect binding out (`/login`), the POST binding in (`/acs`),
//! and our metadata (`/metadata`). The response's checks are in `saml_xml.rs` (no I/O); this
//! file adds what needs the database, in this order after them: the assertion ID is used
//! once (`io_sso_seen`), then `InResponseTo` must be an AuthnRequest of ours from the last 10
//! minutes, taken once (`io_sso_pending`), whose RelayState the form must carry back.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use xml_sec::policy::CompiledPolicies;
use xml_sec::xmldsig::VerificationKey;

use super::saml_xml::{self, Expected, Refusal};
use super::{Identity, PENDING_TTL_SECS, denied, random_token};
use crate::auth::jwt::SKEW_SECS;
use crate::config::{SamlConfig, sso_url_allowed};
use crate::error::{ApiError, ApiResult};

/// The configured SAML identity providers.
pub struct Saml {
    providers: HashMap<String, Arc<Provider>>,
    policies: CompiledPolicies,
}

struct Provider {
    cfg: SamlConfig,
    sso_url: String,
    /// From the metadata; the assertion's Issuer must then be it.
    idp_entity_id: Option<String>,
    keys: Vec<VerificationKey>,
}

impl Saml {
    /// From validated configuration: the metadata or certificate files are read now, so a
    /// bad one stops the server at start.
    pub fn new(configs: &[SamlConfig]) -> Result<Saml, String> {
        let mut providers = HashMap::new();
        for cfg in configs {
            let p = &cfg.provider;
            let read = |path: &std::path::Path| {
                std::fs::read(path)
                    .map_err(|e| format!("[[sso.saml]] `{p}`: {}: {e}", path.display()))
            };
            let (sso_url, idp_entity_id, certs) = match (
                &cfg.idp_metadata_file,
                &cfg.idp_sso_url,
                &cfg.idp_certificate_file,
            ) {
                (Some(file), _, _) => {
                    let bytes = read(file)?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| format!("[[sso.saml]] `{p}`: the metadata is not UTF-8"))?;
                    let m = saml_xml::parse_idp_metadata(&text)
                        .map_err(|e| format!("[[sso.saml]] `{p}`: idp_metadata_file: {e}"))?;
                    (m.sso_url, Some(m.entity_id), m.certificates)
                }
                (None, Some(url), Some(file)) => {
                    let der = saml_xml::certificate_der(&read(file)?)
                        .map_err(|e| format!("[[sso.saml]] `{p}`: idp_certificate_file: {e}"))?;
                    (url.clone(), None, vec![der])
                }
                _ => {
                    return Err(format!(
                        "[[sso.saml]] `{p}`: give idp_metadata_file, or idp_sso_url and idp_certificate_file"
                    ));
                }
            };
            if !sso_url_allowed(&sso_url) {
                return Err(format!(
                    "[[sso.saml]] `{p}`: the IdP sign-in URL must be https (http only on a loopback address)"
                ));
            }
            let keys = certs
                .iter()
                .map(|der| saml_xml::key_from_certificate(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("[[sso.saml]] `{p}`: the IdP certificate: {e}"))?;
            providers.insert(
                p.clone(),
                Arc::new(Provider {
                    cfg: cfg.clone(),
                    sso_url,
                    idp_entity_id,
                    keys,
                }),
            );
        }
        Ok(Saml {
            providers,
            policies: saml_xml::policies()?,
        })
    }

    fn provider(&self, name: &str) -> ApiResult<&Arc<Provider>> {
        self.providers
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("no SAML provider `{name}`")))
    }

    /// `GET /v1/sso/saml/<provider>/login`: the IdP's sign-in URL with a new AuthnRequest
    /// (its ID kept for 10 minutes, with the RelayState) by the redirect binding.
    pub async fn login_url(&self, store: &store::Store, name: &str) -> ApiResult<String> {
        let p = self.provider(name)?;
        // An XML ID is an NCName: it may not start with a digit or '-'.
        let id = format!("_{}", random_token(24)?);
        let relay_state = random_token(24)?;
        let now = chrono::Utc::now();
        let request = saml_xml::authn_request(
            &id,
            &now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            &p.sso_url,
            &p.cfg.acs_url,
            &p.cfg.sp_entity_id,
        );
        let expires = now.timestamp_micros() + PENDING_TTL_SECS * 1_000_000;
        store
            .put_sso_pending(&id, &pending_key(name), &relay_state, expires)
            .await?;
        let query = saml_xml::redirect_query(&request, &relay_state).map_err(ApiError::Internal)?;
        let sep = if p.sso_url.contains('?') { '&' } else { '?' };
        Ok(format!("{}{sep}{query}", p.sso_url))
    }

    /// `GET /v1/sso/saml/<provider>/metadata`: our SP metadata.
    pub fn metadata(&self, name: &str) -> ApiResult<String> {
        let p = self.provider(name)?;
        Ok(saml_xml::sp_metadata(&p.cfg.sp_entity_id, &p.cfg.acs_url))
    }

    /// `POST /v1/sso/saml/<provider>/acs`: the form's response checked; who signed in, and the
    /// org and app URL of the provider.
    pub async fn acs(
        &self,
        store: &store::Store,
        name: &str,
        form: &HashMap<String, String>,
    ) -> ApiResult<(Identity, Option<String>, String)> {
        let p = self.provider(name)?;
        let b64 = form
            .get("SAMLResponse")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(name, "the form has no SAMLResponse".into()))?;
        let xml = saml_xml::decode_response(b64).map_err(|r| refused(name, r))?;
        let now = chrono::Utc::now();
        let exp = Expected {
            acs_url: &p.cfg.acs_url,
            sp_entity_id: &p.cfg.sp_entity_id,
            idp_entity_id: p.idp_entity_id.as_deref(),
            now: now.timestamp(),
            skew_secs: SKEW_SECS,
            name_attribute: p.cfg.name_attribute.as_deref(),
            email_attribute: p.cfg.email_attribute.as_deref(),
            display_name_attribute: p.cfg.display_name_attribute.as_deref(),
        };
        let v = saml_xml::check_response(&xml, &p.keys, &self.policies, &exp)
            .map_err(|r| refused(name, r))?;
        // The assertion ID once (kept until the assertion could no longer be accepted anyway).
        let seen = hex::encode(Sha256::digest(format!("saml:{name}:{}", v.assertion_id)));
        let first = store
            .first_use(&seen, v.usable_until * 1_000_000, now.timestamp_micros())
            .await?;
        if !first {
            return Err(denied(format!(
                "the assertion ID {:?} was used before (replay)",
                v.assertion_id
            )));
        }
        let relay = if v.in_response_to.len() <= 128 {
            store
                .take_sso_pending(
                    &v.in_response_to,
                    &pending_key(name),
                    now.timestamp_micros(),
                )
                .await?
        } else {
            None
        };
        let Some(relay) = relay else {
            return Err(denied(
                "InResponseTo is not a request of ours from the last 10 minutes (unknown, used or expired)",
            ));
        };
        let sent = form.get("RelayState").map_or("", String::as_str);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            sent.as_bytes(),
            relay.as_bytes(),
        )) {
            return Err(denied("the RelayState does not match the request"));
        }
        let who = Identity {
            user_name: v.user_name,
            display_name: v.display_name,
            email_address: v.email_address,
        };
        Ok((who, p.cfg.org_uid.clone(), p.cfg.app_url.clone()))
    }
}

/// The pending row's provider column: OIDC and SAML providers may share a name.
fn pending_key(name: &str) -> String {
    format!("saml:{name}")
}

fn malformed(name: &str, why: String) -> ApiError {
    tracing::warn!(provider = ?name, reason = ?why, "SAML response refused as malformed");
    ApiError::BadRequest(format!("Invalid SAML response: {why}"))
}

fn refused(name: &str, r: Refusal) -> ApiError {
    match r {
        Refusal::Malformed(m) => malformed(name, m),
        Refusal::Denied(m) => denied(m),
    }
}
