//! API keys (`io_api_keys`): issued for a user, stored with the hash of their secret, revocable.
//! The secret itself never reaches this crate; `server::auth::apikey` makes and hashes it.

use chrono::Utc;
use query::{AttrType, Value};

use crate::error::{Result, StoreError};
use crate::platform::{Store, opt_text, take_text, text};

/// An API key as listed: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub api_key: String,
    pub org_uid: String,
    pub user_name: String,
    pub description: Option<String>,
    pub revoked: bool,
    pub created_by: Option<String>,
    /// When it was issued, as the WHO column shows it (`YYYY-MM-DDTHH:MM:SS.ffffffZ`).
    pub creation_date: Option<String>,
}

/// A key to store: the secret only as its hash.
#[derive(Debug, Clone)]
pub struct NewApiKey<'a> {
    pub org_uid: &'a str,
    pub api_key: &'a str,
    pub user_name: &'a str,
    pub description: Option<&'a str>,
    pub secret_hash: &'a str,
    pub created_by: &'a str,
}

const KEY_COLUMNS: &str =
    "API_KEY, ORG_UID, USER_NAME, DESCRIPTION, REVOKED_FLAG, CREATED_BY, CREATION_DATE";
const KEY_TYPES: [AttrType; 7] = [
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::Yn,
    AttrType::String,
    AttrType::DateTime,
];

fn key_from_row(it: &mut impl Iterator<Item = Value>) -> ApiKey {
    let mut next = || it.next().unwrap_or(Value::Null);
    ApiKey {
        api_key: take_text(next()).unwrap_or_default(),
        org_uid: take_text(next()).unwrap_or_default(),
        user_name: take_text(next()).unwrap_or_default(),
        description: take_text(next()),
        revoked: take_text(next()).as_deref() != Some("N"),
        created_by: take_text(next()),
        creation_date: match next() {
            Value::Null => None,
            v => v.to_json().as_str().map(str::to_string),
        },
    }
}

impl Store {
    /// Stores a new key for an existing user of the org.
    pub async fn create_api_key(&self, k: &NewApiKey<'_>) -> Result<()> {
        let now = self.who_now(Utc::now());
        let sql = format!(
            "INSERT INTO {} (API_KEY, ORG_UID, USER_NAME, DESCRIPTION, SECRET_HASH, REVOKED_FLAG, \
             CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) \
             VALUES (?, ?, ?, ?, ?, 'N', ?, ?, ?, ?)",
            self.t("io_api_keys")
        );
        self.exec(
            &sql,
            &[
                text(k.api_key),
                text(k.org_uid),
                text(k.user_name),
                opt_text(k.description),
                text(k.secret_hash),
                text(k.created_by),
                now.clone(),
                text(k.created_by),
                now,
            ],
        )
        .await
        .map_err(|e| match e {
            StoreError::Constraint(_) => {
                StoreError::Invalid(format!("no user `{}` in org `{}`", k.user_name, k.org_uid))
            }
            e => e,
        })?;
        Ok(())
    }

    /// The key and the hash of its secret, revoked or not.
    pub async fn find_api_key(
        &self,
        org_uid: &str,
        api_key: &str,
    ) -> Result<Option<(ApiKey, String)>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS}, SECRET_HASH FROM {} WHERE ORG_UID = ? AND API_KEY = ?",
            self.t("io_api_keys")
        );
        let mut types = KEY_TYPES.to_vec();
        types.push(AttrType::String);
        let rows = self
            .fetch(&sql, &[text(org_uid), text(api_key)], &types)
            .await?;
        Ok(rows.into_iter().next().map(|row| {
            let mut it = row.into_iter();
            let key = key_from_row(&mut it);
            (key, it.next().and_then(take_text).unwrap_or_default())
        }))
    }

    /// The org's keys (of one user, when given), oldest first.
    pub async fn list_api_keys(&self, org_uid: &str, user: Option<&str>) -> Result<Vec<ApiKey>> {
        let mut sql = format!(
            "SELECT {KEY_COLUMNS} FROM {} WHERE ORG_UID = ?",
            self.t("io_api_keys")
        );
        let mut params = vec![text(org_uid)];
        if let Some(u) = user {
            sql.push_str(" AND USER_NAME = ?");
            params.push(text(u));
        }
        sql.push_str(" ORDER BY CREATION_DATE, API_KEY");
        let rows = self.fetch(&sql, &params, &KEY_TYPES).await?;
        Ok(rows
            .into_iter()
            .map(|r| key_from_row(&mut r.into_iter()))
            .collect())
    }

    /// Marks a key revoked and ends the sessions made with it. False if the org has no such key.
    /// Revoking is final: no path sets the flag back.
    pub async fn revoke_api_key(&self, org_uid: &str, api_key: &str, by: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET REVOKED_FLAG = 'Y', LAST_UPDATED_BY = ?, LAST_UPDATE_DATE = ? \
             WHERE ORG_UID = ? AND API_KEY = ?",
            self.t("io_api_keys")
        );
        let found = self
            .exec(
                &sql,
                &[
                    text(by),
                    self.who_now(Utc::now()),
                    text(org_uid),
                    text(api_key),
                ],
            )
            .await?
            > 0;
        let (sql, params) = self.end_key_sessions_statement(api_key);
        self.db.execute(&sql, &params).await?;
        Ok(found)
    }

    /// The statement that ends the sessions made with a key, for a caller to run inside its own
    /// transaction (the engine, when a post revokes or deletes an `IoApiKeys` row).
    pub fn end_key_sessions_statement(&self, api_key: &str) -> (String, Vec<Value>) {
        let sql = format!("DELETE FROM {} WHERE API_KEY = ?", self.t("io_sessions"));
        (
            crate::db::portable(self.dialect(), &sql).into_owned(),
            vec![text(api_key)],
        )
    }
}
