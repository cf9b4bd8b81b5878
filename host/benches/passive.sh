#!/usr/bin/env bash
# Instructions passive health adds to a successful request (callgrind): the `passive`
# benchmark's loop at N=20000 and N=40000, with and without the passive-health code; the
# figure is the difference per iteration. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench --bench passive --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/passive-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
count() { # mode n
    MODE=$1 N=$2 valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
# Valgrind reports its own CPU features, so the compiled-plugin cache (the pool's balancer
# is loaded) needs an entry made under valgrind before the counted runs.
MODE=baseline N=1 valgrind --tool=none "$bin" >/dev/null 2>&1
base=$((($(count baseline 40000) - $(count baseline 20000)) / 20000))
with=$((($(count passive 40000) - $(count passive 20000)) / 20000))
echo "loop alone: $base instructions per iteration; with passive health: $with; added: $((with - base))"
rm -rf "$out"
