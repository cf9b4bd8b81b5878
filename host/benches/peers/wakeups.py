#!/usr/bin/python3
"""How often the peers of a proxy go to sleep (issue 16, BENCHMARKS.md "Why the peers sleep").

The h1 load of the peer bench (run.sh), for a few proxies A/B in one sitting: the origin
nginx (conf/origin.conf, 1 worker) and `wrk -t1 -c64` on CPU 0, each proxy alone on CPU 1,
all at nice -20; the proxies take turns, ROUNDS rounds of SECS s of wrk each. Per request:
req/s, the proxy's CPU µs (user, system; /proc/PID/stat), the times the proxy, the origin
and wrk went to sleep (voluntary context switches of all their threads; wrk's from
getrusage of this script's children), and the IPIs CPU 0 and CPU 1 received (RES + CAL
of /proc/interrupts).

    host/benches/peers/wakeups.py "main=/work/bins/weir-main run --config {conf}" \
        "new=target/release/weir run --config {conf}" \
        "floor=FLOOR hyper --listen 127.0.0.1:{port} --upstream {up} --runtime multi"

Each argument is NAME=COMMAND; {port} is the port the proxy must listen on, {up} the two
origin ports (127.0.0.1:A,127.0.0.1:B), {conf} a weir config written for it (1 worker
thread, one h1 listener on {port}, round-robin over the two origin ports, as in
conf/weir.toml). SECS (5), ROUNDS (3), PORT_OFFSET (300), OUT (target/wakeups);
HOLD=S keeps everything running S seconds after the rounds (for perf: wakeups_trace.sh).
"""
import os, sys, time, resource, signal, shlex
from sidebyside import Bench, kids, vol, cpu, ipis, wait_port, wrk, HZ
B = Bench("wakeups", 300)
OUT, O, ORG = B.out, B.offset, B.origin_ports
PX = ["nice", "-n", "-20", "taskset", "-c", "1"]
SECS = int(os.environ.get("SECS", "5")); ROUNDS = int(os.environ.get("ROUNDS", "3"))
WEIR_CONF = """[runtime]
worker_threads = 1

[plugins]
cache_dir = "{cache}"

[[listener]]
name = "h1"
listen = "127.0.0.1:{port}"
protocol = "http"
pool = "be"

[pool.be]
backends = [{{ address = "127.0.0.1:{o1}" }}, {{ address = "127.0.0.1:{o2}" }}]
balancer = {{ plugin = "round-robin" }}
max_idle_per_backend = 128
"""
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
try:
    origin = B.start_origin()
    px = {}
    for i, spec in enumerate(sys.argv[1:]):
        name, argv = spec.split("=", 1)
        port = 8400 + O + i
        conf = f"{OUT}/run/weir-{port}.toml"
        open(conf, "w").write(WEIR_CONF.format(port=port, cache=f"{OUT}/cache", o1=ORG[0], o2=ORG[1]))
        argv = argv.format(port=port, up=f"127.0.0.1:{ORG[0]},127.0.0.1:{ORG[1]}", conf=conf)
        px[name] = (B.start(shlex.split(argv), PX, name), port)
    for name, (p, port) in px.items(): wait_port(port); wrk(port, 2)
    ol = kids(origin)
    print(f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    for r in range(ROUNDS):
        for name, (p, port) in px.items():
            pl = kids(p)
            a = (vol(pl), vol(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw, ipis(), cpu(pl), time.time())
            n, bad = wrk(port, SECS)
            b = (vol(pl), vol(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw, ipis(), cpu(pl), time.time())
            us = lambda i: (b[4][i] - a[4][i]) / HZ * 1e6 / n
            print(f"r{r+1} {name:12s} {n/(b[5]-a[5]):8.0f} req/s  cpu {us(0)+us(1):5.1f} (u {us(0):.1f} s {us(1):.1f}) µs/req  "
                  f"sleeps px {(b[0]-a[0])/n:.3f} origin {(b[1]-a[1])/n:.3f} wrk {(b[2]-a[2])/n:.3f}  IPI0 {(b[3][0]-a[3][0])/n:.3f} IPI1 {(b[3][1]-a[3][1])/n:.3f} {bad}", flush=True)
    print(f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    if os.environ.get("HOLD"):
        print("holding", {k: v[0].pid for k, v in px.items()}, "origin", kids(origin), flush=True); time.sleep(int(os.environ["HOLD"]))
finally:
    B.stop()
