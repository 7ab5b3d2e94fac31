//! Loading an app: its new migrations first, then its metadata, validated and stored.
//!
//! An app comes from a directory (`serve --app-dir DIR`) or is built in (the platform's own
//! `cloudio` app, the `demo` app). Layout:
//! ```text
//! app.json                     {"appUid", "name", "description"}
//! datasources/<Name>.json      one datasource
//! datasources/<Name>.<hook>.js|ts   a hook script (preQuery, postQuery, beforeInsert, ...)
//! functions/<moduleUri>.js|ts  a cloud-function ES module
//! roles.json                   {"roles": [{"roleUid", "name", "grants": {"<ds>": ["query", ...]},
//!                                          "functions": {"<moduleUri>": ["<fn>" | "*"]}}]}
//! migrations/io_*.sql          for every database
//! migrations/<dialect>/io_*.sql   for one database only (sqlite, postgres, mysql)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use query::{DatasourceDef, Dialect};
use serde::Deserialize;
use store::migrate::Migration;
use store::{AppMetadata, RoleGrants, Store};

use crate::engine::Action;

/// An app's files, read from disk or built in.
#[derive(Debug, Clone, Default)]
pub struct AppSource {
    pub app_json: String,
    /// (file name, text)
    pub datasources: Vec<(String, String)>,
    pub roles_json: Option<String>,
    pub migrations: Vec<Migration>,
    /// (path in the app directory, source): hooks and cloud-function modules.
    pub scripts: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppJson {
    app_uid: String,
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesJson {
    roles: Vec<RoleJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RoleJson {
    role_uid: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    grants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    functions: BTreeMap<String, Vec<String>>,
    /// Read by the workflow engine; accepted here so roles.json may carry them.
    #[serde(default)]
    workflows: BTreeMap<String, Vec<String>>,
}

fn dialect_dir(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
        Dialect::Mysql => "mysql",
    }
}

impl AppSource {
    /// Reads an app directory. Migrations: the shared folder plus the dialect's own.
    pub fn read_dir(dir: &Path, dialect: Dialect) -> Result<AppSource, Vec<String>> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| vec![format!("{}: {e}", p.display())])
        };
        let app_json = read(&dir.join("app.json"))?;
        let mut datasources = Vec::new();
        let mut scripts = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join("datasources")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".json") {
                    datasources.push((format!("datasources/{name}"), read(&e.path())?));
                } else if name.ends_with(".js") || name.ends_with(".ts") {
                    scripts.push((format!("datasources/{name}"), read(&e.path())?));
                }
            }
        }
        datasources.sort();
        read_modules(&dir.join("functions"), "functions", &mut scripts)?;
        scripts.sort();
        let roles_path = dir.join("roles.json");
        let roles_json = if roles_path.exists() {
            Some(read(&roles_path)?)
        } else {
            None
        };
        let mut migrations =
            store::migrate::read_dir(&dir.join("migrations")).map_err(|e| vec![e.to_string()])?;
        migrations.extend(
            store::migrate::read_dir(&dir.join("migrations").join(dialect_dir(dialect)))
                .map_err(|e| vec![e.to_string()])?,
        );
        migrations.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(AppSource {
            app_json,
            datasources,
            roles_json,
            migrations,
            scripts,
        })
    }

    /// The built-in demo app.
    pub fn demo(dialect: Dialect) -> AppSource {
        let migration = match dialect {
            Dialect::Postgres | Dialect::Mysql => include_str!(
                "../../../apps/demo/migrations/postgres/io_20261128000100_create_employees.sql"
            ),
            Dialect::Sqlite => include_str!(
                "../../../apps/demo/migrations/sqlite/io_20261128000100_create_employees.sql"
            ),
        };
        AppSource {
            app_json: include_str!("../../../apps/demo/app.json").into(),
            datasources: vec![(
                "datasources/Employees.json".into(),
                include_str!("../../../apps/demo/datasources/Employees.json").into(),
            )],
            roles_json: Some(include_str!("../../../apps/demo/roles.json").into()),
            migrations: vec![Migration {
                name: "io_20261128000100_create_employees.sql".into(),
                sql: migration.into(),
            }],
            scripts: Vec::new(),
        }
    }

    /// The platform's own datasources over its tables (their migrations are the platform's).
    pub fn platform() -> AppSource {
        let ds = |name: &str, text: &str| (format!("datasources/{name}.json"), text.to_string());
        AppSource {
            app_json: include_str!("../platform-app/app.json").into(),
            datasources: vec![
                ds(
                    "IoUsers",
                    include_str!("../platform-app/datasources/IoUsers.json"),
                ),
                ds(
                    "IoRoles",
                    include_str!("../platform-app/datasources/IoRoles.json"),
                ),
                ds(
                    "IoUserRoles",
                    include_str!("../platform-app/datasources/IoUserRoles.json"),
                ),
                ds(
                    "IoDatasources",
                    include_str!("../platform-app/datasources/IoDatasources.json"),
                ),
            ],
            roles_json: Some(include_str!("../platform-app/roles.json").into()),
            migrations: Vec::new(),
            scripts: Vec::new(),
        }
    }
}

