//! Parse + validate + compile, end to end through the public API of weir-config.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use weir_config::model::Protocol;
use weir_config::{
    compile, load, parse, EndpointSpec, Format, HostError, HostRoute, Listener, PathRoute,
    RouteTable, Split,
};

// === a good config, in both spellings ===

const GOOD_YAML: &str = r#"
listen:
  http: "0.0.0.0:8080"
  admin: "127.0.0.1:9901"
domain: example.com
tag_header_routing: true
hold:
  queue_depth: 100
  timeout: 30s
services:
  - name: hello
    namespace: default
    hosts: [hello.example.org]
    traffic:
      - {revision: hello-00001, percent: 90, tag: current}
      - {revision: hello-00002, percent: 10, tag: candidate}
      - {revision: hello-00003, percent: 0, tag: latest}
  - name: private
    namespace: team-a
    visibility: cluster-local
    traffic:
      - {revision: private-00001, percent: 100}
ingresses:
  - name: api
    namespace: default
    rules:
      - hosts: [api.example.com, API.Example.NET]
        visibility: external
        paths:
          - path: /v2
            headers: {x-canary: "yes"}
            append_headers: {x-route: v2-canary}
            rewrite_host: api-v2.internal
            splits:
              - {revision: api-00002, percent: 100, append_headers: {x-split: b}}
          - path: /v2
            splits:
              - {revision: api-00001, percent: 50}
              - {revision: api-00002, percent: 50}
          - path: ""
            splits:
              - {revision: api-00001, percent: 100}
      - hosts: [api.internal.example]
        visibility: cluster-local
        paths:
          - splits: [{revision: api-00001, percent: 100}]
revisions:
  - name: hello-00001
    namespace: default
    container_concurrency: 10
    timeout: 5s
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
  - {name: hello-00002, protocol: h2c, endpoints: ["Pod-2.default.svc:8080"]}
  - {name: hello-00003}
  - {name: private-00001, namespace: team-a, endpoints: ["[::1]:9003"]}
  - {name: api-00001, endpoints: ["127.0.0.1:9101"]}
  - {name: api-00002, endpoints: ["127.0.0.1:9102"]}
tls:
  - hosts: [hello.default.example.com, "*.example.org"]
    cert: certs/hello.pem
    key: certs/hello.key
"#;

const GOOD_JSON: &str = r#"{
  "listen": {"http": "0.0.0.0:8080", "admin": "127.0.0.1:9901"},
  "domain": "example.com",
  "tag_header_routing": true,
  "hold": {"queue_depth": 100, "timeout": "30s"},
  "services": [
    {"name": "hello", "namespace": "default", "hosts": ["hello.example.org"],
     "traffic": [
       {"revision": "hello-00001", "percent": 90, "tag": "current"},
       {"revision": "hello-00002", "percent": 10, "tag": "candidate"},
       {"revision": "hello-00003", "percent": 0, "tag": "latest"}]},
    {"name": "private", "namespace": "team-a", "visibility": "cluster-local",
     "traffic": [{"revision": "private-00001", "percent": 100}]}
  ],
  "ingresses": [
    {"name": "api", "namespace": "default", "rules": [
      {"hosts": ["api.example.com", "API.Example.NET"], "visibility": "external", "paths": [
        {"path": "/v2", "headers": {"x-canary": "yes"}, "append_headers": {"x-route": "v2-canary"},
         "rewrite_host": "api-v2.internal",
         "splits": [{"revision": "api-00002", "percent": 100, "append_headers": {"x-split": "b"}}]},
        {"path": "/v2", "splits": [
          {"revision": "api-00001", "percent": 50}, {"revision": "api-00002", "percent": 50}]},
        {"path": "", "splits": [{"revision": "api-00001", "percent": 100}]}
      ]},
      {"hosts": ["api.internal.example"], "visibility": "cluster-local",
       "paths": [{"splits": [{"revision": "api-00001", "percent": 100}]}]}
    ]}
  ],
  "revisions": [
    {"name": "hello-00001", "namespace": "default", "container_concurrency": 10, "timeout": "5s",
     "endpoints": ["127.0.0.1:9001", "127.0.0.1:9002"]},
    {"name": "hello-00002", "protocol": "h2c", "endpoints": ["Pod-2.default.svc:8080"]},
    {"name": "hello-00003"},
    {"name": "private-00001", "namespace": "team-a", "endpoints": ["[::1]:9003"]},
    {"name": "api-00001", "endpoints": ["127.0.0.1:9101"]},
    {"name": "api-00002", "endpoints": ["127.0.0.1:9102"]}
  ],
  "tls": [{"hosts": ["hello.default.example.com", "*.example.org"],
           "cert": "certs/hello.pem", "key": "certs/hello.key"}]
}"#;

