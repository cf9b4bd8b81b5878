//! The on-disk cache of compiled components, so a restart does not recompile.
//!
//! Entries are keyed by the SHA-256 of the component and a hash of the engine's
//! compatibility settings (wasmtime version and `Config`), and written atomically
//! (temporary file, then rename). Loading one is `unsafe` in wasmtime because a crafted
//! file could run arbitrary code: weir only loads files from its own cache directory,
//! named by that key, which weir itself wrote. A file that fails to load is deleted and
//! the component recompiled.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A cache directory bound to one engine configuration.
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_key: u64,
}

impl DiskCache {
    /// Opens (creating) the cache directory: `dir`, else `$WEIR_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/weir`, else `~/.cache/weir`. `None` (with a warning) when no
    /// usable directory exists; weir then compiles every time.
    pub(crate) fn open(engine: &Engine, dir: Option<&Path>) -> Option<Self> {
        let dir = dir.map(Path::to_path_buf).or_else(default_dir)?;
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "plugin cache disabled: cannot create directory");
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Some(Self { dir, engine_key: h.finish() })
    }

    fn path(&self, sha: &[u8; 32]) -> PathBuf {
        let mut name = String::with_capacity(90);
        for b in sha {
            name.push_str(&format!("{b:02x}"));
        }
        name.push_str(&format!("-{:016x}.cwasm", self.engine_key));
        self.dir.join(name)
    }

    /// The compiled component for `sha`, if cached and loadable.
    pub(crate) fn get(&self, engine: &Engine, sha: &[u8; 32]) -> Option<Component> {
        let path = self.path(sha);
        if !path.exists() {
            return None;
        }
        // SAFETY: the file is in weir's own cache directory under a name derived from the
        // component's hash and this engine's settings; only `put` below writes such files,
        // from `Component::serialize` of the same wasmtime build.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unusable plugin cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled component; failures only cost a recompile later.
    pub(crate) fn put(&self, sha: &[u8; 32], component: &Component) {
        let path = self.path(sha);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %e, "cannot write plugin cache entry");
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("WEIR_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("weir")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("weir")))
}
