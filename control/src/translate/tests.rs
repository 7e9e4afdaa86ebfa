//! Round trips (config -> resources -> config routes every probe request the same way) and
//! the rejections, each naming the resource and the field.

use std::collections::BTreeSet;

use serde_json::json;
use weir_config::hosts::service_hosts;
use weir_config::{compile, Config, Listener, RouteTable, Target};
use xds_api::pb::envoy::config::cluster::v3::{cluster, Cluster};
use xds_api::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use xds_api::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use xds_api::pb::envoy::config::route::v3::{
    route, route_action, route_match, RedirectAction, RouteConfiguration,
};
use xds_api::pb::envoy::r#type::matcher::v3::RegexMatcher;
use xds_api::pb::google::protobuf::{Any, UInt32Value};

use super::*;

fn config(v: serde_json::Value) -> Config {
    let cfg: Config = serde_json::from_value(v).expect("config parses");
    weir_config::validate(&cfg).expect("test config is valid");
    cfg
}

fn rich(tag_header_routing: bool) -> Config {
    config(json!({
        "domain": "example.org",
        "tag_header_routing": tag_header_routing,
        "hold": {"timeout": "45s"},
        "services": [
            {"name": "hello", "hosts": ["hello.example.net"], "http_option": "redirect",
             "affinity": {"cookie": "weir-rev", "ttl": "1h", "instance_affinity": true},
             "traffic": [
                {"revision": "hello-00001", "percent": 90, "tag": "current"},
                {"revision": "hello-00002", "percent": 10, "tag": "candidate"},
                {"revision": "hello-00003", "percent": 0, "tag": "latest"}]},
            {"name": "local", "namespace": "team", "visibility": "cluster-local",
             "hosts": ["local.internal.example"],
             "traffic": [{"revision": "local-00001", "percent": 100, "tag": "v1"}]},
        ],
        "ingresses": [{
            "name": "api", "rules": [
                {"hosts": ["api.example.com", "API2.example.com"], "paths": [
                    {"path": "/v2", "headers": {"x-canary": "yes", "x-two": "2"},
                     "append_headers": {"x-route": "v2"}, "rewrite_host": "api-v2.internal",
                     "affinity": {"header": "x-user-id"},
                     "splits": [
                        {"revision": "api-00002", "percent": 60, "append_headers": {"x-split": "b"}},
                        {"revision": "local-00001", "namespace": "team", "percent": 40}]},
                    {"path": "", "splits": [{"revision": "api-00001", "percent": 100}]}]},
                {"hosts": ["api.default"], "visibility": "cluster-local", "http_option": "redirect",
                 "paths": [{"path": "/", "splits": [{"revision": "api-00001", "percent": 100}]}]}]
        }],
        "revisions": [
            {"name": "hello-00001", "endpoints": ["127.0.0.1:9001", "[::1]:9002"]},
            {"name": "hello-00002", "container_concurrency": 1, "timeout": "10s",
             "endpoints": ["localhost:9003"]},
            {"name": "hello-00003", "protocol": "h2c", "endpoints": []},
            {"name": "local-00001", "namespace": "team", "container_concurrency": 7,
             "endpoints": ["10.0.0.1:80"]},
            {"name": "api-00001", "endpoints": ["10.0.0.2:80"]},
            {"name": "api-00002", "endpoints": ["10.0.0.3:80"]},
        ],
    }))
}

fn round_trip(cfg: &Config) -> Config {
    let res = to_resources(cfg);
    from_resources(&res.routes, &res.clusters, &res.endpoints)
        .unwrap_or_else(|e| panic!("round trip rejected: {e}"))
}

/// What the data plane does with one request: (redirect, rewrite, affinity, targets with
/// percent and the headers set upstream).
type Outcome = (
    bool,
    Option<String>,
    String,
    Vec<(String, u32, Vec<(String, String)>)>,
);

