//! A pool's health settings: the timed probe, the evaluators (health plugins), the
//! statuses that count as failures of live traffic, slow start, the panic threshold and
//! what happens to the WebSockets of a backend that turns unhealthy.

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::bounds::{HEALTH_TICK as TICK, PROBE_INTERVAL, PROBE_TIMEOUT, SLOW_START};
use super::{Cx, FileDuration, FilePluginRef, PluginRef};
use crate::config::ConfigError;

/// What a timed probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// Connects, then closes.
    Tcp,
    /// Sends `GET path` and checks the status (and the body, if asked).
    Http,
    /// Completes a WebSocket upgrade on `path` and a ping/pong, then closes.
    #[serde(rename = "websocket")]
    WebSocket,
}

impl ProbeKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::WebSocket => "websocket",
        }
    }
}

/// What happens to the open WebSockets of a backend that turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    /// They stay open: only new work goes elsewhere.
    #[default]
    Keep,
    /// They are drained as when the backend leaves the pool: a close frame `1001` each,
    /// spread over `drain_spread_ms`, cut at `drain_deadline_ms`.
    Drain,
}

/// A set of HTTP statuses, written `"200-399"`, `"500,502-504"`. Kept as ranges (to
/// print) and as a bit per status 0 to 1023 (to test on the data path: a shift and a
/// mask, whatever the number of ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<RangeInclusive<u16>>, [u64; 16]);

impl StatusSet {
    /// Parses a comma-separated list of statuses and ranges, each 100 to 999.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = part.split_once('-').map_or((part, part), |(a, b)| (a.trim(), b.trim()));
            let status = |s: &str| match s.parse::<u16>() {
                Ok(n) if (100..=999).contains(&n) => Ok(n),
                _ => Err(format!("`{s}` is not an HTTP status (100 to 999) in `{text}`")),
            };
            let (lo, hi) = (status(lo)?, status(hi)?);
            if lo > hi {
                return Err(format!("`{part}` is an empty range in `{text}`"));
            }
            ranges.push(lo..=hi);
        }
        Ok(Self::of(ranges))
    }

    fn of(ranges: Vec<RangeInclusive<u16>>) -> Self {
        let mut bits = [0u64; 16];
        for s in ranges.iter().flat_map(|r| r.clone()) {
            bits[usize::from(s >> 6) & 15] |= 1 << (s & 63);
        }
        Self(ranges, bits)
    }

    /// Whether `status` is in the set.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        status < 1024 && self.1[usize::from(status >> 6)] & (1 << (status & 63)) != 0
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if r.start() == r.end() {
                write!(f, "{sep}{}", r.start())?
            } else {
                write!(f, "{sep}{}-{}", r.start(), r.end())?
            }
        }
        Ok(())
    }
}

/// A pool's timed probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// tcp, http or websocket.
    pub kind: ProbeKind,
    /// Time between two probes of one backend (each backend's timer is jittered).
    pub interval: Duration,
    /// Longest a probe may take, connect included.
    pub timeout: Duration,
    /// The port probed instead of the backend's own.
    pub port: Option<u16>,
    /// Request path (http, websocket).
    pub path: String,
    /// `Host` header; the backend's address as written when absent.
    pub host: Option<String>,
    /// Statuses that pass (http; websocket always expects 101).
    pub expect_status: StatusSet,
    /// Text the body must contain (http), read up to [`MAX_PROBE_BODY`] bytes.
    pub expect_body: Option<String>,
    /// Whether an http probe keeps its connection open for the next probe of the same
    /// backend (else each probe connects anew and sends `Connection: close`).
    pub reuse_connection: bool,
}

/// Most of a probe's response body read to look for `expect_body`.
pub const MAX_PROBE_BODY: usize = 64 << 10;

