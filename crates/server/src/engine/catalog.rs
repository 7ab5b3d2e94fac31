//! The in-memory metadata catalog: every datasource, grant, hook and cloud-function module,
//! so a request costs no metadata round trip. Rebuilt from the platform tables whenever
//! metadata changes; scripts are compiled here, once per load.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use query::{Datasource, DatasourceDef};
use store::Store;

use crate::workflow::def::{WfDef, role_grants};

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Query,
    Insert,
    Update,
    Delete,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Query,
        Action::Insert,
        Action::Update,
        Action::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Query => "query",
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// The eight hooks of a datasource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    PreQuery,
    PostQuery,
    BeforeInsert,
    AfterInsert,
    BeforeUpdate,
    AfterUpdate,
    BeforeDelete,
    AfterDelete,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::PreQuery,
        Hook::PostQuery,
        Hook::BeforeInsert,
        Hook::AfterInsert,
        Hook::BeforeUpdate,
        Hook::AfterUpdate,
        Hook::BeforeDelete,
        Hook::AfterDelete,
    ];

    /// The file-name form: `Employees.<name>.js`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreQuery => "preQuery",
            Hook::PostQuery => "postQuery",
            Hook::BeforeInsert => "beforeInsert",
            Hook::AfterInsert => "afterInsert",
            Hook::BeforeUpdate => "beforeUpdate",
            Hook::AfterUpdate => "afterUpdate",
            Hook::BeforeDelete => "beforeDelete",
            Hook::AfterDelete => "afterDelete",
        }
    }

    pub fn from_name(s: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == s)
    }
}

/// A datasource's compiled hook bodies.
#[derive(Debug, Default)]
pub struct Hooks(HashMap<Hook, Arc<str>>);

