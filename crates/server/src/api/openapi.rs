//! `GET /v1/openapi.json` (every endpoint) and `GET /v1/apps/<appUid>/openapi.json` (one
//! app's datasources, as the caller may use them).
//!
//! The server-wide document is not written by hand: each route is registered in
//! [`crate::router`] through `utoipa_axum::routes!` from the `#[utoipa::path]` beside its
//! handler, so the router and the document come from one list and cannot disagree on paths or
//! methods. [`finish`] then adds what every operation shares (the error envelope as the
//! `default` response, the guard's 401), once, instead of on each handler.
//!
//! The types below exist for the document only: they describe bodies that handlers build as
//! JSON trees (rows are data, not Rust types). The schemathesis run of `scripts/test.sh`
//! checks every answer against them.

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value as Json, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Components, InfoBuilder, OpenApi, OpenApiBuilder, Tag};
use utoipa::{PartialSchema, ToSchema};

use crate::api::catalog::{describe, visible_attributes};
use crate::auth::guard::Authed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The error envelope: every error of every endpoint has this shape.
#[derive(ToSchema)]
#[schema(title = "Error")]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Equals the HTTP status.
    pub code: u16,
    #[schema(pattern = "^ERROR$")]
    pub status: String,
    /// `Invalid Request`, `Unauthorized`, `Access Denied`, `Not Found`, `Conflict`, ...
    pub title: String,
    /// A sentence for a human; never internal detail (a 500 quotes the request id).
    pub message: String,
}

/// `{"status": "OK"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OkBody {
    #[schema(pattern = "^OK$")]
    pub status: String,
}

/// One filter item: `{"<attribute>": {"<operator>": value}}`, or a nested
/// `{"or": [...]}`, `{"and": [...]}`, `{"not": {...}}`.
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct FilterItem(Map<String, Json>);

/// A query (specification section 4; operators in docs/query-language.md).
#[derive(ToSchema)]
#[schema(as = QueryObject)]
#[allow(non_snake_case, dead_code)]
pub struct QueryObject {
    /// Items ANDed together.
    pub filter: Option<Vec<FilterItem>>,
    /// `{"attr": 1}`: the attributes to return.
    #[schema(value_type = Option<Object>)]
    pub projection: Option<Map<String, Json>>,
    pub selectAttributeCodeList: Option<Vec<String>>,
    /// `{"attr": 1 | -1}` in key order.
    #[schema(value_type = Option<Object>)]
    pub sort: Option<Map<String, Json>>,
    #[schema(minimum = 0)]
    pub offset: Option<u64>,
    /// Default 100, at most the server's maximum (10,000).
    #[schema(minimum = 0)]
    pub limit: Option<u64>,
    /// Also answer `totalCount`, ignoring offset and limit.
    pub count: Option<bool>,
    pub fetchDistinct: Option<bool>,
    pub groupByAttributeCodeList: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub aggregateList: Option<Vec<Json>>,
    /// Values of the datasource's default filter's `:name` parameters.
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Json>>,
    /// The parent record, for scripts.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Json>>,
}

/// A posted row: `_rs` (`I`, `U`, `D`) and attribute values. `U` and `D` rows carry the whole
/// primary key and `lastUpdateDate` as last read.
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct PostRow(Map<String, Json>);

/// One alias of a `/v1/api` body: `ds` with either `query` (a query) or `data` (a post).
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct AliasRequest {
    /// The datasource's name.
    pub ds: String,
    /// The app, when the name exists in several of the caller's apps.
    pub appUid: Option<String>,
    pub query: Option<QueryObject>,
    pub data: Option<Vec<PostRow>>,
}

/// The `/v1/api` body: client-chosen aliases (at most 64), each a query or a post.
#[derive(ToSchema)]
#[schema(value_type = HashMap<String, AliasRequest>)]
#[allow(dead_code)]
pub struct ApiRequest(std::collections::HashMap<String, AliasRequest>);

