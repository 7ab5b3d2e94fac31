//! The platform's own tables: orgs, apps, users, roles, sessions, login failures.
//!
//! SQL here is written once with `?` placeholders and table names resolved by [`Store::t`].

use chrono::{DateTime, NaiveDate, Utc};
use query::{AttrType, Dialect, Value};

use crate::db::{Db, portable};
use crate::error::{Result, StoreError};

/// The store: a pool plus the platform's queries.
#[derive(Clone, Debug)]
pub struct Store {
    pub db: Db,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub user_id: String,
    pub org_uid: String,
    pub user_name: String,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
    pub password_hash: Option<String>,
    pub start_date: Option<NaiveDate>,
    pub end_date: Option<NaiveDate>,
    pub enabled: bool,
    pub service_account: bool,
}

impl User {
    /// Enabled and inside its date range on `today`.
    pub fn may_log_in(&self, today: NaiveDate) -> bool {
        self.enabled
            && self.start_date.is_none_or(|d| d <= today)
            && self.end_date.is_none_or(|d| today <= d)
    }
}

/// A new user, for the CLI and first start.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub org_uid: &'a str,
    pub user_name: &'a str,
    pub display_name: Option<&'a str>,
    pub email_address: Option<&'a str>,
    pub password_hash: &'a str,
    pub created_by: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub csrf: String,
    pub org_uid: String,
    pub user_name: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// The API key the session was made with (`None`: a password or SSO login); revoking the
    /// key ends the session.
    pub api_key: Option<String>,
}

/// A session joined with the state of its user, as the request guard needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSession {
    pub session: Session,
    pub user_may_log_in: bool,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
}

/// Why `name` cannot be a user name, if it cannot: empty, longer than 256 characters, or
/// holding a `:` (the `Token` header splits `name:password` at the first one, so such a user
/// could never log in) or a control character (a newline would forge lines in logs). Every path
/// that creates users calls this: [`Store::create_user`], the CLI, and `IoUsers` inserts.
pub fn check_user_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("a user name must not be empty".into());
    }
    if name.chars().count() > 256 {
        return Err("a user name must be at most 256 characters".into());
    }
    if name.contains(':') {
        return Err("a user name must not contain `:` (it separates name and password)".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a user name must not contain control characters".into());
    }
    Ok(())
}

/// The answer to [`Store::reserve_login_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The attempt is counted; check the password.
    Reserved,
    /// A key holds `max` failures; `newest` is the newest attempt under it (micros).
    Refused { newest: i64, key: String },
    /// Attempts still being checked fill a key's remaining places; try again shortly.
    Busy,
}

/// The PostgreSQL advisory lock that serialises login reservations ("cloudio" + 1).
const LOGIN_ATTEMPT_LOCK: i64 = 0x636c_6f75_6469_6f01;

pub(crate) fn text(v: &str) -> Value {
    Value::Text(v.to_string())
}

pub(crate) fn opt_text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, text)
}

pub(crate) fn take_text(v: Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s),
        _ => None,
    }
}

fn take_int(v: Value) -> i64 {
    match v {
        Value::Int(i) => i,
        _ => 0,
    }
}

fn take_date(v: Value) -> Option<NaiveDate> {
    match v {
        Value::Date(d) => Some(d),
        _ => None,
    }
}

const USER_COLUMNS: &str = "USER_ID, ORG_UID, USER_NAME, DISPLAY_NAME, EMAIL_ADDRESS, \
     PASSWORD_HASH, START_DATE, END_DATE, ENABLED_FLAG, SERVICE_ACCOUNT_FLAG";
const USER_TYPES: [AttrType; 10] = [
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::Date,
    AttrType::Date,
    AttrType::Yn,
    AttrType::Yn,
];

