//! `/v1/wf/*`: starting, watching and cancelling workflow instances (session auth and the
//! role's workflow grants), and the six callback APIs of running tasks (their token instead).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use store::workflow::{CallbackFields, Scope, iso_micros};

use crate::auth::guard::Authed;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::workflow::now_micros;

/// The largest value a callback may store (spec: 1 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StartBody {
    app_uid: String,
    wf_uid: String,
    #[serde(default)]
    input: Option<Json>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct InstanceBody {
    wf_inst_uid: String,
}

fn denied(app: &str, wf: &str) -> ApiError {
    ApiError::AccessDenied(format!(
        "Access Denied - workflow `{wf}` of app `{app}` is not available to you."
    ))
}

/// `POST /v1/wf/start`: `{"appUid", "wfUid", "input", "idempotencyKey"?}`.
#[utoipa::path(post, path = "/v1/wf/start", tag = "workflows",
    summary = "Start a workflow instance",
    request_body = StartBody,
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "`{status, wfInstUid, version}`", body = crate::api::openapi::StartedBody),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "No role grants `start` (or no such workflow)", body = crate::api::openapi::ErrorBody)))]
pub async fn post_start(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let b: StartBody = crate::api::parse_json(&body, false)?;
    let catalog = state.engine.catalog.get();
    // An unknown workflow is answered like one without a grant.
    let def = catalog
        .workflow(&b.app_uid, &b.wf_uid)
        .filter(|_| catalog.allows_workflow(&authed.roles, &b.app_uid, &b.wf_uid, "start"))
        .ok_or_else(|| denied(&b.app_uid, &b.wf_uid))?;
    if b.idempotency_key.as_deref().is_some_and(str::is_empty) {
        return Err(ApiError::BadRequest(
            "`idempotencyKey` must not be empty".into(),
        ));
    }
    let input = b.input.unwrap_or_else(|| json!({}));
    let (wf_inst_uid, version) = state
        .workflows
        .start(
            authed.org_uid(),
            authed.user_name(),
            &def,
            &input,
            b.idempotency_key.as_deref(),
            None,
        )
        .await?;
    Ok(axum::Json(
        json!({"status": "OK", "wfInstUid": wf_inst_uid, "version": version}),
    ))
}

/// The instance, if it exists in the caller's org and one of the caller's roles grants
/// `action` on its workflow: unknown is a 404, not granted a 403.
async fn granted_instance(
    state: &AppState,
    authed: &Authed,
    wf_inst_uid: &str,
    action: &str,
) -> ApiResult<store::workflow::InstanceRow> {
    let inst = state
        .store
        .wf_instance(wf_inst_uid)
        .await?
        .filter(|i| i.org_uid == authed.org_uid())
        .ok_or_else(|| ApiError::NotFound(format!("No workflow instance `{wf_inst_uid}`.")))?;
    let catalog = state.engine.catalog.get();
    if !catalog.allows_workflow(&authed.roles, &inst.app_uid, &inst.wf_uid, action) {
        return Err(denied(&inst.app_uid, &inst.wf_uid));
    }
    Ok(inst)
}

fn time(micros: Option<i64>) -> Json {
    micros.and_then(iso_micros).map_or(Json::Null, Json::String)
}

/// `POST /v1/wf/instance`: `{"wfInstUid"}` -> the instance with its executions.
#[utoipa::path(post, path = "/v1/wf/instance", tag = "workflows",
    summary = "An instance and its executions",
    request_body = InstanceBody,
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::InstanceAnswer),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "No role grants it", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such instance", body = crate::api::openapi::ErrorBody)))]
pub async fn post_instance(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let b: InstanceBody = crate::api::parse_json(&body, false)?;
    let inst = granted_instance(&state, &authed, &b.wf_inst_uid, "view").await?;
    let executions: Vec<Json> = state
        .store
        .wf_executions(&inst.wf_inst_uid)
        .await?
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("executionId".into(), e.execution_id.into());
            m.insert("nodeUid".into(), e.node_uid.into());
            m.insert("attempt".into(), e.attempt.into());
            m.insert("state".into(), e.state.into());
            m.insert("startedAt".into(), time(e.started_at));
            m.insert("finishedAt".into(), time(e.finished_at));
            if let Some(o) = e.output {
                m.insert("output".into(), o);
            }
            if let Some(err) = e.error {
                m.insert("error".into(), err.into());
            }
            Json::Object(m)
        })
        .collect();
    let mut i = Map::new();
    i.insert("wfUid".into(), inst.wf_uid.into());
    i.insert("wfInstUid".into(), inst.wf_inst_uid.into());
    i.insert("version".into(), inst.version.into());
    i.insert("state".into(), inst.state.into());
    i.insert("input".into(), inst.input);
    i.insert("vars".into(), inst.vars);
    i.insert("createdBy".into(), inst.created_by.into());
    i.insert("creationDate".into(), time(Some(inst.creation_date)));
    i.insert("lastUpdateDate".into(), time(Some(inst.last_update_date)));
    if let Some(e) = inst.error {
        i.insert("error".into(), e.into());
    }
    i.insert("executions".into(), Json::Array(executions));
    Ok(axum::Json(json!({"status": "OK", "instance": i})))
}