/// A pool's health settings. The default checks nothing: every backend is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The evaluators, in file order. `[threshold]` when a probe is set and none is named.
    pub plugins: Vec<PluginRef>,
    /// The timed probe, if any.
    pub probe: Option<ProbeConfig>,
    /// Period of the evaluators' `tick`.
    pub tick: Duration,
    /// Response statuses of live traffic that count as failures.
    pub passive_failure_statuses: StatusSet,
    /// Ramp of a recovered or added backend's share of new work (zero: none).
    pub slow_start: Duration,
    /// Below this percentage of usable backends, every backend is eligible (0: never).
    pub panic_threshold_percent: u8,
    /// What happens to the WebSockets of a backend that turns unhealthy.
    pub on_unhealthy: OnUnhealthy,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            probe: None,
            tick: Duration::from_secs(1),
            passive_failure_statuses: StatusSet::of(vec![500..=599]),
            slow_start: Duration::ZERO,
            panic_threshold_percent: 50,
            on_unhealthy: OnUnhealthy::Keep,
        }
    }
}

impl HealthConfig {
    /// Whether anything watches this pool's health (a probe or an evaluator).
    pub fn enabled(&self) -> bool {
        !self.plugins.is_empty()
    }
}

/// `probe = { ... }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileProbe {
    /// `"tcp"`, `"http"` or `"websocket"`. Required.
    kind: ProbeKind,
    /// Default 2 s. Range 10 ms to 1 day.
    interval_ms: Option<Spanned<FileDuration>>,
    /// Default 1 s. Range 1 ms to 1 day, at most `interval_ms`.
    timeout_ms: Option<Spanned<FileDuration>>,
    /// Default: the backend's own port. 1 to 65535.
    port: Option<Spanned<i64>>,
    /// Default `/`. Must start with `/`.
    path: Option<Spanned<String>>,
    /// Default: the backend's address as written.
    host: Option<Spanned<String>>,
    /// Default `"200-399"` (http only).
    expect_status: Option<Spanned<String>>,
    /// Default none (http only). At most 64 KiB.
    expect_body: Option<Spanned<String>>,
    /// Default true (http only).
    reuse_connection: Option<Spanned<bool>>,
}

/// The health keys of `[pool.NAME]` as written (taken out of `FilePool`: serde cannot
/// flatten a table that denies unknown fields).
#[derive(Debug, Default)]
pub(super) struct FilePoolHealth {
    pub(super) health: Vec<FilePluginRef>,
    pub(super) probe: Option<FileProbe>,
    pub(super) health_tick_ms: Option<Spanned<FileDuration>>,
    pub(super) passive_failure_statuses: Option<Spanned<String>>,
    pub(super) slow_start_ms: Option<Spanned<FileDuration>>,
    pub(super) panic_threshold_percent: Option<Spanned<i64>>,
    pub(super) on_unhealthy: OnUnhealthy,
}

