//! A revision at run time: its endpoints with their in-flight counts, the breaker that keeps
//! every endpoint within `container_concurrency`, and the FIFO hold queue of requests waiting
//! for capacity (scale from zero).
//!
//! The fast path (an endpoint has a free slot and nobody is queued) is lock-free: one ArcSwap
//! load and a compare-and-swap on the endpoint's counter. The queue's mutex is taken only when
//! a request must wait, when a slot is freed while someone waits, and when endpoints change.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;
use weir_config::model::Protocol;

use crate::metrics::Metrics;
use crate::stats::RevisionStats;

/// One backend address of a revision and the requests it has in flight through this proxy.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    in_flight: AtomicU32,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            addr,
            in_flight: AtomicU32::new(0),
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot if fewer than `cc` are in flight (`cc` 0 = unlimited).
    #[inline]
    fn try_take(&self, cc: u32) -> bool {
        if cc == 0 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cc).then_some(n + 1)
            })
            .is_ok()
    }
}

/// How a revision is served, from its config (and the config's `hold` and `autoscaler`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub container_concurrency: u32,
    /// How long a request may be held.
    pub timeout: Duration,
    pub protocol: Protocol,
    pub queue_depth: usize,
    /// Memory the requests held for this revision may take (`limits.held_memory_per_revision`).
    pub held_memory: u64,
    /// At most one autoscaler poke per revision per this interval.
    pub poke_interval: Duration,
}

/// The (namespace, revision) of each poke.
pub type PokeReceiver = tokio::sync::mpsc::UnboundedReceiver<(Arc<str>, Arc<str>)>;

/// Where scale-from-zero pokes go: the autoscaler reporter takes the receiving end once
/// ([`Pokes::take`]); until then (or without a reporter) a poke goes nowhere.
#[derive(Debug)]
pub struct Pokes {
    tx: tokio::sync::mpsc::UnboundedSender<(Arc<str>, Arc<str>)>,
    rx: Mutex<Option<PokeReceiver>>,
}

impl Default for Pokes {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Pokes {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Pokes {
    /// The (namespace, revision) of every poke from now on; `None` once taken.
    pub fn take(&self) -> Option<PokeReceiver> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn send(&self, namespace: &Arc<str>, name: &Arc<str>) {
        // Nobody took the receiver (no reporter): the queue would only grow, so do not send.
        if self.rx.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            let _ = self.tx.send((namespace.clone(), name.clone()));
        }
    }
}

/// What every revision of a process shares: metrics, the held-request budget, the pokes.
#[derive(Clone, Default)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub held_memory: Arc<HeldMemory>,
    pub pokes: Arc<Pokes>,
}

/// What a held request is counted as, besides its buffered body: its connection, pingora
/// session and task while it waits (measured with `benches/hold_memory.py`).
pub const HELD_REQUEST_COST: u64 = 16 * 1024;

/// The memory all held requests take together, against `limits.held_memory`; shared by
/// every revision of a process.
#[derive(Debug, Default)]
pub struct HeldMemory {
    used: AtomicU64,
    limit: AtomicU64,
}

impl HeldMemory {
    pub fn set_limit(&self, bytes: u64) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit.
    fn charge(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= limit || limit == 0).then_some(u + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A revision's endpoints and settings; replaced whole on every update.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Box<[Arc<Endpoint>]>,
    /// Some declared endpoint name resolved to no address: with no endpoint at all, requests
    /// fail at once (502) rather than wait as if the revision were scaled to zero.
    pub unresolved: bool,
    /// Removed endpoints that still had requests in flight. Never picked; kept so that an
    /// endpoint that flaps back is the same object with its in-flight count, and
    /// `container_concurrency` holds across the flap.
    retired: Box<[Arc<Endpoint>]>,
    pub settings: Settings,
}

/// Why a request could not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    /// `hold.queue_depth` requests are already waiting: 503.
    QueueFull,
    /// Waited the revision's timeout: 504.
    Timeout,
    /// No endpoint because its names do not resolve: 502 at once.
    Unresolved,
    /// Held requests of the whole process take `limits.held_memory`: 503 with
    /// `Retry-After` (overload), without waiting.
    Overloaded,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Slot>,
}