fn outcome(
    t: &RouteTable,
    host: &str,
    listener: Listener,
    path: &str,
    headers: &[(String, String)],
) -> Option<Option<Outcome>> {
    let route = t.lookup(host.as_bytes(), listener).unwrap()?;
    let target_view = |pre: &[(http::HeaderName, http::HeaderValue)], tg: &Target| {
        let mut h: std::collections::BTreeMap<String, String> = pre
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        if let Some(tag) = &tg.tag {
            h.insert("knative-serving-tag".into(), tag.to_str().unwrap().into());
        }
        for (k, v) in tg.append_headers.iter() {
            h.insert(k.to_string(), v.to_str().unwrap().into());
        }
        (
            format!("{}/{}", tg.namespace, tg.name),
            tg.percent,
            h.into_iter().collect::<Vec<_>>(),
        )
    };
    if t.tag_header_routing() {
        if let Some((_, v)) = headers.iter().find(|(k, _)| k == "knative-serving-tag") {
            if let Some(tg) = route.tag_target(v.as_bytes()) {
                let view = target_view(&[], tg);
                return Some(Some((
                    route.redirect_https,
                    None,
                    "None".into(),
                    vec![view],
                )));
            }
        }
    }
    let Some(p) = route.route(path.as_bytes(), |name| {
        headers
            .iter()
            .find(|(k, _)| k == name.as_str())
            .map(|(_, v)| v.as_bytes())
    }) else {
        return Some(None);
    };
    let mut targets: Vec<_> = p
        .split
        .targets()
        .iter()
        .map(|tg| target_view(&p.append_headers, tg))
        .collect();
    targets.sort();
    Some(Some((
        route.redirect_https,
        p.rewrite_host
            .as_ref()
            .map(|h| h.to_str().unwrap().to_string()),
        format!("{:?}", p.affinity),
        targets,
    )))
}

/// Every host of the config, every prefix and header combination it mentions.
/// (hosts, paths, header sets) to probe a table with.
type Probes = (Vec<String>, Vec<String>, Vec<Vec<(String, String)>>);

fn probes(cfg: &Config) -> Probes {
    let mut hosts: BTreeSet<String> = BTreeSet::from(["nope.example.com".to_string()]);
    let mut paths: BTreeSet<String> = ["/", "/zzz"].map(String::from).into();
    let mut header_sets: Vec<Vec<(String, String)>> = vec![vec![]];
    for s in &cfg.services {
        hosts.extend(service_hosts(cfg, s).into_iter().map(|h| h.host));
        for t in &s.traffic {
            if let Some(tag) = &t.tag {
                header_sets.push(vec![("knative-serving-tag".into(), tag.clone())]);
            }
        }
    }
    header_sets.push(vec![("knative-serving-tag".into(), "unknown".into())]);
    for ing in &cfg.ingresses {
        for r in &ing.rules {
            hosts.extend(r.hosts.iter().cloned());
            for p in r.paths.iter() {
                paths.insert(p.path.clone());
                paths.insert(format!("{}/x", p.path));
                let all: Vec<_> = p
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for h in &all {
                    header_sets.push(vec![h.clone()]);
                }
                header_sets.push(all);
            }
        }
    }
    // A request path is never empty ("" and "/" prefixes are both catch-alls).
    paths.remove("");
    (
        hosts.into_iter().collect(),
        paths.into_iter().collect(),
        header_sets,
    )
}

fn assert_same_routing(a: &Config, b: &Config) {
    let (ta, tb) = (compile(a).unwrap(), compile(b).unwrap());
    let (hosts, paths, header_sets) = probes(a);
    let mut n = 0;
    for host in &hosts {
        for listener in [Listener::External, Listener::Internal] {
            for path in &paths {
                for hs in &header_sets {
                    let (x, y) = (
                        outcome(&ta, host, listener, path, hs),
                        outcome(&tb, host, listener, path, hs),
                    );
                    assert_eq!(x, y, "{host} {listener:?} {path:?} {hs:?}");
                    n += 1;
                }
            }
        }
    }
    assert!(n > 100, "only {n} probes");
    // Revisions are served alike: concurrency, hold timeout, protocol, endpoints.
    let served = |cfg: &Config, r: &weir_config::model::Revision| {
        let eps: Vec<weir_config::EndpointSpec> = r
            .endpoints
            .iter()
            .map(|e| weir_config::parse_endpoint(e).unwrap())
            .collect();
        (
            r.container_concurrency,
            cfg.revision_timeout(r),
            r.protocol,
            eps,
        )
    };
    for ra in &a.revisions {
        let rb = b
            .revisions
            .iter()
            .find(|r| r.namespace == ra.namespace && r.name == ra.name)
            .unwrap_or_else(|| panic!("revision {}/{} lost", ra.namespace, ra.name));
        assert_eq!(served(a, ra), served(b, rb));
    }
    assert_eq!(a.revisions.len(), b.revisions.len());
}

