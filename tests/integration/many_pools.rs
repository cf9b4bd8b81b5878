//! Many pools on many worker threads: every worker keeps its own instance of every pool's
//! plugin, so instances are threads × pools × plugins, and a config with 1,000 pools on 16
//! workers needs 16,000 of them. Each must be placed by its own plugin, never by the
//! fallback.

use std::sync::atomic::Ordering;

use http::StatusCode;

use crate::support::{self, Upstream};

const POOLS: usize = 1_000;
const WORKERS: usize = 16;

#[test]
fn a_thousand_pools_on_sixteen_workers_are_all_placed_by_their_plugins() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).enable_all().build().unwrap();
    rt.block_on(async {
        let ups = [Upstream::start("a").await, Upstream::start("b").await];
        let backends = format!("[{{ address = \"{}\" }}, {{ address = \"{}\" }}]", ups[0].addr, ups[1].addr);
        // `reject`: a decision the plugin could not make (no instance, a trap, a timeout)
        // answers 503 instead of being placed by the fallback.
        let mut text = format!(
            "[runtime]\nworker_threads = {WORKERS}\n\n[plugins]\ncache_dir = {:?}\ncall_timeout_ms = 50\n\n\
             [[listener]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\npool = \"p0\"\n",
            support::cache_dir().display().to_string()
        );
        for p in 0..POOLS {
            text += &format!("[[listener.route]]\npath_prefix = \"/p{p}\"\npool = \"p{p}\"\n");
        }
        for p in 0..POOLS {
            // No idle upstream connections: each worker keeps its own for each pool's
            // backends, 16,000 here, each two descriptors with the backends in this process.
            text += &format!(
                "\n[pool.p{p}]\nbackends = {backends}\non_plugin_error = \"reject\"\nmax_idle_per_backend = 0\n"
            );
        }
        let server = support::start(&text).await;
        // Concurrent clients, one kept-alive connection each, on a worker each, each asking
        // every pool once (starting at a pool of its own), so every pool is reached on
        // every one of those workers. A listener's connections go to whichever worker's
        // accept comes first, and with all of them idle some win far more often than
        // others (2,000 connections one at a time: 0 to 318 each, BENCHMARKS.md "Worker
        // model"): connect one client at a time, and keep each whose connection a worker
        // without one took.
        // Each client is one connection of its own (a pooled client may open another,
        // which lands on whichever worker, when it asks again before its first connection
        // is back in its pool).
        let mut by_worker = Vec::new();
        for _ in 0..2_000 {
            let before = server.control().worker_connections();
            let mut client = Connection::open(server.addr("main").unwrap()).await;
            assert_eq!(client.get("/p0/x").await, StatusCode::OK);
            let after = server.control().worker_connections();
            let took = (0..WORKERS).find(|&w| after[w] > before[w]).unwrap();
            if before[took] == 0 {
                by_worker.push(client);
            }
            if by_worker.len() == WORKERS {
                break;
            }
        }
        let spread = server.control().worker_connections();
        assert!(by_worker.len() >= WORKERS / 2, "connections on at least half the workers: {spread:?}");
        let clients_n = by_worker.len();
        let clients: Vec<_> = by_worker
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                let mut client = client;
                tokio::spawn(async move {
                    let mut failed = Vec::new();
                    for i in 0..POOLS {
                        let p = (i + c * POOLS / clients_n) % POOLS;
                        let status = client.get(&format!("/p{p}/x")).await;
                        if status != StatusCode::OK {
                            failed.push((p, status));
                        }
                    }
                    failed
                })
            })
            .collect();
        let mut failed = Vec::new();
        for c in clients {
            failed.extend(c.await.unwrap());
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            clients_n * POOLS,
            &failed[0]
        );

        let snapshot = server.snapshot();
        let mut instances = 0;
        for (name, pool) in &snapshot.pools {
            let stats = &pool.balancer.stats;
            let made = stats.instantiations.load(Ordering::Relaxed);
            assert!(made > 1, "pool {name}: its plugin never ran on a worker");
            let calls = stats.calls.get();
            if name == "p0" {
                // It also served the requests that spread the connections.
                assert!(calls >= clients_n as u64, "pool {name}: {calls} calls");
            } else {
                assert_eq!(calls, clients_n as u64, "pool {name}");
            }
            assert_eq!(
                (stats.traps.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed)),
                (0, 0),
                "pool {name}"
            );
            instances += made - 1; // less the one that validated it at load
        }
        // Every pool was reached on every one of those workers: 8,000 to 16,000 instances
        // in all, far past the 2,000 instances wasmtime's pooling allocator was capped at.
        assert!(instances >= (clients_n * POOLS) as u64, "{instances} instances for {POOLS} pools");
    });
}

/// One kept-alive HTTP/1.1 connection to the proxy, and nothing else.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    host: String,
}

impl Connection {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Self { sender, host: addr.to_string() }
    }

    /// Sends `GET path` on this connection and reads the answer to its end.
    async fn get(&mut self, path: &str) -> StatusCode {
        use http_body_util::BodyExt;
        self.sender.ready().await.unwrap();
        let req = http::Request::get(path).header(http::header::HOST, &self.host).body(Default::default()).unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status();
        res.into_body().collect().await.unwrap();
        status
    }
}
