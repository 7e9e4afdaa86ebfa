//! The live status page: `GET /` on the admin listener serves one self-contained HTML page
//! (no external assets, so it works in an air-gapped cluster), which polls `GET /v1/status`.
//!
//! This module owns what the page shows that nothing else keeps: the last applied update
//! (source and time), the last config rejections with their errors, the connection state of
//! xDS and the autoscaler, and a short concurrency history per revision, sampled every
//! [`SAMPLE_INTERVAL`] by [`sample`] on the admin runtime (only revisions that saw requests
//! in the window keep a history, so 100,000 idle revisions cost nothing).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use weir_config::hosts::service_hosts;
use weir_config::objects::Key;

use crate::state::State;

/// The page itself.
pub const PAGE: &str = include_str!("status.html");

/// How often each revision's concurrency is sampled for the page's charts.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per revision (2 minutes).
const SAMPLES: usize = 60;
/// Rejected updates kept, newest last.
const REJECTIONS: usize = 10;
/// Largest page of routes or revisions `/v1/status` answers.
pub const MAX_LIMIT: usize = 500;

/// What the status page shows that the config and metrics do not keep.
#[derive(Default)]
pub struct Status {
    applied: Mutex<Option<Applied>>,
    rejections: Mutex<VecDeque<Rejection>>,
    /// `--xds` URL, once set up.
    pub xds_url: OnceLock<String>,
    /// Autoscaler URL, once set up, and whether its connection is up.
    pub autoscaler_url: OnceLock<String>,
    pub autoscaler_connected: AtomicBool,
    history: Mutex<HashMap<Key, VecDeque<f32>>>,
}

struct Applied {
    generation: u64,
    source: &'static str,
    at: SystemTime,
}

struct Rejection {
    source: &'static str,
    at: SystemTime,
    errors: Vec<String>,
}

impl Status {
    pub fn applied(&self, generation: u64, source: &'static str) {
        *lock(&self.applied) = Some(Applied {
            generation,
            source,
            at: SystemTime::now(),
        });
    }

