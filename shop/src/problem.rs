//! HTTP errors as `application/problem+json` (RFC 9457). Internals never leak: an
//! unexpected error is logged with its chain and answered with a bare 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An RFC 9457 problem: what went wrong, for a person and a program.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `https://eddy.dev/problems/invalid-quantity`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<eddy_core::Error> for ApiError {
    fn from(error: eddy_core::Error) -> Self {
        if error.is_transient() {
            ApiError::Unavailable("the database is busy; try again".to_owned())
        } else {
            ApiError::Unexpected(anyhow::Error::new(error))
        }
    }
}

/// A value that did not parse is a request that cannot be processed (422).
impl From<crate::contracts::values::Invalid> for ApiError {
    fn from(invalid: crate::contracts::values::Invalid) -> Self {
        ApiError::Unprocessable(invalid.code, invalid.message)
    }
}

impl ApiError {
    /// A malformed header or query value (400).
    pub fn bad_request(invalid: crate::contracts::values::Invalid) -> Self {
        ApiError::BadRequest(invalid.code, invalid.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::from(eddy_sql::classify("database error", error))
    }
}

pub fn problem(status: StatusCode, kind: &str, title: &str, detail: Option<String>) -> Response {
    let body = Problem {
        kind: format!("https://eddy.dev/problems/{kind}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(kind, detail) => {
                problem(StatusCode::BAD_REQUEST, kind, "Bad request", Some(detail))
            }
            ApiError::Unprocessable(kind, detail) => problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                kind,
                "The request cannot be processed",
                Some(detail),
            ),
            ApiError::NotFound(what) => problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                Some(format!("no such {what}")),
            ),
            ApiError::Conflict(kind, detail) => {
                problem(StatusCode::CONFLICT, kind, "Conflict", Some(detail))
            }
            ApiError::Unavailable(detail) => {
                let mut response = problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                    Some(detail),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            ApiError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "unexpected error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error",
                    None,
                )
            }
        }
    }
}

/// `Json<T>` whose rejections (malformed JSON, wrong types, missing fields, wrong
/// content type, a body over the limit) are problem responses with the right status.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let status = rejection.status();
                let kind = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
                    StatusCode::UNPROCESSABLE_ENTITY => "invalid-body",
                    _ => "malformed-body",
                };
                Err(problem(
                    status,
                    kind,
                    "The request body was rejected",
                    Some(rejection.body_text()),
                ))
            }
        }
    }
}