/// Per-revision metric handles, created on first use.
#[derive(Default)]
struct Handles {
    in_flight: OnceLock<IntGauge>,
    held: OnceLock<IntGauge>,
    duration: OnceLock<Histogram>,
    hold_duration: OnceLock<Histogram>,
    ok: OnceLock<IntCounter>,
}

pub struct Revision {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub namespace_value: HeaderValue,
    pub name_value: HeaderValue,
    set: ArcSwap<EndpointSet>,
    /// The endpoints as declared (names unresolved), for the DNS refresh.
    declared: Mutex<Arc<[weir_config::EndpointSpec]>>,
    rr: AtomicUsize,
    /// Requests in the queue; read without the lock to keep the fast path lock-free.
    waiting: AtomicUsize,
    /// Memory the held requests of this revision take (their [`HELD_REQUEST_COST`] and
    /// bodies).
    held_bytes: AtomicU64,
    /// The process-wide budget of held requests.
    held_memory: Arc<HeldMemory>,
    queue: Mutex<VecDeque<Waiter>>,
    next_waiter: AtomicU64,
    /// Milliseconds since `epoch` of the last poke; `u64::MAX` = never.
    last_poke: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
    pokes: Arc<Pokes>,
    handles: Handles,
    /// Time-weighted concurrency for the autoscaler and `/v1/stats`.
    pub stats: RevisionStats,
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Revision({}/{})", self.namespace, self.name)
    }
}

/// A taken slot on one endpoint. Dropping it frees the slot and lets a held request go.
pub struct Slot {
    endpoint: Arc<Endpoint>,
    /// The revision's protocol in the endpoint set the slot came from.
    pub protocol: Protocol,
    revision: Arc<Revision>,
    /// When disarmed, dropping frees the count but does not dispatch to waiters: used inside
    /// the queue lock, where dispatching again would deadlock.
    armed: bool,
}

impl Slot {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.revision.in_flight_gauge().dec();
        if self.armed && self.revision.waiting.load(Ordering::SeqCst) > 0 {
            self.revision.dispatch();
        }
    }
}

