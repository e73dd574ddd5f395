//! What every admin request passes before its handler: the rate limit, the token, and
//! after the handler, the audit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

use super::audit::{self, AuditLog, Who};
use crate::config::{AdminConfig, Secret};
use crate::problem::problem;

/// The admin token, the rate limit and the audit, shared by every admin request.
#[derive(Debug)]
pub struct Guard {
    token: Secret,
    limit: RateLimit,
    audit: AuditLog,
}

impl Guard {
    pub fn new(config: &AdminConfig, audit: AuditLog) -> Self {
        Self {
            token: config.token.clone(),
            limit: RateLimit::per_minute(config.requests_per_minute_max),
            audit,
        }
    }

    /// Whether `presented` is the admin token.
    fn admits(&self, presented: &str) -> bool {
        same(presented.as_bytes(), self.token.expose().as_bytes())
    }
}

/// Who sent `headers` and the token they presented, or who and the 401's detail when
/// they presented none.
fn identify(headers: &HeaderMap) -> (Who, Result<&str, &'static str>) {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return (
            Who::Anonymous,
            Err("the admin API needs `Authorization: Bearer <admin.token>`"),
        );
    };
    match bearer(value) {
        Some(presented) => (Who::Token(fingerprint(presented)), Ok(presented)),
        None => (
            Who::Anonymous,
            Err("the Authorization header must be `Bearer <admin.token>`"),
        ),
    }
}

/// The guard as a middleware: 429 beyond the rate limit (logged, not stored) before
/// the token is compared, 401 without the right token, and every answer past the rate
/// limit audited.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let method = eddy_telemetry::known_method(request.method()).to_string();
    let path = audit::bounded_path(request.uri().path());
    let (who, presented) = identify(request.headers());
    let mut entry = audit::Request {
        who,
        client,
        method,
        path,
        status: 0,
    };
    if let Err(retry_after) = guard.limit.try_acquire() {
        let response = rate_limited(retry_after);
        entry.status = response.status().as_u16();
        audit::log(&entry);
        return response;
    }
    let admitted = presented.map(|token| guard.admits(token));
    let response = match admitted {
        Ok(true) => next.run(request).await,
        Ok(false) => crate::auth::unauthenticated("this is not the admin token"),
        Err(detail) => crate::auth::unauthenticated(detail),
    };
    entry.status = response.status().as_u16();
    guard.audit.record(&entry).await;
    response
}

fn rate_limited(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs().max(1);
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "admin-rate-limited",
        "Too many admin requests",
        Some(format!(
            "this process answers at most admin.requests_per_minute_max admin requests a minute; retry in {seconds} s"
        )),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths, so the
/// time of a refusal says nothing of how much of a guess was right. Every byte of the
/// longer is visited; the length difference is folded into the result.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        // `black_box` keeps the optimiser from turning the fold into an early exit.
        difference |= usize::from(std::hint::black_box(x ^ y));
    }
    std::hint::black_box(difference) == 0
}

/// A name for a token that does not reveal it: `token:` and the first 16 characters
/// (96 bits) of its HMAC-SHA256 under a fixed key, base64url. The same token always has
/// the same fingerprint, so an audit can tell which token (and whether the configured
/// one) made a request; the jsonwebtoken crate's HMAC saves a hashing dependency.
pub fn fingerprint(token: &str) -> String {
    const KEY: &[u8] = b"eddy admin token fingerprint v1";
    let mac = jsonwebtoken::EncodingKey::from_secret(KEY).and_then(|key| {
        jsonwebtoken::crypto::sign(token.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
    });
    match mac {
        Ok(mac) => format!("token:{}", mac.get(..16).unwrap_or(mac.as_str())),
        Err(_) => "token:unknown".to_owned(),
    }
}

/// A token bucket for the whole process: `capacity` requests at once, refilled evenly
/// over a minute. Its state is two numbers, whatever the traffic.
#[derive(Debug)]
struct RateLimit {
    capacity: f64,
    per_second: f64,
    /// Tokens left, and when they were counted.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    fn per_minute(requests: u32) -> Self {
        let capacity = f64::from(requests.max(1));
        Self {
            capacity,
            per_second: capacity / 60.0,
            bucket: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn try_acquire(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, counted) = *bucket;
        let tokens = (tokens + now.duration_since(counted).as_secs_f64() * self.per_second)
            .min(self.capacity);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            *bucket = (tokens, now);
            Err(Duration::from_secs_f64(
                ((1.0 - tokens) / self.per_second).ceil(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_tokens_are_the_same_and_any_difference_is_not() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same(b"", b"x"));
        assert!(same(b"", b""));
    }

    #[test]
    fn a_fingerprint_is_stable_short_and_does_not_contain_the_token() {
        let token = "0123456789abcdef0123456789abcdef";
        let print = fingerprint(token);
        assert_eq!(print, fingerprint(token));
        assert_ne!(print, fingerprint("another token entirely, also long"));
        assert!(print.starts_with("token:") && print.len() == "token:".len() + 16);
        assert!(!print.contains("0123456789"));
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&value("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&value("bearer abc")), Some("abc"));
        assert_eq!(bearer(&value("Basic abc")), None);
        assert_eq!(bearer(&value("Bearer ")), None);
        assert_eq!(bearer(&value("Bearer")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_refuses_beyond_its_bound_and_refills_over_the_minute() {
        let limit = RateLimit::per_minute(3);
        for _ in 0..3 {
            assert!(limit.try_acquire().is_ok());
        }
        let wait = limit.try_acquire().unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(limit.try_acquire().is_ok());
        assert!(limit.try_acquire().is_err());
    }
}
