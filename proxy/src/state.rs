//! The proxy's shared state: the config snapshot in force (one `ArcSwap`), the registry of
//! run-time revisions that outlive snapshots, generations, and the update entry points used
//! by every config source (file, SIGHUP, control API).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weir_config::{compile, Config, ConfigError, ConfigErrors, Endpoint, RouteTable};

use crate::metrics::Metrics;
use crate::revision::{HeldMemory, Revision, Settings};
use crate::tls::{self, CertStore};

/// The edge's limits that act outside the route table: the listeners' timeouts (read by
/// pingora per connection and request), the connection limit, held-request memory.
#[derive(Default)]
pub struct Edge {
    pub header_read_timeout: pingora::apps::LiveTimeout,
    pub idle_timeout: pingora::apps::LiveTimeout,
    pub held_memory: Arc<HeldMemory>,
    /// Set once the listeners are built.
    pub connections: std::sync::OnceLock<Arc<pingora::listeners::ConnectionLimit>>,
}

impl Edge {
    /// Connections are at 95 % of `max_connections` or more: requests that would wait are
    /// answered 503 at once and responses close their connection, so slots turn over.
    pub fn connections_near_limit(&self) -> bool {
        self.connections
            .get()
            .is_some_and(|l| l.in_use() * 20 >= l.max() * 19)
    }

    fn apply(&self, limits: &weir_config::model::Limits) {
        let timeout = |d: &weir_config::model::Duration| d.get().filter(|t| !t.is_zero());
        self.header_read_timeout
            .set(timeout(&limits.header_read_timeout));
        self.idle_timeout.set(timeout(&limits.idle_timeout));
        self.held_memory
            .set_limit(limits.held_memory.get().unwrap_or(u64::MAX));
    }
}

/// The certificate stores of the TLS listeners: `https` (external entries) and
/// `internal_https` (cluster-local entries).
#[derive(Clone, Default)]
pub struct TlsStores {
    pub external: Arc<CertStore>,
    pub internal: Arc<CertStore>,
}

/// Everything a request needs, from one config generation.
pub struct Snapshot {
    pub generation: u64,
    /// The config as last applied whole (endpoints as given then; see [`State::config_view`]).
    pub config: Arc<Config>,
    pub table: RouteTable,
    /// Run-time revisions, indexed like `table.revisions()`.
    pub revisions: Box<[Arc<Revision>]>,
}

/// What changed in a generation, for listeners such as the xDS server of `weir control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A whole config was applied (routes may have changed).
    Config { generation: u64 },
    /// Only the endpoints of one revision changed.
    Endpoints {
        generation: u64,
        namespace: Arc<str>,
        name: Arc<str>,
    },
}

/// Why an endpoints update was refused.
#[derive(Debug)]
pub enum EndpointsError {
    UnknownRevision,
    BadAddress(ConfigErrors),
}

/// (namespace, name) -> run-time revision.
type Registry = HashMap<(Arc<str>, Arc<str>), Arc<Revision>>;

pub struct State {
    current: ArcSwap<Snapshot>,
    /// (namespace, name) -> revision; entries survive config updates so in-flight counts and
    /// held requests carry over.
    registry: Mutex<Registry>,
    generation: AtomicU64,
    ready: AtomicBool,
    /// Routes come from xDS and its first complete config is not in force yet.
    awaiting_xds: AtomicBool,
    /// Shutting down (drain): not ready any more, so load balancers stop sending.
    draining: AtomicBool,
    /// The config file as last loaded: what xDS updates are applied over.
    file: Mutex<Arc<Config>>,
    /// Serialises updates so that generations are applied in order.
    update_lock: Mutex<()>,
    changes: tokio::sync::broadcast::Sender<Change>,
    /// The TLS listeners' certificates and the directory their paths are relative to.
    tls: std::sync::OnceLock<(TlsStores, PathBuf)>,
    pub edge: Edge,
    pub metrics: Arc<Metrics>,
}

