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
    /// No token where one is needed (401).
    #[error("authentication required")]
    Unauthenticated,
    /// A valid token without the right (403).
    #[error("{0}")]
    Forbidden(String),
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

impl From<eddy_cache::CacheError> for ApiError {
    /// A read through a cache that found neither a value nor a stale one to fall back
    /// on: the database's own error, or unavailable when the load was too slow.
    fn from(error: eddy_cache::CacheError) -> Self {
        use eddy_cache::CacheError;
        match error {
            CacheError::Load { source, .. } => match source.downcast_ref::<eddy_core::Error>() {
                Some(e) if e.is_transient() => {
                    ApiError::Unavailable("the database is busy; try again".to_owned())
                }
                _ => ApiError::Unexpected(anyhow::anyhow!("{source}")),
            },
            CacheError::Timeout { .. } | CacheError::Abandoned { .. } => {
                ApiError::Unavailable("reading took too long; try again".to_owned())
            }
            CacheError::Config(message) => ApiError::Unexpected(anyhow::anyhow!(message)),
        }
    }
}

/// A database read for a cache loader: eddy's error, which a cache carries to every
/// waiting caller.
pub async fn read_conn(
    db: &eddy_sql::Db,
) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, eddy_core::Error> {
    db.pool()
        .acquire()
        .await
        .map_err(|e| eddy_sql::classify("database error", e))
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
            ApiError::Unauthenticated => crate::auth::unauthenticated(
                "send `Authorization: Bearer <token>` (`shop token` makes one for development)",
            ),
            ApiError::Forbidden(detail) => problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed",
                Some(detail),
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
                    Some(readable(&rejection.body_text())),
                ))
            }
        }
    }
}

/// For an optional field that may be left out but not sent as `null`:
/// `#[serde(default, deserialize_with = "not_null")]`.
pub fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Items per page of a list when the client gives no `limit`.
pub const PAGE_LEN_DEFAULT: i64 = 20;
/// Most items per page of a list (the document's `maximum`).
pub const PAGE_LEN_MAX: i64 = 100;

/// A list's page length: `limit` or the default, refused (400) outside 1 to
/// [`PAGE_LEN_MAX`] — never clamped, as the document says.
pub fn page_len(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(PAGE_LEN_DEFAULT);
    if (1..=PAGE_LEN_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(
            "invalid-limit",
            format!("limit must be 1 to {PAGE_LEN_MAX}"),
        ))
    }
}

/// `Query<T>` whose rejections (a malformed, missing or repeated parameter) are 400
/// problems.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(problem(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "The query string was rejected",
                Some(
                    readable(&rejection.body_text())
                        .replace("duplicate field", "repeated parameter")
                        .replace("missing field", "missing parameter"),
                ),
            )),
        }
    }
}

/// `Path<T>` whose rejections (e.g. a segment that is not UTF-8 once decoded) are 400
/// problems.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) if rejection.status().is_server_error() => Err(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                None,
            )),
            Err(rejection) => Err(problem(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "The path was rejected",
                Some(readable(&rejection.body_text())),
            )),
        }
    }
}

/// The prefixes axum's rejections start with, which say what failed in its own terms.
const REJECTION_PREFIXES: [&str; 5] = [
    "Failed to deserialize the JSON body into the target type: ",
    "Failed to parse the request body as JSON: ",
    "Failed to deserialize query string: ",
    "Invalid URL: ",
    "Failed to buffer the request body: ",
];

/// A parser's message in a client's terms: the framework's prefix dropped and Rust's
/// type names (`struct NewOrder`, `i64`, `enum X`) said in JSON's words.
pub fn readable(message: &str) -> String {
    let mut text = message;
    for prefix in REJECTION_PREFIXES {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest;
        }
    }
    let words: Vec<&str> = text.split(' ').collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        let (core, tail) = split_punctuation(word);
        match core {
            "struct" | "enum" | "tuple" if i + 1 < words.len() && is_type_name(words[i + 1]) => {
                let (_, after) = split_punctuation(words[i + 1]);
                let said = if core == "enum" {
                    "one of the allowed values"
                } else if core == "tuple" {
                    "an array"
                } else {
                    "a JSON object"
                };
                if out.last().is_some_and(|w| w == "a" || w == "an") {
                    out.pop();
                }
                out.push(format!("{said}{after}"));
                i += 2;
                continue;
            }
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64"
            | "u128" | "usize" => out.push(format!("an integer{tail}")),
            "f32" | "f64" => out.push(format!("a number{tail}")),
            _ => out.push(word.to_owned()),
        }
        i += 1;
    }
    out.join(" ")
        .replace("invalid digit found in string", "not a whole number")
        .replace(
            "cannot parse integer from empty string",
            "empty, where a whole number belongs",
        )
        .replace("number too large to fit in target type", "too large")
        .replace("number too small to fit in target type", "too small")
}

fn split_punctuation(word: &str) -> (&str, &str) {
    let end = word
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(word.len());
    word.split_at(end)
}

fn is_type_name(word: &str) -> bool {
    let (core, _) = split_punctuation(word);
    core.chars().next().is_some_and(char::is_uppercase)
}

#[cfg(test)]
mod tests {
    use super::readable;

    #[test]
    fn rust_type_names_are_said_in_json_terms() {
        assert_eq!(
            readable("Failed to deserialize the JSON body into the target type: invalid type: sequence, expected struct NewOrder at line 1 column 1"),
            "invalid type: sequence, expected a JSON object at line 1 column 1"
        );
        assert_eq!(
            readable("lines[0].quantity: invalid type: string \"x\", expected i64 at line 1 column 40"),
            "lines[0].quantity: invalid type: string \"x\", expected an integer at line 1 column 40"
        );
        assert_eq!(
            readable("Failed to deserialize query string: limit: invalid digit found in string"),
            "limit: not a whole number"
        );
        assert_eq!(
            readable("expected enum Kind."),
            "expected one of the allowed values."
        );
    }
}