#[test]
fn round_trip_routes_the_same() {
    for thr in [false, true] {
        let cfg = rich(thr);
        let back = round_trip(&cfg);
        assert!(back.services.is_empty());
        assert_same_routing(&cfg, &back);
        // And the translation is stable: a second trip gives the same config.
        assert_eq!(round_trip(&back), back);
    }
}

#[test]
fn round_trip_with_custom_templates() {
    let cfg = config(json!({
        "domain": "apps.test", "domain_template": "{name}-{namespace}.{domain}",
        "tag_template": "{name}-{tag}", "cluster_domain": "cluster.test",
        "services": [{"name": "a", "traffic": [
            {"revision": "a-1", "percent": 50, "tag": "x"},
            {"revision": "a-1", "percent": 50, "tag": "y"}]}],
        "revisions": [{"name": "a-1", "endpoints": ["127.0.0.1:1"]}],
    }));
    assert_same_routing(&cfg, &round_trip(&cfg));
}

#[test]
fn resources_look_like_kouriers() {
    let res = to_resources(&rich(false));
    let names: Vec<_> = res.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, [EXTERNAL_ROUTES, INTERNAL_ROUTES]);
    let ext = &res.routes[0];
    let hello = &ext.virtual_hosts[0];
    assert_eq!(hello.name, "default/hello");
    assert_eq!(
        hello.domains,
        ["hello.default.example.org", "hello.example.net"]
    );
    let tag = &ext.virtual_hosts[1];
    assert_eq!(tag.name, "default/hello/current");
    let h = tag.routes[0].request_headers_to_add[0]
        .header
        .as_ref()
        .unwrap();
    assert_eq!((h.key.as_str(), h.value.as_str()), (TAG_HEADER, "current"));
    let c = &res.clusters[1];
    assert_eq!(c.name, "default/hello-00002");
    let md = &c.metadata.as_ref().unwrap().filter_metadata[METADATA_KEY];
    assert_eq!(
        format!("{:?}", md.fields["timeout"].kind),
        format!(
            "{:?}",
            Some(xds_api::pb::google::protobuf::value::Kind::StringValue(
                "10s".into()
            ))
        )
    );
    assert_eq!(res.endpoints[0].cluster_name, "default/hello-00001");
    assert_eq!(res.endpoints[0].endpoints[0].lb_endpoints.len(), 2);
}

// === rejections ===

fn good() -> Resources {
    to_resources(&rich(false))
}

fn reject(res: &Resources) -> String {
    from_resources(&res.routes, &res.clusters, &res.endpoints)
        .expect_err("should be rejected")
        .to_string()
}

fn default_route_action(
    res: &mut Resources,
) -> &mut xds_api::pb::envoy::config::route::v3::RouteAction {
    match res.routes[0].virtual_hosts[0].routes[0]
        .action
        .as_mut()
        .unwrap()
    {
        route::Action::Route(a) => a,
        _ => unreachable!(),
    }
}

#[test]
fn weights_must_add_up_to_100() {
    let mut res = good();
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) =
        &mut default_route_action(&mut res).cluster_specifier
    else {
        panic!("a weighted route")
    };
    wc.clusters[1].weight = Some(UInt32Value { value: 0 });
    assert_eq!(
        reject(&res),
        "RouteConfiguration \"external_services\": virtual_hosts[0] (\"default/hello\")\
         .routes[0].route.weighted_clusters: weights add up to 90; they must add up to 100"
    );
}

#[test]
fn unsupported_matches_and_actions() {
    let mut res = good();
    res.routes[0].virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .path_specifier = Some(route_match::PathSpecifier::SafeRegex(
        RegexMatcher::default(),
    ));
    let e = reject(&res);
    assert!(
        e.contains("routes[0].match.safe_regex: regex path matches are not supported"),
        "{e}"
    );

    let mut res = good();
    res.routes[0].virtual_hosts[1].routes[0].action =
        Some(route::Action::Redirect(RedirectAction::default()));
    let e = reject(&res);
    assert!(
        e.contains("(\"default/hello/current\").routes[0].redirect: only https redirects"),
        "{e}"
    );

    let mut res = good();
    res.routes[0].virtual_hosts[0]
        .domains
        .push("*.example.org".into());
    let e = reject(&res);
    assert!(
        e.contains("domains[2]: \"*.example.org\": wildcard domains"),
        "{e}"
    );
}

