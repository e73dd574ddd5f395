//! Log setup.

/// Installs the log subscriber: JSON lines or text, filtered by `level` (tracing's
/// filter syntax; `RUST_LOG` overrides it). A second call changes nothing.
///
/// Colours only when stdout is a terminal (never escape codes in a file), and
/// PostgreSQL's notices (`relation … already exists, skipping`, a dozen per start)
/// below the default level unless asked for.
pub fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("sqlx::postgres::notice=warn,{level}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    // An error means a subscriber is installed already (tests start several platforms).
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
