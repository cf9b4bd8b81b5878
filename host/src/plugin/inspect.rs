//! `weir plugin inspect`: what a component is — which weir world it implements, what it
//! imports and exports, how big it is, and which toolchain made it — read from its bytes
//! with `wasmparser` (the parser wasmtime itself uses), without compiling it: a compile
//! takes seconds for a JavaScript or Python component, reading takes milliseconds.
//!
//! The world is named from the exports (a component that exports
//! `weir:plugin/balancer@0.1.0` is a balancer); whether the exports have the right types
//! is only known when weir links it (`weir check`, `weir plugin test`). The toolchain is
//! what the `producers` custom sections say (the component's and its core modules'):
//! `language` (Rust, JavaScript, Python, C11, ...), `processed-by` (rustc, wit-component,
//! componentize-py, ComponentizeJS, clang, ...) and `sdk`.

use sha2::{Digest, Sha256};
use wasmparser::{Encoding, KnownCustom, Parser, Payload};

use super::{LoadError, PluginRuntime};

/// What a component implements.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    /// `balancer-plugin`, `affinity-plugin`, `health-batch-plugin` (a `health-plugin` that
    /// also exports `health-batch`), `health-plugin`, or none of them.
    pub world: Option<&'static str>,
    /// Imported interface or function names.
    pub imports: Vec<String>,
    /// Exported interface or function names.
    pub exports: Vec<String>,
    /// Size of the component in bytes.
    pub size: usize,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The toolchain, from the producers sections: `(field, name, version)`, for example
    /// `("language", "Rust", "")`, `("processed-by", "wit-component", "0.244.0")`; each
    /// once.
    pub producers: Vec<(String, String, String)>,
}

impl Inspection {
    /// The source language: what a `language` field says, else what the tools that
    /// processed it imply (a stripped Rust component keeps only the producers
    /// wit-component writes, `wit-bindgen-rust` among them). Checked in order, so a
    /// Python component whose runtime was built with Rust tools is Python.
    pub fn language(&self) -> Option<String> {
        let said: Vec<&str> =
            self.producers.iter().filter(|(f, _, _)| f == "language").map(|(_, n, _)| n.as_str()).collect();
        if !said.is_empty() {
            return Some(said.join(", "));
        }
        const BY_TOOL: [(&str, &str); 9] = [
            ("componentize-py", "Python"),
            ("componentizejs", "JavaScript"),
            ("componentize-js", "JavaScript"),
            ("starlingmonkey", "JavaScript"),
            ("wit-bindgen-rust", "Rust"),
            ("rustc", "Rust"),
            ("wit-bindgen-c", "C"),
            ("clang", "C"),
            ("zig", "C"),
        ];
        BY_TOOL
            .iter()
            .find(|(tool, _)| self.producers.iter().any(|(f, n, _)| f != "language" && n.eq_ignore_ascii_case(tool)))
            .map(|(_, language)| (*language).to_owned())
    }

    /// The toolchain in a few words: the language, then the tools that processed it and
    /// the SDKs (`Rust (wit-bindgen-rust 0.61.1, wit-component 0.244.0)`); `None` when no
    /// producers section says anything.
    pub fn toolchain(&self) -> Option<String> {
        let tools: Vec<String> = self
            .producers
            .iter()
            .filter(|(f, _, _)| f != "language")
            .map(|(_, n, v)| if v.is_empty() { n.clone() } else { format!("{n} {v}") })
            .collect();
        match (self.language(), tools.is_empty()) {
            (None, true) => None,
            (None, false) => Some(tools.join(", ")),
            (Some(l), true) => Some(l),
            (Some(l), false) => Some(format!("{l} ({})", tools.join(", "))),
        }
    }
}

/// Looked for in order: the first export found names the world.
const WORLDS: [(&str, &str); 4] = [
    ("weir:plugin/balancer@0.1.0", "balancer-plugin"),
    ("weir:plugin/affinity@0.1.0", "affinity-plugin"),
    ("weir:plugin/health-batch@0.1.0", "health-batch-plugin"),
    ("weir:plugin/health@0.1.0", "health-plugin"),
];

/// Reads component bytes; compiles nothing.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, LoadError> {
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Compile(e.to_string());
    let (mut imports, mut exports, mut producers) = (Vec::new(), Vec::new(), Vec::new());
    // Nesting: 0 is the component itself; its core modules and inner components are
    // deeper (their imports and exports are not the component's).
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::Version { encoding: Encoding::Module, .. } if depth == 0 => {
                return Err(LoadError::Compile(
                    "a core WebAssembly module, not a component (make one with `wasm-tools component new`, or build for wasm32-wasip2)".into(),
                ));
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.map_err(invalid)?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.map_err(invalid)?.name.name.to_owned());
                }
            }
            Payload::CustomSection(custom) => {
                if let KnownCustom::Producers(reader) = custom.as_known() {
                    for field in reader {
                        let field = field.map_err(invalid)?;
                        for value in field.values {
                            let value = value.map_err(invalid)?;
                            let entry = (field.name.to_owned(), value.name.to_owned(), value.version.to_owned());
                            if !producers.contains(&entry) {
                                producers.push(entry);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let world = WORLDS.iter().find(|(iface, _)| exports.iter().any(|e| e == iface)).map(|(_, w)| *w);
    Ok(Inspection {
        world,
        imports,
        exports,
        size: bytes.len(),
        sha256: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect(),
        producers,
    })
}

impl PluginRuntime {
    /// Inspects component bytes ([`inspect`]: reads them, compiles nothing).
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, LoadError> {
        inspect(bytes)
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "world:     {}", self.world.unwrap_or("(none: exports no weir:plugin interface)"))?;
        writeln!(f, "toolchain: {}", self.toolchain().as_deref().unwrap_or("(no producers section)"))?;
        writeln!(f, "size:      {} bytes", self.size)?;
        writeln!(f, "sha256:    {}", self.sha256)?;
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_plugin_is_read_without_compiling_and_names_its_toolchain() {
        let runtime = PluginRuntime::new(crate::config::PluginSettings::default()).unwrap();
        let bytes = crate::plugin::pack::get("round-robin").unwrap();
        let info = runtime.inspect(bytes).unwrap();
        assert_eq!(info.world, Some("balancer-plugin"));
        assert!(info.exports.iter().any(|e| e == "weir:plugin/balancer@0.1.0"), "{info}");
        assert!(info.imports.iter().any(|i| i == "weir:plugin/pool@0.1.0"), "{info}");
        // Nothing compiled, nothing read from the cache.
        assert_eq!(runtime.compiled.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(runtime.cache_hits.load(std::sync::atomic::Ordering::Relaxed), 0);
        let toolchain = info.toolchain().unwrap();
        assert_eq!(info.language().as_deref(), Some("Rust"), "{toolchain}");
        assert!(toolchain.starts_with("Rust (") && toolchain.contains("wit-bindgen-rust"), "{toolchain}");
    }

    #[test]
    fn a_core_module_or_junk_is_refused_with_a_reason() {
        // The smallest core module: magic and version 1.
        let module = b"\0asm\x01\0\0\0";
        let e = inspect(module).unwrap_err().to_string();
        assert!(e.contains("a core WebAssembly module, not a component"), "{e}");
        let e = inspect(b"\0asm but not really").unwrap_err().to_string();
        assert!(e.starts_with("not a valid component: "), "{e}");
    }
}
