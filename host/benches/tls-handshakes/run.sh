#!/usr/bin/env bash
# Server CPU per TLS handshake, weir against HAProxy, with the same ECDSA P-256
# certificate, one thread each (weir worker_threads = 1, HAProxy nbthread 1). `openssl
# s_time` makes handshakes one at a time for SECONDS (-new: full, -reuse: resumed TLS 1.2);
# no request is sent, the handshake alone is measured. Resumed TLS 1.3 needs a client that
# reads the tickets the server sends after the handshake, which s_time does not:
# resume13.py (beside this file) sends one request per connection (`GET /`, answered
# 503 by both servers themselves: neither has a backend) and resumes each connection with
# the newest ticket, PSK with ECDHE, counting only the connections the server resumed.
# Each server's user + system CPU over the run (/proc/PID/stat) divided by the handshakes
# made. Rounds alternate HAProxy and weir.
# usage: host/benches/tls-handshakes/run.sh path/to/release/weir [ROUNDS] [SECONDS]
set -euo pipefail
HERE=$(dirname "$(realpath "$0")")
WEIR=$(realpath "$1"); ROUNDS=${2:-3}; SECS=${3:-8}
HZ=$(getconf CLK_TCK)
DIR=$(mktemp -d)
trap 'kill $(cat "$DIR/haproxy.pid") $(cat "$DIR/weir.pid") 2>/dev/null || true; rm -rf "$DIR"' EXIT
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout site.key -out site.pem 2>/dev/null
cat site.pem site.key > combined.pem
cat > haproxy.cfg <<CFG
global
    nbthread 1
    maxconn 9000
    tune.ssl.cachesize 20000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:18443 ssl crt $DIR/combined.pem alpn http/1.1
    default_backend be
backend be
CFG
cat > weir.toml <<CFG
[runtime]
worker_threads = 1
[[listener]]
name = "https"
listen = "127.0.0.1:18444"
pool = "web"
tls = { certificates = [{ cert = "site.pem", key = "site.key" }], alpn = ["http/1.1"] }
[pool.web]
backends = []
CFG
haproxy -f haproxy.cfg -D -p haproxy.pid
"$WEIR" run --config weir.toml > weir.log 2>&1 & echo $! > weir.pid
sleep 1
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() { # NAME PID PORT S_TIME-ARGS...
    local name=$1 pid=$2 port=$3; shift 3
    local before after out n
    before=$(cpu "$pid")
    if [ "$1" = -resume ]; then # TLS 1.3 only
        out=$(python3 "$HERE/resume13.py" 127.0.0.1 "$port" "$SECS") || { echo "$name: $out" >&2; exit 1; }
    else
        out=$(openssl s_time -connect "127.0.0.1:$port" -time "$SECS" "$@" 2>&1 | grep -E "connections in [0-9.]+s" | tail -1)
    fi
    after=$(cpu "$pid")
    n=$(echo "$out" | awk '{print $1}')
    awk -v name="$name" -v args="$*" -v c=$((after - before)) -v n="$n" -v hz="$HZ" 'BEGIN {
        us = c * 1e6 / hz / n
        printf "%-8s %-16s %6d handshakes  %6.1f us CPU each  %6.0f /s of one core\n", name, args, n, us, 1e6 / us }'
}
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$ROUNDS"); do
    for mode in "-new -tls1_3" "-resume -tls1_3" "-new -tls1_2" "-reuse -tls1_2"; do
        # shellcheck disable=SC2086
        one haproxy "$(cat haproxy.pid)" 18443 $mode
        # shellcheck disable=SC2086
        one weir "$(cat weir.pid)" 18444 $mode
    done
done
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