impl Hooks {
    pub fn get(&self, hook: Hook) -> Option<&Arc<str>> {
        self.0.get(&hook)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a script path in an app names.
pub enum ScriptPath<'a> {
    /// `datasources/<Name>.<hook>.js|ts`
    Hook { datasource: &'a str, hook: Hook },
    /// `functions/<moduleUri>.js|ts`
    Module { uri: &'a str },
}

impl<'a> ScriptPath<'a> {
    /// Parses a path of an app directory; `None` for anything that is not a script.
    pub fn parse(path: &'a str) -> Option<Result<ScriptPath<'a>, String>> {
        let stem = path
            .strip_suffix(".js")
            .or_else(|| path.strip_suffix(".ts"))?;
        if let Some(rest) = stem.strip_prefix("datasources/") {
            let Some((ds, hook)) = rest.split_once('.') else {
                return Some(Err(format!(
                    "{path}: a hook file is named <Datasource>.<hook>.js"
                )));
            };
            return Some(match Hook::from_name(hook) {
                Some(hook) => Ok(ScriptPath::Hook {
                    datasource: ds,
                    hook,
                }),
                None => Err(format!(
                    "{path}: unknown hook `{hook}` (one of {})",
                    Hook::ALL.map(Hook::name).join(", ")
                )),
            });
        }
        let uri = stem.strip_prefix("functions/")?;
        let valid = !uri.is_empty()
            && uri.split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            });
        Some(if valid {
            Ok(ScriptPath::Module { uri })
        } else {
            Err(format!(
                "{path}: a module path is letters, digits, `_`, `-`, `.` and `/`"
            ))
        })
    }

    pub fn kind(&self) -> script::Kind {
        match self {
            ScriptPath::Hook { .. } => script::Kind::Hook,
            ScriptPath::Module { .. } => script::Kind::Module,
        }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    datasources: HashMap<(String, String), Arc<Datasource>>,
    hooks: HashMap<(String, String), Arc<Hooks>>,
    modules: HashMap<String, Arc<script::Modules>>,
    /// (app, role) -> (moduleUri, function name or `*`)
    functions: HashMap<(String, String), HashSet<(String, String)>>,
    /// datasource name -> apps that define it
    apps_by_name: HashMap<String, Vec<String>>,
    /// (app, role) -> (datasource, action)
    grants: HashMap<(String, String), HashSet<(String, Action)>>,
    /// (app, wfUid) -> the current definition
    workflows: HashMap<(String, String), Arc<WfDef>>,
    /// (app, role) -> (wfUid, `start` | `view`)
    workflow_grants: HashMap<(String, String), HashSet<(String, String)>>,
    /// app -> every role of its roles.json
    app_roles: HashMap<String, Vec<String>>,
}

/// Which datasource an alias means, or why it means none.
#[derive(Debug)]
pub enum Resolve {
    Found(Arc<Datasource>),
    /// No such datasource among the apps the user holds a role in, or not allowed.
    Denied,
    /// The name exists in several of the user's apps.
    Ambiguous(Vec<String>),
}

impl Catalog {
    /// Builds the catalog from stored metadata. A stored definition that no longer resolves is
    /// logged and skipped (it was valid when saved).
    pub async fn load(store: &Store) -> store::Result<Catalog> {
        let m = store.load_metadata().await?;
        let mut c = Catalog::default();
        for (app, name, text) in m.datasources {
            let schema = store.schema_of(&app);
            let ds = DatasourceDef::parse(&name, &text)
                .and_then(|d| d.resolve(&name, &app, Some(&schema)));
            match ds {
                Ok(ds) => {
                    c.apps_by_name
                        .entry(name.clone())
                        .or_default()
                        .push(app.clone());
                    c.datasources.insert((app, name), Arc::new(ds));
                }
                Err(problems) => {
                    tracing::error!(app = %app, datasource = %name, ?problems, "stored datasource is invalid")
                }
            }
        }
        for (app, role, ds, action) in m.grants {
            if let Some(a) = Action::from_name(&action) {
                c.grants.entry((app, role)).or_default().insert((ds, a));
            }
        }
        for (app, role, module, function) in m.functions {
            c.functions
                .entry((app, role))
                .or_default()
                .insert((module, function));
        }
        let mut hooks: HashMap<(String, String), Hooks> = HashMap::new();
        let mut modules: HashMap<String, script::Modules> = HashMap::new();
        for (app, path, source) in m.scripts {
            let Some(Ok(parsed)) = ScriptPath::parse(&path) else {
                continue;
            };
            let js = match script::compile(&path, &source, parsed.kind()) {
                Ok(js) => Arc::<str>::from(js),
                Err(e) => {
                    tracing::error!(app = %app, error = %e, "stored script does not compile");
                    continue;
                }
            };
            match parsed {
                ScriptPath::Hook { datasource, hook } => {
                    hooks
                        .entry((app.clone(), datasource.to_string()))
                        .or_default()
                        .0
                        .insert(hook, js);
                }
                ScriptPath::Module { uri } => {
                    modules
                        .entry(app.clone())
                        .or_default()
                        .insert(uri.to_string(), js);
                }
            }
        }
        for (app, path, text) in store.wf_app_files().await? {
            if path == "roles.json" {
                let (grants, roles) = role_grants(&text);
                for (role, wf, action) in grants {
                    c.workflow_grants
                        .entry((app.clone(), role))
                        .or_default()
                        .insert((wf, action));
                }
                c.app_roles.insert(app, roles);
                continue;
            }
            match WfDef::parse(&app, &text) {
                Ok(def) => {
                    c.workflows.insert((app, def.wf_uid.clone()), Arc::new(def));
                }
                Err(e) => {
                    tracing::error!(app = %app, path = %path, error = %e, "stored workflow is invalid")
                }
            }
        }
        c.hooks = hooks.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        c.modules = modules.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        Ok(c)
    }

    /// A datasource's hooks (none: an empty set).
    pub fn hooks(&self, app: &str, ds: &str) -> Arc<Hooks> {
        self.hooks
            .get(&(app.to_string(), ds.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// An app's cloud-function modules.
    pub fn modules(&self, app: &str) -> Option<Arc<script::Modules>> {
        self.modules.get(app).cloned()
    }

    /// Whether any of `roles` may call `app`'s `module`.`function`.
    pub fn allows_function(
        &self,
        roles: &[(String, String)],
        app: &str,
        module: &str,
        function: &str,
    ) -> bool {
        roles.iter().any(|(a, r)| {
            a == app
                && self
                    .functions
                    .get(&(a.clone(), r.clone()))
                    .is_some_and(|g| {
                        g.iter()
                            .any(|(m, f)| m == module && (f == function || f == "*"))
                    })
        })
    }

    /// The current definition of `app`'s workflow `wf_uid`.
    pub fn workflow(&self, app: &str, wf_uid: &str) -> Option<Arc<WfDef>> {
        self.workflows
            .get(&(app.to_string(), wf_uid.to_string()))
            .cloned()
    }

    /// Every workflow of every app.
    pub fn workflows(&self) -> impl Iterator<Item = &Arc<WfDef>> {
        self.workflows.values()
    }

    /// Whether any of `roles` grants `action` (`start`, `view`) on `app`'s workflow `wf_uid`.
    pub fn allows_workflow(
        &self,
        roles: &[(String, String)],
        app: &str,
        wf_uid: &str,
        action: &str,
    ) -> bool {
        roles.iter().any(|(a, r)| {
            a == app
                && self
                    .workflow_grants
                    .get(&(a.clone(), r.clone()))
                    .is_some_and(|g| g.contains(&(wf_uid.to_string(), action.to_string())))
        })
    }

    /// Every role of `app` (from its roles.json).
    pub fn app_roles(&self, app: &str) -> Vec<String> {
        self.app_roles.get(app).cloned().unwrap_or_default()
    }

    pub fn datasource(&self, app: &str, name: &str) -> Option<Arc<Datasource>> {
        self.datasources
            .get(&(app.to_string(), name.to_string()))
            .cloned()
    }

    /// Whether any of `roles` (pairs of app and role) grants `action` on `app`'s `ds`.
    pub fn allows(&self, roles: &[(String, String)], app: &str, ds: &str, action: Action) -> bool {
        roles.iter().any(|(a, r)| {
            a == app
                && self
                    .grants
                    .get(&(a.clone(), r.clone()))
                    .is_some_and(|g| g.contains(&(ds.to_string(), action)))
        })
    }

    /// Every datasource some of `roles` grants an action on, with the actions granted, ordered
    /// by app and name.
    pub fn usable(&self, roles: &[(String, String)]) -> Vec<(Arc<Datasource>, Vec<Action>)> {
        let mut out: Vec<(Arc<Datasource>, Vec<Action>)> = self
            .datasources
            .iter()
            .filter_map(|((app, name), ds)| {
                let actions: Vec<Action> = Action::ALL
                    .into_iter()
                    .filter(|a| self.allows(roles, app, name, *a))
                    .collect();
                (!actions.is_empty()).then(|| (ds.clone(), actions))
            })
            .collect();
        out.sort_by(|a, b| (&a.0.app_uid, &a.0.name).cmp(&(&b.0.app_uid, &b.0.name)));
        out
    }

    /// Every cloud function some of `roles` may call: `(app, moduleUri, function or "*")`,
    /// for modules that exist, sorted.
    pub fn usable_functions(&self, roles: &[(String, String)]) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = roles
            .iter()
            .filter_map(|(app, role)| {
                let grants = self.functions.get(&(app.clone(), role.clone()))?;
                let modules = self.modules.get(app)?;
                Some(
                    grants
                        .iter()
                        .filter(|(m, _)| modules.contains_key(m))
                        .map(|(m, f)| (app.clone(), m.clone(), f.clone()))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Finds datasource `name` for a user holding `roles`: in `app` when given, else in the apps
    /// where the user holds a role.
    pub fn resolve(&self, roles: &[(String, String)], app: Option<&str>, name: &str) -> Resolve {
        if let Some(app) = app {
            return match self.datasource(app, name) {
                Some(ds) if roles.iter().any(|(a, _)| a == app) => Resolve::Found(ds),
                _ => Resolve::Denied,
            };
        }
        let apps: Vec<&String> = self
            .apps_by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter(|app| roles.iter().any(|(a, _)| a == *app))
            .collect();
        match apps.as_slice() {
            [] => Resolve::Denied,
            [app] => self
                .datasource(app, name)
                .map_or(Resolve::Denied, Resolve::Found),
            many => Resolve::Ambiguous(many.iter().map(|s| s.to_string()).collect()),
        }
    }
}

/// The current catalog, swapped whole when metadata changes, with the metadata version it
/// was loaded at (`store::cluster`): a node finds a change made elsewhere by comparing it.
#[derive(Default)]
pub struct CatalogCell {
    current: RwLock<Arc<Catalog>>,
    /// The stored metadata version read before the current catalog was loaded.
    version: std::sync::atomic::AtomicI64,
    /// One load at a time: notifications and the periodic check may ask together.
    loading: tokio::sync::Mutex<()>,
}

impl CatalogCell {
    pub fn get(&self) -> Arc<Catalog> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub async fn reload(&self, store: &Store) -> store::Result<()> {
        let _one = self.loading.lock().await;
        self.load(store).await
    }

    /// Reloads if the stored metadata changed since the catalog was loaded; true if it did.
    pub async fn refresh(&self, store: &Store) -> store::Result<bool> {
        use std::sync::atomic::Ordering;
        let _one = self.loading.lock().await;
        if store.metadata_version().await? == self.version.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.load(store).await?;
        Ok(true)
    }

    async fn load(&self, store: &Store) -> store::Result<()> {
        use std::sync::atomic::Ordering;
        // Read before loading: a change committed during the load bumps it past this, and the
        // next check loads again.
        let version = store.metadata_version().await?;
        let fresh = Arc::new(Catalog::load(store).await?);
        if let Ok(mut c) = self.current.write() {
            *c = fresh;
        }
        self.version.store(version, Ordering::Release);
        Ok(())
    }
}
