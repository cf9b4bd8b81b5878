#!/usr/bin/env bash
# Builds {{name}}.wasm from plugin.py (and weir.py) with componentize-py, pinned to 0.25.1
# in requirements.txt. It is found, in this order:
#   $WEIR_TOOLCHAINS/venv/bin   (a toolchain directory laid out as weir's
#                                examples/plugins/build.sh makes target/toolchains)
#   ./.venv/bin                 (after `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt`)
#   PATH
set -euo pipefail
cd "$(dirname "$0")"
PATH=${WEIR_TOOLCHAINS:+$WEIR_TOOLCHAINS/venv/bin:}$PWD/.venv/bin:$PATH
command -v componentize-py >/dev/null || {
    echo "componentize-py not found: install requirements.txt (pip), or set WEIR_TOOLCHAINS" >&2
    exit 1
}
mkdir -p build
componentize-py -d wit -w balancer-plugin componentize -p . plugin -o build/{{name}}.wasm.tmp >/dev/null
mv build/{{name}}.wasm.tmp build/{{name}}.wasm
echo "built build/{{name}}.wasm"
