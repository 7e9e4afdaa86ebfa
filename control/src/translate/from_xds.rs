//! xDS -> config, one resource at a time, then composed into one `weir_config::Config`.
//!
//! Each resource is translated on its own ([`route_set`] here, [`cluster_spec`] and
//! [`endpoints`] in `clusters`) so that the ADS client can judge (ACK or NACK) exactly the
//! response that carried it; [`compose()`] joins the accepted sets, and [`Composed::check`]
//! validates the result with each error mapped back to the resource it came from.

use std::collections::{BTreeMap, HashMap};

use weir_config::model::{Affinity, PathRule, SplitTarget, TextDuration, Visibility};
use xds_api::pb::envoy::config::core::v3::HeaderValueOption;
use xds_api::pb::envoy::config::route::v3::{
    header_matcher, redirect_action, route, route_action, route_match, weighted_cluster,
    HeaderMatcher, RedirectAction, Route, RouteAction, RouteConfiguration,
};
use xds_api::pb::envoy::r#type::matcher::v3::string_matcher;
use xds_api::pb::google::protobuf::value;

use super::{
    split_cluster_name, TranslateError, INTERNAL_ROUTES, INTERNAL_TLS_ROUTES, METADATA_KEY,
};

mod clusters;
mod compose;
mod listeners;

pub use clusters::{cluster_spec, endpoints, ClusterSpec, EXT_AUTHZ_CLUSTER};
pub use compose::{
    compose, compose_changed, from_resources, join_errors, per_object, recompose_clusters, Composed,
};
pub use listeners::{
    listener_settings, listener_spec, CommonTlsContext, DownstreamTlsContext, ListenerSettings,
    ListenerSpec,
};

// === RouteConfiguration ===

/// A translated RouteConfiguration: its virtual hosts as ingress rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSet {
    pub name: String,
    /// `cluster-local` for `internal_services` and `internal_tls_services`.
    pub visibility: Visibility,
    /// One of the `*_tls_services` variants (Kourier's routes of its TLS listeners). Weir
    /// serves one route table on every listener, so their hosts count only where the plain
    /// RouteConfiguration redirects them to https: the TLS routes are then the real ones.
    pub tls: bool,
    /// Shared: a virtual host that did not change keeps its `Arc` across responses (see
    /// [`RouteSet::reuse`]), so what was built from it is reused too.
    pub vhosts: Vec<std::sync::Arc<VhostRoutes>>,
}

impl RouteSet {
    /// Takes `old`'s `Arc` for every virtual host equal to one of `old`'s with its name: a
    /// new copy of a large RouteConfiguration is then compared, not composed, host by host.
    pub fn reuse(&mut self, old: &RouteSet) {
        let by_name: HashMap<&str, &std::sync::Arc<VhostRoutes>> =
            old.vhosts.iter().map(|v| (v.name.as_str(), v)).collect();
        for vh in &mut self.vhosts {
            if let Some(o) = by_name.get(vh.name.as_str()) {
                if ***o == **vh {
                    *vh = (*o).clone();
                }
            }
        }
    }
}

/// One virtual host that has at least one route.
#[derive(Debug, Clone, PartialEq)]
pub struct VhostRoutes {
    /// Its index in `virtual_hosts`, for error messages ([`VhostRoutes::at`]).
    pub index: u32,
    pub name: String,
    /// Lowercase, without `:port` / `:*`, deduplicated.
    pub domains: Vec<String>,
    pub paths: std::sync::Arc<[PathRule]>,
    /// `require_tls`, or every route an `https_redirect`: plain HTTP gets a 301 to https
    /// (Weir's `http_option: redirect`).
    pub redirect_https: bool,
    /// The path prefix of a status route (to Envoy's bootstrap cluster
    /// [`STATUS_CLUSTER`]): Weir answers it itself (`readiness` in the config).
    pub readiness: Option<String>,
    /// (cluster name, field path) of every cluster a route names.
    pub clusters: Vec<ClusterRef>,
}

/// A cluster a route names: where, compactly (a field path is made only for an error).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRef {
    pub cluster: String,
    /// The route's index in the virtual host.
    pub route: u32,
    /// Its index in `route.weighted_clusters.clusters`; `None` for `route.cluster`.
    pub weighted: Option<u32>,
}

