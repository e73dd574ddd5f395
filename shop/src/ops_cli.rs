//! The operations commands — `shop dlq …`, `shop outbox`, `shop lag`, `shop breakers`
//! — talking to a running platform through its admin API (`/admin/…`, see
//! [`crate::admin`] and [`crate::platform::dead_letters`]). `shop projections` works on
//! the databases directly, which is safe whether the platform runs or not.
//!
//! Tables that fit the terminal (`COLUMNS`, else 120 columns), `--json` for scripts,
//! a progress bar with rate and ETA while a redrive runs, and exit codes a script can
//! use: 0 done, 1 the platform refused or failed (its problem is printed), 2 a usage
//! error (clap's).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Open letters per service, grouped by failure (fingerprint).
    Overview,
    /// Letters matching a filter.
    List(Selection),
    /// Letters matching a filter, grouped by fingerprint.
    Groups(Selection),
    /// One letter: where and why it failed, its headers and payload.
    Show {
        #[arg(long)]
        service: String,
        id: String,
    },
    /// Hand letters back to their topic (rate-limited, resumable, in key order).
    Redrive {
        #[command(flatten)]
        selection: Selection,
        /// Letters per second at most: `50` or `50/s`.
        #[arg(long, default_value = "50/s")]
        rate: String,
        /// Keys redriven at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Count what would be redriven; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Continue an interrupted or paused redrive job.
        #[arg(long, conflicts_with = "dry_run")]
        resume: Option<String>,
    },
    /// Pause a running redrive after its current step (`redrive --resume` continues it).
    Pause {
        #[arg(long)]
        service: String,
        job: String,
    },
    /// Stop a redrive for good after its current step.
    Cancel {
        #[arg(long)]
        service: String,
        job: String,
    },
    /// Apply a JSON Patch (RFC 6902) to one letter's payload and redrive it.
    Edit {
        #[arg(long)]
        service: String,
        id: String,
        /// The patch, e.g. '[{"op":"replace","path":"/seq","value":7}]'.
        #[arg(long)]
        patch: String,
    },
    /// Delete letters matching a filter whose last failure is older than an age.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// `30d`, `12h`, `90m`, `3600s` or seconds.
        #[arg(long)]
        older_than: String,
    },
    /// The operations done on a service's letters, newest first.
    Audit {
        #[arg(long)]
        service: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Which letters.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// The service whose consumer group dead-lettered them.
    #[arg(long)]
    pub service: String,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long)]
    pub event_type: Option<String>,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// These letters only (repeat the flag).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// `open` (default), `resolved` or `any`.
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many (list).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

impl Selection {
    /// The filter's fields that are set.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("topic", &self.topic),
            ("event_type", &self.event_type),
            ("key", &self.key),
            ("fingerprint", &self.fingerprint),
            ("status", &self.status),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
    }

    fn filter(&self) -> Value {
        let mut filter: serde_json::Map<String, Value> = self
            .fields()
            .map(|(name, value)| (name.to_owned(), value.clone().into()))
            .collect();
        if !self.ids.is_empty() {
            filter.insert("ids".into(), self.ids.clone().into());
        }
        Value::Object(filter)
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("limit", self.limit.to_string())];
        query.extend(self.fields().map(|(name, value)| (name, value.clone())));
        query
    }
}

/// Where the admin API is, and how to print.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The platform (or the service process) to ask.
    #[arg(long, env = "EDDY_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The admin token (`admin.token` of the platform).
    #[arg(long, env = "EDDY_ADMIN__TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<Admin> {
        Ok(Admin {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            url: self.url.trim_end_matches('/').to_owned(),
            token: self.token.clone(),
        })
    }
}

/// `shop outbox`: each service's outbox — backlog, oldest unpublished row, parked rows.
pub async fn outbox(args: AdminArgs) -> anyhow::Result<()> {
    let state = args.client()?.get("/admin/outbox", &[]).await?;
    print(args.json, &state, |state| {
        table(
            &[
                "service",
                "pending",
                "oldest pending (s)",
                "parked",
                "published kept",
            ],
            state["services"].as_array().into_iter().flatten().map(|s| {
                vec![
                    text(&s["service"]),
                    s["pending"].to_string(),
                    s["oldest_pending_age_seconds"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |a| format!("{a:.1}")),
                    s["parked"].to_string(),
                    s["published_kept"].to_string(),
                ]
            }),
        );
    });
    Ok(())
}

