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
}

impl Builtin {
    pub fn of(ds: &Datasource) -> Option<Builtin> {
        if ds.app_uid != PLATFORM_APP {
            return None;
        }
        match ds.name.as_str() {
            "IoUsers" => Some(Builtin::IoUsers),
            "IoUserRoles" | "IoUserRolesEdit" => Some(Builtin::IoUserRoles),
            _ => None,
        }
    }

    /// Before the writes: clear-text `password` values become Argon2id hashes.
    pub(crate) async fn before(self, ctx: &Ctx<'_>, rows: &mut [WriteRow]) -> Result<()> {
        if self != Builtin::IoUsers {
            return Ok(());
        }
        for row in rows.iter_mut() {
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
                        .map_err(|e| {
                            super::Error::Store(store::StoreError::Other(e.to_string()))
                        })?;
                    *v = Value::Text(hash);
                }
            }
        }
        Ok(())
    }

    /// After one row was written (`stored` as it now stands), in the same transaction.
    pub(crate) async fn after<E: Exec>(
        self,
        exec: &mut E,
        ctx: &mut Ctx<'_>,
        row: &WriteRow,
        stored: &Json,
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
            Builtin::IoUserRoles => ctx.touched.push(user_of(stored)),
        }
        Ok(())
    }
}
