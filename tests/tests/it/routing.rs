//! Host routing (services, tags, cluster-local) and ingress path rules (docs/config.md#hosts, docs/behaviour.md#host-matching).

use serde_json::json;
use weir_tests::{get, start_weir, Backend};

/// Two external services, one revision each.
#[tokio::test]
async fn routes_by_host() {
    let hello = Backend::start("hello-00001");
    let bye = Backend::start("bye-00001");
    let weir = start_weir!(json!({
        "services": [
            {"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]},
            {"name": "bye", "namespace": "other", "traffic": [{"revision": "bye-00001", "percent": 100}]},
        ],
        "revisions": [
            {"name": "hello-00001", "endpoints": [hello.endpoint()]},
            {"name": "bye-00001", "namespace": "other", "endpoints": [bye.endpoint()]},
        ],
    }));
    let url = format!("{}/some/path?q=1", weir.http_url());

    let r = get(&url, "hello.default.example.com", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00001"));
    let echo = r.json();
    assert_eq!(echo["path"], "/some/path");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["method"], "GET");

    let r = get(&url, "bye.other.example.com", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("bye-00001"));
    assert_eq!(
        r.upstream_header("knative-serving-namespace").as_deref(),
        Some("other")
    );

    assert_eq!(hello.requests(), 1);
    assert_eq!(bye.requests(), 1);
}

#[tokio::test]
async fn host_match_ignores_case_port_and_trailing_dot() {
    let hello = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [hello.endpoint()]}],
    }));
    let url = format!("{}/", weir.http_url());
    for host in [
        "hello.default.example.com",
        "HELLO.default.example.com:8080",
        "Hello.Default.Example.COM",
        "hello.default.example.com.",
        "hello.default.example.com.:80",
    ] {
        let r = get(&url, host, &[]).await;
        assert_eq!(r.status, 200, "Host {host:?}: {r:?}");
        assert_eq!(r.revision(), Some("hello-00001"), "Host {host:?}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_with_the_host_in_the_body() {
    let hello = Backend::start("hello-00001");
    let weir = start_weir!(json!({
        "services": [{"name": "hello", "traffic": [{"revision": "hello-00001", "percent": 100}]}],
        "revisions": [{"name": "hello-00001", "endpoints": [hello.endpoint()]}],
    }));
    let url = format!("{}/", weir.http_url());

    let r = get(&url, "nope.example.com", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.body, "no route for host \"nope.example.com\"\n");

    // Normalised or as sent: either way the body names the host.
    let r = get(&url, "Nope.Default.Example.com:8080", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.starts_with("no route for host \""), "{:?}", r.body);
    assert!(r.body.ends_with("\"\n"), "{:?}", r.body);
    assert!(
        r.body
            .to_ascii_lowercase()
            .contains("nope.default.example.com"),
        "{:?}",
        r.body
    );

    // A host that is only a prefix or suffix of a known one does not match.
    for host in ["hello.default.example", "x.hello.default.example.com"] {
        let r = get(&url, host, &[]).await;
        assert_eq!(r.status, 404, "Host {host:?}: {r:?}");
    }
    assert_eq!(hello.requests(), 0);
}

fn tagged_config(rev: [&Backend; 3], tag_header_routing: bool) -> serde_json::Value {
    json!({
        "tag_header_routing": tag_header_routing,
        "services": [{
            "name": "hello",
            "traffic": [
                {"revision": "hello-00001", "percent": 100},
                {"revision": "hello-00002", "percent": 0, "tag": "current"},
                {"revision": "hello-00003", "percent": 0, "tag": "candidate"},
            ],
        }],
        "revisions": [
            {"name": "hello-00001", "endpoints": [rev[0].endpoint()]},
            {"name": "hello-00002", "endpoints": [rev[1].endpoint()]},
            {"name": "hello-00003", "endpoints": [rev[2].endpoint()]},
        ],
    })
}

#[tokio::test]
async fn tag_hosts_reach_their_revision_with_the_tag_header() {
    let b1 = Backend::start("hello-00001");
    let b2 = Backend::start("hello-00002");
    let b3 = Backend::start("hello-00003");
    let weir = start_weir!(tagged_config([&b1, &b2, &b3], false));
    let url = format!("{}/", weir.http_url());

    let r = get(&url, "current-hello.default.example.com", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00002"));
    assert_eq!(
        r.upstream_header("knative-serving-tag").as_deref(),
        Some("current")
    );
    assert_eq!(
        r.upstream_header("knative-serving-revision").as_deref(),
        Some("hello-00002")
    );

    let r = get(&url, "Candidate-Hello.default.example.com:8080", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00003"));
    assert_eq!(
        r.upstream_header("knative-serving-tag").as_deref(),
        Some("candidate")
    );

    let r = get(&url, "hello.default.example.com", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00001"));

    let r = get(&url, "latest-hello.default.example.com", &[]).await;
    assert_eq!(r.status, 404, "an undeclared tag has no host: {r:?}");
}

#[tokio::test]
async fn tag_header_routing_on() {
    let b1 = Backend::start("hello-00001");
    let b2 = Backend::start("hello-00002");
    let b3 = Backend::start("hello-00003");
    let weir = start_weir!(tagged_config([&b1, &b2, &b3], true));
    let url = format!("{}/", weir.http_url());
    let host = "hello.default.example.com";

    let r = get(&url, host, &[("Knative-Serving-Tag", "candidate")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00003"));
    let r = get(&url, host, &[("knative-serving-tag", "current")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("hello-00002"));

    // Missing, empty and unknown tags fall through to the default split.
    for headers in [
        &[][..],
        &[("Knative-Serving-Tag", "")][..],
        &[("Knative-Serving-Tag", "nope")][..],
    ] {
        let r = get(&url, host, headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {r:?}");
        assert_eq!(r.revision(), Some("hello-00001"), "{headers:?}");
    }
}

#[tokio::test]
async fn tag_header_routing_off_ignores_the_header() {
    let b1 = Backend::start("hello-00001");
    let b2 = Backend::start("hello-00002");
    let b3 = Backend::start("hello-00003");
    let weir = start_weir!(tagged_config([&b1, &b2, &b3], false));
    let url = format!("{}/", weir.http_url());

    for tag in ["candidate", "current"] {
        let r = get(
            &url,
            "hello.default.example.com",
            &[("Knative-Serving-Tag", tag)],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.revision(), Some("hello-00001"), "tag {tag}");
    }
    assert_eq!(b2.requests() + b3.requests(), 0);
}

#[tokio::test]
async fn cluster_local_services_only_on_the_internal_listener() {
    let local = Backend::start("local-00001");
    let public = Backend::start("public-00001");
    let weir = start_weir!(json!({
        "services": [
            {"name": "local", "visibility": "cluster-local",
             "traffic": [{"revision": "local-00001", "percent": 100}]},
            {"name": "public", "traffic": [{"revision": "public-00001", "percent": 100}]},
        ],
        "revisions": [
            {"name": "local-00001", "endpoints": [local.endpoint()]},
            {"name": "public-00001", "endpoints": [public.endpoint()]},
        ],
    }));
    let external = format!("{}/", weir.http_url());
    let internal = format!("{}/", weir.internal_url());

    for host in [
        "local.default",
        "local.default.svc",
        "local.default.svc.cluster.local",
        "Local.Default.svc.cluster.local.:80",
    ] {
        let r = get(&external, host, &[]).await;
        assert_eq!(r.status, 404, "external listener, Host {host:?}: {r:?}");
        let r = get(&internal, host, &[]).await;
        assert_eq!(r.status, 200, "internal listener, Host {host:?}: {r:?}");
        assert_eq!(r.revision(), Some("local-00001"), "Host {host:?}");
    }
    let r = get(&external, "local.default.example.com", &[]).await;
    assert_eq!(
        r.status, 404,
        "a cluster-local service has no external host: {r:?}"
    );
    assert_eq!(local.requests(), 4);

    // An external service's default host works on both listeners.
    for url in [&external, &internal] {
        let r = get(url, "public.default.example.com", &[]).await;
        assert_eq!(r.status, 200, "{url}: {r:?}");
        assert_eq!(r.revision(), Some("public-00001"));
    }
}

/// `/foo`, `/bar`, a header-matched catch-all, then the plain catch-all.
fn ingress_config(
    foo_rev: &Backend,
    bar_rev: &Backend,
    canary_rev: &Backend,
    any_rev: &Backend,
) -> serde_json::Value {
    json!({
        "ingresses": [{
            "name": "api",
            "namespace": "default",
            "rules": [
                {
                    "hosts": ["api.example.com"],
                    "paths": [
                        {"path": "/foo", "splits": [{"revision": "foo-00001", "percent": 100}]},
                        {"path": "/bar", "splits": [{"revision": "bar-00001", "percent": 100}]},
                        {"path": "", "headers": {"x-canary": "yes"},
                         "splits": [{"revision": "canary-00001", "percent": 100}]},
                        {"path": "", "splits": [{"revision": "any-00001", "percent": 100}]},
                    ],
                },
                {
                    "hosts": ["headers.example.com"],
                    "paths": [{
                        "path": "/",
                        "append_headers": {"x-route": "v2", "x-both": "path"},
                        "splits": [{"revision": "any-00001", "percent": 100,
                                    "append_headers": {"x-split": "b"}}],
                    }],
                },
                {
                    "hosts": ["rewrite.example.com"],
                    "paths": [{
                        "rewrite_host": "api-v2.internal",
                        "splits": [{"revision": "any-00001", "percent": 100}],
                    }],
                },
            ],
        }],
        "revisions": [
            {"name": "foo-00001", "endpoints": [foo_rev.endpoint()]},
            {"name": "bar-00001", "endpoints": [bar_rev.endpoint()]},
            {"name": "canary-00001", "endpoints": [canary_rev.endpoint()]},
            {"name": "any-00001", "endpoints": [any_rev.endpoint()]},
        ],
    })
}

#[tokio::test]
async fn ingress_paths_dispatch_by_prefix_and_header() {
    let foo = Backend::start("foo-00001");
    let bar = Backend::start("bar-00001");
    let canary = Backend::start("canary-00001");
    let any = Backend::start("any-00001");
    let weir = start_weir!(ingress_config(&foo, &bar, &canary, &any));
    let base = weir.http_url();
    let host = "api.example.com";

    for (path, headers, want) in [
        ("/foo", &[][..], "foo-00001"),
        ("/foo/x/y?z=1", &[][..], "foo-00001"),
        ("/bar", &[][..], "bar-00001"),
        ("/bar/", &[][..], "bar-00001"),
        ("/", &[][..], "any-00001"),
        ("/baz", &[][..], "any-00001"),
        ("/baz", &[("x-canary", "yes")][..], "canary-00001"),
        ("/", &[("X-Canary", "yes")][..], "canary-00001"),
        ("/baz", &[("x-canary", "no")][..], "any-00001"),
        // An earlier path wins over the header-matched one.
        ("/foo", &[("x-canary", "yes")][..], "foo-00001"),
    ] {
        let r = get(&format!("{base}{path}"), host, headers).await;
        assert_eq!(r.status, 200, "{path} {headers:?}: {r:?}");
        assert_eq!(r.revision(), Some(want), "{path} {headers:?}");
        let echo = r.json();
        assert_eq!(
            echo["path"],
            path.split('?').next().unwrap(),
            "the path is passed unchanged"
        );
        assert_eq!(r.upstream_header("host").as_deref(), Some(host));
    }
}

#[tokio::test]
async fn append_headers_overwrite_client_headers() {
    let foo = Backend::start("foo-00001");
    let bar = Backend::start("bar-00001");
    let canary = Backend::start("canary-00001");
    let any = Backend::start("any-00001");
    let weir = start_weir!(ingress_config(&foo, &bar, &canary, &any));

    let r = get(
        &format!("{}/x", weir.http_url()),
        "headers.example.com",
        &[
            ("x-route", "client"),
            ("X-Split", "client"),
            ("x-other", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.upstream_header("x-route").as_deref(),
        Some("v2"),
        "path-level append_headers"
    );
    assert_eq!(
        r.upstream_header("x-split").as_deref(),
        Some("b"),
        "split-level append_headers"
    );
    assert_eq!(r.upstream_header("x-both").as_deref(), Some("path"));
    assert_eq!(r.upstream_header("x-other").as_deref(), Some("kept"));
}

#[tokio::test]
async fn rewrite_host_changes_the_upstream_host() {
    let foo = Backend::start("foo-00001");
    let bar = Backend::start("bar-00001");
    let canary = Backend::start("canary-00001");
    let any = Backend::start("any-00001");
    let weir = start_weir!(ingress_config(&foo, &bar, &canary, &any));

    let r = get(
        &format!("{}/p", weir.http_url()),
        "rewrite.example.com",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.revision(), Some("any-00001"));
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("api-v2.internal")
    );
    assert_eq!(r.json()["path"], "/p");
}
