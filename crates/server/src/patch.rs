//! Patches: an app directory as a zip, exported from a server, verified against another and
//! applied to it (spec section 8, Patch management). No HTTP here: `api/patches.rs` is the thin
//! handler.
//!
//! - Reading a zip trusts nothing in it: entries outside the app directory (`..`, absolute
//!   paths, backslashes), links, more than [`MAX_ENTRIES`] entries or more than
//!   [`MAX_UNPACKED`] bytes inflated (counted while inflating, not taken from headers) refuse
//!   the whole zip before anything is looked at (`appzip.rs`, fuzzed as it is).
//! - Verifying and applying are one code path: the pending migrations run in one transaction,
//!   the tables are inspected, and the transaction commits (with the new metadata) only when
//!   applying and nothing was found; then the catalog is swapped whole. A request holds the
//!   catalog it started with (`engine::Ctx`), so it finishes on the old metadata.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use store::{AppMetadata, StoredApp};

use crate::apps::{self, AppSource, Prepared};
use crate::state::AppState;

pub use crate::appzip::{MAX_ENTRIES, MAX_UNPACKED, read_zip, write_zip};

/// An app's files as stored, ready to zip; `None` if there is no such app. Files missing from
/// what was stored (an app stored before files were kept) are rebuilt from its metadata.
pub async fn export(
    state: &AppState,
    app_uid: &str,
) -> store::Result<Option<BTreeMap<String, String>>> {
    let Some(app) = state.store.stored_app(app_uid).await? else {
        return Ok(None);
    };
    let mut files: BTreeMap<String, String> = app.files.iter().cloned().collect();
    files.extend(app.scripts.iter().cloned());
    files.entry("app.json".into()).or_insert_with(|| {
        let mut j = json!({"appUid": app_uid, "name": app.name});
        if let Some(d) = &app.description {
            j["description"] = json!(d);
        }
        pretty(&j)
    });
    for (name, def) in &app.datasources {
        files
            .entry(format!("datasources/{name}.json"))
            .or_insert_with(|| pretty(&serde_json::from_str(def).unwrap_or(Json::Null)));
    }
    Ok(Some(files))
}

fn pretty(j: &Json) -> String {
    serde_json::to_string_pretty(j).unwrap_or_default() + "\n"
}

/// Added, changed and removed names of one kind.
#[derive(Debug, Default)]
struct Diff {
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
}

impl Diff {
    fn of<T: PartialEq>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Diff {
        let mut d = Diff::default();
        for (k, v) in new {
            match old.get(k) {
                None => d.added.push(k.clone()),
                Some(o) if o != v => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        d
    }

    fn json(&self) -> Json {
        json!({"added": self.added, "changed": self.changed, "removed": self.removed})
    }
}

/// Roles by `roleUid`, as declared in a `roles.json` (unreadable: none).
fn roles_of(text: Option<&str>) -> BTreeMap<String, Json> {
    let parsed: Option<Json> = text.and_then(|t| serde_json::from_str(t).ok());
    parsed
        .as_ref()
        .and_then(|j| j.get("roles"))
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r.get("roleUid")?.as_str()?.to_string(), r.clone())))
        .collect()
}

/// Files under `prefix` (parsed as JSON when `json`, so formatting is no change).
fn files_under(files: &[(String, String)], prefix: &str, json: bool) -> BTreeMap<String, Json> {
    files
        .iter()
        .filter_map(|(path, text)| {
            let rest = path.strip_prefix(prefix)?;
            let value = if json {
                serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone()))
            } else {
                Json::String(text.clone())
            };
            Some((rest.to_string(), value))
        })
        .collect()
}

/// What applying `new` over `old` changes, per kind (migrations apart).
fn changes(
    old: Option<&StoredApp>,
    new: &AppMetadata,
    new_roles: Option<&str>,
) -> (Json, &'static str) {
    let empty = StoredApp::default();
    let o = old.unwrap_or(&empty);
    let parse_all = |list: &[(String, String)]| -> BTreeMap<String, Json> {
        list.iter()
            .map(|(n, t)| (n.clone(), serde_json::from_str(t).unwrap_or(Json::Null)))
            .collect()
    };
    let old_roles = o
        .files
        .iter()
        .find(|(p, _)| p == "roles.json")
        .map(|(_, t)| t.as_str());
    let strip = |m: BTreeMap<String, Json>| -> BTreeMap<String, Json> {
        m.into_iter()
            .map(|(k, v)| {
                let k = k.strip_suffix(".json").map(str::to_string).unwrap_or(k);
                (k, v)
            })
            .collect()
    };
    let kinds = json!({
        "datasources": Diff::of(&parse_all(&o.datasources), &parse_all(&new.datasources)).json(),
        "roles": Diff::of(&roles_of(old_roles), &roles_of(new_roles)).json(),
        "scripts": Diff::of(
            &files_under(&o.scripts, "datasources/", false),
            &files_under(&new.scripts, "datasources/", false),
        ).json(),
        "functions": Diff::of(
            &files_under(&o.scripts, "functions/", false),
            &files_under(&new.scripts, "functions/", false),
        ).json(),
        "workflows": Diff::of(
            &strip(files_under(&o.files, "workflows/", true)),
            &strip(files_under(&new.files, "workflows/", true)),
        ).json(),
    });
    let app = match old {
        None => "new",
        Some(o) if o.name != new.name || o.description != new.description => "changed",
        Some(_) => "unchanged",
    };
    (kinds, app)
}

