#!/usr/bin/env bash
# User-space instructions per http probe on weir's health thread (callgrind), by function:
# the health_scale bench's setup (1,000 real backends of the bench process, an http probe
# every 1,000 ms, each result evaluated by `threshold`) with weir under callgrind, one
# output file per thread. In the probe run the counters are zeroed after the warm-up and
# dumped WINDOW seconds later (default 20); the health thread's inclusive costs are divided
# by the probes made in that window (its calls to `send`). WEIR_BIN= counts another weir
# (default: this tree's, built). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
win=${WINDOW:-20}
if [ -z "${WEIR_BIN:-}" ]; then
    cargo build --release --bin weir >/dev/null 2>&1
fi
weir=${WEIR_BIN:-$PWD/target/release/weir}
cargo bench --bench health_scale --no-run >/dev/null 2>&1
bench=$(ls -t target/release/deps/health_scale-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
cat > "$out/weir.sh" <<EOS
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --dump-instr=no --callgrind-out-file=$out/cg.%p "$weir" "\$@"
EOS
chmod +x "$out/weir.sh"
WEIR_BIN="$out/weir.sh" KIND=http RUNS=1 SECS=$((win + 40)) "$bench" >"$out/bench.log" 2>&1 &
bench_pid=$!
# The run without probes comes first; then the probed weir starts and warms up.
until grep -q "no probe" "$out/bench.log" 2>/dev/null; do sleep 2; done
sleep 3
pid=$(pgrep -n -f "callgrind-out-file=$out/cg")
sleep 15
callgrind_control -z "$pid" >/dev/null
sleep "$win"
callgrind_control -d "$pid" >/dev/null
kill "$bench_pid" "$pid" 2>/dev/null || true
file=$(grep -l "health::monitor::prober" "$out"/cg."$pid".*-* | xargs ls -S | head -1)
python3 - "$file" <<'EOP'
import re, subprocess, sys
path = sys.argv[1]
names, calls, cfn = {}, {}, None
for line in open(path, errors="replace"):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        kind, i, name = m.groups()
        if name:
            names[i] = name
        cfn = i if kind == "cfn" else cfn
    elif line.startswith("calls=") and cfn is not None:
        calls[cfn] = calls.get(cfn, 0) + int(line.split()[0][6:])
        cfn = None
probes = sum(n for i, n in calls.items() if names.get(i) == "send")
total = int(open(path).read().split("summary: ")[1].split()[0])
print(f"{probes} probes in the window; weir-health: {total / probes:,.0f} instructions per probe")
print("inclusive, per probe:")
out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99.9", path],
                     capture_output=True, text=True).stdout.splitlines()
for line in out:
    m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)( \[.*\])?$", line)
    if m and m.group(3):
        per = int(m.group(1).replace(",", "")) / probes
        if per >= 50:
            print(f"{per:8,.0f}  {m.group(2)[-150:]}")
EOP
rm -rf "$out"