#[test]
fn unknown_cluster_is_named() {
    let mut res = good();
    res.clusters.retain(|c| c.name != "default/hello-00002");
    assert_eq!(
        reject(&res),
        "RouteConfiguration \"external_services\": virtual_hosts[0] (\"default/hello\")\
         .routes[0].route.weighted_clusters.clusters[1].name: cluster \"default/hello-00002\" \
         is not among the Clusters received"
    );
}

#[test]
fn bad_cluster_metadata_and_names() {
    // A cluster that is not a revision is ignored; the routes then miss the revision.
    let mut res = good();
    res.clusters[0].name = "hello".into();
    assert!(
        reject(&res).contains("cluster \"default/hello-00001\" is not among the Clusters"),
        "{}",
        reject(&res)
    );
    let mut res = good();
    res.clusters.push(Cluster {
        name: "otel-collector".into(),
        ..Default::default()
    });
    assert!(from_resources(&res.routes, &res.clusters, &res.endpoints).is_ok());
    // Kourier's ext-authz cluster: refused, never served without the check.
    res.clusters.push(Cluster {
        name: "extAuthz".into(),
        ..Default::default()
    });
    assert!(
        reject(&res).starts_with("Cluster \"extAuthz\": name: external authorization"),
        "{}",
        reject(&res)
    );
    let mut res = good();
    let md = res.clusters[0].metadata.as_mut().unwrap();
    md.filter_metadata
        .get_mut(METADATA_KEY)
        .unwrap()
        .fields
        .insert(
            "protocol".into(),
            xds_api::pb::google::protobuf::Value {
                kind: Some(xds_api::pb::google::protobuf::value::Kind::StringValue(
                    "h3".into(),
                )),
            },
        );
    assert_eq!(
        reject(&res),
        "Cluster \"default/hello-00001\": metadata.filter_metadata.weir.protocol: \"h3\": \
         expected \"http1\" or \"h2c\""
    );
}

#[test]
fn config_errors_name_the_resource_and_keep_the_path() {
    let mut res = good();
    res.routes[0].virtual_hosts[0].routes[0].request_headers_to_add =
        vec![xds_api::pb::envoy::config::core::v3::HeaderValueOption {
            header: Some(xds_api::pb::envoy::config::core::v3::HeaderValue {
                key: "Host".into(),
                value: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
    let e = reject(&res);
    assert!(
        e.starts_with(
            "RouteConfiguration \"external_services\": virtual_hosts[0] (\"default/hello\")\
             .routes[0].append_headers.host: set the upstream Host with rewrite_host"
        ),
        "{e}"
    );
    assert!(
        e.contains("(config path ingresses[default/hello].rules[0].paths[0].append_headers.host)"),
        "{e}"
    );
}

// === what other control planes send ===

fn static_cluster(name: &str, addr: &str, port: u32) -> Cluster {
    let ep = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: addr.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut unhealthy = ep.clone();
    unhealthy.health_status = 2;
    if let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &mut unhealthy.host_identifier {
        if let Some(address::Address::SocketAddress(sa)) =
            e.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(port + 1));
        }
    }
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![ep, unhealthy],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn kourier_style_resources() {
    let mut res = to_resources(&config(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-1", "percent": 100}]}],
        "revisions": [{"name": "hello-1"}],
    })));
    // Kourier: STATIC clusters with inline endpoints, `host:*` domains, external hosts also
    // in internal_services, an h2 cluster marked by HttpProtocolOptions.
    let mut c = static_cluster("default/hello-1", "10.1.2.3", 8012);
    // HttpProtocolOptions { explicit_http_config (3) { http2_protocol_options (2) {} } }
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        Any {
            type_url: "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                .into(),
            value: vec![0x1a, 0x02, 0x12, 0x00],
        },
    );
    res.clusters = vec![c];
    res.endpoints.clear();
    let ext = res.routes[0].virtual_hosts[0].clone();
    res.routes[0].virtual_hosts[0].domains = vec![
        "hello.default.example.com".into(),
        "hello.default.example.com:*".into(),
    ];
    res.routes.push(RouteConfiguration {
        name: "external_tls_services".into(),
        virtual_hosts: vec![ext.clone()],
        ..Default::default()
    });
    res.routes[1].virtual_hosts.push(ext);
    let cfg = from_resources(&res.routes, &res.clusters, &res.endpoints).unwrap();
    assert_eq!(cfg.revisions[0].endpoints, ["10.1.2.3:8012"]);
    assert_eq!(cfg.revisions[0].protocol, weir_config::model::Protocol::H2c);
    let t = compile(&cfg).unwrap();
    let r = t
        .lookup(b"hello.default.example.com", Listener::External)
        .unwrap()
        .expect("external host");
    assert!(r.external);
}

