//! `shop projections status|rebuild`: the platform's projections — today orders' views
//! (`order_views`: the order view and the customer's order list) — read from the
//! databases a configuration names. A rebuild works whether the platform runs or not:
//! the live views keep serving and following new orders until the rebuilt ones are
//! swapped in (see `eddy_eventstore::projection`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use eddy_eventstore::{EventStore, Progress, Projection, Projector, Status};
use serde::Serialize;

use crate::config::{Config, Database};
use crate::service::ServiceName;

#[derive(Debug, clap::Args)]
pub struct ProjectionsArgs {
    #[command(subcommand)]
    pub command: ProjectionsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's generation, checkpoint and any rebuild in progress.
    Status(Target),
    /// Rebuild projections from the first event and swap them in while the live ones
    /// serve (a stopped rebuild resumes where it was).
    Rebuild(Target),
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// A TOML configuration file: the databases to use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Only this projection (default: every one). Known: order_views.
    pub name: Option<String>,
    /// Print JSON instead of text (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Ask a running platform through its admin API instead of opening the databases
    /// (e.g. `http://127.0.0.1:8080`; needs the admin token).
    #[arg(long, env = "EDDY_ADMIN_URL")]
    pub url: Option<String>,
    /// The admin token, with `--url`.
    #[arg(long, env = "EDDY_ADMIN__TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Every projection of the platform: the service whose database holds it, and it.
pub(crate) fn all() -> Vec<(ServiceName, Arc<dyn Projection>)> {
    vec![(
        ServiceName::Orders,
        Arc::new(crate::orders::store::OrderViews),
    )]
}

/// The projectors `name` picks (all when `None`), opened on `config`'s databases.
pub async fn open(config: &Config, name: Option<&str>) -> anyhow::Result<Vec<Projector>> {
    let chosen: Vec<_> = all()
        .into_iter()
        .filter(|(_, p)| name.is_none_or(|n| n == p.name()))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = all().iter().map(|(_, p)| p.name()).collect();
        anyhow::bail!(
            "unknown projection {:?}; the projections are {}",
            name.unwrap_or_default(),
            known.join(", ")
        );
    }
    let mut projectors = Vec::with_capacity(chosen.len());
    for (service, projection) in chosen {
        let db = crate::platform::open_db(config, Database::Of(service)).await?;
        let store = EventStore::open(db)
            .await
            .with_context(|| format!("cannot open the {service} event store"))?;
        let projector = Projector::open(store, projection, crate::orders::projector_config(config))
            .await
            .with_context(|| format!("cannot open the {service} projections"))?;
        projectors.push(projector);
    }
    Ok(projectors)
}

/// What `status` and `rebuild` report of one projection.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: &'static str,
    pub generation: u64,
    pub position: u64,
    pub head: u64,
    /// A rebuild in progress or stopped midway: `[generation, position]`.
    pub rebuilding: Option<(u64, u64)>,
    /// For a rebuild: events applied and how long it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<Rebuilt>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rebuilt {
    pub events: u64,
    pub seconds: f64,
}

/// The report of `status` (and of a rebuild, if one was run).
pub(crate) fn report(name: &'static str, status: Status, rebuilt: Option<Rebuilt>) -> Report {
    Report {
        name,
        generation: status.generation,
        position: status.position,
        head: status.head,
        rebuilding: status.rebuilding,
        rebuilt,
    }
}

