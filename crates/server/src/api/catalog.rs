//! `GET /v1/catalog`: what the caller may use, described for a client that builds requests
//! (the playground): each datasource with its attributes, their types and the filter operators
//! of each type's family, and the cloud functions the caller's roles grant.
//!
//! The descriptions are made from the same metadata the engine compiles against, and the
//! operator lists from [`query::Family::operators`], which a test holds equal to the compiler's.

use axum::Json;
use axum::extract::State;
use query::{Attribute, Datasource, KeyGeneration, SortDir};
use serde::Serialize;
use serde_json::{Map, Value as JsonValue, json};
use utoipa::ToSchema;

use crate::auth::guard::Authed;
use crate::engine::Action;
use crate::error::ApiResult;
use crate::state::AppState;

/// The attribute every `U`/`D` row must carry, as last read (the optimistic lock).
pub const LOCK_ATTRIBUTE: &str = "lastUpdateDate";

/// One attribute as a client sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttributeDesc {
    /// The attribute code used on the wire.
    pub code: String,
    /// `String`, `Email`, `Integer`, `Date`, ... (specification section 1).
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// `string`, `number`, `date`, `boolean` or `json`: which filter operators apply.
    pub family: &'static str,
    /// The filter operators this attribute accepts (none when it cannot be filtered).
    pub operators: Vec<&'static str>,
    pub required: bool,
    /// Whether an update may change it (never the key's, never WHO attributes).
    pub updatable: bool,
    /// Whether it may be filtered, sorted and is returned.
    pub queryable: bool,
    pub primary_key: bool,
    /// One of the four audit attributes the server fills.
    pub who: bool,
    /// Written, never returned (e.g. a password).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub write_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

pub fn describe_attribute(ds: &Datasource, a: &Attribute) -> AttributeDesc {
    let readable = a.queryable && !a.write_only;
    let family = a.ty.family();
    AttributeDesc {
        code: a.code.clone(),
        ty: a.ty.name(),
        family: family.name(),
        operators: if readable {
            family.operators().iter().map(|o| o.name()).collect()
        } else {
            Vec::new()
        },
        required: a.required,
        updatable: a.updatable && !a.who && !ds.primary_key.contains(&a.code),
        queryable: readable,
        primary_key: ds.primary_key.contains(&a.code),
        who: a.who,
        write_only: a.write_only,
        max_length: a.max_length,
    }
}

/// The attributes a caller granted `actions` may see: readable ones always; write-only and
/// non-queryable ones only to a caller who may insert or update (they exist for writing), since
/// to a reader they must look like attributes that do not exist.
pub fn visible_attributes<'d>(
    ds: &'d Datasource,
    actions: &[Action],
) -> impl Iterator<Item = &'d Attribute> {
    let writer = actions
        .iter()
        .any(|a| matches!(a, Action::Insert | Action::Update));
    ds.attributes
        .iter()
        .filter(move |a| writer || (a.queryable && !a.write_only))
}

/// A datasource as a client sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasourceDesc {
    pub app_uid: String,
    pub name: String,
    /// The actions the caller's roles grant: `query`, `insert`, `update`, `delete`.
    pub actions: Vec<&'static str>,
    pub primary_key: Vec<String>,
    /// `auto`, `uuid` or `none` (the client gives the key).
    pub key_generation: &'static str,
    /// The attribute `U` and `D` rows must carry as last read: the optimistic lock.
    pub lock_attribute: &'static str,
    /// The sort used when a query gives none, `{"attr": 1 | -1}`.
    #[schema(value_type = Object)]
    pub default_sort: Map<String, JsonValue>,
    pub attributes: Vec<AttributeDesc>,
}

pub fn describe(ds: &Datasource, actions: &[Action]) -> DatasourceDesc {
    let key_generation = match ds.key_generation {
        KeyGeneration::Auto => "auto",
        KeyGeneration::Uuid => "uuid",
        KeyGeneration::None => "none",
    };
    let mut sort = Map::new();
    for (code, dir) in &ds.default_sort {
        sort.insert(
            code.clone(),
            json!(if *dir == SortDir::Asc { 1 } else { -1 }),
        );
    }
    DatasourceDesc {
        app_uid: ds.app_uid.clone(),
        name: ds.name.clone(),
        actions: actions.iter().map(|a| a.name()).collect(),
        primary_key: ds.primary_key.clone(),
        key_generation,
        lock_attribute: LOCK_ATTRIBUTE,
        default_sort: sort,
        attributes: visible_attributes(ds, actions)
            .map(|a| describe_attribute(ds, a))
            .collect(),
    }
}

/// A cloud function the caller may call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDesc {
    pub app_uid: String,
    pub module: String,
    /// A function name, or `*`: every export of the module.
    pub function: String,
}

/// The answer of `GET /v1/catalog`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogBody {
    #[schema(pattern = "^OK$")]
    pub status: &'static str,
    pub user_name: String,
    /// Whether the caller may ask for the SQL echo (`?debug=sql`).
    pub developer: bool,
    pub datasources: Vec<DatasourceDesc>,
    pub functions: Vec<FunctionDesc>,
}

/// `GET /v1/catalog`.
#[utoipa::path(get, path = "/v1/catalog", tag = "data",
    summary = "What the caller may use",
    description = "Every datasource the caller's roles grant an action on, with its attributes, their types and the filter operators each accepts; the cloud functions granted. Ours (the playground reads it).",
    security(("jwt" = [], "csrf" = [])),
    responses((status = 200, description = "What the caller may use", body = CatalogBody)))]
pub async fn get_catalog(
    State(state): State<AppState>,
    authed: Authed,
) -> ApiResult<Json<CatalogBody>> {
    let catalog = state.engine.catalog.get();
    let datasources = catalog
        .usable(&authed.roles)
        .iter()
        .map(|(ds, actions)| describe(ds, actions))
        .collect();
    let functions = catalog
        .usable_functions(&authed.roles)
        .into_iter()
        .map(|(app_uid, module, function)| FunctionDesc {
            app_uid,
            module,
            function,
        })
        .collect();
    Ok(Json(CatalogBody {
        status: "OK",
        user_name: authed.user_name().to_string(),
        developer: super::is_developer(&authed),
        datasources,
        functions,
    }))
}
