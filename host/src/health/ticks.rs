//! One pool's probe clock: its probers wait for their next probe, and for their probe's
//! deadline, on [`Ticks::until`] a process-clock millisecond, and one task per pool
//! ([`Ticks::drive`]) keeps one tokio timer armed for the earliest of those instants and
//! wakes every prober waiting for it.
//!
//! Probes start on slot boundaries (`monitor::slotted`), so a pool's 1,000 probers wait
//! for about 20 instants a second, and the probes of a slot have the same deadline to the
//! millisecond: the instants are filed here once per slot, not once per probe in tokio's
//! timer wheel, which re-filed each prober's timer when its probe's deadline passed and
//! cascaded each one down its levels (BENCHMARKS.md, health). A waiter that goes away
//! (a probe that answered before its deadline) is struck off, and an instant nobody waits
//! for any more is dropped, so it wakes no one.
//!
//! Like tokio's timers, an instant is kept to the millisecond and never fires early.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::core::clock;

/// The instants a pool's probers wait for, and the driver that wakes them.
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    inner: Mutex<Inner>,
    /// Every instant up to this one has fired (its waiters woken, its list gone): a
    /// waiter of one of them that completes has nothing to strike off.
    fired: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// By process-clock millisecond: who waits for it.
    due: BTreeMap<u64, Waiters>,
    /// The instant the driver's timer is armed for ([`clock::NEVER`]: none).
    armed: u64,
    /// The driver, to wake when an earlier instant is filed or the armed one dropped.
    driver: Option<Waker>,
    /// Emptied lists of waiters, kept for the next instants (no allocation per instant).
    spare: Vec<Vec<Option<Waker>>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self { due: BTreeMap::new(), armed: clock::NEVER, driver: None, spare: Vec::new() }
    }
}

impl Inner {
    /// Keeps an emptied list of waiters for a next instant (up to 64 of them).
    fn keep(&mut self, wakers: Vec<Option<Waker>>) {
        if self.spare.len() < 64 {
            self.spare.push(wakers);
        }
    }
}

/// The waiters of one instant; a struck-off waiter leaves `None` (indices stay valid).
#[derive(Debug, Default)]
struct Waiters {
    wakers: Vec<Option<Waker>>,
    live: usize,
}

impl Ticks {
    /// A clock with nothing filed; it wakes no one until [`Self::drive`] runs.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Completes once the process clock reads `at_ms` or later.
    pub(crate) fn until(&self, at_ms: u64) -> Until<'_> {
        Until { ticks: self, at: at_ms, index: None }
    }

    /// Wakes the waiters of every instant up to `now`, forever; runs as a task of its own
    /// beside the probers (aborted with the pool's health task).
    pub(crate) async fn drive(self: Arc<Self>) {
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed_for = clock::NEVER;
        std::future::poll_fn(|cx| {
            loop {
                let next = self.fire(clock::now_ms(), cx.waker());
                if next == clock::NEVER {
                    return Poll::Pending;
                }
                if next != armed_for {
                    let Some(at) = clock::instant(next) else { return Poll::Pending };
                    timer.as_mut().reset(tokio::time::Instant::from_std(at));
                    armed_for = next;
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Wakes the waiters of every instant up to `now` and forgets those instants; the
    /// driver is `driver`, armed for the returned instant (the earliest left, or
    /// [`clock::NEVER`]).
    fn fire(&self, now: u64, driver: &Waker) -> u64 {
        let mut inner = self.lock();
        // Before any waiter is woken: a woken waiter finds its instant reached.
        self.fired.fetch_max(now, Ordering::Release);
        while let Some(entry) = inner.due.first_entry() {
            if *entry.key() > now {
                break;
            }
            let mut wakers = entry.remove().wakers;
            for waker in wakers.drain(..).flatten() {
                waker.wake();
            }
            inner.keep(wakers);
        }
        let next = inner.due.first_key_value().map_or(clock::NEVER, |(&at, _)| at);
        inner.armed = next;
        if !inner.driver.as_ref().is_some_and(|w| w.will_wake(driver)) {
            inner.driver = Some(driver.clone());
        }
        next
    }
}

/// Waits for a process-clock millisecond on a [`Ticks`] ([`Ticks::until`]).
#[derive(Debug)]
pub(crate) struct Until<'a> {
    ticks: &'a Ticks,
    at: u64,
    /// Where this waiter is filed under `at`, once it is.
    index: Option<usize>,
}

impl Future for Until<'_> {
    type Output = ();

    /// Reads no clock: an instant is reached when the driver has fired it (one reading of
    /// the clock per instant, not one per waiter and poll).
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (ticks, at) = (self.ticks, self.at);
        if at <= ticks.fired.load(Ordering::Acquire) {
            self.index = None;
            return Poll::Ready(());
        }
        let mut inner = ticks.lock();
        if at <= ticks.fired.load(Ordering::Acquire) {
            self.index = None;
            return Poll::Ready(());
        }
        let Inner { due, spare, .. } = &mut *inner;
        let waiters = due.entry(at).or_insert_with(|| Waiters { wakers: spare.pop().unwrap_or_default(), live: 0 });
        if let Some(Some(waker)) = self.index.and_then(|i| waiters.wakers.get_mut(i)) {
            // Filed already: only a waker of another task replaces its own.
            if !waker.will_wake(cx.waker()) {
                waker.clone_from(cx.waker());
            }
            return Poll::Pending;
        }
        waiters.wakers.push(Some(cx.waker().clone()));
        waiters.live += 1;
        self.index = Some(waiters.wakers.len() - 1);
        if at < inner.armed
            && let Some(driver) = &inner.driver
        {
            // Earlier than the driver's timer (or past already): it re-arms (or fires it).
            driver.wake_by_ref();
            inner.armed = at;
        }
        Poll::Pending
    }
}

impl Until<'_> {
    /// Takes this waiter off its instant's list; the instant goes when no one is left on
    /// it (the driver is told if its timer was armed for it, so it does not wake for it).
    fn strike_off(&mut self) {
        let Some(index) = self.index.take() else { return };
        if self.at <= self.ticks.fired.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.ticks.lock();
        let Some(waiters) = inner.due.get_mut(&self.at) else { return };
        if waiters.wakers.get_mut(index).and_then(Option::take).is_none() {
            return;
        }
        waiters.live -= 1;
        if waiters.live == 0 {
            if let Some(Waiters { mut wakers, .. }) = inner.due.remove(&self.at) {
                wakers.clear();
                inner.keep(wakers);
            }
            if inner.armed == self.at
                && let Some(driver) = &inner.driver
            {
                driver.wake_by_ref();
            }
        }
    }
}

