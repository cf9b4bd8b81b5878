#!/usr/bin/env bash
# host/benches/h2c.sh [ROUNDS] [SECONDS]: proxy CPU µs per h2c request, weir against HAProxy
# 2.6 and nginx 1.22 in one run, with the ../shared/peers harness (h2load -t1 -c16 -m16;
# origin nginx and h2load on CPU0, the proxies on CPU1, all at nice -20; interleaved
# rounds). weir's h1 listener (:8088 of the harness's weir-http.toml) takes h2c with prior
# knowledge on the same port, so it is added to the harness's h2c targets.
# Needs: haproxy nginx nghttp2-client (h2load), a release build (cargo build --release).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
WORK=$(mktemp -d /tmp/weir-h2c.XXXXXX)
cp -r "$PEERS"/. "$WORK"/
python3 - "$WORK/bench.py" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace('''    ("h2c nginx-proxy",  "nginx-proxy",  "h2load", "http://127.0.0.1:8182/"),
]''', '''    ("h2c nginx-proxy",  "nginx-proxy",  "h2load", "http://127.0.0.1:8182/"),
    ("h2c weir",         "weir",         "h2load", "http://127.0.0.1:8088/"),
]
TARGETS = [t for t in TARGETS if t[0].startswith("h2c")]''')
s = s.replace('''base = {"wrk": st.median(x["rps"] for x in res["h1 direct"]), "h2load": st.median(x["rps"] for x in res["h2c direct"])}''',
              '''base = {"wrk": float("nan"), "h2load": st.median(x["rps"] for x in res["h2c direct"])}''')
assert s.count("h2c weir") == 1 and 'float("nan")' in s, "the harness's bench.py changed; adapt this script"
open(p, "w").write(s)
PY
export PEERS_DIR=$WORK
trap '"$WORK/stop.sh"' EXIT
WEIR_BIN=${WEIR_BIN:-$ROOT/target/release/weir} "$WORK/start.sh" pinned
uptime
python3 "$WORK/bench.py" pinned "${1:-3}" "${2:-10}"
uptime
