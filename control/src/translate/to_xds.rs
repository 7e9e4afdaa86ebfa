//! Config -> xDS: what `weir control` serves.
//!
//! One VirtualHost per service default host group, per tag host and per ingress rule; hosts
//! come from `weir_config::hosts::service_hosts`, so the generated names are exactly those the
//! proxy would compute from the same config. Revisions become EDS clusters named
//! `namespace/name` whose settings travel in filter metadata under `weir`.

use std::collections::{BTreeMap, HashMap};

use weir_config::hosts::{self, HostTarget};
use weir_config::model::{Affinity, HttpOption, Ingress, PathRule, Protocol, Service, Visibility};
use weir_config::{parse_endpoint, Config, EndpointSpec, Key, Kind};
use xds_api::pb::envoy::config::cluster::v3::{cluster, Cluster};
use xds_api::pb::envoy::config::core::v3::{
    address, config_source, header_value_option::HeaderAppendAction, socket_address,
    AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption, Metadata,
    SocketAddress,
};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, virtual_host, weighted_cluster,
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use xds_api::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use xds_api::pb::google::protobuf::{value, Struct, UInt32Value, Value};

use super::{cluster_name, Resources, EXTERNAL_ROUTES, INTERNAL_ROUTES, METADATA_KEY, TAG_HEADER};

/// The resources of a config that `weir_config::validate` accepted, with every virtual host
/// in Kourier's two RouteConfigurations (`external_services`, `internal_services`): the
/// shape any xDS consumer of a whole config expects. (`weir control` serves the same virtual
/// hosts one RouteConfiguration per object: [`service_routes`], [`ingress_routes`].) An
/// invalid config gives resources that a client will NACK, never a panic.
pub fn to_resources(cfg: &Config) -> Resources {
    let mut out = Resources::default();
    let mut merged = [
        RouteConfiguration {
            name: EXTERNAL_ROUTES.into(),
            ..Default::default()
        },
        RouteConfiguration {
            name: INTERNAL_ROUTES.into(),
            ..Default::default()
        },
    ];
    let per_object = cfg
        .services
        .iter()
        .map(|svc| service_routes(cfg, svc))
        .chain(cfg.ingresses.iter().map(ingress_routes));
    for rcs in per_object {
        for (into, rc) in merged.iter_mut().zip(rcs) {
            into.virtual_hosts
                .extend(rc.into_iter().flat_map(|rc| rc.virtual_hosts));
        }
    }
    out.routes = merged.into();
    for r in &cfg.revisions {
        let (c, e) = revision_resources(cfg, r);
        out.clusters.push(c);
        out.endpoints.push(e);
    }
    out
}

/// The name of the RouteConfiguration of one service's or ingress's hosts on one listener
/// visibility: `external_services/service/default/hello`. One per object, so that a change
/// to one is one resource on the wire.
pub fn object_routes_name(visibility: Visibility, kind: Kind, key: &Key) -> String {
    let prefix = match visibility {
        Visibility::External => EXTERNAL_ROUTES,
        Visibility::ClusterLocal => INTERNAL_ROUTES,
    };
    let kind = match kind {
        Kind::Service => "service",
        Kind::Ingress => "ingress",
        Kind::Revision => "revision",
    };
    format!("{prefix}/{kind}/{}/{}", key.namespace, key.name)
}

fn object_routes(
    kind: Kind,
    key: &Key,
    external: Vec<VirtualHost>,
    internal: Vec<VirtualHost>,
) -> [Option<RouteConfiguration>; 2] {
    let rc = |visibility, virtual_hosts: Vec<VirtualHost>| {
        (!virtual_hosts.is_empty()).then(|| RouteConfiguration {
            name: object_routes_name(visibility, kind, key),
            virtual_hosts,
            ..Default::default()
        })
    };
    [
        rc(Visibility::External, external),
        rc(Visibility::ClusterLocal, internal),
    ]
}

/// A service's RouteConfigurations (external, cluster-local): its hosts grouped by listener
/// and target, in the order `service_hosts` lists them; `None` where it has no host.
pub fn service_routes(cfg: &Config, svc: &Service) -> [Option<RouteConfiguration>; 2] {
    let mut external = Vec::new();
    let mut internal = Vec::new();
    service_vhosts(cfg, svc, &mut external, &mut internal);
    let key = Key::new(&svc.namespace, &svc.name);
    object_routes(Kind::Service, &key, external, internal)
}