// === composing one object's RouteConfigurations alone ===

/// What `weir control` serves for `cfg`, translated as the proxy's client translates it:
/// RouteSets by name, cluster specs by name, endpoints by ClusterLoadAssignment.
type Translated = (
    std::collections::BTreeMap<String, RouteSet>,
    std::collections::BTreeMap<String, ClusterSpec>,
    std::collections::BTreeMap<String, Vec<String>>,
);

fn served(cfg: &Config) -> Translated {
    let mut routes = std::collections::BTreeMap::new();
    for rc in cfg
        .services
        .iter()
        .flat_map(|s| service_routes(cfg, s))
        .chain(cfg.ingresses.iter().flat_map(ingress_routes))
        .flatten()
    {
        routes.insert(rc.name.clone(), from_xds::route_set(&rc).unwrap());
    }
    let mut clusters = std::collections::BTreeMap::new();
    let mut eds = std::collections::BTreeMap::new();
    for r in &cfg.revisions {
        let (c, e) = revision_resources(cfg, r);
        clusters.insert(c.name.clone(), from_xds::cluster_spec(&c).unwrap().unwrap());
        eds.insert(e.cluster_name.clone(), from_xds::endpoints(&e).unwrap());
    }
    (routes, clusters, eds)
}

/// Services `s0..s<n>` with tags and cluster-local ones, each on its own revision, and
/// one ingress.
fn objects_config(n: usize, variant: usize) -> Config {
    let services: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let v = (i + variant) % 3;
            json!({"name": format!("s{i}"),
                   "visibility": if i % 4 == 3 { "cluster-local" } else { "external" },
                   "traffic": [
                       {"revision": format!("r{i}"), "percent": 100 - v * 10, "tag": "current"},
                       {"revision": format!("r{}", (i + 1) % n), "percent": v * 10}]})
        })
        .collect();
    let revisions: Vec<serde_json::Value> = (0..n)
        .map(|i| json!({"name": format!("r{i}"), "endpoints": [format!("10.0.0.{}:80", i % 250 + 1)]}))
        .collect();
    config(json!({
        "services": services,
        "ingresses": [{"name": "api", "rules": [{"hosts": ["api.example.com"], "paths": [
            {"splits": [{"revision": "r0", "percent": 100}]}]}]}],
        "revisions": revisions,
    }))
}

#[test]
fn composing_changed_objects_alone_gives_what_composing_everything_gives() {
    let n = 12;
    let (mut routes, clusters, eds) = served(&objects_config(n, 0));
    let mut composed =
        from_xds::compose(&routes, &clusters, &eds, &from_xds::Composed::default()).unwrap();
    // Changes to a few services at a time: new traffic blocks, removed, put back.
    for step in 1..12 {
        let (next, _, _) = served(&objects_config(n, step));
        let mut touched = Vec::new();
        for i in [step % n, (step * 5) % n] {
            for prefix in ["external_services", "internal_services"] {
                let name = format!("{prefix}/service/default/s{i}");
                let new = if step % 4 == 0 {
                    None
                } else {
                    next.get(&name).cloned()
                };
                let old = match new {
                    Some(set) => routes.insert(name.clone(), set),
                    None => routes.remove(&name),
                };
                touched.push((name, old));
            }
        }
        let (fast, changes) =
            from_xds::compose_changed(&routes, &clusters, &eds, &composed, &touched)
                .expect("per-object sets compose alone")
                .unwrap_or_else(|e| panic!("step {step}: {e:?}"));
        let whole = from_xds::compose(&routes, &clusters, &eds, &composed).unwrap();
        assert_eq!(fast.config(), whole.config(), "step {step}");
        assert_eq!(
            changes.len(),
            composed.objects.diff(&whole.objects).len(),
            "step {step}: the changes are the diff"
        );
        assert_eq!(
            changes.is_empty(),
            composed.config() == whole.config(),
            "step {step}: changes when and only when something changed"
        );
        composed = fast;
    }
}
