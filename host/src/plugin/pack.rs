//! The default plugin pack, compiled from `plugins/` by the build script and embedded in
//! the binary, so a user needs no plugin build to start.

include!(concat!(env!("OUT_DIR"), "/pack.rs"));

/// The embedded pack's version, plugin count and digest (what `weir --version` names).
pub const VERSION: &str = env!("WEIR_PACK_VERSION");

/// Other names users know an algorithm by: `(alias, pack name)`.
pub const ALIASES: &[(&str, &str)] = &[("least-request", "p2c")];

/// The component bytes of a pack plugin, by name or alias.
pub fn get(name: &str) -> Option<&'static [u8]> {
    let name = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, real)| real);
    PACK.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The names in the pack, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    PACK.iter().map(|(n, _)| *n)
}

/// What a plugin is for: the world it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `balancer-plugin`.
    Balancer,
    /// `affinity-plugin`.
    Affinity,
    /// `health-plugin`.
    Health,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Balancer => "balancer",
            Role::Affinity => "affinity",
            Role::Health => "health",
        })
    }
}

/// The pack plugins that implement `affinity-plugin` (a test checks these lists against
/// the components themselves).
pub const AFFINITY: &[&str] = &["cookie", "header", "source-ip"];

/// The pack plugins that implement `health-plugin`; every plugin in neither list is a
/// balancer.
pub const HEALTH: &[&str] = &["latency", "outlier", "threshold"];

/// The role of a pack plugin, by name or alias.
pub fn role(name: &str) -> Option<Role> {
    get(name)?;
    Some(if AFFINITY.contains(&name) {
        Role::Affinity
    } else if HEALTH.contains(&name) {
        Role::Health
    } else {
        Role::Balancer
    })
}

/// The pack's names (aliases included) of one role, sorted.
pub fn names_of(role: Role) -> impl Iterator<Item = &'static str> {
    names().chain(ALIASES.iter().map(|(a, _)| *a)).filter(move |n| self::role(n) == Some(role))
}

/// Checks that a pack source names a plugin of `role`; file sources pass (their world
/// is checked when they are linked). The error says what the pack has instead.
pub fn check(source: &crate::config::PluginSource, role: Role) -> Result<(), String> {
    let crate::config::PluginSource::Pack(name) = source else { return Ok(()) };
    if self::role(name) == Some(role) {
        return Ok(());
    }
    let known: Vec<&str> = names_of(role).collect();
    let what = match self::role(name) {
        Some(other) => format!("`{name}` is for `{other}`, not `{role}`"),
        None => format!("no plugin `{name}` in the pack"),
    };
    Err(format!("{what} (the pack's {role} plugins: {}); a file must end in .wasm", known.join(", ")))
}