/// An ingress's RouteConfigurations (external, cluster-local): one virtual host per rule.
pub fn ingress_routes(ing: &Ingress) -> [Option<RouteConfiguration>; 2] {
    let mut external = Vec::new();
    let mut internal = Vec::new();
    let several = ing.rules.len() > 1;
    for (r, rule) in ing.rules.iter().enumerate() {
        let mut name = format!("{}/{}", ing.namespace, ing.name);
        if several {
            name.push_str(&format!("/{r}"));
        }
        let vh = VirtualHost {
            name,
            domains: rule.hosts.clone(),
            require_tls: require_tls(rule.http_option),
            routes: rule
                .paths
                .iter()
                .map(|p| path_route(p, &ing.namespace))
                .collect(),
            ..Default::default()
        };
        match rule.visibility {
            Visibility::External => external.push(vh),
            Visibility::ClusterLocal => internal.push(vh),
        }
    }
    let key = Key::new(&ing.namespace, &ing.name);
    object_routes(Kind::Ingress, &key, external, internal)
}

/// A revision's Cluster and ClusterLoadAssignment.
pub fn revision_resources(
    cfg: &Config,
    r: &weir_config::model::Revision,
) -> (Cluster, ClusterLoadAssignment) {
    (
        revision_cluster(cfg, r),
        load_assignment(&cluster_name(&r.namespace, &r.name), &r.endpoints),
    )
}

/// The virtual hosts of a service: its hosts grouped by listener and target, in the order
/// `service_hosts` lists them.
fn service_vhosts(
    cfg: &Config,
    svc: &Service,
    external: &mut Vec<VirtualHost>,
    internal: &mut Vec<VirtualHost>,
) {
    // (internal_only, target) -> domains, in first-seen order.
    let mut groups: Vec<((bool, HostTarget), Vec<String>)> = Vec::new();
    for h in hosts::service_hosts(cfg, svc) {
        let key = (h.internal_only, h.target);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, domains)) => domains.push(h.host),
            None => groups.push((key, vec![h.host])),
        }
    }
    let cluster_of = |t: usize| cluster_name(&svc.namespace, &svc.traffic[t].revision);
    for ((internal_only, target), domains) in groups {
        let (name, routes) = match target {
            HostTarget::Split => {
                let mut routes = Vec::new();
                if cfg.tag_header_routing {
                    // Knative's tag header routing, as Kourier expresses it: one route per tag
                    // that matches the header exactly, before the default split.
                    for (t, tt) in svc.traffic.iter().enumerate() {
                        if let Some(tag) = &tt.tag {
                            routes.push(tag_route(
                                prefix_match("/", [(TAG_HEADER.to_ascii_lowercase(), tag.clone())]),
                                tag,
                                cluster_of(t),
                            ));
                        }
                    }
                }
                let splits: Vec<(String, u32, BTreeMap<String, String>)> = svc
                    .traffic
                    .iter()
                    .enumerate()
                    .map(|(t, tt)| (cluster_of(t), tt.percent, BTreeMap::new()))
                    .collect();
                routes.push(Route {
                    r#match: Some(prefix_match("/", [])),
                    metadata: affinity_metadata(svc.affinity.as_ref()),
                    action: Some(route::Action::Route(split_action(splits, None))),
                    ..Default::default()
                });
                (format!("{}/{}", svc.namespace, svc.name), routes)
            }
            HostTarget::Tag(t) => {
                let tag = svc.traffic[t].tag.clone().unwrap_or_default();
                let route = tag_route(prefix_match("/", []), &tag, cluster_of(t));
                (format!("{}/{}/{tag}", svc.namespace, svc.name), vec![route])
            }
        };
        let vh = VirtualHost {
            name,
            domains,
            routes,
            require_tls: require_tls(svc.http_option),
            ..Default::default()
        };
        if internal_only {
            internal.push(vh);
        } else {
            external.push(vh);
        }
    }
}

fn path_route(p: &PathRule, namespace: &str) -> Route {
    let prefix = if p.path.is_empty() { "/" } else { &p.path };
    let splits = p
        .splits
        .iter()
        .map(|s| {
            let ns = s.namespace.as_deref().unwrap_or(namespace);
            (
                cluster_name(ns, &s.revision),
                s.percent,
                s.append_headers.clone(),
            )
        })
        .collect();
    Route {
        r#match: Some(prefix_match(
            prefix,
            p.headers.iter().map(|(k, v)| (k.clone(), v.clone())),
        )),
        request_headers_to_add: header_options(&p.append_headers),
        metadata: affinity_metadata(p.affinity.as_ref()),
        action: Some(route::Action::Route(split_action(
            splits,
            p.rewrite_host.clone(),
        ))),
        ..Default::default()
    }
}

