#!/usr/bin/env bash
# User-space instructions per proxied HTTP/1.1 keep-alive request of each proxy of the peer
# bench, whole process (every thread), counted by callgrind, which the machine's load does
# not move (issue 16: the floor, beside the peers' CPU time that host/benches/peers/run.sh
# measures):
#
#   host/benches/peers/instructions.sh RUN_DIR [N]
#
# RUN_DIR is a finished peer-bench run (target/peers/<date>; its run/ holds the configs and
# its weir-cache the compiled plugins). WEIR and FLOOR as for run.sh (default: this tree's
# target/release/weir; FLOOR is required). For each of nginx (master_process off, so one
# process), weir (its run/weir.toml), hyper floor and httparse floor: the origin (nginx,
# RUN_DIR/run/origin.conf) runs natively; the proxy runs under `valgrind --tool=callgrind`;
# `h2load --h1 -c16 -n 2000` warms it up, `callgrind_control -z` zeroes its counters,
# `h2load --h1 -c16 -n N` (default 20,000) sends the measured requests, `callgrind_control
# -d` dumps; per request = the dumped instructions / N. The kernel's part is not counted.
# Needs valgrind, nginx, h2load (nghttp2-client). Nothing is pinned; ports as in the bench.
set -euo pipefail
RUN=${1:?usage: instructions.sh RUN_DIR [N]}
N=${2:-20000}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WEIR=${WEIR:-$ROOT/target/release/weir}
FLOOR=${FLOOR:?FLOOR=path/to/floor (cargo bench --bench floor --no-run)}
OUT=$RUN/instructions
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.5; done; echo "nothing on :$1" >&2; return 1; }
nginx -c "$RUN/run/origin.conf" -p "$RUN/run/" >"$OUT/origin.log" 2>&1 &
pids+=($!)
wait_port 9001
# nginx as the proxy in one process, so callgrind sees its work.
sed -e 's/^worker_processes 1;/worker_processes 1; master_process off;/' -e 's#pid .*/run/nginx.pid;#pid '"$OUT"'/nginx.pid;#' \
    "$RUN/run/nginx.conf" >"$OUT/nginx.conf"
declare -A CMD PORT
CMD[nginx]="nginx -c $OUT/nginx.conf -p $RUN/run/"
PORT[nginx]=8082
CMD[weir]="$WEIR run --config $RUN/run/weir.toml"
PORT[weir]=8088
CMD[hyper-floor]="$FLOOR hyper --listen 127.0.0.1:8087 --upstream 127.0.0.1:9001,127.0.0.1:9002"
PORT[hyper-floor]=8087
CMD[httparse-floor]="$FLOOR httparse --listen 127.0.0.1:8089 --upstream 127.0.0.1:9001,127.0.0.1:9002"
PORT[httparse-floor]=8089
printf '| proxy | instructions per request (all threads) | requests | h2load failed |\n|---|---|---|---|\n' >"$OUT/table.md"
for name in nginx weir hyper-floor httparse-floor; do
    rm -f "$OUT/callgrind.$name".*
    # shellcheck disable=SC2086
    (cd "$RUN" && exec valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$OUT/callgrind.$name.%p" ${CMD[$name]}) \
        >"$OUT/$name.log" 2>&1 &
    vp=$!
    pids+=("$vp")
    wait_port "${PORT[$name]}"
    url="http://127.0.0.1:${PORT[$name]}/"
    h2load --h1 -c16 -n 2000 "$url" >/dev/null
    callgrind_control -z "$vp" >/dev/null
    h2load --h1 -c16 -n "$N" "$url" >"$OUT/$name.h2load"
    callgrind_control -d "$vp" >/dev/null
    kill "$vp"
    wait "$vp" 2>/dev/null || true
    ok=$(sed -n 's/.* \([0-9]*\) succeeded, \([0-9]*\) failed.*/\1 \2/p' "$OUT/$name.h2load")
    # The dump that callgrind_control -d wrote (part 1; the exit writes another, not counted).
    ir=$(for f in "$OUT/callgrind.$name".*; do grep -h '^summary:' "$f" 2>/dev/null | head -1; done \
        | awk '{ s += $2 } END { print s }')
    part=$(ls "$OUT/callgrind.$name".*.1 2>/dev/null | head -1 || true)
    [ -n "$part" ] && ir=$(grep -h '^summary:' "$part" | awk '{ print $2 }')
    per=$(awk -v ir="$ir" -v n="$N" 'BEGIN { printf "%.0f", ir / n }')
    echo "$name: $per instructions per request ($ir over $N; h2load succeeded, failed: $ok)"
    printf '| %s | %s | %s | %s |\n' "$name" "$per" "$N" "$(echo "$ok" | cut -d' ' -f2)" >>"$OUT/table.md"
done
cat "$OUT/table.md"
