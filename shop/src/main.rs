//! The `shop` command: `serve` (the default) runs the platform, `provider` runs the
//! simulated payment provider alone, `demo` drives traffic against a running platform.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use shop::config::Config;

/// mimalloc instead of glibc's allocator: the consumer path allocates per event, and
/// glibc spent about a quarter of its CPU in `malloc`/`free` and heap consolidation
/// (perf; the benchmark program uses the same allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "shop",
    about = "The Eddy reference order platform",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command, `shop` serves: `shop --config x.toml` is `shop serve --config
    /// x.toml`.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform (the default).
    Serve(ServeArgs),
    /// Run only the simulated payment provider.
    Provider(ServeArgs),
    /// Route the public API to one process per service.
    Gateway(ServeArgs),
    /// Send realistic traffic to a running platform and report.
    Demo(shop::load::LoadArgs),
    /// Print a bearer token for development, signed with the configured key.
    Token(TokenArgs),
    /// Run the five services, the provider and the gateway as supervised processes.
    Up(shop::up::UpArgs),
    /// Projections (orders' views): status, and rebuilds while the platform serves.
    Projections(shop::projections::ProjectionsArgs),
    /// Dead letters of a running platform (its admin API): list, group, show, redrive,
    /// edit and redrive, purge, audit.
    Dlq(shop::ops_cli::DlqArgs),
    /// Each service's outbox of a running platform: backlog, oldest row, parked rows.
    Outbox(shop::ops_cli::AdminArgs),
    /// Consumer lag of a running platform, with the lag monitor's judgement.
    Lag(shop::ops_cli::AdminArgs),
    /// The circuit breakers of a running platform.
    Breakers(shop::ops_cli::AdminArgs),
    /// Check the events' schemas against the snapshots in shop/schemas, or write them.
    #[command(subcommand)]
    Schemas(shop::contracts::schemas::SchemasCommand),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["customer", "operator"])))]
