//! Semantic checks of a parsed [`Config`]: every error at once, each with its path and a hint.

use std::collections::BTreeMap;

// Validation hashes every host and name of the config once per update: foldhash instead of
// std's SipHash (6% of a 10,000-service update's CPU in the proxy's profile).
use foldhash::{HashMap, HashMapExt as _};
use std::net::SocketAddr;

use crate::error::{ConfigError, ConfigErrors};
use crate::hosts::{self, is_dns1123_label, is_dns_name, Origin, ServiceHost};
use crate::model::*;
use crate::objects::{path_of, Change, Kind, Objects};

/// Longest hold timeout a revision may ask for (Knative's max-revision-timeout default).
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Most targets in one traffic block or one path's splits.
pub const MAX_TARGETS: usize = 100;

/// Checks everything [`crate::compile`] relies on. Returns all problems, in document order.
pub fn validate(cfg: &Config) -> Result<(), ConfigErrors> {
    let mut v = Validator::default();
    v.config(cfg);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// Whether revision (namespace, name) exists.
type Declared<'a> = dyn Fn(&str, &str) -> bool + 'a;

/// Checks each object that `changes` put, on its own and against `after` (the objects with
/// the changes made: the revisions its routes name must be there) and the settings in force.
/// Paths name the object: `services[default/hello].traffic[0].revision`.
///
/// What needs the other objects' routes (a host another object has, a deleted revision still
/// in use) is found by [`crate::RouteTable::update`].
pub fn changes(settings: &Config, after: &Objects, changes: &[Change]) -> Result<(), ConfigErrors> {
    let mut v = Validator::default();
    let declared = |ns: &str, name: &str| {
        after
            .revisions
            .contains_key(&crate::objects::Key::new(ns, name))
    };
    for c in crate::objects::last_changes(changes) {
        let at = path_of(c.kind(), c.key());
        let (ns, name) = match c {
            Change::Service(_, Some(s)) => {
                v.service(&at, s, &declared);
                v.generated_hosts(settings, &at, s);
                (&s.namespace, &s.name)
            }
            Change::Ingress(_, Some(i)) => {
                v.ingress(&at, i, &declared);
                (&i.namespace, &i.name)
            }
            Change::Revision(_, Some(r)) => {
                v.revision(&at, r);
                (&r.namespace, &r.name)
            }
            _ => continue,
        };
        let key = c.key();
        if **ns != *key.namespace || **name != *key.name {
            v.err(
                at,
                format!(
                    "is named {ns}/{name}; a {} is put under its own namespace and name",
                    match c.kind() {
                        Kind::Service => "service",
                        Kind::Ingress => "ingress",
                        Kind::Revision => "revision",
                    }
                ),
            );
        }
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// An endpoint as written: `IP:port` (resolved) or `host:port` (resolved by the proxy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointSpec {
    Addr(SocketAddr),
    Name(String, u16),
}

/// Parses `IP:port`, `[v6]:port` or `host:port`.
pub fn parse_endpoint(s: &str) -> Result<EndpointSpec, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err("port 0 is not a valid endpoint port".into());
        }
        return Ok(EndpointSpec::Addr(a));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("expected IP:port or host:port".into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
    };
    if host.contains(':') || !is_dns_name(host) {
        return Err(format!("{host:?} is neither an IP address nor a DNS name"));
    }
    Ok(EndpointSpec::Name(host.to_ascii_lowercase(), port))
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    fn unknown(&mut self, path: &str, unknown: &Unknown, expected: &str) {
        for k in unknown.keys() {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            self.err(p, format!("unknown field; expected one of: {expected}"));
        }
    }

    fn duration(&mut self, path: &str, d: &TextDuration) -> Option<std::time::Duration> {
        match d.get() {
            Some(v) => Some(v),
            None => {
                self.err(
                    path,
                    format!(
                        "{:?} is not a duration; write a number with a unit: 300ms, 5s, 10m, 1h",
                        d.as_str()
                    ),
                );
                None
            }
        }
    }

    fn label(&mut self, path: &str, what: &str, s: &str) {
        if !is_dns1123_label(s) {
            self.err(
                path,
                format!(
                    "{s:?} is not a valid {what}: use 1-63 lowercase letters, digits or '-', \
                     starting and ending with a letter or digit (DNS-1123 label)"
                ),
            );
        }
    }

    fn config(&mut self, cfg: &Config) {
        self.unknown(
            "",
            &cfg.unknown,
            "listen, domain, domain_template, tag_template, cluster_domain, \
             tag_header_routing, drain_timeout, threads, node_id, hold, autoscaler, services, \
             ingresses, revisions, tls, readiness, forwarded, limits, access_log",
        );
        self.listen(&cfg.listen);
        if !is_dns_name(&cfg.domain) {
            self.err("domain", format!("{:?} is not a DNS name", cfg.domain));
        }
        if !is_dns_name(&cfg.cluster_domain) {
            self.err(
                "cluster_domain",
                format!("{:?} is not a DNS name", cfg.cluster_domain),
            );
        }
        self.template(
            "domain_template",
            &cfg.domain_template,
            &["{name}"],
            &["{name}", "{namespace}", "{domain}"],
        );
        self.template(
            "tag_template",
            &cfg.tag_template,
            &["{tag}", "{name}"],
            &["{tag}", "{name}", "{namespace}"],
        );
        self.duration("drain_timeout", &cfg.drain_timeout);
        if cfg.threads == Some(0) {
            self.err("threads", "must be at least 1");
        }
        if let Some(id) = &cfg.node_id {
            if id.is_empty() || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                self.err(
                    "node_id",
                    "must be non-empty with no spaces or control characters",
                );
            }
        }
        self.unknown("hold", &cfg.hold.unknown, "queue_depth, timeout");
        if cfg.hold.queue_depth == 0 {
            self.err(
                "hold.queue_depth",
                "must be at least 1 (it bounds the requests held per revision)",
            );
        }
        if let Some(t) = self.duration("hold.timeout", &cfg.hold.timeout) {
            self.timeout_range("hold.timeout", t);
        }
        if let Some(a) = &cfg.autoscaler {
            self.unknown("autoscaler", &a.unknown, "url, interval");
            if !(a.url.starts_with("ws://") || a.url.starts_with("wss://")) {
                self.err(
                    "autoscaler.url",
                    format!("{:?} must be a ws:// or wss:// URL", a.url),
                );
            }
            if let Some(i) = self.duration("autoscaler.interval", &a.interval) {
                if i < std::time::Duration::from_millis(100) {
                    self.err("autoscaler.interval", "must be at least 100ms");
                }
            }
        }

        let revisions = self.revisions(cfg);
        let declared = |ns: &str, name: &str| revisions.contains_key(&(ns, name));
        let mut seen = HashMap::new();
        for (i, svc) in cfg.services.iter().enumerate() {
            let at = format!("services[{i}]");
            self.service(&at, svc, &declared);
            self.once(&mut seen, &at, "service", &svc.namespace, &svc.name);
        }
        let mut seen = HashMap::new();
        for (i, ing) in cfg.ingresses.iter().enumerate() {
            let at = format!("ingresses[{i}]");
            self.ingress(&at, ing, &declared);
            self.once(&mut seen, &at, "ingress", &ing.namespace, &ing.name);
        }
        self.duplicate_hosts(cfg);
        self.tls(cfg);
        self.readiness(cfg);
        self.limits(&cfg.limits);
        self.access_log(&cfg.access_log);
        self.unknown(
            "forwarded",
            &cfg.forwarded.unknown,
            "use_remote_address, trusted_hops",
        );
        if cfg.forwarded.trusted_hops > 16 {
            self.err("forwarded.trusted_hops", "must be from 0 to 16");
        }
    }

    fn tls(&mut self, cfg: &Config) {
        let mut defaults: [Option<usize>; 2] = [None, None];
        for (i, t) in cfg.tls.iter().enumerate() {
            let at = format!("tls[{i}]");
            self.unknown(
                &at,
                &t.unknown,
                "hosts, cert, key, cert_pem, key_pem, default, visibility",
            );
            if t.hosts.is_empty() && !t.default {
                self.err(
                    format!("{at}.hosts"),
                    "list at least one host (or set default: true)",
                );
            }
            if t.default {
                let slot = &mut defaults[usize::from(!t.visibility.is_external())];
                match slot {
                    Some(prev) => self.err(
                        format!("{at}.default"),
                        format!(
                            "tls[{prev}] is already the default certificate of these listeners; \
                             keep one"
                        ),
                    ),
                    None => *slot = Some(i),
                }
            }
            for (h, host) in t.hosts.iter().enumerate() {
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if !is_dns_name(bare) {
                    self.err(
                        format!("{at}.hosts[{h}]"),
                        format!("{host:?} is not a DNS name or a wildcard like *.example.com"),
                    );
                }
            }
            for (file, pem, what) in [(&t.cert, &t.cert_pem, "cert"), (&t.key, &t.key_pem, "key")] {
                let hint = if what == "cert" {
                    "a PEM certificate chain"
                } else {
                    "a PEM private key"
                };
                match (file.as_deref(), pem.as_deref()) {
                    (Some(_), Some(_)) => self.err(
                        format!("{at}.{what}_pem"),
                        format!("give {what} (a file) or {what}_pem (the PEM text), not both"),
                    ),
                    (None, None) | (Some(""), None) => self.err(
                        format!("{at}.{what}"),
                        format!("give the path of {hint} (or {what}_pem with the PEM text)"),
                    ),
                    (None, Some(p)) if !p.contains("-----BEGIN") => self.err(
                        format!("{at}.{what}_pem"),
                        format!("is not PEM text (no -----BEGIN line); give {hint}"),
                    ),
                    _ => {}
                }
            }
        }
    }

    fn access_log(&mut self, a: &AccessLog) {
        if let Some(raw) = &a.invalid {
            self.err(
                "access_log",
                format!(
                    "{raw} is not an access log setting; write `off`, or a map with \
                     format, sample, to, buffer"
                ),
            );
            return;
        }
        self.unknown("access_log", &a.unknown, "format, sample, to, buffer");
        if !matches!(a.format.as_str(), "json" | "text") {
            self.err(
                "access_log.format",
                format!("{:?} is not a format; use json or text", a.format),
            );
        }
        if !(0.0..=1.0).contains(&a.sample) {
            self.err(
                "access_log.sample",
                format!(
                    "{} is not a share of requests; use a number from 0 to 1 (1: every request)",
                    a.sample
                ),
            );
        }
        if a.to.is_empty() {
            self.err(
                "access_log.to",
                "write stdout, stderr or the path of a file",
            );
        }
        match a.buffer.get() {
            None => self.err(
                "access_log.buffer",
                format!(
                    "{:?} is not a size; write bytes or a number with KiB, MiB or GiB",
                    a.buffer.as_str()
                ),
            ),
            Some(n) if !(4096..=1 << 30).contains(&n) => {
                self.err("access_log.buffer", "must be from 4KiB to 1GiB")
            }
            Some(_) => {}
        }
    }

    /// A service's or ingress's `hold`.
    fn route_hold(&mut self, at: &str, hold: &Option<RouteHold>) {
        let Some(h) = hold else { return };
        let at = format!("{at}.hold");
        self.unknown(&at, &h.unknown, "placeholder");
        if let Some(p) = &h.placeholder {
            let pp = format!("{at}.placeholder");
            self.unknown(&pp, &p.unknown, "after, html");
            self.duration(&format!("{pp}.after"), &p.after);
            if p.html.trim().is_empty() {
                self.err(
                    format!("{pp}.html"),
                    "write the path of an HTML file (relative to the config file)",
                );
            }
        }
    }

    fn limits(&mut self, l: &Limits) {
        self.unknown(
            "limits",
            &l.unknown,
            "header_read_timeout, idle_timeout, max_connections, max_request_headers_size, \
             max_request_headers, held_memory_per_revision, held_memory",
        );
        for (name, d) in [
            ("header_read_timeout", &l.header_read_timeout),
            ("idle_timeout", &l.idle_timeout),
        ] {
            if let Some(t) = self.duration(&format!("limits.{name}"), d) {
                if t.as_secs() > 24 * 3600 {
                    self.err(
                        format!("limits.{name}"),
                        "must be at most 24h (0s turns it off)",
                    );
                }
            }
        }
        if l.max_connections == Some(0) {
            self.err(
                "limits.max_connections",
                "must be at least 1 (leave it out for 3/4 of the open-file limit)",
            );
        }
        if l.max_request_headers == 0 {
            self.err("limits.max_request_headers", "must be at least 1");
        }
        for (name, size, min) in [
            (
                "max_request_headers_size",
                &l.max_request_headers_size,
                1024,
            ),
            (
                "held_memory_per_revision",
                &l.held_memory_per_revision,
                1 << 20,
            ),
            ("held_memory", &l.held_memory, 1 << 20),
        ] {
            match size.get() {
                None => self.err(
                    format!("limits.{name}"),
                    format!(
                        "{:?} is not a size; write bytes or a number with KiB, MiB or GiB",
                        size.as_str()
                    ),
                ),
                Some(n) if n < min => self.err(
                    format!("limits.{name}"),
                    format!("must be at least {min} bytes"),
                ),
                Some(_) => {}
            }
        }
    }

    fn readiness(&mut self, cfg: &Config) {
        let r = &cfg.readiness;
        self.unknown("readiness", &r.unknown, "hosts, path");
        for (h, host) in r.hosts.iter().enumerate() {
            self.host(&format!("readiness.hosts[{h}]"), host);
        }
        if !r.path.starts_with('/') {
            self.err(
                "readiness.path",
                format!("{:?} must start with '/'", r.path),
            );
        }
    }

    fn listen(&mut self, l: &Listen) {
        self.unknown(
            "listen",
            &l.unknown,
            "http, internal, https, internal_https, admin, proxy_protocol",
        );
        let lists = [
            ("http", &l.http),
            ("internal", &l.internal),
            ("https", &l.https),
            ("internal_https", &l.internal_https),
        ];
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        for (name, addrs) in lists {
            for (i, a) in addrs.0.iter().enumerate() {
                let at = if addrs.0.len() == 1 {
                    format!("listen.{name}")
                } else {
                    format!("listen.{name}[{i}]")
                };
                match a.parse::<SocketAddr>() {
                    Ok(addr) => {
                        if let Some(prev) = seen.insert(addr, at.clone()) {
                            self.err(at, format!("{a:?} is already used by {prev}"));
                        }
                    }
                    Err(_) => self.err(
                        at,
                        format!("{a:?} is not an address; write IP:port, e.g. 0.0.0.0:8080"),
                    ),
                }
            }
        }
        if let Some(a) = &l.admin {
            if a.parse::<SocketAddr>().is_err() {
                self.err(
                    "listen.admin",
                    format!("{a:?} is not an address; write IP:port, e.g. 127.0.0.1:9901"),
                );
            }
        }
        for (i, p) in l.proxy_protocol.iter().enumerate() {
            if *p == 0 {
                self.err(
                    format!("listen.proxy_protocol[{i}]"),
                    "0 is not a port; list the ports of the listeners that expect a PROXY header",
                );
            }
        }
    }

    fn template(&mut self, path: &str, t: &str, required: &[&str], allowed: &[&str]) {
        for r in required {
            if !t.contains(r) {
                self.err(path, format!("{t:?} must contain {r}"));
            }
        }
        let mut rest = t;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                self.err(path, format!("{t:?} has an unclosed '{{'"));
                return;
            };
            let ph = &rest[start..start + len + 1];
            if !allowed.contains(&ph) {
                self.err(
                    path,
                    format!("{t:?} uses {ph}; allowed: {}", allowed.join(", ")),
                );
            }
            rest = &rest[start + len + 1..];
        }
    }

    fn timeout_range(&mut self, path: &str, t: std::time::Duration) {
        if t.is_zero() || t.as_secs() > MAX_TIMEOUT_SECS {
            self.err(
                path,
                format!("must be above 0 and at most {MAX_TIMEOUT_SECS}s"),
            );
        }
    }

    /// An object named (namespace, name) at `at` is the first of that name in its list.
    fn once<'a>(
        &mut self,
        seen: &mut HashMap<(&'a str, &'a str), String>,
        at: &str,
        what: &str,
        namespace: &'a str,
        name: &'a str,
    ) {
        if let Some(prev) = seen.get(&(namespace, name)) {
            self.err(
                format!("{at}.name"),
                format!(
                    "{what} {namespace}/{name} is already declared at {prev}; declare each once"
                ),
            );
        } else {
            seen.insert((namespace, name), at.to_string());
        }
    }

    /// Checks `revisions` and returns the index of declared (namespace, name) pairs.
    fn revisions<'a>(&mut self, cfg: &'a Config) -> HashMap<(&'a str, &'a str), usize> {
        let mut seen = HashMap::new();
        for (i, r) in cfg.revisions.iter().enumerate() {
            let at = format!("revisions[{i}]");
            self.revision(&at, r);
            if let Some(prev) = seen.insert((r.namespace.as_str(), r.name.as_str()), i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "revision {}/{} is already declared at revisions[{prev}]; declare each once",
                        r.namespace, r.name
                    ),
                );
            }
        }
        seen
    }

    fn revision(&mut self, at: &str, r: &Revision) {
        self.unknown(
            at,
            &r.unknown,
            "name, namespace, container_concurrency, timeout, protocol, endpoints",
        );
        self.label(&format!("{at}.name"), "revision name", &r.name);
        self.label(&format!("{at}.namespace"), "namespace", &r.namespace);
        if r.container_concurrency > 1000 {
            self.err(
                format!("{at}.container_concurrency"),
                "must be from 0 (unlimited) to 1000",
            );
        }
        if let Some(t) = &r.timeout {
            let p = format!("{at}.timeout");
            if let Some(t) = self.duration(&p, t) {
                self.timeout_range(&p, t);
            }
        }
        let mut eps = BTreeMap::new();
        for (e, ep) in r.endpoints.iter().enumerate() {
            let p = format!("{at}.endpoints[{e}]");
            match parse_endpoint(ep) {
                Ok(parsed) => {
                    if let Some(prev) = eps.insert(parsed, e) {
                        self.err(
                            p,
                            format!("{ep:?} is listed twice (also endpoints[{prev}])"),
                        );
                    }
                }
                Err(why) => self.err(p, format!("{ep:?}: {why}")),
            }
        }
    }

    fn service(&mut self, at: &str, svc: &Service, revs: &Declared<'_>) {
        self.unknown(
            at,
            &svc.unknown,
            "name, namespace, visibility, hosts, traffic, affinity, http_option, hold",
        );
        self.route_hold(at, &svc.hold);
        self.label(&format!("{at}.name"), "service name", &svc.name);
        self.label(&format!("{at}.namespace"), "namespace", &svc.namespace);
        for (h, host) in svc.hosts.iter().enumerate() {
            self.host(&format!("{at}.hosts[{h}]"), host);
        }
        if svc.traffic.is_empty() {
            self.err(format!("{at}.traffic"), "list at least one revision");
        }
        let mut tags: HashMap<&str, usize> = HashMap::new();
        for (t, target) in svc.traffic.iter().enumerate() {
            let tp = format!("{at}.traffic[{t}]");
            self.unknown(&tp, &target.unknown, "revision, percent, tag");
            self.revision_ref(
                &format!("{tp}.revision"),
                &svc.namespace,
                &target.revision,
                revs,
            );
            if let Some(tag) = &target.tag {
                self.label(&format!("{tp}.tag"), "tag", tag);
                if let Some(prev) = tags.insert(tag, t) {
                    self.err(
                        format!("{tp}.tag"),
                        format!("tag {tag:?} is already used by {at}.traffic[{prev}]"),
                    );
                }
            }
        }
        let percents: Vec<u32> = svc.traffic.iter().map(|t| t.percent).collect();
        self.percents(&format!("{at}.traffic"), "percent", &percents);
        if let Some(a) = &svc.affinity {
            self.affinity(&format!("{at}.affinity"), a);
        }
    }

    fn affinity(&mut self, path: &str, a: &Affinity) {
        self.unknown(path, &a.unknown, "header, cookie, ttl, instance_affinity");
        match (&a.header, &a.cookie) {
            (Some(_), Some(_)) | (None, None) => self.err(
                path,
                "set exactly one of header (e.g. header: x-user-id) or cookie (e.g. cookie: weir-rev)",
            ),
            (Some(h), None) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.err(format!("{path}.header"), format!("{h:?} is not a valid header name"));
                }
                if a.ttl.is_some() {
                    self.err(format!("{path}.ttl"), "ttl applies to cookie affinity only");
                }
                if a.instance_affinity {
                    self.err(
                        format!("{path}.instance_affinity"),
                        "instance affinity needs cookie affinity",
                    );
                }
            }
            (None, Some(c)) => {
                let token = !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !token {
                    self.err(
                        format!("{path}.cookie"),
                        format!("{c:?} is not a valid cookie name (letters, digits, -_.)"),
                    );
                }
            }
        }
        if let Some(t) = &a.ttl {
            let p = format!("{path}.ttl");
            if let Some(d) = self.duration(&p, t) {
                if d.as_secs() == 0 {
                    self.err(p, "must be at least 1s");
                }
            }
        }
    }

    fn ingress(&mut self, at: &str, ing: &Ingress, revs: &Declared<'_>) {
        self.unknown(at, &ing.unknown, "name, namespace, rules, hold");
        self.route_hold(at, &ing.hold);
        self.label(&format!("{at}.name"), "ingress name", &ing.name);
        self.label(&format!("{at}.namespace"), "namespace", &ing.namespace);
        if ing.rules.is_empty() {
            self.err(format!("{at}.rules"), "list at least one rule");
        }
        for (r, rule) in ing.rules.iter().enumerate() {
            let rp = format!("{at}.rules[{r}]");
            self.unknown(&rp, &rule.unknown, "hosts, visibility, http_option, paths");
            if rule.hosts.is_empty() {
                self.err(format!("{rp}.hosts"), "list at least one host");
            }
            for (h, host) in rule.hosts.iter().enumerate() {
                self.host(&format!("{rp}.hosts[{h}]"), host);
            }
            // A redirecting rule may have no paths: its hosts then only redirect plain HTTP
            // to https, where no path is routed.
            if rule.paths.is_empty() && rule.http_option != HttpOption::Redirect {
                self.err(format!("{rp}.paths"), "list at least one path");
            }
            for (p, path) in rule.paths.iter().enumerate() {
                let pp = format!("{rp}.paths[{p}]");
                self.unknown(
                    &pp,
                    &path.unknown,
                    "path, headers, append_headers, rewrite_host, splits, affinity",
                );
                if !(path.path.is_empty() || path.path.starts_with('/')) {
                    self.err(
                        format!("{pp}.path"),
                        format!(
                            "{:?} must start with '/' (or be empty for all paths)",
                            path.path
                        ),
                    );
                }
                for (k, val) in &path.headers {
                    self.header(&format!("{pp}.headers.{k}"), k, val);
                }
                self.append_headers(&format!("{pp}.append_headers"), &path.append_headers);
                if let Some(h) = &path.rewrite_host {
                    self.host(&format!("{pp}.rewrite_host"), h);
                }
                if path.splits.is_empty() {
                    self.err(format!("{pp}.splits"), "list at least one split");
                }
                for (s, split) in path.splits.iter().enumerate() {
                    let sp = format!("{pp}.splits[{s}]");
                    self.unknown(
                        &sp,
                        &split.unknown,
                        "revision, namespace, percent, append_headers",
                    );
                    let ns = split.namespace.as_deref().unwrap_or(&ing.namespace);
                    self.revision_ref(&format!("{sp}.revision"), ns, &split.revision, revs);
                    self.append_headers(&format!("{sp}.append_headers"), &split.append_headers);
                }
                let percents: Vec<u32> = path.splits.iter().map(|s| s.percent).collect();
                self.percents(&format!("{pp}.splits"), "percent", &percents);
                if let Some(a) = &path.affinity {
                    self.affinity(&format!("{pp}.affinity"), a);
                }
            }
        }
    }

    fn revision_ref(&mut self, path: &str, namespace: &str, name: &str, revs: &Declared<'_>) {
        if !revs(namespace, name) {
            self.err(
                path,
                format!("{namespace}/{name} is not declared under revisions; add it there"),
            );
        }
    }

    fn percents(&mut self, path: &str, field: &str, percents: &[u32]) {
        if percents.len() > MAX_TARGETS {
            self.err(
                path,
                format!("at most {MAX_TARGETS} targets, found {}", percents.len()),
            );
        }
        for (i, p) in percents.iter().enumerate() {
            if *p > 100 {
                self.err(format!("{path}[{i}].{field}"), format!("{p} is above 100"));
            }
        }
        let sum: u64 = percents.iter().map(|&p| u64::from(p)).sum();
        if !percents.is_empty() && sum != 100 {
            self.err(
                path,
                format!("percents add up to {sum}; they must add up to 100"),
            );
        }
    }

    fn host(&mut self, path: &str, host: &str) {
        if !is_dns_name(host) {
            self.err(
                path,
                format!("{host:?} is not a DNS name (letters, digits, '-' and '.'; no port)"),
            );
        }
    }

    fn header(&mut self, path: &str, name: &str, value: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(path, format!("{name:?} is not a valid header name"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            self.err(
                path,
                format!("{value:?} is not a valid header value (visible ASCII)"),
            );
        }
    }

    fn append_headers(&mut self, path: &str, headers: &BTreeMap<String, String>) {
        for (k, val) in headers {
            let p = format!("{path}.{k}");
            self.header(&p, k, val);
            let lower = k.to_ascii_lowercase();
            if lower == "host" {
                self.err(
                    p,
                    "set the upstream Host with rewrite_host, not append_headers",
                );
            } else if is_hop_by_hop(&lower) {
                self.err(p, format!("{k:?} is a hop-by-hop header and cannot be set"));
            }
        }
    }

    /// The service's hosts that are DNS names; for those that are not (the templates made a
    /// bad name), an error.
    fn generated_hosts(&mut self, cfg: &Config, at: &str, svc: &Service) -> Vec<ServiceHost> {
        // A bad name, namespace or tag was reported already; the hosts made from it are
        // bad too, but blaming the templates for them would only mislead.
        let names_ok = is_dns1123_label(&svc.name) && is_dns1123_label(&svc.namespace);
        let mut out = Vec::new();
        for h in hosts::service_hosts(cfg, svc) {
            if is_dns_name(&h.host) {
                out.push(h);
                continue;
            }
            let tag_ok = match h.target {
                hosts::HostTarget::Tag(t) => {
                    svc.traffic[t].tag.as_deref().is_some_and(is_dns1123_label)
                }
                hosts::HostTarget::Split => true,
            };
            // Extra hosts were reported already; generated ones point at the templates.
            if names_ok && tag_ok && !matches!(h.from, Origin::Extra(_)) {
                self.err(
                    at,
                    format!(
                        "generated host {:?} is not a DNS name; check domain, domain_template and tag_template",
                        h.host
                    ),
                );
            }
        }
        out
    }

    fn duplicate_hosts(&mut self, cfg: &Config) {
        // host -> where it was first seen
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut claim = |v: &mut Self, host: &str, origin: String, path: String| {
            let key = crate::table::normalize_owned(host);
            if let Some(prev) = owners.get(&key) {
                v.err(
                    path,
                    format!("host {key:?} of {origin} is already served by {prev}; a host may belong to one service or rule"),
                );
            } else {
                owners.insert(key, origin);
            }
        };
        for (i, svc) in cfg.services.iter().enumerate() {
            let at = format!("services[{i}]");
            for h in self.generated_hosts(cfg, &at, svc) {
                claim(self, &h.host, h.origin(&at, svc), h.path(&at));
            }
        }
        for (i, ing) in cfg.ingresses.iter().enumerate() {
            for (r, rule) in ing.rules.iter().enumerate() {
                for (h, host) in rule.hosts.iter().enumerate() {
                    if is_dns_name(host) {
                        let path = format!("ingresses[{i}].rules[{r}].hosts[{h}]");
                        claim(self, host, path.clone(), path);
                    }
                }
            }
        }
        for (h, host) in cfg.readiness.hosts.iter().enumerate() {
            if is_dns_name(host) {
                let path = format!("readiness.hosts[{h}]");
                claim(self, host, path.clone(), path);
            }
        }
    }
}

/// Hop-by-hop headers per RFC 9110 section 7.6.1, plus the legacy ones proxies drop.
pub fn is_hop_by_hop(lower: &str) -> bool {
    matches!(
        lower,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(matches!(
            parse_endpoint("127.0.0.1:80"),
            Ok(EndpointSpec::Addr(_))
        ));
        assert!(matches!(
            parse_endpoint("[::1]:80"),
            Ok(EndpointSpec::Addr(_))
        ));
        assert_eq!(
            parse_endpoint("Pod.local:8080"),
            Ok(EndpointSpec::Name("pod.local".into(), 8080))
        );
        assert!(parse_endpoint("127.0.0.1").is_err());
        assert!(parse_endpoint("127.0.0.1:0").is_err());
        assert!(parse_endpoint("host:99999").is_err());
        assert!(parse_endpoint("bad host:80").is_err());
        assert!(parse_endpoint("::1:80").is_err());
    }
}
