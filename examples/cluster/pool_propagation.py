#!/usr/bin/env python3
"""Measures how long a pool change written to etcd takes to be applied by every instance.
Run with examples/cluster/run.sh up: python3 examples/cluster/pool_propagation.py [N]
(writes <prefix>/pools/api N times through etcd's JSON gateway, each time with two of the
three backends, then polls each instance's /api/v1/status until cluster.pools.api shows
that revision applied; prints percentiles). Ports as run.sh's defaults, or ETCD_PORT,
ADMIN_BASE, BACKEND_BASE; INSTANCES=2 waits for b and c only."""
import base64, json, os, sys, time, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ETCD = f"http://127.0.0.1:{os.environ.get('ETCD_PORT', '23790')}"
ADMIN_BASE = int(os.environ.get("ADMIN_BASE", "9910"))
BACKEND_BASE = int(os.environ.get("BACKEND_BASE", "9100"))
FIRST = 2 if os.environ.get("INSTANCES") == "2" else 1
ADMINS = [f"http://127.0.0.1:{ADMIN_BASE + i}/api/v1/status" for i in range(FIRST, 4)]
KEY = "/weir-example/pools/api"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def put(key, value):
    body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{ETCD}/v3/kv/put", data=body)) as r:
        return int(json.load(r)["header"]["revision"])


def state(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)["cluster"]["pools"].get("api", {})


times = []
for i in range(N):
    backends = ", ".join(f'{{ address = "127.0.0.1:{BACKEND_BASE + 1 + (i + j) % 3}" }}' for j in range(2))
    t0 = time.perf_counter()
    rev = put(KEY, f'backends = [{backends}]\nbalancer = {{ plugin = "p2c" }}\n')
    for url in ADMINS:
        while True:
            s = state(url)
            if s.get("revision", 0) >= rev:
                assert s["applied"], s
                break
    times.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.1)
times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(f"{N} pool changes -> {len(ADMINS)} instances: p50 {pct(0.5):.1f} ms, p90 {pct(0.9):.1f} ms, "
      f"max {times[-1]:.1f} ms (status polled back to back)")
