#!/usr/bin/env python3
"""Measures how long a stick entry pinned through instance a takes to reach b and c.
Run with examples/cluster/run.sh up: python3 examples/cluster/propagation.py [N]
(pins N new sessions through a, one at a time; after each, polls b's and c's
/api/v1/status until their cluster.stick.received count moves; prints percentiles)."""
import json, sys, time, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
A = "http://127.0.0.1:8081/"
ADMINS = ["http://127.0.0.1:9912/api/v1/status", "http://127.0.0.1:9913/api/v1/status"]


def received(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)["cluster"]["stick"]["received"]


times = []
run = int(time.time())
for i in range(N):
    before = [received(u) for u in ADMINS]
    req = urllib.request.Request(A, headers={"x-session": f"prop-{run}-{i}"})
    t0 = time.perf_counter()
    urllib.request.urlopen(req).read()
    for u, b in zip(ADMINS, before):
        while received(u) <= b:
            pass
    times.append((time.perf_counter() - t0) * 1000)
times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))]
print(f"{N} pins a -> b and c: p50 {pct(0.5):.1f} ms, p90 {pct(0.9):.1f} ms, max {times[-1]:.1f} ms "
      "(request through a included; status polled back to back)")