/// One alias's answer: a query's (`data`, `queryElapsed`, `rowsFetched`, `totalCount` when
/// counted) or a post's (`data`, `postElapsed`, `rowsPosted`). Rows carry `"_rs": "Q"`.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct AliasResult {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Json>,
    /// Milliseconds (queries).
    pub queryElapsed: Option<u64>,
    pub rowsFetched: Option<u64>,
    pub totalCount: Option<u64>,
    /// Milliseconds (posts).
    pub postElapsed: Option<u64>,
    pub rowsPosted: Option<u64>,
}

/// A statement of the SQL echo.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct DebugStatement {
    pub sql: String,
    /// The bind values in placeholder order (`<redacted>` for secrets).
    #[schema(value_type = Vec<Object>)]
    pub binds: Vec<Json>,
    pub elapsedMs: f64,
    /// Rows returned or affected; null when the statement failed.
    pub rows: Option<u64>,
}

/// `debug` of an answer: every statement the request ran, in order (`?debug=sql`, developers).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Debug {
    pub statements: Vec<DebugStatement>,
}

/// The `/v1/api` answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ApiResponse {
    #[schema(pattern = "^OK$")]
    pub status: String,
    /// Alias -> result, in request order.
    pub data: std::collections::HashMap<String, AliasResult>,
    pub debug: Option<Debug>,
}

/// A cloud function's answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FunctionResponse {
    #[schema(pattern = "^OK$")]
    pub status: String,
    /// The function's resolved return value.
    #[schema(value_type = Object)]
    pub data: Option<Json>,
    pub debug: Option<Debug>,
}

/// The login answer (`jwt` only from `/v1/auth`, `roles` only from `/v1/session`).
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct SessionBody {
    pub orgUid: String,
    pub sessionId: String,
    pub userName: String,
    pub displayName: Option<String>,
    pub emailAddress: Option<String>,
    pub csrf: String,
    pub jwt: Option<String>,
    /// appUid -> roleUids.
    pub roles: Option<std::collections::HashMap<String, Vec<String>>>,
    #[schema(pattern = "^OK$")]
    pub status: String,
}

/// `GET /v1/status`.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct StatusBody {
    /// `OK`, or `ERROR` (with a 503) when the database is unreachable.
    pub status: String,
    pub version: String,
    pub uptimeSeconds: u64,
    pub database: String,
    /// `OK`, `DISABLED` or `ERROR`.
    pub cache: String,
}

/// A patch report (docs/patches.md): `applies`, `applied`, `problems`, `changes` per kind.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct PatchReport {
    #[schema(pattern = "^OK$")]
    pub status: String,
    pub appUid: String,
    pub applies: bool,
    pub applied: bool,
    pub problems: Vec<String>,
    #[schema(value_type = Object)]
    pub changes: Json,
}

/// `/v1/wf/start`'s answer.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct StartedBody {
    #[schema(pattern = "^OK$")]
    pub status: String,
    pub wfInstUid: String,
    pub version: String,
}

/// `/v1/wf/instance`'s answer: the instance with its executions (specification section 7).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct InstanceAnswer {
    #[schema(pattern = "^OK$")]
    pub status: String,
    #[schema(value_type = Object)]
    pub instance: Json,
}

/// A patch: the app directory zipped.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Zip(Vec<u8>);

/// The body of the six workflow callbacks (`value` for the puts only).
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct CallbackBody {
    pub wfUid: String,
    pub wfInstUid: String,
    pub version: String,
    pub token: String,
    pub nodeUid: String,
    pub executionId: String,
    pub key: String,
    #[schema(value_type = Object)]
    pub value: Option<Json>,
}

/// A callback's answer (`value` for the reads and increments).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ValueBody {
    #[schema(pattern = "^OK$")]
    pub status: String,
    #[schema(value_type = Object)]
    pub value: Option<Json>,
}

