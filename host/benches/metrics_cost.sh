#!/usr/bin/env bash
# Instructions the metrics add to a request (callgrind), two parts:
# 1. the response path: the `metrics_cost` benchmark's loop (status class counter and
#    latency histogram, what `http::forward` adds) at N=20000 and N=40000, with and
#    without it; the figure is the difference per iteration;
# 2. the decision: `pick_loop` (`Pool::place`, round-robin, 10 backends) here and in the
#    commit BASE (default: main), whose tree is exported under target/ and built with
#    this target directory (so wasmtime is not built twice). Needs valgrind.
#
#   host/benches/metrics_cost.sh [BASE]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
base=${1:-main}
out=$(mktemp -d)
cg() { # binary, then env assignments
    local bin=$1
    shift
    env "$@" valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per() { # binary, env... : (count at N=40000 - count at N=20000) / 20000
    local bin=$1
    shift
    env "$@" N=1 valgrind --tool=none "$bin" >/dev/null 2>&1 # plugin cache entry made under valgrind
    echo $((($(cg "$bin" "$@" N=40000) - $(cg "$bin" "$@" N=20000)) / 20000))
}
cargo bench --bench metrics_cost --no-run >/dev/null 2>&1
cargo bench --bench pick_loop --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/metrics_cost-* | grep -v '\.d$' | head -1)
pick=$(ls -t target/release/deps/pick_loop-* | grep -v '\.d$' | head -1)
loop=$(per "$bin" MODE=baseline)
with=$(per "$bin" MODE=metrics)
echo "response path: loop alone $loop instructions per iteration; with metrics $with; added $((with - loop))"
cp "$pick" "$out/pick_loop-this"
tree="$root/target/metrics-base"
rm -rf "$tree" && mkdir -p "$tree"
git archive "$base" | tar -x -C "$tree"
(cd "$tree" && CARGO_TARGET_DIR="$root/target" cargo bench --bench pick_loop --no-run >/dev/null 2>&1)
pick_base=$(ls -t target/release/deps/pick_loop-* | grep -v '\.d$' | head -1)
cp "$pick_base" "$out/pick_loop-base"
a=$(per "$out/pick_loop-base" PLUGIN=round-robin BACKENDS=10)
b=$(per "$out/pick_loop-this" PLUGIN=round-robin BACKENDS=10)
echo "decision (round-robin, 10 backends): $base $a instructions; this tree $b; added $((b - a))"
rm -rf "$out"
