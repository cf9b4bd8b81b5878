//! The subcommands that are more than a few lines, one module each (`main.rs` holds only
//! the argument enums and the dispatch): the conformance kit ([`test`]), scaffolds
//! ([`new`]), the admin API's clients ([`status`], [`swap`]) and what those share: one HTTP/1.1 request to the admin API
//! ([`AdminClient`]) with hyper's client, and the bearer token from `--token-file`.

use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub(crate) mod new;
pub(crate) mod status;
pub(crate) mod swap;
pub(crate) mod test;

/// Where the admin API is, and how to be let in.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    pub(crate) admin: String,
    /// A file holding the bearer token (the admin's `token_file`).
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
}

/// One admin API server to call.
pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub(crate) fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let base = args.admin.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            anyhow::bail!("--admin {base}: the admin API speaks plain HTTP (http://HOST:PORT)");
        }
        Ok(Self { base, token, client: Client::builder(TokioExecutor::new()).build_http() })
    }

    /// Sends `method path` with `body`; returns the status and the JSON answer. An error
    /// answer (4xx, 5xx) becomes an error carrying the API's reason.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let mut req =
            http::Request::builder().method(method.clone()).uri(&url).header(http::header::CONTENT_TYPE, content_type);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body)).with_context(|| format!("bad URL {url}"))?;
        let res =
            self.client.request(req).await.with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = res.status();
        let bytes = res.into_body().collect().await.context("the admin API's answer was cut")?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {url}: {status}, and the answer is not JSON"))?;
        if !status.is_success() {
            let reason = value["error"].as_str().unwrap_or("no reason given");
            anyhow::bail!("{method} {path}: {status}: {reason}");
        }
        Ok(value)
    }
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    use std::fmt::Write as _;
    value.bytes().fold(String::with_capacity(value.len()), |mut s, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
        s
    })
}
