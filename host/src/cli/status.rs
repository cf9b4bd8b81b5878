//! `weir status`: what the admin API's `GET /api/v1/status` reports, as tables (or the
//! JSON itself with `--json`).

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

use super::{AdminArgs, AdminClient};

/// Prints the status of the weir at `args.admin`.
pub(crate) async fn run(args: &AdminArgs, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(args)?;
    let status = client.call(http::Method::GET, "/api/v1/status", "application/json", Bytes::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// A plugin's line: `name (sha256 prefix) calls N traps N fallbacks N`.
fn plugin(p: &Value) -> String {
    let sha = p["sha256"].as_str().unwrap_or("");
    format!(
        "{} ({}) calls {} traps {} fallbacks {} loaded {}",
        p["name"].as_str().unwrap_or("?"),
        &sha[..sha.len().min(12)],
        p["calls"],
        p["traps"],
        p["fallbacks"],
        p["loaded_at"].as_str().unwrap_or("?"),
    )
}

/// The status document as text.
pub(crate) fn render(s: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "weir {} up {} s{}",
        s["version"].as_str().unwrap_or("?"),
        s["uptime_s"],
        s["config_file"].as_str().map(|f| format!(", config {f}")).unwrap_or_default()
    );
    let _ = writeln!(out, "\nLISTENER             ADDRESS                PROTOCOL          POOL        ACCEPTED");
    for l in s["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<22} {:<17} {:<11} {}",
            l["name"].as_str().unwrap_or("?"),
            l["address"].as_str().unwrap_or("?"),
            l["protocol"].as_str().unwrap_or("?"),
            l["pool"].as_str().unwrap_or("?"),
            l["accepted"]
        );
    }
    for p in s["pools"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\npool {}: {} eligible{}",
            p["name"].as_str().unwrap_or("?"),
            p["eligible"],
            if p["panic"] == true { ", PANIC" } else { "" }
        );
        let _ = writeln!(out, "  balancer  {}", plugin(&p["balancer"]));
        if !p["affinity"].is_null() {
            let _ = writeln!(out, "  affinity  {}", plugin(&p["affinity"]));
        }
        for h in p["health"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  health    {}", plugin(h));
        }
        let _ = writeln!(
            out,
            "  BACKEND                HEALTH     STATE      ACTIVE  IN-FLIGHT  REQUESTS  EWMA-US  TUNNELS"
        );
        for b in p["backends"].as_array().into_iter().flatten() {
            let state = if b["drained"] == true {
                "drained"
            } else if b["eligible"] == true {
                "eligible"
            } else {
                "out"
            };
            let _ = writeln!(
                out,
                "  {:<22} {:<10} {:<10} {:>6}  {:>9}  {:>8}  {:>7}  {:>7}",
                b["address"].as_str().unwrap_or("?"),
                b["health"]["verdict"].as_str().unwrap_or("?"),
                state,
                b["active"],
                b["in_flight"],
                b["requests"],
                b["latency_ewma_us"],
                b["tunnels"]
            );
        }
    }
    out
}
