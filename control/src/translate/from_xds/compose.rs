//! Accepted resource sets -> one config, and its validation mapped back to resources.

use std::collections::{BTreeMap, HashMap};

use weir_config::model::{HttpOption, Ingress, PathRule, Rule, Visibility};
use weir_config::Config;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;

use super::clusters::{cluster_label, cluster_spec, endpoints, ClusterSpec};
use super::{rc_label, route_set, RouteSet, VhostRoutes};
use crate::translate::{TranslateError, EXTERNAL_ROUTES, INTERNAL_ROUTES, METADATA_KEY};

/// A composed config and, for each ingress and revision, the resource it came from.
#[derive(Debug, Clone)]
pub struct Composed {
    pub config: Config,
    /// Per ingress: (resource label, virtual host `at`).
    ingresses: Vec<(String, String)>,
    /// Per revision: the cluster it came from.
    pub clusters: Vec<String>,
}

/// Joins accepted resource sets into one config. Routes that name a cluster missing from
/// `clusters` are returned as errors (one per reference). Clusters that no route names take
/// no traffic and are left out, so adding one ahead of its routes changes nothing.
///
/// A virtual host of a plain RouteConfiguration that redirects to https takes its routes
/// from the virtual host with the same domain in the `*_tls_services` RouteConfiguration of
/// the same visibility (Kourier's `httpOption: Redirected`); status virtual hosts become
/// `readiness` hosts.
pub fn compose(
    routes: &BTreeMap<String, RouteSet>,
    clusters: &BTreeMap<String, ClusterSpec>,
    eds: &BTreeMap<String, Vec<String>>,
) -> Result<Composed, Vec<TranslateError>> {
    let mut cfg = Config::empty();
    let mut prov = Composed {
        config: Config::empty(),
        ingresses: Vec::new(),
        clusters: Vec::new(),
    };
    let mut referenced: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // The TLS routes of each visibility, by domain.
    let mut tls_routes: HashMap<(Visibility, &str), (&RouteSet, &VhostRoutes)> = HashMap::new();
    for set in routes.values().filter(|s| s.tls) {
        for vh in &set.vhosts {
            for d in &vh.domains {
                tls_routes.entry((set.visibility, d)).or_insert((set, vh));
            }
        }
    }
    // external_services first: a host it shares with internal_services is external (Kourier
    // lists external hosts in both, its internal gateway serves them too, as Weir's does).
    let mut order: Vec<&RouteSet> = routes.values().filter(|s| !s.tls).collect();
    order.sort_by_key(|s| {
        (
            s.name != EXTERNAL_ROUTES,
            s.name != INTERNAL_ROUTES,
            s.name.clone(),
        )
    });
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    let mut missing = Vec::new();
    // Ingress (namespace, name)s given out: a virtual host name cut to a label may repeat.
    let mut names: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    for set in order {
        for vh in &set.vhosts {
            let hosts: Vec<String> = vh
                .domains
                .iter()
                .filter(|d| match claimed.get(d.as_str()) {
                    Some(owner) => *owner == set.name,
                    None => {
                        claimed.insert(d, &set.name);
                        true
                    }
                })
                .cloned()
                .collect();
            if hosts.is_empty() {
                continue;
            }
            if let Some(path) = &vh.readiness {
                cfg.readiness.path = path.clone();
                cfg.readiness.hosts.extend(hosts);
                continue;
            }
            // The routes served: the vhost's own, or for a redirecting vhost without routes
            // those of its TLS counterpart (none: https has no route for these hosts).
            let (res, served) = if vh.redirect_https && vh.paths.is_empty() {
                match hosts
                    .iter()
                    .find_map(|h| tls_routes.get(&(set.visibility, h.as_str())))
                {
                    Some((tls_set, tls_vh)) => (rc_label(&tls_set.name), *tls_vh),
                    None => (rc_label(&set.name), vh),
                }
            } else {
                (rc_label(&set.name), vh)
            };
            for (c, field) in &served.clusters {
                referenced.insert(c);
                if !clusters.contains_key(c) {
                    missing.push(TranslateError::new(
                        &res,
                        field,
                        format!("cluster {c:?} is not among the Clusters received"),
                    ));
                }
            }
            let (namespace, mut name) = ingress_name(&vh.name, served.paths.first());
            if names.contains(&(namespace.clone(), name.clone())) {
                // Deterministic: the n-th virtual host of this name in the composing order.
                let base = name[..name.len().min(56)].trim_end_matches('-').to_string();
                name = (2..)
                    .map(|n| format!("{base}-{n}"))
                    .find(|n| !names.contains(&(namespace.clone(), n.clone())))
                    .expect("some suffix is free");
            }
            names.insert((namespace.clone(), name.clone()));
            cfg.ingresses.push(Ingress {
                name,
                namespace,
                rules: vec![Rule {
                    hosts,
                    visibility: set.visibility,
                    http_option: if vh.redirect_https {
                        HttpOption::Redirect
                    } else {
                        HttpOption::Enabled
                    },
                    paths: served.paths.clone(),
                    unknown: Default::default(),
                }],
                unknown: Default::default(),
            });
            prov.ingresses.push((res.clone(), served.at.clone()));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    for (name, spec) in clusters {
        if !referenced.contains(name.as_str()) {
            continue;
        }
        let mut r = spec.revision.clone();
        if let Some(e) = &spec.eds_name {
            r.endpoints = eds.get(e).cloned().unwrap_or_default();
        }
        cfg.revisions.push(r);
        prov.clusters.push(name.clone());
    }
    prov.config = cfg;
    Ok(prov)
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
    /// Validates the config the way the proxy will before compiling it (compiling cannot fail
    /// after validation); each error names the resource it came from and keeps the config
    /// path.
    pub fn check(&self) -> Result<(), Vec<TranslateError>> {
        match weir_config::validate(&self.config) {
            Ok(_) => Ok(()),
            Err(errs) => Err(errs
                .0
                .iter()
                .map(|e| self.map_error(&e.path, &e.message))
                .collect()),
        }
    }

    fn map_error(&self, path: &str, message: &str) -> TranslateError {
        let msg = format!("{message} (config path {path})");
        if let Some((i, rest)) = indexed(path, "ingresses[") {
            if let Some((res, at)) = self.ingresses.get(i) {
                let rest = rest
                    .strip_prefix(".rules[0]")
                    .unwrap_or(rest)
                    .replace(".paths[", ".routes[")
                    .replace(".splits[", ".weighted_clusters[")
                    .replace(".hosts[", ".domains[");
                return TranslateError::new(res, format!("{at}{rest}"), msg);
            }
        }
        if let Some((i, rest)) = indexed(path, "revisions[") {
            if let Some(res) = self.clusters.get(i).map(|c| cluster_label(c)) {
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

/// `ingresses[3].rules[0]` -> (3, ".rules[0]").
fn indexed<'a>(path: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = path.strip_prefix(prefix)?;
    let (n, rest) = rest.split_once(']')?;
    Some((n.parse().ok()?, rest))
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
    let composed = compose(&sets, &specs, &eds).map_err(|mut e| e.swap_remove(0))?;
    composed.check().map_err(|mut e| e.swap_remove(0))?;
    Ok(composed.config)
}
