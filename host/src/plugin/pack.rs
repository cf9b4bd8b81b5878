//! The default plugin pack, compiled from `plugins/` by the build script and embedded in
//! the binary, so a user needs no plugin build to start.

include!(concat!(env!("OUT_DIR"), "/pack.rs"));

/// The component bytes of a pack plugin.
pub fn get(name: &str) -> Option<&'static [u8]> {
    PACK.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// The names in the pack, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    PACK.iter().map(|(n, _)| *n)
}
