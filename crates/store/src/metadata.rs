//! Apps, datasource definitions, roles and grants, as stored in the platform tables.

use chrono::Utc;
use query::{AttrType, Dialect, Value};

use crate::db::{Db, Tx, open_sqlite_file, portable};
use crate::error::Result;
use crate::migrate::app_schema;
use crate::platform::Store;

/// Everything an app declares, ready to be stored.
#[derive(Debug, Clone, Default)]
pub struct AppMetadata {
    pub app_uid: String,
    pub org_uid: String,
    pub name: String,
    pub description: Option<String>,
    /// (datasource name, definition as JSON text)
    pub datasources: Vec<(String, String)>,
    pub roles: Vec<RoleGrants>,
    /// (path in the app directory, source text): `datasources/<Name>.<hook>.js|ts`,
    /// `functions/<moduleUri>.js|ts`.
    pub scripts: Vec<(String, String)>,
    /// (path, text): the app directory's other files as loaded (`app.json`, `roles.json`,
    /// `datasources/<Name>.json`, `workflows/<wfUid>.json`, `migrations/**.sql`), kept so the
    /// app can be exported as it was given.
    pub files: Vec<(String, String)>,
}

/// An app as stored: its row and every file of its directory.
#[derive(Debug, Clone, Default)]
pub struct StoredApp {
    pub name: String,
    pub description: Option<String>,
    /// (datasource name, definition as stored: canonical JSON)
    pub datasources: Vec<(String, String)>,
    /// (path, source)
    pub scripts: Vec<(String, String)>,
    /// (path, text), see [`AppMetadata::files`].
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct RoleGrants {
    pub role_uid: String,
    pub name: String,
    /// (datasource, action)
    pub grants: Vec<(String, String)>,
    /// (moduleUri, function name or `*`)
    pub functions: Vec<(String, String)>,
}

impl AppMetadata {
    /// A digest of everything stored for the app, to skip rewriting unchanged metadata.
    pub fn checksum(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field(&self.app_uid);
        field(&self.org_uid);
        field(&self.name);
        field(self.description.as_deref().unwrap_or(""));
        for (name, def) in &self.datasources {
            field(name);
            field(def);
        }
        for r in &self.roles {
            field(&r.role_uid);
            field(&r.name);
            for (ds, action) in &r.grants {
                field(ds);
                field(action);
            }
            field("functions");
            for (module, function) in &r.functions {
                field(module);
                field(function);
            }
        }
        field("scripts");
        for (path, source) in &self.scripts {
            field(path);
            field(source);
        }
        field("files");
        for (path, text) in &self.files {
            field(path);
            field(text);
        }
        hex::encode(h.finalize())
    }
}

/// All stored metadata, for building the in-memory catalog.
#[derive(Debug, Clone, Default)]
pub struct StoredMetadata {
    /// (app, datasource name, definition JSON text)
    pub datasources: Vec<(String, String, String)>,
    /// (app, role, datasource, action)
    pub grants: Vec<(String, String, String, String)>,
    /// (app, path, source)
    pub scripts: Vec<(String, String, String)>,
    /// (app, role, moduleUri, function name or `*`)
    pub functions: Vec<(String, String, String, String)>,
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The first `N` cells of a row (missing ones empty).
fn cells<const N: usize>(row: Vec<String>) -> [String; N] {
    let mut it = row.into_iter();
    std::array::from_fn(|_| it.next().unwrap_or_default())
}

fn texts(row: Vec<Value>) -> Vec<String> {
    row.into_iter()
        .map(|v| match v {
            Value::Text(s) => s,
            _ => String::new(),
        })
        .collect()
}

impl Store {
    /// The schema (PostgreSQL) or attached database (SQLite) holding an app's tables.
    pub fn schema_of(&self, app_uid: &str) -> String {
        self.db.schema_of(app_uid)
    }

    /// The statement that makes an app's schema the default for unqualified table names for
    /// the rest of a transaction (a script's own SQL); `None` on SQLite, where an app's
    /// attached database is found by name anyway.
    pub fn search_path_statement(&self, app_uid: &str) -> Option<String> {
        let schema = self.schema_of(app_uid);
        if !query::meta::is_identifier(&schema) {
            return None;
        }
        match self.dialect() {
            Dialect::Postgres => Some(format!("SET LOCAL search_path TO {schema}")),
            // Not transaction-local: every platform and compiled statement names its schema,
            // so the next user of the connection is not affected.
            Dialect::Mysql => Some(format!("USE {schema}")),
            Dialect::Sqlite => None,
        }
    }

    /// Replaces an app's metadata in one transaction: the app row, its datasources, its roles
    /// (added or renamed; roles no longer declared are kept, since users may hold them) and all
    /// of its grants.
    pub async fn replace_app_metadata(&self, m: &AppMetadata, by: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        self.write_app_metadata(&mut tx, m, by).await?;
        tx.commit().await
    }