/// The outcome of verifying or applying a patch: the body both endpoints answer with.
pub struct Outcome {
    pub applies: bool,
    pub problems: Vec<String>,
    pub body: Json,
}

/// Verifies (`commit` false) or applies a patch of `app_uid` made of `files`. Problems of the
/// patch are in the outcome; `Err` is a failure of the server itself.
pub async fn run(
    state: &AppState,
    org_uid: &str,
    app_uid: &str,
    files: BTreeMap<String, String>,
    commit: bool,
    by: &str,
) -> store::Result<Outcome> {
    // One patch at a time on this node; the database serialises nodes.
    let _turn = state.patching.lock().await;
    let store = &state.store;
    // A patch of `cloudio` extends the built-in app (e.g. with SSO's `create-user`), never
    // replacing its datasources or roles.
    let src = match AppSource::from_files(files, store.dialect()).and_then(AppSource::with_platform)
    {
        Ok(src) => src,
        Err(problems) => return Ok(refused(problems)),
    };
    let Prepared {
        meta,
        defs,
        mut problems,
    } = match apps::prepare(store, org_uid, &src) {
        Ok(p) => p,
        Err(problems) => return Ok(refused(problems)),
    };
    problems.extend(apps::workflow_version_problems(store, &meta.app_uid, &src.files).await);
    let mut runnable = true;
    if meta.app_uid != app_uid {
        problems.insert(
            0,
            format!(
                "app.json: `appUid`: `{}` is not the app patched (`{app_uid}`)",
                meta.app_uid
            ),
        );
        runnable = false;
    }
    let platform = meta.app_uid == store::PLATFORM_APP;
    if platform && !src.migrations.is_empty() {
        problems.insert(
            0,
            "migrations/: a patch of the platform's app `cloudio` cannot carry migrations yet \
             (load it with `cloudio serve --app-dir`)"
                .into(),
        );
        runnable = false;
    }
    let stored = store.stored_app(&meta.app_uid).await?;
    let (kinds, app_change) = changes(stored.as_ref(), &meta, src.roles_json.as_deref());
    let mut pending = Vec::new();
    let mut changed_files = Vec::new();
    let mut committed = false;
    if runnable {
        let mut tables: Vec<String> = defs
            .iter()
            .map(|(_, d)| d.table.clone())
            .filter(|t| query::meta::is_identifier(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        tables.sort();
        let clean = problems.is_empty();
        let run = store
            .run_patch(
                &meta,
                &src.migrations,
                &tables,
                commit && clean,
                by,
                |columns| {
                    defs.iter()
                        .filter(|(_, d)| query::meta::is_identifier(&d.table))
                        .flat_map(|(file, d)| {
                            let cols = columns.get(&d.table).cloned().flatten();
                            apps::column_problems(file, d, cols.as_deref())
                        })
                        .collect()
                },
            )
            .await?;
        problems.extend(run.problems);
        pending = run.pending;
        changed_files = run
            .report
            .changed
            .iter()
            .map(|(name, recorded, now)| {
                json!({"file": name, "recordedChecksum": recorded, "checksum": now})
            })
            .collect();
        committed = run.committed;
    }
    if committed {
        state.engine.catalog.reload(store).await?;
        crate::cluster::publish(state, crate::cluster::Event::Metadata).await;
        tracing::info!(app = %meta.app_uid, by, "patch applied");
    }
    let applies = problems.is_empty();
    let mut changes = kinds;
    changes["migrations"] = json!({"pending": pending, "changed": changed_files});
    let body = json!({
        "status": "OK",
        "appUid": meta.app_uid,
        "applies": applies,
        "applied": committed,
        "app": app_change,
        "problems": problems,
        "changes": changes,
    });
    Ok(Outcome {
        applies,
        problems,
        body,
    })
}

/// A patch that could not even be read as an app.
fn refused(problems: Vec<String>) -> Outcome {
    Outcome {
        applies: false,
        body: json!({"status": "OK", "applies": false, "applied": false, "problems": problems}),
        problems,
    }
}
