//! Graceful drain of WebSocket tunnels: when a backend leaves the pool (a reload) or
//! weir shuts down (SIGTERM), each of the backend's tunnels gets a close frame `1001
//! Going Away` from the proxy at its own moment, spread evenly over `drain_spread_ms` so
//! the clients do not reconnect in one storm, and tunnels still open at
//! `drain_deadline_ms` are cut.
//!
//! The tunnel copies raw bytes, so a close frame may only be put between two frames of
//! the backend→client direction. The cheapest correct way, chosen here: that direction
//! tracks frame *headers* only ([`FrameTracker`]: tungstenite parses each header as it
//! passes, and the payload after it is skipped by its length, never looked at), which
//! costs a few instructions per frame and no memory beyond 14 bytes while a tunnel lives.
//! Against splice(2): splicing moves bytes without ever seeing them, so it cannot know
//! where a frame ends; a splicing tunnel would have to switch to this copy when its drain
//! begins and then wait for a boundary it cannot find without having tracked the frames
//! from the start. The copy loop (which holds no buffer while idle) keeps the boundary
//! known at all times, so the close goes out at the first boundary after its moment.
//! After the close frame, the backend's further bytes are read and dropped (a close must
//! be the last frame), while the client's bytes still flow, so its close reply reaches
//! the backend and each side ends cleanly.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::KeyMap;
use crate::core::clock::{self, NEVER, now_ms};
use crate::state::BackendLive;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// One tunnel's drain orders: when to send its close frame and when to cut it.
#[derive(Debug)]
pub(crate) struct DrainOrder {
    close_at: AtomicU64,
    cut_at: AtomicU64,
    /// Wakes the tunnel's watchdog when an order arrives.
    pub(crate) changed: Notify,
}

impl DrainOrder {
    fn new() -> Self {
        Self { close_at: AtomicU64::new(NEVER), cut_at: AtomicU64::new(NEVER), changed: Notify::new() }
    }

    /// When the tunnel should send its close frame, if it was ordered to.
    pub(crate) fn close_at(&self) -> Option<Instant> {
        clock::instant(self.close_at.load(Ordering::Relaxed))
    }

    /// When the tunnel must end, if it was ordered to.
    pub(crate) fn cut_at(&self) -> Option<Instant> {
        clock::instant(self.cut_at.load(Ordering::Relaxed))
    }

