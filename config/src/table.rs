//! The compiled, immutable route table: what the request path reads, and nothing else.
//!
//! Built once per config update off the request path ([`compile`]); a request does one host
//! hash lookup, walks the (usually single) path rule of that host and draws once for the split.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use http::{HeaderName, HeaderValue};

use crate::error::ConfigErrors;
use crate::hosts::{self, HostTarget};
use crate::model::{Config, HttpOption, Protocol, Visibility};
use crate::split::{RevisionId, Split, Target};
use crate::validate::{self, parse_endpoint, Endpoint};

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The public listener: serves external hosts only.
    External,
    /// The cluster-local listener: serves every host.
    Internal,
}

/// A revision as the data plane needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionSpec {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub container_concurrency: u32,
    /// How long a request may be held for it.
    pub timeout: Duration,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
}

/// What a host answers with: its path rules in order, first match wins.
#[derive(Debug)]
pub struct HostRoute {
    /// Served on the external listener too (otherwise internal only).
    pub external: bool,
    /// `namespace/name` of the service or ingress that owns the host.
    pub owner: Arc<str>,
    /// Shared by every host of the same service or rule.
    pub paths: Arc<[PathRoute]>,
    /// For `tag_header_routing` on a service's default hosts: tag -> its target.
    pub tags: Arc<[(Box<str>, Target)]>,
    /// Plain-HTTP requests get a 301 to https.
    pub redirect_https: bool,
    /// A readiness host (`readiness.hosts`): Weir answers this path itself; `paths` is empty.
    pub readiness: Option<Box<str>>,
}

/// One path rule: a prefix, exact header matches, and where matching requests go.
#[derive(Debug, Clone)]
pub struct PathRoute {
    pub prefix: Box<str>,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// Set on the upstream request before the split (pre-split `append_headers`).
    pub append_headers: Arc<[(HeaderName, HeaderValue)]>,
    pub rewrite_host: Option<HeaderValue>,
    pub split: Split,
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

impl PathRoute {
    fn catch_all(split: Split, affinity: Option<AffinityMode>) -> PathRoute {
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

/// The immutable routing snapshot of one config generation.
#[derive(Debug)]
pub struct RouteTable {
    hosts: HashMap<Box<str>, HostRoute, RandomState>,
    revisions: Box<[RevisionSpec]>,
    tag_header_routing: bool,
}

/// Why a Host header could not be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Empty, too long, or with characters no DNS name or IP address has.
    Invalid,
}

/// Longest Host value accepted (a DNS name is 253 characters; room for a port).
pub const MAX_HOST_LEN: usize = 300;

impl RouteTable {
    /// Finds the route of a raw Host value (any case, with or without `:port` or a trailing
    /// dot) as seen on `listener`. Allocation-free.
    #[inline]
    pub fn lookup(
        &self,
        raw_host: &[u8],
        listener: Listener,
    ) -> Result<Option<&HostRoute>, HostError> {
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
            .filter(|r| r.external || listener == Listener::Internal))
    }

    pub fn revisions(&self) -> &[RevisionSpec] {
        &self.revisions
    }

    pub fn revision(&self, id: RevisionId) -> &RevisionSpec {
        &self.revisions[id.0 as usize]
    }

    pub fn tag_header_routing(&self) -> bool {
        self.tag_header_routing
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }
}

impl HostRoute {
    /// The first path rule whose prefix and headers match. `header` returns a request
    /// header's value by name.
    #[inline]
    pub fn route<'a>(
        &self,
        path: &[u8],
        header: impl Fn(&HeaderName) -> Option<&'a [u8]>,
    ) -> Option<&PathRoute> {
        self.paths.iter().find(|p| {
            path.starts_with(p.prefix.as_bytes())
                && p.headers
                    .iter()
                    .all(|(n, v)| header(n) == Some(v.as_bytes()))
        })
    }