/// The document's fixed parts: info, security schemes, tags and the shared schemas.
pub fn base() -> OpenApi {
    let mut components = Components::new();
    components.add_security_scheme(
        "jwt",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "The `jwt` of the login answer (`Authentication` is accepted too).",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "csrf",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "csrf",
            "The session's `csrf` (or the header `X-CSRF-Token`).",
        ))),
    );
    components.add_security_scheme(
        "token",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            "`Token <base64(userName:password)>`, or an API key and secret the same way.",
        ))),
    );
    let tag = |name: &str, text: &str| {
        let mut t = Tag::new(name);
        t.description = Some(text.into());
        t
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("cloudio")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "An open CloudIO Platform server. Every error is the `Error` envelope. \
                     Datasource schemas per app: `/v1/apps/{appUid}/openapi.json`.",
                ))
                .build(),
        )
        .components(Some(components))
        .tags(Some(vec![
            tag("auth", "Login, logout, the session"),
            tag(
                "sso",
                "Single sign-on (OpenID Connect) and its one-time code",
            ),
            tag(
                "data",
                "Datasources: query and post; what the caller may use",
            ),
            tag("functions", "Cloud functions"),
            tag(
                "workflows",
                "Starting and watching workflows; the callbacks of tasks",
            ),
            tag("patches", "Exporting, verifying and applying apps"),
            tag("status", "Status, metrics, this document, the playground"),
        ]))
        .build()
}

/// Adds to every operation what they all share: the envelope as the `default` response, and
/// 401 where the session guard runs; rewrites axum's `{*rest}` captures as plain parameters.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let components = doc.components.get_or_insert_with(Components::new);
    for (name, schema) in [("Error", ErrorBody::schema()), ("Ok", OkBody::schema())] {
        components.schemas.insert(name.into(), schema);
    }
    let envelope = |text: &str| {
        utoipa::openapi::ResponseBuilder::new()
            .description(text)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("Error")))
                    .build(),
            )
            .build()
    };
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        let path = path.replace("{*", "{");
        for op in operations(&mut item) {
            let guarded = op.security.as_ref().is_some_and(|reqs| {
                serde_json::to_value(reqs)
                    .map(|v| v.to_string().contains("\"jwt\""))
                    .unwrap_or(false)
            });
            let responses = &mut op.responses.responses;
            if guarded && !responses.contains_key("401") {
                responses.insert(
                    "401".into(),
                    envelope("No valid session: missing, invalid or expired JWT, wrong csrf")
                        .into(),
                );
            }
            responses.insert(
                "default".into(),
                envelope(
                    "Any other error, in the envelope: 400 malformed, 405, 408 body too slow, \
                     413 body too large, 500 (the message quotes the request id), 503",
                )
                .into(),
            );
        }
        doc.paths.paths.insert(path, item);
    }
    doc
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The server-wide document, rendered once.
fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let doc = crate::router::openapi();
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
    })
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "status",
    summary = "This document",
    description = "OpenAPI 3.1 for every endpoint, made from the route table. No authentication.",
    security(()),
    responses((status = 200, description = "The document", content_type = "application/json", body = Object)))]
pub async fn get_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// `GET /v1/apps/<appUid>/openapi.json`.
#[utoipa::path(get, path = "/v1/apps/{app}/openapi.json", tag = "data",
    summary = "One app's datasources as the caller may use them",
    description = "OpenAPI 3.1: per datasource the caller's roles grant an action on, a row schema (attributes and their types), a filter schema (per attribute, the operators its type's family accepts) and a query schema; `x-cloudio` carries the actions, key and lock attribute. 404 when the caller may use nothing of the app (or it does not exist).",
    params(("app" = String, Path, description = "The appUid", example = "demo")),
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "The app's document", content_type = "application/json", body = Object),
        (status = 404, description = "No such app among the caller's", body = ErrorBody)))]
pub async fn get_app_openapi(
    State(state): State<AppState>,
    Path(app): Path<String>,
    authed: Authed,
) -> ApiResult<axum::Json<Json>> {
    let catalog = state.engine.catalog.get();
    let usable: Vec<_> = catalog
        .usable(&authed.roles)
        .into_iter()
        .filter(|(ds, _)| ds.app_uid == app)
        .collect();
    if usable.is_empty() {
        return Err(ApiError::NotFound(format!(
            "No datasource of app `{app}` is available to you."
        )));
    }
    let max_limit = state.engine.settings.max_limit;
    Ok(axum::Json(app_document(&app, &usable, max_limit)))
}