/// `POST /v1/wf/cancel`: `{"wfInstUid"}`; a running instance becomes `cancelled` (one that
/// already ended is left as it is, and the answer is the same).
#[utoipa::path(post, path = "/v1/wf/cancel", tag = "workflows",
    summary = "Cancel an instance",
    request_body = InstanceBody,
    security(("jwt" = [], "csrf" = [])),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::OkBody),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "No role grants it", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such instance", body = crate::api::openapi::ErrorBody)))]
pub async fn post_cancel(
    State(state): State<AppState>,
    authed: Authed,
    body: Bytes,
) -> ApiResult<axum::Json<Json>> {
    let b: InstanceBody = crate::api::parse_json(&body, false)?;
    let inst = granted_instance(&state, &authed, &b.wf_inst_uid, "start").await?;
    state
        .store
        .wf_cancel(&inst.wf_inst_uid, now_micros())
        .await?;
    Ok(axum::Json(json!({"status": "OK"})))
}

/// The documented 403 of a callback whose token is not valid for its fields, byte for byte.
fn invalid_token(token: &str) -> Response {
    let message = serde_json::to_string(&format!("Invalid token: `{token}`!"))
        .unwrap_or_else(|_| "\"Invalid token!\"".into());
    let body = format!(
        r#"{{"status": "ERROR", "code": 403, "title": "Invalid Request", "message": {message}}}"#
    );
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Increment,
}

/// A callback body's string field.
fn field<'b>(b: &'b Map<String, Json>, name: &str) -> ApiResult<&'b str> {
    b.get(name).and_then(Json::as_str).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid request body: `{name}`: a string is required"
        ))
    })
}

/// The six callbacks: one body shape, `(scope, op)` from the path.
async fn callback(state: AppState, body: Bytes, scope: Scope, op: Op) -> ApiResult<Response> {
    let b: Map<String, Json> = crate::api::parse_json(&body, false)?;
    let f = CallbackFields {
        token: field(&b, "token")?,
        wf_uid: field(&b, "wfUid")?,
        wf_inst_uid: field(&b, "wfInstUid")?,
        version: field(&b, "version")?,
        node_uid: field(&b, "nodeUid")?,
        execution_id: field(&b, "executionId")?,
    };
    let key = field(&b, "key")?;
    let now = now_micros();
    let answer = match op {
        Op::Put => {
            let Some(value) = b.get("value") else {
                return Err(ApiError::BadRequest(
                    "invalid request body: `value` is required".into(),
                ));
            };
            if value.to_string().len() > MAX_VALUE_BYTES {
                return Err(ApiError::PayloadTooLarge);
            }
            state.store.wf_put(&f, scope, key, value, now).await?
        }
        Op::Get => state.store.wf_get(&f, scope, key, now).await?,
        Op::Increment => state.store.wf_increment(&f, scope, key, now).await?,
    };
    Ok(match answer {
        store::workflow::Callback::InvalidToken => invalid_token(f.token),
        store::workflow::Callback::NotANumber => {
            return Err(ApiError::BadRequest(format!(
                "the value under `{key}` is not a 64-bit integer (or adding 1 would overflow it)"
            )));
        }
        store::workflow::Callback::Ok(value) => match op {
            Op::Put => axum::Json(json!({"status": "OK"})).into_response(),
            _ => axum::Json(json!({"status": "OK", "value": value})).into_response(),
        },
    })
}

#[utoipa::path(post, path = "/v1/wf/put", tag = "workflows",
    summary = "Task callback `put`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "A value over 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_put(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    callback(state, body, Scope::Workflow, Op::Put).await
}

#[utoipa::path(post, path = "/v1/wf/get", tag = "workflows",
    summary = "Task callback `get`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_get(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    callback(state, body, Scope::Workflow, Op::Get).await
}

#[utoipa::path(post, path = "/v1/wf/instancePut", tag = "workflows",
    summary = "Task callback `instancePut`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "A value over 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_instance_put(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    callback(state, body, Scope::Instance, Op::Put).await
}

#[utoipa::path(post, path = "/v1/wf/instanceGet", tag = "workflows",
    summary = "Task callback `instanceGet`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_instance_get(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    callback(state, body, Scope::Instance, Op::Get).await
}

#[utoipa::path(post, path = "/v1/wf/incrementAndGet", tag = "workflows",
    summary = "Task callback `incrementAndGet`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_increment_and_get(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    callback(state, body, Scope::Workflow, Op::Increment).await
}

#[utoipa::path(post, path = "/v1/wf/instanceIncrementAndGet", tag = "workflows",
    summary = "Task callback `instanceIncrementAndGet`",
    description = "Called by a running task with its token (no session).",
    request_body = crate::api::openapi::CallbackBody,
    security(()),
    responses(
        (status = 200, description = "OK", body = crate::api::openapi::ValueBody),
        (status = 400, description = "Invalid body (or a non-integer counter)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "`Invalid token`", body = crate::api::openapi::ErrorBody)))]
pub async fn post_instance_increment_and_get(
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    callback(state, body, Scope::Instance, Op::Increment).await
}