    /// [`Store::replace_app_metadata`] inside the caller's transaction.
    pub async fn write_app_metadata(&self, tx: &mut Tx, m: &AppMetadata, by: &str) -> Result<()> {
        let tx = &mut *tx;
        let d = tx.dialect();
        let now = self.who_now(Utc::now());
        let who = |v: &mut Vec<Value>| {
            v.extend([text(by), now.clone(), text(by), now.clone()]);
        };
        let mut params = vec![
            text(&m.app_uid),
            text(&m.org_uid),
            text(&m.name),
            m.description.as_deref().map_or(Value::Null, text),
            text(&m.checksum()),
        ];
        who(&mut params);
        exec(
            tx,
            d,
            &format!(
                "INSERT INTO {} (APP_UID, ORG_UID, NAME, DESCRIPTION, METADATA_CHECKSUM, CREATED_BY, \
                 CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (APP_UID) DO UPDATE SET NAME = excluded.NAME, \
                 DESCRIPTION = excluded.DESCRIPTION, METADATA_CHECKSUM = excluded.METADATA_CHECKSUM, \
                 LAST_UPDATED_BY = excluded.LAST_UPDATED_BY, \
                 LAST_UPDATE_DATE = excluded.LAST_UPDATE_DATE",
                self.t("io_apps")
            ),
            &params,
        )
        .await?;
        for table in [
            "io_datasources",
            "io_role_grants",
            "io_role_functions",
            "io_scripts",
            "io_app_files",
        ] {
            exec(
                tx,
                d,
                &format!("DELETE FROM {} WHERE APP_UID = ?", self.t(table)),
                &[text(&m.app_uid)],
            )
            .await?;
        }
        // Datasource definitions and scripts: (table, its two columns beside APP_UID, rows).
        let named = [
            ("io_datasources", "NAME, DEFINITION", &m.datasources),
            ("io_scripts", "PATH, SOURCE", &m.scripts),
            ("io_app_files", "PATH, CONTENT", &m.files),
        ];
        for (table, columns, rows) in named {
            for (key, body) in rows {
                let mut params = vec![text(&m.app_uid), text(key), text(body)];
                who(&mut params);
                exec(
                    tx,
                    d,
                    &format!(
                        "INSERT INTO {} (APP_UID, {columns}, CREATED_BY, CREATION_DATE, \
                         LAST_UPDATED_BY, LAST_UPDATE_DATE) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        self.t(table)
                    ),
                    &params,
                )
                .await?;
            }
        }
        for role in &m.roles {
            let mut params = vec![text(&m.app_uid), text(&role.role_uid), text(&role.name)];
            who(&mut params);
            exec(
                tx,
                d,
                &format!(
                    "INSERT INTO {} (APP_UID, ROLE_UID, NAME, CREATED_BY, CREATION_DATE, \
                     LAST_UPDATED_BY, LAST_UPDATE_DATE) VALUES (?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (APP_UID, ROLE_UID) DO UPDATE SET NAME = excluded.NAME",
                    self.t("io_roles")
                ),
                &params,
            )
            .await?;
            for (ds, action) in &role.grants {
                exec(
                    tx,
                    d,
                    &format!(
                        "INSERT INTO {} (APP_UID, ROLE_UID, DATASOURCE, ACTION) VALUES (?, ?, ?, ?) \
                         ON CONFLICT DO NOTHING",
                        self.t("io_role_grants")
                    ),
                    &[text(&m.app_uid), text(&role.role_uid), text(ds), text(action)],
                )
                .await?;
            }
            for (module, function) in &role.functions {
                exec(
                    tx,
                    d,
                    &format!(
                        "INSERT INTO {} (APP_UID, ROLE_UID, MODULE_URI, FUNCTION_NAME) \
                         VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        self.t("io_role_functions")
                    ),
                    &[
                        text(&m.app_uid),
                        text(&role.role_uid),
                        text(module),
                        text(function),
                    ],
                )
                .await?;
            }
        }
        // Every node compares this with the version its catalog was loaded at.
        self.bump_metadata_version(tx).await
    }

    /// Whether the stored metadata of the app is exactly `m` (by checksum).
    pub async fn app_metadata_unchanged(&self, m: &AppMetadata) -> Result<bool> {
        let sql = format!(
            "SELECT METADATA_CHECKSUM FROM {} WHERE APP_UID = ?",
            self.t("io_apps")
        );
        let rows = self
            .db
            .fetch_all(
                &portable(self.dialect(), &sql),
                &[text(&m.app_uid)],
                &[AttrType::String],
            )
            .await?;
        Ok(rows.into_iter().flatten().next() == Some(Value::Text(m.checksum())))
    }