impl VhostRoutes {
    /// `virtual_hosts[i] ("name")`, for error messages.
    pub fn at(&self) -> String {
        format!("virtual_hosts[{}] ({:?})", self.index, self.name)
    }

    /// The field path of a cluster reference of this virtual host.
    pub fn field(&self, r: &ClusterRef) -> String {
        match r.weighted {
            Some(w) => format!(
                "{}.routes[{}].route.weighted_clusters.clusters[{w}].name",
                self.at(),
                r.route
            ),
            None => format!("{}.routes[{}].route.cluster", self.at(), r.route),
        }
    }
}

/// The cluster Kourier's status virtual host (`internalkourier`, `/ready`) routes to: it
/// exists only in Envoy's bootstrap (Envoy's own readiness) and is never sent over CDS.
pub const STATUS_CLUSTER: &str = "service_stats";

/// What a route does, once translated.
enum RouteKind {
    /// The rule, and the clusters it names (each with its index in `weighted_clusters`).
    Path(Box<PathRule>, Vec<(String, Option<u32>)>),
    /// `redirect {https_redirect: true}`.
    HttpsRedirect,
    /// A route to [`STATUS_CLUSTER`], with its prefix.
    Status(String),
}

pub(super) fn rc_label(name: &str) -> String {
    format!("RouteConfiguration {name:?}")
}

/// Translates one RouteConfiguration.
pub fn route_set(rc: &RouteConfiguration) -> Result<RouteSet, TranslateError> {
    let res = rc_label(&rc.name);
    let err = |field: &str, msg: &str| TranslateError::new(&res, field, msg);
    if rc.name.is_empty() {
        return Err(err("name", "a RouteConfiguration needs a name"));
    }
    let tls = rc.name.ends_with("_tls_services");
    // Kourier's names, and Weir's per-object ones (`internal_services/service/ns/name`).
    let internal = rc.name == INTERNAL_ROUTES
        || rc.name == INTERNAL_TLS_ROUTES
        || rc.name.starts_with(&format!("{INTERNAL_ROUTES}/"));
    let visibility = if internal {
        Visibility::ClusterLocal
    } else {
        Visibility::External
    };
    let mut set = RouteSet {
        name: rc.name.clone(),
        visibility,
        tls,
        vhosts: Vec::new(),
    };
    if rc.vhds.is_some() {
        return Err(err(
            "vhds",
            "on-demand virtual hosts (VHDS) are not supported",
        ));
    }
    let config_headers = header_list(&rc.request_headers_to_add, "request_headers_to_add")
        .map_err(|(f, m)| err(&f, &m))?;
    // domain -> the virtual host that has it: Envoy, too, rejects a domain listed twice.
    let mut owners: HashMap<String, String> = HashMap::new();
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        let at = format!("virtual_hosts[{v}] ({:?})", vh.name);
        if vh.matcher.is_some() {
            return Err(err(
                &format!("{at}.matcher"),
                "matcher trees are not supported; use routes",
            ));
        }
        if vh.domains.is_empty() {
            return Err(err(&format!("{at}.domains"), "list at least one domain"));
        }
        let mut domains = Vec::with_capacity(vh.domains.len());
        for (d, raw) in vh.domains.iter().enumerate() {
            let host = domain(raw).map_err(|m| err(&format!("{at}.domains[{d}]"), &m))?;
            if domains.contains(&host) {
                continue;
            }
            if let Some(prev) = owners.insert(host.clone(), at.clone()) {
                return Err(err(
                    &format!("{at}.domains[{d}]"),
                    &format!("{host:?} is already a domain of {prev}; a domain may belong to one virtual host"),
                ));
            }
            domains.push(host);
        }
        if vh.routes.is_empty() {
            // Envoy answers 404 on such a host; so does Weir on a host it does not know.
            continue;
        }
        let vh_headers = header_list(
            &vh.request_headers_to_add,
            &format!("{at}.request_headers_to_add"),
        )
        .map_err(|(f, m)| err(&f, &m))?;
        let mut paths = Vec::with_capacity(vh.routes.len());
        let mut clusters = Vec::new();
        let mut redirects = 0;
        let mut readiness = None;
        for (r, route) in vh.routes.iter().enumerate() {
            let rat = format!("{at}.routes[{r}]");
            let levels = Levels {
                config: &config_headers,
                vhost: &vh_headers,
                most_specific_wins: rc.most_specific_header_mutations_wins,
            };
            match path_rule(route, &rat, &levels).map_err(|(f, m)| err(&f, &m))? {
                RouteKind::Path(path, refs) => {
                    paths.push(*path);
                    clusters.extend(refs.into_iter().map(|(cluster, weighted)| ClusterRef {
                        cluster,
                        route: r as u32,
                        weighted,
                    }));
                }
                RouteKind::HttpsRedirect => redirects += 1,
                RouteKind::Status(prefix) => readiness = Some(prefix),
            }
        }
        let mixed = |what: &str| {
            err(
                &format!("{at}.routes"),
                &format!(
                    "{what} and routes to clusters in one virtual host are not supported; \
                     put them in separate virtual hosts"
                ),
            )
        };
        if redirects > 0 && !paths.is_empty() {
            return Err(mixed("https redirects"));
        }
        if readiness.is_some() && (!paths.is_empty() || redirects > 0) {
            return Err(mixed(&format!("routes to {STATUS_CLUSTER:?}")));
        }
        set.vhosts.push(std::sync::Arc::new(VhostRoutes {
            index: v as u32,
            name: vh.name.clone(),
            domains,
            paths: paths.into(),
            redirect_https: vh.require_tls != 0 || redirects > 0,
            readiness,
            clusters,
        }));
    }
    Ok(set)
}

