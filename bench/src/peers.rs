//! The Python peers in `bench/peers/`, installed into `bench/.venv` by
//! `bench/peers/setup.sh`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The virtual environment's Python if it can import every module of `modules`
/// (comma-separated, as in an `import` statement); `None` when the peers are not installed.
pub fn python(modules: &str) -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// The path of a peer script in `bench/peers/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// Runs a peer script that prints its result as one JSON line, last.
pub async fn run_json(mut command: tokio::process::Command) -> anyhow::Result<serde_json::Value> {
    let output = command.output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the peer failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_str(stdout.lines().last().unwrap_or("")).context("the peer printed no result")
}
