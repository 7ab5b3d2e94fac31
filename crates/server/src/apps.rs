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
    /// (path, text): every other file of the directory (`app.json`, `roles.json`, datasource
    /// files, workflows, migrations of every database), stored to be exported again.
    pub files: Vec<(String, String)>,
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

pub use crate::appzip::is_app_file;

/// An app directory's files (those of its layout, see [`is_app_file`]), by relative path.
pub fn read_tree(dir: &Path) -> Result<BTreeMap<String, String>, Vec<String>> {
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, String>,
        problems: &mut Vec<String>,
    ) {
        let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Links are not followed: a patch is plain files.
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                walk(root, &path, out, problems);
            } else if kind.is_file() && is_app_file(&path) {
                match std::fs::read_to_string(e.path()) {
                    Ok(text) => {
                        out.insert(path, text);
                    }
                    Err(err) => problems.push(format!("{}: {err}", e.path().display())),
                }
            }
        }
    }
    if !dir.join("app.json").is_file() {
        return Err(vec![format!(
            "{}: no app.json",
            dir.join("app.json").display()
        )]);
    }
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    walk(dir, "", &mut out, &mut problems);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

impl AppSource {
    /// Reads an app directory. Migrations: the shared folder plus the dialect's own.
    pub fn read_dir(dir: &Path, dialect: Dialect) -> Result<AppSource, Vec<String>> {
        AppSource::from_files(read_tree(dir)?, dialect)
    }

    /// An app from its files by relative path (a directory read by [`read_tree`], or a patch).
    /// Every file is kept in [`AppSource::files`] (migrations of every database), so the app
    /// can be exported as it came.
    pub fn from_files(
        files: BTreeMap<String, String>,
        dialect: Dialect,
    ) -> Result<AppSource, Vec<String>> {
        let Some(app_json) = files.get("app.json").cloned() else {
            return Err(vec!["app.json: missing".into()]);
        };
        let mut src = AppSource {
            app_json,
            roles_json: files.get("roles.json").cloned(),
            ..AppSource::default()
        };
        let own = format!("migrations/{}/", dialect_dir(dialect));
        let mut problems = Vec::new();
        for (path, text) in files {
            if !is_app_file(&path) {
                continue;
            }
            let is_script = path.ends_with(".js") || path.ends_with(".ts");
            if is_script {
                src.scripts.push((path, text));
                continue;
            }
            if path.starts_with("datasources/") {
                src.datasources.push((path.clone(), text.clone()));
            } else if let Some(name) = path.strip_prefix("migrations/")
                && (!name.contains('/') || path.starts_with(&own))
            {
                let name = name.rsplit('/').next().unwrap_or(name);
                if store::migrate::is_migration_name(name) {
                    src.migrations.push(Migration {
                        name: name.to_string(),
                        sql: text.clone(),
                    });
                } else {
                    problems.push(format!(
                        "{path}: migration files must be named io_YYYYMMDDHHmmss_<description>.sql"
                    ));
                }
            }
            src.files.push((path, text));
        }
        src.migrations.sort_by(|a, b| a.name.cmp(&b.name));
        if problems.is_empty() {
            Ok(src)
        } else {
            Err(problems)
        }
    }

    /// The app this source declares (`appUid` of its `app.json`), if it parses.
    pub fn app_uid(&self) -> Option<String> {
        serde_json::from_str::<serde_json::Value>(&self.app_json)
            .ok()?
            .get("appUid")?
            .as_str()
            .map(str::to_string)
    }

