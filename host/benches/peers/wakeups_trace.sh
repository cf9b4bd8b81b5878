#!/bin/bash
# One proxy's wake-up trace under the h1 load (issue 16, BENCHMARKS.md "Why the peers sleep"):
# with wakeups.py holding the origin and the proxies (HOLD=S), runs wrk -t1 -c64 on CPU 0
# against PORT, records 0.4 s of the whole machine with perf (sched_switch, sched_wakeup,
# the proxy's writev/recvfrom/epoll_wait, IPIs), maps the proxy's sockets (ss) and prints
# wakeups_trace.py's analysis: who slept and who woke them, and the runs of writes to
# one side (wrk or the origin) before a write to the other.
#   host/benches/peers/wakeups_trace.sh NAME PID PORT [OUT]
# The worker thread is the proxy's `tokio-rt-worker`, or its main thread when it has none
# (tokio's current-thread runtime).
set -euo pipefail
n=$1; pid=$2; port=$3; out=${4:-target/wakeups}
here=$(dirname "$0")
mkdir -p "$out"
tid=$(for t in /proc/$pid/task/*; do [ "$(cat $t/comm)" = tokio-rt-worker ] && basename $t; done | head -1)
tid=${tid:-$pid}
nice -n -20 taskset -c 0 wrk -t1 -c64 -d3s http://127.0.0.1:$port/ > "$out/trace-wrk-$n.txt" &
sleep 1.2
perf record -q -a -e 'sched:sched_switch,sched:sched_wakeup,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_epoll_wait,irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,irq_vectors:call_function_entry' \
    -o "$out/trace-$n.data" -- sleep 0.4 2>&1 | grep -v '^$' | tail -2 || true
ss -tnpH | grep "pid=$pid," > "$out/trace-ss-$n.txt"
wait
/usr/bin/python3 "$here/wakeups_trace.py" "$out" "$n" "$tid"
