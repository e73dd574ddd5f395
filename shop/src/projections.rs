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
    let mut config = Config::load(target.config.as_deref())?;
    if let Some(dir) = &target.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    let mut reports = Vec::new();
    for projector in open(&config, target.name.as_deref()).await? {
        let report = if rebuilding {
            let bar = if target.json {
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
            bar.set_message(projector.name());
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