impl State {
    /// A state with an empty config (generation 0, not ready).
    pub fn new(metrics: Arc<Metrics>) -> Arc<State> {
        let cfg = Config::empty();
        let table = compile(&cfg).expect("the empty config compiles");
        Arc::new(State {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                config: Arc::new(cfg),
                table,
                revisions: Box::new([]),
            }),
            registry: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            awaiting_xds: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            file: Mutex::new(Arc::new(Config::empty())),
            update_lock: Mutex::new(()),
            changes: tokio::sync::broadcast::channel(1024).0,
            tls: std::sync::OnceLock::new(),
            edge: Edge::default(),
            metrics,
        })
    }

    /// The snapshot in force. One load per request.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Loads the config's certificates into `stores` on every apply from now on (call before
    /// the first apply). Paths are relative to `base`.
    pub fn enable_tls(&self, stores: TlsStores, base: PathBuf) {
        let _ = self.tls.set((stores, base));
    }

    /// Every applied change from now on. A receiver that lags behind gets `Lagged` and should
    /// resynchronise from [`State::config_view`].
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Routes come from xDS: not ready until a config applied from `xds` is in force (a
    /// config file or control API update before that does not make the proxy ready).
    pub fn await_xds(&self) {
        self.awaiting_xds.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.awaiting_xds.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
    }

    /// The process is shutting down: `/readyz` (and readiness hosts) answer 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The config file as last loaded (at start or on SIGHUP).
    pub fn file_config(&self) -> Arc<Config> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_file_config(&self, cfg: Config) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }

    /// Validates, compiles and publishes `cfg`; every endpoint name must resolve. On error
    /// nothing changes.
    pub fn apply(&self, cfg: Config, source: &str) -> Result<u64, ConfigErrors> {
        self.apply_with(cfg, source, Dns::Required)
    }

    /// [`State::apply`] with `dns` deciding whether a name that does not resolve is an error.
    pub fn apply_with(&self, cfg: Config, source: &str, dns: Dns) -> Result<u64, ConfigErrors> {
        let _updating = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let result = self.apply_locked(cfg, dns);
        if result.is_ok() && source == "xds" {
            self.awaiting_xds.store(false, Ordering::SeqCst);
        }
        self.metrics.config_update(source, result.is_ok());
        if let Ok((g, compiled)) = result {
            log::info!(
                "config generation {g} applied from {source} in {:.1} ms (compile {:.1} ms)",
                started.elapsed().as_secs_f64() * 1e3,
                compiled.as_secs_f64() * 1e3
            );
        }
        result.map(|(g, _)| g)
    }

    /// The new generation and the time its compile took.
    fn apply_locked(&self, cfg: Config, dns: Dns) -> Result<(u64, Duration), ConfigErrors> {
        let started = Instant::now();
        let table = compile(&cfg)?;
        let compiled = started.elapsed();
        let resolved = resolve_all(&cfg, dns)?;
        let certs = match self.tls.get() {
            Some((_, base)) => Some(tls::load(&cfg, base)?),
            None => None,
        };
        let queue_depth = cfg.hold.queue_depth as usize;
        let poke_interval = cfg
            .autoscaler
            .as_ref()
            .and_then(|a| a.interval.get())
            .unwrap_or(std::time::Duration::from_secs(1));
        let held_memory = cfg
            .limits
            .held_memory_per_revision
            .get()
            .unwrap_or(u64::MAX);
        let settings = |spec: &weir_config::RevisionSpec| Settings {
            container_concurrency: spec.container_concurrency,
            timeout: spec.timeout,
            protocol: spec.protocol,
            queue_depth,
            held_memory,
            poke_interval,
        };

        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut next: Registry = HashMap::with_capacity(table.revisions().len());
        let mut revisions = Vec::with_capacity(table.revisions().len());
        let mut to_update = Vec::with_capacity(table.revisions().len());
        for (spec, (addrs, unresolved)) in table.revisions().iter().zip(resolved) {
            let key = (spec.namespace.clone(), spec.name.clone());
            let rev = match registry.get(&key) {
                Some(r) => r.clone(),
                None => Revision::new(
                    &spec.namespace,
                    &spec.name,
                    settings(spec),
                    self.metrics.clone(),
                    self.edge.held_memory.clone(),
                ),
            };
            to_update.push((rev.clone(), addrs, unresolved, spec.clone()));
            revisions.push(rev.clone());
            next.insert(key, rev);
        }
        for (key, _) in registry.iter() {
            if !next.contains_key(key) {
                self.metrics.forget_revision(&key.0, &key.1);
            }
        }
        *registry = next;
        drop(registry);

        self.edge.apply(&cfg.limits);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let old = self.current.swap(Arc::new(Snapshot {
            generation,
            config: Arc::new(cfg),
            table,
            revisions: revisions.into_boxed_slice(),
        }));
        drop_elsewhere(old);
        if let (Some((external, internal)), Some((stores, _))) = (certs, self.tls.get()) {
            stores.external.store(external);
            stores.internal.store(internal);
        }
        // Endpoints last: requests released by new capacity already see the new routes.
        for (rev, addrs, unresolved, spec) in to_update {
            rev.set_declared(spec.endpoints.clone());
            rev.update_resolved(&addrs, unresolved, settings(&spec));
        }
        self.metrics.config_generation.set(generation as i64);
        self.ready.store(true, Ordering::SeqCst);
        let _ = self.changes.send(Change::Config { generation });
        Ok((generation, compiled))
    }

    /// Replaces one revision's endpoints without recompiling routes; wakes held requests.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
        source: &str,
    ) -> Result<u64, EndpointsError> {
        let _updating = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let rev = {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry
                .get(&(Arc::from(namespace), Arc::from(name)))
                .cloned()
                .ok_or(EndpointsError::UnknownRevision)?
        };
        let mut errors = Vec::new();
        let mut addrs = Vec::with_capacity(endpoints.len());
        let mut declared = Vec::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            match weir_config::parse_endpoint(e)
                .map_err(|why| format!("{e:?}: {why}"))
                .and_then(|ep| {
                    let a = resolve(&ep)?;
                    declared.push(ep);
                    Ok(a)
                }) {
                Ok(a) => addrs.push(a),
                Err(why) => errors.push(ConfigError::new(format!("endpoints[{i}]"), why)),
            }
        }
        if !errors.is_empty() {
            self.metrics.config_update(source, false);
            return Err(EndpointsError::BadAddress(ConfigErrors(errors)));
        }
        addrs.dedup();
        let set = rev.endpoint_set();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        rev.set_declared(declared);
        rev.update(&addrs, set.settings);
        self.metrics.config_generation.set(generation as i64);
        self.metrics.config_update(source, true);
        let _ = self.changes.send(Change::Endpoints {
            generation,
            namespace: rev.namespace.clone(),
            name: rev.name.clone(),
        });
        log::info!(
            "generation {generation}: {namespace}/{name} has {} endpoint(s) (from {source})",
            addrs.len()
        );
        Ok(generation)
    }

    /// The config in force, with each revision's current endpoints (which endpoint-only
    /// updates change without replacing the snapshot).
    pub fn config_view(&self) -> (u64, Config) {
        let snap = self.snapshot();
        let generation = self.generation();
        let mut cfg = (*snap.config).clone();
        for (r, rev) in cfg.revisions.iter_mut().zip(snap.revisions.iter()) {
            r.endpoints = rev
                .endpoints()
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
        }
        (generation, cfg)
    }
}

