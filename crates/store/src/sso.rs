//! Single sign-on's short-lived rows: sign-ins under way (`io_sso_pending`), one-time hand-off
//! codes (`io_sso_codes`) and SAML assertions already used (`io_sso_seen`). Each is taken at most
//! once, by a `DELETE ... RETURNING` (or an `INSERT` that a second use breaks), so two nodes
//! racing for the same row cannot both have it.

use query::{AttrType, Value};

use crate::error::{Result, StoreError};
use crate::platform::{Store, take_text, text};

impl Store {
    /// Records a sign-in under way until `expires_at` (micros).
    pub async fn put_sso_pending(
        &self,
        id: &str,
        provider: &str,
        data: &str,
        expires_at: i64,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (PENDING_ID, PROVIDER, DATA, EXPIRES_AT) VALUES (?, ?, ?, ?)",
            self.t("io_sso_pending")
        );
        self.exec(
            &sql,
            &[text(id), text(provider), text(data), Value::Int(expires_at)],
        )
        .await?;
        Ok(())
    }

    /// Takes a sign-in under way of `provider`: its data, once, if it has not expired by
    /// `now` (micros). Expired rows are deleted on the way.
    pub async fn take_sso_pending(
        &self,
        id: &str,
        provider: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let table = self.t("io_sso_pending");
        let sql = format!(
            "DELETE FROM {table} WHERE PENDING_ID = ? AND PROVIDER = ? RETURNING DATA, EXPIRES_AT"
        );
        let rows = self
            .fetch(
                &sql,
                &[text(id), text(provider)],
                &[AttrType::String, AttrType::Integer],
            )
            .await?;
        self.exec(
            &format!("DELETE FROM {table} WHERE EXPIRES_AT < ?"),
            &[Value::Int(now)],
        )
        .await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let mut it = row.into_iter();
            let data = it.next().and_then(take_text);
            match it.next() {
                Some(Value::Int(exp)) if exp >= now => data,
                _ => None,
            }
        }))
    }

    /// Records a hand-off code (its hash) for a user until `expires_at` (micros).
    pub async fn put_sso_code(
        &self,
        code_hash: &str,
        org_uid: &str,
        user_name: &str,
        expires_at: i64,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (CODE_HASH, ORG_UID, USER_NAME, EXPIRES_AT) VALUES (?, ?, ?, ?)",
            self.t("io_sso_codes")
        );
        self.exec(
            &sql,
            &[
                text(code_hash),
                text(org_uid),
                text(user_name),
                Value::Int(expires_at),
            ],
        )
        .await?;
        Ok(())
    }

    /// Takes a hand-off code: `(org, user)`, once, if it has not expired by `now` (micros).
    pub async fn take_sso_code(
        &self,
        code_hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>> {
        let table = self.t("io_sso_codes");
        let sql = format!(
            "DELETE FROM {table} WHERE CODE_HASH = ? RETURNING ORG_UID, USER_NAME, EXPIRES_AT"
        );
        let rows = self
            .fetch(
                &sql,
                &[text(code_hash)],
                &[AttrType::String, AttrType::String, AttrType::Integer],
            )
            .await?;
        self.exec(
            &format!("DELETE FROM {table} WHERE EXPIRES_AT < ?"),
            &[Value::Int(now)],
        )
        .await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let mut it = row.into_iter();
            let org = it.next().and_then(take_text)?;
            let user = it.next().and_then(take_text)?;
            match it.next() {
                Some(Value::Int(exp)) if exp >= now => Some((org, user)),
                _ => None,
            }
        }))
    }

    /// Marks an ID (a SAML assertion's) used until `expires_at` (micros); false if it was
    /// used before.
    pub async fn first_use(&self, id: &str, expires_at: i64, now: i64) -> Result<bool> {
        let table = self.t("io_sso_seen");
        self.exec(
            &format!("DELETE FROM {table} WHERE EXPIRES_AT < ?"),
            &[Value::Int(now)],
        )
        .await?;
        let sql = format!("INSERT INTO {table} (SEEN_ID, EXPIRES_AT) VALUES (?, ?)");
        match self.exec(&sql, &[text(id), Value::Int(expires_at)]).await {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
