//! Dead letters in the platform: each service keeps the letters of its own consumer
//! group (`eddy-dlq`, in the service's database), and the admin API works on them.
//!
//! For every topic a service consumes, a consumer of `<topic>.dlq` (group
//! `<service>-dead-letters`) stores the letters its group wrote there — the same on the
//! embedded log, Kafka and NATS. A redrive goes out through the service's outbox, so a
//! letter is resolved exactly when its event is durably on its way back.
//!
//! Admin routes (under the admin API's token; [`routes`]), per service:
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/dead-letters` | open letters per service, grouped by fingerprint |
//! | `GET /admin/dead-letters/{service}?topic=&group=&event_type=&key=&fingerprint=&since_us=&until_us=&status=&after=&limit=` | letters, paged by `after` |
//! | `GET /admin/dead-letters/{service}/groups` | the same filter, grouped |
//! | `GET /admin/dead-letters/{service}/letters/{id}` | one letter, payload and headers |
//! | `POST /admin/dead-letters/{service}/redrive` | `{filter, rate_per_sec, concurrency, dry_run}`: a dry run answers its count; otherwise 202 and the job runs in the background |
//! | `GET /admin/dead-letters/{service}/redrives/{job}` | a job's progress |
//! | `POST /admin/dead-letters/{service}/redrives/{job}/{pause,cancel,resume}` | |
//! | `POST /admin/dead-letters/{service}/letters/{id}/edit` | `{patch}` (RFC 6902): edit and redrive |
//! | `POST /admin/dead-letters/{service}/purge` | `{filter, older_than_secs}` |
//! | `GET /admin/dead-letters/{service}/audit?limit=` | the operations done, newest first |
//!
//! The actor of an operation (in the audit) is the `X-Eddy-Actor` header (the CLI sends
//! the user's name), or `admin-api`.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eddy_dlq::{DeadLetters, Filter, RedriveRequest};
use eddy_runtime::{Consumer, ConsumerConfig};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{supervised_consumer, Broker, Worker};
use crate::problem::problem;
use crate::service::ServiceDb;

/// Redrive jobs running at once in one process; more are refused (429).
pub const REDRIVES_AT_ONCE_MAX: usize = 4;
/// Letters per second a redrive may ask for at most.
pub const REDRIVE_RATE_MAX: u32 = 10_000;

/// The consumer that stores `service`'s letters from `<topic>.dlq`.
pub(crate) fn start_store(
    service: &ServiceDb,
    topic: &str,
    broker: &Broker,
    config: &ConsumerConfig,
    health: &eddy_runtime::Workers,
    stop: &CancellationToken,
) -> Worker {
    let name = service.name.as_str();
    let dlq = format!("{topic}.dlq");
    let ingest = service
        .dead_letters
        .ingest(Some(HashSet::from([name.to_owned()])));
    let consumer = Consumer::new(
        dlq.clone(),
        format!("{name}-dead-letters"),
        broker.subscriber(),
        broker.publisher(),
        eddy_runtime::Router::new().any(ingest),
    )
    // A message in the dead-letter topic that is no envelope goes back to the same
    // topic as a readable letter (`eddy.Undecodable`), and is then stored like any.
    .with_config(ConsumerConfig {
        dead_letter_topic: Some(dlq.clone()),
        ..config.clone()
    });
    supervised_consumer(
        format!("{name} dead-letter store of {dlq}"),
        consumer,
        health,
        stop,
    )
}

#[derive(Clone)]
struct Admin {
    services: Arc<BTreeMap<&'static str, DeadLetters>>,
    redrives: Arc<Semaphore>,
}

/// The admin routes over the dead letters of `services`, for a router of any state
/// (the admin API's).
pub fn routes<S: Clone + Send + Sync + 'static>(services: &[ServiceDb]) -> Router<S> {
    let admin = Admin {
        services: Arc::new(
            services
                .iter()
                .map(|s| (s.name.as_str(), s.dead_letters.clone()))
                .collect(),
        ),
        redrives: Arc::new(Semaphore::new(REDRIVES_AT_ONCE_MAX)),
    };
    Router::new()
        .route("/admin/dead-letters", get(overview))
        .route("/admin/dead-letters/{service}", get(list))
        .route("/admin/dead-letters/{service}/groups", get(groups))
        .route("/admin/dead-letters/{service}/audit", get(audit))
        .route("/admin/dead-letters/{service}/letters/{id}", get(show))
        .route(
            "/admin/dead-letters/{service}/letters/{id}/edit",
            post(edit),
        )
        .route("/admin/dead-letters/{service}/redrive", post(redrive))
        .route("/admin/dead-letters/{service}/redrives/{job}", get(job))
        .route(
            "/admin/dead-letters/{service}/redrives/{job}/{action}",
            post(control),
        )
        .route("/admin/dead-letters/{service}/purge", post(purge))
        .with_state(admin)
}

impl Admin {
    fn service(&self, name: &str) -> Result<&DeadLetters, Box<Response>> {
        self.services.get(name).ok_or_else(|| {
            Box::new(problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such service here",
                Some(format!(
                    "this process keeps the dead letters of: {}",
                    self.services.keys().copied().collect::<Vec<_>>().join(", ")
                )),
            ))
        })
    }
}

fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-eddy-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(|| "admin-api".to_owned(), str::to_owned)
}

/// An operation's error as a problem: what names a missing letter or job is 404, what
/// the request got wrong (a filter, a patch, a state) 400, the rest 500.
fn failed(error: eddy_core::Error) -> Response {
    let text = format!("{error:#}");
    if text.starts_with("no dead letter") || text.starts_with("no redrive") {
        problem(StatusCode::NOT_FOUND, "not-found", "Not found", Some(text))
    } else if error.is_transient() {
        tracing::warn!(%error, "dead-letter operation failed");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The dead letters cannot be reached now",
            Some(text),
        )
    } else if text.contains("cannot ") {
        tracing::error!(%error, "dead-letter operation failed");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The operation failed",
            Some(text),
        )
    } else {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-operation",
            "The operation cannot be done",
            Some(text),
        )
    }
}

async fn overview(State(admin): State<Admin>) -> Response {
    let mut services = Vec::new();
    for (name, letters) in admin.services.iter() {
        let groups = match letters.groups(&Filter::default()).await {
            Ok(groups) => groups,
            Err(error) => return failed(error),
        };
        let open: i64 = groups.iter().map(|g| g.count).sum();
        services.push(serde_json::json!({"service": name, "open": open, "groups": groups}));
    }
    Json(serde_json::json!({ "services": services })).into_response()
}

/// A filter in a query string, and the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    topic: Option<String>,
    group: Option<String>,
    event_type: Option<String>,
    key: Option<String>,
    fingerprint: Option<String>,
    since_us: Option<i64>,
    until_us: Option<i64>,
    status: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<usize>,
}

impl ListQuery {
    fn filter(&self) -> Filter {
        Filter {
            topic: self.topic.clone(),
            group: self.group.clone(),
            event_type: self.event_type.clone(),
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            since_us: self.since_us,
            until_us: self.until_us,
            ids: None,
            status: self.status.clone(),
        }
    }
}

async fn list(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    let limit = query.limit.unwrap_or(100);
    match letters.list(&query.filter(), query.after, limit).await {
        Ok(page) => {
            let next = (page.len() >= limit.min(letters.config().list_len_max))
                .then(|| page.last().map(|l| l.seq))
                .flatten();
            Json(serde_json::json!({"letters": page, "next_after": next})).into_response()
        }
        Err(error) => failed(error),
    }
}

async fn groups(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters.groups(&query.filter()).await {
        Ok(groups) => Json(serde_json::json!({ "groups": groups })).into_response(),
        Err(error) => failed(error),
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters.audit(query.limit.unwrap_or(50)).await {
        Ok(entries) => Json(serde_json::json!({ "entries": entries })).into_response(),
        Err(error) => failed(error),
    }
}

async fn show(State(admin): State<Admin>, Path((service, id)): Path<(String, String)>) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters.get(&id).await {
        Ok(Some(letter)) => {
            let headers: BTreeMap<&str, &str> = letter.headers().iter().collect();
            let payload = letter.payload_json().unwrap_or_else(|| {
                serde_json::Value::String(String::from_utf8_lossy(&letter.envelope.payload).into())
            });
            Json(serde_json::json!({"letter": letter, "headers": headers, "payload": payload}))
                .into_response()
        }
        Ok(None) => failed(eddy_core::Error::permanent(format!("no dead letter {id}"))),
        Err(error) => failed(error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    patch: json_patch::Patch,
}

async fn edit(
    State(admin): State<Admin>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<EditBody>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters
        .edit_and_redrive(&id, &body.patch, &actor(&headers))
        .await
    {
        Ok(event) => {
            Json(serde_json::json!({"redriven_event_id": event.id.to_string()})).into_response()
        }
        Err(error) => failed(error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    #[serde(default)]
    filter: Filter,
    rate_per_sec: u32,
    #[serde(default = "one")]
    concurrency: usize,
    #[serde(default)]
    dry_run: bool,
}

fn one() -> usize {
    1
}

async fn redrive(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Json(body): Json<RedriveBody>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters.clone(),
        Err(response) => return *response,
    };
    let Some(rate) = NonZeroU32::new(body.rate_per_sec).filter(|r| r.get() <= REDRIVE_RATE_MAX)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-operation",
            "The redrive's rate is out of range",
            Some(format!("rate_per_sec must be 1 to {REDRIVE_RATE_MAX}")),
        );
    };
    if !(1..=64).contains(&body.concurrency) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-operation",
            "The redrive's concurrency is out of range",
            Some("concurrency must be 1 to 64".to_owned()),
        );
    }
    let request = RedriveRequest {
        filter: body.filter,
        rate_per_sec: rate,
        concurrency: body.concurrency,
        dry_run: body.dry_run,
        resume: None,
        actor: actor(&headers),
    };
    if request.dry_run {
        return match letters.redrive(request, |_| {}).await {
            Ok(report) => Json(report).into_response(),
            Err(error) => failed(error),
        };
    }
    start_job(&admin, letters, request).await
}

/// Runs `request` in the background once it has its job id, answering 202 with it.
async fn start_job(admin: &Admin, letters: DeadLetters, request: RedriveRequest) -> Response {
    let Ok(permit) = admin.redrives.clone().try_acquire_owned() else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-redrives",
            "Too many redrives are running",
            Some(format!(
                "at most {REDRIVES_AT_ONCE_MAX} at once in one process"
            )),
        );
    };
    let (started, job) = tokio::sync::oneshot::channel::<String>();
    let started = std::sync::Mutex::new(Some(started));
    tokio::spawn(async move {
        let _permit = permit;
        let ran = letters
            .redrive(request, |progress| {
                if let Some(started) = started.lock().ok().and_then(|mut s| s.take()) {
                    let _ = started.send(progress.job.clone());
                }
            })
            .await;
        if let Err(error) = ran {
            tracing::warn!(%error, "a redrive ended with an error; resume it to continue");
        }
    });
    // The job reports after its first step (or at its end): its id is known then.
    match tokio::time::timeout(Duration::from_secs(30), job).await {
        Ok(Ok(job)) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "job": job })),
        )
            .into_response(),
        _ => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The redrive did not start",
            Some("see the platform's log".to_owned()),
        ),
    }
}

async fn job(State(admin): State<Admin>, Path((service, job)): Path<(String, String)>) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters.job_progress(&job).await {
        Ok(progress) => Json(progress).into_response(),
        Err(error) => failed(error),
    }
}

async fn control(
    State(admin): State<Admin>,
    Path((service, job, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters.clone(),
        Err(response) => return *response,
    };
    let done = match action.as_str() {
        "pause" => letters.pause(&job).await,
        "cancel" => letters.cancel(&job).await,
        "resume" => {
            let request = RedriveRequest {
                filter: Filter::default(),
                rate_per_sec: NonZeroU32::MIN,
                concurrency: 1,
                dry_run: false,
                resume: Some(job.clone()),
                actor: actor(&headers),
            };
            return start_job(&admin, letters, request).await;
        }
        other => {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                Some(format!("{other:?} is not pause, cancel or resume")),
            )
        }
    };
    match done {
        Ok(()) => match letters.job_progress(&job).await {
            Ok(progress) => Json(progress).into_response(),
            Err(error) => failed(error),
        },
        Err(error) => failed(error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    #[serde(default)]
    filter: Filter,
    older_than_secs: u64,
}

async fn purge(
    State(admin): State<Admin>,
    Path(service): Path<String>,
    headers: HeaderMap,
    Json(body): Json<PurgeBody>,
) -> Response {
    let letters = match admin.service(&service) {
        Ok(letters) => letters,
        Err(response) => return *response,
    };
    match letters
        .purge(
            &body.filter,
            Duration::from_secs(body.older_than_secs),
            &actor(&headers),
        )
        .await
    {
        Ok(purged) => Json(serde_json::json!({ "purged": purged })).into_response(),
        Err(error) => failed(error),
    }
}
