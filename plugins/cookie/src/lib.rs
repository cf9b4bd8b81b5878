//! `cookie`: pins a client to its backend with a signed cookie, as HAProxy's
//! `cookie ... insert` or Envoy's cookie-based hash policy, but signed.
//!
//! The cookie names the backend by a stable id, the XXH3 hash of its configured address,
//! so it survives restarts and config reorderings and is understood by every weir
//! instance that shares the signing key. Its value is `ID.EXPIRY.TAG`: the id (16 hex
//! digits), the expiry in Unix seconds (hex; 0 for a session cookie) and the first 16
//! bytes of HMAC-SHA256(key, `NAME=ID.EXPIRY`), hex. A cookie that is tampered with,
//! expired, or names a backend no longer in the pool is ignored: the balancer picks and a
//! fresh cookie is set. Nothing a client sends can make it an error.
//!
//! Config (all optional): `name` (`WEIR_AFFINITY`), `key` (the signing key, at least 16
//! bytes; give it as `key_file` so it stays out of the config; without one a random key of
//! this process is used and cookies do not survive a restart), `max_age_s` (none: a
//! session cookie; with one, the cookie is re-issued once half its age has passed, so an
//! active client keeps its pin), `path` (`/`), `domain`, `secure` (false), `http_only`
//! (true), `same_site` (`Lax`; `Strict`, `Lax` or `None`, which needs `secure`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use weir_guest::types::{BackendId, PluginError};
use weir_guest::{pool, request};

wit_bindgen::generate!({
    world: "affinity-plugin",
    path: "../../wit",
    with: {
        "weir:plugin/types@0.1.0": weir_guest::types,
        "weir:plugin/pool@0.1.0": weir_guest::pool,
        "weir:plugin/request@0.1.0": weir_guest::request,
        "weir:plugin/log@0.1.0": weir_guest::log,
    },
});

type HmacSha256 = Hmac<sha2::Sha256>;

/// Bytes of the HMAC kept in the cookie.
const TAG_BYTES: usize = 16;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_name")]
    name: String,
    key: Option<String>,
    max_age_s: Option<u64>,
    #[serde(default = "default_path")]
    path: String,
    domain: Option<String>,
    #[serde(default)]
    secure: bool,
    #[serde(default = "yes")]
    http_only: bool,
    #[serde(default = "default_same_site")]
    same_site: String,
}

fn default_name() -> String {
    "WEIR_AFFINITY".into()
}
fn default_path() -> String {
    "/".into()
}
fn yes() -> bool {
    true
}
fn default_same_site() -> String {
    "Lax".into()
}

/// What one instance derives from its config and its pool.
struct State {
    name: String,
    max_age_s: Option<u64>,
    /// `; Path=/; HttpOnly; ...`: everything after the value, built once.
    attributes: String,
    /// The keyed HMAC, cloned per use so the key is not re-processed.
    mac: HmacSha256,
    /// Backend id by stable id, for the current pool generation.
    by_stable: HashMap<u64, BackendId>,
    /// Stable id by backend id.
    stable: Vec<u64>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// A cookie value, parsed and verified.
struct Pin {
    stable: u64,
    expiry: u64,
}

impl State {
    fn from_config(json: &str) -> Result<Self, PluginError> {
        let c: Config = weir_guest::parse_config(json)?;
        let invalid = |m: String| Err(PluginError::InvalidConfig(m));
        if c.name.is_empty() || !c.name.bytes().all(is_token) {
            return invalid(format!("name: `{}` is not a cookie name", c.name));
        }
        let same_site = match c.same_site.to_ascii_lowercase().as_str() {
            "strict" => "Strict",
            "lax" => "Lax",
            "none" if c.secure => "None",
            "none" => return invalid("same_site: `None` needs `secure = true` (browsers refuse it otherwise)".into()),
            _ => return invalid(format!("same_site: `{}` is not Strict, Lax or None", c.same_site)),
        };
        if c.max_age_s == Some(0) {
            return invalid("max_age_s: must be at least 1 (leave it out for a session cookie)".into());
        }
        let key = match &c.key {
            Some(k) if k.len() < 16 => return invalid(format!("key: {} bytes; at least 16 are needed", k.len())),
            Some(k) => k.as_bytes().to_vec(),
            // Said once per pool and process, not by every instance on every thread.
            None if pool::counter_next(pool::counter("cookie: random key warned")) > 0 => pool::secret("cookie"),
            None => {
                weir_guest::log!(
                    Warn,
                    "cookie: no `key_file`; signing with a random key of this process, so cookies will not survive a restart or be understood by another weir"
                );
                pool::secret("cookie")
            }
        };
        if key.len() < 16 {
            // The host refused a secret (the pool holds too many names): never sign with
            // a short or empty key.
            return Err(PluginError::Internal("cookie: the host gave no signing secret".into()));
        }
        let mac = HmacSha256::new_from_slice(&key).map_err(|e| PluginError::InvalidConfig(format!("key: {e}")))?;
        let mut attributes = String::new();
        for (ok, part) in [
            (true, format!("; Path={}", c.path)),
            (c.max_age_s.is_some(), format!("; Max-Age={}", c.max_age_s.unwrap_or(0))),
            (c.domain.is_some(), format!("; Domain={}", c.domain.as_deref().unwrap_or(""))),
            (c.secure, "; Secure".into()),
            (c.http_only, "; HttpOnly".into()),
            (true, format!("; SameSite={same_site}")),
        ] {
            if ok {
                attributes.push_str(&part);
            }
        }
        if attributes.bytes().any(|b| b.is_ascii_control()) {
            return invalid("path, domain: control characters are not allowed".into());
        }
        Ok(State {
            name: c.name,
            max_age_s: c.max_age_s,
            attributes,
            mac,
            by_stable: HashMap::new(),
            stable: Vec::new(),
        })
    }

