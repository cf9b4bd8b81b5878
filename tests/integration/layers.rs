//! The host's modules are layered (DESIGN.md, "Host layout"): each top-level module uses
//! only the modules above it in this list, so there is no cycle between them. Read from
//! the sources: every `crate::X` path in a module's code (comments aside) must name a
//! module of a lower layer (or itself).

use std::path::{Path, PathBuf};

/// Top-level modules, by layer; a module may use any of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("core", 0),
    ("metrics", 0),
    ("config", 1),
    ("plugin", 2),
    ("state", 3),
    ("net", 4),
    ("health", 5),
    ("discover", 5),
    ("http", 6),
    ("tcp", 7),
    ("control", 8),
    // Reads the snapshot the writer publishes (and sends it commands); admin renders its
    // status.
    ("cluster", 9),
    ("admin", 10),
    ("server", 11),
    ("demo", 12),
    ("simulate", 12),
    // The binary's subcommands (main.rs + cli/), on top of everything.
    ("cli", 13),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// `host/src/MODULE.rs` and everything under `host/src/MODULE/`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.retain(|f| f.exists());
    files
}

#[test]
fn top_level_modules_depend_only_on_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut seen_modules = 0;
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(module) = name.strip_suffix(".rs") else { continue };
        // The binary (main.rs and its cli/ modules) uses the library from outside, through
        // `weir::`, never `crate::`.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let Some(own) = layer(module) else {
            found.push(format!("{module}: not in the layer list (add it to DESIGN.md's list and here)"));
            continue;
        };
        seen_modules += 1;
        for file in files_of(&src, module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                // Comments (doc links to the layers that call a module) are not uses.
                let mut rest = line.split("//").next().unwrap_or("");
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let used: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if used == module {
                        continue;
                    }
                    match layer(&used) {
                        Some(l) if l < own => {}
                        _ => found.push(format!("{}:{}: {module} uses crate::{used}", file.display(), n + 1)),
                    }
                }
            }
        }
    }
    assert!(seen_modules >= 8, "read only {seen_modules} modules from {}", src.display());
    assert!(found.is_empty(), "upward or unknown module uses:\n{}", found.join("\n"));
}
