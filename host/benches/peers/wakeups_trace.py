#!/usr/bin/python3
"""Analysis of wakeups_trace.sh's perf data: OUT NAME TID (the proxy's worker thread).
Per request: the sleeps of every task on CPU 0 (wrk, the origin), the wake-ups of wrk and
the origin made by the proxy's worker and what the worker did just before (the last
recvfrom: on a client socket Rc, an upstream one Ru), the IPIs CPU 0 took by what it ran;
then the runs of the worker's writes to one side (wrk, or the origin: the sockets whose
peer port is the origin's, by ss) before it writes to the other side."""
import sys, re, subprocess, collections, statistics as st
out, name, wpid = sys.argv[1], sys.argv[2], sys.argv[3]
ORIGIN_PORTS = {"9301", "9302", "9001", "9002"}  # wakeups.py's (PORT_OFFSET 300) and run.sh's
up = set(int(m) for m in re.findall(r"fd=(\d+)", "".join(l for l in open(f"{out}/trace-ss-{name}.txt") if l.split()[4].rsplit(":", 1)[1] in ORIGIN_PORTS)))
L = subprocess.run(["perf", "script", "-i", f"{out}/trace-{name}.data"], capture_output=True, text=True).stdout.splitlines()
rx = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")
ev = []
for l in L:
    m = rx.match(l)
    if m: ev.append((m.group(1), int(m.group(2)), int(m.group(3)), float(m.group(4)), m.group(5), m.group(6)))
wrk_pid = next(p for c, p, *_ in ev if c == "wrk")
reqs = sum(1 for c, p, cpu, t, e, a in ev if p == int(wpid) and e.endswith("enter_writev")) / 2
n = collections.Counter()
last_w = {"c": None, "u": None}; lastop = None
gap_wake = {"c": [], "u": []}; gap_nowake = {"c": [], "u": []}
cpu0 = "?"; ipi_while = collections.Counter()
pending = None
for c, p, cpu, t, e, a in ev:
    if e == "sched:sched_switch" and cpu == 0:
        cpu0 = re.search(r"next_comm=(\S+)", a).group(1)
        if re.search(r"prev_state=S", a):
            n["sleep " + c] += 1
    if e.startswith("irq_vectors") and cpu == 0:
        n["IPI0"] += 1; ipi_while[cpu0] += 1
    if p == int(wpid) and e.endswith("enter_writev"):
        fd = int(re.search(r"fd: (0x[0-9a-f]+)", a).group(1), 16)
        side = "u" if fd in up else "c"
        pending = (side, (t - last_w[side]) * 1e6 if last_w[side] else None, lastop)
        last_w[side] = t
    if p == int(wpid) and e.endswith("enter_recvfrom"):
        fd = int(re.search(r"fd: (0x[0-9a-f]+)", a).group(1), 16)
        lastop = "R" + ("u" if fd in up else "c")
    if p == int(wpid) and e.endswith("exit_epoll_wait"):
        lastop = "E"
    if p == int(wpid) and e == "sched:sched_wakeup" and pending:
        who = re.search(r"comm=(\S+)", a).group(1)
        if who in ("wrk", "nginx"):
            n["woke " + who] += 1
            side, gap, lo = pending
            if gap is not None: gap_wake[side].append(gap)
            n[f"woke {who} after {lo}"] += 1
print(name, "requests", reqs, {k: (round(v / reqs, 3)) for k, v in sorted(n.items())})
print(" IPIs to CPU0 by what CPU0 ran:", {k: round(v / reqs, 3) for k, v in ipi_while.most_common(5)})
for s in "cu":
    g = sorted(gap_wake[s])
    if g: print(f" writes to {'wrk' if s == 'c' else 'origin'} that woke it: gap since previous write to that side p10 {g[len(g)//10]:.0f} p50 {g[len(g)//2]:.0f} p90 {g[int(len(g)*.9)]:.0f} µs")
# the worker's writes in order: to an upstream socket (u) or a client one (c)
seq = []
for c, p, cpu, t, e, a in ev:
    if p == int(wpid) and e.endswith("enter_writev"):
        fd = int(re.search(r"fd: (0x[0-9a-f]+)", a).group(1), 16); seq.append(("u" if fd in up else "c", t))
# runs of writes to one side (epoll returns ignored)
ws = [(s, t) for s, t in seq if s in "cu"]
runs = []; cur = [ws[0]]
for x in ws[1:]:
    if x[0] == cur[-1][0]: cur.append(x)
    else: runs.append(cur); cur = [x]
for s in "cu":
    r = [x for x in runs if x[0][0] == s]
    lens = sorted(len(x) for x in r); durs = sorted((x[-1][1] - x[0][1]) * 1e6 for x in r)
    print(f"{name} runs of writes to {'wrk' if s == 'c' else 'origin'}: {len(r)/len(ws)*2:.3f} per request, length p50 {lens[len(lens)//2]} mean {st.mean(lens):.1f} p90 {lens[int(len(lens)*.9)]}, duration p50 {durs[len(durs)//2]:.0f} p90 {durs[int(len(durs)*.9)]:.0f} µs")