fn user_from_row(row: Vec<Value>) -> User {
    let mut it = row.into_iter();
    let mut next = || it.next().unwrap_or(Value::Null);
    User {
        user_id: take_text(next()).unwrap_or_default(),
        org_uid: take_text(next()).unwrap_or_default(),
        user_name: take_text(next()).unwrap_or_default(),
        display_name: take_text(next()),
        email_address: take_text(next()),
        password_hash: take_text(next()),
        start_date: take_date(next()),
        end_date: take_date(next()),
        enabled: take_text(next()).as_deref() == Some("Y"),
        service_account: take_text(next()).as_deref() == Some("Y"),
    }
}

const SESSION_COLUMNS: &str =
    "s.SESSION_ID, s.CSRF, s.ORG_UID, s.USER_NAME, s.CREATED_AT, s.LAST_SEEN_AT, s.API_KEY";
const SESSION_TYPES: [AttrType; 7] = [
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::String,
    AttrType::Integer,
    AttrType::Integer,
    AttrType::String,
];

fn session_from_row(it: &mut impl Iterator<Item = Value>) -> Session {
    let mut next = || it.next().unwrap_or(Value::Null);
    Session {
        session_id: take_text(next()).unwrap_or_default(),
        csrf: take_text(next()).unwrap_or_default(),
        org_uid: take_text(next()).unwrap_or_default(),
        user_name: take_text(next()).unwrap_or_default(),
        created_at: take_int(next()),
        last_seen_at: take_int(next()),
        api_key: take_text(next()),
    }
}

impl Store {
    pub fn new(db: Db) -> Self {
        Store { db }
    }

    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// A platform table's name as SQL: `cloudio.io_users` on PostgreSQL, `io_users` on SQLite
    /// (the platform's database is the connection's `main`).
    pub fn t(&self, table: &str) -> String {
        match self.dialect() {
            Dialect::Postgres | Dialect::Mysql => {
                format!("{}.{table}", self.db.platform_schema())
            }
            Dialect::Sqlite => table.to_string(),
        }
    }

    /// The WHO date value for `now` in this dialect's storage.
    pub fn who_now(&self, now: DateTime<Utc>) -> Value {
        Value::DateTime(query::value::truncate_micros(now).unwrap_or(now))
    }

    pub(crate) async fn exec(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.db
            .execute(&portable(self.dialect(), sql), params)
            .await
    }

    pub(crate) async fn fetch(
        &self,
        sql: &str,
        params: &[Value],
        types: &[AttrType],
    ) -> Result<Vec<Vec<Value>>> {
        self.db
            .fetch_all(&portable(self.dialect(), sql), params, types)
            .await
    }