fn good_table() -> RouteTable {
    let cfg = load(GOOD_YAML, Format::Yaml).unwrap_or_else(|e| panic!("good config: {e}"));
    compile(&cfg).unwrap_or_else(|e| panic!("good config compiles: {e}"))
}

fn ext<'t>(t: &'t RouteTable, host: &str) -> Option<&'t HostRoute> {
    t.lookup(host.as_bytes(), Listener::External)
        .unwrap_or_else(|e| panic!("{host:?}: {e:?}"))
}

fn int<'t>(t: &'t RouteTable, host: &str) -> Option<&'t HostRoute> {
    t.lookup(host.as_bytes(), Listener::Internal)
        .unwrap_or_else(|e| panic!("{host:?}: {e:?}"))
}

/// Revision name and tag of every target, in order.
fn targets(_: &RouteTable, s: &Split) -> Vec<(String, u32, Option<String>)> {
    s.targets()
        .iter()
        .map(|x| {
            (
                x.name.to_string(),
                x.percent,
                x.tag.as_ref().map(|v| v.to_str().unwrap().to_owned()),
            )
        })
        .collect()
}

/// How many of the 100 draws land on each revision name.
fn draws(_: &RouteTable, s: &Split) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in 0..100 {
        let name = s.pick_with(r).name.to_string();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
}

fn only_path(r: &HostRoute) -> &PathRoute {
    assert_eq!(r.paths.len(), 1);
    &r.paths[0]
}

#[test]
fn yaml_and_json_load_to_the_same_config() {
    let y = load(GOOD_YAML, Format::Yaml).unwrap_or_else(|e| panic!("yaml: {e}"));
    let j = load(GOOD_JSON, Format::Json).unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(y, j);
    // YAML is a superset of JSON: the JSON text loads as YAML too.
    assert_eq!(load(GOOD_JSON, Format::Yaml).unwrap(), j);
    let ty = compile(&y).unwrap();
    let tj = compile(&j).unwrap();
    assert_eq!(ty.host_count(), tj.host_count());
    assert_eq!(
        weir_config::summary(&y, &ty),
        "2 services, 1 ingresses, 6 revisions, 23 hosts"
    );
}

#[test]
fn config_round_trips_through_json() {
    // `GET /v1/config` serialises the model; what it prints must load back unchanged.
    let cfg = load(GOOD_YAML, Format::Yaml).unwrap();
    let text = serde_json::to_string_pretty(&cfg).unwrap();
    assert_eq!(load(&text, Format::Json).unwrap(), cfg);
    let text = serde_norway::to_string(&cfg).unwrap();
    assert_eq!(load(&text, Format::Yaml).unwrap(), cfg);
}

#[test]
fn default_host_splits_by_percent() {
    let t = good_table();
    let r = ext(&t, "hello.default.example.com").expect("default host");
    assert!(r.external);
    assert_eq!(r.owner.to_string(), "service default/hello");
    let p = only_path(r);
    assert_eq!(&*p.prefix, "");
    assert!(p.headers.is_empty() && p.append_headers.is_empty() && p.rewrite_host.is_none());
    assert_eq!(
        targets(&t, &p.split),
        vec![
            ("hello-00001".into(), 90, None),
            ("hello-00002".into(), 10, None),
            ("hello-00003".into(), 0, None),
        ]
    );
    assert_eq!(
        draws(&t, &p.split),
        vec![("hello-00001".into(), 90), ("hello-00002".into(), 10)]
    );
    // Any path and any headers reach the single catch-all rule.
    assert!(r.route(b"/anything?x=1", |_| None).is_some());
    assert!(r.route(b"", |_| None).is_some());
}

