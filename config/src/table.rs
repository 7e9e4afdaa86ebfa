//! The compiled route table: what the request path reads, and nothing else.
//!
//! A request does one host hash lookup, walks the (usually single) path rule of that host and
//! draws once for the split.
//!
//! The table is built once from a config's settings and objects ([`RouteTable::build`]) and
//! then changed object by object ([`RouteTable::update`]): only the hosts of the services and
//! ingresses that changed are compiled again, and the new table shares every other host with
//! the old one (a [`ShardedMap`]), so an update at 100,000 services costs what it changes,
//! and requests in flight keep reading the table they started with.
//!
//! `R` is what a split's targets carry for their revision: the proxy puts its run-time
//! revision there, so a request goes from host to revision with no further lookup; `()` where
//! only routing decisions matter (tests, fuzzers, benches).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::error::{ConfigError, ConfigErrors};
use crate::hosts::{self, HostTarget};
use crate::model::{Config, HttpOption, Ingress, Readiness, Service, Visibility};
use crate::objects::{Change, Key, Kind, Objects};
use crate::sharded::ShardedMap;
use crate::split::{Split, Target};
use crate::validate;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public listener: serves external hosts only.
    External,
    /// The cluster-local listener: serves every host.
    Internal,
}

/// What put a host into the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Service(Key),
    Ingress(Key),
    /// `readiness.hosts`.
    Readiness,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Service(k) => write!(f, "service {k}"),
            Owner::Ingress(k) => write!(f, "ingress {k}"),
            Owner::Readiness => write!(f, "readiness.hosts"),
        }
    }
}

impl Owner {
    /// The service's or ingress's key.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Owner::Service(k) | Owner::Ingress(k) => Some(k),
            Owner::Readiness => None,
        }
    }
}

/// What a host answers with: its path rules in order, first match wins.
#[derive(Debug)]
pub struct HostRoute<R = ()> {
    /// Served on the external listener too (otherwise internal only).
    pub external: bool,
    pub owner: Owner,
    /// Shared by every host of the same service or rule.
    pub paths: Arc<[PathRoute<R>]>,
    /// For `tag_header_routing` on a service's default hosts: tag -> its target.
    pub tags: Arc<[(Box<str>, Target<R>)]>,
    /// Plain-HTTP requests get a 301 to https.
    pub redirect_https: bool,
    /// A readiness host (`readiness.hosts`): Weir answers this path itself; `paths` is empty.
    pub readiness: Option<Box<str>>,
}

/// One path rule: a prefix, exact header matches, and where matching requests go.
#[derive(Debug, Clone)]
pub struct PathRoute<R = ()> {
    pub prefix: Box<str>,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// Set on the upstream request before the split (pre-split `append_headers`).
    pub append_headers: Arc<[(HeaderName, HeaderValue)]>,
    pub rewrite_host: Option<HeaderValue>,
    pub split: Split<R>,
    pub affinity: Option<AffinityMode>,
}

/// Compiled revision stickiness of a path rule (see [`crate::model::Affinity`]).
#[derive(Debug, Clone)]
pub enum AffinityMode {
    /// The revision is [`Split::pick_by_key`] of this header's value.
    Header(HeaderName),
    /// The revision is remembered in a cookie the proxy sets.
    Cookie {
        name: Box<str>,
        max_age_secs: u64,
        /// Also remember the endpoint (`<revision>/<ip:port>`).
        instance: bool,
    },
}

impl<R> PathRoute<R> {
    fn catch_all(split: Split<R>, affinity: Option<AffinityMode>) -> PathRoute<R> {
        PathRoute {
            prefix: "".into(),
            headers: Box::new([]),
            append_headers: Arc::new([]),
            rewrite_host: None,
            split,
            affinity,
        }
    }
}

/// Default lifetime of an affinity cookie.
pub const DEFAULT_AFFINITY_TTL: Duration = Duration::from_secs(24 * 3600);

