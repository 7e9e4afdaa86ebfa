//! The proxy's shared state: the snapshot in force (one `ArcSwap`: config, routes and the
//! run-time revisions, which outlive snapshots), generations, and the one update pipeline
//! every config source goes through (file, SIGHUP, admin API, xDS, dry runs, `weir check`).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weir_config::sharded::ShardedMap;
use weir_config::{
    Change, Compiled, Config, ConfigError, ConfigErrors, EndpointSpec, Key, Kind, Plan, Update,
};

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
        let timeout = |d: &weir_config::model::TextDuration| d.get().filter(|t| !t.is_zero());
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
    /// Settings, objects and routes; the routes' targets are run-time revisions.
    pub config: Compiled<Arc<Revision>>,
    /// Run-time revisions by key. An entry lives from the generation that declares its
    /// revision to the one that deletes it, so in-flight counts and held requests carry
    /// over every update in between.
    pub revisions: ShardedMap<Key, Arc<Revision>>,
}

impl Snapshot {
    /// The settings in force (the config without its services, ingresses and revisions).
    #[inline]
    pub fn settings(&self) -> &Config {
        &self.config.settings
    }
}

/// Why an endpoints update was refused.
#[derive(Debug)]
pub enum EndpointsError {
    UnknownRevision,
    BadAddress(ConfigErrors),
}

/// How an update is applied.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Where it comes from, for logs and `weir_config_updates_total`.
    pub source: &'static str,
    pub dns: Dns,
    /// Check everything the apply would (validation, names, certificates), publish nothing.
    pub dry_run: bool,
}

impl ApplyOptions {
    pub fn new(source: &'static str) -> ApplyOptions {
        ApplyOptions {
            source,
            dns: Dns::Required,
            dry_run: false,
        }
    }

    pub fn dns(self, dns: Dns) -> ApplyOptions {
        ApplyOptions { dns, ..self }
    }

    pub fn dry_run(self, dry_run: bool) -> ApplyOptions {
        ApplyOptions { dry_run, ..self }
    }
}

/// The addresses of one revision's endpoints, resolved ahead of publishing.
struct Resolved {
    key: Key,
    addrs: Vec<SocketAddr>,
    /// Some declared name gave no address ([`Dns::BestEffort`]).
    unresolved: bool,
    declared: Vec<EndpointSpec>,
}

pub struct State {
    current: ArcSwap<Snapshot>,
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
    /// The TLS listeners' certificates and the directory their paths are relative to.
    tls: std::sync::OnceLock<(TlsStores, PathBuf)>,
    pub edge: Edge,
    pub metrics: Arc<Metrics>,
    /// What run-time revisions share (metrics, the held-request budget, pokes).
    pub shared: crate::revision::Shared,
    /// What the status page shows beyond the config and metrics.
    pub status: crate::status::Status,
    pub access_log: crate::access_log::AccessLog,
    /// The config file's directory: relative paths in the config (access log file,
    /// placeholder pages) are relative to it.
    config_dir: std::sync::OnceLock<PathBuf>,
    /// Placeholder pages by their path as written in the config, read on every config that
    /// names them.
    placeholders: ArcSwap<HashMap<String, bytes::Bytes>>,
}

/// A placeholder page in force for a request (`hold.placeholder`).
#[derive(Debug, Clone)]
pub struct LoadedPlaceholder {
    pub after: Duration,
    pub html: bytes::Bytes,
}

