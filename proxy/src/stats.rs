//! Per-revision concurrency accounting for the autoscaler (Knative's stat semantics).
//!
//! Average concurrency over a window is the time integral of requests in flight (held ones
//! included) divided by the window. The integral is kept exactly and lock-free: the current
//! concurrency and the time of its last change share one atomic word, so every interval
//! between two changes is added to the area exactly once, with the concurrency that held
//! during it. A report closes the interval up to "now" the same way and takes the area.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bits of the packed word that hold the concurrency; the rest is microseconds since `epoch`.
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TIME_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// Time-weighted concurrency of one kind of request (all, or proxied by an activator).
#[derive(Debug)]
struct Gauge {
    /// `(micros << COUNT_BITS) | concurrency`
    packed: AtomicU64,
    /// Sum of concurrency × microseconds since the last report.
    area: AtomicU64,
    /// Requests that arrived since the last report.
    arrivals: AtomicU64,
}

impl Gauge {
    fn new() -> Gauge {
        Gauge {
            packed: AtomicU64::new(0),
            area: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
        }
    }

    /// Applies `delta` to the concurrency at time `now_us`, accounting the interval before.
    #[inline]
    fn step(&self, now_us: u64, delta: i64) {
        let mut cur = self.packed.load(Ordering::Acquire);
        loop {
            let count = cur & COUNT_MASK;
            let last = cur >> COUNT_BITS;
            // Time is kept modulo 2^44 µs (~200 days); spans are short, so modular
            // differences are exact. Clocks read on different threads may be slightly out
            // of order: a time "behind" the last one counts as no time passing.
            let diff = now_us.wrapping_sub(last) & TIME_MASK;
            let (t, span) = if diff > TIME_MASK / 2 {
                (last, 0)
            } else {
                (now_us & TIME_MASK, diff)
            };
            let next_count = (count as i64 + delta).clamp(0, COUNT_MASK as i64) as u64;
            let next = (t << COUNT_BITS) | next_count;
            match self
                .packed
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if count > 0 && span > 0 {
                        self.area.fetch_add(count * span, Ordering::AcqRel);
                    }
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn concurrency(&self) -> u64 {
        self.packed.load(Ordering::Acquire) & COUNT_MASK
    }
}

/// One revision's figures for one window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub average_concurrency: f64,
    pub average_proxied_concurrency: f64,
    pub requests: u64,
    pub proxied_requests: u64,
    /// In flight (held included) at the end of the window.
    pub concurrency: u64,
}

impl Window {
    /// Whether the revision saw any traffic in the window (Knative reports only those).
    pub fn active(&self) -> bool {
        self.requests > 0 || self.average_concurrency > 0.0 || self.concurrency > 0
    }
}

/// The accounting of one revision.
#[derive(Debug)]
pub struct RevisionStats {
    epoch: Instant,
    all: Gauge,
    proxied: Gauge,
    /// Microseconds since `epoch` at the last report.
    window_start: AtomicU64,
    last: std::sync::Mutex<Window>,
}

impl Default for RevisionStats {
    fn default() -> Self {
        RevisionStats::new(Instant::now())
    }
}

impl RevisionStats {
    pub fn new(epoch: Instant) -> RevisionStats {
        RevisionStats {
            epoch,
            all: Gauge::new(),
            proxied: Gauge::new(),
            window_start: AtomicU64::new(0),
            last: std::sync::Mutex::new(Window::default()),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A request for this revision starts (before it may be held).
    #[inline]
    pub fn begin(&self, proxied: bool) {
        let now = self.now_us();
        self.all.step(now, 1);
        self.all.arrivals.fetch_add(1, Ordering::Relaxed);
        if proxied {
            self.proxied.step(now, 1);
            self.proxied.arrivals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request ends (answered, failed or abandoned).
    #[inline]
    pub fn end(&self, proxied: bool) {
        let now = self.now_us();
        self.all.step(now, -1);
        if proxied {
            self.proxied.step(now, -1);
        }
    }

    /// Closes the window at "now": returns its figures and starts the next one.
    pub fn take_window(&self) -> Window {
        self.take_window_at(self.now_us())
    }

    fn take_window_at(&self, now: u64) -> Window {
        self.all.step(now, 0);
        self.proxied.step(now, 0);
        let start = self.window_start.swap(now, Ordering::AcqRel);
        let span = now.saturating_sub(start).max(1) as f64;
        let w = Window {
            average_concurrency: self.all.area.swap(0, Ordering::AcqRel) as f64 / span,
            average_proxied_concurrency: self.proxied.area.swap(0, Ordering::AcqRel) as f64 / span,
            requests: self.all.arrivals.swap(0, Ordering::AcqRel),
            proxied_requests: self.proxied.arrivals.swap(0, Ordering::AcqRel),
            concurrency: self.all.concurrency(),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = w;
        w
    }

    /// The figures of the last closed window.
    pub fn last_window(&self) -> Window {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// In flight (held included) right now.
    pub fn concurrency(&self) -> u64 {
        self.all.concurrency()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the gauge with explicit times (microseconds).
    fn at(s: &RevisionStats, t: u64, delta: i64) {
        s.all.step(t, delta);
        if delta > 0 {
            s.all.arrivals.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn two_half_window_requests_average_one() {
        let s = RevisionStats::new(Instant::now());
        // Two 500 ms requests in a 1 s window, overlapping or not, give 1.0.
        at(&s, 0, 1);
        at(&s, 500_000, -1);
        at(&s, 500_000, 1);
        at(&s, 1_000_000, -1);
        let w = s.take_window_at(1_000_000);
        assert!((w.average_concurrency - 1.0).abs() < 1e-9, "{w:?}");
        assert_eq!(w.requests, 2);
    }

    #[test]
    fn steady_requests_carry_into_the_next_window() {
        let s = RevisionStats::new(Instant::now());
        for _ in 0..4 {
            at(&s, 0, 1);
        }
        let w1 = s.take_window_at(1_000_000);
        assert!((w1.average_concurrency - 4.0).abs() < 1e-9);
        assert_eq!(w1.requests, 4);
        let w2 = s.take_window_at(2_000_000);
        assert!((w2.average_concurrency - 4.0).abs() < 1e-9);
        assert_eq!(w2.requests, 0, "arrivals count once");
        assert!(w2.active());
        for _ in 0..4 {
            at(&s, 2_500_000, -1);
        }
        let w3 = s.take_window_at(3_000_000);
        assert!((w3.average_concurrency - 2.0).abs() < 1e-9);
        let w4 = s.take_window_at(4_000_000);
        assert!(!w4.active());
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let s = std::sync::Arc::new(RevisionStats::new(Instant::now()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        s.begin(false);
                        s.end(false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let w = s.take_window();
        assert_eq!(w.requests, 40_000);
        assert_eq!(w.concurrency, 0);
    }
}