    fn refresh(&mut self) {
        let members = pool::members();
        self.stable = members.iter().map(|b| weir_guest::hash::hash(b.address.as_bytes())).collect();
        self.by_stable = self.stable.iter().enumerate().map(|(i, &s)| (s, i as BackendId)).collect();
    }

    /// The MAC over `NAME=ID.EXPIRY`.
    fn signer(&self, stable: u64, expiry: u64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(format!("{}={stable:016x}.{expiry:x}", self.name).as_bytes());
        mac
    }

    /// The request's cookie, if it is present, well-formed, correctly signed and not
    /// expired.
    fn read(&self, now: u64) -> Option<Pin> {
        let value = request::cookie(&self.name)?;
        let mut parts = value.split('.');
        let (id, expiry, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.len() != 16 || expiry.len() > 16 || tag.len() != 2 * TAG_BYTES {
            return None;
        }
        let stable = u64::from_str_radix(id, 16).ok()?;
        let expiry = u64::from_str_radix(expiry, 16).ok()?;
        let mut tag_bytes = [0u8; TAG_BYTES];
        for (i, b) in tag_bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(tag.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        // Constant-time comparison, so the tag cannot be guessed byte by byte.
        self.signer(stable, expiry).verify_truncated_left(&tag_bytes).ok()?;
        (expiry == 0 || now < expiry).then_some(Pin { stable, expiry })
    }

    fn pinned(&self) -> Option<BackendId> {
        let pin = self.read(unix_now())?;
        self.by_stable.get(&pin.stable).copied()
    }

    fn bind(&self, chosen: BackendId) -> Vec<(String, String)> {
        let Some(&stable) = self.stable.get(chosen as usize) else { return Vec::new() };
        let now = unix_now();
        if let Some(pin) = self.read(now)
            && pin.stable == stable
        {
            // Already pinned here: re-issue only once half its age has passed.
            let fresh = match self.max_age_s {
                Some(age) => pin.expiry.saturating_sub(now) > age / 2,
                None => true,
            };
            if fresh {
                return Vec::new();
            }
        }
        let expiry = self.max_age_s.map_or(0, |age| now + age);
        let tag = self.signer(stable, expiry).finalize().into_bytes();
        let mut cookie = format!("{}={stable:016x}.{expiry:x}.", self.name);
        for b in &tag[..TAG_BYTES] {
            let _ = write!(cookie, "{b:02x}");
        }
        cookie.push_str(&self.attributes);
        vec![("set-cookie".into(), cookie)]
    }
}

/// RFC 6265 token characters (a cookie name).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Cookie;

impl exports::weir::plugin::affinity::Guest for Cookie {
    fn configure(config: String) -> Result<(), PluginError> {
        let state = State::from_config(&config)?;
        STATE.with_borrow_mut(|s| *s = Some(state));
        Ok(())
    }

    fn pool_changed() {
        STATE.with_borrow_mut(|s| s.as_mut().map(State::refresh));
    }

    fn pinned() -> Option<BackendId> {
        STATE.with_borrow(|s| s.as_ref().and_then(State::pinned))
    }

    fn bind(chosen: BackendId) -> Vec<(String, String)> {
        STATE.with_borrow(|s| s.as_ref().map(|s| s.bind(chosen)).unwrap_or_default())
    }
}

export!(Cookie);
