#!/usr/bin/python3
"""The worker model, 1 -> 2 workers (issue 16, BENCHMARKS.md "Worker model").

The peer bench's origin (conf/origin.conf, nginx, 1 worker) and wrk on CPU 0, as in run.sh
and wakeups.py; each weir allowed both CPUs (not pinned), nice -20. Several weir builds or
modes run side by side and take turns, ROUNDS rounds of SECS s per load:

  h1 c64 / h1 c16   wrk -t1 -cN, keep-alive GETs through an http listener (round-robin
                    over the two origin ports)
  l4 c64 / l4 c16   wrk -t1 -cN with `Connection: close` through a `protocol = "tcp"`
                    listener: each request a new client connection and a new backend one

Per run: req/s, the proxy's CPU µs per request (user + system, /proc/PID/stat), the share
of the CPU each serving thread took (/proc/PID/task/*/stat, by thread name), and the
connections each worker accepted (`weir_control_worker_connections`, admin API; absent on
one runtime), the times the proxy, the origin and wrk went to sleep (voluntary context
switches) and the IPIs both CPUs received (RES + CAL), per request. The load average is
printed with each run.

    host/benches/peers/workers.py "w1=1:target/release/weir" "w2=2:target/release/weir" \
        "main-w2=2:/work/bins/weir-984e06b"

Each argument is NAME=WORKERS:[ENV=V ...] BINARY (WORKERS is `[runtime] worker_threads`;
the models compared in BENCHMARKS.md were switched by environment variables of builds
e17caf3 and abb4fb7: WEIR_WORKER_MODEL=multi|reuseport, WEIR_ACCEPT_YIELD=1). SECS (5), ROUNDS (2), LOADS
(h1:64,h1:16,l4:64,l4:16), PORT_OFFSET (600), OUT (target/workers).
"""
import os, sys, time, re, signal, shlex, urllib.request, resource
from sidebyside import Bench, kids, tasks, vol, cpu, ipis, wait_port, wrk, load, HZ
B = Bench("workers", 600)
OUT, O, ORG = B.out, B.offset, B.origin_ports
PX = ["nice", "-n", "-20"]
SECS = int(os.environ.get("SECS", "5")); ROUNDS = int(os.environ.get("ROUNDS", "2"))
LOADS = [(k, int(c)) for k, c in (x.split(":") for x in os.environ.get("LOADS", "h1:64,h1:16,l4:64,l4:16").split(","))]
WEIR_CONF = """[runtime]
worker_threads = {workers}

[plugins]
cache_dir = "{cache}"

[admin]
listen = "127.0.0.1:{admin}"

[[listener]]
name = "h1"
listen = "127.0.0.1:{port}"
protocol = "http"
pool = "be"

[[listener]]
name = "l4"
listen = "127.0.0.1:{l4}"
protocol = "tcp"
pool = "be"

[pool.be]
backends = [{{ address = "127.0.0.1:{o1}" }}, {{ address = "127.0.0.1:{o2}" }}]
balancer = {{ plugin = "round-robin" }}
max_idle_per_backend = 128
"""
def threads(pl):
    """CPU ticks by thread name (user + system)."""
    t = {}
    for pid, task in tasks(pl):
        try: s = open(f"/proc/{pid}/task/{task}/stat").read()
        except FileNotFoundError: continue
        name = s[s.index("(") + 1:s.rindex(")")]
        f = s.rsplit(")", 1)[1].split()
        if int(task) == pid: key = "main"
        elif re.match(r"weir-worker-\d", name): key = name
        elif name.startswith("tokio-r"): key = f"tokio-worker-{task}"
        else: key = "other"
        t[key] = t.get(key, 0) + int(f[11]) + int(f[12])
    return t
def accepted(admin):
    try: text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
    except OSError: return {}
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(r'weir_control_worker_connections(?:_total)?\{worker="(\d+)"\} (\S+)', text)}
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
try:
    origin = B.start_origin()
    px = {}
    for i, spec in enumerate(sys.argv[1:]):
        name, rest = spec.split("=", 1)
        workers, cmd = rest.split(":", 1)
        port, l4, admin = 8500 + O + i, 8550 + O + i, 8580 + O + i
        conf = f"{OUT}/run/weir-{name}.toml"
        open(conf, "w").write(WEIR_CONF.format(workers=workers, port=port, l4=l4, admin=admin,
                                               cache=f"{OUT}/cache", o1=ORG[0], o2=ORG[1]))
        words = shlex.split(cmd); env = dict(os.environ)
        while "=" in words[0]:
            k, v = words.pop(0).split("=", 1); env[k] = v
        p = B.start(words + ["run", "--config", conf], PX, name, env)
        px[name] = (p, {"h1": port, "l4": l4}, admin)
    for name, (p, ports, admin) in px.items():
        for port in ports.values(): wait_port(port); wrk(port, 1, 16)
    print(f"load {load()}", flush=True)
    for r in range(ROUNDS):
        for kind, conns in LOADS:
            for name, (p, ports, admin) in px.items():
                pl = kids(p)
                ol = kids(origin)
                a = (cpu(pl), threads(pl), accepted(admin), time.time(), vol(pl), vol(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw, sum(ipis().values()))
                n, bad = wrk(ports[kind], SECS, conns, kind == "l4")
                b = (cpu(pl), threads(pl), accepted(admin), time.time(), vol(pl), vol(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw, sum(ipis().values()))
                sl = lambda i: (b[i] - a[i]) / n
                us = lambda i: (b[0][i] - a[0][i]) / HZ * 1e6 / n
                th = {k: v - a[1].get(k, 0) for k, v in b[1].items()}
                busy = sorted(((k, v) for k, v in th.items() if v > 0 and k.startswith(("weir-worker", "tokio-worker"))), key=lambda kv: kv[0])
                tot = sum(th.values()) or 1
                share = "/".join(f"{100 * v / tot:.0f}" for _, v in busy) or "-"
                main = th.get("main", 0) * 100 / tot
                acc = {k: v - a[2].get(k, 0) for k, v in b[2].items()}
                accs = "/".join(str(acc[k]) for k in sorted(acc)) if len(acc) > 1 else "-"
                print(f"r{r+1} {kind} c{conns:<3d} {name:10s} {n/(b[3]-a[3]):8.0f} req/s  cpu {us(0)+us(1):5.1f} (u {us(0):.1f} s {us(1):.1f}) µs/req  "
                      f"CPU% workers {share} main {main:.0f}  accepted {accs}  sleeps px {sl(4):.3f} origin {sl(5):.3f} wrk {sl(6):.3f} IPIs {sl(7):.3f}  load {load()} {bad}", flush=True)
    print(f"load {load()}", flush=True)
finally:
    B.stop()