/// Frees a replaced snapshot on another thread: a 10,000-service table takes milliseconds to
/// free, which would otherwise delay the update's answer (and the next update). Requests still
/// holding it keep it alive as before; whoever lets go last frees it.
fn drop_elsewhere(old: Arc<Snapshot>) {
    if Arc::strong_count(&old) > 1 || old.revisions.len() < 1000 {
        return; // someone else drops it last, or it is small
    }
    if std::thread::Builder::new()
        .name("weir-free".into())
        .spawn(move || drop(old))
        .is_err()
    {
        log::debug!("could not start a thread to free the old config; freed in place");
    }
}

/// Whether an endpoint name that does not resolve is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dns {
    /// It is (config file, control API): the operator hears of the typo at once.
    Required,
    /// It is not (xDS: one unresolvable `LOGICAL_DNS` name must not refuse every other
    /// cluster); the revision answers 502 until the name resolves on a later refresh.
    BestEffort,
}

/// Resolves every revision's endpoints: per revision, the addresses and whether some
/// declared name gave none (only with [`Dns::BestEffort`]; with [`Dns::Required`] a name that
/// does not resolve is an error with its path).
fn resolve_all(cfg: &Config, dns: Dns) -> Result<Vec<(Vec<SocketAddr>, bool)>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(cfg.revisions.len());
    for (i, r) in cfg.revisions.iter().enumerate() {
        let mut addrs = Vec::with_capacity(r.endpoints.len());
        let mut unresolved = false;
        for (j, e) in r.endpoints.iter().enumerate() {
            let parsed = weir_config::parse_endpoint(e).map_err(|w| format!("{e:?}: {w}"));
            match parsed.and_then(|ep| resolve(&ep)) {
                Ok(a) => addrs.push(a),
                Err(why) if dns == Dns::BestEffort => {
                    log::warn!(
                        "revision {}/{}: {why}; retrying every {DNS_REFRESH:?}",
                        r.namespace,
                        r.name
                    );
                    unresolved = true;
                }
                Err(why) => errors.push(ConfigError::new(
                    format!("revisions[{i}].endpoints[{j}]"),
                    why,
                )),
            }
        }
        addrs.dedup();
        out.push((addrs, unresolved));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// How often endpoint names are resolved again (Envoy's default `dns_refresh_rate`).
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

/// Resolves every revision's endpoint names again every [`DNS_REFRESH`] and applies what
/// changed (a `LOGICAL_DNS` cluster, an ExternalName service whose target moved).
pub async fn refresh_dns(state: Arc<State>) {
    loop {
        tokio::time::sleep(DNS_REFRESH).await;
        let snap = state.snapshot();
        let named: Vec<Arc<Revision>> = snap
            .revisions
            .iter()
            .filter(|r| r.declared().iter().any(|e| matches!(e, Endpoint::Name(..))))
            .cloned()
            .collect();
        drop(snap);
        if named.is_empty() {
            continue;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for rev in named {
                let declared = rev.declared();
                let mut addrs = Vec::with_capacity(declared.len());
                let mut unresolved = false;
                for e in declared.iter() {
                    match resolve(e) {
                        Ok(a) => addrs.push(a),
                        Err(why) => {
                            log::debug!("revision {}/{}: {why}", rev.namespace, rev.name);
                            unresolved = true;
                        }
                    }
                }
                addrs.dedup();
                let set = rev.endpoint_set();
                let same = set.unresolved == unresolved
                    && set.endpoints.len() == addrs.len()
                    && set.endpoints.iter().zip(&addrs).all(|(e, a)| e.addr == *a);
                if !same {
                    log::info!(
                        "revision {}/{}: endpoint names now resolve to {addrs:?}",
                        rev.namespace,
                        rev.name
                    );
                    rev.update_resolved(&addrs, unresolved, set.settings);
                }
            }
        })
        .await;
    }
}

fn resolve(ep: &Endpoint) -> Result<SocketAddr, String> {
    match ep {
        Endpoint::Addr(a) => Ok(*a),
        Endpoint::Name(host, port) => (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
    }
}
