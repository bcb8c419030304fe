//! The one API error type: HTTP status, stable `snake_case` code, user-safe message. Internal
//! causes are logged with an error id that is also returned, never the cause itself.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Denial, Error, ErrorKind};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to send as `Retry-After` (with 429 and 503).
    pub retry_after_secs: Option<u32>,
}

/// Error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `name_taken`, `invalid_body`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// Tells the client when to try again (`Retry-After`).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in, or give a valid API key (Authorization: Bearer <key>)",
        )
    }
    /// 413 `payload_too_large`: the body is over `limit` bytes.
    pub fn payload_too_large(limit: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }
    /// The answer to a body that could not be read: 413 past the size limit, else 400.
    pub fn unreadable_body(e: axum::Error, limit: usize) -> Self {
        if is_length_limit(&e) {
            Self::payload_too_large(limit)
        } else {
            Self::bad_request("invalid_body", format!("cannot read the body: {e}"))
        }
    }
    /// Logs the cause under a fresh error id and returns a 500 that names only the id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(error_id = %id, error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (error id {id}; the details are in the server log)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_secs {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

impl From<Error> for ApiError {
    /// The status follows the error's kind; the code is the error's own.
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::QueueFull => StatusCode::CONFLICT,
            // A cursor is not a field of the body: the request itself is malformed.
            ErrorKind::Invalid if matches!(e, Error::BadCursor) => StatusCode::BAD_REQUEST,
            ErrorKind::Invalid | ErrorKind::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Denied if matches!(e, Error::Denied(Denial::InvalidLogin)) => {
                StatusCode::UNAUTHORIZED
            }
            ErrorKind::Denied => StatusCode::FORBIDDEN,
            ErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Unavailable | ErrorKind::Internal => return ApiError::internal(e),
        };
        let retry = match e {
            Error::Throttled {
                retry_after_secs, ..
            } => Some(retry_after_secs),
            _ => None,
        };
        let mut api = ApiError::new(status, e.code(), e.to_string());
        api.retry_after_secs = retry;
        api
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            // A body past the limit (`DefaultBodyLimit`, 2 MiB) is 413, not a bad body.
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                other.body_text(),
            ),
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                r.body_text(),
            )
        } else {
            ApiError::bad_request("invalid_body", r.body_text())
        }
    }
}

/// Whether reading a body failed because it was over its size limit.
pub fn is_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_id", r.body_text())
    }
}

/// A JSON request body whose rejections use our error format. Every body of the API is a JSON
/// object: anything else is refused with 400 `invalid_body` (serde would otherwise read a
/// struct from an array of its fields, `[null, null]`). Integral floats fill integer fields
/// (`json`).
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        if !v.is_object() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        super::json::from_value(v).map(ApiJson).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

/// The raw body (`Bytes`) whose rejections use our error format.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(ApiError::from)
    }
}

/// `Query<T>` whose rejections use our error format.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Path<T>` whose rejections use our error format.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);
