//! CPU per health probe (target: ≤ 20 µs per http probe, its evaluation included): N
//! probes of each kind (default 10,000), one after another, against demo backends that run
//! on a thread of their own, so that the prober thread's CPU time (user and system, from
//! the kernel) is measured apart from theirs.
//!
//! The kernel's part of a loopback probe includes the backend's side of the exchange (the
//! receiving end runs in the sender's context), so the system time here overstates what a
//! probe over a network costs; the user time is the probe's own. A few tcp probes may fail
//! on a busy machine: they return as soon as the connect completes, faster than the
//! backend's thread accepts, and the listen queue overflows.
//! Run with `cargo bench --bench probe` (`N=` probes per kind, `KINDS=http,websocket` to
//! run only those).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir::config::{ProbeConfig, ProbeKind, StatusSet};
use weir::health::probe::probe;

/// The calling thread's CPU time (from the scheduler, in nanoseconds; readable under
/// valgrind too).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(stat.split(' ').next().unwrap().parse().unwrap())
}

/// The calling thread's user and system time so far, in clock ticks.
fn thread_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name (in parentheses, which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}

fn config(kind: ProbeKind, expect_body: Option<&str>) -> ProbeConfig {
    ProbeConfig {
        kind,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        port: None,
        path: "/healthz".to_owned(),
        host: None,
        expect_status: StatusSet::parse("200-399").unwrap(),
        expect_body: expect_body.map(str::to_owned),
        // `probe` (one connection per probe) ignores it.
        reuse_connection: false,
    }
}

fn main() {
    let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // Backends on a runtime of their own thread; one per kind, so the client ports left in
    // TIME_WAIT by one kind do not crowd the next.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            // The tcp probe's backend only accepts and closes: a probe returns as soon as
            // its connect completes, so a slower server would let the listen queue fill.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut addrs = vec![listener.local_addr().unwrap()];
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            });
            for i in 1..4 {
                addrs.push(weir::demo::spawn_backend(&format!("b{i}")).await.unwrap());
            }
            tx.send(addrs).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addrs: Vec<SocketAddr> = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cases = [
        ("tcp", config(ProbeKind::Tcp, None)),
        ("http", config(ProbeKind::Http, None)),
        ("http+body", config(ProbeKind::Http, Some("ok"))),
        ("websocket", config(ProbeKind::WebSocket, None)),
    ];
    println!("{n} probes of each kind, one after another");
    let only = std::env::var("KINDS").ok();
    for ((name, config), addr) in cases.iter().zip(addrs) {
        if only.as_deref().is_some_and(|k| !k.split(',').any(|k| k == *name)) {
            continue;
        }
        let host = addr.to_string();
        rt.block_on(async {
            // Warm-up; a tcp probe may fail when the backend's listen queue overflowed.
            let mut passed = 0;
            for _ in 0..200 {
                passed += u32::from(probe(config, addr, &host).await.passed());
            }
            assert!(passed >= 190, "{name}: {passed} of 200 warm-up probes passed");
            let (wall, cpu, ticks) = (Instant::now(), thread_cpu(), thread_ticks());
            let mut failed = 0u32;
            for _ in 0..n {
                let r = probe(config, addr, &host).await;
                if !r.passed() {
                    if failed == 0 {
                        println!("{name}: first failure: {}", r.detail);
                    }
                    failed += 1;
                }
            }
            let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
            let (user, sys) = thread_ticks();
            let (user, sys) = (user - ticks.0, sys - ticks.1);
            let user_share = if user + sys == 0 { 0.0 } else { user as f64 / (user + sys) as f64 };
            let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
            println!(
                "{name:<10} wall {:>6.1} µs  cpu {:>6.1} µs per probe (user {:>4.1}, system {:>4.1})  failed {failed}",
                per(wall),
                per(cpu),
                per(cpu) * user_share,
                per(cpu) * (1.0 - user_share),
            );
        });
    }
}
