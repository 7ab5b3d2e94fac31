//! The in-memory metadata catalog: every datasource and every grant, so a request costs no
//! metadata round trip. Rebuilt from the platform tables whenever metadata changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use query::{Datasource, DatasourceDef};
use store::Store;

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

#[derive(Debug, Default)]
pub struct Catalog {
    datasources: HashMap<(String, String), Arc<Datasource>>,
    /// datasource name -> apps that define it
    apps_by_name: HashMap<String, Vec<String>>,
    /// (app, role) -> (datasource, action)
    grants: HashMap<(String, String), HashSet<(String, Action)>>,
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
        Ok(c)
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

/// The current catalog, swapped whole when metadata changes.
#[derive(Default)]
pub struct CatalogCell(RwLock<Arc<Catalog>>);

impl CatalogCell {
    pub fn get(&self) -> Arc<Catalog> {
        self.0.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub async fn reload(&self, store: &Store) -> store::Result<()> {
        let fresh = Arc::new(Catalog::load(store).await?);
        if let Ok(mut c) = self.0.write() {
            *c = fresh;
        }
        Ok(())
    }
}
