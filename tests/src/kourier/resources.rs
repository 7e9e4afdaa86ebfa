//! A snapshot as net-kourier's generator builds it for its gateways (`pkg/generator`,
//! `pkg/envoy/api`), from KIngresses, their Services' endpoints and their Secrets.
//!
//! - Clusters: one per split service, `namespace/service`, STATIC with the ready addresses
//!   inline (`load_assignment`), `connect_timeout: 5s`; h2c marked with
//!   `HttpProtocolOptions{explicit_http_config: http2}`; an ExternalName service is
//!   LOGICAL_DNS with one `host:port` endpoint. Optionally `otel-collector` (tracing) and
//!   `extAuthz` (external authorization) clusters.
//! - RouteConfigurations `external_services`, `internal_services` (every rule, external ones
//!   too, plus the `internalkourier` status virtual host routing `/ready` to the bootstrap
//!   cluster `service_stats`), `external_tls_services` and `internal_tls_services` (the
//!   routes of ingresses with TLS). One virtual host per host, named
//!   `(ns/name).Domain[host]`, domains `host` and `host:*`, routes sorted by prefix length
//!   (longest first, stable), probe paths first; weighted clusters with the split headers,
//!   `timeout: 0s`, WebSocket upgrades, `OVERWRITE_IF_EXISTS_OR_ADD` headers. With
//!   `httpOption: Redirected` the plain configurations get `https_redirect` routes instead.
//! - Listeners 8080 (external routes, optional PROXY protocol), 8081 (internal), 8090
//!   (probe, external routes), and with TLS 8443 and 9443 (filter chains per Secret with
//!   `server_names`, the certificate inline in a `DownstreamTlsContext`; a chain without
//!   server names in one-cert mode) and 8444 (cluster-local TLS).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use prost::Message;
use weir_control::xds_api::pb::envoy::config::cluster::v3::{cluster, Cluster};
use weir_control::xds_api::pb::envoy::config::core::v3::{
    address, config_source, data_source, header_value_option::HeaderAppendAction, socket_address,
    transport_socket, Address, AggregatedConfigSource, ConfigSource, DataSource, HeaderValue,
    HeaderValueOption, HttpProtocolOptions, SocketAddress, TransportSocket,
};
use weir_control::xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use weir_control::xds_api::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use weir_control::xds_api::pb::envoy::config::route::v3::{
    header_matcher, redirect_action, route, route_action, route_match, weighted_cluster,
    HeaderMatcher, RedirectAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use weir_control::xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use weir_control::xds_api::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
use weir_control::xds_api::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use weir_control::xds_api::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};

use super::{Backend, GatewayPorts, HttpOption, KIngress, Secret, Visibility, STATUS_HOST};

pub const EXTERNAL: &str = "external_services";
pub const INTERNAL: &str = "internal_services";
pub const EXTERNAL_TLS: &str = "external_tls_services";
pub const INTERNAL_TLS: &str = "internal_tls_services";

/// The resources of one snapshot, by type.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub clusters: Vec<Cluster>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
}

/// Kourier's settings (`config-kourier`, `config-network`) that change what it sends.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `enable-proxy-protocol`: a PROXY protocol listener filter on 8080 (and 8443).
    pub proxy_protocol: bool,
    /// `trusted-hops-count`.
    pub trusted_hops: u32,
    /// `use-remote-address` (forced on with proxy protocol).
    pub use_remote_address: bool,
    /// `certs-secret-name`: a default certificate (a chain without server names) on the
    /// external TLS listeners.
    pub default_certificate: Option<Secret>,
    /// `cluster-cert-secret`: the default certificate of the cluster-local TLS listener.
    pub cluster_certificate: Option<Secret>,
    /// `tracing-endpoint`: an `otel-collector` cluster.
    pub tracing: bool,
    /// `extauthz-host`: an `extAuthz` cluster and an ext_authz HTTP filter.
    pub ext_authz: bool,
}

