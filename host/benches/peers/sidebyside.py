"""What wakeups.py and workers.py share: the peer bench's origin (conf/origin.conf, nginx,
1 worker) on CPU 0 with its ports moved by an offset, processes started in sessions of
their own and stopped together, and the counters read around each run: the CPU ticks,
voluntary context switches (times gone to sleep) and IPIs received (RES + CAL of
/proc/interrupts, by CPU), and wrk's requests. peers.py takes its counters from here too."""
import os, re, signal, socket, subprocess, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../.."))
GEN = ["nice", "-n", "-20", "taskset", "-c", "0"]
HZ = os.sysconf("SC_CLK_TCK")


class Bench:
    """A run's directory (OUT, default target/NAME) and its processes."""

    def __init__(self, name, default_offset):
        self.out = os.environ.get("OUT") or os.path.join(ROOT, f"target/{name}")
        os.makedirs(self.out + "/logs", exist_ok=True)
        os.makedirs(self.out + "/run", exist_ok=True)
        self.offset = int(os.environ.get("PORT_OFFSET", str(default_offset)))
        self.origin_ports = [9001 + self.offset, 9002 + self.offset]
        self.procs = []

    def start(self, argv, pre, log, env=None):
        p = subprocess.Popen(pre + argv, stdout=open(f"{self.out}/logs/{log}.log", "ab"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.out, env=env)
        self.procs.append(p)
        return p

    def start_origin(self):
        """nginx from conf/origin.conf on CPU 0, its ports moved by the offset; waits for it."""
        conf = open(os.path.join(HERE, "conf/origin.conf")).read().replace("@P@", self.out)
        conf = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m.group(1)) + self.offset}", conf)
        open(self.out + "/run/origin.conf", "w").write(conf)
        origin = self.start(["nginx", "-c", f"{self.out}/run/origin.conf", "-p", f"{self.out}/run/"], GEN, "origin")
        wait_port(self.origin_ports[0])
        return origin

    def stop(self):
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def kids(p):
    """`p`'s pid and its children's (nginx's master and workers)."""
    k = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return [p.pid] + [int(x) for x in k]


def tasks(pl):
    """(pid, tid) of every thread of the processes `pl`."""
    for pid in pl:
        d = f"/proc/{pid}/task"
        for task in (os.listdir(d) if os.path.isdir(d) else ()):
            yield pid, task


def vol(pl):
    """Voluntary context switches (times gone to sleep) of all the threads of `pl`."""
    t = 0
    for pid, task in tasks(pl):
        try:
            for line in open(f"/proc/{pid}/task/{task}/status"):
                if line.startswith("voluntary_ctxt_switches:"):
                    t += int(line.split()[1])
        except FileNotFoundError:
            pass
    return t


def cpu(pl):
    """User and system clock ticks of the processes `pl`."""
    u = s = 0
    for pid in pl:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        u += int(f[11])
        s += int(f[12])
    return u, s


def run_ns(pl):
    """Nanoseconds all the threads of the processes `pl` have run (the scheduler's exact
    sum, /proc/PID/task/*/schedstat), where /proc/PID/stat counts 10 ms clock ticks."""
    t = 0
    for pid, task in tasks(pl):
        try:
            t += int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return t


def ipis():
    """IPIs received so far, by CPU: rescheduling + function call (what a cross-CPU
    wake-up sends to a CPU that is idle or must preempt)."""
    t = {}
    for line in open("/proc/interrupts"):
        f = line.split()
        if f and f[0] in ("RES:", "CAL:"):
            for c, v in enumerate(f[1:1 + os.cpu_count()]):
                t[c] = t.get(c, 0) + int(v)
    return t


def wait_port(port, tries=300):
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")


def wrk(port, secs, conns=64, close=False):
    """`wrk -t1 -cN` on CPU 0 for `secs` s; the requests made, and wrk's line of errors if any."""
    h = ["-H", "Connection: close"] if close else []
    out = subprocess.run(GEN + ["wrk", "-t1", f"-c{conns}", f"-d{secs}s"] + h + [f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx.*?(\d+)|Socket errors.*", out)
    return n, (bad.group(0) if bad else "")


def load():
    return " ".join(open("/proc/loadavg").read().split()[:3])
