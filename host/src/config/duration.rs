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

/// Parses `"250ms"`, `"2s"`, `"1.5m"`, `"1h"`, exactly (decimal, to the nanosecond; not
/// through a float, which would turn `"4209957952ms"` into 4209957.952000001 s).
pub(super) fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let not_a_duration = || format!("`{text}` is not a duration such as \"2s\"");
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(not_a_duration());
    }
    let unit_nanos: u128 = match unit.trim() {
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("`{text}`: unit must be one of us, ms, s, m, h")),
    };
    let too_long = || format!("`{text}` is too long a duration");
    // Digits past the 18th of a fraction are below a nanosecond of any unit.
    let frac = &frac[..frac.len().min(18)];
    let digits = |d: &str| if d.is_empty() { Ok(0) } else { d.parse::<u128>().map_err(|_| too_long()) };
    let (whole, part) = (digits(int)?, digits(frac)?);
    let part = part * unit_nanos / 10u128.pow(frac.len() as u32);
    let nanos = whole.checked_mul(unit_nanos).and_then(|n| n.checked_add(part)).ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration for messages, in the largest unit that divides it: `7 days`, `90 s`,
/// `250 ms`, else as `Debug` shows it (`1.5ms`).
pub(crate) fn human(d: Duration) -> String {
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