impl Cx<'_> {
    pub(super) fn health(&self, file: FilePoolHealth, base: &Path, key: &str) -> Result<HealthConfig, ConfigError> {
        let defaults = HealthConfig::default();
        let probe = match file.probe {
            Some(p) => Some(self.probe(p, &format!("{key}.probe"))?),
            None => None,
        };
        let mut plugins = Vec::with_capacity(file.health.len());
        for (i, p) in file.health.into_iter().enumerate() {
            plugins.push(self.plugin_ref(p, base, &format!("{key}.health[{i}]"), false)?);
        }
        if plugins.is_empty() && probe.is_some() {
            plugins.push(PluginRef::pack("threshold"));
        }
        let tick = self
            .duration(file.health_tick_ms.as_ref(), || format!("{key}.health_tick_ms"), TICK)?
            .unwrap_or(defaults.tick);
        let passive_failure_statuses = match &file.passive_failure_statuses {
            Some(s) => StatusSet::parse(s.get_ref())
                .map_err(|m| self.spanned(s, format!("{key}.passive_failure_statuses"), m))?,
            None => defaults.passive_failure_statuses,
        };
        let slow_start = self
            .duration(file.slow_start_ms.as_ref(), || format!("{key}.slow_start_ms"), SLOW_START)?
            .unwrap_or(defaults.slow_start);
        let panic_threshold_percent = self
            .number(file.panic_threshold_percent.as_ref(), || format!("{key}.panic_threshold_percent"), 0..=100)?
            .map_or(defaults.panic_threshold_percent, |p| p as u8);
        Ok(HealthConfig {
            plugins,
            probe,
            tick,
            passive_failure_statuses,
            slow_start,
            panic_threshold_percent,
            on_unhealthy: file.on_unhealthy,
        })
    }

    fn probe(&self, p: FileProbe, key: &str) -> Result<ProbeConfig, ConfigError> {
        let interval = self
            .duration(p.interval_ms.as_ref(), || format!("{key}.interval_ms"), PROBE_INTERVAL)?
            .unwrap_or(Duration::from_secs(2));
        let timeout = self
            .duration(p.timeout_ms.as_ref(), || format!("{key}.timeout_ms"), PROBE_TIMEOUT)?
            .unwrap_or(Duration::from_secs(1).min(interval));
        if timeout > interval {
            let at = p.timeout_ms.as_ref().or(p.interval_ms.as_ref());
            let message = format!(
                "timeout_ms ({}) is longer than interval_ms ({}): a probe must end before the next one",
                super::duration::human(timeout),
                super::duration::human(interval)
            );
            return Err(match at {
                Some(at) => self.spanned(at, format!("{key}.timeout_ms"), message),
                None => self.at(None, format!("{key}.timeout_ms"), message),
            });
        }
        let port = self.number(p.port.as_ref(), || format!("{key}.port"), 1..=65_535)?.map(|n| n as u16);
        let path = match &p.path {
            Some(s) if !s.get_ref().starts_with('/') || s.get_ref().parse::<http::uri::PathAndQuery>().is_err() => {
                return Err(self.spanned(
                    s,
                    format!("{key}.path"),
                    format!("`{}` is not a request path (it starts with `/`; no spaces, `<`, `>`)", s.get_ref()),
                ));
            }
            Some(s) => s.get_ref().clone(),
            None => "/".to_owned(),
        };
        let host = match &p.host {
            Some(h) if h.get_ref().contains('@') || h.get_ref().parse::<http::uri::Authority>().is_err() => {
                return Err(self.spanned(
                    h,
                    format!("{key}.host"),
                    format!("`{}` is not a host[:port] (a Host header and a URI authority)", h.get_ref()),
                ));
            }
            Some(h) => Some(h.get_ref().clone()),
            None => None,
        };
        let http_only = |v: Option<&Spanned<String>>, name: &str| match v {
            Some(v) if p.kind != ProbeKind::Http => Err(self.spanned(
                v,
                format!("{key}.{name}"),
                format!("only an http probe checks {name} (this one is {})", p.kind.as_str()),
            )),
            _ => Ok(()),
        };
        http_only(p.expect_status.as_ref(), "expect_status")?;
        http_only(p.expect_body.as_ref(), "expect_body")?;
        if let Some(v) = p.reuse_connection.as_ref().filter(|_| p.kind != ProbeKind::Http) {
            return Err(self.spanned(
                v,
                format!("{key}.reuse_connection"),
                format!("only an http probe keeps its connection (this one is {})", p.kind.as_str()),
            ));
        }
        let reuse_connection = p.reuse_connection.as_ref().is_none_or(|v| *v.get_ref());
        let expect_status = match &p.expect_status {
            Some(s) => StatusSet::parse(s.get_ref()).map_err(|m| self.spanned(s, format!("{key}.expect_status"), m))?,
            None => StatusSet::of(vec![200..=399]),
        };
        let expect_body = match &p.expect_body {
            Some(b) if b.get_ref().is_empty() || b.get_ref().len() > MAX_PROBE_BODY => {
                return Err(self.spanned(b, format!("{key}.expect_body"), "must be 1 byte to 64 KiB of text"));
            }
            Some(b) => Some(b.get_ref().clone()),
            None => None,
        };
        if p.kind == ProbeKind::Tcp {
            for (v, name) in [(&p.path, "path"), (&p.host, "host")] {
                if let Some(v) = v {
                    return Err(self.spanned(
                        v,
                        format!("{key}.{name}"),
                        "a tcp probe sends nothing: it takes no path or host",
                    ));
                }
            }
        }
        Ok(ProbeConfig {
            kind: p.kind,
            interval,
            timeout,
            port,
            path,
            host,
            expect_status,
            expect_body,
            reuse_connection,
        })
    }
}