    /// Inserts org `org_uid` and app `app_uid` (in that org) if missing.
    pub async fn ensure_org_and_app(
        &self,
        org_uid: &str,
        app_uid: &str,
        app_name: &str,
    ) -> Result<()> {
        let now = self.who_now(Utc::now());
        let sql = format!(
            "INSERT INTO {} (ORG_UID, NAME, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) \
             VALUES (?, ?, 'system', ?, 'system', ?) ON CONFLICT DO NOTHING",
            self.t("io_orgs")
        );
        self.exec(
            &sql,
            &[text(org_uid), text(org_uid), now.clone(), now.clone()],
        )
        .await?;
        let sql = format!(
            "INSERT INTO {} (APP_UID, ORG_UID, NAME, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) \
             VALUES (?, ?, ?, 'system', ?, 'system', ?) ON CONFLICT DO NOTHING",
            self.t("io_apps")
        );
        self.exec(
            &sql,
            &[
                text(app_uid),
                text(org_uid),
                text(app_name),
                now.clone(),
                now,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn ensure_role(&self, app_uid: &str, role_uid: &str, name: &str) -> Result<()> {
        let now = self.who_now(Utc::now());
        let sql = format!(
            "INSERT INTO {} (APP_UID, ROLE_UID, NAME, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) \
             VALUES (?, ?, ?, 'system', ?, 'system', ?) ON CONFLICT DO NOTHING",
            self.t("io_roles")
        );
        self.exec(
            &sql,
            &[text(app_uid), text(role_uid), text(name), now.clone(), now],
        )
        .await?;
        Ok(())
    }

    pub async fn count_users(&self) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {}", self.t("io_users"));
        let rows = self.fetch(&sql, &[], &[AttrType::Integer]).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .map_or(0, take_int))
    }

    pub async fn create_user(&self, u: &NewUser<'_>) -> Result<String> {
        check_user_name(u.user_name).map_err(StoreError::Invalid)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = self.who_now(Utc::now());
        let sql = format!(
            "INSERT INTO {} (USER_ID, ORG_UID, USER_NAME, DISPLAY_NAME, EMAIL_ADDRESS, PASSWORD_HASH, \
             START_DATE, ENABLED_FLAG, SERVICE_ACCOUNT_FLAG, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, \
             LAST_UPDATE_DATE) VALUES (?, ?, ?, ?, ?, ?, ?, 'Y', 'N', ?, ?, ?, ?)",
            self.t("io_users")
        );
        self.exec(
            &sql,
            &[
                text(&id),
                text(u.org_uid),
                text(u.user_name),
                opt_text(u.display_name.or(Some(u.user_name))),
                opt_text(u.email_address),
                text(u.password_hash),
                Value::Date(Utc::now().date_naive()),
                text(u.created_by),
                now.clone(),
                text(u.created_by),
                now,
            ],
        )
        .await?;
        Ok(id)
    }

    pub async fn find_user(&self, org_uid: &str, user_name: &str) -> Result<Option<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM {} WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_users")
        );
        let rows = self
            .fetch(&sql, &[text(org_uid), text(user_name)], &USER_TYPES)
            .await?;
        Ok(rows.into_iter().next().map(user_from_row))
    }

    pub async fn list_users(&self, org_uid: &str) -> Result<Vec<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM {} WHERE ORG_UID = ? ORDER BY USER_NAME",
            self.t("io_users")
        );
        let rows = self.fetch(&sql, &[text(org_uid)], &USER_TYPES).await?;
        Ok(rows.into_iter().map(user_from_row).collect())
    }

    /// Sets a new password hash and ends all of the user's sessions. Returns false if no such user.
    pub async fn set_password(
        &self,
        org_uid: &str,
        user_name: &str,
        hash: &str,
        by: &str,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET PASSWORD_HASH = ?, LAST_UPDATED_BY = ?, LAST_UPDATE_DATE = ? \
             WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_users")
        );
        let n = self
            .exec(
                &sql,
                &[
                    text(hash),
                    text(by),
                    self.who_now(Utc::now()),
                    text(org_uid),
                    text(user_name),
                ],
            )
            .await?;
        self.delete_user_sessions(org_uid, user_name).await?;
        Ok(n > 0)
    }

    /// Enables or disables a user; disabling ends all of the user's sessions.
    pub async fn set_enabled(
        &self,
        org_uid: &str,
        user_name: &str,
        enabled: bool,
        by: &str,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET ENABLED_FLAG = ?, LAST_UPDATED_BY = ?, LAST_UPDATE_DATE = ? \
             WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_users")
        );
        let flag = if enabled { "Y" } else { "N" };
        let n = self
            .exec(
                &sql,
                &[
                    text(flag),
                    text(by),
                    self.who_now(Utc::now()),
                    text(org_uid),
                    text(user_name),
                ],
            )
            .await?;
        if !enabled {
            self.delete_user_sessions(org_uid, user_name).await?;
        }
        Ok(n > 0)
    }

    /// Sets the date range in which a user may log in.
    pub async fn set_user_dates(
        &self,
        org_uid: &str,
        user_name: &str,
        start: Option<NaiveDate>,
        end: Option<NaiveDate>,
    ) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET START_DATE = ?, END_DATE = ? WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_users")
        );
        let d = |d: Option<NaiveDate>| d.map_or(Value::Null, Value::Date);
        Ok(self
            .exec(&sql, &[d(start), d(end), text(org_uid), text(user_name)])
            .await?
            > 0)
    }

    pub async fn grant_role(
        &self,
        org_uid: &str,
        user_name: &str,
        app_uid: &str,
        role_uid: &str,
        by: &str,
    ) -> Result<()> {
        let now = self.who_now(Utc::now());
        let sql = format!(
            "INSERT INTO {} (ORG_UID, USER_NAME, APP_UID, ROLE_UID, CREATED_BY, CREATION_DATE, \
             LAST_UPDATED_BY, LAST_UPDATE_DATE) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            self.t("io_user_roles")
        );
        self.exec(
            &sql,
            &[
                text(org_uid),
                text(user_name),
                text(app_uid),
                text(role_uid),
                text(by),
                now.clone(),
                text(by),
                now,
            ],
        )
        .await
        .map_err(|e| match e {
            StoreError::Constraint(_) => StoreError::Invalid(format!(
                "no user `{user_name}`, or app `{app_uid}` has no role `{role_uid}`"
            )),
            e => e,
        })?;
        Ok(())
    }

    pub async fn revoke_role(
        &self,
        org_uid: &str,
        user_name: &str,
        app_uid: &str,
        role_uid: &str,
    ) -> Result<bool> {
        let sql = format!(
            "DELETE FROM {} WHERE ORG_UID = ? AND USER_NAME = ? AND APP_UID = ? AND ROLE_UID = ?",
            self.t("io_user_roles")
        );
        Ok(self
            .exec(
                &sql,
                &[
                    text(org_uid),
                    text(user_name),
                    text(app_uid),
                    text(role_uid),
                ],
            )
            .await?
            > 0)
    }

    /// `(appUid, roleUid)` pairs held by a user, sorted.
    pub async fn user_roles(
        &self,
        org_uid: &str,
        user_name: &str,
    ) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT APP_UID, ROLE_UID FROM {} WHERE ORG_UID = ? AND USER_NAME = ? ORDER BY APP_UID, ROLE_UID",
            self.t("io_user_roles")
        );
        let rows = self
            .fetch(
                &sql,
                &[text(org_uid), text(user_name)],
                &[AttrType::String, AttrType::String],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                (
                    it.next().and_then(take_text).unwrap_or_default(),
                    it.next().and_then(take_text).unwrap_or_default(),
                )
            })
            .collect())
    }

    pub async fn create_session(&self, s: &Session) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (SESSION_ID, CSRF, ORG_UID, USER_NAME, CREATED_AT, LAST_SEEN_AT, API_KEY) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            self.t("io_sessions")
        );
        self.exec(
            &sql,
            &[
                text(&s.session_id),
                text(&s.csrf),
                text(&s.org_uid),
                text(&s.user_name),
                Value::Int(s.created_at),
                Value::Int(s.last_seen_at),
                opt_text(s.api_key.as_deref()),
            ],
        )
        .await?;
        Ok(())
    }

    /// The session and whether its user may still log in (a deleted user: false).
    pub async fn live_session(
        &self,
        session_id: &str,
        today: NaiveDate,
    ) -> Result<Option<LiveSession>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS}, u.ENABLED_FLAG, u.START_DATE, u.END_DATE, u.DISPLAY_NAME, u.EMAIL_ADDRESS FROM {} s \
             LEFT JOIN {} u ON u.ORG_UID = s.ORG_UID AND u.USER_NAME = s.USER_NAME WHERE s.SESSION_ID = ?",
            self.t("io_sessions"),
            self.t("io_users")
        );
        let mut types = SESSION_TYPES.to_vec();
        types.extend([
            AttrType::Yn,
            AttrType::Date,
            AttrType::Date,
            AttrType::String,
            AttrType::String,
        ]);
        let rows = self.fetch(&sql, &[text(session_id)], &types).await?;
        Ok(rows.into_iter().next().map(|row| {
            let mut it = row.into_iter();
            let session = session_from_row(&mut it);
            let enabled = it.next().and_then(take_text).as_deref() == Some("Y");
            let start = it.next().and_then(take_date);
            let end = it.next().and_then(take_date);
            let display_name = it.next().and_then(take_text);
            let email_address = it.next().and_then(take_text);
            let user_may_log_in =
                enabled && start.is_none_or(|d| d <= today) && end.is_none_or(|d| today <= d);
            LiveSession {
                session,
                user_may_log_in,
                display_name,
                email_address,
            }
        }))
    }

    pub async fn touch_session(&self, session_id: &str, now_micros: i64) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET LAST_SEEN_AT = ? WHERE SESSION_ID = ?",
            self.t("io_sessions")
        );
        self.exec(&sql, &[Value::Int(now_micros), text(session_id)])
            .await?;
        Ok(())
    }

    pub async fn delete_session(&self, session_id: &str) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE SESSION_ID = ?", self.t("io_sessions"));
        Ok(self.exec(&sql, &[text(session_id)]).await? > 0)
    }

    pub async fn delete_user_sessions(&self, org_uid: &str, user_name: &str) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_sessions")
        );
        self.exec(&sql, &[text(org_uid), text(user_name)]).await
    }

    /// Ends a user's sessions inside a caller's transaction.
    /// The statement that ends a user's sessions, for a caller to run inside its own
    /// transaction (the engine, when a post disables a user or changes a password).
    pub fn end_sessions_statement(&self, org_uid: &str, user_name: &str) -> (String, Vec<Value>) {
        let sql = format!(
            "DELETE FROM {} WHERE ORG_UID = ? AND USER_NAME = ?",
            self.t("io_sessions")
        );
        (
            portable(self.dialect(), &sql).into_owned(),
            vec![text(org_uid), text(user_name)],
        )
    }

    /// Deletes sessions idle since `idle_before` or created before `created_before` (micros).
    pub async fn purge_sessions(&self, idle_before: i64, created_before: i64) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {} WHERE LAST_SEEN_AT < ? OR CREATED_AT < ?",
            self.t("io_sessions")
        );
        self.exec(&sql, &[Value::Int(idle_before), Value::Int(created_before)])
            .await
    }

    /// Reserves one login attempt under every key at once, before its password is checked.
    ///
    /// Each key allows `max` attempts after `since` (micros), counting failures and attempts
    /// still being checked (*pending*: `ATTEMPT_ID` set). With `max` failures under a key the
    /// answer is [`Reservation::Refused`]; with fewer failures but `max` attempts counting the
    /// pending ones, [`Reservation::Busy`] (retry shortly: a pending attempt that succeeds gives
    /// its place back). Count and insert run in one transaction that holds SQLite's write lock
    /// or a PostgreSQL advisory lock, so concurrent attempts, on this node or another, never
    /// check more than `max` passwords per key and window that fail. The attempt then ends with
    /// [`Store::login_attempt_failed`] or [`Store::login_attempt_succeeded`].
    pub async fn reserve_login_attempt(
        &self,
        keys: &[String],
        attempt_id: &str,
        now_micros: i64,
        since: i64,
        max: i64,
    ) -> Result<Reservation> {
        let dialect = self.dialect();
        let table = self.t("io_login_failures");
        let count = portable(
            dialect,
            &format!(
                "SELECT COUNT(*), COUNT(ATTEMPT_ID), MAX(FAILED_AT) FROM {table} \
                 WHERE FAILURE_KEY = ? AND FAILED_AT > ?"
            ),
        )
        .into_owned();
        let insert = portable(
            dialect,
            &format!("INSERT INTO {table} (FAILURE_KEY, FAILED_AT, ATTEMPT_ID) VALUES (?, ?, ?)"),
        )
        .into_owned();
        let mut tx = self.db.begin_write().await?;
        if dialect == Dialect::Postgres {
            // One lock for every reservation of the cluster: the transaction is a few short
            // statements, and a single lock cannot deadlock.
            tx.raw()
                .execute(
                    &format!("SELECT pg_advisory_xact_lock({LOGIN_ATTEMPT_LOCK})"),
                    &[],
                )
                .await?;
        }
        if dialect == Dialect::Mysql {
            // The same single lock: a row of its own, held to the end of the transaction.
            tx.raw()
                .execute(
                    &format!(
                        "SELECT VERSION FROM {} WHERE NAME = 'login' FOR UPDATE",
                        self.t("io_cluster")
                    ),
                    &[],
                )
                .await?;
        }
        let mut busy = false;
        for key in keys {
            let row = tx
                .raw()
                .fetch_all(
                    &count,
                    &[text(key), Value::Int(since)],
                    &[AttrType::Integer, AttrType::Integer, AttrType::Integer],
                )
                .await?;
            let mut it = row.into_iter().next().unwrap_or_default().into_iter();
            let mut next = || it.next().map_or(0, take_int);
            let (all, pending, newest) = (next(), next(), next());
            if all - pending >= max {
                // Dropping the transaction rolls it back.
                return Ok(Reservation::Refused {
                    newest,
                    key: key.clone(),
                });
            }
            busy |= all >= max;
        }
        if busy {
            return Ok(Reservation::Busy);
        }
        for key in keys {
            tx.raw()
                .execute(
                    &insert,
                    &[text(key), Value::Int(now_micros), text(attempt_id)],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(Reservation::Reserved)
    }

    /// The attempt's password was wrong: its reservations stay, as failures.
    pub async fn login_attempt_failed(&self, attempt_id: &str) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET ATTEMPT_ID = NULL WHERE ATTEMPT_ID = ?",
            self.t("io_login_failures")
        );
        self.exec(&sql, &[text(attempt_id)]).await?;
        Ok(())
    }

    /// The attempt logged in: its reservations are taken back, and the failures under
    /// `clear_key` (the user's) are cleared. Other attempts still pending are left alone.
    pub async fn login_attempt_succeeded(&self, attempt_id: &str, clear_key: &str) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE ATTEMPT_ID = ? OR (FAILURE_KEY = ? AND ATTEMPT_ID IS NULL)",
            self.t("io_login_failures")
        );
        self.exec(&sql, &[text(attempt_id), text(clear_key)])
            .await?;
        Ok(())
    }

    /// Deletes failures older than `since` (micros), under every key.
    pub async fn prune_login_failures(&self, since: i64) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE FAILED_AT < ?",
            self.t("io_login_failures")
        );
        self.exec(&sql, &[Value::Int(since)]).await?;
        Ok(())
    }

    /// `(count, newest)` of failures under `key` after `since` (micros).
    pub async fn login_failures(&self, key: &str, since: i64) -> Result<(i64, i64)> {
        let sql = format!(
            "SELECT COUNT(*), MAX(FAILED_AT) FROM {} WHERE FAILURE_KEY = ? AND FAILED_AT > ?",
            self.t("io_login_failures")
        );
        let rows = self
            .fetch(
                &sql,
                &[text(key), Value::Int(since)],
                &[AttrType::Integer, AttrType::Integer],
            )
            .await?;
        let mut it = rows.into_iter().next().unwrap_or_default().into_iter();
        Ok((it.next().map_or(0, take_int), it.next().map_or(0, take_int)))
    }

    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        let sql = format!(
            "DELETE FROM {} WHERE FAILURE_KEY = ?",
            self.t("io_login_failures")
        );
        self.exec(&sql, &[text(key)]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_user_name;

    #[test]
    fn user_names_that_could_never_log_in_are_refused() {
        for ok in [
            "admin",
            "Ünïcödé user",
            "a.b@example.com",
            "x".repeat(256).as_str(),
        ] {
            assert_eq!(check_user_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a:b",
            "a\nb",
            "a\rb",
            "tab\there",
            "nul\0",
            &"x".repeat(257),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
