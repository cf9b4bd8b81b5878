#!/usr/bin/env bash
# Builds {{name}}.wasm from plugin.js with componentize-qjs (QuickJS), pinned to 0.4.5 in
# package.json. It is found, in this order:
#   $WEIR_TOOLCHAINS/js/node_modules/.bin   (a toolchain directory laid out as weir's
#                                            examples/plugins/build.sh makes target/toolchains)
#   ./node_modules/.bin                      (after `npm install` here)
#   PATH
set -euo pipefail
cd "$(dirname "$0")"
PATH=${WEIR_TOOLCHAINS:+$WEIR_TOOLCHAINS/js/node_modules/.bin:}$PWD/node_modules/.bin:$PATH
command -v componentize-qjs >/dev/null || {
    echo "componentize-qjs not found: run \`npm install\` here, or set WEIR_TOOLCHAINS" >&2
    exit 1
}
mkdir -p build
# `--sync`: weir calls plugins synchronously (no component-model async ABI).
componentize-qjs --sync --wit wit --world balancer-plugin --js plugin.js -o build/{{name}}.wasm.tmp >/dev/null
mv build/{{name}}.wasm.tmp build/{{name}}.wasm
echo "built build/{{name}}.wasm"
