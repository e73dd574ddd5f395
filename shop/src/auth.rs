//! Who is calling, and what they may do.
//!
//! **Authentication** is a layer: a request's `Authorization: Bearer <token>` is verified
//! (signature, `exp`, and `iss`/`aud` when configured) and the request carries the
//! [`Caller`] it names. A token that does not verify gets 401 at once; a client address
//! with too many failures in a minute gets 429 without its token even being looked at.
//! Failures are counted in `http_auth_failures_total{reason}`; no token or secret is ever
//! logged or labelled.
//!
//! **Authorization** is the handlers': each asks the [`Caller`] for what it needs —
//! [`Caller::operator`] for catalog writes, [`Caller::acts_for`] for a customer's own
//! orders. With auth off (development mode) every caller is [`Caller::Open`].
//!
//! Tokens carry `sub` (the customer id, or the operator's name), `role` (`customer` or
//! `operator`) and `exp`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, TokenAlgorithm};
use crate::problem::{problem, ApiError};

/// The window failed authentications are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and places their own orders, reads their own charges.
    Customer,
    /// Changes the catalog; reads every order and charge.
    Operator,
}

/// A token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off: anyone may do anything (development mode).
    Open,
    /// No token.
    Anonymous,
    Customer(String),
    Operator(String),
}

impl Caller {
    /// Any verified caller (401 for none).
    pub fn authenticated(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Err(ApiError::Unauthenticated),
            _ => Ok(()),
        }
    }

    /// Operators only (401 without a token, 403 for a customer).
    pub fn operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Open | Caller::Operator(_) => Ok(()),
            Caller::Anonymous => Err(ApiError::Unauthenticated),
            Caller::Customer(_) => Err(ApiError::Forbidden(
                "this needs an operator's token".to_owned(),
            )),
        }
    }

    /// The customer `customer_id` or an operator (401 without a token, 403 for another
    /// customer).
    pub fn acts_for(&self, customer_id: &str) -> Result<(), ApiError> {
        self.authenticated()?;
        if self.sees(Some(customer_id)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "a customer's token reaches only that customer's orders and charges".to_owned(),
            ))
        }
    }

    /// Whether what belongs to `owner` (`None`: to nobody known) is visible to this caller.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Open | Caller::Operator(_) => true,
            Caller::Customer(me) => owner == Some(me.as_str()),
            Caller::Anonymous => false,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    /// The caller the authentication layer found; `Anonymous` where no layer ran (so a
    /// router mounted without it grants nothing).
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous))
    }
}

/// A handler argument that admits only operators (401 / 403 otherwise). Put it before
/// the body: an extractor fails before the handler runs, and a caller without the right
/// must not learn what the body should have been.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(caller) = Caller::from_request_parts(parts, state).await;
        caller
            .operator()
            .map(|()| Operator)
            .map_err(axum::response::IntoResponse::into_response)
    }
}

/// A handler argument that admits any verified caller (401 otherwise), before the body.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(caller) = Caller::from_request_parts(parts, state).await;
        caller
            .authenticated()
            .map(|()| Authenticated(caller))
            .map_err(axum::response::IntoResponse::into_response)
    }
}

/// Why an authentication failed: the `reason` label (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Malformed,
    Expired,
    Invalid,
    RateLimited,
}

impl Failure {
    const fn label(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Expired => "expired",
            Failure::Invalid => "invalid",
            Failure::RateLimited => "rate_limited",
        }
    }
}

fn count(reason: &'static str) {
    metrics::counter!("http_auth_failures_total", "reason" => reason).increment(1);
}

/// Verifies tokens and keeps the failure counts.
#[derive(Debug, Clone)]
pub struct Authenticator {
    inner: Option<Arc<Verifier>>,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
    failures: FailureCounts,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

fn algorithm(of: TokenAlgorithm) -> Algorithm {
    match of {
        TokenAlgorithm::HS256 => Algorithm::HS256,
        TokenAlgorithm::RS256 => Algorithm::RS256,
        TokenAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl Authenticator {
    /// From `[auth]`: with auth off, one that lets everyone through as [`Caller::Open`].
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        if !config.enabled {
            return Ok(Self { inner: None });
        }
        let key = match config.algorithm {
            TokenAlgorithm::HS256 => DecodingKey::from_secret(config.secret.expose().as_bytes())
                .context("auth.secret is not a usable HS256 key")?,
            TokenAlgorithm::RS256 => {
                DecodingKey::from_rsa_pem(&read_pem(&config.public_key_file, "public key")?)
                    .context("auth.public_key_file is not an RSA public key in PEM")?
            }
            TokenAlgorithm::EdDSA => {
                DecodingKey::from_ed_pem(&read_pem(&config.public_key_file, "public key")?)
                    .context("auth.public_key_file is not an Ed25519 public key in PEM")?
            }
        };
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.set_required_spec_claims(&["exp", "sub"]);
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
        }
        Ok(Self {
            inner: Some(Arc::new(Verifier {
                key,
                validation,
                failures: FailureCounts::new(
                    config.failures_per_minute_max,
                    config.tracked_clients_max,
                ),
            })),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The layer: finds the caller, or answers 401/429 for a token that fails.
    pub async fn layer(self, request: Request, next: Next) -> Response {
        match self.admit(request) {
            Ok((request, watch)) => {
                let response = next.run(request).await;
                watch.count(&response);
                response
            }
            Err(refused) => *refused,
        }
    }

    /// Finds the caller and puts it in the request's extensions, or answers 401/429 for
    /// a token that fails. The request goes on with what to count of its answer
    /// ([`Watch::count`]).
    pub fn admit(&self, mut request: Request) -> Result<(Request, Watch), Box<Response>> {
        let Some(verifier) = &self.inner else {
            request.extensions_mut().insert(Caller::Open);
            return Ok((request, Watch::Nothing));
        };
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            request.extensions_mut().insert(Caller::Anonymous);
            return Ok((request, Watch::Missing));
        };
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        if verifier.failures.limited(client) {
            count(Failure::RateLimited.label());
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-failed-authentications",
                "Too many failed authentications",
                Some(format!(
                    "this address sent too many bad tokens in the last {} s; wait and retry with a valid one",
                    FAILURE_WINDOW.as_secs()
                )),
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(FAILURE_WINDOW.as_secs()),
            );
            return Err(Box::new(response));
        }
        match verifier.verify(value) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok((request, Watch::Forbidden))
            }
            Err(failure) => {
                verifier.failures.failed(client);
                count(failure.label());
                Err(Box::new(unauthenticated(match failure {
                    Failure::Expired => "the token has expired",
                    Failure::Malformed => "the Authorization header must be `Bearer <token>`",
                    _ => "the token is not valid here (signature, issuer, audience or claims)",
                })))
            }
        }
    }
}