impl Drop for Until<'_> {
    fn drop(&mut self) {
        self.strike_off();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn waiters_wake_at_their_instant_never_before() {
        runtime().block_on(async {
            let ticks = Ticks::new();
            let driver = tokio::spawn(ticks.clone().drive());
            let start = clock::now_ms();
            let mut waits = Vec::new();
            for (i, after) in [30u64, 10, 30, 20, 10].into_iter().enumerate() {
                let ticks = ticks.clone();
                waits.push(tokio::spawn(async move {
                    ticks.until(start + after).await;
                    (i, after, clock::now_ms() - start)
                }));
            }
            for w in waits {
                let (i, after, took) = w.await.unwrap();
                assert!(took >= after, "waiter {i}: woke after {took} ms, not {after}");
                assert!(took < after + 200, "waiter {i}: woke after {took} ms, {after} asked");
            }
            assert!(ticks.lock().due.is_empty());
            driver.abort();
        });
    }

    #[test]
    fn an_earlier_instant_re_arms_the_driver() {
        runtime().block_on(async {
            let ticks = Ticks::new();
            let driver = tokio::spawn(ticks.clone().drive());
            let start = clock::now_ms();
            let late = {
                let ticks = ticks.clone();
                tokio::spawn(async move { ticks.until(start + 5_000).await })
            };
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            let begun = std::time::Instant::now();
            ticks.until(clock::now_ms() + 20).await;
            assert!(begun.elapsed() < Duration::from_secs(2), "{:?}", begun.elapsed());
            assert!(!late.is_finished());
            late.abort();
            driver.abort();
        });
    }

    #[test]
    fn a_waiter_that_goes_away_is_struck_off_and_its_instant_dropped() {
        runtime().block_on(async {
            let ticks = Ticks::new();
            let driver = tokio::spawn(ticks.clone().drive());
            let at = clock::now_ms() + 10_000;
            let mut first = Box::pin(ticks.until(at));
            let mut second = Box::pin(ticks.until(at));
            assert!(futures_util::poll!(first.as_mut()).is_pending());
            assert!(futures_util::poll!(second.as_mut()).is_pending());
            // Polled again, a filed waiter is not filed twice.
            assert!(futures_util::poll!(first.as_mut()).is_pending());
            assert_eq!(ticks.lock().due[&at].live, 2);
            assert_eq!(ticks.lock().due[&at].wakers.len(), 2);
            drop(first);
            assert_eq!(ticks.lock().due[&at].live, 1);
            drop(second);
            assert!(ticks.lock().due.is_empty());
            // An instant already past completes at once.
            ticks.until(clock::now_ms()).await;
            driver.abort();
        });
    }
}
