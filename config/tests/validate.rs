//! Loading and validation through weir-config's public API: both spellings of a good
//! config, defaults, and bad configs reporting every error with its path.

use std::collections::BTreeSet;
use std::time::Duration;

use weir_config::model::Protocol;
use weir_config::{compile, load, parse, EndpointSpec, Format};

/// One config exercising most of the schema, in YAML and in JSON (the same config).
const GOOD_YAML: &str = include_str!("fixtures/good.yaml");
const GOOD_JSON: &str = include_str!("fixtures/good.json");

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
