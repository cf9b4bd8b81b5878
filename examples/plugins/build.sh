#!/usr/bin/env bash
# Builds the example plugins (examples/plugins/{rust,js,python,c}) into
# target/example-plugins/, installing each pinned toolchain first if it is missing:
#
#   examples/plugins/build.sh              # all four languages
#   examples/plugins/build.sh js python    # only these
#
# (`just example-plugins` runs it.) Toolchains, pinned in the files named below, go under
# target/toolchains/ and come from the registries through their own caches (npm's
# ~/.npm, pip's ~/.cache/pip, cargo's ~/.cargo), so a second run on the same machine,
# even from a fresh clone, downloads nothing:
#
#   js      componentize-qjs        plugins/sdk/js/package.json + package-lock.json (npm ci)
#   python  componentize-py         plugins/sdk/python/requirements.txt (pip, in a venv)
#   c       zig cc, wasm-tools      plugins/sdk/c/requirements.txt (pip, same venv)
#           wit-bindgen c           wit-bindgen-cli $WIT_BINDGEN_VERSION (cargo install)
#   rust    the repo's toolchain    rust-toolchain.toml, wasm32-wasip2
#
# A component is rebuilt only when one of its inputs (its source, the SDK, the WIT) is
# newer than it. Outputs: zone-{rust,js,python,c}.wasm (the zone-aware balancer in each
# language) and session-python.wasm (a header-affinity plugin).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/target/example-plugins
tools=$root/target/toolchains
src=$root/examples/plugins
sdk=$root/plugins/sdk
wit=$root/wit
WIT_BINDGEN_VERSION=0.61.0
mkdir -p "$out" "$tools"

say() { printf 'example-plugins: %s\n' "$*" >&2; }

# True when $1 is missing or older than any file under the other arguments.
stale() {
    local target=$1
    shift
    [ -e "$target" ] || return 0
    [ -n "$(find "$@" -type f -newer "$target" -print -quit 2>/dev/null)" ]
}

# The PyPI tools (componentize-py, zig, wasm-tools, just) in one venv, reinstalled when the
# pins change.
venv() {
    local stamp=$tools/venv/.pins
    local want
    want=$(cat "$src/requirements.txt" "$sdk/python/requirements.txt" "$sdk/c/requirements.txt" | sha256sum)
    # (A venv is not relocatable: one whose scripts no longer run, e.g. moved with its
    # target directory, is made again.)
    if [ -x "$tools/venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && "$tools/venv/bin/componentize-py" --version >/dev/null 2>&1; then
        return
    fi
    say "installing the PyPI toolchains into target/toolchains/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$src/requirements.txt"
    printf '%s\n' "$want" >"$stamp"
}

# componentize-qjs (QuickJS), from the lock file: its npm package carries a prebuilt
# native binary per platform, so no Rust or Wizer build happens here.
node_tools() {
    local stamp=$tools/js/.pins
    local want
    want=$(cat "$sdk/js/package.json" "$sdk/js/package-lock.json" | sha256sum)
    if [ -x "$tools/js/node_modules/.bin/componentize-qjs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    command -v npm >/dev/null || { say "npm is needed for the JavaScript example (Node.js 20 or later)"; exit 1; }
    say "installing componentize-qjs into target/toolchains/js"
    rm -rf "$tools/js/node_modules"
    mkdir -p "$tools/js"
    cp "$sdk/js/package.json" "$sdk/js/package-lock.json" "$tools/js/"
    (cd "$tools/js" && npm ci --no-audit --no-fund --loglevel=error >&2)
    printf '%s\n' "$want" >"$stamp"
}

# `wit-bindgen c`, from crates.io into cargo's own bin directory, when that version is
# not there yet.
wit_bindgen() {
    local bin=${CARGO_HOME:-$HOME/.cargo}/bin/wit-bindgen
    if [ "$("$bin" --version 2>/dev/null | awk '{print $2}')" != "$WIT_BINDGEN_VERSION" ]; then
        say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (cargo install, once per machine)"
        cargo install -q wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked --no-default-features --features c >&2
    fi
    WIT_BINDGEN=$bin
}

build_rust() {
    local wasm=$out/zone-rust.wasm
    stale "$wasm" "$src/rust/src" "$src/rust/Cargo.toml" "$root/plugins/guest/src" "$wit" || return 0
    say "rust: zone-rust.wasm"
    cargo build -q --release --target wasm32-wasip2 --manifest-path "$src/rust/Cargo.toml" \
        --target-dir "$root/target/wasm-examples"
    cp "$root/target/wasm-examples/wasm32-wasip2/release/zone_rust.wasm" "$wasm"
}

build_js() {
    local wasm=$out/zone-js.wasm
    stale "$wasm" "$src/js" "$sdk/js/weir.js" "$wit" || return 0
    node_tools
    say "js: zone-js.wasm"
    # `--sync`: weir calls plugins synchronously (no component-model async ABI).
    (cd "$root" && "$tools/js/node_modules/.bin/componentize-qjs" --sync --wit wit -n balancer-plugin \
        -j examples/plugins/js/zone.js -o "$wasm.tmp" >/dev/null)
    mv "$wasm.tmp" "$wasm"
}

build_python() {
    venv
    local name world
    for name in zone:balancer-plugin session:affinity-plugin; do
        world=${name#*:}
        name=${name%%:*}
        stale "$out/$name-python.wasm" "$src/python/$name.py" "$sdk/python/weir.py" "$wit" || continue
        say "python: $name-python.wasm"
        (cd "$root" && "$tools/venv/bin/componentize-py" -d wit -w "$world" componentize \
            -p examples/plugins/python -p plugins/sdk/python "$name" -o "$out/$name-python.wasm.tmp" >&2)
        mv "$out/$name-python.wasm.tmp" "$out/$name-python.wasm"
    done
}

build_c() {
    local wasm=$out/zone-c.wasm
    stale "$wasm" "$src/c" "$sdk/c" "$wit" || return 0
    venv
    wit_bindgen
    say "c: zone-c.wasm"
    local gen=$root/target/example-plugins/c-bindings
    rm -rf "$gen"
    mkdir -p "$gen"
    "$WIT_BINDGEN" c "$wit" --world balancer-plugin --out-dir "$gen" >/dev/null 2>&1
    # A 64 KiB stack: zig's default of 16 MiB (wasm-ld's is 1 MiB) is reserved in linear
    # memory at instantiation and alone exceeds weir's default memory limit of 16 MiB.
    "$tools/venv/bin/python" -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -O2 -s -Wall -Werror \
        -Wl,-z,stack-size=65536 -I "$gen" -I "$sdk/c" \
        -o "$out/zone-c.core.wasm" "$src/c/zone.c" "$gen/balancer_plugin.c" \
        "$gen/balancer_plugin_component_type.o"
    "$tools/venv/bin/wasm-tools" component new "$out/zone-c.core.wasm" -o "$wasm.tmp"
    rm "$out/zone-c.core.wasm"
    mv "$wasm.tmp" "$wasm"
}

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(rust js python c)
for lang in "${langs[@]}"; do
    case $lang in
        rust | js | python | c) "build_$lang" ;;
        *) say "unknown language \`$lang\` (rust, js, python, c)"; exit 2 ;;
    esac
done
say "up to date in target/example-plugins/"