    fn order(&self, close_at: u64, cut_at: u64) {
        // An earlier order stands (a shutdown during a reload drain keeps the sooner one).
        self.close_at.fetch_min(close_at, Ordering::Relaxed);
        self.cut_at.fetch_min(cut_at, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

/// The open tunnels of every backend, by [`BackendLive::key`], so a drain can reach them.
/// Kept by the net layer beside the snapshot (the state layer only counts tunnels);
/// locked when a tunnel opens or closes and when a drain is ordered, never per byte.
///
/// A tunnel registers once it is set up (a TCP connect, or both sides of a WebSocket
/// upgrade), after its backend was picked; a drain ordered in between would miss it, and a
/// tunnel to a backend that left its pool would live on. So a drain is also remembered
/// until its deadline ([`Registry::drain`]), and so is an abort ([`Registry::cut_all`]): a
/// tunnel that registers late gets the order it missed. An undrained or recovered backend
/// is forgotten ([`Registry::undrain`]), so its new tunnels are left alone.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

/// What the registry's lock guards.
#[derive(Debug, Default)]
struct Inner {
    /// The open tunnels, by backend, then by registration order.
    open: KeyMap<KeyMap<Arc<DrainOrder>>>,
    /// Backends whose drain is under way: when the last of their tunnels was due to send
    /// its close frame, and when they are all cut (clock milliseconds).
    draining: KeyMap<(u64, u64)>,
    /// The server aborted: every tunnel is cut, a late one as soon as it registers.
    aborted: bool,
    /// Tunnels promised to a backend whose upgrades are under way ([`Upgrading`]), by
    /// backend: a drain counts them, and they get its order when they register.
    upgrading: KeyMap<usize>,
}

impl Registry {
    /// Registers a new tunnel to `backend`; it is unregistered (and uncounted) when the
    /// returned entry is dropped.
    pub(crate) fn register(self: &Arc<Self>, backend: &Arc<BackendLive>) -> TunnelEntry {
        self.open(backend, false)
    }

    /// A tunnel to `backend` whose client has (or is about to have) its answer while its
    /// upgrades finish: from now on a drain of `backend` counts it, and it registers with
    /// [`Upgrading::register`].
    pub(crate) fn expect(self: &Arc<Self>, backend: &Arc<BackendLive>) -> Upgrading {
        *self.lock().upgrading.entry(backend.key()).or_default() += 1;
        Upgrading { registry: self.clone(), backend: backend.clone(), pending: true }
    }

    /// Registers a tunnel; `upgrading` when it was counted by [`Registry::expect`].
    fn open(self: &Arc<Self>, backend: &Arc<BackendLive>, upgrading: bool) -> TunnelEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let order = Arc::new(DrainOrder::new());
        let mut inner = self.lock();
        if upgrading {
            inner.forget_upgrading(backend.key());
        }
        inner.open.entry(backend.key()).or_default().insert(id, order.clone());
        // A drain or abort ordered since the backend was picked: this tunnel's order too.
        if inner.aborted {
            let now = now_ms();
            order.order(now, now);
        } else if let Some(&(close_by, cut_at)) = inner.draining.get(&backend.key()) {
            if cut_at > now_ms() {
                order.order(close_by, cut_at);
            } else {
                inner.draining.remove(&backend.key());
            }
        }
        drop(inner);
        backend.tunnel_opened();
        TunnelEntry { registry: self.clone(), backend: backend.clone(), id, order }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open tunnels of every backend.
    pub(crate) fn len(&self) -> usize {
        self.lock().open.values().map(KeyMap::len).sum()
    }

    /// Orders every open tunnel of `backend` to close: the `i`-th of `n` at `i/n` of
    /// `spread` from now (oldest first), every one cut at `deadline` from now. Returns how
    /// many, counting those still upgrading ([`Registry::expect`]).
    /// A tunnel to `backend` that registers before `deadline` has passed is ordered to
    /// close at the end of `spread` and cut at the same deadline.
    pub(crate) fn drain(&self, backend: u64, spread: Duration, deadline: Duration) -> usize {
        let now = now_ms();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NEVER / 4);
        let (spread, deadline) = (ms(spread), ms(deadline));
        let upgrading;
        let mut orders: Vec<(u64, Arc<DrainOrder>)> = {
            let mut inner = self.lock();
            // Drains are rare: forget those whose deadline has passed while here.
            inner.draining.retain(|_, &mut (_, cut_at)| cut_at > now);
            // An earlier drain's sooner moments stand, as they do for the open tunnels.
            let (close_by, cut_at) = (now.saturating_add(spread), now.saturating_add(deadline));
            let (close_by, cut_at) = match inner.draining.get(&backend) {
                Some(&(close, cut)) => (close.min(close_by), cut.min(cut_at)),
                None => (close_by, cut_at),
            };
            inner.draining.insert(backend, (close_by, cut_at));
            upgrading = inner.upgrading.get(&backend).copied().unwrap_or(0);
            match inner.open.get(&backend) {
                Some(open) => open.iter().map(|(&k, v)| (k, v.clone())).collect(),
                None => return upgrading,
            }
        };
        orders.sort_unstable_by_key(|(k, _)| *k);
        let n = orders.len() as u64;
        for (i, (_, order)) in orders.iter().enumerate() {
            let close_at = now.saturating_add(spread.saturating_mul(i as u64) / n.max(1));
            order.order(close_at, now.saturating_add(deadline));
        }
        orders.len() + upgrading
    }

    /// Orders every open tunnel to end now (the server aborts): a WebSocket's close
    /// frame is due at once, and it is cut with it. Returns how many.
    pub(crate) fn cut_all(&self) -> usize {
        let orders: Vec<Arc<DrainOrder>> = {
            let mut inner = self.lock();
            inner.aborted = true;
            inner.open.values().flat_map(|open| open.values().cloned()).collect()
        };
        let now = now_ms();
        for order in &orders {
            order.order(now, now);
        }
        orders.len()
    }

    /// Forgets `backend`'s drain (an operator undrained it, or it recovered): its tunnels
    /// that register from now on are left alone; those already ordered keep their orders.
    pub(crate) fn undrain(&self, backend: u64) {
        self.lock().draining.remove(&backend);
    }
}

impl Inner {
    fn forget_upgrading(&mut self, backend: u64) {
        if let Some(n) = self.upgrading.get_mut(&backend) {
            *n -= 1;
            if *n == 0 {
                self.upgrading.remove(&backend);
            }
        }
    }
}

/// A tunnel counted by [`Registry::expect`] while its upgrades finish; uncounted when it
/// registers or is dropped (the upgrade failed).
#[derive(Debug)]
pub(crate) struct Upgrading {
    registry: Arc<Registry>,
    backend: Arc<BackendLive>,
    pending: bool,
}

impl Upgrading {
    /// Registers the tunnel, as [`Registry::register`] does.
    pub(crate) fn register(mut self) -> TunnelEntry {
        self.pending = false;
        self.registry.open(&self.backend, true)
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        if self.pending {
            self.registry.lock().forget_upgrading(self.backend.key());
        }
    }
}

/// A tunnel's registration; dropping it unregisters the tunnel.
#[derive(Debug)]
pub(crate) struct TunnelEntry {
    registry: Arc<Registry>,
    backend: Arc<BackendLive>,
    id: u64,
    /// This tunnel's orders.
    pub(crate) order: Arc<DrainOrder>,
}

impl Drop for TunnelEntry {
    fn drop(&mut self) {
        let key = self.backend.key();
        let mut inner = self.registry.lock();
        if let Some(open) = inner.open.get_mut(&key) {
            open.remove(&self.id);
            if open.is_empty() {
                inner.open.remove(&key);
            }
        }
        drop(inner);
        self.backend.tunnel_closed();
    }
}

/// The close frame a draining proxy sends a client: `1001 Going Away`, unmasked (it goes
/// server→client).
pub(crate) fn going_away() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    let frame = Frame::close(Some(CloseFrame { code: CloseCode::Away, reason: "weir: backend draining".into() }));
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

/// Follows the frame boundaries of one direction of a WebSocket byte stream by parsing
/// each frame header (with tungstenite) and skipping its payload by length.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// A header seen in part.
    header: [u8; 14],
    header_len: u8,
    /// The stream stopped parsing as WebSocket frames; no boundary is known any more.
    lost: bool,
}

impl FrameTracker {
    /// Whether the bytes so far end exactly at a frame boundary.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.lost && self.payload_left == 0 && self.header_len == 0
    }

