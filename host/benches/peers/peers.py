#!/usr/bin/python3
"""weir side by side with nginx and HAProxy in one run, on one origin (issue 16, item 4).

Run through `just peers` (host/benches/peers/run.sh), which builds weir and installs oha
first. Placement (the ../shared/peers harness's `pinned` mode): the origin (nginx, 1
worker), the load generators and the WebSocket echo server on CPU 0; each proxy on CPU 1
(nginx 1 worker, HAProxy 1 thread, weir worker_threads = 1); everything at nice -20.
Rounds are interleaved: each round runs every selected part against every proxy in turn,
and the tables give the median of the rounds.

Environment: ROUNDS (3), DURATION (seconds per run, 10), PARTS (comma-separated, default
all: h1,h2c,https,handshakes,l4,p99,ws,burst; perf only when named), WEIR (the weir
binary), OHA (the oha binary), FLOOR (the floor binary, host/benches/floor.rs, which run.sh
builds; empty: no floor rows), FLOOR_ARGS (added to its command line, e.g. `--runtime
multi`), PERF_SECS (5), RATE (the p99 part's fixed rate, 10000), WS_CONNS (4000), BURST_CONNS
(2000), BURST_ROUNDS (3), STRACE_SECS (3), OUT (the directory for the run's files, under
target/peers/ by default), PORT_OFFSET (0: every port below moves by this much, for a
machine where they are taken).

Parts (what each prints):
  h1          wrk -t1 -c64 keep-alive: req/s (÷ direct), proxy CPU µs per request (the
              scheduler's run time of all the proxy's threads, /proc/PID/task/*/schedstat,
              split into user and system by /proc/PID/stat's ticks), TCP segments per
              request (/proc/net/snmp OutSegs, every socket on the machine), then one short
              pass under `strace -c -f` for syscalls per request. With FLOOR, two more rows
              behind weir: the floor proxies (hyper alone; httparse by hand), on CPU 1 too
  h2c         h2load -t1 -c16 -m16: req/s and CPU µs per request. With FLOOR, a row behind
              weir: hyper's HTTP/2 server in front of hyper-util's pooled HTTP/1.1 client
  https       wrk -t1 -c64 over TLS (one ECDSA P-256 certificate for all three, TLS 1.3,
              HTTP/1.1): req/s and CPU µs per request
  handshakes  openssl s_time (-new -tls1_3, -new -tls1_2, -reuse -tls1_2), one handshake
              at a time, no request, and resumed TLS 1.3 (host/benches/tls-handshakes/
              resume13.py: one request per connection, `GET /tls-resume`, which each
              proxy answers 503 itself, so the tickets are read; PSK with ECDHE), the
              method of host/benches/tls-handshakes/run.sh: the proxy's CPU per
              handshake, and handshakes per second of one core
  l4          weir `protocol = "tcp"` and HAProxy `mode tcp` with splice: curl of a 1 GiB
              file from the origin and iperf3 (one stream): Gbit/s, proxy CPU s per GiB
  p99         oha -q RATE for DURATION s, open loop, latency-corrected, 64 keep-alive
              connections: p50/p99/p99.9
  perf        (only when named) perf stat -e task-clock,context-switches,cpu-migrations,
              page-faults of each proxy under PERF_SECS of the h1 load, then perf record -e
              cpu-clock -g of each: kernel paths (inclusive) and user-space owners (self),
              in µs per request; the perf data and reports stay in logs/
  ws          WS_CONNS WebSockets opened 500 at a time through each proxy and held idle
              (python3-websockets): the proxy's RSS growth / WS_CONNS (once, not per round)
  burst       memory after a burst: BURST_ROUNDS (3) rounds of `wrk -t1 -c BURST_CONNS (2000)
              -d 3s` keep-alive through each proxy, then 3 s idle: its RSS before, at the
              peak (sampled every 100 ms) and after, and after ÷ before (once)

A part whose tool is missing says so and is skipped. Everything started is stopped on
exit (normal, error, Ctrl-C, SIGTERM; a SIGKILL of this script kills its direct children
through PR_SET_PDEATHSIG).
"""
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics as st
import subprocess
import sys
import time

from sidebyside import cpu, ipis, kids as pids, run_ns, vol as sleeps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../.."))
HZ = os.sysconf("SC_CLK_TCK")
ALL_PARTS = ["h1", "h2c", "https", "handshakes", "l4", "p99", "ws", "burst"]
EXTRA_PARTS = ["perf"]  # run only when named in PARTS
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DUR = int(os.environ.get("DURATION", "10"))
PARTS = [p for p in os.environ.get("PARTS", ",".join(ALL_PARTS)).split(",") if p]
RATE = int(os.environ.get("RATE", "10000"))
WS_CONNS = int(os.environ.get("WS_CONNS", "4000"))
BURST_CONNS = int(os.environ.get("BURST_CONNS", "2000"))
BURST_ROUNDS = int(os.environ.get("BURST_ROUNDS", "3"))
STRACE_SECS = int(os.environ.get("STRACE_SECS", "3"))
WEIR = os.environ.get("WEIR", os.path.join(ROOT, "target/release/weir"))
FLOOR = os.environ.get("FLOOR", "")  # host/benches/floor.rs built (run.sh builds it); "" = no floor rows
PERF_SECS = int(os.environ.get("PERF_SECS", "5"))
OHA = os.environ.get("OHA", os.path.join(ROOT, "target/tools/oha/bin/oha"))
OUT = os.environ.get("OUT") or os.path.join(ROOT, "target/peers", time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
PY = "/usr/bin/python3"  # Debian's, with python3-websockets

GEN = ["nice", "-n", "-20", "taskset", "-c", "0"]  # origin and load generators
PROXY_CPU = ["nice", "-n", "-20", "taskset", "-c", "1"]  # each proxy alone

# The ports every part uses, checked free before anything starts.
PORTS = {
    "origin": [9001, 9002, 9003], "ws echo": [9010], "iperf3": [5201],
    "nginx": [8082, 8182, 8443, 8092], "haproxy": [8081, 8181, 8444, 8091, 8084, 8086],
    "weir": [8088, 8445, 8098, 8184, 8186],
    "hyper floor": [8087], "httparse floor": [8089], "h2c floor": [8085],
}
# name -> port per part; None where the proxy has no such listener.
URLS = {
    "h1": {"direct": "http://127.0.0.1:9001/", "nginx": "http://127.0.0.1:8082/",
           "haproxy": "http://127.0.0.1:8081/", "weir": "http://127.0.0.1:8088/",
           "hyper floor": "http://127.0.0.1:8087/", "httparse floor": "http://127.0.0.1:8089/"},
    "h2c": {"direct": "http://127.0.0.1:9003/", "nginx": "http://127.0.0.1:8182/",
            "haproxy": "http://127.0.0.1:8181/", "weir": "http://127.0.0.1:8088/",
            "h2c floor": "http://127.0.0.1:8085/"},
    "https": {"nginx": "https://127.0.0.1:8443/", "haproxy": "https://127.0.0.1:8444/",
              "weir": "https://127.0.0.1:8445/"},
    "handshakes": {"nginx": 8443, "haproxy": 8444, "weir": 8445},
    "l4-curl": {"direct": 9001, "haproxy": 8084, "weir": 8184},
    "l4-iperf": {"direct": 5201, "haproxy": 8086, "weir": 8186},
    "p99": {"direct": "http://127.0.0.1:9001/", "nginx": "http://127.0.0.1:8082/",
            "haproxy": "http://127.0.0.1:8081/", "weir": "http://127.0.0.1:8088/"},
    "ws": {"nginx": "ws://127.0.0.1:8092/", "haproxy": "ws://127.0.0.1:8091/", "weir": "ws://127.0.0.1:8098/"},
}
OFFSET = int(os.environ.get("PORT_OFFSET", "0"))


def shift(v):
    """A port (or the ports in a URL or config text) moved by PORT_OFFSET."""
    if isinstance(v, int):
        return v + OFFSET
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m.group(1)) + OFFSET}", v)


