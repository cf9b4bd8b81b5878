//! A call's deadline counted in the time the call ran, not the time its thread waited for
//! a core.
//!
//! The epoch ticker measures wall time: on a saturated machine the OS may preempt a worker
//! in the middle of a 1 µs decision and run it again several milliseconds later, and a
//! plain epoch deadline would then cut a call that did almost nothing. So the first expiry
//! of a call does not trap: it reads the thread's CPU clock and extends the deadline.
//! Each later expiry traps only once the CPU time the thread used since that first
//! reading reaches the call's budget, and extends the deadline by what is left otherwise.
//! A runaway plugin is therefore cut after at most its budget of wall time plus its budget
//! of CPU time (plus a tick, and plus up to the ticker's lazy pace when it starts while the
//! ticker is lazy: plugin::engine); a preempted call is not cut. A call whose wall time since the
//! first expiry reaches [`WALL_CAP`] budgets is cut whatever it ran, so a thread that only
//! ever gets slivers of a core still ends its call.
//!
//! Arming a call ([`Deadline::arm`]) only stores two words: the clocks are read only when
//! a deadline passes, which a well-behaved call on an idle machine never does.

use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

use super::engine::EPOCH_TICK;

/// A call is cut once its wall time since its first expiry reaches this many budgets,
/// whatever CPU time it used (200 ms at the default 2 ms budget).
pub(crate) const WALL_CAP: u32 = 100;

/// The deadline state of the call running in one store.
#[derive(Debug)]
pub(crate) struct Deadline {
    /// The CPU time the call may use.
    budget: Duration,
    /// Thread CPU time and wall clock at the call's first expiry.
    extended_at: Option<(Duration, Instant)>,
}

impl Deadline {
    pub(crate) const fn new() -> Self {
        Self { budget: Duration::ZERO, extended_at: None }
    }

    /// Starts a call that may run for `budget` (the store's epoch deadline is set beside
    /// it, in ticks of the same length).
    #[inline]
    pub(crate) fn arm(&mut self, budget: Duration) {
        self.budget = budget;
        self.extended_at = None;
    }

    /// What wasmtime does when the epoch deadline passes: trap, or run on for a number of
    /// ticks.
    pub(crate) fn expired(&mut self) -> UpdateDeadline {
        let cpu = thread_cpu_time();
        match self.extended_at {
            None => {
                self.extended_at = Some((cpu, Instant::now()));
                UpdateDeadline::Continue(ticks_for(self.budget))
            }
            Some((cpu_at, wall_at)) => {
                let ran = cpu.saturating_sub(cpu_at);
                if ran >= self.budget || wall_at.elapsed() >= self.budget.saturating_mul(WALL_CAP) {
                    UpdateDeadline::Interrupt
                } else {
                    UpdateDeadline::Continue(ticks_for(self.budget - ran))
                }
            }
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// Whole ticks covering `d`, at least one.
fn ticks_for(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    u64::try_from(d.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_expiry_extends_and_a_call_that_burns_its_budget_is_cut() {
        let mut d = Deadline::new();
        d.arm(Duration::from_millis(2));
        assert!(matches!(d.expired(), UpdateDeadline::Continue(2)));
        // Not yet two milliseconds of CPU since the first expiry: extended by what is left.
        assert!(matches!(d.expired(), UpdateDeadline::Continue(1 | 2)));
        let started = thread_cpu_time();
        while thread_cpu_time() - started < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        assert!(matches!(d.expired(), UpdateDeadline::Interrupt));
        // A new call starts afresh.
        d.arm(Duration::from_millis(2));
        assert!(matches!(d.expired(), UpdateDeadline::Continue(2)));
    }

    #[test]
    fn time_spent_off_the_cpu_does_not_count_until_the_wall_cap() {
        let mut d = Deadline::new();
        d.arm(Duration::from_millis(1));
        assert!(matches!(d.expired(), UpdateDeadline::Continue(1)));
        // Asleep (off the CPU) for three budgets: still within the budget of CPU time.
        std::thread::sleep(Duration::from_millis(3));
        assert!(matches!(d.expired(), UpdateDeadline::Continue(_)));
        // Asleep past the wall cap: cut.
        std::thread::sleep(Duration::from_millis(u64::from(WALL_CAP)));
        assert!(matches!(d.expired(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks_for(Duration::ZERO), 1);
        assert_eq!(ticks_for(Duration::from_micros(1)), 1);
        assert_eq!(ticks_for(Duration::from_millis(2)), 2);
        assert_eq!(ticks_for(Duration::from_micros(2_001)), 3);
        assert_eq!(ticks_for(Duration::MAX), u64::MAX / 2);
    }
}