    pub fn rejected(&self, source: &'static str, errors: Vec<String>) {
        let mut r = lock(&self.rejections);
        if r.len() == REJECTIONS {
            r.pop_front();
        }
        r.push_back(Rejection {
            source,
            at: SystemTime::now(),
            errors,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Samples every revision's concurrency every [`SAMPLE_INTERVAL`], for ever.
pub async fn sample(state: Arc<State>) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = state.snapshot();
        let mut history = lock(&state.status.history);
        for (key, rev) in snap.revisions.iter() {
            let now = rev.stats.concurrency() as f32;
            match history.get_mut(key) {
                Some(ring) => {
                    if ring.len() == SAMPLES {
                        ring.pop_front();
                    }
                    ring.push_back(now);
                }
                None if now > 0.0 => {
                    history.insert(key.clone(), VecDeque::from([now]));
                }
                None => {}
            }
        }
        // Forget revisions that are gone or were idle for the whole window.
        history.retain(|k, ring| snap.revisions.get(k).is_some() && ring.iter().any(|&c| c > 0.0));
    }
}

/// `GET /v1/status?q=&offset=&limit=`: the page's data. `q` filters routes by name, namespace
/// or host and revisions by name or namespace (substring, case-insensitive); both lists are
/// sorted by namespace and name and paged with the same offset and limit.
pub fn status_json(state: &State, q: &str, offset: usize, limit: usize) -> Value {
    let snap = state.snapshot();
    let limit = limit.clamp(1, MAX_LIMIT);
    let q = q.trim().to_ascii_lowercase();
    let matches = |s: &str| q.is_empty() || s.to_ascii_lowercase().contains(&q);
    let settings = snap.settings();
    let objects = &snap.config.objects;

    // Routes: services, then ingresses, each by key. A route's hosts and splits are built
    // only for the page's items (and its hosts for matching, only when its name does not
    // match already), so a poll costs little more than a sort of the keys.
    let mut page = Page::new(offset, limit);
    let mut services: Vec<_> = objects.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (key, svc) in services {
        let hosts = || -> Vec<String> {
            service_hosts(settings, svc)
                .into_iter()
                .map(|h| h.host)
                .collect()
        };
        if !(matches(&key.namespace) || matches(&key.name) || hosts().iter().any(|h| matches(h))) {
            continue;
        }
        page.offer(|| {
            let splits: Vec<Value> = svc
                .traffic
                .iter()
                .map(|t| json!({"revision": t.revision, "percent": t.percent, "tag": t.tag}))
                .collect();
            route_json(
                "service",
                key,
                hosts(),
                json!([{"path": "", "splits": splits}]),
            )
        });
    }
    let mut ingresses: Vec<_> = objects.ingresses.iter().collect();
    ingresses.sort_by(|a, b| a.0.cmp(b.0));
    for (key, ing) in ingresses {
        let hosts = || -> Vec<String> { ing.rules.iter().flat_map(|r| r.hosts.clone()).collect() };
        if !(matches(&key.namespace) || matches(&key.name) || hosts().iter().any(|h| matches(h))) {
            continue;
        }
        page.offer(|| {
            let paths: Vec<Value> = ing
                .rules
                .iter()
                .flat_map(|r| r.paths.iter())
                .map(|p| {
                    let splits: Vec<Value> = p
                        .splits
                        .iter()
                        .map(|s| {
                            json!({"revision": s.revision, "namespace": s.namespace, "percent": s.percent})
                        })
                        .collect();
                    json!({"path": p.path, "headers": p.headers, "splits": splits})
                })
                .collect();
            route_json("ingress", key, hosts(), Value::Array(paths))
        });
    }
    let (routes_total, route_items) = (page.total, page.items);

    // Revisions.
    let history = lock(&state.status.history);
    let mut revs: Vec<_> = snap
        .revisions
        .iter()
        .filter(|(k, _)| matches(&k.namespace) || matches(&k.name))
        .collect();
    revs.sort_by(|a, b| a.0.cmp(b.0));
    let revisions_total = revs.len();
    let revision_items: Vec<Value> = revs
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(key, rev)| {
            let set = rev.endpoints();
            let endpoints: Vec<String> = set.endpoints.iter().map(|e| e.addr.to_string()).collect();
            let concurrency: Vec<f32> = history
                .get(key)
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default();
            json!({
                "namespace": key.namespace,
                "name": key.name,
                "endpoints": endpoints,
                "in_flight": rev.in_flight(),
                "held": rev.held(),
                "concurrency": concurrency,
                "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            })
        })
        .collect();
    drop(history);

    let applied = lock(&state.status.applied);
    let rejections: Vec<Value> = lock(&state.status.rejections)
        .iter()
        .map(|r| json!({"at": millis(r.at), "source": r.source, "errors": r.errors}))
        .collect();
    let connection = |url: &OnceLock<String>, connected: bool| {
        url.get().map(|u| json!({"url": u, "connected": connected}))
    };
    json!({
        "generation": snap.generation,
        "ready": state.is_ready(),
        "source": applied.as_ref().map(|a| a.source),
        "applied_generation": applied.as_ref().map(|a| a.generation),
        "applied_at": applied.as_ref().map(|a| millis(a.at)),
        "xds": connection(&state.status.xds_url, state.metrics.xds_connected.get() == 1),
        "autoscaler": connection(
            &state.status.autoscaler_url,
            state.status.autoscaler_connected.load(Ordering::Relaxed),
        ),
        "rejections": rejections,
        "routes": {"total": routes_total, "offset": offset, "items": route_items},
        "revisions": {"total": revisions_total, "offset": offset, "items": revision_items},
    })
}

/// One page of a filtered list: counts every entry offered, builds only those on the page.
struct Page {
    offset: usize,
    limit: usize,
    total: usize,
    items: Vec<Value>,
}

impl Page {
    fn new(offset: usize, limit: usize) -> Page {
        Page {
            offset,
            limit,
            total: 0,
            items: Vec::new(),
        }
    }

    fn offer(&mut self, item: impl FnOnce() -> Value) {
        if self.total >= self.offset && self.items.len() < self.limit {
            self.items.push(item());
        }
        self.total += 1;
    }
}

fn route_json(kind: &str, key: &Key, hosts: Vec<String>, paths: Value) -> Value {
    json!({
        "kind": kind,
        "namespace": &*key.namespace,
        "name": &*key.name,
        "hosts": hosts,
        "paths": paths,
    })
}

/// Milliseconds since the Unix epoch (what the page's `new Date(t)` takes).
fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
