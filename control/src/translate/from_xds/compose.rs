//! Accepted resource sets -> one config, and its validation mapped back to resources.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weir_config::model::{HttpOption, Ingress, PathRule, Readiness, Revision, Rule, Visibility};
use weir_config::sharded::ShardedMap;
use weir_config::{Change, Config, Key, Objects};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

use super::clusters::{cluster_label, cluster_spec, endpoints, ClusterSpec};
use super::{rc_label, route_set, RouteSet, VhostRoutes};
use crate::translate::{TranslateError, EXTERNAL_ROUTES, INTERNAL_ROUTES, METADATA_KEY};

/// A composed config (ingresses, revisions and the readiness hosts of status routes) and,
/// for each ingress and revision, the resource it came from.
///
/// Composing again from the last `Composed` reuses its `Arc`s for every ingress built from
/// the same virtual host with the same hosts, and every revision that did not change, so
/// [`Objects::diff`] against the last one is a pointer comparison for what did not change.
#[derive(Debug, Clone, Default)]
pub struct Composed {
    pub objects: Objects,
    pub readiness: Readiness,
    /// Per ingress: (resource label, virtual host `at`), and the virtual host and hosts it
    /// was built from.
    ingresses: ShardedMap<Key, Arc<Source>>,
    /// Per revision: the cluster it came from.
    clusters: ShardedMap<Key, String>,
    /// Per cluster: how many served virtual hosts name it (a cluster's revision is in the
    /// config while it is named), and its revision.
    refs: ShardedMap<String, Ref>,
}

/// How often a cluster is named, and the revision it stands for.
#[derive(Debug, Clone)]
struct Ref {
    count: u32,
    revision: Option<Key>,
}

/// What an ingress was built from.
#[derive(Debug, Clone)]
struct Source {
    /// The RouteConfiguration of the routes served (shared by all its ingresses).
    set: Arc<str>,
    vhost: Arc<VhostRoutes>,
    visibility: Visibility,
    redirect: bool,
}

/// Whether a RouteConfiguration holds one object's hosts, as `weir control` serves them
/// (`external_services/service/default/hello`): its virtual hosts' domains are its own, so
/// it can be composed alone.
pub fn per_object(set: &str) -> bool {
    set.starts_with(&format!("{EXTERNAL_ROUTES}/"))
        || set.starts_with(&format!("{INTERNAL_ROUTES}/"))
}