fn compile_affinity(a: &crate::model::Affinity) -> AffinityMode {
    match (&a.header, &a.cookie) {
        (Some(h), _) => AffinityMode::Header(
            HeaderName::from_bytes(h.as_bytes()).unwrap_or(HeaderName::from_static("x-user-id")),
        ),
        (None, c) => AffinityMode::Cookie {
            name: c.as_deref().unwrap_or("weir-rev").into(),
            max_age_secs: a
                .ttl
                .as_ref()
                .and_then(|t| t.get())
                .unwrap_or(DEFAULT_AFFINITY_TTL)
                .as_secs()
                .max(1),
            instance: a.instance_affinity,
        },
    }
}

/// The settings the table is compiled from: a change to any of them recompiles every host.
#[derive(Debug, Clone, PartialEq, Default)]
struct Routing {
    domain: String,
    domain_template: String,
    tag_template: String,
    cluster_domain: String,
    tag_header_routing: bool,
    readiness: Readiness,
}

impl Routing {
    fn of(cfg: &Config) -> Routing {
        Routing {
            domain: cfg.domain.clone(),
            domain_template: cfg.domain_template.clone(),
            tag_template: cfg.tag_template.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            tag_header_routing: cfg.tag_header_routing,
            readiness: cfg.readiness.clone(),
        }
    }
}

/// The immutable routing snapshot of one config generation.
pub struct RouteTable<R = ()> {
    hosts: ShardedMap<Box<str>, Arc<HostRoute<R>>>,
    /// Revision -> how many services and ingresses send to it (a revision in use cannot be
    /// deleted).
    users: ShardedMap<Key, u32>,
    routing: Arc<Routing>,
}

impl<R> Clone for RouteTable<R> {
    fn clone(&self) -> Self {
        RouteTable {
            hosts: self.hosts.clone(),
            users: self.users.clone(),
            routing: self.routing.clone(),
        }
    }
}

impl<R> fmt::Debug for RouteTable<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("hosts", &self.hosts.len())
            .field("revisions_in_use", &self.users.len())
            .finish()
    }
}

impl<R> Default for RouteTable<R> {
    fn default() -> Self {
        RouteTable {
            hosts: ShardedMap::default(),
            users: ShardedMap::default(),
            routing: Arc::default(),
        }
    }
}

/// Why a Host header could not be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Empty, too long, or with characters no DNS name or IP address has.
    Invalid,
}

/// Longest Host value accepted (a DNS name is 253 characters; room for a port).
pub const MAX_HOST_LEN: usize = 300;

impl<R> RouteTable<R> {
    /// Finds the route of a raw Host value (any case, with or without `:port` or a trailing
    /// dot) as seen on `listener`. Allocation-free.
    #[inline]
    pub fn lookup(
        &self,
        raw_host: &[u8],
        listener: Listener,
    ) -> Result<Option<&HostRoute<R>>, HostError> {
        // Fast path: a host already in normal form (lowercase, no port, no trailing dot) is
        // looked up as it is, without copying it.
        let plain = !raw_host.is_empty()
            && raw_host.len() <= MAX_HOST_LEN
            && raw_host.last() != Some(&b'.')
            && raw_host
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let mut buf;
        let host = if plain {
            std::str::from_utf8(raw_host).map_err(|_| HostError::Invalid)?
        } else {
            buf = [0u8; MAX_HOST_LEN];
            normalize_host(raw_host, &mut buf)?
        };
        Ok(self
            .hosts
            .get(host)
            .map(|r| &**r)
            .filter(|r| r.external || listener == Listener::Internal))
    }

    pub fn tag_header_routing(&self) -> bool {
        self.routing.tag_header_routing
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// How many services and ingresses send to revision `key`.
    pub fn users_of(&self, key: &Key) -> u32 {
        self.users.get(key).copied().unwrap_or(0)
    }

    /// Every host and its route, in no particular order.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &HostRoute<R>)> {
        self.hosts.iter().map(|(h, r)| (&**h, &**r))
    }

    /// How many of the host map's shards this table shares with `other` (see [`ShardedMap`]).
    pub fn shared_shards(&self, other: &Self) -> usize {
        self.hosts.shared_shards(&other.hosts)
    }
}

