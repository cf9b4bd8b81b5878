//! weir's integration tests, compiled into one binary: real sockets on 127.0.0.1:0, real
//! upstreams started in-process, real plugins compiled to WebAssembly, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, missing_debug_implementations)]

mod admin;
mod affinity;
mod agreement;
mod bounds;
mod cli;
mod cluster;
mod conformance;
mod control;
mod dashboard;
mod discover;
mod drain;
mod first_run;
mod h1_client;
mod h2;
mod hardening;
mod health;
mod l4;
mod l4_tls;
mod languages;
mod layers;
mod many_pools;
mod metrics;
mod pack;
mod pack_hashing;
mod pack_load;
mod plugins;
mod probe;
mod probe_reuse;
mod proxy;
mod support;
mod tls;
mod upstream;
mod websocket;
mod workers;
