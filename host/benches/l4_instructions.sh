#!/usr/bin/env bash
# User-space instructions per new tcp connection, weir against HAProxy `mode tcp`, under
# callgrind: each proxy alone under valgrind (weir `worker_threads = 1`, HAProxy nbthread 1,
# splice-auto), `wrk -t1 -c16 -H 'Connection: close'` through it to the ../shared/peers
# nginx origin (round robin over two ports: one new client and one new backend connection
# per request); counters zeroed after a 3 s warm-up, dumped after 10 s; the serving
# thread's instructions divided by the connections wrk made. Load-independent, unlike the
# CPU time of host/benches/l4.sh. Needs valgrind, haproxy, nginx, wrk (Debian).
#
#   host/benches/l4_instructions.sh [WEIR binary ...]     # default: target/release/weir
#   TOP=30 host/benches/l4_instructions.sh ...             # also each one's top functions
#   NO_HAPROXY=1 host/benches/l4_instructions.sh ...       # weir only
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=${PEERS_SRC:-$(cd ../shared/peers && pwd)}
[ $# -gt 0 ] || set -- "$PWD/target/release/weir"
P=$(mktemp -d /tmp/weir-l4i.XXXX)
mkdir -p "$P"/run "$P"/logs "$P"/www
for c in "$PEERS"/conf/*; do sed "s#@P@#$P#g" "$c" > "$P/run/$(basename "$c")"; done
chmod 755 "$P" "$P"/www
cat > "$P"/run/weir.toml <<TOML
[runtime]
worker_threads = 1

[[listener]]
name = "rr"
listen = "127.0.0.1:8183"
protocol = "tcp"
pool = "rr"

[pool.rr]
backends = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }]
TOML
cleanup() {
    [ -f "$P"/run/backend.pid ] && kill -QUIT "$(cat "$P"/run/backend.pid)" 2>/dev/null || true
    sleep 0.5
    rm -rf "$P"
}
trap cleanup EXIT
nginx -c "$P"/run/backend.conf -p "$P"/run/
count() { # NAME PORT CMD...
    local name=$1 port=$2
    shift 2
    valgrind --tool=callgrind --dump-instr=no --separate-threads=yes \
        --callgrind-out-file="$P/cg.$name.%p" "$@" > "$P/logs/$name.log" 2>&1 &
    local vp=$!
    sleep 8
    wrk -t1 -c16 -d3s -H 'Connection: close' "http://127.0.0.1:$port/" > /dev/null
    callgrind_control -z "$vp" > /dev/null 2>&1
    wrk -t1 -c16 -d10s -H 'Connection: close' "http://127.0.0.1:$port/" > "$P/logs/$name.wrk"
    callgrind_control -d "$vp" > /dev/null 2>&1
    sleep 1
    kill "$vp" 2> /dev/null || true
    wait "$vp" 2> /dev/null || true
    local n f t
    n=$(awk '/requests in/{print $1}' "$P/logs/$name.wrk")
    # The serving thread: the one dump with the most instructions.
    f=$(for d in "$P/cg.$name".*.1-*; do echo "$(awk '/^summary:/{print $2}' "$d") $d"; done | sort -n | tail -1 | cut -d' ' -f2)
    t=$(awk '/^summary:/{print $2}' "$f")
    echo "$name: $n connections, $t instructions, $((t / n)) per connection"
    if [ -n "${TOP:-}" ]; then
        callgrind_annotate --inclusive=no "$f" 2> /dev/null | awk -v n="$n" '/^ *[0-9,]+ \(/{v=$1; gsub(",","",v); line=$0; sub(/^ *[0-9,]+ \([^)]*\) +/, "", line); printf "  %8.0f %s\n", v/n, substr(line, 1, 150)}' | sed -n "2,$((TOP + 1))p"
    fi
}
sed -i "s#@P@#$P#g" "$P"/run/haproxy-tcp.cfg
[ -n "${NO_HAPROXY:-}" ] || count haproxy 8083 haproxy -db -f "$P"/run/haproxy-tcp.cfg
i=0
for w in "$@"; do
    i=$((i + 1))
    count "weir$i" 8183 "$w" run --config "$P"/run/weir.toml
    echo "  (weir$i = $w)"
done