/// `shop lag`: every consumer group's lag and the monitor's judgement, per topic.
pub async fn lag(args: AdminArgs) -> anyhow::Result<()> {
    let lag = args.client()?.get("/admin/lag", &[]).await?;
    print(args.json, &lag, |lag| {
        let mut rows = Vec::new();
        for group in lag["groups"].as_array().into_iter().flatten() {
            for topic in group["topics"].as_array().into_iter().flatten() {
                rows.push(vec![
                    text(&group["group"]),
                    text(&topic["topic"]),
                    text(&topic["status"]),
                    topic["lag_messages"].to_string(),
                    topic["lag_seconds"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
                ]);
            }
        }
        table(
            &["group", "topic", "status", "lag", "lag (s)"],
            rows.into_iter(),
        );
    });
    Ok(())
}

/// `shop breakers`: each circuit breaker's state.
pub async fn breakers(args: AdminArgs) -> anyhow::Result<()> {
    let breakers = args.client()?.get("/admin/breakers", &[]).await?;
    print(args.json, &breakers, |breakers| {
        table(
            &["breaker", "state"],
            breakers["breakers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| vec![text(&b["name"]), text(&b["state"])]),
        );
    });
    Ok(())
}

/// Talks to the admin API.
struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let actor = std::env::var("USER").unwrap_or_else(|_| "cli".to_owned());
        let response = request
            .bearer_auth(&self.token)
            .header("x-eddy-actor", format!("{actor} (shop dlq)"))
            .send()
            .await
            .with_context(|| format!("cannot reach the platform at {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["detail"]
                .as_str()
                .or(body["title"].as_str())
                .unwrap_or("");
            if status == reqwest::StatusCode::NOT_FOUND && body.is_null() {
                bail!("{status}: no admin API here (is admin.token set on the platform?)");
            }
            bail!("{status}: {detail}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.url)).query(query))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.url)).json(&body))
            .await
    }
}

/// Runs `shop dlq …`.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let admin = args.admin.client()?;
    let json = args.admin.json;
    let base = "/admin/dead-letters";
    match args.command {
        DlqCommand::Overview => {
            let overview = admin.get(base, &[]).await?;
            print(json, &overview, |out| {
                for service in out["services"].as_array().into_iter().flatten() {
                    println!("{}: {} open", text(&service["service"]), service["open"]);
                    groups_table(&service["groups"]);
                }
            });
        }
        DlqCommand::List(selection) => {
            let page = admin
                .get(&format!("{base}/{}", selection.service), &selection.query())
                .await?;
            print(json, &page, |page| {
                table(
                    &[
                        "id",
                        "topic",
                        "key",
                        "type",
                        "kind",
                        "attempts",
                        "last failure",
                        "error",
                    ],
                    page["letters"].as_array().into_iter().flatten().map(|l| {
                        vec![
                            text(&l["id"]),
                            text(&l["origin_topic"]),
                            text(&l["key"]),
                            text(&l["event_type"]),
                            text(&l["error_kind"]),
                            l["attempts"].to_string(),
                            text(&l["last_failure_at"]),
                            text(&l["error"]),
                        ]
                    }),
                );
            });
        }
        DlqCommand::Groups(selection) => {
            let groups = admin
                .get(
                    &format!("{base}/{}/groups", selection.service),
                    &selection.query(),
                )
                .await?;
            print(json, &groups, |groups| groups_table(&groups["groups"]));
        }
        DlqCommand::Show { service, id } => {
            let letter = admin
                .get(&format!("{base}/{service}/letters/{id}"), &[])
                .await?;
            print(json, &letter, |letter| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(letter).unwrap_or_default()
                );
            });
        }
        DlqCommand::Redrive {
            selection,
            rate,
            concurrency,
            dry_run,
            resume,
        } => {
            let service = selection.service.clone();
            let started = match resume {
                Some(job) => {
                    admin
                        .post(
                            &format!("{base}/{service}/redrives/{job}/resume"),
                            json!({}),
                        )
                        .await?
                }
                None => {
                    let body = json!({
                        "filter": selection.filter(),
                        "rate_per_sec": parse_rate(&rate)?,
                        "concurrency": concurrency,
                        "dry_run": dry_run,
                    });
                    admin
                        .post(&format!("{base}/{service}/redrive"), body)
                        .await?
                }
            };
            if dry_run {
                print(json, &started, |report| {
                    println!(
                        "dry run: {} would be redriven, {} held back by the loop guard",
                        report["redriven"], report["skipped"]
                    );
                });
                return Ok(());
            }
            let job = text(&started["job"]);
            let report = follow(&admin, &service, &job, json).await?;
            print(json, &report, |report| {
                println!(
                    "redrive {job}: {} — {} redriven, {} skipped (resume with --resume {job} if it stopped)",
                    text(&report["state"]),
                    report["redriven"],
                    report["skipped"]
                );
            });
        }
        DlqCommand::Pause { service, job } => {
            control(&admin, json, &service, &job, "pause").await?
        }
        DlqCommand::Cancel { service, job } => {
            control(&admin, json, &service, &job, "cancel").await?
        }
        DlqCommand::Edit { service, id, patch } => {
            let patch: Value =
                serde_json::from_str(&patch).context("--patch is not JSON (an RFC 6902 array)")?;
            let done = admin
                .post(
                    &format!("{base}/{service}/letters/{id}/edit"),
                    json!({"patch": patch}),
                )
                .await?;
            print(json, &done, |done| {
                println!("redriven as event {}", text(&done["redriven_event_id"]));
            });
        }
        DlqCommand::Purge {
            selection,
            older_than,
        } => {
            let body = json!({
                "filter": selection.filter(),
                "older_than_secs": parse_age(&older_than)?,
            });
            let done = admin
                .post(&format!("{base}/{}/purge", selection.service), body)
                .await?;
            print(json, &done, |done| println!("purged {}", done["purged"]));
        }
        DlqCommand::Audit { service, limit } => {
            let audit = admin
                .get(
                    &format!("{base}/{service}/audit"),
                    &[("limit", limit.to_string())],
                )
                .await?;
            print(json, &audit, |audit| {
                table(
                    &["at", "actor", "operation", "affected", "target", "detail"],
                    audit["entries"].as_array().into_iter().flatten().map(|e| {
                        vec![
                            text(&e["at"]),
                            text(&e["actor"]),
                            text(&e["operation"]),
                            e["affected"].to_string(),
                            text(&e["target"]),
                            text(&e["detail"]),
                        ]
                    }),
                );
            });
        }
    }
    Ok(())
}

