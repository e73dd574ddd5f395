//! `shop up --per-service`: the scale-out layout as one command. The five services, the
//! payment provider and the gateway run as child processes of this one, on ports and
//! PostgreSQL databases derived from one port and one server url; it creates the
//! databases it needs, waits until the gateway is ready, prefixes every child's output
//! with its name, restarts a child that dies (and says so), and stops them all on
//! Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::service::ServiceName;

/// How long the gateway has to become ready after the start.
const READY_WAIT: Duration = Duration::from_secs(120);
/// Pause before a dead child is started again; doubled per restart in a row, to this.
const RESTART_PAUSE_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long before dying starts again at once.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long children have to stop after SIGTERM before they are killed.
const STOP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// One process per service behind the gateway (the layout this command runs).
    #[arg(long, required = true)]
    pub per_service: bool,
    /// A TOML configuration file, passed on to every child.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The gateway's port; the provider listens on port + 1, catalog, orders,
    /// inventory, payments and notifications on port + 11 … + 15.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The PostgreSQL server; each service gets the database `<prefix><service>` on it
    /// (and the embedded log `<prefix>log`), created when missing.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// Prefix of the database names.
    #[arg(long, default_value = "")]
    pub database_prefix: String,
}

/// One child process: what it is called and how it is started.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn port(base: u16, offset: u16) -> anyhow::Result<u16> {
    base.checked_add(offset)
        .with_context(|| format!("--port {base} leaves no room for port + {offset}"))
}

fn specs(args: &UpArgs) -> anyhow::Result<Vec<Spec>> {
    let server = args.postgres.trim_end_matches('/');
    let db = |name: &str| format!("{server}/{}{name}", args.database_prefix);
    let config: Vec<String> = args
        .config
        .iter()
        .flat_map(|c| ["--config".to_owned(), c.display().to_string()])
        .collect();
    let provider_port = port(args.port, 1)?;
    let provider_url = format!("http://127.0.0.1:{provider_port}");
    let mut specs = vec![Spec {
        name: "provider".to_owned(),
        args: [vec!["provider".to_owned()], config.clone()].concat(),
        env: vec![(
            "EDDY_PROVIDER__LISTEN".to_owned(),
            format!("127.0.0.1:{provider_port}"),
        )],
    }];
    let mut gateway_env = Vec::new();
    for (i, service) in ServiceName::ALL.iter().enumerate() {
        let name = service.as_str();
        let listen = format!("127.0.0.1:{}", port(args.port, 11 + i as u16)?);
        gateway_env.push((
            format!("EDDY_GATEWAY__{}_URL", name.to_ascii_uppercase()),
            format!("http://{listen}"),
        ));
        specs.push(Spec {
            name: name.to_owned(),
            args: [
                vec!["serve".to_owned(), "--service".to_owned(), name.to_owned()],
                vec!["--listen".to_owned(), listen],
                config.clone(),
            ]
            .concat(),
            env: vec![
                ("EDDY_INSTANCE_ID".to_owned(), name.to_owned()),
                (
                    format!("EDDY_DATABASES__{}", name.to_ascii_uppercase()),
                    db(name),
                ),
                ("EDDY_DATABASES__LOG".to_owned(), db("log")),
                ("EDDY_PROVIDER__EMBEDDED".to_owned(), "false".to_owned()),
                (
                    "EDDY_PAYMENTS__PROVIDER_URL".to_owned(),
                    provider_url.clone(),
                ),
            ],
        });
    }
    gateway_env.push((
        "EDDY_GATEWAY__LISTEN".to_owned(),
        format!("127.0.0.1:{}", args.port),
    ));
    specs.push(Spec {
        name: "gateway".to_owned(),
        args: [vec!["gateway".to_owned()], config].concat(),
        env: gateway_env,
    });
    Ok(specs)
}

/// Creates the databases `up` uses that do not exist yet.
async fn create_databases(args: &UpArgs) -> anyhow::Result<()> {
    let server = args.postgres.trim_end_matches('/');
    let admin = format!("{server}/postgres");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {admin}"))?;
    let names = ServiceName::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(["log"])
        .map(|n| format!("{}{n}", args.database_prefix));
    for name in names {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("database name {name:?}: use letters, digits and _ in --database-prefix");
        }
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .with_context(|| format!("cannot create database {name}"))?;
            println!("created database {name}");
        }
    }
    Ok(())
}

