//! Durations in the config: an integer is milliseconds (`interval_ms = 2000`); a string
//! carries its unit (`"250ms"`, `"2s"`, `"1m"`, `"1h"`, fractions allowed: `"1.5s"`).

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for FileDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FileDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("milliseconds as an integer, or a string such as \"250ms\", \"2s\", \"1m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileDuration, E> {
                u64::try_from(v)
                    .map(|ms| FileDuration(Duration::from_millis(ms)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileDuration, E> {
                Ok(FileDuration(Duration::from_millis(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileDuration, E> {
                parse(v).map(FileDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"250ms"`, `"2s"`, `"1.5m"`, `"1h"`.
pub(super) fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as \"2s\""))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "us" | "µs" => 1e-6,
        _ => return Err(format!("`{text}`: unit must be one of us, ms, s, m, h")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// A duration for messages, in the largest unit that divides it: `7 days`, `90 s`,
/// `250 ms`, else as `Debug` shows it (`1.5ms`).
pub(super) fn human(d: Duration) -> String {
    if d.is_zero() {
        return "0 ms".to_owned();
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    for (unit, size) in [("days", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(size) {
            let n = ms / size;
            return if unit == "days" && n == 1 { "1 day".to_owned() } else { format!("{n} {unit}") };
        }
    }
    format!("{ms} ms")
}