/// The JSON Schema of one attribute's values.
fn value_schema(ty: query::AttrType, nullable: bool) -> Json {
    use query::AttrType as T;
    let mut s = match ty {
        T::String | T::Phone | T::UserId => json!({"type": "string"}),
        T::Email => json!({"type": "string", "format": "email"}),
        T::Url => json!({"type": "string", "format": "uri"}),
        T::Yn => json!({"type": "string", "enum": ["Y", "N"]}),
        T::Integer => json!({"type": "integer", "format": "int64",
            "minimum": i64::MIN, "maximum": i64::MAX}),
        T::Decimal | T::Double | T::Percent => json!({"type": "number"}),
        T::Date => json!({"type": "string", "format": "date"}),
        T::DateTime => json!({"type": "string", "format": "date-time"}),
        T::Boolean => json!({"type": "boolean"}),
        T::Json => json!({}),
    };
    if nullable && let Some(Json::String(t)) = s.get("type").cloned() {
        s["type"] = json!([t, "null"]);
    }
    s
}

/// The schema of an operator's value for an attribute of type `ty`.
fn operand_schema(ty: query::AttrType, op: query::Op) -> Json {
    use query::Op;
    let v = value_schema(ty, false);
    match op {
        Op::In | Op::Nin | Op::HasAll | Op::HasAny | Op::NotAny => {
            json!({"type": "array", "items": v})
        }
        Op::Bn => json!({"type": "array", "items": v, "minItems": 2, "maxItems": 2}),
        Op::LastNDays | Op::NextNDays => json!({"type": "integer", "minimum": 0}),
        Op::Empty | Op::NotEmpty | Op::Null | Op::NotNull | Op::Today => {
            json!({"description": "value ignored"})
        }
        _ => v,
    }
}