#[test]
fn tag_hosts_send_everything_to_their_target() {
    let t = good_table();
    for (host, rev, tag) in [
        (
            "current-hello.default.example.com",
            "hello-00001",
            "current",
        ),
        (
            "candidate-hello.default.example.com",
            "hello-00002",
            "candidate",
        ),
        // A 0 percent target is reachable by its tag.
        ("latest-hello.default.example.com", "hello-00003", "latest"),
    ] {
        let r = ext(&t, host).unwrap_or_else(|| panic!("{host}"));
        let p = only_path(r);
        assert_eq!(
            targets(&t, &p.split),
            vec![(rev.to_string(), 100, Some(tag.to_string()))],
            "{host}"
        );
        assert_eq!(draws(&t, &p.split), vec![(rev.to_string(), 100)], "{host}");
        assert!(r.tags.is_empty(), "tag hosts do no header routing");
    }
    // tag_header_routing: the default host knows every tag.
    let r = ext(&t, "hello.default.example.com").unwrap();
    let names: Vec<&str> = r.tags.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["current", "candidate", "latest"]);
    let target = r.tag_target(b"candidate").expect("candidate");
    assert_eq!(&*target.name, "hello-00002");
    assert_eq!(target.tag.as_ref().unwrap(), "candidate");
    assert!(r.tag_target(b"nope").is_none());
    assert!(ext(&t, "nope-hello.default.example.com").is_none());
}

#[test]
fn cluster_local_names_only_on_the_internal_listener() {
    let t = good_table();
    let internal_only = [
        "hello.default",
        "hello.default.svc",
        "hello.default.svc.cluster.local",
        "current-hello.default.svc.cluster.local",
        "latest-hello.default",
        "private.team-a",
        "private.team-a.svc",
        "private.team-a.svc.cluster.local",
        "api.internal.example",
    ];
    for host in internal_only {
        assert!(
            ext(&t, host).is_none(),
            "{host} must not be served externally"
        );
        let r = int(&t, host).unwrap_or_else(|| panic!("{host} on the internal listener"));
        assert!(!r.external, "{host}");
    }
    // The internal listener serves external hosts too.
    for host in [
        "hello.default.example.com",
        "api.example.com",
        "hello.example.org",
    ] {
        assert!(int(&t, host).is_some(), "{host}");
    }
    // A cluster-local service has no external name at all.
    assert!(int(&t, "private.team-a.example.com").is_none());
    // The cluster-local tag host goes to its target.
    let r = int(&t, "current-hello.default.svc").unwrap();
    assert_eq!(
        draws(&t, &only_path(r).split),
        vec![("hello-00001".into(), 100)]
    );
    let r = int(&t, "private.team-a.svc").unwrap();
    assert_eq!(r.owner.to_string(), "service team-a/private");
    assert_eq!(
        draws(&t, &only_path(r).split),
        vec![("private-00001".into(), 100)]
    );
}

#[test]
fn lookup_ignores_case_port_and_trailing_dot() {
    let t = good_table();
    let want = ext(&t, "hello.default.example.com").unwrap() as *const HostRoute;
    for host in [
        "HELLO.Default.Example.COM",
        "hello.default.example.com:8080",
        "hello.default.example.com.",
        "Hello.Default.Example.Com.:443",
    ] {
        let got = ext(&t, host).unwrap_or_else(|| panic!("{host}"));
        assert!(std::ptr::eq(got, want), "{host}");
    }
    // Hosts written in mixed case in the config are found in any case.
    assert!(ext(&t, "api.example.net").is_some());
    assert!(ext(&t, "API.EXAMPLE.NET:80").is_some());
    // A miss is Ok(None); garbage is an error, never a panic.
    assert!(ext(&t, "nobody.example.com").is_none());
    assert!(ext(&t, "hello.default.example.co").is_none());
    for bad in [
        "",
        ":8080",
        "hello world",
        "hello.default.example.com:http",
        "hello/x",
        "[::1",
    ] {
        assert_eq!(
            t.lookup(bad.as_bytes(), Listener::External)
                .map(|r| r.is_some()),
            Err(HostError::Invalid),
            "{bad:?}"
        );
    }
}