/// Everything the generator reads: the ingresses (their probe paths are inserted here),
/// their services and secrets, the gateway's ports, and Kourier's settings. Also returns
/// each ingress's hash (what the prober expects back), by `namespace/name`.
pub fn snapshot(
    ingresses: &[KIngress],
    services: &HashMap<(String, String), Backend>,
    secrets: &HashMap<String, Secret>,
    ports: &GatewayPorts,
    opts: &Options,
) -> (Snapshot, BTreeMap<String, String>) {
    let mut hashes = BTreeMap::new();
    // RouteConfiguration name -> host -> virtual host.
    let mut vhosts: BTreeMap<&str, BTreeMap<String, VirtualHost>> = BTreeMap::new();
    let mut clusters: BTreeMap<String, Cluster> = BTreeMap::new();
    // (server names, secret) per TLS chain, by visibility.
    let mut chains: Vec<(Visibility, Vec<String>, Secret)> = Vec::new();
    for ing in ingresses {
        let (ing, hash) = ing.with_probes();
        hashes.insert(format!("{}/{}", ing.namespace, ing.name), hash);
        let tls_hosts: Vec<&String> = ing.tls.iter().flat_map(|t| t.hosts.iter()).collect();
        for t in &ing.tls {
            if let Some(secret) = secrets.get(&t.secret_name) {
                // The visibility of the rule that has these hosts (external by default).
                let vis = ing
                    .rules
                    .iter()
                    .find(|r| r.hosts.iter().any(|h| t.hosts.contains(h)))
                    .map_or(Visibility::ExternalIP, |r| r.visibility);
                chains.push((vis, t.hosts.clone(), secret.clone()));
            }
        }
        for rule in &ing.rules {
            let mut routes: Vec<Route> = rule
                .paths
                .iter()
                .map(|p| path_route(&ing, p, rule.hosts.first().map_or("", |h| h.as_str())))
                .collect();
            // Longest prefix first; a stable sort keeps each probe before its path.
            routes.sort_by_key(|r| std::cmp::Reverse(prefix_of(r).len()));
            for p in &rule.paths {
                for s in &p.splits {
                    let key = (s.service_namespace.clone(), s.service_name.clone());
                    let name = format!("{}/{}", key.0, key.1);
                    if let Some(b) = services.get(&key) {
                        clusters
                            .entry(name.clone())
                            .or_insert_with(|| cluster(&name, b));
                    }
                }
            }
            let has_tls = !tls_hosts.is_empty();
            let redirect = ing.http_option == HttpOption::Redirected
                && rule.visibility == Visibility::ExternalIP;
            let plain_routes: Vec<Route> = if redirect {
                routes.iter().map(redirect_route).collect()
            } else {
                routes.clone()
            };
            let mut add = |rc: &'static str, routes: &[Route]| {
                for host in &rule.hosts {
                    let vh = vhosts
                        .entry(rc)
                        .or_default()
                        .entry(host.clone())
                        .or_insert_with(|| VirtualHost {
                            name: format!("({}/{}).Domain[{host}]", ing.namespace, ing.name),
                            domains: vec![host.clone(), format!("{host}:*")],
                            ..Default::default()
                        });
                    vh.routes.extend(routes.iter().cloned());
                }
            };
            match rule.visibility {
                Visibility::ExternalIP => {
                    add(EXTERNAL, &plain_routes);
                    add(INTERNAL, &plain_routes);
                    if has_tls {
                        add(EXTERNAL_TLS, &routes);
                    }
                }
                Visibility::ClusterLocal => {
                    add(INTERNAL, &plain_routes);
                    if has_tls {
                        add(INTERNAL_TLS, &routes);
                    }
                }
            }
        }
    }
    let mut internal_vhosts: Vec<VirtualHost> = vhosts
        .remove(INTERNAL)
        .unwrap_or_default()
        .into_values()
        .collect();
    internal_vhosts.push(status_vhost());
    let rc = |name: &str, virtual_hosts: Vec<VirtualHost>| RouteConfiguration {
        name: name.into(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let take = |vhosts: &mut BTreeMap<&str, BTreeMap<String, VirtualHost>>, name| {
        vhosts
            .remove(name)
            .unwrap_or_default()
            .into_values()
            .collect::<Vec<_>>()
    };
    let routes = vec![
        rc(EXTERNAL, take(&mut vhosts, EXTERNAL)),
        rc(INTERNAL, internal_vhosts),
        rc(EXTERNAL_TLS, take(&mut vhosts, EXTERNAL_TLS)),
        rc(INTERNAL_TLS, take(&mut vhosts, INTERNAL_TLS)),
    ];

    if opts.tracing {
        clusters.insert("otel-collector".into(), named_cluster("otel-collector"));
    }
    if opts.ext_authz {
        clusters.insert("extAuthz".into(), named_cluster("extAuthz"));
    }

    let use_remote = opts.use_remote_address || opts.proxy_protocol;
    let hcm = |rds: &str| hcm_filter(rds, use_remote, opts.trusted_hops, opts.ext_authz);
    let mut listeners = vec![
        listener(
            "listener_8080",
            ports.http,
            vec![plain_chain(hcm(EXTERNAL))],
            opts.proxy_protocol,
        ),
        listener(
            "listener_8081",
            ports.internal,
            vec![plain_chain(hcm(INTERNAL))],
            false,
        ),
        listener(
            "listener_8090",
            ports.probe,
            vec![plain_chain(hcm(EXTERNAL))],
            false,
        ),
    ];
    let external_chains: Vec<&(Visibility, Vec<String>, Secret)> = chains
        .iter()
        .filter(|(v, _, _)| *v == Visibility::ExternalIP)
        .collect();
    if !external_chains.is_empty() || opts.default_certificate.is_some() {
        let tls_chains = |rds: &str| -> Vec<FilterChain> {
            external_chains
                .iter()
                .map(|(_, names, secret)| tls_chain(names, secret, hcm(rds)))
                .chain(
                    opts.default_certificate
                        .iter()
                        .map(|secret| tls_chain(&[], secret, hcm(rds))),
                )
                .collect()
        };
        listeners.push(tls_listener(
            "listener_8443",
            ports.https,
            tls_chains(EXTERNAL_TLS),
            opts.proxy_protocol,
        ));
        listeners.push(tls_listener(
            "listener_9443",
            ports.probe_https,
            tls_chains(EXTERNAL),
            false,
        ));
    }
    let internal_chains: Vec<FilterChain> = chains
        .iter()
        .filter(|(v, _, _)| *v == Visibility::ClusterLocal)
        .map(|(_, names, secret)| tls_chain(names, secret, hcm(INTERNAL_TLS)))
        .chain(
            opts.cluster_certificate
                .iter()
                .map(|secret| tls_chain(&[], secret, hcm(INTERNAL_TLS))),
        )
        .collect();
    if !internal_chains.is_empty() {
        listeners.push(tls_listener(
            "listener_8444",
            ports.internal_https,
            internal_chains,
            false,
        ));
    }
    (
        Snapshot {
            clusters: clusters.into_values().collect(),
            listeners,
            routes,
        },
        hashes,
    )
}

fn prefix_of(r: &Route) -> &str {
    match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route_match::PathSpecifier::Prefix(p)) => p,
        _ => "",
    }
}

