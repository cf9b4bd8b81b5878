//! weir: a load balancer and reverse proxy whose every routing decision is made by a
//! WebAssembly component.
//!
//! The host (this crate) does the I/O; plugins implementing the `weir:plugin` WIT worlds
//! decide. [`Server::start`] binds the listeners of a [`config::Config`] and serves them
//! from one [`state::Runtime`] snapshot published behind an `ArcSwap`.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod config;
pub mod demo;
pub mod plugin;
pub mod proxy;
pub mod simulate;
pub mod state;

use config::Config;
use plugin::{LoadError, PluginRuntime};
use state::{BuildError, Runtime};

/// What every connection task shares: the current snapshot and the plugin runtime.
#[derive(Debug)]
pub struct Shared {
    /// The current runtime snapshot.
    pub runtime: ArcSwap<Runtime>,
    /// Loads plugins for new snapshots.
    pub plugins: PluginRuntime,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The plugin runtime could not be created.
    #[error("plugin runtime: {0}")]
    Runtime(#[from] LoadError),
    /// A pool could not be built.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A listener could not bind.
    #[error("listener `{name}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running proxy. Dropping it stops accepting and aborts its connections.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<(String, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads every plugin, binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let plugins = PluginRuntime::new(config.plugins.clone())?;
        let runtime = Runtime::build(&config, &plugins, None)?;
        let shared = Arc::new(Shared { runtime: ArcSwap::from_pointee(runtime), plugins });
        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let listener = TcpListener::bind(l.listen).await.map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            bound.push((listener, addr, Arc::new(l.clone())));
        }
        let mut listeners = Vec::with_capacity(bound.len());
        let mut tasks = Vec::with_capacity(bound.len());
        for (listener, addr, l) in bound {
            tracing::info!(listener = %l.name, %addr, pool = %l.pool, "listening");
            listeners.push((l.name.clone(), addr));
            tasks.push(tokio::spawn(proxy::serve(listener, l, shared.clone())));
        }
        Ok(Self { shared, listeners, tasks })
    }

    /// The bound address of each listener, by name, in config order.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The bound address of the named listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Applies a new config to the running server: builds a new snapshot beside the
    /// current one (live backend figures, counters and stick tables carry over by
    /// address, unchanged pack plugins are reused) and switches to it at once. New work
    /// follows the new snapshot; requests and tunnels in progress keep the backend they
    /// have, except that the WebSockets of a backend that left its pool are drained (a
    /// close frame each, spread over the pool's `drain_spread_ms`, cut at
    /// `drain_deadline_ms`); a backend that stays keeps every tunnel untouched. On any
    /// error nothing changes. Listeners are not rebound: a changed `[[listener]]` table
    /// needs a restart (a warning says so).
    pub fn reload(&self, config: &Config) -> Result<(), BuildError> {
        let current = self.shared.runtime.load_full();
        let next = Arc::new(Runtime::build(config, &self.shared.plugins, Some(&current))?);
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        if listeners != self.listeners.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() {
            tracing::warn!("reload: listeners are not rebound; restart weir to apply listener changes");
        }
        self.shared.runtime.store(next.clone());
        for (name, old) in &current.pools {
            let new = next.pools.get(name);
            let config = new.map_or(&old.config, |p| &p.config);
            for member in &old.view.members {
                let stays = new.is_some_and(|p| p.view.members.iter().any(|m| Arc::ptr_eq(&m.live, &member.live)));
                if !stays {
                    let n = member.live.drain_tunnels(config.drain_spread, config.drain_deadline);
                    tracing::info!(pool = %name, backend = %member.config.address, tunnels = n, "backend removed; draining its tunnels");
                }
            }
        }
        Ok(())
    }

    /// Graceful shutdown: stops accepting, drains every tunnel of every pool (close
    /// frames spread over each pool's `drain_spread_ms`), and returns once none is left
    /// or the longest `drain_deadline_ms` has passed (tunnels are cut at their pool's
    /// deadline). Returns how many tunnels were drained.
    pub async fn shutdown(&self) -> usize {
        for t in &self.tasks {
            t.abort();
        }
        let runtime = self.shared.runtime.load_full();
        let mut drained = 0;
        let mut longest = std::time::Duration::ZERO;
        for pool in runtime.pools.values() {
            longest = longest.max(pool.config.drain_deadline);
            for m in &pool.view.members {
                drained += m.live.drain_tunnels(pool.config.drain_spread, pool.config.drain_deadline);
            }
        }
        let open = || runtime.pools.values().flat_map(|p| &p.view.members).map(|m| m.live.tunnels()).sum::<usize>();
        // A little beyond the deadline, for the cut tunnels to unregister.
        let give_up = tokio::time::Instant::now() + longest + std::time::Duration::from_millis(500);
        while open() > 0 && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drained
    }

    /// The shared state (snapshot and plugin runtime).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
