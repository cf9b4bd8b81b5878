//! Health: timed probes ([`probe`]), passive observations of live traffic, and the
//! evaluators (health plugins) that turn both into verdicts, which go to the one writer
//! ([`crate::control`]) as commands like every other change.
//!
//! Nothing here is on a request's path: the data plane only counts outcomes in the
//! backend's atomics ([`crate::state::BackendLive`]) and, on a failure or the first
//! success after one, hands an observation to the pool's health task.

pub mod probe;

/// What went wrong with a probe or an exchange (the WIT `health.failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The TCP connect was refused or the backend unreachable.
    Connect,
    /// No answer within the time allowed.
    Timeout,
    /// A status outside the expected range (probe) or a failure status (live traffic).
    Status,
    /// The probe's body did not contain `expect_body`.
    Body,
    /// The connection was reset or closed before the response was complete.
    Reset,
    /// Not the expected protocol (malformed HTTP, refused upgrade, no pong).
    Protocol,
}

impl Failure {
    /// The name used in logs and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status => "status",
            Failure::Body => "body",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