#[test]
fn ingress_paths_match_in_order_with_headers() {
    let t = good_table();
    let r = ext(&t, "api.example.com").unwrap();
    assert_eq!(r.owner.to_string(), "ingress default/api");
    assert_eq!(r.paths.len(), 3);

    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("yes"));
    let mut other = HeaderMap::new();
    other.insert("x-canary", HeaderValue::from_static("no"));
    let none = HeaderMap::new();
    let route = |path: &str, h: &HeaderMap| -> usize {
        let p = r
            .route(path.as_bytes(), |n: &HeaderName| {
                h.get(n).map(|v| v.as_bytes())
            })
            .unwrap_or_else(|| panic!("{path} routes"));
        r.paths.iter().position(|x| std::ptr::eq(x, p)).unwrap()
    };
    assert_eq!(route("/v2/users", &canary), 0);
    assert_eq!(route("/v2", &canary), 0);
    assert_eq!(route("/v2/users", &other), 1);
    assert_eq!(route("/v2/users", &none), 1);
    assert_eq!(route("/v1/users", &canary), 2);
    assert_eq!(route("/", &none), 2);

    let p0 = &r.paths[0];
    assert_eq!(p0.headers[0].0, "x-canary");
    assert_eq!(p0.headers[0].1, "yes");
    assert_eq!(
        p0.append_headers[..],
        [(
            HeaderName::from_static("x-route"),
            HeaderValue::from_static("v2-canary")
        )]
    );
    assert_eq!(p0.rewrite_host.as_ref().unwrap(), "api-v2.internal");
    let tgt = p0.split.pick_with(0);
    assert_eq!(&*tgt.name, "api-00002");
    assert_eq!(tgt.append_headers[0].0, "x-split");
    assert_eq!(tgt.append_headers[0].1, "b");
    assert_eq!(
        draws(&t, &r.paths[1].split),
        vec![("api-00001".into(), 50), ("api-00002".into(), 50)]
    );
    // Every host of a rule shares its paths.
    let net = ext(&t, "api.example.net").unwrap();
    assert_eq!(net.paths.len(), 3);
    assert_eq!(&*net.paths[0].prefix, "/v2");
}

#[test]
fn extra_hosts_serve_the_split() {
    let t = good_table();
    let r = ext(&t, "Hello.Example.Org:8080").expect("extra host");
    assert_eq!(r.owner.to_string(), "service default/hello");
    assert_eq!(
        draws(&t, &only_path(r).split),
        vec![("hello-00001".into(), 90), ("hello-00002".into(), 10)]
    );
}

#[test]
fn revisions_load_with_defaults() {
    let cfg = load(GOOD_YAML, Format::Yaml).unwrap();
    let t = compile(&cfg).unwrap();
    let revs = &cfg.revisions;
    assert_eq!(revs.len(), 6);
    let h1 = &revs[0];
    assert_eq!((&*h1.namespace, &*h1.name), ("default", "hello-00001"));
    assert_eq!(h1.container_concurrency, 10);
    assert_eq!(cfg.revision_timeout(h1), Duration::from_secs(5));
    assert_eq!(h1.protocol, Protocol::Http1);
    let parsed = |r: &weir_config::model::Revision| -> Vec<EndpointSpec> {
        r.endpoints
            .iter()
            .map(|e| weir_config::parse_endpoint(e).unwrap())
            .collect()
    };
    assert_eq!(
        parsed(h1),
        vec![
            EndpointSpec::Addr("127.0.0.1:9001".parse().unwrap()),
            EndpointSpec::Addr("127.0.0.1:9002".parse().unwrap()),
        ]
    );
    let h2 = &revs[1];
    assert_eq!(
        cfg.revision_timeout(h2),
        Duration::from_secs(30),
        "hold.timeout is the default"
    );
    assert_eq!(h2.protocol, Protocol::H2c);
    assert_eq!(
        parsed(h2),
        vec![EndpointSpec::Name("pod-2.default.svc".into(), 8080)]
    );
    assert!(revs[2].endpoints.is_empty(), "scaled to zero");
    assert_eq!(
        parsed(&revs[3]),
        vec![EndpointSpec::Addr("[::1]:9003".parse().unwrap())]
    );
    assert!(t.tag_header_routing());
    assert_eq!(
        t.users_of(&weir_config::Key::new("default", "hello-00003")),
        1
    );
}

#[test]
fn empty_config_loads_and_routes_nothing() {
    for (text, f) in [
        ("", Format::Yaml),
        ("{}", Format::Yaml),
        ("{}", Format::Json),
    ] {
        let cfg = load(text, f).unwrap();
        let t = compile(&cfg).unwrap();
        assert_eq!(t.host_count(), 0);
        assert!(ext(&t, "hello.default.example.com").is_none());
    }
}

