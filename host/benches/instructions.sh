#!/usr/bin/env bash
# Instructions per routing decision, counted by callgrind: the figure that does not move
# with the machine's load (wall clock on a shared VM swings by ±50%). For each plugin
# and pool size, runs the `pick_loop` benchmark at N=20000 and N=40000 decisions and
# prints (total at 40000 - total at 20000) / 20000.
#
#   host/benches/instructions.sh [SIZES] [PLUGIN...]
#   host/benches/instructions.sh "10 10000" round-robin p2c
#
# Defaults: every balancer of the pack at 10, 100, 1000 and 10000 backends; the O(n)
# ones (least-connections, rendezvous) at 10 to 1000 only, for time. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-"10 100 1000 10000"}
shift || true
plugins=("$@")
if [ ${#plugins[@]} -eq 0 ]; then
    plugins=(round-robin weighted-round-robin random first p2c peak-ewma ip-hash consistent-hash maglev bounded-load least-connections rendezvous)
fi
cargo bench --bench pick_loop --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/pick_loop-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
count() { # plugin backends n
    PLUGIN=$1 BACKENDS=$2 N=$3 valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-22s' plugin
for n in $sizes; do printf '%10s' "$n"; done
echo
for p in "${plugins[@]}"; do
    printf '%-22s' "$p"
    for n in $sizes; do
        if [[ ($p == least-connections || $p == rendezvous) && $n -gt 1000 ]]; then
            printf '%10s' -
            continue
        fi
        # Valgrind reports its own CPU features, so the compiled-plugin cache needs an
        # entry made under valgrind before the counted runs.
        PLUGIN=$p BACKENDS=$n N=1 valgrind --tool=none "$bin" >/dev/null 2>&1
        a=$(count "$p" "$n" 20000)
        b=$(count "$p" "$n" 40000)
        printf '%10s' $(((b - a) / 20000))
    done
    echo
done
rm -rf "$out"
