//! Health: timed probes ([`probe`]), passive observations of live traffic, and the
//! evaluators (health plugins) that turn both into verdicts, which go to the one writer
//! ([`crate::control`]) as commands like every other change.
//!
//! Nothing here is on a request's path: the data plane only counts outcomes in the
//! backend's atomics ([`crate::state::BackendLive`]) and, on a failure or the first
//! success after one, hands an observation to the pool's health task.

mod monitor;
pub mod probe;
mod ticks;

pub use monitor::{Change, Evaluators, HOLD_ROUNDS, Monitor, Verdicts, load};

pub use crate::core::Failure;