#[test]
fn custom_templates_and_domain() {
    let cfg = load(
        r#"
domain: apps.example.net
domain_template: "{name}-{namespace}.{domain}"
tag_template: "{name}-{tag}"
cluster_domain: corp.local
services:
  - name: web
    namespace: shop
    traffic: [{revision: web-1, percent: 100, tag: blue}]
revisions: [{name: web-1, namespace: shop}]
"#,
        Format::Yaml,
    )
    .unwrap();
    let t = compile(&cfg).unwrap();
    assert!(ext(&t, "web-shop.apps.example.net").is_some());
    assert!(ext(&t, "web-blue-shop.apps.example.net").is_some());
    assert!(int(&t, "web.shop.svc.corp.local").is_some());
    assert!(int(&t, "web-blue.shop.svc.corp.local").is_some());
    assert!(int(&t, "web.shop.svc.cluster.local").is_none());
}

// === a bad config: every error at once, each with its path ===

const BAD_YAML: &str = r#"
domian: example.com
hold:
  timeout: 5 minutes
services:
  - name: hello
    trafic: []
    traffic:
      - {revision: hello-00001, percent: 60, tag: Current}
      - {revision: hello-99999, percent: 30}
  - name: Bad_Name
    traffic:
      - {revision: hello-00001, percent: 100, tag: "-x"}
  - name: typo
    trafic:
      - {revision: hello-00001, percent: 100}
ingresses:
  - name: api
    rules:
      - hosts: [Hello.Default.Example.com.]
        paths:
          - path: /v2
            append_headers: {"x bad": v}
            splits: [{revision: hello-00001, percent: 100, colour: red}]
          - path: v3
            splits: [{revision: hello-00001, percent: 100}]
revisions:
  - name: hello-00001
    timeout: "30"
    endpoints: ["127.0.0.1:9001", "localhost"]
"#;

/// (path, a piece of the message that tells what to do or what is wrong)
const BAD_EXPECTED: &[(&str, &str)] = &[
    ("domian", "expected one of: listen, domain,"),
    ("hold.timeout", "write a number with a unit"),
    ("revisions[0].timeout", "write a number with a unit"),
    ("revisions[0].endpoints[1]", "expected IP:port or host:port"),
    (
        "services[0].trafic",
        "expected one of: name, namespace, visibility, hosts, traffic",
    ),
    ("services[0].traffic[0].tag", "DNS-1123"),
    (
        "services[0].traffic[1].revision",
        "is not declared under revisions; add it there",
    ),
    (
        "services[0].traffic",
        "percents add up to 90; they must add up to 100",
    ),
    ("services[1].name", "DNS-1123"),
    ("services[1].traffic[0].tag", "DNS-1123"),
    ("services[2].trafic", "expected one of:"),
    ("services[2].traffic", "list at least one revision"),
    (
        "ingresses[0].rules[0].paths[0].append_headers.x bad",
        "is not a valid header name",
    ),
    (
        "ingresses[0].rules[0].paths[0].splits[0].colour",
        "expected one of: revision, namespace, percent, append_headers",
    ),
    ("ingresses[0].rules[0].paths[1].path", "must start with '/'"),
    (
        "ingresses[0].rules[0].hosts[0]",
        "a host may belong to one service or rule",
    ),
];

fn bad_errors(text: &str, format: Format) -> Vec<weir_config::ConfigError> {
    match load(text, format) {
        Ok(_) => panic!("the bad config loaded"),
        Err(e) => e.0,
    }
}

#[test]
fn bad_config_reports_every_error_with_its_path() {
    let errors = bad_errors(BAD_YAML, Format::Yaml);
    let got: BTreeSet<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    let want: BTreeSet<&str> = BAD_EXPECTED.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        got,
        want,
        "all errors:\n{}",
        weir_config::ConfigErrors(errors.clone())
    );
    assert_eq!(
        errors.len(),
        BAD_EXPECTED.len(),
        "one error per problem: {errors:#?}"
    );
    for (path, hint) in BAD_EXPECTED {
        let e = errors.iter().find(|e| e.path == *path).unwrap();
        assert!(
            e.message.contains(hint),
            "{path}: {:?} lacks {hint:?}",
            e.message
        );
        // The path is said once, by the error, not again inside the message.
        assert!(!e.message.starts_with(path), "{e}");
        assert_eq!(e.to_string(), format!("{path}: {}", e.message));
    }
}