impl<R: Clone> RouteTable<R> {
    /// Compiles every object of a config that [`validate::validate`] accepted (or whose
    /// objects were each checked by [`validate::changes`]). `resolve` gives a revision's `R`.
    pub fn build(
        settings: &Config,
        objects: &Objects,
        resolve: impl FnMut(&Key) -> R,
    ) -> Result<RouteTable<R>, ConfigErrors> {
        let routing = Routing::of(settings);
        let mut table = RouteTable {
            hosts: ShardedMap::default(),
            users: ShardedMap::default(),
            routing: Arc::new(routing),
        };
        let mut b = Builder {
            settings,
            objects,
            resolve,
            errors: Vec::new(),
        };
        for (k, s) in objects.services.iter() {
            b.add_service(&mut table, k, s);
        }
        for (k, i) in objects.ingresses.iter() {
            b.add_ingress(&mut table, k, i);
        }
        b.add_readiness(&mut table);
        b.finish(table)
    }

    /// This table with `changes` made: the objects went from `before` to `after` (which
    /// must be `before` with `changes`). Only the hosts of changed services and ingresses
    /// are compiled; if the settings the hosts are made from changed, everything is.
    ///
    /// Errors: a host of a changed object that another service or rule already has; a
    /// deleted revision that a service or ingress still sends to. On error `self` is
    /// unchanged (it is never changed: the result is a new table).
    pub fn update(
        &self,
        settings: &Config,
        before: &Objects,
        after: &Objects,
        changes: &[Change],
        resolve: impl FnMut(&Key) -> R,
    ) -> Result<RouteTable<R>, ConfigErrors> {
        let changes = crate::objects::last_changes(changes);
        let next = if Routing::of(settings) != *self.routing {
            RouteTable::build(settings, after, resolve)?
        } else {
            self.changed(settings, before, after, &changes, resolve)?
        };
        let mut errors = Vec::new();
        for &c in &changes {
            if let Change::Revision(k, None) = c {
                if next.users_of(k) > 0 {
                    let by = after
                        .users_of(k)
                        .map(|(kind, owner)| crate::objects::path_of(kind, &owner))
                        .unwrap_or_else(|| "a route".into());
                    errors.push(ConfigError::new(
                        crate::objects::path_of(Kind::Revision, k),
                        format!("revision {k} is still named by {by}; change that first"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// `self` with the hosts of the changed services and ingresses compiled again.
    fn changed(
        &self,
        settings: &Config,
        before: &Objects,
        after: &Objects,
        changes: &[&Change],
        resolve: impl FnMut(&Key) -> R,
    ) -> Result<RouteTable<R>, ConfigErrors> {
        let mut next = self.clone();
        let mut b = Builder {
            settings,
            objects: after,
            resolve,
            errors: Vec::new(),
        };
        // Take out what the changed objects had first, so that a host moving from one object
        // to another in the same update is no conflict.
        for &c in changes {
            match c {
                Change::Service(k, _) => {
                    if let Some(old) = before.services.get(k) {
                        next.remove_service(settings, k, old);
                    }
                }
                Change::Ingress(k, _) => {
                    if let Some(old) = before.ingresses.get(k) {
                        next.remove_ingress(k, old);
                    }
                }
                Change::Revision(..) => {}
            }
        }
        for &c in changes {
            match c {
                Change::Service(k, Some(s)) => b.add_service(&mut next, k, s),
                Change::Ingress(k, Some(i)) => b.add_ingress(&mut next, k, i),
                _ => {}
            }
        }
        b.finish(next)
    }

    fn remove_service(&mut self, settings: &Config, key: &Key, svc: &Service) {
        let owner = Owner::Service(key.clone());
        for h in hosts::service_hosts(settings, svc) {
            self.remove_host(&normalize_owned(&h.host), &owner);
        }
        for r in service_revisions(svc) {
            self.unuse(&Key::new(&svc.namespace, r));
        }
    }

    fn remove_ingress(&mut self, key: &Key, ing: &Ingress) {
        let owner = Owner::Ingress(key.clone());
        for rule in &ing.rules {
            for h in &rule.hosts {
                self.remove_host(&normalize_owned(h), &owner);
            }
        }
        for (ns, r) in ingress_revisions(ing) {
            self.unuse(&Key::new(ns, r));
        }
    }

    fn remove_host(&mut self, host: &str, owner: &Owner) {
        if self.hosts.get(host).is_some_and(|r| r.owner == *owner) {
            self.hosts.remove(host);
        }
    }

    fn unuse(&mut self, rev: &Key) {
        match self.users.get(rev) {
            Some(&n) if n > 1 => {
                self.users.insert(rev.clone(), n - 1);
            }
            Some(_) => {
                self.users.remove(rev);
            }
            None => {}
        }
    }

    fn uses(&mut self, rev: Key) {
        let n = self.users.get(&rev).copied().unwrap_or(0);
        self.users.insert(rev, n + 1);
    }
}

/// The revisions a service sends to, each once.
fn service_revisions(svc: &Service) -> Vec<&str> {
    let mut v: Vec<&str> = svc.traffic.iter().map(|t| t.revision.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The revisions (namespace, name) an ingress sends to, each once.
fn ingress_revisions(ing: &Ingress) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = ing
        .rules
        .iter()
        .flat_map(|r| r.paths.iter())
        .flat_map(|p| &p.splits)
        .map(|s| {
            (
                s.namespace.as_deref().unwrap_or(&ing.namespace),
                s.revision.as_str(),
            )
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Compiles objects into a table, collecting host conflicts.
struct Builder<'a, F> {
    settings: &'a Config,
    objects: &'a Objects,
    resolve: F,
    errors: Vec<ConfigError>,
}

impl<R: Clone, F: FnMut(&Key) -> R> Builder<'_, F> {
    /// The key of revision `namespace/name` as the objects hold it (its strings shared with
    /// every target that names it), and its `R`.
    fn revision(&mut self, namespace: &str, name: &str) -> (Key, R) {
        let key = Key::new(namespace, name);
        let key = match self.objects.revisions.get_key_value(&key) {
            Some((k, _)) => k.clone(),
            None => key,
        };
        let r = (self.resolve)(&key);
        (key, r)
    }

    /// Inserts `host` for `owner` unless another object (or this one, twice) has it.
    fn claim(
        &mut self,
        table: &mut RouteTable<R>,
        host: &str,
        route: Arc<HostRoute<R>>,
        at: impl FnOnce() -> (String, String),
    ) {
        let host = normalize_owned(host);
        if let Some(prev) = table.hosts.get(host.as_str()) {
            let (path, origin) = at();
            self.errors.push(ConfigError::new(
                path,
                format!(
                    "host {host:?} of {origin} is already served by {}; a host may belong to one service or rule",
                    prev.owner
                ),
            ));
            return;
        }
        table.hosts.insert(host.into_boxed_str(), route);
    }

    fn add_service(&mut self, table: &mut RouteTable<R>, key: &Key, svc: &Service) {
        let owner = Owner::Service(key.clone());
        let targets: Vec<(Key, R)> = svc
            .traffic
            .iter()
            .map(|t| self.revision(&svc.namespace, &t.revision))
            .collect();
        let target = |t: usize, percent: u32| {
            let (k, r) = &targets[t];
            Target::new(r.clone(), k, percent)
        };
        let tag_target = |t: usize| {
            let mut target = target(t, 100);
            target.tag = svc.traffic[t]
                .tag
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok());
            target
        };
        let affinity = svc.affinity.as_ref().map(compile_affinity);
        let split = Split::new(
            (0..svc.traffic.len())
                .map(|t| target(t, svc.traffic[t].percent))
                .collect(),
        );
        let redirect_https = svc.http_option == HttpOption::Redirect;
        let route = |paths: Arc<[PathRoute<R>]>, tags, external| {
            Arc::new(HostRoute {
                external,
                owner: owner.clone(),
                paths,
                tags,
                redirect_https,
                readiness: None,
            })
        };
        let no_tags = || Arc::new([]) as Arc<[(Box<str>, Target<R>)]>;
        let tags = if self.settings.tag_header_routing {
            svc.traffic
                .iter()
                .enumerate()
                .filter_map(|(t, tt)| Some((tt.tag.as_deref()?.into(), tag_target(t))))
                .collect()
        } else {
            no_tags()
        };
        // One route per listener visibility for the split, one per tag: shared by all the
        // hosts that send there.
        let split_paths: Arc<[PathRoute<R>]> = Arc::new([PathRoute::catch_all(split, affinity)]);
        let split_routes = [
            route(split_paths.clone(), tags.clone(), true),
            route(split_paths, tags, false),
        ];
        let tag_routes: Vec<Option<[Arc<HostRoute<R>>; 2]>> = svc
            .traffic
            .iter()
            .enumerate()
            .map(|(t, tt)| {
                tt.tag.as_ref().map(|_| {
                    let paths: Arc<[PathRoute<R>]> =
                        Arc::new([PathRoute::catch_all(Split::new(vec![tag_target(t)]), None)]);
                    [
                        route(paths.clone(), no_tags(), true),
                        route(paths, no_tags(), false),
                    ]
                })
            })
            .collect();
        let at = || crate::objects::path_of(Kind::Service, key);
        for h in hosts::service_hosts(self.settings, svc) {
            let pick = usize::from(h.internal_only);
            let r = match h.target {
                HostTarget::Split => split_routes[pick].clone(),
                HostTarget::Tag(t) => match tag_routes.get(t).and_then(|r| r.as_ref()) {
                    Some(r) => r[pick].clone(),
                    None => split_routes[pick].clone(),
                },
            };
            self.claim(table, &h.host, r, || {
                let at = at();
                (h.path(&at), h.origin(&at, svc))
            });
        }
        let mut revisions: Vec<Key> = targets.into_iter().map(|(k, _)| k).collect();
        revisions.sort_unstable();
        revisions.dedup();
        for k in revisions {
            table.uses(k);
        }
    }

    fn add_ingress(&mut self, table: &mut RouteTable<R>, key: &Key, ing: &Ingress) {
        let owner = Owner::Ingress(key.clone());
        for (r, rule) in ing.rules.iter().enumerate() {
            let paths: Arc<[PathRoute<R>]> = rule
                .paths
                .iter()
                .map(|p| PathRoute {
                    prefix: p.path.as_str().into(),
                    headers: header_pairs(&p.headers).iter().cloned().collect(),
                    append_headers: header_pairs(&p.append_headers),
                    rewrite_host: p
                        .rewrite_host
                        .as_deref()
                        .and_then(|h| HeaderValue::from_str(h).ok()),
                    split: Split::new(
                        p.splits
                            .iter()
                            .map(|s| {
                                let ns = s.namespace.as_deref().unwrap_or(&ing.namespace);
                                let (k, rev) = self.revision(ns, &s.revision);
                                let mut t = Target::new(rev, &k, s.percent);
                                t.append_headers = header_pairs(&s.append_headers);
                                t
                            })
                            .collect(),
                    ),
                    affinity: p.affinity.as_ref().map(compile_affinity),
                })
                .collect();
            let route = Arc::new(HostRoute {
                external: rule.visibility == Visibility::External,
                owner: owner.clone(),
                paths,
                tags: Arc::new([]),
                redirect_https: rule.http_option == HttpOption::Redirect,
                readiness: None,
            });
            for (h, host) in rule.hosts.iter().enumerate() {
                self.claim(table, host, route.clone(), || {
                    let at = crate::objects::path_of(Kind::Ingress, key);
                    let p = format!("{at}.rules[{r}].hosts[{h}]");
                    (p.clone(), p)
                });
            }
        }
        for (ns, r) in ingress_revisions(ing) {
            table.uses(Key::new(ns, r));
        }
    }

    fn add_readiness(&mut self, table: &mut RouteTable<R>) {
        let route = Arc::new(HostRoute {
            external: true,
            owner: Owner::Readiness,
            paths: Arc::new([]),
            tags: Arc::new([]),
            redirect_https: false,
            readiness: Some(self.settings.readiness.path.as_str().into()),
        });
        for (h, host) in self.settings.readiness.hosts.iter().enumerate() {
            self.claim(table, host, route.clone(), || {
                let p = format!("readiness.hosts[{h}]");
                (p.clone(), p)
            });
        }
    }

    fn finish(self, table: RouteTable<R>) -> Result<RouteTable<R>, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(table)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

impl<R> HostRoute<R> {
    /// The first path rule whose prefix and headers match. `header` returns a request
    /// header's value by name.
    #[inline]
    pub fn route<'a>(
        &self,
        path: &[u8],
        header: impl Fn(&HeaderName) -> Option<&'a [u8]>,
    ) -> Option<&PathRoute<R>> {
        self.paths.iter().find(|p| {
            path.starts_with(p.prefix.as_bytes())
                && p.headers
                    .iter()
                    .all(|(n, v)| header(n) == Some(v.as_bytes()))
        })
    }

    /// The target of tag `tag` (for `Knative-Serving-Tag` routing), if this host has it.
    #[inline]
    pub fn tag_target(&self, tag: &[u8]) -> Option<&Target<R>> {
        self.tags
            .iter()
            .find(|(t, _)| t.as_bytes() == tag)
            .map(|(_, target)| target)
    }
}

/// Lowercases `raw` into `buf`, dropping a `:port` and one trailing dot.
#[inline]
pub fn normalize_host<'b>(
    raw: &[u8],
    buf: &'b mut [u8; MAX_HOST_LEN],
) -> Result<&'b str, HostError> {
    let mut host = raw;
    if host.first() == Some(&b'[') {
        // IPv6 literal: keep through the closing bracket.
        let end = host
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::Invalid)?;
        let rest = &host[end + 1..];
        if !(rest.is_empty() || (rest[0] == b':' && is_port(&rest[1..]))) {
            return Err(HostError::Invalid);
        }
        host = &host[..=end];
    } else if let Some(colon) = host.iter().rposition(|&b| b == b':') {
        if !is_port(&host[colon + 1..]) {
            return Err(HostError::Invalid);
        }
        host = &host[..colon];
    }
    if let Some(h) = host.strip_suffix(b".") {
        host = h;
    }
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return Err(HostError::Invalid);
    }
    let out = &mut buf[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')) {
            return Err(HostError::Invalid);
        }
        *o = b.to_ascii_lowercase();
    }
    // Only ASCII was copied, so this cannot fail.
    std::str::from_utf8(out).map_err(|_| HostError::Invalid)
}

fn is_port(p: &[u8]) -> bool {
    !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit)
}

/// The normalised form of a configured host (lowercase, no trailing dot).
pub fn normalize_owned(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Validates `cfg` and compiles it into a [`RouteTable`] with no run-time revisions.
pub fn compile(cfg: &Config) -> Result<RouteTable, ConfigErrors> {
    validate::validate(cfg)?;
    RouteTable::build(cfg, &Objects::from_config(cfg), |_| ())
}

fn header_pairs(
    m: &std::collections::BTreeMap<String, String>,
) -> Arc<[(HeaderName, HeaderValue)]> {
    m.iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(h: &str) -> Result<String, HostError> {
        let mut buf = [0u8; MAX_HOST_LEN];
        normalize_host(h.as_bytes(), &mut buf).map(str::to_owned)
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(norm("Hello.Example.COM").unwrap(), "hello.example.com");
        assert_eq!(norm("hello.example.com:8080").unwrap(), "hello.example.com");
        assert_eq!(norm("hello.example.com.").unwrap(), "hello.example.com");
        assert_eq!(norm("hello.example.com.:80").unwrap(), "hello.example.com");
        assert_eq!(norm("[::1]:80").unwrap(), "[::1]");
        assert_eq!(norm("10.0.0.1").unwrap(), "10.0.0.1");
        for bad in [
            "",
            ":80",
            "a b",
            "a:b",
            "a/b",
            "[::1",
            "[::1]x",
            "h\u{e9}.com",
            "a:123456",
        ] {
            assert!(norm(bad).is_err(), "{bad:?}");
        }
        assert!(norm(&"a".repeat(400)).is_err());
    }
}
