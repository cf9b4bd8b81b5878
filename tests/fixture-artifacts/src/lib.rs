//! Where the test fixtures (`tests/fixtures/*`, misbehaving plugins) were built: a
//! dev-dependency of weir, so a product build never compiles them.

use std::path::PathBuf;

/// The directory holding every fixture's `.wasm`.
pub const DIR: &str = env!("WEIR_FIXTURES_DIR");

/// The component of fixture `name` (as its directory is named, e.g. `first-backend`).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(format!("{}.wasm", name.replace('-', "_")))
}