/// A domain as a Weir host: `:port` and `:*` dropped (Weir ignores ports), lowercase.
fn domain(raw: &str) -> Result<String, String> {
    let mut host = raw;
    if let Some((h, port)) = raw.rsplit_once(':') {
        if port == "*" || (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())) {
            host = h;
        }
    }
    if host.contains('*') {
        return Err(format!(
            "{raw:?}: wildcard domains are not supported; list exact hosts"
        ));
    }
    if host.is_empty() {
        return Err(format!("{raw:?} has no host"));
    }
    Ok(host.to_ascii_lowercase())
}

/// Headers set at the RouteConfiguration and VirtualHost levels, merged into every route.
struct Levels<'a> {
    config: &'a [(String, String)],
    vhost: &'a [(String, String)],
    most_specific_wins: bool,
}

pub(super) type FieldError = (String, String);

pub(super) fn ferr(field: impl Into<String>, msg: impl Into<String>) -> FieldError {
    (field.into(), msg.into())
}

/// One route as a path rule and the clusters it names, or as one of the route kinds Weir
/// answers itself (an https redirect, a status route).
fn path_rule(r: &Route, at: &str, levels: &Levels<'_>) -> Result<RouteKind, FieldError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ferr(format!("{at}.match"), "a route needs a match"))?;
    let mat = format!("{at}.match");
    let prefix = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => p.clone(),
        Some(route_match::PathSpecifier::Path(_)) => {
            return Err(ferr(
                format!("{mat}.path"),
                "exact path matches are not supported; use a prefix",
            ))
        }
        Some(route_match::PathSpecifier::SafeRegex(_)) => {
            return Err(ferr(
                format!("{mat}.safe_regex"),
                "regex path matches are not supported; use a prefix",
            ))
        }
        Some(route_match::PathSpecifier::PathSeparatedPrefix(_)) => {
            return Err(ferr(
                format!("{mat}.path_separated_prefix"),
                "not supported; use a prefix",
            ))
        }
        Some(route_match::PathSpecifier::ConnectMatcher(_)) => {
            return Err(ferr(
                format!("{mat}.connect_matcher"),
                "CONNECT matching is not supported",
            ))
        }
        Some(route_match::PathSpecifier::PathMatchPolicy(_)) => {
            return Err(ferr(
                format!("{mat}.path_match_policy"),
                "path match policies are not supported; use a prefix",
            ))
        }
        None => return Err(ferr(mat, "a route match needs a prefix")),
    };
    if m.case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(ferr(
            format!("{mat}.case_sensitive"),
            "case-insensitive prefixes are not supported",
        ));
    }
    if m.runtime_fraction.is_some() {
        return Err(ferr(
            format!("{mat}.runtime_fraction"),
            "runtime fractions are not supported; use weighted_clusters",
        ));
    }
    if !m.query_parameters.is_empty() {
        return Err(ferr(
            format!("{mat}.query_parameters"),
            "query parameter matches are not supported",
        ));
    }
    if m.grpc.is_some() {
        return Err(ferr(
            format!("{mat}.grpc"),
            "gRPC-only matches are not supported",
        ));
    }
    if m.tls_context.is_some() {
        return Err(ferr(
            format!("{mat}.tls_context"),
            "TLS context matches are not supported",
        ));
    }
    if !m.dynamic_metadata.is_empty() {
        return Err(ferr(
            format!("{mat}.dynamic_metadata"),
            "dynamic metadata matches are not supported",
        ));
    }
    let mut headers = BTreeMap::new();
    for (h, hm) in m.headers.iter().enumerate() {
        let (name, value) = header_match(hm, &format!("{mat}.headers[{h}]"))?;
        if let Some(prev) = headers.insert(name.clone(), value.clone()) {
            if prev != value {
                return Err(ferr(
                    format!("{mat}.headers[{h}]"),
                    format!("header {name:?} must equal both {prev:?} and {value:?}; no request matches"),
                ));
            }
        }
    }

    let action = match &r.action {
        Some(route::Action::Route(a)) => a,
        Some(route::Action::Redirect(rd)) => return https_redirect(rd, &format!("{at}.redirect")),
        Some(route::Action::DirectResponse(_)) => {
            return Err(ferr(
                format!("{at}.direct_response"),
                "direct responses are not supported",
            ))
        }
        Some(route::Action::FilterAction(_)) | Some(route::Action::NonForwardingAction(_)) => {
            return Err(ferr(at, "only route actions (to clusters) are supported"))
        }
        None => return Err(ferr(at, "a route needs a route action")),
    };
    let rat = format!("{at}.route");
    if !action.prefix_rewrite.is_empty()
        || action.regex_rewrite.is_some()
        || action.path_rewrite_policy.is_some()
    {
        return Err(ferr(
            format!("{rat}.prefix_rewrite"),
            "path rewrites are not supported",
        ));
    }
    let rewrite_host = match &action.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(_) => {
            return Err(ferr(
                format!("{rat}.host_rewrite"),
                "only host_rewrite_literal is supported (not auto, header or regex rewrites)",
            ))
        }
    };

    if is_status_route(action) {
        return Ok(RouteKind::Status(if prefix.is_empty() {
            "/".into()
        } else {
            prefix
        }));
    }
    let mut refs = Vec::new();
    let mut splits = Vec::new();
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => {
            let field = format!("{rat}.cluster");
            splits.push(split(c, 100, BTreeMap::new(), &field)?);
            refs.push((c.clone(), None));
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
            let wat = format!("{rat}.weighted_clusters");
            if wc.clusters.is_empty() {
                return Err(ferr(format!("{wat}.clusters"), "list at least one cluster"));
            }
            let mut sum: u64 = 0;
            for (c, cw) in wc.clusters.iter().enumerate() {
                let cat = format!("{wat}.clusters[{c}]");
                if !cw.cluster_header.is_empty() {
                    return Err(ferr(
                        format!("{cat}.cluster_header"),
                        "cluster_header is not supported; name the cluster",
                    ));
                }
                if let Some(
                    weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(_),
                ) = &cw.host_rewrite_specifier
                {
                    return Err(ferr(
                        format!("{cat}.host_rewrite_literal"),
                        "a host rewrite per weighted cluster is not supported; set it on the route",
                    ));
                }
                let weight = cw.weight.as_ref().map_or(0, |w| w.value);
                sum += u64::from(weight);
                let headers = header_list(
                    &cw.request_headers_to_add,
                    &format!("{cat}.request_headers_to_add"),
                )?;
                let field = format!("{cat}.name");
                splits.push(split(
                    &cw.name,
                    weight,
                    headers.into_iter().collect(),
                    &field,
                )?);
                refs.push((cw.name.clone(), Some(c as u32)));
            }
            #[allow(deprecated)] // still sent by older control planes
            let total_weight = &wc.total_weight;
            if let Some(total) = total_weight {
                if total.value != 100 {
                    return Err(ferr(
                        format!("{wat}.total_weight"),
                        format!(
                            "total_weight is {}; weights are percents and must add up to 100",
                            total.value
                        ),
                    ));
                }
            }
            if sum != 100 {
                return Err(ferr(
                    wat,
                    format!("weights add up to {sum}; they must add up to 100"),
                ));
            }
        }
        Some(route_action::ClusterSpecifier::ClusterHeader(_)) => {
            return Err(ferr(
                format!("{rat}.cluster_header"),
                "cluster_header is not supported; name the cluster",
            ))
        }
        Some(_) => {
            return Err(ferr(
                format!("{rat}.cluster_specifier_plugin"),
                "cluster specifier plugins are not supported",
            ))
        }
        None => {
            return Err(ferr(
                rat,
                "a route action needs cluster or weighted_clusters",
            ))
        }
    }

    let route_headers = header_list(
        &r.request_headers_to_add,
        &format!("{at}.request_headers_to_add"),
    )?;
    // Envoy's precedence: by default the least specific level wins a conflict; with
    // most_specific_header_mutations_wins the route does.
    let order: [&[(String, String)]; 3] = if levels.most_specific_wins {
        [levels.config, levels.vhost, &route_headers]
    } else {
        [&route_headers, levels.vhost, levels.config]
    };
    let append_headers = order.iter().flat_map(|l| l.iter().cloned()).collect();
    let affinity = route_affinity(r, at)?;
    Ok(RouteKind::Path(
        Box::new(PathRule {
            path: prefix,
            headers,
            append_headers,
            rewrite_host,
            splits,
            affinity,
            unknown: Default::default(),
        }),
        refs,
    ))
}

