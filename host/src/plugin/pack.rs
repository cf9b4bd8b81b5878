//! The default plugin pack, compiled from `plugins/` by the build script and embedded in
//! the binary, so a user needs no plugin build to start.

include!(concat!(env!("OUT_DIR"), "/pack.rs"));

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