/// What an admitted request's answer is counted for in `auth_failures_total`.
#[derive(Debug, Clone, Copy)]
pub enum Watch {
    /// Authentication is off.
    Nothing,
    /// No token: a 401 (a route that needs one) counts as `missing`.
    Missing,
    /// A valid token: a 403 (a role that may not) counts as `forbidden`.
    Forbidden,
}

impl Watch {
    pub fn count(self, response: &Response) {
        match (self, response.status()) {
            (Self::Missing, StatusCode::UNAUTHORIZED) => count("missing"),
            (Self::Forbidden, StatusCode::FORBIDDEN) => count("forbidden"),
            _ => {}
        }
    }
}

impl Verifier {
    fn verify(&self, value: &HeaderValue) -> Result<Caller, Failure> {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Failure::Malformed)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Failure::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidToken
                | jsonwebtoken::errors::ErrorKind::Base64(_)
                | jsonwebtoken::errors::ErrorKind::Json(_)
                | jsonwebtoken::errors::ErrorKind::Utf8(_) => Failure::Malformed,
                _ => Failure::Invalid,
            },
        )?;
        let Claims { sub, role, .. } = data.claims;
        if sub.trim().is_empty() {
            return Err(Failure::Invalid);
        }
        Ok(match role {
            Role::Customer => Caller::Customer(sub),
            Role::Operator => Caller::Operator(sub),
        })
    }
}

/// The 401 problem, with the challenge RFC 6750 asks for.
pub fn unauthenticated(detail: &str) -> Response {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Authentication required",
        Some(detail.to_owned()),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Failed authentications per client address in the current window, for at most
/// `tracked_max` addresses (the oldest windows make room first).
struct FailureCounts {
    max: u32,
    tracked_max: usize,
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureCounts {
    fn new(max: u32, tracked_max: usize) -> Self {
        Self {
            max,
            tracked_max,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn limited(&self, client: IpAddr) -> bool {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .get(&client)
            .is_some_and(|(since, n)| since.elapsed() < FAILURE_WINDOW && *n >= self.max)
    }

    fn failed(&self, client: IpAddr) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if !clients.contains_key(&client) && clients.len() >= self.tracked_max {
            clients.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            if clients.len() >= self.tracked_max {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    clients.remove(&oldest);
                }
            }
        }
        let entry = clients.entry(client).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// A token for `role` and `subject`, signed with the configured key (HS256's secret,
/// or `auth.private_key_file` for RS256/EdDSA), valid for `auth.token_ttl_secs`.
pub fn mint(config: &AuthConfig, role: Role, subject: &str) -> anyhow::Result<String> {
    let key = match config.algorithm {
        TokenAlgorithm::HS256 => {
            if config.secret.expose().len() < crate::config::AUTH_SECRET_LEN_MIN {
                anyhow::bail!(
                    "auth.secret must be at least {} bytes to sign HS256 tokens (set EDDY_AUTH__SECRET)",
                    crate::config::AUTH_SECRET_LEN_MIN
                );
            }
            EncodingKey::from_secret(config.secret.expose().as_bytes())
                .context("auth.secret is not a usable HS256 key")?
        }
        TokenAlgorithm::RS256 | TokenAlgorithm::EdDSA => {
            if config.private_key_file.as_os_str().is_empty() {
                anyhow::bail!(
                    "auth.private_key_file is required to sign {:?} tokens",
                    config.algorithm
                );
            }
            let pem = read_pem(&config.private_key_file, "private key")?;
            if config.algorithm == TokenAlgorithm::RS256 {
                EncodingKey::from_rsa_pem(&pem)
                    .context("auth.private_key_file is not an RSA private key in PEM")?
            } else {
                EncodingKey::from_ed_pem(&pem)
                    .context("auth.private_key_file is not an Ed25519 private key in PEM")?
            }
        }
    };
    let claims = Claims {
        sub: subject.to_owned(),
        role,
        exp: jsonwebtoken::get_current_timestamp().saturating_add(config.token_ttl_secs),
        iss: (!config.issuer.is_empty()).then(|| config.issuer.clone()),
        aud: (!config.audience.is_empty()).then(|| config.audience.clone()),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm(config.algorithm)),
        &claims,
        &key,
    )
    .context("cannot sign the token")
}
