//! `weir plugin swap` and `weir plugin rollback`: the admin API's safe swap
//! (`PUT /api/v1/pools/{pool}/{balancer|affinity|health}`) and rollback, from the command
//! line. A `.wasm` file is uploaded (the admin API may be on another machine); a pack name
//! is sent by name; for `health`, a JSON list is sent as the pool's whole list.

use anyhow::Context as _;
use bytes::Bytes;

use super::{AdminArgs, AdminClient, encode};

/// The plugin's config JSON a swap was given: `--plugin-config JSON`, or the global
/// `--config` (which names the server's config file for other commands; here a file is
/// not needed, so it is taken as the plugin's config: JSON text, or a `.json` file
/// holding it). A `.toml` file, the usual mistake, gets a message that says so.
pub(crate) fn plugin_config(
    plugin_config: Option<String>,
    global: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<String>> {
    match (plugin_config, global) {
        (Some(_), Some(_)) => anyhow::bail!("give the plugin's config once: --plugin-config or --config"),
        (Some(c), None) => Ok(Some(c)),
        (None, None) => Ok(None),
        (None, Some(path)) => {
            let text = path.to_string_lossy();
            if text.trim_start().starts_with('{') {
                return Ok(Some(text.into_owned()));
            }
            if path.extension().is_some_and(|e| e == "json") {
                return std::fs::read_to_string(&path)
                    .map(Some)
                    .with_context(|| format!("cannot read the plugin's config from {}", path.display()));
            }
            anyhow::bail!(
                "--config {text}: for `weir plugin swap`, --config is the plugin's config as JSON (e.g. '{{\"key\": \"path\"}}') or a .json file; the swap goes through the admin API (--admin), so the server's config file is not needed"
            )
        }
    }
}

/// Swaps `pool`'s `kind` (`balancer`, `affinity` or `health`) for `plugin` (a pack name,
/// a `.wasm` file, or for `health` a JSON list of `{plugin, config}`) with `config`
/// (JSON).
pub(crate) async fn swap(
    args: &AdminArgs,
    pool: &str,
    kind: &str,
    plugin: &str,
    config: Option<&str>,
) -> anyhow::Result<()> {
    let client = AdminClient::new(args)?;
    let config: serde_json::Value = match config {
        Some(c) => serde_json::from_str(c).context("--config must be JSON")?,
        None => serde_json::json!({}),
    };
    let path = std::path::Path::new(plugin);
    let is_file = plugin.ends_with(".wasm") || plugin.contains('/');
    let answer = if kind == "health" && plugin.trim_start().starts_with('[') {
        anyhow::ensure!(
            config.as_object().is_some_and(|c| c.is_empty()),
            "a JSON list carries each plugin's config: drop --config"
        );
        let _: serde_json::Value = serde_json::from_str(plugin).context("--health: not a JSON list")?;
        let url = format!("/api/v1/pools/{}/{kind}", encode(pool));
        client.call(http::Method::PUT, &url, "application/json", Bytes::from(plugin.to_owned())).await?
    } else if is_file {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {plugin}"))?;
        let name = path.file_name().map_or_else(|| plugin.to_owned(), |n| n.to_string_lossy().into_owned());
        let query = format!("?name={}&config={}", encode(&name), encode(&config.to_string()));
        let url = format!("/api/v1/pools/{}/{kind}{query}", encode(pool));
        client.call(http::Method::PUT, &url, "application/wasm", Bytes::from(bytes)).await?
    } else {
        let body = serde_json::json!({ "plugin": plugin, "config": config }).to_string();
        let url = format!("/api/v1/pools/{}/{kind}", encode(pool));
        client.call(http::Method::PUT, &url, "application/json", Bytes::from(body)).await?
    };
    report("swapped", &answer);
    Ok(())
}

/// Rolls `pool`'s `kind` back to the version the last swap replaced.
pub(crate) async fn rollback(args: &AdminArgs, pool: &str, kind: &str) -> anyhow::Result<()> {
    let client = AdminClient::new(args)?;
    let url = format!("/api/v1/pools/{}/{kind}/rollback", encode(pool));
    let answer = client.call(http::Method::POST, &url, "application/json", Bytes::new()).await?;
    report("rolled back", &answer);
    Ok(())
}

fn report(what: &str, a: &serde_json::Value) {
    // A health swap answers the pool's list of evaluators.
    let plugins: Vec<&serde_json::Value> = match &a["plugin"] {
        serde_json::Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    let name = |p: &serde_json::Value| p["name"].as_str().unwrap_or("none").to_owned();
    let sha = |p: &serde_json::Value| p["sha256"].as_str().map_or("-".to_owned(), |s| s[..s.len().min(12)].to_owned());
    println!(
        "{what}: pool {} {} is now {} (sha256 {}); load {:.1} ms ({}), dry run {:.1} ms, switch {:.3} ms",
        a["pool"].as_str().unwrap_or("?"),
        a["kind"].as_str().unwrap_or("?"),
        plugins.iter().map(|p| name(p)).collect::<Vec<_>>().join(", "),
        plugins.iter().map(|p| sha(p)).collect::<Vec<_>>().join(", "),
        a["load_ms"].as_f64().unwrap_or(0.0),
        a["code"].as_str().unwrap_or("?"),
        a["dry_run_ms"].as_f64().unwrap_or(0.0),
        a["switch_ms"].as_f64().unwrap_or(0.0),
    );
}
