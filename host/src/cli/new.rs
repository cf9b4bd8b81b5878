//! `weir plugin new --lang L NAME`: writes a plugin project that builds with one command
//! and passes `weir plugin test` as made. The templates (`host/templates/`), the WIT
//! contract and each language's helper (`plugins/sdk/`: weir.js, weir.py, weir.h) are
//! embedded in the binary, so it works from an installed `weir` with no source tree and
//! the project stands alone. The JavaScript, Python and C projects build with `./build.sh`,
//! which finds the pinned toolchain under `$WEIR_TOOLCHAINS` (a directory laid out as
//! `examples/plugins/build.sh` makes `target/toolchains/`), in the project's own
//! `node_modules` or `.venv`, or on `PATH`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// `weir plugin new` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The language of the project.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The plugin's name (letters, digits, `-`, `_`): the project's directory, made in the
    /// current directory (or under `--dir`).
    name: String,
    /// Where to make the project's directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// A language a project can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// Rust with wit-bindgen (`cargo build --release`).
    Rust,
    /// JavaScript with componentize-qjs (`npm run build`).
    Js,
    /// Python with componentize-py (`./build.sh`).
    Python,
    /// C with wit-bindgen c, zig cc and wasm-tools (`./build.sh`).
    C,
}

/// The WIT contract, as this binary speaks it.
const WIT: &str = include_str!("../../../wit/weir.wit");

/// `(path in the project, text)`: `{{name}}` becomes the plugin's name and `{{file}}` its
/// name as a file stem (`-` → `_`, as cargo names the `.wasm`).
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    (".cargo/config.toml", include_str!("../../templates/rust/.cargo/config.toml")),
    (".gitignore", include_str!("../../templates/rust/.gitignore")),
    ("README.md", include_str!("../../templates/rust/README.md")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
    ("wit/weir.wit", WIT),
];

const JS: &[(&str, &str)] = &[
    ("package.json", include_str!("../../templates/js/package.json")),
    ("build.sh", include_str!("../../templates/js/build.sh")),
    (".gitignore", include_str!("../../templates/js/.gitignore")),
    ("README.md", include_str!("../../templates/js/README.md")),
    ("plugin.js", include_str!("../../templates/js/plugin.js")),
    ("weir.js", include_str!("../../../plugins/sdk/js/weir.js")),
    ("wit/weir.wit", WIT),
];

const PYTHON: &[(&str, &str)] = &[
    ("requirements.txt", include_str!("../../templates/python/requirements.txt")),
    ("build.sh", include_str!("../../templates/python/build.sh")),
    (".gitignore", include_str!("../../templates/python/.gitignore")),
    ("README.md", include_str!("../../templates/python/README.md")),
    ("plugin.py", include_str!("../../templates/python/plugin.py")),
    ("weir.py", include_str!("../../../plugins/sdk/python/weir.py")),
    ("wit/weir.wit", WIT),
];

const C: &[(&str, &str)] = &[
    ("requirements.txt", include_str!("../../templates/c/requirements.txt")),
    ("build.sh", include_str!("../../templates/c/build.sh")),
    (".gitignore", include_str!("../../templates/c/.gitignore")),
    ("README.md", include_str!("../../templates/c/README.md")),
    ("plugin.c", include_str!("../../templates/c/plugin.c")),
    ("weir.h", include_str!("../../../plugins/sdk/c/weir.h")),
    ("wit/weir.wit", WIT),
];

/// Makes the project; prints where and how to build it.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!("`{name}` is not a plugin name: use letters, digits, `-` and `_`, starting with a letter");
    }
    let dir = args.dir.join(name);
    if dir.exists() {
        anyhow::bail!("{} already exists; nothing written", dir.display());
    }
    let file = name.replace('-', "_");
    let files = match args.lang {
        Lang::Rust => RUST,
        Lang::Js => JS,
        Lang::Python => PYTHON,
        Lang::C => C,
    };
    for (path, text) in files {
        let text = text.replace("{{name}}", name).replace("{{file}}", &file);
        write(&dir.join(path), &text, path.ends_with(".sh"))?;
    }
    let (build, wasm) = match args.lang {
        Lang::Rust => ("cargo build --release", format!("target/wasm32-wasip2/release/{file}.wasm")),
        Lang::Js => ("npm install && npm run build", format!("build/{name}.wasm")),
        Lang::Python | Lang::C => ("./build.sh   # README.md: installing the toolchain", format!("build/{name}.wasm")),
    };
    println!("made {} ({:?} balancer plugin)", dir.display(), args.lang);
    println!("  cd {} && {build}", dir.display());
    println!("  weir plugin test {wasm}");
    Ok(())
}

/// Writes `text` to `path`, executable (a build script) when `exec`.
fn write(path: &Path, text: &str, exec: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot make {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if exec {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = exec;
    Ok(())
}