#[test]
fn duplicate_host_names_both_places() {
    let errors = bad_errors(BAD_YAML, Format::Yaml);
    let dup = errors
        .iter()
        .find(|e| e.path == "ingresses[0].rules[0].hosts[0]")
        .unwrap();
    assert!(
        dup.message.contains("\"hello.default.example.com\""),
        "{dup}"
    );
    assert!(dup.message.contains("services[0] (default host)"), "{dup}");
    assert!(
        dup.message.contains("ingresses[0].rules[0].hosts[0]"),
        "{dup}"
    );

    // Two services that generate the same tag host.
    let errors = bad_errors(
        r#"
services:
  - name: a
    traffic: [{revision: r, percent: 100, tag: b}]
  - name: b-a
    traffic: [{revision: r, percent: 100}]
revisions: [{name: r}]
"#,
        Format::Yaml,
    );
    // The default host and the three cluster-local names of b-a all collide.
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors.iter().all(|e| e.path == "services[1]"),
        "{errors:#?}"
    );
    assert!(errors[0]
        .message
        .contains("\"b-a.default.example.com\" of services[1] (default host)"));
    assert!(errors[0]
        .message
        .contains("services[0].traffic[0] (tag host of \"b\")"));
}

#[test]
fn bad_config_as_json_reports_the_same_errors() {
    let v: serde_json::Value = serde_norway::from_str(BAD_YAML).unwrap();
    let json = serde_json::to_string(&v).unwrap();
    let from_yaml = bad_errors(BAD_YAML, Format::Yaml);
    let from_json = bad_errors(&json, Format::Json);
    assert_eq!(from_yaml, from_json);
}

#[test]
fn more_semantic_errors() {
    let errors = bad_errors(
        r#"
listen: {http: "8080", admn: x}
domain: "exa mple.com"
domain_template: "{name}.{ns}.{domain}"
tag_template: "{name}"
threads: 0
hold: {queue_depth: 0, timeout: 2h}
autoscaler: {url: "http://x", interval: 10ms}
services:
  - name: s
    hosts: ["bad host", "x.example.org:80"]
    traffic:
      - {revision: r, percent: 101}
      - {revision: r, percent: 0, tag: t}
      - {revision: r, percent: 0, tag: t}
ingresses:
  - name: i
    rules:
      - hosts: []
        paths:
          - headers: {x-a: "new\nline"}
            append_headers: {Host: h, connection: close}
            rewrite_host: "not a host"
            splits: []
      - hosts: [ok.example.com]
revisions:
  - {name: r, container_concurrency: 1001, timeout: 0s, endpoints: ["1.2.3.4:0", "1.2.3.4:80", "1.2.3.4:80", "h:99999"]}
  - {name: r}
tls:
  - {hosts: ["*.*.example.com"], cert: "", key: ""}
"#,
        Format::Yaml,
    );
    let got: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "listen.admn",
        "listen.http",
        "domain",
        "domain_template",
        "tag_template",
        "threads",
        "hold.queue_depth",
        "hold.timeout",
        "autoscaler.url",
        "autoscaler.interval",
        "revisions[0].container_concurrency",
        "revisions[0].timeout",
        "revisions[0].endpoints[0]",
        "revisions[0].endpoints[2]",
        "revisions[0].endpoints[3]",
        "revisions[1].name",
        "services[0].hosts[0]",
        "services[0].hosts[1]",
        "services[0].traffic[0].percent",
        "services[0].traffic[2].tag",
        "services[0].traffic",
        "ingresses[0].rules[0].hosts",
        "ingresses[0].rules[0].paths[0].headers.x-a",
        "ingresses[0].rules[0].paths[0].append_headers.Host",
        "ingresses[0].rules[0].paths[0].append_headers.connection",
        "ingresses[0].rules[0].paths[0].rewrite_host",
        "ingresses[0].rules[0].paths[0].splits",
        "ingresses[0].rules[1].paths",
        "tls[0].hosts[0]",
        "tls[0].cert",
        "tls[0].key",
    ] {
        assert!(got.contains(&want), "no error at {want}; got {errors:#?}");
    }
    for e in &errors {
        assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
    }
}

// === type errors: reported alone, but with their path ===