    /// The platform's built-in app with an extension (an app directory or stored files whose
    /// `app.json` says `cloudio`): the extension adds datasources, roles, scripts, functions,
    /// workflows and migrations, but may not replace a built-in datasource or role (spec
    /// section 8). Any other app is returned as it is.
    pub fn with_platform(self) -> Result<AppSource, Vec<String>> {
        if self.app_uid().as_deref() != Some(store::PLATFORM_APP) {
            return Ok(self);
        }
        let base = AppSource::platform();
        let mut problems = Vec::new();
        let mut datasources = base.datasources;
        for (file, text) in self.datasources {
            if datasources.iter().any(|(f, _)| *f == file) {
                problems.push(format!(
                    "{file}: a built-in datasource of the cloudio app cannot be replaced"
                ));
            } else {
                datasources.push((file, text));
            }
        }
        let roles = |text: Option<&String>| -> Vec<serde_json::Value> {
            text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .and_then(|v| v.get("roles").and_then(|r| r.as_array()).cloned())
                .unwrap_or_default()
        };
        let mut merged = roles(base.roles_json.as_ref());
        let built_in: Vec<serde_json::Value> =
            merged.iter().map(|r| r["roleUid"].clone()).collect();
        for role in roles(self.roles_json.as_ref()) {
            if built_in.contains(&role["roleUid"]) {
                problems.push(format!(
                    "roles.json: the built-in role {} of the cloudio app cannot be replaced",
                    role["roleUid"]
                ));
            } else {
                merged.push(role);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AppSource {
            app_json: base.app_json,
            datasources,
            roles_json: Some(serde_json::json!({ "roles": merged }).to_string()),
            migrations: self.migrations,
            scripts: self.scripts,
            files: self.files,
        })
    }

    /// The built-in demo app.
    pub fn demo(dialect: Dialect) -> AppSource {
        let files = [
            ("app.json", include_str!("../../../apps/demo/app.json")),
            (
                "datasources/Employees.json",
                include_str!("../../../apps/demo/datasources/Employees.json"),
            ),
            ("roles.json", include_str!("../../../apps/demo/roles.json")),
            (
                "functions/stats.js",
                include_str!("../../../apps/demo/functions/stats.js"),
            ),
            (
                "workflows/hire.json",
                include_str!("../../../apps/demo/workflows/hire.json"),
            ),
            (
                "migrations/postgres/io_20261128000100_create_employees.sql",
                include_str!(
                    "../../../apps/demo/migrations/postgres/io_20261128000100_create_employees.sql"
                ),
            ),
            (
                "migrations/sqlite/io_20261128000100_create_employees.sql",
                include_str!(
                    "../../../apps/demo/migrations/sqlite/io_20261128000100_create_employees.sql"
                ),
            ),
            (
                "migrations/mysql/io_20261128000100_create_employees.sql",
                include_str!(
                    "../../../apps/demo/migrations/mysql/io_20261128000100_create_employees.sql"
                ),
            ),
        ];
        let files = files
            .into_iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        // Built in and tested: it always reads.
        AppSource::from_files(files, dialect).unwrap_or_default()
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
                ds(
                    "IoUserRolesEdit",
                    include_str!("../platform-app/datasources/IoUserRolesEdit.json"),
                ),
                ds(
                    "IoApiKeys",
                    include_str!("../platform-app/datasources/IoApiKeys.json"),
                ),
            ],
            roles_json: Some(include_str!("../platform-app/roles.json").into()),
            migrations: Vec::new(),
            scripts: Vec::new(),
            files: Vec::new(),
        }
    }
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