    /// Whether the stream was not WebSocket frames after all.
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    /// Consumes `data`, or only up to (and including) the first frame boundary in it when
    /// `stop_at_boundary`; returns how many bytes it consumed.
    pub(crate) fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut used = 0;
        while used < data.len() && !self.lost {
            if self.payload_left > 0 {
                let n = self.payload_left.min((data.len() - used) as u64);
                self.payload_left -= n;
                used += n as usize;
            } else {
                self.header[usize::from(self.header_len)] = data[used];
                self.header_len += 1;
                used += 1;
                match FrameHeader::parse(&mut Cursor::new(&self.header[..usize::from(self.header_len)])) {
                    Ok(Some((_, len))) => {
                        self.header_len = 0;
                        self.payload_left = len;
                    }
                    Ok(None) if usize::from(self.header_len) < self.header.len() => {}
                    _ => self.lost = true,
                }
            }
            if stop_at_boundary && self.at_boundary() {
                break;
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    fn frames() -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for (i, len) in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000].into_iter().enumerate() {
            let op = if i % 2 == 0 { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Text) };
            Frame::message(vec![b'a'; len], op, i != 3).format(&mut stream).unwrap();
            ends.push(stream.len());
        }
        stream.extend(going_away());
        ends.push(stream.len());
        (stream, ends)
    }

    #[test]
    fn boundaries_are_found_however_the_stream_is_split() {
        let (stream, ends) = frames();
        for chunk in [1, 2, 3, 7, 13, 100, 4_096, 65_537, stream.len()] {
            let mut t = FrameTracker::default();
            let mut found = Vec::new();
            let mut pos = 0;
            for piece in stream.chunks(chunk) {
                let mut at = 0;
                while at < piece.len() {
                    at += t.advance(&piece[at..], true);
                    if t.at_boundary() {
                        found.push(pos + at);
                    }
                }
                pos += piece.len();
            }
            found.dedup();
            assert_eq!(found, ends, "chunks of {chunk}");
            assert!(!t.lost());
        }
    }

    #[test]
    fn non_websocket_bytes_lose_the_boundary_for_good() {
        let mut t = FrameTracker::default();
        // Opcode 3 is reserved.
        t.advance(&[0x83, 0x00, 0x81, 0x00], false);
        assert!(t.lost() && !t.at_boundary());
    }

    #[test]
    fn drain_orders_are_spread_evenly_and_the_earliest_stands() {
        let registry = Arc::new(Registry::default());
        let pool = Arc::new(crate::state::PoolLive::new("p".into()));
        let live = Arc::new(crate::state::BackendLive::new(pool));
        let entries: Vec<TunnelEntry> = (0..4).map(|_| registry.register(&live)).collect();
        assert_eq!(live.tunnels(), 4);
        let now = Instant::now();
        assert_eq!(registry.drain(live.key(), Duration::from_millis(4_000), Duration::from_millis(9_000)), 4);
        let offsets: Vec<u128> =
            entries.iter().map(|e| e.order.close_at().unwrap().saturating_duration_since(now).as_millis()).collect();
        for (i, off) in offsets.iter().enumerate() {
            let expected = 1_000 * i as u128;
            assert!(off.abs_diff(expected) <= 50, "{offsets:?}");
        }
        let cut = entries[0].order.cut_at().unwrap();
        registry.drain(live.key(), Duration::from_secs(100), Duration::from_secs(100));
        assert_eq!(entries[0].order.cut_at(), Some(cut));
        drop(entries);
        assert_eq!((registry.len(), live.tunnels()), (0, 0));
    }

    #[test]
    fn a_drain_far_beyond_the_clock_does_not_overflow() {
        let registry = Arc::new(Registry::default());
        let pool = Arc::new(crate::state::PoolLive::new("p".into()));
        let live = Arc::new(crate::state::BackendLive::new(pool));
        let entry = registry.register(&live);
        assert_eq!(registry.drain(live.key(), Duration::MAX, Duration::MAX), 1);
        // The first close is due now; the cut lies beyond any clock reading.
        assert!(entry.order.close_at().is_some_and(|t| t <= Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn a_tunnel_registered_after_its_backends_drain_gets_the_order_it_missed() {
        let registry = Arc::new(Registry::default());
        let pool = Arc::new(crate::state::PoolLive::new("p".into()));
        let (live, other) =
            (Arc::new(crate::state::BackendLive::new(pool.clone())), Arc::new(crate::state::BackendLive::new(pool)));
        let now = Instant::now();
        // No tunnel open yet: the drain finds none, and remembers itself.
        assert_eq!(registry.drain(live.key(), Duration::from_secs(4), Duration::from_secs(9)), 0);
        let late = registry.register(&live);
        let close = late.order.close_at().expect("a close order").saturating_duration_since(now);
        let cut = late.order.cut_at().expect("a cut order").saturating_duration_since(now);
        assert!(close.abs_diff(Duration::from_secs(4)) < Duration::from_millis(100), "{close:?}");
        assert!(cut.abs_diff(Duration::from_secs(9)) < Duration::from_millis(100), "{cut:?}");
        // Another backend's tunnels are not touched.
        assert_eq!(registry.register(&other).order.cut_at(), None);
        // Undrained (or recovered): its new tunnels are left alone, the ordered one keeps its order.
        registry.undrain(live.key());
        assert_eq!(registry.register(&live).order.cut_at(), None);
        assert!(late.order.cut_at().is_some());
        // A drain whose deadline has passed is forgotten.
        registry.drain(live.key(), Duration::ZERO, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(registry.register(&live).order.cut_at(), None);
    }

    #[test]
    fn a_drain_counts_the_tunnels_still_upgrading_and_they_get_its_order() {
        let registry = Arc::new(Registry::default());
        let live = Arc::new(crate::state::BackendLive::new(Arc::new(crate::state::PoolLive::new("p".into()))));
        let (open, upgrading, failed) = (registry.register(&live), registry.expect(&live), registry.expect(&live));
        drop(failed);
        assert_eq!(registry.drain(live.key(), Duration::ZERO, Duration::from_secs(9)), 2);
        let late = upgrading.register();
        for e in [&open, &late] {
            assert!(e.order.cut_at().is_some(), "{e:?}");
        }
        assert_eq!((registry.len(), live.tunnels()), (2, 2));
        drop((open, late));
        assert_eq!(registry.drain(live.key(), Duration::ZERO, Duration::from_secs(9)), 0);
        assert!(registry.lock().upgrading.is_empty());
    }

    #[test]
    fn a_tunnel_registered_after_an_abort_is_cut_at_once() {
        let registry = Arc::new(Registry::default());
        let live = Arc::new(crate::state::BackendLive::new(Arc::new(crate::state::PoolLive::new("p".into()))));
        let open = registry.register(&live);
        assert_eq!(registry.cut_all(), 1);
        let late = registry.register(&live);
        for e in [&open, &late] {
            assert!(e.order.cut_at().is_some_and(|t| t <= Instant::now()));
        }
    }

    /// Feeds `stream` to a tracker in pieces cut at `cuts` (positions, any order, may
    /// repeat or pass the end), stopping at each boundary; returns the boundary positions
    /// seen and the tracker.
    fn feed(stream: &[u8], cuts: &[usize]) -> (Vec<usize>, FrameTracker) {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).chain([stream.len()]).collect();
        cuts.sort_unstable();
        let mut t = FrameTracker::default();
        let mut found = Vec::new();
        let mut pos = 0;
        for end in cuts {
            while pos < end {
                let used = t.advance(&stream[pos..end], true);
                assert!(used <= end - pos);
                pos += used;
                if t.at_boundary() {
                    found.push(pos);
                }
                if t.lost() {
                    return (found, t);
                }
                assert!(used > 0, "no progress at {pos}");
            }
        }
        (found, t)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_split_anywhere_give_the_same_boundaries(
            stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let (whole, t) = feed(&stream, &[]);
            let (split, u) = feed(&stream, &cuts);
            proptest::prop_assert_eq!(whole, split);
            proptest::prop_assert_eq!((t.at_boundary(), t.lost()), (u.at_boundary(), u.lost()));
        }

        #[test]
        fn frames_split_anywhere_end_exactly_where_they_end(
            frames in proptest::collection::vec((0usize..300, 0u8..3, proptest::prelude::any::<bool>()), 1..8),
            cuts in proptest::collection::vec(0usize..3_000, 0..8),
        ) {
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for (len, kind, fin) in frames {
                let op = match kind {
                    0 => OpCode::Data(Data::Binary),
                    1 => OpCode::Data(Data::Text),
                    _ => OpCode::Data(Data::Continue),
                };
                Frame::message(vec![7; len], op, fin).format(&mut stream).unwrap();
                ends.push(stream.len());
            }
            let (found, t) = feed(&stream, &cuts);
            proptest::prop_assert_eq!(found, ends);
            proptest::prop_assert!(t.at_boundary() && !t.lost());
        }
    }

    #[test]
    fn drains_at_the_longest_bounds_neither_overflow_nor_wrap() {
        let max = *crate::config::bounds::DRAIN.end();
        let registry = Arc::new(Registry::default());
        let live = Arc::new(crate::state::BackendLive::new(Arc::new(crate::state::PoolLive::new("p".into()))));
        let entries: Vec<TunnelEntry> = (0..3).map(|_| registry.register(&live)).collect();
        let now = Instant::now();
        assert_eq!(registry.drain(live.key(), max, max), 3);
        for (i, e) in entries.iter().enumerate() {
            let close = e.order.close_at().unwrap().saturating_duration_since(now);
            let want = max * i as u32 / 3;
            assert!(close.abs_diff(want) < Duration::from_secs(1), "{i}: {close:?}");
            let cut = e.order.cut_at().unwrap().saturating_duration_since(now);
            assert!(cut.abs_diff(max) < Duration::from_secs(1), "{cut:?}");
        }
        // The shortest: every close at once, cut at once.
        let e = registry.register(&live);
        registry.drain(live.key(), Duration::ZERO, Duration::ZERO);
        assert!(e.order.close_at().unwrap() <= Instant::now() && e.order.cut_at().unwrap() <= Instant::now());
    }
}
