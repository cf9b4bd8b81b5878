#!/usr/bin/env bash
# L4 side by side: weir's tcp listener against HAProxy `mode tcp` (1 thread, splice) in the
# same run, both pinned to CPU1 at nice -20, the clients and origins on CPU0 (the
# `../shared/peers` placement). Needs haproxy, nginx, iperf3, wrk, curl, python3 (Debian).
#
#   host/benches/l4.sh [ROUNDS=3] [IDLE_CONNS=4000]
#   WEIR_B=path/to/another/weir host/benches/l4.sh ...   # A/B: a second weir build, pinned
#       to CPU1 as well, run after the first in every round (listeners on ports +1000)
#   WEIR=path/to/weir host/benches/l4.sh ...             # that build instead of building one
#   TESTS="curl wrk" host/benches/l4.sh ...              # only these (curl iperf wrk idle)
#   PERF=dir host/benches/l4.sh ...   # each proxy's curl download under `perf record -g`
#       (cpu-clock), into dir/<proxy>-r<round>.data
#
# Per round, interleaved (direct, HAProxy, weir):
#   - a 1 GiB HTTP download (nginx sendfile origin) with curl: Gbit/s and the proxy's CPU
#     seconds (user + system, /proc/PID/task/*/schedstat) for it;
#   - iperf3 -t 10 (one stream): Gbit/s and the proxy's CPU share;
#   - new connections per second: wrk -t1 -c64 -d10s with `Connection: close` (each
#     request a new client connection and a new backend connection), round robin over two
#     origin ports; the proxy's CPU microseconds per connection.
# Then memory: IDLE_CONNS connections opened through each proxy (500 at a time) to a
# backend that holds them, the proxy's RSS growth divided by their number.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
IDLE=${2:-4000}
PEERS=${PEERS_SRC:-$(cd ../shared/peers && pwd)}
TESTS=${TESTS:-curl iperf wrk idle}
has() { [[ " $TESTS " == *" $1 "* ]]; }
if [ -z "${WEIR:-}" ]; then
    cargo build --release >/dev/null 2>&1
    WEIR=$PWD/target/release/weir
