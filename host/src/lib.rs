//! weir: a load balancer and reverse proxy whose every routing decision is made by a
//! WebAssembly component.
//!
//! The host (this crate) does the I/O; plugins implementing the `weir:plugin` WIT worlds
//! decide. Its modules are layered, each using only those above it in this list
//! (DESIGN.md, "Host layout"): [`core`] → [`metrics`] → [`config`] → [`plugin`] → [`state`] → [`net`] →
//! [`health`] → [`discover`] → `http` → `tcp` → [`control`] → [`admin`] → [`server`]; [`demo`] and [`simulate`] are tools on top.
//! [`Server::start`] binds the listeners of a [`config::Config`] and serves them from one
//! [`state::Snapshot`] published behind an `ArcSwap` by the one writer
//! ([`control::Control`]).

pub mod admin;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod demo;
pub mod discover;
pub mod health;
pub(crate) mod http;
pub mod metrics;
pub mod net;
pub mod plugin;
pub mod server;
pub mod simulate;
pub mod state;
pub(crate) mod tcp;

pub use server::{Server, StartError};
