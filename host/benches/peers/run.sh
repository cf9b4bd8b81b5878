#!/usr/bin/env bash
# weir, nginx and HAProxy side by side on one origin, in one run (`just peers`).
#
#   ROUNDS=3 DURATION=10 host/benches/peers/run.sh
#   PARTS=h1,h2c host/benches/peers/run.sh     # only these: h1 h2c https handshakes l4 p99 ws burst
#   WEIR=path/to/weir host/benches/peers/run.sh   # that binary instead of this tree's release build
#   PGO=1 host/benches/peers/run.sh            # this tree's profile-guided build (just release-pgo)
#   FLOOR=path/to/floor host/benches/peers/run.sh # that floor binary (FLOOR= : no floor rows)
#   PARTS=h1,perf host/benches/peers/run.sh    # perf stat and perf record -g of each proxy under h1 load
#   host/benches/peers/wakeups.py "A=CMD" "B=CMD"  # wake-ups of wrk and the origin per request, A/B (see its header)
#
# Needs (Debian; not installed by .ci/run, this is not a test):
#   apt-get install nginx haproxy wrk nghttp2-client iperf3 curl openssl strace python3-websockets
# and oha, which this script installs once from crates.io into target/tools/oha (a few
# minutes of build; `cargo install oha --locked`). A part whose tool is missing is skipped
# and says so. What it measures and how: host/benches/peers/peers.py. Everything it writes
# goes under target/peers/ (OUT=DIR for another place); the table is in its peers.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${WEIR:-}" ] && [ -n "${PGO:-}" ]; then
    # The profile-guided build (host/benches/pgo.sh, `just release-pgo`) of this tree.
    host/benches/pgo.sh
    export WEIR=$PWD/target/pgo/$(rustc -vV | sed -n 's/^host: //p')/release/weir
elif [ -z "${WEIR:-}" ]; then
    # Build (or find up to date) this tree's release binary: the commit the table names.
    cargo build --release --bin weir
    export WEIR=$PWD/target/release/weir
fi
if [ -z "${FLOOR+set}" ]; then
    # The floor proxies (host/benches/floor.rs: hyper alone, httparse by hand; hyper's
    # HTTP/2 server for h2c), rows of the h1 and h2c parts behind weir. FLOOR= (empty) runs
    # without them.
    FLOOR=$(cargo bench --bench floor --no-run --message-format=json | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor" and m.get("executable"):
        print(m["executable"])')
    export FLOOR
fi
if [ -z "${OHA:-}" ]; then
    export OHA=$PWD/target/tools/oha/bin/oha
    if [ ! -x "$OHA" ]; then
        echo "installing oha into target/tools/oha (once)"
        t0=$(date +%s)
        cargo install oha --locked --root target/tools/oha
        echo "oha installed in $(($(date +%s) - t0)) s"
    fi
fi
exec /usr/bin/python3 host/benches/peers/peers.py