/// Rebuilds `projector`, calling `progress` after each batch.
pub async fn rebuild(
    projector: &Projector,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut events = 0;
    let mut progress = progress;
    projector
        .rebuild(|p| {
            events = p.applied;
            progress(p);
        })
        .await
        .with_context(|| format!("rebuilding {} failed", projector.name()))?;
    let rebuilt = Rebuilt {
        events,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(report(
        projector.name(),
        projector.status().await?,
        Some(rebuilt),
    ))
}

/// The `shop projections` command.
pub async fn run(args: ProjectionsArgs) -> anyhow::Result<()> {
    let (target, rebuilding) = match &args.command {
        ProjectionsCommand::Status(target) => (target, false),
        ProjectionsCommand::Rebuild(target) => (target, true),
    };
    if let Some(url) = &target.url {
        return through_admin(target, url, rebuilding).await;
    }
    let mut config = Config::load(target.config.as_deref())?;
    if let Some(dir) = &target.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    let mut reports = Vec::new();
    for projector in open(&config, target.name.as_deref()).await? {
        let report = if rebuilding {
            let bar = rebuild_bar(projector.name(), target.json);
            let report = rebuild(&projector, |p| {
                bar.set_length(p.head);
                bar.set_position(p.position);
            })
            .await;
            bar.finish_and_clear();
            report?
        } else {
            report(projector.name(), projector.status().await?, None)
        };
        reports.push(report);
    }
    if target.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for r in &reports {
        let rebuilding = r.rebuilding.map_or(String::new(), |(g, p)| {
            format!("  (rebuild of generation {g} stopped at position {p}: `shop projections rebuild` resumes it)")
        });
        match r.rebuilt {
            Some(rebuilt) => println!(
                "{}: rebuilt as generation {}, {} events in {:.1} s ({:.0}/s), at position {} of {}",
                r.name,
                r.generation,
                rebuilt.events,
                rebuilt.seconds,
                rebuilt.events as f64 / rebuilt.seconds.max(1e-9),
                r.position,
                r.head
            ),
            None => println!(
                "{}: generation {}, at position {} of {}{rebuilding}",
                r.name, r.generation, r.position, r.head
            ),
        }
    }
    Ok(())
}

/// The progress bar of rebuilding projection `name` (events, rate, ETA); hidden for
/// `--json`.
fn rebuild_bar(name: &str, json: bool) -> indicatif::ProgressBar {
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} events  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(name.to_owned());
    bar
}

/// `status` and `rebuild` through a running platform's admin API: a rebuild is started
/// there and followed (progress bar with rate and ETA) until it is swapped in.
async fn through_admin(target: &Target, url: &str, rebuilding: bool) -> anyhow::Result<()> {
    let token = target
        .token
        .as_deref()
        .context("--url needs the admin token (--token or EDDY_ADMIN__TOKEN)")?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let base = url.trim_end_matches('/');
    let read = || async {
        let response = http
            .get(format!("{base}/admin/projections"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach the platform at {base}"))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{status}: {}", body["detail"].as_str().unwrap_or(""));
        }
        let all = body["projections"].as_array().cloned().unwrap_or_default();
        Ok::<_, anyhow::Error>(
            all.into_iter()
                .filter(|p| target.name.as_deref().is_none_or(|n| p["name"] == n))
                .collect::<Vec<_>>(),
        )
    };
    let before = read().await?;
    if before.is_empty() {
        anyhow::bail!("no such projection in the platform at {base}");
    }
    if !rebuilding {
        println!("{}", serde_json::to_string_pretty(&before)?);
        return Ok(());
    }
    let started = Instant::now();
    for projection in &before {
        let name = projection["name"].as_str().unwrap_or_default();
        let generation = projection["generation"].as_u64().unwrap_or(0);
        let response = http
            .post(format!("{base}/admin/projections/{name}/rebuild"))
            .bearer_auth(token)
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::bail!("{status}: {}", body["detail"].as_str().unwrap_or(""));
        }
        let bar = rebuild_bar(name, target.json);
        // Swapped in when the generation moved on and no rebuild is left.
        loop {
            let now = read().await?;
            let Some(current) = now.iter().find(|p| p["name"] == name) else {
                anyhow::bail!("projection {name} disappeared");
            };
            bar.set_length(current["head"].as_u64().unwrap_or(0));
            bar.set_position(current["rebuilding"][1].as_u64().unwrap_or(0));
            if current["rebuilding"].is_null()
                && current["generation"].as_u64().unwrap_or(0) > generation
            {
                bar.finish_and_clear();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let after = read().await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&after)?);
    } else {
        for p in &after {
            println!(
                "{}: rebuilt as generation {}, at position {} of {} ({:.1} s)",
                text(&p["name"]),
                p["generation"],
                p["position"],
                p["head"],
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}