/// A redirect action: only `https_redirect` alone (Kourier's `httpOption: Redirected`) is
/// supported, a 301 to the same host and path on https.
fn https_redirect(rd: &RedirectAction, at: &str) -> Result<RouteKind, FieldError> {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let https = matches!(
        rd.scheme_rewrite_specifier,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true))
    ) || matches!(
        &rd.scheme_rewrite_specifier,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if s == "https"
    );
    if !https {
        return Err(ferr(
            at,
            "only https redirects (https_redirect: true) are supported",
        ));
    }
    let other = if !rd.host_redirect.is_empty() {
        Some("host_redirect")
    } else if rd.port_redirect != 0 {
        Some("port_redirect")
    } else if rd.path_rewrite_specifier.is_some() {
        Some(match rd.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PathRedirect(_)) => "path_redirect",
            Some(PathRewriteSpecifier::PrefixRewrite(_)) => "prefix_rewrite",
            _ => "regex_rewrite",
        })
    } else if rd.strip_query {
        Some("strip_query")
    } else if rd.response_code != RedirectResponseCode::MovedPermanently as i32 {
        Some("response_code")
    } else {
        None
    };
    match other {
        Some(field) => Err(ferr(
            format!("{at}.{field}"),
            "not supported: an https redirect keeps the host, port, path and query, with 301",
        )),
        None => Ok(RouteKind::HttpsRedirect),
    }
}

