//! The compiled route table through weir-config's public API: host lookup per listener,
//! tag and cluster-local hosts, ingress paths and headers, and how splits draw.

use http::{HeaderMap, HeaderName, HeaderValue};
use weir_config::{
    compile, load, Format, HostError, HostRoute, Listener, PathRoute, RouteTable, Split,
};

/// One config exercising most of the schema (validate.rs loads its JSON spelling too).
const GOOD_YAML: &str = include_str!("fixtures/good.yaml");

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
    let errors = match load(&split_config(&percents), Format::Yaml) {
        Ok(_) => panic!("101 targets loaded"),
        Err(e) => e.0,
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "services[0].traffic");
    assert!(errors[0].message.contains("at most 100"));
}