/// The ingress a virtual host of a per-object RouteConfiguration becomes: its name made a
/// label, with a hash of the RouteConfiguration's and the virtual host's names, so that it
/// is the same whatever else is composed, and distinct for the external and cluster-local
/// virtual hosts of one service.
fn object_key(set: &str, vh: &VhostRoutes) -> Key {
    let (namespace, base) = ingress_name(&vh.name, vh.paths.first());
    let mut h: u32 = 0x811c_9dc5;
    for b in set.bytes().chain([b'\n']).chain(vh.name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let base = base[..base.len().min(54)].trim_end_matches('-');
    Key::new(&namespace, &format!("{base}-{h:08x}"))
}

/// The ingress of `vh`'s routes `served` (from `set`) on `hosts`, `prev`'s if it was built
/// from the same.
fn ingress_of(
    prev: &Composed,
    key: &Key,
    set: &RouteSet,
    res: &str,
    vh: &VhostRoutes,
    served: &Arc<VhostRoutes>,
    hosts: &[&str],
) -> (Arc<Ingress>, Arc<Source>) {
    let same = prev.ingresses.get(key).is_some_and(|p| {
        Arc::ptr_eq(&p.vhost, served)
            && p.visibility == set.visibility
            && p.redirect == vh.redirect_https
    }) && prev
        .objects
        .ingresses
        .get(key)
        .is_some_and(|i| i.rules.first().is_some_and(|r| r.hosts == hosts));
    if same {
        if let (Some(i), Some(s)) = (prev.objects.ingresses.get(key), prev.ingresses.get(key)) {
            return (i.clone(), s.clone());
        }
    }
    let ingress = Arc::new(Ingress {
        name: key.name.to_string(),
        namespace: key.namespace.to_string(),
        rules: vec![Rule {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            visibility: set.visibility,
            http_option: if vh.redirect_https {
                HttpOption::Redirect
            } else {
                HttpOption::Enabled
            },
            paths: served.paths.clone(),
            unknown: Default::default(),
        }],
        hold: None,
        unknown: Default::default(),
    });
    let source = Arc::new(Source {
        set: res.into(),
        vhost: served.clone(),
        visibility: set.visibility,
        redirect: vh.redirect_https,
    });
    (ingress, source)
}

/// The revision of cluster `spec` with its endpoints, `prev`'s if the same.
fn revision_of(
    prev: &Composed,
    spec: &ClusterSpec,
    eds: &BTreeMap<String, Vec<String>>,
) -> (Key, Arc<Revision>) {
    let key = Key::new(&spec.revision.namespace, &spec.revision.name);
    let endpoints = match &spec.eds_name {
        Some(e) => eds.get(e).map(Vec::as_slice).unwrap_or_default(),
        None => &spec.revision.endpoints,
    };
    let rev = match prev.objects.revisions.get(&key) {
        Some(p) if same_revision(p, &spec.revision, endpoints) => p.clone(),
        _ => {
            let mut r = spec.revision.clone();
            r.endpoints = endpoints.to_vec();
            Arc::new(r)
        }
    };
    (key, rev)
}

/// The clusters a virtual host names, each once.
fn clusters_of(vh: &VhostRoutes) -> Vec<&str> {
    let mut v: Vec<&str> = vh.clusters.iter().map(|c| c.cluster.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Composed {
    /// The ingresses and revisions as a config (sorted by namespace and name).
    pub fn config(&self) -> Config {
        let mut settings = Config::empty();
        settings.readiness = self.readiness.clone();
        self.objects.to_config(&settings)
    }

    /// The cluster of the revision `key`.
    pub fn cluster_of(&self, key: &Key) -> Option<&str> {
        self.clusters.get(key).map(String::as_str)
    }
}

/// Joins accepted resource sets into one config, reusing what `prev` built from the same
/// virtual hosts and clusters. Routes that name a cluster missing from `clusters` are
/// returned as errors (one per reference). Clusters that no route names take no traffic and
/// are left out, so adding one ahead of its routes changes nothing.
///
/// A virtual host of a plain RouteConfiguration that redirects to https takes its routes
/// from the virtual host with the same domain in the `*_tls_services` RouteConfiguration of
/// the same visibility (Kourier's `httpOption: Redirected`); status virtual hosts become
/// `readiness` hosts.
pub fn compose(
    routes: &BTreeMap<String, RouteSet>,
    clusters: &BTreeMap<String, ClusterSpec>,
    eds: &BTreeMap<String, Vec<String>>,
    prev: &Composed,
) -> Result<Composed, Vec<TranslateError>> {
    let mut out = Composed::default();
    let mut refs: HashMap<&str, u32> = HashMap::new();
    // The TLS routes of each visibility, by domain.
    let mut tls_routes: HashMap<(Visibility, &str), (&RouteSet, &Arc<VhostRoutes>)> =
        HashMap::new();
    for set in routes.values().filter(|s| s.tls) {
        for vh in &set.vhosts {
            for d in &vh.domains {
                tls_routes.entry((set.visibility, d)).or_insert((set, vh));
            }
        }
    }
    // External sets first: a host an external set shares with an internal one is external
    // (Kourier lists external hosts in both, its internal gateway serves them too, as
    // Weir's does). Then by name.
    let mut order: Vec<&RouteSet> = routes.values().filter(|s| !s.tls).collect();
    order.sort_by_key(|s| (s.visibility != Visibility::External, s.name.as_str()));
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    let mut missing = Vec::new();
    let mut ingresses: Vec<(Key, Arc<Ingress>)> = Vec::new();
    let mut sources: HashMap<Key, Arc<Source>> = HashMap::new();
    for set in order {
        for vh in &set.vhosts {
            let hosts: Vec<&str> = vh
                .domains
                .iter()
                .filter(|d| match claimed.get(d.as_str()) {
                    Some(owner) => *owner == set.name,
                    None => {
                        claimed.insert(d, &set.name);
                        true
                    }
                })
                .map(String::as_str)
                .collect();
            if hosts.is_empty() {
                continue;
            }
            if let Some(path) = &vh.readiness {
                out.readiness.path = path.clone();
                out.readiness
                    .hosts
                    .extend(hosts.iter().map(|h| h.to_string()));
                continue;
            }
            // The routes served: the vhost's own, or for a redirecting vhost without routes
            // those of its TLS counterpart (none: https has no route for these hosts).
            let (res, served) = if vh.redirect_https && vh.paths.is_empty() {
                match hosts
                    .iter()
                    .find_map(|h| tls_routes.get(&(set.visibility, *h)))
                {
                    Some((tls_set, tls_vh)) => (&tls_set.name, *tls_vh),
                    None => (&set.name, vh),
                }
            } else {
                (&set.name, vh)
            };
            for r in &served.clusters {
                if !clusters.contains_key(&r.cluster) {
                    missing.push(TranslateError::new(
                        rc_label(res),
                        served.field(r),
                        format!("cluster {:?} is not among the Clusters received", r.cluster),
                    ));
                }
            }
            for c in clusters_of(served) {
                *refs.entry(c).or_insert(0) += 1;
            }
            let key = if per_object(&set.name) && !sources.contains_key(&object_key(&set.name, vh))
            {
                object_key(&set.name, vh)
            } else {
                let (namespace, mut name) = ingress_name(&vh.name, served.paths.first());
                if sources.contains_key(&Key::new(&namespace, &name)) {
                    // Deterministic: the n-th virtual host of this name in the composing
                    // order.
                    let base = name[..name.len().min(56)].trim_end_matches('-').to_string();
                    name = (2..)
                        .map(|n| format!("{base}-{n}"))
                        .find(|n| !sources.contains_key(&Key::new(&namespace, n)))
                        .expect("some suffix is free");
                }
                Key::new(&namespace, &name)
            };
            let (ingress, source) = ingress_of(prev, &key, set, res, vh, served, &hosts);
            sources.insert(key.clone(), source);
            ingresses.push((key, ingress));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    out.ingresses = sources.into_iter().collect();
    let mut revisions: Vec<(Key, Arc<Revision>)> = Vec::new();
    let mut cluster_of: Vec<(Key, String)> = Vec::new();
    let mut named: Vec<(String, Ref)> = Vec::with_capacity(refs.len());
    for (name, spec) in clusters {
        let Some(count) = refs.get(name.as_str()) else {
            continue;
        };
        let (key, rev) = revision_of(prev, spec, eds);
        cluster_of.push((key.clone(), name.clone()));
        named.push((
            name.clone(),
            Ref {
                count: *count,
                revision: Some(key.clone()),
            },
        ));
        revisions.push((key, rev));
    }
    out.refs = named.into_iter().collect();
    out.clusters = cluster_of.into_iter().collect();
    out.objects.ingresses = ingresses.into_iter().collect();
    out.objects.revisions = revisions.into_iter().collect();
    Ok(out)
}

/// What composing changed: the new composition and the changed objects.
pub type Recomposed = (Composed, Vec<Change>);

/// [`compose`] after only the per-object RouteConfigurations `touched` changed (each with
/// what it was before; `routes` has what they are now), built from `prev` without looking at
/// anything else. `None` when that cannot be done exactly (another kind of RouteConfiguration
/// is touched, a status or redirect-only virtual host, an ingress name already taken): then
/// compose everything.
///
/// Unlike [`compose`], a domain that another RouteConfiguration also has is not dropped here
/// but left for the proxy's route table to refuse (`weir control` never sends one twice).
pub fn compose_changed(
    routes: &BTreeMap<String, RouteSet>,
    clusters: &BTreeMap<String, ClusterSpec>,
    eds: &BTreeMap<String, Vec<String>>,
    prev: &Composed,
    touched: &[(String, Option<RouteSet>)],
) -> Option<Result<Recomposed, Vec<TranslateError>>> {
    let simple = |set: &RouteSet| {
        !set.tls
            && set
                .vhosts
                .iter()
                .all(|vh| vh.readiness.is_none() && !(vh.redirect_https && vh.paths.is_empty()))
    };
    // Each name once, with what it was before the first change.
    let mut seen = std::collections::HashSet::new();
    let touched: Vec<&(String, Option<RouteSet>)> =
        touched.iter().filter(|(n, _)| seen.insert(n)).collect();
    for (name, old) in &touched {
        if !per_object(name) || !old.iter().chain(routes.get(name)).all(simple) {
            return None;
        }
    }
    let mut out = prev.clone();
    let mut delta: HashMap<&str, i64> = HashMap::new();
    let mut keys: Vec<Key> = Vec::new();
    for (name, old) in &touched {
        for vh in old.iter().flat_map(|s| &s.vhosts) {
            let key = object_key(name, vh);
            if out.ingresses.get(&key).is_some_and(|s| *s.set == **name) {
                out.ingresses.remove(&key);
                out.objects.ingresses.remove(&key);
                keys.push(key);
            }
            for c in clusters_of(vh) {
                *delta.entry(c).or_insert(0) -= 1;
            }
        }
    }
    let mut missing = Vec::new();
    for (name, _) in &touched {
        let Some(set) = routes.get(name) else {
            continue;
        };
        for vh in &set.vhosts {
            let key = object_key(name, vh);
            if out.ingresses.contains_key(&key) {
                return None; // taken (by a hash collision, or twice in this set)
            }
            for r in &vh.clusters {
                if !clusters.contains_key(&r.cluster) {
                    missing.push(TranslateError::new(
                        rc_label(name),
                        vh.field(r),
                        format!("cluster {:?} is not among the Clusters received", r.cluster),
                    ));
                }
            }
            for c in clusters_of(vh) {
                *delta.entry(c).or_insert(0) += 1;
            }
            let hosts: Vec<&str> = vh.domains.iter().map(String::as_str).collect();
            let (ingress, source) = ingress_of(prev, &key, set, name, vh, vh, &hosts);
            out.ingresses.insert(key.clone(), source);
            out.objects.ingresses.insert(key.clone(), ingress);
            keys.push(key);
        }
    }
    if !missing.is_empty() {
        return Some(Err(missing));
    }
    let mut revisions = Vec::new();
    for (c, d) in delta {
        let old = out.refs.get(c).cloned();
        let before = i64::from(old.as_ref().map_or(0, |r| r.count));
        let after = (before + d).max(0);
        if after == 0 {
            out.refs.remove(c);
            if let Some(key) = old.and_then(|r| r.revision) {
                out.clusters.remove(&key);
                out.objects.revisions.remove(&key);
                revisions.push(key);
            }
            continue;
        }
        let revision = match old.and_then(|r| r.revision) {
            Some(key) => Some(key),
            // Newly named: its revision comes in.
            None => clusters.get(c).map(|spec| {
                let (key, rev) = revision_of(prev, spec, eds);
                out.clusters.insert(key.clone(), c.to_string());
                out.objects.revisions.insert(key.clone(), rev);
                revisions.push(key.clone());
                key
            }),
        };
        out.refs.insert(
            c.to_string(),
            Ref {
                count: after as u32,
                revision,
            },
        );
    }
    let changes = changed(prev, &out, &keys, &revisions);
    Some(Ok((out, changes)))
}

/// `prev` after the Clusters `touched` changed (`clusters` has them now; a removed one is
/// missing): the revisions of those that routes name are rebuilt. `Err` with the names of
/// routed clusters that are gone (the routes still name them).
pub fn recompose_clusters(
    clusters: &BTreeMap<String, ClusterSpec>,
    eds: &BTreeMap<String, Vec<String>>,
    prev: &Composed,
    touched: &[&str],
) -> Result<Recomposed, Vec<String>> {
    let gone: Vec<String> = touched
        .iter()
        .filter(|c| prev.refs.contains_key(**c) && !clusters.contains_key(**c))
        .map(|c| c.to_string())
        .collect();
    if !gone.is_empty() {
        return Err(gone);
    }
    let mut out = prev.clone();
    let mut revisions = Vec::new();
    for c in touched {
        let (Some(r), Some(spec)) = (prev.refs.get(*c), clusters.get(*c)) else {
            continue;
        };
        let (key, rev) = revision_of(prev, spec, eds);
        // A cluster that now stands for another revision: the old one goes.
        if let Some(old) = r.revision.as_ref().filter(|old| **old != key) {
            out.clusters.remove(old);
            out.objects.revisions.remove(old);
            revisions.push(old.clone());
        }
        out.clusters.insert(key.clone(), c.to_string());
        out.objects.revisions.insert(key.clone(), rev);
        out.refs.insert(
            c.to_string(),
            Ref {
                count: r.count,
                revision: Some(key.clone()),
            },
        );
        revisions.push(key);
    }
    let changes = changed(prev, &out, &[], &revisions);
    Ok((out, changes))
}

impl Composed {
    /// Whether a route names `cluster`.
    pub fn routes_to(&self, cluster: &str) -> bool {
        self.refs.contains_key(cluster)
    }

    /// The revision `cluster` stands for, while routes name it.
    pub fn revision_of(&self, cluster: &str) -> Option<Key> {
        self.refs.get(cluster).and_then(|r| r.revision.clone())
    }
}

/// The changes from `prev` to `next` among the ingresses and revisions named.
fn changed(prev: &Composed, next: &Composed, ingresses: &[Key], revisions: &[Key]) -> Vec<Change> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for k in revisions {
        if !seen.insert((1, k)) {
            continue;
        }
        let (a, b) = (prev.objects.revisions.get(k), next.objects.revisions.get(k));
        if !same_arc(a, b) {
            out.push(Change::Revision(k.clone(), b.cloned()));
        }
    }
    for k in ingresses {
        if !seen.insert((2, k)) {
            continue;
        }
        let (a, b) = (prev.objects.ingresses.get(k), next.objects.ingresses.get(k));
        if !same_arc(a, b) {
            out.push(Change::Ingress(k.clone(), b.cloned()));
        }
    }
    out
}

fn same_arc<T: PartialEq>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        _ => false,
    }
}

/// Whether `r` is `spec` with `endpoints`.
fn same_revision(r: &Revision, spec: &Revision, endpoints: &[String]) -> bool {
    r.endpoints == endpoints
        && r.name == spec.name
        && r.namespace == spec.namespace
        && r.container_concurrency == spec.container_concurrency
        && r.timeout == spec.timeout
        && r.protocol == spec.protocol
}

/// An ingress (namespace, name) from a virtual host name such as `default/hello/current`:
/// DNS-1123 labels, which validation requires.
fn ingress_name(vhost: &str, first: Option<&PathRule>) -> (String, String) {
    let (ns, rest) = match vhost.split_once('/') {
        Some((ns, rest)) => (label(ns), rest),
        None => (String::new(), vhost),
    };
    let ns = if ns.is_empty() {
        first
            .and_then(|p| p.splits.first())
            .and_then(|s| s.namespace.clone())
            .unwrap_or_else(|| "default".into())
    } else {
        ns
    };
    let name = label(rest);
    (
        ns,
        if name.is_empty() {
            "vhost".into()
        } else {
            name
        },
    )
}

fn label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let cut = &trimmed[..trimmed.len().min(63)];
    cut.trim_end_matches('-').to_string()
}

impl Composed {
    /// Checks what changed from `prev` (each changed ingress and revision, against the
    /// revisions of this composition) the way the proxy will before compiling it; each
    /// error names the resource it came from and keeps the config path. What did not change
    /// was checked when it did.
    pub fn check(&self, changes: &[Change]) -> Result<(), Vec<TranslateError>> {
        match weir_config::validate::changes(&Config::empty(), &self.objects, changes) {
            Ok(()) => Ok(()),
            Err(errs) => Err(errs
                .0
                .iter()
                .map(|e| self.map_error(&e.path, &e.message))
                .collect()),
        }
    }

    /// An error about `ingresses[ns/name]...` or `revisions[ns/name]...` as one about the
    /// resource the object came from.
    pub fn map_error(&self, path: &str, message: &str) -> TranslateError {
        let msg = format!("{message} (config path {path})");
        if let Some((key, rest)) = keyed(path, "ingresses[") {
            if let Some(src) = self.ingresses.get(&key) {
                let rest = rest
                    .strip_prefix(".rules[0]")
                    .unwrap_or(rest)
                    .replace(".paths[", ".routes[")
                    .replace(".splits[", ".weighted_clusters[")
                    .replace(".hosts[", ".domains[");
                return TranslateError::new(
                    rc_label(&src.set),
                    format!("{}{rest}", src.vhost.at()),
                    msg,
                );
            }
        }
        if let Some((key, rest)) = keyed(path, "revisions[") {
            if let Some(res) = self.clusters.get(&key).map(|c| cluster_label(c)) {
                let rest = rest.trim_start_matches('.');
                let field = match rest {
                    "container_concurrency" | "timeout" | "protocol" => {
                        format!("metadata.filter_metadata.{METADATA_KEY}.{rest}")
                    }
                    "name" | "namespace" => "name".into(),
                    other => other.into(),
                };
                return TranslateError::new(&res, field, msg);
            }
        }
        TranslateError::new("config", path, message)
    }
}

/// `"ingresses[ns/name].rules[0]"` -> `(ns/name, ".rules[0]")`.
fn keyed<'a>(path: &'a str, prefix: &str) -> Option<(Key, &'a str)> {
    let rest = path.strip_prefix(prefix)?;
    let (key, rest) = rest.split_once(']')?;
    let (ns, name) = key.split_once('/')?;
    Some((Key::new(ns, name), rest))
}