/// Reads `.js`/`.ts` files under `dir` (recursively) as `prefix/<relative path>`.
fn read_modules(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), Vec<String>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if path.is_dir() {
            read_modules(&path, &format!("{prefix}/{name}"), out)?;
        } else if name.ends_with(".js") || name.ends_with(".ts") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| vec![format!("{}: {e}", path.display())])?;
            out.push((format!("{prefix}/{name}"), text));
        }
    }
    Ok(())
}

/// Checks every script of an app: its path names a hook of one of `datasources` or a module,
/// no file exists as both `.js` and `.ts`, and it compiles (types stripped, syntax checked).
fn check_scripts(scripts: &[(String, String)], datasources: &[String], problems: &mut Vec<String>) {
    use crate::engine::catalog::ScriptPath;
    let mut stems = std::collections::HashMap::new();
    for (path, source) in scripts {
        let parsed = match ScriptPath::parse(path) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                problems.push(e);
                continue;
            }
            None => {
                problems.push(format!("{path}: not a hook or a function module"));
                continue;
            }
        };
        let stem = &path[..path.len() - 3];
        if let Some(other) = stems.insert(stem.to_string(), path.clone()) {
            problems.push(format!(
                "{other} and {path}: one script, two files; keep one"
            ));
        }
        if let ScriptPath::Hook { datasource, .. } = &parsed
            && !datasources.iter().any(|d| d == datasource)
        {
            problems.push(format!("{path}: no datasource `{datasource}` in this app"));
        }
        if let Err(e) = script::compile(path, source, parsed.kind()) {
            problems.push(e.to_string());
        }
    }
}

/// Reports a missing table, or each column of the definition the table lacks.
async fn check_columns(
    store: &Store,
    app_uid: &str,
    file: &str,
    def: &DatasourceDef,
    problems: &mut Vec<String>,
) {
    let table = &def.table;
    let cols = match store.table_columns(app_uid, table).await {
        Ok(Some(cols)) => cols,
        Ok(None) => {
            return problems.push(format!("{file}: `table`: table `{table}` does not exist"));
        }
        Err(e) => return problems.push(format!("{file}: cannot inspect table `{table}`: {e}")),
    };
    let who = query::meta::WHO_ATTRIBUTES.iter().map(|(code, column, _)| {
        let named = def
            .who_columns
            .as_ref()
            .and_then(|m| m.get(*code))
            .and_then(|v| v.as_str());
        (code.to_string(), named.unwrap_or(column).to_string())
    });
    let attributes = def
        .attributes
        .iter()
        .map(|a| {
            (
                a.code.clone(),
                a.column
                    .clone()
                    .unwrap_or_else(|| query::meta::default_column(&a.code)),
            )
        })
        .chain(who);
    for (code, column) in attributes {
        if query::meta::is_identifier(&column) && !cols.contains(&column.to_ascii_uppercase()) {
            problems.push(format!(
                "{file}: attribute `{code}`: column `{column}` does not exist in table `{table}`"
            ));
        }
    }
}

