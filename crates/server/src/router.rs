//! The route table: every endpoint of the server, in one place.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{auth, catalog, data, functions, openapi, patches, playground, sso, status, wf};
use crate::error::ApiError;
use crate::request_id;
use crate::state::AppState;

/// Every endpoint, each registered from the `#[utoipa::path]` beside its handler: the router
/// and `/v1/openapi.json` are made from this one list. (A plain `.route(...)` here would serve
/// an undocumented endpoint; the OpenAPI test sends a request to every documented operation and
/// reads this file for any such call.)
fn table() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(auth::post_auth))
        .routes(routes!(auth::post_logout))
        .routes(routes!(auth::get_session))
        .routes(routes!(sso::post_exchange))
        .routes(routes!(sso::get_oidc_login))
        .routes(routes!(sso::get_oidc_callback))
        .routes(routes!(sso::get_saml_login))
        .routes(routes!(sso::post_saml_acs))
        .routes(routes!(sso::get_saml_metadata))
        .routes(routes!(catalog::get_catalog))
        .routes(routes!(data::post_api))
        .routes(routes!(functions::post_function))
        .routes(routes!(patches::get_patch, patches::post_patch))
        .routes(routes!(patches::post_patch_verify))
        .routes(routes!(openapi::get_app_openapi))
        .routes(routes!(wf::post_start))
        .routes(routes!(wf::post_instance))
        .routes(routes!(wf::post_cancel))
        .routes(routes!(wf::post_put))
        .routes(routes!(wf::post_get))
        .routes(routes!(wf::post_instance_put))
        .routes(routes!(wf::post_instance_get))
        .routes(routes!(wf::post_increment_and_get))
        .routes(routes!(wf::post_instance_increment_and_get))
        .routes(routes!(status::get_status))
        .routes(routes!(status::get_metrics))
        .routes(routes!(openapi::get_openapi))
        .routes(routes!(playground::get_root))
        .routes(routes!(playground::get_playground))
}

/// Every endpoint.
pub fn routes() -> Router<AppState> {
    table().split_for_parts().0
}

/// The OpenAPI document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(table().into_openapi())
}

/// The routes with the cross-cutting layers: request id (outermost), metrics, reading the body,
/// the in-flight limit, panic catching, the error envelope for framework-made errors, and the
/// body limit.
pub fn app(state: AppState, routes: Router<AppState>) -> Router {
    let limit = state.config.body_limit_bytes;
    let inflight = state.config.max_inflight_requests;
    routes
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(envelope))
        .layer(CatchPanicLayer::custom(on_panic))
        // A request waiting for its turn holds its head and body, not a handler.
        .layer(GlobalConcurrencyLimitLayer::new(inflight))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::middleware,
        ))
        .layer(middleware::from_fn(request_id::middleware))
        .with_state(state)
}

/// Reads the whole body (up to the limit) before the request takes an in-flight slot: a client
/// that sends its body slowly then holds its connection, never a slot other requests need; one
/// that takes longer than `body_read_timeout_secs` gets a 408 and the connection is closed.
async fn read_body(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limit = state.config.body_limit_bytes;
    let timeout = Duration::from_secs(state.config.body_read_timeout_secs);
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(timeout, http_body_util::Limited::new(body, limit).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge);
        }
        Ok(Err(e)) => return Err(ApiError::BadRequest(format!("cannot read the body: {e}"))),
        Err(_) => {
            state
                .metrics
                .body_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::RequestTimeout);
        }
    };
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

async fn fallback() -> ApiError {
    ApiError::NotFound("No such endpoint.".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn on_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    ApiError::Internal(format!("panic: {detail}")).into_response()
}

/// Rewrites error responses made by the framework (extractor rejections such as 413 or 415,
/// which are plain text) into the platform's envelope, so every error has one shape.
async fn envelope(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let err = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::NOT_FOUND => ApiError::NotFound("No such endpoint.".into()),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::BadRequest(if text.is_empty() {
            "Invalid request.".into()
        } else {
            text
        }),
    };
    let mut out = err.into_response();
    if status != out.status() {
        // Keep the framework's status (e.g. 415) with the envelope's shape.
        *out.status_mut() = status;
        let body = serde_json::json!({
            "code": status.as_u16(), "status": "ERROR",
            "title": status.canonical_reason().unwrap_or("Error"),
            "message": "The request could not be processed.",
        });
        *out.body_mut() = Body::from(body.to_string());
    }
    out
}

/// How long in-flight requests may take to finish after a shutdown signal.
pub fn grace(state: &AppState) -> Duration {
    Duration::from_secs(state.config.shutdown_grace_secs)
}