/// Every error, `; `-separated, at most `max` (then how many more).
pub fn join_errors(errs: &[TranslateError], max: usize) -> String {
    let mut s = errs
        .iter()
        .take(max)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if errs.len() > max {
        s.push_str(&format!("; and {} more", errs.len() - max));
    }
    s
}

/// Translates a whole set of resources into a config (ingresses and revisions only).
pub fn from_resources(
    routes: &[RouteConfiguration],
    clusters: &[Cluster],
    clas: &[ClusterLoadAssignment],
) -> Result<Config, TranslateError> {
    let mut sets = BTreeMap::new();
    for rc in routes {
        let set = route_set(rc)?;
        if sets.insert(rc.name.clone(), set).is_some() {
            return Err(TranslateError::new(
                rc_label(&rc.name),
                "name",
                "listed twice",
            ));
        }
    }
    let mut specs = BTreeMap::new();
    for c in clusters {
        let Some(spec) = cluster_spec(c)? else {
            continue;
        };
        if specs.insert(c.name.clone(), spec).is_some() {
            return Err(TranslateError::new(
                cluster_label(&c.name),
                "name",
                "listed twice",
            ));
        }
    }
    let mut eds = BTreeMap::new();
    for cla in clas {
        eds.insert(cla.cluster_name.clone(), endpoints(cla)?);
    }
    let composed =
        compose(&sets, &specs, &eds, &Composed::default()).map_err(|mut e| e.swap_remove(0))?;
    let changes = Objects::default().diff(&composed.objects);
    composed.check(&changes).map_err(|mut e| e.swap_remove(0))?;
    Ok(composed.config())
}