fn headers_to_add(h: &BTreeMap<String, String>) -> Vec<HeaderValueOption> {
    h.iter()
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

fn path_route(ing: &KIngress, p: &super::Path, first_host: &str) -> Route {
    let prefix = if p.path.is_empty() {
        "/".to_string()
    } else {
        p.path.clone()
    };
    let headers = p
        .headers
        .iter()
        .map(|(name, exact)| HeaderMatcher {
            name: name.clone(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(exact.clone())),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .collect();
    let clusters = p
        .splits
        .iter()
        .map(|s| weighted_cluster::ClusterWeight {
            name: format!("{}/{}", s.service_namespace, s.service_name),
            weight: Some(UInt32Value { value: s.percent }),
            request_headers_to_add: headers_to_add(&s.append_headers),
            ..Default::default()
        })
        .collect();
    Route {
        name: format!(
            "({}/{}).Domain[{first_host}].Paths[{}]",
            ing.namespace, ing.name, p.path
        ),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix)),
            headers,
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters,
                    ..Default::default()
                },
            )),
            timeout: Some(Duration {
                seconds: 0,
                nanos: 0,
            }),
            upgrade_configs: vec![route_action::UpgradeConfig {
                upgrade_type: "websocket".into(),
                enabled: Some(BoolValue { value: true }),
                ..Default::default()
            }],
            host_rewrite_specifier: p
                .rewrite_host
                .clone()
                .map(route_action::HostRewriteSpecifier::HostRewriteLiteral),
            ..Default::default()
        })),
        request_headers_to_add: headers_to_add(&p.append_headers),
        ..Default::default()
    }
}