/// Pauses or cancels redrive `job` of `service` (`action`) and prints where it stands.
async fn control(
    admin: &Admin,
    json: bool,
    service: &str,
    job: &str,
    action: &str,
) -> anyhow::Result<()> {
    let progress = admin
        .post(
            &format!("/admin/dead-letters/{service}/redrives/{job}/{action}"),
            json!({}),
        )
        .await?;
    print(json, &progress, |progress| {
        println!(
            "redrive {job}: {} after {} redriven, {} skipped",
            text(&progress["state"]),
            progress["redriven"],
            progress["skipped"]
        );
    });
    Ok(())
}

/// Polls job `job` until it is no longer running, with a progress bar (rate, ETA) on
/// a terminal; returns its last progress.
async fn follow(admin: &Admin, service: &str, job: &str, json: bool) -> anyhow::Result<Value> {
    let bar = if json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} redrive [{bar:30}] {pos}/{len} letters, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let path = format!("/admin/dead-letters/{service}/redrives/{job}");
    let mut last_total = 0;
    loop {
        let progress = admin.get(&path, &[]).await?;
        let done =
            progress["redriven"].as_u64().unwrap_or(0) + progress["skipped"].as_u64().unwrap_or(0);
        let total = progress["total"].as_u64().unwrap_or(done).max(done);
        if total != last_total {
            bar.set_length(total);
            last_total = total;
        }
        bar.set_position(done);
        if progress["state"] != "running" {
            bar.finish_and_clear();
            return Ok(progress);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `50`, `50/s` → 50.
fn parse_rate(rate: &str) -> anyhow::Result<u32> {
    let number = rate.trim().trim_end_matches("/s");
    match number.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!(
            "--rate must be a positive number of letters per second, like 50/s (got {rate:?})"
        ),
    }
}

/// `30d`, `12h`, `90m`, `3600s`, `3600` → seconds.
fn parse_age(age: &str) -> anyhow::Result<u64> {
    let age = age.trim();
    let (number, unit) = match age.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => age.split_at(i),
        None => (age, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("--older-than takes a number with s, m, h or d (got {age:?})"),
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("--older-than takes a number with s, m, h or d (got {age:?})"))?;
    Ok(number.saturating_mul(scale))
}

fn print(json: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn groups_table(groups: &Value) {
    table(
        &[
            "fingerprint",
            "letters",
            "group",
            "type",
            "kind",
            "first seen",
            "last seen",
            "error",
        ],
        groups.as_array().into_iter().flatten().map(|g| {
            vec![
                text(&g["fingerprint"]),
                g["count"].to_string(),
                text(&g["group"]),
                text(&g["event_type"]),
                text(&g["error_kind"]),
                text(&g["first_seen"]),
                text(&g["last_seen"]),
                text(&g["sample_error"]),
            ]
        }),
    );
}

/// Prints rows under `header`, each column as wide as its widest cell, the last one
/// cut so a line fits the terminal.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(120);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(widths.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count().min(40));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let cell: String = if i + 1 == cells.len() {
                let used = out.chars().count();
                cell.chars()
                    .take(width.saturating_sub(used).max(10))
                    .collect()
            } else {
                let cut: String = cell.chars().take(widths[i]).collect();
                format!("{cut:<w$}  ", w = widths[i])
            };
            out.push_str(&cell);
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rates_and_ages_read_as_an_operator_writes_them() {
        assert_eq!(parse_rate("50/s").unwrap(), 50);
        assert_eq!(parse_rate("7").unwrap(), 7);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_age("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_age("12h").unwrap(), 43_200);
        assert_eq!(parse_age("90m").unwrap(), 5_400);
        assert_eq!(parse_age("3600").unwrap(), 3_600);
        assert!(parse_age("3w").is_err());
        assert!(parse_age("h").is_err());
    }
}
