#!/usr/bin/env bash
# Three weir instances and an etcd with one command, showing a session staying put
# across them, and a pool published once through etcd served by all three:
#
#   examples/cluster/run.sh          # runs the walk-through, then keeps everything up
#                                    # until Ctrl-C (try the curl lines it prints)
#   examples/cluster/run.sh --once   # the walk-through only, then stops everything
#
# Needs etcd (Debian: apt-get install etcd-server) and python3. Ports: etcd 23790/23800,
# backends 9101-9103, weir a/b/c on 8081-8083 with admin APIs on 9911-9913 (override
# with ETCD_PORT, PORT_BASE, ADMIN_BASE, BACKEND_BASE).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=examples/cluster
ETCD_PORT=${ETCD_PORT:-23790}
PORT_BASE=${PORT_BASE:-8080}
ADMIN_BASE=${ADMIN_BASE:-9910}
BACKEND_BASE=${BACKEND_BASE:-9100}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

cargo build -q --bin weir
weir=target/debug/weir

echo "== etcd on 127.0.0.1:$ETCD_PORT (data in $work/etcd)"
etcd --name example --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 10))" \
    --initial-cluster "example=http://127.0.0.1:$((ETCD_PORT + 10))" >"$work/etcd.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null; do sleep 0.2; done

for i in 1 2 3; do
    python3 "$here/backend.py" "backend-$i" "$((BACKEND_BASE + i))" &
    pids+=($!)
done
for i in 1 2 3; do
    until curl -sf "http://127.0.0.1:$((BACKEND_BASE + i))/" >/dev/null; do sleep 0.2; done
done

names=(x a b c)
for i in 1 2 3; do
    n=${names[$i]}
    sed -e "s/@NODE@/$n/" -e "s/@PORT@/$((PORT_BASE + i))/" -e "s/@ADMIN@/$((ADMIN_BASE + i))/" \
        -e "s/@ETCD@/$ETCD_PORT/" -e "s/@B1@/$((BACKEND_BASE + 1))/" -e "s/@B2@/$((BACKEND_BASE + 2))/" \
        -e "s/@B3@/$((BACKEND_BASE + 3))/" "$here/node.toml.in" >"$work/$n.toml"
    "$weir" check --config "$work/$n.toml" >/dev/null
    "$weir" run --config "$work/$n.toml" 2>"$work/$n.log" &
    pids+=($!)
done
for i in 1 2 3; do
    until curl -s "http://127.0.0.1:$((ADMIN_BASE + i))/api/v1/status" | grep -Eq '"connected": *true'; do sleep 0.2; done
done
echo "== weir a, b, c on 127.0.0.1:$((PORT_BASE + 1))-$((PORT_BASE + 3)), all connected to etcd"

echo
echo "== without a session, each instance's round robin is its own:"
for i in 1 2 3; do printf '  via %s: %s\n' "${names[$i]}" "$(curl -s "http://127.0.0.1:$((PORT_BASE + i))/")"; done

for who in alice bob carol; do
    echo
    echo "== session $who: pinned through a, then served through b and c"
    printf '  via a: %s\n' "$(curl -s -H "x-session: $who" "http://127.0.0.1:$((PORT_BASE + 1))/")"
    sleep 0.3   # the pin travels a -> etcd -> b, c (milliseconds; BENCHMARKS.md)
    for round in 1 2; do
        for i in 2 3 1; do
            printf '  via %s: %s\n' "${names[$i]}" \
                "$(curl -s -H "x-session: $who" "http://127.0.0.1:$((PORT_BASE + i))/")"
        done
    done
done

echo
echo "== a pool published through etcd: /api goes to pool \`api\`, which no file defines"
printf '  before, via a: %s\n' "$(curl -s "http://127.0.0.1:$((PORT_BASE + 1))/api")"
pool_toml="backends = [{ address = \"127.0.0.1:$((BACKEND_BASE + 3))\" }]"
# etcd's JSON gateway takes base64 keys and values (etcdctl put does the same).
curl -sf "http://127.0.0.1:$ETCD_PORT/v3/kv/put" \
    -d "{\"key\": \"$(printf /weir-example/pools/api | base64 -w0)\", \"value\": \"$(printf '%s' "$pool_toml" | base64 -w0)\"}" >/dev/null
echo "  put /weir-example/pools/api = $pool_toml"
sleep 0.3   # every instance applies it through its watch (milliseconds; BENCHMARKS.md)
for i in 1 2 3; do printf '  via %s: %s\n' "${names[$i]}" "$(curl -s "http://127.0.0.1:$((PORT_BASE + i))/api")"; done

echo
echo "== the shared entries in etcd (key -> backend address):"
if command -v etcdctl >/dev/null; then
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" get --prefix /weir-example/stick/ | paste - - | sed 's/^/  /'
else
    echo "  (install Debian's etcd-client for etcdctl)"
fi

if [ "${1:-}" = "--once" ]; then exit 0; fi
echo
echo "Try:  curl -H 'x-session: dave' http://127.0.0.1:$((PORT_BASE + 2))/   then the same on :$((PORT_BASE + 1)) and :$((PORT_BASE + 3))"
echo "      curl -s http://127.0.0.1:$((ADMIN_BASE + 1))/api/v1/status | python3 -m json.tool | grep -A12 '\"cluster\"'"
echo "      kill the etcd ($work/etcd.log) and see every instance keep serving; Ctrl-C stops everything."
wait