/// Whether a route's only cluster is [`STATUS_CLUSTER`].
fn is_status_route(action: &RouteAction) -> bool {
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c == STATUS_CLUSTER,
        Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => {
            wc.clusters.len() == 1 && wc.clusters[0].name == STATUS_CLUSTER
        }
        _ => false,
    }
}

/// Revision affinity from the route's `weir` filter metadata (`affinity: {header | cookie,
/// ttl, instance_affinity}`); Envoy's `hash_policy` balances endpoints, not weighted
/// clusters, so it is not read as affinity.
fn route_affinity(r: &Route, at: &str) -> Result<Option<Affinity>, FieldError> {
    let Some(md) = r
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(METADATA_KEY))
    else {
        return Ok(None);
    };
    let base = format!("{at}.metadata.filter_metadata.{METADATA_KEY}");
    let mut out = None;
    for (k, v) in &md.fields {
        if k != "affinity" {
            return Err(ferr(
                format!("{base}.{k}"),
                "unknown field; expected affinity",
            ));
        }
        let Some(value::Kind::StructValue(a)) = &v.kind else {
            return Err(ferr(
                format!("{base}.affinity"),
                "must be a struct {header | cookie, ttl, instance_affinity}",
            ));
        };
        let mut aff = Affinity {
            header: None,
            cookie: None,
            ttl: None,
            instance_affinity: false,
            unknown: Default::default(),
        };
        for (f, fv) in &a.fields {
            let field = format!("{base}.affinity.{f}");
            match (f.as_str(), &fv.kind) {
                ("header", Some(value::Kind::StringValue(s))) => aff.header = Some(s.clone()),
                ("cookie", Some(value::Kind::StringValue(s))) => aff.cookie = Some(s.clone()),
                ("ttl", Some(value::Kind::StringValue(s))) => {
                    aff.ttl = Some(TextDuration::parse(s))
                }
                ("instance_affinity", Some(value::Kind::BoolValue(b))) => {
                    aff.instance_affinity = *b
                }
                ("header" | "cookie" | "ttl", _) => return Err(ferr(field, "must be a string")),
                ("instance_affinity", _) => return Err(ferr(field, "must be a bool")),
                _ => {
                    return Err(ferr(
                        field,
                        "unknown field; expected one of: header, cookie, ttl, instance_affinity",
                    ))
                }
            }
        }
        out = Some(aff);
    }
    Ok(out)
}