    /// The target of tag `tag` (for `Knative-Serving-Tag` routing), if this host has it.
    #[inline]
    pub fn tag_target(&self, tag: &[u8]) -> Option<&Target> {
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

/// Validates `cfg` and compiles it into a [`RouteTable`].
pub fn compile(cfg: &Config) -> Result<RouteTable, ConfigErrors> {
    validate::validate(cfg)?;
    Ok(compile_valid(cfg))
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

/// Compiles a config that [`validate::validate`] accepted.
fn compile_valid(cfg: &Config) -> RouteTable {
    let default_timeout = cfg.hold.timeout.get().unwrap_or(Duration::from_secs(300));
    let mut rev_ids: HashMap<(&str, &str), RevisionId> =
        HashMap::with_capacity(cfg.revisions.len());
    let mut revisions = Vec::with_capacity(cfg.revisions.len());
    for r in &cfg.revisions {
        rev_ids.insert(
            (r.namespace.as_str(), r.name.as_str()),
            RevisionId(revisions.len() as u32),
        );
        revisions.push(RevisionSpec {
            namespace: r.namespace.as_str().into(),
            name: r.name.as_str().into(),
            container_concurrency: r.container_concurrency,
            timeout: r
                .timeout
                .as_ref()
                .and_then(|t| t.get())
                .unwrap_or(default_timeout),
            protocol: r.protocol,
            endpoints: r
                .endpoints
                .iter()
                .filter_map(|e| parse_endpoint(e).ok())
                .collect(),
        });
    }
    let rev = |ns: &str, name: &str| rev_ids[&(ns, name)];

    let total_hosts: usize = cfg.services.len() * 5 + cfg.ingresses.len() * 2;
    let mut hosts: HashMap<Box<str>, HostRoute, RandomState> =
        HashMap::with_capacity_and_hasher(total_hosts, RandomState::default());

    for (i, svc) in cfg.services.iter().enumerate() {
        let owner: Arc<str> = format!("{}/{}", svc.namespace, svc.name).into();
        let target = |t: &crate::model::TrafficTarget, percent: u32| {
            Target::new(
                rev(&svc.namespace, &t.revision),
                &svc.namespace,
                &t.revision,
                percent,
            )
        };
        let tag_target = |t: usize| {
            let tt = &svc.traffic[t];
            let mut target = target(tt, 100);
            target.tag = tt
                .tag
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok());
            target
        };
        let affinity = svc.affinity.as_ref().map(compile_affinity);
        let split = Split::new(svc.traffic.iter().map(|t| target(t, t.percent)).collect());
        // One route shared by every host that sends to the split, one per tag host.
        let split_paths: Arc<[PathRoute]> = Arc::new([PathRoute::catch_all(split, affinity)]);
        let tag_paths: Vec<Option<Arc<[PathRoute]>>> = svc
            .traffic
            .iter()
            .enumerate()
            .map(|(t, tt)| {
                tt.tag.as_ref().map(|_| {
                    Arc::new([PathRoute::catch_all(Split::new(vec![tag_target(t)]), None)])
                        as Arc<[PathRoute]>
                })
            })
            .collect();
        let tags: Arc<[(Box<str>, Target)]> = if cfg.tag_header_routing {
            svc.traffic
                .iter()
                .enumerate()
                .filter_map(|(t, tt)| Some((tt.tag.as_deref()?.into(), tag_target(t))))
                .collect()
        } else {
            Arc::new([])
        };
        for h in hosts::service_hosts(cfg, svc, i) {
            let (paths, host_tags) = match h.target {
                HostTarget::Split => (split_paths.clone(), tags.clone()),
                HostTarget::Tag(t) => (
                    tag_paths[t].clone().unwrap_or_else(|| split_paths.clone()),
                    Arc::new([]) as Arc<[_]>,
                ),
            };
            hosts.insert(
                normalize_owned(&h.host).into_boxed_str(),
                HostRoute {
                    external: !h.internal_only,
                    owner: owner.clone(),
                    paths,
                    tags: host_tags,
                    redirect_https: svc.http_option == HttpOption::Redirect,
                    readiness: None,
                },
            );
        }
    }

    for ing in &cfg.ingresses {
        let owner: Arc<str> = format!("{}/{}", ing.namespace, ing.name).into();
        for rule in &ing.rules {
            let paths: Arc<[PathRoute]> = rule
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
                                let mut t =
                                    Target::new(rev(ns, &s.revision), ns, &s.revision, s.percent);
                                t.append_headers = header_pairs(&s.append_headers);
                                t
                            })
                            .collect(),
                    ),
                    affinity: p.affinity.as_ref().map(compile_affinity),
                })
                .collect();
            let external = rule.visibility == Visibility::External;
            for host in &rule.hosts {
                hosts.insert(
                    normalize_owned(host).into_boxed_str(),
                    HostRoute {
                        external,
                        owner: owner.clone(),
                        paths: paths.clone(),
                        tags: Arc::new([]),
                        redirect_https: rule.http_option == HttpOption::Redirect,
                        readiness: None,
                    },
                );
            }
        }
    }

    let ready_owner: Arc<str> = "readiness".into();
    for host in &cfg.readiness.hosts {
        hosts.insert(
            normalize_owned(host).into_boxed_str(),
            HostRoute {
                external: true,
                owner: ready_owner.clone(),
                paths: Arc::new([]),
                tags: Arc::new([]),
                redirect_https: false,
                readiness: Some(cfg.readiness.path.as_str().into()),
            },
        );
    }

    RouteTable {
        hosts,
        revisions: revisions.into_boxed_slice(),
        tag_header_routing: cfg.tag_header_routing,
    }
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