PORTS = {k: [shift(p) for p in v] for k, v in PORTS.items()}
URLS = {part: {k: shift(v) for k, v in d.items()} for part, d in URLS.items()}
NAMES = {"direct": "direct", "nginx": "nginx", "haproxy": "HAProxy", "weir": "weir",
         "hyper floor": "hyper floor", "httparse floor": "httparse floor", "h2c floor": "hyper floor"}
# Each floor proxy (host/benches/floor.rs): its kind on the floor's command line, its part.
FLOORS = {"hyper floor": ("hyper", "h1"), "httparse floor": ("httparse", "h1"), "h2c floor": ("hyper-h2c", "h2c")}
if not FLOOR:
    for _f, (_kind, _part) in FLOORS.items():
        URLS[_part].pop(_f)
        PORTS.pop(_f)
TOOLS = {"h1": ["wrk"], "h2c": ["h2load"], "https": ["wrk"], "handshakes": ["openssl"],
         "l4": ["curl", "iperf3"], "p99": [OHA], "ws": [], "burst": ["wrk"],
         "perf": ["perf", "wrk"]}


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- processes


class Started:
    """Every process this script started, stopped on exit (each by its process group,
    which it leads: nginx's master takes its workers along)."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, cpu_prefix, logname=None):
        out = open(os.path.join(OUT, "logs", (logname or name) + ".log"), "ab")
        libc = ctypes.CDLL(None, use_errno=True)

        def child():
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with this script

        p = subprocess.Popen(cpu_prefix + argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=child, cwd=OUT)
        self.procs.append((name, p))
        return p

    def stop(self, p):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def stop_all(self):
        for _, p in reversed(self.procs):
            self.stop(p)
        self.procs.clear()


def rss_kb(pl):
    t = 0
    for pid in pl:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                t += int(line.split()[1])
    return t


def out_segs():
    lines = [ln.split() for ln in open("/proc/net/snmp") if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def machine_ticks():
    f = list(map(int, open("/proc/stat").readline().split()[1:]))
    return f[0] + f[1] + f[2] + f[5] + f[6]  # user nice system irq softirq


def child_ticks():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * HZ


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def wait_port(port, p, name, timeout=20):
    t = time.time() + timeout
    while time.time() < t:
        if p.poll() is not None:
            raise SystemExit(f"{name} exited ({p.returncode}) before listening on {port}: see {OUT}/logs/{name}.log:\n"
                             + open(f"{OUT}/logs/{name}.log", errors="replace").read()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} is not listening on {port} after {timeout} s")


def check_ports():
    busy = []
    for owner, ports in PORTS.items():
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{port} ({owner})")
            finally:
                s.close()
    if busy:
        ss = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        raise SystemExit("ports in use: " + ", ".join(busy) + " (stop what holds them, or set PORT_OFFSET)\n" + ss)


# ---------------------------------------------------------------- tools


def ms(v, unit):
    v = float(v)
    return {"us": v / 1000, "ms": v, "s": v * 1000}[unit]


def wrk(url, secs):
    out = subprocess.run(GEN + ["wrk", "-t1", "-c64", f"-d{secs}s", "--latency", url],
                         capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError("wrk: " + out[-500:])
    r = {"n": int(m.group(1)), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for q in ("50", "99"):
        m = re.search(rf"\s{q}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        r["p" + q] = ms(*m.groups()) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["bad"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["bad"] += sum(map(int, m.groups())) if m else 0
    return r


def h2load(url, secs):
    out = subprocess.run(GEN + ["h2load", "-t1", "-c16", "-m16", "-D", str(secs), "--warm-up-time=1", url],
                         capture_output=True, text=True).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not m:
        raise RuntimeError("h2load: " + out[-500:])
    r = {"n": int(m.group(1)), "rps": float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))}
    r["bad"] = int(m.group(1)) - int(m.group(2))
    return r


def measure(proxy, fn):
    """Runs fn() (which returns at least n, the requests made) and adds the proxy's CPU per
    request, user and system, the TCP segments sent per request and the CPU share of
    processes other than the bench's (the machine's load)."""
    pl = pids(proxy) if proxy else []
    c0, s0, m0, k0, w0 = cpu(pl), out_segs(), machine_ticks(), child_ticks(), time.time()
    e0 = run_ns(pl)
    ours0 = sum(cpu(pids(ORIGIN)))
    r = fn()
    e1 = run_ns(pl)
    c1, s1, m1, k1, el = cpu(pl), out_segs(), machine_ticks(), child_ticks(), time.time() - w0
    ours = (sum(c1) - sum(c0)) + (sum(cpu(pids(ORIGIN))) - ours0) + (k1 - k0)
    n = max(r["n"], 1)
    # The total is the scheduler's exact run time; the clock ticks only split it into user
    # and system (a 1 GiB download is 30 ticks, so a tick would be 3 % of its total).
    r["cpu_us"] = (e1 - e0) / 1e3 / n
    ticks = (c1[0] - c0[0]) + (c1[1] - c0[1])
    user_share = (c1[0] - c0[0]) / ticks if ticks else 0.0
    r["user_us"] = r["cpu_us"] * user_share
    r["sys_us"] = r["cpu_us"] - r["user_us"]
    r["proxy_pct"] = 100 * (e1 - e0) / 1e9 / el
    r["segs"] = (s1 - s0) / n
    r["other_pct"] = 100 * max(0, (m1 - m0) - ours) / HZ / el
    return r


def strace_pass(name, proxy, url):
    """syscalls per request: the proxy under `strace -c -f` for STRACE_SECS of wrk."""
    f = os.path.join(OUT, "logs", f"strace-{name}.txt")
    argv = ["strace", "-c", "-f", "-o", f] + sum((["-p", str(p)] for p in pids(proxy)), [])
    s = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    r = wrk(url, STRACE_SECS)
    s.send_signal(signal.SIGINT)
    s.wait(30)
    calls = {}
    for line in open(f):
        t = line.split()
        if len(t) >= 5 and re.match(r"^[\d.]+$", t[0]) and t[-1] != "total":
            calls[t[-1]] = int(t[3])
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return {"per_req": total / max(r["n"], 1), "n": r["n"],
            "top": ", ".join(f"{k} {v / max(r['n'], 1):.2f}" for k, v in top)}


PERF_EVENTS = "task-clock,context-switches,cpu-migrations,page-faults"
# Kernel paths in the call graph, inclusive (a sample counts in every row whose function is
# on its call chain, so rows overlap: indented rows are inside the row above); the names
# are those of Debian 12's kernel (6.1), checked in the perf reports of a run.
KERNEL_PATHS = [
    ("syscalls, all (do_syscall_64)", ["do_syscall_64"]),
    ("send: writev, sendto (do_writev, __sys_sendto)", ["do_writev", "__sys_sendto", "ksys_write"]),
    ("  tcp_sendmsg", ["tcp_sendmsg"]),
    ("    loopback delivery to the peer's socket, in the sender's softirq (tcp_v4_rcv)", ["tcp_v4_rcv"]),
    ("      waking the peer's reader (sock_def_readable)", ["sock_def_readable"]),
    ("receive: recvfrom, read (__x64_sys_recvfrom, ksys_read)", ["__x64_sys_recvfrom", "ksys_read"]),
    ("  tcp_recvmsg", ["tcp_recvmsg"]),
    ("epoll_wait", ["__x64_sys_epoll_wait", "__x64_sys_epoll_pwait"]),
    ("futex", ["__x64_sys_futex"]),
    ("clock_nanosleep", ["__x64_sys_clock_nanosleep"]),
    ("other syscalls (getsockopt, setsockopt, accept4, epoll_ctl, brk)",
     ["__x64_sys_getsockopt", "__x64_sys_setsockopt", "__x64_sys_accept4", "__x64_sys_epoll_ctl", "__x64_sys_brk"]),
    ("__schedule (switches, in any path)", ["__schedule"]),
    ("interrupts, timers (asm_sysvec_*, asm_common_interrupt)",
     ["asm_sysvec_apic_timer_interrupt", "asm_sysvec_call_function_single", "asm_sysvec_reschedule_ipi",
      "asm_common_interrupt"]),
    ("page faults (asm_exc_page_fault)", ["asm_exc_page_fault"]),
]
# Kernel functions by their self time. cpu-clock samples come from a timer interrupt, so
# time spent with interrupts off (a wake-up under the runqueue and waitqueue locks, the
# IPI to an idle CPU) is charged where they are turned back on.
KERNEL_SELF = ["_raw_spin_unlock_irqrestore"]
# User-space self time by what the function belongs to (first match wins); `dso` is the
# object perf names (the weir binary, libc.so.6, [unknown] for JIT code).
USER_GROUPS = [
    ("malloc, free, realloc", re.compile(r"^(__libc_)?(malloc|free|realloc|calloc|cfree)$|^_int_(malloc|free|realloc)|"
                                         r"^malloc_consolidate|^tcache|^unlink_chunk|^__rust_(alloc|dealloc|realloc)|"
                                         r"^alloc::alloc::|^mi_|^_mi_")),
    ("memcpy, memmove, memset", re.compile(r"mem(cpy|move|set|cmp)|^__memcpy|^__memmove|^__memset")),
    ("hyper", re.compile(r"^<?hyper(_util)?::|<hyper(_util)?::")),
    ("tokio, mio", re.compile(r"^<?(tokio|mio)::|<(tokio|mio)::")),
    ("http, httparse, bytes", re.compile(r"^<?(http|httparse|bytes|h2|http_body(_util)?)::|<(http|httparse|bytes|h2)::")),
    ("weir (or the floor's own code)", re.compile(r"^<?weir::|<weir::|^floor::|<floor::")),
    ("wasmtime (and the plugin's JIT code)", re.compile(r"wasmtime|cranelift")),
    ("libc: syscall wrappers, vDSO clock, pthread",
     re.compile(r"^__?(libc|GI|pthread|sendto|recvfrom|writev|epoll|futex|clock|vdso)|^(writev|recv|recvfrom|sendto|send|"
                r"read|write|epoll_wait|syscall)$|^__vdso_")),
]


def classify_user(dso, sym):
    for g, rx in USER_GROUPS:
        if rx.search(sym):
            return g
    if dso.startswith("[unknown]") or dso.startswith("[JIT]") or dso.startswith("perf-"):
        return "wasmtime (and the plugin's JIT code)"
    return "the proxy's own code, other"


def cpu_idle_ticks(cpu):
    for line in open("/proc/stat"):
        if line.startswith(f"cpu{cpu} "):
            f = line.split()
            return int(f[4]) + int(f[5])  # idle + iowait
    return 0


def perf_stat_pass(name, proxy, url):
    """perf stat of the proxy's processes (all threads) while wrk runs PERF_SECS: per request."""
    f = os.path.join(OUT, "logs", f"perf-stat-{name.replace(' ', '-')}.csv")
    p = subprocess.Popen(["perf", "stat", "-x", ",", "-e", PERF_EVENTS, "-o", f, "-p", ",".join(map(str, pids(proxy)))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    pl, ol = pids(proxy), pids(ORIGIN)
    i0, idle0, t0 = ipis(), cpu_idle_ticks(0), time.time()
    z0 = (sleeps(pl), sleeps(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw)
    r = measure(proxy, lambda: wrk(url, PERF_SECS))
    z1 = (sleeps(pl), sleeps(ol), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw)
    i1, idle1, el = ipis(), cpu_idle_ticks(0), time.time() - t0
    p.send_signal(signal.SIGINT)
    p.wait(30)
    n = max(r["n"], 1)
    r["ipi0"] = (i1.get(0, 0) - i0.get(0, 0)) / n
    r["ipi1"] = (i1.get(1, 0) - i0.get(1, 0)) / n
    r["idle0"] = 100 * (idle1 - idle0) / HZ / el
    r["sleeps"] = [(b - a) / n for a, b in zip(z0, z1)]  # proxy, origin, wrk (a waited-for child)
    for line in open(f):
        t = line.strip().split(",")
        if len(t) >= 3 and re.match(r"^[\d.]+$", t[0]):
            v = float(t[0])
            r[t[2].split(":")[0]] = v / n * (1000 if t[2].startswith("task-clock") else 1)  # msec -> µs
    return r


def perf_record_pass(name, proxy, url):
    """perf record -g (cpu-clock, user and kernel) of the proxy while wrk runs PERF_SECS; the
    kernel paths (inclusive) and user-space groups (self) in µs per request."""
    f = os.path.join(OUT, "logs", f"perf-{name.replace(' ', '-')}.data")
    p = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o", f, "-p", ",".join(map(str, pids(proxy)))],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = measure(proxy, lambda: wrk(url, PERF_SECS))
    p.send_signal(signal.SIGINT)
    p.wait(60)
    rep_ = subprocess.run(["perf", "report", "-i", f, "--stdio", "--children", "--sort", "dso,sym", "-g", "none",
                           "--percent-limit", "0"], capture_output=True, text=True).stdout
    open(f[:-5] + ".txt", "w").write(rep_)
    children, selfs, user_self, kernel_self = {}, {}, {}, 0.0
    top_user, top_kernel = [], []
    for line in rep_.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+([\d.]+)%\s+(.+?)\s+\[(.)\]\s+(.*?)\s*$", line)
        if not m:
            continue
        ch, se, dso, where, sym = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4), m.group(5)
        sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
        if where == "k":
            kernel_self += se
            children[sym] = children.get(sym, 0.0) + ch
            selfs[sym] = selfs.get(sym, 0.0) + se
            if se > 0:
                top_kernel.append((se, sym))
        else:
            group = classify_user(dso, sym)
            user_self[group] = user_self.get(group, 0.0) + se
            if se > 0:
                top_user.append((se, sym))
    us = r["cpu_us"] / 100  # µs per request per percent of the samples
    r["kernel_pct"] = kernel_self
    r["paths"] = {label: us * sum(children.get(s, 0.0) for s in syms) for label, syms in KERNEL_PATHS}
    r["kself"] = {sym: us * selfs.get(sym, 0.0) for sym in KERNEL_SELF}
    r["user"] = {g: us * v for g, v in user_self.items()}
    r["top_user"] = [(us * se, sym) for se, sym in sorted(top_user, reverse=True)[:12]]
    r["top_kernel"] = [(us * se, sym) for se, sym in sorted(top_kernel, reverse=True)[:12]]
    return r


def s_time(port, mode, secs):
    out = subprocess.run(GEN + ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-time", str(secs)] + mode.split(),
                         capture_output=True, text=True)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if re.search(r"connections in [\d.]+s", ln)]
    if not lines:
        raise RuntimeError("openssl s_time: " + (out.stdout + out.stderr)[-500:])
    return {"n": int(lines[-1].split()[0])}


def resume13(port, secs):
    """Resumed TLS 1.3 handshakes, one at a time, each with one request answered by the
    proxy itself: the connections the proxy resumed (any it did not is an error)."""
    out = subprocess.run(GEN + [PY, os.path.join(HERE, "../tls-handshakes/resume13.py"), "127.0.0.1", str(port),
                                str(secs), "resume", "/tls-resume"], capture_output=True, text=True)
    m = re.match(r"^(\d+) resumed, 0 not resumed", out.stdout)
    if out.returncode or not m:
        raise RuntimeError("resume13.py: " + (out.stdout + out.stderr)[-500:])
    return {"n": int(m.group(1))}


HANDSHAKE_MODES = ("-new -tls1_3", "-resume -tls1_3", "-new -tls1_2", "-reuse -tls1_2")
HANDSHAKE_LABELS = ("TLS 1.3 full", "TLS 1.3 resumed", "TLS 1.2 full", "TLS 1.2 resumed")


def curl_big(port):
    out = subprocess.run(GEN + ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
                                f"http://127.0.0.1:{port}/big"], capture_output=True, text=True).stdout.split()
    speed, size = float(out[0]), int(out[1])
    if size != 1 << 30:
        raise RuntimeError(f"curl through :{port} got {size} bytes, not 1 GiB")
    return {"n": 1, "gbps": speed * 8 / 1e9, "bytes": size}


