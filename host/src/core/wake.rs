//! A waker that says it was used: a task that waits on several things at once (its
//! connection, a stop signal, a timer) polls the rare ones only when they woke it, not at
//! every wake-up of the busy one. A poll of a `watch` takes its waiters' lock and a poll
//! of a `Sleep` re-registers its waker; each is a few hundred instructions that a
//! proxied request paid twice (BENCHMARKS.md, "Instructions per proxied HTTP/1.1
//! request").
//!
//! And a timer that serves many deadlines ([`poll_deadline`]): a connection keeps one
//! `Sleep` for its life and moves it only when it fires before the current deadline, so
//! a request costs a clock reading, not a timer's registration and removal.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

/// Ready once `deadline` has passed; until then the task is woken at or before it.
/// `timer` is left where it is when that is no later than `deadline` (an earlier wait set
/// it): it then fires early once, is found early, and is moved on to `deadline`. A timer
/// later than `deadline` (the timeout was shortened since) is moved back first.
pub fn poll_deadline(mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
    if timer.deadline() > deadline {
        timer.as_mut().reset(deadline);
    }
    while timer.as_mut().poll(cx).is_ready() {
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        timer.as_mut().reset(deadline);
    }
    Poll::Pending
}

/// Polls a future with a waker of its own that notes each wake before waking the task.
pub struct Flagged {
    inner: Arc<Flag>,
    waker: Waker,
}

#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Flagged {
    fn default() -> Self {
        let inner = Arc::new(Flag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Flagged { waker: Waker::from(inner.clone()), inner }
    }
}

impl std::fmt::Debug for Flagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flagged").field("woken", &self.inner.woken.load(Ordering::Relaxed)).finish()
    }
}

impl Flagged {
    /// Polls `poll` (given this waker's context) if it woke the task since it was last
    /// polled, or if [`Flagged::rearm`] said to; else `Pending` without polling it. `cx`
    /// is the task's: it is woken when the flagged waker is.
    pub fn poll<T>(&self, cx: &Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        // Registered before the flag is read: a wake after the read wakes the task again.
        self.inner.task.register(cx.waker());
        if self.inner.woken.swap(false, Ordering::AcqRel) {
            poll(&mut Context::from_waker(&self.waker))
        } else {
            Poll::Pending
        }
    }

    /// Has the next [`Flagged::poll`] poll whatever it is given (a new future, which must
    /// be polled once to register).
    pub fn rearm(&self) {
        self.inner.woken.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_flagged_future_is_polled_first_and_then_only_when_it_woke_the_task() {
        let flagged = Flagged::default();
        let polls = AtomicUsize::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let mut poll_rx = |cx: &mut Context<'_>| {
            polls.fetch_add(1, Ordering::Relaxed);
            rx.poll_recv(cx)
        };
        let noop = Waker::noop();
        let cx = Context::from_waker(noop);
        assert!(flagged.poll(&cx, &mut poll_rx).is_pending());
        assert!(flagged.poll(&cx, &mut poll_rx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "not woken: not polled again");
        tx.send(7).unwrap();
        assert_eq!(flagged.poll(&cx, &mut poll_rx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        flagged.rearm();
        assert!(flagged.poll(&cx, &mut poll_rx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }
}
