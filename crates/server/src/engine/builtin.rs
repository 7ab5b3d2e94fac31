//! Built-in hooks of the platform's own datasources: what writing them implies beyond the
//! row. They sit in the same chain as script hooks (before and after the writes).

use query::{Datasource, RowOp, Value, WriteRow};
use serde_json::Value as Json;

use super::exec::Exec;
use super::{Ctx, Result};

pub use store::PLATFORM_APP;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Passwords are hashed before writing; a disabled user, a changed password or a deleted
    /// user ends that user's sessions.
    IoUsers,
    /// Changed roles take effect at once on this node.
    IoUserRoles,
    /// `IoUserRoles` within the caller's org: an insert that names no org is in it, and
    /// updates and deletes reach only its rows (the org is not part of the key here).
    IoUserRolesEdit,
    /// An inserted key gets a secret made by the server (its hash stored, the secret returned
    /// once, in the insert's answer); a revoked or deleted key ends the sessions made with it.
    IoApiKeys,
}

impl Builtin {
    pub fn of(ds: &Datasource) -> Option<Builtin> {
        if ds.app_uid != PLATFORM_APP {
            return None;
        }
        match ds.name.as_str() {
            "IoUsers" => Some(Builtin::IoUsers),
            "IoUserRoles" => Some(Builtin::IoUserRoles),
            "IoUserRolesEdit" => Some(Builtin::IoUserRolesEdit),
            "IoApiKeys" => Some(Builtin::IoApiKeys),
            _ => None,
        }
    }

    /// Before the writes: clear-text `password` values become Argon2id hashes; new API keys
    /// get their secrets; inserts that name no org are in the caller's.
    pub(crate) async fn before(self, ctx: &mut Ctx<'_>, rows: &mut [WriteRow]) -> Result<()> {
        match self {
            Builtin::IoUsers => users_before(ctx, rows).await,
            Builtin::IoUserRoles => Ok(()),
            Builtin::IoUserRolesEdit => {
                for row in rows.iter_mut() {
                    match row.op {
                        RowOp::Insert => fill_org(ctx, row),
                        _ => row
                            .key
                            .push(("orgUid".into(), Value::Text(ctx.who.org_uid.clone()))),
                    }
                }
                Ok(())
            }
            Builtin::IoApiKeys => api_keys_before(ctx, rows),
        }
    }

    /// After one row was written (`stored` as it now stands, and as the answer will show it),
    /// in the same transaction.
    pub(crate) async fn after<E: Exec>(
        self,
        exec: &mut E,
        ctx: &mut Ctx<'_>,
        row: &WriteRow,
        stored: &mut Json,
    ) -> Result<()> {
        let user_of = |j: &Json| {
            let get = |k| {
                j.get(k)
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (get("orgUid"), get("userName"))
        };
        match self {
            Builtin::IoUsers => {
                let disabled = stored.get("enabledFlag").and_then(Json::as_str) == Some("N");
                let new_password = row.values.iter().any(|(c, _)| c == "password");
                if row.op != RowOp::Insert && (disabled || new_password || row.op == RowOp::Delete)
                {
                    let (org, user) = user_of(stored);
                    let (sql, params) = ctx.engine.store.end_sessions_statement(&org, &user);
                    exec.execute(&sql, &params).await?;
                    ctx.touched.push((org, user));
                }
            }
            Builtin::IoUserRoles | Builtin::IoUserRolesEdit => ctx.touched.push(user_of(stored)),
            Builtin::IoApiKeys => {
                if row.op == RowOp::Insert {
                    // The secret made for this row, shown in this answer and never again.
                    let hash = row.values.iter().find_map(|(c, v)| match (c.as_str(), v) {
                        ("secretHash", Value::Text(h)) => Some(h.clone()),
                        _ => None,
                    });
                    let pos = ctx
                        .api_secrets
                        .iter()
                        .position(|(h, _)| Some(h) == hash.as_ref());
                    if let (Some(pos), Json::Object(m)) = (pos, &mut *stored) {
                        let (_, secret) = ctx.api_secrets.swap_remove(pos);
                        m.insert("secret".into(), Json::String(secret));
                    }
                } else if row.op == RowOp::Delete
                    || stored.get("revokedFlag").and_then(Json::as_str) == Some("Y")
                {
                    let key = stored
                        .get("apiKey")
                        .and_then(Json::as_str)
                        .unwrap_or_default();
                    let (sql, params) = ctx.engine.store.end_key_sessions_statement(key);
                    exec.execute(&sql, &params).await?;
                    ctx.touched.push(user_of(stored));
                }
            }
        }
        Ok(())
    }
}

/// `IoUsers` rows before they are written: a usable `userName`, the caller's org when the
/// insert names none, and passwords hashed.
async fn users_before(ctx: &Ctx<'_>, rows: &mut [WriteRow]) -> Result<()> {
    for row in rows.iter_mut() {
        if row.op == RowOp::Insert {
            fill_org(ctx, row);
        }
        for (code, v) in row.values.iter() {
            // A name the `Token` header cannot carry would make a user who can never log in.
            if code == "userName"
                && let Value::Text(name) = v
                && let Err(reason) = store::check_user_name(name)
            {
                return Err(super::Error::Invalid(format!(
                    "IoUsers: `userName`: {reason}"
                )));
            }
        }
        for (code, v) in row.values.iter_mut() {
            if code == "password"
                && let Value::Text(clear) = v
            {
                let hash = ctx
                    .engine
                    .hasher
                    .hash(std::mem::take(clear))
                    .await
                    .map_err(|e| super::Error::Store(store::StoreError::Other(e.to_string())))?;
                *v = Value::Text(hash);
            }
        }
    }
    Ok(())
}

/// `IoApiKeys` rows before they are written: an insert gets a new secret (its hash written,
/// the secret kept in `ctx` for the answer) and the caller's org when it names none; a client
/// may neither set a hash nor take a revocation back.
fn api_keys_before(ctx: &mut Ctx<'_>, rows: &mut [WriteRow]) -> Result<()> {
    let invalid = |m: &str| Err(super::Error::Invalid(format!("IoApiKeys: {m}")));
    for row in rows.iter_mut() {
        if row.values.iter().any(|(c, _)| c == "secretHash") {
            return invalid("`secretHash` is made by the server");
        }
        if row
            .values
            .iter()
            .any(|(c, v)| c == "revokedFlag" && *v == Value::Text("N".into()))
            && row.op != RowOp::Insert
        {
            return invalid("a revoked key stays revoked; issue a new one");
        }
        if row.op != RowOp::Insert {
            continue;
        }
        fill_org(ctx, row);
        let (secret, hash) = crate::auth::apikey::new_secret()
            .map_err(|e| super::Error::Store(store::StoreError::Other(e)))?;
        row.values
            .push(("secretHash".into(), Value::Text(hash.clone())));
        ctx.api_secrets.push((hash, secret));
    }
    Ok(())
}

/// An inserted platform row that names no org is in the caller's.
fn fill_org(ctx: &Ctx<'_>, row: &mut WriteRow) {
    let given = row
        .values
        .iter()
        .any(|(c, v)| c == "orgUid" && *v != Value::Null);
    if !given {
        row.values.retain(|(c, _)| c != "orgUid");
        row.values
            .push(("orgUid".into(), Value::Text(ctx.who.org_uid.clone())));
    }
}