/// Runs the app's new migrations, then validates and stores its metadata. Every problem is
/// reported at once, each naming its file and field. Returns the app uid.
pub async fn load_app(
    store: &Store,
    org_uid: &str,
    src: &AppSource,
) -> Result<String, Vec<String>> {
    let app: AppJson =
        serde_json::from_str(&src.app_json).map_err(|e| vec![format!("app.json: {e}")])?;
    if !query::meta::is_identifier(&store::migrate::app_schema(&app.app_uid)) {
        return Err(vec![format!(
            "app.json: `appUid`: `{}` must be letters, digits, `_` or `-`",
            app.app_uid
        )]);
    }
    let migrated = store::migrate::run(&store.db, &app.app_uid, &src.migrations)
        .await
        .map_err(|e| vec![format!("migrations: {e}")])?;

    let mut problems = Vec::new();
    let mut datasources = Vec::new();
    let mut defs = Vec::new();
    let schema = store.schema_of(&app.app_uid);
    for (file, text) in &src.datasources {
        let def = match DatasourceDef::parse(file, text) {
            Ok(d) => d,
            Err(p) => {
                problems.extend(p);
                continue;
            }
        };
        if Path::new(file).file_stem().and_then(|s| s.to_str()) != Some(def.name.as_str()) {
            problems.push(format!(
                "{file}: `name`: `{}` must match the file name",
                def.name
            ));
        }
        if let Err(p) = def.resolve(file, &app.app_uid, Some(&schema)) {
            problems.extend(p);
        }
        let canonical = serde_json::to_string(&def).unwrap_or_default();
        datasources.push((def.name.clone(), canonical));
        defs.push((file, def));
    }
    let mut roles = Vec::new();
    if let Some(text) = &src.roles_json {
        match serde_json::from_str::<RolesJson>(text) {
            Err(e) => problems.push(format!("roles.json: {e}")),
            Ok(r) => {
                for (i, role) in r.roles.into_iter().enumerate() {
                    if !query::meta::is_identifier(&role.role_uid) {
                        problems.push(format!(
                            "roles.json: `roles[{i}].roleUid`: `{}` is not valid",
                            role.role_uid
                        ));
                    }
                    let mut grants = Vec::new();
                    for (ds, actions) in role.grants {
                        if !datasources.iter().any(|(n, _)| n == &ds) {
                            problems.push(format!(
                                "roles.json: `roles[{i}].grants.{ds}`: unknown datasource"
                            ));
                        }
                        for a in actions {
                            if Action::from_name(&a).is_none() {
                                problems.push(format!(
                                    "roles.json: `roles[{i}].grants.{ds}`: unknown action `{a}` (query, insert, update, delete)"
                                ));
                            }
                            grants.push((ds.clone(), a));
                        }
                    }
                    let mut functions = Vec::new();
                    for (module, names) in role.functions {
                        for f in names {
                            if f.is_empty() {
                                problems.push(format!(
                                    "roles.json: `roles[{i}].functions.{module}`: empty function name"
                                ));
                            }
                            functions.push((module.clone(), f));
                        }
                    }
                    let _ = role.workflows;
                    let name = role.name.unwrap_or_else(|| role.role_uid.clone());
                    roles.push(RoleGrants {
                        role_uid: role.role_uid,
                        name,
                        grants,
                        functions,
                    });
                }
            }
        }
    }
    let names: Vec<String> = datasources.iter().map(|(n, _)| n.clone()).collect();
    check_scripts(&src.scripts, &names, &mut problems);
    let meta = AppMetadata {
        app_uid: app.app_uid.clone(),
        org_uid: org_uid.to_string(),
        name: app.name,
        description: app.description,
        datasources,
        roles,
        scripts: src.scripts.clone(),
    };
    // Tables change only through migrations: metadata stored as it is now, with no migration
    // applied since, was checked against the tables when it was stored.
    if problems.is_empty()
        && migrated.applied.is_empty()
        && store
            .app_metadata_unchanged(&meta)
            .await
            .map_err(|e| vec![e.to_string()])?
    {
        return Ok(app.app_uid);
    }
    // Check tables and columns even for definitions with other problems, so that every problem
    // is reported in one go.
    for (file, def) in &defs {
        if query::meta::is_identifier(&def.table) {
            check_columns(store, &app.app_uid, file, def, &mut problems).await;
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    store
        .replace_app_metadata(&meta, "system")
        .await
        .map_err(|e| vec![format!("storing metadata: {e}")])?;
    Ok(app.app_uid)
}