/// The per-app document.
fn app_document(
    app: &str,
    usable: &[(
        std::sync::Arc<query::Datasource>,
        Vec<crate::engine::Action>,
    )],
    max_limit: u64,
) -> Json {
    let mut schemas = Map::new();
    let mut names = Vec::new();
    for (ds, actions) in usable {
        let n = &ds.name;
        names.push(json!(n));
        let mut row_props = Map::new();
        let mut filter_props = Map::new();
        for a in visible_attributes(ds, actions) {
            let mut p = value_schema(a.ty, !ds.primary_key.contains(&a.code));
            p["x-cloudio-type"] = json!(a.ty.name());
            if let Some(m) = a.max_length {
                p["maxLength"] = json!(m);
            }
            if a.write_only {
                p["writeOnly"] = json!(true);
            }
            if a.who || !a.updatable {
                p["readOnly"] = json!(a.who);
            }
            row_props.insert(a.code.clone(), p);
            if a.queryable && !a.write_only {
                let mut ops = Map::new();
                for op in a.ty.family().operators() {
                    ops.insert(op.name().to_string(), operand_schema(a.ty, *op));
                }
                filter_props.insert(
                    a.code.clone(),
                    json!({
                        "type": "object",
                        "description": format!("{} ({} family)", a.ty.name(), a.ty.family().name()),
                        "properties": ops,
                        "additionalProperties": false,
                        "minProperties": 1,
                    }),
                );
            }
        }
        let desc = describe(ds, actions);
        schemas.insert(
            format!("{n}Row"),
            json!({
                "type": "object",
                "description": format!("A row of `{n}` (app `{app}`)."),
                "properties": row_props,
                "x-cloudio": {
                    "actions": desc.actions,
                    "primaryKey": desc.primary_key,
                    "keyGeneration": desc.key_generation,
                    "lockAttribute": desc.lock_attribute,
                },
            }),
        );
        let sortable: Vec<&String> = filter_props.keys().collect();
        schemas.insert(
            format!("{n}Filter"),
            json!({
                "description": format!("A filter item of `{n}`: one attribute and its operators, or a nesting."),
                "oneOf": [
                    {"type": "object", "properties": filter_props, "additionalProperties": false,
                     "minProperties": 1},
                    {"type": "object", "properties": {"or": {"type": "array", "items": {"$ref": format!("#/components/schemas/{n}Filter")}}},
                     "required": ["or"], "additionalProperties": false},
                    {"type": "object", "properties": {"and": {"type": "array", "items": {"$ref": format!("#/components/schemas/{n}Filter")}}},
                     "required": ["and"], "additionalProperties": false},
                    {"type": "object", "properties": {"not": {"$ref": format!("#/components/schemas/{n}Filter")}},
                     "required": ["not"], "additionalProperties": false},
                ],
            }),
        );
        let sort_props: Map<String, Json> = sortable
            .iter()
            .map(|c| ((*c).clone(), json!({"enum": [1, -1]})))
            .collect();
        schemas.insert(
            format!("{n}Query"),
            json!({
                "type": "object",
                "properties": {
                    "filter": {"type": "array", "items": {"$ref": format!("#/components/schemas/{n}Filter")}},
                    "sort": {"type": "object", "properties": sort_props, "additionalProperties": false},
                    "projection": {"type": "object", "additionalProperties": {"enum": [1]}},
                    "offset": {"type": "integer", "minimum": 0},
                    "limit": {"type": "integer", "minimum": 0, "maximum": max_limit},
                    "count": {"type": "boolean"},
                },
            }),
        );
    }
    // `POST /v1/api` for this app's datasources: each alias one of them, queried or posted.
    let aliases: Vec<Json> = usable
        .iter()
        .flat_map(|(ds, actions)| {
            let n = &ds.name;
            let base = |extra: (&str, Json)| {
                json!({
                    "type": "object",
                    "properties": {"ds": {"const": n}, "appUid": {"const": app}, extra.0: extra.1},
                    "required": ["ds", extra.0],
                    "additionalProperties": false,
                })
            };
            let mut out = Vec::new();
            if actions.contains(&crate::engine::Action::Query) {
                out.push(base((
                    "query",
                    json!({"$ref": format!("#/components/schemas/{n}Query")}),
                )));
            }
            let ops: Vec<&str> = [
                (crate::engine::Action::Insert, "I"),
                (crate::engine::Action::Update, "U"),
                (crate::engine::Action::Delete, "D"),
            ]
            .iter()
            .filter(|(a, _)| actions.contains(a))
            .map(|(_, code)| *code)
            .collect();
            if !ops.is_empty() {
                let row = json!({"allOf": [
                    {"$ref": format!("#/components/schemas/{n}Row")},
                    {"type": "object", "properties": {"_rs": {"enum": ops}}, "required": ["_rs"]},
                ]});
                out.push(base(("data", json!({"type": "array", "items": row}))));
            }
            out
        })
        .collect();
    let api = json!({"post": {
        "summary": format!("Query and post the datasources of `{app}`"),
        "description": "The server-wide description of this endpoint, its answers and errors is in `/v1/openapi.json`.",
        "operationId": "api",
        "security": [{"jwt": [], "csrf": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "object",
            "additionalProperties": {"oneOf": aliases},
            "minProperties": 1,
        }}}},
        "responses": {
            "200": {"description": "Each alias's rows (see `/v1/openapi.json`)",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["status", "data"]}}}},
            "default": {"description": "An error, in the envelope",
                        "content": {"application/json": {"schema": {"type": "object",
                            "required": ["code", "status", "title", "message"]}}}},
        },
    }});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("cloudio app `{app}`"),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The datasources of this app the caller may use, queried and posted through `POST /v1/api` (see `/v1/openapi.json`).",
        },
        "paths": {"/v1/api": api},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "csrf": {"type": "apiKey", "in": "query", "name": "csrf"},
            },
        },
        "x-cloudio-datasources": names,
    })
}