/// The same match, answered with a 301 to https.
fn redirect_route(r: &Route) -> Route {
    Route {
        name: r.name.clone(),
        r#match: r.r#match.clone(),
        action: Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Kourier's status virtual host: `/ready` to Envoy's bootstrap cluster `service_stats`.
fn status_vhost() -> VirtualHost {
    VirtualHost {
        name: "gateway".into(),
        domains: vec![STATUS_HOST.into()],
        routes: vec![Route {
            name: "gateway_ready".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/ready".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                    WeightedCluster {
                        clusters: vec![weighted_cluster::ClusterWeight {
                            name: "service_stats".into(),
                            weight: Some(UInt32Value { value: 100 }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                )),
                timeout: Some(Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn socket(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn lb_endpoint(host: &str, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(host, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The parts of envoy.extensions.upstreams.http.v3.HttpProtocolOptions Kourier sets for h2c
/// (xds-api does not ship the type; field numbers are Envoy's).
mod upstream_http {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpProtocolOptions {
        #[prost(message, optional, tag = "3")]
        pub explicit_http_config: Option<ExplicitHttpConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExplicitHttpConfig {
        #[prost(message, optional, tag = "2")]
        pub http2_protocol_options: Option<Empty>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

fn cluster(name: &str, backend: &Backend) -> Cluster {
    let (kind, endpoints, h2c) = match backend {
        Backend::Pods { addrs, h2c } => (
            cluster::DiscoveryType::Static,
            addrs
                .iter()
                .map(|a| lb_endpoint(&a.ip().to_string(), a.port()))
                .collect(),
            *h2c,
        ),
        Backend::ExternalName { host, port } => (
            cluster::DiscoveryType::LogicalDns,
            vec![lb_endpoint(host, *port)],
            false,
        ),
    };
    let mut c = Cluster {
        name: name.into(),
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    if h2c {
        let opts = upstream_http::HttpProtocolOptions {
            explicit_http_config: Some(upstream_http::ExplicitHttpConfig {
                http2_protocol_options: Some(upstream_http::Empty {}),
            }),
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                        .into(),
                value: opts.encode_to_vec(),
            },
        );
    }
    c
}

/// A cluster that is not a revision (tracing, ext-authz): a STRICT_DNS cluster to a host.
fn named_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(
                    &format!("{}.observability", name.to_lowercase()),
                    4317,
                )],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn any<M: Message>(type_name: &str, m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: m.encode_to_vec(),
    }
}

fn hcm_filter(rds: &str, use_remote_address: bool, trusted_hops: u32, ext_authz: bool) -> Filter {
    let mut http_filters = Vec::new();
    if ext_authz {
        http_filters.push(HttpFilter {
            name: "envoy.filters.http.ext_authz".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
                    .into(),
                value: Vec::new(),
            })),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
            value: Vec::new(),
        })),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        codec_type: 0, // AUTO
        stat_prefix: "ingress_http".into(),
        http_filters,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                initial_fetch_timeout: Some(Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                resource_api_version: 2, // V3
                ..Default::default()
            }),
            route_config_name: rds.into(),
        })),
        use_remote_address: Some(BoolValue {
            value: use_remote_address,
        }),
        xff_num_trusted_hops: trusted_hops,
        stream_idle_timeout: Some(Duration {
            seconds: 0,
            nanos: 0,
        }),
        common_http_protocol_options: Some(HttpProtocolOptions::default()),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &hcm,
        ))),
    }
}

fn plain_chain(hcm: Filter) -> FilterChain {
    FilterChain {
        filters: vec![hcm],
        ..Default::default()
    }
}

/// DownstreamTlsContext and CommonTlsContext as far as Kourier fills them (xds-api does not
/// ship these types; field numbers are Envoy's).
mod downstream_tls {
    use weir_control::xds_api::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DownstreamTlsContext {
        #[prost(message, optional, tag = "1")]
        pub common_tls_context: Option<CommonTlsContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CommonTlsContext {
        #[prost(message, repeated, tag = "2")]
        pub tls_certificates: Vec<TlsCertificate>,
        #[prost(string, repeated, tag = "4")]
        pub alpn_protocols: Vec<String>,
    }
}

fn tls_chain(server_names: &[String], secret: &Secret, hcm: Filter) -> FilterChain {
    let inline = |pem: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    };
    let ctx = downstream_tls::DownstreamTlsContext {
        common_tls_context: Some(downstream_tls::CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(inline(&secret.cert_pem)),
                private_key: Some(inline(&secret.key_pem)),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        }),
    };
    FilterChain {
        filter_chain_match: (!server_names.is_empty()).then(|| FilterChainMatch {
            server_names: server_names.to_vec(),
            ..Default::default()
        }),
        filters: vec![hcm],
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                &ctx,
            ))),
        }),
        ..Default::default()
    }
}

fn listener_filter(name: &str, type_name: &str) -> ListenerFilter {
    ListenerFilter {
        name: name.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(Any {
            type_url: format!("type.googleapis.com/{type_name}"),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

fn listener(
    name: &str,
    addr: SocketAddr,
    chains: Vec<FilterChain>,
    proxy_protocol: bool,
) -> Listener {
    let mut listener_filters = Vec::new();
    if proxy_protocol {
        listener_filters.push(listener_filter(
            "envoy.filters.listener.proxy_protocol",
            "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
        ));
    }
    Listener {
        name: name.into(),
        address: Some(socket("0.0.0.0", addr.port())),
        filter_chains: chains,
        listener_filters,
        ..Default::default()
    }
}

fn tls_listener(
    name: &str,
    addr: SocketAddr,
    chains: Vec<FilterChain>,
    proxy_protocol: bool,
) -> Listener {
    let mut l = listener(name, addr, chains, proxy_protocol);
    l.listener_filters.push(listener_filter(
        "envoy.filters.listener.tls_inspector",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    ));
    l
}
