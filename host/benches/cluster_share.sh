#!/usr/bin/env bash
# Requests/s of one weir with share_stick_tables on against off (issue 17), alternating:
#
#   cargo build --release -p weir --bin weir
#   host/benches/cluster_share.sh [ROUNDS]      # WEIR=path/to/weir to pick the binary
#
# Starts an etcd (Debian's etcd-server) and an nginx origin of two `return 200` servers
# in a temporary directory, then for each round and each setting a fresh weir (header
# affinity on x-session, ttl_s = 300) and two wrk -t1 -c64 -d10s runs: every request a
# new session (examples/cluster/new_sessions.lua) and 16 sessions round and round. Prints
# req/s, and the cluster's published and dropped counts. Ports 24890-24891, 19201-19202,
# 19300, 19399.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
weir=${WEIR:-target/release/weir}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls http://127.0.0.1:24890 --advertise-client-urls http://127.0.0.1:24890 \
    --listen-peer-urls http://127.0.0.1:24891 --initial-advertise-peer-urls http://127.0.0.1:24891 \
    --initial-cluster bench=http://127.0.0.1:24891 >"$work/etcd.log" 2>&1 &
pids+=($!)
until curl -sf http://127.0.0.1:24890/health >/dev/null; do sleep 0.2; done

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/cb; proxy_temp_path $work/pt; fastcgi_temp_path $work/ft;
    uwsgi_temp_path $work/ut; scgi_temp_path $work/st;
    server { listen 127.0.0.1:19201; location / { return 200 "b1\n"; } }
    server { listen 127.0.0.1:19202; location / { return 200 "b2\n"; } }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work"

for share in true false; do
    cat >"$work/weir-$share.toml" <<TOML
[admin]
listen = "127.0.0.1:19399"

[cluster]
etcd = ["http://127.0.0.1:24890"]
prefix = "/weir-bench"
node = "bench"

[[listener]]
name = "main"
listen = "127.0.0.1:19300"
pool = "web"

[pool.web]
backends = [{ address = "127.0.0.1:19201" }, { address = "127.0.0.1:19202" }]
affinity = { plugin = "header", config = { name = "x-session", ttl_s = 300 } }
share_stick_tables = $share
TOML
done
cat >"$work/few.lua" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", { ["x-session"] = "few-" .. (counter % 16) })
end
LUA

for round in $(seq 1 "$rounds"); do
    for share in true false; do
        "$weir" run --config "$work/weir-$share.toml" 2>"$work/weir-$share.log" &
        pid=$!
        until curl -s http://127.0.0.1:19399/api/v1/status | grep -q '"listeners"'; do sleep 0.2; done
        sleep 1
        # The 16 keys first: after the new sessions the queue still holds up to 16,384 pins
        # being written, which would weigh on the next run.
        for script in "$work/few.lua" examples/cluster/new_sessions.lua; do
            rps=$(wrk -t1 -c64 -d10s -s "$script" http://127.0.0.1:19300/ | awk '/Requests\/sec/ {print $2}')
            counts=$(curl -s http://127.0.0.1:19399/api/v1/status | python3 -c \
                "import json,sys; s=json.load(sys.stdin)['cluster']['stick']; print(f\"published {s['published']} dropped {s['dropped']}\")")
            echo "round $round share_stick_tables=$share $(basename "$script" .lua): $rps req/s; $counts; load $(cut -d' ' -f1 /proc/loadavg)"
        done
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:24890 del --prefix /weir-bench/ >/dev/null
    done
done