impl State {
    /// A state with an empty config (generation 0, not ready).
    pub fn new(metrics: Arc<Metrics>) -> Arc<State> {
        let edge = Edge::default();
        let shared = crate::revision::Shared {
            metrics: metrics.clone(),
            held_memory: edge.held_memory.clone(),
            pokes: Default::default(),
        };
        let access_log = crate::access_log::AccessLog::new(
            metrics.access_log_dropped.clone(),
            metrics.access_log_written.clone(),
        );
        Arc::new(State {
            access_log,
            config_dir: std::sync::OnceLock::new(),
            placeholders: Default::default(),
            current: ArcSwap::from_pointee(Snapshot {
                generation: 0,
                config: Compiled::default(),
                revisions: ShardedMap::default(),
            }),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            awaiting_xds: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            file: Mutex::new(Arc::new(Config::empty())),
            update_lock: Mutex::new(()),
            tls: std::sync::OnceLock::new(),
            edge,
            metrics,
            shared,
            status: Default::default(),
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

    /// Relative paths of the config are relative to `dir` (call before the first apply).
    pub fn set_config_dir(&self, dir: PathBuf) {
        let _ = self.config_dir.set(dir);
    }

    fn config_dir(&self) -> &std::path::Path {
        self.config_dir
            .get()
            .map_or(std::path::Path::new("."), |d| d.as_path())
    }

    /// The placeholder page for a request routed by `owner`'s routes, when it has one and
    /// the request is a browser's (it accepts `text/html`).
    pub fn placeholder_for(
        &self,
        owner: &weir_config::Owner,
        req: &pingora::http::RequestHeader,
    ) -> Option<LoadedPlaceholder> {
        let accepts_html = req
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| contains_ignore_case(v.as_bytes(), b"text/html"));
        if !accepts_html {
            return None;
        }
        let snap = self.load();
        let objects = &snap.config.objects;
        let hold = match owner {
            weir_config::Owner::Service(k) => objects.services.get(k)?.hold.as_ref(),
            weir_config::Owner::Ingress(k) => objects.ingresses.get(k)?.hold.as_ref(),
            weir_config::Owner::Readiness => None,
        };
        let p = hold?.placeholder.as_ref()?;
        let html = self.placeholders.load().get(&p.html)?.clone();
        Some(LoadedPlaceholder {
            after: p.after.get()?,
            html,
        })
    }

    /// Routes come from xDS: not ready until a config applied from `xds` is in force (a
    /// config file or admin API update before that does not make the proxy ready).
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

    /// Applies the whole config `cfg`; every endpoint name must resolve. On error nothing
    /// changes.
    pub fn apply(&self, cfg: Config, source: &'static str) -> Result<u64, ConfigErrors> {
        self.update(Update::whole(cfg), ApplyOptions::new(source))
    }

    /// [`State::apply`] with `dns` deciding whether a name that does not resolve is an error.
    pub fn apply_with(
        &self,
        cfg: Config,
        source: &'static str,
        dns: Dns,
    ) -> Result<u64, ConfigErrors> {
        self.update(Update::whole(cfg), ApplyOptions::new(source).dns(dns))
    }

    /// The one way a config changes, whatever its source: plan (validate, compile what
    /// changed), prepare (resolve the changed revisions' endpoint names, read certificates),
    /// then publish, unless it is a dry run. The new generation, or the current one for a
    /// dry run; on error nothing changes.
    pub fn update(&self, update: Update, opts: ApplyOptions) -> Result<u64, ConfigErrors> {
        let started = Instant::now();
        let result = self.update_counted(update, opts);
        if let (Ok((g, changed)), false) = (&result, opts.dry_run) {
            log::info!(
                "config generation {g} applied from {} in {:.1} ms ({changed} object(s) changed)",
                opts.source,
                started.elapsed().as_secs_f64() * 1e3,
            );
        }
        result.map(|(g, _)| g)
    }

    /// [`State::update`] without its log line: (generation, objects changed).
    fn update_counted(
        &self,
        update: Update,
        opts: ApplyOptions,
    ) -> Result<(u64, usize), ConfigErrors> {
        let _updating = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.update_locked(update, opts);
        if opts.dry_run {
            return result.map(|(_, n)| (self.generation(), n));
        }
        if result.is_ok() && opts.source == "xds" {
            self.awaiting_xds.store(false, Ordering::SeqCst);
        }
        match &result {
            Ok((g, _)) => self.status.applied(*g, opts.source),
            Err(errs) => self
                .status
                .rejected(opts.source, errs.0.iter().map(|e| e.to_string()).collect()),
        }
        self.metrics.config_update(opts.source, result.is_ok());
        result
    }

    /// The new generation and how many objects changed.
    fn update_locked(
        &self,
        update: Update,
        opts: ApplyOptions,
    ) -> Result<(u64, usize), ConfigErrors> {
        let cur = self.current.load_full();
        let whole = matches!(update, Update::Whole(_) | Update::Objects { .. });
        // Revisions a changed route names that have no run-time revision yet (declared in
        // this same update): made here, kept if the update is published.
        let mut created: HashMap<Key, Arc<Revision>> = HashMap::new();
        let plan = cur.config.plan(update, |k| match cur.revisions.get(k) {
            Some(r) => r.clone(),
            None => created
                .entry(k.clone())
                .or_insert_with(|| self.new_revision(k))
                .clone(),
        })?;

        // Prepare: what needs the outside world, so that a dry run checks it too.
        let mut errors = Vec::new();
        let mut resolved = Vec::new();
        for (k, r) in plan.revisions_put() {
            match resolve_revision(r, opts.dns) {
                Ok((addrs, unresolved, declared)) => resolved.push(Resolved {
                    key: k.clone(),
                    addrs,
                    unresolved,
                    declared,
                }),
                Err(errs) => errors.extend(errs.into_iter().map(|(j, why)| {
                    ConfigError::new(
                        format!("{}.endpoints[{j}]", plan.path_of(Kind::Revision, k)),
                        why,
                    )
                })),
            }
        }
        let pages = self.read_placeholders(&plan, whole, &mut errors);
        if whole && plan.next.settings.access_log.enabled {
            let to = &plan.next.settings.access_log.to;
            if let Err(e) = crate::access_log::Target::parse(to, self.config_dir()).check() {
                errors.push(ConfigError::new("access_log.to", e));
            }
        }
        let certs = match (self.tls.get(), whole) {
            (Some((_, base)), true) => match tls::load(&plan.next.settings, base) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.extend(e.0);
                    None
                }
            },
            _ => None,
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let changed = plan.changes.len();
        if opts.dry_run {
            return Ok((cur.generation, changed));
        }
        if let Some(pages) = pages {
            self.placeholders.store(Arc::new(pages));
        }
        Ok((self.publish(&cur, plan, created, resolved, certs), changed))
    }

    /// Reads the placeholder pages the changed services and ingresses name (every one's for
    /// a whole config): the pages in force afterwards, or `None` when nothing changes.
    fn read_placeholders(
        &self,
        plan: &Plan<Arc<Revision>>,
        whole: bool,
        errors: &mut Vec<ConfigError>,
    ) -> Option<HashMap<String, bytes::Bytes>> {
        let objects = &plan.next.objects;
        let named: Vec<(Kind, &Key, &weir_config::model::Placeholder)> = if whole {
            let svcs = objects
                .services
                .iter()
                .map(|(k, s)| (Kind::Service, k, &s.hold));
            let ings = objects
                .ingresses
                .iter()
                .map(|(k, i)| (Kind::Ingress, k, &i.hold));
            svcs.chain(ings)
                .filter_map(|(kind, k, h)| Some((kind, k, h.as_ref()?.placeholder.as_ref()?)))
                .collect()
        } else {
            plan.changes
                .iter()
                .filter_map(|c| {
                    let hold = match c {
                        Change::Service(_, Some(s)) => &s.hold,
                        Change::Ingress(_, Some(i)) => &i.hold,
                        _ => return None,
                    };
                    Some((c.kind(), c.key(), hold.as_ref()?.placeholder.as_ref()?))
                })
                .collect()
        };
        if named.is_empty() && !whole {
            return None;
        }
        let mut pages = if whole {
            HashMap::new()
        } else {
            (**self.placeholders.load()).clone()
        };
        for (kind, key, p) in named {
            let path = self.config_dir().join(&p.html);
            match std::fs::read(&path) {
                Ok(html) => {
                    pages.insert(p.html.clone(), bytes::Bytes::from(html));
                }
                Err(e) => errors.push(ConfigError::new(
                    format!("{}.hold.placeholder.html", plan.path_of(kind, key)),
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        Some(pages)
    }

    fn new_revision(&self, k: &Key) -> Arc<Revision> {
        Revision::new(
            &k.namespace,
            &k.name,
            revision_settings(&Config::empty(), None),
            &self.shared,
        )
    }

    /// Puts `plan` in force: run-time revisions made and dropped, the snapshot swapped,
    /// certificates and endpoints replaced.
    fn publish(
        &self,
        cur: &Snapshot,
        plan: Plan<Arc<Revision>>,
        mut created: HashMap<Key, Arc<Revision>>,
        resolved: Vec<Resolved>,
        certs: Option<tls::Loaded>,
    ) -> u64 {
        let settings = plan.next.settings.clone();
        let mut revisions = cur.revisions.clone();
        for c in &plan.changes {
            if let Change::Revision(k, None) = c {
                if revisions.remove(k).is_some() {
                    self.metrics.forget_revision(&k.namespace, &k.name);
                }
            }
        }
        for (k, _) in plan.revisions_put() {
            if !revisions.contains_key(k) {
                let rev = created.remove(k).unwrap_or_else(|| self.new_revision(k));
                revisions.insert(k.clone(), rev);
            }
        }
        if plan.settings_changed || cur.generation == 0 {
            self.edge.apply(&settings.limits);
            let log = &settings.access_log;
            self.access_log.configure(
                log.enabled
                    .then(|| crate::access_log::Target::parse(&log.to, self.config_dir())),
                log.buffer.get().unwrap_or(1 << 20) as usize,
            );
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let next = Arc::new(Snapshot {
            generation,
            config: plan.next,
            revisions,
        });
        let old = self.current.swap(next.clone());
        drop_elsewhere(old);
        if let (Some((external, internal)), Some((stores, _))) = (certs, self.tls.get()) {
            stores.external.store(external);
            stores.internal.store(internal);
        }
        // Endpoints last: requests released by new capacity already see the new routes.
        let objects = &next.config.objects;
        for r in &resolved {
            if let Some(rev) = next.revisions.get(&r.key) {
                rev.set_declared(r.declared.clone());
                let spec = objects.revisions.get(&r.key).map(|r| &**r);
                rev.update_resolved(&r.addrs, r.unresolved, revision_settings(&settings, spec));
            }
        }
        if plan.settings_changed {
            // Queue depth, poke interval or default timeout may have changed for all.
            for (k, rev) in next.revisions.iter() {
                if resolved.iter().any(|r| r.key == *k) {
                    continue;
                }
                let spec = objects.revisions.get(k).map(|r| &**r);
                let set = rev.endpoint_set();
                let addrs: Vec<SocketAddr> = set.endpoints.iter().map(|e| e.addr).collect();
                rev.update_resolved(&addrs, set.unresolved, revision_settings(&settings, spec));
            }
        }
        self.metrics.config_generation.set(generation as i64);
        self.ready.store(true, Ordering::SeqCst);
        generation
    }

    /// Replaces one revision's endpoints (the revision object with new `endpoints`, through
    /// the same pipeline as any update: no route is compiled); wakes held requests.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        name: &str,
        endpoints: &[String],
        source: &'static str,
    ) -> Result<u64, EndpointsError> {
        let key = Key::new(namespace, name);
        let Some(old) = self.load().config.objects.revisions.get(&key).cloned() else {
            return Err(EndpointsError::UnknownRevision);
        };
        let mut rev = (*old).clone();
        rev.endpoints = endpoints.to_vec();
        let update = Update::Changes(vec![Change::Revision(key, Some(Arc::new(rev)))]);
        let (generation, _) = self
            .update_counted(update, ApplyOptions::new(source))
            .map_err(|errs| {
                // Paths relative to the body: `endpoints[0]`.
                let prefix = format!("revisions[{namespace}/{name}].");
                EndpointsError::BadAddress(ConfigErrors(
                    errs.0
                        .into_iter()
                        .map(|e| {
                            let path = e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_owned();
                            ConfigError::new(path, e.message)
                        })
                        .collect(),
                ))
            })?;
        log::info!(
            "generation {generation}: {namespace}/{name} has {} endpoint(s) (from {source})",
            endpoints.len()
        );
        Ok(generation)
    }

    /// The config in force.
    pub fn config_view(&self) -> (u64, Config) {
        let snap = self.snapshot();
        (snap.generation, snap.config.config())
    }
}

/// How revision `spec` is served under `settings` (`None`: defaults until its object is
/// known).
pub fn revision_settings(
    settings: &Config,
    spec: Option<&weir_config::model::Revision>,
) -> Settings {
    Settings {
        container_concurrency: spec.map_or(0, |r| r.container_concurrency),
        timeout: match spec {
            Some(r) => settings.revision_timeout(r),
            None => settings
                .hold
                .timeout
                .get()
                .unwrap_or(Duration::from_secs(300)),
        },
        protocol: spec.map(|r| r.protocol).unwrap_or_default(),
        queue_depth: settings.hold.queue_depth as usize,
        held_memory: settings
            .limits
            .held_memory_per_revision
            .get()
            .unwrap_or(u64::MAX),
        poke_interval: settings
            .autoscaler
            .as_ref()
            .and_then(|a| a.interval.get())
            .unwrap_or(Duration::from_secs(1)),
    }
}

/// A revision's endpoints resolved: (addresses, whether some name gave none, the declared
/// endpoints), or per bad endpoint its index and why.
type ResolvedEndpoints = (Vec<SocketAddr>, bool, Vec<EndpointSpec>);

fn resolve_revision(
    r: &weir_config::model::Revision,
    dns: Dns,
) -> Result<ResolvedEndpoints, Vec<(usize, String)>> {
    let mut errors = Vec::new();
    let mut addrs = Vec::with_capacity(r.endpoints.len());
    let mut declared = Vec::with_capacity(r.endpoints.len());
    let mut unresolved = false;
    for (j, e) in r.endpoints.iter().enumerate() {
        let ep = match weir_config::parse_endpoint(e) {
            Ok(ep) => ep,
            Err(why) => {
                errors.push((j, format!("{e:?}: {why}")));
                continue;
            }
        };
        match (&ep, dns) {
            (EndpointSpec::Name(..), Dns::Skip) => unresolved = true,
            _ => match resolve(&ep) {
                Ok(a) => addrs.push(a),
                Err(why) if dns == Dns::BestEffort => {
                    log::warn!(
                        "revision {}/{}: {why}; retrying every {DNS_REFRESH:?}",
                        r.namespace,
                        r.name
                    );
                    unresolved = true;
                }
                Err(why) => errors.push((j, why)),
            },
        }
        declared.push(ep);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    addrs.dedup();
    Ok((addrs, unresolved, declared))
}

/// Frees a replaced snapshot on another thread: a 10,000-service table takes milliseconds to
/// free, which would otherwise delay the update's answer (and the next update). Requests still
/// holding it keep it alive as before; whoever lets go last frees it.
/// Whether `hay` contains `needle`, ASCII case aside.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn drop_elsewhere(old: Arc<Snapshot>) {
    if Arc::strong_count(&old) > 1 || old.config.objects.len() < 1000 {
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
    /// It is (config file, admin API): the operator hears of the typo at once.
    Required,
    /// It is not (xDS: one unresolvable `LOGICAL_DNS` name must not refuse every other
    /// cluster); the revision answers 502 until the name resolves on a later refresh.
    BestEffort,
    /// Names are not looked up at all (`weir check --no-resolve`; never published).
    Skip,
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
            .values()
            .filter(|r| {
                r.declared()
                    .iter()
                    .any(|e| matches!(e, EndpointSpec::Name(..)))
            })
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

fn resolve(ep: &EndpointSpec) -> Result<SocketAddr, String> {
    match ep {
        EndpointSpec::Addr(a) => Ok(*a),
        EndpointSpec::Name(host, port) => (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address")),
    }
}