impl Revision {
    pub fn new(namespace: &str, name: &str, settings: Settings, shared: &Shared) -> Arc<Revision> {
        let set = EndpointSet {
            endpoints: Box::new([]),
            unresolved: false,
            retired: Box::new([]),
            settings,
        };
        Arc::new(Revision {
            namespace: namespace.into(),
            name: name.into(),
            namespace_value: HeaderValue::from_str(namespace)
                .unwrap_or(HeaderValue::from_static("")),
            name_value: HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("")),
            set: ArcSwap::from_pointee(set),
            declared: Mutex::new(Arc::new([])),
            rr: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            held_bytes: AtomicU64::new(0),
            held_memory: shared.held_memory.clone(),
            queue: Mutex::new(VecDeque::new()),
            next_waiter: AtomicU64::new(0),
            last_poke: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            metrics: shared.metrics.clone(),
            pokes: shared.pokes.clone(),
            handles: Handles::default(),
            stats: RevisionStats::default(),
        })
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    pub fn endpoint_set(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// The endpoints as last declared (names not resolved).
    pub fn declared(&self) -> Arc<[weir_config::EndpointSpec]> {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_declared(&self, endpoints: impl Into<Arc<[weir_config::EndpointSpec]>>) {
        *self.declared.lock().unwrap_or_else(|p| p.into_inner()) = endpoints.into();
    }

    /// Replaces the endpoint set, keeping the in-flight counts of addresses that stay, and
    /// releases held requests onto any new capacity.
    pub fn update(self: &Arc<Self>, addrs: &[SocketAddr], settings: Settings) {
        self.update_resolved(addrs, false, settings)
    }

    /// [`Revision::update`], saying whether some declared name resolved to nothing.
    pub fn update_resolved(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
        unresolved: bool,
        settings: Settings,
    ) {
        let old = self.set.load();
        let known = || old.endpoints.iter().chain(old.retired.iter());
        let endpoints: Box<[Arc<Endpoint>]> = addrs
            .iter()
            .map(|a| {
                known()
                    .find(|e| e.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(*a))
            })
            .collect();
        let retired: Box<[Arc<Endpoint>]> = known()
            .filter(|e| e.in_flight() > 0 && !addrs.contains(&e.addr))
            .cloned()
            .collect();
        self.set.store(Arc::new(EndpointSet {
            endpoints,
            unresolved,
            retired,
            settings,
        }));
        self.dispatch();
    }

    /// Requests held right now.
    pub fn held(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Requests in flight to this revision's current endpoints.
    pub fn in_flight(&self) -> u64 {
        self.set
            .load()
            .endpoints
            .iter()
            .map(|e| u64::from(e.in_flight()))
            .sum()
    }

    /// Whether a request would wait now: someone is queued, or no endpoint has a free slot
    /// (none at all: scaled to zero).
    pub fn would_hold(&self) -> bool {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let set = self.set.load();
        let cc = set.settings.container_concurrency;
        !set.endpoints.iter().any(|e| cc == 0 || e.in_flight() < cc)
    }

    /// Takes a slot now if one is free and nobody is queued ahead.
    pub fn try_acquire(self: &Arc<Self>, avoid: &[SocketAddr]) -> Option<Slot> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.take(avoid).map(|(endpoint, protocol)| Slot {
            endpoint,
            protocol,
            revision: self.clone(),
            armed: true,
        })
    }

    /// Takes a slot on the endpoint at `addr` if it exists, has a free slot and nobody is
    /// queued (instance affinity: best effort).
    pub fn try_acquire_at(self: &Arc<Self>, addr: SocketAddr) -> Option<Slot> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let set = self.set.load();
        let endpoint = set.endpoints.iter().find(|e| e.addr == addr)?;
        if !endpoint.try_take(set.settings.container_concurrency) {
            return None;
        }
        self.in_flight_gauge().inc();
        Some(Slot {
            endpoint: endpoint.clone(),
            protocol: set.settings.protocol,
            revision: self.clone(),
            armed: true,
        })
    }

    /// Takes a slot, waiting in the FIFO queue up to the revision's timeout when none is free.
    /// `avoid` lists endpoints that just failed to connect; they are used only as a last resort.
    /// A waiting request counts [`HELD_REQUEST_COST`] plus `body` bytes against the
    /// revision's and the process's held-memory budgets while it waits.
    pub async fn acquire(
        self: &Arc<Self>,
        avoid: &[SocketAddr],
        body: u64,
    ) -> Result<Slot, HoldError> {
        if let Some(slot) = self.try_acquire(avoid) {
            return Ok(slot);
        }
        let set = self.set.load_full();
        if set.unresolved && set.endpoints.is_empty() {
            return Err(HoldError::Unresolved);
        }
        let cost = HELD_REQUEST_COST + body;
        let fits = self
            .held_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + cost <= set.settings.held_memory).then_some(u + cost)
            })
            .is_ok();
        if !fits {
            self.outcome("rejected");
            return Err(HoldError::QueueFull);
        }
        if !self.held_memory.charge(cost) {
            self.held_bytes.fetch_sub(cost, Ordering::AcqRel);
            self.outcome("rejected");
            return Err(HoldError::Overloaded);
        }
        let _charged = Charge {
            revision: self,
            bytes: cost,
        };
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= set.settings.queue_depth {
                drop(q);
                self.outcome("rejected");
                return Err(HoldError::QueueFull);
            }
            q.push_back(Waiter { id, tx });
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        let held_gauge = self.held_gauge();
        held_gauge.inc();
        if set.endpoints.is_empty() {
            self.maybe_poke();
        }
        // A slot may have been freed between the failed try and the enqueue.
        self.dispatch();

        let start = Instant::now();
        let mut guard = LeaveQueue {
            revision: self,
            id,
            rx,
            done: false,
        };
        let res = tokio::time::timeout(set.settings.timeout, &mut guard.rx).await;
        guard.done = true;
        held_gauge.dec();
        self.hold_histogram().observe(start.elapsed().as_secs_f64());
        match res {
            Ok(Ok(slot)) => {
                self.outcome("released");
                Ok(self.arm(slot))
            }
            _ => {
                self.leave(id);
                // The slot may have been handed over just as the timer fired: use it.
                match guard.rx.try_recv() {
                    Ok(slot) => {
                        self.outcome("released");
                        Ok(self.arm(slot))
                    }
                    Err(_) => {
                        self.outcome("timed_out");
                        Err(HoldError::Timeout)
                    }
                }
            }
        }
    }

    fn arm(&self, mut slot: Slot) -> Slot {
        slot.armed = true;
        slot
    }

    /// Removes waiter `id` from the queue if it is still there.
    fn leave(&self, id: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pos) = q.iter().position(|w| w.id == id) {
            q.remove(pos);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Hands free slots to waiters in arrival order.
    pub fn dispatch(self: &Arc<Self>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(front) = q.front() {
            if front.tx.is_closed() {
                q.pop_front();
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let Some((endpoint, protocol)) = self.take(&[]) else {
                break;
            };
            let w = q.pop_front().expect("front exists");
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            // Disarmed: if the waiter vanished, dropping only frees the count (no re-entry).
            let _ = w.tx.send(Slot {
                endpoint,
                protocol,
                revision: self.clone(),
                armed: false,
            });
        }
    }

    /// Picks an endpoint with a free slot and takes it.
    fn take(&self, avoid: &[SocketAddr]) -> Option<(Arc<Endpoint>, Protocol)> {
        let set = self.set.load();
        let eps = &set.endpoints;
        if eps.is_empty() {
            return None;
        }
        let cc = set.settings.container_concurrency;
        // Endpoints that just failed are tried last.
        let usable = |e: &Arc<Endpoint>| !avoid.contains(&e.addr);
        let pick = match cc {
            0 => self
                .pick_p2c(eps, &usable)
                .or_else(|| self.pick_p2c(eps, &|_| true)),
            1..=3 => first_free(eps, cc, &usable).or_else(|| first_free(eps, cc, &|_| true)),
            _ => self
                .round_robin(eps, cc, &usable)
                .or_else(|| self.round_robin(eps, cc, &|_| true)),
        };
        let taken = pick.cloned()?;
        self.in_flight_gauge().inc();
        Some((taken, set.settings.protocol))
    }

    /// Power of two choices by in-flight count (container concurrency 0: no limit).
    fn pick_p2c<'a>(
        &self,
        eps: &'a [Arc<Endpoint>],
        usable: &dyn Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = eps.len();
        let chosen = if n == 1 {
            usable(&eps[0]).then_some(&eps[0])
        } else {
            let a = rand::random_range(0..n);
            let b = (a + 1 + rand::random_range(0..n - 1)) % n;
            let (ea, eb) = (&eps[a], &eps[b]);
            match (usable(ea), usable(eb)) {
                (true, true) => Some(if eb.in_flight() < ea.in_flight() {
                    eb
                } else {
                    ea
                }),
                (true, false) => Some(ea),
                (false, true) => Some(eb),
                (false, false) => eps.iter().find(|e| usable(e)),
            }
        }?;
        chosen.try_take(0);
        Some(chosen)
    }

    /// Round robin over endpoints with a free slot (container concurrency above 3).
    fn round_robin<'a>(
        &self,
        eps: &'a [Arc<Endpoint>],
        cc: u32,
        usable: &dyn Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = eps.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &eps[(start + i) % n])
            .find(|e| usable(e) && e.try_take(cc))
    }

    /// Signals the autoscaler that a revision at zero has demand, at most once per reporting
    /// interval.
    fn maybe_poke(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_poke.load(Ordering::Relaxed);
        let interval = self.set.load().settings.poke_interval.as_millis() as u64;
        if last != u64::MAX && now.saturating_sub(last) < interval {
            return;
        }
        if self
            .last_poke
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            log::info!(
                "revision {}/{} has no endpoint and a held request: poking the autoscaler",
                self.namespace,
                self.name
            );
            self.metrics
                .pokes
                .with_label_values(&[&self.namespace, &self.name])
                .inc();
            self.pokes.send(&self.namespace, &self.name);
        }
    }

    fn outcome(&self, outcome: &str) {
        self.metrics
            .hold_outcomes
            .with_label_values(&[&self.namespace, &self.name, outcome])
            .inc();
    }

    fn labels(&self) -> [&str; 2] {
        [&self.namespace, &self.name]
    }

    pub fn in_flight_gauge(&self) -> &IntGauge {
        self.handles
            .in_flight
            .get_or_init(|| self.metrics.in_flight.with_label_values(&self.labels()))
    }

    fn held_gauge(&self) -> &IntGauge {
        self.handles
            .held
            .get_or_init(|| self.metrics.held.with_label_values(&self.labels()))
    }

    fn hold_histogram(&self) -> &Histogram {
        self.handles
            .hold_duration
            .get_or_init(|| self.metrics.hold_duration.with_label_values(&self.labels()))
    }

    pub fn duration_histogram(&self) -> &Histogram {
        self.handles.duration.get_or_init(|| {
            self.metrics
                .request_duration
                .with_label_values(&self.labels())
        })
    }

    /// `weir_requests_total` for this revision; the 200 series is cached.
    pub fn count_response(&self, code: u16) {
        if code == 200 {
            self.handles
                .ok
                .get_or_init(|| {
                    self.metrics
                        .request_counter(&self.namespace, &self.name, 200)
                })
                .inc();
        } else {
            self.metrics
                .request_counter(&self.namespace, &self.name, code)
                .inc();
        }
    }
}