/// Each column of the definition that `cols` (upper-cased, `None`: no such table) lacks.
pub fn column_problems(file: &str, def: &DatasourceDef, cols: Option<&[String]>) -> Vec<String> {
    let table = &def.table;
    let Some(cols) = cols else {
        return vec![format!("{file}: `table`: table `{table}` does not exist")];
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
    let mut problems = Vec::new();
    for (code, column) in attributes {
        if query::meta::is_identifier(&column) && !cols.contains(&column.to_ascii_uppercase()) {
            problems.push(format!(
                "{file}: attribute `{code}`: column `{column}` does not exist in table `{table}`"
            ));
        }
    }
    problems
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
    match store.table_columns(app_uid, table).await {
        Ok(cols) => problems.extend(column_problems(file, def, cols.as_deref())),
        Err(e) => problems.push(format!("{file}: cannot inspect table `{table}`: {e}")),
    }
}

/// An app read and checked (all but its tables), ready to be migrated and stored.
pub struct Prepared {
    pub meta: AppMetadata,
    /// (file, definition) of every datasource file that parsed.
    pub defs: Vec<(String, DatasourceDef)>,
    pub problems: Vec<String>,
}

/// Parses and checks everything of an app that needs no database: `app.json` (an `Err` when it
/// is unusable), datasources, roles, scripts and workflows, reporting every problem.
pub fn prepare(store: &Store, org_uid: &str, src: &AppSource) -> Result<Prepared, Vec<String>> {
    let app: AppJson =
        serde_json::from_str(&src.app_json).map_err(|e| vec![format!("app.json: {e}")])?;
    if !query::meta::is_identifier(&store::migrate::app_schema(&app.app_uid)) {
        return Err(vec![format!(
            "app.json: `appUid`: `{}` must be letters, digits, `_` or `-`",
            app.app_uid
        )]);
    }
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
        defs.push((file.clone(), def));
    }
    let mut workflows = Vec::new();
    for (path, text) in &src.files {
        if let Some(name) = path.strip_prefix("workflows/") {
            let wf_uid = name.strip_suffix(".json").unwrap_or(name);
            problems.extend(crate::workflow_def::check(path, wf_uid, text));
            workflows.push(wf_uid.to_string());
        }
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
                    for wf in role.workflows.keys() {
                        if !workflows.contains(wf) {
                            problems.push(format!(
                                "roles.json: `roles[{i}].workflows.{wf}`: unknown workflow"
                            ));
                        }
                    }
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
        files: src.files.clone(),
    };
    Ok(Prepared {
        meta,
        defs,
        problems,
    })
}

/// Runs the app's new migrations, then validates and stores its metadata. Every problem is
/// reported at once, each naming its file and field. Returns the app uid.
pub async fn load_app(
    store: &Store,
    org_uid: &str,
    src: &AppSource,
) -> Result<String, Vec<String>> {
    let Prepared {
        meta,
        defs,
        mut problems,
    } = prepare(store, org_uid, src)?;
    let app_uid = meta.app_uid.clone();
    problems.extend(workflow_version_problems(store, &app_uid, &src.files).await);
    let migrated = store::migrate::run(&store.db, &app_uid, &src.migrations)
        .await
        .map_err(|e| vec![format!("migrations: {e}")])?;
    // Tables change only through migrations: metadata stored as it is now, with no migration
    // applied since, was checked against the tables when it was stored.
    if problems.is_empty()
        && migrated.applied.is_empty()
        && store
            .app_metadata_unchanged(&meta)
            .await
            .map_err(|e| vec![e.to_string()])?
    {
        return Ok(app_uid);
    }
    // Check tables and columns even for definitions with other problems, so that every problem
    // is reported in one go.
    for (file, def) in &defs {
        if query::meta::is_identifier(&def.table) {
            check_columns(store, &app_uid, file, def, &mut problems).await;
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    store
        .replace_app_metadata(&meta, "system")
        .await
        .map_err(|e| vec![format!("storing metadata: {e}")])?;
    Ok(app_uid)
}

/// A workflow whose version already ran with another definition (instances keep the version
/// they started on, so a version names one definition for good): one problem each.
pub async fn workflow_version_problems(
    store: &Store,
    app_uid: &str,
    files: &[(String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        if !path.starts_with("workflows/") {
            continue;
        }
        let Ok(new) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        let (Some(wf), Some(version)) = (
            new.get("wfUid").and_then(|v| v.as_str()),
            new.get("version").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        match store.wf_definition(app_uid, wf, version).await {
            Ok(Some(old)) => {
                if serde_json::from_str::<serde_json::Value>(&old)
                    .ok()
                    .as_ref()
                    != Some(&new)
                {
                    problems.push(format!(
                        "{path}: workflow `{wf}` version `{version}` already ran with another \
                         definition; a changed definition needs a new `version`"
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    problems
}