fn split(
    cluster: &str,
    percent: u32,
    append_headers: BTreeMap<String, String>,
    field: &str,
) -> Result<SplitTarget, FieldError> {
    let (ns, name) = split_cluster_name(cluster).ok_or_else(|| {
        ferr(
            field,
            format!("cluster {cluster:?} is not named namespace/revision"),
        )
    })?;
    Ok(SplitTarget {
        revision: name.into(),
        namespace: Some(ns.into()),
        percent,
        append_headers,
        unknown: Default::default(),
    })
}

/// An exact header match as (lowercase name, value).
fn header_match(hm: &HeaderMatcher, at: &str) -> Result<(String, String), FieldError> {
    if hm.invert_match {
        return Err(ferr(
            format!("{at}.invert_match"),
            "inverted header matches are not supported",
        ));
    }
    if hm.name.is_empty() || hm.name.starts_with(':') {
        return Err(ferr(
            format!("{at}.name"),
            format!(
                "{:?}: match a regular header (pseudo-headers like :authority are not supported)",
                hm.name
            ),
        ));
    }
    use header_matcher::HeaderMatchSpecifier as S;
    let value = match &hm.header_match_specifier {
        Some(S::ExactMatch(v)) => v.clone(),
        Some(S::StringMatch(sm)) => match &sm.match_pattern {
            Some(string_matcher::MatchPattern::Exact(v)) if !sm.ignore_case => v.clone(),
            Some(string_matcher::MatchPattern::Exact(_)) => {
                return Err(ferr(format!("{at}.string_match.ignore_case"), "case-insensitive header matches are not supported"))
            }
            Some(string_matcher::MatchPattern::SafeRegex(_)) => {
                return Err(ferr(format!("{at}.string_match.safe_regex"), "regex header matches are not supported; use an exact match"))
            }
            _ => {
                return Err(ferr(format!("{at}.string_match"), "only exact header matches are supported"))
            }
        },
        Some(S::SafeRegexMatch(_)) => {
            return Err(ferr(format!("{at}.safe_regex_match"), "regex header matches are not supported; use an exact match"))
        }
        Some(_) => {
            return Err(ferr(at, "only exact header matches are supported (not present, range, prefix, suffix or contains)"))
        }
        None => return Err(ferr(at, "a header matcher needs an exact value")),
    };
    Ok((hm.name.to_ascii_lowercase(), value))
}

/// `request_headers_to_add` as (lowercase name, value); every append action is applied as
/// OVERWRITE_IF_EXISTS_OR_ADD, Knative's semantics.
fn header_list(opts: &[HeaderValueOption], at: &str) -> Result<Vec<(String, String)>, FieldError> {
    let mut out = Vec::with_capacity(opts.len());
    for (i, o) in opts.iter().enumerate() {
        let h = o
            .header
            .as_ref()
            .ok_or_else(|| ferr(format!("{at}[{i}].header"), "missing"))?;
        let value = if h.value.is_empty() && !h.raw_value.is_empty() {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| ferr(format!("{at}[{i}].header.raw_value"), "not UTF-8"))?
        } else {
            h.value.clone()
        };
        out.push((h.key.to_ascii_lowercase(), value));
    }
    Ok(out)
}
