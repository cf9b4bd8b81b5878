#!/usr/bin/env bash
# User-space instructions and allocations per proxied h2c request (issue 13), whole
# process (every thread), counted by callgrind, which the machine's load does not move:
#
#   host/benches/h2c_instructions.sh [N]           # weir (WEIR=path, default this tree's release build)
#   PROXIES="weir haproxy" host/benches/h2c_instructions.sh 20000
#   MODE=h1 host/benches/h2c_instructions.sh       # the same with HTTP/1.1 clients (h2load --h1)
#
# The origin is the peer bench's nginx (host/benches/peers/conf/origin.conf: `200 ok` on two
# ports, HTTP/1.1 keep-alive), run natively. The proxy runs under `valgrind --tool=callgrind`:
# weir with the peer bench's h1/h2c listener (worker_threads = 1, round-robin over the two
# origin ports, kept upstream connections), HAProxy as in the peer bench (nbthread 1, `bind
# proto h2`, roundrobin, http-reuse always). `h2load -c16 -m16 -n 2000` warms it up
# (connections and compiled code), `callgrind_control -z` zeroes the counters, `h2load -c16
# -m16 -n N` (default 20,000) sends the counted requests on 16 connections of 16 streams,
# as the timed h2c part does, and `callgrind_control -d` dumps. Per request: the dump's
# instructions / N; allocations: calls of malloc, calloc, realloc, aligned allocation / N.
# Then the functions' inclusive instructions per request (`callgrind_annotate
# --inclusive=yes`), top TOP (default 60), into OUT/<proxy>.inclusive.
# The kernel's part of a request is not counted. Needs valgrind, nginx, h2load; HAProxy for
# its row. Ports: the peer bench's moved by PORT_OFFSET (default 3000). OUT: where the
# dumps go (default a new directory under /tmp).
set -euo pipefail
N=${1:-20000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WEIR=${WEIR:-$ROOT/target/release/weir}
PROXIES=${PROXIES:-weir}
MODE=${MODE:-h2c}
OFF=${PORT_OFFSET:-3000}
TOP=${TOP:-60}
OUT=${OUT:-$(mktemp -d /tmp/weir-h2c-ir.XXXXXX)}
CACHE=${WEIR_CACHE:-$ROOT/target/peers/weir-cache-valgrind}
mkdir -p "$OUT"/{run,logs,www} "$CACHE"
chmod 755 "$OUT" "$OUT/www"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 1200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.5; done; echo "nothing on :$1" >&2; return 1; }
port() { echo $(($1 + OFF)); }
sed -e "s#@P@#$OUT#g" -e "s/127\.0\.0\.1:9001/127.0.0.1:$(port 9001)/" -e "s/127\.0\.0\.1:9002/127.0.0.1:$(port 9002)/" \
    -e "s/127\.0\.0\.1:9003/127.0.0.1:$(port 9003)/" "$ROOT/host/benches/peers/conf/origin.conf" >"$OUT/run/origin.conf"
cat >"$OUT/run/weir.toml" <<EOF
[runtime]
worker_threads = 1

[plugins]
cache_dir = "$CACHE"

[[listener]]
name = "h1"
listen = "127.0.0.1:$(port 8088)"
protocol = "http"
pool = "be"

[pool.be]
backends = [{ address = "127.0.0.1:$(port 9001)" }, { address = "127.0.0.1:$(port 9002)" }]
balancer = { plugin = "round-robin" }
max_idle_per_backend = 128
EOF
cat >"$OUT/run/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    mode http
    option http-keep-alive
    bind 127.0.0.1:$(port 8081)
    bind 127.0.0.1:$(port 8181) proto h2
    default_backend be
backend be
    mode http
    http-reuse always
    balance roundrobin
    server s1 127.0.0.1:$(port 9001)
    server s2 127.0.0.1:$(port 9002)
EOF
nginx -c "$OUT/run/origin.conf" -p "$OUT/run/" >"$OUT/logs/origin.out" 2>&1 &
pids+=($!)
wait_port "$(port 9001)"
declare -A CMD PORT
CMD[weir]="$WEIR run --config $OUT/run/weir.toml"
CMD[haproxy]="haproxy -f $OUT/run/haproxy.cfg"
if [ "$MODE" = h1 ]; then
    PORT[weir]=$(port 8088) PORT[haproxy]=$(port 8081)
    LOAD=(h2load --h1 -c16)
else
    PORT[weir]=$(port 8088) PORT[haproxy]=$(port 8181)
    LOAD=(h2load -c16 -m16)
fi
# Calls of the allocator's entry points in a callgrind dump (name-compressed format).
allocs() {
    python3 - "$1" <<'PY'
import re, sys
names, calls, cfn = {}, {}, None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            names[i] = name
        if kind == "cfn":
            cfn = i
        continue
    if line.startswith("calls=") and cfn is not None:
        calls[cfn] = calls.get(cfn, 0) + int(line.split()[0][6:])
        cfn = None
want = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}
print(sum(n for i, n in calls.items() if names.get(i, "").split(" ")[0] in want))
PY
}
printf '| proxy | instructions per request (all threads) | allocations per request | requests | h2load failed |\n|---|---|---|---|---|\n' >"$OUT/table.md"
for name in $PROXIES; do
    rm -f "$OUT/callgrind.$name".*
    # shellcheck disable=SC2086
    (cd "$OUT" && exec valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$OUT/callgrind.$name.%p" ${CMD[$name]}) \
        >"$OUT/logs/$name.log" 2>&1 &
    vp=$!
    pids+=("$vp")
    wait_port "${PORT[$name]}"
    url="http://127.0.0.1:${PORT[$name]}/"
    "${LOAD[@]}" -n 2000 "$url" >/dev/null
    callgrind_control -z "$vp" >/dev/null
    "${LOAD[@]}" -n "$N" "$url" >"$OUT/$name.h2load"
    callgrind_control -d "$vp" >/dev/null
    # The dump is written when valgrind next looks at its commands: wait for it.
    for _ in $(seq 1 240); do compgen -G "$OUT/callgrind.$name.*.1" >/dev/null && break; sleep 0.5; done
    sleep 1
    kill "$vp"
    wait "$vp" 2>/dev/null || true
    ok=$(sed -n 's/.* \([0-9]*\) succeeded, \([0-9]*\) failed.*/\1 \2/p' "$OUT/$name.h2load")
    part=$(ls "$OUT/callgrind.$name".*.1 | head -1)
    ir=$(grep -h '^summary:' "$part" | awk '{ print $2 }')
    per=$(awk -v ir="$ir" -v n="$N" 'BEGIN { printf "%.0f", ir / n }')
    al=$(allocs "$part")
    alper=$(awk -v a="$al" -v n="$N" 'BEGIN { printf "%.1f", a / n }')
    echo "$name ($MODE): $per instructions, $alper allocations per request ($ir, $al over $N; h2load succeeded, failed: $ok)"
    printf '| %s | %s | %s | %s | %s |\n' "$name" "$per" "$alper" "$N" "$(echo "$ok" | cut -d' ' -f2)" >>"$OUT/table.md"
    callgrind_annotate --inclusive=yes --auto=no "$part" 2>/dev/null |
        awk -v n="$N" -v top="$TOP" '/^ *[0-9,]+ \(/ { gsub(",", "", $1); if (c++ < top) printf "%10.0f %s\n", $1 / n, substr($0, index($0, ")") + 2) }' \
            >"$OUT/$name.inclusive"
done
cat "$OUT/table.md"
echo "dumps and per-function tables in $OUT"