def iperf(port, secs):
    out = subprocess.run(GEN + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J"],
                         capture_output=True, text=True).stdout
    j = json.loads(out)
    if "error" in j:
        raise RuntimeError("iperf3: " + j["error"])
    s = j["end"]["sum_received"]
    return {"n": 1, "gbps": s["bits_per_second"] / 1e9, "bytes": s["bytes"]}


def oha(url, secs):
    out = subprocess.run(GEN + [OHA, "-z", f"{secs}s", "-c", "64", "-q", str(RATE), "--latency-correction",
                                "--no-tui", "--output-format", "json", url], capture_output=True, text=True)
    try:
        j = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError("oha: " + (out.stdout + out.stderr)[-500:]) from None
    s, p = j["summary"], j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    n = sum(codes.values())
    return {"n": n, "rps": s["requestsPerSec"], "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3,
            "p999": p["p99.9"] * 1e3, "bad": n - codes.get("200", 0) + sum(j.get("errorDistribution", {}).values())}


def ws_part(proxies):
    res = {}
    for name in ("haproxy", "nginx", "weir"):
        pl = pids(proxies[name])
        r0 = rss_kb(pl)
        c = subprocess.Popen(GEN + [PY, os.path.join(HERE, "ws_idle.py"), URLS["ws"][name], str(WS_CONNS), "4"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = c.stdout.readline()
        if not first.startswith("OPEN"):
            rest = c.stdout.read()
            c.wait()
            log(f"ws {name}: the client failed: {(first + rest)[-800:]}")
            res[name] = None
            continue
        time.sleep(2)
        r1 = rss_kb(pids(proxies[name]))
        c.wait(120)
        res[name] = {"before_kb": r0, "after_kb": r1, "per_conn": (r1 - r0) * 1024 / WS_CONNS,
                     "open_s": float(first.split()[3].rstrip("s"))}
        log(f"ws {name}: {first.strip()} RSS {r0} kB -> {r1} kB: {res[name]['per_conn']:.0f} B per connection")
        time.sleep(3)
    return res


def burst_part(proxies):
    """Each proxy's RSS before, at the peak of and 3 s after BURST_ROUNDS rounds of
    BURST_CONNS concurrent keep-alive connections (wrk), one proxy after another."""
    res = {}
    for name in ("haproxy", "nginx", "weir"):
        pl = pids(proxies[name])
        r0 = rss_kb(pl)
        peak = r0
        for _ in range(BURST_ROUNDS):
            w = subprocess.Popen(GEN + ["wrk", "-t1", f"-c{BURST_CONNS}", "-d3s", URLS["h1"][name]],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while w.poll() is None:
                peak = max(peak, rss_kb(pids(proxies[name])))
                time.sleep(0.1)
            out = w.stdout.read()
            if "requests in" not in out:
                raise RuntimeError(f"wrk through {name}: " + out[-500:])
        time.sleep(3)
        r1 = rss_kb(pids(proxies[name]))
        res[name] = {"before_kb": r0, "peak_kb": peak, "after_kb": r1, "ratio": r1 / r0 if r0 else None}
        log(f"burst {name}: RSS {r0} kB, peak {peak} kB, 3 s after {r1} kB ({res[name]['ratio']:.2f} x before)")
    return res


# ---------------------------------------------------------------- the run


def missing_tools():
    miss = {}
    for part in PARTS:
        need = TOOLS.get(part)
        if need is None:
            raise SystemExit(f"unknown part {part!r}; parts: {','.join(ALL_PARTS + EXTRA_PARTS)}")
        gone = [t for t in need if not (os.path.exists(t) if "/" in t else shutil.which(t))]
        if part == "ws":
            ok = subprocess.run([PY, "-c", "import websockets"], capture_output=True).returncode == 0
            gone += [] if ok else ["python3-websockets"]
        if part == "h1" and not shutil.which("strace"):
            log("strace is missing: the h1 part runs without syscalls per request")
        if gone:
            miss[part] = gone
    return miss


def setup():
    os.makedirs(os.path.join(OUT, "run"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "www"), exist_ok=True)
    cache = os.path.join(ROOT, "target/peers/weir-cache")
    os.makedirs(cache, exist_ok=True)
    for f in os.listdir(os.path.join(HERE, "conf")):
        s = shift(open(os.path.join(HERE, "conf", f)).read().replace("@P@", OUT).replace("@CACHE@", cache))
        open(os.path.join(OUT, "run", f), "w").write(s)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", f"{OUT}/site.key", "-out", f"{OUT}/site.pem"], check=True, capture_output=True)
    open(f"{OUT}/site-haproxy.pem", "w").write(open(f"{OUT}/site.pem").read() + open(f"{OUT}/site.key").read())
    big = os.path.join(OUT, "www", "big")
    with open(big, "wb") as f:  # sparse: no GiB written to the disk
        f.truncate(1 << 30)
    # nginx's workers are not root: they must reach the file.
    for d in (OUT, os.path.join(OUT, "www")):
        os.chmod(d, 0o755)
    os.chmod(big, 0o644)
    p = os.path.dirname(OUT)
    while p.startswith(ROOT) and p != ROOT:
        os.chmod(p, os.stat(p).st_mode | 0o005)
        p = os.path.dirname(p)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def version(argv, pattern):
    out = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "?"


def fmt(v, spec=",.0f"):
    return "" if v is None else format(v, spec)


def num(v):
    return "" if v is None else format(v, ",.0f" if abs(v) >= 100 else ".2f")


def med(rs, k):
    xs = [r[k] for r in rs if r is not None and r.get(k) is not None]
    return st.median(xs) if xs else None


def main():
    global ORIGIN
    miss = missing_tools()
    for part, gone in miss.items():
        log(f"part {part} skipped: {', '.join(gone)} missing")
    parts = [p for p in PARTS if p not in miss]
    if not os.access(WEIR, os.X_OK):
        raise SystemExit(f"no weir binary at {WEIR} (cargo build --release, or WEIR=...)")
    check_ports()
    setup()
    S = Started()

    def on_signal(sig, _frame):
        raise SystemExit(f"stopped by signal {sig}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    results = {"parts": parts, "skipped": miss}
    try:
        run = os.path.join(OUT, "run")
        ORIGIN = S.start("origin", ["nginx", "-c", f"{run}/origin.conf", "-p", f"{run}/"], GEN)
        proxies = {
            "nginx": S.start("nginx", ["nginx", "-c", f"{run}/nginx.conf", "-p", f"{run}/"], PROXY_CPU),
            "haproxy": S.start("haproxy", ["haproxy", "-f", f"{run}/haproxy.cfg"], PROXY_CPU),
            "weir": S.start("weir", [WEIR, "run", "--config", f"{run}/weir.toml"], PROXY_CPU),
        }
        for name, (kind, _) in FLOORS.items() if FLOOR else ():  # behind weir: the same origin ports, the same CPU
            argv = [FLOOR, kind, "--listen", f"127.0.0.1:{PORTS[name][0]}",
                    "--upstream", f"127.0.0.1:{shift(9001)},127.0.0.1:{shift(9002)}"] + os.environ.get("FLOOR_ARGS", "").split()
            proxies[name] = S.start(name, argv, PROXY_CPU, name.replace(" ", "-"))
        servers = {"origin": ORIGIN, **proxies}
        if "l4" in parts:
            servers["iperf3"] = S.start("iperf3", ["iperf3", "-s", "-p", str(shift(5201))], GEN)
        if "ws" in parts:
            servers["ws echo"] = S.start("ws echo", [PY, os.path.join(HERE, "ws_echo.py"), str(shift(9010))], GEN, "ws-echo")
        for owner, proc in servers.items():
            for port in PORTS[owner]:
                wait_port(port, proc, owner.replace(" ", "-"))
        for name, p in proxies.items():
            aff = subprocess.run(["taskset", "-pc", str(p.pid)], capture_output=True, text=True).stdout.split()[-1]
            log(f"{name} pid {p.pid} on CPU {aff}")
        results["meta"] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                     text=True).stdout.strip(),
            "load_start": loadavg(), "rounds": ROUNDS, "duration": DUR,
            "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
            "haproxy": version(["haproxy", "-v"], r"version (\S+)"),
            "cpus": os.cpu_count(),
        }
        log(f"# {results['meta']}")
        R = {}  # key -> list of per-round results

        def add(key, r):
            R.setdefault(key, []).append(r)

        # warm-up: 2 s of each HTTP target (connections to the origin, code paths, caches)
        for part in ("h1", "h2c", "https"):
            if part in parts:
                for name, url in URLS[part].items():
                    (wrk if part != "h2c" else h2load)(url, 2)
        if "l4" in parts:  # the file into the page cache (it is sparse: no disk read either way)
            curl_big(URLS["l4-curl"]["direct"])
        for rnd in range(ROUNDS):
            log(f"## round {rnd + 1} of {ROUNDS}, load {loadavg()}")
            for part in ("h1", "h2c", "https"):
                if part not in parts:
                    continue
                for name, url in URLS[part].items():
                    tool = h2load if part == "h2c" else wrk
                    r = measure(proxies.get(name), lambda: tool(url, DUR))
                    add((part, name), r)
                    log(f"r{rnd + 1} {part:5s} {name:8s} {r['rps']:9.0f} req/s  CPU {r['cpu_us']:5.1f} µs/req "
                        f"(user {r['user_us']:.1f}, system {r['sys_us']:.1f}; proxy at {r['proxy_pct']:.0f} %)  "
                        f"{r['segs']:.2f} segments/req  errors {r['bad']}  other CPU {r['other_pct']:.0f} %")
            if "handshakes" in parts:
                for mode in HANDSHAKE_MODES:
                    for name, port in URLS["handshakes"].items():
                        if mode == "-resume -tls1_3":
                            r = measure(proxies[name], lambda: resume13(port, DUR))
                        else:
                            r = measure(proxies[name], lambda: s_time(port, mode, DUR))
                        r["per_s"] = 1e6 / r["cpu_us"] if r["cpu_us"] else None
                        add(("handshakes " + mode, name), r)
                        log(f"r{rnd + 1} handshakes {mode:15s} {name:8s} {r['n']:6d} in {DUR} s, "
                            f"{r['cpu_us']:6.1f} µs CPU each: {fmt(r['per_s'])} /s of one core")
            if "l4" in parts:
                for name, port in URLS["l4-curl"].items():
                    r = measure(proxies.get(name), lambda: curl_big(port))
                    r["cpu_s_gib"] = r["cpu_us"] / 1e6 * (1 << 30) / r["bytes"]
                    add(("l4 curl", name), r)
                    log(f"r{rnd + 1} l4 curl 1 GiB {name:8s} {r['gbps']:.2f} Gbit/s  proxy CPU {r['cpu_s_gib']:.2f} s/GiB")
                for name, port in URLS["l4-iperf"].items():
                    r = measure(proxies.get(name), lambda: iperf(port, DUR))
                    r["cpu_s_gib"] = r["cpu_us"] / 1e6 * (1 << 30) / r["bytes"]
                    add(("l4 iperf3", name), r)
                    log(f"r{rnd + 1} l4 iperf3 {name:8s} {r['gbps']:.2f} Gbit/s  proxy CPU {r['cpu_s_gib']:.2f} s/GiB")
            if "p99" in parts:
                for name, url in URLS["p99"].items():
                    r = measure(proxies.get(name), lambda: oha(url, DUR))
                    add(("p99", name), r)
                    log(f"r{rnd + 1} p99 {name:8s} {r['rps']:7.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
                        f"p99.9 {r['p999']:.3f} ms  not 200: {r['bad']}  CPU {r['cpu_us']:.1f} µs/req")
        if "h1" in parts and shutil.which("strace"):
            for name in [n for n in URLS["h1"] if n != "direct"]:
                r = strace_pass(name, proxies[name], URLS["h1"][name])
                add(("strace", name), r)
                log(f"strace {name}: {r['per_req']:.2f} syscalls per request ({r['n']} requests): {r['top']}")
        if "perf" in parts:
            for name in [n for n in URLS["h1"] if n != "direct"]:
                r = perf_stat_pass(name, proxies[name], URLS["h1"][name])
                add(("perf stat", name), r)
                log(f"perf stat {name}: {r.get('task-clock', 0):.1f} µs task-clock, "
                    f"{r.get('context-switches', 0):.3f} switches, {r.get('cpu-migrations', 0):.4f} migrations, "
                    f"{r.get('page-faults', 0):.4f} page faults per request ({r['n']} requests)")
            for name in [n for n in URLS["h1"] if n != "direct"]:
                r = perf_record_pass(name, proxies[name], URLS["h1"][name])
                add(("perf record", name), r)
                log(f"perf record {name}: {r['cpu_us']:.1f} µs per request, {r['kernel_pct']:.0f} % of samples in the kernel")
        if "ws" in parts:
            for name, r in ws_part(proxies).items():
                add(("ws", name), r)
        if "burst" in parts:
            for name, r in burst_part(proxies).items():
                add(("burst", name), r)
        results["meta"]["load_end"] = loadavg()
        for name, p in proxies.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited during the run ({p.returncode}): see {OUT}/logs/{name}.log")
        results["runs"] = {" ".join(k): v for k, v in R.items()}
        json.dump(results, open(os.path.join(OUT, "results.json"), "w"), indent=1)
        md = table(results["meta"], parts, miss, R)
        open(os.path.join(OUT, "peers.md"), "w").write(md)
        log("\n" + md)
        log(f"written: {OUT}/peers.md, {OUT}/results.json; logs in {OUT}/logs")
    finally:
        S.stop_all()
        big = os.path.join(OUT, "www", "big")
        if os.path.exists(big):
            os.remove(big)


# ---------------------------------------------------------------- the tables


def table(meta, parts, miss, R):
    L = []
    w = L.append
    w(f"{meta['date']}, weir {meta['commit']}, nginx {meta['nginx']}, HAProxy {meta['haproxy']}, "
      f"{meta['cpus']} CPUs; load average {meta['load_start']} at the start, {meta['load_end']} at the end; "
      f"medians of {meta['rounds']} interleaved rounds of {meta['duration']} s.")
    w("")
    for part, gone in miss.items():
        w(f"Part `{part}` not run: {', '.join(gone)} missing.")
        w("")
    targets = []  # (issue, what, weir, peer, ratio, needed, met)

    def target(issue, what, a, b, need, higher_better):
        if a is None or b is None or b == 0:
            targets.append((issue, what, a, b, None, need, "not measured"))
            return
        ratio = a / b
        ok = ratio >= need if higher_better else ratio <= need
        targets.append((issue, what, a, b, ratio, ("≥ " if higher_better else "≤ ") + f"{need:g}", "met" if ok else "**not met**"))

    def m(key, name, k):
        return med(R.get((key, name), []), k)

    if "h1" in parts:
        base = m("h1", "direct", "rps")
        w("HTTP/1.1 keep-alive (`wrk -t1 -c64`), `GET /` answered `200 ok` by the origin:")
        w("")
        w("| | req/s (÷ direct) | CPU µs / request | ÷ nginx | user | system | syscalls / request | TCP segments / request | p99 ms (wrk) | other CPU % |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        ng = m("h1", "nginx", "cpu_us")
        for name in URLS["h1"]:
            rps = m("h1", name, "rps")
            sc = m("strace", name, "per_req")
            proxy = name != "direct"
            c = m("h1", name, "cpu_us")
            w(f"| {NAMES[name]} | {fmt(rps)} ({rps / base:.2f}) | {fmt(c, '.1f') if proxy else ''} | "
              f"{fmt(c / ng, '.2f') if proxy and c and ng else ''} | "
              f"{fmt(m('h1', name, 'user_us'), '.1f') if proxy else ''} | {fmt(m('h1', name, 'sys_us'), '.1f') if proxy else ''} | "
              f"{fmt(sc, '.2f')} | {fmt(m('h1', name, 'segs'), '.2f')} | {fmt(m('h1', name, 'p99'), '.2f')} | "
              f"{fmt(m('h1', name, 'other_pct'))} |")
        w("")
        for name in [n for n in URLS["h1"] if n != "direct"]:
            if R.get(("strace", name)):
                w(f"- {NAMES[name]}, syscalls per request (`strace -c -f`, {STRACE_SECS} s of wrk): "
                  f"{R[('strace', name)][0]['top']}")
        w("")
        bad = {NAMES[n]: sum(r["bad"] for r in R.get(("h1", n), [])) for n in URLS["h1"]}
        w("Errors and non-2xx answers over all rounds (wrk): " + ", ".join(f"{k} {v}" for k, v in bad.items()) + ".")
        w("")
        target(16, "h1 CPU per request, weir ÷ nginx", m("h1", "weir", "cpu_us"), m("h1", "nginx", "cpu_us"), 0.8, False)
        target(16, "h1 requests/s, weir ÷ nginx", m("h1", "weir", "rps"), m("h1", "nginx", "rps"), 1.0, True)
    if "perf" in parts:
        names = [n for n in URLS["h1"] if n != "direct" and R.get(("perf stat", n))]
        w(f"`perf stat -e {PERF_EVENTS}` of each proxy (all its processes and threads) under the h1 load "
          f"(`wrk -t1 -c64 -d{PERF_SECS}s`), per request:")
        w("")
        w("| | req/s | task-clock µs | user µs | system µs | context switches | CPU migrations | page faults "
          "| IPIs to CPU 0 (wrk, origin) | IPIs to CPU 1 (the proxy) | CPU 0 idle % | sleeps: proxy | origin | wrk |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            r = R[("perf stat", n)][0]
            w(f"| {NAMES[n]} | {fmt(r['rps'])} | {fmt(r.get('task-clock'), '.1f')} | {r['user_us']:.1f} | {r['sys_us']:.1f} | "
              f"{fmt(r.get('context-switches'), '.3f')} | {fmt(r.get('cpu-migrations'), '.4f')} | {fmt(r.get('page-faults'), '.4f')} | "
              f"{r['ipi0']:.3f} | {r['ipi1']:.3f} | {r['idle0']:.0f} | " + " | ".join(f"{x:.3f}" for x in r["sleeps"]) + " |")
        w("")
        w("IPIs: rescheduling + function-call interrupts per request (/proc/interrupts RES + CAL, the whole machine's); "
          "CPU 0 idle: /proc/stat over the pass; sleeps: voluntary context switches per request "
          "(/proc/PID/task/*/status of the proxy and the origin; wrk's from getrusage of this script's children).")
        w("")
        names = [n for n in URLS["h1"] if n != "direct" and R.get(("perf record", n))]
        if names:
            P = {n: R[("perf record", n)][0] for n in names}
            w(f"`perf record -e cpu-clock -g` of each proxy under the same load ({PERF_SECS} s): µs per request "
              "(the pass's CPU per request × the share of samples). Kernel paths are inclusive (a sample counts "
              "in every row on its call chain, so rows overlap; indented rows are inside the row above):")
            w("")
            w("| kernel, µs / request | " + " | ".join(NAMES[n] for n in names) + " |")
            w("|---" * (len(names) + 1) + "|")
            w("| CPU per request in this pass (user + system) | " + " | ".join(f"{P[n]['cpu_us']:.1f}" for n in names) + " |")
            w("| all kernel samples (self) | " + " | ".join(f"{P[n]['cpu_us'] * P[n]['kernel_pct'] / 100:.1f}" for n in names) + " |")
            for label, _ in KERNEL_PATHS:
                w(f"| {label.replace('  ', '&nbsp;&nbsp;')} | " + " | ".join(f"{P[n]['paths'][label]:.2f}" for n in names) + " |")
            for sym in KERNEL_SELF:
                w(f"| {sym}, self (interrupts-off time: wake-ups, IPIs) | "
                  + " | ".join(f"{P[n]['kself'][sym]:.2f}" for n in names) + " |")
            w("")
            w("| user space (self time by owner), µs / request | " + " | ".join(NAMES[n] for n in names) + " |")
            w("|---" * (len(names) + 1) + "|")
            for g in [g for g, _ in USER_GROUPS] + ["the proxy's own code, other"]:
                w(f"| {g} | " + " | ".join(f"{P[n]['user'].get(g, 0.0):.2f}" for n in names) + " |")
            w("")
            for n in names:
                w(f"- {NAMES[n]}, top kernel functions (self µs / request): "
                  + ", ".join(f"{sym} {v:.2f}" for v, sym in P[n]["top_kernel"][:8]))
                w(f"- {NAMES[n]}, top user functions (self µs / request): "
                  + ", ".join(f"`{sym[:70]}` {v:.2f}" for v, sym in P[n]["top_user"][:8]))
            w("")
    if "h2c" in parts:
        base = m("h2c", "direct", "rps")
        w("h2c (`h2load -t1 -c16 -m16`; HTTP/1.1 with keep-alive to the origin):")
        w("")
        w("| | req/s (÷ direct) | CPU µs / request | user | system | other CPU % |")
        w("|---|---|---|---|---|---|")
        for name in URLS["h2c"]:
            rps = m("h2c", name, "rps")
            proxy = name != "direct"
            w(f"| {NAMES[name]} | {fmt(rps)} ({rps / base:.2f}) | {fmt(m('h2c', name, 'cpu_us'), '.1f') if proxy else ''} | "
              f"{fmt(m('h2c', name, 'user_us'), '.1f') if proxy else ''} | {fmt(m('h2c', name, 'sys_us'), '.1f') if proxy else ''} | "
              f"{fmt(m('h2c', name, 'other_pct'))} |")
        w("")
        target(13, "h2c CPU per request, weir ÷ HAProxy", m("h2c", "weir", "cpu_us"), m("h2c", "haproxy", "cpu_us"), 0.8, False)
    if "https" in parts:
        w("HTTPS, HTTP/1.1 keep-alive (`wrk -t1 -c64`, TLS 1.3, ECDSA P-256; cleartext kept connections to the origin):")
        w("")
        w("| | req/s | CPU µs / request | user | system | other CPU % |")
        w("|---|---|---|---|---|---|")
        for name in URLS["https"]:
            w(f"| {NAMES[name]} | {fmt(m('https', name, 'rps'))} | {fmt(m('https', name, 'cpu_us'), '.1f')} | "
              f"{fmt(m('https', name, 'user_us'), '.1f')} | {fmt(m('https', name, 'sys_us'), '.1f')} | "
              f"{fmt(m('https', name, 'other_pct'))} |")
        w("")
        target(13, "HTTPS requests/s, weir ÷ nginx", m("https", "weir", "rps"), m("https", "nginx", "rps"), 1.0, True)
    if "handshakes" in parts:
        w("TLS handshakes, one at a time (`openssl s_time`, no request; TLS 1.3 resumed: resume13.py, one request "
          "each, answered by the proxy): handshakes per second of one core (10⁶ / the proxy's CPU µs per handshake, "
          "in parentheses):")
        w("")
        w("| | " + " | ".join(HANDSHAKE_LABELS) + " |")
        w("|---|---|---|---|---|")
        for name in URLS["handshakes"]:
            cells = [f"{fmt(m('handshakes ' + x, name, 'per_s'))} ({fmt(m('handshakes ' + x, name, 'cpu_us'), '.0f')})"
                     for x in HANDSHAKE_MODES]
            w(f"| {NAMES[name]} | " + " | ".join(cells) + " |")
        w("")
        for x, label in zip(HANDSHAKE_MODES, HANDSHAKE_LABELS):
            target(13, f"{label} handshakes/s of one core, weir ÷ HAProxy", m("handshakes " + x, "weir", "per_s"),
                   m("handshakes " + x, "haproxy", "per_s"), 1.0, True)
    if "l4" in parts:
        w("L4 (weir `protocol = \"tcp\"`, HAProxy `mode tcp` with splice both ways): curl of a 1 GiB file "
          f"(nginx sendfile) and iperf3 -t {DUR}, one stream; the proxy's CPU seconds per GiB moved:")
        w("")
        w("| | curl 1 GiB, Gbit/s | CPU s / GiB | iperf3, Gbit/s | CPU s / GiB |")
        w("|---|---|---|---|---|")
        for name in URLS["l4-curl"]:
            proxy = name != "direct"
            w(f"| {NAMES[name]} | {fmt(m('l4 curl', name, 'gbps'), '.2f')} | "
              f"{fmt(m('l4 curl', name, 'cpu_s_gib'), '.2f') if proxy else ''} | "
              f"{fmt(m('l4 iperf3', name, 'gbps'), '.2f')} | {fmt(m('l4 iperf3', name, 'cpu_s_gib'), '.2f') if proxy else ''} |")
        w("")
        for k, label in (("l4 curl", "curl 1 GiB"), ("l4 iperf3", "iperf3")):
            target(12, f"L4 {label} throughput, weir ÷ HAProxy", m(k, "weir", "gbps"), m(k, "haproxy", "gbps"), 1.0, True)
            target(12, f"L4 {label} CPU per GiB, weir ÷ HAProxy", m(k, "weir", "cpu_s_gib"), m(k, "haproxy", "cpu_s_gib"),
                   0.9, False)
    if "p99" in parts:
        w(f"Latency at a fixed {RATE:,} req/s (`oha -q {RATE} -z {DUR}s -c 64 --latency-correction`, open loop, "
          "keep-alive):")
        w("")
        w("| | req/s | p50 ms | p99 ms | p99.9 ms | not 200 | CPU µs / request |")
        w("|---|---|---|---|---|---|---|")
        for name in URLS["p99"]:
            w(f"| {NAMES[name]} | {fmt(m('p99', name, 'rps'))} | {fmt(m('p99', name, 'p50'), '.3f')} | "
              f"{fmt(m('p99', name, 'p99'), '.3f')} | {fmt(m('p99', name, 'p999'), '.3f')} | {fmt(m('p99', name, 'bad'))} | "
              f"{fmt(m('p99', name, 'cpu_us'), '.1f') if name != 'direct' else ''} |")
        w("")
        target(16, f"p99 at {RATE:,} req/s, weir ÷ nginx", m("p99", "weir", "p99"), m("p99", "nginx", "p99"), 1.0, False)
    if "ws" in parts:
        w(f"Idle WebSockets: {WS_CONNS:,} opened 500 at a time through each (one echo each), held idle; "
          "the proxy's RSS growth (all its processes) per connection, one pass:")
        w("")
        w("| | RSS before, kB | with the connections, kB | bytes per connection | opened in, s |")
        w("|---|---|---|---|---|")
        for name in ("haproxy", "nginx", "weir"):
            r = (R.get(("ws", name)) or [None])[0]
            if r is None:
                w(f"| {NAMES[name]} | failed, see the log | | | |")
                continue
            w(f"| {NAMES[name]} | {r['before_kb']:,} | {r['after_kb']:,} | {r['per_conn']:,.0f} | {r['open_s']:.1f} |")
        w("")
        ws_w = m("ws", "weir", "per_conn")
        target(16, "idle WebSocket bytes, weir ÷ 4 KiB", ws_w, 4096, 1.0, False)
        target(16, "idle WebSocket bytes, weir ÷ HAProxy", ws_w, m("ws", "haproxy", "per_conn"), 1.0, False)
    if "burst" in parts:
        w(f"Memory after a burst: {BURST_ROUNDS} rounds of {BURST_CONNS:,} concurrent keep-alive connections "
          "(`wrk -t1 -c" + str(BURST_CONNS) + " -d3s`) through each, then 3 s idle; the proxy's RSS (all its processes), "
          "one pass:")
        w("")
        w("| | RSS before, kB | peak, kB | 3 s after, kB | after ÷ before |")
        w("|---|---|---|---|---|")
        for name in ("haproxy", "nginx", "weir"):
            r = (R.get(("burst", name)) or [None])[0]
            if r is None:
                continue
            w(f"| {NAMES[name]} | {r['before_kb']:,} | {r['peak_kb']:,} | {r['after_kb']:,} | {fmt(r['ratio'], '.2f')} |")
        w("")
        target(16, "RSS 3 s after a burst, weir ÷ weir before", m("burst", "weir", "after_kb"),
               m("burst", "weir", "before_kb"), 2.0, False)
    if targets:
        w("Targets (ratios within this run):")
        w("")
        w("| issue | what | weir | peer | ratio | target | |")
        w("|---|---|---|---|---|---|---|")
        for issue, what, a, b, ratio, need, met in targets:
            w(f"| {issue} | {what} | {num(a)} | {num(b)} | {fmt(ratio, '.2f')} | {need} | {met} |")
        w("")
    return "\n".join(L)


ORIGIN = None
if __name__ == "__main__":
    main()