fi
P=$(mktemp -d /tmp/weir-l4.XXXX)
cp -r "$PEERS"/conf "$P"/
mkdir -p "$P"/run "$P"/logs "$P"/www
for c in "$P"/conf/*; do sed "s#@P@#$P#g" "$c" > "$P/run/$(basename "$c")"; done
head -c 1G /dev/zero > "$P"/www/big
# nginx's workers are not root: they must be able to read the file.
chmod 755 "$P" "$P"/www && chmod 644 "$P"/www/big
# One more HAProxy listener, to the holding backend of the memory test.
cat >> "$P"/run/haproxy-tcp.cfg <<EOF
listen l4_hold
    bind 127.0.0.1:8089 backlog 4096
    timeout client 10m
    timeout server 10m
    server h1 127.0.0.1:9020
EOF
cat > "$P"/run/weir-l4.toml <<EOF
[runtime]
worker_threads = 1

[[listener]]
name = "rr"
listen = "127.0.0.1:8183"
protocol = "tcp"
pool = "rr"
[[listener]]
name = "big"
listen = "127.0.0.1:8184"
protocol = "tcp"
pool = "big"
[[listener]]
name = "iperf"
listen = "127.0.0.1:8186"
protocol = "tcp"
pool = "iperf"
[[listener]]
name = "hold"
listen = "127.0.0.1:8189"
protocol = "tcp"
pool = "hold"

[pool.rr]
backends = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002" }]
[pool.big]
backends = [{ address = "127.0.0.1:9001" }]
[pool.iperf]
backends = [{ address = "127.0.0.1:5201" }]
[pool.hold]
backends = [{ address = "127.0.0.1:9020" }]
EOF
# The A/B build: the same config on ports 9183.. instead of 8183..
sed 's/127.0.0.1:81/127.0.0.1:91/' "$P"/run/weir-l4.toml > "$P"/run/weir-l4-b.toml
ulimit -n "$(ulimit -Hn)"
G="nice -n -20 taskset -c 0"
X="nice -n -20 taskset -c 1"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$P"/run/backend.pid ] && kill -QUIT "$(cat "$P"/run/backend.pid)" 2>/dev/null || true
    [ -f "$P"/run/haproxy-tcp.pid ] && kill "$(cat "$P"/run/haproxy-tcp.pid)" 2>/dev/null || true
    sleep 0.5
    rm -rf "$P"
}
trap cleanup EXIT
$G nginx -c "$P"/run/backend.conf -p "$P"/run/
$X haproxy -D -f "$P"/run/haproxy-tcp.cfg
$X "$WEIR" run --config "$P"/run/weir-l4.toml > "$P"/logs/weir.log 2>&1 &
pids+=($!)
WPID=$!
B=()
if [ -n "${WEIR_B:-}" ]; then
    $X "$WEIR_B" run --config "$P"/run/weir-l4-b.toml > "$P"/logs/weir-b.log 2>&1 &
    pids+=($!)
    B=("weirB 9184 $!")
fi
$G iperf3 -s -p 5201 > "$P"/logs/iperf3.log 2>&1 &
pids+=($!)
# The holding backend: accepts and keeps every connection, never writes.
$G /usr/bin/python3 -c '
import asyncio
held = []
async def main():
    async def keep(r, w):
        held.append(w)
        await r.read()
    srv = await asyncio.start_server(keep, "127.0.0.1", 9020, backlog=4096)
    await srv.serve_forever()
asyncio.run(main())' &
pids+=($!)
sleep 1
HPID=$(cat "$P"/run/haproxy-tcp.pid)
# CPU time in nanoseconds, all the process's threads (schedstat: the scheduler's exact
# run time, where /proc/PID/stat counts 10 ms clock ticks: 3 % of a GiB's CPU each).
cpu() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%.0f", t}'; }
echo "weir $(git rev-parse --short HEAD)${WEIR_B:+, weirB $WEIR_B}, HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $(nproc) CPUs; weir pid $WPID, haproxy pid $HPID"
for r in $(seq 1 "$ROUNDS"); do
    echo "r$r $(uptime)"
    has curl && for t in "direct 9001 -" "haproxy 8084 $HPID" "weir 8184 $WPID" "${B[@]/9184/9184}"; do
        set -- $t
        c0=$([ "$3" = - ] && echo 0 || cpu "$3")
        [ -n "${PERF:-}" ] && [ "$3" != - ] && { mkdir -p "$PERF"; perf record -q -e cpu-clock -F 20000 -g -p "$3" -o "$PERF/$1-r$r.data" 2>/dev/null & pf=$!; sleep 0.5; }
        s=$($G curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$2/big")
        [ -n "${PERF:-}" ] && [ "$3" != - ] && { kill -INT $pf; wait $pf 2>/dev/null || true; }
        c1=$([ "$3" = - ] && echo 0 || cpu "$3")
        echo "r$r curl-1GiB $1 $(echo "$s" | awk '{printf "%.2f", $1*8/1e9}') Gbit/s proxy_cpu=$(echo "$c0 $c1" | awk '{printf "%.3f", ($2-$1)/1e9}') s"
    done
    has iperf && for t in "direct 5201 -" "haproxy 8086 $HPID" "weir 8186 $WPID" "${B[@]/9184/9186}"; do
        set -- $t
        c0=$([ "$3" = - ] && echo 0 || cpu "$3")
        g=$($G iperf3 -c 127.0.0.1 -p "$2" -t 10 -J | /usr/bin/python3 -c "import json,sys;j=json.load(sys.stdin);print('%.2f'%(j['end']['sum_received']['bits_per_second']/1e9))")
        c1=$([ "$3" = - ] && echo 0 || cpu "$3")
        echo "r$r iperf3-10s $1 $g Gbit/s proxy_cpu=$(( (c1 - c0) / 100000000 ))% of a core"
    done
    has wrk && for t in "haproxy 8083 $HPID" "weir 8183 $WPID" "${B[@]/9184/9183}"; do
        set -- $t
        c0=$(cpu "$3")
        n=$($G wrk -t1 -c64 -d10s -H 'Connection: close' "http://127.0.0.1:$2/" | awk '/^Requests\/sec/{print $2}')
        c1=$(cpu "$3")
        echo "r$r new-connections $1 $n conn/s proxy_cpu=$(echo "$c0 $c1 $n" | awk '{printf "%.1f", ($2-$1)/1000/($3*10)}') us/conn"
    done
done
# Memory per idle connection (both legs): RSS growth over IDLE connections held open.
if has idle; then for t in "haproxy 8089 $HPID" "weir 8189 $WPID" "${B[@]/9184/9189}"; do
    set -- $t
    r0=$(awk '/VmRSS/{print $2}' "/proc/$3/status")
    $G /usr/bin/python3 - "$2" "$IDLE" "$3" <<'EOF'
import socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = []
for i in range(0, n, 500):
    for _ in range(min(500, n - i)):
        s = socket.create_connection(("127.0.0.1", port))
        conns.append(s)
    time.sleep(0.2)
time.sleep(2)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(rss, flush=True)
open("/tmp/weir-l4-rss", "w").write(rss)
for s in conns:
    s.close()
EOF
    r1=$(cat /tmp/weir-l4-rss)
    echo "idle-connections $1 $IDLE conns: RSS ${r0} kB -> ${r1} kB = $(( (r1 - r0) * 1024 / IDLE )) B/conn"
    sleep 2
done; fi