/// First endpoint with a free slot (container concurrency 1-3).
fn first_free<'a>(
    eps: &'a [Arc<Endpoint>],
    cc: u32,
    usable: &dyn Fn(&Arc<Endpoint>) -> bool,
) -> Option<&'a Arc<Endpoint>> {
    eps.iter().find(|e| usable(e) && e.try_take(cc))
}

/// The held-memory charge of one waiting request, given back when it stops waiting however
/// that happens (released, timed out, cancelled).
struct Charge<'a> {
    revision: &'a Revision,
    bytes: u64,
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.revision
            .held_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.revision.held_memory.release(self.bytes);
    }
}

/// Leaves the queue when the waiting future is dropped (the client went away), and passes on
/// a slot that was handed over in that instant, so the next waiter is not stalled.
struct LeaveQueue<'a> {
    revision: &'a Arc<Revision>,
    id: u64,
    rx: oneshot::Receiver<Slot>,
    done: bool,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.revision.leave(self.id);
        self.revision.held_gauge().dec();
        self.revision.outcome("cancelled");
        if let Ok(slot) = self.rx.try_recv() {
            drop(self.revision.arm(slot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cc: u32, timeout_ms: u64, depth: usize) -> Settings {
        Settings {
            container_concurrency: cc,
            timeout: Duration::from_millis(timeout_ms),
            protocol: Protocol::Http1,
            queue_depth: depth,
            held_memory: u64::MAX,
            poke_interval: Duration::from_secs(1),
        }
    }

    fn rev(addrs: &[&str], cc: u32, timeout_ms: u64, depth: usize) -> Arc<Revision> {
        let r = Revision::new(
            "default",
            "r1",
            settings(cc, timeout_ms, depth),
            &Shared::default(),
        );
        let a: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        r.update(&a, settings(cc, timeout_ms, depth));
        r
    }

    #[test]
    fn concurrency_limit_holds() {
        let r = rev(&["127.0.0.1:1", "127.0.0.1:2"], 1, 1000, 10);
        let a = r.try_acquire(&[]).unwrap();
        let b = r.try_acquire(&[]).unwrap();
        assert_ne!(a.addr(), b.addr());
        assert!(r.try_acquire(&[]).is_none());
        drop(a);
        assert!(r.try_acquire(&[]).is_some());
    }

    #[test]
    fn avoid_prefers_other_endpoints() {
        let r = rev(&["127.0.0.1:1", "127.0.0.1:2"], 0, 1000, 10);
        let avoid: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..50 {
            assert_ne!(r.try_acquire(&[avoid]).unwrap().addr(), avoid);
        }
        let only = rev(&["127.0.0.1:1"], 0, 1000, 10);
        assert_eq!(only.try_acquire(&[avoid]).unwrap().addr(), avoid);
    }

    #[test]
    fn round_robin_over_free_endpoints() {
        let r = rev(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], 4, 1000, 10);
        let mut seen = std::collections::HashSet::new();
        let slots: Vec<_> = (0..12).map(|_| r.try_acquire(&[]).unwrap()).collect();
        for s in &slots {
            seen.insert(s.addr());
        }
        assert_eq!(seen.len(), 3);
        assert!(
            r.try_acquire(&[]).is_none(),
            "3 endpoints x cc 4 = 12 slots"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_are_released_in_order_when_endpoints_appear() {
        let r = rev(&[], 1, 60_000, 10);
        let mut tasks = Vec::new();
        for i in 0..3 {
            let r2 = r.clone();
            tasks.push(tokio::spawn(async move {
                let s = r2.acquire(&[], 0).await.unwrap();
                (i, s.addr())
            }));
            while r.held() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(r.held(), 3);
        let addrs: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        r.update(&addrs, settings(1, 60_000, 10));
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        assert_eq!(r.held(), 0);
        // First come, first served: with cc 1 and first-free picking, request i gets endpoint i.
        for (i, addr) in got {
            assert_eq!(addr, addrs[i]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queue_full_and_timeout() {
        let r = rev(&[], 1, 1000, 2);
        let r1 = r.clone();
        let h1 = tokio::spawn(async move { r1.acquire(&[], 0).await.map(|_| ()) });
        let r2 = r.clone();
        let h2 = tokio::spawn(async move { r2.acquire(&[], 0).await.map(|_| ()) });
        while r.held() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(r.acquire(&[], 0).await.err(), Some(HoldError::QueueFull));
        assert_eq!(h1.await.unwrap(), Err(HoldError::Timeout));
        assert_eq!(h2.await.unwrap(), Err(HoldError::Timeout));
        assert_eq!(r.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let r = rev(&[], 1, 60_000, 10);
        let r1 = r.clone();
        let h = tokio::spawn(async move { r1.acquire(&[], 0).await.map(|_| ()) });
        while r.held() < 1 {
            tokio::task::yield_now().await;
        }
        h.abort();
        let _ = h.await;
        assert_eq!(r.held(), 0);
        // The freed place is usable and a new endpoint goes to nobody stale.
        r.update(&["127.0.0.1:1".parse().unwrap()], settings(1, 60_000, 10));
        assert!(r.try_acquire(&[]).is_some());
    }

    #[test]
    fn an_endpoint_that_flaps_keeps_its_in_flight_count() {
        let r = rev(&["127.0.0.1:1"], 1, 1000, 10);
        let busy = r.try_acquire(&[]).unwrap();
        r.update(&[], settings(1, 1000, 10));
        r.update(&["127.0.0.1:1".parse().unwrap()], settings(1, 1000, 10));
        assert!(r.try_acquire(&[]).is_none(), "the slot is still taken");
        drop(busy);
        assert!(r.try_acquire(&[]).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_first_waiter() {
        let r = rev(&["127.0.0.1:1"], 1, 60_000, 10);
        let busy = r.try_acquire(&[]).unwrap();
        let r1 = r.clone();
        let h = tokio::spawn(async move { r1.acquire(&[], 0).await.map(|s| s.addr()) });
        while r.held() < 1 {
            tokio::task::yield_now().await;
        }
        // A newcomer does not jump the queue.
        assert!(r.try_acquire(&[]).is_none());
        drop(busy);
        assert_eq!(h.await.unwrap().unwrap(), "127.0.0.1:1".parse().unwrap());
    }
}