    pub async fn load_metadata(&self) -> Result<StoredMetadata> {
        let d = self.dialect();
        let rows = self
            .db
            .fetch_all(
                &portable(
                    d,
                    &format!(
                        "SELECT APP_UID, NAME, DEFINITION FROM {} ORDER BY APP_UID, NAME",
                        self.t("io_datasources")
                    ),
                ),
                &[],
                &[AttrType::String; 3],
            )
            .await?;
        let datasources = rows
            .into_iter()
            .map(|r| {
                let [a, b, c] = cells(texts(r));
                (a, b, c)
            })
            .collect();
        let rows = self
            .db
            .fetch_all(
                &format!(
                    "SELECT APP_UID, ROLE_UID, DATASOURCE, ACTION FROM {}",
                    self.t("io_role_grants")
                ),
                &[],
                &[AttrType::String; 4],
            )
            .await?;
        let grants = rows
            .into_iter()
            .map(|r| {
                let [a, b, c, d] = cells(texts(r));
                (a, b, c, d)
            })
            .collect();
        let scripts = self
            .texts_of(&format!(
                "SELECT APP_UID, PATH, SOURCE FROM {} ORDER BY APP_UID, PATH",
                self.t("io_scripts")
            ))
            .await?
            .into_iter()
            .map(|r| {
                let [a, b, c] = cells(r);
                (a, b, c)
            })
            .collect();
        let functions = self
            .texts_of(&format!(
                "SELECT APP_UID, ROLE_UID, MODULE_URI, FUNCTION_NAME FROM {}",
                self.t("io_role_functions")
            ))
            .await?
            .into_iter()
            .map(|r| {
                let [a, b, c, d] = cells(r);
                (a, b, c, d)
            })
            .collect();
        Ok(StoredMetadata {
            datasources,
            grants,
            scripts,
            functions,
        })
    }

    /// An app's row and files as stored, or `None` if there is no such app.
    pub async fn stored_app(&self, app_uid: &str) -> Result<Option<StoredApp>> {
        let d = self.dialect();
        let key = [text(app_uid)];
        let rows = self
            .db
            .fetch_all(
                &portable(
                    d,
                    &format!(
                        "SELECT NAME, DESCRIPTION FROM {} WHERE APP_UID = ?",
                        self.t("io_apps")
                    ),
                ),
                &key,
                &[AttrType::String; 2],
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut row = row.into_iter();
        let name = match row.next() {
            Some(Value::Text(s)) => s,
            _ => String::new(),
        };
        let description = match row.next() {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        };
        let pairs = |table: &'static str, columns: &'static str| {
            let sql = portable(
                d,
                &format!(
                    "SELECT {columns} FROM {} WHERE APP_UID = ? ORDER BY 1",
                    self.t(table)
                ),
            )
            .into_owned();
            let db = self.db.clone();
            let key = key.clone();
            async move {
                let rows = db.fetch_all(&sql, &key, &[AttrType::String; 2]).await?;
                Ok::<_, crate::StoreError>(
                    rows.into_iter()
                        .map(|r| {
                            let [a, b] = cells(texts(r));
                            (a, b)
                        })
                        .collect::<Vec<_>>(),
                )
            }
        };
        let datasources = pairs("io_datasources", "NAME, DEFINITION").await?;
        let scripts = pairs("io_scripts", "PATH, SOURCE").await?;
        let files = pairs("io_app_files", "PATH, CONTENT").await?;
        Ok(Some(StoredApp {
            name,
            description,
            datasources,
            scripts,
            files,
        }))
    }

    /// Every row of a platform query with no parameters, as text cells.
    async fn texts_of(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let rows = self.db.fetch_all(sql, &[], &[AttrType::String; 4]).await?;
        Ok(rows.into_iter().map(texts).collect())
    }

    /// Upper-cased column names of an app's table, or `None` if the table does not exist.
    pub async fn table_columns(&self, app_uid: &str, table: &str) -> Result<Option<Vec<String>>> {
        let rows = match &self.db {
            Db::Postgres(_) => {
                self.db
                    .fetch_all(
                        "SELECT upper(a.attname) FROM pg_catalog.pg_attribute a \
                         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = lower($1) AND c.relname = lower($2) \
                         AND a.attnum > 0 AND NOT a.attisdropped",
                        &[text(&self.schema_of(app_uid)), text(table)],
                        &[AttrType::String],
                    )
                    .await?
            }
            Db::Mysql { .. } => {
                self.db
                    .fetch_all(
                        "SELECT UPPER(COLUMN_NAME) FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                        &[text(&self.schema_of(app_uid)), text(table)],
                        &[AttrType::String],
                    )
                    .await?
            }
            Db::Sqlite { dir, .. } => {
                // The app's file may be new since the pool was opened: ask it directly.
                let file = if app_uid == crate::PLATFORM_APP {
                    dir.join("cloudio.db")
                } else {
                    dir.join(format!("{}.db", app_schema(app_uid)))
                };
                // No file, no tables (and no empty file made by asking).
                if !file.exists() {
                    return Ok(None);
                }
                let mut conn = open_sqlite_file(&file).await?;
                let rows = crate::db::Raw::Sqlite(&mut conn)
                    .fetch_all(
                        "SELECT upper(name) FROM pragma_table_info(?)",
                        &[text(table)],
                        &[AttrType::String],
                    )
                    .await;
                sqlx::Connection::close(conn).await?;
                rows?
            }
        };
        let cols = texts(rows.into_iter().flatten().collect());
        Ok(if cols.is_empty() { None } else { Some(cols) })
    }
}

async fn exec(tx: &mut Tx, d: Dialect, sql: &str, params: &[Value]) -> Result<u64> {
    tx.raw().execute(&portable(d, sql), params).await
}