#[test]
fn type_error_names_its_path() {
    let yaml = "services:\n  - name: a\n    traffic:\n      - {revision: r, percent: 100}\n      - {revision: r, percent: ten}\n";
    let errors = bad_errors(yaml, Format::Yaml);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "services[0].traffic[1].percent");
    assert!(errors[0].message.contains("invalid type"), "{}", errors[0]);
    assert!(
        !errors[0].message.contains("services[0]"),
        "path said twice: {}",
        errors[0]
    );

    let json = r#"{"services":[{"name":"a","traffic":[{"revision":"r","percent":"ten"}]}]}"#;
    let errors = bad_errors(json, Format::Json);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "services[0].traffic[0].percent");

    for (text, format, path) in [
        (
            r#"{"revisions":[{"name":"r","protocol":"http3"}]}"#,
            Format::Json,
            "revisions[0].protocol",
        ),
        (
            "services: [{name: a, visibility: public}]",
            Format::Yaml,
            "services[0].visibility",
        ),
        ("hold: {queue_depth: -1}", Format::Yaml, "hold.queue_depth"),
        (
            "tag_header_routing: maybe",
            Format::Yaml,
            "tag_header_routing",
        ),
        ("services: [{traffic: []}]", Format::Yaml, "services[0]"),
        ("revisions: {name: r}", Format::Yaml, "revisions"),
    ] {
        let errors = bad_errors(text, format);
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        assert_eq!(errors[0].path, path, "{text}: {errors:?}");
    }
}

#[test]
fn syntax_errors_do_not_panic() {
    for (text, f) in [
        ("{", Format::Json),
        ("", Format::Json),
        ("services: [", Format::Yaml),
        ("- a\n- b", Format::Yaml),
        ("\t: :", Format::Yaml),
        ("a: &x [*x]", Format::Yaml),
    ] {
        assert!(parse(text, f).is_err(), "{text:?}");
    }
}

#[test]
fn numbers_as_durations_need_a_unit() {
    let errors = bad_errors("hold: {timeout: 30}\ndrain_timeout: 1.5", Format::Yaml);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["drain_timeout", "hold.timeout"]);
    assert!(errors[1].message.contains("\"30\""));
}

// === split accuracy ===

fn split_config(percents: &[u32]) -> String {
    let traffic: Vec<String> = percents
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{{revision: r{i}, percent: {p}}}"))
        .collect();
    let revisions: Vec<String> = (0..percents.len())
        .map(|i| format!("{{name: r{i}}}"))
        .collect();
    format!(
        "services: [{{name: s, traffic: [{}]}}]\nrevisions: [{}]\n",
        traffic.join(", "),
        revisions.join(", ")
    )
}

/// Which of the split's targets `t` is.
fn index(split: &Split, t: &weir_config::Target) -> usize {
    split
        .targets()
        .iter()
        .position(|x| std::ptr::eq(x, t))
        .expect("a target of the split")
}

#[test]
fn split_draws_land_exactly_on_percents() {
    for percents in [
        &[100][..],
        &[90, 10],
        &[1, 2, 4, 93],
        &[50, 0, 50],
        &[0, 100],
        &[33, 33, 34],
        &[1; 100],
    ] {
        let cfg = load(&split_config(percents), Format::Yaml).unwrap();
        let t = compile(&cfg).unwrap();
        let split = &only_path(ext(&t, "s.default.example.com").unwrap()).split;
        let mut counts = vec![0u32; percents.len()];
        for r in 0..100 {
            counts[index(split, split.pick_with(r))] += 1;
        }
        assert_eq!(counts, percents, "{percents:?}");
        // Draws above 100 wrap rather than panic.
        let _ = split.pick_with(u32::MAX);
    }
}

#[test]
fn random_picks_are_within_one_point_over_10k() {
    let cfg = load(&split_config(&[1, 2, 4, 93]), Format::Yaml).unwrap();
    let t = compile(&cfg).unwrap();
    let split = &only_path(ext(&t, "s.default.example.com").unwrap()).split;
    let n = 10_000;
    let mut counts = [0u32; 4];
    for _ in 0..n {
        counts[index(split, split.pick())] += 1;
    }
    for (c, p) in counts.iter().zip([1.0, 2.0, 4.0, 93.0]) {
        let share = f64::from(*c) * 100.0 / f64::from(n);
        // 1 point is the contract; the binomial sd at 93 % is 0.26 points, so this is ~4 sd.
        assert!((share - p).abs() < 1.0, "counts {counts:?}");
    }
}

#[test]
fn too_many_targets_is_an_error() {
    let mut percents = vec![0; 101];
    percents[0] = 100;
    let errors = bad_errors(&split_config(&percents), Format::Yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "services[0].traffic");
    assert!(errors[0].message.contains("at most 100"));
}
