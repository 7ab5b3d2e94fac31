//! The one HTTP error type and its single status mapping. Every error body is the platform's
//! envelope `{"code", "status": "ERROR", "title", "message"}`; internal detail is logged with the
//! request id and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::request_id;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// 403 with the documented title `Access Denied`.
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("The request body is larger than the server accepts.")]
    PayloadTooLarge,
    /// The body did not arrive in time; the connection is closed after the answer.
    #[error("The request body did not arrive in time.")]
    RequestTimeout,
    #[error("too many failed logins")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// 502: a service the server relies on for this request (an identity provider) failed;
    /// the message says which and how (no secrets in it).
    #[error("{0}")]
    BadGateway(String),
    /// 400 with the title `Script Error`: a script failed (its name and error in the message).
    #[error("{0}")]
    Script(String),
    /// 503: every script worker stayed busy.
    #[error("{0}")]
    Busy(String),
    /// Logged with the request id; the client sees only the id.
    #[error("internal: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The documented message for every failed login.
pub const LOGIN_DENIED: &str = "Access Denied - Invalid username and/or password!";

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::AccessDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Script(_) => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "Invalid Request",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::AccessDenied(_) => "Access Denied",
            ApiError::NotFound(_) => "Not Found",
            ApiError::MethodNotAllowed => "Method Not Allowed",
            ApiError::Conflict(_) => "Conflict",
            ApiError::PayloadTooLarge => "Payload Too Large",
            ApiError::RequestTimeout => "Request Timeout",
            ApiError::TooManyRequests { .. } => "Too Many Requests",
            ApiError::Unavailable(_) | ApiError::Busy(_) => "Service Unavailable",
            ApiError::BadGateway(_) => "Bad Gateway",
            ApiError::Script(_) => "Script Error",
            ApiError::Internal(_) => "Internal Error",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Internal(_) => format!(
                "The server failed to handle this request; quote request id {} when reporting it.",
                request_id::current().unwrap_or_else(|| "-".into())
            ),
            ApiError::Unavailable(_) => "The database is unavailable; try again shortly.".into(),
            ApiError::TooManyRequests { retry_after_secs } => {
                format!("Too many failed logins; try again in {retry_after_secs} seconds.")
            }
            ApiError::MethodNotAllowed => "This method is not allowed on this path.".into(),
            e => e.to_string(),
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Unavailable(detail) | store::StoreError::Corrupt(detail) => {
                ApiError::Unavailable(detail)
            }
            store::StoreError::Busy(detail) => {
                tracing::warn!(%detail, "a request waited too long for a database connection");
                ApiError::Busy("The server is busy; try again shortly.".into())
            }
            store::StoreError::Duplicate(_) => {
                ApiError::Conflict("A row with the same key already exists.".into())
            }
            store::StoreError::Constraint(detail) => {
                tracing::info!(?detail, "value rejected by the database");
                ApiError::BadRequest(
                    "A value was rejected by the database (type, length or a required value)."
                        .into(),
                )
            }
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::auth::password::PasswordError> for ApiError {
    fn from(e: crate::auth::password::PasswordError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::engine::Error> for ApiError {
    fn from(e: crate::engine::Error) -> Self {
        use crate::engine::Error as E;
        match e {
            E::Invalid(m) | E::User(m) => ApiError::BadRequest(m),
            E::Denied(m) => ApiError::AccessDenied(m),
            E::NotFound(m) => ApiError::NotFound(m),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Script(m) => ApiError::Script(m),
            E::Busy => ApiError::Busy("All script workers are busy; try again shortly.".into()),
            E::Store(e) => ApiError::from(e),
            E::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) | ApiError::Unavailable(detail) => {
                tracing::error!(
                    request_id = request_id::current().as_deref(),
                    ?detail,
                    "request failed"
                )
            }
            _ => {}
        }
        let body = json!({
            "code": status.as_u16(),
            "status": "ERROR",
            "title": self.title(),
            "message": self.message(),
        });
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::RequestTimeout = self {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::TooManyRequests { retry_after_secs } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