/// `http_option: redirect` is Envoy's `require_tls: ALL` (a 301 to https on plain HTTP).
fn require_tls(o: HttpOption) -> i32 {
    match o {
        HttpOption::Enabled => virtual_host::TlsRequirementType::None as i32,
        HttpOption::Redirect => virtual_host::TlsRequirementType::All as i32,
    }
}

/// Revision affinity travels in the route's `weir` filter metadata: Envoy has no sticky
/// weighted clusters (its `hash_policy` picks endpoints inside one cluster).
fn affinity_metadata(a: Option<&Affinity>) -> Option<Metadata> {
    let a = a?;
    let mut fields = HashMap::new();
    let mut put = |k: &str, v: value::Kind| {
        fields.insert(k.to_string(), Value { kind: Some(v) });
    };
    if let Some(h) = &a.header {
        put("header", value::Kind::StringValue(h.clone()));
    }
    if let Some(c) = &a.cookie {
        put("cookie", value::Kind::StringValue(c.clone()));
    }
    if let Some(t) = &a.ttl {
        put("ttl", value::Kind::StringValue(t.as_str().into()));
    }
    if a.instance_affinity {
        put("instance_affinity", value::Kind::BoolValue(true));
    }
    let affinity = Value {
        kind: Some(value::Kind::StructValue(Struct { fields })),
    };
    Some(Metadata {
        filter_metadata: [(
            METADATA_KEY.to_string(),
            Struct {
                fields: [("affinity".to_string(), affinity)].into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

/// A route to one revision of a tag (a tag host, or a tag header on the service's hosts):
/// it sets `Knative-Serving-Tag` upstream.
fn tag_route(matching: RouteMatch, tag: &str, cluster: String) -> Route {
    Route {
        r#match: Some(matching),
        request_headers_to_add: header_options(
            &[(TAG_HEADER.to_string(), tag.to_string())]
                .into_iter()
                .collect(),
        ),
        action: Some(route::Action::Route(single_cluster(cluster))),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str, headers: impl IntoIterator<Item = (String, String)>) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
        headers: headers
            .into_iter()
            .map(|(name, v)| HeaderMatcher {
                name,
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        ignore_case: false,
                        match_pattern: Some(string_matcher::MatchPattern::Exact(v)),
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn single_cluster(cluster: String) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        ..Default::default()
    }
}

/// A route action for weighted `splits` (cluster, percent, post-split headers); a single
/// target without headers is a plain `cluster` action, as Envoy users would write it.
fn split_action(
    splits: Vec<(String, u32, BTreeMap<String, String>)>,
    rewrite_host: Option<String>,
) -> RouteAction {
    let cluster_specifier = match splits.as_slice() {
        [(c, 100, h)] if h.is_empty() => route_action::ClusterSpecifier::Cluster(c.clone()),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: splits
                .into_iter()
                .map(|(name, percent, headers)| weighted_cluster::ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: percent }),
                    request_headers_to_add: header_options(&headers),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        host_rewrite_specifier: rewrite_host
            .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
        ..Default::default()
    }
}

/// Weir's `append_headers` replace a client's header: Kourier's OVERWRITE_IF_EXISTS_OR_ADD.
fn header_options(headers: &BTreeMap<String, String>) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

fn revision_cluster(cfg: &Config, r: &weir_config::model::Revision) -> Cluster {
    let timeout = r.timeout.as_ref().unwrap_or(&cfg.hold.timeout).as_str();
    let protocol = match r.protocol {
        Protocol::Http1 => "http1",
        Protocol::H2c => "h2c",
    };
    let fields: HashMap<String, Value> = [
        (
            "container_concurrency",
            value::Kind::NumberValue(f64::from(r.container_concurrency)),
        ),
        ("timeout", value::Kind::StringValue(timeout.into())),
        ("protocol", value::Kind::StringValue(protocol.into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Value { kind: Some(v) }))
    .collect();
    Cluster {
        name: cluster_name(&r.namespace, &r.name),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        metadata: Some(Metadata {
            filter_metadata: [(METADATA_KEY.to_string(), Struct { fields })]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ClusterLoadAssignment of a revision: one locality with every endpoint.
pub fn load_assignment(cluster: &str, endpoints: &[String]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .filter_map(|e| {
            let (address, port) = match parse_endpoint(e).ok()? {
                EndpointSpec::Addr(a) => (a.ip().to_string(), a.port()),
                EndpointSpec::Name(h, p) => (h, p),
            };
            Some(LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                    xds_api::pb::envoy::config::endpoint::v3::Endpoint {
                        address: Some(xds_api::pb::envoy::config::core::v3::Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address,
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    u32::from(port),
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}
