#!/usr/bin/env bash
# host/benches/https.sh [ROUNDS] [SECONDS]: HTTPS HTTP/1.1 keep-alive requests per second
# and proxy CPU µs per request, weir against nginx 1.22 and HAProxy 2.6 in one run, with
# the ../shared/peers harness (wrk -t1 -c64, keep-alive, TLS 1.3 with the same ECDSA
# P-256 certificate on each proxy; origin nginx and wrk on CPU0, the proxies on CPU1, all
# at nice -20; interleaved rounds). Each proxy terminates TLS and forwards cleartext
# HTTP/1.1 to the origin's :9001/:9002 over kept connections.
# Needs: haproxy nginx wrk openssl, a release build (cargo build --release).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
WORK=$(mktemp -d /tmp/weir-https.XXXXXX)
cp -r "$PEERS"/. "$WORK"/
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/conf/site.key" -out "$WORK/conf/site.pem" 2>/dev/null
cat "$WORK/conf/site.pem" "$WORK/conf/site.key" > "$WORK/conf/site-haproxy.pem"
python3 - "$WORK" <<'PY'
import sys
w = sys.argv[1]
def patch(name, old, new):
    p = f"{w}/{name}"
    s = open(p).read()
    assert s.count(old) == 1, f"the harness's {name} changed; adapt this script"
    open(p, "w").write(s.replace(old, new))
patch("conf/nginx-proxy.conf", "    server {\n        listen 127.0.0.1:8092", """    server {
        listen 127.0.0.1:8443 ssl backlog=4096;
        ssl_certificate @P@/conf/site.pem; ssl_certificate_key @P@/conf/site.key;
        ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:8092""")
patch("conf/haproxy-http.cfg", "    bind 127.0.0.1:8181 proto h2 backlog 4096\n",
      "    bind 127.0.0.1:8181 proto h2 backlog 4096\n    bind 127.0.0.1:8444 ssl crt @P@/conf/site-haproxy.pem alpn http/1.1 backlog 4096\n")
patch("conf/weir-http.toml", "[[listener]]\nname = \"ws\"", """[[listener]]
name = "https"
listen = "127.0.0.1:8445"
protocol = "http"
pool = "be"
tls = { certificates = [{ cert = "@P@/conf/site.pem", key = "@P@/conf/site.key" }] }

[[listener]]
name = "ws\"""")
patch("bench.py", '''TARGETS = [  # name''', '''TARGETS_ALL = [  # name''')
patch("bench.py", '''    ("h2c nginx-proxy",  "nginx-proxy",  "h2load", "http://127.0.0.1:8182/"),
]''', '''    ("h2c nginx-proxy",  "nginx-proxy",  "h2load", "http://127.0.0.1:8182/"),
]
TARGETS = [TARGETS_ALL[0],
    ("https haproxy",    "haproxy-http", "wrk", "https://127.0.0.1:8444/"),
    ("https nginx",      "nginx-proxy",  "wrk", "https://127.0.0.1:8443/"),
    ("https weir",       "weir",         "wrk", "https://127.0.0.1:8445/"),
]''')
patch("bench.py", '''"h2load": st.median(x["rps"] for x in res["h2c direct"])}''', '''"h2load": float("nan")}''')
PY
export PEERS_DIR=$WORK
trap '"$WORK/stop.sh"' EXIT
WEIR_BIN=${WEIR_BIN:-$ROOT/target/release/weir} "$WORK/start.sh" pinned
uptime
python3 "$WORK/bench.py" pinned "${1:-3}" "${2:-10}"
uptime
