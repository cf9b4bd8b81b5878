//! `weir plugin swap` and `weir plugin rollback`: the admin API's safe swap
//! (`PUT /api/v1/pools/{pool}/{balancer|affinity}`) and rollback, from the command line.
//! A `.wasm` file is uploaded (the admin API may be on another machine); a pack name is
//! sent by name.

use anyhow::Context as _;
use bytes::Bytes;

use super::{AdminArgs, AdminClient, encode};

/// Swaps `pool`'s `kind` (`balancer` or `affinity`) for `plugin` (a pack name or a
/// `.wasm` file) with `config` (JSON).
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
    let answer = if is_file {
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
    println!(
        "{what}: pool {} {} is now {} (sha256 {}); load {:.1} ms ({}), dry run {:.1} ms, switch {:.3} ms",
        a["pool"].as_str().unwrap_or("?"),
        a["kind"].as_str().unwrap_or("?"),
        a["plugin"]["name"].as_str().unwrap_or("none"),
        a["plugin"]["sha256"].as_str().map_or("-", |s| &s[..s.len().min(12)]),
        a["load_ms"].as_f64().unwrap_or(0.0),
        a["code"].as_str().unwrap_or("?"),
        a["dry_run_ms"].as_f64().unwrap_or(0.0),
        a["switch_ms"].as_f64().unwrap_or(0.0),
    );
}