/// Runs the layout until `stop`.
pub async fn run(args: UpArgs, stop: CancellationToken) -> anyhow::Result<()> {
    if !args.per_service {
        bail!("give --per-service (the one layout `shop up` runs)");
    }
    let exe = std::env::current_exe().context("cannot find the shop binary")?;
    create_databases(&args).await?;
    let mut supervisors = Vec::new();
    for spec in specs(&args)? {
        supervisors.push(tokio::spawn(supervise(exe.clone(), spec, stop.clone())));
    }
    let gateway = format!("http://127.0.0.1:{}", args.port);
    let ready = tokio::select! {
        () = stop.cancelled() => false,
        ready = wait_ready(&gateway) => ready,
    };
    if ready {
        println!("Eddy shop is running one process per service.");
        println!("  API        {gateway}/v1/products, {gateway}/v1/orders, {gateway}/v1/payments (through the gateway)");
        println!("  health     {gateway}/health/ready (every service), {gateway}/metrics");
        println!("  stop       Ctrl-C stops every process; a process that dies is restarted");
    } else if !stop.is_cancelled() {
        eprintln!(
            "the gateway at {gateway} was not ready within {} s; see the output above",
            READY_WAIT.as_secs()
        );
    }
    stop.cancelled().await;
    let mut failed = Vec::new();
    for supervisor in supervisors {
        match supervisor.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failed.push(format!("{error:#}")),
            Err(join) => failed.push(join.to_string()),
        }
    }
    if failed.is_empty() {
        println!("stopped every process cleanly");
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

async fn wait_ready(gateway: &str) -> bool {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while tokio::time::Instant::now() < deadline {
        let answer = http
            .get(format!("{gateway}/health/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Keeps `spec` running until `stop`, then stops it.
async fn supervise(exe: PathBuf, spec: Spec, stop: CancellationToken) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(500);
    loop {
        let started = tokio::time::Instant::now();
        let mut child = start(&exe, &spec)?;
        let exited = tokio::select! {
            exited = child.wait() => exited,
            () = stop.cancelled() => return stop_child(&spec.name, child).await,
        };
        let status = exited.map_or_else(|e| e.to_string(), |s| s.to_string());
        if started.elapsed() >= HEALTHY_RUN {
            pause = Duration::from_millis(500);
        }
        eprintln!(
            "[{}] exited ({status}); restarting in {} ms",
            spec.name,
            pause.as_millis()
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return Ok(()),
        }
        pause = (pause * 2).min(RESTART_PAUSE_MAX);
    }
}

fn start(exe: &PathBuf, spec: &Spec) -> anyhow::Result<Child> {
    let mut child = Command::new(exe)
        .args(&spec.args)
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", spec.name))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix(spec.name.clone(), out, false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix(spec.name.clone(), err, true));
    }
    Ok(child)
}

async fn prefix(name: String, from: impl tokio::io::AsyncRead + Unpin, to_stderr: bool) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if to_stderr {
            eprintln!("[{name}] {line}");
        } else {
            println!("[{name}] {line}");
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_WAIT`]; an error unless it stopped cleanly.
async fn stop_child(name: &str, mut child: Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        // No signal API without unsafe code here: kill(1) sends the SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(STOP_WAIT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        // Ctrl-C in a terminal reaches the children too; a child stopped by it exits 0 as
        // well, since it handles SIGINT the same way.
        Ok(Ok(status)) => bail!("{name} stopped with {status}"),
        Ok(Err(error)) => bail!("{name}: {error}"),
        Err(_) => {
            let _ = child.kill().await;
            bail!(
                "{name} did not stop within {} s and was killed",
                STOP_WAIT.as_secs()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_databases_come_from_one_port_and_one_url() {
        let args = UpArgs {
            per_service: true,
            config: None,
            port: 9000,
            postgres: "postgres://pg:5432/".to_owned(),
            database_prefix: "t_".to_owned(),
        };
        let all = specs(&args).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "provider",
                "catalog",
                "orders",
                "inventory",
                "payments",
                "notifications",
                "gateway"
            ]
        );
        let orders = &all[2];
        assert!(orders.args.contains(&"127.0.0.1:9012".to_owned()));
        assert!(orders.env.contains(&(
            "EDDY_DATABASES__ORDERS".to_owned(),
            "postgres://pg:5432/t_orders".to_owned()
        )));
        let gateway = &all[6];
        assert!(gateway.env.contains(&(
            "EDDY_GATEWAY__PAYMENTS_URL".to_owned(),
            "http://127.0.0.1:9014".to_owned()
        )));
        assert!(specs(&UpArgs {
            port: 65530,
            ..args
        })
        .is_err());
    }
}