struct TokenArgs {
    /// A customer's token: reads and places that customer's orders.
    #[arg(long)]
    customer: Option<String>,
    /// An operator's token (changes the catalog, reads everything), under this name.
    #[arg(long, num_args = 0..=1, default_missing_value = "operator")]
    operator: Option<String>,
    /// A TOML configuration file (its `[auth]` section).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    use shop::auth::Role;
    let config = Config::load(args.config.as_deref())?;
    let (role, subject) = match (args.customer, args.operator) {
        (Some(customer), _) => (Role::Customer, customer),
        (None, Some(operator)) => (Role::Operator, operator),
        (None, None) => anyhow::bail!("give --customer ID or --operator"),
    };
    if subject.trim().is_empty() {
        anyhow::bail!("the token's subject must not be blank");
    }
    if !config.auth.enabled {
        eprintln!(
            "note: auth is off in this configuration; the platform will not ask for this token"
        );
    }
    println!("{}", shop::auth::mint(&config.auth, role, &subject)?);
    Ok(())
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `server.listen` (`provider.listen` for `provider`, `gateway.listen` for
    /// `gateway`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Run only this service (repeatable); overrides `services`.
    #[arg(long = "service")]
    services: Vec<shop::service::ServiceName>,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if !args.services.is_empty() {
        config.services = args.services.clone();
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve(args).await,
        Command::Provider(args) => provider(args).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Token(args) => token(args),
        Command::Projections(args) => shop::projections::run(args).await,
        Command::Dlq(args) => shop::ops_cli::run(args).await,
        Command::Outbox(args) => shop::ops_cli::outbox(args).await,
        Command::Lag(args) => shop::ops_cli::lag(args).await,
        Command::Breakers(args) => shop::ops_cli::breakers(args).await,
        Command::Schemas(command) => shop::contracts::schemas::run(command),
        Command::Up(args) => {
            let stop = tokio_util::sync::CancellationToken::new();
            let signalled = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                signalled.cancel();
            });
            shop::up::run(args, stop).await
        }
        Command::Demo(args) => match shop::load::run(args).await {
            Ok(report) => {
                println!("{report}");
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Installs logs and traces for the process called `name` (its `service.name` in
/// traces); the traces' exporter is flushed with [`flush_traces`] at the end.
fn telemetry(config: &Config, name: &str) -> anyhow::Result<Option<eddy_telemetry::Traces>> {
    let traces =
        eddy_telemetry::Traces::for_service(name, &config.tracing).map_err(anyhow::Error::msg)?;
    eddy_telemetry::init(&config.log_level, config.log_json, traces.as_ref());
    Ok(traces)
}

/// Sends the spans still queued (the exporter blocks: off the async workers).
async fn flush_traces(traces: Option<eddy_telemetry::Traces>) {
    if let Some(traces) = traces {
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
}

/// The `service.name` of a platform process: `shop` running all five services,
/// otherwise `shop-` and the ones it runs.
fn process_name(config: &Config) -> String {
    if config.services.len() == shop::service::ServiceName::ALL.len() {
        "shop".to_owned()
    } else {
        let names: Vec<&str> = config.services.iter().map(|s| s.as_str()).collect();
        format!("shop-{}", names.join("-"))
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let traces = telemetry(&config, &process_name(&config))?;
    warn_if_open(&config);
    let json = config.log_json;
    let banner_of = banner(&config);
    let platform = shop::platform::start(config).await?;
    let base = format!("http://{}", platform.api_addr);
    let mut lines = banner_of(&base);
    if let Some(provider) = platform.provider_addr {
        let before_demo = lines
            .iter()
            .position(|l| l.starts_with("  try"))
            .unwrap_or(lines.len());
        lines.insert(
            before_demo,
            format!("  provider   http://{provider}/v1/charges (simulated payment provider)"),
        );
    }
    lines.push(format!("listening on {base}"));
    say(json, &lines);
    shutdown_signal().await;
    say(
        json,
        &["shutting down: draining requests and messages…".to_owned()],
    );
    platform.stop().await?;
    flush_traces(traces).await;
    say(json, &["stopped cleanly".to_owned()]);
    Ok(())
}

/// The start-up banner for `config`, given the address it listens on: what runs, where
/// its data is (only when it keeps any in SQLite files), the routes this process serves
/// — only its services' — and the demo only where orders can be placed.
fn banner(config: &Config) -> impl Fn(&str) -> Vec<String> {
    use shop::service::ServiceName;
    let what = running_what(config);
    let sqlite = config
        .databases_used()
        .into_iter()
        .any(|d| config.database_url(d).starts_with("sqlite:"));
    let data = if sqlite {
        format!(" (data in {})", config.data_dir.display())
    } else {
        String::new()
    };
    let runs = |name| config.runs(name);
    let routes: Vec<&str> = [
        (ServiceName::Catalog, "/v1/products"),
        (ServiceName::Orders, "/v1/orders"),
        (ServiceName::Payments, "/v1/payments"),
    ]
    .into_iter()
    .filter(|(service, _)| runs(*service))
    .map(|(_, route)| route)
    .collect();
    let demo = runs(ServiceName::Catalog) && runs(ServiceName::Orders);
    let auth = if config.auth.enabled {
        format!(
            "  auth       bearer tokens ({:?}); for development: shop token --operator | --customer ID",
            config.auth.algorithm
        )
    } else {
        "  auth       OFF (development mode): anyone can change the catalog and read every order"
            .to_owned()
    };
    move |base: &str| {
        let mut lines = vec![format!("Eddy shop is running {what}{data}.")];
        if routes.is_empty() {
            lines.push("  API        none here: these services only consume events".to_owned());
        } else {
            let api: Vec<String> = routes.iter().map(|r| format!("{base}{r}")).collect();
            lines.push(format!(
                "  API        {}  (OpenAPI: {base}/openapi.json)",
                api.join(", ")
            ));
        }
        lines.push(format!(
            "  health     {base}/health/live, {base}/health/ready"
        ));
        lines.push(format!(
            "  metrics    {base}/metrics  (consumer lag: {base}/lag)"
        ));
        lines.push(auth.clone());
        if demo {
            lines.push(format!(
                "  try        cargo run --release -p shop -- demo --target {base}"
            ));
        }
        lines
    }
}

/// Development mode says so in the log, where an operator looks, not only in the banner.
fn warn_if_open(config: &Config) {
    if !config.auth.enabled {
        tracing::warn!(
            "auth is OFF: development mode, anyone who can reach this process can change the catalog and read every order; set [auth] enabled = true (docs/configuration.md)"
        );
    }
}

/// Prints `lines` for a person, or — with JSON logs — as one log line, so stdout stays
/// JSON lines.
fn say(json: bool, lines: &[String]) {
    if json {
        tracing::info!(banner = %lines.join("\n"), "started");
    } else {
        for line in lines {
            println!("{line}");
        }
    }
}

/// "on embedded defaults", or which services on which broker.
fn running_what(config: &Config) -> String {
    use shop::config::{BrokerKind, Database};
    use shop::service::ServiceName;
    let embedded = config.services.len() == ServiceName::ALL.len()
        && config.broker.kind == BrokerKind::Embedded
        && config
            .database_url(Database::Of(ServiceName::Orders))
            .starts_with("sqlite:");
    if embedded {
        return "on embedded defaults".to_owned();
    }
    let services: Vec<&str> = config.services.iter().map(|s| s.as_str()).collect();
    format!(
        "({}) on the {} broker",
        services.join(", "),
        config.broker.kind.as_str()
    )
}

async fn provider(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args)?;
    if let Some(listen) = args.listen {
        config.provider.listen = listen;
    }
    let traces = telemetry(&config, "shop-provider")?;
    let listener = tokio::net::TcpListener::bind(config.provider.listen).await?;
    println!(
        "payment provider listening on http://{}",
        listener.local_addr()?
    );
    let limits = config.connection_limits();
    let router = shop::provider::Provider::new(config.provider).router();
    let stop = tokio_util::sync::CancellationToken::new();
    let served =
        shop::platform::server::serve(listener, router, limits, stop.clone(), "payment provider");
    shutdown_signal().await;
    stop.cancel();
    served.await?;
    flush_traces(traces).await;
    Ok(())
}

async fn gateway(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args)?;
    if let Some(listen) = args.listen {
        config.gateway.listen = listen;
    }
    let traces = telemetry(&config, "shop-gateway")?;
    warn_if_open(&config);
    let stop = tokio_util::sync::CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signalled.cancel();
    });
    let result = shop::gateway::run(config, stop).await;
    flush_traces(traces).await;
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default command takes the same options as `serve`, as the README uses them.
    #[test]
    fn serve_options_work_without_the_serve_command() {
        let cli = Cli::try_parse_from(["shop", "--config", "x.toml", "--service", "orders"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.config, Some(PathBuf::from("x.toml")));
        assert_eq!(cli.serve.services, [shop::service::ServiceName::Orders]);
        let explicit = Cli::try_parse_from(["shop", "serve", "--config", "x.toml"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(explicit.command, Some(Command::Serve(args)) if args.config.is_some()));
    }

    /// `shop token --operator` (name optional) or `--customer ID`, one of them.
    #[test]
    fn token_takes_a_customer_or_an_operator() {
        let cli =
            Cli::try_parse_from(["shop", "token", "--operator"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(cli.command, Some(Command::Token(t)) if t.operator.as_deref() == Some("operator"))
        );
        let cli = Cli::try_parse_from(["shop", "token", "--customer", "alice"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(cli.command, Some(Command::Token(t)) if t.customer.as_deref() == Some("alice"))
        );
        assert!(Cli::try_parse_from(["shop", "token"]).is_err());
        assert!(Cli::try_parse_from(["shop", "token", "--customer", "a", "--operator"]).is_err());
    }

    /// A process advertises only what it serves.
    #[test]
    fn the_banner_names_only_this_processs_routes() {
        let monolith = banner(&Config::default())("http://h:1").join("\n");
        assert!(monolith.contains("on embedded defaults (data in data)"));
        assert!(monolith
            .contains("http://h:1/v1/products, http://h:1/v1/orders, http://h:1/v1/payments"));
        assert!(monolith.contains("demo --target http://h:1"));

        let inventory = Config {
            services: vec![shop::service::ServiceName::Inventory],
            ..Config::default()
        };
        let lines = banner(&inventory)("http://h:2").join("\n");
        assert!(lines.contains("none here"), "{lines}");
        assert!(
            !lines.contains("/v1/") && !lines.contains("demo"),
            "{lines}"
        );

        let mut on_postgres = Config {
            services: vec![shop::service::ServiceName::Orders],
            ..Config::default()
        };
        on_postgres.databases.orders = "postgres://db/orders".to_owned();
        on_postgres.databases.log = "postgres://db/log".to_owned();
        let lines = banner(&on_postgres)("http://h:3").join("\n");
        assert!(!lines.contains("data in"), "no SQLite files here: {lines}");
        assert!(lines.contains("http://h:3/v1/orders") && !lines.contains("/v1/products"));
    }
}
